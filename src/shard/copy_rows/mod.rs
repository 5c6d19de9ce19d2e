//! COPY into a sharded table: the sans-IO splitter that reads the client's `COPY ... FROM STDIN` data (text
//! or csv format) as it arrives in CopyData messages of any size, finds each row's shard key field and
//! hands every complete row, byte for byte unchanged, to the shard its key belongs to. Each shard runs the
//! client's COPY statement with the same options on its own rows, so a row is parsed on its shard exactly
//! as it would have been on one server; this module only has to find where rows end and what the key
//! field holds, the way PostgreSQL's COPY reader does (`copyfromparse.c`). The statement side (the column
//! list and the options of the COPY statement) lives in [`statement`].

pub mod statement;
#[cfg(test)]
mod tests;

use crate::cluster::ShardId;
use crate::config::ShardKeyType;
use crate::protocol::messages::ProxyError;

use super::value::{KeyValue, KeyValueError};

pub use statement::{CopyFromStatement, CopySource, CopyStatementError, parse_copy_from};

/// COPY's data formats that pgfleet can split (binary is refused by [`statement`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format: backslash escapes, `\N` for NULL by default.
    Text,
    /// CSV: quotes, doubled quotes, unquoted empty for NULL by default.
    Csv,
}

/// The options of a COPY statement that decide how its data is read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOptions {
    /// text or csv.
    pub format: CopyFormat,
    /// DELIMITER: one byte.
    pub delimiter: u8,
    /// NULL: the spelling of NULL.
    pub null: Vec<u8>,
    /// QUOTE (csv only).
    pub quote: u8,
    /// ESCAPE (csv only).
    pub escape: u8,
    /// HEADER: the first line names the columns and is not data.
    pub header: bool,
    /// FORCE_NOT_NULL columns (csv only): their unquoted NULL spelling is a value, not NULL.
    pub force_not_null: Vec<String>,
    /// FORCE_NULL columns (csv only): their quoted NULL spelling is NULL too.
    pub force_null: Vec<String>,
}

impl CopyOptions {
    /// PostgreSQL's defaults for the text format.
    pub fn text() -> CopyOptions {
        CopyOptions {
            format: CopyFormat::Text,
            delimiter: b'\t',
            null: b"\\N".to_vec(),
            quote: b'"',
            escape: b'"',
            header: false,
            force_not_null: Vec::new(),
            force_null: Vec::new(),
        }
    }

    /// PostgreSQL's defaults for the csv format.
    pub fn csv() -> CopyOptions {
        CopyOptions {
            format: CopyFormat::Csv,
            delimiter: b',',
            null: Vec::new(),
            ..CopyOptions::text()
        }
    }
}

/// The shard key's place in each row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyField {
    /// The key's field index in the row (its position in the COPY statement's column list).
    pub index: usize,
    /// The key column's name, for error messages and FORCE_NULL / FORCE_NOT_NULL.
    pub column: String,
    /// How its values parse and hash.
    pub key_type: ShardKeyType,
}

/// Why the client's COPY data cannot be split. The messages are PostgreSQL's for the same data, so the
/// client sees what one server would have said.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CopyRowError {
    /// The key field is not a value of the key column's type.
    #[error(transparent)]
    InvalidKey(#[from] KeyValueError),
    /// An integer key outside bigint's range.
    #[error("value \"{0}\" is out of range for type bigint")]
    OutOfRange(String),
    /// The key field's bytes are not UTF-8 (or hold a zero byte, which no PostgreSQL string can).
    #[error("invalid byte sequence for encoding \"UTF8\": {0}")]
    Encoding(String),
    /// A row ends before its key field.
    #[error("missing data for column \"{0}\"")]
    MissingKey(String),
    /// A quoted csv field still open at the end of the data.
    #[error("unterminated CSV quoted field")]
    UnterminatedQuote,
    /// A carriage return where the first line's line ends say it cannot be one.
    #[error("{}", if *.0 { "unquoted carriage return found in data" } else { "literal carriage return found in data" })]
    StrayCarriageReturn(bool),
    /// A newline where the first line's line ends say it cannot be one.
    #[error("{}", if *.0 { "unquoted newline found in data" } else { "literal newline found in data" })]
    StrayNewline(bool),
    /// `\.` followed by something other than the end of the line (text format).
    #[error("end-of-copy marker corrupt")]
    CorruptEndMarker,
    /// `\.` ended with another line end than the first line's.
    #[error("end-of-copy marker does not match previous newline style")]
    EndMarkerStyle,
    /// The placement function named a shard that does not exist.
    #[error("placement returned {0} of {1} shards")]
    NoSuchShard(ShardId, u32),
}

