//! Cluster mode: users' custom statuses on their way to the store. A status lives in its
//! owner's memory; written to PostgreSQL too, it is loaded with the slot by the next owner,
//! so a failover or a handover never shows an invisible user online or drops a busy text.
//!
//! ```text
//! client `status` ─> Service::dispatch ─> StatusLog::record (latest per user)
//! writer task, every WRITE_EVERY ─> StatusLog::take ─> Store::put_statuses ─(failed)─> requeue
//! slot load ─> Store::load_statuses ─> Service::restore_statuses (before the slot is served)
//! ```

use std::collections::HashMap;

use parking_lot::Mutex;
use presence_core::Status;
use presence_pg::StatusRow;

/// The statuses set since the last write, latest per user.
#[derive(Default)]
pub struct StatusLog {
    pending: Mutex<HashMap<String, (Status, Option<String>)>>,
}

impl StatusLog {
    /// `user` set `status` (and `text`) just now.
    pub fn record(&self, user: &str, status: Status, text: Option<&str>) {
        let text = text.filter(|t| !t.is_empty()).map(str::to_owned);
        self.pending.lock().insert(user.to_owned(), (status, text));
    }

    /// Everything recorded since the last call, as the store's rows.
    pub fn take(&self) -> Vec<StatusRow> {
        let pending = std::mem::take(&mut *self.pending.lock());
        pending
            .into_iter()
            .map(|(user, (status, text))| StatusRow {
                user,
                status: status.as_str().to_owned(),
                text,
            })
            .collect()
    }

    /// Rows whose write failed go back, unless the user set a newer status since.
    pub fn requeue(&self, rows: Vec<StatusRow>) {
        let mut pending = self.pending.lock();
        for r in rows {
            let Some(status) = Status::parse(&r.status) else {
                continue;
            };
            pending.entry(r.user).or_insert((status, r.text));
        }
    }

    /// Statuses waiting to be written.
    pub fn len(&self) -> usize {
        self.pending.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_latest_status_of_a_user_is_written_and_a_failed_write_does_not_undo_a_newer_one() {
        let log = StatusLog::default();
        log.record("a", Status::Busy, Some("meeting"));
        log.record("a", Status::Invisible, Some(""));
        log.record("b", Status::Dnd, None);
        let mut rows = log.take();
        rows.sort_by(|x, y| x.user.cmp(&y.user));
        assert_eq!(rows.len(), 2);
        assert_eq!(
            (rows[0].status.as_str(), rows[0].text.as_deref()),
            ("invisible", None)
        );
        assert_eq!(rows[1].status, "dnd");
        assert!(log.is_empty());
        // The write failed; meanwhile b went available.
        log.record("b", Status::Available, None);
        log.requeue(rows);
        let mut again = log.take();
        again.sort_by(|x, y| x.user.cmp(&y.user));
        assert_eq!(again[0].status, "invisible");
        assert_eq!(again[1].status, "available");
    }
}
