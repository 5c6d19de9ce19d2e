//! The bank workload of sharding: several clients transfer money between accounts on different shards
//! while pgfleet and a shard primary are killed with -9 at moments drawn from a seeded generator. Afterwards
//! the total is unchanged, every transfer is on both of its accounts or on neither, and once recovery ran no
//! shard holds a prepared transaction.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use pgfleet::shard::hash::shard_for;
use pgfleet::shard::value::KeyValue;
use rand::{Rng, SeedableRng};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use crate::support::shards::ShardedFleet;
use crate::support::wait_until;

const ACCOUNTS: i64 = 40;
const START: i64 = 1000;
const CLIENTS: u64 = 3;
/// How long a client that could not log in waits before it tries again if pgfleet was not restarted.
const RETRY: Duration = Duration::from_millis(100);

const CONFIG: &str = "[[sharded_tables]]\nname = \"accounts\"\ncolumn = \"id\"\n\n\
                      [[sharded_tables]]\nname = \"moves\"\ncolumn = \"account_id\"\n\n\
                      [sharding]\nrecovery_interval = \"1s\"\n";

fn shard_of(id: i64) -> usize {
    shard_for(&KeyValue::Int(id), 2).index()
}

/// One client's transfers until `stop`: each moves money from an account on one shard to one on the
/// other and records both halves in `moves`. Failures (pgfleet or a shard gone) end the connection; the
/// client reconnects and goes on. `restarts` counts pgfleet's starts (and is bumped at the stop): a client
/// that cannot connect waits for the next one, or tries again after `RETRY` when the refusal came from a
/// shard primary that is still starting.
async fn client(
    dsn: String,
    worker: u64,
    stop: Arc<AtomicBool>,
    committed: Arc<AtomicU64>,
    mut restarts: tokio::sync::watch::Receiver<u64>,
) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(worker);
    let left: Vec<i64> = (1..=ACCOUNTS).filter(|id| shard_of(*id) == 0).collect();
    let right: Vec<i64> = (1..=ACCOUNTS).filter(|id| shard_of(*id) == 1).collect();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // pgfleet may be down for a moment: then wait until it was started again (or the test stops).
        restarts.borrow_and_update();
        let c = match try_connect(&dsn).await {
            Ok(c) => c,
            Err(_) => {
                // Down is either pgfleet (its next start wakes us) or a shard primary that pgfleet
                // could not reach at login (it comes back by itself): retry on whichever comes first.
                let _ = tokio::time::timeout(RETRY, restarts.changed()).await;
                continue;
            }
        };
        loop {
            if stop.load(Ordering::Relaxed) {
                return;
            }
            n += 1;
            let tid = worker * 1_000_000 + n;
            let (mut a, mut b) = (
                left[rng.random_range(0..left.len())],
                right[rng.random_range(0..right.len())],
            );
            if rng.random_bool(0.5) {
                std::mem::swap(&mut a, &mut b);
            }
            let x: i64 = rng.random_range(1..50);
            // Money moves from a to b; rows are locked in key order, as a distributed deadlock (opposite
            // orders on two shards) is detected by no server (docs/sharding.md, "Guarantees").
            let ((first, d1), (second, d2)) = if a < b {
                ((a, -x), (b, x))
            } else {
                ((b, x), (a, -x))
            };
            let sql = format!(
                "BEGIN; UPDATE accounts SET balance = balance + {d1} WHERE id = {first}; \
                 INSERT INTO moves (account_id, transfer, delta) VALUES ({first}, {tid}, {d1}); \
                 UPDATE accounts SET balance = balance + {d2} WHERE id = {second}; \
                 INSERT INTO moves (account_id, transfer, delta) VALUES ({second}, {tid}, {d2}); COMMIT"
            );
            match c.batch_execute(&sql).await {
                Ok(()) => {
                    committed.fetch_add(1, Ordering::Relaxed);
                }
                Err(_) => break,
            }
        }
    }
}

