//! What the router knows of a database's catalog: which function calls may write (the built-in list of
//! PostgreSQL functions that change state a replica cannot hold, the configured `routing.write_functions` /
//! `routing.read_only_functions`, and the VOLATILE user functions read from the primary's `pg_proc`), and
//! which relations a replica cannot read at all (the unlogged ones, read from the primary's `pg_class`) or
//! reads ahead of the primary (sequences),
//! and whether any function's body may make a commit asynchronous (names `synchronous_commit`) or leave
//! state in the calling session (a setting, a temporary table, a lock).
//!
//! Names arrive here already resolved the way PostgreSQL resolves them: an unquoted identifier folded
//! to lower case, a quoted one exact. That is why `"NextVal"(...)` is not `nextval`.

use std::collections::{HashMap, HashSet};

/// Lists all VOLATILE functions outside the system schemas as `(nspname text, proname text)`.
///
/// Built-in functions are judged by [`builtin_may_write`] instead: most volatile built-ins
/// (`random()`, `clock_timestamp()`) only read, and the few that write are listed by name.
pub const VOLATILE_FUNCTIONS_SQL: &str = "SELECT n.nspname::text, p.proname::text \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE p.provolatile = 'v' \
     AND n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast')";

/// Reads the VOLATILE user functions of the connected database as `schema.name` strings, ready for
/// [`FunctionRules::with_volatile`].
pub async fn load_volatile(
    client: &tokio_postgres::Client,
) -> Result<HashSet<String>, tokio_postgres::Error> {
    let rows = client.query(VOLATILE_FUNCTIONS_SQL, &[]).await?;
    let mut out = HashSet::with_capacity(rows.len());
    for row in rows {
        let schema: String = row.try_get(0)?;
        let name: String = row.try_get(1)?;
        out.insert(format!("{schema}.{name}"));
    }
    Ok(out)
}

/// Whether any user function's body names `synchronous_commit` (a `SET LOCAL`, a `set_config(..., true)`):
/// calling it can make the caller's commit asynchronous without the request naming the setting. A body in
/// SQL-standard form (`BEGIN ATOMIC`, `RETURN`) is stored parsed, with an empty `prosrc`, so it is read back
/// as text. A function's own `SET` clause (`proconfig`) is not searched: PostgreSQL restores the setting
/// when the function returns, so the commit keeps the caller's.
pub const COMMIT_MODE_FUNCTIONS_SQL: &str = "SELECT EXISTS (SELECT FROM pg_catalog.pg_proc p \
     JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
     AND CASE WHEN p.prosrc = '' THEN pg_catalog.pg_get_functiondef(p.oid) ELSE p.prosrc END \
     ILIKE '%synchronous\\_commit%')";

/// Reads [`COMMIT_MODE_FUNCTIONS_SQL`]'s answer for the connected database.
pub async fn load_sets_commit_mode(client: &tokio_postgres::Client) -> Result<bool, tokio_postgres::Error> {
    client.query_one(COMMIT_MODE_FUNCTIONS_SQL, &[]).await?.try_get(0)
}

/// Lists the user functions and procedures whose body may leave state in the calling session, as `(nspname
/// text, proname text, body text)`: candidates only, those whose body names `set_config`, a temporary object,
/// a session-level advisory lock, LISTEN or PREPARE, or has a SET or RESET where a statement (or a string) may
/// begin; the classifier then reads them (`classify::leaves_session_state`). A SQL-standard body (`BEGIN
/// ATOMIC`, `RETURN`) is stored parsed, with an empty `prosrc`, and read back as text.
pub const SESSION_STATE_FUNCTIONS_SQL: &str = "SELECT n.nspname::text, p.proname::text, b.body \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     CROSS JOIN LATERAL (SELECT CASE WHEN p.prosrc = '' THEN pg_catalog.pg_get_functiondef(p.oid) \
     ELSE p.prosrc END AS body) b \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
     AND b.body ~* '(set_config|temp|advisory_lock|listen|prepare\
     |(^|[;''$(]|\\m(begin|then|else|loop))\\s*(re)?set\\s)'";

