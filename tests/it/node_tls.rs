//! TLS towards nodes (`nodes[i].tls`, `nodes[i].tls_ca`), the clients' minimum TLS version
//! (`listen.tls_min_version`) and clients refused in clear text (`listen.tls_mode`), against real PostgreSQL servers running with certificates this file makes
//! (rcgen): a CA, server certificates it signs, and a second CA that signed nothing the servers show.
//!
//! Where it matters, the servers refuse plain TCP altogether (`hostnossl ... reject` in pg_hba.conf), so that
//! any connection pgfleet opened without TLS (a session's, a health check's, the function catalog's, forward
//! mode's, pg_dump's) would fail the test instead of going unnoticed.

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::support::cluster::{
    APP_DB, APP_USER, ClusterOptions, LocalCluster, NodeHandle, PASSWORD, ServerTls, cluster_with_async,
    options,
};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair, KeyUsagePurpose};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_postgres::{Client, SimpleQueryMessage};
use tokio_rustls::rustls::{self, pki_types::ServerName};

const ADMIN_USER: &str = "admin";
const ADMIN_PASSWORD: &str = "adminpw";

/// The certificates of one test: files in a temporary directory that lives as long as this.
struct Pki {
    dir: tempfile::TempDir,
    ca: CertifiedIssuer<'static, KeyPair>,
    /// The CA that signs the servers' certificates.
    ca_file: PathBuf,
    /// A CA that signed nothing the servers show.
    wrong_ca_file: PathBuf,
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA certificate")
}

impl Pki {
    fn new() -> Pki {
        let dir = tempfile::Builder::new()
            .prefix("pgfleet-pki-")
            .tempdir()
            .expect("temp dir");
        let ca = new_ca("pgfleet test CA");
        let ca_file = dir.path().join("ca.pem");
        std::fs::write(&ca_file, ca.pem()).expect("write CA");
        let wrong_ca_file = dir.path().join("wrong-ca.pem");
        std::fs::write(&wrong_ca_file, new_ca("some other CA").pem()).expect("write wrong CA");
        Pki {
            dir,
            ca,
            ca_file,
            wrong_ca_file,
        }
    }

    /// A server certificate for `names` (DNS names or IP addresses) signed by the CA, as (cert PEM, key PEM).
    fn server_cert(&self, names: &[&str]) -> (String, String) {
        let key = KeyPair::generate().expect("server key");
        let mut params = CertificateParams::new(names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>())
            .expect("params");
        params.distinguished_name.push(DnType::CommonName, names[0]);
        let cert = params.signed_by(&key, &self.ca).expect("server certificate");
        (cert.pem(), key.serialize_pem())
    }

    /// TLS for a cluster's servers, with a certificate for `names`.
    fn server_tls(&self, names: &[&str], tls_only: bool) -> ServerTls {
        let (cert_pem, key_pem) = self.server_cert(names);
        ServerTls {
            cert_pem,
            key_pem,
            tls_only,
        }
    }

    /// A certificate for "localhost" written as files, for pgfleet's own listener.
    fn listener_files(&self) -> (PathBuf, PathBuf) {
        let (cert, key) = self.server_cert(&["localhost"]);
        let (cert_file, key_file) = (
            self.dir.path().join("proxy.crt"),
            self.dir.path().join("proxy.key"),
        );
        std::fs::write(&cert_file, cert).expect("write proxy cert");
        std::fs::write(&key_file, key).expect("write proxy key");
        (cert_file, key_file)
    }
}

/// Adds `lines` to every `[[nodes]]` table of a config written by `Proxy::config_for`.
fn node_settings(text: String, lines: &str) -> String {
    text.replace("role = \"primary\"\n", &format!("role = \"primary\"\n{lines}\n"))
        .replace("role = \"replica\"\n", &format!("role = \"replica\"\n{lines}\n"))
}

