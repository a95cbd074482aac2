//! One authenticated QUIC connection between two nodes (ALPN `presence-peer/1`).
//!
//! Each node makes a fresh self-signed certificate at start ([`Identity`]) and publishes it in
//! its etcd member record; the node that dials checks the other's certificate against exactly
//! that one, so it talks to the node etcd names. Then both send a [`PeerFrame::Hello`] whose
//! proof of the cluster secret is bound to this TLS session ([`crate::auth`]); the side that
//! accepted learns who dialed only from a valid proof. Frames are rkyv archives, each
//! preceded by its 4-byte big-endian length, on one bidirectional stream.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer, pem::PemObject};
use tokio_util::codec::{FramedRead, LengthDelimitedCodec};

use crate::ALPN;
use crate::auth::{self, EXPORTER_LABEL};
use crate::frame::{FrameError, MAX_PEER_FRAME, PeerFrame};

/// The name in every node's peer certificate (dialers check the certificate itself, pinned
/// from etcd, not a DNS name).
pub const SERVER_NAME: &str = "presence-peer";

/// How long the handshake and the hellos may take.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a link could not be made or went down.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    #[error("peer link setup: {0}")]
    Setup(String),
    #[error("peer {addr}: {source}")]
    Connect {
        addr: SocketAddr,
        source: quinn::ConnectError,
    },
    #[error("peer connection: {0}")]
    Connection(#[from] quinn::ConnectionError),
    #[error("peer stream: {0}")]
    Io(#[from] std::io::Error),
    #[error("peer did not say hello within {HANDSHAKE_TIMEOUT:?}")]
    Timeout,
    #[error("peer refused: {0}")]
    Refused(String),
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// This node's peer certificate and key, made at start.
pub struct Identity {
    cert: CertificateDer<'static>,
    key: PrivatePkcs8KeyDer<'static>,
    pem: String,
}

impl Identity {
    /// A fresh self-signed certificate for [`SERVER_NAME`].
    pub fn generate() -> Result<Identity, LinkError> {
        let made = rcgen::generate_simple_self_signed(vec![SERVER_NAME.to_owned()])
            .map_err(|e| LinkError::Setup(format!("peer certificate: {e}")))?;
        Ok(Identity {
            cert: made.cert.der().clone(),
            key: PrivatePkcs8KeyDer::from(made.signing_key.serialize_der()),
            pem: made.cert.pem(),
        })
    }

    /// The certificate as PEM, for this node's etcd record.
    pub fn pem(&self) -> &str {
        &self.pem
    }
}

fn transport() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.max_concurrent_bidi_streams(1u32.into())
        .max_concurrent_uni_streams(0u32.into())
        .keep_alive_interval(Some(Duration::from_secs(1)))
        .max_idle_timeout(Some(quinn::IdleTimeout::from(quinn::VarInt::from_u32(
            10_000,
        ))));
    Arc::new(t)
}

/// A QUIC endpoint that accepts peers on `addr` and dials them from the same socket.
pub fn endpoint(addr: SocketAddr, id: &Identity) -> Result<quinn::Endpoint, LinkError> {
    let setup = |e: &dyn std::fmt::Display| LinkError::Setup(e.to_string());
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_no_client_auth()
        .with_single_cert(
            vec![id.cert.clone()],
            PrivateKeyDer::Pkcs8(id.key.clone_key()),
        )
        .map_err(|e| setup(&e))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(|e| setup(&e))?;
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    server.transport_config(transport());
    quinn::Endpoint::server(server, addr).map_err(LinkError::Io)
}

/// A client configuration that trusts exactly the certificate `pem` (the peer's, from etcd).
fn client_config(pem: &str) -> Result<quinn::ClientConfig, LinkError> {
    let setup = |e: &dyn std::fmt::Display| LinkError::Setup(e.to_string());
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
        roots
            .add(c.map_err(|e| setup(&e))?)
            .map_err(|e| setup(&e))?;
    }
    if roots.is_empty() {
        return Err(LinkError::Setup(
            "no certificate in the peer's record".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| setup(&e))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(|e| setup(&e))?;
    let mut cfg = quinn::ClientConfig::new(Arc::new(crypto));
    cfg.transport_config(transport());
    Ok(cfg)
}

/// Who this node is on the links: its name and the cluster secret.
#[derive(Clone)]
pub struct Me {
    pub node: String,
    pub secret: Arc<[u8]>,
}

/// An authenticated link to one peer.
#[derive(Debug)]
pub struct Link {
    tx: LinkSender,
    rx: LinkReceiver,
}

fn codec() -> LengthDelimitedCodec {
    presence_wire::framing::length_prefixed(MAX_PEER_FRAME)
}

fn exported(conn: &quinn::Connection) -> Result<[u8; 32], LinkError> {
    let mut out = [0u8; 32];
    conn.export_keying_material(&mut out, EXPORTER_LABEL, b"")
        .map_err(|_| LinkError::Setup("TLS exporter unavailable".into()))?;
    Ok(out)
}

impl Link {
    fn new(
        peer: String,
        conn: quinn::Connection,
        send: quinn::SendStream,
        recv: quinn::RecvStream,
    ) -> Link {
        Link {
            tx: LinkSender {
                peer: peer.clone(),
                conn: conn.clone(),
                send,
            },
            rx: LinkReceiver {
                peer,
                conn,
                recv: FramedRead::new(recv, codec()),
            },
        }
    }

    /// Dials `peer` at `addr`, trusting only `cert_pem`, and checks its hello.
    pub async fn dial(
        endpoint: &quinn::Endpoint,
        me: &Me,
        peer: &str,
        addr: SocketAddr,
        cert_pem: &str,
    ) -> Result<Link, LinkError> {
        let cfg = client_config(cert_pem)?;
        let open = async {
            let conn = endpoint
                .connect_with(cfg, addr, SERVER_NAME)
                .map_err(|source| LinkError::Connect { addr, source })?
                .await?;
            let (send, recv) = conn.open_bi().await?;
            let mut link = Link::new(peer.to_owned(), conn, send, recv);
            link.say_hello(me).await?;
            let said = link.hear_hello(me).await?;
            if said != peer {
                return Err(LinkError::Refused(format!(
                    "dialed {peer}, answered by {said}"
                )));
            }
            Ok(link)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, open)
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    /// Accepts a dialing peer: reads and checks its hello, answers with ours.
    pub async fn accept(incoming: quinn::Incoming, me: &Me) -> Result<Link, LinkError> {
        let open = async {
            let conn = incoming.await?;
            let (send, recv) = conn.accept_bi().await?;
            let mut link = Link::new(String::new(), conn, send, recv);
            let peer = link.hear_hello(me).await?;
            link.tx.peer.clone_from(&peer);
            link.rx.peer = peer;
            link.say_hello(me).await?;
            Ok(link)
        };
        tokio::time::timeout(HANDSHAKE_TIMEOUT, open)
            .await
            .map_err(|_| LinkError::Timeout)?
    }

    async fn say_hello(&mut self, me: &Me) -> Result<(), LinkError> {
        let proof = auth::proof(&me.secret, &me.node, &exported(&self.tx.conn)?);
        self.send(&PeerFrame::Hello {
            node: me.node.clone(),
            proof,
        })
        .await
    }

    /// The node name a valid hello proves; the connection is closed on anything else.
    async fn hear_hello(&mut self, me: &Me) -> Result<String, LinkError> {
        let refuse = |conn: &quinn::Connection, why: &str| {
            conn.close(1u32.into(), why.as_bytes());
            LinkError::Refused(why.to_owned())
        };
        match self.recv().await? {
            Some(PeerFrame::Hello { node, proof }) => {
                if node == me.node {
                    return Err(refuse(&self.tx.conn, "a node cannot link to itself"));
                }
                if !auth::verify(&me.secret, &node, &exported(&self.tx.conn)?, &proof) {
                    return Err(refuse(&self.tx.conn, "bad cluster secret proof"));
                }
                Ok(node)
            }
            Some(_) => Err(refuse(&self.tx.conn, "the first frame must be a hello")),
            None => Err(LinkError::Refused("closed before hello".into())),
        }
    }

    /// The peer's node name.
    pub fn peer(&self) -> &str {
        &self.tx.peer
    }

    /// Sends one frame.
    pub async fn send(&mut self, frame: &PeerFrame) -> Result<(), LinkError> {
        let bytes = frame.encode()?;
        self.tx.send_encoded(Bytes::copy_from_slice(&bytes)).await
    }

    /// The next frame; `None` when the peer closed its side.
    pub async fn recv(&mut self) -> Result<Option<PeerFrame>, LinkError> {
        match self.rx.recv_encoded().await? {
            None => Ok(None),
            Some(b) => Ok(Some(PeerFrame::decode(&b)?)),
        }
    }

    /// Splits into halves for a reader task and a writer task.
    pub fn split(self) -> (LinkSender, LinkReceiver) {
        (self.tx, self.rx)
    }
}

/// The sending half of a [`Link`].
#[derive(Debug)]
pub struct LinkSender {
    peer: String,
    conn: quinn::Connection,
    send: quinn::SendStream,
}

impl LinkSender {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// Sends one encoded frame.
    pub async fn send_encoded(&mut self, bytes: Bytes) -> Result<(), LinkError> {
        let prefix = presence_wire::framing::length_prefix(bytes.len(), MAX_PEER_FRAME)
            .ok_or(FrameError::TooLarge(bytes.len()))?;
        self.send
            .write_all_chunks(&mut [Bytes::copy_from_slice(&prefix), bytes])
            .await
            .map_err(|e| LinkError::Io(e.into()))
    }

    /// Closes the whole connection.
    pub fn close(&self, why: &str) {
        self.conn.close(0u32.into(), why.as_bytes());
    }

    /// The connection, to close it from elsewhere.
    pub fn connection(&self) -> quinn::Connection {
        self.conn.clone()
    }
}

/// The receiving half of a [`Link`].
#[derive(Debug)]
pub struct LinkReceiver {
    peer: String,
    conn: quinn::Connection,
    recv: FramedRead<quinn::RecvStream, LengthDelimitedCodec>,
}

impl LinkReceiver {
    pub fn peer(&self) -> &str {
        &self.peer
    }

    /// The next frame, still encoded (checked when decoded); `None` when the peer closed.
    pub async fn recv_encoded(&mut self) -> Result<Option<BytesMut>, LinkError> {
        match self.recv.next().await {
            None => Ok(None),
            Some(Ok(b)) => Ok(Some(b)),
            Some(Err(e)) => Err(LinkError::Io(e)),
        }
    }

    /// Closes the whole connection.
    pub fn close(&self, why: &str) {
        self.conn.close(0u32.into(), why.as_bytes());
    }
}
