//! Typed configuration: the TOML file's shape, its defaults, and validation that names the offending key.
//!
//! Everything the rest of the proxy reads about its setup comes from [`Config`]; nothing else parses the file.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

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

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// On SIGINT/SIGTERM, how long sessions may take to finish their transaction before they are closed.
    #[serde(default = "default_shutdown_timeout", deserialize_with = "de_duration")]
    pub shutdown_timeout: Duration,
    /// Threads running client sessions; 0 means one per CPU core (the default).
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

/// `replication.mode`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReplicationMode {
    /// PostgreSQL's own streaming replication keeps the replicas in sync; pgfleet watches it.
    #[default]
    External,
    /// pgfleet forwards the primary's committed changes to plain PostgreSQL servers.
    Forward,
}

/// `[replication]`
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReplicationConfig {
    /// External or forward.
    #[serde(default)]
    pub mode: ReplicationMode,
    /// Role pgfleet replicates as: REPLICATION and superuser on the primary, owner-level rights on replicas.
    #[serde(default)]
    pub user: Option<String>,
    /// Its password.
    #[serde(default)]
    pub password: Option<String>,
    /// Databases to forward.
    #[serde(default)]
    pub databases: Vec<String>,
    /// Prefix of the replication slots (one per database and replica) and name of the publication.
    #[serde(default = "default_repl_name")]
    pub name: String,
    /// Warn when a slot holds back more WAL than this on the primary.
    #[serde(default = "default_max_slot_lag", deserialize_with = "de_size")]
    pub max_slot_lag: u64,
    /// Tables copied at once during an initial copy.
    #[serde(default = "default_copy_parallelism")]
    pub copy_parallelism: usize,
    /// Most row changes per replica transaction when small transactions are batched.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
}

impl Default for ReplicationConfig {
    fn default() -> Self {
        Self {
            mode: ReplicationMode::default(),
            user: None,
            password: None,
            databases: Vec::new(),
            name: default_repl_name(),
            max_slot_lag: default_max_slot_lag(),
            copy_parallelism: default_copy_parallelism(),
            batch_size: default_batch_size(),
        }
    }
}

// Hand-written so that the password can never reach a log line through `{:?}`.
impl std::fmt::Debug for ReplicationConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReplicationConfig")
            .field("mode", &self.mode)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("databases", &self.databases)
            .field("name", &self.name)
            .field("max_slot_lag", &self.max_slot_lag)
            .field("copy_parallelism", &self.copy_parallelism)
            .field("batch_size", &self.batch_size)
            .finish()
    }
}

fn default_repl_name() -> String {
    "pgfleet".to_owned()
}
fn default_max_slot_lag() -> u64 {
    1024 * 1024 * 1024
}
fn default_copy_parallelism() -> usize {
    2
}
fn default_batch_size() -> usize {
    1000
}

/// `[health]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HealthConfig {
    /// How often each node is checked.
    #[serde(default = "default_health_interval", deserialize_with = "de_duration")]
    pub interval: Duration,
    /// A check slower than this counts as failed.
    #[serde(default = "default_health_timeout", deserialize_with = "de_duration")]
    pub timeout: Duration,
    /// Role used for health checks; default: the first `[[users]]` entry.
    #[serde(default)]
    pub user: Option<String>,
    /// Database health checks connect to.
    #[serde(default = "default_health_database")]
    pub database: String,
}

