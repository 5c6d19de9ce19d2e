//! Decoding of a logical replication stream: the streaming-replication CopyData envelope (`w` XLogData and
//! `k` primary keepalive), the `r` standby status update we send back, and the pgoutput messages (protocol
//! version 1, with `messages 'true'`) carried inside XLogData.
//!
//! Everything here is sans-IO and pure: bytes in, typed values out. Input comes from the network, so every
//! read is bounds-checked and a malformed message becomes a [`DecodeError`], never a panic. Decoding is also
//! strict about trailing bytes: a message longer than its layout means we are reading a layout we do not
//! understand, and acting on a misread LSN would be worse than stopping.
//!
//! Integers are big-endian, strings are NUL-terminated and, with the replication connection's
//! `client_encoding` set to UTF8, valid UTF-8 (anything else is an error rather than a lossy conversion,
//! because the text is applied to replicas verbatim).

use bytes::{BufMut, Bytes, BytesMut};

pub(crate) use crate::protocol::lsn::{Lsn, pg_epoch_micros_now};

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// A message had no bytes at all, not even its type byte.
    #[error("empty replication message")]
    Empty,
    /// The CopyData payload is neither XLogData ('w') nor a primary keepalive ('k').
    #[error("unknown replication CopyData message type '{}' (0x{:02x})", char::from(*.0), .0)]
    UnknownCopyData(u8),
    /// The pgoutput message type is not one protocol version 1 sends.
    #[error("unknown pgoutput message type '{}' (0x{:02x})", char::from(*.0), .0)]
    UnknownMessage(u8),
    /// The message ended before a field it must contain.
    #[error("{message} message truncated: needed {needed} bytes for {field}, {available} left")]
    Truncated {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// Bytes the field needs.
        needed: usize,
        /// Bytes that were left.
        available: usize,
    },
    /// A string field has no terminating NUL.
    #[error("{message} message: unterminated string for {field}")]
    UnterminatedString {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A string or text value is not UTF-8.
    #[error("{message} message: {field} is not valid UTF-8 (is client_encoding UTF8?)")]
    InvalidUtf8 {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
    },
    /// A count or length field is negative.
    #[error("{message} message: negative {field} {value}")]
    NegativeLength {
        /// The message being decoded.
        message: &'static str,
        /// The field being read.
        field: &'static str,
        /// The value found.
        value: i64,
    },
    /// A tuple column has a kind other than 'n', 'u', 't' or 'b'.
    #[error("{message} message: unknown tuple column kind '{}' (0x{kind:02x})", char::from(*.kind))]
    UnknownColumnKind {
        /// The message being decoded.
        message: &'static str,
        /// The byte found.
        kind: u8,
    },
    /// A tuple marker ('N', 'K' or 'O') is not one allowed at this place.
    #[error("{message} message: expected {expected}, found '{}' (0x{found:02x})", char::from(*.found))]
    UnexpectedMarker {
        /// The message being decoded.
        message: &'static str,
        /// What was allowed.
        expected: &'static str,
        /// The byte found.
        found: u8,
    },
    /// Bytes remain after the last field of the message.
    #[error("{message} message has {count} unexpected trailing bytes")]
    TrailingBytes {
        /// The message being decoded.
        message: &'static str,
        /// How many bytes were left.
        count: usize,
    },
}

/// One CopyData message received from the walsender in CopyBoth mode.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ReplicationMessage {
    /// 'w': a chunk of the stream; with pgoutput, exactly one pgoutput message (see [`decode`]).
    XLogData {
        /// The WAL position of the start of `data`.
        wal_start: Lsn,
        /// The current end of WAL on the server.
        wal_end: Lsn,
        /// The server's clock at transmission, microseconds since 2000-01-01.
        server_time: i64,
        /// The payload.
        data: Bytes,
    },
    /// 'k': a heartbeat; when `reply_requested`, answer at once with [`standby_status_update`] or the
    /// walsender drops us after `wal_sender_timeout`.
    PrimaryKeepalive {
        /// The current end of WAL on the server.
        wal_end: Lsn,
        /// The server's clock at transmission, microseconds since 2000-01-01.
        server_time: i64,
        /// The server asks for an immediate standby status update.
        reply_requested: bool,
    },
}

/// A column of a [`Relation`], as pgoutput describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Column {
    /// Part of the replica identity (the primary key, the REPLICA IDENTITY index, or every column with
    /// REPLICA IDENTITY FULL).
    pub key: bool,
    /// Column name.
    pub name: String,
    /// OID of the column's type (a domain's own OID for a domain column).
    pub type_oid: u32,
    /// The type modifier (`atttypmod`), -1 when none.
    pub type_modifier: i32,
}

/// The description of a table, sent before the first change to it in a session and again after its
/// definition changes. Later changes name the table only by `id`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Relation {
    /// The table's OID on the primary.
    pub id: u32,
    /// Schema name; pgoutput sends an empty string for `pg_catalog`.
    pub namespace: String,
    /// Table name.
    pub name: String,
    /// `relreplident`: b'd' default (primary key), b'n' nothing, b'f' full, b'i' index.
    pub replica_identity: u8,
    /// The published columns, in order; tuples of this relation have one datum per column.
    pub columns: Vec<Column>,
}

