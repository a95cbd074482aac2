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
