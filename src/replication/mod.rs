//! Forward mode: pgfleet keeps plain PostgreSQL replicas in sync by forwarding the primary's committed
//! changes. Per database one task reads a logical replication slot on the primary and hands its pgoutput
//! stream to every replica (`feed`, `stream`); per (database, replica) one task first copies schema and data
//! from a snapshot (`copy`), then decodes the stream (`pgoutput`) and applies it as SQL (`sql`) in commit
//! order (`apply`), storing its progress on the replica in the same transaction as the changes. `setup` prepares the primary: checks, the publication, and the
//! event trigger that puts DDL into the WAL stream at its place; `teardown` removes all that again
//! (`pgfleet forward-stop`), which refuses while the connection `presence` keeps on the primary is there.

pub(crate) mod apply;
pub(crate) mod copy;
pub(crate) mod copy_round;
pub(crate) mod feed;
pub(crate) mod pgoutput;
mod presence;
pub mod setup;
pub(crate) mod slots;
pub(crate) mod sql;
pub(crate) mod stream;
pub mod streamed;
pub mod teardown;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering};
use std::time::Duration;

use arc_swap::Guard;

use self::slots::{ReplicaStatus, SlotMonitor};
use self::streamed::StreamedLoad;
use crate::cluster::{Fleet, ReplayPositions};
use crate::config::{Config, ConfigHandle, ReplicationMode};
use crate::protocol::lsn::{Lsn, pg_epoch_micros_now};

/// Where one replica stands for one database.
#[derive(Debug, Default)]
pub struct Progress {
    state: AtomicU8,
    /// End LSN of the last transaction durably applied (an [`Lsn`]; atomics hold its `u64`).
    pub applied: AtomicU64,
    /// Position the replica is known to be consistent with (applied, or the primary's WAL end while idle).
    pub visible: AtomicU64,
    /// Row changes applied.
    pub rows: AtomicU64,
    /// Transactions applied.
    pub transactions: AtomicU64,
    /// Commit time (microseconds since 2000-01-01) of the last applied transaction.
    pub last_commit_time: AtomicI64,
}

/// Replica state in forward mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    /// Not started yet.
    Starting,
    /// Initial copy running: serves no reads.
    Copying,
    /// Following the stream.
    Streaming,
    /// The task failed and is retrying.
    Stopped,
}

impl State {
    /// Lowercase name for SHOW REPLICATION and metrics.
    pub fn name(self) -> &'static str {
        match self {
            State::Starting => "starting",
            State::Copying => "copying",
            State::Streaming => "streaming",
            State::Stopped => "stopped",
        }
    }
}

impl Progress {
    /// The current state.
    pub fn state(&self) -> State {
        match self.state.load(Ordering::Relaxed) {
            1 => State::Copying,
            2 => State::Streaming,
            3 => State::Stopped,
            _ => State::Starting,
        }
    }

    /// Sets the state.
    pub fn set_state(&self, s: State) {
        let v = match s {
            State::Starting => 0,
            State::Copying => 1,
            State::Streaming => 2,
            State::Stopped => 3,
        };
        self.state.store(v, Ordering::Relaxed);
    }

    /// Records a durably applied position.
    pub fn set_applied(&self, lsn: Lsn) {
        self.applied.fetch_max(lsn.0, Ordering::Relaxed);
        self.visible.fetch_max(lsn.0, Ordering::Relaxed);
    }

    /// End of the last transaction durably applied; [`Lsn::ZERO`] before the first.
    pub fn applied(&self) -> Lsn {
        Lsn(self.applied.load(Ordering::Relaxed))
    }

    /// Position the replica is known to be consistent with; [`Lsn::ZERO`] before anything is applied.
    pub fn visible(&self) -> Lsn {
        Lsn(self.visible.load(Ordering::Relaxed))
    }
}

/// Forward-mode progress of every (replica node, database).
#[derive(Debug, Default)]
pub struct ForwardState {
    /// Databases forwarded, in config order.
    pub databases: Vec<String>,
    /// `progress[node][database]`; empty for the primary.
    pub progress: Vec<Vec<Arc<Progress>>>,
    /// Per database, in config order: the large transactions its change stream has open.
    pub streamed: Vec<Arc<StreamedLoad>>,
}

impl ForwardState {
    /// State for a config (empty unless forward mode).
    pub fn new(config: &Config) -> Self {
        if config.replication.mode != ReplicationMode::Forward {
            return Self::default();
        }
        let databases = config.replication.databases.clone();
        let progress = config
            .nodes
            .iter()
            .map(|n| {
                if n.role == crate::config::Role::Replica {
                    databases.iter().map(|_| Arc::new(Progress::default())).collect()
                } else {
                    Vec::new()
                }
            })
            .collect();
        let streamed = databases.iter().map(|_| Arc::default()).collect();
        Self {
            databases,
            progress,
            streamed,
        }
    }

