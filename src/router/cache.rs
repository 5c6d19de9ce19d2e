//! Decisions remembered per statement shape. Applications send the same few statements over and over,
//! often with only their constants changing (`... WHERE aid = 4711`). The key is the statement's token
//! stream with its plain constants replaced by a marker: `'...'` strings, decimal integers (one marker per
//! range of values that fit the same integer types) and plain decimals. Swapping one such constant for
//! another of the same kind changes neither whether the text parses nor any routing rule, so the cached
//! decision is exactly what `classify` would return, and the sqlparser pass is skipped. Other constants
//! (`E'..'`, `X'..'`, `$$..$$`, `1e5`) stay in the key as written, since sqlparser may accept one spelling
//! and refuse another (see `number_marker`). Two kinds are kept out of the
//! shape cache and cached by exact text: decisions that carry their statement's text (SET/RESET, replayed
//! verbatim — whether a decision has them depends only on the shape, so no shape entry ever stands for one),
//! EXPLAIN (whose `ANALYZE 0`/`ANALYZE 1` option is a constant that matters) and `current_setting(...)`
//! (whose argument tells a question about the server's role from any other setting).
//! Keys include the function rules' identity, so a reload of a database's functions starts afresh.

use foldhash::HashMap;
use std::cell::RefCell;
use std::sync::{Arc, RwLock};

use super::classify::{Decision, classify};
use super::functions::FunctionRules;
use super::split::{Lexer, Tok, TokKind};
use crate::protocol::encoding::ascii_view;

/// Most texts kept; past it the cache starts over (cheaper than LRU bookkeeping on every hit).
const CAPACITY: usize = 8192;
/// Longer texts are classified every time: they are rarely repeated and would crowd the cache.
const MAX_TEXT: usize = 4096;

/// Decisions by key, per set of function rules (by address). Entries keep their rules alive, so no other
/// rules can be allocated at an address used as a key. Keyed by `String` so that a lookup can borrow the
/// key from a reused buffer: a hit allocates nothing, and only takes the lock shared.
#[derive(Default)]
struct Map {
    len: usize,
    /// One entry per set of rules in use (a database's, or the configured lists): few, so a scan beats
    /// hashing the address.
    by_rules: Vec<RulesEntries>,
}

/// The rules (kept alive) and the decisions made under them. Hashed with foldhash, as the session's statement
/// maps are: a shape is hashed for every statement the recent-statement check does not answer, and SipHash was
/// about 2,200 of the 90,000 instructions of a TPC-B transaction through pgfleet.
type RulesEntries = (Arc<FunctionRules>, HashMap<String, Arc<Decision>>);

impl Map {
    fn decisions(&self, rules: usize) -> Option<&HashMap<String, Arc<Decision>>> {
        self.by_rules
            .iter()
            .find(|(r, _)| Arc::as_ptr(r) as usize == rules)
            .map(|(_, d)| d)
    }
}

type SharedMap = RwLock<Option<Map>>;

// Owner: this module, for the whole process. The maps memoise `classify`, a pure function of the text and
// the rules, and every key carries the rules' identity, so proxies, sessions and reloads that share a process
// can share the maps without seeing each other's decisions under other rules. Nothing else writes them.
static BY_SHAPE: SharedMap = RwLock::new(None);
static BY_TEXT: SharedMap = RwLock::new(None);

/// Per worker thread: buffers for the shape (and tokens) of the statement being looked up, and the
/// statements recently decided through the shape map. Sessions repeat a few statement shapes, often
/// changing only a constant, so a text is first compared with the recent statements that begin as it does:
/// byte by byte (see [`same_shape_as`]), then by shape, and only then is the shape hashed into the
/// shared map. More than one is kept because transactions interleave shapes (a TPC-B transaction sends
/// seven, each following another), and with only the last statement kept each of them was lexed in full.
#[derive(Default)]
struct Local {
    shape: String,
    tokens: Vec<Tok>,
    recent: Vec<Recent>,
    /// The entry replaced next once [`RECENT`] are kept.
    next: usize,
    /// The entry that answered or was stored last: tried first, before the text's lead is even read, as
    /// a stream of one statement with changing constants (a point query) is the commonest case.
    latest: usize,
}

/// How many recent statements a worker keeps. A hit compares this many [`Lead`]s at most, and a miss costs
/// one byte comparison per entry with the same lead.
const RECENT: usize = 16;
/// Longer texts are not kept as recent statements: their buffers would stay allocated per worker.
const RECENT_TEXT: usize = 2048;

/// A statement decided through the shape map, with its rules kept alive (so that their address cannot be
/// reused for other rules), its lead, text, constants and shape, and the decision.
struct Recent {
    lead: Lead,
    rules: Arc<FunctionRules>,
    text: String,
    constants: Vec<Constant>,
    shape: String,
    decision: Arc<Decision>,
    /// The entry that answered a session's next statement the last time one came after this one: the
    /// second guess for the next statement of a session whose last statement this was (see [`Place`]).
    after: Option<usize>,
}

/// Where a session's last statement was answered among its worker's recent statements. A session runs
/// its transactions' statements in the same order time after time, but the worker's latest statement is
/// usually another session's, so the worker's own guess misses each statement of a transaction like
/// TPC-B's, and the lead and the whole recent list were read before the byte comparison that answers. With
/// its place, a session's statement that the worker's latest does not answer is compared next with the one
/// that followed the session's last statement the previous time. A guess only says where to look first: an
/// answer still needs [`same_shape_as`], so a stale place (another worker's, an entry replaced since) costs
/// one comparison and decides nothing.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Place(Option<usize>);

