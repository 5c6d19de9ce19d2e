//! A client request as the session buffers it before choosing a node (a Query, or extended-protocol frames
//! up to Sync or Flush), and the plan derived from it: where it may run and what session state it touches.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use super::state::{Statement, Statements};
use crate::protocol::Frame;
use crate::protocol::encoding::ClientEncoding;
use crate::protocol::messages::{bind_names, parse_fields_bytes, query_bytes, target_name};
use crate::router::cache::{Place, classify_placed, classify_placed_utf8};
use crate::router::classify::{Decision, Pin, Rule, SessionChange, Target, TxStart};
use crate::router::functions::FunctionRules;

/// A request larger than this without Sync or Flush is sent on early, as if Flush had been sent, so that
/// the proxy never holds more than this of one client's input.
pub const MAX_BUFFERED_REQUEST: usize = 1 << 20;

/// How a session reads its statements: where it was among its worker's recent statements
/// (`router::cache::Place`), and the encoding its text arrives in.
#[derive(Debug, Default)]
pub struct Reading {
    /// See [`Place`].
    pub place: Place,
    /// The session's `client_encoding`, as its settings last committed it.
    pub encoding: ClientEncoding,
}

impl Reading {
    /// The decision for a statement's text, read as this session reads it; None when its encoding is not
    /// read ([`ClientEncoding::read`]). In UTF8 the bytes go to the decision cache as they are
    /// (`router::cache::classify_placed_utf8`), which checks them as UTF-8 only when its first guesses miss.
    fn decide(&mut self, bytes: &[u8], rules: &Arc<FunctionRules>) -> Option<Arc<Decision>> {
        if self.encoding.is_utf8() {
            return Some(classify_placed_utf8(bytes, rules, &mut self.place));
        }
        let text = self.encoding.read(bytes)?;
        Some(classify_placed(&text, rules, &mut self.place))
    }
}

/// Why a request whose text pgfleet cannot read, or whose setting it cannot carry to another node, runs on
/// the primary.
const ENCODING_RULE: &str =
    "text in a client_encoding pgfleet does not carry to other nodes: the session stays on the primary";

/// Whether a request's setting changes can be replayed on other nodes from pgfleet's UTF-8 copy of them: in
/// UTF8 always; in another encoding only when plain ASCII (the same bytes in every encoding the session
/// can have), since a node's connection reads the replayed text in the session's encoding.
fn carried(changes: &[SessionChange], encoding: ClientEncoding) -> bool {
    encoding.is_utf8()
        || changes.iter().all(|c| match c {
            SessionChange::Set { statement, .. } | SessionChange::Reset { statement, .. } => {
                statement.is_ascii()
            }
            SessionChange::ResetAll | SessionChange::Savepoint(_) | SessionChange::EndTransaction => true,
        })
}

/// A statement parsed in text pgfleet does not carry to other nodes ([`ENCODING_RULE`]).
fn on_primary(frame: &Frame) -> Statement {
    Statement {
        parse: frame.raw.clone(),
        target: Target::Primary,
        rule: Cow::Borrowed(ENCODING_RULE),
        pin: Some(Pin::ClientEncoding),
        changes: Vec::new(),
        ends_last: false,
        id: 0,
    }
}

/// Up to this many entries, the lists of a plan are searched from the end; past it they are indexed.
const SCAN_LIMIT: usize = 8;

/// Where the latest entry of each name stands in a list that only grows. A request may hold tens of
/// thousands of Parse and Bind frames (up to MAX_BUFFERED_REQUEST): searching its lists for every Bind took
/// a second of a runtime thread per request, stalling the sessions that share it. The usual request has one
/// Parse, and a map for it cost an allocation, a hash and a free (about 300 instructions) for a search of
/// one entry; so a list is searched while it is short and indexed once it grows past `SCAN_LIMIT`.
#[derive(Debug, Default)]
struct NameIndex(foldhash::HashMap<String, usize>);

