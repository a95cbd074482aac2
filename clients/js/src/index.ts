/** `@presence/client`: the presence engine's client for browsers and Node (ES module, no
 * runtime dependencies). */

export { Backoff, type BackoffOptions } from "./backoff.js";
export { watchActivity, watchPage, type ActivityOptions } from "./browser.js";
export {
  PresenceClient,
  type ClientEvents,
  type ClientOptions,
  type ConnectionState,
  type SendResult,
  type StateEvent,
  type Target,
  type WatchOptions,
} from "./client.js";
export { PresenceMap, type PresenceChange } from "./presence.js";
export type * from "./protocol.js";
export {
  openLongPoll,
  openWebSocket,
  type LongPollOptions,
  type Transport,
  type TransportEvents,
  type TransportKind,
} from "./transport.js";
