//! Synthetic friend graphs with the shape of a real social network.
//!
//! The model, in the order it runs:
//!
//! 1. **Layout.** Users are split into *countries* with Zipf-like sizes, and each country into
//!    *communities* (a town, a school, a workplace) of log-normal size around 180 people.
//!    Both are contiguous id ranges, so friends cluster in id space (which is what makes the
//!    engine's roaring bitmaps pay) and the layout is cheap to store.
//! 2. **Degrees.** Every user gets a target degree from a log-normal distribution (heavy right
//!    tail; with the default mean of 130 its median is about 99, as on Facebook), capped at
//!    `max_friends`.
//! 3. **Edges, one community at a time.** A user's target splits into a *local* part (friends
//!    inside its own community; at most half the community), a *nearby* part (other
//!    communities of the same country, a few community indexes away) and a *global* part
//!    (anyone, proportional to degree). Each user initiates half of each part (its friends
//!    initiate the other half). Local edges are made first at random (Chung–Lu style, target
//!    chosen proportionally to its local weight), then a share of them by *triadic closure*
//!    (a friend of a friend), which with the community density gives the ~14% clustering of
//!    a median user. Local edges are deduplicated exactly inside the community (sorted
//!    per-member vectors); nearby and global edges go to the edge list as they are.
//! 4. **CSR.** The edge list (packed `u64` pairs, smaller id first, in 32 MB chunks that are
//!    freed as they are consumed) is counted and scattered straight into the *upper* CSR the
//!    snapshot stores (friends of larger id per user), each row sorted and deduplicated.
//! 5. **Cap and mean.** Edges past the friend cap are dropped, then rounds of top-up edges
//!    (same nearby/global mix, endpoints under the cap) are merged into the CSR in place until
//!    the edge count is within 0.05% of `users × mean / 2`.
//!
//! Every random choice comes from a generator derived from (seed, phase, community): the work
//! is split over threads, and the output is the same bytes whatever the thread count.

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use anyhow::{Result, bail};
use indicatif::ProgressBar;
use presence_core::snapshot::GraphSnapshot;
use serde::Serialize;

use crate::rng::{Alias, Rng};

/// Shape of the degree distribution: log-normal sigma. With mean 130 the median is ~99.
pub const DEGREE_SIGMA: f64 = 0.82;
/// Share of a user's target degree meant for its own community.
pub const SHARE_COMMUNITY: f64 = 0.50;
/// Share meant for nearby communities of the same country (the rest is global).
pub const SHARE_NEARBY: f64 = 0.35;
/// Share of local edges made by triadic closure.
pub const CLOSURE: f64 = 0.45;
/// Median community size, and its log-normal sigma and bounds.
pub const COMMUNITY_MEDIAN: f64 = 180.0;
pub const COMMUNITY_SIGMA: f64 = 0.6;
pub const COMMUNITY_MIN: u32 = 20;
pub const COMMUNITY_MAX: u32 = 3000;
/// Largest snapshot the generator will write. presence-core's snapshots use 64-bit relative
/// pointers, so this is only a guard against absurd sizes (1 TiB), checked before serialising.
pub const SNAPSHOT_LIMIT_BYTES: u64 = 1 << 40;
/// One country per this many users (at least one, at most 200).
pub const USERS_PER_COUNTRY: u32 = 50_000;

const STREAM_LAYOUT: u64 = 1;
const STREAM_WEIGHTS: u64 = 2;
const STREAM_COMMUNITY: u64 = 3;
pub(crate) const STREAM_TOPUP: u64 = 4;
const STREAM_SAMPLE: u64 = 5;

const CHUNK_EDGES: usize = 4 << 20;

/// What to generate.
#[derive(Debug, Clone, Serialize)]
pub struct GraphParams {
    pub users: u32,
    pub avg_friends: f64,
    pub max_friends: u32,
    pub seed: u64,
    /// Worker threads (the output does not depend on it).
    pub threads: usize,
}

impl GraphParams {
    pub fn validate(&self) -> Result<()> {
        if self.users < 2 {
            bail!("--users must be at least 2 (got {})", self.users);
        }
        if !(self.avg_friends.is_finite() && self.avg_friends > 0.0) {
            bail!(
                "--avg-friends must be a positive number (got {})",
                self.avg_friends
            );
        }
        if self.max_friends == 0 {
            bail!("--max-friends must be at least 1");
        }
        if self.avg_friends > f64::from(self.max_friends) {
            bail!(
                "--avg-friends {} is above the friend cap --max-friends {}: no graph can have that mean",
                self.avg_friends,
                self.max_friends
            );
        }
        if self.avg_friends > f64::from(self.max_friends) * 0.5 {
            bail!(
                "--avg-friends {} is more than half the cap {}: a heavy-tailed degree distribution cannot reach it (raise --max-friends)",
                self.avg_friends,
                self.max_friends
            );
        }
        let limit = f64::from(self.users - 1) / 4.0;
        if self.avg_friends > limit {
            bail!(
                "--avg-friends {} is too dense for {} users (at most (users - 1) / 4 = {:.1}); add users or lower the mean",
                self.avg_friends,
                self.users,
                limit
            );
        }
        if self.threads == 0 {
            bail!("--threads must be at least 1");
        }
        Ok(())
    }
}

