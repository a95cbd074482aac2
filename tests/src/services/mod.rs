//! Real etcd and PostgreSQL servers for the process-level tests, each private to one test: a
//! temporary folder, free loopback ports, and cleanup on drop. The binaries come from Debian's
//! packages, installed by `scripts/cluster-deps.sh`; nothing here imitates what they do.
//!
//! The calls block (they spawn processes and wait for them, always for a bounded time). In a
//! `#[tokio::test]` call them before the async work starts, or through `spawn_blocking`.

mod etcd;
mod postgres;

pub use etcd::Etcd;
pub use postgres::Postgres;

/// Where a server listens (its default: [`Listen::Loopback`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Listen {
    /// `127.0.0.1` only: processes of the root network namespace.
    #[default]
    Loopback,
    /// `0.0.0.0`: also processes in the network namespaces of [`crate::netns`], which reach it
    /// at their [`host_addr`](crate::netns::Netns::host_addr) (`endpoints_at`, `url_at`).
    /// PostgreSQL then trusts clients from [`crate::netns::NETWORK`] as it trusts loopback
    /// (nobody else); etcd has no authentication, so it answers anyone who can reach this
    /// machine's addresses for the life of the test.
    Any,
}

impl Listen {
    fn ip(self) -> &'static str {
        match self {
            Listen::Loopback => "127.0.0.1",
            Listen::Any => "0.0.0.0",
        }
    }
}

use std::ffi::OsStr;
use std::io::{self, Read, Seek, SeekFrom};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Duration;

/// What the harness tells the test when a server cannot be had.
#[derive(thiserror::Error)]
pub enum ServiceError {
    #[error(
        "{what} not found ({looked}): run `bash scripts/cluster-deps.sh` as root to install it"
    )]
    Missing { what: &'static str, looked: String },
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
    #[error("{what} exited during start-up ({status}); end of its log:\n{log}")]
    Exited {
        what: &'static str,
        status: ExitStatus,
        log: String,
    },
    #[error("{what} did not answer within {waited:?}; end of its log:\n{log}")]
    NotReady {
        what: &'static str,
        waited: Duration,
        log: String,
    },
}

/// `Debug` shows the message: a test's `.expect("start etcd")` prints it, hint included.
impl std::fmt::Debug for ServiceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(self, f)
    }
}

impl ServiceError {
    fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> ServiceError {
        let what = what.into();
        move |source| ServiceError::Io { what, source }
    }
}

/// How many times a start is tried with fresh ports: a port found free can be taken by another
/// process before the server binds it.
const START_ATTEMPTS: usize = 3;

/// `n` distinct loopback ports that were free a moment ago (all held until all are chosen).
fn free_ports<const N: usize>() -> Result<[u16; N], ServiceError> {
    let listeners = (0..N)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<Result<Vec<_>, _>>()
        .map_err(ServiceError::io("bind a free loopback port"))?;
    let mut ports = [0u16; N];
    for (port, l) in ports.iter_mut().zip(&listeners) {
        *port = l
            .local_addr()
            .map_err(ServiceError::io("read a bound port"))?
            .port();
    }
    Ok(ports)
}

/// The first executable called `name` on PATH.
fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

/// Runs a command to completion and returns what it printed, or an error carrying that output.
fn run(cmd: &mut Command) -> Result<String, ServiceError> {
    let shown = show(cmd);
    let out = cmd
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(ServiceError::io(format!("run `{shown}`")))?;
    let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.push_str(&String::from_utf8_lossy(&out.stderr));
    if out.status.success() {
        Ok(text)
    } else {
        Err(ServiceError::Command {
            command: shown,
            status: out.status,
            output: text,
        })
    }
}

fn show(cmd: &Command) -> String {
    std::iter::once(cmd.get_program())
        .chain(cmd.get_args())
        .map(OsStr::to_string_lossy)
        .collect::<Vec<_>>()
        .join(" ")
}

/// The last few KiB of a log file, for error messages (empty when it cannot be read).
fn log_tail(path: &Path) -> String {
    const TAIL: u64 = 4096;
    let Ok(mut f) = std::fs::File::open(path) else {
        return String::new();
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    let _ = f.seek(SeekFrom::Start(len.saturating_sub(TAIL)));
    let mut bytes = Vec::new();
    let _ = f.read_to_end(&mut bytes);
    String::from_utf8_lossy(&bytes).into_owned()
}
