//! What can go wrong, typed: bad input is refused before any transaction starts (so nothing is
//! written), and everything else is the database's own error or a value it should never hold.

/// The longest user or group id, in bytes (the protocol's limit).
pub const MAX_ID_BYTES: usize = 128;

/// Why a call failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An id that is empty or longer than [`MAX_ID_BYTES`].
    #[error("{what} id must be 1 to {MAX_ID_BYTES} bytes, got {len}")]
    BadId { what: &'static str, len: usize },
    /// A pair naming the same user twice.
    #[error("a user cannot be their own friend: {0:?}")]
    SelfFriendship(String),
    /// The same friendship (in either direction) twice in one request.
    #[error("the friendship ({0:?}, {1:?}) appears more than once in one request")]
    DuplicatePair(String, String),
    /// A slot number past the last slot.
    #[error("slot {0} is past the last slot")]
    BadSlot(u16),
    /// A write would give a user more friends than the cluster's cap (`--max-friends`).
    #[error("user {user:?} would have {would_have} friends, over the cap of {cap}")]
    TooManyFriends {
        user: String,
        would_have: u64,
        cap: u32,
    },
    /// A custom status the store does not know.
    #[error("status must be available, busy, dnd or invisible, got {0:?}")]
    BadStatus(String),
    /// The database was migrated by a newer build.
    #[error("the database's schema version {found} is newer than this build's {known}")]
    SchemaTooNew { found: i32, known: i32 },
    /// A stored value this crate would never have written (an id that is not UTF-8, say).
    #[error("the database holds a value this crate did not write: {0}")]
    Corrupt(String),
    /// The connection closed while being reopened (try again).
    #[error("the PostgreSQL connection closed")]
    Closed,
    /// PostgreSQL refused, or the connection failed.
    #[error("PostgreSQL: {0}")]
    Db(#[from] tokio_postgres::Error),
}

impl Error {
    /// Whether retrying the same call may succeed: a deadlock or serialization failure rolled
    /// the transaction back, or the connection closed under it (the store reopens it on the
    /// next call). Retrying a write is safe: every write is idempotent in effect, so one that
    /// did commit before the connection closed changes (and logs) nothing the second time.
    pub fn is_transient(&self) -> bool {
        use tokio_postgres::error::SqlState;
        match self {
            Error::Closed => true,
            Error::Db(e) => {
                e.is_closed()
                    || matches!(
                        e.code(),
                        Some(c) if *c == SqlState::T_R_DEADLOCK_DETECTED
                            || *c == SqlState::T_R_SERIALIZATION_FAILURE
                            || *c == SqlState::ADMIN_SHUTDOWN
                            || *c == SqlState::CRASH_SHUTDOWN
                    )
            }
            _ => false,
        }
    }
}

/// Refuses an id the protocol would not accept.
pub(crate) fn check_id(what: &'static str, id: &str) -> Result<(), Error> {
    if id.is_empty() || id.len() > MAX_ID_BYTES {
        return Err(Error::BadId {
            what,
            len: id.len(),
        });
    }
    Ok(())
}

/// A stored id back as a string.
pub(crate) fn id_from(bytes: Vec<u8>) -> Result<String, Error> {
    String::from_utf8(bytes).map_err(|e| Error::Corrupt(format!("an id that is not UTF-8: {e}")))
}
