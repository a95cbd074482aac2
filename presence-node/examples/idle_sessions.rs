//! Benchmark of the node alone: how much user-space memory an idle session costs.
//!
//! Starts the real `presence-node` binary (built by cargo next to this example) on free
//! loopback ports, opens `--sessions` idle sessions over WebSocket or QUIC (hello, welcome,
//! then a heartbeat every 20 s), and reports the node's RSS before and after: RSS counts only
//! user-space memory, so `(after - before) / sessions` is the node's user-space cost per idle
//! session, above the kernel's own socket memory.
//!
//! ```sh
//! cargo build --release -p presence-node
//! cargo run --release -p presence-node --example idle_sessions -- --via ws --sessions 10000
//! cargo run --release -p presence-node --example idle_sessions -- --via quic --sessions 10000
//! ```

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures_util::{SinkExt, StreamExt};
use presence_node::token;
use tokio_tungstenite::tungstenite::Message;

#[derive(Parser)]
struct Args {
    /// ws or quic.
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
    let _ = rustls::crypto::ring::default_provider().install_default();
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
    let hello = |i: usize| {
        let t = token::mint(
            SECRET.as_bytes(),
            &token::Claims {
                sub: format!("u{i}"),
                exp,
                dev: None,
            },
        );
        serde_json::json!({"type": "hello", "token": t, "device": "bench"}).to_string()
    };

    let started = Instant::now();
    let sem = Arc::new(tokio::sync::Semaphore::new(args.parallel));
    let mut tasks = Vec::with_capacity(args.sessions);
    match args.via.as_str() {
        "ws" => {
            for i in 0..args.sessions {
                let url = format!("ws://{ws_addr}/v1/ws");
                let msg = hello(i);
                let sem = sem.clone();
                tasks.push(tokio::spawn(async move {
                    let permit = sem.acquire_owned().await.ok()?;
                    let (mut ws, _) = tokio_tungstenite::connect_async(url).await.ok()?;
                    ws.send(Message::Text(msg.into())).await.ok()?;
                    let _welcome = ws.next().await?.ok()?;
                    drop(permit);
                    Some(tokio::spawn(async move {
                        loop {
                            tokio::time::sleep(Duration::from_secs(20)).await;
                            let hb = r#"{"type":"heartbeat"}"#;
                            if ws.send(Message::Text(hb.into())).await.is_err() {
                                break;
                            }
                            let _ = ws.next().await;
                        }
                    }))
                }));
            }
        }
        "quic" => {
            let cert = dir.path().join("tls/cert.pem");
            let endpoints: Vec<quinn::Endpoint> = (0..args.quic_sockets)
                .map(|_| quic_endpoint(&cert))
                .collect::<anyhow::Result<_>>()?;
            for i in 0..args.sessions {
                let ep = endpoints[i % endpoints.len()].clone();
                let msg = hello(i);
                let sem = sem.clone();
                tasks.push(tokio::spawn(async move {
                    let permit = sem.acquire_owned().await.ok()?;
                    let conn = ep.connect(quic_addr, "localhost").ok()?.await.ok()?;
                    let (mut send, mut recv) = conn.open_bi().await.ok()?;
                    send.write_all(&(msg.len() as u32).to_be_bytes())
                        .await
                        .ok()?;
                    send.write_all(msg.as_bytes()).await.ok()?;
                    let mut len = [0u8; 4];
                    recv.read_exact(&mut len).await.ok()?;
                    let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                    recv.read_exact(&mut buf).await.ok()?;
                    drop(permit);
                    Some(tokio::spawn(async move {
                        let _conn = conn;
                        loop {
                            tokio::time::sleep(Duration::from_secs(20)).await;
                            let hb = br#"{"type":"heartbeat"}"#;
                            if send
                                .write_all(&(hb.len() as u32).to_be_bytes())
                                .await
                                .is_err()
                                || send.write_all(hb).await.is_err()
                            {
                                break;
                            }
                            let mut len = [0u8; 4];
                            if recv.read_exact(&mut len).await.is_err() {
                                break;
                            }
                            let mut buf = vec![0u8; u32::from_be_bytes(len) as usize];
                            if recv.read_exact(&mut buf).await.is_err() {
                                break;
                            }
                        }
                    }))
                }));
            }
        }
        other => bail!("--via must be ws or quic, not {other:?}"),
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

fn quic_endpoint(cert: &Path) -> anyhow::Result<quinn::Endpoint> {
    use rustls::pki_types::{CertificateDer, pem::PemObject};
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(cert)? {
        roots.add(c?)?;
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![b"presence/1".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls)?;
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse()?)?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    let mut transport = quinn::TransportConfig::default();
    transport.keep_alive_interval(Some(Duration::from_secs(10)));
    cfg.transport_config(Arc::new(transport));
    ep.set_default_client_config(cfg);
    Ok(ep)
}
