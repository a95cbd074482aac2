//! Protocol v1 as the node speaks it: client messages, server messages, presence entries and
//! error codes. `docs/protocol.md` is checked against this file by `tests/docs.rs`.

use chat_relay::{InboxEntry, MsgId, StoredMessage, Target};
use presence_core::{Change, Config, Presence, State};
use serde::{Deserialize, Serialize};

/// Frames over this many bytes are refused.
pub const MAX_FRAME: usize = 64 * 1024;

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
];

/// Every server message type.
pub const SERVER_TYPES: &[&str] = &[
    "welcome", "presence", "pong", "sent", "inbox", "typing", "error", "synced", "history",
];

/// Every error code.
pub const ERROR_CODES: &[&str] = &[
    "protocol",
    "unauthorized",
    "bad_request",
    "too_large",
    "forbidden",
    "not_found",
    "rate_limited",
    "internal",
];

/// A message from a client.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ClientMessage {
    Hello {
        token: String,
        #[serde(default)]
        device: Option<String>,
        #[serde(default)]
        after: Option<u64>,
    },
    Activity {},
    Heartbeat {},
    Status {
        status: String,
        #[serde(default)]
        text: Option<String>,
    },
    Send {
        id: String,
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
        group: Option<String>,
        text: String,
    },
    Ack {
        seq: u64,
    },
    Sync {
        after: u64,
        #[serde(default)]
        limit: Option<u32>,
    },
    Typing {
        #[serde(default)]
        to: Option<String>,
        #[serde(default)]
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
        #[serde(default)]
        with: Option<String>,
        #[serde(default)]
        group: Option<String>,
        #[serde(default)]
        before: Option<String>,
        #[serde(default)]
        limit: Option<u32>,
    },
}

/// Error codes of protocol v1.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ErrorCode {
    Protocol,
    Unauthorized,
    BadRequest,
    TooLarge,
    Forbidden,
    NotFound,
    RateLimited,
    /// Extension: the node could not store the operation; retrying with the same `id` is safe.
    Internal,
}

impl ErrorCode {
    pub fn as_str(self) -> &'static str {
        match self {
            ErrorCode::Protocol => "protocol",
            ErrorCode::Unauthorized => "unauthorized",
            ErrorCode::BadRequest => "bad_request",
            ErrorCode::TooLarge => "too_large",
            ErrorCode::Forbidden => "forbidden",
            ErrorCode::NotFound => "not_found",
            ErrorCode::RateLimited => "rate_limited",
            ErrorCode::Internal => "internal",
        }
    }

    /// Whether the node closes the connection after sending this error.
    pub fn closes(self) -> bool {
        matches!(self, ErrorCode::Protocol | ErrorCode::Unauthorized)
    }
}

/// The error code of a chat refusal.
pub fn chat_error_code(e: &chat_relay::ChatError) -> ErrorCode {
    use chat_relay::ChatError as E;
    match e {
        E::BadRequest(_) => ErrorCode::BadRequest,
        E::TooLarge { .. } | E::GroupTooLarge { .. } => ErrorCode::TooLarge,
        E::Forbidden(_) => ErrorCode::Forbidden,
        E::NotFound(_) => ErrorCode::NotFound,
        E::RateLimited | E::Busy { .. } => ErrorCode::RateLimited,
        E::Store(_) => ErrorCode::Internal,
    }
}

/// A refusal to send to the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError {
    pub code: ErrorCode,
    pub message: String,
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

#[derive(Serialize)]
struct ErrorFrame<'a> {
    #[serde(rename = "type")]
    kind: &'static str,
    code: &'static str,
    message: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    id: Option<&'a str>,
}

/// The `error` frame.
pub fn error_frame(e: &ProtocolError) -> Vec<u8> {
    serde_json::to_vec(&ErrorFrame {
        kind: "error",
        code: e.code.as_str(),
        message: &e.message,
        id: e.id.as_deref(),
    })
    .unwrap_or_default()
}

