//! One connection with its handshake: [`Client::connect`] opens the transport, says `hello`
//! and waits for the `welcome` or a refusal.

use std::time::Duration;

use presence_wire::{ClientMessage, ServerMessage, Welcome};

use crate::error::ClientError;
use crate::transport::{Connection, Transport, TransportOptions};

/// What a connection says in its `hello`, where to, and how long to wait.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnectOptions {
    pub transport: Transport,
    /// The token the app's backend minted (JWT HS256 with `sub`, `exp`, optional `dev`).
    pub token: String,
    /// This device's id; `None`: the token's `dev` claim, or a fresh id from the node.
    pub device: Option<String>,
    /// Resume the inbox after this `seq` (entries after it are sent after the welcome).
    pub after: Option<u64>,
    /// The whole handshake (connect, hello, welcome) takes at most this long (default 10 s,
    /// the node's own hello timeout).
    pub hello_timeout: Duration,
    pub transport_options: TransportOptions,
}

impl ConnectOptions {
    pub fn new(transport: Transport, token: impl Into<String>) -> ConnectOptions {
        ConnectOptions {
            transport,
            token: token.into(),
            device: None,
            after: None,
            hello_timeout: Duration::from_secs(10),
            transport_options: TransportOptions::default(),
        }
    }

    /// With this device id.
    pub fn device(mut self, device: impl Into<String>) -> ConnectOptions {
        self.device = Some(device.into());
        self
    }

    /// Resuming after this inbox `seq`.
    pub fn after(mut self, seq: u64) -> ConnectOptions {
        self.after = Some(seq);
        self
    }

    fn hello(&self) -> ClientMessage {
        ClientMessage::Hello {
            token: self.token.clone(),
            device: self.device.clone(),
            after: self.after,
        }
    }
}

/// Connects to nodes. For a connection that stays up across drops, restarts and moves, see
/// [`Session`](crate::Session).
#[derive(Debug, Clone, Copy)]
pub struct Client;

impl Client {
    /// Opens the transport, says `hello`, and waits for the `welcome`. A refusal comes back
    /// typed: [`ClientError::Refused`] with the node's code (`unauthorized` for a bad token),
    /// or [`ClientError::Moved`] with the owner's addresses.
    pub async fn connect(
        opts: &ConnectOptions,
    ) -> Result<(Connection, Welcome<'static>), ClientError> {
        let handshake = async {
            let mut conn = Connection::open(&opts.transport, &opts.transport_options).await?;
            conn.send(&opts.hello()).await?;
            loop {
                match conn.recv().await? {
                    ServerMessage::Welcome(w) => return Ok((conn, w)),
                    ServerMessage::Error(e) => return Err(ClientError::from(&e)),
                    // A newer node may say something first that this version does not know.
                    ServerMessage::Unknown => continue,
                    other => {
                        return Err(ClientError::Protocol(format!(
                            "expected a welcome, got {other:?}"
                        )));
                    }
                }
            }
        };
        tokio::time::timeout(opts.hello_timeout, handshake)
            .await
            .map_err(|_| ClientError::Timeout("no welcome in time"))?
    }

    /// Opens the transport without saying anything (for handshakes of your own, and for tests
    /// of what a node does with odd clients).
    pub async fn open(
        transport: &Transport,
        opts: &TransportOptions,
    ) -> Result<Connection, ClientError> {
        Connection::open(transport, opts).await
    }
}
