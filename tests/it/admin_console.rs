//! The admin console (virtual database `pgfleet`) and the Prometheus endpoint, against a real pgfleet in
//! front of a real primary and two streaming replicas: known traffic goes through the proxy as the app
//! user, then the console's SHOW commands and `/metrics` must account for it.

use std::time::{Duration, Instant};

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, Row, connect, free_port, show, text, try_connect};
use crate::support::wait_until;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";

/// Extra config: an admin user (it exists only in pgfleet: the console never logs in to a node) and the
/// metrics listener on `metrics_port`.
fn admin_toml(metrics_port: u16) -> String {
    format!(
        "[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n\n\
         [admin]\nmetrics_address = \"127.0.0.1:{metrics_port}\"\n"
    )
}

fn number(row: &Row, column: &str) -> u64 {
    let v = text(row, column);
    v.parse()
        .unwrap_or_else(|_| panic!("column {column} = {v:?} is not a number"))
}

fn node_row<'a>(nodes: &'a [Row], name: &str) -> &'a Row {
    nodes
        .iter()
        .find(|r| text(r, "name") == name)
        .unwrap_or_else(|| panic!("no node {name} in {nodes:?}"))
}

/// The SQLSTATE of a failed statement or connection.
fn sqlstate(e: &tokio_postgres::Error) -> String {
    e.as_db_error()
        .map(|d| d.code().code().to_owned())
        .unwrap_or_else(|| panic!("not a server error: {e}"))
}

