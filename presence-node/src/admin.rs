//! The admin HTTP API the app's backend calls: friends, friendships, groups, presence
//! queries, tokens, health and Prometheus metrics. This is the HTTP layer only: it parses
//! bodies, runs the service's admin calls (writes on a blocking thread) and maps their
//! errors to status codes; the rules are in `service::admin`.
//!
//! Every route is described in the OpenAPI document (`crate::openapi`, served at
//! `GET /v1/openapi.json`): the `#[utoipa::path]` of each handler here states its contract,
//! which the cluster's handlers (`cluster::admin`) share.

use std::sync::Arc;

use axum::extract::{DefaultBodyLimit, MatchedPath, Path, Query, Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post, put};
use axum::{Json, Router};
use bytes::Bytes;
use metrics_exporter_prometheus::PrometheusHandle;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::metrics as m;
use crate::node::{Node, now_ms};
use crate::service::Service;
use crate::service::admin::{AdminError, EdgesApplied};
use crate::store::GraphWrite;
use crate::topology::{ClusterAnswer, RouteAnswer, Topology};

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
            .route("/v1/groups/{gid}/presence", get(c::get_group_presence))
    } else {
        Router::new()
            .route("/v1/users/{id}/friends", put(put_friends).get(get_friends))
            .route("/v1/friendships", post(post_friendships))
            .route(
                "/v1/groups/{gid}",
                put(put_group).delete(delete_group).get(get_group),
            )
            .route("/v1/presence", get(get_presence))
            .route("/v1/groups/{gid}/presence", get(get_group_presence))
    };
    let api = Router::new()
        .merge(graph)
        .route("/v1/tokens", post(post_token))
        .route("/v1/route", get(get_route))
        .route("/v1/cluster", get(get_cluster))
        .layer(middleware::from_fn_with_state(state.clone(), require_key));
    Router::new()
        .merge(api)
        // Open like /healthz: it describes the API, not its data, and code generators fetch it.
        .route("/v1/openapi.json", get(crate::openapi::openapi_json))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics_text))
        .layer(middleware::from_fn(count_requests))
        .layer(DefaultBodyLimit::max(MAX_BODY))
        .with_state(state)
}

/// A refusal: status and message, as `{"error": "…"}`.
pub(crate) struct ApiError(pub(crate) StatusCode, pub(crate) String);

/// Every refusal's body.
#[derive(Serialize, ToSchema)]
pub struct ErrorBody {
    /// What was wrong, for people.
    pub error: String,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(ErrorBody { error: self.1 })).into_response()
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

/// `body` for tests (tests/fuzz.rs): a refusal as its status and message.
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

/// A user's whole friend list (edges are symmetric).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendsBody {
    pub friends: Vec<String>,
}

/// `GET /v1/users/{id}/friends`' answer.
#[derive(Serialize, ToSchema)]
pub struct Friends {
    pub friends: Vec<String>,
}

#[utoipa::path(put, path = "/v1/users/{id}/friends", tag = "graph",
    summary = "Replace a user's friends",
    description = "Replaces one user's friend list (edges are symmetric). On disk, and in every \
        later welcome, before the answer.",
    params(("id" = String, Path, description = "user id")),
    request_body = FriendsBody,
    responses(
        (status = 204, description = "replaced"),
        (status = 400, description = "malformed body, invalid id, self-friendship, too many \
            friends", body = ErrorBody),
        (status = 500, description = "the write could not be stored", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or the database is \
            briefly out of reach; retry", body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/v1/users/{id}/friends", tag = "graph",
    summary = "A user's friends",
    description = "A user's friends (extension).",
    params(("id" = String, Path, description = "user id")),
    responses(
        (status = 200, description = "the friend list, empty for an unknown user", body = Friends),
        (status = 400, description = "cluster: invalid user id", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or the database is \
            briefly out of reach; retry", body = ErrorBody),
    ))]
async fn get_friends(State(s): State<AdminState>, Path(id): Path<String>) -> Json<Friends> {
    Json(Friends {
        friends: s.node.service().friends_of(&id),
    })
}

/// Bulk edge changes: pairs of user ids.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FriendshipsBody {
    /// Pairs `[a, b]` of user ids to make friends.
    #[serde(default)]
    pub add: Vec<(String, String)>,
    /// Pairs `[a, b]` of user ids no longer friends.
    #[serde(default)]
    pub remove: Vec<(String, String)>,
}

