//! The floor under a presence frame's cost on this machine: what any socket-per-session server
//! pays to hand one small frame to one of many loopback TCP connections, measured the way the
//! dark launch measures the node (this process's CPU over the run), with the readers in a
//! child process as the load generator is. `scripts/bench-delivery.sh` runs it beside the node
//! so that the node's CPU per frame is read against it (issue #20).
//!
//! Two ways to write, each a baseline for one part of the node's path:
//! - `write`: one thread writes each frame with one `write` on a non-blocking socket, at ticks.
//!   Nothing but the system call and the kernel's TCP (with loopback, the receiver's TCP too).
//! - `task`: each socket is owned by a task on a 2-worker tokio runtime, woken once per frame by
//!   a tick thread, as the node's session tasks are woken by their outbox; the task writes the
//!   frame with one `write`. The write plus a wake-up per frame.
//!
//! The frames are WebSocket text frames of a one-entry presence message, as the node writes
//! them. At the end every socket is closed and the readers report the bytes they read, which
//! must be every byte written.

use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail, ensure};
use clap::{Args, ValueEnum};

use crate::darklaunch::node::proc_sample;
use crate::util::parse_duration_ms;

/// How frames reach the sockets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// One thread, one `write` a frame.
    Write,
    /// A tokio task a socket, woken once a frame, one `write` a frame.
    Task,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Write => "one write a frame",
            Mode::Task => "a woken task and one write a frame",
        }
    }
}

#[derive(Args, Debug, Clone)]
pub struct FloorArgs {
    /// Loopback TCP connections (sessions).
    #[arg(long, default_value_t = 10_000)]
    pub sessions: u32,
    /// Frames a second, spread over the sessions round robin.
    #[arg(long, default_value_t = 14_000)]
    pub frame_rate: u32,
    /// Frames are written at ticks of this length (the node's default tick).
    #[arg(long, default_value = "200ms", value_parser = parse_duration_ms)]
    pub tick: u64,
    /// How long to write, once every connection is up.
    #[arg(long, default_value = "30s", value_parser = parse_duration_ms)]
    pub duration: u64,
    #[arg(long, value_enum, default_value_t = Mode::Write)]
    pub mode: Mode,
}

/// One presence frame of one entry, as the node writes it to a WebSocket: a text frame.
fn frame(user: u32) -> Vec<u8> {
    let json = format!(
        r#"{{"type":"presence","tick":1234567,"changes":[{{"state":"online","user":"u{user:05}"}}]}}"#
    );
    // Under 126 bytes: the length fits the header's second byte (server frames are unmasked).
    let mut f = vec![0x81, json.len() as u8];
    f.extend_from_slice(json.as_bytes());
    f
}

/// Runs the floor measurement and prints its lines.
pub fn run(a: &FloorArgs) -> Result<()> {
    ensure!(
        a.sessions > 0 && a.frame_rate > 0 && a.tick > 0,
        "nothing to write"
    );
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let listener = TcpListener::bind("127.0.0.1:0").context("binding a loopback listener")?;
    let addr = listener.local_addr()?;
    let exe = std::env::current_exe().context("finding this executable")?;
    let mut reader = Command::new(exe)
        .args(["write-floor-reader", "--addr", &addr.to_string()])
        .args(["--sessions", &a.sessions.to_string()])
        .stdout(Stdio::piped())
        .spawn()
        .context("starting the reader process")?;
    let result = measure(a, &listener, &mut reader);
    if result.is_err() {
        // Don't leave the reader waiting on connections that will never end.
        let _ = reader.kill();
        let _ = reader.wait();
    }
    result
}

/// Accepts the reader's connections, writes for `a.duration`, checks every byte arrived and
/// prints the figures.
fn measure(a: &FloorArgs, listener: &TcpListener, reader: &mut Child) -> Result<()> {
    let mut socks = Vec::with_capacity(a.sessions as usize);
    for _ in 0..a.sessions {
        let (s, _) = listener
            .accept()
            .context("accepting a reader's connection")?;
        s.set_nodelay(true)?;
        socks.push(s);
    }
    let frame = frame(a.sessions);
    let per_tick = (u64::from(a.frame_rate) * a.tick).div_ceil(1000);
    let ticks = a.duration / a.tick;
    let first = proc_sample(std::process::id()).context("reading this process's CPU")?;
    let start = Instant::now();
    let (written, blocked) = match a.mode {
        Mode::Write => write_at_ticks(&mut socks, &frame, per_tick, ticks, a.tick)?,
        Mode::Task => tasks_at_ticks(std::mem::take(&mut socks), &frame, per_tick, ticks, a.tick)?,
    };
    let elapsed = start.elapsed().as_secs_f64();
    let last = proc_sample(std::process::id()).context("reading this process's CPU")?;
    drop(socks);
    let mut out = String::new();
    reader
        .stdout
        .take()
        .context("the reader's output")?
        .read_to_string(&mut out)?;
    let status = reader.wait()?;
    ensure!(status.success(), "the reader process failed: {status}");
    let read: u64 = out.trim().parse().context("the reader's byte count")?;
    let sent = written * frame.len() as u64;
    ensure!(
        read == sent,
        "the readers read {read} bytes of the {sent} written"
    );
    let user = last.user_s - first.user_s;
    let sys = last.sys_s - first.sys_s;
    let per = |s: f64| s * 1e6 / written.max(1) as f64;
    println!(
        "write floor ({}): {} loopback sockets, {written} frames of {} bytes in {elapsed:.1} s \
         ({:.0}/s of {}/s offered), {blocked} not written (socket full); all {read} bytes read",
        a.mode.as_str(),
        a.sessions,
        frame.len(),
        written as f64 / elapsed,
        a.frame_rate,
    );
    println!(
        "  CPU per frame: writer {:.1} µs ({:.1} in the kernel; with loopback the readers' TCP \
         receive runs in the writer's send, as it does in the node's)",
        per(user + sys),
        per(sys)
    );
    Ok(())
}

