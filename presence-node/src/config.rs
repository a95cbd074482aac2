//! The operators' contract: `presence-node serve` settings, each a flag, an environment
//! variable `PRESENCE_<NAME>` and a key of a `--config` TOML file. Flags win over the
//! environment, the environment over the file, the file over the defaults. Each setting is
//! declared once, in the table at `settings!` below; everything else is generated from it.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use anyhow::{Context, anyhow, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;

settings! {
    // The file itself: a flag and an environment variable, not a key of the file.
    config: "config", "PRESENCE_CONFIG", "none",
        "TOML file with any of these settings (keys as the flags, in kebab or snake case)";

    // field: read as => resolved as = resolver,
    //     flag and TOML key, environment variable, default, help line
    data_dir: PathBuf => PathBuf = value,
        "data-dir", "PRESENCE_DATA_DIR", "./data",
        "Everything durable: graph, groups, generated secret, key, dev certificate";
    ws_listen: SocketAddr => SocketAddr = value,
        "ws-listen", "PRESENCE_WS_LISTEN", "127.0.0.1:7400",
        "WebSocket clients";
    quic_listen: SocketAddr => SocketAddr = value,
        "quic-listen", "PRESENCE_QUIC_LISTEN", "127.0.0.1:7401",
        "QUIC clients";
    admin_listen: SocketAddr => SocketAddr = value,
        "admin-listen", "PRESENCE_ADMIN_LISTEN", "127.0.0.1:7402",
        "Admin HTTP API, health, metrics";
    #[secret]
    secret: String => Option<String> = optional,
        "secret", "PRESENCE_SECRET", "generated into the data dir",
        "HS256 secret for client tokens";
    #[secret]
    admin_key: String => Option<String> = optional,
        "admin-key", "PRESENCE_ADMIN_KEY", "generated into the data dir",
        "Bearer key for the admin API";
    tick: String => Duration = duration,
        "tick", "PRESENCE_TICK", "200ms",
        "Presence batching period";
    tick_phases: u32 => u32 = value,
        "tick-phases", "PRESENCE_TICK_PHASES", "1",
        "Engine ticks a batching period (1-20). Over 1, a session still gets one presence \
         frame a period at most, but a change leaves at the next engine tick for a session \
         sent none within the period: lower latency for more node CPU a frame \
         (docs/benchmarks.md)";
    idle_thresholds: String => Vec<Duration> = increasing_durations,
        "idle-thresholds", "PRESENCE_IDLE_THRESHOLDS", "1m,2m,5m,10m",
        "Idle levels, increasing";
    grace: String => Duration = duration,
        "grace", "PRESENCE_GRACE", "5s",
        "A disconnect becomes offline after this";
    heartbeat_timeout: String => Duration = duration,
        "heartbeat-timeout", "PRESENCE_HEARTBEAT_TIMEOUT", "45s",
        "A silent session is expired after this";
    webhook_url: String => Option<String> = optional,
        "webhook-url", "PRESENCE_WEBHOOK_URL", "none",
        "Where `message.undelivered` events go";
    max_text: usize => usize = value,
        "max-text", "PRESENCE_MAX_TEXT", "4000",
        "Characters per chat message";
    max_group: usize => usize = value,
        "max-group", "PRESENCE_MAX_GROUP", "1000",
        "Most members of a group, for the admin API and chat sends";
    chat_max_in_flight: usize => usize = value,
        "chat-max-in-flight", "PRESENCE_CHAT_MAX_IN_FLIGHT", "20000",
        "Chat sends accepted but not yet on disk, at most; more are refused as rate_limited \
         until the disk catches up";
    chat_store: String => chat_relay::StoreKind = parsed,
        "chat-store", "PRESENCE_CHAT_STORE", "fjall",
        "Embedded chat store in the data dir: fjall or redb";
    chat_retention: String => Option<Duration> = optional_duration,
        "chat-retention", "PRESENCE_CHAT_RETENTION", "kept forever",
        "Chat entries older than this are trimmed, like 30d";
    node_id: String => Option<String> = optional,
        "node-id", "PRESENCE_NODE_ID", "generated into the data dir",
        "This node's name in the cluster: 1-64 of A-Z a-z 0-9 . _ - (a number 0-1023 is also \
         the node part of its message ids)";
    tls_cert: PathBuf => Option<PathBuf> = optional,
        "tls-cert", "PRESENCE_TLS_CERT", "a dev certificate in the data dir",
        "TLS certificate chain (PEM) for QUIC";
    tls_key: PathBuf => Option<PathBuf> = optional,
        "tls-key", "PRESENCE_TLS_KEY", "the dev certificate's key",
        "TLS private key (PEM) for QUIC";
    max_friends: u32 => u32 = value,
        "max-friends", "PRESENCE_MAX_FRIENDS", "5000",
        "Most friends per user";
    max_sessions_per_user: u32 => u32 = value,
        "max-sessions-per-user", "PRESENCE_MAX_SESSIONS_PER_USER", "16",
        "Most sessions (devices) per user";
    log_format: LogFormat => LogFormat = value,
        "log-format", "PRESENCE_LOG_FORMAT", "text",
        "Log format";
    cluster_etcd: String => Option<Vec<String>> = optional_list,
        "cluster-etcd", "PRESENCE_CLUSTER_ETCD", "none (single node)",
        "Comma-separated etcd endpoints: joins the cluster (needs --store, --secret, --admin-key)";
    cluster_prefix: String => String = value,
        "cluster-prefix", "PRESENCE_CLUSTER_PREFIX", "/presence",
        "etcd key prefix of this cluster's records (clusters sharing an etcd differ here)";
    peer_listen: SocketAddr => SocketAddr = value,
        "peer-listen", "PRESENCE_PEER_LISTEN", "127.0.0.1:7403",
        "QUIC listener for other nodes (cluster mode)";
    lease_ttl: String => Duration = duration,
        "lease-ttl", "PRESENCE_LEASE_TTL", "5s",
        "The node's etcd lease: how long a dead node keeps its slots";
    advertise_ws: String => Option<String> = optional,
        "advertise-ws", "PRESENCE_ADVERTISE_WS", "the listen address",
        "WebSocket address `moved` and /v1/route tell clients";
    advertise_quic: String => Option<String> = optional,
        "advertise-quic", "PRESENCE_ADVERTISE_QUIC", "the listen address",
        "QUIC address `moved` and /v1/route tell clients";
    advertise_lp: String => Option<String> = optional,
        "advertise-lp", "PRESENCE_ADVERTISE_LP", "http:// and the advertised WebSocket address",
        "Long-poll base URL `moved` and /v1/route tell clients (the endpoints are under /v1/lp/)";
    advertise_peer: String => Option<String> = optional,
        "advertise-peer", "PRESENCE_ADVERTISE_PEER", "the listen address",
        "Peer-link address other nodes dial";
    lp_hold: String => Duration = duration,
        "lp-hold", "PRESENCE_LP_HOLD", "25s",
        "Longest a long-poll request waits for a message before it is answered with none \
         (at most two thirds of the heartbeat timeout)";
    cors_origin: String => Option<String> = optional,
        "cors-origin", "PRESENCE_CORS_ORIGIN", "none",
        "Lets browser pages from this origin (scheme://host or scheme://host:port) call the long-poll \
         endpoints; requests with any other Origin than this one or the node's own are refused";
    demo_dir: String => Option<Vec<String>> = optional_list,
        "demo-dir", "PRESENCE_DEMO_DIR", "none",
        "Dev only: serves the demo page at /demo/ on the client port from these comma-separated \
         folders (the first that has a file wins), and POST /demo/token mints a token for any \
         user there: never on a node other people can reach";
    #[secret]
    store: String => Option<String> = optional,
        "store", "PRESENCE_STORE", "the embedded stores in the data dir",
        "postgres://…: graph and groups in PostgreSQL (required in a cluster)";
}