/// The `pong` frame.
pub const PONG: &[u8] = br#"{"type":"pong"}"#;

/// One presence entry. Fields in alphabetical order, the order serde_json's value maps keep,
/// so an entry is the same bytes in a `presence` frame, a `welcome` and the admin API.
#[derive(Serialize)]
struct EntryJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    idle_ms: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    last_active: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    removed: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    state: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    status: Option<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    user: &'a str,
}

/// Renders one presence entry (`{"user": …, "state": …}`) or a removal.
pub fn render_change(user: &str, change: &Change, cfg: &Config) -> Vec<u8> {
    let entry = match change {
        Change::Removed => EntryJson {
            user,
            state: None,
            idle_ms: None,
            last_active: None,
            status: None,
            text: None,
            removed: Some(true),
        },
        Change::Presence(p) => entry_json(user, p, cfg),
    };
    serde_json::to_vec(&entry).unwrap_or_default()
}

fn entry_json<'a>(user: &'a str, p: &'a Presence, cfg: &Config) -> EntryJson<'a> {
    let offline = p.state == State::Offline;
    EntryJson {
        user,
        state: Some(p.state.as_str()),
        idle_ms: match p.state {
            State::Idle(level) => cfg.idle_thresholds_ms.get(usize::from(level)).copied(),
            _ => None,
        },
        last_active: p.last_active,
        status: (!offline).then(|| p.status.as_str()),
        text: if offline { None } else { p.text.as_deref() },
        removed: None,
    }
}

/// Renders a presence entry as a JSON value (for welcome frames and the admin API).
pub fn presence_value(user: &str, p: &Presence, cfg: &Config) -> serde_json::Value {
    serde_json::to_value(entry_json(user, p, cfg)).unwrap_or(serde_json::Value::Null)
}

/// What a `welcome` says besides the friends.
pub struct WelcomeHead<'a> {
    pub user: &'a str,
    pub device: &'a str,
    pub inbox_seq: u64,
    pub acked_seq: u64,
    pub tick: u64,
}

/// Renders a `welcome` frame straight from the snapshot: no JSON value tree, so a connect
/// storm pays one allocation per friend less than about ten (keys listed alphabetically, as
/// the value tree wrote them).
pub fn welcome_frame<'a>(
    head: &WelcomeHead<'a>,
    friends: impl Iterator<Item = (&'a str, &'a Presence)>,
    cfg: &Config,
) -> Vec<u8> {
    #[derive(Serialize)]
    struct Welcome<'a> {
        acked_seq: u64,
        device: &'a str,
        friends: Vec<EntryJson<'a>>,
        heartbeat_ms: u64,
        idle_thresholds_ms: &'a [u64],
        inbox_seq: u64,
        tick: u64,
        #[serde(rename = "type")]
        kind: &'static str,
        user: &'a str,
    }
    let friends = friends.map(|(user, p)| entry_json(user, p, cfg)).collect();
    serde_json::to_vec(&Welcome {
        acked_seq: head.acked_seq,
        device: head.device,
        friends,
        heartbeat_ms: cfg.heartbeat_timeout_ms,
        idle_thresholds_ms: &cfg.idle_thresholds_ms,
        inbox_seq: head.inbox_seq,
        tick: head.tick,
        kind: "welcome",
        user: head.user,
    })
    .unwrap_or_default()
}

/// Assembles a `presence` frame from rendered entries.
pub fn presence_frame<'a>(tick: u64, entries: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(br#"{"type":"presence","tick":"#);
    out.extend_from_slice(tick.to_string().as_bytes());
    out.extend_from_slice(br#","changes":["#);
    for (i, e) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    out
}

// ---- chat frames ---------------------------------------------------------------------------

// serde_json here keeps object keys sorted (no `preserve_order`), so these structs list
// their fields in alphabetical order: the frames are the same bytes the node always sent.

/// A message id on the wire, as `MsgId` displays it, written without an intermediate string.
struct HexId(MsgId);

impl Serialize for HexId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&self.0)
    }
}

