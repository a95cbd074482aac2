//! A connection that stays up: [`Session`] reconnects with jittered exponential backoff,
//! resumes the inbox with `after`, follows `moved` at once, heartbeats, and hands the app
//! typed messages and connection events.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use presence_wire::{ClientMessage, ErrorCode, MAX_FRAME, ServerMessage, Welcome};
use tokio::sync::{mpsc, oneshot};
use tokio::time::{Instant, MissedTickBehavior};
use tracing::debug;

use crate::backoff::{Backoff, Jitter, random_seed};
use crate::client::{Client, ConnectOptions};
use crate::error::{ClientError, Moved};
use crate::inbox::InboxCursor;
use crate::transport::{Connection, Transport};

/// How a [`Session`] connects and reconnects.
#[derive(Debug, Clone)]
pub struct SessionOptions {
    /// Where to, and the hello: `after` is where the first connection resumes (`None`: from
    /// the first welcome on; `Some(0)`: the whole inbox). Later connections resume after the
    /// highest `seq` the session has had.
    pub connect: ConnectOptions,
    pub backoff: Backoff,
    /// Seeds the backoff's jitter (`None`: a random seed).
    pub seed: Option<u64>,
    /// Send `heartbeat` at a third of the welcome's `heartbeat_ms`, and give a connection up
    /// when nothing arrives for twice `heartbeat_ms` (default true).
    pub heartbeat: bool,
    /// Consecutive `moved` answers followed at once; past that the session backs off and
    /// starts over from `connect.transport` (default 3; guards against a routing loop).
    pub max_moves: u32,
    /// Events buffered for the app; when they are not taken the session stops reading, so the
    /// node merges presence instead of the buffer growing (default 256).
    pub event_buffer: usize,
}

impl SessionOptions {
    pub fn new(connect: ConnectOptions) -> SessionOptions {
        SessionOptions {
            connect,
            backoff: Backoff::default(),
            seed: None,
            heartbeat: true,
            max_moves: 3,
            event_buffer: 256,
        }
    }
}

/// What a session hands the app.
#[derive(Debug, Clone)]
pub enum Event {
    /// A connection is up; the welcome has every friend's presence. Inbox entries the device
    /// missed follow as messages.
    Connected(Welcome<'static>),
    /// A message from the node. Inbox entries come once each across reconnects; `pong`s and
    /// message types this version does not know are not passed on. v1.1: watched groups'
    /// counts come as [`ServerMessage::GroupCounts`], watched members' presence in
    /// [`ServerMessage::Presence`] like friends', and a refused view as an `Error`.
    Message(ServerMessage),
    /// The connection ended or an attempt failed. `retry_in`: when the session tries again
    /// (zero after `moved`); `None` when it will not by itself: the token was refused
    /// ([`Session::set_token`] tries again) or the options cannot work (the session ends).
    Disconnected {
        reason: ClientError,
        retry_in: Option<Duration>,
    },
}

enum Command {
    Send(ClientMessage, oneshot::Sender<Result<(), ClientError>>),
    SetToken(String),
    View(View),
    Close,
}

/// A change to the session's sticky views (v1.1 partial subscriptions).
#[derive(Debug, Clone)]
enum View {
    Focus(Option<Vec<String>>),
    Watch {
        group: String,
        counts: bool,
        members: Option<Vec<String>>,
    },
    Unwatch(String),
}

/// At most this many ids in a `focus` or a `watch_group`'s `members` (protocol v1.1).
const MAX_VIEW_IDS: usize = 200;

/// The focus and the group watches the app asked for. The node keeps them per session, so
/// they are sent again after every welcome: the focus first, then the watches in the order
/// they were first asked for.
#[derive(Debug, Default)]
struct Views {
    focus: Option<Vec<String>>,
    /// `watch_group` messages, one per group.
    watches: Vec<ClientMessage>,
}

impl Views {
    /// Takes a change; returns the message that applies it to a live session (`None`: nothing
    /// to send, an unwatch of a group not watched).
    fn apply(&mut self, view: View) -> Option<ClientMessage> {
        match view {
            View::Focus(users) => {
                self.focus.clone_from(&users);
                Some(ClientMessage::Focus { users })
            }
            View::Watch {
                group,
                counts,
                members,
            } => {
                let msg = ClientMessage::WatchGroup {
                    group: group.clone(),
                    counts,
                    members,
                };
                match self.watches.iter_mut().find(|w| watched(w) == Some(&group)) {
                    Some(w) => *w = msg.clone(),
                    None => self.watches.push(msg.clone()),
                }
                Some(msg)
            }
            View::Unwatch(group) => {
                let before = self.watches.len();
                self.watches.retain(|w| watched(w) != Some(&group));
                (self.watches.len() < before).then_some(ClientMessage::UnwatchGroup { group })
            }
        }
    }

