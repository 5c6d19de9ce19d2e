//! Statements a replica answers differently from the primary, through a real pgfleet in front of a primary
//! and two streaming replicas: reads of unlogged relations (a hot standby refuses them), questions about
//! the server's role (`pg_is_in_recovery()`, `transaction_read_only`, `in_hot_standby`), which clients ask
//! to find a server that takes writes, and about its replication (`pg_current_wal_lsn()`,
//! `pg_stat_replication`). libpq's `target_session_attrs` is checked against the primary itself.

use std::collections::HashSet;
use std::process::Command;
use std::time::Duration;

use crate::support::clients::{pg_tool, run};
use crate::support::cluster::{APP_DB, APP_USER, LocalCluster, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port, one, show, text, try_connect};
use crate::support::raw::{Raw, data_rows};
use crate::support::wait_until;
use pgfleet::protocol::frame::build;
use tokio_postgres::SimpleQueryMessage;

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";
const UNLOGGED_RULE: &str = "reads an unlogged table: sent to the primary";
const ROLE_RULE: &str = "asks the server's role: answered by the primary";

fn admin_toml() -> String {
    format!("[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n")
}

/// The first two columns of a simple query's first row: the serving port and a value.
async fn port_and(c: &tokio_postgres::Client, sql: &str) -> (u16, String) {
    let rows = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    for m in rows {
        if let SimpleQueryMessage::Row(r) = m {
            let port = r.get(0).expect("port").parse().expect("port number");
            return (port, r.get(1).unwrap_or("NULL").to_owned());
        }
    }
    panic!("{sql}: no row");
}

/// How many of the console's routing decisions `rule` decided.
async fn route_count(admin: &tokio_postgres::Client, rule: &str) -> u64 {
    show(admin, "SHOW STATS")
        .await
        .iter()
        .filter(|r| text(r, "name") == "route" && r.get("rule") == Some(&Some(rule.to_owned())))
        .map(|r| text(r, "value").parse::<u64>().expect("count"))
        .sum()
}

