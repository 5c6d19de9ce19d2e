//! Counters the proxy keeps for the admin console and /metrics: per node queries and errors, per routing
//! rule decisions, and the live client sessions.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use arc_swap::ArcSwap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::SystemTime;

/// Per-node counters.
#[derive(Debug, Default)]
pub struct NodeCounters {
    /// Requests forwarded to the node.
    pub queries: AtomicU64,
    /// Requests that failed because of the node (connection refused, lost, timed out).
    pub errors: AtomicU64,
}

/// One live client session, for SHOW CLIENTS.
#[derive(Debug, Clone)]
pub struct ClientInfo {
    /// Client address.
    pub addr: SocketAddr,
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

/// All counters.
#[derive(Debug)]
pub struct Stats {
    /// Per node slot (see `cluster::Node`); grows when a reload adds nodes.
    nodes: ArcSwap<Vec<Arc<NodeCounters>>>,
    routes: Mutex<BTreeMap<String, u64>>,
    clients: Mutex<HashMap<u64, ClientInfo>>,
    /// Client connections accepted since start.
    pub clients_total: AtomicU64,
    /// Logins refused (bad password, unknown database...).
    pub login_failures: AtomicU64,
}

impl Stats {
    /// Counters for `node_count` nodes.
    pub fn new(node_count: usize) -> Self {
        Self {
            nodes: ArcSwap::from_pointee((0..node_count).map(|_| Arc::default()).collect()),
            routes: Mutex::new(BTreeMap::new()),
            clients: Mutex::new(HashMap::new()),
            clients_total: AtomicU64::new(0),
            login_failures: AtomicU64::new(0),
        }
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

    /// A request went to `node` because of `rule` (a short label such as "read" or "write: INSERT").
    pub fn request_routed(&self, node: usize, target: &str, rule_label: &str) {
        if let Some(n) = self.nodes.load().get(node) {
            n.queries.fetch_add(1, Ordering::Relaxed);
        }
        let key = format!("{target}|{rule_label}");
        *self
            .routes
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key)
            .or_insert(0) += 1;
    }

    /// A node failed a request or a connection.
    pub fn node_error(&self, node: usize) {
        if let Some(n) = self.nodes.load().get(node) {
            n.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// (target, rule label, count) for every routing decision made so far.
    pub fn routes(&self) -> Vec<(String, String, u64)> {
        let routes = self.routes.lock().unwrap_or_else(|p| p.into_inner());
        routes
            .iter()
            .map(|(k, v)| {
                let (t, r) = k.split_once('|').unwrap_or((k.as_str(), ""));
                (t.to_owned(), r.to_owned(), *v)
            })
            .collect()
    }

    /// A client session began.
    pub fn client_connected(&self, id: u64, info: ClientInfo) {
        self.clients_total.fetch_add(1, Ordering::Relaxed);
        self.clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, info);
    }

    /// Updates a session's state after each request.
    pub fn client_update(&self, id: u64, state: &'static str, node: Option<usize>) {
        if let Some(c) = self
            .clients
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get_mut(&id)
        {
            c.state = state;
            c.node = node;
            c.requests += 1;
        }
    }

    /// A client session ended.
    pub fn client_disconnected(&self, id: u64) {
        self.clients.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
    }

    /// The live sessions, oldest first.
    pub fn clients(&self) -> Vec<(u64, ClientInfo)> {
        let clients = self.clients.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(u64, ClientInfo)> = clients.iter().map(|(k, v)| (*k, v.clone())).collect();
        out.sort_by_key(|(k, _)| *k);
        out
    }
}
