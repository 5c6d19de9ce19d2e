//! Backend pools through a real pgfleet: a pooled connection handed to the next client carries nothing of the
//! previous one (settings, prepared statements, open transactions and their locks, temp tables, session
//! advisory locks), idle connections are closed after pool.idle_timeout (and, past a max_size lowered by a
//! reload, at once), and pool.max_size caps what a node sees: a login over the cap waits
//! pool.checkout_timeout and gets 53300 naming the pool while connected clients go on, a read skips a full
//! replica's pool, a waiting client gets the connection once it is released, a cancel ends a request that
//! waits for a connection or whose connection pgfleet is readying (57014, and the request never runs; inside
//! a transaction the node gets the cancel right behind the request and aborts the transaction itself), and
//! pools for databases that do not exist are not kept.

use std::time::{Duration, Instant};

use crate::support::admin::{ADMIN_TOML, admin_client, node_row, pool_row};
use crate::support::cluster::{APP_DB, APP_USER, NodeHandle, PASSWORD, cluster_async, superuser_client};
use crate::support::proxy::{Proxy, Row, connect, show, text, try_connect};
use crate::support::{one, wait_until};
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

fn primary_dsn(proxy: &Proxy) -> String {
    format!(
        "{} options='-c pgfleet.route=primary'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    )
}

/// Drops a client and waits until pgfleet has ended its session, and so given its backend back: SHOW CLIENTS
/// lists one app session fewer. The proxy needs [`ADMIN_TOML`] in its config.
async fn leave(c: tokio_postgres::Client, proxy: &Proxy) {
    let admin = admin_client(proxy).await;
    let app_sessions = async || {
        show(&admin, "SHOW CLIENTS")
            .await
            .iter()
            .filter(|r| text(r, "user") == APP_USER)
            .count()
    };
    let before = app_sessions().await;
    drop(c);
    wait_until(Duration::from_secs(10), async || app_sessions().await < before)
        .await
        .unwrap_or_else(|| panic!("pgfleet still lists the session that left ({before} app sessions)"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn next_client_gets_the_same_backend_without_the_previous_session_state() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"session\"\nmax_size = 1\n"),
    );
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
    leave(a, &proxy).await;

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
    leave(b, &proxy).await;

    // With the default idle_timeout the backend stays pooled while nobody uses it. Not synchronisation: the
    // time passing unused is what is tested.
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
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"session\"\nmax_size = 1\n"),
    );
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
    leave(a, &proxy).await;

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
    let admin = superuser_client(&cluster.primary).await;
    admin
        .batch_execute(
            "CREATE TABLE locks_t (id int PRIMARY KEY, v text); INSERT INTO locks_t VALUES (100, 'held');
             ALTER TABLE locks_t OWNER TO app",
        )
        .await
        .expect("setup");
    let proxy = Proxy::start(&cluster, &format!("{ADMIN_TOML}\n[pool]\nmax_size = 1\n"));
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
        // The lock is released within 2 s: a direct connection can take it with NOWAIT.
        let freed = crate::support::wait_until(Duration::from_secs(2), async || {
            admin.batch_execute("BEGIN").await.expect("begin");
            let r = admin
                .simple_query("SELECT v FROM locks_t WHERE id = 100 FOR UPDATE NOWAIT")
                .await;
            admin.batch_execute("ROLLBACK").await.expect("rollback");
            r.is_ok()
        })
        .await
        .is_some();
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
        leave(b, &proxy).await;
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
    let proxy = Proxy::start(&cluster, &format!("{ADMIN_TOML}\n[pool]\nmax_size = 1\n"));
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = superuser_client(&cluster.primary).await;
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
    leave(a, &proxy).await;

    // The temp table and the lock go away with A.
    wait_until(Duration::from_secs(2), async || {
        one(&admin, temp_count).await == "0"
    })
    .await
    .expect("A's temp table is gone within 2 s after A left");
    wait_until(Duration::from_secs(2), async || {
        one(&admin, "SELECT pg_try_advisory_lock(4242)").await == "t"
    })
    .await
    .expect("A's session advisory lock does not outlive A by 2 s");
    admin
        .batch_execute("SELECT pg_advisory_unlock(4242)")
        .await
        .expect("unlock");

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
    let all_closed = wait_until(Duration::from_secs(6), async || {
        cluster.nodes().all(|n| app_backends(n) == 0)
    })
    .await
    .is_some();
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

