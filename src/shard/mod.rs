//! Sharding: a table's rows spread over several primaries (`nodes[i].shard`, `[[sharded_tables]]`), placed
//! exactly as PostgreSQL's hash partitioning would place them. This module owns the shard key values
//! ([`value`]); the placement, the planner that finds a statement's shards, the merge of results gathered
//! from several shards and the two-phase commit of writes on several shards live in its submodules.

pub mod copy_rows;
pub mod decisions;
pub mod hash;
pub mod ids;
pub mod merge;
pub mod plan;
pub mod twophase;
pub mod value;

pub use crate::cluster::ShardId;

use crate::config::Config;
use value::KeyValue;

/// What the sessions of a sharded fleet share: the planner's rules, the name this pgfleet gives its
/// distributed transactions, and each database's collation once a merge needed it. Built once at start: a
/// reload cannot change the shards or the sharded tables.
#[derive(Debug)]
pub struct Sharding {
    /// The sharded tables and the number of shards.
    pub rules: plan::ShardingRules,
    /// Names this process's two-phase commits, so that recovery can tell whose they are.
    pub instance: twophase::InstanceId,
    /// `datcollate` per database: whether merged text can be ordered bytewise.
    collations: std::sync::Mutex<std::collections::HashMap<String, String>>,
    /// The databases whose commits across shards this pgfleet coordinates, and their recovery.
    pub decisions: std::sync::Arc<decisions::Decisions>,
    /// Cluster-unique ids reserved by this process (`pgfleet_next_id()`).
    pub ids: ids::IdBlocks,
}

impl Sharding {
    /// The sharding of a validated config; `instance` names this pgfleet. Fails only when a shard
    /// primary's TLS settings cannot be used.
    pub fn new(config: &Config, instance: twophase::InstanceId) -> Result<Sharding, twophase::TargetError> {
        Ok(Sharding {
            rules: plan::ShardingRules::from_config(config),
            instance,
            collations: std::sync::Mutex::default(),
            decisions: std::sync::Arc::new(decisions::Decisions::new(config)?),
            ids: ids::IdBlocks::default(),
        })
    }

    /// The collation of `database`, if a session already asked.
    pub fn collation(&self, database: &str) -> Option<String> {
        let map = self.collations.lock().unwrap_or_else(|p| p.into_inner());
        map.get(database).cloned()
    }

    /// Records the collation of `database` (every shard is created alike).
    pub fn remember_collation(&self, database: &str, collation: &str) {
        let mut map = self.collations.lock().unwrap_or_else(|p| p.into_inner());
        map.insert(database.to_owned(), collation.to_owned());
    }
}

/// PostgreSQL's hash placement over the fleet's shards, as the planner takes it.
pub struct ShardingPlacement {
    shards: u32,
}

impl ShardingPlacement {
    /// The placement the rules' shard count gives.
    pub fn new(rules: &plan::ShardingRules) -> ShardingPlacement {
        ShardingPlacement { shards: rules.shards }
    }
}

impl plan::Placement for ShardingPlacement {
    fn shard_for(&self, value: &KeyValue) -> ShardId {
        hash::shard_for(value, self.shards)
    }
}
