//! Statement classification: what a simple-query string or a Parse message's text does, as far as
//! routing cares — where it may run ([`Target`]), why ([`Rule`]), what session state it creates that
//! pins the session to the primary ([`Pin`]), whether it opens a transaction ([`TxStart`]), which
//! settings it changes ([`SessionChange`]) and whether it contains DDL.
//!
//! The request is split into statements by [`split_statements`] and each statement is judged on its
//! own, then the verdicts are combined. Judging is mostly lexical, over the tokens of the router's own
//! lexer: PostgreSQL's utility commands (SET, BEGIN, COPY, EXPLAIN, DECLARE, VACUUM...) have simple
//! shapes that sqlparser often does not know, and the questions that matter for queries — is there a
//! `FOR UPDATE` anywhere, a data-modifying `WITH`, a call of a function that may write, however deeply
//! nested — are answered by a scan of every token without walking sqlparser's large AST. sqlparser's
//! PostgreSQL parser is the gate for anything offered as a read: a query it cannot parse goes to the
//! primary, and its AST tells whether a `WITH ...` query ends in a write.
//!
//! This module owns the public types, [`classify`] and the combination of per-statement verdicts, the
//! size gate and the dispatch on a statement's first keyword; `query` judges reads, `commands` the
//! utility commands with a shape of their own (CREATE, EXPLAIN, DECLARE, COPY), `session` transactions
//! and settings, and `stmt` is the token view they all read.

mod body;
mod commands;
mod query;
mod session;
mod stmt;

use std::borrow::Cow;
use std::fmt;

use super::functions::FunctionRules;
use super::split::{Hint, Lexer, Tok, TokKind, leading_hint, split_statements};
use body::do_block_pin;
pub use body::{calls_any, leaves_session_state};
use commands::{copy, create, declare, explain};
use query::{calls, query, session_pin};
pub use session::set_value;
use session::{begin, discard, reset, savepoint, set, show};
use stmt::{Stmt, paren_spans};

/// Where a request may run.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Target {
    /// Only the primary.
    Primary,
    /// Any read node (a replica, or the primary when no replica qualifies).
    Replica,
}

impl fmt::Display for Target {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Target::Primary => "primary",
            Target::Replica => "replica",
        })
    }
}

