//! INSERT: into a reference table on every shard; into a sharded table by the key of each VALUES row, with
//! the per-shard INSERT texts when the rows go to several shards (each row's original text kept, the
//! parameters renumbered per text); INSERT ... SELECT when the rows provably stay on their shard.

use std::collections::{BTreeMap, BTreeSet};

use sqlparser::ast::{Expr, Insert, OnConflictAction, OnInsert, SetExpr, TableObject};

use super::keys::{Operand, operand, shard_of, show};
use super::query::{Attach, Decision, Walker};
use super::rules::{ShardedTable, TableRef, name_parts};
use super::utility::finish;
use super::{Ctx, ShardPlan, ShardTarget, refuse};
use crate::cluster::ShardId;
use crate::protocol::messages::ProxyError;
use crate::router::split::{Lexer, TokKind};

pub(super) fn plan_insert(sql: &str, insert: &Insert, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    let TableObject::TableName(name) = &insert.table else {
        return Err(refuse("INSERT into a table function", "insert into a table"));
    };
    let t = match ctx.rules.resolve_object(name) {
        TableRef::Sharded(i) => &ctx.rules.tables[i],
        TableRef::Ambiguous(i) => {
            let t = &ctx.rules.tables[i];
            return Err(refuse(
                format!(
                    "table name \"{name}\" is ambiguous on a sharded fleet: the sharded table {} or a table of that \
                     name in another schema",
                    t.display()
                ),
                format!("qualify it with its schema, e.g. {}", t.display()),
            ));
        }
        TableRef::Reference => return reference_insert(sql, insert, name.to_string(), ctx),
    };
    let columns: Vec<String> = insert
        .columns
        .iter()
        .map(|c| name_parts(c).pop().unwrap_or_default())
        .collect();
    if columns.is_empty() {
        return Err(refuse(
            format!(
                "INSERT into the sharded table {} needs a column list naming its shard key {}",
                t.display(),
                t.column
            ),
            format!(
                "list the columns: INSERT INTO {} ({}, ...) VALUES (...)",
                t.display(),
                t.column
            ),
        ));
    }
    let Some(key) = columns.iter().position(|c| *c == t.column) else {
        return Err(missing_key(t));
    };
    if let Some(OnInsert::OnConflict(oc)) = &insert.on
        && let OnConflictAction::DoUpdate(du) = &oc.action
        && du
            .assignments
            .iter()
            .any(|a| a.target.to_string().to_lowercase().ends_with(&t.column))
    {
        return Err(refuse(
            format!(
                "changing the shard key column {} would move the row to another shard",
                t.key_display()
            ),
            "delete the row and insert it with its new key instead",
        ));
    }
    let Some(source) = &insert.source else {
        return Err(missing_key(t));
    };
    match source.body.as_ref() {
        SetExpr::Values(values) if source.with.is_none() => {
            let rows: Vec<&Vec<Expr>> = values.rows.iter().map(|r| &r.content).collect();
            values_insert(sql, insert, t, key, &rows, ctx)
        }
        _ => select_insert(sql, insert, t, key, ctx),
    }
}

fn missing_key(t: &ShardedTable) -> ProxyError {
    refuse(
        format!(
            "INSERT into the sharded table {} must give its shard key {}: pgfleet places each row by it",
            t.display(),
            t.column
        ),
        format!(
            "give {} a value in every row (a constant or a parameter, not DEFAULT); cluster-unique ids for rows \
             without one are not available yet",
            t.key_display()
        ),
    )
}

fn reference_insert(
    sql: &str,
    insert: &Insert,
    table: String,
    ctx: &Ctx<'_>,
) -> Result<ShardPlan, ProxyError> {
    let mut w = Walker::new(ctx);
    if let Some(source) = &insert.source {
        w.query(source, Attach::Top, "INSERT source")?;
    }
    w.reference_writes.push(table);
    finish(sql, w, ctx)
}

