//! Forward mode end to end, quickly: plain servers kept in sync by pgfleet through copy and stream.

use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_with_async, options};
use crate::support::proxy::{Proxy, connect};

fn forward_toml() -> String {
    format!(
        "[replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"{PASSWORD}\"\ndatabases = [\"{APP_DB}\"]\n\n[health]\ninterval = \"200ms\""
    )
}

async fn wait_for(proxy: &Proxy, what: &str, mut check: impl FnMut() -> bool) {
    crate::support::wait_until(Duration::from_secs(30), async || check())
        .await
        .unwrap_or_else(|| {
            panic!(
                "timed out waiting for {what}\n{}",
                proxy
                    .log_contents()
                    .lines()
                    .filter(|l| !l.contains("change=Insert")
                        && !l.contains("change=Update")
                        && !l.contains("change=Delete"))
                    .collect::<Vec<_>>()
                    .join("\n")
            )
        });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn copies_then_streams_to_plain_servers() {
    let cluster = cluster_with_async(crate::support::cluster::ClusterOptions {
        streaming: false,
        ..options()
    })
    .await;
    cluster
        .psql(&cluster.primary, APP_DB, "CREATE TABLE pre (id int primary key, v text); INSERT INTO pre SELECT g, 'x' || g FROM generate_series(1, 1000) g; ALTER TABLE pre OWNER TO app;")
        .expect("seed");
    let proxy = Proxy::start(&cluster, &forward_toml());
    for r in &cluster.replicas {
        wait_for(&proxy, "initial copy", || {
            cluster
                .psql(r, APP_DB, "SELECT count(*) FROM pre")
                .map(|s| s.trim() == "1000")
                .unwrap_or(false)
        })
        .await;
    }
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute("CREATE TABLE t (id serial primary key, v text); INSERT INTO t (v) SELECT 'r' || g FROM generate_series(1, 500) g; UPDATE pre SET v = 'changed' WHERE id <= 10; DELETE FROM pre WHERE id > 990")
        .await
        .expect("writes");
    for r in &cluster.replicas {
        wait_for(&proxy, "stream", || {
            cluster
                .psql(r, APP_DB, "SELECT (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM pre WHERE v = 'changed') || ' ' || (SELECT count(*) FROM pre)")
                .map(|s| s.trim() == "500 10 990")
                .unwrap_or(false)
        })
        .await;
    }
    // Reads through pgfleet see the session's own writes and come from replicas once they caught up.
    let row = c.query_one("SELECT count(*) FROM t", &[]).await.expect("read");
    assert_eq!(row.get::<_, i64>(0), 500);
    let log = proxy.log_contents();
    assert!(log.contains("forwarding changes"), "{log}");

    // Both replicas are fed from one slot and one WAL sender on the primary: the database's changes are
    // decoded once. (The copies' temporary slots end with their connections, which the server notices a
    // moment later.)
    wait_for(&proxy, "one slot and one WAL sender", || {
        cluster
            .psql(
                &cluster.primary,
                APP_DB,
                "SELECT (SELECT count(*) FROM pg_replication_slots) || ' ' || \
                 (SELECT count(*) FROM pg_stat_replication)",
            )
            .map(|s| s.trim() == "1 1")
            .unwrap_or(false)
    })
    .await;
    assert_eq!(cluster.replicas.len(), 2);
    let slot = cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "SELECT slot_name || ' ' || active || ' ' || temporary FROM pg_replication_slots",
        )
        .expect("slots");
    assert_eq!(slot.trim(), format!("pgfleet_{APP_DB}_ true false"));
}

/// Indexes, keys and constraints as `node` has them in schema `public`, one per line, sorted.
fn schema_objects(
    cluster: &crate::support::cluster::LocalCluster,
    node: &crate::support::cluster::NodeHandle,
) -> String {
    cluster
        .psql(
            node,
            APP_DB,
            "SELECT string_agg(d, E'\\n' ORDER BY d) FROM ( \
               SELECT indexdef AS d FROM pg_indexes WHERE schemaname = 'public' \
               UNION ALL SELECT conrelid::regclass || ' ' || conname || ' ' || pg_get_constraintdef(oid) \
                 || ' validated=' || convalidated FROM pg_constraint WHERE connamespace = 'public'::regnamespace \
               UNION ALL SELECT tgrelid::regclass || ' ' || tgname FROM pg_trigger WHERE NOT tgisinternal) s",
        )
        .expect("schema objects")
}

