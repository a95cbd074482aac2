//! loom models of the engine's concurrent paths, run on the shipped code through the `sync`
//! shim: `RUSTFLAGS="--cfg loom" cargo test -p presence-core --test loom --release`.
//!
//! Each model races real engine calls on loom threads and then checks the one property that
//! matters to a watcher: its view, built only from its welcome snapshot and the diffs of later
//! ticks, ends equal to the truth, with no entry lost and none that changes nothing.
#![cfg(loom)]

use std::collections::BTreeMap;

use loom::sync::Arc;
use loom::thread;
use presence_core::{Batch, Change, Config, Engine, Presence, State, Status, UserId};

const T0: u64 = 1_000_000;

fn cfg() -> Config {
    Config {
        idle_thresholds_ms: vec![1_000],
        grace_ms: 100,
        heartbeat_timeout_ms: 1_000_000,
        shards: 2,
        threads: 1,
        ..Config::default()
    }
}

/// A watcher's view: friend -> presence, kept from a snapshot and diffs.
#[derive(Debug, Default)]
struct View {
    after_tick: u64,
    friends: BTreeMap<UserId, Presence>,
}

impl View {
    fn from_welcome(w: &presence_core::Welcome) -> Self {
        Self {
            after_tick: w.tick,
            friends: w.friends.iter().cloned().collect(),
        }
    }

    /// Applies the batch if it is newer than the view; every entry must change something.
    fn apply(&mut self, watcher: UserId, b: &Batch) {
        if b.tick <= self.after_tick {
            return;
        }
        self.after_tick = b.tick;
        for &i in b.diff_of(watcher) {
            let (friend, change) = b.entry(i);
            match change {
                Change::Removed => {
                    assert!(
                        self.friends.remove(friend).is_some(),
                        "removal of a non-friend"
                    );
                }
                Change::Presence(p) => {
                    let old = self.friends.insert(*friend, p.clone());
                    assert_ne!(old.as_ref(), Some(p), "an entry that changes nothing");
                }
            }
        }
    }
}

/// Explores `f` with at most `preemptions` preemptions per execution.
fn explore(preemptions: usize, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound = Some(preemptions);
    builder.check(f);
}

/// A fresh engine with users "a" and "b".
fn engine_ab() -> (Arc<Engine>, UserId, UserId) {
    let e = Arc::new(Engine::new(cfg(), T0).expect("config"));
    let a = e.intern("a").expect("id");
    let b = e.intern("b").expect("id");
    (e, a, b)
}

fn truth(e: &Engine, watcher: UserId) -> BTreeMap<UserId, Presence> {
    e.friends_presence(watcher).into_iter().collect()
}

/// `activity` on a shard races `tick`: the idle user's return to online is published by
/// whichever tick comes after it, exactly once.
#[test]
fn activity_races_tick() {
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    explore(3, || {
        RUNS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let (e, a, b) = engine_ab();
        e.add_friendship(a, b).expect("edge");
        let _ = e.tick(T0); // publishes the setup; its diffs are not under test
        let wa = e.connect(a, "w", T0).expect("connect");
        let sb = e.connect(b, "w", T0).expect("connect").session;
        let mut view = View::from_welcome(&wa);
        view.apply(a, &e.tick(T0 + 1));
        // b idles past the threshold.
        view.apply(a, &e.tick(T0 + 2_000));
        assert_eq!(view.friends[&b].state, State::Idle(0));

        let e2 = e.clone();
        let t = thread::spawn(move || e2.activity(sb, T0 + 2_100).expect("activity"));
        let racing = e.tick(T0 + 2_100);
        t.join().expect("join");
        let last = e.tick(T0 + 2_200);
        view.apply(a, &racing);
        view.apply(a, &last);
        assert_eq!(view.friends, truth(&e, a));
        assert_eq!(view.friends[&b].state, State::Online);
    });
    eprintln!(
        "activity_races_tick: {} executions",
        RUNS.load(std::sync::atomic::Ordering::Relaxed)
    );
}

