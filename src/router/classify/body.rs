//! What a user function's or procedure's body leaves in the session that calls it: a setting changed for
//! the rest of the session (a SET or RESET statement, `set_config(..., false)`), a temporary table, a
//! session-level advisory lock, a LISTEN or an SQL-level prepared statement, also made by dynamic SQL. The
//! catalog loader asks this of the bodies `functions::SESSION_STATE_FUNCTIONS_SQL` finds (and of the bodies
//! that call those functions, [`calls_any`]), and a call of such a function (or a DO block whose code does so)
//! pins its session to the node that ran it, where alone that state exists.

use std::collections::HashSet;

use super::Pin;
use super::query::{Call, arguments, calls, string_value};
use super::stmt::{Stmt, paren_spans};
use crate::router::functions::is_session_advisory_lock;
use crate::router::split::{Lexer, Tok, TokKind};

/// Keywords after which a PL/pgSQL statement begins.
const STATEMENT_STARTS: &[&str] = &["BEGIN", "THEN", "ELSE", "LOOP"];

/// What follows SET without making it a session's setting.
const NOT_SESSION: &[&str] = &["LOCAL", "TRANSACTION", "CONSTRAINTS"];

/// Whether running `body` may leave state in the calling session that another node's connection lacks. It
/// errs towards yes: a `set_config` whose `is_local` is not the constant `true`, and a string that begins
/// like such a statement (dynamic SQL), count.
pub fn leaves_session_state(body: &str) -> bool {
    read(body, |s| {
        calls(s).iter().any(|c| session_call(s, c))
            || (0..s.len()).any(|i| statement_at(s, i) || temp_object(s, i) || dynamic(s, i))
    })
}

/// Whether `body` calls a function or procedure of one of these (resolved) names, in any schema: calling it
/// leaves what they leave.
pub fn calls_any(body: &str, names: &HashSet<String>) -> bool {
    read(body, |s| calls(s).iter().any(|c| names.contains(c.name())))
}

