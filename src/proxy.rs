//! The running proxy: the one place that builds the running parts (config handle, fleet, pools, function
//! catalog, counters, forward-mode state, client TLS) and hands each subsystem the handles it uses: the
//! sessions get [`frontend::Shared`], the health monitor the fleet and the config, replication its
//! [`Replication`] handle, the admin console and /metrics an [`admin::Context`], reloads a
//! [`reload::Context`]. It also starts their tasks and drains the sessions at shutdown.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use crate::admin;
use crate::backend::Pools;
use crate::cluster::Fleet;
use crate::config::{Config, ConfigHandle};
use crate::frontend::workers::Workers;
use crate::frontend::{self, Shared};
use crate::reload;
use crate::replication::{ForwardState, Replication};
use crate::router::catalog::Catalog;
use crate::router::functions::FunctionRules;
use crate::stats::Stats;

pub use crate::reload::SetLogFilter;

// The stack size the binary gives every thread that runs sessions; the router's depth bound decides it.
pub use crate::router::depth::THREAD_STACK_SIZE;

/// Whether a log event may be written at all, whatever `log.level`, a reload or `RUST_LOG` asks for: the
/// binary installs this as a filter over the configurable one. sqlparser logs every statement it parses
/// (`Parsing sql '...'`) and pieces of its syntax tree at DEBUG, and tokio-postgres the statements (and
/// parameters) of the connections pgfleet opens itself at DEBUG — health checks, the function catalog, and
/// forward mode's apply statements, which carry row values. Neither may reach the logs below INFO
/// (docs/operations.md): sqlparser is silenced entirely, tokio-postgres keeps INFO and above. A fixed
/// filter rather than directives appended to the configurable one, because a more specific directive
/// (`sqlparser::parser=debug`) or a span directive (`[session]=debug`) in `RUST_LOG` would outrank those.
pub fn log_event_allowed(metadata: &tracing::Metadata<'_>) -> bool {
    let target = metadata.target();
    let from = |krate: &str| {
        target
            .strip_prefix(krate)
            .is_some_and(|rest| rest.is_empty() || rest.starts_with("::"))
    };
    if from("sqlparser") {
        return false;
    }
    !(from("tokio_postgres") && *metadata.level() > tracing::Level::INFO)
}

/// The running proxy's parts, each handed to the subsystems that use it.
pub struct Proxy {
    /// The configuration in force.
    pub config: ConfigHandle,
    /// What client sessions share.
    pub sessions: Arc<Shared>,
    /// What the admin console and /metrics read.
    pub admin: Arc<admin::Context>,
    /// What a reload (SIGHUP, admin RELOAD) changes.
    pub reload: Arc<reload::Context>,
    /// Forward mode's handle.
    pub replication: Arc<Replication>,
    /// Changes the log filter in place; set by the binary once logging is up.
    pub log_filter: Arc<OnceLock<SetLogFilter>>,
    /// The threads client sessions run on; they outlive the accept loop, so that a shutdown can drain them.
    pub workers: Arc<Workers>,
}

