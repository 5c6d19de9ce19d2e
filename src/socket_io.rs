//! The futures the request path reads and writes its sockets with: a read into a `BytesMut`'s spare room, a
//! write of a whole slice, a flush. They do what tokio's `read_buf`, `write_all` and `flush` do, with one
//! difference that matters for speed: their `poll` is always inlined into the caller's state machine.
//!
//! Each transaction polls these a few times, inside the session's large state machine. Whether the compiler
//! inlines tokio's own futures there depends on the release build's execution profile, and profiles made from
//! the same code differ: some builds called them out of line and paid about 460 instructions per transaction
//! for it (docs/performance.md, twenty-seventh and twenty-eighth passes). An always-inlined `poll` takes that
//! choice away from the profile.
//!
//! [`crate::frontend::stream::ClientStream`] and [`crate::backend::tls::NodeStream`] expose them as inherent
//! `read_buf`, `write_all` and `flush` methods, which take precedence over tokio's extension traits of the
//! same names, so every read and write of a client or node connection goes through them.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll, ready};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite};

/// Reads once into the spare room of a buffer (a full one grows first, as `BytesMut` does). Resolves to the number of
/// bytes read; 0 means the peer closed its side. Cancel safe, like tokio's `read_buf`: nothing is read
/// unless the future completes.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct ReadBuf<'a, S> {
    stream: &'a mut S,
    buf: &'a mut BytesMut,
}

impl<'a, S: AsyncRead + Unpin> ReadBuf<'a, S> {
    #[inline(always)]
    pub(crate) fn new(stream: &'a mut S, buf: &'a mut BytesMut) -> Self {
        ReadBuf { stream, buf }
    }
}

impl<S: AsyncRead + Unpin> Future for ReadBuf<'_, S> {
    type Output = io::Result<usize>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let me = self.get_mut();
        tokio_util::io::poll_read_buf(Pin::new(&mut *me.stream), cx, me.buf)
    }
}

/// Writes all of a slice. Not cancel safe (neither is tokio's `write_all`): dropped midway, part of the slice
/// may have been written.
#[must_use = "futures do nothing unless polled"]
pub(crate) struct WriteAll<'a, S> {
    stream: &'a mut S,
    bytes: &'a [u8],
}

impl<'a, S: AsyncWrite + Unpin> WriteAll<'a, S> {
    #[inline(always)]
    pub(crate) fn new(stream: &'a mut S, bytes: &'a [u8]) -> Self {
        WriteAll { stream, bytes }
    }
}

impl<S: AsyncWrite + Unpin> Future for WriteAll<'_, S> {
    type Output = io::Result<()>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let me = self.get_mut();
        while !me.bytes.is_empty() {
            let n = ready!(Pin::new(&mut *me.stream).poll_write(cx, me.bytes))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            me.bytes = me.bytes.get(n..).unwrap_or_default();
        }
        Poll::Ready(Ok(()))
    }
}

/// Flushes what the stream buffers itself (TLS records not sent yet; nothing for a plain socket).
#[must_use = "futures do nothing unless polled"]
pub(crate) struct Flush<'a, S> {
    stream: &'a mut S,
}

impl<'a, S: AsyncWrite + Unpin> Flush<'a, S> {
    #[inline(always)]
    pub(crate) fn new(stream: &'a mut S) -> Self {
        Flush { stream }
    }
}

impl<S: AsyncWrite + Unpin> Future for Flush<'_, S> {
    type Output = io::Result<()>;

    #[inline(always)]
    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut *self.get_mut().stream).poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A duplex pipe with a tiny buffer makes every write partial and every read short, so the loops and
    /// the buffer's growth are exercised the way a busy socket exercises them.
    #[tokio::test]
    async fn a_write_larger_than_the_pipe_arrives_whole_through_short_reads() {
        let (mut a, mut b) = tokio::io::duplex(7);
        let sent: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let expected = sent.clone();
        let writer = tokio::spawn(async move {
            WriteAll::new(&mut a, &sent).await.expect("write");
            Flush::new(&mut a).await.expect("flush");
            a.shutdown().await.expect("shutdown");
        });
        let mut got = BytesMut::with_capacity(64);
        let mut reads = 0;
        loop {
            if got.capacity() == got.len() {
                got.reserve(64);
            }
            let n = ReadBuf::new(&mut b, &mut got).await.expect("read");
            if n == 0 {
                break;
            }
            assert!(n <= 7, "a read returned {n} bytes from a 7-byte pipe");
            reads += 1;
        }
        writer.await.expect("writer");
        assert_eq!(&got[..], &expected[..]);
        assert!(reads >= 10_000 / 7, "{reads} reads");
    }

    #[tokio::test]
    async fn a_write_to_a_closed_peer_fails_and_a_read_of_a_closed_one_returns_zero() {
        let (mut a, b) = tokio::io::duplex(64);
        drop(b);
        let err = WriteAll::new(&mut a, b"hello").await.expect_err("peer is gone");
        assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);

        let (mut a, mut b) = tokio::io::duplex(64);
        a.shutdown().await.expect("shutdown");
        let mut buf = BytesMut::with_capacity(16);
        assert_eq!(ReadBuf::new(&mut b, &mut buf).await.expect("read"), 0);
        assert!(buf.is_empty());
    }
}
