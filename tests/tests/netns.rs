//! The partition harness against the real kernel: namespaces reach the root namespace and each
//! other, a cut drops traffic silently (connects hang, established connections stall) while the
//! rest flows, heal restores it, a real etcd and PostgreSQL stop answering a cut-off namespace,
//! and nothing is left behind: not after a drop, a panic, nor a killed run (the sweep).
//!
//! Every test skips loudly when namespaces are unavailable (not root), and fails instead with
//! PRESENCE_REQUIRE_NETNS=1. Every wait is bounded: socket timeouts, `output_within`, and
//! bounded waits for children.

use presence_tests::netns::{self, Cut, LINK_PREFIX, Netns, PREFIX};
use presence_tests::services::{Etcd, Listen, Postgres};
use rustix::process::{Pid, Signal, kill_process};
use std::io::{self, ErrorKind, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

/// How long a connect or read waits where the test expects it to hang (a cut).
const HANG: Duration = Duration::from_millis(400);
/// How long a connect or read waits where the test expects it to succeed.
const OK: Duration = Duration::from_secs(5);
/// Set in the child this file spawns as a server inside a namespace.
const CHILD_ENV: &str = "PRESENCE_NETNS_CHILD";

/// A namespace, or `None` when the test skips (printed).
fn netns(test: &str) -> Option<Netns> {
    Netns::create_or_skip(test).expect("create a network namespace")
}

/// An echo server on a thread, serving until dropped (or 60 s at most).
struct Echo {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
}

impl Echo {
    /// Serves on `listener` (bound wherever, in whichever namespace).
    fn serve(listener: TcpListener) -> Echo {
        let addr = listener.local_addr().expect("local addr");
        listener.set_nonblocking(true).expect("nonblocking");
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(60);
            while !stopped.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        std::thread::spawn(move || echo(s));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Echo { addr, stop }
    }

    /// In the root namespace, on every address: reachable from a namespace at its
    /// `host_addr()`, as the services with `Listen::Any` are.
    fn root() -> Echo {
        Echo::serve(TcpListener::bind("0.0.0.0:0").expect("bind in the root namespace"))
    }

    /// Inside `ns`, on every address of it.
    fn inside(ns: &Netns) -> Echo {
        let listener = ns
            .run(|| TcpListener::bind("0.0.0.0:0"))
            .expect("enter the namespace")
            .expect("bind inside");
        Echo::serve(listener)
    }

    fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn echo(mut s: TcpStream) {
    let _ = s.set_nonblocking(false);
    let _ = s.set_read_timeout(Some(Duration::from_secs(60)));
    let mut buf = [0u8; 1024];
    while let Ok(n @ 1..) = s.read(&mut buf) {
        if s.write_all(&buf[..n]).is_err() {
            return;
        }
    }
}

/// Connects to `to` from inside `ns` (or from the root namespace with `None`).
fn connect(ns: Option<&Netns>, to: SocketAddr, within: Duration) -> io::Result<TcpStream> {
    let connect = || TcpStream::connect_timeout(&to, within);
    let s = match ns {
        Some(ns) => ns.run(connect).expect("enter the namespace")?,
        None => connect()?,
    };
    s.set_read_timeout(Some(within))?;
    s.set_write_timeout(Some(within))?;
    Ok(s)
}

/// One round trip on `s`.
fn ping(s: &mut TcpStream, word: &[u8]) -> io::Result<()> {
    s.write_all(word)?;
    let mut got = vec![0u8; word.len()];
    s.read_exact(&mut got)?;
    assert_eq!(got, word);
    Ok(())
}

/// Connect and one round trip.
fn reaches(ns: Option<&Netns>, to: SocketAddr) -> io::Result<()> {
    ping(&mut connect(ns, to, OK)?, b"hello")
}

/// A connect that the test expects a silent drop to stall: it must time out, not be refused,
/// and not before its timeout.
fn assert_hangs(ns: Option<&Netns>, to: SocketAddr, what: &str) {
    let started = Instant::now();
    match connect(ns, to, HANG) {
        Err(e) if e.kind() == ErrorKind::TimedOut => {
            assert!(started.elapsed() >= HANG, "{what}: timed out early");
        }
        Err(e) => panic!("{what}: a silent drop hangs, but the connect failed with: {e}"),
        Ok(_) => panic!("{what}: connected through a cut"),
    }
}

/// Waits (bounded) for a child to exit; its status.
fn wait_exit(child: &mut Child, within: Duration) -> std::process::ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().expect("try_wait") {
            return status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("child {} still running after {within:?}", child.id());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn ip(args: &[&str]) -> (bool, String) {
    let out = Command::new("ip")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run ip");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

fn namespaces() -> Vec<String> {
    ip(&["netns", "list"])
        .1
        .lines()
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// The namespace and its root-side link are gone, and its process was killed.
fn assert_gone(name: &str, link: &str) {
    assert!(
        !namespaces().iter().any(|n| n == name),
        "namespace {name} left: {:?}",
        namespaces()
    );
    let (exists, text) = ip(&["link", "show", "dev", link]);
    assert!(!exists, "link {link} left: {text}");
    assert!(!std::path::Path::new("/sys/class/net").join(link).exists());
}

fn ip_forward() -> String {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_forward").expect("read ip_forward")
}

/// Not a test of its own: the server this file spawns inside a namespace as a child process
/// (a re-run of this test binary with CHILD_ENV set). Prints its port, echoes until killed.
#[test]
fn child_echo_server() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let listener = TcpListener::bind("0.0.0.0:0").expect("bind");
    println!("LISTENING {}", listener.local_addr().expect("addr").port());
    io::stdout().flush().expect("flush");
    // Bounded even if nobody kills it: the parent's deadline is far shorter.
    let deadline = Instant::now() + Duration::from_secs(120);
    listener.set_nonblocking(true).expect("nonblocking");
    while Instant::now() < deadline {
        match listener.accept() {
            Ok((s, _)) => {
                std::thread::spawn(move || echo(s));
            }
            Err(_) => std::thread::sleep(Duration::from_millis(5)),
        }
    }
}

/// (a) A server process inside is reachable from the root namespace, with the pid semantics
/// of any child (SIGSTOP stalls it, kill -9 ends it); a client inside reaches the root.
#[test]
fn a_process_inside_and_the_root_namespace_reach_each_other() {
    let Some(ns) = netns("a_process_inside_and_the_root_namespace_reach_each_other") else {
        return;
    };
    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "child_echo_server",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_ENV, "echo")
    .stdin(Stdio::null())
    .stdout(Stdio::piped())
    .stderr(Stdio::null());
    let mut child = ns.spawn(&mut cmd).expect("spawn inside");
    let stdout = child.stdout.take().expect("stdout");
    let port: u16 = netns::read_after(stdout, "LISTENING ", Duration::from_secs(10))
        .expect("the child's port")
        .trim()
        .parse()
        .expect("a port");
    assert!(
        ns.pids().expect("pids").contains(&child.id()),
        "the child's pid is the server's own, inside the namespace"
    );
    let server = SocketAddr::from((ns.addr(), port));
    reaches(None, server).expect("root -> process inside");

    // SIGSTOP by pid: the kernel still accepts, but nobody answers; SIGCONT: the answer comes.
    let mut s = connect(None, server, OK).expect("connect");
    let pid = Pid::from_child(&child);
    kill_process(pid, Signal::STOP).expect("SIGSTOP");
    std::thread::sleep(Duration::from_millis(100));
    s.set_read_timeout(Some(HANG)).expect("timeout");
    s.write_all(b"stalled").expect("write");
    let mut buf = [0u8; 7];
    let e = s
        .read_exact(&mut buf)
        .expect_err("a stopped process answers nothing");
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));
    kill_process(pid, Signal::CONT).expect("SIGCONT");
    s.set_read_timeout(Some(OK)).expect("timeout");
    s.read_exact(&mut buf).expect("the answer after SIGCONT");
    assert_eq!(&buf, b"stalled");

    // kill -9: gone, and the port refuses.
    child.kill().expect("kill -9");
    let status = wait_exit(&mut child, OK);
    assert!(!status.success());
    let e = connect(None, server, OK).expect_err("nothing listens any more");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused);

    // A client inside reaches a server of the root namespace at the root side's address.
    let root = Echo::root();
    reaches(Some(&ns), SocketAddr::from((ns.host_addr(), root.port()))).expect("inside -> root");
}

