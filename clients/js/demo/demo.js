// The demo page: log in with a development token, see friends' presence live, set a status,
// chat 1:1 and in groups. Plain DOM on top of the SDK's built bundle (./index.js, served from
// clients/js/dist by `--demo-dir clients/js/demo,clients/js/dist`).
import { PresenceClient, watchActivity, watchPage } from "./index.js";

const $ = (id) => document.getElementById(id);
let client;
let me = "";
/** The open conversation: `u:bob` or `g:lunch`. */
let current = "";
/** Conversations by key: { title, target, messages: Map(msg_id -> message), unread }. */
const convs = new Map();
/** Which conversation a message id is in. */
const where = new Map();
let typingTimer;
let ackTimer;
let lastTyping = 0;

async function mint(user) {
  const r = await fetch("token", {
    method: "POST",
    headers: { "content-type": "application/json" },
    body: JSON.stringify({ user }),
  });
  const body = await r.json().catch(() => ({}));
  if (!r.ok) throw new Error(body.error ?? `token: ${r.status}`);
  return body.token;
}

function el(tag, cls, text) {
  const e = document.createElement(tag);
  if (cls) e.className = cls;
  if (text !== undefined) e.textContent = text;
  return e;
}

/** 800 -> "800 ms", 5000 -> "5 s", 120000 -> "2 min". */
function span(ms) {
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${Math.round(ms / 100) / 10} s`;
  return `${Math.round(ms / 6000) / 10} min`;
}

function clock(ts) {
  return new Date(ts).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
}

function conv(key) {
  let c = convs.get(key);
  if (!c) {
    const [kind, id] = [key.slice(0, 1), key.slice(2)];
    c = {
      title: kind === "g" ? `#${id}` : id,
      target: kind === "g" ? { group: id } : { to: id },
      history: kind === "g" ? { group: id } : { with: id },
      messages: new Map(),
      unread: 0,
    };
    convs.set(key, c);
    // v1.1: how many of the group are here, kept live (the SDK sends the watch again after
    // every reconnect).
    if (kind === "g") client.watchGroup(id);
  }
  return c;
}

function keyOf(m) {
  if (m.group !== undefined) return `g:${m.group}`;
  return `u:${m.from === me ? m.to : m.from}`;
}

// ---- friends and groups ------------------------------------------------------------------

const ORDER = { online: 0, idle: 1, offline: 2 };

function renderFriends() {
  const list = $("friends");
  list.replaceChildren();
  const friends = client.presence
    .all()
    .sort((a, b) => (ORDER[a.state] ?? 3) - (ORDER[b.state] ?? 3) || a.user.localeCompare(b.user));
  for (const f of friends) {
    const li = el("li", "peer");
    li.dataset.user = f.user;
    li.dataset.state = f.state ?? "offline";
    if (f.idle_ms !== undefined) li.dataset.idleMs = String(f.idle_ms);
    if (current === `u:${f.user}`) li.classList.add("current");
    let what = f.state ?? "offline";
    if (f.state === "idle" && f.idle_ms !== undefined) what = `idle ${span(f.idle_ms)}`;
    if (f.state === "offline" && f.last_active) what += ` · seen ${clock(f.last_active)}`;
    li.append(el("span", "dot"), el("span", "name", f.user), " ", el("span", "what", what));
    const unread = convs.get(`u:${f.user}`)?.unread ?? 0;
    if (unread) li.append(el("span", "unread", String(unread)));
    const status = [f.status && f.status !== "available" ? f.status : "", f.text ?? ""]
      .filter(Boolean)
      .join(": ");
    if (status) li.append(el("span", "status", status));
    li.onclick = () => open(`u:${f.user}`);
    list.append(li);
  }
}

function renderGroups() {
  const list = $("groups");
  list.replaceChildren();
  for (const [key, c] of convs) {
    if (!key.startsWith("g:")) continue;
    const li = el("li", "peer");
    li.dataset.group = key.slice(2);
    if (current === key) li.classList.add("current");
    li.append(el("span", "name", c.title));
    const n = client.groups.get(key.slice(2));
    if (n) li.append(el("span", "counts", `${n.online + n.idle} of ${n.total} here`));
    if (c.unread) li.append(el("span", "unread", String(c.unread)));
    li.onclick = () => open(key);
    list.append(li);
  }
}

// ---- messages ----------------------------------------------------------------------------

function renderMessages() {
  const list = $("messages");
  list.replaceChildren();
  const c = convs.get(current);
  if (!c) return;
  const msgs = [...c.messages.values()].sort((a, b) => a.ts - b.ts || (a.msg_id < b.msg_id ? -1 : 1));
  for (const m of msgs) {
    const li = el("li", m.from === me ? "mine" : "");
    li.dataset.msgId = m.msg_id;
    if (current.startsWith("g:") && m.from !== me) li.append(el("span", "from", m.from));
    if (m.deleted) li.classList.add("deleted");
    li.append(el("span", "body", m.deleted ? "deleted" : m.text ?? ""));
    const meta = [clock(m.ts)];
    if (m.edited) meta.push("edited");
    if (m.from === me && m.readBy?.size) meta.push(`read by ${[...m.readBy].join(", ")}`);
    li.append(el("span", "meta", meta.join(" · ")));
    list.append(li);
  }
  list.scrollTop = list.scrollHeight;
}

