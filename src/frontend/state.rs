//! What a client session has changed and must carry to every node it uses: its settings (startup parameters
//! and SET/RESET, kept as a compact latest-value-per-name log) and its prepared statements.

use std::collections::BTreeMap;
use std::sync::Arc;

use bytes::Bytes;

use crate::protocol::encoding::ClientEncoding;
use crate::protocol::quote::{quote_ident, quote_literal};
use crate::router::classify::{Pin, Savepoint, SessionChange, Target, set_value};

/// Session settings: the latest statement per setting name. A node connection records the same map for
/// what has been applied on it, and the difference between the two is what must run before a request.
#[derive(Debug, Default)]
pub struct Settings {
    /// Shared with `startup` until the session changes a setting: most sessions never do, and keep one map.
    entries: Arc<BTreeMap<String, String>>,
    /// The startup parameters' entries: what RESET, RESET ALL and DISCARD ALL return to, as on PostgreSQL,
    /// where the values a client connects with are its session's defaults.
    startup: Arc<BTreeMap<String, String>>,
    /// Identifies these entries: 0 for none, else the number [`generation_of`] gave this content. Sessions
    /// with the same settings share it, so a connection that recorded the same generation has exactly these
    /// settings applied, which answers [`Settings::diff`] without comparing the maps, also for a connection
    /// that last served another session (transaction pooling), whose clients mostly connect alike.
    generation: u64,
    /// `default_transaction_isolation` is serializable: a hot standby refuses every read of the session
    /// ("cannot use serializable mode in a hot standby"), so its reads go to the primary.
    serializable: bool,
}

/// Numbers given to settings contents, never given twice: equal numbers mean equal contents.
static NEXT_GENERATION: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Most contents remembered; past it the table starts over. Contents seen before then get new numbers, which
/// costs a comparison of maps on their sessions' next connection change, never a wrong answer.
const REMEMBERED: usize = 4096;

/// Owner: this module, for the whole process. Only [`generation_of`] reads and writes it, when a session's
/// settings change (its login, a SET): never on a request's path.
static GENERATIONS: std::sync::Mutex<Option<std::collections::HashMap<BTreeMap<String, String>, u64>>> =
    std::sync::Mutex::new(None);

/// The number of a settings content: the same for equal contents while the table remembers them, and a
/// number no other content ever had.
fn generation_of(entries: &BTreeMap<String, String>) -> u64 {
    if entries.is_empty() {
        return 0;
    }
    let mut table = GENERATIONS.lock().unwrap_or_else(|p| p.into_inner());
    let table = table.get_or_insert_with(Default::default);
    if let Some(g) = table.get(entries) {
        return *g;
    }
    if table.len() >= REMEMBERED {
        table.clear();
    }
    let g = NEXT_GENERATION.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    table.insert(entries.clone(), g);
    g
}

