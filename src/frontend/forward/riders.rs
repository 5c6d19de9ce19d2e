//! The position questions that ride in the same write as a client's request (docs/routing.md, "Consistency
//! levels"), as fast-path function calls (`protocol::wal_call`): the trailer behind it (a commit's position,
//! or how far a read saw) and the lead ahead of a read (whether its replica has replayed what the read must
//! see). Their replies never reach the client; the flow in the parent module cuts them out of the node's
//! blocks.

use bytes::Bytes;

use crate::cluster::positions::LeadInFlight;
use crate::protocol::lsn::Lsn;
use crate::protocol::wal_call::WalPosition;

/// A position question pgfleet appends to a request in the same write, to learn a WAL position without a round
/// trip of its own (docs/routing.md, "Consistency levels"). Its reply never reaches the client: the client's last
/// ReadyForQuery is held back until the position is known and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trailer {
    /// On the primary after a request that may commit a write: the commit's position (the write position),
    /// published as acknowledged before the client hears of the commit.
    Commit,
    /// As `Commit`, for a commit that may have been asynchronous (`synchronous_commit = off`): the insert
    /// position, read with `Lsn::inserted_end` (see `WalPosition::Inserted`).
    AsyncCommit,
    /// On the primary after a read: how far that read may have seen.
    Primary,
    /// On a replica after a read: how far that read may have seen, and what the replica has replayed.
    Replay,
}

/// A replay-position question that rides AHEAD of a read in the same write (docs/routing.md, "Consistency
/// levels"): when its answer says the replica has replayed what the read must see, the read's reply goes on
/// as usual, so a caught-up replica costs no round trip; otherwise the read's reply is discarded whole and the
/// session runs the read on its next candidate. Only reads that may run twice are led (see
/// `session::consistency::may_lead`).
#[derive(Debug)]
pub(super) struct LeadState {
    /// The position the read must see.
    pub(super) need: Lsn,
    /// Where the lead's frames end within the block being read.
    pub(super) end: usize,
    pub(super) answer: Option<Lsn>,
    /// The lead's ReadyForQuery came: what follows is the client's.
    pub(super) done: bool,
    /// The replica was behind: nothing of this run reaches the client.
    pub(super) stale: bool,
    /// Counts the lead as in flight to its node until its answer is published, for the reads that wait on it.
    pub(super) in_flight: LeadInFlight,
}

/// The question sent ahead of a read to a replica not yet known to have replayed what the read must see.
pub(super) fn lead_call() -> &'static [u8] {
    WalPosition::Replayed.call()
}

impl Trailer {
    /// The trailer behind a request that may commit, asking `position` of the primary.
    pub(crate) fn commit(position: WalPosition) -> Trailer {
        match position {
            WalPosition::Inserted => Trailer::AsyncCommit,
            _ => Trailer::Commit,
        }
    }

    /// Whether its answer is a commit's position.
    pub(crate) fn is_commit(self) -> bool {
        matches!(self, Trailer::Commit | Trailer::AsyncCommit)
    }

    /// The position it asks.
    pub(super) fn position(self) -> WalPosition {
        match self {
            Trailer::Commit | Trailer::Primary => WalPosition::Written,
            Trailer::AsyncCommit => WalPosition::Inserted,
            Trailer::Replay => WalPosition::Replayed,
        }
    }

    pub(super) fn call(self) -> &'static [u8] {
        self.position().call()
    }
}

/// The trailer's progress within a request in flight.
#[derive(Debug)]
pub(super) struct TrailerState {
    pub(super) kind: Trailer,
    /// The client's ReadyForQuery messages still to come; at zero, frames belong to the trailer.
    pub(super) client_ready: usize,
    /// The client's last ReadyForQuery, held back until the trailer's answer is in.
    pub(super) final_ready: Option<Bytes>,
    /// Within the block being read: where the client's frames end, and the span of its last ReadyForQuery.
    pub(super) visible_end: usize,
    pub(super) ready_span: Option<(usize, usize)>,
    pub(super) pos: usize,
    pub(super) answer: Option<Lsn>,
    /// Notifications the node delivered among the trailer's reply (it delivers them whenever it is about to
    /// go idle): passed on after the client's last ReadyForQuery, where a client expects them anyway.
    pub(super) late: Vec<u8>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_primary_is_asked_what_it_wrote_or_inserted_a_replica_what_it_replayed() {
        // (question, position asked)
        let cases = [
            (Trailer::Commit.call(), WalPosition::Written),
            (Trailer::AsyncCommit.call(), WalPosition::Inserted),
            (Trailer::commit(WalPosition::Written).call(), WalPosition::Written),
            (
                Trailer::commit(WalPosition::Inserted).call(),
                WalPosition::Inserted,
            ),
            (Trailer::Primary.call(), WalPosition::Written),
            (Trailer::Replay.call(), WalPosition::Replayed),
            (lead_call(), WalPosition::Replayed),
        ];
        for (question, position) in cases {
            assert_eq!(question, position.call());
        }
    }
}