/// The hand-off from shards to the fan-out: a status change and a new session's snapshot
/// race a tick; the new session must see every change exactly once, from its snapshot or from
/// a later diff.
#[test]
fn connect_and_change_race_tick() {
    explore(2, || {
        let (e, a, b) = engine_ab();
        e.add_friendship(a, b).expect("edge");
        e.connect(b, "w", T0).expect("connect");
        let _ = e.tick(T0); // publishes the setup; its diffs are not under test

        let e1 = e.clone();
        let joiner = thread::spawn(move || e1.connect(a, "phone", T0 + 10).expect("connect"));
        let e2 = e.clone();
        let changer = thread::spawn(move || {
            e2.set_status(b, Status::Busy, Some("x"), T0 + 10)
                .expect("status");
        });
        let racing = e.tick(T0 + 10);
        let welcome = joiner.join().expect("join");
        changer.join().expect("join");
        let last = e.tick(T0 + 20);

        let mut view = View::from_welcome(&welcome);
        view.apply(a, &racing);
        view.apply(a, &last);
        assert_eq!(view.friends, truth(&e, a));
        assert_eq!(view.friends[&b].status, Status::Busy);
    });
}

/// A friendship added while both are live races a tick and a second device's connect: every
/// device ends up knowing the new friend exactly once.
#[test]
fn edge_change_races_tick_and_connect() {
    explore(2, || {
        let (e, a, b) = engine_ab();
        let first = e.connect(a, "web", T0).expect("connect");
        e.connect(b, "w", T0).expect("connect");
        let _ = e.tick(T0); // publishes the setup; its diffs are not under test
        let mut web = View::from_welcome(&first);

        let e1 = e.clone();
        let adder = thread::spawn(move || {
            e1.add_friendship(a, b).expect("edge");
        });
        let e2 = e.clone();
        let joiner = thread::spawn(move || e2.connect(a, "phone", T0 + 5).expect("connect"));
        let racing = e.tick(T0 + 10);
        adder.join().expect("join");
        let second = joiner.join().expect("join");
        let last = e.tick(T0 + 20);

        let mut phone = View::from_welcome(&second);
        for v in [&mut web, &mut phone] {
            v.apply(a, &racing);
            v.apply(a, &last);
            assert_eq!(v.friends, truth(&e, a));
            assert!(v.friends.contains_key(&b));
        }
    });
}

/// Cluster mode: a peer frame setting a mirrored friend's presence races a tick and a new
/// session's connect; the session sees the mirrored change exactly once, from its snapshot or
/// from a later diff, and a take racing the same tick keeps the engine whole.
#[test]
fn mirrored_change_races_tick_and_connect() {
    explore(2, || {
        let e = Arc::new(
            Engine::new(
                Config {
                    cluster: true,
                    ..cfg()
                },
                T0,
            )
            .expect("config"),
        );
        let a = e.intern("a").expect("id");
        let m = e.intern("m").expect("id");
        e.take_users(&[a], &[(a, m)], T0).expect("take");
        let _ = e.tick(T0); // publishes the setup; its diffs are not under test

        let e1 = e.clone();
        let joiner = thread::spawn(move || e1.connect(a, "phone", T0 + 10).expect("connect"));
        let e2 = e.clone();
        let busy = Presence {
            state: State::Online,
            last_active: Some(T0),
            status: Status::Busy,
            text: None,
        };
        let peer = thread::spawn(move || e2.set_mirrored(m, &busy, T0 + 10).expect("mirror"));
        let racing = e.tick(T0 + 10);
        let welcome = joiner.join().expect("join");
        peer.join().expect("join");
        let last = e.tick(T0 + 20);

        let mut view = View::from_welcome(&welcome);
        view.apply(a, &racing);
        view.apply(a, &last);
        assert_eq!(view.friends, truth(&e, a));
        assert_eq!(view.friends[&m].status, Status::Busy);
        assert!(last.outgoing.is_empty() || racing.outgoing.is_empty());
    });
}
