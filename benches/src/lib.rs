//! Shared pieces of the presence benchmarks: a deterministic generator of community-shaped
//! friend graphs, and the naive baseline engine the benchmarks compare against.
//!
//! # The graph
//!
//! [`community_graph`] lays users out so that dense ids carry locality, as a real deployment
//! that assigns ids in sign-up or region order would:
//!
//! - **Communities** are contiguous id ranges. Their sizes are Pareto-distributed (shape 1.2)
//!   from 1,000 up to 20,000 users, so most are a few thousand and a few are large.
//! - **Degrees** are heavy-tailed: each user gets a log-normal weight (sigma 1.1), rescaled so
//!   that the weights average `mean_friends`, and capped at 4,000 ([`MAX_FRIENDS`] is the hard
//!   cap, enforced on the finished graph).
//! - **Edges** follow a Chung–Lu model split in three: about 84% of a user's weight picks
//!   partners inside its own community, about 11% in the two adjacent communities (nearby id
//!   ranges), and about 5% anywhere, each partner chosen with probability proportional to its
//!   own weight in that part. A user's expected degree is then its weight. A part that cannot
//!   hold its share (a hub in a small community) spills over to the next, wider part.
//! - Duplicate picks and self-loops are dropped, and extra rounds of the same sampling make up
//!   for what they removed, until the edge count is within 0.2% of `users * mean / 2`.
//!
//! Every edge is stored once, under its smaller endpoint, so the result is symmetric by
//! construction, and everything is drawn from one seeded [`SmallRng`]: the same arguments
//! always give the same graph.

use presence_core::snapshot::GraphSnapshot;
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

pub mod naive;

/// Hard cap on any user's friend count (the engine's default `max_friends`).
pub const MAX_FRIENDS: u32 = 5_000;

/// Smallest community.
pub const MIN_COMMUNITY: u32 = 1_000;
/// Largest community.
pub const MAX_COMMUNITY: u32 = 20_000;

/// Pareto shape of community sizes (smaller is heavier-tailed).
const COMMUNITY_SHAPE: f64 = 1.2;
/// Log-normal sigma of degree weights.
const DEGREE_SIGMA: f64 = 1.1;
/// Largest degree weight: below the hard cap, so that sampling noise rarely reaches it.
const WEIGHT_CAP: f64 = 4_000.0;
/// Share of each user's weight spent inside its community, in adjacent ones, and anywhere.
const SHARE_LOCAL: f64 = 0.84;
const SHARE_NEIGHBOUR: f64 = 0.11;
/// A part may ask for at most this fraction of its candidate pool, which keeps duplicate
/// picks (and so the rounds needed to replace them) rare.
const POOL_FRACTION: f64 = 0.25;
/// Sampling rounds stop once the edge count is this close to the target.
const TARGET_SLACK: f64 = 0.002;
const MAX_ROUNDS: usize = 12;

/// A generated graph and the layout it was drawn from.
#[derive(Debug, Clone)]
pub struct CommunityGraph {
    pub snapshot: GraphSnapshot,
    /// First id of each community, ascending, starting at 0; community `c` spans
    /// `starts[c]..starts[c + 1]` (the last one ends at the user count).
    pub community_starts: Vec<u32>,
    /// Sampling rounds it took to reach the edge target.
    pub rounds: usize,
}

impl CommunityGraph {
    /// Index of the community holding `user`.
    pub fn community_of(&self, user: u32) -> usize {
        self.community_starts.partition_point(|&s| s <= user) - 1
    }
}

/// A deterministic community graph of `users` users (named `u0`, `u1`, ...) with about
/// `mean_friends` friends each on average. See the module documentation for its shape.
pub fn community_graph(users: u32, mean_friends: u32, seed: u64) -> GraphSnapshot {
    generate(users, mean_friends, seed).snapshot
}

