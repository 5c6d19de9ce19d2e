//! The rows of the routing policy's table test, one per rule of docs/routing.md, in the order the
//! document gives them; the fleet builders and the runner are in the parent module.

use super::*;

pub(super) fn rows() -> Vec<Row> {
    use Expect::{Nodes, Refused};
    let sec = Duration::from_secs;
    vec![
        // Reads: a replica, balanced; the primary only as the last resort.
        row(
            "reads go to the replicas, the primary is the last resort",
            vec![p(), r(), r()],
            Nodes(&[1, 2, 0]),
        ),
        row("writes go to the primary", vec![p(), r(), r()], Nodes(&[0])).write(),
        row(
            "a leading /* pgfleet:primary */ comment makes the plan's target the primary",
            vec![p(), r()],
            Nodes(&[0]),
        )
        .write(),
        row(
            "least_connections: the replica with the fewest connections in use first",
            vec![p(), r().in_use(5), r().in_use(1)],
            Nodes(&[2, 1, 0]),
        )
        .config(|c| c.load_balance = LoadBalance::LeastConnections),
        // Which replicas are usable.
        row(
            "a replica whose health check failed gets no reads",
            vec![p(), r().checked_down(), r()],
            Nodes(&[2, 0]),
        ),
        row(
            "a replica a session just failed to reach is skipped",
            vec![p(), r().seen_failing(), r()],
            Nodes(&[2, 0]),
        ),
        row(
            "a promoted replica (out of recovery) gets no reads",
            vec![p(), r().promoted(), r()],
            Nodes(&[2, 0]),
        ),
        row(
            "a replica not checked yet serves at once",
            vec![p(), r().unchecked()],
            Nodes(&[1, 0]),
        ),
        row(
            "role auto: in recovery serves reads, out of it or unknown does not",
            vec![auto(false), auto(true), auto(false).unchecked()],
            Nodes(&[1, 0]),
        ),
        row(
            "max_replica_lag bytes: a replica further behind gets no reads",
            vec![p(), r().behind(20 << 20, sec(0)), r().behind(1 << 20, sec(0))],
            Nodes(&[2, 0]),
        )
        .config(|c| c.max_replica_lag = Some(LagLimit::Bytes(16 << 20))),
        row(
            "max_replica_lag duration: a replica further behind gets no reads",
            vec![p(), r().behind(10, sec(5)), r().behind(10, sec(1))],
            Nodes(&[2, 0]),
        )
        .config(|c| c.max_replica_lag = Some(LagLimit::Time(Duration::from_secs(2)))),
        row(
            "max_replica_lag: a replica with unknown lag counts as within",
            vec![p(), r().unchecked()],
            Nodes(&[1, 0]),
        )
        .config(|c| c.max_replica_lag = Some(LagLimit::Time(Duration::from_secs(2)))),
        row(
            "a replica with weight = 0 serves no reads",
            vec![p(), r().weight(0), r()],
            Nodes(&[2, 0]),
        ),
        row(
            "a node a reload removed serves no reads",
            vec![p(), r().retired(), r()],
            Nodes(&[2, 0]),
        ),
        row(
            "primary_reads adds the primary to the read set",
            vec![p(), r()],
            Nodes(&[0, 1]),
        )
        .config(primary_reads),
        row(
            "primary_reads: a primary that failed its check is no read node, but stays the last resort",
            vec![p().checked_down(), r()],
            Nodes(&[1, 0]),
        )
        .config(primary_reads),
        // With no usable replica.
        row(
            "fallback_to_primary: with no usable replica, reads go to the primary",
            vec![p(), r().checked_down()],
            Nodes(&[0]),
        ),
        row(
            "fallback_to_primary = false: reads fail with 57P03",
            vec![p(), r().checked_down()],
            Refused("57P03", "routing.fallback_to_primary = false"),
        )
        .config(no_fallback),
        row(
            "fallback_to_primary = false: the primary is not added after the replicas",
            vec![p(), r(), r()],
            Nodes(&[1, 2]),
        )
        .config(no_fallback),
        // Failover.
        row(
            "no primary: writes fail with 08006",
            vec![auto(true), auto(true)],
            Refused("08006", "no primary is available"),
        )
        .primary(Primary::None)
        .write(),
        row(
            "no primary: reads still go to the replicas",
            vec![auto(true), auto(true)],
            Nodes(&[0, 1]),
        )
        .primary(Primary::None),
        row(
            "no primary and no replica: reads fail with the primary's error",
            vec![auto(true).checked_down(), auto(false).checked_down()],
            Refused("08006", "no primary is available"),
        )
        .primary(Primary::None),
        row(
            "two primaries: writes are refused, naming both",
            vec![auto(false), auto(false), auto(true)],
            Refused("55000", "2 nodes claim to be primary (n0, n1)"),
        )
        .primary(Primary::Conflict(vec![id(0), id(1)]))
        .write(),
        row(
            "two primaries: reads go to the replicas, never to a claimant",
            vec![auto(false), auto(false), auto(true)],
            Nodes(&[2]),
        )
        .primary(Primary::Conflict(vec![id(0), id(1)])),
        row(
            "after a failover the promoted auto node takes the writes",
            vec![auto(true), auto(false), auto(true)],
            Nodes(&[1]),
        )
        .primary(Primary::One(id(1)))
        .write(),
        row(
            "after a failover the promoted auto node is the read fallback",
            vec![auto(true), auto(false), auto(true)],
            Nodes(&[0, 2, 1]),
        )
        .primary(Primary::One(id(1))),
        // Forward mode.
        row(
            "forward mode: a plain server is a replica once pgfleet streams to it",
            vec![
                p(),
                r().promoted().visible(Some(900)),
                r().promoted().visible(None),
            ],
            Nodes(&[1, 0]),
        )
        .forwarding(),
        // Transactions.
        row(
            "a transaction stays on its node, writes included",
            vec![p(), r(), r()],
            Nodes(&[2]),
        )
        .state(tx(2))
        .write(),
        row(
            "a transaction wins over the session route",
            vec![p(), r()],
            Nodes(&[1]),
        )
        .state(RoutingState {
            route: Some(Target::Primary),
            ..tx(1)
        }),
        row(
            "a transaction on a node that is now down stays there",
            vec![p(), r().checked_down()],
            Nodes(&[1]),
        )
        .state(tx(1)),
        // Session state.
        row(
            "a pinned session runs everything on its node",
            vec![p(), r()],
            Nodes(&[0]),
        )
        .state(pinned(0)),
        row("a pin wins over the session route", vec![p(), r()], Nodes(&[0])).state(RoutingState {
            route: Some(Target::Replica),
            ..pinned(0)
        }),
        row(
            "DEALLOCATE runs where the statement is prepared",
            vec![p(), r(), r()],
            Nodes(&[2]),
        )
        .deallocated_on(2)
        .write(),
        row(
            "a transaction wins over DEALLOCATE's node",
            vec![p(), r(), r()],
            Nodes(&[0]),
        )
        .deallocated_on(2)
        .state(tx(0)),
        // Overrides.
        row(
            "pgfleet.route=primary sends reads to the primary",
            vec![p(), r()],
            Nodes(&[0]),
        )
        .state(route(Target::Primary)),
        row(
            "pgfleet.route=replica sends writes to the replicas, never the primary",
            vec![p(), r(), r()],
            Nodes(&[1, 2]),
        )
        .state(route(Target::Replica))
        .write(),
        row(
            "pgfleet.route=replica with no usable replica fails with 57P03",
            vec![p(), r().checked_down()],
            Refused("57P03", "pgfleet.route=replica"),
        )
        .state(route(Target::Replica)),
        // Replica affinity.
        row(
            "affinity statement: each read is balanced, no home kept",
            vec![p(), r(), r()],
            Nodes(&[1, 2, 0]),
        )
        .state(home(2))
        .home_after(Some(2)),
        row(
            "affinity session: the first read's choice becomes the home",
            vec![p(), r(), r()],
            Nodes(&[1, 2, 0]),
        )
        .config(session_affinity)
        .home_after(Some(1)),
        row(
            "affinity session: the home goes first while it is a candidate",
            vec![p(), r(), r()],
            Nodes(&[2, 1, 0]),
        )
        .config(session_affinity)
        .state(home(2)),
        row(
            "affinity session: a home that stopped being a candidate is replaced",
            vec![p(), r(), r().checked_down(), r()],
            Nodes(&[1, 3, 0]),
        )
        .config(session_affinity)
        .state(home(2))
        .home_after(Some(1)),
        // Read-your-writes.
        row(
            "read-your-writes: once every replica replayed the write, the guarantee is dropped",
            vec![p().lsn(Some(300)), r().lsn(Some(200)), r().lsn(Some(250))],
            Nodes(&[1, 2, 0]),
        )
        .state(wrote(200))
        .lsn_after(None),
        row(
            "read-your-writes: only replicas known to have replayed the write (the balancer's stale pick is asked once)",
            vec![p().lsn(Some(300)), r().lsn(Some(100)), r().lsn(Some(250))],
            Nodes(&[2, 0]),
        )
        .state(wrote(200))
        .probes(&[1], &[]),
        row(
            "read-your-writes: the balancer's pick, asked and found fresh, serves; the known-fresh one follows",
            vec![p().lsn(Some(300)), r().lsn(Some(100)), r().lsn(Some(250))],
            Nodes(&[1, 2, 0]),
        )
        .state(wrote(200))
        .probes(&[1], &[1]),
        row(
            "read-your-writes: a replica with unknown position is asked; one that replayed is used",
            vec![p().lsn(Some(300)), r().lsn(None), r().lsn(Some(100))],
            Nodes(&[2, 0]),
        )
        .state(wrote(200))
        .probes(&[1, 2], &[2]),
        row(
            "read-your-writes: no replica caught up in time: the primary",
            vec![p().lsn(Some(300)), r().lsn(Some(100)), r().lsn(Some(100))],
            Nodes(&[0]),
        )
        .state(wrote(200))
        .probes(&[1, 2], &[]),
        row(
            "read-your-writes: a down replica's old position keeps the guarantee",
            vec![
                p().lsn(Some(300)),
                r().lsn(Some(250)),
                r().lsn(Some(100)).checked_down(),
            ],
            Nodes(&[1, 0]),
        )
        .state(wrote(200)),
        row(
            "read-your-writes with primary_reads: the primary is fresh, the replicas are asked first",
            vec![p().lsn(Some(300)), r().lsn(Some(100))],
            Nodes(&[1, 0]),
        )
        .config(primary_reads)
        .state(wrote(200))
        .probes(&[1], &[1]),
        row(
            "read-your-writes: a write is not held back",
            vec![p().lsn(Some(300)), r().lsn(Some(100))],
            Nodes(&[0]),
        )
        .state(wrote(200))
        .write(),
        row(
            "read-your-writes with fallback_to_primary = false: nobody caught up fails with 57P03",
            vec![p().lsn(Some(300)), r().lsn(Some(100))],
            Refused("57P03", "routing.fallback_to_primary"),
        )
        .config(no_fallback)
        .state(wrote(200))
        .probes(&[1], &[]),
        // Consistency levels (docs/routing.md, "Consistency levels").
        row(
            "off: where the session read last does not matter",
            vec![p(), r(), r()],
            Nodes(&[1, 2, 0]),
        )
        .config(level_off)
        .state(seen(2, None)),
        row(
            "session: a read whose last read's reach is unknown stays on that node",
            vec![p(), r(), r()],
            Nodes(&[2, 0]),
        )
        .state(seen(2, None)),
        row(
            "session: a read moves to a replica known to have replayed what the session saw",
            vec![p().lsn(Some(900)), r().lsn(Some(600)), r().lsn(Some(400))],
            Nodes(&[1, 2, 0]),
        )
        .state(seen(2, Some(500))),
        row(
            "session: a replica behind what the session saw elsewhere is passed over",
            vec![p().lsn(Some(900)), r().lsn(Some(600)), r().lsn(Some(400))],
            Nodes(&[1, 0]),
        )
        .state(seen(1, Some(500))),
        row(
            "session: a move whose bound is unknown goes to the primary until the session knows it",
            vec![p(), r().checked_down(), r()],
            Nodes(&[0]),
        )
        .state(seen(1, None))
        .asks_bound(),
        row(
            "session: with no read node left, a read goes to the primary, which has everything, unasked",
            vec![p()],
            Nodes(&[0]),
        )
        .state(seen(0, None)),
        row(
            "session: so does one whose last read was on a replica now down",
            vec![p(), r().checked_down()],
            Nodes(&[0]),
        )
        .state(seen(1, None)),
        row(
            "session with affinity: a home gone, the new node is asked whether it replayed the bound",
            vec![p().lsn(Some(900)), r().checked_down(), r().lsn(Some(400))],
            Nodes(&[2, 0]),
        )
        .config(session_affinity)
        .state(RoutingState {
            read_home: Some(id(1)),
            ..seen(1, Some(800))
        })
        .home_after(Some(2))
        .probes(&[2], &[2]),
        row(
            "global: only replicas that replayed the highest acknowledged commit",
            vec![p().lsn(Some(900)), r().lsn(Some(600)), r().lsn(Some(800))],
            Nodes(&[2, 0]),
        )
        .config(level_global)
        .floor(700)
        .probes(&[1], &[]),
        row(
            "global: a probe by any session counts, beyond the health snapshot",
            vec![
                p().lsn(Some(900)),
                r().lsn(Some(600)).probed(750),
                r().lsn(Some(800)),
            ],
            Nodes(&[1, 2, 0]),
        )
        .config(level_global)
        .floor(700),
        row(
            "global: nobody known to have replayed it: asked, then the primary",
            vec![p().lsn(Some(900)), r().lsn(Some(600)), r().lsn(Some(650))],
            Nodes(&[0]),
        )
        .config(level_global)
        .floor(700)
        .probes(&[1, 2], &[]),
        row(
            "universal: replicas that replayed the primary's position at the read's start",
            vec![p().lsn(Some(1200)), r().lsn(Some(1000)), r().lsn(Some(1100))],
            Nodes(&[2, 0]),
        )
        .config(level_universal)
        .floor(1100)
        .probes(&[1], &[]),
        row(
            "universal: the primary's position unknown: the primary",
            vec![p(), r(), r()],
            Nodes(&[0]),
        )
        .config(level_universal)
        .floor(u64::MAX),
        row(
            "causal token: reads wait for the position set by pgfleet.read_after",
            vec![p().lsn(Some(1200)), r().lsn(Some(1000)), r().lsn(Some(1100))],
            Nodes(&[2, 0]),
        )
        .state(RoutingState {
            read_after: Some(Lsn(1050)),
            ..RoutingState::default()
        })
        .probes(&[1], &[]),
        row(
            "read-your-writes and affinity: a stale home is asked once, then passed over but stays the home",
            vec![p().lsn(Some(300)), r().lsn(Some(100)), r().lsn(Some(250))],
            Nodes(&[2, 0]),
        )
        .config(session_affinity)
        .state(RoutingState {
            read_home: Some(id(1)),
            ..wrote(200)
        })
        .probes(&[1], &[]),
        // Shards: each request runs on its shard's nodes only, and positions never mix between shards.
        row(
            "sharded: a read on shard 1 goes to shard 1's replicas, its primary last",
            vec![p(), r(), p().shard(1), r().shard(1), r().shard(1)],
            Nodes(&[3, 4, 2]),
        )
        .on_shard(1),
        row(
            "sharded: a write on shard 1 goes to shard 1's primary",
            vec![p(), r(), p().shard(1), r().shard(1)],
            Nodes(&[2]),
        )
        .on_shard(1)
        .write(),
        row(
            "sharded: a shard with no replica left reads from its own primary, never another shard's",
            vec![p(), r(), p().shard(1), r().shard(1).checked_down()],
            Nodes(&[2]),
        )
        .on_shard(1),
        row(
            "sharded: a write position is checked against the shard's own replicas only",
            vec![p(), r().lsn(Some(10)), p().shard(1), r().shard(1).probed(6000)],
            Nodes(&[3, 2]),
        )
        .on_shard(1)
        .state(wrote(5000))
        .lsn_after(None),
    ]
}
