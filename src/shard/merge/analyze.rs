//! From a SELECT's text to a [`MergePlan`]: the statement each shard runs and how the shards' results are
//! merged, or the 0A000 refusal naming the construct that cannot be merged and what would make it work.

use sqlparser::ast::{
    Distinct, Expr, FunctionArgumentClause, FunctionArguments, GroupByExpr, LimitClause, OrderByKind, Query,
    Select, SelectItem, SetExpr, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::aggregate::agg_name;
use super::clauses::{
    Item, direction, hidden_slot, is_c_collated, limits, number, resolve, unreachable_select,
};
use super::scan::{AggClass, Findings, aggregate_class, ident_name, reads_sharded, scan};
use super::tables::{ShardedRef, check_from};
use super::{Merge, MergePlan, Mode, ShardedTables, SortColumn, SortKey};
use crate::protocol::messages::ProxyError;

/// A 0A000 refusal.
pub(crate) fn refuse(message: &str, hint: &str) -> ProxyError {
    ProxyError::error("0A000", message).with_hint(hint)
}

/// Plans the merge of one SELECT that runs on every shard. `tables` says which tables are sharded and on
/// which key. Anything not known to merge exactly is refused with SQLSTATE 0A000.
pub fn analyze(sql: &str, tables: &dyn ShardedTables) -> Result<MergePlan, ProxyError> {
    let statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).map_err(|e| {
        refuse(
            &format!("pgfleet cannot read this statement to merge it across shards: {e}"),
            "add a WHERE on the shard key so the statement runs on one shard",
        )
    })?;
    let [Statement::Query(query)] = statements.as_slice() else {
        return Err(refuse(
            "only a single SELECT can be merged across shards",
            "send one SELECT per query, or add a WHERE on the shard key so the statement runs on one shard",
        ));
    };
    Analyzer { tables }.query(query)
}

pub(super) struct Analyzer<'a> {
    pub(super) tables: &'a dyn ShardedTables,
}

