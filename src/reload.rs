//! Reloading the configuration while serving (SIGHUP, admin `RELOAD`): reading and validating the file
//! again, deciding what can change in place, applying it to the running parts, and saying what changed.
//!
//! What changes in place: nodes (added, removed, weights), `[routing]`, `[[users]]`, pool sizes and
//! timeouts, `[health]`, `log.level` and `log.slow_statement`, the client limits and timeouts under
//! `[listen]`, `listen.tls_mode`, and `shutdown_timeout`. Connected clients stay connected: a session keeps
//! a transaction or pinned state on a removed node until it ends, and its next request goes to the new
//! fleet. What cannot change without a restart (the listening socket and its TLS certificate and version,
//! `pool.mode`, `[admin]`, `log.format`, `[replication]`) keeps its running value and is reported. An
//! invalid file changes nothing.

use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};

use crate::backend::Pools;
use crate::cluster::Fleet;
use crate::config::{ClientTlsMode, Config, ConfigError, ConfigHandle, ReplicationMode};
use crate::router::catalog::Catalog;
use crate::router::functions::FunctionRules;
use crate::stats::Stats;

/// Replaces the running log filter with one parsed from a `log.level` value.
pub type SetLogFilter = Box<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// The running parts a reload changes, handed out by the proxy's wiring.
pub struct Context {
    /// The configuration in force; a reload publishes the new one once the parts below took it.
    pub config: ConfigHandle,
    /// The file the configuration came from; None when built from text (tests).
    pub source: Option<PathBuf>,
    /// Serialises reloads (SIGHUP and admin RELOAD may race).
    lock: Mutex<()>,
    /// Changes the log filter in place; set by the binary once logging is up.
    pub log_filter: Arc<OnceLock<SetLogFilter>>,
    /// Nodes: added, removed, reweighted; new nodes get a health monitor.
    pub fleet: Arc<Fleet>,
    /// Pool sizes and timeouts, and pools of removed nodes or users.
    pub pools: Arc<Pools>,
    /// Function rules.
    pub catalog: Arc<Catalog>,
    /// Per-node counters, grown for added nodes.
    pub stats: Arc<Stats>,
}

impl Context {
    /// The reload context over the running parts.
    pub fn new(
        config: ConfigHandle,
        source: Option<PathBuf>,
        fleet: Arc<Fleet>,
        pools: Arc<Pools>,
        catalog: Arc<Catalog>,
        stats: Arc<Stats>,
    ) -> Context {
        Context {
            config,
            source,
            lock: Mutex::new(()),
            log_filter: Arc::new(OnceLock::new()),
            fleet,
            pools,
            catalog,
            stats,
        }
    }
}

