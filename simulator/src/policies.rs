//! The fan-out policy comparison of `replay --policies`: what policies (a) "online/offline +
//! last-active on every activity" and (b) "every idle level pushed at once" would have sent for
//! the replayed activity.
//!
//! Both need each user's count of online friends, and that count changes for every friend of a
//! user who comes online or goes offline: hundreds of thousands of random counter updates per
//! tick at ten million users. So the accounting runs on a thread of its own, one tick behind the
//! replay, fed with each tick's activity users and published changes in order. The counts are
//! exactly those of doing it inline: the counters change only at a tick's published changes, and
//! a tick's activities all come before them.

use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use anyhow::{Result, anyhow};
use presence_core::{Engine, UserId, prefetch};

/// A published presence change, as the policies see it.
#[derive(Debug, Clone, Copy)]
pub struct Published {
    pub user: u32,
    /// Online/offline changed (not only the idle level).
    pub flip: bool,
    /// The user is offline now.
    pub offline: bool,
}

/// One tick's input.
#[derive(Debug, Default)]
pub struct PolicyTick {
    /// The user of every activity event applied in the tick (one entry per event).
    pub activity: Vec<u32>,
    /// The tick's published presence changes, in order.
    pub published: Vec<Published>,
}

impl PolicyTick {
    fn clear(&mut self) {
        self.activity.clear();
        self.published.clear();
    }
}

/// Entries policies (a) and (b) send in one tick.
#[derive(Debug, Clone, Copy, Default)]
pub struct PolicyCounts {
    pub a: u64,
    pub b: u64,
}

/// The accounting thread and its channels.
pub struct Policies<'scope> {
    tx: SyncSender<PolicyTick>,
    spare: Receiver<PolicyTick>,
    handle: ScopedJoinHandle<'scope, Vec<PolicyCounts>>,
}

impl<'scope> Policies<'scope> {
    /// Starts the thread for a graph of `users` users, with everybody offline.
    pub fn spawn<'env>(
        scope: &'scope Scope<'scope, 'env>,
        engine: &'env Engine,
        users: usize,
    ) -> std::io::Result<Self> {
        // A few ticks of slack: the main thread never waits on a slow tick here.
        let (tx, rx) = sync_channel::<PolicyTick>(4);
        let (spare_tx, spare) = sync_channel::<PolicyTick>(8);
        let handle = std::thread::Builder::new()
            .name("policies".into())
            .spawn_scoped(scope, move || {
                let mut online_friends = vec![0u32; users];
                let mut per_tick = Vec::new();
                for mut tick in rx {
                    per_tick.push(count_tick(engine, &mut online_friends, &tick));
                    tick.clear();
                    spare_tx.try_send(tick).ok();
                }
                per_tick
            })?;
        Ok(Self { tx, spare, handle })
    }

    /// An empty tick to fill (a recycled one when there is one).
    pub fn buffer(&self) -> PolicyTick {
        self.spare.try_recv().unwrap_or_default()
    }

    /// Queues a tick's input (blocks only if the thread is four ticks behind).
    pub fn send(&self, tick: PolicyTick) -> Result<()> {
        self.tx
            .send(tick)
            .map_err(|_| anyhow!("the policy accounting thread stopped"))
    }

    /// Waits for the queued ticks and returns the counts of every tick, in order.
    pub fn finish(self) -> Result<Vec<PolicyCounts>> {
        drop(self.tx);
        self.handle
            .join()
            .map_err(|_| anyhow!("the policy accounting thread panicked"))
    }
}

/// Counts one tick and moves the online-friend counters past its flips.
fn count_tick(engine: &Engine, online_friends: &mut [u32], tick: &PolicyTick) -> PolicyCounts {
    const AHEAD: usize = 8;
    let mut out = PolicyCounts::default();
    // Policy (a): one entry per online friend on every activity.
    for (i, &u) in tick.activity.iter().enumerate() {
        if let Some(c) = tick
            .activity
            .get(i + AHEAD)
            .and_then(|&n| online_friends.get(n as usize))
        {
            prefetch(c);
        }
        out.a += online_friends.get(u as usize).map_or(0, |&c| u64::from(c));
    }
    for (i, p) in tick.published.iter().enumerate() {
        if let Some(n) = tick.published.get(i + AHEAD)
            && let Some(c) = online_friends.get(n.user as usize)
        {
            prefetch(c);
        }
        if let Some(n) = tick.published.get(i + AHEAD / 2)
            && n.flip
        {
            engine.prefetch_friends(UserId(n.user));
        }
        let Some(&count) = online_friends.get(p.user as usize) else {
            continue;
        };
        // Policy (b): every published change goes to every online friend.
        out.b += u64::from(count);
        if !p.flip {
            continue;
        }
        // Policy (a) pushes online/offline changes too.
        out.a += u64::from(count);
        let friends = engine.friends(UserId(p.user));
        for (j, f) in friends.iter().enumerate() {
            if let Some(c) = friends
                .get(j + AHEAD)
                .and_then(|n| online_friends.get(n.index()))
            {
                prefetch(c);
            }
            if let Some(c) = online_friends.get_mut(f.index()) {
                *c = if p.offline {
                    c.saturating_sub(1)
                } else {
                    *c + 1
                };
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::Config;

    #[test]
    fn counts_follow_the_flips_in_order() -> Result<()> {
        let engine = Engine::new(Config::default(), 0)?;
        let ids = ["u0", "u1", "u2", "u3"]
            .map(|name| engine.intern(name).map(|id| id.0))
            .into_iter()
            .collect::<Result<Vec<u32>, _>>()?;
        assert_eq!(ids, vec![0, 1, 2, 3], "ids are dense from 0");
        // Edges 0-1, 0-2, 1-2, 2-3.
        for (a, b) in [(0, 1), (0, 2), (1, 2), (2, 3)] {
            engine.add_friendship(UserId(a), UserId(b))?;
        }
        let mut online = vec![0u32; 4];
        let change = |user, flip, offline| Published {
            user,
            flip,
            offline,
        };
        // Tick 1: activities of 1 and 3 (nobody online yet); 0 comes online (no online
        // friend), then 2 (one: 0, already counted online).
        let t1 = PolicyTick {
            activity: vec![1, 3],
            published: vec![change(0, true, false), change(2, true, false)],
        };
        let c = count_tick(&engine, &mut online, &t1);
        assert_eq!((c.a, c.b), (1, 1));
        assert_eq!(online, vec![1, 2, 1, 1]);
        // Tick 2: activities of 1 (two online friends) and 3 (one); 2 changes idle level (not
        // a flip: counts for (b) only, one online friend), then 0 goes offline (one: 2).
        let t2 = PolicyTick {
            activity: vec![1, 3],
            published: vec![change(2, false, false), change(0, true, true)],
        };
        let c = count_tick(&engine, &mut online, &t2);
        assert_eq!((c.a, c.b), (2 + 1 + 1, 1 + 1));
        assert_eq!(online, vec![1, 1, 0, 1]);
        Ok(())
    }
}
