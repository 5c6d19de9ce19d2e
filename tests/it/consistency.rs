//! Consistency levels across connections (`routing.consistency`, docs/routing.md "Consistency levels"),
//! through real pgfleet processes in front of a real primary and two streaming replicas held back with
//! `recovery_min_apply_delay`: `global` (every commit any client of this pgfleet was told of), `universal`
//! (the same across two pgfleet instances), the causal token (`SHOW pgfleet.write_lsn`, `SET
//! pgfleet.read_after`), monotonic reads, and the commit position that rides behind the write instead of a
//! round trip of its own. Each guarantee is paired with a run that shows the staleness it prevents is real.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use crate::support::cluster::{APP_DB, APP_USER, PASSWORD, cluster_async};
use crate::support::proxy::{Proxy, connect, free_port, try_connect};
use crate::support::wait::wait_until;
use localcluster::{LocalCluster, NodeHandle};
use tokio_postgres::{Client, SimpleQueryMessage};

/// No single client call may take longer than this: a hang fails the test instead of stalling it.
const CALL_TIMEOUT: Duration = Duration::from_secs(10);
/// Health checks of every proxy here.
const HEALTH_TOML: &str = "[health]\ninterval = \"200ms\"\n";

fn proxy_at(cluster: &LocalCluster, level: &str) -> Proxy {
    Proxy::start(
        cluster,
        &format!("[routing]\nload_balance = \"round_robin\"\nconsistency = \"{level}\"\n\n{HEALTH_TOML}"),
    )
}

async fn client(proxy: &Proxy) -> Client {
    connect(&proxy.dsn(APP_USER, PASSWORD, APP_DB)).await
}

