//! Prometheus metrics on `admin.metrics_address`: the same counters as the admin console, as text
//! exposition format 0.0.4 on `GET /metrics`.
//!
//! The HTTP side is a deliberately small HTTP/1.1 server on tokio: one request per connection
//! (`Connection: close`), the request head read with a size cap and a deadline, the body ignored. A
//! scraper needs nothing more, and a full HTTP stack would be the largest dependency of the proxy.
//! [`render`] builds the text from a consistent read of the ctx state and is reused by the console's
//! `SHOW METRICS`.

use std::fmt::{Display, Write as _};
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;

use super::Context;
use crate::replication::slots::{self, SlotMonitor};
use crate::replication::streamed::StreamedCounts;

/// Largest request head accepted; a scrape request is a few hundred bytes.
const MAX_HEAD: usize = 8 * 1024;
/// How long a client may take to send its request head, and then to take the answer.
const IO_TIMEOUT: Duration = Duration::from_secs(10);
/// Connections served at once; more wait in the kernel's accept queue rather than costing memory here.
const MAX_CONNECTIONS: usize = 64;
/// The exposition format's content type.
const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Why one metrics connection ended without an answer.
#[derive(Debug, thiserror::Error)]
pub(crate) enum HttpError {
    /// The socket failed.
    #[error("metrics connection failed: {0}")]
    Io(#[from] std::io::Error),
    /// The client was too slow to send its request or to read the answer.
    #[error("metrics client timed out")]
    Timeout,
    /// The client closed before a whole request head arrived.
    #[error("metrics client closed the connection before sending a request")]
    Closed,
}

/// Serves `/metrics` on `listener` until the future is dropped.
pub(crate) async fn serve_metrics(listener: TcpListener, ctx: Arc<Context>) {
    if let Ok(address) = listener.local_addr() {
        tracing::debug!(%address, "metrics listener ready");
    }
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        // The semaphore is never closed, so acquiring only waits; the guard frees the slot when the
        // connection's task ends.
        let Ok(slot) = slots.clone().acquire_owned().await else {
            return;
        };
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(e) => {
                // Usually out of file descriptors: spinning on accept would only make it worse.
                tracing::warn!(error = %e, "metrics listener cannot accept");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let ctx = ctx.clone();
        tokio::spawn(async move {
            if let Err(e) = serve_connection(stream, &ctx).await {
                tracing::debug!(client = %peer, error = %e, "metrics request not served");
            }
            drop(slot);
        });
    }
}

async fn serve_connection(mut stream: TcpStream, ctx: &Context) -> Result<(), HttpError> {
    let head = match tokio::time::timeout(IO_TIMEOUT, read_head(&mut stream)).await {
        Ok(Ok(head)) => head,
        Ok(Err(HeadError::TooLarge)) => {
            let response = respond(
                431,
                "Request Header Fields Too Large",
                "request head too large\n",
                true,
            );
            return write_response(&mut stream, &response).await;
        }
        Ok(Err(HeadError::Io(e))) => return Err(e.into()),
        Ok(Err(HeadError::Closed)) => return Err(HttpError::Closed),
        Err(_) => return Err(HttpError::Timeout),
    };
    let response = route(&head, || render(ctx));
    write_response(&mut stream, &response).await
}

async fn write_response(stream: &mut TcpStream, response: &[u8]) -> Result<(), HttpError> {
    let write = async {
        stream.write_all(response).await?;
        // A FIN rather than a reset when the socket is dropped, so the client reads the whole answer.
        stream.shutdown().await
    };
    match tokio::time::timeout(IO_TIMEOUT, write).await {
        Ok(r) => Ok(r?),
        Err(_) => Err(HttpError::Timeout),
    }
}

#[derive(Debug)]
enum HeadError {
    Io(std::io::Error),
    TooLarge,
    Closed,
}

/// Reads up to the blank line that ends the request head; returns the head without it.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut head = Vec::with_capacity(1024);
    let mut chunk = [0u8; 2048];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let n = stream.read(&mut chunk).await.map_err(HeadError::Io)?;
        if n == 0 {
            return Err(HeadError::Closed);
        }
        head.extend_from_slice(&chunk[..n]);
    }
}