/// `tls = "<mode>"` plus `tls_ca` when given, as TOML lines.
fn tls_lines(mode: &str, ca: Option<&Path>) -> String {
    match ca {
        Some(ca) => format!("tls = \"{mode}\"\ntls_ca = \"{}\"", ca.display()),
        None => format!("tls = \"{mode}\""),
    }
}

fn admin_toml() -> String {
    format!(
        "[[users]]\nname = \"{ADMIN_USER}\"\npassword = \"{ADMIN_PASSWORD}\"\nadmin = true\n\n\
         [health]\ninterval = \"200ms\"\n"
    )
}

/// The first row of a simple query as text columns.
async fn row(c: &Client, sql: &str) -> Vec<Option<String>> {
    let messages = c.simple_query(sql).await.unwrap_or_else(|e| panic!("{sql}: {e}"));
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            return (0..r.len()).map(|i| r.get(i).map(str::to_owned)).collect();
        }
    }
    panic!("{sql}: no row");
}

/// Whether the node that ran the query sees this connection as TLS, and that node's port. pg_backend_pid()
/// runs on the primary unless a hint says otherwise.
async fn ssl_and_port(c: &Client, hint: &str) -> (bool, u16) {
    let sql = format!("{hint}SELECT ssl, inet_server_port() FROM pg_stat_ssl WHERE pid = pg_backend_pid()");
    let r = row(c, &sql).await;
    let ssl = r[0].as_deref() == Some("t");
    let port = r[1].as_deref().and_then(|p| p.parse().ok()).expect("port");
    (ssl, port)
}

/// The message a refused client got from pgfleet.
async fn refusal(proxy: &Proxy) -> String {
    match try_connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await {
        Ok(_) => panic!("the session was accepted\n{}", proxy.log_tail(40)),
        Err(e) => e
            .as_db_error()
            .map(|d| d.message().to_owned())
            .unwrap_or_else(|| e.to_string()),
    }
}

/// SHOW NODES as name -> (state, observed role).
async fn show_nodes(admin: &Client) -> HashMap<String, (String, String)> {
    let messages = admin.simple_query("SHOW NODES").await.expect("SHOW NODES");
    let mut out = HashMap::new();
    for m in messages {
        if let SimpleQueryMessage::Row(r) = m {
            let get = |name: &str| r.get(name).unwrap_or_default().to_owned();
            out.insert(get("name"), (get("state"), get("observed")));
        }
    }
    out
}

/// Runs `psql` as the superuser on a node (over its unix socket, which TLS-only access leaves open), without
/// stalling the runtime's other tasks.
fn psql(node: &NodeHandle, sql: &str) -> String {
    tokio::task::block_in_place(|| node.psql(APP_DB, sql))
        .unwrap_or_else(|e| panic!("psql on {}: {e}", node.name))
}

