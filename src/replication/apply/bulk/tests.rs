//! Unit tests of the set-wise apply: which changes take it, and the statements and COPY data it builds.

use super::*;
use crate::replication::sql::tests::col;

/// public.t (id int primary key, note text, data text)
fn t() -> Relation {
    Relation {
        id: 7,
        namespace: "public".to_owned(),
        name: "t".to_owned(),
        replica_identity: b'd',
        columns: vec![
            col("id", true, 23),
            col("note", false, 25),
            col("data", false, 25),
        ],
    }
}

/// "My S"."Two Keys" (a int, "B b" text, v jsonb), key (a, "B b")
fn two_keys() -> Relation {
    Relation {
        id: 8,
        namespace: "My S".to_owned(),
        name: "Two Keys".to_owned(),
        replica_identity: b'i',
        columns: vec![col("a", true, 23), col("B b", true, 25), col("v", false, 3802)],
    }
}

fn text(s: &str) -> Datum {
    Datum::Text(s.into())
}

fn upd(old: Option<Tuple>, new: Tuple) -> Change {
    Change::Update {
        old,
        key_only: true,
        new,
    }
}

/// A shape as (kind, staged columns, old key staged).
type Expected = (Kind, Vec<usize>, bool);

#[test]
fn which_changes_are_staged() {
    use Datum::{Null, UnchangedToast as U};
    let full = Relation {
        replica_identity: b'f',
        ..t()
    };
    let json_key = Relation {
        columns: vec![col("doc", true, 114), col("x", false, 23)],
        ..t()
    };
    let keys_only = Relation {
        columns: vec![col("id", true, 23)],
        ..t()
    };
    // (relation, change, expected shape as (kind, columns, old_key))
    let cases: Vec<(Relation, Change, Option<Expected>)> = vec![
        (
            t(),
            Change::Insert(vec![text("1"), Null, text("x")]),
            Some((Kind::Insert, vec![0, 1, 2], false)),
        ),
        // Any table takes set-wise inserts, whatever its identity.
        (
            full.clone(),
            Change::Insert(vec![text("1"), Null, text("x")]),
            Some((Kind::Insert, vec![0, 1, 2], false)),
        ),
        (t(), Change::Insert(vec![text("1"), U, text("x")]), None),
        (t(), Change::Insert(vec![text("1")]), None),
        // Key unchanged: the key is staged to find the row; unchanged TOAST values are left out.
        (
            t(),
            upd(None, vec![text("1"), text("n"), U]),
            Some((Kind::Update, vec![0, 1], false)),
        ),
        (
            t(),
            upd(None, vec![text("1"), Null, text("d")]),
            Some((Kind::Update, vec![0, 1, 2], false)),
        ),
        // Key changed: the old key is staged too, and every sent column is set.
        (
            t(),
            upd(Some(vec![text("1"), Null, Null]), vec![text("2"), text("n"), U]),
            Some((Kind::Update, vec![0, 1], true)),
        ),
        // Part of the key changed: the unchanged part is not set.
        (
            two_keys(),
            upd(
                Some(vec![text("1"), text("b"), Null]),
                vec![text("1"), text("c"), text("{}")],
            ),
            Some((Kind::Update, vec![1, 2], true)),
        ),
        // Only the key of a key-only table changed: that is all there is to set.
        (
            keys_only.clone(),
            upd(Some(vec![text("1")]), vec![text("2")]),
            Some((Kind::Update, vec![0], true)),
        ),
        // Nothing but the key to set: row-wise (it touches the row with `c = c`).
        (t(), upd(None, vec![text("1"), U, U]), None),
        (keys_only.clone(), upd(None, vec![text("1")]), None),
        (t(), upd(None, vec![U, text("n"), text("d")]), None),
        (
            full.clone(),
            upd(None, vec![text("1"), text("n"), text("d")]),
            None,
        ),
        (
            t(),
            Change::Update {
                old: Some(vec![text("1"), text("o"), text("o")]),
                key_only: false,
                new: vec![text("1"), text("n"), text("d")],
            },
            None,
        ),
        (json_key.clone(), upd(None, vec![text("{}"), text("1")]), None),
        (
            t(),
            Change::Delete {
                old: vec![text("1"), Null, Null],
                key_only: true,
            },
            Some((Kind::Delete, vec![0], false)),
        ),
        (
            two_keys(),
            Change::Delete {
                old: vec![text("1"), text("b"), Null],
                key_only: true,
            },
            Some((Kind::Delete, vec![0, 1], false)),
        ),
        (
            full,
            Change::Delete {
                old: vec![text("1"), Null, Null],
                key_only: false,
            },
            None,
        ),
        (
            json_key,
            Change::Delete {
                old: vec![text("{}"), Null],
                key_only: true,
            },
            None,
        ),
        (
            keys_only,
            Change::Delete {
                old: vec![text("1")],
                key_only: true,
            },
            Some((Kind::Delete, vec![0], false)),
        ),
    ];
    for (i, (rel, change, expected)) in cases.into_iter().enumerate() {
        let got = shape(&rel, &change).map(|s| (s.kind, s.columns, s.old_key));
        assert_eq!(got, expected, "case {i}: {change:?}");
    }
}

