//! Pools of node connections per (node, database, user), built on `deadpool::managed`, and the rules for
//! handing a connection back: roll back, reset only what the session changed, or close it.
//!
//! With session pooling and no `pool.max_size`, a pool has no cap of pgfleet's own ([`PoolConfig::cap`]):
//! it starts small and grows whenever a checkout finds every connection in use, so that the node's
//! `max_connections` decides how many sessions it serves, as for clients that connect to it directly, and it
//! keeps at most 20 idle connections, so that sessions that left do not hold the node's slots.
//!
//! A full pool is not a node failure: a checkout that finds every connection in use either gives up at
//! once (a read that another node may serve) or waits up to pool.checkout_timeout, and then reports
//! [`BackendError::PoolFull`] (53300) without touching the node's health. Waiters are served in the order
//! they came (deadpool waits on a fair tokio semaphore), so clients already connected are not overtaken by
//! later arrivals. Pools are kept only while they are worth something: one whose first connection the node
//! refused (no such database or role) is forgotten at once, and the reaper drops pools that have no
//! connection and no session holding them, so that the number of pools stays bounded whatever names
//! clients send.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use arc_swap::ArcSwap;
use deadpool::managed::{
    Manager, Metrics, Object, Pool, PoolError, QueueMode, RecycleError, RecycleResult, Timeouts,
};

use super::conn::BackendConn;
use super::connect::{BackendError, Login, NodeTarget, connect};
use super::shelf::Shelf;
use crate::config::PoolConfig;
use crate::protocol::messages::query;

/// Creates and checks connections for one (node, database, user).
pub struct ConnManager {
    target: NodeTarget,
    user: String,
    password: String,
    database: String,
    connect_timeout: Duration,
    /// What the pool's checkouts share beside deadpool; kept here so that a checkout does not look it up.
    checkouts: Arc<Checkouts>,
}

/// What a pool's checkouts share beside deadpool: one [`PooledConn`] holds it for the checkout's life.
pub(crate) struct Checkouts {
    /// The node's count of connections checked out (the same counter for every pool of the node, since a
    /// node's slot keeps its counter for the life of the process).
    in_use: Arc<AtomicUsize>,
    /// Connections given back between transactions under transaction pooling.
    shelf: Shelf<Object<ConnManager>>,
}

/// How many reapings (every half `pool.idle_timeout`) a connection stays on the shelf unused before it is
/// closed: idle for between one and one and a half `pool.idle_timeout`, as deadpool's idle connections.
const SHELF_REAPS: u64 = 3;

/// Whether a pooled connection may serve another checkout: idle, nothing unread, and not closed by the node
/// meanwhile (a node restart closes idle sockets; better found now than on the client's next query).
fn reusable(conn: &mut BackendConn) -> Result<(), &'static str> {
    if !conn.is_clean_idle() {
        return Err("connection was not returned clean");
    }
    let mut probe = [0u8; 1];
    match conn.stream.try_read(&mut probe) {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        _ => Err("connection closed by the node"),
    }
}

/// The first reusable connection `next` gives; the others are closed (and leave the pool's count).
fn first_reusable(mut next: impl FnMut() -> Option<Object<ConnManager>>) -> Option<Object<ConnManager>> {
    while let Some(mut obj) = next() {
        if reusable(&mut obj).is_ok() {
            return Some(obj);
        }
        drop(Object::take(obj));
    }
    None
}

impl Manager for ConnManager {
    // Boxed: deadpool moves its objects by value on every checkout and return, and a connection with its
    // buffers and statement sets is large enough for those copies to show in a transaction's cost.
    type Type = Box<BackendConn>;
    type Error = BackendError;

    async fn create(&self) -> Result<Box<BackendConn>, BackendError> {
        let login = Login {
            user: &self.user,
            password: &self.password,
            database: &self.database,
            replication: false,
        };
        // Boxed: deadpool's checkout future holds this one inline, and every request's state machine holds
        // a checkout; a login's few KiB there made each session's future several KiB larger for an await
        // that rarely happens, and a larger future is more memory touched (and missed in the caches) per
        // request when hundreds of sessions take turns.
        Box::pin(connect(&self.target, &login, self.connect_timeout))
            .await
            .map(Box::new)
    }