/// Why a request got its target; `Display` gives a short reason for logs and SHOW output.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Rule {
    /// A plain read.
    Read,
    /// A leading `/* pgfleet:... */` comment decided.
    Hint,
    /// The statement does not parse, so nothing proves it harmless.
    Unparsed,
    /// The statement may nest deeper than the router parses ([`super::depth::MAX_DEPTH`]): it is not
    /// parsed, and so it is treated like one that does not parse.
    TooDeep,
    /// A data-changing statement: INSERT, UPDATE, DELETE, MERGE, TRUNCATE, COPY FROM.
    Write(&'static str),
    /// Schema changes: CREATE, ALTER, DROP, COMMENT, ...
    Ddl,
    /// A row-locking clause: FOR UPDATE / NO KEY UPDATE / SHARE / KEY SHARE.
    ForUpdate,
    /// SELECT ... INTO creates a table.
    SelectInto,
    /// A WITH (or COPY) subquery that is an INSERT/UPDATE/DELETE/MERGE.
    ModifyingCte,
    /// Calls a function that may write (qualified name as written).
    WriteFunction(String),
    /// Names an unlogged table or sequence (or a view or parent table over one), which a hot standby
    /// refuses to read.
    UnloggedRelation,
    /// Reads a sequence's state (`last_value` of a sequence relation, `pg_sequence_last_value()`,
    /// `pg_sequences`): a standby's runs ahead of the primary's.
    SequenceState,
    /// Reads the server's own activity, locks or statistics (`pg_stat_activity`, `pg_locks`,
    /// `pg_stat_user_tables`, `pg_stat_get_*()`, ...): a standby has its own, not the primary's.
    ServerActivity,
    /// Asks whether the server is a primary (`pg_is_in_recovery()`, `transaction_read_only`,
    /// `in_hot_standby`): the answer must be the primary's, as the greeting's, while a primary is up.
    ServerRole,
    /// Asks the session's process id (`pg_backend_pid()`): the pid of its primary connection, the one
    /// `pg_cancel_backend` / `pg_terminate_backend` find whichever node the session reads from.
    SessionPid,
    /// Opens a read-write transaction.
    TransactionBegin,
    /// Opens a read-only transaction.
    ReadOnlyTransaction,
    /// Opens (or makes) a serializable transaction, which a hot standby refuses even when read-only.
    SerializableTransaction,
    /// A read in a session whose transactions are serializable (`default_transaction_isolation`): decided
    /// by the session, not by its text.
    SerializableRead,
    /// COMMIT, ROLLBACK, SAVEPOINT...: runs wherever the open transaction lives.
    TransactionControl(&'static str),
    /// FETCH, MOVE, CLOSE: runs wherever the cursor lives.
    Cursor(&'static str),
    /// SET, RESET, SHOW, DISCARD: session state, replayed on every backend the session uses.
    SessionState(&'static str),
    /// A utility command that must run on the primary (VACUUM, LOCK, CALL, LISTEN, ...).
    Utility(&'static str),
    /// Longer than [`MAX_CLASSIFIED_STATEMENT`]: sent to the primary without being tokenised or parsed.
    TooLarge,
}

impl fmt::Display for Rule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Rule::Read => f.write_str("read"),
            Rule::Hint => f.write_str("routing hint comment"),
            Rule::Unparsed => f.write_str("does not parse: sent to the primary"),
            Rule::TooDeep => f.write_str("too deeply nested to parse: sent to the primary"),
            Rule::Write(kind) => write!(f, "{kind} writes"),
            Rule::Ddl => f.write_str("DDL changes the schema"),
            Rule::ForUpdate => f.write_str("row lock (FOR UPDATE/SHARE) needs the primary"),
            Rule::SelectInto => f.write_str("SELECT INTO creates a table"),
            Rule::ModifyingCte => f.write_str("data-modifying WITH writes"),
            Rule::WriteFunction(name) => write!(f, "calls {name}() which may write"),
            Rule::UnloggedRelation => f.write_str(UNLOGGED_LABEL),
            Rule::SequenceState => f.write_str(SEQUENCE_LABEL),
            Rule::ServerActivity => f.write_str(ACTIVITY_LABEL),
            Rule::ServerRole => f.write_str(SERVER_ROLE_LABEL),
            Rule::SessionPid => f.write_str(SESSION_PID_LABEL),
            Rule::TransactionBegin => f.write_str("read-write transaction runs on the primary"),
            Rule::ReadOnlyTransaction => f.write_str("read-only transaction"),
            Rule::SerializableTransaction => f.write_str(SERIALIZABLE_TX_LABEL),
            Rule::SerializableRead => f.write_str(SERIALIZABLE_READ_LABEL),
            Rule::TransactionControl(kind) => write!(f, "{kind} follows the open transaction"),
            Rule::Cursor(kind) => write!(f, "{kind} follows its cursor"),
            Rule::SessionState(kind) => write!(f, "{kind} only touches session state"),
            Rule::Utility(kind) => write!(f, "{kind} must run on the primary"),
            Rule::TooLarge => f.write_str("statement over 1 MiB: sent to the primary unparsed"),
        }
    }
}

/// The label of [`Rule::UnloggedRelation`].
pub const UNLOGGED_LABEL: &str = "reads an unlogged table: sent to the primary";
/// The label of [`Rule::SequenceState`].
pub const SEQUENCE_LABEL: &str = "reads a sequence's state: sent to the primary, as a standby's runs ahead";
/// The label of [`Rule::ServerActivity`].
pub const ACTIVITY_LABEL: &str = "reads the server's activity or statistics: answered by the primary";
/// The label of [`Rule::ServerRole`]; the session recognises a plan by it (see [`Rule::is_read_on_primary`]).
pub const SERVER_ROLE_LABEL: &str = "asks the server's role: answered by the primary";
/// The label of [`Rule::SessionPid`].
pub const SESSION_PID_LABEL: &str = "asks the session's pid: answered by the primary";
/// The label of [`Rule::SerializableTransaction`].
pub const SERIALIZABLE_TX_LABEL: &str = "serializable transaction runs on the primary: a standby refuses it";
/// The label of [`Rule::SerializableRead`].
pub const SERIALIZABLE_READ_LABEL: &str = "read under serializable isolation (default_transaction_isolation): answered by the primary, as a standby refuses it";

impl Rule {
    /// Whether a request labelled `label` (see [`Rule::label`]) is a read that only runs on the primary
    /// because a replica would answer it differently, not because it writes.
    pub fn is_read_on_primary(label: &str) -> bool {
        label == UNLOGGED_LABEL
            || label == SEQUENCE_LABEL
            || label == ACTIVITY_LABEL
            || label == SERVER_ROLE_LABEL
            || label == SESSION_PID_LABEL
            || label == SERIALIZABLE_READ_LABEL
    }

    /// Whether a request labelled `label` asks something any node can answer for itself when no primary is
    /// up (rather than failing for want of one).
    pub fn answers_without_primary(label: &str) -> bool {
        label == SERVER_ROLE_LABEL || label == SESSION_PID_LABEL
    }

    /// The `Display` text, without an allocation for the rules that requests hit over and over: it becomes
    /// the label of a routing decision on every request the rule decides.
    pub fn label(&self) -> Cow<'static, str> {
        Cow::Borrowed(match self {
            Rule::Read => "read",
            Rule::Hint => "routing hint comment",
            Rule::Unparsed => "does not parse: sent to the primary",
            Rule::TooDeep => "too deeply nested to parse: sent to the primary",
            Rule::Write("INSERT") => "INSERT writes",
            Rule::Write("UPDATE") => "UPDATE writes",
            Rule::Write("DELETE") => "DELETE writes",
            Rule::Write("MERGE") => "MERGE writes",
            Rule::Write("TRUNCATE") => "TRUNCATE writes",
            Rule::Write("COPY FROM") => "COPY FROM writes",
            Rule::Ddl => "DDL changes the schema",
            Rule::ForUpdate => "row lock (FOR UPDATE/SHARE) needs the primary",
            Rule::SelectInto => "SELECT INTO creates a table",
            Rule::ModifyingCte => "data-modifying WITH writes",
            Rule::UnloggedRelation => UNLOGGED_LABEL,
            Rule::SequenceState => SEQUENCE_LABEL,
            Rule::ServerActivity => ACTIVITY_LABEL,
            Rule::ServerRole => SERVER_ROLE_LABEL,
            Rule::SessionPid => SESSION_PID_LABEL,
            Rule::TransactionBegin => "read-write transaction runs on the primary",
            Rule::ReadOnlyTransaction => "read-only transaction",
            Rule::SerializableTransaction => SERIALIZABLE_TX_LABEL,
            Rule::SerializableRead => SERIALIZABLE_READ_LABEL,
            Rule::TooLarge => "statement over 1 MiB: sent to the primary unparsed",
            other => return Cow::Owned(other.to_string()),
        })
    }
}