impl CopyRowError {
    /// PostgreSQL's SQLSTATE for the error.
    pub fn sqlstate(&self) -> &'static str {
        match self {
            CopyRowError::InvalidKey(KeyValueError::BinaryLength(..)) => "22P03",
            CopyRowError::InvalidKey(_) => "22P02",
            CopyRowError::OutOfRange(_) => "22003",
            CopyRowError::Encoding(_) => "22021",
            CopyRowError::NoSuchShard(..) => "XX000",
            _ => "22P04",
        }
    }
}

/// A [`CopyRowError`] with the data line it was found on (1-based, the header counting as line 1).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{error}")]
pub struct CopyDataError {
    /// What is wrong.
    pub error: CopyRowError,
    /// Where.
    pub line: u64,
}

impl CopyDataError {
    /// The ErrorResponse for the client, with PostgreSQL's COPY context (`COPY accounts, line 3`) as
    /// DETAIL.
    pub fn to_proxy_error(&self, table: &str) -> ProxyError {
        ProxyError::error(self.error.sqlstate(), self.error.to_string())
            .with_detail(format!("COPY {table}, line {}", self.line))
    }
}

/// Rows routed by one call of [`CopySplitter::push`] or [`CopySplitter::finish`].
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct RoutedRows {
    /// For shard `i`, at index `i`: the bytes to send in its CopyData (possibly empty).
    pub per_shard: Vec<Vec<u8>>,
    /// Data rows routed (the header line does not count).
    pub rows: u64,
}

impl RoutedRows {
    /// The bytes for `shard`.
    pub fn for_shard(&self, shard: ShardId) -> &[u8] {
        self.per_shard.get(shard.index()).map_or(&[], Vec::as_slice)
    }
}

/// How the first line ended; PostgreSQL holds every later line to the same line end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LineEnd {
    Nl,
    Cr,
    CrNl,
}

/// Where the scan of the current line stopped and the csv quote state there.
#[derive(Debug, Clone, Copy, Default)]
struct ScanState {
    pos: usize,
    in_quote: bool,
    last_was_escape: bool,
}

/// What the scan of the buffered bytes found.
enum Scan {
    /// A line of `len` bytes, of which the first `content` are data (the rest its line end).
    Line { len: usize, content: usize },
    /// The end-of-data marker: its line ends at `end`; the `row` bytes before the marker are one more row
    /// (text format allows `\.` after data on the last line).
    EndMarker { row: usize, end: usize },
    /// The line is not complete yet.
    NeedMore,
}

/// Splits one COPY's data by shard. Feed it the CopyData payloads in order with [`push`](Self::push), then
/// call [`finish`](Self::finish) at CopyDone. After an error the COPY is over: later calls route nothing.
pub struct CopySplitter<'p> {
    options: CopyOptions,
    key: KeyField,
    force_null: bool,
    force_not_null: bool,
    shards: u32,
    place: &'p (dyn Fn(&KeyValue) -> ShardId + Sync),
    pending: Vec<u8>,
    scan: ScanState,
    line_end: Option<LineEnd>,
    header_pending: bool,
    line: u64,
    done: bool,
}

