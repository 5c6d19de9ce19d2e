//! Property tests for the code that reads untrusted bytes: framing, startup packets, protocol field
//! readers and the router. No input may panic, and what the proxy builds it must read back unchanged.

use pgfleet::protocol::frame::{FrameBuffer, build};
use pgfleet::protocol::messages::{bind_names, error_field, parse_fields, query_text, target_name};
use pgfleet::protocol::startup::{decode, encode_startup, packet_len, parse_options};
use pgfleet::router::classify::classify;
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
