/** The presence client: connects over WebSocket (falling back to long-poll when no welcome
 * comes in time), reconnects with jittered backoff and resumes the inbox with `after`,
 * follows `moved`, keeps friends' presence, and sends chat with retries by client id. */

import { Backoff, type BackoffOptions } from "./backoff.js";
import { PresenceMap, type PresenceChange } from "./presence.js";
import type {
  ClientMessage,
  ErrorMessage,
  GroupCount,
  GroupCounts,
  HistoryPage,
  InboxEntry,
  ServerMessage,
  Status,
  WatchGroup,
  Welcome,
} from "./protocol.js";
import { openLongPoll, openWebSocket, type Transport, type TransportKind } from "./transport.js";

export type ConnectionState = "connecting" | "open" | "reconnecting" | "closed";

export interface ClientOptions {
  /** A token, or a function that mints a fresh one for every connection. */
  token: string | (() => string | Promise<string>);
  /** WebSocket address: `ws://host:port/v1/ws`, or `host:port`. */
  ws?: string;
  /** Long-poll base URL: `http://host:port` (by default from `ws`). */
  lp?: string;
  /** This device's id; by default one per client object, kept across reconnects. */
  device?: string;
  /** `auto` (WebSocket, long-poll if no welcome in time), or one transport only. */
  transport?: "auto" | TransportKind;
  /** How long a WebSocket may take to deliver the welcome before long-poll is tried (ms). */
  welcomeTimeoutMs?: number;
  /** Resume the inbox after this seq on the first connection. */
  after?: number;
  backoff?: BackoffOptions;
}

export interface StateEvent {
  state: ConnectionState;
  reason: string;
  transport?: TransportKind;
}

export interface SendResult {
  id: string;
  msg_id: string;
  ts: number;
}

export interface ClientEvents {
  state: StateEvent;
  welcome: Welcome;
  presence: PresenceChange;
  inbox: InboxEntry;
  typing: { from: string; group?: string };
  history: HistoryPage;
  /** v1.1: counts of watched groups that changed (`client.groups` has the latest). */
  groupCounts: GroupCounts;
  error: ErrorMessage;
  /** Every server message, as it came. */
  message: ServerMessage;
}

type Listener<T> = (value: T) => void;

interface Pending {
  msg: ClientMessage;
  resolve(r: SendResult): void;
  reject(e: ErrorMessage): void;
}

interface PendingHistory {
  key: string;
  resolve(p: HistoryPage): void;
  reject(e: ErrorMessage): void;
  timer: ReturnType<typeof setTimeout>;
}

export type Target = { to: string } | { group: string };

/** How to watch a group (v1.1). */
export interface WatchOptions {
  /** `group_counts` for the group (default true). */
  counts?: boolean;
  /** At most 200 of the group's members whose presence lands in `presence` like friends'. */
  members?: string[];
}

function refused(code: string, message: string): ErrorMessage {
  return { type: "error", code, message };
}

/** Codes after which a send is not retried. */
const FINAL = new Set(["bad_request", "too_large", "forbidden", "not_found"]);

function randomId(): string {
  const c = (globalThis as { crypto?: { randomUUID?: () => string } }).crypto;
  return c?.randomUUID?.() ?? Math.random().toString(16).slice(2) + Date.now().toString(16);
}

function wsUrl(addr: string): string {
  return /^wss?:\/\//.test(addr) ? addr : `ws://${addr}/v1/ws`;
}

function lpFromWs(ws: string): string {
  const u = new URL(wsUrl(ws));
  return `${u.protocol === "wss:" ? "https:" : "http:"}//${u.host}`;
}

export class PresenceClient {
  /** Friends' presence (and watched members'), from the last welcome and the diffs since. */
  readonly presence = new PresenceMap();
  /** v1.1: the latest counts of each group watched with counts; dropped on `unwatchGroup`. */
  readonly groups = new Map<string, GroupCount>();
  /** This device's id. */
  readonly device: string;
  private readonly opts: ClientOptions;
  private readonly listeners = new Map<keyof ClientEvents, Set<Listener<never>>>();
  private readonly backoff: Backoff;
  private ws: string;
  private lp: string;
  private transport: Transport | undefined;
  private current: ConnectionState = "closed";
  private stopped = true;
  private useLongPoll: boolean;
  private retry: ReturnType<typeof setTimeout> | undefined;
  private welcomeTimer: ReturnType<typeof setTimeout> | undefined;
  /** The last inbox seq this device has: the `after` of the next connection. */
  private seq: number | undefined;
  private readonly pending = new Map<string, Pending>();
  /** `history` requests waiting for their page, oldest first. */
  private histories: PendingHistory[] = [];
  /** `status`, `read`, `edit`, `delete` asked for while not connected: sent after the welcome. */
  private queued: ClientMessage[] = [];
  /** The current transport delivered its welcome. */
  private welcomed = false;
  /** The focus and the group watches: the node forgets them with its session, so they are
   * sent again after every welcome (the focus first, then the watches in order). */
  private focused: string[] | null = null;
  private readonly watches = new Map<string, WatchGroup>();

