//! One test per rule of cluster mode, with injected time: mirrored users (set from a peer,
//! folded into the tick, no sessions), the outgoing feed, owned-only friend lists, and
//! taking and releasing users.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

use std::sync::Arc;

use presence_core::{
    Batch, Change, Config, Disconnect, Engine, Error, Ownership, Presence, State, Status, UserId,
};

const T0: u64 = 1_000_000;
const GRACE: u64 = 1_000;

fn cfg(cluster: bool) -> Config {
    Config {
        idle_thresholds_ms: vec![10_000, 20_000],
        grace_ms: GRACE,
        heartbeat_timeout_ms: 30_000,
        shards: 4,
        cluster,
        ..Config::default()
    }
}

/// A cluster engine with users "u0".."u{n-1}", of which `owned` are taken (no friendships).
fn cluster(n: u32, owned: &[u32]) -> (Engine, Vec<UserId>) {
    let e = Engine::new(cfg(true), T0).unwrap();
    let users: Vec<UserId> = (0..n)
        .map(|i| e.intern(&format!("u{i}")).unwrap())
        .collect();
    let own: Vec<UserId> = owned.iter().map(|&i| users[i as usize]).collect();
    e.take_users(&own, &[], T0).unwrap();
    (e, users)
}

fn online(status: Status, text: Option<&str>) -> Presence {
    Presence {
        state: State::Online,
        last_active: Some(T0),
        status,
        text: text.map(Arc::from),
    }
}

fn told(b: &Batch, watcher: UserId, friend: UserId) -> Option<Change> {
    b.diff_of(watcher)
        .iter()
        .map(|&i| b.entry(i))
        .find(|(f, _)| *f == friend)
        .map(|(_, c)| c.clone())
}

/// The users of `batch.outgoing`, in order.
fn outgoing(b: &Batch) -> Vec<UserId> {
    b.outgoing.iter().map(|&i| b.entry(i).0).collect()
}

#[test]
fn a_mirrored_user_has_no_sessions_and_no_status_of_its_own() {
    let (e, u) = cluster(2, &[0]);
    assert!(e.is_owned(u[0]));
    assert!(!e.is_owned(u[1]));
    assert_eq!(e.connect(u[1], "phone", T0), Err(Error::NotOwned(u[1])));
    assert_eq!(
        e.set_status(u[1], Status::Busy, None, T0),
        Err(Error::NotOwned(u[1]))
    );
    assert_eq!(e.footprint().sessions, 0);
    // And an owned user's presence cannot be set by a peer.
    assert_eq!(
        e.set_mirrored(u[0], &online(Status::Available, None), T0),
        Err(Error::Owned(u[0]))
    );
    assert!(e.connect(u[0], "phone", T0).is_ok());
}

#[test]
fn a_single_node_owns_everyone_and_sends_nothing_out() {
    let e = Engine::new(cfg(false), T0).unwrap();
    let (a, b) = (e.intern("a").unwrap(), e.intern("b").unwrap());
    e.add_friendship(a, b).unwrap();
    assert!(e.is_owned(a) && e.is_owned(b));
    assert_eq!(
        e.set_mirrored(b, &online(Status::Available, None), T0),
        Err(Error::Owned(b))
    );
    assert_eq!(e.take_users(&[a], &[], T0), Err(Error::Owned(a)));
    assert_eq!(e.release_users(&[a], T0), Err(Error::Owned(a)));
    e.connect(a, "phone", T0).unwrap();
    e.connect(b, "phone", T0).unwrap();
    let batch = e.tick(T0 + 200);
    assert_eq!(batch.stats.transitions, 2);
    assert!(batch.outgoing.is_empty());
    let mut routed = 0;
    e.for_each_remote_friend([a, b], |_, _| routed += 1);
    assert_eq!(routed, 0);
}

#[test]
fn mirrored_presence_reaches_watchers_once_in_the_next_tick() {
    let (e, u) = cluster(3, &[0, 1]);
    let (w, quiet, m) = (u[0], u[1], u[2]);
    e.apply_friendships(&[(w, m), (quiet, m)], &[]).unwrap();
    e.connect(w, "phone", T0).unwrap();
    let _ = e.tick(T0);
    let busy = online(Status::Busy, Some("lunch"));
    e.set_mirrored(m, &online(Status::Available, None), T0 + 10)
        .unwrap();
    e.set_mirrored(m, &busy, T0 + 20).unwrap(); // the last one set wins
    assert_eq!(
        e.presence(m),
        Presence::NEVER_SEEN,
        "published only by the tick"
    );
    let b = e.tick(T0 + 200);
    assert_eq!(told(&b, w, m), Some(Change::Presence(busy.clone())));
    assert_eq!(b.diff_of(w).len(), 1);
    assert_eq!(told(&b, quiet, m), None, "not live: no diff");
    assert_eq!(e.presence(m), busy);
    assert!(
        outgoing(&b).iter().all(|&x| x != m),
        "a mirror is not sent on"
    );
    // Told again, nothing new: nothing sent.
    e.set_mirrored(m, &busy, T0 + 300).unwrap();
    assert!(e.tick(T0 + 400).diff_of(w).is_empty());
    // The welcome of a new session carries the mirrored presence.
    let welcome = e.connect(quiet, "web", T0 + 400).unwrap();
    assert_eq!(welcome.friends, vec![(m, busy)]);
}