impl NameIndex {
    /// The position of the latest entry named `name` in `list`.
    fn find<T>(&self, list: &[T], name_of: impl Fn(&T) -> &str, name: &str) -> Option<usize> {
        match list.len() <= SCAN_LIMIT {
            true => list.iter().rposition(|e| name_of(e) == name),
            false => self.0.get(name).copied(),
        }
    }

    /// Takes note of the entry just pushed onto `list`.
    fn pushed<T>(&mut self, list: &[T], name_of: impl Fn(&T) -> &str) {
        let len = list.len();
        if len <= SCAN_LIMIT {
            return;
        }
        // Crossing the limit indexes what came before; later entries overwrite earlier ones of the name.
        let from = if len == SCAN_LIMIT + 1 { 0 } else { len - 1 };
        for (at, e) in list.iter().enumerate().skip(from) {
            self.0.insert(name_of(e).to_owned(), at);
        }
    }
}

fn parse_name(p: &(String, Statement)) -> &str {
    &p.0
}

/// How a buffered request ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// A simple Query.
    Query,
    /// Extended frames closed by Sync.
    Sync,
    /// Extended frames closed by Flush, or sent early: the batch stays open on its node until Sync.
    Open,
}

/// Frames the session has buffered.
#[derive(Debug, Default)]
pub struct Request {
    /// The frames, in order.
    pub frames: Vec<Frame>,
    /// Their total size.
    pub bytes: usize,
}

impl Request {
    /// Adds a frame; returns how the request ends if this frame ends it.
    pub fn push(&mut self, frame: Frame) -> Option<End> {
        self.bytes += frame.raw.len();
        let kind = frame.kind;
        self.frames.push(frame);
        match kind {
            // A function call (the fast-path protocol libpq's large-object API uses) is answered like a
            // simple query: its result, then ReadyForQuery.
            b'Q' | b'F' => Some(End::Query),
            b'S' => Some(End::Sync),
            b'H' => Some(End::Open),
            _ if self.bytes > MAX_BUFFERED_REQUEST => Some(End::Open),
            _ => None,
        }
    }

    /// Forgets the frames, keeping the list's allocation for the next request unless a long pipeline
    /// made it large (idle sessions should stay small).
    pub fn clear(&mut self) {
        if self.frames.capacity() > 64 {
            self.frames = Vec::new();
        } else {
            self.frames.clear();
        }
        self.bytes = 0;
    }

    /// The frames as one block to write: the frame itself when there is one, else their bytes copied into
    /// `scratch` (a buffer the caller keeps, so that extended-protocol requests need no allocation).
    pub fn encode<'a>(&'a self, scratch: &'a mut Vec<u8>) -> &'a [u8] {
        if let [only] = self.frames.as_slice() {
            return &only.raw;
        }
        scratch.clear();
        scratch.reserve(self.bytes);
        for f in &self.frames {
            scratch.extend_from_slice(&f.raw);
        }
        scratch
    }

    /// How many ReadyForQuery the node will send for it.
    pub fn ready_count(&self) -> usize {
        self.frames
            .iter()
            .filter(|f| matches!(f.kind, b'Q' | b'S' | b'F'))
            .count()
    }

    /// Whether it uses the extended protocol.
    pub fn is_extended(&self) -> bool {
        self.frames.iter().any(|f| !matches!(f.kind, b'Q' | b'F'))
    }
}

