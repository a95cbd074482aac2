//! Keeps `docs/protocol.md` from drifting from the code: message types, error codes, JSON
//! examples, `serve` flags and metrics.

use presence_node::config::SETTINGS;
use presence_node::metrics::{Kind, METRICS};
use presence_wire::{CLIENT_TYPES, ERROR_CODES, SERVER_TYPES, parse_client};

fn doc() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/protocol.md");
    std::fs::read_to_string(path).expect("docs/protocol.md")
}

#[test]
fn every_type_and_code_is_documented() {
    let doc = doc();
    for t in CLIENT_TYPES.iter().chain(SERVER_TYPES).chain(ERROR_CODES) {
        assert!(
            doc.contains(&format!("`{t}`")),
            "docs/protocol.md does not mention `{t}`"
        );
    }
}

#[test]
fn every_metric_is_documented_with_its_kind() {
    let doc = doc();
    let section = doc.split("### Metrics").nth(1).expect("metrics section");
    let section = section.split("\n#").next().unwrap_or(section);
    let kind = |k| match k {
        Kind::Counter => "counter",
        Kind::Gauge => "gauge",
        Kind::Histogram => "histogram",
    };
    for &(name, k, _) in METRICS {
        let row = format!("| `{name}` | {} |", kind(k));
        assert!(
            section.contains(&row),
            "docs/protocol.md lacks the row {row}"
        );
    }
    let rows = section.lines().filter(|l| l.starts_with("| `")).count();
    assert_eq!(
        rows,
        METRICS.len(),
        "docs/protocol.md lists metrics the node lacks"
    );
}

#[test]
fn client_examples_parse_and_frame_examples_are_json() {
    let doc = doc();
    let mut blocks = 0;
    for block in doc.split("```json").skip(1) {
        let json = block.split("```").next().expect("closed block").trim();
        let v: serde_json::Value = serde_json::from_str(json).expect("example is JSON");
        let t = v["type"].as_str().expect("example has a type");
        if CLIENT_TYPES.contains(&t) {
            parse_client(json.as_bytes()).expect("client example parses");
        } else {
            assert!(SERVER_TYPES.contains(&t), "unknown example type {t}");
        }
        blocks += 1;
    }
    assert!(blocks >= 5);
}

#[test]
fn documented_flags_are_the_flags_serve_takes() {
    let doc = doc();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presence-node"))
        .args(["serve", "--help"])
        .output()
        .expect("run --help");
    let help = String::from_utf8_lossy(&out.stdout);
    let flags_in = |text: &str| -> std::collections::BTreeSet<String> {
        text.split(|c: char| !(c.is_ascii_alphanumeric() || c == '-'))
            .filter(|w| {
                w.starts_with("--") && w.as_bytes().get(2).is_some_and(u8::is_ascii_alphabetic)
            })
            .map(str::to_owned)
            .collect()
    };
    let section = doc
        .split("## Running a node")
        .nth(1)
        .expect("running section");
    let documented = flags_in(section);
    let mut taken = flags_in(&help);
    taken.remove("--help");
    assert_eq!(
        documented, taken,
        "docs/protocol.md flags vs `serve --help`"
    );
    for f in &taken {
        let env = format!(
            "PRESENCE_{}",
            f.trim_start_matches("--").replace('-', "_").to_uppercase()
        );
        assert!(help.contains(&env), "{f} has no {env}");
    }
    for s in SETTINGS {
        let default = format!("[default: {}]", s.default);
        assert!(help.contains(&default), "--{} lacks {default}", s.name);
    }
}

/// The `## Running a node` table: flag (without dashes) -> default cell, backticks removed.
fn documented_defaults(doc: &str) -> std::collections::BTreeMap<String, String> {
    let section = doc
        .split("## Running a node")
        .nth(1)
        .expect("running section");
    let section = section.split("\n#").next().unwrap_or(section);
    section
        .lines()
        .filter_map(|line| {
            let (flag, default) = line.strip_prefix("| `--")?.split_once("` | ")?;
            let default = default.trim_end().trim_end_matches('|').trim();
            Some((flag.to_owned(), default.replace('`', "")))
        })
        .collect()
}

