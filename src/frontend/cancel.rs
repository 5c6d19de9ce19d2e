//! The session registry: who the live client sessions are, by the pid pgfleet gave each of them.
//!
//! Each client session gets its own (pid, secret) in BackendKeyData; a CancelRequest carrying it is passed
//! on to whichever node connection is running that session's request at the moment. The registry also
//! knows which node connections each session holds, so that a node backend's pid can be traced back to
//! the client session it serves: a NotificationResponse from a node carries the notifying client's pid
//! (`rewrite_notifications`), and `pg_cancel_backend` / `pg_terminate_backend` find their target session
//! by either pid (`resolve`). A session asked to end by `pg_terminate_backend` learns it through its
//! [`CancelKey::terminated`] signal.

use std::collections::HashMap;
use std::future::Future;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::Poll;

use bytes::Bytes;
use rand::Rng;
use tokio::sync::watch;

use crate::backend::PooledConn;

/// Where a session's current request runs: (node index, backend pid, backend secret). The index rather
/// than the address: a cancel reaches the node the way its settings say (TLS included), and recording it
/// happens twice per request and must not allocate.
pub(crate) type ActiveBackend = (usize, i32, i32);

/// Issued pids start above the largest process id an operating system hands out (Linux's `pid_max`
/// cannot exceed 2^22), so that a pid pgfleet issued is never also a node backend's pid.
const FIRST_ISSUED_PID: i32 = (1 << 22) + 1;

/// What [`CancelKey::attention`] found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Attention {
    /// `pg_terminate_backend` named the session.
    Terminated,
    /// The shutdown channel changed.
    Shutdown,
}

/// What a cancel reaches (see [`SessionHandle::cancel`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelTarget {
    /// The node connection running the session's request: the cancel goes on to it.
    Node(ActiveBackend),
    /// The request had not reached a node yet (pgfleet was routing it, or it waited for a pooled connection,
    /// for another session's question to its replica, for a replica to catch up): the session ends it with
    /// 57014 itself, before any node runs it.
    Waiting,
    /// An unknown key, or a session between requests: nothing to cancel, as PostgreSQL ignores it too.
    Nothing,
}

/// [`SessionHandle::request`]: the session is between requests.
const BETWEEN_REQUESTS: u8 = 0;
/// The session is handling a request.
const IN_REQUEST: u8 = 1;
/// A cancel came during the request while no node was running it.
const CANCELED: u8 = 2;

/// One live client session as other sessions and cancel requests see it.
pub struct SessionHandle {
    /// The pid sent to the client in BackendKeyData.
    pub pid: i32,
    secret: i32,
    /// The role the session logged in as (the role of its node connections).
    pub user: String,
    active: Mutex<Option<ActiveBackend>>,
    /// Whether the session is handling a request (BETWEEN_REQUESTS, IN_REQUEST, CANCELED). A cancel that
    /// comes during a request while no node runs it (`active` is None) has no backend to go to, and is the
    /// session's own to act on: it ends any wait of the request, and the request does not go to a node.
    /// Read and written under `active`'s lock where the two must agree.
    request: AtomicU8,
    /// Set by `pg_terminate_backend`; the session's task is woken through `waker`. A flag and a waker rather
    /// than a channel: the session looks at it around every request, and this costs an atomic load and a
    /// waker comparison where a channel's subscription took a lock to register and another to leave.
    terminated: AtomicBool,
    waker: futures_util::task::AtomicWaker,
    /// Closed when the session's key is dropped: lets the terminating session wait for the end.
    ended: watch::Sender<()>,
}

