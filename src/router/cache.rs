//! Decisions remembered per statement shape. Applications send the same few statements over and over,
//! often with only their constants changing (`... WHERE aid = 4711`). The key is the statement's token
//! stream with its plain constants replaced by a marker: `'...'` strings, integers of up to 9 digits and
//! plain decimals. Swapping one such constant for another of the same kind changes neither whether the text
//! parses nor any routing rule, so the cached decision is exactly what `classify` would return, and the
//! sqlparser pass is skipped. Other constants (`E'..'`, `X'..'`, `$$..$$`, `1e5`, long integers) stay in
//! the key as written, since sqlparser may accept one spelling and refuse another (see `number_marker`). Two kinds are kept out of the
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
            TokKind::Str if tok.text(sql).starts_with('\'') => key.push_str("\u{1}s"),
            TokKind::Number if let Some(marker) = number_marker(tok.text(sql)) => key.push_str(marker),
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

/// The marker that stands for a numeric constant in a shape, or None when its spelling matters and the
/// key keeps it verbatim. sqlparser reads some integers into u32/i64/u64 (`varchar(n)`, `FETCH FIRST n`,
/// MATCH_RECOGNIZE's `{n}`): one too large fails to parse where a small one parses, so only integers of up
/// to 9 digits, which always fit, are interchangeable. A plain decimal is refused wherever an integer is
/// required, whatever its value, and accepted wherever any number is. Other spellings (`1e5`, `0x1F`,
/// `1_000`, `1..2`, `1abc`, which the router's lexer takes as one token) are tokenized by sqlparser
/// according to their exact text. The fuzz target `router` found `SELECT 1..2` answered from `SELECT 1`'s
/// entry when every number was one marker.
fn number_marker(text: &str) -> Option<&'static str> {
    let all_digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    if all_digits(text) && text.len() <= 9 {
        return Some("\u{1}n");
    }
    match text.split_once('.') {
        Some((int, frac)) if all_digits(int) && all_digits(frac) => Some("\u{1}d"),
        _ => None,
    }
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
