//! Queries offered as reads (SELECT, VALUES, TABLE, WITH and parenthesised queries): the sqlparser
//! gate, and the token scans for function calls, row locks, data-modifying subqueries and SELECT INTO.

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::session::{ROLE_SETTINGS, config_statement};
use super::stmt::Stmt;
use super::{Pin, Rule, SessionChange, Verdict};
use crate::router::depth::too_deep_tokens;
use crate::router::functions::{FunctionRules, is_session_advisory_lock};
use crate::router::split::TokKind;

/// What sqlparser's AST says about a statement offered as a read.
enum Parsed {
    Read,
    Write(&'static str),
    Unparsed,
    /// Not handed to sqlparser at all: see [`crate::router::depth`].
    TooDeep,
}

fn parse_query(s: Stmt<'_>) -> Parsed {
    // sqlparser builds chains of operators as left-deep trees without counting them against its recursion
    // limit, and dropping a deep enough tree overflows the thread's stack: such a statement is never parsed.
    if too_deep_tokens(s.src, s.toks) {
        return Parsed::TooDeep;
    }
    let statements = match Parser::parse_sql(&PostgreSqlDialect {}, s.source()) {
        Ok(statements) if !statements.is_empty() => statements,
        // sqlparser does not know the `TABLE name` shorthand; it is a plain read.
        _ if s.kw(0, "TABLE") && s.skip_name(1).is_some_and(|end| end == s.len()) => return Parsed::Read,
        _ => return Parsed::Unparsed,
    };
    let mut parsed = Parsed::Read;
    for statement in &statements {
        match statement_kind(statement) {
            Some(Parsed::Read) => {}
            Some(write @ Parsed::Write(_)) => parsed = write,
            Some(Parsed::Unparsed | Parsed::TooDeep) | None => return Parsed::Unparsed,
        }
    }
    parsed
}

fn statement_kind(statement: &Statement) -> Option<Parsed> {
    Some(match statement {
        Statement::Query(q) => body_kind(&q.body),
        Statement::Insert(_) => Parsed::Write("INSERT"),
        Statement::Update(_) => Parsed::Write("UPDATE"),
        Statement::Delete(_) => Parsed::Write("DELETE"),
        Statement::Merge(_) => Parsed::Write("MERGE"),
        _ => return None,
    })
}

/// The main body of a query: `WITH x AS (...) DELETE ...` is a Query whose body is a DELETE.
fn body_kind(body: &SetExpr) -> Parsed {
    match body {
        SetExpr::Insert(_) => Parsed::Write("INSERT"),
        SetExpr::Update(_) => Parsed::Write("UPDATE"),
        SetExpr::Delete(_) => Parsed::Write("DELETE"),
        SetExpr::Merge(_) => Parsed::Write("MERGE"),
        SetExpr::Query(q) => body_kind(&q.body),
        SetExpr::SetOperation { left, right, .. } => match body_kind(left) {
            Parsed::Read => body_kind(right),
            other => other,
        },
        SetExpr::Select(_) | SetExpr::Values(_) | SetExpr::Table(_) => Parsed::Read,
    }
}

/// SELECT / VALUES / TABLE / WITH and parenthesised queries.
pub(super) fn query(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    let parsed = parse_query(s);
    let found_calls = calls(s);
    let into = select_into(s);
    let configs = set_configs(s, &found_calls);
    let pin = match into {
        Some(true) => Some(Pin::TempTable),
        _ => advisory_pin(&found_calls)
            .or(configs.as_ref().err().copied())
            .or_else(|| session_function_pin(&found_calls, funcs)),
    };
    // The lexical findings name the reason even when the parser gave up on, say, FOR NO KEY UPDATE.
    let found = if let Parsed::Write(kind) = parsed {
        Some(Rule::Write(kind))
    } else if modifying_subquery(s) {
        Some(Rule::ModifyingCte)
    } else if into.is_some() {
        Some(Rule::SelectInto)
    } else if row_lock(s) {
        Some(Rule::ForUpdate)
    } else if let Some(name) = writing_call(&found_calls, funcs) {
        Some(Rule::WriteFunction(name))
    } else if names_unlogged(s, funcs) {
        Some(Rule::UnloggedRelation)
    } else if reads_sequence_state(s, &found_calls, funcs) {
        Some(Rule::SequenceState)
    } else if asks_role(s, &found_calls) {
        Some(Rule::ServerRole)
    } else if reads_activity(s, &found_calls) {
        Some(Rule::ServerActivity)
    } else if found_calls
        .iter()
        .any(|c| c.name == "pg_backend_pid" && c.is_builtin())
    {
        Some(Rule::SessionPid)
    } else {
        None
    };
    let verdict = match (found, parsed) {
        (Some(rule), _) => Verdict::primary(rule),
        (None, Parsed::Unparsed) => Verdict::unparsed(),
        (None, Parsed::TooDeep) => Verdict::primary(Rule::TooDeep),
        (None, _) => Verdict::replica(Rule::Read),
    }
    .pin(pin);
    let verdict = configs
        .unwrap_or_default()
        .into_iter()
        .fold(verdict, Verdict::change);
    // SELECT INTO creates a table, perhaps an UNLOGGED one the catalog rules must learn of.
    if into.is_some() { verdict.ddl() } else { verdict }
}

/// A function call found by the token scan: `name(` or `schema.name(`, names resolved.
#[derive(Debug)]
pub(super) struct Call {
    schema: Option<String>,
    name: String,
    /// The token index of the call's `(`.
    open: usize,
}

impl Call {
    /// The function's name, resolved.
    pub(super) fn name(&self) -> &str {
        &self.name
    }