  constructor(opts: ClientOptions) {
    if (!opts.ws && !opts.lp) throw new Error("give ws or lp");
    this.opts = opts;
    this.device = opts.device ?? randomId();
    this.backoff = new Backoff(opts.backoff);
    this.ws = opts.ws ? wsUrl(opts.ws) : "";
    this.lp = opts.lp ?? lpFromWs(opts.ws ?? "");
    this.useLongPoll = opts.transport === "lp" || !opts.ws;
    this.seq = opts.after;
  }

  /** Subscribes to an event; returns the unsubscribe. */
  on<K extends keyof ClientEvents>(type: K, fn: Listener<ClientEvents[K]>): () => void {
    let set = this.listeners.get(type);
    if (!set) {
      set = new Set();
      this.listeners.set(type, set);
    }
    set.add(fn as Listener<never>);
    return () => set.delete(fn as Listener<never>);
  }

  private emit<K extends keyof ClientEvents>(type: K, value: ClientEvents[K]): void {
    for (const fn of this.listeners.get(type) ?? []) (fn as Listener<ClientEvents[K]>)(value);
  }

  get state(): ConnectionState {
    return this.current;
  }

  /** The transport in use, while connected. */
  get transportKind(): TransportKind | undefined {
    return this.transport?.kind;
  }

  /** The last inbox seq this device has seen. */
  get inboxSeq(): number | undefined {
    return this.seq;
  }

  private setState(state: ConnectionState, reason: string): void {
    this.current = state;
    this.emit("state", { state, reason, transport: this.transport?.kind });
  }

  /** Connects (and keeps reconnecting until `close`). */
  connect(): void {
    if (!this.stopped) return;
    this.stopped = false;
    void this.dial("connect");
  }

  /** Reconnects now, skipping the backoff (e.g. the browser went back online). */
  reconnectNow(reason = "reconnect asked"): void {
    if (this.stopped) return;
    clearTimeout(this.retry);
    this.drop(reason);
    void this.dial(reason);
  }

  /** Ends the current transport without telling it to the node's session any other way
   * (e.g. the browser went offline: the socket is likely dead); reconnects after a backoff. */
  disconnect(reason: string): void {
    if (this.stopped) return;
    this.drop(reason);
    this.lost(reason);
  }

  private drop(reason: string): void {
    clearTimeout(this.welcomeTimer);
    this.transport?.close();
    this.transport = undefined;
    this.failHistories(reason);
  }

  private failHistories(reason: string): void {
    const h = this.histories;
    this.histories = [];
    for (const p of h) {
      clearTimeout(p.timer);
      p.reject(refused("closed", `history not answered: ${reason}`));
    }
  }

  /** Disconnects and stops reconnecting; sends still pending are refused. */
  close(): void {
    this.stopped = true;
    clearTimeout(this.retry);
    this.drop("closed by the client");
    this.queued = [];
    for (const [id, p] of this.pending) {
      p.reject({ type: "error", code: "closed", message: "the client was closed", id });
    }
    this.pending.clear();
    this.setState("closed", "closed by the client");
  }

  private async dial(reason: string): Promise<void> {
    if (this.stopped) return;
    this.setState(this.current === "closed" ? "connecting" : "reconnecting", reason);
    let token: string;
    try {
      token = typeof this.opts.token === "function" ? await this.opts.token() : this.opts.token;
    } catch (e) {
      return this.lost(`no token: ${String(e)}`);
    }
    if (this.stopped) return;
    const hello: ClientMessage = { type: "hello", token, device: this.device };
    if (this.seq !== undefined) hello.after = this.seq;
    const events = {
      message: (m: ServerMessage) => {
        if (this.transport === t) this.onMessage(m);
      },
      closed: (why: string, error?: ErrorMessage) => {
        if (this.transport === t) this.onClosed(why, error);
      },
    };
    let t: Transport;
    try {
      t = this.useLongPoll
        ? openLongPoll(this.lp, hello, events)
        : openWebSocket(this.ws, hello, events);
    } catch (e) {
      return this.lost(`cannot connect: ${String(e)}`);
    }
    this.transport = t;
    this.welcomed = false;
    if (t.kind === "ws" && this.opts.transport !== "ws") {
      this.welcomeTimer = setTimeout(() => {
        // The upgrade went through, or hangs, but nothing comes: a proxy that passes no
        // frames. Long-poll from now on.
        if (this.transport !== t) return;
        this.useLongPoll = true;
        t.close();
        this.transport = undefined;
        void this.dial("no welcome over WebSocket: trying long-poll");
      }, this.opts.welcomeTimeoutMs ?? 4000);
    }
  }

