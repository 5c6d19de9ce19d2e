//! The aggregating merge's plan: each select-list aggregate becomes a slot the merger combines (avg as the
//! shards' sum and count), GROUP BY expressions become key slots (hidden ones when not selected), and
//! ORDER BY names a slot, adding a hidden one for an expression not in the select list.

use sqlparser::ast::{
    Expr, Function, GroupByExpr, Ident, ObjectName, ObjectNamePart, Query, SelectItem, SetExpr,
};

use super::analyze::{Analyzer, refuse};
use super::clauses::{Item, direction, is_c_collated, resolve, unreachable_select};
use super::scan::{ident_name, same_expr};
use super::{Aggregate, Merge, MergePlan, Mode, Slot, SortColumn, SortKey};
use crate::protocol::messages::ProxyError;

impl Analyzer<'_> {
    pub(super) fn aggregate(
        &self,
        mut query: Query,
        items: Vec<Item>,
        order: Vec<sqlparser::ast::OrderByExpr>,
        limit: Option<u64>,
        offset: u64,
        hint: &str,
    ) -> Result<MergePlan, ProxyError> {
        let mut exprs = Vec::new();
        for item in &items {
            match item {
                Item::Wildcard => {
                    return Err(refuse(
                        "SELECT * with aggregates or GROUP BY is not supported across shards",
                        "list the grouped columns",
                    ));
                }
                Item::Expr { expr, .. } => exprs.push((**expr).clone()),
            }
        }
        let visible = exprs.len();
        let SetExpr::Select(select) = query.body.as_mut() else {
            unreachable_select()?
        };
        let mut key_slots = Vec::new();
        let grouped = match &select.group_by {
            GroupByExpr::Expressions(list, modifiers) if modifiers.is_empty() => {
                for g in list {
                    if matches!(g, Expr::Rollup(_) | Expr::Cube(_) | Expr::GroupingSets(_)) {
                        return Err(refuse(
                            "GROUPING SETS, ROLLUP and CUBE are not supported across shards",
                            hint,
                        ));
                    }
                    self.check_expr(g, "GROUP BY", hint)?;
                    // PostgreSQL reads a GROUP BY name as an input column before an output alias; pgfleet
                    // cannot tell which columns the tables have, so an alias naming another expression is refused.
                    if let Expr::Identifier(id) = g {
                        let n = ident_name(id);
                        let aliased_other = items.iter().any(|it| match it {
                            Item::Expr { expr, alias: Some(a) } => {
                                ident_name(a) == n && !same_expr(&expr.to_string(), &g.to_string())
                            }
                            _ => false,
                        });
                        if aliased_other {
                            return Err(refuse(
                                &format!(
                                    "GROUP BY the output column name {n} is not supported across shards"
                                ),
                                "group by the expression itself or by its position",
                            ));
                        }
                    }
                    let slot = match resolve(&items, g)? {
                        Some(i) => i,
                        None => match exprs
                            .iter()
                            .position(|e| same_expr(&e.to_string(), &g.to_string()))
                        {
                            Some(i) => i,
                            None => {
                                exprs.push(g.clone());
                                exprs.len() - 1
                            }
                        },
                    };
                    key_slots.push(slot);
                }
                !list.is_empty()
            }
            _ => return Err(refuse("this GROUP BY form is not supported across shards", hint)),
        };
        let mut keys = Vec::new();
        for o in &order {
            let (descending, nulls_first) = direction(o, hint)?;
            let c_collation = is_c_collated(&o.expr);
            let slot = match resolve(&items, &o.expr)? {
                Some(i) => i,
                None => match exprs
                    .iter()
                    .position(|e| same_expr(&e.to_string(), &o.expr.to_string()))
                {
                    Some(i) => i,
                    None => {
                        exprs.push(o.expr.clone());
                        exprs.len() - 1
                    }
                },
            };
            keys.push(SortKey {
                column: SortColumn::Front(slot),
                descending,
                nulls_first,
                c_collation,
            });
        }
        // One shard column per slot, avg's count columns after them all.
        let mut slots = Vec::new();
        let mut projection = Vec::new();
        let mut counts = Vec::new();
        for (i, e) in exprs.iter().enumerate() {
            let (slot, shard_expr) = match e {
                Expr::Function(f) if self.check_expr(e, "the select list", hint)? => {
                    match agg_name(f).as_str() {
                        "count" => (Slot::Count, e.clone()),
                        "sum" => (Slot::Sum, e.clone()),
                        "min" => (Slot::Min, e.clone()),
                        "max" => (Slot::Max, e.clone()),
                        _ => {
                            counts.push(Expr::Function(renamed(f, "count")));
                            (Slot::Avg { count_column: 0 }, Expr::Function(renamed(f, "sum")))
                        }
                    }
                }
                _ if key_slots.contains(&i) => (Slot::Key, e.clone()),
                _ => (Slot::Any, e.clone()),
            };
            projection.push(match (items.get(i), &slot) {
                (Some(Item::Expr { alias: Some(a), .. }), _) => SelectItem::ExprWithAlias {
                    expr: shard_expr,
                    alias: a.clone(),
                },
                // The shard computes avg's sum; the column keeps the name PostgreSQL gives avg().
                (_, Slot::Avg { .. }) => SelectItem::ExprWithAlias {
                    expr: shard_expr,
                    alias: Ident::new("avg"),
                },
                _ => SelectItem::UnnamedExpr(shard_expr),
            });
            slots.push(slot);
        }
        let mut next_count = slots.len();
        for slot in &mut slots {
            if let Slot::Avg { count_column } = slot {
                *count_column = next_count;
                next_count += 1;
            }
        }
        projection.extend(counts.into_iter().map(SelectItem::UnnamedExpr));
        select.projection = projection;
        query.order_by = None;
        query.limit_clause = None;
        Ok(MergePlan {
            shard_sql: query.to_string(),
            merge: Merge {
                mode: Mode::Aggregate(Aggregate {
                    slots,
                    visible,
                    grouped,
                }),
                order: keys,
                limit,
                offset,
            },
        })
    }
}

/// An aggregate's name, lower case, without pg_catalog.
pub(super) fn agg_name(f: &Function) -> String {
    f.name
        .0
        .last()
        .and_then(ObjectNamePart::as_ident)
        .map(ident_name)
        .unwrap_or_default()
}

/// `f` called as `name` with the same arguments and FILTER.
fn renamed(f: &Function, name: &str) -> Function {
    let mut g = f.clone();
    g.name = ObjectName(vec![ObjectNamePart::Identifier(Ident::new(name))]);
    g
}