/// What `sql` answers via the simple protocol, within CALL_TIMEOUT.
async fn simple(c: &Client, sql: &str) -> Vec<SimpleQueryMessage> {
    tokio::time::timeout(CALL_TIMEOUT, c.simple_query(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {CALL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"))
}

/// First column of the first row, via the simple protocol.
async fn value(c: &Client, sql: &str) -> String {
    simple(c, sql)
        .await
        .iter()
        .find_map(|m| match m {
            SimpleQueryMessage::Row(r) => r.get(0).map(str::to_owned),
            _ => None,
        })
        .unwrap_or_else(|| panic!("{sql}: no row"))
}

async fn run(c: &Client, sql: &str) {
    tokio::time::timeout(CALL_TIMEOUT, c.batch_execute(sql))
        .await
        .unwrap_or_else(|_| panic!("{sql}: no answer within {CALL_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{sql}: {e:?}"));
}

/// Runs `sql` with psql directly on `node` as the superuser (blocking, so off the async workers).
fn direct(node: &NodeHandle, sql: &str) -> String {
    tokio::task::block_in_place(|| node.psql(APP_DB, sql))
        .unwrap_or_else(|e| panic!("{sql} on {}: {e}", node.name))
}

/// Sets `recovery_min_apply_delay` on a standby and waits until a new backend sees it. Whether the startup
/// process applies it yet is not observable; every test proves the delay is in force by a stale read.
async fn set_apply_delay(node: &NodeHandle, delay: &str) {
    direct(
        node,
        &format!("ALTER SYSTEM SET recovery_min_apply_delay = '{delay}'"),
    );
    direct(node, "SELECT pg_reload_conf()");
    let applied = wait_until(Duration::from_secs(5), async || {
        direct(node, "SHOW recovery_min_apply_delay") == delay
    })
    .await;
    assert!(
        applied.is_some(),
        "{}: recovery_min_apply_delay did not become {delay}",
        node.name
    );
}

/// From here on every statement `node` runs goes to its log (which the tests read to count queries).
/// How a server logs the position questions pgfleet asks (`log_statement = 'all'`): calls by the protocol's
/// fast path, not statements. pg_current_wal_lsn() behind commits and reads on the primary,
/// pg_last_wal_replay_lsn() ahead of (or behind) reads on a replica; asked in a round trip of their own, they
/// look the same (`asked_separately` tells them apart by pgfleet's log).
const CURRENT_LSN_CALL: &str = "fastpath function call: \"pg_current_wal_lsn\"";
const REPLAY_LSN_CALL: &str = "fastpath function call: \"pg_last_wal_replay_lsn\"";

async fn log_every_statement(node: &NodeHandle) {
    direct(node, "ALTER SYSTEM SET log_statement = 'all'");
    direct(node, "SELECT pg_reload_conf()");
    let logging = wait_until(Duration::from_secs(5), async || {
        direct(node, "SHOW log_statement") == "all"
    })
    .await;
    assert!(
        logging.is_some(),
        "{}: log_statement did not become all",
        node.name
    );
}

/// Runs `ddl` on the primary as the application user and waits until both replicas have it.
async fn create_table(cluster: &LocalCluster, ddl: &str) {
    let owner = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
    run(&owner, ddl).await;
    replicas_caught_up(cluster).await;
}

/// Waits until every replica has replayed what the primary has now (pgfleet is not told).
async fn replicas_caught_up(cluster: &LocalCluster) {
    let replicas: Vec<&NodeHandle> = cluster.replicas.iter().collect();
    tokio::task::block_in_place(|| {
        LocalCluster::wait_caught_up(&cluster.primary, &replicas, Duration::from_secs(30))
    })
    .unwrap_or_else(|e| panic!("replicas did not catch up: {e}"));
}

/// Writes `config` as `proxy`'s config file and reloads it, until its log says so.
async fn reload_with(proxy: &Proxy, config: String) {
    std::fs::write(&proxy.config_path, config).expect("write config");
    proxy.reload();
    let reloaded = wait_until(Duration::from_secs(10), async || {
        proxy.log_contents().contains("config reloaded")
    })
    .await;
    assert!(reloaded.is_some(), "no reload logged:\n{}", proxy.log_tail(20));
}

/// How many rows of `table` match `filter` (a WHERE clause, or nothing), and the port of the node that read
/// them.
async fn count_and_port(c: &Client, table: &str, filter: &str) -> (String, String) {
    let sql = format!("SELECT count(*)::text || ' ' || inet_server_port() FROM {table} {filter}");
    let row = value(c, sql.trim_end()).await;
    let (n, port) = row.split_once(' ').expect("count and port");
    (n.to_owned(), port.to_owned())
}

/// `rounds` of: one connection inserts a row (autocommit), the other reads it back at once; with `swap`, the
/// two swap roles every round. Returns how many reads missed the row.
async fn cross_connection_rounds(
    a: &Client,
    b: &Client,
    table: &str,
    from: usize,
    rounds: usize,
    swap: bool,
) -> usize {
    let mut stale = 0;
    for i in from..from + rounds {
        let (writer, reader) = if swap && i % 2 == 1 { (b, a) } else { (a, b) };
        run(writer, &format!("INSERT INTO {table} VALUES ({i})")).await;
        if value(reader, &format!("SELECT count(*) FROM {table} WHERE id = {i}")).await != "1" {
            stale += 1;
        }
    }
    stale
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn global_reads_see_every_commit_acknowledged_to_any_connection() {
    let cluster = cluster_async().await;
    let global = proxy_at(&cluster, "global");
    let session = proxy_at(&cluster, "session");
    create_table(&cluster, "CREATE TABLE g (id int PRIMARY KEY)").await;
    for replica in &cluster.replicas {
        set_apply_delay(replica, "300ms").await;
    }

    // The staleness is real: at "session", a connection that does not write does not see the other's commits
    // at once. (When both write, each one's own last write already sends its reads to the primary.)
    let (a, b) = (client(&session).await, client(&session).await);
    let stale = cross_connection_rounds(&a, &b, "g", 100_000, 200, false).await;
    assert!(
        stale > 0,
        "precondition: with replicas 300 ms behind, reads at consistency = \"session\" should miss rows \
         the other connection just wrote"
    );
    eprintln!("consistency = \"session\": {stale} of 200 cross-connection reads were stale");

    // At "global": 1,000 rounds, not one stale read.
    let (a, b) = (client(&global).await, client(&global).await);
    let stale = cross_connection_rounds(&a, &b, "g", 0, 1000, true).await;
    assert_eq!(
        stale,
        0,
        "consistency = \"global\": {stale} of 1000 reads missed a row whose commit the other connection \
         was told of\n--- pgfleet log ---\n{}",
        global.log_tail(40)
    );

    // PREPARE TRANSACTION on one connection: the other sees it in pg_prepared_xacts at once, and after
    // COMMIT PREPARED, its row.
    run(
        &a,
        "BEGIN; INSERT INTO g VALUES (-1); PREPARE TRANSACTION 'consistency_px'",
    )
    .await;
    assert_eq!(
        value(
            &b,
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'consistency_px'"
        )
        .await,
        "1",
        "a transaction prepared on another connection must show in pg_prepared_xacts"
    );
    run(&a, "COMMIT PREPARED 'consistency_px'").await;
    assert_eq!(value(&b, "SELECT count(*) FROM g WHERE id = -1").await, "1");
    assert_eq!(
        value(
            &b,
            "SELECT count(*) FROM pg_prepared_xacts WHERE gid = 'consistency_px'"
        )
        .await,
        "0"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn universal_reads_through_another_pgfleet_see_its_commits() {
    let cluster = cluster_async().await;
    let writer_side = proxy_at(&cluster, "universal");
    let reader_side = proxy_at(&cluster, "universal");
    let global_reader = proxy_at(&cluster, "global");
    create_table(&cluster, "CREATE TABLE u (id int PRIMARY KEY)").await;
    for replica in &cluster.replicas {
        set_apply_delay(replica, "300ms").await;
    }
    let w = client(&writer_side).await;

    // The staleness is real: "global" covers only the commits its own pgfleet acknowledged.
    let r = client(&global_reader).await;
    let mut stale = 0;
    for i in 100_000..100_100 {
        run(&w, &format!("INSERT INTO u VALUES ({i})")).await;
        if value(&r, &format!("SELECT count(*) FROM u WHERE id = {i}")).await != "1" {
            stale += 1;
        }
    }
    assert!(
        stale > 0,
        "precondition: a \"global\" pgfleet that did not see the writes should read stale rows"
    );
    eprintln!("through a second pgfleet at \"global\": {stale} of 100 reads stale");

    let r = client(&reader_side).await;
    let mut stale = Vec::new();
    for i in 0..300 {
        run(&w, &format!("INSERT INTO u VALUES ({i})")).await;
        if value(&r, &format!("SELECT count(*) FROM u WHERE id = {i}")).await != "1" {
            stale.push(i);
        }
    }
    assert!(
        stale.is_empty(),
        "consistency = \"universal\": reads through the second pgfleet missed rows {stale:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn causal_token_carries_a_commit_to_another_connection() {
    let cluster = cluster_async().await;
    let proxy = proxy_at(&cluster, "session");
    create_table(&cluster, "CREATE TABLE c (id int PRIMARY KEY)").await;
    for replica in &cluster.replicas {
        set_apply_delay(replica, "300ms").await;
    }
    let (a, b) = (client(&proxy).await, client(&proxy).await);
    assert_eq!(value(&a, "SHOW pgfleet.write_lsn").await, "0/0", "no commit yet");

    // Without the token the other connection reads stale rows: the delay is in force.
    let mut stale = 0;
    for i in 100_000..100_050 {
        run(&a, &format!("INSERT INTO c VALUES ({i})")).await;
        if value(&b, &format!("SELECT count(*) FROM c WHERE id = {i}")).await != "1" {
            stale += 1;
        }
    }
    assert!(stale > 0, "precondition: without a token, reads should miss rows");
    eprintln!("without a token: {stale} of 50 reads stale");

    let mut previous = String::new();
    for i in 0..50 {
        run(&a, &format!("INSERT INTO c VALUES ({i})")).await;
        let token = value(&a, "show pgfleet.write_lsn;").await;
        assert!(
            token.contains('/') && token != previous,
            "token {token:?} after write {i}"
        );
        previous = token.clone();
        run(&b, &format!("SET pgfleet.read_after = '{token}'")).await;
        assert_eq!(
            value(&b, &format!("SELECT count(*) FROM c WHERE id = {i}")).await,
            "1",
            "round {i}: a read after SET pgfleet.read_after = '{token}' missed the row"
        );
    }

    // As a startup option of a new connection.
    run(&a, "INSERT INTO c VALUES (-1)").await;
    let token = value(&a, "SHOW pgfleet.write_lsn").await;
    let dsn = format!(
        "{} options='-c pgfleet.read_after={token}'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    );
    let fresh = connect(&dsn).await;
    assert_eq!(value(&fresh, "SELECT count(*) FROM c WHERE id = -1").await, "1");

    // With the extended protocol (tokio-postgres prepares a named statement, then binds it in a second
    // request), as most drivers send everything: answered by pgfleet, never passed to a node where the SET
    // would be taken for a custom setting and do nothing.
    for i in 200..220 {
        run(&a, &format!("INSERT INTO c VALUES ({i})")).await;
        let rows = a
            .query("SHOW pgfleet.write_lsn", &[])
            .await
            .expect("extended SHOW");
        let token: String = rows[0].get(0);
        assert_eq!(
            token,
            value(&a, "SHOW pgfleet.write_lsn").await,
            "same token both ways"
        );
        let set = b
            .execute(&format!("SET pgfleet.read_after = '{token}'"), &[])
            .await
            .expect("extended SET");
        assert_eq!(set, 0);
        assert_eq!(
            value(&b, &format!("SELECT count(*) FROM c WHERE id = {i}")).await,
            "1",
            "round {i}: a read after an extended SET pgfleet.read_after = '{token}' missed the row"
        );
    }
    // The same prepared statement run again (Bind only): still pgfleet's.
    let show = a.prepare("SHOW pgfleet.write_lsn").await.expect("prepare");
    for _ in 0..3 {
        let token: String = a.query_one(&show, &[]).await.expect("bound SHOW").get(0);
        assert_eq!(token, value(&a, "SHOW pgfleet.write_lsn").await);
    }
    let e = b
        .execute("SET pgfleet.read_after = 'tomorrow'", &[])
        .await
        .expect_err("a bad token is refused in the extended protocol too");
    assert_eq!(e.as_db_error().map(|d| d.code().code()), Some("22023"), "{e:?}");
    b.batch_execute("RESET pgfleet.read_after").await.expect("reset");

    // A bad value: 22023 naming the setting, for SET and for the startup option.
    let e = b
        .batch_execute("SET pgfleet.read_after = 'yesterday'")
        .await
        .expect_err("a bad token must be refused");
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023");
    assert!(db.message().contains("pgfleet.read_after"), "{}", db.message());
    let bad = format!(
        "{} options='-c pgfleet.read_after=soon'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    );
    let Err(e) = try_connect(&bad).await else {
        panic!("a bad startup token must be refused");
    };
    let db = e.as_db_error().expect("a server error");
    assert_eq!(db.code().code(), "22023");
    assert!(db.message().contains("pgfleet.read_after"), "{}", db.message());
}

/// Reads `v` of the counter row `rounds` times through `c`; returns how often it went backwards.
async fn backward_steps(c: &Client, rounds: usize) -> usize {
    let mut last = 0i64;
    let mut backwards = 0;
    for _ in 0..rounds {
        let v: i64 = value(c, "SELECT v FROM m WHERE id = 1")
            .await
            .parse()
            .expect("a number");
        if v < last {
            backwards += 1;
        }
        last = last.max(v);
    }
    backwards
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn monotonic_reads_never_go_back_in_time_across_replicas() {
    let cluster = cluster_async().await;
    let off = proxy_at(&cluster, "off");
    let session = proxy_at(&cluster, "session");
    create_table(
        &cluster,
        "CREATE TABLE m (id int PRIMARY KEY, v bigint NOT NULL); INSERT INTO m VALUES (1, 0)",
    )
    .await;
    // One replica current, the other 1 s behind: alternating reads would see the counter jump back.
    set_apply_delay(&cluster.replicas[1], "1s").await;
    let stop = Arc::new(AtomicBool::new(false));
    let writer = {
        let stop = stop.clone();
        let w = connect(&cluster.primary.dsn(APP_USER, PASSWORD, APP_DB)).await;
        tokio::spawn(async move {
            while !stop.load(Ordering::Relaxed) {
                // Back to back: each update's own round trip paces the counter.
                run(&w, "UPDATE m SET v = v + 1 WHERE id = 1").await;
            }
        })
    };
    let careless = client(&off).await;
    let back_at_off = backward_steps(&careless, 200).await;
    let c = client(&session).await;
    let back_at_session = backward_steps(&c, 400).await;
    stop.store(true, Ordering::Relaxed);
    writer.await.expect("writer task");
    eprintln!(
        "counter went back {back_at_off} times in 200 reads at \"off\", {back_at_session} in 400 at \"session\""
    );
    assert!(
        back_at_off > 0,
        "precondition: at consistency = \"off\", round-robin reads over a current and a delayed replica \
         should see the counter go back"
    );
    assert_eq!(
        back_at_session,
        0,
        "consistency = \"session\": reads went back in time {back_at_session} times\n--- pgfleet log ---\n{}",
        session.log_tail(40)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_positions_ride_behind_the_write_without_a_round_trip_of_their_own() {
    use bytes::Bytes;
    use futures_util::{SinkExt, pin_mut};
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[routing]\nload_balance = \"round_robin\"\nconsistency = \"session\"\n\n{HEALTH_TOML}\n{SEPARATE_ASKS_LOG}"
        ),
    );
    create_table(&cluster, "CREATE TABLE w (id int PRIMARY KEY)").await;
    log_every_statement(&cluster.primary).await;
    let riding = CURRENT_LSN_CALL;
    let count = |text: &str| cluster.primary.log_contents().matches(text).count();
    let separate = || asked_separately(&proxy, &cluster.primary.name);
    let (separate_before, riding_before) = (separate(), count(riding));

    let c = client(&proxy).await;
    for i in 0..10 {
        run(&c, &format!("INSERT INTO w VALUES ({i})")).await;
    }
    c.execute("INSERT INTO w VALUES ($1)", &[&10i32])
        .await
        .expect("extended insert");
    run(&c, "BEGIN; INSERT INTO w VALUES (11)").await;
    run(&c, "COMMIT").await;
    run(
        &c,
        "BEGIN; INSERT INTO w VALUES (12); PREPARE TRANSACTION 'rides'",
    )
    .await;
    run(&c, "COMMIT PREPARED 'rides'").await;
    let token = value(&c, "SHOW pgfleet.write_lsn").await;
    assert_ne!(token, "0/0");
    let logged = wait_until(Duration::from_secs(5), async || {
        count(riding) - riding_before >= 14
    })
    .await;
    assert!(
        logged.is_some(),
        "14 committing requests should each carry the position query: {} seen",
        count(riding) - riding_before
    );
    assert_eq!(
        separate() - separate_before,
        0,
        "a committing request made a separate position query"
    );

    // COPY is the exception: its position is asked separately, which pgfleet's log shows, so the check
    // above would see a separate ask if one came back.
    let sink = c.copy_in("COPY w FROM STDIN").await.expect("copy in");
    pin_mut!(sink);
    sink.send(Bytes::from_static(b"100\n101\n")).await.expect("send");
    assert_eq!(sink.finish().await.expect("finish"), 2);
    let seen = wait_until(Duration::from_secs(5), async || separate() > separate_before).await;
    assert!(
        seen.is_some(),
        "the COPY's separate position query should be in the primary's log"
    );
}

/// A fleet of `nodes` (the primary first) at the default consistency (`global`), reads balanced round robin
/// over the replicas.
fn fleet_config(port: u16, nodes: &[&NodeHandle]) -> String {
    let mut text = format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"{APP_USER}\"\npassword = \"{PASSWORD}\"\n\n"
    );
    for (i, node) in nodes.iter().enumerate() {
        let role = if i == 0 { "primary" } else { "replica" };
        text.push_str(&format!(
            "[[nodes]]\nname = \"{}\"\naddress = \"{}\"\nrole = \"{role}\"\n\n",
            node.name,
            node.address()
        ));
    }
    text + &format!("[routing]\nload_balance = \"round_robin\"\n\n{HEALTH_TOML}\n{SEPARATE_ASKS_LOG}")
}

/// With the primary as the fleet's only node no read can go anywhere else, so a commit carries no position
/// query (the primary's log shows none, riding or separate), and SHOW pgfleet.write_lsn asks the primary
/// instead (at or past the commit). Such commits still count for `global`: once a reload adds replicas that
/// have not replayed one (their replay paused), a read in another session is not served there; once they
/// catch up, reads go to them again, and commits carry their position as in any fleet with replicas.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_primary_alone_commits_without_position_queries_and_global_reads_see_them_after_a_reload() {
    let cluster = cluster_async().await;
    create_table(&cluster, "CREATE TABLE alone (id int PRIMARY KEY)").await;
    log_every_statement(&cluster.primary).await;
    let count = |text: &str| cluster.primary.log_contents().matches(text).count();
    let riding = CURRENT_LSN_CALL;
    let riding_before = count(riding);
    let port = free_port();
    let proxy = Proxy::start_with_config(fleet_config(port, &[&cluster.primary]));
    let separate = || asked_separately(&proxy, &cluster.primary.name);
    let separate_before = separate();

    let a = client(&proxy).await;
    for i in 0..3 {
        run(&a, &format!("INSERT INTO alone VALUES ({i})")).await;
    }
    run(&a, "BEGIN; INSERT INTO alone VALUES (3)").await;
    run(&a, "COMMIT").await;
    // The WAL insert position during the INSERT, before its commit record.
    let before_commit = value(
        &a,
        "INSERT INTO alone VALUES (4) RETURNING pg_current_wal_insert_lsn()::text",
    )
    .await;
    assert_eq!(value(&a, "SELECT 'alone marker'").await, "alone marker");
    let logged = wait_until(Duration::from_secs(5), async || {
        cluster.primary.log_contents().contains("alone marker")
    })
    .await;
    assert!(logged.is_some(), "the marker never reached the primary's log");
    assert_eq!(
        (count(riding) - riding_before, separate() - separate_before),
        (0, 0),
        "commits through a primary-only fleet carried position queries (riding, separate)"
    );
    let token = value(&a, "SHOW pgfleet.write_lsn").await;
    assert_eq!(
        direct(
            &cluster.primary,
            &format!("SELECT '{token}'::pg_lsn > '{before_commit}'::pg_lsn")
        ),
        "t",
        "SHOW pgfleet.write_lsn gave {token}, not past the last commit (its INSERT ran at {before_commit})"
    );

    // The next commit does not reach the replicas (replay paused: nothing after the pause is applied), which
    // then join the fleet.
    for replica in &cluster.replicas {
        direct(replica, "SELECT pg_wal_replay_pause()");
    }
    run(&a, "INSERT INTO alone VALUES (5)").await;
    for replica in &cluster.replicas {
        assert_eq!(
            direct(replica, "SELECT count(*) FROM alone WHERE id = 5"),
            "0",
            "precondition: {} must not have replayed the last commit",
            replica.name
        );
    }
    let replicas: Vec<&NodeHandle> = cluster.replicas.iter().collect();
    let whole = [vec![&cluster.primary], replicas].concat();
    reload_with(&proxy, fleet_config(port, &whole)).await;

    let b = client(&proxy).await;
    assert_eq!(
        value(&b, "SELECT count(*) FROM alone WHERE id = 5").await,
        "1",
        "a global read after the reload missed a commit made while the primary was alone\n{}",
        proxy.log_tail(30)
    );
    assert_eq!(
        value(&b, "SELECT inet_server_port()").await,
        cluster.primary.port.to_string(),
        "with both replicas behind that commit, reads must stay on the primary"
    );

    // Caught up, the replicas serve reads; commits carry their position again.
    for replica in &cluster.replicas {
        direct(replica, "SELECT pg_wal_replay_resume()");
    }
    let replica_ports: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();
    let on_replica = wait_until(Duration::from_secs(10), async || {
        replica_ports.contains(&value(&b, "SELECT inet_server_port()").await)
    })
    .await;
    assert!(
        on_replica.is_some(),
        "reads never reached the replicas after they caught up\n{}",
        proxy.log_tail(30)
    );
    let riding_now = count(riding);
    run(&a, "INSERT INTO alone VALUES (6)").await;
    let carried = wait_until(Duration::from_secs(5), async || count(riding) > riding_now).await;
    assert!(
        carried.is_some(),
        "a commit in a fleet with replicas carried no position query"
    );
}

/// A replica that has replayed what a read must see, but that pgfleet does not know has (no health check,
/// probe or earlier read told it since the write), is asked in the same write as the read, ahead of it: the
/// read is served there with no round trip of its own. Shown by the replicas' logs: the question that rides
/// ahead of the read (a fast-path call of `pg_last_wal_replay_lsn()`), never a separate
/// `pg_last_wal_replay_lsn()` probe.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_caught_up_replica_is_asked_in_the_same_write_as_the_read() {
    let cluster = cluster_async().await;
    // Health checks too rare to tell pgfleet anything during the test.
    let proxy = Proxy::start(
        &cluster,
        &format!(
            "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\n\n[health]\ninterval = \"60s\"\n\n\
             {SEPARATE_ASKS_LOG}"
        ),
    );
    create_table(&cluster, "CREATE TABLE lead (id int PRIMARY KEY)").await;
    for replica in &cluster.replicas {
        log_every_statement(replica).await;
    }
    let count = |text: &str| logged_on_replicas(&cluster, text);
    let separate = || {
        cluster
            .replicas
            .iter()
            .map(|r| asked_separately(&proxy, &r.name))
            .sum::<usize>()
    };
    let leading = REPLAY_LSN_CALL;
    let (separate_before, leading_before) = (separate(), count(leading));
    let replica_ports: Vec<String> = cluster.replicas.iter().map(|r| r.port.to_string()).collect();
    let (writer, reader) = (client(&proxy).await, client(&proxy).await);
    let mut on_replicas = 0;
    for i in 0..20 {
        run(&writer, &format!("INSERT INTO lead VALUES ({i})")).await;
        // Both replicas replay the write; pgfleet is not told.
        replicas_caught_up(&cluster).await;
        let (n, port) = count_and_port(&reader, "lead", &format!("WHERE id = {i}")).await;
        assert_eq!(n, "1", "round {i}: the read missed the row");
        on_replicas += usize::from(replica_ports.contains(&port));
    }
    assert_eq!(on_replicas, 20, "every read was served by a caught-up replica");
    let asked = wait_until(Duration::from_secs(5), async || {
        count(leading) - leading_before >= 20
    })
    .await;
    assert!(
        asked.is_some(),
        "each read should carry the question ahead of it: {} seen",
        count(leading) - leading_before
    );
    assert_eq!(
        separate() - separate_before,
        0,
        "a read asked a replica in a round trip of its own"
    );
}

/// The position questions that ride with requests leave nothing an application can see on the servers: for the
/// backends that served a commit (a question behind it) and a read on a replica (questions with it),
/// pg_stat_activity shows the client's own statement, as without pgfleet, not pgfleet's question (which it
/// did when the questions were queries).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pg_stat_activity_shows_the_clients_statement_not_the_position_questions() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\n\n[health]\ninterval = \"60s\"\n",
    );
    create_table(&cluster, "CREATE TABLE seen_activity (id int PRIMARY KEY)").await;
    let (writer, reader) = (client(&proxy).await, client(&proxy).await);
    run(&writer, "SET application_name = 'activity_writer'").await;
    run(&reader, "SET application_name = 'activity_reader'").await;
    let last_statement = |node: &NodeHandle, app: &str| {
        direct(
            node,
            &format!("SELECT state || ': ' || query FROM pg_stat_activity WHERE application_name = '{app}'"),
        )
    };

    let insert = "INSERT INTO seen_activity VALUES (1)";
    run(&writer, insert).await;
    assert_eq!(
        last_statement(&cluster.primary, "activity_writer"),
        format!("idle: {insert}")
    );

    replicas_caught_up(&cluster).await;
    let (n, port) = count_and_port(&reader, "seen_activity", "").await;
    assert_eq!(n, "1", "the read missed the commit");
    let replica = cluster
        .replicas
        .iter()
        .find(|r| r.port.to_string() == port)
        .unwrap_or_else(|| panic!("the read was served by port {port}, not by a caught-up replica"));
    assert_eq!(
        last_statement(replica, "activity_reader"),
        "idle: SELECT count(*)::text || ' ' || inet_server_port() FROM seen_activity"
    );
}

/// A commit made with `synchronous_commit = off` returns before its WAL record is written, so the primary's
/// write position taken right after it can be short of the record: a replica that has replayed that far has
/// not replayed the commit. pgfleet takes the insert position behind commits that may be asynchronous (the
/// session named `synchronous_commit`, a function of the database sets it, or the primary's health check
/// found it off for a role). The primary's
/// WAL writer is slowed (`wal_writer_delay = '10s'`) so that the records stay unwritten while the reads run;
/// with write positions every read of another session missed its row. Each way a commit becomes
/// asynchronous: the session's SET, a SET LOCAL in a transaction of separate requests, `set_config` in one
/// query string, the startup option, a function that sets it in its body, and a role's setting, which the
/// health check reports (pgfleet logs it) before the session that relies on it starts.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_of_other_sessions_see_commits_made_with_synchronous_commit_off() {
    let cluster = cluster_async().await;
    let config = "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\n\n[health]\ninterval = \"60s\"\n";
    let proxy = Proxy::start(&cluster, config);
    create_table(&cluster, "CREATE TABLE lazy (id int PRIMARY KEY)").await;
    direct(&cluster.primary, "ALTER SYSTEM SET wal_writer_delay = '10s'");
    direct(&cluster.primary, "SELECT pg_reload_conf()");
    let slowed = wait_until(Duration::from_secs(5), async || {
        direct(&cluster.primary, "SHOW wal_writer_delay") == "10s"
    })
    .await;
    assert!(slowed.is_some(), "wal_writer_delay did not become 10s");
    let reader = client(&proxy).await;
    let mut missed = Vec::new();
    let by_set = client(&proxy).await;
    run(&by_set, "SET synchronous_commit = off").await;
    missed.extend(async_commit_rounds(AsyncBy::Set, &by_set, &reader, 0).await);
    // A session of its own for each way: pgfleet remembers for the session that it named the setting.
    let by_set_local = client(&proxy).await;
    missed.extend(async_commit_rounds(AsyncBy::SetLocal, &by_set_local, &reader, 100).await);
    let by_set_config = client(&proxy).await;
    missed.extend(async_commit_rounds(AsyncBy::SetConfig, &by_set_config, &reader, 200).await);
    let by_login = connect(&format!(
        "{} options='-c synchronous_commit=off'",
        proxy.dsn(APP_USER, PASSWORD, APP_DB)
    ))
    .await;
    missed.extend(async_commit_rounds(AsyncBy::Login, &by_login, &reader, 400).await);
    // A function that sets it for the rest of its caller's transaction; the caller never names it. Created
    // through pgfleet (which then reads the database's functions again) and dropped after, so that the
    // other ways' sessions do not find it.
    let owner = client(&proxy).await;
    run(&owner, QUIET_FUNCTION).await;
    let by_function = client(&proxy).await;
    missed.extend(async_commit_rounds(AsyncBy::Function, &by_function, &reader, 500).await);
    assert_eq!(value(&by_function, "SHOW synchronous_commit").await, "on");
    run(&owner, "DROP FUNCTION quietly(int)").await;
    // The same with a body in SQL-standard form, which pg_proc keeps parsed, not as text.
    run(&owner, QUIET_ATOMIC_FUNCTION).await;
    let by_atomic = client(&proxy).await;
    missed.extend(async_commit_rounds(AsyncBy::AtomicFunction, &by_atomic, &reader, 600).await);
    run(&owner, "DROP FUNCTION quietly_atomic(int)").await;
    // The role's setting reaches pgfleet by the health check: a second pgfleet, started after it, says so.
    direct(
        &cluster.primary,
        &format!("ALTER ROLE {APP_USER} SET synchronous_commit = off"),
    );
    let by_role = Proxy::start(&cluster, config);
    let reported = wait_until(Duration::from_secs(10), async || {
        by_role
            .log_contents()
            .contains("primary may commit asynchronously")
    })
    .await;
    assert!(
        reported.is_some(),
        "the health check did not report the role's setting:\n{}",
        by_role.log_contents()
    );
    let writer = client(&by_role).await;
    assert_eq!(value(&writer, "SHOW synchronous_commit").await, "off");
    let reader = client(&by_role).await;
    missed.extend(async_commit_rounds(AsyncBy::Role, &writer, &reader, 300).await);
    assert!(
        missed.is_empty(),
        "reads missed commits made with synchronous_commit off: {missed:?}"
    );
}

/// Sessions that need a database's function rules at the same moment share one load of them: forty sessions'
/// first writes, right after DDL sent through pgfleet dropped the rules, make the primary run the catalog's
/// queries once (they ran once per session, one after another on pgfleet's single control connection).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_that_find_no_function_rules_at_once_share_one_load() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\n\n[health]\ninterval = \"60s\"\n",
    );
    create_table(&cluster, "CREATE TABLE burst (id int)").await;
    let mut sessions = Vec::new();
    for _ in 0..40 {
        sessions.push(client(&proxy).await);
    }
    log_every_statement(&cluster.primary).await;
    // Only the catalog's query for bodies that name synchronous_commit has this pattern.
    let loads = || {
        cluster
            .primary
            .log_contents()
            .matches("'%synchronous\\_commit%'")
            .count()
    };
    run(&sessions[0], "CREATE TABLE burst_ddl (id int)").await;
    let before = loads();
    let mut writes = tokio::task::JoinSet::new();
    for (i, session) in sessions.into_iter().enumerate() {
        writes.spawn(async move { run(&session, &format!("INSERT INTO burst VALUES ({i})")).await });
    }
    while let Some(done) = writes.join_next().await {
        done.expect("a write");
    }
    assert_eq!(
        loads() - before,
        1,
        "catalog loads for forty sessions' first writes"
    );
}

/// A function whose body makes its caller's commit asynchronous (`set_config(..., true)` lasts until the
/// transaction ends; a `SET` clause would not, PostgreSQL restores it when the function returns).
const QUIET_FUNCTION: &str = "CREATE FUNCTION quietly(id int) RETURNS int LANGUAGE plpgsql AS \
     $$ BEGIN PERFORM set_config('synchronous_commit', 'off', true); RETURN id; END $$";

/// As `QUIET_FUNCTION`, with a SQL-standard body (`BEGIN ATOMIC`).
const QUIET_ATOMIC_FUNCTION: &str = "CREATE FUNCTION quietly_atomic(id int) RETURNS int BEGIN ATOMIC \
     SELECT set_config('synchronous_commit', 'off', true); SELECT id; END";

/// How a writer's commits become asynchronous, for `async_commit_rounds`.
#[derive(Debug, Clone, Copy)]
enum AsyncBy {
    /// The session SET it before.
    Set,
    /// SET LOCAL in each transaction, each statement a request of its own.
    SetLocal,
    /// `set_config(..., true)` in each transaction, all in one query string.
    SetConfig,
    /// The startup option `-c synchronous_commit=off`.
    Login,
    /// The role's setting.
    Role,
    /// A function called in the write (`QUIET_FUNCTION`).
    Function,
    /// The same in SQL-standard form (`QUIET_ATOMIC_FUNCTION`).
    AtomicFunction,
}

/// Ten rounds of: `writer` commits a row, `reader` (another session) reads it at once. The reads that missed
/// their row, with the port that served them.
async fn async_commit_rounds(by: AsyncBy, writer: &Client, reader: &Client, first: i32) -> Vec<String> {
    let mut missed = Vec::new();
    for i in first..first + 10 {
        let insert = format!("INSERT INTO lazy VALUES ({i})");
        match by {
            AsyncBy::Set | AsyncBy::Login | AsyncBy::Role => run(writer, &insert).await,
            AsyncBy::Function => run(writer, &format!("INSERT INTO lazy SELECT quietly({i})")).await,
            AsyncBy::AtomicFunction => {
                run(writer, &format!("INSERT INTO lazy SELECT quietly_atomic({i})")).await
            }
            AsyncBy::SetLocal => {
                for sql in ["BEGIN", "SET LOCAL synchronous_commit = off", &insert, "COMMIT"] {
                    run(writer, sql).await;
                }
            }
            AsyncBy::SetConfig => {
                let sql =
                    format!("BEGIN; SELECT set_config('synchronous_commit', 'off', true); {insert}; COMMIT");
                run(writer, &sql).await;
            }
        }
        let (n, port) = count_and_port(reader, "lazy", &format!("WHERE id = {i}")).await;
        if n != "1" {
            missed.push(format!("{by:?}: {i} (read on port {port})"));
        }
    }
    missed
}

/// Reads that find a question to their replica already in flight wait for its answer instead of asking one of
/// their own. The replica is frozen (SIGSTOP) so that one read's question stays in flight; two more reads
/// for the same replica then wait on it (pgfleet logs each wait). A client's cancel ends its read's wait at
/// once with 57014, the replica still frozen; once the replica runs again its log shows one question for the
/// two other reads, which see the row, and the cancelled client's session goes on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reads_waiting_on_a_question_in_flight_to_their_replica_ask_none_of_their_own() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\nreplica_affinity = \"session\"\n\n\
         [health]\ninterval = \"60s\"\n\n[log]\nlevel = \"info,pgfleet::cluster::positions=debug\"\n",
    );
    create_table(&cluster, "CREATE TABLE coalesced (id int PRIMARY KEY)").await;
    let read = "SELECT count(*)::text || ' ' || inet_server_port() FROM coalesced WHERE id = 1";
    let (replica, group, _) = three_sessions_on_one_replica(&cluster, &proxy, read, false).await;
    let port = replica.port.to_string();
    log_every_statement(replica).await;
    // A commit the three reads must see, replayed by both replicas before the freeze; pgfleet is not told.
    run(&client(&proxy).await, "INSERT INTO coalesced VALUES (1)").await;
    replicas_caught_up(&cluster).await;
    let leading = REPLAY_LSN_CALL;
    let leads_before = replica.log_contents().matches(leading).count();
    let reads_before = replica.log_contents().matches(read).count();
    let logged = |text: &'static str| proxy.log_contents().matches(text).count();
    let (in_flight_before, waits_before) = (
        logged("lead question in flight"),
        logged("waiting for the answer of a lead in flight"),
    );
    tokio::task::block_in_place(|| replica.pause()).expect("SIGSTOP the replica");
    let mut clients = group.into_iter();
    let spawn_read = |c: Client| tokio::spawn(async move { value(&c, read).await });
    let first = spawn_read(clients.next().expect("first"));
    let asked = wait_until(Duration::from_secs(5), async || {
        logged("lead question in flight") > in_flight_before
    })
    .await;
    assert!(asked.is_some(), "the first read's question was not sent");
    let second = spawn_read(clients.next().expect("second"));
    let canceled = Arc::new(clients.next().expect("third"));
    let token = canceled.cancel_token();
    let third = tokio::spawn({
        let c = canceled.clone();
        async move { c.simple_query(read).await.map(|_| ()) }
    });
    let waiting = wait_until(Duration::from_secs(5), async || {
        logged("waiting for the answer of a lead in flight") >= waits_before + 2
    })
    .await;
    let cancel = async {
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
        tokio::time::timeout(CALL_TIMEOUT, third).await
    };
    let third = match waiting {
        Some(()) => Some(cancel.await),
        None => None,
    };
    tokio::task::block_in_place(|| replica.resume()).expect("SIGCONT the replica");
    assert!(
        waiting.is_some(),
        "the two later reads should wait on the question in flight: {} waits logged",
        logged("waiting for the answer of a lead in flight") - waits_before
    );
    let err = third
        .expect("cancelled while waiting")
        .expect("the cancelled read ends while its replica is still frozen")
        .expect("read task")
        .expect_err("the cancelled read fails");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(
        (db.code().code(), db.message()),
        ("57014", "canceling statement due to user request")
    );
    for task in [first, second] {
        let row = task.await.expect("read task");
        assert_eq!(row, format!("1 {port}"), "each read sees the row, on its replica");
    }
    let served = wait_until(Duration::from_secs(5), async || {
        replica.log_contents().matches(read).count() >= reads_before + 2
    })
    .await;
    assert!(served.is_some(), "the replica's log should show the two reads");
    assert_eq!(
        replica.log_contents().matches(leading).count() - leads_before,
        1,
        "one question for the two reads that waited it out"
    );
    assert_eq!(
        replica.log_contents().matches(read).count() - reads_before,
        2,
        "the cancelled read never ran"
    );
    assert_eq!(value(&canceled, read).await, format!("1 {port}"));
}

