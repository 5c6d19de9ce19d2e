//! The routing policy's table test: one row per rule of docs/routing.md, run against a fleet described
//! in the row (the monitor's snapshot and the live node facts), with the read-your-writes probes answered
//! by the row.
use std::time::Duration;

use super::*;
use crate::config::LoadBalance;

/// One node of a test fleet: the monitor's snapshot and the live facts.
#[derive(Clone)]
struct N {
    role: Role,
    /// The last health check succeeded.
    checked_up: bool,
    in_recovery: Option<bool>,
    lsn: Option<u64>,
    lag_bytes: Option<u64>,
    lag: Option<Duration>,
    /// No session saw it fail lately.
    up: bool,
    retired: bool,
    weight: u32,
    in_use: usize,
    visible: Option<u64>,
    /// What sessions' probes saw beyond the snapshot.
    known: Option<u64>,
}

fn node(role: Role, in_recovery: bool) -> N {
    N {
        role,
        checked_up: true,
        in_recovery: Some(in_recovery),
        lsn: Some(1000),
        lag_bytes: Some(0),
        lag: Some(Duration::ZERO),
        up: true,
        retired: false,
        weight: 1,
        in_use: 0,
        visible: None,
        known: None,
    }
}
fn p() -> N {
    node(Role::Primary, false)
}
fn r() -> N {
    node(Role::Replica, true)
}
fn auto(in_recovery: bool) -> N {
    node(Role::Auto, in_recovery)
}
impl N {
    fn checked_down(self) -> N {
        N {
            checked_up: false,
            ..self
        }
    }
    fn seen_failing(self) -> N {
        N { up: false, ..self }
    }
    fn promoted(self) -> N {
        N {
            in_recovery: Some(false),
            ..self
        }
    }
    fn unchecked(self) -> N {
        N {
            in_recovery: None,
            lsn: None,
            lag_bytes: None,
            lag: None,
            ..self
        }
    }
    fn lsn(self, lsn: Option<u64>) -> N {
        N { lsn, ..self }
    }
    fn behind(self, bytes: u64, time: Duration) -> N {
        N {
            lag_bytes: Some(bytes),
            lag: Some(time),
            ..self
        }
    }
    fn retired(self) -> N {
        N {
            retired: true,
            ..self
        }
    }
    fn weight(self, weight: u32) -> N {
        N { weight, ..self }
    }
    fn in_use(self, in_use: usize) -> N {
        N { in_use, ..self }
    }
    fn visible(self, visible: Option<u64>) -> N {
        N { visible, ..self }
    }
    fn probed(self, known: u64) -> N {
        N {
            known: Some(known),
            ..self
        }
    }
}

struct TestFleet {
    nodes: Vec<N>,
    names: Vec<String>,
    forwarding: bool,
}

impl NodeFacts for TestFleet {
    fn slots(&self) -> usize {
        self.nodes.len()
    }
    fn retired(&self, node: NodeId) -> bool {
        self.nodes[node.index()].retired
    }
    fn up(&self, node: NodeId) -> bool {
        self.nodes[node.index()].up
    }
    fn role(&self, node: NodeId) -> Role {
        self.nodes[node.index()].role
    }
    fn weight(&self, node: NodeId) -> u32 {
        self.nodes[node.index()].weight
    }
    fn in_use(&self, node: NodeId) -> usize {
        self.nodes[node.index()].in_use
    }
    fn forwarding(&self) -> bool {
        self.forwarding
    }
    fn forward_visible(&self, node: NodeId) -> Option<Lsn> {
        self.nodes[node.index()].visible.map(Lsn)
    }
    fn replayed(&self, node: NodeId) -> Option<Lsn> {
        self.nodes[node.index()].known.map(Lsn)
    }
    fn name(&self, node: NodeId) -> Option<&str> {
        self.names.get(node.index()).map(String::as_str)
    }
}

