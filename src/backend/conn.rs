//! One raw protocol connection to a node, and what pgfleet knows about the session state applied on it.

use std::sync::Arc;
use std::sync::atomic::AtomicI32;

use super::connect::{BackendError, NodeTarget};
use super::tls::NodeStream;
use crate::protocol::messages::cstr;
use crate::protocol::{Frame, FrameBuffer};
use bytes::Bytes;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Session state put on this connection: what the next request must adjust, and what a reset must undo.
#[derive(Debug, Default)]
pub struct AppliedState {
    /// Settings applied here, as the statements that applied them, by name (see `frontend::state`).
    pub settings: std::collections::BTreeMap<String, String>,
    /// The generation of the session settings that `settings` is a copy of (0: none, or unknown).
    pub settings_generation: u64,
    /// Named prepared statements that exist here.
    pub prepared: foldhash::HashSet<String>,
    /// Which of the session's unnamed statements the unnamed slot holds.
    pub unnamed: Option<u64>,
    /// State that cannot be reset cheaply (temp tables, LISTEN, advisory locks): close on release.
    pub unresettable: bool,
}

/// A connection to one node, with its read buffer and startup facts.
pub struct BackendConn {
    pub(crate) stream: NodeStream,
    pub(crate) rbuf: FrameBuffer,
    /// Which node.
    pub target: NodeTarget,
    /// Backend process id (BackendKeyData).
    pub pid: i32,
    /// Cancel secret (BackendKeyData).
    pub secret: i32,
    /// ParameterStatus values sent at startup.
    pub server_params: Vec<(String, String)>,
    /// Transaction status from the last ReadyForQuery.
    pub status: crate::protocol::TxStatus,
    /// Set when the connection can no longer be trusted (I/O error, protocol desync).
    pub broken: bool,
    /// The FATAL (or PANIC) ErrorResponse the node sent on its own account before closing: an
    /// idle_in_transaction_session_timeout, a pg_terminate_backend, a shutdown. A client whose state lived
    /// here gets this instead of pgfleet's own "lost the connection" message.
    pub farewell: Option<Frame>,
    /// What the current or last session left here.
    pub applied: AppliedState,
    /// Bound on the proxy's own exchanges (replays, resets, position queries): a hung node must not hang a
    /// session in work the client did not ask for.
    pub(crate) io_timeout: std::time::Duration,
    /// The session worker whose event loop watches the socket (None: another thread's).
    home: Option<usize>,
    /// Who holds the connection, for the session registry (`frontend::cancel`): the issued pid of the
    /// client session it is checked out to, 0 when none. The registry keeps a weak reference to it from
    /// the connection's first checkout on, so that a checkout under transaction pooling is one atomic store
    /// instead of a map update under a process-wide lock.
    pub(crate) holder: Arc<AtomicI32>,
    /// Whether the registry has a reference to `holder` yet.
    pub(crate) holder_known: bool,
}

/// What a request the proxy sent on its own account produced.
#[derive(Debug, Default)]
pub struct Exchange {
    /// The first ErrorResponse, if any.
    pub error: Option<Frame>,
    /// ParameterStatus frames the node sent (e.g. after SET application_name).
    pub parameter_status: Vec<Frame>,
}

impl BackendConn {
    pub(crate) fn new(stream: NodeStream, target: NodeTarget, rbuf: FrameBuffer) -> Self {
        Self {
            stream,
            rbuf,
            target,
            pid: 0,
            secret: 0,
            server_params: Vec::new(),
            status: crate::protocol::TxStatus::Idle,
            broken: false,
            farewell: None,
            applied: AppliedState::default(),
            io_timeout: std::time::Duration::from_secs(5),
            home: crate::frontend::workers::current(),
            holder: Arc::default(),
            holder_known: false,
        }
    }

    /// Makes the calling thread's event loop the one that watches this connection, if another's did (a
    /// pooled connection last used by a session on another worker). A failure leaves the connection broken.
    pub(crate) fn settle_here(&mut self) {
        let here = crate::frontend::workers::current();
        if here == self.home || here.is_none() {
            return;
        }
        match self.stream.move_here() {
            Ok(()) => self.home = here,
            Err(e) => {
                tracing::warn!(node = %self.target.name, error = %e, "cannot move a node connection to this worker");
                self.broken = true;
            }
        }
    }

    /// Writes bytes; marks the connection broken on failure.
    pub async fn write_all(&mut self, bytes: &[u8]) -> Result<(), BackendError> {
        // The flush matters only with TLS: rustls may keep records it could not send yet, which a plain
        // socket never does.
        let written = match self.stream.write_all(bytes).await {
            Ok(()) => self.stream.flush().await,
            Err(e) => Err(e),
        };
        if let Err(e) = written {
            self.broken = true;
            return Err(BackendError::io(&self.target, e));
        }
        Ok(())
    }

