//! Health checks: one task per node that, every `health.interval`, asks the node over a deadpool-postgres
//! control connection whether it is reachable, whether it is in recovery, its WAL position and how old its
//! last replayed transaction is, and publishes the result into the fleet snapshot. State changes are logged
//! once each.

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use deadpool_postgres::{Pool, PoolError};

use super::Fleet;
use super::view::NodeState;
use crate::backend::connect::NodeTarget;
use crate::backend::tls::NodeTls;
use crate::config::ConfigHandle;
use crate::protocol::lsn::{Lsn, WalGeometry};

/// The one query a check runs: role, WAL position (current on a primary, replayed on a replica), the age of
/// the last replayed transaction, the WAL's page and segment sizes, and whether sessions may commit
/// asynchronously without saying so (`synchronous_commit = off` in the server's configuration, or set for a
/// role or database; any value but the four that write the commit record before the commit returns counts).
const CHECK_SQL: &str = "SELECT pg_is_in_recovery(), \
     (CASE WHEN pg_is_in_recovery() THEN pg_last_wal_replay_lsn() ELSE pg_current_wal_lsn() END)::text, \
     EXTRACT(EPOCH FROM (now() - pg_last_xact_replay_timestamp()))::float8, \
     current_setting('wal_block_size')::int8, pg_size_bytes(current_setting('wal_segment_size')), \
     current_setting('synchronous_commit') = 'off' OR EXISTS (SELECT FROM pg_db_role_setting, \
       unnest(setconfig) AS s WHERE s ILIKE 'synchronous\\_commit=%' \
       AND lower(substr(s, 20)) NOT IN ('on', 'local', 'remote_write', 'remote_apply'))";

/// Starts one monitor task per node of `fleet`, with the `[health]` settings of `config`.
pub(crate) fn spawn(fleet: &Arc<Fleet>, config: &ConfigHandle) {
    for index in 0..fleet.nodes().len() {
        spawn_node(fleet, config, index);
    }
}

/// Starts the monitor task of one node slot; it ends when a reload retires the slot. The health settings
/// are read at every check, so a reload of `[health]` applies from the next one.
pub(crate) fn spawn_node(fleet: &Arc<Fleet>, config: &ConfigHandle, index: usize) {
    let fleet = fleet.clone();
    let config_handle = config.clone();
    tokio::spawn(async move {
        let node = fleet.node(super::NodeId::new(index));
        let mut control: Option<(Login, Pool)> = None;
        let mut last: Option<(bool, Option<bool>)> = None;
        let mut commits_async = false;
        loop {
            if node.is_retired() {
                tracing::info!(node = %node.target.name, "node removed from the config: no longer checked");
                return;
            }
            let (login, interval, timeout) = {
                let config = config_handle.get();
                let login = config.health_user().map(|u| Login {
                    user: u.name.clone(),
                    password: u.password.clone(),
                    database: config.health.database.clone(),
                    timeout: config.health.timeout,
                });
                (login, config.health.interval, config.health.timeout)
            };
            let Some(login) = login else {
                // No health user: nodes count as up; a reload that adds one starts the checks.
                tokio::time::sleep(interval).await;
                continue;
            };
            if control.as_ref().is_none_or(|(l, _)| *l != login) {
                control = control_pool(&node.target, &login).map(|p| (login, p));
            }
            let started = tokio::time::Instant::now();
            let Some((_, pool)) = &control else {
                tracing::error!(node = %node.target.name, "cannot build the health-check pool");
                return;
            };
            let state = check(pool, &node.target.tls, timeout).await;
            let now = (state.up, state.in_recovery);
            if last != Some(now) {
                log_change(&node.target.name, &state, last.is_none());
                last = Some(now);
            }
            if state.up && state.in_recovery == Some(false) && state.async_commits != commits_async {
                commits_async = state.async_commits;
                log_commit_mode(&node.target.name, commits_async);
            }
            if state.up {
                node.mark_up();
            }
            fleet.update(index, state);
            tokio::time::sleep_until(started + interval).await;
        }
    });
}

