//! The lexical layer of the router: a small PostgreSQL lexer that knows where strings, quoted
//! identifiers, dollar quotes and comments begin and end, and the three things built on it —
//! splitting a simple-query string into statements, finding a leading routing hint comment, and
//! reading a statement's first keywords.
//!
//! The lexer is deliberately forgiving: it never fails, an unterminated string or comment becomes one
//! [`TokKind::Unterminated`] token running to the end of the input, and the classifier treats that as
//! "does not parse". It mirrors PostgreSQL's `scan.l` closely enough that a `;` inside a string, a
//! comment or a dollar-quoted body is never taken for a statement boundary.

/// A routing override written as a leading `/* pgfleet:primary */` or `/* pgfleet:replica */` comment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Hint {
    /// Send the request to the primary.
    Primary,
    /// Send the request to a replica.
    Replica,
}

/// What one lexical token is; the text is recovered from the source by byte range.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TokKind {
    /// An unquoted identifier or keyword (may contain `$` after the first character).
    Word,
    /// A `"quoted"` or `U&"quoted"` identifier.
    QuotedIdent,
    /// Any string constant: `'..'`, `E'..'`, `B'..'`, `X'..'`, `N'..'`, `U&'..'`, `$tag$..$tag$`.
    Str,
    /// A numeric constant.
    Number,
    /// A positional parameter such as `$1`.
    Param,
    /// One character of punctuation: `( ) , ; . [ ]` and anything else not covered above.
    Punct,
    /// A run of operator characters, trimmed of trailing `+`/`-` the way PostgreSQL does.
    Op,
    /// A `--` line comment or a (possibly nested) `/* */` block comment.
    Comment,
    /// A string, identifier or comment that never closes; it runs to the end of the input.
    Unterminated,
}

/// One token: its kind and its byte range in the lexed text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Tok {
    pub(crate) kind: TokKind,
    pub(crate) start: usize,
    pub(crate) end: usize,
}

impl Tok {
    /// The token's source text.
    pub(crate) fn text<'a>(&self, src: &'a str) -> &'a str {
        src.get(self.start..self.end).unwrap_or("")
    }
}

/// An iterator over the tokens of `src`, comments included, whitespace skipped.
pub(crate) struct Lexer<'a> {
    src: &'a [u8],
    pos: usize,
}

impl<'a> Lexer<'a> {
    pub(crate) fn new(src: &'a str) -> Self {
        Self::starting_at(src, 0)
    }

    /// A lexer that starts at byte `pos`, which the caller knows to be a token boundary.
    pub(crate) fn starting_at(src: &'a str, pos: usize) -> Self {
        Self::over_bytes(src.as_bytes(), pos)
    }

    /// [`Lexer::starting_at`] over bytes not known to be UTF-8. The lexer reads bytes (any byte from 0x80 up
    /// continues a name), so valid UTF-8 lexes as its text does; what it makes of other bytes only matters
    /// where the server refuses them anyway.
    pub(crate) fn over_bytes(src: &'a [u8], pos: usize) -> Self {
        Lexer { src, pos }
    }

    fn at(&self, i: usize) -> u8 {
        self.src.get(i).copied().unwrap_or(0)
    }

    fn tok(&mut self, kind: TokKind, start: usize, end: usize) -> Tok {
        self.pos = end;
        Tok { kind, start, end }
    }

    /// A quoted run starting at `open` (the quote character); `backslash` enables `E''` escapes.
    /// Doubling the quote character escapes it, as in both strings and identifiers.
    fn quoted(&mut self, start: usize, open: usize, quote: u8, backslash: bool, kind: TokKind) -> Tok {
        let mut i = open + 1;
        while i < self.src.len() {
            let c = self.src[i];
            if backslash && c == b'\\' {
                i += 2;
            } else if c == quote {
                if self.at(i + 1) == quote {
                    i += 2;
                } else {
                    return self.tok(kind, start, i + 1);
                }
            } else {
                i += 1;
            }
        }
        self.tok(TokKind::Unterminated, start, self.src.len())
    }

