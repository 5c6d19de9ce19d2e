//! What a user function's or procedure's body leaves in the session that calls it: whether it changes a
//! setting for the rest of the session (a SET or RESET statement, `set_config(..., false)`, either run as
//! dynamic SQL). The catalog loader asks this of the bodies `functions::SETTING_FUNCTIONS_SQL` finds, and a
//! call of such a function (or a DO block whose code does so) pins its session to the node that ran it,
//! since the values are known only there.

use super::Pin;
use super::query::{arguments, string_value};
use super::stmt::{Stmt, paren_spans};
use crate::router::split::{Lexer, Tok, TokKind};

/// Keywords after which a PL/pgSQL statement begins.
const STATEMENT_STARTS: &[&str] = &["BEGIN", "THEN", "ELSE", "LOOP"];

/// What follows SET without making it a session's setting.
const NOT_SESSION: &[&str] = &["LOCAL", "TRANSACTION", "CONSTRAINTS"];

/// Whether running `body` may change a setting for the rest of the calling session. It errs towards yes: a
/// `set_config` whose `is_local` is not the constant `true`, and a string that begins like a SET or RESET
/// (dynamic SQL), count.
pub fn sets_session_setting(body: &str) -> bool {
    let toks: Vec<Tok> = Lexer::new(body).filter(|t| t.kind != TokKind::Comment).collect();
    let spans = paren_spans(body, &toks);
    let s = Stmt {
        src: body,
        toks: &toks,
        spans: &spans,
        nesting: 0,
    };
    (0..s.len()).any(|i| session_set_config(s, i) || set_statement(s, i) || dynamic_set(s, i))
}

/// A DO block whose code changes a setting for the session pins it as a call of such a function does.
pub(super) fn do_block_pin(s: Stmt<'_>) -> Option<Pin> {
    (1..s.len())
        .filter(|&i| s.kind(i) == Some(TokKind::Str))
        .filter_map(|i| string_value(s.text(i)))
        .any(|code| sets_session_setting(&code))
        .then_some(Pin::SettingFunction)
}

/// `set_config(name, value, is_local)` at `i`, with `is_local` other than `true`.
fn session_set_config(s: Stmt<'_>, i: usize) -> bool {
    if !(s.is_name(i) && s.punct(i + 1, "(") && s.ident(i) == "set_config") {
        return false;
    }
    if i >= 2 && s.punct(i - 1, ".") && s.ident(i - 2) != "pg_catalog" {
        return false;
    }
    let args = arguments(s, i + 1);
    !matches!(args.as_slice(), [_, _, (from, to)] if to - from == 1 && s.kw(*from, "TRUE"))
}

/// A SET or RESET statement at `i` (not an UPDATE's or ALTER's SET, which follow a name or keyword).
fn set_statement(s: Stmt<'_>, i: usize) -> bool {
    if !(s.kw(i, "SET") || s.kw(i, "RESET")) {
        return false;
    }
    let starts = i == 0 || s.punct(i - 1, ";") || s.kw_in(i - 1, STATEMENT_STARTS).is_some();
    starts && (s.kw(i, "RESET") || s.kw_in(i + 1, NOT_SESSION).is_none())
}

/// A string constant that begins like a SET or RESET statement or calls `set_config`: SQL the body may run
/// with EXECUTE.
fn dynamic_set(s: Stmt<'_>, i: usize) -> bool {
    if s.kind(i) != Some(TokKind::Str) {
        return false;
    }
    let Some(text) = string_value(s.text(i)) else {
        return false;
    };
    let lower = text.trim_start().to_ascii_lowercase();
    if lower.contains("set_config") {
        return true;
    }
    // The word alone is data ('reset' as a state); followed by anything, even a space before a
    // concatenation, it is a statement.
    let mut words = lower.split_whitespace();
    match (words.next(), words.next()) {
        (Some("reset"), _) => lower.len() > "reset".len(),
        (Some("set"), next) => {
            lower.len() > "set".len()
                && !next.is_some_and(|w| ["local", "transaction", "constraints"].contains(&w))
        }
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_change_a_setting_for_the_session() {
        let cases: &[(&str, bool)] = &[
            // PL/pgSQL, the common tenant setter.
            (
                "BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END",
                true,
            ),
            (
                "BEGIN PERFORM pg_catalog.set_config('app.tenant', t, false); END",
                true,
            ),
            // SQL function: the call's value is the function's result.
            ("SELECT set_config('app.tenant', $1, false)", true),
            // For the transaction only.
            ("SELECT set_config('app.tenant', $1, true)", false),
            ("BEGIN PERFORM set_config('app.tenant', t, TRUE); END", false),
            // Decided as it runs.
            ("BEGIN PERFORM set_config('app.tenant', t, is_local); END", true),
            // A user's own function of that name.
            ("SELECT app.set_config('x', 'y', false)", false),
            // SET and RESET statements.
            ("BEGIN SET search_path = app, public; END", true),
            ("BEGIN IF t THEN SET work_mem = '64MB'; END IF; END", true),
            ("BEGIN x := 1; RESET ALL; END", true),
            ("SET search_path = app", true),
            ("BEGIN SET LOCAL search_path = app; END", false),
            ("BEGIN SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; END", false),
            ("BEGIN SET CONSTRAINTS ALL DEFERRED; END", false),
            // SET in other statements.
            ("BEGIN UPDATE t SET x = 1 WHERE id = k; END", false),
            (
                "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET x = 2",
                false,
            ),
            (
                "BEGIN ALTER TABLE t SET (fillfactor = 70); ALTER TABLE t RESET (fillfactor); END",
                false,
            ),
            // Dynamic SQL.
            ("BEGIN EXECUTE 'SET search_path = ' || quote_ident(s); END", true),
            ("BEGIN EXECUTE format('RESET %I', n); END", true),
            (
                "BEGIN EXECUTE $q$SELECT set_config('a', 'b', false)$q$; END",
                true,
            ),
            ("BEGIN EXECUTE 'SET LOCAL statement_timeout = 0'; END", false),
            // Strings that are data.
            ("BEGIN IF state = 'reset' THEN RETURN 'set'; END IF; END", false),
            // Comments are not code.
            ("BEGIN -- SET search_path = x;\n RETURN 1; END", false),
            ("SELECT 1 /* set_config('a', 'b', false) */", false),
            ("", false),
        ];
        for (body, want) in cases {
            assert_eq!(sets_session_setting(body), *want, "{body}");
        }
    }
}
