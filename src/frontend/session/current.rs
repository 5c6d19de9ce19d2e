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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::view::NodeState;
    use crate::replication::ForwardState;

    fn config(extra_node: bool, max_size: usize) -> Config {
        let mut text = String::from(
            "[listen]\naddress = \"127.0.0.1:0\"\n\n[[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
             [[nodes]]\nname = \"pg1\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\n\n",
        );
        if extra_node {
            text.push_str("[[nodes]]\nname = \"pg2\"\naddress = \"127.0.0.1:5502\"\nrole = \"replica\"\n\n");
        }
        text.push_str(&format!("[pool]\nmax_size = {max_size}\n"));
        Config::parse(&text).expect("config")
    }

    #[test]
    fn refresh_takes_up_what_was_published_and_only_then() {
        let first = config(false, 5);
        let forward = Arc::new(ForwardState::new(&first));
        let fleet = Arc::new(Fleet::from_config(&first, forward).expect("fleet"));
        let handle = ConfigHandle::new(first);
        let mut current = Current::new(&handle, &fleet);
        let (copied, view, nodes) = (
            current.config.clone(),
            current.view.clone(),
            current.nodes.clone(),
        );

        // Nothing published: the copies stay the same objects.
        current.refresh();
        assert!(Arc::ptr_eq(&copied, &current.config));
        assert!(Arc::ptr_eq(&view, &current.view));
        assert!(Arc::ptr_eq(&nodes, &current.nodes));

        // Published, but not yet looked at: the session still reads its copies.
        let second = config(true, 7);
        fleet.apply(&second).expect("apply");
        handle.publish(Arc::new(second));
        assert_eq!(current.config.pool.max_size, Some(5));
        assert_eq!(current.nodes.len(), 1);

        current.refresh();
        assert_eq!(current.config.pool.max_size, Some(7));
        assert_eq!(current.nodes.len(), 2);
        assert_eq!(current.view.nodes.len(), 2);

        // A health check publishes a new snapshot, which the next refresh takes up.
        let before = current.view.clone();
        fleet.update(1, NodeState::default());
        current.refresh();
        assert!(!Arc::ptr_eq(&before, &current.view));
        assert!(!current.view.nodes[1].up);
    }
}
