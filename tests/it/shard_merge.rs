//! Queries across shards merged without the proxy: two plain PostgreSQL servers hold the rows of the
//! sharded tables split between them (each with every reference row), a third holds them all. For each
//! query, `shard::merge::analyze` gives the statement each shard runs; running it on both shards over the
//! raw protocol and feeding the `Merger` must give exactly what the unsharded server returns: the same
//! columns and types, the same text values, the same command tag, in the same order where ORDER BY fixes it.

use std::collections::HashSet;

use bytes::Bytes;
use pgfleet::protocol::messages::error_field;
use pgfleet::shard::merge::{Merger, analyze};
use sqlparser::ast::ObjectName;

use crate::support::cluster::{ClusterOptions, LocalCluster, cluster_with_async, options};
use crate::support::raw::{Msg, Raw};

const SCHEMA: &str = "CREATE TABLE accounts (id int PRIMARY KEY, name text, region text, country text, \
     balance int, small smallint, big bigint, score float8, weird float8, amount numeric, created date, \
     ts timestamp, tstz timestamptz, flag bool, uid uuid, code char(4), real_val real); \
     CREATE TABLE orders (id int PRIMARY KEY, account_id int, total numeric(10,2), qty int); \
     CREATE TABLE countries (code text PRIMARY KEY, name text)";

const COUNTRIES: &str = "INSERT INTO countries VALUES ('fr', 'France'), ('de', 'Germany'), ('us', 'United States'), \
     ('jp', 'Japan'), ('fi', 'Finland')";

/// One account row's VALUES tuple; every column has NULLs, duplicates and edge values.
fn account(i: i64) -> String {
    let names = ["alice", "Bob", "carol", "dave", "Eve", "frank", "Zoe", "émile"];
    let name = if i % 17 == 0 {
        "NULL".to_owned()
    } else {
        format!("'{}{}'", names[(i % 8) as usize], i % 5)
    };
    let region = ["'eu'", "'us'", "'apac'", "NULL"][(i % 4) as usize];
    let country = ["'fr'", "'de'", "'us'", "'jp'", "'fi'"][(i % 5) as usize];
    let balance = if i % 13 == 0 {
        "NULL".to_owned()
    } else {
        ((i * 37) % 101 - 50).to_string()
    };
    let weird = [
        "'NaN'",
        "'Infinity'",
        "'-Infinity'",
        "'-0'",
        "NULL",
        "1.5",
        "-2.25",
        "1e300",
    ][(i % 8) as usize];
    let amount = match i % 4 {
        0 => format!("{i}"),
        1 => format!("{i}.5"),
        2 => format!("-{i}.125"),
        _ => format!("{i}.10"),
    };
    let created = if i == 44 {
        "'0044-03-15 BC'".to_owned()
    } else {
        format!("DATE '2020-01-01' + {}", (i * 11) % 1500)
    };
    let code = ["'ab'", "'b'", "'a'", "NULL", "'ab c'"][(i % 5) as usize];
    format!(
        "({i}, {name}, {region}, {country}, {balance}, {small}, {big}, {score}, {weird}, {amount}, {created}, \
         TIMESTAMP '2024-01-01 00:00:00' + {i} * interval '37 minutes 13.25 seconds', \
         TIMESTAMPTZ '2024-03-10 12:00:00+00' - {i} * interval '17 minutes', {flag}, md5('{i}')::uuid, {code}, {real})",
        small = i % 7 - 3,
        big = i * 1_000_000_007,
        score = (i % 9) as f64 * 0.25 - 1.0,
        flag = if i % 11 == 0 {
            "NULL"
        } else if i % 3 == 0 {
            "true"
        } else {
            "false"
        },
        real = i as f64 * 0.5,
    )
}

fn order(j: i64) -> (i64, String) {
    let account_id = (j * 7) % 120 + 1;
    (
        account_id,
        format!("({j}, {account_id}, {}.{:02}, {})", j * 3, j % 100, j % 4),
    )
}

