//! The protocol's error codes, in one table, and the refusal a node sends.

use serde::{Deserialize, Serialize};

/// Error codes of protocol v1 (and the extensions the node speaks).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    /// Malformed JSON, wrong first message, oversize frame, heartbeat timeout.
    Protocol,
    /// Bad, expired or missing token.
    Unauthorized,
    /// Missing or invalid field.
    BadRequest,
    /// Text over the limit, or a group too large.
    TooLarge,
    /// Not a friend, not a group member, not your message.
    Forbidden,
    NotFound,
    RateLimited,
    /// Extension: the node could not store the operation; retrying with the same `id` is safe.
    Internal,
    /// v1.1: this user's sessions belong on another node.
    Moved,
    /// Extension (cluster): no node can serve this user right now (its slot is being
    /// assigned or loaded, or this node is cut off from etcd): reconnect with backoff.
    Unavailable,
}

/// Every error code with its wire name and whether the node closes the connection after it.
pub const ERROR_TABLE: &[(ErrorCode, &str, bool)] = &[
    (ErrorCode::Protocol, "protocol", true),
    (ErrorCode::Unauthorized, "unauthorized", true),
    (ErrorCode::BadRequest, "bad_request", false),
    (ErrorCode::TooLarge, "too_large", false),
    (ErrorCode::Forbidden, "forbidden", false),
    (ErrorCode::NotFound, "not_found", false),
    (ErrorCode::RateLimited, "rate_limited", false),
    (ErrorCode::Internal, "internal", false),
    (ErrorCode::Moved, "moved", true),
    (ErrorCode::Unavailable, "unavailable", true),
];

/// Every error code's wire name, in the order of `ERROR_TABLE`.
pub const ERROR_CODES: &[&str] = &[
    "protocol",
    "unauthorized",
    "bad_request",
    "too_large",
    "forbidden",
    "not_found",
    "rate_limited",
    "internal",
    "moved",
    "unavailable",
];

impl ErrorCode {
    fn row(self) -> &'static (ErrorCode, &'static str, bool) {
        // The table lists every variant in declaration order.
        &ERROR_TABLE[self as usize]
    }

    /// The wire name.
    pub fn as_str(self) -> &'static str {
        self.row().1
    }

    /// Whether the node closes the connection after sending this error.
    pub fn closes(self) -> bool {
        self.row().2
    }

    /// The code of a wire name.
    pub fn parse(name: &str) -> Option<ErrorCode> {
        ERROR_TABLE.iter().find(|r| r.1 == name).map(|r| r.0)
    }
}

/// A refusal to send to a client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
    /// The client id (of a `send`) this answers.
    pub id: Option<String>,
}

impl ProtocolError {
    pub fn new(code: ErrorCode, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            id: None,
        }
    }
}

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.code.as_str(), self.message)
    }
}

impl std::error::Error for ProtocolError {}

/// The `error` frame of a refusal.
pub fn error_frame(e: &ProtocolError) -> Vec<u8> {
    crate::server_message::to_vec(&crate::Error {
        kind: crate::tag::Error,
        code: e.code,
        message: e.message.as_str().into(),
        id: e.id.as_deref().map(Into::into),
        ..crate::Error::default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_table_is_in_declaration_order_and_names_match_serde() {
        for (i, (code, name, _)) in ERROR_TABLE.iter().enumerate() {
            assert_eq!(*code as usize, i);
            assert_eq!(ERROR_CODES[i], *name);
            assert_eq!(
                serde_json::to_string(code).expect("json"),
                format!("\"{name}\"")
            );
            assert_eq!(ErrorCode::parse(name), Some(*code));
        }
        assert_eq!(ERROR_TABLE.len(), ERROR_CODES.len());
        assert!(ErrorCode::Unauthorized.closes() && !ErrorCode::BadRequest.closes());
    }
}
