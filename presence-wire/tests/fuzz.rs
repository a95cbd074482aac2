//! Fuzzing on the stable toolchain (issue #15): properties of every decoder in this crate that
//! a peer's bytes reach, checked with proptest.
//!
//! - client frames, as the node decodes them: [`parse_client`] and its reference path
//!   [`parse_client_value`];
//! - server frames, as clients decode them: [`ServerMessage::parse`];
//! - the QUIC framing: [`quic_codec`].
//!
//! Inputs stay under 4 KiB, except the codec's near-`MAX_FRAME` property, whose frames are
//! about 64 KiB. CI runs the default case counts: this file takes about 10 s in debug on a busy
//! 2-core machine. A long run is one variable away (`--nocapture` shows each property's count
//! and time):
//!
//! ```text
//! FUZZ_CASES=200000 cargo test --release -p presence-wire --test fuzz -- --nocapture
//! ```
//!
//! In release, 2,000,000 cases of every property took about 4 minutes on the busy 2-core
//! development machine.
//!
//! `FUZZ_CASES` sets the cases of every property, except the near-`MAX_FRAME` one, which runs a
//! quarter of them. Every run draws the same inputs (each property seeds from its name), so CI
//! is repeatable; a long run should explore: `PROPTEST_RNG_SEED=<a new number>`. A failure
//! prints the smallest input proptest shrank it to, and proptest saves its seed in
//! `tests/fuzz.proptest-regressions` (commit it) to replay first from then on.

use std::fmt::Debug;

use bytes::{Bytes, BytesMut};
use presence_wire::framing::{quic_codec, quic_frame};
use presence_wire::{
    CLIENT_TYPES, ClientMessage, ERROR_CODES, Error, ErrorCode, GroupCount, GroupCounts, History,
    HistoryMessage, Inbox, InboxKind, MAX_FRAME, MsgId, PONG, Presence, PresenceEntry,
    ProtocolError, SERVER_TYPES, Sent, ServerMessage, State, Status, Synced, Typing, Welcome,
    error_frame, parse_client, parse_client_value, presence_frame,
};
use proptest::prelude::*;
use proptest::sample::{Index, select};
use proptest::test_runner::TestCaseError;
use tokio_util::codec::{Decoder, Encoder, LengthDelimitedCodecError};

// ---- the runner and shared generators (tests/support) -------------------------------------

mod support;
use support::{Frame, Mutation, bytes, mutate, text};

/// [`support::fuzz`], with failing seeds saved next to this file.
fn fuzz<S>(
    name: &str,
    default_cases: u32,
    weight: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    support::fuzz(file!(), name, default_cases, weight, strategy, test);
}

fn opt_text(max: usize) -> impl Strategy<Value = Option<String>> {
    proptest::option::of(text(max))
}

/// Numbers with the edges JSON gets wrong (2^53, i64::MAX, u64::MAX) well represented.
fn num() -> impl Strategy<Value = u64> {
    prop_oneof![
        2 => any::<u64>(),
        2 => 0..1000u64,
        1 => select(vec![
            0,
            1,
            u64::from(u32::MAX),
            u64::from(u32::MAX) + 1,
            (1 << 53) - 1,
            1 << 53,
            (1 << 53) + 1,
            i64::MAX as u64,
            i64::MAX as u64 + 1,
            u64::MAX - 1,
            u64::MAX,
        ]),
    ]
}

fn small_num() -> impl Strategy<Value = u32> {
    prop_oneof![any::<u32>(), 0..100u32, Just(u32::MAX)]
}

/// Fragments that steer a JSON parser into its corners.
const TOKENS: &[&[u8]] = &[
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"\\udc00",
    b"\\u0000",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"true",
    b"-",
    b"-0",
    b"0",
    b"1e999",
    b"1.5",
    b"18446744073709551616",
    b"-9223372036854775809",
    b"\"type\"",
    b"\"type\":\"hello\",",
    b"\"token\":\"t\",",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",
    b" ",
    b"\x0c",
];

fn mutation() -> impl Strategy<Value = Mutation> {
    support::mutation(TOKENS)
}

/// Frames from `base`, most edited once or twice (a frame edited more is rarely JSON), some up
/// to eight times.
fn mutated(base: impl Strategy<Value = Vec<u8>>) -> impl Strategy<Value = Vec<u8>> {
    let edits = prop_oneof![
        3 => proptest::collection::vec(mutation(), 1..=2),
        1 => proptest::collection::vec(mutation(), 3..=8),
    ];
    (base, edits).prop_map(|(f, m)| mutate(f, &m))
}

fn arbitrary_bytes() -> impl Strategy<Value = Vec<u8>> {
    bytes(0..4096)
}

// ---- 1. client frames -------------------------------------------------------------------------

