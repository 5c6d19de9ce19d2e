//! Set-wise apply of bulk changes. A run of row changes of one kind on one table, all of the same shape (the
//! same columns sent, the key changed or not), is collected as a [`BulkSet`]. A set with at least
//! [`MIN_ROWS`] rows is applied with a few statements instead of one per row: an INSERT set is copied
//! straight into the target; the rows of an UPDATE or DELETE set go by COPY into a temporary staging table made
//! from the target's columns, and one `UPDATE ... FROM` or `DELETE ... USING` joins it to the target on the
//! replica identity. A smaller set is applied row by row (the SQL of [`super::super::sql`]), as is every
//! change this module does not take.
//!
//! Order: a set is flushed before any change that does not join it, so changes are applied in stream order
//! except within a set, where it does not matter: a set never touches one target row twice (an UPDATE whose
//! old or new key the set has already seen starts a new set), and inserts or deletes of distinct rows commute.
//!
//! What stays row-wise: tables whose identity is not a key (REPLICA IDENTITY FULL or NOTHING), keys of types
//! compared by text, UPDATEs with nothing to set but an unchanged key, and rows whose shape differs from the
//! run's (an unchanged TOAST value in another column starts a new set, and a short set is row-wise).
//!
//! This module is pure: it builds the statements and the COPY data; `sink` runs them.

use std::collections::HashSet;
use std::hash::{BuildHasherDefault, Hasher};

use super::super::pgoutput::{Datum, Relation, Tuple};
use super::super::sql::{self, SqlError, TEXT_COMPARED_TYPES, qualified};
use crate::protocol::quote::quote_ident;

/// Sets smaller than this are applied row by row: below it the staging table costs more than it saves.
pub(crate) const MIN_ROWS: usize = 1000;
/// A set is flushed when it holds this many rows, so that memory stays bounded in a huge transaction: each
/// replica's task holds the set it builds and the queued ones (`sink::PIPELINE_STEPS`). At 50,000 rows a
/// bulk change to two replicas took pgfleet to 250 MB; at 10,000, 62-71 MB, with the same apply times.
pub(crate) const MAX_ROWS: usize = 10_000;
/// Names of the staging columns holding an UPDATE's old key values (followed by the column's index).
const OLD_PREFIX: &str = "pgfleet_old_";

/// The kind of a row change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// INSERT.
    Insert,
    /// UPDATE.
    Update,
    /// DELETE.
    Delete,
}

/// One row change as the stream gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Change {
    /// A new row.
    Insert(Tuple),
    /// A changed row: the old key when it changed ('K' tuple), and the new row.
    Update {
        /// Old identity; `None` when the key did not change.
        old: Option<Tuple>,
        /// `old` is a 'K' tuple.
        key_only: bool,
        /// New row.
        new: Tuple,
    },
    /// A deleted row's identity.
    Delete {
        /// Old identity.
        old: Tuple,
        /// `old` is a 'K' tuple.
        key_only: bool,
    },
}

impl Change {
    /// Its row-wise statement.
    pub(crate) fn row_sql(&self, rel: &Relation) -> Result<String, SqlError> {
        match self {
            Change::Insert(new) => sql::insert(rel, new),
            Change::Update { old, key_only, new } => sql::update(rel, old.as_ref(), *key_only, new),
            Change::Delete { old, key_only } => sql::delete(rel, old, *key_only),
        }
    }
}

/// What every row of a set has in common.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Shape {
    /// The table (its OID on the primary).
    pub relation: u32,
    /// The kind of change.
    pub kind: Kind,
    /// Indexes of the relation's columns whose values are staged (the new row's, or the key's for DELETE).
    pub columns: Vec<usize>,
    /// UPDATE rows carry their old key values, staged before `columns`.
    pub old_key: bool,
}

/// The indexes of the key columns, if the rows of `rel` can be matched set-wise by them.
fn key_columns(rel: &Relation) -> Option<Vec<usize>> {
    if !matches!(rel.replica_identity, b'd' | b'i') {
        return None;
    }
    let keys: Vec<usize> = (0..rel.columns.len()).filter(|&i| rel.columns[i].key).collect();
    let comparable = keys
        .iter()
        .all(|&i| !TEXT_COMPARED_TYPES.contains(&rel.columns[i].type_oid));
    let clash = rel.columns.iter().any(|c| c.name.starts_with(OLD_PREFIX));
    (!keys.is_empty() && comparable && !clash).then_some(keys)
}

