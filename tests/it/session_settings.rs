//! Settings a session makes in ways other than a plain SET, checked against what PostgreSQL itself does:
//! `set_config(..., false)` lasts for the session like SET, RESET, RESET ALL and DISCARD ALL return to the
//! values the client connected with, not to the server's defaults, and a ROLLBACK TO a savepoint undoes the
//! settings made after it. Each read reports the node that ran it, so
//! a setting that only the node which ran it has shows up as a wrong value on another.

use std::collections::HashSet;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use tokio_postgres::SimpleQueryMessage;

/// Reads of settings go to a replica whatever it has replayed: these tests are about what each node's
/// connection has, not how fresh a read is.
const CONFIG: &str = "[routing]\nconsistency = \"off\"\n";

/// The first row of a simple-protocol query, its fields as text.
async fn row(c: &tokio_postgres::Client, sql: &str) -> Vec<String> {
    let messages = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            return (0..r.len()).map(|i| r.get(i).unwrap_or("").to_owned()).collect();
        }
    }
    panic!("{sql}: no row");
}

/// Runs `sql`, which must succeed.
async fn batch(c: &tokio_postgres::Client, sql: &str) {
    c.batch_execute(sql)
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"))
}

/// Runs `sql` (its first column the server's port) until `nodes` different nodes have answered it (at most
/// 200 times): the ports it ran on and the other columns, which must be the same every time.
async fn everywhere(c: &tokio_postgres::Client, sql: &str, nodes: usize) -> (HashSet<u16>, Vec<String>) {
    let mut ports = HashSet::new();
    let mut values: Option<Vec<String>> = None;
    for _ in 0..200 {
        let mut r = row(c, sql).await;
        ports.insert(r.remove(0).parse().expect("a port"));
        match &values {
            Some(v) => assert_eq!(&r, v, "{sql} differs from node to node"),
            None => values = Some(r),
        }
        if ports.len() == nodes {
            break;
        }
    }
    (ports, values.unwrap_or_default())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn set_config_for_the_session_follows_it_to_every_node() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE SCHEMA s1; CREATE TABLE s1.only_here (x int); INSERT INTO s1.only_here VALUES (7);",
    )
    .await
    .expect("setup");
    cluster
        .wait_replicas_caught_up(std::time::Duration::from_secs(30))
        .expect("replicas caught up");

    // As with SET: the list is the value set_config was given (a SET of the same string would read it as one
    // quoted name), and an unqualified name finds the table through it on every node.
    let set = row(&c, "SELECT set_config('search_path', 's1, public', false)").await;
    assert_eq!(set, ["s1, public"]);
    let sql = "SELECT inet_server_port(), current_setting('search_path'), (SELECT x FROM only_here)";
    let (ports, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["s1, public", "7"]);
    assert!(
        !ports.contains(&primary),
        "reads still go to the replicas: {ports:?}"
    );
    assert_eq!(ports.len(), 2, "both replicas answered: {ports:?}");

    // Rolled back with its transaction, as on the server.
    c.batch_execute("BEGIN; SELECT set_config('search_path', 'public', false); ROLLBACK")
        .await
        .expect("rolled back");
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["s1, public", "7"]);

    // Transaction-scoped: nothing to carry.
    c.batch_execute("BEGIN; SELECT set_config('app.scope', 'tx', true); COMMIT")
        .await
        .expect("local");
    let (ports, values) = everywhere(
        &c,
        "SELECT inet_server_port(), current_setting('app.scope', true) IS NULL OR current_setting('app.scope', true) = ''",
        2,
    )
    .await;
    assert_eq!(values, ["t"]);
    assert!(!ports.contains(&primary));

    // Values only the server knows (parameters of the extended protocol): the session stays on the primary,
    // which has them.
    let other = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let r = other
        .query_one("SELECT set_config($1, $2, false)", &[&"app.key", &"v1"])
        .await
        .expect("set_config with parameters");
    assert_eq!(r.get::<_, String>(0), "v1");
    let (ports, values) =
        everywhere(&other, "SELECT inet_server_port(), current_setting('app.key')", 2).await;
    assert_eq!(values, ["v1"]);
    assert_eq!(ports, HashSet::from([primary]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_returns_to_the_values_the_client_connected_with() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port;
    let dsn = format!(
        "{} application_name=connected-as options='-c work_mem=7MB'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    );
    let c = connect(&dsn).await;
    let sql = "SELECT inet_server_port(), current_setting('application_name'), current_setting('work_mem')";
    let at_login = ["connected-as", "7MB"];
    let (ports, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, at_login);
    assert!(!ports.contains(&primary));

    // Each way back to the session's defaults, then read on both replicas and on the primary: the node that ran
    // the RESET went back to its own defaults, and has the client's set again before it runs the next request.
    for reset in [
        "RESET ALL",
        "DISCARD ALL",
        "RESET application_name; RESET work_mem",
        "SET application_name TO DEFAULT; SET work_mem = DEFAULT",
    ] {
        c.batch_execute("SET application_name = 'changed'; SET work_mem = '9MB'")
            .await
            .expect("set");
        let (_, values) = everywhere(&c, sql, 2).await;
        assert_eq!(values, ["changed", "9MB"]);
        c.batch_execute(reset)
            .await
            .unwrap_or_else(|e| panic!("{reset}: {e}"));
        let (ports, values) = everywhere(&c, sql, 2).await;
        assert_eq!(values, at_login, "after {reset}");
        assert_eq!(ports.len(), 2, "both replicas answered: {ports:?}");
        let r = c
            .query_one(&format!("/* pgfleet:primary */ {sql}"), &[])
            .await
            .expect("read on the primary");
        assert_eq!(r.get::<_, i32>(0) as u16, primary);
        assert_eq!(
            (r.get::<_, String>(1), r.get::<_, String>(2)),
            ("connected-as".to_owned(), "7MB".to_owned()),
            "after {reset}, on the primary"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rollback_to_a_savepoint_undoes_the_settings_made_after_it() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let run = async |sql: &str| batch(&c, sql).await;
    let sql = "SELECT inet_server_port(), current_setting('app.label'), current_setting('work_mem')";

    // Each statement a request of its own, as drivers send them.
    for sql in [
        "BEGIN",
        "SET app.label = 'kept'",
        "SAVEPOINT a",
        "SET app.label = 'undone'",
        "SET work_mem = '7MB'",
        "ROLLBACK TO SAVEPOINT a",
        "COMMIT",
    ] {
        run(sql).await;
    }
    let (ports, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["kept", "4MB"], "on {ports:?}");
    assert_eq!(ports.len(), 2, "both replicas answered: {ports:?}");

    // A savepoint sent with the statement that fails (pgJDBC's autosave does so) still counts: rolling back
    // to it undoes what came after it, and only that.
    run("BEGIN").await;
    run("SET app.label = 'second'").await;
    let failed = c.batch_execute("SAVEPOINT s; SELECT 1/0").await;
    assert!(failed.is_err(), "division by zero: {failed:?}");
    for sql in [
        "ROLLBACK TO s",
        "SET app.label = 'gone'",
        "ROLLBACK TO s",
        "COMMIT",
    ] {
        run(sql).await;
    }
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["second", "4MB"]);

    // RELEASE keeps what was set after the savepoint; statements in one string count in their order.
    run("BEGIN; SAVEPOINT r; SET work_mem = '5MB'; RELEASE r; SAVEPOINT t; SET app.label = 'third'; ROLLBACK TO t; COMMIT")
        .await;
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["second", "5MB"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transaction_that_ends_inside_a_request_keeps_only_what_it_committed() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let run = async |sql: &str| batch(&c, sql).await;
    let sql = "SELECT inet_server_port(), current_setting('lock_timeout'), current_setting('work_mem')";

    // Rolled back in the middle of a string; the next transaction, begun in the same string, commits later.
    run("BEGIN; SET lock_timeout = '3s'; ROLLBACK; BEGIN; SET work_mem = '6MB'").await;
    run("COMMIT").await;
    let (ports, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["0", "6MB"], "on {ports:?}");
    assert_eq!(ports.len(), 2, "both replicas answered: {ports:?}");

    // Committed in the middle of a string; the transaction begun after it rolls back later.
    run("BEGIN; SET lock_timeout = '4s'").await;
    run("COMMIT; BEGIN; SET work_mem = '8MB'").await;
    run("ROLLBACK").await;
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["4s", "6MB"]);

    // After an explicit transaction, the rest of the string runs in an implicit one, which commits.
    run("BEGIN; SET work_mem = '9MB'; ROLLBACK; SET lock_timeout = '5s'").await;
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["5s", "6MB"]);

    // A string that fails keeps what it committed before the failure, and loses what came after it.
    let failed = c
        .batch_execute("BEGIN; SET lock_timeout = '6s'; COMMIT; SET work_mem = '10MB'; SELECT 1/0")
        .await;
    assert!(failed.is_err(), "division by zero: {failed:?}");
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["6s", "6MB"]);

    // A commit that fails (here: of a transaction that already failed) keeps nothing of it.
    run("BEGIN; SET work_mem = '11MB'").await;
    let failed = c.batch_execute("SELECT 1/0").await;
    assert!(failed.is_err(), "division by zero: {failed:?}");
    run("COMMIT; SET lock_timeout = '7s'").await;
    let (_, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["7s", "6MB"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn serializable_transactions_run_on_the_primary_which_alone_accepts_them() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port.to_string();
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let c = connect(&dsn).await;
    let sql = "SELECT inet_server_port(), current_setting('transaction_isolation')";
    // A hot standby refuses serializable isolation ("cannot use serializable mode in a hot standby"), also
    // for a read-only transaction: PostgreSQL runs these, so they run on the primary.
    for text in [
        format!("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE; {sql}; COMMIT"),
        format!("BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; {sql}; COMMIT"),
        format!("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE; {sql}; COMMIT"),
    ] {
        assert_eq!(row(&c, &text).await, [primary.as_str(), "serializable"], "{text}");
    }
    // Each statement a request of its own, as drivers send them.
    c.batch_execute("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY")
        .await
        .expect("BEGIN");
    assert_eq!(row(&c, sql).await, [primary.as_str(), "serializable"]);
    c.batch_execute("COMMIT").await.expect("COMMIT");
    // Outside a transaction the server only warns.
    c.batch_execute("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE")
        .await
        .expect("SET TRANSACTION outside a transaction");

    // Serializable as the session's default: every read is a serializable transaction.
    for set in [
        "SET default_transaction_isolation = 'serializable'",
        "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
    ] {
        c.batch_execute(set).await.expect(set);
        for _ in 0..10 {
            assert_eq!(
                row(&c, sql).await,
                [primary.as_str(), "serializable"],
                "after {set}"
            );
        }
        c.batch_execute("BEGIN READ ONLY").await.expect("BEGIN READ ONLY");
        assert_eq!(
            row(&c, sql).await,
            [primary.as_str(), "serializable"],
            "after {set}"
        );
        c.batch_execute("COMMIT").await.expect("COMMIT");
        c.batch_execute("RESET default_transaction_isolation")
            .await
            .expect("RESET");
    }
    // Back to the default isolation, reads spread over the replicas again.
    let (ports, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["read committed"], "on {ports:?}");
    assert!(
        !ports.contains(&cluster.primary.port),
        "replicas answer: {ports:?}"
    );

    // Also as a startup option.
    let c = connect(&format!(
        "{dsn} options='-c default_transaction_isolation=serializable'"
    ))
    .await;
    for _ in 0..10 {
        assert_eq!(row(&c, sql).await, [primary.as_str(), "serializable"]);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_role_whose_default_is_serializable_reads_on_the_primary() {
    let cluster = cluster_async().await;
    let primary = cluster.primary.port;
    // The role's own default, which its new connections on every node take; pgfleet cannot see it in the
    // session, only in a standby's refusal.
    let direct = connect(&format!(
        "host=127.0.0.1 port={primary} user={APP_USER} password={PASSWORD} dbname={APP_DB} sslmode=disable"
    ))
    .await;
    direct
        .batch_execute("ALTER ROLE app SET default_transaction_isolation = 'serializable'")
        .await
        .expect("ALTER ROLE");
    cluster
        .wait_replicas_caught_up(std::time::Duration::from_secs(30))
        .expect("replicas caught up");
    let proxy = Proxy::start(&cluster, CONFIG);
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let sql = "SELECT inet_server_port(), current_setting('transaction_isolation')";
    let primary = primary.to_string();
    for _ in 0..10 {
        assert_eq!(row(&c, sql).await, [primary.as_str(), "serializable"]);
    }
    c.batch_execute("BEGIN READ ONLY").await.expect("BEGIN READ ONLY");
    assert_eq!(row(&c, sql).await, [primary.as_str(), "serializable"]);
    c.batch_execute("COMMIT").await.expect("COMMIT");
    // The session's own setting overrides the role's: reads go to the replicas again.
    c.batch_execute("SET default_transaction_isolation = 'repeatable read'")
        .await
        .expect("SET");
    let (ports, values) = everywhere(&c, sql, 2).await;
    assert_eq!(values, ["repeatable read"], "on {ports:?}");
    assert!(
        !ports.contains(&cluster.primary.port),
        "replicas answer: {ports:?}\n{}",
        proxy.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_function_that_leaves_state_in_the_session_keeps_the_session_on_its_node() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port;
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let setup = connect(&dsn).await;
    setup
        .batch_execute(
            "CREATE FUNCTION set_tenant(t text) RETURNS text LANGUAGE plpgsql AS \
             $$ BEGIN PERFORM set_config('app.tenant', t, false); RETURN t; END $$; \
             CREATE FUNCTION set_tenant_for_tx(t text) RETURNS text LANGUAGE sql AS \
             $$ SELECT set_config('app.tenant_tx', t, true) $$; \
             CREATE SCHEMA s2; CREATE TABLE s2.only_there (x int); INSERT INTO s2.only_there VALUES (9); \
             CREATE PROCEDURE use_schema(s text) LANGUAGE plpgsql AS \
             $$ BEGIN EXECUTE format('SET search_path = %I, public', s); END $$; \
             CREATE FUNCTION make_scratch() RETURNS void LANGUAGE plpgsql AS \
             $$ BEGIN CREATE TEMP TABLE scratch AS SELECT 5 AS x; END $$; \
             CREATE FUNCTION log_in(t text) RETURNS text LANGUAGE sql AS $$ SELECT set_tenant(t) $$; \
             CREATE FUNCTION start_session(t text) RETURNS text LANGUAGE plpgsql AS \
             $$ BEGIN RETURN log_in(t); END $$;",
        )
        .await
        .expect("setup");
    cluster
        .wait_replicas_caught_up(std::time::Duration::from_secs(30))
        .expect("replicas caught up");

    // (what a new session runs, a read after it whose first column is the node's port, the read's other
    // columns). Only the node that ran the call has what it left, so the session stays there.
    let cases: &[(&str, &str, &[&str])] = &[
        // The row-level-security idiom: a function sets the tenant for the session, the reads use it.
        (
            "SELECT set_tenant('42')",
            "SELECT inet_server_port(), current_setting('app.tenant', true)",
            &["42"],
        ),
        // A function that leaves it by calling one that does, two levels down.
        (
            "SELECT start_session('77')",
            "SELECT inet_server_port(), current_setting('app.tenant', true)",
            &["77"],
        ),
        // A procedure that runs SET as dynamic SQL.
        (
            "CALL use_schema('s2')",
            "SELECT inet_server_port(), current_setting('search_path'), (SELECT x FROM only_there)",
            &["s2, public", "9"],
        ),
        // A temporary table made by a function exists only in that node's session.
        (
            "SELECT make_scratch()",
            "SELECT inet_server_port(), (SELECT x FROM scratch)",
            &["5"],
        ),
        // A DO block's code is read the same way.
        (
            "DO $$ BEGIN PERFORM set_config('app.via_do', 'd', false); END $$",
            "SELECT inet_server_port(), current_setting('app.via_do', true)",
            &["d"],
        ),
    ];
    for (call, read, want) in cases {
        let session = connect(&dsn).await;
        session
            .batch_execute(call)
            .await
            .unwrap_or_else(|e| panic!("{call}: {e}"));
        let (ports, values) = everywhere(&session, read, 2).await;
        assert_eq!(values, *want, "after {call}, on {ports:?}");
        assert_eq!(ports, HashSet::from([primary]), "after {call}");
    }

    // A setting for the transaction only ends with it: the session's reads still spread over the replicas.
    let c = connect(&dsn).await;
    c.batch_execute("BEGIN; SELECT set_tenant_for_tx('7'); COMMIT")
        .await
        .expect("for the transaction");
    let (ports, values) = everywhere(
        &c,
        "SELECT inet_server_port(), coalesce(current_setting('app.tenant_tx', true), '')",
        2,
    )
    .await;
    assert_eq!(values, [""]);
    assert_eq!(ports.len(), 2, "both replicas answered: {ports:?}");
    assert!(!ports.contains(&primary), "{ports:?}");
}
