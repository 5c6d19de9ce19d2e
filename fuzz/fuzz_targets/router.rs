//! Fuzz target `router`: arbitrary text as the SQL of a Query or Parse message, through the router's
//! lexical layer (`split_statements`, `leading_hint`, `first_keywords`), the classifier (`classify`), the
//! decision cache (`classify_cached`), the session's DEALLOCATE reader (`deallocated_names`) and the reader of
//! function bodies (`leaves_session_state`).
//!
//! The input is UTF-8 text (invalid bytes are replaced, as a lossy conversion would). A NUL separates up
//! to four texts, classified in order through one cache, so that two statements of the same shape meet in
//! it; each text is also tried with its constants changed, the commonest way two requests share a shape.
//!
//! Invariants (besides "never panics, never loops"):
//! - `classify_cached` gives exactly the decision `classify` gives, whatever the cache saw before, and so
//!   does `classify_placed` for the texts of one input sent as one session sends them (its place moving
//!   from text to text), and `classify_placed_utf8` for them as bytes, and for the input's raw bytes
//!   (split at NUL) the decision `classify` gives their `ascii_view`;
//! - `split_statements` returns non-empty, non-overlapping pieces of the text, in order, trimmed of ASCII
//!   whitespace (only), each of which splits into just itself again;
//! - a leading routing hint decides the target; a statement that does not parse, or is too deep to
//!   parse, goes to the primary;
//! - `first_keywords` returns at most the count asked for, each an upper-case word.

#![no_main]

use std::cell::Cell;
use std::sync::Arc;

use libfuzzer_sys::fuzz_target;
use pgfleet::protocol::encoding::ascii_view;
use pgfleet::router::cache::{Place, classify_cached, classify_placed, classify_placed_utf8};
use pgfleet::router::classify::{Rule, Target, classify, leaves_session_state};
use pgfleet::router::deallocate::deallocated_names;
use pgfleet::router::functions::FunctionRules;
use pgfleet::router::split::{Hint, first_keywords, leading_hint, split_statements};

thread_local! {
    /// The place among the cache's recent statements of the session that sends this input's texts; a new
    /// input starts without one, so that a failing input reproduces on its own.
    static PLACE: Cell<Place> = Cell::new(Place::default());
    /// The same for the session that sends the texts as a UTF8 session's arrive: as bytes.
    static PLACE_OF_BYTES: Cell<Place> = Cell::new(Place::default());
}

fuzz_target!(|data: &[u8]| {
    PLACE.with(|p| p.set(Place::default()));
    PLACE_OF_BYTES.with(|p| p.set(Place::default()));
    let text = String::from_utf8_lossy(data);
    // Fresh rules for every input: the cache keys on the rules' identity, so entries left by earlier
    // inputs are never hit and a failing input reproduces on its own.
    let rules = Arc::new(
        FunctionRules::new(&["my_writer".to_owned()], &["read_only_but_volatile".to_owned()])
            .with_volatile(
                ["public.bump_counter", "audit_log"]
                    .iter()
                    .map(|s| (*s).to_owned())
                    .collect(),
            )
            .with_session_functions([("public".to_owned(), "set_tenant".to_owned())].into_iter().collect()),
    );
    // The raw bytes first, as a UTF8 session's text arrives (not UTF-8 or not, which the server refuses).
    for raw in data.split(|b| *b == 0).take(4) {
        let placed = PLACE_OF_BYTES.with(|p| {
            let mut place = p.get();
            let decision = classify_placed_utf8(raw, &rules, &mut place);
            p.set(place);
            decision
        });
        assert_eq!(
            *placed,
            classify(&ascii_view(raw), &rules),
            "classify_placed_utf8 differs from classify for {raw:?}"
        );
    }
    for sql in text.split('\0').take(4) {
        // The same text read as a function's body: only "never panics, never loops".
        leaves_session_state(sql);
        check_text(sql, &rules);
        for variant in constant_variants(sql) {
            if variant != sql {
                check_cache(&variant, &rules);
            }
        }
    }
});

