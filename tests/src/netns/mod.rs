//! Network namespaces for partition tests: a process (or a socket) put in its own namespace,
//! linked to the root namespace by a veth pair, can be cut off from chosen addresses with
//! nftables and healed again, which a SIGSTOP of etcd cannot do (it cuts every node at once, and
//! the node's peers too). The cluster issue asks for "one node cut off from etcd and its peers".
//!
//! ```no_run
//! use presence_tests::netns::{Cut, Netns};
//! use presence_tests::services::{Etcd, Listen};
//! use std::process::Command;
//!
//! // None: printed why and skipped (not root, no `ip`/`nft`); an error with PRESENCE_REQUIRE_NETNS=1.
//! let Some(ns) = Netns::create_or_skip("my_test").expect("netns") else { return };
//! let etcd = Etcd::start_listening(Listen::Any).expect("etcd");
//! // Inside, the root namespace is `ns.host_addr()`; outside, the namespace is `ns.addr()`.
//! let mut cmd = Command::new("my-node");
//! cmd.args(["--etcd", &etcd.endpoints_at(ns.host_addr().into())[0]]);
//! let mut node = ns.spawn(&mut cmd).expect("spawn in the namespace"); // a std Child, real pid
//! ns.cut(&Cut::new().socket(etcd.client_addr_at(ns.host_addr().into()))).expect("cut");
//! // ... the node no longer reaches etcd (silently); clients still reach it at ns.addr() ...
//! ns.heal().expect("heal");
//! let _ = node.kill();
//! // Drop: processes left inside are killed, the veth pair and the namespace deleted.
//! ```
//!
//! Addresses: namespace `i` gets the /30 `10.213.0.0/16`'s `i`-th block, the root side `.1`
//! of it and the namespace `.2`; the namespace's default route goes through the root side, and
//! the root side forwards (its own per-interface `forwarding` sysctl, which goes with the
//! interface: no global sysctl is touched), so namespaces reach each other through the root
//! namespace and any service of the root namespace listening on `0.0.0.0`.
//!
//! Every call blocks for a short, bounded time (it runs `ip` and `nft`); in a `#[tokio::test]`
//! call them before the async work or through `spawn_blocking`.

mod cut;
mod sweep;

pub use cut::Cut;
pub use sweep::sweep;

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::Ipv4Addr;
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Start of every namespace name this harness creates: `presence-t-PID-N`. The sweep removes
/// those whose PID is gone.
pub const PREFIX: &str = "presence-t-";
/// Start of the root-side veth of every namespace: `pntI`, `I` the subnet's index (which makes
/// the kernel's "File exists" the lock that hands each subnet to one namespace only, across
/// processes).
pub const LINK_PREFIX: &str = "pnt";
/// The range the namespaces' /30 subnets come from.
pub const NETWORK: &str = "10.213.0.0/16";
const NETWORK_BASE: u32 = u32::from_be_bytes([10, 213, 0, 0]);
/// /30 blocks in [`NETWORK`].
const SUBNETS: u32 = 1 << 14;
/// The veth end inside every namespace.
const INNER_LINK: &str = "veth0";
/// Set to `1` where namespaces must work (CI as root): a test that would skip fails instead.
pub const REQUIRE_ENV: &str = "PRESENCE_REQUIRE_NETNS";
/// Bound of each `ip`/`nft` call (they take milliseconds).
const TOOL_WITHIN: Duration = Duration::from_secs(10);

/// What the harness tells the test when a namespace cannot be had or changed.
#[derive(thiserror::Error)]
pub enum NetnsError {
    /// This machine or user cannot have namespaces (not root, no `ip`/`nft`, no CAP_NET_ADMIN):
    /// a reason to skip, unless [`REQUIRE_ENV`] is set.
    #[error("network namespaces unavailable: {0}")]
    Unavailable(String),
    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },
    #[error("`{command}` failed ({status}):\n{output}")]
    Command {
        command: String,
        status: ExitStatus,
        output: String,
    },
    #[error("`{command}` did not finish within {limit:?} (killed); it printed:\n{output}")]
    TimedOut {
        command: String,
        limit: Duration,
        output: String,
    },
    #[error("no free /30 left in {NETWORK} (every `{LINK_PREFIX}N` link exists)")]
    NoSubnet,
}