/// Like [`community_graph`], also returning the community layout.
pub fn generate(users: u32, mean_friends: u32, seed: u64) -> CommunityGraph {
    let mut rng = SmallRng::seed_from_u64(seed);
    let n = users as usize;
    let starts = community_starts(users, &mut rng);
    let weights = degree_weights(n, f64::from(mean_friends), &mut rng);
    let parts = Parts::split(&weights, &starts, users);
    let target = (weights.iter().sum::<f64>() / 2.0).round() as u64;

    // upper[a]: friends of `a` with a larger id (unsorted, with duplicates, until compacted).
    let mut upper: Vec<Vec<u32>> = vec![Vec::new(); n];
    let mut edges = 0u64;
    let mut scale = 1.0;
    let mut rounds = 0;
    while rounds < MAX_ROUNDS && (edges as f64) < target as f64 * (1.0 - TARGET_SLACK) {
        rounds += 1;
        let picked = parts.sample_round(scale, &mut rng, &mut upper);
        let before = edges;
        edges = compact(&mut upper);
        let fresh = edges - before;
        if picked == 0 || fresh == 0 {
            break;
        }
        // Ask for the remaining deficit, inflated by how many picks this round wasted.
        let missing = target.saturating_sub(edges) as f64;
        // Capped, so a target the graph cannot hold (tiny user counts) stays cheap.
        scale = ((missing / target as f64) * (picked as f64 / fresh as f64)).min(4.0);
    }

    enforce_cap(&mut upper, MAX_FRIENDS);

    let mut snapshot = GraphSnapshot::new();
    let mut name = String::new();
    for (id, list) in upper.iter_mut().enumerate() {
        name.clear();
        use std::fmt::Write;
        // Writing to a String cannot fail.
        let _ = write!(name, "u{id}");
        snapshot.push_user(&name, list);
        *list = Vec::new();
    }
    CommunityGraph {
        snapshot,
        community_starts: starts,
        rounds,
    }
}

/// Contiguous community ranges with Pareto sizes in `MIN_COMMUNITY..=MAX_COMMUNITY`. A tail
/// shorter than the minimum joins the last community.
fn community_starts(users: u32, rng: &mut SmallRng) -> Vec<u32> {
    let mut starts = vec![0u32];
    let mut at = 0u32;
    while at < users {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        let size = (f64::from(MIN_COMMUNITY) / u.powf(1.0 / COMMUNITY_SHAPE))
            .min(f64::from(MAX_COMMUNITY)) as u32;
        let next = at.saturating_add(size);
        if next >= users || users - next < MIN_COMMUNITY {
            break;
        }
        starts.push(next);
        at = next;
    }
    starts
}

/// Log-normal weights with the given mean, capped at `WEIGHT_CAP` and at least 1.
fn degree_weights(n: usize, mean: f64, rng: &mut SmallRng) -> Vec<f64> {
    if n == 0 {
        return Vec::new();
    }
    let mu = -DEGREE_SIGMA * DEGREE_SIGMA / 2.0; // a log-normal of mean 1
    let mut w: Vec<f64> = (0..n)
        .map(|_| (mu + DEGREE_SIGMA * standard_normal(rng)).exp())
        .collect();
    let cap = WEIGHT_CAP.min((n - 1) as f64);
    // Clamping moves the mean: rescale and re-clamp until it settles.
    for _ in 0..8 {
        let sum: f64 = w.iter().sum();
        let k = mean * n as f64 / sum;
        for x in &mut w {
            *x = (*x * k).clamp(1.0_f64.min(cap), cap);
        }
    }
    w
}