/// The first bytes of a text, up to 16 and up to its first digit, `.` or quote: texts of one shape that
/// differ only in their constants (all the diff accepts) begin alike before the first constant, so equal
/// leads pick the few recent statements worth a byte comparison. Query texts hold no NUL, so the zero
/// padding of a short lead cannot be mistaken for text.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
struct Lead(u128);

impl Lead {
    fn of(sql: &str) -> Lead {
        let mut bytes = [0u8; 16];
        for (slot, &b) in bytes.iter_mut().zip(sql.as_bytes()) {
            if b.is_ascii_digit() || b == b'.' || b == b'\'' {
                break;
            }
            *slot = b;
        }
        Lead(u128::from_le_bytes(bytes))
    }
}

thread_local! {
    static LOCAL: RefCell<Local> = RefCell::new(Local::default());
}

/// Writes the statement's shape into `key` and its tokens into `tokens`; false when constants may matter
/// (see the module docs).
fn shape_into(sql: &str, key: &mut String, tokens: &mut Vec<Tok>) -> bool {
    key.clear();
    tokens.clear();
    // Whether the next word begins a statement: only there do SET and RESET make a statement that carries
    // its text. Elsewhere SET is part of UPDATE, ALTER or ON CONFLICT, and keeping those texts out made
    // every UPDATE a full classification.
    let mut statement_start = true;
    for tok in Lexer::new(sql) {
        tokens.push(tok);
        match tok.kind {
            TokKind::Unterminated => return false,
            TokKind::Number | TokKind::Str if let Some(marker) = constant_marker(&tok, sql.as_bytes()) => {
                key.push_str(marker)
            }
            _ => {
                let text = tok.text(sql);
                if tok.kind == TokKind::Word
                    && (["EXPLAIN", "CURRENT_SETTING"]
                        .iter()
                        .any(|w| text.eq_ignore_ascii_case(w))
                        || (statement_start && ["SET", "RESET"].iter().any(|w| text.eq_ignore_ascii_case(w))))
                {
                    return false;
                }
                key.push_str(text);
            }
        }
        match tok.kind {
            TokKind::Comment => {}
            TokKind::Punct => statement_start = tok.text(sql) == ";",
            _ => statement_start = false,
        }
        key.push(' ');
    }
    true
}

/// The marker that stands for a numeric constant in a shape, or None when its spelling matters and the
/// key keeps it verbatim. sqlparser reads some integers into u32, i64 or u64 (`varchar(n)`, `FETCH FIRST
/// n`, MATCH_RECOGNIZE's `{n}`): one too large for the type fails to parse where a smaller one parses, so
/// integers are interchangeable only with those that fit the same of these types, and there is a marker
/// for each class of value (up to u32's largest, i64's, u64's, and beyond). Applications whose keys or
/// timestamps are 10 to 19 digits long would otherwise miss the cache on every statement and pay for a
/// full parse each time. A plain decimal is refused wherever an integer is required, whatever its value,
/// and accepted wherever any number is. Other spellings (`1e5`, `0x1F`, `1_000`, `1..2`, `1abc`, which
/// the router's lexer takes as one token) are tokenized by sqlparser according to their exact text. The
/// fuzz target `router` found `SELECT 1..2` answered from `SELECT 1`'s entry when every number was one
/// marker.
fn number_marker(bytes: &[u8]) -> Option<&'static str> {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    match bytes.get(digits) {
        None if digits > 0 => Some(integer_marker(bytes)),
        Some(b'.') if digits > 0 => {
            let fraction = &bytes[digits + 1..];
            (!fraction.is_empty() && fraction.iter().all(u8::is_ascii_digit)).then_some("\u{1}d")
        }
        _ => None,
    }
}

/// The marker of an integer written in decimal digits, by the narrowest of the types sqlparser reads
/// integers into that holds its value (Rust's parsers accept leading zeros, so the value counts, not the
/// number of digits).
fn integer_marker(digits: &[u8]) -> &'static str {
    // Nine digits always fit a u32, the common case (a key, a count), known without parsing or trimming.
    if digits.len() <= 9 {
        return "\u{1}n";
    }
    let zeros = digits.iter().take_while(|b| **b == b'0').count();
    let significant = &digits[zeros..];
    // u64's largest has 20 digits: anything longer is beyond every type.
    let value = match significant.len() {
        0..=9 => return "\u{1}n",
        10..=20 => std::str::from_utf8(significant)
            .ok()
            .and_then(|s| s.parse::<u128>().ok()),
        _ => None,
    };
    match value {
        Some(v) if v <= u128::from(u32::MAX) => "\u{1}n",
        Some(v) if v <= i64::MAX as u128 => "\u{1}l",
        Some(v) if v <= u128::from(u64::MAX) => "\u{1}u",
        _ => "\u{1}b",
    }
}

/// The marker a constant token stands for in a shape, or None for a token the shape keeps as written.
fn constant_marker(tok: &Tok, src: &[u8]) -> Option<&'static str> {
    match tok.kind {
        TokKind::Str if src.get(tok.start) == Some(&b'\'') => Some("\u{1}s"),
        TokKind::Number => number_marker(src.get(tok.start..tok.end).unwrap_or_default()),
        _ => None,
    }
}

