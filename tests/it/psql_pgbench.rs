//! pgfleet driven by PostgreSQL's own command-line clients, psql and pgbench, in front of a real primary and
//! two streaming replicas. Every check on a result also checks which node produced it (`inet_server_port()`
//! against the cluster's ports, or the node's own statistics read directly).

use crate::support::clients as common;

use std::collections::HashSet;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::Proxy;
use common::{Finished, parse_port, pg_tool, run};
use localcluster::{LocalCluster, NodeHandle};

const PSQL_TIMEOUT: Duration = Duration::from_secs(60);
const PGBENCH_TIMEOUT: Duration = Duration::from_secs(180);
const CATCH_UP: Duration = Duration::from_secs(30);

/// `psql -X -v ON_ERROR_STOP=1 <url> <args>` run in `cwd`.
fn psql(url: &str, cwd: &Path, args: &[&str]) -> Finished {
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.current_dir(cwd)
        .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", url])
        .args(args);
    run(cmd, PSQL_TIMEOUT)
}

/// [`psql`] that must succeed; returns stdout.
fn psql_ok(url: &str, cwd: &Path, args: &[&str]) -> String {
    psql(url, cwd, args).expect_success("psql through pgfleet").stdout
}

/// Writes `text` to `<dir>/<name>` and returns the path as a string for `-f`.
fn script(dir: &Path, name: &str, text: &str) -> String {
    let path = dir.join(name);
    std::fs::write(&path, text).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
    path.to_string_lossy().into_owned()
}

/// Runs `sql` directly on `node` as the superuser (not through pgfleet).
fn direct(node: &NodeHandle, db: &str, sql: &str) -> String {
    node.psql(db, sql)
        .unwrap_or_else(|e| panic!("{sql} on {}: {e}", node.name))
}

