//! Client sessions through a real pgfleet: protocol 3.0 over TCP, SSLRequest / GSSENCRequest negotiation with
//! and without TLS, client authentication per user (SCRAM-SHA-256, md5, trust) and its failures, per-session
//! cancel keys, and passwords kept out of the log. Raw sockets are used where a driver would hide the bytes.

use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async, wait_running};
use crate::support::one;
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use crate::support::raw::{Raw, data_rows, send_cancel, sqlstate};
use pgfleet::protocol::frame::build;
use pgfleet::protocol::messages::{error_field, query};
use pgfleet::protocol::startup::encode_startup;

const SSL_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
const GSSENC_REQUEST: [u8; 8] = [0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30];

/// Runs psql against the proxy; returns (success, stdout, stderr).
async fn psql(
    port: u16,
    user: &str,
    password: &str,
    sslmode: &str,
    commands: &[&str],
) -> (bool, String, String) {
    let mut cmd = tokio::process::Command::new("psql");
    cmd.arg("-X")
        .arg("-A")
        .arg("-t")
        .arg("-v")
        .arg("ON_ERROR_STOP=1")
        .arg(format!(
            "host=127.0.0.1 port={port} user={user} dbname={APP_DB} sslmode={sslmode}"
        ))
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE");
    for c in commands {
        cmd.arg("-c").arg(c);
    }
    let out = tokio::time::timeout(Duration::from_secs(30), cmd.output())
        .await
        .expect("psql finished in time")
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ssl_and_gssenc_requests_are_declined_without_tls() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let replicas: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();

    // SSLRequest: 'N', then a normal 3.0 startup on the same socket.
    let mut raw = Raw::connect(proxy.port).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(
        raw.read_byte().await,
        b'N',
        "no TLS configured: SSLRequest is declined"
    );
    let (pid, secret) = raw
        .login(APP_USER, PASSWORD, APP_DB)
        .await
        .expect("startup after 'N'");
    assert!(pid != 0 || secret != 0, "BackendKeyData carries a key");
    let msgs = raw.simple("SELECT inet_server_port()").await;
    let ports = data_rows(&msgs);
    assert_eq!(ports.len(), 1, "{msgs:?}");
    assert!(replicas.contains(&ports[0]), "a read on a replica: {ports:?}");
    assert_eq!(
        msgs.last().map(|m| m.1.clone()),
        Some(b"I".to_vec()),
        "idle after the query"
    );
    raw.send(&build(b'X', b"")).await;

    // GSSENCRequest: 'N'; the client may then ask for SSL ('N' again) and start up.
    let mut raw = Raw::connect(proxy.port).await;
    raw.send(&GSSENC_REQUEST).await;
    assert_eq!(raw.read_byte().await, b'N', "GSSENCRequest is declined");
    raw.send(&SSL_REQUEST).await;
    assert_eq!(
        raw.read_byte().await,
        b'N',
        "SSLRequest after GSSENCRequest is declined"
    );
    raw.login(APP_USER, PASSWORD, APP_DB)
        .await
        .expect("startup after GSSENC and SSL refusals");
    assert_eq!(
        data_rows(&raw.simple("SELECT 40 + 2").await),
        vec!["42".to_owned()]
    );

    // Protocol 2.0 is not spoken.
    let mut raw = Raw::connect(proxy.port).await;
    let mut v2 = encode_startup(&[("user", APP_USER), ("database", APP_DB)]).to_vec();
    v2[4..8].copy_from_slice(&0x0002_0000i32.to_be_bytes());
    raw.send(&v2).await;
    let (kind, body) = raw.frame().await.expect("an error for protocol 2.0");
    assert_eq!(kind, b'E');
    assert_eq!(error_field(&body, b'S'), Some("FATAL"));
    assert_eq!(sqlstate(&body), "0A000", "{:?}", error_field(&body, b'M'));
    assert!(
        raw.frame().await.is_none(),
        "the connection is closed after the FATAL"
    );

    // libpq: sslmode=prefer falls back to clear text, sslmode=require gives up.
    let (ok, out, err) = psql(
        proxy.port,
        APP_USER,
        PASSWORD,
        "prefer",
        &["SELECT 7 * 6", "\\conninfo"],
    )
    .await;
    assert!(ok, "psql sslmode=prefer: {err}");
    assert!(out.starts_with("42\n"), "{out}");
    assert!(
        !out.contains("SSL connection"),
        "no TLS without a certificate: {out}"
    );
    let (ok, _, err) = psql(proxy.port, APP_USER, PASSWORD, "require", &["SELECT 1"]).await;
    assert!(!ok, "sslmode=require must fail when pgfleet has no TLS");
    assert!(
        err.contains("SSL"),
        "libpq explains that the server refused SSL: {err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_is_offered_when_a_certificate_is_configured() {
    let cluster = cluster_async().await;
    let dir = tempfile::tempdir().expect("temp dir");
    let cert = dir.path().join("server.crt");
    let key = dir.path().join("server.key");
    let out = std::process::Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .args(["-days", "2", "-subj", "/CN=localhost"])
        .output()
        .expect("run openssl");
    assert!(
        out.status.success(),
        "openssl: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let port = free_port();
    let listen = format!("address = \"127.0.0.1:{port}\"\n");
    let text = Proxy::config_for(&cluster, port, "").replacen(
        &listen,
        &format!(
            "{listen}tls_cert = \"{}\"\ntls_key = \"{}\"\n",
            cert.display(),
            key.display()
        ),
        1,
    );
    assert!(text.contains("tls_cert"), "{text}");
    let proxy = Proxy::start_with_config(text);

    // The raw answer is 'S'.
    let mut raw = Raw::connect(proxy.port).await;
    raw.send(&SSL_REQUEST).await;
    assert_eq!(
        raw.read_byte().await,
        b'S',
        "TLS configured: SSLRequest is accepted"
    );
    drop(raw);

    let (ok, out, err) = psql(
        proxy.port,
        APP_USER,
        PASSWORD,
        "require",
        &[
            "SELECT 'over-tls-' || count(*) FROM pg_class WHERE relname = 'pg_class'",
            "\\conninfo",
        ],
    )
    .await;
    assert!(
        ok,
        "psql sslmode=require through pgfleet with TLS: {err}\n--- log ---\n{}",
        proxy.log_tail(40)
    );
    assert!(out.contains("over-tls-1"), "{out}");
    assert!(out.contains("SSL connection"), "\\conninfo reports SSL: {out}");

    // A write and a read in one TLS session.
    let (ok, out, err) = psql(
        proxy.port,
        APP_USER,
        PASSWORD,
        "require",
        &[
            "CREATE TABLE tls_t (v text); INSERT INTO tls_t VALUES ('secure')",
            "/* pgfleet:primary */ SELECT v FROM tls_t",
        ],
    )
    .await;
    assert!(ok, "{err}");
    assert!(out.contains("secure"), "{out}");

    // Clear text still works on the same listener.
    let (ok, out, err) = psql(
        proxy.port,
        APP_USER,
        PASSWORD,
        "disable",
        &["SELECT 'plain-ok'", "\\conninfo"],
    )
    .await;
    assert!(ok, "psql sslmode=disable: {err}");
    assert!(out.contains("plain-ok"), "{out}");
    assert!(
        !out.contains("SSL connection"),
        "sslmode=disable is not encrypted: {out}"
    );
    let plain = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert_eq!(one(&plain, "SELECT 'tokio-plain'").await, "tokio-plain");
    // A wrong password over TLS is still refused.
    let (ok, _, err) = psql(proxy.port, APP_USER, "not-the-password", "require", &["SELECT 1"]).await;
    assert!(!ok);
    assert!(
        err.contains("password authentication failed for user \"app\""),
        "{err}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_user_authenticates_with_its_configured_method() {
    let cluster = cluster_async().await;
    for sql in [
        "CREATE ROLE u_md5 LOGIN PASSWORD 'pw-md5-3k'",
        "CREATE ROLE u_trust LOGIN PASSWORD 'pw-trust-9x'",
        "CREATE ROLE u_scram LOGIN PASSWORD 'pw-scram-2q'",
    ] {
        cluster
            .psql(&cluster.primary, "postgres", sql)
            .expect("create role");
    }
    cluster
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("roles replicated");
    let proxy = Proxy::start(
        &cluster,
        "[[users]]\nname = \"u_md5\"\npassword = \"pw-md5-3k\"\nauth = \"md5\"\n\n\
         [[users]]\nname = \"u_trust\"\npassword = \"pw-trust-9x\"\nauth = \"trust\"\n\n\
         [[users]]\nname = \"u_scram\"\npassword = \"pw-scram-2q\"\nauth = \"scram-sha-256\"\n",
    );

    // The method pgfleet asks for, per user; SCRAM is the default (app has no `auth`).
    assert_eq!(
        Raw::first_auth_request(proxy.port, APP_USER).await,
        10,
        "app: SCRAM-SHA-256 by default"
    );
    assert_eq!(
        Raw::first_auth_request(proxy.port, "u_scram").await,
        10,
        "u_scram: SCRAM-SHA-256"
    );
    assert_eq!(
        Raw::first_auth_request(proxy.port, "u_md5").await,
        5,
        "u_md5: md5"
    );
    assert_eq!(
        Raw::first_auth_request(proxy.port, "u_trust").await,
        0,
        "u_trust: no password asked"
    );

    // psql with PGPASSWORD, default SCRAM.
    let (ok, out, err) = psql(
        proxy.port,
        APP_USER,
        PASSWORD,
        "disable",
        &["SELECT current_user"],
    )
    .await;
    assert!(ok, "psql as app: {err}");
    assert_eq!(out.trim(), "app");

    // Each user logs in with the right password and runs as itself, on a replica and on the primary.
    for (user, password) in [
        ("u_scram", "pw-scram-2q"),
        ("u_md5", "pw-md5-3k"),
        ("u_trust", "pw-trust-9x"),
    ] {
        let c = connect(&proxy.dsn(user, password, APP_DB)).await;
        assert_eq!(one(&c, "SELECT current_user").await, user);
        assert_eq!(one(&c, "/* pgfleet:primary */ SELECT session_user").await, user);
        let (ok, out, err) = psql(proxy.port, user, password, "disable", &["SELECT current_user"]).await;
        assert!(ok, "psql as {user}: {err}");
        assert_eq!(out.trim(), user);
    }
    // Raw md5 and SCRAM exchanges succeed too.
    let mut raw = Raw::connect(proxy.port).await;
    raw.login("u_md5", "pw-md5-3k", APP_DB)
        .await
        .expect("raw md5 login");
    assert_eq!(
        data_rows(&raw.simple("SELECT current_user").await),
        vec!["u_md5".to_owned()]
    );

    // Wrong passwords: refused for SCRAM and md5 users; trust does not care.
    for user in ["u_scram", "u_md5"] {
        let err = try_connect(&proxy.dsn(user, "wrong-pw", APP_DB))
            .await
            .expect_err("wrong password refused");
        let db = err
            .as_db_error()
            .unwrap_or_else(|| panic!("{user}: a server error, got {err}"));
        assert_eq!(db.code().code(), "28P01", "{user}: {db}");
        assert_eq!(
            db.message(),
            format!("password authentication failed for user \"{user}\"")
        );
    }
    let c = connect(&proxy.dsn("u_trust", "anything-at-all", APP_DB)).await;
    assert_eq!(one(&c, "SELECT current_user").await, "u_trust");
    let (ok, out, err) = psql(proxy.port, "u_trust", "", "disable", &["SELECT current_user"]).await;
    assert!(ok, "trust needs no password: {err}");
    assert_eq!(out.trim(), "u_trust");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_failures_are_reported_like_postgres() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");

    // Wrong password.
    let err = try_connect(&proxy.dsn(APP_USER, "not-secret", APP_DB))
        .await
        .expect_err("wrong password");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error, got {err}"));
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.code().code(), "28P01");
    assert_eq!(db.message(), "password authentication failed for user \"app\"");

    // Unknown user: the same code and wording (nothing reveals which roles exist).
    let err = try_connect(&proxy.dsn("ghost_user", "whatever", APP_DB))
        .await
        .expect_err("unknown user");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error, got {err}"));
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.code().code(), "28P01");
    assert_eq!(
        db.message(),
        "password authentication failed for user \"ghost_user\""
    );

    // Unknown database.
    let err = try_connect(&proxy.dsn(APP_USER, PASSWORD, "no_such_db"))
        .await
        .expect_err("unknown db");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error, got {err}"));
    assert_eq!(db.severity(), "FATAL");
    assert_eq!(db.code().code(), "3D000");
    assert!(
        db.message().contains("\"no_such_db\""),
        "names the database: {}",
        db.message()
    );

    // Raw: the wrong-password FATAL is followed by the end of the connection.
    let mut raw = Raw::connect(proxy.port).await;
    let body = raw
        .login(APP_USER, "still-wrong", APP_DB)
        .await
        .expect_err("refused");
    assert_eq!(sqlstate(&body), "28P01");
    assert_eq!(error_field(&body, b'S'), Some("FATAL"));
    assert!(raw.frame().await.is_none(), "closed after the FATAL");

    // psql sees the same.
    let (ok, _, err) = psql(proxy.port, APP_USER, "nope", "disable", &["SELECT 1"]).await;
    assert!(!ok);
    assert!(
        err.contains("password authentication failed for user \"app\""),
        "{err}"
    );

    // A user name that is not UTF-8 (here Latin-1 "café"): the error names the parameter.
    let mut raw = Raw::connect(proxy.port).await;
    let mut list = b"user\0caf\xe9\0database\0app\0\0".to_vec();
    let mut packet = ((list.len() + 8) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&196608i32.to_be_bytes());
    packet.append(&mut list);
    raw.send(&packet).await;
    let (kind, body) = raw.frame().await.expect("an error for the Latin-1 user name");
    assert_eq!(kind, b'E');
    assert_eq!(error_field(&body, b'S'), Some("FATAL"));
    assert_eq!(sqlstate(&body), "08P01");
    assert_eq!(
        error_field(&body, b'M'),
        Some("invalid startup packet: parameter \"user\" is not valid UTF-8")
    );
    assert!(raw.frame().await.is_none(), "closed after the FATAL");

    // And none of this disturbed a good session.
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert_eq!(one(&c, "SELECT 'still fine'").await, "still fine");
}

/// Runs `SELECT pg_sleep(20)` on `client` in a task, cancels it after it started, and checks that it ends
/// with 57014 within 2 s of the cancel. Gives the client back.
async fn cancel_sleep(
    client: tokio_postgres::Client,
    sleeping_on: &[&crate::support::cluster::NodeHandle],
) -> tokio_postgres::Client {
    let token = client.cancel_token();
    let task = tokio::spawn(async move {
        let r = client.simple_query("SELECT pg_sleep(20)").await;
        (client, r)
    });
    // Wait until the statement runs on one of the expected nodes.
    let deadline = Instant::now() + Duration::from_secs(10);
    'seen: loop {
        for node in sleeping_on {
            let n = node
                .psql(
                    "postgres",
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)' AND state = 'active'",
                )
                .expect("pg_stat_activity");
            if n == "1" {
                break 'seen;
            }
        }
        assert!(
            Instant::now() < deadline,
            "the sleep never showed up on the expected node(s)"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let cancelled_at = Instant::now();
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send the cancel request");
    let (client, result) = tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("the cancelled query ends within 5 s")
        .expect("query task");
    let elapsed = cancelled_at.elapsed();
    let err = result.expect_err("a cancelled query fails");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("a server error, got {err}"));
    assert_eq!(db.code().code(), "57014", "{db}");
    assert!(elapsed < Duration::from_secs(2), "cancel took {elapsed:?}");
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_reaches_the_running_query_on_a_replica_and_in_a_primary_transaction() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let primary = cluster.primary.port.to_string();
    let replicas: Vec<&crate::support::cluster::NodeHandle> = cluster.replicas.iter().collect();

    // On a replica, outside a transaction.
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let c = cancel_sleep(c, &replicas).await;
    assert_eq!(
        one(&c, "SELECT 'after cancel'").await,
        "after cancel",
        "the session goes on"
    );

    // Inside a read-write transaction, on the primary.
    c.batch_execute("CREATE TABLE cancel_t (id int)")
        .await
        .expect("create");
    c.batch_execute("BEGIN").await.expect("begin");
    c.batch_execute("INSERT INTO cancel_t VALUES (1)")
        .await
        .expect("insert");
    assert_eq!(
        one(&c, "SELECT inet_server_port()").await,
        primary,
        "the transaction runs on the primary"
    );
    let c = cancel_sleep(c, &[&cluster.primary]).await;
    let err = c
        .simple_query("SELECT 1")
        .await
        .expect_err("the transaction is aborted");
    assert_eq!(err.as_db_error().expect("db error").code().code(), "25P02");
    c.batch_execute("ROLLBACK").await.expect("rollback");
    assert_eq!(
        one(&c, "/* pgfleet:primary */ SELECT count(*) FROM cancel_t").await,
        "0"
    );

    // A cancel for an idle session is harmless, and the next query runs to completion. A raw session, so
    // that the cancel is known to be handled (pgfleet closes the cancel socket) before the query starts.
    drop(c);
    let mut idle = Raw::connect(proxy.port).await;
    let key = idle.login_app().await;
    send_cancel(proxy.port, key.0, key.1).await;
    let msgs = idle.simple("SELECT pg_sleep(0.3)::text || 'done'").await;
    assert_eq!(data_rows(&msgs), vec!["done".to_owned()], "{msgs:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cancel_keys_are_per_session_and_wrong_keys_do_nothing() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let mut a = Raw::connect(proxy.port).await;
    let key_a = a.login(APP_USER, PASSWORD, APP_DB).await.expect("login a");
    let mut b = Raw::connect(proxy.port).await;
    let key_b = b.login(APP_USER, PASSWORD, APP_DB).await.expect("login b");
    assert_ne!(key_a, key_b, "each session has its own cancel key");

    // The key is pgfleet's own, not a node backend's.
    let backend_pids: Vec<String> = {
        let mut pids = data_rows(&a.simple("SELECT pg_backend_pid()").await);
        pids.extend(data_rows(
            &a.simple("/* pgfleet:primary */ SELECT pg_backend_pid()").await,
        ));
        pids
    };
    assert!(
        !backend_pids.contains(&key_a.0.to_string()),
        "key {key_a:?} vs backends {backend_pids:?}"
    );

    a.send(&query("SELECT pg_sleep(20)")).await;
    b.send(&query("SELECT pg_sleep(20)")).await;
    wait_running(&cluster, "SELECT pg_sleep(20)", 2).await;

    // Wrong keys: the secret off by one, the pid off by one, and the other session's pid with our secret.
    send_cancel(proxy.port, key_a.0, key_a.1.wrapping_add(1)).await;
    send_cancel(proxy.port, key_a.0.wrapping_add(1), key_a.1).await;
    send_cancel(proxy.port, key_b.0, key_a.1).await;
    assert!(
        a.still_running(Duration::from_millis(1500)).await,
        "a wrong key cancelled nothing (a)"
    );
    assert!(
        b.still_running(Duration::from_millis(10)).await,
        "a wrong key cancelled nothing (b)"
    );

    // A's key cancels A only.
    let sent = Instant::now();
    send_cancel(proxy.port, key_a.0, key_a.1).await;
    let msgs = a.until_ready(Duration::from_secs(2)).await;
    assert!(sent.elapsed() < Duration::from_secs(2));
    let errors: Vec<&str> = msgs
        .iter()
        .filter(|(k, _)| *k == b'E')
        .map(|(_, b)| sqlstate(b))
        .collect();
    assert_eq!(errors, vec!["57014"], "{msgs:?}");
    assert_eq!(msgs.last().map(|m| m.1.clone()), Some(b"I".to_vec()));
    assert!(
        b.still_running(Duration::from_millis(1000)).await,
        "b is still sleeping"
    );

    // B's key cancels B.
    send_cancel(proxy.port, key_b.0, key_b.1).await;
    let msgs = b.until_ready(Duration::from_secs(2)).await;
    let errors: Vec<&str> = msgs
        .iter()
        .filter(|(k, _)| *k == b'E')
        .map(|(_, b)| sqlstate(b))
        .collect();
    assert_eq!(errors, vec!["57014"], "{msgs:?}");

    // Both sessions carry on.
    assert_eq!(
        data_rows(&a.simple("SELECT 'a ok'").await),
        vec!["a ok".to_owned()]
    );
    assert_eq!(
        data_rows(&b.simple("SELECT 'b ok'").await),
        vec!["b ok".to_owned()]
    );
    // After a session ends its key is void: it must not cancel anything, including a new session's query.
    let mut c = Raw::connect(proxy.port).await;
    let key_c = c.login(APP_USER, PASSWORD, APP_DB).await.expect("login c");
    a.send(&build(b'X', b"")).await;
    assert!(a.frame().await.is_none(), "a closed");
    c.send(&query("SELECT pg_sleep(3)")).await;
    wait_running(&cluster, "SELECT pg_sleep(3)", 1).await;
    send_cancel(proxy.port, key_a.0, key_a.1).await;
    let msgs = c.until_ready(Duration::from_secs(10)).await;
    assert!(
        msgs.iter().all(|(k, _)| *k != b'E'),
        "c's sleep was not cancelled by a's old key"
    );
    assert_ne!(key_c, key_a);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passwords_never_reach_the_log() {
    const MD5_PW: &str = "Md5-Pw-Qx81vT";
    const SCRAM_PW: &str = "Scram-Pw-Lm42zR";
    const NODE_MISMATCH_PW: &str = "Cfg-Pw-Hj73kW";
    const WRONG_GUESS: &str = "Wrong-Guess-Pp09aB";
    let cluster = cluster_async().await;
    for sql in [
        format!("CREATE ROLE log_md5 LOGIN PASSWORD '{MD5_PW}'"),
        format!("CREATE ROLE log_scram LOGIN PASSWORD '{SCRAM_PW}'"),
        // The node knows this role with another password than pgfleet's config: the node login fails.
        "CREATE ROLE log_mismatch LOGIN PASSWORD 'node-side-other'".to_owned(),
    ] {
        cluster
            .psql(&cluster.primary, "postgres", &sql)
            .expect("create role");
    }
    cluster
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("roles replicated");
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[[users]]\nname = \"log_md5\"\npassword = \"{MD5_PW}\"\nauth = \"md5\"\n\n\
             [[users]]\nname = \"log_scram\"\npassword = \"{SCRAM_PW}\"\n\n\
             [[users]]\nname = \"log_mismatch\"\npassword = \"{NODE_MISMATCH_PW}\"\nauth = \"md5\"\n\n\
             [log]\nlevel = \"debug\"\n"
        ),
    );

    for (user, pw) in [("log_md5", MD5_PW), ("log_scram", SCRAM_PW)] {
        let c = connect(&proxy.dsn(user, pw, APP_DB)).await;
        assert_eq!(one(&c, "SELECT current_user").await, user);
        c.batch_execute("SET application_name = 'log-test'")
            .await
            .expect("set");
        assert_eq!(one(&c, "/* pgfleet:primary */ SELECT 1").await, "1");
        let (ok, _, err) = psql(proxy.port, user, pw, "disable", &["SELECT 1"]).await;
        assert!(ok, "{err}");
        assert!(
            try_connect(&proxy.dsn(user, WRONG_GUESS, APP_DB)).await.is_err(),
            "wrong password refused"
        );
    }
    assert!(
        try_connect(&proxy.dsn("nobody_here", WRONG_GUESS, APP_DB))
            .await
            .is_err()
    );
    let (ok, _, _) = psql(proxy.port, "log_scram", WRONG_GUESS, "disable", &["SELECT 1"]).await;
    assert!(!ok);
    // The client proves the configured password, but the node refuses it.
    let err = try_connect(&proxy.dsn("log_mismatch", NODE_MISMATCH_PW, APP_DB))
        .await
        .expect_err("node refuses");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("28P01"), "{err}");
    let (ok, _, _) = psql(proxy.port, APP_USER, PASSWORD, "disable", &["SELECT 1"]).await;
    assert!(ok);

    // Give the log a moment to be written, then look for every password.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let log = proxy.log_contents();
    assert!(
        log.contains("DEBUG"),
        "debug logging is on, so the check is not vacuous:\n{log}"
    );
    assert!(log.lines().count() > 10, "sessions were logged:\n{log}");
    for pw in [MD5_PW, SCRAM_PW, NODE_MISMATCH_PW, WRONG_GUESS, "node-side-other"] {
        let hits: Vec<&str> = log.lines().filter(|l| l.contains(pw)).collect();
        assert!(
            hits.is_empty(),
            "password {pw:?} appears in the pgfleet log:\n{}",
            hits.join("\n")
        );
    }
    let app_pw_hits: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("password={PASSWORD}")) || l.contains("\"secret\""))
        .collect();
    assert!(
        app_pw_hits.is_empty(),
        "the app password appears in the log:\n{}",
        app_pw_hits.join("\n")
    );
}