/// One `serve` setting as operators see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Setting {
    /// The flag without its dashes; also the TOML key (in this kebab case or in snake case).
    pub name: &'static str,
    /// The environment variable.
    pub env: &'static str,
    /// The default as `--help` shows it: a value, or what the node does without one.
    pub default: &'static str,
    /// The help line, without the default.
    pub help: &'static str,
    /// `--help` does not show the environment variable's value (it is a secret).
    pub hide_env_value: bool,
}

/// Generates, from the table above: the clap flags [`ServeArgs`], the TOML file's keys
/// (`FileConfig`), the resolved [`NodeConfig`], their merge, [`SETTING`] and [`SETTINGS`].
///
/// A row is `field: read as => resolved as = resolver, "flag", "ENV", "default", "help"`,
/// after `#[secret]` when `--help` should not show the environment variable's value. The flag,
/// the environment variable and the TOML key are read as the "read as" type; the resolver turns
/// the winner of flag > environment > file, or else the default text, into the resolved field.
macro_rules! settings {
    (
        config: $config_name:literal, $config_env:literal, $config_default:literal,
            $config_help:literal;
        $(
            $(#[$marker:ident])?
            $field:ident: $read:ty => $resolved:ty = $resolver:ident,
                $name:literal, $env:literal, $default:literal, $help:literal;
        )*
    ) => {
        /// `presence-node serve` flags; clap has already applied their environment variables.
        #[derive(Debug, Clone, Default, Args)]
        pub struct ServeArgs {
            #[arg(long = $config_name, env = $config_env,
                help = concat!($config_help, " [default: ", $config_default, "]"))]
            pub config: Option<PathBuf>,
            $(
                #[arg(long = $name, env = $env, hide_env_values = secret!($($marker)?),
                    help = concat!($help, " [default: ", $default, "]"))]
                pub $field: Option<$read>,
            )*
        }

        /// The same settings as read from a TOML file.
        #[derive(Debug, Default, Deserialize)]
        #[serde(deny_unknown_fields)]
        struct FileConfig {
            $(
                #[serde(alias = $name)]
                $field: Option<$read>,
            )*
        }

        /// Resolved settings of a node.
        #[derive(Debug, Clone)]
        pub struct NodeConfig {
            $(
                #[doc = $help]
                pub $field: $resolved,
            )*
        }

        impl NodeConfig {
            /// Each setting from its flag or environment variable, else the file, else the
            /// default; not yet validated.
            fn merge(args: ServeArgs, file: FileConfig) -> anyhow::Result<Self> {
                Ok(NodeConfig {
                    $( $field: $resolver($name, args.$field.or(file.$field), $default)?, )*
                })
            }
        }

        /// Each setting by its field name, for the subcommands that take some of them too.
        #[derive(Debug, Clone, Copy)]
        pub struct SettingsByField {
            pub config: Setting,
            $( pub $field: Setting, )*
        }

        /// Each setting by its field name: `SETTING.data_dir.env` is `PRESENCE_DATA_DIR`.
        pub const SETTING: SettingsByField = SettingsByField {
            config: Setting {
                name: $config_name,
                env: $config_env,
                default: $config_default,
                help: $config_help,
                hide_env_value: false,
            },
            $(
                $field: Setting {
                    name: $name,
                    env: $env,
                    default: $default,
                    help: $help,
                    hide_env_value: secret!($($marker)?),
                },
            )*
        };

        /// Every setting, in `--help`'s order, for docs and tests.
        pub const SETTINGS: &[Setting] = &[SETTING.config, $(SETTING.$field),*];
    };
}
use settings;

