//! One test per rule of the state machine, the graph and the tick, with injected time.

#![allow(clippy::unwrap_used)] // a failed unwrap is a failed test here

use presence_core::{
    Batch, Change, Config, Disconnect, Engine, Error, FanoutPolicy, Presence, State, Status, UserId,
};

const T0: u64 = 1_700_000_000_000;

fn cfg() -> Config {
    Config {
        idle_thresholds_ms: vec![60_000, 120_000, 300_000, 600_000],
        grace_ms: 5_000,
        heartbeat_timeout_ms: 45_000,
        shards: 4,
        threads: 2,
        ..Config::default()
    }
}

/// An engine with users "u0".."u{n-1}".
fn engine(n: u32, cfg: Config) -> (Engine, Vec<UserId>) {
    let e = Engine::new(cfg, T0).expect("valid config");
    let ids = (0..n)
        .map(|i| e.intern(&format!("u{i}")).expect("valid id"))
        .collect();
    (e, ids)
}

/// The presence `watcher` was told about `friend` in this batch, if any.
fn told(b: &Batch, watcher: UserId, friend: UserId) -> Option<Change> {
    b.diff_of(watcher)
        .iter()
        .map(|&i| b.entry(i))
        .find(|(u, _)| *u == friend)
        .map(|(_, c)| c.clone())
}

fn state_told(b: &Batch, watcher: UserId, friend: UserId) -> Option<State> {
    match told(b, watcher, friend) {
        Some(Change::Presence(p)) => Some(p.state),
        _ => None,
    }
}

/// Ticks to publish what happened so far, where the test is about a later tick: this batch
/// is not under test.
fn settle(e: &Engine, now: u64) {
    let _ = e.tick(now);
}

#[test]
fn friend_coming_online_reaches_live_watcher_in_next_tick() {
    let (e, u) = engine(3, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    settle(&e, T0 + 50);
    let w = e.connect(u[0], "phone", T0 + 60).unwrap();
    assert_eq!(w.friends, vec![(u[1], Presence::NEVER_SEEN)]);
    settle(&e, T0 + 100);
    e.connect(u[1], "web", T0 + 150).unwrap();
    let b = e.tick(T0 + 200);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Online));
    // u2 is nobody's friend; u1 is live but u0's change was in the earlier tick.
    assert_eq!(b.watchers, vec![u[0]]);
    assert_eq!(b.stats.transitions, 1);
    // The snapshot a fresh session gets now shows u1 online.
    let w2 = e.connect(u[0], "web", T0 + 300).unwrap();
    assert_eq!(w2.friends[0].1.state, State::Online);
    assert_eq!(w2.tick, b.tick);
}

#[test]
fn idle_levels_are_walked_one_by_one_and_activity_resets() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    let s0 = e.connect(u[0], "w", T0).unwrap().session;
    let s1 = e.connect(u[1], "w", T0).unwrap().session;
    settle(&e, T0);
    let mut now = T0;
    let expect = [
        (59_999, None),
        (60_000, Some(State::Idle(0))),
        (119_999, None),
        (120_000, Some(State::Idle(1))),
        (300_000, Some(State::Idle(2))),
        (600_000, Some(State::Idle(3))),
        (3_600_000, None),
    ];
    for (at, want) in expect {
        // Heartbeats keep both sessions alive but never reset idleness; ticks in between
        // must say nothing new.
        let mut told_now = None;
        while now < T0 + at {
            now = (now + 20_000).min(T0 + at);
            e.heartbeat(s0, now).unwrap();
            e.heartbeat(s1, now).unwrap();
            let b = e.tick(now);
            assert!(b.expired.is_empty());
            if let Some(s) = state_told(&b, u[0], u[1]) {
                assert!(told_now.is_none(), "two changes for one threshold");
                told_now = Some((now, s));
            }
        }
        match want {
            Some(s) => assert_eq!(told_now, Some((T0 + at, s)), "at +{at} ms"),
            None => assert_eq!(told_now, None, "at +{at} ms"),
        }
    }
    let p = e.presence(u[1]);
    assert_eq!(p.state, State::Idle(3));
    assert_eq!(p.last_active, Some(T0));
    e.activity(s1, now + 1).unwrap();
    let b = e.tick(now + 2);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Online));
}