    /// A group the node watches no more (deleted, or the user left it: a count of zeros).
    fn forget(&mut self, group: &str) {
        self.watches
            .retain(|w| watched(w).map(String::as_str) != Some(group));
    }

    /// What a new session needs to show the same views.
    fn replay(&self) -> impl Iterator<Item = ClientMessage> + '_ {
        let focus = self
            .focus
            .clone()
            .map(|users| ClientMessage::Focus { users: Some(users) });
        focus.into_iter().chain(self.watches.iter().cloned())
    }
}

fn watched(msg: &ClientMessage) -> Option<&String> {
    match msg {
        ClientMessage::WatchGroup { group, .. } => Some(group),
        _ => None,
    }
}

/// Refuses a list over the protocol's limit, and a message over the frame limit, before it
/// is kept (a kept view is sent again after every reconnect).
fn check_view(ids: Option<&Vec<String>>, msg: &ClientMessage) -> Result<(), ClientError> {
    let n = ids.map_or(0, Vec::len);
    if n > MAX_VIEW_IDS {
        return Err(ClientError::Protocol(format!(
            "{n} ids: at most {MAX_VIEW_IDS} in a focus or a watch"
        )));
    }
    let len = msg.to_frame().len();
    if len > MAX_FRAME {
        return Err(ClientError::Protocol(format!(
            "a frame of {len} bytes is over the protocol's {MAX_FRAME}"
        )));
    }
    Ok(())
}

/// No position yet, in [`Session::resume_after`]'s atomic.
const NO_POSITION: u64 = u64::MAX;

/// A connection to a node kept up by a background task (so it must be started inside a
/// tokio runtime). Dropping the session ends the task and the connection.
pub struct Session {
    commands: mpsc::Sender<Command>,
    events: mpsc::Receiver<Event>,
    position: Arc<AtomicU64>,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("resume_after", &self.resume_after())
            .finish_non_exhaustive()
    }
}

impl Session {
    /// Starts connecting; the first event is `Connected` or `Disconnected`.
    pub fn start(opts: SessionOptions) -> Session {
        let (commands, commands_rx) = mpsc::channel(64);
        let (events_tx, events) = mpsc::channel(opts.event_buffer.max(1));
        let position = Arc::new(AtomicU64::new(NO_POSITION));
        let driver = Driver {
            jitter: Jitter::new(opts.backoff, opts.seed.unwrap_or_else(random_seed)),
            cursor: InboxCursor::new(opts.connect.after),
            opts,
            position: position.clone(),
            commands: commands_rx,
            events: events_tx,
            views: Views::default(),
        };
        driver.publish();
        let task = tokio::spawn(driver.run());
        Session {
            commands,
            events,
            position,
            task: Some(task),
        }
    }

    /// The next event; `None` once the session has ended. Cancel-safe.
    pub async fn next_event(&mut self) -> Option<Event> {
        self.events.recv().await
    }

