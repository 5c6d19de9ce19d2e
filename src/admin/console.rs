//! The admin console: what a client gets when it logs in to the virtual database `pgfleet` as a user with
//! `admin = true`. It speaks the simple query protocol only and answers a handful of `SHOW` commands from
//! the proxy's own state, never touching a node:
//!
//! | command | rows |
//! | --- | --- |
//! | `SHOW NODES` | one per node: address, configured and observed role, up/down, lag, LSN, connections, counters |
//! | `SHOW SHARDS` | one per shard: its primary and state, replicas and how many are up, counters, sharded tables |
//! | `SHOW POOLS` | one per (node, database, user) pool: size, idle, in use, limit, waiting checkouts |
//! | `SHOW CLIENTS` | one per live client session |
//! | `SHOW STATS` | totals (clients, login failures), then routing decisions per (target, rule) |
//! | `SHOW REPLICATION` | one per replica (and database, in forward mode): state, position, lag, slot size |
//! | `SHOW METRICS` | the Prometheus text served on `admin.metrics_address`, one line per row |
//! | `SHOW ROUTE <sql>` | where the router would send `<sql>` and which rule decided (and in a sharded fleet, which shards and why) |
//! | `RELOAD` | re-reads the config file (as SIGHUP does); one row per change applied |
//!
//! Answers have PostgreSQL's shape (RowDescription, DataRow..., CommandComplete `SHOW`, ReadyForQuery), so
//! psql and every driver display them like any query result. Counters are `int8` columns, everything else
//! `text`; an unknown value (a lag never measured) is NULL.

use std::fmt::Display;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};

