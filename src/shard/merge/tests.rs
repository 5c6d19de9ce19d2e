//! Table tests: the plans [`analyze`] makes and the refusals it gives, numeric and float text as
//! PostgreSQL prints them, value order, and the merger's rows in and out.

use bytes::{BufMut, Bytes, BytesMut};
use sqlparser::ast::ObjectName;

use super::numeric::Numeric;
use super::value::{self, Kind};
use super::*;

/// accounts (key id) and orders (key account_id) are sharded; everything else is a reference table.
fn key(table: &ObjectName) -> Option<String> {
    match table.to_string().to_lowercase().as_str() {
        "accounts" | "public.accounts" => Some("id".into()),
        "orders" => Some("account_id".into()),
        _ => None,
    }
}

/// A compact, readable form of a merge for the tables below.
fn describe(m: &Merge) -> String {
    let mut out = match &m.mode {
        Mode::Rows { hidden: 0 } => "rows".to_owned(),
        Mode::Rows { hidden } => format!("rows+{hidden}"),
        Mode::Distinct => "distinct".to_owned(),
        Mode::Aggregate(a) => {
            let slots: Vec<String> = a
                .slots
                .iter()
                .map(|s| match s {
                    Slot::Key => "key".to_owned(),
                    Slot::Any => "any".to_owned(),
                    Slot::Count => "count".to_owned(),
                    Slot::Sum => "sum".to_owned(),
                    Slot::Min => "min".to_owned(),
                    Slot::Max => "max".to_owned(),
                    Slot::Avg { count_column } => format!("avg/{count_column}"),
                })
                .collect();
            format!(
                "{} [{}] {}",
                if a.grouped { "group" } else { "agg" },
                slots.join(","),
                a.visible
            )
        }
    };
    for k in &m.order {
        let col = match k.column {
            SortColumn::Front(i) => format!("F{i}"),
            SortColumn::Back(i) => format!("B{i}"),
        };
        out.push_str(&format!(
            " | {col} {}{}{}",
            if k.descending { "desc" } else { "asc" },
            if k.nulls_first { " nf" } else { " nl" },
            if k.c_collation { " C" } else { "" }
        ));
    }
    if let Some(n) = m.limit {
        out.push_str(&format!(" | limit {n}"));
    }
    if m.offset > 0 {
        out.push_str(&format!(" | offset {}", m.offset));
    }
    out
}

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

#[test]
fn numeric_text_arithmetic_matches_postgresql() {
    let n = |s: &str| Numeric::parse(s.as_bytes()).expect(s);
    // (sum, count, avg as PostgreSQL prints it)
    let avgs = [
        ("3", 2, "1.5000000000000000"),
        ("3", 3, "1.00000000000000000000"),
        ("10", 4, "2.5000000000000000"),
        ("-7", 2, "-3.5000000000000000"),
        ("3.75", 2, "1.8750000000000000"),
        ("2", 3, "0.66666666666666666667"),
        ("20000", 3, "6666.6666666666666667"),
        ("1", 7, "0.14285714285714285714"),
        (
            "123456789012345678901234567890",
            1,
            "123456789012345678901234567890",
        ),
        ("0", 5, "0.00000000000000000000"),
        ("0.000001", 3, "0.000000333333333333333333"),
        ("NaN", 2, "NaN"),
        ("Infinity", 2, "Infinity"),
    ];
    for (sum, count, avg) in avgs {
        assert_eq!(n(sum).div_count(count).to_text(), avg, "{sum}/{count}");
    }
    let sums = [
        ("1.5", "2.25", "3.75"),
        ("-1.50", "1.5", "0.00"),
        ("99999", "1", "100000"),
        ("-3", "1.000", "-2.000"),
        ("Infinity", "-Infinity", "NaN"),
        ("1", "NaN", "NaN"),
    ];
    for (a, b, sum) in sums {
        assert_eq!(n(a).add(&n(b)).to_text(), sum, "{a}+{b}");
    }
    assert_eq!(n("1.500").canonical(), n("1.5").canonical());
    assert_eq!(n("-0.0").to_text(), "0.0");
}

