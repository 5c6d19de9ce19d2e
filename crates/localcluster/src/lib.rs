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

use std::ffi::OsStr;
use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom, Write as _};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

/// The bootstrap superuser of every cluster.
pub const SUPERUSER: &str = "postgres";

/// Clusters and templates live directly under `/tmp` rather than `$TMPDIR`: the servers' OS user must be able
/// to traverse every parent, and unix socket paths must stay under 108 bytes.
const TMP_ROOT: &str = "/tmp";
/// Written into every directory we create under `/tmp` so that a later process can tell whether its creator
/// is still alive (see [`reap_orphans`]).
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

/// The OS user servers run as, when we are root.
#[derive(Debug)]
struct ServerUser {
    name: String,
    uid: u32,
    gid: u32,
    switcher: Switcher,
}

#[derive(Debug)]
enum Switcher {
    Runuser(PathBuf),
    Setpriv(PathBuf),
}

/// What every cluster of this process shares.
#[derive(Debug)]
struct Host {
    bin_dir: PathBuf,
    server_user: Option<ServerUser>,
    template: PathBuf,
}

static HOST: OnceLock<Result<Host, String>> = OnceLock::new();

fn host() -> Result<&'static Host, ClusterError> {
    HOST.get_or_init(|| build_host().map_err(|e| e.to_string()))
        .as_ref()
        .map_err(|message| ClusterError::Setup(message.clone()))
}

fn build_host() -> Result<Host, ClusterError> {
    let bin_dir = find_bin_dir()?;
    let server_user = choose_server_user()?;
    let mut host = Host {
        bin_dir,
        server_user,
        template: PathBuf::new(),
    };
    reap_orphans(&host);
    host.template = ensure_template(&host)?;
    Ok(host)
}

impl Host {
    fn bin(&self, tool: &str) -> PathBuf {
        self.bin_dir.join(tool)
    }

    /// A command with a predictable environment: no inherited libpq variables (a stray PGHOST or PGOPTIONS
    /// would change what we connect to), English messages, a cwd every user can enter.
    fn command(&self, program: impl AsRef<OsStr>, as_server_user: bool) -> Command {
        let mut cmd = match (&self.server_user, as_server_user) {
            (Some(user), true) => {
                let mut cmd = match &user.switcher {
                    Switcher::Runuser(path) => {
                        let mut cmd = Command::new(path);
                        cmd.args(["-u", &user.name, "--"]);
                        cmd
                    }
                    Switcher::Setpriv(path) => {
                        let mut cmd = Command::new(path);
                        cmd.arg(format!("--reuid={}", user.uid))
                            .arg(format!("--regid={}", user.gid))
                            .args(["--init-groups", "--"]);
                        cmd
                    }
                };
                cmd.arg(program);
                cmd
            }
            _ => Command::new(program),
        };
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("PG") {
                cmd.env_remove(key);
            }
        }
        cmd.env("LC_ALL", "C").current_dir("/").stdin(Stdio::null());
        cmd
    }

    fn server_ids(&self) -> Option<(u32, u32)> {
        self.server_user.as_ref().map(|u| (u.uid, u.gid))
    }

    /// Makes a directory we created as root usable by the servers' user.
    fn hand_over(&self, path: &Path) -> Result<(), ClusterError> {
        if let Some((uid, gid)) = self.server_ids() {
            std::os::unix::fs::chown(path, Some(uid), Some(gid))
                .map_err(io_error(format!("chown {}", path.display())))?;
        }
        Ok(())
    }
}

fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        let arg = arg.to_string_lossy();
        text.push(' ');
        if arg.is_empty() || arg.contains(|c: char| c.is_whitespace() || c == '\'' || c == '"') {
            text.push('\'');
            text.push_str(&arg.replace('\'', r"'\''"));
            text.push('\'');
        } else {
            text.push_str(&arg);
        }
    }
    text
}

/// Runs to completion; returns stdout trimmed. On failure the error carries the command, its output and,
/// if `log` is given, the tail of that server log.
fn run(mut cmd: Command, log: Option<&Path>) -> Result<String, ClusterError> {
    let command = describe(&cmd);
    let out = cmd.output().map_err(io_error(format!("running `{command}`")))?;
    if out.status.success() {
        return Ok(String::from_utf8_lossy(&out.stdout).trim().to_owned());
    }
    let mut output = String::from_utf8_lossy(&out.stderr).trim().to_owned();
    let stdout = String::from_utf8_lossy(&out.stdout);
    if !stdout.trim().is_empty() {
        output.push_str("\n(stdout) ");
        output.push_str(stdout.trim());
    }
    Err(ClusterError::Command {
        command,
        status: out.status.to_string(),
        output,
        log_tail: log.map(|l| tail_lines(l, LOG_TAIL_LINES)).unwrap_or_default(),
    })
}

fn tail_lines(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn find_in_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/sbin", "/usr/bin", "/bin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|candidate| candidate.is_file())
}

