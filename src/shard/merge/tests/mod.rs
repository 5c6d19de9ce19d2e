//! Table tests: the plans [`analyze`] makes and the refusals it gives, numeric and float text as
//! PostgreSQL prints them, value order, and the merger's rows in and out.

use sqlparser::ast::ObjectName;

use super::*;

mod analyze;
mod merger;
mod values;

/// accounts (key id) and orders (key account_id) are sharded; everything else is a reference table.
pub(super) fn key(table: &ObjectName) -> Option<String> {
    match table.to_string().to_lowercase().as_str() {
        "accounts" | "public.accounts" => Some("id".into()),
        "orders" => Some("account_id".into()),
        _ => None,
    }
}

/// A compact, readable form of a merge for the tables below.
pub(super) fn describe(m: &Merge) -> String {
    let mut out = match &m.mode {
        Mode::Rows { hidden: 0 } => "rows".to_owned(),
        Mode::Rows { hidden } => format!("rows+{hidden}"),
        Mode::Distinct => "distinct".to_owned(),
        Mode::Aggregate(a) => {
            let slots: Vec<String> = a
                .slots
                .iter()
                .map(|s| match s {
                    Slot::Key => "key".to_owned(),
                    Slot::Any => "any".to_owned(),
                    Slot::Count => "count".to_owned(),
                    Slot::Sum => "sum".to_owned(),
                    Slot::Min => "min".to_owned(),
                    Slot::Max => "max".to_owned(),
                    Slot::Avg { count_column } => format!("avg/{count_column}"),
                })
                .collect();
            format!(
                "{} [{}] {}",
                if a.grouped { "group" } else { "agg" },
                slots.join(","),
                a.visible
            )
        }
    };
    for k in &m.order {
        let col = match k.column {
            SortColumn::Front(i) => format!("F{i}"),
            SortColumn::Back(i) => format!("B{i}"),
        };
        out.push_str(&format!(
            " | {col} {}{}{}",
            if k.descending { "desc" } else { "asc" },
            if k.nulls_first { " nf" } else { " nl" },
            if k.c_collation { " C" } else { "" }
        ));
    }
    if let Some(n) = m.limit {
        out.push_str(&format!(" | limit {n}"));
    }
    if m.offset > 0 {
        out.push_str(&format!(" | offset {}", m.offset));
    }
    out
}
