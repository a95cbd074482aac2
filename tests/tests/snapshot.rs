//! Snapshots through real files: written with fsync and rename, read back by mmap, and every
//! kind of damage refused with an error (never a panic, never a half-loaded engine).

use presence_core::snapshot::{self, GraphSnapshot};
use presence_core::{Config, SnapshotError, UserId};

const T0: u64 = 1_700_000_000_000;

fn sample() -> GraphSnapshot {
    // A ring of 50 users plus chords: every user has friends above and below.
    let n = 50u32;
    let mut snap = GraphSnapshot::new();
    for i in 0..n {
        let mut upper: Vec<u32> = [i + 1, i + 7, i + 20]
            .into_iter()
            .filter(|&j| j < n)
            .collect();
        upper.dedup();
        snap.push_user(&format!("user-{i}"), &upper);
    }
    snap
}

#[test]
fn round_trip_through_a_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("graph.snap");
    let snap = sample();
    snapshot::write_file(&path, &snap.to_bytes().expect("serialize")).expect("write");
    let engine = snapshot::load_file(Config::default(), T0, &path, 1 << 30).expect("load");
    assert_eq!(engine.user_count(), 50);
    let u0 = engine.lookup("user-0").expect("interned");
    let u7 = engine.lookup("user-7").expect("interned");
    assert!(engine.are_friends(u0, u7) && engine.are_friends(u7, u0));
    assert_eq!(engine.footprint().edges, snap.edges());
    // Exporting the loaded engine gives back the same snapshot.
    assert_eq!(GraphSnapshot::from_engine(&engine), snap);
    assert!(
        !dir.path().join("graph.tmp").exists(),
        "temporary file renamed away"
    );
}

#[test]
fn missing_file_is_an_io_error() {
    let err = snapshot::load_file(
        Config::default(),
        T0,
        "/nonexistent/g.snap".as_ref(),
        1 << 30,
    )
    .expect_err("must fail");
    assert!(matches!(err, SnapshotError::Io(_)), "{err}");
}

#[test]
fn oversize_and_truncated_files_are_refused() {
    let bytes = sample().to_bytes().expect("serialize");
    assert!(matches!(
        snapshot::load(Config::default(), T0, &bytes, 16),
        Err(SnapshotError::TooLarge { .. })
    ));
    for cut in [0, 1, 8, bytes.len() / 2, bytes.len() - 1] {
        let mut aligned = rkyv::util::AlignedVec::<16>::new();
        aligned.extend_from_slice(&bytes[..cut]);
        assert!(
            snapshot::load(Config::default(), T0, &aligned, 1 << 30).is_err(),
            "truncated at {cut}"
        );
    }
}

#[test]
fn semantic_damage_is_refused() {
    let cases: Vec<(&str, GraphSnapshot)> = vec![
        ("friend below its owner", {
            let mut s = GraphSnapshot::new();
            s.push_user("a", &[]);
            s.push_user("b", &[0]);
            s
        }),
        ("self loop", {
            let mut s = GraphSnapshot::new();
            s.push_user("a", &[0]);
            s
        }),
        ("friend out of range", {
            let mut s = GraphSnapshot::new();
            s.push_user("a", &[5]);
            s
        }),
        ("duplicate friend", {
            let mut s = GraphSnapshot::new();
            s.push_user("a", &[1, 1]);
            s.push_user("b", &[]);
            s
        }),
        ("duplicate name", {
            let mut s = GraphSnapshot::new();
            s.push_user("a", &[]);
            s.push_user("a", &[]);
            s
        }),
        ("empty name", {
            let mut s = GraphSnapshot::new();
            s.push_user("", &[]);
            s
        }),
        (
            "wrong version",
            GraphSnapshot {
                version: 99,
                ..sample()
            },
        ),
        ("offsets too short", {
            let mut s = sample();
            s.upper_offsets.pop();
            s
        }),
        ("offsets past the end", {
            let mut s = sample();
            if let Some(last) = s.upper_offsets.last_mut() {
                *last += 3;
            }
            s
        }),
        ("name ends out of bounds", {
            let mut s = sample();
            s.name_ends[3] = 10_000;
            s
        }),
    ];
    for (what, snap) in cases {
        let bytes = snap.to_bytes().expect("serialize");
        let res = snapshot::load(Config::default(), T0, &bytes, 1 << 30);
        assert!(res.is_err(), "{what} must be refused");
    }
    // Over the friend cap.
    let bytes = sample().to_bytes().expect("serialize");
    let cfg = Config {
        max_friends: 2,
        ..Config::default()
    };
    assert!(matches!(
        snapshot::load(cfg, T0, &bytes, 1 << 30),
        Err(SnapshotError::Content(
            presence_core::Error::TooManyFriends { .. }
        ))
    ));
}

#[test]
fn random_byte_damage_never_panics_and_never_loads_an_asymmetric_graph() {
    let bytes = sample().to_bytes().expect("serialize");
    let mut x = 0x9e37_79b9_7f4a_7c15u64;
    let mut loaded = 0;
    for _ in 0..3_000 {
        let mut copy = rkyv::util::AlignedVec::<16>::new();
        copy.extend_from_slice(&bytes);
        for _ in 0..1 + (x % 3) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let i = (x as usize) % copy.len();
            copy[i] ^= 1 << (x >> 60 & 7);
        }
        if let Ok(engine) = snapshot::load(Config::default(), T0, &copy, 1 << 30) {
            loaded += 1;
            for a in 0..engine.user_count() as u32 {
                for b in engine.friends(UserId(a)) {
                    assert!(engine.are_friends(b, UserId(a)), "asymmetric edge loaded");
                    assert_ne!(b, UserId(a));
                }
            }
        }
    }
    // Some flips land in padding or in names and still load; most must be caught.
    assert!(loaded < 3_000);
}
