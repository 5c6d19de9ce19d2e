//! Decisions remembered per statement shape. Applications send the same few statements over and over,
//! often with only their constants changing (`... WHERE aid = 4711`). The key is the statement's token
//! stream with every string and number constant replaced by a marker: swapping one constant for another of
//! the same kind changes neither whether the text parses nor any routing rule, so the cached decision is
//! exactly what `classify` would return, and the sqlparser pass is skipped. Two kinds are kept out of the
//! shape cache and cached by exact text: decisions that carry their statement's text (SET/RESET, replayed
//! verbatim — whether a decision has them depends only on the shape, so no shape entry ever stands for one),
//! and EXPLAIN (whose `ANALYZE 0`/`ANALYZE 1` option is a constant that matters).
//! Keys include the function rules' identity, so a reload of a database's functions starts afresh.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::classify::{Decision, classify};
use super::functions::FunctionRules;
use super::split::{Lexer, TokKind};

/// Most texts kept; past it the cache starts over (cheaper than LRU bookkeeping on every hit).
const CAPACITY: usize = 8192;
/// Longer texts are classified every time: they are rarely repeated and would crowd the cache.
const MAX_TEXT: usize = 4096;

/// Entries keep their rules alive, so no other rules can be allocated at an address used in a key.
type Entry = (Arc<FunctionRules>, Arc<Decision>);
type Map = Mutex<Option<HashMap<(usize, String), Entry>>>;

static BY_SHAPE: Map = Mutex::new(None);
static BY_TEXT: Map = Mutex::new(None);

/// The statement's shape, or None when constants may matter (see the module docs).
fn shape(sql: &str) -> Option<String> {
    let mut key = String::with_capacity(sql.len() + 8);
    for tok in Lexer::new(sql) {
        match tok.kind {
            TokKind::Str => key.push_str("\u{1}s"),
            TokKind::Number => key.push_str("\u{1}n"),
            TokKind::Unterminated => return None,
            _ => {
                let text = tok.text(sql);
                if tok.kind == TokKind::Word
                    && ["SET", "RESET", "EXPLAIN"]
                        .iter()
                        .any(|w| text.eq_ignore_ascii_case(w))
                {
                    return None;
                }
                key.push_str(text);
            }
        }
        key.push(' ');
    }
    Some(key)
}

fn lookup(map: &Map, key: &(usize, String)) -> Option<Arc<Decision>> {
    map.lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(key))
        .map(|(_, d)| d.clone())
}

fn store(map: &Map, key: (usize, String), rules: &Arc<FunctionRules>, d: &Arc<Decision>) {
    let mut guard = map.lock().unwrap_or_else(|p| p.into_inner());
    let m = guard.get_or_insert_with(HashMap::new);
    if m.len() >= CAPACITY {
        m.clear();
    }
    m.insert(key, (rules.clone(), d.clone()));
}

/// `classify`, remembered.
pub fn classify_cached(sql: &str, rules: &Arc<FunctionRules>) -> Arc<Decision> {
    if sql.len() > MAX_TEXT {
        return Arc::new(classify(sql, rules));
    }
    let id = Arc::as_ptr(rules) as usize;
    let (map, key) = match shape(sql) {
        Some(shape) => (&BY_SHAPE, (id, shape)),
        None => (&BY_TEXT, (id, sql.to_owned())),
    };
    if let Some(d) = lookup(map, &key) {
        return d;
    }
    let d = Arc::new(classify(sql, rules));
    // A decision that carries its own text (a SET in a multi-statement string) is valid for this text only.
    let map = if d.changes.is_empty() { map } else { &BY_TEXT };
    let key = if d.changes.is_empty() {
        key
    } else {
        (id, sql.to_owned())
    };
    store(map, key, rules, &d);
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
