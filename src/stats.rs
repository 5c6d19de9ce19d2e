//! Counters the proxy keeps for the admin console and /metrics: per node queries and errors, per routing
//! rule decisions, and the live client sessions.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::SystemTime;

use arc_swap::ArcSwap;

use crate::peer::Peer;
use crate::router::classify::Target;

/// Per-node counters.
#[derive(Debug, Default)]
pub(crate) struct NodeCounters {
    /// Requests forwarded to the node.
    pub queries: AtomicU64,
    /// Requests that failed because of the node (connection refused, lost, timed out).
    pub errors: AtomicU64,
}

/// One live client session, for SHOW CLIENTS: a snapshot of its [`ClientEntry`].
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client address.
    pub addr: Peer,
    /// Role name.
    pub user: String,
    /// Database name.
    pub database: String,
    /// "idle", "active", "idle in transaction" or "admin".
    pub state: &'static str,
    /// When it connected.
    pub connected_at: SystemTime,
    /// Requests it sent.
    pub requests: u64,
    /// Node it is in a transaction on or pinned to, if any.
    pub node: Option<usize>,
}

/// The states a session reports, in the order of their codes in [`ClientEntry`].
const CLIENT_STATES: [&str; 4] = ["idle", "active", "idle in transaction", "admin"];
/// `ClientEntry::node` when the session holds no node.
const NO_NODE: usize = usize::MAX;

fn state_code(state: &str) -> u8 {
    CLIENT_STATES.iter().position(|s| *s == state).unwrap_or(0) as u8
}

/// A live session's row. The session keeps a handle and updates it after every request with a few
/// relaxed stores, so that bookkeeping never takes the lock that SHOW CLIENTS and new logins need.
#[derive(Debug)]
pub struct ClientEntry {
    addr: Peer,
    user: String,
    database: String,
    connected_at: SystemTime,
    state: AtomicU8,
    node: AtomicUsize,
    requests: AtomicU64,
}

/// [`ClientEntry::state`]'s code for "active".
const ACTIVE: u8 = 1;

impl ClientEntry {
    /// Marks the session as running a request: "active" until [`Self::update`] or [`Self::settle`].
    pub fn mark_active(&self) {
        self.state.store(ACTIVE, Ordering::Relaxed);
    }

    /// After a request that ended without [`Self::update`] (pgfleet refused or cancelled it before a node
    /// ran it): `state` again, unless an update came.
    pub fn settle(&self, state: impl FnOnce() -> &'static str) {
        // Only the session writes its row, so nothing changes it between the load and the store.
        if self.state.load(Ordering::Relaxed) == ACTIVE {
            self.state.store(state_code(state()), Ordering::Relaxed);
        }
    }

    /// Records the state after a request, counting the request.
    pub fn update(&self, state: &'static str, node: Option<usize>) {
        self.state.store(state_code(state), Ordering::Relaxed);
        self.node.store(node.unwrap_or(NO_NODE), Ordering::Relaxed);
        self.requests.fetch_add(1, Ordering::Relaxed);
    }

    fn snapshot(&self) -> ClientInfo {
        let node = self.node.load(Ordering::Relaxed);
        ClientInfo {
            addr: self.addr,
            user: self.user.clone(),
            database: self.database.clone(),
            state: CLIENT_STATES[usize::from(self.state.load(Ordering::Relaxed)) % CLIENT_STATES.len()],
            connected_at: self.connected_at,
            requests: self.requests.load(Ordering::Relaxed),
            node: (node != NO_NODE).then_some(node),
        }
    }
}

/// Routing decisions of one target, by rule label.
type RouteCounts = RwLock<HashMap<String, Arc<AtomicU64>>>;

/// How many (target, rule label) counters a session keeps at hand.
const RECENT_ROUTES: usize = 4;