/// `PG_BIN`, else `pg_config --bindir`, else the newest `/usr/lib/postgresql/*/bin` (Debian) or
/// `/usr/pgsql-*/bin` (RHEL).
pub fn find_bin_dir() -> Result<PathBuf, ClusterError> {
    let has_initdb = |dir: &Path| dir.join("initdb").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").filter(|d| !d.is_empty()) {
        let dir = PathBuf::from(dir);
        return if has_initdb(&dir) {
            Ok(dir)
        } else {
            Err(ClusterError::BinariesNotFound {
                searched: format!("PG_BIN={}", dir.display()),
            })
        };
    }
    let mut searched = Vec::new();
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output()
        && out.status.success()
    {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if has_initdb(&dir) {
            return Ok(dir);
        }
        searched.push(format!("pg_config --bindir = {}", dir.display()));
    }
    let mut candidates: Vec<(Vec<u32>, PathBuf)> = Vec::new();
    for (parent, prefix, suffix) in [("/usr/lib/postgresql", "", "bin"), ("/usr", "pgsql-", "bin")] {
        searched.push(format!("{parent}/{prefix}*/{suffix}"));
        let Ok(entries) = fs::read_dir(parent) else {
            continue;
        };
        for entry in entries.flatten() {
            let name = entry.file_name().to_string_lossy().into_owned();
            let Some(version) = name.strip_prefix(prefix) else {
                continue;
            };
            let Ok(key) = version
                .split('.')
                .map(str::parse::<u32>)
                .collect::<Result<Vec<u32>, _>>()
            else {
                continue;
            };
            let dir = entry.path().join(suffix);
            if has_initdb(&dir) {
                candidates.push((key, dir));
            }
        }
    }
    candidates.sort();
    candidates
        .pop()
        .map(|(_, dir)| dir)
        .ok_or_else(|| ClusterError::BinariesNotFound {
            searched: searched.join(", "),
        })
}

fn effective_uid() -> Result<u32, ClusterError> {
    // /proc/self belongs to the process's effective uid; `id -u` covers systems without procfs.
    if let Ok(meta) = fs::metadata("/proc/self") {
        return Ok(meta.uid());
    }
    lookup_id(None, "-u").ok_or_else(|| ClusterError::NoServerUser {
        reason: "`id -u` failed".to_owned(),
    })
}

fn lookup_id(user: Option<&str>, flag: &str) -> Option<u32> {
    let mut cmd = Command::new("id");
    cmd.arg(flag).args(user);
    let out = cmd.stderr(Stdio::null()).output().ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout).trim().parse().ok()
}

/// PostgreSQL refuses to run as root. As root we use `PGFLEET_PG_USER`, else `postgres`, else `pgfleet`,
/// creating the latter as a system user when neither exists (fresh CI machines).
fn choose_server_user() -> Result<Option<ServerUser>, ClusterError> {
    if effective_uid()? != 0 {
        return Ok(None);
    }
    let is_usable = |name: &str| lookup_id(Some(name), "-u").is_some_and(|uid| uid != 0);
    let name = match std::env::var("PGFLEET_PG_USER").ok().filter(|n| !n.is_empty()) {
        Some(name) if is_usable(&name) => name,
        Some(name) => {
            return Err(ClusterError::NoServerUser {
                reason: format!("PGFLEET_PG_USER={name} does not exist or is root"),
            });
        }
        None => match ["postgres", "pgfleet"].into_iter().find(|n| is_usable(n)) {
            Some(name) => name.to_owned(),
            None => {
                let mut cmd = Command::new("useradd");
                cmd.args(["--system", "--no-create-home", "--user-group", "pgfleet"]);
                let result = run(cmd, None);
                // Another test process may have created it at the same moment.
                if !is_usable("pgfleet") {
                    let reason = match result {
                        Err(e) => format!("no `postgres` user, and creating `pgfleet` failed: {e}"),
                        Ok(_) => "useradd pgfleet succeeded but `id -u pgfleet` fails".to_owned(),
                    };
                    return Err(ClusterError::NoServerUser { reason });
                }
                "pgfleet".to_owned()
            }
        },
    };
    let (Some(uid), Some(gid)) = (lookup_id(Some(&name), "-u"), lookup_id(Some(&name), "-g")) else {
        return Err(ClusterError::NoServerUser {
            reason: format!("`id` cannot resolve {name}"),
        });
    };
    let switcher = find_in_path("runuser")
        .map(Switcher::Runuser)
        .or_else(|| find_in_path("setpriv").map(Switcher::Setpriv))
        .ok_or_else(|| ClusterError::NoServerUser {
            reason: "neither runuser nor setpriv is installed".into(),
        })?;
    Ok(Some(ServerUser {
        name,
        uid,
        gid,
        switcher,
    }))
}

/// FNV-1a: a stable hash (unlike `DefaultHasher`) so that every test binary agrees on the template's name.
fn fnv1a(text: &str) -> u64 {
    text.bytes().fold(0xcbf2_9ce4_8422_2325, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(0x0100_0000_01b3)
    })
}

