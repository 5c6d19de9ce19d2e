//! A hot standby cancels a query that holds what its replay must change (a lock that a replayed ALTER TABLE
//! needs, rows a replayed VACUUM removes) once `max_standby_streaming_delay` has passed: "canceling statement
//! due to conflict with recovery", SQLSTATE 40001, an error a client of the primary never gets for a read
//! outside a transaction. pgfleet runs such a read again on another node when none of its answer has reached
//! the client, so the application gets its answer as from the primary.

use std::time::Duration;

use crate::support::cluster::{
    APP_DB, APP_USER, LocalCluster, PASSWORD, cluster_async, superuser_client, wait_running,
};
use crate::support::proxy::{Proxy, connect};
use crate::support::{one, wait_until};
use tokio_postgres::SimpleQueryMessage;

/// A read that holds a lock on `conflict_t` for two seconds.
const READ: &str = "SELECT count(*) FROM conflict_t, pg_sleep(2)";

/// Makes every replica cancel a conflicting query after 100 ms instead of 30 s.
async fn cancel_conflicts_quickly(cluster: &LocalCluster) {
    for replica in &cluster.replicas {
        let su = superuser_client(replica).await;
        for sql in [
            "ALTER SYSTEM SET max_standby_streaming_delay = '100ms'",
            "SELECT pg_reload_conf()",
        ] {
            su.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e}"));
        }
        let applied = wait_until(Duration::from_secs(10), async || {
            one(&su, "SHOW max_standby_streaming_delay").await == "100ms"
        })
        .await;
        assert!(applied.is_some(), "the replica took the new setting");
    }
}

/// The first field of the first row of a simple query's answer.
fn first_field(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_a_replica_cancels_for_its_replay_runs_again_elsewhere() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let primary = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    primary
        .batch_execute("CREATE TABLE conflict_t (x int); INSERT INTO conflict_t VALUES (1)")
        .await
        .expect("setup");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(30))
        .expect("replicas caught up");
    cancel_conflicts_quickly(&cluster).await;

    // The premise: straight on a replica, the read is canceled when the primary alters the table.
    let replica = connect(&cluster.replicas[0].dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct = tokio::spawn(async move { replica.simple_query(READ).await });
    wait_running(&cluster, READ, 1).await;
    primary
        .batch_execute("ALTER TABLE conflict_t ADD COLUMN y0 int")
        .await
        .expect("alter");
    let err = direct
        .await
        .expect("joined")
        .expect_err("the replica cancels the read");
    assert_eq!(err.as_db_error().map(|e| e.code().code()), Some("40001"), "{err}");

    // Through pgfleet the same read, on a replica, gets its answer.
    for round in 1..=2 {
        let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let read = tokio::spawn(async move { c.simple_query(READ).await });
        wait_running(&cluster, READ, 1).await;
        primary
            .batch_execute(&format!("ALTER TABLE conflict_t ADD COLUMN y{round} int"))
            .await
            .expect("alter");
        let answer = read
            .await
            .expect("joined")
            .unwrap_or_else(|e| panic!("round {round}: the read failed through pgfleet: {e}"));
        assert_eq!(first_field(&answer).as_deref(), Some("1"));
    }
    assert!(
        proxy.wait_for_log("conflict with recovery", Duration::from_secs(5)),
        "a replica canceled the read, and pgfleet says so: {}",
        proxy.log_tail(20)
    );
}
