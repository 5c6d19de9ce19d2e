//! Unit tests of what statements change in the session: settings (SET, RESET, `set_config`), calls of
//! functions that change them, and the savepoints and transaction ends that decide which changes stand.

use super::*;

#[test]
fn savepoint_statements_are_kept_among_the_changes() {
    use crate::router::classify::Savepoint::{Release, RollbackTo, Set};
    let cases: &[(&str, &str, Option<Savepoint>)] = &[
        ("SAVEPOINT a", "SAVEPOINT", Some(Set("a".into()))),
        (
            "savepoint \"My Point\"",
            "SAVEPOINT",
            Some(Set("My Point".into())),
        ),
        (
            "SAVEPOINT PGJDBC_AUTOSAVE",
            "SAVEPOINT",
            Some(Set("pgjdbc_autosave".into())),
        ),
        ("RELEASE SAVEPOINT a", "RELEASE", Some(Release("a".into()))),
        ("RELEASE a", "RELEASE", Some(Release("a".into()))),
        // One savepoint named "savepoint".
        ("RELEASE savepoint", "RELEASE", Some(Release("savepoint".into()))),
        ("ROLLBACK TO a", "ROLLBACK", Some(RollbackTo("a".into()))),
        (
            "ROLLBACK TO SAVEPOINT A",
            "ROLLBACK",
            Some(RollbackTo("a".into())),
        ),
        (
            "rollback work to savepoint a",
            "ROLLBACK",
            Some(RollbackTo("a".into())),
        ),
        (
            "ROLLBACK TRANSACTION TO a",
            "ROLLBACK",
            Some(RollbackTo("a".into())),
        ),
        (
            "ROLLBACK TO savepoint",
            "ROLLBACK",
            Some(RollbackTo("savepoint".into())),
        ),
        // Ends the transaction: nothing to keep.
        ("ROLLBACK", "ROLLBACK", None),
        ("ROLLBACK AND CHAIN", "ROLLBACK", None),
        // Refused by the server.
        ("SAVEPOINT", "SAVEPOINT", None),
        ("SAVEPOINT a b", "SAVEPOINT", None),
        ("ROLLBACK TO", "ROLLBACK", None),
    ];
    for (sql, kind, want) in cases {
        let d = decide(sql);
        assert_eq!(d.rule, Rule::TransactionControl(kind), "{sql}");
        assert_eq!(d.target, Target::Replica, "{sql}");
        let want: Vec<SessionChange> = want.iter().cloned().map(SessionChange::Savepoint).collect();
        assert_eq!(d.changes, want, "{sql}");
    }
}

#[test]
fn set_changes_are_canonical() {
    let set = |sql: &str| decide(sql).changes;
    let named = |name: &str, statement: &str| SessionChange::Set {
        name: name.into(),
        statement: statement.into(),
    };
    assert_eq!(
        set("SET search_path TO a, b"),
        vec![named("search_path", "SET search_path TO a, b")]
    );
    assert_eq!(
        set("set \"TimeZone\" = 'UTC' -- trailing"),
        vec![named("timezone", "set \"TimeZone\" = 'UTC'")]
    );
    assert_eq!(
        set("SET TIME ZONE 'UTC'"),
        vec![named("timezone", "SET TIME ZONE 'UTC'")]
    );
    assert_eq!(
        set("SET NAMES 'UTF8'"),
        vec![named("client_encoding", "SET NAMES 'UTF8'")]
    );
    assert_eq!(
        set("SET SESSION ROLE bob"),
        vec![named("role", "SET SESSION ROLE bob")]
    );
    assert_eq!(
        set("SET SCHEMA 'app'"),
        vec![named("search_path", "SET SCHEMA 'app'")]
    );
    assert_eq!(
        set("SET my.Custom = 1"),
        vec![named("my.custom", "SET my.Custom = 1")]
    );
    assert_eq!(
        set("SET SESSION AUTHORIZATION DEFAULT"),
        vec![named(
            "session_authorization",
            "SET SESSION AUTHORIZATION DEFAULT"
        )]
    );
    assert_eq!(
        set("SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL serializable, READ ONLY"),
        vec![
            named(
                "default_transaction_isolation",
                "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE"
            ),
            named(
                "default_transaction_read_only",
                "SET SESSION CHARACTERISTICS AS TRANSACTION READ ONLY"
            ),
        ]
    );
    // To DEFAULT is RESET: the session's startup value, not the node connection's.
    for (sql, name) in [
        ("SET application_name TO DEFAULT", "application_name"),
        ("set work_mem = default", "work_mem"),
        ("SET NAMES", "client_encoding"),
        ("SET TIME ZONE LOCAL", "timezone"),
    ] {
        assert_eq!(
            set(sql),
            vec![SessionChange::Reset {
                name: name.into(),
                statement: sql.into()
            }],
            "{sql}"
        );
    }
    assert!(set("SET LOCAL search_path TO a").is_empty());
    assert!(set("SET TRANSACTION READ ONLY").is_empty());
    assert!(set("SET CONSTRAINTS ALL DEFERRED").is_empty());
    assert_eq!(
        set("RESET Search_Path"),
        vec![SessionChange::Reset {
            name: "search_path".into(),
            statement: "RESET Search_Path".into()
        }]
    );
    assert_eq!(set("RESET ALL"), vec![SessionChange::ResetAll]);
    assert_eq!(set("DISCARD ALL"), vec![SessionChange::ResetAll]);
    assert!(set("SET search_path").is_empty());
    assert_eq!(decide("SET search_path").target, Target::Primary);
}