/// initdb takes about as long as everything else in a cluster start, so it runs once per machine and
/// configuration: the result is kept as `/tmp/pgfleet-template-<hash>` and each node copies its data dir.
/// Built under a temporary name and renamed into place, so concurrent test processes never see half a
/// template. Passwords are not baked in (they differ per cluster); they are set after start.
fn ensure_template(host: &Host) -> Result<PathBuf, ClusterError> {
    let mut version_cmd = host.command(host.bin("initdb"), false);
    version_cmd.arg("--version");
    let version = run(version_cmd, None)?;
    let uid = match host.server_ids() {
        Some((uid, _)) => uid,
        None => effective_uid()?,
    };
    let key = fnv1a(&format!(
        "v1|{}|{version}|{uid}|{}|{COMMON_CONF}",
        host.bin_dir.display(),
        INITDB_ARGS.join(" ")
    ));
    let name = format!("pgfleet-template-{key:016x}");
    let final_dir = Path::new(TMP_ROOT).join(&name);
    if final_dir.join(TEMPLATE_MARKER).is_file() {
        return Ok(final_dir);
    }
    if final_dir.exists() {
        // Never valid without the marker, which is written before the rename.
        let _ = fs::remove_dir_all(&final_dir);
    }
    let building = unique_tmp_dir_for(host, &format!("{name}.building"))?;
    let result = build_template(host, &building);
    if let Err(e) = result {
        let _ = fs::remove_dir_all(&building);
        return Err(e);
    }
    match fs::rename(&building, &final_dir) {
        Ok(()) => Ok(final_dir),
        Err(_) if final_dir.join(TEMPLATE_MARKER).is_file() => {
            let _ = fs::remove_dir_all(&building);
            Ok(final_dir)
        }
        Err(source) => {
            let _ = fs::remove_dir_all(&building);
            Err(ClusterError::Io {
                context: format!("renaming template into {}", final_dir.display()),
                source,
            })
        }
    }
}

fn build_template(host: &Host, building: &Path) -> Result<(), ClusterError> {
    let data = building.join("data");
    let mut initdb = host.command(host.bin("initdb"), true);
    initdb.arg("-D").arg(&data).args(INITDB_ARGS);
    run(initdb, None)?;
    append(&data.join("postgresql.conf"), COMMON_CONF)?;
    fs::write(building.join(TEMPLATE_MARKER), "").map_err(io_error("writing the template marker"))?;
    // Once complete the template belongs to no process: it must never be reaped.
    fs::remove_file(building.join(OWNER_FILE)).map_err(io_error("removing the template's owner file"))
}

fn append(path: &Path, text: &str) -> Result<(), ClusterError> {
    let mut file = fs::OpenOptions::new()
        .append(true)
        .open(path)
        .map_err(io_error(format!("opening {}", path.display())))?;
    file.write_all(text.as_bytes())
        .map_err(io_error(format!("writing {}", path.display())))
}

/// Writes a file the servers' user must be able to read and rewrite.
fn write_owned(host: &Host, path: &Path, text: &str) -> Result<(), ClusterError> {
    fs::write(path, text).map_err(io_error(format!("writing {}", path.display())))?;
    host.hand_over(path)
}

/// `(pid, start time)` identifies a process across pid reuse.
fn process_start_time(pid: u32) -> Option<u64> {
    let stat = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat_fields(&stat).and_then(|fields| fields.get(19).and_then(|t| t.parse().ok()))
}

/// The fields of /proc/PID/stat after the parenthesised command name (which may contain spaces): index 0
/// is field 3 (state), 1 is the ppid, 19 the start time.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let rest = &stat[stat.rfind(')')? + 1..];
    Some(rest.split_whitespace().collect())
}

fn process_alive(pid: u32) -> bool {
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    stat_fields(&stat)
        .and_then(|f| f.first().copied())
        .is_some_and(|state| state != "Z" && state != "X")
}

fn children_of(pid: u32) -> Vec<u32> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|child| {
            fs::read_to_string(format!("/proc/{child}/stat"))
                .ok()
                .and_then(|stat| {
                    stat_fields(&stat).and_then(|f| f.get(1).and_then(|p| p.parse::<u32>().ok()))
                })
                == Some(pid)
        })
        .collect()
}

fn send_signal(signal: &str, pids: &[u32]) -> Result<(), ClusterError> {
    if pids.is_empty() {
        return Ok(());
    }
    let mut cmd = Command::new("kill");
    cmd.args(["-s", signal])
        .args(pids.iter().map(u32::to_string))
        .stdin(Stdio::null());
    match run(cmd, None) {
        // Backends come and go between listing and signalling; the others still got the signal.
        Err(ClusterError::Command { output, .. })
            if output.lines().all(|line| line.contains("No such process")) =>
        {
            Ok(())
        }
        other => other.map(drop),
    }
}

fn owner_record() -> String {
    let pid = std::process::id();
    format!("{pid} {}", process_start_time(pid).unwrap_or(0))
}

fn owner_alive(record: &str) -> bool {
    let mut parts = record.split_whitespace();
    let (Some(Ok(pid)), Some(Ok(start))) = (
        parts.next().map(str::parse::<u32>),
        parts.next().map(str::parse::<u64>),
    ) else {
        // Unreadable: err on the side of not deleting.
        return true;
    };
    // A killed owner may linger as a zombie (with its start time) until someone reaps it.
    process_start_time(pid) == Some(start) && process_alive(pid)
}

static DIR_SEQ: AtomicU64 = AtomicU64::new(0);

