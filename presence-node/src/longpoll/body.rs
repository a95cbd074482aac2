//! The long-poll endpoints' request decoding and response encoding, pure and socket-free (the
//! fuzz tests drive these directly): a `send` body split into client frames, the query
//! strings, and the JSON answers built around frames the node already rendered.

use bytes::Bytes;
use presence_wire::MAX_FRAME;
use serde::Deserialize;
use serde_json::Value;
use serde_json::value::RawValue;

/// Most client messages in one `send` body (a JSON array). The rate limit lets a burst of 60
/// through; an array longer than that would only be refused message by message.
pub const MAX_BATCH: usize = 100;
/// Largest `send` body: a full batch of small messages, or a few large ones.
pub const MAX_SEND_BODY: usize = 4 * MAX_FRAME;
/// Largest `open` body: one `hello`, a frame like any other.
pub const MAX_OPEN_BODY: usize = MAX_FRAME;

/// Why a request body or query was refused (answered `400`, or `413` for [`TooLarge`]).
///
/// [`TooLarge`]: BodyError::TooLarge
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum BodyError {
    #[error("the body is empty: send one client message (a JSON object) or a JSON array of them")]
    Empty,
    #[error("the body is not JSON: {0}")]
    NotJson(String),
    #[error("the body must be a JSON object (one client message) or an array of objects")]
    NotObject,
    #[error("message {0} of the array is not a JSON object")]
    ElementNotObject(usize),
    #[error("message {index} is over 64 KiB ({len} bytes)")]
    FrameTooLarge { index: usize, len: usize },
    #[error("at most {MAX_BATCH} messages per request, got {0}")]
    TooMany(usize),
    #[error("the body is over {limit} bytes")]
    TooLarge { limit: usize },
    #[error("bad query: {0}")]
    Query(String),
}

/// The first byte that is not whitespace.
fn first_byte(body: &[u8]) -> Option<u8> {
    body.iter().copied().find(|b| !b.is_ascii_whitespace())
}

/// Checks that `raw` is JSON in full (a lazy skip lets a lone surrogate escape through, which
/// the session would then refuse as malformed and close on) and an object of at most 64 KiB;
/// the frame is its bytes as the client wrote them.
fn frame(index: usize, raw: &RawValue) -> Result<Bytes, BodyError> {
    let text = raw.get();
    if first_byte(text.as_bytes()) != Some(b'{') {
        return Err(BodyError::ElementNotObject(index));
    }
    if text.len() > MAX_FRAME {
        return Err(BodyError::FrameTooLarge {
            index,
            len: text.len(),
        });
    }
    serde_json::from_str::<Value>(text).map_err(|e| BodyError::NotJson(e.to_string()))?;
    Ok(Bytes::copy_from_slice(text.as_bytes()))
}

/// `body` as one JSON value, not yet checked in full.
fn envelope(body: &[u8]) -> Result<&RawValue, BodyError> {
    if first_byte(body).is_none() {
        return Err(BodyError::Empty);
    }
    serde_json::from_slice(body).map_err(|e| BodyError::NotJson(e.to_string()))
}

/// Splits a `send` body into client frames, in order: one JSON object, or a JSON array of at
/// most [`MAX_BATCH`] objects, each at most 64 KiB. Only the envelope is checked here; each
/// frame is parsed by the session like a WebSocket frame (an unknown type is answered with an
/// `error` through the poll, as it would be on a WebSocket).
pub fn split_send(body: &[u8]) -> Result<Vec<Bytes>, BodyError> {
    if body.len() > MAX_SEND_BODY {
        return Err(BodyError::TooLarge {
            limit: MAX_SEND_BODY,
        });
    }
    let whole = envelope(body)?;
    match first_byte(whole.get().as_bytes()) {
        Some(b'{') => Ok(vec![frame(0, whole)?]),
        Some(b'[') => {
            let list: Vec<&RawValue> =
                serde_json::from_str(whole.get()).map_err(|e| BodyError::NotJson(e.to_string()))?;
            if list.len() > MAX_BATCH {
                return Err(BodyError::TooMany(list.len()));
            }
            list.iter()
                .enumerate()
                .map(|(i, raw)| frame(i, raw))
                .collect()
        }
        _ => Err(BodyError::NotObject),
    }
}

/// The `open` body: one `hello` object (the session parses and checks it).
pub fn open_frame(body: &[u8]) -> Result<Bytes, BodyError> {
    if body.len() > MAX_OPEN_BODY {
        return Err(BodyError::TooLarge {
            limit: MAX_OPEN_BODY,
        });
    }
    let whole = envelope(body)?;
    match first_byte(whole.get().as_bytes()) {
        Some(b'{') => frame(0, whole),
        _ => Err(BodyError::NotObject),
    }
}