#[test]
fn a_mirrored_change_undone_within_a_tick_sends_nothing() {
    let (e, u) = cluster(2, &[0]);
    let (w, m) = (u[0], u[1]);
    e.add_friendship(w, m).unwrap();
    e.connect(w, "phone", T0).unwrap();
    let before = online(Status::Available, None);
    e.set_mirrored(m, &before, T0).unwrap();
    let _ = e.tick(T0 + 200);
    e.set_mirrored(m, &online(Status::Dnd, None), T0 + 250)
        .unwrap();
    e.set_mirrored(m, &before, T0 + 300).unwrap();
    let b = e.tick(T0 + 400);
    assert!(b.diff_of(w).is_empty());
    assert_eq!(b.stats.transitions, 0);
}

#[test]
fn a_dropped_mirror_reads_as_never_seen() {
    let (e, u) = cluster(2, &[0]);
    let (w, m) = (u[0], u[1]);
    e.add_friendship(w, m).unwrap();
    e.connect(w, "phone", T0).unwrap();
    e.set_mirrored(m, &online(Status::Busy, Some("x")), T0)
        .unwrap();
    let _ = e.tick(T0 + 200);
    e.drop_mirrored(m, T0 + 300).unwrap();
    let b = e.tick(T0 + 400);
    assert_eq!(told(&b, w, m), Some(Change::Presence(Presence::NEVER_SEEN)));
    assert_eq!(e.presence(m), Presence::NEVER_SEEN);
    assert_eq!(e.drop_mirrored(w, T0), Err(Error::Owned(w)));
}

#[test]
fn a_peer_frame_is_applied_all_or_nothing_and_bad_presence_is_refused() {
    let (e, u) = cluster(3, &[0]);
    let (w, m1, m2) = (u[0], u[1], u[2]);
    e.apply_friendships(&[(w, m1), (w, m2)], &[]).unwrap();
    let p = online(Status::Available, None);
    let frame = [(m1, Some(p.clone())), (w, Some(p.clone()))];
    assert_eq!(e.apply_mirrored(&frame, T0), Err(Error::Owned(w)));
    let unknown = [(m1, Some(p.clone())), (UserId(99), None)];
    assert_eq!(
        e.apply_mirrored(&unknown, T0),
        Err(Error::UnknownUser(UserId(99)))
    );
    let bad = [
        Presence {
            state: State::Idle(2), // two thresholds: levels 0 and 1
            ..p.clone()
        },
        Presence {
            status: Status::Invisible,
            ..p.clone()
        },
    ];
    for q in bad {
        let frame = [(m1, Some(p.clone())), (m2, Some(q))];
        assert!(matches!(
            e.apply_mirrored(&frame, T0),
            Err(Error::InvalidPresence(_))
        ));
    }
    let long = online(Status::Busy, Some(&"x".repeat(141)));
    assert!(matches!(
        e.set_mirrored(m2, &long, T0),
        Err(Error::TextTooLong { len: 141, .. })
    ));
    let b = e.tick(T0 + 200);
    assert_eq!(b.stats.transitions, 0, "no refused frame changed anything");
    // An offline presence loses its status and text, as the owner would have shown it.
    let gone = Presence {
        state: State::Offline,
        last_active: Some(T0 - 5),
        status: Status::Busy,
        text: Some(Arc::from("zzz")),
    };
    e.apply_mirrored(&[(m1, Some(p.clone())), (m2, Some(gone))], T0)
        .unwrap();
    let _ = e.tick(T0 + 400);
    let got = e.presence_of(&[m1, m2]);
    assert_eq!(got[0], p);
    assert_eq!(
        (
            got[1].state,
            got[1].last_active,
            got[1].status,
            &got[1].text
        ),
        (State::Offline, Some(T0 - 5), Status::Available, &None)
    );
}