/// Creates `/tmp/<prefix>-<pid>-<n>`: 0755, owned by the servers' user, with an owner record so that it is
/// reaped if this process dies without cleaning up.
pub fn unique_tmp_dir(prefix: &str) -> Result<PathBuf, ClusterError> {
    unique_tmp_dir_for(host()?, prefix)
}

fn unique_tmp_dir_for(host: &Host, prefix: &str) -> Result<PathBuf, ClusterError> {
    loop {
        let seq = DIR_SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = Path::new(TMP_ROOT).join(format!("{prefix}-{}-{seq}", std::process::id()));
        match fs::create_dir(&dir) {
            // Left over by an earlier process with our pid.
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => continue,
            Err(source) => {
                return Err(ClusterError::Io {
                    context: format!("creating {}", dir.display()),
                    source,
                });
            }
            Ok(()) => {
                open_up(host, &dir)?;
                write_owned(host, &dir.join(OWNER_FILE), &owner_record())?;
                return Ok(dir);
            }
        }
    }
}

/// The servers' user needs to enter the dir (0755; the umask may have made it tighter) and write in it.
fn open_up(host: &Host, dir: &Path) -> Result<(), ClusterError> {
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))
        .map_err(io_error(format!("chmod {}", dir.display())))?;
    host.hand_over(dir)
}

/// A user-given base dir: absolute, empty, reachable by the servers' user.
fn adopt_base_dir(host: &Host, dir: &Path) -> Result<PathBuf, ClusterError> {
    fs::create_dir_all(dir).map_err(io_error(format!("creating {}", dir.display())))?;
    let dir = fs::canonicalize(dir).map_err(io_error(format!("resolving {}", dir.display())))?;
    let entries = fs::read_dir(&dir).map_err(io_error(format!("listing {}", dir.display())))?;
    if entries.flatten().any(|e| e.file_name() != OWNER_FILE) {
        return Err(ClusterError::BadBaseDir {
            path: dir,
            reason: "not empty".to_owned(),
        });
    }
    if let Some(user) = &host.server_user {
        for ancestor in dir.ancestors().skip(1) {
            let meta = fs::metadata(ancestor).map_err(io_error(format!("stat {}", ancestor.display())))?;
            let mode = meta.mode();
            let bit = if meta.uid() == user.uid {
                0o100
            } else if meta.gid() == user.gid {
                0o010
            } else {
                0o001
            };
            if mode & bit == 0 {
                return Err(ClusterError::NotTraversable {
                    path: ancestor.to_owned(),
                    user: user.name.clone(),
                });
            }
        }
    }
    open_up(host, &dir)?;
    write_owned(host, &dir.join(OWNER_FILE), &owner_record())?;
    Ok(dir)
}

/// Stops and deletes what earlier processes left in `/tmp/pgfleet-*` when they died without dropping their
/// cluster (killed test runs): leaked postmasters would otherwise pile up on CI machines.
fn reap_orphans(host: &Host) {
    // Without procfs every owner would look dead, including live ones.
    if process_start_time(std::process::id()).is_none() {
        return;
    }
    let Ok(entries) = fs::read_dir(TMP_ROOT) else {
        return;
    };
    for entry in entries.flatten() {
        let dir = entry.path();
        if !entry.file_name().to_string_lossy().starts_with("pgfleet-") || dir.join(KEEP_FILE).exists() {
            continue;
        }
        let Ok(owner) = fs::read_to_string(dir.join(OWNER_FILE)) else {
            continue;
        };
        if owner_alive(&owner) {
            continue;
        }
        if let Ok(nodes) = fs::read_dir(&dir) {
            for node in nodes.flatten() {
                let data_dir = node.path().join("data");
                if data_dir.join("postmaster.pid").is_file() {
                    teardown_data_dir(host, &data_dir);
                }
            }
        }
        let _ = fs::remove_dir_all(&dir);
    }
}

fn postmaster_pid(data_dir: &Path) -> Option<u32> {
    fs::read_to_string(data_dir.join("postmaster.pid"))
        .ok()?
        .lines()
        .next()?
        .trim()
        .parse()
        .ok()
}

/// Alive and really the postmaster of this data dir (a stale postmaster.pid may name a reused pid).
fn postmaster_running(data_dir: &Path) -> Option<u32> {
    let pid = postmaster_pid(data_dir)?;
    let cmdline = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let needle = data_dir.as_os_str().as_encoded_bytes();
    let ours = cmdline.windows(needle.len()).any(|w| w == needle);
    (ours && process_alive(pid)).then_some(pid)
}

/// Best effort, never fails: immediate shutdown, then SIGKILL for whatever is left.
fn teardown_data_dir(host: &Host, data_dir: &Path) {
    let Some(pid) = postmaster_running(data_dir) else {
        return;
    };
    // A paused (SIGSTOPped) server would ignore the shutdown request until the timeout.
    let mut all = vec![pid];
    all.extend(children_of(pid));
    let _ = send_signal("CONT", &all);
    let _ = pg_ctl_stop(host, data_dir, None, "immediate", TEARDOWN_STOP_TIMEOUT_SECS);
    if postmaster_running(data_dir).is_none() {
        return;
    }
    let mut all = vec![pid];
    all.extend(children_of(pid));
    let _ = send_signal("KILL", &all);
    let deadline = Instant::now() + Duration::from_secs(5);
    while all.iter().any(|p| process_alive(*p)) && Instant::now() < deadline {
        thread::sleep(Duration::from_millis(20));
    }
}