fn client_message() -> impl Strategy<Value = ClientMessage> {
    let s = || text(40);
    let o = || opt_text(40);
    prop_oneof![
        (s(), o(), proptest::option::of(num()))
            .prop_map(|(token, device, after)| ClientMessage::Hello {
                token,
                device,
                after
            })
            .boxed(),
        Just(ClientMessage::Activity {}).boxed(),
        Just(ClientMessage::Heartbeat {}).boxed(),
        (s(), o())
            .prop_map(|(status, text)| ClientMessage::Status { status, text })
            .boxed(),
        (s(), o(), o(), text(200))
            .prop_map(|(id, to, group, text)| ClientMessage::Send {
                id,
                to,
                group,
                text
            })
            .boxed(),
        num().prop_map(|seq| ClientMessage::Ack { seq }).boxed(),
        (num(), proptest::option::of(small_num()))
            .prop_map(|(after, limit)| ClientMessage::Sync { after, limit })
            .boxed(),
        (o(), o())
            .prop_map(|(to, group)| ClientMessage::Typing { to, group })
            .boxed(),
        s().prop_map(|msg_id| ClientMessage::Read { msg_id })
            .boxed(),
        (s(), text(200))
            .prop_map(|(msg_id, text)| ClientMessage::Edit { msg_id, text })
            .boxed(),
        s().prop_map(|msg_id| ClientMessage::Delete { msg_id })
            .boxed(),
        (o(), o(), o(), proptest::option::of(small_num()))
            .prop_map(|(with, group, before, limit)| ClientMessage::History {
                with,
                group,
                before,
                limit
            })
            .boxed(),
        (
            s(),
            any::<bool>(),
            proptest::option::of(proptest::collection::vec(s(), 0..4))
        )
            .prop_map(|(group, counts, members)| ClientMessage::WatchGroup {
                group,
                counts,
                members
            })
            .boxed(),
        s().prop_map(|group| ClientMessage::UnwatchGroup { group })
            .boxed(),
        proptest::option::of(proptest::collection::vec(s(), 0..4))
            .prop_map(|users| ClientMessage::Focus { users })
            .boxed(),
    ]
}

/// A JSON text as a tree that can say what `serde_json::Value` cannot: duplicate keys, and
/// numbers written as any token.
#[derive(Debug, Clone)]
enum Json {
    Raw(&'static str),
    Num(u64),
    Neg(i64),
    Float(f64),
    Str(String),
    Arr(Vec<Json>),
    Obj(Vec<(String, Json)>),
    /// Arrays this deep, around the parser's recursion limit (128).
    Deep(usize),
}

impl Json {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Json::Raw(t) => out.extend_from_slice(t.as_bytes()),
            Json::Num(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Json::Neg(n) => out.extend_from_slice(n.to_string().as_bytes()),
            Json::Float(x) => out.extend_from_slice(format!("{x:?}").as_bytes()),
            Json::Str(s) => write_str(s, out),
            Json::Deep(n) => {
                out.extend(std::iter::repeat_n(b'[', *n));
                out.extend(std::iter::repeat_n(b']', *n));
            }
            Json::Arr(items) => {
                out.push(b'[');
                for (i, v) in items.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    v.write(out);
                }
                out.push(b']');
            }
            Json::Obj(pairs) => {
                out.push(b'{');
                for (i, (k, v)) in pairs.iter().enumerate() {
                    if i > 0 {
                        out.push(b',');
                    }
                    write_str(k, out);
                    out.push(b':');
                    v.write(out);
                }
                out.push(b'}');
            }
        }
    }
}

fn write_str(s: &str, out: &mut Vec<u8>) {
    // Writing a string into memory cannot fail.
    serde_json::to_writer(&mut *out, s).expect("a string serializes");
}

/// Every field name a client message has, and a stranger.
const FIELDS: &[&str] = &[
    "type", "token", "device", "after", "status", "text", "id", "to", "group", "seq", "limit",
    "msg_id", "with", "before", "extra",
];

fn json_key() -> impl Strategy<Value = String> {
    prop_oneof![
        8 => select(&FIELDS[1..]).prop_map(str::to_owned),
        1 => Just("type".to_owned()),
        2 => text(8),
    ]
}

fn json_value() -> impl Strategy<Value = Json> {
    let leaf = prop_oneof![
        1 => select(vec![
            "null", "true", "false", "-0", "0.0", "1e2", "1e999", "-1e999", "1E+2", "-1",
            "18446744073709551616", "4294967296", "9007199254740993", "\"\\ud800\"",
        ])
        .prop_map(Json::Raw),
        1 => num().prop_map(Json::Num),
        1 => any::<i64>().prop_map(Json::Neg),
        1 => proptest::num::f64::NORMAL.prop_map(Json::Float),
        4 => text(16).prop_map(Json::Str),
        2 => select(CLIENT_TYPES).prop_map(|t| Json::Str(t.to_owned())),
        1 => (120..136usize).prop_map(Json::Deep),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Json::Arr),
            proptest::collection::vec((json_key(), inner), 0..4).prop_map(Json::Obj),
        ]
    })
}

