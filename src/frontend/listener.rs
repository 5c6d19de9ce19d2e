//! Accepting clients, on the TCP address and on the Unix-domain socket of `listen.unix_socket_dir`: one
//! task per connection that negotiates SSL/GSSENC, reads the StartupMessage (or handles a CancelRequest)
//! and hands over to the session.
//!
//! From the moment a connection is accepted until it has authenticated it counts as logging in (see
//! [`crate::stats::LoginGuard`]) and runs against `listen.authentication_timeout`: a client that stalls
//! anywhere before AuthenticationOk is disconnected, and with `listen.max_clients` set, at most twice that
//! many connections may be logging in at once, so that idle sockets cannot use up the process's descriptors.
//! (The session slots themselves are taken after the startup packet, in `session::run`.)

use std::sync::Arc;
use std::time::Duration;

use bytes::BytesMut;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};
use tokio::time::Instant;

use super::Shared;
use super::cancel::{CancelTarget, cancel_on_node};
use super::session::PendingLogin;
use super::stream::ClientStream;
use super::workers::Workers;
use crate::config::ClientTlsMode;
use crate::peer::Peer;
use crate::protocol::messages::ProxyError;
use crate::protocol::startup::{self, StartupPacket};

/// The first pause after a failed accept; it doubles with each failure in a row.
const MIN_ACCEPT_BACKOFF: Duration = Duration::from_millis(10);
/// The longest pause after a failed accept, and the shortest time between two log lines about failures.
const MAX_ACCEPT_BACKOFF: Duration = Duration::from_secs(1);
/// How long a client refused on arrival may keep its socket: long enough to read what it sent (closing a
/// socket with unread bytes resets the connection, and the client may lose the error), short enough that
/// refused clients cannot pile up.
const REFUSAL_LINGER: Duration = Duration::from_secs(1);

/// Pauses between failed accepts (EMFILE, ENFILE, ENOBUFS...): retrying at once would spin on the same
/// error, and logging each one would flood the log just when the machine is short of resources.
#[derive(Debug, Default)]
struct AcceptBackoff {
    /// The pause after the last failure; `None` after a success.
    delay: Option<Duration>,
    /// When a failure was last logged.
    logged_at: Option<Instant>,
    /// Failures not logged since then.
    unlogged: u64,
}

impl AcceptBackoff {
    /// An accept succeeded: the next failure pauses briefly again.
    fn succeeded(&mut self) {
        self.delay = None;
    }

    /// An accept failed at `now`: how long to pause, and whether to log it (with the failures not logged
    /// since the last line).
    fn failed(&mut self, now: Instant) -> (Duration, Option<u64>) {
        let delay = self
            .delay
            .map_or(MIN_ACCEPT_BACKOFF, |d| (d * 2).min(MAX_ACCEPT_BACKOFF));
        self.delay = Some(delay);
        if self
            .logged_at
            .is_some_and(|at| now.duration_since(at) < MAX_ACCEPT_BACKOFF)
        {
            self.unlogged += 1;
            return (delay, None);
        }
        self.logged_at = Some(now);
        (delay, Some(std::mem::take(&mut self.unlogged)))
    }
}

/// Where clients connect: the TCP address, or pgfleet's Unix-domain socket.
pub(crate) enum Listener {
    /// `listen.address`.
    Tcp(TcpListener),
    /// The socket in `listen.unix_socket_dir`.
    Local(UnixListener),
}

/// An accepted connection on its way to a worker: a std socket, which belongs to no event loop yet.
enum Accepted {
    Tcp(std::net::TcpStream),
    Local(std::os::unix::net::UnixStream),
}

impl Listener {
    /// The next client and its address; the inner error is one that only this client suffers (its socket
    /// could not leave this thread's event loop), the outer one an accept failure.
    async fn accept(&self) -> std::io::Result<(std::io::Result<Accepted>, Peer)> {
        Ok(match self {
            Listener::Tcp(l) => {
                let (socket, peer) = l.accept().await?;
                (socket.into_std().map(Accepted::Tcp), Peer::Tcp(peer))
            }
            Listener::Local(l) => {
                let (socket, _) = l.accept().await?;
                (socket.into_std().map(Accepted::Local), Peer::Local)
            }
        })
    }
}

impl Accepted {
    /// The socket, watched by the calling thread's event loop.
    fn watch(self) -> std::io::Result<ClientStream> {
        match self {
            Accepted::Tcp(socket) => {
                let socket = TcpStream::from_std(socket)?;
                let _ = socket.set_nodelay(true);
                Ok(ClientStream::Plain(socket))
            }
            Accepted::Local(socket) => Ok(ClientStream::Local(UnixStream::from_std(socket)?)),
        }
    }
}