impl Default for HealthConfig {
    fn default() -> Self {
        Self {
            interval: default_health_interval(),
            timeout: default_health_timeout(),
            user: None,
            database: default_health_database(),
        }
    }
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` serving Prometheus text on `/metrics`; unset: no metrics listener.
    #[serde(default)]
    pub metrics_address: Option<String>,
}

/// A replica lag limit: bytes of WAL or time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LagLimit {
    /// At most this many bytes of WAL behind the primary.
    Bytes(u64),
    /// At most this far behind in time.
    Time(Duration),
}

fn de_lag<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<LagLimit>, D::Error> {
    let text = String::deserialize(d)?;
    if let Ok(size) = parse_size(&text) {
        return Ok(Some(LagLimit::Bytes(size)));
    }
    match parse_duration(&text) {
        Ok(t) => Ok(Some(LagLimit::Time(t))),
        Err(_) => Err(serde::de::Error::custom(format!(
            "`{text}` is neither a size (\"16MB\") nor a duration (\"2s\")"
        ))),
    }
}

/// `routing.read_your_writes`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// A session's reads never see data older than its own committed writes.
    #[default]
    Session,
    /// Reads may go to any replica within the lag limit.
    Off,
}

/// `[listen]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListenConfig {
    /// `host:port` to accept clients on.
    pub address: String,
    /// PEM certificate chain for client TLS; TLS is offered only when both files are set.
    #[serde(default)]
    pub tls_cert: Option<PathBuf>,
    /// PEM private key for client TLS.
    #[serde(default)]
    pub tls_key: Option<PathBuf>,
    /// Largest protocol message a client may send, in bytes (or a size such as "64MB").
    #[serde(default = "default_max_message_size", deserialize_with = "de_size")]
    pub max_message_size: u64,
    /// Most client sessions at once; 0 means no limit.
    #[serde(default)]
    pub max_clients: usize,
    /// A session idle (outside a transaction) this long is closed; unset: never.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub client_idle_timeout: Option<Duration>,
    /// A session idle inside a transaction this long is closed (and its transaction rolled back); unset: never.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub idle_in_transaction_timeout: Option<Duration>,
    /// Oldest TLS version a client may use.
    #[serde(default)]
    pub tls_min_version: TlsVersion,
    /// Whether clients may stay in plain text when TLS is configured.
    #[serde(default)]
    pub tls_mode: ClientTlsMode,
    /// A client that has not finished connecting (TLS, startup packet, authentication) this long after it was
    /// accepted is disconnected, as PostgreSQL's `authentication_timeout`.
    #[serde(default = "default_authentication_timeout", deserialize_with = "de_duration")]
    pub authentication_timeout: Duration,
}

/// `listen.tls_mode`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ClientTlsMode {
    /// TLS for clients that ask for it, plain text for the others.
    #[default]
    Allow,
    /// Every client must switch to TLS before its startup packet; plain text is refused with FATAL 28000,
    /// as PostgreSQL refuses a connection that only a `hostssl` line would match.
    Require,
}

/// `listen.tls_min_version`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
pub enum TlsVersion {
    /// TLS 1.2 and 1.3.
    #[default]
    #[serde(rename = "1.2")]
    Tls12,
    /// TLS 1.3 only.
    #[serde(rename = "1.3")]
    Tls13,
}

/// Client authentication method for one user.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// SCRAM-SHA-256, as PostgreSQL's default.
    #[default]
    #[serde(rename = "scram-sha-256")]
    ScramSha256,
    /// MD5 challenge.
    Md5,
    /// No password asked.
    Trust,
}

/// `[[users]]`
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UserConfig {
    /// Role name, as clients send it and as used on the nodes.
    pub name: String,
    /// Password for clients and for the nodes.
    #[serde(default)]
    pub password: String,
    /// How clients prove who they are.
    #[serde(default)]
    pub auth: AuthMethod,
    /// May use the admin console (database `pgfleet`).
    #[serde(default)]
    pub admin: bool,
    /// Most sessions of this user at once; 0 means no limit.
    #[serde(default)]
    pub max_connections: usize,
}

// Hand-written so that the password can never reach a log line through `{:?}`.
impl std::fmt::Debug for UserConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UserConfig")
            .field("name", &self.name)
            .field("password", &"<redacted>")
            .field("auth", &self.auth)
            .field("admin", &self.admin)
            .finish()
    }
}

