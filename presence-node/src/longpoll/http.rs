//! The long-poll endpoints' handlers: origin and token checks, bodies, status codes, CORS.
//! They hand the session what the client sent and answer with what it wrote; the session and
//! the service decide everything else.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use presence_wire::ErrorCode;
use tracing::{Instrument, debug, info_span};

use super::LongPoll;
use super::body::{self, BodyError};
use super::session::{self, CursorError, Incoming, Lp, Taken};
use crate::connection::HELLO_TIMEOUT;
use crate::metrics as m;
use crate::node::now_ms;
use crate::service::session::Received;

/// How long `send` waits for room in the session's queue (it is full while the session waits
/// for a poll to make room in its buffer).
const SEND_WAIT: Duration = Duration::from_secs(10);
/// How long `close` waits for the session to end.
const CLOSE_WAIT: Duration = Duration::from_secs(5);
/// Bytes of session id: 160 bits.
const SID_BYTES: usize = 20;

/// A JSON answer.
fn json(status: StatusCode, body: impl Into<Body>) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json")],
        body.into(),
    )
        .into_response()
}

/// An `error` message as the answer.
fn error(status: StatusCode, code: ErrorCode, message: &str) -> Response {
    metrics::counter!(m::ERRORS, "code" => code.as_str()).increment(1);
    json(status, session::ended_frame(code, message))
}

/// A request refused before it reaches a session: the status and the `error` message.
struct Refusal {
    status: StatusCode,
    code: ErrorCode,
    message: &'static str,
}

impl Refusal {
    fn into_response(self) -> Response {
        error(self.status, self.code, self.message)
    }
}

fn bad_body(e: &BodyError) -> Response {
    let status = match e {
        BodyError::TooLarge { .. } | BodyError::FrameTooLarge { .. } => {
            StatusCode::PAYLOAD_TOO_LARGE
        }
        _ => StatusCode::BAD_REQUEST,
    };
    error(status, ErrorCode::Protocol, &e.to_string())
}

/// The status for an `error` message that refuses a request.
fn status_of(code: Option<ErrorCode>) -> StatusCode {
    match code {
        Some(ErrorCode::Unauthorized) => StatusCode::UNAUTHORIZED,
        Some(ErrorCode::Forbidden) => StatusCode::FORBIDDEN,
        // Not 421 Misdirected Request: HTTP clients may retry that one by themselves on a
        // new connection (Node's fetch does), which would say hello twice.
        Some(ErrorCode::Moved) => StatusCode::CONFLICT,
        Some(ErrorCode::Unavailable) => StatusCode::SERVICE_UNAVAILABLE,
        Some(ErrorCode::RateLimited) => StatusCode::TOO_MANY_REQUESTS,
        Some(ErrorCode::TooLarge) => StatusCode::PAYLOAD_TOO_LARGE,
        Some(ErrorCode::NotFound) => StatusCode::NOT_FOUND,
        Some(ErrorCode::Internal) | None => StatusCode::INTERNAL_SERVER_ERROR,
        Some(ErrorCode::Protocol | ErrorCode::BadRequest) => StatusCode::BAD_REQUEST,
    }
}

/// The code of a rendered `error` frame.
fn code_of(frame: &[u8]) -> Option<ErrorCode> {
    #[derive(serde::Deserialize)]
    struct Probe<'a> {
        code: &'a str,
    }
    serde_json::from_slice::<Probe>(frame)
        .ok()
        .and_then(|p| ErrorCode::parse(p.code))
}

impl LongPoll {
    /// The request's `Origin`, if it may call: `Ok(None)` without one (not a browser, or a
    /// same-origin GET) or from a page of the node's own origin (browsers send `Origin` on a
    /// same-origin POST: the demo page, or an app served from this host and port), `Ok(Some)`
    /// when it is `--cors-origin`, else the `403`.
    fn origin(&self, headers: &HeaderMap) -> Result<Option<HeaderValue>, Refusal> {
        match headers.get(header::ORIGIN) {
            None => Ok(None),
            Some(o) if self.cors.as_ref() == Some(o) => Ok(Some(o.clone())),
            Some(o) if same_origin(o, headers.get(header::HOST)) => Ok(None),
            Some(_) => Err(Refusal {
                status: StatusCode::FORBIDDEN,
                code: ErrorCode::Forbidden,
                message: "this origin may not call the long-poll endpoints (see --cors-origin)",
            }),
        }
    }