/// `to` or `group` of a chat target, as the wire names them.
fn target_fields(target: &Target) -> (Option<&str>, Option<&str>) {
    match target {
        Target::User(u) => (None, Some(u.as_str())),
        Target::Group(g) => (Some(g.as_str()), None),
    }
}

fn to_vec(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

#[derive(Serialize)]
struct InboxJson<'a> {
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    kind: &'static str,
    msg_id: HexId,
    seq: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    ts: u64,
    #[serde(rename = "type")]
    kind_: &'static str,
}

/// An `inbox` frame.
pub fn inbox_frame(e: &InboxEntry) -> Vec<u8> {
    let (group, to) = target_fields(&e.target);
    to_vec(&InboxJson {
        from: &e.from,
        group,
        kind: e.kind.as_str(),
        msg_id: HexId(e.msg_id),
        seq: e.seq,
        text: e.text.as_deref(),
        to,
        ts: e.ts,
        kind_: "inbox",
    })
}

#[derive(Serialize)]
struct SentJson<'a> {
    id: &'a str,
    msg_id: HexId,
    ts: u64,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A `sent` frame.
pub fn sent_frame(id: &str, msg_id: MsgId, ts: u64) -> Vec<u8> {
    to_vec(&SentJson {
        id,
        msg_id: HexId(msg_id),
        ts,
        kind: "sent",
    })
}

#[derive(Serialize)]
struct TypingJson<'a> {
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// A `typing` frame.
pub fn typing_frame(from: &str, group: Option<&str>) -> Vec<u8> {
    to_vec(&TypingJson {
        from,
        group,
        kind: "typing",
    })
}

#[derive(Serialize)]
struct SyncedJson {
    after: u64,
    last: u64,
    more: bool,
    #[serde(rename = "type")]
    kind: &'static str,
}

/// The `synced` frame closing a `sync` answer (extension).
pub fn synced_frame(after: u64, last: u64, more: bool) -> Vec<u8> {
    to_vec(&SyncedJson {
        after,
        last,
        more,
        kind: "synced",
    })
}

#[derive(Serialize)]
struct HistoryMessageJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    deleted: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    edited_ts: Option<u64>,
    from: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    msg_id: HexId,
    #[serde(skip_serializing_if = "Option::is_none")]
    text: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    to: Option<&'a str>,
    ts: u64,
}

#[derive(Serialize)]
struct HistoryJson<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    group: Option<&'a str>,
    messages: Vec<HistoryMessageJson<'a>>,
    more: bool,
    #[serde(rename = "type")]
    kind: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    with: Option<&'a str>,
}

