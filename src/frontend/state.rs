//! What a client session has changed and must carry to every node it uses: its settings (startup parameters
//! and SET/RESET, kept as a compact latest-value-per-name log) and its prepared statements.

use std::collections::{BTreeMap, HashMap};

use bytes::Bytes;

use crate::protocol::messages::{quote_ident, quote_literal};
use crate::router::classify::{Pin, SessionChange, Target};

/// Session settings as a generation-numbered log: a node that has replayed up to generation `g` needs only
/// the entries newer than `g`.
#[derive(Debug, Default)]
pub struct Settings {
    generation: u64,
    reset_all_at: u64,
    entries: BTreeMap<String, (u64, String)>,
}

impl Settings {
    /// The newest generation.
    pub fn generation(&self) -> u64 {
        self.generation
    }

    /// Records a startup parameter as the SET that reproduces it.
    pub fn set_startup(&mut self, name: &str, value: &str) {
        let name = name.to_ascii_lowercase();
        let sql = format!("SET {} TO {}", quote_ident(&name), quote_literal(value));
        self.generation += 1;
        self.entries.insert(name, (self.generation, sql));
    }

    /// Records a SET/RESET the client ran successfully.
    pub fn apply(&mut self, change: &SessionChange) {
        self.generation += 1;
        match change {
            SessionChange::Set { name, statement } | SessionChange::Reset { name, statement } => {
                self.entries
                    .insert(name.clone(), (self.generation, statement.clone()));
            }
            SessionChange::ResetAll => {
                self.entries.clear();
                self.reset_all_at = self.generation;
            }
        }
    }

    /// The statements a node at generation `since` must run to match the session, or None if none.
    pub fn replay_since(&self, since: u64) -> Option<String> {
        if since >= self.generation {
            return None;
        }
        let mut sql = String::new();
        if self.reset_all_at > since {
            sql.push_str("RESET ALL;");
        }
        let mut newer: Vec<&(u64, String)> = self.entries.values().filter(|(g, _)| *g > since).collect();
        newer.sort_by_key(|(g, _)| *g);
        for (_, stmt) in newer {
            sql.push_str(stmt);
            sql.push(';');
        }
        if sql.is_empty() { None } else { Some(sql) }
    }
}

/// A statement the client prepared with Parse, as the proxy needs it to prepare it again elsewhere.
#[derive(Debug, Clone)]
pub struct Statement {
    /// The client's Parse frame, resent verbatim to nodes that lack the statement.
    pub parse: Bytes,
    /// Where executing it may run.
    pub target: Target,
    /// Session state it creates when executed.
    pub pin: Option<Pin>,
    /// Settings it changes when executed.
    pub changes: Vec<SessionChange>,
    /// Distinguishes successive unnamed statements.
    pub id: u64,
}

/// The client's prepared statements by name ("" is the unnamed statement).
#[derive(Debug, Default)]
pub struct Statements {
    by_name: HashMap<String, Statement>,
    next_id: u64,
}

impl Statements {
    /// Records a statement the client parsed.
    pub fn insert(&mut self, name: &str, mut stmt: Statement) -> u64 {
        self.next_id += 1;
        stmt.id = self.next_id;
        self.by_name.insert(name.to_owned(), stmt);
        self.next_id
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

    #[test]
    fn replay_only_what_is_newer() {
        let mut s = Settings::default();
        s.set_startup("application_name", "psql");
        let g1 = s.generation();
        s.apply(&SessionChange::Set {
            name: "search_path".into(),
            statement: "SET search_path TO x".into(),
        });
        assert_eq!(s.replay_since(g1).as_deref(), Some("SET search_path TO x;"));
        assert_eq!(s.replay_since(s.generation()), None);
        s.apply(&SessionChange::Set {
            name: "search_path".into(),
            statement: "SET search_path TO y".into(),
        });
        let all = s.replay_since(0).expect("some");
        assert!(
            all.contains("application_name") && all.contains("TO y") && !all.contains("TO x"),
            "{all}"
        );
        s.apply(&SessionChange::ResetAll);
        assert_eq!(s.replay_since(g1).as_deref(), Some("RESET ALL;"));
    }
}
