/** Browser glue: activity from input while the page is visible, and reconnects that follow
 * the page's life (back online, restored from the back-forward cache). */

import type { PresenceClient } from "./client.js";

export interface ActivityOptions {
  /** At most one `activity` per this many ms (default 20 s: idle levels are minutes). */
  throttleMs?: number;
  /** Where input is watched (default `window`). */
  target?: EventTarget;
  /** Whose visibility counts (default `document`). */
  doc?: { visibilityState: string } & EventTarget;
}

const INPUT = ["pointerdown", "keydown", "wheel", "touchstart", "mousemove"];

/** Sends `activity` on input, throttled, and never from a hidden page. Returns the undo. */
export function watchActivity(client: PresenceClient, opts: ActivityOptions = {}): () => void {
  const g = globalThis as unknown as { window?: EventTarget; document?: ActivityOptions["doc"] };
  const target = opts.target ?? g.window;
  const doc = opts.doc ?? g.document;
  if (!target) return () => undefined;
  const throttle = opts.throttleMs ?? 20_000;
  let last = -Infinity;
  const seen = () => {
    if (doc && doc.visibilityState !== "visible") return;
    const now = Date.now();
    if (now - last < throttle) return;
    last = now;
    client.activity();
  };
  for (const t of INPUT) target.addEventListener(t, seen, { passive: true });
  doc?.addEventListener("visibilitychange", seen);
  return () => {
    for (const t of INPUT) target.removeEventListener(t, seen);
    doc?.removeEventListener("visibilitychange", seen);
  };
}

/** Follows the page's life: when the browser goes offline the connection is dropped at once
 * (rather than after the network stack gives up) and it reconnects as soon as it is back
 * online; when the page is hidden for good or put in the back-forward cache the session is
 * closed (a long-poll session says so to the node, so friends do not see a ghost for the
 * heartbeat timeout), and a page restored from that cache connects again. Returns the undo. */
export function watchPage(client: PresenceClient, win?: EventTarget): () => void {
  const target = win ?? (globalThis as unknown as { window?: EventTarget }).window;
  if (!target) return () => undefined;
  const online = () => {
    if (client.state !== "open") client.reconnectNow("back online");
  };
  const offline = () => client.disconnect("the browser went offline");
  const hide = () => client.close();
  const show = (e: Event) => {
    if ((e as Event & { persisted?: boolean }).persisted) client.connect();
  };
  const events: [string, EventListener][] = [
    ["online", online],
    ["offline", offline],
    ["pagehide", hide],
    ["pageshow", show],
  ];
  for (const [t, f] of events) target.addEventListener(t, f);
  return () => {
    for (const [t, f] of events) target.removeEventListener(t, f);
  };
}
