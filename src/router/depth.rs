//! A bound on how deep a statement's syntax tree can be, found without building the tree, so that a
//! statement too deep to parse safely is never handed to sqlparser.
//!
//! sqlparser counts its own recursion and refuses deep nesting of parentheses, subqueries, CASE and prefix
//! operators, but it builds chains of binary operators, casts and set operations (`1+1+...`,
//! `x::int::int...`, `a OR b OR ...`, `SELECT 1 UNION SELECT 1 ...`) in a loop, as left-deep trees whose
//! depth is the length of the chain. Dropping such a tree (and formatting or visiting it) recurses once per
//! level, and a statement of a few hundred kilobytes then overflows a thread's stack and aborts the whole
//! process. The estimate here is an upper bound of that depth, computed in one pass over the router's
//! tokens with an explicit stack: every token of a comma-separated segment may add a level (a token that
//! is not an operator adds none in sqlparser's tree, so this overestimates, never under), and a bracketed
//! group — `( )`, `[ ]` or `CASE ... END` — adds its own deepest segment plus one. Commas separate the
//! elements of lists (select lists, arguments, IN lists, VALUES rows), which sqlparser keeps in vectors, so
//! a long flat list stays shallow however many elements it has.
//!
//! [`MAX_DEPTH`] is the bound past which a statement is not parsed; `src/main.rs` sizes the runtime's
//! thread stacks so that a tree of that depth is far from exhausting one (see the test
//! `max_depth_fits_the_stack` and docs/architecture.md).

use super::split::{Lexer, Tok, TokKind};

/// Statements whose estimated depth exceeds this are not parsed: the classifier sends them to the primary
/// (docs/routing.md). Real statements stay far below it: the estimate counts every token of an expression,
/// so it is about four per condition of a long `a = 1 AND b = 2 AND ...` clause, and a WHERE clause of two
/// thousand such conditions (or an ORM's OR of 2,000 comparisons) still parses. At this bound the
/// costliest shapes measured (a postfix `!` chain, array subscripts) need about 0.8 MiB of stack in a debug
/// build, a tenth of [`crate::proxy::THREAD_STACK_SIZE`].
pub const MAX_DEPTH: usize = 10_000;

/// One bracketed group being read, or the statement itself at the bottom of the stack.
#[derive(Default)]
struct Group {
    /// Tokens of the current comma-separated segment.
    tokens: usize,
    /// The deepest group closed inside the current segment.
    inner: usize,
    /// The deepest segment already ended by a comma.
    done: usize,
}

impl Group {
    fn depth(&self) -> usize {
        self.done.max(self.tokens + self.inner)
    }
}

/// What a token does to the nesting.
enum Role {
    Open,
    Close,
    Separator,
    Plain,
}

fn role(src: &str, tok: &Tok) -> Role {
    match (tok.kind, tok.text(src)) {
        (TokKind::Punct, "(" | "[") => Role::Open,
        (TokKind::Punct, ")" | "]") => Role::Close,
        (TokKind::Punct, ",") => Role::Separator,
        (TokKind::Word, word) if word.eq_ignore_ascii_case("CASE") => Role::Open,
        (TokKind::Word, word) if word.eq_ignore_ascii_case("END") => Role::Close,
        _ => Role::Plain,
    }
}

/// An upper bound of the syntax tree depth of the statement made of `toks` (comments may be left in or
/// out: they count like any token, which only raises the bound). The result is capped: once the bound is
/// known to exceed `cap`, the scan stops and returns a value above `cap`, so a hostile statement costs no
/// more than reading it up to that point.
pub(crate) fn estimate_capped<'a>(src: &str, toks: impl IntoIterator<Item = &'a Tok>, cap: usize) -> usize {
    let mut stack = vec![Group::default()];
    // Tokens of the open segments on the stack: a lower bound of the final estimate, checked as it grows.
    let mut open_tokens = 0usize;
    for tok in toks {
        if tok.kind == TokKind::Comment {
            continue;
        }
        match role(src, tok) {
            Role::Open => {
                if let Some(top) = stack.last_mut() {
                    top.tokens += 1;
                }
                open_tokens += 1;
                stack.push(Group::default());
            }
            Role::Close if stack.len() > 1 => {
                let closed = stack.pop().unwrap_or_default();
                open_tokens -= closed.tokens;
                if let Some(parent) = stack.last_mut() {
                    parent.inner = parent.inner.max(closed.depth() + 1);
                    parent.tokens += 1;
                    if parent.tokens + parent.inner > cap {
                        return cap + 1;
                    }
                }
                open_tokens += 1;
            }
            Role::Separator => {
                if let Some(top) = stack.last_mut() {
                    top.done = top.depth();
                    open_tokens -= top.tokens;
                    top.tokens = 0;
                    top.inner = 0;
                }
            }
            // A closing bracket with nothing open (the statement is malformed) is an ordinary token.
            Role::Close | Role::Plain => {
                if let Some(top) = stack.last_mut() {
                    top.tokens += 1;
                }
                open_tokens += 1;
            }
        }
        // The open segments' tokens, one level per enclosing group, are all part of the final bound.
        if open_tokens + stack.len() - 1 > cap {
            return cap + 1;
        }
    }
    // Groups never closed end with the statement: each is inside the open segment of the one below it.
    let mut unclosed = 0;
    while let Some(group) = stack.pop() {
        let own = group.done.max(group.tokens + group.inner.max(unclosed));
        if stack.is_empty() {
            return own;
        }
        unclosed = own + 1;
    }
    0
}

/// Whether the statement made of `toks` (lexed from `src`) may be deeper than [`MAX_DEPTH`].
pub(crate) fn too_deep_tokens<'a>(src: &str, toks: impl IntoIterator<Item = &'a Tok>) -> bool {
    estimate_capped(src, toks, MAX_DEPTH) > MAX_DEPTH
}

