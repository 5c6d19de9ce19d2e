//! The differential suite of sharding: the same rows loaded through a sharded pgfleet (two shards) and into
//! one plain PostgreSQL server, then more than 200 queries run against both. Every query must give the same
//! rows (in the same order where ORDER BY fixes it, as the same multiset otherwise) or be refused with
//! SQLSTATE 0A000; never a different answer. The constructs pgfleet documents as refused must be refused.

use tokio_postgres::{Client, SimpleQueryMessage};

use crate::support::cluster::{APP_DB, APP_USER, ClusterOptions, PASSWORD, cluster_with_async, options};
use crate::support::proxy::connect;
use crate::support::shards::ShardedFleet;

const SHARDED_TABLES: &str = "[[sharded_tables]]\nname = \"accounts\"\ncolumn = \"id\"\n\n\
                              [[sharded_tables]]\nname = \"transfers\"\ncolumn = \"account_id\"\n";

const SCHEMA: &[&str] = &[
    "CREATE TABLE branches (id int PRIMARY KEY, name text NOT NULL)",
    "CREATE TABLE accounts (id bigint PRIMARY KEY, owner text NOT NULL, branch int NOT NULL, \
     balance numeric NOT NULL, opened date NOT NULL, score float8)",
    "CREATE TABLE transfers (id bigint, account_id bigint NOT NULL, amount numeric NOT NULL, \
     PRIMARY KEY (account_id, id))",
];

/// A result as text rows, or the SQLSTATE it failed with.
type Outcome = Result<Vec<Vec<Option<String>>>, String>;