/// What the router decided and what the session must track for one request.
#[derive(Debug)]
pub struct Plan {
    /// Where the request may run.
    pub target: Target,
    /// Why, for logs and the routing statistics.
    pub rule: Cow<'static, str>,
    /// Session state the request creates that cannot move between nodes.
    pub pin: Option<Pin>,
    /// An explicit transaction the request opens.
    pub tx_start: Option<TxStart>,
    /// Settings the request changes, if it succeeds, with the savepoints and transaction ends among them.
    pub changes: Vec<SessionChange>,
    /// A transaction end follows the last of `changes` ([`Decision::ends_last`]).
    pub ends_last: bool,
    /// Contains DDL.
    pub ddl: bool,
    /// Contains DDL that may create or replace a function's body (`Decision::code_ddl`).
    pub code_ddl: bool,
    /// Statements it uses that the chosen node must have before the request runs.
    pub needs: Vec<String>,
    /// Statements it parses, in order (matched to ParseComplete replies).
    pub parses: Vec<(String, Statement)>,
    /// Statements it closes.
    pub closes: Vec<String>,
    /// It runs a simple Query (which discards the node's unnamed statement).
    pub has_query: bool,
    /// Prepared statements it drops with SQL DEALLOCATE; `*` stands for DEALLOCATE ALL.
    pub deallocates: Vec<String>,
    /// The latest Parse of each name in `parses`, and each name in `needs`.
    parse_at: NameIndex,
    needed: NameIndex,
    /// The request opened a read-only transaction: a question about the server's role that follows runs in
    /// it, wherever it goes, rather than taking the whole request to the primary.
    read_only_begin: bool,
}

impl Plan {
    /// Whether the request runs on the primary for what it may write, not only to read there (a question
    /// about the server's role, an unlogged table).
    pub fn may_write(&self) -> bool {
        self.target == Target::Primary && !Rule::is_read_on_primary(&self.rule)
    }

    fn empty() -> Self {
        Plan {
            target: Target::Replica,
            rule: Cow::Borrowed("read"),
            pin: None,
            tx_start: None,
            changes: Vec::new(),
            ends_last: false,
            ddl: false,
            code_ddl: false,
            needs: Vec::new(),
            parses: Vec::new(),
            closes: Vec::new(),
            has_query: false,
            deallocates: Vec::new(),
            parse_at: Default::default(),
            needed: Default::default(),
            read_only_begin: false,
        }
    }

    /// Whether a statement sent to the primary for `rule` (a label) runs in a read-only transaction this
    /// request opened instead.
    fn stays_in_read_only_begin(&self, rule: &str) -> bool {
        self.read_only_begin && Rule::answers_without_primary(rule)
    }

    fn merge(&mut self, d: &Decision, with_changes: bool) {
        self.read_only_begin |= d.tx_start == Some(TxStart::ReadOnly);
        if d.target == Target::Primary
            && self.target != Target::Primary
            && !self.stays_in_read_only_begin(&d.rule.label())
        {
            self.target = Target::Primary;
            self.rule = d.rule.label();
        }
        if self.pin.is_none() {
            self.pin = d.pin;
        }
        if self.tx_start.is_none() {
            self.tx_start = d.tx_start;
        }
        if with_changes {
            self.add_changes(&d.changes, d.ends_last);
        }
        self.ddl |= d.ddl;
        self.code_ddl |= d.code_ddl;
    }

    fn merge_statement(&mut self, s: &Statement, with_changes: bool) {
        if s.target == Target::Primary
            && self.target != Target::Primary
            && !self.stays_in_read_only_begin(&s.rule)
        {
            self.target = Target::Primary;
            // A read that only the primary may answer keeps its own reason (and is not taken for a write).
            self.rule = if Rule::is_read_on_primary(&s.rule) {
                s.rule.clone()
            } else {
                Cow::Borrowed("prepared statement that may write")
            };
        }
        if self.pin.is_none() {
            self.pin = s.pin;
        }
        if with_changes {
            self.add_changes(&s.changes, s.ends_last);
        }
    }

    /// Adds a statement's changes after the request's; a transaction end left out as the last of them
    /// ([`Decision::ends_last`]) goes back in once a change follows it.
    fn add_changes(&mut self, changes: &[SessionChange], ends_last: bool) {
        if !changes.is_empty() {
            if std::mem::take(&mut self.ends_last) {
                self.changes.push(SessionChange::EndTransaction);
            }
            self.changes.extend(changes.iter().cloned());
        }
        self.ends_last |= ends_last;
    }

