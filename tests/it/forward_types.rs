//! Forward mode carries every kind of row and value exactly: TOAST values left out of updates, primary key
//! changes, TRUNCATE (with RESTART IDENTITY and CASCADE), tables without a primary key (REPLICA IDENTITY FULL
//! with duplicate rows; no identity at all), a large transaction, and values of many types (numeric and
//! float NaN/Infinity, timestamps and dates at ±infinity, arrays with NULLs and quotes, jsonb, json, bytea
//! with every byte, uuid, enums, domains, interval, inet/cidr, boolean, text with quotes, backslashes,
//! newlines and unicode). Each case has tables created before pgfleet starts (they travel by the initial
//! copy) and tables created after (they travel by the stream).
//!
//! Replicas are compared table by table: for every table of schema `public`, the row count and the md5 of
//! all rows' text forms in text order must be the same on the primary and on each replica.

use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, LocalCluster, PASSWORD};
use crate::support::forward::*;
use crate::support::proxy::{Proxy, connect};

/// Runs `sql` on the primary as the superuser, panicking with the statement on failure.
async fn on_primary(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("on the primary: `{sql}`: {e:?}"));
}

/// Starts pgfleet in forward mode and waits until the initial copy is done and it follows the stream.
async fn start_forwarding(cluster: &LocalCluster) -> Proxy {
    let proxy = Proxy::start(cluster, &forward_toml());
    wait_until_streaming(cluster, &proxy).await;
    proxy
}

/// A table with one column per type under test; `mood` and `short` name an enum and a domain over text.
fn types_table(name: &str, mood: &str, short: &str, key: &str) -> String {
    format!(
        "CREATE TABLE {name} (
            id int NOT NULL {key},
            n numeric, f8 float8, f4 real,
            ts timestamptz, tsl timestamp, d date, iv interval,
            ia int[], ta text[], jb jsonb, js json, b bytea, u uuid,
            m {mood}, dom {short}, ip inet, net cidr, flag boolean, t text
        )"
    )
}

/// Rows with the values under test: special values, edge cases and an all-NULL row.
fn types_rows(name: &str) -> String {
    format!(
        r#"INSERT INTO {name} VALUES
        (1, 'NaN', 'NaN', 'NaN', 'infinity', 'infinity', 'infinity', '1 year 2 mons 3 days 04:05:06.789',
         '{{1,NULL,3}}', ARRAY['a"b', NULL, 'c,d', E'e\\f', '', 'NULL', '{{x}}', ' lead'],
         '{{"a": [1, 2.50, null], "b": {{"c": "d\"e"}}, "u": "\u00e9"}}', '{{"a":1,  "a":2 }}',
         (SELECT decode(string_agg(lpad(to_hex(g), 2, '0'), ''), 'hex') FROM generate_series(0, 255) g),
         'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11', 'happy', 'short', '192.168.0.1/24', '10.0.0.0/8', true,
         E'it''s "quoted"\\ back\\\\slash\nnew line\r\n\ttab ünïcødé ✓ 😀'),
        (2, 'Infinity', 'Infinity', 'Infinity', '-infinity', '-infinity', '-infinity', '-1 days +02:03:00',
         '{{}}', '{{}}', '[]', '"just a string"', '\x', '00000000-0000-0000-0000-000000000000', 'sad', '',
         '::1', '2001:db8::/32', false, ''),
        (3, '-Infinity', '-Infinity', '-Infinity', '2024-02-29 12:34:56.789+05:30', '1999-12-31 23:59:59.999999',
         '2000-02-29', '0', '{{{{1,2}},{{3,4}}}}', '{{{{"a b",c}},{{d,NULL}}}}',
         '{{"nested": {{"deep": [true, false, {{"x": "\\u0000"}}]}}}}', '{{"k" : [1,2,3]}}', '\x00ff00',
         'ffffffff-ffff-ffff-ffff-ffffffffffff', 'ok', 'x y', '0.0.0.0/0', '0.0.0.0/0', NULL, E'\\x41 is not bytea'),
        (4, '123456789012345678901234567890.123456789012345678901234567890', 0.1, 3.4e38,
         'epoch', '0001-01-01 00:00:00', '4713-01-01 BC', '178000000 years', '{{-2147483648,2147483647}}',
         ARRAY[E'line1\nline2', E'tab\there', 'comma,', 'brace}}', 'quote"', E'back\\slash'],
         '{{"num": 1e100, "neg": -0.0, "big": 123456789012345678901234567890}}', 'null',
         '\x5c7830', 'A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A12', 'happy', '日本語テキスト', '::ffff:1.2.3.4',
         '192.168.100.128/25', true, 'NULL'),
        (5, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
         NULL, NULL),
        (6, '-0.000000000000000000001', 1e-300, 1.17549435e-38, '2038-01-19 03:14:08+00', '294276-12-31 23:59:59',
         '5874897-12-31', '-178000000 years', '{{NULL,NULL}}', '{{NULL}}', '{{}}', ' {{ }} ', '\x00',
         'deadbeef-dead-beef-dead-beefdeadbeef', 'sad', 'ok', '10.1.2.3', '10.1.2.0/24', false,
         E'\u00a0non-breaking and zero\u200bwidth')"#
    )
}

