//! Typed configuration: the TOML file's shape, its defaults, and validation that names the offending key.
//!
//! Everything the rest of the proxy reads about its setup comes from [`Config`]; nothing else parses the file.
//! This file owns [`Config`] itself, the load/parse entry points, [`ConfigError`] and the [`ConfigHandle`];
//! the tables of the file live in `sections`, durations, sizes, lag limits and addresses in `values`, and the
//! checks serde cannot make in `validate`.

mod sections;
mod shards;
mod validate;
mod values;

#[cfg(test)]
mod tests;

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

pub use sections::{
    AdminConfig, AuthMethod, ClientTlsMode, Consistency, HealthConfig, ListenConfig, LoadBalance, LogConfig,
    LogFormat, NodeConfig, NodeTlsMode, PoolConfig, PoolMode, ReadYourWrites, ReplicaAffinity,
    ReplicationConfig, ReplicationMode, Role, RoutingConfig, TlsVersion, UserConfig,
};
pub use shards::{ShardKeyType, ShardedTableConfig, ShardingConfig};
use values::de_duration;
pub use values::{LagLimit, parse_duration, parse_size, socket_file, split_host_port, unix_socket_of};

/// Why a configuration could not be used. Every variant names the key at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read config file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// TOML syntax or a value of the wrong type; the toml crate's message names the key and line.
    #[error("invalid config file {path}: {message}")]
    Parse {
        /// The file.
        path: PathBuf,
        /// What toml said.
        message: String,
    },
    /// A value that parsed but makes no sense.
    #[error("invalid value for `{key}`: {reason}")]
    Invalid {
        /// Dotted key, e.g. `nodes[1].address`.
        key: String,
        /// Why, and what would be accepted.
        reason: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// On SIGINT/SIGTERM, how long sessions may take to finish their transaction before they are closed.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Threads running client sessions; 0 means half the usable CPU cores, at least one (the default).
    #[serde(default)]
    pub worker_threads: usize,
    /// Where clients connect.
    pub listen: ListenConfig,
    /// Who may connect; the same credentials are used towards the nodes.
    #[serde(default)]
    pub users: Vec<UserConfig>,
    /// The PostgreSQL servers behind the proxy.
    #[serde(default)]
    pub nodes: Vec<NodeConfig>,
    /// Tables whose rows are spread over the shards (`nodes[i].shard`).
    #[serde(default)]
    pub sharded_tables: Vec<ShardedTableConfig>,
    /// Commits across shards.
    #[serde(default)]
    pub sharding: ShardingConfig,
    /// How statements are sent to nodes.
    #[serde(default)]
    pub routing: RoutingConfig,
    /// Backend connection pools.
    #[serde(default)]
    pub pool: PoolConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Node health checks.
    #[serde(default)]
    pub health: HealthConfig,
    /// Admin console and metrics.
    #[serde(default)]
    pub admin: AdminConfig,
    /// How replicas are kept in sync.
    #[serde(default)]
    pub replication: ReplicationConfig,
}

fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}

impl Config {
    /// Reads, parses and validates a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text).map_err(|e| match e {
            ConfigError::Parse { message, .. } => ConfigError::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Parses and validates config text.
    pub fn parse(text: &str) -> Result<Config, ConfigError> {
        let config: Config =
            serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
                ConfigError::Parse {
                    path: PathBuf::from("<text>"),
                    message: parse_message(text, &e),
                }
            })?;
        config.validate()?;
        Ok(config)
    }

    /// The user health checks log in as.
    pub fn health_user(&self) -> Option<&UserConfig> {
        match &self.health.user {
            Some(name) => self.user(name),
            None => self.users.first(),
        }
    }

    /// The configured user of that name.
    pub fn user(&self, name: &str) -> Option<&UserConfig> {
        self.users.iter().find(|u| u.name == name)
    }
}

/// One line naming the key (when serde got that far), what is wrong, and where: `routing.load_balance:
/// unknown variant ... (line 11, column 16)`. toml's own rendering spans several lines, which log lines and
/// admin error messages cannot carry.
fn parse_message(text: &str, e: &serde_path_to_error::Error<toml::de::Error>) -> String {
    let inner = e.inner();
    let what = inner.message().trim().replace('\n', " ");
    let path = e.path().to_string();
    let key = if path.is_empty() || path == "." {
        String::new()
    } else {
        format!("`{path}`: ")
    };
    let place = inner
        .span()
        .map(|span| {
            let before = &text[..span.start.min(text.len())];
            let line = before.matches('\n').count() + 1;
            let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
            format!(" (line {line}, column {column})")
        })
        .unwrap_or_default();
    format!("{key}{what}{place}")
}

/// The configuration in force, shared by every part that reads it. A reload publishes a new one whole
/// (see `reload`), so a reader sees either the old or the new config, never a mix. Cloning shares it.
#[derive(Debug, Clone)]
pub struct ConfigHandle(std::sync::Arc<arc_swap::ArcSwap<Config>>);

impl ConfigHandle {
    /// A handle on `config`.
    pub fn new(config: Config) -> ConfigHandle {
        ConfigHandle(std::sync::Arc::new(arc_swap::ArcSwap::from_pointee(config)))
    }

    /// The configuration in force now. Hold the guard briefly: a reload publishes a new one.
    pub fn get(&self) -> arc_swap::Guard<std::sync::Arc<Config>> {
        self.0.load()
    }

    /// The configuration in force now, for holding across waits (a guard should not be).
    pub fn get_arc(&self) -> std::sync::Arc<Config> {
        self.0.load_full()
    }

    /// A copy of the configuration in force that is checked for a newer one by a pointer comparison, for
    /// readers that look at it many times per second.
    pub fn cache(
        &self,
    ) -> arc_swap::Cache<std::sync::Arc<arc_swap::ArcSwap<Config>>, std::sync::Arc<Config>> {
        arc_swap::Cache::new(self.0.clone())
    }

    /// Publishes a new configuration; only a reload does, once the running parts took it.
    pub fn publish(&self, config: std::sync::Arc<Config>) {
        self.0.store(config);
    }
}
