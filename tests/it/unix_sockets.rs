//! Unix-domain sockets on both sides of pgfleet. Nodes reached through theirs (`address = "/socket/dir:port"`,
//! as libpq's `host` and `port` name one) instead of TCP: routing, read-your-writes, a forwarded cancel, the
//! console and forward mode, on a real fleet whose servers listen on both; a server reached over its socket
//! reports no `inet_server_addr()`, which is how each check tells that the socket, not TCP, carried the
//! statement. Clients connecting through pgfleet's own (`listen.unix_socket_dir`): drivers, psql, a cancel,
//! the one-byte answer to an SSLRequest, SHOW CLIENTS, and the socket file's life.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use localcluster::LocalCluster;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::forward::{
    assert_rows, forward_toml, plain_cluster, wait_until_replicas_match, wait_until_streaming,
};
use crate::support::proxy::{Proxy, connect, one, show, text};
use crate::support::wait::wait_until;

const ADMIN_TOML: &str = "[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n";

/// The config with every node's TCP address replaced by its socket directory and port.
fn on_sockets(cluster: &LocalCluster) -> impl Fn(String) -> String + '_ {
    move |mut text| {
        for node in cluster.nodes() {
            let tcp = format!("address = \"{}\"", node.address());
            assert!(text.contains(&tcp), "no {tcp} in the config:\n{text}");
            text = text.replace(&tcp, &format!("address = \"{}\"", node.socket_address()));
        }
        text
    }
}

/// The port of the server that ran `sql` (its first column is `current_setting('port')`) and whether it
/// ran on a connection without an IP address (a Unix-domain socket), from one row of a simple query.
async fn where_ran(c: &tokio_postgres::Client, sql: &str) -> (u16, bool, Vec<String>) {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    let row = rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"));
    let values: Vec<String> = (0..row.len())
        .map(|i| row.get(i).unwrap_or("NULL").to_owned())
        .collect();
    let port = values[0].parse().expect("port");
    (port, values[1] == "t", values[2..].to_vec())
}

/// `SELECT pg_sleep(30)` on `c`, in a task of its own, to be cancelled.
fn sleep_30(c: &Arc<tokio_postgres::Client>) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let c = c.clone();
    tokio::spawn(async move { c.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) })
}

