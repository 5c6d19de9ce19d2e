//! SQL text that applies one decoded change to a replica.
//!
//! Every value is written as a literal, never as a bind parameter, so that a whole batch of changes can be
//! sent as one simple-query string (statements joined with `;`). The literals are the primary's text output
//! and are left untyped: PostgreSQL then coerces each one to its column's type, which is exactly the input
//! function of that type (numeric `NaN`, timestamps `infinity`, arrays, jsonb, bytea `\x..`, uuid, enums and
//! domains all round-trip). We could not add casts anyway: pgoutput gives type OIDs, not names.
//!
//! The text must read back as it was written, so the replication connection should keep the defaults that
//! make output unambiguous (`DateStyle` ISO, `IntervalStyle` postgres, `extra_float_digits` >= 1,
//! `client_encoding` UTF8), and the applying session should use the same `IntervalStyle` and encoding.
//!
//! The returned statements carry no trailing `;`.

use super::pgoutput::{Column, Datum, Relation, Tuple};
use crate::protocol::quote::{quote_ident, quote_literal};

/// Why a change cannot be turned into SQL.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum SqlError {
    /// Nothing identifies the row an UPDATE or DELETE changed.
    #[error(
        "table \"{table}\" has no primary key or replica identity: set REPLICA IDENTITY FULL or add a primary key"
    )]
    NoIdentity {
        /// `schema.table`.
        table: String,
    },
    /// The tuple does not have one value per column of the relation.
    #[error("table \"{table}\": a change carries {got} values but the relation has {expected} columns")]
    ColumnCount {
        /// `schema.table`.
        table: String,
        /// Columns in the Relation message.
        expected: usize,
        /// Values in the tuple.
        got: usize,
    },
    /// An INSERT has an unchanged-TOAST marker, which only makes sense for an existing row.
    #[error("table \"{table}\": INSERT has no value for column \"{column}\" (unchanged TOAST marker)")]
    UnchangedToastInInsert {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// A replica identity column's value was not sent, so the row cannot be found without guessing.
    #[error(
        "table \"{table}\": the value of key column \"{column}\" was not sent (unchanged TOAST), so the row cannot be identified"
    )]
    UnchangedToastKey {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// A value arrived in binary format, which we cannot write as a literal.
    #[error(
        "table \"{table}\": column \"{column}\" arrived in binary format; start replication without the binary option"
    )]
    BinaryDatum {
        /// `schema.table`.
        table: String,
        /// The column.
        column: String,
    },
    /// An UPDATE of a relation with no published columns: there is nothing to set.
    #[error("table \"{table}\": UPDATE of a relation without published columns")]
    NoColumns {
        /// `schema.table`.
        table: String,
    },
}

/// Type OIDs whose `=` operator is missing (json, xml, point, polygon) or compares something weaker than
/// identity (box and circle compare areas, path the number of points), with their array types. A row is
/// matched on such a column by comparing text forms instead, which are exact for these types.
pub(crate) const TEXT_COMPARED_TYPES: &[u32] = &[
    114, 199, // json, json[]
    142, 143, // xml, xml[]
    600, 1017, // point, point[]
    601, 1018, // lseg, lseg[]
    602, 1019, // path, path[]
    603, 1020, // box, box[]
    604, 1027, // polygon, polygon[]
    628, 629, // line, line[]
    718, 719, // circle, circle[]
];

/// The schema pgoutput means: it sends an empty namespace for `pg_catalog`.
fn schema(rel: &Relation) -> &str {
    if rel.namespace.is_empty() {
        "pg_catalog"
    } else {
        &rel.namespace
    }
}

/// The quoted, schema-qualified name: `"ns"."name"`. Always qualified, so the replica's `search_path`
/// cannot redirect a change to another table.
pub(crate) fn qualified(rel: &Relation) -> String {
    format!("{}.{}", quote_ident(schema(rel)), quote_ident(&rel.name))
}

/// `schema.table` unquoted, for error messages.
fn display_name(rel: &Relation) -> String {
    format!("{}.{}", schema(rel), rel.name)
}

fn check_count(rel: &Relation, tuple: &Tuple) -> Result<(), SqlError> {
    if tuple.len() == rel.columns.len() {
        Ok(())
    } else {
        Err(SqlError::ColumnCount {
            table: display_name(rel),
            expected: rel.columns.len(),
            got: tuple.len(),
        })
    }
}

