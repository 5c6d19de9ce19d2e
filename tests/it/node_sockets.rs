//! Nodes reached through their Unix-domain sockets (`address = "/socket/dir:port"`, as libpq's `host` and
//! `port` name one) instead of TCP: routing, read-your-writes, a forwarded cancel, the console and forward
//! mode, on a real fleet whose servers listen on both. A server reached over its socket reports no
//! `inet_server_addr()`, which is how each check tells that the socket, not TCP, carried the statement.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

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
    let sleeper = c.clone();
    let read = tokio::spawn(async move { sleeper.simple_query("SELECT pg_sleep(30)").await.map(|_| ()) });
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
    let ended = tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("the cancelled read ends long before its 30 s")
        .expect("read task");
    let err = ended.expect_err("the cancelled read fails");
    let code = err.as_db_error().map(|d| d.code().code().to_owned());
    assert_eq!(code.as_deref(), Some("57014"), "{err}");
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
