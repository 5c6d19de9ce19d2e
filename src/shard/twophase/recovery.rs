//! Recovery: on every shard primary, find pgfleet's prepared transactions in the recovered database, ask
//! each one's coordinator shard what became of its transaction, and commit or roll back accordingly
//! (`resolve` holds the rule); then remove the decision rows nothing needs any more. It runs once at start
//! and then every interval ([`spawn_recovery`]), and resolves any pgfleet instance's transactions, since
//! the decisions are in the databases.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool};

use super::DecisionTableHint;
use super::gid::{Gid, GidBase};
use super::participant::{ParticipantError, from_postgres};
use super::report::{RecoveryError, RecoveryFailure, RecoveryReport, log_report};
use super::resolve::{
    CoordinatorAnswer, Planned, Resolution, WaitReason, XidStatus, collectable, own_gids, plan,
};
use super::target::{RecoveryLogin, ShardTarget, bounded, control_pool, ensure_decision_table, get};
use crate::cluster::ShardId;

/// pgfleet's prepared transactions in the connection's database.
const LIST_SQL: &str = "SELECT gid, owner::text FROM pg_prepared_xacts \
     WHERE database = current_database() AND gid LIKE 'pgfleet\\_%'";

/// Everything `resolve` needs from the coordinator, in one statement so that the row check and "finished
/// as of the snapshot" share one snapshot, and the status is read after it. An xid at or past a freshly
/// assigned one was never handed out (txid_status would raise an error for it).
const ASK_SQL: &str = "SELECT CASE WHEN $1 < txid_current() THEN txid_status($1)::text ELSE 'future' END, \
     EXISTS (SELECT 1 FROM pgfleet.commit_decisions WHERE gid_base = $2), \
     txid_visible_in_snapshot($1, txid_current_snapshot())";

/// How recovery behaves besides whom it reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecoveryOptions {
    /// Roles granted INSERT on the decision table (and USAGE on its schema) when recovery creates it: the
    /// roles clients connect as, since a session records the decision as its client's role. Nobody else
    /// gets to write decisions.
    pub writers: Vec<String>,
    /// A decision row is removed once this old and no participant of its transaction is still prepared.
    /// It is not needed after that (see `resolve::collectable`); the delay keeps it for people reading
    /// the table after an incident.
    pub keep_decisions: Duration,
}

impl Default for RecoveryOptions {
    fn default() -> Self {
        RecoveryOptions {
            writers: Vec::new(),
            keep_decisions: Duration::from_secs(3600),
        }
    }
}

/// Recovery over a fixed set of shard primaries, keeping one control connection to each between runs.
pub struct Recovery {
    targets: Vec<(ShardTarget, Pool)>,
    login: RecoveryLogin,
    options: RecoveryOptions,
}

impl Recovery {
    /// Recovery of `login.database` on `targets` (one per shard).
    pub fn new(
        targets: Vec<ShardTarget>,
        login: RecoveryLogin,
        options: RecoveryOptions,
    ) -> Result<Recovery, RecoveryError> {
        let mut pools = Vec::with_capacity(targets.len());
        for target in targets {
            let pool = control_pool(&target, &login).map_err(|reason| RecoveryError::Unreachable {
                node: target.name().to_owned(),
                reason,
            })?;
            pools.push((target, pool));
        }
        Ok(Recovery {
            targets: pools,
            login,
            options,
        })
    }

    /// One run over every shard: creates the decision table where missing, resolves what can be resolved,
    /// removes decision rows no longer needed. Failures on a shard are reported and do not stop the run.
    pub async fn run_once(&self) -> RecoveryReport {
        let mut report = RecoveryReport::default();
        let mut found = Vec::new();
        let mut owners = BTreeMap::new();
        let mut complete = true;
        for (target, pool) in &self.targets {
            match self.list(target, pool, true).await {
                Ok(gids) => {
                    for (gid, owner) in gids {
                        owners.insert(gid.clone(), owner);
                        found.push((target.shard, gid));
                    }
                }
                Err(error) => {
                    complete = false;
                    report.failures.push(RecoveryFailure {
                        shard: target.shard,
                        error,
                    });
                }
            }
        }
        let (prepared, ignored) = own_gids(&found);
        report.ignored = ignored;

        let mut answers = BTreeMap::new();
        for (_, gid) in &prepared {
            if !answers.contains_key(&gid.base) {
                let answer = self.ask(&gid.base).await;
                answers.insert(gid.base.clone(), answer);
            }
        }
        for planned in plan(&prepared, &answers) {
            let owner = owners.get(&planned.gid.to_string()).map_or("?", String::as_str);
            self.apply(planned, owner, &mut report).await;
        }
        if complete {
            self.collect(&mut report).await;
        }
        report
    }

