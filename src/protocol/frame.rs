//! Framing of typed protocol messages: a type byte, a big-endian length that counts itself, then the body.
//!
//! [`FrameBuffer`] accumulates bytes read from a socket and hands out whole frames without copying their
//! bodies; the proxy forwards most frames as the same bytes it received.

use bytes::{Buf, Bytes, BytesMut};

/// Why bytes could not be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length field is below its own size.
    #[error("invalid message length {0} for message type '{1}'")]
    BadLength(i32, char),
    /// The length field is above the configured limit.
    #[error(
        "message of type '{kind}' is {len} bytes, over the limit of {limit} bytes (listen.max_message_size)"
    )]
    TooLarge {
        /// Message type byte.
        kind: char,
        /// Claimed length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
}

/// One whole message: its type byte and the complete encoded bytes (header included).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte, e.g. b'Q'.
    pub kind: u8,
    /// Header and body, exactly as on the wire.
    pub raw: Bytes,
}

impl Frame {
    /// The body without type byte and length.
    pub fn body(&self) -> &[u8] {
        &self.raw[5..]
    }
}

/// A growable read buffer that yields whole frames.
#[derive(Debug)]
pub struct FrameBuffer {
    buf: BytesMut,
    limit: usize,
}

impl FrameBuffer {
    /// A buffer refusing frames larger than `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            buf: BytesMut::with_capacity(8 * 1024),
            limit,
        }
    }

    /// Where socket reads go (use with `read_buf`, which is cancel safe).
    pub fn read_target(&mut self) -> &mut BytesMut {
        if self.buf.capacity() - self.buf.len() < 4096 {
            self.buf.reserve(16 * 1024);
        }
        &mut self.buf
    }

    /// Bytes buffered but not yet taken.
    pub fn buffered(&self) -> usize {
        self.buf.len()
    }

    /// Takes the next whole frame, if one is buffered.
    pub fn next_frame(&mut self) -> Result<Option<Frame>, FrameError> {
        match frame_len(&self.buf, self.limit)? {
            Some(len) if self.buf.len() >= len => {
                let raw = self.buf.split_to(len).freeze();
                Ok(Some(Frame { kind: raw[0], raw }))
            }
            Some(len) => {
                self.buf.reserve(len - self.buf.len());
                Ok(None)
            }
            None => Ok(None),
        }
    }

    /// Takes every whole frame at the front of the buffer as one block of bytes, calling `inspect` with
    /// each frame's type and body. Used to stream server output without splitting it into frames.
    pub fn take_whole_frames(
        &mut self,
        mut inspect: impl FnMut(u8, &[u8]),
    ) -> Result<Option<Bytes>, FrameError> {
        let mut end = 0;
        while let Some(len) = frame_len(&self.buf[end..], self.limit)? {
            if self.buf.len() - end < len {
                self.buf.reserve(len - (self.buf.len() - end));
                break;
            }
            inspect(self.buf[end], &self.buf[end + 5..end + len]);
            end += len;
        }
        if end == 0 {
            return Ok(None);
        }
        Ok(Some(self.buf.split_to(end).freeze()))
    }

    /// Drops everything buffered (after an unrecoverable error).
    pub fn clear(&mut self) {
        self.buf.clear();
    }
}

/// The total length of the frame at the front of `buf`, if its header is complete.
fn frame_len(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < 5 {
        return Ok(None);
    }
    let kind = buf[0];
    let len = (&buf[1..5]).get_i32();
    if len < 4 {
        return Err(FrameError::BadLength(len, kind as char));
    }
    let total = len as usize + 1;
    if total > limit {
        return Err(FrameError::TooLarge {
            kind: kind as char,
            len: total,
            limit,
        });
    }
    Ok(Some(total))
}

/// Builds a frame from a type byte and a body.
pub fn build(kind: u8, body: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(body.len() + 5);
    out.extend_from_slice(&[kind]);
    out.extend_from_slice(&((body.len() + 4) as i32).to_be_bytes());
    out.extend_from_slice(body);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_split_across_reads() {
        let mut fb = FrameBuffer::new(1024);
        let q = build(b'Q', b"select 1\0");
        fb.read_target().extend_from_slice(&q[..3]);
        assert_eq!(fb.next_frame(), Ok(None));
        fb.read_target().extend_from_slice(&q[3..]);
        fb.read_target().extend_from_slice(&build(b'S', b""));
        let f = fb.next_frame().expect("ok").expect("frame");
        assert_eq!(f.kind, b'Q');
        assert_eq!(f.body(), b"select 1\0");
        assert_eq!(fb.next_frame().expect("ok").expect("frame").kind, b'S');
        assert_eq!(fb.buffered(), 0);
    }

    #[test]
    fn bad_and_oversized_lengths() {
        let mut fb = FrameBuffer::new(64);
        fb.read_target().extend_from_slice(&[b'Q', 0, 0, 0, 2]);
        assert_eq!(fb.next_frame(), Err(FrameError::BadLength(2, 'Q')));
        let mut fb = FrameBuffer::new(64);
        fb.read_target().extend_from_slice(&[b'Q', 0, 0, 1, 0]);
        assert!(matches!(fb.next_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn whole_frames_block() {
        let mut fb = FrameBuffer::new(1024);
        let a = build(b'D', b"abc");
        let z = build(b'Z', b"I");
        fb.read_target().extend_from_slice(&a);
        fb.read_target().extend_from_slice(&z);
        fb.read_target().extend_from_slice(&z[..2]);
        let mut kinds = Vec::new();
        let block = fb
            .take_whole_frames(|k, _| kinds.push(k))
            .expect("ok")
            .expect("block");
        assert_eq!(kinds, vec![b'D', b'Z']);
        assert_eq!(block.len(), a.len() + z.len());
        assert_eq!(fb.buffered(), 2);
    }
}
