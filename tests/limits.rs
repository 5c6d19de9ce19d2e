//! Client limits: each refused or closed client gets the SQLSTATE PostgreSQL would use and a message naming
//! the limit, and other clients go on.

mod support;

use std::time::Duration;

use support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use support::proxy::{Proxy, connect, free_port, try_connect};

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_and_per_user_limits() {
    let cluster = cluster_async().await;
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "")
        .replacen("[listen]\n", "[listen]\nmax_clients = 3\n", 1)
        .replacen(
            "password = \"secret\"\n",
            "password = \"secret\"\nmax_connections = 2\n",
            1,
        );
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let a = connect(&dsn).await;
    let b = connect(&dsn).await;
    let Err(e) = try_connect(&dsn).await else {
        panic!("a third session of app was accepted")
    };
    assert_eq!(code(&e), "53300");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.message(), "too many connections for role \"app\"");
    assert!(db.detail().unwrap_or("").contains("max_connections"), "{db:?}");
    // The others go on, and a slot frees when a client leaves.
    a.batch_execute("SELECT 1").await.expect("a still works");
    drop(b);
    tokio::time::sleep(Duration::from_millis(300)).await;
    let _c = connect(&dsn).await;
    drop((a, _c));
    // listen.max_clients counts every user's sessions.
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "").replacen("[listen]\n", "[listen]\nmax_clients = 1\n", 1);
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let _only = connect(&dsn).await;
    let Err(e) = try_connect(&dsn).await else {
        panic!("max_clients = 1 let a second client in")
    };
    assert_eq!(code(&e), "53300");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.message(), "sorry, too many clients already");
    assert!(db.detail().unwrap_or("").contains("listen.max_clients"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_and_idle_transactions_are_closed() {
    let cluster = cluster_async().await;
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "").replacen(
        "[listen]\n",
        "[listen]\nclient_idle_timeout = \"1s\"\nidle_in_transaction_timeout = \"500ms\"\n",
        1,
    );
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let c = connect(&dsn).await;
    c.batch_execute("CREATE TABLE held (x int); INSERT INTO held VALUES (1)")
        .await
        .expect("setup");
    // Idle in a transaction holding a row lock: closed after 500 ms, and the lock goes with it.
    let t = connect(&dsn).await;
    t.batch_execute("BEGIN; SELECT * FROM held FOR UPDATE")
        .await
        .expect("lock");
    tokio::time::sleep(Duration::from_millis(900)).await;
    let e = t
        .batch_execute("COMMIT")
        .await
        .expect_err("closed by idle_in_transaction_timeout");
    if e.as_db_error().is_some() {
        assert_eq!(code(&e), "25P03");
    }
    let free = cluster.psql(&cluster.primary, APP_DB, "SELECT x FROM held FOR UPDATE NOWAIT");
    assert!(free.is_ok(), "the row lock outlived its session: {free:?}");
    // Idle between transactions: closed after 1 s; a busy client is not.
    drop(c);
    let busy = connect(&dsn).await;
    let idle = connect(&dsn).await;
    for _ in 0..6 {
        busy.batch_execute("SELECT 1")
            .await
            .expect("busy client keeps working");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let e = idle
        .batch_execute("SELECT 1")
        .await
        .expect_err("closed by client_idle_timeout");
    if e.as_db_error().is_some() {
        assert_eq!(code(&e), "57P05");
    }
    assert!(proxy.log_contents().contains("listen.client_idle_timeout") || e.as_db_error().is_none());
}
