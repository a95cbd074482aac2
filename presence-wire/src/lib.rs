//! `presence-wire`: protocol v1 (and the v1.1 additions) of the presence engine as Rust types,
//! shared by the node, its tests, the simulator's load driver and Rust clients.
//!
//! - [`ClientMessage`]: every client → server message, parsed with [`parse_client`] (one
//!   pass into the typed message; errors classified as the protocol says) and rendered with
//!   [`ClientMessage::to_frame`].
//! - [`ServerMessage`]: every server → client message, parsed with [`ServerMessage::parse`];
//!   each has its own struct (for example [`Welcome`], [`Inbox`]) that the node renders
//!   straight from borrowed data, with keys in the order the node has always written them.
//! - [`ErrorCode`] and [`ProtocolError`]: the error codes in one table ([`ERROR_CODES`]).
//! - [`MsgId`]: time-sortable 64-bit message ids, 16 hex digits on the wire.
//! - [`framing`]: frame limits, ALPN names and the QUIC length-prefixed framing.
//!
//! Nothing here does I/O: bytes in, types out, and back.

mod client_message;
mod error;
pub mod framing;
pub mod msg_id;
pub mod server_message;

pub use client_message::{CLIENT_TYPES, ClientMessage, parse_client, parse_client_value};
pub use error::{ERROR_CODES, ErrorCode, ProtocolError, error_frame};
pub use framing::{ALPN, MAX_FRAME};
pub use msg_id::{EPOCH_MS, MAX_NODE, MsgId, NODE_BITS, ParseMsgIdError, SEQ_BITS};
pub use server_message::{
    Error, GroupCount, GroupCounts, History, HistoryMessage, Inbox, InboxKind, PONG, Presence,
    PresenceEntry, SERVER_TYPES, Sent, ServerMessage, State, Status, Synced, Typing, Welcome,
    group_counts_frame, presence_frame, tag,
};
