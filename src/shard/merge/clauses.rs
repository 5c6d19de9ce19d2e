//! The clauses both merges read: the select list's items, ORDER BY and GROUP BY references to them (by
//! position, output name or equal expression), sort directions with PostgreSQL's NULLS defaults, and
//! literal LIMIT/OFFSET values.

use sqlparser::ast::{Expr, Ident, LimitClause, ObjectNamePart, OrderByExpr, OrderBySort, Query, Value};

use super::aggregate::agg_name;
use super::analyze::refuse;
use super::scan::{ident_name, same_expr};
use crate::protocol::messages::ProxyError;

/// One select-list item as the merge sees it.
pub(super) enum Item {
    /// `*` or `t.*`: an unknown number of columns.
    Wildcard,
    Expr {
        expr: Box<Expr>,
        alias: Option<Ident>,
    },
}

/// The index of `e` among the hidden sort columns, adding it if new.
pub(super) fn hidden_slot(hidden: &mut Vec<Expr>, e: &Expr) -> usize {
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

pub(super) fn unreachable_select<T>() -> Result<T, ProxyError> {
    Err(ProxyError::error(
        "XX000",
        "internal error: the SELECT body changed while planning its merge",
    ))
}

/// ASC/DESC and NULLS FIRST/LAST with PostgreSQL's defaults (NULLs sort as larger than any value).
pub(super) fn direction(o: &OrderByExpr, hint: &str) -> Result<(bool, bool), ProxyError> {
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

pub(super) fn is_c_collated(e: &Expr) -> bool {
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
pub(super) fn resolve(items: &[Item], e: &Expr) -> Result<Option<usize>, ProxyError> {
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

pub(super) fn limits(query: &Query) -> Result<(Option<u64>, u64), ProxyError> {
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
pub(super) fn literal_count(e: &Expr, what: &str) -> Result<Option<u64>, ProxyError> {
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

pub(super) fn number(n: u64) -> Expr {
    Expr::value(Value::Number(n.to_string(), false))
}
