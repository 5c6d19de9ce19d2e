//! Preparing the primary for forward mode: checks with errors that name the setting to change, the
//! publication, and the event trigger that writes each DDL statement into the WAL stream (as a transactional
//! logical message) so that replicas run it at exactly its place among the row changes.

use std::time::Duration;

use super::Replication;
use crate::backend::connect::NodeTarget;
use crate::config::split_host_port;

/// Prefix of the logical messages that carry DDL: "role\nsearch_path\nquery".
pub const DDL_PREFIX: &str = "pgfleet.ddl";

/// Why forwarding could not start or went on.
#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    /// A setting on the primary must change.
    #[error("forward mode: {0}")]
    Setup(String),
    /// A SQL-level failure on a node.
    #[error("forward mode: {context}: {}", describe(source))]
    Sql {
        /// What pgfleet was doing.
        context: String,
        /// The driver's error.
        source: tokio_postgres::Error,
    },
    /// The replication stream failed.
    #[error("forward mode: {0}")]
    Stream(#[from] super::stream::StreamError),
    /// A streamed transaction held back in a file could not be written or read back.
    #[error("forward mode: {0}")]
    Held(#[from] super::feed::spill::SpillError),
    /// A change could not be turned into SQL.
    #[error("forward mode: {0}")]
    Apply(String),
    /// An initial copy shared with other replicas failed; each of them gets the failure as text.
    #[error("forward mode: initial copy: {0}")]
    Copy(String),
    /// The database's shared change stream started over (a replica behind it joined): the applier joins
    /// again from its stored position.
    #[error("forward mode: the change stream started over")]
    Rewound,
}

impl ForwardError {
    /// The same failure for another replica of a shared copy, as text.
    pub(crate) fn shared(&self) -> ForwardError {
        let text = self.to_string();
        let text = text.strip_prefix("forward mode: ").unwrap_or(&text);
        ForwardError::Copy(text.strip_prefix("initial copy: ").unwrap_or(text).to_owned())
    }
}

/// The server's own words when there are some ("db error" alone helps nobody).
fn describe(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!(
            "{} ({}){}",
            db.message(),
            db.code().code(),
            db.detail().map(|d| format!(": {d}")).unwrap_or_default()
        ),
        None => e.to_string(),
    }
}

/// `map_err` helper naming what was being done.
pub fn sql_err(context: impl Into<String>) -> impl FnOnce(tokio_postgres::Error) -> ForwardError {
    let context = context.into();
    move |source| ForwardError::Sql { context, source }
}

/// The answer of a query that returns one boolean (whether an object exists); `what` names the object in
/// the error.
pub(super) async fn query_flag(
    c: &tokio_postgres::Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
    what: &str,
) -> Result<bool, ForwardError> {
    Ok(c.query_one(sql, params)
        .await
        .map_err(sql_err(format!("looking up {what}")))?
        .get(0))
}

/// Whether the primary has a publication of this name.
pub(super) async fn publication_exists(c: &tokio_postgres::Client, name: &str) -> Result<bool, ForwardError> {
    query_flag(
        c,
        "SELECT EXISTS (SELECT 1 FROM pg_publication WHERE pubname = $1)",
        &[&name],
        "the publication",
    )
    .await
}

/// A plain SQL connection as the replication user, with TLS as the node's settings say.
pub async fn client(
    target: &NodeTarget,
    user: &str,
    password: &str,
    database: &str,
    timeout: Duration,
) -> Result<tokio_postgres::Client, ForwardError> {
    let (host, port) = split_host_port(&target.address).map_err(ForwardError::Setup)?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&host)
        .port(port)
        .user(user)
        .password(password)
        .dbname(database)
        .application_name("pgfleet-forward")
        .connect_timeout(timeout)
        .options(
            "-c DateStyle=ISO -c IntervalStyle=postgres -c extra_float_digits=3 -c client_encoding=UTF8",
        );
    let tls = target.tls.postgres(&mut pg);
    let (client, conn) = pg.connect(tls).await.map_err(|e| {
        let why = match e.as_db_error() {
            Some(_) => describe(&e),
            None => target.tls.explain(&e),
        };
        ForwardError::Setup(format!(
            "connecting to {} \"{}\" ({})/{database}: {why}",
            target.role, target.name, target.address
        ))
    })?;
    tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::debug!(error = %e, "forward-mode connection closed");
        }
    });
    Ok(client)
}

/// Checks and prepares every forwarded database on the primary.
pub async fn prepare_all(ctx: &Replication) -> Result<(), ForwardError> {
    for db in &ctx.forward.databases {
        prepare(ctx, db).await?;
    }
    Ok(())
}