impl Settings {
    /// A session's settings from its startup parameters, each kept as the SET that reproduces it; numbered
    /// once, for the whole set.
    pub fn from_startup<'a>(params: impl IntoIterator<Item = (&'a str, &'a str)>) -> Settings {
        let entries: BTreeMap<String, String> = params
            .into_iter()
            .map(|(name, value)| {
                let name = name.to_ascii_lowercase();
                let sql = format!("SET {} TO {}", quote_ident(&name), quote_literal(value));
                (name, sql)
            })
            .collect();
        let generation = generation_of(&entries);
        let entries = Arc::new(entries);
        Settings {
            serializable: serializable_in(&entries),
            startup: entries.clone(),
            entries,
            generation,
        }
    }

    /// See the field's documentation.
    pub fn serializable(&self) -> bool {
        self.serializable
    }

    /// See the field's documentation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a SET/RESET the client ran successfully.
    pub fn apply(&mut self, change: &SessionChange) {
        match change {
            SessionChange::Set { name, statement } => {
                Arc::make_mut(&mut self.entries).insert(name.clone(), statement.clone());
            }
            SessionChange::Reset { name, .. } => match self.startup.get(name) {
                Some(statement) => {
                    Arc::make_mut(&mut self.entries).insert(name.clone(), statement.clone());
                }
                None => {
                    Arc::make_mut(&mut self.entries).remove(name);
                }
            },
            SessionChange::ResetAll => self.entries = self.startup.clone(),
            SessionChange::Savepoint(_) | SessionChange::EndTransaction => return,
        }
        self.generation = generation_of(&self.entries);
        self.serializable = serializable_in(&self.entries);
    }

    /// The settings a connection that had `applied` has after running `changes` itself, and their number:
    /// its RESET returns to its own defaults, not to the client's startup parameters, which a later request
    /// then sets again ([`Settings::diff`]).
    pub fn as_run_on(
        applied: &BTreeMap<String, String>,
        changes: &[SessionChange],
    ) -> (BTreeMap<String, String>, u64) {
        let mut ran = applied.clone();
        for change in changes {
            match change {
                SessionChange::Set { name, statement } => {
                    ran.insert(name.clone(), statement.clone());
                }
                SessionChange::Reset { name, .. } => {
                    ran.remove(name);
                }
                SessionChange::ResetAll => ran.clear(),
                SessionChange::Savepoint(_) | SessionChange::EndTransaction => {}
            }
        }
        let generation = generation_of(&ran);
        (ran, generation)
    }

    /// The `client_encoding` these settings leave a connection in: UTF8, pgfleet's connections' own, unless
    /// one is set.
    pub fn client_encoding(&self) -> ClientEncoding {
        encoding_of(self.entries.get("client_encoding"))
    }

    /// The `client_encoding` once `pending`, changes made in the open transaction, are applied: the server
    /// reads the transaction's next statements in it (and goes back if the transaction rolls back).
    pub fn client_encoding_with(&self, pending: &[SessionChange]) -> ClientEncoding {
        let last = pending
            .iter()
            .rev()
            .find(|c| matches!(c, SessionChange::ResetAll) || c.name() == Some("client_encoding"));
        match last {
            None | Some(SessionChange::Savepoint(_) | SessionChange::EndTransaction) => {
                self.client_encoding()
            }
            Some(SessionChange::Set { statement, .. }) => encoding_of(Some(statement)),
            Some(SessionChange::Reset { .. } | SessionChange::ResetAll) => {
                encoding_of(self.startup.get("client_encoding"))
            }
        }
    }

    /// The settings as applied statements, by name.
    pub fn entries(&self) -> &BTreeMap<String, String> {
        &self.entries
    }

    /// The statements that turn a connection with `applied` settings into this session's; None if equal.
    pub fn diff(&self, applied: &BTreeMap<String, String>) -> Option<String> {
        let mut sql = String::new();
        for name in applied.keys().filter(|k| !self.entries.contains_key(*k)) {
            sql.push_str(&reset_statement(name));
            sql.push(';');
        }
        for (name, stmt) in self.entries.iter() {
            if applied.get(name) != Some(stmt) {
                sql.push_str(stmt);
                sql.push(';');
            }
        }
        if sql.is_empty() { None } else { Some(sql) }
    }
}

/// The setting changes of the open transaction, in order, which its commit keeps and its rollback drops, and
/// its savepoints: a ROLLBACK TO drops the changes made after its savepoint, as the server undoes them.
#[derive(Debug, Default)]
pub struct PendingChanges {
    /// Settings only: no [`SessionChange::Savepoint`].
    changes: Vec<SessionChange>,
    /// The transaction's savepoints, oldest first.
    savepoints: Vec<Mark>,
}

/// One savepoint, or several of one name set in a row with no change between them (drivers that set a
/// savepoint before every statement, as pgJDBC's `autosave` does, would otherwise grow this without bound).
#[derive(Debug)]
struct Mark {
    name: String,
    /// How many changes came before it.
    at: usize,
    /// How many savepoints it stands for.
    count: usize,
}

