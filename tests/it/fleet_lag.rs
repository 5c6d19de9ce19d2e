//! Fleet awareness with replicas held back on purpose (`recovery_min_apply_delay`), through a real pgfleet in
//! front of a real primary and two streaming replicas: lag-aware reads (`routing.max_replica_lag`),
//! read-your-writes (`routing.read_your_writes`, `routing.read_your_writes_wait`) and
//! `routing.fallback_to_primary`. Every read checks which node served it (`inet_server_port()`), and every
//! scenario first proves that its precondition (a replica really behind) holds, so that a pass means something.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use localcluster::{LocalCluster, NodeHandle};
use tokio_postgres::{Client, SimpleQueryMessage};

/// No single client call may take longer than this: a hang fails the test instead of stalling it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// `[health] interval` of every proxy here.
const HEALTH: Duration = Duration::from_millis(200);
/// The `[health]` table matching [`HEALTH`].
const HEALTH_TOML: &str = "[health]\ninterval = \"200ms\"\n";

/// Awaits `fut`, failing the test if it takes longer than [`CALL_TIMEOUT`].
async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

/// First column of the first row, via the simple protocol.
async fn value(c: &Client, sql: &str) -> Result<String, tokio_postgres::Error> {
    let messages = bounded(sql, c.simple_query(sql)).await?;
    Ok(messages
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row")))
}

/// The port of the node that served a plain read, via the extended or the simple protocol.
async fn read_port(c: &Client, extended: bool) -> Result<u16, tokio_postgres::Error> {
    if extended {
        let row = bounded("extended read", c.query_one("SELECT inet_server_port()", &[])).await?;
        Ok(row.get::<_, i32>(0) as u16)
    } else {
        Ok(value(c, "SELECT inet_server_port()")
            .await?
            .parse()
            .expect("a port number"))
    }
}

/// SQLSTATE and message plus hint of a server error (or the client's text for any other error).
fn error_text(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (
            db.code().code().to_owned(),
            format!("{} (hint: {})", db.message(), db.hint().unwrap_or("")),
        ),
        None => (String::new(), e.to_string()),
    }
}

/// An error as text that includes the server's SQLSTATE, message and hint (tokio-postgres' own `Display`
/// says only "db error").
fn show(e: &tokio_postgres::Error) -> String {
    let (code, text) = error_text(e);
    if code.is_empty() {
        text
    } else {
        format!("{code}: {text}")
    }
}

/// A tokio-postgres connection straight to `node` as the app user (who owns the tables), bypassing pgfleet.
async fn direct_client(node: &NodeHandle) -> Client {
    bounded(
        "direct connection",
        connect(&node.dsn(APP_USER, PASSWORD, APP_DB)),
    )
    .await
}

/// Runs `sql` with psql directly on `node` as the superuser (blocking, so off the async workers).
fn direct(node: &NodeHandle, sql: &str) -> String {
    tokio::task::block_in_place(|| node.psql(APP_DB, sql))
        .unwrap_or_else(|e| panic!("{sql} on {}: {e}", node.name))
}