async fn prepare(ctx: &Replication, database: &str) -> Result<(), ForwardError> {
    let config = ctx.config_arc();
    let r = &config.replication;
    let (user, password) = (
        r.user.as_deref().unwrap_or(""),
        r.password.as_deref().unwrap_or(""),
    );
    let primary = &ctx.fleet.nodes()[ctx
        .fleet
        .likely_primary(crate::cluster::ShardId::default())
        .index()]
    .target;
    let c = client(
        primary,
        user,
        password,
        database,
        ctx.config().pool.connect_timeout,
    )
    .await?;
    let wal_level: String = c
        .query_one("SHOW wal_level", &[])
        .await
        .map_err(sql_err("reading wal_level"))?
        .get(0);
    if wal_level != "logical" {
        return Err(ForwardError::Setup(format!(
            "the primary \"{}\" has wal_level = {wal_level}; forward mode needs wal_level = logical \
             (set it in postgresql.conf and restart the primary)",
            primary.name
        )));
    }
    let row = c
        .query_one(
            "SELECT rolreplication, rolsuper FROM pg_roles WHERE rolname = current_user",
            &[],
        )
        .await
        .map_err(sql_err("reading the replication role"))?;
    let (can_replicate, is_super): (bool, bool) = (row.get(0), row.get(1));
    if !can_replicate || !is_super {
        return Err(ForwardError::Setup(format!(
            "role \"{user}\" (replication.user) needs REPLICATION and SUPERUSER on the primary \
             (ALTER ROLE \"{user}\" REPLICATION SUPERUSER): it creates slots, a publication and an event trigger"
        )));
    }
    let publication = crate::protocol::quote::quote_ident(&r.name);
    if !publication_exists(&c, &r.name).await? {
        c.batch_execute(&format!("CREATE PUBLICATION {publication} FOR ALL TABLES"))
            .await
            .map_err(sql_err("creating the publication"))?;
        tracing::info!(database, publication = %r.name, "created publication");
    }
    // The message carries who ran the DDL and with which search_path, so that the replica creates the same
    // objects with the same owner. current_query() is the client's whole string; the applier keeps its DDL.
    c.batch_execute(&format!(
        "CREATE SCHEMA IF NOT EXISTS pgfleet;
         CREATE OR REPLACE FUNCTION pgfleet.forward_ddl() RETURNS event_trigger LANGUAGE plpgsql AS $f$
         BEGIN
           PERFORM pg_logical_emit_message(true, '{DDL_PREFIX}',
             current_user || chr(10) || current_setting('search_path') || chr(10) || current_query());
         END $f$;
         DO $d$ BEGIN
           -- Before each command, so the message precedes the rows the command writes (CREATE TABLE AS).
           IF EXISTS (SELECT 1 FROM pg_event_trigger
                      WHERE evtname = 'pgfleet_forward_ddl' AND evtevent <> 'ddl_command_start') THEN
             DROP EVENT TRIGGER pgfleet_forward_ddl;
           END IF;
           IF NOT EXISTS (SELECT 1 FROM pg_event_trigger WHERE evtname = 'pgfleet_forward_ddl') THEN
             CREATE EVENT TRIGGER pgfleet_forward_ddl ON ddl_command_start EXECUTE FUNCTION pgfleet.forward_ddl();
           END IF;
         END $d$;"
    ))
    .await
    .map_err(sql_err("creating the DDL event trigger"))?;
    Ok(())
}

/// The slot name for a (database, replica) pair: lowercase, at most 63 bytes.
pub fn slot_name(prefix: &str, database: &str, node: &str) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() {
                    c.to_ascii_lowercase()
                } else {
                    '_'
                }
            })
            .collect()
    };
    let mut name = format!("{prefix}_{}_{}", clean(database), clean(node));
    name.truncate(63);
    name
}

/// The slot of `database`'s shared change stream: the per-node name with an empty node name, which no
/// node has, so it never collides with a replica's copy slot and matches `forward-stop`'s pattern.
pub fn feed_slot_name(prefix: &str, database: &str) -> String {
    slot_name(prefix, database, "")
}

#[cfg(test)]
mod tests {
    use super::ForwardError;

    #[test]
    fn a_shared_failure_reads_once_as_an_initial_copy_failure() {
        let cases = [
            (
                ForwardError::Setup("pg_dump failed (exit status: 1): no such database".into()),
                "forward mode: initial copy: pg_dump failed (exit status: 1): no such database",
            ),
            (
                ForwardError::Copy("writing public.t: connection closed".into()),
                "forward mode: initial copy: writing public.t: connection closed",
            ),
            (
                ForwardError::Apply("bad progress x".into()),
                "forward mode: initial copy: bad progress x",
            ),
        ];
        for (error, expected) in cases {
            assert_eq!(error.shared().to_string(), expected);
        }
    }
}
