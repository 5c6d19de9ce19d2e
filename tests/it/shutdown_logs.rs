//! Graceful shutdown (SIGINT/SIGTERM), the JSON log format, and `worker_threads` (checked on the same
//! process, which these tests start with a config of their own).

use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use crate::support::raw::Raw;

/// How many threads run sessions, as pgfleet's start-up line says (`workers=N`, or `"workers":N` in JSON).
fn runtime_workers(proxy: &Proxy) -> usize {
    assert!(
        proxy.wait_for_log("pgfleet listening", Duration::from_secs(10)),
        "no start-up line:\n{}",
        proxy.log_tail(20)
    );
    let log = proxy.log_contents();
    let line = log
        .lines()
        .find(|l| l.contains("pgfleet listening"))
        .expect("start-up line");
    let at = line.find("workers").expect("workers field") + "workers".len();
    let digits: String = line[at..]
        .trim_start_matches(|c: char| !c.is_ascii_digit())
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().unwrap_or_else(|_| panic!("workers in: {line}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_lets_open_transactions_finish_then_closes_with_57p01() {
    let cluster = cluster_async().await;
    let port = free_port();
    let config = format!(
        "shutdown_timeout = \"4s\"\nworker_threads = 1\n{}",
        Proxy::config_for(
            &cluster,
            port,
            "[log]\nformat = \"json\"\n\n[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n"
        )
    );
    let mut proxy = Proxy::start_with_config(config);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    assert_eq!(
        runtime_workers(&proxy),
        1,
        "worker_threads = 1 runs one session thread"
    );
    let setup = connect(&dsn).await;
    setup
        .batch_execute("CREATE TABLE s (x int)")
        .await
        .expect("create");
    // Raw clients: pgfleet ends these sessions with an unprompted FATAL, which a driver reports only on its
    // connection task; read here, it is both the assertion and the sign that the shutdown has begun.
    let mut idle = Raw::connect(proxy.port).await;
    idle.login_app().await;
    let mut busy = Raw::connect(proxy.port).await;
    busy.login_app().await;
    // An admin console session between commands is closed like any idle session, not left to hold the
    // shutdown until shutdown_timeout.
    let mut console = Raw::connect(proxy.port).await;
    console
        .login("admin", "adminpw", "pgfleet")
        .await
        .expect("console login");
    let opened = busy.simple("BEGIN; INSERT INTO s VALUES (1)").await;
    assert!(
        opened.iter().all(|(kind, _)| *kind != b'E'),
        "open transaction: {opened:?}"
    );
    let started = Instant::now();
    proxy.signal("TERM");
    // A session between transactions is closed at once, as PostgreSQL does on a fast shutdown.
    idle.expect_fatal("57P01").await;
    console.expect_fatal("57P01").await;
    // No new sessions (the listener is closed before the sessions are told).
    assert!(
        try_connect(&dsn).await.is_err(),
        "a new client was accepted during shutdown"
    );
    // The open transaction may finish, and its commit is kept; then its session is closed the same way.
    let committed = busy.simple("INSERT INTO s VALUES (2); COMMIT").await;
    assert!(
        committed.iter().all(|(kind, _)| *kind != b'E'),
        "commit during shutdown: {committed:?}"
    );
    busy.expect_fatal("57P01").await;
    let status = proxy.signal_and_wait("TERM", Duration::from_secs(6));
    assert!(status.is_some(), "pgfleet did not exit");
    assert!(started.elapsed() < Duration::from_secs(6));
    let rows = cluster
        .psql(&cluster.primary, APP_DB, "SELECT count(*) FROM s")
        .expect("count");
    assert_eq!(rows.trim(), "2", "the committed transaction was kept");
    // log.format = "json": every log line is a JSON object.
    let log = proxy.log_contents();
    let lines: Vec<&str> = log.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!lines.is_empty());
    for l in lines {
        assert!(l.starts_with('{') && l.ends_with('}'), "not a JSON log line: {l}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_past_shutdown_timeout_is_closed() {
    let cluster = cluster_async().await;
    let port = free_port();
    let config = format!(
        "shutdown_timeout = \"1s\"\n{}",
        Proxy::config_for(&cluster, port, "")
    );
    let mut proxy = Proxy::start_with_config(config);
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    assert_eq!(
        runtime_workers(&proxy),
        cores.div_ceil(2),
        "by default a session worker for every two cores, at least one"
    );
    let busy = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    busy.batch_execute("BEGIN; SELECT 1")
        .await
        .expect("open transaction");
    let started = Instant::now();
    let status = proxy.signal_and_wait("INT", Duration::from_secs(5));
    assert!(status.is_some(), "pgfleet did not exit after shutdown_timeout");
    assert!(
        started.elapsed() >= Duration::from_millis(900),
        "it did not wait for the transaction"
    );
    assert!(busy.simple_query("SELECT 1").await.is_err());
}

/// Runs a statement holding `secret` as a literal in both protocols (the extended one with `secret` as a
/// parameter value too), in a shape of its own (`run`), so that the router classifies it afresh rather than
/// answering from its cache.
async fn statements_with_a_secret(client: &tokio_postgres::Client, secret: &str, run: &str) {
    let simple =
        format!("SELECT u AS {run} FROM (VALUES ('alice')) creds(u) WHERE md5('{secret}' || u) IS NOT NULL");
    let rows = client.simple_query(&simple).await.expect("simple query");
    assert!(!rows.is_empty());
    let extended = format!("SELECT $1::text AS {run}_ext, length('{secret}') AS n");
    let row = client
        .query_one(&extended, &[&format!("param-{secret}")])
        .await
        .expect("extended query");
    assert_eq!(row.get::<_, String>(0), format!("param-{secret}"));
}

/// The log of a pgfleet that served those statements: no secret in it, and it is a DEBUG log indeed (its
/// own per-request line is there), so the check is not vacuous.
fn assert_no_literals(proxy: &Proxy, secrets: &[&str]) {
    assert!(
        proxy.wait_for_log("routing request", Duration::from_secs(5)),
        "not logging at DEBUG:\n{}",
        proxy.log_tail(20)
    );
    let log = proxy.log_contents();
    for secret in secrets {
        assert!(
            !log.contains(secret),
            "{secret} reached the log:\n{}",
            log.lines()
                .filter(|l| l.contains(secret))
                .collect::<Vec<_>>()
                .join("\n")
        );
    }
    // The dependencies that print statement text at DEBUG print nothing at all there.
    for dependency in [
        "Parsing sql",
        "preparing query",
        "executing statement",
        "executing simple query",
    ] {
        assert!(!log.contains(dependency), "{dependency} in the log");
    }
}

/// log.level = "debug", then "trace" after a reload, and RUST_LOG asking sqlparser and tokio-postgres for
/// everything: no literal of a client statement, nor a parameter value, reaches pgfleet's log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn debug_logs_hold_no_literals() {
    let cluster = cluster_async().await;
    let port = free_port();
    let config = Proxy::config_for(&cluster, port, "[log]\nlevel = \"debug\"\n");
    let proxy = Proxy::start_with_config(config.clone());
    let client = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    statements_with_a_secret(&client, "UserPlainPw6", "at_debug").await;
    assert_no_literals(&proxy, &["UserPlainPw6"]);

    std::fs::write(
        &proxy.config_path,
        config.replace("level = \"debug\"", "level = \"trace\""),
    )
    .expect("write config");
    proxy.reload();
    assert!(
        proxy.wait_for_log("config reloaded", Duration::from_secs(10)),
        "{}",
        proxy.log_tail(20)
    );
    statements_with_a_secret(&client, "AfterReloadPw7", "at_trace").await;
    assert_no_literals(&proxy, &["UserPlainPw6", "AfterReloadPw7"]);

    let env_proxy = Proxy::start_with_env(
        &cluster,
        "",
        |text| text,
        &[(
            "RUST_LOG",
            "trace,sqlparser=trace,sqlparser::parser=trace,tokio_postgres=trace,[session]=trace",
        )],
    );
    let client = connect(&env_proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    statements_with_a_secret(&client, "RustLogPw8", "with_rust_log").await;
    assert_no_literals(&env_proxy, &["RustLogPw8"]);
}
