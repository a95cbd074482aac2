//! The on-disk snapshot of ids and friend graph: an rkyv archive that is used in place from a
//! memory map, validated (bytecheck, then every semantic rule) before anything is built from
//! it, because a file on disk is untrusted input.
//!
//! Each undirected edge is stored once, under its smaller endpoint ("upper" CSR), so the
//! loader makes the graph symmetric by construction and the file is half the size.

use std::fs::File;
use std::io::Write;
use std::path::Path;

use rkyv::rancor;
use rkyv::util::AlignedVec;

use crate::config::Config;
use crate::engine::Engine;
use crate::error::{Error, SnapshotError};
use crate::graph::{FriendSet, Graph};
use crate::ids::Interner;

/// Format version written by this build. Version 2: 64-bit relative pointers (version 1's
/// 32-bit ones capped a snapshot at 2 GiB, about 7.5 M users at 130 friends).
pub const SNAPSHOT_VERSION: u32 = 2;

/// Ids and friendships, as archived.
#[derive(
    Debug, Default, Clone, PartialEq, Eq, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct GraphSnapshot {
    pub version: u32,
    /// All app user ids concatenated, in dense-id order.
    pub names: String,
    /// `names[name_ends[i - 1]..name_ends[i]]` is user `i`'s app id.
    pub name_ends: Vec<u64>,
    /// `upper[upper_offsets[i]..upper_offsets[i + 1]]`: friends of user `i` with a larger id,
    /// strictly increasing. Length users + 1.
    pub upper_offsets: Vec<u64>,
    pub upper: Vec<u32>,
}

impl GraphSnapshot {
    /// An empty snapshot to fill user by user.
    pub fn new() -> Self {
        Self {
            version: SNAPSHOT_VERSION,
            upper_offsets: vec![0],
            ..Self::default()
        }
    }

    /// Appends a user with its friends of larger id (strictly increasing).
    pub fn push_user(&mut self, name: &str, upper_friends: &[u32]) {
        self.names.push_str(name);
        self.name_ends.push(self.names.len() as u64);
        self.upper.extend_from_slice(upper_friends);
        self.upper_offsets.push(self.upper.len() as u64);
    }

    pub fn users(&self) -> usize {
        self.name_ends.len()
    }

    pub fn edges(&self) -> u64 {
        self.upper.len() as u64
    }

    /// The archive bytes.
    pub fn to_bytes(&self) -> Result<AlignedVec, SnapshotError> {
        rkyv::to_bytes::<rancor::Error>(self).map_err(|e| SnapshotError::Invalid(e.to_string()))
    }

    /// Captures an engine's ids and friend graph.
    pub fn from_engine(engine: &Engine) -> Self {
        let mut snap = Self::new();
        engine.with_interner(|names| {
            engine.with_graph(|graph| {
                for id in 0..names.len() as u32 {
                    let name = names.name(crate::UserId(id)).unwrap_or_default();
                    let mut upper = Vec::new();
                    if let Some(set) = graph.set(id) {
                        set.for_each(|f| {
                            if f > id {
                                upper.push(f);
                            }
                        });
                    }
                    snap.push_user(name, &upper);
                }
            })
        });
        snap
    }
}

/// Validates archive bytes (size cap, bytecheck, version) and returns the archived view.
pub fn access(bytes: &[u8], max_bytes: u64) -> Result<&ArchivedGraphSnapshot, SnapshotError> {
    if bytes.len() as u64 > max_bytes {
        return Err(SnapshotError::TooLarge {
            len: bytes.len() as u64,
            max: max_bytes,
        });
    }
    let snap = rkyv::access::<ArchivedGraphSnapshot, rancor::Error>(bytes)
        .map_err(|e| SnapshotError::Invalid(e.to_string()))?;
    let version = snap.version.to_native();
    if version != SNAPSHOT_VERSION {
        return Err(SnapshotError::Version(version, SNAPSHOT_VERSION));
    }
    Ok(snap)
}

fn invalid(msg: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid(msg.into())
}

