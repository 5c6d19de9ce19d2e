//! The sharding keys of the config: which shard each node belongs to (`nodes[i].shard`), which tables are
//! split over the shards (`[[sharded_tables]]`), and the checks that keep a sharded fleet well formed. A file
//! without any of them describes one unsharded fleet, exactly as before sharding existed.

use std::collections::HashSet;
use std::time::Duration;

use serde::Deserialize;

use super::values::de_duration;

use super::{Config, ConfigError, ReplicationMode, Role};

/// `[[sharded_tables]]`: a table whose rows are spread over the shards by the hash of one column.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardedTableConfig {
    /// The table, optionally schema-qualified (`accounts` or `bank.accounts`).
    pub name: String,
    /// The shard key column.
    pub column: String,
    /// The column's type family, which decides how its values hash.
    #[serde(default, rename = "type")]
    pub key_type: ShardKeyType,
}

/// `[sharding]`: how pgfleet runs commits across shards.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShardingConfig {
    /// How often two-phase commit recovery looks for prepared transactions a crash left behind.
    #[serde(default = "default_recovery_interval", deserialize_with = "de_duration")]
    pub recovery_interval: Duration,
}

impl Default for ShardingConfig {
    fn default() -> Self {
        ShardingConfig {
            recovery_interval: default_recovery_interval(),
        }
    }
}

fn default_recovery_interval() -> Duration {
    Duration::from_secs(10)
}

/// `sharded_tables[i].type`: the hash function PostgreSQL's hash partitioning uses for the key column.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ShardKeyType {
    /// smallint, integer or bigint: PostgreSQL hashes the three alike for equal values.
    #[default]
    Integer,
    /// text or varchar (deterministic collations).
    Text,
    /// uuid.
    Uuid,
}

impl ShardKeyType {
    /// The value as written in the config file.
    pub fn as_str(self) -> &'static str {
        match self {
            ShardKeyType::Integer => "integer",
            ShardKeyType::Text => "text",
            ShardKeyType::Uuid => "uuid",
        }
    }
}

impl Config {
    /// Whether any node names a shard: the fleet is sharded and `[[sharded_tables]]` apply.
    pub fn is_sharded(&self) -> bool {
        self.nodes.iter().any(|n| n.shard.is_some())
    }

    /// How many shards the fleet has: one for an unsharded fleet.
    pub fn shard_count(&self) -> u32 {
        self.nodes
            .iter()
            .filter_map(|n| n.shard)
            .max()
            .map_or(1, |m| m + 1)
    }

    /// The shard a node belongs to: 0 in an unsharded fleet.
    pub fn shard_of_node(&self, index: usize) -> u32 {
        self.nodes.get(index).and_then(|n| n.shard).unwrap_or(0)
    }
}

fn invalid(key: impl Into<String>, reason: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.into(),
        reason: reason.into(),
    }
}

/// The shard keys together: all nodes or none name a shard, shards are numbered from 0 without gaps, each
/// has exactly one primary, and sharded tables are named once each and only in a sharded fleet.
pub(super) fn validate_shards(config: &Config) -> Result<(), ConfigError> {
    let mut tables = HashSet::new();
    for (i, t) in config.sharded_tables.iter().enumerate() {
        if t.name.trim().is_empty() {
            return Err(invalid(format!("sharded_tables[{i}].name"), "must not be empty"));
        }
        if t.column.trim().is_empty() {
            return Err(invalid(
                format!("sharded_tables[{i}].column"),
                "must not be empty",
            ));
        }
        if !tables.insert(t.name.to_ascii_lowercase()) {
            return Err(invalid(
                format!("sharded_tables[{i}].name"),
                format!("table `{}` is listed twice", t.name),
            ));
        }
    }
    if config.sharding.recovery_interval.is_zero() {
        return Err(invalid("sharding.recovery_interval", "must be more than 0"));
    }
    if !config.is_sharded() {
        if !config.sharded_tables.is_empty() {
            return Err(invalid(
                "sharded_tables",
                "needs a sharded fleet: give every [[nodes]] entry a `shard` number",
            ));
        }
        return Ok(());
    }
    if let Some(i) = config.nodes.iter().position(|n| n.shard.is_none()) {
        return Err(invalid(
            format!("nodes[{i}].shard"),
            "must be set: once one node names a shard, every node must (replicas name their primary's shard)",
        ));
    }
    if let Some(i) = config.nodes.iter().position(|n| n.role == Role::Auto) {
        return Err(invalid(
            format!("nodes[{i}].role"),
            "\"auto\" is not supported in a sharded fleet yet: name each shard's primary with role = \"primary\"",
        ));
    }
    if config.replication.mode == ReplicationMode::Forward {
        return Err(invalid(
            "replication.mode",
            "forward mode is not supported in a sharded fleet yet: use PostgreSQL's streaming replication \
             for each shard's replicas",
        ));
    }
    for shard in 0..config.shard_count() {
        let primaries: Vec<usize> = (0..config.nodes.len())
            .filter(|i| config.nodes[*i].shard == Some(shard) && config.nodes[*i].role == Role::Primary)
            .collect();
        if primaries.len() != 1 {
            let missing = if config.nodes.iter().any(|n| n.shard == Some(shard)) {
                format!(
                    "shard {shard} has {} nodes with role = \"primary\"",
                    primaries.len()
                )
            } else {
                format!("no node has shard = {shard}: shards are numbered from 0 without gaps")
            };
            return Err(invalid(
                "nodes",
                format!("every shard needs exactly one node with role = \"primary\"; {missing}"),
            ));
        }
    }
    Ok(())
}
