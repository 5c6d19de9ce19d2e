//! Shared helpers of the forward-mode tests: a cluster of plain servers, pgfleet in forward mode, and
//! table-by-table checksums compared between the primary and every replica until they match.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use super::cluster::{
    APP_DB, ClusterOptions, LocalCluster, NodeHandle, PASSWORD, cluster_with_async, options,
};
use futures_util::future::join_all;

use super::proxy::{Proxy, try_connect};

/// How long replicas may take to match the primary.
pub(crate) const MATCH_DEADLINE: Duration = Duration::from_secs(30);

pub(crate) fn forward_toml() -> String {
    format!(
        "[replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"{PASSWORD}\"\n\
         databases = [\"{APP_DB}\"]\n\n[health]\ninterval = \"200ms\"\n"
    )
}

/// A primary and two independent plain servers (no streaming replication between them).
pub(crate) async fn plain_cluster() -> LocalCluster {
    cluster_with_async(ClusterOptions {
        streaming: false,
        ..options()
    })
    .await
}

/// Runs `sql` as superuser on the primary (psql, straight to it), failing the test with the error.
pub(crate) fn primary_sql(cluster: &LocalCluster, sql: &str) {
    cluster
        .psql(&cluster.primary, APP_DB, sql)
        .unwrap_or_else(|e| panic!("on the primary: {sql}: {e}"));
}

/// A superuser connection straight to a node of the cluster, bypassing pgfleet.
pub(crate) async fn direct(node: &NodeHandle) -> Result<tokio_postgres::Client, String> {
    let dsn = format!("{} connect_timeout=5", node.dsn("postgres", PASSWORD, APP_DB));
    try_connect(&dsn)
        .await
        .map_err(|e| format!("{}: connect: {e}", node.name))
}

pub(crate) fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// For every table of schema `public` on `node`: "<rows> rows, md5 <md5 of all rows' text in text order>".
pub(crate) async fn table_checksums(node: &NodeHandle) -> Result<BTreeMap<String, String>, String> {
    let c = direct(node).await?;
    let fail = |e: tokio_postgres::Error| format!("{}: {e}", node.name);
    // The same output settings on every node, so that equal rows have equal text.
    c.batch_execute(
        "SET work_mem = '256MB'; SET TimeZone = 'UTC'; SET DateStyle = 'ISO, MDY'; \
         SET IntervalStyle = 'postgres'; SET extra_float_digits = 3; SET bytea_output = 'hex'",
    )
    .await
    .map_err(fail)?;
    let tables: Vec<String> = c
        .query(
            "SELECT c.relname::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
             WHERE n.nspname = 'public' AND c.relkind IN ('r', 'p') ORDER BY 1",
            &[],
        )
        .await
        .map_err(fail)?
        .iter()
        .map(|r| r.get(0))
        .collect();
    let mut out = BTreeMap::new();
    for table in tables {
        let sql = format!(
            "SELECT count(*)::text || ' rows, md5 ' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') \
             FROM public.{} t",
            quote_ident(&table)
        );
        let sum: String = c.query_one(&sql, &[]).await.map_err(fail)?.get(0);
        out.insert(table, sum);
    }
    Ok(out)
}

/// The end of pgfleet's log without per-change trace lines.
pub(crate) fn log_tail(proxy: &Proxy) -> String {
    let text = proxy.log_contents();
    let lines: Vec<&str> = text.lines().filter(|l| !l.contains("change=")).collect();
    lines[lines.len().saturating_sub(40)..].join("\n")
}

/// The last ERROR lines (with their STATEMENT, shortened) of each replica's server log: pgfleet's own log
/// only says "db error" when a statement fails on a replica.
pub(crate) fn replica_errors(cluster: &LocalCluster) -> String {
    let mut out = String::new();
    for node in &cluster.replicas {
        let log = node.log_contents();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("ERROR:") || l.contains("STATEMENT:"))
            .map(|l| l.chars().take(400).collect())
            .collect();
        out.push_str(&format!("--- {} server log errors ---\n", node.name));
        out.push_str(&lines[lines.len().saturating_sub(6)..].join("\n"));
        out.push('\n');
    }
    out
}

/// Differences between the primary's map and a replica's, one line per differing key.
pub(crate) fn differences<V: PartialEq + std::fmt::Debug>(
    primary: &BTreeMap<String, V>,
    replica: &BTreeMap<String, V>,
    replica_name: &str,
) -> Vec<String> {
    let keys: BTreeSet<&String> = primary.keys().chain(replica.keys()).collect();
    keys.into_iter()
        .filter(|k| primary.get(*k) != replica.get(*k))
        .map(|k| {
            format!(
                "  {k}: primary {:?} vs {replica_name} {:?}",
                primary.get(k),
                replica.get(k)
            )
        })
        .collect()
}

