//! Reloading the config of a running pgfleet (SIGHUP and the admin command RELOAD) in front of a real
//! primary and two streaming replicas: nodes added, removed and reweighted, users, routing, pool sizes and
//! logging changed — while clients stay connected and keep working — and invalid files refused with the
//! running config kept.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use localcluster::LocalCluster;
use tokio_postgres::{Client, SimpleQueryMessage};

const ADMIN: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";

/// A node entry for the config.
struct N<'a> {
    name: &'a str,
    port: u16,
    role: &'a str,
    weight: u32,
}

/// A whole config: listen on `port`, the app and admin users (plus `extra_users`), the given nodes, then
/// `extra` (whole tables) verbatim.
fn config(port: u16, nodes: &[N<'_>], extra_users: &str, extra: &str) -> String {
    let mut text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n\n\
         [[users]]\nname = \"{APP_USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [[users]]\nname = \"{ADMIN}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n\n{extra_users}\n"
    );
    for n in nodes {
        text.push_str(&format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"127.0.0.1:{}\"\nrole = \"{}\"\nweight = {}\n\n",
            n.name, n.port, n.role, n.weight
        ));
    }
    if !extra.contains("[routing]") {
        // Per-statement balancing: the checks below look for one session's reads on every replica.
        text.push_str("[routing]\nload_balance = \"round_robin\"\nreplica_affinity = \"statement\"\n\n");
    }
    text.push_str(extra);
    text
}

/// Nodes of the cluster by (name, weight); the one named "primary" is the primary.
fn fleet<'a>(cluster: &'a LocalCluster, spec: &[(&'a str, u32)]) -> Vec<N<'a>> {
    spec.iter()
        .map(|(name, weight)| {
            let role = if *name == "primary" { "primary" } else { "replica" };
            node(cluster, name, role, *weight)
        })
        .collect()
}

fn node<'a>(cluster: &'a LocalCluster, name: &'a str, role: &'a str, weight: u32) -> N<'a> {
    let handle = cluster.node(name).unwrap_or_else(|| panic!("no node {name}"));
    N {
        name,
        port: handle.port,
        role,
        weight,
    }
}