/// `Debug` shows the message: a test's `.expect("netns")` prints it.
impl std::fmt::Debug for NetnsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl NetnsError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> NetnsError {
        let what = what.into();
        move |source| NetnsError::Io { what, source }
    }
}

/// The `ip` and `nft` binaries.
#[derive(Clone, Debug)]
pub(crate) struct Tools {
    pub(crate) ip: PathBuf,
    pub(crate) nft: PathBuf,
}

impl Tools {
    /// `ip` on PATH or in the sbin folders; `nft` from `PRESENCE_NFT_BIN`, PATH or sbin.
    pub(crate) fn find() -> Result<Tools, NetnsError> {
        let hint = "run `bash scripts/cluster-deps.sh` as root to install it";
        let ip = find_tool("ip", None)
            .ok_or_else(|| NetnsError::Unavailable(format!("`ip` (iproute2) not found: {hint}")))?;
        let nft = find_tool("nft", Some("PRESENCE_NFT_BIN")).ok_or_else(|| {
            NetnsError::Unavailable(format!("`nft` (nftables) not found: {hint}"))
        })?;
        Ok(Tools { ip, nft })
    }

    pub(crate) fn ip(&self) -> Command {
        Command::new(&self.ip)
    }
}

fn find_tool(name: &str, env: Option<&str>) -> Option<PathBuf> {
    if let Some(p) = env.and_then(std::env::var_os) {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// A named network namespace linked to the root namespace; torn down on drop.
pub struct Netns {
    name: String,
    tools: Tools,
    /// The subnet's index once its veth pair exists (teardown deletes the pair).
    index: Option<u32>,
}

impl Netns {
    /// Creates a namespace with its veth pair, addresses, loopback and default route.
    ///
    /// [`NetnsError::Unavailable`] when this process cannot (not root, no tools, the kernel or
    /// container refuses); any other error is a real failure. The first call of a process also
    /// sweeps what killed earlier runs left behind ([`sweep`]).
    pub fn create() -> Result<Netns, NetnsError> {
        if !rustix::process::geteuid().is_root() {
            return Err(NetnsError::Unavailable(
                "not root (creating namespaces, veth pairs and nftables rules needs root)".into(),
            ));
        }
        let tools = Tools::find()?;
        sweep::once(&tools);
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let name = format!("{PREFIX}{}-{n}", std::process::id());
        run_tool(tools.ip().args(["netns", "add", &name])).map_err(|e| {
            NetnsError::Unavailable(format!("`ip netns add` failed (no CAP_NET_ADMIN?): {e}"))
        })?;
        // From here on, drop tears down whatever was made.
        let mut ns = Netns {
            name,
            tools,
            index: None,
        };
        // The kernel may refuse nftables in a namespace (a kernel without nf_tables): probe it
        // now, so that it is a clear skip rather than a failure in the middle of a test.
        ns.nft("list ruleset").map_err(|e| {
            NetnsError::Unavailable(format!("nftables does not work in a namespace: {e}"))
        })?;
        ns.index = Some(ns.add_veth(n)?);
        ns.configure()?;
        Ok(ns)
    }

    /// [`Netns::create`] for a test: `Ok(None)` after printing loudly why `test` skips when
    /// namespaces are unavailable here, unless [`REQUIRE_ENV`]`=1` makes that an error.
    pub fn create_or_skip(test: &str) -> Result<Option<Netns>, NetnsError> {
        match Netns::create() {
            Ok(ns) => Ok(Some(ns)),
            Err(NetnsError::Unavailable(why)) if !required() => {
                // Straight to stderr, not `eprintln!`: the test harness captures that, and a
                // skip must be seen in a passing run.
                let _ = writeln!(
                    io::stderr(),
                    "\n*** SKIPPED {test}: {why}\n*** (set {REQUIRE_ENV}=1 to make this a failure)\n"
                );
                Ok(None)
            }
            Err(NetnsError::Unavailable(why)) => Err(NetnsError::Unavailable(format!(
                "{why} ({REQUIRE_ENV}=1: a failure, not a skip)"
            ))),
            Err(e) => Err(e),
        }
    }

    /// The namespace's name, as `ip netns` shows it.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The root-side veth's name (in the root namespace).
    pub fn link(&self) -> String {
        format!("{LINK_PREFIX}{}", self.index.unwrap_or(u32::MAX))
    }

    /// The namespace's own address: where the root namespace and other namespaces reach it.
    pub fn addr(&self) -> Ipv4Addr {
        subnet_addr(self.index.unwrap_or(0), 2)
    }

    /// The root namespace's address on this namespace's link: where processes inside reach
    /// services of the root namespace (bound to it or to `0.0.0.0`), and the source address of
    /// root-namespace clients that connect to [`Netns::addr`].
    pub fn host_addr(&self) -> Ipv4Addr {
        subnet_addr(self.index.unwrap_or(0), 1)
    }

    /// Path of the namespace's handle (what `setns` takes).
    pub fn path(&self) -> PathBuf {
        Path::new("/run/netns").join(&self.name)
    }

    /// Runs `f` on a new thread that is inside the namespace and returns what it returns.
    /// Sockets it creates stay in the namespace when handed out (a listener bound here, a
    /// stream connected here, then given to tokio with `from_std`), and processes it spawns
    /// start inside. A panic in `f` is resumed on the caller's thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        let path = self.path();
        let handle = File::open(&path).map_err(NetnsError::io(format!(
            "open the namespace handle {}",
            path.display()
        )))?;
        std::thread::scope(|s| {
            let thread = std::thread::Builder::new()
                .name(format!("in {}", self.name))
                .spawn_scoped(s, move || {
                    rustix::thread::move_into_link_name_space(
                        handle.as_fd(),
                        Some(rustix::thread::LinkNameSpaceType::Network),
                    )
                    .map_err(|e| NetnsError::Io {
                        what: format!("setns into {}", path.display()),
                        source: e.into(),
                    })?;
                    Ok(f())
                })
                .map_err(NetnsError::io("start a thread to enter the namespace"))?;
            match thread.join() {
                Ok(result) => result,
                Err(panic) => std::panic::resume_unwind(panic),
            }
        })
    }

    /// Spawns `cmd` inside the namespace, with everything `cmd` says (arguments, environment,
    /// folder, stdio). The `Child`'s pid is the program's own, so `Child::kill`, `kill -9` and
    /// SIGSTOP/SIGCONT by pid act on it as on any child. Processes still inside when the
    /// namespace is dropped are killed.
    ///
    /// For a `tokio::process::Child`, spawn a `tokio::process::Command` (e.g. made `From` a std
    /// one) inside [`Netns::run`] with the runtime entered:
    /// `ns.run(|| { let _rt = handle.enter(); cmd.spawn() })`.
    pub fn spawn(&self, cmd: &mut Command) -> Result<Child, NetnsError> {
        let shown = show(cmd);
        self.run(|| cmd.spawn())?
            .map_err(NetnsError::io(format!("spawn `{shown}` in {}", self.name)))
    }

    /// Runs `cmd` inside the namespace to completion, killed if it takes longer than `limit`;
    /// its output whatever the exit status (see [`Output::status`]).
    pub fn output_within(&self, cmd: &mut Command, limit: Duration) -> Result<Output, NetnsError> {
        self.output_with_input(cmd, None, limit)
    }

    /// Cuts the namespace off as `cut` says (see [`Cut`]), replacing any earlier cut at once.
    /// Established connections are cut too: their packets are dropped from now on.
    pub fn cut(&self, cut: &Cut) -> Result<(), NetnsError> {
        self.nft_script(&cut.script())
    }

    /// Removes the cut: traffic flows again (dropped TCP segments are retransmitted).
    pub fn heal(&self) -> Result<(), NetnsError> {
        self.nft_script(&cut::heal_script())
    }

    /// The nftables rules inside the namespace, as `nft list ruleset` prints them.
    pub fn ruleset(&self) -> Result<String, NetnsError> {
        self.nft("list ruleset")
    }

    /// Pids of the processes inside the namespace (`ip netns pids`).
    pub fn pids(&self) -> Result<Vec<u32>, NetnsError> {
        pids_in(&self.tools, &self.name)
    }

    fn nft(&self, args: &str) -> Result<String, NetnsError> {
        let mut cmd = Command::new(&self.tools.nft);
        cmd.args(args.split_whitespace());
        let out = self.output_within(&mut cmd, TOOL_WITHIN)?;
        checked(&cmd, out)
    }

    fn nft_script(&self, script: &str) -> Result<(), NetnsError> {
        let mut cmd = Command::new(&self.tools.nft);
        cmd.args(["-f", "-"]);
        let out = self.output_with_input(&mut cmd, Some(script.as_bytes()), TOOL_WITHIN)?;
        checked(&cmd, out).map(drop).map_err(|e| match e {
            NetnsError::Command {
                command,
                status,
                output,
            } => NetnsError::Command {
                command,
                status,
                output: format!("{output}\nthe script:\n{script}"),
            },
            e => e,
        })
    }

    fn output_with_input(
        &self,
        cmd: &mut Command,
        input: Option<&[u8]>,
        limit: Duration,
    ) -> Result<Output, NetnsError> {
        cmd.stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        });
        cmd.stdout(Stdio::piped()).stderr(Stdio::piped());
        let child = self.spawn(cmd)?;
        wait_output(child, &show(cmd), input, limit)
    }

    /// Creates the veth pair on the first free subnet, the inner end already in the namespace
    /// (one atomic step: no root-side orphan can exist without its namespace).
    fn add_veth(&self, n: u32) -> Result<u32, NetnsError> {
        // Start where other processes and namespaces are unlikely to be.
        let start = std::process::id()
            .wrapping_mul(7919)
            .wrapping_add(n.wrapping_mul(13))
            % SUBNETS;
        for i in 0..SUBNETS {
            let index = (start + i) % SUBNETS;
            let link = format!("{LINK_PREFIX}{index}");
            let mut cmd = self.tools.ip();
            cmd.args(["link", "add", &link, "type", "veth", "peer", "name"])
                .args([INNER_LINK, "netns", &self.name]);
            match run_tool(&mut cmd) {
                Ok(_) => return Ok(index),
                Err(NetnsError::Command { output, .. }) if output.contains("File exists") => {}
                Err(e) => return Err(e),
            }
        }
        Err(NetnsError::NoSubnet)
    }

    fn configure(&self) -> Result<(), NetnsError> {
        let link = self.link();
        let host = format!("{}/30", self.host_addr());
        let addr = format!("{}/30", self.addr());
        let gateway = self.host_addr().to_string();
        let ns = self.name.as_str();
        run_tool(self.tools.ip().args(["addr", "add", &host, "dev", &link]))?;
        // Forward what comes in on this link (to other namespaces): this interface's own
        // switch, which goes away with it; net.ipv4.ip_forward stays as it is.
        let forwarding = format!("/proc/sys/net/ipv4/conf/{link}/forwarding");
        std::fs::write(&forwarding, "1")
            .map_err(NetnsError::io(format!("write 1 to {forwarding}")))?;
        run_tool(self.tools.ip().args(["link", "set", &link, "up"]))?;
        run_tool(self.tools.ip().args(["-n", ns, "link", "set", "lo", "up"]))?;
        run_tool(
            self.tools
                .ip()
                .args(["-n", ns, "addr", "add", &addr, "dev", INNER_LINK]),
        )?;
        run_tool(
            self.tools
                .ip()
                .args(["-n", ns, "link", "set", INNER_LINK, "up"]),
        )?;
        run_tool(
            self.tools
                .ip()
                .args(["-n", ns, "route", "add", "default", "via", &gateway]),
        )?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        teardown(&self.tools, &self.name, self.index.map(|_| self.link()));
    }
}

