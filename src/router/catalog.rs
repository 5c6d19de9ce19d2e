//! Per-database function rules: the configured lists plus the VOLATILE user functions read from the
//! primary's pg_proc, whether any function's body there names `synchronous_commit`, the functions whose
//! body leaves state in the calling session, and the unlogged relations read from its pg_class, over
//! a deadpool-postgres control connection.
//!
//! Only the first request of a database ever waits for the load (bounded by `pool.connect_timeout`); later
//! refreshes run in the background while the previous rules keep serving, so a hung primary never stalls
//! reads. DDL sent through pgfleet drops a database's rules, so a function or unlogged table created (or a
//! table set LOGGED) a moment ago is known to the very next statement.

use arc_swap::ArcSwap;
use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use deadpool_postgres::{Manager, ManagerConfig, Pool, PoolError, RecyclingMethod};

use super::classify::{calls_any, leaves_session_state};
use super::functions::{
    FunctionRules, load_caller_candidates, load_sequences, load_session_candidates, load_sets_commit_mode,
    load_unlogged, load_volatile,
};
use crate::backend::connect::NodeTarget;
use crate::config::split_host_port;

struct Entry {
    rules: Arc<FunctionRules>,
    expires: Instant,
    refreshing: bool,
}

/// How long the configured lists alone stand in after a failed load before it is tried again.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(5);

/// Where and as whom to read a database's functions.
pub struct Source<'a> {
    /// The primary (address and TLS settings).
    pub primary: &'a NodeTarget,
    /// Database.
    pub database: &'a str,
    /// Role.
    pub user: &'a str,
    /// Its password.
    pub password: &'a str,
}

/// What the config says about function rules.
struct Settings {
    base: Arc<FunctionRules>,
    refresh: Duration,
    timeout: Duration,
}

/// Function rules per database, loaded lazily.
pub struct Catalog {
    settings: ArcSwap<Settings>,
    entries: Mutex<HashMap<String, Entry>>,
    /// Bumped whenever an entry is stored or dropped, so that sessions can tell cheaply that the rules
    /// they hold are still the current ones.
    generation: AtomicU64,
    /// Bumped when DDL that may change a function's body drops an entry (see `invalidate`).
    code_generation: AtomicU64,
    control: Mutex<HashMap<(String, String, String), Pool>>,
    /// Per database, taken by a session that finds no rules and loads them: the sessions that find none at
    /// the same moment (their first requests, or the next ones after DDL) wait for that one load instead of
    /// each running their own, one after another on the single control connection.
    first_loads: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Catalog {
    /// Rules from `routing.write_functions` / `routing.read_only_functions`; loads wait at most `timeout`.
    pub fn new(base: FunctionRules, refresh: Duration, timeout: Duration) -> Self {
        Self {
            settings: ArcSwap::from_pointee(Settings {
                base: Arc::new(base),
                refresh,
                timeout,
            }),
            entries: Mutex::new(HashMap::new()),
            generation: AtomicU64::new(0),
            code_generation: AtomicU64::new(0),
            control: Mutex::new(HashMap::new()),
            first_loads: Mutex::new(HashMap::new()),
        }
    }

    /// The configured lists alone.
    pub fn base(&self) -> Arc<FunctionRules> {
        self.settings.load().base.clone()
    }

    /// Reloaded `routing.write_functions` / `read_only_functions` / `function_refresh` or timeout: every
    /// database's rules are rebuilt on their next use, and control connections are reopened (a password may
    /// have changed).
    pub fn reconfigure(&self, base: FunctionRules, refresh: Duration, timeout: Duration) {
        self.settings.store(Arc::new(Settings {
            base: Arc::new(base),
            refresh,
            timeout,
        }));
        self.entries.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.control.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }

    /// The rules last loaded for a database, however old.
    pub fn cached(&self, database: &str) -> Option<Arc<FunctionRules>> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.get(database).map(|e| e.rules.clone())
    }

    /// Forgets a database's rules (after DDL that may have created or changed functions or tables); `code`:
    /// the DDL may have created or replaced a function's body.
    pub fn invalidate(&self, database: &str, code: bool) {
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.remove(database);
        if code {
            self.code_generation.fetch_add(1, Ordering::SeqCst);
        }
        self.generation.fetch_add(1, Ordering::SeqCst);
    }

    /// Changes whenever any database's rules are stored or dropped.
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Changes whenever DDL that may have created or replaced a function's body drops a database's rules:
    /// until then, what rules loaded earlier say of function bodies holds (until their expiry), whatever
    /// other DDL came since.
    pub fn code_generation(&self) -> u64 {
        self.code_generation.load(Ordering::SeqCst)
    }

    /// Until when `rules` stay the database's current rules unless the generation changes: the entry's
    /// expiry, if `rules` are the entry's.
    pub fn fresh_until(&self, database: &str, rules: &Arc<FunctionRules>) -> Option<Instant> {
        let entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries
            .get(database)
            .filter(|e| Arc::ptr_eq(&e.rules, rules))
            .map(|e| e.expires)
    }