/// A read that waited for a pooled connection sends no question of its own when another session's answer,
/// which came during the wait, shows its replica has replayed what it needs. Each replica's pool has one
/// connection, held by a read-only transaction; after a commit the replica has replayed (pgfleet not told),
/// two reads for one replica queue for its connection, both meaning to ask. The transactions end: the first
/// read asks and runs, and the second, finding that answer, runs unasked. The replica's log shows one question.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_that_waited_for_a_connection_asks_nothing_when_an_answer_came_meanwhile() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n\n\
         [routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\nreplica_affinity = \"session\"\n\n\
         [pool]\nmode = \"transaction\"\nmax_size = 1\ncheckout_timeout = \"30s\"\n\n[health]\ninterval = \"60s\"\n",
    );
    let admin = connect(&proxy.dsn("admin", "adminpw", "pgfleet")).await;
    create_table(&cluster, "CREATE TABLE queued (id int PRIMARY KEY)").await;
    let read = "SELECT count(*)::text || ' ' || inet_server_port() FROM queued WHERE id = 1";
    let (replica, group, mut rest) = three_sessions_on_one_replica(&cluster, &proxy, read, true).await;
    let port = replica.port.to_string();
    let mut group = group.into_iter();
    let other = rest.pop().expect("a session on the other replica");
    let (holder, first, second) = (
        group.next().expect("holder"),
        group.next().expect("first"),
        group.next().expect("second"),
    );
    // Both replicas' only connections are held, so the reads cannot go elsewhere.
    for c in [&holder, &other] {
        run(c, "BEGIN READ ONLY").await;
        assert!(value(c, read).await.starts_with("0 "));
    }
    log_every_statement(replica).await;
    run(&client(&proxy).await, "INSERT INTO queued VALUES (1)").await;
    replicas_caught_up(&cluster).await;
    let leading = REPLAY_LSN_CALL;
    let leads_before = replica.log_contents().matches(leading).count();
    let waiting = async |n: usize| {
        let waited = wait_until(Duration::from_secs(10), async || {
            let pools = show_rows(&admin, "SHOW POOLS").await;
            pools
                .iter()
                .filter(|r| r.get("node").is_some_and(|n| n == &replica.name))
                .filter_map(|r| r.get("waiting").and_then(|w| w.parse::<usize>().ok()))
                .sum::<usize>()
                >= n
        })
        .await;
        assert!(
            waited.is_some(),
            "{n} reads should wait for the replica's connection"
        );
    };
    let first = tokio::spawn(async move { value(&first, read).await });
    waiting(1).await;
    let second = tokio::spawn(async move { value(&second, read).await });
    waiting(2).await;
    for c in [&holder, &other] {
        run(c, "COMMIT").await;
    }
    for task in [first, second] {
        assert_eq!(task.await.expect("read task"), format!("1 {port}"));
    }
    assert_eq!(
        replica.log_contents().matches(leading).count() - leads_before,
        1,
        "one question for the two reads that queued"
    );
}

