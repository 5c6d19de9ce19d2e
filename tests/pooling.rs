//! Backend pools through a real pgfleet: a pooled connection handed to the next client carries nothing of the
//! previous one (settings, prepared statements, open transactions and their locks, temp tables, session
//! advisory locks), idle connections are closed after pool.idle_timeout, and pool.max_size caps what a
//! node sees while clients over the cap get a timeout naming it.

mod support;

use std::time::{Duration, Instant};

use support::cluster::{APP_DB, APP_USER, NodeHandle, PASSWORD, cluster_async};
use support::proxy::{Proxy, connect, try_connect};
use tokio_postgres::SimpleQueryMessage;

/// Connections pgfleet holds to `node` for clients: the app role's client backends, minus pgfleet's own
/// control connections (application_name pgfleet-catalog, pgfleet-health). Tests connect directly only as the superuser, so they are not counted.
fn app_backends(node: &NodeHandle) -> usize {
    node.psql(
        "postgres",
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' \
         AND coalesce(application_name, '') NOT LIKE 'pgfleet-%'",
    )
    .expect("count backends")
    .parse()
    .expect("a number")
}

/// First value of the first row of a simple query (simple protocol: no prepared statement of its own).
async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

fn primary_dsn(proxy: &Proxy) -> String {
    format!(
        "{} options='-c pgfleet.route=primary'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    )
}

/// A superuser connection straight to a node, bypassing pgfleet.
async fn direct(node: &NodeHandle) -> tokio_postgres::Client {
    connect(&node.dsn("postgres", PASSWORD, APP_DB)).await
}

/// Waits up to `timeout` for `check` to hold, polling every 50 ms.
async fn eventually(timeout: Duration, mut check: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if check() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Drops a client and gives pgfleet a moment to take the Terminate.
async fn leave(c: tokio_postgres::Client) {
    drop(c);
    tokio::time::sleep(Duration::from_millis(100)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_client_gets_the_same_backend_without_the_previous_session_state() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nmode = \"session\"\nmax_size = 1\n");
    let dsn = primary_dsn(&proxy);

    // Client A leaves settings and a protocol-level prepared statement on the primary backend.
    let a = connect(&dsn).await;
    let pid_a = one(&a, "SELECT pg_backend_pid()").await;
    a.batch_execute("SET work_mem = '77MB'; SET search_path = pg_catalog, public")
        .await
        .expect("set");
    assert_eq!(one(&a, "SELECT current_setting('work_mem')").await, "77MB");
    let stmt = a.prepare("SELECT $1::int + 100").await.expect("prepare");
    assert_eq!(
        a.query_one(&stmt, &[&1i32])
            .await
            .expect("execute")
            .get::<_, i32>(0),
        101
    );
    let prepared: i64 = one(&a, "SELECT count(*) FROM pg_prepared_statements")
        .await
        .parse()
        .expect("count");
    assert!(
        prepared >= 1,
        "A's statement exists on the backend while A is connected"
    );
    assert_eq!(
        one(&a, "SELECT pg_backend_pid()").await,
        pid_a,
        "one backend for the whole session"
    );
    leave(a).await;

    // Client B: same backend (max_size = 1 and the connection was reset, not closed), none of A's state.
    let b = connect(&dsn).await;
    assert_eq!(
        one(&b, "SELECT pg_backend_pid()").await,
        pid_a,
        "B reuses A's pooled backend"
    );
    assert_eq!(
        one(&b, "SELECT current_setting('work_mem')").await,
        "4MB",
        "A's SET is not inherited"
    );
    assert_eq!(one(&b, "SHOW search_path").await, "\"$user\", public");
    assert_eq!(
        one(&b, "SELECT count(*) FROM pg_prepared_statements").await,
        "0",
        "A's statement is gone"
    );
    // B may prepare under the same name tokio-postgres picks again.
    let stmt = b.prepare("SELECT $1::int * 2").await.expect("prepare in B");
    assert_eq!(
        b.query_one(&stmt, &[&21i32])
            .await
            .expect("execute")
            .get::<_, i32>(0),
        42
    );
    // An aborted transaction left by B is rolled back for C.
    b.batch_execute("BEGIN").await.expect("begin");
    let _ = b.simple_query("SELECT 1/0").await.expect_err("division by zero");
    leave(b).await;

    // With the default idle_timeout the backend stays pooled while nobody uses it.
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        app_backends(&cluster.primary),
        1,
        "the idle connection is kept in the pool"
    );
    let c = connect(&dsn).await;
    assert_eq!(one(&c, "SELECT pg_backend_pid()").await, pid_a);
    assert_eq!(one(&c, "SELECT 'not aborted'").await, "not aborted");
    assert_eq!(one(&c, "SELECT count(*) FROM pg_prepared_statements").await, "0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_backends_are_reset_too() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nmode = \"session\"\nmax_size = 1\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let replicas: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();

    let a = connect(&dsn).await;
    a.batch_execute("SET work_mem = '77MB'").await.expect("set");
    let stmt = a
        .prepare("SELECT inet_server_port(), current_setting('work_mem')")
        .await
        .expect("prepare");
    for _ in 0..4 {
        let row = a.query_one(&stmt, &[]).await.expect("execute");
        assert!(
            replicas.contains(&row.get::<_, i32>(0).to_string()),
            "reads on replicas"
        );
        assert_eq!(row.get::<_, String>(1), "77MB");
    }
    leave(a).await;

    let b = connect(&dsn).await;
    for _ in 0..4 {
        let port = one(&b, "SELECT inet_server_port()").await;
        assert!(replicas.contains(&port));
        assert_eq!(
            one(&b, "SELECT current_setting('work_mem')").await,
            "4MB",
            "on replica {port}"
        );
        assert_eq!(
            one(&b, "SELECT count(*) FROM pg_prepared_statements").await,
            "0",
            "on replica {port}"
        );
    }
}

/// Connects to the proxy, returning the client and the task driving its connection (abort it to drop the
/// socket without a Terminate message).
async fn connect_with_handle(dsn: &str) -> (tokio_postgres::Client, tokio::task::JoinHandle<()>) {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(async move {
        let _ = connection.await;
    });
    (client, task)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_transactions_are_rolled_back_when_the_client_leaves() {
    let cluster = cluster_async().await;
    let admin = direct(&cluster.primary).await;
    admin
        .batch_execute(
            "CREATE TABLE locks_t (id int PRIMARY KEY, v text); INSERT INTO locks_t VALUES (100, 'held');
             ALTER TABLE locks_t OWNER TO app",
        )
        .await
        .expect("setup");
    let proxy = Proxy::start(&cluster, "[pool]\nmax_size = 1\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);

    // Once leaving politely (Terminate), once by dropping the socket.
    for (round, abrupt) in [(1, false), (2, true)] {
        let (a, task) = connect_with_handle(&dsn).await;
        a.batch_execute("BEGIN").await.expect("begin");
        a.batch_execute(&format!("INSERT INTO locks_t VALUES ({round}, 'uncommitted')"))
            .await
            .expect("insert");
        let locked = a
            .simple_query("SELECT v FROM locks_t WHERE id = 100 FOR UPDATE")
            .await
            .expect("lock");
        assert!(
            locked.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))),
            "the row is locked by A"
        );
        // While A is connected the row really is locked.
        admin.batch_execute("BEGIN").await.expect("begin");
        let err = admin
            .simple_query("SELECT v FROM locks_t WHERE id = 100 FOR UPDATE NOWAIT")
            .await
            .expect_err("the row is locked while A holds it");
        assert_eq!(err.as_db_error().expect("db error").code().code(), "55P03");
        admin.batch_execute("ROLLBACK").await.expect("rollback");

        if abrupt {
            task.abort();
            drop(a);
        } else {
            drop(a);
        }
        let left_at = Instant::now();
        // The lock is released within 2 s: a direct connection can take it with NOWAIT.
        let mut freed = false;
        while left_at.elapsed() < Duration::from_secs(2) {
            admin.batch_execute("BEGIN").await.expect("begin");
            let r = admin
                .simple_query("SELECT v FROM locks_t WHERE id = 100 FOR UPDATE NOWAIT")
                .await;
            admin.batch_execute("ROLLBACK").await.expect("rollback");
            if r.is_ok() {
                freed = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        assert!(
            freed,
            "round {round} (abrupt: {abrupt}): the row lock outlived the client by 2 s"
        );
        let n: i64 = admin
            .query_one("SELECT count(*) FROM locks_t WHERE id = $1", &[&round])
            .await
            .expect("count")
            .get(0);
        assert_eq!(n, 0, "round {round}: the uncommitted insert was rolled back");

        // The next client through the single-slot pool starts idle and clean.
        let b = connect(&dsn).await;
        b.batch_execute(&format!(
            "BEGIN; INSERT INTO locks_t VALUES ({}, 'b'); COMMIT",
            round + 10
        ))
        .await
        .expect("B writes in its own transaction");
        assert_eq!(
            one(
                &b,
                "/* pgfleet:primary */ SELECT count(*) FROM locks_t WHERE v = 'uncommitted'"
            )
            .await,
            "0"
        );
        leave(b).await;
    }
    let n: i64 = admin
        .query_one("SELECT count(*) FROM locks_t", &[])
        .await
        .expect("count")
        .get(0);
    assert_eq!(n, 3, "100, 11 and 12");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temp_tables_and_session_locks_do_not_leak_to_the_next_client() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nmax_size = 1\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = direct(&cluster.primary).await;
    let temp_count = "SELECT count(*) FROM pg_class WHERE relname = 'leak_tmp' AND relpersistence = 't'";

    let a = connect(&dsn).await;
    a.batch_execute("CREATE TEMP TABLE leak_tmp (x int); INSERT INTO leak_tmp VALUES (1)")
        .await
        .expect("temp");
    assert_eq!(
        one(&a, "SELECT pg_advisory_lock(4242)::text || 'locked'").await,
        "locked"
    );
    assert_eq!(one(&a, "SELECT count(*) FROM leak_tmp").await, "1");
    assert_eq!(
        one(&admin, temp_count).await,
        "1",
        "A's temp table exists while A is connected"
    );
    assert_eq!(
        one(&admin, "SELECT pg_try_advisory_lock(4242)").await,
        "f",
        "A holds the lock"
    );
    leave(a).await;

    // The temp table and the lock go away with A.
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        let temp = one(&admin, temp_count).await;
        if temp == "0" {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's temp table still exists 2 s after A left"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(2);
    loop {
        if one(&admin, "SELECT pg_try_advisory_lock(4242)").await == "t" {
            admin
                .batch_execute("SELECT pg_advisory_unlock(4242)")
                .await
                .expect("unlock");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "A's session advisory lock outlived A by 2 s"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // B, on the single-slot pool, sees no temp table and can create its own of the same name.
    let b = connect(&dsn).await;
    let err = b
        .simple_query("SELECT * FROM leak_tmp")
        .await
        .expect_err("no leak_tmp for B");
    assert_eq!(err.as_db_error().expect("db error").code().code(), "42P01");
    b.batch_execute("CREATE TEMP TABLE leak_tmp (y text)")
        .await
        .expect("B's own temp table");
    assert_eq!(
        one(&b, "SELECT pg_try_advisory_lock(4242)").await,
        "t",
        "B can take the lock A held"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_backends_are_closed_after_idle_timeout() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nmode = \"session\"\nidle_timeout = \"1s\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let mut clients = Vec::new();
    for i in 0..3 {
        let c = connect(&dsn).await;
        c.batch_execute(&format!(
            "CREATE TABLE IF NOT EXISTS idle_t{i} (x int); INSERT INTO idle_t{i} VALUES ({i})"
        ))
        .await
        .expect("write");
        for _ in 0..2 {
            one(&c, "SELECT 1").await;
        }
        clients.push(c);
    }
    assert!(
        app_backends(&cluster.primary) >= 3,
        "each client holds a primary connection"
    );
    let replica_total: usize = cluster.replicas.iter().map(app_backends).sum();
    assert!(
        replica_total >= 2,
        "reads opened replica connections: {replica_total}"
    );

    for c in clients {
        drop(c);
    }
    let left = Instant::now();
    let all_closed = eventually(Duration::from_secs(6), || {
        cluster.nodes().all(|n| app_backends(n) == 0)
    })
    .await;
    let counts: Vec<usize> = cluster.nodes().map(app_backends).collect();
    assert!(
        all_closed,
        "idle connections still open {:?} after the clients left: {counts:?}",
        left.elapsed()
    );

    // The pool opens new connections on demand afterwards.
    let c = connect(&dsn).await;
    assert_eq!(one(&c, "SELECT 'reconnected'").await, "reconnected");
    c.batch_execute("INSERT INTO idle_t0 VALUES (9)")
        .await
        .expect("write after reap");
}

/// Connects and opens a write transaction on the primary; the error and how long the failing step took.
async fn open_write_tx(dsn: &str) -> Result<tokio_postgres::Client, (tokio_postgres::Error, Duration)> {
    let started = Instant::now();
    let c = try_connect(dsn).await.map_err(|e| (e, started.elapsed()))?;
    let started = Instant::now();
    c.batch_execute("BEGIN; INSERT INTO cap_t VALUES (1)")
        .await
        .map_err(|e| (e, started.elapsed()))?;
    Ok(c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_size_caps_backends_and_late_clients_time_out() {
    let cluster = cluster_async().await;
    direct(&cluster.primary)
        .await
        .batch_execute("CREATE TABLE cap_t (x int); ALTER TABLE cap_t OWNER TO app")
        .await
        .expect("setup");
    let proxy = Proxy::start(&cluster, "[pool]\nmax_size = 2\nconnect_timeout = \"1s\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);

    let c1 = open_write_tx(&dsn)
        .await
        .unwrap_or_else(|(e, _)| panic!("first client: {e}"));
    let c2 = open_write_tx(&dsn)
        .await
        .unwrap_or_else(|(e, _)| panic!("second client: {e}"));
    assert_eq!(app_backends(&cluster.primary), 2);

    // Three more clients, at once: each is refused, after waiting about connect_timeout, naming it.
    let attempts = futures_util::future::join_all((0..3).map(|_| open_write_tx(&dsn))).await;
    for (i, attempt) in attempts.into_iter().enumerate() {
        let (err, took) = match attempt {
            Ok(_) => panic!(
                "client {} got a third primary connection with max_size = 2",
                i + 3
            ),
            Err(x) => x,
        };
        let text = match err.as_db_error() {
            Some(db) => {
                assert!(db.code().code().starts_with("08"), "client {}: {db}", i + 3);
                db.message().to_owned()
            }
            None => err.to_string(),
        };
        assert!(
            text.contains("pool.connect_timeout") || text.contains("timed out"),
            "client {} gets an error naming the timeout: {text}",
            i + 3
        );
        assert!(
            took >= Duration::from_millis(900),
            "client {} waited for a slot ({took:?})",
            i + 3
        );
        assert!(
            took < Duration::from_millis(2500),
            "client {} refused within ~1-2 s, took {took:?}",
            i + 3
        );
    }
    assert!(
        app_backends(&cluster.primary) <= 2,
        "never more than max_size connections to the primary"
    );

    // The first two are unaffected.
    for c in [&c1, &c2] {
        c.batch_execute("INSERT INTO cap_t VALUES (2)")
            .await
            .expect("still working");
        c.batch_execute("COMMIT").await.expect("commit");
    }
    let n = one(&c1, "/* pgfleet:primary */ SELECT count(*) FROM cap_t").await;
    assert_eq!(
        n, "4",
        "both transactions committed, nothing from the refused clients"
    );

    // A freed slot is usable by the next client at once.
    leave(c1).await;
    let c6 = open_write_tx(&dsn)
        .await
        .unwrap_or_else(|(e, _)| panic!("client after a slot freed up: {e}"));
    c6.batch_execute("COMMIT").await.expect("commit");
    assert!(app_backends(&cluster.primary) <= 2);
    drop(c2);
}
