//! A private PostgreSQL cluster for one test: `initdb` into a temporary folder, trust auth on
//! loopback only, a free port, a private socket folder, and one fresh database. PostgreSQL refuses
//! to run as root, so when the test runs as root (CI) its tools run as the `postgres` user.

use super::{Listen, START_ATTEMPTS, ServiceError, free_ports, log_tail, run};
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use tempfile::TempDir;

/// Debian's server binaries for the major version the project targets.
const DEBIAN_BIN: &str = "/usr/lib/postgresql/15/bin";
/// Seconds `pg_ctl` waits for a start or stop.
const PG_CTL_WAIT_S: &str = "30";
/// The database every instance creates; `url()` points at it.
pub const DATABASE: &str = "presence";
/// The superuser initdb creates (trust auth: no password).
pub const USER: &str = "postgres";

/// A running cluster; stopped (`-m immediate`) and its folder removed on drop.
pub struct Postgres {
    bin: PathBuf,
    dir: TempDir,
    port: u16,
    listen: Listen,
    /// `Some("postgres")` when this process is root: the server's tools run as that user.
    run_as: Option<&'static str>,
    running: bool,
}

impl Postgres {
    /// The folder with `initdb`, `pg_ctl` and `postgres`: `PRESENCE_PG_BIN`, else Debian's.
    pub fn bin_dir() -> Result<PathBuf, ServiceError> {
        let (dir, looked) = match std::env::var_os("PRESENCE_PG_BIN") {
            Some(p) => {
                let p = PathBuf::from(p);
                let looked = format!("PRESENCE_PG_BIN={}", p.display());
                (p, looked)
            }
            None => (PathBuf::from(DEBIAN_BIN), DEBIAN_BIN.to_owned()),
        };
        for tool in ["initdb", "pg_ctl", "postgres", "createdb"] {
            if !dir.join(tool).is_file() {
                return Err(ServiceError::Missing {
                    what: "PostgreSQL server binaries",
                    looked: format!("{tool} in {looked}"),
                });
            }
        }
        Ok(dir)
    }

    /// Creates a cluster listening on loopback, starts it, creates the database `DATABASE`.
    pub fn start() -> Result<Postgres, ServiceError> {
        Self::start_listening(Listen::Loopback)
    }

    /// [`Postgres::start`] with the server listening on `listen`.
    pub fn start_listening(listen: Listen) -> Result<Postgres, ServiceError> {
        let bin = Self::bin_dir()?;
        let root = rustix::process::geteuid().is_root();
        let run_as = root.then_some(USER);
        let dir = tempfile::Builder::new()
            .prefix("presence-pg-")
            // Root's TMPDIR may sit in a folder the postgres user cannot enter; /tmp it can.
            .tempdir_in(if root {
                PathBuf::from("/tmp")
            } else {
                std::env::temp_dir()
            })
            .map_err(ServiceError::io("create PostgreSQL's temporary folder"))?;
        let mut pg = Postgres {
            bin,
            dir,
            port: 0,
            listen,
            run_as,
            running: false,
        };
        std::fs::create_dir(pg.socket_dir())
            .map_err(ServiceError::io("create the socket folder"))?;
        if root {
            let (uid, gid) = user_ids(USER)?;
            for p in [pg.dir.path(), &pg.socket_dir()] {
                std::os::unix::fs::chown(p, Some(uid), Some(gid))
                    .map_err(ServiceError::io(format!("give {} to {USER}", p.display())))?;
            }
        }
        // --no-sync: initdb's own final flush only; the server runs with fsync on.
        let mut initdb = pg.tool("initdb");
        initdb
            .arg("--pgdata")
            .arg(pg.data_dir())
            .args(["--auth=trust", "--username", USER])
            .args(["--encoding=UTF8", "--locale=C", "--no-sync"]);
        run(&mut initdb)?;
        if listen == Listen::Any {
            pg.trust_namespaces()?;
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            let [port] = free_ports()?;
            pg.port = port;
            pg.configure()?;
            match pg.start_again() {
                Ok(()) => break,
                // Most likely the port was taken meanwhile: try another.
                Err(ServiceError::Command { .. }) if attempt < START_ATTEMPTS => {}
                Err(e) => return Err(e),
            }
        }
        pg.create_database(DATABASE)?;
        Ok(pg)
    }

    /// `postgres://postgres@127.0.0.1:PORT/presence`, for `tokio_postgres::connect`.
    pub fn url(&self) -> String {
        self.url_for(DATABASE)
    }

    pub fn url_for(&self, database: &str) -> String {
        format!("postgres://{USER}@127.0.0.1:{}/{database}", self.port)
    }

