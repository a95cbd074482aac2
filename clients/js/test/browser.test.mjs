// The demo page in Debian's Chromium, driven by playwright-core, against a real node that
// serves it (`--demo-dir demo,dist`): two users see each other come online and go idle at
// millisecond thresholds, set a status, chat 1:1 and in a group, one of them on long-poll; hidden
// pages stay online past the heartbeat timeout and their input is not activity; a page that goes
// away is offline within the grace; offline and back. Screenshots go to test-artifacts/.
//
// Run: `npm run test:browser` (after `cargo build -p presence-node`). Chromium comes from
// `bash scripts/browser-deps.sh`; PRESENCE_CHROMIUM points at another binary.
import assert from "node:assert/strict";
import { existsSync, mkdirSync } from "node:fs";
import path from "node:path";
import { fileURLToPath } from "node:url";
import { after, before, test } from "node:test";
import { TestNode, haveNode, nodeBin, until } from "./harness.mjs";

const here = path.dirname(fileURLToPath(import.meta.url));
const pkg = path.resolve(here, "..");
const artifacts = path.join(pkg, "test-artifacts");
const chromiumBin = process.env.PRESENCE_CHROMIUM ?? "/usr/bin/chromium";

const missing = !existsSync(chromiumBin)
  ? `no Chromium at ${chromiumBin} (bash scripts/browser-deps.sh)`
  : !haveNode
    ? `no presence-node binary at ${nodeBin()} (cargo build -p presence-node)`
    : false;
if (missing && process.env.PRESENCE_REQUIRE_BROWSER) throw new Error(missing);
const skip = missing;

// Idle levels at 1.5 s and 3 s; a session silent for 3 s is expired; polls held at most 2 s.
const TIMING = ["--tick", "50ms", "--idle-thresholds", "1500ms,3000ms", "--grace", "500ms",
  "--heartbeat-timeout", "3s", "--lp-hold", "2s"];
const HEARTBEAT_MS = 3000;
const STEP = { timeout: 10_000 };

let node;
let browser;
before(async () => {
  if (skip) return;
  mkdirSync(artifacts, { recursive: true });
  node = await TestNode.start({
    fast: TIMING,
    args: ["--demo-dir", `${path.join(pkg, "demo")},${path.join(pkg, "dist")}`],
  });
  await node.befriend([["alice", "bob"], ["alice", "carol"], ["dora", "eve"], ["dora", "finn"],
    ["gus", "hana"], ["ivy", "jon"]]);
  const g = await node.admin("PUT", "/v1/groups/lunch", { members: ["alice", "bob", "carol"] });
  assert.equal(g.status, 204);
  const { chromium } = await import("playwright-core");
  // Playwright gives the browser a fresh profile (--user-data-dir) in a temporary folder and
  // removes it on close. Without the background-networking flags Chromium calls home, which a
  // closed network refuses.
  browser = await chromium.launch({
    executablePath: chromiumBin,
    headless: true,
    timeout: 30_000,
    args: ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
      "--disable-background-networking", "--disable-component-update", "--disable-sync"],
  });
});
after(async () => {
  await browser?.close();
  await node?.dispose();
});

/** Hidden-page emulation, installed before the page's scripts: `__setHidden(true)` makes
 * `document.visibilityState` "hidden" (and fires `visibilitychange`), and from then on every
 * timer the page starts waits at least a minute, as Chrome's intensive throttling of hidden
 * tabs does. Liveness must not need a timer. */
function emulateHiding() {
  let hidden = false;
  const proto = Document.prototype;
  Object.defineProperty(proto, "visibilityState", { configurable: true, get: () => (hidden ? "hidden" : "visible") });
  Object.defineProperty(proto, "hidden", { configurable: true, get: () => hidden });
  const st = window.setTimeout.bind(window);
  const si = window.setInterval.bind(window);
  window.setTimeout = (f, ms, ...a) => st(f, hidden ? Math.max(ms ?? 0, 60_000) : ms, ...a);
  window.setInterval = (f, ms, ...a) => si(f, hidden ? Math.max(ms ?? 0, 60_000) : ms, ...a);
  window.__setHidden = (h) => {
    hidden = h;
    document.dispatchEvent(new Event("visibilitychange"));
  };
}

/** Records, in the page, every presence entry its client is told (`window.__seen`). */
function recordPresence() {
  window.__seen = [];
  window.demo.client.on("presence", (c) => {
    for (const e of c.updated) window.__seen.push({ ...e, at: Date.now() });
  });
}

