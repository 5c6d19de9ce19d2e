//! "The pid a client was given is the pid it meets": notifications carry the pid pgfleet issued to the
//! notifying client, `pg_backend_pid()` is the pid of the session's primary connection, and
//! `pg_cancel_backend` / `pg_terminate_backend` of either pid act on that client session, wherever its
//! request runs, with PostgreSQL's answers and permission rule. A real fleet (a primary, two replicas),
//! raw protocol clients (which see BackendKeyData and every message), tokio-postgres (the extended
//! protocol with a binary int4 parameter) and node-postgres.

use std::time::{Duration, Instant};

use crate::support::clients::{node_command, run};
use crate::support::cluster::{APP_DB, APP_USER, LocalCluster, NodeHandle, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use crate::support::raw::{Msg, Raw, data_rows, send_cancel, sqlstate};
use crate::support::wait_until;
use pgfleet::protocol::messages::{error_field, query};

/// Session pooling: a node pid names the client only while the client holds that connection, which under
/// session pooling is the whole session.
const SESSION_POOL: &str = "[pool]\nmode = \"session\"\n";

const OTHER_USER: &str = "pids_other";
const OTHER_PASSWORD: &str = "other-secret";

/// The (pid, channel, payload) of each NotificationResponse in `msgs`.
fn notifications(msgs: &[Msg]) -> Vec<(i32, String, String)> {
    msgs.iter()
        .filter(|(k, _)| *k == b'A')
        .map(|(_, b)| {
            let pid = i32::from_be_bytes([b[0], b[1], b[2], b[3]]);
            let mut parts = b[4..].split(|c| *c == 0);
            let channel = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            let payload = String::from_utf8_lossy(parts.next().unwrap_or_default()).into_owned();
            (pid, channel, payload)
        })
        .collect()
}

/// (name, type oid, format) of each column of the RowDescription in `msgs`.
fn columns(msgs: &[Msg]) -> Vec<(String, u32, i16)> {
    let (_, body) = msgs
        .iter()
        .find(|(k, _)| *k == b'T')
        .unwrap_or_else(|| panic!("no RowDescription in {msgs:?}"));
    let count = i16::from_be_bytes([body[0], body[1]]) as usize;
    let mut at = 2;
    let mut out = Vec::new();
    for _ in 0..count {
        let nul = body[at..].iter().position(|b| *b == 0).expect("column name") + at;
        let name = String::from_utf8_lossy(&body[at..nul]).into_owned();
        let f = &body[nul + 1..];
        let oid = u32::from_be_bytes([f[6], f[7], f[8], f[9]]);
        let format = i16::from_be_bytes([f[16], f[17]]);
        out.push((name, oid, format));
        at = nul + 1 + 18;
    }
    out
}

/// The message kinds of `msgs`, as a string (e.g. "TDCZ").
fn kinds(msgs: &[Msg]) -> String {
    msgs.iter().map(|(k, _)| *k as char).collect()
}

/// The (SQLSTATE, message, detail) of each ErrorResponse in `msgs`.
fn errors(msgs: &[Msg]) -> Vec<(String, String, String)> {
    msgs.iter()
        .filter(|(k, _)| *k == b'E')
        .map(|(_, b)| {
            (
                sqlstate(b).to_owned(),
                error_field(b, b'M').unwrap_or("").to_owned(),
                error_field(b, b'D').unwrap_or("").to_owned(),
            )
        })
        .collect()
}

/// Asserts `msgs` is PostgreSQL's answer to a simple-query signal call: one bool column named after the
/// function, one row with `value`, `SELECT 1`.
fn assert_bool_answer(msgs: &[Msg], function: &str, value: &str) {
    assert_eq!(columns(msgs), vec![(function.to_owned(), 16, 0)], "{msgs:?}");
    assert_eq!(data_rows(msgs), vec![value.to_owned()], "{msgs:?}");
    let tag = msgs
        .iter()
        .find(|(k, _)| *k == b'C')
        .map(|(_, b)| String::from_utf8_lossy(b).trim_end_matches('\0').to_owned());
    assert_eq!(tag.as_deref(), Some("SELECT 1"), "{msgs:?}");
    assert_eq!(msgs.last().cloned(), Some((b'Z', b"I".to_vec())));
}

/// How many backends of `node` run exactly `sql` now.
async fn running_on(node: &NodeHandle, sql: &str) -> i64 {
    let c = connect(&node.dsn("postgres", PASSWORD, "postgres")).await;
    c.query_one(
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
        &[&sql],
    )
    .await
    .expect("pg_stat_activity")
    .get(0)
}

/// Waits until `sql` runs on some node of the fleet; returns whether that is a replica.
async fn started_on_replica(cluster: &LocalCluster, sql: &str) -> bool {
    wait_until(Duration::from_secs(10), async || {
        if running_on(&cluster.primary, sql).await > 0 {
            return Some(false);
        }
        for r in &cluster.replicas {
            if running_on(r, sql).await > 0 {
                return Some(true);
            }
        }
        None
    })
    .await
    .unwrap_or_else(|| panic!("`{sql}` is not running on any node"))
}

/// The first column of a one-row simple query on a raw client.
async fn value(c: &mut Raw, sql: &str) -> String {
    let msgs = c.simple(sql).await;
    data_rows(&msgs)
        .into_iter()
        .next()
        .unwrap_or_else(|| panic!("{sql}: no row in {msgs:?}"))
}

/// Asserts that a query sent earlier on `c` ends with SQLSTATE 57014 within a few seconds of `since`.
async fn assert_cancelled(c: &mut Raw, since: Instant, who: &str) {
    let msgs = c.until_ready(Duration::from_secs(10)).await;
    assert_eq!(
        errors(&msgs).into_iter().map(|e| e.0).collect::<Vec<_>>(),
        vec!["57014".to_owned()],
        "{who}: {msgs:?}"
    );
    assert!(
        since.elapsed() < Duration::from_secs(10),
        "{who} was cancelled only after {:?}",
        since.elapsed()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn notifications_carry_the_issued_pid_of_the_notifying_client() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, SESSION_POOL);
    let mut a = Raw::connect(proxy.port).await;
    let (pid_a, _) = a.login_app().await;
    let mut b = Raw::connect(proxy.port).await;
    let (pid_b, _) = b.login_app().await;

    // A notifies itself: the notification names A's own pid, the one BackendKeyData gave it, and not
    // the pid of its node backend.
    a.simple("LISTEN pids_ch").await;
    let msgs = a.simple("NOTIFY pids_ch, 'self'").await;
    assert_eq!(
        notifications(&msgs),
        vec![(pid_a, "pids_ch".to_owned(), "self".to_owned())],
        "{msgs:?}"
    );
    let node_pid_a: i32 = value(&mut a, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("pid");
    assert_ne!(node_pid_a, pid_a, "pgfleet issues pids of its own");

    // B notifies while A waits: A hears B's issued pid.
    let msgs = b.simple("NOTIFY pids_ch, 'from b'").await;
    assert!(notifications(&msgs).is_empty(), "B does not listen: {msgs:?}");
    let (kind, body) = a.frame().await.expect("a notification for A");
    assert_eq!(
        notifications(&[(kind, body)]),
        vec![(pid_b, "pids_ch".to_owned(), "from b".to_owned())]
    );

    // pg_notify() and a notification that arrives while A is between requests (read before A's next
    // request runs) carry the issued pid too.
    b.simple("SELECT pg_notify('pids_ch', 'queued')").await;
    let msgs = a.simple("SELECT 'after'").await;
    let mut seen = notifications(&msgs);
    if seen.is_empty() {
        // Not yet arrived when A's request went out: it comes while A is idle.
        let (kind, body) = a.frame().await.expect("the queued notification");
        seen = notifications(&[(kind, body)]);
    }
    assert_eq!(seen, vec![(pid_b, "pids_ch".to_owned(), "queued".to_owned())]);

    // A client outside pgfleet is not a pgfleet client: its node pid passes unchanged.
    let direct = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct_pid: i32 = direct
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    direct
        .batch_execute("NOTIFY pids_ch, 'direct'")
        .await
        .expect("notify");
    let (kind, body) = a.frame().await.expect("the direct notification");
    assert_eq!(
        notifications(&[(kind, body)]),
        vec![(direct_pid, "pids_ch".to_owned(), "direct".to_owned())]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_postgres_sees_its_own_process_id_in_notifications() {
    let mut cmd = node_command(&["pg"]);
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, SESSION_POOL);
    cmd.arg("pids_check.js")
        .arg(proxy.url(APP_USER, PASSWORD, APP_DB));
    let done = run(cmd, Duration::from_secs(60)).expect_success("pids_check.js");
    assert!(done.stdout.contains("ok"), "{done}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_backend_pid_is_the_primary_connection() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, SESSION_POOL);
    let mut a = Raw::connect(proxy.port).await;
    a.login_app().await;
    let primary_pid = value(&mut a, "/* pgfleet:primary */ SELECT pg_backend_pid()").await;
    // Reads are spread over the replicas round robin; pg_backend_pid() stays on the primary every time.
    for _ in 0..4 {
        let msgs = a
            .simple("SELECT pg_backend_pid()::text || ' ' || inet_server_port()")
            .await;
        assert_eq!(
            data_rows(&msgs),
            vec![format!("{primary_pid} {}", cluster.primary.port)]
        );
    }
    let read = value(&mut a, "SELECT inet_server_port()::text").await;
    assert_ne!(
        read,
        cluster.primary.port.to_string(),
        "plain reads still go to replicas"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_cancel_backend_cancels_the_client_session_it_names() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, SESSION_POOL);
    let mut a = Raw::connect(proxy.port).await;
    let (pid_a, _) = a.login_app().await;
    let node_pid_a: i32 = value(&mut a, "SELECT pg_backend_pid()")
        .await
        .parse()
        .expect("pid");
    // A third client sleeps all along: no call below may touch it.
    let mut third = Raw::connect(proxy.port).await;
    let key_third = third.login_app().await;
    third.send(&query("SELECT pg_sleep(31)")).await;
    started_on_replica(&cluster, "SELECT pg_sleep(31)").await;
    let mut b = Raw::connect(proxy.port).await;
    b.login_app().await;
    let tp = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;

    // By the issued pid, simple protocol; A's sleep runs on a replica.
    a.send(&query("SELECT pg_sleep(30)")).await;
    assert!(
        started_on_replica(&cluster, "SELECT pg_sleep(30)").await,
        "the read runs on a replica"
    );
    let sent = Instant::now();
    let msgs = b.simple(&format!("SELECT pg_cancel_backend({pid_a})")).await;
    assert_bool_answer(&msgs, "pg_cancel_backend", "t");
    assert_cancelled(&mut a, sent, "A (issued pid, simple)").await;

    // By the pid pg_backend_pid() gave A (its primary connection), extended protocol with a binary int4.
    a.send(&query("SELECT pg_sleep(30)")).await;
    assert!(started_on_replica(&cluster, "SELECT pg_sleep(30)").await);
    let sent = Instant::now();
    let row = tp
        .query_one("SELECT pg_cancel_backend($1)", &[&node_pid_a])
        .await
        .expect("pg_cancel_backend($1)");
    assert_eq!(row.columns()[0].name(), "pg_cancel_backend");
    assert!(row.get::<_, bool>(0));
    assert_cancelled(&mut a, sent, "A (backend pid, extended)").await;

    // The issued pid through a named prepared statement, executed twice (Bind of a statement pgfleet
    // knows, its Parse having run on the primary).
    let stmt = tp
        .prepare("SELECT pg_catalog.pg_cancel_backend($1)")
        .await
        .expect("prepare");
    for round in 0..2 {
        a.send(&query("SELECT pg_sleep(30)")).await;
        started_on_replica(&cluster, "SELECT pg_sleep(30)").await;
        let sent = Instant::now();
        let row = tp.query_one(&stmt, &[&pid_a]).await.expect("execute");
        assert!(row.get::<_, bool>(0));
        assert_cancelled(&mut a, sent, &format!("A (prepared, round {round})")).await;
    }

    // A cancelling itself: PostgreSQL cancels the very statement that asked.
    let msgs = a.simple(&format!("SELECT pg_cancel_backend({pid_a})")).await;
    assert_eq!(
        errors(&msgs),
        vec![(
            "57014".to_owned(),
            "canceling statement due to user request".to_owned(),
            String::new()
        )]
    );
    assert_eq!(value(&mut a, "SELECT 'a goes on'").await, "a goes on");

    // A pid no client has: PostgreSQL's own answer, false with its warning.
    let msgs = b.simple(&format!("SELECT pg_cancel_backend({})", i32::MAX)).await;
    assert_eq!(data_rows(&msgs), vec!["f".to_owned()], "{msgs:?}");
    let warning = msgs
        .iter()
        .find(|(k, _)| *k == b'N')
        .and_then(|(_, body)| error_field(body, b'M').map(str::to_owned));
    assert_eq!(
        warning.as_deref(),
        Some(format!("PID {} is not a PostgreSQL backend process", i32::MAX).as_str())
    );

    // The third client slept through all of it, and its own key still cancels it.
    assert!(third.still_running(Duration::from_millis(200)).await);
    let sent = Instant::now();
    send_cancel(proxy.port, key_third.0, key_third.1).await;
    assert_cancelled(&mut third, sent, "the third client").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_terminate_backend_ends_the_client_session_it_names() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, SESSION_POOL);
    let mut b = Raw::connect(proxy.port).await;
    b.login_app().await;
    let mut third = Raw::connect(proxy.port).await;
    third.login_app().await;
    let tp = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    b.simple("CREATE TABLE pids_t (id int)").await;

    // A is inside a transaction on the primary, running a statement: terminated by its issued pid
    // (extended protocol), it gets PostgreSQL's FATAL, its node backend stops, its transaction is gone.
    let mut a = Raw::connect(proxy.port).await;
    let (pid_a, _) = a.login_app().await;
    a.simple("BEGIN").await;
    a.simple("INSERT INTO pids_t VALUES (1)").await;
    a.send(&query("SELECT pg_sleep(30)")).await;
    assert!(
        !started_on_replica(&cluster, "SELECT pg_sleep(30)").await,
        "the transaction runs on the primary"
    );
    let sent = Instant::now();
    let row = tp
        .query_one("SELECT pg_terminate_backend($1)", &[&pid_a])
        .await
        .expect("pg_terminate_backend($1)");
    assert_eq!(row.columns()[0].name(), "pg_terminate_backend");
    assert!(row.get::<_, bool>(0));
    let message = a.expect_fatal("57P01").await;
    assert_eq!(message, "terminating connection due to administrator command");
    assert!(sent.elapsed() < Duration::from_secs(10));
    let gone = wait_until(Duration::from_secs(10), async || {
        running_on(&cluster.primary, "SELECT pg_sleep(30)").await == 0
    })
    .await;
    assert!(gone.is_some(), "A's node backend still sleeps");
    assert_eq!(
        value(&mut b, "/* pgfleet:primary */ SELECT count(*) FROM pids_t").await,
        "0",
        "A's transaction was rolled back"
    );

    // An idle tokio-postgres client, terminated by the pid pg_backend_pid() gave it, with a timeout that
    // waits for the session to end (simple protocol): its next query finds the connection closed.
    let victim = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let node_pid: i32 = victim
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("pid")
        .get(0);
    let msgs = b
        .simple(&format!("SELECT pg_terminate_backend({node_pid}, 5000)"))
        .await;
    assert_bool_answer(&msgs, "pg_terminate_backend", "t");
    let closed = wait_until(Duration::from_secs(10), async || victim.is_closed()).await;
    assert!(closed.is_some(), "the terminated client's connection is closed");
    let err = victim.simple_query("SELECT 1").await.expect_err("closed");
    assert!(err.is_closed(), "{err}");

    // Terminating itself: the FATAL reaches the caller.
    let mut c = Raw::connect(proxy.port).await;
    let (pid_c, _) = c.login_app().await;
    c.send(&query(&format!("SELECT pg_terminate_backend({pid_c})")))
        .await;
    c.expect_fatal("57P01").await;
    // With the pid as an expression the primary's backend ends itself: its FATAL reaches the caller, and
    // the session ends with it, as on PostgreSQL (also after a write, whose reply waits for its position).
    for setup in ["SELECT 1", "INSERT INTO pids_t VALUES (2)"] {
        let mut d = Raw::connect(proxy.port).await;
        d.login_app().await;
        d.simple(setup).await;
        d.send(&query("SELECT pg_terminate_backend(pg_backend_pid())"))
            .await;
        // The call's row may come first: the backend ends at its next check for interrupts.
        loop {
            let (kind, body) = d.frame().await.expect("a FATAL before the connection closes");
            if kind == b'E' {
                assert_eq!(error_field(&body, b'S'), Some("FATAL"), "after {setup}");
                assert_eq!(error_field(&body, b'C'), Some("57P01"), "after {setup}");
                break;
            }
            assert!(
                matches!(kind, b'T' | b'D' | b'C'),
                "after {setup}: {}",
                kind as char
            );
        }
        assert!(
            d.frame().await.is_none(),
            "after {setup}: the connection is closed after the FATAL"
        );
    }

    // A pid no client has: false and PostgreSQL's warning.
    let msgs = b
        .simple(&format!("SELECT pg_terminate_backend({})", i32::MAX))
        .await;
    assert_eq!(data_rows(&msgs), vec!["f".to_owned()], "{msgs:?}");

    // The other clients go on.
    assert_eq!(value(&mut third, "SELECT 'untouched'").await, "untouched");
    assert_eq!(value(&mut b, "SELECT 'b too'").await, "b too");
    assert!(
        tp.query_one("SELECT 1", &[]).await.is_ok(),
        "the caller's own session is untouched"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_role_needs_postgres_permission_to_signal() {
    let cluster = cluster_async().await;
    let su = connect(&cluster.primary.dsn("postgres", PASSWORD, "postgres")).await;
    su.batch_execute(&format!(
        "CREATE ROLE {OTHER_USER} LOGIN PASSWORD '{OTHER_PASSWORD}'"
    ))
    .await
    .expect("create role");
    let proxy = Proxy::start(
        &cluster,
        &format!("{SESSION_POOL}\n[[users]]\nname = \"{OTHER_USER}\"\npassword = \"{OTHER_PASSWORD}\"\n"),
    );
    let mut a = Raw::connect(proxy.port).await;
    let (pid_a, _) = a.login_app().await;
    let mut other = Raw::connect(proxy.port).await;
    other
        .login(OTHER_USER, OTHER_PASSWORD, APP_DB)
        .await
        .unwrap_or_else(|b| panic!("login: {:?}", error_field(&b, b'M')));
    let other_tp = connect(&proxy.dsn(OTHER_USER, OTHER_PASSWORD, APP_DB)).await;

    a.send(&query("SELECT pg_sleep(30)")).await;
    started_on_replica(&cluster, "SELECT pg_sleep(30)").await;
    // PostgreSQL's own refusals, asked of the primary directly for a backend of A's role: pgfleet's must
    // read the same, in the primary's version's words.
    let direct_app = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let app_backend: i32 = direct_app
        .query_one("SELECT pg_backend_pid()", &[])
        .await
        .expect("direct pid")
        .get(0);
    let mut direct_other = Raw::connect(cluster.primary.port).await;
    direct_other
        .login(OTHER_USER, OTHER_PASSWORD, APP_DB)
        .await
        .unwrap_or_else(|b| panic!("direct login: {:?}", error_field(&b, b'M')));
    for function in ["pg_cancel_backend", "pg_terminate_backend"] {
        let postgres = errors(
            &direct_other
                .simple(&format!("SELECT {function}({app_backend})"))
                .await,
        );
        assert_eq!(postgres.len(), 1, "PostgreSQL refuses {function}: {postgres:?}");
        assert_eq!(postgres[0].0, "42501");
        let msgs = other.simple(&format!("SELECT {function}({pid_a})")).await;
        assert_eq!(errors(&msgs), postgres, "{function} through pgfleet");
        assert_eq!(kinds(&msgs), "EZ");
    }
    let err = other_tp
        .query_one("SELECT pg_terminate_backend($1)", &[&pid_a])
        .await
        .expect_err("refused");
    assert_eq!(err.as_db_error().expect("db error").code().code(), "42501");
    assert!(
        a.still_running(Duration::from_millis(300)).await,
        "refused calls did nothing to A"
    );

    // PostgreSQL judges the current role: a session of A's own role that switched to the other role with
    // SET ROLE is refused, and allowed again after RESET ROLE.
    su.batch_execute(&format!("GRANT {OTHER_USER} TO {APP_USER}"))
        .await
        .expect("grant membership");
    let mut same = Raw::connect(proxy.port).await;
    same.login_app().await;
    same.simple(&format!("SET ROLE {OTHER_USER}")).await;
    let msgs = same.simple(&format!("SELECT pg_cancel_backend({pid_a})")).await;
    assert_eq!(
        errors(&msgs).into_iter().map(|e| e.0).collect::<Vec<_>>(),
        vec!["42501".to_owned()],
        "{msgs:?}"
    );
    assert!(a.still_running(Duration::from_millis(100)).await);
    same.simple("RESET ROLE").await;
    let sent = Instant::now();
    let msgs = same.simple(&format!("SELECT pg_cancel_backend({pid_a})")).await;
    assert_bool_answer(&msgs, "pg_cancel_backend", "t");
    assert_cancelled(&mut a, sent, "A (same role after RESET ROLE)").await;

    // With pg_signal_backend the other role may.
    a.send(&query("SELECT pg_sleep(30)")).await;
    started_on_replica(&cluster, "SELECT pg_sleep(30)").await;
    su.batch_execute(&format!("GRANT pg_signal_backend TO {OTHER_USER}"))
        .await
        .expect("grant");
    let sent = Instant::now();
    let msgs = other.simple(&format!("SELECT pg_cancel_backend({pid_a})")).await;
    assert_bool_answer(&msgs, "pg_cancel_backend", "t");
    assert_cancelled(&mut a, sent, "A").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn issued_pids_work_under_transaction_pooling() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "[pool]\nmode = \"transaction\"\nmax_size = 2\n");
    let mut a = Raw::connect(proxy.port).await;
    let (pid_a, _) = a.login_app().await;
    let mut b = Raw::connect(proxy.port).await;
    let (pid_b, _) = b.login_app().await;

    // Between transactions A holds no node connection; its issued pid still names it.
    a.send(&query("SELECT pg_sleep(30)")).await;
    started_on_replica(&cluster, "SELECT pg_sleep(30)").await;
    let sent = Instant::now();
    let msgs = b.simple(&format!("SELECT pg_cancel_backend({pid_a})")).await;
    assert_bool_answer(&msgs, "pg_cancel_backend", "t");
    assert_cancelled(&mut a, sent, "A").await;

    // LISTEN pins A's connection to A, so A's own notifications carry its issued pid.
    a.simple("LISTEN pids_tx").await;
    let msgs = a.simple("NOTIFY pids_tx, 'self'").await;
    assert_eq!(
        notifications(&msgs),
        vec![(pid_a, "pids_tx".to_owned(), "self".to_owned())]
    );

    // An idle session ends at once; the caller's answer waits for that with a timeout.
    let msgs = b
        .simple(&format!("SELECT pg_terminate_backend({pid_a}, 5000)"))
        .await;
    assert_bool_answer(&msgs, "pg_terminate_backend", "t");
    a.expect_fatal("57P01").await;
    assert_eq!(value(&mut b, "SELECT 'b goes on'").await, "b goes on");
    assert_ne!(pid_a, pid_b);
}