/// `POST /v1/friendships`' answer: the edges that changed.
#[derive(Serialize, ToSchema)]
pub struct FriendshipsApplied {
    pub added: u64,
    pub removed: u64,
}

#[utoipa::path(post, path = "/v1/friendships", tag = "graph",
    summary = "Add and remove friendships in bulk",
    description = "Adds and removes friendships in bulk, all or nothing. On disk, and in every \
        later welcome, before the answer.",
    request_body = FriendshipsBody,
    responses(
        (status = 200, description = "applied", body = FriendshipsApplied),
        (status = 400, description = "malformed body, invalid id, self-friendship, a pair \
            twice, too many friends", body = ErrorBody),
        (status = 500, description = "the write could not be stored", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or the database is \
            briefly out of reach; retry", body = ErrorBody),
    ))]
async fn post_friendships(
    State(s): State<AdminState>,
    b: Bytes,
) -> Result<Json<FriendshipsApplied>, ApiError> {
    let b: FriendshipsBody = body(b)?;
    let applied = graph_write(&s, move |svc| svc.plan_friendships(&b.add, &b.remove)).await?;
    let a = published(&s, applied).await;
    Ok(Json(FriendshipsApplied {
        added: a.added,
        removed: a.removed,
    }))
}

/// A group's whole member list (at most `--max-group` members).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct GroupBody {
    pub members: Vec<String>,
}

/// `GET /v1/groups/{gid}`' answer.
#[derive(Serialize, ToSchema)]
pub struct Group {
    pub members: Vec<String>,
}

#[utoipa::path(put, path = "/v1/groups/{gid}", tag = "groups",
    summary = "Create or replace a group",
    description = "Creates or replaces a group.",
    params(("gid" = String, Path, description = "group id")),
    request_body = GroupBody,
    responses(
        (status = 204, description = "stored"),
        (status = 400, description = "malformed body, invalid id, over `--max-group` \
            members", body = ErrorBody),
        (status = 500, description = "the write could not be stored", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or the database is \
            briefly out of reach; retry", body = ErrorBody),
    ))]
async fn put_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: GroupBody = body(b)?;
    graph_write(&s, move |svc| svc.plan_put_group(&gid, b.members)).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/v1/groups/{gid}", tag = "groups",
    summary = "A group's members",
    description = "A group's members (extension).",
    params(("gid" = String, Path, description = "group id")),
    responses(
        (status = 200, description = "the group", body = Group),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 404, description = "no such group", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or the database is \
            briefly out of reach; retry", body = ErrorBody),
    ))]
async fn get_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<Group>, ApiError> {
    let members = s.node.service().group(&gid)?;
    Ok(Json(Group {
        members: members.to_vec(),
    }))
}

/// `GET /v1/groups/{gid}/presence`' answer: how many of a group's members are online and
/// idle.
// Fields in alphabetical order: the JSON is byte for byte the one the answer always had.
#[derive(Serialize, ToSchema)]
pub struct GroupPresence {
    /// The group id.
    pub group: String,
    /// Members idle.
    pub idle: u64,
    /// Members online (active); invisible members count as offline.
    pub online: u64,
    /// Members in all.
    pub total: u64,
}

