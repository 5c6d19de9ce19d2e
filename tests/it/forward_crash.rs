//! Forward mode survives crashes: pgfleet killed with SIGKILL at random moments during the initial copy
//! and during streaming, then restarted with the same config, leaves every replica an exact copy of the
//! primary (no row lost, none applied twice); a replica stopped for a minute catches up once it is back
//! and serves reads again.
//!
//! "Exact copy" is checked table by table: for every table of schema `public`, the row count and the md5
//! of all rows' text forms in text order must be the same on the primary and on each replica. The tables
//! written here have no primary key where a doubled row would otherwise be refused, so that a
//! transaction applied twice shows up as a difference rather than as an error.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, LocalCluster, NodeHandle, PASSWORD};
use crate::support::forward::*;
use crate::support::proxy::{Proxy, connect, free_port};

/// The config text every pgfleet of a test is started with, so that a restarted one is the same pgfleet.
fn config_text(cluster: &LocalCluster) -> String {
    Proxy::config_for(cluster, free_port(), &forward_toml())
}

/// How many forwarding tasks of this pgfleet have started following the stream.
fn streaming_tasks(proxy: &Proxy) -> usize {
    proxy.log_contents().matches("forwarding changes").count()
}

/// Waits until this pgfleet follows the stream for every replica.
async fn wait_for_streaming_tasks(cluster: &LocalCluster, proxy: &Proxy) {
    crate::support::wait_until(MATCH_DEADLINE, async || {
        streaming_tasks(proxy) >= cluster.replicas.len()
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "pgfleet does not forward to every replica after a restart\n{}\n{}",
            log_tail(proxy),
            replica_errors(cluster)
        )
    });
}

/// Rows of `table` on `node` that have a twin with the same `key` (there should be none).
fn duplicates(cluster: &LocalCluster, node: &NodeHandle, table: &str, key: &str) -> String {
    cluster
        .psql(
            node,
            APP_DB,
            &format!("SELECT count(*) - count(DISTINCT ({key})) FROM {table}"),
        )
        .unwrap_or_else(|e| panic!("{}: counting duplicates in {table}: {e}", node.name))
}

/// Writes small transactions straight to the primary (forward mode forwards those too) until `stop`, with
/// a larger one (bigger than pgfleet's 1 MB apply chunk) every `big_every` transactions and a pause of
/// `pause` between transactions. Each transaction inserts log rows tagged with its number and bumps a
/// counter, so that a transaction applied twice or lost changes both. Returns the transactions committed.
async fn write_until(primary_dsn: String, stop: Arc<AtomicBool>, big_every: u64, pause: Duration) -> u64 {
    let mut c = connect(&primary_dsn).await;
    let mut n: u64 = 0;
    while !stop.load(Ordering::Relaxed) {
        n += 1;
        let tag = i64::try_from(n).expect("tag");
        let tx = c.transaction().await.expect("writer: begin");
        if n.is_multiple_of(big_every) {
            tx.execute(
                "INSERT INTO log (n, g, payload) SELECT $1, g, repeat(md5(g::text), 3) \
                 FROM generate_series(1, 15000) g",
                &[&tag],
            )
            .await
            .expect("writer: big insert");
        } else {
            tx.execute(
                "INSERT INTO log (n, g, payload) VALUES ($1, 0, 'small'), ($1, 1, 'small')",
                &[&tag],
            )
            .await
            .expect("writer: insert");
        }
        tx.execute(
            "UPDATE counters SET hits = hits + 1 WHERE id = ($1::bigint % 10)::int",
            &[&tag],
        )
        .await
        .expect("writer: update");
        if n.is_multiple_of(7) {
            tx.execute("DELETE FROM log WHERE n = $1 AND g = 1", &[&(tag - 3)])
                .await
                .expect("writer: delete");
        }
        tx.commit().await.expect("writer: commit");
        if !pause.is_zero() {
            tokio::time::sleep(pause).await;
        }
    }
    n
}

const WRITER_TABLES: &str = "CREATE TABLE log (n bigint NOT NULL, g int NOT NULL, payload text NOT NULL); \
    ALTER TABLE log REPLICA IDENTITY FULL; \
    CREATE TABLE counters (id int PRIMARY KEY, hits bigint NOT NULL); \
    INSERT INTO counters SELECT g, 0 FROM generate_series(0, 9) g";