/// Why a reload changed nothing.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    /// The proxy was not started from a file.
    #[error("nothing to reload: pgfleet was not started with --config FILE")]
    NoSource,
    /// The new file is unreadable or invalid; the message names the key.
    #[error("{0}")]
    Config(#[from] ConfigError),
    /// A node's TLS settings could not be loaded.
    #[error("{0}")]
    Tls(#[from] crate::backend::tls::TlsSetupError),
    /// The new file is valid but asks for a change that needs a restart and cannot be deferred.
    #[error("invalid value for {key}: {reason}")]
    Refused {
        /// The config key.
        key: String,
        /// Why.
        reason: String,
    },
}

/// What a reload did.
#[derive(Debug, Default)]
pub struct ReloadReport {
    /// One line per change applied.
    pub applied: Vec<String>,
    /// Keys whose new value takes effect only after a restart (the running value is kept).
    pub restart_needed: Vec<String>,
}

/// Reads the config file again and applies it; logs the outcome once, whichever it is.
pub fn reload(ctx: &Context) -> Result<ReloadReport, ReloadError> {
    let _one_at_a_time = ctx.lock.lock().unwrap_or_else(|p| p.into_inner());
    let result = ctx
        .source
        .as_deref()
        .ok_or(ReloadError::NoSource)
        .and_then(|path| Ok(Config::load(path)?))
        .and_then(|config| apply(ctx, config));
    match &result {
        Ok(report) => {
            for key in &report.restart_needed {
                tracing::warn!(key = %key, "config reload: this setting changes only after a restart; the running value is kept");
            }
            if report.applied.is_empty() {
                tracing::info!("config reloaded: nothing changed");
            } else {
                tracing::info!(changes = %report.applied.join("; "), "config reloaded");
            }
        }
        Err(e) => tracing::error!(error = %e, "config reload refused; the running config stays in force"),
    }
    result
}

/// Applies a validated config to the running proxy.
pub fn apply(ctx: &Context, new: Config) -> Result<ReloadReport, ReloadError> {
    let old = ctx.config.get_arc();
    let mut report = ReloadReport::default();
    if old.replication.mode == ReplicationMode::Forward && old.nodes != new.nodes {
        // Each forwarded replica has slots, an applier and a copy in progress tied to its position in the
        // node list; rebuilding that live is not worth the risk of a lost or doubled transaction.
        return Err(ReloadError::Refused {
            key: "nodes".into(),
            reason: "with replication.mode = \"forward\", adding, removing or changing nodes needs a restart"
                .into(),
        });
    }
    if old.shard_count() != new.shard_count()
        || old.is_sharded() != new.is_sharded()
        || old.sharded_tables != new.sharded_tables
    {
        // Rows already live where the old layout placed them; moving them is a migration, not a reload.
        return Err(ReloadError::Refused {
            key: "nodes.shard".into(),
            reason: "changing the number of shards or the sharded tables needs a restart (and moving the \
                     rows to where the new layout places them)"
                .into(),
        });
    }
    let effective = keep_restart_only(&old, new, &mut report.restart_needed);

    describe(&old, &effective, &ctx.fleet, &mut report.applied);

    // First, as the only step that can fail (a TLS file gone since validation): then nothing has changed.
    let changes = ctx.fleet.apply(&effective)?;
    let slots = ctx.fleet.nodes();
    ctx.stats.ensure_nodes(slots.len());
    ctx.pools.reconfigure(
        effective.pool.clone(),
        slots.len(),
        |node| slots.get(node).is_none_or(|n| n.is_retired()),
        |user, password| effective.user(user).is_some_and(|u| u.password == password),
    );
    if old.routing.write_functions != effective.routing.write_functions
        || old.routing.read_only_functions != effective.routing.read_only_functions
        || old.routing.function_refresh != effective.routing.function_refresh
        || old.pool.connect_timeout != effective.pool.connect_timeout
        || old.users != effective.users
    {
        ctx.catalog.reconfigure(
            FunctionRules::new(
                &effective.routing.write_functions,
                &effective.routing.read_only_functions,
            ),
            effective.routing.function_refresh,
            effective.pool.connect_timeout,
        );
    }
    if old.log.level != effective.log.level && std::env::var_os("RUST_LOG").is_none() {
        match ctx.log_filter.get() {
            Some(set) => {
                if let Err(e) = set(&effective.log.level) {
                    report.applied.push(format!("log.level not changed: {e}"));
                }
            }
            None => report.restart_needed.push("log.level".into()),
        }
    }
    ctx.config.publish(Arc::new(effective));
    for index in changes.added {
        crate::cluster::monitor::spawn_node(&ctx.fleet, &ctx.config, index);
    }
    Ok(report)
}

/// The new config with the running value of every key that needs a restart, each such change noted.
fn keep_restart_only(old: &Config, mut new: Config, restart: &mut Vec<String>) -> Config {
    macro_rules! keep {
        ($($field:ident).+, $key:expr) => {
            if old.$($field).+ != new.$($field).+ {
                restart.push($key.to_string());
                new.$($field).+ = old.$($field).+.clone();
            }
        };
    }
    keep!(listen.address, "listen.address");
    keep!(listen.unix_socket_dir, "listen.unix_socket_dir");
    keep!(listen.tls_cert, "listen.tls_cert");
    keep!(listen.tls_key, "listen.tls_key");
    keep!(listen.tls_min_version, "listen.tls_min_version");
    keep!(pool.mode, "pool.mode");
    keep!(admin, "admin");
    keep!(log.format, "log.format");
    keep!(replication, "replication");
    keep!(worker_threads, "worker_threads");
    // Requiring TLS needs the certificate loaded at start; without one, the new mode waits for the restart
    // that loads the new certificate files too.
    if new.listen.tls_mode == ClientTlsMode::Require && new.listen.tls_cert.is_none() {
        restart.push("listen.tls_mode".to_string());
        new.listen.tls_mode = old.listen.tls_mode;
    }
    new
}

/// One line per change between two configs, for the log and the admin console.
fn describe(old: &Config, new: &Config, fleet: &Fleet, out: &mut Vec<String>) {
    let slots = fleet.nodes();
    let live: Vec<&crate::cluster::Node> = slots
        .iter()
        .filter(|n| !n.is_retired())
        .map(|n| n.as_ref())
        .collect();
    for n in &new.nodes {
        match live.iter().find(|l| l.target.name == n.name) {
            None => out.push(format!("node {} added ({}, {})", n.name, n.address, n.role)),
            Some(l) if !l.is(n) => out.push(format!(
                "node {} replaced (now {}, {}); connections to the old one close after their transaction",
                n.name, n.address, n.role
            )),
            Some(l) if l.weight() != n.weight => {
                out.push(format!("node {} weight {} -> {}", n.name, l.weight(), n.weight))
            }
            Some(_) => {}
        }
    }
    for l in &live {
        if !new.nodes.iter().any(|n| n.name == l.target.name) {
            out.push(format!(
                "node {} removed; connections to it close after their transaction",
                l.target.name
            ));
        }
    }
    for u in &new.users {
        match old.user(&u.name) {
            None => out.push(format!("user {} added", u.name)),
            Some(o) if o != u => out.push(format!("user {} changed", u.name)),
            Some(_) => {}
        }
    }
    for u in &old.users {
        if new.user(&u.name).is_none() {
            out.push(format!("user {} removed (its connected sessions stay)", u.name));
        }
    }
    let sections: [(&str, bool); 6] = [
        ("routing", old.routing != new.routing),
        ("pool", old.pool != new.pool),
        ("health", old.health != new.health),
        ("listen limits", old.listen != new.listen),
        ("log", old.log != new.log),
        ("shutdown_timeout", old.shutdown_timeout != new.shutdown_timeout),
    ];
    for (name, changed) in sections {
        if changed {
            out.push(format!("{name} settings changed"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(listen: &str) -> Config {
        Config::parse(&format!(
            "[listen]\naddress = \"127.0.0.1:6432\"\n{listen}\n\
             [[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
             [[nodes]]\nname = \"pg1\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\n"
        ))
        .expect("valid config")
    }

    #[test]
    fn tls_mode_require_waits_for_the_certificate_a_restart_loads() {
        let dir = tempfile::tempdir().expect("temp dir");
        let (cert, key) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        std::fs::write(&cert, "x").expect("cert");
        std::fs::write(&key, "x").expect("key");
        let with_cert = format!(
            "tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        );
        let plain = config("");
        let required = config(&format!("{with_cert}tls_mode = \"require\"\n"));

        // Certificate and require added at once: the certificate needs a restart, and so does require.
        let mut restart = Vec::new();
        let effective = keep_restart_only(&plain, required.clone(), &mut restart);
        assert_eq!(effective.listen.tls_mode, ClientTlsMode::Allow);
        assert_eq!(effective.listen.tls_cert, None);
        assert!(restart.contains(&"listen.tls_mode".to_owned()), "{restart:?}");
        assert!(restart.contains(&"listen.tls_cert".to_owned()), "{restart:?}");

        // With the certificate already loaded, require applies at once, and so does going back to allow.
        let loaded = config(&with_cert);
        let mut restart = Vec::new();
        let effective = keep_restart_only(&loaded, required.clone(), &mut restart);
        assert_eq!(effective.listen.tls_mode, ClientTlsMode::Require);
        assert!(restart.is_empty(), "{restart:?}");
        let effective = keep_restart_only(&required, loaded, &mut restart);
        assert_eq!(effective.listen.tls_mode, ClientTlsMode::Allow);
        assert!(restart.is_empty(), "{restart:?}");
    }
}
