//! The encoding a client's statement text arrives in (its `client_encoding`), and reading that text as the
//! server will. PostgreSQL converts each message's text from the client encoding when it arrives, so a
//! LATIN1 client's `UPDATE t SET name = 'café'` is an UPDATE to the server; pgfleet must read the same
//! characters to route it, not give up on bytes that are not UTF-8.
//!
//! Two families matter. In UTF8, SQL_ASCII and every encoding a server can use (LATIN1..10, WIN125x,
//! KOI8, EUC_*, ...) each byte below 0x80 is the ASCII character, so the statement's structure (quotes,
//! semicolons, keywords) is in the bytes; only names and literals need the encoding. The client-only
//! encodings (SJIS, BIG5, GBK, UHC, GB18030, SHIFT_JIS_2004) use bytes such as `\` as the second
//! byte of a character, so even where a string literal ends depends on decoding them.

use std::borrow::Cow;

/// How a session's statement text is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ClientEncoding {
    /// UTF8 (every pgfleet connection's own until the client sets another) or SQL_ASCII (no conversion).
    #[default]
    Utf8,
    /// LATIN1: each byte is the character of the same number.
    Latin1,
    /// Decoded by the encoding of the same bytes in `encoding_rs`.
    Decoded(&'static encoding_rs::Encoding),
    /// An encoding pgfleet has no decoder for (JOHAB, SHIFT_JIS_2004, EUC_TW, EUC_JIS_2004, MULE_INTERNAL, or
    /// a name it does not know): text outside ASCII is not read at all.
    Unread,
}

impl ClientEncoding {
    /// The encoding PostgreSQL means by `name`, matched as PostgreSQL matches it: case and every character
    /// other than letters and digits ignored (`latin1`, `LATIN-1`, `ISO_8859_1` are one encoding).
    pub fn from_name(name: &str) -> ClientEncoding {
        use encoding_rs as e;
        let clean: String = name
            .chars()
            .filter(char::is_ascii_alphanumeric)
            .map(|c| c.to_ascii_lowercase())
            .collect();
        let decoded = match clean.as_str() {
            "utf8" | "unicode" | "sqlascii" => return ClientEncoding::Utf8,
            "latin1" | "iso88591" => return ClientEncoding::Latin1,
            "latin2" | "iso88592" => e::ISO_8859_2,
            "latin3" | "iso88593" => e::ISO_8859_3,
            "latin4" | "iso88594" => e::ISO_8859_4,
            // WIN1254 differs from ISO 8859-9 only in 0x80-0x9F, control characters in the latter.
            "latin5" | "iso88599" => e::WINDOWS_1254,
            "latin6" | "iso885910" => e::ISO_8859_10,
            "latin7" | "iso885913" => e::ISO_8859_13,
            "latin8" | "iso885914" => e::ISO_8859_14,
            "latin9" | "iso885915" => e::ISO_8859_15,
            "latin10" | "iso885916" => e::ISO_8859_16,
            "iso88595" => e::ISO_8859_5,
            "iso88596" => e::ISO_8859_6,
            "iso88597" => e::ISO_8859_7,
            "iso88598" => e::ISO_8859_8,
            "win1250" | "windows1250" => e::WINDOWS_1250,
            "win1251" | "windows1251" | "win" => e::WINDOWS_1251,
            "win1252" | "windows1252" => e::WINDOWS_1252,
            "win1253" | "windows1253" => e::WINDOWS_1253,
            "win1254" | "windows1254" => e::WINDOWS_1254,
            "win1255" | "windows1255" => e::WINDOWS_1255,
            "win1256" | "windows1256" => e::WINDOWS_1256,
            "win1257" | "windows1257" => e::WINDOWS_1257,
            "win1258" | "windows1258" | "abc" | "tcvn" | "tcvn5712" | "vscii" => e::WINDOWS_1258,
            "win866" | "windows866" | "alt" => e::IBM866,
            "win874" | "windows874" => e::WINDOWS_874,
            "koi8" | "koi8r" => e::KOI8_R,
            "koi8u" => e::KOI8_U,
            "eucjp" => e::EUC_JP,
            // UHC is Windows 949, which is what encoding_rs calls EUC-KR; EUC_KR is its subset.
            "euckr" | "uhc" | "win949" | "windows949" => e::EUC_KR,
            // EUC_CN is GB 2312, a subset of GBK.
            "euccn" | "gbk" | "win936" | "windows936" => e::GBK,
            "sjis" | "mskanji" | "shiftjis" | "win932" | "windows932" => e::SHIFT_JIS,
            "big5" | "win950" | "windows950" => e::BIG5,
            "gb18030" => e::GB18030,
            _ => return ClientEncoding::Unread,
        };
        ClientEncoding::Decoded(decoded)
    }