/// Changes every kind of value again on the stream: updates by key, a delete, and copies of every row.
fn types_changes(name: &str) -> String {
    format!(
        "UPDATE {name} SET n = 'NaN', f8 = '-Infinity', f4 = 'Infinity', ia = '{{NULL}}', \
             jb = jb || '{{\"new\": [1, \"two\"]}}', ts = '-infinity', m = 'ok', t = E'changed\\\\\\n''again''' \
             WHERE id IN (4, 6);
         UPDATE {name} SET b = b || '\\x00', ta = array_append(ta, 'more \"quotes\"'), d = 'infinity' WHERE id = 1;
         DELETE FROM {name} WHERE id = 2;
         INSERT INTO {name} SELECT id + 100, n, f8, f4, ts, tsl, d, iv, ia, ta, jb, js, b, u, m, dom, ip, net, flag, t
             FROM {name};"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_of_every_type_survive_copy_and_stream() {
    let cluster = plain_cluster().await;
    let before = format!(
        "CREATE TYPE mood AS ENUM ('sad', 'ok', 'happy'); \
         CREATE DOMAIN short_text AS text CHECK (length(VALUE) <= 20); \
         {}; {}; {}; {}; ALTER TABLE types_copy_full REPLICA IDENTITY FULL",
        types_table("types_copy", "mood", "short_text", "PRIMARY KEY"),
        types_rows("types_copy"),
        types_table("types_copy_full", "mood", "short_text", ""),
        types_rows("types_copy_full"),
    );
    cluster
        .psql(&cluster.primary, APP_DB, &before)
        .expect("tables copied at start");
    let proxy = start_forwarding(&cluster).await;
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;

    // Types and tables created afterwards reach the replicas as DDL, their rows as changes.
    let c = direct(&cluster.primary).await.expect("connect to the primary");
    on_primary(
        &c,
        "CREATE TYPE mood2 AS ENUM ('sad', 'ok', 'happy'); \
         CREATE DOMAIN short_text2 AS text CHECK (length(VALUE) <= 20)",
    )
    .await;
    on_primary(
        &c,
        &types_table("types_stream", "mood2", "short_text2", "PRIMARY KEY"),
    )
    .await;
    on_primary(&c, &types_table("types_stream_full", "mood2", "short_text2", "")).await;
    on_primary(&c, "ALTER TABLE types_stream_full REPLICA IDENTITY FULL").await;
    on_primary(&c, &types_rows("types_stream")).await;
    on_primary(&c, &types_rows("types_stream_full")).await;
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;

    // Updates and deletes find their rows by key, or (REPLICA IDENTITY FULL) by every value of the row.
    for table in [
        "types_copy",
        "types_copy_full",
        "types_stream",
        "types_stream_full",
    ] {
        on_primary(&c, &types_changes(table)).await;
    }
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for table in [
        "types_copy",
        "types_copy_full",
        "types_stream",
        "types_stream_full",
    ] {
        assert_rows(&sums, table, 10);
    }
    assert_forwarding_never_stopped(&cluster, &proxy);
}

/// ~1 MB of base64 text from random bytes: pglz cannot shrink it, so it is stored out of line.
const RANDOM_MB: &str = "(SELECT translate(encode(decode(string_agg(md5(random()::text || g::text), ''), 'hex'), \
     'base64'), E'\\n', '') FROM generate_series(1, 49152) g)";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn toasted_values_stay_when_other_columns_change() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            &format!(
                "CREATE TABLE toast_copy (id int PRIMARY KEY, counter int NOT NULL, big text NOT NULL); \
                 INSERT INTO toast_copy SELECT g, 0, {RANDOM_MB} FROM generate_series(1, 3) g"
            ),
        )
        .expect("toasted rows copied at start");
    let proxy = start_forwarding(&cluster).await;
    let c = direct(&cluster.primary).await.expect("connect to the primary");
    on_primary(
        &c,
        "CREATE TABLE toast_stream (id int PRIMARY KEY, counter int NOT NULL, big text NOT NULL, \
         other text)",
    )
    .await;
    on_primary(
        &c,
        "CREATE TABLE toast_full (id int NOT NULL, counter int NOT NULL, big text NOT NULL); \
         ALTER TABLE toast_full REPLICA IDENTITY FULL",
    )
    .await;
    for table in ["toast_stream", "toast_full"] {
        on_primary(
            &c,
            &format!(
                "INSERT INTO {table} (id, counter, big) SELECT g, 0, {RANDOM_MB} FROM generate_series(1, 3) g"
            ),
        )
        .await;
    }
    let stored: String = c
        .query_one(
            "SELECT pg_column_size(big)::text FROM toast_stream WHERE id = 1",
            &[],
        )
        .await
        .expect("stored size")
        .get(0);
    assert!(
        stored.parse::<i64>().is_ok_and(|n| n > 900_000),
        "the value was compressed to {stored} bytes"
    );
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;

    // Updates that leave the TOASTed column alone: pgoutput sends it as "unchanged".
    for table in ["toast_copy", "toast_stream", "toast_full"] {
        on_primary(&c, &format!("UPDATE {table} SET counter = counter + 1")).await;
        on_primary(
            &c,
            &format!("UPDATE {table} SET counter = counter + 10 WHERE id = 2"),
        )
        .await;
    }
    on_primary(
        &c,
        "UPDATE toast_stream SET other = 'set', counter = 5 WHERE id = 3",
    )
    .await;
    // A key change that leaves the TOASTed value alone, and one row whose TOASTed value does change.
    on_primary(&c, "UPDATE toast_stream SET id = id + 100 WHERE id = 1").await;
    on_primary(&c, "UPDATE toast_copy SET id = id + 100 WHERE id = 1").await;
    on_primary(
        &c,
        &format!("UPDATE toast_copy SET big = {RANDOM_MB} WHERE id = 3"),
    )
    .await;
    on_primary(&c, "DELETE FROM toast_full WHERE id = 3").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for (table, rows) in [("toast_copy", 3), ("toast_stream", 3), ("toast_full", 2)] {
        assert_rows(&sums, table, rows);
    }
    for replica in &cluster.replicas {
        let sizes = cluster
            .psql(
                replica,
                APP_DB,
                "SELECT string_agg(length(big)::text, ',' ORDER BY id) FROM toast_stream",
            )
            .expect("sizes on the replica");
        assert!(
            sizes
                .split(',')
                .all(|n| n.parse::<usize>().is_ok_and(|n| n > 1_000_000)),
            "{}: TOASTed values lost: lengths {sizes}",
            replica.name
        );
    }
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn primary_key_changes_move_rows() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE pk_copy (id int PRIMARY KEY, v text NOT NULL); \
             INSERT INTO pk_copy SELECT g, 'v' || g FROM generate_series(1, 100) g",
        )
        .expect("seed");
    let proxy = start_forwarding(&cluster).await;
    let c = direct(&cluster.primary).await.expect("connect to the primary");
    on_primary(
        &c,
        "CREATE TABLE pk_stream (id int PRIMARY KEY, v text NOT NULL); \
         CREATE TABLE pk_pair (a int, b int, v text, PRIMARY KEY (a, b))",
    )
    .await;
    on_primary(
        &c,
        "INSERT INTO pk_stream SELECT g, 'v' || g FROM generate_series(1, 100) g; \
         INSERT INTO pk_pair SELECT g % 5, g, 'p' || g FROM generate_series(1, 50) g",
    )
    .await;
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    on_primary(&c, "UPDATE pk_copy SET id = id + 1000").await;
    on_primary(&c, "UPDATE pk_stream SET id = id + 1000").await;
    // Key and value at once, part of a composite key, and a key moved back into a freed slot.
    on_primary(
        &c,
        "UPDATE pk_stream SET id = id - 1000 + 5000, v = 'moved' WHERE id <= 1010",
    )
    .await;
    on_primary(&c, "UPDATE pk_pair SET b = b + 100, v = v || '!' WHERE a = 1").await;
    on_primary(&c, "UPDATE pk_copy SET id = 1 WHERE id = 1001").await;
    on_primary(&c, "BEGIN; UPDATE pk_stream SET id = 1 WHERE id = 1050; UPDATE pk_stream SET id = 1050 WHERE id = 1051; COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for table in ["pk_copy", "pk_stream"] {
        assert_rows(&sums, table, 100);
    }
    for replica in &cluster.replicas {
        let ids = cluster
            .psql(
                replica,
                APP_DB,
                "SELECT (SELECT min(id) || '-' || max(id) FROM pk_copy) || ' ' || \
                 (SELECT count(*) FROM pk_stream WHERE v = 'moved')",
            )
            .expect("replica ids");
        assert_eq!(ids, "1-1100 10", "{}", replica.name);
    }
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncate_with_restart_identity_and_cascade() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE trunc_copy (id serial PRIMARY KEY, v text); \
             INSERT INTO trunc_copy (v) SELECT 'v' || g FROM generate_series(1, 20) g",
        )
        .expect("seed");
    let proxy = start_forwarding(&cluster).await;
    let c = direct(&cluster.primary).await.expect("connect to the primary");
    on_primary(
        &c,
        "CREATE TABLE trunc_plain (id serial PRIMARY KEY, v text); \
         CREATE TABLE trunc_ident (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY, v text); \
         CREATE TABLE parent (id int PRIMARY KEY); \
         CREATE TABLE child (id int PRIMARY KEY, parent_id int NOT NULL REFERENCES parent (id))",
    )
    .await;
    on_primary(
        &c,
        "INSERT INTO trunc_plain (v) SELECT 'p' || g FROM generate_series(1, 10) g; \
         INSERT INTO trunc_ident (v) SELECT 'i' || g FROM generate_series(1, 10) g; \
         INSERT INTO parent SELECT g FROM generate_series(1, 5) g; \
         INSERT INTO child SELECT g, g % 5 + 1 FROM generate_series(1, 20) g",
    )
    .await;
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    wait_until_sequences_match(&cluster, &proxy, MATCH_DEADLINE).await;

    // TRUNCATE keeps sequences going; RESTART IDENTITY resets them; CASCADE reaches referencing tables.
    on_primary(&c, "TRUNCATE trunc_plain").await;
    on_primary(
        &c,
        "INSERT INTO trunc_plain (v) VALUES ('after truncate'), ('again')",
    )
    .await;
    on_primary(&c, "TRUNCATE trunc_copy RESTART IDENTITY").await;
    on_primary(
        &c,
        "INSERT INTO trunc_copy (v) SELECT 'r' || g FROM generate_series(1, 5) g",
    )
    .await;
    // Reloading a table with as many rows as before: its sequence ends where it was, but it was reset.
    on_primary(
        &c,
        "BEGIN; TRUNCATE trunc_ident RESTART IDENTITY; \
         INSERT INTO trunc_ident (v) SELECT 'reloaded ' || g FROM generate_series(1, 10) g; COMMIT",
    )
    .await;
    on_primary(&c, "TRUNCATE parent CASCADE").await;
    on_primary(
        &c,
        "INSERT INTO parent VALUES (42); INSERT INTO child VALUES (1, 42)",
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for (table, rows) in [
        ("trunc_plain", 2),
        ("trunc_copy", 5),
        ("trunc_ident", 10),
        ("parent", 1),
        ("child", 1),
    ] {
        assert_rows(&sums, table, rows);
    }
    // Sequence state follows: a replica taking over would hand out the primary's next values.
    wait_until_sequences_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replica_identity_full_changes_one_duplicate_at_a_time() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE dup_copy (k int, v text); ALTER TABLE dup_copy REPLICA IDENTITY FULL; \
             INSERT INTO dup_copy VALUES (1, 'a'), (1, 'a'), (1, 'a'), (2, 'b'), (2, 'b'), (3, NULL), (3, NULL)",
        )
        .expect("seed");
    let proxy = start_forwarding(&cluster).await;
    let c = direct(&cluster.primary).await.expect("connect to the primary");
    on_primary(
        &c,
        "CREATE TABLE dup_stream (k int, v text, doc jsonb); ALTER TABLE dup_stream REPLICA IDENTITY FULL",
    )
    .await;
    on_primary(
        &c,
        "INSERT INTO dup_stream VALUES (1, 'a', '{\"x\": 1}'), (1, 'a', '{\"x\": 1}'), (1, 'a', '{\"x\": 1}'), \
         (2, 'b', NULL), (2, 'b', NULL), (3, NULL, NULL), (3, NULL, NULL)",
    )
    .await;
    wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;

    for table in ["dup_copy", "dup_stream"] {
        let one = |filter: &str| format!("ctid = (SELECT ctid FROM {table} WHERE {filter} LIMIT 1)");
        let changes = [
            (
                format!("UPDATE {table} SET v = 'a-changed' WHERE {}", one("k = 1")),
                1,
            ),
            (format!("DELETE FROM {table} WHERE {}", one("k = 2")), 1),
            (format!("DELETE FROM {table} WHERE {}", one("k = 3")), 1),
            (
                format!("UPDATE {table} SET v = 'null-changed' WHERE {}", one("k = 3")),
                1,
            ),
            (
                format!("UPDATE {table} SET v = 'both' WHERE k = 1 AND v = 'a'"),
                2,
            ),
        ];
        for (sql, rows) in changes {
            let affected = c
                .execute(sql.as_str(), &[])
                .await
                .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
            assert_eq!(affected, rows, "`{sql}` on the primary");
        }
    }
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    for replica in &cluster.replicas {
        for table in ["dup_copy", "dup_stream"] {
            let groups = cluster
                .psql(
                    replica,
                    APP_DB,
                    &format!(
                        "SELECT string_agg(k || ':' || coalesce(v, 'NULL') || 'x' || n, ' ' ORDER BY k, v) \
                         FROM (SELECT k, v, count(*) AS n FROM {table} GROUP BY k, v) g"
                    ),
                )
                .expect("groups");
            assert_eq!(
                groups, "1:a-changedx1 1:bothx2 2:bx1 3:null-changedx1",
                "{}: {table}; primary: {sums:?}",
                replica.name
            );
        }
    }
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn table_without_identity_refuses_updates_but_forwards_inserts() {
    let cluster = plain_cluster().await;
    let proxy = start_forwarding(&cluster).await;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute("CREATE TABLE no_ident (k int, v text)")
        .await
        .expect("create through pgfleet");
    c.batch_execute("INSERT INTO no_ident VALUES (1, 'a'), (1, 'a'), (2, 'b')")
        .await
        .expect("insert through pgfleet");
    // PostgreSQL itself refuses: the table is published (FOR ALL TABLES) and nothing identifies a row.
    for (sql, verb) in [
        ("UPDATE no_ident SET v = 'x' WHERE k = 1", "cannot update table"),
        ("DELETE FROM no_ident WHERE k = 2", "cannot delete from table"),
    ] {
        let err = c.batch_execute(sql).await.expect_err("must be refused");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{sql}: not a server error: {err:?}"));
        assert_eq!(db.code().code(), "55000", "{sql}: {db:?}");
        assert_eq!(
            db.message(),
            format!(
                "{verb} \"no_ident\" because it does not have a replica identity and publishes {}s",
                {
                    if verb.contains("update") {
                        "update"
                    } else {
                        "delete"
                    }
                }
            ),
            "{sql}"
        );
        assert_eq!(
            db.hint(),
            Some(
                format!(
                    "To enable {} the table, set REPLICA IDENTITY using ALTER TABLE.",
                    if verb.contains("update") {
                        "updating"
                    } else {
                        "deleting from"
                    }
                )
                .as_str()
            ),
            "{sql}"
        );
    }
    c.batch_execute("INSERT INTO no_ident VALUES (3, 'c'), (NULL, NULL)")
        .await
        .expect("inserts still work");
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "no_ident", 5);
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_transaction_arrives_whole() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE big_copy (id int PRIMARY KEY, v text NOT NULL); \
             INSERT INTO big_copy SELECT g, md5(g::text) FROM generate_series(1, 50000) g",
        )
        .expect("seed");
    let proxy = start_forwarding(&cluster).await;
    let c = direct(&cluster.primary).await.expect("connect to the primary");
    on_primary(
        &c,
        "CREATE TABLE big_tx (id int PRIMARY KEY, v text NOT NULL, n int NOT NULL)",
    )
    .await;
    on_primary(
        &c,
        "BEGIN; \
         INSERT INTO big_tx SELECT g, md5(g::text), 0 FROM generate_series(1, 200000) g; \
         UPDATE big_tx SET v = upper(v), n = n + 1 WHERE id % 3 = 0; \
         DELETE FROM big_tx WHERE id % 10 = 0; \
         UPDATE big_copy SET v = 'touched' WHERE id % 2 = 0; \
         INSERT INTO big_copy SELECT g, 'new' FROM generate_series(50001, 60000) g; \
         COMMIT",
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    assert_rows(&sums, "big_tx", 180000);
    assert_rows(&sums, "big_copy", 60000);
    assert_forwarding_never_stopped(&cluster, &proxy);
}