/// One column value of a tuple.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Datum {
    /// 'n': SQL NULL.
    Null,
    /// 'u': a TOASTed value that did not change; its value is not sent.
    UnchangedToast,
    /// 't': the value in the type's text output format.
    Text(String),
    /// 'b': the value in the type's binary format (only with the `binary` option, which we do not use).
    Binary(Bytes),
}

/// The values of one row, one [`Datum`] per column of its [`Relation`].
pub(crate) type Tuple = Vec<Datum>;

/// A pgoutput message (protocol version 1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgOutput {
    /// 'B': a transaction starts.
    Begin {
        /// The LSN of the transaction's commit record.
        final_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
        /// The transaction id on the primary.
        xid: u32,
    },
    /// 'C': the transaction commits.
    Commit {
        /// Currently unused by PostgreSQL (0).
        flags: u8,
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The end LSN of the transaction: the position to confirm once it is applied.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// 'O': the transaction came from another node's replication origin.
    Origin {
        /// The commit LSN on the origin server.
        lsn: Lsn,
        /// The origin's name.
        name: String,
    },
    /// 'R': a table description.
    Relation(Relation),
    /// 'Y': a data type description (sent for types that are not built in).
    Type {
        /// The type's OID on the primary.
        id: u32,
        /// Schema name; empty for `pg_catalog`.
        namespace: String,
        /// Type name.
        name: String,
    },
    /// 'I': a row was inserted.
    Insert {
        /// The relation's OID.
        relation: u32,
        /// The new row.
        new: Tuple,
    },
    /// 'U': a row was updated.
    Update {
        /// The relation's OID.
        relation: u32,
        /// The old row's identity: present when the key changed ('K') or with REPLICA IDENTITY FULL ('O').
        old: Option<Tuple>,
        /// The old tuple is 'K' (key columns only, others null) rather than 'O' (the full old row).
        key_only: bool,
        /// The new row; unchanged TOASTed columns are [`Datum::UnchangedToast`].
        new: Tuple,
    },
    /// 'D': a row was deleted.
    Delete {
        /// The relation's OID.
        relation: u32,
        /// The old row's identity.
        old: Tuple,
        /// `old` is 'K' (key columns only, others null) rather than 'O' (the full old row).
        key_only: bool,
    },
    /// 'T': tables were truncated.
    Truncate {
        /// TRUNCATE ... CASCADE.
        cascade: bool,
        /// TRUNCATE ... RESTART IDENTITY.
        restart_identity: bool,
        /// The OIDs of the truncated relations.
        relations: Vec<u32>,
    },
    /// 'M': a `pg_logical_emit_message` record.
    Message {
        /// Emitted inside the transaction (delivered between Begin and Commit) rather than at once.
        transactional: bool,
        /// The LSN of the message.
        lsn: Lsn,
        /// The prefix given to `pg_logical_emit_message`.
        prefix: String,
        /// The content, as bytes.
        content: Bytes,
    },
}

impl PgOutput {
    /// The message's kind, for logs: a change's rows hold table data, which must not reach them.
    pub(crate) fn kind(&self) -> &'static str {
        match self {
            PgOutput::Begin { .. } => "begin",
            PgOutput::Commit { .. } => "commit",
            PgOutput::Origin { .. } => "origin",
            PgOutput::Relation(_) => "relation",
            PgOutput::Type { .. } => "type",
            PgOutput::Insert { .. } => "insert",
            PgOutput::Update { .. } => "update",
            PgOutput::Delete { .. } => "delete",
            PgOutput::Truncate { .. } => "truncate",
            PgOutput::Message { .. } => "message",
        }
    }
}

/// A cursor over one message that turns every short read into [`DecodeError::Truncated`].
struct Reader<'a> {
    buf: &'a [u8],
    /// Names the message in errors, so a report says which layout was being read.
    message: &'static str,
}