/// A node's configured role.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Takes writes.
    Primary,
    /// Serves reads.
    Replica,
    /// Whatever `pg_is_in_recovery()` says: primary when false, replica when true (for failover tools).
    Auto,
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Role::Primary => "primary",
            Role::Replica => "replica",
            Role::Auto => "auto",
        })
    }
}

/// `[[nodes]]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeConfig {
    /// Name used in logs, errors and the admin console.
    pub name: String,
    /// `host:port` of the PostgreSQL server.
    pub address: String,
    /// Primary or replica.
    pub role: Role,
    /// Relative share of reads (random balancing); 0 takes the node out of the read set.
    #[serde(default = "default_weight")]
    pub weight: u32,
    /// TLS towards this node, with libpq's `sslmode` meanings.
    #[serde(default)]
    pub tls: NodeTlsMode,
    /// PEM bundle of the CA certificates the node's certificate must chain to (`require`, `verify-full`).
    #[serde(default)]
    pub tls_ca: Option<PathBuf>,
}

/// `nodes[i].tls`: libpq's `sslmode` values that make sense for a proxy.
///
/// The default is `prefer`, as in libpq: the clients pgfleet replaces reached the nodes with libpq's default,
/// so a server with `ssl = on` keeps getting encrypted connections from pgfleet as it did from them, and a
/// server without TLS answers `N` and is used in plain text as before.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "kebab-case")]
pub enum NodeTlsMode {
    /// Plain TCP; no SSLRequest is sent.
    Disable,
    /// TLS when the server offers it, plain text when it refuses; the certificate is not checked.
    #[default]
    Prefer,
    /// TLS or no connection; the certificate is checked against `tls_ca` when set (libpq's verify-ca),
    /// otherwise not at all.
    Require,
    /// TLS, the certificate chained to `tls_ca` and valid for the host of the node's address.
    VerifyFull,
}

impl NodeTlsMode {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeTlsMode::Disable => "disable",
            NodeTlsMode::Prefer => "prefer",
            NodeTlsMode::Require => "require",
            NodeTlsMode::VerifyFull => "verify-full",
        }
    }
}

/// How reads are spread over replicas.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum LoadBalance {
    /// Weighted random choice.
    #[default]
    Random,
    /// Each replica in turn.
    RoundRobin,
    /// The replica with the fewest connections in use.
    LeastConnections,
}

/// How long a read keeps the replica the balancer chose for it.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum ReplicaAffinity {
    /// Every read is balanced on its own.
    #[default]
    Statement,
    /// A session's first read is balanced; later reads go to the same node while it stays a candidate
    /// (healthy, within `max_replica_lag`, caught up with the session's writes).
    Session,
}

/// `[routing]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoutingConfig {
    /// Replica choice.
    #[serde(default)]
    pub load_balance: LoadBalance,
    /// Whether each read is balanced, or a session keeps its replica.
    #[serde(default)]
    pub replica_affinity: ReplicaAffinity,
    /// Whether the primary also serves reads.
    #[serde(default)]
    pub primary_reads: bool,
    /// Functions that must run on the primary, beyond the built-in list and VOLATILE user functions.
    #[serde(default)]
    pub write_functions: Vec<String>,
    /// Functions that never write, even if declared VOLATILE.
    #[serde(default)]
    pub read_only_functions: Vec<String>,
    /// How long a database's function volatility list is trusted before it is read again.
    #[serde(default = "default_function_refresh", deserialize_with = "de_duration")]
    pub function_refresh: Duration,
    /// Replicas further behind than this get no new reads; unset: no limit.
    #[serde(default, deserialize_with = "de_lag")]
    pub max_replica_lag: Option<LagLimit>,
    /// With no replica usable, send reads to the primary (true) or fail them (false).
    #[serde(default = "default_true")]
    pub fallback_to_primary: bool,
    /// Read-your-writes guarantee.
    #[serde(default)]
    pub read_your_writes: ReadYourWrites,
    /// How long a read may wait for a replica to replay the session's last write before going to the primary.
    #[serde(default, deserialize_with = "de_duration")]
    pub read_your_writes_wait: Duration,
}

