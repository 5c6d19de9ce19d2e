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
/// maps are: a shape is hashed for every statement the last-statement check does not answer, and SipHash was
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

/// Per worker thread: buffers for the shape (and tokens) of the statement being looked up, and the last
/// statement decided through the shape map. Sessions tend to repeat a statement shape, often changing only
/// one constant, so the last statement is compared first: byte by byte (see [`same_shape_by_diff`]), then
/// by shape, and only then is the shape hashed into the shared map.
#[derive(Default)]
struct Local {
    shape: String,
    tokens: Vec<Tok>,
    last: Option<Last>,
}

/// A statement decided through the shape map, with its rules kept alive (so that their address cannot be
/// reused for other rules), its text, tokens and shape, and the decision.
struct Last {
    rules: Arc<FunctionRules>,
    text: String,
    tokens: Vec<Tok>,
    shape: String,
    decision: Arc<Decision>,
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
            TokKind::Str if tok.text(sql).starts_with('\'') => key.push_str("\u{1}s"),
            TokKind::Number if let Some(marker) = number_marker(tok.text(sql)) => key.push_str(marker),
            TokKind::Unterminated => return false,
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
fn number_marker(text: &str) -> Option<&'static str> {
    let all_digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    let bytes = text.as_bytes();
    match bytes.iter().position(|b| !b.is_ascii_digit()) {
        None if !bytes.is_empty() => Some(integer_marker(text)),
        Some(dot) if bytes[dot] == b'.' && all_digits(&bytes[..dot]) && all_digits(&bytes[dot + 1..]) => {
            Some("\u{1}d")
        }
        _ => None,
    }
}

/// The marker of an integer written in decimal digits, by the narrowest of the types sqlparser reads
/// integers into that holds its value (Rust's parsers accept leading zeros, so the value counts, not the
/// number of digits).
fn integer_marker(digits: &str) -> &'static str {
    let significant = digits.trim_start_matches('0');
    // Nine digits always fit a u32, the common case (a key, a count), known without parsing; u64's largest
    // has 20 digits: anything longer is beyond every type.
    let value = match significant.len() {
        0..=9 => return "\u{1}n",
        10..=20 => significant.parse::<u128>().ok(),
        _ => None,
    };
    match value {
        Some(v) if v <= u128::from(u32::MAX) => "\u{1}n",
        Some(v) if v <= i64::MAX as u128 => "\u{1}l",
        Some(v) if v <= u128::from(u64::MAX) => "\u{1}u",
        _ => "\u{1}b",
    }
}

/// Whether `new` certainly has the shape of `old` (a shape-cacheable text lexed into `tokens`), found
/// without lexing all of `new`: the texts may differ only inside one string or number constant of `old`,
/// and lexing `new` again from the token before that constant must give the same token there and a
/// constant of the same kind ending where the changed bytes do. The lexer keeps no state between tokens,
/// so every token before and after is then the same in both texts. False means "not known".
fn same_shape_by_diff(old: &str, tokens: &[Tok], new: &str) -> bool {
    let (o, n) = (old.as_bytes(), new.as_bytes());
    let prefix = common_prefix(o, n);
    if prefix == o.len() && prefix == n.len() {
        return true;
    }
    let suffix = common_suffix(&o[prefix..], &n[prefix..]);
    // The changed bytes of `old` are prefix..changed_end (empty when `new` only inserted bytes).
    let changed_end = o.len() - suffix;
    // A constant holding all the changed bytes: the last token starting at or before the first of them,
    // or, when `new` only inserted bytes, possibly the token just before it, ending there.
    let holds = |t: &Tok| {
        matches!(t.kind, TokKind::Number | TokKind::Str) && t.start <= prefix && changed_end <= t.end
    };
    let at = tokens.partition_point(|t| t.start <= prefix);
    let Some(idx) = [at.checked_sub(1), at.checked_sub(2)]
        .into_iter()
        .flatten()
        .find(|i| holds(&tokens[*i]))
    else {
        return false;
    };
    let constant = tokens[idx];
    let Some(new_end) = (constant.end + n.len()).checked_sub(o.len()) else {
        return false;
    };
    let mut lexer = match idx.checked_sub(1) {
        // Whitespace between the token before and the constant: that token's extent was decided by bytes up
        // to the first of that whitespace, which both texts share, so only the constant is lexed again.
        Some(before) if tokens[before].end < constant.start => Lexer::starting_at(new, constant.start),
        Some(before) => {
            let previous = tokens[before];
            let mut lexer = Lexer::starting_at(new, previous.start);
            if lexer.next() != Some(previous) {
                return false;
            }
            lexer
        }
        None => Lexer::starting_at(new, 0),
    };
    if lexer.next()
        != Some(Tok {
            kind: constant.kind,
            start: constant.start,
            end: new_end,
        })
    {
        return false;
    }
    // Same token kind is not enough: only constants with the same marker are interchangeable (a number
    // too large for u32 has its own, an E'' string is kept verbatim in the shape, see `number_marker`).
    let marker = |text: &str, kind: TokKind| match kind {
        TokKind::Str if text.starts_with('\'') => Some("\u{1}s"),
        TokKind::Number => number_marker(text),
        _ => None,
    };
    let old_text = &old[constant.start..constant.end];
    let Some(new_text) = new.get(constant.start..new_end) else {
        return false;
    };
    let before = marker(old_text, constant.kind);
    before.is_some() && before == marker(new_text, constant.kind)
}

