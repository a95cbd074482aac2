//! `presence-node serve` runs a node; `presence-node token` mints a client token;
//! `presence-node openapi` prints the admin API's OpenAPI document (docs/openapi.json).

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context;
use clap::{Parser, Subcommand};
use presence_node::config::{LogFormat, NodeConfig, SETTING, ServeArgs, parse_duration};
use presence_node::{node, token};

#[derive(Parser)]
#[command(
    name = "presence-node",
    version,
    about = "Presence server: who among my friends is online, idle, or offline"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a node (every flag is also PRESENCE_<NAME> and a key of --config).
    Serve(Box<ServeArgs>),
    /// Mint a client token from the data folder's secret (for development and scripts).
    Token {
        #[arg(long)]
        user: String,
        #[arg(long)]
        device: Option<String>,
        /// Lifetime, like 1h or 30m.
        #[arg(long, default_value = "1h")]
        ttl: String,
        // The same flags as `serve`'s (without --secret: the secret in the data dir).
        #[arg(long = SETTING.data_dir.name, env = SETTING.data_dir.env,
            default_value = SETTING.data_dir.default, help = SETTING.data_dir.help)]
        data_dir: PathBuf,
        #[arg(long = SETTING.secret.name, env = SETTING.secret.env,
            hide_env_values = SETTING.secret.hide_env_value, help = SETTING.secret.help)]
        secret: Option<String>,
    },
    /// Print the admin API's OpenAPI document, as `GET /v1/openapi.json` serves it
    /// (`presence-node openapi > docs/openapi.json`).
    Openapi,
}

fn init_logs(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    match format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

/// `--features mimalloc`: see the feature's note in Cargo.toml.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Token {
            user,
            device,
            ttl,
            data_dir,
            secret,
        } => mint(&user, device, &ttl, &data_dir, secret.as_deref()),
        Command::Openapi => presence_node::openapi::json()
            .map(|doc| print!("{doc}"))
            .context("serializing the OpenAPI document"),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("presence-node: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let cfg = NodeConfig::resolve(&args)?;
    init_logs(cfg.log_format);
    let _ = rustls::crypto::ring::default_provider().install_default();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("presence-io")
        .build()
        .context("starting the runtime")?;
    rt.block_on(presence_node::server::serve(cfg))
}

fn mint(
    user: &str,
    device: Option<String>,
    ttl: &str,
    data_dir: &std::path::Path,
    secret: Option<&str>,
) -> anyhow::Result<()> {
    presence_core::Interner::check(user).map_err(|e| anyhow::anyhow!("--user: {e}"))?;
    let ttl = parse_duration("ttl", ttl)?;
    let secret = match secret {
        Some(s) => s.to_owned(),
        None => {
            let path = data_dir.join("secret");
            std::fs::read_to_string(&path)
                .with_context(|| {
                    format!(
                        "reading {} (start the node once, or pass --secret)",
                        path.display()
                    )
                })?
                .trim()
                .to_owned()
        }
    };
    let claims = token::Claims {
        sub: user.to_owned(),
        exp: node::now_ms() / 1000 + ttl.as_secs().max(1),
        dev: device,
    };
    println!("{}", token::mint(secret.as_bytes(), &claims));
    Ok(())
}