    /// The statement text in `bytes` as the server will read it; `None` when this encoding is not read and
    /// the text is not plain ASCII. In UTF8, bytes that are not UTF-8 are read one character each: the server
    /// refuses such a message wherever it runs, so only its structure matters.
    pub fn read(self, bytes: &[u8]) -> Option<Cow<'_, str>> {
        match self {
            ClientEncoding::Utf8 => Some(ascii_view(bytes)),
            _ if bytes.is_ascii() => std::str::from_utf8(bytes).ok().map(Cow::Borrowed),
            ClientEncoding::Latin1 => Some(Cow::Owned(latin1(bytes))),
            ClientEncoding::Decoded(encoding) => Some(encoding.decode_without_bom_handling(bytes).0),
            ClientEncoding::Unread => None,
        }
    }

    /// Whether text read in this encoding is sent to a node as the same bytes pgfleet read: only in UTF8.
    /// A setting whose statement is not plain ASCII in another encoding cannot be replayed from pgfleet's
    /// UTF-8 copy of it.
    pub fn is_utf8(self) -> bool {
        self == ClientEncoding::Utf8
    }
}

/// Text to search for ASCII words and read for its structure (COPY, `synchronous_commit`, where statements
/// end) whatever the session's encoding: UTF-8 as it is, other text one character per byte, which keeps every
/// ASCII byte in place in UTF8, SQL_ASCII and every server encoding.
pub fn ascii_view(bytes: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(bytes) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(latin1(bytes)),
    }
}

/// Each byte as the character of the same number (ISO 8859-1).
fn latin1(bytes: &[u8]) -> String {
    bytes.iter().map(|&b| char::from(b)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_matched_as_postgresql_matches_them() {
        let cases: &[(&str, ClientEncoding)] = &[
            ("UTF8", ClientEncoding::Utf8),
            ("utf-8", ClientEncoding::Utf8),
            ("Unicode", ClientEncoding::Utf8),
            ("SQL_ASCII", ClientEncoding::Utf8),
            ("LATIN1", ClientEncoding::Latin1),
            ("iso_8859_1", ClientEncoding::Latin1),
            ("latin9", ClientEncoding::Decoded(encoding_rs::ISO_8859_15)),
            ("WIN1251", ClientEncoding::Decoded(encoding_rs::WINDOWS_1251)),
            ("windows-1252", ClientEncoding::Decoded(encoding_rs::WINDOWS_1252)),
            ("KOI8R", ClientEncoding::Decoded(encoding_rs::KOI8_R)),
            ("SJIS", ClientEncoding::Decoded(encoding_rs::SHIFT_JIS)),
            ("Shift_JIS", ClientEncoding::Decoded(encoding_rs::SHIFT_JIS)),
            ("BIG5", ClientEncoding::Decoded(encoding_rs::BIG5)),
            ("UHC", ClientEncoding::Decoded(encoding_rs::EUC_KR)),
            ("GB18030", ClientEncoding::Decoded(encoding_rs::GB18030)),
            ("EUC_JP", ClientEncoding::Decoded(encoding_rs::EUC_JP)),
            ("JOHAB", ClientEncoding::Unread),
            ("SHIFT_JIS_2004", ClientEncoding::Unread),
            ("MULE_INTERNAL", ClientEncoding::Unread),
            ("no such encoding", ClientEncoding::Unread),
        ];
        for (name, want) in cases {
            assert_eq!(ClientEncoding::from_name(name), *want, "{name}");
        }
    }

    #[test]
    fn text_is_read_in_the_clients_encoding() {
        let latin1 = ClientEncoding::from_name("LATIN1");
        let koi8 = ClientEncoding::from_name("KOI8R");
        let sjis = ClientEncoding::from_name("SJIS");
        let johab = ClientEncoding::from_name("JOHAB");
        let utf8 = ClientEncoding::Utf8;
        let cases: &[(ClientEncoding, &[u8], Option<&str>)] = &[
            (utf8, b"SELECT 1", Some("SELECT 1")),
            (utf8, "SELECT 'café'".as_bytes(), Some("SELECT 'café'")),
            // Not UTF-8: the server refuses it; its ASCII structure is kept, one character per byte.
            (
                utf8,
                b"UPDATE t SET a = '\xe9'",
                Some("UPDATE t SET a = '\u{e9}'"),
            ),
            (
                latin1,
                b"UPDATE t SET name = 'caf\xe9'",
                Some("UPDATE t SET name = 'café'"),
            ),
            (koi8, b"SELECT \xc6\xd5\xce\xcb()", Some("SELECT функ()")),
            // SJIS: 0x83 0x5C is one character whose second byte is ASCII `\`; read byte by byte, E'..' would
            // not end at its quote and the UPDATE would be taken for part of a literal.
            (
                sjis,
                b"SELECT E'\x83\x5c'; UPDATE t SET a = 1",
                Some("SELECT E'ソ'; UPDATE t SET a = 1"),
            ),
            (johab, b"SELECT 1", Some("SELECT 1")),
            (johab, b"SELECT '\x88\xa1'", None),
        ];
        for (encoding, bytes, want) in cases {
            assert_eq!(encoding.read(bytes).as_deref(), *want, "{encoding:?} {bytes:?}");
        }
    }
}
