//! A sharded pgfleet in front of two shards, each a primary with a streaming replica: rows land where
//! PostgreSQL's hash partitioning places them, reads and writes by key run on their shard, statements
//! without a key run on every shard and are answered as one, transactions across shards commit on both or
//! neither (two-phase commit) and leave nothing prepared, and what cannot run correctly is refused.

use pgfleet::shard::hash::shard_for;
use pgfleet::shard::value::KeyValue;
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD};
use crate::support::proxy::{Proxy, connect};
use crate::support::shards::ShardedFleet;

const SHARDED_TABLES: &str = "[[sharded_tables]]\nname = \"accounts\"\ncolumn = \"id\"\n";

const ACCOUNTS: &str =
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, balance numeric NOT NULL DEFAULT 0)";

/// Two shards with a replica each, pgfleet in front, `accounts` created through pgfleet.
async fn sharded() -> (ShardedFleet, Proxy, Client) {
    let fleet = ShardedFleet::start(2, 1).await;
    let proxy = fleet.proxy(SHARDED_TABLES);
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.simple_query(ACCOUNTS).await.expect("CREATE TABLE through pgfleet");
    (fleet, proxy, c)
}

/// The shard pgfleet must place `id` on.
fn shard_of(id: i64) -> usize {
    shard_for(&KeyValue::Int(id), 2).index()
}

/// The text values of every row `sql` returns (simple protocol).
async fn rows(c: &Client, sql: &str) -> Vec<Vec<Option<String>>> {
    let messages = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect()),
            _ => None,
        })
        .collect()
}