/// (b) Two namespaces reach each other through the root namespace, and a cut of one host
/// stops both directions between them only.
#[test]
fn two_namespaces_reach_each_other_through_the_root() {
    let Some(a) = netns("two_namespaces_reach_each_other_through_the_root") else {
        return;
    };
    let b = Netns::create().expect("a second namespace");
    let forward_before = ip_forward();
    assert_ne!(a.addr(), b.addr());
    let in_a = Echo::inside(&a);
    let in_b = Echo::inside(&b);
    let a_addr = SocketAddr::from((a.addr(), in_a.port()));
    let b_addr = SocketAddr::from((b.addr(), in_b.port()));
    reaches(Some(&a), b_addr).expect("a -> b");
    reaches(Some(&b), a_addr).expect("b -> a");
    reaches(None, a_addr).expect("root -> a");

    a.cut(&Cut::new().host(IpAddr::V4(b.addr())))
        .expect("cut a off b");
    assert_hangs(Some(&a), b_addr, "a -> b after the cut");
    assert_hangs(Some(&b), a_addr, "b -> a after the cut");
    reaches(None, a_addr).expect("root -> a: not cut");
    a.heal().expect("heal");
    reaches(Some(&a), b_addr).expect("a -> b healed");
    reaches(Some(&b), a_addr).expect("b -> a healed");
    assert_eq!(ip_forward(), forward_before, "no global sysctl changed");
}

