//! Forward mode with more large transactions open at once than `replication.max_streamed_transactions`: each
//! one applied while it runs takes a connection on every replica, so those beyond the limit are held back in a
//! file of pgfleet's and handed to the replicas whole at their commit. Proven here against real servers:
//!
//! - with a limit of 1 and two large transactions open, the first is applied while it runs and the second
//!   waits in a file (one pgfleet transaction per replica, not two); the second, committed first, reaches
//!   the replicas whole while the first is still open, and its file is deleted;
//! - with a limit of 0 every large transaction is held: one whose subtransactions rolled back reaches the
//!   replicas without their changes (rows and DDL), its top level's DDL at its place among its rows; one that
//!   rolls back leaves nothing and no file;
//! - pgfleet killed while a held transaction is open applies it exactly once after a restart.
//!
//! The files are made in the `TMPDIR` each test gives pgfleet and deleted at once (they live as open files
//! of pgfleet's), so the tests find them among pgfleet's open files in `/proc`. The admin console's
//! `SHOW REPLICATION` and `SHOW METRICS` count them, and the large transactions applied while they run.

use std::path::Path;
use std::time::Duration;

use crate::support::cluster::LocalCluster;
use crate::support::forward::*;
use crate::support::proxy::{Proxy, connect, free_port, show, text};
use crate::support::streaming::*;

/// The held-transaction files pgfleet has open, with their sizes. They have no name (pgfleet deletes each as
/// soon as it made it), so they are found among the process's open files, as `/proc` shows them.
fn held_files(proxy: &Proxy) -> Vec<(String, u64)> {
    let fds = format!("/proc/{}/fd", proxy.pid());
    std::fs::read_dir(&fds)
        .unwrap_or_else(|e| panic!("read {fds}: {e}"))
        .filter_map(Result::ok)
        .filter_map(|fd| {
            let target = std::fs::read_link(fd.path()).ok()?.display().to_string();
            let size = std::fs::metadata(fd.path()).map(|m| m.len()).unwrap_or(0);
            target.contains("-held-").then_some((target, size))
        })
        .collect()
}

/// pgfleet forwarding with `max_streamed_transactions = limit`, its temporary files in `dir`.
fn start_with_limit(cluster: &LocalCluster, limit: usize, dir: &Path) -> Proxy {
    let toml = with_limit(limit);
    let tmp = dir.to_string_lossy().into_owned();
    Proxy::start_with_env(cluster, &toml, |text| text, &[("TMPDIR", tmp.as_str())])
}

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";

fn with_limit(limit: usize) -> String {
    let mut toml = forward_toml().replacen(
        "[replication]\n",
        &format!("[replication]\nmax_streamed_transactions = {limit}\n"),
        1,
    );
    toml.push_str(&format!(
        "\n[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n"
    ));
    assert!(
        toml.contains("max_streamed_transactions"),
        "forward_toml() has no `[replication]` table to set the limit in:\n{toml}"
    );
    toml
}

/// Waits until pgfleet holds a transaction whose file has grown past `bytes`.
async fn wait_for_held_file(bytes: u64, proxy: &Proxy, cluster: &LocalCluster) {
    let held = crate::support::wait_until(MATCH_DEADLINE, async || {
        held_files(proxy).iter().any(|(_, size)| *size > bytes)
    })
    .await;
    assert!(
        held.is_some(),
        "pgfleet holds no transaction file of more than {bytes} bytes after {MATCH_DEADLINE:?}: {:?}\n\
         --- pgfleet log tail ---\n{}\n{}",
        held_files(proxy),
        log_tail(proxy),
        replica_errors(cluster)
    );
}

/// Waits until pgfleet has no held-transaction file open.
async fn wait_for_no_held_file(proxy: &Proxy, why: &str) {
    let gone = crate::support::wait_until(MATCH_DEADLINE, async || held_files(proxy).is_empty()).await;
    assert!(
        gone.is_some(),
        "held-transaction files still open after {MATCH_DEADLINE:?} ({why}): {:?}\n{}",
        held_files(proxy),
        log_tail(proxy)
    );
}