    /// The token index of the call's `(`, where its [`arguments`] begin.
    pub(super) fn open(&self) -> usize {
        self.open
    }

    /// Unqualified or qualified by `pg_catalog`: a built-in function, unless a user's shadows it.
    pub(super) fn is_builtin(&self) -> bool {
        matches!(self.schema.as_deref(), None | Some("pg_catalog"))
    }

    /// A call of the built-in `set_config`.
    pub(super) fn is_set_config(&self) -> bool {
        self.is_builtin() && self.name == "set_config"
    }

    fn qualified(&self) -> String {
        match &self.schema {
            Some(schema) => format!("{schema}.{}", self.name),
            None => self.name.clone(),
        }
    }
}

/// Every `name(` / `schema.name(` in the statement that can be a function call. The scan is
/// deliberately generous: a table alias with a column list that happens to share a write function's
/// name costs a trip to the primary, while a missed call would send a write to a replica.
pub(super) fn calls(s: Stmt<'_>) -> Vec<Call> {
    let mut out = Vec::new();
    for open in 1..s.len() {
        let last = open - 1;
        if !s.punct(open, "(") || !s.is_name(last) {
            continue;
        }
        let mut first = last;
        while first >= 2 && s.punct(first - 1, ".") && s.is_name(first - 2) {
            first -= 2;
        }
        if (first > 0 && !call_context(s, first - 1, first == last)) || defines_cte_columns(s, open) {
            continue;
        }
        let schema = (first < last).then(|| s.ident(last - 2));
        out.push(Call {
            schema,
            name: s.ident(last),
            open,
        });
    }
    out
}

/// Whether a name preceded by the token at `prev` and followed by `(` is a call rather than a
/// table, type or alias with a column list.
fn call_context(s: Stmt<'_>, prev: usize, single_part: bool) -> bool {
    if s.punct(prev, ".") || s.op(prev, "::") {
        return false;
    }
    // `agg(x) FILTER (...)`, `f(x) OVER (...)`
    if s.punct(prev, ")") && single_part && (s.kw(prev + 1, "FILTER") || s.kw(prev + 1, "OVER")) {
        return false;
    }
    // `AS alias(a, b)`, `INSERT INTO t(a)`, `WITH x(a) AS`, `REFERENCES t(id)`, `CREATE INDEX ... ON`
    s.kw_in(
        prev,
        &[
            "AS",
            "INTO",
            "TABLE",
            "ONLY",
            "WITH",
            "RECURSIVE",
            "REFERENCES",
            "INDEX",
        ],
    )
    .is_none()
}

/// `, name(a, b) AS (...)`: a CTE's column list, not a call.
fn defines_cte_columns(s: Stmt<'_>, open: usize) -> bool {
    s.close_paren(open).is_some_and(|close| {
        s.kw(close + 1, "AS")
            && (s.punct(close + 2, "(") || s.kw(close + 2, "MATERIALIZED") || s.kw(close + 2, "NOT"))
    })
}

fn writing_call(calls: &[Call], funcs: &FunctionRules) -> Option<String> {
    calls
        .iter()
        .find(|c| funcs.may_write(c.schema.as_deref(), &c.name))
        .map(Call::qualified)
}

/// Whether any name in the statement, alone or as `schema.name`, may be an unlogged relation. Deliberately
/// generous: it does not tell a table from a column or an alias of the same name, since a spurious match
/// only costs a trip to the primary, while a miss fails on the replica.
pub(super) fn names_unlogged(s: Stmt<'_>, funcs: &FunctionRules) -> bool {
    funcs.has_unlogged() && names_relation(s, |schema, name| funcs.is_unlogged(schema, name))
}

/// Whether the statement reads a sequence's state, which a standby holds as last logged, up to 32 values
/// ahead of the primary's: it names one of the database's sequences (matched as [`names_unlogged`]
/// matches), calls `pg_sequence_last_value()` or reads the `pg_sequences` view.
fn reads_sequence_state(s: Stmt<'_>, calls: &[Call], funcs: &FunctionRules) -> bool {
    calls
        .iter()
        .any(|c| c.is_builtin() && c.name == "pg_sequence_last_value")
        || names_relation(s, |schema, name| {
            (name == "pg_sequences" && matches!(schema, None | Some("pg_catalog")))
                || funcs.is_sequence(schema, name)
        })
}

/// Whether some name in the statement, as `schema.name` or `name`, is one `is` knows.
fn names_relation(s: Stmt<'_>, is: impl Fn(Option<&str>, &str) -> bool) -> bool {
    (0..s.len()).any(|i| {
        if !s.is_name(i) {
            return false;
        }
        let name = s.ident(i);
        let schema = (i >= 2 && s.punct(i - 1, ".") && s.is_name(i - 2)).then(|| s.ident(i - 2));
        // The first part of `t.col` is checked as an unqualified name of its own.
        is(schema.as_deref(), &name)
    })
}

/// Built-in functions whose answer is the server's own replication state: a standby fails some of them
/// ("recovery is in progress": the primary's WAL positions) and answers the others for itself (its replay
/// position, where a primary answers NULL).
const ROLE_FUNCTIONS: &[&str] = &[
    "pg_is_in_recovery",
    "pg_current_wal_lsn",
    "pg_current_wal_insert_lsn",
    "pg_current_wal_flush_lsn",
    "pg_walfile_name",
    "pg_walfile_name_offset",
    "pg_last_wal_receive_lsn",
    "pg_last_wal_replay_lsn",
    "pg_last_xact_replay_timestamp",
    "pg_is_wal_replay_paused",
    "pg_get_wal_replay_pause_state",
    "pg_control_recovery",
    "pg_show_all_settings",
];

/// Catalog views of the server's own replication (its WAL senders and slots, or its WAL receiver), and its
/// settings, among which those that tell a standby ([`ROLE_SETTINGS`]).
const ROLE_VIEWS: &[&str] = &[
    "pg_settings",
    "pg_stat_replication",
    "pg_stat_replication_slots",
    "pg_replication_slots",
    "pg_stat_wal_receiver",
];

/// Whether the statement asks whether the server is a primary, or about its replication, which a client
/// connected to pgfleet must hear from the primary, as from the server it believes it talks to: one of
/// [`ROLE_FUNCTIONS`], one of [`ROLE_VIEWS`], or `current_setting('<a role setting>')` (see
/// [`ROLE_SETTINGS`]).
fn asks_role(s: Stmt<'_>, calls: &[Call]) -> bool {
    calls
        .iter()
        .any(|c| c.is_builtin() && ROLE_FUNCTIONS.contains(&c.name.as_str()))
        || catalog_names(s).any(|name| ROLE_VIEWS.contains(&name.as_str()))
        || (0..s.len()).any(|i| {
            s.punct(i + 1, "(")
                && s.kind(i + 2) == Some(TokKind::Str)
                && s.is_name(i)
                && s.ident(i) == "current_setting"
                && string_value(s.text(i + 2))
                    .is_some_and(|v| ROLE_SETTINGS.contains(&v.to_ascii_lowercase().as_str()))
        })
}

/// The catalog's relations and functions a statement names, resolved: names that begin with `pg_`,
/// unqualified or qualified by `pg_catalog`.
fn catalog_names<'a>(s: Stmt<'a>) -> impl Iterator<Item = String> + 'a {
    (0..s.len())
        .filter(move |&i| {
            // Most names are not the catalog's: their first letters say so before the name is resolved.
            s.is_name(i)
                && s.text(i)
                    .trim_start_matches('"')
                    .get(..3)
                    .is_some_and(|p| p.eq_ignore_ascii_case("pg_"))
                && (!(i >= 2 && s.punct(i - 1, ".")) || s.ident(i - 2) == "pg_catalog")
        })
        .map(move |i| s.ident(i))
}

