//! Unit tests of `metrics`.

use super::*;
use crate::config::Config;

fn context() -> Arc<Context> {
    let config = Config::parse(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"pg1\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\n\n\
         [[nodes]]\nname = \"pg\\\"2\"\naddress = \"127.0.0.1:5502\"\nrole = \"replica\"\n",
    )
    .expect("config");
    crate::admin::context_for(config)
}

#[test]
fn escaping() {
    assert_eq!(escape_label("a\\b\"c\nd"), "a\\\\b\\\"c\\nd");
    assert_eq!(escape_help("x\\y\nz \"q\""), "x\\\\y\\nz \"q\"");
}

#[test]
fn renders_every_family_with_help_and_type() {
    let s = context();
    s.stats
        .request_routed(1, crate::router::classify::Target::Replica, "read");
    s.stats
        .request_routed(0, crate::router::classify::Target::Primary, "INSERT \"writes\"");
    s.stats.node_error(1);
    let text = render(&s);
    for family in [
        "pgfleet_node_up",
        "pgfleet_node_queries_total",
        "pgfleet_node_errors_total",
        "pgfleet_node_lag_bytes",
        "pgfleet_node_lag_seconds",
        "pgfleet_route_decisions_total",
        "pgfleet_clients",
        "pgfleet_clients_logging_in",
        "pgfleet_clients_total",
        "pgfleet_login_failures_total",
        "pgfleet_backend_connections",
    ] {
        assert!(
            text.contains(&format!("# HELP {family} ")),
            "{family} HELP in\n{text}"
        );
        assert!(
            text.contains(&format!("# TYPE {family} ")),
            "{family} TYPE in\n{text}"
        );
    }
    assert!(
        text.contains("pgfleet_node_queries_total{node=\"pg1\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("pgfleet_node_queries_total{node=\"pg\\\"2\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("pgfleet_node_errors_total{node=\"pg\\\"2\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("pgfleet_node_up{node=\"pg1\",role=\"primary\"} 1\n"),
        "{text}"
    );
    assert!(text.contains("pgfleet_node_primary{node=\"pg1\"} 1\n"), "{text}");
    assert!(
        text.contains("pgfleet_route_decisions_total{target=\"primary\",rule=\"INSERT \\\"writes\\\"\"} 1\n"),
        "{text}"
    );
    assert!(
        text.contains("pgfleet_backend_connections{node=\"pg1\",state=\"idle\"} 0\n"),
        "{text}"
    );
    assert!(text.contains("pgfleet_clients 0\n"), "{text}");
    // Every line is a comment or `name{labels} value`.
    for line in text.lines() {
        assert!(
            line.starts_with("# ")
                || line
                    .rsplit_once(' ')
                    .is_some_and(|(_, v)| v.parse::<f64>().is_ok())
        );
    }
}

#[test]
fn forward_mode_families() {
    let config = Config::parse(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"pg1\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\n\n\
         [[nodes]]\nname = \"pg2\"\naddress = \"127.0.0.1:5502\"\nrole = \"replica\"\n\n\
         [replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"pw\"\n\
         databases = [\"app\"]\nmax_slot_lag = \"1kB\"\n",
    )
    .expect("config");
    let s = crate::admin::context_for(config);
    let progress = &s.replication.forward.progress[1][0];
    progress.set_state(crate::replication::State::Streaming);
    progress.set_applied(crate::protocol::lsn::Lsn(4096));
    progress.rows.store(1000, Relaxed);
    progress.transactions.store(7, Relaxed);
    let streamed = &s.replication.forward.streamed[0];
    streamed.hold();
    streamed.wrote(4096);
    let monitor = SlotMonitor::new();
    monitor.record(vec![("pgfleet_app_pg2".to_owned(), Some(2048))], 1024);
    let mut out = Exposition::default();
    replication(&mut out, &s, Some(&monitor));
    let text = out.text;
    for line in [
        "pgfleet_replication_state{node=\"pg2\",database=\"app\",state=\"streaming\"} 1\n",
        "pgfleet_replication_state{node=\"pg2\",database=\"app\",state=\"copying\"} 0\n",
        "pgfleet_replication_applied_lsn{node=\"pg2\",database=\"app\"} 4096\n",
        "pgfleet_replication_rows_total{node=\"pg2\",database=\"app\"} 1000\n",
        "pgfleet_replication_transactions_total{node=\"pg2\",database=\"app\"} 7\n",
        "pgfleet_replication_slot_retained_bytes{slot=\"pgfleet_app_pg2\"} 2048\n",
        "pgfleet_replication_max_slot_lag_bytes 1024\n",
        "# TYPE pgfleet_replication_lag_bytes gauge\n",
        "pgfleet_replication_streaming_transactions{database=\"app\"} 0\n",
        "pgfleet_replication_held_transactions{database=\"app\"} 1\n",
        "pgfleet_replication_held_bytes{database=\"app\"} 4096\n",
        "pgfleet_replication_held_transactions_total{database=\"app\"} 1\n",
        "# TYPE pgfleet_replication_held_transactions_total counter\n",
    ] {
        assert!(text.contains(line), "{line} in\n{text}");
    }
    // The primary's position is not known yet: no lag samples rather than made-up ones.
    assert!(!text.contains("pgfleet_replication_lag_bytes{"), "{text}");
    // External mode has none of these families.
    assert!(!render(&context()).contains("pgfleet_replication_"));
}

#[test]
fn routing_requests() {
    let ok = route(b"GET /metrics HTTP/1.1\r\nHost: x", || "m 1\n".to_owned());
    let ok = String::from_utf8(ok).expect("utf8");
    assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
    assert!(ok.contains("Content-Type: text/plain; version=0.0.4"), "{ok}");
    assert!(ok.contains("Content-Length: 4\r\n"), "{ok}");
    assert!(ok.contains("Connection: close\r\n"), "{ok}");
    assert!(ok.ends_with("\r\n\r\nm 1\n"), "{ok}");
    let head = String::from_utf8(route(b"HEAD /metrics?x=1 HTTP/1.0", || "m 1\n".to_owned())).expect("utf8");
    assert!(
        head.starts_with("HTTP/1.1 200") && head.ends_with("\r\n\r\n"),
        "{head}"
    );
    let missing = String::from_utf8(route(b"GET / HTTP/1.1", String::new)).expect("utf8");
    assert!(missing.starts_with("HTTP/1.1 404 "), "{missing}");
    let post = String::from_utf8(route(b"POST /metrics HTTP/1.1", String::new)).expect("utf8");
    assert!(
        post.starts_with("HTTP/1.1 405 ") && post.contains("\r\nAllow: GET, HEAD\r\n"),
        "{post}"
    );
    assert!(post.ends_with("\r\n\r\nuse GET\n"), "{post}");
    let bad = String::from_utf8(route(b"hello", String::new)).expect("utf8");
    assert!(bad.starts_with("HTTP/1.1 400 "), "{bad}");
}

#[test]
fn head_ends() {
    assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nbody"), Some(20));
    assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
    assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
}

#[tokio::test]
async fn serves_over_tcp() {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let address = listener.local_addr().expect("addr");
    let server = tokio::spawn(serve_metrics(listener, context()));
    let mut client = TcpStream::connect(address).await.expect("connect");
    client
        .write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await
        .expect("write");
    let mut answer = String::new();
    client.read_to_string(&mut answer).await.expect("read");
    assert!(answer.starts_with("HTTP/1.1 200 OK\r\n"), "{answer}");
    assert!(
        answer.contains("pgfleet_node_up{node=\"pg1\",role=\"primary\"} 1"),
        "{answer}"
    );
    // A client that sends an endless head is cut off.
    let mut client = TcpStream::connect(address).await.expect("connect");
    let junk = vec![b'a'; MAX_HEAD + 4096];
    let _ = client.write_all(&junk).await;
    let mut answer = Vec::new();
    // The unread rest of the junk may turn the close into a reset before the 431 is read; what
    // matters is that the server answers or hangs up rather than buffering without end.
    let read = tokio::time::timeout(Duration::from_secs(5), client.read_to_end(&mut answer)).await;
    assert!(read.is_ok(), "the server neither answered nor closed");
    let answer = String::from_utf8_lossy(&answer);
    assert!(
        answer.is_empty() || answer.starts_with("HTTP/1.1 431 "),
        "{answer}"
    );
    server.abort();
}
