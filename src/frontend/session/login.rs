//! A session's start: authentication against `[[users]]` (also used by the admin console), the client
//! limits (`listen.max_clients`, a user's `max_connections`), the startup parameters and `pgfleet.route`,
//! and the greeting: the first node connection, whose parameters the client is told.

use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use super::{ADMIN_DATABASE, PendingLogin, Session, SessionError};
use crate::backend::BackendError;
use crate::cluster::{NodeId, ShardId};
use crate::config::PoolMode;
use crate::frontend::Shared;
use crate::frontend::auth;
use crate::frontend::names::StatementNames;
use crate::frontend::state::{Settings, Statements};
use crate::frontend::stream::ClientStream;
use crate::peer::Peer;
use crate::protocol::FrameBuffer;
use crate::protocol::TxStatus;
use crate::protocol::messages::{ProxyError, backend_key_data, parameter_status, query, ready_for_query};
use crate::router::classify::Target;
use crate::router::policy::{self, RoutingState};
use crate::stats::ClientInfo;

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

/// Authenticates a client against `[[users]]`; on failure the client has been sent FATAL, except when the
/// `deadline` passed first: then, as PostgreSQL does, nothing is sent.
pub(crate) async fn authenticate_client(
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
pub(super) fn too_many_clients(max_clients: usize) -> ProxyError {
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

impl Session {
    pub(super) async fn login(
        mut client: ClientStream,
        peer: Peer,
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
        // Startup parameters and `options` settings become the session's settings, numbered once at the end.
        let mut startup: Vec<(String, String)> = Vec::new();
        let mut route = None;
        let mut read_after = None;
        for (k, v) in &params {
            match k.as_str() {
                "user" | "database" | "replication" | "options" => {}
                k if k.starts_with("_pq_.") => {}
                k => startup.push((k.to_owned(), v.clone())),
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
                if k == super::consistency::READ_AFTER {
                    match super::consistency::parse_read_after(&v) {
                        Ok(lsn) => read_after = Some(lsn).filter(|l| *l != crate::protocol::lsn::Lsn::ZERO),
                        Err(e) => {
                            let e = crate::protocol::messages::ProxyError {
                                severity: crate::protocol::messages::Severity::Fatal,
                                ..e
                            };
                            client.write_all(&e.encode()).await?;
                            return Err(SessionError::Fatal(e.message));
                        }
                    }
                } else if k == "pgfleet.route" {
                    match route_override(&v) {
                        Ok(t) => route = Some(t),
                        Err(e) => {
                            client.write_all(&e.encode()).await?;
                            return Err(SessionError::Fatal(e.message));
                        }
                    }
                } else {
                    startup.push((k, v));
                }
            }
        }
        let settings = Settings::from_startup(startup.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        let client_encoding = settings.client_encoding();
        let async_commits = startup
            .iter()
            .any(|(k, _)| k.eq_ignore_ascii_case("synchronous_commit"));
        let id = shared
            .next_session
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let key = shared.cancels.register(&user);
        let shared_conns = shared.config().pool.mode == PoolMode::Transaction;
        let rules = shared
            .catalog
            .cached(&database)
            .unwrap_or_else(|| shared.catalog.base());
        let shutdown = shared.shutdown.subscribe();
        // Read before the node count: a reload in between then shows as a newer generation.
        let fleet_generation = shared.fleet.generation();
        let node_count = shared.fleet.nodes().len();
        let current = super::current::Current::new(&shared.config, &shared.fleet);
        let mut session = Session {
            current,
            cbuf: FrameBuffer::new(max),
            conns: (0..node_count).map(|_| None).collect(),
            shared,
            id,
            client,
            user,
            password: user_cfg.password.clone(),
            database,
            settings,
            pending_changes: Default::default(),
            statements: Statements::default(),
            routing: RoutingState {
                route,
                read_after,
                ..RoutingState::default()
            },
            shard: ShardId::default(),
            parked: Vec::new(),
            tx_savepoint: false,
            key,
            discard_until_sync: false,
            rules,
            trailer: None,
            trailer_answer: None,
            lead: None,
            lead_need: None,
            last_read_at: None,
            tx_wrote: false,
            commit_untracked: false,
            async_commits,
            shared_conns,
            names: StatementNames::default(),
            entry: None,
            shutdown,
            idle_timer: None,
            rules_fresh: None,
            candidates: Vec::new(),
            spare_parses: Vec::new(),
            reading: crate::frontend::request::Reading {
                place: Default::default(),
                encoding: client_encoding,
            },
            routes: Default::default(),
            last_node: None,
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
        let mut order = vec![fleet.likely_primary(ShardId::default())];
        {
            let view = fleet.view();
            let nodes = fleet.nodes();
            let facts = super::dispatch::LiveFacts::new(&nodes, fleet.forward.as_ref(), &self.shared.pools);
            policy::read_nodes_into(&view, &facts, ShardId::default(), false, None, &mut order);
        }
        let mut last_err: Option<ProxyError> = None;
        for node in order {
            match self.first_node(node).await {
                Ok(mut reported) => {
                    let view = self.shared.fleet.view();
                    let in_recovery = view.nodes.get(node.index()).and_then(|s| s.in_recovery);
                    report_role(&mut reported, in_recovery);
                    self.release_between_transactions(node);
                    let mut out = Vec::new();
                    for (k, v) in &reported {
                        out.extend_from_slice(&parameter_status(k, v));
                    }
                    out.extend_from_slice(&backend_key_data(self.key.pid, self.key.secret));
                    out.extend_from_slice(&ready_for_query(TxStatus::Idle.byte()));
                    self.client.write_all(&out).await?;
                    self.client.flush().await?;
                    return Ok(());
                }
                Err(Greet::Node(e)) => {
                    self.conns[node.index()] = None;
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
    async fn first_node(&mut self, node: NodeId) -> Result<Vec<(String, String)>, Greet> {
        self.connect(node).await.map_err(Greet::Node)?;
        let Some(conn) = self.conns[node.index()].as_mut() else {
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
}

/// Makes the greeting's `in_hot_standby` say what the health checks last saw of the node. A node reports it
/// when a connection starts and again only after that connection's next statement, so a pooled connection
/// opened while its node was a replica still holds "on" after a promotion; clients (libpq's
/// `target_session_attrs`, pgjdbc's `targetServerType`) would then take the new primary for a standby.
fn report_role(reported: &mut [(String, String)], in_recovery: Option<bool>) {
    let Some(in_recovery) = in_recovery else {
        return;
    };
    if let Some((_, value)) = reported.iter_mut().find(|(k, _)| k == "in_hot_standby") {
        *value = if in_recovery { "on" } else { "off" }.to_owned();
    }
}

/// Why a session could not start on a node.
enum Greet {
    /// The node failed or refused the login: try the next one if it is a node failure.
    Node(BackendError),
    /// The client's startup parameters are invalid: no node will accept them.
    Refused(ProxyError),
}

#[cfg(test)]
mod tests {
    use super::report_role;

    #[test]
    fn the_greeting_reports_the_role_the_health_checks_saw() {
        let params = |hot: &str| {
            vec![
                ("server_version".to_owned(), "15.8".to_owned()),
                ("in_hot_standby".to_owned(), hot.to_owned()),
            ]
        };
        let mut promoted = params("on");
        report_role(&mut promoted, Some(false));
        assert_eq!(promoted, params("off"));
        let mut demoted = params("off");
        report_role(&mut demoted, Some(true));
        assert_eq!(demoted, params("on"));
        let mut unknown = params("on");
        report_role(&mut unknown, None);
        assert_eq!(unknown, params("on"));
        // A server that does not report it (before PostgreSQL 14) is not given one.
        let mut old = vec![("server_version".to_owned(), "13.1".to_owned())];
        report_role(&mut old, Some(false));
        assert_eq!(old.len(), 1);
    }
}