/// Accepts clients forever, each handed to the session worker with the fewest sessions.
pub(crate) async fn serve(listener: Listener, shared: Arc<Shared>, workers: Arc<Workers>) {
    let mut backoff = AcceptBackoff::default();
    loop {
        match listener.accept().await {
            Ok((socket, peer)) => {
                backoff.succeeded();
                // Counted and timed from here, before the task runs, so that a burst of connections is
                // counted as it arrives.
                let login = PendingLogin {
                    guard: shared.stats.login_started(),
                    deadline: Instant::now() + shared.config().listen.authentication_timeout,
                };
                let shared = shared.clone();
                // The socket leaves this thread's event loop for the worker's.
                let socket = match socket {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::warn!(client = %peer, error = %e, "cannot hand an accepted client to a worker");
                        continue;
                    }
                };
                workers.spawn(move || async move {
                    match socket.watch() {
                        Ok(socket) => handle(socket, peer, shared, login).await,
                        Err(e) => {
                            tracing::warn!(client = %peer, error = %e, "cannot watch an accepted client")
                        }
                    }
                });
            }
            Err(e) => {
                let (pause, log) = backoff.failed(Instant::now());
                if let Some(unlogged) = log {
                    tracing::warn!(error = %e, retry_in_ms = pause.as_millis() as u64, unlogged_failures = unlogged, "accept failed");
                }
                tokio::time::sleep(pause).await;
            }
        }
    }
}

/// Reads one pre-session packet. A startup error is returned as such: whether the client is told about it
/// is PostgreSQL's choice (see [`startup::StartupError::answer_code`]).
async fn read_packet<S: AsyncRead + Unpin>(
    s: &mut S,
) -> Result<Result<StartupPacket, startup::StartupError>, std::io::Error> {
    let mut buf = BytesMut::with_capacity(256);
    loop {
        match startup::packet_len(&buf) {
            Err(e) => return Ok(Err(e)),
            Ok(Some(len)) if buf.len() >= len => return Ok(startup::decode(&buf[..len])),
            _ => {}
        }
        if s.read_buf(&mut buf).await? == 0 {
            let what = if buf.is_empty() {
                "no startup packet"
            } else {
                "incomplete startup packet"
            };
            return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, what));
        }
    }
}