/// `GET /v1/groups/{gid}/presence` (v1.1): the group's online, idle and total counts.
#[utoipa::path(get, path = "/v1/groups/{gid}/presence", tag = "groups",
    summary = "A group's online and idle counts",
    description = "How many of a group's members are online and idle (v1.1).",
    params(("gid" = String, Path, description = "group id")),
    responses(
        (status = 200, description = "the group's counts", body = GroupPresence),
        (status = 404, description = "no such group", body = ErrorBody),
        (status = 502, description = "cluster: another node's answer failed", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or no node owns a member \
            right now; retry", body = ErrorBody),
    ))]
async fn get_group_presence(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<GroupPresence>, ApiError> {
    let svc = s.node.service_arc();
    let c = svc.group_presence(&gid)?;
    Ok(Json(GroupPresence {
        group: gid,
        idle: c.idle,
        online: c.online,
        total: c.total,
    }))
}

#[utoipa::path(delete, path = "/v1/groups/{gid}", tag = "groups",
    summary = "Remove a group",
    description = "Removes a group (removing one that does not exist is no error).",
    params(("gid" = String, Path, description = "group id")),
    responses(
        (status = 204, description = "removed, or there was none"),
        (status = 400, description = "invalid id", body = ErrorBody),
        (status = 500, description = "the write could not be stored", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or the database is \
            briefly out of reach; retry", body = ErrorBody),
    ))]
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

/// `GET /v1/presence`' answer: one entry per user asked, in the order asked.
#[derive(Serialize, ToSchema)]
pub struct PresenceAnswer {
    pub presence: Vec<presence_wire::PresenceEntry<'static>>,
}

#[utoipa::path(get, path = "/v1/presence", tag = "presence",
    summary = "Users' presence",
    description = "The current presence of some users (unknown users are offline, never seen).",
    params(("users" = String, Query,
        description = "comma-separated user ids, at most 10,000", example = "1,2,3")),
    responses(
        (status = 200, description = "their presence", body = PresenceAnswer),
        (status = 400, description = "no `users`, an invalid id, over 10,000 users",
            body = ErrorBody),
        (status = 502, description = "cluster: the node owning some of the users answered \
            badly or not at all", body = ErrorBody),
        (status = 503, description = "cluster: not joined yet, or some user's slot has no \
            owner right now; retry", body = ErrorBody),
    ))]
async fn get_presence(
    State(s): State<AdminState>,
    q: Result<Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<PresenceAnswer>, ApiError> {
    let Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let names: Vec<&str> = q.users.split(',').filter(|u| !u.is_empty()).collect();
    let presence = s.node.service().presence(&names)?;
    Ok(Json(PresenceAnswer { presence }))
}

#[derive(Deserialize)]
struct RouteQuery {
    user: String,
}

#[utoipa::path(get, path = "/v1/route", tag = "cluster",
    summary = "Where a user's sessions belong",
    description = "Where a user's sessions belong now (v1.1; a single node names itself).",
    params(("user" = String, Query, description = "user id")),
    responses(
        (status = 200, description = "the owning node's addresses", body = RouteAnswer),
        (status = 400, description = "no `user`, or an invalid one", body = ErrorBody),
        (status = 503, description = "no node surely owns the user's slot right now; retry",
            body = ErrorBody),
    ))]
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

#[utoipa::path(get, path = "/v1/cluster", tag = "cluster",
    summary = "Cluster members and slots",
    description = "The cluster's members and how many slots each owns (v1.1; a single node: \
        itself with all 1,024 slots, epoch 0).",
    responses((status = 200, description = "members and slots", body = ClusterAnswer)))]
async fn get_cluster(State(s): State<AdminState>) -> Json<ClusterAnswer> {
    Json(s.topology.cluster())
}

/// A client token to mint (for development and tests: the app signs its own).
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct TokenBody {
    pub user: String,
    /// Lifetime in seconds.
    #[serde(default = "default_ttl")]
    #[schema(default = 3600, minimum = 1, maximum = 31_622_400)]
    pub ttl_s: u64,
    /// The device the token is for.
    #[serde(default)]
    pub device: Option<String>,
}