/// Who the checks log in as, and where.
#[derive(PartialEq, Eq)]
struct Login {
    user: String,
    password: String,
    database: String,
    timeout: Duration,
}

fn log_change(name: &str, state: &NodeState, first: bool) {
    let role = match state.in_recovery {
        Some(true) => "replica",
        Some(false) => "primary",
        None => "unknown",
    };
    if state.up {
        tracing::info!(node = %name, role, "node is up");
    } else if first {
        tracing::warn!(node = %name, error = state.error.as_deref().unwrap_or(""), "node is down");
    } else {
        tracing::warn!(node = %name, error = state.error.as_deref().unwrap_or(""), "node went down");
    }
}

/// Asynchronous commits change which position a commit gets (`WalPosition::Inserted`), and reads on
/// replicas wait for the WAL writer after each: worth a line when it starts and ends.
fn log_commit_mode(name: &str, asynchronous: bool) {
    if asynchronous {
        tracing::info!(
            node = %name,
            "primary may commit asynchronously (synchronous_commit = off for the server, a role or a database): \
             commits are tracked by insert position"
        );
    } else {
        tracing::info!(node = %name, "primary commits synchronously: commits are tracked by write position");
    }
}

fn control_pool(target: &NodeTarget, login: &Login) -> Option<Pool> {
    let login = crate::backend::control::ControlLogin {
        user: &login.user,
        password: &login.password,
        database: &login.database,
        application: "pgfleet-health",
        timeout: login.timeout,
    };
    crate::backend::control::control_pool(&target.address, &target.tls, &login).ok()
}

async fn check(pool: &Pool, tls: &NodeTls, timeout: Duration) -> NodeState {
    let started = Some(std::time::Instant::now());
    let result = tokio::time::timeout(timeout, async {
        let client = pool.get().await.map_err(|e| match e {
            PoolError::Backend(e) => tls.explain(&e),
            other => other.to_string(),
        })?;
        let row = client
            .query_one(CHECK_SQL, &[])
            .await
            .map_err(|e| tls.explain(&e))?;
        let in_recovery: bool = row.try_get(0).map_err(|e| e.to_string())?;
        let lsn: Option<String> = row.try_get(1).map_err(|e| e.to_string())?;
        let replay_age: Option<f64> = row.try_get(2).map_err(|e| e.to_string())?;
        let block_size: Option<i64> = row.try_get(3).map_err(|e| e.to_string())?;
        let segment_size: Option<i64> = row.try_get(4).map_err(|e| e.to_string())?;
        let wal = match (block_size.map(u64::try_from), segment_size.map(u64::try_from)) {
            (Some(Ok(block_size)), Some(Ok(segment_size))) => Some(WalGeometry {
                block_size,
                segment_size,
            }),
            _ => None,
        };
        let async_commits: Option<bool> = row.try_get(5).map_err(|e| e.to_string())?;
        Ok::<_, String>((in_recovery, lsn, replay_age, wal, async_commits == Some(true)))
    })
    .await;
    let checked_at = Some(SystemTime::now());
    match result {
        Ok(Ok((in_recovery, lsn, replay_age, wal, async_commits))) => NodeState {
            up: true,
            in_recovery: Some(in_recovery),
            lsn: lsn.as_deref().and_then(|text| text.parse::<Lsn>().ok()),
            wal,
            async_commits,
            lag_bytes: None,
            lag: if in_recovery {
                replay_age.map(|s| Duration::from_secs_f64(s.max(0.0)))
            } else {
                None
            },
            checked_at,
            started,
            error: None,
        },
        Ok(Err(e)) => NodeState {
            up: false,
            checked_at,
            error: Some(e),
            ..NodeState::default()
        },
        Err(_) => NodeState {
            up: false,
            checked_at,
            error: Some(format!(
                "health check timed out after {timeout:?} (health.timeout)"
            )),
            ..NodeState::default()
        },
    }
}
