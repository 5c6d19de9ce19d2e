//! From a SELECT's text to a [`MergePlan`]: the statement each shard runs and how the shards' results are
//! merged, or the 0A000 refusal naming the construct that cannot be merged and what would make it work.

use sqlparser::ast::{
    Distinct, Expr, Function, FunctionArgumentClause, FunctionArguments, GroupByExpr, Ident, LimitClause,
    ObjectName, ObjectNamePart, OrderByKind, OrderBySort, Query, Select, SelectItem, SetExpr, Statement,
    Value,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::scan::{AggClass, Findings, aggregate_class, ident_name, reads_sharded, same_expr, scan};
use super::tables::{ShardedRef, check_from};
use super::{Aggregate, Merge, MergePlan, Mode, ShardedTables, Slot, SortColumn, SortKey};
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

struct Analyzer<'a> {
    tables: &'a dyn ShardedTables,
}

/// One select-list item as the merge sees it.
enum Item {
    /// `*` or `t.*`: an unknown number of columns.
    Wildcard,
    Expr {
        expr: Box<Expr>,
        alias: Option<Ident>,
    },
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
    fn check_expr(&self, expr: &Expr, place: &str, hint: &str) -> Result<bool, ProxyError> {
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

    fn aggregate(
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

/// The index of `e` among the hidden sort columns, adding it if new.
fn hidden_slot(hidden: &mut Vec<Expr>, e: &Expr) -> usize {
    match hidden
        .iter()
        .position(|h| same_expr(&h.to_string(), &e.to_string()))
    {
        Some(h) => h,
        None => {
            hidden.push(e.clone());
            hidden.len() - 1
        }
    }
}

fn unreachable_select<T>() -> Result<T, ProxyError> {
    Err(ProxyError::error(
        "XX000",
        "internal error: the SELECT body changed while planning its merge",
    ))
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

/// An aggregate's name, lower case, without pg_catalog.
fn agg_name(f: &Function) -> String {
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

/// ASC/DESC and NULLS FIRST/LAST with PostgreSQL's defaults (NULLs sort as larger than any value).
fn direction(o: &sqlparser::ast::OrderByExpr, hint: &str) -> Result<(bool, bool), ProxyError> {
    let descending = match &o.options.sort {
        None | Some(OrderBySort::Asc) => false,
        Some(OrderBySort::Desc) => true,
        Some(OrderBySort::Using(op)) => {
            return Err(refuse(
                &format!("ORDER BY ... USING {op} is not supported across shards"),
                &format!("use ASC or DESC, or {hint}"),
            ));
        }
    };
    Ok((descending, o.options.nulls_first.unwrap_or(descending)))
}

fn is_c_collated(e: &Expr) -> bool {
    match e {
        Expr::Collate { collation, .. } => {
            let last = collation
                .0
                .last()
                .and_then(ObjectNamePart::as_ident)
                .map(ident_name)
                .unwrap_or_default();
            last == "C" || last == "POSIX"
        }
        _ => false,
    }
}

/// The select-list item an ORDER BY or GROUP BY expression names: by position, by output name, or by being
/// the same expression. None when it names no item (it is then computed in a hidden column).
fn resolve(items: &[Item], e: &Expr) -> Result<Option<usize>, ProxyError> {
    if let Expr::Value(v) = e
        && let Value::Number(n, _) = &v.value
    {
        {
            let pos: usize = n.parse().map_err(|_| {
                refuse(
                    &format!("position {n} is not a select-list position"),
                    "order or group by a column position, name or expression",
                )
            })?;
            if pos == 0 || pos > items.len() {
                return Err(ProxyError::error(
                    "42P10",
                    format!("ORDER BY position {pos} is not in select list"),
                ));
            }
            if items[..pos].iter().any(|it| matches!(it, Item::Wildcard)) {
                return Err(refuse(
                    "a column position after * is not supported across shards",
                    "list the columns instead of *, or use the column's name",
                ));
            }
            return Ok(Some(pos - 1));
        }
    }
    if let Expr::Identifier(id) = e {
        let name = ident_name(id);
        let named: Vec<usize> = items
            .iter()
            .enumerate()
            .filter(|(_, it)| output_name(it).as_deref() == Some(name.as_str()))
            .map(|(i, _)| i)
            .collect();
        if let Some(&first) = named.first() {
            let first_text = item_text(&items[first]);
            if named
                .iter()
                .any(|&i| !same_expr(&item_text(&items[i]), &first_text))
            {
                return Err(ProxyError::error(
                    "42702",
                    format!("ORDER BY \"{name}\" is ambiguous"),
                ));
            }
            return Ok(Some(first));
        }
    }
    let text = e.to_string();
    Ok(items
        .iter()
        .position(|it| matches!(it, Item::Expr { .. }) && same_expr(&item_text(it), &text)))
}

fn item_text(item: &Item) -> String {
    match item {
        Item::Wildcard => "*".into(),
        Item::Expr { expr, .. } => expr.to_string(),
    }
}

/// The column name PostgreSQL gives an item (its alias, a column's name, a function's name).
fn output_name(item: &Item) -> Option<String> {
    let Item::Expr { expr, alias } = item else {
        return None;
    };
    if let Some(a) = alias {
        return Some(ident_name(a));
    }
    fn figure(e: &Expr) -> Option<String> {
        match e {
            Expr::Identifier(id) => Some(ident_name(id)),
            Expr::CompoundIdentifier(parts) => parts.last().map(ident_name),
            Expr::Function(f) => Some(agg_name(f)),
            Expr::Cast { expr, .. } => figure(expr),
            Expr::Nested(inner) => figure(inner),
            _ => None,
        }
    }
    figure(expr)
}

fn limits(query: &Query) -> Result<(Option<u64>, u64), ProxyError> {
    let Some(clause) = &query.limit_clause else {
        return Ok((None, 0));
    };
    let LimitClause::LimitOffset {
        limit,
        offset,
        limit_by,
    } = clause
    else {
        return Err(refuse(
            "LIMIT m, n is not PostgreSQL syntax",
            "write LIMIT n OFFSET m",
        ));
    };
    if !limit_by.is_empty() {
        return Err(refuse(
            "LIMIT ... BY is not supported across shards",
            "write LIMIT n",
        ));
    }
    let limit = match limit {
        None => None,
        Some(e) => literal_count(e, "LIMIT")?,
    };
    let offset = match offset {
        None => 0,
        Some(o) => literal_count(&o.value, "OFFSET")?.unwrap_or(0),
    };
    Ok((limit, offset))
}

/// A LIMIT or OFFSET value: a non-negative integer literal, or NULL/ALL (None).
fn literal_count(e: &Expr, what: &str) -> Result<Option<u64>, ProxyError> {
    match e {
        Expr::Value(v) => match &v.value {
            Value::Null => Ok(None),
            Value::Number(n, _) => n.parse().map(Some).map_err(|_| {
                refuse(
                    &format!("{what} {n} is not supported across shards"),
                    &format!("write {what} as a non-negative integer"),
                )
            }),
            _ => Err(refuse(
                &format!("{what} {e} is not supported across shards"),
                &format!("write {what} as an integer literal"),
            )),
        },
        Expr::Identifier(id) if ident_name(id) == "all" => Ok(None),
        _ => Err(refuse(
            &format!("{what} {e} (a parameter or expression) is not supported across shards"),
            &format!("write {what} as an integer literal"),
        )),
    }
}

fn number(n: u64) -> Expr {
    Expr::value(Value::Number(n.to_string(), false))
}