/// Lists the user functions and procedures whose body names any of `$1` (ILIKE patterns, one per name), as
/// [`SESSION_STATE_FUNCTIONS_SQL`] does: the candidates for callers of functions that leave session state,
/// which the classifier confirms (`classify::calls_any`).
pub const CALLERS_SQL: &str = "SELECT n.nspname::text, p.proname::text, b.body \
     FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
     CROSS JOIN LATERAL (SELECT CASE WHEN p.prosrc = '' THEN pg_catalog.pg_get_functiondef(p.oid) \
     ELSE p.prosrc END AS body) b \
     WHERE n.nspname NOT IN ('pg_catalog', 'information_schema', 'pg_toast') \
     AND b.body ILIKE ANY($1::text[])";

/// Reads [`CALLERS_SQL`]'s candidates for bodies that may call one of `names`, as `(schema, name, body)`.
pub async fn load_caller_candidates(
    client: &tokio_postgres::Client,
    names: &[String],
) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
    let patterns: Vec<String> = names
        .iter()
        .map(|n| format!("%{}%", crate::protocol::quote::escape_like(n)))
        .collect();
    let rows = client.query(CALLERS_SQL, &[&patterns]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    Ok(out)
}

/// Reads [`SESSION_STATE_FUNCTIONS_SQL`]'s candidates as `(schema, name, body)`.
pub async fn load_session_candidates(
    client: &tokio_postgres::Client,
) -> Result<Vec<(String, String, String)>, tokio_postgres::Error> {
    let rows = client.query(SESSION_STATE_FUNCTIONS_SQL, &[]).await?;
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        out.push((row.try_get(0)?, row.try_get(1)?, row.try_get(2)?));
    }
    Ok(out)
}

/// Lists the relations a hot standby refuses to read ("cannot access temporary or unlogged relations during
/// recovery") as `(nspname text, relname text)`: unlogged tables and sequences, every table that inherits
/// from one or is partitioned over one (its scans reach the unlogged child), and every view over any of
/// those, transitively. A materialized view stores its own logged rows, so it is not among them.
pub const UNLOGGED_RELATIONS_SQL: &str = "WITH RECURSIVE unlogged(oid) AS ( \
     SELECT c.oid FROM pg_catalog.pg_class c \
     WHERE c.relpersistence = 'u' AND c.relkind IN ('r', 'p', 'S') \
     UNION \
     SELECT e.reader FROM unlogged u JOIN ( \
     SELECT i.inhparent AS reader, i.inhrelid AS read FROM pg_catalog.pg_inherits i \
     UNION ALL \
     SELECT r.ev_class, d.refobjid FROM pg_catalog.pg_depend d \
     JOIN pg_catalog.pg_rewrite r ON r.oid = d.objid \
     JOIN pg_catalog.pg_class v ON v.oid = r.ev_class AND v.relkind = 'v' \
     WHERE d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass \
     AND d.refclassid = 'pg_catalog.pg_class'::pg_catalog.regclass \
     ) e ON e.read = u.oid \
     ) \
     SELECT n.nspname::text, c.relname::text FROM unlogged u \
     JOIN pg_catalog.pg_class c ON c.oid = u.oid \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace";

/// Reads the relations of the connected database that only the primary can read (see
/// [`UNLOGGED_RELATIONS_SQL`]) as `(schema, name)` pairs, ready for [`FunctionRules::with_unlogged`].
pub async fn load_unlogged(
    client: &tokio_postgres::Client,
) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
    load_relations(client, UNLOGGED_RELATIONS_SQL).await
}