#[test]
fn only_owned_users_changes_go_out_and_a_new_remote_friend_sends_its_owner_presence() {
    let (e, u) = cluster(4, &[0, 1]);
    let (a, b, m, n) = (u[0], u[1], u[2], u[3]);
    e.apply_friendships(&[(a, m), (a, b)], &[]).unwrap();
    e.connect(a, "phone", T0).unwrap();
    e.set_mirrored(m, &online(Status::Available, None), T0)
        .unwrap();
    let batch = e.tick(T0 + 200);
    assert_eq!(outgoing(&batch), vec![a], "a changed; m is a mirror");
    let mut routes = Vec::new();
    e.for_each_remote_friend(outgoing(&batch), |x, f| routes.push((x, f)));
    assert_eq!(routes, vec![(a, m)], "b is owned here: not routed");
    assert!(matches!(
        batch.entry(batch.outgoing[0]).1,
        Change::Presence(Presence {
            state: State::Online,
            ..
        })
    ));
    // Nothing changes, but a gains a friend on another node: that node hears of a.
    e.add_friendship(a, n).unwrap();
    let batch = e.tick(T0 + 400);
    assert_eq!(outgoing(&batch), vec![a]);
    assert_eq!(batch.stats.transitions, 0);
    // b, offline, gains one too: sent with its (never seen) presence.
    e.add_friendship(b, n).unwrap();
    let batch = e.tick(T0 + 600);
    assert_eq!(outgoing(&batch), vec![b]);
    assert_eq!(
        batch.entry(batch.outgoing[0]).1,
        Change::Presence(Presence::NEVER_SEEN)
    );
    // A quiet tick sends nothing.
    assert!(e.tick(T0 + 800).outgoing.is_empty());
}

#[test]
fn an_edge_between_two_mirrored_users_is_not_kept() {
    let (e, u) = cluster(3, &[0]);
    let (a, m, n) = (u[0], u[1], u[2]);
    assert_eq!(e.apply_friendships(&[(a, m), (m, n)], &[]), Ok((1, 0)));
    assert_eq!(e.friends(m), vec![a]);
    assert_eq!(e.friends(n), vec![]);
    assert!(!e.are_friends(m, n));
    // Still validated: a self-pair of mirrored users is refused.
    assert_eq!(
        e.apply_friendships(&[(m, m)], &[]),
        Err(Error::SelfFriendship(m))
    );
    assert_eq!(
        e.plan_friendships(&[(m, n)], &[]).unwrap(),
        Default::default()
    );
}

#[test]
fn taking_users_loads_their_friendships_all_or_nothing() {
    let (e, u) = cluster(4, &[]);
    let (a, b, m, n) = (u[0], u[1], u[2], u[3]);
    // Each user's list names the other end too: one edge each.
    let lists = [(a, b), (b, a), (a, m), (b, n)];
    assert_eq!(
        e.take_users(&[a, b], &lists, T0),
        Ok(Ownership { users: 2, edges: 3 })
    );
    assert_eq!(e.friends(a), vec![b, m]);
    assert_eq!(e.friends(n), vec![b]);
    // Taking again changes nothing; a pair of two mirrored users is left out.
    assert_eq!(
        e.take_users(&[a], &[(m, n)], T0),
        Ok(Ownership { users: 0, edges: 0 })
    );
    // A bad pair refuses the whole take: m stays mirrored.
    assert_eq!(
        e.take_users(&[m], &[(m, m)], T0),
        Err(Error::SelfFriendship(m))
    );
    assert!(!e.is_owned(m));
    assert_eq!(
        e.take_users(&[m, UserId(9)], &[], T0),
        Err(Error::UnknownUser(UserId(9)))
    );
    assert!(!e.is_owned(m));
}

#[test]
fn a_release_with_a_connected_session_is_refused() {
    let (e, u) = cluster(2, &[0, 1]);
    let s = e.connect(u[1], "phone", T0).unwrap();
    assert_eq!(
        e.release_users(&[u[0], u[1]], T0 + 10),
        Err(Error::HasSessions(u[1]))
    );
    assert!(e.is_owned(u[0]) && e.is_owned(u[1]), "nothing changed");
    assert!(e.activity(s.session, T0 + 20).is_ok());
}

#[test]
fn a_released_user_keeps_its_presence_as_a_mirror_and_loses_what_it_no_longer_needs() {
    let (e, u) = cluster(4, &[0, 1]);
    let (w, r, m, n) = (u[0], u[1], u[2], u[3]);
    e.apply_friendships(&[(w, r), (r, m), (r, n), (w, n)], &[])
        .unwrap();
    e.connect(w, "phone", T0).unwrap();
    let s = e.connect(r, "phone", T0).unwrap().session;
    e.set_status(r, Status::Busy, Some("moving"), T0).unwrap();
    let _ = e.tick(T0 + 100);
    let before = e.presence(r);
    assert_eq!(before.state, State::Online);
    // The node sends `moved`; the connection drops and lingers in its grace period.
    e.disconnect(s, Disconnect::Dropped, T0 + 150).unwrap();
    assert_eq!(
        e.release_users(&[r], T0 + 200),
        Ok(Ownership { users: 1, edges: 2 })
    );
    assert!(!e.is_owned(r));
    assert_eq!(e.friends(r), vec![w], "the edges to m and n are not ours");
    assert_eq!(e.friends(n), vec![w]);
    assert_eq!(e.footprint().sessions, 1, "only w's session is left");
    assert_eq!(e.connect(r, "phone", T0 + 250), Err(Error::NotOwned(r)));
    // No flap: the grace period runs out, and friends still see what they saw.
    let b = e.tick(T0 + 200 + 2 * GRACE);
    assert!(b.diff_of(w).is_empty());
    assert_eq!(e.presence(r), before);
    // The new owner's word arrives.
    e.set_mirrored(r, &Presence::NEVER_SEEN, T0 + 3_000)
        .unwrap();
    let b = e.tick(T0 + 3_200);
    assert_eq!(told(&b, w, r), Some(Change::Presence(Presence::NEVER_SEEN)));
}