/// Walks the expressions of an INSERT outside its key (other columns, ON CONFLICT, RETURNING) for
/// subqueries: one reading a sharded table must be pinned to the rows' shard.
fn check_loose(
    insert: &Insert,
    rows: &[&Vec<Expr>],
    key: usize,
    shard: Option<ShardId>,
    ctx: &Ctx<'_>,
) -> Result<(), ProxyError> {
    let mut exprs: Vec<&Expr> = Vec::new();
    for row in rows {
        exprs.extend(row.iter().enumerate().filter(|(i, _)| *i != key).map(|(_, e)| e));
    }
    if let Some(OnInsert::OnConflict(oc)) = &insert.on
        && let OnConflictAction::DoUpdate(du) = &oc.action
    {
        exprs.extend(du.assignments.iter().map(|a| &a.value));
        exprs.extend(du.selection.iter());
    }
    let mut w = Walker::new(ctx);
    w.loose_exprs(&exprs)?;
    let returning: Vec<&Expr> = insert
        .returning
        .iter()
        .flatten()
        .filter_map(|i| match i {
            sqlparser::ast::SelectItem::UnnamedExpr(e)
            | sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. } => Some(e),
            _ => None,
        })
        .collect();
    w.loose_exprs(&returning)?;
    if !w.has_sharded() {
        return Ok(());
    }
    let label = w.insts[0].label.clone();
    let pinned = match w.decide() {
        Ok(Decision::Shards(Some(set), _)) => {
            set.len() <= 1 && shard.is_some_and(|s| set.iter().all(|x| *x == s))
        }
        _ => false,
    };
    if pinned {
        Ok(())
    } else {
        Err(refuse(
            format!(
                "a subquery on the sharded table {label} inside an INSERT is not pinned to the shard of the inserted rows"
            ),
            "read the value first, or pin the subquery to the row's shard with a condition on its shard key",
        ))
    }
}

fn values_insert(
    sql: &str,
    insert: &Insert,
    t: &ShardedTable,
    key: usize,
    rows: &[&Vec<Expr>],
    ctx: &Ctx<'_>,
) -> Result<ShardPlan, ProxyError> {
    let mut needs = BTreeSet::new();
    let mut row_shards = Vec::with_capacity(rows.len());
    let mut texts = Vec::new();
    for (r, row) in rows.iter().enumerate() {
        let Some(e) = row.get(key) else {
            return Err(ProxyError::error(
                "42601",
                "INSERT has more target columns than expressions",
            ));
        };
        if matches!(e, Expr::Identifier(id) if id.quote_style.is_none() && id.value.eq_ignore_ascii_case("default"))
        {
            return Err(missing_key(t));
        }
        match operand(e, t.key_type, ctx)? {
            Operand::Value(v, text) => {
                row_shards.push(shard_of(&v, ctx));
                if texts.len() < 4 {
                    // A parameter shows its number and value; a literal shows as the value it parses to.
                    texts.push(if text.starts_with('$') { text } else { show(&v) });
                }
            }
            Operand::Unknown(n) => {
                needs.insert(n);
            }
            Operand::Other => {
                return Err(refuse(
                    format!(
                        "the shard key {} of row {} of this INSERT must be a constant or a parameter",
                        t.key_display(),
                        r + 1
                    ),
                    "compute the key in the client, or send it as a parameter",
                ));
            }
        }
    }
    if !needs.is_empty() {
        let list: Vec<String> = needs.iter().map(|n| format!("${n}")).collect();
        let mut plan = ShardPlan::new(
            ShardTarget::All,
            true,
            format!(
                "INSERT into {}: shard key {} from {}, known at Bind",
                t.display(),
                t.key_display(),
                list.join(", ")
            ),
        );
        plan.needs_params = needs.into_iter().collect();
        return Ok(plan);
    }
    let set: BTreeSet<ShardId> = row_shards.iter().copied().collect();
    let values = if rows.len() <= texts.len() {
        texts.join(", ")
    } else {
        format!("{} rows", rows.len())
    };
    let reason = format!(
        "INSERT into {} ({} = {values}) -> {}",
        t.display(),
        t.key_display(),
        super::shards_text(&set)
    );
    if set.len() == 1 {
        check_loose(insert, rows, key, set.iter().next().copied(), ctx)?;
        return Ok(ShardPlan::new(ShardTarget::of_set(&set), true, reason));
    }
    check_loose(insert, rows, key, None, ctx).map_err(|_| {
        refuse(
            "a multi-row INSERT over several shards with a subquery on a sharded table",
            "insert each shard's rows in a statement of its own",
        )
    })?;
    let Some(split) = split_rows(sql, &row_shards) else {
        return Err(refuse(
            "pgfleet could not find the rows of this multi-row INSERT in its text to split them by shard",
            "insert each shard's rows in a statement of its own",
        ));
    };
    let mut plan = ShardPlan::new(ShardTarget::of_set(&set), true, reason);
    let mut texts = Vec::with_capacity(split.len());
    let mut params = Vec::with_capacity(split.len());
    for (shard, text, numbers) in split {
        texts.push((shard, text));
        params.push(numbers);
    }
    plan.split = Some(texts);
    plan.split_params = Some(params);
    Ok(plan)
}

