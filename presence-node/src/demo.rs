//! The demo page (`--demo-dir`, development only): static files at `/demo/` on the client port,
//! so the page reaches the WebSocket and long-poll endpoints on its own origin, and
//! `POST /demo/token`, which mints a token for any user the page names.
//!
//! Files come from the folders `--demo-dir` lists, the first that has the file winning (the
//! page's folder, then the built SDK's `dist/`): nothing is built into the binary, so a node
//! builds without the SDK's bundle. Only plain names are served (`[A-Za-z0-9._-]` segments not
//! starting with a dot, a known extension), never a directory listing, a dot file or a path
//! that climbs out.
//!
//! The token endpoint is why this is for development only: anyone who can reach the client
//! port can log in as anyone. Without `--demo-dir` neither route exists.

use std::path::PathBuf;
use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, Path, State};
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::{get, post};
use bytes::Bytes;
use serde::Deserialize;
use serde_json::json;

use crate::node::{Node, now_ms};

/// Largest file served (the page, its script and the SDK bundle are a few KB).
const MAX_FILE: u64 = 4 * 1024 * 1024;
/// How long a demo token lives.
const TOKEN_TTL_S: u64 = 12 * 3600;

struct Demo {
    node: Arc<Node>,
    dirs: Vec<PathBuf>,
}

/// The demo's routes, when `--demo-dir` is set.
pub fn router(node: Arc<Node>) -> Option<Router> {
    let dirs: Vec<PathBuf> = node
        .service()
        .config()
        .demo_dir
        .as_ref()?
        .iter()
        .map(PathBuf::from)
        .collect();
    for d in &dirs {
        if !d.is_dir() {
            tracing::warn!(dir = %d.display(), "demo-dir: not a folder (yet): its files are not served");
        }
    }
    tracing::warn!(
        "demo on at /demo/: POST /demo/token mints a token for any user on the client port \
         (development only)"
    );
    let state = Arc::new(Demo { node, dirs });
    Some(
        Router::new()
            .route("/demo", get(|| async { Redirect::permanent("/demo/") }))
            .route("/demo/", get(index))
            .route(
                "/demo/token",
                post(token).layer(DefaultBodyLimit::max(4096)),
            )
            .route("/demo/{*path}", get(file))
            .with_state(state),
    )
}

/// The content type of a file the demo may serve, by its extension.
fn content_type(name: &str) -> Option<&'static str> {
    let ext = name.rsplit_once('.')?.1;
    Some(match ext {
        "html" => "text/html; charset=utf-8",
        "js" | "mjs" => "text/javascript; charset=utf-8",
        "css" => "text/css; charset=utf-8",
        "map" | "json" => "application/json",
        "png" => "image/png",
        "svg" => "image/svg+xml",
        "ts" => "text/plain; charset=utf-8",
        _ => return None,
    })
}

/// `path` as a relative path of plain segments, or `None`.
pub fn safe_path(path: &str) -> Option<PathBuf> {
    let mut out = PathBuf::new();
    let mut n = 0;
    for seg in path.split('/') {
        n += 1;
        let plain = !seg.is_empty()
            && !seg.starts_with('.')
            && seg
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
        if !plain || n > 8 {
            return None;
        }
        out.push(seg);
    }
    Some(out)
}

fn not_found() -> Response {
    (StatusCode::NOT_FOUND, "not found\n").into_response()
}

async fn index(State(d): State<Arc<Demo>>) -> Response {
    serve(&d, "index.html").await
}

async fn file(State(d): State<Arc<Demo>>, Path(path): Path<String>) -> Response {
    serve(&d, &path).await
}

async fn serve(d: &Demo, path: &str) -> Response {
    let (Some(rel), Some(ctype)) = (safe_path(path), content_type(path)) else {
        return not_found();
    };
    for dir in &d.dirs {
        let p = dir.join(&rel);
        let Ok(meta) = tokio::fs::metadata(&p).await else {
            continue;
        };
        if !meta.is_file() || meta.len() > MAX_FILE {
            continue;
        }
        return match tokio::fs::read(&p).await {
            Ok(bytes) => (
                [
                    (header::CONTENT_TYPE, ctype),
                    (header::CACHE_CONTROL, "no-cache"),
                ],
                bytes,
            )
                .into_response(),
            Err(e) => {
                tracing::warn!(path = %p.display(), "demo: cannot read: {e}");
                not_found()
            }
        };
    }
    not_found()
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct TokenBody {
    user: String,
    #[serde(default)]
    device: Option<String>,
}

/// `POST /demo/token {"user": "alice"}` → `{"token": "…"}`.
async fn token(State(d): State<Arc<Demo>>, b: Bytes) -> Response {
    let b: TokenBody = match crate::admin::parse_body(&b) {
        Ok(b) => b,
        Err((status, msg)) => return (status, axum::Json(json!({ "error": msg }))).into_response(),
    };
    match d
        .node
        .service()
        .mint_token(b.user, TOKEN_TTL_S, b.device, now_ms())
    {
        Ok(t) => axum::Json(json!({ "token": t })).into_response(),
        Err(e) => (
            StatusCode::BAD_REQUEST,
            axum::Json(json!({ "error": e.to_string() })),
        )
            .into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_plain_paths() {
        assert_eq!(safe_path("index.html"), Some(PathBuf::from("index.html")));
        assert_eq!(safe_path("a/b.js"), Some(PathBuf::from("a/b.js")));
        for bad in [
            "",
            "/",
            "../x.js",
            "a/../b.js",
            ".env",
            "a//b.js",
            "a/.git/x",
            "a\\b.js",
            "%2e%2e",
            "a b.js",
            "/etc/passwd",
            "a/b/",
        ] {
            assert_eq!(safe_path(bad), None, "{bad:?}");
        }
        assert_eq!(content_type("x.html"), Some("text/html; charset=utf-8"));
        assert_eq!(content_type("admin_key"), None);
        assert_eq!(content_type("secret.key"), None);
    }
}
