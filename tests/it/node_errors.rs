//! A node's own errors reach the client: when PostgreSQL ends the node session that holds a client's
//! transaction (idle_in_transaction_session_timeout, pg_terminate_backend), the client gets that FATAL, as
//! sent, and its connection is closed, as it would be talking to PostgreSQL directly; under session and
//! transaction pooling alike. A node session that held nothing of the client's ends unnoticed.

use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, LocalCluster, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use crate::support::raw::{Raw, data_rows};
use crate::support::{one, wait_until};

const TXN: &str = "[pool]\nmode = \"transaction\"\n";
const IDLE_TIMEOUT_MESSAGE: &str = "terminating connection due to idle-in-transaction timeout";
const TERMINATED_MESSAGE: &str = "terminating connection due to administrator command";

/// A tokio-postgres client whose connection task hands back how the connection ended.
async fn connect_watched(
    dsn: &str,
) -> (
    tokio_postgres::Client,
    tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
) {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to `{dsn}` failed: {e}"));
    (client, tokio::spawn(connection))
}

/// Whether the primary still has a backend with this pid.
fn alive_on_primary(cluster: &LocalCluster, pid: i32) -> bool {
    let sql = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid}");
    let n = cluster
        .psql(&cluster.primary, "postgres", &sql)
        .expect("pg_stat_activity on the primary");
    n.trim() != "0"
}

