//! Session pooling at pgfleet's defaults (no `pool.max_size`): pgfleet sets no cap of its own on a node's
//! connections, so more clients than a pool of 20 connect and work at once, the node's `max_connections`
//! turns the next one away with PostgreSQL's own 53300 at once (no wait for a pool to free a slot), sessions
//! that leave keep at most 20 idle connections behind, and a read whose replica has no slot left is served
//! by another node.

use std::time::{Duration, Instant};

use crate::support::admin::{ADMIN_TOML, admin_client, node_row, pool_row};
use crate::support::cluster::{
    APP_DB, APP_USER, LocalCluster, PASSWORD, cluster_with_async, options, superuser_client,
};
use crate::support::proxy::{Proxy, connect, text, try_connect};
use crate::support::{one, wait_until};

/// Session pooling spelled out, so that a suite run under transaction pooling leaves these tests alone.
const SESSION_POOL: &str = "[pool]\nmode = \"session\"\n";
/// Every node's max_connections: 61 slots for roles that are not superusers (3 are reserved), which
/// pgfleet's sessions and its health check and catalog connections share.
const MAX_CONNECTIONS: usize = 64;
/// Sessions that log in at once: past the 20 a capped pool would have, and past the 8 slots an uncapped
/// pool starts with, which it doubles three times while the logins wait on it.
const BURST: usize = 40;
/// PostgreSQL's messages for a login past max_connections: with no slot left, and with only the
/// superusers' reserved slots left.
const NODE_FULL: [&str; 2] = [
    "sorry, too many clients already",
    "remaining connection slots are reserved for non-replication superuser connections",
];

/// A primary and one streaming replica, each with [`MAX_CONNECTIONS`].
async fn small_cluster() -> LocalCluster {
    cluster_with_async(localcluster::ClusterOptions {
        replicas: 1,
        extra_conf: vec![format!("max_connections = {MAX_CONNECTIONS}")],
        ..options()
    })
    .await
}

