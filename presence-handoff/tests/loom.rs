//! loom models of the node's hand-offs to its session tasks, run on the shipped code through
//! the `sync` shim:
//! `RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 cargo test -p presence-handoff --test loom --release`.
//!
//! Each model races the threads that hand a session something (the tick, the chat delivery)
//! against the session's task (a wait on the outbox's wakeup, then `take`), at most three
//! threads, and then checks what the session's client would end up with: the latest state of
//! every friend, every inbox entry in order or read back, every batch after its welcome and
//! none before.
#![cfg(loom)]

use std::collections::BTreeMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::AtomicUsize;
use std::task::{Context, Waker};
use std::time::Instant;

use bytes::Bytes;
use loom::sync::Arc;
use loom::sync::atomic::{AtomicU64, Ordering};
use loom::thread;
use presence_core::{Change, Engine, Presence, Status, UserId};
use presence_handoff::outbox::{ChatItem, Outbox};
use presence_handoff::registry::Registry;
use presence_handoff::sync::Wakeup;

mod common;
use common::{T0, World, cfg, render};

/// Counts, across a model's executions, how often each case of interest came up, so a model
/// can check it reached every case it is about.
struct Seen<const N: usize>([AtomicUsize; N]);

impl<const N: usize> Seen<N> {
    const fn new() -> Self {
        Self([const { AtomicUsize::new(0) }; N])
    }

