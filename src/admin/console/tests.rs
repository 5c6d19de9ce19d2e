//! Unit tests of `console`.

use std::sync::Arc;
use std::time::Duration;

use super::*;
use crate::config::Config;
use crate::protocol::Frame;
use crate::protocol::messages::{error_field, query, sync};

fn context() -> Arc<Context> {
    let config = Config::parse(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"pg1\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\n\n\
         [[nodes]]\nname = \"pg2\"\naddress = \"127.0.0.1:5502\"\nrole = \"replica\"\nweight = 3\n\n\
         [routing]\nwrite_functions = [\"bump\"]\n",
    )
    .expect("config");
    crate::admin::context_for(config)
}

/// A shutdown signal that never fires.
fn no_shutdown() -> super::Shutdown {
    tokio::sync::watch::channel(None).1
}

/// Drives a console over an in-memory pipe: sends `input`, closes, returns every frame received.
async fn converse(ctx: Arc<Context>, input: Vec<Bytes>) -> Vec<Frame> {
    let (mut ours, mut theirs) = tokio::io::duplex(1 << 20);
    let task = tokio::spawn(async move { run_console(&mut theirs, &ctx, "admin", &mut no_shutdown()).await });
    for bytes in input {
        ours.write_all(&bytes).await.expect("write");
    }
    ours.write_all(&build(b'X', &[])).await.expect("terminate");
    tokio::time::timeout(Duration::from_secs(5), task)
        .await
        .expect("console ends")
        .expect("no panic")
        .expect("console ok");
    let mut buf = FrameBuffer::new(1 << 20);
    ours.read_buf(buf.read_target()).await.expect("read");
    while ours.read_buf(buf.read_target()).await.expect("read") > 0 {}
    let mut frames = Vec::new();
    while let Some(f) = buf.next_frame().expect("frame") {
        frames.push(f);
    }
    frames
}

fn kinds(frames: &[Frame]) -> String {
    frames.iter().map(|f| f.kind as char).collect()
}

/// The text values of every DataRow.
fn rows(frames: &[Frame]) -> Vec<Vec<Option<String>>> {
    frames
        .iter()
        .filter(|f| f.kind == b'D')
        .map(|f| {
            let body = f.body();
            let n = i16::from_be_bytes([body[0], body[1]]) as usize;
            let mut at = 2;
            (0..n)
                .map(|_| {
                    let len = i32::from_be_bytes([body[at], body[at + 1], body[at + 2], body[at + 3]]);
                    at += 4;
                    if len < 0 {
                        return None;
                    }
                    let v = String::from_utf8(body[at..at + len as usize].to_vec()).expect("utf8");
                    at += len as usize;
                    Some(v)
                })
                .collect()
        })
        .collect()
}

fn after_startup(frames: &[Frame]) -> &[Frame] {
    let z = frames
        .iter()
        .position(|f| f.kind == b'Z')
        .expect("startup ReadyForQuery");
    &frames[z + 1..]
}

#[tokio::test]
async fn startup_then_show_nodes() {
    let s = context();
    s.stats
        .request_routed(1, crate::router::classify::Target::Replica, "read");
    s.stats
        .request_routed(1, crate::router::classify::Target::Replica, "read");
    s.stats.node_error(0);
    let frames = converse(s, vec![query("show nodes;")]).await;
    let startup_kinds: String = kinds(&frames).chars().take_while(|k| *k != 'Z').collect();
    assert_eq!(startup_kinds, "SSSSSSSSK");
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "TDDCZ");
    let rows = rows(rest);
    assert_eq!(rows[0][0].as_deref(), Some("pg1"));
    assert_eq!(rows[0][1].as_deref(), Some("127.0.0.1:5501"));
    assert_eq!(rows[0][2].as_deref(), Some("primary"));
    assert_eq!(rows[0][10].as_deref(), Some("1"), "errors of pg1");
    assert_eq!(rows[1][2].as_deref(), Some("replica"));
    assert_eq!(rows[1][9].as_deref(), Some("2"), "queries of pg2");
    assert_eq!(rows[1][11].as_deref(), Some("3"), "weight of pg2");
    assert_eq!(command_tag_of(rest), "SHOW");
}

