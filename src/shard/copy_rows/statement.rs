//! The COPY statement of a COPY into a sharded table: its table, its column list (which says where the
//! shard key sits in each row) and the options that decide how its data is read, in both of PostgreSQL's
//! spellings: `WITH (FORMAT csv, HEADER true, DELIMITER ';')` and the older `WITH CSV HEADER DELIMITER ';'`.
//! A small lexer of its own rather than sqlparser's COPY support, which knows neither `HEADER match` nor
//! `HEADER on` nor `NULL AS`, nor `E'\t'`-style strings.

use crate::protocol::messages::ProxyError;

use super::{CopyFormat, CopyOptions};

/// Where a COPY ... FROM reads its data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopySource {
    /// The client sends it (CopyData): the only source pgfleet can split.
    Stdin,
    /// A file or program on the server.
    ServerSide,
}

/// A parsed `COPY table [(columns)] FROM ...` statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyFromStatement {
    /// The table name's parts (`schema`, `table`), folded as PostgreSQL folds identifiers.
    pub table: Vec<String>,
    /// The column list, folded; `None` when the statement has none (all columns in table order).
    pub columns: Option<Vec<String>>,
    /// Where the data comes from.
    pub source: CopySource,
    /// FORMAT binary.
    pub binary: bool,
    /// How the data is read (for text or csv).
    pub options: CopyOptions,
    /// The ENCODING option, when given.
    pub encoding: Option<String>,
}

/// Why a COPY statement cannot be split by shard.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyStatementError {
    /// Not `COPY <table> ... FROM`.
    #[error("not a COPY ... FROM statement")]
    NotCopyFrom,
    /// The statement does not parse.
    #[error("syntax error in COPY statement at or near \"{0}\"")]
    Syntax(String),
    /// An option PostgreSQL would refuse as well, with its SQLSTATE and message.
    #[error("{1}")]
    BadOption(&'static str, String),
    /// Without a column list the key's position is the table's column order, which only the catalog
    /// knows.
    #[error("COPY into sharded table \"{table}\" needs a column list naming its shard key \"{column}\"")]
    NoColumnList {
        /// The sharded table.
        table: String,
        /// Its shard key.
        column: String,
    },
    /// The column list leaves the key to its default, which pgfleet cannot compute.
    #[error("COPY into sharded table \"{table}\" needs its shard key \"{column}\" in the column list")]
    KeyNotListed {
        /// The sharded table.
        table: String,
        /// Its shard key.
        column: String,
    },
    /// FROM a server-side file or program: each shard would read its own.
    #[error("COPY into sharded table \"{0}\" from a server-side file or program is not supported")]
    ServerSide(String),
    /// Binary rows are not split.
    #[error("COPY into sharded table \"{0}\" in binary format is not supported")]
    Binary(String),
    /// Key fields are read as UTF-8.
    #[error("COPY into sharded table \"{0}\" with ENCODING '{1}' is not supported")]
    Encoding(String, String),
}

impl CopyStatementError {
    /// PostgreSQL's SQLSTATE for the error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CopyStatementError::Syntax(_) => "42601",
            CopyStatementError::BadOption(code, _) => code,
            _ => "0A000",
        }
    }

    /// What would make the COPY work.
    pub fn hint(&self) -> Option<String> {
        match self {
            CopyStatementError::NoColumnList { table, column }
            | CopyStatementError::KeyNotListed { table, column } => Some(format!(
                "List the columns, the shard key among them: COPY {table} ({column}, ...) FROM STDIN."
            )),
            CopyStatementError::ServerSide(_) => {
                Some("Send the data from the client: COPY ... FROM STDIN (psql's \\copy).".into())
            }
            CopyStatementError::Binary(_) => Some("Use FORMAT text or FORMAT csv.".into()),
            CopyStatementError::Encoding(..) => {
                Some("Send the data in UTF8: leave out ENCODING or convert the file first.".into())
            }
            _ => None,
        }
    }

    /// The ErrorResponse for the client.
    pub fn to_proxy_error(&self) -> ProxyError {
        let e = ProxyError::error(self.sqlstate(), self.to_string());
        match self.hint() {
            Some(h) => e.with_hint(h),
            None => e,
        }
    }
}

