//! Unit tests of the config: parsing with defaults, errors that name the key, values, node TLS, redaction.

use super::*;

const BASE: &str = r#"
[listen]
address = "127.0.0.1:6432"
[[users]]
name = "app"
password = "secret"
[[nodes]]
name = "primary"
address = "10.0.0.1:5432"
role = "primary"
[[nodes]]
name = "replica1"
address = "10.0.0.2:5432"
role = "replica"
weight = 1
[routing]
load_balance = "random"
primary_reads = false
"#;

#[test]
fn pool_cap_by_mode_and_max_size() {
    // (pool section, the cap): unset, session pooling leaves the limit to the node's max_connections.
    let rows: &[(&str, Option<usize>)] = &[
        ("", None),
        ("mode = \"session\"\n", None),
        ("mode = \"transaction\"\n", Some(20)),
        ("mode = \"session\"\nmax_size = 7\n", Some(7)),
        ("mode = \"transaction\"\nmax_size = 300\n", Some(300)),
        ("max_size = 1\n", Some(1)),
    ];
    for (pool, cap) in rows {
        let c = Config::parse(&format!("{BASE}\n[pool]\n{pool}")).expect("valid");
        assert_eq!(c.pool.cap(), *cap, "[pool] {pool:?}");
    }
}

#[test]
fn issue_example_parses_with_defaults() {
    let c = Config::parse(BASE).expect("valid");
    assert_eq!(c.nodes.len(), 2);
    assert_eq!(c.pool.max_size, None);
    assert_eq!(c.pool.cap(), None);
    assert_eq!(c.pool.checkout_timeout, Duration::from_secs(5));
    assert_eq!(c.users[0].auth, AuthMethod::ScramSha256);
    assert_eq!(c.routing.load_balance, LoadBalance::Random);
    // The fast defaults (docs/performance.md): a session keeps its replica, one session worker per core.
    assert_eq!(c.routing.replica_affinity, ReplicaAffinity::Session);
    assert_eq!(c.worker_threads, 0);
}

fn err_of(text: &str) -> String {
    Config::parse(text).expect_err("must be refused").to_string()
}

#[test]
fn errors_name_the_key() {
    assert!(err_of(&BASE.replace("10.0.0.2:5432", "nohost")).contains("nodes[1].address"));
    assert!(err_of(&BASE.replace("role = \"replica\"", "role = \"primary\"")).contains("exactly one"));
    assert!(err_of(&BASE.replace("\"random\"", "\"fastest\"")).contains("load_balance"));
    assert!(err_of(&BASE.replace("127.0.0.1:6432", "localhost")).contains("listen.address"));
    assert!(err_of(&format!("{BASE}\n[pool]\nmax_size = 0\n")).contains("pool.max_size"));
    assert!(
        err_of(&format!("{BASE}\n[pool]\nconnect_timeout = \"5 parsecs\"\n")).contains("connect_timeout")
    );
    assert!(err_of(&format!("{BASE}\n[pool]\ncheckout_timeout = \"soon\"\n")).contains("checkout_timeout"));
    assert!(err_of(&BASE.replace("password = \"secret\"", "")).contains("users[0].password"));
    assert!(err_of(&format!("{BASE}\n[pool]\nbogus = 1\n")).contains("bogus"));
}

#[test]
fn client_tls_mode_and_authentication_timeout() {
    let c = Config::parse(BASE).expect("valid");
    assert_eq!(c.listen.tls_mode, ClientTlsMode::Allow);
    assert_eq!(c.listen.authentication_timeout, Duration::from_secs(60));
    let listen = |lines: &str| BASE.replace("[listen]\n", &format!("[listen]\n{lines}\n"));
    let c = Config::parse(&listen("authentication_timeout = \"1500ms\"")).expect("valid");
    assert_eq!(c.listen.authentication_timeout, Duration::from_millis(1500));
    let e = err_of(&listen("tls_mode = \"require\""));
    assert!(
        e.contains("listen.tls_mode") && e.contains("listen.tls_cert"),
        "{e}"
    );
    assert!(err_of(&listen("tls_mode = \"prefer\"")).contains("listen.tls_mode"));
    assert!(err_of(&listen("authentication_timeout = 0")).contains("listen.authentication_timeout"));
}

