//! The configuration and fleet snapshot a session's request reads. A request looked at them about a dozen
//! times, and each shared load (`arc_swap`) cost some fifty instructions; the session now keeps copies,
//! checks them for newer ones with a pointer comparison when a request starts and when it waits for the
//! client, and reads the copies in between. Code that waits inside a request and must see what changed
//! meanwhile (a failover, a reload) still asks the shared state.

use std::sync::Arc;

use arc_swap::{ArcSwap, Cache};

use crate::cluster::view::FleetView;
use crate::cluster::{Fleet, Node, NodesCell, ViewCell};
use crate::config::{Config, ConfigHandle};

/// Copies of the configuration, the fleet snapshot and the node list, as of the last [`Current::refresh`].
pub(super) struct Current {
    config_cell: Cache<Arc<ArcSwap<Config>>, Arc<Config>>,
    view_cell: Cache<ViewCell, Arc<FleetView>>,
    nodes_cell: Cache<NodesCell, Arc<Vec<Arc<Node>>>>,
    pub(super) config: Arc<Config>,
    pub(super) view: Arc<FleetView>,
    pub(super) nodes: Arc<Vec<Arc<Node>>>,
}

impl Current {
    pub(super) fn new(config: &ConfigHandle, fleet: &Arc<Fleet>) -> Current {
        let mut config_cell = config.cache();
        let mut view_cell = Cache::new(ViewCell(fleet.clone()));
        let mut nodes_cell = Cache::new(NodesCell(fleet.clone()));
        Current {
            config: config_cell.load().clone(),
            view: view_cell.load().clone(),
            nodes: nodes_cell.load().clone(),
            config_cell,
            view_cell,
            nodes_cell,
        }
    }

    /// Takes up what was published since the last call. The reference counts shared between threads are
    /// touched only when something changed.
    pub(super) fn refresh(&mut self) {
        fn take_up<T>(copy: &mut Arc<T>, published: &Arc<T>) {
            if !Arc::ptr_eq(copy, published) {
                *copy = published.clone();
            }
        }
        take_up(&mut self.config, self.config_cell.load());
        take_up(&mut self.view, self.view_cell.load());
        take_up(&mut self.nodes, self.nodes_cell.load());
    }
}