impl<'p> CopySplitter<'p> {
    /// A splitter for data in `options`' format whose rows carry the shard key as described by `key`,
    /// placing keys on `shards` shards with `place` (normally [`super::hash::shard_for`]).
    pub fn new(
        options: CopyOptions,
        key: KeyField,
        shards: u32,
        place: &'p (dyn Fn(&KeyValue) -> ShardId + Sync),
    ) -> CopySplitter<'p> {
        let csv = options.format == CopyFormat::Csv;
        CopySplitter {
            force_null: csv && options.force_null.contains(&key.column),
            force_not_null: csv && options.force_not_null.contains(&key.column),
            header_pending: options.header,
            options,
            key,
            shards: shards.max(1),
            place,
            pending: Vec::new(),
            scan: ScanState::default(),
            line_end: None,
            line: 0,
            done: false,
        }
    }

    /// Routes the complete rows that `chunk` finishes; a row still open at its end waits for the next.
    pub fn push(&mut self, chunk: &[u8]) -> Result<RoutedRows, CopyDataError> {
        let mut out = self.empty_output();
        if !self.done {
            self.pending.extend_from_slice(chunk);
            self.drain(false, &mut out)?;
        }
        Ok(out)
    }

    /// The end of the data (CopyDone): routes a last line that has no line end, as PostgreSQL reads it
    /// as a row too, and fails on a csv quote left open.
    pub fn finish(&mut self) -> Result<RoutedRows, CopyDataError> {
        let mut out = self.empty_output();
        if !self.done {
            self.drain(true, &mut out)?;
            self.done = true;
        }
        Ok(out)
    }

    fn empty_output(&self) -> RoutedRows {
        RoutedRows {
            per_shard: vec![Vec::new(); self.shards as usize],
            rows: 0,
        }
    }

    fn fail(&self, error: CopyRowError) -> CopyDataError {
        CopyDataError {
            error,
            line: self.line + 1,
        }
    }

    fn drain(&mut self, eof: bool, out: &mut RoutedRows) -> Result<(), CopyDataError> {
        // Taken out of self so that the scan can update its state while reading the bytes.
        let mut pending = std::mem::take(&mut self.pending);
        let consumed = self.route_lines(&pending, eof, out).inspect_err(|_| {
            // The COPY fails as a whole: nothing after the error is routed.
            self.done = true;
        })?;
        if !self.done {
            pending.drain(..consumed);
            self.pending = pending;
        }
        Ok(())
    }

    /// Routes the complete lines at the start of `pending`; returns how many bytes they took.
    fn route_lines(
        &mut self,
        pending: &[u8],
        eof: bool,
        out: &mut RoutedRows,
    ) -> Result<usize, CopyDataError> {
        let mut start = 0;
        while start < pending.len() && !self.done {
            let buf = &pending[start..];
            match self.scan_line(buf, eof).map_err(|e| self.fail(e))? {
                Scan::NeedMore => break,
                Scan::Line { len, content } => {
                    self.route(&buf[..len], content, out)?;
                    start += len;
                }
                Scan::EndMarker { row, end } => {
                    if row > 0 {
                        // The marker stays on the row: the shard then ends its data there too.
                        self.route(&buf[..end.min(buf.len())], row, out)?;
                    }
                    self.done = true;
                }
            }
            self.scan = ScanState::default();
        }
        Ok(start)
    }

    /// Sends `line`, whose data is its first `content` bytes, to its shard (the header line to every
    /// shard: each shard's COPY has the same HEADER option and skips it).
    fn route(&mut self, line: &[u8], content: usize, out: &mut RoutedRows) -> Result<(), CopyDataError> {
        if self.header_pending {
            self.header_pending = false;
            for shard in &mut out.per_shard {
                shard.extend_from_slice(line);
            }
            self.line += 1;
            return Ok(());
        }
        let key = self.key_value(&line[..content]).map_err(|e| self.fail(e))?;
        let shard = (self.place)(&key);
        let target = out
            .per_shard
            .get_mut(shard.index())
            .ok_or_else(|| self.fail(CopyRowError::NoSuchShard(shard, self.shards)))?;
        target.extend_from_slice(line);
        out.rows += 1;
        self.line += 1;
        Ok(())
    }

    /// Finds the end of the line that starts `buf`, resuming where the last call stopped. Mirrors
    /// `CopyReadLineText`: in text format a backslash takes the next byte with it (so `\` before a line
    /// end continues the line) and `\.` ends the data; in csv, line ends inside quotes are data and `\.`
    /// ends the data only alone on its line.
    fn scan_line(&mut self, buf: &[u8], eof: bool) -> Result<Scan, CopyRowError> {
        let csv = self.options.format == CopyFormat::Csv;
        let quote = self.options.quote;
        // An escape equal to the quote needs no escape handling: the quote alone toggles.
        let escape = (self.options.escape != quote).then_some(self.options.escape);
        let mut i = self.scan.pos;
        while i < buf.len() {
            let c = buf[i];
            let before = self.scan;
            let need_more = move |scan: &mut ScanState| {
                *scan = ScanState { pos: i, ..before };
                Ok(Scan::NeedMore)
            };
            if csv {
                let s = &mut self.scan;
                if s.in_quote && Some(c) == escape {
                    s.last_was_escape = !s.last_was_escape;
                }
                if c == quote && !s.last_was_escape {
                    s.in_quote = !s.in_quote;
                }
                if Some(c) != escape {
                    s.last_was_escape = false;
                }
            }
            let unquoted = !csv || !self.scan.in_quote;
            if c == b'\r' && unquoted {
                let next = buf.get(i + 1).copied();
                if next.is_none() && !eof && self.line_end != Some(LineEnd::Cr) {
                    return need_more(&mut self.scan);
                }
                let followed_by_nl = next == Some(b'\n');
                let kind = *self.line_end.get_or_insert(if followed_by_nl {
                    LineEnd::CrNl
                } else {
                    LineEnd::Cr
                });
                return match kind {
                    LineEnd::Nl => Err(CopyRowError::StrayCarriageReturn(csv)),
                    LineEnd::Cr => Ok(Scan::Line {
                        len: i + 1,
                        content: i,
                    }),
                    LineEnd::CrNl if followed_by_nl => Ok(Scan::Line {
                        len: i + 2,
                        content: i,
                    }),
                    LineEnd::CrNl => Err(CopyRowError::StrayCarriageReturn(csv)),
                };
            }
            if c == b'\n' && unquoted {
                return match *self.line_end.get_or_insert(LineEnd::Nl) {
                    LineEnd::Nl => Ok(Scan::Line {
                        len: i + 1,
                        content: i,
                    }),
                    LineEnd::Cr | LineEnd::CrNl => Err(CopyRowError::StrayNewline(csv)),
                };
            }
            if c == b'\\' && (!csv || i == 0) {
                let Some(&next) = buf.get(i + 1) else {
                    if eof {
                        // A backslash as the very last byte is part of the last line.
                        i += 1;
                        continue;
                    }
                    return need_more(&mut self.scan);
                };
                if next == b'.' {
                    let after = &buf[i + 2..];
                    let wanted = if self.line_end == Some(LineEnd::CrNl) {
                        2
                    } else {
                        1
                    };
                    if after.len() < wanted && !eof {
                        return need_more(&mut self.scan);
                    }
                    match end_marker(after, self.line_end) {
                        MarkerEnd::End(n) => {
                            return Ok(Scan::EndMarker {
                                row: i,
                                end: i + 2 + n,
                            });
                        }
                        // In csv, a `\.` that does not end its line is data.
                        MarkerEnd::NotEnd | MarkerEnd::BareNewline if csv => {}
                        MarkerEnd::NotEnd => return Err(CopyRowError::CorruptEndMarker),
                        MarkerEnd::BareNewline | MarkerEnd::WrongStyle => {
                            return Err(CopyRowError::EndMarkerStyle);
                        }
                    }
                } else if !csv {
                    // Whatever follows a backslash is escaped, a delimiter or a line end included.
                    i += 2;
                    continue;
                }
            }
            i += 1;
        }
        if eof && !buf.is_empty() {
            if csv && self.scan.in_quote {
                return Err(CopyRowError::UnterminatedQuote);
            }
            return Ok(Scan::Line {
                len: buf.len(),
                content: buf.len(),
            });
        }
        self.scan.pos = i;
        Ok(Scan::NeedMore)
    }

    /// The shard key value of one row's data bytes.
    fn key_value(&self, row: &[u8]) -> Result<KeyValue, CopyRowError> {
        let field = match self.options.format {
            // Text format compares the raw field, before escapes, with the NULL spelling.
            CopyFormat::Text => text_field(row, self.options.delimiter, self.key.index)
                .map(|raw| (raw != self.options.null).then(|| decode_text(raw))),
            CopyFormat::Csv => csv_field(row, &self.options, self.key.index)?.map(|f| {
                // Unquoted NULL spelling, or (FORCE_NULL) the quoted one too.
                let null = if f.quoted {
                    self.force_null && f.value == self.options.null
                } else {
                    f.raw_is_null
                };
                (!null).then_some(f.value)
            }),
        };
        let Some(field) = field else {
            return Err(CopyRowError::MissingKey(self.key.column.clone()));
        };
        let field = match field {
            Some(bytes) => bytes,
            // FORCE_NOT_NULL reads an unquoted NULL spelling as that string.
            None if self.force_not_null => self.options.null.clone(),
            None => return Ok(KeyValue::Null),
        };
        key_from_bytes(field, self.key.key_type)
    }
}

