//! Utility commands with a shape of their own: CREATE (temporary objects pin the session) and the
//! statements that wrap another one, EXPLAIN, DECLARE and COPY.

use super::query::names_unlogged;
use super::stmt::Stmt;
use super::{Pin, Rule, Target, Verdict, classify_stmt};
use crate::router::functions::FunctionRules;

pub(super) fn create(s: Stmt<'_>) -> Verdict {
    let mut i = 1;
    if s.kw(i, "OR") && s.kw(i + 1, "REPLACE") {
        i += 2;
    }
    if s.kw(i, "GLOBAL") || s.kw(i, "LOCAL") {
        i += 1;
    }
    // A view over a temporary table silently becomes temporary too, so any pg_temp reference counts.
    let temp = s.kw(i, "TEMP") || s.kw(i, "TEMPORARY") || (0..s.len()).any(|j| s.is_pg_temp(j));
    let code = s.kw(i, "FUNCTION") || s.kw(i, "PROCEDURE") || s.kw(i, "EXTENSION");
    Verdict::primary(Rule::Ddl)
        .ddl()
        .code_ddl(code)
        .pin(temp.then_some(Pin::TempTable))
}

pub(super) fn explain(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    let mut analyze = false;
    let mut i = 1;
    if s.punct(1, "(") {
        let Some(close) = s.close_paren(1) else {
            return Verdict::unparsed();
        };
        let mut option = 2;
        while option < close {
            let end = (option..close).find(|&j| s.punct(j, ",")).unwrap_or(close);
            if s.kw(option, "ANALYZE") || s.kw(option, "ANALYSE") {
                let value = s.text(option + 1).trim_matches('\'').to_ascii_lowercase();
                analyze = end == option + 1 || !matches!(value.as_str(), "false" | "off" | "0");
            }
            option = end + 1;
        }
        i = close + 1;
    } else {
        while let Some(word) = s.kw_in(i, &["ANALYZE", "ANALYSE", "VERBOSE"]) {
            analyze |= word != "VERBOSE";
            i += 1;
        }
    }
    if i >= s.len() {
        return Verdict::unparsed();
    }
    let Some(inner) = s.inner(i, s.len()) else {
        return Verdict::unparsed();
    };
    let inner = classify_stmt(inner, funcs).nested();
    if analyze {
        // EXPLAIN ANALYZE runs the statement.
        inner
    } else if matches!(
        inner.rule,
        Rule::Unparsed | Rule::TooDeep | Rule::UnloggedRelation
    ) {
        // A standby refuses even to plan a statement over an unlogged relation.
        inner
    } else {
        Verdict::replica(Rule::Read)
    }
}

pub(super) fn declare(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    if !s.is_name(1) {
        return Verdict::unparsed();
    }
    let mut i = 2;
    while s
        .kw_in(i, &["BINARY", "ASENSITIVE", "INSENSITIVE", "NO", "SCROLL"])
        .is_some()
    {
        i += 1;
    }
    if !s.kw(i, "CURSOR") {
        return Verdict::unparsed();
    }
    i += 1;
    let mut hold = false;
    if (s.kw(i, "WITH") || s.kw(i, "WITHOUT")) && s.kw(i + 1, "HOLD") {
        hold = s.kw(i, "WITH");
        i += 2;
    }
    if !s.kw(i, "FOR") || i + 1 >= s.len() {
        return Verdict::unparsed();
    }
    let Some(inner) = s.inner(i + 1, s.len()) else {
        return Verdict::unparsed();
    };
    let inner = classify_stmt(inner, funcs).nested();
    if !hold {
        return inner;
    }
    let rule = if inner.target == Target::Primary {
        inner.rule
    } else {
        Rule::Utility("DECLARE ... WITH HOLD")
    };
    Verdict::primary(rule).pin(Some(Pin::HoldCursor)).pin(inner.pin)
}

pub(super) fn copy(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    let mut query = None;
    let mut unlogged = false;
    let i = if s.punct(1, "(") {
        let Some(close) = s.close_paren(1) else {
            return Verdict::unparsed();
        };
        query = Some((2, close));
        close + 1
    } else {
        let Some(mut i) = s.skip_name(1) else {
            return Verdict::unparsed();
        };
        unlogged = names_unlogged(s.range(1, i), funcs);
        if s.punct(i, "(") {
            let Some(close) = s.close_paren(i) else {
                return Verdict::unparsed();
            };
            i = close + 1;
        }
        i
    };
    if s.kw(i, "FROM") {
        return Verdict::primary(Rule::Write("COPY FROM"));
    }
    if !s.kw(i, "TO") {
        return Verdict::unparsed();
    }
    // COPY TO a file or program writes on the server's host: keep that on one well-known node.
    if !s.kw(i + 1, "STDOUT") {
        return Verdict::primary(Rule::Utility("COPY TO a server file"));
    }
    match query.map(|(from, to)| s.inner(from, to)) {
        None if unlogged => Verdict::primary(Rule::UnloggedRelation),
        None => Verdict::replica(Rule::Read),
        Some(Some(q)) if q.len() > 0 => classify_stmt(q, funcs).nested(),
        Some(_) => Verdict::unparsed(),
    }
}
