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

use std::borrow::Cow;
use std::fmt;

use sqlparser::ast::{SetExpr, Statement};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use super::depth::too_deep_tokens;
use super::functions::{FunctionRules, is_session_advisory_lock};
use super::split::{Hint, Lexer, Tok, TokKind, leading_hint, split_statements};

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
    /// Opens a read-write transaction.
    TransactionBegin,
    /// Opens a read-only transaction.
    ReadOnlyTransaction,
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
            Rule::TransactionBegin => f.write_str("read-write transaction runs on the primary"),
            Rule::ReadOnlyTransaction => f.write_str("read-only transaction"),
            Rule::TransactionControl(kind) => write!(f, "{kind} follows the open transaction"),
            Rule::Cursor(kind) => write!(f, "{kind} follows its cursor"),
            Rule::SessionState(kind) => write!(f, "{kind} only touches session state"),
            Rule::Utility(kind) => write!(f, "{kind} must run on the primary"),
            Rule::TooLarge => f.write_str("statement over 1 MiB: sent to the primary unparsed"),
        }
    }
}

impl Rule {
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
            Rule::TransactionBegin => "read-write transaction runs on the primary",
            Rule::ReadOnlyTransaction => "read-only transaction",
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
}

impl fmt::Display for Pin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Pin::TempTable => "temporary object",
            Pin::AdvisoryLock => "session advisory lock",
            Pin::Listen => "LISTEN",
            Pin::HoldCursor => "WITH HOLD cursor",
            Pin::SqlPrepare => "SQL PREPARE",
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
    /// Contains DDL (CREATE/ALTER/DROP/COMMENT/..., also DO): the caller refreshes its function rules.
    pub ddl: bool,
}

/// Classifies a whole simple-query string (one or more statements) or the text of one Parse message.
pub fn classify(sql: &str, funcs: &FunctionRules) -> Decision {
    let verdicts: Vec<Verdict> = split_statements(sql)
        .into_iter()
        .map(|piece| classify_piece(piece, funcs))
        .collect();
    combine(verdicts, leading_hint(sql))
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
    changes: Vec<SessionChange>,
    ddl: bool,
}

impl Verdict {
    fn new(target: Target, rule: Rule) -> Self {
        Verdict {
            target,
            rule,
            pin: None,
            begin: None,
            set_transaction: None,
            changes: Vec::new(),
            ddl: false,
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

    fn change(mut self, change: SessionChange) -> Self {
        self.changes.push(change);
        self
    }

    /// The part of a nested statement's verdict that an enclosing EXPLAIN / DECLARE / COPY keeps:
    /// transactions and settings cannot occur inside those.
    fn nested(self) -> Self {
        Verdict {
            begin: None,
            set_transaction: None,
            changes: Vec::new(),
            ..self
        }
    }
}

fn combine(verdicts: Vec<Verdict>, hint: Option<Hint>) -> Decision {
    let mut begins = Vec::new();
    // The BEGIN whose following SET TRANSACTION statements may still change its access mode.
    let mut open: Option<TxStart> = None;
    for v in &verdicts {
        if let Some(mode) = v.begin {
            begins.extend(open.replace(mode));
        } else if let (Some(mode), Some(set)) = (open.as_mut(), v.set_transaction) {
            if let Some(access) = set {
                *mode = access;
            }
        } else {
            begins.extend(open.take());
        }
    }
    begins.extend(open);
    let tx_start = if begins.is_empty() {
        None
    } else if begins.contains(&TxStart::ReadWrite) {
        Some(TxStart::ReadWrite)
    } else {
        Some(TxStart::ReadOnly)
    };

    let first_primary = verdicts.iter().find(|v| v.target == Target::Primary);
    let (mut target, mut rule) = match (first_primary, tx_start) {
        (Some(v), _) => (Target::Primary, v.rule.clone()),
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
    Decision {
        target,
        rule,
        pin: verdicts.iter().find_map(|v| v.pin),
        tx_start,
        ddl: verdicts.iter().any(|v| v.ddl),
        changes: verdicts.into_iter().flat_map(|v| v.changes).collect(),
    }
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
    verdict.ddl().pin(temp.then_some(Pin::TempTable))
}

/// For each `(`, the distance to its matching `)` (0 when unmatched), computed once so that finding a
/// closing parenthesis stays linear however deeply a hostile request nests them.
fn paren_spans(src: &str, toks: &[Tok]) -> Vec<usize> {
    let mut spans = vec![0; toks.len()];
    let mut open = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.kind != TokKind::Punct {
            continue;
        }
        match t.text(src) {
            "(" => open.push(i),
            ")" => {
                if let Some(o) = open.pop() {
                    spans[o] = i - o;
                }
            }
            _ => {}
        }
    }
    spans
}

/// How deeply EXPLAIN / DECLARE / COPY may wrap one another before the statement counts as unparsed;
/// real SQL needs two levels, and the bound keeps `EXPLAIN EXPLAIN ...` from exhausting the stack.
const MAX_NESTING: usize = 4;

/// A statement's significant tokens (comments removed) over its source text, with the small queries
/// the classifier asks of them. Out-of-range indexes answer "no", which keeps lookahead code flat.
#[derive(Clone, Copy)]
struct Stmt<'a> {
    src: &'a str,
    toks: &'a [Tok],
    /// Parallel to `toks`: see [`paren_spans`].
    spans: &'a [usize],
    /// How many enclosing statements (EXPLAIN, DECLARE, COPY) wrap this one.
    nesting: usize,
}

impl<'a> Stmt<'a> {
    fn len(&self) -> usize {
        self.toks.len()
    }

