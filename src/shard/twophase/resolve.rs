//! The rule recovery applies, without I/O: given the prepared transactions found on the shards and what
//! each coordinator says about its transaction, commit, roll back or wait; and which decision rows are no
//! longer needed.
//!
//! The decision row decides, as in Citus: the coordinator inserts it in its own transaction, so a visible
//! row means that transaction committed: commit. Without a row, the coordinator's transaction status
//! (`txid_status`) says whether the absence is final. Aborted, too old to be known, or an xid the
//! coordinator never handed out (it lost it in a crash): the decision was never taken, roll back. In
//! progress: the commit may be under way, wait. Committed: either the commit is still becoming visible
//! (PostgreSQL marks a transaction committed before snapshots see it, for as long as synchronous replication
//! waits), so wait; or, when the statement's own snapshot already sees it finished, the xid belongs to
//! another transaction after a crash reused it (the gid's nonce keeps that one's row apart), so roll back.

use std::collections::{BTreeMap, BTreeSet};

use super::gid::{Gid, GidBase};
use crate::cluster::ShardId;

/// `txid_status()` of the coordinator's transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum XidStatus {
    /// Still running.
    InProgress,
    /// Committed.
    Committed,
    /// Rolled back, or lost in a crash.
    Aborted,
    /// NULL: older than the commit log PostgreSQL keeps.
    Forgotten,
    /// Not handed out yet: the coordinator lost the transaction in a crash before its WAL reached disk.
    Future,
}

impl XidStatus {
    /// From `txid_status()`'s text; None for anything PostgreSQL does not answer.
    pub fn parse(text: Option<&str>) -> Option<XidStatus> {
        match text {
            Some("in progress") => Some(XidStatus::InProgress),
            Some("committed") => Some(XidStatus::Committed),
            Some("aborted") => Some(XidStatus::Aborted),
            Some("future") => Some(XidStatus::Future),
            None => Some(XidStatus::Forgotten),
            Some(_) => None,
        }
    }
}

/// What the coordinator shard said about a distributed transaction, all from one statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CoordinatorAnswer {
    /// Its transaction's status, read after the statement's snapshot was taken.
    pub status: XidStatus,
    /// Whether the decision row is visible in the statement's snapshot.
    pub decided: bool,
    /// Whether the transaction had finished (committed or not) as of that snapshot.
    pub finished_in_snapshot: bool,
}

/// Why a prepared transaction is left alone for now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WaitReason {
    /// The coordinator's transaction is still running: its commit may be under way.
    InProgress,
    /// The coordinator shard is not among the recovery's targets.
    UnknownCoordinator,
    /// The coordinator could not be asked.
    CoordinatorUnavailable(String),
}

impl std::fmt::Display for WaitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WaitReason::InProgress => f.write_str("the coordinator's transaction is still in progress"),
            WaitReason::UnknownCoordinator => f.write_str("its coordinator shard is not configured"),
            WaitReason::CoordinatorUnavailable(e) => write!(f, "its coordinator cannot be asked: {e}"),
        }
    }
}

/// What to do with one prepared transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Resolution {
    /// `COMMIT PREPARED`.
    Commit,
    /// `ROLLBACK PREPARED`.
    Rollback,
    /// Nothing yet.
    Wait(WaitReason),
}

/// The rule for one distributed transaction, from its coordinator's answer (see the module's text).
pub fn resolve(answer: CoordinatorAnswer) -> Resolution {
    if answer.decided {
        return Resolution::Commit;
    }
    match answer.status {
        XidStatus::InProgress => Resolution::Wait(WaitReason::InProgress),
        XidStatus::Committed if !answer.finished_in_snapshot => Resolution::Wait(WaitReason::InProgress),
        XidStatus::Committed | XidStatus::Aborted | XidStatus::Forgotten | XidStatus::Future => {
            Resolution::Rollback
        }
    }
}

/// A prepared transaction listed on a shard, and what to do with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    /// The shard it was found on (and belongs to).
    pub shard: ShardId,
    /// Its gid.
    pub gid: Gid,
    /// What to do.
    pub resolution: Resolution,
}