/// A marked constant of a recent statement: its token and marker, and the token right before it when
/// nothing separates the two (that one is lexed again in a new text, see [`same_shape_as`]).
#[derive(Clone, Copy, Debug)]
struct Constant {
    tok: Tok,
    marker: &'static str,
    touching: Option<Tok>,
}

/// The marked constants of a text lexed into `tokens`, into `out`.
fn constants_into(sql: &str, tokens: &[Tok], out: &mut Vec<Constant>) {
    out.clear();
    for (i, tok) in tokens.iter().enumerate() {
        if let Some(marker) = constant_marker(tok, sql.as_bytes()) {
            let touching = i.checked_sub(1).map(|p| tokens[p]).filter(|p| p.end == tok.start);
            out.push(Constant {
                tok: *tok,
                marker,
                touching,
            });
        }
    }
}

/// Whether `new` certainly has the shape of `old` (a shape-cacheable text whose marked constants are
/// `constants`), found without lexing all of `new`: outside those constants the two texts must be the same
/// byte for byte, and lexing `new` where each of them begins must give one token of the same kind and
/// marker. The lexer keeps no state between tokens, so `new`'s tokens are then `old`'s with those constants
/// swapped, which is what sharing a shape means. Any number of constants may differ (an UPDATE's new value
/// and its key both change from one execution to the next). False means "not known".
fn same_shape_as(old: &str, constants: &[Constant], new: &[u8]) -> bool {
    let (o, n) = (old.as_bytes(), new);
    if o == n {
        return true;
    }
    // Compared up to `o_at` in `old`, which is `n_at` in `new`.
    let (mut o_at, mut n_at) = (0, 0);
    // The last constant swapped: where it began in `old`, and its token in `new`.
    let mut swapped: Option<(usize, Tok)> = None;
    for c in constants {
        let Some(same) = o.get(o_at..c.tok.start) else {
            return false;
        };
        let n_start = n_at + same.len();
        if n.get(n_at..n_start) != Some(same) {
            return false;
        }
        let mut lexer = match c.touching {
            // The token right before might have ended elsewhere in `new`, had the constant's first byte
            // continued it: it is lexed again, and must come out the same.
            Some(p) => {
                let previous = match swapped {
                    Some((start, tok)) if start == p.start => tok,
                    _ => match p.start.checked_sub(o_at) {
                        Some(offset) => Tok {
                            kind: p.kind,
                            start: n_at + offset,
                            end: n_start,
                        },
                        None => return false,
                    },
                };
                let mut lexer = Lexer::over_bytes(new, previous.start);
                if lexer.next() != Some(previous) {
                    return false;
                }
                lexer
            }
            None => Lexer::over_bytes(new, n_start),
        };
        let Some(tok) = lexer.next() else {
            return false;
        };
        if tok.kind != c.tok.kind || tok.start != n_start || constant_marker(&tok, new) != Some(c.marker) {
            return false;
        }
        o_at = c.tok.end;
        n_at = tok.end;
        swapped = Some((c.tok.start, tok));
    }
    o.get(o_at..).is_some_and(|rest| n.get(n_at..) == Some(rest))
}

fn lookup(map: &SharedMap, rules: usize, key: &str) -> Option<Arc<Decision>> {
    map.read()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.decisions(rules))
        .and_then(|m| m.get(key))
        .cloned()
}

fn store(map: &SharedMap, key: &str, rules: &Arc<FunctionRules>, d: &Arc<Decision>) {
    let mut guard = map.write().unwrap_or_else(|p| p.into_inner());
    let m = guard.get_or_insert_with(Map::default);
    if m.len >= CAPACITY {
        *m = Map::default();
    }
    let slot = match m.by_rules.iter().position(|(r, _)| Arc::ptr_eq(r, rules)) {
        Some(i) => i,
        None => {
            m.by_rules.push((rules.clone(), HashMap::default()));
            m.by_rules.len() - 1
        }
    };
    if m.by_rules[slot].1.insert(key.to_owned(), d.clone()).is_none() {
        m.len += 1;
    }
}

/// `classify`, remembered.
pub fn classify_cached(sql: &str, rules: &Arc<FunctionRules>) -> Arc<Decision> {
    classify_placed(sql, rules, &mut Place::default())
}

/// `classify`, remembered, for a session whose place among the recent statements is `place` (see
/// [`Place`]); the place moves to this statement.
pub fn classify_placed(sql: &str, rules: &Arc<FunctionRules>, place: &mut Place) -> Arc<Decision> {
    classify_placed_utf8(sql.as_bytes(), rules, place)
}

impl Local {
    /// Entry `i` answered the statement after the session's `previous` one: remembered as the worker's
    /// latest, as what follows `previous`, and as the session's place.
    fn answered(&mut self, i: usize, previous: Option<usize>, place: &mut Place) {
        self.latest = i;
        if let Some(p) = previous.and_then(|p| self.recent.get_mut(p)) {
            p.after = Some(i);
        }
        place.0 = Some(i);
    }

    /// Whether the entry at `i` certainly answers `sql` under `rules`.
    fn answers(&self, i: usize, sql: &[u8], rules: &Arc<FunctionRules>) -> bool {
        self.recent
            .get(i)
            .is_some_and(|r| Arc::ptr_eq(&r.rules, rules) && same_shape_as(&r.text, &r.constants, sql))
    }

