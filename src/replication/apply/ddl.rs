//! DDL carried by the event trigger's messages: which commands of a client's query string fired the trigger,
//! and what a replica runs for each.

use crate::router::classify::classify;
use crate::router::split::split_statements;

/// The commands of a client's query string that fire the DDL event trigger, in order, each with what the
/// replica must run for it (nothing for temporary objects and pgfleet's own machinery). Rows that a command
/// writes into a new table (CREATE TABLE AS, SELECT INTO) arrive through the change stream like any other
/// rows, so the replica creates such tables empty; materialized views are not in the stream, so they are
/// created and refreshed on the replica from its own (identical) data.
pub(super) fn ddl_commands(text: &str) -> Vec<Option<Vec<String>>> {
    let rules = crate::router::functions::FunctionRules::default();
    let mut out = Vec::new();
    for stmt in split_statements(text) {
        let upper = stmt.to_ascii_uppercase();
        let words = crate::router::split::first_keywords(stmt, 6);
        let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
        let d = classify(stmt, &rules);
        if !fires_event_trigger(&words, &upper, &d) {
            continue;
        }
        let temp = |w: &str| matches!(w, "TEMP" | "TEMPORARY");
        if upper.contains("PUBLICATION") || upper.contains("SUBSCRIPTION") {
            out.push(None);
        } else if word(0) == "CREATE"
            && (temp(word(1)) || matches!(word(1), "LOCAL" | "GLOBAL") && temp(word(2)))
        {
            // Temporary objects live only in the session that made them.
            out.push(None);
        } else if d.rule == crate::router::classify::Rule::SelectInto {
            out.push(
                select_into_target(stmt).map(|table| vec![stmt.to_owned(), format!("TRUNCATE {table}")]),
            );
        } else {
            // A replica transaction cannot build an index concurrently; the plain form gives the same index.
            let mut stmt = stmt.replace(" CONCURRENTLY", "").replace(" concurrently", "");
            if word(0) == "CREATE" && is_create_table_as(&stmt) {
                let trimmed = stmt.trim_end().trim_end_matches(';').trim_end().to_owned();
                let lower = trimmed.to_ascii_lowercase();
                stmt = if lower.ends_with("with no data") {
                    trimmed
                } else if lower.ends_with("with data") {
                    format!("{} WITH NO DATA", &trimmed[..trimmed.len() - "with data".len()])
                } else {
                    format!("{trimmed} WITH NO DATA")
                };
            }
            out.push(Some(vec![stmt]));
        }
    }
    out
}

/// Whether PostgreSQL fires `ddl_command_start` for a statement: CREATE/ALTER/DROP of most objects (not
/// databases, roles, tablespaces or event triggers), COMMENT, SECURITY LABEL, GRANT/REVOKE on objects,
/// IMPORT FOREIGN SCHEMA, REFRESH MATERIALIZED VIEW, SELECT INTO and CREATE TABLE AS.
fn fires_event_trigger(words: &[String], upper: &str, d: &crate::router::classify::Decision) -> bool {
    let word = |i: usize| words.get(i).map(String::as_str).unwrap_or("");
    match word(0) {
        "CREATE" | "ALTER" | "DROP" => {
            let object = words
                .iter()
                .skip(1)
                .map(String::as_str)
                .find(|w| {
                    !matches!(
                        *w,
                        "OR" | "REPLACE"
                            | "UNIQUE"
                            | "TEMP"
                            | "TEMPORARY"
                            | "UNLOGGED"
                            | "LOCAL"
                            | "GLOBAL"
                            | "MATERIALIZED"
                            | "RECURSIVE"
                            | "TRUSTED"
                            | "PROCEDURAL"
                            | "DEFAULT"
                    )
                })
                .unwrap_or("");
            !matches!(
                object,
                "DATABASE" | "ROLE" | "USER" | "GROUP" | "TABLESPACE" | "EVENT" | "SYSTEM"
            )
        }
        "COMMENT" | "SECURITY" | "IMPORT" | "REFRESH" => true,
        "GRANT" | "REVOKE" => upper.contains(" ON "),
        _ => d.rule == crate::router::classify::Rule::SelectInto,
    }
}

/// CREATE [UNLOGGED] TABLE ... AS (not a materialized view, whose rows are not in the stream): an `AS` at
/// parenthesis depth 0 after the table name (column defaults and generated columns sit inside parentheses).
fn is_create_table_as(stmt: &str) -> bool {
    use crate::router::split::{Lexer, TokKind};
    let toks: Vec<_> = Lexer::new(stmt).filter(|t| t.kind != TokKind::Comment).collect();
    let Some(table_at) = toks
        .iter()
        .position(|t| t.kind == TokKind::Word && t.text(stmt).eq_ignore_ascii_case("TABLE"))
    else {
        return false;
    };
    let mut depth = 0i32;
    for t in &toks[table_at + 1..] {
        match t.text(stmt) {
            "(" => depth += 1,
            ")" => depth -= 1,
            w if depth == 0 && t.kind == TokKind::Word && w.eq_ignore_ascii_case("AS") => return true,
            _ => {}
        }
    }
    false
}

/// The table a non-temporary `SELECT ... INTO [UNLOGGED] [TABLE] name` creates.
fn select_into_target(stmt: &str) -> Option<String> {
    use crate::router::split::{Lexer, TokKind};
    let toks: Vec<_> = Lexer::new(stmt).filter(|t| t.kind != TokKind::Comment).collect();
    let at = toks
        .iter()
        .position(|t| t.kind == TokKind::Word && t.text(stmt).eq_ignore_ascii_case("INTO"))?;
    let mut i = at + 1;
    while let Some(t) = toks.get(i) {
        let w = t.text(stmt).to_ascii_uppercase();
        match w.as_str() {
            "TEMP" | "TEMPORARY" => return None,
            "UNLOGGED" | "TABLE" => i += 1,
            _ => break,
        }
    }
    // name, or schema.name: identifiers separated by single dots.
    let ident = |t: Option<&crate::router::split::Tok>| {
        t.filter(|t| matches!(t.kind, TokKind::Word | TokKind::QuotedIdent))
            .map(|t| t.text(stmt).to_owned())
    };
    let mut name = ident(toks.get(i))?;
    while toks.get(i + 1).is_some_and(|t| t.text(stmt) == ".") {
        name.push('.');
        name.push_str(&ident(toks.get(i + 2))?);
        i += 2;
    }
    Some(name)
}