/// The text with its constants changed the way requests of one shape differ: every digit made `1`, every
/// run of digits doubled, every character between single quotes made `x`, and every run of digits made
/// each end of the integer classes the cache tells apart (u32, i64 and u64; checked in this order, each
/// class's two ends meet in one entry). The changes are crude (they also touch digits in names and quotes
/// in comments), which does no harm: a variant only has to be classified the same with and without the
/// cache.
fn constant_variants(sql: &str) -> Vec<String> {
    let ones = sql
        .chars()
        .map(|c| if c.is_ascii_digit() { '1' } else { c })
        .collect();
    let mut doubled = String::with_capacity(sql.len() * 2);
    let mut run = String::new();
    for c in sql.chars().chain(std::iter::once('\0')) {
        if c.is_ascii_digit() {
            run.push(c);
            continue;
        }
        doubled.push_str(&run);
        doubled.push_str(&run);
        run.clear();
        if c != '\0' {
            doubled.push(c);
        }
    }
    let mut quoted = false;
    let strings = sql
        .chars()
        .map(|c| {
            if c == '\'' {
                quoted = !quoted;
                c
            } else if quoted {
                'x'
            } else {
                c
            }
        })
        .collect();
    let mut variants = vec![ones, doubled, strings];
    for edge in [
        "4294967296",
        "9223372036854775807",
        "9223372036854775808",
        "18446744073709551615",
    ] {
        variants.push(digit_runs_made(sql, edge));
    }
    variants
}

/// `sql` with every run of ASCII digits replaced by `number`.
fn digit_runs_made(sql: &str, number: &str) -> String {
    let mut out = String::with_capacity(sql.len());
    let mut in_run = false;
    for c in sql.chars() {
        if c.is_ascii_digit() {
            if !in_run {
                out.push_str(number);
            }
            in_run = true;
        } else {
            out.push(c);
            in_run = false;
        }
    }
    out
}

fn check_text(sql: &str, rules: &Arc<FunctionRules>) {
    check_split(sql);
    let decision = check_cache(sql, rules);
    match leading_hint(sql) {
        Some(hint) => {
            let target = match hint {
                Hint::Primary => Target::Primary,
                Hint::Replica => Target::Replica,
            };
            assert_eq!((decision.target, &decision.rule), (target, &Rule::Hint));
        }
        None if matches!(decision.rule, Rule::Unparsed | Rule::TooDeep | Rule::TooLarge) => {
            assert_eq!(decision.target, Target::Primary)
        }
        None => {}
    }
    let _ = deallocated_names(sql);
}

/// The cached decision is the fresh one; returns it.
fn check_cache(sql: &str, rules: &Arc<FunctionRules>) -> pgfleet::router::classify::Decision {
    let fresh = classify(sql, rules);
    let cached = classify_cached(sql, rules);
    assert_eq!(
        *cached, fresh,
        "classify_cached differs from classify for {sql:?}"
    );
    let placed = PLACE.with(|p| {
        let mut place = p.get();
        let decision = classify_placed(sql, rules, &mut place);
        p.set(place);
        decision
    });
    assert_eq!(
        *placed, fresh,
        "classify_placed differs from classify for {sql:?}"
    );
    let placed = PLACE_OF_BYTES.with(|p| {
        let mut place = p.get();
        let decision = classify_placed_utf8(sql.as_bytes(), rules, &mut place);
        p.set(place);
        decision
    });
    assert_eq!(
        *placed, fresh,
        "classify_placed_utf8 differs from classify for {sql:?}"
    );
    fresh
}

fn check_split(sql: &str) {
    let base = sql.as_ptr() as usize;
    let mut after = 0;
    for piece in split_statements(sql) {
        let start = piece.as_ptr() as usize - base;
        assert!(
            start >= after && start + piece.len() <= sql.len(),
            "{piece:?} is not a piece of the text"
        );
        after = start + piece.len();
        assert!(!piece.is_empty(), "empty statement in {sql:?}");
        // Trimmed of the whitespace PostgreSQL's lexer skips; other Unicode spaces are name characters.
        let trimmed = piece.trim_matches(|c| matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c'));
        assert_eq!(piece, trimmed, "untrimmed statement in {sql:?}");
        assert_eq!(split_statements(piece), vec![piece], "{piece:?} splits again");
        let words = first_keywords(piece, 3);
        assert!(words.len() <= 3);
        for w in &words {
            assert!(!w.is_empty() && *w == w.to_ascii_uppercase());
        }
    }
}