#[test]
fn float_text_is_postgresql_output() {
    let f8 = [
        (1.5, "1.5"),
        (1e15, "1e+15"),
        (123456789012345.0, "123456789012345"),
        (0.0001, "0.0001"),
        (0.00001, "1e-05"),
        (-0.0, "-0"),
        (1e100, "1e+100"),
        (0.1 + 0.2, "0.30000000000000004"),
        (f64::NAN, "NaN"),
        (f64::NEG_INFINITY, "-Infinity"),
    ];
    for (v, text) in f8 {
        assert_eq!(value::float8_text(v), text);
    }
    assert_eq!(value::float4_text(1e6), "1e+06");
    assert_eq!(value::float4_text(123456.0), "123456");
    assert_eq!(value::float4_text(0.1), "0.1");
}

#[test]
fn values_order_as_postgresql_orders_them() {
    use std::cmp::Ordering::{Equal, Greater, Less};
    let cases: &[(Kind, &str, &str, std::cmp::Ordering)] = &[
        (Kind::Int, "9", "10", Less),
        (Kind::Int, "-5", "3", Less),
        (Kind::Float, "NaN", "Infinity", Greater),
        (Kind::Float, "-Infinity", "-1e+300", Less),
        (Kind::Float, "-0", "0", Equal),
        (Kind::Float, "1e-05", "0.0001", Less),
        (Kind::Numeric, "NaN", "Infinity", Greater),
        (Kind::Numeric, "10.5", "9.75", Greater),
        (Kind::Numeric, "-10.5", "-9.75", Less),
        (Kind::Numeric, "1.0", "1.00", Equal),
        (Kind::Text, "B", "a", Less),
        (Kind::Bpchar, "a  ", "a", Equal),
        (Kind::Date, "0044-03-15 BC", "0001-01-01", Less),
        (Kind::Date, "10000-01-01", "9999-12-31", Greater),
        (Kind::Date, "infinity", "9999-12-31", Greater),
        (
            Kind::Timestamp,
            "2024-01-01 00:00:00.5",
            "2024-01-01 00:00:00.25",
            Greater,
        ),
        (
            Kind::TimestampTz,
            "2024-01-01 10:00:00+02",
            "2024-01-01 09:00:00+00",
            Less,
        ),
        (
            Kind::TimestampTz,
            "2024-01-01 05:30:00+05:30",
            "2024-01-01 00:00:00+00",
            Equal,
        ),
        (Kind::Bytes, "f", "t", Less),
    ];
    for (kind, a, b, want) in cases {
        assert_eq!(
            value::compare(*kind, a.as_bytes(), b.as_bytes()),
            Ok(*want),
            "{kind:?} {a} {b}"
        );
    }
    // Another DateStyle is refused rather than misread.
    assert!(value::compare(Kind::Date, b"01/02/2024", b"2024-01-02").is_err());
}

fn rd(cols: &[(&str, u32)]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(cols.len() as i16);
    for (name, oid) in cols {
        b.put_slice(name.as_bytes());
        b.put_u8(0);
        b.put_u32(0);
        b.put_i16(0);
        b.put_u32(*oid);
        b.put_i16(-1);
        b.put_i32(-1);
        b.put_i16(0);
    }
    b.to_vec()
}

fn dr(vals: &[Option<&str>]) -> Vec<u8> {
    let mut b = BytesMut::new();
    b.put_i16(vals.len() as i16);
    for v in vals {
        match v {
            None => b.put_i32(-1),
            Some(v) => {
                b.put_i32(v.len() as i32);
                b.put_slice(v.as_bytes());
            }
        }
    }
    b.to_vec()
}

/// The client's result: column (name, type oid), rows, command tag.
type Out = (Vec<(String, u32)>, Vec<Vec<Option<String>>>, String);

