//! One node's share of a `graphgen` graph, generated without ever holding the whole graph.
//!
//! The method: `graphgen` already draws every edge from a generator derived from (seed,
//! community), and the per-user weights, the alias table and the layout are O(users), not
//! O(edges). So this runs the very same per-community edge process ([`graphgen`]'s phase 1,
//! same code, same streams) over every community, and keeps only the edges with at least one
//! end owned by the node, handing them on in chunks as they come. Both ends of an edge see
//! the same edge because each community's stream is a pure function of (seed, community): a
//! node never needs another node's state. Time is that of generating the whole graph's raw
//! edges (streamed, on all cores); memory is the node's share plus the O(users) tables.
//!
//! What differs from `graphgen`, and why:
//! - **Duplicates** are not removed globally: the engine ignores an edge it already holds, and
//!   each chunk is deduplicated before it goes in.
//! - **Top-up** (`graphgen` adds edges until the deduplicated count is within 0.05% of
//!   `users × mean / 2`): the count of duplicates is estimated from a node-independent sample
//!   of rows (rows whose smaller id hashes into 1/`SAMPLE_EVERY`), so every node computes the
//!   same deficit, then one round of top-up edges is drawn from `graphgen`'s own top-up stream
//!   and model (nearby or global, degree-weighted). `graphgen` skips an endpoint already at
//!   the friend cap there; this cannot know global degrees and does not (at a cap of 5,000
//!   and a mean of 130 the cap never binds in `graphgen` either: 0 edges dropped).
//! - **Cap**: `graphgen` drops edges past `max_friends`; here they are counted, not dropped.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Instant;

use anyhow::{Result, anyhow};
use serde::Serialize;

use super::own::Ownership;
use crate::graphgen::{
    self, GraphParams, Layout, SHARE_COMMUNITY, SHARE_NEARBY, STREAM_TOPUP, Scratch, Shared,
};
use crate::rng::{Alias, Rng, mix64};

/// One row in this many is kept whole to estimate the share of duplicate edges.
pub const SAMPLE_EVERY: u64 = 256;
/// Edges per chunk handed to the sink.
pub const CHUNK: usize = 1 << 18;
const SAMPLE_SALT: u64 = 0xD0B5_A3F1_7C2E_9B45;

/// What the partitioned generator did.
#[derive(Debug, Clone, Default, Serialize)]
pub struct PartitionStats {
    /// Edges drawn by the per-community process over the whole graph (with duplicates).
    pub raw_edges_total: u64,
    /// Of those, the ones with an owned end (before deduplication).
    pub raw_edges_kept: u64,
    /// Sampled rows' edges, and how many of them were distinct.
    pub sample_raw: u64,
    pub sample_distinct: u64,
    /// Estimated distinct edges of the whole graph before top-up.
    pub estimated_distinct: u64,
    /// `users × mean / 2`.
    pub target_edges: u64,
    /// Top-up edges drawn for the whole graph, and those with an owned end.
    pub topup_drawn: u64,
    pub topup_kept: u64,
    pub communities: usize,
    pub countries: usize,
    pub seconds: f64,
}

#[inline]
fn sampled_row(seed: u64, a: u32) -> bool {
    mix64(seed ^ SAMPLE_SALT ^ u64::from(a)).is_multiple_of(SAMPLE_EVERY)
}

/// The O(users) tables every node derives from the seed alone.
struct Tables {
    layout: Layout,
    w: Vec<f32>,
    prefix: Vec<f64>,
    alias: Alias,
}

fn tables(p: &GraphParams) -> Tables {
    let layout = Layout::new(p.users, p.seed);
    let w = graphgen::target_degrees(p.users, p.avg_friends, p.max_friends, p.seed);
    let alias = Alias::new(&w);
    let mut prefix = Vec::with_capacity(w.len() + 1);
    prefix.push(0.0f64);
    let mut acc = 0.0f64;
    for &x in &w {
        acc += f64::from(x);
        prefix.push(acc);
    }
    Tables {
        layout,
        w,
        prefix,
        alias,
    }
}

/// What each worker sends: a chunk of kept edges (packed, smaller id high), or at its end its
/// counts and sampled rows.
enum Msg {
    Chunk(Vec<u64>),
    Done { raw: u64, sample: Vec<u64> },
}