/// Asserts that a cancelled statement's task ends well before the statement would, with 57014.
async fn assert_canceled(task: tokio::task::JoinHandle<Result<(), tokio_postgres::Error>>, what: &str) {
    let err = tokio::time::timeout(Duration::from_secs(10), task)
        .await
        .unwrap_or_else(|_| panic!("the cancelled {what} ends long before its 30 s"))
        .expect("statement task")
        .expect_err("the cancelled statement fails");
    let code = err.as_db_error().map(|d| d.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{what}: {err}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nodes_on_unix_sockets_serve_writes_reads_cancels_and_the_console() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start_edited(&cluster, ADMIN_TOML, on_sockets(&cluster));
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;

    c.batch_execute("CREATE TABLE sock (id int PRIMARY KEY)")
        .await
        .expect("create");
    let (port, local, _) = where_ran(
        &c,
        "INSERT INTO sock VALUES (1) RETURNING current_setting('port'), inet_server_addr() IS NULL",
    )
    .await;
    assert_eq!(port, primary, "the write ran on the primary");
    assert!(local, "the write reached the primary over its socket");
    // Each read sees the row just written (the replicas' positions are asked over their sockets too) and
    // runs on a replica, both replicas in turn.
    let mut seen = HashSet::new();
    for _ in 0..6 {
        let (port, local, rest) = where_ran(
            &c,
            "SELECT current_setting('port'), inet_server_addr() IS NULL, count(*) FROM sock",
        )
        .await;
        assert!(replicas.contains(&port), "read served by {port}, not a replica");
        assert!(local, "the read reached {port} over its socket");
        assert_eq!(rest, ["1"], "the read on {port} sees the committed row");
        seen.insert(port);
    }
    assert_eq!(seen, replicas, "round robin uses both replicas");

    // A cancel goes to the node over its socket too: the read sleeping on a replica ends with 57014 at once.
    let token = c.cancel_token();
    let c = Arc::new(c);
    let read = sleep_30(&c);
    let sleeping =
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'";
    let active = wait_until(Duration::from_secs(10), async || {
        cluster
            .replicas
            .iter()
            .any(|r| tokio::task::block_in_place(|| r.psql(APP_DB, sleeping)).is_ok_and(|n| n.trim() == "1"))
    })
    .await;
    assert!(active.is_some(), "the read never ran on a replica");
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
    assert_canceled(read, "read").await;
    assert_eq!(one(&c, "SELECT count(*) FROM sock").await, "1");

    // The console lists the nodes by their socket addresses, every one up.
    let admin = connect(&proxy.dsn("admin", "adminpw", "pgfleet")).await;
    let nodes = show(&admin, "SHOW NODES").await;
    let addresses: HashSet<&str> = nodes.iter().map(|r| text(r, "address")).collect();
    let expected: HashSet<String> = cluster.nodes().map(|n| n.socket_address()).collect();
    assert_eq!(
        addresses,
        expected.iter().map(String::as_str).collect(),
        "{nodes:?}"
    );
    assert!(nodes.iter().all(|r| text(r, "state") == "up"), "{nodes:?}");
}

/// Forward mode with every node on its socket: the initial copy (pg_dump and COPY), the change stream and
/// its apply all reach the servers that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_mode_copies_and_streams_over_unix_sockets() {
    let cluster = plain_cluster().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE TABLE before_start (id int PRIMARY KEY, v text); \
             INSERT INTO before_start SELECT g, 'row ' || g FROM generate_series(1, 500) g; \
             ALTER TABLE before_start OWNER TO app;",
        )
        .expect("seed the primary");
    let proxy = Proxy::start_edited(&cluster, &forward_toml(), on_sockets(&cluster));
    wait_until_streaming(&cluster, &proxy).await;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE TABLE after_start (id int PRIMARY KEY); INSERT INTO after_start SELECT generate_series(1, 50); \
         UPDATE before_start SET v = 'changed' WHERE id <= 10;",
    )
    .await
    .expect("writes through pgfleet");
    let sums = wait_until_replicas_match(&cluster, &proxy, Duration::from_secs(30)).await;
    assert_rows(&sums, "before_start", 500);
    assert_rows(&sums, "after_start", 50);
    let (_, local, rest) = where_ran(
        &c,
        "SELECT current_setting('port'), inet_server_addr() IS NULL, count(*) FROM before_start WHERE v = 'changed'",
    )
    .await;
    assert!(local, "the read reached its node over the socket");
    assert_eq!(rest, ["10"]);
}

/// A socket directory of this test's own, short enough for a socket path, removed when dropped.
struct SocketDir(std::path::PathBuf);