    fn block_comment(&mut self, start: usize) -> Tok {
        // PostgreSQL nests block comments, unlike the SQL standard; a `*/` inside an inner comment
        // must not end the outer one.
        let mut depth = 0usize;
        let mut i = start;
        while i < self.src.len() {
            if self.src[i] == b'/' && self.at(i + 1) == b'*' {
                depth += 1;
                i += 2;
            } else if self.src[i] == b'*' && self.at(i + 1) == b'/' {
                depth -= 1;
                i += 2;
                if depth == 0 {
                    return self.tok(TokKind::Comment, start, i);
                }
            } else {
                i += 1;
            }
        }
        self.tok(TokKind::Unterminated, start, self.src.len())
    }

    /// `$tag$` at `start`, if it is one: returns the index just past the opening delimiter.
    fn dollar_tag_end(&self, start: usize) -> Option<usize> {
        let mut i = start + 1;
        if self.at(i) != b'$' {
            if !is_ident_start(self.at(i)) {
                return None;
            }
            while is_ident_start(self.at(i)) || self.at(i).is_ascii_digit() {
                i += 1;
            }
            if self.at(i) != b'$' {
                return None;
            }
        }
        Some(i + 1)
    }

    fn dollar_quoted(&mut self, start: usize, body: usize) -> Tok {
        let tag = &self.src[start..body];
        let found = self.src[body..].windows(tag.len()).position(|w| w == tag);
        match found {
            Some(offset) => self.tok(TokKind::Str, start, body + offset + tag.len()),
            None => self.tok(TokKind::Unterminated, start, self.src.len()),
        }
    }

    fn operator(&mut self, start: usize) -> Tok {
        let mut end = start;
        while end < self.src.len() && is_op_char(self.src[end]) {
            // A comment start ends the operator, exactly as in scan.l.
            let next = self.at(end + 1);
            if end > start
                && ((self.src[end] == b'-' && next == b'-') || (self.src[end] == b'/' && next == b'*'))
            {
                break;
            }
            end += 1;
        }
        // scan.l drops trailing `+`/`-` from a multi-character operator unless it contains one of the
        // characters that mark a user-defined operator, so that `x=-1` lexes as `x`, `=`, `-`, `1`.
        let op = &self.src[start..end];
        if op.len() > 1 && !op.iter().any(|c| b"~!@#^&|`?%".contains(c)) {
            while end > start + 1 && matches!(self.src[end - 1], b'+' | b'-') {
                end -= 1;
            }
        }
        self.tok(TokKind::Op, start, end)
    }
}

/// Character classes, looked up once per byte: the lexer runs over every statement the session cache
/// sees, and chains of comparisons (or a search of the operator characters) per byte dominated its cost.
const WHITESPACE: u8 = 1;
const IDENT_START: u8 = 2;
const IDENT_CHAR: u8 = 4;
const OP_CHAR: u8 = 8;
const NUMBER_CHAR: u8 = 16;

const CLASSES: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut i = 0;
    while i < 256 {
        let c = i as u8;
        let mut class = 0;
        // scan.l's whitespace, vertical tab included.
        if matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c) {
            class |= WHITESPACE;
        }
        if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            class |= IDENT_START | IDENT_CHAR;
        }
        if c.is_ascii_digit() || c == b'$' {
            class |= IDENT_CHAR;
        }
        if matches!(
            c,
            b'+' | b'-'
                | b'*'
                | b'/'
                | b'<'
                | b'>'
                | b'='
                | b'~'
                | b'!'
                | b'@'
                | b'#'
                | b'%'
                | b'^'
                | b'&'
                | b'|'
                | b'`'
                | b'?'
                | b':'
        ) {
            class |= OP_CHAR;
        }
        if c.is_ascii_alphanumeric() || c == b'_' || c == b'.' {
            class |= NUMBER_CHAR;
        }
        table[i] = class;
        i += 1;
    }
    table
};

/// scan.l's whitespace, vertical tab included (for trimming statement pieces; the lexer uses `CLASSES`).
fn is_space(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c')
}

fn has_class(c: u8, class: u8) -> bool {
    CLASSES[usize::from(c)] & class != 0
}

fn is_ident_start(c: u8) -> bool {
    has_class(c, IDENT_START)
}

fn is_op_char(c: u8) -> bool {
    has_class(c, OP_CHAR)
}