/** A page in its own context, logged in as `user` over `transport`. */
async function login(user, transport = "auto") {
  const ctx = await browser.newContext({ viewport: { width: 1000, height: 620 } });
  const page = await ctx.newPage();
  page.setDefaultTimeout(STEP.timeout);
  const errors = [];
  page.on("pageerror", (e) => errors.push(e));
  await page.addInitScript(emulateHiding);
  await page.goto(`http://${node.ready.ws}/demo/`);
  await page.fill("#user", user);
  await page.selectOption("#transport", transport);
  await page.click("#login button");
  try {
    await page.waitForSelector('#conn[data-state="open"]');
  } catch (e) {
    throw new Error(`${user} not connected: ${await page.locator("#conn").innerText()}; ${errors.join("; ")}`, { cause: e });
  }
  await page.evaluate(recordPresence);
  return { page, ctx, errors, user };
}

const friend = (page, user) => page.locator(`#friends li[data-user="${user}"]`);
const transportOf = (p) => p.page.evaluate(() => window.demo.client.transportKind);
const shot = (p, name) => p.page.screenshot({ path: path.join(artifacts, `${name}.png`) });

test("two users: online, idle, status, 1:1 and group chat, one of them on long-poll", { skip, timeout: 90_000 }, async () => {
  const alice = await login("alice");
  let bob;
  try {
    assert.equal(await transportOf(alice), "ws");
    await friend(alice.page, "bob").and(alice.page.locator('[data-state="offline"]')).waitFor();
    await friend(alice.page, "carol").and(alice.page.locator('[data-state="offline"]')).waitFor();

    bob = await login("bob", "lp");
    assert.equal(await transportOf(bob), "lp");
    // Each sees the other come online, then idle at the first and second threshold.
    await friend(alice.page, "bob").and(alice.page.locator('[data-state="online"]')).waitFor();
    await friend(bob.page, "alice").and(bob.page.locator('[data-state="online"], [data-state="idle"]')).waitFor();
    await friend(alice.page, "bob").and(alice.page.locator('[data-idle-ms="1500"]')).waitFor();
    await friend(alice.page, "bob").and(alice.page.locator('[data-idle-ms="3000"]')).waitFor();
    assert.match(await friend(alice.page, "bob").innerText(), /idle 3 s/);
    const bobSeen = await alice.page.evaluate(() => window.__seen.filter((e) => e.user === "bob"));
    const states = bobSeen.map((e) => (e.state === "idle" ? `idle ${e.idle_ms}` : e.state));
    assert.deepEqual(states.filter((s, i) => s !== states[i - 1]), ["online", "idle 1500", "idle 3000"]);

    // A status: online again (a status is activity) with its text, live.
    await bob.page.selectOption("#status-kind", "busy");
    await bob.page.fill("#status-text", "in a meeting");
    await bob.page.click("#status button");
    await friend(alice.page, "bob").and(alice.page.locator('[data-state="online"]')).waitFor();
    await alice.page.locator('#friends li[data-user="bob"] .status', { hasText: "busy: in a meeting" }).waitFor();

    // 1:1: alice writes; bob sees the unread mark, opens the conversation, reads, types, answers.
    await friend(alice.page, "bob").click();
    await alice.page.fill("#text", "lunch?");
    await alice.page.press("#text", "Enter");
    await alice.page.locator("#messages li.mine", { hasText: "lunch?" }).waitFor();
    await bob.page.locator('#friends li[data-user="alice"] .unread', { hasText: "1" }).waitFor();
    await friend(bob.page, "alice").click();
    await bob.page.locator("#messages li", { hasText: "lunch?" }).waitFor();
    await alice.page.locator("#messages li.mine .meta", { hasText: "read by bob" }).waitFor();
    await bob.page.type("#text", "yes");
    await alice.page.locator("#typing", { hasText: "bob is typing" }).waitFor();
    await bob.page.type("#text", ", 12:30");
    await bob.page.press("#text", "Enter");
    await alice.page.locator("#messages li:not(.mine)", { hasText: "yes, 12:30" }).waitFor();

    // A group: alice opens it by id; bob sees it appear with the message.
    await alice.page.fill("#group-id", "lunch");
    await alice.page.click("#open-group button");
    await alice.page.locator("#chat-title", { hasText: "#lunch" }).waitFor();
    await alice.page.fill("#text", "table for three at noon");
    await alice.page.press("#text", "Enter");
    await bob.page.locator('#groups li[data-group="lunch"] .unread').waitFor();
    // v1.1 group counts: alice and bob are here, carol is not.
    await bob.page.locator('#groups li[data-group="lunch"] .counts', { hasText: "2 of 3 here" }).waitFor();
    await alice.page.locator('#groups li[data-group="lunch"] .counts', { hasText: "2 of 3 here" }).waitFor();
    await bob.page.click('#groups li[data-group="lunch"]');
    const msg = bob.page.locator("#messages li", { hasText: "table for three at noon" });
    await msg.waitFor();
    assert.equal(await msg.locator(".from").innerText(), "alice");
    await bob.page.fill("#text", "count me in");
    await bob.page.press("#text", "Enter");
    await alice.page.locator("#messages li", { hasText: "count me in" }).waitFor();

    // History: a page opened later shows the conversation from the node.
    const bob2 = await login("bob", "ws");
    await friend(bob2.page, "alice").click();
    await bob2.page.locator("#messages li", { hasText: "lunch?" }).waitFor();
    await bob2.page.locator("#messages li.mine", { hasText: "yes, 12:30" }).waitFor();
    await bob2.ctx.close();

    await friend(alice.page, "bob").click();
    await alice.page.locator("#messages li", { hasText: "yes, 12:30" }).waitFor();
    await shot(alice, "alice");
    await shot(bob, "bob");
    assert.deepEqual([...alice.errors, ...bob.errors], []);
  } finally {
    await alice.ctx.close();
    await bob?.ctx.close();
  }
});

