//! The admin API's graph and group calls on a cluster node: they read and write PostgreSQL
//! (the cluster's graph), and a write is answered once this node's change follower has
//! applied it and a tick has published it, so every welcome on this node after the answer
//! has it; the owners of the other ends apply it from the log within their next poll.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use bytes::Bytes;
use serde_json::json;

use super::Hooks;
use crate::admin::{AdminState, ApiError, FriendsBody, FriendshipsBody, GroupBody, body};
use crate::service::admin::check_id;

/// Longest an answer waits for this node to apply its own write from the log.
const APPLY_WAIT: Duration = Duration::from_secs(10);

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
        E::BadId { .. } | E::SelfFriendship(_) | E::DuplicatePair(..) => {
            ApiError(StatusCode::BAD_REQUEST, e.to_string())
        }
        e if e.is_transient() => ApiError(StatusCode::SERVICE_UNAVAILABLE, e.to_string()),
        e => {
            tracing::error!("admin: {e}");
            ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string())
        }
    }
}

/// Waits until this node has applied change `id` and a tick after it has been handed out.
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
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("user id", &id)?;
    let friends = hooks(&s)?.store.friends(&id).await.map_err(store_error)?;
    Ok(Json(json!({ "friends": friends })))
}

pub(crate) async fn post_friendships(
    State(s): State<AdminState>,
    b: Bytes,
) -> Result<Json<serde_json::Value>, ApiError> {
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
    Ok(Json(json!({ "added": a.added, "removed": a.removed })))
}

pub(crate) async fn put_group(
    State(s): State<AdminState>,
    Path(gid): Path<String>,
    b: Bytes,
) -> Result<StatusCode, ApiError> {
    let b: GroupBody = body(b)?;
    // The same checks as on one node (`Service::plan_put_group`).
    let mut members = b.members;
    check_id("group id", &gid)?;
    let max = s.node.service().config().max_group;
    if members.len() > max {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("a group has at most {max} members (--max-group)"),
        ));
    }
    for m in &members {
        check_id("member", m)?;
    }
    members.sort();
    if let Some(w) = members.windows(2).find(|w| w[0] == w[1]) {
        return Err(ApiError(
            StatusCode::BAD_REQUEST,
            format!("member {:?} listed twice", w[0]),
        ));
    }
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
) -> Result<Json<serde_json::Value>, ApiError> {
    check_id("group id", &gid)?;
    match hooks(&s)?.store.group(&gid).await.map_err(store_error)? {
        Some(members) => Ok(Json(json!({ "members": members }))),
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
