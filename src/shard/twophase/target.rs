//! Recovery's side of the shards: which primary serves each shard, the role and database recovery logs in
//! as, its control connections (deadpool-postgres over the node's TLS settings, as the health checks
//! connect), the start check of `max_prepared_transactions`, and the creation of the decision table.

use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::{Object, Pool, PoolError};

use super::participant::{ParticipantError, from_postgres};
use super::{CREATE_DECISION_TABLE, DECISION_TABLE, grant_decision_writers};
use crate::backend::tls::NodeTls;
use crate::cluster::ShardId;
use crate::config::{Config, NodeConfig, Role};

/// A shard's primary, as recovery reaches it.
#[derive(Debug, Clone)]
pub struct ShardTarget {
    /// The shard.
    pub shard: ShardId,
    name: String,
    address: String,
    tls: Arc<NodeTls>,
}

/// Why a shard target could not be built from its node's config.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TargetError {
    /// The node's TLS settings (its CA file, its address) could not be used.
    #[error("pgfleet: node \"{name}\" (nodes[{index}]): {reason}")]
    Node {
        /// Node name.
        name: String,
        /// Index in the config's node list.
        index: usize,
        /// What was wrong.
        reason: String,
    },
}

impl ShardTarget {
    /// Shard `shard`'s primary, configured as `nodes[index]`.
    pub fn new(shard: ShardId, index: usize, node: &NodeConfig) -> Result<ShardTarget, TargetError> {
        let tls = NodeTls::new(index, node).map_err(|e| TargetError::Node {
            name: node.name.clone(),
            index,
            reason: e.to_string(),
        })?;
        Ok(ShardTarget {
            shard,
            name: node.name.clone(),
            address: node.address.clone(),
            tls: Arc::new(tls),
        })
    }

    /// Every shard's configured primary, by shard number (empty for an unsharded config).
    pub fn primaries(config: &Config) -> Result<Vec<ShardTarget>, TargetError> {
        let mut targets: Vec<ShardTarget> = Vec::new();
        for (index, node) in config.nodes.iter().enumerate() {
            if let (Some(shard), Role::Primary) = (node.shard, node.role) {
                targets.push(ShardTarget::new(ShardId::new(shard), index, node)?);
            }
        }
        targets.sort_by_key(|t| t.shard);
        Ok(targets)
    }

    /// The node's configured name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's `host:port`.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// Who recovery logs in as, and where. COMMIT PREPARED and ROLLBACK PREPARED need the role that prepared
/// the transaction or a superuser, so with several client roles this should be a superuser.
#[derive(Clone, PartialEq, Eq)]
pub struct RecoveryLogin {
    /// Role name.
    pub user: String,
    /// Its password.
    pub password: String,
    /// The database whose distributed transactions are recovered.
    pub database: String,
    /// Bound on connecting and on each statement.
    pub timeout: Duration,
}

impl RecoveryLogin {
    /// The health checks' user (`health.user`, else the first `[[users]]` entry) on `database`, with
    /// `health.timeout`; None without any configured user.
    pub fn from_config(config: &Config, database: &str) -> Option<RecoveryLogin> {
        config.health_user().map(|u| RecoveryLogin {
            user: u.name.clone(),
            password: u.password.clone(),
            database: database.to_owned(),
            timeout: config.health.timeout,
        })
    }
}

// Hand-written so that the password can never reach a log line.
impl std::fmt::Debug for RecoveryLogin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecoveryLogin")
            .field("user", &self.user)
            .field("password", &"<redacted>")
            .field("database", &self.database)
            .field("timeout", &self.timeout)
            .finish()
    }
}

/// Why the start check failed on a shard primary.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StartCheckError {
    /// `max_prepared_transactions` is 0: the node cannot prepare, so no commit across shards could include it.
    #[error(
        "pgfleet: shard primary \"{node}\" ({shard}, {address}) has max_prepared_transactions = 0, so it cannot \
         take part in a commit across shards; set max_prepared_transactions in its postgresql.conf (at least \
         the number of connections pgfleet may open to it, e.g. its max_connections) and restart it"
    )]
    PreparedTransactionsDisabled {
        /// Node name.
        node: String,
        /// Its shard.
        shard: ShardId,
        /// Its address.
        address: String,
    },
    /// The node could not be asked.
    #[error(
        "pgfleet: cannot check max_prepared_transactions on shard primary \"{node}\" ({shard}): {reason}"
    )]
    Unreachable {
        /// Node name.
        node: String,
        /// Its shard.
        shard: ShardId,
        /// What failed.
        reason: String,
    },
}