    async fn recycle(&self, conn: &mut Box<BackendConn>, _: &Metrics) -> RecycleResult<BackendError> {
        reusable(conn).map_err(RecycleError::message)
    }
}

type Key = (usize, String, String);

/// The pool of one (node, database, user). A session keeps the handles it used, so that a checkout under
/// transaction pooling does not look its pool up again; the handle count also tells the reaper whether a
/// session still holds the pool.
pub(crate) type NodePool = Arc<Pool<ConnManager>>;

/// Whether a checkout may wait for a connection of a full pool to be released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Checkout {
    /// Wait up to pool.checkout_timeout.
    Wait,
    /// Give up at once if the pool is full (another node may serve the request).
    Immediate,
}

/// One pool as SHOW POOLS and /metrics report it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PoolStatus {
    /// Node index.
    pub node: usize,
    /// Database.
    pub database: String,
    /// User.
    pub user: String,
    /// Connections open, checked out or idle.
    pub size: usize,
    /// Connections idle in the pool.
    pub available: usize,
    /// The most connections the pool may open (pool.max_size); None when pgfleet sets no cap (session
    /// pooling without `pool.max_size`).
    pub max_size: Option<usize>,
    /// Checkouts waiting for a connection to be released.
    pub waiting: usize,
}

/// The size an uncapped pool starts at, and grows from by doubling when a checkout finds it full.
const UNCAPPED_START: usize = 8;
/// What an uncapped pool grows to at most: far past any node's `max_connections`, which refuses first.
const UNCAPPED_LIMIT: usize = 1 << 20;
/// How many times one checkout of an uncapped pool makes room before it waits like a capped one.
const GROW_ROUNDS: usize = 8;

/// How many idle connections an uncapped pool keeps for the next logins. Past that, the connections of
/// sessions that leave are closed, as a direct client's server process ends with it, so that a burst of
/// sessions does not hold the node's `max_connections` slots for `pool.idle_timeout` after it is gone.
const IDLE_KEPT: usize = 20;

/// Closes an uncapped pool's idle connections past [`IDLE_KEPT`], the least recently used first (deadpool
/// hands out from the back of its queue and takes returns there).
fn trim(pool: &Pool<ConnManager>) {
    let excess = pool.status().available.saturating_sub(IDLE_KEPT);
    if excess > 0 {
        let mut seen = 0;
        drop(pool.retain(|_, _| {
            seen += 1;
            seen > excess
        }));
    }
}

/// Makes room in an uncapped pool that a checkout found full: twice its size, unless another checkout made
/// room since (its checkouts in progress, connections held included, are fewer than its slots), so that
/// checkouts that found it full at the same moment double it once, not once each.
fn grow(pool: &NodePool) {
    let s = pool.status();
    let users = s.size + s.waiting - s.available;
    if users >= s.max_size && s.max_size < UNCAPPED_LIMIT {
        pool.resize((s.max_size * 2).clamp(UNCAPPED_START, UNCAPPED_LIMIT));
    }
}

/// All pools, plus per-node counts of connections in use (for least_connections balancing).
pub struct Pools {
    config: ArcSwap<PoolConfig>,
    /// Whether the pools have no cap ([`PoolConfig::cap`]), as every checkout asks without loading the
    /// config.
    uncapped: AtomicBool,
    pools: Mutex<HashMap<Key, NodePool>>,
    /// Per node slot; grows when a reload adds nodes.
    in_use: ArcSwap<Vec<Arc<AtomicUsize>>>,
}