/// An object with a known `"type"` somewhere among random fields (sometimes a second `type`).
fn typed_object() -> impl Strategy<Value = Vec<u8>> {
    (
        select(CLIENT_TYPES),
        proptest::collection::vec((json_key(), json_value()), 0..6),
        any::<Index>(),
        proptest::option::weighted(0.1, json_value()),
    )
        .prop_map(|(kind, mut pairs, at, second_type)| {
            let at = at.index(pairs.len() + 1);
            pairs.insert(at, ("type".to_owned(), Json::Str(kind.to_owned())));
            if let Some(v) = second_type {
                pairs.push(("type".to_owned(), v));
            }
            let mut out = Vec::new();
            Json::Obj(pairs).write(&mut out);
            out
        })
}

/// The fast path's contract: the same message, or the same error code and words.
fn paths_agree(frame: &[u8]) -> Result<(), TestCaseError> {
    let fast = parse_client(frame);
    let reference = parse_client_value(frame);
    prop_assert_eq!(
        &fast,
        &reference,
        "frame {:?}",
        String::from_utf8_lossy(frame)
    );
    if let Err(ProtocolError { code, .. }) = fast {
        prop_assert!(matches!(code, ErrorCode::Protocol | ErrorCode::BadRequest));
    }
    Ok(())
}

#[test]
fn client_messages_round_trip() {
    fuzz("client round trip", 2000, 1, client_message(), |m| {
        let frame = m.to_frame();
        prop_assert!(frame.len() < 4096);
        prop_assert_eq!(parse_client(&frame), Ok(m.clone()));
        prop_assert_eq!(parse_client_value(&frame), Ok(m));
        Ok(())
    });
}

#[test]
fn mutated_client_frames_parse_the_same_on_both_paths() {
    let frames = prop_oneof![
        3 => mutated(client_message().prop_map(|m| m.to_frame())),
        2 => mutated(typed_object()),
    ];
    fuzz(
        "client mutated frames",
        3000,
        1,
        frames.prop_map(Frame),
        |f| paths_agree(&f.0),
    );
}

#[test]
fn random_typed_objects_parse_the_same_on_both_paths() {
    let frames = typed_object().prop_map(Frame);
    fuzz("client typed objects", 3000, 1, frames, |f| {
        paths_agree(&f.0)
    });
}

#[test]
fn arbitrary_bytes_parse_the_same_on_both_paths() {
    let bytes = prop_oneof![
        arbitrary_bytes(),
        // Mostly JSON punctuation and letters: gets further into the parser than noise.
        proptest::collection::vec(
            select(b"{}[]\":,. -0123456789eEtruefalsn\\ \"type\"".to_vec()),
            0..256
        ),
    ];
    fuzz(
        "client arbitrary bytes",
        2000,
        1,
        bytes.prop_map(Frame),
        |f| paths_agree(&f.0),
    );
}

// ---- 2. server frames -------------------------------------------------------------------------

fn cow(s: String) -> std::borrow::Cow<'static, str> {
    s.into()
}

fn opt_cow(max: usize) -> impl Strategy<Value = Option<std::borrow::Cow<'static, str>>> {
    opt_text(max).prop_map(|o| o.map(cow))
}

fn state() -> impl Strategy<Value = State> {
    select(vec![State::Online, State::Idle, State::Offline])
}

fn status() -> impl Strategy<Value = Status> {
    select(vec![
        Status::Available,
        Status::Busy,
        Status::Dnd,
        Status::Invisible,
    ])
}

fn presence_entry() -> impl Strategy<Value = PresenceEntry<'static>> {
    (
        proptest::option::of(num()),
        proptest::option::of(num()),
        proptest::option::of(any::<bool>()),
        proptest::option::of(state()),
        proptest::option::of(status()),
        opt_cow(40),
        text(40),
    )
        .prop_map(
            |(idle_ms, last_active, removed, state, status, text, user)| PresenceEntry {
                idle_ms,
                last_active,
                removed,
                state,
                status,
                text,
                user: cow(user),
            },
        )
}

fn msg_id() -> impl Strategy<Value = MsgId> {
    num().prop_map(MsgId)
}

