//! The merger: shard rows in, client rows out.

use bytes::{BufMut, Bytes, BytesMut};

use super::super::value;
use super::super::*;
use super::key;

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
    // Binary result columns.
    let plan = analyze("SELECT id FROM accounts", &key).expect("plan");
    let mut body = rd(&[("id", INT4)]);
    let n = body.len();
    body[n - 1] = 1;
    let e = Merger::new(&plan.merge, 1)
        .row_description(0, &body)
        .expect_err("binary");
    assert!(e.message.contains("binary results"), "{}", e.message);
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

#[test]
fn merger_keeps_the_top_rows_while_cutting_what_it_holds() {
    // More rows than the merger holds before it sorts and cuts (1024); each value is on both shards, so
    // DESC gives 2999, 2999, 2998, 2998, 2997, ... and OFFSET 2 LIMIT 3 is 2998, 2998, 2997.
    let shard: Vec<String> = (0..3000).map(|i| ((i * 7919) % 3000).to_string()).collect();
    let rows_in: Vec<Vec<Option<&str>>> = shard.iter().map(|v| vec![Some(v.as_str())]).collect();
    let out = merge(
        "SELECT id FROM accounts ORDER BY id DESC LIMIT 3 OFFSET 2",
        &[("id", INT4)],
        &[rows_in.clone(), rows_in],
    )
    .expect("merged");
    assert_eq!(
        rows(&out),
        vec![vec![Some("2998")], vec![Some("2998")], vec![Some("2997")]]
    );
}

#[test]
fn merger_refuses_a_group_a_shard_returns_twice() {
    // A set-returning function pgfleet does not know by name multiplies the group's row on each shard.
    let e = merge(
        "SELECT region, my_rows(), count(*) FROM accounts GROUP BY region",
        &[("region", TEXT), ("my_rows", INT4), ("count", INT8)],
        &[vec![
            vec![Some("eu"), Some("1"), Some("2")],
            vec![Some("eu"), Some("2"), Some("2")],
        ]],
    )
    .expect_err("refused");
    assert!(e.contains("set-returning function"), "{e}");
    // Ungrouped: one row per shard, or refused.
    let e = merge(
        "SELECT count(*), my_rows() FROM accounts",
        &[("count", INT8), ("my_rows", INT4)],
        &[
            vec![vec![Some("2"), Some("1")], vec![Some("2"), Some("2")]],
            vec![],
        ],
    )
    .expect_err("refused");
    assert!(e.contains("set-returning function"), "{e}");
}
