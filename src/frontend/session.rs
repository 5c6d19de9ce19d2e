//! One client session: login (authentication, first node, ParameterStatus), then a loop that buffers each
//! request, asks the router where it may run, brings that node's connection up to date with the session's
//! settings and prepared statements, forwards the request and streams the answer back (`forward`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tracing::Instrument;

use super::Shared;
use super::auth;
use super::cancel::CancelKey;
use super::forward::{Flow, FlowError};
use super::names::StatementNames;
use super::request::{End, Plan, Request};
use super::state::{Settings, Statements};
use super::stream::ClientStream;
use crate::admin::stats::{ClientEntry, ClientInfo};
use crate::backend::connect::Login;
use crate::backend::{BackendError, Checkout, NodePool, PooledConn};
use crate::cluster::view::FleetView;
use crate::config::{PoolMode, ReadYourWrites, ReplicaAffinity};
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::{
    ProxyError, Severity, backend_key_data, close_statement, parameter_status, query, ready_for_query, sync,
};
use crate::protocol::{FrameBuffer, FrameError};
use crate::router::classify::{Pin, Target};
use crate::router::functions::FunctionRules;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The client went away or its socket failed.
    #[error("client connection lost: {0}")]
    Client(#[from] std::io::Error),
    /// The client broke the protocol.
    #[error("client protocol violation: {0}")]
    Protocol(#[from] FrameError),
    /// The session was ended with a FATAL already sent.
    #[error("session ended: {0}")]
    Fatal(String),
    /// The client did not complete authentication in time; like PostgreSQL, pgfleet closed the connection
    /// without a message (the client is not reading, or not there).
    #[error("canceling authentication due to timeout (listen.authentication_timeout)")]
    AuthenticationTimeout,
}

/// A connection between its accept and the end of its authentication.
#[derive(Debug)]
pub struct PendingLogin {
    /// Counts the connection as logging in while it exists.
    pub guard: crate::admin::stats::LoginGuard,
    /// When the client must have been sent AuthenticationOk (`listen.authentication_timeout`).
    pub deadline: tokio::time::Instant,
}

/// Session-wide routing override from the `pgfleet.route` startup option.
fn route_override(value: &str) -> Result<Target, ProxyError> {
    match value.to_ascii_lowercase().as_str() {
        "primary" => Ok(Target::Primary),
        "replica" => Ok(Target::Replica),
        other => Err(ProxyError::fatal(
            "22023",
            format!("invalid value for parameter \"pgfleet.route\": \"{other}\""),
        )
        .with_hint("Use -c pgfleet.route=primary or -c pgfleet.route=replica.")),
    }
}

/// Serves one client until it leaves; `login` ends with the client's authentication.
pub async fn run(
    stream: ClientStream,
    peer: SocketAddr,
    params: Vec<(String, String)>,
    shared: Arc<Shared>,
    login: PendingLogin,
) {
    let user = params
        .iter()
        .find(|(k, _)| k == "user")
        .map(|(_, v)| v.clone())
        .unwrap_or_default();
    let database = params
        .iter()
        .find(|(k, _)| k == "database")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| user.clone());
    let span = tracing::info_span!("session", client = %peer, user = %user, database = %database);
    async move {
        if database == ADMIN_DATABASE {
            admin_session(stream, peer, &user, shared, login).await;
            return;
        }
        let mut stream = stream;
        let max_clients = shared.config().listen.max_clients;
        // Taken before authentication, as PostgreSQL takes a backend slot: a client stalled in its password
        // exchange holds a slot, and a client that finds none is told so without being asked a password.
        let slot = match max_clients {
            0 => None,
            max => match shared.stats.reserve_slot(max, ADMIN_DATABASE) {
                Some(slot) => Some(slot),
                None => {
                    shared
                        .stats
                        .login_failures
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let e = too_many_clients(max);
                    tracing::info!(error = %e.message, "login refused: listen.max_clients reached");
                    let _ = stream.write_all(&e.encode()).await;
                    return;
                }
            },
        };
        let stats = shared.stats.clone();
        let started = Session::login(stream, peer, user, database, params, shared, login).await;
        // Held until the session counts in its own right.
        drop(slot);
        let mut session = match started {
            Ok(s) => s,
            Err(e) => {
                stats
                    .login_failures
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                tracing::info!(error = %e, "login failed");
                return;
            }
        };
        tracing::debug!("session started");
        match session.serve().await {
            Ok(()) => tracing::debug!("client disconnected"),
            Err(e) => tracing::info!(error = %e, "session ended"),
        }
        session.close().await;
        stats.client_disconnected(session.id);
    }
    .instrument(span)
    .await
}

/// The virtual database that holds the admin console.
pub const ADMIN_DATABASE: &str = "pgfleet";

/// Authenticates a client against `[[users]]`; on failure the client has been sent FATAL, except when the
/// `deadline` passed first: then, as PostgreSQL does, nothing is sent.
async fn authenticate_client(
    client: &mut ClientStream,
    user: &str,
    shared: &Shared,
    deadline: tokio::time::Instant,
) -> Result<crate::config::UserConfig, SessionError> {
    let max = shared.config().listen.max_message_size as usize;
    let user_cfg = shared.config().user(user).cloned();
    let outcome = tokio::time::timeout_at(deadline, auth::authenticate(client, user, user_cfg.as_ref(), max))
        .await
        .map_err(|_| SessionError::AuthenticationTimeout)?;
    if let Err(e) = outcome {
        if !matches!(e, auth::AuthError::ClientClosed) {
            let err = ProxyError::fatal(e.sqlstate(), e.message());
            let _ = client.write_all(&err.encode()).await;
        }
        return Err(SessionError::Fatal(e.to_string()));
    }
    user_cfg.ok_or_else(|| SessionError::Fatal("unknown user passed authentication".into()))
}

/// The refusal of a login past `listen.max_clients`, in PostgreSQL's words.
fn too_many_clients(max_clients: usize) -> ProxyError {
    ProxyError::fatal("53300", "sorry, too many clients already").with_detail(format!(
        "pgfleet serves at most {max_clients} clients (listen.max_clients)"
    ))
}

/// `listen.max_clients` and the user's `max_connections`, refused as PostgreSQL refuses them.
fn check_limits(shared: &Shared, user: &crate::config::UserConfig) -> Result<(), ProxyError> {
    let max_clients = shared.config().listen.max_clients;
    let per_user = user.max_connections;
    if max_clients == 0 && per_user == 0 {
        return Ok(());
    }
    // The login's own slot (see `run`) is not among the sessions yet: this refuses only when a reload
    // changed the limit since the slot was taken.
    if max_clients > 0 && shared.stats.count_clients(None, ADMIN_DATABASE) >= max_clients {
        return Err(too_many_clients(max_clients));
    }
    if per_user > 0 && shared.stats.count_clients(Some(&user.name), ADMIN_DATABASE) >= per_user {
        return Err(ProxyError::fatal(
            "53300",
            format!("too many connections for role \"{}\"", user.name),
        )
        .with_detail(format!(
            "the user may have {per_user} connections (max_connections of its [[users]] entry)"
        )));
    }
    Ok(())
}