    fn kind(&self, i: usize) -> Option<TokKind> {
        self.toks.get(i).map(|t| t.kind)
    }

    fn text(&self, i: usize) -> &'a str {
        self.toks.get(i).map_or("", |t| t.text(self.src))
    }

    fn kw(&self, i: usize, word: &str) -> bool {
        self.kind(i) == Some(TokKind::Word) && self.text(i).eq_ignore_ascii_case(word)
    }

    /// The keyword from `list` at `i`, as the list spells it.
    fn kw_in(&self, i: usize, list: &[&'static str]) -> Option<&'static str> {
        list.iter().copied().find(|k| self.kw(i, k))
    }

    fn punct(&self, i: usize, p: &str) -> bool {
        self.kind(i) == Some(TokKind::Punct) && self.text(i) == p
    }

    fn op(&self, i: usize, o: &str) -> bool {
        self.kind(i) == Some(TokKind::Op) && self.text(i) == o
    }

    fn is_name(&self, i: usize) -> bool {
        matches!(self.kind(i), Some(TokKind::Word | TokKind::QuotedIdent))
    }

    /// An identifier resolved as PostgreSQL does: unquoted folds to lower case, quoted stays exact.
    fn ident(&self, i: usize) -> String {
        let text = self.text(i);
        if self.kind(i) != Some(TokKind::QuotedIdent) {
            return text.to_ascii_lowercase();
        }
        let text = text
            .strip_prefix("U&")
            .or_else(|| text.strip_prefix("u&"))
            .unwrap_or(text);
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        inner.replace("\"\"", "\"")
    }

    fn close_paren(&self, open: usize) -> Option<usize> {
        let span = self.spans.get(open).copied().filter(|&span| span > 0)?;
        // A match beyond this slice belongs to an enclosing statement.
        Some(open + span).filter(|&close| close < self.len())
    }

    fn range(&self, from: usize, to: usize) -> Stmt<'a> {
        let to = to.min(self.len());
        let from = from.min(to);
        Stmt {
            src: self.src,
            toks: self.toks.get(from..to).unwrap_or(&[]),
            spans: self.spans.get(from..to).unwrap_or(&[]),
            nesting: self.nesting,
        }
    }

    fn from(&self, from: usize) -> Stmt<'a> {
        self.range(from, self.len())
    }

