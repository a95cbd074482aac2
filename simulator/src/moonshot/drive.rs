//! Applies activity-model events to an engine, keeping only the sessions that are open (a
//! hash map, not replay's per-user table: at tens of millions of users the table would cost
//! more than the sessions).

use std::collections::HashMap;

use presence_core::{Disconnect, Engine, SessionId, UserId};
use serde::Serialize;

use crate::activity::{DEVICE_NAMES, Ending, Event, EventKind};

/// Engine calls refused, by kind (none are expected).
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Refused {
    pub connect: u64,
    pub other: u64,
    /// Events for a device with no open session (its session expired).
    pub no_session: u64,
}

/// One engine's driver.
pub struct Driver<'e> {
    pub engine: &'e Engine,
    pub base: u64,
    /// Build the welcome snapshot on connect, as a node does for each new session.
    pub welcome: bool,
    sessions: HashMap<u64, SessionId>,
    pub refused: Refused,
    pub events: u64,
    /// Friends' presences sent in welcomes.
    pub welcome_entries: u64,
}

#[inline]
fn key(user: u32, device: u8) -> u64 {
    (u64::from(user) << 2) | u64::from(device)
}

impl<'e> Driver<'e> {
    pub fn new(engine: &'e Engine, base: u64, welcome: bool) -> Self {
        Self {
            engine,
            base,
            welcome,
            sessions: HashMap::new(),
            refused: Refused::default(),
            events: 0,
            welcome_entries: 0,
        }
    }

    pub fn open_sessions(&self) -> usize {
        self.sessions.len()
    }

    /// Forgets sessions the engine expired.
    pub fn expired(&mut self, expired: &[SessionId]) {
        for sid in expired {
            for d in 0..3u8 {
                let k = key(sid.user, d);
                if self.sessions.get(&k) == Some(sid) {
                    self.sessions.remove(&k);
                }
            }
        }
    }

    pub fn event(&mut self, ev: &Event) {
        self.events += 1;
        let now = self.base + ev.at;
        let u = ev.user;
        let e = self.engine;
        match ev.kind {
            EventKind::Connect { device } => {
                let name = DEVICE_NAMES[device as usize];
                let res = if self.welcome {
                    e.connect(UserId(u), name, now).map(|w| {
                        self.welcome_entries += w.friends.len() as u64;
                        w.session
                    })
                } else {
                    e.connect_bare(UserId(u), name, now).map(|(s, _)| s)
                };
                match res {
                    Ok(s) => {
                        self.sessions.insert(key(u, device), s);
                    }
                    Err(_) => self.refused.connect += 1,
                }
            }
            EventKind::Disconnect { device, how } => {
                let Some(sid) = self.sessions.remove(&key(u, device)) else {
                    self.refused.no_session += 1;
                    return;
                };
                let res = match how {
                    Ending::Dropped => e.disconnect(sid, Disconnect::Dropped, now),
                    Ending::LoggedOut => e.disconnect(sid, Disconnect::LoggedOut, now),
                    Ending::Vanished => Ok(()),
                };
                self.refused.other += u64::from(res.is_err());
            }
            EventKind::Activity { device } | EventKind::Heartbeat { device } => {
                let Some(&sid) = self.sessions.get(&key(u, device)) else {
                    self.refused.no_session += 1;
                    return;
                };
                let res = if matches!(ev.kind, EventKind::Activity { .. }) {
                    e.activity(sid, now)
                } else {
                    e.heartbeat(sid, now)
                };
                self.refused.other += u64::from(res.is_err());
            }
            EventKind::Status(s) => {
                let res = e.set_status(UserId(u), s, None, now);
                self.refused.other += u64::from(res.is_err());
            }
        }
    }
}
