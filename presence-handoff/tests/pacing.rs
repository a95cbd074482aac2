//! The registry's pacing (`Registry::hand_out` with `every` > 1), tick by tick on the real
//! engine: what each session's outbox holds after each hand-out. The loom model
//! `paced_hand_outs_race_a_chat_wakeup_and_the_session_task` covers the same path racing the
//! session task; these cover what one thread can show exactly: a hold merges latest per friend
//! and leaves at the watcher's slot, a session welcomed during a hold gets only what came after
//! its welcome, a watcher quiet for a period gets its next change at once, and a diff that no
//! session shows (a focus elsewhere) does not open a period.
#![cfg(not(loom))]

use presence_core::{Engine, Status, UserId};
use presence_handoff::registry::{HandOut, SessionHandle};
use presence_handoff::view::View;

mod common;
use common::{T0, World, render};

/// Engine ticks a period.
const EVERY: u64 = 4;

impl World {
    /// Engine tick `setup + k` (at `T0 + 10k` ms), after `change` ran, handed out paced.
    fn tick(&self, k: u64, change: impl FnOnce(&Engine)) -> HandOut {
        change(&self.e);
        let batch = self.e.tick(T0 + 10 * k);
        assert_eq!(batch.tick, self.setup + k, "ticks one by one");
        self.registry
            .hand_out(&batch, &render(&batch), |_, _| true, EVERY)
    }

    fn status(&self, who: UserId, s: Status, k: u64) -> impl FnOnce(&Engine) {
        move |e: &Engine| e.set_status(who, s, None, T0 + 10 * k - 5).expect("status")
    }
}

/// What a session takes: the frame's tick and its entries as (friend, rendered text).
fn take(h: &SessionHandle) -> Option<(u64, Vec<(u32, String)>)> {
    h.outbox.take().presence.map(|(tick, items)| {
        let items = items
            .into_iter()
            .map(|(f, b)| (f, String::from_utf8_lossy(&b).into_owned()))
            .collect();
        (tick, items)
    })
}

/// The tick of an entry rendered by [`render`].
fn tick_of(rendered: &str) -> u64 {
    rendered
        .split('/')
        .next()
        .and_then(|t| t.parse().ok())
        .expect("rendered as t/i")
}

#[test]
fn a_hold_merges_latest_per_friend_and_leaves_at_the_slot() {
    let w = World::new();
    let s = w.setup;
    // A lone change leaves at once, and opens the period: the next slot is s + 1 + EVERY.
    let out = w.tick(1, w.status(w.b, Status::Busy, 1));
    assert_eq!((out.held, out.released), (0, 0));
    let (tick, items) = take(&w.web).expect("b's change at once");
    assert_eq!(tick, s + 1);
    assert_eq!(items.iter().map(|(f, _)| *f).collect::<Vec<_>>(), [w.b.0]);

    // c changes twice within the period: held once, merged, nothing handed to the session.
    let out = w.tick(2, w.status(w.c, Status::Busy, 2));
    assert_eq!((out.held, out.handed), (1, 0), "{out:?}");
    let out = w.tick(3, w.status(w.c, Status::Dnd, 3));
    assert_eq!((out.held, out.handed), (0, 0), "already held: {out:?}");
    assert!(take(&w.web).is_none(), "nothing before the slot");
    let out = w.tick(4, |_| {});
    assert_eq!((out.released, out.handed), (0, 0), "{out:?}");
    assert!(take(&w.web).is_none(), "nothing before the slot");

    // The slot: one frame, c's latest state only, timed by its tick.
    let out = w.tick(5, |_| {});
    assert_eq!((out.released, out.handed), (1, 1), "{out:?}");
    let (tick, items) = take(&w.web).expect("the held diff at the slot");
    assert_eq!(tick, s + 3, "a frame's tick is its newest entry's");
    assert_eq!(items.len(), 1, "{items:?}");
    assert_eq!(
        (items[0].0, tick_of(&items[0].1)),
        (w.c.0, s + 3),
        "the later wins"
    );

    // The release opened a new period; a change after it leaves at once.
    for k in 6..=8 {
        let out = w.tick(k, |_| {});
        assert_eq!(out.handed, 0);
    }
    let out = w.tick(9, w.status(w.b, Status::Available, 9));
    assert_eq!((out.held, out.handed), (0, 1), "{out:?}");
    let (tick, items) = take(&w.web).expect("b's change at once");
    assert_eq!((tick, items.len()), (s + 9, 1));
}

#[test]
fn a_session_welcomed_during_a_hold_gets_only_what_came_after_its_welcome() {
    let w = World::new();
    let s = w.setup;
    let _ = w.tick(1, w.status(w.b, Status::Busy, 1));
    assert!(take(&w.web).is_some());
    let out = w.tick(2, w.status(w.c, Status::Busy, 2));
    assert_eq!(out.held, 1, "{out:?}");

    // A second device of a connects while c's change is held: its welcome shows it.
    let (phone, welcome) = w
        .registry
        .register(w.a, || w.e.connect(w.a, "phone", T0 + 25))
        .expect("connect");
    assert_eq!(welcome.tick, s + 2);

    let _ = w.tick(3, w.status(w.b, Status::Dnd, 3));
    let _ = w.tick(4, |_| {});
    assert!(take(&w.web).is_none() && take(&phone).is_none());
    let out = w.tick(5, |_| {});
    assert_eq!(out.released, 1, "{out:?}");

    let (tick, items) = take(&w.web).expect("the held diff");
    let mut friends: Vec<u32> = items.iter().map(|(f, _)| *f).collect();
    friends.sort_unstable();
    let mut both = vec![w.b.0, w.c.0];
    both.sort_unstable();
    assert_eq!((tick, friends), (s + 3, both), "the first device gets both");

    let (tick, items) = take(&phone).expect("what came after the welcome");
    assert_eq!(tick, s + 3);
    assert_eq!(
        items
            .iter()
            .map(|(f, r)| (*f, tick_of(r)))
            .collect::<Vec<_>>(),
        [(w.b.0, s + 3)],
        "c's change (tick {}) is in the welcome, not handed again",
        s + 2
    );
}

#[test]
fn a_diff_no_session_shows_leaves_the_watcher_free() {
    let w = World::new();
    let s = w.setup;
    // a's only session focuses on c: b's changes reach a's diff (the engine follows the
    // user's friends) but no session of a shows them.
    w.registry.with_sessions(w.a.0, |us| {
        let focus = View {
            focus: Some(vec![w.c.0]),
            groups: Vec::new(),
        };
        us.set_view(&us.sessions[0], focus);
    });
    let out = w.tick(1, w.status(w.b, Status::Busy, 1));
    assert_eq!((out.held, out.handed), (0, 0), "{out:?}");
    assert!(take(&w.web).is_none(), "the focus hides b");
    // No frame went out, so no period began: c's change leaves at once, not at a slot.
    let out = w.tick(2, w.status(w.c, Status::Busy, 2));
    assert_eq!((out.held, out.handed), (0, 1), "{out:?}");
    let (tick, items) = take(&w.web).expect("c's change at once");
    assert_eq!((tick, items.len()), (s + 2, 1));
    assert_eq!(items[0].0, w.c.0);
}
