//! The untyped packets a client sends before the session starts: SSLRequest, GSSENCRequest, CancelRequest
//! and the StartupMessage with its parameters.

use bytes::{BufMut, Bytes, BytesMut};

const SSL_REQUEST: i32 = 80877103;
const GSSENC_REQUEST: i32 = 80877104;
const CANCEL_REQUEST: i32 = 80877102;

/// Largest startup packet accepted; PostgreSQL uses 10000 bytes as well.
pub const MAX_STARTUP_PACKET: usize = 10_000;

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// Length outside 8..=MAX_STARTUP_PACKET.
    #[error("invalid length of startup packet")]
    BadLength,
    /// Major version other than 3.
    #[error("unsupported frontend protocol {0}.{1}: server supports 3.0 to 3.0")]
    Version(u16, u16),
    /// Parameters not terminated properly.
    #[error("invalid startup packet layout: expected terminator as last byte")]
    Layout,
    /// A parameter's value is not UTF-8, the only encoding pgfleet reads startup packets in.
    #[error("invalid startup packet: parameter \"{0}\" is not valid UTF-8")]
    ValueNotUtf8(String),
    /// A parameter's name is not UTF-8 (shown with the invalid bytes replaced).
    #[error("invalid startup packet: parameter name \"{0}\" is not valid UTF-8")]
    NameNotUtf8(String),
    /// No user given.
    #[error("no PostgreSQL user name specified in startup packet")]
    NoUser,
}

impl StartupError {
    /// What PostgreSQL (ProcessStartupPacket) sends for this: `None` when it only logs the packet and closes
    /// the connection (a length it cannot trust means the peer may not speak the protocol at all: a stray
    /// Terminate, garbage, a port scanner), else the SQLSTATE of the FATAL it answers with.
    pub fn answer_code(&self) -> Option<&'static str> {
        match self {
            StartupError::BadLength => None,
            StartupError::Version(..) => Some("0A000"),
            StartupError::NoUser => Some("28000"),
            StartupError::Layout | StartupError::ValueNotUtf8(_) | StartupError::NameNotUtf8(_) => {
                Some("08P01")
            }
        }
    }
}

/// One decoded pre-session packet.
#[derive(Debug, PartialEq, Eq)]
pub enum StartupPacket {
    /// Client asks for TLS.
    Ssl,
    /// Client asks for GSS encryption.
    GssEnc,
    /// Client asks to cancel the query running under (pid, secret).
    Cancel {
        /// Process id from BackendKeyData.
        pid: i32,
        /// Secret from BackendKeyData.
        secret: i32,
    },
    /// The StartupMessage.
    Startup {
        /// Minor protocol version asked for (we speak 3.0 and negotiate down).
        minor: u16,
        /// Parameters in the order sent (user, database, options, application_name, ...).
        params: Vec<(String, String)>,
    },
}

/// Reads the length prefix of an untyped packet; `None` until 4 bytes are there.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as i32).contains(&len) {
        return Err(StartupError::BadLength);
    }
    Ok(Some(len as usize))
}

