//! Server → client messages: one struct each, rendered by the node straight from borrowed
//! data and parsed by clients into owned values ([`ServerMessage::parse`]).
//!
//! Keys are written in the order the node has always written them (alphabetical, as
//! serde_json's value maps kept them, except `error` and `presence`, which lead with their
//! type): clients must not depend on it, but it keeps frames byte for byte what they were.

use std::borrow::Cow;

use serde::{Deserialize, Serialize};

use crate::{ErrorCode, MsgId};

/// Every server message type.
pub const SERVER_TYPES: &[&str] = &[
    "welcome",
    "presence",
    "pong",
    "sent",
    "inbox",
    "typing",
    "error",
    "synced",
    "history",
    "group_counts",
];

/// Zero-sized `"type"` tags: each message struct serializes its own type name, and checks
/// nothing when parsed (the enum has read it).
pub mod tag {
    macro_rules! tags {
        ($($name:ident = $wire:literal),* $(,)?) => {$(
            #[doc = concat!("The `\"type\":\"", $wire, "\"` of a frame.")]
            #[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
            pub struct $name;

            impl serde::Serialize for $name {
                fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_str($wire)
                }
            }

            /// Only its own name: a frame read straight into its struct
            /// ([`ServerMessage::parse`](super::ServerMessage::parse)) checks its type so.
            impl<'de> serde::Deserialize<'de> for $name {
                fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                    struct V;
                    impl serde::de::Visitor<'_> for V {
                        type Value = $name;
                        fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                            f.write_str(concat!("\"", $wire, "\""))
                        }
                        fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<$name, E> {
                            if v == $wire {
                                Ok($name)
                            } else {
                                Err(E::invalid_value(serde::de::Unexpected::Str(v), &self))
                            }
                        }
                    }
                    d.deserialize_str(V)
                }
            }
        )*};
    }
    tags!(
        Welcome = "welcome",
        Presence = "presence",
        Sent = "sent",
        Inbox = "inbox",
        Typing = "typing",
        Error = "error",
        Synced = "synced",
        History = "history",
        GroupCounts = "group_counts",
    );
}

/// A user's visible state.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum State {
    Online,
    Idle,
    Offline,
}

/// A custom status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub enum Status {
    Available,
    Busy,
    Dnd,
    Invisible,
}

impl Status {
    /// The status of a wire name.
    pub fn parse(s: &str) -> Option<Status> {
        match s {
            "available" => Some(Status::Available),
            "busy" => Some(Status::Busy),
            "dnd" => Some(Status::Dnd),
            "invisible" => Some(Status::Invisible),
            _ => None,
        }
    }
}

/// One friend's presence (`state` absent and `removed` true for a friend removed from the
/// list).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct PresenceEntry<'a> {
    /// Only when idle: the largest idle threshold passed, in ms.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_ms: Option<u64>,
    /// ms since the epoch; for offline users the last seen; absent if never seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_active: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub removed: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub state: Option<State>,
    /// Only when set and the user is not offline.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<Status>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
    pub user: Cow<'a, str>,
}

impl PresenceEntry<'_> {
    /// The same entry, owning its strings.
    pub fn into_owned(self) -> PresenceEntry<'static> {
        PresenceEntry {
            idle_ms: self.idle_ms,
            last_active: self.last_active,
            removed: self.removed,
            state: self.state,
            status: self.status,
            text: self.text.map(|t| Cow::Owned(t.into_owned())),
            user: Cow::Owned(self.user.into_owned()),
        }
    }
}

/// `welcome`: the session started; every friend's presence.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Welcome<'a> {
    /// Extension: this device's last ack.
    #[serde(default)]
    pub acked_seq: u64,
    pub device: Cow<'a, str>,
    pub friends: Vec<PresenceEntry<'a>>,
    pub heartbeat_ms: u64,
    pub idle_thresholds_ms: Cow<'a, [u64]>,
    pub inbox_seq: u64,
    /// Extension: the tick this snapshot follows.
    #[serde(default)]
    pub tick: u64,
    #[serde(rename = "type", default)]
    pub tag: tag::Welcome,
    pub user: Cow<'a, str>,
}

/// `presence`: one tick's changes. The node assembles it from entries rendered once per tick
/// ([`presence_frame`]); this struct is the same frame, typed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence<'a> {
    #[serde(rename = "type", default)]
    pub tag: tag::Presence,
    pub tick: u64,
    pub changes: Vec<PresenceEntry<'a>>,
}

/// `sent`: the message is durable.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Sent<'a> {
    pub id: Cow<'a, str>,
    pub msg_id: MsgId,
    pub ts: u64,
    #[serde(rename = "type", default)]
    pub tag: tag::Sent,
}