    /// Sends the request to the primary and keeps the session there ([`ENCODING_RULE`]): its text may hold
    /// a setting pgfleet could not read or could not replay elsewhere, which only that connection has.
    fn stay_on_primary(&mut self) {
        self.target = Target::Primary;
        self.rule = Cow::Borrowed(ENCODING_RULE);
        if self.pin.is_none() {
            self.pin = Some(Pin::ClientEncoding);
        }
    }

    fn push_parse(&mut self, name: &str, stmt: Statement) {
        // Room for one, not the four a first push makes: the list's room is kept by the session between
        // requests (`Session::spare_parses`), and most requests parse one statement.
        if self.parses.capacity() == 0 {
            self.parses.reserve_exact(1);
        }
        self.parses.push((name.to_owned(), stmt));
        self.parse_at.pushed(&self.parses, parse_name);
    }

    /// Adds one frame's consequences; used for the request and for frames that follow an open batch.
    pub fn note(
        &mut self,
        frame: &Frame,
        statements: &Statements,
        rules: &Arc<FunctionRules>,
        reading: &mut Reading,
    ) {
        let body = frame.body();
        match frame.kind {
            b'Q' => {
                self.has_query = true;
                let Some(d) = reading.decide(query_bytes(body).unwrap_or_default(), rules) else {
                    return self.stay_on_primary();
                };
                self.merge(&d, true);
                self.deallocates.extend(d.deallocates.iter().cloned());
                if !carried(&d.changes, reading.encoding) {
                    self.stay_on_primary();
                }
            }
            b'P' => {
                // A name that is not UTF-8 (or a frame without its NULs) is not read either; the entry is kept,
                // as the node's ParseComplete replies are matched to these entries in order.
                let Some((name, d)) = parse_fields_bytes(body)
                    .and_then(|(name, bytes)| Some((name, reading.decide(bytes, rules)?)))
                else {
                    self.stay_on_primary();
                    return self.push_parse("", on_primary(frame));
                };
                // The statement's own consequences count once it is executed, not when it is prepared;
                // but a write is prepared on the primary so that its Execute needs no second Parse.
                self.read_only_begin |= d.tx_start == Some(TxStart::ReadOnly);
                if d.target == Target::Primary
                    && self.target != Target::Primary
                    && !self.stays_in_read_only_begin(&d.rule.label())
                {
                    self.target = Target::Primary;
                    self.rule = d.rule.label();
                }
                self.ddl |= d.ddl;
                self.code_ddl |= d.code_ddl;
                let mut stmt = Statement {
                    parse: frame.raw.clone(),
                    target: d.target,
                    rule: d.rule.label(),
                    pin: d.pin,
                    changes: d.changes.clone(),
                    ends_last: d.ends_last,
                    id: 0,
                };
                if !carried(&d.changes, reading.encoding) {
                    stmt = on_primary(frame);
                    self.stay_on_primary();
                }
                self.push_parse(name, stmt);
            }
            b'B' | b'D' => {
                let name = if frame.kind == b'B' {
                    bind_names(body).map(|(_, s)| s)
                } else {
                    target_name(body).and_then(|(k, n)| (k == b'S').then_some(n))
                };
                let Some(name) = name else { return };
                let executes = frame.kind == b'B';
                if let Some(at) = self.parse_index(name) {
                    // Taken out for the merge, which changes the rest of the plan: a move, not a copy.
                    let parses = std::mem::take(&mut self.parses);
                    if let Some((_, s)) = parses.get(at) {
                        self.merge_statement(s, executes);
                    }
                    self.parses = parses;
                } else if let Some(s) = statements.get(name) {
                    self.merge_statement(s, executes);
                    self.need(name);
                } else if self.target != Target::Primary {
                    // Unknown to the proxy: let the primary give PostgreSQL's own error.
                    self.target = Target::Primary;
                    self.rule = Cow::Owned(format!("unknown prepared statement \"{name}\""));
                }
            }
            b'C' => {
                if let Some((b'S', name)) = target_name(body) {
                    self.closes.push(name.to_owned());
                }
            }
            b'F' => {
                self.target = Target::Primary;
                self.rule = Cow::Borrowed("function call message");
            }
            _ => {}
        }
    }