fn history_message() -> impl Strategy<Value = HistoryMessage<'static>> {
    (
        proptest::option::of(any::<bool>()),
        proptest::option::of(num()),
        text(20),
        opt_cow(20),
        msg_id(),
        opt_cow(80),
        opt_cow(20),
        num(),
    )
        .prop_map(
            |(deleted, edited_ts, from, group, msg_id, text, to, ts)| HistoryMessage {
                deleted,
                edited_ts,
                from: cow(from),
                group,
                msg_id,
                text,
                to,
                ts,
            },
        )
}

fn error_code() -> impl Strategy<Value = ErrorCode> {
    select(ERROR_CODES).prop_map(|n| ErrorCode::parse(n).expect("a code of the table"))
}

/// A server message as the node renders it, with the value a client must parse it back to.
fn server_frame() -> impl Strategy<Value = (Vec<u8>, ServerMessage)> {
    let entries = || proptest::collection::vec(presence_entry(), 0..6);
    prop_oneof![
        (
            num(),
            text(20),
            entries(),
            num(),
            proptest::collection::vec(num(), 0..4),
            num(),
            num(),
            text(40),
        )
            .prop_map(
                |(acked_seq, device, friends, heartbeat_ms, idle, inbox_seq, tick, user)| {
                    let w = Welcome {
                        acked_seq,
                        device: cow(device),
                        friends,
                        heartbeat_ms,
                        idle_thresholds_ms: idle.into(),
                        inbox_seq,
                        tick,
                        user: cow(user),
                        ..Welcome::default()
                    };
                    (w.to_frame(), ServerMessage::Welcome(w))
                }
            )
            .boxed(),
        (num(), entries(), any::<bool>())
            .prop_map(|(tick, changes, assembled)| {
                let p = Presence {
                    tick,
                    changes,
                    ..Presence::default()
                };
                let frame = if assembled {
                    let rendered: Vec<Vec<u8>> =
                        p.changes.iter().map(PresenceEntry::to_frame).collect();
                    presence_frame(tick, rendered.iter().map(Vec::as_slice))
                } else {
                    p.to_frame()
                };
                (frame, ServerMessage::Presence(p))
            })
            .boxed(),
        Just((PONG.to_vec(), ServerMessage::Pong)).boxed(),
        (text(40), msg_id(), num())
            .prop_map(|(id, msg_id, ts)| {
                let s = Sent {
                    id: cow(id),
                    msg_id,
                    ts,
                    ..Sent::default()
                };
                (s.to_frame(), ServerMessage::Sent(s))
            })
            .boxed(),
        (
            text(40),
            opt_cow(40),
            select(vec![
                InboxKind::Message,
                InboxKind::Edit,
                InboxKind::Delete,
                InboxKind::Read
            ]),
            msg_id(),
            num(),
            opt_cow(200),
            opt_cow(40),
            num(),
        )
            .prop_map(|(from, group, kind, msg_id, seq, text, to, ts)| {
                let i = Inbox {
                    from: cow(from),
                    group,
                    kind,
                    msg_id,
                    seq,
                    text,
                    to,
                    ts,
                    ..Inbox::default()
                };
                (i.to_frame(), ServerMessage::Inbox(i))
            })
            .boxed(),
        (text(40), opt_cow(40))
            .prop_map(|(from, group)| {
                let t = Typing {
                    from: cow(from),
                    group,
                    ..Typing::default()
                };
                (t.to_frame(), ServerMessage::Typing(t))
            })
            .boxed(),
        (
            error_code(),
            text(80),
            opt_cow(20),
            opt_cow(30),
            opt_cow(30),
            opt_cow(30),
        )
            .prop_map(|(code, message, id, ws, quic, lp)| {
                let e = Error {
                    code,
                    message: cow(message),
                    id,
                    ws,
                    quic,
                    lp,
                    ..Error::default()
                };
                (e.to_frame(), ServerMessage::Error(e))
            })
            .boxed(),
        (error_code(), text(80), opt_text(20))
            .prop_map(|(code, message, id)| {
                let p = ProtocolError {
                    code,
                    message: message.clone(),
                    id: id.clone(),
                };
                let e = Error {
                    code,
                    message: cow(message),
                    id: id.map(cow),
                    ..Error::default()
                };
                (error_frame(&p), ServerMessage::Error(e))
            })
            .boxed(),
        (num(), num(), any::<bool>())
            .prop_map(|(after, last, more)| {
                let s = Synced {
                    after,
                    last,
                    more,
                    ..Synced::default()
                };
                (s.to_frame(), ServerMessage::Synced(s))
            })
            .boxed(),
        (
            opt_cow(40),
            proptest::collection::vec(history_message(), 0..5),
            any::<bool>(),
            opt_cow(40),
        )
            .prop_map(|(group, messages, more, with)| {
                let h = History {
                    group,
                    messages,
                    more,
                    with,
                    ..History::default()
                };
                (h.to_frame(), ServerMessage::History(h))
            })
            .boxed(),
        (
            num(),
            proptest::collection::vec((text(20), num(), num(), num()), 0..4),
        )
            .prop_map(|(tick, groups)| {
                let g = GroupCounts {
                    tick,
                    groups: groups
                        .into_iter()
                        .map(|(group, online, idle, total)| GroupCount {
                            group: cow(group),
                            online,
                            idle,
                            total,
                        })
                        .collect(),
                    ..GroupCounts::default()
                };
                (g.to_frame(), ServerMessage::GroupCounts(g))
            })
            .boxed(),
    ]
}