    /// Reads into the buffer once; 0 bytes means the node closed the connection (reported as an error).
    /// Cancel safe: usable inside `select!`.
    pub async fn fill(&mut self) -> Result<(), BackendError> {
        match self.stream.read_buf(self.rbuf.read_target()).await {
            Ok(0) => {
                self.broken = true;
                Err(self.closed_error())
            }
            Ok(_) => Ok(()),
            Err(e) => {
                self.broken = true;
                Err(BackendError::io(&self.target, e))
            }
        }
    }

    /// Why the node closed the connection: its own FATAL if it sent one, else an I/O error.
    pub fn closed_error(&self) -> BackendError {
        match &self.farewell {
            Some(f) => BackendError::from_error_frame(f),
            None => BackendError::io(
                &self.target,
                std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "server closed the connection unexpectedly",
                ),
            ),
        }
    }

    /// The next whole frame, reading as needed.
    pub async fn read_frame(&mut self) -> Result<Frame, BackendError> {
        loop {
            match self.rbuf.next_frame() {
                Ok(Some(f)) => {
                    if f.kind == b'E' && is_fatal(f.body()) {
                        self.farewell = Some(f.clone());
                    }
                    return Ok(f);
                }
                Ok(None) => self.fill().await?,
                Err(e) => {
                    self.broken = true;
                    return Err(BackendError::protocol(&self.target, e.to_string()));
                }
            }
        }
    }

    /// Takes whatever whole frames are buffered as one block, reporting each frame's type and body.
    pub fn take_block(&mut self, mut inspect: impl FnMut(u8, &[u8])) -> Result<Option<Bytes>, BackendError> {
        let mut farewell = None;
        let block = self.rbuf.take_whole_frames(|kind, body| {
            if kind == b'E' && is_fatal(body) {
                farewell = Some(Frame {
                    kind,
                    raw: crate::protocol::frame::build(kind, body),
                });
            }
            inspect(kind, body)
        });
        if farewell.is_some() {
            self.farewell = farewell;
        }
        block.map_err(|e| {
            self.broken = true;
            BackendError::protocol(&self.target, e.to_string())
        })
    }

    /// Sends a request of the proxy's own (ending in Query or Sync) and reads up to ReadyForQuery, keeping the
    /// first error and any ParameterStatus. Nothing reaches the client.
    pub async fn exchange(&mut self, request: &[u8]) -> Result<Exchange, BackendError> {
        let limit = self.io_timeout;
        match tokio::time::timeout(limit, self.exchange_inner(request)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(limit)),
        }
    }

    fn timed_out(&mut self, after: std::time::Duration) -> BackendError {
        self.broken = true;
        BackendError::Timeout {
            role: self.target.role.clone(),
            name: self.target.name.clone(),
            address: self.target.address.clone(),
            after,
        }
    }

    async fn exchange_inner(&mut self, request: &[u8]) -> Result<Exchange, BackendError> {
        self.write_all(request).await?;
        let mut out = Exchange::default();
        loop {
            let f = self.read_frame().await?;
            match f.kind {
                b'Z' => {
                    self.status = crate::protocol::TxStatus::from_ready_body(f.body());
                    return Ok(out);
                }
                b'E' if out.error.is_none() => out.error = Some(f),
                b'S' => out.parameter_status.push(f),
                _ => {}
            }
        }
    }

    /// Asks a WAL position of the proxy's own by a fast-path call (`protocol::wal_call`); None when the
    /// function answers NULL or fails.
    pub(crate) async fn call_position(
        &mut self,
        position: crate::protocol::wal_call::WalPosition,
    ) -> Result<Option<crate::protocol::lsn::Lsn>, BackendError> {
        let limit = self.io_timeout;
        match tokio::time::timeout(limit, self.call_position_inner(position)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(limit)),
        }
    }

    async fn call_position_inner(
        &mut self,
        position: crate::protocol::wal_call::WalPosition,
    ) -> Result<Option<crate::protocol::lsn::Lsn>, BackendError> {
        self.first_value(position.call(), b'V', crate::protocol::wal_call::answer)
            .await
    }

    /// Sends `request` (one question of the proxy's own) and reads up to ReadyForQuery: what `read` makes of
    /// the first frame of kind `kind`, or None when the request failed.
    async fn first_value<T>(
        &mut self,
        request: &[u8],
        kind: u8,
        read: impl Fn(&[u8]) -> Option<T>,
    ) -> Result<Option<T>, BackendError> {
        self.write_all(request).await?;
        let mut value = None;
        let mut failed = false;
        loop {
            let f = self.read_frame().await?;
            match f.kind {
                k if k == kind && value.is_none() => value = read(f.body()),
                b'E' => failed = true,
                b'Z' => {
                    self.status = crate::protocol::TxStatus::from_ready_body(f.body());
                    return Ok(if failed { None } else { value });
                }
                _ => {}
            }
        }
    }

    /// Runs one query of the proxy's own and returns the first column of its first row (text format).
    pub async fn query_value(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        let limit = self.io_timeout;
        match tokio::time::timeout(limit, self.query_value_inner(sql)).await {
            Ok(r) => r,
            Err(_) => Err(self.timed_out(limit)),
        }
    }

    async fn query_value_inner(&mut self, sql: &str) -> Result<Option<String>, BackendError> {
        let query = crate::protocol::messages::query(sql);
        self.first_value(&query, b'D', |row| {
            data_row_fields(row).into_iter().next().flatten()
        })
        .await
    }

    /// Runs a command of the proxy's own and returns its rows as text, or the node's ErrorResponse.
    pub async fn query_rows(
        &mut self,
        sql: &str,
    ) -> Result<Result<Vec<Vec<Option<String>>>, Frame>, BackendError> {
        self.write_all(&crate::protocol::messages::query(sql)).await?;
        let mut rows = Vec::new();
        let mut error = None;
        loop {
            let f = self.read_frame().await?;
            match f.kind {
                b'D' => rows.push(data_row_fields(f.body())),
                b'E' if error.is_none() => error = Some(f),
                b'Z' => {
                    self.status = crate::protocol::TxStatus::from_ready_body(f.body());
                    return Ok(match error {
                        Some(e) => Err(e),
                        None => Ok(rows),
                    });
                }
                _ => {}
            }
        }
    }

    /// Whether whole frames are already buffered (more input is at hand without waiting).
    pub fn has_buffered_frame(&self) -> bool {
        self.rbuf.buffered() >= 5
    }

    /// Reads, without waiting, whatever an idle node sent on its own: notices and notifications are
    /// returned for the client; a FATAL or a closed socket marks the connection broken (a node shutting down
    /// says so before it closes), so that the next request goes to a fresh connection instead.
    pub fn drain_idle(&mut self) -> Vec<Bytes> {
        let mut out = Vec::new();
        self.read_idle();
        loop {
            match self.rbuf.next_frame() {
                Ok(Some(f)) => match f.kind {
                    b'A' | b'N' => out.push(f.raw),
                    b'E' => {
                        self.broken = true;
                        self.farewell = Some(f);
                    }
                    _ => {}
                },
                Ok(None) => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
        out
    }

    /// Whether the node sent nothing since its last reply and the connection is not broken: a request may
    /// go out at once. What it did send is kept for [`BackendConn::drain_idle`].
    pub fn is_quiet(&mut self) -> bool {
        self.read_idle();
        !self.broken && self.rbuf.buffered() == 0
    }

    /// Reads, without waiting, what arrived since the last reply into the buffer; a closed or failed socket
    /// marks the connection broken.
    fn read_idle(&mut self) {
        loop {
            match self.stream.try_read_buf(self.rbuf.read_target()) {
                Ok(0) => {
                    self.broken = true;
                    break;
                }
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    self.broken = true;
                    break;
                }
            }
        }
    }

    /// Whether the node is idle outside a transaction with nothing unread.
    pub fn is_clean_idle(&self) -> bool {
        !self.broken && self.status == crate::protocol::TxStatus::Idle && self.rbuf.buffered() == 0
    }

    /// Value of a startup ParameterStatus.
    pub fn server_param(&self, name: &str) -> Option<&str> {
        self.server_params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether an ErrorResponse body ends the node's session (FATAL or PANIC): the node closes the connection
/// after it.
pub(crate) fn is_fatal(body: &[u8]) -> bool {
    // 'V' (never localized) since 9.6; 'S' may be translated.
    matches!(
        crate::protocol::messages::error_field(body, b'V')
            .or_else(|| crate::protocol::messages::error_field(body, b'S')),
        Some("FATAL" | "PANIC")
    )
}

/// The fields of a DataRow body as text (None for NULL).
pub(crate) fn data_row_fields(body: &[u8]) -> Vec<Option<String>> {
    let mut out = Vec::new();
    if body.len() < 2 {
        return out;
    }
    let count = i16::from_be_bytes([body[0], body[1]]).max(0) as usize;
    let mut at = 2;
    for _ in 0..count {
        let Some(len) = body.get(at..at + 4) else { break };
        let len = i32::from_be_bytes([len[0], len[1], len[2], len[3]]);
        at += 4;
        if len < 0 {
            out.push(None);
            continue;
        }
        let end = (at + len as usize).min(body.len());
        out.push(Some(String::from_utf8_lossy(&body[at..end]).into_owned()));
        at = end;
    }
    out
}

/// (name, value) of a ParameterStatus frame.
pub(crate) fn parameter_status_fields(frame: &Frame) -> Option<(&str, &str)> {
    let (name, next) = cstr(frame.body(), 0)?;
    let (value, _) = cstr(frame.body(), next)?;
    Some((name, value))
}