/// (c) A cut socket hangs (connects time out, an established connection stalls) while other
/// traffic flows; heal restores it, the stalled connection included. Then: everything cut,
/// and the reject variant that fails fast.
#[test]
fn a_cut_drops_silently_what_it_names_and_heal_restores_it() {
    let Some(ns) = netns("a_cut_drops_silently_what_it_names_and_heal_restores_it") else {
        return;
    };
    let cut_off = Echo::root();
    let other = Echo::root();
    let inside = Echo::inside(&ns);
    let cut_addr = SocketAddr::from((ns.host_addr(), cut_off.port()));
    let other_addr = SocketAddr::from((ns.host_addr(), other.port()));
    let inside_addr = SocketAddr::from((ns.addr(), inside.port()));
    let mut established = connect(Some(&ns), cut_addr, OK).expect("connect before the cut");
    ping(&mut established, b"before").expect("round trip before the cut");

    let started = Instant::now();
    ns.cut(&Cut::new().socket(cut_addr)).expect("cut");
    let cut_took = started.elapsed();
    assert!(
        ns.ruleset().expect("ruleset").contains("drop"),
        "{}",
        ns.ruleset().expect("ruleset")
    );
    assert_hangs(Some(&ns), cut_addr, "inside -> the cut service");
    reaches(Some(&ns), other_addr).expect("inside -> another service of the root");
    reaches(None, inside_addr).expect("root -> inside: clients still reach it");
    established.set_read_timeout(Some(HANG)).expect("timeout");
    established
        .write_all(b"during")
        .expect("the write is buffered");
    let mut buf = [0u8; 6];
    let e = established
        .read_exact(&mut buf)
        .expect_err("an established connection stalls");
    assert!(matches!(
        e.kind(),
        ErrorKind::WouldBlock | ErrorKind::TimedOut
    ));

    ns.heal().expect("heal");
    assert!(!ns.ruleset().expect("ruleset").contains("presence_cut"));
    reaches(Some(&ns), cut_addr).expect("inside -> the service after heal");
    // The stalled segment is retransmitted: the same connection carries on.
    established
        .set_read_timeout(Some(Duration::from_secs(10)))
        .expect("timeout");
    established
        .read_exact(&mut buf)
        .expect("the stalled echo arrives after heal");
    assert_eq!(&buf, b"during");

    // Its own listening port cut: nobody reaches it, while it reaches the root.
    ns.cut(&Cut::new().own_port(inside.port()))
        .expect("cut its own port");
    assert_hangs(None, inside_addr, "root -> inside, its port cut");
    reaches(Some(&ns), other_addr).expect("inside -> root, its port cut");

    ns.cut(&Cut::everything()).expect("cut everything");
    assert_hangs(Some(&ns), other_addr, "inside -> root, everything cut");
    assert_hangs(None, inside_addr, "root -> inside, everything cut");
    // Its own loopback still works inside.
    reaches(Some(&ns), SocketAddr::from(([127, 0, 0, 1], inside.port()))).expect("loopback");

    // A second cut replaces the first: reject fails fast instead of hanging.
    ns.cut(&Cut::everything().reject())
        .expect("cut everything, rejecting");
    let started = Instant::now();
    let e = connect(Some(&ns), other_addr, OK).expect_err("refused");
    assert_eq!(e.kind(), ErrorKind::ConnectionRefused, "{e}");
    assert!(started.elapsed() < Duration::from_secs(1));
    ns.heal().expect("heal");
    reaches(Some(&ns), other_addr).expect("inside -> root healed");
    reaches(None, inside_addr).expect("root -> inside healed");
    eprintln!("a cut took {cut_took:?}");
}