/// Lists the database's sequences as `(nspname text, relname text)`. A standby reads a sequence's state as
/// last logged, and a primary logs it up to 32 values ahead of what `nextval` has given: `last_value`
/// read on a replica runs ahead of the primary's.
pub const SEQUENCES_SQL: &str = "SELECT n.nspname::text, c.relname::text FROM pg_catalog.pg_class c \
     JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'S'";

/// Reads [`SEQUENCES_SQL`]'s answer as `(schema, name)` pairs, ready for [`FunctionRules::with_sequences`].
pub async fn load_sequences(
    client: &tokio_postgres::Client,
) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
    load_relations(client, SEQUENCES_SQL).await
}

async fn load_relations(
    client: &tokio_postgres::Client,
    sql: &str,
) -> Result<HashSet<(String, String)>, tokio_postgres::Error> {
    let rows = client.query(sql, &[]).await?;
    let mut out = HashSet::with_capacity(rows.len());
    for row in rows {
        out.insert((row.try_get(0)?, row.try_get(1)?));
    }
    Ok(out)
}

/// Built-in functions whose effects live on the node that runs them: sequences (including the session's
/// `currval`/`lastval`, which only the primary's session has), advisory locks, transaction ids, NOTIFY,
/// settings, large objects, WAL and replication-slot control, backend signalling, statistics resets,
/// backups, promotion and remote writes.
const BUILTIN_WRITE: &[&str] = &[
    "nextval",
    "setval",
    "currval",
    "lastval",
    "txid_current",
    "txid_current_if_assigned",
    "pg_current_xact_id",
    "pg_current_xact_id_if_assigned",
    "pg_notify",
    "set_config",
    "lowrite",
    "loread",
    "pg_switch_wal",
    "pg_create_restore_point",
    "pg_drop_replication_slot",
    "pg_replication_slot_advance",
    "pg_logical_emit_message",
    "pg_logical_slot_get_changes",
    "pg_logical_slot_get_binary_changes",
    "pg_terminate_backend",
    "pg_cancel_backend",
    "pg_reload_conf",
    "pg_rotate_logfile",
    "pg_backup_start",
    "pg_backup_stop",
    "pg_start_backup",
    "pg_stop_backup",
    "pg_promote",
    // A standby's replay, paused or resumed: a primary refuses both.
    "pg_wal_replay_pause",
    "pg_wal_replay_resume",
    "pg_import_system_collations",
    "dblink_exec",
    "pg_file_write",
    "pg_file_rename",
    "pg_file_unlink",
    "pg_file_sync",
];

/// Prefixes of built-in write families (`pg_advisory_lock`, `pg_try_advisory_xact_lock`, `lo_import`,
/// `pg_stat_reset_shared`, `pg_replication_origin_create`, ...).
const BUILTIN_WRITE_PREFIXES: &[&str] = &[
    "pg_advisory_",
    "pg_try_advisory_",
    "lo_",
    "pg_stat_reset",
    "pg_replication_origin_",
];

/// Whether `name` is one of PostgreSQL's built-in functions that write or hold primary-only state.
fn builtin_may_write(name: &str) -> bool {
    if BUILTIN_WRITE.contains(&name) || BUILTIN_WRITE_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return true;
    }
    // pg_create_physical_replication_slot, pg_create_logical_replication_slot, pg_copy_*_replication_slot
    (name.starts_with("pg_create_") || name.starts_with("pg_copy_")) && name.ends_with("_replication_slot")
}

/// Whether `name` takes a session-level advisory lock, which lives as long as the backend session
/// and so pins the client to the node that granted it (the `_xact_` variants end with the transaction).
pub fn is_session_advisory_lock(name: &str) -> bool {
    matches!(
        name,
        "pg_advisory_lock"
            | "pg_advisory_lock_shared"
            | "pg_try_advisory_lock"
            | "pg_try_advisory_lock_shared"
    )
}

