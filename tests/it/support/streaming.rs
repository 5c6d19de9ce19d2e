//! Helpers for the forward-mode tests of large transactions streamed while they run: a primary decoding with
//! the least memory PostgreSQL allows, pgfleet forwarding from it, and what the primary's slot statistics and
//! pgfleet's sessions on the replicas say.

use crate::support::cluster::{APP_DB, LocalCluster, NodeHandle};
use crate::support::forward::*;
use crate::support::proxy::Proxy;

/// pgfleet sessions on a replica's database that hold a transaction which has written: a streamed
/// transaction's chunks applied before its commit.
pub(crate) const OPEN_WRITERS: &str = "SELECT count(*) FROM pg_stat_activity \
     WHERE application_name = 'pgfleet-forward' AND backend_xid IS NOT NULL AND datname = current_database()";

/// `sql` (one number) on `node`.
pub(crate) fn number(cluster: &LocalCluster, node: &NodeHandle, sql: &str) -> i64 {
    let out = cluster
        .psql(node, APP_DB, sql)
        .unwrap_or_else(|e| panic!("{}: {sql}: {e}", node.name));
    out.trim()
        .parse()
        .unwrap_or_else(|e| panic!("{}: {sql}: `{out}` is not a number: {e}", node.name))
}

/// Plain servers whose primary decodes with the least memory PostgreSQL allows (64kB), so that any
/// transaction of more than a few hundred rows is streamed (or, with streaming off, spilled to disk).
pub(crate) async fn small_decoding_memory_cluster() -> LocalCluster {
    let cluster = plain_cluster().await;
    primary_sql(&cluster, "ALTER SYSTEM SET logical_decoding_work_mem = '64kB'");
    primary_sql(&cluster, "SELECT pg_reload_conf()");
    // The postmaster applies the reload a moment later; sessions started from then on (pgfleet's WAL
    // sender among them) have the setting.
    let applied = crate::support::wait_until(MATCH_DEADLINE, async || {
        cluster
            .psql(&cluster.primary, APP_DB, "SHOW logical_decoding_work_mem")
            .is_ok_and(|v| v.trim() == "64kB")
    })
    .await;
    assert!(
        applied.is_some(),
        "logical_decoding_work_mem never became 64kB on the primary: {:?}",
        cluster.psql(&cluster.primary, APP_DB, "SHOW logical_decoding_work_mem")
    );
    cluster
}

/// The sum of `column` over the primary's replication slot statistics.
pub(crate) fn slot_stat(cluster: &LocalCluster, column: &str) -> i64 {
    number(
        cluster,
        &cluster.primary,
        &format!("SELECT coalesce(sum({column}), 0) FROM pg_stat_replication_slots"),
    )
}

/// The primary's replication slot statistics, for failure messages.
pub(crate) fn slot_stats(cluster: &LocalCluster) -> String {
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "SELECT coalesce(string_agg(format('%s: total_txns %s, stream_txns %s, stream_count %s, \
             spill_txns %s, spill_count %s', slot_name, total_txns, stream_txns, stream_count, spill_txns, \
             spill_count), '; '), 'no slot statistics') FROM pg_stat_replication_slots",
        )
        .unwrap_or_else(|e| e.to_string())
}

/// Waits until the primary's slots report `column` (`stream_txns`, `spill_txns`) above 0: the WAL sender
/// reports its statistics a moment after it streamed or spilled.
pub(crate) async fn wait_for_slot_stat(cluster: &LocalCluster, proxy: &Proxy, column: &str) {
    let seen = crate::support::wait_until(MATCH_DEADLINE, async || slot_stat(cluster, column) > 0).await;
    assert!(
        seen.is_some(),
        "the primary's slots report no {column} after {MATCH_DEADLINE:?}: {}\n--- pgfleet log tail ---\n{}\n{}",
        slot_stats(cluster),
        log_tail(proxy),
        replica_errors(cluster)
    );
}

/// pgfleet's sessions on `node`, for failure messages.
pub(crate) fn forward_sessions(cluster: &LocalCluster, node: &NodeHandle) -> String {
    cluster
        .psql(
            node,
            APP_DB,
            "SELECT coalesce(string_agg(format('pid %s (%s, xid %s): %s', pid, state, backend_xid, \
             left(query, 100)), '; ' ORDER BY pid), 'none') FROM pg_stat_activity \
             WHERE application_name = 'pgfleet-forward' AND datname = current_database()",
        )
        .unwrap_or_else(|e| e.to_string())
}

