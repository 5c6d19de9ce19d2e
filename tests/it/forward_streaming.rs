//! Forward mode with large in-progress transactions streamed (pgoutput `streaming 'on'`): the primary
//! sends a transaction's changes in chunks while it runs, and each replica applies them inside an open
//! transaction of its own, before the primary commits. Proven here against real servers:
//!
//! - a streamed transaction's chunks are applied on every replica while it is still open on the primary,
//!   none of it is visible there before its commit, and all of it is after;
//! - transactions that commit while a streamed one is open reach the replicas first (commit order), and two
//!   streamed transactions open at once commit on the replicas in the order they committed on the primary;
//! - subtransactions rolled back inside a streamed transaction (ROLLBACK TO SAVEPOINT, a plpgsql block's
//!   EXCEPTION clause, a savepoint rolled back with a released one inside it) are undone on the replicas;
//! - a streamed transaction that rolls back leaves nothing on the replicas and no open replica transaction;
//! - pgfleet killed with SIGKILL while a streamed transaction is open, or just after one committed, applies
//!   it exactly once after a restart;
//! - row-by-row changes (a table without a key), TRUNCATE and DDL inside a streamed transaction land at their
//!   place among its bulk changes;
//! - tables created or altered inside a streamed transaction are known, as it left them, to the
//!   transactions after it (the primary does not describe them again);
//! - a streamed transaction that one replica already has and another has not comes again when the stream
//!   starts over: the first rolls its second copy back, the second applies it, neither has it twice;
//! - with `replication.streaming = false` a large transaction is decoded whole at commit (spilled to disk on
//!   the primary, never streamed) and still reaches the replicas.
//!
//! The primary's `logical_decoding_work_mem` is lowered to its minimum (64kB) so that a few thousand rows
//! make a transaction large. That it was streamed is read from the primary's `pg_stat_replication_slots`.

use std::time::Duration;

