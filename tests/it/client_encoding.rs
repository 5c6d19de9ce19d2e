//! Clients whose `client_encoding` is not UTF8: psql sends the script's bytes as they are, and the server
//! reads them in the session's encoding. pgfleet must read them the same way to route them: a LATIN1
//! UPDATE is a write, an SJIS `\` inside a character does not escape a quote, and text in an encoding pgfleet
//! has no decoder for keeps the session on the primary rather than being guessed at.

use std::collections::HashSet;
use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::forward::{forward_toml, plain_cluster, primary_sql};
use crate::support::proxy::{Proxy, connect};
use crate::support::shards::ShardedFleet;
use pgfleet::shard::hash::shard_for;
use pgfleet::shard::value::KeyValue;

/// Reads of literals go to a replica whatever the replicas have replayed: these tests are about where a
/// statement is sent, not how fresh a read is.
const CONFIG: &str = "[routing]\nconsistency = \"off\"\n";

/// Runs `script` (raw bytes in `encoding`) through psql against pgfleet, stopping at the first error, and
/// returns psql's unaligned, header-less output as the bytes it printed. Panics with psql's errors.
async fn psql_in(port: u16, encoding: &str, script: &[u8]) -> Vec<u8> {
    let out = psql_run(port, encoding, script).await;
    assert!(
        out.status.success(),
        "psql ({encoding}) failed: {}\nscript: {}",
        String::from_utf8_lossy(&out.stderr),
        String::from_utf8_lossy(script)
    );
    out.stdout
}

/// [`psql_in`] whatever the outcome: psql's exit status, output and errors.
async fn psql_run(port: u16, encoding: &str, script: &[u8]) -> std::process::Output {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new("psql")
        .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-f", "-"])
        .arg(format!(
            "host=127.0.0.1 port={port} user={APP_USER} dbname={APP_DB} sslmode=disable"
        ))
        .env("PGPASSWORD", PASSWORD)
        .env("PGCLIENTENCODING", encoding)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run psql");
    let mut stdin = child.stdin.take().expect("psql stdin");
    stdin.write_all(script).await.expect("write the script");
    drop(stdin);
    child.wait_with_output().await.expect("psql output")
}

/// The output's lines, each split at psql's `|`.
fn rows(out: &[u8]) -> Vec<Vec<Vec<u8>>> {
    out.split(|b| *b == b'\n')
        .filter(|line| !line.is_empty())
        .map(|line| line.split(|b| *b == b'|').map(<[u8]>::to_vec).collect())
        .collect()
}

/// Row 1's name in table enc, read through `c` (UTF-8).
async fn name_of_row_1(c: &tokio_postgres::Client) -> String {
    let row = c
        .query_one("SELECT name FROM enc WHERE id = 1", &[])
        .await
        .expect("read back");
    row.get(0)
}

