//! What a watcher sees of a user: the visible state, last-active time and custom status.

use std::sync::Arc;

/// The custom status a user sets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[repr(u8)]
pub enum Status {
    #[default]
    Available = 0,
    Busy = 1,
    Dnd = 2,
    /// Looks offline to everyone else; the user still sees their friends.
    Invisible = 3,
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Available => "available",
            Status::Busy => "busy",
            Status::Dnd => "dnd",
            Status::Invisible => "invisible",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Some(match s {
            "available" => Status::Available,
            "busy" => Status::Busy,
            "dnd" => Status::Dnd,
            "invisible" => Status::Invisible,
            _ => return None,
        })
    }

    pub(crate) fn from_u8(v: u8) -> Self {
        match v {
            1 => Status::Busy,
            2 => Status::Dnd,
            3 => Status::Invisible,
            _ => Status::Available,
        }
    }
}

/// The visible state of a user.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum State {
    Online,
    /// Idle past threshold `level` (an index into the configured idle thresholds).
    Idle(u8),
    Offline,
}

impl State {
    /// Compact code: 0 offline, 1 online, 2 + level idle.
    pub(crate) fn code(self) -> u8 {
        match self {
            State::Offline => 0,
            State::Online => 1,
            State::Idle(l) => 2 + l,
        }
    }

    pub(crate) fn from_code(c: u8) -> Self {
        match c {
            0 => State::Offline,
            1 => State::Online,
            c => State::Idle(c - 2),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            State::Online => "online",
            State::Idle(_) => "idle",
            State::Offline => "offline",
        }
    }
}

/// One user's presence as its friends see it.
///
/// Two entries are equal when a watcher could tell no difference: `last_active` counts only
/// when not online (while online it moves with every action and is not pushed), and status
/// and text only when not offline.
#[derive(Debug, Clone, Eq)]
pub struct Presence {
    pub state: State,
    /// Milliseconds since the epoch: last activity (idle), last seen (offline). `None` if the
    /// user was never seen.
    pub last_active: Option<u64>,
    pub status: Status,
    pub text: Option<Arc<str>>,
}

impl Presence {
    pub const NEVER_SEEN: Presence = Presence {
        state: State::Offline,
        last_active: None,
        status: Status::Available,
        text: None,
    };
}

impl PartialEq for Presence {
    fn eq(&self, other: &Self) -> bool {
        self.state == other.state
            && (self.state == State::Online || self.last_active == other.last_active)
            && (self.state == State::Offline
                || (self.status == other.status && self.text == other.text))
    }
}

/// One entry of a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// The user's presence is now this.
    Presence(Presence),
    /// The user is no longer the watcher's friend.
    Removed,
}
