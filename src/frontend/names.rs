//! Proxy-owned names for prepared statements under transaction pooling. A client's statement name means
//! nothing on a connection other sessions share, so each named Parse gets a name derived from its text and
//! parameter types (the same statement from any session shares one name and one server-side plan), and
//! Bind, Describe and Close are rewritten to match. Close of a client name only forgets the mapping: other
//! sessions may still use the shared statement.

use std::collections::HashMap;
use std::hash::{Hash, Hasher};

use bytes::{BufMut, Bytes, BytesMut};

use crate::protocol::Frame;
use crate::protocol::messages::{bind_names, cstr, target_name};

/// A statement name no server has: Close of it succeeds without closing anything.
pub(crate) const NOOP_NAME: &str = "pgfleet_closed";

/// The client's statement names and the proxy names they stand for.
#[derive(Debug, Default)]
pub(crate) struct StatementNames {
    map: HashMap<String, String>,
}

fn proxy_name(parse_rest: &[u8]) -> String {
    // SipHash with fixed keys: the same text gets the same name in every session and process.
    let mut h = std::collections::hash_map::DefaultHasher::new();
    parse_rest.hash(&mut h);
    format!("pgf_{:016x}", h.finish())
}

fn rebuild(kind: u8, parts: &[&[u8]], rest: &[u8]) -> Frame {
    // Written once into a buffer of the final size: a Bind can carry a large parameter, and building the
    // body first and framing it afterwards would copy it twice.
    let body_len = parts.iter().map(|p| p.len()).sum::<usize>() + rest.len();
    let mut raw = BytesMut::with_capacity(5 + body_len);
    raw.put_u8(kind);
    raw.put_i32(i32::try_from(body_len + 4).unwrap_or(i32::MAX));
    for p in parts {
        raw.put_slice(p);
    }
    raw.put_slice(rest);
    Frame {
        kind,
        raw: raw.freeze(),
    }
}

/// Binds larger than this are renamed in their own buffer instead of being copied: a Bind carries the
/// parameters, which can be as large as a message may be.
const IN_PLACE_FROM: usize = 64 * 1024;

/// Replaces the `old_len` bytes of a statement name at `at` with `new` inside the frame's own allocation,
/// moving the rest of the frame; `Err` gives the frame back when something else still shares its bytes.
/// The read buffer leaves room after each frame for a longer name (see `FrameBuffer::next_frame`), so the
/// move needs no new allocation either.
fn rename_in_place(raw: Bytes, at: usize, old_len: usize, new: &[u8]) -> Result<Bytes, Bytes> {
    let mut m = raw.try_into_mut()?;
    let old_total = m.len();
    let new_total = old_total - old_len + new.len();
    let tail = at + old_len;
    if new.len() > old_len {
        m.resize(new_total, 0);
    }
    m.copy_within(tail..old_total, at + new.len());
    m.truncate(new_total);
    m[at..at + new.len()].copy_from_slice(new);
    set_length(&mut m[1..5], new_total - 1);
    Ok(m.freeze())
}

/// The same renaming into a new buffer, for a frame whose bytes are shared.
fn rename_copied(raw: Bytes, at: usize, old_len: usize, new: &[u8]) -> Frame {
    let mut m = BytesMut::with_capacity(raw.len() - old_len + new.len());
    m.put_slice(&raw[..at]);
    m.put_slice(new);
    m.put_slice(&raw[at + old_len..]);
    let total = m.len();
    set_length(&mut m[1..5], total - 1);
    Frame {
        kind: raw[0],
        raw: m.freeze(),
    }
}

fn set_length(field: &mut [u8], len: usize) {
    field.copy_from_slice(&i32::try_from(len).unwrap_or(i32::MAX).to_be_bytes());
}

impl StatementNames {
    /// Rewrites one client frame's statement names.
    pub(crate) fn rewrite(&mut self, frame: Frame) -> Frame {
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
                // The unnamed statement keeps its name (see the Parse arm): no lookup for drivers' usual Bind.
                if stmt.is_empty() {
                    return frame;
                }
                let Some(proxy) = self.map.get(stmt) else {
                    return frame;
                };
                let rest_at = portal.len() + 1 + stmt.len() + 1;
                if frame.raw.len() > IN_PLACE_FROM {
                    let (at, old_len, proxy) = (5 + portal.len() + 1, stmt.len(), proxy.clone());
                    match rename_in_place(frame.raw, at, old_len, proxy.as_bytes()) {
                        Ok(raw) => return Frame { kind: b'B', raw },
                        Err(raw) => return rename_copied(raw, at, old_len, proxy.as_bytes()),
                    }
                }
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
    pub(crate) fn forget(&mut self, names: &[String]) {
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
    use crate::protocol::frame::build;
    use crate::protocol::messages::parse_fields;

    fn frame(kind: u8, body: &[u8]) -> Frame {
        Frame {
            kind,
            raw: build(kind, body),
        }
    }

    #[test]
    fn large_binds_are_renamed_like_small_ones() {
        let mut names = StatementNames::default();
        names.rewrite(frame(b'P', b"s1\0SELECT length($1)\0\0\0"));
        let long_name = "a_client_statement_name_longer_than_the_proxy_one";
        names.rewrite(frame(
            b'P',
            format!("{long_name}\0SELECT $1::text\0\0\0").as_bytes(),
        ));
        // (statement, parameter size, whether another handle shares the frame's bytes)
        let cases = [
            ("s1", 10, false),
            ("s1", 200_000, false),
            ("s1", 200_000, true),
            (long_name, 10, false),
            (long_name, 200_000, false),
            (long_name, 200_000, true),
        ];
        for (stmt, size, shared) in cases {
            let mut body = format!("portal\0{stmt}\0").into_bytes();
            body.extend_from_slice(&[0, 0, 0, 1]);
            body.extend_from_slice(&(size as i32).to_be_bytes());
            body.extend(std::iter::repeat_n(b'x', size));
            body.extend_from_slice(&[0, 0]);
            let f = frame(b'B', &body);
            let other = shared.then(|| f.raw.clone());
            let out = names.rewrite(f);
            // The shared bytes stay as they were.
            assert_eq!(other.map(|o| o.len()), shared.then_some(5 + body.len()));
            let (portal, proxy) = bind_names(out.body()).expect("a Bind");
            assert_eq!(portal, "portal");
            assert!(proxy.starts_with("pgf_"), "{proxy}");
            let rest_at = format!("portal\0{stmt}\0").len();
            assert_eq!(
                &out.body()[portal.len() + proxy.len() + 2..],
                &body[rest_at..],
                "{stmt} {size}"
            );
            assert_eq!(out.raw.len(), 5 + out.body().len());
            let claimed = i32::from_be_bytes([out.raw[1], out.raw[2], out.raw[3], out.raw[4]]);
            assert_eq!(claimed as usize, out.raw.len() - 1);
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