/// A session on the admin console: admin users only.
async fn admin_session(
    mut client: ClientStream,
    peer: SocketAddr,
    user: &str,
    shared: Arc<Shared>,
    login: PendingLogin,
) {
    let authenticated = authenticate_client(&mut client, user, &shared, login.deadline).await;
    drop(login);
    let cfg = match authenticated {
        Ok(c) => c,
        Err(e) => {
            shared
                .stats
                .login_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(error = %e, "admin login failed");
            return;
        }
    };
    if !cfg.admin {
        shared
            .stats
            .login_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let err = ProxyError::fatal(
            "42501",
            format!("permission denied for the pgfleet admin console: user \"{user}\" is not an admin"),
        )
        .with_hint("Set admin = true on that [[users]] entry, or connect to another database.");
        let _ = client.write_all(&err.encode()).await;
        return;
    }
    let id = shared
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _entry = shared.stats.client_connected(
        id,
        ClientInfo {
            addr: peer,
            user: user.to_owned(),
            database: ADMIN_DATABASE.to_owned(),
            state: "admin",
            connected_at: std::time::SystemTime::now(),
            requests: 0,
            node: None,
        },
    );
    if let Err(e) = crate::admin::console::run_console(&mut client, &shared.admin, user).await {
        tracing::info!(error = %e, "admin session ended");
    }
    shared.stats.client_disconnected(id);
}

pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    pub(super) id: u64,
    pub(super) client: ClientStream,
    pub(super) cbuf: FrameBuffer,
    user: String,
    password: String,
    database: String,
    pub(super) conns: Vec<Option<PooledConn>>,
    settings: Settings,
    pending_changes: Vec<crate::router::classify::SessionChange>,
    pub(super) statements: Statements,
    tx_node: Option<usize>,
    pinned: Option<(usize, Pin)>,
    /// With `routing.replica_affinity = "session"`: the node the balancer chose for this session's reads.
    /// A `Cell` because choosing happens while the fleet snapshot borrows the shared state.
    read_home: std::cell::Cell<Option<usize>>,
    route: Option<Target>,
    pub(super) key: CancelKey,
    discard_until_sync: bool,
    pub(super) rules: Arc<FunctionRules>,
    /// WAL position of the session's last committed write (read-your-writes).
    last_write_lsn: Option<Lsn>,
    /// Per node, the replay position this session last asked it for, and when.
    replayed_seen: Vec<Option<(Lsn, std::time::Instant)>>,
    /// The open transaction ran something on the primary that may have written.
    tx_wrote: bool,
    /// Transaction pooling: node connections go back to the pool between transactions.
    shared_conns: bool,
    /// Transaction pooling: the client's statement names and the proxy's.
    names: StatementNames,
    /// The session's row in SHOW CLIENTS, once the login is complete.
    entry: Option<Arc<ClientEntry>>,
    /// The catalog generation and the time until which `rules` are the catalog's current ones.
    rules_fresh: Option<(u64, std::time::Instant)>,
    /// Where a request of several frames is assembled to be written at once, kept between requests.
    pub(super) scratch: Vec<u8>,
    /// The pool of each node for this session's login, once used.
    pools: Vec<Option<NodePool>>,
    /// The routing-statistics counter of the previous request's (target, rule).
    last_route: Option<(Target, String, Arc<AtomicU64>)>,
    /// Nodes to try for the current request, kept to reuse its allocation.
    candidates: Vec<usize>,
    /// Tells the session when pgfleet shuts down (the deadline for open transactions).
    shutdown: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    /// client_idle_timeout / idle_in_transaction_timeout, when set.
    idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The fleet generation last seen; a reload that changes nodes bumps it.
    fleet_generation: u64,
}

impl Session {
    async fn login(
        mut client: ClientStream,
        peer: SocketAddr,
        user: String,
        database: String,
        params: Vec<(String, String)>,
        shared: Arc<Shared>,
        login: PendingLogin,
    ) -> Result<Session, SessionError> {
        let max = shared.config().listen.max_message_size as usize;
        let user_cfg = authenticate_client(&mut client, &user, &shared, login.deadline).await?;
        // Past AuthenticationOk the client is a session in the making, limited by check_limits below.
        drop(login);
        if let Err(e) = check_limits(&shared, &user_cfg) {
            client.write_all(&e.encode()).await?;
            return Err(SessionError::Fatal(e.message));
        }
        let mut settings = Settings::default();
        let mut route = None;
        for (k, v) in &params {
            match k.as_str() {
                "user" | "database" | "replication" | "options" => {}
                k if k.starts_with("_pq_.") => {}
                k => settings.set_startup(k, v),
            }
            if k == "replication" && v != "false" && v != "0" && v != "off" {
                let err = ProxyError::fatal("08P01", "pgfleet does not proxy replication connections")
                    .with_hint("Connect replication clients to the primary directly.");
                client.write_all(&err.encode()).await?;
                return Err(SessionError::Fatal(err.message));
            }
        }
        if let Some((_, options)) = params.iter().find(|(k, _)| k == "options") {
            for (k, v) in crate::protocol::startup::parse_options(options) {
                if k == "pgfleet.route" {
                    match route_override(&v) {
                        Ok(t) => route = Some(t),
                        Err(e) => {
                            client.write_all(&e.encode()).await?;
                            return Err(SessionError::Fatal(e.message));
                        }
                    }
                } else {
                    settings.set_startup(&k, &v);
                }
            }
        }
        let id = shared
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = shared.cancels.register();
        let shared_conns = shared.config().pool.mode == PoolMode::Transaction;
        let rules = shared
            .catalog
            .cached(&database)
            .unwrap_or_else(|| shared.catalog.base());
        let shutdown = shared.shutdown.subscribe();
        // Read before the node count: a reload in between then shows as a newer generation.
        let fleet_generation = shared.fleet.generation();
        let node_count = shared.fleet.nodes().len();
        let mut session = Session {
            cbuf: FrameBuffer::new(max),
            conns: (0..node_count).map(|_| None).collect(),
            shared,
            id,
            client,
            user,
            password: user_cfg.password.clone(),
            database,
            settings,
            pending_changes: Vec::new(),
            statements: Statements::default(),
            tx_node: None,
            pinned: None,
            read_home: std::cell::Cell::new(None),
            route,
            key,
            discard_until_sync: false,
            rules,
            last_write_lsn: None,
            replayed_seen: vec![None; node_count],
            tx_wrote: false,
            shared_conns,
            names: StatementNames::default(),
            entry: None,
            shutdown,
            idle_timer: None,
            rules_fresh: None,
            candidates: Vec::new(),
            last_route: None,
            scratch: Vec::new(),
            pools: vec![None; node_count],
            fleet_generation,
        };
        session.greet().await?;
        let entry = session.shared.stats.client_connected(
            session.id,
            ClientInfo {
                addr: peer,
                user: session.user.clone(),
                database: session.database.clone(),
                state: "idle",
                connected_at: std::time::SystemTime::now(),
                requests: 0,
                node: None,
            },
        );
        session.entry = Some(entry);
        Ok(session)
    }