impl CopyFromStatement {
    /// The index of the shard key `column` in each row of a COPY into sharded table `table` (its name as
    /// the config spells it, for messages), or why the COPY cannot be split.
    pub fn key_index(&self, table: &str, column: &str) -> Result<usize, CopyStatementError> {
        if self.source != CopySource::Stdin {
            return Err(CopyStatementError::ServerSide(table.to_owned()));
        }
        if self.binary {
            return Err(CopyStatementError::Binary(table.to_owned()));
        }
        if let Some(enc) = &self.encoding {
            let normal: String = enc
                .chars()
                .filter(char::is_ascii_alphanumeric)
                .collect::<String>()
                .to_ascii_lowercase();
            if normal != "utf8" && normal != "unicode" {
                return Err(CopyStatementError::Encoding(table.to_owned(), enc.clone()));
            }
        }
        let Some(columns) = &self.columns else {
            return Err(CopyStatementError::NoColumnList {
                table: table.to_owned(),
                column: column.to_owned(),
            });
        };
        columns
            .iter()
            .position(|c| c == column)
            .ok_or_else(|| CopyStatementError::KeyNotListed {
                table: table.to_owned(),
                column: column.to_owned(),
            })
    }
}

/// Parses `COPY [BINARY] table [(columns)] FROM {STDIN | 'file' | PROGRAM 'cmd'} [[WITH] options]
/// [WHERE ...]`. A WHERE clause is left to the shards: each filters its own rows.
pub fn parse_copy_from(sql: &str) -> Result<CopyFromStatement, CopyStatementError> {
    let tokens = lex(sql)?;
    let mut p = Parser { tokens, at: 0 };
    if !p.keyword("copy") {
        return Err(CopyStatementError::NotCopyFrom);
    }
    let mut binary = p.keyword("binary");
    if p.peek() == Some(&Token::Punct('(')) {
        // COPY (query) TO.
        return Err(CopyStatementError::NotCopyFrom);
    }
    let mut table = vec![p.ident()?];
    while p.punct('.') {
        table.push(p.ident()?);
    }
    let columns = if p.punct('(') {
        let list = p.ident_list()?;
        p.expect_punct(')')?;
        Some(list)
    } else {
        None
    };
    if !p.keyword("from") {
        return Err(CopyStatementError::NotCopyFrom);
    }
    let source = if p.keyword("stdin") {
        CopySource::Stdin
    } else if p.keyword("program") || matches!(p.peek(), Some(Token::Str(_))) {
        p.next();
        CopySource::ServerSide
    } else {
        return Err(p.syntax());
    };
    let _ = p.keyword("with");
    let mut opts = RawOptions::default();
    if p.punct('(') {
        loop {
            p.generic_option(&mut opts)?;
            if p.punct(')') {
                break;
            }
            p.expect_punct(',')?;
        }
    } else {
        while p.legacy_option(&mut opts)? {}
    }
    if p.keyword("where") {
        p.at = p.tokens.len();
    }
    let _ = p.punct(';');
    if p.peek().is_some() {
        return Err(p.syntax());
    }
    binary |= opts.format.as_deref() == Some("binary");
    let encoding = opts.encoding.take();
    Ok(CopyFromStatement {
        table,
        columns,
        source,
        binary,
        options: opts.resolve()?,
        encoding,
    })
}

/// Options as written, before defaults and checks.
#[derive(Default)]
struct RawOptions {
    format: Option<String>,
    delimiter: Option<String>,
    null: Option<String>,
    quote: Option<String>,
    escape: Option<String>,
    header: bool,
    force_not_null: Vec<String>,
    force_null: Vec<String>,
    encoding: Option<String>,
}