/// What an inbox entry is.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum InboxKind {
    #[default]
    Message,
    Edit,
    Delete,
    Read,
}

/// `inbox`: one entry of this user's inbox log, the same `seq` on every device.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inbox<'a> {
    pub from: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Cow<'a, str>>,
    pub kind: InboxKind,
    pub msg_id: MsgId,
    pub seq: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Cow<'a, str>>,
    pub ts: u64,
    #[serde(rename = "type", default)]
    pub tag: tag::Inbox,
}

/// `typing`: someone is typing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Typing<'a> {
    pub from: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Cow<'a, str>>,
    #[serde(rename = "type", default)]
    pub tag: tag::Typing,
}

/// `error`: a refusal; `id` names the client id it answers. With code `moved` (v1.1), the
/// owner's addresses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Error<'a> {
    #[serde(rename = "type", default)]
    pub kind: tag::Error,
    pub code: ErrorCode,
    pub message: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ws: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quic: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lp: Option<Cow<'a, str>>,
}

impl Default for Error<'_> {
    fn default() -> Self {
        Self {
            kind: tag::Error,
            code: ErrorCode::Internal,
            message: Cow::Borrowed(""),
            id: None,
            ws: None,
            quic: None,
            lp: None,
        }
    }
}

/// `synced` (extension): closes a `sync` answer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Synced {
    pub after: u64,
    pub last: u64,
    pub more: bool,
    #[serde(rename = "type", default)]
    pub tag: tag::Synced,
}

/// One watched group's counts in `group_counts`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCount<'a> {
    pub group: Cow<'a, str>,
    pub online: u64,
    pub idle: u64,
    pub total: u64,
}

/// `group_counts` (v1.1): at most one a tick, for watched groups whose counts changed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupCounts<'a> {
    #[serde(rename = "type", default)]
    pub tag: tag::GroupCounts,
    pub tick: u64,
    pub groups: Vec<GroupCount<'a>>,
}

/// One message of a `history` page.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HistoryMessage<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub deleted: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub edited_ts: Option<u64>,
    pub from: Cow<'a, str>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Cow<'a, str>>,
    pub msg_id: MsgId,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub text: Option<Cow<'a, str>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Cow<'a, str>>,
    pub ts: u64,
}

/// `history` (extension): one page of a conversation, newest first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct History<'a> {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<Cow<'a, str>>,
    pub messages: Vec<HistoryMessage<'a>>,
    pub more: bool,
    #[serde(rename = "type", default)]
    pub tag: tag::History,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub with: Option<Cow<'a, str>>,
}

/// The `pong` frame.
pub const PONG: &[u8] = br#"{"type":"pong"}"#;