/// [`crate::support::wait_until`] for 30 s, failing with `what` and pgfleet's log.
async fn wait_until(proxy: &Proxy, what: &str, check: impl AsyncFnMut() -> bool) {
    crate::support::wait_until(Duration::from_secs(30), check)
        .await
        .unwrap_or_else(|| panic!("timed out waiting for {what}\n{}", proxy.log_tail(60)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_and_default_prefer_encrypt_every_connection_to_a_tls_only_fleet() {
    let pki = Pki::new();
    let cluster = cluster_with_async(ClusterOptions {
        tls: Some(pki.server_tls(&["localhost", "127.0.0.1"], true)),
        ..options()
    })
    .await;
    // The servers themselves refuse plain TCP, so whatever pgfleet opened without TLS would fail below.
    assert!(
        try_connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB))
            .await
            .is_err(),
        "the primary accepted a plain TCP connection"
    );

    let proxy = Proxy::start_edited(&cluster, &admin_toml(), |text| {
        node_settings(text, &tls_lines("require", None))
    });
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    // Replica route: round robin over both replicas, each connection encrypted.
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let mut seen = HashSet::new();
    for _ in 0..4 {
        let (ssl, port) = ssl_and_port(&c, "/* pgfleet:replica */ ").await;
        assert!(replicas.contains(&port), "a read ran on {port}");
        assert!(ssl, "the connection to replica port {port} is not TLS");
        seen.insert(port);
    }
    assert_eq!(seen, replicas);
    // Primary route.
    let (ssl, port) = ssl_and_port(&c, "/* pgfleet:primary */ ").await;
    assert_eq!(port, cluster.primary.port);
    assert!(ssl, "the connection to the primary is not TLS");
    c.batch_execute("CREATE TABLE tls_t (id int); INSERT INTO tls_t VALUES (1)")
        .await
        .expect("writes over TLS");

    // A cancel reaches the node running the query over TLS as well.
    let token = c.cancel_token();
    let sleeper = tokio::spawn(async move {
        let r = c.simple_query("SELECT pg_sleep(20)").await;
        (c, r)
    });
    // psql over the nodes' unix sockets: this fleet refuses plain TCP.
    let sleeping =
        "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(20)' AND state = 'active'";
    wait_until(&proxy, "the sleep to start on a node", async || {
        cluster.nodes().any(|node| psql(node, sleeping) == "1")
    })
    .await;
    token
        .cancel_query(tokio_postgres::NoTls)
        .await
        .expect("send the cancel request to pgfleet");
    let (c, result) = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the cancelled query ends")
        .expect("query task");
    let err = result.expect_err("the query was cancelled");
    assert_eq!(err.as_db_error().map(|d| d.code().code()), Some("57014"), "{err}");
    drop(c);

    // Health checks succeed over TLS: only a check that got an answer knows each node's role.
    let admin = connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await;
    wait_until(&proxy, "health checks over TLS", async || {
        let nodes = show_nodes(&admin).await;
        cluster.nodes().all(|n| {
            let role = if n.name == cluster.primary.name {
                "primary"
            } else {
                "replica"
            };
            nodes.get(&n.name) == Some(&("up".to_owned(), role.to_owned()))
        })
    })
    .await;
    // On the server side, every connection of the app role (sessions, health checks, the function catalog)
    // is encrypted.
    let by_kind = "SELECT string_agg(DISTINCT coalesce(nullif(application_name, ''), 'session') || '=' || ssl, ' ' \
                   ORDER BY coalesce(nullif(application_name, ''), 'session') || '=' || ssl) \
                   FROM pg_stat_ssl JOIN pg_stat_activity USING (pid) WHERE usename = 'app'";
    let primary = psql(&cluster.primary, by_kind);
    assert_eq!(
        primary, "pgfleet-catalog=true pgfleet-health=true session=true",
        "connections to the primary"
    );
    for replica in &cluster.replicas {
        let kinds = psql(replica, by_kind);
        assert!(
            kinds.contains("pgfleet-health=true") && !kinds.contains("=false"),
            "connections to {}: {kinds}",
            replica.name
        );
    }

    // The default is prefer, which takes TLS whenever the server offers it.
    let default = Proxy::start(&cluster, "");
    let c = connect(&default.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let (ssl, _) = ssl_and_port(&c, "/* pgfleet:replica */ ").await;
    assert!(ssl, "prefer (the default) did not use TLS on a replica");
    let (ssl, _) = ssl_and_port(&c, "/* pgfleet:primary */ ").await;
    assert!(ssl, "prefer (the default) did not use TLS on the primary");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn require_refuses_a_server_without_tls_and_prefer_goes_without() {
    let cluster = cluster_with_async(ClusterOptions {
        replicas: 0,
        ..options()
    })
    .await;
    let address = cluster.primary.address();

    let proxy = Proxy::start_edited(&cluster, "[health]\ninterval = \"200ms\"\n", |text| {
        node_settings(text, &tls_lines("require", None))
    });
    assert_eq!(
        refusal(&proxy).await,
        format!(
            "pgfleet: cannot reach primary \"primary\" ({address}): server does not support TLS \
             (nodes[0].tls = \"require\")"
        )
    );
    // The health checks say why the node is down, naming the setting.
    let health_says_why = || {
        proxy
            .log_contents()
            .lines()
            .any(|l| l.contains("node is down") && l.contains("server does not support TLS (nodes[0].tls = "))
    };
    wait_until(
        &proxy,
        "the health check to say why the node is down",
        async || health_says_why(),
    )
    .await;
    drop(proxy);

    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &tls_lines("prefer", None))
    });
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    let (ssl, port) = ssl_and_port(&c, "/* pgfleet:primary */ ").await;
    assert_eq!(port, cluster.primary.port);
    assert!(!ssl, "a server without TLS cannot have given a TLS connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn verify_full_checks_the_ca_and_the_host() {
    let pki = Pki::new();
    let cluster = cluster_with_async(ClusterOptions {
        replicas: 0,
        tls: Some(pki.server_tls(&["localhost", "127.0.0.1"], true)),
        ..options()
    })
    .await;
    let port = cluster.primary.port;
    let verify_full = |ca: &Path| tls_lines("verify-full", Some(ca));

    // The right CA and an IP address the certificate names.
    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &verify_full(&pki.ca_file))
    });
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert!(ssl_and_port(&c, "/* pgfleet:primary */ ").await.0);
    drop((c, proxy));

    // A DNS name the certificate names.
    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &verify_full(&pki.ca_file))
            .replace(&format!("\"127.0.0.1:{port}\""), &format!("\"localhost:{port}\""))
    });
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert!(ssl_and_port(&c, "/* pgfleet:primary */ ").await.0);
    drop((c, proxy));

    // A CA that did not sign the server's certificate.
    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &verify_full(&pki.wrong_ca_file))
    });
    let message = refusal(&proxy).await;
    let expected = format!(
        "pgfleet: cannot reach primary \"primary\" (127.0.0.1:{port}): TLS handshake failed: the server's \
         certificate is not signed by a CA in nodes[0].tls_ca ({}) (nodes[0].tls = \"verify-full\")",
        pki.wrong_ca_file.display()
    );
    assert_eq!(message, expected);
    drop(proxy);

    // A certificate from the right CA for another host.
    cluster
        .primary
        .set_tls(&pki.server_tls(&["db.example.com"], true))
        .expect("new certificate");
    tokio::task::block_in_place(|| {
        cluster.primary.stop().expect("stop");
        cluster.primary.start().expect("start with the new certificate");
    });
    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &verify_full(&pki.ca_file))
    });
    let message = refusal(&proxy).await;
    assert!(
        message.starts_with(&format!(
            "pgfleet: cannot reach primary \"primary\" (127.0.0.1:{port}): TLS handshake failed: the server's \
             certificate is not valid for \"127.0.0.1\", the host of nodes[0].address"
        )) && message.ends_with("(it names db.example.com) (nodes[0].tls = \"verify-full\")"),
        "{message}"
    );
    drop(proxy);

    // require with a CA checks the chain only (libpq's verify-ca): the same certificate is accepted...
    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &tls_lines("require", Some(&pki.ca_file)))
    });
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    assert!(ssl_and_port(&c, "/* pgfleet:primary */ ").await.0);
    drop((c, proxy));
    // ...but not from the wrong CA.
    let proxy = Proxy::start_edited(&cluster, "", |text| {
        node_settings(text, &tls_lines("require", Some(&pki.wrong_ca_file)))
    });
    let message = refusal(&proxy).await;
    assert!(
        message.contains("not signed by a CA in nodes[0].tls_ca")
            && message.ends_with("(nodes[0].tls = \"require\")"),
        "{message}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forward_mode_copies_and_streams_over_verified_tls() {
    let pki = Pki::new();
    let cluster: LocalCluster = cluster_with_async(ClusterOptions {
        replicas: 1,
        streaming: false,
        tls: Some(pki.server_tls(&["localhost", "127.0.0.1"], true)),
        ..options()
    })
    .await;
    psql(
        &cluster.primary,
        "CREATE TABLE pre (id int primary key, v text); \
         INSERT INTO pre SELECT g, 'x' || g FROM generate_series(1, 100) g; ALTER TABLE pre OWNER TO app;",
    );
    let forward = format!(
        "[replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"{PASSWORD}\"\n\
         databases = [\"{APP_DB}\"]\n\n[health]\ninterval = \"200ms\"\n"
    );
    // verify-full everywhere. pg_dump (libpq) must get its sslmode and CA from pgfleet: what it would inherit
    // here (no TLS, a CA file that does not exist) fails against these servers.
    let proxy = Proxy::start_with_env(
        &cluster,
        &forward,
        |text| node_settings(text, &tls_lines("verify-full", Some(&pki.ca_file))),
        &[
            ("PGSSLMODE", "disable"),
            ("PGSSLROOTCERT", "/nonexistent/root.crt"),
        ],
    );
    let replica = &cluster.replicas[0];
    wait_until(&proxy, "the initial copy", async || {
        replica
            .psql(APP_DB, "SELECT count(*) FROM pre")
            .is_ok_and(|n| n == "100")
    })
    .await;
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE TABLE t (id serial primary key, v text); INSERT INTO t (v) SELECT 'r' || g FROM generate_series(1, 50) g; \
         DELETE FROM pre WHERE id > 90",
    )
    .await
    .expect("writes");
    wait_until(&proxy, "the stream", async || {
        replica
            .psql(
                APP_DB,
                "SELECT (SELECT count(*) FROM t) || ' ' || (SELECT count(*) FROM pre)",
            )
            .is_ok_and(|s| s == "50 90")
    })
    .await;
    let kinds = psql(
        &cluster.primary,
        "SELECT string_agg(DISTINCT backend_type || '=' || ssl, ' ') FROM pg_stat_ssl JOIN pg_stat_activity \
         USING (pid) WHERE usename = 'postgres' AND client_addr IS NOT NULL",
    );
    assert!(
        kinds.contains("walsender=true") && !kinds.contains("=false"),
        "forward-mode connections to the primary: {kinds}"
    );
}