impl SessionHandle {
    /// The node connection running the session's request, if one is running.
    pub fn active(&self) -> Option<ActiveBackend> {
        *self.active.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// A cancel of the session's request: what it reaches (the caller passes a [`CancelTarget::Node`] on to
    /// that node); a request still waiting on pgfleet is told to end here.
    pub fn cancel(&self) -> CancelTarget {
        // Under the lock: the session cannot start its request on a node between the two looks.
        let active = self.active.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(backend) = *active {
            // The node ends its statement. Should pgfleet then run the request again elsewhere (its replica
            // turned out stale, its node was lost before any reply), the cancel holds for that run too: the
            // client cancelled the request, not one attempt at it. No wake-up: nothing of the session waits
            // on the flag while a node runs its request.
            let _ = self
                .request
                .compare_exchange(IN_REQUEST, CANCELED, Ordering::AcqRel, Ordering::Acquire);
            return CancelTarget::Node(backend);
        }
        match self
            .request
            .compare_exchange(IN_REQUEST, CANCELED, Ordering::AcqRel, Ordering::Acquire)
        {
            Ok(_) => {
                self.waker.wake();
                CancelTarget::Waiting
            }
            Err(CANCELED) => CancelTarget::Waiting,
            Err(_) => CancelTarget::Nothing,
        }
    }

    /// See [`CancelKey::canceled`].
    pub fn canceled(&self) -> impl Future<Output = ()> + '_ {
        self.until(|| (self.request.load(Ordering::Acquire) == CANCELED).then_some(()))
    }

    /// Runs `work` of pgfleet's own for the current request (a question to a node, readying a connection),
    /// ended by a cancel of the request when `cancelable`: None then, and the caller closes whatever node
    /// connection `work` left half used. Not cancelable where the session keeps state on that connection.
    pub(crate) async fn unless_canceled<F: Future>(&self, cancelable: bool, work: F) -> Option<F::Output> {
        tokio::select! {
            biased;
            out = work => Some(out),
            () = self.canceled(), if cancelable => None,
        }
    }

    /// Marks the start of a request: from here until [`Self::end_request`], a cancel that finds no node
    /// running it is kept for the session.
    pub(crate) fn begin_request(&self) {
        self.request.store(IN_REQUEST, Ordering::Release);
    }

    /// Marks the end of a request: a cancel it did not act on is forgotten, as PostgreSQL forgets a cancel
    /// that comes after its statement ended.
    pub(crate) fn end_request(&self) {
        self.request.store(BETWEEN_REQUESTS, Ordering::Release);
    }

    /// Asks the session to end (as `pg_terminate_backend` does).
    pub fn terminate(&self) {
        self.terminated.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Resolves once the session has ended and given back its node connections.
    pub async fn ended(&self) {
        self.ended.closed().await;
    }

    /// Resolves once another session has terminated this one.
    pub(crate) fn until_terminated(&self) -> impl Future<Output = ()> + '_ {
        self.until(|| self.terminated.load(Ordering::Acquire).then_some(()))
    }

    /// Resolves with what `look` finds, looking again each time the session's waker is woken.
    fn until<'a, T>(&'a self, look: impl Fn() -> Option<T> + 'a) -> impl Future<Output = T> + 'a {
        std::future::poll_fn(move |cx| {
            if let Some(found) = look() {
                return Poll::Ready(found);
            }
            self.waker.register(cx.waker());
            // Set between the first look and the registration: that wake found no waker.
            match look() {
                Some(found) => Poll::Ready(found),
                None => Poll::Pending,
            }
        })
    }
}

/// What a pid names, as far as pgfleet's sessions go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Named {
    /// The client session with this issued pid.
    Session(i32),
    /// Several client sessions could be meant: pgfleet acts on none of them.
    Ambiguous,
    /// No client session: the pid is for the primary to judge.
    Unknown,
}

/// Which client session a pid names, from what it matches: the session that was issued that pid, the
/// session holding the primary connection with that backend pid, and the sessions holding replica
/// connections with it. The primary's connections come first, as `pg_backend_pid()` runs there; a pid
/// that two sessions could claim names none.
pub(crate) fn named_session(issued: Option<i32>, on_primary: Option<i32>, on_replicas: &[i32]) -> Named {
    let backend = match on_primary {
        Some(s) => Some(s),
        None => match on_replicas.split_first() {
            None => None,
            Some((first, rest)) if rest.iter().all(|s| s == first) => Some(*first),
            Some(_) => return Named::Ambiguous,
        },
    };
    match (issued, backend) {
        (Some(a), Some(b)) if a != b => Named::Ambiguous,
        (Some(s), _) | (None, Some(s)) => Named::Session(s),
        (None, None) => Named::Unknown,
    }
}