/// The per-shard texts of a multi-row INSERT: the text before the first row, that shard's rows (as
/// written) separated by commas, the text after the last row; parameters renumbered from `$1` in order of
/// appearance, with the original numbers each text takes. `None` when the rows are not found as written.
fn split_rows(sql: &str, row_shards: &[ShardId]) -> Option<Vec<(ShardId, String, Vec<usize>)>> {
    let toks: Vec<_> = Lexer::new(sql).filter(|t| t.kind != TokKind::Comment).collect();
    let mut depth = 0usize;
    let mut at = None;
    for (i, t) in toks.iter().enumerate() {
        match (t.kind, t.text(sql)) {
            (TokKind::Punct, "(") => depth += 1,
            (TokKind::Punct, ")") => depth = depth.saturating_sub(1),
            (TokKind::Word, w) if depth == 0 && w.eq_ignore_ascii_case("values") => {
                at = Some(i + 1);
                break;
            }
            _ => {}
        }
    }
    let mut i = at?;
    let mut rows = Vec::new();
    loop {
        let open = toks.get(i)?;
        if open.text(sql) != "(" {
            return None;
        }
        let mut d = 0usize;
        let mut j = i;
        loop {
            let t = toks.get(j)?;
            match (t.kind, t.text(sql)) {
                (TokKind::Punct, "(") => d += 1,
                (TokKind::Punct, ")") => {
                    d -= 1;
                    if d == 0 {
                        break;
                    }
                }
                _ => {}
            }
            j += 1;
        }
        rows.push((open.start, toks[j].end));
        if toks
            .get(j + 1)
            .is_some_and(|t| t.kind == TokKind::Punct && t.text(sql) == ",")
        {
            i = j + 2;
        } else {
            break;
        }
    }
    if rows.len() != row_shards.len() {
        return None;
    }
    let prefix = &sql[..rows[0].0];
    let suffix = &sql[rows[rows.len() - 1].1..];
    let mut by_shard: BTreeMap<ShardId, Vec<&str>> = BTreeMap::new();
    for (range, shard) in rows.iter().zip(row_shards) {
        by_shard.entry(*shard).or_default().push(&sql[range.0..range.1]);
    }
    Some(
        by_shard
            .into_iter()
            .map(|(shard, texts)| {
                let text = format!("{prefix}{}{suffix}", texts.join(", "));
                let (text, params) = renumber(&text);
                (shard, text, params)
            })
            .collect(),
    )
}

