//! Real client drivers through a sharded pgfleet: psycopg 3 and psycopg2 (Python, libpq underneath) and
//! pgjdbc (Java, its own protocol implementation), each in front of two shards. Each
//! driver runs a program from `tests/clients/` (`sharded_psycopg.py`, `ShardedJdbcCheck.java`) that creates
//! the sharded `accounts` table and the reference table `branches` through pgfleet, then inserts and reads by
//! key with bound parameters, runs transactions across the shards (commit, rollback, an error on one shard),
//! reads across shards (count, sum, ORDER BY ... LIMIT, prepared and re-executed past the drivers' prepare
//! thresholds), writes many rows with executemany / a JDBC batch, and loads rows with the driver's COPY API.
//! The program checks every answer and exits non-zero listing the failed checks; this module then checks on
//! each shard primary directly that the DDL ran there and that every row sits on the shard PostgreSQL's
//! hash partitioning names for its key, and that nothing was left prepared.
//!
//! Each shard has a streaming replica: reads by key and across shards go to the replicas the consistency level
//! allows, so the checks also prove that a session's reads see its own writes across shards.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use pgfleet::shard::hash::shard_for;
use pgfleet::shard::value::KeyValue;

use crate::support::clients::{INSTALL_HINT, clients_dir, require_in_path, run};
use crate::support::cluster::{APP_DB, APP_USER, PASSWORD};
use crate::support::proxy::Proxy;
use crate::support::shards::ShardedFleet;

const SHARDED_TABLES: &str = "[[sharded_tables]]\nname = \"accounts\"\ncolumn = \"id\"\n";
/// A whole client program takes a few seconds; this is ample.
const PROGRAM_TIMEOUT: Duration = Duration::from_secs(240);
/// The pgjdbc jar of Debian's libpostgresql-jdbc-java.
const PGJDBC_JAR: &str = "/usr/share/java/postgresql-42.5.5.jar";

/// The shard pgfleet must place `id` on.
fn shard_of(id: i64) -> usize {
    shard_for(&KeyValue::Int(id), 2).index()
}

/// Two accounts the programs' transactions update: the first id on shard 0 and the first on shard 1.
fn pair() -> (i64, i64) {
    let a = (1..).find(|id| shard_of(*id) == 0).expect("an id on shard 0");
    let b = (1..).find(|id| shard_of(*id) == 1).expect("an id on shard 1");
    (a, b)
}

/// The ids every program inserts: single rows, executemany / batch, COPY; and `extra`, the ids of a
/// driver's own checks.
fn inserted_ids(extra: &[i64]) -> BTreeSet<i64> {
    (1..=40)
        .chain(101..=130)
        .chain(201..=260)
        .chain(extra.iter().copied())
        .collect()
}

/// The ids of 101..=140 (executemany and batches) on shard 0, comma-separated, for the programs to send
/// one batch per shard.
fn shard0_batch_ids() -> String {
    (101..=140i64)
        .filter(|id| shard_of(*id) == 0)
        .map(|id| id.to_string())
        .collect::<Vec<_>>()
        .join(",")
}

/// Runs a client program and fails with its output and pgfleet's log when it does not exit 0.
fn run_program(cmd: Command, proxy: &Proxy, what: &str) -> String {
    let done = run(cmd, PROGRAM_TIMEOUT);
    println!("{}", done.stdout);
    assert!(
        done.status.success(),
        "{what} reported failures: {done}\n--- pgfleet log ({}) tail ---\n{}",
        proxy.log_path.display(),
        proxy.log_tail(80)
    );
    done.stdout
}

/// What the program left on the shards, read on each shard primary directly: both tables exist on both
/// shards, each shard holds exactly the inserted ids placement gives it, the reference table is the same
/// everywhere, the transfer between the two shards is applied on both and nothing is left prepared.
fn check_shards(fleet: &ShardedFleet, ids: BTreeSet<i64>) {
    let (a, b) = pair();
    let mut total = 0;
    for shard in 0..2 {
        assert_eq!(
            fleet
                .on_primary(
                    shard,
                    APP_DB,
                    "SELECT to_regclass('accounts') IS NOT NULL AND to_regclass('branches') IS NOT NULL"
                )
                .trim(),
            "t",
            "the DDL sent through pgfleet created both tables on shard {shard}"
        );
        let held: BTreeSet<i64> = fleet
            .on_primary(shard, APP_DB, "SELECT id FROM accounts ORDER BY id")
            .lines()
            .map(|l| l.trim().parse().expect("an id"))
            .collect();
        let expected: BTreeSet<i64> = ids.iter().copied().filter(|id| shard_of(*id) == shard).collect();
        assert_eq!(held, expected, "shard {shard} holds the ids placement gives it");
        assert!(
            held.len() > 40,
            "shard {shard} holds a fair share: {}",
            held.len()
        );
        total += held.len();
        // PostgreSQL's own hash partitioning agrees with pgfleet's placement for every row.
        let check = format!(
            "CREATE TEMP TABLE placement_check (id bigint) PARTITION BY HASH (id);\n\
             SELECT count(*) FILTER (WHERE NOT satisfies_hash_partition('placement_check'::regclass, 2, {shard}, id)) \
             FROM accounts;"
        );
        let out = fleet.on_primary(shard, APP_DB, &check);
        assert_eq!(
            out.lines().last().map(str::trim),
            Some("0"),
            "rows on shard {shard} that PostgreSQL's hash partitioning puts elsewhere: {out}"
        );
        assert_eq!(
            fleet
                .on_primary(
                    shard,
                    APP_DB,
                    "SELECT string_agg(id || ':' || name, ',' ORDER BY id) FROM branches"
                )
                .trim(),
            "1:north,2:south",
            "the reference table on shard {shard}"
        );
        assert_eq!(
            fleet
                .on_primary(shard, APP_DB, "SELECT count(*) FROM pg_prepared_xacts")
                .trim(),
            "0",
            "prepared transactions left on shard {shard}"
        );
    }
    assert_eq!(total, ids.len());
    assert_eq!(
        fleet
            .on_primary(0, APP_DB, &format!("SELECT balance FROM accounts WHERE id = {a}"))
            .trim(),
        "90",
        "the committed transfer's debit on shard 0"
    );
    assert_eq!(
        fleet
            .on_primary(1, APP_DB, &format!("SELECT balance FROM accounts WHERE id = {b}"))
            .trim(),
        "110",
        "the committed transfer's credit on shard 1"
    );
}