/// The gids found on each shard that are pgfleet's and belong to that shard. A gid naming another
/// participant shard is left to that shard's target (two shards may share a server); one that does not
/// parse is not pgfleet's to touch. Returns the kept ones and the texts left alone.
pub fn own_gids(found: &[(ShardId, String)]) -> (Vec<(ShardId, Gid)>, Vec<String>) {
    let mut kept = Vec::new();
    let mut ignored = Vec::new();
    for (shard, text) in found {
        match Gid::parse(text) {
            Some(gid) if gid.participant == *shard => kept.push((*shard, gid)),
            Some(_) => {}
            None => ignored.push(text.clone()),
        }
    }
    (kept, ignored)
}

/// Plans every prepared transaction from the coordinators' answers: `answers` maps each distributed
/// transaction to its coordinator's answer, or to why there is none.
pub fn plan(
    prepared: &[(ShardId, Gid)],
    answers: &BTreeMap<GidBase, Result<CoordinatorAnswer, WaitReason>>,
) -> Vec<Planned> {
    prepared
        .iter()
        .map(|(shard, gid)| {
            let resolution = match answers.get(&gid.base) {
                Some(Ok(answer)) => resolve(*answer),
                Some(Err(reason)) => Resolution::Wait(reason.clone()),
                None => Resolution::Wait(WaitReason::UnknownCoordinator),
            };
            Planned {
                shard: *shard,
                gid: gid.clone(),
                resolution,
            }
        })
        .collect()
}

