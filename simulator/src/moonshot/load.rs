//! Loads one node's share of the graph into a cluster-mode `presence_core::Engine` the way a
//! node does: every known user interned (owned users and the remote users its owned users
//! are friends with), owned users taken with `take_users`, and their friendships applied in
//! chunks as the partitioned generator produces them, a tick after each chunk (a node ticks
//! between the slots it loads, which keeps the engine's per-tick edge journal small).

use std::time::Instant;

use anyhow::{Context, Result, bail};
use presence_core::{Config, Engine, UserId};
use serde::Serialize;

use super::own::Ownership;
use super::partition::{self, PartitionStats};
use crate::graphgen::GraphParams;
use crate::util;

/// The loaded node and what loading it took.
pub struct LoadedNode {
    pub engine: Engine,
    /// Bit `u` set: remote user `u` has at least one friend owned here (its owner sends its
    /// changes to this node).
    pub needed: Vec<u64>,
    pub out: LoadOut,
}

/// Figures of the load.
#[derive(Debug, Clone, Serialize)]
pub struct LoadOut {
    pub users: u32,
    pub owned_users: u64,
    /// Remote users with at least one friend owned here: what this node mirrors.
    pub mirrored_users: u64,
    /// Users interned but with no friend here (neither owned nor mirrored).
    pub unused_users: u64,
    /// Friendships the node holds (both ends owned, or one).
    pub edges_held: u64,
    pub edges_both_owned: u64,
    pub owned_users_over_cap: u64,
    pub partition: PartitionStats,
    pub seconds: f64,
    pub rss_before: u64,
    pub rss_loaded: u64,
    pub footprint: crate::report::FootprintOut,
}

#[inline]
pub fn bit(bits: &[u64], u: u32) -> bool {
    bits[(u / 64) as usize] & (1 << (u % 64)) != 0
}

/// The node engine's configuration.
pub fn node_config(threads: usize, shards: usize, max_friends: u32) -> Result<Config> {
    let cfg = Config {
        cluster: true,
        threads,
        shards,
        // The partitioned generator cannot enforce graphgen's cap exactly (see
        // `partition`): leave room for the few users a little over it.
        max_friends: max_friends.saturating_mul(2),
        ..Config::default()
    };
    cfg.validate().context("engine configuration")?;
    Ok(cfg)
}

/// Builds the node: generates its share of the graph and loads it.
pub fn load(
    params: &GraphParams,
    own: &Ownership,
    cfg: Config,
    base: u64,
    mut on_chunk: impl FnMut(&[u64]),
) -> Result<LoadedNode> {
    let t0 = Instant::now();
    let rss_before = util::mem().rss;
    let engine = Engine::new(cfg, base).context("engine")?;
    let mut name = String::with_capacity(12);
    for id in 0..params.users {
        use std::fmt::Write;
        name.clear();
        let _ = write!(name, "u{id}");
        let uid = engine.intern(&name).context("interning a user")?;
        if uid != UserId(id) {
            bail!("user {name} got dense id {} (expected {id})", uid.0);
        }
    }
    let owned: Vec<UserId> = own.owned_list().into_iter().map(UserId).collect();
    engine
        .take_users(&owned, &[], base)
        .context("taking the owned users")?;
    drop(owned);
    let _ = engine.tick(base);
    let mut needed = vec![0u64; (params.users as usize).div_ceil(64)];
    let mut pairs = Vec::<(UserId, UserId)>::with_capacity(partition::CHUNK);
    let stats = partition::generate(params, own, |chunk| {
        on_chunk(&chunk);
        pairs.clear();
        for &e in &chunk {
            let (a, b) = ((e >> 32) as u32, e as u32);
            match (own.owned(a), own.owned(b)) {
                (true, true) => {}
                (true, false) => needed[(b / 64) as usize] |= 1 << (b % 64),
                (false, true) => needed[(a / 64) as usize] |= 1 << (a % 64),
                (false, false) => bail!("edge {a}-{b} has no owned end"),
            }
            pairs.push((UserId(a), UserId(b)));
        }
        engine
            .apply_friendships(&pairs, &[])
            .context("loading friendships")?;
        // Nothing is live yet: the batch only drains the edge journal.
        let _ = engine.tick(base);
        Ok(())
    })?;
    let fp = engine.footprint();
    let mirrored = needed
        .iter()
        .map(|w| u64::from(w.count_ones()))
        .sum::<u64>();
    let (mut over_cap, mut both_twice) = (0, 0u64);
    let cap = u64::from(params.max_friends);
    for u in (0..params.users).filter(|&u| own.owned(u)) {
        let friends = engine.friends(UserId(u));
        over_cap += u64::from(friends.len() as u64 > cap);
        both_twice += friends.iter().filter(|f| own.owned(f.0)).count() as u64;
    }
    let out = LoadOut {
        users: params.users,
        owned_users: own.owned_users,
        mirrored_users: mirrored,
        unused_users: u64::from(params.users) - own.owned_users - mirrored,
        edges_held: fp.edges,
        edges_both_owned: both_twice / 2,
        owned_users_over_cap: over_cap,
        partition: stats,
        seconds: t0.elapsed().as_secs_f64(),
        rss_before,
        rss_loaded: util::mem().rss,
        footprint: fp.into(),
    };
    Ok(LoadedNode {
        engine,
        needed,
        out,
    })
}