test("hidden pages stay online past the heartbeat timeout, and their input is not activity", { skip, timeout: 60_000 }, async () => {
  const dora = await login("dora");
  const eve = await login("eve", "ws");
  const finn = await login("finn", "lp");
  try {
    for (const p of [eve, finn]) await p.page.evaluate(() => window.__setHidden(true));
    const hiddenAt = Date.now();
    // Input on the hidden pages, all along: it must not count.
    const until_ = hiddenAt + 3 * HEARTBEAT_MS;
    while (Date.now() < until_) {
      for (const p of [eve, finn]) {
        await p.page.mouse.move(100 + Math.random() * 200, 100 + Math.random() * 200);
        await p.page.keyboard.press("Shift");
      }
      await new Promise((r) => setTimeout(r, 200));
    }
    const seen = await dora.page.evaluate(() => window.__seen);
    for (const u of ["eve", "finn"]) {
      const mine = seen.filter((e) => e.user === u && e.at >= hiddenAt - 100);
      assert.ok(!mine.some((e) => e.state === "offline"), `${u} went offline: ${JSON.stringify(mine)}`);
      const now = await friend(dora.page, u).getAttribute("data-state");
      assert.equal(now, "idle", `${u}: hidden, with input, yet ${now}`);
      assert.equal(await friend(dora.page, u).getAttribute("data-idle-ms"), "3000");
    }
    for (const p of [eve, finn]) {
      const s = await p.page.evaluate(() => [window.demo.client.state, window.demo.client.transportKind]);
      assert.equal(s[0], "open", `${p.user} stayed connected`);
    }
    // Visible again: that is activity.
    await finn.page.evaluate(() => window.__setHidden(false));
    await friend(dora.page, "finn").and(dora.page.locator('[data-state="online"]')).waitFor();
    await shot(dora, "hidden-friends");
  } finally {
    for (const p of [dora, eve, finn]) await p.ctx.close();
  }
});

test("a long-poll page that goes away is offline within the grace, not the heartbeat timeout", { skip, timeout: 30_000 }, async () => {
  const gus = await login("gus");
  const hana = await login("hana", "lp");
  try {
    await friend(gus.page, "hana").and(gus.page.locator('[data-state="online"], [data-state="idle"]')).waitFor();
    const left = Date.now();
    await hana.page.goto("about:blank");
    await friend(gus.page, "hana").and(gus.page.locator('[data-state="offline"]')).waitFor();
    const ms = Date.now() - left;
    assert.ok(ms < HEARTBEAT_MS, `offline after ${ms} ms: the session was not closed on pagehide`);
  } finally {
    await gus.ctx.close();
    await hana.ctx.close();
  }
});

test("offline and back: the page drops its connection and reconnects", { skip, timeout: 30_000 }, async () => {
  const ivy = await login("ivy");
  const jon = await login("jon", "lp");
  try {
    for (const p of [ivy, jon]) {
      await p.ctx.setOffline(true);
      await p.page.locator("#conn", { hasText: "the browser went offline" }).waitFor();
    }
    for (const p of [ivy, jon]) {
      await p.ctx.setOffline(false);
      await p.page.waitForSelector('#conn[data-state="open"]');
    }
    await friend(ivy.page, "jon").and(ivy.page.locator('[data-state="online"], [data-state="idle"]')).waitFor();
    assert.equal(await transportOf(jon), "lp");
  } finally {
    await ivy.ctx.close();
    await jon.ctx.close();
  }
});