/// `POST /v1/tokens`' answer.
#[derive(Serialize, ToSchema)]
pub struct TokenAnswer {
    /// The client token, for the `hello`.
    pub token: String,
}

fn default_ttl() -> u64 {
    3600
}

#[utoipa::path(post, path = "/v1/tokens", tag = "tokens",
    summary = "Mint a client token",
    description = "Mints a client token with the node's secret (a convenience for \
        development and tests).",
    request_body = TokenBody,
    responses(
        (status = 200, description = "the token", body = TokenAnswer),
        (status = 400, description = "malformed body, invalid user, `ttl_s` not between 1 s \
            and a year", body = ErrorBody),
    ))]
async fn post_token(State(s): State<AdminState>, b: Bytes) -> Result<Json<TokenAnswer>, ApiError> {
    let b: TokenBody = body(b)?;
    let token = s
        .node
        .service()
        .mint_token(b.user, b.ttl_s, b.device, now_ms())?;
    Ok(Json(TokenAnswer { token }))
}

/// `GET /healthz`' answer.
// Fields in alphabetical order: the JSON is byte for byte the one the answer always had.
#[derive(Serialize, ToSchema)]
pub struct Health {
    /// Only in a cluster.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cluster: Option<ClusterHealth>,
    /// Friendships held.
    pub edges: u64,
    /// Live sessions on this node.
    pub sessions: usize,
    pub status: HealthStatus,
    /// Users known.
    pub users: usize,
}

/// `ok`, or `fenced` (with `503`) while a cluster node's lease is not surely alive.
#[derive(Serialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum HealthStatus {
    Ok,
    Fenced,
}

/// A cluster node's part of `GET /healthz`.
#[derive(Serialize, ToSchema)]
pub struct ClusterHealth {
    /// Whether its etcd lease is surely alive (if not, it serves nothing).
    pub lease_held: bool,
    /// This node's id.
    pub node: String,
    /// Peer links up.
    pub peers: usize,
    /// Slots this node serves.
    pub slots_served: usize,
}

/// `200 {"status": "ok", …}`; in a cluster also the lease, the slots served and the peer
/// links, and `503 {"status": "fenced"}` while the lease is not surely alive (etcd out of
/// reach: the node serves nothing it cannot prove is its own).
#[utoipa::path(get, path = "/healthz", tag = "operations",
    summary = "Health",
    description = "Liveness and readiness, for probes (no key).",
    responses(
        (status = 200, description = "serving", body = Health),
        (status = 503, description = "cluster: fenced, the lease is not surely alive",
            body = Health),
    ))]
async fn healthz(State(s): State<AdminState>) -> (StatusCode, Json<Health>) {
    let h = s.node.service().health();
    let cluster = s.node.cluster_health().map(|c| ClusterHealth {
        lease_held: c.lease_held,
        node: s.topology.me().id.clone(),
        peers: c.peers,
        slots_served: c.slots_served,
    });
    let status = if cluster.as_ref().is_some_and(|c| !c.lease_held) {
        HealthStatus::Fenced
    } else {
        HealthStatus::Ok
    };
    let code = if status == HealthStatus::Ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    let body = Health {
        cluster,
        edges: h.edges,
        sessions: h.sessions,
        status,
        users: h.users,
    };
    (code, Json(body))
}

#[utoipa::path(get, path = "/metrics", tag = "operations",
    summary = "Prometheus metrics",
    description = "Prometheus metrics, for scrapers (no key); listed in docs/protocol.md.",
    responses((status = 200, description = "Prometheus text exposition",
        content_type = "text/plain; version=0.0.4", body = String)))]
async fn metrics_text(State(s): State<AdminState>) -> impl IntoResponse {
    s.node.service().refresh_graph_gauges();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        s.metrics.render(),
    )
}
