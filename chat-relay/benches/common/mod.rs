//! Helpers the chat-relay benches share (each bench is its own crate and takes what it uses).
#![allow(dead_code)]

/// The environment variable `name` parsed, or `default` when unset or unparsable.
pub fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// The environment variable `name` as a comma-separated list of sizes (`default` when unset);
/// entries that do not parse are skipped, zero counts as one.
pub fn env_sizes(name: &str, default: &str) -> Vec<usize> {
    let list = std::env::var(name).unwrap_or_else(|_| default.to_owned());
    list.split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .map(|n| n.max(1))
        .collect()
}

/// A scratch folder in `CHAT_BENCH_DIR` (the system's temp dir if unset), removed on drop.
pub fn tempdir() -> tempfile::TempDir {
    tempfile::tempdir_in(
        std::env::var_os("CHAT_BENCH_DIR").unwrap_or_else(|| std::env::temp_dir().into()),
    )
    .expect("creating a bench folder")
}

/// Checks that a send made a new message: the benches count every send as one, and their
/// client ids are fresh.
pub fn assert_new(sent: chat_relay::SendOutcome) {
    assert!(
        matches!(sent, chat_relay::SendOutcome::New { .. }),
        "a fresh client id made a duplicate: {sent:?}"
    );
}

/// splitmix64: a fixed stream per seed, the same for every run.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

/// A chat message's text as the benches send it: about one hundred bytes.
pub const TEXT: &str =
    "a chat message of about one hundred bytes, which is what a typical short line of text weighs";

/// A directory where everyone is friends with everyone and every group has `members`.
pub struct Everyone {
    pub members: Vec<String>,
}

impl chat_relay::Directory for Everyone {
    fn are_friends(&self, _: &str, _: &str) -> bool {
        true
    }
    fn group_members(&self, _: &str) -> Option<Vec<String>> {
        Some(self.members.clone())
    }
}