    /// Opens the first node connection (the primary, else any reachable read node) to check that the
    /// database and role exist and to learn the server's parameters, then completes the startup.
    async fn greet(&mut self) -> Result<(), SessionError> {
        let fleet = &self.shared.fleet;
        let mut order = vec![fleet.likely_primary()];
        order.extend(fleet.read_nodes(&fleet.view(), false, None));
        let mut last_err: Option<ProxyError> = None;
        for node in order {
            match self.first_node(node).await {
                Ok(reported) => {
                    self.release_between_transactions(node);
                    let mut out = Vec::new();
                    for (k, v) in &reported {
                        out.extend_from_slice(&parameter_status(k, v));
                    }
                    out.extend_from_slice(&backend_key_data(self.key.pid, self.key.secret));
                    out.extend_from_slice(&ready_for_query(b'I'));
                    self.client.write_all(&out).await?;
                    self.client.flush().await?;
                    return Ok(());
                }
                Err(Greet::Node(e)) => {
                    self.conns[node] = None;
                    let fatal = self.fatal_of(&e);
                    if !e.is_node_failure() {
                        last_err = Some(fatal);
                        break;
                    }
                    last_err = Some(fatal);
                }
                Err(Greet::Refused(e)) => {
                    last_err = Some(e);
                    break;
                }
            }
        }
        let e = last_err.unwrap_or_else(|| ProxyError::fatal("08006", "pgfleet: no node is configured"));
        self.client.write_all(&e.encode()).await?;
        Err(SessionError::Fatal(e.message))
    }

    /// Opens the session's first node connection and applies the client's startup parameters there,
    /// returning the server parameters to report (the node's, updated by what the parameters changed).
    async fn first_node(&mut self, node: usize) -> Result<Vec<(String, String)>, Greet> {
        self.connect(node).await.map_err(Greet::Node)?;
        let Some(conn) = self.conns[node].as_mut() else {
            return Ok(Vec::new());
        };
        let mut reported = conn.server_params.clone();
        let Some(sql) = self.settings.diff(&conn.applied.settings) else {
            return Ok(reported);
        };
        let x = conn.exchange(&query(&sql)).await.map_err(Greet::Node)?;
        if let Some(err) = x.error {
            let body = err.body();
            return Err(Greet::Refused(ProxyError::fatal(
                crate::protocol::messages::error_field(body, b'C').unwrap_or("22023"),
                crate::protocol::messages::error_field(body, b'M')
                    .unwrap_or("invalid startup parameter")
                    .to_owned(),
            )));
        }
        for f in &x.parameter_status {
            if let Some((k, v)) = crate::backend::conn::parameter_status_fields(f) {
                match reported.iter_mut().find(|(rk, _)| rk == k) {
                    Some(slot) => slot.1 = v.to_owned(),
                    None => reported.push((k.to_owned(), v.to_owned())),
                }
            }
        }
        conn.applied.settings = self.settings.entries().clone();
        conn.applied.settings_generation = self.settings.generation();
        Ok(reported)
    }

    fn fatal_of(&self, e: &BackendError) -> ProxyError {
        ProxyError {
            severity: Severity::Fatal,
            ..self.error_of(e)
        }
    }

    fn error_of(&self, e: &BackendError) -> ProxyError {
        match e {
            BackendError::Server { code, message, .. } => ProxyError::error(code, message.clone()),
            other => {
                let err = ProxyError::error(other.sqlstate(), other.to_string());
                match other.advice() {
                    Some((detail, hint)) => err.with_detail(detail).with_hint(hint),
                    None => err,
                }
            }
        }
    }

    /// Makes sure the session holds a connection to `node`, waiting for one if the node's pool is full.
    async fn connect(&mut self, node: usize) -> Result<(), BackendError> {
        self.connect_with(node, Checkout::Wait).await
    }

    /// [`Session::connect`], or with [`Checkout::Immediate`], giving up at once on a full pool.
    async fn connect_with(&mut self, node: usize, checkout: Checkout) -> Result<(), BackendError> {
        if node >= self.conns.len() {
            // A node a reload added after the session started.
            self.conns.resize_with(node + 1, || None);
            self.pools.resize_with(node + 1, || None);
        }
        if let Some(c) = self.conns[node].as_mut() {
            // Whatever the node said while idle: pass on notices and notifications, and notice a connection
            // it closed (then its farewell notice concerns only the proxy, which hides the loss).
            let said = c.drain_idle();
            if !c.broken {
                for msg in said {
                    let _ = self.client.write_all(&msg).await;
                }
                return Ok(());
            }
            let target = c.target.clone();
            self.conns[node] = None;
            if self.holds_state_on(node) {
                return Err(BackendError::io(
                    &target,
                    std::io::Error::new(
                        std::io::ErrorKind::ConnectionAborted,
                        "the node closed the connection",
                    ),
                ));
            }
        }
        let n = self.shared.fleet.node(node);
        let login = Login {
            user: &self.user,
            password: &self.password,
            database: &self.database,
            replication: false,
        };
        let pool = match &self.pools[node] {
            Some(p) => p,
            None => self.pools[node].insert(self.shared.pools.pool_for(&n.target, &login)),
        };
        match self.shared.pools.get_from(pool, &n.target, checkout).await {
            Ok(c) => {
                n.mark_up();
                self.conns[node] = Some(c);
                Ok(())
            }
            Err(e) => {
                if e.is_node_failure() {
                    tracing::warn!(node = %n.target.name, error = %e, "node connection failed");
                    n.mark_down();
                }
                Err(e)
            }
        }
    }

