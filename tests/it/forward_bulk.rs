//! Forward mode with bulk changes: large INSERTs, UPDATEs (key changed or not, TOASTed columns left alone,
//! NULLs, text that COPY must escape) and DELETEs take the set-wise path (COPY into a staging table, one
//! statement per set) and leave every replica identical to the primary, in order, exactly once across
//! crashes; and `pgfleet forward-stop` removes forward mode's objects from the primary.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::cluster::{APP_DB, LocalCluster, PASSWORD};
use crate::support::forward::*;
use crate::support::proxy::{Proxy, connect, free_port};

/// Forward mode, with the set-wise apply's debug lines in the log.
fn bulk_toml() -> String {
    format!(
        "{}\n[log]\nlevel = \"info,pgfleet::replication::apply=debug\"\n",
        forward_toml()
    )
}

/// How many sets of `kind` ("Insert", "Update", "Delete") pgfleet applied set-wise to `table`.
fn sets_applied(proxy: &Proxy, table: &str, kind: &str) -> usize {
    proxy
        .log_contents()
        .lines()
        .filter(|l| {
            l.contains("applied a set")
                && l.contains(&format!("table=\"public\".\"{table}\""))
                && l.contains(&format!("kind={kind}"))
        })
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bulk_changes_reach_both_replicas_set_wise_and_in_order() {
    let cluster = plain_cluster().await;
    primary_sql(
        &cluster,
        // `big` is stored out of line uncompressed, so an UPDATE that leaves it alone sends it as
        // "unchanged TOAST"; `note` gets NULLs and characters COPY must escape.
        "CREATE TABLE items (id int PRIMARY KEY, v int NOT NULL, note text, big text NOT NULL); \
         ALTER TABLE items ALTER big SET STORAGE EXTERNAL; \
         CREATE TABLE keyed (id int PRIMARY KEY, v text NOT NULL); \
         INSERT INTO keyed SELECT g, 'k' || g FROM generate_series(1, 2000) g; \
         CREATE TABLE mixed (id int PRIMARY KEY, v text NOT NULL, n int); \
         CREATE TABLE nokey (a int, b text); ALTER TABLE nokey REPLICA IDENTITY FULL; \
         CREATE TABLE ident (a int GENERATED ALWAYS AS IDENTITY, b int, v text, PRIMARY KEY (a, b)); \
         CREATE TABLE split (id int PRIMARY KEY, v text NOT NULL)",
    );
    let proxy = Proxy::start(&cluster, &bulk_toml());
    wait_until_streaming(&cluster, &proxy).await;

    primary_sql(
        &cluster,
        "INSERT INTO items SELECT g, g, CASE WHEN g % 5 = 0 THEN NULL ELSE E'tab\\there\\nnew line \\\\ back ' || g END, \
         repeat(md5(g::text), 100) FROM generate_series(1, 3000) g",
    );
    primary_sql(
        &cluster,
        "UPDATE items SET v = v * 2, note = CASE WHEN id % 3 = 0 THEN NULL ELSE coalesce(note, 'was null') || E'\\r!' END",
    );
    // Every key changes; none to a key the set has already seen.
    primary_sql(&cluster, "UPDATE keyed SET id = id + 100000, v = v || '+'");
    // One transaction, in an order that matters: rows inserted, updated, some deleted, updated again, and
    // an UPDATE of rows the previous one touched (a new set).
    primary_sql(
        &cluster,
        "BEGIN; \
         INSERT INTO mixed SELECT g, 'm' || g, NULL FROM generate_series(1, 3000) g; \
         UPDATE mixed SET v = v || '-1', n = id; \
         DELETE FROM mixed WHERE id % 2 = 0; \
         UPDATE mixed SET v = v || '-2', n = NULL WHERE id % 3 = 0; \
         INSERT INTO mixed SELECT g, 'again' || g, g FROM generate_series(2, 3000, 2) g; \
         UPDATE mixed SET v = v || '-3'; \
         COMMIT",
    );
    primary_sql(
        &cluster,
        "INSERT INTO nokey SELECT g % 10, 'dup' FROM generate_series(1, 2000) g; \
         UPDATE nokey SET b = 'changed' WHERE a = 1",
    );
    primary_sql(&cluster, "DELETE FROM items WHERE id <= 1500");
    // Copied into an identity column that only the primary may fill; then half of the key changes, and
    // the unchanged identity half must stay out of SET.
    primary_sql(
        &cluster,
        "INSERT INTO ident (b, v) SELECT g, 'i' || g FROM generate_series(1, 1500) g",
    );
    primary_sql(&cluster, "UPDATE ident SET b = b + 1000000, v = v || '*'");
    // Changes of more rows than a set holds: each is applied as several sets, in order.
    primary_sql(
        &cluster,
        "INSERT INTO split SELECT g, 's' || g FROM generate_series(1, 25000) g",
    );
    primary_sql(&cluster, "UPDATE split SET v = v || '+' || id");

    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(90)).await;
    assert_forwarding_never_stopped(&cluster, &proxy);
    eprintln!("{sums:?}");
    assert!(sums["items"].starts_with("1500 rows"), "{sums:?}");
    assert!(sums["keyed"].starts_with("2000 rows"), "{sums:?}");
    assert!(sums["mixed"].starts_with("3000 rows"), "{sums:?}");
    assert!(sums["nokey"].starts_with("2000 rows"), "{sums:?}");
    assert!(sums["ident"].starts_with("1500 rows"), "{sums:?}");
    assert!(sums["split"].starts_with("25000 rows"), "{sums:?}");
    // The TOASTed column survived the UPDATE that did not send it.
    let big = cluster
        .psql(
            &cluster.replicas[0],
            APP_DB,
            "SELECT count(*) FROM items WHERE big = repeat(md5(id::text), 100)",
        )
        .expect("count big");
    assert_eq!(big, "1500");

    // Each replica took the set-wise path for every kind (and fell back to row-wise nowhere).
    let replicas = cluster.replicas.len();
    for (table, kind, at_least) in [
        ("items", "Insert", 1),
        ("items", "Update", 1),
        ("items", "Delete", 1),
        ("keyed", "Update", 1),
        ("mixed", "Insert", 2),
        ("mixed", "Update", 2),
        ("mixed", "Delete", 1),
        ("nokey", "Insert", 1),
        ("ident", "Insert", 1),
        ("ident", "Update", 1),
        ("split", "Insert", 3),
        ("split", "Update", 3),
    ] {
        let n = sets_applied(&proxy, table, kind);
        assert!(
            n >= at_least * replicas,
            "{table} {kind}: {n} sets applied set-wise, expected at least {} \n{}",
            at_least * replicas,
            log_tail(&proxy)
        );
    }
    assert_eq!(
        sets_applied(&proxy, "nokey", "Update"),
        0,
        "FULL identity stays row-wise"
    );
    assert!(
        !proxy.log_contents().contains("applying row by row"),
        "a set fell back to row-wise:\n{}",
        log_tail(&proxy)
    );
}