/// Decodes a whole untyped packet (length prefix included).
pub fn decode(packet: &[u8]) -> Result<StartupPacket, StartupError> {
    if packet.len() < 8 {
        return Err(StartupError::BadLength);
    }
    let code = i32::from_be_bytes([packet[4], packet[5], packet[6], packet[7]]);
    match code {
        SSL_REQUEST => return Ok(StartupPacket::Ssl),
        GSSENC_REQUEST => return Ok(StartupPacket::GssEnc),
        CANCEL_REQUEST => {
            if packet.len() != 16 {
                return Err(StartupError::BadLength);
            }
            let pid = i32::from_be_bytes([packet[8], packet[9], packet[10], packet[11]]);
            let secret = i32::from_be_bytes([packet[12], packet[13], packet[14], packet[15]]);
            return Ok(StartupPacket::Cancel { pid, secret });
        }
        _ => {}
    }
    let major = (code >> 16) as u16;
    let minor = (code & 0xffff) as u16;
    if major != 3 {
        return Err(StartupError::Version(major, minor));
    }
    // PostgreSQL's layout: `name\0value\0` pairs, then one `\0` that must be the last byte. Anything else
    // (no final terminator, bytes after it, a name without its value) is refused, as PostgreSQL refuses
    // it. Splitting on NULs alone read `user\0app\0x\0\0`, which lacks the terminator, as user=app plus
    // x="", and ignored whatever followed an early terminator (found by the startup_packet fuzz target).
    let Some(list) = packet[8..].strip_suffix(&[0]) else {
        return Err(StartupError::Layout);
    };
    let mut params = Vec::new();
    if !list.is_empty() {
        // The last value's NUL ends the list.
        let Some(pairs) = list.strip_suffix(&[0]) else {
            return Err(StartupError::Layout);
        };
        let mut parts = pairs.split(|b| *b == 0);
        while let Some(key) = parts.next() {
            if key.is_empty() {
                // A terminator before the last byte.
                return Err(StartupError::Layout);
            }
            let value = parts.next().ok_or(StartupError::Layout)?;
            let key = std::str::from_utf8(key)
                .map_err(|_| StartupError::NameNotUtf8(String::from_utf8_lossy(key).into_owned()))?;
            let value = match std::str::from_utf8(value) {
                Ok(value) => value.to_owned(),
                Err(_) if key == "application_name" => printable_ascii(value),
                Err(_) => return Err(StartupError::ValueNotUtf8(key.to_owned())),
            };
            params.push((key.to_owned(), value));
        }
    }
    if !params.iter().any(|(k, v)| k == "user" && !v.is_empty()) {
        return Err(StartupError::NoUser);
    }
    Ok(StartupPacket::Startup { minor, params })
}

/// An application_name in another encoding (a program named in LATIN1 or WIN1252): PostgreSQL takes any bytes
/// there and keeps a byte outside printable ASCII as `?`, so pgfleet passes on what the server would keep
/// rather than refuse the connection.
fn printable_ascii(value: &[u8]) -> String {
    value
        .iter()
        .map(|&b| {
            if (b' '..=b'~').contains(&b) {
                char::from(b)
            } else {
                '?'
            }
        })
        .collect()
}

/// Encodes a 3.0 StartupMessage (used towards the nodes).
pub fn encode_startup(params: &[(&str, &str)]) -> Bytes {
    let mut body = BytesMut::new();
    body.put_i32(196608);
    for (k, v) in params {
        body.put_slice(k.as_bytes());
        body.put_u8(0);
        body.put_slice(v.as_bytes());
        body.put_u8(0);
    }
    body.put_u8(0);
    let mut out = BytesMut::with_capacity(body.len() + 4);
    out.put_i32(body.len() as i32 + 4);
    out.put_slice(&body);
    out.freeze()
}

/// Encodes an SSLRequest (used towards the nodes before the StartupMessage).
pub fn encode_ssl_request() -> Bytes {
    let mut out = BytesMut::with_capacity(8);
    out.put_i32(8);
    out.put_i32(SSL_REQUEST);
    out.freeze()
}

/// Encodes a CancelRequest for a node's (pid, secret).
pub fn encode_cancel(pid: i32, secret: i32) -> Bytes {
    let mut out = BytesMut::with_capacity(16);
    out.put_i32(16);
    out.put_i32(CANCEL_REQUEST);
    out.put_i32(pid);
    out.put_i32(secret);
    out.freeze()
}

