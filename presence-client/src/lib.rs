//! `presence-client`: a Rust client of the presence engine, for apps whose backends or bots
//! are written in Rust. It speaks protocol v1 (and the v1.1 `moved` redirect) over WebSocket
//! or QUIC, with the message types of [`presence_wire`].
//!
//! - [`Client::connect`] opens one connection, says `hello` and returns the typed
//!   [`Welcome`] or a typed refusal ([`ClientError::Refused`] with the node's [`ErrorCode`]).
//!   The [`Connection`] then sends [`ClientMessage`]s and receives [`ServerMessage`]s.
//! - [`Session`] keeps a connection up: it reconnects with jittered exponential backoff
//!   ([`Backoff`]), resumes the inbox with `after` so every entry arrives once, follows a
//!   `moved` error to the node that owns the user at once, heartbeats, and reports
//!   [`Event::Connected`] and [`Event::Disconnected`] between the messages.
//! - v1.1 partial subscriptions on a [`Session`]: [`Session::focus`],
//!   [`Session::watch_group`] and [`Session::unwatch_group`] are kept and sent again after
//!   every welcome (the node forgets them with the connection); counts arrive as
//!   [`ServerMessage::GroupCounts`].
//!
//! A bot that connects, says it is active, sends a chat message and prints its friends'
//! presence changes:
//!
//! ```no_run
//! use presence_client::{ClientMessage, ConnectOptions, Event, ServerMessage, Session,
//!     SessionOptions, Transport};
//!
//! # async fn bot() -> Result<(), presence_client::ClientError> {
//! let token = std::env::var("PRESENCE_TOKEN").unwrap_or_default();
//! let connect = ConnectOptions::new(Transport::ws("127.0.0.1:7400"), token).device("bot");
//! let mut session = Session::start(SessionOptions::new(connect));
//! while let Some(event) = session.next_event().await {
//!     match event {
//!         Event::Connected(welcome) => {
//!             println!("{} is online with {} friends", welcome.user, welcome.friends.len());
//!             session.send(ClientMessage::Activity {}).await?;
//!             session
//!                 .send(ClientMessage::Send {
//!                     id: format!("hello-{}", welcome.inbox_seq),
//!                     to: Some("alice".into()),
//!                     group: None,
//!                     text: "beep boop".into(),
//!                 })
//!                 .await?;
//!         }
//!         Event::Message(ServerMessage::Presence(p)) => {
//!             for change in p.changes {
//!                 println!("{} is now {:?}", change.user, change.state);
//!             }
//!         }
//!         Event::Message(other) => println!("{other:?}"),
//!         Event::Disconnected { reason, retry_in } => {
//!             println!("disconnected ({reason}); retrying in {retry_in:?}");
//!         }
//!     }
//! }
//! # Ok(())
//! # }
//! ```
//!
//! QUIC takes the node's certificate (`<data-dir>/tls/cert.pem` for a node's dev
//! certificate): `Transport::quic("127.0.0.1:7401", "localhost",
//! QuicCert::pem_file(path)?)`, or [`QuicCert::DangerousAcceptAny`] in development.

mod backoff;
mod client;
mod error;
mod inbox;
mod session;
mod transport;
mod vanish;

pub use backoff::{Backoff, Jitter};
pub use client::{Client, ConnectOptions};
pub use error::{ClientError, Moved};
pub use inbox::InboxCursor;
pub use session::{Event, Session, SessionOptions};
pub use transport::{
    Connection, FrameReceiver, FrameSender, QuicCert, QuicEndpoint, Transport, TransportOptions,
    quic_client_config,
};
pub use vanish::Vanished;

pub use presence_wire::{
    self as wire, ClientMessage, ErrorCode, Inbox, InboxKind, Presence, PresenceEntry,
    ServerMessage, State, Status, Welcome,
};
