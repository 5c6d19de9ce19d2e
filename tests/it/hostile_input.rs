//! Property tests for the code that reads untrusted bytes: framing, startup packets, protocol field
//! readers and the router. No input may panic, and what the proxy builds it must read back unchanged.
//! The plain tests at the end replay what the cargo-fuzz targets in fuzz/ found, so the fixes stay
//! covered by a stable `cargo test`.

use std::sync::Arc;

use pgfleet::frontend::request::{End, Plan, Request, deallocated_names};
use pgfleet::frontend::state::Statements;
use pgfleet::protocol::frame::{FrameBuffer, build};
use pgfleet::protocol::messages::{bind_names, error_field, parse_fields, query_text, target_name};
use pgfleet::protocol::startup::{StartupError, decode, encode_startup, packet_len, parse_options};
use pgfleet::router::cache::classify_cached;
use pgfleet::router::classify::{Rule, Target, classify};
use pgfleet::router::functions::FunctionRules;
use pgfleet::router::split::split_statements;
use proptest::prelude::*;

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
        for (number, string) in NUMBERS.iter().zip(STRINGS.iter().cycle()).chain(NUMBERS.iter().zip(STRINGS.iter().rev())) {
            let sql = template.replace('#', number).replace('@', string);
            prop_assert_eq!(&*classify_cached(&sql, &rules), &classify(&sql, &rules), "{}", sql);
        }
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