/// Opens TLS to pgfleet's listener with a client limited to `version`; on success sends a StartupMessage and
/// returns the first byte of the answer.
async fn client_handshake(
    port: u16,
    ca: &Path,
    version: &'static rustls::SupportedProtocolVersion,
) -> Result<u8, String> {
    let mut tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .map_err(|e| e.to_string())?;
    tcp.write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = [0u8; 1];
    tcp.read_exact(&mut answer).await.map_err(|e| e.to_string())?;
    assert_eq!(answer[0], b'S', "pgfleet offers TLS");
    let mut roots = rustls::RootCertStore::empty();
    let pem = std::fs::read(ca).expect("CA");
    for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
        roots.add(cert.expect("CA PEM")).expect("root");
    }
    let config =
        rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_protocol_versions(&[version])
            .expect("versions")
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let mut tls = tokio_rustls::TlsConnector::from(Arc::new(config))
        .connect(name, tcp)
        .await
        .map_err(|e| e.to_string())?;
    let mut startup = Vec::new();
    startup.extend_from_slice(&196608i32.to_be_bytes());
    for s in ["user", APP_USER, "database", APP_DB] {
        startup.extend_from_slice(s.as_bytes());
        startup.push(0);
    }
    startup.push(0);
    let mut packet = ((startup.len() + 4) as i32).to_be_bytes().to_vec();
    packet.extend_from_slice(&startup);
    tls.write_all(&packet).await.map_err(|e| e.to_string())?;
    tls.flush().await.map_err(|e| e.to_string())?;
    let mut first = [0u8; 1];
    tls.read_exact(&mut first).await.map_err(|e| e.to_string())?;
    Ok(first[0])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_min_version_13_refuses_tls12_clients() {
    let pki = Pki::new();
    let (cert, key) = pki.listener_files();
    // No server behind: the TLS handshake and the password request come from pgfleet alone.
    let config = |min: &str| {
        let port = free_port();
        let text = format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\ntls_cert = \"{}\"\ntls_key = \"{}\"\n{min}\n\
             [[users]]\nname = \"{APP_USER}\"\npassword = \"{PASSWORD}\"\n\n\
             [[nodes]]\nname = \"primary\"\naddress = \"127.0.0.1:{}\"\nrole = \"primary\"\n",
            cert.display(),
            key.display(),
            free_port()
        );
        (Proxy::start_with_config(text), port)
    };

    let (_strict, port) = config("tls_min_version = \"1.3\"");
    let refused = client_handshake(port, &pki.ca_file, &rustls::version::TLS12).await;
    assert!(refused.is_err(), "a TLS 1.2 client got through: {refused:?}");
    let accepted = client_handshake(port, &pki.ca_file, &rustls::version::TLS13).await;
    assert_eq!(accepted, Ok(b'R'), "TLS 1.3 gets the password request");

    // The default still lets TLS 1.2 in, so the refusal above is the setting's doing.
    let (_default, port) = config("");
    let accepted = client_handshake(port, &pki.ca_file, &rustls::version::TLS12).await;
    assert_eq!(accepted, Ok(b'R'), "TLS 1.2 by default");
}

