//! A real PostgreSQL cluster on this machine: one primary plus replicas (streaming standbys made with
//! `pg_basebackup`, or independent servers), started from the PostgreSQL binaries installed here.
//!
//! This module owns everything about such a cluster's life: finding the binaries, choosing the unprivileged OS
//! user the servers run as when we are root, the initdb template shared by every cluster, ports, server
//! settings, roles and the app database, waiting for replicas, and tearing it all down again, including the
//! clusters of earlier processes that died without dropping theirs.
//!
//! Used by the integration tests (`tests/it/support`) and by `pgfleet demo`. Everything here blocks on child
//! processes; from async code call it through `tokio::task::spawn_blocking` (or accept blocking a runtime
//! thread for a few seconds, as tests do).
//!
//! Environment: `PG_BIN` (directory holding `initdb`), `PGFLEET_PG_USER` (OS user servers run as when we
//! are root), `PGFLEET_KEEP_CLUSTER=1` (keep the files of dropped clusters for inspection).

mod cluster;
mod dirs;
mod node;
mod process;

pub use cluster::LocalCluster;
pub use dirs::unique_tmp_dir;
pub use node::NodeHandle;
pub use process::find_bin_dir;

use std::io;
use std::path::PathBuf;
use std::time::Duration;

/// The bootstrap superuser of every cluster.
pub const SUPERUSER: &str = "postgres";

/// Clusters and templates live directly under `/tmp` rather than `$TMPDIR`: the servers' OS user must be able
/// to traverse every parent, and unix socket paths must stay under 108 bytes.
const TMP_ROOT: &str = "/tmp";
/// Written into every directory we create under `/tmp` so that a later process can tell whether its creator
/// is still alive (see [`reap_orphans`](dirs::reap_orphans)).
const OWNER_FILE: &str = "pgfleet-owner";
/// Marks a base dir kept on purpose (`PGFLEET_KEEP_CLUSTER=1`) so that it is never reaped.
const KEEP_FILE: &str = "pgfleet-keep";
/// Written last into a template under construction: a template dir without it is garbage.
const TEMPLATE_MARKER: &str = "pgfleet-template-complete";
/// Per-node settings (port, socket dir, TLS files) live in their own file, included from `postgresql.conf`, so
/// that a retry on another port or a replica's own port is a rewrite instead of an ever-growing append.
const NODE_CONF: &str = "pgfleet-node.conf";
/// A node's TLS certificate and key ([`ServerTls`]), beside (not inside) its data directory, so that
/// `pg_basebackup` never copies one node's files to another.
const TLS_CERT_FILE: &str = "server.crt";
const TLS_KEY_FILE: &str = "server.key";
/// Put first in `pg_hba.conf` by [`ServerTls::tls_only`].
const HBA_TLS_ONLY: &str =
    "# added by pgfleet's localcluster: plain TCP is refused\nhostnossl all all all reject\n";
const START_TIMEOUT_SECS: u64 = 60;
const STOP_TIMEOUT_SECS: u64 = 30;
/// Short, because after it we kill the processes anyway.
const TEARDOWN_STOP_TIMEOUT_SECS: u64 = 10;
const CATCH_UP_AT_START: Duration = Duration::from_secs(60);
const PORT_ATTEMPTS: usize = 5;
const LOG_TAIL_LINES: usize = 40;
/// `sizeof(sun_path) - 1` on Linux.
const MAX_SOCKET_PATH: usize = 107;

/// Part of the template cache key, like [`COMMON_CONF`]. Local sockets trust (the harness's own psql),
/// TCP needs a SCRAM password (what pgfleet and clients use). 1 MB WAL segments instead of 16 MB: each node's
/// copy and base backup moves 15 MB fewer zero-filled bytes (measured: base backups 2x faster).
const INITDB_ARGS: [&str; 10] = [
    "-U",
    SUPERUSER,
    "--auth-local=trust",
    "--auth-host=scram-sha-256",
    "-E",
    "UTF8",
    "--locale=C",
    "--no-sync",
    "--wal-segsize",
    "1",
];

/// Appended to `postgresql.conf` of the template, hence to every node's. Part of the template cache key, so
/// changing it builds a new template.
///
/// synchronous_commit stays on: with it off, WAL reaches replicas only after the WAL writer's next flush (up
/// to 200 ms later), which would slow every test that waits for replay; with fsync off, a flush is cheap.
const COMMON_CONF: &str = "
# ---- added by pgfleet's localcluster ----
listen_addresses = '127.0.0.1'
wal_level = logical
max_wal_senders = 10
max_replication_slots = 10
wal_keep_size = 256MB
hot_standby = on
wal_retrieve_retry_interval = 500ms
fsync = off
full_page_writes = off
shared_buffers = 32MB
max_connections = 200
max_prepared_transactions = 10
logging_collector = off
log_line_prefix = '%m [%p] %q%u@%d '
include_if_exists = 'pgfleet-node.conf'
";

