//! Wire parse: what a client pays to read the frames a load host sees most, `presence` and
//! `sent`, with [`ServerMessage::parse`] against the flat parse the dark-launch host used
//! before it spoke through `presence-client` (one serde struct with every field of every
//! message optional, no enum), the named baseline.
//!
//! On the busy 2-core development machine `parse` through the tagged enum took 1.3 to 2.5
//! times the flat parse's time (presence of 8 changes: 4.4 against 2.3 µs; `sent`: 0.46
//! against 0.28 µs): the enum buffers the whole object to find its `type`. A two-pass fast
//! path (read the `"type"`, then the frame) gained nothing. What `parse` does now (2026-12-04)
//! is one pass: a frame whose `type` is its first or last member, as the node writes them, is
//! read straight into its struct. Back to back (`--save-baseline before`, then `--baseline
//! before`): presence-8 4.44 → 2.04 µs (0.90× the flat parse in the same run), presence-1
//! 0.70 → 0.40 µs, `sent` 0.46 → 0.29 µs, `inbox` 0.82 → 0.57 µs. At a dark-launch worker's
//! 30,000 frames a second that was 28% of its CPU.
//!
//! Frames, as the node writes them: a `presence` of one change and one of eight (states,
//! idle, status texts as the host's probes set them), a `sent`, and an `inbox` entry.
//! Criterion's throughput is frames.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use presence_wire::ServerMessage;
use serde::Deserialize;

/// The baseline: the host's former flat parse, field for field.
mod flat {
    use super::Deserialize;

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    pub struct EntryIn {
        pub user: String,
        #[serde(default)]
        pub state: Option<String>,
        #[serde(default)]
        pub idle_ms: Option<u64>,
        #[serde(default)]
        pub status: Option<String>,
        #[serde(default)]
        pub text: Option<String>,
        #[serde(default)]
        pub removed: Option<bool>,
    }

    #[allow(dead_code)]
    #[derive(Debug, Deserialize)]
    pub struct In {
        #[serde(rename = "type")]
        pub ty: String,
        #[serde(default)]
        pub friends: Vec<EntryIn>,
        #[serde(default)]
        pub changes: Vec<EntryIn>,
        #[serde(default)]
        pub id: Option<String>,
        #[serde(default)]
        pub code: Option<String>,
        #[serde(default)]
        pub message: Option<String>,
        #[serde(default)]
        pub kind: Option<String>,
        #[serde(default)]
        pub text: Option<String>,
        #[serde(default)]
        pub seq: Option<u64>,
    }
}

fn frames() -> Vec<(&'static str, Vec<u8>)> {
    let entries = [
        r#"{"last_active":1732460000000,"state":"online","user":"u1042"}"#,
        r#"{"last_active":1732460000000,"state":"offline","user":"u77"}"#,
        r#"{"idle_ms":60000,"last_active":1732460000000,"state":"idle","user":"u90311"}"#,
        r#"{"last_active":1732460000000,"state":"online","status":"busy","text":"pr:18234:1732460000123456","user":"u5"}"#,
        r#"{"last_active":1732460000000,"state":"online","status":"available","user":"u19999"}"#,
        r#"{"idle_ms":120000,"last_active":1732460000000,"state":"idle","status":"dnd","text":"pr:18235:1732460000223456","user":"u40000"}"#,
        r#"{"removed":true,"user":"u12"}"#,
        r#"{"last_active":1732460000000,"state":"online","user":"u3"}"#,
    ];
    let presence = |n: usize| {
        format!(
            r#"{{"type":"presence","tick":123456,"changes":[{}]}}"#,
            entries[..n].join(",")
        )
        .into_bytes()
    };
    vec![
        ("presence-1", presence(1)),
        ("presence-8", presence(8)),
        (
            "sent",
            br#"{"id":"chat:88123:1732460000123456","msg_id":"0553540624800000","ts":1732460000124,"type":"sent"}"#.to_vec(),
        ),
        (
            "inbox",
            br#"{"from":"u17","kind":"message","msg_id":"0553540624800000","seq":42,"text":"chat:88123:1732460000123456","to":"u18","ts":1732460000124,"type":"inbox"}"#.to_vec(),
        ),
    ]
}

fn wire(c: &mut Criterion) {
    let mut group = c.benchmark_group("wire-parse");
    group.throughput(Throughput::Elements(1));
    for (name, frame) in frames() {
        // Both parses read every frame, or the comparison means nothing.
        assert!(serde_json::from_slice::<flat::In>(&frame).is_ok(), "{name}");
        assert!(
            !matches!(
                ServerMessage::parse(&frame),
                Ok(ServerMessage::Unknown) | Err(_)
            ),
            "{name}"
        );
        group.bench_with_input(BenchmarkId::new("flat", name), &frame, |b, f| {
            b.iter(|| serde_json::from_slice::<flat::In>(black_box(f)).map(|m| m.ty.len()))
        });
        group.bench_with_input(BenchmarkId::new("server-message", name), &frame, |b, f| {
            b.iter(|| ServerMessage::parse(black_box(f)).is_ok())
        });
    }
    group.finish();
}

criterion_group!(benches, wire);
criterion_main!(benches);