/// The SQLSTATE and message of a refused login.
fn refusal(e: &tokio_postgres::Error) -> (String, String) {
    let db = e
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {e}"));
    (db.code().code().to_owned(), db.message().to_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn more_sessions_than_a_pool_of_twenty_work_and_the_nodes_limit_answers_the_next() {
    let cluster = small_cluster().await;
    superuser_client(&cluster.primary)
        .await
        .batch_execute("CREATE TABLE many_t (id int); ALTER TABLE many_t OWNER TO app")
        .await
        .expect("setup");
    let proxy = Proxy::start(&cluster, &format!("{ADMIN_TOML}\n{SESSION_POOL}"));
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;

    // The burst of logins, each session holding its primary connection.
    let mut clients = futures_util::future::join_all((0..BURST).map(|_| connect(&dsn))).await;
    for (i, c) in clients.iter().enumerate() {
        c.batch_execute(&format!("INSERT INTO many_t VALUES ({i})"))
            .await
            .unwrap_or_else(|e| panic!("session {i} writes: {e}"));
    }
    for (i, c) in clients.iter().enumerate() {
        assert_eq!(
            one(c, &format!("SELECT count(*) FROM many_t WHERE id = {i}")).await,
            "1",
            "session {i} reads its write"
        );
    }
    let pool = pool_row(&admin, &cluster.primary.name).await;
    assert_eq!(text(&pool, "size"), BURST.to_string(), "{pool:?}");
    assert_eq!(
        pool.get("max_size"),
        Some(&None),
        "no cap of pgfleet's own: {pool:?}"
    );

    // More logins until the primary has no slot left: the next one gets the node's own answer at once.
    let mut refused = None;
    for _ in 0..MAX_CONNECTIONS {
        let started = Instant::now();
        match try_connect(&dsn).await {
            Ok(c) => clients.push(c),
            Err(e) => {
                refused = Some((e, started.elapsed()));
                break;
            }
        }
    }
    let Some((e, took)) = refused else {
        panic!(
            "{} sessions got in past the primary's max_connections = {MAX_CONNECTIONS}",
            clients.len()
        )
    };
    let (code, message) = refusal(&e);
    assert_eq!(code, "53300", "{e:?}");
    assert!(
        NODE_FULL.contains(&message.as_str()),
        "PostgreSQL's message, got {message:?}"
    );
    assert!(
        took < Duration::from_secs(3),
        "the refusal waited {took:?}, as for a pool's slot (pool.checkout_timeout is 5 s)"
    );
    assert!(
        clients.len() > BURST && clients.len() < MAX_CONNECTIONS,
        "{} sessions before the node said no",
        clients.len()
    );
    // A node at its limit is not a failed node.
    let primary = node_row(&admin, &cluster.primary.name).await;
    assert_eq!(
        (text(&primary, "state"), text(&primary, "errors")),
        ("up", "0"),
        "{primary:?}"
    );

    // Every session goes on writing.
    for (i, c) in clients.iter().enumerate() {
        c.batch_execute(&format!("INSERT INTO many_t VALUES ({})", 100 + i))
            .await
            .unwrap_or_else(|e| panic!("session {i} writes after the refusal: {e}"));
    }
    let total = clients.len();
    assert_eq!(
        one(&clients[0], "/* pgfleet:primary */ SELECT count(*) FROM many_t").await,
        (BURST + total).to_string()
    );

    // A session that leaves frees its slot on the node for the next login.
    drop(clients.pop());
    let next = wait_until(Duration::from_secs(10), async || try_connect(&dsn).await.ok())
        .await
        .expect("a login once a session left");
    next.batch_execute("INSERT INTO many_t VALUES (-1)")
        .await
        .expect("the new session writes");

    // When they all leave, the pool keeps 20 idle connections for the next logins and closes the rest, as
    // the server processes of direct clients end with them: the node's slots are free for other clients.
    drop(next);
    drop(clients);
    let kept = wait_until(Duration::from_secs(10), async || {
        let pool = pool_row(&admin, &cluster.primary.name).await;
        (text(&pool, "size") == "20" && text(&pool, "available") == "20").then_some(())
    })
    .await;
    let pool = pool_row(&admin, &cluster.primary.name).await;
    assert!(
        kept.is_some(),
        "the primary's pool after every session left: {pool:?}"
    );
    let backends = one(
        &superuser_client(&cluster.primary).await,
        "SELECT count(*) FROM pg_stat_activity WHERE usename = 'app' AND backend_type = 'client backend' \
         AND coalesce(application_name, '') NOT LIKE 'pgfleet-%'",
    )
    .await;
    assert_eq!(backends, "20", "app backends left on the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_whose_replica_has_no_slot_left_runs_on_the_primary() {
    let cluster = small_cluster().await;
    let replica = &cluster.replicas[0];
    let proxy = Proxy::start(&cluster, &format!("{ADMIN_TOML}\n{SESSION_POOL}"));
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let admin = admin_client(&proxy).await;
    let session = connect(&dsn).await;
    // The session greets on the primary; its first read opens its replica connection, so fill the
    // replica's slots now, as another application's clients would.
    let mut others = Vec::new();
    let app_on_replica = replica.dsn(APP_USER, PASSWORD, APP_DB);
    let filled = loop {
        match try_connect(&app_on_replica).await {
            Ok(c) => others.push(c),
            Err(e) => break e,
        }
        assert!(
            others.len() <= MAX_CONNECTIONS,
            "the replica took {} clients",
            others.len()
        );
    };
    assert_eq!(refusal(&filled).0, "53300", "{filled:?}");

    assert_eq!(
        one(&session, "SELECT inet_server_port()").await,
        cluster.primary.port.to_string(),
        "the read ran on the primary"
    );
    let row = node_row(&admin, &replica.name).await;
    assert_eq!(
        (text(&row, "state"), text(&row, "errors")),
        ("up", "0"),
        "{row:?}"
    );

    // With a slot free again, a new session's reads go to the replica.
    drop(others.pop());
    let fresh = connect(&dsn).await;
    let port = wait_until(Duration::from_secs(10), async || {
        let port = one(&fresh, "SELECT inet_server_port()").await;
        (port == replica.port.to_string()).then_some(port)
    })
    .await;
    assert!(port.is_some(), "reads did not go back to the replica");
}
