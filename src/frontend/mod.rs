//! The client side: accepting connections (`listener`), authentication (`auth`, `scram`), TLS (`tls`,
//! `stream`), cancel keys (`cancel`), and one task per client session (`session`, with its `state`). What the
//! sessions share is [`Shared`], which the proxy's wiring builds.

pub(crate) mod auth;
pub(crate) mod cancel;
pub(crate) mod forward;
pub(crate) mod listener;
pub(crate) mod local_socket;
pub(crate) mod names;
pub mod request;
pub(crate) mod scram;
pub(crate) mod session;
pub(crate) mod signal_call;
pub mod state;
pub(crate) mod stream;
pub(crate) mod tls;
pub mod workers;

use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use arc_swap::Guard;

use self::cancel::CancelRegistry;
use crate::backend::Pools;
use crate::cluster::Fleet;
use crate::config::{Config, ConfigHandle};
use crate::router::balance::Balancer;
use crate::router::catalog::Catalog;
use crate::stats::Stats;

/// Everything client sessions share: what they route with, the pools they borrow from, the counters they
/// keep, and the admin console's context for sessions on the virtual database `pgfleet`.
pub struct Shared {
    config: ConfigHandle,
    /// Nodes and their health.
    pub fleet: Arc<Fleet>,
    /// Backend connection pools.
    pub pools: Arc<Pools>,
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
    /// What an admin console session reads.
    pub admin: Arc<crate::admin::Context>,
    /// In a sharded fleet: the shard planner's rules and the name of this pgfleet's distributed
    /// transactions.
    pub sharding: Option<Arc<crate::shard::Sharding>>,
}

/// The parts [`Shared`] is made of, so that the wiring names each one.
pub struct Parts {
    /// The configuration in force.
    pub config: ConfigHandle,
    /// Nodes and their health.
    pub fleet: Arc<Fleet>,
    /// Backend connection pools.
    pub pools: Arc<Pools>,
    /// Function rules per database.
    pub catalog: Arc<Catalog>,
    /// Cancel keys of live sessions.
    pub cancels: Arc<CancelRegistry>,
    /// TLS for clients, when configured.
    pub tls: Option<tokio_rustls::TlsAcceptor>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// The shutdown signal.
    pub shutdown: tokio::sync::watch::Sender<Option<tokio::time::Instant>>,
    /// The admin console's context.
    pub admin: Arc<crate::admin::Context>,
    /// Sharding, in a sharded fleet.
    pub sharding: Option<Arc<crate::shard::Sharding>>,
}

impl Shared {
    /// The sessions' shared state over the running parts.
    pub fn new(parts: Parts) -> Shared {
        Shared {
            config: parts.config,
            fleet: parts.fleet,
            pools: parts.pools,
            balancer: Balancer::new(),
            catalog: parts.catalog,
            cancels: parts.cancels,
            next_session: AtomicU64::new(1),
            tls: parts.tls,
            stats: parts.stats,
            shutdown: parts.shutdown,
            admin: parts.admin,
            sharding: parts.sharding,
        }
    }

    /// The configuration in force now. Hold the guard briefly: a reload publishes a new one.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.get()
    }

    /// The configuration in force now, for holding across waits (a guard should not be).
    pub fn config_arc(&self) -> Arc<Config> {
        self.config.get_arc()
    }
}