    /// The rules for a database: cached ones at once (refreshed in the background when stale), or a load from
    /// the primary, which the sessions that find none at the same moment share.
    pub async fn rules(self: &Arc<Self>, source: Source<'_>) -> Arc<FunctionRules> {
        let stale = {
            let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
            match entries.get_mut(source.database) {
                Some(e) if e.expires > Instant::now() || e.refreshing => return e.rules.clone(),
                Some(e) => {
                    e.refreshing = true;
                    Some(e.rules.clone())
                }
                None => None,
            }
        };
        match stale {
            Some(rules) => {
                let this = self.clone();
                let (primary, database, user, password) = (
                    source.primary.clone(),
                    source.database.to_owned(),
                    source.user.to_owned(),
                    source.password.to_owned(),
                );
                tokio::spawn(async move {
                    this.load(Source {
                        primary: &primary,
                        database: &database,
                        user: &user,
                        password: &password,
                    })
                    .await;
                });
                rules
            }
            None => {
                let turn = self
                    .first_loads
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .entry(source.database.to_owned())
                    .or_default()
                    .clone();
                let _turn = turn.lock().await;
                // Stored by the session whose turn came first.
                if let Some(rules) = self.cached(source.database) {
                    return rules;
                }
                self.load(source).await
            }
        }
    }

    async fn load(&self, source: Source<'_>) -> Arc<FunctionRules> {
        let settings = self.settings.load_full();
        let pool = self.control_pool(&source, settings.timeout);
        let database = source.database;
        let loaded = match pool {
            Some(pool) => match tokio::time::timeout(settings.timeout, async {
                let tls = &source.primary.tls;
                let client = pool.get().await.map_err(|e| match e {
                    PoolError::Backend(e) => tls.explain(&e),
                    other => other.to_string(),
                })?;
                let volatile = load_volatile(&client).await.map_err(|e| tls.explain(&e))?;
                let unlogged = load_unlogged(&client).await.map_err(|e| tls.explain(&e))?;
                let sequences = load_sequences(&client).await.map_err(|e| tls.explain(&e))?;
                let commit_mode = load_sets_commit_mode(&client)
                    .await
                    .map_err(|e| tls.explain(&e))?;
                let setting = session_state_functions(&client)
                    .await
                    .map_err(|e| tls.explain(&e))?;
                Ok::<_, String>((volatile, unlogged, sequences, commit_mode, setting))
            })
            .await
            {
                Ok(Ok(sets)) => Some(sets),
                Ok(Err(e)) => {
                    tracing::warn!(database, error = %e, "cannot read function volatility and unlogged tables from the primary");
                    None
                }
                Err(_) => {
                    tracing::warn!(
                        database,
                        "timed out reading function volatility and unlogged tables from the primary"
                    );
                    None
                }
            },
            None => None,
        };
        let (rules, ttl) = match loaded {
            Some((volatile, unlogged, sequences, commit_mode, setting)) => (
                Arc::new(
                    settings
                        .base
                        .with_volatile(volatile)
                        .with_unlogged(unlogged)
                        .with_sequences(sequences)
                        .with_commit_mode(commit_mode)
                        .with_session_functions(setting),
                ),
                settings.refresh,
            ),
            None => {
                // Keep what an earlier load found rather than forget user functions during an outage.
                let previous = self.cached(database);
                (
                    previous.unwrap_or_else(|| settings.base.clone()),
                    RETRY_AFTER_FAILURE,
                )
            }
        };
        let mut entries = self.entries.lock().unwrap_or_else(|p| p.into_inner());
        entries.insert(
            database.to_owned(),
            Entry {
                rules: rules.clone(),
                expires: Instant::now() + ttl,
                refreshing: false,
            },
        );
        self.generation.fetch_add(1, Ordering::SeqCst);
        drop(entries);
        rules
    }

    fn control_pool(&self, source: &Source<'_>, timeout: Duration) -> Option<Pool> {
        let mut control = self.control.lock().unwrap_or_else(|p| p.into_inner());
        let key = (
            source.primary.address.clone(),
            source.database.to_owned(),
            source.user.to_owned(),
        );
        if let Some(p) = control.get(&key) {
            return Some(p.clone());
        }
        let (host, port) = split_host_port(&source.primary.address).ok()?;
        let mut pg = tokio_postgres::Config::new();
        pg.host(&host)
            .port(port)
            .user(source.user)
            .password(source.password)
            .dbname(source.database)
            .application_name("pgfleet-catalog")
            .connect_timeout(timeout);
        let tls = source.primary.tls.postgres(&mut pg);
        let manager = Manager::from_config(
            pg,
            tls,
            ManagerConfig {
                recycling_method: RecyclingMethod::Fast,
            },
        );
        let pool = Pool::builder(manager).max_size(1).build().ok()?;
        control.insert(key, pool.clone());
        Some(pool)
    }
}

/// Callers of callers are followed this many levels deep; a wrapper deeper than that is not seen.
const CALLER_LEVELS: usize = 4;

/// The user functions and procedures that leave state in the calling session: those whose body does it
/// ([`leaves_session_state`]) and, up to [`CALLER_LEVELS`] deep, those whose body calls one of them
/// ([`calls_any`]), such as a `login(user)` that calls `set_tenant(...)`.
async fn session_state_functions(
    client: &tokio_postgres::Client,
) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
    let mut found: HashSet<(String, String)> = load_session_candidates(client)
        .await?
        .into_iter()
        .filter(|(_, _, body)| leaves_session_state(body))
        .map(|(schema, name, _)| (schema, name))
        .collect();
    let mut names: HashSet<String> = found.iter().map(|(_, name)| name.clone()).collect();
    let mut newest: Vec<String> = names.iter().cloned().collect();
    for _ in 0..CALLER_LEVELS {
        if newest.is_empty() {
            break;
        }
        let candidates = load_caller_candidates(client, &newest).await?;
        newest.clear();
        for (schema, name, body) in candidates {
            if !found.contains(&(schema.clone(), name.clone())) && calls_any(&body, &names) {
                newest.push(name.clone());
                found.insert((schema, name));
            }
        }
        names.extend(newest.iter().cloned());
    }
    Ok(found)
}