/// (query, how to compare): `Ordered` compares row by row, `Unordered` as multisets, `Any(n)` checks n rows
/// that all belong to the unsharded result (LIMIT without ORDER BY returns any rows).
enum Check {
    Ordered,
    Unordered,
    Any,
}

const QUERIES: &[(&str, Check)] = &[
    ("SELECT id, name FROM accounts", Check::Unordered),
    ("SELECT * FROM accounts WHERE balance > 10", Check::Unordered),
    (
        "SELECT id, name FROM accounts ORDER BY id LIMIT 10 OFFSET 5",
        Check::Ordered,
    ),
    (
        "SELECT id, name FROM accounts ORDER BY name DESC NULLS LAST, id LIMIT 7",
        Check::Ordered,
    ),
    ("SELECT name FROM accounts ORDER BY balance, id", Check::Ordered),
    ("SELECT * FROM accounts ORDER BY id DESC LIMIT 5", Check::Ordered),
    (
        "SELECT id, balance FROM accounts ORDER BY balance NULLS FIRST, id",
        Check::Ordered,
    ),
    (
        "SELECT id, balance FROM accounts ORDER BY balance DESC, id LIMIT 12",
        Check::Ordered,
    ),
    (
        "SELECT id, weird FROM accounts ORDER BY weird, id",
        Check::Ordered,
    ),
    (
        "SELECT id, weird FROM accounts ORDER BY weird DESC NULLS LAST, id LIMIT 10",
        Check::Ordered,
    ),
    (
        "SELECT id, amount FROM accounts ORDER BY amount, id LIMIT 20",
        Check::Ordered,
    ),
    (
        "SELECT id, created FROM accounts ORDER BY created, id LIMIT 15",
        Check::Ordered,
    ),
    (
        "SELECT id, ts FROM accounts ORDER BY ts DESC, id OFFSET 100",
        Check::Ordered,
    ),
    (
        "SELECT id, tstz FROM accounts ORDER BY tstz, id LIMIT 9 OFFSET 3",
        Check::Ordered,
    ),
    (
        "SELECT id, flag FROM accounts ORDER BY flag DESC, id",
        Check::Ordered,
    ),
    ("SELECT uid FROM accounts ORDER BY uid LIMIT 10", Check::Ordered),
    ("SELECT id, code FROM accounts ORDER BY code, id", Check::Ordered),
    (
        "SELECT small, big FROM accounts ORDER BY big DESC LIMIT 4",
        Check::Ordered,
    ),
    (
        "SELECT id FROM accounts ORDER BY upper(name), id LIMIT 10",
        Check::Ordered,
    ),
    (
        "SELECT id, name FROM accounts WHERE name > 'c' ORDER BY name COLLATE \"C\", id LIMIT 5",
        Check::Ordered,
    ),
    ("SELECT id FROM accounts LIMIT 5", Check::Any),
    ("SELECT id FROM accounts OFFSET 110", Check::Any),
    ("SELECT count(*) FROM accounts", Check::Ordered),
    (
        "SELECT count(*), count(balance), sum(balance), min(balance), max(balance), avg(balance) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT sum(small), avg(small), sum(big), avg(big) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT sum(amount), avg(amount), min(amount), max(amount) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT sum(score), avg(score), min(score), max(score) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT sum(real_val), min(real_val), max(real_val) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT min(weird), max(weird), sum(weird) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT min(name), max(name), min(created), max(created), min(tstz), max(ts) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT min(code), max(code), min(small), max(big) FROM accounts",
        Check::Ordered,
    ),
    (
        "SELECT avg(id), avg(amount) AS mean FROM accounts",
        Check::Ordered,
    ),
    ("SELECT sum(big) FROM accounts WHERE big > 0", Check::Ordered),
    (
        "SELECT avg(amount) FROM accounts WHERE id IN (1, 2, 3)",
        Check::Ordered,
    ),
    (
        "SELECT region, count(*), sum(balance), avg(balance) FROM accounts GROUP BY region ORDER BY region",
        Check::Ordered,
    ),
    (
        "SELECT region, count(*) AS n FROM accounts GROUP BY region ORDER BY n DESC, region LIMIT 2",
        Check::Ordered,
    ),
    ("SELECT count(*) FROM accounts GROUP BY region", Check::Unordered),
    (
        "SELECT region, country, avg(amount) FROM accounts GROUP BY region, country ORDER BY 1, 2",
        Check::Ordered,
    ),
    (
        "SELECT region, min(name), max(balance) FROM accounts GROUP BY 1 ORDER BY sum(balance), region",
        Check::Ordered,
    ),
    (
        "SELECT region, max(tstz), min(ts) FROM accounts GROUP BY region ORDER BY region NULLS FIRST",
        Check::Ordered,
    ),
    (
        "SELECT flag, upper(region), count(*) FROM accounts GROUP BY flag, region ORDER BY flag, 2",
        Check::Ordered,
    ),
    (
        "SELECT count(*) FILTER (WHERE balance > 0), avg(balance) FILTER (WHERE flag) FROM accounts",
        Check::Ordered,
    ),
    // PgDog #1172: a column functionally dependent on the grouped primary key beside an aggregate.
    (
        "SELECT id, name, max(balance) FROM accounts GROUP BY id ORDER BY id LIMIT 10",
        Check::Ordered,
    ),
    // PgDog #638: count(1) beside its group key.
    (
        "SELECT count(1), region FROM accounts GROUP BY region ORDER BY region",
        Check::Ordered,
    ),
    // PgDog #1135: ORDER BY a column the select list does not show.
    (
        "SELECT name FROM accounts ORDER BY created DESC, id LIMIT 6",
        Check::Ordered,
    ),
    ("SELECT count(*) FROM accounts WHERE id < 0", Check::Ordered),
    (
        "SELECT max(balance), avg(amount), sum(score) FROM accounts WHERE id < 0",
        Check::Ordered,
    ),
    (
        "SELECT region, count(*) FROM accounts WHERE id < 0 GROUP BY region",
        Check::Ordered,
    ),
    ("SELECT count(*) FROM accounts LIMIT 0", Check::Ordered),
    ("SELECT DISTINCT region FROM accounts", Check::Unordered),
    (
        "SELECT DISTINCT region, flag FROM accounts ORDER BY region, flag",
        Check::Ordered,
    ),
    (
        "SELECT DISTINCT country FROM accounts ORDER BY country LIMIT 2 OFFSET 1",
        Check::Ordered,
    ),
    (
        "SELECT DISTINCT weird FROM accounts ORDER BY weird",
        Check::Ordered,
    ),
    (
        "SELECT a.id, o.total FROM accounts a JOIN orders o ON o.account_id = a.id ORDER BY o.id",
        Check::Ordered,
    ),
    (
        "SELECT a.region, count(*), sum(o.total), avg(o.qty) FROM accounts a JOIN orders o ON o.account_id = a.id GROUP BY a.region ORDER BY a.region",
        Check::Ordered,
    ),
    (
        "SELECT a.id, c.name FROM accounts a JOIN countries c ON c.code = a.country ORDER BY a.id LIMIT 10",
        Check::Ordered,
    ),
    (
        "SELECT a.id, c.name FROM accounts a LEFT JOIN countries c ON c.code = a.country WHERE a.id % 10 = 0",
        Check::Unordered,
    ),
    (
        "SELECT c.name, count(*) FROM accounts a JOIN countries c ON c.code = a.country GROUP BY c.name ORDER BY c.name",
        Check::Ordered,
    ),
    (
        "SELECT id FROM accounts WHERE country IN (SELECT code FROM countries WHERE name LIKE 'F%') ORDER BY id",
        Check::Ordered,
    ),
    (
        "SELECT accounts.id, orders.qty FROM accounts, orders WHERE accounts.id = orders.account_id AND orders.qty = 2",
        Check::Unordered,
    ),
];