/// Kills what runs inside, deletes the root-side veth (which deletes its peer at once: the
/// subnet is free again) and the namespace (its nftables table goes with it). Problems are
/// printed, not raised: this runs in `drop`, maybe while a test panics.
pub(crate) fn teardown(tools: &Tools, name: &str, link: Option<String>) {
    match pids_in(tools, name) {
        Ok(pids) => kill_all(&pids),
        Err(e) => eprintln!("netns teardown: list the processes in {name}: {e}"),
    }
    if let Some(link) = link
        && let Err(e) = run_tool(tools.ip().args(["link", "del", &link]))
    {
        eprintln!("netns teardown: {e}");
    }
    if let Err(e) = run_tool(tools.ip().args(["netns", "del", name])) {
        eprintln!("netns teardown: {e}");
    }
}

fn pids_in(tools: &Tools, name: &str) -> Result<Vec<u32>, NetnsError> {
    let out = run_tool(tools.ip().args(["netns", "pids", name]))?;
    Ok(out
        .split_whitespace()
        .filter_map(|p| p.parse().ok())
        .collect())
}

/// SIGKILL to each pid (never this process). SIGKILL also ends a stopped process.
fn kill_all(pids: &[u32]) {
    let me = std::process::id();
    for &pid in pids.iter().filter(|&&p| p != me) {
        if let Some(pid) = i32::try_from(pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
        {
            let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
        }
    }
}

fn required() -> bool {
    std::env::var(REQUIRE_ENV).is_ok_and(|v| v == "1")
}

fn subnet_addr(index: u32, host: u32) -> Ipv4Addr {
    Ipv4Addr::from(NETWORK_BASE + index * 4 + host)
}

/// Runs an `ip` command (in this thread's namespace) to completion, bounded; its output.
pub(crate) fn run_tool(cmd: &mut Command) -> Result<String, NetnsError> {
    let shown = show(cmd);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(NetnsError::io(format!("run `{shown}`")))?;
    let out = wait_output(child, &shown, None, TOOL_WITHIN)?;
    checked(cmd, out)
}

/// The output as text when the command succeeded, else a [`NetnsError::Command`].
fn checked(cmd: &Command, out: Output) -> Result<String, NetnsError> {
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(NetnsError::Command {
            command: show(cmd),
            status: out.status,
            output: text,
        })
    }
}