  private onMessage(m: ServerMessage): void {
    this.emit("message", m);
    switch (m.type) {
      case "welcome": {
        const w = m as Welcome;
        clearTimeout(this.welcomeTimer);
        this.welcomed = true;
        this.backoff.reset();
        // Without `after`, the node sends nothing older: the inbox starts at its head.
        if (this.seq === undefined) this.seq = w.inbox_seq;
        // A new session: the node has forgotten the focus and the watches.
        if (this.focused) this.transport?.send({ type: "focus", users: this.focused });
        for (const v of this.watches.values()) this.transport?.send(v);
        this.setState("open", "welcome");
        this.emit("presence", this.presence.reset(w.friends));
        this.emit("welcome", w);
        for (const p of this.pending.values()) this.transport?.send(p.msg);
        for (const q of this.queued.splice(0)) this.transport?.send(q);
        break;
      }
      case "presence": {
        const changes = (m as { changes?: unknown }).changes;
        if (Array.isArray(changes)) this.emit("presence", this.presence.apply(changes));
        break;
      }
      case "inbox": {
        const e = m as InboxEntry;
        if (this.seq === undefined || e.seq > this.seq) this.seq = e.seq;
        this.emit("inbox", e);
        break;
      }
      case "sent": {
        const s = m as SendResult & { type: "sent" };
        const p = this.pending.get(s.id);
        if (p) {
          this.pending.delete(s.id);
          p.resolve({ id: s.id, msg_id: s.msg_id, ts: s.ts });
        }
        break;
      }
      case "group_counts": {
        const c = m as GroupCounts;
        for (const g of c.groups) {
          // All zeros: the group was deleted or the user left it; the node watches it no more.
          if (g.total === 0) this.unwatched(g.group);
          else if (this.watches.get(g.group)?.counts) this.groups.set(g.group, g);
        }
        this.emit("groupCounts", c);
        break;
      }
      case "typing":
        this.emit("typing", m as ClientEvents["typing"]);
        break;
      case "history": {
        const page = m as HistoryPage;
        const key = page.group === undefined ? `u:${page.with}` : `g:${page.group}`;
        const i = this.histories.findIndex((h) => h.key === key);
        const h = i < 0 ? undefined : this.histories.splice(i, 1)[0];
        if (h) {
          clearTimeout(h.timer);
          h.resolve(page);
        }
        this.emit("history", page);
        break;
      }
      case "error": {
        const e = m as ErrorMessage;
        if (e.code === "moved") this.follow(e);
        const p = e.id === undefined ? undefined : this.pending.get(e.id);
        if (p && FINAL.has(e.code)) {
          this.pending.delete(e.id as string);
          p.reject(e);
        } else if (p) {
          // rate_limited, internal: the same id again later is safe (deduplicated).
          setTimeout(() => {
            if (this.pending.get(e.id as string) === p) this.transport?.send(p.msg);
          }, 1000);
        }
        this.emit("error", e);
        break;
      }
      default:
        break;
    }
  }

  private onClosed(reason: string, error?: ErrorMessage): void {
    clearTimeout(this.welcomeTimer);
    const kind = this.transport?.kind;
    this.transport = undefined;
    this.failHistories(reason);
    if (this.stopped) return;
    if (kind === "ws" && !this.welcomed && !error && this.opts.transport !== "ws") {
      // The WebSocket ended before its welcome (a proxy that refuses the upgrade, or a node
      // that is down): long-poll from now on, for this client.
      this.useLongPoll = true;
    }
    if (error?.code === "unauthorized" && typeof this.opts.token === "string") {
      // The same token would be refused again.
      this.stopped = true;
      this.setState("closed", reason);
      return;
    }
    if (error?.code === "moved") {
      // Over long-poll the `moved` error is the refusal of the open, not a message.
      this.follow(error);
      void this.dial(`moved: ${reason}`);
      return;
    }
    this.lost(reason);
  }

  /** Takes the addresses a `moved` error names. */
  private follow(e: ErrorMessage): void {
    if (e.ws) this.ws = wsUrl(e.ws);
    if (e.lp) this.lp = e.lp;
    else if (e.ws) this.lp = lpFromWs(e.ws);
  }

  /** Schedules the next attempt after a jittered delay. */
  private lost(reason: string): void {
    if (this.stopped) return;
    this.setState("reconnecting", reason);
    clearTimeout(this.retry);
    this.retry = setTimeout(() => void this.dial(reason), this.backoff.next());
  }

  private raw(m: ClientMessage): void {
    if (this.current === "open") this.transport?.send(m);
  }

  /** Sent now, or after the next welcome (a newer `status` replaces a queued one). */
  private later(m: ClientMessage): void {
    if (this.current === "open" && this.transport) return this.transport.send(m);
    if (m.type === "status") this.queued = this.queued.filter((q) => q.type !== "status");
    this.queued.push(m);
  }