    /// The statement wrapped by this one (EXPLAIN's, DECLARE's or COPY's), unless nesting is too deep.
    fn inner(&self, from: usize, to: usize) -> Option<Stmt<'a>> {
        let nesting = self.nesting + 1;
        (nesting <= MAX_NESTING).then(|| Stmt {
            nesting,
            ..self.range(from, to)
        })
    }

    /// The statement text from its first to its last token: no surrounding comments, so it can be
    /// replayed with a `;` appended.
    fn source(&self) -> &'a str {
        match (self.toks.first(), self.toks.last()) {
            (Some(first), Some(last)) => self.src.get(first.start..last.end).unwrap_or(""),
            _ => "",
        }
    }

    /// `pg_temp.` at `i`: an object in the session's temporary schema.
    fn is_pg_temp(&self, i: usize) -> bool {
        self.is_name(i) && self.ident(i) == "pg_temp" && self.punct(i + 1, ".")
    }

    /// The index after a possibly qualified name starting at `i`, if there is one.
    fn skip_name(&self, i: usize) -> Option<usize> {
        if !self.is_name(i) {
            return None;
        }
        let mut j = i + 1;
        while self.punct(j, ".") && self.is_name(j + 1) {
            j += 2;
        }
        Some(j)
    }
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
        "SHOW" => Verdict::replica(Rule::SessionState("SHOW")),
        "DISCARD" => discard(s),
        "EXPLAIN" => explain(s, funcs),
        "DECLARE" => declare(s, funcs),
        "COPY" => copy(s, funcs),
        "CREATE" => create(s),
        "LISTEN" => Verdict::primary(Rule::Utility("LISTEN")).pin(Some(Pin::Listen)),
        // DO blocks routinely create or replace functions, so the function rules must be reloaded.
        "DO" => Verdict::primary(Rule::Utility("DO")).ddl(),
        "PREPARE" if s.kw(1, "TRANSACTION") => Verdict::primary(Rule::Utility("PREPARE TRANSACTION")),
        "PREPARE" => Verdict::primary(Rule::Utility("PREPARE")).pin(Some(Pin::SqlPrepare)),
        "COMMIT" if s.kw(1, "PREPARED") => Verdict::primary(Rule::Utility("COMMIT PREPARED")),
        "ROLLBACK" if s.kw(1, "PREPARED") => Verdict::primary(Rule::Utility("ROLLBACK PREPARED")),
        _ => {
            if let Some(kind) = s.kw_in(0, DML) {
                Verdict::primary(Rule::Write(kind)).pin(advisory_pin(&calls(s)))
            } else if s.kw_in(0, DDL).is_some() {
                Verdict::primary(Rule::Ddl).ddl()
            } else if let Some(kind) = s.kw_in(0, UTILITY) {
                Verdict::primary(Rule::Utility(kind)).pin(advisory_pin(&calls(s)))
            } else if let Some(kind) = s.kw_in(0, TRANSACTION_CONTROL) {
                Verdict::replica(Rule::TransactionControl(kind))
            } else if let Some(kind) = s.kw_in(0, CURSOR) {
                Verdict::replica(Rule::Cursor(kind))
            } else {
                Verdict::unparsed()
            }
        }
    }
}

