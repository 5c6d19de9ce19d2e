//! The routing table: statements with the target, pin and transaction start the router must give them.
//! Every row runs through `classify` with the same function rules; a failure names each offending SQL.

use std::collections::HashSet;

use pgfleet::router::cache::classify_cached;
use pgfleet::router::classify::{Pin, Rule, SessionChange, Target, TxStart, classify};
use pgfleet::router::functions::FunctionRules;

use Target::{Primary, Replica};

struct Row {
    sql: String,
    target: Target,
    pin: Option<Pin>,
    tx: Option<TxStart>,
}

impl Row {
    fn pin(mut self, pin: Pin) -> Self {
        self.pin = Some(pin);
        self
    }

    fn tx(mut self, tx: TxStart) -> Self {
        self.tx = Some(tx);
        self
    }
}

fn row(sql: &str, target: Target) -> Row {
    Row {
        sql: sql.to_owned(),
        target,
        pin: None,
        tx: None,
    }
}

fn r(sql: &str) -> Row {
    row(sql, Replica)
}

fn p(sql: &str) -> Row {
    row(sql, Primary)
}

fn rules() -> FunctionRules {
    let volatile: HashSet<String> = [
        "public.bump_counter",
        "audit_log",
        "public.read_only_but_volatile",
    ]
    .iter()
    .map(|s| (*s).to_owned())
    .collect();
    let unlogged: HashSet<(String, String)> = [("public", "ucache"), ("app", "uhits"), ("app", "Mixed")]
        .iter()
        .map(|(s, n)| ((*s).to_owned(), (*n).to_owned()))
        .collect();
    FunctionRules::new(&["my_writer".to_owned()], &["read_only_but_volatile".to_owned()])
        .with_volatile(volatile)
        .with_unlogged(unlogged)
}