/// Session state that cannot be replayed on another node; creating it pins the session to the primary.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Pin {
    /// A temporary table, view, sequence or function (CREATE TEMP ..., SELECT INTO TEMP, pg_temp.x).
    TempTable,
    /// A session-level advisory lock (pg_advisory_lock and friends, not the _xact_ ones).
    AdvisoryLock,
    /// LISTEN: notifications arrive only on the backend that listens.
    Listen,
    /// DECLARE ... WITH HOLD: the cursor outlives its transaction on that backend.
    HoldCursor,
    /// SQL-level PREPARE: the prepared statement lives on that backend.
    SqlPrepare,
    /// Text in the session's `client_encoding` that pgfleet could not read, or a setting it could not
    /// replay from its UTF-8 copy (`protocol::encoding`): only the connection that ran it has it.
    ClientEncoding,
    /// A session-wide `set_config()` whose setting, value or scope only the server knows as it runs (a
    /// parameter, an expression, a call in a query that may run it any number of times).
    SetConfig,
    /// A call of a user function or procedure whose body leaves state in the session: a setting, a
    /// temporary table, a session advisory lock, LISTEN, a prepared statement ([`leaves_session_state`]).
    SessionFunction,
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pin::TempTable => "temporary object",
            Pin::AdvisoryLock => "session advisory lock",
            Pin::Listen => "LISTEN",
            Pin::HoldCursor => "WITH HOLD cursor",
            Pin::SqlPrepare => "SQL PREPARE",
            Pin::ClientEncoding => "setting or text outside UTF-8",
            Pin::SetConfig => "set_config() with values known only to the server",
            Pin::SessionFunction => "function that leaves state in the session",
        })
    }
}