#[test]
fn documented_defaults_are_the_settings_defaults() {
    let documented = documented_defaults(&doc());
    for s in SETTINGS {
        let cell = documented
            .get(s.name)
            .unwrap_or_else(|| panic!("docs/protocol.md has no row for --{}", s.name));
        // The cell starts with the default, then explains it or ends.
        let rest = cell.strip_prefix(s.default);
        assert!(
            rest.is_some_and(|r| r.is_empty() || r.starts_with([' ', ',', ';', ':'])),
            "docs/protocol.md gives --{} the default {cell:?}, the node {:?}",
            s.name,
            s.default
        );
    }
    assert_eq!(
        documented.len(),
        SETTINGS.len(),
        "one row per setting in docs/protocol.md: {:?}",
        documented.keys()
    );
}

/// `docs/openapi.json` as committed.
fn committed_openapi() -> String {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/openapi.json");
    std::fs::read_to_string(path).expect("docs/openapi.json")
}

const REGENERATE: &str = "cargo run -p presence-node -- openapi > docs/openapi.json";

#[test]
fn docs_openapi_json_is_the_generated_document() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_presence-node"))
        .arg("openapi")
        .output()
        .expect("run presence-node openapi");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let generated = String::from_utf8(out.stdout).expect("UTF-8");
    assert_eq!(
        generated,
        presence_node::openapi::json().expect("document"),
        "`presence-node openapi` prints the served document"
    );
    let committed = committed_openapi();
    if generated != committed {
        let first = generated
            .lines()
            .zip(committed.lines())
            .position(|(g, c)| g != c)
            .unwrap_or_else(|| generated.lines().count().min(committed.lines().count()));
        panic!(
            "docs/openapi.json differs from the code's document from line {}: regenerate it \
             with `{REGENERATE}` and commit it\n  code:      {:?}\n  committed: {:?}",
            first + 1,
            generated.lines().nth(first),
            committed.lines().nth(first),
        );
    }
}