/// Waits until every replica has exactly the primary's tables and rows; returns the primary's checksums.
/// Panics after `within` with the differing tables and the end of pgfleet's log.
pub(crate) async fn wait_until_replicas_match(
    cluster: &LocalCluster,
    proxy: &Proxy,
    within: Duration,
) -> BTreeMap<String, String> {
    let deadline = Instant::now() + within;
    loop {
        let nodes: Vec<&NodeHandle> = cluster.nodes().collect();
        let sums = join_all(nodes.iter().map(|n| table_checksums(n))).await;
        let mut problems = Vec::new();
        match &sums[0] {
            Err(e) => problems.push(format!("  primary: {e}")),
            Ok(primary) => {
                for (node, sum) in nodes[1..].iter().zip(&sums[1..]) {
                    match sum {
                        Err(e) => problems.push(format!("  {e}")),
                        Ok(replica) => problems.extend(differences(primary, replica, &node.name)),
                    }
                }
            }
        }
        if problems.is_empty()
            && let Ok(primary) = sums.into_iter().next().expect("primary checksums")
        {
            return primary;
        }
        assert!(
            Instant::now() < deadline,
            "replicas still differ from the primary after {within:?}:\n{}\n--- pgfleet log tail ---\n{}\n{}",
            problems.join("\n"),
            log_tail(proxy),
            replica_errors(cluster)
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// Panics if a forwarding task of pgfleet failed at any point (it retries, but meanwhile that replica falls
/// behind and serves no reads).
pub(crate) fn assert_forwarding_never_stopped(cluster: &LocalCluster, proxy: &Proxy) {
    let log = proxy.log_contents();
    let stops: Vec<&str> = log.lines().filter(|l| l.contains("forwarding stopped")).collect();
    assert!(
        stops.is_empty(),
        "forwarding failed {} time(s) and had to be retried:\n{}\n{}",
        stops.len(),
        stops[..stops.len().min(5)].join("\n"),
        replica_errors(cluster)
    );
}

/// What pgfleet's progress table on `node` says: "none" before pgfleet created it.
pub(crate) fn progress_state(cluster: &LocalCluster, node: &NodeHandle) -> String {
    let exists = cluster.psql(
        node,
        APP_DB,
        "SELECT to_regclass('pgfleet_replica.progress') IS NOT NULL",
    );
    if !matches!(&exists, Ok(t) if t == "t") {
        return "none".to_owned();
    }
    cluster
        .psql(
            node,
            APP_DB,
            "SELECT coalesce(string_agg(state, ','), 'none') FROM pgfleet_replica.progress",
        )
        .unwrap_or_else(|e| e.to_string())
}

/// Waits until pgfleet has finished the initial copy to every replica and follows the stream (its progress
/// row on each replica says "streaming").
pub(crate) async fn wait_until_streaming(cluster: &LocalCluster, proxy: &Proxy) {
    let deadline = Instant::now() + MATCH_DEADLINE;
    for replica in &cluster.replicas {
        loop {
            let state = progress_state(cluster, replica);
            if state == "streaming" {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "{} never reached the streaming state (progress: {state})\n{}\n{}",
                replica.name,
                log_tail(proxy),
                replica_errors(cluster)
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Sequences of schema `public` on `node` with their `last_value` (None: never used or reset).
pub(crate) async fn sequence_values(node: &NodeHandle) -> Result<BTreeMap<String, Option<i64>>, String> {
    let c = direct(node).await?;
    let rows = c
        .query(
            "SELECT sequencename::text, last_value FROM pg_sequences WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .map_err(|e| format!("{}: {e}", node.name))?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

/// Waits until every replica's sequences have the primary's `last_value`.
pub(crate) async fn wait_until_sequences_match(cluster: &LocalCluster, proxy: &Proxy, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let mut problems = Vec::new();
        match sequence_values(&cluster.primary).await {
            Err(e) => problems.push(format!("  {e}")),
            Ok(primary) => {
                for replica in &cluster.replicas {
                    match sequence_values(replica).await {
                        Err(e) => problems.push(format!("  {e}")),
                        Ok(values) => problems.extend(differences(&primary, &values, &replica.name)),
                    }
                }
            }
        }
        if problems.is_empty() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "replica sequences still differ from the primary's after {within:?}:\n{}\n--- pgfleet log tail ---\n{}\n{}",
            problems.join("\n"),
            log_tail(proxy),
            replica_errors(cluster)
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// A forward-mode fleet ready for work: plain servers, pgfleet forwarding to them (streaming), and an app
/// connection through pgfleet.
pub(crate) async fn forwarding_fleet() -> (LocalCluster, Proxy, tokio_postgres::Client) {
    let cluster = plain_cluster().await;
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_until_streaming(&cluster, &proxy).await;
    let c = super::proxy::connect(&proxy.dsn(super::cluster::APP_USER, PASSWORD, APP_DB)).await;
    (cluster, proxy, c)
}

/// Asserts that the matched checksums (from [`wait_until_replicas_match`]) count `rows` rows in `table`.
pub(crate) fn assert_rows(sums: &BTreeMap<String, String>, table: &str, rows: usize) {
    assert!(
        sums.get(table)
            .is_some_and(|s| s.starts_with(&format!("{rows} rows,"))),
        "{table}: {:?} (all: {sums:?})",
        sums.get(table)
    );
}

/// SIGKILLs pgfleet and waits until the process is gone.
pub(crate) fn kill_9(proxy: &mut Proxy) {
    let pid = proxy.pid();
    assert!(
        proxy.signal_and_wait("KILL", Duration::from_secs(10)).is_some(),
        "pgfleet {pid} survived kill -9"
    );
}
