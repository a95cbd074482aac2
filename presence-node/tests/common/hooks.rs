//! A local HTTP receiver for the node's webhooks (the chat suites'), on loopback.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use tokio::time::Instant;

/// One request the webhook receiver got.
#[derive(Debug)]
pub struct Hook {
    pub body: Vec<u8>,
    pub signature: Option<String>,
    pub at: Instant,
    pub answered: u16,
}

/// A local HTTP receiver at `/hook` answering 500 to the first `fail_first` requests.
pub async fn webhook_receiver(
    fail_first: usize,
) -> (SocketAddr, tokio::sync::mpsc::UnboundedReceiver<Hook>) {
    use axum::http::{HeaderMap, StatusCode};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind");
    let addr = listener.local_addr().expect("addr");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let count = Arc::new(AtomicUsize::new(0));
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |headers: HeaderMap, body: axum::body::Bytes| {
            let tx = tx.clone();
            let count = count.clone();
            async move {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let status = if n < fail_first {
                    StatusCode::INTERNAL_SERVER_ERROR
                } else {
                    StatusCode::OK
                };
                let _ = tx.send(Hook {
                    body: body.to_vec(),
                    signature: headers
                        .get("x-presence-signature")
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned),
                    at: Instant::now(),
                    answered: status.as_u16(),
                });
                status
            }
        }),
    );
    tokio::spawn(async move {
        let _ = axum::serve(listener, app).await;
    });
    (addr, rx)
}