fn command_tag_of(frames: &[Frame]) -> String {
    let c = frames.iter().find(|f| f.kind == b'C').expect("CommandComplete");
    crate::protocol::messages::command_tag(c.body())
        .expect("tag")
        .to_owned()
}

#[tokio::test]
async fn show_route_uses_the_configured_lists() {
    let frames = converse(
        context(),
        vec![
            query("SHOW ROUTE SELECT 1"),
            query("show route select bump()"),
            query("SHOW ROUTE BEGIN READ ONLY; SELECT 1;"),
            query("SHOW ROUTE"),
        ],
    )
    .await;
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "TDCZTDCZTDCZEZ");
    let rows = rows(rest);
    assert_eq!(rows[0][0].as_deref(), Some("replica"));
    assert_eq!(rows[0][1].as_deref(), Some("read"));
    assert_eq!(rows[0][4].as_deref(), Some("configured lists"));
    assert_eq!(rows[1][0].as_deref(), Some("primary"));
    assert!(rows[1][1].as_deref().is_some_and(|r| r.contains("bump")));
    assert_eq!(rows[2][0].as_deref(), Some("replica"));
    assert_eq!(rows[2][3].as_deref(), Some("read only"));
    let err = rest.iter().find(|f| f.kind == b'E').expect("error");
    assert_eq!(error_field(err.body(), b'C'), Some("42601"));
}

#[tokio::test]
async fn show_route_refuses_a_statement_too_deep_to_classify() {
    let deep = format!("SHOW ROUTE SELECT {}1", "1+".repeat(500_000));
    let frames = converse(context(), vec![query(&deep), query("SHOW ROUTE SELECT 1")]).await;
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "EZTDCZ");
    assert_eq!(error_field(rest[0].body(), b'C'), Some("54001"));
    let message = error_field(rest[0].body(), b'M').unwrap_or("");
    assert!(message.contains(&MAX_DEPTH.to_string()), "{message}");
    assert_eq!(rows(rest)[0][0].as_deref(), Some("replica"));
}

#[tokio::test]
async fn errors_empty_queries_and_several_commands() {
    let frames = converse(
        context(),
        vec![
            query("SHOW ROUTES"),
            query(" ; "),
            query("SHOW POOLS; SHOW STATS"),
            query("SHOW CLIENTS; SELECT 1; SHOW POOLS"),
        ],
    )
    .await;
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "EZIZTCTDDDCZTCEZ");
    let err = &rest[0];
    assert_eq!(error_field(err.body(), b'C'), Some("42601"));
    assert_eq!(
        error_field(err.body(), b'M'),
        Some("pgfleet: unknown admin command \"SHOW ROUTES\"")
    );
    assert!(error_field(err.body(), b'H').is_some_and(|h| h.contains("SHOW NODES")));
    let stats = rows(rest);
    assert_eq!(stats[0][0].as_deref(), Some("clients_total"));
    assert_eq!(stats[0][1], None);
}

#[tokio::test]
async fn extended_protocol_is_refused_up_to_sync() {
    let parse = build(b'P', b"\0SHOW NODES\0\0\0");
    let bind = build(b'B', b"\0\0\0\0\0\0\0\0");
    let execute = build(b'E', b"\0\0\0\0\0");
    let frames = converse(context(), vec![parse, bind, execute, sync(), query("SHOW STATS")]).await;
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "EZTDDDCZ");
    assert_eq!(error_field(rest[0].body(), b'C'), Some("0A000"));
}

