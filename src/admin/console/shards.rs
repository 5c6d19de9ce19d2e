//! `SHOW SHARDS`: one row per shard (the one shard of an unsharded fleet): its primary and whether it is up,
//! its replicas and how many serve, the statements its nodes ran, and the sharded tables spread over it.

use super::ColumnType::{Int, Text};
use super::{Context, Table};
use crate::cluster::ShardId;
use crate::cluster::view::Primary;

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