/// Bytes `a` and `b` share at their start. Compared eight at a time: this runs on every statement that
/// hits the last-statement entry, and a byte loop was a good share of that hit's cost.
fn common_prefix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let mut at = 0;
    while at + 8 <= len {
        let (x, y) = (word_at(a, at), word_at(b, at));
        if x != y {
            return at + ((x ^ y).trailing_zeros() / 8) as usize;
        }
        at += 8;
    }
    at + a[at..len]
        .iter()
        .zip(&b[at..len])
        .take_while(|(x, y)| x == y)
        .count()
}

/// Bytes `a` and `b` share at their end.
fn common_suffix(a: &[u8], b: &[u8]) -> usize {
    let len = a.len().min(b.len());
    let (a, b) = (&a[a.len() - len..], &b[b.len() - len..]);
    let mut same = 0;
    while same + 8 <= len {
        let at = len - same - 8;
        let (x, y) = (word_at(a, at), word_at(b, at));
        if x != y {
            return same + ((x ^ y).leading_zeros() / 8) as usize;
        }
        same += 8;
    }
    let rest = len - same;
    same + a[..rest]
        .iter()
        .rev()
        .zip(b[..rest].iter().rev())
        .take_while(|(x, y)| x == y)
        .count()
}

/// Eight bytes from `at`, the first in the lowest bits (so that trailing zeros of a difference count the
/// equal bytes before it, and leading zeros the equal bytes after it).
fn word_at(bytes: &[u8], at: usize) -> u64 {
    let mut word = [0u8; 8];
    word.copy_from_slice(&bytes[at..at + 8]);
    u64::from_le_bytes(word)
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
    if sql.len() > MAX_TEXT {
        return Arc::new(classify(sql, rules));
    }
    LOCAL.with(|local| match local.try_borrow_mut() {
        Ok(mut local) => classify_with(sql, rules, &mut local),
        // Only reachable if classification itself asked the cache again: use state of its own.
        Err(_) => classify_with(sql, rules, &mut Local::default()),
    })
}

