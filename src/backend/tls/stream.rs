//! A raw protocol connection to a node, plain TCP, TLS or a Unix-domain socket, with the non-blocking reads
//! the pool and sessions use to look at an idle connection.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use futures_util::FutureExt;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};

/// A raw protocol connection to a node: plain TCP, TLS over it, or a Unix-domain socket.
pub enum NodeStream {
    /// No TLS (`disable`, or `prefer` with a server that refused).
    Plain(TcpStream),
    /// TLS over TCP.
    Tls(Box<tokio_rustls::client::TlsStream<TcpStream>>),
    /// A server on the same machine, reached through its socket file: no TCP work in either kernel path.
    Local(UnixStream),
}

impl NodeStream {
    /// Whether the connection is encrypted.
    pub fn is_tls(&self) -> bool {
        matches!(self, NodeStream::Tls(_))
    }

    /// Reads what has already arrived without waiting; `WouldBlock` when nothing has. TLS records that carry
    /// no data (session tickets) are consumed and count as nothing.
    pub fn try_read_buf(&mut self, buf: &mut BytesMut) -> io::Result<usize> {
        match self {
            NodeStream::Plain(s) => s.try_read_buf(buf),
            NodeStream::Local(s) => s.try_read_buf(buf),
            // Polled once with a no-op waker: nothing else waits on this stream while the owner calls this,
            // and the owner's next real read registers its own waker again.
            NodeStream::Tls(s) => s
                .read_buf(buf)
                .now_or_never()
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())),
        }
    }

    /// Moves the socket's readiness to the calling thread's event loop: a duplicate of its descriptor is
    /// registered here, and the old one leaves the other loop as it closes. The connection itself (and any
    /// TLS state) is untouched. A connection used from a thread other than the one whose loop watches it
    /// works, but every wake-up then crosses threads (see `frontend::workers`).
    pub fn move_here(&mut self) -> io::Result<()> {
        let tcp = match self {
            NodeStream::Plain(s) => s,
            NodeStream::Tls(s) => s.get_mut().0,
            NodeStream::Local(s) => {
                let fd = std::os::fd::AsFd::as_fd(&*s).try_clone_to_owned()?;
                *s = UnixStream::from_std(std::os::unix::net::UnixStream::from(fd))?;
                return Ok(());
            }
        };
        let fd = std::os::fd::AsFd::as_fd(&*tcp).try_clone_to_owned()?;
        let here = TcpStream::from_std(std::net::TcpStream::from(fd))?;
        *tcp = here;
        Ok(())
    }

    /// [`NodeStream::try_read_buf`] into a slice.
    pub fn try_read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            NodeStream::Plain(s) => s.try_read(buf),
            NodeStream::Local(s) => s.try_read(buf),
            NodeStream::Tls(s) => s
                .read(buf)
                .now_or_never()
                .unwrap_or_else(|| Err(io::ErrorKind::WouldBlock.into())),
        }
    }
}

impl AsyncRead for NodeStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Local(s) => Pin::new(s).poll_read(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for NodeStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Local(s) => Pin::new(s).poll_write(cx, buf),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Local(s) => Pin::new(s).poll_flush(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            NodeStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Local(s) => Pin::new(s).poll_shutdown(cx),
            NodeStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
