//! One statement's plan by its kind: the statements that are not about data placement (transaction
//! control, settings, cursors' FETCH), DDL and maintenance on every shard, EXPLAIN and DECLARE by their
//! query, COPY, and the data statements sqlparser parses (handed to `query` and `insert`). Utility
//! statements are recognised by their first keywords, as sqlparser does not know many of them.

use sqlparser::ast::{CopySource, CopyTarget, SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::query::{Attach, Decision, Walker};
use super::rules::TableRef;
use super::{CopyIn, Ctx, ShardPlan, ShardTarget, refuse};
use crate::protocol::messages::ProxyError;
use crate::router::depth::too_deep;
use crate::router::split::{Lexer, TokKind, first_keywords};

/// Statements the session handles itself, whatever the shards.
const SESSION: &[&str] = &[
    "BEGIN",
    "START",
    "COMMIT",
    "END",
    "ROLLBACK",
    "ABORT",
    "SAVEPOINT",
    "RELEASE",
    "SET",
    "RESET",
    "SHOW",
    "DISCARD",
    "LISTEN",
    "UNLISTEN",
    "NOTIFY",
    "DEALLOCATE",
    "FETCH",
    "MOVE",
    "CLOSE",
    "LOAD",
];

/// Schema changes and maintenance: run on every shard.
const DDL: &[&str] = &[
    "CREATE",
    "ALTER",
    "DROP",
    "TRUNCATE",
    "COMMENT",
    "GRANT",
    "REVOKE",
    "SECURITY",
    "REINDEX",
    "CLUSTER",
    "VACUUM",
    "ANALYZE",
    "ANALYSE",
    "REFRESH",
    "IMPORT",
    "REASSIGN",
    "CHECKPOINT",
];

/// Whether a piece of SQL text contains a query (a SELECT, VALUES, TABLE or WITH keyword): the check
/// for parts of the syntax tree the walk does not look into.
pub(super) fn mentions_query(text: &str) -> bool {
    Lexer::new(text).any(|t| {
        t.kind == TokKind::Word
            && ["select", "values", "table", "with"]
                .iter()
                .any(|k| t.text(text).eq_ignore_ascii_case(k))
    })
}

/// The first sharded table whose name appears as a word of `sql`.
fn mentions_sharded<'r>(sql: &str, ctx: &Ctx<'r>) -> Option<&'r super::ShardedTable> {
    Lexer::new(sql).find_map(|t| {
        let word = match t.kind {
            TokKind::Word => t.text(sql).to_lowercase(),
            TokKind::QuotedIdent => t.text(sql).trim_matches('"').replace("\"\"", "\""),
            _ => return None,
        };
        ctx.rules.names_sharded(&word)
    })
}

