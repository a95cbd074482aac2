//! The node under test: started from a binary and a data folder, or attached through its
//! data folder; its admin API (hyper 1 client with timeouts); its RSS and CPU from `/proc`.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;
use serde::Deserialize;

/// `<data-dir>/ready.json`.
#[derive(Debug, Clone, Deserialize)]
pub struct Ready {
    pub ws: SocketAddr,
    pub quic: SocketAddr,
    pub admin: SocketAddr,
    pub pid: u32,
}

/// Node settings the driver needs to know (and passes when it starts the node).
#[derive(Debug, Clone)]
pub struct NodeTiming {
    pub tick_ms: u64,
    pub idle_thresholds_ms: Vec<u64>,
    pub grace_ms: u64,
    pub heartbeat_timeout_ms: u64,
}

pub struct Node {
    child: Option<Child>,
    pub ready: Ready,
    pub key: String,
    pub cert_pem: String,
    pub dir: PathBuf,
    /// Whether `/proc/<pid>` is this node's (started here or attached on this machine).
    pub local: bool,
    remove_dir: bool,
}

fn ms(v: u64) -> String {
    format!("{v}ms")
}

impl Node {
    /// Starts `bin serve` on `dir` (created if missing) on free loopback ports.
    pub fn start(
        bin: &Path,
        dir: Option<&Path>,
        timing: &NodeTiming,
        extra: &[String],
    ) -> Result<Node> {
        if !bin.is_file() {
            bail!("node binary {} does not exist", bin.display());
        }
        let (dir, remove_dir) = match dir {
            Some(d) => (d.to_owned(), false),
            None => {
                let nanos = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.subsec_nanos());
                let d = std::env::temp_dir()
                    .join(format!("darklaunch-node-{}-{nanos}", std::process::id()));
                (d, true)
            }
        };
        std::fs::create_dir_all(&dir)
            .with_context(|| format!("cannot create data folder {}", dir.display()))?;
        let _ = std::fs::remove_file(dir.join("ready.json"));
        let log = dir.join("node.log");
        let log_file = std::fs::File::create(&log)
            .with_context(|| format!("cannot create {}", log.display()))?;
        let thresholds: Vec<String> = timing.idle_thresholds_ms.iter().map(|&t| ms(t)).collect();
        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--data-dir")
            .arg(&dir)
            .args(["--ws-listen", "127.0.0.1:0"])
            .args(["--quic-listen", "127.0.0.1:0"])
            .args(["--admin-listen", "127.0.0.1:0"])
            .args(["--tick", &ms(timing.tick_ms)])
            .args(["--idle-thresholds", &thresholds.join(",")])
            .args(["--grace", &ms(timing.grace_ms)])
            .args(["--heartbeat-timeout", &ms(timing.heartbeat_timeout_ms)])
            .args(extra)
            .env(
                "RUST_LOG",
                std::env::var("NODE_LOG").unwrap_or_else(|_| "warn".into()),
            )
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let mut node = Node {
            child: Some(child),
            ready: Ready {
                ws: SocketAddr::from(([127, 0, 0, 1], 0)),
                quic: SocketAddr::from(([127, 0, 0, 1], 0)),
                admin: SocketAddr::from(([127, 0, 0, 1], 0)),
                pid: 0,
            },
            key: String::new(),
            cert_pem: String::new(),
            dir: dir.clone(),
            local: true,
            remove_dir,
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Ok(bytes) = std::fs::read(dir.join("ready.json"))
                && let Ok(r) = serde_json::from_slice::<Ready>(&bytes)
            {
                node.ready = r;
                break;
            }
            if let Some(c) = node.child.as_mut()
                && let Ok(Some(status)) = c.try_wait()
            {
                let tail = std::fs::read_to_string(&log).unwrap_or_default();
                let tail: String = tail
                    .lines()
                    .rev()
                    .take(10)
                    .collect::<Vec<_>>()
                    .into_iter()
                    .rev()
                    .collect::<Vec<_>>()
                    .join("\n");
                bail!("the node exited before it was ready ({status}); its log:\n{tail}");
            }
            if Instant::now() > deadline {
                bail!(
                    "the node was not ready within 60 s (log: {})",
                    log.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        node.read_dir_files(None)?;
        Ok(node)
    }

    /// Attaches to a node running from `dir` (reads ready.json, admin_key, tls/cert.pem).
    pub fn attach(dir: &Path, key: Option<String>) -> Result<Node> {
        let ready_path = dir.join("ready.json");
        let bytes = std::fs::read(&ready_path).with_context(|| {
            format!(
                "cannot read {} (is a node running with --data-dir {}?)",
                ready_path.display(),
                dir.display()
            )
        })?;
        let ready: Ready = serde_json::from_slice(&bytes)
            .with_context(|| format!("{} is not a node's ready.json", ready_path.display()))?;
        let mut node = Node {
            child: None,
            local: Path::new(&format!("/proc/{}", ready.pid)).exists(),
            ready,
            key: String::new(),
            cert_pem: String::new(),
            dir: dir.to_owned(),
            remove_dir: false,
        };
        node.read_dir_files(key)?;
        Ok(node)
    }

    fn read_dir_files(&mut self, key: Option<String>) -> Result<()> {
        self.key = match key {
            Some(k) => k,
            None => std::fs::read_to_string(self.dir.join("admin_key"))
                .with_context(|| {
                    format!(
                        "cannot read {} (give --admin-key)",
                        self.dir.join("admin_key").display()
                    )
                })?
                .trim()
                .to_owned(),
        };
        let cert = self.dir.join("tls/cert.pem");
        self.cert_pem = std::fs::read_to_string(&cert)
            .with_context(|| format!("cannot read the node's certificate {}", cert.display()))?;
        Ok(())
    }

    pub fn pid(&self) -> Option<u32> {
        self.local.then_some(self.ready.pid)
    }

    /// Whether a node started here is still running.
    pub fn exited(&mut self) -> Option<String> {
        let c = self.child.as_mut()?;
        match c.try_wait() {
            Ok(Some(s)) => Some(s.to_string()),
            _ => None,
        }
    }

    /// `kill -9` of a node started here (no goodbye: its lease runs out on its own).
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Stops a node started here: SIGTERM, then SIGKILL after 10 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &c.id().to_string()])
                .stderr(Stdio::null())
                .status();
            let deadline = Instant::now() + Duration::from_secs(10);
            loop {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                if Instant::now() > deadline {
                    let _ = c.kill();
                    let _ = c.wait();
                    break;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        if self.remove_dir {
            let _ = std::fs::remove_dir_all(&self.dir);
            self.remove_dir = false;
        }
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        self.stop();
    }
}

/// CPU time (user + system, in seconds) and RSS (bytes) of a process from `/proc`.
#[derive(Debug, Clone, Copy, Default)]
pub struct ProcSample {
    /// CPU time so far in user space and in the kernel, seconds.
    pub user_s: f64,
    pub sys_s: f64,
    pub rss: u64,
}

impl ProcSample {
    /// User + kernel CPU time so far, seconds.
    pub fn cpu_s(&self) -> f64 {
        self.user_s + self.sys_s
    }
}

pub fn proc_sample(pid: u32) -> Option<ProcSample> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces) start after the last ')'.
    let rest = &stat[stat.rfind(')')? + 1..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the line, 12 and 13 after the name.
    let user: u64 = f.get(11)?.parse().ok()?;
    let sys: u64 = f.get(12)?.parse().ok()?;
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let rss = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024);
    // USER_HZ is 100 on every Linux configuration in use.
    Some(ProcSample {
        user_s: user as f64 / 100.0,
        sys_s: sys as f64 / 100.0,
        rss,
    })
}