use bytes::{BufMut, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::Context;

/// When pgfleet shuts down: set (to the deadline) once a shutdown has begun.
pub(crate) type Shutdown = tokio::sync::watch::Receiver<Option<tokio::time::Instant>>;
use crate::protocol::frame::build;
use crate::protocol::messages::{
    ProxyError, backend_key_data, parameter_status, query_text, ready_for_query,
};
use crate::protocol::{FrameBuffer, FrameError};
use crate::replication::streamed::StreamedCounts;
use crate::router::classify::{Rule, TxStart, classify};
use crate::router::depth::MAX_DEPTH;
use crate::router::functions::FunctionRules;
use crate::router::split::split_statements;
use ColumnType::{Int, Text};

/// The commands, for the HINT of an unknown one.
const COMMANDS_HINT: &str = "The admin console understands SHOW NODES, SHOW SHARDS, SHOW POOLS, SHOW CLIENTS, SHOW STATS, \
                             SHOW REPLICATION, SHOW METRICS, SHOW ROUTE <sql> and RELOAD.";

/// Longest command text quoted back in an error, so that a pasted script does not come back whole.
const QUOTE_LIMIT: usize = 200;

/// Why an admin console session ended abnormally. A client that leaves (Terminate or EOF) is not an error.
#[derive(Debug, thiserror::Error)]
pub(crate) enum ConsoleError {
    /// The client's socket failed.
    #[error("admin console client connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client sent bytes that are not protocol frames.
    #[error("admin console protocol violation: {0}")]
    Protocol(#[from] FrameError),
    /// The client sent a message type that has no meaning after startup; a FATAL was sent.
    #[error("admin console got unexpected message type '{0}'")]
    UnexpectedMessage(char),
}

/// Serves the admin console on an authenticated client connection until the client leaves.
///
/// The caller has already sent AuthenticationOk and checked that `user` is an admin; this sends the rest
/// of the startup (ParameterStatus, BackendKeyData, ReadyForQuery) and then answers simple queries.
pub(crate) async fn run_console<S: AsyncRead + AsyncWrite + Unpin>(
    client: &mut S,
    ctx: &Arc<Context>,
    user: &str,
    shutdown: &mut Shutdown,
) -> Result<(), ConsoleError> {
    tracing::debug!(user, "admin console session started");
    let mut out = BytesMut::new();
    let version = format!("15.0 (pgfleet {})", env!("CARGO_PKG_VERSION"));
    for (name, value) in [
        ("server_version", version.as_str()),
        ("server_encoding", "UTF8"),
        ("client_encoding", "UTF8"),
        ("DateStyle", "ISO, MDY"),
        ("integer_datetimes", "on"),
        ("standard_conforming_strings", "on"),
        ("TimeZone", "UTC"),
        ("application_name", ""),
    ] {
        out.put_slice(&parameter_status(name, value));
    }
    // Nothing the console runs can be cancelled, so the key is never registered: a CancelRequest
    // carrying it finds no session and is ignored.
    out.put_slice(&backend_key_data(0, 0));
    out.put_slice(&ready_for_query(b'I'));
    send(client, &out).await?;

    let mut frames = FrameBuffer::new(ctx.config().listen.max_message_size as usize);
    // After an extended-protocol message PostgreSQL skips everything up to Sync; so does the console, so
    // that a driver's Parse/Bind/Execute/Sync batch gets exactly one error and one ReadyForQuery.
    let mut skip_to_sync = false;
    loop {
        let frame = match frames.next_frame() {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                // Between commands, a shutdown closes the session as it closes the others between
                // transactions (otherwise a monitoring tool's idle console would hold pgfleet for the
                // whole shutdown_timeout).
                let stopping = tokio::select! {
                    read = client.read_buf(frames.read_target()) => {
                        if read? == 0 {
                            return Ok(());
                        }
                        false
                    }
                    Ok(_) = shutdown.wait_for(Option::is_some) => true,
                };
                if stopping {
                    let fatal =
                        ProxyError::fatal("57P01", "terminating connection due to administrator command");
                    send(client, &fatal.encode()).await?;
                    return Ok(());
                }
                continue;
            }
            Err(e) => {
                let fatal = ProxyError::fatal("08P01", format!("invalid frontend message: {e}"));
                // The connection is being dropped for the violation; a failed write changes nothing.
                let _ = send(client, &fatal.encode()).await;
                return Err(e.into());
            }
        };
        if frame.kind == b'X' {
            return Ok(());
        }
        if skip_to_sync {
            if frame.kind == b'S' {
                skip_to_sync = false;
                send(client, &ready_for_query(b'I')).await?;
            }
            continue;
        }
        match frame.kind {
            b'Q' => {
                let reply = match query_text(frame.body()) {
                    Some(text) => answer(ctx, text),
                    None => {
                        let mut reply = BytesMut::new();
                        let e = ProxyError::error("08P01", "pgfleet: malformed Query message");
                        reply.put_slice(&e.encode());
                        reply.put_slice(&ready_for_query(b'I'));
                        reply
                    }
                };
                send(client, &reply).await?;
            }
            b'P' | b'B' | b'D' | b'E' | b'C' => {
                skip_to_sync = true;
                send(client, &simple_only().encode()).await?;
            }
            // A FunctionCall is answered on its own, without a Sync to wait for.
            b'F' => {
                let mut reply = BytesMut::new();
                reply.put_slice(&simple_only().encode());
                reply.put_slice(&ready_for_query(b'I'));
                send(client, &reply).await?;
            }
            b'S' => send(client, &ready_for_query(b'I')).await?,
            // Flush with nothing pending, and CopyData/CopyDone/CopyFail outside COPY: PostgreSQL ignores them.
            b'H' | b'd' | b'c' | b'f' => {}
            other => {
                let fatal = ProxyError::fatal(
                    "08P01",
                    format!("invalid frontend message type {}", other as char),
                );
                let _ = send(client, &fatal.encode()).await;
                return Err(ConsoleError::UnexpectedMessage(other as char));
            }
        }
    }
}

async fn send<S: AsyncWrite + Unpin>(client: &mut S, bytes: &[u8]) -> Result<(), std::io::Error> {
    client.write_all(bytes).await?;
    client.flush().await
}

fn simple_only() -> ProxyError {
    ProxyError::error("0A000", "the admin console accepts only simple queries")
        .with_hint("Use the simple query protocol (psql, or simple_query in a driver).")
}

/// The whole reply to one Query message, ReadyForQuery included.
fn answer(ctx: &Arc<Context>, text: &str) -> BytesMut {
    let mut out = BytesMut::new();
    // SHOW ROUTE takes the rest of the text as one request, semicolons and all: the router classifies a
    // simple query string as a whole, and so must the question about it.
    let commands: Vec<&str> = match strip_keywords(text.trim_start(), &["SHOW", "ROUTE"]) {
        Some(_) => vec![text.trim()],
        None => split_statements(text),
    };
    if commands.is_empty() {
        out.put_slice(&build(b'I', &[]));
    }
    for command in commands {
        match run_command(ctx, command) {
            Ok(table) => table.encode(&mut out),
            Err(e) => {
                // As in PostgreSQL, an error ends the rest of a multi-command string.
                out.put_slice(&e.encode());
                break;
            }
        }
    }
    out.put_slice(&ready_for_query(b'I'));
    out
}

/// Runs one admin command.
fn run_command(ctx: &Arc<Context>, command: &str) -> Result<Table, ProxyError> {
    let command = command.trim().trim_end_matches(';').trim_end();
    if let Some(sql) = strip_keywords(command, &["SHOW", "ROUTE"]) {
        return show_route(ctx, sql);
    }
    let words: Vec<String> = command.split_whitespace().map(str::to_ascii_uppercase).collect();
    let words: Vec<&str> = words.iter().map(String::as_str).collect();
    match words.as_slice() {
        ["SHOW", "NODES"] => Ok(show_nodes(ctx)),
        ["SHOW", "SHARDS"] => Ok(shards::show_shards(ctx)),
        ["SHOW", "POOLS"] => Ok(show_pools(ctx)),
        ["SHOW", "CLIENTS"] => Ok(show_clients(ctx)),
        ["SHOW", "STATS"] => Ok(show_stats(ctx)),
        ["SHOW", "REPLICATION"] => Ok(show_replication(ctx)),
        ["SHOW", "METRICS"] => Ok(show_metrics(ctx)),
        ["RELOAD"] => reload(ctx),
        _ => Err(unknown_command(command)),
    }
}

fn unknown_command(command: &str) -> ProxyError {
    let mut quoted: String = command.chars().take(QUOTE_LIMIT).collect();
    if quoted.len() < command.len() {
        quoted.push_str("...");
    }
    ProxyError::error("42601", format!("pgfleet: unknown admin command \"{quoted}\""))
        .with_hint(COMMANDS_HINT)
}

/// `text` without its leading `keywords` (any case, separated by whitespace), if it starts with them.
fn strip_keywords<'a>(text: &'a str, keywords: &[&str]) -> Option<&'a str> {
    let mut rest = text.trim_start();
    for keyword in keywords {
        let head = rest.get(..keyword.len())?;
        let after = &rest[keyword.len()..];
        // "SHOW ROUTES" is not "SHOW ROUTE" followed by "S".
        if !head.eq_ignore_ascii_case(keyword) || after.chars().next().is_some_and(|c| !c.is_whitespace()) {
            return None;
        }
        rest = after.trim_start();
    }
    Some(rest)
}