/// What follows a `\.`.
enum MarkerEnd {
    /// A line end of this many bytes: the data ends.
    End(usize),
    /// Not a line end: corrupt in text format, data in csv.
    NotEnd,
    /// A newline after CRLF lines: refused in text format, data in csv.
    BareNewline,
    /// A line end of another style than the first line's: refused in both formats.
    WrongStyle,
}

/// Reads the bytes `after` a `\.` (missing ones read as NUL, as PostgreSQL does at the end of the data),
/// after `CopyReadLineText`.
fn end_marker(after: &[u8], line_end: Option<LineEnd>) -> MarkerEnd {
    let at = |k: usize| after.get(k).copied().unwrap_or(0);
    let mut k = 0;
    if line_end == Some(LineEnd::CrNl) {
        match at(0) {
            b'\r' => k = 1,
            b'\n' => return MarkerEnd::BareNewline,
            _ => return MarkerEnd::NotEnd,
        }
    }
    let c = at(k);
    if c != b'\r' && c != b'\n' {
        return MarkerEnd::NotEnd;
    }
    let expected = match line_end {
        Some(LineEnd::Nl) | Some(LineEnd::CrNl) => b'\n',
        Some(LineEnd::Cr) => b'\r',
        None => c,
    };
    if c != expected {
        return MarkerEnd::WrongStyle;
    }
    MarkerEnd::End(k + 1)
}