fn count(row: &Row, column: &str) -> usize {
    text(row, column)
        .parse()
        .unwrap_or_else(|_| panic!("column {column} is not a number in {row:?}"))
}

/// `SELECT inet_server_port()` through `c`, and how long it took.
async fn served_by(c: &tokio_postgres::Client) -> (String, Duration) {
    let started = Instant::now();
    let port = one(c, "SELECT inet_server_port()").await;
    (port, started.elapsed())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_session_pool_refuses_logins_with_53300_and_connected_clients_keep_reading() {
    let cluster = cluster_async().await;
    superuser_client(&cluster.primary)
        .await
        .batch_execute("CREATE TABLE cap_t (x int); ALTER TABLE cap_t OWNER TO app")
        .await
        .expect("setup");
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"session\"\nmax_size = 2\ncheckout_timeout = \"1s\"\n"),
    );
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;
    let replica_ports: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();

    // Session pooling: each client holds its primary connection for its whole session.
    let c1 = connect(&dsn).await;
    let c2 = connect(&dsn).await;
    assert_eq!(app_backends(&cluster.primary), 2);

    // Three more logins at once; while they wait, the connected clients read (opening their replica
    // connections only now, so that logins falling over to the replicas would take the slots those reads
    // need).
    let logins = futures_util::future::join_all((0..3).map(|_| async {
        let started = Instant::now();
        let attempt = try_connect(&dsn).await;
        (attempt, started.elapsed())
    }));
    let reads = async {
        // Start once all three logins wait on the primary's pool.
        wait_until(Duration::from_secs(5), async || {
            count(&pool_row(&admin, &cluster.primary.name).await, "waiting") >= 3
        })
        .await
        .expect("the logins wait on the primary's pool");
        let mut ports = Vec::new();
        for _ in 0..4 {
            for c in [&c1, &c2] {
                ports.push(served_by(c).await);
            }
        }
        ports
    };
    let (attempts, reads) = tokio::join!(logins, reads);
    for (port, took) in &reads {
        assert!(
            replica_ports.contains(port),
            "a read ran on {port}, not a replica"
        );
        assert!(
            // Starved, it would wait pool.checkout_timeout (1 s) and fail; this bound only leaves room for a
            // busy machine opening the replica connection.
            *took < Duration::from_secs(2),
            "a connected client's read waited {took:?} while logins were refused"
        );
    }
    let expected = format!(
        "pgfleet: all 2 connections of the pool for node \"{}\" (database \"{APP_DB}\", user \"{APP_USER}\") are in use",
        cluster.primary.name
    );
    for (i, (attempt, took)) in attempts.into_iter().enumerate() {
        let err = match attempt {
            Ok(_) => panic!("login {} got in with the primary's pool full", i + 3),
            Err(e) => e,
        };
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("login {}: not a server error: {err}", i + 3));
        assert_eq!(db.code().code(), "53300", "login {}: {db:?}", i + 3);
        assert_eq!(db.severity(), "FATAL", "login {}: {db:?}", i + 3);
        assert_eq!(db.message(), expected, "login {}", i + 3);
        let hint = db.hint().unwrap_or("");
        assert!(
            hint.contains("pool.max_size") && hint.contains("pool.checkout_timeout"),
            "login {}: hint {hint:?}",
            i + 3
        );
        assert!(
            took >= Duration::from_millis(900),
            "login {} waited pool.checkout_timeout for a connection ({took:?})",
            i + 3
        );
        assert!(
            took < Duration::from_millis(2500),
            "login {} refused within ~1-2 s, took {took:?}",
            i + 3
        );
    }

    // A full pool is not a node failure: the primary stays up, and nothing went over max_size.
    let primary = &node_row(&admin, &cluster.primary.name).await;
    assert_eq!(text(primary, "state"), "up", "{primary:?}");
    assert_eq!(text(primary, "errors"), "0", "{primary:?}");
    let pool = pool_row(&admin, &cluster.primary.name).await;
    assert_eq!(
        (count(&pool, "size"), count(&pool, "max_size")),
        (2, 2),
        "{pool:?}"
    );
    assert_eq!(count(&pool, "waiting"), 0, "{pool:?}");
    assert!(app_backends(&cluster.primary) <= 2);

    // The connected clients write and read as before.
    for c in [&c1, &c2] {
        c.batch_execute("INSERT INTO cap_t VALUES (1)")
            .await
            .expect("write");
    }
    assert_eq!(
        one(&c1, "/* pgfleet:primary */ SELECT count(*) FROM cap_t").await,
        "2"
    );

    // A freed slot is usable by the next client at once.
    leave(c1, &proxy).await;
    let started = Instant::now();
    let c3 = connect(&dsn).await;
    assert!(
        started.elapsed() < Duration::from_millis(900),
        "{:?}",
        started.elapsed()
    );
    c3.batch_execute("INSERT INTO cap_t VALUES (3)")
        .await
        .expect("write");
    assert!(app_backends(&cluster.primary) <= 2);
    drop(c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_skip_a_full_replica_pool_and_waiters_get_the_released_connection() {
    let cluster = cluster_async().await;
    superuser_client(&cluster.primary)
        .await
        .batch_execute("CREATE TABLE wait_t (x int); ALTER TABLE wait_t OWNER TO app")
        .await
        .expect("setup");
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"10s\"\n"),
    );
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;

    // A holds the only connection of one replica's pool with a read-only transaction there.
    let a = connect(&dsn).await;
    a.batch_execute("BEGIN READ ONLY").await.expect("begin read only");
    let held = one(&a, "SELECT inet_server_port()").await;
    let (busy, free): (Vec<_>, Vec<_>) = cluster.replicas.iter().partition(|r| r.port.to_string() == held);
    assert_eq!(
        busy.len(),
        1,
        "the read-only transaction runs on a replica, not on {held}"
    );
    let (busy, free) = (busy[0], free[0]);
    let pool = pool_row(&admin, &busy.name).await;
    assert_eq!(
        (count(&pool, "in_use"), count(&pool, "max_size")),
        (1, 1),
        "{pool:?}"
    );

    // Round-robin makes the busy replica the first choice of every other read: each is served at once by
    // the other replica rather than waiting for the busy one.
    let b = connect(&dsn).await;
    for _ in 0..6 {
        let (port, took) = served_by(&b).await;
        assert_eq!(
            port,
            free.port.to_string(),
            "a read went to {port} while {} was full",
            busy.name
        );
        assert!(
            took < Duration::from_secs(2),
            "a read waited {took:?} on the full pool"
        );
    }
    a.batch_execute("COMMIT").await.expect("commit");

    // E holds the primary's only connection in a write transaction; D's login waits for it and gets it
    // once E commits.
    let e = connect(&dsn).await;
    e.batch_execute("BEGIN; INSERT INTO wait_t VALUES (1)")
        .await
        .expect("write");
    let login_dsn = dsn.clone();
    let d = tokio::spawn(async move {
        let started = Instant::now();
        let c = try_connect(&login_dsn).await;
        (c, started.elapsed())
    });
    wait_until(Duration::from_secs(5), async || {
        count(&pool_row(&admin, &cluster.primary.name).await, "waiting") >= 1
    })
    .await
    .expect("D waits on the primary's pool");
    e.batch_execute("COMMIT").await.expect("commit");
    let (d, took) = d.await.expect("login task");
    let d = d.unwrap_or_else(|err| panic!("the waiting login failed after {took:?}: {err}"));
    assert!(took < Duration::from_secs(10), "{took:?}");
    assert_eq!(
        one(&d, "/* pgfleet:primary */ SELECT count(*) FROM wait_t").await,
        "1"
    );
    d.batch_execute("INSERT INTO wait_t VALUES (2)")
        .await
        .expect("D writes");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_wait_for_busy_replicas_instead_of_overflowing_to_the_primary() {
    let cluster = cluster_async().await;
    // primary_reads = false (the default): the primary serves reads only when no replica can.
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"20s\"\n"),
    );
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;
    let replica_ports: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();

    // A and B each hold the only connection of one replica's pool with a read-only transaction.
    let a = connect(&dsn).await;
    a.batch_execute("BEGIN READ ONLY").await.expect("begin read only");
    let a_port = one(&a, "SELECT inet_server_port()").await;
    let b = connect(&dsn).await;
    b.batch_execute("BEGIN READ ONLY").await.expect("begin read only");
    let b_port = one(&b, "SELECT inet_server_port()").await;
    let mut held = vec![a_port.clone(), b_port.clone()];
    held.sort();
    let mut replicas = replica_ports.clone();
    replicas.sort();
    assert_eq!(
        held, replicas,
        "the two read-only transactions hold both replicas"
    );

    // C's read finds both replica pools full: it waits for one, although the primary's pool is free.
    let c = connect(&dsn).await;
    let read = tokio::spawn(async move { one(&c, "SELECT inet_server_port()").await });
    wait_until(Duration::from_secs(10), async || {
        let pools = show(&admin, "SHOW POOLS").await;
        pools
            .iter()
            .filter(|r| text(r, "node") != cluster.primary.name)
            .map(|r| count(r, "waiting"))
            .sum::<usize>()
            >= 1
    })
    .await
    .expect("the read waits on a replica's pool");
    assert_eq!(count(&pool_row(&admin, &cluster.primary.name).await, "in_use"), 0);
    a.batch_execute("COMMIT").await.expect("commit");
    b.batch_execute("COMMIT").await.expect("commit");
    let port = read.await.expect("read task");
    assert!(
        replica_ports.contains(&port),
        "the waiting read was served by {port}, not by a replica ({replica_ports:?})"
    );
}