/// The decision rows that may go: the candidates (rows old enough, read *before* `prepared` was listed),
/// minus those whose transaction still has a prepared participant. A row is committed before any of its
/// participants can finish, and prepared transactions never reappear, so a row absent from a complete
/// listing taken after it was read will never be needed. None when the listing is incomplete (a shard did
/// not answer): its prepared transactions are unknown, so nothing may go.
pub fn collectable(candidates: &[String], prepared: Option<&BTreeSet<String>>) -> Option<Vec<String>> {
    let prepared = prepared?;
    Some(
        candidates
            .iter()
            .filter(|base| !prepared.contains(*base))
            .cloned()
            .collect(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shard::twophase::gid::InstanceId;

    #[test]
    fn the_rule_for_each_status_and_row() {
        use Resolution::*;
        use XidStatus::*;
        let wait = || Wait(WaitReason::InProgress);
        // (status, decision row visible, finished as of the snapshot) -> resolution
        let table = [
            (Committed, true, true, Commit),
            // The row is seen only once the commit is: a row means committed, whatever came after.
            (Committed, true, false, Commit),
            (Forgotten, true, true, Commit),
            (InProgress, false, false, wait()),
            // Committed after the snapshot was taken: its row will be visible on the next look.
            (Committed, false, false, wait()),
            // Committed before the snapshot and still no row: that xid is another transaction's.
            (Committed, false, true, Rollback),
            (Aborted, false, true, Rollback),
            (Aborted, false, false, Rollback),
            (Forgotten, false, true, Rollback),
            (Future, false, false, Rollback),
        ];
        for (status, decided, finished_in_snapshot, want) in table {
            let answer = CoordinatorAnswer {
                status,
                decided,
                finished_in_snapshot,
            };
            assert_eq!(resolve(answer), want, "{answer:?}");
        }
    }

    #[test]
    fn statuses_parse_as_postgres_writes_them() {
        assert_eq!(XidStatus::parse(Some("in progress")), Some(XidStatus::InProgress));
        assert_eq!(XidStatus::parse(Some("committed")), Some(XidStatus::Committed));
        assert_eq!(XidStatus::parse(Some("aborted")), Some(XidStatus::Aborted));
        assert_eq!(XidStatus::parse(Some("future")), Some(XidStatus::Future));
        assert_eq!(XidStatus::parse(None), Some(XidStatus::Forgotten));
        assert_eq!(XidStatus::parse(Some("maybe")), None);
    }

    fn base(instance: &str, coordinator: u32, xid: u64) -> GidBase {
        GidBase {
            instance: InstanceId::new(instance).expect("instance"),
            coordinator: ShardId::new(coordinator),
            xid,
            nonce: 5,
        }
    }

    #[test]
    fn only_pgfleet_gids_of_the_listing_shard_are_kept() {
        let s = ShardId::new;
        let found = vec![
            (s(1), "pgfleet_a_0_10_5_1".to_owned()),
            // Another shard's participant on a shared server: its own target resolves it.
            (s(1), "pgfleet_a_0_10_5_2".to_owned()),
            (s(2), "pgfleet_a_0_10_5_2".to_owned()),
            (s(2), "pgfleet_not_a_gid".to_owned()),
        ];
        let (kept, ignored) = own_gids(&found);
        assert_eq!(
            kept,
            vec![
                (s(1), base("a", 0, 10).gid(s(1))),
                (s(2), base("a", 0, 10).gid(s(2))),
            ]
        );
        assert_eq!(ignored, vec!["pgfleet_not_a_gid".to_owned()]);
    }

    #[test]
    fn every_prepared_transaction_gets_its_coordinators_rule() {
        let s = ShardId::new;
        let committed = base("a", 0, 10);
        let aborted = base("b_1", 0, 11);
        let running = base("a", 1, 12);
        let unreachable = base("a", 2, 13);
        let unconfigured = base("a", 7, 14);
        let prepared = vec![
            (s(1), committed.gid(s(1))),
            (s(2), committed.gid(s(2))),
            (s(1), aborted.gid(s(1))),
            (s(0), running.gid(s(0))),
            (s(0), unreachable.gid(s(0))),
            (s(0), unconfigured.gid(s(0))),
        ];
        let answer = |status, decided, finished_in_snapshot| {
            Ok(CoordinatorAnswer {
                status,
                decided,
                finished_in_snapshot,
            })
        };
        let answers = BTreeMap::from([
            (committed.clone(), answer(XidStatus::Committed, true, true)),
            (aborted.clone(), answer(XidStatus::Aborted, false, true)),
            (running.clone(), answer(XidStatus::InProgress, false, false)),
            (
                unreachable.clone(),
                Err(WaitReason::CoordinatorUnavailable("refused".into())),
            ),
        ]);
        let got: Vec<_> = plan(&prepared, &answers)
            .into_iter()
            .map(|p| (p.shard, p.gid.to_string(), p.resolution))
            .collect();
        let want = vec![
            (s(1), "pgfleet_a_0_10_5_1".to_owned(), Resolution::Commit),
            (s(2), "pgfleet_a_0_10_5_2".to_owned(), Resolution::Commit),
            (s(1), "pgfleet_b_1_0_11_5_1".to_owned(), Resolution::Rollback),
            (
                s(0),
                "pgfleet_a_1_12_5_0".to_owned(),
                Resolution::Wait(WaitReason::InProgress),
            ),
            (
                s(0),
                "pgfleet_a_2_13_5_0".to_owned(),
                Resolution::Wait(WaitReason::CoordinatorUnavailable("refused".into())),
            ),
            (
                s(0),
                "pgfleet_a_7_14_5_0".to_owned(),
                Resolution::Wait(WaitReason::UnknownCoordinator),
            ),
        ];
        assert_eq!(got, want);
    }

    #[test]
    fn decision_rows_go_once_nothing_of_theirs_is_prepared() {
        let rows = vec!["pgfleet_a_0_1".to_owned(), "pgfleet_a_0_2".to_owned()];
        type Case = (Option<BTreeSet<String>>, Option<Vec<String>>);
        let table: [Case; 3] = [
            (Some(BTreeSet::new()), Some(rows.clone())),
            (
                Some(BTreeSet::from(["pgfleet_a_0_2".to_owned()])),
                Some(vec!["pgfleet_a_0_1".to_owned()]),
            ),
            // A shard did not answer: its prepared transactions are unknown.
            (None, None),
        ];
        for (prepared, want) in table {
            assert_eq!(collectable(&rows, prepared.as_ref()), want, "{prepared:?}");
        }
    }
}
