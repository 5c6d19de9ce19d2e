//! Unit tests of statement classification, through [`classify`] with a fixed set of function rules.

use super::*;

mod session_changes;

fn rules() -> FunctionRules {
    FunctionRules::new(&["my_writer".to_owned()], &["read_only_but_volatile".to_owned()]).with_volatile(
        ["public.bump_counter", "audit_log"]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
    )
}

fn decide(sql: &str) -> Decision {
    classify(sql, &rules())
}

#[test]
fn statements_over_the_limit_go_to_the_primary_unparsed() {
    let big = "x".repeat(MAX_CLASSIFIED_STATEMENT);
    let just_under = format!("SELECT '{}'", &big[..MAX_CLASSIFIED_STATEMENT - 9]);
    assert_eq!(just_under.len(), MAX_CLASSIFIED_STATEMENT);
    assert_eq!(decide(&just_under).target, Target::Replica);
    // (text, pin, ddl)
    let cases: [(String, Option<Pin>, bool); 6] = [
        (format!("SELECT '{big}'"), None, false),
        (format!("INSERT INTO t VALUES ('{big}')"), None, false),
        (
            format!("/* note */ CREATE TEMP TABLE t AS SELECT '{big}' AS x"),
            Some(Pin::TempTable),
            true,
        ),
        (
            format!("create global temporary table t AS SELECT '{big}' AS x"),
            Some(Pin::TempTable),
            true,
        ),
        (format!("CREATE TABLE t AS SELECT '{big}' AS x"), None, true),
        (format!("DO $$ BEGIN PERFORM '{big}'; END $$"), None, true),
    ];
    for (sql, pin, ddl) in cases {
        let d = decide(&sql);
        let head = &sql[..30];
        assert_eq!((d.target, &d.rule), (Target::Primary, &Rule::TooLarge), "{head}");
        assert_eq!((d.pin, d.ddl), (pin, ddl), "{head}");
    }
    // Only the large statement of a string goes unparsed: the others keep their consequences.
    let d = decide(&format!(
        "SET search_path = app; INSERT INTO t VALUES ('{big}'); LISTEN ch"
    ));
    assert_eq!(d.target, Target::Primary);
    assert_eq!(d.changes.len(), 1);
    assert_eq!(d.pin, Some(Pin::Listen));
}

#[test]
fn rules_display_short_reasons() {
    assert_eq!(Rule::Write("INSERT").to_string(), "INSERT writes");
    for rule in [
        Rule::Read,
        Rule::Hint,
        Rule::Unparsed,
        Rule::TooDeep,
        Rule::Write("INSERT"),
        Rule::Write("UPDATE"),
        Rule::Write("DELETE"),
        Rule::Write("MERGE"),
        Rule::Write("TRUNCATE"),
        Rule::Write("COPY FROM"),
        Rule::Write("OTHER"),
        Rule::Ddl,
        Rule::ForUpdate,
        Rule::SelectInto,
        Rule::ModifyingCte,
        Rule::WriteFunction("f".to_owned()),
        Rule::UnloggedRelation,
        Rule::ServerRole,
        Rule::TransactionBegin,
        Rule::ReadOnlyTransaction,
        Rule::TransactionControl("COMMIT"),
        Rule::Cursor("FETCH"),
        Rule::SessionState("SET"),
        Rule::Utility("VACUUM"),
        Rule::TooLarge,
    ] {
        assert_eq!(rule.label(), rule.to_string());
    }
    assert_eq!(
        Rule::WriteFunction("nextval".into()).to_string(),
        "calls nextval() which may write"
    );
    assert_eq!(Rule::Unparsed.to_string(), "does not parse: sent to the primary");
    assert_eq!(Rule::Read.to_string(), "read");
}