#[tokio::test]
async fn eof_ends_quietly_and_garbage_is_fatal() {
    let s = context();
    // A client that closes its side without Terminate: the console ends without an error.
    let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
    ours.shutdown().await.expect("shutdown");
    let r = run_console(&mut theirs, &s, "admin", &mut no_shutdown()).await;
    assert!(r.is_ok(), "{r:?}");
    let (mut ours, mut theirs) = tokio::io::duplex(1 << 16);
    ours.write_all(&build(b'p', b"pw\0")).await.expect("write");
    let r = run_console(&mut theirs, &s, "admin", &mut no_shutdown()).await;
    assert!(matches!(r, Err(ConsoleError::UnexpectedMessage('p'))), "{r:?}");
}

#[tokio::test]
async fn show_replication_in_external_mode_lists_the_replicas() {
    let s = context();
    s.fleet.update(
        1,
        crate::cluster::view::NodeState {
            up: true,
            in_recovery: Some(true),
            lsn: Some(crate::protocol::lsn::Lsn((0x16 << 32) | 0xB374D848)),
            ..Default::default()
        },
    );
    let frames = converse(s, vec![query("show replication")]).await;
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "TDCZ");
    let desc = String::from_utf8_lossy(rest[0].body()).into_owned();
    for column in [
        "node",
        "mode",
        "slot",
        "applied_lsn",
        "slot_retained_bytes",
        "streaming_txns",
        "held_bytes",
    ] {
        assert!(desc.contains(column), "{column} in {desc:?}");
    }
    let rows = rows(rest);
    assert_eq!(rows[0][0].as_deref(), Some("pg2"));
    assert_eq!(rows[0][1], None, "no database in external mode");
    assert_eq!(rows[0][2].as_deref(), Some("external"));
    assert_eq!(rows[0][4].as_deref(), Some("streaming"));
    assert_eq!(rows[0][5].as_deref(), Some("16/B374D848"));
    assert_eq!(rows[0][8], None, "rows are counted in forward mode only");
    assert_eq!(
        rows[0][11..],
        [None, None, None],
        "large transactions are forward mode's"
    );
}

#[test]
fn show_metrics_has_one_row_per_line() {
    let s = context();
    let table = show_metrics(&s);
    assert!(table.rows.len() > 10);
    assert!(
        table
            .rows
            .iter()
            .any(|r| r[0].as_deref() == Some("pgfleet_node_queries_total{node=\"pg1\"} 0"))
    );
}

#[test]
fn keywords() {
    assert_eq!(
        strip_keywords("show  Route\nSELECT 1", &["SHOW", "ROUTE"]),
        Some("SELECT 1")
    );
    assert_eq!(strip_keywords("SHOW ROUTE", &["SHOW", "ROUTE"]), Some(""));
    assert_eq!(strip_keywords("SHOW ROUTES", &["SHOW", "ROUTE"]), None);
    assert_eq!(strip_keywords("SHOWROUTE x", &["SHOW", "ROUTE"]), None);
    assert_eq!(strip_keywords("SHOW é", &["SHOW", "ROUTE"]), None);
}

#[test]
fn timestamps() {
    assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00Z");
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(951_782_400)),
        "2000-02-29T00:00:00Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_709_251_199)),
        "2024-02-29T23:59:59Z"
    );
    assert_eq!(
        rfc3339(UNIX_EPOCH + Duration::from_secs(1_735_689_600)),
        "2025-01-01T00:00:00Z"
    );
}