/// Waits until every replica answers `sql` (direct connections) without an error.
async fn wait_replicas_read(cluster: &LocalCluster, sql: &str) {
    let mut replicas = Vec::new();
    for r in &cluster.replicas {
        replicas.push(connect(&r.dsn(APP_USER, PASSWORD, APP_DB)).await);
    }
    let readable = wait_until(Duration::from_secs(15), async || {
        for r in &replicas {
            if r.simple_query(sql).await.is_err() {
                return false;
            }
        }
        true
    })
    .await;
    assert!(readable.is_some(), "the replicas never could run {sql}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unlogged_relations_are_read_on_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, &admin_toml());
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;

    c.batch_execute(
        "CREATE UNLOGGED TABLE u (id int PRIMARY KEY, v text);
         INSERT INTO u VALUES (1, 'a'), (2, 'b');
         CREATE SCHEMA other;
         CREATE TABLE other.logged (id int);
         INSERT INTO other.logged VALUES (1);",
    )
    .await
    .expect("setup");
    wait_replicas_read(&cluster, "SELECT * FROM other.logged").await;
    // What pgfleet spares the client: a hot standby refuses the table outright.
    let direct = connect(&cluster.replicas[0].dsn(APP_USER, PASSWORD, APP_DB)).await;
    let refused = direct
        .simple_query("SELECT * FROM u")
        .await
        .expect_err("replica refuses");
    assert!(
        refused.as_db_error().is_some_and(|e| e
            .message()
            .contains("cannot access temporary or unlogged relations")),
        "{refused:?}"
    );

    // Simple protocol, through pgfleet: answered, by the primary.
    assert_eq!(
        port_and(&c, "SELECT inet_server_port(), count(*) FROM u").await,
        (primary, "2".to_owned())
    );
    assert_eq!(
        port_and(&c, "SELECT inet_server_port(), v FROM public.u WHERE id = 2").await,
        (primary, "b".to_owned())
    );
    // Extended protocol: unnamed, and a named statement executed again.
    let row = c
        .query_one(
            "SELECT inet_server_port(), count(*) FROM u WHERE id > $1",
            &[&0i32],
        )
        .await
        .expect("extended read of u");
    assert_eq!((row.get::<_, i32>(0) as u16, row.get::<_, i64>(1)), (primary, 2));
    let stmt = c
        .prepare("SELECT inet_server_port(), v FROM u WHERE id = $1")
        .await
        .expect("prepare");
    for id in [1i32, 2] {
        let row = c.query_one(&stmt, &[&id]).await.expect("named statement");
        assert_eq!(row.get::<_, i32>(0) as u16, primary);
    }
    // The same session's other reads still go to the replicas.
    let read_port = wait_until(Duration::from_secs(10), async || {
        let (p, _) = port_and(&c, "SELECT inet_server_port(), count(*) FROM other.logged").await;
        replicas.contains(&p).then_some(p)
    })
    .await;
    assert!(read_port.is_some(), "a logged table is read on a replica");

    // Unlogged sequences (PG15), views and partitioned tables over an unlogged table.
    c.batch_execute(
        "CREATE UNLOGGED SEQUENCE useq;
         CREATE VIEW uview AS SELECT id FROM u;
         CREATE TABLE parted (id int) PARTITION BY RANGE (id);
         CREATE UNLOGGED TABLE parted_low PARTITION OF parted FOR VALUES FROM (0) TO (100);",
    )
    .await
    .expect("more unlogged relations");
    for sql in [
        "SELECT inet_server_port(), last_value FROM useq",
        "SELECT inet_server_port(), count(*) FROM uview",
        "SELECT inet_server_port(), count(*) FROM parted",
    ] {
        assert_eq!(port_and(&c, sql).await.0, primary, "{sql}");
    }

    // The admin console names the rule, and counts it.
    let route = show(&admin, "SHOW ROUTE SELECT * FROM u").await;
    assert_eq!(text(&route[0], "target"), "primary", "{route:?}");
    assert_eq!(text(&route[0], "rule"), UNLOGGED_RULE, "{route:?}");
    assert!(route_count(&admin, UNLOGGED_RULE).await >= 7);

    // SET LOGGED: once the replicas replayed it, reads of u go to them again.
    c.batch_execute("DROP VIEW uview; ALTER TABLE u SET LOGGED")
        .await
        .expect("set logged");
    wait_replicas_read(&cluster, "SELECT * FROM u").await;
    let back = wait_until(Duration::from_secs(10), async || {
        let (p, n) = port_and(&c, "SELECT inet_server_port(), count(*) FROM u").await;
        assert_eq!(n, "2");
        replicas.contains(&p).then_some(p)
    })
    .await;
    assert!(
        back.is_some(),
        "reads of a table set LOGGED never went back to a replica"
    );
    let route = show(&admin, "SHOW ROUTE SELECT * FROM u").await;
    assert_eq!(text(&route[0], "target"), "replica", "{route:?}");
    // SET UNLOGGED: the very next read goes to the primary.
    c.batch_execute("ALTER TABLE u SET UNLOGGED")
        .await
        .expect("set unlogged");
    assert_eq!(
        port_and(&c, "SELECT inet_server_port(), count(*) FROM u").await,
        (primary, "2".to_owned())
    );
    // DROP, then a logged table of the same name: read on a replica once replayed.
    c.batch_execute("DROP TABLE u; CREATE TABLE u (id int); INSERT INTO u VALUES (7)")
        .await
        .expect("recreate logged");
    wait_replicas_read(&cluster, "SELECT * FROM u").await;
    let back = wait_until(Duration::from_secs(10), async || {
        let (p, _) = port_and(&c, "SELECT inet_server_port(), count(*) FROM u").await;
        replicas.contains(&p).then_some(p)
    })
    .await;
    assert!(
        back.is_some(),
        "a dropped unlogged table's logged successor is read on a replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn role_questions_are_answered_by_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, &admin_toml());
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();

    // What each server says of itself.
    let questions = [
        "SHOW transaction_read_only",
        "SHOW in_hot_standby",
        "SHOW default_transaction_read_only",
        "SELECT pg_is_in_recovery()",
        "SELECT current_setting('transaction_read_only')",
        "SELECT current_setting('in_hot_standby')",
        "SELECT current_setting('default_transaction_read_only')",
        "SELECT setting FROM pg_settings WHERE name = 'in_hot_standby'",
        "SELECT setting FROM pg_catalog.pg_settings WHERE name = 'transaction_read_only'",
    ];
    let direct_primary = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct_replica = connect(&cluster.replicas[0].dsn(APP_USER, PASSWORD, APP_DB)).await;
    let mut differ = Vec::new();
    for q in questions {
        let (p, r) = (one(&direct_primary, q).await, one(&direct_replica, q).await);
        println!("{q}: primary {p}, replica {r}");
        if p != r {
            differ.push(q);
        }
    }
    // The premise: a hot standby answers these differently.
    for q in [
        "SHOW transaction_read_only",
        "SHOW in_hot_standby",
        "SELECT pg_is_in_recovery()",
        "SELECT setting FROM pg_settings WHERE name = 'in_hot_standby'",
    ] {
        assert!(differ.contains(&q), "{q} is the same on both servers");
    }

    // Through pgfleet: the primary's answer, in both protocols.
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for q in questions {
        assert_eq!(one(&c, q).await, one(&direct_primary, q).await, "{q}");
    }
    let row = c
        .query_one("SELECT pg_is_in_recovery(), inet_server_port()", &[])
        .await
        .expect("extended");
    assert_eq!(
        (row.get::<_, bool>(0), row.get::<_, i32>(1) as u16),
        (false, primary)
    );
    let row = c
        .query_one(
            "SELECT current_setting($1), inet_server_port()",
            &[&"transaction_read_only"],
        )
        .await
        .expect("extended with a parameter");
    // A parameter is not known when routing: answered where reads go, as the replica it is.
    assert!(replicas.contains(&(row.get::<_, i32>(1) as u16)));
    assert_eq!(row.get::<_, String>(0), "on");
    // Other settings are still read on replicas.
    let (p, _) = port_and(&c, "SELECT inet_server_port(), current_setting('work_mem')").await;
    assert!(replicas.contains(&p), "work_mem read on {p}");

    // The console names the rule.
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;
    let route = show(&admin, "SHOW ROUTE SHOW transaction_read_only").await;
    assert_eq!(
        (text(&route[0], "target"), text(&route[0], "rule")),
        ("primary", ROLE_RULE),
        "{route:?}"
    );
    // Each question once in the simple protocol, plus the extended pg_is_in_recovery().
    assert!(route_count(&admin, ROLE_RULE).await > questions.len() as u64);

    // Inside a transaction, the question runs where the transaction is: a read-only one on a replica
    // answers as that replica.
    c.batch_execute("BEGIN READ ONLY").await.expect("begin");
    let (p, in_recovery) = port_and(&c, "SELECT inet_server_port(), pg_is_in_recovery()").await;
    assert!(replicas.contains(&p), "read-only transaction on {p}");
    assert_eq!(in_recovery, "t");
    c.batch_execute("COMMIT").await.expect("commit");

    // The greeting reports the primary's role parameters.
    let mut raw = Raw::connect(proxy.port).await;
    raw.login_app().await;
    let reported = |name: &str| {
        raw.params
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("no {name} in the greeting: {:?}", raw.params))
    };
    assert_eq!(
        reported("in_hot_standby"),
        one(&direct_primary, "SHOW in_hot_standby").await
    );
    assert_eq!(
        reported("default_transaction_read_only"),
        one(&direct_primary, "SHOW default_transaction_read_only").await
    );

    // With the primary gone, a replica answers as itself rather than the question failing.
    cluster.primary.stop_immediate().expect("stop the primary");
    let answered = wait_until(Duration::from_secs(20), async || {
        let c = try_connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await.ok()?;
        let rows = c
            .simple_query("SELECT pg_is_in_recovery(), inet_server_port()")
            .await
            .ok()?;
        rows.into_iter().find_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some((r.get(0)?.to_owned(), r.get(1)?.parse::<u16>().ok()?)),
            _ => None,
        })
    })
    .await;
    let (in_recovery, port) = answered.expect("pg_is_in_recovery() answered without a primary");
    assert_eq!(in_recovery, "t");
    assert!(replicas.contains(&port), "answered by {port}");
}