impl<'a> Reader<'a> {
    fn new(buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, message }
    }

    fn take(&mut self, n: usize, field: &'static str) -> Result<&'a [u8], DecodeError> {
        if self.buf.len() < n {
            return Err(DecodeError::Truncated {
                message: self.message,
                field,
                needed: n,
                available: self.buf.len(),
            });
        }
        let (head, rest) = self.buf.split_at(n);
        self.buf = rest;
        Ok(head)
    }

    fn array<const N: usize>(&mut self, field: &'static str) -> Result<[u8; N], DecodeError> {
        let bytes = self.take(N, field)?;
        let mut out = [0u8; N];
        out.copy_from_slice(bytes);
        Ok(out)
    }

    fn u8(&mut self, field: &'static str) -> Result<u8, DecodeError> {
        Ok(self.array::<1>(field)?[0])
    }

    fn i16(&mut self, field: &'static str) -> Result<i16, DecodeError> {
        Ok(i16::from_be_bytes(self.array(field)?))
    }

    fn i32(&mut self, field: &'static str) -> Result<i32, DecodeError> {
        Ok(i32::from_be_bytes(self.array(field)?))
    }

    fn u32(&mut self, field: &'static str) -> Result<u32, DecodeError> {
        Ok(u32::from_be_bytes(self.array(field)?))
    }

    fn i64(&mut self, field: &'static str) -> Result<i64, DecodeError> {
        Ok(i64::from_be_bytes(self.array(field)?))
    }

    fn u64(&mut self, field: &'static str) -> Result<u64, DecodeError> {
        Ok(u64::from_be_bytes(self.array(field)?))
    }

    fn lsn(&mut self, field: &'static str) -> Result<Lsn, DecodeError> {
        self.u64(field).map(Lsn)
    }

    /// A non-negative Int16 or Int32 count or length field.
    fn length(&self, value: i64, field: &'static str) -> Result<usize, DecodeError> {
        usize::try_from(value).map_err(|_| DecodeError::NegativeLength {
            message: self.message,
            field,
            value,
        })
    }

    fn count16(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i16(field)?;
        self.length(i64::from(value), field)
    }

    fn count32(&mut self, field: &'static str) -> Result<usize, DecodeError> {
        let value = self.i32(field)?;
        self.length(i64::from(value), field)
    }

    fn utf8(&self, bytes: &[u8], field: &'static str) -> Result<String, DecodeError> {
        std::str::from_utf8(bytes)
            .map(str::to_owned)
            .map_err(|_| DecodeError::InvalidUtf8 {
                message: self.message,
                field,
            })
    }

    /// A NUL-terminated string.
    fn cstr(&mut self, field: &'static str) -> Result<String, DecodeError> {
        let Some(nul) = self.buf.iter().position(|&b| b == 0) else {
            return Err(DecodeError::UnterminatedString {
                message: self.message,
                field,
            });
        };
        let bytes = self.take(nul + 1, field)?;
        self.utf8(&bytes[..nul], field)
    }

    fn remaining(&self) -> usize {
        self.buf.len()
    }

    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.buf)
    }

    /// Ends a message: anything left over means the layout was misread.
    fn finish(self) -> Result<(), DecodeError> {
        if self.buf.is_empty() {
            Ok(())
        } else {
            Err(DecodeError::TrailingBytes {
                message: self.message,
                count: self.buf.len(),
            })
        }
    }
}

/// Decodes the body of a CopyData ('d') frame received in CopyBoth mode after START_REPLICATION.
pub(crate) fn decode_copy_data(body: &[u8]) -> Result<ReplicationMessage, DecodeError> {
    let (&tag, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    match tag {
        b'w' => {
            let mut r = Reader::new(rest, "XLogData");
            let wal_start = r.lsn("WAL start")?;
            let wal_end = r.lsn("WAL end")?;
            let server_time = r.i64("server time")?;
            let data = Bytes::copy_from_slice(r.rest());
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
            })
        }
        b'k' => {
            let mut r = Reader::new(rest, "primary keepalive");
            let wal_end = r.lsn("WAL end")?;
            let server_time = r.i64("server time")?;
            let reply_requested = r.u8("reply flag")? != 0;
            r.finish()?;
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end,
                server_time,
                reply_requested,
            })
        }
        other => Err(DecodeError::UnknownCopyData(other)),
    }
}

/// Encodes a standby status update ('r'), to be sent inside a CopyData frame.
///
/// PostgreSQL reads each position as "the last WAL byte + 1" processed; for a logical slot the `flush`
/// position is what the slot's `confirmed_flush_lsn` advances to, so pass the `end_lsn` of the last
/// transaction that is durably applied everywhere, never more.
pub(crate) fn standby_status_update(
    write: Lsn,
    flush: Lsn,
    apply: Lsn,
    now_micros_since_2000: i64,
    reply: bool,
) -> Bytes {
    let mut out = BytesMut::with_capacity(34);
    out.put_u8(b'r');
    out.put_u64(write.0);
    out.put_u64(flush.0);
    out.put_u64(apply.0);
    out.put_i64(now_micros_since_2000);
    out.put_u8(u8::from(reply));
    out.freeze()
}

/// Decodes one pgoutput message (protocol version 1: no streamed in-progress transactions, so the change
/// messages carry no xid).
pub(crate) fn decode(data: &[u8]) -> Result<PgOutput, DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    match tag {
        b'B' => decode_begin(Reader::new(rest, "Begin")),
        b'C' => decode_commit(Reader::new(rest, "Commit")),
        b'O' => decode_origin(Reader::new(rest, "Origin")),
        b'R' => decode_relation(Reader::new(rest, "Relation")),
        b'Y' => decode_type(Reader::new(rest, "Type")),
        b'I' => decode_insert(Reader::new(rest, "Insert")),
        b'U' => decode_update(Reader::new(rest, "Update")),
        b'D' => decode_delete(Reader::new(rest, "Delete")),
        b'T' => decode_truncate(Reader::new(rest, "Truncate")),
        b'M' => decode_message(Reader::new(rest, "Message")),
        other => Err(DecodeError::UnknownMessage(other)),
    }
}

