//! The planner's rules as a table: statement, parameters, expected target (or SQLSTATE) and a fragment of
//! the reason or message. Four shards; the test placement puts an integer key `v` on shard `v mod 4`, a
//! text key on shard `length mod 4` and a uuid on shard `first byte mod 4`.

use super::*;
use crate::config::Config;

const CONFIG: &str = r#"
[listen]
address = "127.0.0.1:6432"
[[users]]
name = "app"
password = "secret"
[[nodes]]
name = "s0"
address = "127.0.0.1:5432"
role = "primary"
shard = 0
[[nodes]]
name = "s1"
address = "127.0.0.1:5433"
role = "primary"
shard = 1
[[nodes]]
name = "s2"
address = "127.0.0.1:5434"
role = "primary"
shard = 2
[[nodes]]
name = "s3"
address = "127.0.0.1:5435"
role = "primary"
shard = 3
[[sharded_tables]]
name = "accounts"
column = "id"
[[sharded_tables]]
name = "transfers"
column = "account_id"
[[sharded_tables]]
name = "users"
column = "email"
type = "text"
[[sharded_tables]]
name = "bank.ledger"
column = "id"
[[sharded_tables]]
name = "devices"
column = "id"
type = "uuid"
"#;

fn rules() -> ShardingRules {
    ShardingRules::from_config(&Config::parse(CONFIG).expect("valid config"))
}

fn place(v: &KeyValue) -> ShardId {
    ShardId::new(match v {
        KeyValue::Null => 0,
        KeyValue::Int(n) => n.rem_euclid(4) as u32,
        KeyValue::Text(t) => (t.len() % 4) as u32,
        KeyValue::Uuid(b) => u32::from(b[0] % 4),
    })
}