async fn handle(socket: ClientStream, peer: Peer, shared: Arc<Shared>, login: PendingLogin) {
    // Sockets that have not sent a startup packet hold no session slot (see `session::run`), so they are
    // bounded here, before anything is read: at twice listen.max_clients, which leaves room for
    // connections that never log in (TCP health checks) next to a full set of logins.
    let bound = shared.config().listen.max_clients.saturating_mul(2);
    if bound > 0 && login.guard.count_at_start() > bound {
        drop(login);
        shared
            .stats
            .login_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        tracing::info!(client = %peer, "client refused: {bound} connections are already logging in (twice listen.max_clients)");
        let e = ProxyError::fatal("53300", "sorry, too many clients already").with_detail(format!(
            "pgfleet lets at most {bound} connections log in at once (twice listen.max_clients)"
        ));
        // Boxed, as `negotiate` below: its kilobyte of discard buffer would otherwise be room in every session's
        // task.
        Box::pin(refuse_at_once(socket, &e)).await;
        return;
    }
    // Boxed: this task lives as long as the session and has room for the largest of its steps, so the startup
    // exchange's state (TLS handshake, startup packet) would otherwise stay part of every session's memory.
    let result = tokio::time::timeout_at(login.deadline, Box::pin(negotiate(socket, peer, &shared))).await;
    let (mut stream, minor, params) = match result {
        Ok(Ok(Some(x))) => x,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            tracing::debug!(%peer, error = %e, "client left during startup");
            return;
        }
        Err(_) => {
            tracing::info!(client = %peer, "client did not finish its TLS handshake and startup packet within listen.authentication_timeout; disconnected");
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
    super::session::run(stream, peer, params, shared, login).await;
}

/// Sends `err` to a client that has not been read from yet and closes the connection once the client has
/// closed its side or [`REFUSAL_LINGER`] has passed, discarding what it sends meanwhile.
async fn refuse_at_once(mut socket: ClientStream, err: &ProxyError) {
    let exchange = async {
        socket.write_all(&err.encode()).await?;
        socket.shutdown().await?;
        let mut sink = [0u8; 1024];
        let mut discarded = 0;
        while discarded <= startup::MAX_STARTUP_PACKET {
            let n = socket.read(&mut sink).await?;
            if n == 0 {
                break;
            }
            discarded += n;
        }
        Ok::<(), std::io::Error>(())
    };
    let _ = tokio::time::timeout(REFUSAL_LINGER, exchange).await;
}

/// Runs the pre-session exchange; `None` when the connection was a cancel request or was refused.
async fn negotiate(
    mut stream: ClientStream,
    peer: Peer,
    shared: &Shared,
) -> std::io::Result<Option<(ClientStream, u16, Vec<(String, String)>)>> {
    let mut tls_done = false;
    let mut gss_done = false;
    loop {
        let packet = match read_packet(&mut stream).await? {
            Ok(p) => p,
            Err(e) => {
                match e.answer_code() {
                    Some(code) => {
                        tracing::info!(client = %peer, error = %e, "startup packet refused");
                        stream
                            .write_all(&ProxyError::fatal(code, e.to_string()).encode())
                            .await?;
                    }
                    // As PostgreSQL does (a COMMERROR): logged, and the connection closed without a word;
                    // a client that sent Terminate before its startup packet expects nothing else.
                    None => {
                        tracing::info!(client = %peer, error = %e, "connection closed before its startup packet")
                    }
                }
                return Ok(None);
            }
        };
        match packet {
            StartupPacket::Ssl if !tls_done => {
                tls_done = true;
                stream = match (stream, &shared.tls) {
                    (ClientStream::Plain(mut tcp), Some(acceptor)) => {
                        tcp.write_all(b"S").await?;
                        ClientStream::Tls(Box::new(acceptor.accept(tcp).await?))
                    }
                    // No certificate; or the local socket, where PostgreSQL offers no TLS either.
                    (mut plain @ (ClientStream::Plain(_) | ClientStream::Local(_)), _) => {
                        plain.write_all(b"N").await?;
                        plain
                    }
                    (ClientStream::Tls(_), _) => return Ok(None),
                };
            }
            StartupPacket::GssEnc if !gss_done => {
                gss_done = true;
                stream.write_all(b"N").await?;
            }
            StartupPacket::Ssl | StartupPacket::GssEnc => {
                // PostgreSQL reads a second request as a startup packet of protocol 1234.5679 (or .5680).
                let minor = if matches!(packet, StartupPacket::Ssl) {
                    5679
                } else {
                    5680
                };
                let e = startup::StartupError::Version(1234, minor);
                let e = ProxyError::fatal(e.answer_code().unwrap_or("0A000"), e.to_string());
                stream.write_all(&e.encode()).await?;
                return Ok(None);
            }
            StartupPacket::Cancel { pid, secret } => {
                match shared.cancels.cancel(pid, secret) {
                    CancelTarget::Node(backend) => cancel_on_node(&shared.fleet, backend).await,
                    CancelTarget::Waiting => {
                        tracing::info!("cancel request for a request no node runs yet: it ends with 57014")
                    }
                    CancelTarget::Nothing => tracing::debug!("cancel request for an unknown or idle session"),
                }
                return Ok(None);
            }
            StartupPacket::Startup { minor, params } => {
                // Only TCP: a local socket cannot carry TLS (PostgreSQL's `hostssl` lines do not cover
                // `local` ones either).
                let plain = matches!(stream, ClientStream::Plain(_));
                if plain && shared.config().listen.tls_mode == ClientTlsMode::Require {
                    shared
                        .stats
                        .login_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    tracing::info!(client = %peer, "client refused: it did not switch to TLS (listen.tls_mode = \"require\")");
                    let e = ProxyError::fatal(
                        "28000",
                        "pgfleet: connection without TLS refused (listen.tls_mode = \"require\")",
                    )
                    .with_hint("Connect with sslmode=require.");
                    stream.write_all(&e.encode()).await?;
                    return Ok(None);
                }
                return Ok(Some((stream, minor, params)));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accept_failures_back_off_and_log_once_a_second() {
        let mut b = AcceptBackoff::default();
        let start = Instant::now();
        let mut now = start;
        let mut pauses = Vec::new();
        let mut logged = Vec::new();
        for _ in 0..9 {
            let (pause, log) = b.failed(now);
            pauses.push(pause.as_millis());
            logged.push(log);
            now += pause;
        }
        assert_eq!(pauses, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        // The first failure is logged; the next line comes once a second has passed, with the count of
        // the failures in between.
        assert_eq!(logged[0], Some(0));
        assert!(logged[1..7].iter().all(Option::is_none), "{logged:?}");
        assert_eq!(logged[7], Some(6));
        assert_eq!(logged[8], Some(0));
        // A success starts the pauses over, but not the log's rate limit.
        b.succeeded();
        let (pause, log) = b.failed(start + Duration::from_millis(2770));
        assert_eq!((pause, log), (MIN_ACCEPT_BACKOFF, None));
    }
}