/// Relations as `(schema, name)` pairs, each stored as the catalog spells it and lower-cased.
fn relation_names(relations: HashSet<(String, String)>) -> NameSet {
    let mut names = NameSet::default();
    for (schema, name) in relations {
        names.insert(Some(schema.to_lowercase()), name.to_lowercase());
        names.insert(Some(schema), name);
    }
    names
}

/// A set of function names, some qualified by schema.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct NameSet {
    /// Names listed without a schema: they match a call in any schema.
    any_schema: HashSet<String>,
    /// Names listed as `schema.name`, keyed by name.
    qualified: HashMap<String, HashSet<String>>,
}

impl NameSet {
    fn insert(&mut self, schema: Option<String>, name: String) {
        match schema {
            Some(schema) => {
                self.qualified.entry(name).or_default().insert(schema);
            }
            None => {
                self.any_schema.insert(name);
            }
        }
    }

    /// A listing matches a call when the names agree and the schemas do not contradict each other: an
    /// unqualified call may resolve to any schema on the search path.
    fn matches(&self, schema: Option<&str>, name: &str) -> bool {
        if self.any_schema.contains(name) {
            return true;
        }
        match (self.qualified.get(name), schema) {
            (Some(_), None) => true,
            (Some(schemas), Some(s)) => schemas.contains(s),
            (None, _) => false,
        }
    }

    /// Most databases have no such function: the common answer costs no hashing.
    fn is_empty(&self) -> bool {
        self.any_schema.is_empty() && self.qualified.is_empty()
    }

    /// Only listings that name `schema` explicitly.
    fn matches_exactly(&self, schema: &str, name: &str) -> bool {
        self.qualified.get(name).is_some_and(|s| s.contains(schema))
    }
}

/// Folds one part of a configured name like an SQL identifier: `"Quoted"` keeps its case, anything
/// else is lower-cased.
fn config_part(part: &str) -> String {
    let part = part.trim();
    match part.strip_prefix('"').and_then(|p| p.strip_suffix('"')) {
        Some(quoted) => quoted.replace("\"\"", "\""),
        None => part.to_lowercase(),
    }
}

/// Splits `schema.name` (or `name`) at the first dot outside double quotes.
fn split_qualified(entry: &str) -> (Option<&str>, &str) {
    let mut in_quotes = false;
    for (i, c) in entry.char_indices() {
        match c {
            '"' => in_quotes = !in_quotes,
            '.' if !in_quotes => return (Some(&entry[..i]), &entry[i + 1..]),
            _ => {}
        }
    }
    (None, entry)
}

fn config_names(list: &[String]) -> NameSet {
    let mut set = NameSet::default();
    for entry in list {
        // Tolerate `nextval()` written the way it is called.
        let entry = entry.trim();
        let entry = entry.strip_suffix("()").unwrap_or(entry);
        if entry.is_empty() {
            continue;
        }
        let (schema, name) = split_qualified(entry);
        set.insert(schema.map(config_part), config_part(name));
    }
    set
}

/// The catalog rules of one database: what the configuration lists say, plus its volatile functions and
/// the relations only the primary can read.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FunctionRules {
    write: NameSet,
    read_only: NameSet,
    volatile: NameSet,
    /// Unlogged relations (and what reads them), by `schema.name`.
    unlogged: NameSet,
    /// Sequences, by `schema.name` (see [`SEQUENCES_SQL`]).
    sequences: NameSet,
    /// Some function's body names `synchronous_commit` (see [`COMMIT_MODE_FUNCTIONS_SQL`]).
    sets_commit_mode: bool,
    /// Functions and procedures whose body leaves state in the calling session (see
    /// [`SESSION_STATE_FUNCTIONS_SQL`]), by `schema.name`.
    session_state: NameSet,
}