/// Feeds `input`, collects stdout and stderr, and waits at most `limit` for the exit; kills the
/// child (and returns [`NetnsError::TimedOut`]) past it.
fn wait_output(
    mut child: Child,
    shown: &str,
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<Output, NetnsError> {
    let deadline = Instant::now() + limit;
    // Readers first: a child that writes before it has read all its input cannot block us.
    let stdout = collect(child.stdout.take());
    let stderr = collect(child.stderr.take());
    if let (Some(input), Some(mut stdin)) = (input, child.stdin.take()) {
        // Small scripts: they fit the pipe, so this does not block on a stuck reader.
        if let Err(e) = stdin.write_all(input) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(NetnsError::io(format!("write the input of `{shown}`"))(e));
        }
    }
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(5)),
            Ok(None) => {
                let _ = child.kill();
                let _ = child.wait();
                let mut output = text_by(&stdout, Instant::now() + Duration::from_millis(100));
                output.push_str(&text_by(
                    &stderr,
                    Instant::now() + Duration::from_millis(100),
                ));
                return Err(NetnsError::TimedOut {
                    command: shown.to_owned(),
                    limit,
                    output,
                });
            }
            Err(e) => return Err(NetnsError::io(format!("wait for `{shown}`"))(e)),
        }
    };
    // A grandchild may hold the pipes open: wait a little for the rest, not forever.
    let rest = Instant::now() + Duration::from_secs(1);
    Ok(Output {
        status,
        stdout: bytes_by(&stdout, rest),
        stderr: bytes_by(&stderr, rest),
    })
}

