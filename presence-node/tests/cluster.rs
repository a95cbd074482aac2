//! Three real `presence-node` processes in a cluster, on a private etcd and a private
//! PostgreSQL (started here, in temporary folders, on loopback): slots shared, presence
//! crossing nodes over the peer links, `moved` and `/v1/route`, a killed node's slots and
//! users taken over, a graceful stop handing its slots over.

mod common;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use common::cluster::{CONVERGE, Cluster, SERIAL, TICK, mesh, sees_online, signal};
use common::{Client, Via};
use serde_json::Value;

/// Users named so that each of the three nodes owns some: `u00`… and the hub `hub`.
fn star(n: usize) -> (Vec<String>, Vec<(String, String)>) {
    let users: Vec<String> = (0..n).map(|i| format!("u{i:02}")).collect();
    let pairs = users
        .iter()
        .map(|u| ("hub".to_owned(), u.clone()))
        .collect();
    (users, pairs)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn presence_crosses_nodes_and_hellos_are_routed() {
    let _serial = SERIAL.lock().await;
    let (users, pairs) = star(30);
    let c = Cluster::start(&["n1", "n2", "n3"], &pairs).await;

    // Every node answers the same route; the slots are spread over the three.
    let hub_node = c.owner("n1", "hub").await;
    for id in ["n2", "n3"] {
        assert_eq!(c.owner(id, "hub").await, hub_node);
    }
    let (_, cl) = c.node("n2").admin("GET", "/v1/cluster", None).await;
    for n in cl["nodes"].as_array().expect("nodes") {
        assert!(n["slots"].as_u64().unwrap_or(0) > 200, "{cl}");
    }

    // A hello on a node that does not own the user is answered `moved`, with the owner's
    // addresses.
    let other = c.nodes.keys().find(|id| **id != hub_node).expect("other");
    let token = c.node(other).token("hub").await;
    let mut wrong = Client::open(c.node(other), Via::Ws).await;
    wrong
        .send(serde_json::json!({"type": "hello", "token": token, "device": "d"}))
        .await;
    let e = wrong.recv().await.expect("an answer");
    assert_eq!(e["type"], "error", "{e}");
    assert_eq!(e["code"], "moved", "{e}");
    assert_eq!(
        e["ws"].as_str(),
        Some(c.node(&hub_node).ready.ws.to_string().as_str()),
        "{e}"
    );
    // The same over long-poll: `409` with the `moved` error naming the owner's long-poll base
    // URL (by default http:// and its WebSocket address), as `/v1/route` does.
    let hello = serde_json::json!({"type": "hello", "token": token, "device": "d"});
    let a = common::lp::request(
        c.node(other).ready.ws,
        "POST",
        "/v1/lp/open",
        &[],
        hello.to_string().as_bytes(),
    )
    .await;
    assert_eq!(a.status, 409, "{}", a.body);
    let e = a.json();
    let owner_lp = format!("http://{}", c.node(&hub_node).ready.ws);
    assert_eq!(
        (&e["code"], &e["lp"]),
        (&"moved".into(), &owner_lp.clone().into()),
        "{e}"
    );
    let (_, route) = c.node(other).admin("GET", "/v1/route?user=hub", None).await;
    assert_eq!(route["lp"], owner_lp, "{route}");

    // The hub on its node; one friend on each other node.
    let (mut hub, w) = Client::hello(c.node(&hub_node), Via::Ws, "hub", "d").await;
    assert_eq!(
        w["friends"].as_array().map(Vec::len),
        Some(users.len()),
        "the welcome lists every friend, wherever they live: {w}"
    );
    let mut remote = Vec::new();
    for u in &users {
        let owner = c.owner("n1", u).await;
        if owner != hub_node && !remote.iter().any(|(_, o): &(String, String)| *o == owner) {
            remote.push((u.clone(), owner));
        }
    }
    assert_eq!(remote.len(), 2, "friends on both other nodes: {remote:?}");
    let mut lags = Vec::new();
    let mut friends = Vec::new();
    for (u, owner) in &remote {
        let (f, w) = Client::hello(c.node(owner), Via::Quic, u, "d").await;
        let online_at = Instant::now();
        // The friend's node mirrors the hub: its welcome shows the hub online.
        let hub_entry = w["friends"]
            .as_array()
            .and_then(|a| a.iter().find(|e| e["user"] == "hub"))
            .cloned()
            .unwrap_or(Value::Null);
        // The hub, on another node, sees the friend come online.
        hub.expect_presence(u, Duration::from_secs(5), |e| e["state"] == "online")
            .await;
        lags.push(online_at.elapsed());
        friends.push((f, hub_entry));
    }
    // The friends' nodes mirror the hub: online in the welcome, or within two ticks after
    // (the hub came online moments before).
    for (f, hub_entry) in &mut friends {
        if hub_entry["state"] != "online" {
            f.expect_presence("hub", Duration::from_secs(2), |e| e["state"] == "online")
                .await;
        }
    }
    // The hub changes its status: both remote friends see it.
    hub.send(serde_json::json!({"type": "status", "status": "dnd", "text": "focus"}))
        .await;
    let changed_at = Instant::now();
    for (f, _) in &mut friends {
        let e = f
            .expect_presence("hub", Duration::from_secs(5), |e| e["status"] == "dnd")
            .await;
        assert_eq!(e["text"], "focus", "{e}");
        lags.push(changed_at.elapsed());
    }
    eprintln!("cross-node changes seen after {lags:?} (tick {TICK:?})");
    for lag in &lags {
        // Two ticks, and the scheduling of three nodes and this test on two cores.
        assert!(*lag < TICK * 2 + Duration::from_millis(400), "{lags:?}");
    }

    // v1.1 focus across nodes: the hub focuses on the first remote friend; the second's
    // change (mirrored from its node) stays out, the first's comes in; `null` brings the
    // second's missed state at once.
    let (a, b) = (remote[0].0.clone(), remote[1].0.clone());
    hub.send(serde_json::json!({"type": "focus", "users": [a]}))
        .await;
    hub.expect_presence(&a, Duration::from_secs(5), |e| e["state"] == "online")
        .await;
    friends[1]
        .0
        .send(serde_json::json!({"type": "status", "status": "busy", "text": "out of focus"}))
        .await;
    friends[0]
        .0
        .send(serde_json::json!({"type": "status", "status": "dnd"}))
        .await;
    let deadline = Instant::now() + TICK * 6;
    let mut saw_a = false;
    while Instant::now() < deadline {
        let left = deadline.saturating_duration_since(Instant::now());
        match hub.recv_within(left).await {
            Ok(Some(v)) if v["type"] == "presence" => {
                for e in v["changes"].as_array().into_iter().flatten() {
                    assert_ne!(e["user"], b.as_str(), "out of focus, yet sent: {v}");
                    saw_a |= e["user"] == a.as_str() && e["status"] == "dnd";
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("the hub's connection closed"),
            Err(()) => break,
        }
    }
    if !saw_a {
        hub.expect_presence(&a, Duration::from_secs(5), |e| e["status"] == "dnd")
            .await;
    }
    hub.send(serde_json::json!({"type": "focus", "users": null}))
        .await;
    let e = hub
        .expect_presence(&b, Duration::from_secs(5), |e| e["status"] == "busy")
        .await;
    assert_eq!(e["text"], "out of focus", "{e}");

    // A group's counts on any node, its members' presence asked of their owners.
    let members = serde_json::json!({"members": ["hub", a, b, "nobody-1", "nobody-2"]});
    let (status, v) = c
        .node("n1")
        .admin("PUT", "/v1/groups/g", Some(members))
        .await;
    assert_eq!(status, 204, "{v}");
    for id in ["n1", "n2", "n3"] {
        let (status, v) = c.node(id).admin("GET", "/v1/groups/g/presence", None).await;
        assert_eq!(status, 200, "{v}");
        assert_eq!(
            (&v["online"], &v["idle"], &v["total"]),
            (&3.into(), &0.into(), &5.into()),
            "on {id}: {v}"
        );
    }
    let (status, _) = c
        .node("n2")
        .admin("GET", "/v1/groups/none/presence", None)
        .await;
    assert_eq!(status, 404);

    // watch_group on a cluster node: a member no one on the hub's node is a friend of, owned
    // elsewhere, is streamed here for the watch (PeerFrame::Follow): the counts and its
    // presence follow it.
    let mut x = String::new();
    for i in 0..100 {
        let name = format!("w{i}");
        if c.owner("n1", &name).await != hub_node {
            x = name;
            break;
        }
    }
    assert!(!x.is_empty(), "a user owned by another node");
    let x_node = c.owner("n1", &x).await;
    let members = serde_json::json!({"members": ["hub", x]});
    let (status, v) = c
        .node("n2")
        .admin("PUT", "/v1/groups/w", Some(members))
        .await;
    assert_eq!(status, 204, "{v}");
    hub.send(serde_json::json!({"type": "watch_group", "group": "w", "members": [x]}))
        .await;
    let counts = hub.expect("group_counts", Duration::from_secs(5)).await;
    assert_eq!(counts["groups"][0]["total"], 2, "{counts}");
    // x connects on its node and sets a status: the hub sees both, and the counts move.
    let (mut xc, _) = Client::hello(c.node(&x_node), Via::Ws, &x, "d").await;
    xc.send(serde_json::json!({"type": "status", "status": "busy", "text": "watched"}))
        .await;
    let (mut busy, mut two) = (false, false);
    let deadline = Instant::now() + Duration::from_secs(5);
    while !(busy && two) {
        let left = deadline.saturating_duration_since(Instant::now());
        let v = match hub.recv_within(left).await {
            Ok(Some(v)) => v,
            Ok(None) => panic!("the hub's connection closed"),
            Err(()) => panic!("within 5 s: x busy {busy}, counts at 2 online {two}"),
        };
        if v["type"] == "group_counts" {
            two |= v["groups"][0]["online"] == 2;
        }
        for e in v["changes"].as_array().into_iter().flatten() {
            busy |= e["user"] == x.as_str() && e["status"] == "busy" && e["text"] == "watched";
        }
    }
    xc.close().await;

    // The hub goes away: both remote friends see it offline (after the grace).
    hub.close().await;
    for (f, _) in &mut friends {
        f.expect_presence("hub", Duration::from_secs(5), |e| e["state"] == "offline")
            .await;
    }
}

impl Cluster {
    /// Connects `user` wherever the cluster routes it now, skipping `dead`: asks a live node
    /// for the route until it names a live owner that takes the hello (bounded).
    async fn reconnect(&self, user: &str, dead: &str, within: Duration) -> (Client, Value) {
        let deadline = Instant::now() + within;
        let asked = self
            .nodes
            .keys()
            .find(|id| *id != dead)
            .expect("a live node");
        loop {
            assert!(
                Instant::now() < deadline,
                "{user} found no node in {within:?}"
            );
            let (status, r) = self
                .node(asked)
                .admin("GET", &format!("/v1/route?user={user}"), None)
                .await;
            let owner = r["node"].as_str().unwrap_or_default();
            if status != 200 || owner == dead || !self.nodes.contains_key(owner) {
                tokio::time::sleep(Duration::from_millis(25)).await;
                continue;
            }
            let node = self.node(owner);
            let token = node.token(user).await;
            let mut c = Client::open(node, Via::Quic).await;
            c.send(serde_json::json!({"type": "hello", "token": token, "device": "d"}))
                .await;
            match c.recv_within(Duration::from_secs(2)).await {
                Ok(Some(w)) if w["type"] == "welcome" => return (c, w),
                _ => tokio::time::sleep(Duration::from_millis(25)).await,
            }
        }
    }
}

/// What an observer saw: (when, user, state, status, text) for each presence entry, in order.
type Seen = Vec<(Instant, String, String, String, String)>;

/// Reads `c`'s presence frames until `until`, recording every entry.
async fn observe(mut c: Client, until: Instant) -> (Client, Seen) {
    let mut seen = Vec::new();
    while let Some(left) = until.checked_duration_since(Instant::now()) {
        match c.recv_within(left).await {
            Ok(Some(v)) if v["type"] == "presence" => {
                for e in v["changes"].as_array().into_iter().flatten() {
                    let field = |k: &str| e[k].as_str().unwrap_or_default().to_owned();
                    seen.push((
                        Instant::now(),
                        field("user"),
                        field("state"),
                        field("status"),
                        field("text"),
                    ));
                }
            }
            Ok(Some(_)) => {}
            Ok(None) => panic!("an observer's connection closed"),
            Err(()) => break,
        }
    }
    (c, seen)
}

/// The users of `users` owned by `node`, and one observer on each other node.
async fn placed(c: &Cluster, users: &[String], node: &str) -> (Vec<String>, Vec<String>) {
    let mut on_node = Vec::new();
    let mut observers: BTreeMap<String, String> = BTreeMap::new();
    for u in users {
        let owner = c.owner(node, u).await;
        if owner == node {
            on_node.push(u.clone());
        } else {
            observers.entry(owner).or_insert_with(|| u.clone());
        }
    }
    (on_node, observers.into_values().collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_leaves_no_ghost_and_its_clients_move_without_a_flap() {
    let _serial = SERIAL.lock().await;
    let (users, pairs) = mesh(24);
    let c = Cluster::start(&["n1", "n2", "n3"], &pairs).await;
    let (on_victim, observers) = placed(&c, &users, "n2").await;
    assert!(
        on_victim.len() >= 3,
        "n2 owns three of the users: {on_victim:?}"
    );
    assert_eq!(observers.len(), 2, "{observers:?}");
    let (mover, ghost) = (on_victim[0].clone(), on_victim[1].clone());
    // Invisible on n2; after the kill it reconnects to the new owner without saying so again.
    let hider = on_victim[2].clone();

    let (mut m, _) = Client::hello(c.node("n2"), Via::Quic, &mover, "d").await;
    m.send(serde_json::json!({"type": "status", "status": "busy", "text": "on a train"}))
        .await;
    let (g, _) = Client::hello(c.node("n2"), Via::Quic, &ghost, "d").await;
    let (mut h, _) = Client::hello(c.node("n2"), Via::Quic, &hider, "d").await;
    h.send(serde_json::json!({"type": "status", "status": "invisible"}))
        .await;
    // Both statuses reached the store (the next owner loads them from there).
    let store = presence_pg::Store::connect(&c.url).await.expect("store");
    let stored = Instant::now();
    loop {
        let rows = store
            .load_statuses(&(0..1024).collect::<Vec<u16>>())
            .await
            .expect("statuses");
        if rows.iter().any(|r| r.user == mover && r.status == "busy")
            && rows
                .iter()
                .any(|r| r.user == hider && r.status == "invisible")
        {
            break;
        }
        assert!(
            stored.elapsed() < Duration::from_secs(10),
            "statuses not stored: {rows:?}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let mut watching = Vec::new();
    for o in &observers {
        let owner = c.owner("n1", o).await;
        let (mut oc, w) = Client::hello(c.node(&owner), Via::Quic, o, "d").await;
        let missing = sees_online(&mut oc, &w, &[&mover, &ghost]).await;
        assert!(
            missing.is_empty(),
            "{o} on {owner} never saw {missing:?} online"
        );
        watching.push(oc);
    }

    // kill -9: no goodbye, no revoke; the lease runs out on its own.
    let mut c = c;
    let mut victim = c.nodes.remove("n2").expect("n2");
    let killed = Instant::now();
    victim.kill9();
    m.abandon();
    g.abandon();
    h.abandon();
    let until = killed + CONVERGE + Duration::from_secs(2);
    let tasks: Vec<_> = watching
        .into_iter()
        .map(|oc| tokio::spawn(observe(oc, until)))
        .collect();
    // The mover's device finds its new node (the Rust client does this with backoff).
    let (_m2, w) = c.reconnect(&mover, "n2", CONVERGE).await;
    let moved_at = killed.elapsed();
    assert_eq!(w["type"], "welcome");
    let (_h2, w) = c.reconnect(&hider, "n2", CONVERGE).await;
    assert_eq!(w["type"], "welcome");
    c.settled(CONVERGE).await;
    // A friend arriving now sees both as they set themselves on the dead node.
    let late = &observers[0];
    let owner = c.owner("n1", late).await;
    let (_l, w) = Client::hello(c.node(&owner), Via::Quic, late, "late").await;
    let entry = |u: &str| {
        w["friends"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|e| e["user"] == u)
            .cloned()
            .unwrap_or(Value::Null)
    };
    let (me, he) = (entry(&mover), entry(&hider));
    assert!(
        me["state"] != "offline" && me["status"] == "busy" && me["text"] == "on a train",
        "{mover} in a late welcome: {me}"
    );
    assert_eq!(
        he["state"], "offline",
        "invisible {hider} in a late welcome: {he}"
    );

    for t in tasks {
        let (_oc, seen) = t.await.expect("observer");
        let ghost_off = seen
            .iter()
            .find(|(_, u, s, ..)| *u == ghost && s == "offline")
            .map(|(at, ..)| at.duration_since(killed));
        let ghost_off = ghost_off.unwrap_or_else(|| panic!("{ghost} stayed online: {seen:?}"));
        assert!(ghost_off <= CONVERGE, "{ghost} offline after {ghost_off:?}");
        let flaps: Vec<_> = seen
            .iter()
            .filter(|(_, u, s, ..)| *u == mover && s == "offline")
            .collect();
        assert!(flaps.is_empty(), "{mover} flapped offline: {seen:?}");
        // The new owner shows what the users set on the dead one.
        let last = seen.iter().rev().find(|(_, u, ..)| *u == mover);
        if let Some((_, _, state, status, text)) = last {
            assert!(
                state != "offline" && status == "busy" && text == "on a train",
                "{mover} lost its status: {seen:?}"
            );
        }
        let shown: Vec<_> = seen
            .iter()
            .filter(|(_, u, s, ..)| *u == hider && s != "offline")
            .collect();
        assert!(shown.is_empty(), "invisible {hider} was shown: {seen:?}");
        eprintln!(
            "killed n2: {ghost} offline after {ghost_off:?}, {mover} back after {moved_at:?}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_stop_hands_slots_over_and_a_rejoin_takes_them_back_without_a_flap() {
    let _serial = SERIAL.lock().await;
    let (users, pairs) = mesh(24);
    let c = Cluster::start(&["n1", "n2", "n3"], &pairs).await;
    let (on_leaver, observers) = placed(&c, &users, "n3").await;
    assert!(!on_leaver.is_empty() && observers.len() == 2);
    let mover = on_leaver[0].clone();
    let (mut m, _) = Client::hello(c.node("n3"), Via::Quic, &mover, "d").await;
    let mut watching = Vec::new();
    for o in &observers {
        let owner = c.owner("n1", o).await;
        let (mut oc, w) = Client::hello(c.node(&owner), Via::Quic, o, "d").await;
        let missing = sees_online(&mut oc, &w, &[&mover]).await;
        assert!(missing.is_empty(), "{o} never saw {mover} online");
        watching.push(oc);
    }
    let mut c = c;
    let mut leaver = c.nodes.remove("n3").expect("n3");
    let stopping = Instant::now();
    let until = stopping + Duration::from_secs(8);
    let tasks: Vec<_> = watching
        .into_iter()
        .map(|oc| tokio::spawn(observe(oc, until)))
        .collect();
    let stop = tokio::task::spawn_blocking(move || leaver.stop());
    // The mover's session is told `moved`, with its new node's address.
    let e = m.expect("error", Duration::from_secs(15)).await;
    assert_eq!(e["code"], "moved", "{e}");
    let (mut m2, _) = c.reconnect(&mover, "n3", Duration::from_secs(10)).await;
    let status = stop.await.expect("stop");
    assert!(status.success(), "the stopped node exited with {status}");
    c.settled(Duration::from_secs(10)).await;
    let mut watching = Vec::new();
    for t in tasks {
        let (oc, seen) = t.await.expect("observer");
        let flaps: Vec<_> = seen
            .iter()
            .filter(|(_, u, s, ..)| *u == mover && s == "offline")
            .collect();
        assert!(flaps.is_empty(), "{mover} flapped offline: {seen:?}");
        watching.push(oc);
    }
    eprintln!("graceful stop took {:?}", stopping.elapsed());

    // n3 comes back under its id: the slots rendezvous hashing gives it return to it, and
    // only those (no slot moves between n1 and n2); the mover is told `moved` again and
    // follows with no flap.
    let names: Vec<String> = (0..300).map(|i| format!("probe{i}")).collect();
    let mut before = Vec::new();
    for u in &names {
        before.push(c.owner("n1", u).await);
    }
    let rejoining = Instant::now();
    let until = rejoining + Duration::from_secs(10);
    let tasks: Vec<_> = watching
        .into_iter()
        .map(|oc| tokio::spawn(observe(oc, until)))
        .collect();
    c.add("n3");
    let e = m2.expect("error", Duration::from_secs(15)).await;
    assert_eq!(e["code"], "moved", "{e}");
    let (_m3, _) = c.reconnect(&mover, "", Duration::from_secs(10)).await;
    assert_eq!(c.owner("n1", &mover).await, "n3");
    c.settled(Duration::from_secs(20)).await;
    let mut moved = 0;
    for (u, was) in names.iter().zip(&before) {
        let now = c.owner("n1", u).await;
        if &now != was {
            assert_eq!(
                now, "n3",
                "{u} moved from {was} to {now}, not to the rejoined node"
            );
            moved += 1;
        }
    }
    assert!(moved > 0, "no probe moved back to n3");
    for t in tasks {
        let (_oc, seen) = t.await.expect("observer");
        let flaps: Vec<_> = seen
            .iter()
            .filter(|(_, u, s, ..)| *u == mover && s == "offline")
            .collect();
        assert!(
            flaps.is_empty(),
            "{mover} flapped offline on the rejoin: {seen:?}"
        );
    }
    eprintln!(
        "rejoin: {moved} of {} probes moved back to n3, settled after {:?}",
        names.len(),
        rejoining.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_paused_node_past_its_lease_serves_nothing_when_it_wakes() {
    let _serial = SERIAL.lock().await;
    let (users, pairs) = mesh(24);
    let c = Cluster::start(&["n1", "n2", "n3"], &pairs).await;
    let (on_paused, observers) = placed(&c, &users, "n2").await;
    assert!(!on_paused.is_empty() && observers.len() == 2);
    let stuck = on_paused[0].clone();
    let (mut s, _) = Client::hello(c.node("n2"), Via::Quic, &stuck, "d").await;
    let mut watching = Vec::new();
    for o in &observers {
        let owner = c.owner("n1", o).await;
        let (mut oc, w) = Client::hello(c.node(&owner), Via::Quic, o, "d").await;
        let missing = sees_online(&mut oc, &w, &[&stuck]).await;
        assert!(missing.is_empty(), "{o} never saw {stuck} online");
        watching.push(oc);
    }

    // SIGSTOP past the lease: the others take its slots; its device, stuck with it, is seen
    // going offline once the new owner's grace runs out.
    signal(c.node("n2"), "-STOP");
    let paused = Instant::now();
    for oc in &mut watching {
        oc.expect_presence(&stuck, CONVERGE, |e| e["state"] == "offline")
            .await;
    }
    eprintln!("{stuck} offline {:?} after the pause", paused.elapsed());

    // SIGCONT: the woken node must not serve under its old epochs. Its stuck session is
    // told to move (or cut), and no friend sees the user online again.
    signal(c.node("n2"), "-CONT");
    let woke = Instant::now();
    let until = woke + Duration::from_secs(4);
    let tasks: Vec<_> = watching
        .into_iter()
        .map(|oc| tokio::spawn(observe(oc, until)))
        .collect();
    // Its stuck session ends: told `moved` or `unavailable`, or expired (its client's
    // keep-alives went unanswered while the node slept): whichever the node reaches first.
    let mut last = Value::Null;
    loop {
        match s.recv_within(Duration::from_secs(4)).await {
            Ok(Some(v)) => {
                if v["type"] == "error" {
                    let code = v["code"].as_str().unwrap_or_default();
                    assert!(
                        ["moved", "unavailable", "protocol"].contains(&code),
                        "the woken node told its session {v}"
                    );
                }
                last = v;
            }
            Ok(None) => break,
            Err(()) => panic!("the woken node kept the stuck session open; last: {last}"),
        }
    }
    assert_eq!(
        last["type"], "error",
        "the session ended without saying why: {last}"
    );
    for t in tasks {
        let (_oc, seen) = t.await.expect("observer");
        let back: Vec<_> = seen
            .iter()
            .filter(|(_, u, st, ..)| *u == stuck && st != "offline")
            .collect();
        assert!(
            back.is_empty(),
            "{stuck} seen again after the wake: {seen:?}"
        );
    }
}

/// Hellos `user` on its owner: its welcome must list (or not list) `friend` at once. An admin
/// write is answered only once every node has applied and published it, so a session that
/// starts anywhere after the answer sees it.
async fn welcome_on_owner(c: &Cluster, user: &str, friend: &str, listed: bool) -> (Client, Value) {
    let owner = c.owner("n1", user).await;
    let (cl, w) = Client::hello(c.node(&owner), Via::Quic, user, "d").await;
    let has = w["friends"]
        .as_array()
        .is_some_and(|a| a.iter().any(|e| e["user"] == friend));
    assert_eq!(
        has,
        listed,
        "{user}'s first welcome on {owner} after the answer {} {friend}: {w}",
        if listed { "lacks" } else { "lists" }
    );
    (cl, w)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_writes_work_on_any_node_and_reach_both_ends() {
    let _serial = SERIAL.lock().await;
    let (users, pairs) = star(30);
    let c = Cluster::start(&["n1", "n2", "n3"], &pairs).await;
    // Two users owned by two different nodes, and a third node to write on.
    let mut by_node: BTreeMap<String, String> = BTreeMap::new();
    for u in &users {
        by_node
            .entry(c.owner("n1", u).await)
            .or_insert_with(|| u.clone());
    }
    let ids: Vec<String> = by_node.keys().cloned().collect();
    assert_eq!(ids.len(), 3, "{by_node:?}");
    let (x, y, writer) = (&by_node[&ids[0]], &by_node[&ids[1]], c.node(&ids[2]));

    // y's owner is paused (well within its lease) while the write is made on a third node:
    // the answer waits until it has woken and applied the write, so y's first welcome after
    // the answer lists x.
    let slow = c.node(&ids[1]);
    signal(slow, "-STOP");
    let pid = slow.ready.pid;
    let wake = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_millis(700));
        let st = std::process::Command::new("kill")
            .args(["-CONT", &pid.to_string()])
            .status();
        assert!(st.is_ok_and(|s| s.success()), "SIGCONT {pid}");
    });
    let (status, v) = writer
        .admin(
            "POST",
            "/v1/friendships",
            Some(serde_json::json!({"add": [[x, y]]})),
        )
        .await;
    wake.join().expect("waker");
    assert_eq!((status, v["added"].as_u64()), (200, Some(1)), "{v}");
    let (yc0, _) = welcome_on_owner(&c, y, x, true).await;
    yc0.close().await;
    // The same write again changes nothing; a bad one is refused and changes nothing.
    let (_, v) = writer
        .admin(
            "POST",
            "/v1/friendships",
            Some(serde_json::json!({"add": [[y, x]]})),
        )
        .await;
    assert_eq!(v["added"], 0, "{v}");
    let (status, v) = writer
        .admin(
            "POST",
            "/v1/friendships",
            Some(serde_json::json!({"add": [[x, x]]})),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    // Over the nodes' friend cap (`--max-friends`, 5,000 by default): refused by the store,
    // so no owner is ever handed a change its engine must refuse.
    let many: Vec<String> = (0..5_001).map(|i| format!("fan{i}")).collect();
    let (status, v) = writer
        .admin(
            "PUT",
            &format!("/v1/users/{x}/friends"),
            Some(serde_json::json!({ "friends": many })),
        )
        .await;
    assert_eq!(status, 400, "{v}");
    assert!(v.to_string().contains("over the cap of 5000"), "{v}");
    for id in &ids {
        let (_, f) = c
            .node(id)
            .admin("GET", &format!("/v1/users/{x}/friends"), None)
            .await;
        let list: Vec<&str> = f["friends"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        assert_eq!(list, vec!["hub", y.as_str()], "on {id}: {f}");
    }

    // Both ends' owners have the friendship: each welcome lists the other, and presence
    // crosses.
    let (mut xc, xw) = welcome_on_owner(&c, x, y, true).await;
    let (_yc, _) = welcome_on_owner(&c, y, x, true).await;
    let missing = sees_online(&mut xc, &xw, &[y]).await;
    assert!(missing.is_empty(), "{x} never saw {y} online");

    // The presence query on the third node asks each user's owner (which publishes a
    // session's start with its next tick).
    let asked = Instant::now();
    loop {
        let (status, p) = writer
            .admin("GET", &format!("/v1/presence?users={x},{y},hub"), None)
            .await;
        assert_eq!(status, 200, "{p}");
        let states: Vec<&str> = p["presence"]
            .as_array()
            .map(|a| a.iter().filter_map(|e| e["state"].as_str()).collect())
            .unwrap_or_default();
        if states == ["online", "online", "offline"] {
            break;
        }
        assert!(asked.elapsed() < Duration::from_secs(2), "{p}");
        tokio::time::sleep(TICK).await;
    }

    // Removed on yet another node: x's live session hears it.
    let (status, v) = c
        .node(&ids[1])
        .admin(
            "POST",
            "/v1/friendships",
            Some(serde_json::json!({"remove": [[x, y]]})),
        )
        .await;
    assert_eq!((status, v["removed"].as_u64()), (200, Some(1)), "{v}");
    xc.expect_presence(y, Duration::from_secs(5), |e| e["removed"] == true)
        .await;
    let (_y2, _) = welcome_on_owner(&c, y, x, false).await;

    // Groups: written on one node, read on every other.
    let (status, _) = c
        .node("n1")
        .admin(
            "PUT",
            "/v1/groups/g1",
            Some(serde_json::json!({"members": [x, y, "hub"]})),
        )
        .await;
    assert_eq!(status, 204);
    for id in ["n2", "n3"] {
        let (status, g) = c.node(id).admin("GET", "/v1/groups/g1", None).await;
        assert_eq!(status, 200, "{g}");
        assert_eq!(g["members"].as_array().map(Vec::len), Some(3), "{g}");
    }
    let (status, _) = c.node("n3").admin("DELETE", "/v1/groups/g1", None).await;
    assert_eq!(status, 204);
    let (status, _) = c.node("n2").admin("GET", "/v1/groups/g1", None).await;
    assert_eq!(status, 404);
}