/// All live sessions, and the node connections they hold.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<i32, Arc<SessionHandle>>>,
    /// (node index, backend pid) of a node connection that has been checked out -> its holder slot (the
    /// issued pid of the session holding it, 0 when none; see `BackendConn::holder`). Written once per
    /// connection; entries of closed connections are pruned as the map grows.
    held: Mutex<HeldMap>,
}

#[derive(Default)]
struct HeldMap {
    slots: HashMap<(usize, i32), Weak<AtomicI32>>,
    /// The size at which closed connections' entries are next pruned.
    prune_at: usize,
}

impl HeldMap {
    fn insert(&mut self, key: (usize, i32), slot: &Arc<AtomicI32>) {
        self.slots.insert(key, Arc::downgrade(slot));
        if self.slots.len() > self.prune_at {
            self.slots.retain(|_, s| s.strong_count() > 0);
            self.prune_at = (self.slots.len() * 2).max(64);
        }
    }

    /// The issued pid of the session holding the connection, if one does.
    fn holder(&self, key: &(usize, i32)) -> Option<i32> {
        let pid = self.slots.get(key)?.upgrade()?.load(Ordering::Acquire);
        (pid != 0).then_some(pid)
    }
}

impl CancelRegistry {
    /// Wakes every session waiting in [`CancelKey::attention`], so that each looks at the shutdown channel.
    pub fn wake_all(&self) {
        let sessions = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        for handle in sessions.values() {
            handle.waker.wake();
        }
    }

    /// Allocates a fresh key for a new session of `user`.
    pub fn register(self: &Arc<Self>, user: &str) -> CancelKey {
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::rng();
        let pid = loop {
            let pid = rng.random_range(FIRST_ISSUED_PID..i32::MAX);
            if !map.contains_key(&pid) {
                break pid;
            }
        };
        let (ended, alive) = watch::channel(());
        let handle = Arc::new(SessionHandle {
            pid,
            secret: rng.random::<i32>(),
            user: user.to_owned(),
            active: Mutex::new(None),
            request: AtomicU8::new(BETWEEN_REQUESTS),
            terminated: AtomicBool::new(false),
            waker: futures_util::task::AtomicWaker::new(),
            ended,
        });
        map.insert(pid, handle.clone());
        CancelKey {
            registry: self.clone(),
            pid,
            secret: handle.secret,
            handle,
            _alive: alive,
        }
    }

    /// What a client's cancel with this key reaches: the node connection running the session's request,
    /// or the session's own wait before one runs it (which this ends), or nothing.
    pub fn cancel(&self, pid: i32, secret: i32) -> CancelTarget {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        match map.get(&pid).filter(|h| h.secret == secret) {
            Some(handle) => handle.cancel(),
            None => CancelTarget::Nothing,
        }
    }

