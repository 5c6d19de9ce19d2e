//! Session workers (`worker_threads`, docs/architecture.md): client sessions run on threads of their own, each
//! with its own event loop, new clients going to the least loaded one; pooled node connections are shared by
//! all workers and follow the session that checks them out.

use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use crate::support::wait::wait_until;

/// The worker threads of process `pid`: (thread id, CPU ticks used so far), from /proc.
fn worker_threads(pid: u32) -> Vec<(String, u64)> {
    let tasks = std::fs::read_dir(format!("/proc/{pid}/task")).expect("read the proxy's threads");
    let mut workers = Vec::new();
    for task in tasks.flatten() {
        let dir = task.path();
        let name = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if !name.trim().starts_with("pgfleet-wk-") {
            continue;
        }
        let stat = std::fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // Fields after the command name (which is in parentheses): utime and stime are the 12th and 13th.
        let fields: Vec<&str> = stat
            .rsplit_once(')')
            .map_or("", |(_, rest)| rest)
            .split_whitespace()
            .collect();
        let ticks = |i: usize| fields.get(i).and_then(|f| f.parse::<u64>().ok()).unwrap_or(0);
        workers.push((name.trim().to_owned(), ticks(11) + ticks(12)));
    }
    workers.sort();
    workers
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_run_on_every_worker_and_pooled_connections_follow_them() {
    let cluster = cluster_async().await;
    // Transaction pooling with two connections per node: every transaction checks one out, so connections
    // keep moving between the sessions of both workers.
    let proxy = Proxy::start_edited(
        &cluster,
        "[pool]\nmode = \"transaction\"\nmax_size = 2\ncheckout_timeout = \"20s\"\n",
        |text| format!("worker_threads = 2\n{text}"),
    );
    let pid = proxy.pid();
    let before = worker_threads(pid);
    assert_eq!(
        before.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["pgfleet-wk-0", "pgfleet-wk-1"],
        "worker_threads = 2 starts two session workers"
    );

    let setup = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    setup
        .batch_execute("CREATE TABLE spread (client int, n int, PRIMARY KEY (client, n))")
        .await
        .expect("create table");
    const CLIENTS: i32 = 6;
    const ROUNDS: i32 = 300;
    let mut tasks = Vec::new();
    for client in 0..CLIENTS {
        let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
        tasks.push(tokio::spawn(async move {
            let c = connect(&dsn).await;
            for n in 0..ROUNDS {
                c.batch_execute(&format!(
                    "BEGIN; INSERT INTO spread VALUES ({client}, {n}); COMMIT"
                ))
                .await
                .expect("insert");
                // Read back on the same session: read-your-writes holds across workers and pooled connections.
                let row = c
                    .query_one("SELECT count(*) FROM spread WHERE client = $1", &[&client])
                    .await
                    .expect("count");
                assert_eq!(
                    row.get::<_, i64>(0),
                    i64::from(n) + 1,
                    "client {client} after insert {n}"
                );
            }
        }));
    }
    for t in tasks {
        t.await.expect("client task");
    }
    let total = setup
        .query_one("SELECT count(*) FROM spread", &[])
        .await
        .expect("total");
    assert_eq!(total.get::<_, i64>(0), i64::from(CLIENTS * ROUNDS));

    // Each worker got sessions (least loaded placement), so each spent CPU on them.
    let busy = wait_until(Duration::from_secs(5), async || {
        let after = worker_threads(pid);
        let grew = after.iter().zip(&before).filter(|((_, a), (_, b))| a > b).count();
        (grew == 2).then_some(after)
    })
    .await;
    assert!(
        busy.is_some(),
        "both workers ran sessions: before {before:?}, after {:?}\n{}",
        worker_threads(pid),
        proxy.log_tail(30)
    );
}