/// A result as the client sees it: columns (name, type oid, typmod), rows, command tag.
#[derive(Debug, PartialEq)]
struct Result {
    columns: Vec<(String, u32, i32)>,
    rows: Vec<Vec<Option<String>>>,
    tag: String,
}

fn decode(frames: impl IntoIterator<Item = (u8, Vec<u8>)>) -> Result {
    let mut out = Result {
        columns: Vec::new(),
        rows: Vec::new(),
        tag: String::new(),
    };
    for (kind, body) in frames {
        match kind {
            b'T' => {
                let mut at = 2;
                for _ in 0..i16::from_be_bytes([body[0], body[1]]) {
                    let end = at + body[at..].iter().position(|&b| b == 0).expect("field name");
                    let name = String::from_utf8(body[at..end].to_vec()).expect("utf8 name");
                    let f = &body[end + 1..end + 19];
                    let oid = u32::from_be_bytes(f[6..10].try_into().expect("oid"));
                    let typmod = i32::from_be_bytes(f[12..16].try_into().expect("typmod"));
                    out.columns.push((name, oid, typmod));
                    at = end + 19;
                }
            }
            b'D' => {
                let mut at = 2;
                let mut row = Vec::new();
                for _ in 0..i16::from_be_bytes([body[0], body[1]]) {
                    let len = i32::from_be_bytes(body[at..at + 4].try_into().expect("len"));
                    at += 4;
                    if len < 0 {
                        row.push(None);
                    } else {
                        let v = &body[at..at + len as usize];
                        row.push(Some(String::from_utf8(v.to_vec()).expect("utf8 value")));
                        at += len as usize;
                    }
                }
                out.rows.push(row);
            }
            b'C' => out.tag = String::from_utf8(body[..body.len() - 1].to_vec()).expect("tag"),
            b'E' => panic!("server error: {:?}", error_field(&body, b'M')),
            _ => {}
        }
    }
    out
}