    /// The live session with this issued pid.
    pub fn session(&self, pid: i32) -> Option<Arc<SessionHandle>> {
        self.sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&pid)
            .cloned()
    }

    /// The issued pid of the session holding the connection with `backend_pid` on node `node`.
    pub fn holder_of(&self, node: usize, backend_pid: i32) -> Option<i32> {
        self.held
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .holder(&(node, backend_pid))
    }

    /// The session a pid names: an issued pid, or the backend pid of a node connection a session holds
    /// (see [`named_session`]); `nodes` is the number of node slots, `primary` the primary's index.
    pub fn resolve(&self, pid: i32, primary: Option<usize>, nodes: usize) -> Option<Arc<SessionHandle>> {
        let issued = self.session(pid).map(|h| h.pid);
        let (on_primary, on_replicas) = {
            let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
            let on_primary = primary.and_then(|p| held.holder(&(p, pid)));
            let on_replicas: Vec<i32> = (0..nodes)
                .filter(|n| Some(*n) != primary)
                .filter_map(|n| held.holder(&(n, pid)))
                .collect();
            (on_primary, on_replicas)
        };
        match named_session(issued, on_primary, &on_replicas) {
            Named::Session(s) => self.session(s),
            Named::Ambiguous => {
                tracing::info!(
                    pid,
                    "pid matches more than one client session: left to the primary"
                );
                None
            }
            Named::Unknown => None,
        }
    }

    /// `block` (whole backend frames from node `node`) with the pid of every NotificationResponse that
    /// came from a connection a client session holds replaced by that client's issued pid.
    pub fn rewrite_notifications(&self, node: usize, block: Bytes) -> Bytes {
        let mut out: Option<Vec<u8>> = None;
        for_each_notification(&block, |at, backend_pid| {
            if let Some(pid) = self.holder_of(node, backend_pid).filter(|p| *p != backend_pid) {
                let bytes = out.get_or_insert_with(|| block.to_vec());
                bytes[at..at + 4].copy_from_slice(&pid.to_be_bytes());
            }
        });
        match out {
            Some(bytes) => Bytes::from(bytes),
            None => block,
        }
    }
}

/// Calls `f(offset, pid)` for each NotificationResponse in a block of whole frames, with the offset of its
/// pid field.
pub(crate) fn for_each_notification(block: &[u8], mut f: impl FnMut(usize, i32)) {
    let mut at = 0;
    while let Some(header) = block.get(at..at + 5) {
        let len = i32::from_be_bytes([header[1], header[2], header[3], header[4]]);
        let Ok(len) = usize::try_from(len) else { return };
        if header[0] == b'A'
            && let Some(pid) = block.get(at + 5..at + 9)
        {
            f(at + 5, i32::from_be_bytes([pid[0], pid[1], pid[2], pid[3]]));
        }
        at += 1 + len.max(4);
    }
}

/// Sends a CancelRequest for the node connection running a session's request (a client's cancel, a
/// `pg_cancel_backend`, or one that came while pgfleet still had an open transaction's request).
pub(crate) async fn cancel_on_node(fleet: &crate::cluster::Fleet, (node, pid, secret): ActiveBackend) {
    let Some(n) = fleet.nodes().get(node).cloned() else {
        tracing::debug!("cancel request for a node no longer configured");
        return;
    };
    tracing::info!(node = %n.target.name, "forwarding cancel request");
    if let Err(e) = crate::backend::connect::send_cancel(&n.target, pid, secret).await {
        tracing::warn!(node = %n.target.name, error = %e, "cancel request could not be delivered");
    }
}

/// How long after sending a held cancel pgfleet looks whether the node has answered anything, doubling after
/// each repeat, and how many cancels it sends at most ([`cancel_behind_request`]).
const CANCEL_REPEAT_AFTER: std::time::Duration = std::time::Duration::from_millis(50);
const CANCEL_ATTEMPTS: u32 = 5;

/// Whether the node has answered anything of a request since a held cancel went behind it; set by the
/// request's flow at its node's first reply and when the flow ends (on drop).
#[derive(Debug, Default)]
pub(crate) struct CancelAnswered(Arc<AtomicBool>);

impl CancelAnswered {
    /// The node replied: the cancel reached a running statement, or the statement ended anyway.
    pub(crate) fn answered(&self) {
        self.0.store(true, Ordering::Release);
    }
}

impl Drop for CancelAnswered {
    fn drop(&mut self) {
        self.answered();
    }
}

