//! Accepting clients: one task per connection that negotiates SSL/GSSENC, reads the StartupMessage (or
//! handles a CancelRequest) and hands over to the session.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::stream::ClientStream;
use crate::protocol::messages::ProxyError;
use crate::protocol::startup::{self, StartupPacket};
use crate::proxy::Shared;

/// How long a client may take to send its startup packet (PostgreSQL's authentication_timeout is 60s).
const STARTUP_TIMEOUT: Duration = Duration::from_secs(60);

/// Accepts clients forever.
pub async fn serve(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                let shared = shared.clone();
                tokio::spawn(async move { handle(socket, peer, shared).await });
            }
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Result<StartupPacket, ProxyError>, std::io::Error> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match startup::packet_len(&buf) {
            Err(e) => return Ok(Err(ProxyError::fatal("08P01", e.to_string()))),
            Ok(Some(len)) if buf.len() >= len => {
                return Ok(startup::decode(&buf[..len]).map_err(|e| {
                    let code = if matches!(e, startup::StartupError::Version(..)) {
                        "0A000"
                    } else {
                        "08P01"
                    };
                    ProxyError::fatal(code, e.to_string())
                }));
            }
            _ => {}
        }
        if s.read_buf(&mut buf).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
}

async fn handle(socket: TcpStream, peer: SocketAddr, shared: Arc<Shared>) {
    let _ = socket.set_nodelay(true);
    let result = tokio::time::timeout(STARTUP_TIMEOUT, negotiate(socket, &shared)).await;
    let (mut stream, minor, params) = match result {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "client left during startup");
            return;
        }
        Err(_) => {
            tracing::debug!(%peer, "client did not finish startup in time");
            return;
        }
    };
    if minor > 0 {
        // Newer clients ask for 3.x; PostgreSQL answers with the newest version it speaks and carries on.
        let unrecognized: Vec<&str> = params
            .iter()
            .filter(|(k, _)| k.starts_with("_pq_."))
            .map(|(k, _)| k.as_str())
            .collect();
        let msg = crate::protocol::messages::negotiate_protocol_version(&unrecognized);
        if stream.write_all(&msg).await.is_err() {
            return;
        }
    }
    super::session::run(stream, peer, params, shared).await;
}

/// Runs the pre-session exchange; `None` when the connection was a cancel request or was refused.
async fn negotiate(
    socket: TcpStream,
    shared: &Shared,
) -> std::io::Result<Option<(ClientStream, u16, Vec<(String, String)>)>> {
    let mut stream = ClientStream::Plain(socket);
    let mut tls_done = false;
    let mut gss_done = false;
    loop {
        let packet = match read_packet(&mut stream).await? {
            Ok(p) => p,
            Err(e) => {
                stream.write_all(&e.encode()).await?;
                return Ok(None);
            }
        };
        match packet {
            StartupPacket::Ssl if !tls_done => {
                tls_done = true;
                let ClientStream::Plain(mut tcp) = stream else {
                    return Ok(None);
                };
                match &shared.tls {
                    Some(acceptor) => {
                        tcp.write_all(b"S").await?;
                        let tls = acceptor.accept(tcp).await?;
                        stream = ClientStream::Tls(Box::new(tls));
                    }
                    None => {
                        tcp.write_all(b"N").await?;
                        stream = ClientStream::Plain(tcp);
                    }
                }
            }
            StartupPacket::GssEnc if !gss_done => {
                gss_done = true;
                stream.write_all(b"N").await?;
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                let e = ProxyError::fatal(
                    "08P01",
                    "unsupported frontend protocol: duplicate SSL or GSS request",
                );
                stream.write_all(&e.encode()).await?;
                return Ok(None);
            }
            StartupPacket::Cancel { pid, secret } => {
                let active = shared
                    .cancels
                    .lookup(pid, secret)
                    .and_then(|(node, bpid, bsecret)| {
                        let address = &shared.fleet.nodes.get(node)?.target.address;
                        Some((address, bpid, bsecret))
                    });
                match active {
                    Some((address, bpid, bsecret)) => {
                        tracing::info!(node = %address, "forwarding cancel request");
                        if let Err(e) = crate::backend::connect::send_cancel(address, bpid, bsecret).await {
                            tracing::warn!(node = %address, error = %e, "cancel request could not be delivered");
                        }
                    }
                    None => tracing::debug!("cancel request for an unknown or idle session"),
                }
                return Ok(None);
            }
            StartupPacket::Startup { minor, params } => return Ok(Some((stream, minor, params))),
        }
    }
}