/// Runs psql against pgfleet with `conninfo` added (sslmode, user, dbname); returns (success, stdout, stderr).
async fn psql_to_proxy(port: u16, conninfo: &str, password: &str, sql: &str) -> (bool, String, String) {
    let out = tokio::process::Command::new("psql")
        .args(["-X", "-A", "-t", "-v", "ON_ERROR_STOP=1"])
        .arg(format!("host=127.0.0.1 port={port} {conninfo}"))
        .args(["-c", sql, "-c", "\\conninfo"])
        .env("PGPASSWORD", password)
        .env("PGCONNECT_TIMEOUT", "10")
        .env_remove("PGSSLMODE")
        .env_remove("PGSERVICE")
        .output();
    let out = tokio::time::timeout(Duration::from_secs(30), out)
        .await
        .expect("psql finished in time")
        .expect("run psql");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_mode_require_refuses_clients_in_clear_text() {
    const REFUSED: &str = "pgfleet: connection without TLS refused (listen.tls_mode = \"require\")";
    let pki = Pki::new();
    let (cert, key) = pki.listener_files();
    let cluster = cluster_with_async(options()).await;
    let port = free_port();
    let listen = format!("address = \"127.0.0.1:{port}\"\n");
    // Local clients too, through pgfleet's own socket, where TLS does not exist.
    let socket_dir = std::env::temp_dir().join(format!("pgfleet-tls-local-{}", std::process::id()));
    std::fs::create_dir_all(&socket_dir).expect("socket dir");
    let text = Proxy::config_for(&cluster, port, &admin_toml()).replacen(
        &listen,
        &format!(
            "{listen}tls_cert = \"{}\"\ntls_key = \"{}\"\ntls_mode = \"require\"\n\
             authentication_timeout = \"2s\"\nunix_socket_dir = \"{}\"\n",
            cert.display(),
            key.display(),
            socket_dir.display()
        ),
        1,
    );
    let proxy = Proxy::start_with_config(text);

    // tokio-postgres without TLS, to a database and to the admin console on the same listener.
    for (user, password, db) in [
        (APP_USER, PASSWORD, APP_DB),
        (ADMIN_USER, ADMIN_PASSWORD, "pgfleet"),
    ] {
        let e = match try_connect(&proxy.dsn(user, password, db)).await {
            Ok(_) => panic!("{db}: a clear-text client was let in"),
            Err(e) => e,
        };
        let dbe = e
            .as_db_error()
            .unwrap_or_else(|| panic!("{db}: a server error, got {e}"));
        assert_eq!(dbe.severity(), "FATAL");
        assert_eq!(dbe.code().code(), "28000", "{db}: {dbe:?}");
        assert_eq!(dbe.message(), REFUSED);
        assert_eq!(dbe.hint(), Some("Connect with sslmode=require."));
    }

    // psql with sslmode=disable: the same FATAL and hint; nothing ran.
    let (ok, out, err) = psql_to_proxy(
        port,
        &format!("sslmode=disable user={APP_USER} dbname={APP_DB}"),
        PASSWORD,
        "SELECT 'ran-in-clear'",
    )
    .await;
    assert!(!ok, "psql sslmode=disable got in: {out}");
    assert!(!out.contains("ran-in-clear"), "{out}");
    assert!(err.contains(REFUSED), "{err}");
    assert!(err.contains("Connect with sslmode=require."), "{err}");

    // Over TLS the same clients get in: sslmode=require and sslmode=prefer, the console too.
    for (sslmode, user, password, db, sql, expect) in [
        (
            "require",
            APP_USER,
            PASSWORD,
            APP_DB,
            "SELECT 'tls-' || 1",
            "tls-1",
        ),
        (
            "prefer",
            APP_USER,
            PASSWORD,
            APP_DB,
            "SELECT 'tls-' || 2",
            "tls-2",
        ),
        (
            "require",
            ADMIN_USER,
            ADMIN_PASSWORD,
            "pgfleet",
            "SHOW NODES",
            "primary",
        ),
    ] {
        let (ok, out, err) = psql_to_proxy(
            port,
            &format!("sslmode={sslmode} user={user} dbname={db}"),
            password,
            sql,
        )
        .await;
        assert!(
            ok,
            "psql sslmode={sslmode} to {db}: {err}\n{}",
            proxy.log_tail(30)
        );
        assert!(out.contains(expect), "{sql}: {out}");
        assert!(out.contains("SSL connection"), "\\conninfo reports SSL: {out}");
    }
    let accepted = client_handshake(port, &pki.ca_file, &rustls::version::TLS13).await;
    assert_eq!(accepted, Ok(b'R'), "a TLS client gets the password request");
    // Through the local socket the requirement does not apply (as PostgreSQL's hostssl lines do not cover
    // local ones): a process on this machine gets in without TLS.
    let (ok, out, err) = psql_to_proxy(
        port,
        &format!(
            "host={} sslmode=prefer user={APP_USER} dbname={APP_DB}",
            socket_dir.display()
        ),
        PASSWORD,
        "SELECT 'local-' || 3",
    )
    .await;
    assert!(ok, "psql through the local socket: {err}");
    assert!(out.contains("local-3"), "{out}");
    assert!(!out.contains("SSL connection"), "{out}");

    // A client that asks for TLS and then stalls in the handshake is closed by listen.authentication_timeout.
    let mut stalled = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect");
    let connected = Instant::now();
    stalled
        .write_all(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f])
        .await
        .expect("SSLRequest");
    let mut answer = [0u8; 1];
    stalled.read_exact(&mut answer).await.expect("answer");
    assert_eq!(answer[0], b'S');
    let read = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut answer))
        .await
        .expect("closed within 10 s");
    assert!(matches!(read, Ok(0) | Err(_)), "{read:?}");
    assert!(
        connected.elapsed() >= Duration::from_millis(1950),
        "closed after {:?}, before listen.authentication_timeout",
        connected.elapsed()
    );
    let _ = std::fs::remove_dir_all(&socket_dir);
}