/// `$n` renumbered from `$1` in order of first appearance; returns the new text and, for each new number,
/// the original one.
fn renumber(text: &str) -> (String, Vec<usize>) {
    let mut out = String::with_capacity(text.len());
    let mut order: Vec<usize> = Vec::new();
    let mut last = 0;
    for t in Lexer::new(text) {
        if t.kind != TokKind::Param {
            continue;
        }
        let Ok(n) = t.text(text)[1..].parse::<usize>() else {
            continue;
        };
        let new = match order.iter().position(|o| *o == n) {
            Some(p) => p + 1,
            None => {
                order.push(n);
                order.len()
            }
        };
        out.push_str(&text[last..t.start]);
        out.push_str(&format!("${new}"));
        last = t.end;
    }
    out.push_str(&text[last..]);
    (out, order)
}

/// INSERT ... SELECT into a sharded table: accepted when every row provably goes to the shard that runs
/// it — a constant key with a source pinned to that key's shard (or reading only reference tables), or the
/// key of a co-located source table of the same key type, whose rows split by key.
fn select_insert(
    sql: &str,
    insert: &Insert,
    t: &ShardedTable,
    key: usize,
    ctx: &Ctx<'_>,
) -> Result<ShardPlan, ProxyError> {
    let refusal = || {
        refuse(
            format!(
                "INSERT ... SELECT into the sharded table {}: pgfleet cannot prove that each row stays on the shard \
                 that reads it",
                t.display()
            ),
            format!(
                "insert with VALUES, or select {} from a table sharded by a key of the same type ({}) in the shard \
                 key's position",
                t.key_display(),
                t.key_type.as_str()
            ),
        )
    };
    let Some(source) = &insert.source else {
        return Err(missing_key(t));
    };
    let SetExpr::Select(select) = source.body.as_ref() else {
        return Err(refusal());
    };
    let item = select.projection.get(key).ok_or_else(refusal)?;
    let key_expr = match item {
        sqlparser::ast::SelectItem::UnnamedExpr(e)
        | sqlparser::ast::SelectItem::ExprWithAlias { expr: e, .. } => e,
        _ => return Err(refusal()),
    };
    let mut w = Walker::new(ctx);
    let out = w.query(source, Attach::Top, "INSERT source")?;
    let constant = match operand(key_expr, t.key_type, ctx)? {
        Operand::Value(v, text) => Some((shard_of(&v, ctx), text)),
        Operand::Unknown(n) => {
            let mut plan = ShardPlan::new(
                ShardTarget::All,
                true,
                format!("INSERT into {}: shard key from ${n}, known at Bind", t.display()),
            );
            plan.needs_params = vec![n];
            return Ok(plan);
        }
        Operand::Other => None,
    };
    if let Some((shard, text)) = constant {
        if !w.has_sharded() {
            return Ok(ShardPlan::new(
                ShardTarget::One(shard),
                true,
                format!(
                    "INSERT into {} ({} = {text}) -> {shard}",
                    t.display(),
                    t.key_display()
                ),
            ));
        }
        return match w.decide()? {
            Decision::Shards(Some(set), reason) if set.iter().all(|s| *s == shard) => Ok(ShardPlan::new(
                ShardTarget::One(shard),
                true,
                format!(
                    "INSERT into {} ({} = {text}), source {reason}",
                    t.display(),
                    t.key_display()
                ),
            )),
            _ => Err(refusal()),
        };
    }
    let co_located = w
        .top_key(&out, key, &select.projection)
        .filter(|i| w.insts[*i].key_type == t.key_type && out.local);
    let Some(src) = co_located else {
        return Err(refusal());
    };
    let src_key = w.insts[src].key_display.clone();
    let mut plan = finish(sql, w, ctx)?;
    plan.write = true;
    plan.reason = format!(
        "INSERT into {} from {src_key} (co-located): {}",
        t.display(),
        plan.reason
    );
    Ok(plan)
}
