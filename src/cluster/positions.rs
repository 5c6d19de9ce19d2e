//! WAL positions that every session of this pgfleet shares, for the consistency levels (docs/routing.md,
//! "Consistency levels"): the highest commit position acknowledged to any client (`global`), what each node
//! is known to have replayed (health checks and every session's probes feed it, so that one session's probe
//! spares the others theirs), the leads in flight to each node (a read may wait for another's answer instead
//! of asking its own), and the coalesced ask of the primary's current position (`universal`).

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use tokio::sync::{Mutex, MutexGuard, Notify};

use crate::protocol::lsn::Lsn;

/// The fleet-wide positions; one per pgfleet process, held by the fleet.
#[derive(Debug, Default)]
pub struct Positions {
    /// The highest commit position whose ReadyForQuery reached, or is about to reach, a client.
    acked: AtomicU64,
    /// How many asks of the primary's position were started; numbers the asks.
    asks_started: AtomicU64,
    /// One ask of the primary at a time; holds the number and answer of the last one that succeeded.
    ask: Mutex<Option<(u64, Lsn)>>,
    /// Requests that may commit without learning their position (a session whose fleet is the primary
    /// alone asks none: no read can go elsewhere), counted once they end ...
    untracked: AtomicU64,
    /// ... and while they run.
    untracked_running: AtomicU64,
    /// The count of `untracked` that `acked` is known to cover: a position asked of the primary after they
    /// ended.
    untracked_covered: AtomicU64,
}

impl Positions {
    /// Records a commit at `lsn`; called before the client is told the commit finished, so that any read
    /// that starts after the client could know of the commit finds it here.
    pub fn acknowledged(&self, lsn: Lsn) {
        self.acked.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// The highest acknowledged commit position (zero before the first).
    pub fn acked(&self) -> Lsn {
        Lsn(self.acked.load(Ordering::Acquire))
    }

    /// Marks a request that may commit without a position, from before it reaches the primary until its
    /// client has the answer (the guard's drop, on every path): a read that starts after the client could
    /// know of the commit sees it as running or as ended, never as neither.
    pub fn untracked_commit(&self) -> UntrackedCommit<'_> {
        self.untracked_running.fetch_add(1, Ordering::SeqCst);
        UntrackedCommit { positions: self }
    }

    /// Whether commits may have been acknowledged that `acked` does not cover; then the count to pass to
    /// [`Positions::cover`] with a primary position asked after this call.
    pub fn uncovered(&self) -> Option<u64> {
        // Running first: a request that ends between the two loads has already been counted as ended.
        let running = self.untracked_running.load(Ordering::SeqCst);
        let ended = self.untracked.load(Ordering::SeqCst);
        (running > 0 || ended > self.untracked_covered.load(Ordering::SeqCst)).then_some(ended)
    }

    /// Records `lsn`, a primary position asked after [`Positions::uncovered`] gave `count`: it covers the
    /// commits counted so far.
    pub fn cover(&self, count: u64, lsn: Lsn) {
        self.acknowledged(lsn);
        self.untracked_covered.fetch_max(count, Ordering::SeqCst);
    }

    /// Starts a coalesced ask of the primary's current position: an answer to an ask that started after
    /// this call, or the caller's turn to ask (then [`PrimaryTurn::answer`] shares what it learnt).
    pub async fn primary_position(&self) -> PrimaryAsk<'_> {
        let arrived = self.asks_started.load(Ordering::Acquire);
        let guard = self.ask.lock().await;
        if let Some((number, lsn)) = *guard
            && number > arrived
        {
            // Asked after this read began: at least as new as an answer of our own.
            return PrimaryAsk::Known(lsn);
        }
        let number = self.asks_started.fetch_add(1, Ordering::AcqRel) + 1;
        PrimaryAsk::Turn(PrimaryTurn { guard, number })
    }
}

/// A request that may commit without a position, running (see [`Positions::untracked_commit`]).
pub struct UntrackedCommit<'a> {
    positions: &'a Positions,
}

impl Drop for UntrackedCommit<'_> {
    fn drop(&mut self) {
        // Counted as ended before it stops counting as running (see `uncovered`).
        self.positions.untracked.fetch_add(1, Ordering::SeqCst);
        self.positions.untracked_running.fetch_sub(1, Ordering::SeqCst);
    }
}

/// What [`Positions::primary_position`] gives.
pub enum PrimaryAsk<'a> {
    /// A position the primary had after the caller arrived.
    Known(Lsn),
    /// Nobody asked since the caller arrived: ask, then call [`PrimaryTurn::answer`].
    Turn(PrimaryTurn<'a>),
}