fn port_of(field: &[u8]) -> u16 {
    std::str::from_utf8(field)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("not a port: {:?}", String::from_utf8_lossy(field)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn latin1_writes_reads_names_and_settings_route_as_the_server_reads_them() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute(
        "CREATE TABLE enc (id int PRIMARY KEY, name text);
         INSERT INTO enc VALUES (1, 'x');
         CREATE FUNCTION \"café_bump\"() RETURNS int VOLATILE LANGUAGE sql
             AS 'UPDATE enc SET name = name || ''!'' WHERE id = 1 RETURNING 1';",
    )
    .await
    .expect("setup");
    cluster
        .wait_replicas_caught_up(std::time::Duration::from_secs(30))
        .expect("replicas caught up");

    // A read with a LATIN1 literal still goes to a replica: the session is not sent to the primary
    // wholesale because its text is not UTF-8.
    let out = psql_in(proxy.port, "LATIN1", b"SELECT inet_server_port(), 'caf\xe9';\n").await;
    let row = &rows(&out)[0];
    assert!(
        replicas.contains(&port_of(&row[0])),
        "the LATIN1 read ran on {:?}",
        row[0]
    );
    assert_eq!(row[1], b"caf\xe9", "the literal comes back in LATIN1");

    // A write whose text is not UTF-8 is a write (read as nothing, it went to a replica and failed there), and
    // a VOLATILE function named in LATIN1 is the function of that name, which may write.
    psql_in(
        proxy.port,
        "LATIN1",
        b"UPDATE enc SET name = 'caf\xe9' WHERE id = 1;\nSELECT \"caf\xe9_bump\"();\n",
    )
    .await;
    assert_eq!(name_of_row_1(&c).await, "café!");

    // The encoding set by a statement counts from the next statement on; a setting whose text is LATIN1
    // cannot be replayed from pgfleet's UTF-8 copy, so the session stays on the primary that has it.
    let out = psql_in(
        proxy.port,
        "UTF8",
        b"SET NAMES 'LATIN1';\nUPDATE enc SET name = '\xe9t\xe9' WHERE id = 1;\n\
          SET app.label = 'caf\xe9';\n\
          SELECT inet_server_port(), current_setting('app.label');\n\
          SELECT inet_server_port(), current_setting('app.label');\n",
    )
    .await;
    let rows = rows(&out);
    assert_eq!(rows.len(), 2, "{}", String::from_utf8_lossy(&out));
    for row in &rows {
        assert_eq!(port_of(&row[0]), primary, "a read after a LATIN1 setting");
        assert_eq!(row[1], b"caf\xe9", "the setting as the client wrote it");
    }
    assert_eq!(name_of_row_1(&c).await, "été");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sjis_and_encodings_pgfleet_cannot_read_never_hide_a_write() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.batch_execute("CREATE TABLE enc (id int PRIMARY KEY, name text); INSERT INTO enc VALUES (1, 'x');")
        .await
        .expect("setup");

    // In SJIS 0x83 0x5C is one character, ソ, whose second byte is `\`: read byte by byte, E'..' would not
    // end at its quote, and with the quote in the comment the text would read as `SELECT '..' = '..'`, the
    // UPDATE inside the first literal. (`\;` makes psql send both statements in one Query, as a driver would.)
    let out = psql_in(
        proxy.port,
        "SJIS",
        b"SELECT E'\x83\x5c' AS a \\; UPDATE enc SET name = ' = ' WHERE id = 1 -- '\n;\n",
    )
    .await;
    assert_eq!(rows(&out), [vec![b"\x83\x5c".to_vec()]]);
    assert_eq!(name_of_row_1(&c).await, " = ");

    // JOHAB has no decoder in pgfleet: ASCII text is read as usual, the first text outside it runs on the
    // primary and keeps the session there (it could hold a setting pgfleet did not see).
    let out = psql_in(
        proxy.port,
        "JOHAB",
        b"SELECT inet_server_port();\nSELECT inet_server_port(), '\x88\xa1';\nSELECT inet_server_port();\n",
    )
    .await;
    let rows = rows(&out);
    assert_eq!(rows.len(), 3, "{}", String::from_utf8_lossy(&out));
    assert!(
        replicas.contains(&port_of(&rows[0][0])),
        "an ASCII read in JOHAB ran on the primary"
    );
    assert_eq!(port_of(&rows[1][0]), primary, "text pgfleet cannot read");
    assert_eq!(rows[1][1], b"\x88\xa1", "the literal comes back in JOHAB");
    assert_eq!(port_of(&rows[2][0]), primary, "the session stays on the primary");
}

/// Inside a transaction the server reads each statement in the encoding the transaction's earlier statements
/// set, and goes back to the session's when the transaction rolls back: pgfleet reads them the same way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_encoding_set_in_a_transaction_counts_from_its_next_statement_until_a_rollback() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let primary = cluster.primary.port;
    let replicas: HashSet<u16> = cluster.replicas.iter().map(|r| r.port).collect();

    // Read as UTF-8, the LATIN1 setting would be carried to the replicas as other text; read as LATIN1, it
    // keeps the session on the primary that ran it.
    let out = psql_in(
        proxy.port,
        "UTF8",
        b"BEGIN;\nSET client_encoding TO 'LATIN1';\nSET app.label = 'caf\xe9';\nCOMMIT;\n\
          SELECT inet_server_port(), current_setting('app.label');\n\
          SELECT inet_server_port(), current_setting('app.label');\n",
    )
    .await;
    let read = rows(&out);
    assert_eq!(read.len(), 2, "{}", String::from_utf8_lossy(&out));
    for row in &read {
        assert_eq!(port_of(&row[0]), primary, "a read after a LATIN1 setting");
        assert_eq!(row[1], b"caf\xe9", "the setting as the client wrote it");
    }

    // Rolled back, the encoding is the session's again: a UTF-8 setting is carried, and reads spread.
    let out = psql_in(
        proxy.port,
        "UTF8",
        "BEGIN;\nSET client_encoding TO 'LATIN1';\nROLLBACK;\nSET app.label = 'café';\n\
         SELECT inet_server_port(), current_setting('app.label');\n\
         SELECT inet_server_port(), current_setting('app.label');\n"
            .as_bytes(),
    )
    .await;
    let read = rows(&out);
    assert_eq!(read.len(), 2, "{}", String::from_utf8_lossy(&out));
    for row in &read {
        assert!(
            replicas.contains(&port_of(&row[0])),
            "a read after a rolled-back encoding ran on {:?}",
            String::from_utf8_lossy(&row[0])
        );
        assert_eq!(row[1], "café".as_bytes());
    }
}

