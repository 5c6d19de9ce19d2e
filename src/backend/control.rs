//! Control connections: a one-connection deadpool-postgres pool towards one node, with the node's TLS, for
//! the parts of pgfleet that ask nodes questions of their own (health checks, two-phase commit recovery)
//! rather than carry a client's requests.

use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};

use super::tls::NodeTls;
use crate::config::split_host_port;

/// Who a control connection logs in as, where, and how long connecting may take.
pub(crate) struct ControlLogin<'a> {
    pub user: &'a str,
    pub password: &'a str,
    pub database: &'a str,
    /// Shown in `pg_stat_activity`.
    pub application: &'a str,
    pub timeout: Duration,
}

/// A pool of at most one connection to the node at `address`, checked quickly on reuse.
pub(crate) fn control_pool(
    address: &str,
    tls: &std::sync::Arc<NodeTls>,
    login: &ControlLogin<'_>,
) -> Result<Pool, String> {
    let (host, port) = split_host_port(address)?;
    let mut pg = tokio_postgres::Config::new();
    pg.host(&host)
        .port(port)
        .user(login.user)
        .password(login.password)
        .dbname(login.database)
        .application_name(login.application)
        .connect_timeout(login.timeout)
        // A role or database whose default isolation is serializable would make a standby refuse every
        // question ("cannot use serializable mode in a hot standby"), and the node look down. The backslash
        // keeps the value's space inside the option.
        .options("-c default_transaction_isolation=read\\ committed");
    let tls = tls.postgres(&mut pg);
    let manager = Manager::from_config(
        pg,
        tls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    Pool::builder(manager)
        .max_size(1)
        .build()
        .map_err(|e| e.to_string())
}
