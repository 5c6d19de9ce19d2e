//! The tables of the config file, one struct per section (`[listen]`, `[[users]]`, `[[nodes]]`, `[routing]`,
//! `[pool]`, `[log]`, `[health]`, `[admin]`, `[replication]`), their enums and their defaults.

use std::path::PathBuf;
use std::time::Duration;

use serde::Deserialize;

use super::values::{LagLimit, de_duration, de_lag, de_opt_duration, de_size};

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
    /// A directory to accept local clients in as well, through the Unix-domain socket `.s.PGSQL.<port>` of
    /// `address`'s port, as PostgreSQL's `unix_socket_directories`; unset: TCP only.
    #[serde(default)]
    pub unix_socket_dir: Option<PathBuf>,
}

impl ListenConfig {
    /// The socket local clients connect to, when `unix_socket_dir` is set (and `address` has a port).
    pub fn unix_socket(&self) -> Option<PathBuf> {
        let dir = self.unix_socket_dir.as_ref()?;
        let port = self.address.rsplit_once(':')?.1.parse().ok()?;
        Some(super::socket_file(dir, port))
    }
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

fn default_max_message_size() -> u64 {
    // PostgreSQL itself refuses most messages over 1 GB; a proxy can be stricter by default.
    256 * 1024 * 1024
}
fn default_authentication_timeout() -> Duration {
    // PostgreSQL's default.
    Duration::from_secs(60)
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
    /// The shard the node belongs to (replicas name their primary's shard); unset in an unsharded fleet.
    #[serde(default)]
    pub shard: Option<u32>,
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

fn default_weight() -> u32 {
    1
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
    Statement,
    /// A session's first read is balanced; later reads go to the same node while it stays a candidate
    /// (healthy, within `max_replica_lag`, caught up with the session's writes). The default: a read that
    /// stays on its replica needs no position query to stay monotonic, and keeps that replica's caches warm.
    #[default]
    Session,
}

/// `routing.read_your_writes`, the older spelling of [`Consistency`]'s first two levels.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, Default)]
#[serde(rename_all = "lowercase")]
pub enum ReadYourWrites {
    /// A session's reads never see data older than its own committed writes.
    #[default]
    Session,
    /// Reads may go to any replica within the lag limit.
    Off,
}

/// `routing.consistency`: what a read is guaranteed to see (docs/routing.md, "Consistency levels").
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq, PartialOrd, Ord, Default)]
#[serde(rename_all = "lowercase")]
pub enum Consistency {
    /// Reads may go to any replica within the lag limit.
    Off,
    /// A session sees its own committed writes, and never older data than it already read.
    Session,
    /// A read sees every write whose commit this pgfleet acknowledged to any client before the read began.
    #[default]
    Global,
    /// A read sees every write the primary had when the read began, whichever pgfleet it went through.
    Universal,
}

impl From<ReadYourWrites> for Consistency {
    fn from(r: ReadYourWrites) -> Self {
        match r {
            ReadYourWrites::Session => Consistency::Session,
            ReadYourWrites::Off => Consistency::Off,
        }
    }
}

impl std::fmt::Display for Consistency {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Consistency::Off => "off",
            Consistency::Session => "session",
            Consistency::Global => "global",
            Consistency::Universal => "universal",
        })
    }
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
    /// The consistency level; read it through [`RoutingConfig::consistency`], which also knows the old key.
    #[serde(default)]
    pub consistency: Option<Consistency>,
    /// The older spelling of `consistency` ("off" or "session"); setting both is a config error.
    #[serde(default)]
    pub read_your_writes: Option<ReadYourWrites>,
    /// How long a read may wait for a replica to reach the position its consistency level asks for before
    /// going to the primary (`consistency_wait`, or its older name `read_your_writes_wait`).
    #[serde(default, alias = "read_your_writes_wait", deserialize_with = "de_duration")]
    pub consistency_wait: Duration,
}

impl RoutingConfig {
    /// The consistency level, from `consistency` or the older `read_your_writes`.
    pub fn consistency(&self) -> Consistency {
        self.consistency
            .or(self.read_your_writes.map(Consistency::from))
            .unwrap_or_default()
    }
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
            consistency: None,
            read_your_writes: None,
            consistency_wait: Duration::ZERO,
        }
    }
}

fn default_true() -> bool {
    true
}

fn default_function_refresh() -> Duration {
    Duration::from_secs(60)
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
    /// Most connections per (node, database, user); unset: see [`PoolConfig::cap`].
    #[serde(default)]
    pub max_size: Option<usize>,
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
            max_size: None,
            connect_timeout: default_connect_timeout(),
            checkout_timeout: default_checkout_timeout(),
            idle_timeout: default_idle_timeout(),
        }
    }
}

/// The cap of a transaction pool whose `max_size` is unset.
const TRANSACTION_POOL_SIZE: usize = 20;

impl PoolConfig {
    /// The most connections pgfleet opens per (node, database, user): `max_size` when set; unset, 20 with
    /// transaction pooling, and none of pgfleet's own with session pooling, where each client session
    /// holds at most one connection per node, so that the node's `max_connections` decides how many
    /// sessions it takes, as it does for clients that connect to it directly (PostgreSQL's 53300 "too
    /// many clients" reaches the client past that).
    pub fn cap(&self) -> Option<usize> {
        match (self.max_size, self.mode) {
            (Some(n), _) => Some(n),
            (None, PoolMode::Transaction) => Some(TRANSACTION_POOL_SIZE),
            (None, PoolMode::Session) => None,
        }
    }
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

fn default_log_level() -> String {
    "info".to_owned()
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

fn default_health_interval() -> Duration {
    Duration::from_secs(1)
}
fn default_health_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_health_database() -> String {
    "postgres".to_owned()
}

/// `[admin]`
#[derive(Debug, Clone, PartialEq, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// `host:port` serving Prometheus text on `/metrics`; unset: no metrics listener.
    #[serde(default)]
    pub metrics_address: Option<String>,
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
    /// Large transactions reach the replicas while they run (PostgreSQL 14 and later on the primary).
    #[serde(default = "default_streaming")]
    pub streaming: bool,
    /// Streamed transactions the replicas apply while they run, at most, per forwarded database; each takes a
    /// connection on every replica. Those beyond wait in a file of pgfleet's and are applied at their commit.
    #[serde(default = "default_max_streamed_transactions")]
    pub max_streamed_transactions: usize,
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
            streaming: default_streaming(),
            max_streamed_transactions: default_max_streamed_transactions(),
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
            .field("streaming", &self.streaming)
            .field("max_streamed_transactions", &self.max_streamed_transactions)
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
fn default_streaming() -> bool {
    true
}
fn default_max_streamed_transactions() -> usize {
    4
}