fn show_nodes(ctx: &Context) -> Table {
    let view = ctx.fleet.view();
    let pools = ctx.pools.status();
    let mut table = Table::new(&[
        ("name", Text),
        ("address", Text),
        ("role", Text),
        ("observed", Text),
        ("state", Text),
        ("lag_bytes", Int),
        ("lag_ms", Int),
        ("lsn", Text),
        ("connections", Int),
        ("queries", Int),
        ("errors", Int),
        ("weight", Int),
    ]);
    let nodes = ctx.fleet.nodes();
    for (i, node) in nodes.iter().enumerate().filter(|(_, n)| !n.is_retired()) {
        let state = view.nodes.get(i).cloned().unwrap_or_default();
        let observed = match state.in_recovery {
            Some(true) => "replica",
            Some(false) => "primary",
            None => "unknown",
        };
        // Down if the monitor's last check failed, or if a session failed to connect in the last moments.
        let up = state.up && node.is_up();
        let idle: usize = pools.iter().filter(|p| p.node == i).map(|p| p.available).sum();
        let (queries, errors) = node_counters(ctx, i);
        table.row(vec![
            Some(node.target.name.clone()),
            Some(node.target.address.clone()),
            Some(node.role.to_string()),
            Some(observed.to_owned()),
            Some(if up { "up" } else { "down" }.to_owned()),
            state.lag_bytes.map(|b| b.to_string()),
            state.lag.map(|l| l.as_millis().to_string()),
            state.lsn.map(|l| l.to_string()),
            Some((ctx.pools.in_use(i) + idle).to_string()),
            Some(queries.to_string()),
            Some(errors.to_string()),
            Some(node.weight().to_string()),
        ]);
    }
    table
}

