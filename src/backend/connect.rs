//! Opening a connection to a node: TCP, TLS as the node's `tls` setting says (see `backend::tls`),
//! StartupMessage, authentication (SCRAM-SHA-256, md5, cleartext) with the user's configured password, and the
//! node's ParameterStatus / BackendKeyData up to the first ReadyForQuery.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UnixStream};

use super::conn::BackendConn;
use super::tls::{NodeTls, TlsConnectError};
use crate::config::unix_socket_of;
use crate::protocol::frame::build;
use crate::protocol::messages::{cstr, error_field};
use crate::protocol::startup::encode_startup;
use crate::protocol::{Frame, FrameBuffer};

/// Largest message accepted from a node during startup.
const STARTUP_FRAME_LIMIT: usize = 1 << 20;
/// Largest message accepted from a node afterwards (PostgreSQL's own 1 GB limit on a field plus headroom).
pub(crate) const NODE_FRAME_LIMIT: usize = (1 << 30) + (1 << 20);

/// Which node a connection is for; carried into every error message.
#[derive(Debug, Clone)]
pub struct NodeTarget {
    /// Index in the config's node list.
    pub index: usize,
    /// Configured name.
    pub name: String,
    /// "primary" or "replica", for messages.
    pub role: String,
    /// host:port.
    pub address: String,
    /// TLS towards the node.
    pub tls: Arc<NodeTls>,
}

/// Why a node connection failed or broke.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect failed.
    #[error("pgfleet: cannot reach {role} \"{name}\" ({address}): {reason}")]
    Unreachable {
        /// Node role.
        role: String,
        /// Node name.
        name: String,
        /// Node address.
        address: String,
        /// What the OS said, in words.
        reason: String,
    },
    /// TLS was required and did not come about, or the handshake failed.
    #[error("pgfleet: cannot reach {role} \"{name}\" ({address}): {source}")]
    Tls {
        /// Node role.
        role: String,
        /// Node name.
        name: String,
        /// Node address.
        address: String,
        /// What went wrong, naming the node's settings.
        source: TlsConnectError,
    },
    /// Connect plus authentication took longer than pool.connect_timeout.
    #[error(
        "pgfleet: timed out after {after:?} connecting to {role} \"{name}\" ({address}) (pool.connect_timeout)"
    )]
    Timeout {
        /// Node role.
        role: String,
        /// Node name.
        name: String,
        /// Node address.
        address: String,
        /// The timeout.
        after: Duration,
    },
    /// Every connection of the pool is checked out and none came back within pool.checkout_timeout. No
    /// connection was attempted, so this says nothing about the node's health.
    #[error(
        "pgfleet: all {max_size} connections of the pool for node \"{name}\" (database \"{database}\", user \"{user}\") are in use"
    )]
    PoolFull {
        /// Node name.
        name: String,
        /// Database of the pool.
        database: String,
        /// User of the pool.
        user: String,
        /// The pool's size limit (pool.max_size).
        max_size: usize,
        /// How long the client waited for a connection to be released.
        waited: Duration,
    },
    /// The client cancelled its request before any node ran it (while it waited for a connection of a full
    /// pool, or while pgfleet was still routing it).
    #[error("canceling statement due to user request")]
    Canceled,
    /// The node answered with an ErrorResponse (bad database, bad password, shutting down...).
    #[error("{message}")]
    Server {
        /// The ErrorResponse frame as the node sent it, to forward verbatim.
        frame: Bytes,
        /// Its SQLSTATE.
        code: String,
        /// Its message.
        message: String,
    },
    /// The node sent something the protocol does not allow here.
    #[error("pgfleet: protocol error from node \"{name}\": {detail}")]
    Protocol {
        /// Node name.
        name: String,
        /// What was wrong.
        detail: String,
    },
    /// The connection dropped.
    #[error("pgfleet: lost connection to node \"{name}\": {source}")]
    Io {
        /// Node name.
        name: String,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl BackendError {
    /// The SQLSTATE a client should see.
    pub fn sqlstate(&self) -> &str {
        match self {
            BackendError::Unreachable { .. } | BackendError::Timeout { .. } | BackendError::Tls { .. } => {
                "08006"
            }
            BackendError::Server { code, .. } => code,
            // As PostgreSQL refuses a connection over max_connections.
            BackendError::PoolFull { .. } => "53300",
            // PostgreSQL's own answer to a cancelled statement.
            BackendError::Canceled => "57014",
            BackendError::Protocol { .. } => "08P01",
            BackendError::Io { .. } => "08006",
        }
    }

    /// True when the node itself is unusable (as opposed to the request being wrong, or pgfleet's own pool
    /// being busy).
    pub fn is_node_failure(&self) -> bool {
        match self {
            BackendError::Server { code, .. } => code.starts_with("08") || code.starts_with("57P"),
            BackendError::PoolFull { .. } | BackendError::Canceled => false,
            _ => true,
        }
    }

    /// True when the pool had no free connection: another node may serve a read instead.
    pub fn is_pool_full(&self) -> bool {
        matches!(self, BackendError::PoolFull { .. })
    }

    /// True when the node turned the connection away for want of a free slot (53300: its max_connections
    /// is reached). Not a failure of the node, but, as with a full pool, another node may serve a read.
    pub fn is_node_full(&self) -> bool {
        matches!(self, BackendError::Server { code, .. } if code == "53300")
    }

    /// True when the client cancelled the request before a node ran it: no other node is tried.
    pub fn is_canceled(&self) -> bool {
        matches!(self, BackendError::Canceled)
    }

    /// The DETAIL and HINT a client gets with this error, when pgfleet has something to add.
    pub fn advice(&self) -> Option<(String, &'static str)> {
        match self {
            BackendError::PoolFull { waited, .. } => Some((
                format!("waited {waited:?} for one to be released (pool.checkout_timeout)"),
                "Raise pool.max_size, or pool.checkout_timeout to wait longer for a connection to be released.",
            )),
            _ => None,
        }
    }

    pub(crate) fn io(target: &NodeTarget, source: std::io::Error) -> Self {
        BackendError::Io {
            name: target.name.clone(),
            source,
        }
    }

    pub(crate) fn protocol(target: &NodeTarget, detail: impl Into<String>) -> Self {
        BackendError::Protocol {
            name: target.name.clone(),
            detail: detail.into(),
        }
    }

    pub(crate) fn from_error_frame(frame: &Frame) -> Self {
        let body = frame.body();
        BackendError::Server {
            frame: frame.raw.clone(),
            code: error_field(body, b'C').unwrap_or("XX000").to_owned(),
            message: error_field(body, b'M').unwrap_or("unknown error").to_owned(),
        }
    }
}

fn describe_io(e: &std::io::Error) -> String {
    use std::io::ErrorKind::*;
    match e.kind() {
        ConnectionRefused => "connection refused".into(),
        ConnectionReset => "connection reset".into(),
        TimedOut => "connection timed out".into(),
        HostUnreachable => "host unreachable".into(),
        NetworkUnreachable => "network unreachable".into(),
        AddrNotAvailable => "address not available".into(),
        // A socket directory without the server's socket in it: stopped, or another port or directory.
        NotFound => {
            "no server socket there (is the server running, listening in this directory on this port?)".into()
        }
        _ => e.to_string(),
    }
}

/// Credentials and database for a new connection.
pub struct Login<'a> {
    /// Role name.
    pub user: &'a str,
    /// Its password (never logged).
    pub password: &'a str,
    /// Database name.
    pub database: &'a str,
    /// Open a logical replication connection (`replication=database`) instead of a normal one.
    pub replication: bool,
}