/// The value of a key field's decoded bytes, parsed as PostgreSQL's input function for the type would.
fn key_from_bytes(bytes: Vec<u8>, ty: ShardKeyType) -> Result<KeyValue, CopyRowError> {
    if let Some(at) = bytes.iter().position(|&b| b == 0) {
        return Err(CopyRowError::Encoding(format!("0x{:02x}", bytes[at])));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let bytes = e.as_bytes();
        let at = e.utf8_error().valid_up_to();
        let bad = e.utf8_error().error_len().unwrap_or(bytes.len() - at);
        let shown: Vec<String> = bytes[at..at + bad].iter().map(|b| format!("0x{b:02x}")).collect();
        CopyRowError::Encoding(shown.join(" "))
    })?;
    KeyValue::parse(&text, ty).map_err(|e| match e {
        KeyValueError::Integer(t) if looks_like_integer(&t) => CopyRowError::OutOfRange(t),
        e => CopyRowError::InvalidKey(e),
    })
}

/// An optionally signed run of digits: syntactically an integer, so a parse failure means overflow.
fn looks_like_integer(text: &str) -> bool {
    let t = text.trim();
    let digits = t.strip_prefix(['+', '-']).unwrap_or(t);
    !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit())
}

/// Field `index` of a text-format row, raw (escapes not decoded); `None` when the row has fewer fields.
fn text_field(row: &[u8], delimiter: u8, index: usize) -> Option<&[u8]> {
    let mut field = 0;
    let mut start = 0;
    let mut i = 0;
    while i < row.len() {
        match row[i] {
            b'\\' => i += 2,
            c if c == delimiter => {
                if field == index {
                    return Some(&row[start..i]);
                }
                field += 1;
                start = i + 1;
                i += 1;
            }
            _ => i += 1,
        }
    }
    (field == index).then(|| &row[start.min(row.len())..])
}

