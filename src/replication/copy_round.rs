//! Replicas of a database that need an initial copy at about the same time share one: one exported snapshot,
//! one schema dump, and each table read once from the primary and written to all of them (`copy`). When
//! forward mode starts on a new setup every replica needs a copy, and copying them one by one would make the
//! primary read and send every row once per replica.
//!
//! The first replica to ask leads a round: it waits until every replica of the database has either asked
//! too or said that it needs no copy (each knows once it has read its progress), at most [`GATHER`], then
//! copies for all that asked and hands each its result. A replica that asks later (it was down, or its copy
//! failed) starts a round of its own, which does not wait for replicas that have already spoken.

use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{Notify, oneshot};

use super::pgoutput::Lsn;
use super::setup::ForwardError;
use crate::backend::connect::NodeTarget;

/// How long a round waits for the replicas that have not spoken yet (down, or slow to answer).
pub(crate) const GATHER: Duration = Duration::from_secs(2);

/// A replica's copy, done.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Copied {
    /// The snapshot's consistent point: the replica streams from there.
    pub consistent: Lsn,
    /// Rows copied.
    pub rows: u64,
}

/// What a round tells each replica.
pub(crate) type Outcome = Result<Copied, ForwardError>;

/// A replica's place in a round; `R` says where the replica is (a [`NodeTarget`] in pgfleet).
pub(crate) struct Seat<R = NodeTarget> {
    /// Where it is.
    pub replica: R,
    /// Where its outcome goes.
    pub outcome: oneshot::Sender<Outcome>,
}

/// What asking for a copy gives a replica's task.
pub(crate) enum Ticket {
    /// It leads: [`CopyRounds::gather`], copy for every seat, answer each (its own included).
    Lead,
    /// A round another replica leads copies it.
    Follow,
}

struct State<R> {
    /// Per member: whether it has asked for a copy or said it needs none since pgfleet started.
    spoken: Vec<bool>,
    /// The round gathering now.
    gathering: Option<Vec<Seat<R>>>,
}

/// The copy rounds of one database.
pub(crate) struct CopyRounds<R = NodeTarget> {
    state: Mutex<State<R>>,
    spoke: Notify,
}

/// Whether a round may start: every replica of the database has spoken.
fn all_spoken(spoken: &[bool]) -> bool {
    spoken.iter().all(|s| *s)
}

impl<R> CopyRounds<R> {
    /// Rounds for a database with `members` replicas.
    pub(crate) fn new(members: usize) -> Self {
        Self {
            state: Mutex::new(State {
                spoken: vec![false; members],
                gathering: None,
            }),
            spoke: Notify::new(),
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State<R>> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn spoken(&self, state: &mut State<R>, member: usize) {
        if let Some(s) = state.spoken.get_mut(member) {
            *s = true;
        }
        self.spoke.notify_waiters();
    }

    /// `member` needs no copy: a round need not wait for it.
    pub(crate) fn needs_none(&self, member: usize) {
        let mut state = self.state();
        self.spoken(&mut state, member);
    }

    /// `member` needs a copy to `replica`: joins the round gathering now, or leads a new one. The outcome
    /// arrives on the receiver either way.
    pub(crate) fn ask(&self, member: usize, replica: R) -> (Ticket, oneshot::Receiver<Outcome>) {
        let (tx, rx) = oneshot::channel();
        let seat = Seat { replica, outcome: tx };
        let mut state = self.state();
        let ticket = match state.gathering.as_mut() {
            Some(seats) => {
                seats.push(seat);
                Ticket::Follow
            }
            None => {
                state.gathering = Some(vec![seat]);
                Ticket::Lead
            }
        };
        self.spoken(&mut state, member);
        (ticket, rx)
    }

    /// For the leader: waits until every replica has spoken, at most [`GATHER`], and closes the round; its
    /// seats, the leader's first.
    pub(crate) async fn gather(&self) -> Vec<Seat<R>> {
        let deadline = tokio::time::Instant::now() + GATHER;
        loop {
            let notified = self.spoke.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut state = self.state();
                if all_spoken(&state.spoken) {
                    return state.gathering.take().unwrap_or_default();
                }
            }
            if tokio::time::timeout_at(deadline, notified).await.is_err() {
                return self.state().gathering.take().unwrap_or_default();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn target(index: usize) -> String {
        format!("replica{index}")
    }

    #[test]
    fn a_round_starts_once_every_replica_has_spoken() {
        let cases: &[(&[bool], bool)] = &[
            (&[], true),
            (&[true], true),
            (&[true, true], true),
            (&[true, false], false),
            (&[false, false, true], false),
        ];
        for (spoken, expected) in cases {
            assert_eq!(all_spoken(spoken), *expected, "{spoken:?}");
        }
    }

    #[tokio::test]
    async fn replicas_asking_together_share_the_first_ones_round() {
        let rounds = CopyRounds::<String>::new(3);
        let (first, _rx0) = rounds.ask(0, target(0));
        assert!(matches!(first, Ticket::Lead));
        let (second, _rx1) = rounds.ask(2, target(2));
        assert!(matches!(second, Ticket::Follow));
        rounds.needs_none(1);
        let seats = rounds.gather().await;
        assert_eq!(
            seats.iter().map(|s| s.replica.as_str()).collect::<Vec<_>>(),
            vec!["replica0", "replica2"]
        );
        // The round is closed: who asks now leads the next one, which has nobody left to wait for.
        let (later, _rx2) = rounds.ask(1, target(1));
        assert!(matches!(later, Ticket::Lead));
        assert_eq!(rounds.gather().await.len(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_replica_that_never_speaks_holds_a_round_back_at_most_the_gathering_time() {
        let rounds = CopyRounds::<String>::new(2);
        let (lead, _rx) = rounds.ask(0, target(0));
        assert!(matches!(lead, Ticket::Lead));
        let started = tokio::time::Instant::now();
        let seats = rounds.gather().await;
        assert_eq!(seats.len(), 1);
        assert_eq!(started.elapsed(), GATHER);
    }
}