/// Whether psql connects with `conninfo` and runs a query.
fn psql_connects(conninfo: &str) -> bool {
    let mut cmd = Command::new(pg_tool("psql"));
    cmd.args(["-X", "-A", "-t", "-c", "SELECT 1", conninfo])
        .env("PGCONNECT_TIMEOUT", "10");
    let done = run(cmd, Duration::from_secs(60));
    if !done.status.success() {
        println!("psql {conninfo:?} failed: {done}");
    }
    done.status.success()
}

/// Questions about the server's replication (its WAL positions, its WAL senders, slots and receiver): a
/// standby fails some ("recovery is in progress") and answers the others for itself. A client talks to
/// pgfleet as to the primary, so the primary answers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replication_state_questions_are_answered_by_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let direct_primary = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct_replica = connect(&cluster.replicas[0].dsn(APP_USER, PASSWORD, APP_DB)).await;
    // (question, whether a standby fails it)
    let questions = [
        ("SELECT pg_current_wal_lsn() IS NOT NULL", true),
        (
            "SELECT pg_walfile_name(pg_current_wal_flush_lsn()) IS NOT NULL",
            true,
        ),
        ("SELECT pg_last_wal_replay_lsn() IS NULL", false),
        ("SELECT count(*) FROM pg_stat_replication", false),
        ("SELECT count(*) FROM pg_catalog.pg_stat_wal_receiver", false),
    ];
    for (q, fails) in questions {
        let on_replica = direct_replica.simple_query(q).await;
        match fails {
            true => assert!(on_replica.is_err(), "a standby answered {q}"),
            false => assert_ne!(
                one(&direct_replica, q).await,
                one(&direct_primary, q).await,
                "the premise: a standby answers {q} for itself"
            ),
        }
    }
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    for (q, _) in questions {
        assert_eq!(one(&c, q).await, one(&direct_primary, q).await, "{q}");
    }
    let row = c
        .query_one("SELECT pg_current_wal_lsn()::text", &[])
        .await
        .expect("the primary's WAL position, extended protocol");
    assert!(row.get::<_, String>(0).contains('/'));
}