impl FunctionRules {
    /// Rules from `routing.write_functions` and `routing.read_only_functions`. Entries are `name` or
    /// `schema.name`, matched case-insensitively (a part written in double quotes keeps its case).
    pub fn new(write_functions: &[String], read_only_functions: &[String]) -> FunctionRules {
        FunctionRules {
            write: config_names(write_functions),
            read_only: config_names(read_only_functions),
            volatile: NameSet::default(),
            unlogged: NameSet::default(),
            sequences: NameSet::default(),
            sets_commit_mode: false,
            session_state: NameSet::default(),
        }
    }

    /// A copy of these rules with the database's VOLATILE user functions (as `schema.name` or `name`,
    /// see [`load_volatile`]) replacing any set loaded before.
    ///
    /// Each is stored lower-cased as well as exactly as the catalog spells it, so both an unquoted call
    /// and a quoted call of a mixed-case function are recognised; a qualified entry also matches an
    /// unqualified call, because the search path may resolve to it.
    pub fn with_volatile(&self, volatile_user: HashSet<String>) -> FunctionRules {
        let mut volatile = NameSet::default();
        for entry in &volatile_user {
            let (schema, name) = split_qualified(entry);
            volatile.insert(schema.map(str::to_owned), name.to_owned());
            volatile.insert(schema.map(str::to_lowercase), name.to_lowercase());
        }
        FunctionRules {
            volatile,
            ..self.clone()
        }
    }

    /// A copy of these rules with the database's unlogged relations (see [`load_unlogged`]) replacing any
    /// set loaded before. Like volatile functions, each is stored as the catalog spells it and lower-cased.
    pub fn with_unlogged(&self, relations: HashSet<(String, String)>) -> FunctionRules {
        FunctionRules {
            unlogged: relation_names(relations),
            ..self.clone()
        }
    }

    /// A copy of these rules with the database's sequences (see [`load_sequences`]) replacing any set
    /// loaded before, stored as unlogged relations are.
    pub fn with_sequences(&self, relations: HashSet<(String, String)>) -> FunctionRules {
        FunctionRules {
            sequences: relation_names(relations),
            ..self.clone()
        }
    }

    /// A copy of these rules that says whether some function's body names `synchronous_commit`.
    pub fn with_commit_mode(&self, sets_commit_mode: bool) -> FunctionRules {
        FunctionRules {
            sets_commit_mode,
            ..self.clone()
        }
    }

    /// A copy of these rules with the functions and procedures whose body leaves state in the calling session
    /// replacing any set loaded before, stored as unlogged relations are.
    pub fn with_session_functions(&self, functions: HashSet<(String, String)>) -> FunctionRules {
        FunctionRules {
            session_state: relation_names(functions),
            ..self.clone()
        }
    }

    /// Whether calling `schema.name` (schema as written in the call, if any) may leave state in the session
    /// (a setting, a temporary table, a lock...), matched as [`FunctionRules::is_unlogged`] matches. A call qualified with
    /// `pg_catalog` is a built-in.
    pub fn leaves_session_state(&self, schema: Option<&str>, name: &str) -> bool {
        !self.session_state.is_empty()
            && schema != Some("pg_catalog")
            && self.session_state.matches(schema, name)
    }

    /// Whether calling some function of the database may make a commit asynchronous: then every commit of
    /// its sessions may be.
    pub fn may_set_commit_mode(&self) -> bool {
        self.sets_commit_mode
    }

    /// Whether a name written as `schema.name` (or just `name`) may be a sequence, matched as
    /// [`FunctionRules::is_unlogged`] matches.
    pub fn is_sequence(&self, schema: Option<&str>, name: &str) -> bool {
        self.sequences.matches(schema, name)
    }

    /// Whether the database has unlogged relations at all: when not, statements are not scanned for them.
    pub fn has_unlogged(&self) -> bool {
        !self.unlogged.qualified.is_empty()
    }

    /// Whether a name written as `schema.name` (or just `name`) may be an unlogged relation. An unqualified
    /// name matches one in any schema, since the search path may resolve to it.
    pub fn is_unlogged(&self, schema: Option<&str>, name: &str) -> bool {
        self.unlogged.matches(schema, name)
    }