/// The initial copy restores what the rows need, copies the rows, and only then builds the indexes, keys,
/// constraints and triggers (as pg_restore does: one sorted build instead of an index update per row). The
/// replicas' statement logs show the order; their catalogs show everything arrived, foreign keys validated.
/// Both replicas are copied together: the primary's log shows one read of the table.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn initial_copy_builds_indexes_and_keys_after_the_rows() {
    let cluster = cluster_with_async(crate::support::cluster::ClusterOptions {
        streaming: false,
        extra_conf: vec!["log_statement = 'all'".to_owned()],
        ..options()
    })
    .await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE parent (id bigint PRIMARY KEY, code text NOT NULL UNIQUE); \
             CREATE TABLE child (id bigint PRIMARY KEY, parent_id bigint NOT NULL REFERENCES parent (id), \
                                 qty int CHECK (qty >= 0), note text); \
             CREATE INDEX child_parent ON child (parent_id); \
             CREATE INDEX child_note_lower ON child (lower(note)) WHERE note IS NOT NULL; \
             CREATE FUNCTION touch() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$; \
             CREATE TRIGGER child_touch BEFORE UPDATE ON child FOR EACH ROW EXECUTE FUNCTION touch(); \
             INSERT INTO parent SELECT g, 'p' || g FROM generate_series(1, 200) g; \
             INSERT INTO child SELECT g, g % 200 + 1, g % 7, CASE WHEN g % 3 = 0 THEN 'N' || g END \
               FROM generate_series(1, 5000) g;",
        )
        .expect("seed");
    let proxy = Proxy::start(&cluster, &forward_toml());
    for r in &cluster.replicas {
        wait_for(&proxy, "initial copy", || {
            cluster
                .psql(r, APP_DB, "SELECT state FROM pgfleet_replica.progress")
                .map(|s| s.trim() == "streaming")
                .unwrap_or(false)
        })
        .await;
    }
    // Both replicas were copied in one round: each table was read once from the primary.
    let primary_log = cluster.primary.log_contents();
    assert_eq!(
        primary_log.matches("COPY public.child TO STDOUT").count(),
        1,
        "{primary_log}"
    );
    let expected = schema_objects(&cluster, &cluster.primary);
    assert!(
        expected.contains("child_parent_id_fkey FOREIGN KEY"),
        "{expected}"
    );
    for r in &cluster.replicas {
        assert_eq!(schema_objects(&cluster, r), expected, "{}", r.name);
        assert_eq!(
            cluster
                .psql(r, APP_DB, "SELECT count(*) || ' ' || sum(parent_id) FROM child")
                .expect("count")
                .trim(),
            cluster
                .psql(
                    &cluster.primary,
                    APP_DB,
                    "SELECT count(*) || ' ' || sum(parent_id) FROM child"
                )
                .expect("count")
                .trim()
        );
        let log = r.log_contents();
        let position = |what: &str| {
            log.find(what)
                .unwrap_or_else(|| panic!("{}: no `{what}` in the server log:\n{log}", r.name))
        };
        let copied = position("COPY public.child FROM STDIN");
        assert!(
            position("CREATE TABLE public.child") < copied,
            "{}: {log}",
            r.name
        );
        for built in [
            "ADD CONSTRAINT child_pkey PRIMARY KEY",
            "ADD CONSTRAINT child_parent_id_fkey FOREIGN KEY",
            "CREATE INDEX child_note_lower",
            "CREATE TRIGGER child_touch",
        ] {
            assert!(
                copied < position(built),
                "{}: `{built}` before the rows:\n{log}",
                r.name
            );
        }
    }
}

/// What `sql` returns on `node`, trimmed; empty when it fails (the server or the table not there yet).
fn answer(
    cluster: &crate::support::cluster::LocalCluster,
    node: &crate::support::cluster::NodeHandle,
    sql: &str,
) -> String {
    cluster
        .psql(node, APP_DB, sql)
        .unwrap_or_default()
        .trim()
        .to_owned()
}

/// The table the copy-round tests copy: 3,000 rows.
const ITEMS: &str = "CREATE TABLE items (id bigint PRIMARY KEY, v text); \
                     INSERT INTO items SELECT g, 'v' || g FROM generate_series(1, 3000) g";