fn classify_with(sql: &str, rules: &Arc<FunctionRules>, local: &mut Local) -> Arc<Decision> {
    if let Some(last) = &local.last
        && Arc::ptr_eq(&last.rules, rules)
        && same_shape_by_diff(&last.text, &last.tokens, sql)
    {
        return last.decision.clone();
    }
    let Local { shape, tokens, last } = local;
    if !shape_into(sql, shape, tokens) {
        return by_text(sql, rules);
    }
    let d = match last {
        Some(l) if Arc::ptr_eq(&l.rules, rules) && l.shape == *shape => l.decision.clone(),
        _ => {
            let id = Arc::as_ptr(rules) as usize;
            match lookup(&BY_SHAPE, id, shape) {
                Some(d) => d,
                None => {
                    let d = Arc::new(classify(sql, rules));
                    // A decision that carries its own text (a SET in a multi-statement string) is valid
                    // for this text only.
                    if !d.changes.is_empty() {
                        store(&BY_TEXT, sql, rules, &d);
                        return d;
                    }
                    store(&BY_SHAPE, shape, rules, &d);
                    d
                }
            }
        }
    };
    // This statement becomes the last one; the old one's buffers are reused for the next lookup.
    match last {
        Some(l) => {
            std::mem::swap(&mut l.shape, shape);
            std::mem::swap(&mut l.tokens, tokens);
            l.text.clear();
            l.text.push_str(sql);
            if !Arc::ptr_eq(&l.rules, rules) {
                l.rules = rules.clone();
            }
            l.decision = d.clone();
        }
        None => {
            *last = Some(Last {
                rules: rules.clone(),
                text: sql.to_owned(),
                tokens: std::mem::take(tokens),
                shape: std::mem::take(shape),
                decision: d.clone(),
            })
        }
    }
    d
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
    use crate::router::classify::Target;

    fn shape_of(sql: &str) -> Option<(String, Vec<Tok>)> {
        let (mut shape, mut tokens) = (String::new(), Vec::new());
        shape_into(sql, &mut shape, &mut tokens).then_some((shape, tokens))
    }

    #[test]
    fn common_prefix_and_suffix_match_a_byte_loop() {
        let texts = [
            "",
            "a",
            "SELECT 1",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4712;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12;",
            "XELECT abalance FROM pgbench_accounts WHERE aid = 4711;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711; ",
            "0123456789abcdef0123456789abcdef",
            "0123456789abcdef0123456789abcdeX",
            "0123456789abcdef01234567",
        ];
        for a in texts {
            for b in texts {
                let (a, b) = (a.as_bytes(), b.as_bytes());
                let prefix = a.iter().zip(b).take_while(|(x, y)| x == y).count();
                let suffix = a
                    .iter()
                    .rev()
                    .zip(b.iter().rev())
                    .take_while(|(x, y)| x == y)
                    .count();
                assert_eq!(common_prefix(a, b), prefix, "{a:?} {b:?}");
                assert_eq!(common_suffix(a, b), suffix, "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn diff_recognises_a_changed_constant() {
        let old = "SELECT abalance FROM pgbench_accounts WHERE aid = 4711;";
        let (_, tokens) = shape_of(old).expect("shape");
        for new in [
            old,
            "SELECT abalance FROM pgbench_accounts WHERE aid = 12;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 4711999;",
            "SELECT abalance FROM pgbench_accounts WHERE aid = 3;",
        ] {
            assert!(same_shape_by_diff(old, &tokens, new), "{new}");
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
            assert!(!same_shape_by_diff(old, &tokens, new), "{new}");
        }
        let old = "SELECT * FROM t WHERE name = 'abc' AND x = 1";
        let (_, tokens) = shape_of(old).expect("shape");
        assert!(same_shape_by_diff(
            old,
            &tokens,
            "SELECT * FROM t WHERE name = 'a''b' AND x = 1"
        ));
        assert!(!same_shape_by_diff(
            old,
            &tokens,
            "SELECT * FROM t WHERE name = 'a' AND 'x = 1"
        ));
        assert!(!same_shape_by_diff(
            old,
            &tokens,
            "SELECT * FROM t WHERE name = 'abc"
        ));
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
            if let Some((old_shape, tokens)) = shape_of(&old) {
                let start = start.min(old.len());
                let end = (start + len).min(old.len());
                let new = format!("{}{}{}", &old[..start], insert, &old[end..]);
                if same_shape_by_diff(&old, &tokens, &new) {
                    let new_shape = shape_of(&new).map(|(s, _)| s);
                    proptest::prop_assert_eq!(new_shape, Some(old_shape), "{:?} -> {:?}", old, new);
                }
            }
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
