//! A host's part of chat's settle after the run: every unanswered send sent again with its
//! id until answered (a device with no connection gets one, as a client coming back would),
//! and inboxes read back whole by reader devices for recipients no device of theirs read.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::sync::{Semaphore, mpsc};

use super::host::{ClientCmd, ClientState, DeviceMutex, Dialer, Shared, client, on_frame, open};
use super::ledger::How;
use super::proto::{ConnectSpec, Reply};

/// Ids of the connections the settle opens (far above the driver's).
const SETTLE_CID: u64 = 1 << 60;
/// How long a reader waits for its backlog.
const READ_TIMEOUT: Duration = Duration::from_secs(20);
/// Readers connected at once.
const READERS: usize = 64;

type Live = (
    Arc<DeviceMutex>,
    mpsc::UnboundedSender<ClientCmd>,
    Arc<ClientState>,
);

/// Sends every device's unanswered sends again until all are answered or `timeout`: on the
/// device's connection when it has a live one, else on a connection opened for it. Answers
/// `Settled`.
pub(super) async fn settle_sends(
    dialer: Arc<Dialer>,
    sem: Arc<Semaphore>,
    sh: Arc<Shared>,
    live: Vec<Live>,
    timeout: Duration,
    seq: u64,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let deadline = tokio::time::Instant::now() + timeout;
    let key = |d: &Arc<DeviceMutex>| Arc::as_ptr(d) as usize;
    let mut conns: HashMap<usize, (mpsc::UnboundedSender<ClientCmd>, Arc<ClientState>)> = live
        .into_iter()
        .map(|(d, tx, st)| (key(&d), (tx, st)))
        .collect();
    let pending = || -> Vec<Arc<DeviceMutex>> {
        sh.devices
            .lock()
            .values()
            .filter(|d| !d.lock().pending.is_empty())
            .cloned()
            .collect()
    };
    let pending_at_start = pending().len() as u64;
    // Connections opened here answer nobody: the driver has its counts already.
    let (quiet, _) = mpsc::unbounded_channel();
    let mut next_cid = SETTLE_CID;
    loop {
        let devices = pending();
        if devices.is_empty() || tokio::time::Instant::now() >= deadline {
            let _ = replies.send(Reply::Settled {
                seq,
                unanswered: devices.iter().map(|d| d.lock().pending.len() as u64).sum(),
                pending_at_start,
            });
            break;
        }
        for d in devices {
            match conns.get(&key(&d)) {
                Some((tx, st)) if !tx.is_closed() => {
                    if st.live.load(Relaxed) {
                        let _ = tx.send(ClientCmd::Resend);
                    }
                    // Still connecting: it sends them once welcomed.
                }
                _ => {
                    let Some(mut spec) = d.lock().spec.clone() else {
                        continue;
                    };
                    spec.cid = next_cid;
                    spec.first = None;
                    next_cid += 1;
                    let (tx, rx) = mpsc::unbounded_channel();
                    let st = Arc::new(ClientState::new(spec.user, Some(d.clone()), How::Resume));
                    tokio::spawn(client(
                        dialer.clone(),
                        sem.clone(),
                        spec,
                        rx,
                        st.clone(),
                        sh.clone(),
                        quiet.clone(),
                    ));
                    conns.insert(key(&d), (tx, st));
                }
            }
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    // Dropping the senders closes the connections opened here.
}

/// Reads each user's whole inbox (`after: 0`) with a reader device of its own, recording
/// every entry in the ledger as read back. Answers `Read` with the readers that failed.
pub(super) async fn read_inboxes(
    dialer: Arc<Dialer>,
    sh: Arc<Shared>,
    users: Vec<(u32, String)>,
    seq: u64,
    replies: mpsc::UnboundedSender<Reply>,
) {
    let sem = Arc::new(Semaphore::new(READERS));
    let mut tasks = Vec::with_capacity(users.len());
    for (i, (user, token)) in users.into_iter().enumerate() {
        let (dialer, sh, sem) = (dialer.clone(), sh.clone(), sem.clone());
        tasks.push(tokio::spawn(async move {
            let _permit = sem.acquire().await;
            read_inbox(&dialer, &sh, user, token, SETTLE_CID * 2 + i as u64).await
        }));
    }
    let mut failed = 0;
    for t in tasks {
        if !matches!(t.await, Ok(true)) {
            failed += 1;
        }
    }
    let _ = replies.send(Reply::Read { seq, failed });
}

/// One reader: hello with `after: 0` (following `moved`), then the backlog up to the
/// welcome's `inbox_seq`.
async fn read_inbox(dialer: &Dialer, sh: &Shared, user: u32, token: String, cid: u64) -> bool {
    let sp = ConnectSpec {
        cid,
        device: "settle-reader".into(),
        quic: false,
        token,
        first: None,
        node: user as usize,
        user,
    };
    let dev = Arc::new(DeviceMutex::default());
    let st = ClientState::new(user, Some(dev.clone()), How::Read);
    let Ok((mut conn, _, _)) = open(dialer, &sp, &st, sh).await else {
        return false;
    };
    let head = st.welcome_seq.load(Relaxed);
    let deadline = tokio::time::Instant::now() + READ_TIMEOUT;
    let mut ok = true;
    while dev.lock().cursor < head {
        match tokio::time::timeout_at(deadline, conn.recv_frame()).await {
            Ok(Ok(f)) => {
                on_frame(&st, sh, &f);
            }
            _ => {
                ok = false;
                break;
            }
        }
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), conn.close()).await;
    ok
}
