//! Large transactions a forwarded database's change stream has open: how many the replicas apply while they
//! run on the primary, how many the feed holds in files until their commit (beyond
//! `replication.max_streamed_transactions`), and how many bytes those files take. The feed keeps the numbers
//! as it reads the stream; `SHOW REPLICATION` and `/metrics` read them, so that an operator sees a held
//! transaction and the disk it takes before the disk runs out, not only in the log.
//!
//! The feed's view of the stream is rebuilt whenever the stream starts over, so every number here is one of
//! the current stream: what a stream that ended had open is taken back when its state is dropped.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// One database's open streamed transactions, shared between its feed (writer) and the reports (readers).
#[derive(Debug, Default)]
pub struct StreamedLoad {
    /// Streamed transactions begun and not yet ended, held ones included.
    open: AtomicU64,
    held: AtomicU64,
    held_bytes: AtomicU64,
    held_total: AtomicU64,
}

/// The numbers of a [`StreamedLoad`] at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamedCounts {
    /// Applied while they run.
    pub applying: u64,
    /// Held in files until their commit.
    pub held: u64,
    /// Bytes of those files.
    pub held_bytes: u64,
    /// Held since pgfleet started.
    pub held_total: u64,
}

impl StreamedLoad {
    /// All the numbers at once, for a report.
    pub fn counts(&self) -> StreamedCounts {
        StreamedCounts {
            applying: self.applying(),
            held: self.held(),
            held_bytes: self.held_bytes(),
            held_total: self.held_total(),
        }
    }

    /// Streamed transactions the replicas apply while they run, each on a connection of its own per replica.
    pub fn applying(&self) -> u64 {
        // The two counts move one after the other; a reader between them must not see a wrapped number.
        self.open.load(Relaxed).saturating_sub(self.held.load(Relaxed))
    }

    /// Streamed transactions held in files until their commit.
    pub fn held(&self) -> u64 {
        self.held.load(Relaxed)
    }

    /// Bytes written to the files of the transactions held now.
    pub fn held_bytes(&self) -> u64 {
        self.held_bytes.load(Relaxed)
    }

    /// Transactions held since pgfleet started.
    pub fn held_total(&self) -> u64 {
        self.held_total.load(Relaxed)
    }

    pub(crate) fn hold(&self) {
        self.held.fetch_add(1, Relaxed);
        self.held_total.fetch_add(1, Relaxed);
    }

    pub(crate) fn wrote(&self, bytes: u64) {
        self.held_bytes.fetch_add(bytes, Relaxed);
    }

    /// A held transaction of `bytes` ended (committed and read back, aborted, or its stream ended).
    pub(crate) fn release(&self, bytes: u64) {
        self.held.fetch_sub(1, Relaxed);
        self.held_bytes.fetch_sub(bytes, Relaxed);
    }
}

/// The feed's set of streamed transactions begun and not yet ended, which keeps [`StreamedLoad`]'s count of
/// open ones; dropping it (the stream ended) takes them back.
pub(crate) struct OpenStreams {
    xids: HashSet<u32>,
    load: Arc<StreamedLoad>,
}

impl OpenStreams {
    pub(crate) fn new(load: Arc<StreamedLoad>) -> Self {
        Self {
            xids: HashSet::new(),
            load,
        }
    }

    /// Notes `xid` open; false when it already was (a later block of it).
    pub(crate) fn insert(&mut self, xid: u32) -> bool {
        let new = self.xids.insert(xid);
        if new {
            self.load.open.fetch_add(1, Relaxed);
        }
        new
    }

    /// `xid` ended (committed or aborted).
    pub(crate) fn remove(&mut self, xid: u32) {
        if self.xids.remove(&xid) {
            self.load.open.fetch_sub(1, Relaxed);
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.xids.len()
    }

    pub(crate) fn is_empty(&self) -> bool {
        self.xids.is_empty()
    }
}

impl Drop for OpenStreams {
    fn drop(&mut self) {
        self.load.open.fetch_sub(self.xids.len() as u64, Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_streams_count_each_transaction_once_and_give_them_back_when_dropped() {
        let load = Arc::new(StreamedLoad::default());
        let mut open = OpenStreams::new(load.clone());
        assert!(open.insert(7));
        assert!(!open.insert(7), "a later block of the same transaction");
        assert!(open.insert(8));
        assert_eq!(load.applying(), 2);
        load.hold();
        load.wrote(100);
        assert_eq!((load.applying(), load.held(), load.held_bytes()), (1, 1, 100));
        open.remove(7);
        open.remove(7);
        assert_eq!(open.len(), 1);
        drop(open);
        assert_eq!(load.open.load(Relaxed), 0);
        load.release(100);
        assert_eq!(
            (load.applying(), load.held(), load.held_bytes(), load.held_total()),
            (0, 0, 0, 1)
        );
    }

    #[test]
    fn applying_never_wraps_while_a_held_one_is_counted_before_it_is_open() {
        let load = StreamedLoad::default();
        load.hold();
        assert_eq!(load.applying(), 0);
    }
}
