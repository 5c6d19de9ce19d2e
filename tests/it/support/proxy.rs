//! Launching the real `pgfleet` binary for integration tests: writing its config for a [`LocalCluster`],
//! spawning it with `--config`, waiting until it listens, capturing its output in a log file, and killing it
//! on drop. Also the client-side helpers (DSNs, URLs, tokio-postgres connections) tests use against it.

use std::fs::{self, File};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use localcluster::LocalCluster;

/// How long pgfleet may take to accept TCP connections after being spawned.
const READY_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a SIGTERMed pgfleet may take to exit before it is SIGKILLed.
const TERM_GRACE: Duration = Duration::from_secs(5);
/// Another process may take the port between our probe and pgfleet's bind.
const BIND_ATTEMPTS: usize = 3;

/// A running pgfleet process.
pub(crate) struct Proxy {
    /// The port pgfleet listens on (127.0.0.1).
    pub port: u16,
    /// The config file it was started with (writable: edit it and [`Proxy::reload`]).
    pub config_path: PathBuf,
    /// pgfleet's stdout and stderr.
    pub log_path: PathBuf,
    child: Child,
    dir: Option<tempfile::TempDir>,
}

/// A TCP port on 127.0.0.1 that was free a moment ago.
pub(crate) fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind 127.0.0.1:0");
    listener.local_addr().expect("local_addr").port()
}

struct LaunchFailure {
    message: String,
    port_taken: bool,
}