    /// The entry that answers `sql` among the first guesses for a session whose last statement was
    /// answered by `previous`: the worker's latest (a stream of one statement with changing constants, the
    /// commonest case, from any number of sessions), then what followed the session's last statement the
    /// previous time.
    fn guessed(&self, previous: Option<usize>, sql: &[u8], rules: &Arc<FunctionRules>) -> Option<usize> {
        if self.answers(self.latest, sql, rules) {
            return Some(self.latest);
        }
        previous
            .and_then(|p| self.recent.get(p))
            .and_then(|r| r.after)
            .filter(|&i| i != self.latest && self.answers(i, sql, rules))
    }
}

impl Local {
    /// The decision of the first guess that answers `sql` ([`Local::guessed`]), the session's place moved
    /// to it.
    fn guess(
        &mut self,
        previous: Option<usize>,
        sql: &[u8],
        rules: &Arc<FunctionRules>,
        place: &mut Place,
    ) -> Option<Arc<Decision>> {
        let i = self.guessed(previous, sql, rules)?;
        let d = self.recent.get(i)?.decision.clone();
        self.answered(i, previous, place);
        Some(d)
    }
}

fn classify_with(
    sql: &str,
    rules: &Arc<FunctionRules>,
    local: &mut Local,
    place: &mut Place,
) -> Arc<Decision> {
    let previous = place.0.take();
    match local.guess(previous, sql.as_bytes(), rules, place) {
        Some(d) => d,
        None => beyond_guesses(sql, previous, rules, local, place),
    }
}

/// [`classify_placed`] for text that arrived as bytes from a session in UTF8 (`protocol::encoding`). The
/// first guesses compare bytes, so a text one of them answers is never checked as UTF-8: outside its marked
/// constants it is a recent statement's text byte for byte, and a constant that is not UTF-8 makes the
/// server refuse the message wherever it runs. Any other text is read with [`ascii_view`] (the server
/// refuses it too when it is not UTF-8) and looked for further.
pub fn classify_placed_utf8(sql: &[u8], rules: &Arc<FunctionRules>, place: &mut Place) -> Arc<Decision> {
    if sql.len() > MAX_TEXT {
        place.0 = None;
        return Arc::new(classify(&ascii_view(sql), rules));
    }
    LOCAL.with(|local| match local.try_borrow_mut() {
        Ok(mut local) => {
            let previous = place.0.take();
            match local.guess(previous, sql, rules, place) {
                Some(d) => d,
                None => beyond_guesses(&ascii_view(sql), previous, rules, &mut local, place),
            }
        }
        // Only reachable if classification itself asked the cache again: use state of its own.
        Err(_) => classify_with(&ascii_view(sql), rules, &mut Local::default(), place),
    })
}

/// A text the first guesses did not answer: the recent statements of its lead, then the shape map or
/// `classify`; the session's place moves to where it was found or kept.
fn beyond_guesses(
    sql: &str,
    previous: Option<usize>,
    rules: &Arc<FunctionRules>,
    local: &mut Local,
    place: &mut Place,
) -> Arc<Decision> {
    let lead = Lead::of(sql);
    if let Some((i, d)) = recent_answer(&local.recent, lead, sql, rules) {
        local.answered(i, previous, place);
        return d;
    }
    let (d, kept) = decide_and_keep(sql, rules, lead, local);
    if let Some(i) = kept {
        local.answered(i, previous, place);
    }
    d
}

/// The decision for a text no recent statement answered, through the shape map or `classify`, and where
/// the text was kept among the recent statements (None when it is not kept: constants that matter, or
/// too long).
fn decide_and_keep(
    sql: &str,
    rules: &Arc<FunctionRules>,
    lead: Lead,
    local: &mut Local,
) -> (Arc<Decision>, Option<usize>) {
    let Local {
        shape,
        tokens,
        recent,
        next,
        ..
    } = local;
    if !shape_into(sql, shape, tokens) {
        return (by_text(sql, rules), None);
    }
    let same_shape = recent
        .iter()
        .position(|r| Arc::ptr_eq(&r.rules, rules) && r.shape == *shape);
    let d = match same_shape {
        Some(i) => recent[i].decision.clone(),
        None => {
            let id = Arc::as_ptr(rules) as usize;
            match lookup(&BY_SHAPE, id, shape) {
                Some(d) => d,
                None => {
                    let d = Arc::new(classify(sql, rules));
                    // A decision that carries its own text (a SET in a multi-statement string) is valid
                    // for this text only.
                    if !d.changes.is_empty() {
                        store(&BY_TEXT, sql, rules, &d);
                        return (d, None);
                    }
                    store(&BY_SHAPE, shape, rules, &d);
                    d
                }
            }
        }
    };
    if sql.len() > RECENT_TEXT {
        return (d, None);
    }
    // This statement becomes a recent one: in place of the entry of its shape, else of the entry stored
    // longest ago once the table is full, else as a new one. A replaced entry's buffers are reused.
    let slot = match same_shape {
        Some(i) => i,
        None if recent.len() < RECENT => {
            let mut constants = Vec::new();
            constants_into(sql, tokens, &mut constants);
            recent.push(Recent {
                lead,
                rules: rules.clone(),
                text: sql.to_owned(),
                constants,
                shape: std::mem::take(shape),
                decision: d.clone(),
                after: None,
            });
            return (d, Some(recent.len() - 1));
        }
        None => {
            let i = *next;
            *next = (i + 1) % RECENT;
            i
        }
    };
    let r = &mut recent[slot];
    if same_shape.is_none() {
        // Another shape's entry: what followed that one says nothing of what follows this one.
        r.after = None;
    }
    r.lead = lead;
    std::mem::swap(&mut r.shape, shape);
    constants_into(sql, tokens, &mut r.constants);
    r.text.clear();
    r.text.push_str(sql);
    if !Arc::ptr_eq(&r.rules, rules) {
        r.rules = rules.clone();
    }
    r.decision = d.clone();
    (d, Some(slot))
}

