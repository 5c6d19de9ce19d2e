//! Prepared statements dropped by SQL `DEALLOCATE`. Drivers (psycopg among them) evict cached statements
//! this way, so the proxy must forget them too; under transaction pooling it answers a query made only of
//! DEALLOCATE by itself. The names are part of a statement's shape (identifiers, never constants), so the
//! classification records them and the shape cache hands them out with its decision.

use super::split::{Lexer, Tok, TokKind, split_statements};

/// Names dropped by `DEALLOCATE [PREPARE] name | ALL` statements in a simple-query string; `*` for ALL.
pub fn deallocated_names(sql: &str) -> Vec<String> {
    let mut out = Vec::new();
    // Runs on every simple query: almost none mention DEALLOCATE, and a byte scan is far cheaper than
    // splitting and lexing the text to find that out.
    if !contains_deallocate(sql.as_bytes()) {
        return out;
    }
    for stmt in split_statements(sql) {
        // Read by tokens, comments skipped. Slicing the text `"DEALLOCATE".len()` bytes past its start
        // misread `/* c */ DEALLOCATE x` and panicked when that offset fell inside a character of a leading
        // comment (found by the router fuzz target).
        let toks: Vec<Tok> = Lexer::new(stmt).filter(|t| t.kind != TokKind::Comment).collect();
        let word = |i: usize, w: &str| {
            toks.get(i)
                .is_some_and(|t| t.kind == TokKind::Word && t.text(stmt).eq_ignore_ascii_case(w))
        };
        if !word(0, "DEALLOCATE") {
            continue;
        }
        let at = if word(1, "PREPARE") && toks.len() == 3 {
            2
        } else {
            1
        };
        let Some([name]) = toks.get(at..) else {
            continue;
        };
        let text = name.text(stmt);
        match name.kind {
            TokKind::Word if text.eq_ignore_ascii_case("all") => out.push("*".to_owned()),
            TokKind::Word => out.push(text.to_ascii_lowercase()),
            TokKind::QuotedIdent => {
                if let Some(quoted) = text.strip_prefix('"').and_then(|n| n.strip_suffix('"')) {
                    out.push(quoted.replace("\"\"", "\""));
                }
            }
            _ => {}
        }
    }
    out
}

/// Whether a simple query may consist of DEALLOCATE statements only, the ones a transaction-pooled
/// session answers itself: its first statement must start with the word, after blanks and empty
/// statements. A text that starts with a comment is searched whole. Every query of such a session passes
/// here, and looking at the start costs a fraction of a search through the text.
pub fn may_be_only_deallocate(text: &[u8]) -> bool {
    const WORD: &[u8] = b"deallocate";
    let start = text
        .iter()
        .position(|b| !b.is_ascii_whitespace() && *b != b';')
        .unwrap_or(text.len());
    let rest = &text[start..];
    match rest.first() {
        Some(b'/' | b'-') => contains_deallocate(rest),
        _ => rest
            .get(..WORD.len())
            .is_some_and(|w| w.eq_ignore_ascii_case(WORD)),
    }
}

/// Horspool shifts for "deallocate", by the byte under the last position of the window: how far the
/// window may move when that byte is not the end of a match. Letters of the word count in either case.
const DEALLOCATE_SHIFTS: [u8; 256] = {
    let word = b"deallocate";
    let mut table = [word.len() as u8; 256];
    let mut i = 0;
    while i < word.len() - 1 {
        let shift = (word.len() - 1 - i) as u8;
        table[word[i] as usize] = shift;
        table[word[i].to_ascii_uppercase() as usize] = shift;
        i += 1;
    }
    table
};

/// Whether "deallocate" occurs in `haystack`, ignoring ASCII case. A Horspool search: most windows are
/// skipped by ten bytes after looking at one.
pub fn contains_deallocate(haystack: &[u8]) -> bool {
    const WORD: &[u8] = b"deallocate";
    let mut at = 0;
    while let Some(window) = haystack.get(at..at + WORD.len()) {
        let last = window[WORD.len() - 1];
        if last.eq_ignore_ascii_case(&b'e') && window.eq_ignore_ascii_case(WORD) {
            return true;
        }
        at += usize::from(DEALLOCATE_SHIFTS[usize::from(last)]);
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deallocate_names() {
        assert_eq!(deallocated_names("DEALLOCATE _pg3_1"), vec!["_pg3_1"]);
        assert_eq!(
            deallocated_names("deallocate prepare \"S_1\"; DEALLOCATE ALL"),
            vec!["S_1", "*"]
        );
        assert!(deallocated_names("SELECT 'DEALLOCATE x'").is_empty());
        assert_eq!(
            deallocated_names("/* c */ DEALLOCATE /* d */ PREPARE s_2; DEALLOCATE all"),
            vec!["s_2", "*"]
        );
        assert_eq!(deallocated_names("DeAlLoCaTe s"), vec!["s"]);
        assert!(deallocated_names("SELECT abalance FROM pgbench_accounts WHERE aid = 1").is_empty());
        assert!(contains_deallocate(b"xDEALLOCATE"));
        assert!(contains_deallocate(b"deallocate"));
        assert!(contains_deallocate(b"select 1; dEaLlOcAtE x"));
        assert!(contains_deallocate(b"deallocatedeallocate"));
        assert!(contains_deallocate(b"ddeallocate e"));
        assert!(!contains_deallocate(b"DEALLOCAT"));
        assert!(!contains_deallocate(b"deallocat e deallocat"));
        assert!(!contains_deallocate(b""));
        // (text, may be made of DEALLOCATE statements only)
        let table: &[(&str, bool)] = &[
            ("DEALLOCATE s1", true),
            ("  \n\tdeallocate all", true),
            (";; DeAllocate prepare x; DEALLOCATE y", true),
            ("/* c */ DEALLOCATE x", true),
            ("-- c\nDEALLOCATE x", true),
            ("/* no */ SELECT 1", false),
            ("SELECT 1; DEALLOCATE x", false),
            ("SELECT abalance FROM pgbench_accounts WHERE aid = 1", false),
            ("DEALLOCAT", false),
            ("", false),
            (";", false),
        ];
        for (text, may) in table {
            assert_eq!(may_be_only_deallocate(text.as_bytes()), *may, "{text:?}");
        }
        // Whenever the session would answer by itself, the check lets the query through.
        let answered: Vec<&str> = table
            .iter()
            .map(|(text, _)| *text)
            .filter(|text| {
                let names = deallocated_names(text);
                !names.is_empty() && names.len() == split_statements(text).len()
            })
            .collect();
        assert_eq!(answered.len(), 5, "{answered:?}");
        assert!(answered.iter().all(|t| may_be_only_deallocate(t.as_bytes())));
        // Against the obvious search, on texts made of the word's letters.
        let letters = b"dealoctDEALOCT x";
        let mut seed = 7u32;
        for _ in 0..2000 {
            let len = (seed % 40) as usize;
            let text: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                    letters[(seed >> 16) as usize % letters.len()]
                })
                .collect();
            let naive = text.windows(10).any(|w| w.eq_ignore_ascii_case(b"deallocate"));
            assert_eq!(
                contains_deallocate(&text),
                naive,
                "{:?}",
                String::from_utf8_lossy(&text)
            );
        }
    }
}