impl Proxy {
    /// The config [`Proxy::start`] uses: listen on `port`, user app with the cluster's password, the primary
    /// and every replica as nodes, round-robin routing unless `extra_toml` has its own `[routing]` table.
    /// `extra_toml` is appended verbatim: make it whole tables (`[pool]`, `[[users]]`, `[routing]`...), since
    /// bare keys would land in the table before them; to change `[listen]`, edit this text and use
    /// [`Proxy::start_with_config`].
    pub(crate) fn config_for(cluster: &LocalCluster, port: u16, extra_toml: &str) -> String {
        let mut text = format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
            cluster.app_user, cluster.password
        );
        text.push_str(&format!(
            "\n[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"primary\"\n",
            cluster.primary.name,
            cluster.primary.address()
        ));
        for replica in &cluster.replicas {
            text.push_str(&format!(
                "\n[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"replica\"\n",
                replica.name,
                replica.address()
            ));
        }
        // Per-statement balancing unless a suite says otherwise: the suites check that one session's reads
        // reach every replica. The default (session affinity) is what replica_affinity.rs runs.
        let statement_affinity = if extra_toml.contains("replica_affinity") {
            ""
        } else {
            "replica_affinity = \"statement\"\n"
        };
        if !extra_toml.lines().any(|line| line.trim() == "[routing]") {
            text.push_str(&format!(
                "\n[routing]\nload_balance = \"round_robin\"\n{statement_affinity}"
            ));
        }
        // PGFLEET_TEST_POOL_MODE runs a whole suite under another pool mode ("transaction").
        let mut extra = extra_toml.replacen("[routing]\n", &format!("[routing]\n{statement_affinity}"), 1);
        if let Ok(mode) = std::env::var("PGFLEET_TEST_POOL_MODE")
            && !mode.is_empty()
            && !extra.contains("mode = \"")
        {
            if extra.contains("[pool]") {
                extra = extra.replacen("[pool]", &format!("[pool]\nmode = \"{mode}\""), 1);
            } else {
                extra.push_str(&format!("\n[pool]\nmode = \"{mode}\"\n"));
            }
        }
        if !extra.trim().is_empty() {
            text.push('\n');
            text.push_str(&extra);
            text.push('\n');
        }
        text
    }

    /// Starts pgfleet in front of `cluster` (see [`Proxy::config_for`]) on a free port and waits until it
    /// accepts TCP connections. Panics with pgfleet's output if it exits or does not listen within 10 s.
    pub(crate) fn start(cluster: &LocalCluster, extra_toml: &str) -> Proxy {
        Self::start_edited(cluster, extra_toml, |text| text)
    }

    /// [`Proxy::start`] with the config text passed through `edit` first, for changes inside `[listen]` or
    /// the `[[nodes]]` tables that `extra_toml` cannot make.
    pub(crate) fn start_edited(
        cluster: &LocalCluster,
        extra_toml: &str,
        edit: impl Fn(String) -> String,
    ) -> Proxy {
        Self::start_with_env(cluster, extra_toml, edit, &[])
    }

    /// [`Proxy::start_edited`] with these variables added to pgfleet's environment (which its child
    /// processes, such as pg_dump, inherit).
    pub(crate) fn start_with_env(
        cluster: &LocalCluster,
        extra_toml: &str,
        edit: impl Fn(String) -> String,
        env: &[(&str, &str)],
    ) -> Proxy {
        let mut attempt = 1;
        loop {
            let port = free_port();
            match Self::launch(edit(Self::config_for(cluster, port, extra_toml)), port, env) {
                Ok(proxy) => return proxy,
                Err(failure) if failure.port_taken && attempt < BIND_ATTEMPTS => attempt += 1,
                Err(failure) => panic!("{}", failure.message),
            }
        }
    }

    /// Starts pgfleet with exactly this config; the port waited on is the one in `[listen] address`.
    pub(crate) fn start_with_config(text: String) -> Proxy {
        Self::start_with_config_env(text, &[])
    }

    /// [`Proxy::start_with_config`] with these variables added to pgfleet's environment.
    pub(crate) fn start_with_config_env(text: String, env: &[(&str, &str)]) -> Proxy {
        let port = listen_port(&text)
            .unwrap_or_else(|| panic!("no `address = \"host:port\"` under [listen] in config:\n{text}"));
        Self::launch(text, port, env).unwrap_or_else(|failure| panic!("{}", failure.message))
    }

    fn launch(text: String, port: u16, env: &[(&str, &str)]) -> Result<Proxy, LaunchFailure> {
        let dir = tempfile::Builder::new()
            .prefix("pgfleet-proxy-")
            .tempdir()
            .expect("create proxy temp dir");
        let config_path = dir.path().join("pgfleet.toml");
        let log_path = dir.path().join("pgfleet.log");
        fs::write(&config_path, &text).expect("write proxy config");
        let log = File::create(&log_path).expect("create proxy log");
        let child = Command::new(env!("CARGO_BIN_EXE_pgfleet"))
            .arg("--config")
            .arg(&config_path)
            // Plain text, so that tests can search the log for `key=value` pairs.
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("clone log handle"))
            .stderr(log)
            .spawn()
            .expect("spawn the pgfleet binary");
        let mut proxy = Proxy {
            port,
            config_path,
            log_path,
            child,
            dir: Some(dir),
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        let address = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        loop {
            if let Ok(Some(status)) = proxy.child.try_wait() {
                let log = proxy.log_contents();
                let port_taken = log.contains("in use");
                return Err(LaunchFailure {
                    message: format!(
                        "pgfleet exited ({status}) before listening on {address}; config:\n{text}\n--- log ---\n{log}"
                    ),
                    port_taken,
                });
            }
            if TcpStream::connect_timeout(&address, Duration::from_millis(200)).is_ok() {
                return Ok(proxy);
            }
            if Instant::now() >= deadline {
                return Err(LaunchFailure {
                    message: format!(
                        "pgfleet did not listen on {address} within {READY_TIMEOUT:?}; config:\n{text}\n--- log tail ---\n{}",
                        proxy.log_tail(60)
                    ),
                    port_taken: false,
                });
            }
            std::thread::sleep(Duration::from_millis(25));
        }
    }

    /// The process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Sends a signal by name (`"HUP"`, `"INT"`, `"TERM"`, `"STOP"`...).
    pub(crate) fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args(["-s", signal, &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill -s {signal} {} failed", self.child.id());
    }

    /// SIGHUP: pgfleet re-reads [`Proxy::config_path`].
    pub(crate) fn reload(&self) {
        self.signal("HUP");
    }

    /// Whether the process is still running.
    pub(crate) fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends `signal` and waits up to `timeout` for the process to exit; `None` if it is still running.
    pub(crate) fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> Option<ExitStatus> {
        if let Ok(Some(status)) = self.child.try_wait() {
            return Some(status);
        }
        self.signal(signal);
        let deadline = Instant::now() + timeout;
        loop {
            if let Ok(Some(status)) = self.child.try_wait() {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Everything pgfleet wrote to stdout and stderr so far.
    pub(crate) fn log_contents(&self) -> String {
        fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// The last `lines` lines of pgfleet's output.
    pub(crate) fn log_tail(&self, lines: usize) -> String {
        let text = self.log_contents();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Waits until pgfleet's output contains `needle`; false on timeout.
    pub(crate) fn wait_for_log(&self, needle: &str, timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        loop {
            if self.log_contents().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// A keyword/value DSN to the proxy.
    pub(crate) fn dsn(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={} password={} dbname={} sslmode=disable",
            self.port,
            dsn_value(user),
            dsn_value(password),
            dsn_value(db)
        )
    }

    /// A `postgresql://` URL to the proxy.
    pub(crate) fn url(&self, user: &str, password: &str, db: &str) -> String {
        format!(
            "postgresql://{}:{}@127.0.0.1:{}/{}?sslmode=disable",
            percent_encode(user),
            percent_encode(password),
            self.port,
            percent_encode(db)
        )
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        if self.signal_and_wait("TERM", TERM_GRACE).is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::env::var("PGFLEET_KEEP_CLUSTER").is_ok_and(|v| v == "1")
            && let Some(dir) = self.dir.take()
        {
            eprintln!(
                "PGFLEET_KEEP_CLUSTER=1: keeping pgfleet config and log in {}",
                dir.keep().display()
            );
        }
    }
}

/// The port of the first `address = "host:port"` inside `[listen]`.
fn listen_port(text: &str) -> Option<u16> {
    let mut in_listen = false;
    for line in text.lines().map(str::trim) {
        if line.starts_with('[') {
            in_listen = line == "[listen]";
        } else if in_listen
            && let Some((key, value)) = line.split_once('=')
            && key.trim() == "address"
        {
            return value.trim().trim_matches('"').rsplit_once(':')?.1.parse().ok();
        }
    }
    None
}

/// A libpq keyword/value: always single-quoted, with `\` and `'` escaped.
fn dsn_value(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
fn percent_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Connects with tokio-postgres (no TLS) and drives the connection on a spawned task; panics on failure.
pub(crate) async fn connect(dsn: &str) -> tokio_postgres::Client {
    match try_connect(dsn).await {
        Ok(client) => client,
        Err(e) => panic!("connecting to `{dsn}` failed: {e}"),
    }
}

/// [`connect`] that returns the error, for tests expecting a refusal.
pub(crate) async fn try_connect(dsn: &str) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls).await?;
    tokio::spawn(async move {
        if let Err(e) = connection.await {
            eprintln!("tokio-postgres connection ended with an error: {e}");
        }
    });
    Ok(client)
}

/// A row of a simple query's answer as column name → value (NULL is None): how the tests read the admin
/// console's SHOW commands.
pub(crate) type Row = std::collections::HashMap<String, Option<String>>;

/// The rows of a simple query (an admin console command) as [`Row`]s.
pub(crate) async fn show(c: &tokio_postgres::Client, command: &str) -> Vec<Row> {
    let messages = c
        .simple_query(command)
        .await
        .unwrap_or_else(|e| panic!("{command}: {e}"));
    messages
        .into_iter()
        .filter_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, col)| (col.name().to_owned(), r.get(i).map(str::to_owned)))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// A column of a [`Row`] that must be present and not NULL.
pub(crate) fn text<'a>(row: &'a Row, column: &str) -> &'a str {
    match row.get(column) {
        Some(Some(v)) => v,
        Some(None) => panic!("column {column} is NULL in {row:?}"),
        None => panic!("no column {column} in {row:?}"),
    }
}

/// First value of the first row of a simple query (simple protocol: no prepared statement of its own).
pub(crate) async fn one(c: &tokio_postgres::Client, sql: &str) -> String {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    rows.iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

/// [`connect`] that also hands over the notifications (LISTEN/NOTIFY) the server sends on this connection.
pub(crate) async fn connect_listening(
    dsn: &str,
) -> (
    tokio_postgres::Client,
    tokio::sync::mpsc::UnboundedReceiver<tokio_postgres::Notification>,
) {
    use futures_util::StreamExt;
    let (client, mut connection) = tokio_postgres::connect(dsn, tokio_postgres::NoTls)
        .await
        .unwrap_or_else(|e| panic!("connecting to `{dsn}` failed: {e}"));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(tokio_postgres::AsyncMessage::Notification(n)) => {
                    let _ = tx.send(n);
                }
                Ok(_) => {}
                Err(e) => {
                    eprintln!("tokio-postgres connection ended with an error: {e}");
                    break;
                }
            }
        }
    });
    (client, rx)
}
