//! One client session: the `Session` that owns a client's connection, its node connections and the state
//! that follows it from node to node, and the entry point `run`. The work is split by concern: `login`
//! (authentication, limits, the first node and the greeting), `serve` (the request loop, idle timers,
//! notifications), `dispatch` (asking the routing policy, the read-your-writes probes, running a request
//! and retrying a read elsewhere), `replay` (bringing a node up to date with the session's settings and
//! prepared statements, and the bookkeeping after a request).

mod consistency;
mod current;
mod dispatch;
mod login;
mod positions;
mod replay;
mod serve;
mod shards;
mod signal;

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::Shared;
use super::cancel::CancelKey;
use super::names::StatementNames;
use super::request::End;
use super::state::{Settings, Statements};
use super::stream::ClientStream;
use crate::backend::{BackendError, NodePool, PooledConn};
use crate::cluster::{NodeId, ShardId};
use crate::peer::Peer;
use crate::protocol::lsn::Lsn;
use crate::protocol::messages::{ProxyError, Severity, ready_for_query};
use crate::protocol::{FrameBuffer, FrameError, TxStatus};
use crate::router::functions::FunctionRules;
use crate::router::policy::RoutingState;
use crate::stats::ClientEntry;

use login::authenticate_client;

/// Why a session ended early.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
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
pub(crate) struct PendingLogin {
    /// Counts the connection as logging in while it exists.
    pub guard: crate::stats::LoginGuard,
    /// When the client must have been sent AuthenticationOk (`listen.authentication_timeout`).
    pub deadline: tokio::time::Instant,
}

/// Serves one client until it leaves; `login` ends with the client's authentication.
pub(crate) async fn run(
    stream: ClientStream,
    peer: Peer,
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
    let serving = async move {
        if database == ADMIN_DATABASE {
            Box::pin(admin_login(stream, peer, &user, shared, login)).await;
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
                    let e = login::too_many_clients(max);
                    tracing::info!(error = %e.message, "login refused: listen.max_clients reached");
                    let _ = stream.write_all(&e.encode()).await;
                    return;
                }
            },
        };
        let stats = shared.stats.clone();
        // Boxed, as the admin session above: the login's state (a few KiB: the password exchange, the first
        // node connection) would otherwise stay part of the session's future, and of the memory every
        // request touches, long after the login ended.
        let logging_in = Box::pin(Session::login(
            stream, peer, user, database, params, shared, login,
        ));
        // Matched as it is awaited: a named result would keep a second `Session`'s room in the future for
        // the whole session (a value moved out of a local still has its place there).
        let mut session = match logging_in.await {
            // The slot is held until the session counts in its own right.
            Ok(s) => {
                drop(slot);
                s
            }
            Err(e) => {
                drop(slot);
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
    };
    crate::log_scope::in_session(serving, span).await
}

pub(crate) use crate::admin::ADMIN_DATABASE;

/// A client of the admin console logs in as any client does; the console (`admin::session`) takes over from
/// AuthenticationOk.
async fn admin_login(
    mut client: ClientStream,
    peer: Peer,
    user: &str,
    shared: Arc<Shared>,
    login: PendingLogin,
) {
    let authenticated = authenticate_client(&mut client, user, &shared, login.deadline).await;
    drop(login);
    match authenticated {
        Ok(account) => {
            crate::admin::session::run(
                client,
                peer,
                &account,
                &shared.next_session,
                &shared.admin,
                shared.shutdown.subscribe(),
            )
            .await
        }
        Err(e) => {
            shared
                .stats
                .login_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(error = %e, "admin login failed");
        }
    }
}

/// When a session's function rules stop being the catalog's current ones (`Session::function_rules_fresh`,
/// `Session::function_bodies_known`).
#[derive(Debug, Clone, Copy)]
struct RulesFresh {
    /// `Catalog::generation` when they were taken.
    generation: u64,
    /// `Catalog::code_generation` when they were taken.
    code_generation: u64,
    /// Their entry's expiry.
    until: std::time::Instant,
}

