//! A client request as the session buffers it before choosing a node (a Query, or extended-protocol frames
//! up to Sync or Flush), and the plan derived from it: where it may run and what session state it touches.

use std::borrow::Cow;
use std::collections::HashSet;
use std::sync::Arc;

use super::state::{Statement, Statements};
use crate::protocol::Frame;
use crate::protocol::messages::{bind_names, parse_fields, query_text, target_name};
use crate::router::cache::classify_cached;
use crate::router::classify::{Decision, Pin, Rule, SessionChange, Target, TxStart};
use crate::router::functions::FunctionRules;

/// A request larger than this without Sync or Flush is sent on early, as if Flush had been sent, so that
/// the proxy never holds more than this of one client's input.
pub const MAX_BUFFERED_REQUEST: usize = 1 << 20;

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
            b'Q' => Some(End::Query),
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
            .filter(|f| matches!(f.kind, b'Q' | b'S'))
            .count()
    }

    /// Whether it uses the extended protocol.
    pub fn is_extended(&self) -> bool {
        self.frames.iter().any(|f| f.kind != b'Q')
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
    /// Settings the request changes, if it succeeds.
    pub changes: Vec<SessionChange>,
    /// Contains DDL.
    pub ddl: bool,
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
    /// Index into `parses` of the latest Parse of each name, and the names already in `needs`. A request
    /// may hold tens of thousands of Parse and Bind frames (up to MAX_BUFFERED_REQUEST): searching the two
    /// lists for every Bind took a second of a runtime thread per request, stalling the sessions that share it.
    parse_at: foldhash::HashMap<String, usize>,
    needed: foldhash::HashSet<String>,
    /// The request opened a read-only transaction: a question about the server's role that follows runs in
    /// it, wherever it goes, rather than taking the whole request to the primary.
    read_only_begin: bool,
}

impl Plan {
    fn empty() -> Self {
        Plan {
            target: Target::Replica,
            rule: Cow::Borrowed("read"),
            pin: None,
            tx_start: None,
            changes: Vec::new(),
            ddl: false,
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
            self.changes.extend(d.changes.iter().cloned());
        }
        self.ddl |= d.ddl;
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
            self.changes.extend(s.changes.iter().cloned());
        }
    }

    /// Adds one frame's consequences; used for the request and for frames that follow an open batch.
    pub fn note(&mut self, frame: &Frame, statements: &Statements, rules: &Arc<FunctionRules>) {
        let body = frame.body();
        match frame.kind {
            b'Q' => {
                self.has_query = true;
                let text = query_text(body).unwrap_or("");
                let d = classify_cached(text, rules);
                self.merge(&d, true);
                self.deallocates.extend(d.deallocates.iter().cloned());
            }
            b'P' => {
                let (name, text) = parse_fields(body).unwrap_or(("", ""));
                let d = classify_cached(text, rules);
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
                let stmt = Statement {
                    parse: frame.raw.clone(),
                    target: d.target,
                    rule: d.rule.label(),
                    pin: d.pin,
                    changes: d.changes.clone(),
                    id: 0,
                };
                self.parse_at.insert(name.to_owned(), self.parses.len());
                self.parses.push((name.to_owned(), stmt));
            }
            b'B' | b'D' => {
                let name = if frame.kind == b'B' {
                    bind_names(body).map(|(_, s)| s)
                } else {
                    target_name(body).and_then(|(k, n)| (k == b'S').then_some(n))
                };
                let Some(name) = name else { return };
                let executes = frame.kind == b'B';
                let parsed = self.parse_at.get(name).and_then(|&at| self.parses.get(at));
                if let Some(s) = parsed.map(|(_, s)| s.clone()) {
                    self.merge_statement(&s, executes);
                } else if let Some(s) = statements.get(name) {
                    let s = s.clone();
                    self.merge_statement(&s, executes);
                    if self.needed.insert(name.to_owned()) {
                        self.needs.push(name.to_owned());
                    }
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
        let mut plan = Plan::empty();
        for f in &req.frames {
            plan.note(f, statements, rules);
        }
        plan
    }

    /// Whether the request parsed a statement of this name (its later Bind finds it on the same node).
    pub fn parsed(&self, name: &str) -> bool {
        self.parse_at.contains_key(name)
    }

    /// Names parsed in this request.
    pub fn parsed_names(&self) -> HashSet<&str> {
        self.parses.iter().map(|(n, _)| n.as_str()).collect()
    }
}
