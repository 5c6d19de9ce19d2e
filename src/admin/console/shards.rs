//! `SHOW SHARDS`: one row per shard (the one shard of an unsharded fleet): its primary and whether it is up,
//! its replicas and how many serve, the statements its nodes ran, and the sharded tables spread over it.
//! Also the shard part of `SHOW ROUTE` in a sharded fleet: which shards a statement runs on, and why.

use super::ColumnType::{Int, Text};
use super::{Context, Table};
use crate::cluster::ShardId;
use crate::cluster::view::Primary;
use crate::config::Config;
use crate::protocol::messages::ProxyError;
use crate::shard::plan::ShardingRules;
use crate::shard::plan::{Params, combined_target, plan_all};

pub(super) fn show_shards(ctx: &Context) -> Table {
    let view = ctx.fleet.view();
    let nodes = ctx.fleet.nodes();
    let config = ctx.config.get();
    let tables: Vec<String> = config
        .sharded_tables
        .iter()
        .map(|t| format!("{}({})", t.name, t.column))
        .collect();
    let mut table = Table::new(&[
        ("shard", Int),
        ("primary", Text),
        ("state", Text),
        ("replicas", Int),
        ("replicas_up", Int),
        ("queries", Int),
        ("errors", Int),
        ("sharded_tables", Text),
    ]);
    for s in 0..view.primaries.len() {
        let shard = ShardId::new(s as u32);
        let up = |i: usize| view.nodes.get(i).is_some_and(|st| st.up) && nodes[i].is_up();
        let (primary, state) = match view.primary(shard) {
            Primary::One(p) => (
                Some(nodes[p.index()].target.name.clone()),
                if up(p.index()) { "up" } else { "down" },
            ),
            Primary::None => (None, "no primary"),
            Primary::Conflict(_) => (None, "several primaries"),
        };
        let members: Vec<usize> = (0..nodes.len())
            .filter(|i| !nodes[*i].is_retired() && nodes[*i].shard == shard)
            .collect();
        let replicas: Vec<usize> = members
            .iter()
            .copied()
            .filter(|i| !view.is_primary(crate::cluster::NodeId::new(*i)))
            .collect();
        let (queries, errors) = members.iter().fold((0, 0), |(q, e), i| {
            let (nq, ne) = ctx.stats.node_counts(*i);
            (q + nq, e + ne)
        });
        table.row(vec![
            Some(s.to_string()),
            primary,
            Some(state.to_owned()),
            Some(replicas.len().to_string()),
            Some(replicas.iter().filter(|i| up(**i)).count().to_string()),
            Some(queries.to_string()),
            Some(errors.to_string()),
            Some(tables.join(", ")),
        ]);
    }
    table
}

/// The shards `sql` runs on (`shard 1`, `shards 0, 1`, `every shard`, `any shard`, `session`) and the
/// planner's reasons, one per statement; a statement pgfleet refuses is answered with the refusal itself.
pub(super) fn route(config: &Config, sql: &str) -> Result<(String, String), ProxyError> {
    let rules = ShardingRules::from_config(config);
    let placement = crate::shard::ShardingPlacement::new(&rules);
    let plans = plan_all(sql, &rules, &Params::NONE, &placement)?;
    let reasons: Vec<&str> = plans.iter().map(|p| p.reason.as_str()).collect();
    Ok((combined_target(&plans).to_string(), reasons.join("; ")))
}