/// A cancel while the request waits for a connection of a full pool ends that request at once with
/// PostgreSQL's 57014, although no node runs it yet: a CancelRequest with the client's key, and
/// `pg_cancel_backend` of its pid from another session. A cancel between requests is ignored as PostgreSQL
/// ignores it, and the cancelled client's session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_wait_for_a_pooled_connection_with_57014() {
    use crate::support::raw::{Raw, data_rows, send_cancel};
    use pgfleet::protocol::frame::build;
    let cluster = cluster_async().await;
    // The primary alone, one connection in its pool: every statement needs that connection.
    let proxy = lone_primary_with_one_connection(&cluster, "");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;
    // All log in first (a login checks out a connection too); then A holds the pool's only connection.
    let a = connect(&dsn).await;
    let caller = connect(&dsn).await;
    let mut b = Raw::connect(proxy.port).await;
    let (pid, secret) = b.login_app().await;
    a.batch_execute("BEGIN").await.expect("begin");
    assert_eq!(one(&a, "SELECT 1").await, "1");
    // A cancel while B is idle is for nothing: PostgreSQL ignores it, and so must B's next request.
    send_cancel(proxy.port, pid, secret).await;
    let cancels: [&str; 2] = ["CancelRequest", "pg_cancel_backend"];
    for how in cancels {
        b.send(&build(b'Q', b"SELECT 2\0")).await;
        wait_until(Duration::from_secs(10), async || {
            count(&pool_row(&admin, "primary").await, "waiting") >= 1
        })
        .await
        .unwrap_or_else(|| panic!("{how}: B's request waits for the pool"));
        let started = Instant::now();
        match how {
            "CancelRequest" => send_cancel(proxy.port, pid, secret).await,
            _ => assert_eq!(
                one(&caller, &format!("SELECT pg_cancel_backend({pid})")).await,
                "t"
            ),
        }
        // Bounded by Raw's own timeout (10 s), far below pool.checkout_timeout (60 s).
        let answer = b.until_ready(Duration::from_secs(10)).await;
        assert_eq!(cancel_errors(&answer), vec![("57014", true)], "{how}: {answer:?}");
        assert!(started.elapsed() < Duration::from_secs(10), "{how}");
        assert_eq!(count(&pool_row(&admin, "primary").await, "waiting"), 0, "{how}");
    }
    // Nothing else changed: A's transaction goes on, and B is served once the connection is free.
    a.batch_execute("COMMIT").await.expect("commit");
    assert_eq!(data_rows(&b.simple("SELECT 3").await), vec!["3".to_owned()]);
}