/// The SQLSTATE and message a connection task ended with; it must have ended with a server error.
async fn ended_with(
    task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>,
    what: &str,
) -> (String, String) {
    let ended = tokio::time::timeout(Duration::from_secs(20), task)
        .await
        .unwrap_or_else(|_| panic!("{what}: the connection did not end"))
        .expect("connection task");
    let e = ended.expect_err(&format!("{what}: the connection ends with the node's error"));
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("{what}: not a server error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

/// BEGIN and a statement on the primary; returns the pid of the node backend holding the transaction.
/// Simple queries only: an extended-protocol query would leave its unnamed statement's Close in flight
/// after the answer, and a backend that exits with that Close unread makes its kernel answer with a
/// reset, which can overtake the FATAL on the client's side (seen against PostgreSQL itself).
async fn open_transaction(client: &tokio_postgres::Client) -> i32 {
    client.batch_execute("BEGIN").await.expect("begin");
    let rows = client
        .simple_query("SELECT pg_backend_pid()")
        .await
        .expect("pid in the transaction");
    let pid = rows.iter().find_map(|m| match m {
        tokio_postgres::SimpleQueryMessage::Row(row) => row.get(0).map(str::to_owned),
        _ => None,
    });
    pid.expect("a row with the pid")
        .parse()
        .expect("the pid is a number")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ending_the_clients_transaction_passes_its_fatal_and_closes_the_client() {
    let cluster = cluster_async().await;
    let session = Proxy::start(&cluster, "");
    let transaction = Proxy::start(&cluster, TXN);
    let direct = cluster.primary.dsn(APP_USER, PASSWORD, APP_DB);
    let targets = [
        ("PostgreSQL itself", direct),
        ("session pooling", session.dsn(APP_USER, PASSWORD, APP_DB)),
        ("transaction pooling", transaction.dsn(APP_USER, PASSWORD, APP_DB)),
    ];
    for (what, dsn) in &targets {
        // The node's idle_in_transaction_session_timeout: the FATAL arrives while the client is idle.
        let (client, task) = connect_watched(dsn).await;
        let pid = open_transaction(&client).await;
        client
            .batch_execute("SET idle_in_transaction_session_timeout = '500ms'")
            .await
            .expect("set the node's timeout");
        assert!(
            wait_until(Duration::from_secs(30), async || !alive_on_primary(&cluster, pid))
                .await
                .is_some(),
            "{what}: the node never timed the transaction out"
        );
        let (code, message) = ended_with(task, what).await;
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("25P03", IDLE_TIMEOUT_MESSAGE),
            "{what}"
        );
        let next = client.simple_query("SELECT 1").await.expect_err("closed");
        assert!(
            next.is_closed(),
            "{what}: a further query fails as closed: {next}"
        );

        // An administrator's pg_terminate_backend of the node backend.
        let (client, task) = connect_watched(dsn).await;
        let pid = open_transaction(&client).await;
        let killed = cluster
            .psql(
                &cluster.primary,
                "postgres",
                &format!("SELECT pg_terminate_backend({pid})"),
            )
            .expect("terminate");
        assert_eq!(killed.trim(), "t", "{what}");
        let (code, message) = ended_with(task, what).await;
        assert_eq!(
            (code.as_str(), message.as_str()),
            ("57P01", TERMINATED_MESSAGE),
            "{what}"
        );
        let next = client.simple_query("SELECT 1").await.expect_err("closed");
        assert!(
            next.is_closed(),
            "{what}: a further query fails as closed: {next}"
        );
    }

    // Byte for byte with the raw client: the node's FATAL and nothing else (no message of pgfleet's own),
    // then the end of the connection; also when the node is terminated in the middle of a statement.
    for proxy in [&session, &transaction] {
        let mut raw = Raw::connect(proxy.port).await;
        raw.login_app().await;
        raw.simple("BEGIN").await;
        let pid: i32 = data_rows(&raw.simple("SELECT pg_backend_pid()").await)[0]
            .parse()
            .expect("pid");
        raw.simple("SET idle_in_transaction_session_timeout = '300ms'")
            .await;
        // Sent by the node at once, as PostgreSQL sends it: the client need not ask.
        let message = raw.expect_fatal("25P03").await;
        assert_eq!(message, IDLE_TIMEOUT_MESSAGE);
        assert!(!alive_on_primary(&cluster, pid));

        let mut raw = Raw::connect(proxy.port).await;
        raw.login_app().await;
        raw.simple("BEGIN").await;
        let pid: i32 = data_rows(&raw.simple("SELECT pg_backend_pid()").await)[0]
            .parse()
            .expect("pid");
        raw.send(&pgfleet::protocol::messages::query("SELECT pg_sleep(60)"))
            .await;
        let running = format!("SELECT count(*) FROM pg_stat_activity WHERE pid = {pid} AND state = 'active'");
        assert!(
            wait_until(Duration::from_secs(20), async || {
                cluster
                    .psql(&cluster.primary, "postgres", &running)
                    .is_ok_and(|n| n.trim() == "1")
            })
            .await
            .is_some(),
            "the sleep never started"
        );
        cluster
            .psql(
                &cluster.primary,
                "postgres",
                &format!("SELECT pg_terminate_backend({pid})"),
            )
            .expect("terminate");
        // PostgreSQL describes the result before it runs the statement.
        let (kind, _) = raw.frame().await.expect("RowDescription");
        assert_eq!(kind, b'T');
        let message = raw.expect_fatal("57P01").await;
        assert_eq!(message, TERMINATED_MESSAGE);
    }
    for proxy in [&session, &transaction] {
        let log = proxy.log_contents();
        assert!(!log.contains("panicked"), "pgfleet panicked:\n{log}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_ending_a_connection_that_held_nothing_goes_unnoticed() {
    let cluster = cluster_async().await;
    for (what, extra) in [("session pooling", ""), ("transaction pooling", TXN)] {
        let proxy = Proxy::start(&cluster, extra);
        let app = format!("idle-victim-{}", proxy.port);
        let dsn = format!("{} application_name={app}", proxy.dsn(APP_USER, PASSWORD, APP_DB));
        let client = connect(&dsn).await;
        client
            .batch_execute("CREATE TABLE IF NOT EXISTS idle_victims (n int)")
            .await
            .expect("create");
        // Connections on the primary (the write) and on a replica (a read), then idle.
        client
            .execute("INSERT INTO idle_victims VALUES (1)", &[])
            .await
            .expect("insert");
        assert_eq!(one(&client, "SELECT 2").await, "2");
        let count = format!("SELECT count(*) FROM pg_stat_activity WHERE application_name = '{app}'");
        let terminate = format!(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity WHERE application_name = '{app}'"
        );
        let mut terminated = 0;
        for node in cluster.nodes() {
            terminated += cluster
                .psql(node, "postgres", &terminate)
                .expect("terminate")
                .trim()
                .parse::<i64>()
                .expect("count");
        }
        assert!(terminated >= 1, "{what}: pgfleet kept a connection with {app}");
        assert!(
            wait_until(Duration::from_secs(20), async || {
                cluster
                    .nodes()
                    .all(|n| cluster.psql(n, "postgres", &count).is_ok_and(|c| c.trim() == "0"))
            })
            .await
            .is_some(),
            "{what}: the terminated backends never went away"
        );
        // No error: pgfleet connects again.
        let n: i64 = client
            .query_one("SELECT count(*) FROM idle_victims", &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: read after the node ended an idle connection: {e}"))
            .get(0);
        assert!(n >= 1, "{what}");
        client
            .execute("INSERT INTO idle_victims VALUES (2)", &[])
            .await
            .unwrap_or_else(|e| panic!("{what}: write after the node ended an idle connection: {e}"));
    }
}
