//! Routing through a real pgfleet in front of a real primary and two streaming replicas, checked with
//! tokio-postgres: every assertion on a result also checks which node produced it.

use std::collections::HashSet;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, try_connect};
use tokio_postgres::SimpleQueryMessage;

/// The port of the server that ran the statement, via the simple protocol.
async fn port_simple(c: &tokio_postgres::Client, sql: &str) -> u16 {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    for m in rows {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).expect("port").parse().expect("number");
        }
    }
    panic!("{sql}: no row");
}

async fn port_extended(c: &tokio_postgres::Client) -> u16 {
    let row = c.query_one("SELECT inet_server_port()", &[]).await.expect("port");
    row.get::<_, i32>(0) as u16
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_writes_to_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;

    c.batch_execute("CREATE TABLE t (id serial primary key, v text)")
        .await
        .expect("create");
    // Simple protocol: reads alternate over both replicas (round_robin), never the primary.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let p = port_simple(&c, "SELECT inet_server_port()").await;
        assert!(replicas.contains(&p), "read served by {p}, not a replica");
        seen.insert(p);
    }
    assert_eq!(seen, replicas, "round robin uses both replicas");
    // Extended protocol, same rule.
    for _ in 0..4 {
        let p = port_extended(&c).await;
        assert!(replicas.contains(&p), "extended read served by {p}");
    }
    // Writes: the row lands on the primary, and what runs with it in one string runs there too.
    let p = port_simple(&c, "INSERT INTO t (v) VALUES ('a'); SELECT inet_server_port()").await;
    assert_eq!(p, primary, "a string with a write runs on the primary");
    let row = c
        .query_one(
            "INSERT INTO t (v) VALUES ($1) RETURNING id, inet_server_port()",
            &[&"b"],
        )
        .await
        .expect("insert returning");
    assert_eq!(row.get::<_, i32>(1) as u16, primary);
    // Functions that write: nextval on the primary, even inside a subquery.
    let p = port_simple(
        &c,
        "SELECT inet_server_port() FROM (SELECT nextval('t_id_seq')) s",
    )
    .await;
    assert_eq!(p, primary);
    // SELECT ... FOR UPDATE and data-modifying CTEs.
    let p = port_simple(&c, "SELECT inet_server_port() FROM t WHERE id = 1 FOR UPDATE").await;
    assert_eq!(p, primary);
    let p = port_simple(
        &c,
        "WITH d AS (DELETE FROM t WHERE v = 'zz' RETURNING 1) SELECT inet_server_port()",
    )
    .await;
    assert_eq!(p, primary);
    // Something that does not parse goes to the primary; PostgreSQL's error comes back intact.
    let err = c.simple_query("SELEC 1").await.expect_err("syntax error");
    let db = err.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "42601");
    assert!(db.position().is_some(), "error position is forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn volatile_user_functions_and_overrides() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[routing]\nload_balance = \"round_robin\"\nread_only_functions = [\"harmless_volatile\"]\nwrite_functions = [\"stable_writer\"]\n",
    );
    let primary = cluster.primary.port;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE TABLE hits (n int);
         CREATE FUNCTION bump() RETURNS int VOLATILE LANGUAGE sql AS 'INSERT INTO hits VALUES (1) RETURNING n';
         CREATE FUNCTION harmless_volatile() RETURNS int VOLATILE LANGUAGE sql AS 'SELECT 1';
         CREATE FUNCTION stable_writer() RETURNS int STABLE LANGUAGE sql AS 'SELECT 2';
         CREATE FUNCTION pure() RETURNS int IMMUTABLE LANGUAGE sql AS 'SELECT 3';",
    )
    .await
    .expect("functions");
    cluster
        .wait_replicas_caught_up(std::time::Duration::from_secs(10))
        .expect("caught up");
    assert_eq!(
        port_simple(&c, "SELECT inet_server_port() FROM (SELECT bump()) s").await,
        primary
    );
    assert_eq!(
        port_simple(&c, "SELECT inet_server_port() FROM (SELECT stable_writer()) s").await,
        primary
    );
    assert_ne!(
        port_simple(
            &c,
            "SELECT inet_server_port() FROM (SELECT harmless_volatile()) s"
        )
        .await,
        primary
    );
    assert_ne!(
        port_simple(&c, "SELECT inet_server_port() FROM (SELECT pure()) s").await,
        primary
    );
    // Hint comments override the classifier.
    assert_eq!(
        port_simple(&c, "/* pgfleet:primary */ SELECT inet_server_port()").await,
        primary
    );
    assert_ne!(
        port_simple(&c, "/* pgfleet:replica */ SELECT inet_server_port()").await,
        primary
    );
    // And the session-wide startup option.
    let dsn = format!(
        "{} options='-c pgfleet.route=primary'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    );
    let pinned = connect(&dsn).await;
    for _ in 0..3 {
        assert_eq!(port_simple(&pinned, "SELECT inet_server_port()").await, primary);
    }
    let bad = format!(
        "{} options='-c pgfleet.route=sideways'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    );
    let Err(err) = try_connect(&bad).await else {
        panic!("a bad pgfleet.route must be refused")
    };
    assert_eq!(err.as_db_error().expect("db error").code().code(), "22023");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transactions_stay_on_one_backend() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let primary = cluster.primary.port;
    let mut c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute("CREATE TABLE acc (id int primary key, bal int); INSERT INTO acc VALUES (1, 100)")
        .await
        .expect("setup");
    // A read-write transaction runs on the primary from BEGIN to COMMIT, and sees its own writes.
    let tx = c.transaction().await.expect("begin");
    tx.execute("UPDATE acc SET bal = bal - 10 WHERE id = 1", &[])
        .await
        .expect("update");
    let row = tx
        .query_one("SELECT bal, inet_server_port() FROM acc WHERE id = 1", &[])
        .await
        .expect("read");
    assert_eq!(row.get::<_, i32>(0), 90);
    assert_eq!(row.get::<_, i32>(1) as u16, primary);
    tx.commit().await.expect("commit");
    // BEGIN READ ONLY may run on a replica, and every statement in it runs on the same one.
    c.batch_execute("BEGIN READ ONLY").await.expect("begin ro");
    let first = port_simple(&c, "SELECT inet_server_port()").await;
    assert_ne!(first, primary, "read-only transaction on a replica");
    for _ in 0..4 {
        assert_eq!(
            port_simple(&c, "SELECT inet_server_port()").await,
            first,
            "one backend per transaction"
        );
    }
    c.batch_execute("COMMIT").await.expect("commit ro");
    // An aborted transaction stays where it is until ROLLBACK.
    c.batch_execute("BEGIN").await.expect("begin");
    let _ = c.simple_query("SELECT 1/0").await.expect_err("division by zero");
    let err = c.simple_query("SELECT 1").await.expect_err("aborted");
    assert_eq!(err.as_db_error().expect("db").code().code(), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_ne!(
        port_simple(&c, "SELECT inet_server_port()").await,
        primary,
        "reads go back to replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_state_follows_the_session() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let primary = cluster.primary.port;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    // SET is replayed on every backend the session uses.
    c.batch_execute("SET application_name = 'fleet-test'; SET work_mem = '7MB'")
        .await
        .expect("set");
    for _ in 0..4 {
        let rows = c
            .simple_query("SELECT current_setting('application_name') || ' ' || current_setting('work_mem')")
            .await
            .expect("show");
        let value = rows.iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        });
        assert_eq!(value.as_deref(), Some("fleet-test 7MB"));
    }
    // A SET rolled back with its transaction is not replayed.
    c.batch_execute("BEGIN; SET work_mem = '9MB'; ROLLBACK")
        .await
        .expect("rolled back set");
    for _ in 0..2 {
        let row = c
            .query_one("SELECT current_setting('work_mem')", &[])
            .await
            .expect("show");
        assert_eq!(row.get::<_, String>(0), "7MB");
    }
    c.batch_execute("RESET work_mem").await.expect("reset");
    for _ in 0..2 {
        let row = c
            .query_one("SELECT current_setting('work_mem')", &[])
            .await
            .expect("show");
        assert_eq!(row.get::<_, String>(0), "4MB");
    }
    // Named prepared statements run wherever the Execute goes.
    let stmt = c
        .prepare("SELECT inet_server_port(), $1::int + 1")
        .await
        .expect("prepare");
    let mut ports = HashSet::new();
    for i in 0..6 {
        let row = c.query_one(&stmt, &[&i]).await.expect("execute");
        assert_eq!(row.get::<_, i32>(1), i + 1);
        ports.insert(row.get::<_, i32>(0) as u16);
    }
    assert_eq!(
        ports.len(),
        2,
        "the prepared statement ran on both replicas: {ports:?}"
    );
    assert!(!ports.contains(&primary));
    // A temp table pins the session to the primary.
    c.batch_execute("CREATE TEMP TABLE scratch (x int); INSERT INTO scratch VALUES (42)")
        .await
        .expect("temp");
    for _ in 0..3 {
        let row = c
            .query_one("SELECT x, inet_server_port() FROM scratch", &[])
            .await
            .expect("temp read");
        assert_eq!(row.get::<_, i32>(0), 42);
        assert_eq!(row.get::<_, i32>(1) as u16, primary);
    }
}

const IDS: [i32; 50] = {
    let mut a = [0; 50];
    let mut i = 0;
    while i < 50 {
        a[i] = i as i32;
        i += 1;
    }
    a
};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copy_errors_and_pipelining() {
    use bytes::Bytes;
    use futures_util::{SinkExt, TryStreamExt, pin_mut};
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute("CREATE TABLE items (id int primary key, name text)")
        .await
        .expect("create");
    // COPY FROM STDIN goes to the primary.
    let sink = c.copy_in("COPY items FROM STDIN").await.expect("copy in");
    pin_mut!(sink);
    let mut data = String::new();
    for i in 0..1000 {
        data.push_str(&format!("{i}\titem {i}\n"));
    }
    sink.send(Bytes::from(data)).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 1000);
    cluster
        .wait_replicas_caught_up(std::time::Duration::from_secs(10))
        .expect("caught up");
    // COPY TO STDOUT streams back.
    let stream = c
        .copy_out("COPY (SELECT * FROM items ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<Bytes> = stream.try_collect().await.expect("collect");
    let text: Vec<u8> = chunks.concat();
    assert_eq!(text.iter().filter(|b| **b == b'\n').count(), 1000);
    // Errors carry every field.
    let err = c
        .execute("INSERT INTO items VALUES (1, 'dup')", &[])
        .await
        .expect_err("duplicate");
    let db = err.as_db_error().expect("db error");
    assert_eq!(db.code().code(), "23505");
    assert!(
        db.detail().unwrap_or("").contains("(id)=(1)"),
        "detail forwarded: {:?}",
        db.detail()
    );
    assert_eq!(db.constraint(), Some("items_pkey"));
    // Several extended-protocol queries in flight at once (tokio-postgres pipelines them).
    let s = c
        .prepare("SELECT name FROM items WHERE id = $1")
        .await
        .expect("prepare");
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> = IDS
        .iter()
        .map(|i| [i as &(dyn tokio_postgres::types::ToSql + Sync)])
        .collect();
    let futs: Vec<_> = params.iter().map(|p| c.query_one(&s, p)).collect();
    let rows = futures_util::future::join_all(futs).await;
    for (i, r) in rows.into_iter().enumerate() {
        assert_eq!(r.expect("row").get::<_, String>(0), format!("item {i}"));
    }
    // Binary results for a few types.
    let row = c
        .query_one(
            "SELECT 1.5::float8, 'x'::bytea, ARRAY[1,2]::int4[], true, 12345678901::int8",
            &[],
        )
        .await
        .expect("binary");
    assert_eq!(row.get::<_, f64>(0), 1.5);
    assert_eq!(row.get::<_, Vec<u8>>(1), b"x".to_vec());
    assert_eq!(row.get::<_, Vec<i32>>(2), vec![1, 2]);
    assert!(row.get::<_, bool>(3));
    assert_eq!(row.get::<_, i64>(4), 12345678901);
    // Empty query.
    let msgs = c.simple_query("").await.expect("empty query");
    assert!(msgs.iter().all(|m| !matches!(m, SimpleQueryMessage::Row(_))));
}
