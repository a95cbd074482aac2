//! `simulator moonshot`: one node of an N-node cluster run for real on its share of a
//! Facebook-shaped graph too big for one machine, to say what a node of the cluster would
//! need (memory, tick time, peer bytes, CPU) and whether N machines like this one carry it.
//!
//! - [`own`]: slots and owners, by the cluster's own hash and assignment.
//! - [`partition`]: the node's share of a `graphgen` graph without the whole graph.
//! - [`load`]: that share into a cluster-mode engine, as a node loads its slots.
//! - [`run`]: the node's tick loop against the activity model, with the other nodes played
//!   by a second engine, and the peer frames both ways.
//! - [`peer`]: the frames, encoded with `presence-peer`.
//! - [`verdict`]: the report, the projection to the target size, and the verdict.

pub mod drive;
pub mod load;
pub mod own;
pub mod partition;
pub mod peer;
pub mod run;
pub mod verdict;

use anyhow::{Result, bail};
use presence_core::Config;
use serde::Serialize;

use crate::graphgen::GraphParams;
use crate::replay::EPOCH_MS;
use crate::util;

/// Everything `simulator moonshot` takes.
#[derive(Debug, Clone, Serialize)]
pub struct MoonParams {
    pub graph: GraphParams,
    pub nodes: u8,
    pub node: u8,
    pub run: run::RunParams,
    pub threads: usize,
    pub shards: usize,
    /// Stop before the replay once the node is loaded (memory figures only).
    pub load_only: bool,
    pub progress: bool,
    pub projection: verdict::Projection,
}

impl MoonParams {
    pub fn validate(&self) -> Result<()> {
        self.graph.validate()?;
        if self.nodes == 0 || self.node >= self.nodes {
            bail!(
                "--node must be below --nodes (got {} of {})",
                self.node,
                self.nodes
            );
        }
        let r = &self.run;
        if r.tick_ms == 0 || r.duration_ms < r.tick_ms {
            bail!("--tick must be positive and no longer than --duration");
        }
        if !(r.peak_online > 0.0 && r.peak_online <= 1.0) {
            bail!("--peak-online must be in (0, 1], got {}", r.peak_online);
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        Ok(())
    }
}

/// The whole report.
#[derive(Debug, Clone, Serialize)]
pub struct MoonReport {
    pub params: MoonParams,
    pub slots_owned: usize,
    pub load: load::LoadOut,
    pub run: Option<run::RunOut>,
    pub projection: Option<verdict::Projected>,
    pub total_seconds: f64,
}

/// Runs it all.
pub fn main(p: &MoonParams) -> Result<MoonReport> {
    p.validate()?;
    let t0 = std::time::Instant::now();
    let base = EPOCH_MS + (p.run.start_hour * 3_600_000.0) as u64;
    tracing::info!(
        users = p.graph.users,
        nodes = p.nodes,
        node = p.node,
        "ownership"
    );
    let own = own::Ownership::new(p.graph.users, p.nodes, p.node)?;
    let slots_owned = own.slots_of(p.node);
    tracing::info!(
        owned = own.owned_users,
        slots = slots_owned,
        "generating and loading the node's share"
    );
    let cfg = load::node_config(p.threads, p.shards, p.graph.max_friends)?;
    let sp = p
        .progress
        .then(|| util::spinner("generating and loading the node's share of the graph"));
    let loaded = load::load(&p.graph, &own, cfg, base, |_| {})?;
    if let Some(sp) = sp {
        sp.finish_and_clear();
    }
    tracing::info!(
        edges = loaded.out.edges_held,
        mirrored = loaded.out.mirrored_users,
        secs = loaded.out.seconds,
        rss_gib = util::gib(loaded.out.rss_loaded),
        "node loaded"
    );
    let run = if p.load_only {
        None
    } else {
        let remote_cfg = Config {
            threads: 1,
            shards: p.shards,
            ..Config::default()
        };
        Some(run::run(
            &p.run,
            &loaded.engine,
            &own,
            &loaded.needed,
            base,
            remote_cfg,
            p.progress,
        )?)
    };
    let projection = run
        .as_ref()
        .map(|r| verdict::project(&p.projection, p, &loaded.out, r));
    Ok(MoonReport {
        params: p.clone(),
        slots_owned,
        load: loaded.out,
        run,
        projection,
        total_seconds: t0.elapsed().as_secs_f64(),
    })
}
