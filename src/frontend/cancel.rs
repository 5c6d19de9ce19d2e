//! Cancel keys: each client session gets its own (pid, secret); a CancelRequest carrying it is passed on to
//! whichever node connection is running that session's request at the moment.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use rand::Rng;

/// Where a session's current request runs: (node index, backend pid, backend secret). The index rather
/// than the address: a cancel reaches the node the way its settings say (TLS included), and recording it
/// happens twice per request and must not allocate.
pub(crate) type ActiveBackend = Arc<Mutex<Option<(usize, i32, i32)>>>;

/// All live sessions' cancel keys.
#[derive(Default)]
pub struct CancelRegistry {
    sessions: Mutex<HashMap<(i32, i32), ActiveBackend>>,
}

impl CancelRegistry {
    /// Allocates a fresh key for a new session.
    pub fn register(self: &Arc<Self>) -> CancelKey {
        let active: ActiveBackend = Arc::default();
        let mut map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let mut rng = rand::rng();
        let key = loop {
            let k = (rng.random_range(1..i32::MAX), rng.random::<i32>());
            if !map.contains_key(&k) {
                break k;
            }
        };
        map.insert(key, active.clone());
        CancelKey {
            registry: self.clone(),
            pid: key.0,
            secret: key.1,
            active,
        }
    }

    /// The node connection to cancel for a client's key, if the key is known and a request is running.
    pub fn lookup(&self, pid: i32, secret: i32) -> Option<(usize, i32, i32)> {
        let map = self.sessions.lock().unwrap_or_else(|p| p.into_inner());
        let active = map.get(&(pid, secret))?;
        *active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// A session's key; unregisters itself when the session ends.
pub struct CancelKey {
    registry: Arc<CancelRegistry>,
    /// The pid sent to the client in BackendKeyData.
    pub pid: i32,
    /// The secret sent to the client.
    pub secret: i32,
    active: ActiveBackend,
}

impl CancelKey {
    /// Records which node connection runs the session's current request (None when idle).
    pub fn set_active(&self, backend: Option<(usize, i32, i32)>) {
        *self.active.lock().unwrap_or_else(|p| p.into_inner()) = backend;
    }
}

impl Drop for CancelKey {
    fn drop(&mut self) {
        self.registry
            .sessions
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&(self.pid, self.secret));
    }
}
