//! Fuzzing on the stable toolchain (issue #15): properties of the node's own decoders, checked
//! with proptest (the wire's decoders are in `presence-wire/tests/fuzz.rs`).
//!
//! - client tokens: [`token::verify`];
//! - the admin API's JSON bodies: [`admin::parse_body`] into each body type;
//! - the long-poll endpoints' bodies and queries: [`body::split_send`], [`body::open_frame`],
//!   [`body::poll_query`], [`body::session_query`].
//!
//! Inputs stay under 4 KiB. CI runs the default case counts: this file takes about 10 s in
//! debug on a busy 2-core machine. A long run is one variable away (`--nocapture` shows each
//! property's count and time):
//!
//! ```text
//! FUZZ_CASES=200000 cargo test --release -p presence-node --test fuzz -- --nocapture
//! ```
//!
//! In release, 2,000,000 cases of every property took about 4 minutes on the busy 2-core
//! development machine.
//!
//! `FUZZ_CASES` sets the cases of every property. Every run draws the same inputs (each
//! property seeds from its name); a long run should explore: `PROPTEST_RNG_SEED=<a new
//! number>`. A failure prints the smallest input proptest shrank it to, and proptest saves its
//! seed in `tests/fuzz.proptest-regressions` (commit it) to replay first from then on.

use std::fmt::Debug;

use axum::http::StatusCode;
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use presence_node::admin::{self, FriendsBody, FriendshipsBody, GroupBody, TokenBody};
use presence_node::longpoll::body::{self, BodyError};
use presence_node::token::{self, Claims, TokenError};
use proptest::prelude::*;
use proptest::sample::select;
use proptest::test_runner::TestCaseError;
use serde_json::{Value, json};

// ---- the runner and shared generators (presence-wire's tests/support) ---------------------

#[path = "../../presence-wire/tests/support/mod.rs"]
mod support;
use support::{Frame, any_char, bytes, mutate, text};

/// [`support::fuzz`] with no weights, failing seeds saved next to this file.
fn fuzz<S>(
    name: &str,
    default_cases: u32,
    strategy: S,
    test: impl Fn(S::Value) -> Result<(), TestCaseError>,
) where
    S: Strategy,
    S::Value: Debug,
{
    support::fuzz(file!(), name, default_cases, 1, strategy, test);
}

/// A valid id (user, group): 1 to 128 bytes of any UTF-8.
fn id() -> impl Strategy<Value = String> {
    proptest::collection::vec(any_char(), 1..=128).prop_map(|cs| {
        let mut s = String::new();
        for c in cs {
            if s.len() + c.len_utf8() > 128 {
                break;
            }
            s.push(c);
        }
        s
    })
}

/// Mostly short ids, sometimes up to the 128-byte limit.
fn some_id() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => proptest::collection::vec(any_char(), 1..=12).prop_map(String::from_iter),
        1 => id(),
    ]
}

/// Fragments that steer base64 and JSON decoders into their corners.
const TOKENS: &[&[u8]] = &[
    b".",
    b"=",
    b"-",
    b"_",
    b"+",
    b"/",
    b"A",
    b"Q",
    b"\"",
    b"\\",
    b"\\u",
    b"\\ud800",
    b"{",
    b"}",
    b"[",
    b"]",
    b",",
    b":",
    b"null",
    b"1e999",
    b"-1",
    b"18446744073709551616",
    b"\xff",
    b"\xc3",
    b" ",
];

fn mutation() -> impl Strategy<Value = support::Mutation> {
    support::mutation(TOKENS)
}

fn mutations() -> impl Strategy<Value = Vec<support::Mutation>> {
    proptest::collection::vec(mutation(), 1..=8)
}

