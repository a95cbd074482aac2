//! Client → server messages: [`ClientMessage`], parsed by the node with [`parse_client`] and
//! written by clients with [`ClientMessage::to_frame`].

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, ProtocolError};

/// Every client message type, in the order of the spec.
pub const CLIENT_TYPES: &[&str] = &[
    "hello",
    "activity",
    "heartbeat",
    "status",
    "send",
    "ack",
    "sync",
    "typing",
    "read",
    "edit",
    "delete",
    "history",
    "watch_group",
    "unwatch_group",
    "focus",
];

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello {
        token: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        device: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        after: Option<u64>,
    },
    Activity {},
    Heartbeat {},
    Status {
        status: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        text: Option<String>,
    },
    Send {
        id: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        text: String,
    },
    Ack {
        seq: u64,
    },
    Sync {
        after: u64,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    Typing {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        to: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
    },
    Read {
        msg_id: String,
    },
    Edit {
        msg_id: String,
        text: String,
    },
    Delete {
        msg_id: String,
    },
    /// Extension: a page of one conversation's messages, newest first.
    History {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        with: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        before: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        limit: Option<u32>,
    },
    /// v1.1: `group_counts` for a group the user belongs to; with `members` (at most 200),
    /// their presence as if they were friends.
    WatchGroup {
        group: String,
        #[serde(default = "yes")]
        counts: bool,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        members: Option<Vec<String>>,
    },
    /// v1.1: stop watching a group.
    UnwatchGroup {
        group: String,
    },
    /// v1.1: only these friends' presence from now on (at most 200); `None` (`null`): every
    /// friend again.
    Focus {
        users: Option<Vec<String>>,
    },
}

fn yes() -> bool {
    true
}

impl ClientMessage {
    /// This message as one frame.
    pub fn to_frame(&self) -> Vec<u8> {
        crate::server_message::to_vec(self)
    }
}