    /// Reads and serves requests until the client leaves.
    async fn serve(&mut self) -> Result<(), SessionError> {
        let mut req = Request::default();
        loop {
            let frame = match self.cbuf.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => {
                    self.wait_for_client().await?;
                    continue;
                }
                Err(e) => {
                    let err = ProxyError::fatal("08P01", format!("invalid frontend message: {e}"));
                    let _ = self.client.write_all(&err.encode()).await;
                    return Err(e.into());
                }
            };
            match frame.kind {
                b'X' => return Ok(()),
                b'Q' | b'P' | b'B' | b'D' | b'E' | b'S' | b'H' | b'C' | b'F' => {}
                b'd' | b'c' | b'f' => {}
                other => {
                    // As PostgreSQL does: an unknown message ends the session, and no node ever sees it.
                    let err = ProxyError::fatal("08P01", format!("invalid frontend message type {other}"));
                    let _ = self.client.write_all(&err.encode()).await;
                    return Err(SessionError::Fatal(err.message));
                }
            }
            match frame.kind {
                // CopyData/CopyDone/CopyFail outside COPY: PostgreSQL ignores them, and so do we.
                b'd' | b'c' | b'f' => continue,
                _ => {}
            }
            if self.discard_until_sync {
                if frame.kind == b'S' {
                    self.discard_until_sync = false;
                    self.write_client(&ready_for_query(self.status())).await?;
                }
                continue;
            }
            let frame = self.rewrite_names(frame);
            if self.shared_conns
                && frame.kind == b'Q'
                && req.frames.is_empty()
                && self.deallocate_locally(&frame).await?
            {
                continue;
            }
            if let Some(end) = req.push(frame) {
                // A Flush with nothing before it asks for output that does not exist (psycopg ends each
                // pipeline with Sync, Flush): routing it would open an empty batch on some node.
                let empty_flush = end == End::Open && req.frames.iter().all(|f| f.kind == b'H');
                if !empty_flush {
                    self.dispatch(&req, end).await?;
                }
                // Emptied rather than replaced, so the next request reuses its frame list.
                req.clear();
            }
        }
    }

    /// Waits for client bytes; meanwhile passes on notifications from a node the session listens on.
    async fn wait_for_client(&mut self) -> Result<(), SessionError> {
        let deadline = *self.shutdown.borrow_and_update();
        if let Some(deadline) = deadline {
            // Shutting down: a session between transactions ends now; one inside a transaction may finish it.
            if self.tx_node.is_none() || tokio::time::Instant::now() >= deadline {
                let e = ProxyError::fatal("57P01", "terminating connection due to administrator command");
                let _ = self.write_client(&e.encode()).await;
                return Err(SessionError::Fatal("pgfleet is shutting down".into()));
            }
            tokio::select! {
                r = self.client.read_buf(self.cbuf.read_target()) => {
                    if r? == 0 {
                        return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
                    }
                }
                _ = tokio::time::sleep_until(deadline) => {}
            }
            return Ok(());
        }
        let (idle_in_transaction, client_idle) = {
            let config = self.shared.config();
            (
                config.listen.idle_in_transaction_timeout,
                config.listen.client_idle_timeout,
            )
        };
        let (limit, code, what, key) = if self.tx_node.is_some() {
            (
                idle_in_transaction,
                "25P03",
                "idle-in-transaction",
                "listen.idle_in_transaction_timeout",
            )
        } else {
            (client_idle, "57P05", "idle-session", "listen.client_idle_timeout")
        };
        // The idle timer is armed once per session and only moved when it is due or would fire too late:
        // registering a fresh timer for every request is a good share of a short request's cost.
        let idle_due = limit.map(|limit| tokio::time::Instant::now() + limit);
        if let Some(due) = idle_due {
            match self.idle_timer.as_mut() {
                Some(timer) if timer.deadline() <= due => {}
                Some(timer) => timer.as_mut().reset(due),
                None => self.idle_timer = Some(Box::pin(tokio::time::sleep_until(due))),
            }
        }
        let listen_node = match self.pinned {
            Some((n, Pin::Listen)) if self.conns[n].is_some() => Some(n),
            _ => None,
        };
        loop {
            tokio::select! {
                r = client_or_node(&mut self.client, &mut self.cbuf, &mut self.conns, listen_node) => return r,
                _ = self.shutdown.changed() => return Ok(()),
                _ = idle_timer_fired(&mut self.idle_timer), if idle_due.is_some() => {
                    let Some(due) = idle_due else { continue };
                    if tokio::time::Instant::now() < due {
                        // Armed during an earlier wait: this one has time left.
                        if let Some(timer) = self.idle_timer.as_mut() {
                            timer.as_mut().reset(due);
                        }
                        continue;
                    }
                    // As PostgreSQL's idle_session_timeout / idle_in_transaction_session_timeout; the node
                    // connection is closed with the session, which rolls back an open transaction.
                    let e = ProxyError::fatal(code, format!("terminating connection due to {what} timeout ({key})"));
                    let _ = self.write_client(&e.encode()).await;
                    return Err(SessionError::Fatal(e.message));
                }
            }
        }
    }

    /// Transaction pooling: the client's statement names in `frame` replaced by the proxy's.
    pub(super) fn rewrite_names(&mut self, frame: crate::protocol::Frame) -> crate::protocol::Frame {
        if self.shared_conns {
            self.names.rewrite(frame)
        } else {
            frame
        }
    }

    /// The transaction status the client should see when the proxy answers by itself.
    fn status(&self) -> u8 {
        self.tx_node
            .and_then(|n| self.conns[n].as_ref())
            .map(|c| c.status)
            .unwrap_or(b'I')
    }

    pub(super) async fn write_client(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.client.write_all(bytes).await?;
        self.client.flush().await?;
        Ok(())
    }

    /// Answers a request the proxy could not run: the error, then ReadyForQuery when the request ended
    /// with Query or Sync; after Flush, input is skipped up to the next Sync as PostgreSQL does.
    async fn refuse(&mut self, err: ProxyError, end: End) -> Result<(), SessionError> {
        tracing::info!(error = %err, "request refused");
        let mut out = err.encode().to_vec();
        match end {
            End::Query | End::Sync => out.extend_from_slice(&ready_for_query(self.status())),
            End::Open => self.discard_until_sync = true,
        }
        self.write_client(&out).await
    }

    /// Brings the session's function rules up to date; true when they changed. While the catalog has not
    /// changed and its entry for the database is fresh, this is a counter comparison and a clock read.
    async fn refresh_function_rules(&mut self) -> bool {
        let generation = self.shared.catalog.generation();
        if self
            .rules_fresh
            .is_some_and(|(g, until)| g == generation && std::time::Instant::now() < until)
        {
            return false;
        }
        let rules = self.function_rules().await;
        self.rules_fresh = self
            .shared
            .catalog
            .fresh_until(&self.database, &rules)
            .map(|until| (generation, until));
        if Arc::ptr_eq(&rules, &self.rules) {
            return false;
        }
        self.rules = rules;
        true
    }

    async fn function_rules(&mut self) -> Arc<FunctionRules> {
        let fleet = &self.shared.fleet;
        let p = fleet.likely_primary();
        if !fleet.view().nodes[p].up || !fleet.nodes()[p].is_up() {
            // The primary is down or hung: nothing could write through it anyway, so the lists already at
            // hand decide, and reads do not wait for a catalog query that cannot be answered.
            return self
                .shared
                .catalog
                .cached(&self.database)
                .unwrap_or_else(|| self.rules.clone());
        }
        let primary = fleet.nodes()[p].target.clone();
        let source = crate::router::catalog::Source {
            primary: &primary,
            database: &self.database,
            user: &self.user,
            password: &self.password,
        };
        self.shared.catalog.rules(source).await
    }

    /// The nodes to try for a plan, best first, into `order`, or why there is none.
    async fn candidates(&mut self, plan: &Plan, order: &mut Vec<usize>) -> Result<(), ProxyError> {
        let Some(lsn) = self.last_write_lsn else {
            // The usual case needs no await: a borrowed snapshot spares the shared reference count.
            let view = self.shared.fleet.view_guard();
            return match self.pick_nodes(plan, &view, order)? {
                Pick::Decided => Ok(()),
                Pick::Reads { primary } => self.check_reads(&view, primary, order),
            };
        };
        let view = self.shared.fleet.view();
        let Pick::Reads { primary } = self.pick_nodes(plan, &view, order)? else {
            return Ok(());
        };
        *order = self.fresh_nodes(std::mem::take(order), lsn, primary, &view).await;
        self.check_reads(&view, primary, order)
    }

    /// The node a plan must run on, or the balanced read nodes for the caller to check.
    fn pick_nodes(&self, plan: &Plan, view: &FleetView, order: &mut Vec<usize>) -> Result<Pick, ProxyError> {
        order.clear();
        let fixed = if let Some(n) = self.tx_node {
            Some(n)
        } else if let Some((n, _)) = self.pinned {
            Some(n)
        } else if let Some(name) = plan.deallocates.first().filter(|n| n.as_str() != "*") {
            // DEALLOCATE must run where the statement exists, or PostgreSQL would say it does not.
            (0..self.conns.len()).find(|n| {
                self.conns[*n]
                    .as_ref()
                    .is_some_and(|c| c.applied.prepared.contains(name))
            })
        } else {
            None
        };
        let fleet = &self.shared.fleet;
        if let Some(n) = fixed {
            order.push(n);
            return Ok(Pick::Decided);
        }
        if self.route.unwrap_or(plan.target) == Target::Primary {
            order.push(fleet.primary_in(view)?);
            return Ok(Pick::Decided);
        }
        let (primary_reads, max_lag, mode, affinity) = {
            let config = self.shared.config();
            let r = &config.routing;
            (
                r.primary_reads,
                r.max_replica_lag,
                r.load_balance,
                r.replica_affinity,
            )
        };
        fleet.read_nodes_into(view, primary_reads, max_lag, order);
        let home = match (affinity, self.read_home.get()) {
            (ReplicaAffinity::Session, Some(h)) => order.iter().position(|n| *n == h),
            _ => None,
        };
        if let Some(i) = home {
            // The session's node is still a candidate: it goes first, the others stay as fallbacks.
            order[..=i].rotate_right(1);
        } else {
            let pools = &self.shared.pools;
            let nodes = fleet.nodes();
            self.shared
                .balancer
                .order_in_place(mode, order, |n| nodes[n].weight(), |n| pools.in_use(n));
            if affinity == ReplicaAffinity::Session {
                self.read_home.set(order.first().copied());
            }
        }
        Ok(Pick::Reads {
            primary: fleet.primary_in(view).ok(),
        })
    }

    /// The end of the read choice: the primary as the last resort, or why no node may serve the read.
    fn check_reads(
        &self,
        view: &FleetView,
        primary: Option<usize>,
        order: &mut Vec<usize>,
    ) -> Result<(), ProxyError> {
        let routing = &self.shared.config().routing;
        if self.route == Some(Target::Replica) {
            if order.is_empty() {
                return Err(ProxyError::error(
                    "57P03",
                    "pgfleet: no replica is available for this session (pgfleet.route=replica): all are down, \
                     out of recovery or lagging beyond routing.max_replica_lag",
                ));
            }
            return Ok(());
        }
        if routing.fallback_to_primary {
            // With no read node left (or as the last resort after them), reads go to the primary.
            if let Some(p) = primary
                && !order.contains(&p)
            {
                order.push(p);
            }
        } else if order.is_empty() {
            return Err(ProxyError::error(
                "57P03",
                "pgfleet: no replica is available for reads (all are down, out of recovery or lagging beyond \
                 routing.max_replica_lag) and routing.fallback_to_primary = false",
            )
            .with_hint("Set routing.fallback_to_primary = true to read from the primary instead."));
        }
        if order.is_empty() {
            return Err(self.shared.fleet.primary_in(view).err().unwrap_or_else(|| {
                ProxyError::error("08006", "pgfleet: no node is available to run this statement")
            }));
        }
        Ok(())
    }

    /// Read-your-writes: keeps the candidates that have replayed `lsn` (the primary always has), checking
    /// replicas directly when the snapshot is not fresh enough and waiting up to
    /// `routing.read_your_writes_wait` for one to catch up.
    async fn fresh_nodes(
        &mut self,
        order: Vec<usize>,
        lsn: Lsn,
        primary: Option<usize>,
        view: &crate::cluster::view::FleetView,
    ) -> Vec<usize> {
        let known_fresh = |n: &usize| Some(*n) == primary || view.nodes[*n].lsn.is_some_and(|l| l >= lsn);
        if view
            .nodes
            .iter()
            .enumerate()
            .all(|(i, s)| Some(i) == primary || s.lsn.is_some_and(|l| l >= lsn))
        {
            // Every node has replayed it: the guarantee holds without further checks.
            self.last_write_lsn = None;
            return order;
        }
        let fresh: Vec<usize> = order.iter().copied().filter(known_fresh).collect();
        if fresh.iter().any(|n| Some(*n) != primary) {
            return fresh;
        }
        let deadline = tokio::time::Instant::now() + self.shared.config().routing.read_your_writes_wait;
        let unsure: Vec<usize> = order.iter().copied().filter(|n| !known_fresh(n)).collect();
        loop {
            for n in &unsure {
                if self.has_replayed(*n, lsn).await {
                    let mut out = vec![*n];
                    out.extend(fresh.iter().copied());
                    return out;
                }
            }
            let now = tokio::time::Instant::now();
            if unsure.is_empty() || now >= deadline {
                return fresh;
            }
            tokio::time::sleep((deadline - now).min(std::time::Duration::from_millis(10))).await;
        }
    }

    /// Whether a replica has replayed `lsn`. A replica this session saw past it less than one health
    /// interval ago is not asked again: that answer is as fresh as the health snapshot, which is trusted
    /// the same way, and without it every read after a write asked again until the next health check.
    async fn has_replayed(&mut self, node: usize, lsn: Lsn) -> bool {
        let trusted_for = self.shared.config().health.interval;
        if node >= self.replayed_seen.len() {
            // A node a reload added after the session started.
            self.replayed_seen.resize(node + 1, None);
        }
        if self.replayed_seen[node].is_some_and(|(l, at)| l >= lsn && at.elapsed() < trusted_for) {
            return true;
        }
        let replayed = self.replayed(node).await;
        if let Some(l) = replayed {
            self.replayed_seen[node] = Some((l, std::time::Instant::now()));
        }
        replayed.is_some_and(|l| l >= lsn)
    }

    /// A replica's replay position, asked on the session's own connection to it.
    async fn replayed(&mut self, node: usize) -> Option<Lsn> {
        if self.shared.fleet.forward.enabled() {
            // Forwarded replicas: pgfleet itself knows what it has applied there.
            return self.shared.fleet.forward.visible(node);
        }
        self.connect(node).await.ok()?;
        let conn = self.conns[node].as_mut()?;
        conn.applied.unnamed = None;
        let text = conn
            .query_value("SELECT pg_last_wal_replay_lsn()::text")
            .await
            .ok()??;
        text.parse::<Lsn>().ok()
    }

    /// After a request: for read-your-writes, the WAL position of a write the session just committed, asked
    /// of the primary on the same connection.
    async fn after_request(&mut self, node: usize, wrote: bool) {
        let status = self.conns[node].as_ref().map(|c| c.status).unwrap_or(b'I');
        let state = if status == b'I' {
            "idle"
        } else {
            "idle in transaction"
        };
        if let Some(entry) = &self.entry {
            entry.update(state, self.tx_node.or(self.pinned.map(|p| p.0)));
        }
        if self.shared.config().routing.read_your_writes == ReadYourWrites::Off || self.pinned.is_some() {
            return;
        }
        if status != b'I' {
            self.tx_wrote |= wrote;
            return;
        }
        let committed_write = wrote || std::mem::take(&mut self.tx_wrote);
        if !committed_write || self.shared.fleet.primary().ok() != Some(node) {
            return;
        }
        let Some(conn) = self.conns[node].as_mut() else {
            return;
        };
        conn.applied.unnamed = None;
        match conn.query_value("SELECT pg_current_wal_lsn()::text").await {
            Ok(Some(text)) => {
                if let Ok(lsn) = text.parse::<Lsn>() {
                    self.last_write_lsn = Some(self.last_write_lsn.map_or(lsn, |l| l.max(lsn)));
                }
            }
            _ => {
                // Unknown position: be safe and read from the primary until a later write tells us more.
                self.last_write_lsn = Some(Lsn::MAX);
            }
        }
    }

    /// Counts a routing decision, through the counter of the previous request when the rule is the same.
    fn count_route(&mut self, node: usize, target: Target, label: &str) {
        let stats = &self.shared.stats;
        stats.node_queried(node);
        match &self.last_route {
            Some((t, l, counter)) if *t == target && l == label => {
                counter.fetch_add(1, Ordering::Relaxed);
            }
            _ => {
                let counter = stats.route_counter(target, label);
                counter.fetch_add(1, Ordering::Relaxed);
                self.last_route = Some((target, label.to_owned(), counter));
            }
        }
    }

    fn route_label<'a>(&self, plan: &'a Plan) -> &'a str {
        if self.tx_node.is_some() {
            "in transaction"
        } else if let Some((_, pin)) = self.pinned {
            pinned_label(pin)
        } else if let Some(t) = self.route {
            route_override_label(t)
        } else {
            &plan.rule
        }
    }

    /// After a reload changed the fleet: gives back connections to removed nodes, unless a transaction or
    /// pinned state lives there (those end with the transaction or the session).
    async fn leave_retired_nodes(&mut self) {
        self.fleet_generation = self.shared.fleet.generation();
        let nodes = self.shared.fleet.nodes_arc();
        for (node, slot) in nodes.iter().enumerate() {
            if !slot.is_retired() || self.holds_state_on(node) {
                continue;
            }
            if let Some(pool) = self.pools.get_mut(node) {
                *pool = None;
            }
            if let Some(c) = self.conns.get_mut(node).and_then(Option::take) {
                c.release().await;
            }
        }
    }

    /// `log.slow_statement`: one line for a request that took at least that long, with its statements
    /// redacted (constants replaced) so that no value reaches the log.
    fn log_if_slow(&self, req: &Request, node: usize, started: std::time::Instant) {
        let Some(limit) = self.shared.config().log.slow_statement else {
            return;
        };
        let took = started.elapsed();
        if took < limit {
            return;
        }
        let text = req.frames.iter().find_map(|f| match f.kind {
            b'Q' => crate::protocol::messages::query_text(f.body()).map(str::to_owned),
            b'P' => crate::protocol::messages::parse_fields(f.body()).map(|(_, q)| q.to_owned()),
            b'B' => crate::protocol::messages::bind_names(f.body())
                .and_then(|(_, name)| self.statements.get(name))
                // The stored Parse is the whole frame: type byte and length before the body.
                .and_then(|st| st.parse.get(5..))
                .and_then(crate::protocol::messages::parse_fields)
                .map(|(_, q)| q.to_owned()),
            _ => None,
        });
        let statement = crate::router::redact::redact(text.as_deref().unwrap_or(""), 1000);
        let node = &self.shared.fleet.node(node).target.name;
        tracing::warn!(duration_ms = took.as_millis() as u64, node = %node, statement = %statement, "slow statement");
    }

    async fn dispatch(&mut self, req: &Request, end: End) -> Result<(), SessionError> {
        if self.shared.fleet.generation() != self.fleet_generation {
            self.leave_retired_nodes().await;
        }
        // The candidate list is reused from request to request rather than allocated for each.
        let mut candidates = std::mem::take(&mut self.candidates);
        let result = self.dispatch_to(req, end, &mut candidates).await;
        self.candidates = candidates;
        result
    }

    async fn dispatch_to(
        &mut self,
        req: &Request,
        end: End,
        candidates: &mut Vec<usize>,
    ) -> Result<(), SessionError> {
        // The clock is read only when slow statements are logged.
        let started = self
            .shared
            .config()
            .log
            .slow_statement
            .map(|_| std::time::Instant::now());
        let mut plan = Plan::for_request(req, &self.statements, &self.rules);
        // Function volatility only matters for what would otherwise be a read: a write never waits for it,
        // which keeps writes fast when the primary is slow to answer the catalog query.
        if plan.target == Target::Replica
            && self.tx_node.is_none()
            && self.pinned.is_none()
            && self.refresh_function_rules().await
        {
            plan = Plan::for_request(req, &self.statements, &self.rules);
        }
        if let Err(e) = self.candidates(&plan, candidates).await {
            return self.refuse(e, end).await;
        }
        let retry_allowed = self.tx_node.is_none() && self.pinned.is_none() && plan.target == Target::Replica;
        let mut last_err = None;
        // A read whose node's pool is full moves on to the next candidate without waiting; only when no
        // candidate could serve it does it wait, on the first full one (its best choice). A full pool is not
        // a node failure: nothing is marked down or counted against the node.
        let mut first_full: Option<usize> = None;
        for (i, candidate) in candidates.iter().copied().enumerate() {
            let last = i + 1 == candidates.len() || !retry_allowed;
            let mut node = candidate;
            let checkout = if last && first_full.is_none() {
                Checkout::Wait
            } else {
                Checkout::Immediate
            };
            let mut connected = self.connect_with(node, checkout).await;
            if let Err(e) = &connected
                && e.is_pool_full()
                && !last
            {
                first_full.get_or_insert(node);
                continue;
            }
            if let (Err(e), Some(best)) = (&connected, first_full)
                && last
                && (e.is_pool_full() || e.is_node_failure())
            {
                if e.is_node_failure() {
                    self.shared.stats.node_error(node);
                }
                node = best;
                connected = self.connect(node).await;
            }
            if let Err(e) = connected {
                if !e.is_pool_full() {
                    self.shared.stats.node_error(node);
                }
                if self.holds_state_on(node) {
                    return self.node_lost(node, e, end).await;
                }
                if !e.is_node_failure() || last {
                    return self.refuse(self.error_of(&e), end).await;
                }
                last_err = Some(self.error_of(&e));
                continue;
            }
            if let Err(e) = self.bring_up_to_date(node, &plan).await {
                match e {
                    Prepare::Node(e) if e.is_node_failure() && !last => {
                        self.conns[node] = None;
                        self.shared.fleet.nodes()[node].mark_down();
                        self.shared.stats.node_error(node);
                        last_err = Some(self.error_of(&e));
                        continue;
                    }
                    Prepare::Node(e) => {
                        self.conns[node] = None;
                        return self.refuse(self.error_of(&e), end).await;
                    }
                    Prepare::Refused(err) => return self.refuse(err, end).await,
                }
            }
            let name = &self.shared.fleet.nodes()[node].target.name;
            let label = self.route_label(&plan);
            tracing::debug!(node = %name, rule = %label, "routing request");
            self.count_route(node, plan.target, label);
            let wrote = plan.target == Target::Primary;
            match Flow::run(self, node, req, end, plan, retry_allowed).await {
                Ok(()) => {
                    if let Some(started) = started {
                        self.log_if_slow(req, node, started);
                    }
                    self.after_request(node, wrote).await;
                    self.release_between_transactions(node);
                    return Ok(());
                }
                Err(FlowError::Client(e)) => return Err(e),
                Err(FlowError::Node {
                    error,
                    plan: returned,
                    output_sent,
                }) => {
                    self.conns[node] = None;
                    self.shared.fleet.nodes()[node].mark_down();
                    self.shared.stats.node_error(node);
                    tracing::warn!(node = %self.shared.fleet.nodes()[node].target.name, error = %error, "node failed during a request");
                    if output_sent || last || self.tx_node.is_some() {
                        return self.node_lost(node, error, end).await;
                    }
                    last_err = Some(self.error_of(&error));
                    plan = *returned;
                }
            }
        }
        let e = last_err.unwrap_or_else(|| {
            ProxyError::error("08006", "pgfleet: no node is available to run this statement")
        });
        self.refuse(e, end).await
    }

    /// A node died under a request that could not be retried.
    /// Transaction pooling: gives the node connection back once no transaction or pinned state needs it.
    fn release_between_transactions(&mut self, node: usize) {
        if !self.shared_conns
            || self.tx_node.is_some()
            || self.holds_state_on(node)
            || self.discard_until_sync
        {
            return;
        }
        if let Some(c) = self.conns[node].take() {
            c.return_shared();
        }
    }

    /// Transaction pooling: a query made only of DEALLOCATE statements names the client's statements, which
    /// exist on shared connections under proxy names; the proxy forgets them and answers by itself.
    async fn deallocate_locally(&mut self, frame: &crate::protocol::Frame) -> Result<bool, SessionError> {
        let text = crate::protocol::messages::query_text(frame.body()).unwrap_or("");
        let names = super::request::deallocated_names(text);
        if names.is_empty() {
            return Ok(false);
        }
        let statements = crate::router::split::split_statements(text);
        if names.len() != statements.len() {
            return Ok(false);
        }
        self.names.forget(&names);
        let mut out = Vec::new();
        for _ in &names {
            out.extend_from_slice(&crate::protocol::frame::build(b'C', b"DEALLOCATE\0"));
        }
        out.extend_from_slice(&ready_for_query(self.status()));
        self.write_client(&out).await?;
        Ok(true)
    }

    /// Whether the session has a transaction or pinned state on `node`, which dies with its connection.
    fn holds_state_on(&self, node: usize) -> bool {
        self.tx_node == Some(node) || matches!(self.pinned, Some((n, _)) if n == node)
    }

    /// A node died under a request that could not be retried.
    async fn node_lost(&mut self, node: usize, error: BackendError, end: End) -> Result<(), SessionError> {
        let name = self.shared.fleet.nodes()[node].target.name.clone();
        if self.holds_state_on(node) {
            // The client's transaction or pinned session state died with the node. Like PostgreSQL, end the
            // session rather than let the client believe its transaction still exists.
            let what = if self.tx_node == Some(node) {
                "transaction"
            } else {
                "pinned session state"
            };
            let e = ProxyError::fatal(
                "57P01",
                format!(
                    "pgfleet: lost the connection to node \"{name}\" holding this session's {what}: {error}"
                ),
            );
            let _ = self.client.write_all(&e.encode()).await;
            return Err(SessionError::Fatal(e.message));
        }
        self.refuse(ProxyError::error(error.sqlstate(), error.to_string()), end)
            .await
    }

    /// Replays on `node` what the session has and that node lacks: settings, then prepared statements.
    async fn bring_up_to_date(&mut self, node: usize, plan: &Plan) -> Result<(), Prepare> {
        let Some(conn) = self.conns[node].as_mut() else {
            return Ok(());
        };
        let same_settings = conn.applied.settings_generation == self.settings.generation();
        if let Some(sql) = (!same_settings)
            .then(|| self.settings.diff(&conn.applied.settings))
            .flatten()
        {
            let x = conn.exchange(&query(&sql)).await.map_err(Prepare::Node)?;
            if let Some(err) = x.error {
                let msg = crate::protocol::messages::error_field(err.body(), b'M')
                    .unwrap_or("error")
                    .to_owned();
                return Err(Prepare::Refused(ProxyError::error(
                    "55000",
                    format!(
                        "pgfleet: cannot apply this session's settings on node \"{}\": {msg}",
                        conn.target.name
                    ),
                )));
            }
            conn.applied.settings = self.settings.entries().clone();
            conn.applied.unnamed = None;
        }
        // Applied just now, or equal already: either way the maps match.
        conn.applied.settings_generation = self.settings.generation();
        let mut replay: Vec<u8> = Vec::new();
        let mut added: Vec<(String, u64)> = Vec::new();
        // A name the client closed and now parses again may still exist here if the Close ran elsewhere; with
        // shared connections, another session may have prepared the same proxy-named statement here.
        for (name, _) in &plan.parses {
            let stale = self.shared_conns || self.statements.get(name).is_none();
            if !name.is_empty() && conn.applied.prepared.contains(name) && stale {
                replay.extend_from_slice(&close_statement(name));
                conn.applied.prepared.remove(name);
            }
        }
        for name in &plan.needs {
            let Some(stmt) = self.statements.get(name) else {
                continue;
            };
            let present = if name.is_empty() {
                conn.applied.unnamed == Some(stmt.id)
            } else {
                conn.applied.prepared.contains(name)
            };
            if !present {
                replay.extend_from_slice(&stmt.parse);
                added.push((name.clone(), stmt.id));
            }
        }
        if !replay.is_empty() {
            replay.extend_from_slice(&sync());
            let x = conn.exchange(&replay).await.map_err(Prepare::Node)?;
            if let Some(err) = x.error {
                let msg = crate::protocol::messages::error_field(err.body(), b'M')
                    .unwrap_or("error")
                    .to_owned();
                return Err(Prepare::Refused(ProxyError::error(
                    "26000",
                    format!(
                        "pgfleet: cannot prepare the statement again on node \"{}\": {msg}",
                        conn.target.name
                    ),
                )));
            }
            for (name, id) in added {
                if name.is_empty() {
                    conn.applied.unnamed = Some(id);
                } else {
                    conn.applied.prepared.insert(name);
                }
            }
        }
        Ok(())
    }

    /// Bookkeeping after a request completed on `node`.
    pub(super) fn finish(&mut self, node: usize, plan: Plan, outcome: &super::forward::Outcome) {
        let was_in_tx = self.tx_node.is_some();
        let Some(conn) = self.conns[node].as_mut() else {
            return;
        };
        conn.status = outcome.status;
        if plan.has_query {
            conn.applied.unnamed = None;
        }
        for (i, (name, stmt)) in plan.parses.into_iter().enumerate() {
            if i >= outcome.parses_ok {
                break;
            }
            let id = self.statements.insert(&name, stmt);
            if name.is_empty() {
                conn.applied.unnamed = Some(id);
            } else {
                conn.applied.prepared.insert(name);
            }
        }
        for name in &plan.closes {
            self.statements.remove(name);
            conn.applied.prepared.remove(name);
        }
        if !outcome.saw_error {
            for name in &plan.deallocates {
                if name == "*" {
                    self.statements.clear();
                    conn.applied.prepared.clear();
                    conn.applied.unnamed = None;
                } else {
                    self.statements.remove(name);
                    conn.applied.prepared.remove(name);
                }
            }
        }
        if let Some(pin) = plan.pin
            && self.pinned.is_none()
        {
            tracing::info!(node = %conn.target.name, reason = ?pin, "session pinned to node");
            self.pinned = Some((node, pin));
            conn.applied.unresettable = true;
        }
        if !outcome.saw_error {
            self.pending_changes.extend(plan.changes);
        }
        match outcome.status {
            b'T' | b'E' => self.tx_node = Some(node),
            _ => {
                self.tx_node = None;
                let committed = if was_in_tx || outcome.began_tx {
                    outcome.last_commit
                } else {
                    !outcome.saw_error
                };
                if committed && !self.pending_changes.is_empty() {
                    for c in std::mem::take(&mut self.pending_changes) {
                        self.settings.apply(&c);
                    }
                    // The node that ran them already has them.
                    conn.applied.settings = self.settings.entries().clone();
                    conn.applied.settings_generation = self.settings.generation();
                }
                self.pending_changes.clear();
            }
        }
        if plan.ddl {
            self.shared.catalog.invalidate(&self.database);
        }
    }

    /// Returns every node connection to its pool (rolling back and resetting as needed).
    async fn close(&mut self) {
        for slot in self.conns.iter_mut() {
            if let Some(c) = slot.take() {
                c.release().await;
            }
        }
    }
}