/// Why the proxy could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Binding the listen address failed.
    #[error("cannot listen on {address} (listen.address): {source}")]
    Bind {
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// Setting up the Unix-domain socket for local clients failed.
    #[error("cannot listen on the socket of listen.unix_socket_dir: {0}")]
    LocalBind(#[from] crate::frontend::local_socket::LocalSocketError),
    /// Binding the metrics address failed.
    #[error("cannot listen on {address} (admin.metrics_address): {source}")]
    MetricsBind {
        /// The address.
        address: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// TLS files unusable.
    #[error("listen.tls_cert / listen.tls_key: {0}")]
    Tls(#[from] crate::frontend::tls::TlsError),
    /// A node's TLS settings unusable.
    #[error("nodes: {0}")]
    NodeTls(#[from] crate::backend::tls::TlsSetupError),
    /// Sharding cannot work with these shard primaries (TLS settings, prepared transactions disabled).
    #[error("{0}")]
    Sharding(String),
    /// A session worker thread could not start.
    #[error("worker_threads: {0}")]
    Workers(#[from] crate::frontend::workers::WorkerError),
}

impl Proxy {
    /// Builds the running parts for a validated config.
    pub fn new(config: Config) -> Result<Arc<Proxy>, StartError> {
        Self::with_source(config, None)
    }

    /// Builds the running parts for a validated config read from `source`, which reloads read again.
    pub fn with_source(config: Config, source: Option<PathBuf>) -> Result<Arc<Proxy>, StartError> {
        let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
            (Some(cert), Some(key)) => Some(crate::frontend::tls::acceptor(
                cert,
                key,
                config.listen.tls_min_version,
            )?),
            _ => None,
        };
        let workers = Arc::new(Workers::start(config.worker_threads, THREAD_STACK_SIZE)?);
        let forward = Arc::new(ForwardState::new(&config));
        let fleet = Arc::new(Fleet::from_config(&config, forward.clone())?);
        let node_count = fleet.nodes().len();
        let pools = Arc::new(Pools::new(config.pool.clone(), node_count));
        let base = FunctionRules::new(
            &config.routing.write_functions,
            &config.routing.read_only_functions,
        );
        let catalog = Arc::new(Catalog::new(
            base,
            config.routing.function_refresh,
            config.pool.connect_timeout,
        ));
        let stats = Arc::new(Stats::new(node_count));
        let sharding = match config.is_sharded() {
            true => Some(Arc::new(
                crate::shard::Sharding::new(&config, instance_id(&config))
                    .map_err(|e| StartError::Sharding(e.to_string()))?,
            )),
            false => None,
        };
        let config = ConfigHandle::new(config);
        let replication = Replication::new(config.clone(), fleet.clone(), forward);
        let reload = Arc::new(reload::Context::new(
            config.clone(),
            source,
            fleet.clone(),
            pools.clone(),
            catalog.clone(),
            stats.clone(),
        ));
        let admin = Arc::new(admin::Context::new(
            config.clone(),
            fleet.clone(),
            pools.clone(),
            stats.clone(),
            catalog.clone(),
            replication.clone(),
            reload.clone(),
        ));
        let sessions = Arc::new(Shared::new(frontend::Parts {
            config: config.clone(),
            fleet,
            pools,
            catalog,
            cancels: Arc::default(),
            tls,
            stats,
            shutdown: tokio::sync::watch::Sender::new(None),
            admin: admin.clone(),
            sharding,
        }));
        Ok(Arc::new(Proxy {
            log_filter: reload.log_filter.clone(),
            config,
            sessions,
            admin,
            reload,
            replication,
            workers,
        }))
    }

    /// Starts a graceful shutdown: no new sessions; each session ends after its transaction, at the latest
    /// after `shutdown_timeout`. Returns when every session is gone or the time is up.
    pub async fn drain(&self) {
        let timeout = self.config.get().shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        self.sessions.shutdown.send_replace(Some(deadline));
        // Sessions waiting for their clients look at the channel when woken (`CancelKey::attention`).
        self.sessions.cancels.wake_all();
        tracing::info!(
            ?timeout,
            "shutting down: waiting for sessions to finish their transactions"
        );
        // Sessions send their FATAL at the deadline; give them a moment past it to do so.
        while self.sessions.stats.client_count() > 0
            && tokio::time::Instant::now() < deadline + Duration::from_millis(200)
        {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Raises the soft limit on open files to the hard limit, as each client and node connection is a
/// descriptor and the usual soft limit (1024) is far below what a proxy needs; the hard limit stays the
/// administrator's choice. Logs what it did or why not.
pub fn raise_open_file_limit() {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    if limit.current == limit.maximum {
        tracing::debug!(limit = ?limit.current, "open-file limit already at its maximum");
        return;
    }
    let raised = rustix::process::Rlimit {
        current: limit.maximum,
        maximum: limit.maximum,
    };
    // None is "unlimited".
    let show = |n: Option<u64>| n.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    match setrlimit(Resource::Nofile, raised) {
        Ok(()) => tracing::info!(
            from = %show(limit.current),
            to = %show(limit.maximum),
            "raised the open-file limit"
        ),
        Err(e) => {
            tracing::warn!(limit = %show(limit.current), error = %e, "cannot raise the open-file limit")
        }
    }
}

/// Binds the listener and serves clients until the future is dropped.
pub async fn run(proxy: Arc<Proxy>) -> Result<(), StartError> {
    raise_open_file_limit();
    let address = proxy.config.get().listen.address.clone();
    // The local socket first: once TCP accepts, clients may take pgfleet as ready and try either.
    let local = match proxy.config.get().listen.unix_socket() {
        Some(path) => Some((crate::frontend::local_socket::bind(&path)?, path)),
        None => None,
    };
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| StartError::Bind {
            address: address.clone(),
            source,
        })?;
    let metrics = match &proxy.config.get().admin.metrics_address.clone() {
        Some(m) => {
            Some(
                tokio::net::TcpListener::bind(m)
                    .await
                    .map_err(|source| StartError::MetricsBind {
                        address: m.clone(),
                        source,
                    })?,
            )
        }
        None => None,
    };
    if let Some(sharding) = &proxy.sessions.sharding {
        // Commits across shards prepare on every shard primary: one that cannot is a configuration error.
        match sharding.decisions.start_check().await {
            Ok(()) => {}
            Err(e @ crate::shard::twophase::StartCheckError::PreparedTransactionsDisabled { .. }) => {
                return Err(StartError::Sharding(e.to_string()));
            }
            Err(e) => tracing::warn!(error = %e, "cannot check the shard primaries yet"),
        }
        let interval = proxy.config.get().sharding.recovery_interval;
        crate::shard::decisions::spawn(sharding.decisions.clone(), interval);
    }
    let fleet = &proxy.sessions.fleet;
    let workers = proxy.workers.len();
    tracing::info!(%address, nodes = fleet.nodes().len(), workers, "pgfleet listening");
    crate::cluster::monitor::spawn(fleet, &proxy.config);
    crate::replication::spawn(&proxy.replication);
    if let Some(listener) = metrics {
        tracing::info!(address = ?listener.local_addr().ok(), "serving /metrics");
        tokio::spawn(crate::admin::metrics::serve_metrics(
            listener,
            proxy.admin.clone(),
        ));
    }
    let pools = proxy.sessions.pools.clone();
    let config = proxy.config.clone();
    tokio::spawn(async move {
        loop {
            let every = (config.get().pool.idle_timeout / 2).max(Duration::from_secs(1));
            tokio::time::sleep(every).await;
            pools.reap_idle();
        }
    });
    use crate::frontend::listener::{Listener, serve};
    let tcp = serve(
        Listener::Tcp(listener),
        proxy.sessions.clone(),
        proxy.workers.clone(),
    );
    match local {
        // Both accept loops live as long as this future; the socket file goes when it is dropped.
        Some(((listener, _file), path)) => {
            tracing::info!(socket = %path.display(), "accepting local clients");
            let local = serve(
                Listener::Local(listener),
                proxy.sessions.clone(),
                proxy.workers.clone(),
            );
            tokio::join!(tcp, local);
        }
        None => tcp.await,
    }
    Ok(())
}

/// The name this pgfleet gives its distributed transactions: the host and the listening port, so that two
/// instances in front of the same shards never take each other's for their own.
fn instance_id(config: &Config) -> crate::shard::twophase::InstanceId {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "pgfleet".to_owned());
    let port = config
        .listen
        .address
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse().ok())
        .unwrap_or(0);
    crate::shard::twophase::InstanceId::from_host_port(&host, port)
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use tracing_subscriber::layer::SubscriberExt;

    /// Log output kept in memory.
    #[derive(Clone, Default)]
    struct Captured(Arc<Mutex<Vec<u8>>>);

    impl Write for Captured {
        fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
            self.0
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .extend_from_slice(bytes);
            Ok(bytes.len())
        }

        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn quiet_dependencies_stay_quiet_whatever_the_filter_says() {
        // Filters as RUST_LOG may spell them: more specific targets and span directives included.
        // (filter, whether it lets other DEBUG events through)
        for (spec, debug) in [
            ("trace", true),
            ("debug,sqlparser=trace,tokio_postgres=trace", true),
            ("sqlparser::parser=debug,tokio_postgres::query=trace,info", false),
            ("[session]=trace", true),
        ] {
            let captured = Captured::default();
            let writer = captured.clone();
            let subscriber = tracing_subscriber::fmt()
                .with_env_filter(tracing_subscriber::EnvFilter::new(spec))
                .with_writer(move || writer.clone())
                .finish()
                .with(tracing_subscriber::filter::filter_fn(super::log_event_allowed));
            tracing::subscriber::with_default(subscriber, || {
                let span = tracing::info_span!("session");
                let _entered = span.enter();
                tracing::debug!(target: "sqlparser::parser", "Parsing sql 'secret-1'");
                tracing::warn!(target: "sqlparser", "secret-2");
                tracing::debug!(target: "tokio_postgres::query", "executing statement secret-3");
                tracing::info!(target: "tokio_postgres::connection", "notice-kept");
                tracing::debug!(target: "sqlparserish", "other-crate-kept");
                tracing::debug!(target: "pgfleet::frontend", "own-debug-kept");
            });
            let text =
                String::from_utf8_lossy(&captured.0.lock().unwrap_or_else(|p| p.into_inner())).into_owned();
            assert!(!text.contains("secret"), "{spec}: {text}");
            assert!(text.contains("notice-kept"), "{spec}: {text}");
            assert_eq!(text.contains("own-debug-kept"), debug, "{spec}: {text}");
            assert_eq!(text.contains("other-crate-kept"), debug, "{spec}: {text}");
        }
    }
}