/// Splits the `options` startup parameter ("-c a=b --c=d", backslash escapes spaces) into settings.
pub fn parse_options(options: &str) -> Vec<(String, String)> {
    let mut words = Vec::new();
    let mut cur = String::new();
    let mut chars = options.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                if let Some(n) = chars.next() {
                    cur.push(n);
                }
            }
            c if c.is_whitespace() => {
                if !cur.is_empty() {
                    words.push(std::mem::take(&mut cur));
                }
            }
            c => cur.push(c),
        }
    }
    if !cur.is_empty() {
        words.push(cur);
    }
    let mut out = Vec::new();
    let mut it = words.into_iter();
    while let Some(w) = it.next() {
        let setting = if w == "-c" {
            it.next()
        } else if let Some(s) = w.strip_prefix("--") {
            Some(s.to_owned())
        } else {
            w.strip_prefix("-c").map(str::to_owned)
        };
        if let Some((k, v)) = setting.as_deref().and_then(|s| s.split_once('=')) {
            out.push((k.replace('-', "_").to_ascii_lowercase(), v.to_owned()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn startup_round_trip() {
        let p = encode_startup(&[("user", "app"), ("database", "db")]);
        assert_eq!(packet_len(&p), Ok(Some(p.len())));
        match decode(&p) {
            Ok(StartupPacket::Startup { minor: 0, params }) => {
                assert_eq!(
                    params,
                    vec![("user".into(), "app".into()), ("database".into(), "db".into())]
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn cancel_and_garbage() {
        assert_eq!(
            decode(&encode_cancel(7, 9)),
            Ok(StartupPacket::Cancel { pid: 7, secret: 9 })
        );
        assert_eq!(packet_len(&[0, 0, 0, 3]), Err(StartupError::BadLength));
        assert_eq!(packet_len(&[0x7f, 0, 0, 0]), Err(StartupError::BadLength));
        let mut bad = encode_startup(&[("user", "app")]).to_vec();
        bad.truncate(bad.len() - 2);
        assert_eq!(decode(&bad), Err(StartupError::Layout));
        assert_eq!(
            decode(&encode_startup(&[("database", "x")])),
            Err(StartupError::NoUser)
        );
    }

    #[test]
    fn answers_match_postgres() {
        // (error, SQLSTATE of the FATAL PostgreSQL sends; None: it closes without a word)
        let cases = [
            (StartupError::BadLength, None),
            (StartupError::Version(2, 0), Some("0A000")),
            (StartupError::Version(1234, 5679), Some("0A000")),
            (StartupError::Layout, Some("08P01")),
            (StartupError::NoUser, Some("28000")),
            (StartupError::ValueNotUtf8("user".into()), Some("08P01")),
        ];
        for (e, code) in cases {
            assert_eq!(e.answer_code(), code, "{e}");
        }
        // A Terminate sent before the startup packet reads as a length no packet has.
        assert_eq!(packet_len(&[b'X', 0, 0, 0, 4]), Err(StartupError::BadLength));
    }

    #[test]
    fn parameters_that_are_not_utf8_are_named() {
        let packet = |list: &[u8]| {
            let mut p = ((list.len() + 8) as i32).to_be_bytes().to_vec();
            p.extend_from_slice(&196608i32.to_be_bytes());
            p.extend_from_slice(list);
            p
        };
        let e = decode(&packet(b"user\0caf\xe9\0database\0app\0\0")).expect_err("Latin-1 user name");
        assert_eq!(e, StartupError::ValueNotUtf8("user".into()));
        assert_eq!(
            e.to_string(),
            "invalid startup packet: parameter \"user\" is not valid UTF-8"
        );
        // application_name is taken as PostgreSQL takes it: each byte outside printable ASCII kept as `?`.
        let Ok(StartupPacket::Startup { params, .. }) =
            decode(&packet(b"user\0app\0application_name\0Gesti\xf3n\xff\0\0"))
        else {
            panic!("a Latin-1 application_name refused");
        };
        assert_eq!(params[1], ("application_name".to_owned(), "Gesti?n?".to_owned()));
        let e = decode(&packet(b"user\0app\0x\xffy\0v\0\0")).expect_err("bad name");
        assert_eq!(
            e.to_string(),
            "invalid startup packet: parameter name \"x\u{fffd}y\" is not valid UTF-8"
        );
        // The layout is checked first: a bad byte in a packet without its terminator is a layout error.
        assert_eq!(decode(&packet(b"user\0caf\xe9\0")), Err(StartupError::Layout));
    }

    #[test]
    fn options_parsing() {
        assert_eq!(
            parse_options("-c pgfleet.route=primary --search-path=a\\ b -cwork_mem=4MB"),
            vec![
                ("pgfleet.route".into(), "primary".into()),
                ("search_path".into(), "a b".into()),
                ("work_mem".into(), "4MB".into())
            ]
        );
    }
}
