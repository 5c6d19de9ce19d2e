//! Property tests for the code that reads untrusted bytes: framing, startup packets, protocol field
//! readers and the router. No input may panic, and what the proxy builds it must read back unchanged.
//! The plain tests after them replay what the cargo-fuzz targets in fuzz/ found, so the fixes stay
//! covered by a stable `cargo test`. The last test sends statements nested deep enough to overflow a
//! thread's stack through a real pgfleet in front of a real fleet.

use std::sync::Arc;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect};
use pgfleet::frontend::request::{End, Plan, Request};
use pgfleet::frontend::state::Statements;
use pgfleet::protocol::frame::{FrameBuffer, build};
use pgfleet::protocol::messages::{bind_names, error_field, parse_fields, query_text, target_name};
use pgfleet::protocol::startup::{StartupError, decode, encode_startup, packet_len, parse_options};
use pgfleet::router::cache::{Place, classify_cached, classify_placed, classify_placed_utf8};
use pgfleet::router::classify::{MAX_CLASSIFIED_STATEMENT, Rule, Target, classify};
use pgfleet::router::deallocate::deallocated_names;
use pgfleet::router::depth::too_deep;
use pgfleet::router::functions::FunctionRules;
use pgfleet::router::redact::redact;
use pgfleet::router::split::split_statements;
use proptest::prelude::*;
use tokio_postgres::{Client, SimpleQueryMessage};

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn framing_never_panics_and_keeps_frames_whole(chunks in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..64), 0..16)) {
        let mut fb = FrameBuffer::new(4096);
        for c in chunks {
            fb.read_target().extend_from_slice(&c);
            while let Ok(Some(f)) = fb.next_frame() {
                prop_assert_eq!(f.raw.len(), 5 + f.body().len());
            }
        }
    }

    #[test]
    fn frames_round_trip_whatever_the_split(kind in any::<u8>(), body in prop::collection::vec(any::<u8>(), 0..300), cut in 0usize..310) {
        let raw = build(kind, &body);
        let cut = cut.min(raw.len());
        let mut fb = FrameBuffer::new(4096);
        fb.read_target().extend_from_slice(&raw[..cut]);
        let early = fb.next_frame().expect("valid length");
        if cut < raw.len() {
            prop_assert!(early.is_none());
            fb.read_target().extend_from_slice(&raw[cut..]);
        }
        let f = match early { Some(f) => f, None => fb.next_frame().expect("valid").expect("whole") };
        prop_assert_eq!(f.kind, kind);
        prop_assert_eq!(f.body(), &body[..]);
    }

    #[test]
    fn startup_packets_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..200)) {
        let _ = packet_len(&bytes);
        let _ = decode(&bytes);
        let _ = parse_options(&String::from_utf8_lossy(&bytes));
    }

    #[test]
    fn startup_round_trip(user in "[a-z]{1,12}", db in "[a-z0-9_]{0,12}") {
        let p = encode_startup(&[("user", &user), ("database", &db)]);
        prop_assert_eq!(packet_len(&p), Ok(Some(p.len())));
        prop_assert!(decode(&p).is_ok());
    }

    #[test]
    fn field_readers_never_panic(body in prop::collection::vec(any::<u8>(), 0..200), field in any::<u8>()) {
        let _ = query_text(&body);
        let _ = parse_fields(&body);
        let _ = bind_names(&body);
        let _ = target_name(&body);
        let _ = error_field(&body, field);
    }

    #[test]
    fn the_router_never_panics(sql in ".{0,200}") {
        let rules = FunctionRules::new(&[], &[]);
        let _ = split_statements(&sql);
        let _ = classify(&sql, &rules);
    }

    #[test]
    fn the_router_never_panics_on_sql_like_text(parts in prop::collection::vec(prop_oneof![
        Just("SELECT "), Just("INSERT "), Just("'"), Just("\""), Just("$$"), Just("$a$"), Just("/*"), Just("*/"),
        Just("--"), Just("\n"), Just(";"), Just("("), Just(")"), Just("nextval("), Just("FOR UPDATE"),
        Just("WITH x AS ("), Just("E'\\\\'"), Just("BEGIN"), Just("SET "), Just("1"), Just(" ")], 0..40)) {
        let sql: String = parts.concat();
        let rules = FunctionRules::new(&[], &[]);
        let _ = classify(&sql, &rules);
    }
}

