//! A private single-member etcd for one test: its own data folder, free loopback client and peer
//! ports, and the process faults the cluster's tests need (graceful stop, `kill -9`, SIGSTOP
//! pause, restart on the same data).

use super::{Listen, START_ATTEMPTS, ServiceError, free_ports, log_tail, on_path};
use rustix::process::{Pid, Signal, kill_process};
use std::fs::File;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use tempfile::TempDir;

/// How long a start may take before it is called failed (a fresh member elects itself in ~1 s).
const READY_WITHIN: Duration = Duration::from_secs(20);
/// How long a graceful stop may take before the process is killed.
const STOP_WITHIN: Duration = Duration::from_secs(10);

/// A running etcd; killed, reaped and its folder removed on drop.
pub struct Etcd {
    bin: PathBuf,
    dir: TempDir,
    client_port: u16,
    peer_port: u16,
    listen: Listen,
    child: Option<Child>,
}

impl Etcd {
    /// The etcd binary: `PRESENCE_ETCD_BIN`, else `etcd` on PATH.
    pub fn binary() -> Result<PathBuf, ServiceError> {
        let (found, looked) = match std::env::var_os("PRESENCE_ETCD_BIN") {
            Some(p) => {
                let p = PathBuf::from(p);
                let looked = format!("PRESENCE_ETCD_BIN={}", p.display());
                (p.is_file().then_some(p), looked)
            }
            None => (on_path("etcd"), "`etcd` on PATH".to_owned()),
        };
        found.ok_or(ServiceError::Missing {
            what: "etcd",
            looked,
        })
    }

    /// Starts etcd on loopback and waits until it reports itself healthy.
    pub fn start() -> Result<Etcd, ServiceError> {
        Self::start_listening(Listen::Loopback)
    }