/// A cancel that comes while pgfleet readies a request's node connection (here: sets the session's settings
/// on a pooled connection another session used last) ends the request with 57014 at once, even while the
/// node does not answer, and the request never runs: as PostgreSQL ends a statement cancelled before it
/// finished. SHOW CLIENTS lists the session as active meanwhile. The primary is frozen (SIGSTOP) to hold the
/// request there, and stays frozen until the answer came.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_while_pgfleet_readies_the_connection_ends_the_request_before_it_runs() {
    use crate::support::raw::{Raw, data_rows, send_cancel};
    use pgfleet::protocol::frame::build;
    let cluster = cluster_async().await;
    // Health checks too rare to notice the frozen primary.
    let proxy = lone_primary_with_one_connection(&cluster, "\n[health]\ninterval = \"60s\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;
    let setup = superuser_client(&cluster.primary).await;
    setup
        .batch_execute("CREATE TABLE canceled_writes (id int); GRANT ALL ON canceled_writes TO app")
        .await
        .expect("create table");
    let a = connect(&dsn).await;
    let mut b = Raw::connect(proxy.port).await;
    let (pid, secret) = b.login_app().await;
    b.simple("SET application_name = 'cancel_me'").await;
    // A uses the pool's one connection last, with its own setting: B's next request must set B's first.
    a.batch_execute("SET application_name = 'other'")
        .await
        .expect("set");
    assert_eq!(
        one(&a, "SELECT current_setting('application_name')").await,
        "other"
    );
    tokio::task::block_in_place(|| cluster.primary.pause()).expect("SIGSTOP the primary");
    b.send(&build(b'Q', b"INSERT INTO canceled_writes VALUES (1)\0"))
        .await;
    assert!(
        a_request_turns_active(&admin).await,
        "SHOW CLIENTS never listed B's request as active"
    );
    send_cancel(proxy.port, pid, secret).await;
    let answer = b.until_ready(Duration::from_secs(10)).await;
    // Refused by pgfleet itself: the row is idle before the client reads the error, here too.
    let states: Vec<String> = show(&admin, "SHOW CLIENTS")
        .await
        .iter()
        .map(|r| text(r, "state").to_owned())
        .collect();
    tokio::task::block_in_place(|| cluster.primary.resume()).expect("SIGCONT the primary");
    assert_eq!(cancel_errors(&answer), vec![("57014", true)], "{answer:?}");
    assert!(
        !states.iter().any(|s| s == "active"),
        "the refused request is still active: {states:?}"
    );
    assert_eq!(
        one(&setup, "SELECT count(*) FROM canceled_writes").await,
        "0",
        "the cancelled INSERT ran"
    );
    // The session goes on, its setting in place, and its next INSERT runs.
    assert_eq!(
        data_rows(&b.simple("SELECT current_setting('application_name')").await),
        vec!["cancel_me".to_owned()]
    );
    b.simple("INSERT INTO canceled_writes VALUES (2)").await;
    assert_eq!(
        one(&setup, "SELECT string_agg(id::text, ',') FROM canceled_writes").await,
        "2"
    );
    // As PostgreSQL's pg_stat_activity, the row is idle again before the client has its answer (the row
    // used to change microseconds after it: this checks the result, not that order).
    let states: Vec<String> = show(&admin, "SHOW CLIENTS")
        .await
        .iter()
        .map(|r| text(r, "state").to_owned())
        .collect();
    assert!(
        !states.iter().any(|s| s == "active"),
        "a request answered is still active: {states:?}"
    );
}