/// A frame of a type this version does not know, with random fields: a newer node's.
fn unknown_server_frame() -> impl Strategy<Value = Vec<u8>> {
    (
        text(12),
        proptest::collection::vec((json_key(), json_value()), 0..5),
    )
        .prop_map(|(kind, mut pairs)| {
            let mut kind = kind;
            if SERVER_TYPES.contains(&kind.as_str()) {
                kind.push_str("_v2");
            }
            pairs.retain(|(k, _)| k != "type");
            pairs.insert(0, ("type".to_owned(), Json::Str(kind)));
            let mut out = Vec::new();
            Json::Obj(pairs).write(&mut out);
            out
        })
}

#[test]
fn server_messages_round_trip() {
    let frames = server_frame().prop_map(|(f, m)| (Frame(f), m));
    fuzz("server round trip", 2000, 1, frames, |(Frame(frame), m)| {
        prop_assert!(frame.len() < 4096 * 4);
        let parsed = ServerMessage::parse(&frame);
        prop_assert!(
            parsed.as_ref().ok() == Some(&m),
            "frame {:?} parsed to {:?}",
            String::from_utf8_lossy(&frame),
            parsed
        );
        Ok(())
    });
}

/// Unknown types are ignored, whatever their fields, as long as the frame is JSON serde_json
/// reads (the generator also writes `1e999` and lone surrogates, which it refuses).
#[test]
fn unknown_server_types_are_ignored() {
    let frames = unknown_server_frame().prop_map(Frame);
    fuzz("server unknown types", 1000, 1, frames, |Frame(f)| {
        let parsed = ServerMessage::parse(&f);
        let is_json = serde_json::from_slice::<serde_json::Value>(&f).is_ok();
        prop_assert_eq!(parsed.is_ok(), is_json, "{:?}", parsed);
        prop_assert!(parsed.is_err() || matches!(parsed, Ok(ServerMessage::Unknown)));
        Ok(())
    });
}

/// `parse` reads a frame whose type comes first or last straight into its struct; the tagged
/// enum (`parse_tagged`) is the reference: the same message or both refuse, for well-formed,
/// mutated (duplicated, cut, spliced) and arbitrary frames, and for frames with their `type`
/// moved to the front, the back or the middle.
#[test]
fn the_direct_parse_reads_what_the_tagged_enum_reads() {
    let moved = || {
        server_frame().prop_map(|(f, _)| f).prop_flat_map(|f| {
            (Just(f), 0usize..3).prop_map(|(f, at)| {
                let Ok(serde_json::Value::Object(m)) = serde_json::from_slice(&f) else {
                    return f;
                };
                let mut pairs: Vec<_> = m.into_iter().collect();
                if let Some(i) = pairs.iter().position(|(k, _)| k == "type") {
                    let t = pairs.remove(i);
                    let to = [0, pairs.len(), pairs.len() / 2][at];
                    pairs.insert(to, t);
                }
                let body: Vec<String> = pairs
                    .iter()
                    .map(|(k, v)| format!("{}:{v}", serde_json::Value::from(k.as_str())))
                    .collect();
                format!("{{{}}}", body.join(",")).into_bytes()
            })
        })
    };
    let frames = prop_oneof![
        3 => moved(),
        4 => mutated(moved()),
        1 => mutated(unknown_server_frame()),
        1 => arbitrary_bytes(),
    ];
    fuzz(
        "server direct parse",
        4000,
        1,
        frames.prop_map(Frame),
        |Frame(f)| {
            let direct = ServerMessage::parse(&f);
            let tagged = ServerMessage::parse_tagged(&f);
            let shown = String::from_utf8_lossy(&f);
            match (&direct, &tagged) {
                (Ok(d), Ok(t)) => prop_assert_eq!(d, t, "frame {:?}", shown),
                (Err(_), Err(_)) => {}
                (Err(e), Ok(t)) => {
                    prop_assert!(false, "frame {shown:?}: parse {e:?}, parse_tagged {t:?}")
                }
                // Only on a frame that is not JSON serde_json reads, and only because of members
                // the one-pass read skips: without them the tagged enum reads the same message.
                (Ok(d), Err(e)) => {
                    prop_assert!(
                        serde_json::from_slice::<serde_json::Value>(&f).is_err(),
                        "frame {shown:?}: parse {d:?}, parse_tagged {e:?}"
                    );
                    let readable = without_unreadable_members(&f);
                    prop_assert!(
                        readable.is_some(),
                        "frame {shown:?} parsed but does not split"
                    );
                    let readable = readable.unwrap_or_default();
                    let again = ServerMessage::parse_tagged(&readable);
                    prop_assert_eq!(
                        again.as_ref().ok(),
                        Some(d),
                        "frame {:?}: parse {:?}, parse_tagged {:?}, readable members {:?}",
                        shown,
                        d,
                        e,
                        again
                    );
                }
            }
            Ok(())
        },
    );
}