/// The access mode of a transaction a request opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum TxStart {
    /// BEGIN READ ONLY, or BEGIN followed by SET TRANSACTION READ ONLY.
    ReadOnly,
    /// Any other BEGIN / START TRANSACTION.
    ReadWrite,
}

/// A session-level setting change that must follow the session to every backend it uses.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SessionChange {
    /// `SET name ...`. `name` is the canonical lower-case parameter name (`timezone` for SET TIME
    /// ZONE, `client_encoding` for SET NAMES, `role`, `session_authorization`, `search_path` for SET
    /// SCHEMA), so that a later change of the same name replaces this one; `statement` replays it.
    Set {
        /// Canonical lower-case parameter name.
        name: String,
        /// The statement that reproduces the change.
        statement: String,
    },
    /// `RESET name`.
    Reset {
        /// Canonical lower-case parameter name.
        name: String,
        /// The statement that reproduces the change.
        statement: String,
    },
    /// `RESET ALL`, also `DISCARD ALL`.
    ResetAll,
    /// SAVEPOINT, RELEASE or ROLLBACK TO: not a setting, but it decides which of an open transaction's
    /// setting changes its commit keeps, so it stays in order among them.
    Savepoint(Savepoint),
    /// COMMIT, END, ROLLBACK, ABORT or PREPARE TRANSACTION (which keeps settings as a commit does): the
    /// changes before it are kept or dropped as its command tag says, those after it belong to the next
    /// transaction. Kept among the changes only when a change follows it ([`Decision::ends_last`]).
    EndTransaction,
}

/// What a statement does to the open transaction's savepoints; names are resolved as identifiers.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Savepoint {
    /// `SAVEPOINT name`.
    Set(String),
    /// `ROLLBACK TO [SAVEPOINT] name`: the changes made after it are undone, the savepoint stays.
    RollbackTo(String),
    /// `RELEASE [SAVEPOINT] name`: it and every later savepoint go, their changes stay.
    Release(String),
}

impl SessionChange {
    /// The parameter it sets or resets; None for RESET ALL.
    pub fn name(&self) -> Option<&str> {
        match self {
            SessionChange::Set { name, .. } | SessionChange::Reset { name, .. } => Some(name),
            SessionChange::ResetAll | SessionChange::Savepoint(_) | SessionChange::EndTransaction => None,
        }
    }
}

/// The classification of one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where the request may run.
    pub target: Target,
    /// Why.
    pub rule: Rule,
    /// The first state found that pins the session to the primary.
    pub pin: Option<Pin>,
    /// The request opens an explicit transaction (BEGIN / START TRANSACTION).
    pub tx_start: Option<TxStart>,
    /// Session-level setting changes in statement order (SET LOCAL and SET TRANSACTION are not).
    pub changes: Vec<SessionChange>,
    /// A transaction end comes after the last of `changes` (or the text has none): left out of them, so
    /// that a lone COMMIT carries no list of changes to copy.
    pub ends_last: bool,
    /// Contains DDL (CREATE/ALTER/DROP/COMMENT/..., also DO): the caller refreshes its function rules.
    pub ddl: bool,
    /// Of it, DDL that may create or replace a function's body (CREATE FUNCTION / PROCEDURE, CREATE or
    /// ALTER EXTENSION, DO): what a function does on a commit (`FunctionRules::may_set_commit_mode`) may
    /// have changed.
    pub code_ddl: bool,
    /// Prepared statements the text drops with DEALLOCATE (`*` for ALL), see `router::deallocate`.
    pub deallocates: Vec<String>,
}