/// Runs `judge` over the body's tokens, comments left out.
fn read(body: &str, judge: impl FnOnce(Stmt<'_>) -> bool) -> bool {
    let toks: Vec<Tok> = Lexer::new(body).filter(|t| t.kind != TokKind::Comment).collect();
    let spans = paren_spans(body, &toks);
    judge(Stmt {
        src: body,
        toks: &toks,
        spans: &spans,
        nesting: 0,
    })
}

/// A DO block whose code leaves session state pins the session as a call of such a function does.
pub(super) fn do_block_pin(s: Stmt<'_>) -> Option<Pin> {
    (1..s.len())
        .filter(|&i| s.kind(i) == Some(TokKind::Str))
        .filter_map(|i| string_value(s.text(i)))
        .any(|code| leaves_session_state(&code))
        .then_some(Pin::SessionFunction)
}

/// A call of a built-in that outlives the transaction: `set_config(name, value, is_local)` with `is_local`
/// other than `true`, or a session-level advisory lock.
fn session_call(s: Stmt<'_>, call: &Call) -> bool {
    if call.is_set_config() {
        let args = arguments(s, call.open());
        return !matches!(args.as_slice(), [_, _, (from, to)] if to - from == 1 && s.kw(*from, "TRUE"));
    }
    call.is_builtin() && is_session_advisory_lock(call.name())
}

/// A SET, RESET, LISTEN or PREPARE statement at `i` (not an UPDATE's or ALTER's SET, which follow a name or
/// keyword).
fn statement_at(s: Stmt<'_>, i: usize) -> bool {
    let starts = i == 0 || s.punct(i - 1, ";") || s.kw_in(i - 1, STATEMENT_STARTS).is_some();
    if !starts {
        return false;
    }
    (s.kw(i, "SET") && s.kw_in(i + 1, NOT_SESSION).is_none())
        || s.kw(i, "RESET")
        || s.kw(i, "LISTEN")
        || (s.kw(i, "PREPARE") && !s.kw(i + 1, "TRANSACTION"))
}

/// `CREATE [LOCAL | GLOBAL] TEMP[ORARY]`, `CREATE ... pg_temp.name`, or `INTO TEMP[ORARY]` at `i`.
fn temp_object(s: Stmt<'_>, i: usize) -> bool {
    let temp = |j: usize| s.kw(j, "TEMP") || s.kw(j, "TEMPORARY");
    if s.kw(i, "INTO") {
        return temp(i + 1);
    }
    if !s.kw(i, "CREATE") {
        return false;
    }
    let j = if s.kw(i + 1, "LOCAL") || s.kw(i + 1, "GLOBAL") {
        i + 2
    } else {
        i + 1
    };
    // CREATE [OR REPLACE] [UNLOGGED] kind [IF NOT EXISTS] pg_temp.name
    temp(j) || (i + 1..(i + 8).min(s.len())).any(|k| s.is_pg_temp(k))
}

/// A string constant that begins like a statement above or calls `set_config` or a session-level advisory
/// lock: SQL the body may run with EXECUTE.
fn dynamic(s: Stmt<'_>, i: usize) -> bool {
    if s.kind(i) != Some(TokKind::Str) {
        return false;
    }
    let Some(text) = string_value(s.text(i)) else {
        return false;
    };
    let lower = text.trim_start().to_ascii_lowercase();
    if lower.contains("set_config")
        || ["pg_advisory_lock", "pg_try_advisory_lock"]
            .iter()
            .any(|f| lower.contains(f))
    {
        return true;
    }
    // A lone word is data ('reset' as a state); followed by anything, even a space before a concatenation,
    // it is a statement.
    let mut words = lower.split_whitespace();
    let (first, second) = (words.next(), words.next());
    let statement = |word: &str| lower.len() > word.len() && first == Some(word);
    (statement("set") && !second.is_some_and(|w| NOT_SESSION.iter().any(|k| w.eq_ignore_ascii_case(k))))
        || statement("reset")
        || statement("listen")
        || (statement("prepare") && second != Some("transaction"))
        || matches!(
            lower.split_whitespace().take(3).collect::<Vec<_>>().as_slice(),
            ["create", "temp" | "temporary", ..] | ["create", "local" | "global", "temp" | "temporary"]
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bodies_that_leave_state_in_the_session() {
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
            // Temporary objects.
            ("BEGIN CREATE TEMP TABLE scratch (x int); END", true),
            (
                "BEGIN CREATE TEMPORARY TABLE IF NOT EXISTS scratch AS SELECT 1; END",
                true,
            ),
            ("CREATE LOCAL TEMP VIEW v AS SELECT 1", true),
            ("BEGIN CREATE TABLE pg_temp.scratch (x int); END", true),
            ("SELECT * INTO TEMP scratch FROM t", true),
            (
                "BEGIN CREATE TABLE scratch (x int); SELECT x INTO v FROM t; END",
                false,
            ),
            ("BEGIN CREATE UNLOGGED TABLE template_rows (temp int); END", false),
            // Session-level advisory locks, LISTEN, PREPARE.
            ("BEGIN PERFORM pg_advisory_lock(42); END", true),
            ("SELECT pg_try_advisory_lock_shared(1, 2)", true),
            ("BEGIN PERFORM pg_advisory_xact_lock(42); END", false),
            ("BEGIN PERFORM pg_catalog.pg_advisory_lock(42); END", true),
            ("BEGIN PERFORM locks.pg_advisory_lock(42); END", false),
            ("BEGIN ok := pg_try_advisory_lock(7); RETURN ok; END", true),
            ("BEGIN old := set_config('app.tenant', t, false); END", true),
            ("BEGIN old := \"set_config\"('app.tenant', t, true); END", false),
            ("BEGIN LISTEN jobs; END", true),
            ("BEGIN PREPARE q AS SELECT 1; END", true),
            ("BEGIN PREPARE TRANSACTION 'x'; END", false),
            // Dynamic SQL.
            ("BEGIN EXECUTE 'SET search_path = ' || quote_ident(s); END", true),
            ("BEGIN EXECUTE format('RESET %I', n); END", true),
            (
                "BEGIN EXECUTE $q$SELECT set_config('a', 'b', false)$q$; END",
                true,
            ),
            ("BEGIN EXECUTE 'SET LOCAL statement_timeout = 0'; END", false),
            ("BEGIN EXECUTE 'set Transaction read only'; END", false),
            (
                "BEGIN EXECUTE format('CREATE TEMP TABLE %I (x int)', n); END",
                true,
            ),
            (
                "BEGIN EXECUTE 'create local temporary table t (x int)'; END",
                true,
            ),
            ("BEGIN EXECUTE 'LISTEN ' || quote_ident(c); END", true),
            ("BEGIN EXECUTE 'SELECT pg_advisory_lock(1)'; END", true),
            ("BEGIN EXECUTE 'CREATE TABLE t (x int)'; END", false),
            // Strings that are data.
            ("BEGIN IF state = 'reset' THEN RETURN 'set'; END IF; END", false),
            ("BEGIN RETURN 'listen'; END", false),
            // Comments are not code.
            ("BEGIN -- SET search_path = x;\n RETURN 1; END", false),
            ("SELECT 1 /* set_config('a', 'b', false) */", false),
            ("", false),
        ];
        for (body, want) in cases {
            assert_eq!(leaves_session_state(body), *want, "{body}");
        }
    }

    #[test]
    fn callers_are_found_by_the_names_they_call() {
        let names: HashSet<String> = ["set_tenant".to_owned(), "MixedCase".to_owned()].into();
        let cases: &[(&str, bool)] = &[
            ("BEGIN PERFORM set_tenant(t); END", true),
            ("SELECT app.set_tenant($1)", true),
            ("BEGIN CALL set_tenant(1); END", true),
            ("BEGIN x := \"MixedCase\"(); END", true),
            // Folded to lower case: another name.
            ("BEGIN x := MixedCase(); END", false),
            ("BEGIN x := set_tenant_name; END", false),
            ("BEGIN RETURN 'set_tenant(1)'; END", false),
            ("SELECT 1 -- set_tenant(1)", false),
        ];
        for (body, want) in cases {
            assert_eq!(calls_any(body, &names), *want, "{body}");
        }
    }
}
