//! Transaction and session-setting statements: BEGIN / START TRANSACTION and their modes, SET in all
//! its forms (including SET TRANSACTION and SET SESSION CHARACTERISTICS), RESET and DISCARD, read into
//! the changes a session replays on every backend it uses.

use super::stmt::Stmt;
use super::{Rule, Savepoint, SessionChange, TxStart, Verdict};
use crate::router::split::TokKind;

/// A transaction mode of BEGIN / START TRANSACTION / SET TRANSACTION, with its token range.
struct Mode {
    kind: ModeKind,
    from: usize,
    to: usize,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum ModeKind {
    Isolation { serializable: bool },
    Access(TxStart),
    Deferrable,
}

/// Parses a transaction mode list from `i` to the end; `None` if anything else is there.
fn tx_modes(s: Stmt<'_>, mut i: usize) -> Option<Vec<Mode>> {
    let mut out = Vec::new();
    while i < s.len() {
        if s.punct(i, ",") && !out.is_empty() {
            i += 1;
            continue;
        }
        let from = i;
        let kind = if s.kw(i, "ISOLATION") && s.kw(i + 1, "LEVEL") {
            i += 2;
            let serializable = s.kw(i, "SERIALIZABLE");
            if serializable {
                i += 1;
            } else if (s.kw(i, "REPEATABLE") && s.kw(i + 1, "READ"))
                || (s.kw(i, "READ") && (s.kw(i + 1, "COMMITTED") || s.kw(i + 1, "UNCOMMITTED")))
            {
                i += 2;
            } else {
                return None;
            }
            ModeKind::Isolation { serializable }
        } else if s.kw(i, "READ") && s.kw(i + 1, "ONLY") {
            i += 2;
            ModeKind::Access(TxStart::ReadOnly)
        } else if s.kw(i, "READ") && s.kw(i + 1, "WRITE") {
            i += 2;
            ModeKind::Access(TxStart::ReadWrite)
        } else if s.kw(i, "DEFERRABLE") {
            i += 1;
            ModeKind::Deferrable
        } else if s.kw(i, "NOT") && s.kw(i + 1, "DEFERRABLE") {
            i += 2;
            ModeKind::Deferrable
        } else {
            return None;
        };
        out.push(Mode { kind, from, to: i });
    }
    Some(out)
}

/// Whether the modes ask for serializable isolation, which a hot standby refuses ("cannot use serializable
/// mode in a hot standby"): such a transaction runs on the primary, even when read-only.
fn serializable(modes: &[Mode]) -> bool {
    modes
        .iter()
        .any(|m| m.kind == ModeKind::Isolation { serializable: true })
}

fn access_mode(modes: &[Mode]) -> Option<TxStart> {
    modes.iter().rev().find_map(|m| match m.kind {
        ModeKind::Access(access) => Some(access),
        _ => None,
    })
}

pub(super) fn begin(s: Stmt<'_>) -> Verdict {
    let from = if s.kw(0, "START") {
        if !s.kw(1, "TRANSACTION") {
            return Verdict::unparsed();
        }
        2
    } else if s.kw(1, "WORK") || s.kw(1, "TRANSACTION") {
        2
    } else {
        1
    };
    let Some(modes) = tx_modes(s, from) else {
        return Verdict::unparsed();
    };
    let mode = access_mode(&modes).unwrap_or(TxStart::ReadWrite);
    let rule = match mode {
        TxStart::ReadOnly => Rule::ReadOnlyTransaction,
        TxStart::ReadWrite => Rule::TransactionBegin,
    };
    Verdict {
        begin: Some(mode),
        serializable: serializable(&modes),
        ..Verdict::replica(rule)
    }
}

/// SET in all its forms, read lexically so that every form the server accepts can be replayed.
pub(super) fn set(s: Stmt<'_>) -> Verdict {
    let mut i = 1;
    let mut local = false;
    if s.kw(i, "LOCAL") {
        local = true;
        i += 1;
    } else if s.kw(i, "SESSION") && !s.kw(i + 1, "CHARACTERISTICS") && !s.kw(i + 1, "AUTHORIZATION") {
        i += 1;
    }

    if s.kw(i, "TRANSACTION") {
        let modes = if s.kw(i + 1, "SNAPSHOT") && s.len() == i + 3 {
            Some(Vec::new())
        } else {
            tx_modes(s, i + 1)
        };
        return match modes {
            // Outside a transaction it only warns on the primary, where a standby would refuse it.
            Some(modes) if serializable(&modes) => Verdict {
                set_transaction: Some(access_mode(&modes)),
                serializable: true,
                ..Verdict::primary(Rule::SerializableTransaction)
            },
            Some(modes) if !modes.is_empty() || s.kw(i + 1, "SNAPSHOT") => Verdict {
                set_transaction: Some(access_mode(&modes)),
                ..Verdict::replica(Rule::SessionState("SET TRANSACTION"))
            },
            _ => Verdict::unparsed(),
        };
    }
    if s.kw(i, "SESSION") && s.kw(i + 1, "CHARACTERISTICS") && s.kw(i + 2, "AS") && s.kw(i + 3, "TRANSACTION")
    {
        return session_characteristics(s, i + 4, local);
    }
    if s.kw(i, "CONSTRAINTS") {
        return Verdict::replica(Rule::SessionState("SET CONSTRAINTS"));
    }

    let (name, value, value_optional) = if s.kw(i, "TIME") && s.kw(i + 1, "ZONE") {
        ("timezone".to_owned(), i + 2, false)
    } else if s.kw(i, "NAMES") {
        ("client_encoding".to_owned(), i + 1, true)
    } else if s.kw(i, "ROLE") {
        ("role".to_owned(), i + 1, false)
    } else if s.kw(i, "SESSION") && s.kw(i + 1, "AUTHORIZATION") {
        ("session_authorization".to_owned(), i + 2, false)
    } else if s.kw(i, "SCHEMA") {
        ("search_path".to_owned(), i + 1, false)
    } else if s.kw(i, "XML") && s.kw(i + 1, "OPTION") {
        ("xmloption".to_owned(), i + 2, false)
    } else {
        let Some(end) = s.skip_name(i) else {
            return Verdict::unparsed();
        };
        let name = guc_name(s.range(i, end));
        if s.kw(end, "TO") || s.op(end, "=") {
            (name, end + 1, false)
        } else if s.kw(end, "FROM") && s.kw(end + 1, "CURRENT") && s.len() == end + 2 {
            (name, end + 2, true)
        } else {
            return Verdict::unparsed();
        }
    };
    if value >= s.len() && !value_optional {
        return Verdict::unparsed();
    }
    if local {
        return Verdict::replica(Rule::SessionState("SET LOCAL"));
    }
    // `SET x TO DEFAULT` (also `SET NAMES` alone, `SET TIME ZONE LOCAL`) is RESET: back to the value the session
    // connected with, which pgfleet's connections to the nodes do not share.
    let to_default = (value >= s.len() && value_optional)
        || (value + 1 == s.len()
            && (s.kw(value, "DEFAULT") || (name == "timezone" && s.kw(value, "LOCAL")))
            && name != "session_authorization");
    let statement = s.source().to_owned();
    Verdict::replica(Rule::SessionState("SET")).change(if to_default {
        SessionChange::Reset { name, statement }
    } else {
        SessionChange::Set { name, statement }
    })
}

/// Parameter names are case-insensitive in PostgreSQL, quoted or not.
fn guc_name(name: Stmt<'_>) -> String {
    (0..name.len())
        .filter(|&i| name.is_name(i))
        .map(|i| name.ident(i).to_lowercase())
        .collect::<Vec<_>>()
        .join(".")
}

/// `SET SESSION CHARACTERISTICS AS TRANSACTION ...` sets up to three defaults at once. Each becomes its
/// own change under the parameter it really sets, replayed by a statement that sets only that one, so a
/// later `SET default_transaction_read_only` or `RESET default_transaction_isolation` replaces exactly
/// the part it overrides.
fn session_characteristics(s: Stmt<'_>, from: usize, local: bool) -> Verdict {
    let modes = match tx_modes(s, from) {
        Some(modes) if !modes.is_empty() => modes,
        _ => return Verdict::unparsed(),
    };
    let mut verdict = Verdict::replica(Rule::SessionState("SET SESSION CHARACTERISTICS"));
    if local {
        return verdict;
    }
    for mode in modes {
        let name = match mode.kind {
            ModeKind::Isolation { .. } => "default_transaction_isolation",
            ModeKind::Access(_) => "default_transaction_read_only",
            ModeKind::Deferrable => "default_transaction_deferrable",
        };
        let words: Vec<String> = (mode.from..mode.to)
            .map(|j| s.text(j).to_ascii_uppercase())
            .collect();
        let statement = format!("SET SESSION CHARACTERISTICS AS TRANSACTION {}", words.join(" "));
        verdict = verdict.change(SessionChange::Set {
            name: name.to_owned(),
            statement,
        });
    }
    verdict
}

/// Settings whose value tells a primary from a hot standby (`SHOW ALL` lists them too). Their answer must be
/// the primary's, like the `in_hot_standby` and `default_transaction_read_only` the greeting reports: clients
/// (libpq's `target_session_attrs`, pgjdbc's `targetServerType`) ask them to decide whether they reached a
/// server that takes writes.
pub(super) const ROLE_SETTINGS: &[&str] = &[
    "transaction_read_only",
    "in_hot_standby",
    "default_transaction_read_only",
];

/// `SHOW name`: session state, answered by a replica, except for the settings that tell the server's role.
pub(super) fn show(s: Stmt<'_>) -> Verdict {
    if s.skip_name(1) == Some(s.len()) {
        let name = guc_name(s.from(1));
        if name == "all" || ROLE_SETTINGS.contains(&name.as_str()) {
            return Verdict::primary(Rule::ServerRole);
        }
    }
    Verdict::replica(Rule::SessionState("SHOW"))
}

pub(super) fn reset(s: Stmt<'_>) -> Verdict {
    let verdict = Verdict::replica(Rule::SessionState("RESET"));
    let name = if s.kw(1, "ALL") && s.len() == 2 {
        return verdict.change(SessionChange::ResetAll);
    } else if s.kw(1, "TIME") && s.kw(2, "ZONE") && s.len() == 3 {
        "timezone".to_owned()
    } else if s.kw(1, "SESSION") && s.kw(2, "AUTHORIZATION") && s.len() == 3 {
        "session_authorization".to_owned()
    } else if s.kw(1, "TRANSACTION") && s.kw(2, "ISOLATION") && s.kw(3, "LEVEL") && s.len() == 4 {
        // Transaction-scoped, like SET TRANSACTION.
        return verdict;
    } else if s.skip_name(1) == Some(s.len()) {
        guc_name(s.from(1))
    } else {
        return Verdict::unparsed();
    };
    verdict.change(SessionChange::Reset {
        name,
        statement: s.source().to_owned(),
    })
}

pub(super) fn discard(s: Stmt<'_>) -> Verdict {
    if s.len() != 2 {
        return Verdict::unparsed();
    }
    let verdict = Verdict::replica(Rule::SessionState("DISCARD"));
    if s.kw(1, "ALL") {
        verdict.change(SessionChange::ResetAll)
    } else if s.kw_in(1, &["PLANS", "SEQUENCES", "TEMP", "TEMPORARY"]).is_some() {
        verdict
    } else {
        Verdict::unparsed()
    }
}

/// How a session-wide `set_config()` is replayed: by the same call, its constants as the client wrote them
/// (a `SET` of the same value would read a list such as `search_path`'s as one quoted name).
pub(super) fn config_statement(name: &str, value: &str) -> String {
    format!("{CONFIG_CALL}{name}, {value}, false)")
}

const CONFIG_CALL: &str = "SELECT pg_catalog.set_config(";

/// The value a SET statement (or `set_config()` call, [`config_statement`]) that pgfleet recorded gives its
/// parameter, as the server reads it: a string constant unquoted, a name as written; `None` for DEFAULT or
/// no value (`SET NAMES`), which mean the connection's own default. For the one setting pgfleet itself
/// reads, `client_encoding`.
pub fn set_value(statement: &str) -> Option<String> {
    if statement.starts_with(CONFIG_CALL) {
        let value = super::Lexer::new(statement)
            .filter(|t| t.kind == TokKind::Str)
            .nth(1)?;
        return super::query::string_value(value.text(statement));
    }
    let last = super::Lexer::new(statement)
        .filter(|t| !matches!(t.kind, TokKind::Comment) && t.text(statement) != ";")
        .last()?;
    let text = last.text(statement);
    match last.kind {
        TokKind::Str => {
            let quoted = text.trim_start_matches(|c: char| c.is_ascii_alphabetic());
            let inner = quoted.strip_prefix('\'')?.strip_suffix('\'')?;
            Some(inner.replace("''", "'"))
        }
        TokKind::Word if text.eq_ignore_ascii_case("DEFAULT") || text.eq_ignore_ascii_case("NAMES") => None,
        TokKind::Word | TokKind::QuotedIdent => Some(text.trim_matches('"').to_owned()),
        _ => None,
    }
}

/// SAVEPOINT, RELEASE and ROLLBACK (ending the transaction, or TO a savepoint). They run where the open
/// transaction lives; those that name a savepoint are kept among the transaction's setting changes, since a
/// ROLLBACK TO undoes the changes made after its savepoint on the server.
pub(super) fn savepoint(s: Stmt<'_>) -> Verdict {
    let (kind, name_at) = if s.kw(0, "SAVEPOINT") {
        ("SAVEPOINT", Some(1))
    } else if s.kw(0, "RELEASE") {
        // `RELEASE savepoint` releases one named "savepoint".
        (
            "RELEASE",
            Some(if s.len() == 3 && s.kw(1, "SAVEPOINT") {
                2
            } else {
                1
            }),
        )
    } else {
        let mut i = 1;
        if s.kw(i, "WORK") || s.kw(i, "TRANSACTION") {
            i += 1;
        }
        let to = s.kw(i, "TO").then(|| {
            if s.kw(i + 1, "SAVEPOINT") && s.len() == i + 3 {
                i + 2
            } else {
                i + 1
            }
        });
        ("ROLLBACK", to)
    };
    let verdict = Verdict::replica(Rule::TransactionControl(kind));
    if kind == "ROLLBACK" && name_at.is_none() {
        return verdict.change(SessionChange::EndTransaction);
    }
    let Some(at) = name_at.filter(|&at| at + 1 == s.len() && s.is_name(at)) else {
        // Text the server will refuse.
        return verdict;
    };
    let name = s.ident(at);
    verdict.change(SessionChange::Savepoint(match kind {
        "SAVEPOINT" => Savepoint::Set(name),
        "RELEASE" => Savepoint::Release(name),
        _ => Savepoint::RollbackTo(name),
    }))
}