/// The one-pass read skips what it does not know without decoding its text (the difference
/// `ServerMessage::parse` documents): an unknown member holding invalid UTF-8, a lone surrogate
/// escape or an out-of-range number is ignored there and refused by the tagged enum; the same
/// in a member it reads is refused by both.
#[test]
fn the_direct_parse_ignores_unreadable_text_only_in_members_it_skips() {
    let head: &[u8] = br#"{"from":"a","kind":"message","msg_id":"0000000000000001","ts":2,"#;
    let cases: [(&[u8], &[u8]); 3] = [
        (b"\"\xff\"", b"text"),
        (br#""\ud800""#, b"text"),
        (b"1e999", b"seq"),
    ];
    for (bad, field) in cases {
        let unknown = [head, br#""seq":1,"x":"#, bad, br#","type":"inbox"}"#].concat();
        let shown = String::from_utf8_lossy(&unknown);
        assert!(ServerMessage::parse_tagged(&unknown).is_err(), "{shown}");
        match ServerMessage::parse(&unknown) {
            Ok(ServerMessage::Inbox(m)) => {
                assert_eq!((m.from.as_ref(), m.seq), ("a", 1), "{shown}")
            }
            other => panic!("{shown}: {other:?}"),
        }
        let seq: &[u8] = if field == b"seq" { b"" } else { br#""seq":1,"# };
        let known = [head, seq, b"\"", field, b"\":", bad, br#","type":"inbox"}"#].concat();
        let shown = String::from_utf8_lossy(&known);
        assert!(ServerMessage::parse(&known).is_err(), "{shown}");
        assert!(ServerMessage::parse_tagged(&known).is_err(), "{shown}");
    }
}

/// A JSON value with every object member that serde_json cannot decode left out, at any depth
/// (array elements are all kept: a struct reads each of them); `None` if it is not one value.
/// serde_json's `RawValue` splits it, and like the one-pass read it checks the syntax of what it
/// holds but not its text. Invalid UTF-8 can stand only inside such text here (the one-pass read
/// decoded every other string), so it is replaced first, which keeps those members unreadable.
fn without_unreadable_members(frame: &[u8]) -> Option<Vec<u8>> {
    use serde_json::value::RawValue;

    /// An object's members in their order, duplicates kept.
    struct Members(Vec<(String, Box<RawValue>)>);
    impl<'de> serde::Deserialize<'de> for Members {
        fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            struct Visit;
            impl<'de> serde::de::Visitor<'de> for Visit {
                type Value = Members;
                fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                    f.write_str("an object")
                }
                fn visit_map<A: serde::de::MapAccess<'de>>(
                    self,
                    mut m: A,
                ) -> Result<Members, A::Error> {
                    let mut members = Vec::new();
                    while let Some(member) = m.next_entry()? {
                        members.push(member);
                    }
                    Ok(Members(members))
                }
            }
            d.deserialize_map(Visit)
        }
    }

    fn readable(raw: &RawValue) -> Option<String> {
        let text = raw.get();
        match text.as_bytes().first() {
            Some(b'{') => {
                let mut kept = Vec::new();
                for (key, value) in serde_json::from_str::<Members>(text).ok()?.0 {
                    let value = readable(&value)?;
                    if serde_json::from_str::<serde_json::Value>(&value).is_ok() {
                        kept.push(format!("{}:{value}", serde_json::to_string(&key).ok()?));
                    }
                }
                Some(format!("{{{}}}", kept.join(",")))
            }
            Some(b'[') => {
                let items = serde_json::from_str::<Vec<Box<RawValue>>>(text).ok()?;
                let items: Option<Vec<String>> = items.iter().map(|v| readable(v)).collect();
                Some(format!("[{}]", items?.join(",")))
            }
            _ => Some(text.to_owned()),
        }
    }

    let raw = serde_json::from_str::<Box<RawValue>>(&String::from_utf8_lossy(frame)).ok()?;
    readable(&raw).map(String::into_bytes)
}

#[test]
fn mutated_server_frames_never_panic() {
    let frames = prop_oneof![
        4 => mutated(server_frame().prop_map(|(f, _)| f)),
        1 => mutated(unknown_server_frame()),
        1 => arbitrary_bytes(),
    ];
    fuzz(
        "server mutated frames",
        3000,
        1,
        frames.prop_map(Frame),
        |f| {
            // Ok or Err, whichever: a panic fails the property.
            let _ = ServerMessage::parse(&f.0);
            Ok(())
        },
    );
}

// ---- 3. QUIC framing --------------------------------------------------------------------------

/// A piece of a byte stream: a valid frame, a bare length prefix (often oversize), or noise.
#[derive(Debug, Clone)]
enum Piece {
    Frame(Vec<u8>),
    Prefix(u32),
    Noise(Vec<u8>),
}

impl Piece {
    fn write(&self, out: &mut Vec<u8>) {
        match self {
            Piece::Frame(p) => out.extend_from_slice(&quic_frame(p).expect("a small frame")),
            Piece::Prefix(n) => out.extend_from_slice(&n.to_be_bytes()),
            Piece::Noise(b) => out.extend_from_slice(b),
        }
    }
}

fn piece() -> impl Strategy<Value = Piece> {
    let max = MAX_FRAME as u32;
    // Mostly frames: one bad piece (noise desynchronizes what follows) ends most streams.
    prop_oneof![
        20 => bytes(0..256).prop_map(Piece::Frame),
        1 => any::<u32>().prop_map(Piece::Prefix),
        1 => select(vec![0, 1, max - 1, max, max + 1, max + 4, u32::MAX]).prop_map(Piece::Prefix),
        1 => (0..300u32).prop_map(Piece::Prefix),
        1 => bytes(0..64).prop_map(Piece::Noise),
    ]
}

/// What the stream holds, decoded in one piece by the framing's definition: the frames, then
/// either the end of the stream, an unfinished frame, or an oversize prefix ending at `.1`.
#[derive(Debug, PartialEq, Eq)]
enum Tail {
    Clean,
    Unfinished,
    Oversize(usize),
}

fn reference(stream: &[u8]) -> (Vec<Vec<u8>>, Tail) {
    let mut frames = Vec::new();
    let mut at = 0;
    loop {
        let rest = &stream[at..];
        if rest.is_empty() {
            return (frames, Tail::Clean);
        }
        let Some(prefix) = rest.get(..4) else {
            return (frames, Tail::Unfinished);
        };
        let n = u32::from_be_bytes([prefix[0], prefix[1], prefix[2], prefix[3]]) as usize;
        if n > MAX_FRAME {
            return (frames, Tail::Oversize(at + 4));
        }
        let Some(payload) = rest.get(4..4 + n) else {
            return (frames, Tail::Unfinished);
        };
        frames.push(payload.to_vec());
        at += 4 + n;
    }
}

/// Feeds `stream` to a fresh codec in chunks of the given sizes (cycled), as `FramedRead` does:
/// after each chunk, decode until it needs more. Checks every step against [`reference`].
fn decode_in_chunks(stream: &[u8], sizes: &[usize]) -> Result<(), TestCaseError> {
    let (want, tail) = reference(stream);
    let mut codec = quic_codec();
    let mut buf = BytesMut::new();
    let mut got: Vec<Vec<u8>> = Vec::new();
    let mut fed = 0;
    let mut sizes = sizes.iter().cycle();
    while fed < stream.len() {
        let size = (*sizes.next().expect("at least one size")).clamp(1, stream.len() - fed);
        buf.extend_from_slice(&stream[fed..fed + size]);
        fed += size;
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(frame)) => {
                    prop_assert!(frame.len() <= MAX_FRAME);
                    got.push(frame.to_vec());
                }
                Ok(None) => {
                    // Waiting for more: what is held is under 4 bytes of prefix, or part of
                    // a frame whose prefix was read and is at most MAX_FRAME.
                    prop_assert!(buf.len() < MAX_FRAME, "holding {} bytes", buf.len());
                    break;
                }
                Err(e) => {
                    prop_assert!(
                        e.get_ref()
                            .is_some_and(|r| r.is::<LengthDelimitedCodecError>())
                    );
                    // Refused on the chunk that completed the prefix, not later.
                    let Tail::Oversize(end) = tail else {
                        return Err(TestCaseError::fail(format!(
                            "error {e} at {fed}, tail {tail:?}"
                        )));
                    };
                    prop_assert!(
                        fed - size < end && end <= fed,
                        "prefix ends at {end}, fed {fed}"
                    );
                    prop_assert_eq!(&got, &want);
                    return Ok(());
                }
            }
        }
    }
    prop_assert_eq!(&got, &want);
    prop_assert!(
        !matches!(tail, Tail::Oversize(_)),
        "oversize prefix accepted"
    );
    // At the end of the stream: no frame out of nothing; leftover bytes are an error. (A stream
    // cut right after a prefix leaves nothing buffered, and tokio-util calls that a clean end:
    // the node ends the session either way.)
    match codec.decode_eof(&mut buf) {
        Ok(None) => prop_assert!(tail == Tail::Clean || buf.is_empty()),
        Ok(Some(f)) => return Err(TestCaseError::fail(format!("frame of {} at eof", f.len()))),
        Err(_) => prop_assert_eq!(tail, Tail::Unfinished),
    }
    Ok(())
}

