//! Sharding: a table's rows spread over several primaries (`nodes[i].shard`, `[[sharded_tables]]`), placed
//! exactly as PostgreSQL's hash partitioning would place them. This module owns the shard key values
//! ([`value`]); the placement, the planner that finds a statement's shards, the merge of results gathered
//! from several shards and the two-phase commit of writes on several shards live in its submodules.

pub mod merge;
pub mod value;
