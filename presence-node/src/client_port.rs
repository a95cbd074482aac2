//! The client port's HTTP/1 server (WebSocket upgrades, long-poll, the demo page), served here
//! rather than through `axum::serve` so that an upgraded connection gives its `TcpStream`
//! back: the tick thread writes presence frames straight into WebSocket sockets that have
//! room ([`crate::ws`]). `axum::serve` first sniffs for HTTP/2 and wraps every socket in a
//! private type, which an upgrade cannot be taken apart from; browsers speak HTTP/1.1 to a
//! plain-HTTP port anyway.

use std::pin::pin;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

/// Accepts until `shutdown`; each connection is served on a task of its own and, once
/// `shutdown` fires, finishes its request in flight and closes (upgraded connections live on
/// as their sessions, which the node closes itself).
pub async fn serve(listener: TcpListener, router: Router, shutdown: CancellationToken) {
    loop {
        let tcp = tokio::select! {
            r = listener.accept() => match r {
                Ok((tcp, _)) => tcp,
                Err(e) if is_connection_error(&e) => continue,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    warn!("client port accept failed: {e}");
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => return,
        };
        // TCP_NODELAY: two small frames in a row to an idle client (an inbox entry after a
        // `sent`, two presence frames) would otherwise wait out the client's 40 ms delayed ACK.
        if let Err(e) = tcp.set_nodelay(true) {
            warn!("could not set TCP_NODELAY on a client connection: {e}");
        }
        let svc = TowerToHyperService::new(router.clone());
        let shutdown = shutdown.clone();
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(tcp), svc)
                .with_upgrades();
            let mut conn = pin!(conn);
            let ended = tokio::select! {
                r = conn.as_mut() => Some(r),
                () = shutdown.cancelled() => None,
            };
            let r = match ended {
                Some(r) => r,
                None => {
                    conn.as_mut().graceful_shutdown();
                    conn.await
                }
            };
            if let Err(e) = r {
                debug!("client connection ended: {e}");
            }
        });
    }
}

fn is_connection_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    matches!(
        e.kind(),
        ConnectionAborted | ConnectionRefused | ConnectionReset
    )
}