fn decode(frames: &[Bytes]) -> Out {
    let (mut cols, mut rows, mut tag) = (Vec::new(), Vec::new(), String::new());
    for f in frames {
        let body = &f[5..];
        match f[0] {
            b'T' => {
                let mut at = 2;
                for _ in 0..i16::from_be_bytes([body[0], body[1]]) {
                    let end = at + body[at..].iter().position(|&b| b == 0).expect("name");
                    let name = String::from_utf8(body[at..end].to_vec()).expect("utf8");
                    let oid = u32::from_be_bytes(body[end + 7..end + 11].try_into().expect("oid"));
                    cols.push((name, oid));
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
                        row.push(Some(
                            String::from_utf8(body[at..at + len as usize].to_vec()).expect("utf8"),
                        ));
                        at += len as usize;
                    }
                }
                rows.push(row);
            }
            b'C' => tag = String::from_utf8(body[..body.len() - 1].to_vec()).expect("utf8"),
            other => panic!("unexpected frame {other}"),
        }
    }
    (cols, rows, tag)
}

/// Plans `sql`, feeds every shard's columns and rows, returns the client's result.
fn merge(sql: &str, cols: &[(&str, u32)], shards: &[Vec<Vec<Option<&str>>>]) -> Result<Out, String> {
    let plan = analyze(sql, &key).map_err(|e| e.message)?;
    let mut m = Merger::new(&plan.merge, shards.len()).with_collation("C");
    let mut frames = Vec::new();
    for (i, _) in shards.iter().enumerate() {
        frames.extend(m.row_description(i, &rd(cols)).map_err(|e| e.message)?);
    }
    for (i, rows) in shards.iter().enumerate() {
        for r in rows {
            frames.extend(m.data_row(i, &dr(r)).map_err(|e| e.message)?);
        }
    }
    frames.extend(m.finish().map_err(|e| e.message)?);
    Ok(decode(&frames))
}

fn rows(out: &Out) -> Vec<Vec<Option<&str>>> {
    out.1
        .iter()
        .map(|r| r.iter().map(|v| v.as_deref()).collect())
        .collect()
}

use value::oid::{FLOAT8, INT4, INT8, NUMERIC, TEXT};

#[test]
fn merger_sorts_limits_and_drops_hidden_columns() {
    let out = merge(
        "SELECT name FROM accounts ORDER BY balance DESC LIMIT 2 OFFSET 1",
        &[("name", TEXT), ("balance", INT4)],
        &[
            vec![
                vec![Some("a"), Some("30")],
                vec![Some("b"), Some("10")],
                vec![Some("n"), None],
            ],
            vec![vec![Some("c"), Some("20")], vec![Some("d"), Some("5")]],
        ],
    )
    .expect("merged");
    assert_eq!(out.0, vec![("name".to_owned(), TEXT)]);
    // DESC puts NULL first: n, a(30), c(20), b(10), d(5); OFFSET 1 LIMIT 2.
    assert_eq!(rows(&out), vec![vec![Some("a")], vec![Some("c")]]);
    assert_eq!(out.2, "SELECT 2");
}

#[test]
fn merger_streams_a_union_with_offset_and_limit() {
    let out = merge(
        "SELECT id FROM accounts LIMIT 2 OFFSET 1",
        &[("id", INT4)],
        &[vec![vec![Some("1")], vec![Some("2")]], vec![vec![Some("3")]]],
    )
    .expect("merged");
    assert_eq!(rows(&out), vec![vec![Some("2")], vec![Some("3")]]);
    assert_eq!(out.2, "SELECT 2");
}

#[test]
fn merger_combines_aggregates_per_group() {
    let out = merge(
        "SELECT region, count(*), sum(balance), min(balance), max(balance), avg(balance) FROM accounts GROUP BY region ORDER BY region",
        &[("region", TEXT), ("count", INT8), ("sum", INT8), ("min", INT4), ("max", INT4), ("avg", INT8), ("count", INT8)],
        &[
            vec![
                vec![Some("eu"), Some("2"), Some("3"), Some("1"), Some("2"), Some("3"), Some("2")],
                vec![None, Some("1"), None, None, None, None, Some("0")],
            ],
            vec![vec![Some("eu"), Some("1"), Some("10"), Some("10"), Some("10"), Some("10"), Some("1")]],
        ],
    )
    .expect("merged");
    assert_eq!(out.0[5], ("avg".to_owned(), NUMERIC));
    assert_eq!(
        rows(&out),
        vec![
            vec![
                Some("eu"),
                Some("3"),
                Some("13"),
                Some("1"),
                Some("10"),
                Some("4.3333333333333333")
            ],
            vec![None, Some("1"), None, None, None, None],
        ]
    );
    assert_eq!(out.2, "SELECT 2");
}

