//! analyze: the plans it makes (the statement each shard runs and the merge) and its refusals.

use sqlparser::ast::ObjectName;

use super::super::*;
use super::{describe, key};

/// (statement, what each shard runs, the merge).
const MERGED: &[(&str, &str, &str)] = &[
    ("SELECT * FROM accounts", "SELECT * FROM accounts", "rows"),
    (
        "SELECT id, name FROM accounts WHERE balance > 10",
        "SELECT id, name FROM accounts WHERE balance > 10",
        "rows",
    ),
    (
        "SELECT id, name FROM accounts ORDER BY id LIMIT 10 OFFSET 5",
        "SELECT id, name FROM accounts ORDER BY id LIMIT 15",
        "rows | F0 asc nl | limit 10 | offset 5",
    ),
    (
        "SELECT id, name FROM accounts ORDER BY name DESC NULLS LAST LIMIT 3",
        "SELECT id, name FROM accounts ORDER BY name DESC NULLS LAST LIMIT 3",
        "rows | F1 desc nl | limit 3",
    ),
    (
        "SELECT id FROM accounts ORDER BY id DESC",
        "SELECT id FROM accounts ORDER BY id DESC",
        "rows | F0 desc nf",
    ),
    (
        "SELECT id FROM accounts ORDER BY id ASC NULLS FIRST",
        "SELECT id FROM accounts ORDER BY id ASC NULLS FIRST",
        "rows | F0 asc nf",
    ),
    (
        "SELECT name FROM accounts ORDER BY balance",
        "SELECT name, balance FROM accounts ORDER BY balance",
        "rows+1 | B0 asc nl",
    ),
    (
        "SELECT * FROM accounts ORDER BY id",
        "SELECT *, id FROM accounts ORDER BY id",
        "rows+1 | B0 asc nl",
    ),
    (
        "SELECT name FROM accounts ORDER BY balance, id DESC LIMIT 1",
        "SELECT name, balance, id FROM accounts ORDER BY balance, id DESC LIMIT 1",
        "rows+2 | B1 asc nl | B0 desc nf | limit 1",
    ),
    (
        "SELECT id AS k, name FROM accounts ORDER BY k",
        "SELECT id AS k, name FROM accounts ORDER BY k",
        "rows | F0 asc nl",
    ),
    (
        "SELECT a.id, a.name FROM accounts a ORDER BY name",
        "SELECT a.id, a.name FROM accounts a ORDER BY name",
        "rows | F1 asc nl",
    ),
    (
        "SELECT id, name FROM accounts ORDER BY 2, 1 DESC",
        "SELECT id, name FROM accounts ORDER BY 2, 1 DESC",
        "rows | F1 asc nl | F0 desc nf",
    ),
    (
        "SELECT upper(name) FROM accounts ORDER BY UPPER(name) LIMIT 2",
        "SELECT upper(name) FROM accounts ORDER BY UPPER(name) LIMIT 2",
        "rows | F0 asc nl | limit 2",
    ),
    (
        "SELECT id FROM accounts LIMIT 5",
        "SELECT id FROM accounts LIMIT 5",
        "rows | limit 5",
    ),
    (
        "SELECT id FROM accounts OFFSET 5",
        "SELECT id FROM accounts",
        "rows | offset 5",
    ),
    (
        "SELECT id FROM accounts LIMIT ALL",
        "SELECT id FROM accounts",
        "rows",
    ),
    (
        "SELECT id, random() FROM accounts ORDER BY id LIMIT 2",
        "SELECT id, random() FROM accounts ORDER BY id LIMIT 2",
        "rows | F0 asc nl | limit 2",
    ),
    (
        "SELECT name FROM accounts ORDER BY name COLLATE \"C\" LIMIT 3",
        "SELECT name, name COLLATE \"C\" FROM accounts ORDER BY name COLLATE \"C\" LIMIT 3",
        "rows+1 | B0 asc nl C | limit 3",
    ),
    (
        "SELECT count(*) FROM accounts",
        "SELECT count(*) FROM accounts",
        "agg [count] 1",
    ),
    (
        "SELECT pg_catalog.count(*) FROM public.accounts",
        "SELECT pg_catalog.count(*) FROM public.accounts",
        "agg [count] 1",
    ),
    (
        "SELECT count(*), sum(balance), min(name), max(id), avg(balance) FROM accounts",
        "SELECT count(*), sum(balance), min(name), max(id), sum(balance) AS avg, count(balance) FROM accounts",
        "agg [count,sum,min,max,avg/5] 5",
    ),
    (
        "SELECT avg(balance) AS mean FROM accounts",
        "SELECT sum(balance) AS mean, count(balance) FROM accounts",
        "agg [avg/1] 1",
    ),
    (
        "SELECT count(*) FILTER (WHERE balance > 0) FROM accounts",
        "SELECT count(*) FILTER (WHERE balance > 0) FROM accounts",
        "agg [count] 1",
    ),
    (
        "SELECT avg(balance) FILTER (WHERE id > 3) FROM accounts",
        "SELECT sum(balance) FILTER (WHERE id > 3) AS avg, count(balance) FILTER (WHERE id > 3) FROM accounts",
        "agg [avg/1] 1",
    ),
    (
        "SELECT max(DISTINCT region) FROM accounts",
        "SELECT max(DISTINCT region) FROM accounts",
        "agg [max] 1",
    ),
    (
        "SELECT count(*) FROM accounts LIMIT 0",
        "SELECT count(*) FROM accounts",
        "agg [count] 1 | limit 0",
    ),
    (
        "SELECT region, count(*) FROM accounts GROUP BY region",
        "SELECT region, count(*) FROM accounts GROUP BY region",
        "group [key,count] 2",
    ),
    (
        "SELECT region, count(*) AS n FROM accounts GROUP BY region ORDER BY n DESC LIMIT 3",
        "SELECT region, count(*) AS n FROM accounts GROUP BY region",
        "group [key,count] 2 | F1 desc nf | limit 3",
    ),
    (
        "SELECT count(*) FROM accounts GROUP BY region",
        "SELECT count(*), region FROM accounts GROUP BY region",
        "group [count,key] 1",
    ),
    (
        "SELECT region, avg(balance) FROM accounts GROUP BY 1 ORDER BY 2",
        "SELECT region, sum(balance) AS avg, count(balance) FROM accounts GROUP BY 1",
        "group [key,avg/2] 2 | F1 asc nl",
    ),
    (
        "SELECT region, count(*) FROM accounts GROUP BY region ORDER BY sum(balance)",
        "SELECT region, count(*), sum(balance) FROM accounts GROUP BY region",
        "group [key,count,sum] 2 | F2 asc nl",
    ),
    (
        "SELECT region, count(*) FROM accounts GROUP BY region ORDER BY avg(balance) DESC",
        "SELECT region, count(*), sum(balance) AS avg, count(balance) FROM accounts GROUP BY region",
        "group [key,count,avg/3] 2 | F2 desc nf",
    ),
    (
        "SELECT region, upper(region), count(*) FROM accounts GROUP BY region",
        "SELECT region, upper(region), count(*) FROM accounts GROUP BY region",
        "group [key,any,count] 3",
    ),
    (
        "SELECT count(*) FROM accounts GROUP BY region, country ORDER BY country",
        "SELECT count(*), region, country FROM accounts GROUP BY region, country",
        "group [count,key,key] 1 | F2 asc nl",
    ),
    (
        "SELECT max(balance) AS top, region FROM accounts GROUP BY region ORDER BY region NULLS FIRST",
        "SELECT max(balance) AS top, region FROM accounts GROUP BY region",
        "group [max,key] 2 | F1 asc nf",
    ),
    (
        "SELECT region AS r, count(*) FROM accounts GROUP BY region ORDER BY r",
        "SELECT region AS r, count(*) FROM accounts GROUP BY region",
        "group [key,count] 2 | F0 asc nl",
    ),
    (
        "SELECT DISTINCT region FROM accounts",
        "SELECT DISTINCT region FROM accounts",
        "distinct",
    ),
    (
        "SELECT DISTINCT region FROM accounts ORDER BY region LIMIT 2 OFFSET 1",
        "SELECT DISTINCT region FROM accounts ORDER BY region LIMIT 3",
        "distinct | F0 asc nl | limit 2 | offset 1",
    ),
    (
        "SELECT a.id, o.total FROM accounts a JOIN orders o ON o.account_id = a.id",
        "SELECT a.id, o.total FROM accounts a JOIN orders o ON o.account_id = a.id",
        "rows",
    ),
    (
        "SELECT a.id, o.total FROM accounts a LEFT JOIN orders o ON a.id = o.account_id AND o.total > 0",
        "SELECT a.id, o.total FROM accounts a LEFT JOIN orders o ON a.id = o.account_id AND o.total > 0",
        "rows",
    ),
    (
        "SELECT accounts.id FROM accounts, orders WHERE accounts.id = orders.account_id",
        "SELECT accounts.id FROM accounts, orders WHERE accounts.id = orders.account_id",
        "rows",
    ),
    (
        "SELECT a.id, c.name FROM accounts a JOIN countries c ON c.code = a.country",
        "SELECT a.id, c.name FROM accounts a JOIN countries c ON c.code = a.country",
        "rows",
    ),
    (
        "SELECT a.id, c.name FROM accounts a LEFT JOIN countries c ON c.code = a.country",
        "SELECT a.id, c.name FROM accounts a LEFT JOIN countries c ON c.code = a.country",
        "rows",
    ),
    (
        "SELECT id FROM accounts WHERE country IN (SELECT code FROM countries)",
        "SELECT id FROM accounts WHERE country IN (SELECT code FROM countries)",
        "rows",
    ),
    (
        "WITH c AS (SELECT code FROM countries) SELECT a.id FROM accounts a JOIN c ON c.code = a.country",
        "WITH c AS (SELECT code FROM countries) SELECT a.id FROM accounts a JOIN c ON c.code = a.country",
        "rows",
    ),
    (
        "SELECT g, count(*) FROM accounts, generate_series(1, 2) g GROUP BY g",
        "SELECT g, count(*) FROM accounts, generate_series(1, 2) g GROUP BY g",
        "group [key,count] 2",
    ),
];