/// Builds an engine from snapshot bytes after checking every rule: names valid and unique,
/// offsets monotonic and in bounds, friend lists strictly increasing, above their owner, in
/// range, and within the friend cap.
pub fn load(
    cfg: Config,
    start: u64,
    bytes: &[u8],
    max_bytes: u64,
) -> Result<Engine, SnapshotError> {
    if cfg.cluster {
        return Err(invalid(
            "a cluster node owns no user at start: it loads friendships slot by slot \
             (Engine::take_users), not from a snapshot",
        ));
    }
    let snap = access(bytes, max_bytes)?;
    let users = snap.name_ends.len();
    if u32::try_from(users).is_err() {
        return Err(invalid("more users than dense ids"));
    }
    if snap.upper_offsets.len() != users + 1 {
        return Err(invalid(
            "upper_offsets must have one entry per user plus one",
        ));
    }

    let mut names = Interner::new();
    let arena: &str = snap.names.as_str();
    names.reserve(users, arena.len() / users.max(1) + 1);
    let mut start_at = 0usize;
    for (i, end) in snap.name_ends.iter().enumerate() {
        let end = usize::try_from(end.to_native()).map_err(|_| invalid("name end out of range"))?;
        let name = arena
            .get(start_at..end)
            .ok_or_else(|| invalid(format!("name of user {i} is out of bounds")))?;
        let (_, fresh) = names.intern(name).map_err(SnapshotError::Content)?;
        if !fresh {
            return Err(invalid(format!("user id {name:?} appears twice")));
        }
        start_at = end;
    }

    let offsets = &snap.upper_offsets;
    let upper = &snap.upper;
    if offsets[0].to_native() != 0 || offsets[users].to_native() != upper.len() as u64 {
        return Err(invalid(
            "upper_offsets must start at 0 and end at the edge count",
        ));
    }
    // Rows first, in order: bounds, order, range; each row's length is its owner's count of
    // larger friends.
    let mut degree = vec![0u32; users];
    for a in 0..users {
        let (lo, hi) = (offsets[a].to_native(), offsets[a + 1].to_native());
        if lo > hi || hi > upper.len() as u64 {
            return Err(invalid(format!(
                "offsets of user {a} are out of order or bounds"
            )));
        }
        let mut prev = a as u64;
        for b in &upper[lo as usize..hi as usize] {
            let b = u64::from(b.to_native());
            if b <= prev {
                return Err(invalid(format!(
                    "friends of user {a} must be larger than it and strictly increasing"
                )));
            }
            if b >= users as u64 {
                return Err(invalid(format!("user {a} has a friend {b} out of range")));
            }
            prev = b;
        }
        degree[a] = (hi - lo) as u32;
    }
    // Then every edge counts once more for its larger end: a random increment per edge, so
    // the counter a few edges ahead is prefetched (millions of users: each one is a miss).
    const AHEAD: usize = 16;
    for (j, b) in upper.iter().enumerate() {
        if let Some(next) = upper.get(j + AHEAD)
            && let Some(d) = degree.get(next.to_native() as usize)
        {
            crate::prefetch(d);
        }
        if let Some(d) = degree.get_mut(b.to_native() as usize) {
            *d += 1;
        }
    }
    if let Some((id, &d)) = degree
        .iter()
        .enumerate()
        .find(|(_, d)| **d > cfg.max_friends)
    {
        return Err(SnapshotError::Content(Error::TooManyFriends {
            user: crate::UserId(id as u32),
            would_have: u64::from(d),
            cap: cfg.max_friends,
        }));
    }

    // The friend sets, built on two threads: each owns the users of one range (split so both
    // hold about half of the adjacency entries) and walks the rows it needs.
    let row = |a: usize| {
        let (lo, hi) = (
            offsets[a].to_native() as usize,
            offsets[a + 1].to_native() as usize,
        );
        &upper[lo..hi]
    };
    let total: u64 = degree.iter().map(|&d| u64::from(d)).sum();
    let mut acc = 0u64;
    let split = degree
        .iter()
        .position(|&d| {
            acc += u64::from(d);
            acc * 2 >= total
        })
        .map_or(users, |i| i + 1);
    let (lower, upper_half) = degree.split_at(split);
    let (mut sets, high) = std::thread::scope(|scope| {
        let high = scope.spawn(|| build_sets(&row, split..users, upper_half));
        let low = build_sets(&row, 0..split, lower);
        (low, high.join())
    });
    match high {
        Ok(high) => sets.extend(high),
        Err(_) => return Err(invalid("building the friend sets failed")),
    }
    drop(degree);
    let mut graph = Graph::new();
    graph.replace_all(sets, upper.len() as u64);

    let engine = Engine::new(cfg, start).map_err(|e| invalid(e.to_string()))?;
    engine
        .install(names, graph)
        .map_err(SnapshotError::Content)?;
    Ok(engine)
}