/// A raw HTTP/1.1 request; returns (status line, headers, body).
async fn http_get(port: u16, path: &str) -> (String, String, String) {
    let mut stream = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to /metrics");
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAccept: */*\r\n\r\n");
    stream.write_all(request.as_bytes()).await.expect("send request");
    let mut answer = Vec::new();
    tokio::time::timeout(Duration::from_secs(10), stream.read_to_end(&mut answer))
        .await
        .expect("the metrics server closes the connection after answering")
        .expect("read answer");
    let answer = String::from_utf8(answer).expect("utf-8 answer");
    let (head, body) = answer
        .split_once("\r\n\r\n")
        .unwrap_or_else(|| panic!("no header end in {answer:?}"));
    let (status, headers) = head.split_once("\r\n").unwrap_or((head, ""));
    (status.to_owned(), headers.to_owned(), body.to_owned())
}

/// The value of the sample `series` (name with its labels, exactly as rendered) in exposition text.
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics
        .lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.rsplit_once(' ').filter(|(s, _)| *s == series))
        .map(|(_, v)| {
            v.parse()
                .unwrap_or_else(|_| panic!("{series}: {v} is not a number"))
        })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn console_and_metrics_account_for_the_traffic() {
    let cluster = cluster_async().await;
    let metrics_port = free_port();
    let proxy = Proxy::start(&cluster, &admin_toml(metrics_port));
    let app = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;

    // Known traffic: reads first, since after a write read-your-writes may keep reads on the primary
    // until the replicas replay it.
    for _ in 0..7 {
        app.simple_query("SELECT 1").await.expect("read");
    }
    app.batch_execute("CREATE TABLE admin_t (id int)")
        .await
        .expect("create");
    for i in 0..3 {
        app.simple_query(&format!("INSERT INTO admin_t VALUES ({i})"))
            .await
            .expect("insert");
    }

    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;

    // SHOW NODES: every node, its address and role, up, and the traffic it served.
    let nodes = show(&admin, "SHOW NODES").await;
    assert_eq!(nodes.len(), 3, "{nodes:?}");
    let primary = node_row(&nodes, &cluster.primary.name);
    assert_eq!(text(primary, "address"), cluster.primary.address());
    assert_eq!(text(primary, "role"), "primary");
    assert!(
        number(primary, "queries") >= 3,
        "primary served the writes: {primary:?}"
    );
    let mut replica_queries = 0;
    for replica in &cluster.replicas {
        let row = node_row(&nodes, &replica.name);
        assert_eq!(text(row, "address"), replica.address());
        assert_eq!(text(row, "role"), "replica");
        replica_queries += number(row, "queries");
    }
    assert!(replica_queries >= 7, "replicas served the reads: {nodes:?}");
    for row in &nodes {
        assert_eq!(text(row, "state"), "up", "{row:?}");
        assert_eq!(number(row, "errors"), 0, "{row:?}");
        assert_eq!(number(row, "weight"), 1, "{row:?}");
    }
    // The primary holds at least the app session's connection (checked out or pooled).
    assert!(number(primary, "connections") >= 1, "{primary:?}");

    // Case, a trailing semicolon and surrounding blanks do not matter.
    let again = show(&admin, "  show nodes ; ").await;
    assert_eq!(again.len(), 3);

    // SHOW CLIENTS lists the app session while it is connected.
    let clients = show(&admin, "SHOW CLIENTS").await;
    let app_row = clients
        .iter()
        .find(|r| text(r, "user") == APP_USER && text(r, "database") == APP_DB)
        .unwrap_or_else(|| panic!("no app session in {clients:?}"));
    assert!(number(app_row, "requests") >= 11, "{app_row:?}");
    assert!(text(app_row, "address").starts_with("127.0.0.1:"), "{app_row:?}");
    assert!(
        clients
            .iter()
            .any(|r| text(r, "user") == ADMIN_USER && text(r, "database") == "pgfleet"),
        "the console session itself is listed: {clients:?}"
    );

    // SHOW POOLS: pools for database app, on the primary and on the replicas that served reads.
    let pools = show(&admin, "SHOW POOLS").await;
    let app_pools: Vec<_> = pools
        .iter()
        .filter(|r| text(r, "database") == APP_DB && text(r, "user") == APP_USER)
        .collect();
    assert!(
        app_pools.iter().any(|r| text(r, "node") == cluster.primary.name),
        "no primary pool for app: {pools:?}"
    );
    for row in &app_pools {
        assert_eq!(
            number(row, "in_use") + number(row, "available"),
            number(row, "size"),
            "{row:?}"
        );
    }

    // SHOW STATS: totals and the routing decisions.
    let stats = show(&admin, "SHOW STATS").await;
    let total = |name: &str| {
        stats
            .iter()
            .find(|r| text(r, "name") == name)
            .map(|r| number(r, "value"))
            .unwrap_or_else(|| panic!("no {name} in {stats:?}"))
    };
    assert!(total("clients_total") >= 2, "{stats:?}");
    assert!(total("clients_active") >= 2, "{stats:?}");
    let routed: u64 = stats
        .iter()
        .filter(|r| text(r, "name") == "route")
        .map(|r| number(r, "value"))
        .sum();
    assert!(routed >= 11, "{stats:?}");
    assert!(
        stats
            .iter()
            .any(|r| text(r, "name") == "route" && text(r, "target") == "replica"),
        "{stats:?}"
    );

    // SHOW ROUTE: the router's verdict and the rule behind it.
    let route = show(&admin, "SHOW ROUTE SELECT 1").await;
    assert_eq!(text(&route[0], "target"), "replica", "{route:?}");
    let route = show(&admin, "SHOW ROUTE INSERT INTO t VALUES (1)").await;
    assert_eq!(text(&route[0], "target"), "primary", "{route:?}");
    assert!(text(&route[0], "rule").contains("INSERT"), "{route:?}");
    let route = show(&admin, "show route SELECT nextval('s')").await;
    assert_eq!(text(&route[0], "target"), "primary", "{route:?}");
    assert!(text(&route[0], "rule").contains("nextval"), "{route:?}");
    let route = show(&admin, "SHOW ROUTE BEGIN READ ONLY").await;
    assert_eq!(text(&route[0], "transaction"), "read only", "{route:?}");

    // Errors: unknown commands and SHOW ROUTE without SQL are syntax errors; the session goes on.
    let e = admin
        .simple_query("SHOW NOTHING")
        .await
        .expect_err("unknown command");
    assert_eq!(sqlstate(&e), "42601");
    let db = e.as_db_error().expect("db error");
    assert!(db.message().contains("SHOW NOTHING"), "{db:?}");
    assert!(db.hint().is_some_and(|h| h.contains("SHOW ROUTE")), "{db:?}");
    let e = admin
        .simple_query("SHOW ROUTE")
        .await
        .expect_err("SHOW ROUTE needs SQL");
    assert_eq!(sqlstate(&e), "42601");
    // The extended protocol is refused, and the session survives it.
    let e = admin
        .query("SHOW NODES", &[])
        .await
        .expect_err("extended protocol");
    assert_eq!(sqlstate(&e), "0A000");
    assert_eq!(show(&admin, "SHOW NODES").await.len(), 3);

    // A user without admin = true is refused the console.
    let Err(e) = try_connect(&proxy.dsn(APP_USER, PASSWORD, "pgfleet")).await else {
        panic!("app is not an admin, yet it got the console");
    };
    assert_eq!(sqlstate(&e), "42501");

    // /metrics: the same counters, with no traffic in between.
    let nodes = show(&admin, "SHOW NODES").await;
    let (status, headers, body) = http_get(metrics_port, "/metrics").await;
    assert_eq!(status, "HTTP/1.1 200 OK");
    assert!(
        headers
            .to_ascii_lowercase()
            .contains("content-type: text/plain; version=0.0.4"),
        "{headers}"
    );
    for row in &nodes {
        let name = text(row, "name");
        let queries = sample(&body, &format!("pgfleet_node_queries_total{{node=\"{name}\"}}"));
        assert_eq!(queries, Some(number(row, "queries") as f64), "{name} in\n{body}");
        let errors = sample(&body, &format!("pgfleet_node_errors_total{{node=\"{name}\"}}"));
        assert_eq!(errors, Some(0.0), "{name} in\n{body}");
        let role = text(row, "role");
        let up = sample(
            &body,
            &format!("pgfleet_node_up{{node=\"{name}\",role=\"{role}\"}}"),
        );
        assert_eq!(up, Some(1.0), "{name} in\n{body}");
    }
    let replica_total: f64 = cluster
        .replicas
        .iter()
        .filter_map(|r| {
            sample(
                &body,
                &format!("pgfleet_node_queries_total{{node=\"{}\"}}", r.name),
            )
        })
        .sum();
    assert!(replica_total >= 7.0, "{body}");
    assert!(
        sample(&body, "pgfleet_clients").is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(
        sample(&body, "pgfleet_clients_total").is_some_and(|v| v >= 2.0),
        "{body}"
    );
    assert!(
        sample(&body, "pgfleet_login_failures_total").is_some_and(|v| v >= 1.0),
        "{body}"
    );
    assert!(
        body.contains("# TYPE pgfleet_route_decisions_total counter"),
        "{body}"
    );
    assert!(
        body.contains("pgfleet_route_decisions_total{target=\"replica\",rule="),
        "{body}"
    );
    let primary_name = &cluster.primary.name;
    assert!(
        sample(
            &body,
            &format!("pgfleet_backend_connections{{node=\"{primary_name}\",state=\"idle\"}}")
        )
        .is_some(),
        "{body}"
    );
    let (status, _, _) = http_get(metrics_port, "/nope").await;
    assert!(status.starts_with("HTTP/1.1 404"), "{status}");

    // The app session leaves SHOW CLIENTS when it disconnects.
    drop(app);
    let gone = wait_until(Duration::from_secs(10), async || {
        !show(&admin, "SHOW CLIENTS")
            .await
            .iter()
            .any(|r| text(r, "user") == APP_USER)
    })
    .await;
    assert!(
        gone.is_some(),
        "app session still listed: {:?}",
        show(&admin, "SHOW CLIENTS").await
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_node_shows_down() {
    let cluster = cluster_async().await;
    let metrics_port = free_port();
    let proxy = Proxy::start(&cluster, &admin_toml(metrics_port));
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;
    let victim = &cluster.replicas[1];

    // Once the monitor has checked every node, replicas are observed in recovery and have a lag.
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let nodes = show(&admin, "SHOW NODES").await;
        let seen = nodes.iter().all(|r| text(r, "observed") != "unknown");
        if seen {
            assert_eq!(
                text(node_row(&nodes, &cluster.primary.name), "observed"),
                "primary"
            );
            assert_eq!(text(node_row(&nodes, &victim.name), "observed"), "replica");
            assert!(node_row(&nodes, &victim.name)["lsn"].is_some(), "{nodes:?}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "monitor never observed every node: {nodes:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    victim.stop_immediate().expect("stop replica");
    let nodes = wait_until(Duration::from_secs(20), async || {
        let nodes = show(&admin, "SHOW NODES").await;
        (text(node_row(&nodes, &victim.name), "state") == "down").then_some(nodes)
    })
    .await
    .unwrap_or_else(|| panic!("{} never shown down", victim.name));
    assert_eq!(text(node_row(&nodes, &cluster.primary.name), "state"), "up");
    let (_, _, body) = http_get(metrics_port, "/metrics").await;
    let up = sample(
        &body,
        &format!("pgfleet_node_up{{node=\"{}\",role=\"replica\"}}", victim.name),
    );
    assert_eq!(up, Some(0.0), "{body}");
    let up = sample(
        &body,
        &format!(
            "pgfleet_node_up{{node=\"{}\",role=\"primary\"}}",
            cluster.primary.name
        ),
    );
    assert_eq!(up, Some(1.0), "{body}");
}
