//! The per-group accumulators of an aggregating merge: adding one shard's partial count, sum, min, max or
//! avg (sum and count), and the final value in the type and text PostgreSQL gives the aggregate.

use std::cmp::Ordering;

use bytes::Bytes;

use super::numeric::Numeric;
use super::value::{self, Kind, oid};
use crate::protocol::messages::ProxyError;

/// How a sum (of a `sum` or an `avg`) adds, from the shard column's type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum SumType {
    /// bigint: sum(int2/int4).
    Int8,
    /// numeric: sum(int8/numeric).
    Numeric,
    Float8,
    Float4,
}

impl SumType {
    pub(crate) fn of(type_oid: u32) -> Option<SumType> {
        match type_oid {
            oid::INT8 => Some(SumType::Int8),
            oid::NUMERIC => Some(SumType::Numeric),
            oid::FLOAT8 => Some(SumType::Float8),
            oid::FLOAT4 => Some(SumType::Float4),
            _ => None,
        }
    }
}

/// A running sum; None until a shard gives a non-NULL partial sum.
#[derive(Debug, Clone)]
pub(crate) enum Sum {
    Int(i128),
    Numeric(Numeric),
    Float8(f64),
    Float4(f32),
}

/// One slot's state in one group.
#[derive(Debug, Clone)]
pub(crate) enum Acc {
    /// A group key or any-value column: the first value seen.
    First(Option<Option<Bytes>>),
    Count(i128),
    Sum(SumType, Option<Sum>),
    /// min (`want` Less) or max (`want` Greater).
    Extreme(Kind, Ordering, Option<Bytes>),
    Avg(SumType, Option<Sum>, i128),
}

fn unreadable(what: &str) -> ProxyError {
    ProxyError::error(
        "0A000",
        format!("pgfleet cannot read the shards' {what} to merge it"),
    )
    .with_hint("keep DateStyle ISO and extra_float_digits at its default (1) for queries across shards")
}

fn add_sum(ty: SumType, acc: &mut Option<Sum>, v: &[u8]) -> Result<(), ProxyError> {
    let next = match ty {
        SumType::Int8 => Sum::Int(value::int(v).map_err(|_| unreadable("sum"))?),
        SumType::Numeric => Sum::Numeric(value::num(v).map_err(|_| unreadable("sum"))?),
        SumType::Float8 => Sum::Float8(value::float(v).map_err(|_| unreadable("sum"))?),
        SumType::Float4 => Sum::Float4(value::float(v).map_err(|_| unreadable("sum"))? as f32),
    };
    *acc = Some(match (acc.take(), next) {
        (None, n) => n,
        (Some(Sum::Int(a)), Sum::Int(b)) => Sum::Int(a + b),
        (Some(Sum::Numeric(a)), Sum::Numeric(b)) => Sum::Numeric(a.add(&b)),
        (Some(Sum::Float8(a)), Sum::Float8(b)) => Sum::Float8(a + b),
        (Some(Sum::Float4(a)), Sum::Float4(b)) => Sum::Float4(a + b),
        (Some(a), _) => a,
    });
    Ok(())
}

impl Acc {
    /// Adds one shard's value of this slot (and, for avg, its count column).
    pub(crate) fn add(&mut self, v: Option<&Bytes>, count: Option<&Bytes>) -> Result<(), ProxyError> {
        match self {
            Acc::First(first) => {
                if first.is_none() {
                    *first = Some(v.cloned());
                }
            }
            Acc::Count(n) => {
                if let Some(v) = v {
                    *n += value::int(v).map_err(|_| unreadable("count"))?;
                }
            }
            Acc::Sum(ty, acc) => {
                if let Some(v) = v {
                    add_sum(*ty, acc, v)?;
                }
            }
            Acc::Extreme(kind, want, best) => {
                if let Some(v) = v {
                    let better = match best {
                        None => true,
                        Some(b) => {
                            value::compare(*kind, v, b).map_err(|_| unreadable("min/max value"))? == *want
                        }
                    };
                    if better {
                        *best = Some(v.clone());
                    }
                }
            }
            Acc::Avg(ty, acc, n) => {
                if let Some(v) = v {
                    add_sum(*ty, acc, v)?;
                }
                if let Some(c) = count {
                    *n += value::int(c).map_err(|_| unreadable("count"))?;
                }
            }
        }
        Ok(())
    }

    /// The merged value as text, NULL as None.
    pub(crate) fn value(&self) -> Result<Option<Bytes>, ProxyError> {
        Ok(match self {
            Acc::First(v) => v.clone().flatten(),
            Acc::Count(n) => Some(Bytes::from(n.to_string())),
            Acc::Sum(_, None) | Acc::Avg(_, None, _) | Acc::Extreme(_, _, None) => None,
            Acc::Sum(_, Some(s)) => Some(Bytes::from(sum_text(s)?)),
            Acc::Extreme(_, _, Some(v)) => Some(v.clone()),
            Acc::Avg(_, Some(_), 0) => None,
            Acc::Avg(_, Some(s), n) => Some(Bytes::from(match s {
                Sum::Int(total) => Numeric::from_i128(*total).div_count(*n as u64).to_text(),
                Sum::Numeric(total) => total.div_count(*n as u64).to_text(),
                Sum::Float8(total) => value::float8_text(total / *n as f64),
                Sum::Float4(_) => return Err(avg_float4()),
            })),
        })
    }
}

fn sum_text(s: &Sum) -> Result<String, ProxyError> {
    Ok(match s {
        Sum::Int(v) => {
            if i64::try_from(*v).is_err() {
                return Err(ProxyError::error("22003", "bigint out of range"));
            }
            v.to_string()
        }
        Sum::Numeric(n) => n.to_text(),
        Sum::Float8(f) => value::float8_text(*f),
        Sum::Float4(f) => value::float4_text(*f),
    })
}

/// avg(real) accumulates in double precision on one server, but the shards' sum(real) is single precision.
pub(crate) fn avg_float4() -> ProxyError {
    ProxyError::error(
        "0A000",
        "avg() of a real column is not supported across shards: the shards' sums would lose precision",
    )
    .with_hint("write avg(column::float8)")
}
