// The SDK against the real node: long-poll and WebSocket sessions, presence and chat, the
// fallback to long-poll when the WebSocket path passes nothing, reconnect and resume across a
// node restart, focus and group watches kept across reconnects. Run with `node --experimental-websocket --test` on Node 20.
import assert from "node:assert/strict";
import net from "node:net";
import { after, before, test } from "node:test";
import { PresenceClient } from "../dist/index.js";
import { TestNode, haveNode, nodeBin, until } from "./harness.mjs";

const missing = `no presence-node binary at ${nodeBin()} (cargo build -p presence-node)`;
if (!haveNode && process.env.PRESENCE_REQUIRE_NODE) throw new Error(missing);
const skip = haveNode ? false : missing;
const FAST_BACKOFF = { minMs: 100, maxMs: 1000 };

let node;
before(async () => {
  if (skip) return;
  node = await TestNode.start();
  await node.befriend([["alice", "bob"], ["carol", "dave"]]);
});
after(async () => {
  await node?.dispose();
});

function client(user, opts) {
  return new PresenceClient({
    token: () => node.token(user),
    ws: node.ready.ws,
    backoff: FAST_BACKOFF,
    ...opts,
  });
}

test("long-poll and WebSocket clients see each other and chat", { skip }, async () => {
  const alice = client("alice", { transport: "lp" });
  const bob = client("bob", { transport: "ws" });
  const inbox = [];
  bob.on("inbox", (e) => inbox.push(e));
  try {
    alice.connect();
    await until(() => alice.state === "open", 5000, "alice open");
    assert.equal(alice.transportKind, "lp");
    assert.equal(alice.presence.get("bob")?.state, "offline");
    bob.connect();
    await until(() => bob.state === "open", 5000, "bob open");
    assert.equal(bob.transportKind, "ws");
    await until(() => alice.presence.get("bob")?.state === "online", 5000, "bob online for alice");
    bob.setStatus("busy", "in a meeting");
    await until(() => alice.presence.get("bob")?.status === "busy", 5000, "bob busy");
    const sent = await alice.send({ to: "bob" }, "lunch?");
    assert.match(sent.msg_id, /^[0-9a-f]{16}$/);
    await until(() => inbox.some((e) => e.text === "lunch?"), 5000, "bob's inbox");
  } finally {
    alice.close();
    bob.close();
  }
});

test("no welcome over the WebSocket path: long-poll instead", { skip }, async () => {
  // A proxy that lets the connection through and then passes nothing.
  const sockets = [];
  const hole = net.createServer((s) => sockets.push(s));
  await new Promise((r) => hole.listen(0, "127.0.0.1", r));
  const states = [];
  const carol = new PresenceClient({
    token: () => node.token("carol"),
    ws: `127.0.0.1:${hole.address().port}`,
    lp: `http://${node.ready.ws}`,
    welcomeTimeoutMs: 500,
    backoff: FAST_BACKOFF,
  });
  carol.on("state", (s) => states.push(s));
  try {
    carol.connect();
    await until(() => carol.state === "open", 5000, "carol open");
    assert.equal(carol.transportKind, "lp");
    assert.ok(
      states.some((s) => s.reason.includes("long-poll")),
      JSON.stringify(states),
    );
  } finally {
    carol.close();
    for (const s of sockets) s.destroy();
    hole.close();
  }
});

test("reconnects after a node restart and resumes the inbox without gaps", { skip }, async () => {
  const dir = node.dir;
  const ws = node.ready.ws;
  const dave = client("dave", { transport: "ws" });
  const carol = client("carol", { transport: "lp" });
  const seqs = [];
  dave.on("inbox", (e) => seqs.push(e.seq));
  try {
    dave.connect();
    carol.connect();
    await until(() => dave.state === "open" && carol.state === "open", 5000, "both open");
    await carol.send({ to: "dave" }, "one");
    await carol.send({ to: "dave" }, "two");
    await until(() => seqs.length === 2, 5000, "two entries");
    await node.stop();
    await until(() => dave.state === "reconnecting", 5000, "dave reconnecting");
    node = await TestNode.start({ dir, ws });
    await until(() => dave.state === "open" && carol.state === "open", 15_000, "both back");
    await carol.send({ to: "dave" }, "three");
    await until(() => seqs.length >= 3, 5000, "the third entry");
    assert.deepEqual(seqs, [1, 2, 3], "each entry once, in order");
  } finally {
    dave.close();
    carol.close();
  }
});