/// Generates the edges of `params`' graph with at least one end owned by `own.node` and
/// hands them to `sink` in chunks (packed `smaller << 32 | larger`, deduplicated within the
/// chunk, in no particular order across chunks).
pub fn generate(
    params: &GraphParams,
    own: &Ownership,
    mut sink: impl FnMut(Vec<u64>) -> Result<()>,
) -> Result<PartitionStats> {
    params.validate()?;
    if own.users() != params.users {
        return Err(anyhow!(
            "ownership is for {} users, the graph has {}",
            own.users(),
            params.users
        ));
    }
    let t0 = Instant::now();
    let tb = tables(params);
    let shared = Shared {
        layout: &tb.layout,
        w: &tb.w,
        prefix: &tb.prefix,
        alias: &tb.alias,
        seed: params.seed,
    };
    let communities = tb.layout.communities();
    let next = AtomicUsize::new(0);
    let (tx, rx) = mpsc::sync_channel::<Msg>(2 * params.threads);
    let mut stats = PartitionStats {
        communities,
        countries: tb.layout.countries(),
        target_edges: (f64::from(params.users) * params.avg_friends / 2.0).round() as u64,
        ..PartitionStats::default()
    };
    let mut sample: Vec<u64> = Vec::new();
    let seed = params.seed;
    std::thread::scope(|scope| -> Result<()> {
        for _ in 0..params.threads {
            let tx = tx.clone();
            let (shared, next) = (&shared, &next);
            scope.spawn(move || {
                let mut sc = Scratch::default();
                let mut buf: Vec<u64> = Vec::new();
                let mut kept: Vec<u64> = Vec::with_capacity(CHUNK);
                let mut sample = Vec::new();
                let mut raw = 0u64;
                loop {
                    let c = next.fetch_add(1, Ordering::Relaxed);
                    if c >= communities {
                        break;
                    }
                    buf.clear();
                    graphgen::community_edges(shared, c, &mut sc, &mut buf);
                    raw += buf.len() as u64;
                    for &e in &buf {
                        let (a, b) = ((e >> 32) as u32, e as u32);
                        if own.owned(a) || own.owned(b) {
                            kept.push(e);
                        }
                        if sampled_row(seed, a) {
                            sample.push(e);
                        }
                    }
                    if kept.len() >= CHUNK {
                        let full = std::mem::replace(&mut kept, Vec::with_capacity(CHUNK));
                        if tx.send(Msg::Chunk(full)).is_err() {
                            return;
                        }
                    }
                }
                if !kept.is_empty() && tx.send(Msg::Chunk(kept)).is_err() {
                    return;
                }
                let _ = tx.send(Msg::Done { raw, sample });
            });
        }
        drop(tx);
        // The workers stop when the receiver goes: an error from the sink ends them too.
        for msg in rx {
            match msg {
                Msg::Chunk(mut chunk) => {
                    stats.raw_edges_kept += chunk.len() as u64;
                    chunk.sort_unstable();
                    chunk.dedup();
                    sink(chunk)?;
                }
                Msg::Done { raw, sample: s } => {
                    stats.raw_edges_total += raw;
                    sample.extend_from_slice(&s);
                }
            }
        }
        Ok(())
    })?;
    stats.sample_raw = sample.len() as u64;
    sample.sort_unstable();
    sample.dedup();
    stats.sample_distinct = sample.len() as u64;
    drop(sample);
    let dup_share = if stats.sample_raw > 0 {
        1.0 - stats.sample_distinct as f64 / stats.sample_raw as f64
    } else {
        0.0
    };
    stats.estimated_distinct = (stats.raw_edges_total as f64 * (1.0 - dup_share)).round() as u64;
    topup(params, own, &tb, dup_share, &mut stats, &mut sink)?;
    stats.seconds = t0.elapsed().as_secs_f64();
    Ok(stats)
}

/// One round of `graphgen`'s top-up draws (same stream, same model), sized to the estimated
/// deficit plus the round's own expected duplicates; keeps those with an owned end.
fn topup(
    params: &GraphParams,
    own: &Ownership,
    tb: &Tables,
    dup_share: f64,
    stats: &mut PartitionStats,
    sink: &mut impl FnMut(Vec<u64>) -> Result<()>,
) -> Result<()> {
    if stats.estimated_distinct + stats.target_edges / 2000 >= stats.target_edges {
        return Ok(());
    }
    let deficit = stats.target_edges - stats.estimated_distinct;
    let draws = (deficit as f64 / (1.0 - dup_share).max(0.5)).round() as u64;
    let nearby_share = SHARE_NEARBY / (1.0 - SHARE_COMMUNITY);
    let mut rng = Rng::derive(params.seed, STREAM_TOPUP, 0);
    let mut kept: Vec<u64> = Vec::with_capacity(CHUNK);
    let mut drawn = 0u64;
    while drawn < draws {
        let a = tb.alias.sample(&mut rng);
        let b = if rng.chance(nearby_share) {
            let c2 = tb.layout.nearby(tb.layout.community_of(a), &mut rng);
            let (lo, hi) = tb.layout.community_range(c2);
            graphgen::sample_prefix(&tb.prefix, lo as usize, hi as usize, &mut rng) as u32
        } else {
            tb.alias.sample(&mut rng)
        };
        if a == b {
            continue;
        }
        drawn += 1;
        if own.owned(a) || own.owned(b) {
            kept.push(graphgen::pack(a, b));
            if kept.len() >= CHUNK {
                stats.topup_kept += kept.len() as u64;
                let mut full = std::mem::replace(&mut kept, Vec::with_capacity(CHUNK));
                full.sort_unstable();
                full.dedup();
                sink(full)?;
            }
        }
    }
    stats.topup_drawn = drawn;
    stats.topup_kept += kept.len() as u64;
    if !kept.is_empty() {
        kept.sort_unstable();
        kept.dedup();
        sink(kept)?;
    }
    Ok(())
}