/// The SQL for a value: `NULL` or a literal; `None` for an unchanged TOAST value.
fn value(rel: &Relation, column: &Column, datum: &Datum) -> Result<Option<String>, SqlError> {
    match datum {
        Datum::Null => Ok(Some("NULL".to_owned())),
        Datum::Text(text) => Ok(Some(quote_literal(text.as_str()))),
        Datum::UnchangedToast => Ok(None),
        Datum::Binary(_) => Err(SqlError::BinaryDatum {
            table: display_name(rel),
            column: column.name.clone(),
        }),
    }
}

/// A condition matching `column` to `datum` (known not to be an unchanged TOAST value), NULL-safe:
/// `IS NULL` for NULL, `=` otherwise. Together that is `IS NOT DISTINCT FROM`, but unlike that form `=`
/// can use an index.
fn condition(rel: &Relation, column: &Column, datum: &Datum) -> Result<String, SqlError> {
    let name = quote_ident(&column.name);
    match datum {
        Datum::Null => Ok(format!("{name} IS NULL")),
        Datum::Text(text) if TEXT_COMPARED_TYPES.contains(&column.type_oid) => Ok(format!(
            "{name}::pg_catalog.text = {}",
            quote_literal(text.as_str())
        )),
        Datum::Text(text) => Ok(format!("{name} = {}", quote_literal(text.as_str()))),
        Datum::UnchangedToast => Err(SqlError::UnchangedToastKey {
            table: display_name(rel),
            column: column.name.clone(),
        }),
        Datum::Binary(_) => Err(SqlError::BinaryDatum {
            table: display_name(rel),
            column: column.name.clone(),
        }),
    }
}

/// How the target row is found.
enum Identity {
    /// Conditions on the replica identity columns; they match at most one row.
    Key(Vec<String>),
    /// Conditions on every sent column of a REPLICA IDENTITY FULL old row; duplicates may match.
    Full(Vec<String>),
}

/// Conditions on the key columns of `tuple`. A key value that was not sent is an error rather than a
/// dropped condition: a looser WHERE would change some other row.
fn key_identity(rel: &Relation, tuple: &Tuple) -> Result<Identity, SqlError> {
    let conditions = rel
        .columns
        .iter()
        .zip(tuple)
        .filter(|(column, _)| column.key)
        .map(|(column, datum)| condition(rel, column, datum))
        .collect::<Result<Vec<_>, _>>()?;
    if conditions.is_empty() {
        return Err(SqlError::NoIdentity {
            table: display_name(rel),
        });
    }
    Ok(Identity::Key(conditions))
}

/// Conditions on every column of a full old row except unchanged TOAST values (which the row still has,
/// but whose value we were not told).
fn full_identity(rel: &Relation, tuple: &Tuple) -> Result<Identity, SqlError> {
    let conditions = rel
        .columns
        .iter()
        .zip(tuple)
        .filter(|(_, datum)| **datum != Datum::UnchangedToast)
        .map(|(column, datum)| condition(rel, column, datum))
        .collect::<Result<Vec<_>, _>>()?;
    Ok(Identity::Full(conditions))
}

fn identity(rel: &Relation, old: Option<&Tuple>, key_only: bool, new: &Tuple) -> Result<Identity, SqlError> {
    match old {
        // Without an old tuple the key did not change, so the new row's key finds the old row.
        None => key_identity(rel, new),
        Some(old) => {
            check_count(rel, old)?;
            if key_only {
                key_identity(rel, old)
            } else {
                full_identity(rel, old)
            }
        }
    }
}

/// The WHERE clause (with its keyword) that selects the target row of `table`.
fn where_clause(table: &str, identity: &Identity) -> String {
    match identity {
        Identity::Key(conditions) => format!(" WHERE {}", conditions.join(" AND ")),
        // A table with REPLICA IDENTITY FULL may hold identical rows; the primary changed one of them, so
        // the replica must change exactly one too. ctid = (subquery) runs as a TID scan.
        Identity::Full(conditions) if conditions.is_empty() => {
            format!(" WHERE ctid = (SELECT ctid FROM {table} LIMIT 1)")
        }
        Identity::Full(conditions) => format!(
            " WHERE ctid = (SELECT ctid FROM {table} WHERE {} LIMIT 1)",
            conditions.join(" AND ")
        ),
    }
}