fn sent(d: &Datum) -> bool {
    matches!(d, Datum::Null | Datum::Text(_))
}

/// The shape of a change when it can be applied set-wise; `None` sends it row by row.
pub(crate) fn shape(rel: &Relation, change: &Change) -> Option<Shape> {
    let n = rel.columns.len();
    match change {
        Change::Insert(new) => (n > 0 && new.len() == n && new.iter().all(sent)).then(|| Shape {
            relation: rel.id,
            kind: Kind::Insert,
            columns: (0..n).collect(),
            old_key: false,
        }),
        Change::Update { old, key_only, new } => {
            let keys = key_columns(rel)?;
            if new.len() != n || keys.iter().any(|&k| !sent(&new[k])) {
                return None;
            }
            if let Some(old) = old
                && (!key_only || old.len() != n || keys.iter().any(|&k| !sent(&old[k])))
            {
                return None;
            }
            // What is set: the sent non-key columns (unchanged TOAST values are left out: the target keeps
            // what it has) and the key columns that changed. An unchanged key column stays out of SET, where a
            // GENERATED ALWAYS identity column would be refused.
            let columns: Vec<usize> = (0..n)
                .filter(|&i| {
                    sent(&new[i]) && (!rel.columns[i].key || old.as_ref().is_some_and(|o| o[i] != new[i]))
                })
                .collect();
            if columns.is_empty() {
                return None;
            }
            let columns = if old.is_some() {
                columns
            } else {
                // The key finds the row; it is staged but not set.
                keys.iter().copied().chain(columns).collect()
            };
            Some(Shape {
                relation: rel.id,
                kind: Kind::Update,
                columns,
                old_key: old.is_some(),
            })
        }
        Change::Delete { old, key_only } => {
            let keys = key_columns(rel)?;
            (*key_only && old.len() == n && keys.iter().all(|&k| sent(&old[k]))).then_some(Shape {
                relation: rel.id,
                kind: Kind::Delete,
                columns: keys,
                old_key: false,
            })
        }
    }
}

/// A run of changes of one shape on one table, in stream order.
#[derive(Debug)]
pub(crate) struct BulkSet {
    /// The table as described when the run started.
    pub rel: Relation,
    /// What the rows have in common.
    pub shape: Shape,
    /// The changes.
    pub changes: Vec<Change>,
    /// Keys (old and new) the UPDATEs of the set touch, as hashes ([`key_hash`]): a row whose key shares a
    /// hash with another's only starts a new set, which is always correct, and a set of a million rows
    /// keeps no copy of their keys.
    keys: HashSet<u64, BuildHasherDefault<Hashed>>,
}

/// A hash of a key's values (each column's NULL or text, with a separator), for telling rows apart.
/// FNV-1a: the keys are short, and a set looks up every row's.
fn key_hash(rel: &Relation, tuple: &Tuple) -> u64 {
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    let mut eat = |byte: u8| {
        hash ^= u64::from(byte);
        hash = hash.wrapping_mul(0x0100_0000_01b3);
    };
    for (column, datum) in rel.columns.iter().zip(tuple) {
        if column.key {
            match datum {
                Datum::Text(t) => {
                    eat(b't');
                    t.as_bytes().iter().for_each(|&b| eat(b));
                }
                _ => eat(b'n'),
            }
            // Text values hold no NUL: a separator no value can end with.
            eat(0);
        }
    }
    hash
}

/// The hasher of a set of [`key_hash`]es: they are hashes already, and only need their bits mixed so that
/// the table's bucket and tag bits all depend on every input byte.
#[derive(Default)]
struct Hashed(u64);

impl Hasher for Hashed {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(self.0 ^ u64::from(b));
        }
    }

    fn write_u64(&mut self, value: u64) {
        // The finalizer of MurmurHash3's 64-bit variant.
        let mut v = value;
        v ^= v >> 33;
        v = v.wrapping_mul(0xff51_afd7_ed55_8ccd);
        v ^= v >> 33;
        v = v.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        v ^= v >> 33;
        self.0 = v;
    }
}

