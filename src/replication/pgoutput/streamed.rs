//! Protocol version 2's streamed transactions: the blocks a large transaction comes in while it runs (Stream
//! Start and Stop), their ends (Stream Commit and Abort), and the messages inside a block, which carry the
//! xid of the (sub)transaction they belong to after their type byte.

use bytes::Bytes;

use super::{DecodeError, PgOutput, Reader, decode_body};

/// Decodes one message inside a streamed block (between [`PgOutput::StreamStart`] and
/// [`PgOutput::StreamStop`]): a change, description or message there carries the xid of the (sub)transaction
/// it belongs to after its type byte, returned beside it; the block's end carries none, nor does the Origin
/// a transaction replicated from elsewhere has right after its first Stream Start.
pub(crate) fn decode_streamed(data: &Bytes) -> Result<(Option<u32>, PgOutput), DecodeError> {
    let (&tag, rest) = data.split_first().ok_or(DecodeError::Empty)?;
    if matches!(tag, b'E' | b'S' | b'c' | b'A' | b'O') {
        return decode_body(data, tag, rest).map(|m| (None, m));
    }
    let mut r = Reader::new(data, rest, "streamed change");
    let xid = r.u32("xid")?;
    decode_body(data, tag, r.buf).map(|m| (Some(xid), m))
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