    /// The plan for a whole request.
    pub fn for_request(req: &Request, statements: &Statements, rules: &Arc<FunctionRules>) -> Plan {
        Plan::for_request_in(req, statements, rules, Vec::new(), &mut Reading::default())
    }

    /// The plan for a whole request, its parsed statements kept in `parses` (an empty list whose room an
    /// earlier plan left behind), its statements read as the session reads them ([`Reading`]).
    pub fn for_request_in(
        req: &Request,
        statements: &Statements,
        rules: &Arc<FunctionRules>,
        parses: Vec<(String, Statement)>,
        reading: &mut Reading,
    ) -> Plan {
        debug_assert!(parses.is_empty());
        let mut plan = Plan {
            parses,
            ..Plan::empty()
        };
        for f in &req.frames {
            plan.note(f, statements, rules, reading);
        }
        plan
    }

    /// Whether the request parsed a statement of this name (its later Bind finds it on the same node).
    pub fn parsed(&self, name: &str) -> bool {
        self.parse_index(name).is_some()
    }

    /// Where in `parses` the latest Parse of `name` is.
    fn parse_index(&self, name: &str) -> Option<usize> {
        self.parse_at.find(&self.parses, parse_name, name)
    }

    /// Adds a statement the node must have, once.
    fn need(&mut self, name: &str) {
        if self.needed.find(&self.needs, String::as_str, name).is_none() {
            self.needs.push(name.to_owned());
            self.needed.pushed(&self.needs, String::as_str);
        }
    }