/// Mode `write`: `per_tick` frames each tick, round robin over the sockets, one `write` each.
fn write_at_ticks(
    socks: &mut [TcpStream],
    frame: &[u8],
    per_tick: u64,
    ticks: u64,
    tick_ms: u64,
) -> Result<(u64, u64)> {
    for s in socks.iter() {
        s.set_nonblocking(true)?;
    }
    let (mut written, mut blocked, mut next) = (0u64, 0u64, 0usize);
    let n = socks.len();
    let start = Instant::now();
    for t in 0..ticks {
        for _ in 0..per_tick {
            let s = &mut socks[next];
            next = (next + 1) % n;
            match s.write(frame) {
                Ok(n) if n == frame.len() => written += 1,
                // A partial write would tear the frame: the readers' count tells.
                Ok(n) => bail!("a partial write of {n} bytes"),
                Err(e) if e.kind() == ErrorKind::WouldBlock => blocked += 1,
                Err(e) => return Err(e).context("writing a frame"),
            }
        }
        sleep_until(start + Duration::from_millis((t + 1) * tick_ms));
    }
    Ok((written, blocked))
}

/// Mode `task`: a task a socket on a 2-worker runtime, woken once a frame by this thread.
fn tasks_at_ticks(
    socks: Vec<TcpStream>,
    frame: &[u8],
    per_tick: u64,
    ticks: u64,
    tick_ms: u64,
) -> Result<(u64, u64)> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_io()
        .build()?;
    let written = Arc::new(AtomicU64::new(0));
    let frame: Arc<[u8]> = frame.into();
    let mut wakers = Vec::with_capacity(socks.len());
    let mut tasks = Vec::with_capacity(socks.len());
    for s in socks {
        s.set_nonblocking(true)?;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<()>(64);
        wakers.push(tx);
        let (frame, written) = (frame.clone(), written.clone());
        tasks.push(rt.spawn(async move {
            use tokio::io::AsyncWriteExt;
            let mut s = tokio::net::TcpStream::from_std(s)?;
            while rx.recv().await.is_some() {
                s.write_all(&frame).await?;
                written.fetch_add(1, Ordering::Relaxed);
            }
            Ok::<_, std::io::Error>(())
        }));
    }
    let (mut blocked, mut next) = (0u64, 0usize);
    let start = Instant::now();
    for t in 0..ticks {
        for _ in 0..per_tick {
            if wakers[next].try_send(()).is_err() {
                blocked += 1;
            }
            next = (next + 1) % wakers.len();
        }
        sleep_until(start + Duration::from_millis((t + 1) * tick_ms));
    }
    drop(wakers);
    for t in tasks {
        rt.block_on(t)?.context("a session task's write")?;
    }
    Ok((written.load(Ordering::Relaxed), blocked))
}

fn sleep_until(t: Instant) {
    if let Some(d) = t.checked_duration_since(Instant::now()) {
        std::thread::sleep(d);
    }
}

/// The reader process: `sessions` connections to `addr`, read to their end; prints the bytes
/// read in all.
pub fn reader(addr: SocketAddr, sessions: u32) -> Result<()> {
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()?;
    let total = rt.block_on(async move {
        let mut tasks = Vec::with_capacity(sessions as usize);
        for _ in 0..sessions {
            let mut s = tokio::net::TcpStream::connect(addr).await?;
            tasks.push(tokio::spawn(async move {
                use tokio::io::AsyncReadExt;
                let mut buf = vec![0u8; 4096];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf).await? {
                        0 => return Ok::<_, std::io::Error>(n),
                        k => n += k as u64,
                    }
                }
            }));
        }
        let mut total = 0u64;
        for t in tasks {
            total += t.await.map_err(std::io::Error::other)??;
        }
        Ok::<_, std::io::Error>(total)
    })?;
    println!("{total}");
    Ok(())
}