#[test]
fn a_set_never_touches_a_row_twice() {
    let r = t();
    let first = upd(
        Some(vec![text("1"), Datum::Null, Datum::Null]),
        vec![text("2"), text("a"), text("a")],
    );
    let s = shape(&r, &first).expect("staged");
    let set = BulkSet::new(r.clone(), s.clone(), first);
    // (change, joins the set)
    let cases = vec![
        (
            upd(
                Some(vec![text("3"), Datum::Null, Datum::Null]),
                vec![text("4"), text("b"), text("b")],
            ),
            true,
        ),
        // Its old key is the new key of a staged row (a chain 1 -> 2 -> 5).
        (
            upd(
                Some(vec![text("2"), Datum::Null, Datum::Null]),
                vec![text("5"), text("b"), text("b")],
            ),
            false,
        ),
        // Its new key is the old key of a staged row.
        (
            upd(
                Some(vec![text("6"), Datum::Null, Datum::Null]),
                vec![text("1"), text("b"), text("b")],
            ),
            false,
        ),
    ];
    for (change, joins) in cases {
        let s2 = shape(&r, &change).expect("staged");
        assert_eq!(set.accepts(&s2, &change), joins, "{change:?}");
    }
    // The same row updated twice (key unchanged), and another shape, start new sets.
    let a = upd(None, vec![text("1"), text("a"), text("a")]);
    let set = BulkSet::new(r.clone(), shape(&r, &a).expect("staged"), a.clone());
    assert!(!set.accepts(&shape(&r, &a).expect("staged"), &a));
    let b = upd(None, vec![text("2"), text("a"), text("a")]);
    assert!(set.accepts(&shape(&r, &b).expect("staged"), &b));
    let toast = upd(None, vec![text("2"), text("a"), Datum::UnchangedToast]);
    assert!(!set.accepts(&shape(&r, &toast).expect("staged"), &toast));
    // Inserts into a table without a key: duplicates are fine.
    let i = Change::Insert(vec![text("1"), text("a"), text("a")]);
    let set = BulkSet::new(r.clone(), shape(&r, &i).expect("staged"), i.clone());
    assert!(set.accepts(&shape(&r, &i).expect("staged"), &i));
}

fn set_of(rel: &Relation, changes: Vec<Change>) -> BulkSet {
    let mut it = changes.into_iter();
    let first = it.next().expect("one change");
    let mut set = BulkSet::new(rel.clone(), shape(rel, &first).expect("staged"), first);
    for c in it {
        let s = shape(rel, &c).expect("staged");
        set.try_push(&s, c).expect("joins");
    }
    set
}

/// (set, staging table columns, COPY statement, apply statement, COPY data).
type StatementCase<'a> = (BulkSet, Option<&'a str>, &'a str, Option<String>, &'a str);