impl PendingChanges {
    /// Records a change or savepoint statement that ran (a transaction end is the caller's:
    /// `Session::finish` settles the list with it).
    pub fn record(&mut self, change: SessionChange) {
        let op = match change {
            SessionChange::Savepoint(op) => op,
            SessionChange::EndTransaction => return,
            change => {
                self.changes.push(change);
                return;
            }
        };
        match op {
            Savepoint::Set(name) => match self.savepoints.last_mut() {
                Some(top) if top.name == name && top.at == self.changes.len() => top.count += 1,
                _ => self.savepoints.push(Mark {
                    name,
                    at: self.changes.len(),
                    count: 1,
                }),
            },
            // A name pgfleet never saw set leaves everything as it is: the server refused the statement.
            Savepoint::RollbackTo(name) => {
                if let Some(i) = self.latest(&name) {
                    self.changes.truncate(self.savepoints[i].at);
                    self.savepoints.truncate(i + 1);
                }
            }
            Savepoint::Release(name) => {
                if let Some(i) = self.latest(&name) {
                    self.savepoints.truncate(i + 1);
                    if let Some(top) = self.savepoints.last_mut() {
                        top.count -= 1;
                        if top.count == 0 {
                            self.savepoints.pop();
                        }
                    }
                }
            }
        }
    }

    /// The latest savepoint of this name.
    fn latest(&self, name: &str) -> Option<usize> {
        self.savepoints.iter().rposition(|m| m.name == name)
    }

    /// The setting changes that stand, in order.
    pub fn changes(&self) -> &[SessionChange] {
        &self.changes
    }

    /// Whether a setting change stands.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The transaction ended.
    pub fn clear(&mut self) {
        self.changes.clear();
        self.savepoints.clear();
    }
}

/// The encoding a recorded `client_encoding` statement sets; none recorded is UTF8, pgfleet's connections'
/// own.
fn encoding_of(statement: Option<&String>) -> ClientEncoding {
    statement
        .and_then(|statement| set_value(statement))
        .map_or(ClientEncoding::Utf8, |name| ClientEncoding::from_name(&name))
}

/// Whether recorded settings make the session's transactions serializable (SET default_transaction_isolation,
/// SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE, `-c` in the startup options).
fn serializable_in(entries: &BTreeMap<String, String>) -> bool {
    entries
        .get("default_transaction_isolation")
        .and_then(|statement| set_value(statement))
        .is_some_and(|value| value.eq_ignore_ascii_case("serializable"))
}

/// How to put one setting back to its default.
fn reset_statement(name: &str) -> String {
    match name {
        "session_authorization" => "SET SESSION AUTHORIZATION DEFAULT".to_owned(),
        "role" => "RESET ROLE".to_owned(),
        other => format!("RESET {}", quote_ident(other)),
    }
}

/// A statement the client prepared with Parse, as the proxy needs it to prepare it again elsewhere.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The client's Parse frame, resent verbatim to nodes that lack the statement.
    pub parse: Bytes,
    /// Where executing it may run.
    pub target: Target,
    /// The label of the rule that decided `target`.
    pub rule: std::borrow::Cow<'static, str>,
    /// Session state it creates when executed.
    pub pin: Option<Pin>,
    /// Settings it changes when executed, with the savepoints and transaction ends among them.
    pub changes: Vec<SessionChange>,
    /// A transaction end follows the last of `changes` (`Decision::ends_last`).
    pub ends_last: bool,
    /// Distinguishes successive unnamed statements.
    pub id: u64,
}

/// The client's prepared statements by name ("" is the unnamed statement).
#[derive(Debug, Default)]
pub struct Statements {
    by_name: foldhash::HashMap<String, Statement>,
    /// A statement pgfleet answers itself was ever recorded ([`Statements::insert_answered_here`]); until
    /// then no Bind can name one, and a request's Binds need not be looked up for it.
    answered_here: bool,
}