/// How many bytes of `bytes` from the start belong to `class`.
fn run_of(bytes: &[u8], class: u8) -> usize {
    bytes
        .iter()
        .position(|&b| !has_class(b, class))
        .unwrap_or(bytes.len())
}

impl Iterator for Lexer<'_> {
    type Item = Tok;

    fn next(&mut self) -> Option<Tok> {
        self.pos += run_of(self.src.get(self.pos..).unwrap_or_default(), WHITESPACE);
        let start = self.pos;
        if start >= self.src.len() {
            return None;
        }
        let c = self.src[start];
        let next = self.at(start + 1);
        let tok = match c {
            b'-' if next == b'-' => {
                let end = self.src[start..]
                    .iter()
                    .position(|&b| b == b'\n')
                    .map_or(self.src.len(), |p| start + p);
                self.tok(TokKind::Comment, start, end)
            }
            b'/' if next == b'*' => self.block_comment(start),
            b'\'' => self.quoted(start, start, b'\'', false, TokKind::Str),
            b'"' => self.quoted(start, start, b'"', false, TokKind::QuotedIdent),
            b'e' | b'E' if next == b'\'' => self.quoted(start, start + 1, b'\'', true, TokKind::Str),
            b'b' | b'B' | b'x' | b'X' | b'n' | b'N' if next == b'\'' => {
                self.quoted(start, start + 1, b'\'', false, TokKind::Str)
            }
            b'u' | b'U' if next == b'&' && self.at(start + 2) == b'\'' => {
                self.quoted(start, start + 2, b'\'', false, TokKind::Str)
            }
            b'u' | b'U' if next == b'&' && self.at(start + 2) == b'"' => {
                self.quoted(start, start + 2, b'"', false, TokKind::QuotedIdent)
            }
            b'$' if next.is_ascii_digit() => {
                let end = start
                    + 1
                    + self.src[start + 1..]
                        .iter()
                        .take_while(|b| b.is_ascii_digit())
                        .count();
                self.tok(TokKind::Param, start, end)
            }
            b'$' => match self.dollar_tag_end(start) {
                Some(body) => self.dollar_quoted(start, body),
                None => self.tok(TokKind::Punct, start, start + 1),
            },
            _ if is_ident_start(c) => {
                let end = start + run_of(&self.src[start..], IDENT_CHAR);
                self.tok(TokKind::Word, start, end)
            }
            _ if c.is_ascii_digit() || (c == b'.' && next.is_ascii_digit()) => {
                let len = run_of(&self.src[start..], NUMBER_CHAR);
                self.tok(TokKind::Number, start, start + len)
            }
            _ if is_op_char(c) => self.operator(start),
            _ => self.tok(TokKind::Punct, start, start + 1),
        };
        Some(tok)
    }
}

/// Tracks psql's heuristic for SQL-standard function bodies (`BEGIN ATOMIC ... END`), whose inner
/// semicolons do not end the `CREATE FUNCTION` / `CREATE PROCEDURE` statement.
#[derive(Default)]
struct AtomicBody {
    /// First letters of the first four words when they are create/or/replace/function/procedure.
    lead: [u8; 4],
    words: usize,
    depth: usize,
}

impl AtomicBody {
    fn word(&mut self, word: &str, paren_depth: usize) {
        if self.words < self.lead.len() {
            let is_lead = ["create", "function", "procedure", "or", "replace"]
                .iter()
                .any(|w| word.eq_ignore_ascii_case(w));
            self.lead[self.words] = if is_lead {
                word.as_bytes()[0].to_ascii_lowercase()
            } else {
                0
            };
        }
        self.words += 1;
        let l = self.lead;
        let creates_routine = l[0] == b'c'
            && (l[1] == b'f'
                || l[1] == b'p'
                || (l[1] == b'o' && l[2] == b'r' && matches!(l[3], b'f' | b'p')));
        if !creates_routine || paren_depth != 0 {
            return;
        }
        if word.eq_ignore_ascii_case("begin") {
            self.depth += 1;
        } else if word.eq_ignore_ascii_case("case") {
            // CASE also ends with END, but only matters once inside a BEGIN.
            if self.depth >= 1 {
                self.depth += 1;
            }
        } else if word.eq_ignore_ascii_case("end") {
            self.depth = self.depth.saturating_sub(1);
        }
    }
}

