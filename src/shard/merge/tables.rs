//! The FROM clause of a SELECT that runs on every shard: every row it produces must come from exactly one
//! shard. Rows of a sharded table are on one shard each; reference tables are whole on every shard. So a
//! join between sharded tables must match rows on their shard keys (co-located, both rows on one shard),
//! and a reference table must not be the preserved side of an outer join of sharded rows (each shard would
//! add its own unmatched copy). Subqueries in FROM may read reference tables only.

use sqlparser::ast::{
    BinaryOperator, Expr, JoinConstraint, JoinOperator, ObjectName, TableFactor, TableWithJoins,
};

use super::ShardedTables;
use super::analyze::refuse;
use super::scan::{ident_name, reads_sharded};
use crate::protocol::messages::ProxyError;

/// A sharded table of the FROM clause: its name as written, the name it is referred to by, its key.
#[derive(Debug, Clone)]
pub(crate) struct ShardedRef {
    pub(crate) table: String,
    qualifier: String,
    pub(crate) key: String,
}

/// A joined relation: its rows are whole on every shard, or spread over the shards.
enum Rel {
    Reference,
    Sharded(Vec<ShardedRef>),
}

/// Checks the FROM clause (with the WHERE clause, whose equalities can co-locate a comma join) and returns
/// its sharded tables.
pub(crate) fn check_from(
    from: &[TableWithJoins],
    selection: Option<&Expr>,
    tables: &dyn ShardedTables,
    ctes: &[String],
) -> Result<Vec<ShardedRef>, ProxyError> {
    let mut where_conjuncts = Vec::new();
    if let Some(w) = selection {
        conjuncts(w, &mut where_conjuncts);
    }
    let mut acc = Rel::Reference;
    for item in from {
        let rel = joined(item, tables, ctes, &where_conjuncts)?;
        acc = combine(acc, rel, &Kind::Inner, &where_conjuncts, None)?;
    }
    match acc {
        Rel::Sharded(refs) => Ok(refs),
        Rel::Reference => Err(refuse(
            "a statement that reads no sharded table is not merged across shards",
            "pgfleet runs it on one shard; this is a routing error, please report it",
        )),
    }
}

fn joined(
    item: &TableWithJoins,
    tables: &dyn ShardedTables,
    ctes: &[String],
    where_conjuncts: &[&Expr],
) -> Result<Rel, ProxyError> {
    let mut acc = factor(&item.relation, tables, ctes, where_conjuncts)?;
    for join in &item.joins {
        let right = factor(&join.relation, tables, ctes, where_conjuncts)?;
        let (kind, constraint) = match &join.join_operator {
            JoinOperator::Join(c) | JoinOperator::Inner(c) => (Kind::Inner, Some(c)),
            JoinOperator::CrossJoin(c) => (Kind::Inner, Some(c)),
            JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (Kind::Left, Some(c)),
            JoinOperator::Right(c) | JoinOperator::RightOuter(c) => (Kind::Right, Some(c)),
            JoinOperator::FullOuter(c) => (Kind::Full, Some(c)),
            other => {
                return Err(refuse(
                    &format!("the join `{other:?}` is not supported across shards"),
                    "use INNER, LEFT, RIGHT or FULL JOIN",
                ));
            }
        };
        acc = combine(acc, right, &kind, where_conjuncts, constraint)?;
    }
    Ok(acc)
}

fn factor(
    f: &TableFactor,
    tables: &dyn ShardedTables,
    ctes: &[String],
    where_conjuncts: &[&Expr],
) -> Result<Rel, ProxyError> {
    match f {
        TableFactor::Table {
            name, alias, args, ..
        } => {
            if args.is_some() {
                // A set-returning function: computed alike on every shard, like a reference table.
                return Ok(Rel::Reference);
            }
            if is_cte(name, ctes) {
                return Ok(Rel::Reference);
            }
            match tables.shard_key(name) {
                Some(key) => {
                    let qualifier = match alias {
                        Some(a) => ident_name(&a.name),
                        None => last_name(name),
                    };
                    Ok(Rel::Sharded(vec![ShardedRef {
                        table: name.to_string(),
                        qualifier,
                        key: key.to_lowercase(),
                    }]))
                }
                None => Ok(Rel::Reference),
            }
        }
        TableFactor::Derived { subquery, .. } => match reads_sharded(&subquery.to_string(), tables) {
            Some(t) => Err(refuse(
                &format!("a subquery in FROM reading the sharded table {t} is not supported across shards"),
                "select from the sharded table directly, or add a WHERE on its shard key so the query runs on one shard",
            )),
            None => Ok(Rel::Reference),
        },
        TableFactor::NestedJoin { table_with_joins, .. } => {
            joined(table_with_joins, tables, ctes, where_conjuncts)
        }
        TableFactor::Function { .. } | TableFactor::TableFunction { .. } => {
            match reads_sharded(&f.to_string(), tables) {
                Some(t) => Err(refuse(
                    &format!(
                        "a function in FROM reading the sharded table {t} is not supported across shards"
                    ),
                    "add a WHERE on the shard key so the query runs on one shard",
                )),
                None => Ok(Rel::Reference),
            }
        }
        other => Err(refuse(
            &format!("the FROM item `{other}` is not supported across shards"),
            "select from tables, joins or subqueries of reference tables",
        )),
    }
}

