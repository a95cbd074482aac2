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
  /** The friend was removed. */
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

export type ServerMessage =
  | Welcome
  | { type: "presence"; tick: number; changes: PresenceEntry[] }
  | { type: "pong" }
  | { type: "sent"; id: string; msg_id: string; ts: number }
  | InboxEntry
  | { type: "typing"; from: string; group?: string }
  | HistoryPage
  | ErrorMessage
  | { type: string; [field: string]: unknown };

/** A client message: an object with a `type`. */
export interface ClientMessage {
  type: string;
  [field: string]: unknown;
}