    /// The target serving `shard`.
    fn target(&self, shard: ShardId) -> Option<&(ShardTarget, Pool)> {
        self.targets.iter().find(|(t, _)| t.shard == shard)
    }

    async fn connect(&self, target: &ShardTarget, pool: &Pool) -> Result<Object, RecoveryError> {
        bounded(self.login.timeout, get(pool, target))
            .await
            .map_err(|reason| RecoveryError::Unreachable {
                node: target.name().to_owned(),
                reason,
            })
    }

    /// The pgfleet gids prepared on `target`, with their owners; first makes sure the decision table is
    /// there when `ensure` says so.
    async fn list(
        &self,
        target: &ShardTarget,
        pool: &Pool,
        ensure: bool,
    ) -> Result<Vec<(String, String)>, RecoveryError> {
        let client = self.connect(target, pool).await?;
        if ensure {
            self.timed(
                target,
                "creating the decision table",
                ensure_decision_table(&client, &self.options.writers),
            )
            .await
            .map_err(|e| match e {
                RecoveryError::Statement { source, .. } if source.is_server() => {
                    RecoveryError::DecisionTable {
                        node: target.name().to_owned(),
                        database: self.login.database.clone(),
                        user: self.login.user.clone(),
                        source,
                    }
                }
                other => other,
            })?;
        }
        let rows = self
            .timed(target, "listing pg_prepared_xacts", async {
                client.query(LIST_SQL, &[]).await.map_err(from_postgres)
            })
            .await?;
        Ok(rows
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .collect())
    }

    /// What the coordinator shard says about `base`.
    async fn ask(&self, base: &GidBase) -> Result<CoordinatorAnswer, WaitReason> {
        let Some((target, pool)) = self.target(base.coordinator) else {
            return Err(WaitReason::UnknownCoordinator);
        };
        let unavailable = |e: RecoveryError| WaitReason::CoordinatorUnavailable(e.to_string());
        let xid = i64::try_from(base.xid).map_err(|_| {
            WaitReason::CoordinatorUnavailable(format!("transaction id {} out of range", base.xid))
        })?;
        let client = self.connect(target, pool).await.map_err(unavailable)?;
        let gid_base = base.to_string();
        let row = self
            .timed(target, "asking for the commit decision", async {
                client
                    .query_one(ASK_SQL, &[&xid, &gid_base])
                    .await
                    .map_err(from_postgres)
            })
            .await
            .map_err(unavailable)?;
        let status: Option<String> = row.get(0);
        let decided: bool = row.get(1);
        let finished_in_snapshot: bool = row.get(2);
        match XidStatus::parse(status.as_deref()) {
            Some(status) => Ok(CoordinatorAnswer {
                status,
                decided,
                finished_in_snapshot,
            }),
            None => Err(WaitReason::CoordinatorUnavailable(format!(
                "txid_status() answered {status:?}"
            ))),
        }
    }

    /// Carries out one plan on the shard the prepared transaction is on; `owner` is the role that prepared
    /// it, for the advice when recovery's role may not finish it.
    async fn apply(&self, planned: Planned, owner: &str, report: &mut RecoveryReport) {
        let Planned {
            shard,
            gid,
            resolution,
        } = planned;
        let (verb, commit) = match resolution {
            Resolution::Commit => ("COMMIT PREPARED", true),
            Resolution::Rollback => ("ROLLBACK PREPARED", false),
            Resolution::Wait(reason) => {
                tracing::debug!(%gid, %reason, "prepared transaction left for a later recovery run");
                report.waiting.push((gid, reason));
                return;
            }
        };
        let Some((target, pool)) = self.target(shard) else {
            return;
        };
        let result = match self.connect(target, pool).await {
            Ok(client) => {
                let sql = format!("{verb} '{gid}'");
                self.timed(target, &sql, async {
                    client.batch_execute(&sql).await.map_err(from_postgres)
                })
                .await
            }
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => {
                tracing::info!(%gid, node = target.name(), instance = gid.base.instance.as_str(), "recovery: {verb}");
                if commit {
                    report.committed.push(gid);
                } else {
                    report.rolled_back.push(gid);
                }
            }
            // undefined_object: someone (the session, another instance's recovery) finished it since the
            // listing. object_in_use: someone is finishing it right now.
            Err(RecoveryError::Statement { source, .. })
                if matches!(source.sqlstate(), "42704" | "55006") => {}
            Err(error) => {
                let error = match error {
                    RecoveryError::Statement {
                        node, what, source, ..
                    } if source.sqlstate() == "42501" => RecoveryError::Statement {
                        node,
                        what,
                        source,
                        advice: format!(
                            "; it was prepared by role \"{owner}\", and only that role or a superuser may finish \
                             it: make recovery's role \"{}\" a superuser",
                            self.login.user
                        ),
                    },
                    other => other,
                };
                tracing::warn!(%gid, %error, "recovery could not finish a prepared transaction");
                report.failures.push(RecoveryFailure { shard, error });
            }
        }
    }

