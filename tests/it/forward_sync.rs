//! Forward mode keeps plain servers identical to the primary under real workloads: a pgbench TPC-B run, a
//! mixed DML/DDL workload (with sequences carried over), and DDL forms whose rows travel both as DDL and as
//! row changes. Also: reads in forward mode go to the replicas, and a session always reads its own writes.
//!
//! "Identical" is checked table by table: for every table of schema `public`, the row count and the md5 of
//! all rows' text forms in text order must be the same on the primary and on each replica.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, LocalCluster, PASSWORD};
use crate::support::forward::*;
use crate::support::proxy::{Proxy, connect};

/// Runs pgbench against pgfleet as the app user; panics unless it succeeds. Returns its stdout.
async fn pgbench(proxy: &Proxy, args: &[&str]) -> String {
    let port = proxy.port.to_string();
    let out = tokio::process::Command::new("pgbench")
        .args(["-h", "127.0.0.1", "-p", &port, "-U", APP_USER])
        .args(args)
        .arg(APP_DB)
        .env("PGPASSWORD", PASSWORD)
        .env("PGSSLMODE", "disable")
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("run pgbench");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(
        out.status.success(),
        "pgbench {args:?} through pgfleet failed ({}):\n{stdout}\n{stderr}\n--- pgfleet log tail ---\n{}",
        out.status,
        log_tail(proxy)
    );
    stdout
}