#[tokio::test]
async fn show_shards_lists_each_shard_with_its_primary_and_replicas() {
    let config = Config::parse(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"s0\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\nshard = 0\n\n\
         [[nodes]]\nname = \"s1\"\naddress = \"127.0.0.1:5502\"\nrole = \"primary\"\nshard = 1\n\n\
         [[nodes]]\nname = \"s1r\"\naddress = \"127.0.0.1:5503\"\nrole = \"replica\"\nshard = 1\n\n\
         [[sharded_tables]]\nname = \"accounts\"\ncolumn = \"id\"\n",
    )
    .expect("config");
    let s = crate::admin::context_for(config);
    s.stats
        .request_routed(2, crate::router::classify::Target::Replica, "read");
    let frames = converse(s, vec![query("SHOW SHARDS")]).await;
    let rest = after_startup(&frames);
    assert_eq!(kinds(rest), "TDDCZ");
    let rows = rows(rest);
    let some = |v: &str| Some(v.to_owned());
    assert_eq!(
        rows[0],
        vec![
            some("0"),
            some("s0"),
            some("up"),
            some("0"),
            some("0"),
            some("0"),
            some("0"),
            some("accounts(id)")
        ]
    );
    assert_eq!(
        rows[1],
        vec![
            some("1"),
            some("s1"),
            some("up"),
            some("1"),
            some("1"),
            some("1"),
            some("0"),
            some("accounts(id)")
        ]
    );
}

/// A fleet of two shards, a primary each, with `extra` TOML after the nodes.
fn two_shards(extra: &str) -> Config {
    Config::parse(&format!(
        "[listen]\naddress = \"127.0.0.1:0\"\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"s0\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\nshard = 0\n\n\
         [[nodes]]\nname = \"s1\"\naddress = \"127.0.0.1:5502\"\nrole = \"primary\"\nshard = 1\n\n{extra}"
    ))
    .expect("config")
}

#[tokio::test]
async fn show_route_names_the_shards_in_a_sharded_fleet() {
    let config = two_shards("[[sharded_tables]]\nname = \"accounts\"\ncolumn = \"id\"\n");
    let s = crate::admin::context_for(config);
    let shard_of_7 = crate::shard::hash::shard_for(&crate::shard::value::KeyValue::Int(7), 2);
    let frames = converse(
        s,
        vec![
            query("SHOW ROUTE SELECT * FROM accounts WHERE id = 7"),
            query("SHOW ROUTE SELECT count(*) FROM accounts"),
            query("SHOW ROUTE UPDATE accounts SET id = 8 WHERE id = 7"),
        ],
    )
    .await;
    let rest = after_startup(&frames);
    let rows = rows(rest);
    assert_eq!(rows[0][5].as_deref(), Some(shard_of_7.to_string().as_str()));
    assert!(
        rows[0][6].as_deref().is_some_and(|r| r.contains("accounts.id")),
        "{:?}",
        rows[0]
    );
    assert_eq!(rows[1][5].as_deref(), Some("every shard"));
    let refused = rest
        .iter()
        .find(|f| f.kind == b'E')
        .expect("the key update is refused");
    assert_eq!(error_field(refused.body(), b'C'), Some("0A000"));
}

#[test]
fn metrics_count_each_shard_in_a_sharded_fleet() {
    let config = two_shards(
        "[[nodes]]\nname = \"s1r\"\naddress = \"127.0.0.1:5503\"\nrole = \"replica\"\nshard = 1\n",
    );
    let s = crate::admin::context_for(config);
    s.stats
        .request_routed(1, crate::router::classify::Target::Primary, "write");
    s.stats
        .request_routed(2, crate::router::classify::Target::Replica, "read");
    s.stats.node_error(2);
    let text = crate::admin::metrics::render(&s);
    for line in [
        "pgfleet_shard_primary_up{shard=\"0\"} 1",
        "pgfleet_shard_primary_up{shard=\"1\"} 1",
        "pgfleet_shard_replicas_up{shard=\"0\"} 0",
        "pgfleet_shard_replicas_up{shard=\"1\"} 1",
        "pgfleet_shard_queries_total{shard=\"0\"} 0",
        "pgfleet_shard_queries_total{shard=\"1\"} 2",
        "pgfleet_shard_errors_total{shard=\"1\"} 1",
    ] {
        assert!(text.lines().any(|l| l == line), "{line} in:\n{text}");
    }
    let plain = crate::admin::metrics::render(&context());
    assert!(
        !plain.contains("pgfleet_shard_"),
        "an unsharded fleet has no shard families"
    );
}
