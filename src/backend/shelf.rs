//! Transaction pooling's shelf: the connections sessions gave back between transactions, kept beside the
//! pool's own queue for the next checkout of the same pool.
//!
//! A checkout and a return through deadpool take its slot lock and its semaphore's lock, run its (empty)
//! hook lists, read the clock for its metrics and upgrade a weak handle: about 960 instructions per
//! one-statement transaction under transaction pooling, an eighth of pgfleet's whole cost for it
//! (docs/performance.md, "Twenty-eighth pass"). A connection on the shelf stays checked out as far as
//! deadpool knows, so the pool's cap still counts it, and comes off the shelf with one uncontended lock.
//!
//! The pool's queue stays the fair one: while a checkout waits there, no connection is put on the shelf
//! and none is taken from it, so that a checkout arriving later cannot overtake a waiting one. A waiting
//! checkout looks at the shelf once after it is counted; a return that finds a waiter after shelving hands
//! a connection to the queue instead, so one of the two always sees the other.

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Connections (`T`) given back between transactions, most recently used on top.
pub(crate) struct Shelf<T> {
    stock: Mutex<Stock<T>>,
    /// Checkouts waiting in the pool's own queue.
    waiting: AtomicUsize,
    /// Whether returns may be shelved: not for a pool that is closed or has more connections than its cap,
    /// whose queue closes the connections that come back.
    open: AtomicBool,
}

struct Stock<T> {
    /// Each with the reap count when it was put here.
    items: Vec<(T, u64)>,
    /// How many times [`Shelf::reap`] ran.
    reaps: u64,
}

impl<T> Default for Shelf<T> {
    fn default() -> Self {
        Shelf {
            stock: Mutex::new(Stock {
                items: Vec::new(),
                reaps: 0,
            }),
            waiting: AtomicUsize::new(0),
            open: AtomicBool::new(true),
        }
    }
}

impl<T> Shelf<T> {
    fn stock(&self) -> std::sync::MutexGuard<'_, Stock<T>> {
        // The lock is never held across code that can panic; a poisoned one still holds a valid stock.
        self.stock.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The most recently shelved connection, unless a checkout waits in the pool's queue (it comes first).
    pub(crate) fn take(&self) -> Option<T> {
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return None;
        }
        self.stock().items.pop().map(|(item, _)| item)
    }

    /// Shelves a connection given back; hands it (or another shelved one) back to the caller when it must
    /// go to the pool's queue instead: a checkout waits there, or the shelf is closed.
    #[must_use = "a connection handed back goes to the pool's queue"]
    pub(crate) fn put(&self, item: T) -> Option<T> {
        if self.waiting.load(Ordering::SeqCst) > 0 || !self.open.load(Ordering::Relaxed) {
            return Some(item);
        }
        {
            let mut stock = self.stock();
            let reaps = stock.reaps;
            stock.items.push((item, reaps));
        }
        // A checkout that started waiting meanwhile may have looked at the shelf before the push.
        if self.waiting.load(Ordering::SeqCst) > 0 {
            return self.stock().items.pop().map(|(item, _)| item);
        }
        None
    }

    /// Counts a checkout as waiting in the pool's queue until the returned guard is dropped; the guard
    /// takes a shelved connection that came before the count.
    pub(crate) fn wait(&self) -> Waiting<'_, T> {
        self.waiting.fetch_add(1, Ordering::SeqCst);
        Waiting { shelf: self }
    }

    /// One more reaping: takes off the connections shelved at least `reaps` reapings ago (idle since).
    pub(crate) fn reap(&self, reaps: u64) -> Vec<T> {
        let mut stock = self.stock();
        stock.reaps += 1;
        let now = stock.reaps;
        let (old, kept): (Vec<_>, Vec<_>) = std::mem::take(&mut stock.items)
            .into_iter()
            .partition(|(_, at)| now - at >= reaps);
        stock.items = kept;
        old.into_iter().map(|(item, _)| item).collect()
    }

    /// Opens or closes the shelf; closing takes every shelved connection off, for the pool's queue.
    pub(crate) fn set_open(&self, open: bool) -> Vec<T> {
        self.open.store(open, Ordering::Relaxed);
        if open {
            return Vec::new();
        }
        std::mem::take(&mut self.stock().items)
            .into_iter()
            .map(|(item, _)| item)
            .collect()
    }

    /// Whether returns are shelved.
    pub(crate) fn is_open(&self) -> bool {
        self.open.load(Ordering::Relaxed)
    }

    /// Connections on the shelf.
    pub(crate) fn len(&self) -> usize {
        self.stock().items.len()
    }
}

