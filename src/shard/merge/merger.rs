//! The sans-IO merger: fed each shard's RowDescription and DataRows (message bodies, without the type
//! byte and length) as they arrive, it returns the frames to send the client (complete messages ready to
//! write) and, from [`Merger::finish`], the rest of the result and its CommandComplete `SELECT n`.
//!
//! A row union without ORDER BY streams: each shard row is sent as it arrives (OFFSET skips the first rows,
//! LIMIT stops the output). Sorted, de-duplicated and aggregated results are held until every shard is done:
//! the shards already cut a sorted result at LIMIT + OFFSET rows, so that holds at most that many rows per
//! shard; an aggregate holds one row per group.

use std::cell::RefCell;
use std::cmp::Ordering;
use std::collections::HashMap;

use bytes::{BufMut, Bytes, BytesMut};

use super::agg::{Acc, SumType, avg_float4};
use super::frames::{
    Field, Row, command_complete, encode_field, encode_row, parse_data_row, parse_row_description,
};
use super::value::{self, Kind, oid};
use super::{Merge, Mode, Slot, SortColumn, SortKey};
use crate::protocol::frame::build;
use crate::protocol::messages::ProxyError;

/// Merges the shards' results of one [`super::MergePlan`].
pub struct Merger {
    merge: Merge,
    shards: usize,
    /// The database's collation (`pg_database.datcollate`), when known.
    collation: Option<String>,
    fields: Option<Vec<Field>>,
    described: Vec<bool>,
    /// Per sort key, the kind its values compare as.
    sort_kinds: Vec<Kind>,
    /// Rows held for sorting or de-duplication.
    held: Vec<Row>,
    seen: HashMap<Vec<Option<Vec<u8>>>, ()>,
    /// Aggregation: group key -> index in `groups`.
    group_index: HashMap<Vec<Option<Vec<u8>>>, usize>,
    groups: Vec<Vec<Acc>>,
    /// (group, shard) pairs seen: one shard returns one row per group, or something in the select list
    /// (a set-returning function) multiplies rows, which combining would hide.
    contributed: std::collections::HashSet<(usize, usize)>,
    template: Vec<Acc>,
    key_kinds: Vec<(usize, Kind)>,
    /// Streaming union: rows skipped for OFFSET, rows sent.
    skipped: u64,
    sent: u64,
}

fn internal(message: String) -> ProxyError {
    ProxyError::error("XX000", message)
}

impl Merger {
    /// A merger for `merge` over `shards` shards. Until [`Merger::with_collation`] says the database's
    /// collation is "C" or "POSIX", ordering text is refused rather than risked.
    pub fn new(merge: &Merge, shards: usize) -> Merger {
        Merger {
            merge: merge.clone(),
            shards,
            collation: None,
            fields: None,
            described: vec![false; shards],
            sort_kinds: Vec::new(),
            held: Vec::new(),
            seen: HashMap::new(),
            group_index: HashMap::new(),
            groups: Vec::new(),
            contributed: std::collections::HashSet::new(),
            template: Vec::new(),
            key_kinds: Vec::new(),
            skipped: 0,
            sent: 0,
        }
    }

    /// The database's collation as `pg_database.datcollate` names it: text is ordered bytewise, which is
    /// PostgreSQL's order only under "C" and "POSIX".
    pub fn with_collation(mut self, datcollate: &str) -> Merger {
        self.collation = Some(datcollate.to_owned());
        self
    }

    fn bytewise_text(&self) -> bool {
        matches!(self.collation.as_deref(), Some("C" | "POSIX"))
    }

    fn width(&self) -> usize {
        self.fields.as_ref().map_or(0, Vec::len)
    }

    /// A shard's RowDescription body. The first one also yields the client's RowDescription.
    pub fn row_description(&mut self, shard: usize, body: &[u8]) -> Result<Vec<Bytes>, ProxyError> {
        let fields = parse_row_description(body)
            .ok_or_else(|| internal(format!("shard {shard} sent a malformed RowDescription")))?;
        if shard >= self.shards {
            return Err(internal(format!(
                "shard {shard} is not one of the {} shards",
                self.shards
            )));
        }
        self.described[shard] = true;
        if let Some(first) = &self.fields {
            let same = first.len() == fields.len()
                && first.iter().zip(&fields).all(|(a, b)| a.type_oid == b.type_oid);
            if !same {
                return Err(ProxyError::error(
                    "0A000",
                    format!("shard {shard} returned columns of other types than shard 0: the table definitions differ between shards"),
                ).with_hint("make the sharded tables' definitions identical on every shard"));
            }
            return Ok(Vec::new());
        }
        if let Some(f) = fields.iter().find(|f| f.format != 0) {
            return Err(ProxyError::error(
                "0A000",
                format!("binary results (column \"{}\") are not merged across shards: pgfleet merges the text format", f.name),
            )
            .with_hint("request text results for queries across shards, or add a WHERE on the shard key so the query runs on one shard"));
        }
        self.fields = Some(fields);
        self.prepare()?;
        Ok(vec![self.client_row_description()])
    }

