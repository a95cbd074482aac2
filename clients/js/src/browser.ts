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

/** Reconnects at once when the browser is back online or the page is restored from the
 * back-forward cache; disconnects when the page is put in it. Returns the undo. */
export function watchPage(client: PresenceClient, win?: EventTarget): () => void {
  const target = win ?? (globalThis as unknown as { window?: EventTarget }).window;
  if (!target) return () => undefined;
  const online = () => client.reconnectNow("back online");
  const hide = (e: Event) => {
    if ((e as Event & { persisted?: boolean }).persisted) client.close();
  };
  const show = (e: Event) => {
    if ((e as Event & { persisted?: boolean }).persisted) client.connect();
  };
  target.addEventListener("online", online);
  target.addEventListener("pagehide", hide);
  target.addEventListener("pageshow", show);
  return () => {
    target.removeEventListener("online", online);
    target.removeEventListener("pagehide", hide);
    target.removeEventListener("pageshow", show);
  };
}