#[test]
fn set_config_calls_are_settings_when_pgfleet_can_replay_them() {
    let named = |name: &str, statement: &str| SessionChange::Set {
        name: name.into(),
        statement: statement.into(),
    };
    // (statement, the changes it makes, the pin it takes)
    let cases: Vec<(&str, Vec<SessionChange>, Option<Pin>)> = vec![
        (
            "SELECT set_config('search_path', 's1, public', false)",
            vec![named(
                "search_path",
                "SELECT pg_catalog.set_config('search_path', 's1, public', false)",
            )],
            None,
        ),
        (
            "select PG_CATALOG.set_config('My.Key', $$it's$$, FALSE) AS old, set_config('work_mem', '8MB', false) x",
            vec![
                named(
                    "my.key",
                    "SELECT pg_catalog.set_config('My.Key', $$it's$$, false)",
                ),
                named(
                    "work_mem",
                    "SELECT pg_catalog.set_config('work_mem', '8MB', false)",
                ),
            ],
            None,
        ),
        // Transaction-scoped: gone when the transaction ends, whatever its arguments.
        ("SELECT set_config('search_path', 'x', true)", vec![], None),
        ("SELECT set_config($1, $2, true)", vec![], None),
        (
            "SELECT set_config('work_mem', '8MB', true) FROM t WHERE a = 1",
            vec![],
            None,
        ),
        // Known only as it runs: the session stays where it ran.
        ("SELECT set_config($1, $2, false)", vec![], Some(Pin::SetConfig)),
        (
            "SELECT set_config('search_path', current_setting('x'), false)",
            vec![],
            Some(Pin::SetConfig),
        ),
        ("SELECT set_config('a.b', 'c', $1)", vec![], Some(Pin::SetConfig)),
        (
            "SELECT set_config('a.b', v, false) FROM t",
            vec![],
            Some(Pin::SetConfig),
        ),
        (
            "SELECT set_config('a.b', 'c', false) FROM t WHERE false",
            vec![],
            Some(Pin::SetConfig),
        ),
        (
            "SELECT 1, set_config('a.b', 'c', false)",
            vec![],
            Some(Pin::SetConfig),
        ),
        (
            "INSERT INTO t SELECT set_config('a.b', 'c', false)",
            vec![],
            Some(Pin::SetConfig),
        ),
        (
            "EXPLAIN ANALYZE SELECT set_config('a.b', 'c', false)",
            vec![],
            Some(Pin::SetConfig),
        ),
        (
            "DECLARE c CURSOR FOR SELECT set_config('a.b', 'c', false)",
            vec![],
            Some(Pin::SetConfig),
        ),
        // Someone else's set_config.
        ("SELECT app.set_config('a', 'b', false)", vec![], None),
    ];
    for (sql, changes, pin) in cases {
        let d = decide(sql);
        assert_eq!((d.changes, d.pin), (changes, pin), "{sql}");
    }
    // A session-wide call is a write function's call: it runs on the primary.
    assert_eq!(
        decide("SELECT set_config('search_path', 'x', false)").target,
        Target::Primary
    );
    // The value the replayed call sets is the one pgfleet reads its client_encoding from.
    let changes = decide("SELECT set_config('client_encoding', 'LATIN1', false)").changes;
    let statements: Vec<&str> = changes
        .iter()
        .filter_map(|c| match c {
            SessionChange::Set { statement, .. } => Some(statement.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(statements.len(), 1);
    assert_eq!(set_value(statements[0]).as_deref(), Some("LATIN1"));
}

#[test]
fn calls_of_functions_that_change_a_setting_pin_the_session() {
    let rules = rules()
        .with_volatile(["app.set_tenant".to_owned()].into_iter().collect())
        .with_session_functions(
            [
                ("app".to_owned(), "set_tenant".to_owned()),
                ("app".to_owned(), "use_schema".to_owned()),
            ]
            .into_iter()
            .collect(),
        );
    // (sql, pinned)
    let cases = [
        ("SELECT set_tenant('42')", true),
        ("SELECT app.set_tenant('42')", true),
        (
            "SELECT * FROM orders WHERE app.set_tenant('42') IS NOT NULL",
            true,
        ),
        ("CALL use_schema('s1')", true),
        ("INSERT INTO log SELECT set_tenant('1')", true),
        ("EXPLAIN ANALYZE SELECT set_tenant('1')", true),
        // Another schema's function of that name, a built-in, other functions.
        ("SELECT other.set_tenant('42')", false),
        ("SELECT pg_catalog.set_tenant('42')", false),
        ("SELECT bump_counter()", false),
        ("SELECT 1", false),
    ];
    for (sql, pinned) in cases {
        let d = classify(sql, &rules);
        assert_eq!(d.pin == Some(Pin::SessionFunction), pinned, "{sql}: {d:?}");
    }
    // DO blocks are read as bodies are.
    for (sql, pinned) in [
        (
            "DO $$ BEGIN PERFORM set_config('app.tenant', '1', false); END $$",
            true,
        ),
        ("DO LANGUAGE plpgsql 'BEGIN SET search_path = app; END'", true),
        (
            "DO $$ BEGIN PERFORM set_config('app.tenant', '1', true); END $$",
            false,
        ),
        ("DO $$ BEGIN UPDATE t SET x = 1; END $$", false),
    ] {
        let d = classify(sql, &rules);
        assert_eq!(d.pin == Some(Pin::SessionFunction), pinned, "{sql}: {d:?}");
        assert_eq!(d.target, Target::Primary, "{sql}");
    }
    // Without such functions nothing is pinned.
    assert_eq!(
        classify("SELECT set_tenant('42')", &FunctionRules::default()).pin,
        None
    );
}

#[test]
fn transaction_ends_are_kept_among_the_changes_they_settle() {
    use crate::router::classify::Savepoint::{RollbackTo, Set as Mark};
    let set = |name: &str, value: &str| SessionChange::Set {
        name: name.into(),
        statement: format!("SET {name} = {value}"),
    };
    let end = SessionChange::EndTransaction;
    // (text, its changes, whether a transaction end follows the last of them)
    let cases: Vec<(&str, Vec<SessionChange>, bool)> = vec![
        // A lone end carries no list.
        ("COMMIT", vec![], true),
        ("END", vec![], true),
        ("ABORT", vec![], true),
        ("ROLLBACK", vec![], true),
        ("rollback work", vec![], true),
        ("COMMIT AND CHAIN", vec![], true),
        ("ROLLBACK AND NO CHAIN", vec![], true),
        ("PREPARE TRANSACTION 'tx1'", vec![], true),
        // Not the session's transaction.
        ("COMMIT PREPARED 'tx1'", vec![], false),
        ("ROLLBACK PREPARED 'tx1'", vec![], false),
        (
            "ROLLBACK TO a",
            vec![SessionChange::Savepoint(RollbackTo("a".into()))],
            false,
        ),
        ("SELECT 1", vec![], false),
        ("SET work_mem = 1", vec![set("work_mem", "1")], false),
        // In order among the settings they settle.
        ("SET work_mem = 1; COMMIT", vec![set("work_mem", "1")], true),
        (
            "BEGIN; SET work_mem = 1; ROLLBACK; SET lock_timeout = 2",
            vec![set("work_mem", "1"), end.clone(), set("lock_timeout", "2")],
            false,
        ),
        (
            "COMMIT; BEGIN; SET work_mem = 1",
            vec![end.clone(), set("work_mem", "1")],
            false,
        ),
        (
            "COMMIT; SAVEPOINT a; COMMIT; SELECT 1",
            vec![end.clone(), SessionChange::Savepoint(Mark("a".into()))],
            true,
        ),
        ("COMMIT; COMMIT", vec![end.clone()], true),
    ];
    for (sql, changes, ends_last) in cases {
        let d = decide(sql);
        assert_eq!(d.changes, changes, "{sql}");
        assert_eq!(d.ends_last, ends_last, "{sql}");
    }
}