/// Where the head ends: at CRLF CRLF, or LF LF from clients that send bare newlines.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The whole response to a request head; `body` is only called for a metrics request.
fn route(head: &[u8], body: impl FnOnce() -> String) -> Vec<u8> {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = String::from_utf8_lossy(line);
    let parts: Vec<&str> = line.split_whitespace().collect();
    let [method, target, version] = parts.as_slice() else {
        return respond(400, "Bad Request", "malformed request line\n", true);
    };
    if !version.starts_with("HTTP/1.") {
        return respond(400, "Bad Request", "only HTTP/1.x is served\n", true);
    }
    let path = target.split(['?', '#']).next().unwrap_or_default();
    if path != "/metrics" {
        return respond(
            404,
            "Not Found",
            "not found; metrics are served on /metrics\n",
            true,
        );
    }
    match *method {
        "GET" => respond(200, "OK", &body(), true),
        // HEAD answers with the headers a GET would get, Content-Length included, and no body.
        "HEAD" => respond(200, "OK", &body(), false),
        _ => respond_with(
            405,
            "Method Not Allowed",
            "Allow: GET, HEAD\r\n",
            "use GET\n",
            true,
        ),
    }
}

fn respond(status: u16, reason: &str, body: &str, with_body: bool) -> Vec<u8> {
    respond_with(status, reason, "", body, with_body)
}

/// A response with `extra_headers` (each ending in CRLF) after the usual ones.
fn respond_with(status: u16, reason: &str, extra_headers: &str, body: &str, with_body: bool) -> Vec<u8> {
    let content_type = if status == 200 {
        CONTENT_TYPE
    } else {
        "text/plain; charset=utf-8"
    };
    let mut out = format!(
        "HTTP/1.1 {status} {reason}\r\nContent-Type: {content_type}\r\nContent-Length: {}\r\n\
         Connection: close\r\nCache-Control: no-store\r\n{extra_headers}\r\n",
        body.len()
    )
    .into_bytes();
    if with_body {
        out.extend_from_slice(body.as_bytes());
    }
    out
}