    /// Whether forward mode is on.
    pub fn enabled(&self) -> bool {
        !self.databases.is_empty()
    }

    /// How far behind in time a replica is: zero when it has reached `primary_lsn`, else the age of its
    /// last applied commit.
    pub fn lag(&self, node: usize, primary_lsn: Option<Lsn>) -> Option<Duration> {
        let visible = self.visible(node)?;
        if primary_lsn.is_none_or(|p| visible >= p) {
            return Some(Duration::ZERO);
        }
        let p = self.progress.get(node)?;
        let oldest = p
            .iter()
            .map(|x| x.last_commit_time.load(Ordering::Relaxed))
            .min()?;
        let now = pg_epoch_micros_now();
        Some(Duration::from_micros(now.saturating_sub(oldest).max(0) as u64))
    }

    /// The position a replica is consistent with across all forwarded databases, if it is streaming all.
    pub fn visible(&self, node: usize) -> Option<Lsn> {
        let p = self.progress.get(node)?;
        if p.is_empty() || p.iter().any(|x| x.state() != State::Streaming) {
            return None;
        }
        p.iter().map(|x| x.visible()).min()
    }
}

/// The fleet learns replay positions from here: routing in forward mode follows what pgfleet has applied.
impl ReplayPositions for ForwardState {
    fn enabled(&self) -> bool {
        ForwardState::enabled(self)
    }

    fn visible(&self, node: usize) -> Option<Lsn> {
        ForwardState::visible(self, node)
    }

    fn lag(&self, node: usize, primary_lsn: Option<Lsn>) -> Option<Duration> {
        ForwardState::lag(self, node, primary_lsn)
    }
}

/// What forward mode works with, handed out by the proxy's wiring: the fleet (to find the primary and the
/// replicas), the config, the per-replica progress it reports into, and the slot monitor it owns.
#[derive(Debug)]
pub struct Replication {
    config: ConfigHandle,
    /// Nodes and their health.
    pub fleet: Arc<Fleet>,
    /// Progress of every (replica, database); the same value the fleet reads positions from.
    pub forward: Arc<ForwardState>,
    /// WAL held by pgfleet's slots; checked only in forward mode.
    pub slots: Arc<SlotMonitor>,
}

impl Replication {
    /// The handle for a fleet built with `forward` as its replay positions.
    pub fn new(config: ConfigHandle, fleet: Arc<Fleet>, forward: Arc<ForwardState>) -> Arc<Replication> {
        Arc::new(Replication {
            config,
            fleet,
            forward,
            slots: Arc::new(SlotMonitor::new()),
        })
    }

    /// The configuration in force now. Hold the guard briefly: a reload publishes a new one.
    pub fn config(&self) -> Guard<Arc<Config>> {
        self.config.get()
    }

    /// The configuration in force now, for holding across waits.
    pub fn config_arc(&self) -> Arc<Config> {
        self.config.get_arc()
    }

    /// The rows of `SHOW REPLICATION` and the replication metrics.
    pub fn report(&self) -> Vec<ReplicaStatus> {
        slots::report_with(self, Some(&self.slots))
    }
}

/// Starts one change stream per database and one forwarding task per (database, replica) when forward
/// mode is on.
pub fn spawn(ctx: &Arc<Replication>) {
    if !ctx.forward.enabled() {
        return;
    }
    slots::spawn(ctx);
    let ctx = ctx.clone();
    tokio::spawn(async move {
        if let Err(e) = setup::prepare_all(&ctx).await {
            tracing::error!(error = %e, "forward mode cannot start");
            return;
        }
        let replicas: Vec<usize> = (0..ctx.forward.progress.len())
            .filter(|node| !ctx.forward.progress[*node].is_empty())
            .collect();
        for (db, database) in ctx.forward.databases.iter().enumerate() {
            let slot = setup::feed_slot_name(&ctx.config().replication.name, database);
            let names = replicas
                .iter()
                .map(|n| ctx.fleet.nodes()[*n].target.name.clone())
                .collect();
            let load = ctx.forward.streamed[db].clone();
            let (feed, stream) = feed::Feed::new(ctx.clone(), (database.clone(), slot), names, load);
            tokio::spawn(stream.run_forever());
            tokio::spawn(presence::hold(ctx.clone(), database.clone()));
            for (member, node) in replicas.iter().enumerate() {
                let progress = ctx.forward.progress[*node][db].clone();
                let task = apply::Applier::new(ctx.clone(), *node, db, feed.clone(), member, progress);
                tokio::spawn(task.run_forever());
            }
        }
    });
}