#[test]
fn a_coarse_tick_skips_straight_to_the_current_level() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    let s0 = e.connect(u[0], "w", T0).unwrap().session;
    let s1 = e.connect(u[1], "w", T0).unwrap().session;
    settle(&e, T0);
    // Keep both alive with heartbeats but tick only once, past two thresholds.
    for k in 1..=4 {
        e.heartbeat(s0, T0 + k * 30_000).unwrap();
        e.heartbeat(s1, T0 + k * 30_000).unwrap();
    }
    let b = e.tick(T0 + 130_000);
    assert_eq!(b.diff_of(u[0]).len(), 1, "one entry per friend per tick");
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Idle(1)));
}

#[test]
fn a_change_undone_within_a_tick_is_not_a_change() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    e.connect(u[0], "w", T0).unwrap();
    e.connect(u[1], "w", T0).unwrap();
    settle(&e, T0);
    e.set_status(u[1], Status::Busy, Some("in a meeting"), T0 + 10)
        .unwrap();
    e.set_status(u[1], Status::Available, None, T0 + 20)
        .unwrap();
    let b = e.tick(T0 + 200);
    assert!(
        b.items.is_empty(),
        "flip-flop within a tick must emit nothing: {b:?}"
    );
    assert_eq!(b.stats.transitions, 0);
    // A real change does go out, with its text.
    e.set_status(u[1], Status::Dnd, Some("focus"), T0 + 300)
        .unwrap();
    let b = e.tick(T0 + 400);
    match told(&b, u[0], u[1]) {
        Some(Change::Presence(p)) => {
            assert_eq!(p.status, Status::Dnd);
            assert_eq!(p.text.as_deref(), Some("focus"));
        }
        other => panic!("expected a presence entry, got {other:?}"),
    }
}

#[test]
fn grace_period_absorbs_a_quick_reconnect_and_expires_otherwise() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    e.connect(u[0], "w", T0).unwrap();
    let s = e.connect(u[1], "phone", T0).unwrap().session;
    settle(&e, T0);
    e.disconnect(s, Disconnect::Dropped, T0 + 1_000).unwrap();
    assert!(!e.is_live(u[1]));
    let b = e.tick(T0 + 1_200);
    assert!(b.items.is_empty(), "still online during grace");
    let s = e.connect(u[1], "phone", T0 + 4_000).unwrap().session;
    let b = e.tick(T0 + 7_000);
    assert!(b.items.is_empty(), "reconnect within grace: no flap");
    // Now drop and stay away: offline exactly at grace expiry, not before.
    e.disconnect(s, Disconnect::Dropped, T0 + 8_000).unwrap();
    assert!(e.tick(T0 + 12_999).items.is_empty());
    let b = e.tick(T0 + 13_000);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Offline));
    match told(&b, u[0], u[1]) {
        Some(Change::Presence(p)) => assert_eq!(p.last_active, Some(T0), "last seen"),
        other => panic!("{other:?}"),
    }
}

#[test]
fn logout_skips_the_grace_period() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    e.connect(u[0], "w", T0).unwrap();
    let s = e.connect(u[1], "w", T0).unwrap().session;
    settle(&e, T0);
    e.disconnect(s, Disconnect::LoggedOut, T0 + 50).unwrap();
    let b = e.tick(T0 + 100);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Offline));
    assert_eq!(e.activity(s, T0 + 150), Err(Error::UnknownSession));
}

#[test]
fn a_silent_session_expires_at_the_heartbeat_timeout() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    let s0 = e.connect(u[0], "w", T0).unwrap().session;
    let s1 = e.connect(u[1], "w", T0).unwrap().session;
    settle(&e, T0);
    e.activity(s1, T0 + 10_000).unwrap();
    for t in (5_000..=50_000).step_by(5_000) {
        e.heartbeat(s0, T0 + t).unwrap();
        let b = e.tick(T0 + t);
        assert!(b.expired.is_empty());
        assert!(b.items.is_empty());
    }
    e.heartbeat(s0, T0 + 54_999).unwrap();
    assert!(e.tick(T0 + 54_999).expired.is_empty());
    let b = e.tick(T0 + 55_000);
    assert_eq!(b.expired, vec![s1]);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Offline));
    assert_eq!(e.heartbeat(s1, T0 + 55_001), Err(Error::UnknownSession));
}