/// Maps a snapshot file read-only.
pub fn map_file(path: &Path) -> Result<memmap2::Mmap, SnapshotError> {
    let file =
        File::open(path).map_err(|e| SnapshotError::Io(format!("{}: {e}", path.display())))?;
    // SAFETY: the map is read-only and private to this process; the bytes are validated
    // before use. A concurrent truncation of the file by another process could still fault,
    // which is why snapshots are written to a temporary name and renamed into place.
    #[allow(unsafe_code)]
    let map = unsafe { memmap2::Mmap::map(&file) }
        .map_err(|e| SnapshotError::Io(format!("{}: {e}", path.display())))?;
    Ok(map)
}

/// Loads an engine from a snapshot file.
pub fn load_file(
    cfg: Config,
    start: u64,
    path: &Path,
    max_bytes: u64,
) -> Result<Engine, SnapshotError> {
    let map = map_file(path)?;
    load(cfg, start, &map, max_bytes)
}

/// The friend sets of the users in `own` (`degrees` are theirs), from the rows `0..own.end`.
/// Each user's list is complete and sorted once its own row is read: its smaller friends were
/// pushed by earlier rows, its larger ones are its row.
fn build_sets<'a>(
    row: &(impl Fn(usize) -> &'a [rkyv::Archived<u32>] + Sync),
    own: std::ops::Range<usize>,
    degrees: &[u32],
) -> Vec<FriendSet> {
    let base = own.start;
    let mut lists: Vec<Vec<u32>> = degrees
        .iter()
        .map(|&d| Vec::with_capacity(d as usize))
        .collect();
    let mut sets = Vec::with_capacity(own.len());
    // Pushes land on random lists: the list header a few edges ahead, then the spot its next
    // element goes to, are prefetched.
    const AHEAD: usize = 8;
    for a in 0..own.end {
        let friends = row(a);
        for (j, b) in friends.iter().enumerate() {
            if let Some(next) = friends.get(j + AHEAD)
                && let Some(l) = (next.to_native() as usize)
                    .checked_sub(base)
                    .and_then(|i| lists.get_mut(i))
                && let Some(slot) = l.spare_capacity_mut().first()
            {
                crate::prefetch(slot);
            }
            if let Some(next) = friends.get(j + 2 * AHEAD)
                && let Some(l) = (next.to_native() as usize)
                    .checked_sub(base)
                    .and_then(|i| lists.get(i))
            {
                crate::prefetch(l);
            }
            let b = b.to_native();
            if let Some(l) = (b as usize)
                .checked_sub(base)
                .and_then(|i| lists.get_mut(i))
            {
                l.push(a as u32);
            }
        }
        if let Some(l) = a.checked_sub(base).and_then(|i| lists.get_mut(i)) {
            l.extend(friends.iter().map(|b| b.to_native()));
            sets.push(FriendSet::from_sorted(std::mem::take(l)));
        }
    }
    sets
}

/// Writes bytes durably: to a temporary file, fsync, rename over `path`, fsync the folder.
pub fn write_file(path: &Path, bytes: &[u8]) -> Result<(), SnapshotError> {
    let io = |e: std::io::Error| SnapshotError::Io(format!("{}: {e}", path.display()));
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp).map_err(io)?;
        f.write_all(bytes).map_err(io)?;
        f.sync_all().map_err(io)?;
    }
    std::fs::rename(&tmp, path).map_err(io)?;
    File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::UserId;

    /// The sets built on two threads are exactly the symmetric closure of the rows, for a
    /// skewed graph (a hub in the low half, so the split is far from the middle user).
    #[test]
    fn loading_builds_exactly_the_symmetric_friend_lists() {
        let n = 3000u32;
        let mut adj: Vec<std::collections::BTreeSet<u32>> = vec![Default::default(); n as usize];
        let mut x = 0x9E37_79B9_7F4A_7C15u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        for a in 0..n {
            let k = if a == 5 { 900 } else { next() % 12 };
            for _ in 0..k {
                let b = (next() % u64::from(n)) as u32;
                if b != a {
                    adj[a as usize].insert(b);
                    adj[b as usize].insert(a);
                }
            }
        }
        let mut snap = GraphSnapshot::new();
        for a in 0..n {
            let upper: Vec<u32> = adj[a as usize].range(a + 1..).copied().collect();
            snap.push_user(&format!("u{a}"), &upper);
        }
        let bytes = snap.to_bytes().expect("serialise");
        let engine = load(Config::default(), 0, &bytes, u64::MAX).expect("load");
        for a in 0..n {
            let got = engine.friends(UserId(a));
            let want: Vec<UserId> = adj[a as usize].iter().map(|&b| UserId(b)).collect();
            assert_eq!(got, want, "friends of {a}");
        }
        assert_eq!(engine.name(UserId(2999)).as_deref(), Some("u2999"));
    }
}
