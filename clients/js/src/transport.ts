/** The two ways to reach a node: a WebSocket, or HTTP long-poll (`/v1/lp/*`) where a network
 * breaks WebSockets. Both say hello, deliver server messages in order and end once, with the
 * reason (and the `error` message that ended them, if any). */

import type { ClientMessage, ErrorMessage, ServerMessage } from "./protocol.js";

export type TransportKind = "ws" | "lp";

export interface TransportEvents {
  message(m: ServerMessage): void;
  /** The transport ended (called once). */
  closed(reason: string, error?: ErrorMessage): void;
}

export interface Transport {
  readonly kind: TransportKind;
  /** Sends one client message (dropped if the transport has ended). */
  send(m: ClientMessage): void;
  /** Ends the transport; `closed` is not called for a close asked for here. */
  close(): void;
}

/** Error codes after which the node closes the session. */
const CLOSING = new Set(["protocol", "unauthorized", "moved", "unavailable"]);

function parse(text: string): ServerMessage | undefined {
  try {
    const m: unknown = JSON.parse(text);
    return m && typeof m === "object" && typeof (m as { type?: unknown }).type === "string"
      ? (m as ServerMessage)
      : undefined;
  } catch {
    return undefined;
  }
}

/** A WebSocket to `url` (`ws://host:port/v1/ws`) that says `hello` once open. */
export function openWebSocket(url: string, hello: ClientMessage, ev: TransportEvents): Transport {
  const ws = new WebSocket(url);
  let done = false;
  let lastError: ErrorMessage | undefined;
  const end = (reason: string, error?: ErrorMessage, notify = true) => {
    if (done) return;
    done = true;
    try {
      ws.close();
    } catch {
      // already closing
    }
    if (notify) ev.closed(reason, error);
  };
  ws.onopen = () => ws.send(JSON.stringify(hello));
  ws.onmessage = (e: MessageEvent) => {
    if (done) return;
    const m = parse(String(e.data));
    if (!m) return end("the node sent a message that is not JSON");
    if (m.type === "error" && CLOSING.has((m as ErrorMessage).code)) lastError = m as ErrorMessage;
    ev.message(m);
  };
  ws.onclose = (e: CloseEvent) =>
    end(lastError?.message ?? `WebSocket closed (${e.code}${e.reason ? ` ${e.reason}` : ""})`, lastError);
  ws.onerror = () => {
    // A close event follows.
  };
  return {
    kind: "ws",
    send(m) {
      if (!done && ws.readyState === 1) ws.send(JSON.stringify(m));
    },
    close() {
      end("closed by the client", undefined, false);
    },
  };
}

export interface LongPollOptions {
  /** How long one request may take before it is given up (ms); above the node's hold. */
  requestTimeoutMs?: number;
  fetch?: typeof fetch;
}

/** A long-poll session on the node at `base` (`http://host:port`). */
export function openLongPoll(
  base: string,
  hello: ClientMessage,
  ev: TransportEvents,
  opts: LongPollOptions = {},
): Transport {
  const doFetch = opts.fetch ?? fetch.bind(globalThis);
  const timeoutMs = opts.requestTimeoutMs ?? 40_000;
  const stop = new AbortController();
  let sid = "";
  let cursor = 0;
  let done = false;
  let queue: ClientMessage[] = [];
  let flushing = false;

  const end = (reason: string, error?: ErrorMessage, notify = true) => {
    if (done) return;
    done = true;
    stop.abort();
    if (notify) ev.closed(reason, error);
  };

  /** One request, given up after `timeoutMs` or when the transport ends. */
  const request = async (path: string, init: RequestInit = {}): Promise<Response> => {
    const ctrl = new AbortController();
    const timer = setTimeout(() => ctrl.abort(), timeoutMs);
    const onStop = () => ctrl.abort();
    stop.signal.addEventListener("abort", onStop);
    try {
      return await doFetch(base + path, { ...init, signal: ctrl.signal });
    } finally {
      clearTimeout(timer);
      stop.signal.removeEventListener("abort", onStop);
    }
  };

  /** A refusal's `error` message, if its body is one. */
  const refusal = async (r: Response): Promise<ErrorMessage | undefined> => {
    const body = parse(await r.text().catch(() => ""));
    return body?.type === "error" ? (body as ErrorMessage) : undefined;
  };

  const deliver = (messages: unknown) => {
    if (!Array.isArray(messages)) return;
    for (const m of messages as ServerMessage[]) {
      if (done) return;
      ev.message(m);
    }
  };

  const poll = async () => {
    let failures = 0;
    while (!done) {
      try {
        const r = await request(`/v1/lp/poll?session=${encodeURIComponent(sid)}&cursor=${cursor}`);
        if (r.status !== 200) {
          const e = await refusal(r);
          return end(e?.message ?? `poll answered ${r.status}`, e);
        }
        const body = (await r.json()) as { cursor: number; messages: unknown };
        failures = 0;
        // The cursor moves only once the messages are in hand: a lost answer comes again.
        cursor = body.cursor;
        deliver(body.messages);
      } catch (e) {
        if (done) return;
        failures += 1;
        if (failures > 3) return end(`poll failed: ${String(e)}`);
        await new Promise((res) => setTimeout(res, 250 * failures));
      }
    }
  };

  const flush = async () => {
    while (!done && sid && queue.length > 0) {
      const batch = queue.splice(0, 50);
      try {
        const r = await request(`/v1/lp/send?session=${encodeURIComponent(sid)}`, {
          method: "POST",
          // text/plain: a "simple" request, no preflight.
          headers: { "content-type": "text/plain" },
          body: JSON.stringify(batch),
        });
        if (r.status !== 204) {
          const e = await refusal(r);
          return end(e?.message ?? `send answered ${r.status}`, e);
        }
      } catch (e) {
        return end(`send failed: ${String(e)}`);
      }
    }
    flushing = false;
  };

  (async () => {
    let r: Response;
    try {
      r = await request("/v1/lp/open", {
        method: "POST",
        headers: { "content-type": "text/plain" },
        body: JSON.stringify(hello),
      });
    } catch (e) {
      return end(`open failed: ${String(e)}`);
    }
    if (r.status !== 200) {
      const e = await refusal(r);
      return end(e?.message ?? `open answered ${r.status}`, e);
    }
    const body = (await r.json()) as { session: string; cursor: number; messages: unknown };
    sid = body.session;
    cursor = body.cursor;
    deliver(body.messages);
    if (queue.length > 0 && !flushing) {
      flushing = true;
      void flush();
    }
    await poll();
  })().catch((e) => end(`long-poll failed: ${String(e)}`));

  return {
    kind: "lp",
    send(m) {
      if (done) return;
      queue.push(m);
      if (!flushing && sid) {
        flushing = true;
        // Messages sent in one turn leave in one request.
        queueMicrotask(() => void flush());
      }
    },
    close() {
      if (done) return;
      const id = sid;
      end("closed by the client", undefined, false);
      queue = [];
      if (id) {
        void doFetch(`${base}/v1/lp/close?session=${encodeURIComponent(id)}`, {
          method: "POST",
          keepalive: true,
        }).catch(() => undefined);
      }
    },
  };
}
