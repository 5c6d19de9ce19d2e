//! `routing.replica_affinity = "session"` against a real primary and two streaming replicas: a session's reads
//! stay on the replica its first read was balanced to, sessions are spread over the replicas, writes still go
//! to the primary, and a session whose replica stops serving moves to another one without an error.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use crate::support::wait::wait_until;
use tokio_postgres::SimpleQueryMessage;

/// The port of the server that ran `SELECT inet_server_port()`, by the simple or the extended protocol.
async fn server_port(c: &tokio_postgres::Client, extended: bool) -> u16 {
    if extended {
        let row = c
            .query_one("SELECT inet_server_port()", &[])
            .await
            .expect("extended read");
        return row.get::<_, i32>(0) as u16;
    }
    let messages = c
        .simple_query("SELECT inet_server_port()")
        .await
        .expect("simple read");
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            return r.get(0).expect("port").parse().expect("number");
        }
    }
    panic!("no row");
}

async fn sessions_keep_their_replica(pool_mode: &str) {
    let cluster = cluster_async().await;
    // Generous check and connect timeouts: on a loaded machine a slow answer from the replica a session moved
    // to would rightly count that replica down and move the session once more, which is not what this test is
    // about (the policy's own table test covers a home that leaves the candidates).
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[routing]\nload_balance = \"round_robin\"\nreplica_affinity = \"session\"\n\n\
             [pool]\nmode = \"{pool_mode}\"\nconnect_timeout = \"20s\"\n\n\
             [health]\ninterval = \"200ms\"\ntimeout = \"20s\"\n"
        ),
    );
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);

    let mut sessions = Vec::new();
    let mut homes = Vec::new();
    for s in 0..4 {
        let c = connect(&dsn).await;
        let mut seen = HashSet::new();
        for i in 0..10 {
            seen.insert(server_port(&c, i % 2 == 1).await);
        }
        assert_eq!(
            seen.len(),
            1,
            "session {s} read from {seen:?}; it should keep one replica"
        );
        let home = *seen.iter().next().expect("one port");
        assert!(
            replicas.contains(&home),
            "session {s} read from {home}, not a replica"
        );
        homes.push(home);
        sessions.push(c);
    }
    let used: HashSet<u16> = homes.iter().copied().collect();
    assert_eq!(
        used, replicas,
        "round robin spreads sessions over both replicas: {homes:?}"
    );

    // Writes are not affected by the read affinity.
    let written = sessions[0]
        .simple_query(
            "CREATE TABLE affinity_w (id int); INSERT INTO affinity_w VALUES (1); SELECT inet_server_port()",
        )
        .await
        .expect("write");
    let primary_port = written.iter().find_map(|m| match m {
        SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
        _ => None,
    });
    assert_eq!(primary_port, Some(cluster.primary.port.to_string()));

    // Session 0's replica stops: its reads (and those of every session sharing it) move to the other replica
    // and stay there, without an error reaching the client.
    let lost = homes[0];
    let other = *replicas.iter().find(|p| **p != lost).expect("two replicas");
    let node = cluster.replicas.iter().find(|r| r.port == lost).expect("replica");
    node.stop_immediate().expect("stop replica");
    for (s, c) in sessions.iter().enumerate() {
        for i in 0..6 {
            let p = server_port(c, i % 2 == 0).await;
            assert_eq!(p, other, "session {s}, read {i} after {lost} stopped");
        }
    }
    // It comes back: sessions that moved stay where they are, new sessions are spread again.
    node.start().expect("start replica");
    let mut fresh_homes = HashSet::new();
    let spread = wait_until(Duration::from_secs(30), async || {
        let c = connect(&dsn).await;
        fresh_homes.insert(server_port(&c, false).await);
        fresh_homes == replicas
    })
    .await;
    assert!(
        spread.is_some(),
        "new sessions use the restarted replica again: only {fresh_homes:?} seen"
    );
    assert_eq!(
        server_port(&sessions[0], false).await,
        other,
        "a moved session keeps its new replica"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn session_pooling_keeps_a_session_on_its_replica() {
    sessions_keep_their_replica("session").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transaction_pooling_keeps_a_session_on_its_replica() {
    sessions_keep_their_replica("transaction").await;
}