/// `INSERT INTO "ns"."t" ("a","b") OVERRIDING SYSTEM VALUE VALUES ('1',NULL)`.
///
/// OVERRIDING SYSTEM VALUE lets the primary's value into a `GENERATED ALWAYS AS IDENTITY` column (which
/// would otherwise be rejected) and is harmless on tables without one.
pub(crate) fn insert(rel: &Relation, new: &Tuple) -> Result<String, SqlError> {
    check_count(rel, new)?;
    let table = qualified(rel);
    if rel.columns.is_empty() {
        return Ok(format!("INSERT INTO {table} DEFAULT VALUES"));
    }
    let mut names = Vec::with_capacity(rel.columns.len());
    let mut values = Vec::with_capacity(rel.columns.len());
    for (column, datum) in rel.columns.iter().zip(new) {
        let Some(value) = value(rel, column, datum)? else {
            return Err(SqlError::UnchangedToastInInsert {
                table: display_name(rel),
                column: column.name.clone(),
            });
        };
        names.push(quote_ident(&column.name));
        values.push(value);
    }
    Ok(format!(
        "INSERT INTO {table} ({}) OVERRIDING SYSTEM VALUE VALUES ({})",
        names.join(","),
        values.join(",")
    ))
}

/// `UPDATE "ns"."t" SET "b" = 'x' WHERE "id" = '1'`, or, for a full old row,
/// `UPDATE "ns"."t" SET ... WHERE ctid = (SELECT ctid FROM "ns"."t" WHERE ... LIMIT 1)`.
///
/// The row is found by the key columns of `new` when `old` is `None` (the key did not change), by the key
/// columns of `old` when `key_only`, and by every column of a full `old` row otherwise.
///
/// SET lists the columns of `new` except unchanged TOAST values and columns known to be unchanged: key
/// columns when `old` is `None`, key columns equal in a 'K' `old`, any column equal in a full `old`. Besides
/// being shorter, that keeps an unchanged `GENERATED ALWAYS AS IDENTITY` key out of SET, where PostgreSQL
/// would reject it. When nothing is left to set, a column is set to itself, so the statement still
/// touches (and counts) the row.
pub(crate) fn update(
    rel: &Relation,
    old: Option<&Tuple>,
    key_only: bool,
    new: &Tuple,
) -> Result<String, SqlError> {
    check_count(rel, new)?;
    let identity = identity(rel, old, key_only, new)?;
    let table = qualified(rel);

    let mut assignments = Vec::with_capacity(rel.columns.len());
    for (index, (column, datum)) in rel.columns.iter().zip(new).enumerate() {
        let unchanged = match old {
            None => column.key,
            // A 'K' tuple has NULL in place of every non-key value: only its key values are real.
            Some(old) if key_only => column.key && old.get(index) == Some(datum),
            Some(old) => old.get(index) == Some(datum),
        };
        if unchanged {
            continue;
        }
        if let Some(value) = value(rel, column, datum)? {
            assignments.push(format!("{} = {value}", quote_ident(&column.name)));
        }
    }
    if assignments.is_empty() {
        // Prefer a non-key column: a key column may be an identity column that cannot be assigned.
        let column = rel
            .columns
            .iter()
            .find(|column| !column.key)
            .or_else(|| rel.columns.first())
            .ok_or_else(|| SqlError::NoColumns {
                table: display_name(rel),
            })?;
        let name = quote_ident(&column.name);
        assignments.push(format!("{name} = {name}"));
    }

    Ok(format!(
        "UPDATE {table} SET {}{}",
        assignments.join(", "),
        where_clause(&table, &identity)
    ))
}

/// `DELETE FROM "ns"."t" WHERE "id" = '1'` for a 'K' old tuple, or, for a full old row,
/// `DELETE FROM "ns"."t" WHERE ctid = (SELECT ctid FROM "ns"."t" WHERE ... LIMIT 1)`.
pub(crate) fn delete(rel: &Relation, old: &Tuple, key_only: bool) -> Result<String, SqlError> {
    check_count(rel, old)?;
    let identity = if key_only {
        key_identity(rel, old)?
    } else {
        full_identity(rel, old)?
    };
    let table = qualified(rel);
    Ok(format!("DELETE FROM {table}{}", where_clause(&table, &identity)))
}