    /// Checks the column types against what the merge does with them, and sets up its state.
    fn prepare(&mut self) -> Result<(), ProxyError> {
        let fields = self.fields.clone().unwrap_or_default();
        let width = fields.len();
        let hidden = match &self.merge.mode {
            Mode::Rows { hidden } => *hidden,
            _ => 0,
        };
        if width < hidden {
            return Err(internal(
                "the shards returned fewer columns than the merge added".into(),
            ));
        }
        for key in self.merge.order.clone() {
            let at = column_at(&key, width);
            let f = fields
                .get(at)
                .ok_or_else(|| internal("a sort column is missing".into()))?;
            let kind = self.ordered_kind(f, "ORDER BY", key.c_collation)?;
            self.sort_kinds.push(kind);
        }
        match &self.merge.mode {
            Mode::Rows { .. } => {}
            Mode::Distinct => {
                for f in &fields {
                    equality_kind(f, "SELECT DISTINCT")?;
                }
            }
            Mode::Aggregate(agg) => {
                let agg = agg.clone();
                for (i, slot) in agg.slots.iter().enumerate() {
                    let f = fields
                        .get(i)
                        .ok_or_else(|| internal("an aggregate column is missing".into()))?;
                    let acc = match slot {
                        Slot::Key => {
                            if agg.grouped {
                                self.key_kinds.push((i, equality_kind(f, "GROUP BY")?));
                            }
                            Acc::First(None)
                        }
                        Slot::Any => Acc::First(None),
                        Slot::Count => Acc::Count(0),
                        Slot::Sum => Acc::Sum(sum_type(f, "sum")?, None),
                        Slot::Min => {
                            Acc::Extreme(self.ordered_kind(f, "min()", false)?, Ordering::Less, None)
                        }
                        Slot::Max => {
                            Acc::Extreme(self.ordered_kind(f, "max()", false)?, Ordering::Greater, None)
                        }
                        Slot::Avg { .. } => {
                            let ty = sum_type(f, "avg")?;
                            if ty == SumType::Float4 {
                                return Err(avg_float4());
                            }
                            Acc::Avg(ty, None, 0)
                        }
                    };
                    self.template.push(acc);
                }
            }
        }
        Ok(())
    }

    /// The kind of a column that is ordered: refused for types not compared here, and for text when the
    /// database's collation does not order bytewise.
    fn ordered_kind(&self, f: &Field, what: &str, c_collation: bool) -> Result<Kind, ProxyError> {
        let kind = Kind::of(f.type_oid).ok_or_else(|| {
            ProxyError::error(
                "0A000",
                format!("{what} on the column \"{}\" (type oid {}) is not supported across shards: pgfleet compares integers, floats, numeric, text, bool, uuid, date and timestamps", f.name, f.type_oid),
            )
            .with_hint("order by a column of one of those types, or add a WHERE on the shard key so the query runs on one shard")
        })?;
        if kind.collated() && !c_collation && !self.bytewise_text() {
            let collation = self.collation.as_deref().unwrap_or("unknown to pgfleet");
            return Err(ProxyError::error(
                "0A000",
                format!("{what} on the text column \"{}\" is not supported across shards under the database collation \"{collation}\": pgfleet merges text in byte order, PostgreSQL's order only under the \"C\" collation", f.name),
            )
            .with_hint("write ORDER BY column COLLATE \"C\", or add a WHERE on the shard key so the query runs on one shard"));
        }
        Ok(kind)
    }

