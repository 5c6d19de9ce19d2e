//! Transaction pooling: many clients share a few backend connections, and each still sees its own settings
//! and prepared statements, pins where state cannot move, and can cancel its queries.

use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async, wait_running};
use crate::support::proxy::{Proxy, connect, connect_listening};
use crate::support::{one, wait_until};

// Forty clients take turns on two connections: on a busy machine a turn can take longer than the default
// checkout_timeout, and waiting is what these tests are about, not the refusal.
const TXN: &str = "[pool]\nmode = \"transaction\"\nmax_size = 2\ncheckout_timeout = \"60s\"\n";

async fn backends_on(
    cluster: &crate::support::cluster::LocalCluster,
    node: &crate::support::cluster::NodeHandle,
) -> usize {
    let sql = "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' \
               AND application_name NOT LIKE 'pgfleet-%'";
    cluster
        .psql(node, "postgres", sql)
        .expect("count")
        .trim()
        .parse()
        .expect("number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_clients_share_two_connections_with_their_own_settings_and_statements() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, TXN);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let setup = connect(&dsn).await;
    setup.batch_execute("CREATE TABLE counters (id int primary key, n int); INSERT INTO counters SELECT g, 0 FROM generate_series(1, 40) g").await.expect("setup");
    drop(setup);
    let mut tasks = Vec::new();
    for i in 0..40i32 {
        let dsn = dsn.clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&dsn).await;
            // Each client has its own work_mem, and its own statement under tokio-postgres' name "s0".
            c.batch_execute(&format!("SET work_mem = '{}kB'", 3001 + i))
                .await
                .expect("set");
            let own = c
                .prepare(&format!("SELECT {i} + $1::int"))
                .await
                .expect("prepare");
            for round in 0..10 {
                let tx = c.transaction().await.expect("begin");
                tx.execute("UPDATE counters SET n = n + 1 WHERE id = $1", &[&(i + 1)])
                    .await
                    .expect("update");
                tx.commit().await.expect("commit");
                let v: i32 = c.query_one(&own, &[&round]).await.expect("own statement").get(0);
                assert_eq!(v, i + round, "client {i} ran another client's statement");
                let wm: String = c.query_one("SHOW work_mem", &[]).await.expect("show").get(0);
                assert_eq!(wm, format!("{}kB", 3001 + i), "client {i} lost its setting");
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let check = connect(&dsn).await;
    let total: i64 = check
        .query_one("SELECT sum(n) FROM counters", &[])
        .await
        .expect("sum")
        .get(0);
    assert_eq!(total, 400);
    // 40 clients, but never more than pool.max_size backends per node.
    for node in std::iter::once(&cluster.primary).chain(cluster.replicas.iter()) {
        let n = backends_on(&cluster, node).await;
        assert!(n <= 2, "{} backends on port {}", n, node.port);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_pins_and_cancel_work() {
    let cluster = cluster_async().await;
    // Pinned clients keep their backend: leave room for the two this test pins and two more.
    let proxy = Proxy::start(&cluster, "[pool]\nmode = \"transaction\"\nmax_size = 4\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let primary = cluster.primary.port as i32;
    // A temp table pins the client: it is still there in later transactions, on the primary.
    let c = connect(&dsn).await;
    c.batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (7)")
        .await
        .expect("temp");
    let other = connect(&dsn).await;
    for _ in 0..5 {
        other.batch_execute("SELECT 1").await.expect("other client");
        let row = c
            .query_one("SELECT x, inet_server_port() FROM scratch", &[])
            .await
            .expect("temp read");
        assert_eq!(row.get::<_, i32>(0), 7);
        assert_eq!(row.get::<_, i32>(1), primary);
    }
    // A session advisory lock stays with its client.
    let locker = connect(&dsn).await;
    locker
        .batch_execute("SELECT pg_advisory_lock(42)")
        .await
        .expect("lock");
    let probe = connect(&dsn).await;
    let got: bool = probe
        .query_one("SELECT pg_try_advisory_lock(42)", &[])
        .await
        .expect("try")
        .get(0);
    assert!(!got, "the lock moved away from its client");
    locker
        .batch_execute("SELECT pg_advisory_unlock(42)")
        .await
        .expect("unlock");
    // Pinned clients keep their backends until they leave; let these go.
    // A backend holding a temp table cannot be reset, so pgfleet closes it when its client leaves; the table
    // is gone once that has happened.
    drop((c, locker, probe));
    let superuser = connect(&cluster.primary.dsn("postgres", PASSWORD, "postgres")).await;
    wait_until(Duration::from_secs(10), async || {
        one(
            &superuser,
            "SELECT count(*) FROM pg_class WHERE relname = 'scratch' AND relpersistence = 't'",
        )
        .await
            == "0"
    })
    .await
    .expect("the pinned backend with the temp table is closed after its client left");
    // Cancel reaches the backend that runs the query, whichever it is.
    let sleeper = connect(&dsn).await;
    let token = sleeper.cancel_token();
    let started = Instant::now();
    let run = tokio::spawn(async move { sleeper.batch_execute("SELECT pg_sleep(20)").await });
    // Cancel once the statement runs on some node (a read: a replica, unless routing says otherwise).
    wait_running(&cluster, "SELECT pg_sleep(20)", 1).await;
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
    let err = run.await.expect("task").expect_err("cancelled");
    assert_eq!(err.as_db_error().expect("db error").code().code(), "57014");
    assert!(started.elapsed() < Duration::from_secs(5));
    // LISTEN pins too: a notification sent by another client arrives at the listener's backend.
    let (listener, mut notifications) = connect_listening(&dsn).await;
    listener.batch_execute("LISTEN ch").await.expect("listen");
    other.batch_execute("NOTIFY ch, 'hello'").await.expect("notify");
    let note = tokio::time::timeout(Duration::from_secs(10), notifications.recv())
        .await
        .expect("the notification arrives within 10 s")
        .expect("the listener's connection is open");
    assert_eq!((note.channel(), note.payload()), ("ch", "hello"));
    let port: i32 = listener
        .query_one("SELECT inet_server_port()", &[])
        .await
        .expect("port")
        .get(0);
    assert_eq!(port, primary, "LISTEN pinned the session to the primary");
}

/// A statement parsed in one request and bound in a later one: after a Sync that gave the connection back,
/// across transactions, and from inside a batch left open by Flush that began on another node or
/// connection. pgfleet prepares it where it is missing, and the client sees exactly PostgreSQL's replies to
/// its own messages (no ParseComplete of pgfleet's Parse). Under both pool modes; psycopg 3 pipelines too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn named_statements_survive_any_split_across_syncs_and_transactions() {
    use crate::support::raw::{Raw, data_rows};
    use pgfleet::protocol::frame::build;
    let cluster = cluster_async().await;
    let parse = |name: &str, sql: &str| build(b'P', format!("{name}\0{sql}\0\0\0").as_bytes());
    let bind = |name: &str| build(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes());
    let execute = build(b'E', b"\0\0\0\0\0");
    let (sync, flush) = (build(b'S', b""), build(b'H', b""));
    let kinds = |msgs: &[(u8, Vec<u8>)]| msgs.iter().map(|(k, _)| *k as char).collect::<String>();
    for extra in ["", TXN] {
        let proxy = Proxy::start(&cluster, extra);
        let mut raw = Raw::connect(proxy.port).await;
        raw.login_app().await;
        raw.send(&[parse("s1", "SELECT 41 + 1").as_ref(), &sync].concat())
            .await;
        assert_eq!(kinds(&raw.until_ready(Duration::from_secs(10)).await), "1Z");
        for round in 0..6 {
            // A transaction in between (on the primary, under transaction pooling on its own connection).
            raw.simple("BEGIN").await;
            raw.simple("CREATE TEMP TABLE IF NOT EXISTS x (n int) ON COMMIT DROP")
                .await;
            raw.simple("COMMIT").await;
            // A batch opened by a read of its own, then the Bind of s1 after the Flush.
            raw.send(&[parse("", "SELECT 1").as_ref(), &bind(""), &execute, &flush].concat())
                .await;
            let mut first = Vec::new();
            for _ in 0..4 {
                first.push(raw.frame().await.expect("reply in the open batch"));
            }
            assert_eq!(kinds(&first), "12DC", "{extra} round {round}");
            raw.send(&[bind("s1").as_ref(), &execute, &sync].concat()).await;
            let rest = raw.until_ready(Duration::from_secs(10)).await;
            assert_eq!(kinds(&rest), "2DCZ", "{extra} round {round}: {rest:?}");
            assert_eq!(data_rows(&rest), ["42"], "{extra} round {round}");
            // Parse after a Flush, its Sync giving the connection back, and the Bind in a later request.
            let name = format!("later{round}");
            raw.send(&[parse(&name, "SELECT 'later'").as_ref(), &flush].concat())
                .await;
            assert_eq!(raw.frame().await.expect("ParseComplete").0, b'1');
            raw.send(&sync).await;
            assert_eq!(kinds(&raw.until_ready(Duration::from_secs(10)).await), "Z");
            raw.send(&[bind(&name).as_ref(), &execute, &sync].concat()).await;
            let later = raw.until_ready(Duration::from_secs(10)).await;
            assert_eq!(data_rows(&later), ["later"], "{extra} round {round}: {later:?}");
        }
        if extra == TXN {
            let mut cmd = std::process::Command::new("python3");
            cmd.arg(crate::support::clients::clients_dir().join("psycopg3_pipeline_names.py"))
                .arg(proxy.url(APP_USER, PASSWORD, APP_DB));
            let done = crate::support::clients::run(cmd, Duration::from_secs(120));
            assert!(done.status.success(), "{done}\n{}", proxy.log_tail(40));
        }
    }
}