#[test]
fn several_devices_merge_into_one_presence() {
    let (e, u) = engine(
        2,
        Config {
            heartbeat_timeout_ms: 3_600_000,
            ..cfg()
        },
    );
    e.add_friendship(u[0], u[1]).unwrap();
    e.connect(u[0], "w", T0).unwrap();
    let phone = e.connect(u[1], "phone", T0).unwrap().session;
    let web = e.connect(u[1], "web", T0 + 10).unwrap().session;
    let b = e.tick(T0 + 100);
    assert_eq!(b.diff_of(u[0]).len(), 1);
    e.activity(phone, T0 + 20_000).unwrap();
    e.activity(web, T0 + 30_000).unwrap();
    // The phone drops: the web session keeps the user online.
    e.disconnect(phone, Disconnect::Dropped, T0 + 40_000)
        .unwrap();
    assert!(e.tick(T0 + 50_000).diff_of(u[0]).is_empty());
    assert!(e.is_live(u[1]));
    // Idleness follows the most recent activity of any device.
    assert!(e.tick(T0 + 89_999).diff_of(u[0]).is_empty());
    let b = e.tick(T0 + 90_000);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Idle(0)));
    assert_eq!(e.presence(u[1]).last_active, Some(T0 + 30_000));
}

#[test]
fn invisible_users_look_offline_but_still_see_friends() {
    let (e, u) = engine(2, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    e.connect(u[0], "w", T0).unwrap();
    let s1 = e.connect(u[1], "w", T0).unwrap().session;
    settle(&e, T0);
    e.activity(s1, T0 + 1_000).unwrap();
    e.set_status(u[1], Status::Invisible, None, T0 + 2_000)
        .unwrap();
    let b = e.tick(T0 + 2_100);
    match told(&b, u[0], u[1]) {
        Some(Change::Presence(p)) => {
            assert_eq!(p.state, State::Offline);
            assert_eq!(
                p.last_active,
                Some(T0 + 1_000),
                "last seen frozen at going invisible"
            );
            assert_eq!(p.status, Status::Available, "status is not revealed");
        }
        other => panic!("{other:?}"),
    }
    // Activity while invisible tells friends nothing...
    e.activity(s1, T0 + 3_000).unwrap();
    assert!(e.tick(T0 + 3_100).diff_of(u[0]).is_empty());
    assert_eq!(e.presence(u[1]).last_active, Some(T0 + 1_000));
    // ...but the invisible user still receives friends' changes.
    e.set_status(u[0], Status::Busy, None, T0 + 4_000).unwrap();
    let b = e.tick(T0 + 4_100);
    assert_eq!(state_told(&b, u[1], u[0]), Some(State::Online));
    // Becoming visible again shows them online.
    e.set_status(u[1], Status::Available, None, T0 + 5_000)
        .unwrap();
    let b = e.tick(T0 + 5_100);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Online));
}

#[test]
fn status_text_over_the_limit_is_refused() {
    let (e, u) = engine(1, cfg());
    let long = "é".repeat(141);
    assert_eq!(
        e.set_status(u[0], Status::Busy, Some(&long), T0),
        Err(Error::TextTooLong { len: 141, max: 140 })
    );
    assert_eq!(e.tick(T0 + 1).stats.transitions, 0);
    assert!(
        e.set_status(u[0], Status::Busy, Some(&"é".repeat(140)), T0)
            .is_ok()
    );
}

#[test]
fn friends_added_or_removed_while_live_are_announced_once() {
    let (e, u) = engine(3, cfg());
    e.connect(u[0], "w", T0).unwrap();
    e.connect(u[1], "w", T0).unwrap();
    settle(&e, T0);
    e.add_friendship(u[0], u[1]).unwrap();
    e.add_friendship(u[0], u[2]).unwrap();
    e.remove_friendship(u[0], u[2]).unwrap();
    let b = e.tick(T0 + 200);
    assert_eq!(state_told(&b, u[0], u[1]), Some(State::Online));
    assert_eq!(state_told(&b, u[1], u[0]), Some(State::Online));
    assert_eq!(
        told(&b, u[0], u[2]),
        None,
        "added and removed within a tick: nothing"
    );
    assert_eq!(b.stats.edge_changes, 2);
    e.remove_friendship(u[1], u[0]).unwrap();
    let b = e.tick(T0 + 400);
    assert_eq!(told(&b, u[0], u[1]), Some(Change::Removed));
    assert_eq!(told(&b, u[1], u[0]), Some(Change::Removed));
}