fn frames(bytes: Vec<Bytes>) -> Vec<(u8, Vec<u8>)> {
    bytes.into_iter().map(|f| (f[0], f[5..].to_vec())).collect()
}

async fn session(cluster: &LocalCluster) -> Raw {
    let node = cluster.nodes().next().expect("a node");
    let mut raw = Raw::connect(node.port).await;
    raw.login_app().await;
    raw
}

async fn run(raw: &mut Raw, sql: &str) -> Vec<Msg> {
    let msgs = raw.simple(sql).await;
    if let Some((_, body)) = msgs.iter().find(|(k, _)| *k == b'E') {
        panic!("`{sql}` failed: {:?}", error_field(body, b'M'));
    }
    msgs
}

fn sharded(table: &ObjectName) -> Option<String> {
    match table.to_string().as_str() {
        "accounts" => Some("id".into()),
        "orders" => Some("account_id".into()),
        _ => None,
    }
}

/// Runs `sql` through analyze, both shards and the merger.
async fn merged(shards: &mut [Raw; 2], sql: &str, collation: &str) -> std::result::Result<Result, String> {
    let plan = analyze(sql, &sharded).map_err(|e| format!("{} {}", e.code, e.message))?;
    let mut merger = Merger::new(&plan.merge, 2).with_collation(collation);
    let mut out = Vec::new();
    for (i, shard) in shards.iter_mut().enumerate() {
        for (kind, body) in run(shard, &plan.shard_sql).await {
            match kind {
                b'T' => out.extend(merger.row_description(i, &body).map_err(|e| e.message)?),
                b'D' => out.extend(merger.data_row(i, &body).map_err(|e| e.message)?),
                _ => {}
            }
        }
    }
    out.extend(merger.finish().map_err(|e| e.message)?);
    Ok(decode(frames(out)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn merged_results_equal_one_unsharded_server() {
    let opts = || ClusterOptions {
        replicas: 0,
        ..options()
    };
    let (a, b, reference) = tokio::join!(
        cluster_with_async(opts()),
        cluster_with_async(opts()),
        cluster_with_async(opts())
    );
    let mut shards = [session(&a).await, session(&b).await];
    let mut whole = session(&reference).await;
    for raw in shards.iter_mut().chain(std::iter::once(&mut whole)) {
        // Offsets that change with daylight saving time: timestamptz values print with -05 and -04, and
        // must still order by instant.
        run(raw, "SET TimeZone = 'America/New_York'").await;
        run(raw, SCHEMA).await;
        run(raw, COUNTRIES).await;
    }
    let (mut split_accounts, mut all_accounts) = ([Vec::new(), Vec::new()], Vec::new());
    for i in 1..=120 {
        split_accounts[(i % 2) as usize].push(account(i));
        all_accounts.push(account(i));
    }
    let (mut split_orders, mut all_orders) = ([Vec::new(), Vec::new()], Vec::new());
    for j in 1..=200 {
        let (account_id, row) = order(j);
        split_orders[(account_id % 2) as usize].push(row.clone());
        all_orders.push(row);
    }
    for (i, shard) in shards.iter_mut().enumerate() {
        run(
            shard,
            &format!("INSERT INTO accounts VALUES {}", split_accounts[i].join(", ")),
        )
        .await;
        run(
            shard,
            &format!("INSERT INTO orders VALUES {}", split_orders[i].join(", ")),
        )
        .await;
    }
    run(
        &mut whole,
        &format!("INSERT INTO accounts VALUES {}", all_accounts.join(", ")),
    )
    .await;
    run(
        &mut whole,
        &format!("INSERT INTO orders VALUES {}", all_orders.join(", ")),
    )
    .await;
    let collation = decode(
        run(
            &mut whole,
            "SELECT datcollate FROM pg_database WHERE datname = current_database()",
        )
        .await,
    )
    .rows[0][0]
        .clone()
        .expect("datcollate");

    assert!(QUERIES.len() >= 40);
    for (sql, check) in QUERIES {
        let want = decode(run(&mut whole, sql).await);
        let got = merged(&mut shards, sql, &collation)
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert_eq!(got.columns, want.columns, "{sql}: columns");
        match check {
            Check::Ordered => {
                assert_eq!(got.rows, want.rows, "{sql}: rows");
                assert_eq!(got.tag, want.tag, "{sql}: tag");
            }
            Check::Unordered => {
                let (mut g, mut w) = (got.rows.clone(), want.rows.clone());
                g.sort();
                w.sort();
                assert_eq!(g, w, "{sql}: rows as a multiset");
                assert_eq!(got.tag, want.tag, "{sql}: tag");
            }
            Check::Any => {
                let all = decode(
                    run(
                        &mut whole,
                        &sql.replace(" LIMIT 5", "").replace(" OFFSET 110", ""),
                    )
                    .await,
                );
                let all: HashSet<_> = all.rows.into_iter().collect();
                assert_eq!(got.rows.len(), want.rows.len(), "{sql}: row count");
                assert!(
                    got.rows.iter().all(|r| all.contains(r)),
                    "{sql}: rows not in the table"
                );
                assert_eq!(got.tag, want.tag, "{sql}: tag");
            }
        }
    }

    // Refused by the column types the shards describe, before any wrong row: avg of a real column, and
    // text order under a collation other than C.
    let e = merged(&mut shards, "SELECT avg(real_val) FROM accounts", &collation)
        .await
        .expect_err("avg(real)");
    assert!(e.contains("avg() of a real column"), "{e}");
    let e = merged(
        &mut shards,
        "SELECT name FROM accounts ORDER BY name",
        "en_US.UTF-8",
    )
    .await
    .expect_err("collation");
    assert!(e.contains("under the database collation \"en_US.UTF-8\""), "{e}");

    // Every aggregate the server knows is either merged or refused by name.
    let aggregates = decode(
        run(
            &mut whole,
            "SELECT DISTINCT proname FROM pg_proc WHERE prokind = 'a' ORDER BY 1",
        )
        .await,
    );
    assert!(aggregates.rows.len() > 30);
    for row in aggregates.rows {
        let name = row[0].clone().expect("proname");
        let sql = format!("SELECT {name}(id) FROM accounts");
        match analyze(&sql, &sharded) {
            Ok(_) => assert!(
                ["count", "sum", "min", "max", "avg"].contains(&name.as_str()),
                "{sql} was planned"
            ),
            Err(e) => {
                assert_eq!(e.code, "0A000", "{sql}");
                assert!(e.message.contains(&format!("{name}()")), "{sql}: {}", e.message);
            }
        }
    }
}
