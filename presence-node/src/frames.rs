//! The node's values as protocol frames: presence entries from the core's states, inbox,
//! history and `sent` frames from the relay's records. The frames themselves are
//! `presence-wire`'s types; this module only fills them in from borrowed data.

use std::borrow::Cow;

use chat_relay::{EntryKind, InboxEntry, MsgId, StoredMessage, Target};
use presence_core::{Change, Config, Presence, State, Status};
use presence_wire::server_message as wire;
use presence_wire::{ErrorCode, PresenceEntry};

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

fn wire_status(s: Status) -> wire::Status {
    match s {
        Status::Available => wire::Status::Available,
        Status::Busy => wire::Status::Busy,
        Status::Dnd => wire::Status::Dnd,
        Status::Invisible => wire::Status::Invisible,
    }
}

/// One presence entry as the protocol shows it: `idle_ms` only when idle, `status` and `text`
/// only when not offline.
pub fn entry<'a>(user: &'a str, p: &'a Presence, cfg: &Config) -> PresenceEntry<'a> {
    let offline = p.state == State::Offline;
    PresenceEntry {
        user: Cow::Borrowed(user),
        state: Some(match p.state {
            State::Online => wire::State::Online,
            State::Idle(_) => wire::State::Idle,
            State::Offline => wire::State::Offline,
        }),
        idle_ms: match p.state {
            State::Idle(level) => cfg.idle_thresholds_ms.get(usize::from(level)).copied(),
            _ => None,
        },
        last_active: p.last_active,
        status: (!offline).then(|| wire_status(p.status)),
        text: if offline {
            None
        } else {
            p.text.as_deref().map(Cow::Borrowed)
        },
        removed: None,
    }
}

/// Renders one presence entry (`{"user": …, "state": …}`) or a removal.
pub fn render_change(user: &str, change: &Change, cfg: &Config) -> Vec<u8> {
    match change {
        Change::Removed => PresenceEntry {
            user: Cow::Borrowed(user),
            removed: Some(true),
            ..PresenceEntry::default()
        }
        .to_frame(),
        Change::Presence(p) => entry(user, p, cfg).to_frame(),
    }
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
/// storm pays one allocation per friend less than about ten.
pub fn welcome_frame<'a>(
    head: &WelcomeHead<'a>,
    friends: impl Iterator<Item = (&'a str, &'a Presence)>,
    cfg: &'a Config,
) -> Vec<u8> {
    wire::Welcome {
        acked_seq: head.acked_seq,
        device: Cow::Borrowed(head.device),
        friends: friends.map(|(user, p)| entry(user, p, cfg)).collect(),
        heartbeat_ms: cfg.heartbeat_timeout_ms,
        idle_thresholds_ms: Cow::Borrowed(&cfg.idle_thresholds_ms),
        inbox_seq: head.inbox_seq,
        tick: head.tick,
        tag: wire::tag::Welcome,
        user: Cow::Borrowed(head.user),
    }
    .to_frame()
}

/// `to` or `group` of a chat target, as the wire names them: (group, to).
fn target_fields(target: &Target) -> (Option<Cow<'_, str>>, Option<Cow<'_, str>>) {
    match target {
        Target::User(u) => (None, Some(Cow::Borrowed(u.as_str()))),
        Target::Group(g) => (Some(Cow::Borrowed(g.as_str())), None),
    }
}

fn inbox_kind(k: EntryKind) -> wire::InboxKind {
    match k {
        EntryKind::Message => wire::InboxKind::Message,
        EntryKind::Edit => wire::InboxKind::Edit,
        EntryKind::Delete => wire::InboxKind::Delete,
        EntryKind::Read => wire::InboxKind::Read,
    }
}

/// An `inbox` frame.
pub fn inbox_frame(e: &InboxEntry) -> Vec<u8> {
    let (group, to) = target_fields(&e.target);
    wire::Inbox {
        from: Cow::Borrowed(&e.from),
        group,
        kind: inbox_kind(e.kind),
        msg_id: e.msg_id,
        seq: e.seq,
        text: e.text.as_deref().map(Cow::Borrowed),
        to,
        ts: e.ts,
        tag: wire::tag::Inbox,
    }
    .to_frame()
}

/// A `sent` frame.
pub fn sent_frame(id: &str, msg_id: MsgId, ts: u64) -> Vec<u8> {
    wire::Sent {
        id: Cow::Borrowed(id),
        msg_id,
        ts,
        tag: wire::tag::Sent,
    }
    .to_frame()
}

/// A `typing` frame.
pub fn typing_frame(from: &str, group: Option<&str>) -> Vec<u8> {
    wire::Typing {
        from: Cow::Borrowed(from),
        group: group.map(Cow::Borrowed),
        tag: wire::tag::Typing,
    }
    .to_frame()
}

/// The `synced` frame closing a `sync` answer (extension).
pub fn synced_frame(after: u64, last: u64, more: bool) -> Vec<u8> {
    wire::Synced {
        after,
        last,
        more,
        tag: wire::tag::Synced,
    }
    .to_frame()
}

/// A `history` frame (extension): messages newest first.
pub fn history_frame(target: &Target, messages: &[StoredMessage], more: bool) -> Vec<u8> {
    let (group, with) = target_fields(target);
    wire::History {
        group,
        messages: messages
            .iter()
            .map(|m| {
                let (group, to) = target_fields(&m.target);
                wire::HistoryMessage {
                    deleted: m.deleted.then_some(true),
                    edited_ts: m.edited_ts,
                    from: Cow::Borrowed(&m.from),
                    group,
                    msg_id: m.msg_id,
                    text: (!m.deleted).then_some(Cow::Borrowed(m.text.as_str())),
                    to,
                    ts: m.ts,
                }
            })
            .collect(),
        more,
        tag: wire::tag::History,
        with,
    }
    .to_frame()
}

#[cfg(test)]
mod tests {
    use super::*;
    use presence_core::Status;
    use std::sync::Arc;

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
        let frame =
            presence_wire::presence_frame(9, [b"{}".as_slice(), b"{}".as_slice()].into_iter());
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
            let tree = reference::presence_value(u, p, &cfg);
            assert_eq!(render_change(u, &change, &cfg), tree, "entry of {u}");
        }
        let typed = welcome_frame(&head, friends.iter().map(|(u, p)| (*u, p)), &cfg);
        let values: Vec<serde_json::Value> = friends
            .iter()
            .map(|(u, p)| serde_json::from_slice(&reference::presence_value(u, p, &cfg)).unwrap())
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

    /// The frames the node sent before they were typed structs, built the old way.
    mod reference {
        use chat_relay::{InboxEntry, StoredMessage, Target};
        use presence_core::{Config, Presence, State};

        /// A presence entry built as a JSON value map, as the node first wrote them.
        pub fn presence_value(user: &str, p: &Presence, cfg: &Config) -> Vec<u8> {
            let mut m = serde_json::Map::new();
            m.insert("user".into(), user.into());
            m.insert("state".into(), p.state.as_str().into());
            if let State::Idle(level) = p.state {
                m.insert(
                    "idle_ms".into(),
                    cfg.idle_thresholds_ms[usize::from(level)].into(),
                );
            }
            if let Some(t) = p.last_active {
                m.insert("last_active".into(), t.into());
            }
            if p.state != State::Offline {
                m.insert("status".into(), p.status.as_str().into());
                if let Some(t) = &p.text {
                    m.insert("text".into(), t.to_string().into());
                }
            }
            to_frame(m)
        }

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