/// CPU seconds (user + kernel) of a process and its children, living (their own time) and
/// waited for (the parent's `cutime`, `cstime`): a server and its workers (PostgreSQL's
/// postmaster and backends).
pub fn proc_tree_cpu(pid: u32) -> Option<f64> {
    let fields = |p: &str| -> Option<Vec<String>> {
        let stat = std::fs::read_to_string(format!("/proc/{p}/stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        Some(rest.split_whitespace().map(str::to_owned).collect())
    };
    // After the name: state 0, ppid 1, utime 11, stime 12, cutime 13, cstime 14.
    let ticks = |f: &[String], from: usize, to: usize| -> u64 {
        (from..=to)
            .filter_map(|i| f.get(i)?.parse::<u64>().ok())
            .sum()
    };
    let own = fields(&pid.to_string())?;
    let mut t = ticks(&own, 11, 14);
    let parent = pid.to_string();
    for e in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = e.file_name();
        let Some(p) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        if let Some(f) = fields(p)
            && f.get(1) == Some(&parent)
        {
            t += ticks(&f, 11, 12);
        }
    }
    Some(t as f64 / 100.0)
}

/// Timeouts of the admin client.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(120);

/// One keep-alive HTTP/1.1 connection to the admin API.
pub struct Admin {
    addr: SocketAddr,
    key: String,
    sender: Option<SendRequest<Full<Bytes>>>,
}

impl Admin {
    pub fn new(addr: SocketAddr, key: &str) -> Self {
        Self {
            addr,
            key: key.to_owned(),
            sender: None,
        }
    }

    async fn connect(&mut self) -> Result<&mut SendRequest<Full<Bytes>>> {
        if self.sender.as_ref().is_none_or(|s| s.is_closed()) {
            let stream =
                tokio::time::timeout(CONNECT_TIMEOUT, tokio::net::TcpStream::connect(self.addr))
                    .await
                    .map_err(|_| {
                        anyhow!("node admin API at {} did not answer within 5 s", self.addr)
                    })?
                    .with_context(|| format!("node admin API unreachable at {}", self.addr))?;
            let (sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
                .await
                .context("HTTP handshake with the admin API")?;
            tokio::spawn(conn);
            self.sender = Some(sender);
        }
        self.sender
            .as_mut()
            .ok_or_else(|| anyhow!("no admin connection"))
    }

    /// Sends a request; returns the status and the body.
    pub async fn request(
        &mut self,
        method: &str,
        path: &str,
        body: Option<String>,
    ) -> Result<(u16, String)> {
        let addr = self.addr;
        let auth = format!("Bearer {}", self.key);
        let sender = self.connect().await?;
        let req = hyper::Request::builder()
            .method(method)
            .uri(path)
            .header("host", addr.to_string())
            .header("authorization", auth)
            .header("content-type", "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .context("building a request")?;
        let fut = async {
            sender.ready().await?;
            let resp = sender.send_request(req).await?;
            let status = resp.status().as_u16();
            let body = resp.into_body().collect().await?.to_bytes();
            Ok::<_, hyper::Error>((status, String::from_utf8_lossy(&body).into_owned()))
        };
        match tokio::time::timeout(REQUEST_TIMEOUT, fut).await {
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.sender = None;
                Err(anyhow!("admin request {method} {path} failed: {e}"))
            }
            Err(_) => {
                self.sender = None;
                Err(anyhow!(
                    "admin request {method} {path} got no answer within {REQUEST_TIMEOUT:?}"
                ))
            }
        }
    }

    /// A request that must answer 2xx; 401 becomes a clear message about the key.
    pub async fn ok(&mut self, method: &str, path: &str, body: Option<String>) -> Result<String> {
        let (status, text) = self.request(method, path, body).await?;
        match status {
            200..=299 => Ok(text),
            401 => bail!(
                "the node's admin API refused the admin key (401 on {method} {path}): check --admin-key"
            ),
            s => bail!("admin {method} {path} answered {s}: {}", text.trim()),
        }
    }
}

#[derive(Debug, Deserialize)]
pub struct Health {
    #[serde(default)]
    pub users: u64,
    #[serde(default)]
    pub edges: u64,
    #[serde(default)]
    pub sessions: u64,
}

pub async fn health(admin: &mut Admin) -> Result<Health> {
    let text = admin.ok("GET", "/healthz", None).await?;
    serde_json::from_str(&text).context("/healthz is not the node's JSON")
}

/// Quantiles of one of the node's Prometheus histograms, as the bucket bounds they fall in
/// (so "p99 ≤ 5 ms"): what the node itself measured, without the driver's share.
#[derive(Debug, Clone, Default, serde::Serialize, PartialEq)]
pub struct NodeQuantiles {
    pub count: u64,
    /// Upper bounds in ms; `None` past the last finite bucket.
    pub p50_le_ms: Option<f64>,
    pub p90_le_ms: Option<f64>,
    pub p99_le_ms: Option<f64>,
    pub p999_le_ms: Option<f64>,
}

/// The node's own figures from its `/metrics`: its part of a presence frame's way (tick →
/// frame written), its part of send → sent, and its group commits (how many fsyncs, how many
/// rows they wrote).
pub async fn node_measures(admin: &mut Admin) -> Result<NodeMeasures> {
    let text = admin.ok("GET", "/metrics", None).await?;
    let n = |name: &str| counter_value(&text, name).unwrap_or(0.0) as u64;
    Ok(NodeMeasures {
        frame_delay: histogram_quantiles(&text, "presence_frame_delay_seconds"),
        send: histogram_quantiles(&text, "chat_send_seconds"),
        commit: histogram_quantiles(&text, "chat_commit_seconds"),
        sends: n("chat_sends_total"),
        commits: n("chat_commits_total"),
        rows: n("chat_committed_rows_total"),
    })
}

/// What [`node_measures`] reads.
#[derive(Debug, Clone, Default)]
pub struct NodeMeasures {
    /// From a frame's oldest tick to its write (`presence_frame_delay_seconds`).
    pub frame_delay: Option<NodeQuantiles>,
    pub send: Option<NodeQuantiles>,
    /// One group commit's time (`chat_commit_seconds`).
    pub commit: Option<NodeQuantiles>,
    pub sends: u64,
    pub commits: u64,
    pub rows: u64,
}

/// The value of an unlabelled counter or gauge line `name value`.
pub fn counter_value(text: &str, name: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        let rest = l.strip_prefix(name)?.strip_prefix(' ')?;
        rest.trim().parse().ok()
    })
}