impl Pools {
    /// Empty pools for `node_count` nodes.
    pub fn new(config: PoolConfig, node_count: usize) -> Self {
        Self {
            uncapped: AtomicBool::new(config.cap().is_none()),
            config: ArcSwap::from_pointee(config),
            pools: Mutex::new(HashMap::new()),
            in_use: ArcSwap::from_pointee((0..node_count).map(|_| Arc::default()).collect()),
        }
    }

    /// Applies reloaded pool settings and node slots: existing pools take the new `max_size` (a shrinking
    /// pool closes connections as they come back, never one in use); pools of retired nodes are closed
    /// (connections checked out from them finish their work and are closed when given back); pools of users
    /// whose password changed or who were removed are forgotten, so that new sessions get fresh ones, while
    /// sessions holding a handle keep using theirs; counters are made for new nodes.
    pub fn reconfigure(
        &self,
        config: PoolConfig,
        node_count: usize,
        retired: impl Fn(usize) -> bool,
        keeps_login: impl Fn(&str, &str) -> bool,
    ) {
        let cap = config.cap();
        self.uncapped.store(cap.is_none(), Ordering::Relaxed);
        self.config.store(Arc::new(config));
        self.in_use.rcu(|counters| {
            let mut grown = counters.as_ref().clone();
            grown.resize_with(node_count.max(grown.len()), Arc::default);
            grown
        });
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|(node, _, user), pool| {
            if retired(*node) {
                pool.close();
                // Connections come back to a closed pool only to be closed.
                drop(pool.manager().checkouts.shelf.set_open(false));
                return false;
            }
            if !keeps_login(user, &pool.manager().password) {
                return false;
            }
            // A pool left without a cap keeps its size and grows when it must.
            if let Some(cap) = cap
                && pool.status().max_size != cap
            {
                pool.resize(cap);
                // A smaller pool closes the connections that come back to its queue: shelved ones go
                // there now, and returns skip the shelf until the reaper finds the pool within its cap.
                if cap < pool.status().size {
                    drop(pool.manager().checkouts.shelf.set_open(false));
                }
            }
            true
        });
    }

    /// Connections currently checked out from a node.
    pub fn in_use(&self, node: usize) -> usize {
        self.in_use
            .load()
            .get(node)
            .map(|c| c.load(Ordering::Relaxed))
            .unwrap_or(0)
    }

    /// The count of a node's connections in use, made (with those of the slots before it) for a node a
    /// reload added before [`Pools::reconfigure`] saw it, so that its pools count where `in_use` looks.
    fn counter(&self, node: usize) -> Arc<AtomicUsize> {
        if let Some(c) = self.in_use.load().get(node) {
            return c.clone();
        }
        self.in_use.rcu(|counters| {
            let mut grown = counters.as_ref().clone();
            grown.resize_with(grown.len().max(node + 1), Arc::default);
            grown
        });
        // Slots are only ever added, so the one just made stays.
        self.in_use.load().get(node).cloned().unwrap_or_default()
    }

    /// The pool for a node and login, created empty on first use. While a session holds the handle, only a
    /// reload drops the pool (of a retired node, or of a login whose password changed), so a handle stays
    /// the one [`Pools::get`] would use for the session that holds it.
    pub fn pool_for(&self, target: &NodeTarget, login: &Login<'_>) -> NodePool {
        let key = (target.index, login.database.to_owned(), login.user.to_owned());
        let config = self.config.load();
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .entry(key)
            .or_insert_with(|| {
                let manager = ConnManager {
                    target: target.clone(),
                    user: login.user.to_owned(),
                    password: login.password.to_owned(),
                    database: login.database.to_owned(),
                    connect_timeout: config.connect_timeout,
                    checkouts: Arc::new(Checkouts {
                        in_use: self.counter(target.index),
                        shelf: Shelf::default(),
                    }),
                };
                // Building only fails without a runtime, and tokio's is always given.
                // Most recently used first, as pgbouncer does: a free connection whose server process ran
                // a moment ago is warm in the caches, and surplus connections stay idle long enough for
                // pool.idle_timeout to close them. Oldest first would cycle every request through all of
                // them.
                Arc::new(
                    Pool::builder(manager)
                        .max_size(config.cap().unwrap_or(UNCAPPED_START))
                        .queue_mode(QueueMode::Lifo)
                        .runtime(deadpool::Runtime::Tokio1)
                        .build()
                        .unwrap_or_else(|e| panic!("deadpool pool build failed: {e}")),
                )
            })
            .clone()
    }

    /// Checks out a connection, waiting at most pool.checkout_timeout for one of a full pool.
    pub async fn get(&self, target: &NodeTarget, login: &Login<'_>) -> Result<PooledConn, BackendError> {
        let pool = self.pool_for(target, login);
        self.get_from(&pool, target, Checkout::Wait, std::future::pending())
            .await
    }

    /// [`Pools::get`] from a pool handle the caller kept (see [`NodePool`]); with [`Checkout::Immediate`],
    /// a full pool is reported at once. A wait for a connection of a full pool ends with
    /// [`BackendError::Canceled`] when `canceled` resolves first (the client cancelled its request); it is
    /// polled only once the checkout has to wait.
    pub async fn get_from(
        &self,
        pool: &NodePool,
        target: &NodeTarget,
        checkout: Checkout,
        canceled: impl Future<Output = ()>,
    ) -> Result<PooledConn, BackendError> {
        // First without waiting: usually a connection is free, and this way no timer is set up for a wait
        // that does not happen (recycling never waits: it only looks at the socket). Creating a connection
        // is bounded by `connect` itself (pool.connect_timeout), not here.
        let immediate = Timeouts {
            wait: Some(Duration::ZERO),
            create: None,
            recycle: None,
        };
        let mut waited = Duration::ZERO;
        let uncapped = self.uncapped.load(Ordering::Relaxed);
        let checkouts = &pool.manager().checkouts;
        if let Some(obj) = first_reusable(|| checkouts.shelf.take()) {
            return Ok(PooledConn::checked_out(obj, checkouts, uncapped));
        }
        let mut got = pool.timeout_get(&immediate).await;
        // Without a cap, room is made instead of waited for; in a few rounds, as checkouts running at the
        // same moment on other workers may take the room first.
        let mut rounds = 0;
        while uncapped && rounds < GROW_ROUNDS && matches!(got, Err(PoolError::Timeout(_))) {
            grow(pool);
            got = pool.timeout_get(&immediate).await;
            rounds += 1;
        }
        let got = match got {
            Err(PoolError::Timeout(_)) if checkout == Checkout::Wait => {
                let config = self.config.load();
                waited = config.checkout_timeout;
                let timeouts = Timeouts {
                    wait: Some(config.checkout_timeout),
                    create: None,
                    recycle: Some(config.connect_timeout),
                };
                let waiting = checkouts.shelf.wait();
                match first_reusable(|| waiting.take()) {
                    Some(obj) => Ok(obj),
                    None => tokio::select! {
                        biased;
                        () = canceled => return Err(BackendError::Canceled),
                        got = pool.timeout_get(&timeouts) => got,
                    },
                }
            }
            other => other,
        };
        let obj = match got {
            Ok(o) => o,
            Err(PoolError::Backend(e)) => {
                self.forget_refused(pool, target, &e);
                return Err(e);
            }
            // Only the wait for a free slot has a timeout (create has none, a slow recycle is retried), so
            // this is a full pool, never a connection attempt that timed out.
            Err(PoolError::Timeout(_)) => {
                let manager = pool.manager();
                return Err(BackendError::PoolFull {
                    name: target.name.clone(),
                    database: manager.database.clone(),
                    user: manager.user.clone(),
                    max_size: pool.status().max_size,
                    waited,
                });
            }
            Err(other) => return Err(BackendError::protocol(target, format!("pool error: {other}"))),
        };
        Ok(PooledConn::checked_out(obj, checkouts, uncapped))
    }

    /// Forgets a pool whose node refused its first connection with an error about the login itself (no
    /// such database or role, wrong password): such a pool holds nothing, and keeping it would let a client
    /// grow the pool map without bound by trying made-up names. Only when no one else uses the pool: a
    /// session holding another handle would go on with a pool nobody else sees.
    fn forget_refused(&self, pool: &NodePool, target: &NodeTarget, error: &BackendError) {
        if !matches!(error, BackendError::Server { .. }) || error.is_node_failure() {
            return;
        }
        let manager = pool.manager();
        let key = (target.index, manager.database.clone(), manager.user.clone());
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        let status = pool.status();
        // Two handles: the map's and the caller's.
        let unused = status.size == 0 && status.waiting == 0 && Arc::strong_count(pool) <= 2;
        if unused && pools.get(&key).is_some_and(|p| Arc::ptr_eq(p, pool)) {
            pools.remove(&key);
        }
    }

    /// Closes pooled connections idle for longer than pool.idle_timeout, then forgets the pools left with
    /// no connection, no waiter and no session holding them (a later login makes a fresh one).
    pub fn reap_idle(&self) {
        let idle = self.config.load().idle_timeout;
        let pools: Vec<NodePool> = {
            let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
            pools.values().cloned().collect()
        };
        for p in &pools {
            p.retain(|_, m| m.last_used() < idle);
            let shelf = &p.manager().checkouts.shelf;
            for obj in shelf.reap(SHELF_REAPS) {
                drop(Object::take(obj));
            }
            if !shelf.is_open() && !p.is_closed() {
                let s = p.status();
                if s.size <= s.max_size {
                    drop(shelf.set_open(true));
                }
            }
        }
        drop(pools);
        let mut pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools.retain(|_, p| {
            let s = p.status();
            s.size > 0 || s.waiting > 0 || Arc::strong_count(p) > 1
        });
    }

    /// Every pool's state; for the admin console, /metrics and tests.
    pub fn status(&self) -> Vec<PoolStatus> {
        let capped = !self.uncapped.load(Ordering::Relaxed);
        let pools = self.pools.lock().unwrap_or_else(|p| p.into_inner());
        pools
            .iter()
            .map(|((node, database, user), p)| {
                let s = p.status();
                PoolStatus {
                    node: *node,
                    database: database.clone(),
                    user: user.clone(),
                    size: s.size,
                    // Shelved connections are checked out as deadpool counts, idle as users count.
                    available: s.available + p.manager().checkouts.shelf.len(),
                    max_size: capped.then_some(s.max_size),
                    waiting: s.waiting,
                }
            })
            .collect()
    }
}