    /// Names parsed in this request.
    pub fn parsed_names(&self) -> HashSet<&str> {
        self.parses.iter().map(|(n, _)| n.as_str()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(kind: u8, body: &[u8]) -> Frame {
        let mut raw = vec![kind];
        raw.extend_from_slice(&(4 + body.len() as u32).to_be_bytes());
        raw.extend_from_slice(body);
        Frame {
            kind,
            raw: raw.into(),
        }
    }

    fn parse(name: &str, text: &str) -> Frame {
        frame(b'P', format!("{name}\0{text}\0\0\0").as_bytes())
    }

    fn bind(name: &str) -> Frame {
        frame(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes())
    }

    #[test]
    fn statements_are_read_in_the_sessions_encoding() {
        let rules = Arc::new(FunctionRules::default());
        let utf8 = ClientEncoding::Utf8;
        let latin1 = ClientEncoding::from_name("LATIN1");
        let johab = ClientEncoding::from_name("JOHAB");
        let query = |text: &[u8]| {
            let mut body = text.to_vec();
            body.push(0);
            frame(b'Q', &body)
        };
        let parse_bytes = |text: &[u8]| {
            let mut body = b"s\0".to_vec();
            body.extend_from_slice(text);
            body.extend_from_slice(b"\0\0\0");
            frame(b'P', &body)
        };
        // (encoding, frame, where the request runs, whether the session stays on the primary for it)
        let cases: Vec<(ClientEncoding, Frame, Target, bool)> = vec![
            (utf8, query("SELECT 'café'".as_bytes()), Target::Replica, false),
            (
                utf8,
                query("SET application_name = 'café'".as_bytes()),
                Target::Replica,
                false,
            ),
            (
                latin1,
                query(b"UPDATE t SET a = 'caf\xe9'"),
                Target::Primary,
                false,
            ),
            (latin1, query(b"SELECT 'caf\xe9'"), Target::Replica, false),
            (
                latin1,
                query(b"SET application_name = 'cafe'"),
                Target::Replica,
                false,
            ),
            // Replayed from a UTF-8 copy, the setting would reach another node's LATIN1 connection as other
            // characters.
            (
                latin1,
                query(b"SET application_name = 'caf\xe9'"),
                Target::Primary,
                true,
            ),
            (
                latin1,
                parse_bytes(b"SET application_name = 'caf\xe9'"),
                Target::Primary,
                true,
            ),
            (latin1, parse_bytes(b"SELECT 'caf\xe9'"), Target::Replica, false),
            (johab, query(b"SELECT 1"), Target::Replica, false),
            (johab, query(b"SELECT '\x88\xa1'"), Target::Primary, true),
            (johab, parse_bytes(b"SELECT '\x88\xa1'"), Target::Primary, true),
            // A statement name that is not UTF-8: not read, in any encoding.
            (utf8, frame(b'P', b"n\xe9\0SELECT 1\0\0\0"), Target::Primary, true),
        ];
        for (encoding, f, target, stays) in cases {
            let mut reading = Reading {
                encoding,
                ..Reading::default()
            };
            let mut plan = Plan::empty();
            plan.note(&f, &Statements::default(), &rules, &mut reading);
            let what = format!("{encoding:?} {:?}", String::from_utf8_lossy(f.body()));
            assert_eq!(plan.target, target, "{what}");
            assert_eq!(plan.pin == Some(Pin::ClientEncoding), stays, "{what}");
            // A parsed statement's later execution, from another request, is decided the same way.
            assert_eq!(plan.parses.len(), usize::from(f.kind == b'P'), "{what}");
            for (_, stmt) in &plan.parses {
                assert_eq!(stmt.target, target, "{what}");
                assert_eq!(stmt.pin == Some(Pin::ClientEncoding), stays, "{what}");
            }
        }
    }

    fn plan_of(frames: &[Frame], statements: &Statements) -> Plan {
        let rules = Arc::new(FunctionRules::default());
        let mut plan = Plan::empty();
        for f in frames {
            plan.note(f, statements, &rules, &mut Reading::default());
        }
        plan
    }

    #[test]
    fn a_function_call_ends_its_request_as_a_query_does() {
        let mut req = Request::default();
        // FunctionCall: function oid, no argument formats, one text argument, text result.
        let call = frame(b'F', &[0, 0, 3, 0xad, 0, 0, 0, 1, 0, 0, 0, 1, b'7', 0, 0]);
        assert_eq!(req.push(call), Some(End::Query));
        assert_eq!(req.ready_count(), 1);
        assert!(!req.is_extended());
        let plan = plan_of(&req.frames, &Statements::default());
        assert_eq!(plan.target, Target::Primary);
    }

    #[test]
    fn a_transaction_end_goes_among_the_changes_once_a_change_follows_it() {
        let set = SessionChange::Set {
            name: "work_mem".into(),
            statement: "SET work_mem = 1".into(),
        };
        let q = |sql: &str| frame(b'Q', format!("{sql}\0").as_bytes());
        // (frames, changes, a transaction end after them)
        let cases: Vec<(Vec<Frame>, Vec<SessionChange>, bool)> = vec![
            (vec![q("COMMIT")], vec![], true),
            (vec![parse("", "COMMIT"), bind("")], vec![], true),
            // Parsed, not run.
            (vec![parse("c", "COMMIT")], vec![], false),
            // One pipeline under one Sync.
            (
                vec![
                    parse("", "COMMIT"),
                    bind(""),
                    parse("", "SET work_mem = 1"),
                    bind(""),
                ],
                vec![SessionChange::EndTransaction, set.clone()],
                false,
            ),
            (
                vec![
                    parse("", "SET work_mem = 1"),
                    bind(""),
                    parse("", "ROLLBACK"),
                    bind(""),
                ],
                vec![set.clone()],
                true,
            ),
            // A read between them changes nothing.
            (
                vec![parse("", "COMMIT"), bind(""), parse("", "SELECT 1"), bind("")],
                vec![],
                true,
            ),
        ];
        for (frames, changes, ends_last) in cases {
            let plan = plan_of(&frames, &Statements::default());
            assert_eq!(plan.changes, changes, "{frames:?}");
            assert_eq!(plan.ends_last, ends_last, "{frames:?}");
        }
    }

    #[test]
    fn a_bind_takes_the_latest_parse_of_its_name_below_and_above_the_scan_limit() {
        // (Parse frames before the Bind, whether the statement's latest Parse is the SET)
        for others in [
            0,
            1,
            SCAN_LIMIT - 2,
            SCAN_LIMIT - 1,
            SCAN_LIMIT,
            SCAN_LIMIT + 1,
            3 * SCAN_LIMIT,
        ] {
            for set_last in [true, false] {
                let (first, last) = match set_last {
                    true => ("SELECT 1", "SET search_path = a"),
                    false => ("SET search_path = a", "SELECT 1"),
                };
                let mut frames = vec![parse("s", first)];
                frames.extend((0..others).map(|i| parse(&format!("o{i}"), "SELECT 2")));
                frames.push(parse("s", last));
                frames.push(bind("s"));
                let plan = plan_of(&frames, &Statements::default());
                assert_eq!(
                    !plan.changes.is_empty(),
                    set_last,
                    "{others} other statements, SET last: {set_last}"
                );
                assert!(plan.parsed("s"), "{others}");
                assert!(plan.parsed("o0") == (others > 0), "{others}");
                assert!(!plan.parsed("nope"), "{others}");
                assert!(plan.needs.is_empty(), "{others}");
            }
        }
    }

    #[test]
    fn statements_the_node_needs_are_listed_once_in_first_use_order() {
        for distinct in [1, SCAN_LIMIT, SCAN_LIMIT + 1, SCAN_LIMIT + 2, 3 * SCAN_LIMIT] {
            let names: Vec<String> = (0..distinct).map(|i| format!("p{i}")).collect();
            let mut statements = Statements::default();
            for name in &names {
                statements.insert(
                    name,
                    Statement {
                        parse: parse(name, "SELECT 1").raw,
                        target: Target::Replica,
                        rule: Cow::Borrowed("read"),
                        pin: None,
                        changes: Vec::new(),
                        ends_last: false,
                        id: 0,
                    },
                );
            }
            // Every name bound twice, the second round in reverse order.
            let frames: Vec<Frame> = names.iter().chain(names.iter().rev()).map(|n| bind(n)).collect();
            let plan = plan_of(&frames, &statements);
            assert_eq!(plan.needs, names, "{distinct} names");
            assert_eq!(plan.target, Target::Replica, "{distinct} names");
        }
    }

    #[test]
    fn a_plan_parses_into_the_room_an_earlier_plan_left() {
        let rules = Arc::new(FunctionRules::default());
        let request = |frames: Vec<Frame>| Request {
            bytes: frames.iter().map(|f| f.raw.len()).sum(),
            frames,
        };
        // A first extended-protocol request makes room for exactly its one statement.
        let one = request(vec![parse("", "SELECT 1"), bind("")]);
        let first = Plan::for_request(&one, &Statements::default(), &rules);
        assert_eq!(first.parses.len(), 1);
        assert_eq!(first.parses.capacity(), 1);
        // The next plan is given that room, emptied, and parses into it without allocating.
        let mut room = first.parses;
        room.clear();
        let at = room.as_ptr();
        let next = Plan::for_request_in(
            &one,
            &Statements::default(),
            &rules,
            room,
            &mut Reading::default(),
        );
        assert_eq!(next.parses.as_ptr(), at);
        assert_eq!(next.parses.len(), 1);
        assert!(next.parsed(""));
        // More statements than the room holds still all count.
        let two = request(vec![parse("a", "SELECT 1"), parse("b", "SELECT 2"), bind("b")]);
        let mut room = next.parses;
        room.clear();
        let more = Plan::for_request_in(
            &two,
            &Statements::default(),
            &rules,
            room,
            &mut Reading::default(),
        );
        assert_eq!(more.parses.len(), 2);
        assert!(more.parsed("a") && more.parsed("b"));
    }
}