/// Classifies a whole simple-query string (one or more statements) or the text of one Parse message.
pub fn classify(sql: &str, funcs: &FunctionRules) -> Decision {
    let verdicts: Vec<Verdict> = split_statements(sql)
        .into_iter()
        .map(|piece| classify_piece(piece, funcs))
        .collect();
    let mut decision = combine(verdicts, leading_hint(sql));
    decision.deallocates = super::deallocate::deallocated_names(sql);
    decision
}

/// One statement's classification before the request-level combination.
#[derive(Debug)]
struct Verdict {
    target: Target,
    rule: Rule,
    pin: Option<Pin>,
    /// A BEGIN / START TRANSACTION and the mode it asks for.
    begin: Option<TxStart>,
    /// A SET TRANSACTION, with the access mode it sets if any: it can still make a BEGIN read-only.
    set_transaction: Option<Option<TxStart>>,
    /// The BEGIN or SET TRANSACTION asks for serializable isolation: the transaction runs on the primary.
    serializable: bool,
    changes: Vec<SessionChange>,
    ddl: bool,
    code_ddl: bool,
}

impl Verdict {
    fn new(target: Target, rule: Rule) -> Self {
        Verdict {
            target,
            rule,
            pin: None,
            begin: None,
            set_transaction: None,
            serializable: false,
            changes: Vec::new(),
            ddl: false,
            code_ddl: false,
        }
    }

    fn primary(rule: Rule) -> Self {
        Self::new(Target::Primary, rule)
    }

    fn replica(rule: Rule) -> Self {
        Self::new(Target::Replica, rule)
    }

    fn unparsed() -> Self {
        Self::primary(Rule::Unparsed)
    }

    fn pin(mut self, pin: Option<Pin>) -> Self {
        self.pin = self.pin.or(pin);
        self
    }

    fn ddl(mut self) -> Self {
        self.ddl = true;
        self
    }

    /// Whether the DDL may change a function's body; callers mark the DDL itself with [`Verdict::ddl`].
    fn code_ddl(mut self, code: bool) -> Self {
        self.code_ddl = code;
        self
    }

    fn change(mut self, change: SessionChange) -> Self {
        self.changes.push(change);
        self
    }

    /// The part of a nested statement's verdict that an enclosing EXPLAIN / DECLARE / COPY keeps:
    /// transactions and SET cannot occur inside those. A `set_config()` can (EXPLAIN ANALYZE runs it, a
    /// cursor runs it as it is fetched), when and how often pgfleet cannot tell: the session stays on the
    /// node that ran it.
    fn nested(self) -> Self {
        let config = (!self.changes.is_empty()).then_some(Pin::SetConfig);
        Verdict {
            begin: None,
            set_transaction: None,
            changes: Vec::new(),
            pin: self.pin.or(config),
            ..self
        }
    }
}