/// Per row of `SHOW REPLICATION` (one per replica): large transactions applied while they run, held ones, and
/// the bytes those take.
async fn streamed_columns(proxy: &Proxy) -> Vec<(u64, u64, u64)> {
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;
    let number = |row: &crate::support::proxy::Row, column: &str| -> u64 {
        let value = text(row, column);
        value
            .parse()
            .unwrap_or_else(|e| panic!("{column} = {value:?}: {e}"))
    };
    show(&admin, "SHOW REPLICATION")
        .await
        .iter()
        .map(|r| {
            (
                number(r, "streaming_txns"),
                number(r, "held_txns"),
                number(r, "held_bytes"),
            )
        })
        .collect()
}

/// The samples of the per-database large-transaction metrics, from the admin console's `SHOW METRICS`.
async fn streamed_metrics(proxy: &Proxy) -> Vec<String> {
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;
    show(&admin, "SHOW METRICS")
        .await
        .iter()
        .map(|r| text(r, "metric").to_owned())
        .filter(|line| {
            [
                "streaming_transactions{",
                "held_transactions{",
                "held_bytes{",
                "held_transactions_total{",
            ]
            .iter()
            .any(|family| line.starts_with(&format!("pgfleet_replication_{family}")))
        })
        .collect()
}

/// Every replica's count of pgfleet transactions that have written.
fn open_writers(cluster: &LocalCluster) -> Vec<i64> {
    cluster
        .replicas
        .iter()
        .map(|r| number(cluster, r, OPEN_WRITERS))
        .collect()
}

fn temp_dir() -> tempfile::TempDir {
    tempfile::Builder::new()
        .prefix("pgfleet-held-test-")
        .tempdir()
        .expect("a temporary directory for pgfleet's files")
}