/// A checked-out connection. Give it back with [`PooledConn::release`]; dropping it instead closes it,
/// which makes the node roll back whatever was open.
pub struct PooledConn {
    obj: Option<Object<ConnManager>>,
    checkouts: Arc<Checkouts>,
    /// The issued pid of the session holding the connection (0: none recorded), kept in the connection's
    /// `holder` slot for the registry of cancel keys until the checkout ends, however the connection leaves
    /// its holder (released, handed back, closed).
    held_by: i32,
    /// From an uncapped pool: once it is given back, the pool's idle connections past [`IDLE_KEPT`] are
    /// closed.
    trim_idle: bool,
}

impl std::ops::Deref for PooledConn {
    type Target = BackendConn;
    fn deref(&self) -> &BackendConn {
        self.obj
            .as_ref()
            .unwrap_or_else(|| unreachable!("PooledConn used after release"))
    }
}

impl std::ops::DerefMut for PooledConn {
    fn deref_mut(&mut self) -> &mut BackendConn {
        self.obj
            .as_mut()
            .unwrap_or_else(|| unreachable!("PooledConn used after release"))
    }
}

impl PooledConn {
    /// A connection taken from the pool or its shelf, moved to this worker's event loop and counted in use.
    fn checked_out(mut obj: Object<ConnManager>, checkouts: &Arc<Checkouts>, trim_idle: bool) -> PooledConn {
        obj.settle_here();
        checkouts.in_use.fetch_add(1, Ordering::Relaxed);
        PooledConn {
            obj: Some(obj),
            checkouts: checkouts.clone(),
            held_by: 0,
            trim_idle,
        }
    }