/// Splits a simple-query string into its statements on top-level `;`.
///
/// Semicolons inside strings, quoted identifiers, dollar quotes, comments, parentheses and
/// `BEGIN ATOMIC ... END` bodies do not split. Pieces are trimmed of the whitespace the lexer skips (ASCII
/// only, as in PostgreSQL); a piece made only of comments and whitespace is dropped.
pub fn split_statements(sql: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let mut start = 0;
    let mut significant = false;
    let mut parens = 0usize;
    let mut atomic = AtomicBody::default();
    let mut push = |from: usize, to: usize, significant: bool| {
        if significant && let Some(piece) = sql.get(from..to) {
            // Only the whitespace the lexer skips: `str::trim` also removes Unicode spaces such as U+00A0,
            // which the lexer (like PostgreSQL) reads as part of a name, and so turned a statement made of
            // one into an empty piece (found by the router fuzz target).
            out.push(piece.trim_matches(is_space));
        }
    };
    for tok in Lexer::new(sql) {
        match tok.kind {
            TokKind::Comment => {}
            TokKind::Punct if tok.text(sql) == ";" && parens == 0 && atomic.depth == 0 => {
                push(start, tok.start, significant);
                start = tok.end;
                significant = false;
                atomic = AtomicBody::default();
            }
            kind => {
                significant = true;
                match (kind, tok.text(sql)) {
                    (TokKind::Punct, "(") => parens += 1,
                    (TokKind::Punct, ")") => parens = parens.saturating_sub(1),
                    (TokKind::Word, word) => atomic.word(word, parens),
                    _ => {}
                }
            }
        }
    }
    push(start, sql.len(), significant);
    out
}

/// The routing hint in a `/* pgfleet:primary */` or `/* pgfleet:replica */` comment placed before the
/// first token of `sql`. Whitespace inside the comment and letter case do not matter; the first hint
/// among several leading comments wins.
pub fn leading_hint(sql: &str) -> Option<Hint> {
    for tok in Lexer::new(sql) {
        if tok.kind != TokKind::Comment {
            return None;
        }
        let text = tok.text(sql);
        let Some(body) = text.strip_prefix("/*").and_then(|t| t.strip_suffix("*/")) else {
            continue;
        };
        let squeezed: String = body
            .chars()
            .filter(|c| !c.is_whitespace())
            .collect::<String>()
            .to_ascii_lowercase();
        match squeezed.as_str() {
            "pgfleet:primary" => return Some(Hint::Primary),
            "pgfleet:replica" => return Some(Hint::Replica),
            _ => {}
        }
    }
    None
}

/// The first `n` words of `stmt`, uppercased, skipping comments. Stops early at the first token that
/// is not an unquoted word (a string, a quoted identifier, punctuation), so the result is always a
/// run of leading keywords such as `["CREATE", "TEMP", "TABLE"]`.
pub fn first_keywords(stmt: &str, n: usize) -> Vec<String> {
    leading_words(stmt).take(n).map(str::to_ascii_uppercase).collect()
}

/// The words [`first_keywords`] reads, as written and without allocating: for checks made on every
/// statement of a request.
pub fn leading_words(stmt: &str) -> impl Iterator<Item = &str> {
    Lexer::new(stmt)
        .filter(|t| t.kind != TokKind::Comment)
        .take_while(|t| t.kind == TokKind::Word)
        .map(move |t| t.text(stmt))
}