fn decode_begin(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let final_lsn = r.lsn("final LSN")?;
    let commit_time = r.i64("commit time")?;
    let xid = r.u32("xid")?;
    r.finish()?;
    Ok(PgOutput::Begin {
        final_lsn,
        commit_time,
        xid,
    })
}

fn decode_commit(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let flags = r.u8("flags")?;
    let commit_lsn = r.lsn("commit LSN")?;
    let end_lsn = r.lsn("end LSN")?;
    let commit_time = r.i64("commit time")?;
    r.finish()?;
    Ok(PgOutput::Commit {
        flags,
        commit_lsn,
        end_lsn,
        commit_time,
    })
}

fn decode_origin(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let lsn = r.lsn("origin LSN")?;
    let name = r.cstr("origin name")?;
    r.finish()?;
    Ok(PgOutput::Origin { lsn, name })
}

fn decode_relation(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let id = r.u32("relation OID")?;
    let namespace = r.cstr("namespace")?;
    let name = r.cstr("relation name")?;
    let replica_identity = r.u8("replica identity")?;
    let count = r.count16("column count")?;
    // Each column takes at least 10 bytes, so a count beyond that is a lie: do not reserve for it.
    let mut columns = Vec::with_capacity(count.min(r.remaining() / 10));
    for _ in 0..count {
        let flags = r.u8("column flags")?;
        let name = r.cstr("column name")?;
        let type_oid = r.u32("column type OID")?;
        let type_modifier = r.i32("column type modifier")?;
        columns.push(Column {
            // Bit 0 marks the replica identity; other bits are reserved.
            key: flags & 1 != 0,
            name,
            type_oid,
            type_modifier,
        });
    }
    r.finish()?;
    Ok(PgOutput::Relation(Relation {
        id,
        namespace,
        name,
        replica_identity,
        columns,
    }))
}

fn decode_type(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let id = r.u32("type OID")?;
    let namespace = r.cstr("namespace")?;
    let name = r.cstr("type name")?;
    r.finish()?;
    Ok(PgOutput::Type { id, namespace, name })
}

/// TupleData: Int16 column count, then per column a kind byte and, for 't' and 'b', an Int32 length and
/// the value.
fn read_tuple(r: &mut Reader<'_>) -> Result<Tuple, DecodeError> {
    let count = r.count16("tuple column count")?;
    // Each column takes at least its kind byte.
    let mut tuple = Vec::with_capacity(count.min(r.remaining()));
    for _ in 0..count {
        let datum = match r.u8("tuple column kind")? {
            b'n' => Datum::Null,
            b'u' => Datum::UnchangedToast,
            b't' => {
                let len = r.count32("text value length")?;
                let bytes = r.take(len, "text value")?;
                Datum::Text(r.utf8(bytes, "text value")?)
            }
            b'b' => {
                let len = r.count32("binary value length")?;
                Datum::Binary(Bytes::copy_from_slice(r.take(len, "binary value")?))
            }
            kind => {
                return Err(DecodeError::UnknownColumnKind {
                    message: r.message,
                    kind,
                });
            }
        };
        tuple.push(datum);
    }
    Ok(tuple)
}

fn expect_new_marker(r: &mut Reader<'_>, found: u8) -> Result<(), DecodeError> {
    if found == b'N' {
        Ok(())
    } else {
        Err(DecodeError::UnexpectedMarker {
            message: r.message,
            expected: "'N' (new tuple)",
            found,
        })
    }
}

fn decode_insert(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let relation = r.u32("relation OID")?;
    let marker = r.u8("tuple marker")?;
    expect_new_marker(&mut r, marker)?;
    let new = read_tuple(&mut r)?;
    r.finish()?;
    Ok(PgOutput::Insert { relation, new })
}

fn decode_update(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let relation = r.u32("relation OID")?;
    let (old, key_only, marker) = match r.u8("tuple marker")? {
        marker @ (b'K' | b'O') => {
            let old = read_tuple(&mut r)?;
            (Some(old), marker == b'K', r.u8("new tuple marker")?)
        }
        marker => (None, false, marker),
    };
    if old.is_none() && marker != b'N' {
        return Err(DecodeError::UnexpectedMarker {
            message: r.message,
            expected: "'K', 'O' or 'N'",
            found: marker,
        });
    }
    expect_new_marker(&mut r, marker)?;
    let new = read_tuple(&mut r)?;
    r.finish()?;
    Ok(PgOutput::Update {
        relation,
        old,
        key_only,
        new,
    })
}

