//! Client limits: each refused or closed client gets the SQLSTATE PostgreSQL would use and a message naming
//! the limit, and other clients go on. Clients that connect and then stall are closed by
//! `listen.authentication_timeout` and bounded by `listen.max_clients` meanwhile.

use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use crate::support::raw::Raw;
use pgfleet::protocol::frame::build;
use pgfleet::protocol::startup::encode_startup;
use postgres_protocol::authentication::sasl::{ChannelBinding, SCRAM_SHA_256, ScramSha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

fn code(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| format!("{e}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn max_clients_and_per_user_limits() {
    let cluster = cluster_async().await;
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "")
        .replacen("[listen]\n", "[listen]\nmax_clients = 3\n", 1)
        .replacen(
            "password = \"secret\"\n",
            "password = \"secret\"\nmax_connections = 2\n",
            1,
        );
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let a = connect(&dsn).await;
    let b = connect(&dsn).await;
    let Err(e) = try_connect(&dsn).await else {
        panic!("a third session of app was accepted")
    };
    assert_eq!(code(&e), "53300");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.message(), "too many connections for role \"app\"");
    assert!(db.detail().unwrap_or("").contains("max_connections"), "{db:?}");
    // The others go on, and a slot frees when a client leaves.
    a.batch_execute("SELECT 1").await.expect("a still works");
    drop(b);
    let _c = crate::support::wait_until(Duration::from_secs(10), async || try_connect(&dsn).await.ok())
        .await
        .expect("a slot frees when a client leaves");
    drop((a, _c));
    // listen.max_clients counts every user's sessions.
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "").replacen("[listen]\n", "[listen]\nmax_clients = 1\n", 1);
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let _only = connect(&dsn).await;
    let Err(e) = try_connect(&dsn).await else {
        panic!("max_clients = 1 let a second client in")
    };
    assert_eq!(code(&e), "53300");
    let db = e.as_db_error().expect("db error");
    assert_eq!(db.message(), "sorry, too many clients already");
    assert!(db.detail().unwrap_or("").contains("listen.max_clients"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_sessions_and_idle_transactions_are_closed() {
    let cluster = cluster_async().await;
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "").replacen(
        "[listen]\n",
        "[listen]\nclient_idle_timeout = \"1s\"\nidle_in_transaction_timeout = \"500ms\"\n",
        1,
    );
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let c = connect(&dsn).await;
    c.batch_execute("CREATE TABLE held (x int); INSERT INTO held VALUES (1)")
        .await
        .expect("setup");
    // Idle in a transaction holding a row lock: closed after 500 ms, and the lock goes with it.
    // Raw sessions: pgfleet closes them with an unprompted FATAL, which a driver reports only on its
    // connection task.
    let mut t = Raw::connect(proxy.port).await;
    t.login_app().await;
    let started = Instant::now();
    let locked = t.simple("BEGIN; SELECT * FROM held FOR UPDATE").await;
    assert!(locked.iter().all(|(kind, _)| *kind != b'E'), "lock: {locked:?}");
    t.expect_fatal("25P03").await;
    assert!(
        started.elapsed() >= Duration::from_millis(500),
        "closed after {:?}, before idle_in_transaction_timeout",
        started.elapsed()
    );
    let free = cluster.psql(&cluster.primary, APP_DB, "SELECT x FROM held FOR UPDATE NOWAIT");
    assert!(free.is_ok(), "the row lock outlived its session: {free:?}");
    // Idle between transactions: closed after 1 s; a busy client is not.
    drop(c);
    let busy = connect(&dsn).await;
    let mut idle = Raw::connect(proxy.port).await;
    idle.login_app().await;
    // The busy client's pauses are what is tested (it stays idle under the timeout each time).
    for _ in 0..6 {
        busy.batch_execute("SELECT 1")
            .await
            .expect("busy client keeps working");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    idle.expect_fatal("57P05").await;
    crate::support::wait_until(Duration::from_secs(5), async || {
        proxy.log_contents().contains("listen.client_idle_timeout")
    })
    .await
    .expect("the log names listen.client_idle_timeout");
}

/// Where a hand-driven client stops answering.
#[derive(Debug, Clone, Copy)]
enum Stall {
    /// Connected, nothing sent.
    Silent,
    /// Sent its StartupMessage and got the SCRAM challenge (AuthenticationSASL).
    ScramChallenge,
    /// Also sent the SCRAM client-first message and got the server-first (AuthenticationSASLContinue).
    AfterScramFirst,
    /// Sent its StartupMessage and got the md5 challenge.
    Md5Challenge,
}

/// A client stalled at some point of its login, and when it connected.
struct Stalled {
    stall: Stall,
    socket: TcpStream,
    connected: Instant,
}

/// Reads one backend message: (type, body).
async fn read_message(socket: &mut TcpStream) -> (u8, Vec<u8>) {
    let mut head = [0u8; 5];
    tokio::time::timeout(Duration::from_secs(10), socket.read_exact(&mut head))
        .await
        .expect("a message from pgfleet within 10 s")
        .expect("a message from pgfleet");
    let len = i32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
    let mut body = vec![0u8; len - 4];
    socket.read_exact(&mut body).await.expect("message body");
    (head[0], body)
}

/// The Authentication request code of a message that must be one.
fn auth_code(stall: Stall, (kind, body): &(u8, Vec<u8>)) -> i32 {
    assert_eq!(
        *kind,
        b'R',
        "{stall:?}: expected an Authentication request, got '{}' {}",
        *kind as char,
        String::from_utf8_lossy(body)
    );
    i32::from_be_bytes([body[0], body[1], body[2], body[3]])
}

/// Connects and drives the login up to `stall`, checking that pgfleet asked what that stage expects.
async fn stall_at(port: u16, stall: Stall, user: &str) -> Stalled {
    // Taken before the connect: pgfleet's clock starts at its accept, which cannot come earlier, while this
    // task may be woken some time after the connect completed.
    let connected = Instant::now();
    let mut socket = TcpStream::connect(("127.0.0.1", port)).await.expect("connect");
    if !matches!(stall, Stall::Silent) {
        let startup = encode_startup(&[("user", user), ("database", APP_DB)]);
        socket.write_all(&startup).await.expect("send startup");
        let first = read_message(&mut socket).await;
        let code = auth_code(stall, &first);
        match stall {
            Stall::Md5Challenge => assert_eq!(code, 5, "{user}: md5 challenge"),
            _ => assert_eq!(code, 10, "{user}: SCRAM challenge"),
        }
    }
    if matches!(stall, Stall::AfterScramFirst) {
        let scram = ScramSha256::new(b"not the password", ChannelBinding::unrequested());
        let mut msg = SCRAM_SHA_256.as_bytes().to_vec();
        msg.push(0);
        msg.extend_from_slice(&(scram.message().len() as i32).to_be_bytes());
        msg.extend_from_slice(scram.message());
        socket
            .write_all(&build(b'p', &msg))
            .await
            .expect("send SCRAM first");
        let second = read_message(&mut socket).await;
        assert_eq!(auth_code(stall, &second), 11, "server-first message");
    }
    Stalled {
        stall,
        socket,
        connected,
    }
}

/// Waits until pgfleet closes the stalled socket (EOF or reset, no bytes); returns how long after connecting.
async fn closed_after(mut s: Stalled, limit: Duration) -> Duration {
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout_at((s.connected + limit).into(), s.socket.read(&mut buf))
        .await
        .unwrap_or_else(|_| panic!("{:?}: still open {limit:?} after connecting", s.stall));
    assert!(
        matches!(read, Ok(0) | Err(_)),
        "{:?}: pgfleet sent bytes instead of closing: {read:?} {:?}",
        s.stall,
        &buf[..*read.as_ref().unwrap_or(&0)]
    );
    s.connected.elapsed()
}

/// A sample without labels from /metrics, such as `pgfleet_clients_logging_in`.
async fn metric(metrics_port: u16, name: &str) -> u64 {
    let mut http = TcpStream::connect(("127.0.0.1", metrics_port))
        .await
        .expect("connect to /metrics");
    http.write_all(b"GET /metrics HTTP/1.1\r\nHost: pgfleet\r\n\r\n")
        .await
        .expect("request");
    let mut answer = String::new();
    tokio::time::timeout(Duration::from_secs(10), http.read_to_string(&mut answer))
        .await
        .expect("metrics answered in time")
        .expect("metrics answer");
    let prefix = format!("{name} ");
    answer
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .unwrap_or_else(|| panic!("no {name} in {answer}"))
        .parse()
        .expect("a count")
}

/// Polls /metrics until `name` is `value`; sessions and logins end a moment after their sockets close.
async fn wait_metric(metrics_port: u16, name: &str, value: u64) {
    if crate::support::wait_until(Duration::from_secs(5), async || {
        metric(metrics_port, name).await == value
    })
    .await
    .is_none()
    {
        let now = metric(metrics_port, name).await;
        panic!("{name} stayed {now}, expected {value}");
    }
}

/// The SQLSTATE, message and detail of a refused login.
fn refusal(e: &tokio_postgres::Error) -> (String, String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error, got {e}"));
    assert_eq!(db.severity(), "FATAL");
    (
        db.code().code().to_owned(),
        db.message().to_owned(),
        db.detail().unwrap_or("").to_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_logins_count_towards_max_clients_and_are_closed_by_the_authentication_timeout() {
    const TIMEOUT: Duration = Duration::from_secs(3);
    let cluster = cluster_async().await;
    let port = free_port();
    let metrics_port = free_port();
    let text = Proxy::config_for(
        &cluster,
        port,
        &format!(
            "[[users]]\nname = \"u_md5\"\npassword = \"pw-md5\"\nauth = \"md5\"\n\n\
             [admin]\nmetrics_address = \"127.0.0.1:{metrics_port}\"\n"
        ),
    )
    .replacen(
        "[listen]\n",
        "[listen]\nmax_clients = 3\nauthentication_timeout = \"3s\"\n",
        1,
    );
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);

    // Stalled at the fake SCRAM challenge of an unknown user and at an md5 challenge, each holding one of
    // the three slots; a socket that sent nothing holds none. The third slot lets a real client in.
    let mut stalled = vec![
        stall_at(port, Stall::Silent, APP_USER).await,
        stall_at(port, Stall::ScramChallenge, "ghost").await,
        stall_at(port, Stall::Md5Challenge, "u_md5").await,
    ];
    let real = connect(&dsn).await;
    real.batch_execute("SELECT 1")
        .await
        .expect("the real client works");
    drop(real);
    wait_metric(metrics_port, "pgfleet_clients", 0).await;

    // A third client stalled after its SCRAM first message: three stalled logins fill max_clients = 3,
    // and the next login is refused as PostgreSQL refuses clients past max_connections.
    stalled.push(stall_at(port, Stall::AfterScramFirst, APP_USER).await);
    let Err(e) = try_connect(&dsn).await else {
        panic!("a fourth login was let in")
    };
    assert_eq!(
        refusal(&e),
        (
            "53300".to_owned(),
            "sorry, too many clients already".to_owned(),
            "pgfleet serves at most 3 clients (listen.max_clients)".to_owned()
        )
    );

    // Sockets that never log in are bounded before anything is read from them: with six connections
    // logging in (twice max_clients), the next one is refused at once.
    wait_metric(metrics_port, "pgfleet_clients_logging_in", 4).await;
    stalled.push(stall_at(port, Stall::Silent, APP_USER).await);
    stalled.push(stall_at(port, Stall::Silent, APP_USER).await);
    wait_metric(metrics_port, "pgfleet_clients_logging_in", 6).await;
    let Err(e) = try_connect(&dsn).await else {
        panic!("a seventh connection was let in")
    };
    assert_eq!(
        refusal(&e),
        (
            "53300".to_owned(),
            "sorry, too many clients already".to_owned(),
            "pgfleet lets at most 6 connections log in at once (twice listen.max_clients)".to_owned()
        )
    );

    // Each stalled client is closed once listen.authentication_timeout has passed since it connected, and
    // not before; pgfleet sends nothing, as PostgreSQL does.
    for s in stalled {
        let stall = s.stall;
        let after = closed_after(s, TIMEOUT + Duration::from_secs(8)).await;
        assert!(
            after >= TIMEOUT - Duration::from_millis(50),
            "{stall:?}: closed after {after:?}, before listen.authentication_timeout"
        );
    }
    // Every count they were in went back down, and logins work again.
    wait_metric(metrics_port, "pgfleet_clients_logging_in", 0).await;
    let again = connect(&dsn).await;
    again
        .batch_execute("SELECT 1")
        .await
        .expect("logins work once the stalled clients are gone");
    let log = proxy.log_contents();
    assert!(
        log.contains("canceling authentication due to timeout (listen.authentication_timeout)"),
        "{}",
        proxy.log_tail(30)
    );
    assert!(
        log.contains(
            "did not finish its TLS handshake and startup packet within listen.authentication_timeout"
        ),
        "{}",
        proxy.log_tail(30)
    );
}
