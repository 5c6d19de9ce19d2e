//! The tokio-postgres side: a node's TLS settings as a `MakeTlsConnect`, so that deadpool-postgres control
//! connections and forward mode's SQL connections use the same rustls configuration and error words as the
//! proxy's own connections.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect, TlsStream};
use tokio_rustls::TlsConnector;

use super::{NodeTls, TlsConnectError};

/// A node's TLS settings as a tokio-postgres connector (`MakeTlsConnect`), for deadpool-postgres pools
/// and plain `tokio_postgres::Config::connect`. tokio-postgres sends the SSLRequest itself, following the
/// `sslmode` [`NodeTls::postgres`] set; this performs the handshake with the node's rustls configuration.
#[derive(Clone)]
pub struct PgTls(pub(super) Arc<NodeTls>);

impl MakeTlsConnect<tokio_postgres::Socket> for PgTls {
    type Stream = PgTlsStream;
    type TlsConnect = PgTls;
    type Error = TlsConnectError;

    fn make_tls_connect(&mut self, _domain: &str) -> Result<PgTls, TlsConnectError> {
        // The name checked is the host of the node's address, as for the proxy's own connections.
        Ok(self.clone())
    }
}

impl TlsConnect<tokio_postgres::Socket> for PgTls {
    type Stream = PgTlsStream;
    type Error = TlsConnectError;
    type Future = Pin<Box<dyn Future<Output = Result<PgTlsStream, TlsConnectError>> + Send>>;

    fn connect(self, stream: tokio_postgres::Socket) -> Self::Future {
        Box::pin(async move {
            let Some(config) = self.0.config.clone() else {
                // Unreachable in practice: `disable` sets sslmode=disable, so tokio-postgres never asks.
                return Err(TlsConnectError::NotSupported {
                    setting: self.0.setting(),
                });
            };
            let tls = TlsConnector::from(config)
                .connect(self.0.name.clone(), stream)
                .await
                .map_err(|e| self.0.handshake_error(&e))?;
            Ok(PgTlsStream(Box::new(tls)))
        })
    }
}

/// A tokio-postgres connection's TLS stream.
pub struct PgTlsStream(Box<tokio_rustls::client::TlsStream<tokio_postgres::Socket>>);

impl TlsStream for PgTlsStream {
    fn channel_binding(&self) -> ChannelBinding {
        // SCRAM channel binding is not offered (the proxy's own connections do not offer it either).
        ChannelBinding::none()
    }
}

impl AsyncRead for PgTlsStream {
    fn poll_read(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_read(cx, buf)
    }
}

impl AsyncWrite for PgTlsStream {
    fn poll_write(self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().0.as_mut()).poll_shutdown(cx)
    }
}