/** Marks the newest message from someone else in the open conversation as read. */
function readCurrent() {
  const c = convs.get(current);
  if (!c || document.visibilityState !== "visible") return;
  const theirs = [...c.messages.values()].filter((m) => m.from !== me && !m.deleted);
  const newest = theirs.sort((a, b) => b.ts - a.ts)[0];
  if (c.unread && newest) client.read(newest.msg_id);
  c.unread = 0;
}

async function open(key) {
  current = key;
  const c = conv(key);
  $("chat-title").textContent = c.title;
  $("compose").hidden = false;
  $("typing").textContent = "";
  readCurrent();
  renderFriends();
  renderGroups();
  renderMessages();
  try {
    const page = await client.history(c.history, { limit: 50 });
    for (const m of page.messages) {
      if (c.messages.has(m.msg_id)) continue;
      c.messages.set(m.msg_id, { ...m, edited: m.edited_ts !== undefined });
      where.set(m.msg_id, key);
    }
    if (current === key) renderMessages();
  } catch (e) {
    console.warn("history", e);
  }
  $("text").focus();
}

function onInbox(e) {
  clearTimeout(ackTimer);
  ackTimer = setTimeout(() => client.ack(e.seq), 500);
  if (e.kind === "message") {
    const key = keyOf(e);
    const c = conv(key);
    c.messages.set(e.msg_id, { msg_id: e.msg_id, from: e.from, text: e.text, ts: e.ts });
    where.set(e.msg_id, key);
    if (e.from !== me) {
      c.unread += 1;
      if (key === current) readCurrent();
    }
  } else {
    const m = convs.get(where.get(e.msg_id))?.messages.get(e.msg_id);
    if (!m) return;
    if (e.kind === "edit") Object.assign(m, { text: e.text, edited: true });
    if (e.kind === "delete") Object.assign(m, { text: undefined, deleted: true });
    if (e.kind === "read" && e.from !== me) (m.readBy ??= new Set()).add(e.from);
  }
  renderMessages();
  renderFriends();
  renderGroups();
}

function onTyping(t) {
  const key = t.group !== undefined ? `g:${t.group}` : `u:${t.from}`;
  if (key !== current) return;
  $("typing").textContent = `${t.from} is typing…`;
  clearTimeout(typingTimer);
  typingTimer = setTimeout(() => ($("typing").textContent = ""), 3000);
}

// ---- forms -------------------------------------------------------------------------------

$("login").onsubmit = (ev) => {
  ev.preventDefault();
  me = $("user").value.trim();
  if (!me) return;
  const secure = location.protocol === "https:";
  client = new PresenceClient({
    token: () => mint(me),
    ws: `${secure ? "wss" : "ws"}://${location.host}/v1/ws`,
    lp: location.origin,
    transport: $("transport").value,
    device: `web-${Math.random().toString(16).slice(2, 8)}`,
  });
  client.on("state", (s) => {
    const c = $("conn");
    c.dataset.state = s.state;
    c.dataset.transport = s.transport ?? "";
    c.textContent = `${s.state}${s.transport ? ` (${s.transport})` : ""}: ${s.reason}`;
  });
  client.on("presence", renderFriends);
  client.on("groupCounts", renderGroups);
  client.on("inbox", onInbox);
  client.on("typing", onTyping);
  client.on("error", (e) => console.warn("node:", e.code, e.message));
  client.connect();
  watchActivity(client);
  watchPage(client);
  document.addEventListener("visibilitychange", readCurrent);
  $("me").textContent = me;
  $("login").hidden = true;
  $("app").hidden = false;
  globalThis.demo = { client, convs };
};

$("status").onsubmit = (ev) => {
  ev.preventDefault();
  const text = $("status-text").value.trim();
  client.setStatus($("status-kind").value, text || undefined);
};

$("open-group").onsubmit = (ev) => {
  ev.preventDefault();
  const id = $("group-id").value.trim();
  if (id) void open(`g:${id}`);
};

$("text").oninput = () => {
  const c = convs.get(current);
  if (!c || Date.now() - lastTyping < 1000) return;
  lastTyping = Date.now();
  client.typing(c.target);
};

$("compose").onsubmit = (ev) => {
  ev.preventDefault();
  const c = convs.get(current);
  const text = $("text").value;
  if (!c || !text.trim()) return;
  $("text").value = "";
  client.send(c.target, text).catch((e) => {
    const li = el("li", "mine deleted");
    li.append(el("span", "body", `not sent (${e.code}): ${text}`));
    $("messages").append(li);
  });
};