fn pg_ctl_stop(
    host: &Host,
    data_dir: &Path,
    log: Option<&Path>,
    mode: &str,
    timeout_secs: u64,
) -> Result<(), ClusterError> {
    let mut cmd = host.command(host.bin("pg_ctl"), true);
    cmd.arg("stop")
        .arg("-D")
        .arg(data_dir)
        .args(["-m", mode, "-w", "-t", &timeout_secs.to_string()]);
    match run(cmd, log) {
        Ok(_) => Ok(()),
        // Already down (stopped before, or killed): what the caller wanted.
        Err(_) if postmaster_running(data_dir).is_none() => Ok(()),
        Err(e) => Err(e),
    }
}

fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error("binding 127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io_error("reading a bound port"))?
        .port())
}

/// SQL string literal (standard_conforming_strings is on).
fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// SQL identifier, always quoted so that any role or database name works.
fn quote_ident(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

fn conf_string(text: &str) -> String {
    quote_literal(text)
}

/// One PostgreSQL server of a [`LocalCluster`].
#[derive(Debug)]
pub struct NodeHandle {
    /// "primary", "replica1", ...
    pub name: String,
    /// TCP port on 127.0.0.1.
    pub port: u16,
    /// The data directory (`<base>/<name>/data`).
    pub data_dir: PathBuf,
    /// Directory of the unix socket (`<base>/<name>`).
    pub socket_dir: PathBuf,
    /// The server log (`<base>/<name>/server.log`).
    pub log_file: PathBuf,
    host: &'static Host,
}

impl NodeHandle {
    /// Creates `<base>/<name>` and picks a port; starts nothing.
    fn new(host: &'static Host, base_dir: &Path, name: &str) -> Result<NodeHandle, ClusterError> {
        let node_dir = base_dir.join(name);
        let socket_probe = node_dir.join(".s.PGSQL.65535");
        if socket_probe.as_os_str().len() > MAX_SOCKET_PATH {
            return Err(ClusterError::BadBaseDir {
                path: base_dir.to_owned(),
                reason: format!(
                    "unix socket path {} would exceed {MAX_SOCKET_PATH} bytes",
                    socket_probe.display()
                ),
            });
        }
        fs::create_dir(&node_dir).map_err(io_error(format!("creating {}", node_dir.display())))?;
        open_up(host, &node_dir)?;
        Ok(NodeHandle {
            name: name.to_owned(),
            port: free_port()?,
            data_dir: node_dir.join("data"),
            log_file: node_dir.join("server.log"),
            socket_dir: node_dir,
            host,
        })
    }

    /// `"127.0.0.1:PORT"`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// A libpq keyword/value connection string to this node over TCP.
    pub fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "\\'"));
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
            self.port,
            quote(user),
            quote(password),
            quote(db)
        )
    }

    /// The postmaster's pid, from `postmaster.pid` (possibly stale: see [`NodeHandle::is_running`]).
    pub fn pid(&self) -> Option<u32> {
        postmaster_pid(&self.data_dir)
    }

    /// Whether this node's postmaster process is alive.
    pub fn is_running(&self) -> bool {
        postmaster_running(&self.data_dir).is_some()
    }

    /// Starts the stopped server on its port (`pg_ctl start -w`), waiting until it accepts connections.
    pub fn start(&self) -> Result<(), ClusterError> {
        // A killed postmaster leaves its lock files behind, and while its zombie waits to be reaped (init may
        // take seconds) the new server would take that pid for a live postmaster and refuse to start.
        if !self.is_running() {
            let socket_lock = self.socket_dir.join(format!(".s.PGSQL.{}.lock", self.port));
            for lock in [self.data_dir.join("postmaster.pid"), socket_lock] {
                match fs::remove_file(&lock) {
                    Err(e) if e.kind() != io::ErrorKind::NotFound => {
                        return Err(ClusterError::Io {
                            context: format!("removing stale {}", lock.display()),
                            source: e,
                        });
                    }
                    _ => {}
                }
            }
        }
        let mut cmd = self.host.command(self.host.bin("pg_ctl"), true);
        cmd.arg("start")
            .arg("-D")
            .arg(&self.data_dir)
            .arg("-l")
            .arg(&self.log_file)
            .args(["-w", "-t", &START_TIMEOUT_SECS.to_string()]);
        run(cmd, Some(&self.log_file)).map(drop)
    }

    /// Fast shutdown (clients disconnected, clean checkpoint). Ok if already down.
    pub fn stop(&self) -> Result<(), ClusterError> {
        pg_ctl_stop(
            self.host,
            &self.data_dir,
            Some(&self.log_file),
            "fast",
            STOP_TIMEOUT_SECS,
        )
    }

    /// Immediate shutdown, the nearest to a crash `pg_ctl` offers. Ok if already down.
    pub fn stop_immediate(&self) -> Result<(), ClusterError> {
        pg_ctl_stop(
            self.host,
            &self.data_dir,
            Some(&self.log_file),
            "immediate",
            STOP_TIMEOUT_SECS,
        )
    }

    /// Promotes a standby (`pg_ctl promote -w`), returning once it accepts writes.
    pub fn promote(&self) -> Result<(), ClusterError> {
        let mut cmd = self.host.command(self.host.bin("pg_ctl"), true);
        cmd.arg("promote")
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-w", "-t", &START_TIMEOUT_SECS.to_string()]);
        run(cmd, Some(&self.log_file)).map(drop)
    }

    fn running_pid(&self) -> Result<u32, ClusterError> {
        postmaster_running(&self.data_dir).ok_or_else(|| ClusterError::Command {
            command: format!("signal node {}", self.name),
            status: "not running".to_owned(),
            output: String::new(),
            log_tail: self.log_tail(),
        })
    }

    /// Freezes the postmaster and every backend (SIGSTOP): a hung host rather than a dead one. Connections
    /// are still accepted by the kernel but never answered. [`NodeHandle::resume`] before stopping it (drop
    /// does that itself).
    pub fn pause(&self) -> Result<(), ClusterError> {
        let pid = self.running_pid()?;
        // Postmaster first, so that it forks no new backend we would miss.
        send_signal("STOP", &[pid])?;
        send_signal("STOP", &children_of(pid))
    }

    /// Undoes [`NodeHandle::pause`].
    pub fn resume(&self) -> Result<(), ClusterError> {
        let pid = self.running_pid()?;
        send_signal("CONT", &children_of(pid))?;
        send_signal("CONT", &[pid])
    }

    /// SIGKILLs the postmaster and every backend at once, like a host dying, and waits until they are gone
    /// (so that a following [`NodeHandle::start`] finds no leftover process holding shared memory). The next
    /// start runs crash recovery.
    pub fn kill(&self) -> Result<(), ClusterError> {
        let pid = self.running_pid()?;
        let mut all = vec![pid];
        all.extend(children_of(pid));
        send_signal("KILL", &all)?;
        let deadline = Instant::now() + Duration::from_secs(5);
        while all.iter().any(|p| process_alive(*p)) && Instant::now() < deadline {
            thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }

    /// Runs `sql` with `psql -X -At` as the superuser over this node's unix socket; returns stdout trimmed.
    /// Several statements in one string run in one implicit transaction.
    pub fn psql(&self, db: &str, sql: &str) -> Result<String, ClusterError> {
        self.psql_commands(db, &[sql])
    }

    /// Each command runs separately (psql's repeated `-c`), so CREATE DATABASE may be among them. Stops at the
    /// first error.
    fn psql_commands(&self, db: &str, sqls: &[&str]) -> Result<String, ClusterError> {
        let mut cmd = self.host.command(self.host.bin("psql"), false);
        cmd.args(["-X", "-A", "-t", "-q", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.socket_dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db])
            .env("PGCONNECT_TIMEOUT", "10");
        for sql in sqls {
            cmd.arg("-c").arg(sql);
        }
        run(cmd, None)
    }

    /// The last lines of the server log.
    pub fn log_tail(&self) -> String {
        tail_lines(&self.log_file, LOG_TAIL_LINES)
    }

    /// The whole server log.
    pub fn log_contents(&self) -> String {
        fs::read_to_string(&self.log_file).unwrap_or_default()
    }

    fn write_node_conf(&self) -> Result<(), ClusterError> {
        let mut text = format!(
            "# rewritten by pgfleet's localcluster\nport = {}\nunix_socket_directories = {}\n",
            self.port,
            conf_string(&self.socket_dir.to_string_lossy())
        );
        let (cert, key) = self.tls_files();
        if cert.is_file() && key.is_file() {
            text.push_str(&format!(
                "ssl = on\nssl_cert_file = {}\nssl_key_file = {}\n",
                conf_string(&cert.to_string_lossy()),
                conf_string(&key.to_string_lossy())
            ));
        }
        write_owned(self.host, &self.data_dir.join(NODE_CONF), &text)
    }

    fn tls_files(&self) -> (PathBuf, PathBuf) {
        (
            self.socket_dir.join(TLS_CERT_FILE),
            self.socket_dir.join(TLS_KEY_FILE),
        )
    }

    /// Gives this node a TLS certificate and key (replacing any earlier ones). A running server uses them
    /// from its next start ([`NodeHandle::stop`] then [`NodeHandle::start`]); `tls.tls_only` is applied when
    /// the cluster is created, not here.
    pub fn set_tls(&self, tls: &ServerTls) -> Result<(), ClusterError> {
        let (cert, key) = self.tls_files();
        write_owned(self.host, &cert, &tls.cert_pem)?;
        write_owned(self.host, &key, &tls.key_pem)?;
        // PostgreSQL refuses a key its owner's group or others may read.
        fs::set_permissions(&key, fs::Permissions::from_mode(0o600))
            .map_err(io_error(format!("chmod {}", key.display())))?;
        if self.data_dir.join(NODE_CONF).is_file() {
            self.write_node_conf()?;
        }
        Ok(())
    }

    /// Puts [`HBA_TLS_ONLY`] first in this node's `pg_hba.conf`.
    fn refuse_plain_tcp(&self) -> Result<(), ClusterError> {
        let hba = self.data_dir.join("pg_hba.conf");
        let text = fs::read_to_string(&hba).map_err(io_error(format!("reading {}", hba.display())))?;
        fs::write(&hba, format!("{HBA_TLS_ONLY}{text}"))
            .map_err(io_error(format!("writing {}", hba.display())))
    }

    /// What a node copied from the template needs before its first start: extra settings, TLS-only access.
    fn prepare_copy(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        self.copy_template(&opts.extra_conf)?;
        if opts.tls.as_ref().is_some_and(|t| t.tls_only) {
            self.refuse_plain_tcp()?;
        }
        Ok(())
    }

    fn copy_template(&self, extra_conf: &[String]) -> Result<(), ClusterError> {
        let mut cp = self.host.command("cp", true);
        cp.arg("-a")
            .arg(self.host.template.join("data"))
            .arg(&self.data_dir);
        run(cp, None)?;
        append_extra_conf(&self.data_dir, extra_conf)
    }

    fn base_backup(&self, primary_port: u16, password: &str) -> Result<(), ClusterError> {
        let mut cmd = self.host.command(self.host.bin("pg_basebackup"), true);
        cmd.args([
            "-h",
            "127.0.0.1",
            "-p",
            &primary_port.to_string(),
            "-U",
            SUPERUSER,
            "-D",
        ])
        .arg(&self.data_dir)
        .args(["-R", "-X", "stream", "--checkpoint=fast", "--no-sync"])
        // Through the environment, so the password stays out of error messages; -R still writes it
        // into primary_conninfo, which the standby needs.
        .env("PGPASSWORD", password);
        run(cmd, None).map(drop)
    }

    /// First start: another process may grab our port between probing and binding, so retry on a new one.
    fn start_choosing_port(&mut self) -> Result<(), ClusterError> {
        let mut attempt = 1;
        loop {
            self.write_node_conf()?;
            let log_offset = fs::metadata(&self.log_file).map(|m| m.len()).unwrap_or(0);
            match self.start() {
                Ok(()) => return Ok(()),
                Err(_) if attempt < PORT_ATTEMPTS && self.port_was_taken(log_offset) => {
                    attempt += 1;
                    self.port = free_port()?;
                }
                Err(e) => return Err(e),
            }
        }
    }

    fn port_was_taken(&self, log_offset: u64) -> bool {
        let mut text = String::new();
        if let Ok(mut file) = fs::File::open(&self.log_file)
            && file.seek(SeekFrom::Start(log_offset)).is_ok()
        {
            let _ = file.read_to_string(&mut text);
        }
        [
            "could not bind",
            "Address already in use",
            "could not create any TCP/IP sockets",
        ]
        .iter()
        .any(|needle| text.contains(needle))
    }

    fn bootstrap_roles(
        &self,
        password: &str,
        app_user: &str,
        app_database: &str,
    ) -> Result<(), ClusterError> {
        let mut sqls = vec![format!(
            "ALTER ROLE {} PASSWORD {}",
            quote_ident(SUPERUSER),
            quote_literal(password)
        )];
        if app_user != SUPERUSER {
            sqls.push(format!(
                "CREATE ROLE {} LOGIN CREATEDB PASSWORD {}",
                quote_ident(app_user),
                quote_literal(password)
            ));
        }
        if !["postgres", "template0", "template1"].contains(&app_database) {
            sqls.push(format!(
                "CREATE DATABASE {} OWNER {}",
                quote_ident(app_database),
                quote_ident(app_user)
            ));
        }
        let sqls: Vec<&str> = sqls.iter().map(String::as_str).collect();
        self.psql_commands("postgres", &sqls).map(drop)
    }

    fn teardown(&self) {
        teardown_data_dir(self.host, &self.data_dir);
    }
}

