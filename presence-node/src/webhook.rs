//! The `message.undelivered` webhook sender: a task that POSTs each event to the app, signed
//! with HMAC-SHA256 under the node's secret, and retries with exponential backoff and full
//! jitter (the schedule, `chat_relay::webhook`, does no I/O) while the app answers an error or
//! nothing. It runs beside delivery and never blocks it: events reach it through a bounded
//! queue, and a full queue drops the event with a metric and a warning.

use std::hash::{BuildHasher, RandomState};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use chat_relay::webhook::{self, Retry, RetryPolicy, Schedule, Undelivered};
use http_body_util::Full;
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tracing::{debug, warn};

use crate::metrics as m;
use crate::node::now_ms;

/// Events waiting for the sender before new ones are dropped.
pub const QUEUE: usize = 65_536;
/// Requests in flight at once.
const IN_FLIGHT: usize = 32;
/// How long the app may take to answer one request.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// Checks the URL at start-up: `http://host:port/path`.
pub fn parse_url(url: &str) -> anyhow::Result<hyper::Uri> {
    let uri: hyper::Uri = url
        .parse()
        .with_context(|| format!("webhook-url {url:?} is not a URL"))?;
    match uri.scheme_str() {
        Some("http") => {}
        Some(other) => bail!("webhook-url: scheme {other:?} is not supported (use http://)"),
        None => bail!("webhook-url {url:?} needs http://"),
    }
    if uri.host().is_none() {
        bail!("webhook-url {url:?} has no host");
    }
    Ok(uri)
}

/// Runs the sender until the queue's senders are gone and nothing is left to retry, or until
/// `stop` fires.
pub async fn run(
    uri: hyper::Uri,
    secret: Arc<[u8]>,
    mut events: mpsc::Receiver<Undelivered>,
    stop: tokio_util::sync::CancellationToken,
) {
    let client: Client<HttpConnector, Full<Bytes>> =
        Client::builder(TokioExecutor::new()).build_http();
    let mut schedule = Schedule::new(RetryPolicy::default());
    let mut in_flight: JoinSet<(u64, bool)> = JoinSet::new();
    let jitter = RandomState::new();
    let mut open = true;
    let mut ready = std::collections::VecDeque::new();
    loop {
        // Start whatever is due, up to the in-flight cap (the rest waits its turn in order).
        ready.extend(schedule.due(now_ms()));
        while in_flight.len() < IN_FLIGHT {
            let Some(job) = ready.pop_front() else { break };
            let body = job.event.body();
            let signature = webhook::sign(&secret, body.as_bytes());
            let client = client.clone();
            let uri = uri.clone();
            let id = job.id;
            in_flight.spawn(async move { (id, post(&client, uri, body, signature).await) });
        }
        if !open && schedule.is_empty() && in_flight.is_empty() && ready.is_empty() {
            return;
        }
        let wait = if ready.is_empty() {
            schedule.next_due()
        } else {
            None
        }
        .map(|at| Duration::from_millis(at.saturating_sub(now_ms())))
        .unwrap_or(Duration::from_secs(3600));
        tokio::select! {
            ev = events.recv(), if open => match ev {
                Some(ev) => {
                    debug!(user = %ev.user, msg_id = %ev.msg_id, "webhook queued");
                    schedule.push(now_ms(), ev);
                }
                None => open = false,
            },
            Some(done) = in_flight.join_next(), if !in_flight.is_empty() => {
                let Ok((id, ok)) = done else { continue };
                if ok {
                    metrics::counter!(m::WEBHOOKS, "result" => "delivered").increment(1);
                    schedule.succeeded(id);
                } else {
                    metrics::counter!(m::WEBHOOKS, "result" => "failed").increment(1);
                    let random = jitter.hash_one((id, now_ms()));
                    if schedule.failed(id, now_ms(), random) == Retry::GaveUp {
                        metrics::counter!(m::WEBHOOKS, "result" => "gave_up").increment(1);
                        warn!(id, "webhook gave up after the last retry");
                    }
                }
            }
            () = tokio::time::sleep(wait) => {}
            () = stop.cancelled() => return,
        }
    }
}

async fn post(
    client: &Client<HttpConnector, Full<Bytes>>,
    uri: hyper::Uri,
    body: String,
    signature: String,
) -> bool {
    let req = hyper::Request::post(uri)
        .header("content-type", "application/json")
        .header("x-presence-signature", signature)
        .body(Full::new(Bytes::from(body)));
    let Ok(req) = req else {
        return false;
    };
    match tokio::time::timeout(REQUEST_TIMEOUT, client.request(req)).await {
        Ok(Ok(resp)) if resp.status().is_success() => true,
        Ok(Ok(resp)) => {
            debug!(status = %resp.status(), "webhook refused");
            false
        }
        Ok(Err(e)) => {
            debug!("webhook failed: {e}");
            false
        }
        Err(_) => {
            debug!("webhook timed out");
            false
        }
    }
}
