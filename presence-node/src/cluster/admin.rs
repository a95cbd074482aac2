//! The admin API's graph and group calls on a cluster node: they read and write PostgreSQL
//! (the cluster's graph), and a write is answered once this node's change follower has
//! applied it and a tick has published it, and every linked peer has said the same of
//! itself (`PeerFrame::Applied`), so every welcome on any node after the answer has it.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::json;

use super::Hooks;
use crate::admin::{
    AdminState, ApiError, Friends, FriendsBody, FriendshipsApplied, FriendshipsBody, Group,
    GroupBody, GroupPresence, PresenceQuery, body,
};
use crate::service::admin::check_id;

/// Longest an answer waits for this node to apply its own write from the log.
const APPLY_WAIT: Duration = Duration::from_secs(10);
/// Longest it then waits for the linked peers to apply it (a peer that is paused or cut off
/// keeps its link for a few seconds: the write is durable, and answered without it).
const PEER_WAIT: Duration = Duration::from_secs(3);

fn hooks(s: &AdminState) -> Result<&Hooks, ApiError> {
    s.node.cluster_hooks().ok_or_else(|| {
        ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node has not joined its cluster yet".into(),
        )
    })
}

/// A store error as the API answers it: the caller's mistakes are 400, the rest 500 (503 when
/// retrying may work).
fn store_error(e: presence_pg::Error) -> ApiError {
    use presence_pg::Error as E;
    match e {
        E::BadId { .. }
        | E::SelfFriendship(_)
        | E::DuplicatePair(..)
        | E::TooManyFriends { .. }
        | E::BadStatus(_) => ApiError(StatusCode::BAD_REQUEST, e.to_string()),
        e if e.is_transient() => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e => {
            tracing::error!("admin: {e}");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Waits until this node has applied change `id` and a tick after it has been handed out,
/// then until every linked peer says the same of itself (at most [`PEER_WAIT`]): a session
/// that starts on any node after the answer sees the write.
async fn applied(s: &AdminState, id: Option<i64>) {
    let Some(id) = id else { return };
    let Ok(h) = hooks(s) else { return };
    let mut rx = h.applied.clone();
    if tokio::time::timeout(APPLY_WAIT, rx.wait_for(|&a| a >= id))
        .await
        .is_err()
    {
        tracing::warn!(change = id, "own write not applied from the log in time");
    }
    let tick = s.node.service().engine().published_tick() + 1;
    s.node.published(tick).await;
    let behind = h.peers.applied_everywhere(id, PEER_WAIT).await;
    if !behind.is_empty() {
        metrics::counter!(crate::metrics::ADMIN_PEERS_BEHIND).increment(1);
        tracing::warn!(
            change = id,
            ?behind,
            "answering a write that these peers have not applied yet"
        );
    }
}

pub(crate) async fn put_friends(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: FriendsBody = body(b)?;
    check_id("user id", &id)?;
    let friends: Vec<&str> = b.friends.iter().map(String::as_str).collect();
    let a = hooks(&s)?
        .store
        .replace_friends(&id, &friends)
        .await
        .map_err(store_error)?;
    applied(&s, a.change).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn get_friends(
    State(s): State<AdminState>,
    Path(id): Path<String>,
) -> Result<Json<Friends>, ApiError> {
    check_id("user id", &id)?;
    let friends = hooks(&s)?.store.friends(&id).await.map_err(store_error)?;
    Ok(Json(Friends { friends }))
}

pub(crate) async fn post_friendships(
    State(s): State<AdminState>,
    b: Bytes,
) -> Result<Json<FriendshipsApplied>, ApiError> {
    let b: FriendshipsBody = body(b)?;
    let add: Vec<(&str, &str)> = b
        .add
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let remove: Vec<(&str, &str)> = b
        .remove
        .iter()
        .map(|(a, b)| (a.as_str(), b.as_str()))
        .collect();
    let a = hooks(&s)?
        .store
        .apply_friendships(&add, &remove)
        .await
        .map_err(store_error)?;
    applied(&s, a.change).await;
    Ok(Json(FriendshipsApplied {
        added: a.added,
        removed: a.removed,
    }))
}

pub(crate) async fn put_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: GroupBody = body(b)?;
    let members = s.node.service().check_group(&gid, b.members)?;
    let list: Vec<&str> = members.iter().map(String::as_str).collect();
    let change = hooks(&s)?
        .store
        .put_group(&gid, &list)
        .await
        .map_err(store_error)?;
    applied(&s, change).await;
    Ok(StatusCode::NO_CONTENT)
}

pub(crate) async fn get_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<Group>, ApiError> {
    check_id("group id", &gid)?;
    match hooks(&s)?.store.group(&gid).await.map_err(store_error)? {
        Some(members) => Ok(Json(Group { members })),
        None => Err(ApiError(StatusCode::NOT_FOUND, format!("no group {gid:?}"))),
    }
}

pub(crate) async fn delete_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<StatusCode, ApiError> {
    check_id("group id", &gid)?;
    let change = hooks(&s)?
        .store
        .delete_group(&gid)
        .await
        .map_err(store_error)?;
    applied(&s, change).await;
    Ok(StatusCode::NO_CONTENT)
}

/// Marks a presence query one node forwards to another: answered from the receiver's engine,
/// never forwarded again.
const FORWARDED: &str = "x-presence-forwarded";

/// The presence query: each user's presence from its owner (this node's engine for its own
/// users, the owner's admin API for the others, one request per owner).
pub(crate) async fn get_presence(
    State(s): State<AdminState>,
    headers: axum::http::HeaderMap,
    q: Result<axum::extract::Query<PresenceQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let axum::extract::Query(q) =
        q.map_err(|e| ApiError(StatusCode::BAD_REQUEST, e.body_text()))?;
    let names: Vec<&str> = q.users.split(',').filter(|u| !u.is_empty()).collect();
    if headers.contains_key(FORWARDED) {
        let local = s.node.service().presence(&names)?;
        return Ok(Json(json!({ "presence": local })));
    }
    let entries = presence_from_owners(&s, &names).await?;
    Ok(Json(json!({ "presence": entries })))
}

/// `GET /v1/groups/{gid}/presence` on a cluster node: the members (from PostgreSQL) counted
/// from their owners' answers, as [`get_presence`] asks them.
pub(crate) async fn get_group_presence(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
) -> Result<Json<GroupPresence>, ApiError> {
    check_id("group id", &gid)?;
    let Some(members) = hooks(&s)?.store.group(&gid).await.map_err(store_error)? else {
        return Err(ApiError(StatusCode::NOT_FOUND, format!("no group {gid:?}")));
    };
    let names: Vec<&str> = members.iter().map(String::as_str).collect();
    let entries = presence_from_owners(&s, &names).await?;
    let count = |state: &str| entries.iter().filter(|e| e["state"] == state).count() as u64;
    Ok(Json(GroupPresence {
        group: gid,
        idle: count("idle"),
        online: count("online"),
        total: members.len() as u64,
    }))
}

/// Each user's presence entry from its owner: this node's engine for its own users, the
/// owner's admin API for the others (one request per owner), in the order asked.
async fn presence_from_owners(
    s: &AdminState,
    names: &[&str],
) -> Result<Vec<serde_json::Value>, ApiError> {
    let svc = s.node.service();
    // The same checks as on one node, before anything is asked of another node.
    let local = svc.presence(names)?;
    let Some(routes) = svc.routes() else {
        return Err(ApiError(
            StatusCode::SERVICE_UNAVAILABLE,
            "the node has not joined its cluster yet".into(),
        ));
    };
    let mut entries: Vec<serde_json::Value> = local
        .into_iter()
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    // owner's admin address -> positions
    let mut remote: std::collections::BTreeMap<String, Vec<usize>> = Default::default();
    for (i, n) in names.iter().enumerate() {
        match routes.map().route(n.as_bytes()) {
            Some(r) if r.node.id == routes.me() => {}
            Some(r) => remote.entry(r.node.admin.clone()).or_default().push(i),
            None => {
                return Err(ApiError(
                    StatusCode::SERVICE_UNAVAILABLE,
                    format!("no node owns user {n:?} right now: retry shortly"),
                ));
            }
        }
    }
    for (admin, positions) in remote {
        let users: Vec<&str> = positions.iter().map(|&i| names[i]).collect();
        let answer = forward(&admin, svc.admin_key(), &users.join(",")).await?;
        let list = answer["presence"].as_array().cloned().unwrap_or_default();
        if list.len() != positions.len() {
            return Err(ApiError(
                StatusCode::BAD_GATEWAY,
                format!(
                    "node at {admin} answered {} of {} users",
                    list.len(),
                    positions.len()
                ),
            ));
        }
        for (i, e) in positions.into_iter().zip(list) {
            entries[i] = e;
        }
    }
    Ok(entries)
}

type HttpClient = hyper_util::client::legacy::Client<
    hyper_util::client::legacy::connect::HttpConnector,
    http_body_util::Full<Bytes>,
>;

/// One HTTP client for every forwarded query: its pool keeps connections to the other nodes.
fn peer_admin() -> &'static HttpClient {
    static CLIENT: std::sync::OnceLock<HttpClient> = std::sync::OnceLock::new();
    CLIENT.get_or_init(|| {
        hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
            .build_http()
    })
}

/// `GET /v1/presence?users=…` on another node's admin API.
async fn forward(admin: &str, key: &str, users: &str) -> Result<serde_json::Value, ApiError> {
    use http_body_util::BodyExt;
    let gateway = |e: &dyn std::fmt::Display| {
        ApiError(
            StatusCode::BAD_GATEWAY,
            format!("asking the node at {admin}: {e}"),
        )
    };
    let query = serde_urlencoded::to_string([("users", users)]).map_err(|e| gateway(&e))?;
    let req = hyper::Request::get(format!("http://{admin}/v1/presence?{query}"))
        .header(axum::http::header::AUTHORIZATION, format!("Bearer {key}"))
        .header(FORWARDED, "1")
        .body(http_body_util::Full::new(Bytes::new()))
        .map_err(|e| gateway(&e))?;
    let resp = tokio::time::timeout(Duration::from_secs(5), peer_admin().request(req))
        .await
        .map_err(|_| gateway(&"no answer in 5 s"))?
        .map_err(|e| gateway(&e))?;
    let status = resp.status();
    let body = resp
        .into_body()
        .collect()
        .await
        .map_err(|e| gateway(&e))?
        .to_bytes();
    if !status.is_success() {
        return Err(gateway(&format!(
            "{status}: {}",
            String::from_utf8_lossy(&body)
        )));
    }
    serde_json::from_slice(&body).map_err(|e| gateway(&e))
}