impl SocketDir {
    fn new(name: &str) -> SocketDir {
        let dir = std::env::temp_dir().join(format!("pgfleet-{name}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("socket dir");
        SocketDir(dir)
    }
}

impl Drop for SocketDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The config with `unix_socket_dir` added to `[listen]`.
fn listening_in(dir: &std::path::Path) -> impl Fn(String) -> String + '_ {
    move |text| {
        let (head, rest) = text.split_once("[listen]\n").expect("a [listen] table");
        format!("{head}[listen]\nunix_socket_dir = \"{}\"\n{rest}", dir.display())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_connect_through_pgfleets_own_socket() {
    let cluster = cluster_async().await;
    let dir = SocketDir::new("clients");
    let mut proxy = Proxy::start_edited(&cluster, ADMIN_TOML, listening_in(&dir.0));
    let port = proxy.port;
    let socket = dir.0.join(format!(".s.PGSQL.{port}"));
    assert!(socket.exists(), "no socket at {}", socket.display());
    let local = |user: &str, password: &str, db: &str| {
        format!(
            "host={} port={port} user={user} password={password} dbname={db}",
            dir.0.display()
        )
    };

    // A driver over the socket: a write and a read of it, as over TCP.
    let c = connect(&local(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE TABLE through_socket (id int PRIMARY KEY); INSERT INTO through_socket VALUES (7)",
    )
    .await
    .expect("write through the socket");
    assert_eq!(one(&c, "SELECT sum(id) FROM through_socket").await, "7");

    // SHOW CLIENTS names it as PostgreSQL names a local client; TCP clients keep their address.
    let admin = connect(&proxy.dsn("admin", "adminpw", "pgfleet")).await;
    let clients = show(&admin, "SHOW CLIENTS").await;
    let addresses: Vec<&str> = clients.iter().map(|r| text(r, "address")).collect();
    assert!(addresses.contains(&"[local]"), "{clients:?}");
    assert!(
        addresses.iter().any(|a| a.starts_with("127.0.0.1:")),
        "{clients:?}"
    );

    // A cancel sent through the socket ends the statement.
    let token = c.cancel_token();
    let c = Arc::new(c);
    let sleep = sleep_30(&c);
    let active = wait_until(Duration::from_secs(10), async || {
        show(&admin, "SHOW CLIENTS")
            .await
            .iter()
            .any(|r| text(r, "address") == "[local]" && text(r, "state") == "active")
    })
    .await;
    assert!(active.is_some(), "the sleep never showed as active");
    token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
    assert_canceled(sleep, "sleep").await;

    // psql, as a local application would run it.
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-h"])
        .arg(&dir.0)
        .args(["-p", &port.to_string(), "-U", APP_USER, "-d", APP_DB])
        .args(["-c", "SELECT 'psql-' || count(*) FROM through_socket"])
        .env("PGPASSWORD", PASSWORD)
        .env("PGCONNECT_TIMEOUT", "10")
        .output()
        .await
        .expect("run psql");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "psql-1");

    // An SSLRequest on the socket is answered `N` (no TLS there, as with PostgreSQL's socket) and the
    // connection goes on to its startup packet.
    let mut raw = tokio::net::UnixStream::connect(&socket)
        .await
        .expect("connect to the socket");
    raw.write_all(&pgfleet::protocol::startup::encode_ssl_request())
        .await
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    raw.read_exact(&mut answer).await.expect("one-byte answer");
    assert_eq!(answer[0], b'N');
    raw.write_all(&pgfleet::protocol::startup::encode_startup(&[
        ("user", APP_USER),
        ("database", APP_DB),
    ]))
    .await
    .expect("startup packet");
    raw.read_exact(&mut answer).await.expect("the next message");
    assert_eq!(answer[0], b'R', "an authentication request follows");
    drop(raw);

    // Stopping pgfleet removes the socket file.
    drop(c);
    drop(admin);
    let status = tokio::task::block_in_place(|| proxy.signal_and_wait("TERM", Duration::from_secs(30)));
    assert!(status.is_some(), "pgfleet did not stop:\n{}", proxy.log_tail(40));
    assert!(!socket.exists(), "{} left behind", socket.display());
}

/// A socket file left by a pgfleet that was killed is replaced at the next start; one that a running server
/// listens on is refused with a message naming it, and left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_leftover_socket_is_replaced_and_a_live_one_refused() {
    let cluster = cluster_async().await;
    let dir = SocketDir::new("leftover");
    let mut first = Proxy::start_edited(&cluster, "", listening_in(&dir.0));
    let port = first.port;
    let socket = dir.0.join(format!(".s.PGSQL.{port}"));
    let config = std::fs::read_to_string(&first.config_path).expect("the first config");
    // A second pgfleet with the same config finds the socket in use (it binds the socket before the port).
    let second = tokio::process::Command::new(env!("CARGO_BIN_EXE_pgfleet"))
        .arg("--config")
        .arg(write_config(&dir.0, "second.toml", &config))
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), second)
        .await
        .expect("the second pgfleet gives up at once")
        .expect("run a second pgfleet");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a second pgfleet started on a socket in use"
    );
    assert!(
        err.contains("listen.unix_socket_dir") && err.contains(&socket.display().to_string()),
        "{err}"
    );
    assert!(socket.exists());
    // SIGKILL leaves the file; the next start replaces it and serves clients through it.
    tokio::task::block_in_place(|| first.signal_and_wait("KILL", Duration::from_secs(30))).expect("killed");
    assert!(socket.exists(), "a killed pgfleet cannot remove its socket");
    let _again = Proxy::start_with_config(config);
    let c = connect(&format!(
        "host={} port={port} user={APP_USER} password={PASSWORD} dbname={APP_DB}",
        dir.0.display()
    ))
    .await;
    assert_eq!(one(&c, "SELECT 'again'").await, "again");
}

fn write_config(dir: &std::path::Path, name: &str, text: &str) -> std::path::PathBuf {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write config");
    path
}