async fn run(c: &Client, sql: &str) -> Outcome {
    match c.simple_query(sql).await {
        Ok(messages) => Ok(messages
            .into_iter()
            .filter_map(|m| match m {
                SimpleQueryMessage::Row(r) => {
                    Some((0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect())
                }
                _ => None,
            })
            .collect()),
        Err(e) => Err(e.code().map_or_else(|| e.to_string(), |c| c.code().to_owned())),
    }
}

/// The data: 300 accounts over 7 branches, 900 transfers; deterministic.
fn data() -> Vec<String> {
    let mut out = vec![
        "INSERT INTO branches VALUES (1, 'north'), (2, 'south'), (3, 'east'), (4, 'west'), (5, 'centre'), \
         (6, 'harbour'), (7, 'airport')"
            .to_owned(),
    ];
    let accounts: Vec<String> = (1..=300i64)
        .map(|id| {
            let score = if id % 11 == 0 {
                "NULL".to_owned()
            } else {
                format!("{}.25", (id * 37) % 101)
            };
            format!(
                "({id}, 'owner{}', {}, {}.{:02}, DATE '2020-01-01' + {}, {score})",
                id % 23,
                id % 7 + 1,
                (id * 7919) % 5000,
                id % 100,
                id % 365
            )
        })
        .collect();
    for chunk in accounts.chunks(50) {
        out.push(format!(
            "INSERT INTO accounts (id, owner, branch, balance, opened, score) VALUES {}",
            chunk.join(", ")
        ));
    }
    let transfers: Vec<String> = (1..=900i64)
        .map(|t| format!("({t}, {}, {}.5)", (t * 13) % 300 + 1, (t * 31) % 700))
        .collect();
    for chunk in transfers.chunks(100) {
        out.push(format!(
            "INSERT INTO transfers (id, account_id, amount) VALUES {}",
            chunk.join(", ")
        ));
    }
    out
}

/// The queries: (text, whether ORDER BY fixes the row order, whether pgfleet must refuse it).
fn queries() -> Vec<(String, bool, bool)> {
    let mut q: Vec<(String, bool, bool)> = Vec::new();
    let mut add = |sql: String, ordered: bool| q.push((sql, ordered, false));
    for k in [
        1, 2, 3, 5, 8, 13, 21, 34, 55, 89, 144, 233, 299, 300, 301, 0, -1, 150, 151, 152,
    ] {
        add(format!("SELECT * FROM accounts WHERE id = {k}"), false);
        add(
            format!("SELECT owner, balance FROM accounts WHERE {k} = id"),
            false,
        );
    }
    for (a, b, c) in [
        (1, 2, 3),
        (10, 200, 299),
        (7, 77, 777),
        (4, 40, 140),
        (99, 100, 101),
        (5, 6, 250),
    ] {
        add(
            format!("SELECT id, balance FROM accounts WHERE id IN ({a}, {b}, {c}) ORDER BY id"),
            true,
        );
        add(
            format!("SELECT count(*) FROM accounts WHERE id IN ({a}, {b}, {c})"),
            false,
        );
        add(
            format!("SELECT id FROM accounts WHERE id = {a} OR id = {c} ORDER BY id DESC"),
            true,
        );
    }
    for x in [0, 500, 1000, 2500, 4000, 4999, 6000] {
        add(
            format!(
                "SELECT count(*), sum(balance), min(balance), max(balance), avg(balance) FROM accounts WHERE balance > {x}"
            ),
            false,
        );
        add(
            format!(
                "SELECT count(score), sum(score), min(score), max(score) FROM accounts WHERE balance <= {x}"
            ),
            false,
        );
        add(
            format!(
                "SELECT branch, count(*), sum(balance) FROM accounts WHERE balance > {x} GROUP BY branch ORDER BY branch"
            ),
            true,
        );
        add(
            format!("SELECT min(opened), max(opened) FROM accounts WHERE balance < {x}"),
            false,
        );
    }
    for (n, m) in [
        (1, 0),
        (5, 0),
        (5, 5),
        (10, 3),
        (20, 100),
        (3, 297),
        (50, 260),
        (7, 0),
        (0, 0),
        (15, 15),
    ] {
        add(
            format!("SELECT id, owner FROM accounts ORDER BY balance DESC, id LIMIT {n} OFFSET {m}"),
            true,
        );
        add(
            format!("SELECT id FROM accounts ORDER BY id LIMIT {n} OFFSET {m}"),
            true,
        );
        add(
            format!("SELECT id, score FROM accounts ORDER BY score NULLS FIRST, id LIMIT {n}"),
            true,
        );
    }
    for b in 1..=7 {
        add(
            format!("SELECT count(*), avg(balance) FROM accounts WHERE branch = {b}"),
            false,
        );
        add(
            format!("SELECT id FROM accounts WHERE branch = {b} ORDER BY id LIMIT 5"),
            true,
        );
        add(
            format!(
                "SELECT a.id, b.name FROM accounts a JOIN branches b ON b.id = a.branch WHERE a.id = {}",
                b * 40
            ),
            false,
        );
        add(format!("SELECT name FROM branches WHERE id = {b}"), false);
    }
    for k in [3, 14, 15, 92, 65, 35, 89, 79, 32, 38, 46, 264, 33, 83, 279] {
        add(
            format!(
                "SELECT a.id, count(t.id), sum(t.amount) FROM accounts a JOIN transfers t ON t.account_id = a.id \
                 WHERE a.id = {k} GROUP BY a.id"
            ),
            false,
        );
        add(
            format!("SELECT id, amount FROM transfers WHERE account_id = {k} ORDER BY id"),
            true,
        );
    }
    for sql in [
        "SELECT count(*) FROM accounts",
        "SELECT sum(balance), avg(balance) FROM accounts",
        "SELECT DISTINCT branch FROM accounts ORDER BY branch",
        "SELECT branch, min(balance), max(balance), avg(balance) FROM accounts GROUP BY branch ORDER BY branch",
        "SELECT branch, count(*) FROM accounts GROUP BY branch ORDER BY count(*) DESC, branch",
        "SELECT b.name, count(*) FROM accounts a JOIN branches b ON b.id = a.branch GROUP BY b.name ORDER BY count(*), b.name",
        "SELECT count(*), sum(amount) FROM transfers",
        "SELECT account_id, sum(amount) FROM transfers GROUP BY account_id ORDER BY sum(amount) DESC, account_id LIMIT 10",
        "SELECT a.branch, sum(t.amount) FROM accounts a JOIN transfers t ON t.account_id = a.id GROUP BY a.branch ORDER BY a.branch",
        "SELECT * FROM branches ORDER BY id",
        "SELECT count(*) FROM branches",
        "SELECT max(id) FROM accounts",
        "SELECT min(id), max(id), count(*) FROM transfers",
        "SELECT opened, count(*) FROM accounts GROUP BY opened ORDER BY opened LIMIT 10",
        "SELECT id FROM accounts WHERE balance BETWEEN 100 AND 200 ORDER BY id",
        "SELECT avg(score) FROM accounts",
        "SELECT count(*) FROM accounts WHERE score IS NULL",
        "SELECT 1",
        "SELECT now() IS NOT NULL",
        "SELECT id FROM accounts WHERE id = 3 AND branch = 4",
    ] {
        add(sql.to_owned(), sql.contains("ORDER BY"));
    }
    let mut refuse = |sql: &str| q.push((sql.to_owned(), false, true));
    for sql in [
        "SELECT id, row_number() OVER (ORDER BY id) FROM accounts",
        "SELECT branch, count(*) FROM accounts GROUP BY branch HAVING count(*) > 40",
        "SELECT string_agg(owner, ',') FROM accounts",
        "SELECT array_agg(id) FROM accounts",
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY balance) FROM accounts",
        "SELECT stddev(balance) FROM accounts",
        "SELECT a.id FROM accounts a JOIN transfers t ON t.account_id = a.branch",
        "SELECT id FROM accounts UNION SELECT account_id FROM transfers",
        "SELECT count(DISTINCT owner) FROM accounts",
        "SELECT sum(balance) OVER (PARTITION BY branch) FROM accounts",
    ] {
        refuse(sql);
    }
    q
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharded_answers_equal_one_servers_or_are_refused() {
    let reference_start = cluster_with_async(ClusterOptions {
        replicas: 0,
        ..options()
    });
    let (fleet, reference) = tokio::join!(ShardedFleet::start(2, 0), reference_start);
    let proxy = fleet.proxy(SHARDED_TABLES);
    let sharded = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let one = connect(&reference.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for sql in SCHEMA.iter().map(|s| s.to_string()).chain(data()) {
        sharded
            .simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("sharded: {sql}: {e}"));
        one.simple_query(&sql)
            .await
            .unwrap_or_else(|e| panic!("reference: {sql}: {e}"));
    }
    let queries = queries();
    assert!(queries.len() >= 200, "{} queries", queries.len());
    let mut answered = 0;
    let mut refused = Vec::new();
    for (sql, ordered, must_refuse) in &queries {
        let expected = run(&one, sql).await;
        let got = run(&sharded, sql).await;
        let expected = expected.unwrap_or_else(|e| panic!("the reference server fails {sql}: {e}"));
        match got {
            Err(code) => {
                assert_eq!(
                    code, "0A000",
                    "{sql}: failed with {code} instead of an answer or 0A000"
                );
                refused.push(sql.clone());
            }
            Ok(rows) => {
                assert!(!must_refuse, "{sql}: answered {rows:?} where pgfleet must refuse");
                let (mut a, mut b) = (rows, expected);
                if !ordered {
                    a.sort();
                    b.sort();
                }
                assert_eq!(a, b, "{sql}: sharded answer differs from one server's");
                answered += 1;
            }
        }
    }
    let must: Vec<&String> = queries.iter().filter(|q| q.2).map(|q| &q.0).collect();
    for sql in &must {
        assert!(refused.contains(sql), "{sql} must be refused");
    }
    assert!(
        answered >= queries.len() - must.len() - 10,
        "{answered} answered of {}; refused beyond the documented: {:?}",
        queries.len(),
        refused.iter().filter(|r| !must.contains(r)).collect::<Vec<_>>()
    );
}