fn reads() -> Vec<Row> {
    vec![
        r("SELECT 1"),
        r("select * from users where id = 1"),
        r("SELECT * FROM t WHERE a = $1 AND b = $2"),
        r("VALUES (1), (2)"),
        r("TABLE users"),
        r("TABLE public.users"),
        r("(SELECT 1) UNION (SELECT 2)"),
        r("SELECT a FROM t UNION ALL SELECT b FROM u ORDER BY 1"),
        r("WITH x AS (SELECT 1) SELECT * FROM x"),
        r("WITH RECURSIVE r(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM r WHERE n < 10) SELECT * FROM r"),
        r("WITH my_cte(a) AS (SELECT 1), audit_log(b) AS (SELECT 2) SELECT * FROM my_cte, audit_log"),
        r("SELECT now()"),
        r("SELECT random()"),
        r("SELECT clock_timestamp(), gen_random_uuid()"),
        r("SELECT * FROM generate_series(1, 10)"),
        r("SELECT * FROM generate_series(1, 3) WITH ORDINALITY AS g(x, n)"),
        r("SELECT * FROM t, LATERAL generate_series(1, t.n) g"),
        r("SELECT * FROM t CROSS JOIN LATERAL unnest(t.arr) AS u(v)"),
        r("SELECT count(*) FILTER (WHERE a > 1) OVER (PARTITION BY b) FROM t"),
        r("SELECT \"NextVal\"('s')"),
        r("SELECT \"NEXTVAL\"('s')"),
        r("SELECT 'nextval(1)'"),
        r("SELECT nextval FROM t"),
        r("SELECT 'DELETE FROM x; '"),
        r("SELECT 'DELETE FROM x; ' AS a, ';INSERT INTO t VALUES (1);' AS b"),
        r("SELECT 1 -- INSERT INTO t VALUES (1)"),
        r("/* INSERT; DELETE; */ SELECT 1"),
        r("SELECT /* nextval('s') */ 1"),
        r("SELECT $$ DELETE FROM t; $$"),
        r("SELECT $tag$ nextval('s'); $$ $tag$"),
        r(r"SELECT E'\'; DELETE FROM t; --'"),
        r("SELECT 'it''s; DELETE FROM t'"),
        r("SELECT \"delete\" FROM t"),
        r("SELECT * FROM \"audit_log\""),
        r("SELECT audit_log.id FROM audit_log"),
        r("SELECT x FROM t WHERE y IN (1, 2, 3)"),
        r("SELECT read_only_but_volatile()"),
        r("SELECT public.read_only_but_volatile()"),
        r("SELECT other_schema.bump_counter()"),
        r("SELECT pg_catalog.now()"),
        r("SELECT pg_catalog.my_writer()"),
        r("SELECT txid_current_snapshot()"),
        r("SELECT json_build_object('a', 1)"),
        r("SELECT * FROM t WHERE name LIKE '%;%'"),
        r("SELECT '/* pgfleet:primary */'"),
        r("SELECT 1 /* pgfleet:primary */"),
        r("SELECT * FROM t ORDER BY a DESC LIMIT 10 OFFSET 5"),
        r("SELECT a::numeric(10,2), b::varchar(3) FROM t"),
        r("SELECT * FROM (VALUES (1)) AS v(a)"),
        r("SELECT DISTINCT ON (a) a, b FROM t"),
        r("SELECT * FROM t x WHERE x.id = ANY('{1,2}'::int[])"),
        r("SELECT * FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id)"),
        r("SELECT 1; SELECT 2"),
        r("SELECT 'a;b'; SELECT 2"),
        r("SELECT 1; -- DELETE FROM t;"),
        r("SELECT 1; /* DELETE FROM t; */ SELECT 2"),
        r("SELECT 1;;; SELECT 2;"),
        r("SHOW search_path"),
        r("EXPLAIN SELECT 1"),
        r("EXPLAIN DELETE FROM t"),
        r("EXPLAIN ANALYZE SELECT * FROM t"),
        r("EXPLAIN (ANALYZE false) DELETE FROM t"),
        r("EXPLAIN (COSTS off, FORMAT json) UPDATE t SET a = 1"),
        r("EXPLAIN SELECT nextval('s')"),
        r("EXPLAIN VERBOSE INSERT INTO t VALUES (1)"),
        r("COPY t TO STDOUT"),
        r("COPY (SELECT * FROM t) TO STDOUT WITH (FORMAT csv)"),
        r("COPY t (a, b) TO STDOUT (FORMAT binary)"),
        r("copy public.t to stdout"),
        r("FETCH NEXT FROM c"),
        r("FETCH 10 c"),
        r("MOVE LAST IN c"),
        r("CLOSE c"),
        r("CLOSE ALL"),
        r("COMMIT"),
        r("ROLLBACK"),
        r("END"),
        r("ABORT"),
        r("SAVEPOINT a"),
        r("RELEASE SAVEPOINT a"),
        r("ROLLBACK TO SAVEPOINT a"),
        r("DECLARE c CURSOR FOR SELECT * FROM t"),
        r("DECLARE c NO SCROLL CURSOR WITHOUT HOLD FOR SELECT 1"),
        r("DECLARE c BINARY INSENSITIVE SCROLL CURSOR FOR SELECT * FROM t"),
    ]
}

/// Reads a hot standby refuses: unlogged relations (see `rules`), named in any form a read can take.
fn unlogged_reads() -> Vec<Row> {
    vec![
        p("SELECT * FROM ucache"),
        p("SELECT * FROM public.ucache"),
        p("select count(*) from UCACHE"),
        p("SELECT \"ucache\".id FROM \"ucache\""),
        p("TABLE ucache"),
        p("SELECT * FROM t JOIN ucache c ON c.id = t.id"),
        p("SELECT * FROM t WHERE id IN (SELECT id FROM app.uhits)"),
        p("WITH x AS (SELECT * FROM uhits) SELECT * FROM x"),
        p("SELECT * FROM t UNION SELECT * FROM uhits"),
        r("SELECT * FROM t UNION SELECT * FROM other.uhits"),
        p("SELECT * FROM \"Mixed\""),
        p("SELECT * FROM app.\"Mixed\""),
        p("COPY ucache TO STDOUT"),
        p("COPY public.ucache (a) TO STDOUT (FORMAT csv)"),
        p("COPY (SELECT * FROM ucache) TO STDOUT"),
        p("EXPLAIN SELECT * FROM ucache"),
        p("EXPLAIN ANALYZE SELECT * FROM ucache"),
        p("SELECT * FROM ucache FOR UPDATE"),
        r("SELECT * FROM other.ucache"),
        r("SELECT * FROM \"UCACHE\""),
        r("SELECT 'ucache', $$ucache$$"),
        r("SELECT * FROM t x WHERE x.ucache = 1"),
        r("SELECT * FROM ucache_archive"),
        r("COPY other.ucache TO STDOUT"),
    ]
}