/// Inside a transaction, a request pgfleet still has when the client cancels it (here it is preparing the
/// session's statement on the transaction's connection, the node frozen) must not end with an error of
/// pgfleet's own, which would leave the node's transaction open while the client takes it as aborted. It goes
/// to the node with the cancel right behind it: the node cancels the statement and aborts the transaction, as
/// PostgreSQL does for a cancel that reaches a running statement.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_inside_a_transaction_reaches_the_node_behind_the_request() {
    use crate::support::raw::{Raw, data_rows, send_cancel, sqlstate};
    use pgfleet::protocol::frame::build;
    let cluster = cluster_async().await;
    // Health checks too rare to notice the frozen primary.
    let proxy = lone_primary_with_one_connection(&cluster, "\n[health]\ninterval = \"60s\"\n");
    let admin = admin_client(&proxy).await;
    let setup = superuser_client(&cluster.primary).await;
    let sync = build(b'S', b"");
    let mut b = Raw::connect(proxy.port).await;
    let (pid, secret) = b.login_app().await;
    slow_statement_then_a_transaction_elsewhere(&mut b, &setup).await;
    tokio::task::block_in_place(|| cluster.primary.pause()).expect("SIGSTOP the primary");
    let bind = build(b'B', b"\0slow\0\0\0\0\0\0\0");
    let execute = build(b'E', b"\0\0\0\0\0");
    b.send(&[bind.as_ref(), &execute, &sync].concat()).await;
    let active = a_request_turns_active(&admin).await;
    if active {
        send_cancel(proxy.port, pid, secret).await;
    }
    tokio::task::block_in_place(|| cluster.primary.resume()).expect("SIGCONT the primary");
    assert!(active, "SHOW CLIENTS never listed B's request as active");
    // Long before pg_sleep(60) could end: the node's own answer to a cancel, and the transaction failed.
    let answer = b.until_ready(Duration::from_secs(20)).await;
    assert_eq!(cancel_errors(&answer), vec![("57014", true)], "{answer:?}");
    assert_eq!(answer.last().map(|(_, body)| body.as_slice()), Some(&b"E"[..]));
    let refused = b.simple("SELECT 1").await;
    let codes: Vec<&str> = refused
        .iter()
        .filter(|(k, _)| *k == b'E')
        .map(|(_, body)| sqlstate(body))
        .collect();
    assert_eq!(codes, vec!["25P02"], "{refused:?}");
    b.simple("ROLLBACK").await;
    assert_eq!(data_rows(&b.simple("SELECT 2").await), vec!["2".to_owned()]);
}