/// Built-in relations and functions, besides the `pg_stat_*` and `pg_statio_*` ones, whose answer is the state
/// of the server that runs them: its locks, prepared transactions, start and configuration times, log and WAL
/// files. (`pg_stats` and `pg_statistic` hold the planner's statistics, which a standby replays.)
const ACTIVITY_NAMES: &[&str] = &[
    "pg_locks",
    "pg_lock_status",
    "pg_blocking_pids",
    "pg_safe_snapshot_blocking_pids",
    "pg_prepared_xacts",
    "pg_prepared_xact",
    "pg_postmaster_start_time",
    "pg_conf_load_time",
    "pg_current_logfile",
    "pg_ls_logdir",
    "pg_ls_waldir",
    "pg_ls_archive_statusdir",
    "pg_ls_tmpdir",
    "pg_replication_origin_status",
];

/// Whether the statement reads the server's own activity, locks or statistics, which a client connected to
/// pgfleet must see as the primary's, the server it believes it talks to: a relation or function of the
/// catalog named `pg_stat_*` or `pg_statio_*` (the statistics views and their `pg_stat_get_*` functions,
/// `pg_stat_statements`), or one of [`ACTIVITY_NAMES`].
fn reads_activity(s: Stmt<'_>, calls: &[Call]) -> bool {
    let ours = |name: &str| {
        name.starts_with("pg_stat_") || name.starts_with("pg_statio_") || ACTIVITY_NAMES.contains(&name)
    };
    calls.iter().any(|c| c.is_builtin() && ours(&c.name)) || catalog_names(s).any(|name| ours(&name))
}

