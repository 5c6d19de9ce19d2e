//! WAL positions that every session of this pgfleet shares, for the consistency levels (docs/routing.md,
//! "Consistency levels"): the highest commit position acknowledged to any client (`global`), what each node
//! is known to have replayed (health checks and every session's probes feed it, so that one session's probe
//! spares the others theirs), and the coalesced ask of the primary's current position (`universal`).

use std::sync::atomic::{AtomicU64, Ordering};

use tokio::sync::{Mutex, MutexGuard};

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
#[derive(Debug, Default)]
pub struct ReplayKnowledge(AtomicU64);

impl ReplayKnowledge {
    /// The best known replayed position; None when nothing is known.
    pub fn get(&self) -> Option<Lsn> {
        match self.0.load(Ordering::Acquire) {
            0 => None,
            l => Some(Lsn(l)),
        }
    }

    /// A session saw the node at `lsn` (a probe's answer): knowledge only grows this way.
    pub fn saw(&self, lsn: Lsn) {
        self.0.fetch_max(lsn.0, Ordering::AcqRel);
    }

    /// A health check's word, which replaces what was known: a node that went down, restarted, was rebuilt
    /// or promoted may stand behind what probes saw before (None: nothing is known).
    pub fn checked(&self, lsn: Option<Lsn>) {
        self.0.store(lsn.map_or(0, |l| l.0), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acknowledged_positions_only_grow() {
        let p = Positions::default();
        assert_eq!(p.acked(), Lsn::ZERO);
        p.acknowledged(Lsn(300));
        p.acknowledged(Lsn(200));
        assert_eq!(p.acked(), Lsn(300));
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