#[test]
fn reasons_name_the_cause() {
    assert_eq!(
        decide("SELECT nextval('s')").rule,
        Rule::WriteFunction("nextval".into())
    );
    assert_eq!(
        decide("SELECT public.bump_counter()").rule,
        Rule::WriteFunction("public.bump_counter".into())
    );
    assert_eq!(decide("INSERT INTO t VALUES (1)").rule, Rule::Write("INSERT"));
    assert_eq!(
        decide("WITH x AS (SELECT 1) DELETE FROM t").rule,
        Rule::Write("DELETE")
    );
    assert_eq!(
        decide("WITH d AS (DELETE FROM t RETURNING *) SELECT * FROM d").rule,
        Rule::ModifyingCte
    );
    assert_eq!(decide("SELECT * FROM t FOR NO KEY UPDATE").rule, Rule::ForUpdate);
    assert_eq!(decide("SELECT 1 INTO x").rule, Rule::SelectInto);
    assert_eq!(decide("CREATE TABLE t (a int)").rule, Rule::Ddl);
    assert_eq!(decide("VACUUM t").rule, Rule::Utility("VACUUM"));
    assert_eq!(decide("SELEC 1").rule, Rule::Unparsed);
    assert_eq!(decide("BEGIN").rule, Rule::TransactionBegin);
    assert_eq!(
        decide("BEGIN READ ONLY; SELECT 1").rule,
        Rule::ReadOnlyTransaction
    );
    assert_eq!(decide("/* pgfleet:replica */ DELETE FROM t").rule, Rule::Hint);
    assert_eq!(decide("").rule, Rule::Read);
    assert_eq!(decide("SET x = 1; SELECT 1").rule, Rule::Read);
    assert_eq!(decide("COMMIT").rule, Rule::TransactionControl("COMMIT"));
    assert_eq!(
        decide("SELECT 1; INSERT INTO t VALUES (1); DELETE FROM t").rule,
        Rule::Write("INSERT")
    );
}

#[test]
fn hostile_nesting_stays_cheap_and_bounded() {
    let explains = format!("{}SELECT 1", "EXPLAIN ".repeat(100_000));
    assert_eq!(decide(&explains).target, Target::Primary);
    assert_eq!(decide("EXPLAIN EXPLAIN SELECT 1").target, Target::Replica);
    let copies = format!(
        "{}SELECT 1{} TO STDOUT",
        "COPY (".repeat(50_000),
        ") TO STDOUT".repeat(50_000)
    );
    assert_eq!(decide(&copies).target, Target::Primary);
    let calls = format!("SELECT {}1{}", "abs(".repeat(100_000), ")".repeat(100_000));
    let started = std::time::Instant::now();
    let d = decide(&calls);
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "took {:?}",
        started.elapsed()
    );
    // Too deep to hand to sqlparser at all: safe, on the primary.
    assert_eq!((d.target, d.rule), (Target::Primary, Rule::TooDeep));
    // Deep enough for sqlparser's own recursion limit, not for the depth bound: refused by the parser.
    let calls = format!("SELECT {}1{}", "abs(".repeat(100), ")".repeat(100));
    assert_eq!(decide(&calls).rule, Rule::Unparsed);
    let writer = format!("SELECT {}nextval('s'){}", "abs(".repeat(20), ")".repeat(20));
    assert_eq!(decide(&writer).rule, Rule::WriteFunction("nextval".into()));
}

type MakeStatement = fn(usize) -> String;

/// Statements of each shape that sqlparser turns into a deep tree, built with `n` terms.
const DEEP_SHAPES: &[(&str, MakeStatement)] = &[
    ("binary chain", |n| format!("SELECT {}1", "1+".repeat(n))),
    ("cast chain", |n| format!("SELECT 1{}", "::int".repeat(n))),
    ("OR chain", |n| {
        let terms: Vec<String> = (0..n).map(|i| format!("aid = {i}")).collect();
        format!("SELECT * FROM t WHERE {}", terms.join(" OR "))
    }),
    ("AND chain", |n| {
        format!("SELECT * FROM t WHERE {}true", "a AND ".repeat(n))
    }),
    ("nested parentheses", |n| {
        format!("SELECT {}1{}", "(".repeat(n), ")".repeat(n))
    }),
    ("nested subqueries", |n| {
        format!("SELECT {}1{}", "(SELECT ".repeat(n), ")".repeat(n))
    }),
    ("unary minus chain", |n| format!("SELECT {}1", "- ".repeat(n))),
    ("nested CASE", |n| {
        format!("SELECT {}1{}", "CASE WHEN true THEN ".repeat(n), " END".repeat(n))
    }),
    ("array subscripts", |n| {
        format!("SELECT a{} FROM t", "[1]".repeat(n))
    }),
    ("UNION chain", |n| {
        format!("SELECT 1{}", " UNION SELECT 1".repeat(n))
    }),
    ("IS NULL chain", |n| format!("SELECT 1{}", " IS NULL".repeat(n))),
    ("JSON operators", |n| {
        format!("SELECT j{} FROM t", " -> 'k'".repeat(n))
    }),
    ("COLLATE chain", |n| {
        format!("SELECT 'a'{}", " COLLATE \"C\"".repeat(n))
    }),
    ("mixed groups and chains", |n| {
        format!("SELECT {}1", "(1 + 1) * ".repeat(n))
    }),
];