fn chunk_sizes(max: usize) -> impl Strategy<Value = Vec<usize>> {
    proptest::collection::vec(prop_oneof![1..=8usize, 1..=max], 1..16)
}

#[test]
fn codec_arbitrary_streams_split_anywhere() {
    let streams = (
        prop_oneof![
            3 => proptest::collection::vec(piece(), 0..16).prop_map(|ps| {
                let mut out = Vec::new();
                for p in &ps {
                    p.write(&mut out);
                }
                out
            }),
            1 => arbitrary_bytes(),
        ],
        chunk_sizes(600),
    );
    let streams = streams.prop_map(|(stream, sizes)| (Frame(stream), sizes));
    fuzz(
        "codec arbitrary streams",
        2000,
        1,
        streams,
        |(stream, sizes)| decode_in_chunks(&stream.0, &sizes),
    );
}

#[test]
fn codec_valid_frames_split_anywhere_decode_the_same() {
    let frames = proptest::collection::vec(bytes(0..300), 0..12);
    fuzz(
        "codec valid frames",
        2000,
        1,
        (frames, chunk_sizes(600)),
        |(payloads, sizes)| {
            let mut stream = Vec::new();
            let mut codec = quic_codec();
            for p in &payloads {
                let framed = quic_frame(p).expect("a small frame");
                // The encoder writes the same bytes as `quic_frame`.
                let mut enc = BytesMut::new();
                codec
                    .encode(Bytes::copy_from_slice(p), &mut enc)
                    .map_err(|e| TestCaseError::fail(e.to_string()))?;
                prop_assert_eq!(&enc[..], &framed[..]);
                stream.extend_from_slice(&framed);
            }
            prop_assert_eq!(reference(&stream), (payloads, Tail::Clean));
            decode_in_chunks(&stream, &sizes)
        },
    );
}

