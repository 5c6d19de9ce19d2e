//! Per-database function rules: the configured lists plus the VOLATILE user functions read from the
//! primary's pg_proc over a deadpool-postgres control connection, refreshed after DDL or when stale.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use tokio_postgres::NoTls;

use super::functions::{FunctionRules, load_volatile};
use crate::config::split_host_port;

struct Entry {
    rules: Arc<FunctionRules>,
    expires: Instant,
}

/// How long the configured lists alone stand in after a failed load, so that a down primary costs one
/// attempt per interval rather than one per statement.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Function rules per database, loaded lazily.
pub struct Catalog {
    base: FunctionRules,
    refresh: Duration,
    entries: Mutex<HashMap<String, Entry>>,
    control: Mutex<HashMap<(String, String), Pool>>,
}

impl Catalog {
    /// Rules from `routing.write_functions` / `routing.read_only_functions`.
    pub fn new(base: FunctionRules, refresh: Duration) -> Self {
        Self {
            base,
            refresh,
            entries: Mutex::new(HashMap::new()),
            control: Mutex::new(HashMap::new()),
        }
    }

    /// The current rules for a database, without waiting; `None` when they must be (re)loaded first.
    pub fn cached(&self, database: &str) -> Option<Arc<FunctionRules>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(database)
            .filter(|e| e.expires > Instant::now())
            .map(|e| e.rules.clone())
    }

    /// Forgets a database's rules (after DDL that may have created or changed functions).
    pub fn invalidate(&self, database: &str) {
        self.entries
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(database);
    }

    /// Loads the rules for a database from the primary. On failure the configured lists alone are used (and
    /// retried on the next call), so a down primary does not stop reads: the built-in list still holds.
    pub async fn load(
        &self,
        primary: &str,
        database: &str,
        user: &str,
        password: &str,
    ) -> Arc<FunctionRules> {
        let pool = self.control_pool(primary, database, user, password);
        let loaded = match pool {
            Some(pool) => match tokio::time::timeout(Duration::from_secs(5), async {
                let client = pool.get().await.map_err(|e| e.to_string())?;
                load_volatile(&client).await.map_err(|e| e.to_string())
            })
            .await
            {
                Ok(Ok(set)) => Some(set),
                Ok(Err(e)) => {
                    tracing::warn!(database, error = %e, "cannot read function volatility from the primary");
                    None
                }
                Err(_) => {
                    tracing::warn!(database, "timed out reading function volatility from the primary");
                    None
                }
            },
            None => None,
        };
        let (rules, ttl) = match loaded {
            Some(set) => (Arc::new(self.base.with_volatile(set)), self.refresh),
            None => (Arc::new(self.base.clone()), RETRY_AFTER_FAILURE),
        };
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).insert(
            database.to_owned(),
            Entry {
                rules: rules.clone(),
                expires: Instant::now() + ttl,
            },
        );
        rules
    }

    fn control_pool(&self, primary: &str, database: &str, user: &str, password: &str) -> Option<Pool> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let key = (database.to_owned(), user.to_owned());
        if let Some(p) = control.get(&key) {
            return Some(p.clone());
        }
        let (host, port) = split_host_port(primary).ok()?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&host)
            .port(port)
            .user(user)
            .password(password)
            .dbname(database)
            .application_name("pgfleet-catalog")
            .connect_timeout(Duration::from_secs(5));
        let manager = Manager::from_config(
            pg,
            NoTls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(1).build().ok()?;
        control.insert(key, pool.clone());
        Some(pool)
    }
}
