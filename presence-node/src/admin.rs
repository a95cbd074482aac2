//! The admin HTTP API the app's backend calls: friends, friendships, groups, presence
//! queries, tokens, health and Prometheus metrics. This is the HTTP layer only: it parses
//! bodies, runs the service's admin calls (writes on a blocking thread) and maps their
//! errors to status codes; the rules are in `service::admin`.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::Deserialize;
use serde_json::json;

use crate::metrics as m;
use crate::node::{Node, now_ms};
use crate::service::Service;
use crate::service::admin::{AdminError, EdgesApplied};
use crate::store::GraphWrite;
use crate::topology::Topology;

/// Largest admin request body (bulk friendship loads).
const MAX_BODY: usize = 64 * 1024 * 1024;

#[derive(Clone)]
pub(crate) struct AdminState {
    pub(crate) node: Arc<Node>,
    topology: Arc<Topology>,
    metrics: PrometheusHandle,
}

pub fn router(node: Arc<Node>, topology: Arc<Topology>, metrics: PrometheusHandle) -> Router {
    let state = AdminState {
        node,
        topology,
        metrics,
    };
    // In a cluster the graph and the groups are PostgreSQL's (`cluster::admin`).
    let graph = if matches!(*state.topology, Topology::Cluster { .. }) {
        use crate::cluster::admin as c;
        Router::new()
            .route(
                "/v1/users/{id}/friends",
                put(c::put_friends).get(c::get_friends),
            )
            .route("/v1/friendships", post(c::post_friendships))
            .route(
                "/v1/groups/{gid}",
                put(c::put_group).delete(c::delete_group).get(c::get_group),
            )
            .route("/v1/presence", get(c::get_presence))
    } else {
        Router::new()
            .route("/v1/users/{id}/friends", put(put_friends).get(get_friends))
            .route("/v1/friendships", post(post_friendships))
            .route(
                "/v1/groups/{gid}",
                put(put_group).delete(delete_group).get(get_group),
            )
            .route("/v1/presence", get(get_presence))
    };
    let api = Router::new()
        .merge(graph)
        .route("/v1/groups/{gid}/presence", get(get_group_presence))
        .route("/v1/tokens", post(post_token))
        .route("/v1/route", get(get_route))
        .route("/v1/cluster", get(get_cluster))
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
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(json!({ "error": self.1 }))).into_response()
    }
}

impl From<AdminError> for ApiError {
    fn from(e: AdminError) -> Self {
        match e {
            AdminError::Bad(m) => ApiError(StatusCode::BAD_REQUEST, m),
            AdminError::NotFound(m) => ApiError(StatusCode::NOT_FOUND, m),
            AdminError::Internal(m) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, m),
            AdminError::Unavailable(m) => ApiError(StatusCode::SERVICE_UNAVAILABLE, m),
        }
    }
}

fn bad(msg: impl Into<String>) -> ApiError {
    ApiError(StatusCode::BAD_REQUEST, msg.into())
}

/// Parses a JSON body whatever its content type (curl users forget the header).
pub(crate) fn body<T: serde::de::DeserializeOwned>(b: Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(&b).map_err(|e| bad(format!("invalid JSON body: {e}")))
}

/// [`body`] for tests (tests/fuzz.rs): a refusal as its status and message.
pub fn parse_body<T: serde::de::DeserializeOwned>(b: &[u8]) -> Result<T, (StatusCode, String)> {
    body(Bytes::copy_from_slice(b)).map_err(|ApiError(status, msg)| (status, msg))
}

/// Runs a blocking admin call off the async workers.
async fn blocking<R: Send + 'static>(
    s: &AdminState,
    f: impl FnOnce(&Service) -> Result<R, AdminError> + Send + 'static,
) -> Result<R, ApiError> {
    let svc = s.node.service_arc();
    match tokio::task::spawn_blocking(move || f(&svc)).await {
        Ok(r) => r.map_err(ApiError::from),
        Err(e) => Err(ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())),
    }
}

