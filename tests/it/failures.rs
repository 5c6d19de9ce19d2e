//! Failures around a real pgfleet: nodes that refuse connections, replicas and a primary that stop or hang,
//! clients that send garbage or hang, and a very large result that must stream through without growing the
//! proxy's memory. In each case what still works must keep working.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::one;
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use crate::support::raw::Raw;
use futures_util::TryStreamExt;
use pgfleet::protocol::frame::build;
use pgfleet::protocol::messages::error_field;
use pgfleet::protocol::startup::encode_startup;
use tokio_postgres::SimpleQueryMessage;

/// A well-behaved client running queries in a loop on its own task until stopped.
struct Steady {
    stop: Arc<AtomicBool>,
    done: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<Result<u64, String>>,
}

impl Steady {
    async fn start(dsn: &str) -> Steady {
        let client = connect(dsn).await;
        let stop = Arc::new(AtomicBool::new(false));
        let done = Arc::new(AtomicU64::new(0));
        let (stop2, done2) = (stop.clone(), done.clone());
        let task = tokio::spawn(async move {
            let stmt = client
                .prepare("SELECT $1::int + 1")
                .await
                .map_err(|e| e.to_string())?;
            let mut i = 0i32;
            while !stop2.load(Ordering::Relaxed) {
                let step = async {
                    client
                        .simple_query("SELECT inet_server_port()")
                        .await
                        .map_err(|e| e.to_string())?;
                    let row = client.query_one(&stmt, &[&i]).await.map_err(|e| e.to_string())?;
                    if row.get::<_, i32>(0) != i + 1 {
                        return Err("wrong answer".to_owned());
                    }
                    Ok::<(), String>(())
                };
                match tokio::time::timeout(Duration::from_secs(5), step).await {
                    Ok(Ok(())) => {}
                    Ok(Err(e)) => return Err(format!("query {i} failed: {e}")),
                    Err(_) => return Err(format!("query {i} took over 5 s")),
                }
                done2.fetch_add(1, Ordering::Relaxed);
                i += 1;
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(u64::from(i.unsigned_abs()))
        });
        Steady { stop, done, task }
    }

    /// Waits until at least `n` more rounds completed, failing after 10 s.
    async fn progress(&self, n: u64) {
        let target = self.done.load(Ordering::Relaxed) + n;
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.done.load(Ordering::Relaxed) < target {
            assert!(!self.task.is_finished(), "the steady client stopped early");
            assert!(
                Instant::now() < deadline,
                "the steady client made no progress for 10 s"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn finish(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        match self.task.await.expect("steady task") {
            Ok(n) => n,
            Err(e) => panic!("the well-behaved client failed: {e}"),
        }
    }
}

/// A new client can connect and run a read and a write within 5 s.
async fn fresh_client_works(proxy: &Proxy, what: &str) {
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let work = async {
        let c = connect(&dsn).await;
        assert_eq!(one(&c, "SELECT 'fresh'").await, "fresh");
        c.batch_execute("CREATE TABLE IF NOT EXISTS fresh_t (x int); INSERT INTO fresh_t VALUES (1)")
            .await
            .expect("write");
    };
    tokio::time::timeout(Duration::from_secs(5), work)
        .await
        .unwrap_or_else(|_| panic!("a new client was not served within 5 s while {what}"));
}

/// SQLSTATE and message of a server error, or the client-side error text.
fn describe(err: &tokio_postgres::Error) -> String {
    match err.as_db_error() {
        Some(db) => format!("{} {} {}: {}", db.severity(), db.code().code(), db.message(), err),
        None => err.to_string(),
    }
}

fn db_error(err: &tokio_postgres::Error) -> &tokio_postgres::error::DbError {
    err.as_db_error()
        .unwrap_or_else(|| panic!("expected a server error, got: {err}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unreachable_primary_is_named_in_the_error() {
    let cluster = cluster_async().await;
    // A port bound and never listened on refuses connections, and no server a test running meanwhile starts
    // can take it (a port merely found free could be, and then pgfleet would reach that server).
    let closed = tokio::net::TcpSocket::new_v4().expect("socket");
    closed
        .bind("127.0.0.1:0".parse().expect("address"))
        .expect("bind");
    let closed_address = closed.local_addr().expect("bound address").to_string();

    // Only the primary is configured, and nothing listens there: the login itself fails.
    let port = free_port();
    let text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"app\"\npassword = \"{PASSWORD}\"\n\n\
         [[nodes]]\nname = \"primary\"\naddress = \"{closed_address}\"\nrole = \"primary\"\n\n\
         [pool]\nconnect_timeout = \"2s\"\n"
    );
    let lone = Proxy::start_with_config(text);
    let started = Instant::now();
    let err = try_connect(&lone.dsn(APP_USER, PASSWORD, APP_DB))
        .await
        .expect_err("login must fail");
    let db = db_error(&err);
    assert!(db.code().code().starts_with("08"), "SQLSTATE class 08: {db:?}");
    assert!(
        db.message().contains("pgfleet: cannot reach primary \"primary\""),
        "{}",
        db.message()
    );
    assert!(db.message().contains("connection refused"), "{}", db.message());
    assert!(
        db.message().contains(&closed_address),
        "names the address: {}",
        db.message()
    );
    assert!(
        started.elapsed() < Duration::from_secs(2),
        "a refused connection fails fast"
    );
    drop(lone);

    // The whole fleet, but the primary's address is wrong: reads work, writes get the same error.
    let port = free_port();
    let text = Proxy::config_for(&cluster, port, "[pool]\nconnect_timeout = \"2s\"\n")
        .replace(&cluster.primary.address(), &closed_address);
    assert!(text.contains(&closed_address));
    let proxy = Proxy::start_with_config(text);
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let replicas: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();
    for _ in 0..4 {
        assert!(replicas.contains(&one(&c, "SELECT inet_server_port()").await));
    }
    for _ in 0..2 {
        let err = c
            .batch_execute("CREATE TABLE nowhere (x int)")
            .await
            .expect_err("no primary");
        let db = db_error(&err);
        assert!(db.code().code().starts_with("08"), "{db:?}");
        assert!(
            db.message().contains("pgfleet: cannot reach primary \"primary\""),
            "{}",
            db.message()
        );
        assert!(db.message().contains("connection refused"), "{}", db.message());
    }
    assert!(
        replicas.contains(&one(&c, "SELECT inet_server_port()").await),
        "the session goes on"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_keep_working_when_a_replica_stops() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let old = connect(&dsn).await;
    let stmt = old.prepare("SELECT inet_server_port()").await.expect("prepare");
    // Use both replicas first, so that the session holds a connection to the one about to die.
    let mut seen = std::collections::HashSet::new();
    for _ in 0..4 {
        seen.insert(one(&old, "SELECT inet_server_port()").await);
        let row = old.query_one(&stmt, &[]).await.expect("extended read");
        seen.insert(row.get::<_, i32>(0).to_string());
    }
    assert_eq!(seen.len(), 2, "round robin used both replicas");

    let dead = cluster.replicas[0].port.to_string();
    cluster.replicas[0].stop_immediate().expect("stop replica1");
    // The session that held connections to both replicas reads first, before anything else could notice
    // the stop; then a new session. Its statement was prepared before the stop and must be re-prepared on a
    // live node.
    let existing = hundred_reads(&old, &stmt, &dead).await;
    let fresh = connect(&dsn).await;
    let fresh_stmt = fresh.prepare("SELECT inet_server_port()").await.expect("prepare");
    let new = hundred_reads(&fresh, &fresh_stmt, &dead).await;
    fresh
        .batch_execute("CREATE TABLE after_replica_loss (x int)")
        .await
        .expect("writes still work");
    let log = proxy.log_tail(20);
    assert_eq!(new, Ok(()), "new session\n--- log ---\n{log}");
    assert_eq!(existing, Ok(()), "existing session\n--- log ---\n{log}");
}

/// 100 simple-protocol reads and 20 with a prepared statement, none on the `dead` port; the first failure.
async fn hundred_reads(
    c: &tokio_postgres::Client,
    stmt: &tokio_postgres::Statement,
    dead: &str,
) -> Result<(), String> {
    for i in 0..100 {
        let msgs = c
            .simple_query("SELECT inet_server_port()")
            .await
            .map_err(|e| format!("read {i} failed after a replica stopped: {}", describe(&e)))?;
        let port = msgs
            .iter()
            .find_map(|m| match m {
                SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
                _ => None,
            })
            .ok_or_else(|| format!("read {i}: no row"))?;
        if port == dead {
            return Err(format!("read {i} served by the stopped replica"));
        }
    }
    for i in 0..20 {
        let row = c.query_one(stmt, &[]).await.map_err(|e| {
            format!(
                "extended read {i} failed after a replica stopped: {}",
                describe(&e)
            )
        })?;
        if row.get::<_, i32>(0).to_string() == dead {
            return Err(format!("extended read {i} served by the stopped replica"));
        }
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_fail_fast_when_the_primary_stops_and_reads_go_on() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nconnect_timeout = \"2s\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let c = connect(&dsn).await;
    c.batch_execute("CREATE TABLE t (x int); INSERT INTO t VALUES (1)")
        .await
        .expect("setup");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("caught up");
    assert_eq!(one(&c, "SELECT count(*) FROM t").await, "1");
    let replicas: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();

    cluster.primary.stop_immediate().expect("stop the primary");

    // A new session logs in (on a replica) and reads; its writes fail fast with class 08.
    let started = Instant::now();
    let fresh = connect(&dsn).await;
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "login without a primary took {:?}",
        started.elapsed()
    );
    for _ in 0..10 {
        assert!(replicas.contains(&one(&fresh, "SELECT inet_server_port()").await));
        assert_eq!(one(&fresh, "SELECT count(*) FROM t").await, "1");
    }
    for attempt in 0..2 {
        let started = Instant::now();
        let err = fresh
            .batch_execute("INSERT INTO t VALUES (3)")
            .await
            .expect_err("no primary");
        let db = db_error(&err);
        assert!(db.code().code().starts_with("08"), "write {attempt}: {db:?}");
        assert!(db.message().contains("primary"), "{}", db.message());
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "within connect_timeout: {:?}",
            started.elapsed()
        );
        assert_eq!(
            one(&fresh, "SELECT count(*) FROM t").await,
            "1",
            "the session goes on after the error"
        );
    }

    // The session that held a connection to the primary when it stopped: the write fails (08 or 57P01),
    // within connect_timeout, and the session's reads still work.
    for attempt in 0..3 {
        let started = Instant::now();
        let err = c
            .batch_execute("INSERT INTO t VALUES (2)")
            .await
            .expect_err("no primary to write to");
        let took = started.elapsed();
        let db = db_error(&err);
        let code = db.code().code().to_owned();
        assert!(
            code.starts_with("08") || code == "57P01",
            "write {attempt}: {code} {}",
            db.message()
        );
        assert!(
            took < Duration::from_secs(2),
            "write {attempt} failed within connect_timeout, took {took:?}"
        );
        for i in 0..5 {
            let read = c.simple_query("SELECT inet_server_port()").await.unwrap_or_else(|e| {
                panic!(
                    "read {i} after failed write {attempt} ({code} {:?}) in the same session: {e}\n--- log ---\n{}",
                    db.message(),
                    proxy.log_tail(30)
                )
            });
            assert!(read.iter().any(|m| matches!(m, SimpleQueryMessage::Row(_))));
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hung_primary_costs_writes_at_most_connect_timeout() {
    let cluster = cluster_async().await;
    // Set up directly, so that pgfleet has no pooled connection to the primary when it hangs.
    connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB))
        .await
        .batch_execute("CREATE TABLE h (x int)")
        .await
        .expect("setup");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("caught up");
    let proxy = Proxy::start(&cluster, "[pool]\nconnect_timeout = \"2s\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);

    cluster.primary.pause().expect("SIGSTOP the primary");
    let outcome = async {
        // Login tries the primary for at most connect_timeout, then settles on a replica.
        let started = Instant::now();
        let c = tokio::time::timeout(Duration::from_secs(6), connect(&dsn))
            .await
            .expect("login in time");
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "login took {:?}",
            started.elapsed()
        );
        let started = Instant::now();
        let err = tokio::time::timeout(
            Duration::from_secs(6),
            c.batch_execute("INSERT INTO h VALUES (1)"),
        )
        .await
        .unwrap_or_else(|_| {
            panic!(
                "the write did not return within 6 s\n--- log ---\n{}",
                proxy.log_tail(30)
            )
        })
        .expect_err("the primary is hung");
        let took = started.elapsed();
        let db = db_error(&err);
        assert!(db.code().code().starts_with("08"), "{db:?}");
        assert!(db.message().contains("timed out"), "{}", db.message());
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(3),
            "took {took:?}"
        );
        // Reads are served by the replicas without waiting for the primary, again and again.
        for i in 0..12 {
            let started = Instant::now();
            assert_eq!(one(&c, "SELECT count(*) FROM h").await, "0");
            let took = started.elapsed();
            assert!(
                took < Duration::from_secs(1),
                "read {i} took {took:?} with the primary hung\n--- log ---\n{}",
                proxy.log_tail(30)
            );
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    };
    let result = tokio::time::timeout(Duration::from_secs(60), outcome).await;
    cluster.primary.resume().expect("SIGCONT the primary");
    result.unwrap_or_else(|_| {
        panic!(
            "the hung-primary scenario hung\n--- log ---\n{}",
            proxy.log_tail(30)
        )
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pooled_connection_to_a_hung_primary_does_not_hang_new_logins() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nconnect_timeout = \"2s\"\n");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    // A client uses the primary and leaves: its connection stays in the pool.
    connect(&dsn)
        .await
        .batch_execute("CREATE TABLE hp (x int)")
        .await
        .expect("setup");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("caught up");
    tokio::time::sleep(Duration::from_millis(200)).await;

    cluster.primary.pause().expect("SIGSTOP the primary");
    let started = Instant::now();
    let login = tokio::time::timeout(Duration::from_secs(8), connect(&dsn)).await;
    let took = started.elapsed();
    let reads = match login {
        Ok(c) => {
            Some(tokio::time::timeout(Duration::from_secs(8), one_owned(c, "SELECT count(*) FROM hp")).await)
        }
        Err(_) => None,
    };
    cluster.primary.resume().expect("SIGCONT the primary");
    assert!(
        reads.is_some(),
        "a new client could not log in within 8 s while the primary was hung (a pooled connection to it \
         was reused without a timeout)\n--- log ---\n{}",
        proxy.log_tail(30)
    );
    assert!(took < Duration::from_secs(5), "login took {took:?}");
    assert_eq!(
        reads.and_then(Result::ok).as_deref(),
        Some("0"),
        "a read within 8 s"
    );
}

async fn one_owned(c: tokio_postgres::Client, sql: &str) -> String {
    one(&c, sql).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_and_oversized_messages_end_only_that_session() {
    let cluster = cluster_async().await;
    let port = free_port();
    let listen = format!("address = \"127.0.0.1:{port}\"\n");
    let text = Proxy::config_for(&cluster, port, "").replacen(
        &listen,
        &format!("{listen}max_message_size = \"1MB\"\n"),
        1,
    );
    assert!(text.contains("max_message_size"));
    let proxy = Proxy::start_with_config(text);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let steady = Steady::start(&dsn).await;
    steady.progress(3).await;

    // (1) A Query whose length field is below its own size.
    let mut raw = Raw::connect(proxy.port).await;
    raw.login_app().await;
    raw.send(&[b'Q', 0, 0, 0, 2]).await;
    let msg = raw.expect_fatal("08P01").await;
    assert!(msg.contains("length"), "{msg}");
    steady.progress(3).await;

    // A negative length.
    let mut raw = Raw::connect(proxy.port).await;
    raw.login_app().await;
    raw.send(&[b'Q', 0xff, 0xff, 0xff, 0xf0]).await;
    raw.expect_fatal("08P01").await;
    steady.progress(3).await;

    // (2) A message over listen.max_message_size: refused from its header, before its body arrives.
    let mut raw = Raw::connect(proxy.port).await;
    raw.login_app().await;
    let claimed: i32 = 2 * 1024 * 1024 + 4;
    let mut head = vec![b'Q'];
    head.extend_from_slice(&claimed.to_be_bytes());
    head.extend_from_slice(b"SELECT '");
    head.extend_from_slice(&[b'x'; 4096]);
    raw.send(&head).await;
    let msg = raw.expect_fatal("08P01").await;
    assert!(
        msg.contains("max_message_size") || msg.contains("1048576") || msg.contains("1MB"),
        "the error mentions the limit: {msg}"
    );
    steady.progress(3).await;

    // Just under the limit is fine; just over it ends that session only.
    let big = connect(&dsn).await;
    let under = format!("SELECT length('{}')", "y".repeat(900 * 1024));
    assert_eq!(one(&big, &under).await, (900 * 1024).to_string());
    let over = format!("SELECT length('{}')", "z".repeat(1100 * 1024));
    assert!(
        big.simple_query(&over).await.is_err(),
        "a 1.1 MB query is refused"
    );
    steady.progress(3).await;

    steady.progress(3).await;
    let rounds = steady.finish().await;
    assert!(rounds >= 15, "the steady client kept going: {rounds} rounds");
    fresh_client_works(&proxy, "after garbage").await;
    let log = proxy.log_contents();
    assert!(!log.contains("panicked"), "pgfleet panicked:\n{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_message_type_ends_the_session_like_postgres() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let steady = Steady::start(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    steady.progress(3).await;
    // PostgreSQL answers FATAL 08P01 "invalid frontend message type 33" as soon as it reads such a message.
    let mut raw = Raw::connect(proxy.port).await;
    raw.login_app().await;
    raw.send(&build(b'!', b"junk")).await;
    let msg = raw.expect_fatal("08P01").await;
    assert!(msg.contains("message type"), "{msg}");
    steady.progress(3).await;
    steady.finish().await;
    fresh_client_works(&proxy, "after an unknown message type").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_startup_packets_and_hanging_clients_do_not_block_others() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let steady = Steady::start(&dsn).await;
    steady.progress(3).await;

    // (3) Startup packets with absurd lengths are refused at once, without waiting for the bytes, and, as
    // PostgreSQL does (it logs "invalid length of startup packet" and answers nothing), without a word.
    for header in [
        [0x7f, 0xff, 0xff, 0xff],
        [0, 0, 0, 4],
        [0xff, 0xff, 0xff, 0xf0],
        [0, 0, 0x27, 0x11],
    ] {
        let mut raw = Raw::connect(proxy.port).await;
        let mut packet = header.to_vec();
        packet.extend_from_slice(&[0, 3, 0, 0]);
        packet.extend_from_slice(b"user\0app\0\0");
        raw.send(&packet).await;
        let started = Instant::now();
        raw.expect_closed_without_a_word().await;
        assert!(
            started.elapsed() < Duration::from_secs(2),
            "{header:?} refused at once"
        );
        steady.progress(2).await;
    }
    // A Terminate before any startup packet (node-postgres sends one when end() follows connect() at
    // once), and bytes that are no protocol at all: closed without an answer, and logged.
    let terminate = [b'X', 0, 0, 0, 4];
    let garbage = b"GET / HTTP/1.1\r\nHost: pgfleet\r\n\r\n".to_vec();
    for bytes in [terminate.to_vec(), garbage] {
        let mut raw = Raw::connect(proxy.port).await;
        raw.send(&bytes).await;
        raw.expect_closed_without_a_word().await;
    }
    assert!(
        proxy.wait_for_log("invalid length of startup packet", Duration::from_secs(10)),
        "the refusal is logged:\n{}",
        proxy.log_tail(40)
    );
    // An unsupported protocol version still gets PostgreSQL's FATAL 0A000.
    let mut raw = Raw::connect(proxy.port).await;
    let mut v2 = encode_startup(&[("user", APP_USER)]).to_vec();
    v2[4..8].copy_from_slice(&0x0002_0000i32.to_be_bytes());
    raw.send(&v2).await;
    let msg = raw.expect_fatal("0A000").await;
    assert_eq!(
        msg,
        "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"
    );

    // (4) Clients that connect and hang: silent, half a startup packet, an SSLRequest and nothing more,
    // half a Query after logging in, and one that never reads a large result.
    let mut hanging = Vec::new();
    for _ in 0..20 {
        hanging.push(Raw::connect(proxy.port).await);
    }
    let startup = encode_startup(&[("user", APP_USER), ("database", APP_DB)]);
    let mut half_startup = Raw::connect(proxy.port).await;
    half_startup.send(&startup[..startup.len() / 2]).await;
    hanging.push(half_startup);
    let mut ssl_only = Raw::connect(proxy.port).await;
    ssl_only.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    hanging.push(ssl_only);
    let mut half_query = Raw::connect(proxy.port).await;
    half_query.login_app().await;
    let q = pgfleet::protocol::messages::query("SELECT 'never finished'");
    half_query.send(&q[..q.len() - 5]).await;
    hanging.push(half_query);
    let mut half_header = Raw::connect(proxy.port).await;
    half_header.login_app().await;
    half_header.send(&[b'Q', 0, 0]).await;
    hanging.push(half_header);
    let mut no_reader = Raw::connect(proxy.port).await;
    no_reader.login_app().await;
    no_reader
        .send(&pgfleet::protocol::messages::query(
            "SELECT repeat('n', 1000) FROM generate_series(1, 500000)",
        ))
        .await;
    hanging.push(no_reader);

    let started = Instant::now();
    steady.progress(20).await;
    fresh_client_works(&proxy, "25 clients hang").await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        let c = tokio::time::timeout(Duration::from_secs(5), connect(&dsn))
            .await
            .expect("connect in time");
        assert_eq!(one(&c, "SELECT 'parallel'").await, "parallel");
        clients.push(c);
    }
    assert!(started.elapsed() < Duration::from_secs(15));
    steady.progress(5).await;
    drop(hanging);
    steady.progress(5).await;
    let rounds = steady.finish().await;
    assert!(rounds >= 30, "{rounds}");
    fresh_client_works(&proxy, "after the hanging clients left").await;
}

/// VmRSS of a process, in bytes.
fn rss(pid: u32) -> u64 {
    status_kb(pid, "VmRSS:") * 1024
}

/// VmHWM (peak RSS) of a process, in bytes.
fn hwm(pid: u32) -> u64 {
    status_kb(pid, "VmHWM:") * 1024
}

fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or_else(|| panic!("{field} in /proc/{pid}/status"))
}

/// Samples the RSS of `pid` every 10 ms on a thread until stopped; returns the largest sample.
fn sample_rss(pid: u32) -> (Arc<AtomicBool>, std::thread::JoinHandle<u64>) {
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let handle = std::thread::spawn(move || {
        let mut peak = 0;
        while !stop2.load(Ordering::Relaxed) {
            peak = peak.max(rss(pid));
            std::thread::sleep(Duration::from_millis(10));
        }
        peak.max(rss(pid))
    });
    (stop, handle)
}

/// Runs one query with psql, its output to /dev/null.
async fn psql_to_dev_null(port: u16, sql: &str) {
    let status = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={APP_USER} dbname={APP_DB} sslmode=disable"
        ))
        .arg("-c")
        .arg(sql)
        .env("PGPASSWORD", PASSWORD)
        .stdout(std::process::Stdio::null())
        .status()
        .await
        .expect("run psql");
    assert!(status.success(), "psql failed: {sql}");
}

/// A result of `rows` rows of about 60 bytes each on the wire.
fn big_query(rows: u64) -> String {
    format!("SELECT g, repeat('x', 50) FROM generate_series(1, {rows}) g")
}
/// The small and the large result compared: ten times the rows.
const SMALL: u64 = 200_000;
const LARGE_RESULT: u64 = 2_000_000;
/// How much more the large result may grow pgfleet than the small one. Holding back any part proportional
/// to the rows would show as a share of the 1.8M extra rows' ~110 MB; allocator arenas and scheduling on a
/// busy machine vary by a few MB between runs, whatever the result size.
const MARGIN: u64 = 24 * 1024 * 1024;

/// Runs `run` while sampling pgfleet's RSS; the growth above the RSS before it, counting the peak (VmHWM) if
/// it rose meanwhile.
async fn rss_growth_of(pid: u32, run: impl std::future::Future<Output = ()>) -> u64 {
    let before = rss(pid);
    let hwm_before = hwm(pid);
    let (stop, sampler) = sample_rss(pid);
    run.await;
    stop.store(true, Ordering::Relaxed);
    let peak = sampler.join().expect("sampler");
    let peak = if hwm(pid) > hwm_before {
        peak.max(hwm(pid))
    } else {
        peak
    };
    peak.saturating_sub(before)
}

/// Streams `rows` rows through tokio-postgres row by row, pausing every eighth of the way so that pgfleet
/// must hold back (the pauses are what is tested, not synchronisation); checks every row arrived.
async fn stream_rows(c: &tokio_postgres::Client, rows: u64) {
    let stream = c
        .query_raw(&big_query(rows), std::iter::empty::<i32>())
        .await
        .expect("query_raw");
    futures_util::pin_mut!(stream);
    let mut count: u64 = 0;
    let mut sum: u64 = 0;
    while let Some(row) = stream.try_next().await.expect("row") {
        count += 1;
        sum += row.get::<_, i32>(0) as u64;
        if row.get::<_, &str>(1).len() != 50 {
            panic!("row {count}: wrong payload");
        }
        if count.is_multiple_of(rows / 8) {
            tokio::time::sleep(Duration::from_millis(300)).await;
        }
    }
    assert_eq!(count, rows);
    assert_eq!(sum, rows * (rows + 1) / 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_two_million_row_result_streams_without_growing_the_proxy() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let pid = proxy.pid();
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let c = connect(&dsn).await;
    // Warm up with results of the same shape: the allocator's per-thread arenas grow by a few MB on the
    // first large results a fresh process handles and then stay put.
    for _ in 0..2 {
        stream_rows(&c, 300_000).await;
        psql_to_dev_null(proxy.port, &big_query(300_000)).await;
    }

    // Bounded memory means the growth does not follow the rows: ten times the rows, about the same growth.
    // tokio-postgres consumes row by row with pauses; psql streams to /dev/null as fast as it can.
    let small = rss_growth_of(pid, stream_rows(&c, SMALL)).await;
    let large = rss_growth_of(pid, stream_rows(&c, LARGE_RESULT)).await;
    eprintln!(
        "tokio-postgres: growth {} kB for {SMALL} rows, {} kB for {LARGE_RESULT} rows",
        small / 1024,
        large / 1024
    );
    assert!(
        large <= small + MARGIN,
        "pgfleet grew by {} kB streaming {LARGE_RESULT} rows but {} kB for {SMALL}: memory follows the rows",
        large / 1024,
        small / 1024
    );

    let small = rss_growth_of(pid, psql_to_dev_null(proxy.port, &big_query(SMALL))).await;
    let large = rss_growth_of(pid, psql_to_dev_null(proxy.port, &big_query(LARGE_RESULT))).await;
    eprintln!(
        "psql: growth {} kB for {SMALL} rows, {} kB for {LARGE_RESULT} rows",
        small / 1024,
        large / 1024
    );
    assert!(
        large <= small + MARGIN,
        "pgfleet grew by {} kB streaming {LARGE_RESULT} rows to psql but {} kB for {SMALL}: memory follows the rows",
        large / 1024,
        small / 1024
    );
    assert_eq!(one(&c, "SELECT 'still here'").await, "still here");
}

/// One extended-protocol message: type byte, length, body.
fn msg(kind: u8, parts: &[&[u8]]) -> Vec<u8> {
    build(kind, &parts.concat()).to_vec()
}

/// What a cursor client (node-postgres' pg-cursor, pg-query-stream) sends for one small cursor, grouped by
/// the Flush or Sync that asks for each group's replies, with the replies' message types.
fn cursor_conversation() -> Vec<(Vec<u8>, &'static [u8])> {
    let no_params: &[u8] = &[0, 0];
    vec![
        (
            [
                msg(b'P', &[b"\0SELECT g FROM generate_series(1, 3) g\0", no_params]),
                msg(b'B', &[b"\0\0", no_params, no_params, no_params]),
                msg(b'D', &[b"P\0"]),
                msg(b'H', &[]),
            ]
            .concat(),
            b"12T",
        ),
        (
            [msg(b'E', &[b"\0", &2i32.to_be_bytes()]), msg(b'H', &[])].concat(),
            b"DDs",
        ),
        (
            [msg(b'E', &[b"\0", &0i32.to_be_bytes()]), msg(b'H', &[])].concat(),
            b"DC",
        ),
        ([msg(b'C', &[b"P\0"]), msg(b'S', &[])].concat(), b"3Z"),
    ]
}

/// Reads replies and checks their types, in order.
async fn expect_kinds(raw: &mut Raw, kinds: &[u8], context: &str) {
    for want in kinds {
        let (kind, body) = raw
            .frame()
            .await
            .unwrap_or_else(|| panic!("{context}: connection closed waiting for '{}'", *want as char));
        assert_eq!(
            kind as char,
            *want as char,
            "{context}: unexpected reply {:?}",
            error_field(&body, b'M')
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_after_a_flush_are_forwarded_however_the_reads_split_them() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let groups = cursor_conversation();
    let bytes: Vec<u8> = groups.iter().flat_map(|(b, _)| b.clone()).collect();
    let all_replies: Vec<u8> = groups.iter().flat_map(|(_, k)| k.to_vec()).collect();
    // Where each group ends in `bytes`, with the replies due up to there.
    let mut ends = Vec::new();
    let mut at = 0;
    let mut due = Vec::new();
    for (b, kinds) in &groups {
        at += b.len();
        due.extend_from_slice(kinds);
        ends.push((at, due.clone()));
    }
    let mut raw = Raw::connect(proxy.port).await;
    raw.login_app().await;
    // Every cut of the conversation into two writes: both halves at once (one read or two, as the proxy's
    // reads fall), and at each Flush boundary the first half's replies awaited before the second half is sent
    // (certainly two reads). The session is reused, so a request left half-forwarded shows on the next cut.
    for cut in 0..=bytes.len() {
        let context = format!("cut at byte {cut} of {}", bytes.len());
        raw.send(&bytes[..cut]).await;
        match ends.iter().find(|(end, _)| *end == cut) {
            Some((_, replies)) => {
                expect_kinds(&mut raw, replies, &context).await;
                raw.send(&bytes[cut..]).await;
                expect_kinds(&mut raw, &all_replies[replies.len()..], &context).await;
            }
            None => {
                raw.send(&bytes[cut..]).await;
                expect_kinds(&mut raw, &all_replies, &context).await;
            }
        }
    }
    // The whole conversation twice in one write: the second copy waits in the buffer behind the first Sync.
    raw.send(&[bytes.clone(), bytes].concat()).await;
    expect_kinds(
        &mut raw,
        &[all_replies.clone(), all_replies].concat(),
        "two conversations in one write",
    )
    .await;
}

/// Resets the peak RSS (VmHWM) of a process, so that the next reading is the peak of what follows.
fn reset_peak(pid: u32) {
    std::fs::write(format!("/proc/{pid}/clear_refs"), "5")
        .expect("reset VmHWM through /proc/<pid>/clear_refs");
}

/// Runs `work` on `c` and returns (peak RSS growth, RSS growth left afterwards) of `pid`, in bytes. A small
/// query on the same connection before and after is the barrier: a session forgets a request before it
/// reads the next one, so once that query is answered the large request is no longer held.
async fn rss_growth<F: std::future::Future<Output = ()>>(
    pid: u32,
    c: &tokio_postgres::Client,
    work: F,
) -> (u64, u64) {
    assert_eq!(one(c, "SELECT 'before'").await, "before");
    let before = rss(pid);
    reset_peak(pid);
    work.await;
    let peak = hwm(pid);
    assert_eq!(one(c, "SELECT 'after'").await, "after");
    let after = rss(pid);
    eprintln!(
        "RSS before {} kB, peak {} kB, after {} kB",
        before / 1024,
        peak / 1024,
        after / 1024
    );
    (peak.saturating_sub(before), after.saturating_sub(before))
}

const LARGE: usize = 64 * 1024 * 1024;

/// The first column of the first row in a simple query's answer.
fn first_value(messages: &[SimpleQueryMessage]) -> Option<String> {
    messages.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_large_request_is_held_once_and_given_back() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let pid = proxy.pid();
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let c = connect(&dsn).await;
    let big = "x".repeat(LARGE);
    let simple = format!("SELECT length('{big}')");
    // Warm up: the first large messages a process sees grow the allocator's arenas once.
    for _ in 0..2 {
        let rows = c.simple_query(&simple).await.expect("large simple query");
        assert_eq!(first_value(&rows).as_deref(), Some(&*LARGE.to_string()));
    }
    let (peak, left) = rss_growth(pid, &c, async {
        let rows = c.simple_query(&simple).await.expect("large simple query");
        assert_eq!(first_value(&rows).as_deref(), Some(&*LARGE.to_string()));
    })
    .await;
    eprintln!(
        "simple protocol, {LARGE} byte query: peak growth {} kB, left {} kB",
        peak / 1024,
        left / 1024
    );
    let (peak2, left2) = rss_growth(pid, &c, async {
        let row = c
            .query_one("SELECT length($1::text)", &[&big])
            .await
            .expect("large bind");
        assert_eq!(row.get::<_, i32>(0) as usize, LARGE);
    })
    .await;
    eprintln!(
        "extended protocol, {LARGE} byte parameter: peak growth {} kB, left {} kB",
        peak2 / 1024,
        left2 / 1024
    );
    let (peak3, left3) = rss_growth(pid, &c, async {
        let rows = c
            .simple_query(&format!("SELECT repeat('x', {LARGE})"))
            .await
            .expect("large reply");
        assert_eq!(first_value(&rows).map(|v| v.len()), Some(LARGE));
    })
    .await;
    eprintln!(
        "a {LARGE} byte reply: peak growth {} kB, left {} kB",
        peak3 / 1024,
        left3 / 1024
    );
    // Four sessions at once, a quarter of the size each: the sum is what counts.
    let others = futures_util::future::join_all((0..4).map(|_| connect(&dsn))).await;
    let quarter = format!("SELECT length('{}')", &big[..LARGE / 4]);
    let (peak4, _) = rss_growth(pid, &c, async {
        let answers = futures_util::future::join_all(others.iter().map(|o| o.simple_query(&quarter))).await;
        for rows in answers {
            assert_eq!(
                first_value(&rows.expect("quarter query")),
                Some((LARGE / 4).to_string())
            );
        }
    })
    .await;
    eprintln!(
        "four {} byte queries at once: peak growth {} kB",
        LARGE / 4,
        peak4 / 1024
    );
    let limit = LARGE as u64 * 3 / 2;
    for (what, peak) in [
        ("query", peak),
        ("Bind", peak2),
        ("reply", peak3),
        ("four quarter-size queries", peak4),
    ] {
        assert!(
            peak <= limit,
            "a {LARGE}-byte {what} raised pgfleet's RSS by {} kB (limit 1.5x)",
            peak / 1024
        );
    }
    let kept = LARGE as u64 / 8;
    for (what, left) in [("query", left), ("Bind", left2), ("reply", left3)] {
        assert!(
            left <= kept,
            "pgfleet kept {} kB after a {LARGE}-byte {what}",
            left / 1024
        );
    }
}