    /// Whether calling `schema.name` (schema as written in the call, if any) may write: it is in
    /// `write_functions`, in the built-in write list, or a VOLATILE user function — unless
    /// `read_only_functions` lists it, which wins over both.
    ///
    /// A call qualified with `pg_catalog` is judged by the built-in list alone, since user functions
    /// and unqualified configuration entries cannot live there; only configuration entries that name
    /// `pg_catalog.` explicitly override it.
    pub fn may_write(&self, schema: Option<&str>, name: &str) -> bool {
        if schema == Some("pg_catalog") {
            if self.read_only.matches_exactly("pg_catalog", name) {
                return false;
            }
            return self.write.matches_exactly("pg_catalog", name) || builtin_may_write(name);
        }
        if self.read_only.matches(schema, name) {
            return false;
        }
        self.write.matches(schema, name) || builtin_may_write(name) || self.volatile.matches(schema, name)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn strings(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| (*s).to_owned()).collect()
    }

    fn rules() -> FunctionRules {
        FunctionRules::new(
            &strings(&["my_writer", "App.Stamp"]),
            &strings(&["read_only_but_volatile", "nextval"]),
        )
        .with_volatile(
            [
                "public.bump_counter",
                "audit_log",
                "read_only_but_volatile",
                "public.MixedCase",
            ]
            .iter()
            .map(|s| (*s).to_owned())
            .collect(),
        )
    }

    #[test]
    fn builtin_list() {
        let r = FunctionRules::default();
        for f in [
            "nextval",
            "setval",
            "currval",
            "lastval",
            "pg_advisory_lock",
            "pg_advisory_xact_lock_shared",
            "pg_try_advisory_lock",
            "pg_advisory_unlock_all",
            "txid_current",
            "pg_current_xact_id_if_assigned",
            "pg_notify",
            "set_config",
            "lo_import",
            "lo_unlink",
            "lowrite",
            "loread",
            "pg_switch_wal",
            "pg_create_logical_replication_slot",
            "pg_create_physical_replication_slot",
            "pg_drop_replication_slot",
            "pg_terminate_backend",
            "pg_stat_reset",
            "pg_stat_reset_shared",
            "pg_backup_start",
            "pg_promote",
            "dblink_exec",
        ] {
            assert!(r.may_write(None, f), "{f} should write");
            assert!(r.may_write(Some("pg_catalog"), f), "pg_catalog.{f} should write");
        }
        for f in [
            "now",
            "random",
            "generate_series",
            "pg_sequence_last_value",
            "count",
            "NEXTVAL",
            "pg_sleep",
        ] {
            assert!(!r.may_write(None, f), "{f} should read");
        }
    }

    #[test]
    fn configured_and_volatile() {
        let r = rules();
        assert!(r.may_write(None, "my_writer"));
        assert!(r.may_write(Some("any_schema"), "my_writer"));
        assert!(r.may_write(Some("app"), "stamp"));
        assert!(r.may_write(None, "stamp"));
        assert!(!r.may_write(Some("other"), "stamp"));
        assert!(r.may_write(None, "bump_counter"));
        assert!(r.may_write(Some("public"), "bump_counter"));
        assert!(!r.may_write(Some("other"), "bump_counter"));
        assert!(r.may_write(None, "audit_log"));
        assert!(r.may_write(Some("x"), "audit_log"));
        // Both the catalog spelling (quoted call) and the folded one match.
        assert!(r.may_write(None, "MixedCase"));
        assert!(r.may_write(None, "mixedcase"));
        assert!(!r.may_write(None, "harmless"));
    }