/// Writes the new config and sends SIGHUP; waits for the reload's log line (the n-th one).
fn sighup(proxy: &Proxy, text: &str, n: usize) {
    std::fs::write(&proxy.config_path, text).expect("write config");
    proxy.reload();
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let log = proxy.log_contents();
        let done = log.matches("config reloaded").count() + log.matches("config reload refused").count();
        if done >= n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "no reload logged after SIGHUP:\n{}",
            proxy.log_tail(30)
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The ports that `n` reads through `client` landed on; every read must succeed.
async fn read_ports(client: &Client, n: usize) -> BTreeSet<u16> {
    let mut ports = BTreeSet::new();
    for _ in 0..n {
        let row = client
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("a read through pgfleet");
        ports.insert(row.get::<_, i32>(0) as u16);
    }
    ports
}

fn ports(cluster: &LocalCluster, names: &[&str]) -> BTreeSet<u16> {
    names
        .iter()
        .map(|n| cluster.node(n).expect("node").port)
        .collect()
}

/// Rows of an admin console command, as (first column) text values.
async fn console_rows(admin: &Client, command: &str) -> Result<Vec<String>, tokio_postgres::Error> {
    Ok(admin
        .simple_query(command)
        .await?
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .collect())
}

/// Waits until the server on `port` has no backend of the app user (pgfleet closed its connections there).
async fn wait_no_app_backends(cluster: &LocalCluster, name: &str) {
    let n = cluster.node(name).expect("node");
    let superuser = connect(&n.dsn("postgres", PASSWORD, "postgres")).await;
    crate::support::wait_until(Duration::from_secs(10), async || {
        let row = superuser
            .query_one(
                "SELECT count(*) FROM pg_stat_activity WHERE usename = $1",
                &[&APP_USER],
            )
            .await
            .expect("count backends");
        row.get::<_, i64>(0) == 0
    })
    .await
    .unwrap_or_else(|| panic!("pgfleet still holds app connections on removed node {name}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sighup_adds_removes_and_reweights_nodes_while_clients_stay() {
    let cluster = cluster_async().await;
    let port = free_port();
    let v1 = config(port, &fleet(&cluster, &[("primary", 1), ("replica1", 1)]), "", "");
    let proxy = Proxy::start_with_config(v1);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let early = connect(&dsn).await;
    assert_eq!(read_ports(&early, 6).await, ports(&cluster, &["replica1"]));

    // Added: replica2 takes reads at once, for the client connected before the reload and for new ones.
    let v2 = config(
        port,
        &fleet(&cluster, &[("primary", 1), ("replica1", 1), ("replica2", 1)]),
        "",
        "",
    );
    sighup(&proxy, &v2, 1);
    assert!(
        proxy.log_contents().contains("node replica2 added"),
        "{}",
        proxy.log_tail(10)
    );
    let both = ports(&cluster, &["replica1", "replica2"]);
    assert_eq!(read_ports(&early, 12).await, both);
    let late = connect(&dsn).await;
    assert_eq!(read_ports(&late, 12).await, both);

    // Removed: no read reaches replica1 any more, the clients keep working, and the connections pgfleet
    // held there are closed.
    let v3 = config(port, &fleet(&cluster, &[("primary", 1), ("replica2", 1)]), "", "");
    sighup(&proxy, &v3, 2);
    assert_eq!(read_ports(&early, 12).await, ports(&cluster, &["replica2"]));
    assert_eq!(read_ports(&late, 12).await, ports(&cluster, &["replica2"]));
    wait_no_app_backends(&cluster, "replica1").await;

    // Back again, with weight 0 (no reads); then the weights swap in place.
    let v4 = config(
        port,
        &fleet(&cluster, &[("primary", 1), ("replica1", 0), ("replica2", 1)]),
        "",
        "",
    );
    sighup(&proxy, &v4, 3);
    assert_eq!(read_ports(&early, 12).await, ports(&cluster, &["replica2"]));
    let v5 = config(
        port,
        &fleet(&cluster, &[("primary", 1), ("replica1", 1), ("replica2", 0)]),
        "",
        "",
    );
    sighup(&proxy, &v5, 4);
    assert!(
        proxy.log_contents().contains("node replica2 weight 1 -> 0"),
        "{}",
        proxy.log_tail(10)
    );
    assert_eq!(read_ports(&early, 12).await, ports(&cluster, &["replica1"]));
    assert_eq!(read_ports(&late, 12).await, ports(&cluster, &["replica1"]));

    // Writes went on to the primary throughout, on the same client.
    let primary_port = cluster.primary.port as i32;
    let row = early
        .query_one("SELECT inet_server_port() FROM (SELECT txid_current()) t", &[])
        .await
        .expect("write");
    assert_eq!(row.get::<_, i32>(0), primary_port);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_config_is_refused_and_the_running_one_stays() {
    let cluster = cluster_async().await;
    let port = free_port();
    let nodes = [
        node(&cluster, "primary", "primary", 1),
        node(&cluster, "replica1", "replica", 1),
        node(&cluster, "replica2", "replica", 1),
    ];
    let good = config(port, &nodes, "", "");
    let proxy = Proxy::start_with_config(good.clone());
    let client = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let replicas = ports(&cluster, &["replica1", "replica2"]);
    assert_eq!(read_ports(&client, 8).await, replicas);

    // SIGHUP with a bad value: one log line naming the key; nothing changes.
    let bad = good.replace("load_balance = \"round_robin\"", "load_balance = \"fastest\"");
    sighup(&proxy, &bad, 1);
    let log = proxy.log_contents();
    let line = log
        .lines()
        .find(|l| l.contains("config reload refused"))
        .expect("refusal logged");
    assert!(
        line.contains("load_balance"),
        "the log line must name the key: {line}"
    );
    assert_eq!(read_ports(&client, 8).await, replicas);

    // RELOAD on the console: an ErrorResponse with SQLSTATE F0000 naming the key.
    let admin = connect(&proxy.dsn(ADMIN, ADMIN_PASSWORD, "pgfleet")).await;
    let bad_node = good.replace(
        &format!("address = \"127.0.0.1:{}\"", cluster.primary.port),
        "address = \"no-port-here\"",
    );
    std::fs::write(&proxy.config_path, &bad_node).expect("write");
    let err = console_rows(&admin, "RELOAD")
        .await
        .expect_err("RELOAD of an invalid file fails");
    let db = err.as_db_error().expect("server error");
    assert_eq!(db.code().code(), "F0000");
    assert!(db.message().contains("nodes[0].address"), "{}", db.message());
    // Still the old nodes: a write reaches the primary, reads the replicas.
    assert_eq!(read_ports(&client, 8).await, replicas);
    let fresh = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert_eq!(read_ports(&fresh, 8).await, replicas);
    // Fixed file: RELOAD applies it and says nothing changed.
    std::fs::write(&proxy.config_path, &good).expect("write");
    assert_eq!(
        console_rows(&admin, "RELOAD").await.expect("reload"),
        Vec::<String>::new()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_reload_changes_users_routing_pools_and_logging() {
    let cluster = cluster_async().await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "CREATE ROLE carol LOGIN PASSWORD 'carolpw'; GRANT ALL ON DATABASE app TO carol; \
             CREATE FUNCTION tagged() RETURNS int LANGUAGE sql STABLE AS 'SELECT inet_server_port()'; \
             GRANT EXECUTE ON FUNCTION tagged() TO PUBLIC;",
        )
        .expect("create role and function");
    cluster
        .wait_replicas_caught_up(Duration::from_secs(30))
        .expect("replicas catch up");
    let port = free_port();
    let nodes = [
        node(&cluster, "primary", "primary", 1),
        node(&cluster, "replica1", "replica", 1),
        node(&cluster, "replica2", "replica", 1),
    ];
    let pool_1 = "[pool]\nmax_size = 1\nconnect_timeout = \"1s\"\ncheckout_timeout = \"1s\"\n\n";
    let proxy = Proxy::start_with_config(config(port, &nodes, "", pool_1));
    let admin = connect(&proxy.dsn(ADMIN, ADMIN_PASSWORD, "pgfleet")).await;
    let app = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let primary_port = cluster.primary.port as i32;

    // Before: carol is unknown to pgfleet, tagged() is a read, no slow-statement line, and with one
    // connection per pool (held by `app` in session mode) a second session cannot reach the primary.
    let carol_dsn = proxy.dsn("carol", "carolpw", APP_DB);
    let refused = try_connect(&carol_dsn)
        .await
        .expect_err("carol is not a pgfleet user yet");
    assert_eq!(refused.as_db_error().map(|d| d.code().code()), Some("28P01"));
    let tagged: i32 = app
        .query_one("SELECT tagged()", &[])
        .await
        .expect("tagged")
        .get(0);
    assert_ne!(tagged, primary_port, "a STABLE function is a read");
    // Both replicas and the primary now hold the app session's connections (session mode).
    assert_eq!(
        read_ports(&app, 4).await,
        ports(&cluster, &["replica1", "replica2"])
    );
    app.simple_query("SELECT pg_sleep(0.3), 'before-reload'")
        .await
        .expect("sleep");
    assert!(!proxy.log_contents().contains("slow statement"));
    // The default level, info: no line per request.
    assert!(!proxy.log_contents().contains("routing request"));
    let second = try_connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let Err(second) = second else {
        panic!("pool.max_size = 1 is taken by the first session")
    };
    assert_eq!(
        second.as_db_error().map(|d| d.code().code()),
        Some("53300"),
        "a full pool: {second}"
    );

    let carol = "[[users]]\nname = \"carol\"\npassword = \"carolpw\"\n";
    let extra = "[routing]\nload_balance = \"round_robin\"\nreplica_affinity = \"statement\"\nwrite_functions = [\"tagged\"]\n\n\
                 [pool]\nmax_size = 4\nconnect_timeout = \"1s\"\ncheckout_timeout = \"1s\"\n\n\
                 [log]\nslow_statement = \"200ms\"\nlevel = \"debug\"\n";
    let mut v2 = config(port, &nodes, carol, extra);
    // A restart-only key: reported, and the running value kept.
    let other_port = free_port();
    v2 = v2.replace(
        &format!("address = \"127.0.0.1:{port}\""),
        &format!("address = \"127.0.0.1:{other_port}\""),
    );
    std::fs::write(&proxy.config_path, &v2).expect("write");
    let changes = console_rows(&admin, "RELOAD").await.expect("RELOAD");
    for expected in [
        "user carol added",
        "routing settings changed",
        "pool settings changed",
        "log settings changed",
        "listen.address: changes only after a restart (running value kept)",
    ] {
        assert!(
            changes.iter().any(|c| c == expected),
            "RELOAD should report {expected:?}: {changes:?}"
        );
    }

    // After: carol logs in, tagged() goes to the primary for the session connected before, the pool grew
    // for the existing pool, slow statements are logged without their constants.
    let carol_client = connect(&carol_dsn).await;
    let who: String = carol_client
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("carol")
        .get(0);
    assert_eq!(who, "carol");
    let tagged: i32 = app
        .query_one("SELECT tagged()", &[])
        .await
        .expect("tagged")
        .get(0);
    assert_eq!(tagged, primary_port, "write_functions now lists tagged()");
    // log.level = "debug" took effect in place: each request is logged with where it went, inside the
    // session's span.
    let log = proxy.log_contents();
    let routed = log
        .lines()
        .find(|l| l.contains("routing request"))
        .unwrap_or_else(|| panic!("no debug line after the reload:\n{}", proxy.log_tail(20)));
    assert!(routed.contains("session{"), "{routed}");
    let second = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    second.simple_query("SELECT 1").await.expect("second session");
    app.simple_query("SELECT pg_sleep(0.3), 'after-reload-secret'")
        .await
        .expect("sleep");
    assert!(
        // Logged after the last reply byte went out: wait for it rather than race it.
        proxy.wait_for_log("SELECT pg_sleep($1), $2", Duration::from_secs(5)),
        "{}",
        proxy.log_tail(10)
    );
    let log = proxy.log_contents();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("slow statement") && l.contains("SELECT pg_sleep($1), $2"))
        .collect();
    assert_eq!(lines.len(), 1, "logged once, constants replaced:\n{log}");
    assert!(!log.contains("after-reload-secret"), "no constant in the log");
    assert!(try_connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await.is_ok());
    let other = format!(
        "host=127.0.0.1 port={other_port} user={APP_USER} password={PASSWORD} dbname={APP_DB} connect_timeout=2"
    );
    assert!(
        try_connect(&other).await.is_err(),
        "listen.address needs a restart"
    );
}