/// Resolves when the session's idle timer fires; never without one.
async fn idle_timer_fired(timer: &mut Option<std::pin::Pin<Box<tokio::time::Sleep>>>) {
    match timer.as_mut() {
        Some(timer) => timer.as_mut().await,
        None => std::future::pending().await,
    }
}

/// Reads client bytes into `cbuf`; meanwhile, for a session listening on `listen_node`, passes on what that
/// node sends (notifications), ending the session if the node goes away.
async fn client_or_node(
    client: &mut ClientStream,
    cbuf: &mut FrameBuffer,
    conns: &mut [Option<PooledConn>],
    listen_node: Option<usize>,
) -> Result<(), SessionError> {
    let Some(conn) = listen_node.and_then(|n| conns[n].as_mut()) else {
        if client.read_buf(cbuf.read_target()).await? == 0 {
            return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
        }
        return Ok(());
    };
    tokio::select! {
        r = client.read_buf(cbuf.read_target()) => {
            if r? == 0 {
                return Err(std::io::Error::from(std::io::ErrorKind::UnexpectedEof).into());
            }
        }
        r = conn.fill() => {
            let block = match r {
                Ok(()) => conn.take_block(|_, _| {}).ok().flatten(),
                Err(_) => None,
            };
            if conn.broken {
                let e = ProxyError::fatal("57P01", format!(
                    "pgfleet: lost the connection to node \"{}\" that held this session's LISTEN",
                    conn.target.name));
                let _ = client.write_all(&e.encode()).await;
                return Err(SessionError::Fatal(e.message));
            }
            if let Some(b) = block {
                client.write_all(&b).await?;
                client.flush().await?;
            }
        }
    }
    Ok(())
}