/// The pgfleet of a test, restartable with the same config.
fn config_text(cluster: &LocalCluster) -> String {
    Proxy::config_for(cluster, free_port(), &bulk_toml())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_during_bulk_applies_loses_and_doubles_nothing() {
    let cluster = plain_cluster().await;
    // No key on `batches`: a set inserted twice shows up as doubled rows, not as an error. `counters` is
    // bumped set-wise by every transaction: one applied twice or lost changes the sums. `recent` keeps the
    // last two transactions' rows (set-wise inserts and deletes).
    primary_sql(
        &cluster,
        "CREATE TABLE batches (n int NOT NULL, g int NOT NULL, payload text NOT NULL); \
         ALTER TABLE batches REPLICA IDENTITY FULL; \
         CREATE TABLE counters (id int PRIMARY KEY, hits bigint NOT NULL); \
         INSERT INTO counters SELECT g, 0 FROM generate_series(1, 2000) g; \
         CREATE TABLE recent (n int, g int, PRIMARY KEY (n, g))",
    );
    let config = config_text(&cluster);
    let mut proxy = Proxy::start_with_config(config.clone());
    wait_until_streaming(&cluster, &proxy).await;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let dsn = cluster.primary.dsn("postgres", PASSWORD, APP_DB);
        tokio::spawn(async move {
            let c = connect(&dsn).await;
            let mut n = 0i32;
            while !stop.load(Ordering::Relaxed) {
                n += 1;
                c.batch_execute(&format!(
                    "BEGIN; \
                     INSERT INTO batches SELECT {n}, g, md5(g::text) FROM generate_series(1, 5000) g; \
                     UPDATE counters SET hits = hits + 1; \
                     INSERT INTO recent SELECT {n}, g FROM generate_series(1, 1500) g; \
                     DELETE FROM recent WHERE n = {}; \
                     COMMIT",
                    n - 2
                ))
                .await
                .expect("bulk transaction");
            }
            n
        })
    };
    for kill in 1..=3 {
        // Kill after a varying number (1 to 3) of further sets: at a different point of the stream each time,
        // while sets are being applied.
        let before = sets_applied(&proxy, "batches", "Insert");
        let sets = rand::random_range(1..=3);
        crate::support::wait_until(MATCH_DEADLINE, async || {
            sets_applied(&proxy, "batches", "Insert") >= before + sets
        })
        .await
        .unwrap_or_else(|| panic!("{sets} sets not applied before kill {kill}\n{}", log_tail(&proxy)));
        kill_9(&mut proxy);
        eprintln!("kill {kill}: pgfleet killed while applying bulk transactions");
        proxy = Proxy::start_with_config(config.clone());
    }
    stop.store(true, Ordering::Relaxed);
    let transactions = writer.await.expect("writer task");
    eprintln!("the writer committed {transactions} bulk transactions");
    assert!(transactions >= 3, "the writer barely ran: {transactions}");

    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(120)).await;
    assert!(
        sums.contains_key("batches") && sums.contains_key("counters"),
        "{sums:?}"
    );
    for replica in &cluster.replicas {
        let hits = cluster
            .psql(
                replica,
                APP_DB,
                "SELECT min(hits) || ' ' || max(hits) FROM counters",
            )
            .expect("hits");
        assert_eq!(hits, format!("{transactions} {transactions}"), "{}", replica.name);
        let doubled = cluster
            .psql(
                replica,
                APP_DB,
                "SELECT count(*) - count(DISTINCT (n, g)) FROM batches",
            )
            .expect("duplicates");
        assert_eq!(doubled, "0", "{}: doubled rows", replica.name);
    }
}