/// The cancel of the test above can reach its backend before the request does: PostgreSQL ignores a cancel
/// that comes while a backend waits for its next message, and a busy machine can keep the backend from
/// reading the request until then. A relay between pgfleet and the primary makes that order certain: it
/// holds the request back until the node has signalled the backend with pgfleet's cancel and the backend
/// has taken the signal (SIGINT no longer pending in its /proc status), then lets it through. pgfleet sends
/// the cancel again while the node has answered nothing, and that one ends the statement; with one cancel
/// only, `pg_sleep(60)` runs on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_cancel_that_came_before_the_request_is_sent_again() {
    use crate::support::raw::{Raw, data_rows, send_cancel};
    use crate::support::relay::Relay;
    use pgfleet::protocol::frame::build;
    let cluster = cluster_async().await;
    let relay = Relay::start(cluster.primary.address()).await;
    let proxy = lone_node_with_one_connection(
        &format!("127.0.0.1:{}", relay.port),
        "\n[health]\ninterval = \"60s\"\n",
    );
    let admin = admin_client(&proxy).await;
    let setup = superuser_client(&cluster.primary).await;
    let sync = build(b'S', b"");
    let mut b = Raw::connect(proxy.port).await;
    let (pid, secret) = b.login_app().await;
    // As above.
    slow_statement_then_a_transaction_elsewhere(&mut b, &setup).await;
    let backend: i32 = one(&setup, &format!("SELECT pid::text {APP_ON_NODE}"))
        .await
        .parse()
        .expect("the transaction's backend");
    relay.close();
    let bind = build(b'B', b"\0slow\0\0\0\0\0\0\0");
    let execute = build(b'E', b"\0\0\0\0\0");
    b.send(&[bind.as_ref(), &execute, &sync].concat()).await;
    assert!(
        relay.wait_held(1).await,
        "pgfleet sent nothing to prepare the statement"
    );
    assert!(
        a_request_turns_active(&admin).await,
        "SHOW CLIENTS never listed B's request as active"
    );
    // pgfleet holds the request: the cancel is to go right behind it.
    send_cancel(proxy.port, pid, secret).await;
    relay.permit();
    // pgfleet sends its cancel after writing the request, which the relay holds.
    assert!(
        relay.wait_cancels_done(1).await,
        "pgfleet's cancel never reached the node"
    );
    let taken = wait_until(Duration::from_secs(10), async || !sigint_pending(backend)).await;
    assert!(
        taken.is_some(),
        "backend {backend} never took the cancel's SIGINT"
    );
    relay.open();
    let answer = b.until_ready(Duration::from_secs(20)).await;
    assert_eq!(cancel_errors(&answer), vec![("57014", true)], "{answer:?}");
    b.simple("ROLLBACK").await;
    assert_eq!(data_rows(&b.simple("SELECT 2").await), vec!["2".to_owned()]);
}

/// The app role's client backends in pg_stat_activity, pgfleet's own control connections left out.
const APP_ON_NODE: &str = "FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' \
                           AND coalesce(application_name, '') NOT LIKE 'pgfleet-%'";

