//! pgfleet driven by real client drivers: psycopg 3 and psycopg2 (Python, libpq underneath) and pgjdbc (Java,
//! its own protocol implementation). Each driver runs a program from `tests/clients/` against a real pgfleet in
//! front of a primary and two streaming replicas; the program checks results and which node served each
//! statement, and exits non-zero listing every failed check. node-postgres with its cursor and streaming
//! packages checks the pipelined Flush/Execute traffic those packages send. A missing driver fails the test with a pointer to
//! `scripts/install-test-deps.sh`: these tests never skip.

use crate::support::clients as common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::Proxy;
use common::{INSTALL_HINT, clients_dir, require_in_path, run};
use localcluster::LocalCluster;

/// A whole client program, cancels and notification waits included, takes a few seconds; this is ample.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(240);
/// Where Debian's libpostgresql-jdbc-java puts the driver.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql.jar";

/// The Python interpreter: `$PYTHON`, else `python3` on PATH.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| {
        require_in_path("python3", "Python 3");
        "python3".to_owned()
    })
}

/// Fails the test unless `module` imports in [`python`].
fn require_python_module(module: &str, package: &str) {
    let mut cmd = Command::new(python());
    cmd.args(["-c", &format!("import {module}")]);
    let done = run(cmd, Duration::from_secs(60));
    assert!(
        done.status.success(),
        "the Python module `{module}` (pip package {package}) is not importable by {}; {INSTALL_HINT}\n{done}",
        python()
    );
}

/// The ports the programs compare `inet_server_port()` with: primary, then every replica.
fn port_args(cluster: &LocalCluster) -> Vec<String> {
    std::iter::once(cluster.primary.port)
        .chain(cluster.replicas.iter().map(|r| r.port))
        .map(|p| p.to_string())
        .collect()
}

/// Runs a client program and fails with its output and pgfleet's log when it does not exit 0.
fn run_program(cmd: Command, proxy: &Proxy, what: &str) {
    let done = run(cmd, PROGRAM_TIMEOUT);
    // Shown by `cargo test -- --nocapture`, and on failure below.
    println!("{}", done.stdout);
    assert!(
        done.status.success(),
        "{what} reported failures: {done}\n--- pgfleet log ({}) tail ---\n{}",
        proxy.log_path.display(),
        proxy.log_tail(80)
    );
}

async fn python_driver(script: &str, module: &str, package: &str) {
    require_python_module(module, package);
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join(script))
        .arg(proxy.dsn(APP_USER, PASSWORD, APP_DB))
        .args(port_args(&cluster))
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    run_program(cmd, &proxy, script);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3() {
    python_driver("psycopg3_check.py", "psycopg", "psycopg[binary]").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2() {
    python_driver("psycopg2_check.py", "psycopg2", "psycopg2-binary").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc() {
    let javac = require_in_path("javac", "the Java compiler");
    let java = require_in_path("java", "the Java runtime");
    assert!(
        Path::new(PGJDBC_JAR).is_file(),
        "the PostgreSQL JDBC driver {PGJDBC_JAR} (Debian package libpostgresql-jdbc-java) is missing; {INSTALL_HINT}"
    );
    let classes = tempfile::tempdir().expect("temp dir for classes");
    let mut compile = Command::new(javac);
    compile
        .args(["-cp", PGJDBC_JAR, "-d"])
        .arg(classes.path())
        .arg(clients_dir().join("JdbcCheck.java"));
    run(compile, Duration::from_secs(180)).expect_success("javac JdbcCheck.java");

    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let url = format!(
        "jdbc:postgresql://127.0.0.1:{}/{APP_DB}?prepareThreshold=3",
        proxy.port
    );
    let mut cmd = Command::new(java);
    cmd.arg("-cp")
        .arg(format!("{}:{PGJDBC_JAR}", classes.path().display()))
        .arg("JdbcCheck")
        .args([url.as_str(), APP_USER, PASSWORD])
        .args(port_args(&cluster));
    run_program(cmd, &proxy, "JdbcCheck");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_cursor_and_stream() {
    let mut cmd = common::node_command(&["pg", "pg-cursor", "pg-query-stream"]);
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    cmd.arg("cursor_check.js")
        .arg(proxy.url(APP_USER, PASSWORD, APP_DB))
        .arg("40");
    run_program(cmd, &proxy, "cursor_check.js");
}

/// node-postgres' `connect()` followed at once by `end()` sends Terminate before the startup packet;
/// PostgreSQL closes that connection without an answer, so the client reports no error, and nor may pgfleet
/// make it report one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_end_right_after_connect() {
    let mut cmd = common::node_command(&["pg"]);
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    cmd.arg("end_at_once.js")
        .arg(proxy.url(APP_USER, PASSWORD, APP_DB))
        .arg("5");
    run_program(cmd, &proxy, "end_at_once.js");
}