/// The value of a plain, `E` or dollar-quoted string constant (escapes aside, which setting names do not
/// need); None for other kinds.
pub(super) fn string_value(text: &str) -> Option<String> {
    let quoted = text
        .strip_prefix(['E', 'e'])
        .unwrap_or(text)
        .strip_prefix('\'')
        .and_then(|t| t.strip_suffix('\''));
    if let Some(inner) = quoted {
        return Some(inner.replace("''", "'"));
    }
    let rest = text.strip_prefix('$')?;
    let tag_end = rest.find('$')?;
    let tag = &text[..tag_end + 2];
    text.strip_prefix(tag)?.strip_suffix(tag).map(str::to_owned)
}

/// The session state a statement other than a query creates with its calls: a session advisory lock, or a
/// session-wide `set_config()` (which only a plain `SELECT set_config(...)` makes as a change pgfleet can
/// replay).
pub(super) fn session_pin(s: Stmt<'_>, calls: &[Call], funcs: &FunctionRules) -> Option<Pin> {
    advisory_pin(calls)
        .or(set_configs(s, calls).err())
        .or(session_function_pin(calls, funcs))
}

/// A call of a user function or procedure whose body leaves state in the session (a setting, a temporary
/// table...), which only the node that ran it has.
fn session_function_pin(calls: &[Call], funcs: &FunctionRules) -> Option<Pin> {
    calls
        .iter()
        .any(|c| funcs.leaves_session_state(c.schema.as_deref(), &c.name))
        .then_some(Pin::SessionFunction)
}

/// What the statement's calls of the built-in `set_config(name, value, is_local)` leave in the session once
/// it ends. A call with `is_local` true leaves nothing (its setting ends with the transaction). A plain
/// `SELECT set_config('name', 'value', false), ...` is a change like `SET`, replayed by the same call
/// ([`super::session::config_statement`]). Any other session-wide call (a parameter or an expression for
/// an argument, a `FROM` or `WHERE` that decides whether and how often it runs) is a setting pgfleet cannot
/// know: the session is pinned to the node that ran it.
fn set_configs(s: Stmt<'_>, calls: &[Call]) -> Result<Vec<SessionChange>, Pin> {
    let mut set_config = calls.iter().filter(|c| c.is_set_config()).peekable();
    if set_config.peek().is_none() {
        return Ok(Vec::new());
    }
    let plain = only_set_configs(s);
    let mut changes = Vec::new();
    for call in set_config {
        let args = arguments(s, call.open);
        let one = |k: usize| {
            args.get(k)
                .filter(|(from, to)| to - from == 1)
                .map(|(from, _)| *from)
        };
        match (one(0), one(1), one(2), args.len()) {
            (_, _, Some(local), 3) if s.kw(local, "TRUE") => continue,
            (Some(name), Some(value), Some(local), 3)
                if plain
                    && s.kw(local, "FALSE")
                    && s.kind(name) == Some(TokKind::Str)
                    && s.kind(value) == Some(TokKind::Str) =>
            {
                let Some(key) = string_value(s.text(name)) else {
                    return Err(Pin::SetConfig);
                };
                changes.push(SessionChange::Set {
                    name: key.to_lowercase(),
                    statement: config_statement(s.text(name), s.text(value)),
                });
            }
            _ => return Err(Pin::SetConfig),
        }
    }
    Ok(changes)
}