/// (statement, SQLSTATE, words the message contains).
const REFUSED: &[(&str, &str, &str)] = &[
    (
        "SELECT name FROM accounts HAVING count(*) > 1",
        "0A000",
        "HAVING is not supported",
    ),
    (
        "SELECT region FROM accounts GROUP BY region HAVING count(*) > 1",
        "0A000",
        "HAVING is not supported",
    ),
    (
        "SELECT id, row_number() OVER (ORDER BY id) FROM accounts",
        "0A000",
        "window functions",
    ),
    (
        "SELECT id, sum(balance) OVER w FROM accounts WINDOW w AS (ORDER BY id)",
        "0A000",
        "window functions",
    ),
    ("SELECT array_agg(id) FROM accounts", "0A000", "array_agg()"),
    (
        "SELECT string_agg(name, ',') FROM accounts",
        "0A000",
        "string_agg()",
    ),
    ("SELECT json_agg(a) FROM accounts a", "0A000", "json_agg()"),
    (
        "SELECT my_custom_agg(id) FROM accounts",
        "0A000",
        "my_custom_agg()",
    ),
    (
        "SELECT percentile_cont(0.5) WITHIN GROUP (ORDER BY balance) FROM accounts",
        "0A000",
        "percentile_cont()",
    ),
    (
        "SELECT mode() WITHIN GROUP (ORDER BY region) FROM accounts",
        "0A000",
        "mode()",
    ),
    ("SELECT stddev(balance) FROM accounts", "0A000", "stddev()"),
    ("SELECT variance(balance) FROM accounts", "0A000", "variance()"),
    (
        "SELECT bool_and(balance > 0) FROM accounts",
        "0A000",
        "bool_and()",
    ),
    (
        "SELECT count(DISTINCT region) FROM accounts",
        "0A000",
        "count(DISTINCT ...)",
    ),
    (
        "SELECT sum(DISTINCT balance) FROM accounts",
        "0A000",
        "sum(DISTINCT ...)",
    ),
    (
        "SELECT sum(balance ORDER BY id) FROM accounts",
        "0A000",
        "ORDER BY or other clauses inside",
    ),
    ("SELECT id FROM accounts FOR UPDATE", "0A000", "FOR UPDATE/SHARE"),
    ("SELECT id FROM accounts FOR SHARE", "0A000", "FOR UPDATE/SHARE"),
    (
        "SELECT id FROM accounts UNION SELECT account_id FROM orders",
        "0A000",
        "UNION is not supported",
    ),
    (
        "SELECT id FROM accounts INTERSECT SELECT account_id FROM orders",
        "0A000",
        "INTERSECT is not supported",
    ),
    (
        "SELECT id FROM accounts EXCEPT SELECT 1",
        "0A000",
        "EXCEPT is not supported",
    ),
    (
        "SELECT id, (SELECT count(*) FROM orders o WHERE o.account_id = a.id) FROM accounts a",
        "0A000",
        "subquery in the select list reading the sharded table orders",
    ),
    (
        "SELECT * FROM (SELECT * FROM accounts) s",
        "0A000",
        "subquery in FROM reading the sharded table accounts",
    ),
    (
        "SELECT id FROM accounts WHERE id IN (SELECT account_id FROM orders)",
        "0A000",
        "subquery reading the sharded table orders",
    ),
    (
        "SELECT id FROM accounts a WHERE EXISTS (SELECT 1 FROM orders o WHERE o.account_id = a.id)",
        "0A000",
        "subquery reading the sharded table orders",
    ),
    (
        "WITH r AS (SELECT * FROM accounts) SELECT * FROM r",
        "0A000",
        "WITH query reading the sharded table accounts",
    ),
    (
        "SELECT a.id FROM accounts a JOIN orders o ON o.id = a.id",
        "0A000",
        "join of the sharded tables accounts and orders not on their shard keys",
    ),
    (
        "SELECT a.id FROM accounts a, orders o",
        "0A000",
        "not on their shard keys",
    ),
    (
        "SELECT a.id FROM accounts a LEFT JOIN orders o ON true WHERE a.id = o.account_id",
        "0A000",
        "not on their shard keys",
    ),
    (
        "SELECT c.name, a.id FROM countries c LEFT JOIN accounts a ON a.country = c.code",
        "0A000",
        "outer join keeping unmatched rows of a reference table",
    ),
    (
        "SELECT c.name, a.id FROM accounts a FULL JOIN countries c ON a.country = c.code",
        "0A000",
        "outer join keeping unmatched rows of a reference table",
    ),
    (
        "SELECT sum(balance) + 1 FROM accounts",
        "0A000",
        "expression over aggregates",
    ),
    (
        "SELECT coalesce(max(balance), 0) FROM accounts",
        "0A000",
        "expression over aggregates",
    ),
    ("SELECT id FROM accounts LIMIT $1", "0A000", "LIMIT $1"),
    (
        "SELECT id FROM accounts ORDER BY id OFFSET $1",
        "0A000",
        "OFFSET $1",
    ),
    (
        "SELECT name FROM accounts ORDER BY name COLLATE \"en_US\"",
        "0A000",
        "COLLATE \"en_US\"",
    ),
    ("SELECT * FROM countries", "0A000", "reads no sharded table"),
    (
        "SELECT DISTINCT ON (region) region, id FROM accounts ORDER BY region, id",
        "0A000",
        "DISTINCT ON",
    ),
    (
        "SELECT DISTINCT region, count(*) FROM accounts GROUP BY region",
        "0A000",
        "DISTINCT with aggregates",
    ),
    (
        "SELECT region, count(*) FROM accounts GROUP BY ROLLUP (region)",
        "0A000",
        "ROLLUP",
    ),
    (
        "SELECT region, count(*) FROM accounts GROUP BY CUBE (region)",
        "0A000",
        "CUBE",
    ),
    (
        "SELECT id FROM accounts ORDER BY id FETCH FIRST 3 ROWS ONLY",
        "0A000",
        "FETCH FIRST",
    ),
    ("SELECT id FROM accounts ORDER BY id USING <", "0A000", "USING <"),
    ("SELECT * FROM accounts ORDER BY 1", "0A000", "position after *"),
    (
        "SELECT *, count(*) FROM accounts GROUP BY id",
        "0A000",
        "SELECT * with aggregates",
    ),
    (
        "SELECT region % 2 AS region, count(*) FROM accounts GROUP BY region",
        "0A000",
        "GROUP BY the output column name region",
    ),
    ("SELECT id INTO copy FROM accounts", "0A000", "SELECT INTO"),
    ("SELECT 1; SELECT 2", "0A000", "single SELECT"),
    ("INSERT INTO accounts VALUES (1)", "0A000", "single SELECT"),
    (
        "SELECT DISTINCT region FROM accounts ORDER BY balance",
        "42P10",
        "must appear in select list",
    ),
    (
        "SELECT id FROM accounts ORDER BY 3",
        "42P10",
        "position 3 is not in select list",
    ),
];