fn replica_ports(cluster: &LocalCluster) -> HashSet<u16> {
    cluster.replicas.iter().map(|r| r.port).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn psql_scripts_copy_notices_notifications_and_errors() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let url = proxy.url(APP_USER, PASSWORD, APP_DB);
    let primary = cluster.primary.port;
    let replicas = replica_ports(&cluster);
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();

    // DDL through psql, then \copy FROM a local CSV file: COPY FROM STDIN runs on the primary.
    psql_ok(
        &url,
        dir,
        &[
            "-q",
            "-c",
            "CREATE TABLE items (id int PRIMARY KEY, name text, qty int)",
        ],
    );
    let mut csv = String::new();
    for i in 1..=200 {
        let name = match i % 5 {
            0 => format!("\"comma, {i}\""),
            1 => format!("\"say \"\"hi\"\" {i}\""),
            2 => "\"\"".to_owned(), // empty string, not NULL
            3 => String::new(),     // NULL
            _ => format!("item {i}"),
        };
        csv.push_str(&format!("{i},{name},{}\n", i * 3));
    }
    std::fs::write(dir.join("in.csv"), &csv).expect("write in.csv");
    let out = psql_ok(&url, dir, &["-c", "\\copy items FROM 'in.csv' CSV"]);
    assert!(out.contains("COPY 200"), "psql reports the copied rows: {out}");
    assert_eq!(
        direct(
            &cluster.primary,
            APP_DB,
            "SELECT count(*), sum(qty), count(name), count(*) FILTER (WHERE name = '') FROM items"
        ),
        format!("200|{}|160|40", 3 * 200 * 201 / 2),
        "the primary holds exactly the copied rows (NULLs and empty strings kept apart)"
    );
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("replicas caught up");

    // \copy (SELECT ...) TO a local file: a read, answered by a replica; the data round-trips byte for byte.
    let out = psql_ok(
        &url,
        dir,
        &[
            "-c",
            "\\copy (SELECT id, name, qty, inet_server_port() FROM items ORDER BY id) TO 'out.csv' CSV",
        ],
    );
    assert!(out.contains("COPY 200"), "{out}");
    let copied = std::fs::read_to_string(dir.join("out.csv")).expect("read out.csv");
    let mut data = String::new();
    let mut copy_ports = HashSet::new();
    for line in copied.lines() {
        let (row, port) = line.rsplit_once(',').expect("a port column");
        copy_ports.insert(parse_port(port, "COPY TO port column"));
        data.push_str(row);
        data.push('\n');
    }
    assert_eq!(data, csv, "COPY TO returns what COPY FROM loaded");
    assert_eq!(copy_ports.len(), 1, "one COPY runs on one node: {copy_ports:?}");
    assert!(
        copy_ports.is_subset(&replicas),
        "COPY (SELECT) TO ran on {copy_ports:?}, not a replica"
    );

    // A describe command (catalog queries) works through the proxy.
    let out = psql_ok(&url, dir, &["-c", "\\d items"]);
    assert!(
        out.contains("\"items_pkey\" PRIMARY KEY, btree (id)"),
        "\\d items:\n{out}"
    );

    // Reads answered by the replicas, round robin over both, within one psql session (-c given repeatedly).
    let read = ["-c", "SELECT inet_server_port()"];
    let args: Vec<&str> = ["-qAt"]
        .into_iter()
        .chain(read.iter().copied().cycle().take(12))
        .collect();
    let out = psql_ok(&url, dir, &args);
    let ports: Vec<u16> = out
        .lines()
        .map(|l| parse_port(l, "SELECT inet_server_port()"))
        .collect();
    assert_eq!(ports.len(), 6, "{out}");
    let seen: HashSet<u16> = ports.iter().copied().collect();
    assert_eq!(
        seen, replicas,
        "psql's reads are spread over both replicas and only them: {ports:?}"
    );

    // A write with RETURNING runs on the primary.
    let out = psql_ok(
        &url,
        dir,
        &[
            "-qAt",
            "-c",
            "INSERT INTO items VALUES (1001, 'returning', 7) RETURNING id, inet_server_port()",
        ],
    );
    assert_eq!(
        out.trim(),
        format!("1001|{primary}"),
        "INSERT ... RETURNING served by the primary"
    );

    // Multi-statement strings are one Query message: with a write in it, all of it runs on the primary,
    // and psql 15 shows every result.
    let out = psql_ok(
        &url,
        dir,
        &[
            "-qAt",
            "-c",
            "INSERT INTO items VALUES (1002, 'multi', 1); SELECT inet_server_port(); SELECT count(*) FROM items",
        ],
    );
    assert_eq!(
        out.lines().collect::<Vec<_>>(),
        [primary.to_string(), "202".to_owned()],
        "{out}"
    );
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("replicas caught up");
    let out = psql_ok(
        &url,
        dir,
        &[
            "-qAt",
            "-c",
            "SELECT inet_server_port(); SELECT count(*) FROM items WHERE id > 1000",
        ],
    );
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), 2, "{out}");
    assert!(
        replicas.contains(&parse_port(lines[0], "multi-read")),
        "read-only string on a replica: {out}"
    );
    assert_eq!(lines[1], "2", "the replica has replayed both inserts");

    // A script file: a transaction with a write and a read of it, on the primary; psql variables set from
    // query results (\gset) and reused.
    let file = script(
        dir,
        "tx.sql",
        "BEGIN;\n\
         UPDATE items SET qty = qty + 1000 WHERE id = 1001;\n\
         SELECT qty AS tx_qty, inet_server_port() AS tx_port FROM items WHERE id = 1001 \\gset\n\
         COMMIT;\n\
         \\echo tx :tx_qty :tx_port\n",
    );
    let out = psql_ok(&url, dir, &["-qAt", "-f", &file]);
    assert!(
        out.contains(&format!("tx 1007 {primary}\n")),
        "transaction on the primary reads its write: {out}"
    );
    // A read-only transaction runs on a replica, every statement on the same one. (Its own session: after a
    // write, read-your-writes may keep a session's reads on the primary until a replica has replayed it.)
    let file = script(
        dir,
        "ro.sql",
        "BEGIN READ ONLY;\n\
         SELECT inet_server_port() AS ro1 \\gset\n\
         SELECT inet_server_port() AS ro2 \\gset\n\
         SELECT qty AS ro_qty FROM items WHERE id = 1001 \\gset\n\
         COMMIT;\n\
         \\echo ro :ro1 :ro2 :ro_qty\n",
    );
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("replicas caught up");
    let out = psql_ok(&url, dir, &["-qAt", "-f", &file]);
    let ro_line = out
        .lines()
        .find(|l| l.starts_with("ro "))
        .unwrap_or_else(|| panic!("no ro line: {out}"));
    let ro: Vec<&str> = ro_line.split(' ').collect();
    assert_eq!(ro.len(), 4, "{ro_line}");
    let ro: Vec<u16> = ro[1..].iter().map(|p| parse_port(p, "BEGIN READ ONLY")).collect();
    assert_eq!(ro[0], ro[1], "one read-only transaction, one backend: {ro_line}");
    assert_eq!(ro[2], 1007, "the replica has the committed update: {ro_line}");
    assert!(
        replicas.contains(&ro[0]),
        "BEGIN READ ONLY ran on a replica: {ro_line}"
    );

    // A NOTICE raised by the server reaches psql's stderr.
    let done = psql(
        &url,
        dir,
        &["-q", "-c", "DO $$BEGIN RAISE NOTICE 'hello %', 1; END$$"],
    )
    .expect_success("DO");
    assert!(
        done.stderr.contains("NOTICE:  hello 1"),
        "notice forwarded: {done}"
    );

    // LISTEN and NOTIFY in one session: psql prints the notification, sent by the session's own backend on
    // the primary (LISTEN pins the session there).
    let file = script(
        dir,
        "notify.sql",
        "LISTEN ch;\nNOTIFY ch, 'x';\nSELECT 'after', inet_server_port(), pg_backend_pid();\n",
    );
    let out = psql_ok(&url, dir, &["-qAt", "-f", &file]);
    let line = out
        .lines()
        .find(|l| l.starts_with("Asynchronous notification \"ch\" with payload \"x\" received"))
        .unwrap_or_else(|| panic!("psql saw no notification:\n{out}"));
    let after = out
        .lines()
        .find(|l| l.starts_with("after|"))
        .unwrap_or_else(|| panic!("{out}"));
    let fields: Vec<&str> = after.split('|').collect();
    assert_eq!(
        parse_port(fields[1], "after LISTEN"),
        primary,
        "a listening session stays on the primary"
    );
    // The PID psql prints is the one pgfleet issued the session (tests/it/pids.rs compares it with
    // BackendKeyData, which psql does not show): above any operating system's pids, and not the pid of
    // the session's node backend, which pg_backend_pid() reports.
    let notified: i64 = line
        .trim_end_matches('.')
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no PID in {line}"));
    assert!(
        notified > 1 << 22 && notified.to_string() != fields[2],
        "the notification names the session's issued pid, not its node backend ({}): {line}",
        fields[2]
    );

    // A notification sent by another session while the listener is idle (inside `\!`) is delivered too.
    let file = script(
        dir,
        "listen.sql",
        "LISTEN ch2;\n\\! touch listening && sleep 5\nSELECT 'end';\n",
    );
    let listener = {
        let (url, dir) = (url.clone(), dir.to_owned());
        std::thread::spawn(move || psql(&url, &dir, &["-qAt", "-f", &file]))
    };
    let deadline = Instant::now() + Duration::from_secs(20);
    while !dir.join("listening").exists() {
        assert!(
            Instant::now() < deadline,
            "the listening psql never got past LISTEN"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    psql_ok(&url, dir, &["-q", "-c", "NOTIFY ch2, 'from-other'"]);
    let done = listener
        .join()
        .expect("listener thread")
        .expect_success("listening psql");
    assert!(
        done.stdout
            .contains("Asynchronous notification \"ch2\" with payload \"from-other\" received"),
        "a notification from another session reached the listener: {done}"
    );

    // Errors keep their SQLSTATE and every field psql shows with VERBOSITY verbose.
    let file = script(dir, "div.sql", "\\set VERBOSITY verbose\nSELECT 1/0;\n");
    let failed = psql(&url, dir, &["-f", &file]);
    assert_eq!(failed.code(), 3, "ON_ERROR_STOP ends the script with 3: {failed}");
    assert!(
        failed.stderr.contains("ERROR:  22012: division by zero"),
        "{failed}"
    );
    assert!(failed.stderr.contains("LOCATION:  int4div"), "{failed}");
    let file = script(
        dir,
        "dup.sql",
        "\\set VERBOSITY verbose\nINSERT INTO items VALUES (1, 'dup', 0);\n",
    );
    let failed = psql(&url, dir, &["-f", &file]);
    assert_eq!(failed.code(), 3, "{failed}");
    for wanted in [
        "ERROR:  23505: duplicate key value violates unique constraint \"items_pkey\"",
        "DETAIL:  Key (id)=(1) already exists.",
        "SCHEMA NAME:  public",
        "TABLE NAME:  items",
        "CONSTRAINT NAME:  items_pkey",
    ] {
        assert!(failed.stderr.contains(wanted), "missing `{wanted}`: {failed}");
    }
    // The session goes on after an error (ON_ERROR_STOP off), on the right nodes.
    let file = script(
        dir,
        "goes_on.sql",
        "\\set ON_ERROR_STOP off\n\
         SELECT 1/0;\n\
         SELECT 'read', inet_server_port();\n\
         INSERT INTO items VALUES (1, 'dup', 0);\n\
         INSERT INTO items VALUES (1003, 'after error', 0) RETURNING 'write', inet_server_port();\n",
    );
    let done = psql(&url, dir, &["-qAt", "-f", &file]);
    assert!(
        done.stderr.contains("division by zero") && done.stderr.contains("duplicate key"),
        "{done}"
    );
    let read = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("read|"))
        .unwrap_or_else(|| panic!("{done}"));
    assert!(replicas.contains(&parse_port(read, "read after error")), "{done}");
    let write = done
        .stdout
        .lines()
        .find_map(|l| l.strip_prefix("write|"))
        .unwrap_or_else(|| panic!("{done}"));
    assert_eq!(parse_port(write, "write after error"), primary, "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_objects_move_through_the_function_call_protocol() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let url = proxy.url(APP_USER, PASSWORD, APP_DB);
    let work = tempfile::tempdir().expect("temp dir");
    let dir = work.path();
    // libpq's large-object API (psql's \lo_import and \lo_export, pg_dump) calls lo_open, loread and
    // lowrite with FunctionCall messages, each answered by its result and a ReadyForQuery.
    let content: String = (0..20_000).map(|i| format!("line {i}\n")).collect();
    let input = script(dir, "in.txt", &content);
    let imported = psql_ok(&url, dir, &["-c", &format!("\\lo_import {input}")]);
    let oid = imported
        .trim()
        .strip_prefix("lo_import ")
        .unwrap_or_else(|| panic!("lo_import's answer: {imported}"))
        .to_owned();
    let output = dir.join("out.txt");
    let exported = psql_ok(
        &url,
        dir,
        &["-c", &format!("\\lo_export {oid} {}", output.display())],
    );
    assert_eq!(exported.trim(), "lo_export");
    let back = std::fs::read_to_string(&output).expect("the exported file");
    assert!(
        back == content,
        "exported {} bytes of {}",
        back.len(),
        content.len()
    );
    // The object is on the primary, as a write is.
    assert_eq!(
        direct(&cluster.primary, APP_DB, &format!("SELECT length(lo_get({oid}))")),
        content.len().to_string()
    );
    // pg_dump reads large objects the same way, in parallel jobs too.
    for format in [["-Fp", "-f", "dump.sql"], ["-Fd", "-j2", "-fdump.d"]] {
        let mut cmd = Command::new(common::pg_tool("pg_dump"));
        cmd.current_dir(dir).args(format).args(["-d", &url]);
        run(cmd, PSQL_TIMEOUT).expect_success("pg_dump through pgfleet");
    }
    let plain = std::fs::read_to_string(dir.join("dump.sql")).expect("the plain dump");
    assert!(
        plain.contains(&format!("lo_open('{oid}'")),
        "the plain dump writes the large object"
    );
    let back = psql_ok(&url, dir, &["-XAtc", &format!("SELECT length(lo_get({oid}))")]);
    assert_eq!(back.trim(), content.len().to_string());
}

/// The counters pgbench prints at the end of a run.
#[derive(Debug)]
struct BenchResult {
    processed: u64,
    failed: u64,
}

fn parse_pgbench(done: &Finished) -> BenchResult {
    let value = |prefix: &str| -> Option<u64> {
        let rest = done.stdout.lines().find_map(|l| l.trim().strip_prefix(prefix))?;
        let number: String = rest.trim().chars().take_while(char::is_ascii_digit).collect();
        number.parse().ok()
    };
    let processed = value("number of transactions actually processed:")
        .unwrap_or_else(|| panic!("no `transactions actually processed` in pgbench's output: {done}"));
    // pgbench 15 always prints the failures line; older ones print none (and then abort on any error).
    let failed = value("number of failed transactions:").unwrap_or(0);
    BenchResult { processed, failed }
}

fn pgbench(url: &str, args: &[&str]) -> Finished {
    let mut cmd = Command::new(pg_tool("pgbench"));
    cmd.args(args).arg(url);
    run(cmd, PGBENCH_TIMEOUT)
}

/// `sum(xact_commit)` of database app, read on `node` directly.
fn commits(node: &NodeHandle) -> u64 {
    let text = direct(
        node,
        "postgres",
        "SELECT sum(xact_commit) FROM pg_stat_database WHERE datname = 'app'",
    );
    text.parse()
        .unwrap_or_else(|e| panic!("xact_commit on {}: `{text}`: {e}", node.name))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_initialises_and_runs_in_every_query_mode() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let url = proxy.url(APP_USER, PASSWORD, APP_DB);

    // Initialisation: DROP/CREATE, COPY of pgbench_accounts, VACUUM, primary keys: all on the primary.
    let init = pgbench(&url, &["-i", "-s", "1"]).expect_success("pgbench -i through pgfleet");
    assert!(init.stderr.contains("done in"), "pgbench -i finished: {init}");
    assert_eq!(
        direct(
            &cluster.primary,
            APP_DB,
            "SELECT (SELECT count(*) FROM pgbench_accounts) || ' ' || (SELECT count(*) FROM pgbench_branches) \
             || ' ' || (SELECT count(*) FROM pgbench_tellers) || ' ' || (SELECT count(*) FROM pgbench_history)"
        ),
        "100000 1 10 0",
        "pgbench -i loaded scale 1 on the primary"
    );
    assert_eq!(
        direct(
            &cluster.primary,
            APP_DB,
            "SELECT count(*) FROM pg_indexes WHERE indexname = 'pgbench_accounts_pkey'"
        ),
        "1",
        "primary keys were created"
    );
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("replicas caught up");

    // Select-only runs: every read lands on a replica, and both replicas do their share.
    let (clients, select_tx) = (4_u64, 200_u64);
    for mode in ["simple", "extended", "prepared"] {
        let before: Vec<u64> = cluster.replicas.iter().map(commits).collect();
        let primary_before = commits(&cluster.primary);
        let done = pgbench(&url, &["-S", "-c", "4", "-j", "2", "-t", "200", "-M", mode]);
        let result = parse_pgbench(&done);
        assert!(done.status.success(), "pgbench -S -M {mode}: {done}");
        assert_eq!(result.failed, 0, "pgbench -S -M {mode} had failures: {done}");
        assert_eq!(
            result.processed,
            clients * select_tx,
            "pgbench -S -M {mode}: {done}"
        );
        // Statistics reach pg_stat_database when a backend is idle for a moment (up to ~10 s in PG 15).
        let wanted = clients * select_tx / 4;
        let deadline = Instant::now() + Duration::from_secs(30);
        let grown = loop {
            let grown: Vec<u64> = cluster
                .replicas
                .iter()
                .zip(&before)
                .map(|(r, b)| commits(r).saturating_sub(*b))
                .collect();
            if grown.iter().all(|g| *g >= wanted) || Instant::now() >= deadline {
                break grown;
            }
            std::thread::sleep(Duration::from_millis(250));
        };
        assert!(
            grown.iter().all(|g| *g >= wanted),
            "-M {mode}: each replica should have committed at least {wanted} of the {} read transactions, \
             grew by {grown:?}",
            clients * select_tx
        );
        // The primary ran none of them: only pgbench's own VACUUMs and TRUNCATE before the run.
        let primary_grown = commits(&cluster.primary).saturating_sub(primary_before);
        assert!(
            primary_grown < clients * select_tx / 10,
            "-M {mode}: the primary committed {primary_grown} transactions during a select-only run \
             (replicas: {grown:?})"
        );
    }

    // TPC-B (the default script: BEGIN; 3 UPDATEs, SELECT, INSERT; END) in every mode, on the primary.
    let tpcb_tx = 200_u64;
    for mode in ["simple", "extended", "prepared"] {
        let done = pgbench(&url, &["-n", "-c", "4", "-j", "2", "-t", "200", "-M", mode]);
        let result = parse_pgbench(&done);
        assert!(done.status.success(), "pgbench TPC-B -M {mode}: {done}");
        assert_eq!(result.failed, 0, "pgbench TPC-B -M {mode} had failures: {done}");
        assert_eq!(
            result.processed,
            clients * tpcb_tx,
            "pgbench TPC-B -M {mode}: {done}"
        );
    }
    let expected = (3 * clients * tpcb_tx).to_string();
    assert_eq!(
        direct(&cluster.primary, APP_DB, "SELECT count(*) FROM pgbench_history"),
        expected,
        "every TPC-B transaction inserted its history row on the primary"
    );
    assert_eq!(
        direct(
            &cluster.primary,
            APP_DB,
            "SELECT (SELECT sum(delta) FROM pgbench_history) = (SELECT sum(bbalance) FROM pgbench_branches)"
        ),
        "t",
        "balances match the history"
    );
    cluster
        .wait_replicas_caught_up(CATCH_UP)
        .expect("replicas caught up");
    for replica in &cluster.replicas {
        assert_eq!(
            direct(replica, APP_DB, "SELECT count(*) FROM pgbench_history"),
            expected,
            "{} replayed the TPC-B history",
            replica.name
        );
    }
}