/// A standard normal draw (Box–Muller).
fn standard_normal(rng: &mut SmallRng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Walker/Vose alias tables: O(1) weighted picks inside fixed id ranges.
struct Alias {
    /// Probability of keeping the drawn slot rather than taking its alias.
    keep: Vec<f32>,
    alias: Vec<u32>,
}

impl Alias {
    /// Tables for `weights`, built independently over each of `ranges` (which tile it).
    fn build(weights: &[f64], ranges: impl Iterator<Item = (u32, u32)>) -> Self {
        let n = weights.len();
        let mut keep = vec![1.0f32; n];
        let mut alias: Vec<u32> = (0..n as u32).collect();
        let (mut small, mut large) = (Vec::new(), Vec::new());
        let mut scaled = vec![0.0f64; 0];
        for (lo, hi) in ranges {
            let (lo_i, hi_i) = (lo as usize, hi as usize);
            let total: f64 = weights[lo_i..hi_i].iter().sum();
            if hi <= lo || total <= 0.0 {
                continue;
            }
            let len = (hi - lo) as f64;
            scaled.clear();
            scaled.extend(weights[lo_i..hi_i].iter().map(|w| w * len / total));
            small.clear();
            large.clear();
            for (k, &p) in scaled.iter().enumerate() {
                if p < 1.0 {
                    small.push(k)
                } else {
                    large.push(k)
                }
            }
            while let (Some(&s), Some(&l)) = (small.last(), large.last()) {
                small.pop();
                keep[lo_i + s] = scaled[s] as f32;
                alias[lo_i + s] = lo + l as u32;
                scaled[l] -= 1.0 - scaled[s];
                if scaled[l] < 1.0 {
                    large.pop();
                    small.push(l);
                }
            }
            // Whatever is left is 1 up to rounding: keep itself.
            for &k in small.iter().chain(large.iter()) {
                keep[lo_i + k] = 1.0;
            }
        }
        Self { keep, alias }
    }

    /// A user of `lo..hi` (a range the table was built over), by weight.
    fn pick(&self, lo: u32, hi: u32, rng: &mut SmallRng) -> u32 {
        let slot = rng.random_range(lo..hi);
        if rng.random::<f32>() < self.keep[slot as usize] {
            slot
        } else {
            self.alias[slot as usize]
        }
    }
}

/// The three parts of every user's weight, with alias tables for weighted partner picks.
struct Parts {
    users: u32,
    starts: Vec<u32>,
    /// Part weights of every user: inside, next to, and anywhere outside its community.
    weight: [Vec<f64>; 3],
    /// Total neighbour-part weight of each community.
    neighbour_total: Vec<f64>,
    /// Local and neighbour tables are per community, the third one global.
    alias: [Alias; 3],
    community: Vec<u32>,
}

const LOCAL: usize = 0;
const NEIGHBOUR: usize = 1;
const ANYWHERE: usize = 2;

impl Parts {
    fn split(weights: &[f64], starts: &[u32], users: u32) -> Self {
        let n = weights.len();
        let end = |c: usize| starts.get(c + 1).copied().unwrap_or(users);
        let mut community = vec![0u32; n];
        for c in 0..starts.len() {
            for slot in &mut community[starts[c] as usize..end(c) as usize] {
                *slot = c as u32;
            }
        }
        let mut weight = [vec![0.0; n], vec![0.0; n], vec![0.0; n]];
        for (i, &w) in weights.iter().enumerate() {
            let c = community[i] as usize;
            let own = f64::from(end(c) - starts[c]) - 1.0;
            let adjacent = if starts.len() > 1 {
                let lo = starts[c.saturating_sub(1)];
                let hi = end((c + 1).min(starts.len() - 1));
                f64::from(hi - lo) - own - 1.0
            } else {
                0.0
            };
            let local = (w * SHARE_LOCAL).min(own * POOL_FRACTION);
            let neighbour =
                (w * SHARE_NEIGHBOUR + (w * SHARE_LOCAL - local)).min(adjacent * POOL_FRACTION);
            let anywhere = (w - local - neighbour).min((n as f64 - 1.0) * POOL_FRACTION);
            weight[LOCAL][i] = local;
            weight[NEIGHBOUR][i] = neighbour;
            weight[ANYWHERE][i] = anywhere;
        }
        let ranges = || (0..starts.len()).map(|c| (starts[c], end(c)));
        let neighbour_total = ranges()
            .map(|(lo, hi)| weight[NEIGHBOUR][lo as usize..hi as usize].iter().sum())
            .collect();
        let alias = [
            Alias::build(&weight[LOCAL], ranges()),
            Alias::build(&weight[NEIGHBOUR], ranges()),
            Alias::build(&weight[ANYWHERE], std::iter::once((0, users))),
        ];
        Self {
            users,
            starts: starts.to_vec(),
            weight,
            neighbour_total,
            alias,
            community,
        }
    }

    fn end(&self, c: usize) -> u32 {
        self.starts.get(c + 1).copied().unwrap_or(self.users)
    }

    /// One round of Chung–Lu sampling: every user starts about `scale * weight / 2` edges
    /// per part. Appends each edge to its smaller endpoint's list; returns the number picked.
    fn sample_round(&self, scale: f64, rng: &mut SmallRng, upper: &mut [Vec<u32>]) -> u64 {
        let mut picked = 0;
        let users = self.users;
        for i in 0..users {
            let c = self.community[i as usize] as usize;
            for k in [LOCAL, NEIGHBOUR, ANYWHERE] {
                let want = scale * self.weight[k][i as usize] / 2.0;
                // Stochastic rounding keeps the expected count exact.
                let count = (want + rng.random::<f64>()) as u32;
                for _ in 0..count {
                    let partner = match k {
                        LOCAL => Some(self.alias[LOCAL].pick(self.starts[c], self.end(c), rng)),
                        NEIGHBOUR => self.pick_neighbour(c, rng),
                        _ => Some(self.alias[ANYWHERE].pick(0, users, rng)),
                    };
                    let Some(j) = partner else { continue };
                    if j == i {
                        continue;
                    }
                    upper[i.min(j) as usize].push(i.max(j));
                    picked += 1;
                }
            }
        }
        picked
    }

    /// A partner in community `c - 1` or `c + 1`, the side chosen by its total weight.
    fn pick_neighbour(&self, c: usize, rng: &mut SmallRng) -> Option<u32> {
        let left = c.checked_sub(1);
        let right = (c + 1 < self.starts.len()).then_some(c + 1);
        let d = match (left, right) {
            (Some(l), Some(r)) => {
                let (wl, wr) = (self.neighbour_total[l], self.neighbour_total[r]);
                if rng.random::<f64>() * (wl + wr) < wl {
                    l
                } else {
                    r
                }
            }
            (Some(l), None) => l,
            (None, Some(r)) => r,
            (None, None) => return None,
        };
        (self.neighbour_total[d] > 0.0)
            .then(|| self.alias[NEIGHBOUR].pick(self.starts[d], self.end(d), rng))
    }
}

/// Sorts and deduplicates every list; returns the number of distinct edges.
fn compact(upper: &mut [Vec<u32>]) -> u64 {
    let mut edges = 0;
    for list in upper.iter_mut() {
        list.sort_unstable();
        list.dedup();
        edges += list.len() as u64;
    }
    edges
}

/// Drops edges (greedily, in id order) so no user has more than `cap` friends.
fn enforce_cap(upper: &mut [Vec<u32>], cap: u32) {
    let mut degree = vec![0u32; upper.len()];
    for a in 0..upper.len() {
        let mut list = std::mem::take(&mut upper[a]);
        // Friends below `a` were all decided earlier and already counted in `degree[a]`.
        list.retain(|&b| {
            let keep = degree[a] < cap && degree[b as usize] < cap;
            if keep {
                degree[a] += 1;
                degree[b as usize] += 1;
            }
            keep
        });
        upper[a] = list;
    }
}

/// Friend count of every user of a snapshot.
pub fn degrees(snap: &GraphSnapshot) -> Vec<u32> {
    let n = snap.users();
    let mut degree = vec![0u32; n];
    for a in 0..n {
        for &b in upper_of(snap, a) {
            degree[a] += 1;
            degree[b as usize] += 1;
        }
    }
    degree
}

/// Friends of `a` with a larger id, as stored in the snapshot.
pub fn upper_of(snap: &GraphSnapshot, a: usize) -> &[u32] {
    let lo = snap.upper_offsets[a] as usize;
    let hi = snap.upper_offsets[a + 1] as usize;
    &snap.upper[lo..hi]
}

/// Full adjacency lists (both directions, ascending), each allocated to its exact length.
pub fn adjacency(snap: &GraphSnapshot) -> Vec<Vec<u32>> {
    let degree = degrees(snap);
    let mut lists: Vec<Vec<u32>> = degree
        .iter()
        .map(|&d| Vec::with_capacity(d as usize))
        .collect();
    for a in 0..snap.users() {
        for &b in upper_of(snap, a) {
            lists[a].push(b);
            lists[b as usize].push(a as u32);
        }
    }
    // Lower friends were pushed in increasing `a` before `a`'s own upper ones: all sorted.
    lists
}

/// Pseudo-random distinct sample of `count` values out of `0..n` (a partial Fisher–Yates
/// shuffle), deterministic for a seed.
pub fn sample_distinct(n: u32, count: usize, rng: &mut SmallRng) -> Vec<u32> {
    let mut all: Vec<u32> = (0..n).collect();
    let count = count.min(all.len());
    for i in 0..count {
        let j = rng.random_range(i..all.len());
        all.swap(i, j);
    }
    all.truncate(count);
    all
}

#[cfg(test)]
mod tests {
    use std::sync::OnceLock;

    use super::*;

    const SEED: u64 = 0x5eed;

    fn hundred_k() -> &'static CommunityGraph {
        static GRAPH: OnceLock<CommunityGraph> = OnceLock::new();
        GRAPH.get_or_init(|| generate(100_000, 150, SEED))
    }

    #[test]
    fn lists_are_strictly_increasing_above_their_owner_and_in_range() {
        let snap = &hundred_k().snapshot;
        assert_eq!(snap.users(), 100_000);
        for a in 0..snap.users() {
            let list = upper_of(snap, a);
            let mut prev = a as u32;
            for &b in list {
                // Strictly above the previous one (and above `a`): no self loop, no duplicate.
                assert!(b > prev, "user {a}: {b} after {prev}");
                assert!((b as usize) < snap.users());
                prev = b;
            }
        }
    }

    #[test]
    fn mean_is_within_five_percent_and_cap_holds() {
        let snap = &hundred_k().snapshot;
        let degree = degrees(snap);
        let mean = degree.iter().map(|&d| f64::from(d)).sum::<f64>() / degree.len() as f64;
        assert!((mean - 150.0).abs() <= 7.5, "mean degree {mean}");
        assert_eq!(
            2 * snap.edges(),
            degree.iter().map(|&d| u64::from(d)).sum::<u64>()
        );
        let max = degree.iter().copied().max().unwrap_or(0);
        assert!(max <= MAX_FRIENDS, "max degree {max}");
        // Heavy tail: the top 1% of users hold well over 1% of the friendships.
        let mut sorted = degree.clone();
        sorted.sort_unstable_by(|a, b| b.cmp(a));
        let top: u64 = sorted[..1000].iter().map(|&d| u64::from(d)).sum();
        assert!(top as f64 > 0.04 * 2.0 * snap.edges() as f64);
        assert!(max > 1_000, "max degree {max}");
    }

    #[test]
    fn most_friends_are_local() {
        let g = hundred_k();
        let snap = &g.snapshot;
        let (mut local, mut adjacent, mut far) = (0u64, 0u64, 0u64);
        for a in 0..snap.users() {
            let ca = g.community_of(a as u32);
            for &b in upper_of(snap, a) {
                match g.community_of(b).abs_diff(ca) {
                    0 => local += 1,
                    1 => adjacent += 1,
                    _ => far += 1,
                }
            }
        }
        let total = (local + adjacent + far) as f64;
        let (l, n, f) = (
            local as f64 / total,
            adjacent as f64 / total,
            far as f64 / total,
        );
        assert!((0.75..=0.88).contains(&l), "local {l}");
        assert!((0.07..=0.16).contains(&n), "adjacent {n}");
        assert!((0.02..=0.10).contains(&f), "far {f}");
        let sizes: Vec<u32> = g.community_starts.windows(2).map(|w| w[1] - w[0]).collect();
        assert!(
            sizes
                .iter()
                .all(|&s| (MIN_COMMUNITY..=MAX_COMMUNITY).contains(&s))
        );
    }

    #[test]
    fn symmetric_when_loaded_into_the_engine() {
        use presence_core::{Config, UserId};
        let snap = community_graph(5_000, 40, 7);
        let bytes = snap.to_bytes().expect("serialize");
        let engine = presence_core::snapshot::load(Config::default(), 0, &bytes, u64::MAX)
            .expect("the engine accepts the generated graph");
        let adj = adjacency(&snap);
        for (a, friends) in adj.iter().enumerate().step_by(37) {
            let got: Vec<u32> = engine
                .friends(UserId(a as u32))
                .into_iter()
                .map(|u| u.0)
                .collect();
            assert_eq!(&got, friends);
            for &b in friends {
                assert!(engine.are_friends(UserId(b), UserId(a as u32)));
                assert!(adj[b as usize].binary_search(&(a as u32)).is_ok());
            }
        }
        assert_eq!(engine.lookup("u4999"), Some(UserId(4999)));
    }

    #[test]
    fn same_seed_same_graph_other_seed_other_graph() {
        let a = community_graph(20_000, 60, 42);
        let b = community_graph(20_000, 60, 42);
        let c = community_graph(20_000, 60, 43);
        assert_eq!(a, b);
        assert_ne!(a.upper, c.upper);
    }

    #[test]
    fn enforce_cap_bounds_every_degree_and_keeps_lists_sorted() {
        let g = generate(3_000, 40, 9);
        let mut upper: Vec<Vec<u32>> = (0..g.snapshot.users())
            .map(|a| upper_of(&g.snapshot, a).to_vec())
            .collect();
        enforce_cap(&mut upper, 10);
        let mut degree = vec![0u32; upper.len()];
        for (a, list) in upper.iter().enumerate() {
            assert!(list.windows(2).all(|w| w[0] < w[1]));
            for &b in list {
                degree[a] += 1;
                degree[b as usize] += 1;
            }
        }
        assert!(degree.iter().all(|&d| d <= 10));
        // Greedy, not destructive: most users still reach the cap.
        assert!(degree.iter().filter(|&&d| d == 10).count() > upper.len() / 2);
    }

    #[test]
    fn tiny_and_degenerate_sizes_work() {
        for (users, mean) in [(0, 10), (1, 10), (2, 10), (50, 100), (1_500, 3)] {
            let snap = community_graph(users, mean, 1);
            assert_eq!(snap.users(), users as usize);
            let degree = degrees(&snap);
            assert!(degree.iter().all(|&d| d < users.max(1)));
        }
    }
}
