//! Operating forward mode: `SHOW REPLICATION` and the `pgfleet_replication_*` metrics follow a real
//! forward-mode fleet (a primary and two plain servers) through the initial copy and the stream, and the
//! slot monitor warns when a slot holds more WAL than `replication.max_slot_lag`, once per crossing.

use std::collections::HashMap;
use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_with_async, options};
use crate::support::proxy::{Proxy, Row, connect, free_port, show, text};
use pgfleet::replication::setup::feed_slot_name;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::Client;

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";
/// Rows in the table that exists before pgfleet starts, so the initial copy has something to count.
const SEEDED: u64 = 1000;

/// Forward mode, an admin user, a fast health check (the slot monitor checks every ten health intervals,
/// at least every second), metrics on `metrics_port` if given, and `extra` appended to `[replication]`.
fn config(metrics_port: Option<u16>, extra_replication: &str) -> String {
    let mut text = format!(
        "[replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"{PASSWORD}\"\n\
         databases = [\"{APP_DB}\"]\n{extra_replication}\n\n[health]\ninterval = \"100ms\"\n\n\
         [[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n"
    );
    if let Some(port) = metrics_port {
        text.push_str(&format!("\n[admin]\nmetrics_address = \"127.0.0.1:{port}\"\n"));
    }
    text
}

async fn forward_cluster() -> localcluster::LocalCluster {
    let cluster = cluster_with_async(crate::support::cluster::ClusterOptions {
        streaming: false,
        ..options()
    })
    .await;
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            &format!(
                "CREATE TABLE pre (id int primary key, v text); \
                 INSERT INTO pre SELECT g, 'x' || g FROM generate_series(1, {SEEDED}) g; \
                 ALTER TABLE pre OWNER TO app;"
            ),
        )
        .expect("seed");
    cluster
}

fn number(row: &Row, column: &str) -> u64 {
    let v = text(row, column);
    v.parse()
        .unwrap_or_else(|_| panic!("column {column} = {v:?} is not a number"))
}

fn is_null(row: &Row, column: &str) -> bool {
    matches!(row.get(column), Some(None))
}

/// pgfleet's log without the per-change trace lines.
fn log_of(proxy: &Proxy) -> String {
    proxy
        .log_contents()
        .lines()
        .filter(|l| !l.contains("change="))
        .collect::<Vec<_>>()
        .join("\n")
}

/// [`crate::support::wait_until`] for `limit`, failing with `what` and pgfleet's log.
async fn wait_until<T, F, Fut>(proxy: &Proxy, what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    crate::support::wait_until(limit, async || check().await)
        .await
        .unwrap_or_else(|| {
            panic!(
                "timed out after {limit:?} waiting for {what}\n--- log ---\n{}",
                log_of(proxy)
            )
        })
}

/// SHOW REPLICATION once every row is streaming with a known applied position.
async fn wait_streaming(proxy: &Proxy, admin: &Client, replicas: usize) -> Vec<Row> {
    wait_until(
        proxy,
        "every replica streaming",
        Duration::from_secs(60),
        || async {
            let rows = show(admin, "SHOW REPLICATION").await;
            let ready = rows.len() == replicas
                && rows
                    .iter()
                    .all(|r| text(r, "state") == "streaming" && !is_null(r, "applied_lsn"));
            ready.then_some(rows)
        },
    )
    .await
}

