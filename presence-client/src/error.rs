//! What can go wrong talking to a node: [`ClientError`], and [`Moved`], the address of the
//! node that owns a user (v1.1 cluster routing).

use std::sync::Arc;

use presence_wire::ErrorCode;

/// An error of the client. Cheap to clone (an I/O error is shared), so a session can hand the
/// same reason to the app and keep it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ClientError {
    /// The socket failed (connect refused, reset, unreachable, …).
    #[error("I/O: {0}")]
    Io(Arc<std::io::Error>),
    /// The TLS handshake failed (certificate not trusted, name mismatch, no common ALPN).
    #[error("TLS: {0}")]
    Tls(String),
    /// The node answered with an `error` that ends the connection (`unauthorized`,
    /// `protocol`, …), or refused the `hello`.
    #[error("refused by the node ({}): {message}", .code.as_str())]
    Refused { code: ErrorCode, message: String },
    /// v1.1: this user's sessions belong on another node; reconnect there with `after`.
    #[error("moved to another node: {0}")]
    Moved(Moved),
    /// The node sent something this client cannot read (not JSON, not the expected message,
    /// a frame over the limit), or the WebSocket upgrade failed.
    #[error("protocol: {0}")]
    Protocol(String),
    /// Nothing arrived in time: the connect, the handshake or the welcome (`what` says which),
    /// or a live connection went silent.
    #[error("timed out: {0}")]
    Timeout(&'static str),
    /// The connection is closed (by the node, by this side, or there is none right now).
    #[error("connection closed")]
    Closed,
    /// The options cannot work (a malformed URL, an empty certificate, `wss://`).
    #[error("invalid options: {0}")]
    Config(String),
}

impl From<std::io::Error> for ClientError {
    fn from(e: std::io::Error) -> Self {
        ClientError::Io(Arc::new(e))
    }
}

impl ClientError {
    /// The error code, when the node refused.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            ClientError::Moved(_) => Some(ErrorCode::Moved),
            _ => None,
        }
    }
}

/// Where a `moved` error says the user's sessions belong: the owner's addresses as the node
/// advertises them (`host:port`, or a URL for `ws`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Moved {
    /// The WebSocket address of the owner.
    pub ws: Option<String>,
    /// The QUIC address of the owner.
    pub quic: Option<String>,
    /// The base URL of the owner's long-poll endpoints (this client does not speak long-poll).
    pub lp: Option<String>,
    /// The node's words.
    pub message: String,
}

impl std::fmt::Display for Moved {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let none = "-";
        write!(
            f,
            "ws {}, quic {} ({})",
            self.ws.as_deref().unwrap_or(none),
            self.quic.as_deref().unwrap_or(none),
            self.message
        )
    }
}

impl From<&presence_wire::Error<'_>> for ClientError {
    /// The error a closing `error` frame means for the client.
    fn from(e: &presence_wire::Error<'_>) -> Self {
        if e.code == ErrorCode::Moved {
            ClientError::Moved(Moved {
                ws: e.ws.as_deref().map(str::to_owned),
                quic: e.quic.as_deref().map(str::to_owned),
                lp: e.lp.as_deref().map(str::to_owned),
                message: e.message.to_string(),
            })
        } else {
            ClientError::Refused {
                code: e.code,
                message: e.message.to_string(),
            }
        }
    }
}

/// Maps a QUIC connection error: crypto alerts are TLS, a close by either side is `Closed`.
pub(crate) fn from_quic(e: quinn::ConnectionError) -> ClientError {
    use quinn::ConnectionError as E;
    let is_crypto = |code: quinn::TransportErrorCode| (0x100..0x200).contains(&u64::from(code));
    match e {
        E::TransportError(t) if is_crypto(t.code) => ClientError::Tls(t.to_string()),
        E::ConnectionClosed(c) if is_crypto(c.error_code) => ClientError::Tls(c.to_string()),
        E::TimedOut => ClientError::Timeout("QUIC idle timeout"),
        E::ConnectionClosed(_) | E::ApplicationClosed(_) | E::Reset | E::LocallyClosed => {
            ClientError::Closed
        }
        other => ClientError::Protocol(format!("QUIC: {other}")),
    }
}

/// Maps a WebSocket error: a dropped or closed socket is `Closed`.
pub(crate) fn from_ws(e: tokio_tungstenite::tungstenite::Error) -> ClientError {
    use tokio_tungstenite::tungstenite::Error as E;
    use tokio_tungstenite::tungstenite::error::ProtocolError as P;
    match e {
        E::ConnectionClosed | E::AlreadyClosed => ClientError::Closed,
        E::Protocol(P::ResetWithoutClosingHandshake) => ClientError::Closed,
        E::Io(io) => io.into(),
        E::Tls(t) => ClientError::Tls(t.to_string()),
        E::Url(u) => ClientError::Config(u.to_string()),
        E::Http(resp) => {
            ClientError::Protocol(format!("HTTP {} on the WebSocket upgrade", resp.status()))
        }
        other => ClientError::Protocol(other.to_string()),
    }
}