/// A primary logs a sequence's state up to 32 values ahead of what `nextval` gave, and a standby reads the
/// logged state: `last_value` read on a replica runs ahead. Through pgfleet it is the primary's.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sequences_state_is_read_on_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE SEQUENCE orders_id_seq; SELECT nextval('orders_id_seq'); SELECT nextval('orders_id_seq');",
    )
    .await
    .expect("setup");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(30))
        .expect("replicas caught up");
    let direct_primary = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct_replica = connect(&cluster.replicas[0].dsn(APP_USER, PASSWORD, APP_DB)).await;
    let questions = [
        "SELECT last_value FROM orders_id_seq",
        "SELECT last_value || ' ' || is_called FROM public.orders_id_seq",
        "SELECT pg_sequence_last_value('orders_id_seq')",
        "SELECT last_value FROM pg_sequences WHERE sequencename = 'orders_id_seq'",
    ];
    assert_eq!(one(&direct_primary, questions[0]).await, "2");
    for q in questions {
        assert_ne!(
            one(&direct_replica, q).await,
            one(&direct_primary, q).await,
            "the premise: a standby reads {q} ahead"
        );
        assert_eq!(one(&c, q).await, one(&direct_primary, q).await, "{q}");
    }
}

/// The server's activity, locks and statistics: a client sees the primary's, as if connected to it, where a
/// standby would show its own (no lock the application holds, none of its sessions).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_servers_activity_and_locks_are_read_on_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let holder = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    holder
        .batch_execute("SET application_name = 'lock-holder'; SELECT pg_advisory_lock(4242)")
        .await
        .expect("take the lock");
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct_primary = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let direct_replica = connect(&cluster.replicas[0].dsn(APP_USER, PASSWORD, APP_DB)).await;
    let questions = [
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND objid = 4242",
        "SELECT count(*) FROM pg_catalog.pg_stat_activity WHERE application_name = 'lock-holder'",
        "SELECT count(*) FROM pg_stat_get_activity(NULL) WHERE application_name = 'lock-holder'",
    ];
    for q in questions {
        assert_eq!(
            one(&direct_primary, q).await,
            "1",
            "the premise: the primary has it: {q}"
        );
        assert_eq!(
            one(&direct_replica, q).await,
            "0",
            "the premise: a standby does not: {q}"
        );
        for _ in 0..3 {
            assert_eq!(one(&c, q).await, "1", "{q}");
        }
    }
    direct_primary
        .batch_execute("CREATE TABLE activity_t (x int)")
        .await
        .expect("create");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(30))
        .expect("replicas caught up");
    let port = "SELECT inet_server_port() FROM pg_stat_user_tables WHERE relname = 'activity_t'";
    for _ in 0..3 {
        assert_eq!(one(&c, port).await, cluster.primary.port.to_string());
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn libpq_target_session_attrs_behave_as_against_the_primary() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, "");
    let closed = free_port();
    let conninfo = |hosts: &str, ports: &str, attrs: &str| {
        format!(
            "host={hosts} port={ports} user={APP_USER} password={PASSWORD} dbname={APP_DB} sslmode=disable target_session_attrs={attrs}"
        )
    };
    let mut outcomes = Vec::new();
    for attrs in [
        "any",
        "read-write",
        "read-only",
        "primary",
        "standby",
        "prefer-standby",
    ] {
        let direct = psql_connects(&conninfo("127.0.0.1", &cluster.primary.port.to_string(), attrs));
        let fleet = psql_connects(&conninfo("127.0.0.1", &proxy.port.to_string(), attrs));
        // The first host refuses connections: libpq moves on to the next, as it would to the primary.
        let two = "127.0.0.1,127.0.0.1";
        let direct_multi = psql_connects(&conninfo(
            two,
            &format!("{closed},{}", cluster.primary.port),
            attrs,
        ));
        let fleet_multi = psql_connects(&conninfo(two, &format!("{closed},{}", proxy.port), attrs));
        println!(
            "{attrs}: primary {direct}, pgfleet {fleet}, multi-host primary {direct_multi}, pgfleet {fleet_multi}"
        );
        outcomes.push((attrs, direct, fleet, direct_multi, fleet_multi));
    }
    let mismatched: Vec<_> = outcomes
        .iter()
        .filter(|(_, d, f, dm, fm)| d != f || dm != fm)
        .collect();
    assert!(
        mismatched.is_empty(),
        "pgfleet differs from the primary: {mismatched:?}"
    );
    // The reference itself: a primary is refused only where a standby or read-only server is demanded.
    let refused: Vec<&str> = outcomes.iter().filter(|o| !o.1).map(|o| o.0).collect();
    assert_eq!(refused, ["read-only", "standby"], "{outcomes:?}");
}

