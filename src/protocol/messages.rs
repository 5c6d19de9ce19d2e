//! The messages pgfleet reads or writes itself: readers for the few fields routing needs (query text,
//! statement names, SQLSTATE, command tags) and builders for what the proxy says on its own behalf.

use bytes::{BufMut, Bytes, BytesMut};

use super::frame::build;

/// Reads a NUL-terminated string at `at`; returns it and the offset after the NUL.
pub fn cstr(body: &[u8], at: usize) -> Option<(&str, usize)> {
    let rest = body.get(at..)?;
    // Extended-protocol names are mostly empty (the unnamed statement and portal): nothing to search or check.
    if rest.first() == Some(&0) {
        return Some(("", at + 1));
    }
    let nul = nul_at(rest)?;
    let s = std::str::from_utf8(&rest[..nul]).ok()?;
    Some((s, at + nul + 1))
}

/// The first NUL in `bytes`, found eight bytes at a time: a byte loop cost three instructions a byte of
/// every query text, and the standard library's search costs tens of instructions to set up for the short
/// names (often empty) of extended-protocol frames.
fn nul_at(bytes: &[u8]) -> Option<usize> {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    let mut at = 0;
    while let Some(chunk) = bytes.get(at..at + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let word = u64::from_le_bytes(word);
        // High bit set in the byte of each zero byte; a borrow may also mark bytes after the first zero,
        // never before it, so the lowest mark is the first NUL.
        let zeros = word.wrapping_sub(ONES) & !word & HIGHS;
        if zeros != 0 {
            return Some(at + (zeros.trailing_zeros() / 8) as usize);
        }
        at += 8;
    }
    bytes[at..].iter().position(|b| *b == 0).map(|p| at + p)
}

/// What follows the statement name in a Parse ('P') body: the SQL text, its NUL and the parameter types,
/// unchecked as UTF-8. For a first look at every Parse, which needs the text's start, not where it ends.
pub fn parse_text_onward(body: &[u8]) -> Option<&[u8]> {
    body.get(nul_at(body)? + 1..)
}

/// The SQL text of a Query ('Q') body.
pub fn query_text(body: &[u8]) -> Option<&str> {
    cstr(body, 0).map(|(s, _)| s)
}

/// The SQL text of a Query ('Q') body as bytes, for reading in the client's encoding
/// ([`super::encoding::ClientEncoding::read`]).
pub fn query_bytes(body: &[u8]) -> Option<&[u8]> {
    body.get(..nul_at(body)?)
}

/// (statement name, SQL text as bytes) of a Parse ('P') body; see [`query_bytes`].
pub fn parse_fields_bytes(body: &[u8]) -> Option<(&str, &[u8])> {
    let (name, next) = cstr(body, 0)?;
    let rest = body.get(next..)?;
    Some((name, rest.get(..nul_at(rest)?)?))
}

/// (statement name, SQL text) of a Parse ('P') body.
pub fn parse_fields(body: &[u8]) -> Option<(&str, &str)> {
    let (name, next) = cstr(body, 0)?;
    let (text, _) = cstr(body, next)?;
    Some((name, text))
}

/// (portal name, statement name) of a Bind ('B') body.
pub fn bind_names(body: &[u8]) -> Option<(&str, &str)> {
    let (portal, next) = cstr(body, 0)?;
    let (stmt, _) = cstr(body, next)?;
    Some((portal, stmt))
}

/// A Bind body taken apart: per parameter its format code and raw value (length included), and the
/// result format codes as sent.
pub struct BindParts<'a> {
    /// Each parameter's format code (0 text, 1 binary), one per value.
    pub formats: Vec<i16>,
    /// Each parameter's value with its length word.
    pub values: Vec<&'a [u8]>,
    /// The result format codes as sent: their count, then the codes.
    pub results: &'a [u8],
}