/// Forward mode's replicas are plain servers that would take a write: one sent there by mistake would run
/// on that replica alone. A LATIN1 write runs on the primary and reaches the replicas through the stream.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_forward_mode_a_latin1_write_runs_on_the_primary_only() {
    let cluster = plain_cluster().await;
    primary_sql(
        &cluster,
        "CREATE TABLE enc (id int PRIMARY KEY, name text); INSERT INTO enc VALUES (1, 'x');
         ALTER TABLE enc OWNER TO app;",
    );
    let proxy = Proxy::start(&cluster, &format!("{}\n{CONFIG}", forward_toml()));
    let copied = |node| {
        cluster
            .psql(node, APP_DB, "SELECT name FROM enc WHERE id = 1")
            .is_ok_and(|s| s.trim() == "x")
    };
    for r in &cluster.replicas {
        crate::support::wait_until(Duration::from_secs(30), async || copied(r))
            .await
            .unwrap_or_else(|| panic!("no initial copy on {}\n{}", r.name, proxy.log_tail(40)));
    }

    psql_in(
        proxy.port,
        "LATIN1",
        b"UPDATE enc SET name = 'caf\xe9' WHERE id = 1;\n",
    )
    .await;
    let on = |node| {
        cluster
            .psql(node, APP_DB, "SELECT name FROM enc WHERE id = 1")
            .expect("read")
    };
    assert_eq!(
        on(&cluster.primary).trim(),
        "café",
        "the write ran on the primary"
    );
    for r in &cluster.replicas {
        crate::support::wait_until(Duration::from_secs(30), async || on(r).trim() == "café")
            .await
            .unwrap_or_else(|| panic!("the write did not reach {}\n{}", r.name, proxy.log_tail(40)));
    }
}

/// A sharded database hashes key values and resends statements split over shards as UTF-8: text in
/// another encoding would place rows on the wrong shard, so it is refused, naming the way out, which works.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sharded_database_refuses_other_encodings_and_lets_the_session_switch_to_utf8() {
    let fleet = ShardedFleet::start(2, 0).await;
    let proxy = fleet.proxy("[[sharded_tables]]\nname = \"owners\"\ncolumn = \"name\"\ntype = \"text\"\n");
    let c = connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await;
    c.simple_query("CREATE TABLE owners (name text PRIMARY KEY, n int)")
        .await
        .expect("CREATE TABLE through pgfleet");

    let out = psql_run(
        proxy.port,
        "LATIN1",
        b"\\set VERBOSITY verbose\nINSERT INTO owners (name, n) VALUES ('caf\xe9', 1);\n",
    )
    .await;
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "the LATIN1 insert ran");
    assert!(
        stderr.contains("0A000") && stderr.contains("client_encoding is not UTF8"),
        "{stderr}"
    );
    let held = |shard| fleet.on_primary(shard, APP_DB, "SELECT count(*) FROM owners");
    assert_eq!(
        (held(0).trim(), held(1).trim()),
        ("0", "0"),
        "a refused insert wrote nothing"
    );

    psql_in(
        proxy.port,
        "LATIN1",
        "SET client_encoding TO 'UTF8';\nINSERT INTO owners (name, n) VALUES ('café', 1);\n".as_bytes(),
    )
    .await;
    let home = shard_for(&KeyValue::Text("café".to_owned()), 2).index();
    assert_eq!(
        held(home).trim(),
        "1",
        "the row is on the shard PostgreSQL's hash gives it"
    );
    assert_eq!(held(1 - home).trim(), "0");
}

/// A program named in LATIN1 (PGAPPNAME from a LATIN1 terminal): PostgreSQL takes the startup packet's bytes
/// and keeps each one outside printable ASCII as `?`; through pgfleet the session is the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_application_name_in_latin1_connects_and_reads_as_on_the_server() {
    use std::os::unix::ffi::OsStrExt;
    let cluster = cluster_async().await;
    let proxy = Proxy::start(&cluster, CONFIG);
    let show = async |port: u16| {
        let out = tokio::process::Command::new("psql")
            .args(["-X", "-A", "-t", "-c", "SHOW application_name"])
            .arg(format!(
                "host=127.0.0.1 port={port} user={APP_USER} dbname={APP_DB} sslmode=disable"
            ))
            .env("PGPASSWORD", PASSWORD)
            .env("PGAPPNAME", std::ffi::OsStr::from_bytes(b"Gesti\xf3n"))
            .output()
            .await
            .expect("run psql");
        assert!(
            out.status.success(),
            "port {port}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        out.stdout
    };
    let direct = show(cluster.primary.port).await;
    assert_eq!(direct, b"Gesti?n\n");
    assert_eq!(show(proxy.port).await, direct);
}