impl Default for RoutingConfig {
    fn default() -> Self {
        Self {
            load_balance: LoadBalance::default(),
            replica_affinity: ReplicaAffinity::default(),
            primary_reads: false,
            write_functions: Vec::new(),
            read_only_functions: Vec::new(),
            function_refresh: default_function_refresh(),
            max_replica_lag: None,
            fallback_to_primary: true,
            read_your_writes: ReadYourWrites::default(),
            read_your_writes_wait: Duration::ZERO,
        }
    }
}

/// When a client's backend connection goes back to the pool.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum PoolMode {
    /// At the end of the client session.
    #[default]
    Session,
    /// At the end of each transaction, so that many clients share few backend connections.
    Transaction,
}

/// `[pool]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PoolConfig {
    /// Session or transaction pooling.
    #[serde(default)]
    pub mode: PoolMode,
    /// Most connections per (node, database, user).
    #[serde(default = "default_max_size")]
    pub max_size: usize,
    /// How long opening a new backend connection (connect, TLS, authentication) may take.
    #[serde(default = "default_connect_timeout", deserialize_with = "de_duration")]
    pub connect_timeout: Duration,
    /// How long a client waits for a connection of a full pool to be released before it gets 53300;
    /// zero refuses at once.
    #[serde(default = "default_checkout_timeout", deserialize_with = "de_duration")]
    pub checkout_timeout: Duration,
    /// Idle pooled connections older than this are closed.
    #[serde(default = "default_idle_timeout", deserialize_with = "de_duration")]
    pub idle_timeout: Duration,
}

impl Default for PoolConfig {
    fn default() -> Self {
        Self {
            mode: PoolMode::default(),
            max_size: default_max_size(),
            connect_timeout: default_connect_timeout(),
            checkout_timeout: default_checkout_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// A tracing filter such as "info" or "pgfleet=debug"; `RUST_LOG` wins when set.
    #[serde(default = "default_log_level")]
    pub level: String,
    /// Line format.
    #[serde(default)]
    pub format: LogFormat,
    /// A request that takes at least this long is logged once, with its statement shape (constants
    /// replaced by `$n`, so no literal or parameter value reaches the log); unset: never.
    #[serde(default, deserialize_with = "de_opt_duration")]
    pub slow_statement: Option<Duration>,
}

/// `log.format`
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    #[default]
    Text,
    /// One JSON object per line.
    Json,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: default_log_level(),
            format: LogFormat::default(),
            slow_statement: None,
        }
    }
}

fn default_max_message_size() -> u64 {
    // PostgreSQL itself refuses most messages over 1 GB; a proxy can be stricter by default.
    256 * 1024 * 1024
}
fn default_authentication_timeout() -> Duration {
    // PostgreSQL's default.
    Duration::from_secs(60)
}
fn default_shutdown_timeout() -> Duration {
    Duration::from_secs(30)
}
fn default_true() -> bool {
    true
}
fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_health_database() -> String {
    "postgres".to_owned()
}
fn default_weight() -> u32 {
    1
}
fn default_function_refresh() -> Duration {
    Duration::from_secs(60)
}
fn default_max_size() -> usize {
    20
}
fn default_connect_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_checkout_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_idle_timeout() -> Duration {
    Duration::from_secs(600)
}
fn default_log_level() -> String {
    "info".to_owned()
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

/// Parses "250ms", "5s", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let t = text.trim();
    let split = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: f64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a duration such as \"500ms\" or \"5s\""))?;
    let secs = match unit.trim() {
        "" | "s" => value,
        "ms" => value / 1000.0,
        "us" => value / 1_000_000.0,
        "m" | "min" => value * 60.0,
        "h" => value * 3600.0,
        other => return Err(format!("unknown duration unit `{other}` (use ms, s, m or h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// Parses "64MB", "16kB", "1GB" or a bare number of bytes.
pub fn parse_size(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let value: u64 = num
        .parse()
        .map_err(|_| format!("`{text}` is not a size such as \"16MB\""))?;
    let mult = match unit.trim().to_ascii_lowercase().as_str() {
        "" | "b" => 1,
        "kb" | "k" => 1024,
        "mb" | "m" => 1024 * 1024,
        "gb" | "g" => 1024 * 1024 * 1024,
        other => return Err(format!("unknown size unit `{other}` (use B, kB, MB or GB)")),
    };
    Ok(value * mult)
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(u64),
    Text(String),
}

fn de_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(Duration::from_secs(n)),
        NumOrText::Text(t) => parse_duration(&t).map_err(serde::de::Error::custom),
    }
}

fn de_opt_duration<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    de_duration(d).map(|t| if t.is_zero() { None } else { Some(t) })
}