/// `etcdctl endpoint health` run inside `ns` against `endpoint`: whether it said healthy.
fn etcd_healthy_from(ns: &Netns, endpoint: &str) -> (bool, String) {
    let etcdctl = std::env::var_os("PRESENCE_ETCDCTL_BIN").unwrap_or_else(|| "etcdctl".into());
    let mut cmd = Command::new(etcdctl);
    cmd.env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args([
            "--dial-timeout=1s",
            "--command-timeout=1s",
            "endpoint",
            "health",
        ]);
    let out = ns
        .output_within(&mut cmd, Duration::from_secs(15))
        .expect("etcdctl finishes");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("is healthy"), text)
}

/// (d) A real etcd, listening on every address, is in reach of a process inside until the
/// namespace is cut off it, and again after heal; the root namespace reaches it throughout.
#[test]
fn etcd_answers_a_namespace_until_it_is_cut_off() {
    let Some(ns) = netns("etcd_answers_a_namespace_until_it_is_cut_off") else {
        return;
    };
    let etcd = Etcd::start_listening(Listen::Any).expect("start etcd");
    let host = IpAddr::V4(ns.host_addr());
    let endpoint = etcd.endpoints_at(host).remove(0);
    let (ok, out) = etcd_healthy_from(&ns, &endpoint);
    assert!(ok, "etcd in reach from the namespace: {out}");

    ns.cut(&Cut::new().socket(etcd.client_addr_at(host)))
        .expect("cut off etcd");
    let started = Instant::now();
    let (ok, out) = etcd_healthy_from(&ns, &endpoint);
    assert!(!ok, "etcd still answered through the cut: {out}");
    eprintln!(
        "etcdctl gave up after {:?}: {}",
        started.elapsed(),
        out.trim()
    );
    // The cut is the namespace's own: the root namespace still reaches etcd, at that very
    // address too.
    let (ok, out) = etcd_healthy_root(&etcd.endpoints_at(host)[0]);
    assert!(ok, "etcd from the root namespace during the cut: {out}");

    ns.heal().expect("heal");
    let (ok, out) = etcd_healthy_from(&ns, &endpoint);
    assert!(ok, "etcd in reach again after heal: {out}");
}

fn etcd_healthy_root(endpoint: &str) -> (bool, String) {
    let etcdctl = std::env::var_os("PRESENCE_ETCDCTL_BIN").unwrap_or_else(|| "etcdctl".into());
    let out = Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoint}"))
        .args([
            "--dial-timeout=2s",
            "--command-timeout=2s",
            "endpoint",
            "health",
        ])
        .stdin(Stdio::null())
        .output()
        .expect("etcdctl");
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    (out.status.success() && text.contains("is healthy"), text)
}

