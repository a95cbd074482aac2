//! The admin API's OpenAPI 3 document, generated from the code so it cannot drift from it:
//! the handlers' `#[utoipa::path]` annotations (in `admin`) and the `ToSchema` of their bodies
//! and answers. Served at `GET /v1/openapi.json`, committed as `docs/openapi.json`
//! (`presence-node openapi > docs/openapi.json`; tests/docs.rs fails when the two differ).
//!
//! This module exists to collect the paths, to state the rule that everything under `/v1/`
//! needs the admin key (once, as the router does), and to serve the document.

use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};
use utoipa::openapi::{Content, Ref, ResponseBuilder};
use utoipa::{Modify, OpenApi};

use crate::admin::{self, ApiError};

/// The security scheme's name in the document.
pub const ADMIN_KEY: &str = "admin_key";

/// Paths under `/v1/` that need no admin key.
pub const OPEN_V1: &[&str] = &["/v1/openapi.json"];

/// `(method, path)` of the operations documented ahead of their handler, not routed yet (the
/// tests check that every other documented operation is routed, and that these are not). To
/// document one: a `#[utoipa::path]` on a bodiless `fn` here, named in `AdminApi`'s `paths`;
/// once its handler exists, the annotation moves onto it and the entry goes.
pub const PENDING: &[(&str, &str)] = &[];

#[derive(OpenApi)]
#[openapi(
    info(
        title = "presence-node admin API",
        // The protocol's version (docs/protocol.md), not the crate's.
        version = "1.1",
        description = "The admin HTTP API the app's backend calls, on the admin port \
            (default 127.0.0.1:7402). Everything under /v1/ but /v1/openapi.json needs \
            `Authorization: Bearer <admin key>`; /healthz and /metrics are open. Bodies are \
            JSON whatever their content type, at most 64 MiB; a refused request changes \
            nothing and answers {\"error\": \"…\"}. A cluster node answers every call with \
            the same contract as a single node. docs/protocol.md has the whole protocol."
    ),
    servers((url = "http://127.0.0.1:7402", description = "the default admin address")),
    paths(
        admin::put_friends,
        admin::get_friends,
        admin::post_friendships,
        admin::put_group,
        admin::get_group,
        admin::delete_group,
        admin::get_group_presence,
        admin::get_presence,
        admin::post_token,
        admin::get_route,
        admin::get_cluster,
        openapi_json,
        admin::healthz,
        admin::metrics_text,
    ),
    modifiers(&AdminKey),
    tags(
        (name = "graph", description = "friendships"),
        (name = "groups", description = "groups"),
        (name = "presence", description = "presence queries"),
        (name = "tokens", description = "client tokens"),
        (name = "cluster", description = "where users' sessions belong (v1.1)"),
        (name = "operations", description = "probes, scrapers and this document (no key)"),
    )
)]
pub struct AdminApi;

/// The admin key as the document's security scheme, required (with its `401`) by every
/// operation under `/v1/` but [`OPEN_V1`]: the router's rule, stated once.
struct AdminKey;

impl Modify for AdminKey {
    fn modify(&self, doc: &mut utoipa::openapi::OpenApi) {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some(
                "The node's admin key (`--admin-key`, or generated into the data dir's \
                 `admin_key`): `Authorization: Bearer <key>`.",
            ))
            .build();
        doc.components
            .get_or_insert_with(Default::default)
            .add_security_scheme(ADMIN_KEY, SecurityScheme::Http(scheme));
        for (path, item) in &mut doc.paths.paths {
            if !path.starts_with("/v1/") || OPEN_V1.contains(&path.as_str()) {
                continue;
            }
            let ops = [
                &mut item.get,
                &mut item.put,
                &mut item.post,
                &mut item.delete,
                &mut item.patch,
            ];
            for op in ops.into_iter().flatten() {
                op.security = Some(vec![SecurityRequirement::new(
                    ADMIN_KEY,
                    Vec::<String>::new(),
                )]);
                let unauthorized = ResponseBuilder::new()
                    .description("missing or wrong admin key")
                    .content(
                        "application/json",
                        Content::new(Some(Ref::from_schema_name("ErrorBody"))),
                    )
                    .build();
                op.responses
                    .responses
                    .insert("401".into(), unauthorized.into());
            }
        }
    }
}

/// The document as served and committed: pretty-printed, with a final newline.
pub fn json() -> Result<String, serde_json::Error> {
    let mut text = AdminApi::openapi().to_pretty_json()?;
    text.push('\n');
    Ok(text)
}

#[utoipa::path(get, path = "/v1/openapi.json", tag = "operations",
    summary = "This OpenAPI document",
    description = "This document (no key: it describes the API, not its data).",
    responses((status = 200, description = "the OpenAPI document",
        content_type = "application/json", body = serde_json::Value)))]
pub(crate) async fn openapi_json() -> Response {
    match json() {
        Ok(text) => ([(header::CONTENT_TYPE, "application/json")], text).into_response(),
        Err(e) => ApiError(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()).into_response(),
    }
}