/// A session's routing-decision counters of its last few (target, rule label) pairs, so that counting a
/// decision costs a comparison of short labels and an atomic add. A transaction alternates between a few
/// labels (a TPC-B transaction: its BEGIN's, then `in transaction` on the primary and on the replica
/// side), and keeping only the last pair took a shared lock, a hash of the label and an allocation of its
/// copy at each change, five times per such transaction. A pair that drops out reuses its label's room.
#[derive(Debug, Default)]
pub(crate) struct RecentRoutes {
    entries: Vec<(Target, String, Arc<AtomicU64>)>,
    /// The entry replaced next once [`RECENT_ROUTES`] are kept.
    next: usize,
}

impl RecentRoutes {
    /// Counts one decision for (target, label).
    pub(crate) fn count(&mut self, stats: &Stats, target: Target, label: &str) {
        if let Some((_, _, counter)) = self.entries.iter().find(|(t, l, _)| *t == target && l == label) {
            counter.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let counter = stats.route_counter(target, label);
        counter.fetch_add(1, Ordering::Relaxed);
        if self.entries.len() < RECENT_ROUTES {
            self.entries.push((target, label.to_owned(), counter));
            return;
        }
        let slot = &mut self.entries[self.next];
        slot.0 = target;
        slot.1.clear();
        slot.1.push_str(label);
        slot.2 = counter;
        self.next = (self.next + 1) % RECENT_ROUTES;
    }
}

/// All counters.
#[derive(Debug)]
pub struct Stats {
    /// Per node slot (see `cluster::Node`); grows when a reload adds nodes.
    nodes: ArcSwap<Vec<Arc<NodeCounters>>>,
    /// Indexed by [`target_index`]. Labels are few and long-lived, so after the first request of a kind
    /// a decision costs a shared lock and an atomic add, and no allocation.
    routes: [RouteCounts; 2],
    clients: Mutex<HashMap<u64, Arc<ClientEntry>>>,
    /// Client connections accepted since start.
    pub clients_total: AtomicU64,
    /// Logins refused (bad password, unknown database...).
    pub login_failures: AtomicU64,
    /// Connections accepted and not yet authenticated: in TLS negotiation, before or in their startup
    /// packet, or in the password exchange. Kept by [`LoginGuard`]s.
    logging_in: AtomicUsize,
    /// Session slots (`listen.max_clients`) held by logins that are not sessions yet, kept by
    /// [`SlotGuard`]s. Taken only under the `clients` lock, so that two logins never both get the last slot.
    reserved: AtomicUsize,
}

/// A session slot held from the startup packet until the session is counted in its own right (or gone).
#[derive(Debug)]
pub struct SlotGuard {
    stats: Arc<Stats>,
}

impl Drop for SlotGuard {
    fn drop(&mut self) {
        self.stats.reserved.fetch_sub(1, Ordering::Relaxed);
    }
}

/// One connection counted in [`Stats::logging_in`] until the guard is dropped, whichever way the login ends.
#[derive(Debug)]
pub struct LoginGuard {
    stats: Arc<Stats>,
    /// The count, this connection included, when it was accepted.
    at_start: usize,
}

impl LoginGuard {
    /// How many connections were logging in when this one was accepted, itself included.
    pub fn count_at_start(&self) -> usize {
        self.at_start
    }
}

impl Drop for LoginGuard {
    fn drop(&mut self) {
        self.stats.logging_in.fetch_sub(1, Ordering::Relaxed);
    }
}

fn target_index(target: Target) -> usize {
    match target {
        Target::Primary => 0,
        Target::Replica => 1,
    }
}

impl Stats {
    /// Counters for `node_count` nodes.
    pub fn new(node_count: usize) -> Self {
        Self {
            nodes: ArcSwap::from_pointee((0..node_count).map(|_| Arc::default()).collect()),
            routes: Default::default(),
            clients: Mutex::new(HashMap::new()),
            clients_total: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
            logging_in: AtomicUsize::new(0),
            reserved: AtomicUsize::new(0),
        }
    }