/// Random JSON, a few levels deep, its keys often the ones the decoders look for.
fn json_value(keys: &'static [&'static str]) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        1 => Just(Value::Null),
        1 => any::<bool>().prop_map(Value::Bool),
        1 => any::<u64>().prop_map(Value::from),
        1 => any::<i64>().prop_map(Value::from),
        1 => any::<f64>().prop_map(Value::from),
        3 => text(24).prop_map(Value::String),
    ];
    let key = prop_oneof![3 => select(keys).prop_map(str::to_owned), 1 => text(8)];
    leaf.prop_recursive(3, 24, 4, move |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(key.clone(), inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn to_bytes(v: &Value) -> Vec<u8> {
    serde_json::to_vec(v).expect("a value serializes")
}

// ---- 4. tokens --------------------------------------------------------------------------------

fn secret() -> impl Strategy<Value = Vec<u8>> {
    proptest::collection::vec(any::<u8>(), 0..64)
}

/// Claims a node accepts: `sub` 1 to 128 bytes, `exp` after `now` (returned alongside).
fn claims_and_now() -> impl Strategy<Value = (Claims, u64)> {
    (
        id(),
        any::<u64>(),
        any::<u64>(),
        proptest::option::of(text(40)),
    )
        .prop_map(|(sub, a, b, dev)| {
            let (now, exp) = (a.min(b), a.max(b));
            // exp > now: separate equal draws.
            let (now, exp) = if now == exp {
                (now.saturating_sub(1), exp.max(1))
            } else {
                (now, exp)
            };
            (Claims { sub, exp, dev }, now)
        })
}

/// The signed part of a token: everything before the last dot.
fn signed_part(t: &str) -> &str {
    t.rsplit_once('.').map_or(t, |(signed, _)| signed)
}

#[test]
fn minted_tokens_verify_to_their_claims() {
    let case = (secret(), secret(), claims_and_now());
    fuzz(
        "token round trip",
        1000,
        case,
        |(secret, other, (claims, now))| {
            let t = token::mint(&secret, &claims);
            prop_assert!(t.is_ascii() && t.split('.').count() == 3);
            prop_assert_eq!(token::verify(&secret, &t, now), Ok(claims.clone()));
            prop_assert_eq!(
                token::verify(&secret, &t, claims.exp),
                Err(TokenError::Expired)
            );
            // HMAC pads a key shorter than its block (64 bytes) with zeros: "k" and "k\0" are
            // the same key. Any other key fails.
            let trim = |k: &[u8]| k.len() - k.iter().rev().take_while(|&&b| b == 0).count();
            if other[..trim(&other)] != secret[..trim(&secret)] {
                prop_assert_eq!(token::verify(&other, &t, now), Err(TokenError::Signature));
            }
            Ok(())
        },
    );
}

#[test]
fn subjects_outside_1_to_128_bytes_are_refused() {
    let subs = prop_oneof![
        Just(String::new()),
        (129..600usize).prop_map(|n| "x".repeat(n)),
        proptest::collection::vec(any_char(), 129..300).prop_map(String::from_iter),
    ];
    fuzz(
        "token bad subjects",
        500,
        (secret(), subs),
        |(secret, sub)| {
            let claims = Claims {
                sub,
                exp: u64::MAX,
                dev: None,
            };
            let r = token::verify(&secret, &token::mint(&secret, &claims), 0);
            prop_assert!(matches!(r, Err(TokenError::Claims(_))), "{:?}", r);
            Ok(())
        },
    );
}

/// Edits of a valid token's text: whatever still verifies was not edited where it is signed,
/// and says what the original said. In fact nothing edited verifies: base64url without padding
/// or stray trailing bits has one spelling per signature, so a token has one spelling.
#[test]
fn mutated_tokens_verify_only_when_the_signed_part_is_untouched() {
    // Random edits anywhere, and the signature's last character (the one with spare bits)
    // replaced by every character base64 decoders might take.
    let edits = prop_oneof![
        3 => mutations().prop_map(|m| (m, None)),
        1 => select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_+/=.".to_vec())
            .prop_map(|c| (Vec::new(), Some(c))),
    ];
    let case = (secret(), claims_and_now(), edits);
    fuzz(
        "token mutations",
        3000,
        case,
        |(secret, (claims, now), (edits, last))| {
            let t = token::mint(&secret, &claims);
            let mut b = mutate(t.clone().into_bytes(), &edits);
            if let (Some(c), Some(end)) = (last, b.last_mut()) {
                *end = c;
            }
            let m = String::from_utf8_lossy(&b).into_owned();
            match token::verify(&secret, &m, now) {
                Ok(c) => {
                    prop_assert_eq!(signed_part(&m), signed_part(&t), "{}", m);
                    prop_assert_eq!(c, claims);
                    prop_assert_eq!(&m, &t);
                }
                Err(_) => prop_assert_ne!(&m, &t),
            }
            Ok(())
        },
    );
}

/// Strings with none of a token's structure, some of it (three base64url parts, a real
/// header), or all of it but the key: none verifies, none panics.
#[test]
fn arbitrary_strings_never_verify() {
    let b64 = |max: usize| {
        proptest::collection::vec(
            select(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_=+/".to_vec()),
            0..max,
        )
        .prop_map(|b| String::from_utf8(b).expect("ascii"))
    };
    let header = prop_oneof![
        Just(B64.encode(br#"{"alg":"HS256","typ":"JWT"}"#)),
        Just(B64.encode(br#"{"alg":"none"}"#)),
        json_value(&["alg", "typ", "kid"]).prop_map(|v| B64.encode(to_bytes(&v))),
        b64(40),
    ];
    let payload = prop_oneof![
        json_value(&["sub", "exp", "dev"]).prop_map(|v| B64.encode(to_bytes(&v))),
        b64(200),
    ];
    let strings = prop_oneof![
        text(1024),
        (b64(100), b64(100), b64(100)).prop_map(|(a, b, c)| format!("{a}.{b}.{c}")),
        (header, payload, b64(50)).prop_map(|(h, p, s)| format!("{h}.{p}.{s}")),
        (secret(), claims_and_now().prop_map(|(c, _)| c))
            .prop_map(|(wrong, c)| token::mint(&[&wrong[..], b"!"].concat(), &c)),
    ];
    fuzz(
        "token arbitrary strings",
        3000,
        (secret(), strings, any::<u64>()),
        |(secret, s, now)| {
            let r = token::verify(&secret, &s, now);
            prop_assert!(r.is_err(), "{:?} verified: {:?}", s, r);
            Ok(())
        },
    );
}

/// Tokens signed with the right key around a header and payload that are anything: what the
/// node accepts is exactly an HS256 header and claims it can read, with a valid `sub`, unexpired.
#[test]
fn signed_garbage_is_judged_on_its_claims() {
    let header = prop_oneof![
        Just(br#"{"alg":"HS256","typ":"JWT"}"#.to_vec()),
        (json_value(&["alg", "typ"]), mutations()).prop_map(|(v, m)| mutate(to_bytes(&v), &m)),
        (Just(br#"{"alg":"HS256"}"#.to_vec()), mutations()).prop_map(|(h, m)| mutate(h, &m)),
    ];
    let payload = prop_oneof![
        (claims_and_now(), mutations())
            .prop_map(|((c, _), m)| mutate(serde_json::to_vec(&c).expect("claims"), &m)),
        json_value(&["sub", "exp", "dev"]).prop_map(|v| to_bytes(&v)),
    ];
    let case = (
        secret(),
        header.prop_map(Frame),
        payload.prop_map(Frame),
        any::<u64>(),
    );
    fuzz(
        "token signed garbage",
        3000,
        case,
        |(secret, Frame(h), Frame(p), now)| {
            let signing_input = format!("{}.{}", B64.encode(&h), B64.encode(&p));
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, &secret);
            let sig = ring::hmac::sign(&key, signing_input.as_bytes());
            let t = format!("{signing_input}.{}", B64.encode(sig.as_ref()));
            // The header read as the node reads it, into a struct with `alg`: serde_json skips
            // the other fields without checking their UTF-8 or escapes, so `serde_json::Value`
            // is no oracle here, and a struct also reads from an array (`["HS256"]`).
            #[derive(serde::Deserialize)]
            struct Header {
                alg: String,
            }
            let alg_ok = serde_json::from_slice::<Header>(&h)
                .ok()
                .map(|h| h.alg == "HS256");
            let claims = serde_json::from_slice::<Claims>(&p).ok();
            match token::verify(&secret, &t, now) {
                Ok(c) => {
                    prop_assert_eq!(alg_ok, Some(true));
                    prop_assert!((1..=128).contains(&c.sub.len()) && c.exp > now);
                    prop_assert_eq!(Some(c), claims);
                }
                Err(TokenError::Algorithm) => prop_assert_eq!(alg_ok, Some(false)),
                Err(TokenError::Signature) => {
                    return Err(TestCaseError::fail("a correctly signed token"));
                }
                Err(_) => {}
            }
            Ok(())
        },
    );
}

// ---- 5. admin bodies --------------------------------------------------------------------------

/// Parses `b` as every body type; each answer is a body or a 400 naming invalid JSON.
fn parse_all(b: &[u8]) -> Result<(), TestCaseError> {
    fn refusal_ok<T>(r: Result<T, (StatusCode, String)>) -> Result<(), TestCaseError> {
        if let Err((status, msg)) = r {
            prop_assert_eq!(status, StatusCode::BAD_REQUEST);
            prop_assert!(msg.starts_with("invalid JSON body: "), "{}", msg);
        }
        Ok(())
    }
    refusal_ok(admin::parse_body::<FriendsBody>(b))?;
    refusal_ok(admin::parse_body::<FriendshipsBody>(b))?;
    refusal_ok(admin::parse_body::<GroupBody>(b))?;
    refusal_ok(admin::parse_body::<TokenBody>(b))
}

const BODY_KEYS: &[&str] = &[
    "friends", "add", "remove", "members", "user", "ttl_s", "device",
];

/// What a valid body must parse to.
#[derive(Debug, Clone)]
enum Body {
    Friends(Vec<String>),
    Friendships {
        add: Vec<(String, String)>,
        remove: Vec<(String, String)>,
    },
    Group(Vec<String>),
    Token {
        user: String,
        ttl_s: u64,
        device: Option<String>,
    },
}

impl Body {
    /// The body's field names.
    fn fields(&self) -> &'static [&'static str] {
        match self {
            Body::Friends(_) => &["friends"],
            Body::Friendships { .. } => &["add", "remove"],
            Body::Group(_) => &["members"],
            Body::Token { .. } => &["user", "ttl_s", "device"],
        }
    }

    /// Parses `b` as this body's type and checks it says what `self` says.
    fn check(&self, b: &[u8]) -> Result<(), (StatusCode, String)> {
        let same = match self {
            Body::Friends(f) => admin::parse_body::<FriendsBody>(b)?.friends == *f,
            Body::Friendships { add, remove } => {
                let p = admin::parse_body::<FriendshipsBody>(b)?;
                p.add == *add && p.remove == *remove
            }
            Body::Group(m) => admin::parse_body::<GroupBody>(b)?.members == *m,
            Body::Token {
                user,
                ttl_s,
                device,
            } => {
                let p = admin::parse_body::<TokenBody>(b)?;
                p.user == *user && p.ttl_s == *ttl_s && p.device == *device
            }
        };
        if same {
            Ok(())
        } else {
            Err((StatusCode::OK, "parsed to something else".into()))
        }
    }
}

/// A valid body of each type as JSON, fields left out at random, with what it must parse to.
fn valid_body() -> impl Strategy<Value = (Value, Body)> {
    let ids = |max: usize| proptest::collection::vec(some_id(), 0..max);
    let pairs = || proptest::option::of(proptest::collection::vec((some_id(), some_id()), 0..8));
    prop_oneof![
        ids(16).prop_map(|f| (json!({ "friends": f }), Body::Friends(f))),
        (pairs(), pairs()).prop_map(|(add, remove)| {
            let mut m = serde_json::Map::new();
            if let Some(a) = &add {
                m.insert("add".into(), json!(a));
            }
            if let Some(r) = &remove {
                m.insert("remove".into(), json!(r));
            }
            let body = Body::Friendships {
                add: add.unwrap_or_default(),
                remove: remove.unwrap_or_default(),
            };
            (Value::Object(m), body)
        }),
        ids(16).prop_map(|m| (json!({ "members": m }), Body::Group(m))),
        (
            text(40),
            proptest::option::of(any::<u64>()),
            // Absent, null, or a string.
            proptest::option::of(proptest::option::of(text(40))),
        )
            .prop_map(|(user, ttl, device)| {
                let mut m = serde_json::Map::new();
                m.insert("user".into(), json!(user));
                if let Some(t) = ttl {
                    m.insert("ttl_s".into(), json!(t));
                }
                if let Some(d) = &device {
                    m.insert("device".into(), json!(d));
                }
                let body = Body::Token {
                    user,
                    ttl_s: ttl.unwrap_or(3600),
                    device: device.flatten(),
                };
                (Value::Object(m), body)
            }),
    ]
}

/// Valid bodies parse to what they say (with the defaults for what they leave out); one more
/// field, not the body's, is refused with a 400.
#[test]
fn valid_admin_bodies_round_trip() {
    let case = (valid_body(), text(12));
    fuzz("admin round trip", 2000, case, |((v, body), extra)| {
        let b = to_bytes(&v);
        body.check(&b)
            .map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
        parse_all(&b)?;
        if !body.fields().contains(&extra.as_str()) {
            let mut with_extra = v.as_object().cloned().unwrap_or_default();
            with_extra.insert(extra, Value::Null);
            let refused = body.check(&to_bytes(&Value::Object(with_extra))).err();
            prop_assert!(
                matches!(&refused, Some((StatusCode::BAD_REQUEST, m)) if m.contains("unknown field")),
                "{:?}",
                refused
            );
        }
        Ok(())
    });
}

#[test]
fn arbitrary_admin_bodies_are_refused_with_400() {
    let bodies = prop_oneof![
        2 => bytes(0..4096),
        3 => (valid_body(), mutations()).prop_map(|((v, _), m)| mutate(to_bytes(&v), &m)),
        3 => json_value(BODY_KEYS).prop_map(|v| to_bytes(&v)),
        2 => proptest::collection::btree_map(select(BODY_KEYS), json_value(BODY_KEYS), 0..4)
            .prop_map(|m| to_bytes(&json!(m))),
    ];
    fuzz(
        "admin arbitrary bodies",
        3000,
        bodies.prop_map(Frame),
        |b| parse_all(&b.0),
    );
}

// ---- 6. long-poll bodies and queries --------------------------------------------------------

const LP_KEYS: &[&str] = &[
    "type", "token", "device", "after", "id", "to", "text", "seq", "session", "cursor",
];

/// Whatever `b` is, the long-poll decoders answer without panicking, and what `split_send`
/// accepts is what the body says: its one object, or its array's elements in order, each an
/// object of at most 64 KiB.
fn check_lp_body(b: &[u8]) -> Result<(), TestCaseError> {
    match body::split_send(b) {
        Ok(frames) => {
            let whole: Value = serde_json::from_slice(b)
                .map_err(|e| TestCaseError::fail(format!("accepted but not JSON: {e}")))?;
            let parts: Vec<Value> = frames
                .iter()
                .map(|f| serde_json::from_slice(f))
                .collect::<Result<_, _>>()
                .map_err(|e| TestCaseError::fail(format!("a frame is not JSON: {e}")))?;
            prop_assert!(parts.iter().all(Value::is_object));
            prop_assert!(frames.iter().all(|f| f.len() <= presence_wire::MAX_FRAME));
            prop_assert!(frames.len() <= body::MAX_BATCH);
            match whole {
                Value::Array(items) => prop_assert_eq!(items, parts),
                other => prop_assert_eq!(vec![other], parts),
            }
        }
        Err(BodyError::Query(_)) => return Err(TestCaseError::fail("a body is not a query")),
        Err(_) => {}
    }
    if let Ok(f) = body::open_frame(b) {
        let v: Value = serde_json::from_slice(&f)
            .map_err(|e| TestCaseError::fail(format!("open accepted non-JSON: {e}")))?;
        prop_assert!(v.is_object());
    }
    let q = String::from_utf8_lossy(b);
    let _ = body::poll_query(Some(&q));
    let _ = body::session_query(Some(&q));
    Ok(())
}

#[test]
fn long_poll_bodies_split_into_their_messages_or_are_refused() {
    let message = || json_value(LP_KEYS);
    let bodies = prop_oneof![
        2 => bytes(0..4096),
        2 => message().prop_map(|v| to_bytes(&v)),
        3 => proptest::collection::vec(message(), 0..8).prop_map(|v| to_bytes(&Value::Array(v))),
        3 => (proptest::collection::vec(message(), 0..8), mutations())
            .prop_map(|(v, m)| mutate(to_bytes(&Value::Array(v)), &m)),
    ];
    fuzz("lp bodies", 3000, bodies.prop_map(Frame), |b| {
        check_lp_body(&b.0)
    });
}

#[test]
fn valid_long_poll_batches_keep_every_message_in_order() {
    let msg = (
        select(&["activity", "heartbeat", "send", "ack"][..]),
        text(40),
    )
        .prop_map(|(t, x)| json!({"type": t, "text": x}));
    let batch = proptest::collection::vec(msg, 0..=body::MAX_BATCH);
    fuzz("lp batches", 500, batch, |batch| {
        let frames = body::split_send(&to_bytes(&Value::Array(batch.clone())))
            .map_err(|e| TestCaseError::fail(e.to_string()))?;
        let parsed: Vec<Value> = frames
            .iter()
            .map(|f| serde_json::from_slice(f).expect("json"))
            .collect();
        prop_assert_eq!(parsed, batch);
        Ok(())
    });
}

#[test]
fn long_poll_queries_parse_or_are_refused() {
    let queries = prop_oneof![
        2 => text(64),
        3 => (text(24), any::<u64>()).prop_map(|(s, c)| {
            serde_urlencoded::to_string([("session", s), ("cursor", c.to_string())])
                .expect("encodes")
        }),
        2 => (text(24), text(8), mutations()).prop_map(|(s, c, m)| {
            let q = format!("session={s}&cursor={c}");
            String::from_utf8_lossy(&mutate(q.into_bytes(), &m)).into_owned()
        }),
    ];
    fuzz("lp queries", 2000, queries, |q| {
        if let Ok(p) = body::poll_query(Some(&q)) {
            let again = serde_urlencoded::to_string([
                ("session", p.session.clone()),
                ("cursor", p.cursor.to_string()),
            ])
            .expect("encodes");
            prop_assert_eq!(body::poll_query(Some(&again)), Ok(p));
        }
        let _ = body::session_query(Some(&q));
        Ok(())
    });
}
