/** Reconnect delays: exponential with full jitter, so a node's restart is not answered by
 * every client at the same instant. */

export interface BackoffOptions {
  /** Shortest delay (ms), 500 by default. */
  minMs?: number;
  /** Longest delay (ms), 20,000 by default. */
  maxMs?: number;
  /** A number in [0, 1); `Math.random` by default (tests pass their own). */
  random?: () => number;
}

/** Delays for attempts 0, 1, 2, …: uniform between `minMs` and `min(maxMs, minMs · 2^(n+1))`. */
export class Backoff {
  private attempt = 0;
  private readonly minMs: number;
  private readonly maxMs: number;
  private readonly random: () => number;

  constructor(opts: BackoffOptions = {}) {
    this.minMs = Math.max(0, opts.minMs ?? 500);
    this.maxMs = Math.max(this.minMs, opts.maxMs ?? 20_000);
    this.random = opts.random ?? Math.random;
  }

  /** The delay before the next attempt; each call counts one more attempt. */
  next(): number {
    const cap = Math.min(this.maxMs, this.minMs * 2 ** Math.min(this.attempt + 1, 30));
    this.attempt += 1;
    return this.minMs + this.random() * (cap - this.minMs);
  }

  /** A connection held: start again from the shortest delay. */
  reset(): void {
    this.attempt = 0;
  }
}