#[test]
fn a_released_user_with_a_timed_out_session_has_it_reported_expired() {
    let (e, u) = cluster(1, &[0]);
    let s = e.connect(u[0], "phone", T0).unwrap().session;
    let later = T0 + 30_000; // the heartbeat timeout
    e.release_users(&[u[0]], later).unwrap();
    let b = e.tick(later + 100);
    assert_eq!(b.expired, vec![s]);
    assert_eq!(e.footprint().sessions, 0);
}

#[test]
fn a_taken_user_that_was_online_lingers_for_the_grace_period() {
    let (e, u) = cluster(3, &[0]);
    let (w, t, q) = (u[0], u[1], u[2]);
    e.apply_friendships(&[(w, t), (w, q)], &[]).unwrap();
    e.connect(w, "phone", T0).unwrap();
    let was = online(Status::Busy, Some("on the move"));
    e.set_mirrored(t, &was, T0).unwrap();
    e.set_mirrored(q, &was, T0).unwrap();
    let _ = e.tick(T0 + 100);
    e.take_users(&[t, q], &[], T0 + 200).unwrap();
    // t's device reconnects here within the grace period; q's never does.
    let b = e.tick(T0 + 400);
    assert!(
        b.diff_of(w).is_empty(),
        "no flap: status and text carried over"
    );
    let s = e.connect(t, "phone", T0 + 500).unwrap().session;
    let b = e.tick(T0 + 200 + GRACE + 100);
    assert_eq!(told(&b, w, t), None, "t came back in time");
    assert_eq!(
        told(&b, w, q),
        Some(Change::Presence(Presence {
            state: State::Offline,
            last_active: Some(T0),
            status: Status::Available,
            text: None,
        }))
    );
    assert_eq!(outgoing(&b), vec![q]);
    e.activity(s, T0 + 1_500).unwrap();
    assert_eq!(e.presence(t).status, Status::Busy);
}

#[test]
fn a_taken_user_that_was_offline_stays_offline_until_it_connects() {
    let (e, u) = cluster(2, &[0]);
    let (w, t) = (u[0], u[1]);
    e.add_friendship(w, t).unwrap();
    e.connect(w, "phone", T0).unwrap();
    let _ = e.tick(T0);
    e.take_users(&[t], &[], T0 + 100).unwrap();
    assert!(e.tick(T0 + 200).diff_of(w).is_empty());
    e.connect(t, "phone", T0 + 300).unwrap();
    let b = e.tick(T0 + 400);
    assert!(matches!(
        told(&b, w, t),
        Some(Change::Presence(Presence {
            state: State::Online,
            ..
        }))
    ));
}

#[test]
fn a_cluster_engine_is_not_loaded_from_a_graph_snapshot() {
    let mut snap = presence_core::snapshot::GraphSnapshot::new();
    snap.push_user("a", &[1]);
    snap.push_user("b", &[]);
    let bytes = snap.to_bytes().unwrap();
    assert!(presence_core::snapshot::load(cfg(true), T0, &bytes, u64::MAX).is_err());
    assert!(presence_core::snapshot::load(cfg(false), T0, &bytes, u64::MAX).is_ok());
}

#[test]
fn the_first_device_back_replaces_the_session_a_take_started_with() {
    let e = Engine::new(
        Config {
            max_sessions_per_user: 1,
            ..cfg(true)
        },
        T0,
    )
    .unwrap();
    let t = e.intern("t").unwrap();
    e.set_mirrored(t, &online(Status::Available, None), T0)
        .unwrap();
    let _ = e.tick(T0);
    e.take_users(&[t], &[], T0 + 10).unwrap();
    assert_eq!(e.footprint().sessions, 1, "the lingering stand-in");
    assert!(e.connect(t, "laptop", T0 + 20).is_ok(), "not over the cap");
    assert_eq!(e.footprint().sessions, 1);
    assert!(matches!(
        e.connect(t, "phone", T0 + 30),
        Err(Error::TooManySessions { .. })
    ));
}