fn append_extra_conf(data_dir: &Path, extra_conf: &[String]) -> Result<(), ClusterError> {
    if extra_conf.is_empty() {
        return Ok(());
    }
    let mut text = String::from("\n# ---- ClusterOptions::extra_conf ----\n");
    for line in extra_conf {
        text.push_str(line);
        text.push('\n');
    }
    append(&data_dir.join("postgresql.conf"), &text)
}

/// A primary and its replicas on 127.0.0.1, stopped and deleted on drop.
#[derive(Debug)]
pub struct LocalCluster {
    /// The read-write node.
    pub primary: NodeHandle,
    /// Standbys of the primary (streaming) or independent servers, named replica1, replica2, ...
    pub replicas: Vec<NodeHandle>,
    /// Superuser role name (`postgres`); its password is [`LocalCluster::password`].
    pub superuser: String,
    /// Password of both the superuser and the app user.
    pub password: String,
    /// The app's LOGIN role.
    pub app_user: String,
    /// The app's database, owned by `app_user`.
    pub app_database: String,
    /// Whether replicas stream from the primary.
    pub streaming: bool,
    /// Holds one directory per node; removed on drop.
    pub base_dir: PathBuf,
}

impl LocalCluster {
    /// Starts a primary and `opts.replicas` replicas and returns once every node accepts connections, the
    /// roles and app database exist and (streaming) every replica has replayed the primary's WAL.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let host = host()?;
        let base_dir = match &opts.base_dir {
            Some(dir) => adopt_base_dir(host, dir)?,
            None => unique_tmp_dir_for(host, "pgfleet-cluster")?,
        };
        let primary = match NodeHandle::new(host, &base_dir, "primary") {
            Ok(node) => node,
            Err(e) => {
                let _ = fs::remove_dir_all(&base_dir);
                return Err(e);
            }
        };
        // From here on an early return drops `cluster`, which stops what was started and removes base_dir.
        let mut cluster = LocalCluster {
            primary,
            replicas: Vec::new(),
            superuser: SUPERUSER.to_owned(),
            password: opts.password.clone(),
            app_user: opts.app_user.clone(),
            app_database: opts.app_database.clone(),
            streaming: opts.streaming,
            base_dir,
        };
        if let Some(tls) = &opts.tls {
            cluster.primary.set_tls(tls)?;
        }
        cluster.primary.prepare_copy(&opts)?;
        cluster.primary.start_choosing_port()?;
        cluster
            .primary
            .bootstrap_roles(&opts.password, &opts.app_user, &opts.app_database)?;