/// The Python interpreter: `$PYTHON`, else `python3` on PATH.
fn python() -> String {
    std::env::var("PYTHON").unwrap_or_else(|_| {
        require_in_path("python3", "Python 3");
        "python3".to_owned()
    })
}

async fn python_driver(module: &str, package: &str, ids: BTreeSet<i64>) -> String {
    let mut probe = Command::new(python());
    probe.args(["-c", &format!("import {module}")]);
    let done = run(probe, Duration::from_secs(60));
    assert!(
        done.status.success(),
        "the Python module `{module}` (pip package {package}) is not importable; {INSTALL_HINT}\n{done}"
    );
    let fleet = ShardedFleet::start(2, 1).await;
    let proxy = fleet.proxy(SHARDED_TABLES);
    let (a, b) = pair();
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("sharded_psycopg.py"))
        .arg(module)
        .arg(proxy.dsn(APP_USER, PASSWORD, APP_DB))
        .args([a.to_string(), b.to_string(), shard0_batch_ids()])
        .env("PYTHONUNBUFFERED", "1")
        .env("PYTHONDONTWRITEBYTECODE", "1");
    let out = run_program(cmd, &proxy, &format!("sharded_psycopg.py {module}"));
    check_shards(&fleet, ids);
    out
}

/// psycopg 3: server-side parameters (extended protocol), statements prepared server-side from their fifth
/// execution, executemany as one pipeline, `cursor.copy()`.
///
/// From the sixth execution psycopg 3 Binds a statement it prepared in an earlier request; reads across shards
/// whose text pgfleet rewrites for the merge (`avg`, `OFFSET`) are answered then too, with no refusal. An
/// executemany whose rows belong to both shards (one pipeline, one Sync) runs each row on its shard in one
/// transaction across them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg3_through_a_sharded_pgfleet() {
    let out = python_driver("psycopg", "psycopg[binary]", inserted_ids(&[])).await;
    let found: Vec<&str> = out.lines().filter(|l| l.starts_with("FINDING")).collect();
    assert!(found.is_empty(), "psycopg 3 met refusals:\n{out}");
}

/// psycopg2: parameters bound by the client, simple query protocol (every read across shards is merged,
/// however often it runs), executemany as one statement per row, execute_values as one multi-row INSERT
/// split over the shards, `copy_expert`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psycopg2_through_a_sharded_pgfleet() {
    let out = python_driver(
        "psycopg2",
        "psycopg2-binary",
        inserted_ids(&(131..=140).collect::<Vec<_>>()),
    )
    .await;
    assert!(!out.contains("FINDING"), "psycopg2 met no refusal:\n{out}");
}

/// pgjdbc with its default `prepareThreshold` (5): PreparedStatements for every statement, named
/// server-side statements from the fifth execution, autocommit off for the transactions, executeBatch,
/// CopyManager.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jdbc_through_a_sharded_pgfleet() {
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
        .arg(clients_dir().join("ShardedJdbcCheck.java"));
    run(compile, Duration::from_secs(180)).expect_success("javac ShardedJdbcCheck.java");

    let fleet = ShardedFleet::start(2, 1).await;
    let proxy = fleet.proxy(SHARDED_TABLES);
    let (a, b) = pair();
    let url = format!("jdbc:postgresql://127.0.0.1:{}/{APP_DB}", proxy.port);
    let mut cmd = Command::new(java);
    cmd.arg("-cp")
        .arg(format!("{}:{PGJDBC_JAR}", classes.path().display()))
        .arg("ShardedJdbcCheck")
        .args([url.as_str(), APP_USER, PASSWORD])
        .args([a.to_string(), b.to_string(), shard0_batch_ids()]);
    let out = run_program(cmd, &proxy, "ShardedJdbcCheck");
    check_shards(&fleet, inserted_ids(&[]));
    // No refusal: from the sixth execution pgjdbc Binds its named statement without Parse or Describe and,
    // by default, asks for binary results of the types it knows (bigint, numeric), which pgfleet encodes after
    // merging text; statements whose text pgfleet rewrites (avg, OFFSET) are parsed again on the shards.
    let found: Vec<&str> = out.lines().filter(|l| l.starts_with("FINDING")).collect();
    assert!(found.is_empty(), "pgjdbc met refusals:\n{out}");
}
