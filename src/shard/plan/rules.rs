//! The sharding rules the planner reads: how many shards there are and which tables are split over them,
//! with their key column and its type. Names follow PostgreSQL: unquoted identifiers of a statement fold to
//! lower case, quoted ones keep their case, and a configured name without a schema means `public`.

use crate::config::{Config, ShardKeyType};
use sqlparser::ast::{Ident, ObjectName, ObjectNamePart};

/// One `[[sharded_tables]]` entry, split into its schema and name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardedTable {
    /// The schema as configured, `None` for an unqualified name (which means `public`).
    pub schema: Option<String>,
    /// The table name.
    pub name: String,
    /// The shard key column.
    pub column: String,
    /// How the key's values hash.
    pub key_type: ShardKeyType,
}

impl ShardedTable {
    /// The name as configured, for messages.
    pub fn display(&self) -> String {
        match &self.schema {
            Some(s) => format!("{s}.{}", self.name),
            None => self.name.clone(),
        }
    }

    /// `table.column`, for messages.
    pub fn key_display(&self) -> String {
        format!("{}.{}", self.name, self.column)
    }
}

/// The shard count and the sharded tables of a config.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardingRules {
    /// How many shards the fleet has (at least one).
    pub shards: u32,
    /// The sharded tables; every other table is a reference table, present on every shard.
    pub tables: Vec<ShardedTable>,
}

/// What a table name written in a statement refers to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum TableRef {
    /// The sharded table at that index of [`ShardingRules::tables`].
    Sharded(usize),
    /// A reference table (or any relation not configured as sharded).
    Reference,
    /// An unqualified name that is the name of a sharded table configured in another schema than
    /// `public`: it depends on `search_path`, which pgfleet does not follow.
    Ambiguous(usize),
}

impl ShardingRules {
    /// The rules of `config`: its shard count and `[[sharded_tables]]`.
    pub fn from_config(config: &Config) -> ShardingRules {
        let tables = config
            .sharded_tables
            .iter()
            .map(|t| {
                let (schema, name) = match t.name.split_once('.') {
                    Some((s, n)) => (Some(s.to_owned()), n.to_owned()),
                    None => (None, t.name.clone()),
                };
                ShardedTable {
                    schema,
                    name,
                    column: t.column.clone(),
                    key_type: t.key_type,
                }
            })
            .collect();
        ShardingRules {
            shards: config.shard_count().max(1),
            tables,
        }
    }

    /// What the (folded) `schema.name` or `name` of a statement refers to.
    pub(super) fn resolve(&self, schema: Option<&str>, name: &str) -> TableRef {
        let mut ambiguous = None;
        for (i, t) in self.tables.iter().enumerate() {
            if t.name != name {
                continue;
            }
            let configured = t.schema.as_deref().unwrap_or("public");
            match schema {
                Some(s) if s == configured => return TableRef::Sharded(i),
                Some(_) => {}
                None if configured == "public" => return TableRef::Sharded(i),
                None => ambiguous = Some(i),
            }
        }
        ambiguous.map_or(TableRef::Reference, TableRef::Ambiguous)
    }

    /// What an object name of a statement refers to (`db.schema.name` keeps the last two parts).
    pub(super) fn resolve_object(&self, name: &ObjectName) -> TableRef {
        let parts = name_parts(name);
        match parts.as_slice() {
            [] => TableRef::Reference,
            [n] => self.resolve(None, n),
            [.., s, n] => self.resolve(Some(s), n),
        }
    }

    /// The shard key column of the table `name` refers to, if it is a sharded table (the merge of results
    /// across shards asks).
    pub fn key_of(&self, name: &ObjectName) -> Option<String> {
        match self.resolve_object(name) {
            TableRef::Sharded(i) | TableRef::Ambiguous(i) => Some(self.tables[i].column.clone()),
            TableRef::Reference => None,
        }
    }

    /// Whether `word` (folded) is the name of a sharded table: the lexical check for statements pgfleet
    /// does not parse.
    pub(super) fn names_sharded(&self, word: &str) -> Option<&ShardedTable> {
        self.tables.iter().find(|t| t.name == word)
    }
}

/// An identifier as PostgreSQL reads it: folded to lower case unless quoted.
pub(super) fn fold(ident: &Ident) -> String {
    match ident.quote_style {
        Some(_) => ident.value.clone(),
        None => ident.value.to_lowercase(),
    }
}

/// The folded parts of an object name.
pub(super) fn name_parts(name: &ObjectName) -> Vec<String> {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => fold(i),
            other => other.to_string(),
        })
        .collect()
}