/// (d) PostgreSQL listening on every address takes a connection made inside a namespace (a
/// socket connected there, then driven by tokio), stalls once the namespace is cut off, and
/// takes new connections after heal.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_answers_a_namespace_until_it_is_cut_off() {
    let Some(ns) = netns("postgres_answers_a_namespace_until_it_is_cut_off") else {
        return;
    };
    let pg = tokio::task::spawn_blocking(|| Postgres::start_listening(Listen::Any))
        .await
        .expect("join")
        .expect("start PostgreSQL");
    let host = IpAddr::V4(ns.host_addr());
    let config: tokio_postgres::Config = pg.url_at(host).parse().expect("url");
    let pg_addr = SocketAddr::new(host, pg.port());
    let connect_inside = async |ns: &Netns| {
        let s = connect(Some(ns), pg_addr, OK)?;
        s.set_nonblocking(true)?;
        let s = tokio::net::TcpStream::from_std(s)?;
        let (client, conn) = config
            .connect_raw(s, tokio_postgres::NoTls)
            .await
            .map_err(io::Error::other)?;
        tokio::spawn(conn);
        io::Result::Ok(client)
    };
    let limit = Duration::from_secs(10);
    let client = tokio::time::timeout(limit, connect_inside(&ns))
        .await
        .expect("bounded")
        .expect("connect from the namespace");
    let one: i32 = tokio::time::timeout(limit, client.query_one("SELECT 1", &[]))
        .await
        .expect("bounded")
        .expect("query")
        .get(0);
    assert_eq!(one, 1);

    ns.cut(&Cut::new().socket(pg_addr))
        .expect("cut off PostgreSQL");
    assert!(
        tokio::time::timeout(HANG, client.query_one("SELECT 2", &[]))
            .await
            .is_err(),
        "a query over a cut connection stalls"
    );
    assert_hangs(Some(&ns), pg_addr, "a new connection through the cut");

    ns.heal().expect("heal");
    let client = tokio::time::timeout(limit, connect_inside(&ns))
        .await
        .expect("bounded")
        .expect("connect after heal");
    let three: i32 = tokio::time::timeout(limit, client.query_one("SELECT 3", &[]))
        .await
        .expect("bounded")
        .expect("query after heal")
        .get(0);
    assert_eq!(three, 3);
}

/// (e) Drop leaves nothing: no namespace, no link, no process inside; after a normal end and
/// after a panic; and no global sysctl changed.
#[test]
fn teardown_leaves_nothing_even_after_a_panic() {
    let Some(ns) = netns("teardown_leaves_nothing_even_after_a_panic") else {
        return;
    };
    let forward_before = ip_forward();
    let name = ns.name().to_owned();
    let link = ns.link();
    assert!(namespaces().contains(&name));
    assert!(ip(&["link", "show", "dev", &link]).0);
    let mut sleeper = ns
        .spawn(Command::new("sleep").arg("60").stdin(Stdio::null()))
        .expect("spawn sleep inside");
    ns.cut(&Cut::everything()).expect("cut");
    drop(ns);
    assert_gone(&name, &link);
    assert!(!wait_exit(&mut sleeper, OK).success(), "sleep was killed");

    let mut made = None;
    let mut sleeper = None;
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
        let ns = Netns::create().expect("namespace");
        made = Some((ns.name().to_owned(), ns.link()));
        sleeper = Some(
            ns.spawn(Command::new("sleep").arg("60").stdin(Stdio::null()))
                .expect("spawn sleep inside"),
        );
        ns.cut(&Cut::new().host(Ipv4Addr::new(10, 213, 255, 254).into()))
            .expect("cut");
        panic!("deliberate panic inside a namespace test (expected in this test's output)");
    }));
    assert!(result.is_err());
    let (name, link) = made.expect("the namespace was made");
    assert_gone(&name, &link);
    let mut sleeper = sleeper.expect("sleep was spawned");
    assert!(!wait_exit(&mut sleeper, OK).success(), "sleep was killed");
    assert_eq!(ip_forward(), forward_before, "no global sysctl changed");
}