/// Countries and communities as contiguous id ranges.
#[derive(Debug, Clone)]
pub struct Layout {
    /// `community_start[c]..community_start[c + 1]` are the members of community `c`.
    pub community_start: Vec<u32>,
    /// Country of each community.
    pub community_country: Vec<u32>,
    /// `country_first[k]..country_first[k + 1]` are the communities of country `k`.
    pub country_first: Vec<u32>,
}

impl Layout {
    pub fn new(users: u32, seed: u64) -> Self {
        let mut rng = Rng::derive(seed, STREAM_LAYOUT, 0);
        let countries = (users / USERS_PER_COUNTRY).clamp(1, 200);
        // Zipf-like country sizes (exponent 1, with an offset so the largest is not absurd).
        let weights: Vec<f64> = (0..countries).map(|i| 1.0 / (f64::from(i) + 1.5)).collect();
        let total: f64 = weights.iter().sum();
        let mut sizes: Vec<u32> = weights
            .iter()
            .map(|w| ((f64::from(users) * w / total).floor() as u32).max(1))
            .collect();
        let assigned: u64 = sizes.iter().map(|&s| u64::from(s)).sum();
        if assigned <= u64::from(users) {
            sizes[0] += users - assigned as u32;
        } else {
            // Only possible with more countries than users can fill: fold into one.
            sizes = vec![users];
        }
        let mut community_start = vec![0u32];
        let mut community_country = Vec::new();
        let mut country_first = vec![0u32];
        let mut at = 0u32;
        for (k, &size) in sizes.iter().enumerate() {
            let end = at + size;
            while at < end {
                let left = end - at;
                let want = (rng.lognormal(COMMUNITY_MEDIAN, COMMUNITY_SIGMA).round() as u32)
                    .clamp(COMMUNITY_MIN, COMMUNITY_MAX);
                let take = if left < want + COMMUNITY_MIN {
                    left
                } else {
                    want
                };
                at += take;
                community_start.push(at);
                community_country.push(k as u32);
            }
            country_first.push(community_country.len() as u32);
        }
        Self {
            community_start,
            community_country,
            country_first,
        }
    }

    pub fn communities(&self) -> usize {
        self.community_country.len()
    }

    pub fn countries(&self) -> usize {
        self.country_first.len() - 1
    }

    pub fn community_range(&self, c: usize) -> (u32, u32) {
        (self.community_start[c], self.community_start[c + 1])
    }

    /// The community of a user (binary search).
    pub fn community_of(&self, user: u32) -> usize {
        self.community_start.partition_point(|&s| s <= user) - 1
    }

    /// Community id of every user.
    pub fn user_communities(&self) -> Vec<u32> {
        let mut out = Vec::with_capacity(*self.community_start.last().unwrap_or(&0) as usize);
        for c in 0..self.communities() {
            let (s, e) = self.community_range(c);
            out.extend(std::iter::repeat_n(c as u32, (e - s) as usize));
        }
        out
    }

    /// A community of the same country a few indexes away (the community itself if it is
    /// alone in its country).
    pub fn nearby(&self, c: usize, rng: &mut Rng) -> usize {
        let k = self.community_country[c] as usize;
        let (lo, hi) = (
            self.country_first[k] as usize,
            self.country_first[k + 1] as usize,
        );
        if hi - lo <= 1 {
            return c;
        }
        let g = 1 + rng.geometric(0.35) as usize;
        let up = rng.chance(0.5);
        let candidates = [
            if up {
                c.checked_add(g)
            } else {
                c.checked_sub(g)
            },
            if up {
                c.checked_sub(g)
            } else {
                c.checked_add(g)
            },
        ];
        for cand in candidates.into_iter().flatten() {
            if cand >= lo && cand < hi {
                return cand;
            }
        }
        let other = lo + rng.below((hi - lo - 1) as u64) as usize;
        if other >= c { other + 1 } else { other }
    }
}

