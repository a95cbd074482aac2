//! Benchmark of the node alone: how much user-space memory an idle session costs.
//!
//! Starts the real `presence-node` binary (built by cargo next to this example) on free
//! loopback ports, opens `--sessions` idle sessions over WebSocket or QUIC (hello, welcome,
//! then a heartbeat every 20 s; the clients are `presence-client` connections) or HTTP
//! long-poll (open, then one poll always held, as a browser's), and reports the node's RSS
//! before and after: RSS counts only
//! user-space memory, so `(after - before) / sessions` is the node's user-space cost per idle
//! session, above the kernel's own socket memory.
//!
//! ```sh
//! cargo build --release -p presence-node
//! cargo run --release -p presence-node --example idle_sessions -- --via ws --sessions 10000
//! cargo run --release -p presence-node --example idle_sessions -- --via quic --sessions 10000
//! cargo run --release -p presence-node --example idle_sessions -- --via lp --sessions 5000
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use presence_client::{
    Client, ClientMessage, ConnectOptions, QuicCert, QuicEndpoint, Transport, TransportOptions,
};
use presence_node::token;

#[derive(Parser)]
struct Args {
    /// ws, quic or lp.
    #[arg(long, default_value = "ws")]
    via: String,
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    /// Concurrent connection attempts.
    #[arg(long, default_value_t = 256)]
    parallel: usize,
    /// UDP sockets the QUIC clients share.
    #[arg(long, default_value_t = 16)]
    quic_sockets: usize,
    /// Friends per user (a ring: u_i with the next N/2 users), loaded through the admin API,
    /// so each welcome carries a realistic snapshot.
    #[arg(long, default_value_t = 0)]
    friends: usize,
    /// Seconds to wait after the last connect before reading the node's RSS (15 covers a whole
    /// ping round at the default heartbeat timeout, so every session has been pinged once).
    #[arg(long, default_value_t = 2)]
    settle: u64,
    /// The node binary [default: next to this example].
    #[arg(long)]
    node: Option<PathBuf>,
}

const SECRET: &str = "bench-secret";
const ADMIN_KEY: &str = "bench-admin-key";

/// One request over a fresh connection (Connection: close): the status and the body.
async fn http_once(
    addr: &str,
    method: &str,
    path: &str,
    body: &str,
) -> anyhow::Result<(u16, String)> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    let status = text
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")?;
    let body = text.split_once("\r\n\r\n").map_or("", |(_, b)| b);
    Ok((status, body.to_owned()))
}

/// A long-poll session held idle: opened, then always one poll waiting (the first one takes
/// the welcome off the node's buffer), as a browser tab's.
async fn long_poll_session(addr: String, token: String) -> Option<tokio::task::JoinHandle<()>> {
    let hello = serde_json::json!({"type": "hello", "token": token, "device": "bench"});
    let (status, body) = http_once(&addr, "POST", "/v1/lp/open", &hello.to_string())
        .await
        .ok()?;
    if status != 200 {
        return None;
    }
    let v: serde_json::Value = serde_json::from_str(&body).ok()?;
    let sid = v["session"].as_str()?.to_owned();
    let mut cursor = v["cursor"].as_u64()?;
    Some(tokio::spawn(async move {
        loop {
            let path = format!("/v1/lp/poll?session={sid}&cursor={cursor}");
            match http_once(&addr, "GET", &path, "").await {
                Ok((200, body)) => {
                    let Some(c) = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["cursor"].as_u64())
                    else {
                        break;
                    };
                    cursor = c;
                }
                _ => break,
            }
        }
    }))
}

/// One admin request over a fresh connection (Connection: close); returns the status code.
async fn admin_post(addr: &str, path: &str, body: &str) -> anyhow::Result<u16> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await?;
    let req = format!(
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {ADMIN_KEY}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await?;
    let mut resp = Vec::new();
    s.read_to_end(&mut resp).await?;
    let text = String::from_utf8_lossy(&resp);
    text.split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .context("no HTTP status")
}

