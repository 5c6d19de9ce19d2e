//! Operating pgfleet: the admin console on the virtual database `pgfleet` (`session`, `console`) and
//! Prometheus text on `admin.metrics_address` (`metrics`). Both read the running parts through one
//! [`Context`]; the counters they show live in `crate::stats`, which the sessions write.

pub(crate) mod console;
pub(crate) mod metrics;
pub(crate) mod session;

use std::sync::Arc;

use arc_swap::Guard;

use crate::backend::Pools;
use crate::cluster::Fleet;
use crate::config::{Config, ConfigHandle};
use crate::replication::Replication;
use crate::router::catalog::Catalog;
use crate::stats::Stats;

/// The virtual database that holds the admin console.
pub(crate) const ADMIN_DATABASE: &str = "pgfleet";

/// What the console and /metrics read, and RELOAD changes, handed out by the proxy's wiring.
pub struct Context {
    config: ConfigHandle,
    /// Nodes and their health (SHOW NODES, node metrics).
    pub fleet: Arc<Fleet>,
    /// Pool status (SHOW POOLS), and the databases SHOW ROUTE borrows function rules from.
    pub pools: Arc<Pools>,
    /// Counters (SHOW STATS, SHOW CLIENTS, metrics).
    pub stats: Arc<Stats>,
    /// Function rules per database (SHOW ROUTE).
    pub catalog: Arc<Catalog>,
    /// Forward-mode progress and slots (SHOW REPLICATION, replication metrics).
    pub replication: Arc<Replication>,
    /// What RELOAD changes.
    pub reload: Arc<crate::reload::Context>,
}

impl Context {
    /// The admin context over the running parts.
    pub fn new(
        config: ConfigHandle,
        fleet: Arc<Fleet>,
        pools: Arc<Pools>,
        stats: Arc<Stats>,
        catalog: Arc<Catalog>,
        replication: Arc<Replication>,
        reload: Arc<crate::reload::Context>,
    ) -> Context {
        Context {
            config,
            fleet,
            pools,
            stats,
            catalog,
            replication,
            reload,
        }
    }

    /// The configuration in force now. Hold the guard briefly: a reload publishes a new one.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.get()
    }
}

/// The context a proxy started with `config` would have, without starting anything (unit tests).
#[cfg(test)]
pub(crate) fn context_for(config: Config) -> Arc<Context> {
    use crate::replication::ForwardState;
    use crate::router::functions::FunctionRules;

    let forward = Arc::new(ForwardState::new(&config));
    let fleet = Arc::new(Fleet::from_config(&config, forward.clone()).expect("fleet"));
    let pools = Arc::new(Pools::new(config.pool.clone(), fleet.nodes().len()));
    let stats = Arc::new(Stats::new(fleet.nodes().len()));
    let catalog = Arc::new(Catalog::new(
        FunctionRules::new(
            &config.routing.write_functions,
            &config.routing.read_only_functions,
        ),
        config.routing.function_refresh,
        config.pool.connect_timeout,
    ));
    let handle = ConfigHandle::new(config);
    let replication = Replication::new(handle.clone(), fleet.clone(), forward);
    let reload = Arc::new(crate::reload::Context::new(
        handle.clone(),
        None,
        fleet.clone(),
        pools.clone(),
        catalog.clone(),
        stats.clone(),
    ));
    Arc::new(Context::new(
        handle,
        fleet,
        pools,
        stats,
        catalog,
        replication,
        reload,
    ))
}