/// The command tag `sql` completes with (simple protocol).
async fn tag_of(c: &Client, sql: &str) -> u64 {
    let messages = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    messages
        .into_iter()
        .find_map(|m| match m {
            SimpleQueryMessage::CommandComplete(n) => Some(n),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no CommandComplete"))
}

/// The SQLSTATE `sql` fails with.
async fn sqlstate_of(c: &Client, sql: &str) -> String {
    let e = c.simple_query(sql).await.expect_err(sql);
    e.code().map(|c| c.code().to_owned()).unwrap_or_else(|| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_where_hash_partitioning_places_them_and_reads_find_them() {
    let (fleet, _proxy, c) = sharded().await;
    // DDL ran on every shard.
    for shard in 0..2 {
        assert_eq!(
            fleet.on_primary(shard, APP_DB, "SELECT to_regclass('accounts') IS NOT NULL").trim(),
            "t",
            "accounts exists on shard {shard}"
        );
    }
    for id in 1..=200i64 {
        let n = tag_of(
            &c,
            &format!("INSERT INTO accounts (id, owner, balance) VALUES ({id}, 'o{id}', 100)"),
        )
        .await;
        assert_eq!(n, 1);
    }
    // Each shard holds exactly the rows PostgreSQL's own hash partitioning assigns to it.
    let mut total = 0;
    for shard in 0..2 {
        let check = format!(
            "CREATE TABLE placement_check (id bigint) PARTITION BY HASH (id);\n\
             SELECT count(*) FILTER (WHERE satisfies_hash_partition('placement_check'::regclass, 2, {shard}, id)), \
             count(*) FROM accounts;"
        );
        let out = fleet.on_primary(shard, APP_DB, &check);
        let last = out.lines().last().expect("a row").to_owned();
        let (placed, count) = last.split_once('|').expect("two columns");
        assert_eq!(placed, count, "every row on shard {shard} belongs there ({out})");
        let count: usize = count.parse().expect("count");
        assert!(count > 50, "shard {shard} holds a fair share: {count}");
        assert_eq!(
            count,
            (1..=200).filter(|id| shard_of(*id) == shard).count(),
            "shard {shard} holds the rows pgfleet's placement names"
        );
        total += count;
    }
    assert_eq!(total, 200);
    // Reads by key, with the key as a bound parameter (binary int8) and as a literal.
    for id in [1i64, 2, 77, 150, 200] {
        let row = c
            .query_one("SELECT owner FROM accounts WHERE id = $1", &[&id])
            .await
            .unwrap_or_else(|e| panic!("read {id}: {e}"));
        assert_eq!(row.get::<_, String>(0), format!("o{id}"));
        let r = rows(&c, &format!("SELECT owner FROM accounts WHERE id = {id}")).await;
        assert_eq!(r, vec![vec![Some(format!("o{id}"))]]);
    }
    // Reads without a key: every shard, merged.
    assert_eq!(
        rows(&c, "SELECT count(*), sum(balance) FROM accounts").await,
        vec![vec![Some("200".into()), Some("20000".into())]]
    );
    assert_eq!(
        rows(&c, "SELECT id FROM accounts ORDER BY id DESC LIMIT 3").await,
        vec![vec![Some("200".into())], vec![Some("199".into())], vec![Some("198".into())]]
    );
    assert_eq!(
        rows(&c, "SELECT id, owner FROM accounts WHERE id IN (3, 4, 5, 6) ORDER BY id").await,
        (3..=6)
            .map(|i| vec![Some(i.to_string()), Some(format!("o{i}"))])
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_shards_commits_on_both_or_neither() {
    let (fleet, _proxy, c) = sharded().await;
    let a = (1..).find(|id| shard_of(*id) == 0).expect("an id on shard 0");
    let b = (1..).find(|id| shard_of(*id) == 1).expect("an id on shard 1");
    c.simple_query(&format!(
        "INSERT INTO accounts (id, owner, balance) VALUES ({a}, 'a', 100)"
    ))
    .await
    .expect("insert a");
    c.simple_query(&format!(
        "INSERT INTO accounts (id, owner, balance) VALUES ({b}, 'b', 100)"
    ))
    .await
    .expect("insert b");
    let balance = |shard: usize, id: i64| {
        fleet
            .on_primary(shard, APP_DB, &format!("SELECT balance FROM accounts WHERE id = {id}"))
            .trim()
            .to_owned()
    };
    let prepared = |shard: usize| {
        fleet
            .on_primary(shard, APP_DB, "SELECT count(*) FROM pg_prepared_xacts")
            .trim()
            .to_owned()
    };

    // Committed: both sides, nothing left prepared.
    c.batch_execute(&format!(
        "BEGIN; UPDATE accounts SET balance = balance - 10 WHERE id = {a}; \
         UPDATE accounts SET balance = balance + 10 WHERE id = {b}; COMMIT"
    ))
    .await
    .expect("transfer");
    assert_eq!((balance(0, a), balance(1, b)), ("90".into(), "110".into()));
    assert_eq!((prepared(0), prepared(1)), ("0".into(), "0".into()));

    // Rolled back: neither side.
    c.simple_query("BEGIN").await.expect("begin");
    c.simple_query(&format!("UPDATE accounts SET balance = 0 WHERE id = {a}"))
        .await
        .expect("update a");
    c.simple_query(&format!("UPDATE accounts SET balance = 0 WHERE id = {b}"))
        .await
        .expect("update b");
    let tag = c.simple_query("ROLLBACK").await.expect("rollback");
    assert!(matches!(tag.last(), Some(SimpleQueryMessage::CommandComplete(_))));
    assert_eq!((balance(0, a), balance(1, b)), ("90".into(), "110".into()));

    // Failed on one shard: the whole transaction is failed, and its COMMIT rolls back everywhere.
    c.simple_query("BEGIN").await.expect("begin");
    c.simple_query(&format!("UPDATE accounts SET balance = 1 WHERE id = {a}"))
        .await
        .expect("update a");
    assert_eq!(
        sqlstate_of(&c, &format!("UPDATE accounts SET balance = 1 / 0 WHERE id = {b}")).await,
        "22012"
    );
    assert_eq!(
        sqlstate_of(&c, &format!("UPDATE accounts SET balance = 2 WHERE id = {a}")).await,
        "25P02",
        "a transaction failed on one shard is failed on every shard"
    );
    c.simple_query("COMMIT").await.expect("commit of a failed transaction");
    assert_eq!((balance(0, a), balance(1, b)), ("90".into(), "110".into()));
    assert_eq!((prepared(0), prepared(1)), ("0".into(), "0".into()));
    // The session is usable again, outside any transaction.
    assert_eq!(
        rows(&c, &format!("SELECT balance FROM accounts WHERE id = {b}")).await,
        vec![vec![Some("110".into())]]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn statements_without_a_key_run_on_every_shard_and_the_unmergeable_are_refused() {
    let (fleet, _proxy, c) = sharded().await;
    // A reference table: created and written on every shard, answered once.
    c.simple_query("CREATE TABLE currencies (code text PRIMARY KEY, name text NOT NULL)")
        .await
        .expect("create reference table");
    assert_eq!(tag_of(&c, "INSERT INTO currencies VALUES ('EUR', 'Euro'), ('CHF', 'Franc')").await, 2);
    for shard in 0..2 {
        assert_eq!(
            fleet.on_primary(shard, APP_DB, "SELECT count(*) FROM currencies").trim(),
            "2",
            "reference rows on shard {shard}"
        );
    }
    assert_eq!(
        rows(&c, "SELECT name FROM currencies WHERE code = 'CHF'").await,
        vec![vec![Some("Franc".into())]]
    );
    for id in 1..=20i64 {
        c.simple_query(&format!(
            "INSERT INTO accounts (id, owner, balance) VALUES ({id}, 'o', {id})"
        ))
        .await
        .expect("insert");
    }
    // A write without a key condition: every shard, the counts added.
    assert_eq!(tag_of(&c, "UPDATE accounts SET balance = balance + 1").await, 20);
    assert_eq!(tag_of(&c, "DELETE FROM accounts WHERE balance > 16").await, 5);
    assert_eq!(
        rows(&c, "SELECT count(*), min(balance), max(balance), avg(balance) FROM accounts").await,
        vec![vec![
            Some("15".into()),
            Some("2".into()),
            Some("16".into()),
            Some("9.0000000000000000".into())
        ]]
    );
    // Refused, never answered wrongly.
    assert_eq!(sqlstate_of(&c, "UPDATE accounts SET id = id + 100 WHERE id = 1").await, "0A000");
    assert_eq!(
        sqlstate_of(&c, "SELECT id, row_number() OVER (ORDER BY id) FROM accounts").await,
        "0A000"
    );
    assert_eq!(
        sqlstate_of(&c, "SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) > 1").await,
        "0A000"
    );
    // The session goes on after a refusal.
    assert_eq!(rows(&c, "SELECT count(*) FROM accounts").await, vec![vec![Some("15".into())]]);
}