    #[test]
    fn read_only_wins_except_in_pg_catalog() {
        let r = rules();
        assert!(!r.may_write(None, "read_only_but_volatile"));
        // `nextval` is listed read-only, which overrides the built-in list for unqualified calls...
        assert!(!r.may_write(None, "nextval"));
        // ...but pg_catalog.nextval is judged by the built-in list alone.
        assert!(r.may_write(Some("pg_catalog"), "nextval"));
        let explicit = FunctionRules::new(&[], &strings(&["pg_catalog.set_config"]));
        assert!(!explicit.may_write(Some("pg_catalog"), "set_config"));
        assert!(!explicit.may_write(None, "set_config"));
        // Configured and volatile names do not reach into pg_catalog.
        assert!(!r.may_write(Some("pg_catalog"), "my_writer"));
        assert!(!r.may_write(Some("pg_catalog"), "audit_log"));
    }

    #[test]
    fn config_names_fold_case_and_keep_quotes() {
        let r = FunctionRules::new(&strings(&[" Public.Do_Write() ", "\"Exact\"", ""]), &[]);
        assert!(r.may_write(Some("public"), "do_write"));
        assert!(r.may_write(None, "Exact"));
        assert!(!r.may_write(None, "exact"));
    }

    #[test]
    fn with_volatile_replaces() {
        let r = rules().with_volatile(HashSet::new());
        assert!(!r.may_write(None, "audit_log"));
        assert!(r.may_write(None, "my_writer"));
    }

    #[test]
    fn sequences() {
        let pair = |s: &str, n: &str| (s.to_owned(), n.to_owned());
        let r = rules().with_sequences([pair("public", "Order_Seq")].into_iter().collect());
        assert!(r.is_sequence(None, "order_seq"));
        assert!(r.is_sequence(Some("public"), "Order_Seq"));
        assert!(!r.is_sequence(Some("other"), "order_seq"));
        assert!(
            !r.is_unlogged(None, "order_seq"),
            "a sequence is not an unlogged relation"
        );
    }

    #[test]
    fn unlogged_relations() {
        let pair = |s: &str, n: &str| (s.to_owned(), n.to_owned());
        let r = rules().with_unlogged(
            [pair("public", "cache"), pair("App", "Hits")]
                .into_iter()
                .collect(),
        );
        assert!(r.has_unlogged());
        assert!(r.is_unlogged(None, "cache"));
        assert!(r.is_unlogged(Some("public"), "cache"));
        assert!(!r.is_unlogged(Some("other"), "cache"));
        assert!(r.is_unlogged(None, "Hits"));
        assert!(r.is_unlogged(Some("App"), "Hits"));
        assert!(r.is_unlogged(Some("app"), "hits"));
        assert!(!r.is_unlogged(None, "logged"));
        // Functions and relations do not mix, and a reload replaces the set.
        assert!(!r.may_write(None, "cache"));
        assert!(!r.is_unlogged(None, "audit_log"));
        let r = r.with_unlogged(HashSet::new());
        assert!(!r.has_unlogged());
        assert!(!r.is_unlogged(None, "cache"));
        assert!(r.may_write(None, "audit_log"));
    }

    #[test]
    fn session_advisory_locks() {
        assert!(is_session_advisory_lock("pg_advisory_lock"));
        assert!(is_session_advisory_lock("pg_try_advisory_lock_shared"));
        assert!(!is_session_advisory_lock("pg_advisory_xact_lock"));
        assert!(!is_session_advisory_lock("pg_try_advisory_xact_lock"));
        assert!(!is_session_advisory_lock("pg_advisory_unlock"));
    }

    #[test]
    fn volatile_sql_excludes_system_schemas() {
        assert!(VOLATILE_FUNCTIONS_SQL.contains("provolatile = 'v'"));
        assert!(VOLATILE_FUNCTIONS_SQL.contains("'pg_catalog', 'information_schema', 'pg_toast'"));
        assert!(UNLOGGED_RELATIONS_SQL.contains("relpersistence = 'u'"));
    }
}
