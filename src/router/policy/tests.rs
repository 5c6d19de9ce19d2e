//! The routing policy's table test: one row per rule of docs/routing.md, run against a fleet described
//! in the row (the monitor's snapshot and the live node facts), with the read-your-writes probes answered
//! by the row.
use std::time::Duration;

mod rows;

use super::*;
use crate::cluster::view::Primary;
use crate::config::LoadBalance;
use rows::rows;

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
    shard: u32,
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
        shard: 0,
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
    fn shard(self, shard: u32) -> N {
        N { shard, ..self }
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
    fn shard(&self, node: NodeId) -> ShardId {
        ShardId::new(self.nodes[node.index()].shard)
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
    /// The shard the request runs on; `primary` is shard 0's, each other shard's is its role = primary node.
    shard: u32,
    /// Whether the policy asks the session how far its last read saw (monotonic reads) before choosing.
    asks_bound: bool,
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
        shard: 0,
        asks_bound: false,
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
    fn asks_bound(self) -> Row {
        Row {
            asks_bound: true,
            ..self
        }
    }
    fn home_after(self, home: Option<usize>) -> Row {
        Row {
            home_after: home,
            ..self
        }
    }
    fn on_shard(self, shard: u32) -> Row {
        Row { shard, ..self }
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
            primaries: (0..=row.fleet.iter().map(|n| n.shard).max().unwrap_or(0))
                .map(|s| match s {
                    0 => row.primary.clone(),
                    s => row
                        .fleet
                        .iter()
                        .position(|n| n.shard == s && n.role == Role::Primary)
                        .map_or(Primary::None, |i| Primary::One(id(i))),
                })
                .collect(),
            configured_primaries: Vec::new(),
        };
        // Rows are written for per-statement balancing; `session_affinity` rows say otherwise.
        let mut config = RoutingConfig {
            load_balance: LoadBalance::RoundRobin,
            replica_affinity: ReplicaAffinity::Statement,
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
            shard: ShardId::new(row.shard),
        };
        let mut order = Vec::new();
        let mut unsure = Vec::new();
        let mut asks_bound = false;
        let result = state
            .choose(ask, &view, &fleet, &config, &balancer, &mut order)
            .and_then(|choice| match choice {
                Choice::Fixed => Ok(()),
                Choice::Reads(mut reads) => {
                    asks_bound = reads.bound_missing();
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
            asks_bound, row.asks_bound,
            "{}: asks how far the last read saw",
            row.rule
        );
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
        Pin::ClientEncoding,
        Pin::SetConfig,
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

#[test]
fn the_sessions_state_moves_reads_and_role_questions() {
    use crate::router::classify::{SERVER_ROLE_LABEL, UNLOGGED_LABEL};
    let write = "INSERT, UPDATE, DELETE or MERGE";
    // (router's target, its rule, serializable default, primary up, expected move)
    type Moved = Option<(Target, Option<Rule>)>;
    let rows: [(Target, &str, bool, bool, Moved); 9] = [
        (Target::Replica, "read", false, true, None),
        (
            Target::Replica,
            "read",
            true,
            true,
            Some((Target::Primary, Some(Rule::SerializableRead))),
        ),
        // With no primary up the read still goes there, and gets the primary's error: a standby would
        // refuse it.
        (
            Target::Replica,
            "read",
            true,
            false,
            Some((Target::Primary, Some(Rule::SerializableRead))),
        ),
        (Target::Primary, write, true, true, None),
        (Target::Primary, write, false, false, None),
        (Target::Primary, SERVER_ROLE_LABEL, false, true, None),
        (
            Target::Primary,
            SERVER_ROLE_LABEL,
            false,
            false,
            Some((Target::Replica, None)),
        ),
        (
            Target::Primary,
            SERVER_ROLE_LABEL,
            true,
            false,
            Some((Target::Replica, None)),
        ),
        (Target::Primary, UNLOGGED_LABEL, false, false, None),
    ];
    for (target, rule, serializable, up, expected) in rows {
        assert_eq!(
            session_target(target, rule, serializable, || up),
            expected,
            "{target:?} {rule} serializable={serializable} primary_up={up}"
        );
    }
    // The primary's state is not looked up for a request that cannot move for it.
    let asked = std::cell::Cell::new(false);
    let looked = || {
        asked.set(true);
        true
    };
    assert_eq!(session_target(Target::Primary, write, false, looked), None);
    assert!(!asked.get());
}