/// Transactions the writer has committed so far, as the primary's counters say.
fn committed(cluster: &LocalCluster) -> u64 {
    cluster
        .psql(&cluster.primary, APP_DB, "SELECT sum(hits) FROM counters")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0)
}

/// Waits until the writer has committed `more` transactions beyond what it had at the call.
async fn wait_for_writes(cluster: &LocalCluster, more: u64) {
    let from = committed(cluster);
    let reached =
        crate::support::wait_until(MATCH_DEADLINE, async || committed(cluster) >= from + more).await;
    assert!(
        reached.is_some(),
        "the writer made no progress past {from} transactions"
    );
}

/// Stops the writer, then waits until every replica matches the primary with no row of `log` doubled.
async fn stop_writer_and_check(
    cluster: &LocalCluster,
    proxy: &Proxy,
    stop: Arc<AtomicBool>,
    writer: tokio::task::JoinHandle<u64>,
) -> u64 {
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.expect("writer task");
    eprintln!("the writer committed {transactions} transactions");
    assert!(
        transactions > 20,
        "the writer barely ran: {transactions} transactions"
    );
    let sums = wait_until_replicas_match(cluster, proxy, Duration::from_secs(60)).await;
    assert!(
        sums.contains_key("log") && sums.contains_key("counters"),
        "{sums:?}"
    );
    for replica in &cluster.replicas {
        assert_eq!(
            duplicates(cluster, replica, "log", "n, g"),
            "0",
            "{}: doubled rows in log",
            replica.name
        );
    }
    transactions
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_initial_copy_then_restart_copies_exactly() {
    let cluster = plain_cluster().await;
    // Narrow rows without a key: a table copied twice, or copied and streamed, would show doubled rows.
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE big (id int NOT NULL, v int NOT NULL); \
             INSERT INTO big SELECT g, g % 1000 FROM generate_series(1, 1000000) g; \
             CREATE TABLE small (id int PRIMARY KEY, v text NOT NULL); \
             INSERT INTO small SELECT g, 'v' || g FROM generate_series(1, 1000) g; \
             ANALYZE",
        )
        .expect("seed the primary");
    let config = config_text(&cluster);

    // First kill: at a random moment just after start (preparing the primary, slots, schema dump).
    let mut proxy = Proxy::start_with_config(config.clone());
    let after = Duration::from_millis(rand::random_range(50..=500));
    tokio::time::sleep(after).await;
    kill_9(&mut proxy);
    let states: Vec<String> = cluster
        .replicas
        .iter()
        .map(|r| progress_state(&cluster, r))
        .collect();
    eprintln!("kill 1: {after:?} after pgfleet listened; replica progress {states:?}");

    // Second kill: while rows of `big` are being copied into a replica.
    let mut proxy = Proxy::start_with_config(config.clone());
    let deadline = Instant::now() + MATCH_DEADLINE;
    let copying = loop {
        let found = cluster.replicas.iter().find(|r| {
            cluster
                .psql(
                    r,
                    APP_DB,
                    "SELECT count(*) FROM pg_stat_activity WHERE query ILIKE 'COPY %big% FROM STDIN%'",
                )
                .is_ok_and(|n| n != "0")
        });
        if let Some(r) = found {
            break r;
        }
        assert!(
            Instant::now() < deadline,
            "the copy of `big` never started\n{}\n{}",
            log_tail(&proxy),
            replica_errors(&cluster)
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    };
    let after = Duration::from_millis(rand::random_range(50..=500));
    tokio::time::sleep(after).await;
    kill_9(&mut proxy);
    let state = progress_state(&cluster, copying);
    eprintln!(
        "kill 2: {after:?} into the copy of big to {}; its progress: {state}",
        copying.name
    );
    assert_eq!(
        state, "copying",
        "the kill was meant to land during the copy to {}, but the copy had finished: it is too quick to test",
        copying.name
    );
    drop(proxy);

    let proxy = Proxy::start_with_config(config.clone());
    // Writes during the final copy: rows must continue exactly from the copy's snapshot.
    let stop = Arc::new(AtomicBool::new(false));
    let primary_dsn = cluster.primary.dsn("postgres", PASSWORD, APP_DB);
    let writer = {
        let stop = stop.clone();
        tokio::spawn(async move {
            let c = connect(&primary_dsn).await;
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                c.batch_execute(&format!(
                    "INSERT INTO big VALUES ({}, -1); UPDATE small SET v = v || '+' WHERE id = {}",
                    1_000_000 + n,
                    n % 1000 + 1
                ))
                .await
                .expect("write during the copy");
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            n
        })
    };
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let written = writer.await.expect("writer task");
    assert!(written > 0);
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    for line in proxy
        .log_contents()
        .lines()
        .filter(|l| l.contains("copied table") || l.contains("initial copy"))
    {
        eprintln!("{line}");
    }
    let expected = format!("{} rows,", 1_000_000 + written);
    assert!(
        sums.get("big").is_some_and(|s| s.starts_with(&expected)),
        "big on the primary: {:?}, expected {expected}",
        sums.get("big")
    );
    for replica in &cluster.replicas {
        assert_eq!(
            duplicates(&cluster, replica, "big", "id"),
            "0",
            "{}: doubled rows in big",
            replica.name
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_streaming_three_times_loses_and_doubles_nothing() {
    let cluster = plain_cluster().await;
    cluster
        .psql(&cluster.primary, APP_DB, WRITER_TABLES)
        .expect("create the writer's tables");
    let config = config_text(&cluster);
    let mut proxy = Proxy::start_with_config(config.clone());
    wait_until_streaming(&cluster, &proxy).await;
    wait_for_streaming_tasks(&cluster, &proxy).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dsn = cluster.primary.dsn("postgres", PASSWORD, APP_DB);
        tokio::spawn(write_until(dsn, stop, 20, Duration::from_millis(2)))
    };
    for kill in 1..=3 {
        let after = Duration::from_millis(rand::random_range(300..=1500));
        tokio::time::sleep(after).await;
        kill_9(&mut proxy);
        eprintln!("kill {kill}: pgfleet killed after {after:?} of streaming");
        tokio::time::sleep(Duration::from_millis(rand::random_range(0..=300))).await;
        proxy = Proxy::start_with_config(config.clone());
        wait_for_streaming_tasks(&cluster, &proxy).await;
    }
    wait_for_writes(&cluster, 50).await;
    let transactions = stop_writer_and_check(&cluster, &proxy, stop, writer).await;
    assert_eq!(committed(&cluster), transactions, "the primary's counters");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_stopped_for_a_minute_catches_up_and_serves_reads_again() {
    let cluster = plain_cluster().await;
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_until_streaming(&cluster, &proxy).await;
    // Created through pgfleet by the app, which then reads them; the writer writes as the superuser.
    connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB))
        .await
        .batch_execute(WRITER_TABLES)
        .await
        .expect("create the writer's tables");
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    let stopped = &cluster.replicas[1];
    let other = &cluster.replicas[0];

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dsn = cluster.primary.dsn("postgres", PASSWORD, APP_DB);
        tokio::spawn(write_until(dsn, stop, 1000, Duration::from_millis(10)))
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    tokio::task::block_in_place(|| stopped.stop()).expect("stop the replica");
    let down_since = Instant::now();
    // While it is down, reads keep working and never go to it.
    let mut ports = BTreeSet::new();
    while down_since.elapsed() < Duration::from_secs(60) {
        let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let row = c
            .query_one("SELECT inet_server_port(), (SELECT count(*) FROM counters)", &[])
            .await
            .unwrap_or_else(|e| panic!("a read while {} is down failed: {e:?}", stopped.name));
        ports.insert(row.get::<_, i32>(0));
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    assert!(
        !ports.contains(&i32::from(stopped.port)),
        "reads went to the stopped replica's port {}: {ports:?}",
        stopped.port
    );
    tokio::task::block_in_place(|| stopped.start()).expect("start the replica again");
    tokio::time::sleep(Duration::from_secs(3)).await;
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.expect("writer task");
    eprintln!("the writer committed {transactions} transactions");
    assert!(
        transactions > 100,
        "the writer barely ran: {transactions} transactions"
    );

    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for replica in &cluster.replicas {
        assert_eq!(
            duplicates(&cluster, replica, "log", "n, g"),
            "0",
            "{}: doubled rows in log",
            replica.name
        );
    }
    // It serves reads again: fresh sessions (round robin over the replicas) reach it.
    let deadline = Instant::now() + MATCH_DEADLINE;
    let mut seen = Vec::new();
    loop {
        let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let row = c
            .query_one(
                "SELECT inet_server_port(), (SELECT sum(hits) FROM counters)::bigint",
                &[],
            )
            .await
            .expect("read after the replica's return");
        let port: i32 = row.get(0);
        assert_eq!(row.get::<_, i64>(1), i64::try_from(transactions).expect("count"));
        seen.push(port);
        if port == i32::from(stopped.port) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} (port {}) caught up but gets no reads; ports seen: {seen:?} (other replica {})\n{}",
            stopped.name,
            stopped.port,
            other.port,
            log_tail(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The slots on the primary, by name.
fn slots(cluster: &LocalCluster) -> String {
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "SELECT coalesce(string_agg(slot_name, ',' ORDER BY slot_name), '') FROM pg_replication_slots",
        )
        .expect("list slots")
}

/// Waits until the primary's only slot is `slot`: the copies' temporary slots end with their connections,
/// which the primary notices a moment later.
async fn wait_for_only_slot(cluster: &LocalCluster, proxy: &Proxy, slot: &str) {
    let seen = crate::support::wait_until(MATCH_DEADLINE, async || {
        let now = slots(cluster);
        (now == slot).then_some(now)
    })
    .await;
    assert_eq!(
        seen.as_deref(),
        Some(slot),
        "{}\n{}",
        slots(cluster),
        log_tail(proxy)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_behind_a_slot_made_afresh_are_copied_again_and_old_slots_go() {
    let cluster = plain_cluster().await;
    let primary = &cluster.primary;
    cluster
        .psql(
            primary,
            APP_DB,
            "CREATE TABLE kept (id int PRIMARY KEY, v text); \
             INSERT INTO kept SELECT g, 'before' FROM generate_series(1, 100) g",
        )
        .expect("seed");
    // A slot per replica, as pgfleet kept them before one stream served a database's replicas: left in
    // place, each would hold WAL on the primary forever.
    for replica in &cluster.replicas {
        let old = pgfleet::replication::setup::slot_name("pgfleet", APP_DB, &replica.name);
        cluster
            .psql(
                primary,
                APP_DB,
                &format!("SELECT pg_create_logical_replication_slot('{old}', 'pgoutput')"),
            )
            .expect("an old per-replica slot");
    }
    let shared = pgfleet::replication::setup::feed_slot_name("pgfleet", APP_DB);
    let config = config_text(&cluster);
    {
        let proxy = Proxy::start_with_config(config.clone());
        wait_until_streaming(&cluster, &proxy).await;
        wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
        wait_for_only_slot(&cluster, &proxy, &shared).await;
    }

    // With pgfleet stopped, the slot is dropped (as an operator, or max_slot_wal_keep_size, would) and rows
    // are written that no slot keeps for the replicas. The slot's WAL sender ends a moment after pgfleet.
    crate::support::wait_until(MATCH_DEADLINE, async || {
        cluster
            .psql(
                primary,
                APP_DB,
                &format!("SELECT pg_drop_replication_slot('{shared}')"),
            )
            .is_ok()
    })
    .await
    .expect("drop the stream's slot");
    cluster
        .psql(
            primary,
            APP_DB,
            "INSERT INTO kept SELECT g, 'while no slot kept it' FROM generate_series(101, 200) g",
        )
        .expect("write without a slot");

    // pgfleet makes the slot afresh; the replicas' positions are behind it, so each is copied again and
    // ends with every row.
    let proxy = Proxy::start_with_config(config);
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for replica in &cluster.replicas {
        assert_eq!(
            cluster
                .psql(replica, APP_DB, "SELECT count(*) FROM kept")
                .expect("count"),
            "200",
            "{}",
            replica.name
        );
    }
    let log = proxy.log_contents();
    assert_eq!(
        log.matches("it will be copied again").count(),
        cluster.replicas.len(),
        "{}",
        log_tail(&proxy)
    );
    wait_for_only_slot(&cluster, &proxy, &shared).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_stuck_on_a_lock_does_not_hold_the_others_back() {
    let cluster = plain_cluster().await;
    cluster
        .psql(&cluster.primary, APP_DB, "CREATE TABLE busy (id int PRIMARY KEY)")
        .expect("create");
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_until_streaming(&cluster, &proxy).await;
    let (free, stuck) = (&cluster.replicas[0], &cluster.replicas[1]);

    // A session on one replica takes a lock that applying the next changes needs, and keeps it.
    let blocker = direct(stuck).await.expect("connect to the replica");
    blocker
        .batch_execute("BEGIN; LOCK TABLE busy IN ACCESS EXCLUSIVE MODE")
        .await
        .expect("lock");
    // Many small transactions, more than the stuck replica's queue holds.
    const ROWS: i32 = 3000;
    let writer = direct(&cluster.primary).await.expect("connect to the primary");
    for id in 1..=ROWS {
        writer
            .execute("INSERT INTO busy VALUES ($1)", &[&id])
            .await
            .expect("insert");
    }
    // The other replica gets every one of them while the lock is still held.
    let count = |node| async move {
        let c = direct(node).await.ok()?;
        let row = c.query_one("SELECT count(*) FROM busy", &[]).await.ok()?;
        Some(row.get::<_, i64>(0))
    };
    let reached = crate::support::wait_until(Duration::from_secs(90), async || {
        count(free).await.filter(|n| *n == i64::from(ROWS))
    })
    .await;
    assert_eq!(
        reached,
        Some(i64::from(ROWS)),
        "{} fell behind with {} stuck\n{}",
        free.name,
        stuck.name,
        log_tail(&proxy)
    );
    assert!(
        proxy
            .log_contents()
            .contains("it leaves the change stream and joins again"),
        "{}",
        log_tail(&proxy)
    );

    // Released, the stuck replica catches up, with every row once.
    blocker.batch_execute("ROLLBACK").await.expect("release");
    wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(90)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn terminated_wal_sender_and_replica_sessions_lose_and_double_nothing() {
    let cluster = plain_cluster().await;
    cluster
        .psql(&cluster.primary, APP_DB, WRITER_TABLES)
        .expect("create the writer's tables");
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_until_streaming(&cluster, &proxy).await;
    wait_for_streaming_tasks(&cluster, &proxy).await;
    let shared = pgfleet::replication::setup::feed_slot_name("pgfleet", APP_DB);

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dsn = cluster.primary.dsn("postgres", PASSWORD, APP_DB);
        tokio::spawn(write_until(dsn, stop, 20, Duration::from_millis(2)))
    };
    // In turn: the database's WAL sender (every replica's stream ends at once), then one replica's sessions
    // of pgfleet (that replica's task fails and joins the stream again behind the others), then the WAL
    // sender again; each at a random moment of the writes.
    let targets = [
        (&cluster.primary, format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{shared}' AND active")),
        (&cluster.replicas[0], "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pgfleet-forward'".to_owned()),
        (&cluster.primary, format!("SELECT pg_terminate_backend(active_pid) FROM pg_replication_slots WHERE slot_name = '{shared}' AND active")),
    ];
    for (node, sql) in &targets {
        let after = rand::random_range(20..=200);
        wait_for_writes(&cluster, after).await;
        // The stream may be between two connections (it restarts after the previous step): wait for one.
        let ended = crate::support::wait_until(MATCH_DEADLINE, async || {
            let out = cluster.psql(node, APP_DB, sql).expect("terminate");
            out.contains('t').then_some(out)
        })
        .await;
        eprintln!("{} after {after} more transactions: {ended:?}", node.name);
        assert!(
            ended.is_some(),
            "{}: nothing to terminate\n{}",
            node.name,
            log_tail(&proxy)
        );
    }
    // Writes go on after the last termination, so the replicas must catch up on them too.
    wait_for_writes(&cluster, 50).await;
    stop_writer_and_check(&cluster, &proxy, stop, writer).await;
}