/// Runs `pgfleet forward-stop` with `config`; returns (success, stdout + stderr).
fn forward_stop(config: &str) -> (bool, String) {
    let dir = tempfile::tempdir().expect("temp dir");
    let path = dir.path().join("pgfleet.toml");
    std::fs::write(&path, config).expect("write config");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .arg("forward-stop")
        .arg("--config")
        .arg(&path)
        .args(["--database", APP_DB])
        .output()
        .expect("run pgfleet forward-stop");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// What forward mode left on the primary: slots, publications, event triggers, and whether schema pgfleet
/// exists.
fn primary_objects(cluster: &LocalCluster) -> String {
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "SELECT (SELECT count(*) FROM pg_replication_slots) || ' slots, ' || \
             (SELECT count(*) FROM pg_publication) || ' publications, ' || \
             (SELECT count(*) FROM pg_event_trigger) || ' event triggers, schema ' || \
             (SELECT count(*) FROM pg_namespace WHERE nspname = 'pgfleet')",
        )
        .expect("list objects")
}

/// How many replication slots on the primary match `filter` (SQL over `pg_replication_slots`), or the error.
fn slots_where(cluster: &LocalCluster, filter: &str) -> String {
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            &format!("SELECT count(*) FROM pg_replication_slots WHERE {filter}"),
        )
        .unwrap_or_else(|e| e.to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stop_removes_slots_publication_and_event_trigger_and_can_be_repeated() {
    let cluster = plain_cluster().await;
    primary_sql(&cluster, "CREATE TABLE t (id int PRIMARY KEY)");
    let config = config_text(&cluster);
    let mut proxy = Proxy::start_with_config(config.clone());
    wait_until_streaming(&cluster, &proxy).await;
    // The database's slot; the copies' temporary slots end with their connections, which the primary notices
    // a moment later.
    let forwarding = "1 slots, 1 publications, 1 event triggers, schema 1";
    let seen = crate::support::wait_until(MATCH_DEADLINE, async || {
        let now = primary_objects(&cluster);
        (now == forwarding).then_some(now)
    })
    .await;
    assert_eq!(seen.as_deref(), Some(forwarding), "{}", primary_objects(&cluster));
    // The replicas say "streaming" once copied, a moment before the stream reads the slot again.
    let active =
        crate::support::wait_until(MATCH_DEADLINE, async || slots_where(&cluster, "active") == "1").await;
    assert!(
        active.is_some(),
        "the database's slot never became active\n{}",
        log_tail(&proxy)
    );

    // While pgfleet forwards, its slots are in use: forward-stop refuses and says why.
    let (ok, out) = forward_stop(&config);
    assert!(!ok, "forward-stop succeeded while pgfleet forwards:\n{out}");
    assert!(
        out.contains("are in use") && out.contains("stop pgfleet"),
        "{out}"
    );
    assert_eq!(primary_objects(&cluster), forwarding);

    assert!(
        proxy.signal_and_wait("TERM", Duration::from_secs(20)).is_some(),
        "pgfleet did not stop"
    );
    let (ok, out) = forward_stop(&config);
    assert!(ok, "forward-stop failed:\n{out}");
    let slot = format!("removed replication slot pgfleet_{APP_DB}_\n");
    assert!(out.contains(&slot), "no `{slot}` in:\n{out}");
    for line in [
        "removed publication pgfleet",
        "removed event trigger pgfleet_forward_ddl",
        "removed function pgfleet.forward_ddl()",
        "removed schema pgfleet",
        "forward mode ended for database",
    ] {
        assert!(out.contains(line), "no `{line}` in:\n{out}");
    }
    assert_eq!(
        primary_objects(&cluster),
        "0 slots, 0 publications, 0 event triggers, schema 0"
    );
    for replica in &cluster.replicas {
        assert_eq!(progress_state(&cluster, replica), "none", "{}", replica.name);
    }

    // Again: nothing left, and that is no error.
    let (ok, again) = forward_stop(&config);
    assert!(ok, "a second forward-stop failed:\n{again}");
    assert!(again.contains("had nothing left"), "{again}");
    assert!(!again.contains("removed "), "{again}");
    assert_eq!(
        primary_objects(&cluster),
        "0 slots, 0 publications, 0 event triggers, schema 0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_stop_refuses_while_pgfleet_runs_with_every_replica_down() {
    let cluster = plain_cluster().await;
    primary_sql(&cluster, "CREATE TABLE t (id int PRIMARY KEY)");
    // `app` second: pgfleet's slot monitor keeps its connection in the first forwarded database.
    let toml = bulk_toml().replacen(
        &format!("databases = [\"{APP_DB}\"]"),
        &format!("databases = [\"postgres\", \"{APP_DB}\"]"),
        1,
    );
    assert!(toml.contains("\"postgres\", "), "{toml}");
    let config = Proxy::config_for(&cluster, free_port(), &toml);
    let proxy = Proxy::start_with_config(config.clone());
    wait_until_streaming(&cluster, &proxy).await;

    // With every replica down, a change to apply fails their tasks, which then hold no connection to the
    // primary, and the stream stops reading the slot once it has the next change to hand over and no one
    // takes it. pgfleet still forwards (it waits for the replicas), so forward-stop refuses.
    for replica in &cluster.replicas {
        tokio::task::block_in_place(|| replica.stop()).expect("stop a replica");
    }
    let slot = format!("pgfleet_{APP_DB}_");
    let idle = crate::support::wait_until(MATCH_DEADLINE, async || {
        primary_sql(&cluster, "INSERT INTO t SELECT coalesce(max(id), 0) + 1 FROM t");
        slots_where(&cluster, &format!("slot_name = '{slot}' AND active")) == "0"
    })
    .await;
    assert!(
        idle.is_some(),
        "the slot stayed active with every replica down\n{}",
        log_tail(&proxy)
    );
    let (ok, out) = forward_stop(&config);
    assert!(
        !ok,
        "forward-stop succeeded while pgfleet runs with its replicas down:\n{out}"
    );
    assert!(
        out.contains("are in use") && out.contains("stop pgfleet"),
        "{out}"
    );
    assert_eq!(
        slots_where(&cluster, &format!("slot_name = '{slot}'")),
        "1",
        "the slot is gone"
    );
}