struct WithUserAggregate;

impl ShardedTables for WithUserAggregate {
    fn shard_key(&self, table: &ObjectName) -> Option<String> {
        key(table)
    }
    fn is_user_aggregate(&self, function: &ObjectName) -> bool {
        function.to_string() == "my_custom_agg"
    }
}

#[test]
fn analyze_plans_merges() {
    assert!(MERGED.len() + REFUSED.len() >= 40);
    for (sql, shard_sql, merge) in MERGED {
        let plan = analyze(sql, &WithUserAggregate)
            .unwrap_or_else(|e| panic!("{sql}: refused: {} {}", e.code, e.message));
        assert_eq!(&plan.shard_sql, shard_sql, "{sql}");
        assert_eq!(&describe(&plan.merge), merge, "{sql}");
        // The shard statement itself plans the same way: the rewrite is stable.
        analyze(&plan.shard_sql, &WithUserAggregate).unwrap_or_else(|e| panic!("{shard_sql}: {}", e.message));
    }
}

#[test]
fn analyze_refuses_what_it_cannot_merge() {
    for (sql, code, words) in REFUSED {
        let e = match analyze(sql, &WithUserAggregate) {
            Ok(p) => panic!("{sql}: planned as {:?}", p),
            Err(e) => e,
        };
        assert_eq!(&e.code, code, "{sql}: {}", e.message);
        assert!(e.message.contains(words), "{sql}: {}", e.message);
        if *code == "0A000" {
            assert!(e.hint.as_deref().is_some_and(|h| !h.is_empty()), "{sql}: no hint");
        }
    }
}

#[test]
fn refusals_name_the_shard_key() {
    let e = analyze(
        "SELECT region FROM accounts GROUP BY region HAVING count(*) > 1",
        &key,
    )
    .err()
    .map(|e| (e.message, e.hint));
    assert_eq!(
        e,
        Some((
            "HAVING is not supported across shards".to_owned(),
            Some("filter the groups in the application, or add a WHERE on the shard key accounts.id so the query runs on one shard".to_owned())
        ))
    );
}