    /// The session of `sid` for this request: `404` if unknown; `401`/`403` when the request
    /// carries a token that does not verify or names another user.
    fn session(&self, sid: &str, headers: &HeaderMap) -> Result<Arc<Lp>, Refusal> {
        let Some(lp) = self.get(sid) else {
            return Err(Refusal {
                status: StatusCode::NOT_FOUND,
                code: ErrorCode::NotFound,
                message: "no such long-poll session: open a new one",
            });
        };
        if let Some(auth) = headers.get(header::AUTHORIZATION) {
            let token = auth
                .to_str()
                .ok()
                .and_then(|v| v.strip_prefix("Bearer "))
                .unwrap_or("");
            match self.node.service().verify_token(token.trim(), now_ms()) {
                Err(_) => {
                    return Err(Refusal {
                        status: StatusCode::UNAUTHORIZED,
                        code: ErrorCode::Unauthorized,
                        message: "the Authorization token does not verify",
                    });
                }
                Ok(c) if *c.sub != *lp.user => {
                    return Err(Refusal {
                        status: StatusCode::FORBIDDEN,
                        code: ErrorCode::Forbidden,
                        message: "this session belongs to another user",
                    });
                }
                Ok(_) => {}
            }
        }
        Ok(lp)
    }
}

/// `origin` is `http://` or `https://` and the request's `Host`: the page that sends the
/// request came from this node's address (as the browser named it).
fn same_origin(origin: &HeaderValue, host: Option<&HeaderValue>) -> bool {
    let (Ok(origin), Some(Ok(host))) = (origin.to_str(), host.map(|h| h.to_str())) else {
        return false;
    };
    !host.is_empty()
        && origin
            .strip_prefix("http://")
            .or_else(|| origin.strip_prefix("https://"))
            .is_some_and(|rest| rest.eq_ignore_ascii_case(host))
}

/// Adds the CORS headers for an allowed origin and counts the answer.
fn finish(origin: Option<HeaderValue>, endpoint: &'static str, mut resp: Response) -> Response {
    if let Some(o) = origin {
        let h = resp.headers_mut();
        h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
        h.insert(header::VARY, HeaderValue::from_static("Origin"));
    }
    metrics::counter!(m::LP_REQUESTS, "endpoint" => endpoint, "status" => resp.status().as_str().to_owned())
        .increment(1);
    resp
}

/// Reads a body of at most `limit` bytes, within the hello timeout (a body that trickles in
/// holds a request, not a session).
async fn read_body(headers: &HeaderMap, body: Body, limit: usize) -> Result<Bytes, Response> {
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > limit as u64) {
        return Err(bad_body(&BodyError::TooLarge { limit }));
    }
    match tokio::time::timeout(HELLO_TIMEOUT, axum::body::to_bytes(body, limit)).await {
        Ok(Ok(b)) => Ok(b),
        Ok(Err(_)) => Err(bad_body(&BodyError::TooLarge { limit })),
        Err(_) => Err(error(
            StatusCode::REQUEST_TIMEOUT,
            ErrorCode::Protocol,
            "the body did not arrive within 10 s",
        )),
    }
}

/// `OPTIONS /v1/lp/*`: the preflight, answered for `--cors-origin` only.
pub async fn preflight(State(lp): State<Arc<LongPoll>>, headers: HeaderMap) -> Response {
    let resp = match lp.origin(&headers) {
        Ok(Some(o)) => {
            let mut r = StatusCode::NO_CONTENT.into_response();
            let h = r.headers_mut();
            h.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o);
            h.insert(
                header::ACCESS_CONTROL_ALLOW_METHODS,
                HeaderValue::from_static("GET, POST, OPTIONS"),
            );
            h.insert(
                header::ACCESS_CONTROL_ALLOW_HEADERS,
                HeaderValue::from_static("authorization, content-type"),
            );
            h.insert(
                header::ACCESS_CONTROL_MAX_AGE,
                HeaderValue::from_static("600"),
            );
            h.insert(header::VARY, HeaderValue::from_static("Origin"));
            r
        }
        Ok(None) => error(
            StatusCode::BAD_REQUEST,
            ErrorCode::Protocol,
            "a preflight needs an Origin header",
        ),
        Err(r) => r.into_response(),
    };
    finish(None, "preflight", resp)
}

/// `POST /v1/lp/open`: a hello; the session's first frames (the welcome) as the answer.
pub async fn open(State(lp): State<Arc<LongPoll>>, headers: HeaderMap, body: Body) -> Response {
    with_origin(&lp, &headers, "open", open_inner(&lp, &headers, body)).await
}