/// The number after `label` on the line of pgbench's summary that starts with it.
fn pgbench_number(summary: &str, label: &str) -> u64 {
    summary
        .lines()
        .find_map(|l| l.trim().strip_prefix(label))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no `{label}` line in pgbench's output:\n{summary}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_tpcb_run_leaves_replicas_identical() {
    let cluster = plain_cluster().await;
    let proxy = Proxy::start(&cluster, &forward_toml());
    // All of pgbench's schema then travels in the stream (tables copied at start are another test's case).
    wait_until_streaming(&cluster, &proxy).await;

    // Initialisation through pgfleet: DROP/CREATE TABLE, TRUNCATE, INSERT, COPY FROM STDIN, VACUUM and
    // ALTER TABLE ... ADD PRIMARY KEY all go to the primary and reach the replicas through the stream.
    pgbench(&proxy, &["-i", "-s", "1"]).await;
    let after_init = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    let expected_tables = [
        ("pgbench_accounts", "100000 rows"),
        ("pgbench_branches", "1 rows"),
        ("pgbench_history", "0 rows"),
        ("pgbench_tellers", "10 rows"),
    ];
    for (table, rows) in expected_tables {
        let sum = after_init.get(table).map(String::as_str).unwrap_or("missing");
        assert!(
            sum.starts_with(&format!("{rows},")),
            "{table} after pgbench -i: {sum}"
        );
    }

    let summary = pgbench(&proxy, &["-c", "4", "-j", "2", "-T", "5"]).await;
    let failed = pgbench_number(&summary, "number of failed transactions:");
    assert_eq!(failed, 0, "pgbench reported failed transactions:\n{summary}");
    let processed = pgbench_number(&summary, "number of transactions actually processed:");
    assert!(processed > 0, "pgbench processed nothing:\n{summary}");

    let after_run = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    // Every TPC-B transaction inserts one history row: the replicas have exactly the committed ones.
    assert_eq!(
        after_run
            .get("pgbench_history")
            .map(String::as_str)
            .map(|s| s.split(' ').next()),
        Some(Some(processed.to_string().as_str())),
        "history rows vs transactions processed:\n{summary}"
    );
    for (table, _) in expected_tables {
        assert!(
            after_run.contains_key(table),
            "{table} missing after the run: {after_run:?}"
        );
    }
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_dml_and_ddl_workload_leaves_replicas_identical() {
    let (cluster, proxy, c) = forwarding_fleet().await;
    let run = |sql: &'static str| {
        let c = &c;
        async move {
            c.batch_execute(sql)
                .await
                .unwrap_or_else(|e| panic!("`{sql}` through pgfleet: {e:?}"))
        }
    };

    run("CREATE TABLE items (id int PRIMARY KEY, name text NOT NULL, qty int NOT NULL)").await;
    run("INSERT INTO items SELECT g, 'item ' || g, g * 3 FROM generate_series(1, 300) g").await;
    // Existing rows get the default on both sides (no rewrite, the replica fills it in the same way).
    run("ALTER TABLE items ADD COLUMN status text NOT NULL DEFAULT 'new'").await;
    run("ALTER TABLE items ADD COLUMN price numeric(10,2) DEFAULT 9.99").await;
    run("CREATE INDEX items_qty_idx ON items (qty)").await;

    // An explicit transaction with every kind of row change.
    {
        let mut c2 = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let tx = c2.transaction().await.expect("begin");
        tx.execute(
            "UPDATE items SET status = 'shipped', qty = qty - 1 WHERE id % 5 = 0",
            &[],
        )
        .await
        .expect("update in tx");
        tx.execute("DELETE FROM items WHERE id BETWEEN 100 AND 120", &[])
            .await
            .expect("delete in tx");
        for id in 1000..1010 {
            tx.execute(
                "INSERT INTO items (id, name, qty, price) VALUES ($1, $2, $3, 1.5)",
                &[&id, &format!("added {id}"), &(id % 7)],
            )
            .await
            .expect("insert in tx");
        }
        tx.commit().await.expect("commit");

        // A rolled-back transaction, with DDL in it: none of it may reach a replica.
        let tx = c2.transaction().await.expect("begin");
        tx.execute(
            "INSERT INTO items (id, name, qty) SELECT g, 'ghost', -1 FROM generate_series(10000, 10100) g",
            &[],
        )
        .await
        .expect("ghost insert");
        tx.execute("UPDATE items SET qty = -1 WHERE id < 50", &[])
            .await
            .expect("ghost update");
        tx.batch_execute("CREATE TABLE ghost_table (x int)")
            .await
            .expect("ghost table");
        tx.rollback().await.expect("rollback");
    }

    // Autocommit changes.
    run("UPDATE items SET price = price * 2 WHERE id < 50").await;
    run("DELETE FROM items WHERE id > 290 AND id < 1000").await;

    // Sequence-backed tables: serial and identity, plus values drawn but never stored.
    run("CREATE TABLE events (id serial PRIMARY KEY, kind text NOT NULL, at timestamptz NOT NULL DEFAULT now())")
        .await;
    for i in 0..40 {
        c.execute(
            "INSERT INTO events (kind) VALUES ($1)",
            &[&format!("kind {}", i % 4)],
        )
        .await
        .expect("insert event");
    }
    run("SELECT nextval('events_id_seq') FROM generate_series(1, 5)").await;
    run("CREATE TABLE audit (id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY, note text)").await;
    run("INSERT INTO audit (note) SELECT 'note ' || g FROM generate_series(1, 25) g").await;

    // DDL churn: a table that comes and goes, renames, type changes (a rewrite), dropped columns.
    run("CREATE TABLE scratch (id int PRIMARY KEY, v text)").await;
    run("INSERT INTO scratch SELECT g, 'v' || g FROM generate_series(1, 50) g").await;
    run("DROP TABLE scratch").await;
    run("ALTER TABLE items RENAME COLUMN name TO title").await;
    run("UPDATE items SET title = upper(title) WHERE id % 2 = 0").await;
    run("ALTER TABLE items ALTER COLUMN qty TYPE bigint").await;
    run("ALTER TABLE items DROP COLUMN price").await;
    run("INSERT INTO items (id, title, qty) VALUES (5000, 'after the drop', 1)").await;
    run("DELETE FROM events WHERE id % 10 = 0").await;
    run("CREATE INDEX events_kind_idx ON events (kind)").await;

    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_eq!(
        sums.keys().map(String::as_str).collect::<Vec<_>>(),
        ["audit", "events", "items"],
        "tables on the primary"
    );
    for replica in &cluster.replicas {
        let ghosts = cluster
            .psql(
                replica,
                APP_DB,
                "SELECT (SELECT count(*) FROM items WHERE id >= 10000 OR qty = -1) || ' ' || \
                 (to_regclass('public.ghost_table') IS NULL) || ' ' || (to_regclass('public.scratch') IS NULL) \
                 || ' ' || (SELECT count(*) FROM pg_indexes WHERE indexname IN ('items_qty_idx', 'events_kind_idx'))",
            )
            .expect("query replica");
        assert_eq!(
            ghosts, "0 true true 2",
            "{}: rolled-back rows / dropped tables / indexes",
            replica.name
        );
    }
    wait_until_sequences_match(&cluster, &proxy, MATCH_DEADLINE).await;
    let seq = sequence_values(&cluster.primary)
        .await
        .expect("primary sequences");
    assert_eq!(seq.get("events_id_seq"), Some(&Some(45)), "{seq:?}");
    assert_eq!(seq.get("audit_id_seq"), Some(&Some(25)), "{seq:?}");
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_table_as_carries_its_rows_once() {
    let (cluster, proxy, c) = cluster_with_source_table().await;
    run_all(
        &c,
        &[
            "CREATE TABLE summary AS SELECT id % 10 AS bucket, count(*) AS n FROM src GROUP BY 1",
            "ALTER TABLE summary ADD PRIMARY KEY (bucket)",
            // The stream goes on afterwards.
            "INSERT INTO src VALUES (101, 'after')",
            "UPDATE summary SET n = n + 1 WHERE bucket = 1",
        ],
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "summary", 10);
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_into_carries_its_rows_once() {
    let (cluster, proxy, c) = cluster_with_source_table().await;
    run_all(
        &c,
        &[
            "SELECT * INTO src_copy FROM src WHERE id <= 50",
            "INSERT INTO src_copy VALUES (101, 'after')",
        ],
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "src_copy", 51);
    assert_forwarding_never_stopped(&cluster, &proxy);
}

/// A forwarding pgfleet whose replicas have `src` (100 rows, made through pgfleet by the app), and an app
/// connection through it.
async fn cluster_with_source_table() -> (LocalCluster, Proxy, tokio_postgres::Client) {
    let (cluster, proxy, c) = forwarding_fleet().await;
    run_all(
        &c,
        &[
            "CREATE TABLE src (id int PRIMARY KEY, v text NOT NULL)",
            "INSERT INTO src SELECT g, 'v' || g FROM generate_series(1, 100) g",
        ],
    )
    .await;
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    (cluster, proxy, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_go_to_replicas_and_sessions_read_their_writes() {
    let cluster = plain_cluster().await;
    // Reads after a write may wait for a replica to apply it, so that replicas serve them when they can.
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "{}\n[routing]\nload_balance = \"round_robin\"\nread_your_writes_wait = \"5s\"\n",
            forward_toml()
        ),
    );
    wait_until_streaming(&cluster, &proxy).await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE ryw (id int PRIMARY KEY, at timestamptz NOT NULL DEFAULT clock_timestamp()); \
             ALTER TABLE ryw OWNER TO app",
        )
        .expect("create ryw");
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    let replica_ports: BTreeSet<i32> = cluster.replicas.iter().map(|r| i32::from(r.port)).collect();

    // A session that has not written reads from replicas (once they stream; allow a moment for that).
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut seen = Vec::new();
    loop {
        let reader = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let port: i32 = reader
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("read port")
            .get(0);
        seen.push(port);
        if replica_ports.contains(&port) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "reads never reached a replica (ports {seen:?}, replicas {replica_ports:?})\n{}",
            log_tail(&proxy)
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let reader = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for _ in 0..6 {
        let row = reader
            .query_one("SELECT inet_server_port(), (SELECT count(*) FROM ryw)", &[])
            .await
            .expect("read");
        let port: i32 = row.get(0);
        assert!(
            replica_ports.contains(&port),
            "a read of a session that never wrote went to port {port}, not a replica {replica_ports:?}"
        );
        assert_eq!(row.get::<_, i64>(1), 0);
    }

    // Read-your-writes: every read after an insert sees it, wherever it runs.
    let writer = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let mut from_replicas = 0;
    for i in 1..=30i32 {
        writer
            .execute("INSERT INTO ryw (id) VALUES ($1)", &[&i])
            .await
            .expect("insert");
        let row = writer
            .query_one("SELECT count(*), max(id), inet_server_port() FROM ryw", &[])
            .await
            .expect("read back");
        let (count, max, port): (i64, Option<i32>, i32) = (row.get(0), row.get(1), row.get(2));
        assert_eq!(
            (count, max),
            (i64::from(i), Some(i)),
            "after insert #{i} the session read from port {port} (primary {}) and did not see its write",
            cluster.primary.port
        );
        if replica_ports.contains(&port) {
            from_replicas += 1;
        }
    }
    eprintln!("read-your-writes: {from_replicas} of 30 reads after a write were served by a replica");
    // With read_your_writes_wait, a read waits for a replica to apply the write rather than going to the
    // primary: pgfleet knows what it applied where.
    assert!(
        from_replicas >= 15,
        "only {from_replicas} of 30 reads after a write were served by a replica despite read_your_writes_wait"
    );
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_forwarding_never_stopped(&cluster, &proxy);
}

/// Runs each statement through pgfleet as the app user, panicking with the statement and error.
async fn run_all(c: &tokio_postgres::Client, statements: &[&str]) {
    for sql in statements {
        c.batch_execute(sql)
            .await
            .unwrap_or_else(|e| panic!("`{sql}` through pgfleet: {e:?}"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_copied_at_start_stay_readable_by_their_owner_and_grantees() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE owned (id int PRIMARY KEY, v text); \
             INSERT INTO owned SELECT g, 'o' || g FROM generate_series(1, 10) g; ALTER TABLE owned OWNER TO app; \
             CREATE TABLE granted (id int PRIMARY KEY); INSERT INTO granted VALUES (1), (2); \
             GRANT SELECT ON granted TO app",
        )
        .expect("seed the primary");
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    wait_until_streaming(&cluster, &proxy).await;
    let replica_ports: BTreeSet<i32> = cluster.replicas.iter().map(|r| i32::from(r.port)).collect();
    let mut replica_reads = 0;
    for _ in 0..6 {
        let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let row = c
            .query_one(
                "SELECT inet_server_port(), (SELECT count(*) FROM owned), (SELECT count(*) FROM granted)",
                &[],
            )
            .await;
        let row = row.unwrap_or_else(|e| {
            let rights: Vec<String> = cluster
                .replicas
                .iter()
                .map(|r| {
                    let q = "SELECT string_agg(tablename || ' owner ' || tableowner || ' app may select: ' || \
                             has_table_privilege('app', 'public.' || tablename, 'SELECT'), '; ') \
                             FROM pg_tables WHERE schemaname = 'public'";
                    format!("{}: {:?}", r.name, cluster.psql(r, APP_DB, q))
                })
                .collect();
            panic!(
                "the app user cannot read tables copied at start through pgfleet: {e:?}\n\
                 on the replicas: {rights:?}\n(on the primary `owned` belongs to app and `granted` is granted to it)"
            )
        });
        assert_eq!((row.get::<_, i64>(1), row.get::<_, i64>(2)), (10, 2));
        if replica_ports.contains(&row.get::<_, i32>(0)) {
            replica_reads += 1;
        }
    }
    assert!(replica_reads > 0, "no read went to a replica");
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_on_tables_copied_at_start_is_forwarded() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE pre (id int PRIMARY KEY, v text NOT NULL); \
             INSERT INTO pre SELECT g, 'v' || g FROM generate_series(1, 100) g; ALTER TABLE pre OWNER TO app",
        )
        .expect("seed the primary");
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_until_streaming(&cluster, &proxy).await;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    // The app changes the schema of its own table, which reached the replicas through the initial copy.
    run_all(
        &c,
        &[
            "ALTER TABLE pre ADD COLUMN note text NOT NULL DEFAULT 'n'",
            "CREATE INDEX pre_v_idx ON pre (v)",
            "INSERT INTO pre (id, v, note) VALUES (101, 'v101', 'new')",
            "UPDATE pre SET note = 'changed' WHERE id < 5",
        ],
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "pre", 101);
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn temporary_tables_do_not_stop_forwarding() {
    let (cluster, proxy, c) = forwarding_fleet().await;
    run_all(
        &c,
        &["CREATE TABLE kept (id int PRIMARY KEY, session int NOT NULL)"],
    )
    .await;
    // Three sessions in turn stage rows in a temporary table of the same name, as applications do.
    for session in 0..3i32 {
        let s = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
        run_all(&s, &["CREATE TEMP TABLE staging (id int)"]).await;
        s.execute(
            "INSERT INTO staging SELECT g FROM generate_series($1::int * 100 + 1, $1::int * 100 + 50) g",
            &[&session],
        )
        .await
        .expect("fill staging");
        s.execute("INSERT INTO kept SELECT id, $1 FROM staging", &[&session])
            .await
            .expect("copy from staging");
        drop(s);
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    run_all(&c, &["INSERT INTO kept VALUES (1000, -1)"]).await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "kept", 151);
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "known limit of forward mode: a DO block that mixes DDL and DML is replayed whole on replicas, so its \
            rows arrive twice (docs/replication.md, Limits); kept to prove the fix when DDL is captured per command"]
async fn do_block_with_ddl_and_dml_applies_once() {
    let (cluster, proxy, c) = forwarding_fleet().await;
    run_all(
        &c,
        &[
            "DO $$ BEGIN \
               CREATE TABLE made_in_do (id int PRIMARY KEY, v text); \
               INSERT INTO made_in_do SELECT g, 'v' || g FROM generate_series(1, 10) g; \
             END $$",
            "INSERT INTO made_in_do VALUES (11, 'after')",
        ],
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "made_in_do", 11);
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn migration_script_sent_as_one_string_is_forwarded_in_order() {
    let (cluster, proxy, c) = forwarding_fleet().await;
    // One simple-query string, as migration tools send a file: DDL and DML interleaved.
    run_all(
        &c,
        &["CREATE TABLE m (a int PRIMARY KEY, b int, c int); \
           INSERT INTO m VALUES (1, 2, 3); \
           ALTER TABLE m DROP COLUMN c; \
           INSERT INTO m VALUES (2, 3); \
           ALTER TABLE m ADD COLUMN d text NOT NULL DEFAULT 'dflt'; \
           UPDATE m SET d = 'set' WHERE a = 1"],
    )
    .await;
    run_all(&c, &["INSERT INTO m VALUES (3, 4, 'later')"]).await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "m", 3);
    assert_forwarding_never_stopped(&cluster, &proxy);
}