/// `TRUNCATE "a"."t1", "b"."t2" RESTART IDENTITY CASCADE`; an empty string when `rels` is empty (pgoutput
/// never sends that, and an empty statement is a no-op in a simple-query batch).
///
/// No `ONLY`: pgoutput lists every truncated table with storage, and may list a partitioned table, on
/// which `TRUNCATE ONLY` is an error.
pub(crate) fn truncate(rels: &[&Relation], cascade: bool, restart_identity: bool) -> String {
    if rels.is_empty() {
        return String::new();
    }
    let names: Vec<String> = rels.iter().map(|rel| qualified(rel)).collect();
    let mut sql = format!("TRUNCATE {}", names.join(", "));
    if restart_identity {
        sql.push_str(" RESTART IDENTITY");
    }
    if cascade {
        sql.push_str(" CASCADE");
    }
    sql
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A relation column for tests (also the set-wise apply's).
    pub(crate) fn col(name: &str, key: bool, type_oid: u32) -> Column {
        Column {
            key,
            name: name.to_owned(),
            type_oid,
            type_modifier: -1,
        }
    }

    fn rel(namespace: &str, name: &str, columns: Vec<Column>) -> Relation {
        Relation {
            id: 1,
            namespace: namespace.to_owned(),
            name: name.to_owned(),
            replica_identity: b'd',
            columns,
        }
    }

    /// public.t (id int primary key, note text, data text)
    fn t() -> Relation {
        rel(
            "public",
            "t",
            vec![
                col("id", true, 23),
                col("note", false, 25),
                col("data", false, 25),
            ],
        )
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.into())
    }

    #[test]
    fn qualified_names() {
        assert_eq!(qualified(&t()), "\"public\".\"t\"");
        assert_eq!(
            qualified(&rel("My Schema", "we\"ird", vec![])),
            "\"My Schema\".\"we\"\"ird\""
        );
        assert_eq!(
            qualified(&rel("", "pg_thing", vec![])),
            "\"pg_catalog\".\"pg_thing\""
        );
    }

    #[test]
    fn insert_row() {
        let sql = insert(&t(), &vec![text("1"), Datum::Null, text("it's \\ here\nnow")]);
        assert_eq!(
            sql.as_deref(),
            Ok(
                "INSERT INTO \"public\".\"t\" (\"id\",\"note\",\"data\") OVERRIDING SYSTEM VALUE \
                 VALUES ('1',NULL,E'it''s \\\\ here\nnow')"
            )
        );
    }

    #[test]
    fn insert_odd_identifiers_and_special_values() {
        let r = rel(
            "Sales",
            "Order \"Lines\"",
            vec![
                col("Qty", false, 1700),
                col("at", false, 1184),
                col("tags", false, 1009),
            ],
        );
        let sql = insert(&r, &vec![text("NaN"), text("-infinity"), text("{a,\"b c\"}")]);
        assert_eq!(
            sql.as_deref(),
            Ok(
                "INSERT INTO \"Sales\".\"Order \"\"Lines\"\"\" (\"Qty\",\"at\",\"tags\") OVERRIDING SYSTEM VALUE \
                 VALUES ('NaN','-infinity','{a,\"b c\"}')"
            )
        );
    }

    #[test]
    fn insert_without_columns() {
        assert_eq!(
            insert(&rel("public", "empty", vec![]), &vec![]).as_deref(),
            Ok("INSERT INTO \"public\".\"empty\" DEFAULT VALUES")
        );
    }

    #[test]
    fn insert_errors() {
        assert_eq!(
            insert(&t(), &vec![text("1"), Datum::UnchangedToast, Datum::Null]),
            Err(SqlError::UnchangedToastInInsert {
                table: "public.t".into(),
                column: "note".into()
            })
        );
        assert_eq!(
            insert(
                &t(),
                &vec![
                    text("1"),
                    Datum::Binary(bytes::Bytes::from_static(b"x")),
                    Datum::Null
                ]
            ),
            Err(SqlError::BinaryDatum {
                table: "public.t".into(),
                column: "note".into()
            })
        );
        assert_eq!(
            insert(&t(), &vec![text("1")]),
            Err(SqlError::ColumnCount {
                table: "public.t".into(),
                expected: 3,
                got: 1
            })
        );
    }

    #[test]
    fn update_by_key_of_new_row() {
        let new = vec![text("1"), text("n'ew"), Datum::UnchangedToast];
        assert_eq!(
            update(&t(), None, false, &new).as_deref(),
            Ok("UPDATE \"public\".\"t\" SET \"note\" = 'n''ew' WHERE \"id\" = '1'")
        );
    }

    #[test]
    fn update_sets_null() {
        let new = vec![text("1"), Datum::Null, text("d")];
        assert_eq!(
            update(&t(), None, false, &new).as_deref(),
            Ok("UPDATE \"public\".\"t\" SET \"note\" = NULL, \"data\" = 'd' WHERE \"id\" = '1'")
        );
    }

    #[test]
    fn update_with_primary_key_change() {
        let old = vec![text("1"), Datum::Null, Datum::Null];
        let new = vec![text("2"), text("b"), Datum::UnchangedToast];
        assert_eq!(
            update(&t(), Some(&old), true, &new).as_deref(),
            Ok("UPDATE \"public\".\"t\" SET \"id\" = '2', \"note\" = 'b' WHERE \"id\" = '1'")
        );
    }

    #[test]
    fn update_key_only_sets_non_key_nulls() {
        // The NULLs of a 'K' tuple are placeholders, so a NULL in the new row must still be set.
        let r = rel(
            "s",
            "c",
            vec![col("a", true, 23), col("b", true, 23), col("v", false, 25)],
        );
        let old = vec![text("1"), text("1"), Datum::Null];
        let new = vec![text("1"), text("2"), Datum::Null];
        assert_eq!(
            update(&r, Some(&old), true, &new).as_deref(),
            Ok("UPDATE \"s\".\"c\" SET \"b\" = '2', \"v\" = NULL WHERE \"a\" = '1' AND \"b\" = '1'")
        );
    }

    #[test]
    fn update_full_identity() {
        let mut r = rel(
            "public",
            "Log Lines",
            vec![
                col("at", true, 1184),
                col("msg", true, 25),
                col("doc", true, 114),
                col("big", true, 25),
            ],
        );
        r.replica_identity = b'f';
        let old = vec![
            text("2024-01-01 00:00:00+00"),
            Datum::Null,
            text("{\"a\": 1}"),
            Datum::UnchangedToast,
        ];
        let new = vec![
            text("2024-01-01 00:00:00+00"),
            text("hi"),
            text("{\"a\": 1}"),
            Datum::UnchangedToast,
        ];
        let table = "\"public\".\"Log Lines\"";
        assert_eq!(
            update(&r, Some(&old), false, &new),
            Ok(format!(
                "UPDATE {table} SET \"msg\" = 'hi' WHERE ctid = (SELECT ctid FROM {table} WHERE \
                 \"at\" = '2024-01-01 00:00:00+00' AND \"msg\" IS NULL AND \
                 \"doc\"::pg_catalog.text = '{{\"a\": 1}}' LIMIT 1)"
            ))
        );
    }

    #[test]
    fn update_that_changes_nothing_still_touches_the_row() {
        let new = vec![text("1"), Datum::UnchangedToast, Datum::UnchangedToast];
        assert_eq!(
            update(&t(), None, false, &new).as_deref(),
            Ok("UPDATE \"public\".\"t\" SET \"note\" = \"note\" WHERE \"id\" = '1'")
        );
        let keys_only = rel("public", "k", vec![col("id", true, 23)]);
        assert_eq!(
            update(&keys_only, None, false, &vec![text("5")]).as_deref(),
            Ok("UPDATE \"public\".\"k\" SET \"id\" = \"id\" WHERE \"id\" = '5'")
        );
    }

    #[test]
    fn update_errors() {
        let no_key = rel("public", "t", vec![col("a", false, 23)]);
        let err = update(&no_key, None, false, &vec![text("1")]).expect_err("no identity");
        assert_eq!(
            err,
            SqlError::NoIdentity {
                table: "public.t".into()
            }
        );
        assert_eq!(
            err.to_string(),
            "table \"public.t\" has no primary key or replica identity: set REPLICA IDENTITY FULL or add a primary key"
        );
        // A key column whose value was not sent: guessing the row is not an option.
        assert_eq!(
            update(
                &t(),
                None,
                false,
                &vec![Datum::UnchangedToast, text("x"), Datum::Null]
            ),
            Err(SqlError::UnchangedToastKey {
                table: "public.t".into(),
                column: "id".into()
            })
        );
        assert_eq!(
            update(
                &t(),
                Some(&vec![text("1")]),
                true,
                &vec![text("1"), Datum::Null, Datum::Null]
            ),
            Err(SqlError::ColumnCount {
                table: "public.t".into(),
                expected: 3,
                got: 1
            })
        );
        assert_eq!(
            update(
                &t(),
                None,
                false,
                &vec![text("1"), Datum::Binary(bytes::Bytes::new()), Datum::Null]
            ),
            Err(SqlError::BinaryDatum {
                table: "public.t".into(),
                column: "note".into()
            })
        );
    }

    #[test]
    fn delete_by_key() {
        let r = rel(
            "app",
            "Users",
            vec![
                col("Tenant", true, 23),
                col("we\"ird id", true, 25),
                col("x", false, 25),
            ],
        );
        let old = vec![text("7"), text("o'k"), Datum::Null];
        assert_eq!(
            delete(&r, &old, true).as_deref(),
            Ok("DELETE FROM \"app\".\"Users\" WHERE \"Tenant\" = '7' AND \"we\"\"ird id\" = 'o''k'")
        );
    }

    #[test]
    fn delete_full_row_touches_one_duplicate() {
        let r = rel(
            "public",
            "t",
            vec![col("a", false, 23), col("b", false, 25), col("p", false, 600)],
        );
        let old = vec![text("1"), text("back\\slash"), text("(1,2)")];
        assert_eq!(
            delete(&r, &old, false).as_deref(),
            Ok(
                "DELETE FROM \"public\".\"t\" WHERE ctid = (SELECT ctid FROM \"public\".\"t\" WHERE \"a\" = '1' \
                AND \"b\" = E'back\\\\slash' AND \"p\"::pg_catalog.text = '(1,2)' LIMIT 1)"
            )
        );
        // A row whose every value is NULL is still one row.
        let nulls = vec![Datum::Null, Datum::Null, Datum::Null];
        assert_eq!(
            delete(&r, &nulls, false).as_deref(),
            Ok(
                "DELETE FROM \"public\".\"t\" WHERE ctid = (SELECT ctid FROM \"public\".\"t\" WHERE \"a\" IS NULL \
                AND \"b\" IS NULL AND \"p\" IS NULL LIMIT 1)"
            )
        );
        let no_columns = rel("public", "z", vec![]);
        assert_eq!(
            delete(&no_columns, &vec![], false).as_deref(),
            Ok("DELETE FROM \"public\".\"z\" WHERE ctid = (SELECT ctid FROM \"public\".\"z\" LIMIT 1)")
        );
    }

    #[test]
    fn delete_errors() {
        let no_key = rel("public", "t", vec![col("a", false, 23)]);
        assert_eq!(
            delete(&no_key, &vec![Datum::Null], true),
            Err(SqlError::NoIdentity {
                table: "public.t".into()
            })
        );
        assert_eq!(
            delete(&t(), &vec![], true),
            Err(SqlError::ColumnCount {
                table: "public.t".into(),
                expected: 3,
                got: 0
            })
        );
    }

    #[test]
    fn truncate_statements() {
        let a = t();
        let b = rel("Other", "x\"y", vec![]);
        assert_eq!(truncate(&[&a], false, false), "TRUNCATE \"public\".\"t\"");
        assert_eq!(
            truncate(&[&a, &b], true, true),
            "TRUNCATE \"public\".\"t\", \"Other\".\"x\"\"y\" RESTART IDENTITY CASCADE"
        );
        assert_eq!(truncate(&[&a], true, false), "TRUNCATE \"public\".\"t\" CASCADE");
        assert_eq!(
            truncate(&[&a], false, true),
            "TRUNCATE \"public\".\"t\" RESTART IDENTITY"
        );
        assert_eq!(truncate(&[], true, true), "");
    }
}