/// The plan of one statement.
pub(super) fn plan_statement(sql: &str, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    let kw = first_keywords(sql, 4);
    let first = kw.first().map(String::as_str).unwrap_or("");
    let second = kw.get(1).map(String::as_str).unwrap_or("");
    match first {
        "PREPARE" if second == "TRANSACTION" => {
            return Ok(ShardPlan::session("PREPARE TRANSACTION: the session's"));
        }
        "COMMIT" | "ROLLBACK" if second == "PREPARED" => {
            return Ok(ShardPlan::session(format!("{first} PREPARED: the session's")));
        }
        _ if SESSION.contains(&first) => return Ok(ShardPlan::session(format!("{first}: the session's"))),
        "PREPARE" | "EXECUTE" => {
            return Err(refuse(
                format!(
                    "SQL-level {first} is not supported on a sharded fleet: pgfleet cannot see the shard key of the statement EXECUTE runs"
                ),
                "use protocol-level prepared statements (Parse/Bind), which every driver offers",
            ));
        }
        "CALL" | "DO" => {
            return Err(refuse(
                format!(
                    "{first} is not supported on a sharded fleet: pgfleet cannot see which shards the code it runs touches"
                ),
                "run the statements it contains directly, so that each is routed by its shard key",
            ));
        }
        "LOCK" => {
            return Ok(ShardPlan::new(ShardTarget::All, true, "LOCK: every shard"));
        }
        "EXPLAIN" => return explain(sql, ctx),
        "DECLARE" => return declare(sql, ctx),
        "MERGE" => return merge(sql, ctx),
        _ if DDL.contains(&first) => return ddl(sql, &kw, ctx),
        "TABLE" => return plan_statement(&format!("SELECT * FROM {}", after_keywords(sql, 1)), ctx),
        _ => {}
    }
    if too_deep(sql) {
        return Err(refuse(
            "statement too deeply nested for pgfleet to find its shards",
            "split the statement into simpler ones",
        ));
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, sql) {
        Ok(s) => s,
        Err(e) => {
            return Err(refuse(
                format!(
                    "pgfleet cannot parse this statement, so it cannot tell which shards it touches ({e})"
                ),
                "rewrite it in a form pgfleet parses, or run it through a non-sharded pool",
            ));
        }
    };
    let [statement] = statements.as_slice() else {
        return Err(refuse(
            "expected one statement",
            "send the statements one at a time",
        ));
    };
    match statement {
        Statement::Insert(insert) => super::insert::plan_insert(sql, insert, ctx),
        Statement::Copy {
            source, to, target, ..
        } => copy(source, *to, target, ctx),
        Statement::Query(q) if matches!(q.body.as_ref(), SetExpr::Insert(_)) && q.with.is_none() => {
            let SetExpr::Insert(Statement::Insert(insert)) = q.body.as_ref() else {
                return Err(refuse("unexpected INSERT form", "write a plain INSERT"));
            };
            super::insert::plan_insert(sql, insert, ctx)
        }
        Statement::Query(_) | Statement::Update(_) | Statement::Delete(_) => plan_data(sql, statement, ctx),
        _ => Err(refuse(
            format!("pgfleet does not route this kind of statement on a sharded fleet ({first})"),
            "run it on each shard through its own connection",
        )),
    }
}

/// SELECT, UPDATE, DELETE (with any WITH).
pub(super) fn plan_data(sql: &str, statement: &Statement, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    let mut w = Walker::new(ctx);
    match statement {
        Statement::Query(q) => {
            if let SetExpr::Insert(_) = q.body.as_ref() {
                return Err(refuse(
                    "INSERT with a WITH clause is not supported on a sharded fleet",
                    "run the WITH part and the INSERT as separate statements",
                ));
            }
            w.query(q, Attach::Top, "query")?;
        }
        other => w.dml(other, Attach::Top)?,
    }
    finish(sql, w, ctx)
}

/// The plan from a finished walk: reference-only statements, reference writes, sharded routing.
pub(super) fn finish(sql: &str, mut w: Walker<'_, '_>, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    if let Some(what) = &w.opaque
        && let Some(t) = mentions_sharded(sql, ctx)
    {
        return Err(refuse(
            format!(
                "pgfleet cannot tell which shards {what} touches, and the statement names the sharded table {}",
                t.display()
            ),
            "rewrite it with plain joins and subqueries, or split it into statements of their own",
        ));
    }
    if w.select_into {
        if w.has_sharded() {
            return Err(refuse(
                "SELECT INTO from a sharded table would create a different table on each shard",
                "create the table, then INSERT ... SELECT within one shard, or read the rows into the client",
            ));
        }
        return Ok(ShardPlan::everywhere("SELECT INTO creates a table: every shard"));
    }
    if let Some(table) = w.reference_writes.first().cloned() {
        if w.has_sharded() {
            let sharded = w.insts[0].label.clone();
            return Err(refuse(
                format!(
                    "statement writes reference table {table} from the sharded table {sharded}: each shard's copy of {table} would get different rows"
                ),
                format!("read the rows of {sharded} into the client, then write {table} with constants"),
            ));
        }
        return Ok(ShardPlan::everywhere(format!(
            "writes reference table {table}: every shard"
        )));
    }
    let write = w.sharded_writes || w.locks;
    if !w.has_sharded() {
        let reason = if mentions_any_table(sql) {
            "reference tables only: any shard"
        } else {
            "no tables: any shard"
        };
        return Ok(ShardPlan::new(ShardTarget::Any, write, reason));
    }
    let Decision::Shards(set, reason) = w.decide()?;
    let mut plan = match set {
        Some(set) => ShardPlan::new(ShardTarget::of_set(&set), write, reason),
        None => ShardPlan::new(ShardTarget::All, write, reason),
    };
    if matches!(plan.target, ShardTarget::All) {
        plan.needs_params = w.needs.iter().copied().collect();
    }
    Ok(plan)
}

