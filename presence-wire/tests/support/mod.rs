//! What the property tests share (presence-wire's fuzz file; presence-node's, presence-peer's
//! and the presence-core and chat-relay models include it by path): the seed, the fuzz runner
//! with its `FUZZ_CASES` override, count and timing, and the generators of text that JSON
//! writers get wrong.
#![allow(dead_code)]

use std::cell::Cell;
use std::fmt::Debug;
use std::time::Instant;

use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::{Config, FileFailurePersistence, RngSeed, TestCaseError, TestRunner};

// ---- the runner ------------------------------------------------------------------------------

/// Checks `test` on `default_cases` inputs from `strategy` (`FUZZ_CASES / weight` when set),
/// prints how many ran and how long it took, and panics with the shrunk input on a failure
/// (a panic inside `test` is a failure too). Failing seeds are saved next to `source` (the
/// caller's `file!()`).
pub fn fuzz<S>(
    source: &'static str,
    name: &str,
    default_cases: u32,
    weight: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    let cases = std::env::var("FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse::<u32>().ok())
        .map_or(default_cases, |n| (n / weight).max(1));
    let config = Config {
        cases,
        rng_seed: seed(name),
        source_file: Some(source),
        // Failing seeds go next to this file (tests/ has no lib.rs for the default to find).
        failure_persistence: Some(Box::new(FileFailurePersistence::WithSource(
            "proptest-regressions",
        ))),
        ..Config::default()
    };
    let ran = Cell::new(0u64);
    let start = Instant::now();
    let result = TestRunner::new(config).run(&strategy, |v| {
        ran.set(ran.get() + 1);
        test(v)
    });
    eprintln!(
        "fuzz {name}: {cases} cases ({} runs with saved seeds and shrinking) in {:.2?}",
        ran.get(),
        start.elapsed()
    );
    if let Err(e) = result {
        panic!("fuzz {name}: {e}");
    }
}

/// The seed every property test here runs with: `default`, so each run draws the same inputs
/// as CI needs, unless `PROPTEST_RNG_SEED` sets one (for a long exploratory run: a new number
/// each time). The model tests of presence-core and chat-relay include this file for it.
pub fn fixed_seed(default: u64) -> RngSeed {
    match Config::default().rng_seed {
        RngSeed::Random => RngSeed::Fixed(default),
        set => set,
    }
}

/// A fuzz property's [`fixed_seed`]: its own, from its name.
fn seed(name: &str) -> RngSeed {
    fixed_seed(name.bytes().fold(0xcbf2_9ce4_8422_2325, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    }))
}

/// Bytes that print as a byte string when a property fails.
#[derive(Clone)]
pub struct Frame(pub Vec<u8>);

impl Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "b\"{}\"", self.0.escape_ascii())
    }
}

// ---- generators shared by the properties ----------------------------------------------------

/// Characters JSON writers get wrong: quotes, backslashes, controls, separators, non-BMP.
pub const SPECIAL: &str = "\"\\/\0\n\r\t\u{8}\u{c}\u{1b}\u{1f}\u{7f}\u{80}\u{ad}\u{7ff}\u{800}\u{2028}\u{2029}\
    \u{feff}\u{fffd}\u{ffff}\u{10000}\u{10ffff}é😀";

/// Half printable ASCII, a quarter [`SPECIAL`], a quarter any scalar value. One `u32` per
/// character: a vector of these is several times cheaper to generate than a union per
/// character, which is what dominates the run time of these properties in debug.
pub fn any_char() -> impl Strategy<Value = char> {
    any::<u32>().prop_map(|n| {
        let k = n >> 2;
        match n & 3 {
            0 | 1 => char::from(b' ' + (k % 95) as u8),
            2 => {
                let n = SPECIAL.chars().count();
                SPECIAL.chars().nth(k as usize % n).unwrap_or(' ')
            }
            _ => char::from_u32(k % 0x11_0000).unwrap_or('\u{d7ff}'),
        }
    })
}

pub fn text(max: usize) -> impl Strategy<Value = String> {
    proptest::collection::vec(any_char(), 0..=max).prop_map(String::from_iter)
}

/// Random bytes, `len` of them at most: drawn eight at a time, several times cheaper than a
/// byte at a time (generation dominates these properties' run time in debug).
pub fn bytes(len: std::ops::Range<usize>) -> impl Strategy<Value = Vec<u8>> {
    (
        proptest::collection::vec(any::<u64>(), 0..len.end.div_ceil(8)),
        len,
    )
        .prop_map(|(words, want)| {
            let mut b: Vec<u8> = words.iter().flat_map(|w| w.to_le_bytes()).collect();
            b.truncate(want);
            b
        })
}

// ---- mutations -------------------------------------------------------------------------------

/// One edit of a frame: positions are [`Index`]es, taken modulo the frame's length then.
#[derive(Debug, Clone)]
pub enum Mutation {
    FlipBits(Index, u8),
    SetByte(Index, u8),
    Insert(Index, Vec<u8>),
    InsertToken(Index, &'static [u8]),
    Delete(Index, usize),
    Truncate(Index),
    Duplicate(Index, Index),
}

/// One edit; `tokens` are the fragments that steer the decoder under test into its corners.
pub fn mutation(tokens: &'static [&'static [u8]]) -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1..=255u8).prop_map(|(i, m)| Mutation::FlipBits(i, m)),
        2 => (any::<Index>(), any::<u8>()).prop_map(|(i, b)| Mutation::SetByte(i, b)),
        1 => (any::<Index>(), proptest::collection::vec(any::<u8>(), 1..8))
            .prop_map(|(i, b)| Mutation::Insert(i, b)),
        3 => (any::<Index>(), select(tokens)).prop_map(|(i, t)| Mutation::InsertToken(i, t)),
        2 => (any::<Index>(), 1..16usize).prop_map(|(i, n)| Mutation::Delete(i, n)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => (any::<Index>(), any::<Index>()).prop_map(|(a, b)| Mutation::Duplicate(a, b)),
    ]
}

/// Applies `edits` to `f` in order.
pub fn mutate(mut f: Vec<u8>, edits: &[Mutation]) -> Vec<u8> {
    for m in edits {
        // Positions in 0..=len, so an insertion can append.
        let at = |i: &Index, len: usize| i.index(len + 1);
        match m {
            Mutation::FlipBits(i, mask) if !f.is_empty() => {
                let i = i.index(f.len());
                f[i] ^= mask;
            }
            Mutation::SetByte(i, b) if !f.is_empty() => {
                let i = i.index(f.len());
                f[i] = *b;
            }
            Mutation::Insert(i, b) => {
                let i = at(i, f.len());
                f.splice(i..i, b.iter().copied());
            }
            Mutation::InsertToken(i, t) => {
                let i = at(i, f.len());
                f.splice(i..i, t.iter().copied());
            }
            Mutation::Delete(i, n) => {
                let i = at(i, f.len());
                f.drain(i..(i + n).min(f.len()));
            }
            Mutation::Truncate(i) => f.truncate(at(i, f.len())),
            Mutation::Duplicate(a, b) => {
                let (a, b) = (at(a, f.len()), at(b, f.len()));
                let (lo, hi) = (a.min(b), a.max(b));
                let copy = f[lo..hi.min(lo + 64)].to_vec();
                f.splice(hi..hi, copy);
            }
            Mutation::FlipBits(..) | Mutation::SetByte(..) => {}
        }
    }
    f
}