/// The right to ask the primary for everyone waiting; dropping it without an answer lets the next waiter ask.
pub struct PrimaryTurn<'a> {
    guard: MutexGuard<'a, Option<(u64, Lsn)>>,
    number: u64,
}

impl PrimaryTurn<'_> {
    /// Shares the primary's answer with the asks waiting behind this one.
    pub fn answer(mut self, lsn: Lsn) {
        *self.guard = Some((self.number, lsn));
    }
}

/// What one node is known to have replayed: the latest health check, raised by every probe a session makes.
/// It also counts the lead questions in flight to the node, so that a read about to ask can wait for an
/// answer already on its way instead (`await_lead`).
#[derive(Debug, Default)]
pub struct ReplayKnowledge {
    lsn: AtomicU64,
    /// Lead questions written to the node whose answers have not come back.
    leads: AtomicU32,
    /// Woken each time a lead in flight answers or ends without an answer.
    lead_ended: Notify,
}

impl ReplayKnowledge {
    /// The best known replayed position; None when nothing is known.
    pub fn get(&self) -> Option<Lsn> {
        match self.lsn.load(Ordering::Acquire) {
            0 => None,
            l => Some(Lsn(l)),
        }
    }

    /// Whether the node is known to have replayed `lsn`: a read that must see `lsn` may run there unasked.
    pub fn covers(&self, lsn: Lsn) -> bool {
        self.get().is_some_and(|l| l >= lsn)
    }

    /// A session saw the node at `lsn` (a probe's answer): knowledge only grows this way.
    pub fn saw(&self, lsn: Lsn) {
        self.lsn.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// A health check's word, which replaces what was known: a node that went down, restarted, was rebuilt
    /// or promoted may stand behind what probes saw before (None: nothing is known).
    pub fn checked(&self, lsn: Option<Lsn>) {
        self.lsn.store(lsn.map_or(0, |l| l.0), Ordering::Release);
    }

    /// Whether a lead question to this node is on its way (see `await_lead`).
    pub fn lead_in_flight(&self) -> bool {
        self.leads.load(Ordering::Acquire) != 0
    }

    /// Waits for the next lead in flight to this node to answer (or end unanswered); returns at once when none
    /// is in flight. Knowledge is then at least that answer, which is all a waiting read may rely on: the
    /// answer says where the node stood when the lead ran, earlier than any read sent after it arrived.
    pub async fn await_lead(&self) {
        let ended = self.lead_ended.notified();
        tokio::pin!(ended);
        // Registered before the count is read: an answer between the two still wakes this wait.
        ended.as_mut().enable();
        if !self.lead_in_flight() {
            return;
        }
        tracing::debug!("waiting for the answer of a lead in flight to this node");
        ended.await;
    }

    fn lead_started(&self) {
        self.leads.fetch_add(1, Ordering::AcqRel);
    }

    /// Publishes before waking: a woken read finds the answer in `get`.
    fn lead_ended(&self, answer: Option<Lsn>) {
        if let Some(lsn) = answer {
            self.saw(lsn);
        }
        self.leads.fetch_sub(1, Ordering::AcqRel);
        self.lead_ended.notify_waiters();
    }
}

/// A lead question in flight to one node, from the write that carries it until its answer (or the request's
/// end): the reads that wait on the node (`ReplayKnowledge::await_lead`) learn its answer from it.
#[derive(Debug)]
pub(crate) struct LeadInFlight {
    node: Arc<super::Node>,
    open: bool,
}

impl LeadInFlight {
    /// Counts a lead about to be written to `node`.
    pub(crate) fn start(node: Arc<super::Node>) -> LeadInFlight {
        node.replayed.lead_started();
        tracing::debug!(node = %node.target.name, "lead question in flight");
        LeadInFlight { node, open: true }
    }