#[test]
fn statements_per_kind() {
    use Datum::{Null, UnchangedToast as U};
    let r = t();
    let tbl = "\"public\".\"t\"";
    // (set, staging table columns (None: no staging table), COPY statement, apply statement, COPY data)
    let stage = "COPY pg_temp.pgfleet_stage_1 FROM STDIN";
    let cases: Vec<StatementCase> = vec![
        (
            set_of(&r, vec![Change::Insert(vec![text("1"), Null, text("a\tb\\c\nd\re")]), Change::Insert(vec![text("2"), text("x"), text("")])]),
            None,
            "COPY \"public\".\"t\" (\"id\", \"note\", \"data\") FROM STDIN",
            None,
            "1\t\\N\ta\\tb\\\\c\\nd\\re\n2\tx\t\n",
        ),
        (
            set_of(&r, vec![upd(None, vec![text("1"), text("n"), U]), upd(None, vec![text("2"), Null, U])]),
            Some("\"id\", \"note\""),
            stage,
            Some(format!("UPDATE {tbl} AS tgt SET \"note\" = stg.\"note\" FROM pg_temp.pgfleet_stage_1 AS stg WHERE tgt.\"id\" = stg.\"id\"")),
            "1\tn\n2\t\\N\n",
        ),
        (
            set_of(&r, vec![upd(Some(vec![text("1"), Null, Null]), vec![text("11"), text("n"), text("d")])]),
            Some("\"id\" AS \"pgfleet_old_0\", \"id\", \"note\", \"data\""),
            stage,
            Some(format!("UPDATE {tbl} AS tgt SET \"id\" = stg.\"id\", \"note\" = stg.\"note\", \"data\" = stg.\"data\" FROM pg_temp.pgfleet_stage_1 AS stg WHERE tgt.\"id\" = stg.\"pgfleet_old_0\"")),
            "1\t11\tn\td\n",
        ),
        (
            set_of(&r, vec![Change::Delete { old: vec![text("1"), Null, Null], key_only: true }, Change::Delete { old: vec![text("2"), Null, Null], key_only: true }]),
            Some("\"id\""),
            stage,
            Some(format!("DELETE FROM {tbl} AS tgt USING pg_temp.pgfleet_stage_1 AS stg WHERE tgt.\"id\" = stg.\"id\"")),
            "1\n2\n",
        ),
        (
            set_of(&two_keys(), vec![upd(Some(vec![text("1"), text("x y"), Null]), vec![text("1"), text("z"), text("{\"k\": 1}")])]),
            Some("\"a\" AS \"pgfleet_old_0\", \"B b\" AS \"pgfleet_old_1\", \"B b\", \"v\""),
            stage,
            Some("UPDATE \"My S\".\"Two Keys\" AS tgt SET \"B b\" = stg.\"B b\", \"v\" = stg.\"v\" FROM pg_temp.pgfleet_stage_1 AS stg \
             WHERE tgt.\"a\" = stg.\"pgfleet_old_0\" AND tgt.\"B b\" = stg.\"pgfleet_old_1\"".to_owned()),
            "1\tx y\tz\t{\"k\": 1}\n",
        ),
    ];
    for (set, stage_columns, copy, apply, data) in cases {
        let from = qualified(&set.rel);
        assert_eq!(
            set.create_stage("pgfleet_stage_1"),
            stage_columns.map(|c| format!(
                "CREATE TEMPORARY TABLE pgfleet_stage_1 ON COMMIT DROP AS SELECT {c} FROM {from} WITH NO DATA"
            ))
        );
        assert_eq!(set.copy_statement("pgfleet_stage_1"), copy);
        // UPDATE and DELETE hold the planner to key lookups around the statement.
        assert_eq!(
            set.apply_statement("pgfleet_stage_1"),
            apply.map(|a| format!(
                "SET enable_mergejoin = off; SET enable_hashjoin = off; SET jit = off; {a}; \
                 RESET enable_mergejoin; RESET enable_hashjoin; RESET jit"
            ))
        );
        assert_eq!(String::from_utf8(set.copy_data()).expect("utf8"), data);
    }
}

#[test]
fn small_sets_stay_row_wise() {
    let r = t();
    let rows = |n: usize| {
        (0..n)
            .map(|i| Change::Insert(vec![text(&i.to_string()), Datum::Null, Datum::Null]))
            .collect::<Vec<_>>()
    };
    assert!(!set_of(&r, rows(MIN_ROWS - 1)).is_bulk());
    assert!(set_of(&r, rows(MIN_ROWS)).is_bulk());
    let set = set_of(&r, rows(2));
    assert_eq!(set.len(), 2);
    assert_eq!(
        set.row_sql().as_deref(),
        Ok(
            "INSERT INTO \"public\".\"t\" (\"id\",\"note\",\"data\") OVERRIDING SYSTEM VALUE VALUES ('0',NULL,NULL);\n\
            INSERT INTO \"public\".\"t\" (\"id\",\"note\",\"data\") OVERRIDING SYSTEM VALUE VALUES ('1',NULL,NULL);\n"
        )
    );
    // A full set takes no more rows.
    let mut big = set_of(&r, rows(1));
    for c in rows(MAX_ROWS + 1).into_iter().skip(1) {
        let s = shape(&r, &c).expect("staged");
        if big.try_push(&s, c).is_err() {
            break;
        }
    }
    assert_eq!(big.len(), MAX_ROWS);
}

#[test]
fn distinct_keys_join_a_set_however_their_values_split() {
    // Keys are told apart by hashes of each column's value with a separator: ("1", "23") and ("12", "3")
    // are different rows, and so are consecutive integer keys up to a full set.
    let r = two_keys();
    let row = |a: &str, b: &str| upd(None, vec![text(a), text(b), text("{}")]);
    let first = row("1", "23");
    let s = shape(&r, &first).expect("staged");
    let mut set = BulkSet::new(r.clone(), s.clone(), first);
    let other = row("12", "3");
    assert!(set.try_push(&s, other).is_ok());
    // The two rows above and keys 0..=last: one row short of a full set.
    let last = MAX_ROWS - 4;
    for i in 0..=last {
        let change = row(&i.to_string(), "k");
        assert!(set.try_push(&s, change).is_ok(), "key {i}");
    }
    assert_eq!(set.len(), MAX_ROWS - 1);
    assert!(set.accepts(&s, &row("fresh", "k")), "room for one more row");
    let last = last.to_string();
    for (a, b) in [("1", "23"), ("12", "3"), ("0", "k"), (last.as_str(), "k")] {
        assert!(!set.accepts(&s, &row(a, b)), "({a}, {b}) is in the set");
    }
}
