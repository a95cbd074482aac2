//! The admin HTTP API the app's backend calls: friends, friendships, groups, presence
//! queries, tokens, health and Prometheus metrics.

use std::collections::HashMap;
use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use presence_core::{ApplyError, Interner, UserId};
use serde::Deserialize;
use serde_json::json;

use crate::frames;
use crate::hub::{Hub, now_ms};
use crate::metrics as m;
use crate::token;

/// Members a group may have.
pub const MAX_GROUP: usize = 1000;
/// Largest admin request body (bulk friendship loads).
const MAX_BODY: usize = 64 * 1024 * 1024;
/// Most users one presence query may name.
const MAX_QUERY: usize = 10_000;

#[derive(Clone)]
struct AdminState {
    hub: Arc<Hub>,
    metrics: PrometheusHandle,
}

pub fn router(hub: Arc<Hub>, metrics: PrometheusHandle) -> Router {
    let state = AdminState { hub, metrics };
    let api = Router::new()
        .route("/v1/users/{id}/friends", put(put_friends).get(get_friends))
        .route("/v1/friendships", post(post_friendships))
        .route(
            "/v1/groups/{gid}",
            put(put_group).delete(delete_group).get(get_group),
        )
        .route("/v1/presence", get(get_presence))
        .route("/v1/tokens", post(post_token))
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(api)
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A refusal: status and message, as `{"error": "…"}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

fn internal(msg: impl std::fmt::Display) -> ApiError {
    tracing::error!("admin: {msg}");
    ApiError(StatusCode::INTERNAL_SERVER_ERROR, msg.to_string())
}

/// Parses a JSON body whatever its content type (curl users forget the header).
fn body<T: serde::de::DeserializeOwned>(b: Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(&b).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// [`body`] for tests (tests/fuzz.rs): a refusal as its status and message.
pub fn parse_body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, (StatusCode, String)> {
    body(Bytes::copy_from_slice(b)).map_err(|ApiError(status, msg)| (status, msg))
}

async fn require_key(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    // Compare digests, not the keys, so the comparison's timing says nothing about the key.
    let digest = |b: &[u8]| ring::digest::digest(&ring::digest::SHA256, b);
    let ok = given.is_some_and(|g| {
        digest(g.as_bytes()).as_ref() == digest(s.hub.admin_key.as_bytes()).as_ref()
    });
    if ok {
        next.run(req).await
    } else {
        ApiError(
            StatusCode::UNAUTHORIZED,
            "missing or wrong admin key (Authorization: Bearer <key>)".into(),
        )
        .into_response()
    }
}

async fn count_requests(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let method = req.method().as_str().to_owned();
    let resp = next.run(req).await;
    metrics::counter!(m::ADMIN_REQUESTS, "route" => route, "method" => method,
        "status" => resp.status().as_u16().to_string())
    .increment(1);
    resp
}

/// The core's id rule (1 to 128 bytes), for user and group ids alike.
fn check_id(what: &str, id: &str) -> Result<(), ApiError> {
    Interner::check(id).map_err(|e| bad(format!("{what} {id:?}: {e}")))
}

/// Interns names, remembering each id's name for the durable write.
fn intern_all<'a>(
    hub: &Hub,
    names: impl Iterator<Item = &'a str>,
    known: &mut HashMap<u32, String>,
) -> Result<Vec<UserId>, ApiError> {
    names
        .map(|n| {
            check_id("user id", n)?;
            let id = hub.engine.intern(n).map_err(|e| bad(e.to_string()))?;
            known.entry(id.0).or_insert_with(|| n.to_owned());
            Ok(id)
        })
        .collect()
}

/// Validates, logs durably, then applies; all or nothing.
async fn apply_edges(
    hub: Arc<Hub>,
    add: Vec<(UserId, UserId)>,
    remove: Vec<(UserId, UserId)>,
    known: HashMap<u32, String>,
) -> Result<(u64, u64), ApiError> {
    let _writer = hub.admin_writes.lock().await;
    let h = hub.clone();
    let res = tokio::task::spawn_blocking(move || {
        h.engine.apply_friendships_logged(&add, &remove, |delta| {
            h.store.commit_edges(delta, &|id| known.get(&id.0).cloned())
        })
    })
    .await
    .map_err(internal)?;
    let counts = match res {
        Ok(c) => c,
        Err(ApplyError::Invalid(e)) => {
            let names = |id: UserId| hub.engine.name(id).unwrap_or_else(|| format!("#{}", id.0));
            return Err(bad(describe(&e, &names)));
        }
        Err(ApplyError::Log(e)) => return Err(internal(e)),
    };
    let fp = hub.engine.footprint();
    metrics::gauge!(m::EDGES).set(fp.edges as f64);
    metrics::gauge!(m::USERS).set(fp.users as f64);
    Ok(counts)
}

/// An engine error with app ids instead of dense ids.
fn describe(e: &presence_core::Error, name: &dyn Fn(UserId) -> String) -> String {
    use presence_core::Error as E;
    match e {
        E::SelfFriendship(u) => format!("user {:?} cannot be their own friend", name(*u)),
        E::DuplicateEdge(a, b) => format!(
            "the pair ({:?}, {:?}) appears twice in one request",
            name(*a),
            name(*b)
        ),
        E::TooManyFriends {
            user,
            would_have,
            cap,
        } => format!(
            "user {:?} would have {would_have} friends, over the cap of {cap}",
            name(*user)
        ),
        E::UnknownUser(u) => format!("unknown user {:?}", name(*u)),
        other => other.to_string(),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendsBody {
    pub friends: Vec<String>,
}

async fn put_friends(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: FriendsBody = body(b)?;
    check_id("user id", &id)?;
    let hub = s.hub;
    let mut known = HashMap::new();
    let user = intern_all(&hub, std::iter::once(id.as_str()), &mut known)?[0];
    let friends = intern_all(&hub, b.friends.iter().map(String::as_str), &mut known)?;
    let (add, remove) = {
        let _writer = hub.admin_writes.lock().await;
        hub.engine
            .replace_plan(user, &friends)
            .map_err(|e| bad(describe(&e, &|u| hub.engine.name(u).unwrap_or_default())))?
    };
    for &(_, f) in &remove {
        if let Some(n) = hub.engine.name(f) {
            known.entry(f.0).or_insert(n);
        }
    }
    apply_edges(hub, add, remove, known).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_friends(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Json<serde_json::Value> {
    let hub = s.hub;
    let Some(user) = hub.engine.lookup(&id) else {
        return Json(json!({ "friends": [] }));
    };
    let friends = hub.engine.friends(user);
    let names: Vec<String> = hub.engine.with_names(|name| {
        friends
            .iter()
            .filter_map(|f| name(*f).map(str::to_owned))
            .collect()
    });
    Json(json!({ "friends": names }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FriendshipsBody {
    #[serde(default)]
    pub add: Vec<(String, String)>,
    #[serde(default)]
    pub remove: Vec<(String, String)>,
}

async fn post_friendships(
    State(s): State<AdminState>,
    b: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: FriendshipsBody = body(b)?;
    let hub = s.hub;
    let mut known = HashMap::new();
    let mut pairs = |list: &[(String, String)]| -> Result<Vec<(UserId, UserId)>, ApiError> {
        let ids = intern_all(
            &hub,
            list.iter().flat_map(|(a, b)| [a.as_str(), b.as_str()]),
            &mut known,
        )?;
        Ok(ids.chunks(2).map(|c| (c[0], c[1])).collect())
    };
    let add = pairs(&b.add)?;
    let remove = pairs(&b.remove)?;
    let (added, removed) = apply_edges(hub, add, remove, known).await?;
    Ok(Json(json!({ "added": added, "removed": removed })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupBody {
    pub members: Vec<String>,
}

async fn put_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: GroupBody = body(b)?;
    check_id("group id", &gid)?;
    if b.members.len() > MAX_GROUP {
        return Err(bad(format!("a group has at most {MAX_GROUP} members")));
    }
    let mut members = b.members;
    for mbr in &members {
        check_id("member", mbr)?;
    }
    members.sort();
    if let Some(w) = members.windows(2).find(|w| w[0] == w[1]) {
        return Err(bad(format!("member {:?} listed twice", w[0])));
    }
    let hub = s.hub;
    for mbr in &members {
        hub.engine.intern(mbr).map_err(|e| bad(e.to_string()))?;
    }
    let _writer = hub.admin_writes.lock().await;
    let h = hub.clone();
    let (g, ms) = (gid.clone(), members.clone());
    tokio::task::spawn_blocking(move || h.store.put_group(&g, &ms))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    hub.groups.write().insert(gid, members.into());
    Ok(StatusCode::NO_CONTENT)
}

async fn get_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    match s.hub.groups.read().get(&gid) {
        Some(members) => Ok(Json(json!({ "members": &**members }))),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no group {gid:?}"))),
    }
}

async fn delete_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id("group id", &gid)?;
    let hub = s.hub;
    let _writer = hub.admin_writes.lock().await;
    let h = hub.clone();
    let g = gid.clone();
    tokio::task::spawn_blocking(move || h.store.delete_group(&g))
        .await
        .map_err(internal)?
        .map_err(internal)?;
    hub.groups.write().remove(&gid);
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
struct PresenceQuery {
    users: String,
}

async fn get_presence(
    State(s): State<AdminState>,
    q: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let names: Vec<&str> = q.users.split(',').filter(|u| !u.is_empty()).collect();
    if names.len() > MAX_QUERY {
        return Err(bad(format!("at most {MAX_QUERY} users per query")));
    }
    for n in &names {
        check_id("user id", n)?;
    }
    let engine = &s.hub.engine;
    let ids: Vec<UserId> = names
        .iter()
        .map(|n| engine.lookup(n).unwrap_or(UserId(u32::MAX)))
        .collect();
    let presence = engine.presence_of(&ids);
    let cfg = engine.config();
    let entries: Vec<presence_wire::PresenceEntry<'_>> = names
        .iter()
        .zip(&presence)
        .map(|(n, p)| frames::entry(n, p, cfg))
        .collect();
    Ok(Json(json!({ "presence": entries })))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub user: String,
    #[serde(default = "default_ttl")]
    pub ttl_s: u64,
    #[serde(default)]
    pub device: Option<String>,
}

fn default_ttl() -> u64 {
    3600
}

async fn post_token(
    State(s): State<AdminState>,
    b: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
    let b: TokenBody = body(b)?;
    check_id("user", &b.user)?;
    if b.ttl_s == 0 || b.ttl_s > 366 * 24 * 3600 {
        return Err(bad("ttl_s must be between 1 and one year"));
    }
    let claims = token::Claims {
        sub: b.user,
        exp: now_ms() / 1000 + b.ttl_s,
        dev: b.device,
    };
    Ok(Json(
        json!({ "token": token::mint(&s.hub.secret, &claims) }),
    ))
}

async fn healthz(State(s): State<AdminState>) -> Json<serde_json::Value> {
    let fp = s.hub.engine.footprint();
    Json(json!({
        "status": "ok",
        "users": fp.users,
        "edges": fp.edges,
        "sessions": s.hub.session_count(),
    }))
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