/// Questions about the server's role: the primary's answer, like the greeting's.
fn role_questions() -> Vec<Row> {
    vec![
        p("SELECT pg_is_in_recovery()"),
        p("SELECT pg_catalog.pg_is_in_recovery(), inet_server_port()"),
        p("SELECT pg_is_in_recovery(), pg_last_wal_replay_lsn()"),
        // And about its replication: a standby fails these or answers for itself.
        p("SELECT pg_last_wal_replay_lsn(), pg_is_wal_replay_paused()"),
        p("SELECT pg_current_wal_lsn()"),
        p("SELECT count(*) FROM pg_stat_replication"),
        p("SELECT slot_name FROM pg_catalog.pg_replication_slots"),
        r("SELECT * FROM other.pg_stat_replication"),
        // A sequence's state: a standby's runs ahead of the primary's.
        p("SELECT pg_sequence_last_value('s')"),
        p("SELECT last_value FROM pg_sequences"),
        p("SHOW transaction_read_only"),
        p("show TRANSACTION_READ_ONLY"),
        p("SHOW \"transaction_read_only\""),
        p("SHOW in_hot_standby"),
        p("SHOW default_transaction_read_only"),
        p("SHOW ALL"),
        p("SELECT current_setting('transaction_read_only')"),
        p("SELECT current_setting('in_hot_standby', true)"),
        p("SELECT pg_catalog.current_setting('Transaction_Read_Only')"),
        p("SELECT current_setting(E'default_transaction_read_only')"),
        p("SELECT current_setting($$in_hot_standby$$)"),
        p("SELECT 1 WHERE current_setting('transaction_read_only') = 'off'"),
        r("SELECT current_setting('work_mem')"),
        r("SELECT current_setting($1)"),
        r("SELECT other.pg_is_in_recovery()"),
        r("SELECT 'pg_is_in_recovery()'"),
        r("SHOW transaction_isolation"),
        r("EXPLAIN SELECT pg_is_in_recovery()"),
        // After a BEGIN in the same request, the question runs in that transaction, wherever it goes.
        r("BEGIN READ ONLY; SELECT pg_is_in_recovery()").tx(TxStart::ReadOnly),
        p("BEGIN; SHOW transaction_read_only").tx(TxStart::ReadWrite),
    ]
}