/// Any server message, as a client receives it.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum ServerMessage {
    Welcome(Welcome<'static>),
    Presence(Presence<'static>),
    Pong,
    Sent(Sent<'static>),
    Inbox(Inbox<'static>),
    Typing(Typing<'static>),
    Error(Error<'static>),
    Synced(Synced),
    History(History<'static>),
    GroupCounts(GroupCounts<'static>),
    /// A type this version does not know (a newer node): ignore it.
    #[serde(other)]
    Unknown,
}

impl ServerMessage {
    /// Parses one frame.
    ///
    /// A frame whose type is its first or last member, as the node writes them
    /// (`{"type":"presence",…`, `{…,"type":"sent"}`), is read in one pass straight into its
    /// struct, whose `type` field must then hold that name, once; any other frame goes through
    /// the tagged enum, which first buffers the whole object to find its `type`. Both read
    /// every JSON frame to the same message or both refuse it (`tests/fuzz.rs` holds them to
    /// it). One difference, on frames that are not JSON serde_json reads: the one-pass read
    /// skips the members it does not know, as serde does for any struct, checking their
    /// syntax but not their text, so invalid UTF-8, a lone surrogate escape or an
    /// out-of-range number there is ignored with the member; the tagged enum decodes every
    /// member and refuses such a frame.
    pub fn parse(frame: &[u8]) -> Result<ServerMessage, serde_json::Error> {
        use serde_json::from_slice;
        match frame_type(frame) {
            Some(b"presence") => from_slice(frame).map(ServerMessage::Presence),
            Some(b"group_counts") => from_slice(frame).map(ServerMessage::GroupCounts),
            Some(b"inbox") => from_slice(frame).map(ServerMessage::Inbox),
            Some(b"sent") => from_slice(frame).map(ServerMessage::Sent),
            Some(b"typing") => from_slice(frame).map(ServerMessage::Typing),
            _ => Self::parse_tagged(frame),
        }
    }

    /// Parses one frame through the tagged enum only: what [`ServerMessage::parse`] does for
    /// frames that do not begin with their type, and the reference it is tested against.
    pub fn parse_tagged(frame: &[u8]) -> Result<ServerMessage, serde_json::Error> {
        serde_json::from_slice(frame)
    }
}

/// The type of a frame that begins `{"type":"name",` or ends `,"type":"name"}` (an unescaped
/// name): in a valid JSON object either is its top-level `type` (a nested object would end
/// `}}`; quotes inside a string are escaped). A wrong guess on invalid JSON is refused by the
/// parse it leads to.
fn frame_type(frame: &[u8]) -> Option<&[u8]> {
    if let Some(rest) = frame.strip_prefix(br#"{"type":""#) {
        let end = rest.iter().position(|&b| b == b'"' || b == b'\\')?;
        return (rest[end] == b'"').then(|| &rest[..end]);
    }
    let body = frame.strip_suffix(b"\"}")?;
    let start = body.iter().rposition(|&b| b == b'"' || b == b'\\')?;
    let name = &body[start + 1..];
    (body[start] == b'"' && body[..start].ends_with(br#","type":"#)).then_some(name)
}

pub(crate) fn to_vec(v: &impl Serialize) -> Vec<u8> {
    // Serializing these structs into memory cannot fail (string keys, no maps).
    serde_json::to_vec(v).unwrap_or_default()
}

macro_rules! to_frame {
    ($($t:ident),*) => {$(
        impl $t<'_> {
            /// This message as one frame.
            pub fn to_frame(&self) -> Vec<u8> {
                to_vec(self)
            }
        }
    )*};
}
to_frame!(
    Welcome,
    Presence,
    Sent,
    Inbox,
    Typing,
    Error,
    History,
    GroupCounts,
    PresenceEntry
);

impl Synced {
    /// This message as one frame.
    pub fn to_frame(&self) -> Vec<u8> {
        to_vec(self)
    }
}

/// Assembles a `presence` frame from entries rendered once per tick (shared by every watcher),
/// the same bytes as [`Presence::to_frame`].
pub fn presence_frame<'a>(tick: u64, entries: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    list_frame(
        br#"{"type":"presence","tick":"#,
        br#","changes":["#,
        tick,
        entries,
    )
}

/// A `group_counts` frame from pre-rendered [`GroupCount`] entries (each group's counts are
/// rendered once per tick and shared by every session watching it).
pub fn group_counts_frame<'a>(tick: u64, entries: impl Iterator<Item = &'a [u8]>) -> Vec<u8> {
    list_frame(
        br#"{"type":"group_counts","tick":"#,
        br#","groups":["#,
        tick,
        entries,
    )
}

/// `head` tick `list` entries (comma-separated) `]}`.
fn list_frame<'a>(
    head: &[u8],
    list: &[u8],
    tick: u64,
    entries: impl Iterator<Item = &'a [u8]>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(256);
    out.extend_from_slice(head);
    out.extend_from_slice(tick.to_string().as_bytes());
    out.extend_from_slice(list);
    for (i, e) in entries.enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(e);
    }
    out.extend_from_slice(b"]}");
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_counts_frame_parses_as_the_message() {
        let g = serde_json::to_vec(&GroupCount {
            group: "g".into(),
            online: 2,
            idle: 1,
            total: 9,
        })
        .expect("renders");
        let frame = group_counts_frame(7, [g.as_slice(), g.as_slice()].into_iter());
        let parsed: GroupCounts<'_> = serde_json::from_slice(&frame).expect("parses");
        assert_eq!(parsed.tick, 7);
        assert_eq!(parsed.groups.len(), 2);
        assert_eq!(parsed.groups[0].total, 9);
    }

    fn entry(user: &str) -> PresenceEntry<'_> {
        PresenceEntry {
            user: user.into(),
            state: Some(State::Idle),
            idle_ms: Some(300_000),
            last_active: Some(1_732_460_000_000),
            status: Some(Status::Busy),
            text: Some("in a \"meeting\"".into()),
            removed: None,
        }
    }

    #[test]
    fn assembled_presence_is_the_typed_frame() {
        let entries = [entry("a"), entry("b")];
        let rendered: Vec<Vec<u8>> = entries.iter().map(PresenceEntry::to_frame).collect();
        let assembled = presence_frame(9, rendered.iter().map(Vec::as_slice));
        let typed = Presence {
            tick: 9,
            changes: entries.to_vec(),
            ..Presence::default()
        };
        assert_eq!(assembled, typed.to_frame());
        assert_eq!(
            ServerMessage::parse(&assembled).expect("parse"),
            ServerMessage::Presence(Presence {
                tick: 9,
                changes: entries
                    .iter()
                    .map(|e| PresenceEntry {
                        user: e.user.to_string().into(),
                        text: e.text.as_ref().map(|t| t.to_string().into()),
                        ..e.clone()
                    })
                    .collect(),
                ..Presence::default()
            })
        );
    }

    #[test]
    fn every_server_type_parses_and_unknown_types_are_ignored() {
        let frames = [
            r#"{"acked_seq":0,"device":"d","friends":[{"state":"offline","user":"b"}],"heartbeat_ms":45000,"idle_thresholds_ms":[60000],"inbox_seq":0,"tick":3,"type":"welcome","user":"a"}"#,
            r#"{"type":"presence","tick":4,"changes":[{"removed":true,"user":"b"}]}"#,
            r#"{"type":"pong"}"#,
            r#"{"id":"c1","msg_id":"0553540624800000","ts":1,"type":"sent"}"#,
            r#"{"from":"a","kind":"message","msg_id":"0553540624800000","seq":1,"text":"hi","to":"b","ts":1,"type":"inbox"}"#,
            r#"{"from":"a","group":"g","type":"typing"}"#,
            r#"{"type":"error","code":"moved","message":"elsewhere","ws":"127.0.0.1:1"}"#,
            r#"{"after":0,"last":3,"more":false,"type":"synced"}"#,
            r#"{"messages":[{"from":"a","msg_id":"0553540624800000","text":"x","to":"b","ts":1}],"more":false,"type":"history","with":"b"}"#,
            r#"{"type":"group_counts","tick":1,"groups":[{"group":"g","online":2,"idle":1,"total":9}]}"#,
        ];
        assert_eq!(frames.len(), SERVER_TYPES.len());
        for (f, t) in frames.iter().zip(SERVER_TYPES) {
            let m = ServerMessage::parse(f.as_bytes()).unwrap_or_else(|e| panic!("{f}: {e}"));
            assert_ne!(m, ServerMessage::Unknown, "{t}");
        }
        assert_eq!(
            ServerMessage::parse(br#"{"type":"read_receipts","tick":1}"#).ok(),
            Some(ServerMessage::Unknown)
        );
        assert!(ServerMessage::parse(b"{nope").is_err());
    }

    /// Frames where guessing the type from the first or last member could go wrong: `parse`
    /// must read each as the tagged enum does.
    #[test]
    fn the_type_is_taken_only_from_the_top_level_type_member() {
        let frames: &[&[u8]] = &[
            // A value that is a type name, last: not the type.
            br#"{"from":"a","type":"typing","group":"sent"}"#,
            br#"{"from":"a","type":"typing","group":"inbox"}"#,
            // A nested object's type last.
            br#"{"type":"typing","from":"a","x":{"type":"sent"}}"#,
            br#"{"from":"a","type":"typing","x":{"y":1,"type":"sent"}}"#,
            // The type twice, or of another kind, or escaped.
            br#"{"type":"sent","id":"c","msg_id":"0553540624800000","ts":1,"type":"sent"}"#,
            br#"{"type":"sent","id":"c","msg_id":"0553540624800000","ts":1,"type":"inbox"}"#,
            br#"{"id":"c","msg_id":"0553540624800000","ts":1,"type":"s\u0065nt"}"#,
            br#"{"type":"s\u0065nt","id":"c","msg_id":"0553540624800000","ts":1}"#,
            // A string holding what looks like a type member.
            br#"{"from":"a","group":"\",\"type\":\"sent\"}","type":"typing"}"#,
            br#"{"type":"presence","tick":1,"changes":[]} "#,
            br#"{"type":"presence","tick":1,"changes":[]}"#,
            br#"{"type":"presence"}"#,
            br#"{"type":7}"#,
            br#"{"type":"sent"}"#,
        ];
        for f in frames {
            let (direct, tagged) = (ServerMessage::parse(f), ServerMessage::parse_tagged(f));
            assert_eq!(
                direct.as_ref().ok(),
                tagged.as_ref().ok(),
                "{}",
                String::from_utf8_lossy(f)
            );
            assert_eq!(
                direct.is_ok(),
                tagged.is_ok(),
                "{}",
                String::from_utf8_lossy(f)
            );
        }
        assert!(matches!(
            ServerMessage::parse(frames[0]),
            Ok(ServerMessage::Typing(_))
        ));
    }
}
