//! Proxy-owned names for prepared statements under transaction pooling. A client's statement name means
//! nothing on a connection other sessions share, so each named Parse gets a name derived from its text and
//! parameter types (the same statement from any session shares one name and one server-side plan), and
//! Bind, Describe and Close are rewritten to match. Close of a client name only forgets the mapping: other
//! sessions may still use the shared statement.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bytes::{BufMut, BytesMut};

use crate::protocol::Frame;
use crate::protocol::frame::build;
use crate::protocol::messages::{bind_names, cstr, target_name};

/// A statement name no server has: Close of it succeeds without closing anything.
pub const NOOP_NAME: &str = "pgfleet_closed";

/// The client's statement names and the proxy names they stand for.
#[derive(Debug, Default)]
pub struct StatementNames {
    map: HashMap<String, String>,
}

fn proxy_name(parse_rest: &[u8]) -> String {
    // SipHash with fixed keys: the same text gets the same name in every session and process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parse_rest.hash(&mut h);
    format!("pgf_{:016x}", h.finish())
}

fn rebuild(kind: u8, parts: &[&[u8]], rest: &[u8]) -> Frame {
    let mut body = BytesMut::with_capacity(rest.len() + 64);
    for p in parts {
        body.put_slice(p);
    }
    body.put_slice(rest);
    let raw = build(kind, &body);
    Frame { kind, raw }
}

impl StatementNames {
    /// Rewrites one client frame's statement names.
    pub fn rewrite(&mut self, frame: Frame) -> Frame {
        let body = frame.body();
        match frame.kind {
            b'P' => {
                let Some((name, next)) = cstr(body, 0) else {
                    return frame;
                };
                if name.is_empty() {
                    return frame;
                }
                let proxy = proxy_name(&body[next..]);
                self.map.insert(name.to_owned(), proxy.clone());
                rebuild(b'P', &[proxy.as_bytes(), &[0]], &body[next..])
            }
            b'B' => {
                let Some((portal, stmt)) = bind_names(body) else {
                    return frame;
                };
                let Some(proxy) = self.map.get(stmt) else {
                    return frame;
                };
                let rest_at = portal.len() + 1 + stmt.len() + 1;
                rebuild(
                    b'B',
                    &[portal.as_bytes(), &[0], proxy.as_bytes(), &[0]],
                    &body[rest_at..],
                )
            }
            b'D' => match target_name(body) {
                Some((b'S', name)) if !name.is_empty() => match self.map.get(name) {
                    Some(proxy) => rebuild(b'D', &[b"S", proxy.as_bytes(), &[0]], &[]),
                    None => frame,
                },
                _ => frame,
            },
            b'C' => match target_name(body) {
                Some((b'S', name)) if !name.is_empty() => {
                    self.map.remove(name);
                    rebuild(b'C', &[b"S", NOOP_NAME.as_bytes(), &[0]], &[])
                }
                _ => frame,
            },
            _ => frame,
        }
    }

    /// Forgets client names (SQL DEALLOCATE); `*` forgets all.
    pub fn forget(&mut self, names: &[String]) {
        for n in names {
            if n == "*" {
                self.map.clear();
            } else {
                self.map.remove(n);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::protocol::messages::parse_fields;

    fn frame(kind: u8, body: &[u8]) -> Frame {
        Frame {
            kind,
            raw: build(kind, body),
        }
    }

    #[test]
    fn same_text_same_name_across_sessions() {
        let mut a = StatementNames::default();
        let mut b = StatementNames::default();
        let pa = a.rewrite(frame(b'P', b"S_1\0select $1\0\0\0"));
        let pb = b.rewrite(frame(b'P', b"other\0select $1\0\0\0"));
        let (na, qa) = parse_fields(pa.body()).expect("parse");
        let (nb, _) = parse_fields(pb.body()).expect("parse");
        assert_eq!(na, nb);
        assert!(na.starts_with("pgf_"));
        assert_eq!(qa, "select $1");
        let bind = a.rewrite(frame(b'B', b"portal\0S_1\0\0\0\0\0\0\0"));
        assert_eq!(bind_names(bind.body()), Some(("portal", na)));
        assert_eq!(&bind.body()[bind.body().len() - 6..], &[0, 0, 0, 0, 0, 0]);
        let close = a.rewrite(frame(b'C', b"SS_1\0"));
        assert_eq!(target_name(close.body()), Some((b'S', NOOP_NAME)));
        // Unnamed statements and unknown names pass through.
        let unnamed = frame(b'P', b"\0select 1\0\0\0");
        assert_eq!(a.rewrite(unnamed.clone()), unnamed);
        let unknown = frame(b'B', b"\0nope\0\0\0\0\0\0\0");
        assert_eq!(a.rewrite(unknown.clone()), unknown);
    }
}