/// After a failover, the greeting is the new primary's, even through a node connection pgfleet opened while
/// that node was a replica (its startup said `in_hot_standby = on`). Raw sessions send no startup settings,
/// so the greeting has nothing to apply on the pooled connection that would make the node report again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_promotion_the_new_primary_answers() {
    let cluster = cluster_async().await;
    let text = Proxy::config_for(
        &cluster,
        free_port(),
        "[pool]\nconnect_timeout = \"2s\"\n\n[health]\ninterval = \"500ms\"\n",
    )
    .replace("role = \"primary\"", "role = \"auto\"")
    .replace("role = \"replica\"", "role = \"auto\"");
    let proxy = Proxy::start_with_config(text);
    let (old, promoted) = (&cluster.primary, &cluster.replicas[0]);
    // A session whose reads open connections to both replicas, then ends: they go back to the pool idle.
    let mut seen = HashSet::new();
    let both = wait_until(Duration::from_secs(10), async || {
        let mut raw = Raw::connect(proxy.port).await;
        raw.login_app().await;
        for _ in 0..2 {
            let rows = data_rows(&raw.simple("SELECT inet_server_port()").await);
            seen.extend(rows.iter().map(|p| p.parse::<u16>().expect("port")));
        }
        raw.send(&build(b'X', &[])).await;
        assert!(
            raw.frame().await.is_none(),
            "pgfleet closes the session after Terminate"
        );
        seen.contains(&promoted.port)
    })
    .await;
    assert!(both.is_some(), "reads never used {}: {seen:?}", promoted.name);
    old.stop_immediate().expect("stop the primary");
    promoted.promote().expect("promote");
    // First pgfleet must know the new primary (txid_current() writes: only a known primary runs it, while a
    // role question alone may fall back to a replica, which the promoted node may still be to pgfleet).
    let known = wait_until(Duration::from_secs(20), async || {
        let mut raw = Raw::connect(proxy.port).await;
        raw.login(APP_USER, PASSWORD, APP_DB).await.ok()?;
        let rows = data_rows(
            &raw.simple("SELECT inet_server_port() FROM (SELECT txid_current()) x")
                .await,
        );
        raw.send(&build(b'X', &[])).await;
        let _ = raw.frame().await;
        (rows == [promoted.port.to_string()]).then_some(())
    })
    .await;
    assert!(
        known.is_some(),
        "writes never went to the promoted {}",
        promoted.name
    );
    // A new session is greeted through one of the pooled connections: it must say "off", as the primary.
    for _ in 0..3 {
        let mut raw = Raw::connect(proxy.port).await;
        raw.login_app().await;
        let hot = raw
            .params
            .iter()
            .find(|(k, _)| k == "in_hot_standby")
            .map(|(_, v)| v.clone());
        assert_eq!(hot.as_deref(), Some("off"), "the greeting after the promotion");
        let rows = data_rows(&raw.simple("SELECT pg_is_in_recovery()").await);
        assert_eq!(rows, ["f"]);
    }
}