#[test]
fn codec_frames_near_max_frame() {
    let max = MAX_FRAME as u32;
    let near = prop_oneof![max - 2..=max + 4, select(vec![max * 2, u32::MAX])];
    let case = (
        proptest::collection::vec(piece(), 0..3),
        near,
        any::<u8>(),
        proptest::collection::vec(piece(), 0..3),
        chunk_sizes(20_000),
    );
    fuzz(
        "codec near MAX_FRAME",
        256,
        4,
        case,
        |(before, len, fill, after, sizes)| {
            let mut stream = Vec::new();
            for p in &before {
                p.write(&mut stream);
            }
            // The prefix, and the whole payload it announces when that is within reach.
            let payload = vec![fill; (len as usize).min(MAX_FRAME + 4)];
            stream.extend_from_slice(&len.to_be_bytes());
            stream.extend_from_slice(&payload);
            for p in &after {
                p.write(&mut stream);
            }
            // The encoder and `quic_frame` agree on what fits.
            let mut enc = BytesMut::new();
            let encoded = quic_codec().encode(Bytes::from(payload.clone()), &mut enc);
            prop_assert_eq!(encoded.is_ok(), payload.len() <= MAX_FRAME);
            prop_assert_eq!(encoded.is_ok().then(|| enc.freeze()), quic_frame(&payload));
            decode_in_chunks(&stream, &sizes)
        },
    );
}

/// The prefix alone decides: over `MAX_FRAME` is an error with nothing more read; otherwise the
/// codec waits for the payload.
#[test]
fn codec_refuses_an_oversize_prefix_at_once() {
    let max = MAX_FRAME as u32;
    let lens = prop_oneof![any::<u32>(), 0..=max + 8, max - 8..=max + 8];
    fuzz("codec prefix alone", 2000, 1, lens, |n| {
        let mut buf = BytesMut::from(&n.to_be_bytes()[..]);
        let r = quic_codec().decode(&mut buf);
        match n as usize {
            0 => prop_assert_eq!(r.ok().flatten().map(|f| f.len()), Some(0)),
            len if len <= MAX_FRAME => prop_assert!(matches!(r, Ok(None))),
            _ => prop_assert!(r.is_err()),
        }
        Ok(())
    });
}