/// A read waiting up to `routing.consistency_wait` for a replica to replay a commit ends at once with 57014
/// when its client cancels it: replay is paused on both replicas, the read asks them over and over, and the
/// cancel ends it between two questions; the session then reads the row once replay resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_read_waiting_for_replicas_to_catch_up() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\nconsistency_wait = \"60s\"\n\n\
         [health]\ninterval = \"60s\"\n",
    );
    create_table(&cluster, "CREATE TABLE paused (id int PRIMARY KEY)").await;
    let reader = client(&proxy).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM paused").await, "0");
    let question = REPLAY_LSN_CALL;
    for r in &cluster.replicas {
        log_every_statement(r).await;
        direct(r, "SELECT pg_wal_replay_pause()");
    }
    let asked = || logged_on_replicas(&cluster, question);
    run(&client(&proxy).await, "INSERT INTO paused VALUES (1)").await;
    let before = asked();
    let token = reader.cancel_token();
    let reader = Arc::new(reader);
    let read = spawn_query(&reader, "SELECT count(*) FROM paused");
    let waiting = wait_until(Duration::from_secs(10), async || asked() >= before + 2).await;
    if waiting.is_some() {
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
    }
    let ended = tokio::time::timeout(CALL_TIMEOUT, read).await;
    for r in &cluster.replicas {
        direct(r, "SELECT pg_wal_replay_resume()");
    }
    assert!(
        waiting.is_some(),
        "the read never asked the paused replicas twice"
    );
    assert_canceled(
        ended,
        "the cancelled read ends long before routing.consistency_wait (60 s)",
    );
    replicas_caught_up(&cluster).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM paused").await, "1");
}