/// (queries, errors) counted for node `i`.
fn node_counters(ctx: &Context, i: usize) -> (u64, u64) {
    ctx.stats.node_counts(i)
}

fn node_name(ctx: &Context, i: usize) -> String {
    ctx.fleet
        .nodes()
        .get(i)
        .map(|n| n.target.name.clone())
        .unwrap_or_else(|| i.to_string())
}

fn show_pools(ctx: &Context) -> Table {
    let mut pools = ctx.pools.status();
    pools.sort();
    let mut table = Table::new(&[
        ("node", Text),
        ("database", Text),
        ("user", Text),
        ("size", Int),
        ("available", Int),
        ("in_use", Int),
        ("max_size", Int),
        ("waiting", Int),
    ]);
    for p in pools {
        table.row(vec![
            Some(node_name(ctx, p.node)),
            Some(p.database),
            Some(p.user),
            Some(p.size.to_string()),
            Some(p.available.to_string()),
            Some(p.size.saturating_sub(p.available).to_string()),
            p.max_size.map(|m| m.to_string()),
            Some(p.waiting.to_string()),
        ]);
    }
    table
}

fn show_clients(ctx: &Context) -> Table {
    let mut table = Table::new(&[
        ("id", Int),
        ("address", Text),
        ("user", Text),
        ("database", Text),
        ("state", Text),
        ("node", Text),
        ("connected_at", Text),
        ("requests", Int),
    ]);
    for (id, client) in ctx.stats.clients() {
        table.row(vec![
            Some(id.to_string()),
            Some(client.addr.to_string()),
            Some(client.user),
            Some(client.database),
            Some(client.state.to_owned()),
            client.node.map(|n| node_name(ctx, n)),
            Some(rfc3339(client.connected_at)),
            Some(client.requests.to_string()),
        ]);
    }
    table
}

fn show_stats(ctx: &Context) -> Table {
    use std::sync::atomic::Ordering::Relaxed;
    let stats = &ctx.stats;
    let mut table = Table::new(&[("name", Text), ("target", Text), ("rule", Text), ("value", Int)]);
    let totals = [
        ("clients_total", stats.clients_total.load(Relaxed)),
        ("clients_active", stats.client_count() as u64),
        ("login_failures", stats.login_failures.load(Relaxed)),
    ];
    for (name, value) in totals {
        table.row(vec![Some(name.to_owned()), None, None, Some(value.to_string())]);
    }
    for (target, rule, count) in stats.routes() {
        table.row(vec![
            Some("route".to_owned()),
            Some(target),
            Some(rule),
            Some(count.to_string()),
        ]);
    }
    table
}