test("a device resumes with after: the entries it missed, once", { skip }, async () => {
  const dave = client("dave", { transport: "ws" });
  const carol = client("carol", { transport: "lp" });
  try {
    dave.connect();
    carol.connect();
    await until(() => dave.state === "open" && carol.state === "open", 5000, "both open");
    const seen = dave.inboxSeq;
    dave.close();
    await carol.send({ to: "dave" }, "while you were away");
    const back = client("dave", { transport: "lp", device: dave.device, after: seen });
    const got = [];
    back.on("inbox", (e) => got.push(e));
    back.connect();
    await until(() => got.length >= 1, 5000, "the missed entry");
    await new Promise((r) => setTimeout(r, 300));
    assert.deepEqual(
      got.map((e) => [e.seq, e.text]),
      [[seen + 1, "while you were away"]],
    );
    back.close();
  } finally {
    dave.close();
    carol.close();
  }
});

test("moved is followed to the node it names", { skip }, async () => {
  // A node that owns nobody: every open is answered as a cluster node would.
  const http = await import("node:http");
  let asked = 0;
  const elsewhere = http.createServer((req, res) => {
    asked += 1;
    res.writeHead(409, { "content-type": "application/json" });
    res.end(
      JSON.stringify({
        type: "error",
        code: "moved",
        message: "this user's sessions belong on node n2",
        ws: node.ready.ws,
        lp: `http://${node.ready.ws}`,
      }),
    );
  });
  await new Promise((r) => elsewhere.listen(0, "127.0.0.1", r));
  const alice = new PresenceClient({
    token: () => node.token("alice"),
    lp: `http://127.0.0.1:${elsewhere.address().port}`,
    transport: "lp",
    backoff: { minMs: 5000, maxMs: 5000 },
  });
  try {
    const started = Date.now();
    alice.connect();
    await until(() => alice.state === "open", 3000, "alice open on the owner");
    assert.equal(asked, 1);
    assert.ok(Date.now() - started < 2500, "at once, not after a backoff");
  } finally {
    alice.close();
    elsewhere.close();
  }
});

test("history pages; read, edit and delete; a status set while disconnected", { skip }, async () => {
  await node.befriend([["erin", "frank"]]);
  const erin = client("erin", { transport: "ws" });
  const frank = client("frank", { transport: "lp" });
  const got = [];
  frank.on("inbox", (e) => got.push(e));
  const erinGot = [];
  erin.on("inbox", (e) => erinGot.push(e));
  try {
    // Set before any connection: sent after the welcome, not dropped.
    frank.setStatus("dnd", "focus time");
    erin.connect();
    frank.connect();
    await until(() => erin.state === "open" && frank.state === "open", 5000, "both open");
    await until(() => erin.presence.get("frank")?.status === "dnd", 5000, "frank's queued status");
    assert.equal(erin.presence.get("frank")?.text, "focus time");
    await assert.rejects(
      new PresenceClient({ token: "x", ws: node.ready.ws }).history({ with: "frank" }),
      (e) => e.code === "closed",
    );
    const a = await erin.send({ to: "frank" }, "first");
    const b = await erin.send({ to: "frank" }, "second");
    const page = await frank.history({ with: "erin" });
    assert.deepEqual(
      page.messages.map((m) => m.text),
      ["second", "first"],
      "newest first",
    );
    assert.equal(page.more, false);
    const older = await frank.history({ with: "erin" }, { before: b.msg_id, limit: 1 });
    assert.deepEqual(older.messages.map((m) => m.msg_id), [a.msg_id]);
    assert.equal(older.more, true, "a full page");
    frank.read(b.msg_id);
    // The receipt first: a read of a message already deleted is refused (frank's request
    // travels by long-poll and could arrive after erin's delete).
    await until(() => erinGot.some((e) => e.kind === "read"), 5000, "the read receipt");
    erin.edit(a.msg_id, "first (edited)");
    erin.delete(b.msg_id);
    await until(
      () => ["read", "edit", "delete"].every((k) => erinGot.some((e) => e.kind === k)),
      5000,
      "read, edit and delete entries",
    );
    await until(
      () => ["edit", "delete"].every((k) => got.some((e) => e.kind === k)),
      5000,
      "frank's edit and delete entries",
    );
    const after = await frank.history({ with: "erin" });
    const byId = new Map(after.messages.map((m) => [m.msg_id, m]));
    assert.equal(byId.get(a.msg_id)?.text, "first (edited)");
    assert.equal(byId.get(b.msg_id)?.deleted, true);
    assert.equal(byId.get(b.msg_id)?.text, undefined);
  } finally {
    erin.close();
    frank.close();
  }
});