#[test]
fn deep_statements_go_to_the_primary_unparsed() {
    for (shape, make) in DEEP_SHAPES {
        // A few terms of each shape are an ordinary read.
        let shallow = decide(&make(10));
        assert_eq!(
            (shallow.target, &shallow.rule),
            (Target::Replica, &Rule::Read),
            "{shape}"
        );
        for terms in [50_000, 200_000] {
            let text = make(terms);
            let deep = decide(&text);
            // Past 1 MiB the size limit answers first, before any token is kept.
            let rule = if text.len() > MAX_CLASSIFIED_STATEMENT {
                Rule::TooLarge
            } else {
                Rule::TooDeep
            };
            assert_eq!(
                (deep.target, &deep.rule),
                (Target::Primary, &rule),
                "{shape} of {terms} terms"
            );
        }
    }
}

#[test]
fn deep_statements_keep_their_lexical_findings() {
    let chain = "1+".repeat(100_000);
    // A write is never offered to a replica, parsed or not.
    for (sql, target, rule) in [
        (
            format!("INSERT INTO t VALUES ({chain}1)"),
            Target::Primary,
            Rule::Write("INSERT"),
        ),
        // Only the parse would name the DELETE; unparsed, it goes to the primary all the same.
        (
            format!("WITH x AS (SELECT 1) DELETE FROM t WHERE a = {chain}1"),
            Target::Primary,
            Rule::TooDeep,
        ),
        (
            format!("SELECT nextval('s') + {chain}1"),
            Target::Primary,
            Rule::WriteFunction("nextval".into()),
        ),
        (
            format!("SELECT * FROM t WHERE a = {chain}1 FOR UPDATE"),
            Target::Primary,
            Rule::ForUpdate,
        ),
        (
            format!("SELECT 1; SELECT {chain}1"),
            Target::Primary,
            Rule::TooDeep,
        ),
        (format!("EXPLAIN SELECT {chain}1"), Target::Primary, Rule::TooDeep),
        (
            format!("/* pgfleet:replica */ SELECT {chain}1"),
            Target::Replica,
            Rule::Hint,
        ),
    ] {
        let d = decide(&sql);
        assert_eq!((d.target, &d.rule), (target, &rule), "{}", &sql[..40]);
    }
    let locked = decide(&format!("SELECT pg_advisory_lock(1) + {chain}1"));
    assert_eq!(
        (locked.rule, locked.pin),
        (
            Rule::WriteFunction("pg_advisory_lock".into()),
            Some(Pin::AdvisoryLock)
        )
    );
}