fn show_replication(ctx: &Context) -> Table {
    let mut table = Table::new(&[
        ("node", Text),
        ("database", Text),
        ("mode", Text),
        ("slot", Text),
        ("state", Text),
        ("applied_lsn", Text),
        ("lag_bytes", Int),
        ("lag_ms", Int),
        ("rows", Int),
        ("transactions", Int),
        ("slot_retained_bytes", Int),
        ("streaming_txns", Int),
        ("held_txns", Int),
        ("held_bytes", Int),
    ]);
    for r in ctx.replication.report() {
        let streamed = |value: fn(&StreamedCounts) -> u64| r.streamed.as_ref().map(|s| value(s).to_string());
        table.row(vec![
            Some(r.node_name),
            r.database,
            Some(r.mode.to_owned()),
            r.slot,
            Some(r.state_name.to_owned()),
            r.applied_lsn.map(|l| l.to_string()),
            r.lag_bytes.map(|b| b.to_string()),
            r.lag.map(|l| l.as_millis().to_string()),
            r.rows.map(|n| n.to_string()),
            r.transactions.map(|n| n.to_string()),
            r.slot_retained_bytes.map(|b| b.to_string()),
            streamed(|s| s.applying),
            streamed(|s| s.held),
            streamed(|s| s.held_bytes),
        ]);
    }
    table
}

fn show_metrics(ctx: &Context) -> Table {
    let mut table = Table::new(&[("metric", Text)]);
    for line in super::metrics::render(ctx).lines() {
        table.row(vec![Some(line.to_owned())]);
    }
    table
}

fn show_route(ctx: &Context, sql: &str) -> Result<Table, ProxyError> {
    let sql = sql.trim();
    if split_statements(sql).is_empty() {
        return Err(
            ProxyError::error("42601", "pgfleet: SHOW ROUTE needs a statement")
                .with_hint("For example: SHOW ROUTE SELECT nextval('orders_id_seq')"),
        );
    }
    let (rules, source) = function_rules(ctx);
    let decision = classify(sql, &rules);
    if decision.rule == Rule::TooDeep {
        // A session sends such a statement to the primary unparsed; there is no parse to describe here, so
        // the console answers as PostgreSQL does when a statement nests past its stack limit.
        return Err(ProxyError::error(
            "54001",
            format!(
                "pgfleet: statement too deeply nested to classify (nesting estimate over the limit of {MAX_DEPTH})"
            ),
        )
        .with_detail("Sessions send such a statement to the primary without parsing it.")
        .with_hint("The estimate counts the terms of operator chains (a + b + ..., x::int::int ..., a OR b OR ...) and of nested groups; list elements separated by commas do not add up."));
    }
    let config = ctx.config.get();
    let sharded = config.is_sharded();
    let mut columns = vec![
        ("target", Text),
        ("rule", Text),
        ("pin", Text),
        ("transaction", Text),
        ("functions", Text),
    ];
    if sharded {
        columns.extend([("shards", Text), ("shard_rule", Text)]);
    }
    let mut table = Table::new(&columns);
    let mut row = vec![
        Some(decision.target.to_string()),
        Some(decision.rule.to_string()),
        decision.pin.map(|p| p.to_string()),
        decision.tx_start.map(|t| match t {
            TxStart::ReadOnly => "read only".to_owned(),
            TxStart::ReadWrite => "read write".to_owned(),
        }),
        Some(source),
    ];
    if sharded {
        let (shards, why) = shards::route(&config, sql)?;
        row.extend([Some(shards), Some(why)]);
    }
    table.row(row);
    Ok(table)
}

/// The function rules SHOW ROUTE judges with, and where they come from. The console is not connected to
/// any database itself, so it borrows the rules of the first database clients use whose VOLATILE function
/// list is loaded; before any client has used one, only the configured lists apply.
fn function_rules(ctx: &Context) -> (std::sync::Arc<FunctionRules>, String) {
    let mut databases: Vec<String> = ctx.pools.status().into_iter().map(|p| p.database).collect();
    databases.sort();
    databases.dedup();
    for database in databases {
        if let Some(rules) = ctx.catalog.cached(&database) {
            return (rules, format!("database {database}"));
        }
    }
    let routing = &ctx.config().routing;
    let rules = FunctionRules::new(&routing.write_functions, &routing.read_only_functions);
    (std::sync::Arc::new(rules), "configured lists".to_owned())
}