fn function_writes() -> Vec<Row> {
    vec![
        p("SELECT nextval('s')"),
        p("SELECT NEXTVAL('s')"),
        p("SELECT \"nextval\"('s')"),
        p("SELECT pg_catalog.nextval('s')"),
        p("SELECT pg_catalog . nextval ('s')"),
        p("SELECT * FROM t WHERE id = (SELECT nextval('s'))"),
        p("WITH n AS (SELECT nextval('s') AS v) SELECT v FROM n"),
        p("SELECT a FROM t ORDER BY nextval('s')"),
        p("VALUES (nextval('s'))"),
        p("VALUES (1, bump_counter())"),
        p("SELECT currval('s')"),
        p("SELECT lastval()"),
        p("SELECT setval('s', 10)"),
        p("SELECT coalesce(nullif(abs(nextval('s')), 0), 1)"),
        p("SELECT nextval/* c */('s')"),
        p("SELECT (SELECT max(id) FROM t) + nextval ('s')"),
        p("SELECT * FROM t WHERE id = ANY (ARRAY(SELECT nextval('s')))"),
        p("SELECT array_agg(x ORDER BY nextval('s')) FROM t"),
        p("SELECT DISTINCT ON (a) nextval('s') FROM t"),
        p("SELECT txid_current()"),
        p("SELECT pg_current_xact_id()"),
        p("SELECT set_config('search_path', 'x', false)"),
        p("SELECT pg_notify('chan', 'x')"),
        p("SELECT lo_import('/tmp/x')"),
        p("SELECT lo_unlink(1234)"),
        p("SELECT loread(lo_open(1234, 262144), 10)"),
        p("SELECT pg_terminate_backend(123)"),
        p("SELECT pg_cancel_backend(123)"),
        // The session's identity: the pid of its primary connection, which pg_cancel_backend finds.
        p("SELECT pg_backend_pid()"),
        p("SELECT pg_reload_conf()"),
        p("SELECT pg_switch_wal()"),
        p("SELECT pg_create_logical_replication_slot('s', 'pgoutput')"),
        p("SELECT pg_drop_replication_slot('s')"),
        p("SELECT pg_stat_reset()"),
        p("SELECT pg_stat_reset_shared('bgwriter')"),
        p("SELECT pg_backup_start('label')"),
        p("SELECT dblink_exec('conn', 'DELETE FROM t')"),
        p("SELECT pg_advisory_lock(42)").pin(Pin::AdvisoryLock),
        p("SELECT pg_try_advisory_lock(1)").pin(Pin::AdvisoryLock),
        p("SELECT pg_advisory_lock_shared(1, 2)").pin(Pin::AdvisoryLock),
        p("SELECT pg_catalog.pg_advisory_lock(1)").pin(Pin::AdvisoryLock),
        p("SELECT * FROM jobs WHERE pg_try_advisory_lock_shared(id) LIMIT 1").pin(Pin::AdvisoryLock),
        p("SELECT pg_advisory_xact_lock(42)"),
        p("SELECT pg_try_advisory_xact_lock(1)"),
        p("SELECT pg_advisory_unlock(42)"),
        p("SELECT pg_advisory_unlock_all()"),
        p("SELECT bump_counter()"),
        p("SELECT public.bump_counter()"),
        p("SELECT \"bump_counter\"()"),
        p("SELECT audit_log('x')"),
        p("SELECT any_schema.audit_log('x')"),
        p("SELECT my_writer()"),
        p("SELECT MY_WRITER(1)"),
        p("SELECT * FROM t WHERE audit_log(t.id)"),
        p("SELECT * FROM audit_log()"),
        p("SELECT * FROM t CROSS JOIN LATERAL bump_counter(t.id)"),
        p("SELECT * FROM t JOIN LATERAL (SELECT my_writer(t.id)) x ON true"),
        p("SELECT CASE WHEN a > 1 THEN bump_counter() ELSE 0 END FROM t"),
        p("SELECT a FROM t GROUP BY a HAVING count(*) > my_writer()"),
        p("SELECT x FROM t WHERE EXISTS (SELECT 1 FROM u WHERE u.id = t.id AND audit_log(u.id))"),
        p("SELECT 1 UNION SELECT bump_counter()"),
        p("DECLARE c CURSOR FOR SELECT nextval('s')"),
        p("COPY (SELECT nextval('s')) TO STDOUT"),
        p("EXPLAIN ANALYZE SELECT nextval('s')"),
    ]
}