/// Waits until `more` transfers committed after now.
async fn transfers(committed: &AtomicU64, more: u64) {
    let target = committed.load(Ordering::Relaxed) + more;
    let reached = wait_until(Duration::from_secs(60), async || {
        committed.load(Ordering::Relaxed) >= target
    })
    .await;
    assert!(
        reached.is_some(),
        "transfers stopped at {}",
        committed.load(Ordering::Relaxed)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn transfers_survive_kill_9_of_pgfleet_and_of_a_shard_primary() {
    let fleet = ShardedFleet::start(2, 0).await;
    let port = free_port();
    let config = fleet.config(port, CONFIG);
    let mut proxy = Proxy::start_with_config(config.clone());
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let setup = connect(&dsn).await;
    setup
        .batch_execute(
            "CREATE TABLE accounts (id bigint PRIMARY KEY, balance bigint NOT NULL); \
             CREATE TABLE moves (account_id bigint NOT NULL, transfer bigint NOT NULL, delta bigint NOT NULL, \
             PRIMARY KEY (account_id, transfer))",
        )
        .await
        .expect("schema");
    let rows: Vec<String> = (1..=ACCOUNTS).map(|id| format!("({id}, {START})")).collect();
    setup
        .batch_execute(&format!(
            "INSERT INTO accounts (id, balance) VALUES {}",
            rows.join(", ")
        ))
        .await
        .expect("accounts");
    drop(setup);

    let stop = Arc::new(AtomicBool::new(false));
    let committed = Arc::new(AtomicU64::new(0));
    let (restarted, restarts) = tokio::sync::watch::channel(0u64);
    let clients: Vec<_> = (1..=CLIENTS)
        .map(|w| {
            tokio::spawn(client(
                dsn.clone(),
                w,
                stop.clone(),
                committed.clone(),
                restarts.clone(),
            ))
        })
        .collect();
    let mut chaos = rand::rngs::StdRng::seed_from_u64(14);
    for round in 0..4 {
        transfers(&committed, chaos.random_range(5..40)).await;
        if round % 2 == 0 {
            let status = proxy.signal_and_wait("KILL", Duration::from_secs(10));
            assert!(status.is_some(), "pgfleet killed");
            proxy = Proxy::start_with_config(config.clone());
            restarted.send_modify(|n| *n += 1);
        } else {
            let shard = chaos.random_range(0..2);
            let node = &fleet.shards[shard].primary;
            node.kill().expect("kill -9 a shard primary");
            node.start().expect("restart the shard primary");
        }
    }
    // The fleet works again after the last kill.
    transfers(&committed, 20).await;
    stop.store(true, Ordering::Relaxed);
    restarted.send_modify(|n| *n += 1);
    for c in clients {
        c.await.expect("client task");
    }

    // Nothing stays prepared once recovery ran.
    let prepared = |shard: usize| fleet.on_primary(shard, APP_DB, "SELECT count(*) FROM pg_prepared_xacts");
    let cleared = wait_until(Duration::from_secs(60), async || {
        prepared(0).trim() == "0" && prepared(1).trim() == "0"
    })
    .await;
    assert!(
        cleared.is_some(),
        "prepared transactions left: {} and {}",
        prepared(0),
        prepared(1)
    );

    // The total is unchanged; every transfer is whole (both halves, summing to zero) or absent; every
    // balance is its start plus its moves.
    let mut total = 0i64;
    let mut by_transfer: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    let mut balance_gap = Vec::new();
    for shard in 0..2 {
        let out = fleet.on_primary(
            shard,
            APP_DB,
            "SELECT a.id, a.balance, coalesce((SELECT sum(delta) FROM moves m WHERE m.account_id = a.id), 0) \
             FROM accounts a",
        );
        for line in out.lines() {
            let v: Vec<i64> = line.split('|').map(|f| f.parse().expect("number")).collect();
            total += v[1];
            if v[1] != START + v[2] {
                balance_gap.push((v[0], v[1], v[2]));
            }
        }
        for line in fleet
            .on_primary(shard, APP_DB, "SELECT transfer, delta FROM moves")
            .lines()
        {
            let v: Vec<i64> = line.split('|').map(|f| f.parse().expect("number")).collect();
            by_transfer.entry(v[0]).or_default().push(v[1]);
        }
    }
    assert_eq!(total, ACCOUNTS * START, "money made or lost");
    assert!(
        balance_gap.is_empty(),
        "balances that disagree with their moves: {balance_gap:?}"
    );
    let half: Vec<_> = by_transfer
        .iter()
        .filter(|(_, d)| d.len() != 2 || d.iter().sum::<i64>() != 0)
        .collect();
    assert!(half.is_empty(), "half-applied transfers: {half:?}");
    assert!(
        by_transfer.len() as u64 >= committed.load(Ordering::Relaxed),
        "every acknowledged transfer is there: {} of {}",
        by_transfer.len(),
        committed.load(Ordering::Relaxed)
    );
}