/// The bytes a text-format field stands for (`CopyReadAttributesText`): `\b \f \n \r \t \v`, one to three
/// octal digits, `\x` with one or two hex digits, and any other escaped byte as itself.
fn decode_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let c = raw[i];
        i += 1;
        if c != b'\\' {
            out.push(c);
            continue;
        }
        // A backslash that ends the line escapes nothing and is dropped.
        let Some(&e) = raw.get(i) else { break };
        i += 1;
        let byte = match e {
            b'0'..=b'7' => {
                let mut v = u32::from(e - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(&d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                (v & 0xff) as u8
            }
            b'x' => match raw.get(i).and_then(|&d| hex(d)) {
                Some(first) => {
                    i += 1;
                    let mut v = first;
                    if let Some(second) = raw.get(i).and_then(|&d| hex(d)) {
                        v = v * 16 + second;
                        i += 1;
                    }
                    v
                }
                None => b'x',
            },
            b'b' => 0x08,
            b'f' => 0x0c,
            b'n' => b'\n',
            b'r' => b'\r',
            b't' => b'\t',
            b'v' => 0x0b,
            other => other,
        };
        out.push(byte);
    }
    out
}

fn hex(d: u8) -> Option<u8> {
    char::from(d).to_digit(16).map(|v| v as u8)
}

/// One csv field: its decoded value, whether any part was quoted, and whether its raw text is the NULL
/// spelling.
struct CsvField {
    value: Vec<u8>,
    quoted: bool,
    raw_is_null: bool,
}

/// Field `index` of a csv row (`CopyReadAttributesCSV`); `None` when the row has fewer fields.
fn csv_field(row: &[u8], options: &CopyOptions, index: usize) -> Result<Option<CsvField>, CopyRowError> {
    let (delimiter, quote, escape) = (options.delimiter, options.quote, options.escape);
    let mut i = 0;
    let mut field = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut quoted = false;
        let mut ended_by_delimiter = false;
        'field: loop {
            // Unquoted part.
            loop {
                let Some(&c) = row.get(i) else { break 'field };
                i += 1;
                if c == delimiter {
                    ended_by_delimiter = true;
                    break 'field;
                }
                if c == quote {
                    quoted = true;
                    break;
                }
                value.push(c);
            }
            // Quoted part.
            loop {
                let Some(&c) = row.get(i) else {
                    return Err(CopyRowError::UnterminatedQuote);
                };
                i += 1;
                if c == escape
                    && let Some(&next) = row.get(i).filter(|&&n| n == escape || n == quote)
                {
                    value.push(next);
                    i += 1;
                    continue;
                }
                if c == quote {
                    break;
                }
                value.push(c);
            }
        }
        if field == index {
            let raw_end = if ended_by_delimiter { i - 1 } else { i };
            return Ok(Some(CsvField {
                raw_is_null: row[start..raw_end] == options.null[..],
                value,
                quoted,
            }));
        }
        if !ended_by_delimiter {
            return Ok(None);
        }
        field += 1;
    }
}