#[test]
fn lag_limits_and_auto_roles() {
    let c = Config::parse(&BASE.replace("primary_reads = false", "max_replica_lag = \"16MB\"")).expect("ok");
    assert_eq!(c.routing.max_replica_lag, Some(LagLimit::Bytes(16 * 1024 * 1024)));
    let c = Config::parse(&BASE.replace("primary_reads = false", "max_replica_lag = \"2s\"")).expect("ok");
    assert_eq!(
        c.routing.max_replica_lag,
        Some(LagLimit::Time(Duration::from_secs(2)))
    );
    assert!(
        err_of(&BASE.replace("primary_reads = false", "max_replica_lag = \"soon\""))
            .contains("max_replica_lag")
    );
    let autos = BASE
        .replace("role = \"primary\"", "role = \"auto\"")
        .replace("role = \"replica\"", "role = \"auto\"");
    assert!(Config::parse(&autos).is_ok());
    let mixed = BASE.replace("role = \"replica\"", "role = \"auto\"");
    assert!(err_of(&mixed).contains("auto"));
}

#[test]
fn durations_and_sizes() {
    assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
    assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
    assert_eq!(parse_size("16MB"), Ok(16 * 1024 * 1024));
    assert!(parse_size("16XB").is_err());
}

#[test]
fn node_addresses_on_unix_sockets() {
    // libpq's reading of host and port: a host that is a directory names the socket in it.
    for (address, socket) in [
        ("/run/postgresql:5432", Some("/run/postgresql/.s.PGSQL.5432")),
        ("/tmp/pg dir/:6000", Some("/tmp/pg dir/.s.PGSQL.6000")),
        ("10.0.0.1:5432", None),
        ("db.example.com:5432", None),
        ("[::1]:5432", None),
        ("/run/postgresql", None),
    ] {
        assert_eq!(
            unix_socket_of(address),
            socket.map(std::path::PathBuf::from),
            "{address}"
        );
    }
    let local = BASE.replace("10.0.0.2:5432", "/run/postgresql:5433");
    let c = Config::parse(&local).expect("a socket directory and port");
    assert_eq!(c.nodes[1].address, "/run/postgresql:5433");
    let with = |extra: &str| local.replace("weight = 1", &format!("weight = 1\n{extra}"));
    assert!(Config::parse(&with("tls = \"disable\"")).is_ok());
    // TLS that could never hold on a local socket is refused, naming the key and the way out.
    for mode in ["require", "verify-full"] {
        let err = err_of(&with(&format!(
            "tls = \"{mode}\"\ntls_ca = \"/nonexistent/ca.pem\""
        )));
        assert!(
            err.contains("`nodes[1].tls`") && err.contains("Unix-domain socket") && err.contains(mode),
            "{err}"
        );
    }
    let err = err_of(&with("tls = \"require\""));
    assert!(err.contains("`nodes[1].tls`"), "{err}");
    let long = format!("/{}:5432", "d".repeat(100));
    let err = err_of(&BASE.replace("10.0.0.2:5432", &long));
    assert!(
        err.contains("`nodes[1].address`") && err.contains("107 bytes"),
        "{err}"
    );
    assert!(err_of(&BASE.replace("10.0.0.2:5432", "/run/postgresql")).contains("`nodes[1].address`"));
}

#[test]
fn node_tls_settings() {
    let c = Config::parse(BASE).expect("valid");
    assert_eq!(c.nodes[0].tls, NodeTlsMode::Prefer, "libpq's default");
    assert_eq!(c.listen.tls_min_version, TlsVersion::Tls12);
    let with = |extra: &str| BASE.replace("weight = 1", &format!("weight = 1\n{extra}"));
    let c = Config::parse(&with("tls = \"disable\"")).expect("disable");
    assert_eq!(c.nodes[1].tls, NodeTlsMode::Disable);
    let c = Config::parse(&with("tls = \"require\"")).expect("require without a CA");
    assert_eq!(c.nodes[1].tls, NodeTlsMode::Require);
    let err = err_of(&with("tls = \"verify-full\""));
    assert!(
        err.contains("`nodes[1].tls_ca`") && err.contains("verify-full"),
        "{err}"
    );
    let err = err_of(&with("tls = \"verify-full\"\ntls_ca = \"/nonexistent/ca.pem\""));
    assert!(
        err.contains("`nodes[1].tls_ca`") && err.contains("/nonexistent/ca.pem"),
        "{err}"
    );
    let err = err_of(&with("tls = \"prefer\"\ntls_ca = \"/nonexistent/ca.pem\""));
    assert!(
        err.contains("`nodes[1].tls_ca`") && err.contains("only used with"),
        "{err}"
    );
    assert!(err_of(&with("tls = \"verify-ca\"")).contains("tls"));
    let c = Config::parse(&BASE.replace(
        "address = \"127.0.0.1:6432\"",
        "address = \"127.0.0.1:6432\"\ntls_min_version = \"1.3\"",
    ))
    .expect("1.3");
    assert_eq!(c.listen.tls_min_version, TlsVersion::Tls13);
    assert!(
        err_of(&BASE.replace(
            "address = \"127.0.0.1:6432\"",
            "address = \"127.0.0.1:6432\"\ntls_min_version = \"1.1\"",
        ))
        .contains("tls_min_version")
    );
}