/// Sets (`Some`) or resets (`None`) `recovery_min_apply_delay` on a running standby and reloads its config.
/// ALTER SYSTEM cannot share psql's implicit transaction, hence two calls.
fn set_apply_delay(node: &NodeHandle, delay: Option<&str>) {
    let stmt = match delay {
        Some(d) => format!("ALTER SYSTEM SET recovery_min_apply_delay = '{d}'"),
        None => "ALTER SYSTEM RESET recovery_min_apply_delay".to_owned(),
    };
    direct(node, &stmt);
    direct(node, "SELECT pg_reload_conf()");
    // The postmaster has re-read the file once a new backend sees the value; give the startup process
    // (which applies WAL) a moment more to handle its own SIGHUP.
    let want = delay.unwrap_or("0");
    let deadline = Instant::now() + Duration::from_secs(5);
    while direct(node, "SHOW recovery_min_apply_delay") != want {
        assert!(
            Instant::now() < deadline,
            "{}: recovery_min_apply_delay did not become {want}",
            node.name
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(300));
}

/// Waits until each of `standbys` has replayed everything the cluster's primary has written.
fn caught_up(cluster: &LocalCluster, standbys: &[&NodeHandle], timeout: Duration) {
    tokio::task::block_in_place(|| LocalCluster::wait_caught_up(&cluster.primary, standbys, timeout))
        .unwrap_or_else(|e| panic!("replicas did not catch up: {e}"));
}

/// Bytes of WAL the primary has written that `replica` has not replayed yet, measured directly.
async fn replay_gap(primary: &Client, replica: &Client) -> f64 {
    let replayed: String = bounded(
        "replay position",
        replica.query_one("SELECT pg_last_wal_replay_lsn()::text", &[]),
    )
    .await
    .expect("replay position")
    .get(0);
    bounded(
        "WAL distance",
        primary.query_one(
            "SELECT pg_wal_lsn_diff(pg_current_wal_lsn(), $1::text::pg_lsn)::float8",
            &[&replayed],
        ),
    )
    .await
    .expect("WAL distance")
    .get(0)
}

/// Commits about 260 kB of WAL on the primary every 100 ms, straight to the node, until stopped: a delayed
/// standby stays behind by several MB for as long as it runs.
struct WalWriter {
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl WalWriter {
    async fn start(primary: &NodeHandle) -> WalWriter {
        let client = direct_client(primary).await;
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let task = tokio::spawn(async move {
            let mut commits = 0u64;
            while !flag.load(Ordering::Relaxed) {
                let fill = client.batch_execute(
                    "INSERT INTO filler (pad) SELECT repeat(md5(g::text), 32) FROM generate_series(1, 250) g",
                );
                match tokio::time::timeout(CALL_TIMEOUT, fill).await {
                    Ok(Ok(())) => commits += 1,
                    Ok(Err(e)) => return Err(format!("filler insert {commits} failed: {}", show(&e))),
                    Err(_) => return Err(format!("filler insert {commits} hung")),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Ok(commits)
        });
        WalWriter { stop, task }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match bounded("WAL writer", self.task).await {
            Ok(Ok(n)) => n,
            Ok(Err(e)) => panic!("WAL writer: {e}"),
            Err(e) => panic!("WAL writer task: {e}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_delayed_replica_is_excluded_by_max_replica_lag_and_included_again_once_caught_up() {
    const LIMIT: f64 = 2.0 * 1024.0 * 1024.0;
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        &format!("[routing]\nload_balance = \"round_robin\"\nmax_replica_lag = \"2MB\"\n\n{HEALTH_TOML}"),
    );
    let (delayed, steady) = (&cluster.replicas[0], &cluster.replicas[1]);
    let primary_direct = direct_client(&cluster.primary).await;
    let delayed_direct = direct_client(delayed).await;
    bounded(
        "create filler",
        primary_direct.batch_execute("CREATE TABLE filler (id bigserial PRIMARY KEY, pad text NOT NULL)"),
    )
    .await
    .expect("create filler");
    caught_up(&cluster, &[delayed, steady], Duration::from_secs(30));

    // This session never writes, so only the lag limit decides where its reads go.
    let reader = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    // (Simple-protocol reads only: round robin counts requests, and an extended read is two of them.)
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(read_port(&reader, false).await.expect("read before the delay"));
    }
    assert_eq!(
        seen,
        HashSet::from([delayed.port, steady.port]),
        "before any delay, round robin uses both replicas"
    );

    set_apply_delay(delayed, Some("3s"));
    let writer = WalWriter::start(&cluster.primary).await;
    // Precondition, measured on the nodes themselves: replica1 is well past the limit.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let gap = replay_gap(&primary_direct, &delayed_direct).await;
        if gap > 2.0 * LIMIT {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "precondition: {} never fell 4 MB behind (gap {gap} bytes); is recovery_min_apply_delay active?",
            delayed.name
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // A couple of health intervals for the monitor to see it, then 1.5 s of reads that must all avoid it.
    tokio::time::sleep(HEALTH * 3).await;
    // Simple reads alternate with a statement prepared once: one request each, so that round robin (which
    // counts requests) would offer replica1 every other read if the lag limit were ignored.
    let stmt = bounded("prepare", reader.prepare("SELECT inet_server_port()"))
        .await
        .expect("prepare");
    let window_end = Instant::now() + Duration::from_millis(1500);
    let mut served = Vec::new();
    while Instant::now() < window_end {
        let read = async {
            if served.len() % 2 == 1 {
                let row = bounded("prepared read", reader.query_one(&stmt, &[])).await?;
                Ok(row.get::<_, i32>(0) as u16)
            } else {
                read_port(&reader, false).await
            }
        };
        let port = read.await.unwrap_or_else(|e: tokio_postgres::Error| {
            panic!(
                "read {} while replica1 lags failed: {}\n--- pgfleet log ---\n{}",
                served.len(),
                show(&e),
                proxy.log_tail(40)
            )
        });
        served.push(port);
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let gap_after = replay_gap(&primary_direct, &delayed_direct).await;
    assert!(
        gap_after > LIMIT,
        "precondition: {} must still be beyond the limit at the end of the window (gap {gap_after} bytes)",
        delayed.name
    );
    let on_delayed = served.iter().filter(|p| **p == delayed.port).count();
    assert_eq!(
        on_delayed,
        0,
        "{on_delayed} of {} reads went to {} while it lagged more than max_replica_lag = 2MB\n--- pgfleet log ---\n{}",
        served.len(),
        delayed.name,
        proxy.log_tail(40)
    );
    assert!(
        served.contains(&steady.port),
        "the replica within the limit ({}) keeps serving reads; served by: {:?}",
        steady.name,
        served.iter().collect::<HashSet<_>>()
    );

    // Lift the delay: replica1 catches up and gets reads again within a few health intervals.
    let commits = writer.finish().await;
    assert!(commits > 10, "the WAL writer committed only {commits} times");
    set_apply_delay(delayed, None);
    caught_up(&cluster, &[delayed], Duration::from_secs(30));
    let caught = Instant::now();
    let deadline = caught + HEALTH * 15;
    let mut back = false;
    let mut reads = 0;
    while Instant::now() < deadline {
        let port = read_port(&reader, false)
            .await
            .unwrap_or_else(|e| panic!("read {reads} after the catch-up failed: {}", show(&e)));
        reads += 1;
        if port == delayed.port {
            back = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(
        back,
        "{} caught up but served none of {reads} reads within {:?}\n--- pgfleet log ---\n{}",
        delayed.name,
        HEALTH * 15,
        proxy.log_tail(40)
    );
    eprintln!(
        "replica1 served reads again {:?} after catching up",
        caught.elapsed()
    );
    // And round robin uses both replicas again.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        seen.insert(read_port(&reader, false).await.expect("read after the catch-up"));
    }
    assert_eq!(seen, HashSet::from([delayed.port, steady.port]));
}

/// Creates the table the read-your-writes tests use, directly on the primary, and waits for both replicas.
async fn create_rw_table(cluster: &LocalCluster) {
    let primary = direct_client(&cluster.primary).await;
    bounded(
        "create rw",
        primary.batch_execute("CREATE TABLE rw (id serial PRIMARY KEY, v text NOT NULL)"),
    )
    .await
    .expect("create rw");
    let replicas: Vec<&NodeHandle> = cluster.replicas.iter().collect();
    caught_up(cluster, &replicas, Duration::from_secs(30));
}

/// `n` rounds of "insert a unique row (autocommit), then read it back at once" in one session, alternating
/// the simple and the extended protocol; returns the rounds whose read did not see the row.
async fn write_then_read(c: &Client, prefix: &str, n: usize) -> Vec<usize> {
    let mut misses = Vec::new();
    for i in 0..n {
        let v = format!("{prefix}-{i}");
        let found: i64 = if i % 2 == 0 {
            let insert = format!("INSERT INTO rw (v) VALUES ('{v}')");
            bounded(&insert, c.simple_query(&insert))
                .await
                .unwrap_or_else(|e| panic!("{insert}: {}", show(&e)));
            value(c, &format!("SELECT count(*) FROM rw WHERE v = '{v}'"))
                .await
                .unwrap_or_else(|e| panic!("read of {v}: {}", show(&e)))
                .parse()
                .expect("a count")
        } else {
            bounded("insert", c.execute("INSERT INTO rw (v) VALUES ($1)", &[&v]))
                .await
                .unwrap_or_else(|e| panic!("insert {v}: {}", show(&e)));
            bounded(
                "read back",
                c.query_one("SELECT count(*) FROM rw WHERE v = $1", &[&v]),
            )
            .await
            .unwrap_or_else(|e| panic!("read of {v}: {}", show(&e)))
            .get(0)
        };
        if found != 1 {
            misses.push(i);
        }
    }
    misses
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_sees_every_own_write_despite_delayed_replicas() {
    let cluster = cluster_async().await;
    // "session", not the default "global": a session that did not write must still read from the replicas.
    let session_proxy = Proxy::start(
        &cluster,
        &format!("[routing]\nload_balance = \"round_robin\"\nconsistency = \"session\"\n\n{HEALTH_TOML}"),
    );
    let off_proxy = Proxy::start(
        &cluster,
        &format!("[routing]\nload_balance = \"round_robin\"\nread_your_writes = \"off\"\n\n{HEALTH_TOML}"),
    );
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    create_rw_table(&cluster).await;
    for replica in &cluster.replicas {
        set_apply_delay(replica, Some("2s"));
    }

    // consistency = "session": 50 writes, each read back at once, zero misses.
    let writer = connect(&session_proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let started = Instant::now();
    let misses = write_then_read(&writer, "session", 50).await;
    assert!(
        misses.is_empty(),
        "read_your_writes = \"session\": {} of 50 reads missed the session's own row (rounds {misses:?})\n\
         --- pgfleet log ---\n{}",
        misses.len(),
        session_proxy.log_tail(40)
    );
    eprintln!("50 write-then-read rounds took {:?}", started.elapsed());

    // A session that did not write still reads from the (delayed) replicas, and sees them behind: proof
    // that the delay was in force during the loop above.
    let other = connect(&session_proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for i in 0..6 {
        let port = read_port(&other, i % 2 == 1)
            .await
            .expect("read of a session that did not write");
        assert!(
            replicas.contains(&port),
            "a session that never wrote reads from replicas, got port {port}"
        );
    }
    let row = bounded(
        "count on a replica",
        other.query_one(
            "SELECT count(*), inet_server_port() FROM rw WHERE v LIKE 'session-%'",
            &[],
        ),
    )
    .await
    .expect("count on a replica");
    let (visible, port): (i64, i32) = (row.get(0), row.get(1));
    assert!(replicas.contains(&(port as u16)), "served by {port}");
    assert!(
        visible < 50,
        "precondition: the replicas should still lack the newest rows (2 s apply delay), but {port} has all 50"
    );

    // The same loop with read_your_writes = "off" misses: the check above would catch a regression.
    let careless = connect(&off_proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let misses = write_then_read(&careless, "off", 20).await;
    assert!(
        !misses.is_empty(),
        "with read_your_writes = \"off\" and replicas 2 s behind, some read should miss its row"
    );
    eprintln!("read_your_writes = \"off\": {} of 20 reads missed", misses.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn read_your_writes_wait_lets_a_delayed_replica_serve_the_next_read() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[routing]\nload_balance = \"round_robin\"\nread_your_writes_wait = \"5s\"\n\n{HEALTH_TOML}"
        ),
    );
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    create_rw_table(&cluster).await;
    for replica in &cluster.replicas {
        set_apply_delay(replica, Some("1s"));
    }
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for i in 0..4 {
        let v = format!("wait-{i}");
        bounded("insert", c.execute("INSERT INTO rw (v) VALUES ($1)", &[&v]))
            .await
            .unwrap_or_else(|e| panic!("insert {v}: {}", show(&e)));
        let started = Instant::now();
        let row = bounded(
            "read after write",
            c.query_one("SELECT inet_server_port(), count(*) FROM rw WHERE v = $1", &[&v]),
        )
        .await
        .unwrap_or_else(|e| panic!("read of {v}: {}", show(&e)));
        let took = started.elapsed();
        let (port, found): (i32, i64) = (row.get(0), row.get(1));
        assert_eq!(
            found, 1,
            "round {i}: the read after the write must see it (served by {port})"
        );
        assert!(
            replicas.contains(&(port as u16)),
            "round {i}: with read_your_writes_wait = 5s and replicas 1 s behind, the read should wait for a \
             replica, but port {port} served it after {took:?}\n--- pgfleet log ---\n{}",
            proxy.log_tail(40)
        );
        // A replica that has the row got it no earlier than 1 s after the commit: the read waited.
        assert!(
            took >= Duration::from_millis(500),
            "precondition: a delayed replica answered after only {took:?}; is the apply delay active?"
        );
        assert!(
            took < Duration::from_secs(5),
            "the read waited {took:?}, more than read_your_writes_wait"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fallback_to_primary_decides_what_reads_do_when_no_replica_is_left() {
    let cluster = cluster_async().await;
    let strict = Proxy::start(
        &cluster,
        &format!("[routing]\nload_balance = \"round_robin\"\nfallback_to_primary = false\n\n{HEALTH_TOML}"),
    );
    let lenient = Proxy::start(&cluster, HEALTH_TOML);
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    {
        let s = connect(&strict.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let l = connect(&lenient.dsn(APP_USER, PASSWORD, APP_DB)).await;
        for i in 0..4 {
            for (name, c) in [("strict", &s), ("lenient", &l)] {
                let port = read_port(c, i % 2 == 1).await.expect("read with replicas up");
                assert!(replicas.contains(&port), "{name}: read served by {port}");
            }
        }
    }

    for replica in &cluster.replicas {
        tokio::task::block_in_place(|| replica.stop_immediate())
            .unwrap_or_else(|e| panic!("stop {}: {e}", replica.name));
    }
    // Sessions opened now: this test is about where reads go, not about sessions that held a connection to
    // a node as it died (fleet_failover.rs covers those). The pools still hold connections to the dead
    // replicas.
    let s = connect(&strict.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let l = connect(&lenient.dsn(APP_USER, PASSWORD, APP_DB)).await;

    // fallback_to_primary = true (the default): reads go on, now on the primary, without a single error.
    for i in 0..20 {
        let port = read_port(&l, i % 2 == 1).await.unwrap_or_else(|e| {
            panic!(
                "lenient read {i} with both replicas stopped failed: {}\n--- pgfleet log ---\n{}",
                show(&e),
                lenient.log_tail(40)
            )
        });
        assert_eq!(
            port, primary,
            "lenient read {i}: served by {port}, not the primary"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }

    // fallback_to_primary = false: once the monitor has seen both replicas down, reads fail and say why.
    let deadline = Instant::now() + HEALTH * 15;
    loop {
        let err = match read_port(&s, false).await {
            Ok(port) => panic!("strict read served by {port} although both replicas are stopped"),
            Err(e) => e,
        };
        let (code, text) = error_text(&err);
        if text.contains("routing.fallback_to_primary") {
            break;
        }
        // Until the monitor sees the replicas down, a read may fail on the dead connection instead.
        assert!(
            Instant::now() < deadline,
            "reads with fallback_to_primary = false never failed with an error naming \
             routing.fallback_to_primary; last error: {code} {text}\n--- pgfleet log ---\n{}",
            strict.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    for i in 0..6 {
        let err = read_port(&s, i % 2 == 1)
            .await
            .expect_err("no replica and no fallback: the read must fail");
        let (code, text) = error_text(&err);
        assert!(
            text.contains("routing.fallback_to_primary"),
            "strict read {i}: {code} {text}"
        );
    }
    // Writes are not reads: they still work on the primary, in the same session.
    let written = value(
        &s,
        "CREATE TABLE still_writable AS SELECT 1 AS x; SELECT inet_server_port()",
    )
    .await
    .expect("a write with fallback_to_primary = false");
    assert_eq!(written, primary.to_string());

    // A replica coming back serves the strict proxy's reads again.
    tokio::task::block_in_place(|| cluster.replicas[0].start()).expect("restart replica1");
    let deadline = Instant::now() + HEALTH * 20;
    loop {
        match read_port(&s, false).await {
            Ok(port) => {
                assert_eq!(port, cluster.replicas[0].port, "only replica1 is up");
                break;
            }
            Err(e) => {
                assert!(
                    Instant::now() < deadline,
                    "replica1 restarted but strict reads still fail: {}",
                    show(&e)
                );
            }
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}