    /// Records the session (by its issued pid) that holds the connection until the checkout ends.
    pub fn hold_for(&mut self, pid: i32) {
        if let Some(obj) = self.obj.as_ref() {
            obj.holder.store(pid, Ordering::Release);
            self.held_by = pid;
        }
    }

    /// Ends the record of [`PooledConn::hold_for`] before the connection leaves this checkout; only this
    /// checkout's mark, should another session's have replaced it.
    fn unmark(held_by: i32, slot: &AtomicI32) {
        if held_by != 0 {
            let _ = slot.compare_exchange(held_by, 0, Ordering::AcqRel, Ordering::Acquire);
        }
    }

    /// Returns the connection to its pool after undoing the session's traces: an open transaction is rolled
    /// back, changed settings and prepared statements are reset; a connection holding state that cannot be
    /// reset (temp tables, LISTEN, session advisory locks) or in doubt is closed instead.
    pub async fn release(mut self) {
        let Some(mut obj) = self.obj.take() else { return };
        Self::unmark(std::mem::take(&mut self.held_by), &obj.holder);
        if obj.broken || obj.applied.unresettable || obj.rbuf.buffered() != 0 {
            drop(Object::take(obj));
            return;
        }
        let mut reset = String::new();
        if obj.status != crate::protocol::TxStatus::Idle {
            reset.push_str("ROLLBACK;");
        }
        if !obj.applied.settings.is_empty() {
            reset.push_str("RESET ALL;RESET ROLE;SET SESSION AUTHORIZATION DEFAULT;");
        }
        if !obj.applied.prepared.is_empty() || obj.applied.unnamed.is_some() {
            reset.push_str("DEALLOCATE ALL;");
        }
        if !reset.is_empty() {
            // ROLLBACK must run on its own: the later statements would fail inside an aborted transaction.
            let ok = match reset.strip_prefix("ROLLBACK;") {
                Some(rest) => {
                    obj.exchange(&query("ROLLBACK"))
                        .await
                        .is_ok_and(|x| x.error.is_none())
                        && (rest.is_empty()
                            || obj.exchange(&query(rest)).await.is_ok_and(|x| x.error.is_none()))
                }
                None => obj
                    .exchange(&query(&reset))
                    .await
                    .is_ok_and(|x| x.error.is_none()),
            };
            if !ok || obj.status != crate::protocol::TxStatus::Idle {
                drop(Object::take(obj));
                return;
            }
        }
        obj.applied = Default::default();
        let pool = if self.trim_idle { Object::pool(&obj) } else { None };
        drop(obj);
        if let Some(pool) = pool {
            trim(&pool);
        }
    }
}

impl PooledConn {
    /// Transaction pooling: hands the connection back as it is, settings and prepared statements included;
    /// the next session adjusts what differs. Only an idle, intact connection goes back, onto the pool's
    /// shelf (or into its queue, where a checkout waits); others are closed.
    pub fn return_shared(mut self) {
        let Some(obj) = self.obj.take() else { return };
        Self::unmark(std::mem::take(&mut self.held_by), &obj.holder);
        if !obj.is_clean_idle() || obj.applied.unresettable {
            drop(Object::take(obj));
            return;
        }
        // Dropped, an object goes back to deadpool's queue.
        drop(self.checkouts.shelf.put(obj));
    }
}

impl Drop for PooledConn {
    fn drop(&mut self) {
        self.checkouts.in_use.fetch_sub(1, Ordering::Relaxed);
        if let Some(obj) = self.obj.take() {
            Self::unmark(self.held_by, &obj.holder);
            // Not released: its state is unknown, so it must not be handed to anyone else.
            drop(Object::take(obj));
        }
    }
}