/// A recent statement that `sql` certainly shares a shape with, under the same rules: its index and
/// decision.
fn recent_answer(
    recent: &[Recent],
    lead: Lead,
    sql: &str,
    rules: &Arc<FunctionRules>,
) -> Option<(usize, Arc<Decision>)> {
    recent
        .iter()
        .enumerate()
        .filter(|(_, r)| r.lead == lead && Arc::ptr_eq(&r.rules, rules))
        .find(|(_, r)| same_shape_as(&r.text, &r.constants, sql.as_bytes()))
        .map(|(i, r)| (i, r.decision.clone()))
}

/// Texts whose constants may matter are remembered by exact text.
fn by_text(sql: &str, rules: &Arc<FunctionRules>) -> Arc<Decision> {
    let id = Arc::as_ptr(rules) as usize;
    if let Some(d) = lookup(&BY_TEXT, id, sql) {
        return d;
    }
    let d = Arc::new(classify(sql, rules));
    store(&BY_TEXT, sql, rules, &d);
    d
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests' texts are strings; the cache compares a new text's bytes.
    fn same_shape_as(old: &str, constants: &[Constant], new: &str) -> bool {
        super::same_shape_as(old, constants, new.as_bytes())
    }

    fn number_marker(text: &str) -> Option<&'static str> {
        super::number_marker(text.as_bytes())
    }
    use crate::router::classify::Target;

    /// The shape and marked constants of a shape-cacheable text.
    fn shape_of(sql: &str) -> Option<(String, Vec<Constant>)> {
        let (mut shape, mut tokens, mut constants) = (String::new(), Vec::new(), Vec::new());
        if !shape_into(sql, &mut shape, &mut tokens) {
            return None;
        }
        constants_into(sql, &tokens, &mut constants);
        Some((shape, constants))
    }

    #[test]
    fn constants_may_change_and_nothing_else() {
        let old = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;";
        let (_, constants) = shape_of(old).expect("shape");
        for new in [
            old,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711999;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 3;",
        ] {
            assert!(same_shape_as(old, &constants, new), "{new}");
        }
        for new in [
            "SELECT abalance FROM pgbench_accounts WHERE aid = x;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 'x';",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 47 11;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711 FOR UPDATE;",
            "SELECT abalance FROM pgbench_accounts WHERE aid2 = 4711;",
            "SELECT abalance FROM pgbench_accounts WHERE bid = 1 AND aid = 2;",
            // Constants whose spelling matters to sqlparser keep their own shape (see `number_marker`).
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711999999;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 47.11;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 1..2;",
        ] {
            assert!(!same_shape_as(old, &constants, new), "{new}");
        }
        let old = "SELECT * FROM t WHERE name = 'abc' AND x = 1";
        let (_, constants) = shape_of(old).expect("shape");
        assert!(same_shape_as(
            old,
            &constants,
            "SELECT * FROM t WHERE name = 'a''b' AND x = 1"
        ));
        assert!(!same_shape_as(
            old,
            &constants,
            "SELECT * FROM t WHERE name = 'a' AND 'x = 1"
        ));
        assert!(!same_shape_as(
            old,
            &constants,
            "SELECT * FROM t WHERE name = 'abc"
        ));
        // Several constants may change at once; nothing between them may.
        for (old, new, same) in [
            (
                "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 4711;",
                "UPDATE pgbench_accounts SET abalance = abalance + 4999 WHERE aid = 12;",
                true,
            ),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 4711;",
                "UPDATE pgbench_accounts SET abalance = abalance + -5 WHERE aid = 12;",
                false,
            ),
            (
                "UPDATE pgbench_accounts SET abalance = abalance + 5 WHERE aid = 4711;",
                "UPDATE pgbench_accounts SET abalance = abalance + 6 WHERE bid = 12;",
                false,
            ),
            ("SELECT 1,2,'a'", "SELECT 33,4,'b''c'", true),
            ("SELECT 1,2,'a'", "SELECT 1,2.5,'a'", false),
            ("SELECT 1,2,'a'", "SELECT 1,2,'a',3", false),
            ("SELECT 1,2,'a'", "SELECT 1,2", false),
            ("SELECT x-1, 2", "SELECT x--1, 2", false),
            ("SELECT 1'a'", "SELECT 22'bb'", true),
            ("SELECT 1 -- 2", "SELECT 1 -- 3", false),
            (
                "INSERT INTO t VALUES (1, 'a'), (2, 'b')",
                "INSERT INTO t VALUES (10, ''), (20, 'x')",
                true,
            ),
        ] {
            let (_, constants) = shape_of(old).expect("shape");
            assert_eq!(same_shape_as(old, &constants, new), same, "{old} / {new}");
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig { cases: 4000, ..Default::default() })]

        /// Soundness: whenever the byte comparison says "same shape", the shapes are equal.
        #[test]
        fn diff_never_claims_a_different_shape(
            old in "[a-c0-9 '=;.$-]{0,16}",
            start in 0usize..16,
            len in 0usize..4,
            insert in "[a-c0-9 '=;.$-]{0,4}",
        ) {
            if let Some((old_shape, constants)) = shape_of(&old) {
                let start = start.min(old.len());
                let end = (start + len).min(old.len());
                let new = format!("{}{}{}", &old[..start], insert, &old[end..]);
                if same_shape_as(&old, &constants, &new) {
                    let new_shape = shape_of(&new).map(|(s, _)| s);
                    proptest::prop_assert_eq!(new_shape, Some(old_shape), "{:?} -> {:?}", old, new);
                }
            }
        }

        /// Soundness with two edits anywhere, as when two constants change.
        #[test]
        fn two_edits_never_claim_a_different_shape(
            old in "[a-c0-9 '=;.$-]{0,20}",
            edits in proptest::collection::vec((0usize..20, 0usize..4, "[a-c0-9 '=;.$-]{0,4}"), 2),
        ) {
            if let Some((old_shape, constants)) = shape_of(&old) {
                let mut new = old.clone();
                for (start, len, insert) in &edits {
                    let start = (*start).min(new.len());
                    let end = (start + len).min(new.len());
                    new = format!("{}{}{}", &new[..start], insert, &new[end..]);
                }
                if same_shape_as(&old, &constants, &new) {
                    let new_shape = shape_of(&new).map(|(s, _)| s);
                    proptest::prop_assert_eq!(new_shape, Some(old_shape), "{:?} -> {:?}", old, new);
                }
            }
        }

        /// Completeness where it counts: texts of one template with other constants of the same kinds are
        /// always recognised.
        #[test]
        fn changed_constants_are_recognised(
            values in proptest::collection::vec((0u32..=u32::MAX, "[a-z' ]{0,6}"), 2),
        ) {
            let text = |(n, s): &(u32, String)| {
                format!("SELECT a FROM t WHERE b = {n} AND c = '{}' LIMIT {n};", s.replace('\'', "''"))
            };
            let (old, new) = (text(&values[0]), text(&values[1]));
            let (_, constants) = shape_of(&old).expect("shape");
            proptest::prop_assert!(same_shape_as(&old, &constants, &new), "{:?} -> {:?}", old, new);
        }
    }

    #[test]
    fn integers_share_a_marker_only_within_the_types_they_fit() {
        // (constant, marker)
        let table: &[(&str, Option<&str>)] = &[
            ("0", Some("\u{1}n")),
            ("4711", Some("\u{1}n")),
            ("999999999", Some("\u{1}n")),
            ("1000000000", Some("\u{1}n")),
            ("4294967295", Some("\u{1}n")),
            ("0004294967296", Some("\u{1}l")),
            ("000000000000000000000000004294967295", Some("\u{1}n")),
            ("4294967296", Some("\u{1}l")),
            ("1733184000000", Some("\u{1}l")),
            ("9223372036854775807", Some("\u{1}l")),
            ("9223372036854775808", Some("\u{1}u")),
            ("18446744073709551615", Some("\u{1}u")),
            ("18446744073709551616", Some("\u{1}b")),
            ("123456789012345678901234567890", Some("\u{1}b")),
            ("47.11", Some("\u{1}d")),
            ("47.", None),
            (".5", None),
            ("4.7.1", None),
            ("", None),
            ("1e5", None),
            ("1..2", None),
            ("0x1F", None),
        ];
        for (text, marker) in table {
            assert_eq!(number_marker(text), *marker, "{text}");
        }
    }

    #[test]
    fn cached_equals_fresh_across_integer_classes() {
        // Integers at each edge of u32, i64 and u64, where sqlparser reads one; the cache answers for one
        // from the entry another of the same class made, and must say what classify says.
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        let numbers = [
            "1",
            "4294967295",
            "4294967296",
            "9223372036854775807",
            "9223372036854775808",
            "18446744073709551615",
            "18446744073709551616",
            "99999999999999999999999",
        ];
        // A read when it parses, sent to the primary when it does not: the length is read as u64, the
        // scale as i64.
        let templates = [
            "SELECT * FROM t WHERE id = {}",
            "SELECT c::varchar({}) FROM t",
            "SELECT c::numeric(10, {}) FROM t",
            "SELECT * FROM t LIMIT {} OFFSET {}",
        ];
        let mut unparsed = 0;
        for template in templates {
            for n in numbers.iter().chain(numbers.iter().rev()) {
                let sql = template.replace("{}", n);
                let fresh = classify(&sql, &rules);
                unparsed += usize::from(fresh.target == Target::Primary);
                assert_eq!(*classify_cached(&sql, &rules), fresh, "{sql}");
            }
        }
        // varchar beyond u64 (twice two numbers), numeric's scale beyond i64 (twice four numbers).
        assert_eq!(unparsed, 12);
    }

    #[test]
    fn set_keeps_a_text_out_of_the_shape_map_only_where_it_begins_a_statement() {
        for (sql, by_shape) in [
            ("UPDATE t SET a = 1 WHERE id = 2", true),
            ("update t set a = a + -5 where id = 7;", true),
            (
                "INSERT INTO t VALUES (1) ON CONFLICT (id) DO UPDATE SET a = 2",
                true,
            ),
            ("ALTER TABLE t ALTER COLUMN a SET DEFAULT 3", true),
            ("SET work_mem = 1", false),
            ("set local work_mem = 1", false),
            ("/* hint */ SET x = 'a'", false),
            ("-- note\nRESET work_mem", false),
            ("SELECT 1; SET work_mem = 1", false),
            ("UPDATE t SET a = 1; RESET ALL", false),
            ("SELECT current_setting('work_mem')", false),
            ("EXPLAIN SELECT 1", false),
        ] {
            assert_eq!(shape_of(sql).is_some(), by_shape, "{sql}");
        }
        // Two UPDATEs that differ only in their constants share the entry.
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        let a = classify_cached("UPDATE t SET a = a + 5 WHERE id = 1", &rules);
        let b = classify_cached("UPDATE t SET a = a + 17 WHERE id = 40000", &rules);
        assert!(Arc::ptr_eq(&a, &b));
        assert_eq!(*a, classify("UPDATE t SET a = a + 17 WHERE id = 40000", &rules));
    }

    /// A TPC-B transaction's statements: seven shapes, each following another, and constants that change
    /// every time.
    fn tpcb(aid: u32, delta: i32) -> [String; 7] {
        [
            "BEGIN;".to_owned(),
            format!("UPDATE pgbench_accounts SET abalance = abalance + {delta} WHERE aid = {aid};"),
            format!("SELECT abalance FROM pgbench_accounts WHERE aid = {aid};"),
            format!("UPDATE pgbench_tellers SET tbalance = tbalance + {delta} WHERE tid = 3;"),
            format!("UPDATE pgbench_branches SET bbalance = bbalance + {delta} WHERE bid = 1;"),
            format!(
                "INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (3, 1, {aid}, {delta}, \
                 CURRENT_TIMESTAMP);"
            ),
            "END;".to_owned(),
        ]
    }

    #[test]
    fn interleaved_shapes_are_answered_by_the_recent_statements() {
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        let mut local = Local::default();
        // A negative delta is two tokens (`-` and the number), so it makes other shapes than a positive one.
        for sql in tpcb(4711, -5).into_iter().chain(tpcb(4711, 5)) {
            assert_eq!(
                *classify_with(&sql, &rules, &mut local, &mut Place::default()),
                classify(&sql, &rules),
                "{sql}"
            );
        }
        for (aid, delta) in [(12, 4999), (987_654, -1), (3, 0), (100_000, -4999)] {
            for sql in tpcb(aid, delta) {
                let answer = recent_answer(&local.recent, Lead::of(&sql), &sql, &rules);
                let (_, answer) =
                    answer.unwrap_or_else(|| panic!("not answered by a recent statement: {sql}"));
                assert_eq!(*answer, classify(&sql, &rules), "{sql}");
                assert!(
                    Arc::ptr_eq(
                        &answer,
                        &classify_with(&sql, &rules, &mut local, &mut Place::default())
                    ),
                    "{sql}"
                );
            }
        }
        // Other rules, another shape, or a text that begins alike with a different shape: not answered.
        let other = Arc::new(FunctionRules::new(&["my_writer".to_owned()], &[]));
        for (sql, rules) in [
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 5;", &other),
            ("SELECT abalance FROM pgbench_accounts WHERE bid = 5;", &rules),
            ("UPDATE pgbench_accounts SET abalance = 0;", &rules),
            ("DELETE FROM pgbench_history;", &rules),
        ] {
            assert!(
                recent_answer(&local.recent, Lead::of(sql), sql, rules).is_none(),
                "{sql}"
            );
        }
    }

    #[test]
    fn bytes_a_first_guess_answers_decide_as_their_text_and_others_as_read_byte_by_byte() {
        let rules = Arc::new(FunctionRules::default());
        let mut place = Place::default();
        // (bytes as a UTF8 session sends them, in order through one place)
        let texts: [&[u8]; 6] = [
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 1",
            b"SELECT abalance FROM pgbench_accounts WHERE aid = 2",
            "UPDATE t SET name = 'café' WHERE id = 3".as_bytes(),
            // Not UTF-8 inside the constant: the first guess answers without a check, as the text read one
            // character per byte would be decided (the server refuses the message either way).
            b"UPDATE t SET name = 'caf\xe9' WHERE id = 4",
            // Not UTF-8 outside a constant: no guess answers, and it is read byte by byte.
            b"UPDATE t\xe9 SET name = 'x' WHERE id = 5",
            b"SELECT 1; DELETE FROM \xff",
        ];
        for bytes in texts {
            let want = classify(&ascii_view(bytes), &rules);
            assert_eq!(
                *classify_placed_utf8(bytes, &rules, &mut place),
                want,
                "{bytes:?}"
            );
        }
        let mut local = Local::default();
        let guessed = |local: &Local, bytes: &[u8]| local.guessed(None, bytes, &rules).is_some();
        let _ = classify_with(
            "UPDATE t SET name = 'a' WHERE id = 1",
            &rules,
            &mut local,
            &mut Place::default(),
        );
        assert!(guessed(&local, b"UPDATE t SET name = 'caf\xe9' WHERE id = 4"));
        assert!(!guessed(&local, b"UPDATE t\xe9 SET name = 'a' WHERE id = 1"));
    }

    #[test]
    fn a_session_finds_its_next_statement_where_it_followed_last_time() {
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        let mut local = Local::default();
        // Three sessions on one worker, each at another statement of its transaction, so the worker's latest
        // statement is never the one a session's next statement shares a shape with.
        let mut places = [Place::default(); 3];
        let step = |round: u32, local: &mut Local, places: &mut [Place; 3], guessed: &mut Vec<bool>| {
            for (s, place) in places.iter_mut().enumerate() {
                let statements = tpcb(round * 10 + s as u32 + 1, round as i32 + 7);
                let sql = &statements[(round as usize + 2 * s) % 7];
                guessed.push(local.guessed(place.0, sql.as_bytes(), &rules).is_some());
                assert_eq!(
                    *classify_with(sql, &rules, local, place),
                    classify(sql, &rules),
                    "{sql}"
                );
            }
        };
        // Two transactions each to learn the order (every statement then has its place and its successor).
        let mut warm_up = Vec::new();
        for round in 0..14 {
            step(round, &mut local, &mut places, &mut warm_up);
        }
        let mut guessed = Vec::new();
        for round in 14..35 {
            step(round, &mut local, &mut places, &mut guessed);
        }
        assert!(guessed.iter().all(|g| *g), "{guessed:?}");
        // Without a session's place the worker's latest statement (the last session's, statement
        // (34 + 2 * 2) % 7 of its transaction) is the only guess, and misses the statement after it.
        let sql = &tpcb(5, 5)[(34 + 2 * 2 + 1) % 7];
        assert_eq!(local.guessed(None, sql.as_bytes(), &rules), None);
        // A stale place (an entry since replaced by another statement) decides nothing: the text is still
        // answered as `classify` answers it.
        let mut stale = Place(Some(0));
        let other = "SELECT c FROM elsewhere WHERE id = 3";
        assert_eq!(
            *classify_with(other, &rules, &mut local, &mut stale),
            classify(other, &rules)
        );
        assert_eq!(
            *classify_with(sql, &rules, &mut local, &mut Place(Some(RECENT + 5))),
            classify(sql, &rules)
        );
    }

    #[test]
    fn recent_statements_stay_bounded_and_replace_the_oldest() {
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        let mut local = Local::default();
        let text = |i: usize| format!("SELECT c{i} FROM t WHERE id = 1");
        for i in 0..=RECENT {
            classify_with(&text(i), &rules, &mut local, &mut Place::default());
        }
        assert_eq!(local.recent.len(), RECENT);
        let kept = |i: usize, local: &Local| {
            let sql = text(i).replace("= 1", "= 2");
            recent_answer(&local.recent, Lead::of(&sql), &sql, &rules).is_some()
        };
        // The first statement made room for the last; every other one is still answered.
        assert!(!kept(0, &local));
        assert!((1..=RECENT).all(|i| kept(i, &local)));
        // A long text is decided, and not kept.
        let long = format!(
            "SELECT {} FROM t WHERE id = 1",
            "c, ".repeat(RECENT_TEXT / 3) + "c"
        );
        assert_eq!(
            *classify_with(&long, &rules, &mut local, &mut Place::default()),
            classify(&long, &rules)
        );
        assert!(local.recent.iter().all(|r| r.text.len() <= RECENT_TEXT));
        assert!(local.recent.iter().all(|r| r.text != long));
    }

    #[test]
    fn a_lead_ends_before_the_first_constant() {
        for (a, b, same) in [
            ("SELECT 1", "SELECT 22", true),
            (
                "SELECT * FROM t WHERE x = 'a'",
                "SELECT * FROM t WHERE x = 'bb'",
                true,
            ),
            ("SELECT .5", "SELECT 7", true),
            (
                "UPDATE pgbench_accounts SET a = 1",
                "UPDATE pgbench_branches SET a = 1",
                false,
            ),
            ("BEGIN;", "BEGIN", false),
            ("END;", "END;", true),
        ] {
            assert_eq!(Lead::of(a) == Lead::of(b), same, "{a} / {b}");
        }
    }

    #[test]
    fn cached_equals_fresh() {
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        for sql in [
            "SELECT 1",
            "INSERT INTO t VALUES (1)",
            "SET search_path TO a",
            "SELECT nextval('s')",
        ] {
            let first = classify_cached(sql, &rules);
            let again = classify_cached(sql, &rules);
            assert!(Arc::ptr_eq(&first, &again), "{sql} was not cached");
            assert_eq!(*first, classify(sql, &rules));
        }
        // Same shape, other constants: the same decision, without classifying again.
        let a = classify_cached("SELECT abalance FROM t WHERE aid = 1", &rules);
        let b = classify_cached("SELECT abalance FROM t WHERE aid = 99", &rules);
        assert!(Arc::ptr_eq(&a, &b));
        // Constants that matter stay apart.
        let x = classify_cached("EXPLAIN (ANALYZE 0) DELETE FROM t", &rules);
        let y = classify_cached("EXPLAIN (ANALYZE 1) DELETE FROM t", &rules);
        assert_eq!(
            x.target,
            classify("EXPLAIN (ANALYZE 0) DELETE FROM t", &rules).target
        );
        assert_eq!(
            y.target,
            classify("EXPLAIN (ANALYZE 1) DELETE FROM t", &rules).target
        );
        let s1 = classify_cached("SELECT 1; SET work_mem = '1MB'", &rules);
        let s2 = classify_cached("SELECT 1; SET work_mem = '2MB'", &rules);
        assert_ne!(s1.changes, s2.changes);
        // The setting a current_setting() asks for decides whether it is a question about the server's role.
        let plain = classify_cached("SELECT current_setting('work_mem')", &rules);
        let role = classify_cached("SELECT current_setting('transaction_read_only')", &rules);
        assert_eq!((plain.target, role.target), (Target::Replica, Target::Primary));
        let other = Arc::new(FunctionRules::new(&["my_writer".to_owned()], &[]));
        assert_eq!(
            classify_cached("SELECT my_writer()", &other).target,
            classify("SELECT my_writer()", &other).target
        );
    }
}
