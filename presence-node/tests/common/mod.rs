//! Test harness: the real `presence-node` binary as a child process on free loopback ports
//! with a temporary data folder, real WebSocket and QUIC clients (presence-client's), and a
//! tiny HTTP client for the admin API.
#![allow(dead_code)]

pub mod cluster;
pub mod hooks;
pub mod lp;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub const FAST: &[&str] = &[
    "--tick",
    "50ms",
    "--idle-thresholds",
    "400ms,800ms,1600ms",
    "--grace",
    "500ms",
    "--heartbeat-timeout",
    "2s",
];

#[derive(Debug, Clone, serde::Deserialize)]
pub struct Ready {
    pub ws: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
    pub node: String,
    /// The peer link's address (cluster mode).
    #[serde(default)]
    pub peer: Option<SocketAddr>,
}

pub struct Node {
    pub child: Option<Child>,
    pub dir: PathBuf,
    _tmp: Option<tempfile::TempDir>,
    pub ready: Ready,
    pub key: String,
    args: Vec<String>,
}

impl Node {
    /// Starts a node with `args` on a fresh data folder.
    pub fn start(args: &[&str]) -> Node {
        let tmp = tempfile::tempdir().expect("tempdir");
        let dir = tmp.path().to_owned();
        let mut n = Self::start_in(&dir, args);
        n._tmp = Some(tmp);
        n
    }

    /// Starts a node on an existing data folder (for restarts).
    pub fn start_in(dir: &Path, args: &[&str]) -> Node {
        Self::start_at(dir, args, "127.0.0.1:0", "127.0.0.1:0")
    }

    /// Starts a node on an existing data folder with its client listeners on `ws` and `quic`.
    pub fn start_at(dir: &Path, args: &[&str], ws: &str, quic: &str) -> Node {
        Self::start_spawned(dir, args, [ws, quic, "127.0.0.1:0"], |cmd| cmd.spawn())
    }