/// A client session between its login and its end.
pub(super) struct Session {
    pub(super) shared: Arc<Shared>,
    /// The configuration and fleet snapshot as of the current request (see `current`).
    current: current::Current,
    pub(super) id: u64,
    pub(super) client: ClientStream,
    pub(super) cbuf: FrameBuffer,
    user: String,
    password: String,
    database: String,
    pub(super) conns: Vec<Option<PooledConn>>,
    settings: Settings,
    pending_changes: crate::frontend::state::PendingChanges,
    pub(super) statements: Statements,
    /// Open transaction, pin, session route, read home, last write: what the routing policy remembers of
    /// the shard `shard` (the only one of an unsharded fleet).
    routing: RoutingState,
    /// The shard of the session's current request, whose routing state is `routing`.
    pub(super) shard: ShardId,
    /// What the routing policy remembers of each other shard, by shard number, while the session works on
    /// another (positions of different servers never mix).
    parked: Vec<RoutingState>,
    /// Sharded fleets: the open transaction set a savepoint, which exists only on its shard, so the
    /// transaction may not move to another shard.
    tx_savepoint: bool,
    pub(super) key: CancelKey,
    discard_until_sync: bool,
    pub(super) rules: Arc<FunctionRules>,
    /// The position query the next request carries (consistency levels), set by dispatch for `forward`.
    pub(super) trailer: Option<crate::frontend::forward::Trailer>,
    /// That query's answer, once the request ran.
    pub(super) trailer_answer: Option<Lsn>,
    /// A read led by a replay-position question (`forward::LeadState`): the replica asked, and the position
    /// the read must see there. Set by `candidates`, for the dispatch loop.
    lead: Option<(crate::cluster::NodeId, Lsn)>,
    /// The position the next run's lead asks for, set by dispatch for `forward`.
    pub(super) lead_need: Option<Lsn>,
    /// When the session's last request ended (monotonic reads: a primary position asked later bounds it).
    last_read_at: Option<std::time::Instant>,
    /// The open transaction ran something on the primary that may have written.
    tx_wrote: bool,
    /// The session's last commit has no known position (the fleet was its primary alone, see
    /// `trailer_for`): SHOW pgfleet.write_lsn asks the primary.
    commit_untracked: bool,
    /// The session may commit asynchronously: it named `synchronous_commit` (at login, in a SET, or in a write
    /// or a transaction's statement on the primary, see `note_commit_mode`). Its commit positions are then insert
    /// positions (`commit_position`); it stays so for the session, which costs only reads that wait a little
    /// longer for a replica.
    async_commits: bool,
    /// Transaction pooling: node connections go back to the pool between transactions.
    pub(super) shared_conns: bool,
    /// Transaction pooling: the client's statement names and the proxy's.
    names: StatementNames,
    /// The session's row in SHOW CLIENTS, once the login is complete.
    pub(super) entry: Option<Arc<ClientEntry>>,
    /// Until when and as of which catalog generations `rules` are the catalog's current ones.
    rules_fresh: Option<RulesFresh>,
    /// Where a request of several frames is assembled to be written at once, kept between requests.
    pub(super) scratch: Vec<u8>,
    /// The pool of each node for this session's login, once used.
    pools: Vec<Option<NodePool>>,
    /// The routing-statistics counters of the last few (target, rule) pairs the session counted.
    routes: crate::stats::RecentRoutes,
    /// The statistics counters of the previous request's node.
    last_node: Option<(NodeId, Arc<crate::stats::NodeCounters>)>,
    /// Nodes to try for the current request, kept to reuse its allocation.
    candidates: Vec<NodeId>,
    /// The room of the last plan's parsed statements, empty, for the next plan: an extended-protocol request
    /// parses a statement each time, and a fresh list cost it an allocation and a free.
    pub(super) spare_parses: Vec<(String, crate::frontend::state::Statement)>,
    /// How the session's statements are read: where its last one was found among its worker's recent
    /// statements (`router::cache::Place`), and its `client_encoding`, kept as its settings commit it.
    pub(in crate::frontend) reading: crate::frontend::request::Reading,
    /// Tells the session when pgfleet shuts down (the deadline for open transactions).
    shutdown: tokio::sync::watch::Receiver<Option<tokio::time::Instant>>,
    /// client_idle_timeout / idle_in_transaction_timeout, when set.
    idle_timer: Option<std::pin::Pin<Box<tokio::time::Sleep>>>,
    /// The fleet generation last seen; a reload that changes nodes bumps it.
    fleet_generation: u64,
}

impl Session {
    pub(super) fn fatal_of(&self, e: &BackendError) -> ProxyError {
        ProxyError {
            severity: Severity::Fatal,
            ..self.error_of(e)
        }
    }

    pub(super) fn error_of(&self, e: &BackendError) -> ProxyError {
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

    /// The transaction status the client should see when the proxy answers by itself.
    pub(super) fn status(&self) -> TxStatus {
        if self.shared.sharding.is_some() {
            return self.status_across_shards();
        }
        self.routing
            .tx_node
            .and_then(|n| self.conn(n))
            .map_or(TxStatus::Idle, |c| c.status)
    }

    /// Makes `shard` the session's current one: its routing state becomes `routing`, the previous shard's
    /// is parked.
    pub(super) fn enter_shard(&mut self, shard: ShardId) {
        if shard == self.shard {
            return;
        }
        if self.parked.len() <= shard.index() {
            let route = self.routing.route;
            self.parked.resize_with(shard.index() + 1, || RoutingState {
                route,
                ..RoutingState::default()
            });
        }
        std::mem::swap(&mut self.routing, &mut self.parked[self.shard.index()]);
        std::mem::swap(&mut self.routing, &mut self.parked[shard.index()]);
        self.shard = shard;
    }

    /// The session's connection to `node`, if it holds one.
    pub(super) fn conn(&self, node: NodeId) -> Option<&PooledConn> {
        self.conns.get(node.index()).and_then(Option::as_ref)
    }

    pub(in crate::frontend) async fn write_client(&mut self, bytes: &[u8]) -> Result<(), SessionError> {
        self.client.write_all(bytes).await?;
        self.client.flush().await?;
        Ok(())
    }

    /// SHOW CLIENTS's row of a request about to be answered: idle again (or idle in a transaction), unless
    /// the request already recorded its state. Called before the answer's ReadyForQuery is written.
    pub(super) fn settle_row(entry: &Option<Arc<ClientEntry>>, status: TxStatus) {
        if let Some(entry) = entry {
            entry.settle(|| match status {
                TxStatus::Idle => "idle",
                _ => "idle in transaction",
            });
        }
    }

    /// Answers a request the proxy could not run: the error, then ReadyForQuery when the request ended
    /// with Query or Sync; after Flush, input is skipped up to the next Sync as PostgreSQL does.
    pub(super) async fn refuse(&mut self, err: ProxyError, end: End) -> Result<(), SessionError> {
        tracing::info!(error = %err, "request refused");
        if end != End::Open {
            Self::settle_row(&self.entry, self.status());
        }
        let mut out = err.encode().to_vec();
        match end {
            End::Query | End::Sync => out.extend_from_slice(&ready_for_query(self.status().byte())),
            End::Open => self.discard_until_sync = true,
        }
        self.write_client(&out).await
    }
}
