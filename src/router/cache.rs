//! Decisions remembered per statement shape. Applications send the same few statements over and over,
//! often with only their constants changing (`... WHERE aid = 4711`). The key is the statement's token
//! stream with every string and number constant replaced by a marker: swapping one constant for another of
//! the same kind changes neither whether the text parses nor any routing rule, so the cached decision is
//! exactly what `classify` would return, and the sqlparser pass is skipped. Two kinds are kept out of the
//! shape cache and cached by exact text: decisions that carry their statement's text (SET/RESET, replayed
//! verbatim — whether a decision has them depends only on the shape, so no shape entry ever stands for one),
//! and EXPLAIN (whose `ANALYZE 0`/`ANALYZE 1` option is a constant that matters).
//! Keys include the function rules' identity, so a reload of a database's functions starts afresh.

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use super::classify::{Decision, classify};
use super::functions::FunctionRules;
use super::split::{Lexer, TokKind};

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

/// The rules (kept alive) and the decisions made under them.
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

static BY_SHAPE: SharedMap = RwLock::new(None);
static BY_TEXT: SharedMap = RwLock::new(None);

thread_local! {
    /// The shape of the statement being looked up, rebuilt in place for each lookup.
    static SHAPE: RefCell<String> = const { RefCell::new(String::new()) };
}

/// Writes the statement's shape into `key`; false when constants may matter (see the module docs).
fn shape_into(sql: &str, key: &mut String) -> bool {
    key.clear();
    for tok in Lexer::new(sql) {
        match tok.kind {
            TokKind::Str => key.push_str("\u{1}s"),
            TokKind::Number => key.push_str("\u{1}n"),
            TokKind::Unterminated => return false,
            _ => {
                let text = tok.text(sql);
                if tok.kind == TokKind::Word
                    && ["SET", "RESET", "EXPLAIN"]
                        .iter()
                        .any(|w| text.eq_ignore_ascii_case(w))
                {
                    return false;
                }
                key.push_str(text);
            }
        }
        key.push(' ');
    }
    true
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
            m.by_rules.push((rules.clone(), HashMap::new()));
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
    SHAPE.with(|buf| match buf.try_borrow_mut() {
        Ok(mut key) => classify_with(sql, rules, &mut key),
        // Only reachable if classification itself asked the cache again: use a buffer of its own.
        Err(_) => classify_with(sql, rules, &mut String::new()),
    })
}

fn classify_with(sql: &str, rules: &Arc<FunctionRules>, key: &mut String) -> Arc<Decision> {
    let id = Arc::as_ptr(rules) as usize;
    let (map, key): (&SharedMap, &str) = if shape_into(sql, key) {
        (&BY_SHAPE, key.as_str())
    } else {
        (&BY_TEXT, sql)
    };
    if let Some(d) = lookup(map, id, key) {
        return d;
    }
    let d = Arc::new(classify(sql, rules));
    // A decision that carries its own text (a SET in a multi-statement string) is valid for this text only.
    if d.changes.is_empty() {
        store(map, key, rules, &d);
    } else {
        store(&BY_TEXT, sql, rules, &d);
    }
    d
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let other = Arc::new(FunctionRules::new(&["my_writer".to_owned()], &[]));
        assert_eq!(
            classify_cached("SELECT my_writer()", &other).target,
            classify("SELECT my_writer()", &other).target
        );
    }
}