/// B (logged in through a pgfleet whose pool holds one connection) prepares `slow`, a `pg_sleep(60)`; then
/// that node connection goes and B opens a transaction on a new one, so running `slow` in it needs the
/// statement prepared on the transaction's connection first.
async fn slow_statement_then_a_transaction_elsewhere(
    b: &mut crate::support::raw::Raw,
    setup: &tokio_postgres::Client,
) {
    use crate::support::raw::data_rows;
    use pgfleet::protocol::frame::build;
    b.send(
        &[
            build(b'P', b"slow\0SELECT pg_sleep(60)\0\0\0").as_ref(),
            &build(b'S', b""),
        ]
        .concat(),
    )
    .await;
    let parsed: String = b
        .until_ready(Duration::from_secs(10))
        .await
        .iter()
        .map(|(k, _)| *k as char)
        .collect();
    assert_eq!(parsed, "1Z");
    setup
        .batch_execute(&format!("SELECT pg_terminate_backend(pid) {APP_ON_NODE}"))
        .await
        .expect("terminate the pooled connection");
    let gone = wait_until(Duration::from_secs(10), async || {
        one(setup, &format!("SELECT count(*) {APP_ON_NODE}")).await == "0"
    })
    .await;
    assert!(gone.is_some(), "the pooled connection did not go");
    b.simple("BEGIN").await;
    assert_eq!(data_rows(&b.simple("SELECT 1").await), vec!["1".to_owned()]);
}

/// Whether SIGINT (signal 2 on Linux) waits to be delivered to process `pid`: pending for its thread or for
/// the process, in its /proc status.
fn sigint_pending(pid: i32) -> bool {
    const SIGINT_BIT: u64 = 1 << (2 - 1);
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("the backend's /proc status");
    status
        .lines()
        .filter_map(|l| l.strip_prefix("SigPnd:").or_else(|| l.strip_prefix("ShdPnd:")))
        .any(|mask| u64::from_str_radix(mask.trim(), 16).expect("a signal mask") & SIGINT_BIT != 0)
}

/// Waits (up to 10 s) until SHOW CLIENTS lists a request as active; whether it did.
async fn a_request_turns_active(admin: &tokio_postgres::Client) -> bool {
    wait_until(Duration::from_secs(10), async || {
        show(admin, "SHOW CLIENTS")
            .await
            .iter()
            .any(|r| text(r, "state") == "active")
    })
    .await
    .is_some()
}

/// pgfleet in front of the cluster's primary alone, under transaction pooling with one connection in the
/// pool (so every statement needs that connection) and the admin console; `extra` is appended to the config.
fn lone_primary_with_one_connection(cluster: &crate::support::cluster::LocalCluster, extra: &str) -> Proxy {
    lone_node_with_one_connection(&cluster.primary.address(), extra)
}

/// As [`lone_primary_with_one_connection`], with the primary at `address` (`host:port`).
fn lone_node_with_one_connection(address: &str, extra: &str) -> Proxy {
    let port = crate::support::proxy::free_port();
    Proxy::start_with_config(format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"{APP_USER}\"\npassword = \"{PASSWORD}\"\n\n\
         {ADMIN_TOML}\n[[nodes]]\nname = \"primary\"\naddress = \"{}\"\nrole = \"primary\"\n\n\
         [routing]\nprimary_reads = true\n\n[pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"60s\"\n{extra}",
        address
    ))
}

