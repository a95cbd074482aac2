//! The relay's own CPU for a send, the store out of the way: `Relay::send` into the pending
//! batch and, every 64 sends, the batch taken and marked committed (what the node's commit
//! thread does around the store's commit), so the relay's caches stay as a node's do. The
//! store is a real fjall folder that is never written: heads start at 0 and dedupe misses.
//!
//! ```sh
//! cargo bench -p chat-relay --bench relay_send
//! # before/after: --save-baseline before on one build, --baseline before on the other
//! ```
#![allow(clippy::unwrap_used, clippy::expect_used)] // a benchmark harness: fail loudly

mod common;

use std::sync::Arc;

use chat_relay::{FjallStore, IdGen, Limits, Relay, Target};
use common::{Everyone, TEXT};
use criterion::{Criterion, Throughput, criterion_group, criterion_main};

const USERS: u64 = 10_000;
const GROUP: usize = 50;

fn sends(c: &mut Criterion) {
    let tmp = common::tempdir();
    let store = Arc::new(FjallStore::open(tmp.path()).unwrap());
    let mut relay = Relay::new(store, IdGen::new(1).unwrap(), Limits::default()).unwrap();
    let users: Vec<String> = (0..USERS).map(|i| format!("user-{i}")).collect();
    let dir = Everyone {
        members: users[..GROUP].to_vec(),
    };
    let group = Target::Group("g".into());
    let mut rng = common::Rng(7);
    let mut client = 0u64;
    let mut now = 1_750_000_000_000u64;
    let mut g = c.benchmark_group("relay");
    g.throughput(Throughput::Elements(1));
    for to_group in [false, true] {
        let name = if to_group {
            "send_group_of_50"
        } else {
            "send_1to1"
        };
        g.bench_function(name, |b| {
            b.iter(|| {
                client += 1;
                now += 1;
                let a = (rng.next() % USERS) as usize;
                let cid = client.to_string();
                let target = if to_group {
                    group.clone()
                } else {
                    let to = (a as u64 + 1 + rng.next() % (USERS - 1)) % USERS;
                    Target::User(users[to as usize].clone())
                };
                let from = if to_group {
                    &users[a % GROUP]
                } else {
                    &users[a]
                };
                let sent = relay.send(now, from, &cid, &target, TEXT, &dir).unwrap();
                if client.is_multiple_of(64)
                    && let Some(batch) = relay.take_batch()
                {
                    relay.committed(batch.id);
                }
                sent
            })
        });
    }
    g.finish();
}

criterion_group!(benches, sends);
criterion_main!(benches);