/// The Prometheus text for the proxy's current state.
pub(crate) fn render(ctx: &Context) -> String {
    let view = ctx.fleet.view();
    let stats = &ctx.stats;
    let pools = ctx.pools.status();
    let slots = ctx.fleet.nodes();
    // Retired slots (nodes a reload removed) keep their index but are no longer part of the fleet.
    let nodes: Vec<(usize, &crate::cluster::Node)> = slots
        .iter()
        .enumerate()
        .filter(|(_, n)| !n.is_retired())
        .map(|(i, n)| (i, n.as_ref()))
        .collect();
    let mut out = Exposition::default();

    out.family("pgfleet_build_info", "gauge", "pgfleet version; always 1.");
    out.sample("pgfleet_build_info", &[("version", env!("CARGO_PKG_VERSION"))], 1);

    out.family(
        "pgfleet_node_up",
        "gauge",
        "1 when the node passed its last health check and no session saw it fail since, else 0.",
    );
    for &(i, node) in &nodes {
        let state_up = view.nodes.get(i).is_some_and(|s| s.up);
        let up = u8::from(state_up && node.is_up());
        let role = node.role.to_string();
        out.sample(
            "pgfleet_node_up",
            &[("node", &node.target.name), ("role", &role)],
            up,
        );
    }

    out.family(
        "pgfleet_node_primary",
        "gauge",
        "1 for the node that takes writes now, else 0.",
    );
    for &(i, node) in &nodes {
        let primary = u8::from(view.is_primary(crate::cluster::NodeId::new(i)));
        out.sample("pgfleet_node_primary", &[("node", &node.target.name)], primary);
    }

    out.family(
        "pgfleet_node_queries_total",
        "counter",
        "Requests routed to the node.",
    );
    for &(i, node) in &nodes {
        let queries = stats.node_counts(i).0;
        out.sample(
            "pgfleet_node_queries_total",
            &[("node", &node.target.name)],
            queries,
        );
    }

    out.family(
        "pgfleet_node_errors_total",
        "counter",
        "Requests or connections that failed because of the node.",
    );
    for &(i, node) in &nodes {
        let errors = stats.node_counts(i).1;
        out.sample(
            "pgfleet_node_errors_total",
            &[("node", &node.target.name)],
            errors,
        );
    }

    if ctx.config.get().is_sharded() {
        shard_families(&mut out, ctx, &view, &nodes);
    }

    // A lag never measured (node down, or before its first check) has no sample rather than a made-up
    // value: absent series are what Prometheus alerting expects for "unknown".
    out.family(
        "pgfleet_node_lag_bytes",
        "gauge",
        "Bytes of WAL the node has not replayed, against the primary's last position.",
    );
    for &(i, node) in &nodes {
        if let Some(lag) = view.nodes.get(i).and_then(|s| s.lag_bytes) {
            out.sample("pgfleet_node_lag_bytes", &[("node", &node.target.name)], lag);
        }
    }

    out.family(
        "pgfleet_node_lag_seconds",
        "gauge",
        "How far behind in time the node's replay is.",
    );
    for &(i, node) in &nodes {
        if let Some(lag) = view.nodes.get(i).and_then(|s| s.lag) {
            out.sample(
                "pgfleet_node_lag_seconds",
                &[("node", &node.target.name)],
                lag.as_secs_f64(),
            );
        }
    }

    out.family(
        "pgfleet_route_decisions_total",
        "counter",
        "Requests routed, by target class and the rule that decided.",
    );
    for (target, rule, count) in stats.routes() {
        out.sample(
            "pgfleet_route_decisions_total",
            &[("target", &target), ("rule", &rule)],
            count,
        );
    }

    out.family("pgfleet_clients", "gauge", "Client sessions connected now.");
    out.sample("pgfleet_clients", &[], stats.client_count());
    out.family(
        "pgfleet_clients_logging_in",
        "gauge",
        "Client connections accepted and not yet authenticated (TLS, startup packet, password exchange).",
    );
    out.sample("pgfleet_clients_logging_in", &[], stats.logging_in());
    out.family(
        "pgfleet_clients_total",
        "counter",
        "Client connections accepted since start.",
    );
    out.sample("pgfleet_clients_total", &[], stats.clients_total.load(Relaxed));
    out.family(
        "pgfleet_login_failures_total",
        "counter",
        "Logins refused (bad password, unknown user or database).",
    );
    out.sample(
        "pgfleet_login_failures_total",
        &[],
        stats.login_failures.load(Relaxed),
    );

    out.family(
        "pgfleet_backend_connections",
        "gauge",
        "Connections from pgfleet to the node: idle in a pool, or active for a session.",
    );
    for &(i, node) in &nodes {
        let idle: usize = pools.iter().filter(|p| p.node == i).map(|p| p.available).sum();
        let name = node.target.name.as_str();
        out.sample(
            "pgfleet_backend_connections",
            &[("node", name), ("state", "idle")],
            idle,
        );
        let active = ctx.pools.in_use(i);
        out.sample(
            "pgfleet_backend_connections",
            &[("node", name), ("state", "active")],
            active,
        );
    }
    replication(&mut out, ctx, Some(&ctx.replication.slots));
    out.text
}

