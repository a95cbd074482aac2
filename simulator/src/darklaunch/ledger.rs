//! Chat's acknowledged-vs-delivered ledger.
//!
//! Each host keeps, for the devices it drives, what a real client keeps: its inbox cursor (the
//! highest `seq` it has read, sent as `after` on every hello) and its sends not yet answered
//! `sent` (sent again, same id, on every new connection). It records every send acknowledged
//! (chat seq → `msg_id`) and every inbox entry its devices received, once per (recipient,
//! chat seq), whether live, on a resume or read back at the end. The driver merges the hosts'
//! ledgers ([`Reconcile`]) and checks that every acknowledged message reached its recipient.

use std::collections::{BTreeMap, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use std::time::{Duration, Instant};

use anyhow::Result;

use super::Driver;
use super::proto::{Cmd, ConnectSpec, Reply};

/// One device's chat state, kept across its connections.
#[derive(Debug, Default)]
pub struct DeviceChat {
    /// The highest inbox seq this device has read (0: none yet; the whole inbox).
    pub cursor: u64,
    /// Sends not yet answered `sent`: chat seq → the `send` frame.
    pub pending: BTreeMap<u64, String>,
    /// Of those, the ones written on the current connection and not refused: the node owes
    /// them an answer. The others are sent again, a few at a time (the node's per-session
    /// rate limit closes a connection that floods it).
    pub inflight: HashSet<u64>,
    /// Of those, the ones sent again: their `sent` is counted, not timed (their wait includes
    /// the device's time without a connection).
    pub resent: HashSet<u64>,
    /// How to connect it again (the last connect the driver asked for).
    pub spec: Option<ConnectSpec>,
}

/// How an inbox entry reached a device of its recipient.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum How {
    /// Pushed to a connected device after its welcome.
    Live,
    /// Read on a hello with `after` (the backlog up to the welcome's `inbox_seq`).
    Resume,
    /// Read back after the run by a reader device (the recipient had no device online).
    Read,
}

/// One delivery: the message id and the recipient's inbox seq it was stored at.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
pub struct Delivery {
    pub msg_id: u64,
    pub inbox_seq: u64,
    pub how: How,
}

/// A host's ledger ([`LedgerWire`] between processes).
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Chat seq → the `msg_id` of its `sent`.
    pub acked: HashMap<u64, u64>,
    /// Sends acknowledged twice with different message ids.
    pub ack_conflicts: u64,
    /// (recipient, chat seq) → the first delivery seen.
    pub delivered: HashMap<(u32, u64), Delivery>,
    /// (recipient, chat seq) seen at two inbox seqs or with two message ids: stored twice.
    pub stored_twice: Vec<(u32, u64)>,
    /// `sent` answers to sends sent again (the same id after a reconnect or at the end).
    pub resent: u64,
    /// Sends written again with their id (on a new connection, or by the settle).
    pub sends_resent: u64,
}

impl DeviceChat {
    /// Up to `cap` unanswered sends not in flight, in sending order, now in flight and marked
    /// as sent again; and whether more are left.
    pub fn take_retries(&mut self, cap: usize) -> (Vec<String>, bool) {
        let mut out = Vec::new();
        let mut more = false;
        for (&seq, frame) in &self.pending {
            if self.inflight.contains(&seq) {
                continue;
            }
            if out.len() == cap {
                more = true;
                break;
            }
            out.push(frame.clone());
            self.inflight.insert(seq);
            self.resent.insert(seq);
        }
        (out, more)
    }
}

impl Ledger {
    /// A `sent` for chat seq `seq`; true the first time.
    pub fn acked(&mut self, seq: u64, msg_id: u64) -> bool {
        match self.acked.insert(seq, msg_id) {
            None => true,
            Some(before) => {
                if before != msg_id {
                    self.ack_conflicts += 1;
                }
                self.resent += 1;
                false
            }
        }
    }