/// The expected outcome of a row.
#[derive(Debug)]
enum E {
    /// One shard; whether it writes.
    One(u32, bool),
    Several(&'static [u32], bool),
    All(bool),
    Any(bool),
    Session,
    /// SQLSTATE.
    Err(&'static str),
}

/// Parameters of a row: unknown (Parse time) or known values.
enum P {
    None,
    Unknown,
    Known(Vec<ParamValue<'static>>),
}

fn t(s: &'static str) -> ParamValue<'static> {
    ParamValue::Text(s.as_bytes())
}

fn check(sql: &str, p: &P, expected: &E, fragment: &str) -> Option<String> {
    let rules = rules();
    let known;
    let params = match p {
        P::None => Params::NONE,
        P::Unknown => Params::Unknown,
        P::Known(v) => {
            known = v.clone();
            Params::Known(&known)
        }
    };
    let got = plan(sql, &rules, &params, &place);
    let text = match &got {
        Ok(plan) => plan.reason.clone(),
        Err(e) => format!("{} HINT: {}", e.message, e.hint.clone().unwrap_or_default()),
    };
    let ok = match (expected, &got) {
        (E::One(n, w), Ok(plan)) => plan.target == ShardTarget::One(ShardId::new(*n)) && plan.write == *w,
        (E::Several(v, w), Ok(plan)) => {
            plan.target == ShardTarget::Several(v.iter().map(|n| ShardId::new(*n)).collect())
                && plan.write == *w
        }
        (E::All(w), Ok(plan)) => plan.target == ShardTarget::All && plan.write == *w,
        (E::Any(w), Ok(plan)) => plan.target == ShardTarget::Any && plan.write == *w,
        (E::Session, Ok(plan)) => plan.target == ShardTarget::Session,
        (E::Err(code), Err(e)) => e.code == *code,
        _ => false,
    };
    if !ok {
        return Some(format!("{sql}\n  expected {expected:?}\n  got {got:?}"));
    }
    if !text.contains(fragment) {
        return Some(format!(
            "{sql}\n  expected the text to contain {fragment:?}\n  got {text:?}"
        ));
    }
    None
}

#[test]
#[rustfmt::skip]
fn statements_route_by_the_table() {
    use E::*;
    let none = || P::None;
    let rows: Vec<(&str, P, E, &str)> = vec![
        // Key equality, literal on either side, casts of the literal.
        ("SELECT * FROM accounts WHERE id = 42", none(), One(2, false), "accounts.id = 42 -> shard 2"),
        ("SELECT * FROM accounts WHERE 41 = id", none(), One(1, false), "shard 1"),
        ("select balance from ACCOUNTS where ID = '7'", none(), One(3, false), "accounts.id = '7'"),
        ("SELECT * FROM accounts WHERE id = '42'::bigint", none(), One(2, false), ""),
        ("SELECT * FROM accounts WHERE id = CAST('43' AS integer)", none(), One(3, false), ""),
        ("SELECT * FROM accounts WHERE id = bigint '5'", none(), One(1, false), ""),
        ("SELECT * FROM accounts WHERE id = -3", none(), One(1, false), ""),
        ("SELECT * FROM accounts WHERE (id = 4) AND balance > 0", none(), One(0, false), ""),
        ("SELECT * FROM accounts a WHERE a.id = 6", none(), One(2, false), ""),
        ("SELECT * FROM public.accounts WHERE public.accounts.id = 9", none(), One(1, false), ""),
        ("SELECT * FROM other.accounts WHERE id = 9", none(), Any(false), "reference tables only"),
        // IN lists and OR: each shard they name.
        ("SELECT * FROM accounts WHERE id IN (1, 5, 9)", none(), One(1, false), "accounts.id IN (1, 5, 9)"),
        ("SELECT * FROM accounts WHERE id IN (1, 2, 6)", none(), Several(&[1, 2], false), "shards 1, 2"),
        ("SELECT * FROM accounts WHERE id = 1 OR id = 3", none(), Several(&[1, 3], false), ""),
        ("SELECT * FROM accounts WHERE (id = 1 OR id = 2) AND id IN (2, 3)", none(), One(2, false), ""),
        ("SELECT * FROM accounts WHERE id = ANY(ARRAY[4, 8])", none(), One(0, false), ""),
        ("SELECT * FROM accounts WHERE id = 1 OR balance = 0", none(), All(false), "no condition on accounts.id"),
        // Anything else on the key fans out.
        ("SELECT * FROM accounts", none(), All(false), "no condition on accounts.id: every shard"),
        ("SELECT * FROM accounts WHERE id > 10", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id + 0 = 5", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id NOT IN (1, 2)", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id BETWEEN 1 AND 2", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id::text = '5'", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id = 4.5", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE NOT (id = 5)", none(), All(false), ""),
        // NULL keys.
        ("SELECT * FROM accounts WHERE id = NULL", none(), One(0, false), "matches no row"),
        ("SELECT * FROM accounts WHERE id IS NULL", none(), One(0, false), "accounts.id IS NULL"),
        ("SELECT * FROM accounts a LEFT JOIN transfers t ON t.account_id = a.id WHERE t.account_id IS NULL", none(), All(false), ""),
        // Values not of the key's type: PostgreSQL's error.
        ("SELECT * FROM accounts WHERE id = 'abc'", none(), Err("22P02"), "invalid input syntax for type bigint: \"abc\""),
        ("SELECT * FROM devices WHERE id = 'not-a-uuid'", none(), Err("22P02"), "uuid"),
        ("SELECT * FROM devices WHERE id = 'a0eebc99-9c0b-4ef8-bb6d-6bb9bd380a11'", none(), One(0, false), ""),
        ("SELECT * FROM users WHERE email = 'bob@x.io'", none(), One(0, false), "users.email = 'bob@x.io'"),
        ("SELECT * FROM users WHERE email = E'a\\'b'", none(), One(3, false), ""),
        // Parameters: unknown at Parse, routed at Bind, text or binary or NULL.
        ("SELECT * FROM accounts WHERE id = $1", P::Unknown, All(false), "until the value of $1 is known"),
        ("SELECT * FROM accounts WHERE id = $1", P::Known(vec![t("42")]), One(2, false), "$1 ('42')"),
        ("SELECT * FROM accounts WHERE id = $1", P::Known(vec![ParamValue::Binary(&[0, 0, 0, 7])]), One(3, false), ""),
        ("SELECT * FROM accounts WHERE id = $1", P::Known(vec![ParamValue::Null]), One(0, false), "matches no row"),
        ("SELECT * FROM accounts WHERE id = $1", P::Known(vec![t("x")]), Err("22P02"), "bigint"),
        ("SELECT * FROM accounts WHERE id = $1", P::Known(vec![ParamValue::Binary(&[1, 2, 3])]), Err("22P03"), ""),
        ("SELECT * FROM accounts WHERE id IN ($1, $2)", P::Known(vec![t("1"), t("5")]), One(1, false), ""),
        ("SELECT * FROM accounts WHERE id = $2", P::Known(vec![t("1")]), Err("08P01"), ""),
        // UPDATE and DELETE.
        ("UPDATE accounts SET balance = balance + 1 WHERE id = 42", none(), One(2, true), "accounts.id = 42"),
        ("UPDATE accounts SET balance = 0", none(), All(true), "every shard"),
        ("DELETE FROM accounts WHERE id IN (3, 7) RETURNING *", none(), One(3, true), ""),
        ("DELETE FROM accounts WHERE balance < 0", none(), All(true), ""),
        ("UPDATE accounts SET id = 5 WHERE id = 4", none(), Err("0A000"), "changing the shard key column accounts.id would move the row to another shard"),
        ("UPDATE accounts SET (id, balance) = (5, 0) WHERE id = 4", none(), Err("0A000"), "delete the row and insert it"),
        ("UPDATE accounts a SET balance = 0 FROM settings s WHERE a.id = 1 AND s.k = 'x'", none(), One(1, true), ""),
        ("SELECT * FROM accounts WHERE id = 5 FOR UPDATE", none(), One(1, true), ""),
        // INSERT VALUES.
        ("INSERT INTO accounts (id, balance) VALUES (42, 0)", none(), One(2, true), "INSERT into accounts (accounts.id = 42) -> shard 2"),
        ("INSERT INTO accounts (balance, id) VALUES (0, 1), (0, 5) RETURNING id", none(), One(1, true), ""),
        ("INSERT INTO accounts (id, balance) VALUES (1, 0), (2, 0), (5, 0)", none(), Several(&[1, 2], true), "shards 1, 2"),
        ("INSERT INTO accounts (id, balance) VALUES (3, 0) ON CONFLICT (id) DO UPDATE SET balance = excluded.balance", none(), One(3, true), ""),
        ("INSERT INTO accounts (id, balance) VALUES (3, 0) ON CONFLICT (id) DO UPDATE SET id = 4", none(), Err("0A000"), "changing the shard key"),
        ("INSERT INTO accounts VALUES (1, 0)", none(), Err("0A000"), "needs a column list naming its shard key id"),
        ("INSERT INTO accounts (balance) VALUES (0)", none(), Err("0A000"), "must give its shard key id"),
        ("INSERT INTO accounts (id, balance) VALUES (DEFAULT, 0)", none(), Err("0A000"), "accounts.id"),
        ("INSERT INTO accounts DEFAULT VALUES", none(), Err("0A000"), "accounts"),
        ("INSERT INTO accounts (id, balance) VALUES (1 + 1, 0)", none(), Err("0A000"), "must be a constant or a parameter"),
        ("INSERT INTO accounts (id, balance) VALUES ('x', 0)", none(), Err("22P02"), ""),
        ("INSERT INTO accounts (id, balance) VALUES ($1, $2)", P::Unknown, All(true), "known at Bind"),
        ("INSERT INTO accounts (id, balance) VALUES ($1, $2)", P::Known(vec![t("6"), t("0")]), One(2, true), ""),
        ("INSERT INTO users (email, name) VALUES ('ab', 'x')", none(), One(2, true), ""),
        ("INSERT INTO bank.ledger (id) VALUES (3)", none(), One(3, true), ""),
        ("INSERT INTO accounts (id, balance) VALUES (1, (SELECT max(balance) FROM accounts))", none(), Err("0A000"), "not pinned to the shard"),
        ("INSERT INTO accounts (id, balance) VALUES (1, (SELECT max(balance) FROM accounts WHERE id = 5))", none(), One(1, true), ""),
        // INSERT ... SELECT.
        ("INSERT INTO accounts (id, balance) SELECT 5, 0", none(), One(1, true), ""),
        ("INSERT INTO accounts (id, balance) SELECT 5, v FROM settings", none(), One(1, true), ""),
        ("INSERT INTO accounts (id, balance) SELECT account_id, sum(amount) FROM transfers GROUP BY account_id", none(), All(true), "co-located"),
        ("INSERT INTO accounts (id, balance) SELECT account_id, amount FROM transfers WHERE account_id = 2", none(), One(2, true), ""),
        ("INSERT INTO accounts (id, balance) SELECT account_id, amount FROM transfers ORDER BY amount LIMIT 5", none(), Err("0A000"), "INSERT ... SELECT into the sharded table accounts"),
        ("INSERT INTO accounts (id, balance) SELECT n, 0 FROM generate_series(1, 10) n", none(), Err("0A000"), "cannot prove"),
        ("INSERT INTO users (email) SELECT account_id FROM transfers", none(), Err("0A000"), ""),
        // Joins.
        ("SELECT * FROM accounts a JOIN transfers t ON t.account_id = a.id WHERE a.id = 9", none(), One(1, false), ""),
        ("SELECT * FROM accounts a JOIN transfers t ON t.account_id = a.id WHERE t.account_id = 10", none(), One(2, false), ""),
        ("SELECT * FROM accounts a JOIN transfers t ON t.account_id = a.id", none(), All(false), ""),
        ("SELECT * FROM accounts a, transfers t WHERE a.id = t.account_id AND a.id IN (1, 2)", none(), Several(&[1, 2], false), ""),
        ("SELECT * FROM accounts a JOIN transfers t USING (id)", none(), Err("0A000"), "join of accounts and transfers"),
        ("SELECT * FROM accounts a LEFT JOIN transfers t ON t.account_id = a.id WHERE a.id = 3", none(), One(3, false), ""),
        ("SELECT * FROM accounts a LEFT JOIN transfers t ON t.account_id = a.id AND t.account_id = 3", none(), All(false), ""),
        ("SELECT * FROM accounts a JOIN transfers t ON t.id = a.id", none(), Err("0A000"), "join of accounts and transfers is not on their shard keys"),
        ("SELECT * FROM accounts a JOIN transfers t ON t.to_id = a.id WHERE a.id = 1", none(), Err("0A000"), "accounts.id = transfers.account_id"),
        ("SELECT * FROM accounts a JOIN transfers t ON t.to_id = a.id WHERE a.id = 1 AND t.account_id = 5", none(), One(1, false), ""),
        ("SELECT * FROM accounts a JOIN users u ON u.email = a.owner", none(), Err("0A000"), ""),
        ("SELECT * FROM accounts a JOIN settings s ON s.k = a.kind WHERE a.id = 8", none(), One(0, false), ""),
        ("SELECT * FROM accounts a JOIN settings s ON s.k = a.kind", none(), All(false), ""),
        ("SELECT * FROM accounts a1 JOIN accounts a2 ON a1.id = a2.id WHERE a2.id = 2", none(), One(2, false), ""),
        ("SELECT * FROM accounts a1 JOIN accounts a2 ON a1.parent = a2.id", none(), Err("0A000"), "join of accounts and accounts"),
        // Subqueries and CTEs.
        ("SELECT * FROM accounts a WHERE EXISTS (SELECT 1 FROM transfers t WHERE t.account_id = a.id)", none(), All(false), ""),
        ("SELECT * FROM accounts a WHERE NOT EXISTS (SELECT 1 FROM transfers t WHERE t.account_id = a.id AND t.amount > 5) AND a.id = 6", none(), One(2, false), ""),
        ("SELECT a.id, (SELECT sum(amount) FROM transfers t WHERE t.account_id = a.id) FROM accounts a", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id IN (SELECT account_id FROM transfers WHERE amount > 100)", none(), All(false), ""),
        ("SELECT * FROM accounts WHERE id NOT IN (SELECT account_id FROM transfers)", none(), Err("0A000"), "subquery on transfers is not tied to the shard of the outer query"),
        ("SELECT * FROM accounts WHERE balance > (SELECT avg(balance) FROM accounts)", none(), Err("0A000"), "add WHERE accounts.id = accounts.id"),
        ("SELECT * FROM accounts WHERE id = 1 AND balance > (SELECT balance FROM accounts WHERE id = 5)", none(), One(1, false), ""),
        ("SELECT * FROM accounts WHERE id = 1 AND balance > (SELECT balance FROM accounts WHERE id = 2)", none(), Err("0A000"), "not tied"),
        ("SELECT * FROM settings WHERE k IN (SELECT kind FROM accounts)", none(), Err("0A000"), "subquery on accounts"),
        ("SELECT * FROM (SELECT id, balance FROM accounts WHERE balance > 0) s WHERE s.id = 7", none(), One(3, false), ""),
        ("SELECT * FROM (SELECT id, balance FROM accounts) s", none(), All(false), ""),
        ("SELECT * FROM (SELECT count(*) FROM accounts) c", none(), Err("0A000"), "subquery c on accounts"),
        ("SELECT * FROM accounts a JOIN (SELECT account_id, sum(amount) AS total FROM transfers GROUP BY account_id) t ON t.account_id = a.id", none(), All(false), ""),
        ("SELECT * FROM accounts a JOIN (SELECT account_id FROM transfers ORDER BY amount LIMIT 3) t ON t.account_id = a.id", none(), Err("0A000"), ""),
        ("WITH big AS (SELECT * FROM accounts WHERE balance > 1000) SELECT * FROM big WHERE id = 5", none(), One(1, false), ""),
        ("WITH big AS (SELECT * FROM accounts WHERE balance > 1000) SELECT * FROM big b1 JOIN big b2 ON b1.owner = b2.owner", none(), Err("0A000"), "join of subquery b1 and subquery b2"),
        ("WITH t AS (SELECT max(id) AS m FROM accounts) SELECT * FROM t", none(), Err("0A000"), "CTE t on accounts"),
        ("WITH d AS (DELETE FROM accounts WHERE id = 4 RETURNING *) SELECT count(*) FROM d", none(), One(0, true), ""),
        ("WITH d AS (DELETE FROM accounts WHERE balance = 0 RETURNING *) SELECT * FROM d", none(), All(true), ""),
        ("SELECT id FROM accounts WHERE id = 1 UNION ALL SELECT id FROM accounts WHERE id = 2", none(), Several(&[1, 2], false), ""),
        ("SELECT id FROM accounts WHERE id = 1 INTERSECT SELECT account_id FROM transfers", none(), Err("0A000"), "INTERSECT on transfers"),
        ("SELECT id FROM accounts WHERE id = 1 EXCEPT SELECT account_id FROM transfers WHERE account_id = 5", none(), One(1, false), ""),
        ("SELECT id FROM accounts WHERE id = 1 UNION SELECT k FROM settings", none(), One(1, false), ""),
        ("SELECT id FROM accounts UNION ALL SELECT k FROM settings", none(), Err("0A000"), "its UNION arm reads no sharded table"),
        ("SELECT id FROM accounts WHERE id IN (1, 2) UNION ALL VALUES (0)", none(), Err("0A000"), "each shard would return its rows"),
        ("WITH d AS (DELETE FROM accounts WHERE balance = 0 RETURNING id) SELECT 1", none(), Err("0A000"), "its query reads no sharded table"),
        ("SELECT * FROM accounts a, LATERAL (SELECT * FROM transfers t WHERE t.account_id = a.id ORDER BY amount LIMIT 3) x", none(), All(false), ""),
        ("SELECT * FROM accounts a, LATERAL (SELECT * FROM transfers t ORDER BY amount LIMIT 3) x", none(), Err("0A000"), "subquery x on transfers"),
        ("SELECT * FROM (SELECT t.account_id FROM accounts a LEFT JOIN transfers t ON t.account_id = a.id) s WHERE s.account_id IS NULL", none(), All(false), ""),
        ("SELECT * FROM accounts LIMIT (SELECT count(*) FROM accounts)", none(), Err("0A000"), "LIMIT"),
        ("SELECT * FROM accounts WHERE id = 5 AND kind IN (SELECT k FROM settings)", none(), One(1, false), ""),
        // Reference tables and no tables.
        ("SELECT * FROM settings", none(), Any(false), "reference tables only: any shard"),
        ("SELECT * FROM settings s JOIN regions r ON r.id = s.region", none(), Any(false), ""),
        ("SELECT 1", none(), Any(false), "no tables"),
        ("SELECT now(), version()", none(), Any(false), ""),
        ("SELECT * FROM settings FOR UPDATE", none(), Any(true), ""),
        ("INSERT INTO settings (k, v) VALUES ('a', 1), ('b', 2)", none(), All(true), "writes reference table settings: every shard"),
        ("UPDATE settings SET v = 2 WHERE k = 'a'", none(), All(true), ""),
        ("DELETE FROM settings", none(), All(true), ""),
        ("UPDATE settings SET v = (SELECT count(*) FROM accounts)", none(), Err("0A000"), "each shard's copy of settings would get different rows"),
        ("INSERT INTO settings (k) SELECT kind FROM accounts WHERE id = 1", none(), Err("0A000"), "writes reference table settings"),
        ("SELECT * FROM users", none(), All(false), ""),
        ("SELECT * FROM ledger", none(), Err("0A000"), "ambiguous"),
        ("SELECT * FROM bank.ledger WHERE id = 2", none(), One(2, false), ""),
        ("SELECT * FROM \"Accounts\"", none(), Any(false), ""),
        ("SELECT * INTO copy_of FROM accounts", none(), Err("0A000"), "SELECT INTO"),
        ("SELECT * INTO copy_of FROM settings", none(), All(true), ""),
        // DDL and maintenance.
        ("CREATE TABLE t (id bigint PRIMARY KEY)", none(), All(true), "DDL (CREATE): every shard"),
        ("ALTER TABLE accounts ADD COLUMN note text", none(), All(true), ""),
        ("DROP INDEX IF EXISTS accounts_balance", none(), All(true), ""),
        ("CREATE INDEX CONCURRENTLY i ON accounts (balance)", none(), All(true), ""),
        ("CREATE FUNCTION f() RETURNS int LANGUAGE sql AS $$ SELECT 1 $$", none(), All(true), ""),
        ("TRUNCATE accounts", none(), All(true), ""),
        ("COMMENT ON TABLE accounts IS 'money'", none(), All(true), ""),
        ("GRANT SELECT ON accounts TO reader", none(), All(true), ""),
        ("VACUUM accounts", none(), All(true), ""),
        ("CREATE TABLE snap AS SELECT * FROM accounts", none(), Err("0A000"), "CREATE ... AS reading the sharded table accounts"),
        ("CREATE MATERIALIZED VIEW mv AS SELECT * FROM settings", none(), All(true), ""),
        ("CREATE VIEW v AS SELECT * FROM accounts", none(), All(true), ""),
        ("LOCK TABLE accounts", none(), All(true), ""),
        // The session's own statements.
        ("BEGIN", none(), Session, ""),
        ("COMMIT", none(), Session, ""),
        ("ROLLBACK TO SAVEPOINT a", none(), Session, ""),
        ("SET search_path = bank", none(), Session, ""),
        ("RESET ALL", none(), Session, ""),
        ("SHOW TimeZone", none(), Session, ""),
        ("DISCARD ALL", none(), Session, ""),
        ("LISTEN ch", none(), Session, ""),
        ("FETCH 10 FROM c", none(), Session, ""),
        ("PREPARE TRANSACTION 'x'", none(), Session, ""),
        ("PREPARE q AS SELECT * FROM accounts WHERE id = $1", none(), Err("0A000"), "protocol-level prepared statements"),
        ("CALL transfer(1, 2, 10)", none(), Err("0A000"), "CALL"),
        ("DO $$ BEGIN PERFORM 1; END $$", none(), Err("0A000"), ""),
        // COPY.
        ("COPY accounts (id, balance) FROM STDIN", none(), All(true), "rows split by accounts.id"),
        ("COPY accounts FROM STDIN", none(), Err("0A000"), "needs a column list naming its shard key id"),
        ("COPY accounts (id) FROM '/tmp/x.csv'", none(), Err("0A000"), "FROM STDIN"),
        ("COPY settings FROM STDIN", none(), All(true), "reference table settings"),
        ("COPY accounts TO STDOUT", none(), All(false), "COPY TO"),
        ("COPY (SELECT * FROM accounts WHERE id = 3) TO STDOUT", none(), One(3, false), ""),
        // EXPLAIN, DECLARE, TABLE, MERGE.
        ("EXPLAIN SELECT * FROM accounts WHERE id = 2", none(), One(2, false), "EXPLAIN: accounts.id = 2"),
        ("EXPLAIN ANALYZE UPDATE accounts SET balance = 0 WHERE id = 2", none(), One(2, true), ""),
        ("EXPLAIN (ANALYZE, BUFFERS) INSERT INTO accounts (id) VALUES (1), (2)", none(), Err("0A000"), ""),
        ("DECLARE c CURSOR FOR SELECT * FROM accounts WHERE id = 1", none(), One(1, false), ""),
        ("DECLARE c CURSOR FOR SELECT * FROM accounts", none(), Err("0A000"), "cursor over several shards"),
        ("TABLE accounts", none(), All(false), ""),
        ("MERGE INTO accounts a USING src s ON a.id = s.id WHEN MATCHED THEN DELETE", none(), Err("0A000"), "MERGE"),
        ("SELECT * FROM accounts WHERE id = 1 ORDER BY (SELECT 1)", none(), Err("0A000"), "ORDER BY"),
    ];
    assert!(rows.len() >= 80, "{} rows", rows.len());
    let failures: Vec<String> = rows
        .iter()
        .filter_map(|(sql, params, expected, fragment)| check(sql, params, expected, fragment))
        .collect();
    assert!(
        failures.is_empty(),
        "{} of {} rows fail:\n{}",
        failures.len(),
        rows.len(),
        failures.join("\n")
    );
}

#[test]
fn multi_row_inserts_split_into_one_insert_per_shard() {
    let rules = rules();
    let sql = "INSERT INTO accounts (id, note) VALUES (1, 'a;b'), (2, $$x), (y$$), (5, 'c') RETURNING id";
    let p = plan(sql, &rules, &Params::NONE, &place).expect("plans");
    assert_eq!(
        p.target,
        ShardTarget::Several(vec![ShardId::new(1), ShardId::new(2)])
    );
    assert_eq!(
        p.split,
        Some(vec![
            (
                ShardId::new(1),
                "INSERT INTO accounts (id, note) VALUES (1, 'a;b'), (5, 'c') RETURNING id".to_owned()
            ),
            (
                ShardId::new(2),
                "INSERT INTO accounts (id, note) VALUES (2, $$x), (y$$) RETURNING id".to_owned()
            ),
        ])
    );
    assert_eq!(p.split_params, Some(vec![vec![], vec![]]));
    assert!(p.write);
}

#[test]
fn split_inserts_renumber_their_parameters() {
    let rules = rules();
    let sql = "INSERT INTO accounts (id, note) VALUES ($1, $2), ($3, $4), ($5, $2) \
               ON CONFLICT (id) DO UPDATE SET note = $6";
    let at_parse = plan(sql, &rules, &Params::Unknown, &place).expect("plans");
    assert_eq!(at_parse.target, ShardTarget::All);
    assert_eq!(at_parse.needs_params, vec![1, 3, 5]);
    assert_eq!(at_parse.split, None);
    let values = [t("1"), t("a"), t("2"), t("b"), t("5"), t("z")];
    let p = plan(sql, &rules, &Params::Known(&values), &place).expect("plans");
    assert_eq!(
        p.target,
        ShardTarget::Several(vec![ShardId::new(1), ShardId::new(2)])
    );
    let split = p.split.expect("split");
    assert_eq!(
        split[0].1,
        "INSERT INTO accounts (id, note) VALUES ($1, $2), ($3, $2) \
         ON CONFLICT (id) DO UPDATE SET note = $4"
    );
    assert_eq!(
        split[1].1,
        "INSERT INTO accounts (id, note) VALUES ($1, $2) \
         ON CONFLICT (id) DO UPDATE SET note = $3"
    );
    assert_eq!(p.split_params, Some(vec![vec![1, 2, 5, 6], vec![3, 4, 6]]));
}

#[test]
fn a_request_of_several_statements_has_one_plan_each_and_a_combined_target() {
    let rules = rules();
    let plans = plan_all(
        "BEGIN; UPDATE accounts SET b = 1 WHERE id = 1; UPDATE accounts SET b = 2 WHERE id = 6; COMMIT;",
        &rules,
        &Params::NONE,
        &place,
    )
    .expect("plans");
    let targets: Vec<&ShardTarget> = plans.iter().map(|p| &p.target).collect();
    assert_eq!(
        targets,
        vec![
            &ShardTarget::Session,
            &ShardTarget::One(ShardId::new(1)),
            &ShardTarget::One(ShardId::new(2)),
            &ShardTarget::Session
        ]
    );
    assert_eq!(
        combined_target(&plans),
        ShardTarget::Several(vec![ShardId::new(1), ShardId::new(2)])
    );
    let cases: &[(&str, ShardTarget)] = &[
        ("SELECT 1; SELECT * FROM accounts", ShardTarget::All),
        ("SET x = 1; SELECT 1", ShardTarget::Any),
        ("BEGIN; COMMIT", ShardTarget::Session),
        (
            "SELECT * FROM accounts WHERE id = 3; SELECT 1",
            ShardTarget::One(ShardId::new(3)),
        ),
    ];
    for (sql, expected) in cases {
        let plans = plan_all(sql, &rules, &Params::NONE, &place).expect("plans");
        assert_eq!(&combined_target(&plans), expected, "{sql}");
    }
    let refused = plan_all(
        "SELECT 1; UPDATE accounts SET id = 2",
        &rules,
        &Params::NONE,
        &place,
    );
    assert_eq!(refused.map_err(|e| e.code), Err("0A000".to_owned()));
    assert_eq!(plan_all("", &rules, &Params::NONE, &place), Ok(vec![]));
}

#[test]
fn rules_come_from_the_config() {
    let r = rules();
    assert_eq!(r.shards, 4);
    assert_eq!(r.tables.len(), 5);
    assert_eq!(r.tables[3].schema.as_deref(), Some("bank"));
    assert_eq!(r.tables[3].name, "ledger");
    assert_eq!(r.tables[2].key_type, crate::config::ShardKeyType::Text);
    // A quoted identifier keeps its case; an unquoted one folds.
    let quoted = plan(
        "SELECT * FROM \"accounts\" WHERE \"id\" = 5",
        &r,
        &Params::NONE,
        &place,
    );
    assert_eq!(quoted.map(|p| p.target), Ok(ShardTarget::One(ShardId::new(1))));
}

#[test]
fn plans_carry_what_the_session_needs_beyond_the_target() {
    let r = rules();
    let p = |sql: &str| plan(sql, &r, &Params::NONE, &place).expect(sql);
    let copy = p("COPY accounts (balance, id) FROM STDIN WITH (FORMAT csv)");
    assert_eq!(
        copy.copy_in,
        Some(CopyIn {
            table: "accounts".into(),
            key_index: 1,
            key_type: crate::config::ShardKeyType::Integer
        })
    );
    assert!(p("INSERT INTO settings (k) VALUES ('a')").same_on_every_shard);
    assert!(p("ALTER TABLE accounts ADD COLUMN x int").same_on_every_shard);
    assert!(!p("UPDATE accounts SET b = 0").same_on_every_shard);
    assert!(p("VACUUM ANALYZE accounts").outside_transaction);
    assert!(p("CREATE UNIQUE INDEX CONCURRENTLY i ON accounts (id)").outside_transaction);
    assert!(!p("CREATE INDEX i ON accounts (id)").outside_transaction);
    // A closure is a placement too.
    let everything_on_3 = |_: &KeyValue| ShardId::new(3);
    let on3 = plan(
        "SELECT * FROM accounts WHERE id = 1",
        &r,
        &Params::NONE,
        &everything_on_3,
    );
    assert_eq!(on3.map(|p| p.target), Ok(ShardTarget::One(ShardId::new(3))));
}