/// The token ranges of the top-level arguments of the call whose `(` is at `open`.
pub(super) fn arguments(s: Stmt<'_>, open: usize) -> Vec<(usize, usize)> {
    let Some(close) = s.close_paren(open) else {
        return Vec::new();
    };
    let mut out = Vec::new();
    let (mut depth, mut from) = (0usize, open + 1);
    for i in open + 1..close {
        if s.punct(i, "(") || s.punct(i, "[") {
            depth += 1;
        } else if s.punct(i, ")") || s.punct(i, "]") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && s.punct(i, ",") {
            out.push((from, i));
            from = i + 1;
        }
    }
    if close > open + 1 {
        out.push((from, close));
    }
    out
}

/// Whether the statement is `SELECT` and a list of nothing but `[pg_catalog.]set_config(...)` calls, each
/// perhaps with an alias: it runs each of them once.
fn only_set_configs(s: Stmt<'_>) -> bool {
    if !s.kw(0, "SELECT") {
        return false;
    }
    let mut i = 1;
    loop {
        if s.is_name(i) && s.punct(i + 1, ".") && s.ident(i) == "pg_catalog" {
            i += 2;
        }
        if !(s.is_name(i) && s.ident(i) == "set_config" && s.punct(i + 1, "(")) {
            return false;
        }
        let Some(close) = s.close_paren(i + 1) else {
            return false;
        };
        i = close + 1;
        if s.kw(i, "AS") && s.is_name(i + 1) {
            i += 2;
        } else if s.is_name(i) && (i + 1 == s.len() || s.punct(i + 1, ",")) {
            i += 1;
        }
        if i == s.len() {
            return true;
        }
        if !s.punct(i, ",") {
            return false;
        }
        i += 1;
    }
}

fn advisory_pin(calls: &[Call]) -> Option<Pin> {
    calls
        .iter()
        .any(|c| c.is_builtin() && is_session_advisory_lock(&c.name))
        .then_some(Pin::AdvisoryLock)
}

/// `FOR UPDATE`, `FOR NO KEY UPDATE`, `FOR SHARE`, `FOR KEY SHARE` anywhere in the statement.
fn row_lock(s: Stmt<'_>) -> bool {
    (0..s.len()).any(|i| {
        s.kw(i, "FOR")
            && (s.kw(i + 1, "UPDATE")
                || s.kw(i + 1, "SHARE")
                || (s.kw(i + 1, "NO") && s.kw(i + 2, "KEY") && s.kw(i + 3, "UPDATE"))
                || (s.kw(i + 1, "KEY") && s.kw(i + 2, "SHARE")))
    })
}

/// A parenthesised INSERT/UPDATE/DELETE/MERGE inside a query: only a data-modifying WITH allows one.
fn modifying_subquery(s: Stmt<'_>) -> bool {
    (0..s.len()).any(|i| {
        s.punct(i, "(")
            && ((s.kw(i + 1, "INSERT") && s.kw(i + 2, "INTO"))
                || (s.kw(i + 1, "DELETE") && s.kw(i + 2, "FROM"))
                || (s.kw(i + 1, "MERGE") && s.kw(i + 2, "INTO"))
                || (s.kw(i + 1, "UPDATE") && s.is_name(i + 2)))
    })
}

/// `SELECT ... INTO [TEMP] name` at the top level of the query: `Some(temporary)`.
fn select_into(s: Stmt<'_>) -> Option<bool> {
    let mut depth = 0usize;
    for i in 0..s.len() {
        if s.punct(i, "(") {
            depth += 1;
        } else if s.punct(i, ")") {
            depth = depth.saturating_sub(1);
        } else if depth == 0 && s.kw(i, "INTO") && !(i > 0 && (s.kw(i - 1, "INSERT") || s.kw(i - 1, "MERGE")))
        {
            let mut j = i + 1;
            if s.kw(j, "GLOBAL") || s.kw(j, "LOCAL") {
                j += 1;
            }
            let temp = s.kw(j, "TEMP") || s.kw(j, "TEMPORARY");
            while s.kw_in(j, &["TEMP", "TEMPORARY", "UNLOGGED", "TABLE"]).is_some() {
                j += 1;
            }
            return Some(temp || s.is_pg_temp(j));
        }
    }
    None
}
