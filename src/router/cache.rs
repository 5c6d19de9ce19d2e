//! Decisions remembered per statement text. Drivers and applications send the same few texts over and
//! over (prepared or not); classifying a text once per set of function rules saves the lexer and parser on
//! every later request. The key includes the rules' identity, so a reload of a database's functions starts
//! afresh, and the whole text, so a cached decision is exactly what `classify` would return.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use super::classify::{Decision, classify};
use super::functions::FunctionRules;

/// Most texts kept; past it the cache starts over (cheaper than LRU bookkeeping on every hit).
const CAPACITY: usize = 8192;
/// Longer texts are classified every time: they are rarely repeated and would crowd the cache.
const MAX_TEXT: usize = 4096;

/// Entries keep their rules alive, so no other rules can be allocated at an address used in a key.
type Entry = (Arc<FunctionRules>, Arc<Decision>);

static CACHE: Mutex<Option<HashMap<(usize, String), Entry>>> = Mutex::new(None);

/// `classify`, remembered.
pub fn classify_cached(sql: &str, rules: &Arc<FunctionRules>) -> Arc<Decision> {
    if sql.len() > MAX_TEXT {
        return Arc::new(classify(sql, rules));
    }
    let key = (Arc::as_ptr(rules) as usize, sql.to_owned());
    if let Some((_, d)) = CACHE
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .as_ref()
        .and_then(|m| m.get(&key))
    {
        return d.clone();
    }
    let d = Arc::new(classify(sql, rules));
    let mut guard = CACHE.lock().unwrap_or_else(|p| p.into_inner());
    let map = guard.get_or_insert_with(HashMap::new);
    if map.len() >= CAPACITY {
        map.clear();
    }
    map.insert(key, (rules.clone(), d.clone()));
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
        let other = Arc::new(FunctionRules::new(&["my_writer".to_owned()], &[]));
        assert_eq!(
            classify_cached("SELECT my_writer()", &other).target,
            classify("SELECT my_writer()", &other).target
        );
    }
}