fn combine(verdicts: Vec<Verdict>, hint: Option<Hint>) -> Decision {
    let mut begins = Vec::new();
    // The BEGIN whose following SET TRANSACTION statements may still change its access mode (or make it
    // serializable).
    let mut open: Option<(TxStart, bool)> = None;
    let mut serializable = false;
    let mut close = |open: Option<(TxStart, bool)>| {
        if let Some((mode, serial)) = open {
            begins.push(mode);
            serializable |= serial;
        }
    };
    for v in &verdicts {
        if let Some(mode) = v.begin {
            close(open.replace((mode, v.serializable)));
        } else if let (Some((mode, serial)), Some(set)) = (open.as_mut(), v.set_transaction) {
            *serial |= v.serializable;
            if let Some(access) = set {
                *mode = access;
            }
        } else {
            close(open.take());
        }
    }
    close(open);
    let tx_start = if begins.is_empty() {
        None
    } else if serializable || begins.contains(&TxStart::ReadWrite) {
        Some(TxStart::ReadWrite)
    } else {
        Some(TxStart::ReadOnly)
    };

    // A role question falls back to a replica when no primary is up; a request that also writes must not.
    // After BEGIN READ ONLY it runs in that transaction, wherever the transaction goes.
    let first_primary = verdicts
        .iter()
        .find(|v| v.target == Target::Primary && v.rule != Rule::ServerRole)
        .or_else(|| {
            verdicts
                .iter()
                .find(|v| v.target == Target::Primary && tx_start != Some(TxStart::ReadOnly))
        });
    let (mut target, mut rule) = match (first_primary, tx_start) {
        (Some(v), _) => (Target::Primary, v.rule.clone()),
        (None, Some(TxStart::ReadWrite)) if serializable => (Target::Primary, Rule::SerializableTransaction),
        (None, Some(TxStart::ReadWrite)) => (Target::Primary, Rule::TransactionBegin),
        (None, Some(TxStart::ReadOnly)) => (Target::Replica, Rule::ReadOnlyTransaction),
        (None, None) => {
            let read = verdicts.iter().any(|v| v.rule == Rule::Read);
            let rule = match verdicts.first() {
                Some(v) if !read => v.rule.clone(),
                _ => Rule::Read,
            };
            (Target::Replica, rule)
        }
    };
    if let Some(hint) = hint {
        target = match hint {
            Hint::Primary => Target::Primary,
            Hint::Replica => Target::Replica,
        };
        rule = Rule::Hint;
    }
    let pin = verdicts.iter().find_map(|v| v.pin);
    let ddl = verdicts.iter().any(|v| v.ddl);
    let code_ddl = verdicts.iter().any(|v| v.code_ddl);
    let (changes, ends_last) = changes_of(verdicts);
    Decision {
        target,
        rule,
        pin,
        tx_start,
        ddl,
        code_ddl,
        changes,
        ends_last,
        deallocates: Vec::new(),
    }
}

/// The statements' changes in order, and whether a transaction end follows the last of them (left out).
fn changes_of(verdicts: Vec<Verdict>) -> (Vec<SessionChange>, bool) {
    let mut changes: Vec<SessionChange> = verdicts.into_iter().flat_map(|v| v.changes).collect();
    let ends_last = changes.last() == Some(&SessionChange::EndTransaction);
    if ends_last {
        changes.pop();
    }
    (changes, ends_last)
}

/// The longest statement that is tokenised and parsed. The router's token list costs some 24 bytes per
/// token and sqlparser copies every token, so a statement far beyond this would cost many times its own
/// size; one this long (a bulk INSERT, a large literal) goes to the primary as it is.
pub const MAX_CLASSIFIED_STATEMENT: usize = 1024 * 1024;

fn classify_piece(piece: &str, funcs: &FunctionRules) -> Verdict {
    if piece.len() > MAX_CLASSIFIED_STATEMENT {
        return too_large(piece);
    }
    let toks: Vec<Tok> = Lexer::new(piece).filter(|t| t.kind != TokKind::Comment).collect();
    if toks.iter().any(|t| t.kind == TokKind::Unterminated) {
        return Verdict::unparsed();
    }
    let spans = paren_spans(piece, &toks);
    classify_stmt(
        Stmt {
            src: piece,
            toks: &toks,
            spans: &spans,
            nesting: 0,
        },
        funcs,
    )
}

/// A statement too long to classify runs on the primary. Its first words, read without keeping tokens, still
/// tell DDL (the function lists are refreshed after it) and a temporary table (which pins the session).
fn too_large(piece: &str) -> Verdict {
    let mut words = Lexer::new(piece)
        .filter(|t| t.kind != TokKind::Comment)
        .take(3)
        .map(|t| t.text(piece).to_ascii_uppercase());
    let first = words.next().unwrap_or_default();
    let verdict = Verdict::primary(Rule::TooLarge);
    if !matches!(first.as_str(), "CREATE" | "ALTER" | "DROP" | "COMMENT" | "DO") {
        return verdict;
    }
    let temp = first == "CREATE"
        && words
            .take_while(|w| matches!(w.as_str(), "GLOBAL" | "LOCAL" | "TEMP" | "TEMPORARY"))
            .any(|w| w.starts_with("TEMP"));
    // Too large to read further: it may create a function.
    verdict
        .ddl()
        .code_ddl(first != "DROP" && first != "COMMENT")
        .pin(temp.then_some(Pin::TempTable))
}