/// A streaming fleet (see [`streaming_fleet_with`]) with `schema` and pgfleet at `limit`, its temporary
/// directory kept for as long as the test holds it.
async fn held_fleet(schema: &str, limit: usize) -> (tempfile::TempDir, LocalCluster, Proxy) {
    let dir = temp_dir();
    let (cluster, proxy) =
        streaming_fleet_with(schema, |cluster| start_with_limit(cluster, limit, dir.path())).await;
    (dir, cluster, proxy)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_beyond_the_limit_waits_in_a_file_and_is_applied_whole_at_its_commit() {
    let (_dir, cluster, proxy) = held_fleet(
        "CREATE TABLE applied_a (id int PRIMARY KEY, v text NOT NULL); \
         CREATE TABLE held_b (id int PRIMARY KEY, v text NOT NULL)",
        1,
    )
    .await;

    // A, the first large transaction, is applied on the replicas while it runs.
    let a = primary_session(&cluster).await;
    exec(
        &a,
        "BEGIN; INSERT INTO applied_a SELECT g, 'from A' FROM generate_series(1, 20000) g",
    )
    .await;
    wait_for_chunks_applied(&cluster, &proxy, &[("applied_a", 0), ("held_b", 0)]).await;
    assert!(
        held_files(&proxy).is_empty(),
        "the first streamed transaction was held although the limit allows one: {:?}",
        held_files(&proxy)
    );

    // B, the second, waits in a file: the replicas still have one pgfleet transaction each (A's).
    let b = primary_session(&cluster).await;
    exec(
        &b,
        "BEGIN; \
         INSERT INTO held_b SELECT g, 'from B' FROM generate_series(1, 20000) g; \
         UPDATE held_b SET v = v || ' updated' WHERE id % 2 = 0",
    )
    .await;
    wait_for_held_file(100_000, &proxy, &cluster).await;
    assert_eq!(
        open_writers(&cluster),
        vec![1; cluster.replicas.len()],
        "with a limit of one, only A's transaction may be applied while it runs on each replica\n{}",
        log_tail(&proxy)
    );
    // The console shows both on every replica's row: A applied while it runs, B held with its file's size.
    let columns = streamed_columns(&proxy).await;
    assert_eq!(columns.len(), cluster.replicas.len(), "{columns:?}");
    for (applying, held, bytes) in &columns {
        assert_eq!(
            (*applying, *held),
            (1, 1),
            "streaming_txns, held_txns: {columns:?}"
        );
        assert!(*bytes > 100_000, "held_bytes below the file's size: {columns:?}");
    }
    let metrics = streamed_metrics(&proxy).await;
    for sample in [
        "pgfleet_replication_streaming_transactions{database=\"app\"} 1",
        "pgfleet_replication_held_transactions{database=\"app\"} 1",
        "pgfleet_replication_held_transactions_total{database=\"app\"} 1",
    ] {
        assert!(metrics.iter().any(|m| m == sample), "{sample} in {metrics:?}");
    }

    // B commits first: it reaches every replica whole while A is still open there.
    exec(&b, "COMMIT").await;
    const B_DONE: &str = "SELECT count(*) || ' ' || count(*) FILTER (WHERE v LIKE '% updated') FROM held_b";
    for replica in &cluster.replicas {
        let seen = crate::support::wait_until(MATCH_DEADLINE, async || {
            cluster
                .psql(replica, crate::support::cluster::APP_DB, B_DONE)
                .is_ok_and(|s| s == "20000 10000")
        })
        .await;
        assert!(
            seen.is_some(),
            "{}: the held transaction did not arrive whole after its commit (now: {:?})\n\
             --- pgfleet log tail ---\n{}\n{}",
            replica.name,
            cluster.psql(replica, crate::support::cluster::APP_DB, B_DONE),
            log_tail(&proxy),
            replica_errors(&cluster)
        );
        assert_eq!(
            rows(&cluster, replica, "applied_a"),
            0,
            "{}: A's rows are visible before A committed",
            replica.name
        );
    }
    wait_for_no_held_file(&proxy, "after the held transaction committed").await;
    // B stopped counting as held when it was read back, before its file closed.
    let columns = streamed_columns(&proxy).await;
    assert!(
        columns.iter().all(|c| *c == (1, 0, 0)),
        "after B's commit: {columns:?}"
    );

    exec(&a, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "applied_a", 20000);
    assert_rows(&sums, "held_b", 20000);
    streamed_and_closed(&cluster, &proxy, "after both transactions committed").await;
    let columns = streamed_columns(&proxy).await;
    assert!(
        columns.iter().all(|c| *c == (0, 0, 0)),
        "after both commits: {columns:?}"
    );
    let metrics = streamed_metrics(&proxy).await;
    assert!(
        metrics.contains(&"pgfleet_replication_held_transactions_total{database=\"app\"} 1".to_owned())
            && metrics.contains(&"pgfleet_replication_held_bytes{database=\"app\"} 0".to_owned()),
        "{metrics:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn held_transactions_leave_out_rolled_back_subtransactions_and_an_aborted_one_leaves_nothing() {
    let (_dir, cluster, proxy) = held_fleet(
        "CREATE TABLE held_savepoints (id int PRIMARY KEY, v text NOT NULL); \
         CREATE TABLE held_abandoned (id int PRIMARY KEY, v text NOT NULL)",
        0,
    )
    .await;

    let c = primary_session(&cluster).await;
    for step in [
        "BEGIN",
        "INSERT INTO held_savepoints SELECT g, 'first' FROM generate_series(1, 10000) g",
        // DDL at the top level stays, at its place among the rows; DDL in a rolled-back subtransaction goes.
        "ALTER TABLE held_savepoints ADD COLUMN note text",
        "SAVEPOINT s1",
        "INSERT INTO held_savepoints SELECT g, 'rolled back' FROM generate_series(10001, 20000) g",
        "UPDATE held_savepoints SET v = 'updated, then rolled back' WHERE id <= 5000",
        "CREATE TABLE held_never (id int)",
        "ROLLBACK TO SAVEPOINT s1",
        "UPDATE held_savepoints SET note = 'kept' WHERE id <= 10",
        // The same keys again: they would conflict with s1's rows had those been kept.
        "INSERT INTO held_savepoints SELECT g, 'second' FROM generate_series(10001, 20000) g",
        // Nested: a released savepoint inside one rolled back goes with it.
        "SAVEPOINT p",
        "INSERT INTO held_savepoints SELECT g, 'in p' FROM generate_series(30001, 33000) g",
        "SAVEPOINT c",
        "INSERT INTO held_savepoints SELECT g, 'in c' FROM generate_series(33001, 36000) g",
        "RELEASE SAVEPOINT c",
        "ROLLBACK TO SAVEPOINT p",
        "UPDATE held_savepoints SET v = v || ' +top' WHERE id % 1000 = 0",
    ] {
        exec(&c, step).await;
    }
    // Held, not applied while it runs: a file, and no pgfleet transaction on the replicas.
    wait_for_held_file(100_000, &proxy, &cluster).await;
    assert_eq!(
        open_writers(&cluster),
        vec![0; cluster.replicas.len()],
        "with a limit of 0 nothing is applied while it runs\n{}",
        log_tail(&proxy)
    );
    exec(&c, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "held_savepoints", 20000);
    for replica in &cluster.replicas {
        let undone = number(
            &cluster,
            replica,
            "SELECT count(*) FROM held_savepoints WHERE v LIKE '%rolled back%' OR v LIKE 'in %'",
        );
        assert_eq!(
            undone,
            0,
            "{}: rows of rolled-back subtransactions survived\n{}",
            replica.name,
            log_tail(&proxy)
        );
        let ddl = cluster
            .psql(
                replica,
                crate::support::cluster::APP_DB,
                "SELECT (SELECT count(*) FROM held_savepoints WHERE note = 'kept') || ' ' || \
                 (to_regclass('held_never') IS NULL)",
            )
            .unwrap_or_else(|e| panic!("{}: {e}", replica.name));
        assert_eq!(
            ddl.trim(),
            "10 true",
            "{}: the top level's ALTER TABLE and its rows, and no table from the rolled-back subtransaction\n{}",
            replica.name,
            log_tail(&proxy)
        );
    }
    wait_for_no_held_file(&proxy, "after the held transaction committed").await;

    // One that rolls back: its file goes, nothing reaches the replicas; a commit after it does.
    exec(
        &c,
        "BEGIN; INSERT INTO held_abandoned SELECT g, 'never committed' FROM generate_series(1, 20000) g",
    )
    .await;
    wait_for_held_file(100_000, &proxy, &cluster).await;
    exec(&c, "ROLLBACK").await;
    wait_for_no_held_file(&proxy, "after the held transaction rolled back").await;
    exec(&c, "INSERT INTO held_abandoned VALUES (7, 'committed')").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "held_abandoned", 1);
    streamed_and_closed(&cluster, &proxy, "after the held transactions ended").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgfleet_killed_while_a_transaction_is_held_applies_it_exactly_once() {
    let dir = temp_dir();
    let cluster = small_decoding_memory_cluster().await;
    // No key: rows applied twice show up as doubled rows, not as an error.
    primary_sql(
        &cluster,
        "CREATE TABLE held_log (g int NOT NULL, v text NOT NULL); \
         ALTER TABLE held_log REPLICA IDENTITY FULL",
    );
    let tmp = dir.path().to_string_lossy().into_owned();
    let config = Proxy::config_for(&cluster, free_port(), &with_limit(0));
    let start = |config: &str| Proxy::start_with_config_env(config.to_owned(), &[("TMPDIR", tmp.as_str())]);
    let mut proxy = start(&config);
    wait_until_streaming(&cluster, &proxy).await;

    let c = primary_session(&cluster).await;
    exec(
        &c,
        "BEGIN; INSERT INTO held_log SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await;
    wait_for_held_file(100_000, &proxy, &cluster).await;
    let files = held_files(&proxy);
    assert!(
        files.iter().all(|(target, _)| target.starts_with(&tmp)),
        "held files are made in pgfleet's temporary directory {tmp}: {files:?}"
    );
    kill_9(&mut proxy);
    eprintln!("pgfleet killed while it held an open streamed transaction");
    // The restarted pgfleet gets the transaction from its first block again, holds it, and applies it once.
    proxy = start(&config);
    exec(&c, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    assert_rows(&sums, "held_log", 20000);
    for replica in &cluster.replicas {
        let doubled = number(
            &cluster,
            replica,
            "SELECT count(*) FROM (SELECT g FROM held_log GROUP BY g HAVING count(*) > 1) d",
        );
        assert_eq!(doubled, 0, "{}: {doubled} doubled rows in held_log", replica.name);
    }
    // Neither the killed pgfleet nor this one left a file behind: a held file has no name.
    let left: Vec<_> = std::fs::read_dir(dir.path())
        .expect("pgfleet's temporary directory")
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(
        left.is_empty(),
        "files left in pgfleet's temporary directory: {left:?}"
    );
    wait_for_no_held_file(&proxy, "after the held transaction committed").await;
    streamed_and_closed(&cluster, &proxy, "after the held transaction committed").await;
}