/// A read whose question to a replica hangs (both replicas frozen with SIGSTOP while the read waits up to
/// `routing.consistency_wait` for one to replay a commit) ends with 57014 as soon as its client cancels it,
/// not when the replica answers or the question times out (`pool.connect_timeout`, 30 s here); the session
/// reads the row once the replicas resume.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_read_whose_question_to_a_replica_hangs() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n\n\
         [routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\nconsistency_wait = \"60s\"\n\n\
         [pool]\nconnect_timeout = \"30s\"\n\n[health]\ninterval = \"60s\"\n",
    );
    let admin = connect(&proxy.dsn("admin", "adminpw", "pgfleet")).await;
    create_table(&cluster, "CREATE TABLE hung (id int PRIMARY KEY)").await;
    let reader = client(&proxy).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM hung").await, "0");
    run(&client(&proxy).await, "INSERT INTO hung VALUES (1)").await;
    for r in &cluster.replicas {
        tokio::task::block_in_place(|| r.pause()).expect("SIGSTOP a replica");
    }
    let token = reader.cancel_token();
    let reader = Arc::new(reader);
    let read = spawn_query(&reader, "SELECT count(*) FROM hung");
    let active = cancel_once_active(&admin, &token).await;
    let ended = tokio::time::timeout(CALL_TIMEOUT, read).await;
    for r in &cluster.replicas {
        tokio::task::block_in_place(|| r.resume()).expect("SIGCONT a replica");
    }
    assert!(active, "SHOW CLIENTS never listed the read as active");
    assert_canceled(
        ended,
        "the cancelled read ends while the replicas are still frozen",
    );
    replicas_caught_up(&cluster).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM hung").await, "1");
}