#[derive(Clone, Copy)]
enum Expect {
    /// The nodes to try, in order.
    Nodes(&'static [usize]),
    /// A refusal with this SQLSTATE and a message containing the text.
    Refused(&'static str, &'static str),
}

/// One rule of docs/routing.md.
struct Row {
    rule: &'static str,
    fleet: Vec<N>,
    primary: Primary,
    forwarding: bool,
    config: fn(&mut RoutingConfig),
    state: RoutingState,
    target: Target,
    deallocated_on: Option<usize>,
    /// Replicas that answer "replayed" when the session asks them.
    replayed: &'static [usize],
    /// The candidates the policy asks the session to check (read-your-writes).
    unsure: &'static [usize],
    expect: Expect,
    /// `read_home` and `last_write_lsn` afterwards.
    home_after: Option<usize>,
    lsn_after: Option<u64>,
    /// The position the consistency level asks of every read (`global`, `universal`).
    floor: u64,
}

fn id(n: usize) -> NodeId {
    NodeId::new(n)
}

fn row(rule: &'static str, fleet: Vec<N>, expect: Expect) -> Row {
    Row {
        rule,
        fleet,
        primary: Primary::One(id(0)),
        forwarding: false,
        config: |_| {},
        state: RoutingState::default(),
        target: Target::Replica,
        deallocated_on: None,
        replayed: &[],
        unsure: &[],
        expect,
        home_after: None,
        lsn_after: None,
        floor: 0,
    }
}

impl Row {
    fn primary(self, primary: Primary) -> Row {
        Row { primary, ..self }
    }
    fn write(self) -> Row {
        Row {
            target: Target::Primary,
            ..self
        }
    }
    fn config(self, config: fn(&mut RoutingConfig)) -> Row {
        Row { config, ..self }
    }
    fn state(self, state: RoutingState) -> Row {
        Row {
            home_after: state.read_home.map(NodeId::index),
            lsn_after: state.last_write_lsn.map(|l| l.0),
            state,
            ..self
        }
    }
    fn forwarding(self) -> Row {
        Row {
            forwarding: true,
            ..self
        }
    }
    fn deallocated_on(self, node: usize) -> Row {
        Row {
            deallocated_on: Some(node),
            ..self
        }
    }
    fn probes(self, unsure: &'static [usize], replayed: &'static [usize]) -> Row {
        Row {
            unsure,
            replayed,
            ..self
        }
    }
    fn home_after(self, home: Option<usize>) -> Row {
        Row {
            home_after: home,
            ..self
        }
    }
    fn floor(self, floor: u64) -> Row {
        Row { floor, ..self }
    }
    fn lsn_after(self, lsn: Option<u64>) -> Row {
        Row {
            lsn_after: lsn,
            ..self
        }
    }
}

fn tx(node: usize) -> RoutingState {
    RoutingState {
        tx_node: Some(id(node)),
        ..RoutingState::default()
    }
}
fn pinned(node: usize) -> RoutingState {
    RoutingState {
        pinned: Some((id(node), Pin::TempTable)),
        ..RoutingState::default()
    }
}
fn route(target: Target) -> RoutingState {
    RoutingState {
        route: Some(target),
        ..RoutingState::default()
    }
}
fn home(node: usize) -> RoutingState {
    RoutingState {
        read_home: Some(id(node)),
        ..RoutingState::default()
    }
}
fn wrote(lsn: u64) -> RoutingState {
    RoutingState {
        last_write_lsn: Some(Lsn(lsn)),
        ..RoutingState::default()
    }
}
fn seen(node: usize, upper: Option<u64>) -> RoutingState {
    RoutingState {
        seen: Some(Seen {
            node: id(node),
            upper: upper.map(Lsn),
        }),
        ..RoutingState::default()
    }
}
fn level_off(c: &mut RoutingConfig) {
    c.consistency = Some(Consistency::Off);
}
fn level_global(c: &mut RoutingConfig) {
    c.consistency = Some(Consistency::Global);
}
fn level_universal(c: &mut RoutingConfig) {
    c.consistency = Some(Consistency::Universal);
}
fn session_affinity(c: &mut RoutingConfig) {
    c.replica_affinity = ReplicaAffinity::Session;
}
fn no_fallback(c: &mut RoutingConfig) {
    c.fallback_to_primary = false;
}
fn primary_reads(c: &mut RoutingConfig) {
    c.primary_reads = true;
}

fn rows() -> Vec<Row> {
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
    ]
}