    /// Starts etcd with its client port on `listen` (the peer port stays on loopback) and waits
    /// until it reports itself healthy.
    pub fn start_listening(listen: Listen) -> Result<Etcd, ServiceError> {
        let bin = Self::binary()?;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let dir = tempfile::Builder::new()
                .prefix("presence-etcd-")
                .tempdir()
                .map_err(ServiceError::io("create etcd's temporary folder"))?;
            let [client_port, peer_port] = free_ports()?;
            let mut etcd = Etcd {
                bin: bin.clone(),
                dir,
                client_port,
                peer_port,
                listen,
                child: None,
            };
            match etcd.spawn_and_wait() {
                Ok(()) => return Ok(etcd),
                // Most likely a port taken meanwhile: start over on new ports in a new folder.
                Err(ServiceError::Exited { .. }) if attempt < START_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
    }

    /// The client URLs, as `etcd_client::Client::connect` takes them.
    pub fn endpoints(&self) -> Vec<String> {
        vec![format!("http://127.0.0.1:{}", self.client_port)]
    }

    pub fn client_addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.client_port))
    }

    /// The client URLs at another address of this machine: with [`Listen::Any`], a network
    /// namespace's `host_addr()` gives the URLs for processes inside it.
    pub fn endpoints_at(&self, ip: IpAddr) -> Vec<String> {
        vec![format!("http://{}", self.client_addr_at(ip))]
    }

    pub fn client_addr_at(&self, ip: IpAddr) -> SocketAddr {
        SocketAddr::new(ip, self.client_port)
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("etcd.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// SIGTERM, then waits (bounded) for it to exit; SIGKILL if it does not.
    pub fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        let pid = Pid::from_child(&child);
        let _ = kill_process(pid, Signal::CONT);
        let _ = kill_process(pid, Signal::TERM);
        let deadline = Instant::now() + STOP_WITHIN;
        while Instant::now() < deadline {
            if let Ok(Some(_)) = child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
    }

    /// SIGKILL, as a crash; the data folder stays for `start_again`.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// SIGSTOP: the process stays but answers nothing (its leases keep their deadlines).
    /// Returns once every thread of it is stopped: a signal is delivered asynchronously, and a
    /// thread still running could otherwise answer one more request.
    pub fn pause(&self) -> Result<(), ServiceError> {
        self.signal(Signal::STOP)?;
        let Some(pid) = self.pid() else {
            return Ok(());
        };
        let deadline = Instant::now() + STOP_WITHIN;
        while !all_threads_stopped(pid) {
            if Instant::now() >= deadline {
                return Err(ServiceError::Io {
                    what: "pause etcd".into(),
                    source: std::io::Error::other("its threads did not all stop"),
                });
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        Ok(())
    }

    /// SIGCONT after `pause`.
    pub fn resume(&self) -> Result<(), ServiceError> {
        self.signal(Signal::CONT)
    }

    /// Starts it again on the same ports and data after `stop` or `kill`, waiting until healthy.
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        self.kill();
        self.spawn_and_wait()
    }

    fn signal(&self, sig: Signal) -> Result<(), ServiceError> {
        let child = self.child.as_ref().ok_or_else(|| ServiceError::Io {
            what: "signal etcd".into(),
            source: std::io::Error::other("etcd is not running"),
        })?;
        kill_process(Pid::from_child(child), sig).map_err(|e| ServiceError::Io {
            what: format!("send {sig:?} to etcd"),
            source: e.into(),
        })
    }

    fn spawn_and_wait(&mut self) -> Result<(), ServiceError> {
        let log_path = self.log_path();
        let log = File::options()
            .create(true)
            .append(true)
            .open(&log_path)
            .map_err(ServiceError::io("open etcd's log"))?;
        let log2 = log
            .try_clone()
            .map_err(ServiceError::io("open etcd's log"))?;
        let client = format!("http://127.0.0.1:{}", self.client_port);
        let listen = format!("http://{}:{}", self.listen.ip(), self.client_port);
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let child = Command::new(&self.bin)
            .arg("--name=test")
            .arg(format!("--data-dir={}", self.data_dir().display()))
            .arg(format!("--listen-client-urls={listen}"))
            .arg(format!("--advertise-client-urls={client}"))
            .arg(format!("--listen-peer-urls={peer}"))
            .arg(format!("--initial-advertise-peer-urls={peer}"))
            .arg(format!("--initial-cluster=test={peer}"))
            .arg("--initial-cluster-state=new")
            .arg("--logger=zap")
            .arg("--log-outputs=stderr")
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(ServiceError::io(format!("start {}", self.bin.display())))?;
        let addr = self.client_addr();
        wait_healthy(self.child.insert(child), addr, &log_path)
    }
}

/// Polls `GET /health` on the client port until etcd says it is healthy (it has a leader).
fn wait_healthy(child: &mut Child, addr: SocketAddr, log: &Path) -> Result<(), ServiceError> {
    let deadline = Instant::now() + READY_WITHIN;
    while Instant::now() < deadline {
        if let Ok(Some(status)) = child.try_wait() {
            return Err(ServiceError::Exited {
                what: "etcd",
                status,
                log: log_tail(log),
            });
        }
        if health(addr).is_ok_and(|body| body.contains(r#""health":"true""#)) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(ServiceError::NotReady {
        what: "etcd",
        waited: READY_WITHIN,
        log: log_tail(log),
    })
}

fn health(addr: SocketAddr) -> std::io::Result<String> {
    let timeout = Duration::from_secs(2);
    let mut s = TcpStream::connect_timeout(&addr, timeout)?;
    s.set_read_timeout(Some(timeout))?;
    s.set_write_timeout(Some(timeout))?;
    s.write_all(b"GET /health HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut body = String::new();
    s.take(64 * 1024).read_to_string(&mut body)?;
    Ok(body)
}

/// Whether every thread of `pid` is in the stopped state (`T` in /proc/PID/task/*/stat).
fn all_threads_stopped(pid: u32) -> bool {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    tasks.flatten().all(|task| {
        std::fs::read_to_string(task.path().join("stat"))
            .ok()
            // The state follows the command name, which is in parentheses and may hold spaces.
            .and_then(|stat| {
                stat.rsplit_once(") ")
                    .map(|(_, rest)| rest.starts_with('T'))
            })
            .unwrap_or(false)
    })
}

impl Drop for Etcd {
    fn drop(&mut self) {
        self.kill();
    }
}
