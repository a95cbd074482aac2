//! Where a device stands in its user's inbox across connections: the `after` of the next
//! hello, and which entries are new ([`InboxCursor`]).

/// The highest inbox `seq` a device has had, kept across reconnects, so that a resume asks
/// for exactly what was missed and no `seq` is handed to the app twice.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct InboxCursor {
    /// `None` until known: the first hello then has no `after` (the node sends only new
    /// entries) and the welcome's `inbox_seq` becomes the position.
    last: Option<u64>,
    /// `sync` requests sent on this connection and not yet answered with `synced`: their
    /// entries are old on purpose and pass.
    syncs: u32,
}

impl InboxCursor {
    /// A cursor resuming after `after` (`Some(0)`: the whole inbox), or from the first
    /// welcome on (`None`).
    pub fn new(after: Option<u64>) -> InboxCursor {
        InboxCursor {
            last: after,
            syncs: 0,
        }
    }

    /// The `after` of the next hello.
    pub fn resume_after(&self) -> Option<u64> {
        self.last
    }

    /// A welcome arrived on a connection whose hello carried [`Self::resume_after`]: without
    /// an `after` the node sends entries after `inbox_seq` only, so that is where the device
    /// stands.
    pub fn on_welcome(&mut self, inbox_seq: u64) {
        self.syncs = 0;
        if self.last.is_none() {
            self.last = Some(inbox_seq);
        }
    }

    /// Whether the entry `seq` goes to the app: it is newer than anything before (and
    /// becomes the position), or a `sync` asked for it.
    pub fn accept(&mut self, seq: u64) -> bool {
        match self.last {
            Some(last) if seq <= last => self.syncs > 0,
            _ => {
                self.last = Some(seq);
                true
            }
        }
    }

    /// The app sent a `sync`.
    pub fn on_sync_sent(&mut self) {
        self.syncs = self.syncs.saturating_add(1);
    }

    /// The node answered a `sync` with `synced`.
    pub fn on_synced(&mut self) {
        self.syncs = self.syncs.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_device_starts_at_the_welcome_and_resumes_after_what_it_had() {
        let mut c = InboxCursor::new(None);
        assert_eq!(c.resume_after(), None);
        c.on_welcome(5);
        assert_eq!(c.resume_after(), Some(5));
        assert!(c.accept(6) && c.accept(7));
        assert_eq!(c.resume_after(), Some(7));
        // Reconnected with after = 7: the welcome does not move the position back or forth.
        c.on_welcome(9);
        assert_eq!(c.resume_after(), Some(7));
    }

    #[test]
    fn entries_at_or_below_the_position_are_dropped() {
        let mut c = InboxCursor::new(Some(3));
        c.on_welcome(10);
        let got: Vec<u64> = [2, 3, 4, 4, 5, 3, 7, 6, 8]
            .into_iter()
            .filter(|&s| c.accept(s))
            .collect();
        assert_eq!(got, [4, 5, 7, 8]);
        assert_eq!(c.resume_after(), Some(8));
    }

    #[test]
    fn a_sync_lets_old_entries_through_until_synced() {
        let mut c = InboxCursor::new(Some(5));
        c.on_welcome(5);
        c.on_sync_sent();
        assert!(c.accept(1) && c.accept(2));
        assert_eq!(
            c.resume_after(),
            Some(5),
            "old entries do not move the position"
        );
        c.on_synced();
        assert!(!c.accept(3));
        // A sync unanswered when the connection drops does not outlive it.
        c.on_sync_sent();
        c.on_welcome(5);
        assert!(!c.accept(4));
        c.on_synced();
        assert!(c.accept(6));
    }
}