/// `GET /metrics`: the body of a 200 answer.
async fn metrics(port: u16) -> String {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to /metrics");
    let request = format!("GET /metrics HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the metrics server closes the connection after answering")
        .expect("read answer");
    let answer = String::from_utf8(answer).expect("utf-8 answer");
    assert!(answer.starts_with("HTTP/1.1 200 "), "{answer}");
    let (_, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {answer:?}"));
    body.to_owned()
}

fn row_of<'a>(rows: &'a [Row], node: &str) -> &'a Row {
    rows.iter()
        .find(|r| text(r, "node") == node)
        .unwrap_or_else(|| panic!("no row for {node} in {rows:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn show_replication_and_metrics_follow_copy_and_stream() {
    let cluster = forward_cluster().await;
    let metrics_port = free_port();
    let proxy = Proxy::start(&cluster, &config(Some(metrics_port), ""));
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;

    // After the initial copy: one row per (replica, database), streaming, the copied rows counted.
    let rows = wait_streaming(&proxy, &admin, cluster.replicas.len()).await;
    for replica in &cluster.replicas {
        let row = row_of(&rows, &replica.name);
        assert_eq!(text(row, "database"), APP_DB, "{row:?}");
        assert_eq!(text(row, "mode"), "forward", "{row:?}");
        // One slot per database, shared by its replicas.
        assert_eq!(text(row, "slot"), feed_slot_name("pgfleet", APP_DB), "{row:?}");
        assert!(text(row, "applied_lsn").contains('/'), "{row:?}");
        assert!(number(row, "rows") >= SEEDED, "{row:?}");
    }
    let before: HashMap<String, u64> = rows
        .iter()
        .map(|r| (text(r, "node").to_owned(), number(r, "transactions")))
        .collect();

    // Writes through pgfleet, one transaction each: every replica applies them all.
    let app = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    const WRITES: u64 = 5;
    for i in 1..=WRITES {
        app.simple_query(&format!("INSERT INTO pre VALUES ({}, 'w')", SEEDED + i))
            .await
            .expect("insert");
    }
    let rows = wait_until(
        &proxy,
        "transactions applied",
        Duration::from_secs(30),
        || async {
            let rows = show(&admin, "SHOW REPLICATION").await;
            let done = rows.len() == before.len()
                && rows
                    .iter()
                    .all(|r| number(r, "transactions") >= before[text(r, "node")] + WRITES);
            done.then_some(rows)
        },
    )
    .await;
    for row in &rows {
        assert_eq!(text(row, "state"), "streaming", "{row:?}");
        assert!(number(row, "rows") >= SEEDED + WRITES, "{row:?}");
    }

    // The slot monitor has reported each slot, and the primary's position gives a byte lag.
    let rows = wait_until(&proxy, "slot sizes and lag", Duration::from_secs(15), || async {
        let rows = show(&admin, "SHOW REPLICATION").await;
        let known = rows
            .iter()
            .all(|r| !is_null(r, "slot_retained_bytes") && !is_null(r, "lag_bytes") && !is_null(r, "lag_ms"));
        known.then_some(rows)
    })
    .await;
    for row in &rows {
        number(row, "slot_retained_bytes");
        number(row, "lag_bytes");
    }

    // /metrics: the state of each replica, its counters, and the slot sizes.
    let body = metrics(metrics_port).await;
    for replica in &cluster.replicas {
        let labels = format!("node=\"{}\",database=\"{APP_DB}\"", replica.name);
        for line in [
            format!("pgfleet_replication_state{{{labels},state=\"streaming\"}} 1\n"),
            format!("pgfleet_replication_state{{{labels},state=\"copying\"}} 0\n"),
        ] {
            assert!(body.contains(&line), "{line} in\n{body}");
        }
        for family in [
            "pgfleet_replication_applied_lsn",
            "pgfleet_replication_lag_bytes",
            "pgfleet_replication_rows_total",
            "pgfleet_replication_transactions_total",
        ] {
            let prefix = format!("{family}{{{labels}}} ");
            assert!(
                body.lines().any(|l| l.starts_with(&prefix)),
                "{prefix} in\n{body}"
            );
        }
        let slot = feed_slot_name("pgfleet", APP_DB);
        let prefix = format!("pgfleet_replication_slot_retained_bytes{{slot=\"{slot}\"}} ");
        let sample = body
            .lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("{prefix} in\n{body}"));
        assert!(sample.parse::<u64>().is_ok(), "{sample}");
    }
    // The default max_slot_lag (1GB) is far away: no warning.
    assert!(
        !proxy
            .log_contents()
            .contains("more than replication.max_slot_lag")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slot_over_max_slot_lag_is_warned_once_per_crossing() {
    let cluster = forward_cluster().await;
    let slots = [feed_slot_name("pgfleet", APP_DB)];
    {
        let proxy = Proxy::start(&cluster, &config(None, ""));
        let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;
        wait_streaming(&proxy, &admin, cluster.replicas.len()).await;
    }
    // pgfleet is down: the slots keep the WAL of these writes for the replicas.
    cluster
        .psql(
            &cluster.primary,
            APP_DB,
            "INSERT INTO pre SELECT g, 'offline' FROM generate_series(2001, 4000) g",
        )
        .expect("write while pgfleet is down");

    let proxy = Proxy::start(&cluster, &config(None, "max_slot_lag = \"1kB\""));
    let app = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let mut next = 10_000;
    let warned = |log: &str| {
        slots.iter().all(|slot| {
            log.lines()
                .any(|l| l.contains("more than replication.max_slot_lag") && l.contains(slot.as_str()))
        })
    };
    // More writes keep the WAL moving, so every slot stays behind the primary's position.
    wait_until(
        &proxy,
        "the max_slot_lag warning",
        Duration::from_secs(15),
        || {
            next += 1;
            let id = next;
            let app = &app;
            let proxy = &proxy;
            async move {
                app.simple_query(&format!("INSERT INTO pre VALUES ({id}, 'w')"))
                    .await
                    .expect("insert");
                warned(&proxy.log_contents()).then_some(())
            }
        },
    )
    .await;
    let log = proxy.log_contents();
    let warning = log
        .lines()
        .find(|l| l.contains("more than replication.max_slot_lag"))
        .unwrap_or_else(|| panic!("no warning in {log}"));
    assert!(warning.contains("WARN"), "{warning}");
    assert!(warning.contains("max_slot_lag=1024"), "{warning}");
    assert!(warning.contains("retained_bytes="), "{warning}");

    // A few more checks: each crossing is logged once, not at every check.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let log = proxy.log_contents();
    for slot in &slots {
        let count = |needle: &str| {
            log.lines()
                .filter(|l| l.contains(needle) && l.contains(&format!("slot={slot}")))
                .count()
        };
        let over = count("more than replication.max_slot_lag");
        let under = count("is back under replication.max_slot_lag");
        assert!(
            over == under || over == under + 1,
            "{slot}: {over} warnings, {under} recoveries\n{log}"
        );
    }

    // Forwarding resumed where the replicas stood: everything written, nothing twice.
    let expected = cluster
        .psql(&cluster.primary, APP_DB, "SELECT count(*) FROM pre")
        .expect("count on the primary");
    for replica in &cluster.replicas {
        wait_until(&proxy, "replicas caught up", Duration::from_secs(30), || async {
            let got = cluster.psql(replica, APP_DB, "SELECT count(*) FROM pre").ok()?;
            (got.trim() == expected.trim()).then_some(())
        })
        .await;
    }
}