    fn saw(&self, case: usize) {
        self.0[case].fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    /// Panics unless every case came up; returns the counts.
    fn all(&self, what: &[&str; N]) -> [usize; N] {
        let counts = self
            .0
            .each_ref()
            .map(|c| c.load(std::sync::atomic::Ordering::Relaxed));
        for (n, w) in counts.iter().zip(what) {
            assert!(*n > 0, "no execution where {w}: {counts:?}");
        }
        counts
    }
}

/// Explores `f` with loom, the preemption bound from `LOOM_MAX_PREEMPTIONS` (3 if unset), and
/// reports how many executions it took.
fn explore(name: &str, f: impl Fn() + Sync + Send + 'static) {
    let mut builder = loom::model::Builder::new();
    builder.preemption_bound.get_or_insert(3);
    let bound = builder.preemption_bound;
    let runs = std::sync::Arc::new(AtomicUsize::new(0));
    let counted = runs.clone();
    let started = Instant::now();
    builder.check(move || {
        counted.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        f();
    });
    eprintln!(
        "{name}: {} executions in {:.2?} (preemption bound {bound:?})",
        runs.load(std::sync::atomic::Ordering::Relaxed),
        started.elapsed()
    );
}

fn entry(friend: u32, s: &'static str) -> (u32, Bytes) {
    (friend, Bytes::from_static(s.as_bytes()))
}

/// The tick hands a session two batches in a row (ticks 7 and 8, both with friend 2) while the
/// session's task waits on the wakeup and takes: merged latest-wins per friend, what it took
/// and what is left are the latest state of every friend, and entries are never left without
/// a wakeup to fetch them.
#[test]
fn tick_pushes_race_the_session_task() {
    static SEEN: Seen<2> = Seen::new();
    explore("tick_pushes_race_the_session_task", || {
        let outbox = Arc::new(Outbox::default());
        let o = outbox.clone();
        let tick = thread::spawn(move || {
            o.push(7, vec![entry(1, "7:1"), entry(2, "7:2")]);
            o.push(8, vec![entry(3, "8:3"), entry(2, "8:2")]);
        });
        let o = outbox.clone();
        let session = thread::spawn(move || {
            loom::future::block_on(o.wakeup.notified());
            o.take().presence
        });
        let first = session.join().expect("join");
        tick.join().expect("join");
        assert!(first.is_some(), "woken with nothing to take");

        // Every push is done: what is left must come with a wakeup.
        let rest = outbox.take().presence;
        if rest.is_some() {
            assert!(
                outbox.wakeup.try_take(),
                "entries left behind with no wakeup"
            );
        }
        SEEN.saw(usize::from(rest.is_none()));
        let mut view = BTreeMap::new();
        let mut last = 0;
        for (tick, items) in first.into_iter().chain(rest) {
            assert!(tick > last, "frames out of tick order");
            last = tick;
            assert!(items.is_sorted_by_key(|(f, _)| *f), "frame not ascending");
            view.extend(items);
        }
        assert_eq!(last, 8);
        assert_eq!(
            view,
            BTreeMap::from([entry(1, "7:1"), entry(2, "8:2"), entry(3, "8:3")])
        );
    });
    SEEN.all(&[
        "the task took tick 7 and tick 8 was left",
        "the task took both ticks, merged",
    ]);
}

/// Pacing (`every` 4): the tick thread hands out a tick with b's change (a wakeup), holds the
/// next with c's, and hands the held diff out at its release four ticks after the first, while
/// a chat frame arrives from the delivery thread and the session's task takes whenever it is
/// woken. Held entries never reach the session before their release (one presence frame an
/// interval), and are never left without a wakeup once released.
#[test]
fn paced_hand_outs_race_a_chat_wakeup_and_the_session_task() {
    static SEEN: Seen<2> = Seen::new();
    explore(
        "paced_hand_outs_race_a_chat_wakeup_and_the_session_task",
        || {
            let World {
                e,
                registry,
                b,
                c,
                web,
                setup,
                ..
            } = World::new();
            let (e, registry) = (Arc::new(e), Arc::new(registry));
            let released = Arc::new(AtomicU64::new(0));

            let (e1, r1, rel) = (e.clone(), registry.clone(), released.clone());
            let ticker = thread::spawn(move || {
                let mut out = Vec::new();
                for k in 1..=5u64 {
                    match k {
                        1 => e1.set_status(b, Status::Busy, None, T0 + k),
                        2 => e1.set_status(c, Status::Busy, None, T0 + k),
                        _ => Ok(()),
                    }
                    .expect("status");
                    let batch = e1.tick(T0 + 10 * k);
                    if k == 5 {
                        // The release, announced just before.
                        rel.store(1, Ordering::Release);
                    }
                    out.push(r1.hand_out(&batch, &render(&batch), |_, _| true, 4));
                }
                out
            });
            let w = web.clone();
            let chat = thread::spawn(move || {
                w.outbox
                    .push_chat(ChatItem::Frame(Bytes::from_static(b"sent")));
            });
            let (w, rel) = (web.clone(), released.clone());
            let session = thread::spawn(move || {
                loom::future::block_on(w.outbox.wakeup.notified());
                let taken = w.outbox.take().presence;
                // c's change (tick setup + 2) is held until the release: taking it before
                // would be a second presence frame within the interval.
                if let Some((tick, _)) = &taken {
                    assert!(
                        *tick == setup + 1 || rel.load(Ordering::Acquire) == 1,
                        "held entries taken early (tick {tick})"
                    );
                }
                taken
            });
            let mut frames: Vec<(u64, usize)> = session
                .join()
                .expect("join")
                .into_iter()
                .map(|(t, items)| (t, items.len()))
                .collect();
            let outs = ticker.join().expect("join");
            chat.join().expect("join");
            assert_eq!((outs[0].held, outs[1].held), (0, 1), "{outs:?}");
            assert_eq!(outs[4].released, 1, "{outs:?}");
            // Everything is done: what is left must come with a wakeup.
            if let Some((tick, items)) = web.outbox.take().presence {
                assert!(
                    web.outbox.wakeup.try_take(),
                    "released entries left with no wakeup"
                );
                frames.push((tick, items.len()));
                SEEN.saw(0);
            } else {
                SEEN.saw(1);
            }
            // b's change at once (merged with c's if the session was slow), c's at the release
            // (a frame's tick is that of its newest entries).
            let last = frames.last().copied();
            assert_eq!(
                last.map(|(t, _)| t),
                Some(setup + 2),
                "the held tick was lost: {frames:?}"
            );
            assert!(frames.is_sorted(), "frames out of order: {frames:?}");
            assert!(
                frames.iter().map(|(_, n)| n).sum::<usize>() >= 2,
                "{frames:?}"
            );
        },
    );
    SEEN.all(&[
        "the session's wakeup came before the release",
        "the session took the released entries itself",
    ]);
}

/// The delivery thread pushes a user's inbox entries 1..=4 in seq order, each after its commit,
/// into an outbox that holds 2, while the session's task takes twice (and once more at the
/// end), reading back from the store what a gap or the `lagging` flag says it missed, as
/// `Service::write_chat` does: every entry is taken once in order or read back, none is lost
/// silently, none reordered.
#[test]
fn inbox_entries_race_takes_past_the_cap() {
    const LAST: u64 = 4;
    static SEEN: Seen<2> = Seen::new();
    explore("inbox_entries_race_takes_past_the_cap", || {
        let outbox = Arc::new(Outbox::with_chat_cap(2));
        // The store's head: the last seq committed (before it is delivered).
        let committed = Arc::new(AtomicU64::new(0));
        let (o, c) = (outbox.clone(), committed.clone());
        let delivery = thread::spawn(move || {
            (1..=LAST)
                .map(|seq| {
                    c.store(seq, Ordering::Release);
                    o.push_chat(ChatItem::Inbox {
                        seq,
                        frame: Bytes::from(seq.to_string()),
                    })
                })
                .collect::<Vec<bool>>()
        });
        let (o, c) = (outbox.clone(), committed.clone());
        let session = thread::spawn(move || {
            (0..2)
                .map(|_| {
                    let t = o.take();
                    (t.chat, t.lagging, c.load(Ordering::Acquire))
                })
                .collect::<Vec<_>>()
        });
        let kept = delivery.join().expect("join");
        let mut takes = session.join().expect("join");
        let t = outbox.take();
        takes.push((t.chat, t.lagging, committed.load(Ordering::Acquire)));

        // Replay the takes as the session does: `next` is the next seq it needs.
        let mut next = 1;
        let mut taken = Vec::new();
        for (chat, lagging, head) in &takes {
            for item in chat {
                let ChatItem::Inbox { seq, .. } = item else {
                    panic!("only inbox entries were pushed");
                };
                assert!(
                    taken.last().is_none_or(|l| l < seq),
                    "reordered: {taken:?} then {seq}"
                );
                taken.push(*seq);
                if *seq >= next {
                    // A gap before it is read back from the store first.
                    next = seq + 1;
                }
            }
            if *lagging {
                // Read back from the store: everything committed by now.
                next = next.max(head + 1);
            }
        }
        for seq in 1..=LAST {
            let was_kept = kept[seq as usize - 1];
            assert_eq!(taken.contains(&seq), was_kept, "seq {seq}: kept {was_kept}");
            if !was_kept {
                assert!(
                    takes
                        .iter()
                        .any(|(_, lagging, head)| *lagging && *head >= seq),
                    "seq {seq} left out without the lagging flag"
                );
            }
        }
        assert_eq!(next, LAST + 1, "the session ends with every entry");
        SEEN.saw(usize::from(kept.contains(&false)));
    });
    SEEN.all(&["every entry was queued", "an entry was left out"]);
}

/// A second device of "a" registers (with the engine's real `connect`) while the tick thread
/// runs two ticks (the first publishes b's new status, the second b going idle) and hands each
/// out: a's diff of every tick goes to the first device, and to the new one exactly when the
/// tick is after its welcome's, and the new device's welcome plus what it takes is the truth.
#[test]
fn a_session_registering_races_the_tick() {
    static SEEN: Seen<3> = Seen::new();
    explore("a_session_registering_races_the_tick", || {
        let e = Arc::new(Engine::new(cfg(), T0).expect("config"));
        let a = e.intern("a").expect("id");
        let b = e.intern("b").expect("id");
        e.add_friendship(a, b).expect("edge");
        e.connect(b, "w", T0).expect("connect");
        let registry = Arc::new(Registry::default());
        let (web, _) = registry
            .register(a, || e.connect(a, "web", T0))
            .expect("connect");
        let setup = e.tick(T0); // publishes the setup; not handed out
        e.set_status(b, Status::Busy, Some("x"), T0 + 1)
            .expect("status");

        let (e1, r1) = (e.clone(), registry.clone());
        let ticker = thread::spawn(move || {
            [T0 + 10, T0 + 2_000]
                .into_iter()
                .map(|now| {
                    let batch = e1.tick(now);
                    let handed = r1.hand_out(&batch, &render(&batch), |_, _| true, 1).handed;
                    (batch, handed)
                })
                .collect::<Vec<_>>()
        });
        let (phone, welcome) = registry
            .register(a, || e.connect(a, "phone", T0 + 10))
            .expect("connect");
        let ticks = ticker.join().expect("join");
        SEEN.saw((welcome.tick - setup.tick) as usize);

        for (batch, handed) in &ticks {
            let diff = batch.diff_of(a).len();
            assert!(diff > 0, "tick {} has a diff for a", batch.tick);
            let devices = if batch.tick > welcome.tick { 2 } else { 1 };
            assert_eq!(
                *handed,
                diff * devices,
                "tick {} handed out with the phone welcomed at tick {}",
                batch.tick,
                welcome.tick
            );
        }
        let last = ticks.last().map(|(b, _)| b.tick);
        assert_eq!(web.outbox.take().presence.map(|(t, _)| t), last);

        let mut view: BTreeMap<UserId, Presence> = welcome.friends.iter().cloned().collect();
        if let Some((tick, items)) = phone.outbox.take().presence {
            assert!(tick > welcome.tick);
            for (friend, rendered) in items {
                let text = std::str::from_utf8(&rendered).expect("utf8");
                let (t, i) = text.split_once('/').expect("t/i");
                let (t, i): (u64, usize) = (t.parse().expect("t"), i.parse().expect("i"));
                assert!(t > welcome.tick, "tick {t} at or before the welcome's");
                let batch = &ticks.iter().find(|(b, _)| b.tick == t).expect("a tick").0;
                let (user, change) = &batch.entries[i];
                assert_eq!(user.0, friend);
                match change {
                    Change::Removed => {
                        view.remove(user);
                    }
                    Change::Presence(p) => {
                        view.insert(*user, p.clone());
                    }
                }
            }
        }
        let truth: BTreeMap<UserId, Presence> = e.friends_presence(a).into_iter().collect();
        assert_eq!(view, truth);
        assert_eq!(view[&b].status, Status::Busy);
    });
    SEEN.all(&[
        "the phone registered before both ticks",
        "the phone registered between the ticks",
        "the phone registered after both ticks",
    ]);
}

/// The wakeup alone, as `tokio::select!` uses it: a wait polled once and dropped (another
/// branch won) while the one notify comes; the next wait must still complete, and the permit
/// is consumed exactly once.
#[test]
fn a_dropped_wait_races_the_notify() {
    static SEEN: Seen<2> = Seen::new();
    explore("a_dropped_wait_races_the_notify", || {
        let w = Arc::new(Wakeup::default());
        let w1 = w.clone();
        let notifier = thread::spawn(move || w1.notify());
        let mut first = w.notified();
        let polled = Pin::new(&mut first).poll(&mut Context::from_waker(Waker::noop()));
        drop(first);
        if polled.is_pending() {
            loom::future::block_on(w.notified());
        }
        notifier.join().expect("join");
        assert!(!w.try_take(), "one notify, one wait");
        SEEN.saw(usize::from(polled.is_pending()));
    });
    SEEN.all(&[
        "the first wait had the permit",
        "the first wait was dropped",
    ]);
}