/// `?session=SID&cursor=C`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PollQuery {
    pub session: String,
    pub cursor: u64,
}

/// `?session=SID`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionQuery {
    pub session: String,
}

/// Longest query string read.
const MAX_QUERY: usize = 1024;

fn query<T: serde::de::DeserializeOwned>(q: Option<&str>, shape: &str) -> Result<T, BodyError> {
    let q = q.unwrap_or("");
    if q.len() > MAX_QUERY {
        return Err(BodyError::Query(format!("over {MAX_QUERY} bytes")));
    }
    serde_urlencoded::from_str(q).map_err(|e| BodyError::Query(format!("expected {shape}: {e}")))
}

/// Parses `poll`'s query.
pub fn poll_query(q: Option<&str>) -> Result<PollQuery, BodyError> {
    query(q, "session=SID&cursor=N")
}

/// Parses `send`'s and `close`'s query.
pub fn session_query(q: Option<&str>) -> Result<SessionQuery, BodyError> {
    query(q, "session=SID")
}

/// Appends `"messages":[…]` with the frames as they are (each already a JSON object).
fn messages(out: &mut Vec<u8>, frames: &[Bytes]) {
    out.extend_from_slice(br#""messages":["#);
    for (i, f) in frames.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(f);
    }
    out.extend_from_slice(b"]}");
}

/// `{"cursor": C, "messages": [...]}`.
pub fn poll_answer(cursor: u64, frames: &[Bytes]) -> Vec<u8> {
    let len: usize = frames.iter().map(|f| f.len() + 1).sum();
    let mut out = Vec::with_capacity(48 + len);
    out.extend_from_slice(format!(r#"{{"cursor":{cursor},"#).as_bytes());
    messages(&mut out, frames);
    out
}

/// `{"session": SID, "cursor": C, "messages": [...]}`.
pub fn open_answer(sid: &str, cursor: u64, frames: &[Bytes]) -> Vec<u8> {
    let len: usize = frames.iter().map(|f| f.len() + 1).sum();
    let mut out = Vec::with_capacity(96 + len);
    let sid = serde_json::to_string(sid).unwrap_or_else(|_| "\"\"".into());
    out.extend_from_slice(format!(r#"{{"session":{sid},"cursor":{cursor},"#).as_bytes());
    messages(&mut out, frames);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_object_or_an_array_of_objects() {
        assert_eq!(
            split_send(br#" {"type":"activity"} "#),
            Ok(vec![Bytes::from_static(br#"{"type":"activity"}"#)])
        );
        assert!(
            matches!(
                split_send(br#"{"type":"x\ud800"}"#),
                Err(BodyError::NotJson(_))
            ),
            "a lone surrogate is not JSON a session can read"
        );
        let two = split_send(br#"[{"type":"activity"}, {"type":"heartbeat"}]"#);
        assert_eq!(two.map(|v| v.len()), Ok(2));
        assert_eq!(split_send(b"[]"), Ok(vec![]));
        assert_eq!(split_send(b"   "), Err(BodyError::Empty));
        assert_eq!(split_send(b"5"), Err(BodyError::NotObject));
        assert_eq!(
            split_send(br#"[{"type":"activity"}, 5]"#),
            Err(BodyError::ElementNotObject(1))
        );
        assert!(matches!(split_send(b"{nope"), Err(BodyError::NotJson(_))));
        assert!(matches!(split_send(b"nope"), Err(BodyError::NotJson(_))));
        let many = format!("[{}]", vec![r#"{"type":"activity"}"#; 101].join(","));
        assert_eq!(split_send(many.as_bytes()), Err(BodyError::TooMany(101)));
    }

    #[test]
    fn answers_are_json() {
        let frames = [
            Bytes::from_static(br#"{"type":"pong"}"#),
            Bytes::from_static(br#"{"type":"pong"}"#),
        ];
        let v: serde_json::Value = serde_json::from_slice(&poll_answer(7, &frames)).expect("json");
        assert_eq!(v["cursor"], 7);
        assert_eq!(v["messages"].as_array().map(Vec::len), Some(2));
        let v: serde_json::Value =
            serde_json::from_slice(&open_answer("ab\"c", 1, &[])).expect("json");
        assert_eq!(v["session"], "ab\"c");
        assert_eq!(v["messages"], serde_json::json!([]));
    }

    #[test]
    fn queries() {
        assert_eq!(
            poll_query(Some("session=abc&cursor=3")),
            Ok(PollQuery {
                session: "abc".into(),
                cursor: 3
            })
        );
        assert!(poll_query(Some("session=abc")).is_err());
        assert!(poll_query(Some("session=abc&cursor=-1")).is_err());
        assert!(poll_query(None).is_err());
        assert!(session_query(Some("session=abc&x=1")).is_err());
    }
}