    /// Sends on the live connection and waits for the write. `Err(Closed)` while there is
    /// none (the session is reconnecting): send again after the next `Connected` (a chat
    /// `send` retried with the same `id` is deduplicated by the node).
    pub async fn send(&self, msg: ClientMessage) -> Result<(), ClientError> {
        let (tx, rx) = oneshot::channel();
        self.commands
            .send(Command::Send(msg, tx))
            .await
            .map_err(|_| ClientError::Closed)?;
        rx.await.unwrap_or(Err(ClientError::Closed))
    }

    /// v1.1: only these friends' presence (at most 200 ids) reaches this session from now on;
    /// `None`: every friend again. Kept: sent now if connected, and again after every
    /// `Connected` (the node forgets it with the connection). `Err` when the list is over the
    /// limit or the session has ended; the node's refusals arrive as `Error` messages.
    pub async fn focus(&self, users: Option<Vec<String>>) -> Result<(), ClientError> {
        check_view(
            users.as_ref(),
            &ClientMessage::Focus {
                users: users.clone(),
            },
        )?;
        self.view(View::Focus(users)).await
    }

    /// v1.1: `group_counts` for a group the user belongs to (when `counts`), and with
    /// `members` (at most 200 of its members) their presence like friends'. Again for the same
    /// group replaces the watch. Kept like [`Session::focus`]; after a reconnect the watches
    /// are sent in the order they were first asked for, after the focus.
    pub async fn watch_group(
        &self,
        group: impl Into<String>,
        counts: bool,
        members: Option<Vec<String>>,
    ) -> Result<(), ClientError> {
        let group = group.into();
        let msg = ClientMessage::WatchGroup {
            group: group.clone(),
            counts,
            members: members.clone(),
        };
        check_view(members.as_ref(), &msg)?;
        self.view(View::Watch {
            group,
            counts,
            members,
        })
        .await
    }

    /// v1.1: stops watching a group (sent only if it is watched: the node refuses others).
    pub async fn unwatch_group(&self, group: impl Into<String>) -> Result<(), ClientError> {
        self.view(View::Unwatch(group.into())).await
    }

    async fn view(&self, view: View) -> Result<(), ClientError> {
        self.commands
            .send(Command::View(view))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// The token for the next connections (tokens expire); after a refused token, also
    /// connects again at once.
    pub async fn set_token(&self, token: impl Into<String>) -> Result<(), ClientError> {
        self.commands
            .send(Command::SetToken(token.into()))
            .await
            .map_err(|_| ClientError::Closed)
    }

    /// The `after` of the next hello: the highest inbox `seq` this device has had. Store it
    /// to resume there after the process restarts.
    pub fn resume_after(&self) -> Option<u64> {
        match self.position.load(Ordering::Relaxed) {
            NO_POSITION => None,
            p => Some(p),
        }
    }

    /// Closes the connection and ends the session.
    pub async fn close(mut self) {
        // A task waiting for room for an event must not wait for the app now.
        self.events.close();
        let _ = self.commands.send(Command::Close).await;
        if let Some(t) = self.task.take() {
            let _ = t.await;
        }
    }
}

/// The background task of a session.
struct Driver {
    opts: SessionOptions,
    jitter: Jitter,
    cursor: InboxCursor,
    position: Arc<AtomicU64>,
    commands: mpsc::Receiver<Command>,
    events: mpsc::Sender<Event>,
    views: Views,
}

/// How a live connection ended.
enum Served {
    /// The app closed the session or dropped it.
    Stop,
    Lost(ClientError),
}

/// What to do after a connection or an attempt ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Next {
    /// Follow a `moved` to this transport, now.
    Follow(Transport),
    /// Back off, then connect to the configured transport (or the same one again).
    Retry,
    /// Wait for a new token.
    NeedToken,
    /// Give up: the options cannot work.
    End,
}