/// Ids of unnamed statements, unique across sessions: in transaction pooling a connection's unnamed
/// statement may come from any session.
static NEXT_STATEMENT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

impl Statements {
    /// Records a statement the client parsed.
    pub fn insert(&mut self, name: &str, mut stmt: Statement) -> u64 {
        let id = NEXT_STATEMENT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        stmt.id = id;
        // Drivers re-parse the unnamed statement for every query: replace it in place, keeping its key.
        match self.by_name.get_mut(name) {
            Some(slot) => *slot = stmt,
            None => {
                self.by_name.insert(name.to_owned(), stmt);
            }
        }
        id
    }

    /// Records a statement that pgfleet answers itself when it is executed, rather than a node.
    pub fn insert_answered_here(&mut self, name: &str, stmt: Statement) -> u64 {
        self.answered_here = true;
        self.insert(name, stmt)
    }

    /// Whether a statement pgfleet answers itself may be among these (once one was, always).
    pub fn may_hold_answered_here(&self) -> bool {
        self.answered_here
    }

    /// Looks one up.
    pub fn get(&self, name: &str) -> Option<&Statement> {
        self.by_name.get(name)
    }

    /// Forgets one (Close).
    pub fn remove(&mut self, name: &str) {
        self.by_name.remove(name);
    }

