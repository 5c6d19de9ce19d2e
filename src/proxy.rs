//! The running proxy: state shared by every session (config, fleet, pools, balancer, function catalog,
//! cancel keys) and the tasks that serve it.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use arc_swap::{ArcSwap, Guard};

use crate::admin::stats::Stats;
use crate::backend::Pools;
use crate::cluster::Fleet;
use crate::config::Config;
use crate::frontend::cancel::CancelRegistry;
use crate::router::balance::Balancer;
use crate::router::catalog::Catalog;
use crate::router::functions::FunctionRules;

/// Replaces the running log filter with one parsed from a `log.level` value.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The stack of every thread that runs sessions (the runtime's workers, its blocking threads and the thread
/// that drives it). A session classifies its statements on its worker's stack, and the deepest syntax tree
/// the router lets sqlparser build ([`crate::router::depth::MAX_DEPTH`] levels) needs at most about 0.8 MiB
/// of it in a debug build (measured for the costliest shapes, see that module's tests); 8 MiB, the main
/// thread's usual size on Linux, leaves ten times that. tokio's default of 2 MiB would leave little room
/// for the rest of a session's call stack. Untouched stack pages cost no memory.
pub const THREAD_STACK_SIZE: usize = 8 * 1024 * 1024;

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

/// Everything sessions share.
pub struct Shared {
    /// The configuration in force; a reload swaps it whole (see `reload`).
    config: ArcSwap<Config>,
    /// The file the configuration came from, for reloads; None when built from text (tests).
    pub source: Option<PathBuf>,
    /// Serialises reloads (SIGHUP and admin RELOAD may race).
    pub(crate) reload_lock: std::sync::Mutex<()>,
    /// Changes the log filter in place; set by the binary once logging is up.
    pub log_filter: std::sync::OnceLock<SetLogFilter>,
    /// Nodes and their health.
    pub fleet: Fleet,
    /// Backend connection pools.
    pub pools: Pools,
    /// Replica choice.
    pub balancer: Balancer,
    /// Function rules per database.
    pub catalog: Arc<Catalog>,
    /// Cancel keys of live sessions.
    pub cancels: Arc<CancelRegistry>,
    /// Session id source.
    pub next_session: AtomicU64,
    /// TLS for clients, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Counters for the admin console and /metrics.
    pub stats: Arc<Stats>,
    /// Set on SIGINT/SIGTERM: sessions end once their transaction is over, at the latest at the deadline.
    pub shutdown: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
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
}

impl Shared {
    /// Builds the shared state for a validated config.
    pub fn new(config: Config) -> Result<Arc<Shared>, StartError> {
        Self::with_source(config, None)
    }

    /// Builds the shared state for a validated config read from `source`, which reloads read again.
    pub fn with_source(config: Config, source: Option<PathBuf>) -> Result<Arc<Shared>, StartError> {
        let tls = match (&config.listen.tls_cert, &config.listen.tls_key) {
            (Some(cert), Some(key)) => Some(crate::frontend::tls::acceptor(
                cert,
                key,
                config.listen.tls_min_version,
            )?),
            _ => None,
        };
        let fleet = Fleet::from_config(&config)?;
        let node_count = fleet.nodes().len();
        let pools = Pools::new(config.pool.clone(), fleet.nodes().len());
        let balancer = Balancer::new();
        let base = FunctionRules::new(
            &config.routing.write_functions,
            &config.routing.read_only_functions,
        );
        let catalog = Arc::new(Catalog::new(
            base,
            config.routing.function_refresh,
            config.pool.connect_timeout,
        ));
        Ok(Arc::new(Shared {
            config: ArcSwap::from_pointee(config),
            source,
            reload_lock: std::sync::Mutex::new(()),
            log_filter: std::sync::OnceLock::new(),
            fleet,
            pools,
            balancer,
            catalog,
            cancels: Arc::default(),
            next_session: AtomicU64::new(1),
            tls,
            stats: Arc::new(Stats::new(node_count)),
            shutdown: tokio::sync::watch::Sender::new(None),
        }))
    }
}

impl Shared {
    /// The configuration in force now. Hold the guard briefly: a reload publishes a new one.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.load()
    }

    /// The configuration in force now, for holding across waits (a guard should not be).
    pub fn config_arc(&self) -> Arc<Config> {
        self.config.load_full()
    }

    /// Publishes a reloaded configuration (after its parts were applied, see `reload`).
    pub(crate) fn set_config(&self, config: Arc<Config>) {
        self.config.store(config);
    }

    /// Starts a graceful shutdown: no new sessions; each session ends after its transaction, at the latest
    /// after `shutdown_timeout`. Returns when every session is gone or the time is up.
    pub async fn drain(&self) {
        let timeout = self.config().shutdown_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        self.shutdown.send_replace(Some(deadline));
        tracing::info!(
            ?timeout,
            "shutting down: waiting for sessions to finish their transactions"
        );
        // Sessions send their FATAL at the deadline; give them a moment past it to do so.
        while self.stats.client_count() > 0
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
pub async fn run(shared: Arc<Shared>) -> Result<(), StartError> {
    raise_open_file_limit();
    let address = shared.config().listen.address.clone();
    let listener = tokio::net::TcpListener::bind(&address)
        .await
        .map_err(|source| StartError::Bind {
            address: address.clone(),
            source,
        })?;
    let metrics = match &shared.config().admin.metrics_address.clone() {
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
    let workers = tokio::runtime::Handle::current().metrics().num_workers();
    tracing::info!(%address, nodes = shared.fleet.nodes().len(), workers, "pgfleet listening");
    crate::cluster::monitor::spawn(&shared);
    crate::replication::spawn(&shared);
    if let Some(listener) = metrics {
        tracing::info!(address = ?listener.local_addr().ok(), "serving /metrics");
        tokio::spawn(crate::admin::metrics::serve_metrics(listener, shared.clone()));
    }
    let reaper = shared.clone();
    tokio::spawn(async move {
        loop {
            let every = (reaper.config().pool.idle_timeout / 2).max(Duration::from_secs(1));
            tokio::time::sleep(every).await;
            reaper.pools.reap_idle();
        }
    });
    crate::frontend::listener::serve(listener, shared).await;
    Ok(())
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