fn writes() -> Vec<Row> {
    vec![
        p("INSERT INTO t VALUES (1)"),
        p("insert into t select * from s"),
        p("INSERT INTO t (a) SELECT a FROM s WHERE a > 1 RETURNING *"),
        p("UPDATE t SET a = 1"),
        p("DELETE FROM t"),
        p("MERGE INTO t USING s ON t.a = s.a WHEN MATCHED THEN DELETE"),
        p("TRUNCATE t"),
        p("TRUNCATE TABLE t, u RESTART IDENTITY CASCADE"),
        p("WITH x AS (SELECT 1) INSERT INTO t SELECT * FROM x"),
        p("WITH x AS (SELECT 1) DELETE FROM t WHERE a IN (SELECT * FROM x)"),
        p("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d"),
        p("WITH a AS (SELECT 1), b AS (UPDATE t SET x = 1 RETURNING *) SELECT * FROM b"),
        p("WITH x AS MATERIALIZED (INSERT INTO t VALUES (1) RETURNING *) SELECT * FROM x"),
        p(
            "WITH outer_cte AS (WITH inner_cte AS (DELETE FROM t RETURNING id) SELECT id FROM inner_cte) SELECT * FROM outer_cte",
        ),
        p("SELECT * FROM t WHERE a IN (SELECT b FROM u FOR UPDATE)"),
        p("SELECT * FROM t FOR UPDATE"),
        p("select * from t for update of t"),
        p("SELECT * FROM t FOR NO KEY UPDATE SKIP LOCKED"),
        p("SELECT * FROM t FOR SHARE"),
        p("SELECT * FROM t FOR KEY SHARE NOWAIT"),
        p("SELECT 1 UNION SELECT 2 FOR UPDATE"),
        p("WITH x AS (SELECT * FROM t FOR UPDATE) SELECT * FROM x"),
        p("SELECT * INTO new_t FROM t"),
        p("SELECT * INTO TEMP tmp FROM t").pin(Pin::TempTable),
        p("SELECT * INTO TEMPORARY TABLE tmp FROM t").pin(Pin::TempTable),
        p("SELECT 1 AS a INTO pg_temp.x").pin(Pin::TempTable),
        p("SELECT * INTO UNLOGGED u FROM t"),
        p("EXPLAIN ANALYZE DELETE FROM t"),
        p("EXPLAIN (ANALYZE, BUFFERS) UPDATE t SET a = 1"),
        p("EXPLAIN ANALYSE VERBOSE INSERT INTO t VALUES (1)"),
        p("EXPLAIN (ANALYZE true, FORMAT json) DELETE FROM t"),
        p("EXPLAIN ANALYZE SELECT * FROM t FOR UPDATE"),
        p("COPY (DELETE FROM t RETURNING *) TO STDOUT"),
        p("COPY t FROM STDIN"),
        p("COPY t (a, b) FROM STDIN WITH (FORMAT csv, HEADER true)"),
        p("copy public.t from '/tmp/x.csv'"),
        p("COPY t TO '/tmp/out.csv'"),
        p("COPY t TO PROGRAM 'gzip > /tmp/x.gz'"),
        p("CALL my_proc(1)"),
        p("DO $$ BEGIN INSERT INTO t VALUES (1); END $$"),
        p("DO LANGUAGE plpgsql $$ BEGIN PERFORM 1; END $$"),
        p("LOCK TABLE t IN ACCESS EXCLUSIVE MODE"),
        p("LOCK t"),
        p("VACUUM"),
        p("VACUUM (VERBOSE, ANALYZE) t"),
        p("VACUUM FULL t"),
        p("ANALYZE t"),
        p("CLUSTER t USING idx"),
        p("REINDEX TABLE t"),
        p("REFRESH MATERIALIZED VIEW CONCURRENTLY mv"),
        p("CHECKPOINT"),
        p("GRANT SELECT ON t TO bob"),
        p("REVOKE ALL ON t FROM bob"),
        p("LISTEN chan").pin(Pin::Listen),
        p("NOTIFY chan, 'x'"),
        p("UNLISTEN *"),
        p("PREPARE TRANSACTION 'gx'"),
        p("COMMIT PREPARED 'gx'"),
        p("ROLLBACK PREPARED 'gx'"),
        p("PREPARE q (int) AS SELECT $1").pin(Pin::SqlPrepare),
        p("PREPARE q AS SELECT 1").pin(Pin::SqlPrepare),
        p("EXECUTE q(1)"),
        p("DEALLOCATE q"),
        p("DEALLOCATE ALL"),
        p("DECLARE c CURSOR WITH HOLD FOR SELECT 1").pin(Pin::HoldCursor),
        p("DECLARE c SCROLL CURSOR WITH HOLD FOR SELECT * FROM t").pin(Pin::HoldCursor),
    ]
}