fn decode_delete(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let relation = r.u32("relation OID")?;
    let key_only = match r.u8("tuple marker")? {
        b'K' => true,
        b'O' => false,
        found => {
            return Err(DecodeError::UnexpectedMarker {
                message: r.message,
                expected: "'K' or 'O'",
                found,
            });
        }
    };
    let old = read_tuple(&mut r)?;
    r.finish()?;
    Ok(PgOutput::Delete {
        relation,
        old,
        key_only,
    })
}

fn decode_truncate(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let count = r.count32("relation count")?;
    let options = r.u8("options")?;
    // An Int32 count could claim billions of relations: reserve only what the bytes can hold.
    let mut relations = Vec::with_capacity(count.min(r.remaining() / 4));
    for _ in 0..count {
        relations.push(r.u32("relation OID")?);
    }
    r.finish()?;
    Ok(PgOutput::Truncate {
        cascade: options & 1 != 0,
        restart_identity: options & 2 != 0,
        relations,
    })
}

fn decode_message(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let flags = r.u8("flags")?;
    let lsn = r.lsn("message LSN")?;
    let prefix = r.cstr("prefix")?;
    let len = r.count32("content length")?;
    let content = Bytes::copy_from_slice(r.take(len, "content")?);
    r.finish()?;
    Ok(PgOutput::Message {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Builds messages field by field, the way the walsender lays them out.
    struct Msg(Vec<u8>);

    impl Msg {
        fn tag(t: u8) -> Self {
            Msg(vec![t])
        }
        fn u8(mut self, v: u8) -> Self {
            self.0.push(v);
            self
        }
        fn i16(mut self, v: i16) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i32(mut self, v: i32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u32(mut self, v: u32) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn i64(mut self, v: i64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn u64(mut self, v: u64) -> Self {
            self.0.extend_from_slice(&v.to_be_bytes());
            self
        }
        fn str(mut self, s: &str) -> Self {
            self.0.extend_from_slice(s.as_bytes());
            self.0.push(0);
            self
        }
        fn raw(mut self, b: &[u8]) -> Self {
            self.0.extend_from_slice(b);
            self
        }
        fn text(self, s: &str) -> Self {
            let len = i32::try_from(s.len()).expect("short test text");
            self.u8(b't').i32(len).raw(s.as_bytes())
        }
    }

    fn begin() -> Vec<u8> {
        Msg::tag(b'B').u64(0x16_B374_D848).i64(7_000_000).u32(742).0
    }

    fn commit() -> Vec<u8> {
        Msg::tag(b'C').u8(0).u64(0x100).u64(0x130).i64(-5).0
    }

    fn origin() -> Vec<u8> {
        Msg::tag(b'O').u64(0x42).str("node_a").0
    }

    fn relation() -> Vec<u8> {
        Msg::tag(b'R')
            .u32(16384)
            .str("public")
            .str("Orders")
            .u8(b'd')
            .i16(2)
            .u8(1)
            .str("id")
            .u32(23)
            .i32(-1)
            .u8(0)
            .str("note")
            .u32(1043)
            .i32(104)
            .0
    }

    fn type_msg() -> Vec<u8> {
        Msg::tag(b'Y').u32(90000).str("public").str("mood").0
    }

    fn insert() -> Vec<u8> {
        Msg::tag(b'I')
            .u32(16384)
            .u8(b'N')
            .i16(3)
            .text("1")
            .u8(b'n')
            .text("héllo 'x'")
            .0
    }

    fn update_plain() -> Vec<u8> {
        Msg::tag(b'U').u32(16384).u8(b'N').i16(2).text("1").u8(b'u').0
    }

    fn update_key() -> Vec<u8> {
        Msg::tag(b'U')
            .u32(16384)
            .u8(b'K')
            .i16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .text("2")
            .text("b")
            .0
    }

    fn update_full() -> Vec<u8> {
        Msg::tag(b'U')
            .u32(16384)
            .u8(b'O')
            .i16(2)
            .text("1")
            .u8(b'n')
            .u8(b'N')
            .i16(2)
            .text("1")
            .u8(b'u')
            .0
    }

    fn delete_key() -> Vec<u8> {
        Msg::tag(b'D').u32(16384).u8(b'K').i16(2).text("7").u8(b'n').0
    }

    fn delete_full() -> Vec<u8> {
        Msg::tag(b'D').u32(16384).u8(b'O').i16(2).text("7").text("x").0
    }

    fn truncate() -> Vec<u8> {
        Msg::tag(b'T').i32(2).u8(3).u32(16384).u32(16390).0
    }

    fn message() -> Vec<u8> {
        Msg::tag(b'M')
            .u8(1)
            .u64(0x99)
            .str("pgfleet")
            .i32(3)
            .raw(b"a\0b")
            .0
    }

    fn binary_insert() -> Vec<u8> {
        Msg::tag(b'I')
            .u32(5)
            .u8(b'N')
            .i16(1)
            .u8(b'b')
            .i32(2)
            .raw(&[0xde, 0xad])
            .0
    }

    fn keepalive() -> Vec<u8> {
        Msg::tag(b'k').u64(0x1_0000_0010).i64(123_456).u8(1).0
    }

    fn xlogdata() -> Vec<u8> {
        Msg::tag(b'w').u64(0x10).u64(0x20).i64(99).raw(&begin()).0
    }

    fn all_pgoutput() -> Vec<Vec<u8>> {
        vec![
            begin(),
            commit(),
            origin(),
            relation(),
            type_msg(),
            insert(),
            update_plain(),
            update_key(),
            update_full(),
            delete_key(),
            delete_full(),
            truncate(),
            message(),
            binary_insert(),
        ]
    }

    fn text(s: &str) -> Datum {
        Datum::Text(s.to_owned())
    }

    #[test]
    fn begin_and_commit() {
        assert_eq!(
            decode(&begin()),
            Ok(PgOutput::Begin {
                final_lsn: Lsn(0x16_B374_D848),
                commit_time: 7_000_000,
                xid: 742
            })
        );
        assert_eq!(
            decode(&commit()),
            Ok(PgOutput::Commit {
                flags: 0,
                commit_lsn: Lsn(0x100),
                end_lsn: Lsn(0x130),
                commit_time: -5
            })
        );
    }

    #[test]
    fn origin_and_type() {
        assert_eq!(
            decode(&origin()),
            Ok(PgOutput::Origin {
                lsn: Lsn(0x42),
                name: "node_a".into()
            })
        );
        assert_eq!(
            decode(&type_msg()),
            Ok(PgOutput::Type {
                id: 90000,
                namespace: "public".into(),
                name: "mood".into()
            })
        );
    }

    #[test]
    fn relation_message() {
        let expected = Relation {
            id: 16384,
            namespace: "public".into(),
            name: "Orders".into(),
            replica_identity: b'd',
            columns: vec![
                Column {
                    key: true,
                    name: "id".into(),
                    type_oid: 23,
                    type_modifier: -1,
                },
                Column {
                    key: false,
                    name: "note".into(),
                    type_oid: 1043,
                    type_modifier: 104,
                },
            ],
        };
        assert_eq!(decode(&relation()), Ok(PgOutput::Relation(expected)));
    }

    #[test]
    fn relation_with_no_columns_and_reserved_flag_bits() {
        let msg = Msg::tag(b'R')
            .u32(1)
            .str("")
            .str("t")
            .u8(b'f')
            .i16(1)
            .u8(0x02)
            .str("c")
            .u32(25)
            .i32(-1)
            .0;
        let Ok(PgOutput::Relation(rel)) = decode(&msg) else {
            panic!("not a relation: {:?}", decode(&msg));
        };
        assert_eq!(rel.namespace, "");
        assert_eq!(rel.replica_identity, b'f');
        assert!(!rel.columns[0].key, "only bit 0 marks a key column");

        let empty = Msg::tag(b'R').u32(2).str("s").str("t").u8(b'n').i16(0).0;
        let Ok(PgOutput::Relation(rel)) = decode(&empty) else {
            panic!("not a relation");
        };
        assert!(rel.columns.is_empty());
    }

    #[test]
    fn insert_with_null_and_text() {
        assert_eq!(
            decode(&insert()),
            Ok(PgOutput::Insert {
                relation: 16384,
                new: vec![text("1"), Datum::Null, text("héllo 'x'")]
            })
        );
        assert_eq!(
            decode(&binary_insert()),
            Ok(PgOutput::Insert {
                relation: 5,
                new: vec![Datum::Binary(Bytes::from_static(&[0xde, 0xad]))]
            })
        );
    }

    #[test]
    fn empty_text_value_is_not_null() {
        let msg = Msg::tag(b'I').u32(1).u8(b'N').i16(1).text("").0;
        assert_eq!(
            decode(&msg),
            Ok(PgOutput::Insert {
                relation: 1,
                new: vec![text("")]
            })
        );
    }

    #[test]
    fn update_without_old_tuple() {
        assert_eq!(
            decode(&update_plain()),
            Ok(PgOutput::Update {
                relation: 16384,
                old: None,
                key_only: false,
                new: vec![text("1"), Datum::UnchangedToast]
            })
        );
    }

    #[test]
    fn update_with_old_key() {
        assert_eq!(
            decode(&update_key()),
            Ok(PgOutput::Update {
                relation: 16384,
                old: Some(vec![text("1"), Datum::Null]),
                key_only: true,
                new: vec![text("2"), text("b")]
            })
        );
    }

    #[test]
    fn update_with_full_old_row() {
        assert_eq!(
            decode(&update_full()),
            Ok(PgOutput::Update {
                relation: 16384,
                old: Some(vec![text("1"), Datum::Null]),
                key_only: false,
                new: vec![text("1"), Datum::UnchangedToast]
            })
        );
    }

    #[test]
    fn deletes() {
        assert_eq!(
            decode(&delete_key()),
            Ok(PgOutput::Delete {
                relation: 16384,
                old: vec![text("7"), Datum::Null],
                key_only: true
            })
        );
        assert_eq!(
            decode(&delete_full()),
            Ok(PgOutput::Delete {
                relation: 16384,
                old: vec![text("7"), text("x")],
                key_only: false
            })
        );
    }

    #[test]
    fn truncate_options() {
        assert_eq!(
            decode(&truncate()),
            Ok(PgOutput::Truncate {
                cascade: true,
                restart_identity: true,
                relations: vec![16384, 16390]
            })
        );
        let restart_only = Msg::tag(b'T').i32(1).u8(2).u32(9).0;
        assert_eq!(
            decode(&restart_only),
            Ok(PgOutput::Truncate {
                cascade: false,
                restart_identity: true,
                relations: vec![9]
            })
        );
    }

    #[test]
    fn logical_message() {
        assert_eq!(
            decode(&message()),
            Ok(PgOutput::Message {
                transactional: true,
                lsn: Lsn(0x99),
                prefix: "pgfleet".into(),
                content: Bytes::from_static(b"a\0b")
            })
        );
        let plain = Msg::tag(b'M').u8(0).u64(1).str("p").i32(0).0;
        assert_eq!(
            decode(&plain),
            Ok(PgOutput::Message {
                transactional: false,
                lsn: Lsn(1),
                prefix: "p".into(),
                content: Bytes::new()
            })
        );
    }

    #[test]
    fn keepalive_envelope() {
        assert_eq!(
            decode_copy_data(&keepalive()),
            Ok(ReplicationMessage::PrimaryKeepalive {
                wal_end: Lsn(0x1_0000_0010),
                server_time: 123_456,
                reply_requested: true
            })
        );
        let no_reply = Msg::tag(b'k').u64(1).i64(2).u8(0).0;
        assert!(matches!(
            decode_copy_data(&no_reply),
            Ok(ReplicationMessage::PrimaryKeepalive {
                reply_requested: false,
                ..
            })
        ));
    }

    #[test]
    fn xlogdata_envelope_carries_a_pgoutput_message() {
        let Ok(ReplicationMessage::XLogData {
            wal_start,
            wal_end,
            server_time,
            data,
        }) = decode_copy_data(&xlogdata())
        else {
            panic!("not XLogData");
        };
        assert_eq!((wal_start, wal_end, server_time), (Lsn(0x10), Lsn(0x20), 99));
        assert_eq!(&data[..], &begin()[..]);
        assert!(matches!(decode(&data), Ok(PgOutput::Begin { xid: 742, .. })));

        // An XLogData with an empty payload is well formed as an envelope.
        let empty = Msg::tag(b'w').u64(1).u64(2).i64(3).0;
        assert!(matches!(
            decode_copy_data(&empty),
            Ok(ReplicationMessage::XLogData { data, .. }) if data.is_empty()
        ));
    }

    #[test]
    fn standby_status_update_layout() {
        let msg = standby_status_update(Lsn(0x0102_0304_0506_0708), Lsn(0x10), Lsn(0x20), -2, true);
        assert_eq!(msg.len(), 34);
        assert_eq!(msg[0], b'r');
        assert_eq!(&msg[1..9], &[1, 2, 3, 4, 5, 6, 7, 8]);
        assert_eq!(&msg[9..17], &0x10u64.to_be_bytes());
        assert_eq!(&msg[17..25], &0x20u64.to_be_bytes());
        assert_eq!(&msg[25..33], &(-2i64).to_be_bytes());
        assert_eq!(msg[33], 1);
        assert_eq!(standby_status_update(Lsn(0), Lsn(0), Lsn(0), 0, false)[33], 0);
    }

    #[test]
    fn empty_and_unknown_types() {
        assert_eq!(decode(&[]), Err(DecodeError::Empty));
        assert_eq!(decode_copy_data(&[]), Err(DecodeError::Empty));
        assert_eq!(decode(b"S"), Err(DecodeError::UnknownMessage(b'S')));
        assert_eq!(decode_copy_data(b"x"), Err(DecodeError::UnknownCopyData(b'x')));
    }

    #[test]
    fn every_truncation_of_every_message_is_an_error() {
        let mut messages = all_pgoutput();
        messages.push(keepalive());
        for msg in messages {
            let is_envelope = msg[0] == b'k';
            for cut in 0..msg.len() {
                let prefix = &msg[..cut];
                let result = if is_envelope {
                    decode_copy_data(prefix).map(|_| ())
                } else {
                    decode(prefix).map(|_| ())
                };
                assert!(result.is_err(), "prefix {prefix:?} of {msg:?} decoded");
            }
        }
        // XLogData's payload is open-ended, so only its header can be cut short.
        let xlog = xlogdata();
        for cut in 0..25 {
            assert!(decode_copy_data(&xlog[..cut]).is_err(), "cut {cut}");
        }
    }

    #[test]
    fn trailing_bytes_are_an_error() {
        let mut messages = all_pgoutput();
        messages.push(keepalive());
        for mut msg in messages {
            msg.push(0);
            let result = if msg[0] == b'k' {
                decode_copy_data(&msg).map(|_| ())
            } else {
                decode(&msg).map(|_| ())
            };
            assert!(
                matches!(result, Err(DecodeError::TrailingBytes { count: 1, .. })),
                "{msg:?}: {result:?}"
            );
        }
    }

    #[test]
    fn malformed_fields() {
        let bad_kind = Msg::tag(b'I').u32(1).u8(b'N').i16(1).u8(b'x').0;
        assert!(matches!(
            decode(&bad_kind),
            Err(DecodeError::UnknownColumnKind { kind: b'x', .. })
        ));
        let negative_len = Msg::tag(b'I').u32(1).u8(b'N').i16(1).u8(b't').i32(-1).0;
        assert!(matches!(
            decode(&negative_len),
            Err(DecodeError::NegativeLength { value: -1, .. })
        ));
        let negative_cols = Msg::tag(b'I').u32(1).u8(b'N').i16(-3).0;
        assert!(matches!(
            decode(&negative_cols),
            Err(DecodeError::NegativeLength { .. })
        ));
        let huge_len = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(i32::MAX)
            .raw(b"ab")
            .0;
        assert!(matches!(decode(&huge_len), Err(DecodeError::Truncated { .. })));
        let huge_truncate = Msg::tag(b'T').i32(i32::MAX).u8(0).u32(1).0;
        assert!(matches!(
            decode(&huge_truncate),
            Err(DecodeError::Truncated { .. })
        ));
        let negative_truncate = Msg::tag(b'T').i32(-1).u8(0).0;
        assert!(matches!(
            decode(&negative_truncate),
            Err(DecodeError::NegativeLength { .. })
        ));
        let bad_utf8 = Msg::tag(b'I')
            .u32(1)
            .u8(b'N')
            .i16(1)
            .u8(b't')
            .i32(1)
            .raw(&[0xff])
            .0;
        assert!(matches!(decode(&bad_utf8), Err(DecodeError::InvalidUtf8 { .. })));
        let bad_name = Msg::tag(b'O').u64(1).raw(&[0xc3, 0x28, 0]).0;
        assert!(matches!(decode(&bad_name), Err(DecodeError::InvalidUtf8 { .. })));
        let unterminated = Msg::tag(b'Y').u32(1).str("ns").raw(b"name").0;
        assert!(matches!(
            decode(&unterminated),
            Err(DecodeError::UnterminatedString { .. })
        ));
        let insert_without_n = Msg::tag(b'I').u32(1).u8(b'K').i16(0).0;
        assert!(matches!(
            decode(&insert_without_n),
            Err(DecodeError::UnexpectedMarker { found: b'K', .. })
        ));
        let update_bad_marker = Msg::tag(b'U').u32(1).u8(b'X').i16(0).0;
        assert!(matches!(
            decode(&update_bad_marker),
            Err(DecodeError::UnexpectedMarker { found: b'X', .. })
        ));
        let update_two_olds = Msg::tag(b'U').u32(1).u8(b'K').i16(0).u8(b'O').i16(0).0;
        assert!(matches!(
            decode(&update_two_olds),
            Err(DecodeError::UnexpectedMarker { found: b'O', .. })
        ));
        let delete_with_new = Msg::tag(b'D').u32(1).u8(b'N').i16(0).0;
        assert!(matches!(
            decode(&delete_with_new),
            Err(DecodeError::UnexpectedMarker { found: b'N', .. })
        ));
    }

    #[test]
    fn errors_render() {
        let err = decode(&insert()[..6]).expect_err("truncated");
        assert_eq!(
            err.to_string(),
            "Insert message truncated: needed 2 bytes for tuple column count, 0 left"
        );
        assert_eq!(
            DecodeError::UnknownMessage(b'S').to_string(),
            "unknown pgoutput message type 'S' (0x53)"
        );
    }

    /// Random bytes behind every message type byte, and random mutations of valid messages: whatever the
    /// result, decoding must return rather than panic or allocate without bound.
    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64*: deterministic, so a failure reproduces.
            state ^= state >> 12;
            state ^= state << 25;
            state ^= state >> 27;
            state.wrapping_mul(0x2545_F491_4F6C_DD1D)
        };
        let tags = b"BCORYIUDTMwkSE";
        for round in 0..20_000 {
            let len = usize::try_from(next() % 64).unwrap_or(0);
            let mut buf: Vec<u8> = (0..len).map(|_| next().to_be_bytes()[0]).collect();
            if let Some(first) = buf.first_mut() {
                *first = tags[round % tags.len()];
            }
            let _ = decode(&buf);
            let _ = decode_copy_data(&buf);
        }
        for msg in all_pgoutput() {
            for _ in 0..2_000 {
                let mut mutated = msg.clone();
                let flips = 1 + next() % 3;
                for _ in 0..flips {
                    let at = usize::try_from(next() % mutated.len() as u64).unwrap_or(0);
                    mutated[at] = next().to_be_bytes()[0];
                }
                let _ = decode(&mutated);
            }
        }
    }
}