#[test]
fn debug_never_shows_passwords() {
    let c = Config::parse(BASE).expect("valid");
    assert!(!format!("{c:?}").contains("secret"));
}

#[test]
fn consistency_levels_and_the_old_spelling() {
    let level = |extra: &str| {
        Config::parse(&format!("{BASE}{extra}"))
            .expect("valid")
            .routing
            .consistency()
    };
    assert_eq!(level(""), Consistency::Global);
    for (text, want) in [
        ("off", Consistency::Off),
        ("session", Consistency::Session),
        ("global", Consistency::Global),
        ("universal", Consistency::Universal),
    ] {
        assert_eq!(level(&format!("consistency = \"{text}\"\n")), want, "{text}");
    }
    assert_eq!(level("read_your_writes = \"off\"\n"), Consistency::Off);
    assert_eq!(level("read_your_writes = \"session\"\n"), Consistency::Session);
    let both = err_of(&format!(
        "{BASE}consistency = \"global\"\nread_your_writes = \"off\"\n"
    ));
    assert!(
        both.contains("routing.consistency") && both.contains("routing.read_your_writes"),
        "{both}"
    );
    assert!(err_of(&format!("{BASE}consistency = \"strong\"\n")).contains("consistency"));
    let wait = |extra: &str| {
        Config::parse(&format!("{BASE}{extra}"))
            .expect("valid")
            .routing
            .consistency_wait
    };
    assert_eq!(wait("read_your_writes_wait = \"2s\"\n"), Duration::from_secs(2));
    assert_eq!(wait("consistency_wait = \"3s\"\n"), Duration::from_secs(3));
}

const SHARDED: &str = r#"
[listen]
address = "127.0.0.1:6432"
[[users]]
name = "app"
password = "secret"
[[nodes]]
name = "s0"
address = "10.0.0.1:5432"
role = "primary"
shard = 0
[[nodes]]
name = "s0r"
address = "10.0.0.3:5432"
role = "replica"
shard = 0
[[nodes]]
name = "s1"
address = "10.0.0.2:5432"
role = "primary"
shard = 1
[[sharded_tables]]
name = "accounts"
column = "id"
[[sharded_tables]]
name = "bank.users"
column = "email"
type = "text"
"#;

#[test]
fn sharded_fleet_parses_and_counts_its_shards() {
    let c = Config::parse(SHARDED).expect("valid");
    assert!(c.is_sharded());
    assert_eq!(c.shard_count(), 2);
    assert_eq!(
        (0..3).map(|i| c.shard_of_node(i)).collect::<Vec<_>>(),
        vec![0, 0, 1]
    );
    assert_eq!(c.sharded_tables[0].key_type, ShardKeyType::Integer);
    assert_eq!(c.sharded_tables[1].key_type, ShardKeyType::Text);
    let plain = Config::parse(BASE).expect("valid");
    assert!(!plain.is_sharded());
    assert_eq!(plain.shard_count(), 1);
}

#[test]
fn sharded_fleet_errors_name_the_key() {
    let cases: &[(String, &str)] = &[
        (SHARDED.replacen("shard = 0\n", "", 1), "nodes[0].shard"),
        (SHARDED.replace("shard = 1", "shard = 2"), "no node has shard = 1"),
        (
            SHARDED.replacen("role = \"replica\"", "role = \"primary\"", 1),
            "shard 0 has 2 nodes",
        ),
        (
            SHARDED.replace("name = \"bank.users\"", "name = \"accounts\""),
            "sharded_tables[1].name",
        ),
        (
            SHARDED.replace("column = \"email\"", "column = \"\""),
            "sharded_tables[1].column",
        ),
        (SHARDED.replace("type = \"text\"", "type = \"float\""), "type"),
        (
            format!("{BASE}\n[[sharded_tables]]\nname = \"t\"\ncolumn = \"id\"\n"),
            "needs a sharded fleet",
        ),
        (
            SHARDED.replace("role = \"primary\"\nshard = 1", "role = \"auto\"\nshard = 1"),
            "nodes[2].role",
        ),
    ];
    for (text, expected) in cases {
        let err = err_of(text);
        assert!(err.contains(expected), "{expected}: got {err}");
    }
}