  /** Any message (not queued: dropped while not connected). */
  sendRaw(m: ClientMessage): void {
    this.raw(m);
  }

  /** Sets the custom status (counts as activity); set while disconnected, it is sent after the
   * next welcome. */
  setStatus(status: Status, text?: string): void {
    this.later(text === undefined ? { type: "status", status } : { type: "status", status, text });
  }

  /** The person did something: resets idleness. */
  activity(): void {
    this.raw({ type: "activity" });
  }

  /** Sends a chat message to a user or a group; resolves once it is durable (`sent`). It is
   * sent again after a reconnect with the same id, which the node deduplicates. */
  send(target: Target, text: string, id = randomId()): Promise<SendResult> {
    const msg: ClientMessage = { type: "send", id, text, ...target };
    return new Promise((resolve, reject) => {
      this.pending.set(id, { msg, resolve, reject });
      this.raw(msg);
    });
  }

  /** This device has every inbox entry up to `seq`. */
  ack(seq: number): void {
    this.raw({ type: "ack", seq });
  }

  /** Asks for inbox entries after `after` (they arrive as `inbox` events). */
  sync(after: number, limit?: number): void {
    this.raw(limit === undefined ? { type: "sync", after } : { type: "sync", after, limit });
  }

  /** Tells the recipients' live devices this user is typing (dropped while disconnected). */
  typing(target: Target): void {
    this.raw({ type: "typing", ...target });
  }

  /** `read`, `edit` and `delete` asked for while disconnected are sent after the next welcome;
   * they come back as `inbox` entries (the node answers no `sent` for them). */
  read(msgId: string): void {
    this.later({ type: "read", msg_id: msgId });
  }

  edit(msgId: string, text: string): void {
    this.later({ type: "edit", msg_id: msgId, text });
  }

  delete(msgId: string): void {
    this.later({ type: "delete", msg_id: msgId });
  }

  /** v1.1: only these friends' presence (at most 200 ids) reaches this session from now on;
   * their current state follows at once. `null`: every friend again, with the current state of
   * those the focus kept out. Kept across reconnects (sent again after every welcome). Friends
   * out of focus keep their last known entry in `presence`; other devices are not narrowed. */
  focus(users: string[] | null): void {
    if (users && users.length > 200) throw new RangeError("focus: at most 200 users");
    this.focused = users && [...users];
    this.raw({ type: "focus", users: this.focused });
  }

  /** v1.1: `groupCounts` events and `groups` entries for a group this user belongs to, and with
   * `members` their presence in `presence` (a member no longer shown arrives as removed).
   * Again for the same group replaces the options. Kept across reconnects (after a welcome the
   * members briefly leave `presence` until the node shows them again). The node's refusals
   * (`not_found`, `forbidden`, `bad_request`, `unavailable`) come as `error` events. */
  watchGroup(group: string, opts: WatchOptions = {}): void {
    if (opts.members && opts.members.length > 200) {
      throw new RangeError("watchGroup: at most 200 members");
    }
    const w: WatchGroup = { type: "watch_group", group, counts: opts.counts ?? true };
    if (opts.members) w.members = [...opts.members];
    if (!w.counts) this.groups.delete(group);
    this.watches.set(group, w);
    this.raw(w);
  }

  /** v1.1: stops watching a group; its members shown only for it arrive as removed. */
  unwatchGroup(group: string): void {
    if (this.unwatched(group)) this.raw({ type: "unwatch_group", group });
  }

  private unwatched(group: string): boolean {
    this.groups.delete(group);
    return this.watches.delete(group);
  }

  /** One page of the conversation with a user or a group, newest first. Refused (`closed`)
   * when not connected or when the connection ends first; a refusal by the node (an unknown
   * group, not a member) carries no id to match, so it ends in a `timeout` after `timeoutMs`
   * (the `error` event has it at once). */
  history(
    target: { with: string } | { group: string },
    opts: { before?: string; limit?: number; timeoutMs?: number } = {},
  ): Promise<HistoryPage> {
    const key = "group" in target ? `g:${target.group}` : `u:${target.with}`;
    return new Promise((resolve, reject) => {
      const t = this.transport;
      if (this.current !== "open" || !t) return reject(refused("closed", "not connected"));
      const timer = setTimeout(() => {
        this.histories = this.histories.filter((h) => h.timer !== timer);
        reject(refused("timeout", "no history answer"));
      }, opts.timeoutMs ?? 10_000);
      this.histories.push({ key, resolve, reject, timer });
      const m: ClientMessage = { type: "history", ...target };
      if (opts.before !== undefined) m.before = opts.before;
      if (opts.limit !== undefined) m.limit = opts.limit;
      t.send(m);
    });
  }
}
