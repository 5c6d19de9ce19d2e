//! Forward mode end to end, quickly: plain servers kept in sync by pgfleet through copy and stream.

use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_with_async, options};
use crate::support::proxy::{Proxy, connect};

fn forward_toml() -> String {
    format!(
        "[replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"{PASSWORD}\"\ndatabases = [\"{APP_DB}\"]\n\n[health]\ninterval = \"200ms\""
    )
}

async fn wait_for(proxy: &Proxy, what: &str, mut check: impl FnMut() -> bool) {
    crate::support::wait_until(Duration::from_secs(30), async || check())
        .await
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}\n{}",
                proxy
                    .log_contents()
                    .lines()
                    .filter(|l| !l.contains("change=Insert")
                        && !l.contains("change=Update")
                        && !l.contains("change=Delete"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_then_streams_to_plain_servers() {
    let cluster = cluster_with_async(crate::support::cluster::ClusterOptions {
        streaming: false,
        ..options()
    })
    .await;
    cluster
        .psql(&cluster.primary, APP_DB, "CREATE TABLE pre (id int primary key, v text); INSERT INTO pre SELECT g, 'x' || g FROM generate_series(1, 1000) g; ALTER TABLE pre OWNER TO app;")
        .expect("seed");
    let proxy = Proxy::start(&cluster, &forward_toml());
    for r in &cluster.replicas {
        wait_for(&proxy, "initial copy", || {
            cluster
                .psql(r, APP_DB, "SELECT count(*) FROM pre")
                .map(|s| s.trim() == "1000")
                .unwrap_or(false)
        })
        .await;
    }
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute("CREATE TABLE t (id serial primary key, v text); INSERT INTO t (v) SELECT 'r' || g FROM generate_series(1, 500) g; UPDATE pre SET v = 'changed' WHERE id <= 10; DELETE FROM pre WHERE id > 990")
        .await
        .expect("writes");
    for r in &cluster.replicas {
        wait_for(&proxy, "stream", || {
            cluster
                .psql(r, APP_DB, "SELECT (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM pre WHERE v = 'changed') || ' ' || (SELECT count(*) FROM pre)")
                .map(|s| s.trim() == "500 10 990")
                .unwrap_or(false)
        })
        .await;
    }
    // Reads through pgfleet see the session's own writes and come from replicas once they caught up.
    let row = c.query_one("SELECT count(*) FROM t", &[]).await.expect("read");
    assert_eq!(row.get::<_, i64>(0), 500);
    let log = proxy.log_contents();
    assert!(log.contains("forwarding changes"), "{log}");

    // Both replicas are fed from one slot and one WAL sender on the primary: the database's changes are
    // decoded once. (The copies' temporary slots end with their connections, which the server notices a
    // moment later.)
    wait_for(&proxy, "one slot and one WAL sender", || {
        cluster
            .psql(
                &cluster.primary,
                APP_DB,
                "SELECT (SELECT count(*) FROM pg_replication_slots) || ' ' || \
                 (SELECT count(*) FROM pg_stat_replication)",
            )
            .map(|s| s.trim() == "1 1")
            .unwrap_or(false)
    })
    .await;
    assert_eq!(cluster.replicas.len(), 2);
    let slot = cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "SELECT slot_name || ' ' || active || ' ' || temporary FROM pg_replication_slots",
        )
        .expect("slots");
    assert_eq!(slot.trim(), format!("pgfleet_{APP_DB}_ true false"));
}