/// "pinned: {pin}", spelled out so that labelling a pinned session's requests allocates nothing.
fn pinned_label(pin: Pin) -> &'static str {
    match pin {
        Pin::TempTable => "pinned: temporary object",
        Pin::AdvisoryLock => "pinned: session advisory lock",
        Pin::Listen => "pinned: LISTEN",
        Pin::HoldCursor => "pinned: WITH HOLD cursor",
        Pin::SqlPrepare => "pinned: SQL PREPARE",
    }
}

/// "session route: {target}", spelled out for the same reason.
fn route_override_label(target: Target) -> &'static str {
    match target {
        Target::Primary => "session route: primary",
        Target::Replica => "session route: replica",
    }
}

/// What the routing rules decided before the read-specific checks.
enum Pick {
    /// The request must run on the one node given (transaction, pin, statement, write).
    Decided,
    /// Read nodes in balanced order; `primary` is the current primary, if any.
    Reads { primary: Option<usize> },
}

/// Why a session could not start on a node.
enum Greet {
    /// The node failed or refused the login: try the next one if it is a node failure.
    Node(BackendError),
    /// The client's startup parameters are invalid: no node will accept them.
    Refused(ProxyError),
}

/// Why bringing a node up to date failed.
enum Prepare {
    /// The node failed.
    Node(BackendError),
    /// The node refused what the proxy replayed; the client gets this error.
    Refused(ProxyError),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_match_their_display() {
        for pin in [
            Pin::TempTable,
            Pin::AdvisoryLock,
            Pin::Listen,
            Pin::HoldCursor,
            Pin::SqlPrepare,
        ] {
            assert_eq!(pinned_label(pin), format!("pinned: {pin}"));
        }
        for t in [Target::Primary, Target::Replica] {
            assert_eq!(route_override_label(t), format!("session route: {t}"));
        }
    }
}