    /// Forgets all (DEALLOCATE ALL, DISCARD ALL).
    pub fn clear(&mut self) {
        self.by_name.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs `ops` ("x=1" sets x, "sp a" / "to a" / "rel a" for SAVEPOINT, ROLLBACK TO, RELEASE) and answers
    /// the settings that stand, as "name=value".
    fn standing(ops: &str) -> Vec<String> {
        let mut p = PendingChanges::default();
        for op in ops.split(',').map(str::trim).filter(|op| !op.is_empty()) {
            let change = match op.split_once(' ') {
                Some(("sp", name)) => SessionChange::Savepoint(Savepoint::Set(name.into())),
                Some(("to", name)) => SessionChange::Savepoint(Savepoint::RollbackTo(name.into())),
                Some(("rel", name)) => SessionChange::Savepoint(Savepoint::Release(name.into())),
                _ => {
                    let (name, _) = op.split_once('=').expect("name=value");
                    SessionChange::Set {
                        name: name.into(),
                        statement: op.into(),
                    }
                }
            };
            p.record(change);
        }
        p.changes()
            .iter()
            .map(|c| match c {
                SessionChange::Set { statement, .. } => statement.clone(),
                other => panic!("not a setting: {other:?}"),
            })
            .collect()
    }

    #[test]
    fn a_rollback_to_a_savepoint_drops_the_changes_made_after_it() {
        // (what the transaction ran, the changes its commit keeps: what PostgreSQL keeps)
        let cases: &[(&str, &[&str])] = &[
            ("x=1, y=2", &["x=1", "y=2"]),
            ("x=1, sp a, y=2, to a", &["x=1"]),
            ("sp a, x=1, to a, y=2", &["y=2"]),
            // The savepoint stays after ROLLBACK TO: a second one goes back to it again.
            ("sp a, x=1, to a, y=2, to a", &[]),
            // RELEASE keeps the changes, and ends the savepoint and every later one.
            ("sp a, x=1, rel a, y=2", &["x=1", "y=2"]),
            ("sp a, x=1, sp b, y=2, rel a, to b", &["x=1", "y=2"]),
            // ROLLBACK TO an earlier savepoint ends the later ones.
            ("sp a, x=1, sp b, y=2, to a, to b", &[]),
            // A name set twice: the later one counts until it is released.
            ("sp a, x=1, sp a, y=2, to a", &["x=1"]),
            ("sp a, x=1, sp a, y=2, rel a, to a", &[]),
            // Set twice in a row (a driver's automatic savepoint): one release leaves the other.
            ("x=1, sp a, sp a, y=2, rel a, to a", &["x=1"]),
            ("x=1, sp a, sp a, rel a, rel a, y=2, to a", &["x=1", "y=2"]),
            // Names are compared exactly (the classifier folds unquoted ones).
            ("sp a, x=1, to A", &["x=1"]),
            ("sp b, x=1, to a", &["x=1"]),
        ];
        for (ops, want) in cases {
            assert_eq!(standing(ops), *want, "{ops}");
        }
    }

    #[test]
    fn repeated_savepoints_take_one_entry() {
        let mut p = PendingChanges::default();
        for _ in 0..10_000 {
            p.record(SessionChange::Savepoint(Savepoint::Set("pgjdbc_autosave".into())));
        }
        assert_eq!(p.savepoints.len(), 1);
        p.clear();
        assert!(p.savepoints.is_empty() && p.is_empty());
    }

    #[test]
    fn the_client_encoding_is_read_from_the_setting_that_made_it() {
        assert_eq!(Settings::default().client_encoding(), ClientEncoding::Utf8);
        let startup = Settings::from_startup([("client_encoding", "LATIN1")]);
        assert_eq!(startup.client_encoding(), ClientEncoding::Latin1);
        let set = |statement: &str| SessionChange::Set {
            name: "client_encoding".to_owned(),
            statement: statement.to_owned(),
        };
        // (statement the client ran, the encoding it leaves)
        let cases = [
            (
                "SET NAMES 'SJIS'",
                ClientEncoding::Decoded(encoding_rs::SHIFT_JIS),
            ),
            (
                "set client_encoding = win1251",
                ClientEncoding::Decoded(encoding_rs::WINDOWS_1251),
            ),
            (
                "SET client_encoding TO E'KOI8R' /* Cyrillic */",
                ClientEncoding::Decoded(encoding_rs::KOI8_R),
            ),
            (
                "SET SESSION client_encoding TO \"latin1\"",
                ClientEncoding::Latin1,
            ),
            ("SET client_encoding TO DEFAULT", ClientEncoding::Utf8),
            ("SET NAMES", ClientEncoding::Utf8),
            ("SET client_encoding TO 'JOHAB'", ClientEncoding::Unread),
        ];
        for (statement, want) in cases {
            let mut s = Settings::from_startup([("client_encoding", "LATIN1")]);
            s.apply(&set(statement));
            assert_eq!(s.client_encoding(), want, "{statement}");
        }
        let reset = SessionChange::Reset {
            name: "client_encoding".to_owned(),
            statement: "RESET client_encoding".to_owned(),
        };
        let mut s = Settings::from_startup([("client_encoding", "LATIN1")]);
        s.apply(&set("SET client_encoding TO 'WIN1251'"));
        s.apply(&reset);
        assert_eq!(
            s.client_encoding(),
            ClientEncoding::Latin1,
            "RESET: the startup value"
        );
        s.apply(&set("SET client_encoding TO 'WIN1251'"));
        s.apply(&SessionChange::ResetAll);
        assert_eq!(s.client_encoding(), ClientEncoding::Latin1, "RESET ALL likewise");
        let mut s = Settings::from_startup([("application_name", "psql")]);
        s.apply(&set("SET client_encoding TO 'LATIN1'"));
        s.apply(&reset);
        assert_eq!(s.client_encoding(), ClientEncoding::Utf8, "none at startup: UTF8");

        // Within a transaction: the settings as they stand, then what the transaction changed.
        let s = Settings::from_startup([("client_encoding", "LATIN1")]);
        let config = SessionChange::Set {
            name: "client_encoding".to_owned(),
            statement: "SELECT pg_catalog.set_config('client_encoding', 'SJIS', false)".to_owned(),
        };
        let other = SessionChange::Set {
            name: "work_mem".to_owned(),
            statement: "SET work_mem = '8MB'".to_owned(),
        };
        // (changes pending, the encoding the next statement is read in)
        let cases = [
            (vec![], ClientEncoding::Latin1),
            (vec![other.clone()], ClientEncoding::Latin1),
            (
                vec![set("SET NAMES 'WIN1251'"), other.clone()],
                ClientEncoding::Decoded(encoding_rs::WINDOWS_1251),
            ),
            (
                vec![set("SET NAMES 'WIN1251'"), reset.clone()],
                ClientEncoding::Latin1,
            ),
            (
                vec![set("SET NAMES 'WIN1251'"), SessionChange::ResetAll],
                ClientEncoding::Latin1,
            ),
            (
                vec![config.clone()],
                ClientEncoding::Decoded(encoding_rs::SHIFT_JIS),
            ),
        ];
        for (pending, want) in cases {
            assert_eq!(s.client_encoding_with(&pending), want, "{pending:?}");
        }
    }

    #[test]
    fn serializable_isolation_is_read_from_every_form_that_sets_it() {
        let set = |name: &str, statement: &str| SessionChange::Set {
            name: name.into(),
            statement: statement.into(),
        };
        let isolation = |statement: &str| set("default_transaction_isolation", statement);
        // (startup parameters, changes applied after them, serializable)
        type Case<'a> = (&'a [(&'a str, &'a str)], &'a [SessionChange], bool);
        let cases: &[Case] = &[
            (&[], &[], false),
            (&[("default_transaction_isolation", "serializable")], &[], true),
            (&[("Default_Transaction_Isolation", "SERIALIZABLE")], &[], true),
            (
                &[("default_transaction_isolation", "repeatable read")],
                &[],
                false,
            ),
            (
                &[],
                &[isolation("SET default_transaction_isolation = 'serializable'")],
                true,
            ),
            (
                &[],
                &[isolation("SET default_transaction_isolation TO serializable")],
                true,
            ),
            (
                &[],
                &[isolation(
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL SERIALIZABLE",
                )],
                true,
            ),
            (
                &[],
                &[isolation(
                    "SELECT pg_catalog.set_config('default_transaction_isolation', 'serializable', false)",
                )],
                true,
            ),
            (
                &[],
                &[isolation(
                    "SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ",
                )],
                false,
            ),
            // Back to what the session connected with.
            (
                &[("default_transaction_isolation", "serializable")],
                &[SessionChange::Reset {
                    name: "default_transaction_isolation".into(),
                    statement: "RESET default_transaction_isolation".into(),
                }],
                true,
            ),
            (
                &[],
                &[
                    isolation("SET default_transaction_isolation = 'serializable'"),
                    SessionChange::ResetAll,
                ],
                false,
            ),
            (
                &[],
                &[set(
                    "transaction_isolation",
                    "SET transaction_isolation = 'serializable'",
                )],
                false,
            ),
        ];
        for (startup, changes, want) in cases {
            let mut settings = Settings::from_startup(startup.iter().copied());
            for c in *changes {
                settings.apply(c);
            }
            assert_eq!(settings.serializable(), *want, "{startup:?} then {changes:?}");
        }
    }

    #[test]
    fn reset_returns_to_the_value_the_session_connected_with() {
        let startup = [("application_name", "psql"), ("DateStyle", "ISO, MDY")];
        let mut s = Settings::from_startup(startup);
        let at_login = (s.entries().clone(), s.generation());
        let set = |name: &str, statement: &str| SessionChange::Set {
            name: name.into(),
            statement: statement.into(),
        };
        let reset = |name: &str| SessionChange::Reset {
            name: name.into(),
            statement: format!("RESET {name}"),
        };
        s.apply(&set("application_name", "SET application_name = 'x'"));
        s.apply(&set("work_mem", "SET work_mem = '9MB'"));
        s.apply(&reset("application_name"));
        assert_eq!(
            s.entries().get("application_name").map(String::as_str),
            Some("SET \"application_name\" TO 'psql'")
        );
        s.apply(&reset("work_mem"));
        assert_eq!((s.entries().clone(), s.generation()), at_login);
        s.apply(&set("datestyle", "SET DateStyle = German"));
        s.apply(&set("work_mem", "SET work_mem = '9MB'"));
        s.apply(&SessionChange::ResetAll);
        assert_eq!((s.entries().clone(), s.generation()), at_login);
        assert_eq!(s.diff(&at_login.0), None);
    }

    #[test]
    fn diff_runs_only_what_differs() {
        let mut s = Settings::from_startup([("application_name", "psql")]);
        let none = BTreeMap::new();
        assert_eq!(
            s.diff(&none).as_deref(),
            Some("SET \"application_name\" TO 'psql';")
        );
        assert_eq!(s.diff(s.entries()), None);
        let before = s.entries().clone();
        s.apply(&SessionChange::Set {
            name: "search_path".into(),
            statement: "SET search_path TO x".into(),
        });
        assert_eq!(s.diff(&before).as_deref(), Some("SET search_path TO x;"));
        let mut other = before.clone();
        other.insert("role".into(), "SET ROLE bob".into());
        other.insert("work_mem".into(), "SET work_mem = '9MB'".into());
        assert_eq!(
            s.diff(&other).as_deref(),
            Some("RESET ROLE;RESET \"work_mem\";SET search_path TO x;")
        );
        s.apply(&SessionChange::ResetAll);
        assert_eq!(s.diff(&before), None, "back to the startup parameters");
        let mut bare = Settings::from_startup([]);
        bare.apply(&SessionChange::Set {
            name: "application_name".into(),
            statement: "SET application_name = 'x'".into(),
        });
        let applied = bare.entries().clone();
        bare.apply(&SessionChange::ResetAll);
        assert_eq!(
            bare.diff(&applied).as_deref(),
            Some("RESET \"application_name\";")
        );
    }

    #[test]
    fn equal_settings_share_a_generation_and_different_ones_never_do() {
        let set = |name: &str, statement: &str| SessionChange::Set {
            name: name.into(),
            statement: statement.into(),
        };
        // Two sessions that connected alike, their parameters in another order.
        assert_eq!(Settings::default().generation(), 0);
        assert_eq!(Settings::from_startup([]).generation(), 0);
        let mut a = Settings::from_startup([("application_name", "pgbench"), ("DateStyle", "ISO")]);
        let b = Settings::from_startup([("datestyle", "ISO"), ("application_name", "pgbench")]);
        assert_ne!(a.generation(), 0);
        assert_eq!(a.generation(), b.generation());

        // One changes: a number no other content had; changed back, the shared number again.
        let shared = a.generation();
        a.apply(&set("search_path", "SET search_path TO x"));
        assert_ne!(a.generation(), shared);
        assert_ne!(a.generation(), 0);
        let c = Settings::from_startup([("application_name", "psql")]);
        assert_ne!(c.generation(), a.generation());
        assert_ne!(c.generation(), shared);
        a.apply(&SessionChange::Reset {
            name: "search_path".into(),
            statement: "RESET search_path".into(),
        });
        assert_eq!(a.generation(), shared);
        assert_eq!(a.diff(b.entries()), None);

        // RESET ALL: back to the startup parameters' number. Nothing set: 0, as a connection nobody changed
        // records.
        a.apply(&SessionChange::ResetAll);
        assert_eq!(a.generation(), shared);
        let mut a = Settings::from_startup([]);
        a.apply(&set("search_path", "SET search_path TO x"));
        a.apply(&SessionChange::ResetAll);
        assert_eq!(a.generation(), 0);
        assert_eq!(
            a.generation(),
            crate::backend::conn::AppliedState::default().settings_generation
        );
    }
}