/// Connects and authenticates, bounded by `timeout` as a whole.
pub(crate) async fn connect(
    target: &NodeTarget,
    login: &Login<'_>,
    timeout: Duration,
) -> Result<BackendConn, BackendError> {
    match tokio::time::timeout(timeout, connect_inner(target, login)).await {
        Ok(Ok(mut conn)) => {
            conn.io_timeout = timeout;
            Ok(conn)
        }
        Ok(Err(e)) => Err(e),
        Err(_) => Err(BackendError::Timeout {
            role: target.role.clone(),
            name: target.name.clone(),
            address: target.address.clone(),
            after: timeout,
        }),
    }
}

/// TCP connection plus TLS as the node's setting says, or the node's Unix-domain socket (never TLS, as
/// with libpq: PostgreSQL does not offer it on local sockets).
async fn open(target: &NodeTarget) -> Result<super::tls::NodeStream, BackendError> {
    let unreachable = |e: std::io::Error| BackendError::Unreachable {
        role: target.role.clone(),
        name: target.name.clone(),
        address: target.address.clone(),
        reason: describe_io(&e),
    };
    if let Some(path) = unix_socket_of(&target.address) {
        let stream = UnixStream::connect(&path).await.map_err(unreachable)?;
        return Ok(super::tls::NodeStream::Local(stream));
    }
    let stream = TcpStream::connect(&target.address).await.map_err(unreachable)?;
    let _ = stream.set_nodelay(true);
    target
        .tls
        .negotiate(stream)
        .await
        .map_err(|source| BackendError::Tls {
            role: target.role.clone(),
            name: target.name.clone(),
            address: target.address.clone(),
            source,
        })
}

