//! The databases whose commits across shards this pgfleet coordinates, and their recovery: before the first
//! commit across shards in a database, its recovery runs once (creating the decision table where missing);
//! then every `sharding.recovery_interval` recovery runs for every such database and for any database where
//! a shard primary holds a prepared transaction of pgfleet's, whichever instance left it. The start check
//! (`max_prepared_transactions` on every shard primary) is here too.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::Mutex;

use super::twophase::{
    Recovery, RecoveryError, RecoveryLogin, RecoveryOptions, RecoveryReport, ShardTarget, StartCheckError,
    TargetError, check_prepared_transactions,
};
use crate::config::Config;

/// Recovery of every database pgfleet coordinates, and their readiness for commits across shards.
pub struct Decisions {
    targets: Vec<ShardTarget>,
    /// Who recovery logs in as, with the database left to fill in.
    login: Option<RecoveryLogin>,
    options: RecoveryOptions,
    /// Per database, its recovery once it ran (the decision table exists there).
    ready: Mutex<HashMap<String, Arc<Recovery>>>,
}

impl std::fmt::Debug for Decisions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Decisions")
            .field("targets", &self.targets.len())
            .finish_non_exhaustive()
    }
}

impl Decisions {
    /// Recovery over the shard primaries of a validated sharded config. Every configured user may record
    /// decisions (sessions commit as their client's role).
    pub fn new(config: &Config) -> Result<Decisions, TargetError> {
        Ok(Decisions {
            targets: ShardTarget::primaries(config)?,
            login: RecoveryLogin::from_config(config, "postgres"),
            options: RecoveryOptions {
                writers: config.users.iter().map(|u| u.name.clone()).collect(),
                ..RecoveryOptions::default()
            },
            ready: Mutex::new(HashMap::new()),
        })
    }

    fn login_for(&self, database: &str) -> Option<RecoveryLogin> {
        self.login.clone().map(|l| RecoveryLogin {
            database: database.to_owned(),
            ..l
        })
    }

    /// Every shard primary allows prepared transactions; the error names the node and the setting.
    pub async fn start_check(&self) -> Result<(), StartCheckError> {
        match &self.login {
            Some(login) => check_prepared_transactions(&self.targets, login).await,
            None => Ok(()),
        }
    }

    /// Makes `database` ready for a commit across shards: its recovery has run once, so its decision table
    /// exists (or the error says why it cannot).
    pub async fn ready(&self, database: &str) -> Result<(), RecoveryError> {
        let mut ready = self.ready.lock().await;
        if ready.contains_key(database) {
            return Ok(());
        }
        let Some(login) = self.login_for(database) else {
            return Ok(());
        };
        let recovery = Arc::new(Recovery::new(self.targets.clone(), login, self.options.clone())?);
        let report = recovery.run_once().await;
        super::twophase::report::log_report(&report);
        if let Some(failure) = report.failures.into_iter().next() {
            return Err(failure.error);
        }
        ready.insert(database.to_owned(), recovery);
        Ok(())
    }

    /// One round: every ready database, then each database where a shard holds pgfleet's prepared
    /// transactions and that is not ready yet.
    pub async fn run_all(&self) -> Vec<RecoveryReport> {
        let known: Vec<(String, Arc<Recovery>)> = {
            let ready = self.ready.lock().await;
            ready.iter().map(|(d, r)| (d.clone(), r.clone())).collect()
        };
        let mut reports = Vec::new();
        for (_, recovery) in &known {
            reports.push(recovery.run_once().await);
        }
        for database in self.with_prepared().await {
            if known.iter().any(|(d, _)| *d == database) {
                continue;
            }
            if let Err(e) = self.ready(&database).await {
                tracing::warn!(database = %database, error = %e, "two-phase commit recovery failed");
            }
        }
        reports
    }

    /// Databases where some shard primary holds a prepared transaction named by pgfleet.
    async fn with_prepared(&self) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        let Some(login) = self.login.clone() else {
            return out;
        };
        for target in &self.targets {
            match super::twophase::target::databases_with_prepared(target, &login).await {
                Ok(found) => out.extend(found),
                Err(e) => {
                    tracing::debug!(node = %target.name(), error = %e, "cannot list prepared transactions")
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }
}

/// Runs recovery every `interval` until the task is aborted.
pub fn spawn(decisions: Arc<Decisions>, interval: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            let started = tokio::time::Instant::now();
            for report in decisions.run_all().await {
                super::twophase::report::log_report(&report);
            }
            tokio::time::sleep_until(started + interval).await;
        }
    })
}
