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

/// The starting capacity of a read buffer.
const INITIAL_CAPACITY: usize = 8 * 1024;
/// The most capacity a buffer keeps once a frame has been taken from it: a large message must not stay
/// allocated for the rest of the session (see [`FrameBuffer::let_go_of_large`]).
const KEPT_CAPACITY: usize = 256 * 1024;

/// Room left after a frame being read (see [`FrameBuffer::next_frame`]).
const FRAME_SLACK: usize = 64;

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
            buf: BytesMut::with_capacity(INITIAL_CAPACITY),
            limit,
        }
    }

    /// Where socket reads go (use with `read_buf`, which is cancel safe).
    pub fn read_target(&mut self) -> &mut BytesMut {
        let spare = self.buf.capacity() - self.buf.len();
        if spare < 4096 && !self.rest_of_frame_fits(spare) {
            self.buf.reserve(16 * 1024);
        }
        &mut self.buf
    }

    /// Whether the frame being read (its header known) needs no more than `spare` bytes to complete. Its
    /// space was reserved when its length became known; growing a buffer that holds most of a large frame
    /// would copy the frame into an allocation twice its size.
    fn rest_of_frame_fits(&self, spare: usize) -> bool {
        let Some(len) = self
            .buf
            .get(1..5)
            .map(|b| i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
        else {
            return false;
        };
        let total = usize::try_from(len).unwrap_or(0) + 1;
        total > self.buf.len() && total - self.buf.len() <= spare
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
                self.let_go_of_large(len);
                Ok(Some(Frame { kind: raw[0], raw }))
            }
            Some(len) => {
                // A little more than the frame: room for the session to give a Bind's statement a longer
                // name in place (transaction pooling) instead of copying a large frame.
                self.buf.reserve(len - self.buf.len() + FRAME_SLACK);
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
        let block = self.buf.split_to(end).freeze();
        self.let_go_of_large(end);
        Ok(Some(block))
    }

    /// After `taken` bytes were split off: when the allocation they shared with the rest of the buffer is
    /// large, moves what is left into a buffer of the usual size. Otherwise the rest would keep the whole
    /// allocation alive after the frame is dropped (and a later reserve would reuse it), so one large
    /// message would stay allocated for the rest of the session.
    fn let_go_of_large(&mut self, taken: usize) {
        if taken + self.buf.capacity() > KEPT_CAPACITY && self.buf.len() <= KEPT_CAPACITY / 2 {
            let mut fresh = BytesMut::with_capacity(INITIAL_CAPACITY.max(self.buf.len()));
            fresh.extend_from_slice(&self.buf);
            self.buf = fresh;
        }
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
    fn a_large_frame_leaves_a_buffer_of_the_usual_size() {
        let mut fb = FrameBuffer::new(1 << 30);
        let big = build(b'Q', &vec![b'x'; 4 * KEPT_CAPACITY]);
        let small = build(b'S', b"");
        fb.read_target().extend_from_slice(&big);
        fb.read_target().extend_from_slice(&small);
        let frame = fb.next_frame().expect("valid").expect("whole");
        assert_eq!(frame.raw, big);
        assert!(fb.buf.capacity() <= KEPT_CAPACITY, "{}", fb.buf.capacity());
        drop(frame);
        assert_eq!(fb.next_frame().expect("valid").expect("whole").raw, small);
        // Small frames do not make the buffer move.
        let kept = fb.buf.as_ptr();
        fb.read_target().extend_from_slice(&small);
        fb.next_frame().expect("valid").expect("whole");
        assert_eq!(fb.buf.as_ptr(), kept.wrapping_add(small.len()));
    }

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