const DML: &[&str] = &["INSERT", "UPDATE", "DELETE", "MERGE", "TRUNCATE"];
const DDL: &[&str] = &[
    "CREATE", "ALTER", "DROP", "COMMENT", "SECURITY", "IMPORT", "REASSIGN",
];
const UTILITY: &[&str] = &[
    "LOCK",
    "VACUUM",
    "ANALYZE",
    "ANALYSE",
    "CLUSTER",
    "REINDEX",
    "REFRESH",
    "CHECKPOINT",
    "LOAD",
    "CALL",
    "GRANT",
    "REVOKE",
    "NOTIFY",
    "UNLISTEN",
    "EXECUTE",
    "DEALLOCATE",
];
const TRANSACTION_CONTROL: &[&str] = &["COMMIT", "ROLLBACK", "END", "ABORT", "SAVEPOINT", "RELEASE"];
const CURSOR: &[&str] = &["FETCH", "MOVE", "CLOSE"];

fn classify_stmt(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    if s.punct(0, "(") {
        return query(s, funcs);
    }
    if s.kind(0) != Some(TokKind::Word) {
        return Verdict::unparsed();
    }
    let first = s.text(0).to_ascii_uppercase();
    match first.as_str() {
        "SELECT" | "WITH" | "VALUES" | "TABLE" => query(s, funcs),
        "BEGIN" | "START" => begin(s),
        "SET" => set(s),
        "RESET" => reset(s),
        "SHOW" => show(s),
        "DISCARD" => discard(s),
        "EXPLAIN" => explain(s, funcs),
        "DECLARE" => declare(s, funcs),
        "COPY" => copy(s, funcs),
        "CREATE" => create(s),
        "LISTEN" => Verdict::primary(Rule::Utility("LISTEN")).pin(Some(Pin::Listen)),
        // DO blocks routinely create or replace functions, so the function rules must be reloaded.
        "DO" => Verdict::primary(Rule::Utility("DO"))
            .ddl()
            .code_ddl(true)
            .pin(do_block_pin(s)),
        "PREPARE" if s.kw(1, "TRANSACTION") => {
            Verdict::primary(Rule::Utility("PREPARE TRANSACTION")).change(SessionChange::EndTransaction)
        }
        "PREPARE" => Verdict::primary(Rule::Utility("PREPARE")).pin(Some(Pin::SqlPrepare)),
        "COMMIT" if s.kw(1, "PREPARED") => Verdict::primary(Rule::Utility("COMMIT PREPARED")),
        "ROLLBACK" if s.kw(1, "PREPARED") => Verdict::primary(Rule::Utility("ROLLBACK PREPARED")),
        "SAVEPOINT" | "RELEASE" | "ROLLBACK" => savepoint(s),
        _ => {
            if let Some(kind) = s.kw_in(0, DML) {
                Verdict::primary(Rule::Write(kind)).pin(session_pin(s, &calls(s), funcs))
            } else if s.kw_in(0, DDL).is_some() {
                Verdict::primary(Rule::Ddl)
                    .ddl()
                    .code_ddl(s.kw(0, "ALTER") && s.kw(1, "EXTENSION"))
            } else if let Some(kind) = s.kw_in(0, UTILITY) {
                Verdict::primary(Rule::Utility(kind)).pin(session_pin(s, &calls(s), funcs))
            } else if let Some(kind) = s.kw_in(0, TRANSACTION_CONTROL) {
                // COMMIT, END, ABORT (SAVEPOINT, RELEASE and ROLLBACK are read above).
                Verdict::replica(Rule::TransactionControl(kind)).change(SessionChange::EndTransaction)
            } else if let Some(kind) = s.kw_in(0, CURSOR) {
                Verdict::replica(Rule::Cursor(kind))
            } else {
                Verdict::unparsed()
            }
        }
    }
}

#[cfg(test)]
mod tests;