impl<'a> BindParts<'a> {
    /// Reads a Bind body; None when it is malformed.
    pub fn read(body: &'a [u8]) -> Option<BindParts<'a>> {
        let mut at = 0;
        for _ in 0..2 {
            at += nul_at(body.get(at..)?)? + 1;
        }
        let word =
            |at: usize| -> Option<i16> { Some(i16::from_be_bytes(body.get(at..at + 2)?.try_into().ok()?)) };
        let nformats = usize::try_from(word(at)?).ok()?;
        let codes: Vec<i16> = (0..nformats)
            .map(|i| word(at + 2 + 2 * i))
            .collect::<Option<_>>()?;
        at += 2 + 2 * nformats;
        let count = usize::try_from(word(at)?).ok()?;
        at += 2;
        let mut values = Vec::with_capacity(count);
        for _ in 0..count {
            let len = i32::from_be_bytes(body.get(at..at + 4)?.try_into().ok()?);
            let end = at + 4 + usize::try_from(len.max(0)).ok()?;
            values.push(body.get(at..end)?);
            at = end;
        }
        let formats = (0..count)
            .map(|i| match codes.as_slice() {
                [] => 0,
                [one] => *one,
                many => many.get(i).copied().unwrap_or(0),
            })
            .collect();
        Some(BindParts {
            formats,
            values,
            results: body.get(at..)?,
        })
    }

    /// A Bind of the unnamed portal and statement with the `picked` parameters (1-based), in order.
    pub fn picked(&self, picked: &[usize]) -> Option<Vec<u8>> {
        let mut b = vec![0u8, 0u8];
        b.extend_from_slice(&(picked.len() as i16).to_be_bytes());
        for i in picked {
            b.extend_from_slice(&self.formats.get(i - 1)?.to_be_bytes());
        }
        b.extend_from_slice(&(picked.len() as i16).to_be_bytes());
        for i in picked {
            b.extend_from_slice(self.values.get(i - 1)?);
        }
        b.extend_from_slice(self.results);
        Some(b)
    }

    /// The result format codes asked for (empty: every column in text).
    pub fn result_formats(&self) -> Option<Vec<i16>> {
        let word = |at: usize| -> Option<i16> {
            Some(i16::from_be_bytes(self.results.get(at..at + 2)?.try_into().ok()?))
        };
        let n = usize::try_from(word(0)?).ok()?;
        (0..n).map(|i| word(2 + 2 * i)).collect()
    }
}

/// (b'S' or b'P', name) of a Describe ('D') or Close ('C') body.
pub fn target_name(body: &[u8]) -> Option<(u8, &str)> {
    let kind = *body.first()?;
    let (name, _) = cstr(body, 1)?;
    Some((kind, name))
}

/// One field of an ErrorResponse or NoticeResponse body, e.g. b'C' for the SQLSTATE.
pub fn error_field(body: &[u8], field: u8) -> Option<&str> {
    let mut at = 0;
    while at < body.len() && body[at] != 0 {
        let code = body[at];
        let (value, next) = cstr(body, at + 1)?;
        if code == field {
            return Some(value);
        }
        at = next;
    }
    None
}

/// The tag of a CommandComplete ('C') body, e.g. "INSERT 0 1".
pub fn command_tag(body: &[u8]) -> Option<&str> {
    cstr(body, 0).map(|(s, _)| s)
}

/// Severity of an error the proxy raises itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends.
    Fatal,
}

/// An ErrorResponse raised by pgfleet (not a node), with PostgreSQL's field layout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyError {
    /// ERROR or FATAL.
    pub severity: Severity,
    /// Five-character SQLSTATE.
    pub code: String,
    /// Primary message.
    pub message: String,
    /// Optional DETAIL.
    pub detail: Option<String>,
    /// Optional HINT.
    pub hint: Option<String>,
}

impl ProxyError {
    /// An ERROR with that SQLSTATE and message.
    pub fn error(code: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Error,
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// A FATAL with that SQLSTATE and message.
    pub fn fatal(code: &str, message: impl Into<String>) -> Self {
        Self {
            severity: Severity::Fatal,
            code: code.to_owned(),
            message: message.into(),
            detail: None,
            hint: None,
        }
    }

    /// Adds a HINT.
    pub fn with_hint(mut self, hint: impl Into<String>) -> Self {
        self.hint = Some(hint.into());
        self
    }

    /// Adds a DETAIL.
    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// The encoded ErrorResponse frame.
    pub fn encode(&self) -> Bytes {
        let sev = match self.severity {
            Severity::Error => "ERROR",
            Severity::Fatal => "FATAL",
        };
        let mut body = BytesMut::new();
        let mut field = |code: u8, value: &str| {
            body.put_u8(code);
            // A NUL would end the C string early and the client would read the rest as more fields.
            body.extend(value.bytes().filter(|b| *b != 0));
            body.put_u8(0);
        };
        field(b'S', sev);
        field(b'V', sev);
        field(b'C', &self.code);
        field(b'M', &self.message);
        if let Some(d) = &self.detail {
            field(b'D', d);
        }
        if let Some(h) = &self.hint {
            field(b'H', h);
        }
        body.put_u8(0);
        build(b'E', &body)
    }
}

impl std::fmt::Display for ProxyError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} ({})", self.message, self.code)
    }
}

