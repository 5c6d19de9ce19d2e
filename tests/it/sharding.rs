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
    c.simple_query(ACCOUNTS)
        .await
        .expect("CREATE TABLE through pgfleet");
    (fleet, proxy, c)
}

/// The shard pgfleet must place `id` on.
fn shard_of(id: i64) -> usize {
    shard_for(&KeyValue::Int(id), 2).index()
}

/// The smallest id on shard 0 and the smallest on shard 1.
fn ids_on_both_shards() -> (i64, i64) {
    let on = |shard| {
        (1..)
            .find(|id| shard_of(*id) == shard)
            .expect("an id on the shard")
    };
    (on(0), on(1))
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
    e.code()
        .map(|c| c.code().to_owned())
        .unwrap_or_else(|| panic!("{sql}: {e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rows_land_where_hash_partitioning_places_them_and_reads_find_them() {
    let (fleet, _proxy, c) = sharded().await;
    // DDL ran on every shard.
    for shard in 0..2 {
        assert_eq!(
            fleet
                .on_primary(shard, APP_DB, "SELECT to_regclass('accounts') IS NOT NULL")
                .trim(),
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
        vec![
            vec![Some("200".into())],
            vec![Some("199".into())],
            vec![Some("198".into())]
        ]
    );
    assert_eq!(
        rows(
            &c,
            "SELECT id, owner FROM accounts WHERE id IN (3, 4, 5, 6) ORDER BY id"
        )
        .await,
        (3..=6)
            .map(|i| vec![Some(i.to_string()), Some(format!("o{i}"))])
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_across_shards_commits_on_both_or_neither() {
    let (fleet, _proxy, c) = sharded().await;
    let (a, b) = ids_on_both_shards();
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
            .on_primary(
                shard,
                APP_DB,
                &format!("SELECT balance FROM accounts WHERE id = {id}"),
            )
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
    c.simple_query("COMMIT")
        .await
        .expect("commit of a failed transaction");
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
    assert_eq!(
        tag_of(
            &c,
            "INSERT INTO currencies VALUES ('EUR', 'Euro'), ('CHF', 'Franc')"
        )
        .await,
        2
    );
    for shard in 0..2 {
        assert_eq!(
            fleet
                .on_primary(shard, APP_DB, "SELECT count(*) FROM currencies")
                .trim(),
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
        rows(
            &c,
            "SELECT count(*), min(balance), max(balance), avg(balance) FROM accounts"
        )
        .await,
        vec![vec![
            Some("15".into()),
            Some("2".into()),
            Some("16".into()),
            Some("9.0000000000000000".into())
        ]]
    );
    // Refused, never answered wrongly.
    assert_eq!(
        sqlstate_of(&c, "UPDATE accounts SET id = id + 100 WHERE id = 1").await,
        "0A000"
    );
    assert_eq!(
        sqlstate_of(&c, "SELECT id, row_number() OVER (ORDER BY id) FROM accounts").await,
        "0A000"
    );
    assert_eq!(
        sqlstate_of(
            &c,
            "SELECT owner, count(*) FROM accounts GROUP BY owner HAVING count(*) > 1"
        )
        .await,
        "0A000"
    );
    // The session goes on after a refusal.
    assert_eq!(
        rows(&c, "SELECT count(*) FROM accounts").await,
        vec![vec![Some("15".into())]]
    );
}

/// Rows of `accounts` with ids in `ids`, counted on shard `shard`'s primary.
fn held(fleet: &ShardedFleet, shard: usize, ids: std::ops::RangeInclusive<i64>) -> usize {
    let sql = format!(
        "SELECT count(*) FROM accounts WHERE id BETWEEN {} AND {}",
        ids.start(),
        ids.end()
    );
    fleet
        .on_primary(shard, APP_DB, &sql)
        .trim()
        .parse()
        .expect("count")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_row_inserts_and_copy_split_over_the_shards_all_or_nothing() {
    let (fleet, proxy, c) = sharded().await;
    let expected =
        |ids: std::ops::RangeInclusive<i64>, shard: usize| ids.filter(|id| shard_of(*id) == shard).count();
    // A multi-row INSERT whose rows belong to both shards: each row on its shard, the count of all.
    let values: Vec<String> = (1..=40).map(|id| format!("({id}, 'o{id}')")).collect();
    let n = tag_of(
        &c,
        &format!("INSERT INTO accounts (id, owner) VALUES {}", values.join(", ")),
    )
    .await;
    assert_eq!(n, 40);
    for shard in 0..2 {
        assert_eq!(
            held(&fleet, shard, 1..=40),
            expected(1..=40, shard),
            "shard {shard}"
        );
    }
    // One that fails on one shard (owner is NOT NULL): nothing of it is committed anywhere.
    let failing: Vec<String> = (41..=60)
        .map(|id| {
            if id == 55 {
                format!("({id}, NULL)")
            } else {
                format!("({id}, 'o{id}')")
            }
        })
        .collect();
    assert_eq!(
        sqlstate_of(
            &c,
            &format!("INSERT INTO accounts (id, owner) VALUES {}", failing.join(", "))
        )
        .await,
        "23502"
    );
    for shard in 0..2 {
        assert_eq!(
            held(&fleet, shard, 41..=60),
            0,
            "nothing of the failed insert on shard {shard}"
        );
    }

    // The same with bound parameters (a prepared statement): each shard gets its rows and their parameters.
    let insert = c
        .prepare("INSERT INTO accounts (id, owner) VALUES ($1, $2), ($3, $4), ($5, $6), ($7, $8)")
        .await
        .expect("prepare a multi-row insert");
    let (p1, p2, p3, p4) = (61i64, 62i64, 63i64, 64i64);
    let n = c
        .execute(&insert, &[&p1, &"p61", &p2, &"p62", &p3, &"p63", &p4, &"p64"])
        .await
        .expect("prepared multi-row insert over both shards");
    assert_eq!(n, 4);
    for shard in 0..2 {
        assert_eq!(
            held(&fleet, shard, 61..=64),
            expected(61..=64, shard),
            "prepared rows on shard {shard}"
        );
    }
    let (q1, q2, q3, q4) = (65i64, 66i64, 67i64, 68i64);
    let none: Option<&str> = None;
    let e = c
        .execute(&insert, &[&q1, &"p65", &q2, &"p66", &q3, &none, &q4, &"p68"])
        .await
        .expect_err("a NULL owner fails the prepared insert");
    assert_eq!(e.code().map(|c| c.code()), Some("23502"), "{e}");
    for shard in 0..2 {
        assert_eq!(
            held(&fleet, shard, 65..=68),
            0,
            "nothing of the failed prepared insert on shard {shard}"
        );
    }

    // COPY through psql's \copy: text, then csv with a header, then one that fails midway.
    let dir = tempfile::tempdir().expect("tempdir");
    let text: String = (100..600)
        .map(|id| format!("{id}\tcopied {id}\t{id}\n"))
        .collect();
    std::fs::write(dir.path().join("rows.tsv"), &text).expect("write rows");
    let csv: String = std::iter::once("id,owner,balance\n".to_owned())
        .chain((600..900).map(|id| format!("{id},\"csv, {id}\",{id}\n")))
        .collect();
    std::fs::write(dir.path().join("rows.csv"), &csv).expect("write csv");
    let bad: String = (900..1000)
        .map(|id| {
            if id == 950 {
                "950\tdup\t1\n950\tdup\t1\n".to_owned()
            } else {
                format!("{id}\tb\t1\n")
            }
        })
        .collect();
    std::fs::write(dir.path().join("bad.tsv"), &bad).expect("write bad rows");
    let url = proxy.url(APP_USER, PASSWORD, APP_DB);
    let psql = |command: &str| {
        let out = std::process::Command::new(crate::support::clients::pg_tool("psql"))
            .current_dir(dir.path())
            .args(["-X", "-v", "ON_ERROR_STOP=1", "-d", &url, "-c", command])
            .output()
            .expect("run psql");
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, stdout, stderr) = psql("\\copy accounts (id, owner, balance) FROM 'rows.tsv'");
    assert!(ok && stdout.contains("COPY 500"), "{stdout} {stderr}");
    let (ok, stdout, stderr) =
        psql("\\copy accounts (id, owner, balance) FROM 'rows.csv' WITH (FORMAT csv, HEADER true)");
    assert!(ok && stdout.contains("COPY 300"), "{stdout} {stderr}");
    for shard in 0..2 {
        assert_eq!(
            held(&fleet, shard, 100..=899),
            expected(100..=899, shard),
            "copied rows on shard {shard}"
        );
    }
    assert_eq!(
        rows(&c, "SELECT owner FROM accounts WHERE id = 700").await,
        vec![vec![Some("csv, 700".into())]]
    );
    let (ok, _, stderr) = psql("\\copy accounts (id, owner, balance) FROM 'bad.tsv'");
    assert!(
        !ok && stderr.contains("duplicate key"),
        "a duplicate key fails the COPY: {stderr}"
    );
    for shard in 0..2 {
        assert_eq!(
            held(&fleet, shard, 900..=999),
            0,
            "nothing of the failed COPY on shard {shard}"
        );
    }
    // No column list: the key's place is unknown, refused with the reason.
    let (ok, _, stderr) = psql("\\copy accounts FROM 'rows.tsv'");
    assert!(!ok && stderr.contains("needs a column list"), "{stderr}");
    for shard in 0..2 {
        assert_eq!(
            fleet
                .on_primary(shard, APP_DB, "SELECT count(*) FROM pg_prepared_xacts")
                .trim(),
            "0"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgbench_runs_a_custom_sharded_script() {
    let (fleet, proxy, c) = sharded().await;
    let values: Vec<String> = (1..=100).map(|id| format!("({id}, 'o', 1000)")).collect();
    c.simple_query(&format!(
        "INSERT INTO accounts (id, owner, balance) VALUES {}",
        values.join(", ")
    ))
    .await
    .expect("accounts");
    let dir = tempfile::tempdir().expect("tempdir");
    // A transfer between two random accounts (usually on different shards) and a read by key. Rows are
    // locked in the order of their keys: PostgreSQL detects deadlocks within one server only, so two
    // transfers locking rows of two shards in opposite orders would wait for each other forever
    // (docs/sharding.md, "Guarantees").
    let script = "\\set a random(1, 100)\n\\set b random(1, 100)\n\\set x random(1, 10)\n\
                  \\set lo least(:a, :b)\n\\set hi greatest(:a, :b)\n\
                  BEGIN;\n\
                  UPDATE accounts SET balance = balance - :x WHERE id = :lo;\n\
                  UPDATE accounts SET balance = balance + :x WHERE id = :hi;\n\
                  COMMIT;\n\
                  SELECT balance FROM accounts WHERE id = :a;\n";
    let path = dir.path().join("transfer.sql");
    std::fs::write(&path, script).expect("script");
    // Every query mode: -M prepared prepares each statement once per connection, COMMIT included.
    for mode in ["simple", "extended", "prepared"] {
        let mut cmd = std::process::Command::new(crate::support::clients::pg_tool("pgbench"));
        cmd.args(["-n", "-c", "4", "-j", "2", "-t", "100", "-M", mode, "-f"])
            .arg(&path)
            .arg(proxy.url(APP_USER, PASSWORD, APP_DB));
        // Bounded: a wait nobody breaks must fail the test, not hang it.
        let out = crate::support::clients::run(cmd, std::time::Duration::from_secs(120));
        assert!(
            out.status.success()
                && out
                    .stdout
                    .contains("number of transactions actually processed: 400/400"),
            "pgbench -M {mode} through sharded pgfleet: {} {}",
            out.stdout,
            out.stderr
        );
    }
    // Money moved between shards but none was made or lost, and nothing is left prepared.
    assert_eq!(
        rows(&c, "SELECT sum(balance), count(*) FROM accounts").await,
        vec![vec![Some("100000".into()), Some("100".into())]]
    );
    for shard in 0..2 {
        assert_eq!(
            fleet
                .on_primary(shard, APP_DB, "SELECT count(*) FROM pg_prepared_xacts")
                .trim(),
            "0"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgfleet_demo_with_two_shards_serves_its_sharded_table() {
    let port = crate::support::proxy::free_port();
    let mut demo = std::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .args(["demo", "--shards", "2", "--listen", &format!("127.0.0.1:{port}")])
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start pgfleet demo --shards 2");
    let dsn = format!("host=127.0.0.1 port={port} user=app password=demo dbname=app");
    let attempt = || {
        let dsn = dsn.clone();
        async move { crate::support::proxy::try_connect(&dsn).await.ok() }
    };
    let c = crate::support::wait_until(std::time::Duration::from_secs(120), attempt)
        .await
        .expect("the demo listens");
    let values: Vec<String> = (1..=20).map(|id| format!("({id}, 'o{id}')")).collect();
    assert_eq!(
        tag_of(
            &c,
            &format!("INSERT INTO accounts (id, owner) VALUES {}", values.join(", "))
        )
        .await,
        20
    );
    assert_eq!(
        rows(&c, "SELECT count(*) FROM accounts").await,
        vec![vec![Some("20".into())]]
    );
    assert_eq!(
        rows(&c, "SELECT owner FROM accounts WHERE id = 7").await,
        vec![vec![Some("o7".into())]]
    );
    drop(c);
    let pid = demo.id().to_string();
    let _ = std::process::Command::new("kill").args(["-INT", &pid]).status();
    let done = crate::support::wait_until(std::time::Duration::from_secs(60), async || {
        demo.try_wait().ok().flatten().is_some()
    })
    .await;
    assert!(done.is_some(), "the demo stops on SIGINT");
    let mut summary = String::new();
    if let Some(mut out) = demo.stdout.take() {
        use std::io::Read;
        let _ = out.read_to_string(&mut summary);
    }
    assert!(
        summary.contains("shard 1 primary"),
        "the demo names its shards: {summary}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgfleet_next_id_gives_cluster_unique_keys_that_route_the_row() {
    let (fleet, proxy, c) = sharded().await;
    let second = fleet.proxy(SHARDED_TABLES);
    let c2 = connect(&second.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let mut ids = std::collections::BTreeSet::new();
    for round in 0..30 {
        let client = if round % 2 == 0 { &c } else { &c2 };
        let got = rows(
            client,
            "INSERT INTO accounts (id, owner) VALUES (pgfleet_next_id(), 'a'), (pgfleet_next_id(), 'b') RETURNING id",
        )
        .await;
        assert_eq!(got.len(), 2);
        for row in got {
            let id: i64 = row[0].as_deref().expect("id").parse().expect("bigint");
            assert!(ids.insert(id), "id {id} handed out twice");
        }
    }
    // The extended protocol's unnamed statement gets fresh ids at each execution.
    for _ in 0..3 {
        let row = c2
            .query_typed(
                "INSERT INTO accounts (id, owner) VALUES (pgfleet_next_id(), $1) RETURNING id",
                &[(&"typed", tokio_postgres::types::Type::TEXT)],
            )
            .await
            .expect("unnamed statement with an id");
        assert!(ids.insert(row[0].get::<_, i64>(0)), "fresh id per execution");
    }
    // Every row is on the shard its id names.
    for shard in 0..2 {
        let out = fleet.on_primary(shard, APP_DB, "SELECT id FROM accounts");
        for line in out.lines() {
            let id: i64 = line.parse().expect("id");
            assert_eq!(shard_of(id), shard, "row {id} on shard {shard}");
        }
    }
    assert_eq!(
        rows(&c, "SELECT count(*) FROM accounts").await,
        vec![vec![Some(ids.len().to_string())]]
    );
    // A named prepared statement would repeat its ids: refused.
    let e = c
        .prepare("INSERT INTO accounts (id, owner) VALUES (pgfleet_next_id(), $1)")
        .await
        .expect_err("named statement with pgfleet_next_id()");
    assert_eq!(e.code().map(|c| c.code()), Some("0A000"), "{e}");
    drop(proxy);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pgfleet_refuses_to_start_when_a_shard_primary_cannot_prepare() {
    let fleet = ShardedFleet::start_with(2, 0, "max_prepared_transactions = 0").await;
    let dir = tempfile::tempdir().expect("tempdir");
    let path = dir.path().join("pgfleet.toml");
    let port = crate::support::proxy::free_port();
    std::fs::write(&path, fleet.config(port, SHARDED_TABLES)).expect("config");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .arg("--config")
        .arg(&path)
        .env("NO_COLOR", "1")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start pgfleet");
    let exited = crate::support::wait_until(std::time::Duration::from_secs(30), async || {
        child.try_wait().ok().flatten()
    })
    .await;
    let status = exited.unwrap_or_else(|| {
        let _ = child.kill();
        panic!("pgfleet kept running with shard primaries that cannot prepare")
    });
    assert!(!status.success());
    let mut stderr = String::new();
    if let Some(mut e) = child.stderr.take() {
        use std::io::Read;
        let _ = e.read_to_string(&mut stderr);
    }
    assert!(
        stderr.contains("max_prepared_transactions = 0") && stderr.contains("s0-primary"),
        "the error names the node and the setting: {stderr}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn savepoints_and_chained_ends_stay_within_one_shard() {
    let (fleet, _proxy, c) = sharded().await;
    let (a, b) = ids_on_both_shards();
    c.simple_query(&format!(
        "INSERT INTO accounts (id, owner) VALUES ({a}, 'a'), ({b}, 'b')"
    ))
    .await
    .expect("rows");
    // On one shard, savepoints work as on PostgreSQL.
    c.batch_execute(&format!(
        "BEGIN; UPDATE accounts SET owner = 'x' WHERE id = {a}; SAVEPOINT s; \
         UPDATE accounts SET owner = 'y' WHERE id = {a}; ROLLBACK TO SAVEPOINT s; COMMIT"
    ))
    .await
    .expect("savepoint on one shard");
    assert_eq!(
        rows(&c, &format!("SELECT owner FROM accounts WHERE id = {a}")).await,
        vec![vec![Some("x".into())]]
    );
    // A transaction holding a savepoint does not move to another shard.
    c.simple_query("BEGIN").await.expect("begin");
    c.simple_query(&format!("UPDATE accounts SET owner = 'p' WHERE id = {a}"))
        .await
        .expect("a");
    c.simple_query("SAVEPOINT s").await.expect("savepoint");
    assert_eq!(
        sqlstate_of(&c, &format!("UPDATE accounts SET owner = 'q' WHERE id = {b}")).await,
        "0A000"
    );
    c.simple_query("ROLLBACK").await.expect("rollback");
    // In a transaction across shards: no savepoint, no chained end.
    c.simple_query("BEGIN").await.expect("begin");
    c.simple_query(&format!("UPDATE accounts SET owner = 'p' WHERE id = {a}"))
        .await
        .expect("a");
    c.simple_query(&format!("UPDATE accounts SET owner = 'q' WHERE id = {b}"))
        .await
        .expect("b");
    assert_eq!(sqlstate_of(&c, "SAVEPOINT s").await, "0A000");
    assert_eq!(sqlstate_of(&c, "COMMIT AND CHAIN").await, "0A000");
    c.simple_query("ROLLBACK").await.expect("rollback across shards");
    assert_eq!(
        (
            fleet.on_primary(0, APP_DB, &format!("SELECT owner FROM accounts WHERE id = {a}")),
            fleet.on_primary(1, APP_DB, &format!("SELECT owner FROM accounts WHERE id = {b}"))
        ),
        ("x".to_owned(), "b".to_owned())
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_across_shards_sees_the_sessions_own_writes_across_shards() {
    let (_fleet, _proxy, c) = sharded().await;
    // Each round writes on both shards (one statement, committed with two-phase commit) and reads across
    // both at once, on the shards' replicas unless they have not replayed the write yet.
    for round in 0..25i64 {
        let values: Vec<String> = (0..10)
            .map(|i| format!("({}, 'r{round}')", round * 10 + i + 1))
            .collect();
        assert_eq!(
            tag_of(
                &c,
                &format!("INSERT INTO accounts (id, owner) VALUES {}", values.join(", "))
            )
            .await,
            10
        );
        assert_eq!(
            rows(&c, "SELECT count(*) FROM accounts").await,
            vec![vec![Some(((round + 1) * 10).to_string())]],
            "round {round}: the read across shards missed the session's own write"
        );
        c.batch_execute(&format!(
            "BEGIN; UPDATE accounts SET balance = balance + 1 WHERE id = {}; \
             UPDATE accounts SET balance = balance + 1 WHERE id = {}; COMMIT",
            round * 10 + 1,
            round * 10 + 2
        ))
        .await
        .expect("transfer");
        assert_eq!(
            rows(&c, "SELECT sum(balance) FROM accounts").await,
            vec![vec![Some(((round + 1) * 2).to_string())]],
            "round {round}: the read across shards missed the session's own transaction"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ddl_that_fails_on_one_shard_changes_no_shard() {
    let (fleet, _proxy, c) = sharded().await;
    // A table that only shard 1 already has: creating it through pgfleet fails there, so shard 0 must not
    // keep its copy either.
    fleet.on_primary(1, APP_DB, "CREATE TABLE only_on_one (id int)");
    assert_eq!(
        sqlstate_of(&c, "CREATE TABLE only_on_one (id int, note text)").await,
        "42P07"
    );
    assert_eq!(
        fleet.on_primary(0, APP_DB, "SELECT to_regclass('only_on_one') IS NULL"),
        "t",
        "the failed DDL left nothing on shard 0"
    );
    for shard in 0..2 {
        assert_eq!(
            fleet.on_primary(shard, APP_DB, "SELECT count(*) FROM pg_prepared_xacts"),
            "0"
        );
    }
}
