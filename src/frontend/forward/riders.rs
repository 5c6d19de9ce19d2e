//! The position queries that ride in the same write as a client's request (docs/routing.md, "Consistency
//! levels"): the trailer behind it (a commit's position, or how far a read saw) and the lead ahead of a read
//! (whether its replica has replayed what the read must see). Their replies never reach the client; the flow
//! in the parent module cuts them out of the node's blocks.

use bytes::Bytes;

use crate::cluster::positions::LeadInFlight;
use crate::protocol::lsn::Lsn;

/// A position question pgfleet appends to a request in the same write, to learn a WAL position without a round
/// trip of its own (docs/routing.md, "Consistency levels"). Its reply never reaches the client: the client's last
/// ReadyForQuery is held back until the position is known and published.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Trailer {
    /// On the primary after a request that may commit a write: the commit's position, published as
    /// acknowledged before the client hears of the commit.
    Commit,
    /// On the primary after a read: how far that read may have seen.
    Primary,
    /// On a replica after a read: how far that read may have seen, and what the replica has replayed.
    Replay,
}

/// `pg_current_wal_insert_lsn()`, `pg_current_wal_lsn()` and `pg_last_wal_replay_lsn()` by their object ids,
/// which are fixed in PostgreSQL's catalog (`pg_proc.dat`) and have not changed since the functions were added
/// (their pre-10 names had the same ids). Called by id, no search_path can put another function in their place.
///
/// A commit's position is the insert position, not the write position: a commit made with
/// `synchronous_commit = off` returns before its record is written, so the write position taken after it can
/// be short of the record, and a replica that has replayed that far has not replayed the commit. The insert
/// position is past every record inserted, the commit's included (read with `Lsn::inserted_end`). A read's
/// position stays the write position: the insert position can stay ahead of anything a replica can have for
/// as long as no commit writes the WAL (hint-bit records with data checksums, say), which would keep reads on
/// the primary; the commits a read may see that matter are covered by their own commit positions.
const CURRENT_WAL_INSERT_LSN: u32 = 2852;
const CURRENT_WAL_LSN: u32 = 2849;
const LAST_WAL_REPLAY_LSN: u32 = 3821;

/// A FunctionCall message (the protocol's fast path) that calls `function` without arguments and asks for its
/// result in binary. Not a query: the server neither parses nor plans it (about 2 µs of its CPU against about
/// 16 for the same call as `SELECT ...::text`, measured on PostgreSQL 15), it keeps the client's statement as
/// the backend's `query` in pg_stat_activity, pg_stat_statements does not count it, and it leaves the
/// connection's unnamed prepared statement alone.
fn function_call(function: u32) -> Bytes {
    let mut body = Vec::with_capacity(10);
    body.extend_from_slice(&function.to_be_bytes());
    // No argument format codes, no arguments, the result in binary (format code 1).
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&0u16.to_be_bytes());
    body.extend_from_slice(&1u16.to_be_bytes());
    crate::protocol::frame::build(b'F', &body)
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
pub(super) fn lead_query() -> &'static [u8] {
    static CALL: std::sync::LazyLock<Bytes> = std::sync::LazyLock::new(|| function_call(LAST_WAL_REPLAY_LSN));
    &CALL
}

impl Trailer {
    pub(super) fn query(self) -> &'static [u8] {
        static CALLS: std::sync::LazyLock<[Bytes; 3]> = std::sync::LazyLock::new(|| {
            [CURRENT_WAL_INSERT_LSN, CURRENT_WAL_LSN, LAST_WAL_REPLAY_LSN].map(function_call)
        });
        let i = match self {
            Trailer::Commit => 0,
            Trailer::Primary => 1,
            Trailer::Replay => 2,
        };
        &CALLS[i]
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

/// The LSN in a FunctionCallResponse's body: a binary `pg_lsn` is 8 bytes, big-endian. NULL (a replica's
/// function on a server that is not in recovery) or any other length: None.
pub(super) fn called_lsn(body: &[u8]) -> Option<Lsn> {
    match body {
        [0, 0, 0, 8, value @ ..] => <[u8; 8]>::try_from(value)
            .ok()
            .map(|v| Lsn(u64::from_be_bytes(v))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn riders_are_function_calls_of_the_two_position_functions() {
        // (message, function id)
        let cases: [(&[u8], u32); 4] = [
            (Trailer::Commit.query(), CURRENT_WAL_INSERT_LSN),
            (Trailer::Primary.query(), CURRENT_WAL_LSN),
            (Trailer::Replay.query(), LAST_WAL_REPLAY_LSN),
            (lead_query(), LAST_WAL_REPLAY_LSN),
        ];
        for (frame, function) in cases {
            assert_eq!(
                frame,
                [&b"F\0\0\0\x0e"[..], &function.to_be_bytes(), &[0, 0, 0, 0, 0, 1]].concat()
            );
        }
    }

    #[test]
    fn a_call_answers_an_lsn_only_as_eight_bytes() {
        // (FunctionCallResponse body, answer)
        let cases: [(&[u8], Option<Lsn>); 5] = [
            (&[0, 0, 0, 8, 0, 0, 0, 1, 0, 0, 0, 0x60], Some(Lsn(0x1_0000_0060))),
            (&[0, 0, 0, 8, 0, 0, 0, 0, 0, 0, 0, 0], Some(Lsn::ZERO)),
            (&[0xff, 0xff, 0xff, 0xff], None),
            (&[0, 0, 0, 4, 0, 0, 0, 1], None),
            (&[0, 0, 0, 8, 0, 0, 0, 1], None),
        ];
        for (body, answer) in cases {
            assert_eq!(called_lsn(body), answer, "{body:?}");
        }
    }
}