/// The start check: every shard primary must allow prepared transactions. Returns the first failure; the
/// caller decides whether it stops pgfleet.
pub async fn check_prepared_transactions(
    targets: &[ShardTarget],
    login: &RecoveryLogin,
) -> Result<(), StartCheckError> {
    for target in targets {
        let unreachable = |reason: String| StartCheckError::Unreachable {
            node: target.name.clone(),
            shard: target.shard,
            reason,
        };
        let pool = control_pool(target, login).map_err(unreachable)?;
        let setting = bounded(login.timeout, async {
            let client = get(&pool, target).await?;
            let row = client
                .query_one("SELECT current_setting('max_prepared_transactions')::int", &[])
                .await
                .map_err(|e| target.tls.explain(&e))?;
            row.try_get::<_, i32>(0).map_err(|e| e.to_string())
        })
        .await
        .map_err(unreachable)?;
        if setting == 0 {
            return Err(StartCheckError::PreparedTransactionsDisabled {
                node: target.name.clone(),
                shard: target.shard,
                address: target.address.clone(),
            });
        }
    }
    Ok(())
}

/// A one-connection pool towards the target, as `login`.
pub(crate) fn control_pool(target: &ShardTarget, login: &RecoveryLogin) -> Result<Pool, String> {
    let control = crate::backend::control::ControlLogin {
        user: &login.user,
        password: &login.password,
        database: &login.database,
        application: "pgfleet-2pc-recovery",
        timeout: login.timeout,
    };
    crate::backend::control::control_pool(&target.address, &target.tls, &control)
}

/// A connection from the pool, its failure in words naming the node's TLS setting when that was the cause.
pub(crate) async fn get(pool: &Pool, target: &ShardTarget) -> Result<Object, String> {
    pool.get().await.map_err(|e| match e {
        PoolError::Backend(e) => target.tls.explain(&e),
        other => other.to_string(),
    })
}

/// Runs `work` within `timeout`, a timeout becoming an error in words.
pub(crate) async fn bounded<T>(
    timeout: Duration,
    work: impl std::future::Future<Output = Result<T, String>>,
) -> Result<T, String> {
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {timeout:?} (health.timeout)")))
}

/// Creates the decision table on this connection's database when it is missing, granting `writers` the
/// right to record decisions. Two pgfleet instances starting together may race on the CREATEs; the loser
/// finds the table on its second look.
pub(crate) async fn ensure_decision_table(
    client: &Object,
    writers: &[String],
) -> Result<(), ParticipantError> {
    for attempt in 0..2 {
        let row = client
            .query_one(
                "SELECT to_regclass($1) IS NOT NULL AND to_regclass('pgfleet.ids') IS NOT NULL",
                &[&DECISION_TABLE],
            )
            .await
            .map_err(from_postgres)?;
        if row.try_get::<_, bool>(0).unwrap_or(false) {
            return Ok(());
        }
        let sql = match grant_decision_writers(writers) {
            Some(grants) => format!("{CREATE_DECISION_TABLE}; {grants}"),
            None => CREATE_DECISION_TABLE.to_owned(),
        };
        match client.batch_execute(&sql).await {
            Ok(()) => return Ok(()),
            Err(e) => {
                let e = from_postgres(e);
                // unique_violation, duplicate_table, duplicate_schema: created concurrently.
                let raced = matches!(e.sqlstate(), "23505" | "42P07" | "42P06");
                if !raced || attempt == 1 {
                    return Err(e);
                }
            }
        }
    }
    Ok(())
}

/// The databases where `target` holds a prepared transaction named by pgfleet, asked through `login`'s
/// database (`pg_prepared_xacts` lists every database's).
pub async fn databases_with_prepared(
    target: &ShardTarget,
    login: &RecoveryLogin,
) -> Result<Vec<String>, String> {
    let pool = control_pool(target, login)?;
    bounded(login.timeout, async {
        let client = get(&pool, target).await?;
        let rows = client
            .query(
                "SELECT DISTINCT database::text FROM pg_prepared_xacts WHERE gid LIKE 'pgfleet\\_%'",
                &[],
            )
            .await
            .map_err(|e| target.tls.explain(&e))?;
        Ok(rows.iter().map(|r| r.get::<_, String>(0)).collect())
    })
    .await
}