/// Forward-mode families, one series per (replica, database) and per slot. In external mode PostgreSQL
/// replicates and `pgfleet_node_lag_*` already say all pgfleet knows, so these families are left out.
fn replication(out: &mut Exposition, ctx: &Context, monitor: Option<&SlotMonitor>) {
    if !ctx.fleet.forward.enabled() {
        return;
    }
    let rows = slots::report_with(&ctx.replication, monitor);
    // Every state gets a sample, 0 or 1, so that a query for `state="copying"` finds a series at all times.
    out.family(
        "pgfleet_replication_state",
        "gauge",
        "1 for the forwarding task's current state (starting, copying, streaming, stopped), else 0.",
    );
    for r in &rows {
        let [node, database] = labels(r);
        for state in slots::STATES {
            out.sample(
                "pgfleet_replication_state",
                &[node, database, ("state", state.name())],
                u8::from(r.state == Some(state)),
            );
        }
    }

    // Integers stay integers in the text (an LSN as f64 would lose its low bits past 2^53).
    let families: [PerReplica; 5] = [
        (
            "pgfleet_replication_applied_lsn",
            "gauge",
            "End position of the last transaction applied on the replica, as a number of WAL bytes.",
            |r| r.applied_lsn.map(|l| l.0.to_string()),
        ),
        (
            "pgfleet_replication_lag_bytes",
            "gauge",
            "WAL bytes between the primary's last known position and what the replica is consistent with.",
            |r| r.lag_bytes.map(|b| b.to_string()),
        ),
        (
            "pgfleet_replication_lag_seconds",
            "gauge",
            "Delay in time: 0 when the replica is caught up, else the age of the last commit it applied.",
            |r| r.lag.map(|l| l.as_secs_f64().to_string()),
        ),
        (
            "pgfleet_replication_rows_total",
            "counter",
            "Row changes applied since pgfleet started, rows of an initial copy included.",
            |r| r.rows.map(|n| n.to_string()),
        ),
        (
            "pgfleet_replication_transactions_total",
            "counter",
            "Primary transactions applied since pgfleet started.",
            |r| r.transactions.map(|n| n.to_string()),
        ),
    ];
    // Unknown values (nothing applied yet, primary position not seen) have no sample, as for node lag.
    for (name, kind, help, value) in families {
        out.family(name, kind, help);
        for r in &rows {
            if let Some(v) = value(r) {
                out.sample(name, &labels(r), v);
            }
        }
    }

    // Large transactions are the database's change stream's, whatever the number of its replicas.
    let streamed: [PerDatabase; 4] = [
        (
            "pgfleet_replication_streaming_transactions",
            "gauge",
            "Large transactions open on the primary that the replicas apply while they run.",
            |s| s.applying,
        ),
        (
            "pgfleet_replication_held_transactions",
            "gauge",
            "Large transactions held in files until their commit (past replication.max_streamed_transactions).",
            |s| s.held,
        ),
        (
            "pgfleet_replication_held_bytes",
            "gauge",
            "Bytes of the files holding large transactions until their commit.",
            |s| s.held_bytes,
        ),
        (
            "pgfleet_replication_held_transactions_total",
            "counter",
            "Large transactions held in files until their commit since pgfleet started.",
            |s| s.held_total,
        ),
    ];
    for (name, kind, help, value) in streamed {
        out.family(name, kind, help);
        for (database, load) in ctx
            .replication
            .forward
            .databases
            .iter()
            .zip(&ctx.replication.forward.streamed)
        {
            out.sample(name, &[("database", database)], value(&load.counts()));
        }
    }

    // Every slot with pgfleet's prefix, including those of replicas no longer configured: they hold WAL too.
    out.family(
        "pgfleet_replication_slot_retained_bytes",
        "gauge",
        "WAL the replication slot holds back on the primary, at the slot monitor's last check.",
    );
    for (slot, bytes) in monitor.map(SlotMonitor::snapshot).unwrap_or_default() {
        out.sample(
            "pgfleet_replication_slot_retained_bytes",
            &[("slot", &slot)],
            bytes,
        );
    }
    out.family(
        "pgfleet_replication_max_slot_lag_bytes",
        "gauge",
        "replication.max_slot_lag: a slot holding more WAL than this is logged as a warning.",
    );
    out.sample(
        "pgfleet_replication_max_slot_lag_bytes",
        &[],
        ctx.config().replication.max_slot_lag,
    );
}

/// A per-(replica, database) family: name, type, help, and the sample's value (None: no sample).
type PerReplica = (
    &'static str,
    &'static str,
    &'static str,
    fn(&slots::ReplicaStatus) -> Option<String>,
);

