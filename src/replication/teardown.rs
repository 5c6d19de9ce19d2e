//! `pgfleet forward-stop`: the way out of forward mode for one database. It removes what forward mode made on
//! the primary (the database's replication slot and those of older versions, the publication, the DDL event
//! trigger with its function and schema) so that a stopped setup does not keep WAL on the primary forever, and clears the
//! progress rows on the replicas it can reach, so that turning forward mode on again starts with a fresh copy.
//! The replicas' data stays as it is.
//!
//! It works from the config file alone, with pgfleet stopped; running it twice removes nothing the second
//! time. A slot still in use, or a connection of pgfleet's forwarding tasks to the database (a running
//! pgfleet keeps one open there for as long as it forwards the database, `presence`, even while its stream
//! and its replicas' tasks are not connected), is an error naming the fix, not a kill.

use std::sync::Arc;
use std::time::Duration;

use super::ForwardState;
use super::setup::{ForwardError, client, publication_exists, query_flag, sql_err};
use crate::cluster::Fleet;
use crate::config::{Config, Role};
use crate::protocol::quote::quote_ident;

/// What `forward-stop` did, one line each, for the user.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    /// Objects removed.
    pub removed: Vec<String>,
    /// Things looked at and left alone (nothing to do, unreachable replicas, a schema not empty).
    pub notes: Vec<String>,
}

/// The prefix of every slot of `database` made by a pgfleet whose `replication.name` is `name` (see
/// [`super::setup::slot_name`]), as a LIKE pattern with `_` escaped.
fn slot_pattern(name: &str, database: &str) -> String {
    let prefix = super::setup::slot_name(name, database, "");
    format!(
        "{}%",
        prefix
            .replace('\\', "\\\\")
            .replace('_', "\\_")
            .replace('%', "\\%")
    )
}

/// How long forward-stop waits for pgfleet's connections to go (a pgfleet stopped a moment ago) before it
/// calls them in use.
const IN_USE_WAIT: Duration = Duration::from_secs(3);