async fn open_inner(lp: &Arc<LongPoll>, headers: &HeaderMap, body: Body) -> Response {
    let bytes = match read_body(headers, body, body::MAX_OPEN_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let frame = match body::open_frame(&bytes) {
        Ok(f) => f,
        Err(e) => return bad_body(&e),
    };
    let node = &lp.node;
    metrics::counter!(m::CONNECTIONS, "transport" => "lp").increment(1);
    let (session, fx) = match node
        .service()
        .hello(Ok(Some(Received::Frame(frame))), now_ms())
    {
        Ok(x) => x,
        Err(fx) => {
            return match fx.frames.last() {
                Some(f) => json(status_of(code_of(f)), f.clone()),
                None => error(
                    StatusCode::BAD_REQUEST,
                    ErrorCode::Protocol,
                    "the hello was refused",
                ),
            };
        }
    };
    let sid = match crate::datadir::random_hex(SID_BYTES) {
        Ok(s) => s,
        Err(e) => {
            // No session without a secret id: end it at once.
            node.service()
                .close(session, presence_core::Disconnect::Dropped, now_ms());
            return error(
                StatusCode::INTERNAL_SERVER_ERROR,
                ErrorCode::Internal,
                &e.to_string(),
            );
        }
    };
    let (s, rx) = Lp::new(lp.next_id(), session.user(), session.device());
    lp.insert(&sid, s.clone());
    let span = info_span!("lp", user = %s.user, lp = s.id);
    span.in_scope(|| debug!("open"));
    session::spawn(node.clone(), session, fx, s.clone(), rx);
    let deadline = tokio::time::Instant::now() + HELLO_TIMEOUT;
    match s.take(0, 0, deadline).instrument(span).await {
        Taken::Frames { cursor, frames } => {
            json(StatusCode::OK, body::open_answer(&sid, cursor, &frames))
        }
        Taken::Ended(body) => json(status_of(code_of(&body)), body),
        Taken::Empty { .. } => {
            let _ = s.incoming.try_send(Incoming::Close);
            error(
                StatusCode::SERVICE_UNAVAILABLE,
                ErrorCode::Unavailable,
                "the session did not start in time; open again",
            )
        }
    }
}

/// Ends poll `n` when its request ends, answered or not (a client that went away must not
/// leave the session taking its outbox as if someone were reading).
struct PollGuard<'a>(&'a Lp, u64);

impl Drop for PollGuard<'_> {
    fn drop(&mut self) {
        self.0.end_poll(self.1);
        // The poll ended: a sign of life, as the protocol counts it.
        let _ = self.0.incoming.try_send(Incoming::Alive);
    }
}

/// `GET /v1/lp/poll?session=SID&cursor=C`.
pub async fn poll(
    State(lp): State<Arc<LongPoll>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    with_origin(
        &lp,
        &headers,
        "poll",
        poll_inner(&lp, &headers, q.as_deref()),
    )
    .await
}

async fn poll_inner(lp: &LongPoll, headers: &HeaderMap, q: Option<&str>) -> Response {
    let q = match body::poll_query(q) {
        Ok(q) => q,
        Err(e) => return bad_body(&e),
    };
    let s = match live_session(lp, &q.session, headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let n = match s.start_poll(q.cursor) {
        Ok(n) => n,
        Err(CursorError::Ahead { last }) => {
            return error(
                StatusCode::BAD_REQUEST,
                ErrorCode::BadRequest,
                &format!("cursor {} is past the last message ({last})", q.cursor),
            );
        }
        Err(CursorError::Behind { acked }) => {
            return error(
                StatusCode::CONFLICT,
                ErrorCode::BadRequest,
                &format!(
                    "cursor {} is behind one already polled with ({acked}): those messages are forgotten",
                    q.cursor
                ),
            );
        }
    };
    let _ = s.incoming.try_send(Incoming::Alive);
    let guard = PollGuard(&s, n);
    let deadline = tokio::time::Instant::now() + lp.hold;
    let taken = async {
        tokio::select! {
            t = s.take(n, q.cursor, deadline) => t,
            () = lp.node.shutdown().cancelled() => {
                Taken::Ended(session::ended_frame(ErrorCode::Protocol, "node shutting down"))
            }
        }
    }
    .instrument(info_span!("lp", user = %s.user, lp = s.id))
    .await;
    drop(guard);
    match taken {
        Taken::Frames { cursor, frames } => {
            json(StatusCode::OK, body::poll_answer(cursor, &frames))
        }
        Taken::Empty { cursor } => json(StatusCode::OK, body::poll_answer(cursor, &[])),
        Taken::Ended(body) => json(StatusCode::GONE, body),
    }
}

/// `POST /v1/lp/send?session=SID`: one client message or an array of them, in order.
pub async fn send(
    State(lp): State<Arc<LongPoll>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
    body: Body,
) -> Response {
    with_origin(
        &lp,
        &headers,
        "send",
        send_inner(&lp, &headers, q.as_deref(), body),
    )
    .await
}

async fn send_inner(lp: &LongPoll, headers: &HeaderMap, q: Option<&str>, body: Body) -> Response {
    let q = match body::session_query(q) {
        Ok(q) => q,
        Err(e) => return bad_body(&e),
    };
    let s = match live_session(lp, &q.session, headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let bytes = match read_body(headers, body, body::MAX_SEND_BODY).await {
        Ok(b) => b,
        Err(r) => return r,
    };
    let frames = match body::split_send(&bytes) {
        Ok(f) => f,
        Err(e) => return bad_body(&e),
    };
    debug!(user = %s.user, lp = s.id, messages = frames.len(), "send");
    if frames.is_empty() {
        let _ = s.incoming.try_send(Incoming::Alive);
    }
    for f in frames {
        match tokio::time::timeout(SEND_WAIT, s.incoming.send(Incoming::Frame(f))).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) => return gone(&s),
            Err(_) => {
                return error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    ErrorCode::RateLimited,
                    "the session is not keeping up: poll, then send again",
                );
            }
        }
    }
    StatusCode::NO_CONTENT.into_response()
}

