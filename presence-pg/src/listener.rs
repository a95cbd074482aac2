//! Follows the change log as it grows: a dedicated connection `LISTEN`s on [`CHANNEL`] and
//! yields each committed change id. NOTIFY is a hint, not the record: after every (re)connect
//! the listener says [`Notice::Listening`], and the caller reads
//! [`Store::changes_after`](crate::Store::changes_after) from its own cursor, so a notification
//! lost while the connection was down loses nothing.

use std::future::poll_fn;
use std::time::Duration;

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tokio_postgres::{AsyncMessage, Config, NoTls};

use crate::Error;
use crate::schema::CHANNEL;

/// First wait before reconnecting; doubled after each failure up to [`MAX_BACKOFF`].
const MIN_BACKOFF: Duration = Duration::from_millis(100);
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// Notices buffered for a slow reader; past that the oldest ids are dropped (and the caller,
/// reading the log from its cursor, misses nothing).
const BUFFER: usize = 1024;

/// What the listener reports.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Notice {
    /// (Re)subscribed: changes may have been missed meanwhile; read the log from your cursor.
    Listening,
    /// A change with this id committed.
    Change(i64),
}

/// A task holding a `LISTEN` connection, reconnecting after errors with backoff. Dropping it
/// stops the task and closes the connection.
pub struct Listener {
    rx: mpsc::Receiver<Notice>,
    task: JoinHandle<()>,
}

impl Listener {
    /// Starts listening; the first notice is [`Notice::Listening`] once subscribed.
    pub fn start(url: &str) -> Result<Listener, Error> {
        let config: Config = url.parse()?;
        let (tx, rx) = mpsc::channel(BUFFER);
        let task = tokio::spawn(run(config, tx));
        Ok(Listener { rx, task })
    }

    /// The next notice; `None` only if the task stopped (it does not, short of a panic).
    pub async fn next(&mut self) -> Option<Notice> {
        self.rx.recv().await
    }
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Connect, LISTEN, forward notifications until the connection ends; again, forever.
async fn run(config: Config, tx: mpsc::Sender<Notice>) {
    let mut backoff = MIN_BACKOFF;
    loop {
        match listen_once(&config, &tx, &mut backoff).await {
            Ok(()) => return, // the receiver is gone
            Err(e) => tracing::warn!(error = %e, ?backoff, "change listener disconnected"),
        }
        if tx.is_closed() {
            return;
        }
        tokio::time::sleep(backoff).await;
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
}

/// One connection's life. `Ok` when the receiver went away, `Err` when the connection failed.
async fn listen_once(
    config: &Config,
    tx: &mpsc::Sender<Notice>,
    backoff: &mut Duration,
) -> Result<(), Error> {
    let (client, mut connection) = config.connect(NoTls).await?;
    // The connection must be polled for LISTEN to complete and for notifications to arrive;
    // its messages go to a channel that the loop below reads.
    let (msg_tx, mut msg_rx) = mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        loop {
            let msg = poll_fn(|cx| connection.poll_message(cx)).await;
            let end = !matches!(msg, Some(Ok(_)));
            if msg_tx.send(msg).is_err() || end {
                return;
            }
        }
    });
    let _abort = AbortOnDrop(driver);
    client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
    *backoff = MIN_BACKOFF;
    if tx.send(Notice::Listening).await.is_err() {
        return Ok(());
    }
    loop {
        match msg_rx.recv().await {
            Some(Some(Ok(AsyncMessage::Notification(n)))) => {
                let Ok(id) = n.payload().parse::<i64>() else {
                    tracing::warn!(payload = n.payload(), "unexpected notification payload");
                    continue;
                };
                match tx.try_send(Notice::Change(id)) {
                    Ok(()) | Err(mpsc::error::TrySendError::Full(_)) => {}
                    Err(mpsc::error::TrySendError::Closed(_)) => return Ok(()),
                }
            }
            Some(Some(Ok(_))) => {}
            Some(Some(Err(e))) => return Err(e.into()),
            Some(None) | None => return Err(Error::Closed),
        }
    }
}

/// Stops the connection driver when this connection's life ends.
struct AbortOnDrop(JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