/// At `consistency = "universal"` a read first asks the primary its current position. With the primary frozen
/// (SIGSTOP) that question hangs; a cancel ends the read with 57014 at once, not when the primary answers or
/// the question times out (`pool.connect_timeout`, 30 s here), and the session reads again once the
/// primary resumes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_ends_a_read_whose_question_to_the_primary_hangs() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n\n\
         [routing]\nconsistency = \"universal\"\n\n\
         [pool]\nconnect_timeout = \"30s\"\n\n[health]\ninterval = \"60s\"\n",
    );
    let admin = connect(&proxy.dsn("admin", "adminpw", "pgfleet")).await;
    create_table(&cluster, "CREATE TABLE asked (id int PRIMARY KEY)").await;
    run(&client(&proxy).await, "INSERT INTO asked VALUES (1)").await;
    let reader = client(&proxy).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM asked").await, "1");
    tokio::task::block_in_place(|| cluster.primary.pause()).expect("SIGSTOP the primary");
    let token = reader.cancel_token();
    let reader = Arc::new(reader);
    let read = spawn_query(&reader, "SELECT count(*) FROM asked");
    let active = cancel_once_active(&admin, &token).await;
    let ended = tokio::time::timeout(CALL_TIMEOUT, read).await;
    tokio::task::block_in_place(|| cluster.primary.resume()).expect("SIGCONT the primary");
    assert!(active, "SHOW CLIENTS never listed the read as active");
    assert_canceled(ended, "the cancelled read ends while the primary is still frozen");
    assert_eq!(value(&reader, "SELECT count(*) FROM asked").await, "1");
}