/// `#[secret]` in the table: hide the environment variable's value from `--help`.
macro_rules! secret {
    () => {
        false
    };
    (secret) => {
        true
    };
}
use secret;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        <Self as ValueEnum>::from_str(s, false)
    }
}

// The resolvers of the table: `(flag, value read if any, default text) -> resolved value`.

/// The value read, else the default parsed as a flag would be.
fn value<T: FromStr>(name: &str, read: Option<T>, default: &str) -> anyhow::Result<T>
where
    T::Err: Display,
{
    match read {
        Some(v) => Ok(v),
        None => default
            .parse()
            .map_err(|e| anyhow!("{name}: the default {default:?} is invalid: {e}")),
    }
}

/// The value read, if any: the default text only says what the node does without one.
fn optional<T>(_name: &str, read: Option<T>, _default: &str) -> anyhow::Result<Option<T>> {
    Ok(read)
}

/// Text parsed after the merge, so a bad value reads the same from a flag, the environment
/// or the file.
fn parsed<T: FromStr>(name: &str, read: Option<String>, default: &str) -> anyhow::Result<T>
where
    T::Err: Display,
{
    read.as_deref()
        .unwrap_or(default)
        .parse()
        .map_err(|e| anyhow!("{name}: {e}"))
}

fn duration(name: &str, read: Option<String>, default: &str) -> anyhow::Result<Duration> {
    parse_duration(name, read.as_deref().unwrap_or(default))
}