fn de_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u64, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => Ok(n),
        NumOrText::Text(t) => parse_size(&t).map_err(serde::de::Error::custom),
    }
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

    /// Checks what serde cannot: addresses, uniqueness, exactly one primary.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.listen.address.parse::<SocketAddr>().map_err(|_| {
            invalid(
                "listen.address",
                format!(
                    "`{}` is not host:port (e.g. \"127.0.0.1:6432\")",
                    self.listen.address
                ),
            )
        })?;
        match (&self.listen.tls_cert, &self.listen.tls_key) {
            (Some(_), None) => {
                return Err(invalid(
                    "listen.tls_key",
                    "must be set when listen.tls_cert is set",
                ));
            }
            (None, Some(_)) => {
                return Err(invalid(
                    "listen.tls_cert",
                    "must be set when listen.tls_key is set",
                ));
            }
            (Some(cert), Some(key)) => {
                for (k, p) in [("listen.tls_cert", cert), ("listen.tls_key", key)] {
                    if !p.exists() {
                        return Err(invalid(k, format!("file {} does not exist", p.display())));
                    }
                }
            }
            (None, None) => {}
        }
        if self.listen.tls_mode == ClientTlsMode::Require && self.listen.tls_cert.is_none() {
            return Err(invalid(
                "listen.tls_mode",
                "\"require\" needs a client TLS certificate: set listen.tls_cert and listen.tls_key",
            ));
        }
        if self.listen.authentication_timeout.is_zero() {
            return Err(invalid(
                "listen.authentication_timeout",
                "must be longer than 0 (PostgreSQL's default is \"60s\")",
            ));
        }
        if self.listen.max_message_size < 1024 {
            return Err(invalid("listen.max_message_size", "must be at least 1kB"));
        }
        if self.users.is_empty() {
            return Err(invalid("users", "at least one [[users]] entry is needed"));
        }
        let mut names = HashSet::new();
        for (i, u) in self.users.iter().enumerate() {
            if u.name.is_empty() {
                return Err(invalid(format!("users[{i}].name"), "must not be empty"));
            }
            if !names.insert(u.name.as_str()) {
                return Err(invalid(
                    format!("users[{i}].name"),
                    format!("user `{}` is listed twice", u.name),
                ));
            }
            if u.password.is_empty() && u.auth != AuthMethod::Trust {
                return Err(invalid(
                    format!("users[{i}].password"),
                    "must be set unless auth = \"trust\" (it is also used to log in to the nodes)",
                ));
            }
        }
        if self.nodes.is_empty() {
            return Err(invalid(
                "nodes",
                "at least one [[nodes]] entry (the primary) is needed",
            ));
        }
        let mut node_names = HashSet::new();
        for (i, n) in self.nodes.iter().enumerate() {
            if n.name.is_empty() {
                return Err(invalid(format!("nodes[{i}].name"), "must not be empty"));
            }
            if !node_names.insert(n.name.as_str()) {
                return Err(invalid(
                    format!("nodes[{i}].name"),
                    format!("node `{}` is listed twice", n.name),
                ));
            }
            split_host_port(&n.address).map_err(|reason| invalid(format!("nodes[{i}].address"), reason))?;
            validate_node_tls(i, n)?;
        }
        let primaries = self.nodes.iter().filter(|n| n.role == Role::Primary).count();
        let autos = self.nodes.iter().filter(|n| n.role == Role::Auto).count();
        if primaries > 1 || (primaries == 1 && autos > 0) || (primaries == 0 && autos == 0) {
            return Err(invalid(
                "nodes",
                format!(
                    "exactly one node must have role = \"primary\", or use role = \"auto\" on every node that \
                     may become primary (found {primaries} primary and {autos} auto)"
                ),
            ));
        }
        if self.health.interval.is_zero() {
            return Err(invalid("health.interval", "must be more than 0"));
        }
        if let Some(u) = &self.health.user
            && self.user(u).is_none()
        {
            return Err(invalid(
                "health.user",
                format!("`{u}` is not one of the [[users]]"),
            ));
        }
        if self.replication.mode == ReplicationMode::Forward {
            let r = &self.replication;
            if r.databases.is_empty() {
                return Err(invalid(
                    "replication.databases",
                    "forward mode needs the list of databases to forward",
                ));
            }
            if r.user.is_none() || r.password.is_none() {
                return Err(invalid(
                    "replication.user",
                    "forward mode needs replication.user and replication.password: a superuser with REPLICATION",
                ));
            }
            if autos > 0 {
                return Err(invalid(
                    "nodes",
                    "role = \"auto\" is for streaming replicas; forward mode needs one primary",
                ));
            }
            if !r
                .name
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
                || r.name.is_empty()
            {
                return Err(invalid(
                    "replication.name",
                    "use lowercase letters, digits and _ (it names slots)",
                ));
            }
            if r.copy_parallelism == 0 || r.batch_size == 0 {
                return Err(invalid(
                    "replication.copy_parallelism",
                    "copy_parallelism and batch_size must be at least 1",
                ));
            }
        }
        if let Some(m) = &self.admin.metrics_address {
            m.parse::<SocketAddr>()
                .map_err(|_| invalid("admin.metrics_address", format!("`{m}` is not host:port")))?;
        }
        if self.pool.max_size == 0 {
            return Err(invalid("pool.max_size", "must be at least 1"));
        }
        if self.pool.connect_timeout.is_zero() {
            return Err(invalid("pool.connect_timeout", "must be more than 0"));
        }
        if tracing_subscriber::EnvFilter::try_new(&self.log.level).is_err() {
            return Err(invalid(
                "log.level",
                format!("`{}` is not a level or filter such as \"info\"", self.log.level),
            ));
        }
        Ok(())
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

