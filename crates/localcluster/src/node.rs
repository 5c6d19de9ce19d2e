//! One PostgreSQL server ([`NodeHandle`]): its data dir, configuration and TLS files, start/stop/signals,
//! psql, and quoting for SQL and `postgresql.conf`.

use std::fs;
use std::io::{self, Read as _, Seek as _, SeekFrom};
use std::net::{Ipv4Addr, TcpListener};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::dirs::{
    append, open_up, pg_ctl_stop, postmaster_pid, postmaster_running, teardown_data_dir, write_owned,
};
use crate::process::{Host, children_of, process_alive, run, send_signal, tail_lines};
use crate::{
    ClusterError, ClusterOptions, HBA_TLS_ONLY, LOG_TAIL_LINES, MAX_SOCKET_PATH, NODE_CONF, PORT_ATTEMPTS,
    START_TIMEOUT_SECS, STOP_TIMEOUT_SECS, SUPERUSER, ServerTls, TLS_CERT_FILE, TLS_KEY_FILE, io_error,
};

pub(crate) fn free_port() -> Result<u16, ClusterError> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(io_error("binding 127.0.0.1:0"))?;
    Ok(listener
        .local_addr()
        .map_err(io_error("reading a bound port"))?
        .port())
}

/// SQL string literal (standard_conforming_strings is on).
pub(crate) fn quote_literal(text: &str) -> String {
    format!("'{}'", text.replace('\'', "''"))
}

/// SQL identifier, always quoted so that any role or database name works.
pub(crate) fn quote_ident(text: &str) -> String {
    format!("\"{}\"", text.replace('"', "\"\""))
}

pub(crate) fn conf_string(text: &str) -> String {
    quote_literal(text)
}

/// One PostgreSQL server of a [`LocalCluster`](crate::LocalCluster).
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
    pub(crate) host: &'static Host,
}

impl NodeHandle {
    /// Creates `<base>/<name>` and picks a port; starts nothing.
    pub(crate) fn new(host: &'static Host, base_dir: &Path, name: &str) -> Result<NodeHandle, ClusterError> {
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

    /// `"<socket dir>:PORT"`: the node's Unix-domain socket, written as pgfleet's node addresses (and libpq's
    /// `host`/`port`) name one.
    pub fn socket_address(&self) -> String {
        format!("{}:{}", self.socket_dir.display(), self.port)
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

    pub(crate) fn running_pid(&self) -> Result<u32, ClusterError> {
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
    pub(crate) fn psql_commands(&self, db: &str, sqls: &[&str]) -> Result<String, ClusterError> {
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

    pub(crate) fn write_node_conf(&self) -> Result<(), ClusterError> {
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

    pub(crate) fn tls_files(&self) -> (PathBuf, PathBuf) {
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
    pub(crate) fn refuse_plain_tcp(&self) -> Result<(), ClusterError> {
        let hba = self.data_dir.join("pg_hba.conf");
        let text = fs::read_to_string(&hba).map_err(io_error(format!("reading {}", hba.display())))?;
        fs::write(&hba, format!("{HBA_TLS_ONLY}{text}"))
            .map_err(io_error(format!("writing {}", hba.display())))
    }

    /// What a node copied from the template needs before its first start: extra settings, TLS-only access.
    pub(crate) fn prepare_copy(&self, opts: &ClusterOptions) -> Result<(), ClusterError> {
        self.copy_template(&opts.extra_conf)?;
        if opts.tls.as_ref().is_some_and(|t| t.tls_only) {
            self.refuse_plain_tcp()?;
        }
        Ok(())
    }

    pub(crate) fn copy_template(&self, extra_conf: &[String]) -> Result<(), ClusterError> {
        let mut cp = self.host.command("cp", true);
        cp.arg("-a")
            .arg(self.host.template.join("data"))
            .arg(&self.data_dir);
        run(cp, None)?;
        append_extra_conf(&self.data_dir, extra_conf)
    }

    pub(crate) fn base_backup(&self, primary_port: u16, password: &str) -> Result<(), ClusterError> {
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
    pub(crate) fn start_choosing_port(&mut self) -> Result<(), ClusterError> {
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

    pub(crate) fn port_was_taken(&self, log_offset: u64) -> bool {
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

    pub(crate) fn bootstrap_roles(
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

    pub(crate) fn teardown(&self) {
        teardown_data_dir(self.host, &self.data_dir);
    }
}

pub(crate) fn append_extra_conf(data_dir: &Path, extra_conf: &[String]) -> Result<(), ClusterError> {
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