    /// The URL at another address of this machine: with [`Listen::Any`], a network namespace's
    /// `host_addr()` gives the URL for processes inside it.
    pub fn url_at(&self, ip: IpAddr) -> String {
        format!("postgres://{USER}@{ip}:{}/{DATABASE}", self.port)
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// The folder holding the server's unix socket (`host=` in a libpq connection string).
    pub fn socket_dir(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn log_path(&self) -> PathBuf {
        self.dir.path().join("postgres.log")
    }

    fn data_dir(&self) -> PathBuf {
        self.dir.path().join("data")
    }

    /// Creates another database on this cluster and returns its URL.
    pub fn create_database(&self, name: &str) -> Result<String, ServiceError> {
        let mut cmd = Command::new(self.bin.join("createdb"));
        cmd.args(["--host=127.0.0.1", "--username", USER])
            .arg(format!("--port={}", self.port))
            .arg(name)
            .env("PGCONNECT_TIMEOUT", "10");
        run(&mut cmd)?;
        Ok(self.url_for(name))
    }

    /// `pg_ctl stop -m immediate`: every backend killed with no checkpoint, as in a crash (the
    /// next start replays the WAL).
    pub fn stop_immediate(&mut self) -> Result<(), ServiceError> {
        if !self.running {
            return Ok(());
        }
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("--pgdata").arg(self.data_dir()).args([
            "--mode=immediate",
            "--wait",
            "--timeout",
            PG_CTL_WAIT_S,
            "stop",
        ]);
        run(&mut cmd)?;
        self.running = false;
        Ok(())
    }

    /// Starts the server (again) on the same port and data, waiting until it accepts connections.
    pub fn start_again(&mut self) -> Result<(), ServiceError> {
        self.stop_immediate()?;
        let mut cmd = self.tool("pg_ctl");
        cmd.arg("--pgdata")
            .arg(self.data_dir())
            .arg("--log")
            .arg(self.log_path())
            .args(["--wait", "--timeout", PG_CTL_WAIT_S, "start"]);
        match run(&mut cmd) {
            Ok(_) => {
                self.running = true;
                Ok(())
            }
            Err(ServiceError::Command {
                command,
                status,
                output,
            }) => Err(ServiceError::Command {
                command,
                status,
                output: format!(
                    "{output}\nend of the server log:\n{}",
                    log_tail(&self.log_path())
                ),
            }),
            Err(e) => Err(e),
        }
    }

    /// Appends this instance's settings to postgresql.conf (the last value of a setting wins).
    fn configure(&self) -> Result<(), ServiceError> {
        let conf = self.data_dir().join("postgresql.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&conf)
            .map_err(ServiceError::io(format!("open {}", conf.display())))?;
        writeln!(
            f,
            "\n# presence-tests\nlisten_addresses = '{}'\nport = {}\n\
             unix_socket_directories = '{}'\nfsync = on\n",
            self.listen.ip(),
            self.port,
            self.socket_dir().display()
        )
        .map_err(ServiceError::io(format!("write {}", conf.display())))
    }

    /// Trusts clients from the test namespaces' range as initdb's file trusts loopback.
    fn trust_namespaces(&self) -> Result<(), ServiceError> {
        let hba = self.data_dir().join("pg_hba.conf");
        let mut f = OpenOptions::new()
            .append(true)
            .open(&hba)
            .map_err(ServiceError::io(format!("open {}", hba.display())))?;
        writeln!(
            f,
            "\n# presence-tests: the network namespaces of presence_tests::netns\n\
             host all all {} trust",
            crate::netns::NETWORK
        )
        .map_err(ServiceError::io(format!("write {}", hba.display())))
    }

    /// A server tool, run as the `postgres` user when this process is root.
    fn tool(&self, name: &str) -> Command {
        let path = self.bin.join(name);
        let mut cmd = match self.run_as {
            Some(user) => {
                let mut c = Command::new("runuser");
                c.args(["-u", user, "--"]).arg(path);
                c
            }
            None => Command::new(path),
        };
        // Anything the server starts writes relative paths under its own folder.
        cmd.current_dir(self.dir.path());
        cmd
    }
}

/// The uid and gid of a system user, from `id` (no unsafe libc lookups here).
fn user_ids(user: &str) -> Result<(u32, u32), ServiceError> {
    let id = |flag: &str| -> Result<u32, ServiceError> {
        let out =
            run(Command::new("id").args([flag, user])).map_err(|_| ServiceError::Missing {
                what: "the `postgres` system user (Debian's postgresql package creates it)",
                looked: format!("id {flag} {user}"),
            })?;
        out.trim().parse().map_err(|_| ServiceError::Io {
            what: format!("read `id {flag} {user}`"),
            source: std::io::Error::other(format!("not a number: {out:?}")),
        })
    };
    Ok((id("-u")?, id("-g")?))
}

/// The postmaster's pid from its pid file, for the last-resort kill.
fn postmaster_pid(data: &Path) -> Option<i32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    text.lines().next()?.trim().parse().ok()
}

impl Drop for Postgres {
    fn drop(&mut self) {
        if self.running && self.stop_immediate().is_err() {
            // pg_ctl failed: kill the postmaster so the folder is not removed under a live server.
            if let Some(pid) =
                postmaster_pid(&self.data_dir()).and_then(rustix::process::Pid::from_raw)
            {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
    }
}