use crate::support::cluster::{APP_DB, LocalCluster, NodeHandle};
use crate::support::forward::*;
use crate::support::proxy::{Proxy, free_port};
use crate::support::streaming::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_transaction_is_applied_on_replicas_while_it_runs_and_committed_with_it() {
    let (cluster, proxy) =
        streaming_fleet("CREATE TABLE streamed_big (id int PRIMARY KEY, v text NOT NULL)").await;

    let a = primary_session(&cluster).await;
    exec(
        &a,
        "BEGIN; \
         INSERT INTO streamed_big SELECT g, 'v' || g FROM generate_series(1, 20000) g; \
         UPDATE streamed_big SET v = v || ' updated' WHERE id % 2 = 0; \
         DELETE FROM streamed_big WHERE id % 10 = 0",
    )
    .await;
    // Still open on the primary: every replica applies it already, and shows none of it.
    wait_for_chunks_applied(&cluster, &proxy, &[("streamed_big", 0)]).await;
    wait_for_slot_stat(&cluster, &proxy, "stream_txns").await;

    exec(&a, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "streamed_big", 18000);
    for replica in &cluster.replicas {
        let updated = number(
            &cluster,
            replica,
            "SELECT count(*) FROM streamed_big WHERE v LIKE '% updated'",
        );
        assert_eq!(
            updated, 8000,
            "{}: rows updated in the streamed transaction",
            replica.name
        );
    }
    wait_until_no_open_writers(&cluster, &proxy, "after the streamed transaction committed").await;
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commits_made_while_a_streamed_transaction_is_open_reach_replicas_first() {
    let (cluster, proxy) = streaming_fleet(
        "CREATE TABLE open_a (id int PRIMARY KEY, v text NOT NULL); \
         INSERT INTO open_a SELECT g, 'before' FROM generate_series(1, 1000) g; \
         CREATE TABLE small_b (id int PRIMARY KEY, v text NOT NULL)",
    )
    .await;

    // Session A: a large transaction, left open; the replicas apply its chunks.
    let a = primary_session(&cluster).await;
    exec(
        &a,
        "BEGIN; INSERT INTO open_a SELECT g, 'from A' FROM generate_series(1001, 21000) g",
    )
    .await;
    wait_for_chunks_applied(&cluster, &proxy, &[("open_a", 1000), ("small_b", 0)]).await;

    // Session B commits small transactions meanwhile, one of them on a row of A's table that A left alone.
    let b = primary_session(&cluster).await;
    for id in 1..=5 {
        exec(&b, &format!("INSERT INTO small_b VALUES ({id}, 'from B')")).await;
    }
    exec(&b, "UPDATE open_a SET v = 'updated by B' WHERE id = 1").await;

    // B's commits reach every replica while A is still open, and A's rows are still absent there.
    const B_DONE: &str =
        "SELECT (SELECT count(*) FROM small_b) || ' ' || (SELECT v FROM open_a WHERE id = 1)";
    for replica in &cluster.replicas {
        let seen = crate::support::wait_until(MATCH_DEADLINE, async || {
            cluster
                .psql(replica, APP_DB, B_DONE)
                .is_ok_and(|s| s == "5 updated by B")
        })
        .await;
        assert!(
            seen.is_some(),
            "{}: B's commits did not arrive while A's streamed transaction was open (now: {:?})\n\
             --- pgfleet log tail ---\n{}\n{}",
            replica.name,
            cluster.psql(replica, APP_DB, B_DONE),
            log_tail(&proxy),
            replica_errors(&cluster)
        );
        let a_rows = rows(&cluster, replica, "open_a");
        assert_eq!(
            a_rows,
            1000,
            "{}: open_a has {a_rows} rows before A committed (A's rows must not be visible yet)\n{}",
            replica.name,
            log_tail(&proxy)
        );
    }
    wait_for_slot_stat(&cluster, &proxy, "stream_txns").await;

    exec(&a, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "open_a", 21000);
    assert_rows(&sums, "small_b", 5);
    wait_until_no_open_writers(&cluster, &proxy, "after A committed").await;
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rolled_back_subtransactions_inside_a_streamed_transaction_are_undone_on_replicas() {
    let (cluster, proxy) =
        streaming_fleet("CREATE TABLE savepoints (id int PRIMARY KEY, v text NOT NULL)").await;

    let c = primary_session(&cluster).await;
    for step in [
        "BEGIN",
        "INSERT INTO savepoints SELECT g, 'first' FROM generate_series(1, 10000) g",
        // A subtransaction large enough to be streamed before its abort: its rows and its updates of the
        // top level's rows are undone.
        "SAVEPOINT s1",
        "INSERT INTO savepoints SELECT g, 'rolled back' FROM generate_series(10001, 20000) g",
        "UPDATE savepoints SET v = 'updated, then rolled back' WHERE id <= 5000",
        "ROLLBACK TO SAVEPOINT s1",
        // The same keys again: they would conflict with s1's rows had those not been undone.
        "SAVEPOINT s2",
        "INSERT INTO savepoints SELECT g, 'second' FROM generate_series(10001, 20000) g",
        "RELEASE SAVEPOINT s2",
        // A plpgsql block whose EXCEPTION clause rolls back its subtransaction after 5,000 rows, followed by
        // rows that stay.
        "DO $$ BEGIN \
           BEGIN \
             INSERT INTO savepoints SELECT g, 'in the failed block' FROM generate_series(20001, 25000) g; \
             RAISE EXCEPTION 'undo the block'; \
           EXCEPTION WHEN others THEN NULL; \
           END; \
           INSERT INTO savepoints SELECT g, 'after the block' FROM generate_series(25001, 25010) g; \
         END $$",
        // Nested: a released savepoint inside one rolled back goes with it.
        "SAVEPOINT p",
        "INSERT INTO savepoints SELECT g, 'in p' FROM generate_series(30001, 33000) g",
        "SAVEPOINT c",
        "INSERT INTO savepoints SELECT g, 'in c' FROM generate_series(33001, 36000) g",
        "RELEASE SAVEPOINT c",
        "ROLLBACK TO SAVEPOINT p",
        // The top level goes on after the aborted subtransactions.
        "INSERT INTO savepoints SELECT g, 'last' FROM generate_series(40001, 40010) g",
        "UPDATE savepoints SET v = v || ' +top' WHERE id % 1000 = 0",
        "COMMIT",
    ] {
        exec(&c, step).await;
    }

    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "savepoints", 20020);
    for replica in &cluster.replicas {
        let undone = number(
            &cluster,
            replica,
            "SELECT count(*) FROM savepoints WHERE v LIKE '%rolled back%' OR v LIKE 'in %'",
        );
        assert_eq!(
            undone,
            0,
            "{}: rows of rolled-back subtransactions survived\n{}",
            replica.name,
            log_tail(&proxy)
        );
    }
    streamed_and_closed(&cluster, &proxy, "after the streamed transaction committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_that_rolls_back_leaves_nothing_on_replicas() {
    let (cluster, proxy) =
        streaming_fleet("CREATE TABLE abandoned (id int PRIMARY KEY, v text NOT NULL)").await;

    let c = primary_session(&cluster).await;
    exec(
        &c,
        "BEGIN; INSERT INTO abandoned SELECT g, 'never committed' FROM generate_series(1, 20000) g",
    )
    .await;
    wait_for_chunks_applied(&cluster, &proxy, &[("abandoned", 0)]).await;
    exec(&c, "ROLLBACK").await;
    // A commit after it, in the same table (one of the rolled-back keys): the replicas must get exactly it.
    exec(&c, "INSERT INTO abandoned VALUES (1, 'marker')").await;

    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "abandoned", 1);
    streamed_and_closed(&cluster, &proxy, "after the streamed transaction rolled back").await;
}

/// Rows of `table` on `node` that have a twin with the same `key` (there should be none).
fn duplicates(cluster: &LocalCluster, node: &NodeHandle, table: &str, key: &str) -> i64 {
    number(
        cluster,
        node,
        &format!("SELECT count(*) - count(DISTINCT ({key})) FROM {table}"),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgfleet_killed_inside_a_streamed_transaction_applies_it_exactly_once() {
    let cluster = small_decoding_memory_cluster().await;
    // No key on `crash_log`: rows applied twice show up as doubled rows, not as an error.
    primary_sql(
        &cluster,
        "CREATE TABLE crash_log (n int NOT NULL, g int NOT NULL, v text NOT NULL); \
         ALTER TABLE crash_log REPLICA IDENTITY FULL; \
         CREATE TABLE crash_keyed (id int PRIMARY KEY, v text NOT NULL)",
    );
    let config = Proxy::config_for(&cluster, free_port(), &forward_toml());
    let mut proxy = Proxy::start_with_config(config.clone());
    wait_until_streaming(&cluster, &proxy).await;

    // Phase 1: killed while the replicas hold the open transaction's chunks.
    let c = primary_session(&cluster).await;
    exec(
        &c,
        "BEGIN; \
         INSERT INTO crash_log SELECT 1, g, md5(g::text) FROM generate_series(1, 20000) g; \
         INSERT INTO crash_keyed SELECT g, 'p1' FROM generate_series(1, 5000) g",
    )
    .await;
    wait_for_chunks_applied(&cluster, &proxy, &[("crash_log", 0), ("crash_keyed", 0)]).await;
    kill_9(&mut proxy);
    eprintln!("phase 1: pgfleet killed while replicas applied an open streamed transaction");
    // The killed pgfleet's replica transactions end with its connections, uncommitted.
    wait_until_no_open_writers(&cluster, &proxy, "pgfleet was killed").await;
    for replica in &cluster.replicas {
        for table in ["crash_log", "crash_keyed"] {
            let now = rows(&cluster, replica, table);
            assert_eq!(
                now, 0,
                "{}: {table} has {now} rows after pgfleet was killed inside the open transaction",
                replica.name
            );
        }
    }
    // The restarted pgfleet has its chunks sent again (or the whole transaction at its commit, if the slot
    // had been confirmed past them): either way it must apply the transaction once.
    proxy = Proxy::start_with_config(config.clone());
    exec(&c, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    assert_rows(&sums, "crash_log", 20000);
    assert_rows(&sums, "crash_keyed", 5000);
    wait_for_slot_stat(&cluster, &proxy, "stream_txns").await;

    // Phase 2: killed right after a streamed transaction committed on the primary.
    exec(
        &c,
        "BEGIN; \
         INSERT INTO crash_log SELECT 2, g, md5(g::text) FROM generate_series(1, 20000) g; \
         UPDATE crash_keyed SET v = v || '+p2'; \
         INSERT INTO crash_keyed SELECT g, 'p2' FROM generate_series(5001, 10000) g; \
         COMMIT",
    )
    .await;
    kill_9(&mut proxy);
    eprintln!("phase 2: pgfleet killed right after a streamed transaction committed");
    proxy = Proxy::start_with_config(config);
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    assert_rows(&sums, "crash_log", 40000);
    assert_rows(&sums, "crash_keyed", 10000);
    for replica in &cluster.replicas {
        let doubled = duplicates(&cluster, replica, "crash_log", "n, g");
        assert_eq!(
            doubled, 0,
            "{}: {doubled} doubled rows in crash_log",
            replica.name
        );
        let updated_twice = number(
            &cluster,
            replica,
            "SELECT count(*) FROM crash_keyed WHERE v LIKE '%+p2+p2%'",
        );
        assert_eq!(
            updated_twice, 0,
            "{}: rows of crash_keyed updated twice",
            replica.name
        );
    }
    wait_until_no_open_writers(&cluster, &proxy, "after both transactions committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_streaming_off_a_large_transaction_is_decoded_whole_at_commit() {
    let cluster = small_decoding_memory_cluster().await;
    primary_sql(
        &cluster,
        "CREATE TABLE whole (id int PRIMARY KEY, v text NOT NULL)",
    );
    let toml = forward_toml().replacen("[replication]\n", "[replication]\nstreaming = false\n", 1);
    assert!(
        toml.contains("[replication]\nstreaming = false\n"),
        "forward_toml() has no `[replication]` table to turn streaming off in:\n{toml}"
    );
    let proxy = Proxy::start(&cluster, &toml);
    wait_until_streaming(&cluster, &proxy).await;

    let c = primary_session(&cluster).await;
    exec(
        &c,
        "BEGIN; INSERT INTO whole SELECT g, 'w' || g FROM generate_series(1, 20000) g",
    )
    .await;
    // The WAL sender has decoded past its memory and spilled the open transaction to disk instead of
    // streaming it: the replicas have nothing of it yet.
    wait_for_slot_stat(&cluster, &proxy, "spill_txns").await;
    for replica in &cluster.replicas {
        let writers = number(&cluster, replica, OPEN_WRITERS);
        assert_eq!(
            writers,
            0,
            "{}: pgfleet applies the open transaction with streaming off (sessions: {})\n{}",
            replica.name,
            forward_sessions(&cluster, replica),
            log_tail(&proxy)
        );
        let now = rows(&cluster, replica, "whole");
        assert_eq!(now, 0, "{}: whole has {now} rows before the commit", replica.name);
    }

    exec(&c, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "whole", 20000);
    let streamed = slot_stat(&cluster, "stream_txns");
    assert_eq!(
        streamed,
        0,
        "the primary streamed a transaction with `streaming = false`: {}\n{}",
        slot_stats(&cluster),
        log_tail(&proxy)
    );
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streamed_transaction_a_replica_already_has_comes_again_and_is_not_applied_twice() {
    let cluster = small_decoding_memory_cluster().await;
    primary_sql(
        &cluster,
        "CREATE TABLE again_log (n int NOT NULL, v text NOT NULL); \
         ALTER TABLE again_log REPLICA IDENTITY FULL; \
         CREATE TABLE again_keyed (id int PRIMARY KEY, v text NOT NULL)",
    );
    let config = Proxy::config_for(&cluster, free_port(), &forward_toml());
    let mut proxy = Proxy::start_with_config(config.clone());
    wait_until_streaming(&cluster, &proxy).await;
    let (ahead, behind) = (&cluster.replicas[0], &cluster.replicas[1]);

    // The second replica cannot apply anything to again_keyed while this lock is held, so the slot stays
    // confirmed before the transaction below: the first replica commits it, the second does not.
    let blocker = direct(behind).await.expect("a session on the second replica");
    exec(&blocker, "BEGIN; LOCK TABLE again_keyed IN ACCESS EXCLUSIVE MODE").await;
    primary_sql(
        &cluster,
        "BEGIN; \
         INSERT INTO again_log SELECT g, md5(g::text) FROM generate_series(1, 20000) g; \
         INSERT INTO again_keyed SELECT g, 'once' FROM generate_series(1, 5000) g; \
         COMMIT",
    );
    let applied = crate::support::wait_until(MATCH_DEADLINE, async || {
        rows(&cluster, ahead, "again_keyed") == 5000
    })
    .await;
    assert!(
        applied.is_some(),
        "{} never committed the streamed transaction: {} rows in again_keyed\n{}\n{}",
        ahead.name,
        rows(&cluster, ahead, "again_keyed"),
        log_tail(&proxy),
        replica_errors(&cluster)
    );
    assert_eq!(
        rows(&cluster, behind, "again_log"),
        0,
        "{} committed the transaction although its table was locked",
        behind.name
    );
    wait_for_slot_stat(&cluster, &proxy, "stream_txns").await;
    let streamed_once = slot_stat(&cluster, "stream_txns");

    // A restart starts the stream from the slot's confirmed position, before that transaction: the
    // primary streams it again to both replicas.
    kill_9(&mut proxy);
    exec(&blocker, "COMMIT").await;
    proxy = Proxy::start_with_config(config);
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    let again = crate::support::wait_until(MATCH_DEADLINE, async || {
        slot_stat(&cluster, "stream_txns") > streamed_once
    })
    .await;
    assert!(
        again.is_some(),
        "the transaction was not streamed again after the restart: {}",
        slot_stats(&cluster)
    );
    assert_rows(&sums, "again_log", 20000);
    assert_rows(&sums, "again_keyed", 5000);
    for replica in &cluster.replicas {
        let doubled = duplicates(&cluster, replica, "again_log", "n");
        assert_eq!(
            doubled, 0,
            "{}: {doubled} doubled rows in again_log",
            replica.name
        );
    }
    // The replica that had it rolled its second copy back; a failure to do so stops and retries forwarding.
    assert_forwarding_never_stopped(&cluster, &proxy);
    wait_until_no_open_writers(&cluster, &proxy, "after the transaction came again").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tables_a_streamed_transaction_describes_are_known_to_the_transactions_after_it() {
    let (cluster, proxy) = streaming_fleet(
        "CREATE TABLE grown (id int PRIMARY KEY, v text NOT NULL); \
         INSERT INTO grown SELECT g, 'old' FROM generate_series(1, 10) g; \
         CREATE TABLE quiet (id int PRIMARY KEY, v text NOT NULL)",
    )
    .await;
    // The primary describes `quiet` (untouched since pgfleet started), `fresh` and the altered `grown`
    // inside the streamed transaction only. Once it commits, the primary counts `quiet`'s description as
    // sent, and a later transaction's change to it comes without one.
    let c = primary_session(&cluster).await;
    exec(&c, "BEGIN").await;
    exec(
        &c,
        "INSERT INTO quiet SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await;
    exec(&c, "CREATE TABLE fresh (id int PRIMARY KEY, v text NOT NULL)").await;
    exec(
        &c,
        "INSERT INTO fresh SELECT g, md5(g::text) FROM generate_series(1, 20000) g",
    )
    .await;
    exec(&c, "ALTER TABLE grown ADD COLUMN extra int").await;
    exec(
        &c,
        "INSERT INTO grown SELECT g, 'new', g * 2 FROM generate_series(11, 20000) g",
    )
    .await;
    wait_for_chunks_applied(&cluster, &proxy, &[("grown", 10), ("quiet", 0)]).await;
    exec(&c, "COMMIT").await;
    exec(&c, "INSERT INTO quiet VALUES (20001, 'after')").await;
    exec(&c, "INSERT INTO fresh VALUES (20001, 'after')").await;
    exec(&c, "INSERT INTO grown VALUES (20001, 'after', 7)").await;
    exec(
        &c,
        "UPDATE grown SET extra = 0, v = 'changed after' WHERE id IN (1, 11)",
    )
    .await;
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(60)).await;
    assert_rows(&sums, "quiet", 20001);
    assert_rows(&sums, "fresh", 20001);
    assert_rows(&sums, "grown", 20001);
    wait_for_slot_stat(&cluster, &proxy, "stream_txns").await;
    assert_forwarding_never_stopped(&cluster, &proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_streamed_transactions_open_at_once_commit_in_their_order() {
    let (cluster, proxy) = streaming_fleet(
        "CREATE TABLE first_t (id int PRIMARY KEY, v text NOT NULL); \
         CREATE TABLE second_t (id int PRIMARY KEY, v text NOT NULL)",
    )
    .await;

    // Their blocks interleave in the stream; each replica holds both open.
    let a = primary_session(&cluster).await;
    let b = primary_session(&cluster).await;
    exec(
        &a,
        "BEGIN; INSERT INTO first_t SELECT g, 'a' FROM generate_series(1, 10000) g",
    )
    .await;
    exec(
        &b,
        "BEGIN; INSERT INTO second_t SELECT g, 'b' FROM generate_series(1, 10000) g",
    )
    .await;
    exec(
        &a,
        "INSERT INTO first_t SELECT g, 'a' FROM generate_series(10001, 20000) g",
    )
    .await;
    exec(
        &b,
        "INSERT INTO second_t SELECT g, 'b' FROM generate_series(10001, 20000) g",
    )
    .await;
    for replica in &cluster.replicas {
        let both = crate::support::wait_until(MATCH_DEADLINE, async || {
            number(&cluster, replica, OPEN_WRITERS) >= 2
        })
        .await;
        assert!(
            both.is_some(),
            "{}: the two open streamed transactions are not both being applied: {}\n{}",
            replica.name,
            forward_sessions(&cluster, replica),
            log_tail(&proxy)
        );
    }
    // B commits first: every replica has it while A is still open there.
    exec(&b, "COMMIT").await;
    for replica in &cluster.replicas {
        let b_first = crate::support::wait_until(MATCH_DEADLINE, async || {
            rows(&cluster, replica, "second_t") == 20000
        })
        .await;
        assert!(
            b_first.is_some(),
            "{}: the streamed transaction that committed first never arrived\n{}\n{}",
            replica.name,
            log_tail(&proxy),
            replica_errors(&cluster)
        );
        assert_eq!(
            rows(&cluster, replica, "first_t"),
            0,
            "{}: the still open transaction's rows are visible",
            replica.name
        );
    }
    exec(&a, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "first_t", 20000);
    assert_rows(&sums, "second_t", 20000);
    streamed_and_closed(&cluster, &proxy, "after both committed").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn row_wise_changes_truncate_and_ddl_inside_a_streamed_transaction_keep_their_place() {
    let (cluster, proxy) = streaming_fleet(
        "CREATE TABLE full_ident (a int NOT NULL, b text NOT NULL); \
         ALTER TABLE full_ident REPLICA IDENTITY FULL; \
         INSERT INTO full_ident SELECT g, 'b' || g FROM generate_series(1, 3000) g; \
         CREATE TABLE emptied (id int PRIMARY KEY, v text NOT NULL); \
         INSERT INTO emptied SELECT g, 'before' FROM generate_series(1, 3000) g",
    )
    .await;
    let c = primary_session(&cluster).await;
    for step in [
        "BEGIN",
        // Row by row on the replicas: no key to join a set on.
        "UPDATE full_ident SET b = b || '!' WHERE a % 3 = 0",
        "DELETE FROM full_ident WHERE a % 5 = 0",
        "INSERT INTO emptied SELECT g, 'more' FROM generate_series(3001, 20000) g",
        // Everything above in `emptied` goes; the rows after it stay.
        "TRUNCATE emptied",
        "INSERT INTO emptied SELECT g, 'after truncate' FROM generate_series(1, 15000) g",
        "ALTER TABLE emptied ADD COLUMN n int",
        "UPDATE emptied SET n = id % 7 WHERE id <= 12000",
    ] {
        exec(&c, step).await;
    }
    // Only full_ident is read while the transaction is open: once a replica has applied the TRUNCATE,
    // `emptied` is under its ACCESS EXCLUSIVE lock there until the commit, and a read of it would wait for
    // the COMMIT this test sends only afterwards.
    wait_for_chunks_applied(&cluster, &proxy, &[("full_ident", 3000)]).await;
    exec(&c, "COMMIT").await;
    let sums = wait_until_replicas_match(&cluster, &proxy, MATCH_DEADLINE).await;
    assert_rows(&sums, "emptied", 15000);
    assert_rows(&sums, "full_ident", 2400);
    streamed_and_closed(&cluster, &proxy, "after the streamed transaction committed").await;
}