    /// An inbox entry of `recipient` carrying chat seq `seq`.
    pub fn delivered(&mut self, recipient: u32, seq: u64, d: Delivery) {
        match self.delivered.get(&(recipient, seq)) {
            None => {
                self.delivered.insert((recipient, seq), d);
            }
            Some(e) if e.inbox_seq != d.inbox_seq || e.msg_id != d.msg_id => {
                self.stored_twice.push((recipient, seq));
            }
            Some(_) => {}
        }
    }

    /// The wire form (JSON maps take only string keys).
    pub fn to_wire(&self) -> LedgerWire {
        LedgerWire {
            acked: self.acked.iter().map(|(&s, &m)| (s, m)).collect(),
            ack_conflicts: self.ack_conflicts,
            delivered: self
                .delivered
                .iter()
                .map(|(&(r, s), &d)| (r, s, d))
                .collect(),
            stored_twice: self.stored_twice.clone(),
            resent: self.resent,
            sends_resent: self.sends_resent,
        }
    }

    pub fn from_wire(w: LedgerWire) -> Ledger {
        Ledger {
            acked: w.acked.into_iter().collect(),
            ack_conflicts: w.ack_conflicts,
            delivered: w
                .delivered
                .into_iter()
                .map(|(r, s, d)| ((r, s), d))
                .collect(),
            stored_twice: w.stored_twice,
            resent: w.resent,
            sends_resent: w.sends_resent,
        }
    }

    /// Folds another host's ledger in (devices of one user may sit on two hosts).
    pub fn merge(&mut self, o: Ledger) {
        for (s, m) in o.acked {
            self.acked(s, m);
        }
        self.resent += o.resent;
        self.sends_resent += o.sends_resent;
        self.ack_conflicts += o.ack_conflicts;
        self.stored_twice.extend(o.stored_twice);
        for ((r, s), d) in o.delivered {
            self.delivered(r, s, d);
        }
    }
}

/// [`Ledger`] as it crosses a pipe.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct LedgerWire {
    pub acked: Vec<(u64, u64)>,
    pub ack_conflicts: u64,
    pub delivered: Vec<(u32, u64, Delivery)>,
    pub stored_twice: Vec<(u32, u64)>,
    pub resent: u64,
    #[serde(default)]
    pub sends_resent: u64,
}

/// The check's outcome, in the report.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LedgerOut {
    /// Sends answered `sent` (once each), by the end of the settle.
    pub acknowledged: u64,
    /// Of those, delivered to their recipient (an inbox entry with the acknowledged id).
    pub delivered: u64,
    /// How: live, on a resume (hello with `after`), read back after the run.
    pub delivered_live: u64,
    pub delivered_on_resume: u64,
    pub delivered_on_read: u64,
    /// Acknowledged and never found in the recipient's inbox.
    pub lost: u64,
    /// Delivered under another message id than the one acknowledged.
    pub wrong_msg_id: u64,
    /// Messages stored twice in one inbox (two seqs or two ids for one send).
    pub stored_twice: u64,
    /// Sends acknowledged with two different message ids.
    pub ack_conflicts: u64,
    /// Delivered, but the sender never got `sent` (in flight when its device left).
    pub delivered_unacknowledged: u64,
    /// Sends still unanswered after the settle (their devices could not reach a node).
    pub unanswered: u64,
    /// Sends written again with their id (after a reconnect, or by the settle), and `sent`
    /// answers to sends already acknowledged.
    pub sends_resent: u64,
    pub resent_answers: u64,
    /// Before the read-back: acknowledged messages not yet seen by any device of the
    /// recipient (most had no device online), and the users read back.
    pub missing_before_read: u64,
    pub users_read: u64,
    pub reads_failed: u64,
    /// Devices holding unanswered sends when the run ended (the settle sent them again).
    pub devices_pending_at_end: u64,
    pub settle_seconds: f64,
    /// A few lost or doubled messages, for the reader.
    pub examples: Vec<String>,
    pub rule: String,
}