/// `(method, path)` of every route the admin router declares, read from `admin::router`'s
/// source: each `.route("PATH", get(…).put(…))` names its methods.
fn routed() -> std::collections::BTreeSet<(String, String)> {
    let src = include_str!("../src/admin.rs");
    let start = src.find("pub fn router(").expect("admin::router");
    let body = &src[start..];
    let body = &body[..body.find("\n}\n").expect("end of router")];
    let mut routes = std::collections::BTreeSet::new();
    for (at, _) in body.match_indices(".route(") {
        let call = &body[at + ".route(".len()..];
        let mut depth = 1;
        let end = call
            .char_indices()
            .find(|&(_, c)| {
                depth += match c {
                    '(' => 1,
                    ')' => -1,
                    _ => 0,
                };
                depth == 0
            })
            .map(|(i, _)| i)
            .expect("closed .route(");
        let call = &call[..end];
        let path = call.split('"').nth(1).expect("a path literal");
        let mut methods = 0;
        let mut rest = call;
        while let Some(i) = rest.find('(') {
            let word = rest[..i]
                .rsplit(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .next()
                .unwrap_or("");
            if ["get", "put", "post", "delete", "patch"].contains(&word) {
                routes.insert((word.to_owned(), path.to_owned()));
                methods += 1;
            }
            rest = &rest[i + 1..];
        }
        assert!(methods > 0, "no method found for the route {path}");
    }
    routes
}

/// Every `(method, path, operation)` in the document.
fn operations(doc: &serde_json::Value) -> Vec<(String, String, serde_json::Value)> {
    let mut ops = Vec::new();
    for (path, item) in doc["paths"].as_object().expect("paths") {
        for (method, op) in item.as_object().expect("path item") {
            ops.push((method.clone(), path.clone(), op.clone()));
        }
    }
    ops
}

/// Every `$ref` in `v`.
fn refs(v: &serde_json::Value, out: &mut Vec<String>) {
    match v {
        serde_json::Value::Object(m) => {
            for (k, v) in m {
                match (k.as_str(), v) {
                    ("$ref", serde_json::Value::String(r)) => out.push(r.clone()),
                    _ => refs(v, out),
                }
            }
        }
        serde_json::Value::Array(a) => a.iter().for_each(|v| refs(v, out)),
        _ => {}
    }
}

#[test]
fn openapi_document_is_well_formed_and_covers_every_route() {
    let doc: serde_json::Value =
        serde_json::from_str(&presence_node::openapi::json().expect("document"))
            .expect("the document is JSON");
    assert!(
        doc["openapi"].as_str().is_some_and(|v| v.starts_with("3.")),
        "OpenAPI 3: {}",
        doc["openapi"]
    );
    assert!(doc["info"]["title"].is_string() && doc["info"]["version"].is_string());
    let schemas = doc["components"]["schemas"].as_object().expect("schemas");
    let schemes = doc["components"]["securitySchemes"]
        .as_object()
        .expect("security schemes");
    let mut all = Vec::new();
    refs(&doc, &mut all);
    assert!(!all.is_empty());
    for r in all {
        let name = r
            .strip_prefix("#/components/schemas/")
            .unwrap_or_else(|| panic!("unexpected $ref {r}"));
        assert!(schemas.contains_key(name), "$ref to a missing schema {r}");
    }
    let ops = operations(&doc);
    for (method, path, op) in &ops {
        let what = format!("{} {path}", method.to_uppercase());
        let responses = op["responses"].as_object().expect("responses");
        assert!(!responses.is_empty(), "{what}: no responses");
        for (status, r) in responses {
            assert!(status.parse::<u16>().is_ok(), "{what}: status {status}");
            assert!(r["description"].is_string(), "{what} {status}: description");
        }
        // Path parameters are declared, and only those.
        let declared: Vec<&str> = op["parameters"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|p| p["in"] == "path")
            .filter_map(|p| {
                assert_eq!(p["required"], true, "{what}: path parameter required");
                p["name"].as_str()
            })
            .collect();
        let in_path: Vec<&str> = path
            .split('{')
            .skip(1)
            .filter_map(|s| s.split('}').next())
            .collect();
        assert_eq!(declared, in_path, "{what}: path parameters");
        // The key: everything under /v1/ but the document itself, as the router has it.
        let open = !path.starts_with("/v1/") || path == "/v1/openapi.json";
        let security = op["security"].as_array();
        if open {
            assert!(security.is_none(), "{what} is open, documented with a key");
        } else {
            let security = security.unwrap_or_else(|| panic!("{what}: no security"));
            for req in security {
                for scheme in req.as_object().expect("requirement").keys() {
                    assert!(schemes.contains_key(scheme), "{what}: scheme {scheme}");
                }
            }
            assert!(responses.contains_key("401"), "{what}: no 401");
        }
    }
    let documented: std::collections::BTreeSet<(String, String)> =
        ops.iter().map(|(m, p, _)| (m.clone(), p.clone())).collect();
    let routed = routed();
    assert!(routed.len() >= 13, "found only {routed:?} in admin::router");
    for (method, path) in &routed {
        assert!(
            documented.contains(&(method.clone(), path.clone())),
            "{} {path} is routed but not in the OpenAPI document: add a #[utoipa::path] to \
             its handler, name it in openapi::AdminApi, and regenerate with `{REGENERATE}`",
            method.to_uppercase()
        );
    }
    for (method, path) in &documented {
        let pending = presence_node::openapi::PENDING.contains(&(method.as_str(), path.as_str()));
        let is_routed = routed.contains(&(method.clone(), path.clone()));
        assert!(
            is_routed != pending,
            "{} {path}: {}",
            method.to_uppercase(),
            if pending {
                "now routed: drop it from openapi::PENDING"
            } else {
                "documented but not routed"
            }
        );
    }
}