fn node_binary(given: Option<PathBuf>) -> anyhow::Result<PathBuf> {
    if let Some(p) = given {
        return Ok(p);
    }
    let exe = std::env::current_exe()?;
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .context("no target dir")?;
    let p = dir.join("presence-node");
    if !p.exists() {
        bail!(
            "{} not found: cargo build --release -p presence-node",
            p.display()
        );
    }
    Ok(p)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

struct NodeProc(Child);

impl Drop for NodeProc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let dir = tempfile::tempdir()?;
    let child = Command::new(node_binary(args.node.clone())?)
        .arg("serve")
        .arg("--data-dir")
        .arg(dir.path())
        .args(["--ws-listen", "127.0.0.1:0", "--quic-listen", "127.0.0.1:0"])
        .args(["--admin-listen", "127.0.0.1:0", "--secret", SECRET])
        .args(["--admin-key", ADMIN_KEY])
        .env("RUST_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .context("starting presence-node")?;
    let node = NodeProc(child);
    let ready: serde_json::Value = loop {
        if let Ok(b) = std::fs::read(dir.path().join("ready.json"))
            && let Ok(v) = serde_json::from_slice(&b)
        {
            break v;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let pid = node.0.id();
    let ws_addr = ready["ws"].as_str().context("ws")?.to_owned();
    let quic_addr: std::net::SocketAddr = ready["quic"].as_str().context("quic")?.parse()?;
    if args.friends > 0 {
        let admin = ready["admin"].as_str().context("admin")?.to_owned();
        let half = args.friends / 2;
        let n = args.sessions;
        let pairs: Vec<[String; 2]> = (0..n)
            .flat_map(|i| (1..=half).map(move |k| [format!("u{i}"), format!("u{}", (i + k) % n)]))
            .collect();
        for chunk in pairs.chunks(50_000) {
            let body = serde_json::json!({ "add": chunk }).to_string();
            let status = admin_post(&admin, "/v1/friendships", &body).await?;
            if status != 200 {
                bail!("loading friendships: HTTP {status}");
            }
        }
    }
    tokio::time::sleep(Duration::from_millis(500)).await;
    let before = rss_kib(pid);
    let exp = presence_node::node::now_ms() / 1000 + 3600;
    let token = |i: usize| {
        token::mint(
            SECRET.as_bytes(),
            &token::Claims {
                sub: format!("u{i}"),
                exp,
                dev: None,
            },
        )
    };
    let lp_addr = ws_addr.clone();
    let transport = match args.via.as_str() {
        "ws" | "lp" => Transport::ws(ws_addr),
        "quic" => Transport::quic(
            quic_addr.to_string(),
            "localhost",
            QuicCert::pem_file(dir.path().join("tls/cert.pem"))?,
        ),
        other => bail!("--via must be ws, quic or lp, not {other:?}"),
    };
    // QUIC sessions share a few UDP sockets (--quic-sockets), as one process holding
    // thousands of connections must.
    let endpoints: Vec<QuicEndpoint> = (0..args.quic_sockets.max(1))
        .map(|_| QuicEndpoint::bind(([127, 0, 0, 1], 0).into()))
        .collect::<Result<_, _>>()?;

    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut tasks = Vec::with_capacity(args.sessions);
    for i in 0..args.sessions {
        let mut opts = ConnectOptions::new(transport.clone(), token(i)).device("bench");
        opts.transport_options = TransportOptions {
            quic_keep_alive: Duration::from_secs(10),
            quic_endpoint: matches!(transport, Transport::Quic { .. })
                .then(|| endpoints[i % endpoints.len()].clone()),
            ..TransportOptions::default()
        };
        let sem = sem.clone();
        if args.via == "lp" {
            let (addr, token) = (lp_addr.clone(), token(i));
            tasks.push(tokio::spawn(async move {
                let permit = sem.acquire_owned().await.ok()?;
                let held = long_poll_session(addr, token).await;
                drop(permit);
                held
            }));
            continue;
        }
        tasks.push(tokio::spawn(async move {
            let permit = sem.acquire_owned().await.ok()?;
            let (mut conn, _welcome) = Client::connect(&opts).await.ok()?;
            drop(permit);
            // Idle: a heartbeat every 20 s, and its answer read.
            Some(tokio::spawn(async move {
                loop {
                    tokio::time::sleep(Duration::from_secs(20)).await;
                    if conn.send(&ClientMessage::Heartbeat {}).await.is_err()
                        || conn.recv_frame().await.is_err()
                    {
                        break;
                    }
                }
            }))
        }));
    }
    let mut held = Vec::new();
    for t in tasks {
        if let Ok(Some(h)) = t.await {
            held.push(h);
        }
    }
    let connect_s = started.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_secs(args.settle)).await;
    let after = rss_kib(pid);
    let per = (after.saturating_sub(before) as f64 * 1024.0) / held.len().max(1) as f64;
    println!("transport          {}", args.via);
    println!("sessions held      {} of {}", held.len(), args.sessions);
    println!(
        "connect rate       {:.0}/s ({connect_s:.1} s)",
        held.len() as f64 / connect_s
    );
    println!("node RSS before    {before} KiB");
    println!("node RSS after     {after} KiB");
    println!(
        "user-space/session {per:.0} bytes ({:.2} KiB)",
        per / 1024.0
    );
    if held.len() < args.sessions {
        bail!(
            "only {} of {} sessions were established",
            held.len(),
            args.sessions
        );
    }
    Ok(())
}