async fn connect_inner(target: &NodeTarget, login: &Login<'_>) -> Result<BackendConn, BackendError> {
    let stream = open(target).await?;
    let mut conn = BackendConn::new(stream, target.clone(), FrameBuffer::new(STARTUP_FRAME_LIMIT));
    let mut params = vec![
        ("user", login.user),
        ("database", login.database),
        ("client_encoding", "UTF8"),
    ];
    if login.replication {
        params.push(("replication", "database"));
        params.push(("application_name", "pgfleet-forward"));
    }
    let startup = encode_startup(&params);
    conn.write_all(&startup).await?;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = conn.read_frame().await?;
        match frame.kind {
            b'R' => {
                let body = frame.body();
                if body.len() < 4 {
                    return Err(BackendError::protocol(target, "short authentication message"));
                }
                let code = i32::from_be_bytes([body[0], body[1], body[2], body[3]]);
                match code {
                    0 => {}
                    3 => {
                        let mut pw = login.password.as_bytes().to_vec();
                        pw.push(0);
                        conn.write_all(&build(b'p', &pw)).await?;
                    }
                    5 => {
                        if body.len() < 8 {
                            return Err(BackendError::protocol(target, "short md5 salt"));
                        }
                        let salt = [body[4], body[5], body[6], body[7]];
                        let hash = postgres_protocol::authentication::md5_hash(
                            login.user.as_bytes(),
                            login.password.as_bytes(),
                            salt,
                        );
                        let mut pw = hash.into_bytes();
                        pw.push(0);
                        conn.write_all(&build(b'p', &pw)).await?;
                    }
                    10 => {
                        let mechs: Vec<&str> = body[4..]
                            .split(|b| *b == 0)
                            .filter_map(|m| std::str::from_utf8(m).ok())
                            .filter(|m| !m.is_empty())
                            .collect();
                        if !mechs.contains(&SCRAM_SHA_256) {
                            return Err(BackendError::protocol(
                                target,
                                format!(
                                    "node offers SASL mechanisms {mechs:?}, pgfleet speaks SCRAM-SHA-256"
                                ),
                            ));
                        }
                        // Over TLS the server offers SCRAM-SHA-256-PLUS; "y" (binding supported, but not
                        // offered) would look like a downgrade to it, so say "n": pgfleet does no binding.
                        let binding = if conn.stream.is_tls() {
                            ChannelBinding::unsupported()
                        } else {
                            ChannelBinding::unrequested()
                        };
                        let s = ScramSha256::new(login.password.as_bytes(), binding);
                        let mut msg = Vec::new();
                        msg.extend_from_slice(SCRAM_SHA_256.as_bytes());
                        msg.push(0);
                        msg.extend_from_slice(&(s.message().len() as i32).to_be_bytes());
                        msg.extend_from_slice(s.message());
                        conn.write_all(&build(b'p', &msg)).await?;
                        scram = Some(s);
                    }
                    11 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| BackendError::protocol(target, "SASL continue without start"))?;
                        s.update(&body[4..])
                            .map_err(|e| BackendError::protocol(target, e.to_string()))?;
                        conn.write_all(&build(b'p', s.message())).await?;
                    }
                    12 => {
                        let s = scram
                            .as_mut()
                            .ok_or_else(|| BackendError::protocol(target, "SASL final without start"))?;
                        s.finish(&body[4..])
                            .map_err(|e| BackendError::protocol(target, e.to_string()))?;
                    }
                    other => {
                        return Err(BackendError::protocol(
                            target,
                            format!(
                                "node asks for authentication method {other}, which pgfleet does not support"
                            ),
                        ));
                    }
                }
            }
            b'E' => return Err(BackendError::from_error_frame(&frame)),
            b'S' => {
                if let Some((name, next)) = cstr(frame.body(), 0)
                    && let Some((value, _)) = cstr(frame.body(), next)
                {
                    conn.server_params.push((name.to_owned(), value.to_owned()));
                }
            }
            b'K' => {
                let b = frame.body();
                if b.len() >= 8 {
                    conn.pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
                    conn.secret = i32::from_be_bytes([b[4], b[5], b[6], b[7]]);
                }
            }
            b'N' | b'v' => {}
            b'Z' => {
                conn.status = crate::protocol::TxStatus::from_ready_body(frame.body());
                break;
            }
            other => {
                return Err(BackendError::protocol(
                    target,
                    format!("unexpected message '{}' during startup", other as char),
                ));
            }
        }
    }
    conn.rbuf = FrameBuffer::new(NODE_FRAME_LIMIT);
    Ok(conn)
}

/// Sends a CancelRequest for (pid, secret) to a node; best effort, like libpq's PQcancel. It goes over TLS
/// when the node's setting asks for TLS (as libpq 17's cancel API does), so the key never crosses the network
/// in plain text where the session's traffic does not.
pub(crate) async fn send_cancel(target: &NodeTarget, pid: i32, secret: i32) -> Result<(), BackendError> {
    let mut s = open(target).await?;
    let io = |e| BackendError::io(target, e);
    s.write_all(&crate::protocol::startup::encode_cancel(pid, secret))
        .await
        .map_err(io)?;
    s.flush().await.map_err(io)?;
    // PostgreSQL closes the socket once it has acted; waiting for that keeps the cancel ordered before the
    // client's next request.
    let mut buf = [0u8; 1];
    let _ = tokio::time::timeout(Duration::from_secs(5), s.read(&mut buf)).await;
    Ok(())
}
