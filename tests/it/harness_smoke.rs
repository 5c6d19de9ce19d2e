//! Proves the test harness itself: a local cluster starts with one primary and two streaming replicas,
//! replication works, the app user logs in over TCP with its password, node controls (stop, start, promote)
//! work, independent nodes are independent, and dropping a cluster leaves no server process or file behind.

use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster, cluster_with, options};
use crate::support::proxy::{connect, try_connect};

/// Exited: no /proc entry, or a zombie not yet reaped (its parent is init, which may reap late).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Err(_) => true,
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| rest.trim_start().starts_with(['Z', 'X'])),
    }
}

fn gone_within(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while !exited(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    true
}

#[tokio::test]
async fn streaming_cluster_replicates_accepts_passwords_and_cleans_up() {
    let started = Instant::now();
    let cluster = cluster();
    eprintln!(
        "cluster of 1 primary + 2 replicas started in {:?}",
        started.elapsed()
    );

    assert_eq!(cluster.replicas.len(), 2);
    assert_eq!(
        cluster
            .psql(&cluster.primary, "postgres", "SELECT pg_is_in_recovery()")
            .expect("psql"),
        "f"
    );
    for replica in &cluster.replicas {
        assert_eq!(
            cluster
                .psql(replica, "postgres", "SELECT pg_is_in_recovery()")
                .expect("psql"),
            "t"
        );
    }

    // The app user over TCP with SCRAM, as pgfleet will connect.
    let app = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    app.batch_execute("CREATE TABLE smoke (id int PRIMARY KEY, note text); INSERT INTO smoke SELECT g, 'n' || g FROM generate_series(1, 100) g")
        .await
        .expect("create and fill a table as the app user");
    let refused = try_connect(&cluster.primary.dsn(APP_USER, "wrong", APP_DB)).await;
    assert!(refused.is_err(), "a wrong password must be refused");
    let superuser = connect(&cluster.primary.dsn(&cluster.superuser, PASSWORD, "postgres")).await;
    let row = superuser
        .query_one("SELECT current_user::text", &[])
        .await
        .expect("superuser query");
    assert_eq!(row.get::<_, String>(0), "postgres");

    cluster
        .wait_replicas_caught_up(Duration::from_secs(10))
        .expect("replicas catch up");
    for replica in &cluster.replicas {
        assert_eq!(
            cluster
                .psql(replica, APP_DB, "SELECT count(*) FROM smoke")
                .expect("psql"),
            "100"
        );
        let reader = connect(&replica.dsn(APP_USER, PASSWORD, APP_DB)).await;
        let row = reader
            .query_one("SELECT note FROM smoke WHERE id = 42", &[])
            .await
            .expect("read on replica");
        assert_eq!(row.get::<_, String>(0), "n42");
        let write = reader.batch_execute("INSERT INTO smoke VALUES (101, 'x')").await;
        assert!(write.is_err(), "a standby must refuse writes");
    }

    // The demo's config generator produces something pgfleet's config loader accepts.
    let text = crate::demo::demo_config("127.0.0.1:6432", std::slice::from_ref(&cluster));
    let config = pgfleet::config::Config::parse(&text).expect("generated demo config is valid");
    assert_eq!(config.nodes.len(), 3);

    let pids: Vec<u32> = cluster
        .nodes()
        .map(|n| n.pid().expect("postmaster.pid"))
        .collect();
    let base_dir = cluster.base_dir.clone();
    drop(app);
    drop(superuser);
    drop(cluster);
    for pid in pids {
        assert!(
            gone_within(pid, Duration::from_secs(5)),
            "postmaster {pid} still alive after drop"
        );
    }
    assert!(!base_dir.exists(), "{} not removed", base_dir.display());
}

#[test]
fn node_controls_stop_start_promote() {
    let cluster = cluster();
    let replica = &cluster.replicas[0];

    replica.stop().expect("fast stop");
    assert!(!replica.is_running());
    replica.stop().expect("stopping a stopped node is fine");
    replica.start().expect("restart");
    assert!(replica.is_running());

    cluster.primary.stop_immediate().expect("immediate stop");
    assert!(!cluster.primary.is_running());
    replica.promote().expect("promote");
    assert_eq!(
        replica
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .expect("psql"),
        "f"
    );
    replica
        .psql(APP_DB, "CREATE TABLE after_failover (id int)")
        .expect("the promoted node takes writes");

    let other = &cluster.replicas[1];
    other.pause().expect("pause");
    other.resume().expect("resume");
    assert_eq!(
        other.psql("postgres", "SELECT 1").expect("psql after resume"),
        "1"
    );
    other.kill().expect("kill");
    assert!(!other.is_running());
    other.start().expect("start after kill runs crash recovery");
    assert_eq!(
        other
            .psql("postgres", "SELECT pg_is_in_recovery()")
            .expect("psql after restart"),
        "t"
    );
}

#[test]
fn independent_nodes_each_have_roles_and_database() {
    let cluster = cluster_with(crate::support::cluster::ClusterOptions {
        replicas: 1,
        streaming: false,
        extra_conf: vec!["work_mem = '7MB'".to_owned()],
        ..options()
    });
    for node in cluster.nodes() {
        assert_eq!(
            node.psql("postgres", "SELECT pg_is_in_recovery()").expect("psql"),
            "f"
        );
        assert_eq!(node.psql(APP_DB, "SHOW work_mem").expect("psql"), "7MB");
        node.psql(APP_DB, "CREATE TABLE mine (id int)")
            .expect("each node takes writes");
    }
    cluster
        .wait_replicas_caught_up(Duration::from_secs(1))
        .expect("no-op without streaming");
}