/// Checks the request's origin, then runs `inner` (a future: a refused origin never runs it),
/// and adds the CORS headers and the request's metric either way.
async fn with_origin(
    lp: &LongPoll,
    headers: &HeaderMap,
    endpoint: &'static str,
    inner: impl std::future::Future<Output = Response>,
) -> Response {
    match lp.origin(headers) {
        Ok(origin) => finish(origin, endpoint, inner.await),
        Err(r) => finish(None, endpoint, r.into_response()),
    }
}

/// The session `sid` names, if it has not ended: `404` for an unknown one, `410` with its
/// ending for an ended one.
fn live_session(lp: &LongPoll, sid: &str, headers: &HeaderMap) -> Result<Arc<Lp>, Box<Response>> {
    let s = lp
        .session(sid, headers)
        .map_err(|r| Box::new(r.into_response()))?;
    match s.ended() {
        Some(body) => Err(Box::new(json(StatusCode::GONE, body))),
        None => Ok(s),
    }
}

fn gone(s: &Lp) -> Response {
    let body = s
        .ended()
        .unwrap_or_else(|| session::ended_frame(ErrorCode::Protocol, "session ended"));
    json(StatusCode::GONE, body)
}

/// `POST /v1/lp/close?session=SID`.
pub async fn close(
    State(lp): State<Arc<LongPoll>>,
    headers: HeaderMap,
    RawQuery(q): RawQuery,
) -> Response {
    with_origin(
        &lp,
        &headers,
        "close",
        close_inner(&lp, &headers, q.as_deref()),
    )
    .await
}

async fn close_inner(lp: &LongPoll, headers: &HeaderMap, q: Option<&str>) -> Response {
    let q = match body::session_query(q) {
        Ok(q) => q,
        Err(e) => return bad_body(&e),
    };
    let s = match live_session(lp, &q.session, headers) {
        Ok(s) => s,
        Err(r) => return *r,
    };
    let deadline = tokio::time::Instant::now() + CLOSE_WAIT;
    s.request_close();
    s.wait_ended(deadline)
        .instrument(info_span!("lp", user = %s.user, lp = s.id))
        .await;
    debug!(user = %s.user, lp = s.id, "closed by the client");
    StatusCode::NO_CONTENT.into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_of_an_open_map_to_statuses() {
        let moved = presence_wire::Error {
            code: ErrorCode::Moved,
            message: "elsewhere".into(),
            ws: Some("10.0.0.2:7400".into()),
            quic: Some("10.0.0.2:7401".into()),
            lp: Some("http://10.0.0.2:7400".into()),
            ..presence_wire::Error::default()
        }
        .to_frame();
        assert_eq!(code_of(&moved), Some(ErrorCode::Moved));
        assert!(
            moved.starts_with(br#"{"type":"error""#),
            "the session task recognises it as the error that ended the session"
        );
        assert_eq!(status_of(code_of(&moved)), StatusCode::CONFLICT);
        let frame = |c| presence_wire::error_frame(&presence_wire::ProtocolError::new(c, "x"));
        for (code, status) in [
            (ErrorCode::Unauthorized, 401),
            (ErrorCode::Protocol, 400),
            (ErrorCode::BadRequest, 400),
            (ErrorCode::Forbidden, 403),
            (ErrorCode::Unavailable, 503),
            (ErrorCode::Internal, 500),
        ] {
            assert_eq!(
                status_of(code_of(&frame(code))).as_u16(),
                status,
                "{code:?}"
            );
        }
        assert_eq!(
            status_of(code_of(b"not json")),
            StatusCode::INTERNAL_SERVER_ERROR
        );
    }
}