impl BulkSet {
    /// A set starting with `change`, of shape `shape`.
    pub(crate) fn new(rel: Relation, shape: Shape, change: Change) -> Self {
        let mut set = BulkSet {
            rel,
            shape,
            changes: Vec::new(),
            keys: HashSet::default(),
        };
        let touched = set.touched(&change);
        set.add(change, touched);
        set
    }

    /// Adds `change`, of shape `shape`, if it may join the set: same shape, room left, and for an UPDATE a
    /// row the set has not touched yet; otherwise gives it back. Each key is hashed once per row.
    pub(crate) fn try_push(&mut self, shape: &Shape, change: Change) -> Result<(), Change> {
        if *shape != self.shape || self.changes.len() >= MAX_ROWS {
            return Err(change);
        }
        let touched = self.touched(&change);
        if self.has_touched(touched) {
            return Err(change);
        }
        self.add(change, touched);
        Ok(())
    }

    /// [`BulkSet::try_push`]'s answer, without adding the change.
    #[cfg(test)]
    pub(crate) fn accepts(&self, shape: &Shape, change: &Change) -> bool {
        *shape == self.shape && self.changes.len() < MAX_ROWS && !self.has_touched(self.touched(change))
    }

    /// Whether the set has touched one of the keys [`BulkSet::touched`] gives.
    fn has_touched(&self, touched: Option<(u64, Option<u64>)>) -> bool {
        touched
            .is_some_and(|(new, old)| self.keys.contains(&new) || old.is_some_and(|o| self.keys.contains(&o)))
    }

    /// The keys an UPDATE touches, as [`key_hash`]es: its new key's and, when the key changed, its old key's.
    fn touched(&self, change: &Change) -> Option<(u64, Option<u64>)> {
        match change {
            Change::Update { old, new, .. } => Some((
                key_hash(&self.rel, new),
                old.as_ref().map(|o| key_hash(&self.rel, o)),
            )),
            _ => None,
        }
    }

    fn add(&mut self, change: Change, touched: Option<(u64, Option<u64>)>) {
        if let Some((new, old)) = touched {
            self.keys.insert(new);
            if let Some(old) = old {
                self.keys.insert(old);
            }
        }
        self.changes.push(change);
    }

    /// Rows in the set.
    pub(crate) fn len(&self) -> usize {
        self.changes.len()
    }

    /// Whether the set is big enough to be applied set-wise.
    pub(crate) fn is_bulk(&self) -> bool {
        self.changes.len() >= MIN_ROWS
    }

    /// The row-wise statements, joined with `;` and ending with one.
    pub(crate) fn row_sql(&self) -> Result<String, SqlError> {
        let mut out = String::new();
        for change in &self.changes {
            out.push_str(&change.row_sql(&self.rel)?);
            out.push_str(";\n");
        }
        Ok(out)
    }

    /// The statement that creates the empty staging table `stage` (a plain name, made in `pg_temp`) with
    /// the staged columns' types; none for INSERT, whose rows are copied straight into the target.
    pub(crate) fn create_stage(&self, stage: &str) -> Option<String> {
        if self.shape.kind == Kind::Insert {
            return None;
        }
        let mut columns = Vec::new();
        if self.shape.old_key {
            for &k in &self.key_indexes() {
                let name = quote_ident(&self.rel.columns[k].name);
                columns.push(format!("{name} AS {}", quote_ident(&format!("{OLD_PREFIX}{k}"))));
            }
        }
        for &i in &self.shape.columns {
            columns.push(quote_ident(&self.rel.columns[i].name));
        }
        Some(format!(
            "CREATE TEMPORARY TABLE {stage} ON COMMIT DROP AS SELECT {} FROM {} WITH NO DATA",
            columns.join(", "),
            qualified(&self.rel)
        ))
    }

    /// `COPY pg_temp.<stage> FROM STDIN`, or for INSERT `COPY "ns"."t" (columns) FROM STDIN`: COPY writes the
    /// given values into identity columns as `OVERRIDING SYSTEM VALUE` would, and with
    /// `session_replication_role = replica` fires no triggers, as the row-wise INSERT.
    pub(crate) fn copy_statement(&self, stage: &str) -> String {
        if self.shape.kind == Kind::Insert {
            let cols: Vec<String> = self
                .shape
                .columns
                .iter()
                .map(|&i| quote_ident(&self.rel.columns[i].name))
                .collect();
            return format!("COPY {} ({}) FROM STDIN", qualified(&self.rel), cols.join(", "));
        }
        format!("COPY pg_temp.{stage} FROM STDIN")
    }

