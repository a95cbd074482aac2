//! A presence as the peer link carries it, and back: the one mapping the sending owner, the
//! receiving node and the simulator's moonshot all use.

use presence_core::{Presence, State, Status};

use crate::PeerEntry;

impl PeerEntry {
    /// `user`'s presence as its owner puts it on the wire (its custom status text, if any, goes
    /// in [`crate::SlotUpdate::texts`]). Invisible is never sent: the owner publishes an
    /// invisible user as offline already.
    pub fn from_presence(user: String, p: &Presence) -> PeerEntry {
        PeerEntry {
            last_active: p.last_active.unwrap_or(0),
            user,
            state: match p.state {
                State::Offline => 0,
                State::Online => 1,
                State::Idle(l) => 2u8.saturating_add(l),
            },
            status: match p.status {
                Status::Busy => 1,
                Status::Dnd => 2,
                Status::Available | Status::Invisible => 0,
            },
            gone: false,
        }
    }

    /// The presence a receiver reads from this entry and its text; `None` for a status code
    /// no owner sends.
    pub fn presence(&self, text: Option<&str>) -> Option<Presence> {
        let state = match self.state {
            0 => State::Offline,
            1 => State::Online,
            n => State::Idle(n - 2),
        };
        let status = match self.status {
            0 => Status::Available,
            1 => Status::Busy,
            2 => Status::Dnd,
            _ => return None,
        };
        Some(Presence {
            state,
            last_active: (self.last_active != 0).then_some(self.last_active),
            status,
            text: text.map(Into::into),
        })
    }
}