#[test]
fn merger_adds_floats_and_numerics_in_their_types() {
    let out = merge(
        "SELECT sum(x), avg(x) FROM accounts",
        &[("sum", FLOAT8), ("avg", FLOAT8), ("count", INT8)],
        &[
            vec![vec![Some("0.5"), Some("0.5"), Some("1")]],
            vec![vec![Some("1e+20"), Some("1e+20"), Some("1")]],
        ],
    )
    .expect("merged");
    assert_eq!(out.0[1].1, FLOAT8);
    assert_eq!(rows(&out), vec![vec![Some("1e+20"), Some("5e+19")]]);
    let out = merge(
        "SELECT sum(x) FROM accounts",
        &[("sum", NUMERIC)],
        &[
            vec![vec![Some("1.25")]],
            vec![vec![Some("-0.250")]],
            vec![vec![None]],
        ],
    )
    .expect("merged");
    assert_eq!(rows(&out), vec![vec![Some("1.000")]]);
}

#[test]
fn merger_dedupes_distinct_rows_by_value() {
    let out = merge(
        "SELECT DISTINCT x FROM accounts ORDER BY x",
        &[("x", NUMERIC)],
        &[
            vec![vec![Some("1.0")], vec![Some("2")]],
            vec![vec![Some("1.00")], vec![None]],
        ],
    )
    .expect("merged");
    assert_eq!(rows(&out), vec![vec![Some("1.0")], vec![Some("2")], vec![None]]);
}

#[test]
fn merger_counts_zero_rows_as_postgresql_does() {
    let out = merge(
        "SELECT count(*), max(id) FROM accounts",
        &[("count", INT8), ("max", INT4)],
        &[vec![vec![Some("0"), None]], vec![vec![Some("0"), None]]],
    )
    .expect("merged");
    assert_eq!(rows(&out), vec![vec![Some("0"), None]]);
    let out = merge(
        "SELECT region, count(*) FROM accounts GROUP BY region",
        &[("region", TEXT), ("count", INT8)],
        &[vec![], vec![]],
    )
    .expect("merged");
    assert_eq!((rows(&out).len(), out.2.as_str()), (0, "SELECT 0"));
}

#[test]
fn merger_refuses_what_the_types_do_not_allow() {
    // Text order under a collation other than C.
    let plan = analyze("SELECT name FROM accounts ORDER BY name", &key).expect("plan");
    let mut m = Merger::new(&plan.merge, 2).with_collation("en_US.UTF-8");
    let e = m.row_description(0, &rd(&[("name", TEXT)])).expect_err("refused");
    assert_eq!(e.code, "0A000");
    assert!(e.message.contains("\"en_US.UTF-8\""), "{}", e.message);
    // Not told the collation: refused too, never guessed.
    let mut m = Merger::new(&plan.merge, 2);
    assert!(m.row_description(0, &rd(&[("name", TEXT)])).is_err());
    // COLLATE "C" orders bytewise under any collation.
    let plan = analyze("SELECT name FROM accounts ORDER BY name COLLATE \"C\"", &key).expect("plan");
    let mut m = Merger::new(&plan.merge, 1).with_collation("en_US.UTF-8");
    assert!(
        m.row_description(0, &rd(&[("name", TEXT), ("name", TEXT)]))
            .is_ok()
    );
    // sum of an interval, avg of a real, min of a json column.
    for (sql, oid) in [
        ("SELECT sum(d) FROM accounts", 1186),
        ("SELECT avg(r) FROM accounts", 700),
        ("SELECT min(j) FROM accounts", 114),
    ] {
        let plan = analyze(sql, &key).expect("plan");
        let mut m = Merger::new(&plan.merge, 1).with_collation("C");
        let cols: Vec<(&str, u32)> = match plan.merge.mode {
            Mode::Aggregate(ref a) if matches!(a.slots[0], Slot::Avg { .. }) => {
                vec![("avg", oid), ("count", INT8)]
            }
            _ => vec![("x", oid)],
        };
        let e = m.row_description(0, &rd(&cols)).expect_err(sql);
        assert_eq!(e.code, "0A000", "{sql}");
    }
}