enum Kind {
    Inner,
    Left,
    Right,
    Full,
}

fn combine(
    left: Rel,
    right: Rel,
    kind: &Kind,
    where_conjuncts: &[&Expr],
    constraint: Option<&JoinConstraint>,
) -> Result<Rel, ProxyError> {
    match (left, right) {
        (Rel::Reference, Rel::Reference) => Ok(Rel::Reference),
        (Rel::Sharded(s), Rel::Reference) => match kind {
            Kind::Inner | Kind::Left => Ok(Rel::Sharded(s)),
            Kind::Right | Kind::Full => Err(outer_reference(&s)),
        },
        (Rel::Reference, Rel::Sharded(s)) => match kind {
            Kind::Inner | Kind::Right => Ok(Rel::Sharded(s)),
            Kind::Left | Kind::Full => Err(outer_reference(&s)),
        },
        (Rel::Sharded(l), Rel::Sharded(r)) => {
            let mut on = Vec::new();
            let mut using_key = false;
            match constraint {
                Some(JoinConstraint::On(e)) => conjuncts(e, &mut on),
                Some(JoinConstraint::Using(cols)) | Some(JoinConstraint::UsingAlias(cols, _)) => {
                    using_key = cols.iter().any(|c| {
                        let c = last_name(c);
                        l.iter().any(|x| x.key == c) && r.iter().any(|x| x.key == c)
                    });
                }
                _ => {}
            }
            // WHERE equalities co-locate inner joins only: for an outer join they would filter after the
            // join, not match rows.
            if matches!(kind, Kind::Inner) {
                on.extend_from_slice(where_conjuncts);
            }
            if using_key || on.iter().any(|e| colocates(e, &l, &r)) {
                let mut all = l;
                all.extend(r);
                Ok(Rel::Sharded(all))
            } else {
                let (a, b) = (&l[0], &r[0]);
                Err(refuse(
                    &format!(
                        "a join of the sharded tables {} and {} not on their shard keys is not supported across shards",
                        a.table, b.table
                    ),
                    &format!(
                        "join on {}.{} = {}.{} so matching rows are on one shard, or add a WHERE on the shard key so the query runs on one shard",
                        a.qualifier, a.key, b.qualifier, b.key
                    ),
                ))
            }
        }
    }
}

fn outer_reference(s: &[ShardedRef]) -> ProxyError {
    refuse(
        &format!(
            "an outer join keeping unmatched rows of a reference table against the sharded table {} is not supported across shards",
            s[0].table
        ),
        &format!(
            "make the sharded table the preserved side, or add a WHERE on the shard key {}.{} so the query runs on one shard",
            s[0].table, s[0].key
        ),
    )
}

/// Whether `e` is `a.k1 = b.k2` with `a` a sharded table on the left, `b` one on the right, `k` their keys.
fn colocates(e: &Expr, l: &[ShardedRef], r: &[ShardedRef]) -> bool {
    let Expr::BinaryOp {
        left,
        op: BinaryOperator::Eq,
        right,
    } = e
    else {
        return false;
    };
    let (Some(x), Some(y)) = (column(left), column(right)) else {
        return false;
    };
    let is_key = |side: &[ShardedRef], (q, c): &(String, String)| {
        side.iter().any(|s| &s.qualifier == q && &s.key == c)
    };
    (is_key(l, &x) && is_key(r, &y)) || (is_key(l, &y) && is_key(r, &x))
}

/// A qualified column reference `q.c` as (q, c).
fn column(e: &Expr) -> Option<(String, String)> {
    match e {
        Expr::Nested(inner) => column(inner),
        Expr::CompoundIdentifier(parts) if parts.len() >= 2 => {
            let n = parts.len();
            Some((ident_name(&parts[n - 2]), ident_name(&parts[n - 1])))
        }
        _ => None,
    }
}

/// The AND-ed terms of a condition.
pub(crate) fn conjuncts<'a>(e: &'a Expr, out: &mut Vec<&'a Expr>) {
    match e {
        Expr::BinaryOp {
            left,
            op: BinaryOperator::And,
            right,
        } => {
            conjuncts(left, out);
            conjuncts(right, out);
        }
        Expr::Nested(inner) => conjuncts(inner, out),
        other => out.push(other),
    }
}

fn last_name(name: &ObjectName) -> String {
    name.0
        .last()
        .and_then(|p| p.as_ident())
        .map(ident_name)
        .unwrap_or_default()
}

fn is_cte(name: &ObjectName, ctes: &[String]) -> bool {
    name.0.len() == 1 && ctes.contains(&last_name(name))
}