/// A column's wire type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ColumnType {
    Text,
    Int,
}

impl ColumnType {
    /// (type OID, type size) as in pg_type.
    fn oid_and_len(self) -> (u32, i16) {
        match self {
            Text => (25, -1),
            Int => (20, 8),
        }
    }
}

/// RELOAD: re-reads the config file; one row per change, or the error that kept the running config.
fn reload(ctx: &Arc<Context>) -> Result<Table, ProxyError> {
    let report = crate::reload::reload(&ctx.reload).map_err(|e| {
        // PostgreSQL's class for configuration file errors.
        ProxyError::error("F0000", format!("pgfleet: config reload refused: {e}"))
            .with_hint("Fix the file and run RELOAD again; the running config stays in force meanwhile.")
    })?;
    let mut table = Table::new(&[("change", ColumnType::Text)]);
    table.tag = "RELOAD";
    for line in report.applied {
        table.row(vec![Some(line)]);
    }
    for key in report.restart_needed {
        table.row(vec![Some(format!(
            "{key}: changes only after a restart (running value kept)"
        ))]);
    }
    Ok(table)
}

/// A result set the console sends: column names and types, then rows of text values (None is NULL).
#[derive(Debug)]
struct Table {
    columns: Vec<(&'static str, ColumnType)>,
    rows: Vec<Vec<Option<String>>>,
    tag: &'static str,
}

impl Table {
    fn new(columns: &[(&'static str, ColumnType)]) -> Self {
        Table {
            columns: columns.to_vec(),
            rows: Vec::new(),
            tag: "SHOW",
        }
    }

    fn row(&mut self, values: Vec<Option<String>>) {
        debug_assert_eq!(
            values.len(),
            self.columns.len(),
            "row width must match the columns"
        );
        self.rows.push(values);
    }

    /// RowDescription, one DataRow per row, CommandComplete (`SHOW` unless the command says otherwise).
    fn encode(&self, out: &mut BytesMut) {
        out.put_slice(&row_description(&self.columns));
        for row in &self.rows {
            out.put_slice(&data_row(row));
        }
        out.put_slice(&command_complete(self.tag));
    }
}

/// RowDescription for text-format columns computed by the proxy (no table, no attribute number).
fn row_description(columns: &[(&str, ColumnType)]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i16(columns.len() as i16);
    for (name, kind) in columns {
        let (oid, len) = kind.oid_and_len();
        body.put_slice(name.as_bytes());
        body.put_u8(0);
        body.put_u32(0); // table OID
        body.put_i16(0); // attribute number
        body.put_u32(oid);
        body.put_i16(len);
        body.put_i32(-1); // type modifier
        body.put_i16(0); // text format
    }
    build(b'T', &body)
}

/// DataRow with text values; None is NULL (length -1).
fn data_row(values: &[Option<String>]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i16(values.len() as i16);
    for value in values {
        match value {
            Some(v) => {
                body.put_i32(v.len() as i32);
                body.put_slice(v.as_bytes());
            }
            None => body.put_i32(-1),
        }
    }
    build(b'D', &body)
}

fn command_complete(tag: impl Display) -> Bytes {
    let mut body = tag.to_string().into_bytes();
    body.push(0);
    build(b'C', &body)
}

/// `2024-05-01T12:34:56Z`, computed without a date library (civil-from-days, proleptic Gregorian).
fn rfc3339(at: SystemTime) -> String {
    let secs = at.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (days, rem) = (secs / 86_400, secs % 86_400);
    // Shift the epoch to 0000-03-01 so that leap days fall at the end of each 400-year era's years.
    let z = days + 719_468;
    let era = z / 146_097;
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + u64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

mod shards;

#[cfg(test)]
mod tests;