/// Sends the cancel of a request pgfleet held (`Start::RunThenCancel`) to its backend, right after the
/// request was written there, and again while the node has answered nothing of it (up to
/// [`CANCEL_ATTEMPTS`] cancels, the waits doubling from [`CANCEL_REPEAT_AFTER`]). PostgreSQL ignores a
/// cancel that reaches a backend still reading its next message, so one that lands before the backend has
/// read the request (a busy machine can keep the backend from running until then) would be lost, and the
/// statement the client cancelled would run to its end. A repeat goes only while the node has sent nothing,
/// so has not finished the request.
pub(crate) fn cancel_behind_request(
    fleet: Arc<crate::cluster::Fleet>,
    backend: ActiveBackend,
) -> CancelAnswered {
    let answered = CancelAnswered::default();
    let seen = answered.0.clone();
    let send = async move {
        let mut wait = CANCEL_REPEAT_AFTER;
        for attempt in 1..=CANCEL_ATTEMPTS {
            cancel_on_node(&fleet, backend).await;
            if attempt == CANCEL_ATTEMPTS {
                break;
            }
            tokio::time::sleep(wait).await;
            if seen.load(Ordering::Acquire) {
                break;
            }
            tracing::debug!(
                attempt,
                "the node answered nothing since the cancel: sending it again"
            );
            wait *= 2;
        }
    };
    tokio::spawn(tracing::Instrument::in_current_span(send));
    answered
}

/// What becomes of a request about to go to a node, given the cancels of the request so far
/// ([`CancelKey::run_on`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// It runs there; a cancel from now on goes to its backend.
    Run,
    /// A cancel came while pgfleet had it: it ends with 57014 and goes to no node.
    Refuse,
    /// A cancel came while pgfleet had it, which pgfleet may not answer for: it runs, and the cancel goes to
    /// its backend right after it.
    RunThenCancel,
}

/// A session's key; unregisters itself when the session ends.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    /// The pid sent to the client in BackendKeyData.
    pub pid: i32,
    /// The secret sent to the client.
    pub secret: i32,
    handle: Arc<SessionHandle>,
    /// Dropped with the key: [`SessionHandle::ended`] resolves then.
    _alive: watch::Receiver<()>,
}