    fn client_row_description(&self) -> Bytes {
        let fields = self.fields.as_deref().unwrap_or_default();
        let (count, overrides): (usize, Vec<Option<Vec<u8>>>) = match &self.merge.mode {
            Mode::Rows { hidden } => (fields.len() - hidden, vec![None; fields.len()]),
            Mode::Distinct => (fields.len(), vec![None; fields.len()]),
            Mode::Aggregate(agg) => (
                agg.visible,
                agg.slots
                    .iter()
                    .zip(fields)
                    .map(|(slot, f)| match slot {
                        // avg(int*) and avg(numeric) are numeric; avg(float8) stays float8.
                        Slot::Avg { .. } if f.type_oid != oid::FLOAT8 => {
                            Some(encode_field(&f.name, oid::NUMERIC, -1, -1))
                        }
                        _ => None,
                    })
                    .collect(),
            ),
        };
        let mut body = BytesMut::new();
        body.put_i16(count as i16);
        for (f, o) in fields.iter().zip(overrides).take(count) {
            body.put_slice(o.as_deref().unwrap_or(&f.raw));
        }
        build(b'T', &body)
    }

    /// A shard's DataRow body; returns the frames to send now (rows of a streaming union).
    pub fn data_row(&mut self, shard: usize, body: &[u8]) -> Result<Vec<Bytes>, ProxyError> {
        if !self.described.get(shard).copied().unwrap_or(false) {
            return Err(internal(format!(
                "shard {shard} sent a DataRow before its RowDescription"
            )));
        }
        let row = parse_data_row(body, self.width())
            .ok_or_else(|| internal(format!("shard {shard} sent a malformed DataRow")))?;
        match &self.merge.mode {
            Mode::Rows { hidden } if self.merge.order.is_empty() => {
                if self.skipped < self.merge.offset {
                    self.skipped += 1;
                    return Ok(Vec::new());
                }
                if self.merge.limit.is_some_and(|n| self.sent >= n) {
                    return Ok(Vec::new());
                }
                self.sent += 1;
                let keep = row.len() - hidden;
                Ok(vec![encode_row(&row[..keep])])
            }
            Mode::Rows { .. } => self.hold_sorted(row),
            Mode::Distinct => {
                let key = row
                    .iter()
                    .zip(self.fields.as_deref().unwrap_or_default())
                    .map(|(v, f)| match v {
                        None => Ok(None),
                        Some(v) => {
                            let kind = Kind::of(f.type_oid).unwrap_or(Kind::Bytes);
                            value::equality_key(kind, v).map(Some)
                        }
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|_| unreadable_value())?;
                if self.seen.insert(key, ()).is_none() {
                    self.held.push(row);
                }
                Ok(Vec::new())
            }
            Mode::Aggregate(agg) => {
                let mut key = Vec::with_capacity(self.key_kinds.len());
                for (i, kind) in &self.key_kinds {
                    key.push(match &row[*i] {
                        None => None,
                        Some(v) => Some(value::equality_key(*kind, v).map_err(|_| unreadable_value())?),
                    });
                }
                let at = match self.group_index.get(&key) {
                    Some(&at) => at,
                    None => {
                        self.groups.push(self.template.clone());
                        self.group_index.insert(key, self.groups.len() - 1);
                        self.groups.len() - 1
                    }
                };
                if !self.contributed.insert((at, shard)) {
                    return Err(ProxyError::error(
                        "0A000",
                        "a set-returning function beside aggregates is not supported across shards: a shard returned two rows for one group",
                    )
                    .with_hint("move the set-returning function to FROM, or add a WHERE on the shard key so the query runs on one shard"));
                }
                for (i, (acc, slot)) in self.groups[at].iter_mut().zip(&agg.slots).enumerate() {
                    let count = match slot {
                        Slot::Avg { count_column } => row[*count_column].as_ref(),
                        _ => None,
                    };
                    acc.add(row[i].as_ref(), count)?;
                }
                Ok(Vec::new())
            }
        }
    }

    /// Holds a row of a sorted union. Keeps at most about LIMIT + OFFSET rows whatever the shards send:
    /// sorts and cuts when twice that are held.
    fn hold_sorted(&mut self, row: Row) -> Result<Vec<Bytes>, ProxyError> {
        self.held.push(row);
        if let Some(n) = self.merge.limit {
            let keep = usize::try_from(n.saturating_add(self.merge.offset)).unwrap_or(usize::MAX);
            if self.held.len() > keep.saturating_mul(2).max(1024) {
                let held = std::mem::take(&mut self.held);
                let mut rows = self.sorted(held)?;
                rows.truncate(keep);
                self.held = rows;
            }
        }
        Ok(Vec::new())
    }

    /// After every shard's CommandComplete: the remaining rows and the CommandComplete `SELECT n`.
    pub fn finish(mut self) -> Result<Vec<Bytes>, ProxyError> {
        if let Some(shard) = self.described.iter().position(|d| !d) {
            return Err(internal(format!("shard {shard} sent no RowDescription")));
        }
        let mut out = Vec::new();
        let (rows, keep) = match &self.merge.mode {
            Mode::Rows { hidden } if self.merge.order.is_empty() => {
                let _ = hidden;
                out.push(command_complete(self.sent));
                return Ok(out);
            }
            Mode::Rows { hidden } => (std::mem::take(&mut self.held), self.width() - hidden),
            Mode::Distinct => (std::mem::take(&mut self.held), self.width()),
            Mode::Aggregate(agg) => {
                if self.groups.is_empty() && !agg.grouped {
                    self.groups.push(self.template.clone());
                }
                let mut rows = Vec::with_capacity(self.groups.len());
                for g in &self.groups {
                    rows.push(g.iter().map(Acc::value).collect::<Result<Row, _>>()?);
                }
                (rows, agg.visible)
            }
        };
        let rows = self.sorted(rows)?;
        let limit = self.merge.limit.unwrap_or(u64::MAX);
        let mut n = 0u64;
        for row in rows
            .iter()
            .skip(usize::try_from(self.merge.offset).unwrap_or(usize::MAX))
        {
            if n >= limit {
                break;
            }
            out.push(encode_row(&row[..keep]));
            n += 1;
        }
        out.push(command_complete(n));
        Ok(out)
    }

    fn sorted(&self, mut rows: Vec<Row>) -> Result<Vec<Row>, ProxyError> {
        if self.merge.order.is_empty() {
            return Ok(rows);
        }
        let width = match &self.merge.mode {
            Mode::Aggregate(agg) => agg.slots.len(),
            _ => self.width(),
        };
        let failed = RefCell::new(false);
        let columns: Vec<usize> = self.merge.order.iter().map(|k| column_at(k, width)).collect();
        rows.sort_by(|a, b| {
            for ((key, kind), &at) in self.merge.order.iter().zip(&self.sort_kinds).zip(&columns) {
                let ord = match (&a[at], &b[at]) {
                    (None, None) => Ordering::Equal,
                    (None, Some(_)) => {
                        if key.nulls_first {
                            Ordering::Less
                        } else {
                            Ordering::Greater
                        }
                    }
                    (Some(_), None) => {
                        if key.nulls_first {
                            Ordering::Greater
                        } else {
                            Ordering::Less
                        }
                    }
                    (Some(x), Some(y)) => {
                        let o = value::compare(*kind, x, y).unwrap_or_else(|_| {
                            *failed.borrow_mut() = true;
                            Ordering::Equal
                        });
                        if key.descending { o.reverse() } else { o }
                    }
                };
                if ord != Ordering::Equal {
                    return ord;
                }
            }
            Ordering::Equal
        });
        if failed.into_inner() {
            return Err(unreadable_value());
        }
        Ok(rows)
    }
}

fn unreadable_value() -> ProxyError {
    ProxyError::error(
        "0A000",
        "pgfleet cannot read a value the shards returned to merge it across shards",
    )
    .with_hint("keep DateStyle ISO and extra_float_digits at its default (1) for queries across shards")
}

fn column_at(key: &SortKey, width: usize) -> usize {
    match key.column {
        SortColumn::Front(i) => i,
        SortColumn::Back(k) => width.saturating_sub(k + 1),
    }
}

fn equality_kind(f: &Field, what: &str) -> Result<Kind, ProxyError> {
    Kind::of(f.type_oid).ok_or_else(|| {
        ProxyError::error(
            "0A000",
            format!("{what} on the column \"{}\" (type oid {}) is not supported across shards: pgfleet compares integers, floats, numeric, text, bool, uuid, date and timestamps", f.name, f.type_oid),
        )
        .with_hint("add a WHERE on the shard key so the query runs on one shard")
    })
}

fn sum_type(f: &Field, what: &str) -> Result<SumType, ProxyError> {
    SumType::of(f.type_oid).ok_or_else(|| {
        ProxyError::error(
            "0A000",
            format!("{what}() of the type with oid {} is not supported across shards: pgfleet adds integers, numeric and floats", f.type_oid),
        )
        .with_hint("add a WHERE on the shard key so the query runs on one shard")
    })
}