impl LedgerOut {
    pub fn failed(&self) -> bool {
        self.lost > 0 || self.stored_twice > 0 || self.wrong_msg_id > 0 || self.ack_conflicts > 0
    }
}

/// The driver's merge of the hosts' ledgers against what it sent (`recipients[chat seq - 1]`).
pub struct Reconcile<'a> {
    pub recipients: &'a [u32],
    pub ledger: Ledger,
}

impl Reconcile<'_> {
    /// The recipient of chat seq `seq`.
    fn recipient(&self, seq: u64) -> Option<u32> {
        let i = usize::try_from(seq.checked_sub(1)?).ok()?;
        self.recipients.get(i).copied()
    }

    /// Recipients of acknowledged messages none of their devices has seen yet.
    pub fn missing_users(&self) -> (u64, Vec<u32>) {
        let mut users: Vec<u32> = Vec::new();
        let mut n = 0;
        for &seq in self.ledger.acked.keys() {
            if let Some(r) = self.recipient(seq)
                && !self.ledger.delivered.contains_key(&(r, seq))
            {
                n += 1;
                users.push(r);
            }
        }
        users.sort_unstable();
        users.dedup();
        (n, users)
    }

    /// The outcome.
    pub fn outcome(&self) -> LedgerOut {
        let l = &self.ledger;
        let mut o = LedgerOut {
            acknowledged: l.acked.len() as u64,
            ack_conflicts: l.ack_conflicts,
            resent_answers: l.resent,
            sends_resent: l.sends_resent,
            rule: "a send counts as acknowledged once its `sent` arrived (once per client id); \
                delivered once an inbox entry of its recipient carries it (once per recipient \
                and message, live, on a resume with `after`, or read back after the run with \
                `after: 0`); every acknowledged message must be delivered under the \
                acknowledged msg_id, at one inbox seq"
                .into(),
            ..LedgerOut::default()
        };
        let mut twice: Vec<(u32, u64)> = l.stored_twice.clone();
        twice.sort_unstable();
        twice.dedup();
        o.stored_twice = twice.len() as u64;
        for (r, s) in twice.iter().take(3) {
            o.examples
                .push(format!("chat:{s} stored twice in u{r}'s inbox"));
        }
        let mut acked: Vec<(&u64, &u64)> = l.acked.iter().collect();
        acked.sort_unstable();
        for (&seq, &msg_id) in acked {
            let Some(r) = self.recipient(seq) else {
                continue;
            };
            match l.delivered.get(&(r, seq)) {
                None => {
                    o.lost += 1;
                    if o.examples.len() < 6 {
                        o.examples.push(format!(
                            "chat:{seq} acknowledged as {msg_id:016x}, not in u{r}'s inbox"
                        ));
                    }
                }
                Some(d) => {
                    o.delivered += 1;
                    match d.how {
                        How::Live => o.delivered_live += 1,
                        How::Resume => o.delivered_on_resume += 1,
                        How::Read => o.delivered_on_read += 1,
                    }
                    if d.msg_id != msg_id {
                        o.wrong_msg_id += 1;
                    }
                }
            }
        }
        o.delivered_unacknowledged = l
            .delivered
            .keys()
            .filter(|(r, s)| !l.acked.contains_key(s) && self.recipient(*s) == Some(*r))
            .count() as u64;
        o
    }
}

/// How long the hosts may take to get their unanswered sends answered.
const SETTLE_MS: u64 = 120_000;