/// The committed rows of `table` on `node`.
pub(crate) fn rows(cluster: &LocalCluster, node: &NodeHandle, table: &str) -> i64 {
    number(cluster, node, &format!("SELECT count(*) FROM {table}"))
}

/// Waits until every replica has a pgfleet session holding a transaction that has written (the open
/// transaction's streamed chunks being applied), then checks that each of `committed` (table, rows) still
/// has only those committed rows there: nothing of the open transaction is visible before its commit.
pub(crate) async fn wait_for_chunks_applied(
    cluster: &LocalCluster,
    proxy: &Proxy,
    committed: &[(&str, i64)],
) {
    for replica in &cluster.replicas {
        let writing = crate::support::wait_until(MATCH_DEADLINE, async || {
            number(cluster, replica, OPEN_WRITERS) >= 1
        })
        .await;
        assert!(
            writing.is_some(),
            "{}: no pgfleet session holds a written transaction after {MATCH_DEADLINE:?} while the primary's \
             large transaction is open: its changes are not applied before the commit (pgfleet sessions: {}; \
             primary slots: {})\n--- pgfleet log tail ---\n{}\n{}",
            replica.name,
            forward_sessions(cluster, replica),
            slot_stats(cluster),
            log_tail(proxy),
            replica_errors(cluster)
        );
        for (table, expected) in committed {
            let now = rows(cluster, replica, table);
            assert_eq!(
                now,
                *expected,
                "{}: {table} has {now} committed rows while the primary's transaction is still open \
                 (expected {expected}): uncommitted changes became visible\n{}",
                replica.name,
                log_tail(proxy)
            );
        }
    }
}

/// Waits until no pgfleet session on any replica holds a transaction that has written.
pub(crate) async fn wait_until_no_open_writers(cluster: &LocalCluster, proxy: &Proxy, why: &str) {
    for replica in &cluster.replicas {
        let closed = crate::support::wait_until(MATCH_DEADLINE, async || {
            number(cluster, replica, OPEN_WRITERS) == 0
        })
        .await;
        assert!(
            closed.is_some(),
            "{}: a pgfleet session still holds a written transaction after {MATCH_DEADLINE:?} ({why}): {}\n\
             --- pgfleet log tail ---\n{}\n{}",
            replica.name,
            forward_sessions(cluster, replica),
            log_tail(proxy),
            replica_errors(cluster)
        );
    }
}

/// A primary decoding with little memory (see [`small_decoding_memory_cluster`]) with `schema` made on it, and
/// pgfleet forwarding to both replicas, past their initial copy.
pub(crate) async fn streaming_fleet(schema: &str) -> (LocalCluster, Proxy) {
    streaming_fleet_with(schema, |cluster| Proxy::start(cluster, &forward_toml())).await
}

/// [`streaming_fleet`] with pgfleet started by `start`.
pub(crate) async fn streaming_fleet_with(
    schema: &str,
    start: impl FnOnce(&LocalCluster) -> Proxy,
) -> (LocalCluster, Proxy) {
    let cluster = small_decoding_memory_cluster().await;
    primary_sql(&cluster, schema);
    let proxy = start(&cluster);
    wait_until_streaming(&cluster, &proxy).await;
    (cluster, proxy)
}

/// The end of a test: the primary streamed, no pgfleet transaction is left open on a replica (`why` says
/// after what), and forwarding never stopped on the way.
pub(crate) async fn streamed_and_closed(cluster: &LocalCluster, proxy: &Proxy, why: &str) {
    wait_for_slot_stat(cluster, proxy, "stream_txns").await;
    wait_until_no_open_writers(cluster, proxy, why).await;
    assert_forwarding_never_stopped(cluster, proxy);
}

/// A superuser session straight to the primary, for transactions held open across steps of a test.
pub(crate) async fn primary_session(cluster: &LocalCluster) -> tokio_postgres::Client {
    direct(&cluster.primary)
        .await
        .unwrap_or_else(|e| panic!("a session on the primary: {e}"))
}

/// Runs `sql` (statements, possibly opening or ending a transaction) on `c`.
pub(crate) async fn exec(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("on the primary: {sql}: {e:?}"));
}