/// A comma-separated list of non-empty items.
fn optional_list(
    name: &str,
    read: Option<String>,
    _default: &str,
) -> anyhow::Result<Option<Vec<String>>> {
    let Some(s) = read else { return Ok(None) };
    let list: Vec<String> = s.split(',').map(|p| p.trim().to_owned()).collect();
    if list.iter().any(String::is_empty) {
        bail!("{name}: empty item in {s:?}");
    }
    Ok(Some(list))
}

fn optional_duration(
    name: &str,
    read: Option<String>,
    _default: &str,
) -> anyhow::Result<Option<Duration>> {
    read.map(|s| parse_duration(name, &s)).transpose()
}

/// A comma-separated list of increasing durations.
fn increasing_durations(
    name: &str,
    read: Option<String>,
    default: &str,
) -> anyhow::Result<Vec<Duration>> {
    let s = read.as_deref().unwrap_or(default);
    let list = s
        .split(',')
        .map(|p| parse_duration(name, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if list.windows(2).any(|w| w[0] >= w[1]) {
        bail!("{name} must be increasing, got {s:?}");
    }
    Ok(list)
}

/// An origin as browsers send it: `scheme://host[:port]`, no path, no trailing slash, only
/// characters a header value may hold (or the literal `null`).
fn valid_origin(s: &str) -> bool {
    if s == "null" {
        return true;
    }
    let Some((scheme, rest)) = s.split_once("://") else {
        return false;
    };
    !scheme.is_empty()
        && scheme
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'+' || b == b'-' || b == b'.')
        && !rest.is_empty()
        && rest
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._:[]".contains(&b))
}

impl NodeConfig {
    /// How often the engine ticks: the batching period over its phases.
    pub fn engine_tick(&self) -> Duration {
        self.tick / self.tick_phases.max(1)
    }

    /// How long a long-poll request is held: `--lp-hold`, but at most two thirds of the
    /// heartbeat timeout. A poll is a sign of life when it starts and when it ends, so a
    /// client that keeps polling leaves gaps of one hold plus its round trip: the last third
    /// is the margin for that round trip (25 s of 45 s by default).
    pub fn lp_hold_effective(&self) -> Duration {
        self.lp_hold.min(self.heartbeat_timeout * 2 / 3)
    }
}

/// Parses `200ms`, `5s`, `1m`, `1h`.
pub fn parse_duration(what: &str, s: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(s.trim())
        .with_context(|| format!("{what}: {s:?} is not a duration like 200ms, 5s or 1m"))?;
    if d.is_zero() {
        bail!("{what} must be more than zero");
    }
    Ok(d)
}

impl NodeConfig {
    /// Resolves flags (and their environment variables, which clap has already applied) over
    /// the optional file over the defaults, and checks the result.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let cfg = Self::merge(args.clone(), file)?;
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            bail!("tls-cert and tls-key go together");
        }
        if cfg.max_text == 0 {
            bail!("max-text must be at least 1");
        }
        if !(1..=20).contains(&cfg.tick_phases) {
            bail!("tick-phases must be 1 to 20, got {}", cfg.tick_phases);
        }
        if cfg.engine_tick() < Duration::from_millis(1) {
            bail!("tick / tick-phases must be at least 1ms");
        }
        if cfg.max_group < 2 {
            bail!("max-group must be at least 2");
        }
        if cfg.chat_max_in_flight == 0 {
            bail!("chat-max-in-flight must be at least 1");
        }
        if let Some(id) = &cfg.node_id
            && !presence_cluster::valid_node_id(id)
        {
            bail!("node-id must be 1-64 characters of A-Z a-z 0-9 . _ -, got {id:?}");
        }
        if let Some(origin) = &cfg.cors_origin
            && !valid_origin(origin)
        {
            bail!(
                "cors-origin must be an origin like https://app.example.com[:port], got {origin:?}"
            );
        }
        cfg.check_cluster()?;
        Ok(cfg)
    }

    /// Whether the node joins a cluster.
    pub fn is_cluster(&self) -> bool {
        self.cluster_etcd.is_some()
    }

    /// The cluster flags go together: a cluster needs its shared store and the secrets every
    /// node must share (a token minted for one node works on all; the admin key too).
    fn check_cluster(&self) -> anyhow::Result<()> {
        if let Some(url) = &self.store
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://"))
        {
            bail!("store must be a postgres:// URL");
        }
        match (self.is_cluster(), self.store.is_some()) {
            (true, false) => bail!("cluster-etcd needs --store postgres://…"),
            (false, true) => {
                bail!("store postgres://… is for a cluster: it needs --cluster-etcd")
            }
            _ => {}
        }
        if self.is_cluster() {
            if self.secret.is_none() {
                bail!("cluster-etcd needs --secret: every node must verify the same tokens");
            }
            if self.admin_key.is_none() {
                bail!("cluster-etcd needs --admin-key: every node answers the admin API");
            }
            if !self.cluster_prefix.starts_with('/') {
                bail!("cluster-prefix must start with /");
            }
        }
        Ok(())
    }

    /// The core engine's configuration.
    pub fn engine_config(&self) -> anyhow::Result<presence_core::Config> {
        let ms = |d: Duration| u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        let cfg = presence_core::Config {
            idle_thresholds_ms: self.idle_thresholds.iter().map(|&d| ms(d)).collect(),
            grace_ms: ms(self.grace),
            heartbeat_timeout_ms: ms(self.heartbeat_timeout),
            threads: std::thread::available_parallelism().map_or(2, |n| n.get()),
            max_friends: self.max_friends,
            max_sessions_per_user: self.max_sessions_per_user,
            cluster: self.is_cluster(),
            ..presence_core::Config::default()
        };
        cfg.validate().context("invalid presence settings")?;
        Ok(cfg)
    }
}

