// Unit tests of the pure parts: backoff and the presence map.
import assert from "node:assert/strict";
import { test } from "node:test";
import { Backoff, PresenceMap } from "../dist/index.js";

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