#[test]
fn a_snapshot_taken_mid_tick_sees_the_published_graph() {
    let (e, u) = engine(2, cfg());
    e.connect(u[0], "phone", T0).unwrap();
    settle(&e, T0);
    e.add_friendship(u[0], u[1]).unwrap();
    // A second device of u0 joins after the edge but before the tick: its snapshot must not
    // contain u1 yet, because the tick's diff will announce it to every device of u0.
    let w = e.connect(u[0], "web", T0 + 50).unwrap();
    assert!(w.friends.is_empty());
    let b = e.tick(T0 + 200);
    assert!(b.tick > w.tick);
    assert_eq!(
        told(&b, u[0], u[1]),
        Some(Change::Presence(Presence::NEVER_SEEN))
    );
}

#[test]
fn bad_graph_input_is_refused_and_changes_nothing() {
    let (e, u) = engine(
        4,
        Config {
            max_friends: 2,
            ..cfg()
        },
    );
    let ghost = UserId(99);
    assert_eq!(
        e.add_friendship(u[0], ghost),
        Err(Error::UnknownUser(ghost))
    );
    assert_eq!(
        e.add_friendship(u[0], u[0]),
        Err(Error::SelfFriendship(u[0]))
    );
    assert_eq!(
        e.apply_friendships(&[(u[0], u[1]), (u[1], u[0])], &[]),
        Err(Error::DuplicateEdge(u[1], u[0]))
    );
    assert!(matches!(
        e.apply_friendships(&[(u[0], u[1]), (u[0], u[2]), (u[0], u[3])], &[]),
        Err(Error::TooManyFriends { cap: 2, .. })
    ));
    assert!(
        e.friends(u[0]).is_empty(),
        "a refused request changes nothing"
    );
    assert_eq!(
        e.apply_friendships(&[(u[0], u[1]), (u[0], u[2])], &[]),
        Ok((2, 0))
    );
    assert_eq!(
        e.add_friendship(u[1], u[0]),
        Ok(false),
        "existing edge is not an error"
    );
    assert_eq!(
        e.replace_friends(u[0], &[u[3], u[3]]),
        Err(Error::DuplicateEdge(u[0], u[3]))
    );
    assert_eq!(e.replace_friends(u[0], &[u[2], u[3]]), Ok((1, 1)));
    assert_eq!(e.friends(u[0]), vec![u[2], u[3]]);
    assert_eq!(e.friends(u[1]), vec![]);
    assert_eq!(e.friends(u[3]), vec![u[0]]);
    assert_eq!(e.connect(ghost, "w", T0), Err(Error::UnknownUser(ghost)));
    assert!(e.intern("").is_err());
    assert!(e.intern(&"x".repeat(129)).is_err());
}

#[test]
fn a_planned_change_is_validated_like_an_applied_one_and_changes_nothing_until_applied() {
    use presence_core::EdgeDelta;
    let (e, u) = engine(
        4,
        Config {
            max_friends: 2,
            ..cfg()
        },
    );
    assert!(matches!(
        e.plan_friendships(&[(u[0], u[1]), (u[0], u[2]), (u[0], u[3])], &[]),
        Err(Error::TooManyFriends { cap: 2, .. })
    ));
    assert_eq!(
        e.plan_friendships(&[(u[0], u[0])], &[]),
        Err(Error::SelfFriendship(u[0]))
    );
    e.add_friendship(u[0], u[1]).unwrap();
    // Pairs already in the wanted state are left out of the plan.
    let plan = e
        .plan_friendships(&[(u[1], u[0]), (u[2], u[0])], &[(u[3], u[0])])
        .unwrap();
    assert_eq!(
        plan,
        EdgeDelta {
            added: vec![(u[0], u[2])],
            removed: vec![],
        }
    );
    assert_eq!(e.friends(u[0]), vec![u[1]], "planning changes nothing");
    assert_eq!(e.apply_planned(&plan), (1, 0));
    assert_eq!(e.friends(u[0]), vec![u[1], u[2]]);
    assert_eq!(e.friends(u[2]), vec![u[0]]);
    // Applying it again changes nothing and says so.
    assert_eq!(e.apply_planned(&plan), (0, 0));
}

