//! A bot against a running node: connects (and stays connected), says it is active, sends a
//! chat message, and prints its friends' presence changes and its inbox.
//!
//! ```sh
//! presence-node serve --data-dir ./data &
//! TOKEN=$(presence-node token --data-dir ./data --user bot)
//! cargo run -p presence-client --example bot -- --ws 127.0.0.1:7400 --token "$TOKEN" \
//!     --to alice --text "hello from a bot"
//! # or over QUIC with the node's dev certificate:
//! cargo run -p presence-client --example bot -- --quic 127.0.0.1:7401 \
//!     --cert ./data/tls/cert.pem --token "$TOKEN"
//! ```

use std::process::ExitCode;

use presence_client::{
    ClientMessage, ConnectOptions, Event, QuicCert, ServerMessage, Session, SessionOptions, State,
    Transport,
};

struct Args {
    transport: Transport,
    token: String,
    device: String,
    to: Option<String>,
    text: String,
}

const USAGE: &str = "usage: bot (--ws URL | --quic ADDR [--cert PEM | --insecure]) --token T \
                     [--device D] [--to USER] [--text TEXT]";

fn args() -> Result<Args, String> {
    let mut ws = None;
    let mut quic = None;
    let mut cert = None;
    let mut insecure = false;
    let mut token = None;
    let mut device = "bot".to_owned();
    let mut to = None;
    let mut text = "hello from a bot".to_owned();
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut value = || it.next().ok_or(format!("{flag} needs a value"));
        match flag.as_str() {
            "--ws" => ws = Some(value()?),
            "--quic" => quic = Some(value()?),
            "--cert" => cert = Some(value()?),
            "--insecure" => insecure = true,
            "--token" => token = Some(value()?),
            "--device" => device = value()?,
            "--to" => to = Some(value()?),
            "--text" => text = value()?,
            "-h" | "--help" => return Err(USAGE.into()),
            other => return Err(format!("unknown argument {other}\n{USAGE}")),
        }
    }
    let transport = match (ws, quic) {
        (Some(url), None) => Transport::ws(url),
        (None, Some(addr)) => {
            let cert = match (cert, insecure) {
                (Some(path), _) => {
                    QuicCert::pem_file(&path).map_err(|e| format!("reading {path}: {e}"))?
                }
                (None, true) => QuicCert::DangerousAcceptAny,
                (None, false) => return Err(format!("--quic needs --cert or --insecure\n{USAGE}")),
            };
            Transport::quic(addr, "localhost", cert)
        }
        _ => return Err(format!("give one of --ws and --quic\n{USAGE}")),
    };
    Ok(Args {
        transport,
        token: token.ok_or(format!("--token is required\n{USAGE}"))?,
        device,
        to,
        text,
    })
}

#[tokio::main]
async fn main() -> ExitCode {
    let args = match args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let connect = ConnectOptions::new(args.transport, args.token).device(args.device);
    let mut session = Session::start(SessionOptions::new(connect));
    let mut greeted = false;
    while let Some(event) = session.next_event().await {
        match event {
            Event::Connected(w) => {
                println!(
                    "connected as {} ({}), {} friends:",
                    w.user,
                    w.device,
                    w.friends.len()
                );
                for f in &w.friends {
                    println!("  {} {}", f.user, state(f.state));
                }
                if let Err(e) = session.send(ClientMessage::Activity {}).await {
                    eprintln!("activity: {e}");
                }
                if let (Some(to), false) = (&args.to, greeted) {
                    // The same id on a retry: the node stores the message once.
                    let send = ClientMessage::Send {
                        id: format!("bot-greeting-{}", w.device),
                        to: Some(to.clone()),
                        group: None,
                        text: args.text.clone(),
                    };
                    match session.send(send).await {
                        Ok(()) => greeted = true,
                        Err(e) => eprintln!("send: {e}"),
                    }
                }
            }
            Event::Message(ServerMessage::Presence(p)) => {
                for c in p.changes {
                    if c.removed == Some(true) {
                        println!("{} is no longer a friend", c.user);
                    } else {
                        println!("{} is now {}", c.user, state(c.state));
                    }
                }
            }
            Event::Message(ServerMessage::Inbox(i)) => {
                println!(
                    "#{} {:?} from {}: {}",
                    i.seq,
                    i.kind,
                    i.from,
                    i.text.as_deref().unwrap_or("")
                );
            }
            Event::Message(ServerMessage::Sent(s)) => println!("sent {} as {}", s.id, s.msg_id),
            Event::Message(ServerMessage::Error(e)) => {
                eprintln!("error {}: {}", e.code.as_str(), e.message);
            }
            Event::Message(_) => {}
            Event::Disconnected { reason, retry_in } => match retry_in {
                Some(d) => eprintln!("disconnected: {reason}; retrying in {d:?}"),
                None => {
                    eprintln!("disconnected: {reason}; not retrying");
                    return ExitCode::FAILURE;
                }
            },
        }
    }
    ExitCode::SUCCESS
}

fn state(s: Option<State>) -> &'static str {
    match s {
        Some(State::Online) => "online",
        Some(State::Idle) => "idle",
        Some(State::Offline) | None => "offline",
    }
}