/// `nodes[i].tls` and `nodes[i].tls_ca` together: a CA file is needed for verify-full, pointless without
/// verification, and must hold certificates; verify-full needs a host a certificate can name.
fn validate_node_tls(i: usize, n: &NodeConfig) -> Result<(), ConfigError> {
    let key = format!("nodes[{i}].tls_ca");
    match (n.tls, &n.tls_ca) {
        (NodeTlsMode::VerifyFull, None) => {
            return Err(invalid(
                key,
                "must be set when tls = \"verify-full\": the PEM file of the CA that signed the node's certificate",
            ));
        }
        (NodeTlsMode::Disable | NodeTlsMode::Prefer, Some(_)) => {
            // A CA that is silently not checked would look like protection; libpq's prefer never checks.
            return Err(invalid(
                key,
                format!(
                    "is only used with tls = \"require\" or \"verify-full\" (tls is \"{}\")",
                    n.tls.as_str()
                ),
            ));
        }
        (_, Some(path)) => {
            crate::certs::ca_roots(path).map_err(|e| invalid(&key, e.to_string()))?;
        }
        (_, None) => {}
    }
    if n.tls == NodeTlsMode::VerifyFull {
        let (host, _) =
            split_host_port(&n.address).map_err(|reason| invalid(format!("nodes[{i}].address"), reason))?;
        crate::certs::server_name(&host)
            .map_err(|e| invalid(format!("nodes[{i}].address"), e.to_string()))?;
    }
    Ok(())
}

