//! WebSocket clients at `/v1/ws`: one JSON message per text frame, small buffers.

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::extract::ws::{CloseFrame, Message, WebSocket, WebSocketUpgrade};
use axum::response::Response;
use axum::routing::get;
use bytes::Bytes;

use crate::hub::Hub;
use crate::protocol::MAX_FRAME;
use crate::session::{self, RecvError, Transport};

/// Per-connection read buffer, allocated eagerly by tungstenite. Its default (128 KiB) costs
/// about 134 KB per idle connection; client messages are tiny (larger ones still work, they
/// are read in several chunks).
const READ_BUFFER: usize = 512;

pub fn router(hub: Arc<Hub>) -> Router {
    Router::new().route("/v1/ws", get(upgrade)).with_state(hub)
}

async fn upgrade(State(hub): State<Arc<Hub>>, ws: WebSocketUpgrade) -> Response {
    ws.read_buffer_size(READ_BUFFER)
        .write_buffer_size(0)
        .max_write_buffer_size(4 * MAX_FRAME)
        .max_message_size(MAX_FRAME)
        .max_frame_size(MAX_FRAME)
        .on_upgrade(move |socket| session::run(hub, WsTransport(socket), "ws"))
}

struct WsTransport(WebSocket);

impl Transport for WsTransport {
    async fn recv(&mut self) -> Result<Option<Bytes>, RecvError> {
        loop {
            return match self.0.recv().await {
                None => Ok(None),
                Some(Ok(Message::Text(t))) => Ok(Some(Bytes::from(t))),
                Some(Ok(Message::Binary(_))) => Err(RecvError::Framing(
                    "binary frames are not accepted: send JSON text frames".into(),
                )),
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => continue,
                Some(Ok(Message::Close(_))) => Ok(None),
                Some(Err(e)) => {
                    let inner = e.into_inner();
                    match inner.downcast_ref::<tungstenite::Error>() {
                        Some(tungstenite::Error::Capacity(_)) => Err(RecvError::TooLarge),
                        Some(tungstenite::Error::Protocol(p)) => {
                            Err(RecvError::Framing(p.to_string()))
                        }
                        _ => Err(RecvError::Io(inner.to_string())),
                    }
                }
            };
        }
    }

    async fn send(&mut self, frame: Vec<u8>) -> std::io::Result<()> {
        let text = String::from_utf8(frame)
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidData, e))?;
        self.0
            .send(Message::Text(text.into()))
            .await
            .map_err(std::io::Error::other)
    }

    async fn close(&mut self, reason: &str) {
        let mut reason = reason.to_owned();
        while reason.len() > 120 {
            reason.pop();
        }
        let _ = self
            .0
            .send(Message::Close(Some(CloseFrame {
                code: 1008,
                reason: reason.into(),
            })))
            .await;
    }
}
