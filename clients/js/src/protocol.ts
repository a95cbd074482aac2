/** The protocol's messages (protocol v1.1) as the SDK reads and writes them. */

export type State = "online" | "idle" | "offline";
export type Status = "available" | "busy" | "dnd" | "invisible";

/** One friend's presence as the node sends it. */
export interface PresenceEntry {
  user: string;
  state?: State;
  /** Only when idle: the largest idle threshold passed, in ms. */
  idle_ms?: number;
  /** ms since the epoch; for offline users, last seen. */
  last_active?: number;
  status?: Status;
  text?: string;
  /** The friend was removed, or (v1.1) a watched group's member is no longer shown. */
  removed?: boolean;
}

export interface Welcome {
  type: "welcome";
  user: string;
  device: string;
  heartbeat_ms: number;
  idle_thresholds_ms: number[];
  inbox_seq: number;
  friends: PresenceEntry[];
}

export interface InboxEntry {
  type: "inbox";
  seq: number;
  kind: "message" | "edit" | "delete" | "read";
  msg_id: string;
  from: string;
  to?: string;
  group?: string;
  text?: string;
  ts: number;
}

/** One message of a `history` page. */
export interface HistoryMessage {
  msg_id: string;
  from: string;
  to?: string;
  group?: string;
  /** Absent once deleted. */
  text?: string;
  ts: number;
  edited_ts?: number;
  deleted?: boolean;
}

/** One page of a conversation, newest first (the answer to `history`). */
export interface HistoryPage {
  type: "history";
  with?: string;
  group?: string;
  messages: HistoryMessage[];
  /** The page is full: ask again with `before` the oldest `msg_id`. */
  more: boolean;
}

export interface ErrorMessage {
  type: "error";
  code: string;
  message: string;
  id?: string;
  /** `moved`: where this user's sessions belong. */
  ws?: string;
  quic?: string;
  lp?: string;
}

/** v1.1: one group's counts: `online` members active now, `idle` those idle, `total` every
 * member (the rest are offline; invisible members count as offline). */
export interface GroupCount {
  group: string;
  online: number;
  idle: number;
  total: number;
}

/** v1.1: the counts of watched groups that changed (the current counts at once after
 * `watch_group`, then at most one frame a tick). All zeros: the group was deleted or the user
 * left it, and it is watched no more. */
export interface GroupCounts {
  type: "group_counts";
  tick: number;
  groups: GroupCount[];
}

/** v1.1 client messages: partial subscriptions, per session. */
export type WatchGroup = {
  type: "watch_group";
  group: string;
  /** `group_counts` for the group (default true). */
  counts?: boolean;
  /** At most 200 members whose presence the session gets as if they were friends. */
  members?: string[];
};

export type UnwatchGroup = {
  type: "unwatch_group";
  group: string;
};

export type Focus = {
  type: "focus";
  /** At most 200 friend ids, or `null`: every friend again. */
  users: string[] | null;
};

export type ServerMessage =
  | Welcome
  | { type: "presence"; tick: number; changes: PresenceEntry[] }
  | { type: "pong" }
  | { type: "sent"; id: string; msg_id: string; ts: number }
  | InboxEntry
  | { type: "typing"; from: string; group?: string }
  | HistoryPage
  | ErrorMessage
  | GroupCounts
  | { type: string; [field: string]: unknown };

/** A client message: an object with a `type`. */
export interface ClientMessage {
  type: string;
  [field: string]: unknown;
}