fn ddl() -> Vec<Row> {
    vec![
        p("CREATE TABLE t (a int)"),
        p("CREATE TABLE t (id bigint DEFAULT nextval('s'))"),
        p("CREATE TABLE IF NOT EXISTS t (a int)"),
        p("CREATE TEMP TABLE tmp (a int)").pin(Pin::TempTable),
        p("CREATE TEMPORARY TABLE tmp AS SELECT 1").pin(Pin::TempTable),
        p("CREATE GLOBAL TEMPORARY TABLE tmp (a int)").pin(Pin::TempTable),
        p("create local temp table tmp (a int) on commit drop").pin(Pin::TempTable),
        p("CREATE UNLOGGED TABLE u (a int)"),
        p("CREATE TABLE pg_temp.x (a int)").pin(Pin::TempTable),
        p("CREATE TEMP VIEW v AS SELECT 1").pin(Pin::TempTable),
        p("CREATE TEMP SEQUENCE s").pin(Pin::TempTable),
        p("CREATE FUNCTION pg_temp.f() RETURNS int AS 'select 1' LANGUAGE sql").pin(Pin::TempTable),
        p("CREATE INDEX CONCURRENTLY i ON t (a)"),
        p("CREATE UNIQUE INDEX i ON t (lower(a))"),
        p("ALTER TABLE t ADD COLUMN b int"),
        p("DROP TABLE t"),
        p("DROP TABLE IF EXISTS pg_temp_3.x"),
        p("COMMENT ON TABLE t IS 'INSERT; DELETE'"),
        p("CREATE FUNCTION f() RETURNS bigint AS $$ SELECT nextval('s') $$ LANGUAGE sql"),
        p(
            "CREATE OR REPLACE FUNCTION f() RETURNS int LANGUAGE plpgsql AS $body$ BEGIN DELETE FROM t; RETURN 1; END $body$",
        ),
        p("CREATE FUNCTION f() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END"),
        p("CREATE EXTENSION pgcrypto"),
        p("ALTER SYSTEM SET work_mem = '1MB'"),
        p("SECURITY LABEL ON TABLE t IS 'x'"),
        p("CREATE SCHEMA app"),
        p("CREATE VIEW v AS SELECT 1"),
        p("CREATE MATERIALIZED VIEW mv AS SELECT * FROM t"),
    ]
}

fn transactions() -> Vec<Row> {
    use TxStart::{ReadOnly, ReadWrite};
    vec![
        p("BEGIN").tx(ReadWrite),
        p("BEGIN WORK").tx(ReadWrite),
        p("BEGIN TRANSACTION").tx(ReadWrite),
        p("START TRANSACTION").tx(ReadWrite),
        p("BEGIN READ WRITE").tx(ReadWrite),
        p("START TRANSACTION ISOLATION LEVEL READ COMMITTED").tx(ReadWrite),
        r("BEGIN READ ONLY").tx(ReadOnly),
        r("begin read only").tx(ReadOnly),
        r("BEGIN TRANSACTION READ ONLY").tx(ReadOnly),
        // A hot standby refuses serializable isolation, read-only or not.
        p("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE").tx(ReadWrite),
        r("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY").tx(ReadOnly),
        p("START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE").tx(ReadWrite),
        p("BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE").tx(ReadWrite),
        r("BEGIN; SET TRANSACTION READ ONLY").tx(ReadOnly),
        r("BEGIN; SET TRANSACTION READ ONLY; SELECT * FROM t").tx(ReadOnly),
        r("BEGIN READ ONLY; SELECT * FROM t; COMMIT").tx(ReadOnly),
        p("BEGIN; SELECT 1").tx(ReadWrite),
        p("BEGIN; SELECT 1; SET TRANSACTION READ ONLY").tx(ReadWrite),
        p("BEGIN READ ONLY; INSERT INTO t VALUES (1)").tx(ReadOnly),
        p("BEGIN; INSERT INTO t VALUES (1); COMMIT").tx(ReadWrite),
        p("BEGIN READ ONLY; SELECT pg_advisory_lock(1)")
            .tx(ReadOnly)
            .pin(Pin::AdvisoryLock),
        r("SET TRANSACTION READ ONLY"),
        p("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE"),
        r("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ"),
        r("SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"),
        p("BEGIN ISOLATION LEVEL BANANA"),
    ]
}

