//! Cluster-unique ids for the rows of sharded tables. A statement sent through pgfleet may call
//! `pgfleet_next_id()` wherever a bigint fits (`INSERT INTO accounts (id, owner) VALUES (pgfleet_next_id(),
//! 'x')`): pgfleet replaces each call with a value no other call returns, whichever pgfleet instance runs it,
//! before it plans the statement, so that the row's key is known and the row goes to its shard. Ids come from
//! the sequence `pgfleet.ids` of the first shard's database, created with the decision table, in blocks of
//! [`ID_BLOCK`]: one `nextval` reserves a block for this process. Ids grow within a block, are not gapless, and
//! are never reused.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::Mutex;

use crate::router::split::{Lexer, TokKind};

/// The function a statement calls for an id.
pub const ID_FUNCTION: &str = "pgfleet_next_id";
/// How many ids one `nextval('pgfleet.ids')` reserves (the sequence's INCREMENT BY).
pub const ID_BLOCK: i64 = 1000;
/// Reserves a block: its first id.
pub const NEXT_BLOCK: &str = "SELECT nextval('pgfleet.ids')";

/// The byte ranges of the `pgfleet_next_id()` calls in `sql`, outside strings, comments and quoted names.
pub fn id_calls(sql: &str) -> Vec<Range<usize>> {
    let toks: Vec<_> = Lexer::new(sql).filter(|t| t.kind != TokKind::Comment).collect();
    let mut out = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        let (Some(open), Some(close)) = (toks.get(i + 1), toks.get(i + 2)) else {
            break;
        };
        if t.kind == TokKind::Word
            && t.text(sql).eq_ignore_ascii_case(ID_FUNCTION)
            && open.text(sql) == "("
            && close.text(sql) == ")"
        {
            out.push(t.start..close.end);
        }
    }
    out
}

/// `sql` with the calls at `calls` replaced by `ids`, in order.
pub fn with_ids(sql: &str, calls: &[Range<usize>], ids: &[i64]) -> String {
    let mut out = String::with_capacity(sql.len() + 16 * calls.len());
    let mut at = 0;
    for (call, id) in calls.iter().zip(ids) {
        out.push_str(&sql[at..call.start]);
        out.push_str(&id.to_string());
        at = call.end;
    }
    out.push_str(&sql[at..]);
    out
}

/// The ids this process has reserved and not handed out yet, per database.
#[derive(Debug, Default)]
pub struct IdBlocks {
    left: Mutex<HashMap<String, Range<i64>>>,
}

impl IdBlocks {
    /// `n` ids of `database`'s reserved block, or None when it holds fewer (reserve another first).
    pub fn take(&self, database: &str, n: usize) -> Option<Vec<i64>> {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        let block = left.get_mut(database)?;
        let n = i64::try_from(n).ok()?;
        if block.end - block.start < n {
            return None;
        }
        let ids = (block.start..block.start + n).collect();
        block.start += n;
        Some(ids)
    }

    /// Adds the block starting at `first` (what `nextval` returned) to `database`'s reserve; ids still
    /// left of the previous block are dropped (a gap, never a reuse).
    pub fn reserved(&self, database: &str, first: i64) {
        let mut left = self.left.lock().unwrap_or_else(|p| p.into_inner());
        left.insert(database.to_owned(), first..first.saturating_add(ID_BLOCK));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calls_are_found_outside_strings_and_comments() {
        let cases: &[(&str, &str)] = &[
            (
                "INSERT INTO a (id, n) VALUES (pgfleet_next_id(), 'x')",
                "INSERT INTO a (id, n) VALUES (7, 'x')",
            ),
            (
                "insert into a (id) values (PGFLEET_NEXT_ID ( )), (pgfleet_next_id())",
                "insert into a (id) values (7), (8)",
            ),
            (
                "SELECT 'pgfleet_next_id()', \"pgfleet_next_id\"() /* pgfleet_next_id() */",
                "SELECT 'pgfleet_next_id()', \"pgfleet_next_id\"() /* pgfleet_next_id() */",
            ),
            ("SELECT pgfleet_next_id", "SELECT pgfleet_next_id"),
        ];
        for (sql, expected) in cases {
            let calls = id_calls(sql);
            let ids: Vec<i64> = (7..7 + calls.len() as i64).collect();
            assert_eq!(&with_ids(sql, &calls, &ids), expected, "{sql}");
        }
    }

    #[test]
    fn blocks_hand_out_each_id_once() {
        let blocks = IdBlocks::default();
        assert_eq!(blocks.take("app", 1), None, "nothing reserved yet");
        blocks.reserved("app", 1001);
        assert_eq!(blocks.take("app", 3), Some(vec![1001, 1002, 1003]));
        assert_eq!(blocks.take("other", 1), None, "blocks are per database");
        assert_eq!(blocks.take("app", 997).map(|v| v.len()), Some(997));
        assert_eq!(blocks.take("app", 1), None, "the block is used up");
        blocks.reserved("app", 5001);
        assert_eq!(blocks.take("app", 2), Some(vec![5001, 5002]));
    }
}