impl CancelKey {
    /// Records that no node connection runs the session's request any more (see [`Self::run_on`], the only
    /// way to record one, so that no request reaches a node past a cancel pgfleet took for itself).
    pub fn clear_active(&self) {
        *self.handle.active.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Records that `backend` is about to run the session's request, so that a cancel from now on goes to it.
    /// A cancel that came earlier in the request is acted on here: when `cancelable()` says pgfleet may end
    /// the request itself, nothing is recorded and the request goes nowhere ([`Start::Refuse`]); when it may
    /// not (the request is part of a transaction whose outcome an error of pgfleet's own would misstate), the
    /// request runs and the cancel is the caller's to pass on to `backend` once the request is sent
    /// ([`Start::RunThenCancel`]), as though it had come a moment later.
    pub fn run_on(&self, backend: ActiveBackend, cancelable: impl FnOnce() -> bool) -> Start {
        let mut active = self.handle.active.lock().unwrap_or_else(|p| p.into_inner());
        let start = if self.handle.request.load(Ordering::Acquire) != CANCELED {
            Start::Run
        } else if cancelable() {
            return Start::Refuse;
        } else {
            // Taken: the node gets this cancel, and a later one of the same request finds the backend.
            self.handle.request.store(IN_REQUEST, Ordering::Release);
            Start::RunThenCancel
        };
        *active = Some(backend);
        start
    }

    /// The node connection running the session's request, if one is running.
    pub fn active(&self) -> Option<ActiveBackend> {
        self.handle.active()
    }

    /// Records that this session holds `conn`, until the checkout ends.
    pub fn hold(&self, mut conn: PooledConn) -> PooledConn {
        if !conn.holder_known {
            let key = (conn.target.index, conn.pid);
            self.registry
                .held
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .insert(key, &conn.holder);
            conn.holder_known = true;
        }
        conn.hold_for(self.pid);
        conn
    }

    /// Resolves when another session has terminated this one.
    pub async fn terminated(&self) {
        self.handle.until_terminated().await
    }

    /// Resolves once another session has terminated this one, or `shutdown` holds a value the session has
    /// not seen (pgfleet began to shut down). The session waits for this beside its client between
    /// requests: one waker serves both, where a subscription to the shutdown channel took a lock to register
    /// and another to leave around every request. [`CancelRegistry::wake_all`] wakes it for a shutdown.
    pub fn attention<'a, T>(
        &'a self,
        shutdown: &'a watch::Receiver<T>,
    ) -> impl Future<Output = Attention> + 'a {
        let handle = &self.handle;
        handle.until(move || {
            if handle.terminated.load(Ordering::Acquire) {
                Some(Attention::Terminated)
            } else if shutdown.has_changed().unwrap_or(true) {
                // A closed channel counts as news: the proxy that would send is gone.
                Some(Attention::Shutdown)
            } else {
                None
            }
        })
    }

    /// Resolves once a client's cancel has come during the current request while no node ran it (at once
    /// if one came already): a request waiting on pgfleet (for a pooled connection, for another session's
    /// answer, for a replica to catch up) races its wait against it. A cancel between requests or after the
    /// request reached its node is not taken for one.
    pub fn canceled(&self) -> impl Future<Output = ()> + '_ {
        self.handle.canceled()
    }

    /// Whether a client's cancel has come during the current request while no node ran it.
    pub fn is_canceled(&self) -> bool {
        self.handle.request.load(Ordering::Acquire) == CANCELED
    }

    /// The session's own handle, to watch for termination while the session's state is busy.
    pub fn handle(&self) -> Arc<SessionHandle> {
        self.handle.clone()
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&self.pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn which_session_a_pid_names() {
        use Named::*;
        // (issued to, held on the primary by, held on replicas by, what the pid names)
        type Row = (Option<i32>, Option<i32>, &'static [i32], Named);
        let table: &[Row] = &[
            // An issued pid.
            (Some(7), None, &[], Session(7)),
            // A backend pid of the primary, of one replica, of two replicas held by one session.
            (None, Some(8), &[], Session(8)),
            (None, None, &[9], Session(9)),
            (None, None, &[9, 9], Session(9)),
            // The primary wins over replicas, as pg_backend_pid() runs there.
            (None, Some(8), &[9], Session(8)),
            // Replica connections of two sessions: neither.
            (None, None, &[9, 10], Ambiguous),
            // An issued pid that is also some other session's backend pid: neither.
            (Some(7), Some(8), &[], Ambiguous),
            (Some(7), None, &[9], Ambiguous),
            (Some(7), Some(7), &[7], Session(7)),
            (None, None, &[], Unknown),
        ];
        for (issued, primary, replicas, want) in table {
            assert_eq!(
                named_session(*issued, *primary, replicas),
                *want,
                "{issued:?} {primary:?} {replicas:?}"
            );
        }
    }

    fn frame(kind: u8, body: &[u8]) -> Vec<u8> {
        crate::protocol::frame::build(kind, body).to_vec()
    }

    fn notification(pid: i32) -> Vec<u8> {
        let mut body = pid.to_be_bytes().to_vec();
        body.extend_from_slice(b"ch\0payload\0");
        frame(b'A', &body)
    }

    #[test]
    fn notifications_carry_the_client_pid() {
        let registry = Arc::new(CancelRegistry::default());
        let key = registry.register("app");
        let slot = Arc::new(AtomicI32::new(key.pid));
        registry.held.lock().expect("held").insert((1, 4242), &slot);
        let mut block = frame(b'C', b"NOTIFY\0");
        block.extend(notification(4242));
        block.extend(notification(5000));
        block.extend(frame(b'Z', b"I"));
        let out = registry.rewrite_notifications(1, Bytes::from(block.clone()));
        let mut pids = Vec::new();
        for_each_notification(&out, |_, pid| pids.push(pid));
        assert_eq!(
            pids,
            vec![key.pid, 5000],
            "held connection mapped, unknown one kept"
        );
        assert_eq!(out.len(), block.len());
        // Another node's connection with the same backend pid is someone else's.
        let other = registry.rewrite_notifications(0, Bytes::from(block.clone()));
        assert_eq!(&other[..], &block[..]);
    }

    #[test]
    fn issued_pids_are_above_os_pids_and_keys_unregister() {
        let registry = Arc::new(CancelRegistry::default());
        let a = registry.register("app");
        let b = registry.register("other");
        assert!(a.pid >= FIRST_ISSUED_PID && b.pid >= FIRST_ISSUED_PID);
        assert_ne!(a.pid, b.pid);
        assert_eq!(
            registry.session(b.pid).map(|h| h.user.clone()),
            Some("other".into())
        );
        assert_eq!(
            registry.cancel(a.pid, a.secret),
            CancelTarget::Nothing,
            "idle: nothing to cancel"
        );
        assert_eq!(a.run_on((0, 11, 12), || true), Start::Run);
        assert_eq!(registry.cancel(a.pid, a.secret), CancelTarget::Node((0, 11, 12)));
        assert_eq!(
            registry.cancel(a.pid, a.secret.wrapping_add(1)),
            CancelTarget::Nothing
        );
        let pid = a.pid;
        drop(a);
        assert!(registry.session(pid).is_none());
    }

    #[test]
    fn a_cancel_during_a_request_ends_it_before_it_reaches_a_node() {
        use futures_util::FutureExt;
        let registry = Arc::new(CancelRegistry::default());
        let key = registry.register("app");
        let handle = key.handle();
        let cancel = || registry.cancel(key.pid, key.secret);
        // Between requests a cancel is ignored, and not kept for the next request.
        assert_eq!(cancel(), CancelTarget::Nothing);
        handle.begin_request();
        let mut wait = Box::pin(key.canceled());
        assert!((&mut wait).now_or_never().is_none(), "no cancel yet");
        assert_eq!(cancel(), CancelTarget::Waiting);
        assert_eq!(
            cancel(),
            CancelTarget::Waiting,
            "a second cancel of the same request"
        );
        assert!((&mut wait).now_or_never().is_some(), "the cancel ends the wait");
        assert!(
            key.canceled().now_or_never().is_some(),
            "and any later wait of the request"
        );
        assert_eq!(
            key.run_on((1, 2, 3), || true),
            Start::Refuse,
            "the request goes to no node"
        );
        assert!(key.active().is_none());
        // Inside a transaction pgfleet cannot answer for the node: the request runs, and the cancel is the
        // caller's to send after it, once.
        assert_eq!(key.run_on((1, 2, 3), || false), Start::RunThenCancel);
        assert_eq!(key.active(), Some((1, 2, 3)));
        assert_eq!(
            cancel(),
            CancelTarget::Node((1, 2, 3)),
            "a later cancel finds the node"
        );
        key.clear_active();
        assert_eq!(
            key.run_on((1, 2, 3), || false),
            Start::RunThenCancel,
            "a cancel that reached the node holds for a second run of the same request"
        );
        key.clear_active();
        handle.end_request();
        // The request is over: a cancel now is for nobody, and the next request starts afresh.
        assert_eq!(cancel(), CancelTarget::Nothing);
        handle.begin_request();
        assert!(key.canceled().now_or_never().is_none());
        // A request that reached its node: the cancel goes there, and the request runs nowhere again (a read
        // whose replica turned out behind would otherwise go on to the primary and run there uncancelled).
        assert_eq!(key.run_on((1, 2, 3), || true), Start::Run);
        assert_eq!(cancel(), CancelTarget::Node((1, 2, 3)));
        assert!(key.canceled().now_or_never().is_some());
        key.clear_active();
        assert_eq!(key.run_on((0, 4, 5), || true), Start::Refuse);
        handle.end_request();
        // Back from the node with the request not yet over, a cancel now ends it before it runs again.
        handle.begin_request();
        assert_eq!(key.run_on((1, 2, 3), || true), Start::Run);
        key.clear_active();
        assert_eq!(cancel(), CancelTarget::Waiting);
        assert_eq!(key.run_on((0, 4, 5), || true), Start::Refuse);
        handle.end_request();
    }
}
