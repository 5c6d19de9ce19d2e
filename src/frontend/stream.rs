//! The client's byte stream: plain TCP, TLS over it, or pgfleet's Unix-domain socket, behind one type.

use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpStream, UnixStream};
use tokio_rustls::server::TlsStream;

use crate::socket_io;

/// A client connection, encrypted or not.
pub(crate) enum ClientStream {
    /// Plain TCP.
    Plain(TcpStream),
    /// TLS (boxed: the TLS state is large and most clients are plain).
    Tls(Box<TlsStream<TcpStream>>),
    /// A local process through `listen.unix_socket_dir` (never TLS, as with PostgreSQL's own socket).
    Local(UnixStream),
}

impl ClientStream {
    /// A read into `buf`'s spare room (see [`crate::socket_io`]); shadows tokio's `AsyncReadExt::read_buf`.
    #[inline(always)]
    pub(crate) fn read_buf<'a>(&'a mut self, buf: &'a mut BytesMut) -> socket_io::ReadBuf<'a, Self> {
        socket_io::ReadBuf::new(self, buf)
    }

    /// A write of all of `bytes`; shadows tokio's `AsyncWriteExt::write_all`.
    #[inline(always)]
    pub(crate) fn write_all<'a>(&'a mut self, bytes: &'a [u8]) -> socket_io::WriteAll<'a, Self> {
        socket_io::WriteAll::new(self, bytes)
    }

    /// A flush (TLS records held back; nothing for a plain socket); shadows tokio's `AsyncWriteExt::flush`.
    #[inline(always)]
    pub(crate) fn flush(&mut self) -> socket_io::Flush<'_, Self> {
        socket_io::Flush::new(self)
    }
}

impl AsyncRead for ClientStream {
    #[inline]
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Local(s) => Pin::new(s).poll_read(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for ClientStream {
    #[inline]
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Local(s) => Pin::new(s).poll_write(cx, buf),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }

    #[inline]
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Local(s) => Pin::new(s).poll_flush(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }

    #[inline]
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            ClientStream::Plain(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Local(s) => Pin::new(s).poll_shutdown(cx),
            ClientStream::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}