/// ReadyForQuery with a transaction status byte (I, T or E).
pub fn ready_for_query(status: u8) -> Bytes {
    build(b'Z', &[status])
}

/// A simple Query.
pub fn query(sql: &str) -> Bytes {
    let mut body = Vec::with_capacity(sql.len() + 1);
    body.extend_from_slice(sql.as_bytes());
    body.push(0);
    build(b'Q', &body)
}

/// Sync.
pub fn sync() -> Bytes {
    build(b'S', &[])
}

/// Close of a prepared statement.
pub fn close_statement(name: &str) -> Bytes {
    let mut body = Vec::with_capacity(name.len() + 2);
    body.push(b'S');
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    build(b'C', &body)
}

/// ParameterStatus.
pub fn parameter_status(name: &str, value: &str) -> Bytes {
    let mut body = Vec::with_capacity(name.len() + value.len() + 2);
    body.extend_from_slice(name.as_bytes());
    body.push(0);
    body.extend_from_slice(value.as_bytes());
    body.push(0);
    build(b'S', &body)
}

/// BackendKeyData.
pub fn backend_key_data(pid: i32, secret: i32) -> Bytes {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&pid.to_be_bytes());
    body.extend_from_slice(&secret.to_be_bytes());
    build(b'K', &body)
}

/// NegotiateProtocolVersion: we speak 3.0 and know no protocol options.
pub fn negotiate_protocol_version(unrecognized: &[&str]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i32(196608);
    body.put_i32(unrecognized.len() as i32);
    for o in unrecognized {
        body.put_slice(o.as_bytes());
        body.put_u8(0);
    }
    build(b'v', &body)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nul_at_finds_the_first_nul_as_a_byte_loop_does() {
        // Every position of a first NUL in texts up to 20 bytes, with bytes around it that a word-at-a-time
        // search could mistake for zero (0x01, 0x80, 0x81, 0xff), and a second NUL after it.
        for len in 0..20 {
            for first in 0..=len {
                for filler in [b'a', 0x01, 0x80, 0x81, 0xff] {
                    let mut bytes = vec![filler; len];
                    if first < len {
                        bytes[first] = 0;
                    }
                    if first + 1 < len {
                        bytes[first + 1] = 0;
                    }
                    let expected = bytes.iter().position(|b| *b == 0);
                    assert_eq!(nul_at(&bytes), expected, "{bytes:?}");
                }
            }
        }
        assert_eq!(cstr(b"S_1\0SELECT 1\0", 0), Some(("S_1", 4)));
        assert_eq!(cstr(b"S_1\0SELECT 1\0", 4), Some(("SELECT 1", 13)));
        assert_eq!(cstr(b"no nul", 0), None);
    }

    #[test]
    fn error_response_fields() {
        let e = ProxyError::error("08006", "pgfleet: cannot reach primary")
            .with_hint("start it")
            .encode();
        assert_eq!(e[0], b'E');
        let body = &e[5..];
        assert_eq!(error_field(body, b'C'), Some("08006"));
        assert_eq!(error_field(body, b'M'), Some("pgfleet: cannot reach primary"));
        assert_eq!(error_field(body, b'H'), Some("start it"));
        assert_eq!(error_field(body, b'D'), None);
    }

    #[test]
    fn error_response_is_one_whole_frame_without_inner_nuls() {
        let e = ProxyError::fatal("28P01", "password authentication failed for user \"a\0pp\"").encode();
        let len = i32::from_be_bytes([e[1], e[2], e[3], e[4]]);
        assert_eq!(usize::try_from(len).expect("len") + 1, e.len());
        let body = &e[5..];
        assert_eq!(error_field(body, b'S'), Some("FATAL"));
        assert_eq!(error_field(body, b'V'), Some("FATAL"));
        assert_eq!(error_field(body, b'C'), Some("28P01"));
        assert_eq!(
            error_field(body, b'M'),
            Some("password authentication failed for user \"app\"")
        );
        // Fields, then the terminating NUL: nothing after it.
        assert_eq!(body.last(), Some(&0));
    }

    #[test]
    fn readers() {
        assert_eq!(parse_fields(b"s1\0select 1\0\0\0"), Some(("s1", "select 1")));
        assert_eq!(bind_names(b"p\0s1\0\0\0"), Some(("p", "s1")));
        assert_eq!(target_name(b"Ss1\0"), Some((b'S', "s1")));
        assert_eq!(query_text(b"select 1\0"), Some("select 1"));
        assert_eq!(parse_fields(b"s1"), None);
    }
}
