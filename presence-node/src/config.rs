//! The operators' contract: `presence-node serve` flags, each also an environment variable
//! `PRESENCE_<NAME>` and a key of a `--config` TOML file. Flags win over the environment, the
//! environment over the file, the file over the defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, ValueEnum};
use serde::Deserialize;

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// `presence-node serve` flags.
#[derive(Debug, Clone, Default, Args)]
pub struct ServeArgs {
    /// TOML file with any of these settings (keys as the flags, in kebab or snake case).
    #[arg(long, env = "PRESENCE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Everything durable: graph, groups, generated secret, key, dev certificate [default: ./data].
    #[arg(long, env = "PRESENCE_DATA_DIR")]
    pub data_dir: Option<PathBuf>,
    /// WebSocket clients [default: 127.0.0.1:7400].
    #[arg(long, env = "PRESENCE_WS_LISTEN")]
    pub ws_listen: Option<SocketAddr>,
    /// QUIC clients [default: 127.0.0.1:7401].
    #[arg(long, env = "PRESENCE_QUIC_LISTEN")]
    pub quic_listen: Option<SocketAddr>,
    /// Admin HTTP API, health, metrics [default: 127.0.0.1:7402].
    #[arg(long, env = "PRESENCE_ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// HS256 secret for client tokens [default: generated into the data dir].
    #[arg(long, env = "PRESENCE_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    /// Bearer key for the admin API [default: generated into the data dir].
    #[arg(long, env = "PRESENCE_ADMIN_KEY", hide_env_values = true)]
    pub admin_key: Option<String>,
    /// Presence batching period [default: 200ms].
    #[arg(long, env = "PRESENCE_TICK")]
    pub tick: Option<String>,
    /// Idle levels, increasing [default: 1m,2m,5m,10m].
    #[arg(long, env = "PRESENCE_IDLE_THRESHOLDS")]
    pub idle_thresholds: Option<String>,
    /// A disconnect becomes offline after this [default: 5s].
    #[arg(long, env = "PRESENCE_GRACE")]
    pub grace: Option<String>,
    /// A silent session is expired after this [default: 45s].
    #[arg(long, env = "PRESENCE_HEARTBEAT_TIMEOUT")]
    pub heartbeat_timeout: Option<String>,
    /// Where `message.undelivered` events go.
    #[arg(long, env = "PRESENCE_WEBHOOK_URL")]
    pub webhook_url: Option<String>,
    /// Characters per chat message [default: 4000].
    #[arg(long, env = "PRESENCE_MAX_TEXT")]
    pub max_text: Option<usize>,
    /// Members of a group a message can be sent to [default: 1000].
    #[arg(long, env = "PRESENCE_MAX_GROUP")]
    pub max_group: Option<usize>,
    /// Chat sends accepted but not yet on disk, at most; more are refused as rate_limited
    /// until the disk catches up [default: 20000].
    #[arg(long, env = "PRESENCE_CHAT_MAX_IN_FLIGHT")]
    pub chat_max_in_flight: Option<usize>,
    /// Embedded chat store in the data dir: fjall or redb [default: fjall].
    #[arg(long, env = "PRESENCE_CHAT_STORE")]
    pub chat_store: Option<String>,
    /// Chat entries older than this are trimmed, like 30d [default: kept forever].
    #[arg(long, env = "PRESENCE_CHAT_RETENTION")]
    pub chat_retention: Option<String>,
    /// This node's number (0-1023) in message ids [default: 0].
    #[arg(long, env = "PRESENCE_NODE_ID")]
    pub node_id: Option<u16>,
    /// TLS certificate chain (PEM) for QUIC [default: a dev certificate in the data dir].
    #[arg(long, env = "PRESENCE_TLS_CERT")]
    pub tls_cert: Option<PathBuf>,
    /// TLS private key (PEM) for QUIC.
    #[arg(long, env = "PRESENCE_TLS_KEY")]
    pub tls_key: Option<PathBuf>,
    /// Most friends per user [default: 5000].
    #[arg(long, env = "PRESENCE_MAX_FRIENDS")]
    pub max_friends: Option<u32>,
    /// Most sessions (devices) per user [default: 16].
    #[arg(long, env = "PRESENCE_MAX_SESSIONS_PER_USER")]
    pub max_sessions_per_user: Option<u32>,
    /// Log format [default: text].
    #[arg(long, env = "PRESENCE_LOG_FORMAT")]
    pub log_format: Option<LogFormat>,
}