/// The transport a `moved` points to, keeping the kind of transport (and, for QUIC, the
/// server name and certificate: nodes of a cluster share them).
pub(crate) fn follow(current: &Transport, m: &Moved) -> Option<Transport> {
    match current {
        Transport::Ws(_) => m.ws.clone().map(Transport::Ws),
        Transport::Quic {
            server_name, cert, ..
        } => match &m.quic {
            Some(q) => Some(Transport::Quic {
                addr: q.clone(),
                server_name: server_name.clone(),
                cert: cert.clone(),
            }),
            None => m.ws.clone().map(Transport::Ws),
        },
    }
}

/// The decision after `reason` ended a connection (`during_hello`: before a welcome), with
/// `moves` consecutive `moved` followed so far.
fn next_step(
    reason: &ClientError,
    during_hello: bool,
    current: &Transport,
    moves: u32,
    max_moves: u32,
) -> Next {
    match reason {
        ClientError::Moved(m) if moves < max_moves => match follow(current, m) {
            Some(t) => Next::Follow(t),
            None => Next::Retry,
        },
        ClientError::Refused {
            code: ErrorCode::Unauthorized | ErrorCode::Protocol,
            ..
        } if during_hello => Next::NeedToken,
        ClientError::Config(_) => Next::End,
        _ => Next::Retry,
    }
}

impl Driver {
    fn publish(&self) {
        let p = self.cursor.resume_after().unwrap_or(NO_POSITION);
        self.position.store(p, Ordering::Relaxed);
    }

    async fn run(mut self) {
        let home = self.opts.connect.transport.clone();
        let mut target = home.clone();
        let mut moves = 0u32;
        loop {
            let mut opts = self.opts.connect.clone();
            opts.transport = target.clone();
            opts.after = self.cursor.resume_after();
            debug!(transport = ?opts.transport, after = ?opts.after, "connecting");
            let Some(attempt) = self.connecting(&opts).await else {
                return;
            };
            let (reason, during_hello, lasted) = match attempt {
                Ok((conn, welcome)) => {
                    moves = 0;
                    self.cursor.on_welcome(welcome.inbox_seq);
                    self.publish();
                    let heartbeat_ms = welcome.heartbeat_ms;
                    if self.events.send(Event::Connected(welcome)).await.is_err() {
                        let _ = conn.close().await;
                        return;
                    }
                    let started = Instant::now();
                    match self.serve(conn, heartbeat_ms).await {
                        Served::Stop => return,
                        Served::Lost(reason) => (reason, false, started.elapsed()),
                    }
                }
                Err(reason) => (reason, true, Duration::ZERO),
            };
            let next = next_step(&reason, during_hello, &target, moves, self.opts.max_moves);
            let retry_in = match &next {
                Next::Follow(t) => {
                    moves += 1;
                    target = t.clone();
                    Some(Duration::ZERO)
                }
                Next::Retry => {
                    self.jitter.connection_ended(lasted);
                    if during_hello {
                        // A moved-to node that cannot be reached: ask the configured one again.
                        target = home.clone();
                    }
                    moves = 0;
                    Some(self.jitter.next_delay())
                }
                Next::NeedToken | Next::End => None,
            };
            debug!(%reason, ?retry_in, "disconnected");
            let event = Event::Disconnected { reason, retry_in };
            if self.events.send(event).await.is_err() {
                return;
            }
            let go_on = match next {
                Next::Follow(_) => true,
                Next::Retry => self.wait(retry_in.unwrap_or_default()).await,
                Next::NeedToken => self.wait_for_token().await,
                Next::End => false,
            };
            if !go_on {
                return;
            }
        }
    }

    /// A command while there is no connection; false when the session ends.
    fn offline(&mut self, cmd: Option<Command>) -> bool {
        match cmd {
            Some(Command::Send(_, reply)) => {
                let _ = reply.send(Err(ClientError::Closed));
                true
            }
            Some(Command::SetToken(t)) => {
                self.opts.connect.token = t;
                true
            }
            Some(Command::View(v)) => {
                // Sent after the next welcome with the rest.
                let _ = self.views.apply(v);
                true
            }
            Some(Command::Close) | None => false,
        }
    }