/// Parses one client frame: malformed JSON is a `protocol` error, an unknown type or a
/// missing or invalid field a `bad_request`.
///
/// Fast path: one pass from the bytes straight into [`ClientMessage`]. Whenever that does not
/// succeed, the frame goes through [`parse_client_value`], which decides and words every
/// error; both paths accept the same frames as the same message
/// (`tests::fast_path_agrees_with_the_value_path`).
pub fn parse_client(frame: &[u8]) -> Result<ClientMessage, ProtocolError> {
    // An internally tagged enum also deserializes from a JSON array: only objects take the
    // fast path.
    let object = frame
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{');
    if object && let Ok(msg) = serde_json::from_slice::<ClientMessage>(frame) {
        return Ok(msg);
    }
    parse_client_value(frame)
}

/// The reference parser (and the error path of [`parse_client`]): JSON into a value, then
/// the type check, then the typed message.
pub fn parse_client_value(frame: &[u8]) -> Result<ClientMessage, ProtocolError> {
    let value: serde_json::Value = serde_json::from_slice(frame)
        .map_err(|e| ProtocolError::new(ErrorCode::Protocol, format!("malformed JSON: {e}")))?;
    let Some(kind) = value.get("type").and_then(|t| t.as_str()) else {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            "a message must be a JSON object with a string \"type\"",
        ));
    };
    if !CLIENT_TYPES.contains(&kind) {
        return Err(ProtocolError::new(
            ErrorCode::BadRequest,
            format!("unknown message type {kind:?}"),
        ));
    }
    let kind = kind.to_owned();
    serde_json::from_value(value)
        .map_err(|e| ProtocolError::new(ErrorCode::BadRequest, format!("invalid {kind}: {e}")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_client_type_and_classifies_errors() {
        let ok = [
            r#"{"type":"hello","token":"t"}"#,
            r#"{"type":"hello","token":"t","device":"d","after":5}"#,
            r#"{"type":"activity"}"#,
            r#"{"type":"heartbeat","extra":1}"#,
            r#"{"type":"status","status":"busy","text":"x"}"#,
            r#"{"type":"send","id":"c1","to":"7","text":"hi"}"#,
            r#"{"type":"ack","seq":3}"#,
            r#"{"type":"sync","after":0}"#,
            r#"{"type":"typing","group":"g"}"#,
            r#"{"type":"read","msg_id":"m"}"#,
            r#"{"type":"edit","msg_id":"m","text":"t"}"#,
            r#"{"type":"delete","msg_id":"m"}"#,
            r#"{"type":"watch_group","group":"g"}"#,
            r#"{"type":"watch_group","group":"g","counts":false,"members":["1","2"]}"#,
            r#"{"type":"unwatch_group","group":"g"}"#,
            r#"{"type":"focus","users":["1"]}"#,
            r#"{"type":"focus","users":null}"#,
        ];
        for f in ok {
            assert!(parse_client(f.as_bytes()).is_ok(), "{f}");
        }
        let code = |f: &str| parse_client(f.as_bytes()).err().map(|e| e.code);
        assert_eq!(code("{nope"), Some(ErrorCode::Protocol));
        assert_eq!(code("[1,2]"), Some(ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"dance"}"#), Some(ErrorCode::BadRequest));
        assert_eq!(code(r#"{"type":"hello"}"#), Some(ErrorCode::BadRequest));
        assert_eq!(
            code(r#"{"type":"ack","seq":"x"}"#),
            Some(ErrorCode::BadRequest)
        );
    }

    /// Frames every client message type can come as, right and wrong: the fast path must
    /// answer each exactly as the value path does (same message, or same code and words).
    #[test]
    fn fast_path_agrees_with_the_value_path() {
        let frames = [
            r#"{"type":"hello","token":"t"}"#,
            r#"{"type":"hello","token":"t","device":"d","after":5}"#,
            r#"{"type":"hello","token":"t","device":null,"after":null}"#,
            r#"{"type":"hello","token":5}"#,
            r#"{"type":"hello","token":"t","token":"u"}"#,
            r#"{"type":"hello","type":"hello","token":"t"}"#,
            r#"{"token":"t","type":"hello"}"#,
            r#"  {"type":"activity"}  "#,
            r#"{"type":"activity","token":5,"after":"x"}"#,
            r#"{"type":"heartbeat","extra":1}"#,
            r#"{"type":"status","status":"busy","text":"x"}"#,
            r#"{"type":"status","text":"x"}"#,
            r#"{"type":"send","id":"c1","to":"7","text":"hi"}"#,
            r#"{"type":"send","id":"c1","group":"g","text":"h\u00e9 \"q\""}"#,
            r#"{"type":"send","id":"c1","to":"7"}"#,
            r#"{"type":"send","id":"c1","to":"7","text":null}"#,
            r#"{"type":"send","id":"c1","to":7,"text":"x"}"#,
            r#"{"type":"send","id":"c1","to":"7","text":"x","after":"y"}"#,
            r#"{"type":"send","id":"c1","to":"7","text":"x","limit":-1}"#,
            r#"{"type":"ack","seq":3}"#,
            r#"{"type":"ack","seq":"x"}"#,
            r#"{"type":"ack","seq":1.5}"#,
            r#"{"type":"ack","seq":-1}"#,
            r#"{"type":"ack"}"#,
            r#"{"type":"sync","after":0}"#,
            r#"{"type":"sync","after":0,"limit":4294967296}"#,
            r#"{"type":"sync","limit":3}"#,
            r#"{"type":"typing","group":"g"}"#,
            r#"{"type":"typing","to":"u","group":"g"}"#,
            r#"{"type":"read","msg_id":"m"}"#,
            r#"{"type":"edit","msg_id":"m","text":"t"}"#,
            r#"{"type":"edit","msg_id":"m"}"#,
            r#"{"type":"delete","msg_id":"m"}"#,
            r#"{"type":"history","with":"b","before":"00a1b2c3d4e5f607","limit":20}"#,
            r#"{"type":"history"}"#,
            r#"{"type":"dance"}"#,
            r#"{"type":5}"#,
            r#"{"type":null}"#,
            r#"{}"#,
            r#"[1,2]"#,
            r#"["activity"]"#,
            r#"["hello","t",null,null]"#,
            r#""hello""#,
            r#"null"#,
            r#"{nope"#,
            r#"{"type":"activity"} x"#,
            r#"{"type":"activity""#,
            "",
        ];
        for f in frames {
            assert_eq!(
                parse_client(f.as_bytes()),
                parse_client_value(f.as_bytes()),
                "{f}"
            );
        }
    }

    #[test]
    fn rendered_messages_parse_back() {
        let msgs = [
            ClientMessage::Hello {
                token: "t".into(),
                device: None,
                after: Some(4),
            },
            ClientMessage::Activity {},
            ClientMessage::Send {
                id: "c1".into(),
                to: Some("b".into()),
                group: None,
                text: "h\u{e9} \"q\"".into(),
            },
            ClientMessage::Ack { seq: 9 },
            ClientMessage::History {
                with: None,
                group: Some("g".into()),
                before: None,
                limit: Some(3),
            },
        ];
        for m in msgs {
            assert_eq!(parse_client(&m.to_frame()), Ok(m.clone()), "{m:?}");
        }
        assert_eq!(
            ClientMessage::Activity {}.to_frame(),
            br#"{"type":"activity"}"#
        );
    }
}
