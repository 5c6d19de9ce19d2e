//! Protocol version 2's streamed transactions: the blocks a large transaction comes in while it runs (Stream
//! Start and Stop), their ends (Stream Commit and Abort), and the messages inside a block, which carry the
//! xid of the (sub)transaction they belong to after their type byte.

use bytes::Bytes;

use super::{DecodeError, PgOutput, Reader, decode_body};

/// Takes apart one message inside a streamed block (between [`PgOutput::StreamStart`] and
/// [`PgOutput::StreamStop`]): a change, description or message there carries the xid of the (sub)transaction
/// it belongs to after its type byte; the block's end carries none, nor does the Origin a transaction
/// replicated from elsewhere has right after its first Stream Start. Returns that xid, the type byte, and the
/// fields after the xid: the message as it would come outside a block is the type byte followed by them.
pub(crate) fn split_streamed(data: &[u8]) -> Result<(Option<u32>, u8, &[u8]), DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    if matches!(tag, b'E' | b'S' | b'c' | b'A' | b'O') {
        return Ok((None, tag, rest));
    }
    let (xid, fields) = rest.split_first_chunk::<4>().ok_or(DecodeError::Truncated {
        message: "streamed change",
        field: "xid",
        needed: 4,
        available: rest.len(),
    })?;
    Ok((Some(u32::from_be_bytes(*xid)), tag, fields))
}

/// Decodes one message inside a streamed block, with the xid it carries (see [`split_streamed`]).
pub(crate) fn decode_streamed(data: &Bytes) -> Result<(Option<u32>, PgOutput), DecodeError> {
    let (xid, tag, fields) = split_streamed(data)?;
    decode_body(data, tag, fields).map(|m| (xid, m))
}

pub(super) fn decode_stream_start(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let xid = r.u32("xid")?;
    let first = r.u8("first segment flag")? == 1;
    r.finish()?;
    Ok(PgOutput::StreamStart { xid, first })
}

pub(super) fn decode_stream_commit(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let xid = r.u32("xid")?;
    let _flags = r.u8("flags")?;
    let commit_lsn = r.lsn("commit LSN")?;
    let end_lsn = r.lsn("end LSN")?;
    let commit_time = r.i64("commit time")?;
    r.finish()?;
    Ok(PgOutput::StreamCommit {
        xid,
        commit_lsn,
        end_lsn,
        commit_time,
    })
}

pub(super) fn decode_stream_abort(mut r: Reader<'_>) -> Result<PgOutput, DecodeError> {
    let xid = r.u32("xid")?;
    let subxid = r.u32("subtransaction xid")?;
    // Protocol version 4 adds the abort's LSN and time (parallel apply); versions 2 and 3 end here.
    Ok(PgOutput::StreamAbort { xid, subxid })
}
