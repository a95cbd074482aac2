//! Peer links over real QUIC on loopback: two nodes with the same cluster secret link and
//! exchange frames; a wrong secret, a wrong certificate, a node claiming another's name and a
//! client that never says hello are all refused, within the handshake timeout.

use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use std::time::Duration;

use presence_peer::link::HANDSHAKE_TIMEOUT;
use presence_peer::{Identity, Link, LinkError, Me, PeerEntry, PeerFrame, SlotUpdate};

const SECRET: &[u8] = b"the cluster secret, shared by every node";

struct Node {
    me: Me,
    id: Identity,
    endpoint: quinn::Endpoint,
}

fn node(name: &str, secret: &[u8]) -> Node {
    let _ = rustls::crypto::ring::default_provider().install_default();
    let id = Identity::generate().expect("identity");
    let endpoint =
        presence_peer::link::endpoint("127.0.0.1:0".parse().expect("addr"), &id).expect("endpoint");
    Node {
        me: Me {
            node: name.into(),
            secret: Arc::from(secret),
        },
        id,
        endpoint,
    }
}

/// `b` accepts one link; `a` dials it.
async fn link(
    a: &Node,
    b: &Node,
    claimed: &str,
    pem: &str,
) -> (Result<Link, LinkError>, Result<Link, LinkError>) {
    let accept = {
        let endpoint = b.endpoint.clone();
        let me = b.me.clone();
        tokio::spawn(async move {
            let incoming = endpoint.accept().await.expect("incoming");
            Link::accept(incoming, &me).await
        })
    };
    let addr = b.endpoint.local_addr().expect("addr");
    let dialed = Link::dial(&a.endpoint, &a.me, claimed, addr, pem).await;
    let accepted = tokio::time::timeout(HANDSHAKE_TIMEOUT * 2, accept)
        .await
        .expect("accept ends")
        .expect("task");
    (dialed, accepted)
}

fn tick() -> PeerFrame {
    PeerFrame::Tick {
        tick: 9,
        slots: vec![SlotUpdate {
            slot: 12,
            epoch: 77,
            seq: 1,
            snapshot: true,
            entries: vec![PeerEntry {
                last_active: 5,
                user: "alice".into(),
                state: 1,
                status: 0,
                gone: false,
            }],
            texts: vec![],
        }],
    }
}

#[tokio::test]
async fn two_nodes_link_and_exchange_frames_both_ways() {
    let (a, b) = (node("a", SECRET), node("b", SECRET));
    let (dialed, accepted) = link(&a, &b, "b", b.id.pem()).await;
    let (mut da, mut ab) = (dialed.expect("a dials b"), accepted.expect("b accepts a"));
    assert_eq!((da.peer(), ab.peer()), ("b", "a"));
    da.send(&tick()).await.expect("send");
    assert_eq!(ab.recv().await.expect("recv"), Some(tick()));
    ab.send(&PeerFrame::Resync { slot: 12 })
        .await
        .expect("send");
    assert_eq!(
        da.recv().await.expect("recv"),
        Some(PeerFrame::Resync { slot: 12 })
    );
    // Halves work apart, as the node's reader and writer tasks use them.
    let (mut tx, _rx) = da.split();
    let bytes = tick().encode().expect("encode");
    tx.send_encoded(bytes::Bytes::copy_from_slice(&bytes))
        .await
        .expect("send");
    assert_eq!(ab.recv().await.expect("recv"), Some(tick()));
    tx.close("bye");
    let after = ab.recv().await.map(|f| f.is_some());
    assert!(
        matches!(after, Ok(false) | Err(_)),
        "nothing after the close: {after:?}"
    );
}

#[tokio::test]
async fn a_wrong_secret_is_refused_both_ways() {
    let (a, b) = (
        node("a", b"another secret, not the cluster's"),
        node("b", SECRET),
    );
    let (dialed, accepted) = link(&a, &b, "b", b.id.pem()).await;
    assert!(
        matches!(accepted, Err(LinkError::Refused(ref m)) if m.contains("proof")),
        "{accepted:?}"
    );
    assert!(dialed.is_err(), "the dialer gets no valid hello either");
}

#[tokio::test]
async fn a_certificate_other_than_the_published_one_is_refused() {
    let (a, b) = (node("a", SECRET), node("b", SECRET));
    let stranger = Identity::generate().expect("identity");
    let (dialed, _accepted) = link(&a, &b, "b", stranger.pem()).await;
    assert!(
        dialed.is_err(),
        "pinned to another certificate: {:?}",
        dialed.map(|l| l.peer().to_owned())
    );
}

#[tokio::test]
async fn a_node_answering_under_another_name_is_refused() {
    let (a, b) = (node("a", SECRET), node("b", SECRET));
    let (dialed, _) = link(&a, &b, "c", b.id.pem()).await;
    assert!(
        matches!(dialed, Err(LinkError::Refused(ref m)) if m.contains("answered by b")),
        "{:?}",
        dialed.err()
    );
}

#[tokio::test]
async fn a_silent_dialer_times_out() {
    let b = node("b", SECRET);
    let endpoint = b.endpoint.clone();
    let me = b.me.clone();
    let accept = tokio::spawn(async move {
        let incoming = endpoint.accept().await.expect("incoming");
        Link::accept(incoming, &me).await
    });
    // A bare QUIC client that completes the handshake and says nothing.
    let a = node("a", SECRET);
    let mut roots = rustls::RootCertStore::empty();
    for c in rustls::pki_types::CertificateDer::pem_slice_iter(b.id.pem().as_bytes()) {
        roots.add(c.expect("pem")).expect("root");
    }
    let mut tls = rustls::ClientConfig::builder()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![presence_peer::ALPN.to_vec()];
    let cfg = quinn::ClientConfig::new(Arc::new(
        quinn::crypto::rustls::QuicClientConfig::try_from(tls).expect("quic tls"),
    ));
    let conn = a
        .endpoint
        .connect_with(cfg, b.endpoint.local_addr().expect("addr"), "presence-peer")
        .expect("connect")
        .await
        .expect("handshake");
    let started = std::time::Instant::now();
    let r = tokio::time::timeout(HANDSHAKE_TIMEOUT + Duration::from_secs(2), accept)
        .await
        .expect("accept ends")
        .expect("task");
    assert!(matches!(r, Err(LinkError::Timeout)), "{:?}", r.err());
    assert!(started.elapsed() >= HANDSHAKE_TIMEOUT - Duration::from_millis(500));
    drop(conn);
}
