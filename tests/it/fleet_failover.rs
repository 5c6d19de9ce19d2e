//! Fleet awareness when nodes crash, restart and change roles, through a real pgfleet in front of a real
//! primary and two streaming replicas: reads riding over a replica crash, writes failing fast (and recovering)
//! across a primary crash, promotion with `role = "auto"` nodes (and never two primaries at once), and
//! clients vanishing mid-transaction. Every client call is bounded by a timeout, so a hang fails the test.

use std::collections::HashSet;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use localcluster::{LocalCluster, NodeHandle};
use tokio_postgres::{Client, NoTls, SimpleQueryMessage};

/// No single client call may take longer than this.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);

/// Awaits `fut`, failing the test if it takes longer than [`CALL_TIMEOUT`].
async fn bounded<F: Future>(what: &str, fut: F) -> F::Output {
    match tokio::time::timeout(CALL_TIMEOUT, fut).await {
        Ok(out) => out,
        Err(_) => panic!("{what}: no answer within {CALL_TIMEOUT:?}"),
    }
}

/// SQLSTATE (empty for a non-server error) and message of an error.
fn error_parts(e: &tokio_postgres::Error) -> (String, String) {
    match e.as_db_error() {
        Some(db) => (db.code().code().to_owned(), db.message().to_owned()),
        None => (String::new(), e.to_string()),
    }
}

/// An error as text with the server's SQLSTATE and message (tokio-postgres' `Display` says "db error").
fn show(e: &tokio_postgres::Error) -> String {
    let (code, message) = error_parts(e);
    if code.is_empty() {
        message
    } else {
        format!("{code}: {message}")
    }
}

