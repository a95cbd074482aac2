//! The demo page's routes (`--demo-dir`, development only) against the real binary: files from
//! the listed folders (first match wins), nothing outside them, the dev token endpoint, and no
//! demo route at all without the flag.

mod common;

use common::lp::{Session, request};
use common::{FAST, Node};
use serde_json::{Value, json};

fn folders() -> (tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let page = tmp.path().join("page");
    let dist = tmp.path().join("dist");
    std::fs::create_dir_all(page.join("img")).expect("mkdir");
    std::fs::create_dir_all(&dist).expect("mkdir");
    std::fs::write(page.join("index.html"), "<p>demo</p>").expect("write");
    std::fs::write(page.join("index.js"), "// the page's own, wins").expect("write");
    std::fs::write(page.join("img/dot.svg"), "<svg/>").expect("write");
    std::fs::write(page.join(".env"), "SECRET=1").expect("write");
    std::fs::write(page.join("notes.txt"), "no such type").expect("write");
    std::fs::write(dist.join("index.js"), "export const x = 1;").expect("write");
    std::fs::write(dist.join("index.js.map"), "{}").expect("write");
    std::fs::write(tmp.path().join("outside.js"), "nope").expect("write");
    let dirs = format!("{},{}", page.display(), dist.display());
    (tmp, dirs)
}

#[tokio::test]
async fn serves_the_listed_folders_and_nothing_else() {
    common::init();
    let (_tmp, dirs) = folders();
    let node = Node::start(&[FAST, &["--demo-dir", &dirs]].concat());
    let ws = node.ready.ws;
    let get = |path: &'static str| async move { request(ws, "GET", path, &[], b"").await };

    let r = get("/demo/").await;
    assert_eq!((r.status, r.body.as_str()), (200, "<p>demo</p>"));
    assert_eq!(r.header("content-type"), Some("text/html; charset=utf-8"));
    let r = get("/demo").await;
    assert_eq!((r.status, r.header("location")), (308, Some("/demo/")));
    let r = get("/demo/index.js").await;
    assert_eq!(r.body, "// the page's own, wins", "the first folder wins");
    assert_eq!(
        r.header("content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(
        get("/demo/index.js.map").await.body,
        "{}",
        "then the next one"
    );
    assert_eq!(get("/demo/img/dot.svg").await.status, 200);
    for path in [
        "/demo/.env",
        "/demo/notes.txt",
        "/demo/missing.js",
        "/demo/%2e%2e/outside.js",
        "/demo/..%2foutside.js",
        "/demo/img/",
        "/demo/img",
        "/demo/%2Fetc%2Fpasswd.js",
        "/demo//etc/hostname.js",
    ] {
        let r = get(path).await;
        assert_eq!(r.status, 404, "{path}: {}", r.body);
        assert!(!r.body.contains("nope"), "{path}");
    }
}

#[tokio::test]
async fn the_dev_token_opens_a_session() {
    common::init();
    let (_tmp, dirs) = folders();
    let node = Node::start(&[FAST, &["--demo-dir", &dirs]].concat());
    let ws = node.ready.ws;
    let r = request(ws, "POST", "/demo/token", &[], br#"{"user":"alice"}"#).await;
    assert_eq!(r.status, 200, "{}", r.body);
    let token = r.json()["token"].as_str().expect("token").to_owned();
    let (_s, first) = Session::open(ws, &json!({"type": "hello", "token": token})).await;
    assert_eq!(first[0]["type"], "welcome");
    assert_eq!(first[0]["user"], "alice");
    for (body, what) in [
        (&br#"{"user":""}"#[..], "user"),
        (br#"{"user":"a","admin":true}"#, "unknown field"),
        (b"not json", "JSON"),
    ] {
        let r = request(ws, "POST", "/demo/token", &[], body).await;
        assert_eq!(r.status, 400, "{}", r.body);
        let v: Value = r.json();
        assert!(v["error"].as_str().is_some_and(|e| e.contains(what)), "{v}");
    }
    let big = vec![b'x'; 10_000];
    assert_eq!(
        request(ws, "POST", "/demo/token", &[], &big).await.status,
        413
    );
}

#[tokio::test]
async fn no_demo_and_no_dev_tokens_without_the_flag() {
    common::init();
    let node = Node::start(FAST);
    let ws = node.ready.ws;
    assert_eq!(request(ws, "GET", "/demo/", &[], b"").await.status, 404);
    let r = request(ws, "POST", "/demo/token", &[], br#"{"user":"alice"}"#).await;
    assert_eq!(r.status, 404);
}