/// Whether `sql` (one statement or several) may nest deeper than [`MAX_DEPTH`]: if so, sqlparser must not
/// see it. Several statements count as one, which can only overestimate.
pub fn too_deep(sql: &str) -> bool {
    let toks: Vec<Tok> = Lexer::new(sql).collect();
    too_deep_tokens(sql, &toks)
}

/// The depth bound of `sql`, capped just above `cap` (see [`estimate_capped`]).
pub fn estimate(sql: &str, cap: usize) -> usize {
    let toks: Vec<Tok> = Lexer::new(sql).collect();
    estimate_capped(sql, &toks, cap)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn depth(sql: &str) -> usize {
        estimate(sql, usize::MAX - 1)
    }

    #[test]
    fn estimates_bound_the_tree_depth() {
        // (statement, the least the estimate may be: the depth of sqlparser's tree for it)
        for (sql, at_least) in [
            ("", 0),
            ("select 1", 1),
            ("select 1+1+1+1", 4),
            ("select 1::int::int::int", 4),
            ("select a from t where a = 1 or a = 2 or a = 3", 6),
            ("select ((((1))))", 5),
            ("select - - - 1", 4),
            ("select case when case when x then 1 end then 2 end", 3),
            ("select a[1][2][3]", 4),
            ("select (select (select 1))", 3),
            ("select 1 union select 2 union select 3", 3),
        ] {
            let d = depth(sql);
            assert!(d >= at_least, "{sql}: {d} < {at_least}");
        }
    }

    #[test]
    fn flat_lists_stay_shallow() {
        let in_list = format!(
            "select * from t where a in ({})",
            (0..100_000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
        );
        assert!(depth(&in_list) < 20, "{}", depth(&in_list));
        let values = format!(
            "values {}",
            (0..50_000)
                .map(|i| format!("({i}, 'x', {i}.5)"))
                .collect::<Vec<_>>()
                .join(", ")
        );
        assert!(depth(&values) < 10, "{}", depth(&values));
        let columns = format!("select {} from t", vec!["a + b"; 50_000].join(", "));
        assert!(depth(&columns) < 10);
        assert!(!too_deep(&in_list) && !too_deep(&values) && !too_deep(&columns));
    }

    #[test]
    fn groups_add_their_depth_to_the_segment_around_them() {
        // The chain inside the parentheses is below every operator of the chain around them.
        assert!(depth("select (1+1+1+1+1) + 1 + 1") >= 8);
        // A comma after the group ends its segment: what follows starts afresh.
        assert_eq!(depth("select (1+1+1), 1"), depth("select (1+1+1)"));
        // Unclosed groups count as if closed at the end; stray closers are ordinary tokens.
        assert!(depth("select (((1+1") >= 3 + 3);
        assert!(depth("select 1)))") >= 4);
    }

    /// Statements just inside [`MAX_DEPTH`] of the shapes that cost sqlparser the most stack per level
    /// (measured: a postfix `!` chain about 80 bytes a level in a debug build, array subscripts and array
    /// types next) are parsed, and their trees dropped, on a quarter of the stack the runtime's threads
    /// get: the limit leaves the worker a fourfold margin at least.
    #[test]
    fn max_depth_fits_the_stack() {
        let shapes: &[(&str, &str, &str)] = &[
            ("SELECT 1", " !", ""),
            ("SELECT x", "[1]", " FROM t"),
            ("SELECT x::int", "[]", " FROM t"),
            ("SELECT ", "1+", "1"),
            ("SELECT 1", "::int", ""),
            ("SELECT 1", " UNION SELECT 1", ""),
            ("SELECT * FROM t WHERE ", "a = 1 OR ", "true"),
            ("SELECT 1", " IS NOT NULL", ""),
            ("SELECT ", "(1 + 1) * ", "1"),
            ("SELECT 'a'", " LIKE 'a'", ""),
        ];
        let rules = crate::router::functions::FunctionRules::new(&[], &[]);
        for (head, term, tail) in shapes {
            let make = |n: usize| format!("{head}{}{tail}", term.repeat(n));
            // The most terms that stay within the limit.
            let (mut fits, mut over) = (1usize, MAX_DEPTH + 1);
            while over - fits > 1 {
                let mid = (fits + over) / 2;
                if too_deep(&make(mid)) {
                    over = mid;
                } else {
                    fits = mid;
                }
            }
            let sql = make(fits);
            assert!(!too_deep(&sql) && too_deep(&make(fits + 1)));
            let rules = rules.clone();
            let decision = std::thread::Builder::new()
                .stack_size(crate::proxy::THREAD_STACK_SIZE / 4)
                .spawn(move || crate::router::classify::classify(&sql, &rules))
                .expect("spawn")
                .join()
                .expect("classified");
            // Parsed (not refused as too deep) and found to be a read.
            assert_eq!(
                decision.rule,
                crate::router::classify::Rule::Read,
                "{head}{term}... x{fits}"
            );
        }
    }

    #[test]
    fn the_cap_stops_the_scan_early() {
        let chain = format!("select {}1", "1+".repeat(100_000));
        assert_eq!(estimate(&chain, 1000), 1001);
        assert!(too_deep(&chain));
        let parens = format!("select {}1{}", "(".repeat(100_000), ")".repeat(100_000));
        assert_eq!(estimate(&parens, 1000), 1001);
        assert!(depth(&parens) >= 100_000);
        let under = format!("select {}1", "1+".repeat(MAX_DEPTH / 2 - 10));
        assert!(!too_deep(&under));
    }
}