proptest! {
    // Each case classifies twenty texts; fewer cases keep the run short.
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn the_cache_answers_as_classify(template in prop::collection::vec(prop_oneof![
        Just("SELECT "), Just("x"), Just("::varchar(#)"), Just(", "), Just(" FROM t WHERE a = "), Just("#"),
        Just("@"), Just(" LIMIT #"), Just(" FETCH FIRST # ROWS ONLY"), Just("("), Just(")"), Just("; "),
        Just("nextval(@)"), Just(" FOR UPDATE"), Just("EXPLAIN (ANALYZE #) DELETE FROM t"), Just("SET a = @")],
        0..12)) {
        // One statement shape, its constants spelt every way in turn: each text must get its own decision
        // whether or not an earlier spelling left an entry in the cache.
        const NUMBERS: &[&str] = &["1", "0", "123456789", "99999999999999999999", "1..2", "1.5", "1e5",
            "0x1F", "1_000", "1abc"];
        const STRINGS: &[&str] = &["'a'", "'it''s'", "E'a'", "E'\\u12'", "X'1F'", "X'zz'", "$$a$$",
            "$q$b$q$", "U&'d'", "B'101'"];
        let template: String = template.concat();
        let rules = Arc::new(FunctionRules::new(&["my_writer".to_owned()], &[]));
        // As one session sends them: its place points the lookup at the entry that followed its last text.
        let mut place = Place::default();
        let mut place_of_bytes = Place::default();
        for (number, string) in NUMBERS.iter().zip(STRINGS.iter().cycle()).chain(NUMBERS.iter().zip(STRINGS.iter().rev())) {
            let sql = template.replace('#', number).replace('@', string);
            prop_assert_eq!(&*classify_cached(&sql, &rules), &classify(&sql, &rules), "{}", sql);
            prop_assert_eq!(&*classify_placed(&sql, &rules, &mut place), &classify(&sql, &rules), "{}", sql);
            // As a UTF8 session's text arrives, as bytes, through its own place.
            prop_assert_eq!(
                &*classify_placed_utf8(sql.as_bytes(), &rules, &mut place_of_bytes),
                &classify(&sql, &rules),
                "{}", sql
            );
        }
    }
}