    /// Starts a node on an existing data folder with its ws, QUIC and admin listeners on
    /// `listen`, its process started by `spawn` (e.g. inside a network namespace).
    pub fn start_spawned(
        dir: &Path,
        args: &[&str],
        listen: [&str; 3],
        spawn: impl FnOnce(&mut Command) -> std::io::Result<Child>,
    ) -> Node {
        let [ws, quic, admin] = listen;
        let _ = std::fs::remove_file(dir.join("ready.json"));
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_presence-node"));
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(dir)
            .args(["--ws-listen", ws])
            .args(["--quic-listen", quic])
            .args(["--admin-listen", admin])
            .args(args)
            .env(
                "RUST_LOG",
                std::env::var("PRESENCE_TEST_NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        let mut child = spawn(&mut cmd).expect("spawn presence-node");
        let deadline = Instant::now() + Duration::from_secs(30);
        let ready: Ready = loop {
            if let Ok(bytes) = std::fs::read(dir.join("ready.json"))
                && let Ok(r) = serde_json::from_slice(&bytes)
            {
                break r;
            }
            if let Ok(Some(status)) = child.try_wait() {
                panic!("presence-node exited before ready: {status}");
            }
            assert!(Instant::now() < deadline, "node not ready in 30 s");
            std::thread::sleep(Duration::from_millis(20));
        };
        let key = std::fs::read_to_string(dir.join("admin_key"))
            .expect("admin key")
            .trim()
            .to_owned();
        Node {
            child: Some(child),
            dir: dir.to_owned(),
            _tmp: None,
            ready,
            key,
            args: args.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn stop(&mut self) -> std::process::ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Ok(Some(s)) = child.try_wait() {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("node did not stop within 15 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// kill -9.
    pub fn kill9(&mut self) {
        let mut child = self.child.take().expect("running");
        let _ = child.kill();
        let _ = child.wait();
    }

    /// Restarts on the same data folder with the same flags.
    pub fn restart(mut self) -> Node {
        let args: Vec<String> = self.args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut n = Node::start_in(&self.dir, &args);
        n._tmp = self._tmp.take();
        n
    }

    /// Restarts on the same data folder with the same flags, its client listeners on `ws` and
    /// `quic` (the addresses clients know of an earlier run).
    pub fn restart_at(mut self, ws: SocketAddr, quic: SocketAddr) -> Node {
        let args: Vec<String> = self.args.clone();
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        let mut n = Node::start_at(&self.dir, &args, &ws.to_string(), &quic.to_string());
        n._tmp = self._tmp.take();
        n
    }

    pub async fn admin(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        http(self.ready.admin, method, path, Some(&self.key), body).await
    }

    pub async fn token(&self, user: &str) -> String {
        let (status, v) = self
            .admin(
                "POST",
                "/v1/tokens",
                Some(serde_json::json!({ "user": user })),
            )
            .await;
        assert_eq!(status, 200, "{v}");
        v["token"].as_str().expect("token").to_owned()
    }

    pub async fn befriend(&self, pairs: &[(&str, &str)]) {
        let add: Vec<[&str; 2]> = pairs.iter().map(|&(a, b)| [a, b]).collect();
        let (status, v) = self
            .admin(
                "POST",
                "/v1/friendships",
                Some(serde_json::json!({ "add": add })),
            )
            .await;
        assert_eq!(status, 200, "{v}");
    }

    /// `n` users `s00`, `s01`, … each made a friend of `friend`; returns their names.
    pub async fn friends_of(&self, friend: &str, n: usize) -> Vec<String> {
        let names: Vec<String> = (0..n).map(|i| format!("s{i:02}")).collect();
        let pairs: Vec<(&str, &str)> = names.iter().map(|s| (s.as_str(), friend)).collect();
        self.befriend(&pairs).await;
        names
    }

    /// Resident set size of the node process, in KiB.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.ready.pid)).unwrap_or_default();
        status
            .lines()
            .find(|l| l.starts_with("VmRSS:"))
            .and_then(|l| l.split_whitespace().nth(1))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    }

    pub async fn metric(&self, name: &str) -> f64 {
        let (_, text) = http_text(self.ready.admin, "GET", "/metrics", None, None).await;
        text.lines()
            .filter(|l| l.starts_with(name) && !l.starts_with('#'))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A minimal HTTP/1.1 request (Connection: close).
pub async fn http_text(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (u16, String) {
    let (status, _, body) = http_response(addr, method, path, key, body).await;
    (status, body)
}

/// [`http_text`] with the response's head (status line and headers).
pub async fn http_response(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<String>,
) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).await.expect("connect admin");
    let body = body.unwrap_or_default();
    let auth = key.map_or(String::new(), |k| format!("Authorization: Bearer {k}\r\n"));
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.expect("write");
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await.expect("read");
    let text = String::from_utf8_lossy(&resp).into_owned();
    let status: u16 = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .expect("status line");
    let (head, rest) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let body = if head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        dechunk(rest)
    } else {
        rest.to_owned()
    };
    (status, head.to_owned(), body)
}

pub fn dechunk(mut s: &str) -> String {
    let mut out = String::new();
    while let Some((len, rest)) = s.split_once("\r\n") {
        let n = usize::from_str_radix(len.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        s = rest[n..].trim_start_matches("\r\n");
    }
    out
}

pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<Value>,
) -> (u16, Value) {
    let (status, text) = http_text(addr, method, path, key, body.map(|b| b.to_string())).await;
    let v = if text.trim().is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, v)
}

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Via {
    Ws,
    Quic,
}

/// A client of the node under test, speaking the JSON values the tests assert on.
pub enum Client {
    /// presence-client's connection: the transports, framing and TLS of the product client.
    Conn(presence_client::Connection),
    /// A bare QUIC stream, for the test that writes bytes outside the framing.
    RawQuic {
        _endpoint: quinn::Endpoint,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    },
}

/// The node's client address over `via`, trusting its dev certificate.
pub fn transport(node: &Node, via: Via) -> presence_client::Transport {
    match via {
        Via::Ws => presence_client::Transport::ws(node.ready.ws.to_string()),
        Via::Quic => presence_client::Transport::quic(
            node.ready.quic.to_string(),
            "localhost",
            node_cert(node),
        ),
    }
}

/// The node's dev certificate, as a QUIC client trusts it.
pub fn node_cert(node: &Node) -> presence_client::QuicCert {
    presence_client::QuicCert::pem_file(node.dir.join("tls/cert.pem")).expect("cert")
}

impl Client {
    /// Connects without saying hello.
    pub async fn open(node: &Node, via: Via) -> Client {
        Self::open_with(node, via, &presence_client::TransportOptions::default()).await
    }

    async fn open_with(node: &Node, via: Via, opts: &presence_client::TransportOptions) -> Client {
        let conn = presence_client::Client::open(&transport(node, via), opts)
            .await
            .unwrap_or_else(|e| panic!("{via:?} connect: {e}"));
        Client::Conn(conn)
    }

    /// A QUIC connection with its stream open and nothing written (the stream reaches the
    /// node only with the first bytes written to `send`).
    pub async fn open_raw_quic(node: &Node) -> Client {
        let opts = presence_client::TransportOptions::default();
        let cfg = presence_client::quic_client_config(&node_cert(node), &opts).expect("config");
        let endpoint = quinn::Endpoint::client("127.0.0.1:0".parse().expect("addr")).expect("udp");
        let conn = endpoint
            .connect_with(cfg, node.ready.quic, "localhost")
            .expect("connect")
            .await
            .expect("handshake");
        let (send, recv) = conn.open_bi().await.expect("stream");
        Client::RawQuic {
            _endpoint: endpoint,
            conn,
            send,
            recv,
        }
    }

    /// Connects, says hello and returns the client with its welcome.
    pub async fn hello(node: &Node, via: Via, user: &str, device: &str) -> (Client, Value) {
        let token = node.token(user).await;
        let mut c = Client::open(node, via).await;
        c.send(serde_json::json!({"type": "hello", "token": token, "device": device}))
            .await;
        let w = c.recv().await.expect("welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        (c, w)
    }

    /// A WebSocket client with a 4 KiB socket receive buffer, hello sent, welcome read.
    pub async fn hello_tiny_window(node: &Node, user: &str) -> Client {
        let token = node.token(user).await;
        let opts = presence_client::TransportOptions {
            tcp_recv_buffer: Some(4096),
            ..Default::default()
        };
        let mut c = Client::open_with(node, Via::Ws, &opts).await;
        c.send(serde_json::json!({"type": "hello", "token": token, "device": "tiny"}))
            .await;
        let w = c.recv().await.expect("welcome");
        assert_eq!(w["type"], "welcome", "{w}");
        c
    }

    pub async fn send_raw(&mut self, bytes: Vec<u8>) {
        match self {
            Client::Conn(c) => c.send_frame(&bytes).await.expect("send"),
            Client::RawQuic { send, .. } => {
                send.write_all(&(bytes.len() as u32).to_be_bytes())
                    .await
                    .expect("len");
                send.write_all(&bytes).await.expect("body");
            }
        }
    }

    pub async fn send(&mut self, v: Value) {
        self.send_raw(v.to_string().into_bytes()).await;
    }

    /// The sending and receiving halves of the connection, to run side by side.
    pub fn split(
        &mut self,
    ) -> (
        presence_client::FrameSender<'_>,
        presence_client::FrameReceiver<'_>,
    ) {
        match self {
            Client::Conn(c) => c.split(),
            Client::RawQuic { .. } => panic!("a raw QUIC client has no halves"),
        }
    }

    /// The next JSON message, or None if the connection closed (5 s timeout panics).
    pub async fn recv(&mut self) -> Option<Value> {
        self.recv_within(Duration::from_secs(5))
            .await
            .expect("no message within the timeout")
    }

    /// Ok(Some(msg)), Ok(None) when closed, Err(()) on timeout.
    pub async fn recv_within(&mut self, d: Duration) -> Result<Option<Value>, ()> {
        let fut = async {
            match self {
                // Cancel-safe: a timeout never leaves half a frame read.
                Client::Conn(c) => match c.recv_frame().await {
                    Ok(frame) => Some(serde_json::from_slice(&frame).expect("json")),
                    Err(_) => None,
                },
                Client::RawQuic { recv, .. } => {
                    let mut len = [0u8; 4];
                    if recv.read_exact(&mut len).await.is_err() {
                        return None;
                    }
                    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                    if recv.read_exact(&mut buf).await.is_err() {
                        return None;
                    }
                    Some(serde_json::from_slice(&buf).expect("json"))
                }
            }
        };
        tokio::time::timeout(d, fut).await.map_err(|_| ())
    }

    /// Waits for a message of `kind`, skipping others; panics after `d`.
    pub async fn expect(&mut self, kind: &str, d: Duration) -> Value {
        let deadline = tokio::time::Instant::now() + d;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.recv_within(left).await {
                Ok(Some(v)) if v["type"] == kind => return v,
                Ok(Some(_)) => continue,
                Ok(None) => panic!("connection closed while waiting for {kind}"),
                Err(()) => panic!("no {kind} within {d:?}"),
            }
        }
    }

    /// Waits for a presence entry about `user` matching `pred`; returns it.
    pub async fn expect_presence(
        &mut self,
        user: &str,
        d: Duration,
        pred: impl Fn(&Value) -> bool,
    ) -> Value {
        let deadline = tokio::time::Instant::now() + d;
        let mut last = None;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            let got = self.recv_within(left).await;
            if let Ok(Some(v)) = &got {
                last = Some(v.clone());
            }
            match got {
                Ok(Some(v)) if v["type"] == "presence" => {
                    if let Some(e) = v["changes"]
                        .as_array()
                        .and_then(|c| c.iter().find(|e| e["user"] == user && pred(e)))
                    {
                        return e.clone();
                    }
                }
                Ok(Some(_)) => continue,
                Ok(None) => panic!("closed while waiting for presence of {user}; last: {last:?}"),
                Err(()) => panic!("no matching presence of {user} within {d:?}"),
            }
        }
    }

    /// Falls silent without closing, as a device whose network went away.
    pub fn vanish(self) -> presence_client::Vanished {
        match self {
            Client::Conn(c) => c.vanish(),
            Client::RawQuic { .. } => panic!("a raw QUIC client cannot vanish"),
        }
    }

    /// Drops the connection without a close handshake.
    pub fn abandon(self) {
        match self {
            Client::Conn(c) => c.abandon(),
            Client::RawQuic { conn, .. } => conn.close(0u32.into(), b"bye"),
        }
    }

    pub async fn close(self) {
        match self {
            Client::Conn(c) => {
                let _ = c.close().await;
            }
            Client::RawQuic { conn, .. } => conn.close(0u32.into(), b"bye"),
        }
    }
}

/// Installs the ring crypto provider once per test process.
pub fn init() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}