    fn key_indexes(&self) -> Vec<usize> {
        (0..self.rel.columns.len())
            .filter(|&i| self.rel.columns[i].key)
            .collect()
    }

    /// The rows in COPY text format, in the staging table's column order.
    pub(crate) fn copy_data(&self) -> Vec<u8> {
        let keys = self.key_indexes();
        let mut out = Vec::with_capacity(self.changes.len() * 64);
        for change in &self.changes {
            let (old, row) = match change {
                Change::Insert(new) => (None, new),
                Change::Update { old, new, .. } => (old.as_ref(), new),
                Change::Delete { old, .. } => (None, old),
            };
            let mut first = true;
            let mut field = |d: &Datum, out: &mut Vec<u8>| {
                if !first {
                    out.push(b'\t');
                }
                first = false;
                copy_field(d, out);
            };
            if self.shape.old_key
                && let Some(old) = old
            {
                for &k in &keys {
                    field(&old[k], &mut out);
                }
            }
            for &i in &self.shape.columns {
                field(&row[i], &mut out);
            }
            out.push(b'\n');
        }
        out
    }

    /// The statement that applies the staged rows to the target, with the planner held to index lookups:
    /// a staging table has no statistics, and against a large target the planner picks a merge join that
    /// walks the key index from its start for every set (or a hash join over the whole table), which makes
    /// a large transaction's sets quadratic; probing the key index once per staged row costs the same for
    /// every set. JIT is off because these plans compile in more time than they run. The settings go back
    /// to what they were after the statement (and with the savepoint, should it fail). None for INSERT.
    pub(crate) fn apply_statement(&self, stage: &str) -> Option<String> {
        let table = qualified(&self.rel);
        let name = |i: usize| quote_ident(&self.rel.columns[i].name);
        let keys = self.key_indexes();
        let join = |old: bool| {
            keys.iter()
                .map(|&k| {
                    let staged = if old {
                        quote_ident(&format!("{OLD_PREFIX}{k}"))
                    } else {
                        name(k)
                    };
                    format!("tgt.{} = stg.{staged}", name(k))
                })
                .collect::<Vec<_>>()
                .join(" AND ")
        };
        let statement = match self.shape.kind {
            Kind::Insert => return None,
            Kind::Update => {
                let set: Vec<String> = self
                    .shape
                    .columns
                    .iter()
                    .filter(|&&i| self.shape.old_key || !self.rel.columns[i].key)
                    .map(|&i| format!("{} = stg.{}", name(i), name(i)))
                    .collect();
                format!(
                    "UPDATE {table} AS tgt SET {} FROM pg_temp.{stage} AS stg WHERE {}",
                    set.join(", "),
                    join(self.shape.old_key)
                )
            }
            Kind::Delete => format!(
                "DELETE FROM {table} AS tgt USING pg_temp.{stage} AS stg WHERE {}",
                join(false)
            ),
        };
        Some(format!(
            "SET enable_mergejoin = off; SET enable_hashjoin = off; SET jit = off; {statement}; \
             RESET enable_mergejoin; RESET enable_hashjoin; RESET jit"
        ))
    }
}

/// One value in COPY text format: `\N` for NULL, backslash escapes for the characters COPY gives a meaning.
fn copy_field(d: &Datum, out: &mut Vec<u8>) {
    match d {
        Datum::Text(t) => {
            let bytes = t.as_bytes();
            // Most values need no escape: copied whole, after one look at each byte.
            if !bytes.iter().any(|b| matches!(b, b'\\' | b'\n' | b'\r' | b'\t')) {
                out.extend_from_slice(bytes);
                return;
            }
            for &b in bytes {
                match b {
                    b'\\' => out.extend_from_slice(b"\\\\"),
                    b'\n' => out.extend_from_slice(b"\\n"),
                    b'\r' => out.extend_from_slice(b"\\r"),
                    b'\t' => out.extend_from_slice(b"\\t"),
                    _ => out.push(b),
                }
            }
        }
        // Shapes admit only sent values; anything else is staged as NULL, never as a guess.
        _ => out.extend_from_slice(b"\\N"),
    }
}

#[cfg(test)]
mod tests;