impl Analyzer<'_> {
    fn query(&self, original: &Query) -> Result<MergePlan, ProxyError> {
        let mut query = original.clone();
        let mut ctes = Vec::new();
        if let Some(with) = &query.with {
            for cte in &with.cte_tables {
                if let Some(t) = reads_sharded(&cte.query.to_string(), self.tables) {
                    return Err(refuse(
                        &format!("a WITH query reading the sharded table {t} is not supported across shards"),
                        "select from the sharded table in the main query, or add a WHERE on its shard key so the query runs on one shard",
                    ));
                }
                ctes.push(ident_name(&cte.alias.name));
            }
        }
        let (limit, offset) = limits(&query)?;
        let select = match query.body.as_ref() {
            SetExpr::Select(select) => select,
            SetExpr::SetOperation { op, .. } => {
                return Err(refuse(
                    &format!("{op} is not supported across shards"),
                    "run each part as its own query, or add a WHERE on the shard key so the query runs on one shard",
                ));
            }
            _ => {
                return Err(refuse(
                    "only a plain SELECT can be merged across shards",
                    "add a WHERE on the shard key so the query runs on one shard",
                ));
            }
        };
        let refs = check_from(&select.from, select.selection.as_ref(), self.tables, &ctes)?;
        let hint = one_shard_hint(&refs);
        if !query.locks.is_empty() {
            return Err(refuse(
                "SELECT ... FOR UPDATE/SHARE is not supported across shards",
                &hint,
            ));
        }
        if query.fetch.is_some() {
            return Err(refuse(
                "FETCH FIRST is not supported across shards",
                "write LIMIT n instead",
            ));
        }
        if query.for_clause.is_some()
            || query.settings.is_some()
            || query.format_clause.is_some()
            || !query.pipe_operators.is_empty()
        {
            return Err(refuse("this SELECT syntax is not supported across shards", &hint));
        }
        self.check_select_clauses(select, &hint)?;
        for part in select
            .from
            .iter()
            .map(ToString::to_string)
            .chain(select.selection.iter().map(ToString::to_string))
        {
            if let Some(t) = scan(&part, self.tables).sharded_subquery {
                return Err(refuse(
                    &format!("a subquery reading the sharded table {t} is not supported across shards"),
                    &format!("join the sharded tables on their shard keys instead, or {hint}"),
                ));
            }
        }
        let distinct = match &select.distinct {
            None | Some(Distinct::All) => false,
            Some(Distinct::Distinct) => true,
            Some(_) => {
                return Err(refuse("SELECT DISTINCT ON is not supported across shards", &hint));
            }
        };
        let mut items = Vec::new();
        let mut set_returning = None;
        let mut aggregating =
            !matches!(&select.group_by, GroupByExpr::Expressions(e, m) if e.is_empty() && m.is_empty());
        for item in &select.projection {
            let item = match item {
                SelectItem::Wildcard(_) | SelectItem::QualifiedWildcard(..) => Item::Wildcard,
                SelectItem::UnnamedExpr(e) => Item::Expr {
                    expr: Box::new(e.clone()),
                    alias: None,
                },
                SelectItem::ExprWithAlias { expr, alias } => Item::Expr {
                    expr: Box::new(expr.clone()),
                    alias: Some(alias.clone()),
                },
                _ => {
                    return Err(refuse(
                        "this select-list item is not supported across shards",
                        &hint,
                    ));
                }
            };
            if let Item::Expr { expr, .. } = &item {
                aggregating |= self.check_expr(expr, "the select list", &hint)?;
                if set_returning.is_none() {
                    set_returning = scan(&expr.to_string(), self.tables)
                        .set_returning
                        .into_iter()
                        .next();
                }
            }
            items.push(item);
        }
        let order = match &query.order_by {
            None => Vec::new(),
            Some(o) => match &o.kind {
                OrderByKind::Expressions(exprs) => exprs.clone(),
                OrderByKind::All(_) => {
                    return Err(refuse("ORDER BY ALL is not supported across shards", &hint));
                }
            },
        };
        for o in &order {
            aggregating |= self.check_expr(&o.expr, "ORDER BY", &hint)?;
            if o.with_fill.is_some() {
                return Err(refuse(
                    "ORDER BY ... WITH FILL is not supported across shards",
                    &hint,
                ));
            }
        }
        if aggregating {
            if let Some(f) = set_returning {
                return Err(refuse(
                    &format!(
                        "the set-returning function {f}() beside aggregates is not supported across shards"
                    ),
                    &format!("move it to FROM, or {hint}"),
                ));
            }
            if distinct {
                return Err(refuse(
                    "SELECT DISTINCT with aggregates is not supported across shards",
                    &format!("remove DISTINCT (GROUP BY already gives one row per group), or {hint}"),
                ));
            }
            return self.aggregate(query.clone(), items, order, limit, offset, &hint);
        }

        // A row union: shards sort and cut at n+m; the merger sorts the union and applies OFFSET and LIMIT.
        let mut keys = Vec::new();
        let mut hidden: Vec<Expr> = Vec::new();
        let mut hidden_at = Vec::new();
        for o in &order {
            let (descending, nulls_first) = direction(o, &hint)?;
            let c_collation = is_c_collated(&o.expr);
            let mut sort_expr = o.expr.clone();
            match resolve(&items, &o.expr)? {
                Some(i) if !items[..i].iter().any(|it| matches!(it, Item::Wildcard)) => {
                    keys.push(SortKey {
                        column: SortColumn::Front(i),
                        descending,
                        nulls_first,
                        c_collation,
                    });
                }
                Some(i) => {
                    // The item's position is unknown after `*`: sort on a copy of it in a hidden column.
                    let Item::Expr { expr, alias } = &items[i] else {
                        unreachable_select()?
                    };
                    if alias.is_some() && matches!(&o.expr, Expr::Identifier(_)) {
                        return Err(refuse(
                            "ORDER BY an output column name after * is not supported across shards",
                            "order by the expression itself, or list the columns instead of *",
                        ));
                    }
                    sort_expr = (**expr).clone();
                    let h = hidden_slot(&mut hidden, &sort_expr);
                    hidden_at.push(keys.len());
                    keys.push(SortKey {
                        column: SortColumn::Front(h),
                        descending,
                        nulls_first,
                        c_collation,
                    });
                }
                None => {
                    if distinct {
                        return Err(ProxyError::error(
                            "42P10",
                            "for SELECT DISTINCT, ORDER BY expressions must appear in select list",
                        ));
                    }
                    let h = hidden_slot(&mut hidden, &sort_expr);
                    hidden_at.push(keys.len());
                    keys.push(SortKey {
                        column: SortColumn::Front(h),
                        descending,
                        nulls_first,
                        c_collation,
                    });
                }
            }
        }
        let n_hidden = hidden.len();
        for k in hidden_at {
            if let SortColumn::Front(h) = keys[k].column {
                keys[k].column = SortColumn::Back(n_hidden - 1 - h);
            }
        }
        let SetExpr::Select(select) = query.body.as_mut() else {
            unreachable_select()?
        };
        select
            .projection
            .extend(hidden.into_iter().map(SelectItem::UnnamedExpr));
        query.limit_clause = match limit {
            Some(n) => Some(LimitClause::LimitOffset {
                limit: Some(number(n.checked_add(offset).ok_or_else(|| {
                    refuse(
                        "LIMIT plus OFFSET beyond 2^64 is not supported across shards",
                        &hint,
                    )
                })?)),
                offset: None,
                limit_by: Vec::new(),
            }),
            None => None,
        };
        Ok(MergePlan {
            shard_sql: query.to_string(),
            merge: Merge {
                mode: if distinct {
                    Mode::Distinct
                } else {
                    Mode::Rows { hidden: n_hidden }
                },
                order: keys,
                limit,
                offset,
            },
        })
    }

    /// Refuses the clauses of a SELECT that no merge handles.
    fn check_select_clauses(&self, s: &Select, hint: &str) -> Result<(), ProxyError> {
        if s.having.is_some() {
            return Err(refuse(
                "HAVING is not supported across shards",
                &format!("filter the groups in the application, or {hint}"),
            ));
        }
        if !s.named_window.is_empty() {
            return Err(refuse("window functions are not supported across shards", hint));
        }
        if s.into.is_some() {
            return Err(refuse(
                "SELECT INTO is not supported across shards",
                "use CREATE TABLE ... AS on each shard",
            ));
        }
        if s.top.is_some()
            || !s.lateral_views.is_empty()
            || s.prewhere.is_some()
            || !s.connect_by.is_empty()
            || !s.cluster_by.is_empty()
            || !s.distribute_by.is_empty()
            || !s.sort_by.is_empty()
            || s.qualify.is_some()
            || s.exclude.is_some()
            || s.value_table_mode.is_some()
            || s.select_modifiers.is_some()
        {
            return Err(refuse("this SELECT syntax is not supported across shards", hint));
        }
        Ok(())
    }

    /// Refuses what an expression of the select list or ORDER BY must not contain; true when it is a
    /// mergeable aggregate call.
    pub(super) fn check_expr(&self, expr: &Expr, place: &str, hint: &str) -> Result<bool, ProxyError> {
        let found: Findings = scan(&expr.to_string(), self.tables);
        if let Some(t) = found.sharded_subquery {
            return Err(refuse(
                &format!(
                    "a subquery in {place} reading the sharded table {t} is not supported across shards"
                ),
                &format!("join the sharded tables on their shard keys instead, or {hint}"),
            ));
        }
        if found.window {
            return Err(refuse(
                "window functions (OVER) are not supported across shards",
                &format!("compute them in the application, or {hint}"),
            ));
        }
        if let Some(c) = found.collations.first() {
            return Err(refuse(
                &format!(
                    "COLLATE {c} in {place} is not supported across shards: pgfleet merges text in the \"C\" collation only"
                ),
                "use COLLATE \"C\", or add a WHERE on the shard key so the query runs on one shard",
            ));
        }
        if let Some((name, _)) = found.aggregates.iter().find(|(_, c)| *c == AggClass::Refused) {
            return Err(refuse(
                &format!(
                    "the aggregate {name}() is not supported across shards: only count, sum, min, max and avg are merged"
                ),
                hint,
            ));
        }
        if found.aggregates.is_empty() {
            return Ok(false);
        }
        let top = match expr {
            Expr::Function(f)
                if found.aggregates.len() == 1
                    && aggregate_class(&f.name, self.tables) == Some(AggClass::Mergeable) =>
            {
                Some(f)
            }
            _ => None,
        };
        let Some(f) = top else {
            return Err(refuse(
                &format!("an expression over aggregates (`{expr}`) is not supported across shards"),
                "select the aggregates themselves and compute the expression in the application",
            ));
        };
        let name = agg_name(f);
        if f.over.is_some() || !f.within_group.is_empty() || f.null_treatment.is_some() {
            return Err(refuse(
                &format!("{name}() with OVER or WITHIN GROUP is not supported across shards"),
                hint,
            ));
        }
        let FunctionArguments::List(args) = &f.args else {
            return Err(refuse(
                &format!("{name}() without an argument list is not supported across shards"),
                hint,
            ));
        };
        if args
            .clauses
            .iter()
            .any(|c| !matches!(c, FunctionArgumentClause::Where(_)))
        {
            return Err(refuse(
                &format!("{name}() with ORDER BY or other clauses inside is not supported across shards"),
                hint,
            ));
        }
        if matches!(
            args.duplicate_treatment,
            Some(sqlparser::ast::DuplicateTreatment::Distinct)
        ) && !matches!(name.as_str(), "min" | "max")
        {
            return Err(refuse(
                &format!(
                    "{name}(DISTINCT ...) is not supported across shards: a value may be on several shards"
                ),
                &format!("count distinct values per shard key group instead, or {hint}"),
            ));
        }
        Ok(true)
    }
}

fn one_shard_hint(refs: &[ShardedRef]) -> String {
    match refs.first() {
        Some(r) => format!(
            "add a WHERE on the shard key {}.{} so the query runs on one shard",
            r.table, r.key
        ),
        None => "add a WHERE on the shard key so the query runs on one shard".into(),
    }
}