/// Whether `sql` certainly holds at most one statement: it has no `;` but trailing ones. A `;` inside a
/// constant or a comment counts too, so false means "maybe several" ([`split_statements`] tells), and
/// the common text of one statement is known without lexing it.
pub fn surely_one_statement(sql: &str) -> bool {
    !sql.trim_end_matches(|c: char| c == ';' || is_space(c))
        .contains(';')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn character_classes_match_their_definitions() {
        for c in 0..=255u8 {
            let start = c.is_ascii_alphabetic() || c == b'_' || c >= 0x80;
            assert_eq!(is_ident_start(c), start, "{c}");
            assert_eq!(
                has_class(c, IDENT_CHAR),
                start || c.is_ascii_digit() || c == b'$',
                "{c}"
            );
            assert_eq!(is_op_char(c), b"+-*/<>=~!@#%^&|`?:".contains(&c), "{c}");
            assert_eq!(
                has_class(c, NUMBER_CHAR),
                c.is_ascii_alphanumeric() || c == b'_' || c == b'.',
                "{c}"
            );
            assert_eq!(
                has_class(c, WHITESPACE),
                matches!(c, b' ' | b'\t' | b'\n' | b'\r' | 0x0b | 0x0c),
                "{c}"
            );
        }
    }

    fn kinds(sql: &str) -> Vec<(TokKind, &str)> {
        Lexer::new(sql).map(|t| (t.kind, t.text(sql))).collect()
    }

    #[test]
    fn splits_on_top_level_semicolons() {
        assert_eq!(
            split_statements("SELECT 1; SELECT 2;"),
            vec!["SELECT 1", "SELECT 2"]
        );
        assert_eq!(split_statements("  SELECT 1  "), vec!["SELECT 1"]);
        assert_eq!(split_statements(";;; ;"), Vec::<&str>::new());
        assert_eq!(split_statements(""), Vec::<&str>::new());
    }

    #[test]
    fn strings_do_not_split() {
        assert_eq!(
            split_statements("SELECT 'a;b'; SELECT 2"),
            vec!["SELECT 'a;b'", "SELECT 2"]
        );
        assert_eq!(
            split_statements("SELECT 'it''s; fine'"),
            vec!["SELECT 'it''s; fine'"]
        );
        assert_eq!(
            split_statements(r"SELECT E'it\'s; fine'; SELECT 2"),
            vec![r"SELECT E'it\'s; fine'", "SELECT 2"]
        );
        assert_eq!(
            split_statements(r"SELECT e'\\'; SELECT 2"),
            vec![r"SELECT e'\\'", "SELECT 2"]
        );
        // Without the E prefix a backslash is an ordinary character (standard_conforming_strings).
        assert_eq!(
            split_statements(r"SELECT '\'; SELECT 2"),
            vec![r"SELECT '\'", "SELECT 2"]
        );
        assert_eq!(
            split_statements("SELECT 'DELETE FROM x; '"),
            vec!["SELECT 'DELETE FROM x; '"]
        );
    }

    #[test]
    fn quoted_identifiers_do_not_split() {
        assert_eq!(
            split_statements(r#"SELECT 1 AS "a;""b"; SELECT 2"#),
            vec![r#"SELECT 1 AS "a;""b""#, "SELECT 2"]
        );
    }

    #[test]
    fn dollar_quotes_do_not_split() {
        let sql =
            "CREATE FUNCTION f() RETURNS void AS $$ BEGIN DELETE FROM t; END $$ LANGUAGE plpgsql; SELECT 1";
        assert_eq!(split_statements(sql).len(), 2);
        let tagged = "DO $body$ BEGIN PERFORM 1; $$ still inside $$; END $body$; SELECT 2";
        assert_eq!(
            split_statements(tagged),
            vec![
                "DO $body$ BEGIN PERFORM 1; $$ still inside $$; END $body$",
                "SELECT 2"
            ]
        );
        // `$1` is a parameter and `a$b` an identifier, neither opens a dollar quote.
        assert_eq!(
            split_statements("SELECT $1; SELECT a$b$ FROM t; SELECT 3").len(),
            3
        );
    }

    #[test]
    fn comments_do_not_split_and_comment_only_pieces_vanish() {
        assert_eq!(
            split_statements("SELECT 1 -- a; b\n; SELECT 2"),
            vec!["SELECT 1 -- a; b", "SELECT 2"]
        );
        assert_eq!(
            split_statements("SELECT /* a; /* nested; */ b; */ 1; SELECT 2").len(),
            2
        );
        assert_eq!(split_statements("SELECT 1; -- just a comment"), vec!["SELECT 1"]);
        assert_eq!(split_statements("/* only */ ; -- comments\n"), Vec::<&str>::new());
        assert_eq!(
            split_statements("SELECT 1; /* x */ SELECT 2"),
            vec!["SELECT 1", "/* x */ SELECT 2"]
        );
    }

    #[test]
    fn unterminated_runs_to_the_end() {
        assert_eq!(
            split_statements("SELECT 'abc; SELECT 2"),
            vec!["SELECT 'abc; SELECT 2"]
        );
        assert_eq!(split_statements("SELECT 1; /* open"), vec!["SELECT 1", "/* open"]);
        assert_eq!(
            split_statements("SELECT $$ abc; SELECT 2"),
            vec!["SELECT $$ abc; SELECT 2"]
        );
    }

    #[test]
    fn parentheses_and_atomic_bodies_do_not_split() {
        let body = "CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT CASE WHEN true \
                    THEN 1 END; END; SELECT 2";
        let pieces = split_statements(body);
        assert_eq!(pieces.len(), 2, "{pieces:?}");
        assert_eq!(pieces[1], "SELECT 2");
        let proc = "create or replace procedure p() begin atomic insert into t values (1); end; select 3";
        assert_eq!(split_statements(proc).len(), 2);
        // A plain transaction BEGIN is not a function body.
        assert_eq!(
            split_statements("BEGIN; SELECT 1; END;"),
            vec!["BEGIN", "SELECT 1", "END"]
        );
    }

    #[test]
    fn lexes_operators_like_postgres() {
        assert_eq!(
            kinds("x=-1"),
            vec![
                (TokKind::Word, "x"),
                (TokKind::Op, "="),
                (TokKind::Op, "-"),
                (TokKind::Number, "1")
            ]
        );
        assert_eq!(kinds("a::int")[1], (TokKind::Op, "::"));
        assert_eq!(kinds("a @- b")[1], (TokKind::Op, "@-"));
        assert_eq!(kinds("1--c").len(), 2);
        assert_eq!(
            kinds(r#"U&"d\0061t""#),
            vec![(TokKind::QuotedIdent, r#"U&"d\0061t""#)]
        );
    }

    #[test]
    fn finds_leading_hints() {
        assert_eq!(
            leading_hint("/* pgfleet:primary */ SELECT 1"),
            Some(Hint::Primary)
        );
        assert_eq!(leading_hint("  /*pgfleet:replica*/SELECT 1"), Some(Hint::Replica));
        assert_eq!(
            leading_hint("/*  PgFleet : Replica  */ SELECT 1"),
            Some(Hint::Replica)
        );
        assert_eq!(
            leading_hint("-- note\n/* other */ /* pgfleet:primary */ SELECT 1"),
            Some(Hint::Primary)
        );
        assert_eq!(leading_hint("SELECT /* pgfleet:primary */ 1"), None);
        assert_eq!(leading_hint("SELECT 1"), None);
        assert_eq!(leading_hint("/* pgfleet:somewhere */ SELECT 1"), None);
        assert_eq!(leading_hint("-- pgfleet:primary\nSELECT 1"), None);
        assert_eq!(leading_hint(""), None);
    }

    #[test]
    fn one_statement_is_known_only_without_an_inner_semicolon() {
        for (sql, one) in [
            ("SELECT 1", true),
            ("SELECT 1;", true),
            ("COMMIT ; ;\n\t", true),
            ("", true),
            ("SELECT 1; SELECT 2", false),
            ("SELECT ';'", false),
            ("SELECT 1 -- a; b", false),
            // A trailing `;` inside a comment is trimmed too: still one statement.
            ("SELECT 1 -- note;", true),
        ] {
            assert_eq!(surely_one_statement(sql), one, "{sql:?}");
            if one {
                assert!(split_statements(sql).len() <= 1, "{sql:?}");
            }
        }
    }

    #[test]
    fn reads_first_keywords() {
        assert_eq!(
            first_keywords("/* c */ create temp table x (a int)", 3),
            vec!["CREATE", "TEMP", "TABLE"]
        );
        assert_eq!(first_keywords("set local work_mem = 1", 2), vec!["SET", "LOCAL"]);
        assert_eq!(
            leading_words("/* a */ Prepare -- b\n Transaction 'x'").collect::<Vec<_>>(),
            vec!["Prepare", "Transaction"]
        );
        assert_eq!(first_keywords("-- c\nselect 1", 5), vec!["SELECT"]);
        assert_eq!(first_keywords("SET \"x\" TO 1", 3), vec!["SET"]);
        assert!(first_keywords("", 2).is_empty());
    }
}