fn settings() -> Vec<Row> {
    vec![
        r("SET search_path TO app, public"),
        r("SET search_path = \"$user\", public"),
        r("SET LOCAL statement_timeout = '5s'"),
        r("SET SESSION work_mem TO '64MB'"),
        r("SET TIME ZONE 'UTC'"),
        r("SET TIME ZONE LOCAL"),
        r("SET NAMES 'UTF8'"),
        r("SET ROLE reporting"),
        r("RESET ROLE"),
        r("SET SESSION AUTHORIZATION bob"),
        r("RESET ALL"),
        r("RESET search_path"),
        r("DISCARD ALL"),
        r("DISCARD PLANS"),
        r("SET application_name = 'x;y'"),
        r("SET my.setting = 'z'"),
        r("SET extra_float_digits=-1"),
        r("SET CONSTRAINTS ALL DEFERRED"),
        p("SET bogus"),
        p("SET search_path TO a; INSERT INTO t VALUES (1)"),
    ]
}

fn mixed_hints_and_garbage() -> Vec<Row> {
    let huge_in = format!(
        "SELECT * FROM t WHERE id IN ({})",
        (0..5000).map(|i| i.to_string()).collect::<Vec<_>>().join(", ")
    );
    let huge_in_write = format!("{huge_in} AND audit_log(id)");
    vec![
        r(&huge_in),
        p(&huge_in_write),
        p("SELECT 1; INSERT INTO t VALUES (1)"),
        p("INSERT INTO t VALUES (1); SELECT 1"),
        p("SELECT 1; SELECT nextval('s')"),
        p("SELECT 1; LISTEN chan").pin(Pin::Listen),
        p("SELECT 1; CREATE TEMP TABLE x (a int); SELECT pg_advisory_lock(1)").pin(Pin::TempTable),
        p("SELECT 'x'; UPDATE t SET a = 'DELETE FROM x; '; SELECT 2"),
        p("/* pgfleet:primary */ SELECT 1"),
        r("/*pgfleet:replica*/ SELECT nextval('s')"),
        p("/* PGFLEET : PRIMARY */ SELECT 1"),
        p("-- note\n/* pgfleet:primary */ SELECT 1"),
        r("/* pgfleet:replica */ CREATE TEMP TABLE x (a int)").pin(Pin::TempTable),
        r("/* pgfleet:replica */ BEGIN").tx(TxStart::ReadWrite),
        r(""),
        r("   "),
        r(";;;"),
        r("-- just a comment"),
        r("/* x */"),
        p("SELEC 1"),
        p("hello world"),
        p("SELECT 'unterminated"),
        p("SELECT * FROM t WHERE"),
        p(")"),
        p("SELECT (1"),
        p("SELECT $$ unterminated"),
        p("/* unterminated comment"),
        p("\u{1}"),
        p("42"),
    ]
}