    /// Takes one of `max` session slots for a login, as PostgreSQL gives a starting backend its process
    /// slot before authentication; `None` when sessions (outside `except_database`) and other logins hold
    /// them all. The slot is held until the guard is dropped.
    pub fn reserve_slot(self: &Arc<Self>, max: usize, except_database: &str) -> Option<SlotGuard> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let sessions = clients.values().filter(|c| c.database != except_database).count();
        if sessions + self.reserved.load(Ordering::Relaxed) >= max {
            return None;
        }
        self.reserved.fetch_add(1, Ordering::Relaxed);
        drop(clients);
        Some(SlotGuard { stats: self.clone() })
    }

    /// A connection was accepted: it counts as logging in until the returned guard is dropped.
    pub fn login_started(self: &Arc<Self>) -> LoginGuard {
        let at_start = self.logging_in.fetch_add(1, Ordering::Relaxed) + 1;
        LoginGuard {
            stats: self.clone(),
            at_start,
        }
    }

    /// How many connections are logging in now (see [`LoginGuard`]).
    pub fn logging_in(&self) -> usize {
        self.logging_in.load(Ordering::Relaxed)
    }

    /// Makes room for counters of nodes a reload added.
    pub fn ensure_nodes(&self, node_count: usize) {
        self.nodes.rcu(|nodes| {
            let mut grown = nodes.as_ref().clone();
            grown.resize_with(node_count.max(grown.len()), Arc::default);
            grown
        });
    }

    /// (queries, errors) of a node so far.
    pub fn node_counts(&self, node: usize) -> (u64, u64) {
        self.nodes.load().get(node).map_or((0, 0), |n| {
            (
                n.queries.load(Ordering::Relaxed),
                n.errors.load(Ordering::Relaxed),
            )
        })
    }

    /// A request went to `node` because of `rule` (a short label such as "read" or "INSERT writes").
    pub fn request_routed(&self, node: usize, target: Target, rule_label: &str) {
        self.node_queried(node);
        self.route_counter(target, rule_label)
            .fetch_add(1, Ordering::Relaxed);
    }

    /// The counters of `node`, for a session to keep: they stay the node's across reloads, which only add
    /// nodes' counters.
    pub(crate) fn node_counters(&self, node: usize) -> Option<Arc<NodeCounters>> {
        self.nodes.load().get(node).cloned()
    }