#[test]
fn too_many_sessions_is_refused_and_lingering_ones_are_replaced() {
    let (e, u) = engine(
        1,
        Config {
            max_sessions_per_user: 2,
            ..cfg()
        },
    );
    let a = e.connect(u[0], "a", T0).unwrap().session;
    e.connect(u[0], "b", T0).unwrap();
    assert_eq!(
        e.connect(u[0], "c", T0),
        Err(Error::TooManySessions { user: u[0], cap: 2 })
    );
    e.disconnect(a, Disconnect::Dropped, T0 + 1).unwrap();
    // "a" reconnecting replaces its own lingering session rather than counting twice.
    assert!(e.connect(u[0], "a", T0 + 2).is_ok());
    assert_eq!(e.footprint().sessions, 2);
    assert_eq!(
        e.disconnect(a, Disconnect::Dropped, T0 + 3),
        Err(Error::UnknownSession)
    );
}

#[test]
fn queries_return_published_presence() {
    let (e, u) = engine(3, cfg());
    e.add_friendship(u[0], u[1]).unwrap();
    e.add_friendship(u[0], u[2]).unwrap();
    e.connect(u[1], "w", T0).unwrap();
    assert_eq!(
        e.presence(u[1]).state,
        State::Offline,
        "not published before the tick"
    );
    settle(&e, T0 + 200);
    let ps = e.presence_of(&[u[2], u[1], UserId(77)]);
    assert_eq!(ps[0].state, State::Offline);
    assert_eq!(ps[1].state, State::Online);
    assert_eq!(ps[2], Presence::NEVER_SEEN);
    let fp = e.friends_presence(u[0]);
    assert_eq!(
        fp.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        vec![u[1], u[2]]
    );
}

#[test]
fn push_and_pull_fan_out_agree() {
    let make = |policy| {
        let (e, u) = engine(
            200,
            Config {
                fanout: policy,
                parallel_threshold: 0,
                ..cfg()
            },
        );
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let mut add = Vec::new();
        for a in 0..200usize {
            for _ in 0..6 {
                let b = (next() % 200) as usize;
                let key = (a.min(b), a.max(b));
                if a != b && !add.contains(&key) {
                    add.push(key);
                }
            }
        }
        let pairs: Vec<_> = add.iter().map(|&(a, b)| (u[a], u[b])).collect();
        e.apply_friendships(&pairs, &[]).unwrap();
        for (i, &id) in u.iter().enumerate() {
            if i % 2 == 0 {
                e.connect(id, "w", T0).unwrap();
            }
        }
        settle(&e, T0);
        for (i, &id) in u.iter().enumerate() {
            if i % 3 == 0 {
                e.set_status(id, Status::Busy, None, T0 + 10).unwrap();
            }
        }
        e.tick(T0 + 200)
    };
    let push = make(FanoutPolicy::Push);
    let pull = make(FanoutPolicy::Pull);
    let auto = make(FanoutPolicy::Auto);
    assert!(push.entry_count() > 100);
    for b in [&pull, &auto] {
        assert_eq!(push.watchers, b.watchers);
        assert_eq!(push.offsets, b.offsets);
        assert_eq!(push.items, b.items);
        assert_eq!(push.entries, b.entries);
    }
}

#[test]
fn bad_config_is_refused() {
    for bad in [
        Config {
            idle_thresholds_ms: vec![],
            ..cfg()
        },
        Config {
            idle_thresholds_ms: vec![5, 5],
            ..cfg()
        },
        Config { shards: 3, ..cfg() },
        Config {
            grace_ms: 0,
            ..cfg()
        },
        Config {
            threads: 0,
            ..cfg()
        },
    ] {
        assert!(Engine::new(bad, T0).is_err());
    }
}