/// The errors in a request's answer: (SQLSTATE, whether the message is PostgreSQL's for a cancel).
fn cancel_errors(answer: &[crate::support::raw::Msg]) -> Vec<(&str, bool)> {
    answer
        .iter()
        .filter(|(kind, _)| *kind == b'E')
        .map(|(_, body)| {
            let words = String::from_utf8_lossy(body);
            (
                crate::support::raw::sqlstate(body),
                words.contains("canceling statement due to user request"),
            )
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pools_for_databases_that_do_not_exist_are_not_kept() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, ADMIN_TOML);
    let admin = admin_client(&proxy).await;
    let names: Vec<String> = (0..200)
        .map(|i| format!("nodb_{i}_{:016x}", rand::random::<u64>()))
        .collect();
    for chunk in names.chunks(10) {
        let attempts = futures_util::future::join_all(chunk.iter().map(|name| {
            let dsn = proxy.dsn(APP_USER, PASSWORD, name);
            async move { try_connect(&dsn).await }
        }))
        .await;
        for (name, attempt) in chunk.iter().zip(attempts) {
            let Err(err) = attempt else {
                panic!("a login to database {name} succeeded")
            };
            let db = err
                .as_db_error()
                .unwrap_or_else(|| panic!("{name}: not a server error: {err}"));
            assert_eq!(db.code().code(), "3D000", "{name}: {db:?}");
            assert_eq!(db.message(), format!("database \"{name}\" does not exist"));
        }
    }
    let pools = show(&admin, "SHOW POOLS").await;
    let kept: Vec<&Row> = pools
        .iter()
        .filter(|r| text(r, "database").starts_with("nodb_"))
        .collect();
    assert!(
        kept.is_empty(),
        "{} pools kept for refused databases: {kept:?}",
        kept.len()
    );
    assert!(pools.len() <= 3, "{pools:?}");
    let nodes = show(&admin, "SHOW NODES").await;
    assert!(nodes.iter().all(|r| text(r, "state") == "up"), "{nodes:?}");

    // The real database still works, and its pools are listed.
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert_eq!(one(&c, "SELECT 'still here'").await, "still here");
    c.batch_execute("CREATE TABLE nodb_t (x int)")
        .await
        .expect("write");
    pool_row(&admin, &cluster.primary.name).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smaller_max_size_closes_the_connections_transactions_gave_back() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"transaction\"\nmax_size = 3\n"),
    );
    let admin = admin_client(&proxy).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(connect(&primary_dsn(&proxy)).await);
    }
    // Three transactions open at once: three connections, given back as each commits.
    for c in &clients {
        c.batch_execute("BEGIN; SELECT txid_current()")
            .await
            .expect("begin");
    }
    assert_eq!(app_backends(&cluster.primary), 3);
    for c in &clients {
        c.batch_execute("COMMIT").await.expect("commit");
    }
    // A connection goes back to its pool just after the client has its ReadyForQuery, so the last commit's
    // may still be on its way back when SHOW POOLS runs.
    let mut last = None;
    let idle = wait_until(Duration::from_secs(10), async || {
        let row = pool_row(&admin, &cluster.primary.name).await;
        let counts = (
            count(&row, "size"),
            count(&row, "in_use"),
            count(&row, "available"),
        );
        last = Some(row);
        counts == (3, 0, 3)
    })
    .await;
    assert!(
        idle.is_some(),
        "connections given back between transactions are idle: {last:?}"
    );

    // A reload lowers the cap: the idle connections past it are closed without waiting for pool.idle_timeout
    // or for traffic.
    let text = std::fs::read_to_string(&proxy.config_path).expect("read config");
    std::fs::write(&proxy.config_path, text.replace("max_size = 3", "max_size = 1")).expect("write config");
    admin.simple_query("RELOAD").await.expect("RELOAD");
    wait_until(Duration::from_secs(10), async || {
        app_backends(&cluster.primary) == 1
    })
    .await
    .unwrap_or_else(|| {
        panic!(
            "{} connections to the primary after max_size went down to 1",
            app_backends(&cluster.primary)
        )
    });
    for c in &clients {
        assert_eq!(one(c, "SELECT 'after the reload'").await, "after the reload");
    }
    let row = pool_row(&admin, &cluster.primary.name).await;
    assert_eq!((count(&row, "size"), count(&row, "max_size")), (1, 1), "{row:?}");
    assert_eq!(app_backends(&cluster.primary), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_pools_are_evicted_once_no_session_holds_them() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        &format!("{ADMIN_TOML}\n[pool]\nmode = \"transaction\"\nidle_timeout = \"1s\"\n"),
    );
    let admin = admin_client(&proxy).await;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for _ in 0..2 {
        one(&c, "SELECT 1").await;
    }
    let app_pools = |pools: &[Row]| pools.iter().filter(|r| text(r, "database") == APP_DB).count();
    let used = app_pools(&show(&admin, "SHOW POOLS").await);
    assert!(used >= 2, "the primary's and a replica's pool");

    // Transaction pooling: the connections went back and are closed after idle_timeout, but the connected
    // session still holds its pools, so they stay (a new pool beside the held one would double max_size).
    let reaped = wait_until(Duration::from_secs(8), async || {
        cluster.nodes().all(|n| app_backends(n) == 0)
    })
    .await
    .is_some();
    assert!(reaped, "idle connections were not closed");
    assert_eq!(app_pools(&show(&admin, "SHOW POOLS").await), used);
    assert_eq!(one(&c, "SELECT 'after reaping'").await, "after reaping");

    // Once the session leaves, its pools go at the next reaping after their connections are closed.
    leave(c, &proxy).await;
    wait_until(Duration::from_secs(8), async || {
        app_pools(&show(&admin, "SHOW POOLS").await) == 0
    })
    .await
    .unwrap_or_else(|| {
        panic!("pools still listed after their clients left");
    });
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert_eq!(one(&c, "SELECT 'again'").await, "again");
    pool_row(&admin, &cluster.primary.name).await;
}