    /// A request was forwarded to `node`.
    pub fn node_queried(&self, node: usize) {
        if let Some(n) = self.nodes.load().get(node) {
            n.queries.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counter of decisions for (target, rule label), created at zero if new. A session keeps the ones
    /// it used last ([`RecentRoutes`]).
    pub fn route_counter(&self, target: Target, rule_label: &str) -> Arc<AtomicU64> {
        let routes = &self.routes[target_index(target)];
        if let Some(count) = routes.read().unwrap_or_else(|p| p.into_inner()).get(rule_label) {
            return count.clone();
        }
        routes
            .write()
            .unwrap_or_else(|p| p.into_inner())
            .entry(rule_label.to_owned())
            .or_default()
            .clone()
    }

    /// A node failed a request or a connection.
    pub fn node_error(&self, node: usize) {
        if let Some(n) = self.nodes.load().get(node) {
            n.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (target, rule label, count) for every routing decision made so far, by target then rule.
    pub fn routes(&self) -> Vec<(String, String, u64)> {
        let mut out = Vec::new();
        for target in [Target::Primary, Target::Replica] {
            let routes = self.routes[target_index(target)]
                .read()
                .unwrap_or_else(|p| p.into_inner());
            let mut rows: Vec<(String, String, u64)> = routes
                .iter()
                .map(|(rule, count)| (target.to_string(), rule.clone(), count.load(Ordering::Relaxed)))
                .collect();
            rows.sort_by(|a, b| a.1.cmp(&b.1));
            out.extend(rows);
        }
        out
    }

    /// A client session began; the session reports its progress through the returned entry.
    pub fn client_connected(&self, id: u64, info: ClientInfo) -> Arc<ClientEntry> {
        self.clients_total.fetch_add(1, Ordering::Relaxed);
        let entry = Arc::new(ClientEntry {
            addr: info.addr,
            user: info.user,
            database: info.database,
            connected_at: info.connected_at,
            state: AtomicU8::new(state_code(info.state)),
            node: AtomicUsize::new(info.node.unwrap_or(NO_NODE)),
            requests: AtomicU64::new(info.requests),
        });
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, entry.clone());
        entry
    }

    /// A client session ended.
    pub fn client_disconnected(&self, id: u64) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The live sessions, oldest first.
    pub fn clients(&self) -> Vec<(u64, ClientInfo)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u64, ClientInfo)> = clients.iter().map(|(k, v)| (*k, v.snapshot())).collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }

    /// How many live sessions match: all of them, or those of `user`, leaving out one database (the admin
    /// console's). Counted in place, as every login asks.
    pub fn count_clients(&self, user: Option<&str>, except_database: &str) -> usize {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        clients
            .values()
            .filter(|c| c.database != except_database && user.is_none_or(|u| c.user == u))
            .count()
    }

    /// How many sessions are live.
    pub fn client_count(&self) -> usize {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routes_by_target_then_rule() {
        let s = Stats::new(2);
        s.request_routed(1, Target::Replica, "read");
        s.request_routed(0, Target::Primary, "UPDATE writes");
        s.request_routed(1, Target::Replica, "read");
        s.request_routed(0, Target::Primary, "INSERT writes");
        assert_eq!(
            s.routes(),
            vec![
                ("primary".to_owned(), "INSERT writes".to_owned(), 1),
                ("primary".to_owned(), "UPDATE writes".to_owned(), 1),
                ("replica".to_owned(), "read".to_owned(), 2),
            ]
        );
        assert_eq!(s.node_counts(1).0, 2);
    }

    #[test]
    fn recent_routes_count_every_decision_and_keep_the_last_pairs_at_hand() {
        use Target::{Primary, Replica};
        // A TPC-B transaction's decisions, then more distinct pairs than are kept, then the first again.
        let tx = [
            (Primary, "read-write transaction runs on the primary"),
            (Primary, "in transaction"),
            (Primary, "in transaction"),
            (Primary, "in transaction"),
            (Replica, "in transaction"),
            (Primary, "in transaction"),
            (Replica, "in transaction"),
        ];
        let others = [
            (Replica, "read"),
            (Primary, "UPDATE writes"),
            (Primary, "INSERT writes"),
            (Primary, "DELETE writes"),
        ];
        let stats = Stats::new(1);
        let mut recent = RecentRoutes::default();
        let mut expected: HashMap<(Target, &str), u64> = HashMap::new();
        for (target, label) in tx.iter().chain(&tx).chain(&others).chain(&tx) {
            recent.count(&stats, *target, label);
            *expected.entry((*target, label)).or_default() += 1;
            // The pair just counted is at hand, and no more than four are.
            assert!(recent.entries.iter().any(|(t, l, _)| t == target && l == label));
            assert!(recent.entries.len() <= RECENT_ROUTES);
        }
        let mut want: Vec<(String, String, u64)> = expected
            .into_iter()
            .map(|((t, l), n)| (t.to_string(), l.to_owned(), n))
            .collect();
        want.sort();
        assert_eq!(stats.routes(), want);
        // A transaction's three pairs stay at hand through the next transaction: counting them again takes
        // no new entry.
        let mut recent = RecentRoutes::default();
        for (target, label) in tx.iter().chain(&tx) {
            recent.count(&stats, *target, label);
        }
        assert_eq!(recent.entries.len(), 3);
        assert_eq!(recent.next, 0);
    }

    /// An idle session of app/app from `addr`.
    fn idle_client(addr: Peer) -> ClientInfo {
        ClientInfo {
            addr,
            user: "app".to_owned(),
            database: "app".to_owned(),
            state: "idle",
            connected_at: SystemTime::now(),
            requests: 0,
            node: None,
        }
    }

    #[test]
    fn client_entries_update_in_place() {
        let s = Stats::new(1);
        let info = idle_client(Peer::Tcp("127.0.0.1:1".parse().expect("addr")));
        let entry = s.client_connected(7, info.clone());
        s.client_connected(
            8,
            ClientInfo {
                user: "other".to_owned(),
                ..info.clone()
            },
        );
        s.client_connected(
            9,
            ClientInfo {
                database: "pgfleet".to_owned(),
                state: "admin",
                ..info
            },
        );
        // A request is "active" while it runs; an update after it wins over settle's fallback.
        let state = || s.clients()[0].1.state;
        entry.mark_active();
        assert_eq!(state(), "active");
        entry.update("idle in transaction", Some(0));
        entry.settle(|| "idle");
        assert_eq!(state(), "idle in transaction");
        // A request pgfleet refused before any node ran it: no update, settle puts the state back.
        entry.mark_active();
        entry.settle(|| "idle in transaction");
        assert_eq!(state(), "idle in transaction");
        entry.update("idle", None);
        let clients = s.clients();
        assert_eq!(clients.len(), 3);
        assert_eq!(clients[0].0, 7);
        assert_eq!(clients[0].1.state, "idle");
        assert_eq!(clients[0].1.requests, 2);
        assert_eq!(clients[0].1.node, None);
        assert_eq!(clients[2].1.state, "admin");
        assert_eq!(s.count_clients(None, "pgfleet"), 2);
        assert_eq!(s.count_clients(Some("app"), "pgfleet"), 1);
        s.client_disconnected(7);
        assert_eq!(s.client_count(), 2);
    }

    #[test]
    fn clients_are_listed_oldest_first() {
        // Ids are given in connection order; SHOW CLIENTS lists the sessions in that order whatever the map's
        // own order, also after sessions in between left. 200 ids, so that a map's order matching by chance
        // is out of the question.
        let s = Stats::new(1);
        let info = idle_client(Peer::Local);
        for id in (0..200u64).map(|i| (i * 7919) % 200) {
            s.client_connected(id, info.clone());
        }
        for id in (0..200u64).filter(|i| i % 3 == 0) {
            s.client_disconnected(id);
        }
        let ids: Vec<u64> = s.clients().into_iter().map(|(id, _)| id).collect();
        let expected: Vec<u64> = (0..200u64).filter(|i| i % 3 != 0).collect();
        assert_eq!(ids, expected);
    }

    #[test]
    fn login_guards_count_until_dropped() {
        let s = Arc::new(Stats::new(1));
        let a = s.login_started();
        let b = s.login_started();
        assert_eq!((a.count_at_start(), b.count_at_start()), (1, 2));
        assert_eq!(s.logging_in(), 2);
        drop(a);
        assert_eq!(s.logging_in(), 1);
        let c = s.login_started();
        assert_eq!(c.count_at_start(), 2);
        drop((b, c));
        assert_eq!(s.logging_in(), 0);
    }

    #[test]
    fn slots_count_sessions_and_logins_but_not_the_console() {
        let s = Arc::new(Stats::new(1));
        let info = ClientInfo {
            addr: Peer::Tcp("127.0.0.1:1".parse().expect("addr")),
            user: "app".to_owned(),
            database: "app".to_owned(),
            state: "idle",
            connected_at: SystemTime::now(),
            requests: 0,
            node: None,
        };
        s.client_connected(1, info.clone());
        s.client_connected(
            2,
            ClientInfo {
                database: "pgfleet".to_owned(),
                ..info
            },
        );
        let first = s.reserve_slot(3, "pgfleet").expect("second of three");
        let second = s.reserve_slot(3, "pgfleet").expect("third of three");
        assert!(
            s.reserve_slot(3, "pgfleet").is_none(),
            "one session and two logins fill three"
        );
        drop(first);
        let third = s.reserve_slot(3, "pgfleet").expect("a slot freed");
        s.client_disconnected(1);
        let fourth = s.reserve_slot(3, "pgfleet").expect("a session left");
        assert!(s.reserve_slot(3, "pgfleet").is_none());
        drop((second, third, fourth));
        assert!(s.reserve_slot(1, "pgfleet").is_some());
    }
}