fn mentions_any_table(sql: &str) -> bool {
    Lexer::new(sql).any(|t| t.kind == TokKind::Word && t.text(sql).eq_ignore_ascii_case("from"))
        || first_keywords(sql, 1)
            .first()
            .is_some_and(|k| k == "UPDATE" || k == "DELETE")
}

/// The text after the first `n` words.
fn after_keywords(sql: &str, n: usize) -> &str {
    let end = Lexer::new(sql)
        .filter(|t| t.kind != TokKind::Comment)
        .nth(n.saturating_sub(1))
        .map_or(sql.len(), |t| t.end);
    &sql[end..]
}

fn ddl(sql: &str, kw: &[String], ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    let words: Vec<String> = Lexer::new(sql)
        .filter(|t| t.kind == TokKind::Word)
        .map(|t| t.text(sql).to_ascii_uppercase())
        .collect();
    let first = kw.first().map(String::as_str).unwrap_or("");
    let creates_with_rows = first == "CREATE"
        && (words.iter().take(6).any(|w| w == "MATERIALIZED")
            || (words.iter().take(6).any(|w| w == "TABLE") && words.iter().any(|w| w == "AS")));
    if creates_with_rows && let Some(t) = mentions_sharded(sql, ctx) {
        return Err(refuse(
            format!(
                "CREATE ... AS reading the sharded table {} would fill each shard's copy with different rows",
                t.display()
            ),
            "create the table empty, then fill it with INSERT statements routed by key",
        ));
    }
    let mut plan = ShardPlan::everywhere(format!("DDL ({first}): every shard"));
    // These cannot run inside a transaction block, so not under two-phase commit either.
    plan.outside_transaction = outside_transaction(&words);
    Ok(plan)
}

/// Whether a statement (its words, upper case) refuses to run inside a transaction block: VACUUM, the
/// CONCURRENTLY forms, REINDEX of a database or the system catalogs, CREATE/DROP DATABASE and TABLESPACE,
/// ALTER SYSTEM.
fn outside_transaction(words: &[String]) -> bool {
    let w = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match w(0) {
        "VACUUM" => true,
        "REINDEX" => {
            matches!(w(1), "DATABASE" | "SYSTEM") || words.iter().take(5).any(|x| x == "CONCURRENTLY")
        }
        "CREATE" | "DROP" | "ALTER" => {
            matches!(w(1), "DATABASE" | "TABLESPACE" | "SYSTEM")
                || words.iter().take(5).any(|x| x == "CONCURRENTLY")
        }
        _ => false,
    }
}

fn explain(sql: &str, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    // EXPLAIN [ANALYZE] [VERBOSE] stmt, or EXPLAIN (options) stmt.
    let mut toks = Lexer::new(sql)
        .filter(|t| t.kind != TokKind::Comment)
        .skip(1)
        .peekable();
    let mut analyze = false;
    let mut start = sql.len();
    let mut depth = 0usize;
    while let Some(t) = toks.next() {
        let text = t.text(sql);
        if depth > 0 {
            if text == "(" {
                depth += 1;
            } else if text == ")" {
                depth -= 1;
            } else if text.eq_ignore_ascii_case("analyze") || text.eq_ignore_ascii_case("analyse") {
                let off = toks.peek().is_some_and(|n| {
                    let v = n.text(sql);
                    v.eq_ignore_ascii_case("false") || v.eq_ignore_ascii_case("off") || v == "0"
                });
                analyze |= !off;
            }
            continue;
        }
        if text == "(" {
            depth = 1;
        } else if ["analyze", "analyse"]
            .iter()
            .any(|k| text.eq_ignore_ascii_case(k))
        {
            analyze = true;
        } else if !text.eq_ignore_ascii_case("verbose") {
            start = t.start;
            break;
        }
    }
    let mut inner = plan_statement(&sql[start..], ctx)?;
    if analyze && inner.split.is_some() {
        return Err(refuse(
            "EXPLAIN ANALYZE of an INSERT whose rows go to several shards",
            "explain the INSERT of each shard's rows on its own",
        ));
    }
    inner.write &= analyze;
    inner.split = None;
    inner.split_params = None;
    inner.reason = format!("EXPLAIN: {}", inner.reason);
    Ok(inner)
}