/// The slots of `database` to drop, once nothing of a running pgfleet uses them: neither an active slot nor
/// a connection of pgfleet's forwarding tasks (whose stream may be between two connections to its slot).
async fn in_use_check(
    c: &tokio_postgres::Client,
    name: &str,
    database: &str,
) -> Result<Vec<tokio_postgres::Row>, ForwardError> {
    let deadline = std::time::Instant::now() + IN_USE_WAIT;
    loop {
        let slots = c
            .query(
                "SELECT slot_name::text, active, active_pid FROM pg_replication_slots \
                 WHERE database = current_database() AND plugin = 'pgoutput' AND slot_name LIKE $1 ORDER BY 1",
                &[&slot_pattern(name, database)],
            )
            .await
            .map_err(sql_err("listing replication slots"))?;
        let mut users: Vec<String> = slots
            .iter()
            .filter(|row| row.get::<_, bool>(1))
            .map(|row| {
                format!(
                    "replication slot {} (walsender pid {})",
                    row.get::<_, String>(0),
                    row.get::<_, Option<i32>>(2).unwrap_or(0)
                )
            })
            .collect();
        let sessions = c
            .query(
                "SELECT pid FROM pg_stat_activity WHERE datname = current_database() \
                 AND application_name = 'pgfleet-forward' AND pid <> pg_backend_pid() ORDER BY 1",
                &[],
            )
            .await
            .map_err(sql_err("listing pgfleet's connections"))?;
        if !sessions.is_empty() {
            let pids: Vec<String> = sessions.iter().map(|r| r.get::<_, i32>(0).to_string()).collect();
            users.push(format!(
                "pgfleet's forwarding connections (pids {})",
                pids.join(", ")
            ));
        }
        if users.is_empty() {
            return Ok(slots);
        }
        if std::time::Instant::now() >= deadline {
            return Err(ForwardError::Setup(format!(
                "{} are in use: stop pgfleet (or remove \"{database}\" from replication.databases \
                 and restart it) before forward-stop",
                users.join(", ")
            )));
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Ends forward mode for `database`: see the module docs.
pub async fn forward_stop(config: &Config, database: &str) -> Result<Report, ForwardError> {
    let r = &config.replication;
    let user = r.user.clone().ok_or_else(|| {
        ForwardError::Setup(
            "replication.user is not set: forward-stop connects as the role that created the slots".into(),
        )
    })?;
    let password = r.password.clone().unwrap_or_default();
    let fleet = Fleet::from_config(config, Arc::new(ForwardState::default()))
        .map_err(|e| ForwardError::Setup(e.to_string()))?;
    let nodes = fleet.nodes();
    let primary = nodes
        .iter()
        .find(|n| n.role == Role::Primary)
        .ok_or_else(|| ForwardError::Setup("no node has role = \"primary\" in the config".into()))?;
    let timeout = config.pool.connect_timeout;
    let c = client(&primary.target, &user, &password, database, timeout).await?;
    let mut report = Report::default();

    let slots = in_use_check(&c, &r.name, database).await?;
    for row in &slots {
        let slot: String = row.get(0);
        c.execute("SELECT pg_drop_replication_slot($1)", &[&slot])
            .await
            .map_err(sql_err(format!("dropping replication slot {slot}")))?;
        report.removed.push(format!("replication slot {slot}"));
    }
    if slots.is_empty() {
        report.notes.push(format!(
            "no replication slot of \"{}\" in database {database}",
            r.name
        ));
    }

    // The event trigger first: the DROPs below would otherwise fire it.
    let trigger = "SELECT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgfleet_forward_ddl')";
    if query_flag(&c, trigger, &[], "the event trigger").await? {
        drop_object(
            &c,
            "DROP EVENT TRIGGER IF EXISTS pgfleet_forward_ddl",
            "event trigger pgfleet_forward_ddl",
            &mut report,
        )
        .await?;
    }
    if publication_exists(&c, &r.name).await? {
        let drop = format!("DROP PUBLICATION IF EXISTS {}", quote_ident(&r.name));
        drop_object(&c, &drop, &format!("publication {}", r.name), &mut report).await?;
    }
    let function = "SELECT to_regprocedure('pgfleet.forward_ddl()') IS NOT NULL";
    if query_flag(&c, function, &[], "the DDL function").await? {
        drop_object(
            &c,
            "DROP FUNCTION IF EXISTS pgfleet.forward_ddl()",
            "function pgfleet.forward_ddl()",
            &mut report,
        )
        .await?;
    }
    let schema = "SELECT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'pgfleet')";
    if query_flag(&c, schema, &[], "the schema pgfleet").await? {
        // RESTRICT: a schema that holds objects of someone else's stays.
        match c.batch_execute("DROP SCHEMA IF EXISTS pgfleet").await {
            Ok(()) => report.removed.push("schema pgfleet".into()),
            Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::DEPENDENT_OBJECTS_STILL_EXIST) => {
                report
                    .notes
                    .push("schema pgfleet kept: it holds objects pgfleet did not create".into())
            }
            Err(e) => return Err(sql_err("dropping the schema pgfleet")(e)),
        }
    }

    for node in nodes.iter().filter(|n| n.role != Role::Primary) {
        clear_progress(config, &node.target, &user, &password, database, &mut report).await;
    }
    Ok(report)
}

/// Runs `drop` and reports `what` as removed.
async fn drop_object(
    c: &tokio_postgres::Client,
    drop: &str,
    what: &str,
    report: &mut Report,
) -> Result<(), ForwardError> {
    c.batch_execute(drop)
        .await
        .map_err(sql_err(format!("dropping the {what}")))?;
    report.removed.push(what.to_owned());
    Ok(())
}

/// Deletes a replica's progress rows of this pgfleet's slots for `database`; an unreachable replica is noted,
/// not an error (its rows only make a later forward mode copy it again, which happens anyway).
async fn clear_progress(
    config: &Config,
    replica: &crate::backend::connect::NodeTarget,
    user: &str,
    password: &str,
    database: &str,
    report: &mut Report,
) {
    // The shared stream's key, and the per-replica key of versions that kept a slot per replica.
    let keys = [
        super::setup::feed_slot_name(&config.replication.name, database),
        super::setup::slot_name(&config.replication.name, database, &replica.name),
    ];
    let c = match client(replica, user, password, database, config.pool.connect_timeout).await {
        Ok(c) => c,
        Err(e) => {
            report
                .notes
                .push(format!("replica {} not reached: {e}", replica.name));
            return;
        }
    };
    let result = c
        .execute(
            "DELETE FROM pgfleet_replica.progress WHERE slot = ANY($1)",
            &[&&keys[..]],
        )
        .await;
    match result {
        Ok(0) => {}
        Ok(_) => report.removed.push(format!(
            "progress of slot {} on replica {}",
            keys[0], replica.name
        )),
        // No progress table: this replica was never forwarded to.
        Err(e) if e.code() == Some(&tokio_postgres::error::SqlState::UNDEFINED_TABLE) => {}
        Err(e) => report
            .notes
            .push(format!("replica {}: progress not cleared: {e}", replica.name)),
    }
}

#[cfg(test)]
mod tests {
    use super::slot_pattern;

    #[test]
    fn slot_patterns_escape_like_wildcards() {
        let cases = [
            ("pgfleet", "app", "pgfleet\\_app\\_%"),
            ("pgfleet", "My-DB", "pgfleet\\_my\\_db\\_%"),
            ("x%y", "d", "x\\%y\\_d\\_%"),
        ];
        for (name, db, want) in cases {
            assert_eq!(slot_pattern(name, db), want, "{name} {db}");
        }
    }
}