/// One way of making an expression deeper: wrapping it (`(e)`, `-e`, `CASE WHEN true THEN e END`,
/// `(SELECT e)`) or extending it into a chain (`e + 1`, `e::int`, `e OR x = 1`, `e[1]`, `e IS NULL`).
#[derive(Debug, Clone, Copy)]
enum Deepen {
    Wrap(&'static str, &'static str),
    Chain(&'static str),
}

fn deepen() -> impl Strategy<Value = (Deepen, usize)> {
    let step = prop_oneof![
        Just(Deepen::Wrap("(", ")")),
        Just(Deepen::Wrap("- ", "")),
        Just(Deepen::Wrap("CASE WHEN true THEN ", " END")),
        Just(Deepen::Wrap("(SELECT ", ")")),
        Just(Deepen::Wrap("abs(", ")")),
        Just(Deepen::Wrap("ARRAY[", "]")),
        Just(Deepen::Wrap("NOT ", "")),
        Just(Deepen::Chain(" + 1")),
        Just(Deepen::Chain("::int")),
        Just(Deepen::Chain(" OR x = 1")),
        Just(Deepen::Chain(" AND true")),
        Just(Deepen::Chain("[1]")),
        Just(Deepen::Chain(" IS NULL")),
        Just(Deepen::Chain(" -> 'k'")),
        Just(Deepen::Chain(" UNION SELECT 1")),
        Just(Deepen::Chain(", 1")),
    ];
    // Counts of every size, from a few terms to tens of thousands.
    (
        step,
        prop_oneof![0usize..100, 100usize..5_000, 5_000usize..60_000],
    )
}

proptest! {
    // Each case builds and classifies up to a few megabytes of text.
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    /// Nested expressions of growing depth, up to some 200,000 terms, mixing every kind of nesting: the
    /// router never crashes on the stack pgfleet gives its threads (a quarter of it, to keep a margin),
    /// and a statement it finds too deep to parse goes to the primary.
    #[test]
    fn deep_expressions_never_crash_the_router(steps in prop::collection::vec(deepen(), 1..5)) {
        let mut expr = String::from("1");
        for (step, count) in &steps {
            match step {
                Deepen::Wrap(open, close) => {
                    expr = format!("{}{expr}{}", open.repeat(*count), close.repeat(*count));
                }
                Deepen::Chain(term) => expr.push_str(&term.repeat(*count)),
            }
        }
        let sql = format!("SELECT {expr}");
        let deep = too_deep(&sql);
        let large = sql.len() > MAX_CLASSIFIED_STATEMENT;
        let (decision, cached) = std::thread::Builder::new()
            .stack_size(pgfleet::proxy::THREAD_STACK_SIZE / 4)
            .spawn(move || {
                let rules = Arc::new(FunctionRules::new(&[], &[]));
                let _ = redact(&sql, 1000);
                let _ = split_statements(&sql);
                (classify(&sql, &rules), classify_cached(&sql, &rules))
            })
            .expect("spawn")
            .join()
            .expect("the router returned");
        prop_assert_eq!(&*cached, &decision);
        // Only the size and depth bounds refuse these statements (they call no writing function; the size
        // bound answers first), and what they refuse goes to the primary.
        prop_assert_eq!(decision.rule == Rule::TooLarge, large, "{}", decision.rule);
        prop_assert_eq!(decision.rule == Rule::TooDeep, deep && !large, "{}", decision.rule);
        prop_assert!(!matches!(decision.rule, Rule::TooDeep | Rule::TooLarge) || decision.target == Target::Primary);
    }
}

/// startup_packet target: a StartupMessage whose last parameter's NUL was taken for the list terminator.
#[test]
fn startup_packet_without_terminator_is_refused() {
    // The fuzzer's input: user=apeet.roons, then a name `-c pgfleet.route=... -cwork_mem=4MB` whose
    // NUL is the last byte, so it has no value and the packet no terminator.
    let mut found = vec![0, 0, 0, 0x55, 0, 3, 0, 2];
    found.extend_from_slice(b"user\0apeet.roons\0");
    found.extend_from_slice(b"-c pgfleet.route=primary --search-path=a\\ b -cwork_mem=4MB\0\0");
    assert_eq!(packet_len(&found), Ok(Some(found.len())));
    assert_eq!(decode(&found), Err(StartupError::Layout));

    let packet = |list: &[u8]| {
        let mut p = ((list.len() + 8) as i32).to_be_bytes().to_vec();
        p.extend_from_slice(&196608i32.to_be_bytes());
        p.extend_from_slice(list);
        p
    };
    // No terminator, bytes after the terminator, a name without its value.
    assert_eq!(decode(&packet(b"user\0app\0x\0\0")), Err(StartupError::Layout));
    assert_eq!(decode(&packet(b"user\0app\0\0junk\0")), Err(StartupError::Layout));
    assert_eq!(decode(&packet(b"user\0app\0x\0")), Err(StartupError::Layout));
    assert_eq!(decode(&packet(b"user\0\0")), Err(StartupError::Layout));
    // Still fine: an empty value, and the plain layout.
    assert!(decode(&packet(b"user\0app\0x\0\0\0")).is_ok());
    let plain = encode_startup(&[("user", "app")]);
    assert_eq!(decode(&plain[..]).map(|_| ()), Ok(()));
}

/// router target: the shape cache answered `SELECT 1..2` (which sqlparser refuses) from `SELECT 1`'s entry,
/// because every number was the same marker; a too large integer or an E'' string is the same story.
#[test]
fn the_cache_keeps_constants_whose_spelling_matters() {
    for (first, second) in [
        ("SELECT 1", "SELECT 1..2"),
        ("SELECT x::varchar(1)", "SELECT x::varchar(99999999999999999999)"),
        (
            "SELECT * FROM t FETCH FIRST 5 ROWS ONLY",
            "SELECT * FROM t FETCH FIRST 1e5 ROWS ONLY",
        ),
        ("SELECT E'a'", "SELECT E'\\u12'"),
    ] {
        let rules = Arc::new(FunctionRules::new(&[], &[]));
        assert_eq!(
            *classify_cached(first, &rules),
            classify(first, &rules),
            "{first}"
        );
        assert_eq!(
            *classify_cached(second, &rules),
            classify(second, &rules),
            "{second}"
        );
    }
    let rules = FunctionRules::new(&[], &[]);
    assert_eq!(classify("SELECT 1..2", &rules).rule, Rule::Unparsed);
    assert_eq!(classify("SELECT 1", &rules).target, Target::Replica);
}

/// router target: DEALLOCATE after a comment with multi-byte characters panicked (a byte offset counted
/// from the comment's start fell inside a character) and, after an ASCII comment, read the wrong name.
#[test]
fn deallocate_after_a_comment() {
    assert_eq!(
        deallocated_names("/*a\u{e9}\u{e9}\u{e9}\u{e9}*/ DEALLOCATE x"),
        vec!["x"]
    );
    assert_eq!(deallocated_names("/* c */ DEALLOCATE foo"), vec!["foo"]);
    assert_eq!(
        deallocated_names("-- c\nDEALLOCATE PREPARE \"Foo\"\"s\""),
        vec!["Foo\"s"]
    );
}

/// router target: a statement made of U+00A0 (a name to PostgreSQL's lexer and ours) became an empty piece,
/// because pieces were trimmed of Unicode whitespace.
#[test]
fn no_empty_statements_from_unicode_spaces() {
    assert_eq!(
        split_statements("SELECT 1;\u{a0};SELECT 2"),
        vec!["SELECT 1", "\u{a0}", "SELECT 2"]
    );
    assert_eq!(split_statements("\u{a0}"), vec!["\u{a0}"]);
}

/// Found by review while writing the frame_decode target: planning a request searched the request's Parse
/// list for every Bind, so one request of tens of thousands of Parse and Bind frames (within
/// MAX_BUFFERED_REQUEST) kept a runtime thread busy for seconds, stalling the sessions that share it.
#[test]
fn a_request_of_many_binds_plans_quickly() {
    let mut request = Request::default();
    let mut push = |raw: bytes::Bytes| {
        let mut fb = FrameBuffer::new(raw.len());
        fb.read_target().extend_from_slice(&raw);
        let frame = fb.next_frame().expect("valid").expect("whole");
        request.push(frame)
    };
    let parses = 20_000;
    for i in 0..parses {
        push(build(b'P', format!("s{i}\0SELECT {i}\0\0\0").as_bytes()));
    }
    for i in 0..parses {
        // Half bind a statement of this request, half one nobody prepared.
        let name = if i % 2 == 0 {
            format!("s{i}")
        } else {
            "nobody".to_owned()
        };
        push(build(b'B', format!("\0{name}\0\0\0\0\0\0\0").as_bytes()));
    }
    assert_eq!(push(build(b'S', b"")), Some(End::Sync));
    let rules = Arc::new(FunctionRules::new(&[], &[]));
    let started = std::time::Instant::now();
    let plan = Plan::for_request(&request, &Statements::default(), &rules);
    let took = started.elapsed();
    assert_eq!(plan.parses.len(), parses);
    assert_eq!(plan.target, Target::Primary, "{}", plan.rule);
    assert_eq!(plan.rule, "unknown prepared statement \"nobody\"");
    // Linear work is a few milliseconds even in a debug build; the quadratic search took seconds.
    assert!(took < std::time::Duration::from_secs(2), "planning took {took:?}");
}

/// What a statement gave a client: its rows as text, or the SQLSTATE of its error.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Rows(Vec<Vec<String>>),
    Error(String),
}