    /// Connects and says hello while answering commands; `None` when the session ends.
    async fn connecting(
        &mut self,
        opts: &ConnectOptions,
    ) -> Option<Result<(Connection, Welcome<'static>), ClientError>> {
        let attempt = Client::connect(opts);
        tokio::pin!(attempt);
        loop {
            tokio::select! {
                r = &mut attempt => return Some(r),
                cmd = self.commands.recv() => if !self.offline(cmd) {
                    return None;
                },
            }
        }
    }

    /// Waits `d` while answering commands; false when the session ends.
    async fn wait(&mut self, d: Duration) -> bool {
        let sleep = tokio::time::sleep(d);
        tokio::pin!(sleep);
        loop {
            tokio::select! {
                () = &mut sleep => return true,
                cmd = self.commands.recv() => if !self.offline(cmd) {
                    return false;
                },
            }
        }
    }

    /// Waits for a new token; false when the session ends.
    async fn wait_for_token(&mut self) -> bool {
        loop {
            let cmd = self.commands.recv().await;
            let token = matches!(cmd, Some(Command::SetToken(_)));
            if !self.offline(cmd) {
                return false;
            }
            if token {
                return true;
            }
        }
    }

    /// Runs a live connection until it ends.
    async fn serve(&mut self, mut conn: Connection, heartbeat_ms: u64) -> Served {
        let period = Duration::from_millis(heartbeat_ms / 3)
            .clamp(Duration::from_millis(100), Duration::from_secs(30));
        let silent_limit =
            Duration::from_millis(heartbeat_ms.saturating_mul(2)).max(Duration::from_secs(1));
        let mut ticker = tokio::time::interval_at(Instant::now() + period, period);
        ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let heartbeat = self.opts.heartbeat;
        let mut last_rx = Instant::now();
        // Disjoint borrows, so the receiving future holds only what it uses.
        let Driver {
            opts,
            cursor,
            position,
            commands,
            events,
            views,
            ..
        } = self;
        // A new session on the node: it knows nothing of the focus and the watches.
        for msg in views.replay() {
            if let Err(e) = conn.send(&msg).await {
                return Served::Lost(e);
            }
        }
        let publish = |cursor: &InboxCursor| {
            position.store(
                cursor.resume_after().unwrap_or(NO_POSITION),
                Ordering::Relaxed,
            );
        };
        loop {
            tokio::select! {
                cmd = commands.recv() => match cmd {
                    Some(Command::Send(msg, reply)) => {
                        let frame = msg.to_frame();
                        if frame.len() > MAX_FRAME {
                            let e = ClientError::Protocol(format!(
                                "a frame of {} bytes is over the protocol's {MAX_FRAME}",
                                frame.len()
                            ));
                            let _ = reply.send(Err(e));
                            continue;
                        }
                        let sent = conn.send_frame(&frame).await;
                        if sent.is_ok() && matches!(msg, ClientMessage::Sync { .. }) {
                            cursor.on_sync_sent();
                        }
                        let _ = reply.send(sent.clone());
                        if let Err(e) = sent {
                            return Served::Lost(e);
                        }
                    }
                    Some(Command::SetToken(t)) => opts.connect.token = t,
                    Some(Command::View(v)) => {
                        if let Some(msg) = views.apply(v)
                            && let Err(e) = conn.send(&msg).await
                        {
                            return Served::Lost(e);
                        }
                    }
                    Some(Command::Close) | None => {
                        let _ = conn.close().await;
                        return Served::Stop;
                    }
                },
                _ = ticker.tick(), if heartbeat => {
                    if last_rx.elapsed() > silent_limit {
                        conn.abandon();
                        return Served::Lost(ClientError::Timeout("the node went silent"));
                    }
                    if let Err(e) = conn.send(&ClientMessage::Heartbeat {}).await {
                        return Served::Lost(e);
                    }
                }
                got = async { (events.reserve().await, conn.recv().await) } => {
                    let (permit, msg) = got;
                    let Ok(permit) = permit else {
                        let _ = conn.close().await;
                        return Served::Stop;
                    };
                    let msg = match msg {
                        Ok(m) => m,
                        Err(e) => return Served::Lost(e),
                    };
                    last_rx = Instant::now();
                    match msg {
                        ServerMessage::Pong | ServerMessage::Unknown => {}
                        ServerMessage::Inbox(entry) => {
                            if cursor.accept(entry.seq) {
                                publish(cursor);
                                permit.send(Event::Message(ServerMessage::Inbox(entry)));
                            }
                        }
                        ServerMessage::Synced(s) => {
                            cursor.on_synced();
                            permit.send(Event::Message(ServerMessage::Synced(s)));
                        }
                        ServerMessage::Error(e) if e.code.closes() => {
                            return Served::Lost(ClientError::from(&e));
                        }
                        ServerMessage::GroupCounts(c) => {
                            // A count of zeros: deleted, or left; the node watches it no more.
                            for g in c.groups.iter().filter(|g| g.total == 0) {
                                views.forget(&g.group);
                            }
                            permit.send(Event::Message(ServerMessage::GroupCounts(c)));
                        }
                        other => permit.send(Event::Message(other)),
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::transport::QuicCert;

    fn moved(ws: Option<&str>, quic: Option<&str>) -> Moved {
        Moved {
            ws: ws.map(Into::into),
            quic: quic.map(Into::into),
            lp: None,
            message: "elsewhere".into(),
        }
    }

    #[test]
    fn moved_keeps_the_kind_of_transport_where_it_can() {
        let ws = Transport::ws("a:1");
        let quic = Transport::quic("a:2", "node.example", QuicCert::DangerousAcceptAny);
        let both = moved(Some("b:1"), Some("b:2"));
        assert_eq!(follow(&ws, &both), Some(Transport::ws("b:1")));
        assert_eq!(
            follow(&quic, &both),
            Some(Transport::quic(
                "b:2",
                "node.example",
                QuicCert::DangerousAcceptAny
            ))
        );
        assert_eq!(
            follow(&quic, &moved(Some("b:1"), None)),
            Some(Transport::ws("b:1"))
        );
        assert_eq!(follow(&ws, &moved(None, Some("b:2"))), None);
    }

    #[test]
    fn refusals_decide_what_comes_next() {
        let ws = Transport::ws("a:1");
        let m = ClientError::Moved(moved(Some("b:1"), None));
        assert_eq!(
            next_step(&m, true, &ws, 0, 3),
            Next::Follow(Transport::ws("b:1"))
        );
        assert_eq!(
            next_step(&m, false, &ws, 2, 3),
            Next::Follow(Transport::ws("b:1"))
        );
        assert_eq!(
            next_step(&m, true, &ws, 3, 3),
            Next::Retry,
            "a routing loop backs off"
        );
        let unauthorized = ClientError::Refused {
            code: ErrorCode::Unauthorized,
            message: "expired".into(),
        };
        assert_eq!(next_step(&unauthorized, true, &ws, 0, 3), Next::NeedToken);
        let timeout = ClientError::Refused {
            code: ErrorCode::Protocol,
            message: "heartbeat timeout".into(),
        };
        assert_eq!(next_step(&timeout, false, &ws, 0, 3), Next::Retry);
        assert_eq!(
            next_step(&ClientError::Closed, false, &ws, 0, 3),
            Next::Retry
        );
        let busy = ClientError::Refused {
            code: ErrorCode::Forbidden,
            message: "too many sessions".into(),
        };
        assert_eq!(next_step(&busy, true, &ws, 0, 3), Next::Retry);
        assert_eq!(
            next_step(&ClientError::Config("wss".into()), true, &ws, 0, 3),
            Next::End
        );
    }
}