/// A checkout counted as waiting in the pool's queue ([`Shelf::wait`]).
pub(crate) struct Waiting<'a, T> {
    shelf: &'a Shelf<T>,
}

impl<T> Waiting<'_, T> {
    /// A connection shelved before this checkout was counted: it would otherwise stay there while the
    /// checkout waits.
    pub(crate) fn take(&self) -> Option<T> {
        self.shelf.stock().items.pop().map(|(item, _)| item)
    }
}

impl<T> Drop for Waiting<'_, T> {
    fn drop(&mut self) {
        self.shelf.waiting.fetch_sub(1, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_connection_given_back_is_the_first_taken() {
        let shelf = Shelf::default();
        assert_eq!(shelf.put(1), None);
        assert_eq!(shelf.put(2), None);
        assert_eq!(shelf.len(), 2);
        assert_eq!(shelf.take(), Some(2));
        assert_eq!(shelf.take(), Some(1));
        assert_eq!(shelf.take(), None);
    }

    #[test]
    fn while_a_checkout_waits_in_the_queue_the_shelf_is_passed_by() {
        let shelf = Shelf::default();
        assert_eq!(shelf.put(1), None);
        let waiting = shelf.wait();
        // A later checkout does not overtake the waiting one, and a return goes to the queue it waits in.
        assert_eq!(shelf.take(), None);
        assert_eq!(shelf.put(2), Some(2));
        // The waiting checkout itself takes what was shelved before it was counted.
        assert_eq!(waiting.take(), Some(1));
        assert_eq!(waiting.take(), None);
        drop(waiting);
        assert_eq!(shelf.put(3), None);
        assert_eq!(shelf.take(), Some(3));
    }

    #[test]
    fn a_closed_shelf_hands_back_what_it_held_and_what_comes_back() {
        let shelf = Shelf::default();
        assert_eq!(shelf.put(1), None);
        assert_eq!(shelf.put(2), None);
        assert_eq!(shelf.set_open(false), vec![1, 2]);
        assert!(!shelf.is_open());
        assert_eq!(shelf.put(3), Some(3));
        assert_eq!(shelf.take(), None);
        assert_eq!(shelf.set_open(true), Vec::<i32>::new());
        assert_eq!(shelf.put(4), None);
        assert_eq!(shelf.take(), Some(4));
    }

    #[test]
    fn reaping_takes_off_what_stayed_for_the_given_number_of_reapings() {
        let shelf = Shelf::default();
        assert_eq!(shelf.put("old"), None);
        assert_eq!(shelf.reap(3), Vec::<&str>::new());
        assert_eq!(shelf.put("newer"), None);
        assert_eq!(shelf.reap(3), Vec::<&str>::new());
        // Third reaping since "old" was shelved, second since "newer".
        assert_eq!(shelf.reap(3), vec!["old"]);
        assert_eq!(shelf.len(), 1);
        // A connection used again is shelved anew, with the current count.
        assert_eq!(shelf.take(), Some("newer"));
        assert_eq!(shelf.put("newer"), None);
        assert_eq!(shelf.reap(3), Vec::<&str>::new());
        assert_eq!(shelf.reap(3), Vec::<&str>::new());
        assert_eq!(shelf.reap(3), vec!["newer"]);
        assert_eq!(shelf.len(), 0);
    }
}