/// A `history` frame (extension): messages newest first.
pub fn history_frame(target: &Target, messages: &[StoredMessage], more: bool) -> Vec<u8> {
    let (group, with) = target_fields(target);
    to_vec(&HistoryJson {
        group,
        messages: messages
            .iter()
            .map(|m| {
                let (group, to) = target_fields(&m.target);
                HistoryMessageJson {
                    deleted: m.deleted.then_some(true),
                    edited_ts: m.edited_ts,
                    from: &m.from,
                    group,
                    msg_id: HexId(m.msg_id),
                    text: (!m.deleted).then_some(m.text.as_str()),
                    to,
                    ts: m.ts,
                }
            })
            .collect(),
        more,
        kind: "history",
        with,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::Status;
    use std::sync::Arc;

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

    #[test]
    fn renders_entries_as_the_spec_says() {
        let cfg = Config::default();
        let idle = Change::Presence(Presence {
            state: State::Idle(2),
            last_active: Some(1_732_460_000_000),
            status: Status::Busy,
            text: Some(Arc::from("lunch")),
        });
        let v: serde_json::Value =
            serde_json::from_slice(&render_change("7", &idle, &cfg)).expect("json");
        assert_eq!(
            v,
            serde_json::json!({"user":"7","state":"idle","idle_ms":300000,
                "last_active":1732460000000u64,"status":"busy","text":"lunch"})
        );
        let gone: serde_json::Value =
            serde_json::from_slice(&render_change("7", &Change::Removed, &cfg)).expect("json");
        assert_eq!(gone, serde_json::json!({"user":"7","removed":true}));
        let never: serde_json::Value = serde_json::from_slice(&render_change(
            "8",
            &Change::Presence(Presence::NEVER_SEEN),
            &cfg,
        ))
        .expect("json");
        assert_eq!(never, serde_json::json!({"user":"8","state":"offline"}));
        let frame = presence_frame(9, [b"{}".as_slice(), b"{}".as_slice()].into_iter());
        assert_eq!(frame, br#"{"type":"presence","tick":9,"changes":[{},{}]}"#);
    }

    /// Typed entries and welcomes are byte for byte what the JSON value tree rendered.
    #[test]
    fn welcome_is_the_same_bytes_as_the_value_tree() {
        let cfg = Config::default();
        let friends = [
            (
                "alice",
                Presence {
                    state: State::Idle(1),
                    last_active: Some(1_732_460_000_000),
                    status: Status::Dnd,
                    text: Some(Arc::from("in a \"meeting\"")),
                },
            ),
            ("bob", Presence::NEVER_SEEN),
            (
                "carol",
                Presence {
                    state: State::Online,
                    last_active: Some(5),
                    status: Status::Available,
                    text: None,
                },
            ),
            (
                "dave",
                Presence {
                    state: State::Offline,
                    last_active: Some(7),
                    status: Status::Busy,
                    text: Some(Arc::from("hidden when offline")),
                },
            ),
        ];
        let head = WelcomeHead {
            user: "zoë",
            device: "phone",
            inbox_seq: 12,
            acked_seq: 9,
            tick: 77,
        };
        for (u, p) in &friends {
            let change = Change::Presence(p.clone());
            let tree = serde_json::to_vec(&presence_value(u, p, &cfg)).unwrap();
            assert_eq!(render_change(u, &change, &cfg), tree, "entry of {u}");
        }
        let typed = welcome_frame(&head, friends.iter().map(|(u, p)| (*u, p)), &cfg);
        let values: Vec<serde_json::Value> = friends
            .iter()
            .map(|(u, p)| presence_value(u, p, &cfg))
            .collect();
        let tree = serde_json::to_vec(&serde_json::json!({
            "type": "welcome",
            "user": head.user,
            "device": head.device,
            "heartbeat_ms": cfg.heartbeat_timeout_ms,
            "idle_thresholds_ms": cfg.idle_thresholds_ms,
            "inbox_seq": head.inbox_seq,
            "acked_seq": head.acked_seq,
            "tick": head.tick,
            "friends": values,
        }))
        .unwrap();
        assert_eq!(
            String::from_utf8(typed).unwrap(),
            String::from_utf8(tree).unwrap()
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

    /// The frames the node sent before they were typed structs, built the old way.
    mod reference {
        use chat_relay::{InboxEntry, StoredMessage, Target};

        fn target_fields(map: &mut serde_json::Map<String, serde_json::Value>, target: &Target) {
            match target {
                Target::User(u) => map.insert("to".into(), u.clone().into()),
                Target::Group(g) => map.insert("group".into(), g.clone().into()),
            };
        }

        fn to_frame(map: serde_json::Map<String, serde_json::Value>) -> Vec<u8> {
            serde_json::to_vec(&serde_json::Value::Object(map)).expect("json")
        }

        pub fn inbox_frame(e: &InboxEntry) -> Vec<u8> {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), "inbox".into());
            m.insert("seq".into(), e.seq.into());
            m.insert("kind".into(), e.kind.as_str().into());
            m.insert("msg_id".into(), e.msg_id.to_string().into());
            m.insert("from".into(), e.from.clone().into());
            target_fields(&mut m, &e.target);
            if let Some(t) = &e.text {
                m.insert("text".into(), t.clone().into());
            }
            m.insert("ts".into(), e.ts.into());
            to_frame(m)
        }

        pub fn typing_frame(from: &str, group: Option<&str>) -> Vec<u8> {
            let mut m = serde_json::Map::new();
            m.insert("type".into(), "typing".into());
            m.insert("from".into(), from.into());
            if let Some(g) = group {
                m.insert("group".into(), g.into());
            }
            to_frame(m)
        }

        pub fn history_frame(target: &Target, messages: &[StoredMessage], more: bool) -> Vec<u8> {
            let list: Vec<serde_json::Value> = messages
                .iter()
                .map(|msg| {
                    let mut m = serde_json::Map::new();
                    m.insert("msg_id".into(), msg.msg_id.to_string().into());
                    m.insert("from".into(), msg.from.clone().into());
                    target_fields(&mut m, &msg.target);
                    if !msg.deleted {
                        m.insert("text".into(), msg.text.clone().into());
                    }
                    m.insert("ts".into(), msg.ts.into());
                    if let Some(e) = msg.edited_ts {
                        m.insert("edited_ts".into(), e.into());
                    }
                    if msg.deleted {
                        m.insert("deleted".into(), true.into());
                    }
                    serde_json::Value::Object(m)
                })
                .collect();
            let mut m = serde_json::Map::new();
            m.insert("type".into(), "history".into());
            match target {
                Target::User(u) => m.insert("with".into(), u.clone().into()),
                Target::Group(g) => m.insert("group".into(), g.clone().into()),
            };
            m.insert("messages".into(), list.into());
            m.insert("more".into(), more.into());
            to_frame(m)
        }
    }

    #[test]
    fn chat_frames_are_the_same_bytes_as_before() {
        use chat_relay::EntryKind;
        let targets = [
            Target::User("bob".into()),
            Target::Group("g\"1\u{e9}".into()),
        ];
        let ids = [MsgId(0), MsgId(0x00a1_b2c3_d4e5_f607), MsgId(u64::MAX)];
        for target in &targets {
            for &msg_id in &ids {
                for (kind, text) in [
                    (EntryKind::Message, Some("lunch? \n \u{1f600}")),
                    (EntryKind::Edit, Some("")),
                    (EntryKind::Delete, None),
                    (EntryKind::Read, None),
                ] {
                    let e = InboxEntry {
                        seq: 41,
                        kind,
                        msg_id,
                        from: "al\\ice".into(),
                        target: target.clone(),
                        text: text.map(str::to_owned),
                        ts: 1_732_460_000_000,
                    };
                    assert_eq!(inbox_frame(&e), reference::inbox_frame(&e));
                }
                let sent = serde_json::to_vec(&serde_json::json!({
                    "type": "sent", "id": "c-\"17", "msg_id": msg_id.to_string(), "ts": 7,
                }))
                .expect("json");
                assert_eq!(sent_frame("c-\"17", msg_id, 7), sent);
                let messages: Vec<StoredMessage> =
                    [(false, None), (false, Some(9)), (true, Some(9))]
                        .into_iter()
                        .map(|(deleted, edited_ts)| StoredMessage {
                            msg_id,
                            from: "alice".into(),
                            target: target.clone(),
                            text: if deleted { String::new() } else { "hi".into() },
                            ts: 5,
                            edited_ts,
                            deleted,
                            client_id: "c".into(),
                        })
                        .collect();
                for more in [false, true] {
                    assert_eq!(
                        history_frame(target, &messages, more),
                        reference::history_frame(target, &messages, more)
                    );
                    assert_eq!(
                        history_frame(target, &[], more),
                        reference::history_frame(target, &[], more)
                    );
                }
            }
        }
        for g in [None, Some("g")] {
            assert_eq!(typing_frame("a", g), reference::typing_frame("a", g));
        }
        let synced = serde_json::to_vec(&serde_json::json!({
            "type": "synced", "after": 40, "last": 41, "more": false,
        }))
        .expect("json");
        assert_eq!(synced_frame(40, 41, false), synced);
    }
}
