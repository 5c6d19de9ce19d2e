//! The WAL position functions pgfleet asks servers about, called by the protocol's fast path (a FunctionCall
//! message) rather than by a query: the server neither parses nor plans such a call (about 2 µs of its CPU
//! against about 16 for the same function in a `SELECT`, measured on PostgreSQL 15), it keeps the client's
//! statement as the backend's `query` in pg_stat_activity, pg_stat_statements does not count it, and it leaves
//! the connection's unnamed prepared statement alone. Used by the questions that ride with requests
//! (`frontend::forward::riders`) and by those asked in a round trip of their own (`frontend::session::positions`).

use super::lsn::Lsn;

/// Which position to ask.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum WalPosition {
    /// `pg_current_wal_lsn()`, on a primary: what is written. A synchronous commit's position (its record is
    /// written before the commit returns), and a bound of what a read saw.
    Written,
    /// `pg_current_wal_insert_lsn()`, on a primary: past every record inserted. The position of a commit that
    /// may have been asynchronous (`synchronous_commit = off`), which returns before its record is written, so
    /// the write position can be short of it. Not asked for other commits: WAL inserted and not yet written
    /// for other reasons (another session's running transaction, the abort record of a failed write) would
    /// keep reads off the replicas until something wrote it. Read with `Lsn::inserted_end`.
    Inserted,
    /// `pg_last_wal_replay_lsn()`, on a replica: what it has replayed.
    Replayed,
}

impl WalPosition {
    /// The function's name, as a server with `log_statement = 'all'` logs the call.
    pub(crate) fn name(self) -> &'static str {
        match self {
            WalPosition::Written => "pg_current_wal_lsn",
            WalPosition::Inserted => "pg_current_wal_insert_lsn",
            WalPosition::Replayed => "pg_last_wal_replay_lsn",
        }
    }

    /// The FunctionCall message: no arguments, the result in binary. The functions by object id, fixed in
    /// PostgreSQL's catalog (`pg_proc.dat`) since they were added (the pre-10 names had the same ids): no
    /// search_path can put another function in their place.
    pub(crate) fn call(self) -> &'static [u8] {
        const WRITTEN: [u8; 15] = function_call(2849);
        const INSERTED: [u8; 15] = function_call(2852);
        const REPLAYED: [u8; 15] = function_call(3821);
        match self {
            WalPosition::Written => &WRITTEN,
            WalPosition::Inserted => &INSERTED,
            WalPosition::Replayed => &REPLAYED,
        }
    }
}

/// A FunctionCall of `function`: type, length 14, the function's id, no argument format codes, no arguments,
/// the result in binary (format code 1).
const fn function_call(function: u32) -> [u8; 15] {
    let id = function.to_be_bytes();
    [b'F', 0, 0, 0, 14, id[0], id[1], id[2], id[3], 0, 0, 0, 0, 0, 1]
}

/// The LSN in a FunctionCallResponse's body: a binary `pg_lsn` is 8 bytes, big-endian. NULL (a replica's
/// function on a server that is not in recovery) or any other length: None.
pub(crate) fn answer(body: &[u8]) -> Option<Lsn> {
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
    fn calls_name_each_function_by_its_id() {
        // (position, function id)
        let cases = [
            (WalPosition::Written, 2849u32),
            (WalPosition::Inserted, 2852),
            (WalPosition::Replayed, 3821),
        ];
        for (position, function) in cases {
            assert_eq!(
                position.call(),
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
        for (body, lsn) in cases {
            assert_eq!(answer(body), lsn, "{body:?}");
        }
    }
}