impl RawOptions {
    /// The options with PostgreSQL's defaults filled in and its checks (`ProcessCopyOptions`) applied.
    fn resolve(self) -> Result<CopyOptions, CopyStatementError> {
        let mut o = match self.format.as_deref() {
            None | Some("text") | Some("binary") => CopyOptions::text(),
            Some("csv") => CopyOptions::csv(),
            Some(other) => {
                return Err(CopyStatementError::BadOption(
                    "22023",
                    format!("COPY format \"{other}\" not recognized"),
                ));
            }
        };
        let csv = o.format == CopyFormat::Csv;
        let one_byte = |v: Option<String>, what: &str| -> Result<Option<u8>, CopyStatementError> {
            match v {
                None => Ok(None),
                Some(s) if s.len() == 1 => Ok(s.bytes().next()),
                Some(_) => Err(CopyStatementError::BadOption(
                    "0A000",
                    format!("COPY {what} must be a single one-byte character"),
                )),
            }
        };
        if let Some(d) = one_byte(self.delimiter, "delimiter")? {
            o.delimiter = d;
        }
        if matches!(o.delimiter, b'\r' | b'\n') {
            return Err(CopyStatementError::BadOption(
                "22023",
                "COPY delimiter cannot be newline or carriage return".into(),
            ));
        }
        if let Some(n) = self.null {
            o.null = n.into_bytes();
        }
        let quote = one_byte(self.quote, "quote")?;
        let escape = one_byte(self.escape, "escape")?;
        let csv_only = [
            (quote.is_some(), "quote"),
            (escape.is_some(), "escape"),
            (!self.force_not_null.is_empty(), "force not null"),
            (!self.force_null.is_empty(), "force null"),
        ];
        if let Some((_, what)) = csv_only.iter().find(|(set, _)| *set && !csv) {
            return Err(CopyStatementError::BadOption(
                "0A000",
                format!("COPY {what} available only in CSV mode"),
            ));
        }
        if let Some(q) = quote {
            o.quote = q;
        }
        // ESCAPE defaults to QUOTE.
        o.escape = escape.unwrap_or(o.quote);
        o.header = self.header;
        o.force_not_null = self.force_not_null;
        o.force_null = self.force_null;
        Ok(o)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Token {
    /// An identifier or keyword, folded to lower case unless it was quoted.
    Ident {
        name: String,
        quoted: bool,
    },
    /// A string constant's value.
    Str(String),
    /// A number, as written.
    Number(String),
    Punct(char),
}

fn lex(sql: &str) -> Result<Vec<Token>, CopyStatementError> {
    let b = sql.as_bytes();
    let mut tokens = Vec::new();
    let mut i = 0;
    let syntax = |at: usize| CopyStatementError::Syntax(sql[at..].chars().take(20).collect());
    while i < b.len() {
        let c = b[i];
        if c.is_ascii_whitespace() {
            i += 1;
        } else if b[i..].starts_with(b"--") {
            i = b[i..].iter().position(|&c| c == b'\n').map_or(b.len(), |n| i + n);
        } else if b[i..].starts_with(b"/*") {
            // Block comments nest in PostgreSQL.
            let mut depth = 0;
            loop {
                if b[i..].starts_with(b"/*") {
                    depth += 1;
                    i += 2;
                } else if b[i..].starts_with(b"*/") {
                    depth -= 1;
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else if i < b.len() {
                    i += 1;
                } else {
                    return Err(syntax(b.len()));
                }
            }
        } else if c == b'\'' {
            let (s, next) = quoted(sql, i, b'\'').ok_or_else(|| syntax(i))?;
            tokens.push(Token::Str(s));
            i = next;
        } else if (c == b'E' || c == b'e') && b.get(i + 1) == Some(&b'\'') {
            let (s, next) = escape_string(sql, i + 1).ok_or_else(|| syntax(i))?;
            tokens.push(Token::Str(s));
            i = next;
        } else if c == b'"' {
            let (name, next) = quoted(sql, i, b'"').ok_or_else(|| syntax(i))?;
            tokens.push(Token::Ident { name, quoted: true });
            i = next;
        } else if c.is_ascii_alphabetic() || c == b'_' || c >= 0x80 {
            let end = b[i..]
                .iter()
                .position(|&c| !(c.is_ascii_alphanumeric() || c == b'_' || c == b'$' || c >= 0x80))
                .map_or(b.len(), |n| i + n);
            tokens.push(Token::Ident {
                name: sql[i..end].to_ascii_lowercase(),
                quoted: false,
            });
            i = end;
        } else if c.is_ascii_digit() || (c == b'-' && b.get(i + 1).is_some_and(u8::is_ascii_digit)) {
            let end = b[i + 1..]
                .iter()
                .position(|&c| !(c.is_ascii_digit() || c == b'.'))
                .map_or(b.len(), |n| i + 1 + n);
            tokens.push(Token::Number(sql[i..end].to_owned()));
            i = end;
        } else {
            // Operators and the like only appear in a WHERE clause, which is skipped.
            let ch = sql[i..].chars().next().ok_or_else(|| syntax(i))?;
            tokens.push(Token::Punct(ch));
            i += ch.len_utf8();
        }
    }
    Ok(tokens)
}

/// A `'...'` or `"..."` token starting at `at`, the quote doubled inside; its value and the index after it.
fn quoted(sql: &str, at: usize, q: u8) -> Option<(String, usize)> {
    let b = sql.as_bytes();
    let mut out = String::new();
    let mut i = at + 1;
    let mut from = i;
    loop {
        let rel = b.get(i..)?.iter().position(|&c| c == q)?;
        i += rel;
        out.push_str(&sql[from..i]);
        if b.get(i + 1) == Some(&q) {
            out.push(char::from(q));
            i += 2;
            from = i;
        } else {
            return Some((out, i + 1));
        }
    }
}

/// An `E'...'` string (the quote at `at`): backslash escapes as PostgreSQL reads them.
fn escape_string(sql: &str, at: usize) -> Option<(String, usize)> {
    let b = sql.as_bytes();
    let mut out = Vec::new();
    let mut i = at + 1;
    loop {
        let c = *b.get(i)?;
        i += 1;
        match c {
            b'\'' if b.get(i) == Some(&b'\'') => {
                out.push(b'\'');
                i += 1;
            }
            b'\'' => break,
            b'\\' => {
                let e = *b.get(i)?;
                i += 1;
                out.push(match e {
                    b'b' => 0x08,
                    b'f' => 0x0c,
                    b'n' => b'\n',
                    b'r' => b'\r',
                    b't' => b'\t',
                    b'0'..=b'7' => {
                        let mut v = u32::from(e - b'0');
                        for _ in 0..2 {
                            match b.get(i) {
                                Some(&d @ b'0'..=b'7') => {
                                    v = v * 8 + u32::from(d - b'0');
                                    i += 1;
                                }
                                _ => break,
                            }
                        }
                        (v & 0xff) as u8
                    }
                    b'x' => {
                        let mut v = 0u32;
                        let mut n = 0;
                        while n < 2 {
                            match b.get(i).and_then(|&d| char::from(d).to_digit(16)) {
                                Some(d) => {
                                    v = v * 16 + d;
                                    i += 1;
                                    n += 1;
                                }
                                None => break,
                            }
                        }
                        if n == 0 { b'x' } else { v as u8 }
                    }
                    other => other,
                });
            }
            other => out.push(other),
        }
    }
    String::from_utf8(out).ok().map(|s| (s, i))
}

struct Parser {
    tokens: Vec<Token>,
    at: usize,
}

impl Parser {
    fn peek(&self) -> Option<&Token> {
        self.tokens.get(self.at)
    }

    fn next(&mut self) -> Option<Token> {
        let t = self.tokens.get(self.at).cloned();
        self.at += 1;
        t
    }

    fn syntax(&self) -> CopyStatementError {
        CopyStatementError::Syntax(match self.peek() {
            Some(Token::Ident { name, .. }) => name.clone(),
            Some(Token::Str(s)) => format!("'{s}'"),
            Some(Token::Number(n)) => n.clone(),
            Some(Token::Punct(c)) => c.to_string(),
            None => "end of input".into(),
        })
    }

    /// Consumes the unquoted keyword `kw` if it is next.
    fn keyword(&mut self, kw: &str) -> bool {
        let hit = matches!(self.peek(), Some(Token::Ident { name, quoted: false }) if name == kw);
        if hit {
            self.at += 1;
        }
        hit
    }

    fn punct(&mut self, c: char) -> bool {
        let hit = self.peek() == Some(&Token::Punct(c));
        if hit {
            self.at += 1;
        }
        hit
    }

    fn expect_punct(&mut self, c: char) -> Result<(), CopyStatementError> {
        if self.punct(c) { Ok(()) } else { Err(self.syntax()) }
    }

    fn ident(&mut self) -> Result<String, CopyStatementError> {
        match self.peek() {
            Some(Token::Ident { name, .. }) => {
                let name = name.clone();
                self.at += 1;
                Ok(name)
            }
            _ => Err(self.syntax()),
        }
    }

    fn ident_list(&mut self) -> Result<Vec<String>, CopyStatementError> {
        let mut list = vec![self.ident()?];
        while self.punct(',') {
            list.push(self.ident()?);
        }
        Ok(list)
    }

    fn string(&mut self) -> Result<String, CopyStatementError> {
        match self.peek() {
            Some(Token::Str(s)) => {
                let s = s.clone();
                self.at += 1;
                Ok(s)
            }
            _ => Err(self.syntax()),
        }
    }

    /// A boolean option's optional value (`true`, `on`, `1`, ...; absent means true). HEADER also takes
    /// `match`, which still means the first line is a header.
    fn boolean(&mut self, allow_match: bool) -> Result<bool, CopyStatementError> {
        let value = match self.peek() {
            Some(Token::Ident { name, .. }) => name.to_ascii_lowercase(),
            Some(Token::Str(s)) => s.to_ascii_lowercase(),
            Some(Token::Number(n)) => n.clone(),
            _ => return Ok(true),
        };
        let v = match value.as_str() {
            "true" | "on" | "1" => true,
            "false" | "off" | "0" => false,
            "match" if allow_match => true,
            _ => return Err(self.syntax()),
        };
        self.at += 1;
        Ok(v)
    }

    /// An option's value that is a word or a string (FORMAT csv, FORMAT 'csv').
    fn word_or_string(&mut self) -> Result<String, CopyStatementError> {
        match self.next() {
            Some(Token::Ident { name, .. }) => Ok(name),
            Some(Token::Str(s)) => Ok(s),
            _ => {
                self.at -= 1;
                Err(self.syntax())
            }
        }
    }

    /// A column list option value: `(a, b)` or `*`.
    fn column_list(&mut self) -> Result<Vec<String>, CopyStatementError> {
        if self.punct('*') {
            return Err(CopyStatementError::BadOption(
                "42601",
                "FORCE_NOT_NULL * and FORCE_NULL * need PostgreSQL 17; name the columns".into(),
            ));
        }
        let parens = self.punct('(');
        let list = self.ident_list()?;
        if parens {
            self.expect_punct(')')?;
        }
        Ok(list)
    }

    /// One `name [value]` of the parenthesised option list.
    fn generic_option(&mut self, o: &mut RawOptions) -> Result<(), CopyStatementError> {
        let name = self.ident()?;
        match name.as_str() {
            "format" => o.format = Some(self.word_or_string()?.to_ascii_lowercase()),
            "delimiter" => o.delimiter = Some(self.string()?),
            "null" => o.null = Some(self.string()?),
            "quote" => o.quote = Some(self.string()?),
            "escape" => o.escape = Some(self.string()?),
            "header" => o.header = self.boolean(true)?,
            "force_not_null" => o.force_not_null = self.column_list()?,
            "force_null" => o.force_null = self.column_list()?,
            "freeze" => {
                self.boolean(false)?;
            }
            "encoding" => o.encoding = Some(self.string()?),
            // FORCE_QUOTE is for COPY TO; PostgreSQL refuses it here and so will the shards.
            "force_quote" => {
                if !self.punct('*') {
                    self.column_list()?;
                }
            }
            other => {
                return Err(CopyStatementError::BadOption(
                    "42601",
                    format!("option \"{other}\" not recognized"),
                ));
            }
        }
        Ok(())
    }

    /// One item of the pre-9.0 option syntax, or `false` when the next token is none.
    fn legacy_option(&mut self, o: &mut RawOptions) -> Result<bool, CopyStatementError> {
        if self.keyword("binary") {
            o.format = Some("binary".into());
        } else if self.keyword("csv") {
            o.format = Some("csv".into());
        } else if self.keyword("header") {
            o.header = true;
        } else if self.keyword("freeze") {
        } else if self.keyword("delimiter") {
            let _ = self.keyword("as");
            o.delimiter = Some(self.string()?);
        } else if self.keyword("null") {
            let _ = self.keyword("as");
            o.null = Some(self.string()?);
        } else if self.keyword("quote") {
            let _ = self.keyword("as");
            o.quote = Some(self.string()?);
        } else if self.keyword("escape") {
            let _ = self.keyword("as");
            o.escape = Some(self.string()?);
        } else if self.keyword("encoding") {
            o.encoding = Some(self.string()?);
        } else if self.keyword("force") {
            if self.keyword("not") {
                if !self.keyword("null") {
                    return Err(self.syntax());
                }
                o.force_not_null = self.ident_list()?;
            } else if self.keyword("null") {
                o.force_null = self.ident_list()?;
            } else if self.keyword("quote") {
                if !self.punct('*') {
                    self.ident_list()?;
                }
            } else {
                return Err(self.syntax());
            }
        } else {
            return Ok(false);
        }
        Ok(true)
    }
}
