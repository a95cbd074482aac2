//! The peer decoder on generated and damaged frames: every well-formed frame round-trips, and
//! no byte string (random, or a valid frame mutated) panics or allocates past the frame cap;
//! it is a frame or an error. `FUZZ_CASES=N` runs more.

use presence_peer::{ChatPush, PeerEntry, PeerFrame, SlotUpdate};
use proptest::prelude::*;

#[path = "../../presence-wire/tests/support/mod.rs"]
mod support;
use support::{Frame, bytes, mutate, mutation};

fn entry() -> impl Strategy<Value = PeerEntry> {
    (
        support::text(128),
        any::<u8>(),
        0..3u8,
        any::<u64>(),
        any::<bool>(),
    )
        .prop_map(|(user, state, status, last_active, gone)| PeerEntry {
            user,
            state,
            status,
            last_active,
            gone,
        })
}

fn push() -> impl Strategy<Value = ChatPush> {
    (
        support::text(128),
        any::<u64>(),
        proptest::collection::vec(any::<u8>(), 0..200),
        proptest::option::of((any::<u64>(), support::text(128))),
    )
        .prop_map(|(owner, seq, frame, message)| ChatPush {
            owner,
            seq,
            frame,
            message,
        })
}

fn frame() -> impl Strategy<Value = PeerFrame> {
    let update = (
        0..1024u16,
        any::<i64>(),
        any::<u64>(),
        any::<bool>(),
        proptest::collection::vec(entry(), 0..8),
        proptest::collection::vec((any::<u32>(), support::text(40)), 0..3),
    )
        .prop_map(|(slot, epoch, seq, snapshot, entries, texts)| SlotUpdate {
            slot,
            epoch,
            seq,
            snapshot,
            entries,
            texts,
        })
        .boxed();
    prop_oneof![
        (
            any::<u64>(),
            proptest::collection::vec(update.clone(), 0..4)
        )
            .prop_map(|(tick, slots)| PeerFrame::Tick { tick, slots }),
        proptest::collection::vec(update, 0..3).prop_map(|slots| PeerFrame::Handoff { slots }),
        (support::text(64), any::<[u8; 32]>())
            .prop_map(|(node, proof)| PeerFrame::Hello { node, proof }),
        any::<u16>().prop_map(|slot| PeerFrame::Resync { slot }),
        any::<i64>().prop_map(|change| PeerFrame::Applied { change }),
        proptest::collection::vec(push(), 0..6).prop_map(|items| PeerFrame::Chat { items }),
        proptest::collection::vec(support::text(40), 0..6)
            .prop_map(|users| PeerFrame::Follow { users }),
    ]
}

#[test]
fn frames_round_trip() {
    support::fuzz(file!(), "peer round trip", 2_000, 4, frame(), |f| {
        let bytes = f.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(PeerFrame::decode(&bytes), Ok(f));
        Ok(())
    });
}

#[test]
fn random_bytes_are_an_error_or_a_frame() {
    support::fuzz(
        file!(),
        "peer random bytes",
        5_000,
        1,
        bytes(0..512).prop_map(Frame),
        |b| {
            let _ = PeerFrame::decode(&b.0);
            Ok(())
        },
    );
}

/// Bytes that steer rkyv's checks: lengths and offsets near the edges.
const TOKENS: &[&[u8]] = &[
    &[0xff, 0xff, 0xff, 0x7f],
    &[0x00, 0x00, 0x00, 0x80],
    &[0xf0, 0xff, 0xff, 0xff],
    &[0x01, 0x00, 0x00, 0x00],
    &[0x80],
];

#[test]
fn damaged_frames_are_an_error_or_a_frame() {
    let damaged = (frame(), proptest::collection::vec(mutation(TOKENS), 1..6));
    support::fuzz(
        file!(),
        "peer damaged frames",
        5_000,
        1,
        damaged,
        |(f, edits)| {
            let bytes = f.encode().map_err(|e| TestCaseError::fail(e.to_string()))?;
            let _ = PeerFrame::decode(&mutate(bytes.to_vec(), &edits));
            Ok(())
        },
    );
}
