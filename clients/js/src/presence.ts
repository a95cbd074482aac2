/** Friends' presence kept from the welcome's snapshot and the batched diffs after it. */

import type { PresenceEntry } from "./protocol.js";

/** What one `apply` changed: the new entries, and the users removed. */
export interface PresenceChange {
  updated: PresenceEntry[];
  removed: string[];
}

export class PresenceMap {
  private readonly entries = new Map<string, PresenceEntry>();

  /** Replaces everything with a welcome's snapshot. */
  reset(friends: PresenceEntry[]): PresenceChange {
    const removed = [...this.entries.keys()].filter((u) => !friends.some((f) => f.user === u));
    this.entries.clear();
    for (const f of friends) this.entries.set(f.user, f);
    return { updated: friends, removed };
  }

  /** Applies a `presence` frame's changes (a removed friend is dropped). */
  apply(changes: PresenceEntry[]): PresenceChange {
    const change: PresenceChange = { updated: [], removed: [] };
    for (const e of changes) {
      if (e.removed) {
        if (this.entries.delete(e.user)) change.removed.push(e.user);
      } else {
        this.entries.set(e.user, e);
        change.updated.push(e);
      }
    }
    return change;
  }

  get(user: string): PresenceEntry | undefined {
    return this.entries.get(user);
  }

  /** Every friend's entry. */
  all(): PresenceEntry[] {
    return [...this.entries.values()];
  }

  get size(): number {
    return this.entries.size;
  }
}