/// What sqlparser's AST says about a statement offered as a read.
enum Parsed {
    Read,
    Write(&'static str),
    Unparsed,
    /// Not handed to sqlparser at all: see [`super::depth`].
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
fn query(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    let parsed = parse_query(s);
    let found_calls = calls(s);
    let into = select_into(s);
    let pin = match into {
        Some(true) => Some(Pin::TempTable),
        _ => advisory_pin(&found_calls),
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
    } else {
        writing_call(&found_calls, funcs).map(Rule::WriteFunction)
    };
    match (found, parsed) {
        (Some(rule), _) => Verdict::primary(rule),
        (None, Parsed::Unparsed) => Verdict::unparsed(),
        (None, Parsed::TooDeep) => Verdict::primary(Rule::TooDeep),
        (None, _) => Verdict::replica(Rule::Read),
    }
    .pin(pin)
}

/// A function call found by the token scan: `name(` or `schema.name(`, names resolved.
#[derive(Debug)]
struct Call {
    schema: Option<String>,
    name: String,
}

impl Call {
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
fn calls(s: Stmt<'_>) -> Vec<Call> {
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

fn advisory_pin(calls: &[Call]) -> Option<Pin> {
    calls
        .iter()
        .any(|c| {
            matches!(c.schema.as_deref(), None | Some("pg_catalog")) && is_session_advisory_lock(&c.name)
        })
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

fn create(s: Stmt<'_>) -> Verdict {
    let mut i = 1;
    if s.kw(i, "OR") && s.kw(i + 1, "REPLACE") {
        i += 2;
    }
    if s.kw(i, "GLOBAL") || s.kw(i, "LOCAL") {
        i += 1;
    }
    // A view over a temporary table silently becomes temporary too, so any pg_temp reference counts.
    let temp = s.kw(i, "TEMP") || s.kw(i, "TEMPORARY") || (0..s.len()).any(|j| s.is_pg_temp(j));
    Verdict::primary(Rule::Ddl)
        .ddl()
        .pin(temp.then_some(Pin::TempTable))
}

fn explain(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
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
    } else if matches!(inner.rule, Rule::Unparsed | Rule::TooDeep) {
        inner
    } else {
        Verdict::replica(Rule::Read)
    }
}

fn declare(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
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

fn copy(s: Stmt<'_>, funcs: &FunctionRules) -> Verdict {
    let mut query = None;
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
        None => Verdict::replica(Rule::Read),
        Some(Some(q)) if q.len() > 0 => classify_stmt(q, funcs).nested(),
        Some(_) => Verdict::unparsed(),
    }
}

/// A transaction mode of BEGIN / START TRANSACTION / SET TRANSACTION, with its token range.
struct Mode {
    kind: ModeKind,
    from: usize,
    to: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ModeKind {
    Isolation,
    Access(TxStart),
    Deferrable,
}

/// Parses a transaction mode list from `i` to the end; `None` if anything else is there.
fn tx_modes(s: Stmt<'_>, mut i: usize) -> Option<Vec<Mode>> {
    let mut out = Vec::new();
    while i < s.len() {
        if s.punct(i, ",") && !out.is_empty() {
            i += 1;
            continue;
        }
        let from = i;
        let kind = if s.kw(i, "ISOLATION") && s.kw(i + 1, "LEVEL") {
            i += 2;
            if s.kw(i, "SERIALIZABLE") {
                i += 1;
            } else if (s.kw(i, "REPEATABLE") && s.kw(i + 1, "READ"))
                || (s.kw(i, "READ") && (s.kw(i + 1, "COMMITTED") || s.kw(i + 1, "UNCOMMITTED")))
            {
                i += 2;
            } else {
                return None;
            }
            ModeKind::Isolation
        } else if s.kw(i, "READ") && s.kw(i + 1, "ONLY") {
            i += 2;
            ModeKind::Access(TxStart::ReadOnly)
        } else if s.kw(i, "READ") && s.kw(i + 1, "WRITE") {
            i += 2;
            ModeKind::Access(TxStart::ReadWrite)
        } else if s.kw(i, "DEFERRABLE") {
            i += 1;
            ModeKind::Deferrable
        } else if s.kw(i, "NOT") && s.kw(i + 1, "DEFERRABLE") {
            i += 2;
            ModeKind::Deferrable
        } else {
            return None;
        };
        out.push(Mode { kind, from, to: i });
    }
    Some(out)
}

fn access_mode(modes: &[Mode]) -> Option<TxStart> {
    modes.iter().rev().find_map(|m| match m.kind {
        ModeKind::Access(access) => Some(access),
        _ => None,
    })
}

fn begin(s: Stmt<'_>) -> Verdict {
    let from = if s.kw(0, "START") {
        if !s.kw(1, "TRANSACTION") {
            return Verdict::unparsed();
        }
        2
    } else if s.kw(1, "WORK") || s.kw(1, "TRANSACTION") {
        2
    } else {
        1
    };
    let Some(modes) = tx_modes(s, from) else {
        return Verdict::unparsed();
    };
    let mode = access_mode(&modes).unwrap_or(TxStart::ReadWrite);
    let rule = match mode {
        TxStart::ReadOnly => Rule::ReadOnlyTransaction,
        TxStart::ReadWrite => Rule::TransactionBegin,
    };
    Verdict {
        begin: Some(mode),
        ..Verdict::replica(rule)
    }
}

/// SET in all its forms, read lexically so that every form the server accepts can be replayed.
fn set(s: Stmt<'_>) -> Verdict {
    let mut i = 1;
    let mut local = false;
    if s.kw(i, "LOCAL") {
        local = true;
        i += 1;
    } else if s.kw(i, "SESSION") && !s.kw(i + 1, "CHARACTERISTICS") && !s.kw(i + 1, "AUTHORIZATION") {
        i += 1;
    }

    if s.kw(i, "TRANSACTION") {
        let modes = if s.kw(i + 1, "SNAPSHOT") && s.len() == i + 3 {
            Some(Vec::new())
        } else {
            tx_modes(s, i + 1)
        };
        return match modes {
            Some(modes) if !modes.is_empty() || s.kw(i + 1, "SNAPSHOT") => Verdict {
                set_transaction: Some(access_mode(&modes)),
                ..Verdict::replica(Rule::SessionState("SET TRANSACTION"))
            },
            _ => Verdict::unparsed(),
        };
    }
    if s.kw(i, "SESSION") && s.kw(i + 1, "CHARACTERISTICS") && s.kw(i + 2, "AS") && s.kw(i + 3, "TRANSACTION")
    {
        return session_characteristics(s, i + 4, local);
    }
    if s.kw(i, "CONSTRAINTS") {
        return Verdict::replica(Rule::SessionState("SET CONSTRAINTS"));
    }

    let (name, value, value_optional) = if s.kw(i, "TIME") && s.kw(i + 1, "ZONE") {
        ("timezone".to_owned(), i + 2, false)
    } else if s.kw(i, "NAMES") {
        ("client_encoding".to_owned(), i + 1, true)
    } else if s.kw(i, "ROLE") {
        ("role".to_owned(), i + 1, false)
    } else if s.kw(i, "SESSION") && s.kw(i + 1, "AUTHORIZATION") {
        ("session_authorization".to_owned(), i + 2, false)
    } else if s.kw(i, "SCHEMA") {
        ("search_path".to_owned(), i + 1, false)
    } else if s.kw(i, "XML") && s.kw(i + 1, "OPTION") {
        ("xmloption".to_owned(), i + 2, false)
    } else {
        let Some(end) = s.skip_name(i) else {
            return Verdict::unparsed();
        };
        let name = guc_name(s.range(i, end));
        if s.kw(end, "TO") || s.op(end, "=") {
            (name, end + 1, false)
        } else if s.kw(end, "FROM") && s.kw(end + 1, "CURRENT") && s.len() == end + 2 {
            (name, end + 2, true)
        } else {
            return Verdict::unparsed();
        }
    };
    if value >= s.len() && !value_optional {
        return Verdict::unparsed();
    }
    if local {
        return Verdict::replica(Rule::SessionState("SET LOCAL"));
    }
    Verdict::replica(Rule::SessionState("SET")).change(SessionChange::Set {
        name,
        statement: s.source().to_owned(),
    })
}

/// Parameter names are case-insensitive in PostgreSQL, quoted or not.
fn guc_name(name: Stmt<'_>) -> String {
    (0..name.len())
        .filter(|&i| name.is_name(i))
        .map(|i| name.ident(i).to_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION ...` sets up to three defaults at once. Each becomes its
/// own change under the parameter it really sets, replayed by a statement that sets only that one, so a
/// later `SET default_transaction_read_only` or `RESET default_transaction_isolation` replaces exactly
/// the part it overrides.
fn session_characteristics(s: Stmt<'_>, from: usize, local: bool) -> Verdict {
    let modes = match tx_modes(s, from) {
        Some(modes) if !modes.is_empty() => modes,
        _ => return Verdict::unparsed(),
    };
    let mut verdict = Verdict::replica(Rule::SessionState("SET SESSION CHARACTERISTICS"));
    if local {
        return verdict;
    }
    for mode in modes {
        let name = match mode.kind {
            ModeKind::Isolation => "default_transaction_isolation",
            ModeKind::Access(_) => "default_transaction_read_only",
            ModeKind::Deferrable => "default_transaction_deferrable",
        };
        let words: Vec<String> = (mode.from..mode.to)
            .map(|j| s.text(j).to_ascii_uppercase())
            .collect();
        let statement = format!("SET SESSION CHARACTERISTICS AS TRANSACTION {}", words.join(" "));
        verdict = verdict.change(SessionChange::Set {
            name: name.to_owned(),
            statement,
        });
    }
    verdict
}

fn reset(s: Stmt<'_>) -> Verdict {
    let verdict = Verdict::replica(Rule::SessionState("RESET"));
    let name = if s.kw(1, "ALL") && s.len() == 2 {
        return verdict.change(SessionChange::ResetAll);
    } else if s.kw(1, "TIME") && s.kw(2, "ZONE") && s.len() == 3 {
        "timezone".to_owned()
    } else if s.kw(1, "SESSION") && s.kw(2, "AUTHORIZATION") && s.len() == 3 {
        "session_authorization".to_owned()
    } else if s.kw(1, "TRANSACTION") && s.kw(2, "ISOLATION") && s.kw(3, "LEVEL") && s.len() == 4 {
        // Transaction-scoped, like SET TRANSACTION.
        return verdict;
    } else if s.skip_name(1) == Some(s.len()) {
        guc_name(s.from(1))
    } else {
        return Verdict::unparsed();
    };
    verdict.change(SessionChange::Reset {
        name,
        statement: s.source().to_owned(),
    })
}

fn discard(s: Stmt<'_>) -> Verdict {
    if s.len() != 2 {
        return Verdict::unparsed();
    }
    let verdict = Verdict::replica(Rule::SessionState("DISCARD"));
    if s.kw(1, "ALL") {
        verdict.change(SessionChange::ResetAll)
    } else if s.kw_in(1, &["PLANS", "SEQUENCES", "TEMP", "TEMPORARY"]).is_some() {
        verdict
    } else {
        Verdict::unparsed()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules() -> FunctionRules {
        FunctionRules::new(&["my_writer".to_owned()], &["read_only_but_volatile".to_owned()]).with_volatile(
            ["public.bump_counter", "audit_log"]
                .iter()
                .map(|s| (*s).to_owned())
                .collect(),
        )
    }

    fn decide(sql: &str) -> Decision {
        classify(sql, &rules())
    }

    #[test]
    fn statements_over_the_limit_go_to_the_primary_unparsed() {
        let big = "x".repeat(MAX_CLASSIFIED_STATEMENT);
        let just_under = format!("SELECT '{}'", &big[..MAX_CLASSIFIED_STATEMENT - 9]);
        assert_eq!(just_under.len(), MAX_CLASSIFIED_STATEMENT);
        assert_eq!(decide(&just_under).target, Target::Replica);
        // (text, pin, ddl)
        let cases: [(String, Option<Pin>, bool); 6] = [
            (format!("SELECT '{big}'"), None, false),
            (format!("INSERT INTO t VALUES ('{big}')"), None, false),
            (
                format!("/* note */ CREATE TEMP TABLE t AS SELECT '{big}' AS x"),
                Some(Pin::TempTable),
                true,
            ),
            (
                format!("create global temporary table t AS SELECT '{big}' AS x"),
                Some(Pin::TempTable),
                true,
            ),
            (format!("CREATE TABLE t AS SELECT '{big}' AS x"), None, true),
            (format!("DO $$ BEGIN PERFORM '{big}'; END $$"), None, true),
        ];
        for (sql, pin, ddl) in cases {
            let d = decide(&sql);
            let head = &sql[..30];
            assert_eq!((d.target, &d.rule), (Target::Primary, &Rule::TooLarge), "{head}");
            assert_eq!((d.pin, d.ddl), (pin, ddl), "{head}");
        }
        // Only the large statement of a string goes unparsed: the others keep their consequences.
        let d = decide(&format!(
            "SET search_path = app; INSERT INTO t VALUES ('{big}'); LISTEN ch"
        ));
        assert_eq!(d.target, Target::Primary);
        assert_eq!(d.changes.len(), 1);
        assert_eq!(d.pin, Some(Pin::Listen));
    }

    #[test]
    fn rules_display_short_reasons() {
        assert_eq!(Rule::Write("INSERT").to_string(), "INSERT writes");
        for rule in [
            Rule::Read,
            Rule::Hint,
            Rule::Unparsed,
            Rule::TooDeep,
            Rule::Write("INSERT"),
            Rule::Write("UPDATE"),
            Rule::Write("DELETE"),
            Rule::Write("MERGE"),
            Rule::Write("TRUNCATE"),
            Rule::Write("COPY FROM"),
            Rule::Write("OTHER"),
            Rule::Ddl,
            Rule::ForUpdate,
            Rule::SelectInto,
            Rule::ModifyingCte,
            Rule::WriteFunction("f".to_owned()),
            Rule::TransactionBegin,
            Rule::ReadOnlyTransaction,
            Rule::TransactionControl("COMMIT"),
            Rule::Cursor("FETCH"),
            Rule::SessionState("SET"),
            Rule::Utility("VACUUM"),
            Rule::TooLarge,
        ] {
            assert_eq!(rule.label(), rule.to_string());
        }
        assert_eq!(
            Rule::WriteFunction("nextval".into()).to_string(),
            "calls nextval() which may write"
        );
        assert_eq!(Rule::Unparsed.to_string(), "does not parse: sent to the primary");
        assert_eq!(Rule::Read.to_string(), "read");
    }

    #[test]
    fn reasons_name_the_cause() {
        assert_eq!(
            decide("SELECT nextval('s')").rule,
            Rule::WriteFunction("nextval".into())
        );
        assert_eq!(
            decide("SELECT public.bump_counter()").rule,
            Rule::WriteFunction("public.bump_counter".into())
        );
        assert_eq!(decide("INSERT INTO t VALUES (1)").rule, Rule::Write("INSERT"));
        assert_eq!(
            decide("WITH x AS (SELECT 1) DELETE FROM t").rule,
            Rule::Write("DELETE")
        );
        assert_eq!(
            decide("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").rule,
            Rule::ModifyingCte
        );
        assert_eq!(decide("SELECT * FROM t FOR NO KEY UPDATE").rule, Rule::ForUpdate);
        assert_eq!(decide("SELECT 1 INTO x").rule, Rule::SelectInto);
        assert_eq!(decide("CREATE TABLE t (a int)").rule, Rule::Ddl);
        assert_eq!(decide("VACUUM t").rule, Rule::Utility("VACUUM"));
        assert_eq!(decide("SELEC 1").rule, Rule::Unparsed);
        assert_eq!(decide("BEGIN").rule, Rule::TransactionBegin);
        assert_eq!(
            decide("BEGIN READ ONLY; SELECT 1").rule,
            Rule::ReadOnlyTransaction
        );
        assert_eq!(decide("/* pgfleet:replica */ DELETE FROM t").rule, Rule::Hint);
        assert_eq!(decide("").rule, Rule::Read);
        assert_eq!(decide("SET x = 1; SELECT 1").rule, Rule::Read);
        assert_eq!(decide("COMMIT").rule, Rule::TransactionControl("COMMIT"));
        assert_eq!(
            decide("SELECT 1; INSERT INTO t VALUES (1); DELETE FROM t").rule,
            Rule::Write("INSERT")
        );
    }

    #[test]
    fn set_changes_are_canonical() {
        let set = |sql: &str| decide(sql).changes;
        let named = |name: &str, statement: &str| SessionChange::Set {
            name: name.into(),
            statement: statement.into(),
        };
        assert_eq!(
            set("SET search_path TO a, b"),
            vec![named("search_path", "SET search_path TO a, b")]
        );
        assert_eq!(
            set("set \"TimeZone\" = 'UTC' -- trailing"),
            vec![named("timezone", "set \"TimeZone\" = 'UTC'")]
        );
        assert_eq!(
            set("SET TIME ZONE 'UTC'"),
            vec![named("timezone", "SET TIME ZONE 'UTC'")]
        );
        assert_eq!(
            set("SET NAMES 'UTF8'"),
            vec![named("client_encoding", "SET NAMES 'UTF8'")]
        );
        assert_eq!(
            set("SET SESSION ROLE bob"),
            vec![named("role", "SET SESSION ROLE bob")]
        );
        assert_eq!(
            set("SET SCHEMA 'app'"),
            vec![named("search_path", "SET SCHEMA 'app'")]
        );
        assert_eq!(
            set("SET my.Custom = 1"),
            vec![named("my.custom", "SET my.Custom = 1")]
        );
        assert_eq!(
            set("SET SESSION AUTHORIZATION DEFAULT"),
            vec![named(
                "session_authorization",
                "SET SESSION AUTHORIZATION DEFAULT"
            )]
        );
        assert_eq!(
            set("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL serializable, READ ONLY"),
            vec![
                named(
                    "default_transaction_isolation",
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"
                ),
                named(
                    "default_transaction_read_only",
                    "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
                ),
            ]
        );
        assert!(set("SET LOCAL search_path TO a").is_empty());
        assert!(set("SET TRANSACTION READ ONLY").is_empty());
        assert!(set("SET CONSTRAINTS ALL DEFERRED").is_empty());
        assert_eq!(
            set("RESET Search_Path"),
            vec![SessionChange::Reset {
                name: "search_path".into(),
                statement: "RESET Search_Path".into()
            }]
        );
        assert_eq!(set("RESET ALL"), vec![SessionChange::ResetAll]);
        assert_eq!(set("DISCARD ALL"), vec![SessionChange::ResetAll]);
        assert!(set("SET search_path").is_empty());
        assert_eq!(decide("SET search_path").target, Target::Primary);
    }

    #[test]
    fn hostile_nesting_stays_cheap_and_bounded() {
        let explains = format!("{}SELECT 1", "EXPLAIN ".repeat(100_000));
        assert_eq!(decide(&explains).target, Target::Primary);
        assert_eq!(decide("EXPLAIN EXPLAIN SELECT 1").target, Target::Replica);
        let copies = format!(
            "{}SELECT 1{} TO STDOUT",
            "COPY (".repeat(50_000),
            ") TO STDOUT".repeat(50_000)
        );
        assert_eq!(decide(&copies).target, Target::Primary);
        let calls = format!("SELECT {}1{}", "abs(".repeat(100_000), ")".repeat(100_000));
        let started = std::time::Instant::now();
        let d = decide(&calls);
        assert!(
            started.elapsed() < std::time::Duration::from_secs(5),
            "took {:?}",
            started.elapsed()
        );
        // Too deep to hand to sqlparser at all: safe, on the primary.
        assert_eq!((d.target, d.rule), (Target::Primary, Rule::TooDeep));
        // Deep enough for sqlparser's own recursion limit, not for the depth bound: refused by the parser.
        let calls = format!("SELECT {}1{}", "abs(".repeat(100), ")".repeat(100));
        assert_eq!(decide(&calls).rule, Rule::Unparsed);
        let writer = format!("SELECT {}nextval('s'){}", "abs(".repeat(20), ")".repeat(20));
        assert_eq!(decide(&writer).rule, Rule::WriteFunction("nextval".into()));
    }

    type MakeStatement = fn(usize) -> String;

    /// Statements of each shape that sqlparser turns into a deep tree, built with `n` terms.
    const DEEP_SHAPES: &[(&str, MakeStatement)] = &[
        ("binary chain", |n| format!("SELECT {}1", "1+".repeat(n))),
        ("cast chain", |n| format!("SELECT 1{}", "::int".repeat(n))),
        ("OR chain", |n| {
            let terms: Vec<String> = (0..n).map(|i| format!("aid = {i}")).collect();
            format!("SELECT * FROM t WHERE {}", terms.join(" OR "))
        }),
        ("AND chain", |n| {
            format!("SELECT * FROM t WHERE {}true", "a AND ".repeat(n))
        }),
        ("nested parentheses", |n| {
            format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n))
        }),
        ("nested subqueries", |n| {
            format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n))
        }),
        ("unary minus chain", |n| format!("SELECT {}1", "- ".repeat(n))),
        ("nested CASE", |n| {
            format!("SELECT {}1{}", "CASE WHEN true THEN ".repeat(n), " END".repeat(n))
        }),
        ("array subscripts", |n| {
            format!("SELECT a{} FROM t", "[1]".repeat(n))
        }),
        ("UNION chain", |n| {
            format!("SELECT 1{}", " UNION SELECT 1".repeat(n))
        }),
        ("IS NULL chain", |n| format!("SELECT 1{}", " IS NULL".repeat(n))),
        ("JSON operators", |n| {
            format!("SELECT j{} FROM t", " -> 'k'".repeat(n))
        }),
        ("COLLATE chain", |n| {
            format!("SELECT 'a'{}", " COLLATE \"C\"".repeat(n))
        }),
        ("mixed groups and chains", |n| {
            format!("SELECT {}1", "(1 + 1) * ".repeat(n))
        }),
    ];

    #[test]
    fn deep_statements_go_to_the_primary_unparsed() {
        for (shape, make) in DEEP_SHAPES {
            // A few terms of each shape are an ordinary read.
            let shallow = decide(&make(10));
            assert_eq!(
                (shallow.target, &shallow.rule),
                (Target::Replica, &Rule::Read),
                "{shape}"
            );
            for terms in [50_000, 200_000] {
                let text = make(terms);
                let deep = decide(&text);
                // Past 1 MiB the size limit answers first, before any token is kept.
                let rule = if text.len() > MAX_CLASSIFIED_STATEMENT {
                    Rule::TooLarge
                } else {
                    Rule::TooDeep
                };
                assert_eq!(
                    (deep.target, &deep.rule),
                    (Target::Primary, &rule),
                    "{shape} of {terms} terms"
                );
            }
        }
    }

    #[test]
    fn deep_statements_keep_their_lexical_findings() {
        let chain = "1+".repeat(100_000);
        // A write is never offered to a replica, parsed or not.
        for (sql, target, rule) in [
            (
                format!("INSERT INTO t VALUES ({chain}1)"),
                Target::Primary,
                Rule::Write("INSERT"),
            ),
            // Only the parse would name the DELETE; unparsed, it goes to the primary all the same.
            (
                format!("WITH x AS (SELECT 1) DELETE FROM t WHERE a = {chain}1"),
                Target::Primary,
                Rule::TooDeep,
            ),
            (
                format!("SELECT nextval('s') + {chain}1"),
                Target::Primary,
                Rule::WriteFunction("nextval".into()),
            ),
            (
                format!("SELECT * FROM t WHERE a = {chain}1 FOR UPDATE"),
                Target::Primary,
                Rule::ForUpdate,
            ),
            (
                format!("SELECT 1; SELECT {chain}1"),
                Target::Primary,
                Rule::TooDeep,
            ),
            (format!("EXPLAIN SELECT {chain}1"), Target::Primary, Rule::TooDeep),
            (
                format!("/* pgfleet:replica */ SELECT {chain}1"),
                Target::Replica,
                Rule::Hint,
            ),
        ] {
            let d = decide(&sql);
            assert_eq!((d.target, &d.rule), (target, &rule), "{}", &sql[..40]);
        }
        let locked = decide(&format!("SELECT pg_advisory_lock(1) + {chain}1"));
        assert_eq!(
            (locked.rule, locked.pin),
            (
                Rule::WriteFunction("pg_advisory_lock".into()),
                Some(Pin::AdvisoryLock)
            )
        );
    }

    #[test]
    fn read_only_begin_variants() {
        for sql in [
            "BEGIN READ ONLY",
            "begin transaction read only",
            "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
            "START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ",
            "BEGIN; SET TRANSACTION READ ONLY",
            "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY; SELECT 1",
        ] {
            let d = decide(sql);
            assert_eq!(
                (d.target, d.tx_start),
                (Target::Replica, Some(TxStart::ReadOnly)),
                "{sql}"
            );
        }
        for sql in [
            "BEGIN",
            "START TRANSACTION",
            "BEGIN READ ONLY, READ WRITE",
            "BEGIN; SELECT 1; SET TRANSACTION READ ONLY",
        ] {
            let d = decide(sql);
            assert_eq!(
                (d.target, d.tx_start),
                (Target::Primary, Some(TxStart::ReadWrite)),
                "{sql}"
            );
        }
        assert_eq!(decide("BEGIN READ BANANA").tx_start, None);
    }
}