#[test]
fn every_rule_of_the_routing_docs() {
    for row in rows() {
        let fleet = TestFleet {
            names: (0..row.fleet.len()).map(|i| format!("n{i}")).collect(),
            nodes: row.fleet.clone(),
            forwarding: row.forwarding,
        };
        let view = FleetView {
            nodes: row
                .fleet
                .iter()
                .map(|n| NodeState {
                    up: n.checked_up,
                    in_recovery: n.in_recovery,
                    lsn: n.lsn.map(Lsn),
                    lag_bytes: n.lag_bytes,
                    lag: n.lag,
                    ..NodeState::default()
                })
                .collect(),
            primary: row.primary.clone(),
            configured_primary: None,
        };
        let mut config = RoutingConfig {
            load_balance: LoadBalance::RoundRobin,
            ..RoutingConfig::default()
        };
        (row.config)(&mut config);
        // A fresh round-robin balancer keeps the scan order, so the table can name it.
        let balancer = Balancer::new();
        let mut state = row.state.clone();
        let ask = Ask {
            target: row.target,
            deallocated_on: row.deallocated_on.map(id),
            floor: Lsn(row.floor),
        };
        let mut order = Vec::new();
        let mut unsure = Vec::new();
        let result = state
            .choose(ask, &view, &fleet, &config, &balancer, &mut order)
            .and_then(|choice| match choice {
                Choice::Fixed => Ok(()),
                Choice::Reads(mut reads) => {
                    unsure = reads.unsure(&order).iter().map(|n| n.index()).collect();
                    if !unsure.is_empty() {
                        match unsure.iter().find(|n| row.replayed.contains(n)) {
                            Some(n) => reads.replayed(id(*n), &mut order),
                            None => reads.none_replayed(&mut order),
                        }
                    }
                    reads.finish(&state, &view, &fleet, &config, &mut order)
                }
            });
        match (row.expect, result) {
            (Expect::Nodes(want), Ok(())) => {
                let got: Vec<usize> = order.iter().map(|n| n.index()).collect();
                assert_eq!(got, want, "{}", row.rule);
            }
            (Expect::Refused(code, text), Err(e)) => {
                assert_eq!(e.code, code, "{}: {}", row.rule, e.message);
                assert!(e.message.contains(text), "{}: {}", row.rule, e.message);
            }
            (want, got) => panic!(
                "{}: expected {:?}, got {:?}",
                row.rule,
                want_text(want),
                got.map(|()| order)
            ),
        }
        assert_eq!(unsure, row.unsure, "{}: candidates to ask", row.rule);
        assert_eq!(
            state.read_home.map(NodeId::index),
            row.home_after,
            "{}: read home",
            row.rule
        );
        assert_eq!(
            state.last_write_lsn,
            row.lsn_after.map(Lsn),
            "{}: last write",
            row.rule
        );
    }
}

fn want_text(e: Expect) -> String {
    match e {
        Expect::Nodes(n) => format!("{n:?}"),
        Expect::Refused(code, _) => code.to_owned(),
    }
}

#[test]
fn labels_match_their_display() {
    for pin in [
        Pin::TempTable,
        Pin::AdvisoryLock,
        Pin::Listen,
        Pin::HoldCursor,
        Pin::SqlPrepare,
    ] {
        assert_eq!(pinned_label(pin), format!("pinned: {pin}"));
    }
    for t in [Target::Primary, Target::Replica] {
        assert_eq!(route_override_label(t), format!("session route: {t}"));
    }
}

#[test]
fn labels_name_the_rule_that_won() {
    let rule = "SELECT: read";
    assert_eq!(RoutingState::default().label(rule), rule);
    assert_eq!(route(Target::Primary).label(rule), "session route: primary");
    assert_eq!(
        RoutingState {
            route: Some(Target::Primary),
            ..pinned(1)
        }
        .label(rule),
        "pinned: temporary object"
    );
    assert_eq!(
        RoutingState {
            pinned: Some((id(1), Pin::Listen)),
            ..tx(0)
        }
        .label(rule),
        "in transaction"
    );
}

#[test]
fn write_positions_only_grow_and_unknown_means_the_primary() {
    let mut state = RoutingState::default();
    state.wrote_at(Some(Lsn(200)));
    state.wrote_at(Some(Lsn(100)));
    assert_eq!(state.last_write_lsn, Some(Lsn(200)));
    state.wrote_at(None);
    assert_eq!(state.last_write_lsn, Some(Lsn::MAX));
}