/// Reads a pipe to its end on a thread; the bytes arrive on the channel.
fn collect(pipe: Option<impl Read + Send + 'static>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    if let Some(mut pipe) = pipe {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            let _ = tx.send(bytes);
        });
    } else {
        let _ = tx.send(Vec::new());
    }
    rx
}

fn bytes_by(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> Vec<u8> {
    rx.recv_timeout(deadline.saturating_duration_since(Instant::now()))
        .unwrap_or_default()
}

fn text_by(rx: &mpsc::Receiver<Vec<u8>>, deadline: Instant) -> String {
    String::from_utf8_lossy(&bytes_by(rx, deadline)).into_owned()
}

/// Reads a child's stdout until a line holds `marker`, for at most `limit`; returns what
/// follows the marker on that line. For children that print where they listen (a test binary
/// run as a child prints `test NAME ... ` before its own output on the same line).
pub fn read_after(
    stdout: impl Read + Send + 'static,
    marker: &str,
    limit: Duration,
) -> Result<String, NetnsError> {
    let (tx, rx) = mpsc::channel();
    let wanted = marker.to_owned();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            match line {
                Ok(line) => {
                    if let Some((_, rest)) = line.split_once(&wanted) {
                        let _ = tx.send(Ok(rest.to_owned()));
                        return;
                    }
                }
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
        }
        let _ = tx.send(Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the output ended",
        )));
    });
    let what = format!("read a line with {marker:?}");
    match rx.recv_timeout(limit) {
        Ok(Ok(rest)) => Ok(rest),
        Ok(Err(e)) => Err(NetnsError::io(what)(e)),
        Err(_) => Err(NetnsError::io(what)(io::Error::new(
            io::ErrorKind::TimedOut,
            format!("none within {limit:?}"),
        ))),
    }
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}