impl Driver<'_> {
    /// The settle after the run (chat on), in order: every host sends its devices'
    /// unanswered sends again (same ids) until answered; the hosts' ledgers are merged; the
    /// recipients of acknowledged messages that none of their devices read get their inbox
    /// read back whole; then acknowledged is checked against delivered.
    pub(super) async fn settle_chat(&mut self) -> Result<LedgerOut> {
        let t0 = Instant::now();
        let rs = self
            .request(
                |_, seq| Cmd::SettleChat {
                    seq,
                    timeout_ms: SETTLE_MS,
                },
                Duration::from_millis(SETTLE_MS + 15_000),
            )
            .await?;
        let (mut unanswered, mut devices_pending) = (0, 0);
        for r in rs {
            if let Reply::Settled {
                unanswered: u,
                pending_at_start: p,
                ..
            } = r
            {
                unanswered += u;
                devices_pending += p;
            }
        }
        let ledger = self.ledgers().await?;
        let (missing, users) = Reconcile {
            recipients: &self.chat_recipients,
            ledger,
        }
        .missing_users();
        let n = self.hosts.len().max(1);
        let mut per: Vec<Vec<(u32, String)>> = vec![Vec::new(); n];
        for &u in &users {
            if let Some(t) = self.tokens.get(u as usize) {
                per[u as usize % n].push((u, t.clone()));
            }
        }
        let read_timeout = Duration::from_secs(60) + Duration::from_millis(5 * users.len() as u64);
        let rs = self
            .request(
                |i, seq| Cmd::ReadInboxes {
                    seq,
                    users: per.get(i).cloned().unwrap_or_default(),
                },
                read_timeout,
            )
            .await?;
        let reads_failed = rs
            .iter()
            .map(|r| match r {
                Reply::Read { failed, .. } => *failed,
                _ => 0,
            })
            .sum();
        let ledger = self.ledgers().await?;
        let mut o = Reconcile {
            recipients: &self.chat_recipients,
            ledger,
        }
        .outcome();
        o.unanswered = unanswered;
        o.devices_pending_at_end = devices_pending;
        o.missing_before_read = missing;
        o.users_read = users.len() as u64;
        o.reads_failed = reads_failed;
        o.settle_seconds = t0.elapsed().as_secs_f64();
        Ok(o)
    }

    /// The hosts' ledgers, merged.
    async fn ledgers(&mut self) -> Result<Ledger> {
        let rs = self
            .request(|_, seq| Cmd::Ledger { seq }, Duration::from_secs(60))
            .await?;
        let mut all = Ledger::default();
        for r in rs {
            if let Reply::Ledger { ledger, .. } = r {
                all.merge(Ledger::from_wire(*ledger));
            }
        }
        Ok(all)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(msg_id: u64, inbox_seq: u64, how: How) -> Delivery {
        Delivery {
            msg_id,
            inbox_seq,
            how,
        }
    }

    #[test]
    fn acknowledged_against_delivered() {
        let recipients = [7, 8, 9, 7];
        let mut a = Ledger::default();
        assert!(a.acked(1, 100));
        assert!(a.acked(2, 200));
        assert!(!a.acked(2, 200), "a resent send's second answer");
        assert!(a.acked(3, 300));
        a.delivered(7, 1, d(100, 1, How::Live));
        a.delivered(7, 1, d(100, 1, How::Resume));
        let mut b = Ledger::default();
        b.delivered(8, 2, d(200, 4, How::Resume));
        b.delivered(7, 4, d(400, 2, How::Live));
        a.merge(b);
        let mut r = Reconcile {
            recipients: &recipients,
            ledger: a,
        };
        assert_eq!(r.missing_users(), (1, vec![9]));
        r.ledger.delivered(9, 3, d(300, 1, How::Read));
        r.ledger.delivered(9, 3, d(301, 2, How::Read));
        let o = r.outcome();
        assert_eq!((o.acknowledged, o.delivered, o.lost), (3, 3, 0));
        assert_eq!(
            (o.delivered_live, o.delivered_on_resume, o.delivered_on_read),
            (1, 1, 1)
        );
        assert_eq!((o.stored_twice, o.delivered_unacknowledged), (1, 1));
        assert_eq!(o.resent_answers, 1);
        assert!(o.failed());
    }
}