#[test]
fn read_only_begin_variants() {
    for sql in [
        "BEGIN READ ONLY",
        "begin transaction read only",
        "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY DEFERRABLE",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL REPEATABLE READ",
        "BEGIN; SET TRANSACTION READ ONLY",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL READ COMMITTED; SET TRANSACTION READ ONLY; SELECT 1",
    ] {
        let d = decide(sql);
        assert_eq!(
            (d.target, d.tx_start),
            (Target::Replica, Some(TxStart::ReadOnly)),
            "{sql}"
        );
    }
    for sql in [
        "BEGIN",
        "START TRANSACTION",
        "BEGIN READ ONLY, READ WRITE",
        "BEGIN; SELECT 1; SET TRANSACTION READ ONLY",
    ] {
        let d = decide(sql);
        assert_eq!(
            (d.target, d.tx_start),
            (Target::Primary, Some(TxStart::ReadWrite)),
            "{sql}"
        );
    }
    assert_eq!(decide("BEGIN READ BANANA").tx_start, None);
    // A hot standby refuses serializable isolation, read-only or not.
    for sql in [
        "BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY DEFERRABLE",
        "begin transaction isolation level serializable",
        "START TRANSACTION READ ONLY, ISOLATION LEVEL SERIALIZABLE",
        "BEGIN READ ONLY; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE",
        "BEGIN; SET TRANSACTION ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY; SELECT 1",
        "BEGIN ISOLATION LEVEL SERIALIZABLE; SET TRANSACTION READ ONLY",
        "BEGIN READ ONLY; SELECT 1; COMMIT; BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY",
    ] {
        let d = decide(sql);
        assert_eq!(
            (d.target, d.tx_start, d.rule),
            (
                Target::Primary,
                Some(TxStart::ReadWrite),
                Rule::SerializableTransaction
            ),
            "{sql}"
        );
    }
    // Outside a transaction the primary only warns.
    let d = decide("SET TRANSACTION ISOLATION LEVEL SERIALIZABLE");
    assert_eq!(
        (d.target, d.rule),
        (Target::Primary, Rule::SerializableTransaction)
    );
    assert_eq!(
        decide("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ").target,
        Target::Replica
    );
    // The session's default is the session's to read (`Settings::serializable`): a change like any other.
    assert_eq!(
        decide("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE").target,
        Target::Replica
    );
}

#[test]
fn reads_of_a_sequences_state_go_to_the_primary() {
    let rules = rules().with_sequences(
        [("public".to_owned(), "orders_id_seq".to_owned())]
            .into_iter()
            .collect(),
    );
    // (sql, target, rule)
    let cases = [
        (
            "SELECT last_value FROM orders_id_seq",
            Target::Primary,
            Rule::SequenceState,
        ),
        (
            "SELECT last_value, is_called FROM public.orders_id_seq",
            Target::Primary,
            Rule::SequenceState,
        ),
        ("SELECT * FROM other.orders_id_seq", Target::Replica, Rule::Read),
        (
            "SELECT pg_sequence_last_value('orders_id_seq')",
            Target::Primary,
            Rule::SequenceState,
        ),
        (
            "SELECT last_value FROM pg_sequences WHERE sequencename = 'x'",
            Target::Primary,
            Rule::SequenceState,
        ),
        // The name in a string constant is not a read of it, and the sequence's use stays a write.
        ("SELECT 'orders_id_seq'", Target::Replica, Rule::Read),
        (
            "SELECT nextval('orders_id_seq')",
            Target::Primary,
            Rule::WriteFunction("nextval".to_owned()),
        ),
        ("SELECT * FROM orders", Target::Replica, Rule::Read),
    ];
    for (sql, target, rule) in cases {
        let d = classify(sql, &rules);
        assert_eq!((d.target, d.rule), (target, rule), "{sql}");
    }
    // Without sequences in the catalog, the view and the function still count.
    assert_eq!(
        classify("SELECT * FROM pg_sequences", &super::FunctionRules::default()).rule,
        Rule::SequenceState
    );
}