fn failed(e: tokio_postgres::Error) -> Outcome {
    match e.as_db_error() {
        Some(db) => Outcome::Error(db.code().code().to_owned()),
        None => panic!("not a server error (the connection failed?): {e}"),
    }
}

/// The statement in the simple query protocol.
async fn simple(client: &Client, sql: &str) -> Outcome {
    match client.simple_query(sql).await {
        Ok(messages) => Outcome::Rows(
            messages
                .iter()
                .filter_map(|m| match m {
                    SimpleQueryMessage::Row(row) => Some(
                        (0..row.len())
                            .map(|i| row.get(i).unwrap_or("NULL").to_owned())
                            .collect(),
                    ),
                    _ => None,
                })
                .collect(),
        ),
        Err(e) => failed(e),
    }
}

/// The statement in the extended protocol: prepared (Parse, Describe), then executed (Bind, Execute).
/// Every column of these statements is an integer.
async fn extended(client: &Client, sql: &str) -> Outcome {
    let statement = match client.prepare(sql).await {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    match client.query(&statement, &[]).await {
        Ok(rows) => Outcome::Rows(
            rows.iter()
                .map(|row| {
                    row.columns()
                        .iter()
                        .enumerate()
                        .map(|(i, column)| match *column.type_() {
                            tokio_postgres::types::Type::INT8 => row.get::<_, i64>(i).to_string(),
                            _ => row.get::<_, i32>(i).to_string(),
                        })
                        .collect()
                })
                .collect(),
        ),
        Err(e) => failed(e),
    }
}

/// The statements, nested deep enough to overflow a 2 MiB stack had sqlparser built their trees:
/// pgfleet sends them to the primary unparsed, so each client gets exactly what PostgreSQL itself answers
/// (rows, or its own 54001 "stack depth limit exceeded"), in either protocol; SHOW ROUTE refuses such a
/// statement with 54001; a client connected before keeps being served and the process stays up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deeply_nested_statements_are_answered_and_pgfleet_survives() {
    let cluster = cluster_async().await;
    let admin = "[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n";
    let mut proxy = Proxy::start(&cluster, admin);
    let dsn = proxy.dsn(APP_USER, PASSWORD, APP_DB);
    let bystander = connect(&dsn).await;
    assert_eq!(
        simple(&bystander, "SELECT 1").await,
        Outcome::Rows(vec![vec!["1".into()]])
    );
    let app = connect(&dsn).await;
    app.batch_execute(
        "CREATE TABLE deep_t (aid int); INSERT INTO deep_t SELECT generate_series(1, 100); ANALYZE deep_t",
    )
    .await
    .expect("create the table");
    let direct = crate::support::forward::direct(&cluster.primary)
        .await
        .expect("direct to the primary");

    let or_terms: Vec<String> = (1..=40_000).map(|i| format!("aid = {i}")).collect();
    let statements = [
        ("50,000 `1+` terms", format!("SELECT {}1", "1+".repeat(50_000))),
        ("50,000 casts", format!("SELECT 1{}", "::int".repeat(50_000))),
        // Beyond what even pgfleet's 8 MiB thread stacks would survive had sqlparser built the tree.
        ("400,000 `1+` terms", format!("SELECT {}1", "1+".repeat(400_000))),
        (
            "a 40,000-term OR",
            format!(
                "SELECT count(*), min(inet_server_port()) FROM deep_t WHERE {}",
                or_terms.join(" OR ")
            ),
        ),
    ];
    for (shape, sql) in &statements {
        assert!(too_deep(sql), "{shape} is beyond what pgfleet parses");
        let from_primary = simple(&direct, sql).await;
        assert_eq!(simple(&app, sql).await, from_primary, "{shape}, simple protocol");
        assert_eq!(
            extended(&app, sql).await,
            extended(&direct, sql).await,
            "{shape}, extended protocol"
        );
    }
    // The OR runs on the primary, where PostgreSQL (which flattens OR chains) counts every row.
    let or_sql = &statements[3].1;
    assert_eq!(
        simple(&app, or_sql).await,
        Outcome::Rows(vec![vec!["100".into(), cluster.primary.port.to_string()]])
    );

    let console = connect(&proxy.dsn("admin", "adminpw", "pgfleet")).await;
    let show_route = format!("SHOW ROUTE SELECT {}1", "1+".repeat(500_000));
    let refused = console
        .simple_query(&show_route)
        .await
        .expect_err("too deep to classify");
    let db = refused.as_db_error().expect("an ErrorResponse");
    assert_eq!(db.code().code(), "54001", "{db:?}");
    assert!(
        db.message()
            .contains(&pgfleet::router::depth::MAX_DEPTH.to_string()),
        "the message names the limit: {}",
        db.message()
    );
    assert!(console.simple_query("SHOW ROUTE SELECT 1").await.is_ok());

    assert_eq!(
        simple(&bystander, "SELECT 2").await,
        Outcome::Rows(vec![vec!["2".into()]])
    );
    assert_eq!(
        simple(&app, "SELECT 3").await,
        Outcome::Rows(vec![vec!["3".into()]])
    );
    assert!(proxy.is_running(), "pgfleet exited:\n{}", proxy.log_tail(20));
}
