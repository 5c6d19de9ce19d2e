//! The token view a statement is judged through ([`Stmt`]): its significant tokens over the source
//! text, the matching-parenthesis table that keeps lookups linear, and the nesting bound for statements
//! that wrap others.

use crate::router::split::{Tok, TokKind};

/// For each `(`, the distance to its matching `)` (0 when unmatched), computed once so that finding a
/// closing parenthesis stays linear however deeply a hostile request nests them.
pub(super) fn paren_spans(src: &str, toks: &[Tok]) -> Vec<usize> {
    let mut spans = vec![0; toks.len()];
    let mut open = Vec::new();
    for (i, t) in toks.iter().enumerate() {
        if t.kind != TokKind::Punct {
            continue;
        }
        match t.text(src) {
            "(" => open.push(i),
            ")" => {
                if let Some(o) = open.pop() {
                    spans[o] = i - o;
                }
            }
            _ => {}
        }
    }
    spans
}

/// How deeply EXPLAIN / DECLARE / COPY may wrap one another before the statement counts as unparsed;
/// real SQL needs two levels, and the bound keeps `EXPLAIN EXPLAIN ...` from exhausting the stack.
const MAX_NESTING: usize = 4;

/// A statement's significant tokens (comments removed) over its source text, with the small queries
/// the classifier asks of them. Out-of-range indexes answer "no", which keeps lookahead code flat.
#[derive(Clone, Copy)]
pub(super) struct Stmt<'a> {
    pub(super) src: &'a str,
    pub(super) toks: &'a [Tok],
    /// Parallel to `toks`: see [`paren_spans`].
    pub(super) spans: &'a [usize],
    /// How many enclosing statements (EXPLAIN, DECLARE, COPY) wrap this one.
    pub(super) nesting: usize,
}

impl<'a> Stmt<'a> {
    pub(super) fn len(&self) -> usize {
        self.toks.len()
    }

    pub(super) fn kind(&self, i: usize) -> Option<TokKind> {
        self.toks.get(i).map(|t| t.kind)
    }

    pub(super) fn text(&self, i: usize) -> &'a str {
        self.toks.get(i).map_or("", |t| t.text(self.src))
    }

    pub(super) fn kw(&self, i: usize, word: &str) -> bool {
        self.kind(i) == Some(TokKind::Word) && self.text(i).eq_ignore_ascii_case(word)
    }

    /// The keyword from `list` at `i`, as the list spells it.
    pub(super) fn kw_in(&self, i: usize, list: &[&'static str]) -> Option<&'static str> {
        list.iter().copied().find(|k| self.kw(i, k))
    }

    pub(super) fn punct(&self, i: usize, p: &str) -> bool {
        self.kind(i) == Some(TokKind::Punct) && self.text(i) == p
    }

    pub(super) fn op(&self, i: usize, o: &str) -> bool {
        self.kind(i) == Some(TokKind::Op) && self.text(i) == o
    }

    pub(super) fn is_name(&self, i: usize) -> bool {
        matches!(self.kind(i), Some(TokKind::Word | TokKind::QuotedIdent))
    }

    /// An identifier resolved as PostgreSQL does: unquoted folds to lower case, quoted stays exact.
    pub(super) fn ident(&self, i: usize) -> String {
        let text = self.text(i);
        if self.kind(i) != Some(TokKind::QuotedIdent) {
            return text.to_ascii_lowercase();
        }
        let text = text
            .strip_prefix("U&")
            .or_else(|| text.strip_prefix("u&"))
            .unwrap_or(text);
        let inner = text
            .strip_prefix('"')
            .and_then(|t| t.strip_suffix('"'))
            .unwrap_or(text);
        inner.replace("\"\"", "\"")
    }

    pub(super) fn close_paren(&self, open: usize) -> Option<usize> {
        let span = self.spans.get(open).copied().filter(|&span| span > 0)?;
        // A match beyond this slice belongs to an enclosing statement.
        Some(open + span).filter(|&close| close < self.len())
    }

    pub(super) fn range(&self, from: usize, to: usize) -> Stmt<'a> {
        let to = to.min(self.len());
        let from = from.min(to);
        Stmt {
            src: self.src,
            toks: self.toks.get(from..to).unwrap_or(&[]),
            spans: self.spans.get(from..to).unwrap_or(&[]),
            nesting: self.nesting,
        }
    }

    pub(super) fn from(&self, from: usize) -> Stmt<'a> {
        self.range(from, self.len())
    }

    /// The statement wrapped by this one (EXPLAIN's, DECLARE's or COPY's), unless nesting is too deep.
    pub(super) fn inner(&self, from: usize, to: usize) -> Option<Stmt<'a>> {
        let nesting = self.nesting + 1;
        (nesting <= MAX_NESTING).then(|| Stmt {
            nesting,
            ..self.range(from, to)
        })
    }

    /// The statement text from its first to its last token: no surrounding comments, so it can be
    /// replayed with a `;` appended.
    pub(super) fn source(&self) -> &'a str {
        match (self.toks.first(), self.toks.last()) {
            (Some(first), Some(last)) => self.src.get(first.start..last.end).unwrap_or(""),
            _ => "",
        }
    }

    /// `pg_temp.` at `i`: an object in the session's temporary schema.
    pub(super) fn is_pg_temp(&self, i: usize) -> bool {
        self.is_name(i) && self.ident(i) == "pg_temp" && self.punct(i + 1, ".")
    }

    /// The index after a possibly qualified name starting at `i`, if there is one.
    pub(super) fn skip_name(&self, i: usize) -> Option<usize> {
        if !self.is_name(i) {
            return None;
        }
        let mut j = i + 1;
        while self.punct(j, ".") && self.is_name(j + 1) {
            j += 2;
        }
        Some(j)
    }
}