/// Target degrees: log-normal with sigma [`DEGREE_SIGMA`], clamped to [1, cap], with the
/// location calibrated so the clamped mean is `avg`.
pub fn target_degrees(users: u32, avg: f64, cap: u32, seed: u64) -> Vec<f32> {
    let mut rng = Rng::derive(seed, STREAM_WEIGHTS, 0);
    let z: Vec<f32> = (0..users).map(|_| rng.normal() as f32).collect();
    let cap = f64::from(cap);
    let sample = &z[..z.len().min(400_000)];
    let mean_at = |mu: f64| -> f64 {
        sample
            .iter()
            .map(|&z| (mu + DEGREE_SIGMA * f64::from(z)).exp().clamp(1.0, cap))
            .sum::<f64>()
            / sample.len() as f64
    };
    let (mut lo, mut hi) = (-5.0f64, cap.ln() + 5.0);
    for _ in 0..60 {
        let mid = 0.5 * (lo + hi);
        if mean_at(mid) < avg {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    let mu = 0.5 * (lo + hi);
    z.iter()
        .map(|&z| (mu + DEGREE_SIGMA * f64::from(z)).exp().clamp(1.0, cap) as f32)
        .collect()
}

/// The generated graph as an upper CSR, with what the statistics need.
#[derive(Debug)]
pub struct Generated {
    pub params: GraphParams,
    pub layout: Layout,
    /// `upper[offsets[a]..offsets[a + 1]]`: friends of `a` with a larger id, ascending.
    pub offsets: Vec<u64>,
    pub upper: Vec<u32>,
    /// Full degree of every user.
    pub degrees: Vec<u32>,
    /// Edges dropped to respect the cap, and added by top-up rounds.
    pub capped_edges: u64,
    pub topup_edges: u64,
    pub topup_rounds: u32,
    pub seconds: f64,
}

impl Generated {
    pub fn users(&self) -> u32 {
        self.params.users
    }

    pub fn edges(&self) -> u64 {
        self.upper.len() as u64
    }

    pub fn row(&self, a: u32) -> &[u32] {
        &self.upper[self.offsets[a as usize] as usize..self.offsets[a as usize + 1] as usize]
    }

    pub fn are_friends(&self, a: u32, b: u32) -> bool {
        let (x, y) = (a.min(b), a.max(b));
        x != y && self.row(x).binary_search(&y).is_ok()
    }

    /// The app id of a dense id in generated graphs.
    pub fn name(id: u32) -> String {
        format!("u{id}")
    }

    /// Bytes the presence-core snapshot of this graph takes (names, name ends, offsets,
    /// friends, plus a little for the root).
    pub fn snapshot_size_estimate(&self) -> u64 {
        let users = u64::from(self.params.users);
        let digits: u64 = (0..self.params.users)
            .map(|id| 1 + u64::from(id.checked_ilog10().unwrap_or(0) + 1))
            .sum();
        digits + 8 * users + 8 * (users + 1) + 4 * self.edges() + 256
    }

    /// Moves the graph into a presence-core snapshot (no copy of the edge arrays).
    pub fn into_snapshot(self) -> GraphSnapshot {
        let users = self.params.users;
        let mut snap = GraphSnapshot::new();
        let mut names = String::with_capacity(users as usize * 8);
        let mut ends = Vec::with_capacity(users as usize);
        for id in 0..users {
            use std::fmt::Write;
            let _ = write!(names, "u{id}");
            ends.push(names.len() as u64);
        }
        snap.names = names;
        snap.name_ends = ends;
        snap.upper_offsets = self.offsets;
        snap.upper = self.upper;
        snap
    }
}

/// Everything the per-community workers read.
pub(crate) struct Shared<'a> {
    pub(crate) layout: &'a Layout,
    pub(crate) w: &'a [f32],
    pub(crate) prefix: &'a [f64],
    pub(crate) alias: &'a Alias,
    pub(crate) seed: u64,
}

/// Samples an index in `lo..hi` proportionally to the weights behind `prefix`.
pub(crate) fn sample_prefix(prefix: &[f64], lo: usize, hi: usize, rng: &mut Rng) -> usize {
    let (a, b) = (prefix[lo], prefix[hi]);
    if b <= a {
        return lo + rng.below((hi - lo) as u64) as usize;
    }
    let x = a + rng.f64() * (b - a);
    let i = lo + prefix[lo + 1..=hi].partition_point(|&p| p <= x);
    i.min(hi - 1)
}

/// Per-worker scratch space, reused across communities.
#[derive(Default)]
pub(crate) struct Scratch {
    adj: Vec<Vec<u32>>,
    loc: Vec<f64>,
    cum: Vec<f64>,
    closures: Vec<u32>,
}

fn insert_edge(adj: &mut [Vec<u32>], i: usize, j: usize) -> bool {
    match adj[i].binary_search(&(j as u32)) {
        Ok(_) => false,
        Err(p) => {
            adj[i].insert(p, j as u32);
            if let Err(q) = adj[j].binary_search(&(i as u32)) {
                adj[j].insert(q, i as u32);
            }
            true
        }
    }
}

fn random_local(adj: &mut [Vec<u32>], cum: &[f64], i: usize, rng: &mut Rng) -> bool {
    for _ in 0..6 {
        let j = sample_prefix(cum, 0, cum.len() - 1, rng);
        if j != i && insert_edge(adj, i, j) {
            return true;
        }
    }
    false
}

/// Generates the edges initiated inside community `c` and appends them to `out`.
pub(crate) fn community_edges(sh: &Shared<'_>, c: usize, sc: &mut Scratch, out: &mut Vec<u64>) {
    let (s, e) = sh.layout.community_range(c);
    let n = (e - s) as usize;
    let mut rng = Rng::derive(sh.seed, STREAM_COMMUNITY, c as u64);
    let local_cap = 0.5 * (n as f64 - 1.0);
    sc.loc.clear();
    sc.cum.clear();
    sc.cum.push(0.0);
    for i in 0..n {
        let w = f64::from(sh.w[s as usize + i]);
        let loc = (SHARE_COMMUNITY * w).min(local_cap).max(0.0);
        sc.loc.push(loc);
        let last = sc.cum[i];
        sc.cum.push(last + loc);
    }
    // Local edges: random first, then triadic closure.
    if n >= 2 && sc.cum[n] > 0.0 {
        if sc.adj.len() < n {
            sc.adj.resize_with(n, Vec::new);
        }
        for a in &mut sc.adj[..n] {
            a.clear();
        }
        sc.closures.clear();
        sc.closures.resize(n, 0);
        let adj = &mut sc.adj[..n];
        for i in 0..n {
            let k = rng.stoch_round(sc.loc[i] / 2.0);
            for _ in 0..k {
                if rng.chance(CLOSURE) {
                    sc.closures[i] += 1;
                } else {
                    random_local(adj, &sc.cum, i, &mut rng);
                }
            }
        }
        for i in 0..n {
            for _ in 0..sc.closures[i] {
                let mut done = false;
                for _ in 0..6 {
                    if adj[i].is_empty() {
                        break;
                    }
                    let v = adj[i][rng.below(adj[i].len() as u64) as usize] as usize;
                    let u = adj[v][rng.below(adj[v].len() as u64) as usize] as usize;
                    if u != i && insert_edge(adj, i, u) {
                        done = true;
                        break;
                    }
                }
                if !done {
                    random_local(adj, &sc.cum, i, &mut rng);
                }
            }
        }
        for (i, row) in adj.iter().enumerate() {
            let a = u64::from(s) + i as u64;
            for &j in row.iter().filter(|&&j| j as usize > i) {
                out.push((a << 32) | (u64::from(s) + u64::from(j)));
            }
        }
    }
    // Nearby and global edges.
    let nearby_share = SHARE_NEARBY / (1.0 - SHARE_COMMUNITY);
    for i in 0..n {
        let g = s + i as u32;
        let rest = (f64::from(sh.w[g as usize]) - sc.loc[i]).max(0.0);
        let nb = rng.stoch_round(rest * nearby_share / 2.0);
        for _ in 0..nb {
            let c2 = sh.layout.nearby(c, &mut rng);
            let (lo, hi) = sh.layout.community_range(c2);
            let t = sample_prefix(sh.prefix, lo as usize, hi as usize, &mut rng) as u32;
            if t != g {
                out.push(pack(g, t));
            }
        }
        let gl = rng.stoch_round(rest * (1.0 - nearby_share) / 2.0);
        for _ in 0..gl {
            let t = sh.alias.sample(&mut rng);
            if t != g {
                out.push(pack(g, t));
            }
        }
    }
}

#[inline]
pub(crate) fn pack(a: u32, b: u32) -> u64 {
    (u64::from(a.min(b)) << 32) | u64::from(a.max(b))
}

/// Builds the upper CSR from edge chunks (consumed and freed as it goes); rows sorted and
/// deduplicated.
fn build_csr(users: u32, mut chunks: Vec<Vec<u64>>, threads: usize) -> (Vec<u64>, Vec<u32>) {
    let n = users as usize;
    let mut offsets = vec![0u64; n + 1];
    for ch in &chunks {
        for &e in ch {
            offsets[(e >> 32) as usize + 1] += 1;
        }
    }
    for i in 0..n {
        offsets[i + 1] += offsets[i];
    }
    let total = offsets[n] as usize;
    let mut upper = vec![0u32; total];
    let mut pos: Vec<u64> = offsets[..n].to_vec();
    while let Some(ch) = chunks.pop() {
        for &e in &ch {
            let a = (e >> 32) as usize;
            upper[pos[a] as usize] = e as u32;
            pos[a] += 1;
        }
    }
    drop(pos);
    // Sort and deduplicate each row in place (in parallel over row ranges), then compact.
    let mut lens = vec![0u32; n];
    {
        let threads = threads.max(1);
        let per = total.div_ceil(threads).max(1);
        let mut bounds = vec![0usize];
        for t in 1..threads {
            let at = offsets.partition_point(|&o| (o as usize) < t * per).min(n);
            bounds.push(at.max(*bounds.last().unwrap_or(&0)));
        }
        bounds.push(n);
        std::thread::scope(|scope| {
            let mut rest_upper: &mut [u32] = &mut upper;
            let mut rest_lens: &mut [u32] = &mut lens;
            let mut consumed = 0usize;
            for w in bounds.windows(2) {
                let (r0, r1) = (w[0], w[1]);
                let elems = (offsets[r1] - offsets[r0]) as usize;
                let (mine, tail) = std::mem::take(&mut rest_upper).split_at_mut(elems);
                rest_upper = tail;
                let (my_lens, tail_lens) = std::mem::take(&mut rest_lens).split_at_mut(r1 - r0);
                rest_lens = tail_lens;
                let offs = &offsets;
                let base = consumed;
                consumed += elems;
                scope.spawn(move || {
                    for (k, r) in (r0..r1).enumerate() {
                        let lo = offs[r] as usize - base;
                        let hi = offs[r + 1] as usize - base;
                        let row = &mut mine[lo..hi];
                        row.sort_unstable();
                        let mut w = 0;
                        for i in 0..row.len() {
                            if i == 0 || row[i] != row[w - 1] {
                                row[w] = row[i];
                                w += 1;
                            }
                        }
                        my_lens[k] = w as u32;
                    }
                });
            }
        });
    }
    let mut w = 0usize;
    for r in 0..n {
        let lo = offsets[r] as usize;
        let len = lens[r] as usize;
        upper.copy_within(lo..lo + len, w);
        offsets[r] = w as u64;
        w += len;
    }
    offsets[n] = w as u64;
    upper.truncate(w);
    upper.shrink_to_fit();
    (offsets, upper)
}

fn degrees_of(users: u32, offsets: &[u64], upper: &[u32]) -> Vec<u32> {
    let mut deg = vec![0u32; users as usize];
    for a in 0..users as usize {
        let (lo, hi) = (offsets[a] as usize, offsets[a + 1] as usize);
        deg[a] += (hi - lo) as u32;
        for &b in &upper[lo..hi] {
            deg[b as usize] += 1;
        }
    }
    deg
}

/// Drops edges of users over the cap (greedily, in row order). Returns the number dropped.
fn enforce_cap(cap: u32, offsets: &mut [u64], upper: &mut Vec<u32>) -> u64 {
    let n = offsets.len() - 1;
    let mut kept = vec![0u32; n];
    let mut w = 0usize;
    let mut lo = offsets[0] as usize;
    for a in 0..n {
        let hi = offsets[a + 1] as usize;
        offsets[a] = w as u64;
        for r in lo..hi {
            let b = upper[r] as usize;
            if kept[a] < cap && kept[b] < cap {
                upper[w] = b as u32;
                w += 1;
                kept[a] += 1;
                kept[b] += 1;
            }
        }
        lo = hi;
    }
    let dropped = (upper.len() - w) as u64;
    offsets[n] = w as u64;
    upper.truncate(w);
    dropped
}

/// Merges sorted, deduplicated extra edges (packed, smaller id first) into the CSR in place.
/// Returns how many were new.
pub fn merge_extra(offsets: &mut [u64], upper: &mut Vec<u32>, extra: &[u64]) -> u64 {
    let n = offsets.len() - 1;
    let mut new_off = vec![0u64; n + 1];
    let mut k = 0usize;
    for a in 0..n {
        let row = &upper[offsets[a] as usize..offsets[a + 1] as usize];
        let mut added = 0u64;
        while k < extra.len() && (extra[k] >> 32) as usize == a {
            if row.binary_search(&(extra[k] as u32)).is_err() {
                added += 1;
            }
            k += 1;
        }
        new_off[a + 1] = new_off[a] + row.len() as u64 + added;
    }
    let old_total = upper.len() as u64;
    let new_total = new_off[n];
    upper.resize(new_total as usize, 0);
    let mut j_end = extra.len();
    for a in (0..n).rev() {
        let mut j = j_end;
        while j > 0 && (extra[j - 1] >> 32) as usize == a {
            j -= 1;
        }
        let ex = &extra[j..j_end];
        j_end = j;
        let (lo, mut i) = (offsets[a] as usize, offsets[a + 1] as usize);
        let mut x = ex.len();
        let mut w = new_off[a + 1] as usize;
        let start = new_off[a] as usize;
        while w > start {
            let old = (i > lo).then(|| upper[i - 1]);
            let new = (x > 0).then(|| ex[x - 1] as u32);
            let v = match (old, new) {
                (Some(o), Some(e)) if o == e => {
                    i -= 1;
                    x -= 1;
                    o
                }
                (Some(o), Some(e)) if o > e => {
                    i -= 1;
                    o
                }
                (_, Some(e)) => {
                    x -= 1;
                    e
                }
                (Some(o), None) => {
                    i -= 1;
                    o
                }
                (None, None) => break,
            };
            w -= 1;
            upper[w] = v;
        }
    }
    offsets.copy_from_slice(&new_off);
    new_total - old_total
}

/// Generates the graph.
pub fn generate(params: &GraphParams, progress: bool) -> Result<Generated> {
    params.validate()?;
    let t0 = Instant::now();
    let users = params.users;
    let n = users as usize;
    let cap = params.max_friends;
    let layout = Layout::new(users, params.seed);
    tracing::info!(
        users,
        countries = layout.countries(),
        communities = layout.communities(),
        "layout"
    );
    let w = target_degrees(users, params.avg_friends, cap, params.seed);
    let alias = Alias::new(&w);
    let mut prefix = Vec::with_capacity(n + 1);
    prefix.push(0.0f64);
    let mut acc = 0.0f64;
    for &x in &w {
        acc += f64::from(x);
        prefix.push(acc);
    }
    let shared = Shared {
        layout: &layout,
        w: &w,
        prefix: &prefix,
        alias: &alias,
        seed: params.seed,
    };

    // Phase 1: edges per community, over worker threads.
    let communities = layout.communities();
    let pb = if progress {
        crate::util::bar(communities as u64, "edges by community")
    } else {
        ProgressBar::hidden()
    };
    let next = AtomicUsize::new(0);
    let chunks: Mutex<Vec<Vec<u64>>> = Mutex::new(Vec::new());
    const BATCH: usize = 64;
    std::thread::scope(|scope| {
        for _ in 0..params.threads {
            scope.spawn(|| {
                let mut sc = Scratch::default();
                let mut buf: Vec<u64> = Vec::with_capacity(CHUNK_EDGES);
                loop {
                    let first = next.fetch_add(BATCH, Ordering::Relaxed);
                    if first >= communities {
                        break;
                    }
                    let last = (first + BATCH).min(communities);
                    for c in first..last {
                        community_edges(&shared, c, &mut sc, &mut buf);
                        if buf.len() >= CHUNK_EDGES - 100_000 {
                            let full = std::mem::replace(&mut buf, Vec::with_capacity(CHUNK_EDGES));
                            if let Ok(mut g) = chunks.lock() {
                                g.push(full);
                            }
                        }
                    }
                    pb.inc((last - first) as u64);
                }
                if !buf.is_empty() {
                    buf.shrink_to_fit();
                    if let Ok(mut g) = chunks.lock() {
                        g.push(buf);
                    }
                }
            });
        }
    });
    pb.finish_and_clear();
    let chunks = chunks
        .into_inner()
        .map_err(|_| anyhow::anyhow!("an edge worker panicked"))?;
    let raw: u64 = chunks.iter().map(|c| c.len() as u64).sum();
    tracing::info!(
        raw_edges = raw,
        secs = t0.elapsed().as_secs_f64(),
        "edges generated"
    );

    // Phase 2: CSR.
    let sp = if progress {
        crate::util::spinner("building CSR (count, scatter, sort, dedup)")
    } else {
        ProgressBar::hidden()
    };
    let (mut offsets, mut upper) = build_csr(users, chunks, params.threads);
    sp.finish_and_clear();
    tracing::info!(
        edges = upper.len(),
        secs = t0.elapsed().as_secs_f64(),
        "csr built"
    );

    // Phase 3: cap, then top up to the mean.
    let sp = if progress {
        crate::util::spinner("friend cap and top-up to the mean")
    } else {
        ProgressBar::hidden()
    };
    let mut degrees = degrees_of(users, &offsets, &upper);
    let mut capped = 0;
    if degrees.iter().any(|&d| d > cap) {
        capped = enforce_cap(cap, &mut offsets, &mut upper);
        degrees = degrees_of(users, &offsets, &upper);
        tracing::info!(dropped = capped, "edges over the friend cap dropped");
    }
    let target = (f64::from(users) * params.avg_friends / 2.0).round() as u64;
    let mut topup = 0u64;
    let mut rounds = 0u32;
    let nearby_share = SHARE_NEARBY / (1.0 - SHARE_COMMUNITY);
    while (upper.len() as u64) + target / 2000 < target && rounds < 8 {
        let deficit = target - upper.len() as u64;
        let mut rng = Rng::derive(params.seed, STREAM_TOPUP, u64::from(rounds));
        rounds += 1;
        let mut extra: Vec<u64> = Vec::with_capacity(deficit as usize);
        let mut tries = 0u64;
        while (extra.len() as u64) < deficit && tries < deficit.saturating_mul(50) {
            tries += 1;
            let a = alias.sample(&mut rng);
            if degrees[a as usize] >= cap {
                continue;
            }
            let b = if rng.chance(nearby_share) {
                let c2 = layout.nearby(layout.community_of(a), &mut rng);
                let (lo, hi) = layout.community_range(c2);
                sample_prefix(&prefix, lo as usize, hi as usize, &mut rng) as u32
            } else {
                alias.sample(&mut rng)
            };
            if a == b || degrees[b as usize] >= cap {
                continue;
            }
            degrees[a as usize] += 1;
            degrees[b as usize] += 1;
            extra.push(pack(a, b));
        }
        if extra.is_empty() {
            break;
        }
        extra.sort_unstable();
        extra.dedup();
        topup += merge_extra(&mut offsets, &mut upper, &extra);
        degrees = degrees_of(users, &offsets, &upper);
    }
    sp.finish_and_clear();
    if rounds > 0 {
        tracing::info!(added = topup, rounds, "top-up edges merged");
    }
    let seconds = t0.elapsed().as_secs_f64();
    Ok(Generated {
        params: params.clone(),
        layout,
        offsets,
        upper,
        degrees,
        capped_edges: capped,
        topup_edges: topup,
        topup_rounds: rounds,
        seconds,
    })
}

/// Structural statistics of a generated graph.
#[derive(Debug, Clone, Default, Serialize)]
pub struct GraphStats {
    pub users: u64,
    pub edges: u64,
    pub countries: usize,
    pub communities: usize,
    pub mean_degree: f64,
    pub min_degree: u32,
    pub p50_degree: u32,
    pub p90_degree: u32,
    pub p99_degree: u32,
    pub max_degree: u32,
    pub isolated_users: u64,
    pub share_edges_in_community: f64,
    pub share_edges_in_country: f64,
    /// Mean local clustering of sampled users whose degree is within 5% of the median.
    pub clustering_median_users: f64,
    pub clustering_sample: usize,
    pub capped_edges: u64,
    pub topup_edges: u64,
    pub generate_seconds: f64,
}

/// Computes [`GraphStats`] (one pass over the edges plus a sample for clustering).
pub fn stats(g: &Generated, sample: usize) -> GraphStats {
    let n = g.users() as usize;
    let max = g.degrees.iter().copied().max().unwrap_or(0);
    let mut hist = vec![0u64; max as usize + 1];
    for &d in &g.degrees {
        hist[d as usize] += 1;
    }
    let pct = |q: f64| -> u32 {
        let rank = ((q * n as f64).ceil() as u64).clamp(1, n as u64);
        let mut acc = 0u64;
        for (d, &c) in hist.iter().enumerate() {
            acc += c;
            if acc >= rank {
                return d as u32;
            }
        }
        max
    };
    let p50 = pct(0.5);
    let comm = g.layout.user_communities();
    let (mut in_comm, mut in_country) = (0u64, 0u64);
    for a in 0..n {
        let ca = comm[a];
        let ka = g.layout.community_country[ca as usize];
        for &b in g.row(a as u32) {
            let cb = comm[b as usize];
            if cb == ca {
                in_comm += 1;
                in_country += 1;
            } else if g.layout.community_country[cb as usize] == ka {
                in_country += 1;
            }
        }
    }
    drop(comm);
    let (clustering, sampled) = clustering_of_median_users(g, p50, sample);
    let edges = g.edges();
    GraphStats {
        users: n as u64,
        edges,
        countries: g.layout.countries(),
        communities: g.layout.communities(),
        mean_degree: 2.0 * edges as f64 / n.max(1) as f64,
        min_degree: g.degrees.iter().copied().min().unwrap_or(0),
        p50_degree: p50,
        p90_degree: pct(0.9),
        p99_degree: pct(0.99),
        max_degree: max,
        isolated_users: hist.first().copied().unwrap_or(0),
        share_edges_in_community: in_comm as f64 / edges.max(1) as f64,
        share_edges_in_country: in_country as f64 / edges.max(1) as f64,
        clustering_median_users: clustering,
        clustering_sample: sampled,
        capped_edges: g.capped_edges,
        topup_edges: g.topup_edges,
        generate_seconds: g.seconds,
    }
}

/// Mean local clustering coefficient over up to `sample` users whose degree is within 5% of
/// `median` (the figure Ugander et al. report for median users).
pub fn clustering_of_median_users(g: &Generated, median: u32, sample: usize) -> (f64, usize) {
    let n = g.users();
    let tol = (median / 20).max(1);
    let mut rng = Rng::derive(g.params.seed, STREAM_SAMPLE, 0);
    // Reservoir sample of candidates.
    let mut picked: Vec<u32> = Vec::with_capacity(sample);
    let mut seen = 0u64;
    for u in 0..n {
        let d = g.degrees[u as usize];
        if d >= 2 && d.abs_diff(median) <= tol {
            seen += 1;
            if picked.len() < sample {
                picked.push(u);
            } else {
                let r = rng.below(seen) as usize;
                if r < sample {
                    picked[r] = u;
                }
            }
        }
    }
    if picked.is_empty() {
        return (0.0, 0);
    }
    picked.sort_unstable();
    let mut bits = vec![0u64; (n as usize).div_ceil(64)];
    for &u in &picked {
        bits[u as usize / 64] |= 1 << (u % 64);
    }
    let mut lower: Vec<Vec<u32>> = vec![Vec::new(); picked.len()];
    for a in 0..n {
        for &b in g.row(a) {
            if bits[b as usize / 64] & (1 << (b % 64)) != 0
                && let Ok(i) = picked.binary_search(&b)
            {
                lower[i].push(a);
            }
        }
    }
    let mut sum = 0.0;
    for (i, &u) in picked.iter().enumerate() {
        let mut friends = std::mem::take(&mut lower[i]);
        friends.extend_from_slice(g.row(u));
        let k = friends.len();
        let mut links = 0u64;
        for x in 0..k {
            let row = g.row(friends[x]);
            for &y in &friends[x + 1..] {
                if row.binary_search(&y).is_ok() {
                    links += 1;
                }
            }
        }
        let pairs = (k * (k - 1) / 2) as f64;
        sum += links as f64 / pairs;
    }
    (sum / picked.len() as f64, picked.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn params(users: u32, avg: f64, seed: u64) -> GraphParams {
        GraphParams {
            users,
            avg_friends: avg,
            max_friends: 5000,
            seed,
            threads: 2,
        }
    }

    #[test]
    fn layout_covers_all_users_with_contiguous_ranges() {
        for users in [2, 50, 1000, 123_457] {
            let l = Layout::new(users, 9);
            assert_eq!(l.community_start[0], 0);
            assert_eq!(*l.community_start.last().unwrap(), users);
            assert!(l.community_start.windows(2).all(|w| w[0] < w[1]));
            assert_eq!(l.country_first.len(), l.countries() + 1);
            assert_eq!(*l.country_first.last().unwrap() as usize, l.communities());
            let uc = l.user_communities();
            assert_eq!(uc.len(), users as usize);
            for u in [0, users / 2, users - 1] {
                assert_eq!(uc[u as usize] as usize, l.community_of(u));
            }
        }
    }

    #[test]
    fn merge_extra_inserts_in_order_and_skips_existing() {
        // rows: 0 -> [2, 5], 1 -> [], 2 -> [3], 3..5 -> []
        let mut offsets = vec![0, 2, 2, 3, 3, 3, 3];
        let mut upper = vec![2, 5, 3];
        let extra = vec![pack(0, 1), pack(0, 5), pack(1, 4), pack(3, 4), pack(3, 5)];
        let added = merge_extra(&mut offsets, &mut upper, &extra);
        assert_eq!(added, 4);
        assert_eq!(offsets, vec![0, 3, 4, 5, 7, 7, 7]);
        assert_eq!(upper, vec![1, 2, 5, 4, 3, 4, 5]);
    }

    #[test]
    fn small_graph_is_simple_symmetric_and_capped() {
        let mut p = params(3000, 40.0, 5);
        p.max_friends = 90;
        let g = generate(&p, false).unwrap();
        for a in 0..g.users() {
            let row = g.row(a);
            assert!(row.windows(2).all(|w| w[0] < w[1]));
            assert!(row.iter().all(|&b| b > a && b < g.users()));
        }
        assert!(g.degrees.iter().all(|&d| d <= 90));
        let mean = 2.0 * g.edges() as f64 / f64::from(g.users());
        assert!((mean - 40.0).abs() / 40.0 < 0.02, "mean {mean}");
    }

    #[test]
    fn thread_count_does_not_change_the_graph() {
        let mut p = params(4000, 30.0, 11);
        p.threads = 1;
        let a = generate(&p, false).unwrap();
        p.threads = 3;
        let b = generate(&p, false).unwrap();
        assert_eq!(a.offsets, b.offsets);
        assert_eq!(a.upper, b.upper);
    }

    #[test]
    fn refuses_impossible_parameters() {
        assert!(params(0, 130.0, 1).validate().is_err());
        assert!(params(1, 130.0, 1).validate().is_err());
        assert!(params(100_000, 6000.0, 1).validate().is_err());
        assert!(params(100_000, 0.0, 1).validate().is_err());
        assert!(params(100_000, -3.0, 1).validate().is_err());
        assert!(params(100, 130.0, 1).validate().is_err());
        assert!(params(100_000, 130.0, 1).validate().is_ok());
    }
}