/// (e) What a killed run leaves (its namespace with a veth pair, a table and a process inside;
/// a root-side link whose namespace is gone) is swept; live namespaces are not touched.
#[test]
fn a_killed_runs_leftovers_are_swept() {
    let Some(live) = netns("a_killed_runs_leftovers_are_swept") else {
        return;
    };
    // The run that is killed: a process that owns the namespace while it is set up (so that
    // no sweep of a parallel test process takes it for stale half-way), then dies.
    let mut owner = Command::new("sleep")
        .arg("60")
        .stdin(Stdio::null())
        .spawn()
        .expect("spawn the owner");
    let name = format!("{PREFIX}{}-0", owner.id());
    assert!(ip(&["netns", "add", &name]).0, "make a stale namespace");
    // Links with indexes from the top of the range down, skipping those in use.
    let mut free_links = (0..16384u32).rev().map(|i| format!("{LINK_PREFIX}{i}"));
    let mut add_link = |peer: &dyn Fn(&str) -> Vec<String>| loop {
        let link = free_links.next().expect("a free link name");
        let mut args = vec!["link", "add", &link, "type", "veth", "peer", "name"];
        let peer = peer(&link);
        args.extend(peer.iter().map(String::as_str));
        let (ok, text) = ip(&args);
        if ok {
            break link;
        }
        assert!(text.contains("File exists"), "{text}");
    };
    let stale_link = add_link(&|_| vec!["veth0".into(), "netns".into(), name.clone()]);
    let orphan_link = add_link(&|link| vec![link.replace(LINK_PREFIX, "pnx")]);
    let mut sleeper = Command::new("ip")
        .args(["netns", "exec", &name, "sleep", "60"])
        .stdin(Stdio::null())
        .spawn()
        .expect("a process left inside");
    assert!(
        ip(&[
            "netns",
            "exec",
            &name,
            "nft",
            "add",
            "table",
            "inet",
            "presence_cut"
        ])
        .0,
        "a table left inside"
    );

    owner.kill().expect("kill -9 the owner");
    owner.wait().expect("reap the owner");
    // (pids are not reused for a long while: its pid stays dead for this test's life)

    let removed = netns::sweep().expect("sweep");
    eprintln!("swept: {removed:?}");
    assert_gone(&name, &stale_link);
    assert!(
        !ip(&["link", "show", "dev", &orphan_link]).0,
        "orphan link swept"
    );
    assert!(
        !wait_exit(&mut sleeper, OK).success(),
        "the process inside was killed"
    );
    // This process's namespace stays, and works.
    assert!(namespaces().iter().any(|n| n == live.name()));
    let root = Echo::root();
    reaches(
        Some(&live),
        SocketAddr::from((live.host_addr(), root.port())),
    )
    .expect("the live namespace still works");
}

/// A `tokio::process::Child` inside: spawned within `Netns::run` with the runtime entered; its
/// pid is inside, and tokio's kill and wait work on it as on any.
#[tokio::test]
async fn a_tokio_child_runs_inside() {
    let Some(ns) = netns("a_tokio_child_runs_inside") else {
        return;
    };
    let rt = tokio::runtime::Handle::current();
    let mut cmd = tokio::process::Command::new("sleep");
    cmd.arg("60").stdin(Stdio::null()).kill_on_drop(true);
    let mut child = ns
        .run(|| {
            let _rt = rt.enter();
            cmd.spawn()
        })
        .expect("enter the namespace")
        .expect("spawn sleep inside");
    let pid = child.id().expect("running");
    assert!(ns.pids().expect("pids").contains(&pid));
    child.start_kill().expect("kill -9");
    let status = tokio::time::timeout(OK, child.wait())
        .await
        .expect("bounded")
        .expect("wait");
    assert!(!status.success());
}