#[test]
fn unlogged_relations_and_role_questions_go_to_the_primary() {
    let rules = rules().with_unlogged([("public".to_owned(), "ucache".to_owned())].into_iter().collect());
    // (sql, target, rule)
    let cases = [
        ("SELECT * FROM ucache", Target::Primary, Rule::UnloggedRelation),
        ("COPY ucache TO STDOUT", Target::Primary, Rule::UnloggedRelation),
        (
            "EXPLAIN SELECT 1 FROM ucache",
            Target::Primary,
            Rule::UnloggedRelation,
        ),
        ("SELECT * FROM other.ucache", Target::Replica, Rule::Read),
        ("SELECT pg_is_in_recovery()", Target::Primary, Rule::ServerRole),
        ("SHOW in_hot_standby", Target::Primary, Rule::ServerRole),
        (
            "SELECT setting FROM pg_settings WHERE name = 'in_hot_standby'",
            Target::Primary,
            Rule::ServerRole,
        ),
        // The server's replication state: a standby fails these or answers for itself.
        ("SELECT pg_current_wal_lsn()", Target::Primary, Rule::ServerRole),
        (
            "SELECT pg_wal_lsn_diff(pg_catalog.pg_current_wal_insert_lsn(), '0/0')",
            Target::Primary,
            Rule::ServerRole,
        ),
        (
            "SELECT pg_last_wal_replay_lsn()",
            Target::Primary,
            Rule::ServerRole,
        ),
        (
            "SELECT * FROM pg_stat_replication",
            Target::Primary,
            Rule::ServerRole,
        ),
        (
            "SELECT slot_name FROM pg_catalog.pg_replication_slots",
            Target::Primary,
            Rule::ServerRole,
        ),
        (
            "SELECT status FROM \"pg_stat_wal_receiver\"",
            Target::Primary,
            Rule::ServerRole,
        ),
        (
            "SELECT * FROM myschema.pg_stat_replication",
            Target::Replica,
            Rule::Read,
        ),
        (
            "SELECT pg_stat_replication FROM t",
            Target::Primary,
            Rule::ServerRole,
        ),
        // The server's own activity, locks and statistics: a standby has its own.
        (
            "SELECT count(*) FROM pg_stat_activity",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT * FROM pg_catalog.pg_locks WHERE locktype = 'advisory'",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT n_tup_ins FROM pg_stat_user_tables WHERE relname = 't'",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT heap_blks_hit FROM \"pg_statio_user_tables\"",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT pg_stat_get_numscans('t'::regclass)",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT pg_blocking_pids(42)",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT gid FROM pg_prepared_xacts",
            Target::Primary,
            Rule::ServerActivity,
        ),
        (
            "SELECT pg_postmaster_start_time()",
            Target::Primary,
            Rule::ServerActivity,
        ),
        // The planner's statistics are replayed data, and names outside the catalog are the user's.
        (
            "SELECT * FROM pg_stats WHERE tablename = 't'",
            Target::Replica,
            Rule::Read,
        ),
        ("SELECT * FROM pg_statistic", Target::Replica, Rule::Read),
        ("SELECT * FROM app.pg_stat_activity", Target::Replica, Rule::Read),
        ("SELECT app.pg_blocking_pids(1)", Target::Replica, Rule::Read),
        (
            "SELECT myschema.pg_current_wal_lsn()",
            Target::Replica,
            Rule::Read,
        ),
        ("SHOW work_mem", Target::Replica, Rule::SessionState("SHOW")),
        // The stricter reason wins: an unlogged read has no replica to fall back to.
        (
            "SELECT pg_is_in_recovery() FROM ucache",
            Target::Primary,
            Rule::UnloggedRelation,
        ),
    ];
    for (sql, target, rule) in cases {
        let d = classify(sql, &rules);
        assert_eq!((d.target, d.rule), (target, rule), "{sql}");
    }
    assert!(classify("SELECT 1 INTO UNLOGGED t2", &rules).ddl);
}

#[test]
fn ddl_that_may_change_a_function_body_is_told_apart() {
    // (text, ddl, code_ddl)
    let cases = [
        ("CREATE TABLE t (id int)", true, false),
        ("ALTER TABLE t ADD COLUMN v int", true, false),
        ("DROP FUNCTION f(int)", true, false),
        ("TRUNCATE t", false, false),
        ("INSERT INTO t VALUES (1)", false, false),
        (
            "CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            true,
            true,
        ),
        (
            "create or replace function f() returns int language sql as 'select 1'",
            true,
            true,
        ),
        (
            "CREATE OR REPLACE PROCEDURE p() LANGUAGE sql AS 'SELECT 1'",
            true,
            true,
        ),
        ("CREATE EXTENSION pgcrypto", true, true),
        ("ALTER EXTENSION pgcrypto UPDATE", true, true),
        ("DO $$ BEGIN NULL; END $$", true, true),
        (
            "CREATE TABLE t (id int); CREATE FUNCTION f() RETURNS int LANGUAGE sql AS 'SELECT 1'",
            true,
            true,
        ),
    ];
    for (sql, ddl, code) in cases {
        let d = decide(sql);
        assert_eq!((d.ddl, d.code_ddl), (ddl, code), "{sql}");
    }
    let big = "x".repeat(MAX_CLASSIFIED_STATEMENT);
    assert!(
        decide(&format!(
            "CREATE FUNCTION f() RETURNS text LANGUAGE sql AS $$SELECT '{big}'$$"
        ))
        .code_ddl
    );
    assert!(!decide(&format!("DROP TABLE t /* {big} */")).code_ddl);
}