/// A per-database family of large transactions: name, type, help, and the sample's value.
type PerDatabase = (
    &'static str,
    &'static str,
    &'static str,
    fn(&StreamedCounts) -> u64,
);

/// The labels of a (replica, database) series.
fn labels(r: &slots::ReplicaStatus) -> [(&'static str, &str); 2] {
    [
        ("node", r.node_name.as_str()),
        ("database", r.database.as_deref().unwrap_or("")),
    ]
}

/// Text exposition format writer.
#[derive(Default)]
struct Exposition {
    text: String,
}

impl Exposition {
    fn family(&mut self, name: &str, kind: &str, help: &str) {
        // Writing to a String cannot fail.
        let _ = writeln!(self.text, "# HELP {name} {}", escape_help(help));
        let _ = writeln!(self.text, "# TYPE {name} {kind}");
    }

    fn sample(&mut self, name: &str, labels: &[(&str, &str)], value: impl Display) {
        self.text.push_str(name);
        if !labels.is_empty() {
            self.text.push('{');
            for (i, (label, value)) in labels.iter().enumerate() {
                if i > 0 {
                    self.text.push(',');
                }
                let _ = write!(self.text, "{label}=\"{}\"", escape_label(value));
            }
            self.text.push('}');
        }
        let _ = writeln!(self.text, " {value}");
    }
}

/// A label value as the exposition format wants it: backslash, double quote and newline escaped.
fn escape_label(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out
}

/// HELP text: backslash and newline escaped (quotes are literal there).
fn escape_help(text: &str) -> String {
    text.replace('\\', "\\\\").replace('\n', "\\n")
}

/// Per shard, in a sharded fleet: whether its primary is up, how many of its replicas are, and the
/// requests its nodes ran and failed.
fn shard_families(
    out: &mut Exposition,
    ctx: &Context,
    view: &crate::cluster::view::FleetView,
    nodes: &[(usize, &crate::cluster::Node)],
) {
    let up = |i: usize, node: &crate::cluster::Node| view.nodes.get(i).is_some_and(|s| s.up) && node.is_up();
    let shards: Vec<String> = (0..view.primaries.len()).map(|s| s.to_string()).collect();
    out.family(
        "pgfleet_shard_primary_up",
        "gauge",
        "1 when the shard has a primary that is up, else 0.",
    );
    for (s, label) in shards.iter().enumerate() {
        let primary_up = view
            .primary_node(crate::cluster::ShardId::new(s as u32))
            .and_then(|p| nodes.iter().find(|(i, _)| *i == p.index()))
            .is_some_and(|(i, node)| up(*i, node));
        out.sample(
            "pgfleet_shard_primary_up",
            &[("shard", label)],
            u8::from(primary_up),
        );
    }
    out.family(
        "pgfleet_shard_replicas_up",
        "gauge",
        "Replicas of the shard that are up.",
    );
    for (s, label) in shards.iter().enumerate() {
        let count = nodes
            .iter()
            .filter(|(i, node)| {
                node.shard.index() == s && !view.is_primary(crate::cluster::NodeId::new(*i)) && up(*i, node)
            })
            .count();
        out.sample("pgfleet_shard_replicas_up", &[("shard", label)], count);
    }
    type Family = (&'static str, &'static str, fn((u64, u64)) -> u64);
    let families: [Family; 2] = [
        (
            "pgfleet_shard_queries_total",
            "Requests routed to the shard's nodes.",
            |c| c.0,
        ),
        (
            "pgfleet_shard_errors_total",
            "Requests or connections that failed because of one of the shard's nodes.",
            |c| c.1,
        ),
    ];
    for (name, help, pick) in families {
        out.family(name, "counter", help);
        for (s, label) in shards.iter().enumerate() {
            let total: u64 = nodes
                .iter()
                .filter(|(_, node)| node.shard.index() == s)
                .map(|(i, _)| pick(ctx.stats.node_counts(*i)))
                .sum();
            out.sample(name, &[("shard", label)], total);
        }
    }
}

#[cfg(test)]
mod tests;