/// Waits (up to 10 s) until SHOW CLIENTS lists a request as active, then sends `token`'s cancel. Whether it
/// saw one: the caller asserts that once it has resumed any node it froze.
async fn cancel_once_active(admin: &Client, token: &tokio_postgres::CancelToken) -> bool {
    let active = wait_until(Duration::from_secs(10), async || {
        show_rows(admin, "SHOW CLIENTS")
            .await
            .iter()
            .any(|r| r.get("state").is_some_and(|s| s == "active"))
    })
    .await;
    if active.is_some() {
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
    }
    active.is_some()
}

/// Runs `sql` through `client` in a task of its own, so that the test can cancel it meanwhile.
fn spawn_query(
    client: &Arc<Client>,
    sql: &'static str,
) -> tokio::task::JoinHandle<Result<(), tokio_postgres::Error>> {
    let c = client.clone();
    tokio::spawn(async move { c.simple_query(sql).await.map(|_| ()) })
}

/// Asserts that a query its client cancelled ended within the test's time limit (`in_time` says what that
/// shows) with PostgreSQL's answer to a cancel.
fn assert_canceled(
    ended: Result<
        Result<Result<(), tokio_postgres::Error>, tokio::task::JoinError>,
        tokio::time::error::Elapsed,
    >,
    in_time: &str,
) {
    let err = ended
        .expect(in_time)
        .expect("query task")
        .expect_err("the cancelled query fails");
    let db = err
        .as_db_error()
        .unwrap_or_else(|| panic!("not a server error: {err}"));
    assert_eq!(
        (db.code().code(), db.message()),
        ("57014", "canceling statement due to user request")
    );
}

/// How many times `text` appears in the replicas' logs, all together.
/// The log level that shows the positions a session asks in a round trip of its own.
const SEPARATE_ASKS_LOG: &str = "[log]\nlevel = \"info,pgfleet::frontend::session::positions=debug\"\n";

/// Positions `proxy` asked `node` in a round trip of its own, as its log shows (with `SEPARATE_ASKS_LOG`): in
/// the server's log they look like the calls that ride with requests.
fn asked_separately(proxy: &Proxy, node: &str) -> usize {
    proxy
        .log_contents()
        .lines()
        .filter(|l| {
            l.contains("position asked in a round trip of its own") && l.contains(&format!("node={node} "))
        })
        .count()
}

fn logged_on_replicas(cluster: &LocalCluster, text: &str) -> usize {
    cluster
        .replicas
        .iter()
        .map(|r| r.log_contents().matches(text).count())
        .sum()
}