fn read_file(path: &Path) -> anyhow::Result<FileConfig> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading config file {}", path.display()))?;
    toml::from_str(&text).with_context(|| format!("parsing config file {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let c = NodeConfig::resolve(&ServeArgs::default()).expect("defaults");
        assert_eq!(c.ws_listen.to_string(), "127.0.0.1:7400");
        assert_eq!(c.quic_listen.to_string(), "127.0.0.1:7401");
        assert_eq!(c.admin_listen.to_string(), "127.0.0.1:7402");
        assert_eq!(c.tick, Duration::from_millis(200));
        assert_eq!(
            c.idle_thresholds,
            [60, 120, 300, 600].map(Duration::from_secs).to_vec()
        );
        assert_eq!(c.grace, Duration::from_secs(5));
        assert_eq!(c.heartbeat_timeout, Duration::from_secs(45));
        assert_eq!(c.max_text, 4000);
        assert_eq!(c.max_group, 1000);
        assert_eq!(c.chat_max_in_flight, 20_000);
        assert_eq!(c.chat_store, chat_relay::StoreKind::Fjall);
        assert_eq!(c.chat_retention, None);
        assert_eq!(c.node_id, None);
        assert_eq!(c.max_friends, 5000);
        assert_eq!(c.max_sessions_per_user, 16);
        assert_eq!(c.log_format, LogFormat::Text);
        assert_eq!(c.data_dir, PathBuf::from("./data"));
        assert_eq!((c.secret, c.admin_key, c.webhook_url), (None, None, None));
        assert_eq!((c.tls_cert, c.tls_key), (None, None));
        assert_eq!((c.cluster_etcd, c.store), (None, None));
        assert_eq!(c.peer_listen.to_string(), "127.0.0.1:7403");
        assert_eq!(c.lease_ttl, Duration::from_secs(5));
        assert_eq!(c.cluster_prefix, "/presence");
        assert_eq!(
            c.demo_dir, None,
            "no demo and no dev tokens unless asked for"
        );
    }

    #[test]
    fn long_poll_settings() {
        let c = parse(&[]).expect("defaults");
        assert_eq!(c.lp_hold, Duration::from_secs(25));
        assert_eq!(
            c.lp_hold_effective(),
            Duration::from_secs(25),
            "the spec's 25 s hold fits the default 45 s heartbeat timeout as it is"
        );
        assert_eq!(c.cors_origin, None);
        let c = parse(&[
            "--heartbeat-timeout=3s",
            "--cors-origin=https://app.example.com:8443",
        ])
        .expect("short");
        assert_eq!(c.lp_hold_effective(), Duration::from_secs(2));
        assert_eq!(
            c.cors_origin.as_deref(),
            Some("https://app.example.com:8443")
        );
        for bad in [
            "app.example.com",
            "https://app.example.com/",
            "https://",
            "http://a b",
        ] {
            let e = parse(&[&format!("--cors-origin={bad}")]).expect_err(bad);
            assert!(e.to_string().contains("cors-origin"), "{e}");
        }
        assert!(parse(&["--cors-origin=null"]).is_ok());
    }

    #[test]
    fn cluster_flags_go_together() {
        let pg = "--store=postgres://u@127.0.0.1/db";
        let c = parse(&[
            "--cluster-etcd=http://127.0.0.1:2379, http://127.0.0.1:2380",
            pg,
            "--secret=s",
            "--admin-key=k",
        ])
        .expect("a cluster node");
        assert!(c.is_cluster());
        assert_eq!(
            c.cluster_etcd.as_deref(),
            Some(
                &[
                    "http://127.0.0.1:2379".to_owned(),
                    "http://127.0.0.1:2380".to_owned()
                ][..]
            )
        );
        assert!(c.engine_config().expect("engine").cluster);
        for (argv, message) in [
            (
                &["--cluster-etcd=http://e:2379"][..],
                "cluster-etcd needs --store",
            ),
            (&[pg][..], "it needs --cluster-etcd"),
            (
                &["--cluster-etcd=http://e:2379", pg, "--admin-key=k"][..],
                "cluster-etcd needs --secret",
            ),
            (
                &["--cluster-etcd=http://e:2379", pg, "--secret=s"][..],
                "cluster-etcd needs --admin-key",
            ),
            (
                &["--cluster-etcd=http://e:2379", "--store=mysql://x"][..],
                "store must be a postgres:// URL",
            ),
            (&["--cluster-etcd=a,,b"][..], "cluster-etcd: empty item"),
        ] {
            let err = parse(argv).expect_err(message);
            assert!(format!("{err:#}").contains(message), "{err:#}");
        }
    }

    /// `serve`'s flags as clap parses them, environment variables included.
    #[derive(clap::Parser)]
    struct Serve {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn parse(argv: &[&str]) -> anyhow::Result<NodeConfig> {
        use clap::Parser;
        let args = Serve::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))?;
        NodeConfig::resolve(&args.args)
    }

    /// A file with `text` as its content, in a folder kept while the guard lives.
    fn file(text: &str) -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, text).expect("write");
        (dir, path)
    }

    #[test]
    fn every_setting_is_a_flag_with_its_environment_variable() {
        use clap::CommandFactory;
        let cmd = Serve::command();
        let args: Vec<_> = cmd.get_arguments().collect();
        assert_eq!(args.len(), SETTINGS.len());
        for (arg, setting) in args.iter().zip(SETTINGS) {
            let field = arg.get_id().as_str();
            assert_eq!(arg.get_long(), Some(setting.name), "{field}");
            assert_eq!(setting.name, field.replace('_', "-"), "{field}");
            let env = format!("PRESENCE_{}", field.to_uppercase());
            assert_eq!(arg.get_env(), Some(std::ffi::OsStr::new(&env)), "{field}");
            assert_eq!(setting.env, env, "{field}");
        }
    }

    #[test]
    fn text_as_from_a_flag_or_the_environment_is_read() {
        // clap gives an environment variable's text to its flag: the same parse follows.
        let c = parse(&[
            "--max-group=3",
            "--idle-thresholds=30s,90s",
            "--chat-store=redb",
            "--chat-retention=30d",
            "--log-format=json",
            "--admin-listen=127.0.0.1:0",
            "--secret=s3cret",
        ])
        .expect("resolve");
        assert_eq!(c.max_group, 3);
        assert_eq!(
            c.idle_thresholds,
            [30, 90].map(Duration::from_secs).to_vec()
        );
        assert_eq!(c.chat_store, chat_relay::StoreKind::Redb);
        assert_eq!(c.chat_retention, Some(Duration::from_secs(30 * 24 * 3600)));
        assert_eq!(c.log_format, LogFormat::Json);
        assert_eq!(c.admin_listen.port(), 0);
        assert_eq!(c.secret.as_deref(), Some("s3cret"));
        assert!(parse(&["--max-group=many"]).is_err());
        assert!(parse(&["--log-format=xml"]).is_err());
    }

    #[test]
    fn toml_keys_in_kebab_or_snake_case() {
        for text in [
            "max-group = 3\nheartbeat-timeout = \"9s\"\nchat-store = \"redb\"\n",
            "max_group = 3\nheartbeat_timeout = \"9s\"\nchat_store = \"redb\"\n",
        ] {
            let (_dir, path) = file(text);
            let c = parse(&["--config", path.to_str().expect("utf-8 path")]).expect(text);
            assert_eq!(c.max_group, 3, "{text}");
            assert_eq!(c.heartbeat_timeout, Duration::from_secs(9), "{text}");
            assert_eq!(c.chat_store, chat_relay::StoreKind::Redb, "{text}");
        }
    }

    #[test]
    fn flags_win_over_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("node.toml");
        std::fs::write(&path, "tick = \"1s\"\ngrace = \"9s\"\n\"max-text\" = 10\n").expect("write");
        let args = ServeArgs {
            config: Some(path),
            tick: Some("50ms".into()),
            ..ServeArgs::default()
        };
        let c = NodeConfig::resolve(&args).expect("resolve");
        assert_eq!(c.tick, Duration::from_millis(50));
        assert_eq!(c.grace, Duration::from_secs(9));
        assert_eq!(c.max_text, 10);
    }

    #[test]
    fn bad_values_are_clear_errors() {
        for (argv, message) in [
            (
                &["--tick", "soon"][..],
                "tick: \"soon\" is not a duration like 200ms, 5s or 1m",
            ),
            (
                &["--idle-thresholds", "5m,1m"],
                "idle-thresholds must be increasing, got \"5m,1m\"",
            ),
            (&["--grace", "0s"], "grace must be more than zero"),
            (&["--tls-cert", "c.pem"], "tls-cert and tls-key go together"),
            (&["--max-text", "0"], "max-text must be at least 1"),
            (&["--max-group", "1"], "max-group must be at least 2"),
            (
                &["--chat-max-in-flight", "0"],
                "chat-max-in-flight must be at least 1",
            ),
            (
                &["--node-id", "n/1"],
                "node-id must be 1-64 characters of A-Z a-z 0-9 . _ -, got \"n/1\"",
            ),
            (
                &["--chat-store", "sqlite"],
                "chat-store: unknown chat store",
            ),
        ] {
            let err = parse(argv).expect_err(message);
            assert!(format!("{err:#}").contains(message), "{err:#}");
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("bad.toml");
        std::fs::write(&path, "tik = \"1s\"\n").expect("write");
        let err = NodeConfig::resolve(&ServeArgs {
            config: Some(path),
            ..ServeArgs::default()
        })
        .expect_err("unknown key");
        assert!(format!("{err:#}").contains("tik"), "{err:#}");
    }
}