fn progress(
    cluster: &crate::support::cluster::LocalCluster,
    node: &crate::support::cluster::NodeHandle,
) -> String {
    answer(cluster, node, "SELECT state FROM pgfleet_replica.progress")
}

fn items(
    cluster: &crate::support::cluster::LocalCluster,
    node: &crate::support::cluster::NodeHandle,
) -> String {
    answer(cluster, node, "SELECT count(*) FROM items")
}

/// `first` is copied and streams: a row written on the primary reaches it.
async fn first_replica_streams(
    cluster: &crate::support::cluster::LocalCluster,
    proxy: &Proxy,
    first: &crate::support::cluster::NodeHandle,
) {
    wait_for(proxy, "the first replica to stream", || {
        progress(cluster, first) == "streaming"
    })
    .await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "INSERT INTO items VALUES (3001, 'after the first copy')",
        )
        .expect("write");
    wait_for(proxy, "the write on the first replica", || {
        items(cluster, first) == "3001"
    })
    .await;
}

/// `late` is copied after all, with the row written meanwhile, and both replicas then take a delete.
async fn late_replica_catches_up(
    cluster: &crate::support::cluster::LocalCluster,
    proxy: &Proxy,
    first: &crate::support::cluster::NodeHandle,
    late: &crate::support::cluster::NodeHandle,
) {
    wait_for(proxy, "the late replica to be copied", || {
        progress(cluster, late) == "streaming"
    })
    .await;
    wait_for(proxy, "the late replica's rows", || {
        items(cluster, late) == "3001"
    })
    .await;
    cluster
        .psql(&cluster.primary, APP_DB, "DELETE FROM items WHERE id <= 1000")
        .expect("delete");
    for r in [first, late] {
        wait_for(proxy, "the delete on both replicas", || {
            items(cluster, r) == "2001"
        })
        .await;
    }
}

/// A replica whose copy fails (here its restore: a view of its own depends on a table the restore replaces)
/// leaves the shared copy; the other replica is copied and streams, and the failed one is copied again once
/// the obstacle is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_whose_copy_fails_leaves_the_round_and_is_copied_later() {
    let cluster = crate::support::forward::plain_cluster().await;
    cluster.psql(&cluster.primary, APP_DB, ITEMS).expect("seed");
    let (good, blocked) = (&cluster.replicas[0], &cluster.replicas[1]);
    cluster
        .psql(
            blocked,
            APP_DB,
            "CREATE TABLE public.items (id bigint); CREATE SCHEMA blocker; \
             CREATE VIEW blocker.v AS SELECT * FROM public.items",
        )
        .expect("blocker");
    let proxy = Proxy::start(&cluster, &forward_toml());
    wait_for(&proxy, "the blocked replica's restore to fail", || {
        proxy.log_contents().contains("depends on table")
    })
    .await;
    first_replica_streams(&cluster, &proxy, good).await;
    assert_ne!(progress(&cluster, blocked), "streaming");
    cluster
        .psql(blocked, APP_DB, "DROP SCHEMA blocker CASCADE")
        .expect("drop the blocker");
    late_replica_catches_up(&cluster, &proxy, good, blocked).await;
}

/// A replica that is down when forward mode starts does not hold the others' copy back: their round waits
/// for it only a moment, and it is copied in a round of its own once it is up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_down_at_start_is_copied_when_it_comes_up() {
    let cluster = crate::support::forward::plain_cluster().await;
    cluster.psql(&cluster.primary, APP_DB, ITEMS).expect("seed");
    let (up, down) = (&cluster.replicas[0], &cluster.replicas[1]);
    tokio::task::block_in_place(|| down.stop()).expect("stop a replica");
    let proxy = Proxy::start(&cluster, &forward_toml());
    first_replica_streams(&cluster, &proxy, up).await;
    tokio::task::block_in_place(|| down.start()).expect("start the replica");
    late_replica_catches_up(&cluster, &proxy, up, down).await;
    let log = proxy.log_contents();
    for round in [&up.name, &down.name].map(|name| format!("replicas=[\"{name}\"]")) {
        assert!(log.contains(&round), "no copy round `{round}`:\n{log}");
    }
}