/// Why a local cluster could not be set up, driven or torn down.
#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    /// No directory with `initdb` in it.
    #[error(
        "no PostgreSQL binaries found (looked at: {searched}); set PG_BIN to the directory holding initdb"
    )]
    BinariesNotFound {
        /// Every place looked at.
        searched: String,
    },
    /// A file-system or process-spawning error.
    #[error("{context}: {source}")]
    Io {
        /// What we were doing.
        context: String,
        /// The underlying error.
        source: io::Error,
    },
    /// A command ran and failed.
    #[error("`{command}` failed ({status}){}{}", section("output", .output), section("server log tail", .log_tail))]
    Command {
        /// The command line.
        command: String,
        /// Its exit status.
        status: String,
        /// Its stderr, then its stdout.
        output: String,
        /// The end of the node's server log, when a node was involved.
        log_tail: String,
    },
    /// We are root and found no user to run PostgreSQL as (it refuses to run as root).
    #[error("no unprivileged OS user to run PostgreSQL as: {reason}")]
    NoServerUser {
        /// What went wrong.
        reason: String,
    },
    /// The base directory cannot be reached by the servers' OS user.
    #[error(
        "{path} is not traversable by OS user {user}, who runs the PostgreSQL servers; use a base dir under /tmp"
    )]
    NotTraversable {
        /// The directory lacking the execute bit.
        path: PathBuf,
        /// The servers' OS user.
        user: String,
    },
    /// The base directory is unusable as given.
    #[error("base dir {path}: {reason}")]
    BadBaseDir {
        /// The directory.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Waiting for a condition took too long.
    #[error("timed out after {waited:?} waiting for {what}")]
    Timeout {
        /// What we waited for.
        what: String,
        /// How long.
        waited: Duration,
    },
    /// Finding binaries, the servers' user or building the initdb template failed earlier in this process;
    /// the failure is remembered so that every later cluster reports it instead of retrying.
    #[error("local PostgreSQL setup failed: {0}")]
    Setup(String),
    /// A helper thread panicked.
    #[error("a thread {0} panicked")]
    ThreadPanicked(String),
}

fn section(title: &str, text: &str) -> String {
    if text.trim().is_empty() {
        String::new()
    } else {
        format!("\n--- {title} ---\n{}", text.trim_end())
    }
}

fn io_error(context: impl Into<String>) -> impl FnOnce(io::Error) -> ClusterError {
    let context = context.into();
    move |source| ClusterError::Io { context, source }
}

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    /// Number of replicas (default 2).
    pub replicas: usize,
    /// true: replicas are streaming standbys of the primary (`pg_basebackup -R`); false: independent
    /// read-write servers, each with its own copy of the roles and the app database.
    pub streaming: bool,
    /// Where the nodes live; default a fresh `/tmp/pgfleet-cluster-*`. If given, it must be empty or absent,
    /// and is removed on drop like the default one.
    pub base_dir: Option<PathBuf>,
    /// Lines appended to every node's `postgresql.conf`.
    pub extra_conf: Vec<String>,
    /// Password of the superuser and of the app user (default "secret").
    pub password: String,
    /// A LOGIN CREATEDB role owning the app database (default "app").
    pub app_user: String,
    /// Database created for the app user (default "app").
    pub app_database: String,
    /// TLS on every node (default: none, `ssl = off`).
    pub tls: Option<ServerTls>,
}

/// A server certificate for the nodes of a cluster: with it, each node runs with `ssl = on`.
#[derive(Debug, Clone)]
pub struct ServerTls {
    /// PEM certificate chain, the server's certificate first.
    pub cert_pem: String,
    /// PEM private key of that certificate (PKCS#8, RSA or SEC1, as OpenSSL reads them).
    pub key_pem: String,
    /// Refuse every TCP connection that does not use TLS (`hostnossl all all all reject` first in
    /// `pg_hba.conf`), so that a client that forgets TLS fails instead of silently going without.
    pub tls_only: bool,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        Self {
            replicas: 2,
            streaming: true,
            base_dir: None,
            extra_conf: Vec::new(),
            password: "secret".to_owned(),
            app_user: "app".to_owned(),
            app_database: "app".to_owned(),
            tls: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dirs::fnv1a;
    use crate::node::{quote_ident, quote_literal};
    use crate::process::{owner_alive, owner_record, process_alive, stat_fields};

    #[test]
    fn quoting() {
        assert_eq!(quote_literal("it's"), "'it''s'");
        assert_eq!(quote_ident("a\"b"), "\"a\"\"b\"");
    }

    #[test]
    fn stat_fields_survive_spaces_in_the_command_name() {
        let stat = "42 (a b) c) S 7 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 12345 1000 10";
        let fields = stat_fields(stat).expect("fields");
        assert_eq!(fields[0], "S");
        assert_eq!(fields[1], "7");
        assert_eq!(fields[19], "12345");
    }

    #[test]
    fn own_process_is_alive_by_owner_record() {
        assert!(owner_alive(&owner_record()));
        assert!(!owner_alive(&format!("{} 1", std::process::id())));
        assert!(process_alive(std::process::id()));
    }

    #[test]
    fn common_conf_includes_the_node_conf() {
        assert!(COMMON_CONF.contains(&format!("include_if_exists = '{NODE_CONF}'")));
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a("a"), 0xaf63_dc4c_8601_ec8c);
    }
}
