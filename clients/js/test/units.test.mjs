// Unit tests of the pure parts: backoff, the presence map, and the browser glue against fake
// windows (the browser tests run it in Chromium).
import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, PresenceMap, watchActivity, watchPage } from "../dist/index.js";

test("backoff delays grow with full jitter between the bounds, and reset", () => {
  const lo = new Backoff({ minMs: 500, maxMs: 20_000, random: () => 0 });
  assert.deepEqual([lo.next(), lo.next()], [500, 500]);
  const hi = new Backoff({ minMs: 500, maxMs: 20_000, random: () => 0.999999 });
  const caps = Array.from({ length: 8 }, () => Math.round(hi.next()));
  assert.deepEqual(caps, [1000, 2000, 4000, 8000, 16000, 20000, 20000, 20000]);
  hi.reset();
  assert.equal(Math.round(hi.next()), 1000);
  const real = new Backoff();
  for (let i = 0; i < 100; i++) {
    const d = real.next();
    assert.ok(d >= 500 && d <= 20_000, `${d}`);
  }
});

test("the presence map follows a snapshot and its diffs", () => {
  const m = new PresenceMap();
  m.reset([
    { user: "bob", state: "offline" },
    { user: "carol", state: "online" },
  ]);
  assert.equal(m.size, 2);
  const c = m.apply([
    { user: "bob", state: "idle", idle_ms: 60_000 },
    { user: "carol", removed: true },
    { user: "dave", state: "online" },
  ]);
  assert.deepEqual(c.removed, ["carol"]);
  assert.deepEqual(
    c.updated.map((e) => e.user),
    ["bob", "dave"],
  );
  assert.equal(m.get("bob")?.idle_ms, 60_000);
  assert.equal(m.get("carol"), undefined);
  const again = m.reset([{ user: "bob", state: "online" }]);
  assert.deepEqual(again.removed, ["dave"]);
  assert.deepEqual(
    m.all().map((e) => e.user),
    ["bob"],
  );
});

/** A client that records what the glue asks of it. */
function recorder(state = "open") {
  const calls = [];
  const c = { state, calls };
  for (const m of ["activity", "reconnectNow", "disconnect", "close", "connect"]) {
    c[m] = (...a) => calls.push([m, ...a]);
  }
  return c;
}

test("activity: from input while visible, throttled, never from a hidden page", () => {
  const win = new EventTarget();
  const doc = Object.assign(new EventTarget(), { visibilityState: "hidden" });
  const c = recorder();
  const undo = watchActivity(c, { target: win, doc, throttleMs: 60_000 });
  win.dispatchEvent(new Event("keydown"));
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.deepEqual(c.calls, [], "nothing while hidden");
  doc.visibilityState = "visible";
  doc.dispatchEvent(new Event("visibilitychange"));
  win.dispatchEvent(new Event("pointerdown"));
  assert.deepEqual(c.calls, [["activity"]], "back to visible counts once, then the throttle");
  undo();
  doc.dispatchEvent(new Event("visibilitychange"));
  assert.equal(c.calls.length, 1);
});

test("page life: offline drops, online reconnects, pagehide closes, pageshow from the cache connects", () => {
  const win = new EventTarget();
  const c = recorder("open");
  const undo = watchPage(c, win);
  win.dispatchEvent(new Event("online"));
  assert.deepEqual(c.calls, [], "online while open: nothing to do");
  win.dispatchEvent(new Event("offline"));
  c.state = "reconnecting";
  win.dispatchEvent(new Event("online"));
  win.dispatchEvent(new Event("pagehide"));
  const show = (persisted) => Object.assign(new Event("pageshow"), { persisted });
  win.dispatchEvent(show(false));
  win.dispatchEvent(show(true));
  assert.deepEqual(
    c.calls.map((x) => x[0]),
    ["disconnect", "reconnectNow", "close", "connect"],
  );
  undo();
  win.dispatchEvent(new Event("offline"));
  assert.equal(c.calls.length, 4);
});