#[test]
fn routing_table() {
    let rules = rules();
    let rows: Vec<Row> = [
        reads(),
        unlogged_reads(),
        role_questions(),
        function_writes(),
        writes(),
        ddl(),
        transactions(),
        settings(),
        mixed_hints_and_garbage(),
    ]
    .into_iter()
    .flatten()
    .collect();
    assert!(rows.len() >= 170, "only {} rows", rows.len());
    let mut failures = Vec::new();
    for row in &rows {
        let d = classify(&row.sql, &rules);
        let sql: String = row.sql.chars().take(120).collect();
        if d.target != row.target {
            failures.push(format!(
                "{sql:?}: target {:?}, expected {:?} ({})",
                d.target, row.target, d.rule
            ));
        }
        if d.pin != row.pin {
            failures.push(format!("{sql:?}: pin {:?}, expected {:?}", d.pin, row.pin));
        }
        if d.tx_start != row.tx {
            failures.push(format!(
                "{sql:?}: tx_start {:?}, expected {:?}",
                d.tx_start, row.tx
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} rows failed:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
    // The fast path (decisions remembered per statement shape) must decide exactly as the classifier, for
    // every row, also when a row's constants change after its shape was cached.
    let shared = std::sync::Arc::new(rules);
    for row in &rows {
        let fresh = classify(&row.sql, &shared);
        for _ in 0..2 {
            assert_eq!(
                *classify_cached(&row.sql, &shared),
                fresh,
                "cached decision differs for {:?}",
                row.sql
            );
        }
        let varied = row.sql.replace('1', "7").replace("'a'", "'zz'");
        assert_eq!(
            *classify_cached(&varied, &shared),
            classify(&varied, &shared),
            "cached decision differs for {varied:?} (after {:?})",
            row.sql
        );
    }
}

#[test]
fn ddl_flag() {
    let rules = rules();
    for sql in [
        "CREATE TABLE t (a int)",
        "ALTER FUNCTION f() VOLATILE",
        "DROP FUNCTION f",
        "SELECT 1; COMMENT ON TABLE t IS 'x'",
        "DO $$ BEGIN END $$",
    ] {
        assert!(classify(sql, &rules).ddl, "{sql} should be DDL");
    }
    for sql in [
        "SELECT 1",
        "INSERT INTO t VALUES (1)",
        "TRUNCATE t",
        "VACUUM",
        "SET search_path TO a",
        "GRANT SELECT ON t TO bob",
    ] {
        assert!(!classify(sql, &rules).ddl, "{sql} should not be DDL");
    }
}

#[test]
fn session_changes_in_order() {
    let d = classify(
        "SET search_path TO a; SET LOCAL work_mem = '1MB'; RESET TIME ZONE; SELECT 1; DISCARD ALL; SET ROLE bob",
        &rules(),
    );
    assert_eq!(
        d.changes,
        vec![
            SessionChange::Set {
                name: "search_path".into(),
                statement: "SET search_path TO a".into()
            },
            SessionChange::Reset {
                name: "timezone".into(),
                statement: "RESET TIME ZONE".into()
            },
            SessionChange::ResetAll,
            SessionChange::Set {
                name: "role".into(),
                statement: "SET ROLE bob".into()
            },
        ]
    );
    assert_eq!(d.target, Replica);
    // Settings are still recorded when a hint decides the target or the request writes.
    let d = classify(
        "/* pgfleet:primary */ SET statement_timeout = 0; INSERT INTO t VALUES (1)",
        &rules(),
    );
    assert_eq!((d.target, d.rule.clone()), (Primary, Rule::Hint));
    assert_eq!(d.changes.len(), 1);
}

#[test]
fn reasons_for_logs() {
    let rules = rules();
    let reason = |sql: &str| classify(sql, &rules).rule.to_string();
    assert_eq!(reason("SELECT 1"), "read");
    assert_eq!(reason("INSERT INTO t VALUES (1)"), "INSERT writes");
    assert_eq!(
        reason("SELECT x FROM t WHERE nextval('s') > 0"),
        "calls nextval() which may write"
    );
    assert_eq!(
        reason("SELECT public.bump_counter()"),
        "calls public.bump_counter() which may write"
    );
    assert_eq!(reason("SELEC 1"), "does not parse: sent to the primary");
    assert_eq!(
        reason("SELECT * FROM ucache"),
        "reads an unlogged table: sent to the primary"
    );
    assert_eq!(
        reason("SHOW transaction_read_only"),
        "asks the server's role: answered by the primary"
    );
    // A write in the same request names the reason: a role question alone may fall back to a replica.
    assert_eq!(
        reason("SELECT pg_is_in_recovery(); INSERT INTO t VALUES (1)"),
        "INSERT writes"
    );
}