/// The same settings as read from a TOML file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    #[serde(alias = "data-dir")]
    data_dir: Option<PathBuf>,
    #[serde(alias = "ws-listen")]
    ws_listen: Option<SocketAddr>,
    #[serde(alias = "quic-listen")]
    quic_listen: Option<SocketAddr>,
    #[serde(alias = "admin-listen")]
    admin_listen: Option<SocketAddr>,
    secret: Option<String>,
    #[serde(alias = "admin-key")]
    admin_key: Option<String>,
    tick: Option<String>,
    #[serde(alias = "idle-thresholds")]
    idle_thresholds: Option<String>,
    grace: Option<String>,
    #[serde(alias = "heartbeat-timeout")]
    heartbeat_timeout: Option<String>,
    #[serde(alias = "webhook-url")]
    webhook_url: Option<String>,
    #[serde(alias = "max-text")]
    max_text: Option<usize>,
    #[serde(alias = "max-group")]
    max_group: Option<usize>,
    #[serde(alias = "chat-max-in-flight")]
    chat_max_in_flight: Option<usize>,
    #[serde(alias = "chat-store")]
    chat_store: Option<String>,
    #[serde(alias = "chat-retention")]
    chat_retention: Option<String>,
    #[serde(alias = "node-id")]
    node_id: Option<u16>,
    #[serde(alias = "tls-cert")]
    tls_cert: Option<PathBuf>,
    #[serde(alias = "tls-key")]
    tls_key: Option<PathBuf>,
    #[serde(alias = "max-friends")]
    max_friends: Option<u32>,
    #[serde(alias = "max-sessions-per-user")]
    max_sessions_per_user: Option<u32>,
    #[serde(alias = "log-format")]
    log_format: Option<LogFormat>,
}

/// Resolved settings of a node.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    pub data_dir: PathBuf,
    pub ws_listen: SocketAddr,
    pub quic_listen: SocketAddr,
    pub admin_listen: SocketAddr,
    pub secret: Option<String>,
    pub admin_key: Option<String>,
    pub tick: Duration,
    pub idle_thresholds: Vec<Duration>,
    pub grace: Duration,
    pub heartbeat_timeout: Duration,
    pub webhook_url: Option<String>,
    pub max_text: usize,
    pub max_group: usize,
    pub chat_max_in_flight: usize,
    pub chat_store: chat_relay::StoreKind,
    pub chat_retention: Option<Duration>,
    pub node_id: u16,
    pub tls_cert: Option<PathBuf>,
    pub tls_key: Option<PathBuf>,
    pub max_friends: u32,
    pub max_sessions_per_user: u32,
    pub log_format: LogFormat,
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