/// Opens sessions through `proxy` (whose `replica_affinity = "session"` keeps each on the replica of its first
/// read, `read`, which answers "<count> <port>") until three share a replica, and with `other` until one is on
/// the other replica too. Returns that replica, its three sessions, and the sessions elsewhere.
async fn three_sessions_on_one_replica<'a>(
    cluster: &'a LocalCluster,
    proxy: &Proxy,
    read: &str,
    other: bool,
) -> (&'a NodeHandle, Vec<Client>, Vec<Client>) {
    let mut by_port: std::collections::HashMap<String, Vec<Client>> = Default::default();
    let port = loop {
        assert!(
            by_port.values().map(Vec::len).sum::<usize>() < 16,
            "no three sessions shared a replica (or, asked for, none went to the other): {:?}",
            by_port.iter().map(|(p, g)| (p, g.len())).collect::<Vec<_>>()
        );
        let c = client(proxy).await;
        let row = value(&c, read).await;
        let (_, port) = row.split_once(' ').expect("count and port");
        by_port.entry(port.to_owned()).or_default().push(c);
        let three = by_port.iter().find(|(_, g)| g.len() >= 3).map(|(p, _)| p.clone());
        if let Some(p) = three.filter(|_| !other || by_port.len() == 2) {
            break p;
        }
    };
    let replica = cluster
        .replicas
        .iter()
        .find(|r| r.port.to_string() == port)
        .unwrap_or_else(|| panic!("reads were served on port {port}, not a replica's"));
    let mut group = by_port.remove(&port).expect("the group of three");
    let rest = group
        .split_off(3)
        .into_iter()
        .chain(by_port.into_values().flatten())
        .collect();
    (replica, group, rest)
}

/// The rows of an admin console SHOW, as column name -> text.
async fn show_rows(admin: &Client, sql: &str) -> Vec<std::collections::HashMap<String, String>> {
    simple(admin, sql)
        .await
        .iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(r) => Some(
                r.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_owned(), r.get(i).unwrap_or("").to_owned()))
                    .collect(),
            ),
            _ => None,
        })
        .collect()
}

/// Five reads through `proxy`, each answered by the primary, then `marker` as a query of its own; once the marker
/// is in the primary's log, so is anything that rode with the reads. The position queries logged meanwhile.
async fn position_queries_behind_primary_reads(cluster: &LocalCluster, proxy: &Proxy, marker: &str) -> usize {
    let count = || cluster.primary.log_contents().matches(CURRENT_LSN_CALL).count();
    let before = count();
    let c = client(proxy).await;
    for _ in 0..5 {
        assert_eq!(
            value(&c, "SELECT inet_server_port()").await,
            cluster.primary.port.to_string()
        );
    }
    assert_eq!(value(&c, &format!("SELECT '{marker}'")).await, marker);
    let logged = wait_until(Duration::from_secs(5), async || {
        cluster.primary.log_contents().contains(marker)
    })
    .await;
    assert!(
        logged.is_some(),
        "the marker query never reached the primary's log"
    );
    count() - before
}

/// A read on the primary says how far it saw (a fast-path call of `pg_current_wal_lsn()` riding behind it) for
/// a later read on another node; with the primary as the fleet's only node there is no other node, and with the session's reads kept
/// on the primary (`replica_affinity = "session"`) no later read goes elsewhere: those reads carry nothing.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_on_the_primary_carries_its_position_only_when_a_later_read_may_go_elsewhere() {
    let cluster = cluster_async().await;
    log_every_statement(&cluster.primary).await;
    let count = || cluster.primary.log_contents().matches(CURRENT_LSN_CALL).count();
    let primary_port = i32::from(cluster.primary.port);

    let port = free_port();
    let lone = Proxy::start_with_config(format!(
        "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"{APP_USER}\"\npassword = \"{PASSWORD}\"\n\n\
         [[nodes]]\nname = \"primary\"\naddress = \"{}\"\nrole = \"primary\"\n\n[routing]\nprimary_reads = true\n",
        cluster.primary.address()
    ));
    assert_eq!(
        position_queries_behind_primary_reads(&cluster, &lone, "lone marker").await,
        0,
        "reads through a primary-only fleet carried a position query"
    );

    // Session affinity, the replicas serving no reads: every read of the session stays on the primary.
    let kept = Proxy::start_with_config(
        Proxy::config_for(
            &cluster,
            free_port(),
            "[routing]\nprimary_reads = true\nreplica_affinity = \"session\"\n",
        )
        .replace("role = \"replica\"\n", "role = \"replica\"\nweight = 0\n"),
    );
    assert_eq!(
        position_queries_behind_primary_reads(&cluster, &kept, "kept marker").await,
        0,
        "reads of a session kept on the primary carried a position query"
    );

    let before = count();
    let fleet = Proxy::start(
        &cluster,
        &format!(
            "[routing]\nload_balance = \"round_robin\"\nprimary_reads = true\nreplica_affinity = \"statement\"\n\n{HEALTH_TOML}"
        ),
    );
    let c = client(&fleet).await;
    let mut on_primary = 0;
    for _ in 0..6 {
        if value(&c, "SELECT inet_server_port()").await == primary_port.to_string() {
            on_primary += 1;
        }
    }
    assert!(
        on_primary > 0,
        "round robin with primary_reads sent no read to the primary"
    );
    let carried = wait_until(Duration::from_secs(5), async || count() >= before + on_primary).await;
    assert!(
        carried.is_some(),
        "{on_primary} reads on the primary of a fleet with replicas, {} position queries behind them",
        count() - before
    );
}

/// A client's cancel that reaches a read on a replica holds for the whole read: when the replica turns out
/// behind what the read must see (the question asked ahead of it in the same write says so), pgfleet would run
/// the read again on the primary, and the cancel must end that run too. Replay is paused on both replicas
/// after a commit, the read (`pg_sleep`) starts on one of them, the client cancels it there: the client gets
/// 57014 at once, and the primary never runs the read.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cancel_of_a_read_on_a_replica_found_behind_is_not_lost_when_the_read_moves_on() {
    let cluster = cluster_async().await;
    let proxy = Proxy::start(
        &cluster,
        "[routing]\nload_balance = \"round_robin\"\nconsistency = \"global\"\n\n[health]\ninterval = \"60s\"\n",
    );
    create_table(&cluster, "CREATE TABLE behind (id int PRIMARY KEY)").await;
    let reader = client(&proxy).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM behind").await, "0");
    for r in &cluster.replicas {
        direct(r, "SELECT pg_wal_replay_pause()");
    }
    log_every_statement(&cluster.primary).await;
    run(&client(&proxy).await, "INSERT INTO behind VALUES (1)").await;
    let read = "SELECT pg_sleep(5), count(*) FROM behind";
    let token = reader.cancel_token();
    let reader = Arc::new(reader);
    let started = std::time::Instant::now();
    let task = spawn_query(&reader, read);
    let running =
        "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE 'SELECT pg_sleep(5)%'";
    let on_replica = wait_until(Duration::from_secs(10), async || {
        cluster.replicas.iter().any(|r| direct(r, running) == "1")
    })
    .await;
    if on_replica.is_some() {
        token.cancel_query(tokio_postgres::NoTls).await.expect("cancel");
    }
    let ended = tokio::time::timeout(CALL_TIMEOUT, task).await;
    let took = started.elapsed();
    for r in &cluster.replicas {
        direct(r, "SELECT pg_wal_replay_resume()");
    }
    assert!(on_replica.is_some(), "the read never ran on a replica");
    assert_canceled(ended, "the cancelled read ends within the test's limit");
    assert!(
        took < Duration::from_secs(4),
        "the cancelled read took {took:?}: it ran again somewhere after the cancel"
    );
    assert_eq!(
        cluster.primary.log_contents().matches(read).count(),
        0,
        "the primary ran the cancelled read"
    );
    replicas_caught_up(&cluster).await;
    assert_eq!(value(&reader, "SELECT count(*) FROM behind").await, "1");
}