    /// The lead's answer (None: the node sent none we could read): published, then the waiters woken.
    pub(crate) fn answered(&mut self, lsn: Option<Lsn>) {
        if std::mem::take(&mut self.open) {
            self.node.replayed.lead_ended(lsn);
        }
    }
}

impl Drop for LeadInFlight {
    fn drop(&mut self) {
        self.answered(None);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;

    #[test]
    fn acknowledged_positions_only_grow() {
        let p = Positions::default();
        assert_eq!(p.acked(), Lsn::ZERO);
        p.acknowledged(Lsn(300));
        p.acknowledged(Lsn(200));
        assert_eq!(p.acked(), Lsn(300));
    }

    #[test]
    fn untracked_commits_are_uncovered_until_a_later_position_covers_them() {
        let p = Positions::default();
        assert_eq!(p.uncovered(), None);
        let running = p.untracked_commit();
        // Running: a read must ask, and what it learns cannot cover a commit still to be counted.
        assert_eq!(p.uncovered(), Some(0));
        p.cover(0, Lsn(100));
        assert_eq!(p.uncovered(), Some(0));
        drop(running);
        assert_eq!(p.uncovered(), Some(1));
        // A position asked after the count covers it, and raises the acknowledged position.
        p.cover(1, Lsn(200));
        assert_eq!((p.uncovered(), p.acked()), (None, Lsn(200)));
        // Two more, one covered by an answer that came back late (count 2): the last is still uncovered.
        drop(p.untracked_commit());
        let count = p.uncovered();
        drop(p.untracked_commit());
        assert_eq!(count, Some(2));
        p.cover(2, Lsn(150));
        assert_eq!((p.uncovered(), p.acked()), (Some(3), Lsn(200)));
        p.cover(3, Lsn(250));
        assert_eq!((p.uncovered(), p.acked()), (None, Lsn(250)));
    }

    #[test]
    fn probes_raise_knowledge_and_checks_replace_it() {
        let k = ReplayKnowledge::default();
        assert_eq!(k.get(), None);
        k.saw(Lsn(50));
        k.saw(Lsn(40));
        assert_eq!(k.get(), Some(Lsn(50)));
        k.checked(Some(Lsn(10)));
        assert_eq!(k.get(), Some(Lsn(10)));
        k.checked(None);
        assert_eq!(k.get(), None);
    }

    #[tokio::test]
    async fn a_read_waits_for_the_lead_in_flight_and_finds_its_answer() {
        let k = ReplayKnowledge::default();
        assert!(
            k.await_lead().now_or_never().is_some(),
            "no lead in flight: nothing to wait for"
        );
        k.lead_started();
        assert!(
            k.await_lead().now_or_never().is_none(),
            "a lead in flight: the read waits"
        );
        let waiter = async {
            k.await_lead().await;
            k.get()
        };
        let answer = async {
            tokio::task::yield_now().await;
            k.lead_ended(Some(Lsn(70)));
        };
        let (seen, ()) = tokio::join!(waiter, answer);
        assert_eq!(
            seen,
            Some(Lsn(70)),
            "the answer is published before the waiter wakes"
        );
        assert!(
            k.await_lead().now_or_never().is_some(),
            "the lead ended: nothing in flight"
        );
    }

    #[tokio::test]
    async fn a_lead_that_ends_unanswered_still_wakes_its_waiters() {
        let k = ReplayKnowledge::default();
        k.lead_started();
        k.lead_started();
        let waiter = async {
            k.await_lead().await;
            k.get()
        };
        let end = async {
            tokio::task::yield_now().await;
            k.lead_ended(None);
        };
        let (seen, ()) = tokio::join!(waiter, end);
        assert_eq!(seen, None, "nothing learnt from a lead without an answer");
        assert!(
            k.await_lead().now_or_never().is_none(),
            "the second lead is still in flight"
        );
        k.lead_ended(Some(Lsn(5)));
        assert!(k.await_lead().now_or_never().is_some());
        assert!(k.covers(Lsn(5)) && !k.covers(Lsn(6)));
    }

    #[tokio::test]
    async fn reads_that_arrive_during_an_ask_share_the_next_one() {
        let p = Positions::default();
        let PrimaryAsk::Turn(first) = p.primary_position().await else {
            panic!("the first ask must query");
        };
        // Two reads arrive while the first ask is in flight. Its answer may predate them, so one of them
        // asks again, and the other takes that answer instead of a third query.
        let second = async {
            match p.primary_position().await {
                PrimaryAsk::Turn(t) => {
                    tokio::task::yield_now().await;
                    t.answer(Lsn(9));
                    None
                }
                PrimaryAsk::Known(l) => Some(l),
            }
        };
        let third = async {
            match p.primary_position().await {
                PrimaryAsk::Turn(t) => {
                    t.answer(Lsn(9));
                    None
                }
                PrimaryAsk::Known(l) => Some(l),
            }
        };
        let answer_first = async {
            tokio::task::yield_now().await;
            first.answer(Lsn(5));
        };
        let (a, b, ()) = tokio::join!(second, third, answer_first);
        let mut got = [a, b];
        got.sort();
        assert_eq!(
            got,
            [None, Some(Lsn(9))],
            "one asks, the other reuses its answer, never the older 5"
        );
    }
}