fn parse_list(s: &str) -> anyhow::Result<Vec<Duration>> {
    let list = s
        .split(',')
        .map(|p| parse_duration("idle-thresholds", p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    if list.windows(2).any(|w| w[0] >= w[1]) {
        bail!("idle-thresholds must be increasing, got {s:?}");
    }
    Ok(list)
}

fn default_addr(s: &str) -> SocketAddr {
    s.parse().unwrap_or(SocketAddr::from(([127, 0, 0, 1], 0)))
}

impl NodeConfig {
    /// Resolves flags (and their environment variables, which clap has already applied) over
    /// the optional file over the defaults.
    pub fn resolve(args: &ServeArgs) -> anyhow::Result<Self> {
        let file = match &args.config {
            Some(path) => read_file(path)?,
            None => FileConfig::default(),
        };
        let tick = args
            .tick
            .clone()
            .or(file.tick)
            .unwrap_or_else(|| "200ms".into());
        let idle = args
            .idle_thresholds
            .clone()
            .or(file.idle_thresholds)
            .unwrap_or_else(|| "1m,2m,5m,10m".into());
        let grace = args
            .grace
            .clone()
            .or(file.grace)
            .unwrap_or_else(|| "5s".into());
        let hb = args
            .heartbeat_timeout
            .clone()
            .or(file.heartbeat_timeout)
            .unwrap_or_else(|| "45s".into());
        let cfg = NodeConfig {
            data_dir: args
                .data_dir
                .clone()
                .or(file.data_dir)
                .unwrap_or_else(|| PathBuf::from("./data")),
            ws_listen: args
                .ws_listen
                .or(file.ws_listen)
                .unwrap_or_else(|| default_addr("127.0.0.1:7400")),
            quic_listen: args
                .quic_listen
                .or(file.quic_listen)
                .unwrap_or_else(|| default_addr("127.0.0.1:7401")),
            admin_listen: args
                .admin_listen
                .or(file.admin_listen)
                .unwrap_or_else(|| default_addr("127.0.0.1:7402")),
            secret: args.secret.clone().or(file.secret),
            admin_key: args.admin_key.clone().or(file.admin_key),
            tick: parse_duration("tick", &tick)?,
            idle_thresholds: parse_list(&idle)?,
            grace: parse_duration("grace", &grace)?,
            heartbeat_timeout: parse_duration("heartbeat-timeout", &hb)?,
            webhook_url: args.webhook_url.clone().or(file.webhook_url),
            max_text: args.max_text.or(file.max_text).unwrap_or(4000),
            max_group: args.max_group.or(file.max_group).unwrap_or(1000),
            chat_max_in_flight: args
                .chat_max_in_flight
                .or(file.chat_max_in_flight)
                .unwrap_or(20_000),
            chat_store: match args.chat_store.clone().or(file.chat_store) {
                Some(s) => s.parse().map_err(|e| anyhow::anyhow!("chat-store: {e}"))?,
                None => chat_relay::StoreKind::default(),
            },
            chat_retention: match args.chat_retention.clone().or(file.chat_retention) {
                Some(s) => Some(parse_duration("chat-retention", &s)?),
                None => None,
            },
            node_id: args.node_id.or(file.node_id).unwrap_or(0),
            tls_cert: args.tls_cert.clone().or(file.tls_cert),
            tls_key: args.tls_key.clone().or(file.tls_key),
            max_friends: args.max_friends.or(file.max_friends).unwrap_or(5000),
            max_sessions_per_user: args
                .max_sessions_per_user
                .or(file.max_sessions_per_user)
                .unwrap_or(16),
            log_format: args.log_format.or(file.log_format).unwrap_or_default(),
        };
        if cfg.tls_cert.is_some() != cfg.tls_key.is_some() {
            bail!("tls-cert and tls-key go together");
        }
        if cfg.max_text == 0 {
            bail!("max-text must be at least 1");
        }
        if cfg.max_group < 2 {
            bail!("max-group must be at least 2");
        }
        if cfg.chat_max_in_flight == 0 {
            bail!("chat-max-in-flight must be at least 1");
        }
        if cfg.node_id > 1023 {
            bail!("node-id must be 0 to 1023, got {}", cfg.node_id);
        }
        Ok(cfg)
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
        assert_eq!(c.data_dir, PathBuf::from("./data"));
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
        for args in [
            ServeArgs {
                tick: Some("soon".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                idle_thresholds: Some("5m,1m".into()),
                ..ServeArgs::default()
            },
            ServeArgs {
                grace: Some("0s".into()),
                ..ServeArgs::default()
            },
        ] {
            assert!(NodeConfig::resolve(&args).is_err());
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
