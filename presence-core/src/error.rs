//! Typed errors of the engine: every refusal says what was wrong and changes nothing.

use crate::UserId;

/// Why an engine call was refused. A refused call leaves the engine exactly as it was.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    #[error("user id must be 1 to {max} bytes, got {len}")]
    InvalidUserId { len: usize, max: usize },
    #[error("unknown user {0:?}")]
    UnknownUser(UserId),
    #[error("unknown or closed session")]
    UnknownSession,
    #[error("user {0:?} cannot be their own friend")]
    SelfFriendship(UserId),
    #[error("the pair ({0:?}, {1:?}) appears more than once in one request")]
    DuplicateEdge(UserId, UserId),
    #[error("user {user:?} would have {would_have} friends, over the cap of {cap}")]
    TooManyFriends {
        user: UserId,
        would_have: u64,
        cap: u32,
    },
    #[error("user {user:?} already has {cap} sessions")]
    TooManySessions { user: UserId, cap: u32 },
    #[error("status text is {len} characters, over the limit of {max}")]
    TextTooLong { len: usize, max: usize },
    #[error("the engine already has sessions: a graph can only be installed into an idle engine")]
    NotEmpty,
    #[error("too many users: dense ids are exhausted")]
    TooManyUsers,
    #[error("user {0:?} is not owned by this node: its presence is mirrored from its owner")]
    NotOwned(UserId),
    #[error("user {0:?} is owned by this node: its presence comes from its sessions")]
    Owned(UserId),
    #[error("user {0:?} still has a connected session: end its sessions before releasing it")]
    HasSessions(UserId),
    #[error("mirrored presence is invalid: {0}")]
    InvalidPresence(&'static str),
}

/// Why a configuration was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    #[error("idle thresholds must be 1 to 15 strictly increasing positive durations")]
    IdleThresholds,
    #[error("{0} must be between 1 ms and {max} ms", max = crate::config::MAX_DURATION_MS)]
    Duration(&'static str),
    #[error("shards must be a power of two between 1 and 4096, got {0}")]
    Shards(usize),
    #[error("{0} must be at least 1")]
    Zero(&'static str),
}

/// Why a snapshot was refused. A snapshot is untrusted input: nothing is loaded from a
/// snapshot that fails any of these checks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    #[error("snapshot is {len} bytes, over the limit of {max}")]
    TooLarge { len: u64, max: u64 },
    #[error("snapshot failed validation: {0}")]
    Invalid(String),
    #[error("snapshot version {0} is not supported (this build reads version {1})")]
    Version(u32, u32),
    #[error("snapshot io: {0}")]
    Io(String),
    #[error("snapshot content: {0}")]
    Content(#[from] Error),
}