/// The first few failures of a list, and how many there were in all.
fn summary(failures: &[String]) -> String {
    let mut text = failures.iter().take(10).cloned().collect::<Vec<_>>().join("\n");
    if failures.len() > 10 {
        text.push_str(&format!("\n... and {} more", failures.len() - 10));
    }
    text
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

/// The port of the node that served a plain read, via the simple protocol.
async fn read_port(c: &Client) -> Result<u16, tokio_postgres::Error> {
    Ok(value(c, "SELECT inet_server_port()")
        .await?
        .parse()
        .expect("a port number"))
}

/// Runs a blocking node operation (pg_ctl) off the async workers; panics with its error.
fn node_op(
    what: &str,
    node: &NodeHandle,
    op: impl FnOnce(&NodeHandle) -> Result<(), localcluster::ClusterError>,
) {
    tokio::task::block_in_place(|| op(node)).unwrap_or_else(|e| panic!("{what} {}: {e}", node.name));
}

/// Waits until each of `standbys` has replayed everything `primary` has written.
fn caught_up(primary: &NodeHandle, standbys: &[&NodeHandle]) {
    tokio::task::block_in_place(|| LocalCluster::wait_caught_up(primary, standbys, Duration::from_secs(30)))
        .unwrap_or_else(|e| panic!("replicas did not catch up: {e}"));
}

/// A connection straight to `node`, bypassing pgfleet.
async fn direct_client(node: &NodeHandle, user: &str) -> Client {
    bounded("direct connection", connect(&node.dsn(user, PASSWORD, APP_DB))).await
}

/// Creates `sql`'s tables as the app user directly on the primary and waits for every replica.
async fn setup(cluster: &LocalCluster, sql: &str) {
    let primary = direct_client(&cluster.primary, APP_USER).await;
    bounded("setup", primary.batch_execute(sql))
        .await
        .unwrap_or_else(|e| panic!("setup: {}", show(&e)));
    let replicas: Vec<&NodeHandle> = cluster.replicas.iter().collect();
    caught_up(&cluster.primary, &replicas);
}

/// A client reading in a loop on its own task until stopped, alternating the simple protocol and a
/// prepared statement, and recording every failure instead of stopping at the first.
struct Reader {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicUsize>,
    task: tokio::task::JoinHandle<(Vec<u16>, Vec<String>)>,
}

impl Reader {
    async fn start(dsn: &str) -> Reader {
        let client = connect(dsn).await;
        let stmt = bounded("prepare", client.prepare("SELECT inet_server_port()"))
            .await
            .expect("prepare");
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicUsize::new(0));
        let (flag, count) = (stop.clone(), done.clone());
        let task = tokio::spawn(async move {
            let (mut ports, mut failures) = (Vec::new(), Vec::new());
            let mut i = 0usize;
            while !flag.load(Ordering::Relaxed) {
                let read = async {
                    if i.is_multiple_of(2) {
                        read_port(&client).await
                    } else {
                        Ok(client.query_one(&stmt, &[]).await?.get::<_, i32>(0) as u16)
                    }
                };
                match tokio::time::timeout(CALL_TIMEOUT, read).await {
                    Ok(Ok(port)) => ports.push(port),
                    Ok(Err(e)) => failures.push(format!("read {i}: {}", show(&e))),
                    Err(_) => failures.push(format!("read {i}: no answer within {CALL_TIMEOUT:?}")),
                }
                i += 1;
                count.store(i, Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            (ports, failures)
        });
        Reader { stop, done, task }
    }

    /// Waits until `n` more reads have completed (successfully or not).
    async fn progress(&self, n: usize) {
        let target = self.done.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + CALL_TIMEOUT;
        while self.done.load(Ordering::Relaxed) < target {
            assert!(!self.task.is_finished(), "the reader stopped early");
            assert!(
                Instant::now() < deadline,
                "the reader made no progress for {CALL_TIMEOUT:?}"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Stops the loop; the ports that served its reads and its failures.
    async fn finish(self) -> (Vec<u16>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        bounded("reader", self.task).await.expect("reader task")
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_reads_ride_over_a_replica_crash_and_the_replica_comes_back() {
    const READS: usize = 500;
    const CRASH_AFTER: usize = 150;
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[health]\ninterval = \"250ms\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let (crashed, survivor) = (&cluster.replicas[0], &cluster.replicas[1]);
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();

    let client = connect(&dsn).await;
    let stmt = bounded("prepare", client.prepare("SELECT inet_server_port()"))
        .await
        .expect("prepare");
    let done = Arc::new(AtomicUsize::new(0));
    let count = done.clone();
    // One session, 500 autocommit reads: simple, prepared (named) and unnamed extended in turn.
    let task = tokio::spawn(async move {
        let (mut ports, mut failures) = (Vec::new(), Vec::new());
        for i in 0..READS {
            let read = async {
                match i % 3 {
                    0 => read_port(&client).await,
                    1 => Ok(client.query_one(&stmt, &[]).await?.get::<_, i32>(0) as u16),
                    _ => {
                        let n = i as i32;
                        let row = client
                            .query_one("SELECT inet_server_port(), $1::int", &[&n])
                            .await?;
                        assert_eq!(row.get::<_, i32>(1), n, "read {i} answered another query");
                        Ok(row.get::<_, i32>(0) as u16)
                    }
                }
            };
            match tokio::time::timeout(CALL_TIMEOUT, read).await {
                Ok(Ok(port)) => ports.push(port),
                Ok(Err(e)) => failures.push(format!("read {i}: {}", show(&e))),
                Err(_) => failures.push(format!("read {i}: no answer within {CALL_TIMEOUT:?}")),
            }
            count.store(i + 1, Ordering::Relaxed);
            tokio::time::sleep(Duration::from_millis(4)).await;
        }
        (ports, failures)
    });
    while done.load(Ordering::Relaxed) < CRASH_AFTER {
        assert!(!task.is_finished(), "the read loop ended early");
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    node_op("stop -m immediate", crashed, NodeHandle::stop_immediate);
    let at_crash = done.load(Ordering::Relaxed);
    let (ports, failures) = bounded("the read loop", task).await.expect("read loop task");
    let log_after_loop = proxy.log_tail(40);
    assert!(
        READS - at_crash >= 100,
        "the crash must land mid-loop, but only {} reads followed it",
        READS - at_crash
    );
    assert!(
        ports.iter().all(|p| replicas.contains(p)),
        "every read is served by a replica"
    );
    assert!(
        ports[..CRASH_AFTER].contains(&crashed.port),
        "{} served reads before the crash (round robin)",
        crashed.name
    );
    // A new session after the crash reads without errors too.
    let fresh = connect(&dsn).await;
    for i in 0..20 {
        let port = read_port(&fresh)
            .await
            .unwrap_or_else(|e| panic!("new session, read {i}: {}", show(&e)));
        assert_eq!(port, survivor.port, "only {} is up", survivor.name);
    }

    // The crashed replica comes back and serves reads again within a few health intervals.
    node_op("start", crashed, NodeHandle::start);
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(5);
    let mut reads = 0;
    loop {
        let port = read_port(&fresh)
            .await
            .unwrap_or_else(|e| panic!("read {reads} after the restart: {}", show(&e)));
        reads += 1;
        if port == crashed.port {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} restarted but served none of {reads} reads within 5 s\n--- pgfleet log ---\n{}",
            crashed.name,
            proxy.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    eprintln!(
        "{} served reads again {:?} after its restart",
        crashed.name,
        restarted.elapsed()
    );

    // Checked last so that the rest of the scenario is exercised even when it fails: the loop's session
    // must not have seen a single error.
    assert!(
        failures.is_empty(),
        "{} of {READS} reads failed across the crash of {} (stopped after read {at_crash}):\n{}\n\
         --- pgfleet log ---\n{log_after_loop}",
        failures.len(),
        crashed.name,
        summary(&failures),
    );
}

/// A failed write through pgfleet with the primary down: class 08 (or 57P01), naming the primary, within
/// pool.connect_timeout (2 s) plus slack.
async fn expect_write_refused(c: &Client, who: &str) {
    let started = Instant::now();
    let err = bounded(
        "write with the primary down",
        c.execute("INSERT INTO t (at) VALUES ('down')", &[]),
    )
    .await
    .expect_err("no primary to write to");
    let took = started.elapsed();
    let (code, message) = error_parts(&err);
    assert!(
        code.starts_with("08") || code == "57P01",
        "{who}: SQLSTATE class 08 or 57P01 expected, got {code:?}: {message}"
    );
    assert!(
        message.contains("primary"),
        "{who}: the error names the primary: {message}"
    );
    assert!(
        took < Duration::from_secs(3),
        "{who}: the write took {took:?}; pool.connect_timeout is 2s"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_crash_fails_writes_fast_keeps_reads_going_and_a_restart_brings_writes_back() {
    let cluster = cluster_async().await;
    // consistency = "session": under the default "global", a read right after another session's write may
    // rightly go to the primary while the replicas replay it, and this test is about where reads go when the
    // primary fails.
    let proxy = Proxy::start(
        &cluster,
        "[pool]\nconnect_timeout = \"2s\"\n\n[health]\ninterval = \"250ms\"\n\n\
         [routing]\nload_balance = \"round_robin\"\nconsistency = \"session\"\n",
    );
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let primary = &cluster.primary;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    setup(
        &cluster,
        "CREATE TABLE t (id serial PRIMARY KEY, at text NOT NULL); INSERT INTO t (at) VALUES ('before')",
    )
    .await;
    // A session that wrote before the crash (so it holds a connection to the primary).
    let writer = connect(&dsn).await;
    let row = bounded(
        "write",
        writer.query_one(
            "INSERT INTO t (at) VALUES ('up') RETURNING inet_server_port()",
            &[],
        ),
    )
    .await
    .expect("write with the primary up");
    assert_eq!(row.get::<_, i32>(0) as u16, primary.port);
    caught_up(primary, &cluster.replicas.iter().collect::<Vec<_>>());
    let reader = Reader::start(&dsn).await;
    reader.progress(10).await;
    // What the pre-crash writer session did wrong; reported at the end, after the rest of the scenario.
    let mut writer_problems: Vec<String> = Vec::new();

    node_op("stop -m immediate", primary, NodeHandle::stop_immediate);
    let log_at_crash = || proxy.log_tail(20);
    // The pre-crash session: its write fails fast, and it goes on reading from the replicas.
    expect_write_refused(&writer, "pre-crash session").await;
    for i in 0..3 {
        match read_port(&writer).await {
            Ok(port) => assert!(replicas.contains(&port), "read served by {port}"),
            Err(e) => {
                writer_problems.push(format!(
                    "after its write failed, the session that wrote before the crash could not read \
                     (read {i}): {}\n--- pgfleet log ---\n{}",
                    show(&e),
                    log_at_crash()
                ));
                break;
            }
        }
    }
    // A session opened after the crash logs in without the primary, reads, and its writes fail fast, every
    // time, while it goes on reading.
    let started = Instant::now();
    let fresh = bounded("login without a primary", connect(&dsn)).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "login without a primary took {:?}",
        started.elapsed()
    );
    for attempt in 0..3 {
        expect_write_refused(&fresh, &format!("post-crash session, write {attempt}")).await;
        for _ in 0..3 {
            let port = read_port(&fresh)
                .await
                .unwrap_or_else(|e| panic!("post-crash session, read after write {attempt}: {}", show(&e)));
            assert!(replicas.contains(&port), "read served by {port}");
        }
        assert_eq!(
            value(&fresh, "SELECT count(*) FROM t")
                .await
                .map_err(|e| show(&e)),
            Ok("2".to_owned())
        );
    }
    reader.progress(20).await;

    // Restart: writes work again within a few seconds.
    node_op("start", primary, NodeHandle::start);
    let restarted = Instant::now();
    let deadline = restarted + Duration::from_secs(8);
    loop {
        match bounded(
            "write after the restart",
            fresh.query_one(
                "INSERT INTO t (at) VALUES ('back') RETURNING inet_server_port()",
                &[],
            ),
        )
        .await
        {
            Ok(row) => {
                assert_eq!(row.get::<_, i32>(0) as u16, primary.port);
                break;
            }
            Err(e) => assert!(
                Instant::now() < deadline,
                "writes still fail 8 s after the primary restarted: {}\n--- pgfleet log ---\n{}",
                show(&e),
                proxy.log_tail(40)
            ),
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    eprintln!(
        "writes came back {:?} after the primary restarted",
        restarted.elapsed()
    );
    let again = connect(&dsn).await;
    bounded(
        "new session write",
        again.execute("INSERT INTO t (at) VALUES ('new')", &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("a new session's write after the restart: {}", show(&e)));
    if writer_problems.is_empty() {
        let written = bounded(
            "pre-crash session write",
            writer.execute("INSERT INTO t (at) VALUES ('old')", &[]),
        )
        .await;
        if let Err(e) = written {
            writer_problems.push(format!(
                "the session that wrote before the crash cannot write after the restart: {}",
                show(&e)
            ));
        }
    }

    reader.progress(10).await;
    let (ports, failures) = reader.finish().await;
    assert!(
        failures.is_empty(),
        "a reading session saw {} errors across the primary's crash and restart:\n{}\n--- pgfleet log ---\n{}",
        failures.len(),
        summary(&failures),
        proxy.log_tail(40)
    );
    assert!(
        ports.iter().all(|p| replicas.contains(p)),
        "reads stay on replicas"
    );
    assert!(writer_problems.is_empty(), "{}", writer_problems.join("\n"));
}

/// `Proxy::config_for` with every node's role set to "auto", on a free port.
fn auto_config(cluster: &LocalCluster, extra_toml: &str) -> String {
    let text = Proxy::config_for(cluster, free_port(), extra_toml)
        .replace("role = \"primary\"", "role = \"auto\"")
        .replace("role = \"replica\"", "role = \"auto\"");
    assert_eq!(text.matches("role = \"auto\"").count(), 3, "{text}");
    text
}

const AUTO_TOML: &str = "[pool]\nconnect_timeout = \"2s\"\n\n[health]\ninterval = \"500ms\"\n";

/// One write through pgfleet; the port of the node that took it.
async fn write(c: &Client, label: &str) -> Result<u16, tokio_postgres::Error> {
    let row = bounded(
        "write",
        c.query_one(
            "INSERT INTO w (label) VALUES ($1) RETURNING inet_server_port()",
            &[&label],
        ),
    )
    .await?;
    Ok(row.get::<_, i32>(0) as u16)
}

/// Retries [`write`] until it succeeds or `within` has passed since `since`; the port and the time taken.
async fn write_eventually(c: &Client, label: &str, since: Instant, within: Duration, proxy: &Proxy) -> u16 {
    loop {
        match write(c, label).await {
            Ok(port) => {
                eprintln!(
                    "{label}: a write succeeded {:?} after the change",
                    since.elapsed()
                );
                return port;
            }
            Err(e) => assert!(
                since.elapsed() < within,
                "{label}: writes still fail after {within:?}: {}\n--- pgfleet log ---\n{}",
                show(&e),
                proxy.log_tail(40)
            ),
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auto_roles_writes_follow_a_promoted_replica() {
    let cluster = cluster_async().await;
    setup(
        &cluster,
        "CREATE TABLE w (id serial PRIMARY KEY, label text NOT NULL)",
    )
    .await;
    let proxy = Proxy::start_with_config(auto_config(&cluster, AUTO_TOML));
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let (old, promoted) = (&cluster.primary, &cluster.replicas[0]);
    // A session that wrote before the failover (it holds a connection to the old primary).
    let before = connect(&dsn).await;
    // The first health checks tell pgfleet which node is the primary.
    let port = write_eventually(&before, "initial", Instant::now(), Duration::from_secs(5), &proxy).await;
    assert_eq!(port, old.port, "the node out of recovery takes the writes");
    caught_up(old, &cluster.replicas.iter().collect::<Vec<_>>());

    node_op("stop -m immediate", old, NodeHandle::stop_immediate);
    // No node out of recovery: writes fail (they do not hang), reads still work.
    let during = connect(&dsn).await;
    let err = write(&during, "orphan").await.expect_err("no primary at all");
    eprintln!("write with no primary: {}", show(&err));
    read_port(&during)
        .await
        .unwrap_or_else(|e| panic!("a read with no primary: {}", show(&e)));

    node_op("promote", promoted, NodeHandle::promote);
    let since = Instant::now();
    // Two health intervals (1 s) in principle; allow 5 s on a loaded machine.
    let port = write_eventually(&during, "after promotion", since, Duration::from_secs(5), &proxy).await;
    assert_eq!(
        port, promoted.port,
        "writes go to the promoted {} (port {}), got port {port}",
        promoted.name, promoted.port
    );
    // And keep going there, from that session and a new one; replica2 (still following the dead primary)
    // never gets a write.
    let after = connect(&dsn).await;
    for i in 0..10 {
        for (who, client) in [
            ("session opened during the outage", &during),
            ("new session", &after),
        ] {
            let port = write(client, "later")
                .await
                .unwrap_or_else(|e| panic!("{who}: write {i} after the promotion: {}", show(&e)));
            assert_eq!(port, promoted.port, "{who}: write {i} went to port {port}");
        }
    }
    read_port(&after)
        .await
        .unwrap_or_else(|e| panic!("a read after the promotion: {}", show(&e)));

    // Last, the session from before the failover: its writes now go to the promoted node too.
    let outcome = write(&before, "old session").await;
    assert_eq!(
        outcome.as_ref().map_err(show).copied(),
        Ok(promoted.port),
        "the session that wrote before the failover, first write after the promotion\n--- pgfleet log ---\n{}",
        proxy.log_tail(20)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_auto_roles_two_primaries_get_no_writes_until_one_is_gone() {
    let cluster = cluster_async().await;
    setup(
        &cluster,
        "CREATE TABLE w (id serial PRIMARY KEY, label text NOT NULL)",
    )
    .await;
    let proxy = Proxy::start_with_config(auto_config(&cluster, AUTO_TOML));
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let (old, promoted) = (&cluster.primary, &cluster.replicas[0]);
    let c = connect(&dsn).await;
    let port = write_eventually(&c, "initial", Instant::now(), Duration::from_secs(5), &proxy).await;
    assert_eq!(port, old.port);

    // Split brain: replica1 is promoted while the old primary still runs.
    node_op("promote", promoted, NodeHandle::promote);
    let since = Instant::now();
    let is_refusal = |e: &tokio_postgres::Error| {
        let (code, message) = error_parts(e);
        code == "55000" && message.contains("claim to be primary")
    };
    // Until the monitor has seen the promotion, writes may still reach the old primary; never the new one.
    loop {
        match write(&c, "split").await {
            Ok(port) => assert_eq!(
                port, old.port,
                "a write reached the promoted replica while the old primary still runs"
            ),
            Err(e) if is_refusal(&e) => break,
            Err(e) => panic!("unexpected error during the split: {}", show(&e)),
        }
        assert!(
            since.elapsed() < Duration::from_secs(5),
            "5 s after a second node left recovery, writes are still accepted\n--- pgfleet log ---\n{}",
            proxy.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!("writes refused {:?} after the promotion", since.elapsed());
    // Refused consistently, over several health intervals, in old and new sessions alike.
    let fresh = connect(&dsn).await;
    for i in 0..8 {
        for (who, client) in [("old session", &c), ("new session", &fresh)] {
            match write(client, "split").await {
                Ok(port) => panic!("{who}: write {i} accepted by port {port} while two nodes claim primary"),
                Err(e) => assert!(is_refusal(&e), "{who}: write {i}: {}", show(&e)),
            }
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }

    // The old primary goes away: the promoted node takes the writes.
    node_op("stop -m immediate", old, NodeHandle::stop_immediate);
    let since = Instant::now();
    let port = write_eventually(
        &c,
        "after the old primary stopped",
        since,
        Duration::from_secs(5),
        &proxy,
    )
    .await;
    assert_eq!(port, promoted.port);
    assert_eq!(
        write(&fresh, "new session").await.map_err(|e| show(&e)),
        Ok(promoted.port)
    );
}

/// Connects with tokio-postgres, driving the connection on a task the caller holds: aborting it closes the
/// socket abruptly, with no Terminate message.
async fn abortable_client(dsn: &str) -> (Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = bounded("connect", tokio_postgres::connect(dsn, NoTls))
        .await
        .unwrap_or_else(|e| panic!("connect: {}", show(&e)));
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

/// Backends of the app user inside a transaction (`idle in transaction`, aborted or not) on `node`.
async fn open_transactions(node: &NodeHandle) -> i64 {
    let admin = direct_client(node, "postgres").await;
    bounded(
        "pg_stat_activity",
        admin.query_one(
            "SELECT count(*) FROM pg_stat_activity WHERE usename = $1 AND state LIKE 'idle in transaction%'",
            &[&APP_USER],
        ),
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

/// Tries to lock row 1 of `locks` directly on the primary without waiting; the error when it is held.
async fn lock_nowait(primary: &NodeHandle) -> Result<(), String> {
    let admin = direct_client(primary, "postgres").await;
    bounded(
        "FOR UPDATE NOWAIT",
        admin.simple_query("SELECT v FROM locks WHERE id = 1 FOR UPDATE NOWAIT"),
    )
    .await
    .map(drop)
    .map_err(|e| show(&e))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_vanishing_mid_transaction_leaves_no_transaction_or_lock_behind() {
    let cluster = cluster_async().await;
    setup(
        &cluster,
        "CREATE TABLE locks (id int PRIMARY KEY, v text NOT NULL); INSERT INTO locks VALUES (1, 'original')",
    )
    .await;
    let proxy = Proxy::start(&cluster, "[health]\ninterval = \"250ms\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);

    // Client A: a write transaction holding a row lock (and an uncommitted update) on the primary.
    let (a, a_conn) = abortable_client(&dsn).await;
    bounded("BEGIN", a.batch_execute("BEGIN")).await.expect("BEGIN");
    let row = bounded(
        "FOR UPDATE",
        a.query_one(
            "SELECT v, inet_server_port() FROM locks WHERE id = 1 FOR UPDATE",
            &[],
        ),
    )
    .await
    .expect("SELECT ... FOR UPDATE");
    assert_eq!(row.get::<_, &str>(0), "original");
    assert_eq!(row.get::<_, i32>(1) as u16, cluster.primary.port);
    bounded(
        "UPDATE",
        a.execute("UPDATE locks SET v = 'uncommitted' WHERE id = 1", &[]),
    )
    .await
    .expect("UPDATE");
    // Client B: a read-only transaction, wherever pgfleet runs it.
    let (b, b_conn) = abortable_client(&dsn).await;
    bounded("BEGIN READ ONLY", b.batch_execute("BEGIN READ ONLY"))
        .await
        .expect("BEGIN READ ONLY");
    let b_port = read_port(&b).await.expect("read in B's transaction");
    let b_node = cluster
        .nodes()
        .find(|n| n.port == b_port)
        .unwrap_or_else(|| panic!("no node on port {b_port}"));

    // Preconditions, seen on the nodes themselves: the transactions are open and the row is locked.
    assert!(
        open_transactions(&cluster.primary).await >= 1,
        "A's transaction is open on the primary"
    );
    assert!(
        open_transactions(b_node).await >= 1,
        "B's transaction is open on {}",
        b_node.name
    );
    let held = lock_nowait(&cluster.primary)
        .await
        .expect_err("A holds the row lock");
    assert!(
        held.starts_with("55P03"),
        "lock_not_available expected, got {held}"
    );

    // Both clients vanish: the tasks driving their sockets are dropped, no Terminate is sent.
    a_conn.abort();
    b_conn.abort();
    let _ = a_conn.await;
    let _ = b_conn.await;
    drop((a, b));
    let vanished = Instant::now();
    let deadline = vanished + Duration::from_secs(2);
    loop {
        let mut open = Vec::new();
        for node in cluster.nodes() {
            let n = open_transactions(node).await;
            if n > 0 {
                open.push(format!("{}: {n}", node.name));
            }
        }
        let lock = lock_nowait(&cluster.primary).await;
        if open.is_empty() && lock.is_ok() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "2 s after the clients vanished: open transactions {open:?}, row lock: {lock:?}\n\
             --- pgfleet log ---\n{}",
            proxy.log_tail(40)
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    eprintln!(
        "transactions and locks gone {:?} after the clients vanished",
        vanished.elapsed()
    );
    // A's update was rolled back, not committed.
    let admin = direct_client(&cluster.primary, "postgres").await;
    assert_eq!(
        value(&admin, "SELECT v FROM locks WHERE id = 1")
            .await
            .map_err(|e| show(&e)),
        Ok("original".to_owned())
    );
    // And pgfleet itself still serves others.
    let other = try_connect(&dsn)
        .await
        .unwrap_or_else(|e| panic!("connect: {}", show(&e)));
    bounded(
        "update",
        other.execute("UPDATE locks SET v = 'after' WHERE id = 1", &[]),
    )
    .await
    .unwrap_or_else(|e| panic!("the row can be updated through pgfleet: {}", show(&e)));
}