/// Plans a graph write (the service), makes it durable (the graph store, one fsync) and
/// applies it (the service), on a blocking thread, with no other admin write in between.
async fn graph_write(
    s: &AdminState,
    plan: impl FnOnce(&Service) -> Result<GraphWrite, AdminError> + Send + 'static,
) -> Result<EdgesApplied, ApiError> {
    let _writer = s.node.admin_writes().lock().await;
    blocking(s, move |svc| {
        let w = plan(svc)?;
        svc.graph_store().write(&w).map_err(|e| {
            tracing::error!("admin: {e}");
            AdminError::Internal(e.to_string())
        })?;
        Ok(svc.apply_graph_write(w))
    })
    .await
}

/// Answers an edge write once the tick that publishes it is handed out: every welcome after
/// the answer has it (read-your-writes).
async fn published(s: &AdminState, applied: EdgesApplied) -> EdgesApplied {
    if let Some(tick) = applied.published_by {
        s.node.published(tick).await;
    }
    applied
}

async fn require_key(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let given = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if given.is_some_and(|g| s.node.service().admin_key_ok(g)) {
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
    let applied = graph_write(&s, move |svc| svc.plan_put_friends(&id, &b.friends)).await?;
    published(&s, applied).await;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_friends(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Json<serde_json::Value> {
    Json(json!({ "friends": s.node.service().friends_of(&id) }))
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
    let applied = graph_write(&s, move |svc| svc.plan_friendships(&b.add, &b.remove)).await?;
    let a = published(&s, applied).await;
    Ok(Json(json!({ "added": a.added, "removed": a.removed })))
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
    graph_write(&s, move |svc| svc.plan_put_group(&gid, b.members)).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn get_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let members = s.node.service().group(&gid)?;
    Ok(Json(json!({ "members": &*members })))
}

/// `GET /v1/groups/{gid}/presence` (v1.1): the group's online, idle and total counts.
async fn get_group_presence(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let svc = s.node.service_arc();
    let c = svc.group_presence(&gid)?;
    Ok(Json(json!({
        "group": gid,
        "online": c.online,
        "idle": c.idle,
        "total": c.total,
    })))
}

async fn delete_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<StatusCode, ApiError> {
    graph_write(&s, move |svc| svc.plan_delete_group(&gid)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Deserialize)]
pub(crate) struct PresenceQuery {
    pub(crate) users: String,
}

async fn get_presence(
    State(s): State<AdminState>,
    q: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let names: Vec<&str> = q.users.split(',').filter(|u| !u.is_empty()).collect();
    let entries = s.node.service().presence(&names)?;
    Ok(Json(json!({ "presence": entries })))
}

#[derive(Deserialize)]
struct RouteQuery {
    user: String,
}

async fn get_route(
    State(s): State<AdminState>,
    q: Result<Query<RouteQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    if q.user.is_empty() || q.user.len() > presence_core::MAX_USER_ID_LEN {
        return Err(bad(format!(
            "user: 1 to {} bytes",
            presence_core::MAX_USER_ID_LEN
        )));
    }
    Ok(match s.topology.route(&q.user) {
        Some(r) => Json(r).into_response(),
        None => ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "no node surely owns this user's slot right now: retry shortly".into(),
        )
        .into_response(),
    })
}

async fn get_cluster(State(s): State<AdminState>) -> Json<crate::topology::ClusterAnswer> {
    Json(s.topology.cluster())
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
    let token = s
        .node
        .service()
        .mint_token(b.user, b.ttl_s, b.device, now_ms())?;
    Ok(Json(json!({ "token": token })))
}

/// `200 {"status": "ok", …}`; in a cluster also the lease, the slots served and the peer
/// links, and `503 {"status": "fenced"}` while the lease is not surely alive (etcd out of
/// reach: the node serves nothing it cannot prove is its own).
async fn healthz(State(s): State<AdminState>) -> Response {
    let h = s.node.service().health();
    let mut body = json!({
        "status": "ok",
        "users": h.users,
        "edges": h.edges,
        "sessions": h.sessions,
    });
    let mut status = StatusCode::OK;
    if let Some(c) = s.node.cluster_health() {
        if !c.lease_held {
            body["status"] = json!("fenced");
            status = StatusCode::SERVICE_UNAVAILABLE;
        }
        body["cluster"] = json!({
            "node": s.topology.me().id,
            "lease_held": c.lease_held,
            "slots_served": c.slots_served,
            "peers": c.peers,
        });
    }
    (status, Json(body)).into_response()
}

async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    s.node.service().refresh_graph_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