/// Quantiles of the histogram `name` (in seconds) from `name_bucket{le="…"} n` lines of the
/// Prometheus text format (cumulative counts); `None` when absent or empty.
fn histogram_quantiles(text: &str, name: &str) -> Option<NodeQuantiles> {
    let prefix = format!("{name}_bucket{{le=\"");
    let mut buckets: Vec<(f64, u64)> = text
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(&prefix)?;
            let (le, n) = rest.split_once("\"}")?;
            let le = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().ok()?
            };
            Some((le, n.trim().parse::<f64>().ok()? as u64))
        })
        .collect();
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    let count = buckets.last()?.1;
    if count == 0 {
        return None;
    }
    let q = |q: f64| {
        let want = (q * count as f64).ceil() as u64;
        buckets
            .iter()
            .find(|(_, n)| *n >= want)
            .and_then(|(le, _)| le.is_finite().then_some(le * 1000.0))
    };
    Some(NodeQuantiles {
        count,
        p50_le_ms: q(0.5),
        p90_le_ms: q(0.9),
        p99_le_ms: q(0.99),
        p999_le_ms: q(0.999),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn quantiles_come_from_the_cumulative_buckets() {
        let text = "# HELP chat_send_seconds x\n\
            chat_send_seconds_bucket{le=\"0.001\"} 40\n\
            chat_send_seconds_bucket{le=\"0.002\"} 90\n\
            chat_send_seconds_bucket{le=\"0.005\"} 99\n\
            chat_send_seconds_bucket{le=\"+Inf\"} 100\n\
            chat_send_seconds_sum 0.2\n\
            chat_send_seconds_count 100\n\
            chat_commit_seconds_bucket{le=\"0.001\"} 7\n";
        let q = histogram_quantiles(text, "chat_send_seconds").unwrap();
        assert_eq!(q.count, 100);
        assert_eq!(q.p50_le_ms, Some(2.0));
        assert_eq!(q.p90_le_ms, Some(2.0));
        assert_eq!(q.p99_le_ms, Some(5.0));
        assert_eq!(q.p999_le_ms, None);
        assert_eq!(
            histogram_quantiles(text, "chat_commit_seconds")
                .unwrap()
                .count,
            7
        );
        assert!(histogram_quantiles(text, "nothing").is_none());
        assert!(histogram_quantiles("x_bucket{le=\"1\"} 0\n", "x").is_none());
    }

    #[test]
    fn counters_are_read_by_their_exact_name() {
        let text = "# TYPE chat_commits_total counter\n\
            chat_commits_total_other 5\n\
            chat_commits_total 1234\n\
            chat_committed_rows_total 98765\n";
        assert_eq!(counter_value(text, "chat_commits_total"), Some(1234.0));
        assert_eq!(
            counter_value(text, "chat_committed_rows_total"),
            Some(98765.0)
        );
        assert_eq!(counter_value(text, "chat_commits"), None);
    }
}