    /// Removes decision rows old enough whose transactions have nothing prepared any more: candidates are
    /// read on every shard first, then everything prepared is listed again (see `resolve::collectable`).
    async fn collect(&self, report: &mut RecoveryReport) {
        let keep = self.options.keep_decisions.as_secs_f64();
        let mut candidates = Vec::new();
        for (target, pool) in &self.targets {
            let read = async {
                let client = self.connect(target, pool).await?;
                self.timed(target, "reading old decisions", async {
                    client
                        .query(
                            "SELECT gid_base FROM pgfleet.commit_decisions \
                             WHERE decided_at < clock_timestamp() - make_interval(secs => $1)",
                            &[&keep],
                        )
                        .await
                        .map_err(from_postgres)
                })
                .await
            };
            match read.await {
                Ok(rows) => candidates.push((
                    target,
                    pool,
                    rows.iter().map(|r| r.get(0)).collect::<Vec<String>>(),
                )),
                Err(error) => {
                    report.failures.push(RecoveryFailure {
                        shard: target.shard,
                        error,
                    });
                    return;
                }
            }
        }
        let mut prepared = Some(BTreeSet::new());
        for (target, pool) in &self.targets {
            match self.list(target, pool, false).await {
                Ok(gids) => {
                    if let Some(set) = prepared.as_mut() {
                        set.extend(
                            gids.iter()
                                .filter_map(|(gid, _)| Gid::parse(gid))
                                .map(|gid| gid.base.to_string()),
                        );
                    }
                }
                Err(error) => {
                    prepared = None;
                    report.failures.push(RecoveryFailure {
                        shard: target.shard,
                        error,
                    });
                }
            }
        }
        for (target, pool, rows) in candidates {
            let Some(gone) = collectable(&rows, prepared.as_ref()) else {
                return;
            };
            if gone.is_empty() {
                continue;
            }
            let deleted = async {
                let client = self.connect(target, pool).await?;
                self.timed(target, "removing old decisions", async {
                    client
                        .execute(
                            "DELETE FROM pgfleet.commit_decisions WHERE gid_base = ANY($1)",
                            &[&gone],
                        )
                        .await
                        .map_err(from_postgres)
                })
                .await
            };
            match deleted.await {
                Ok(n) => report.decisions_removed += n as usize,
                Err(error) => report.failures.push(RecoveryFailure {
                    shard: target.shard,
                    error,
                }),
            }
        }
    }

    /// Runs one statement's future within the login's timeout; its error names the node and the statement.
    async fn timed<T>(
        &self,
        target: &ShardTarget,
        what: &str,
        work: impl std::future::Future<Output = Result<T, ParticipantError>>,
    ) -> Result<T, RecoveryError> {
        let timeout = self.login.timeout;
        match tokio::time::timeout(timeout, work).await {
            Ok(Ok(value)) => Ok(value),
            Ok(Err(source)) => Err(RecoveryError::Statement {
                node: target.name().to_owned(),
                what: what.to_owned(),
                advice: match DecisionTableHint::for_sqlstate(source.sqlstate()) {
                    Some(hint) if what.contains("decision") => format!(". {hint}"),
                    _ => String::new(),
                },
                source: Box::new(source),
            }),
            Err(_) => Err(RecoveryError::Unreachable {
                node: target.name().to_owned(),
                reason: format!("{what}: no answer within {timeout:?} (health.timeout)"),
            }),
        }
    }
}

/// One recovery run over `targets` with fresh connections: what pgfleet runs at start, and what tools and
/// tests call.
pub async fn recover_once(
    targets: &[ShardTarget],
    login: &RecoveryLogin,
    options: &RecoveryOptions,
) -> Result<RecoveryReport, RecoveryError> {
    let recovery = Recovery::new(targets.to_vec(), login.clone(), options.clone())?;
    Ok(recovery.run_once().await)
}

/// Runs recovery now and then every `interval` until the returned task is aborted; each run's actions and
/// failures are logged.
pub fn spawn_recovery(recovery: Arc<Recovery>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = tokio::time::Instant::now();
            let report = recovery.run_once().await;
            log_report(&report);
            tokio::time::sleep_until(started + interval).await;
        }
    })
}
