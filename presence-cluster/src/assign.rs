//! Which live node should own each slot: rendezvous (highest random weight) hashing, so that a
//! node joining or leaving moves only the slots it gains or loses.
//!
//! Only the coordinator computes this; every other node reads the result from etcd. The
//! weight function is still fixed and documented, so that a coordinator of another version
//! agrees and a rolling upgrade moves nothing.

use crate::slot::Slot;

/// FNV-1a, 64 bits, over the node id.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: every input bit reaches every output bit.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The weight of `node` for `slot`: `mix(fnv1a(node) ^ (slot + 1) · φ64)`. Node ids are
/// unique, so ties (equal weights) are broken by the id, smaller first.
pub fn weight(node: &str, slot: Slot) -> u64 {
    mix(fnv1a(node.as_bytes()) ^ (u64::from(slot.get()) + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15))
}

/// The node among `nodes` that should own `slot`; `None` when there is none.
pub fn owner<'a>(slot: Slot, nodes: impl IntoIterator<Item = &'a str>) -> Option<&'a str> {
    nodes
        .into_iter()
        .map(|n| (weight(n, slot), std::cmp::Reverse(n)))
        .max()
        .map(|(_, std::cmp::Reverse(n))| n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assignment<'a>(nodes: &[&'a str]) -> Vec<Option<&'a str>> {
        Slot::all()
            .map(|s| owner(s, nodes.iter().copied()))
            .collect()
    }

    #[test]
    fn no_nodes_no_owner() {
        assert_eq!(owner(Slot::all().next().expect("slot 0"), []), None);
    }

    #[test]
    fn balanced_within_a_few_percent() {
        for n in [2usize, 3, 4, 5, 8] {
            let names: Vec<String> = (0..n).map(|i| format!("node-{i}")).collect();
            let refs: Vec<&str> = names.iter().map(String::as_str).collect();
            let a = assignment(&refs);
            for name in &refs {
                let c = a.iter().filter(|o| **o == Some(*name)).count() as f64;
                let fair = 1024.0 / n as f64;
                // Binomial spread: within 4.5 standard deviations of fair, whatever the names.
                let sd = (1024.0 * (1.0 / n as f64) * (1.0 - 1.0 / n as f64)).sqrt();
                assert!((c - fair).abs() <= 4.5 * sd, "{n} nodes: {name} has {c}");
            }
        }
    }

    #[test]
    fn a_join_moves_only_what_the_newcomer_takes() {
        let before = assignment(&["a", "b", "c"]);
        let after = assignment(&["a", "b", "c", "d"]);
        for (x, y) in before.iter().zip(&after) {
            assert!(x == y || *y == Some("d"), "{x:?} -> {y:?}");
        }
        let moved = before.iter().zip(&after).filter(|(x, y)| x != y).count();
        assert!((180..=330).contains(&moved), "{moved}");
    }

    #[test]
    fn a_leave_moves_only_the_leavers_slots() {
        let before = assignment(&["a", "b", "c"]);
        let after = assignment(&["a", "c"]);
        for (x, y) in before.iter().zip(&after) {
            assert!(x == y || *x == Some("b"), "{x:?} -> {y:?}");
            assert_ne!(*y, Some("b"));
        }
    }

    #[test]
    fn order_of_nodes_does_not_matter() {
        assert_eq!(assignment(&["a", "b", "c"]), assignment(&["c", "a", "b"]));
    }

    #[test]
    fn weights_are_fixed() {
        // Pinned: a coordinator of another version must compute the same assignment.
        let s = Slot::new(7).expect("slot");
        assert_eq!(weight("n1", s), 0x4de5_5c5d_9546_b45c);
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
    }
}