fn declare(sql: &str, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    let start = Lexer::new(sql)
        .find(|t| t.kind == TokKind::Word && t.text(sql).eq_ignore_ascii_case("for"))
        .map_or(sql.len(), |t| t.end);
    let inner = plan_statement(&sql[start..], ctx)?;
    match inner.target {
        ShardTarget::One(_) | ShardTarget::Any => Ok(ShardPlan {
            reason: format!("DECLARE: {}", inner.reason),
            ..inner
        }),
        _ => Err(refuse(
            format!("a cursor over several shards is not supported ({})", inner.reason),
            "pin the cursor's query to one shard with a condition on the shard key, or read it without a cursor",
        )),
    }
}

fn merge(sql: &str, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    if let Some(t) = mentions_sharded(sql, ctx) {
        return Err(refuse(
            format!("MERGE naming the sharded table {} is not supported", t.display()),
            "use INSERT ... ON CONFLICT, UPDATE or DELETE with a condition on the shard key",
        ));
    }
    Ok(ShardPlan::everywhere("MERGE on reference tables: every shard"))
}

fn copy(source: &CopySource, to: bool, target: &CopyTarget, ctx: &Ctx<'_>) -> Result<ShardPlan, ProxyError> {
    match source {
        CopySource::Query(q) => {
            let stmt = Statement::Query(q.clone());
            let inner = plan_data(&q.to_string(), &stmt, ctx)?;
            Ok(ShardPlan {
                reason: format!("COPY (query) TO: {}", inner.reason),
                ..inner
            })
        }
        CopySource::Table { table_name, columns } if to => {
            let sql = format!("SELECT * FROM {table_name}");
            let _ = columns;
            let inner = plan_statement(&sql, ctx)?;
            Ok(ShardPlan {
                reason: format!("COPY TO: {}", inner.reason),
                ..inner
            })
        }
        CopySource::Table { table_name, columns } => match ctx.rules.resolve_object(table_name) {
            TableRef::Reference => Ok(ShardPlan::everywhere(format!(
                "COPY FROM into reference table {table_name}: every shard"
            ))),
            TableRef::Ambiguous(_) | TableRef::Sharded(_) => {
                let (TableRef::Sharded(i) | TableRef::Ambiguous(i)) = ctx.rules.resolve_object(table_name)
                else {
                    return Err(refuse("unexpected table", "qualify the table name"));
                };
                let t = &ctx.rules.tables[i];
                if !matches!(target, CopyTarget::Stdin) {
                    return Err(refuse(
                        format!(
                            "COPY into the sharded table {} from a server file or program",
                            t.display()
                        ),
                        "use COPY ... FROM STDIN, whose rows pgfleet splits by shard key",
                    ));
                }
                let names: Vec<String> = columns.iter().map(super::rules::fold).collect();
                let Some(key_index) = names.iter().position(|c| *c == t.column) else {
                    return Err(refuse(
                        format!(
                            "COPY into the sharded table {} needs a column list naming its shard key {}",
                            t.display(),
                            t.column
                        ),
                        format!(
                            "list the columns: COPY {} ({}, ...) FROM STDIN",
                            t.display(),
                            t.column
                        ),
                    ));
                };
                let mut plan = ShardPlan::new(
                    ShardTarget::All,
                    true,
                    format!(
                        "COPY FROM into {}: rows split by {}",
                        t.display(),
                        t.key_display()
                    ),
                );
                plan.copy_in = Some(CopyIn {
                    table: t.display(),
                    key_index,
                    key_type: t.key_type,
                });
                Ok(plan)
            }
        },
    }
}