        let primary_port = cluster.primary.port;
        let base_dir = cluster.base_dir.clone();
        let outcomes: Vec<(Option<NodeHandle>, Result<(), ClusterError>)> = thread::scope(|scope| {
            let workers: Vec<_> = (1..=opts.replicas)
                .map(|i| {
                    let (opts, base_dir) = (&opts, &base_dir);
                    scope.spawn(move || {
                        build_replica(host, base_dir, &format!("replica{i}"), primary_port, opts)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        (
                            None,
                            Err(ClusterError::ThreadPanicked("starting a replica".into())),
                        )
                    })
                })
                .collect()
        });
        let mut first_error = None;
        for (node, outcome) in outcomes {
            cluster.replicas.extend(node);
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if cluster.streaming {
            cluster.wait_replicas_caught_up(CATCH_UP_AT_START)?;
        }
        Ok(cluster)
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeHandle> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The node with that name.
    pub fn node(&self, name: &str) -> Option<&NodeHandle> {
        self.nodes().find(|n| n.name == name)
    }

    /// Runs `sql` as the superuser on `node` (`psql -X -At`); returns stdout trimmed.
    pub fn psql(&self, node: &NodeHandle, db: &str, sql: &str) -> Result<String, ClusterError> {
        node.psql(db, sql)
    }

    /// Waits until every replica has replayed the primary's current WAL position. No-op for independent
    /// (non-streaming) nodes. Every replica must be a running standby of `self.primary`; after a failover use
    /// [`LocalCluster::wait_caught_up`].
    pub fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<(), ClusterError> {
        if !self.streaming {
            return Ok(());
        }
        let standbys: Vec<&NodeHandle> = self.replicas.iter().collect();
        Self::wait_caught_up(&self.primary, &standbys, timeout)
    }

    /// Waits until each of `standbys` has replayed `primary`'s current WAL position.
    pub fn wait_caught_up(
        primary: &NodeHandle,
        standbys: &[&NodeHandle],
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let target = primary.psql("postgres", "SELECT pg_current_wal_lsn()")?;
        let check = format!(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= {}::pg_lsn, false)",
            quote_literal(&target)
        );
        for standby in standbys {
            loop {
                let last = standby.psql("postgres", &check);
                if matches!(&last, Ok(answer) if answer == "t") {
                    break;
                }
                if Instant::now() >= deadline {
                    let at = standby
                        .psql("postgres", "SELECT pg_last_wal_replay_lsn()")
                        .unwrap_or_else(|e| e.to_string());
                    return Err(ClusterError::Timeout {
                        what: format!(
                            "{} to replay WAL up to {target} of {} (replayed: {at}; server log tail:\n{})",
                            standby.name,
                            primary.name,
                            standby.log_tail()
                        ),
                        waited: timeout,
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stops every server (immediate shutdown, then SIGKILL for survivors), in parallel. Idempotent.
    pub fn stop_all(&mut self) {
        thread::scope(|scope| {
            for node in self.nodes() {
                scope.spawn(move || node.teardown());
            }
        });
    }
}

fn build_replica(
    host: &'static Host,
    base_dir: &Path,
    name: &str,
    primary_port: u16,
    opts: &ClusterOptions,
) -> (Option<NodeHandle>, Result<(), ClusterError>) {
    let mut node = match NodeHandle::new(host, base_dir, name) {
        Ok(node) => node,
        Err(e) => return (None, Err(e)),
    };
    let outcome = (|| {
        if let Some(tls) = &opts.tls {
            node.set_tls(tls)?;
        }
        if opts.streaming {
            // The primary's pg_hba.conf (TLS-only or not) comes along.
            node.base_backup(primary_port, &opts.password)?;
        } else {
            node.prepare_copy(opts)?;
        }
        node.start_choosing_port()?;
        if !opts.streaming {
            node.bootstrap_roles(&opts.password, &opts.app_user, &opts.app_database)?;
        }
        Ok(())
    })();
    (Some(node), outcome)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
        if std::env::var("PGFLEET_KEEP_CLUSTER").is_ok_and(|v| v == "1") {
            let _ = fs::write(self.base_dir.join(KEEP_FILE), "");
            eprintln!("PGFLEET_KEEP_CLUSTER=1: keeping {}", self.base_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.base_dir);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
