//! Fuzz target `startup_packet`: arbitrary bytes as the first packet of a connection, read the way the
//! listener reads it (`packet_len` on the prefix, then `decode` of exactly that many bytes), plus `decode`
//! of the raw input whatever its length, and the `options` parameter through `parse_options` and the SET
//! statements the session builds from startup parameters.
//!
//! Invariants (besides "never panics"):
//! - `packet_len` waits for 4 bytes and accepts exactly the lengths 8..=MAX_STARTUP_PACKET it reads;
//! - whatever `decode` accepts re-encodes to the same bytes: a StartupMessage through `encode_startup`
//!   (PostgreSQL's layout: name/value pairs, then one NUL that is the last byte; an application_name that
//!   is not UTF-8 comes back with each byte outside printable ASCII as `?`), a CancelRequest through
//!   `encode_cancel`; an accepted StartupMessage names a non-empty user;
//! - a startup setting becomes one SET statement that the router's own splitter sees as exactly one
//!   statement (the value cannot break out of its quotes) and classifies as that SET.

#![no_main]

use libfuzzer_sys::fuzz_target;
use pgfleet::frontend::state::Settings;
use pgfleet::protocol::startup::{
    MAX_STARTUP_PACKET, StartupPacket, decode, encode_cancel, encode_startup, packet_len, parse_options,
};
use pgfleet::router::classify::{SessionChange, Target, classify};
use pgfleet::router::functions::FunctionRules;
use pgfleet::router::split::split_statements;

fuzz_target!(|data: &[u8]| {
    match packet_len(data) {
        Ok(None) => assert!(data.len() < 4),
        Ok(Some(len)) => {
            assert!((8..=MAX_STARTUP_PACKET).contains(&len));
            assert_eq!(
                i32::from_be_bytes([data[0], data[1], data[2], data[3]]),
                len as i32
            );
            if let Some(packet) = data.get(..len) {
                check_decoded(packet, decode(packet));
            }
        }
        Err(_) => assert!(data.len() >= 4),
    }
    // The decoder on its own must not trust the length prefix.
    let _ = decode(data);
    // The options text on its own, as arbitrary (lossily decoded) text.
    check_options(&String::from_utf8_lossy(data));
});

/// An accepted StartupMessage as pgfleet passes it on: the same bytes, but for an application_name that is
/// not UTF-8, whose bytes outside printable ASCII become `?` (what PostgreSQL keeps of it).
fn as_passed_on(packet: &[u8]) -> Vec<u8> {
    let mut out = packet.to_vec();
    let mut at = 8;
    let mut fields = packet[8..].split(|b| *b == 0);
    while let (Some(name), Some(value)) = (fields.next(), fields.next()) {
        let value_at = at + name.len() + 1;
        if name == b"application_name" && std::str::from_utf8(value).is_err() {
            for b in &mut out[value_at..value_at + value.len()] {
                if !(b' '..=b'~').contains(b) {
                    *b = b'?';
                }
            }
        }
        at = value_at + value.len() + 1;
    }
    out
}

fn check_decoded(packet: &[u8], decoded: Result<StartupPacket, pgfleet::protocol::startup::StartupError>) {
    match decoded {
        Ok(StartupPacket::Startup { minor, params }) => {
            assert!(params.iter().any(|(k, v)| k == "user" && !v.is_empty()));
            let pairs: Vec<(&str, &str)> = params.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            let mut again = encode_startup(&pairs).to_vec();
            // encode_startup speaks 3.0; the client may have asked for 3.x.
            again[6..8].copy_from_slice(&minor.to_be_bytes());
            assert_eq!(
                again,
                as_passed_on(packet),
                "an accepted StartupMessage does not round-trip"
            );
            for (k, v) in &params {
                check_setting(k, v);
                if k == "options" {
                    check_options(v);
                }
            }
        }
        Ok(StartupPacket::Cancel { pid, secret }) => {
            assert_eq!(&encode_cancel(pid, secret)[..], packet);
        }
        Ok(StartupPacket::Ssl | StartupPacket::GssEnc) | Err(_) => {}
    }
}

fn check_options(options: &str) {
    for (name, value) in parse_options(options) {
        assert!(!name.contains('-'), "{name:?} kept a dash");
        assert_eq!(name, name.to_ascii_lowercase());
        check_setting(&name, &value);
    }
}

/// The SET the session replays for a startup setting is one statement, and that SET.
fn check_setting(name: &str, value: &str) {
    if name.contains('\0') || value.contains('\0') {
        // Startup parameters are C strings: they cannot hold a NUL.
        return;
    }
    let settings = Settings::from_startup([(name, value)]);
    for (key, sql) in settings.entries() {
        let pieces = split_statements(sql);
        assert_eq!(pieces, vec![sql.as_str()], "SET for {name:?} = {value:?} splits");
        if !is_plain_guc_name(key) {
            continue;
        }
        let decision = classify(sql, &FunctionRules::new(&[], &[]));
        assert_eq!(decision.target, Target::Replica, "{sql}");
        match &decision.changes[..] {
            [SessionChange::Set { name: set, statement }] => {
                assert_eq!(set, key, "{sql}");
                assert_eq!(statement, sql);
            }
            other => panic!("{sql} classifies as {other:?}"),
        }
    }
}

/// A name PostgreSQL accepts unquoted: dot-separated words of [a-z0-9_], none starting with a digit, and
/// not one of the words that give SET another form (`SET LOCAL ...`, `SET TIME ZONE ...`): no parameter
/// has those names, and PostgreSQL refuses them at startup too.
fn is_plain_guc_name(name: &str) -> bool {
    const SET_FORMS: &[&str] = &[
        "local",
        "session",
        "transaction",
        "time",
        "names",
        "role",
        "schema",
        "xml",
        "constraints",
    ];
    !SET_FORMS.contains(&name.split('.').next().unwrap_or_default())
        && name.split('.').all(|part| {
            part.starts_with(|c: char| c.is_ascii_lowercase() || c == '_')
                && part
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
        })
}