test("focus and group watches are kept across reconnects", { skip }, async () => {
  await node.befriend([["gina", "hank"], ["gina", "ivy"]]);
  await node.group("g-focus", ["gina", "jay", "kim"]);
  const others = ["hank", "ivy", "jay"].map((u) => client(u, { transport: "ws" }));
  const [hank, ivy] = others;
  const gina = client("gina", { transport: "ws" });
  const welcomes = [];
  const counts = [];
  const ivySeen = [];
  gina.on("welcome", () => welcomes.push(Date.now()));
  gina.on("groupCounts", (c) => counts.push({ at: welcomes.length, c }));
  gina.on("presence", (p) => {
    for (const e of p.updated) if (e.user === "ivy") ivySeen.push(e);
  });
  // The fast node's idle thresholds start at 400 ms: "here" is online or idle.
  const here = (e) => e?.state === "online" || e?.state === "idle";
  const live = (g) => (g ? g.online + g.idle : -1);
  const ticks = () => new Promise((r) => setTimeout(r, 400)); // 8 ticks of the fast node
  /** hank and ivy change status; hank's change shows, ivy's (out of focus) must not. */
  async function onlyHankShows(status) {
    ivySeen.length = 0;
    ivy.setStatus(status);
    hank.setStatus(status);
    await until(() => gina.presence.get("hank")?.status === status, 5000, `hank ${status}`);
    await ticks();
    assert.deepEqual(ivySeen, [], `ivy is out of focus (${status})`);
  }
  try {
    for (const c of others) c.connect();
    await until(() => others.every((c) => c.state === "open"), 5000, "the others open");
    // Asked for before connecting: sent after the first welcome.
    gina.focus(["hank"]);
    gina.watchGroup("g-focus", { members: ["jay", "kim"] });
    gina.connect();
    await until(() => gina.groups.get("g-focus"), 5000, "the first counts");
    assert.equal(gina.groups.get("g-focus").total, 3);
    // gina and jay (the others' sessions count from the node's next tick on).
    await until(() => live(gina.groups.get("g-focus")) === 2, 5000, "two members here");
    // Members are shown like friends, though none is a friend.
    await until(() => here(gina.presence.get("jay")), 5000, "jay here");
    assert.equal(gina.presence.get("kim")?.state, "offline");
    await onlyHankShows("dnd");
    // Counts follow the group: kim comes online.
    const kim = client("kim", { transport: "ws" });
    others.push(kim);
    kim.connect();
    await until(() => live(gina.groups.get("g-focus")) === 3, 5000, "kim counted");
    await until(() => here(gina.presence.get("kim")), 5000, "kim here");

    // A new session on the node, which knows nothing of the old one's focus and watch.
    gina.reconnectNow("test");
    await until(() => welcomes.length === 2, 5000, "the second welcome");
    await until(() => counts.some((x) => x.at === 2), 5000, "counts after the new welcome");
    assert.equal(live(gina.groups.get("g-focus")), 3);
    await until(() => here(gina.presence.get("jay")), 5000, "jay shown again");
    await onlyHankShows("busy");

    // Unwatching drops the counts and the members; no focus shows ivy again.
    gina.unwatchGroup("g-focus");
    assert.equal(gina.groups.has("g-focus"), false);
    await until(() => gina.presence.get("jay") === undefined, 5000, "jay removed");
    gina.focus(null);
    await until(() => gina.presence.get("ivy")?.status === "busy", 5000, "ivy's missed status");
    // And neither comes back after another reconnect.
    const before = counts.length;
    gina.reconnectNow("test again");
    await until(() => welcomes.length === 3 && gina.state === "open", 5000, "the third welcome");
    ivySeen.length = 0;
    ivy.setStatus("available");
    await until(() => ivySeen.some((e) => e.status === "available"), 5000, "ivy in view");
    await ticks();
    assert.equal(counts.length, before, "no counts for an unwatched group");
    assert.equal(gina.presence.get("jay"), undefined);
  } finally {
    gina.close();
    for (const c of others) c.close();
  }
});
