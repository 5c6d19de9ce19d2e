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
pub(crate) use streamed::{decode_streamed, split_streamed};

mod streamed;

/// Why bytes could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum DecodeError {
    /// A message had no bytes at all, not even its type byte.
    #[error("empty replication message")]
    Empty,
    /// The CopyData payload is neither XLogData ('w') nor a primary keepalive ('k').
    #[error("unknown replication CopyData message type '{}' (0x{:02x})", char::from(*.0), .0)]
    UnknownCopyData(u8),
    /// The pgoutput message type is not one of protocol versions 1 and 2.
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
    Text(Text),
    /// 'b': the value in the type's binary format (only with the `binary` option, which we do not use).
    Binary(Bytes),
}

/// A column value in text format. Checked to be UTF-8 once, when decoded, and kept as a slice of the message
/// it arrived in: a bulk change decodes millions of values, and one allocation per value was most of
/// forwarding's own CPU time.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct Text(Bytes);

impl Text {
    /// The value, if it is UTF-8.
    fn checked(bytes: Bytes) -> Option<Text> {
        std::str::from_utf8(&bytes).is_ok().then_some(Text(bytes))
    }

    /// The value's bytes.
    pub(crate) fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// The value as text. It was checked when made (the only ways in are [`Text::checked`] and a `&str`), so
    /// the empty fallback is never taken; checking again costs a pass over the bytes, and only the row-wise
    /// statements, which format the value anyway, ask for it.
    pub(crate) fn as_str(&self) -> &str {
        std::str::from_utf8(&self.0).unwrap_or_default()
    }
}

impl From<&str> for Text {
    fn from(text: &str) -> Self {
        Text(Bytes::copy_from_slice(text.as_bytes()))
    }
}

/// The values of one row, one [`Datum`] per column of its [`Relation`].
pub(crate) type Tuple = Vec<Datum>;

/// A pgoutput message (protocol version 1, and the streaming messages of version 2).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum PgOutput {
    /// 'S': a block of a large transaction's changes follows, sent while the transaction still runs; its
    /// messages carry the (sub)transaction's xid ([`decode_streamed`]) until [`PgOutput::StreamStop`].
    StreamStart {
        /// The top-level transaction id.
        xid: u32,
        /// The transaction's first block in this stream.
        first: bool,
    },
    /// 'E': the block ends.
    StreamStop,
    /// 'c': a streamed transaction commits (sent outside blocks).
    StreamCommit {
        /// The top-level transaction id.
        xid: u32,
        /// The LSN of the commit record.
        commit_lsn: Lsn,
        /// The end LSN of the transaction: the position to confirm once it is applied.
        end_lsn: Lsn,
        /// Commit time, microseconds since 2000-01-01.
        commit_time: i64,
    },
    /// 'A': a streamed transaction, or one of its subtransactions (`subxid` differs), aborted.
    StreamAbort {
        /// The top-level transaction id.
        xid: u32,
        /// The aborted (sub)transaction; equal to `xid` for the whole transaction.
        subxid: u32,
    },
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
            PgOutput::StreamStart { .. } => "stream start",
            PgOutput::StreamStop => "stream stop",
            PgOutput::StreamCommit { .. } => "stream commit",
            PgOutput::StreamAbort { .. } => "stream abort",
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
    /// The buffer `buf` lies in: values are slices of it, not copies.
    source: &'a Bytes,
}

impl<'a> Reader<'a> {
    /// A reader of `buf`, which lies in `source`.
    fn new(source: &'a Bytes, buf: &'a [u8], message: &'static str) -> Self {
        Self { buf, message, source }
    }

    /// `bytes`, a part of what this reader reads, as a slice of its source.
    fn share(&self, bytes: &[u8]) -> Bytes {
        self.source.slice_ref(bytes)
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
/// The XLogData payload is a slice of `body`, not a copy.
pub(crate) fn decode_copy_data(body: &Bytes) -> Result<ReplicationMessage, DecodeError> {
    let (&tag, rest) = body.split_first().ok_or(DecodeError::Empty)?;
    match tag {
        b'w' => {
            let mut r = Reader::new(body, rest, "XLogData");
            let wal_start = r.lsn("WAL start")?;
            let wal_end = r.lsn("WAL end")?;
            let server_time = r.i64("server time")?;
            let payload = r.rest();
            let data = r.share(payload);
            Ok(ReplicationMessage::XLogData {
                wal_start,
                wal_end,
                server_time,
                data,
            })
        }
        b'k' => {
            let mut r = Reader::new(body, rest, "primary keepalive");
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

/// Decodes one pgoutput message outside a streamed block, where change messages carry no xid.
/// Row values are slices of `data`, not copies.
pub(crate) fn decode(data: &Bytes) -> Result<PgOutput, DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    decode_body(data, tag, rest)
}

fn decode_body(data: &Bytes, tag: u8, rest: &[u8]) -> Result<PgOutput, DecodeError> {
    let reader = |message| Reader::new(data, rest, message);
    match tag {
        b'S' => streamed::decode_stream_start(reader("Stream Start")),
        b'E' => reader("Stream Stop").finish().map(|()| PgOutput::StreamStop),
        b'c' => streamed::decode_stream_commit(reader("Stream Commit")),
        b'A' => streamed::decode_stream_abort(reader("Stream Abort")),
        b'B' => decode_begin(reader("Begin")),
        b'C' => decode_commit(reader("Commit")),
        b'O' => decode_origin(reader("Origin")),
        b'R' => decode_relation(reader("Relation")),
        b'Y' => decode_type(reader("Type")),
        b'I' => decode_insert(reader("Insert")),
        b'U' => decode_update(reader("Update")),
        b'D' => decode_delete(reader("Delete")),
        b'T' => decode_truncate(reader("Truncate")),
        b'M' => decode_message(reader("Message")),
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
                Datum::Text(Text::checked(r.share(bytes)).ok_or(DecodeError::InvalidUtf8 {
                    message: r.message,
                    field: "text value",
                })?)
            }
            b'b' => {
                let len = r.count32("binary value length")?;
                let bytes = r.take(len, "binary value")?;
                Datum::Binary(r.share(bytes))
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
    let content = r.take(len, "content")?;
    let content = r.share(content);
    r.finish()?;
    Ok(PgOutput::Message {
        transactional: flags & 1 != 0,
        lsn,
        prefix,
        content,
    })
}

#[cfg(test)]
mod tests;