/// Splits "host:port" (or "[v6]:port") into its parts.
pub fn split_host_port(address: &str) -> Result<(String, u16), String> {
    let (host, port) = address
        .rsplit_once(':')
        .ok_or_else(|| format!("`{address}` is not host:port (e.g. \"10.0.0.1:5432\")"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| format!("`{port}` in `{address}` is not a port number"))?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    if host.is_empty() {
        return Err(format!("`{address}` has no host"));
    }
    Ok((host.to_owned(), port))
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

    /// Publishes a new configuration; only a reload does, once the running parts took it.
    pub fn publish(&self, config: std::sync::Arc<Config>) {
        self.0.store(config);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
[listen]
address = "127.0.0.1:6432"
[[users]]
name = "app"
password = "secret"
[[nodes]]
name = "primary"
address = "10.0.0.1:5432"
role = "primary"
[[nodes]]
name = "replica1"
address = "10.0.0.2:5432"
role = "replica"
weight = 1
[routing]
load_balance = "random"
primary_reads = false
"#;

    #[test]
    fn issue_example_parses_with_defaults() {
        let c = Config::parse(BASE).expect("valid");
        assert_eq!(c.nodes.len(), 2);
        assert_eq!(c.pool.max_size, 20);
        assert_eq!(c.pool.checkout_timeout, Duration::from_secs(5));
        assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
        assert_eq!(c.routing.load_balance, LoadBalance::Random);
    }

    fn err_of(text: &str) -> String {
        Config::parse(text).expect_err("must be refused").to_string()
    }

    #[test]
    fn errors_name_the_key() {
        assert!(err_of(&BASE.replace("10.0.0.2:5432", "nohost")).contains("nodes[1].address"));
        assert!(err_of(&BASE.replace("role = \"replica\"", "role = \"primary\"")).contains("exactly one"));
        assert!(err_of(&BASE.replace("\"random\"", "\"fastest\"")).contains("load_balance"));
        assert!(err_of(&BASE.replace("127.0.0.1:6432", "localhost")).contains("listen.address"));
        assert!(err_of(&format!("{BASE}\n[pool]\nmax_size = 0\n")).contains("pool.max_size"));
        assert!(
            err_of(&format!("{BASE}\n[pool]\nconnect_timeout = \"5 parsecs\"\n")).contains("connect_timeout")
        );
        assert!(
            err_of(&format!("{BASE}\n[pool]\ncheckout_timeout = \"soon\"\n")).contains("checkout_timeout")
        );
        assert!(err_of(&BASE.replace("password = \"secret\"", "")).contains("users[0].password"));
        assert!(err_of(&format!("{BASE}\n[pool]\nbogus = 1\n")).contains("bogus"));
    }

    #[test]
    fn client_tls_mode_and_authentication_timeout() {
        let c = Config::parse(BASE).expect("valid");
        assert_eq!(c.listen.tls_mode, ClientTlsMode::Allow);
        assert_eq!(c.listen.authentication_timeout, Duration::from_secs(60));
        let listen = |lines: &str| BASE.replace("[listen]\n", &format!("[listen]\n{lines}\n"));
        let c = Config::parse(&listen("authentication_timeout = \"1500ms\"")).expect("valid");
        assert_eq!(c.listen.authentication_timeout, Duration::from_millis(1500));
        let e = err_of(&listen("tls_mode = \"require\""));
        assert!(
            e.contains("listen.tls_mode") && e.contains("listen.tls_cert"),
            "{e}"
        );
        assert!(err_of(&listen("tls_mode = \"prefer\"")).contains("listen.tls_mode"));
        assert!(err_of(&listen("authentication_timeout = 0")).contains("listen.authentication_timeout"));
    }

    #[test]
    fn lag_limits_and_auto_roles() {
        let c =
            Config::parse(&BASE.replace("primary_reads = false", "max_replica_lag = \"16MB\"")).expect("ok");
        assert_eq!(c.routing.max_replica_lag, Some(LagLimit::Bytes(16 * 1024 * 1024)));
        let c =
            Config::parse(&BASE.replace("primary_reads = false", "max_replica_lag = \"2s\"")).expect("ok");
        assert_eq!(
            c.routing.max_replica_lag,
            Some(LagLimit::Time(Duration::from_secs(2)))
        );
        assert!(
            err_of(&BASE.replace("primary_reads = false", "max_replica_lag = \"soon\""))
                .contains("max_replica_lag")
        );
        let autos = BASE
            .replace("role = \"primary\"", "role = \"auto\"")
            .replace("role = \"replica\"", "role = \"auto\"");
        assert!(Config::parse(&autos).is_ok());
        let mixed = BASE.replace("role = \"replica\"", "role = \"auto\"");
        assert!(err_of(&mixed).contains("auto"));
    }

    #[test]
    fn durations_and_sizes() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_size("16MB"), Ok(16 * 1024 * 1024));
        assert!(parse_size("16XB").is_err());
    }

    #[test]
    fn node_tls_settings() {
        let c = Config::parse(BASE).expect("valid");
        assert_eq!(c.nodes[0].tls, NodeTlsMode::Prefer, "libpq's default");
        assert_eq!(c.listen.tls_min_version, TlsVersion::Tls12);
        let with = |extra: &str| BASE.replace("weight = 1", &format!("weight = 1\n{extra}"));
        let c = Config::parse(&with("tls = \"disable\"")).expect("disable");
        assert_eq!(c.nodes[1].tls, NodeTlsMode::Disable);
        let c = Config::parse(&with("tls = \"require\"")).expect("require without a CA");
        assert_eq!(c.nodes[1].tls, NodeTlsMode::Require);
        let err = err_of(&with("tls = \"verify-full\""));
        assert!(
            err.contains("`nodes[1].tls_ca`") && err.contains("verify-full"),
            "{err}"
        );
        let err = err_of(&with("tls = \"verify-full\"\ntls_ca = \"/nonexistent/ca.pem\""));
        assert!(
            err.contains("`nodes[1].tls_ca`") && err.contains("/nonexistent/ca.pem"),
            "{err}"
        );
        let err = err_of(&with("tls = \"prefer\"\ntls_ca = \"/nonexistent/ca.pem\""));
        assert!(
            err.contains("`nodes[1].tls_ca`") && err.contains("only used with"),
            "{err}"
        );
        assert!(err_of(&with("tls = \"verify-ca\"")).contains("tls"));
        let c = Config::parse(&BASE.replace(
            "address = \"127.0.0.1:6432\"",
            "address = \"127.0.0.1:6432\"\ntls_min_version = \"1.3\"",
        ))
        .expect("1.3");
        assert_eq!(c.listen.tls_min_version, TlsVersion::Tls13);
        assert!(
            err_of(&BASE.replace(
                "address = \"127.0.0.1:6432\"",
                "address = \"127.0.0.1:6432\"\ntls_min_version = \"1.1\"",
            ))
            .contains("tls_min_version")
        );
    }

    #[test]
    fn debug_never_shows_passwords() {
        let c = Config::parse(BASE).expect("valid");
        assert!(!format!("{c:?}").contains("secret"));
    }
}
