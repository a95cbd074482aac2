//! The values the relay and the stores exchange: targets, inbox entries, stored messages.

use crate::ids::MsgId;

/// Longest user, group, client or device id accepted, in bytes (the protocol's limit).
pub const MAX_ID_LEN: usize = 128;

/// Where a message goes: one user (1:1) or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Target {
    User(String),
    Group(String),
}

impl Target {
    /// The user or group id.
    pub fn id(&self) -> &str {
        match self {
            Target::User(u) | Target::Group(u) => u,
        }
    }
}

/// What an inbox entry records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum EntryKind {
    /// A new message.
    Message,
    /// The author changed a message's text (`text` is the new text).
    Edit,
    /// The author deleted a message.
    Delete,
    /// Someone (`from`) read a message of this inbox's owner.
    Read,
}

impl EntryKind {
    /// The protocol's name: `message`, `edit`, `delete`, `read`.
    pub fn as_str(self) -> &'static str {
        match self {
            EntryKind::Message => "message",
            EntryKind::Edit => "edit",
            EntryKind::Delete => "delete",
            EntryKind::Read => "read",
        }
    }

    pub(crate) fn code(self) -> u8 {
        match self {
            EntryKind::Message => 0,
            EntryKind::Edit => 1,
            EntryKind::Delete => 2,
            EntryKind::Read => 3,
        }
    }

    pub(crate) fn from_code(c: u8) -> Option<Self> {
        Some(match c {
            0 => EntryKind::Message,
            1 => EntryKind::Edit,
            2 => EntryKind::Delete,
            3 => EntryKind::Read,
            _ => return None,
        })
    }
}

/// One entry of a user's inbox log. Every device of the user sees the same entries with the
/// same `seq`, which starts at 1 and has no gaps.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InboxEntry {
    pub seq: u64,
    pub kind: EntryKind,
    /// The message the entry is about.
    pub msg_id: MsgId,
    /// Who did it: the author for message / edit / delete, the reader for read.
    pub from: String,
    /// The original message's target. For a 1:1 message this is the *recipient* user, the
    /// same value in both the sender's and the recipient's inbox.
    pub target: Target,
    /// The text, for `Message` and `Edit`.
    pub text: Option<String>,
    /// When it happened, ms since the Unix epoch.
    pub ts: u64,
}

/// A message as the store keeps it (for history, edits, deletes and read receipts).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredMessage {
    pub msg_id: MsgId,
    pub from: String,
    pub target: Target,
    /// The current text (empty once deleted).
    pub text: String,
    /// When it was sent, ms since the Unix epoch.
    pub ts: u64,
    /// When it was last edited.
    pub edited_ts: Option<u64>,
    pub deleted: bool,
    /// The sender's client id of the `send` (its dedupe key), kept so retention can drop
    /// the dedupe row with the message.
    pub client_id: String,
}

impl StoredMessage {
    /// The conversation the message belongs to.
    pub fn conversation(&self) -> Conversation {
        Conversation::of(&self.from, &self.target)
    }
}

/// A history: the pair of users of a 1:1 conversation (smaller first), or a group.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Conversation {
    Direct(String, String),
    Group(String),
}

impl Conversation {
    /// The conversation of a message from `from` to `target`.
    pub fn of(from: &str, target: &Target) -> Self {
        match ConversationRef::of(from, target) {
            ConversationRef::Direct(a, b) => Conversation::Direct(a.to_owned(), b.to_owned()),
            ConversationRef::Group(g) => Conversation::Group(g.to_owned()),
        }
    }

    pub(crate) fn as_ref(&self) -> ConversationRef<'_> {
        match self {
            Conversation::Direct(a, b) => ConversationRef::Direct(a, b),
            Conversation::Group(g) => ConversationRef::Group(g),
        }
    }
}

/// A [`Conversation`] borrowed from a message's fields (encoding a key needs no copy of them).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ConversationRef<'a> {
    Direct(&'a str, &'a str),
    Group(&'a str),
}

impl<'a> ConversationRef<'a> {
    /// The conversation of a message from `from` to `target`: a 1:1's users smaller first.
    pub(crate) fn of(from: &'a str, target: &'a Target) -> Self {
        match target {
            Target::User(to) if from <= to.as_str() => ConversationRef::Direct(from, to),
            Target::User(to) => ConversationRef::Direct(to, from),
            Target::Group(g) => ConversationRef::Group(g),
        }
    }
}
