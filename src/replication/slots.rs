//! Watching replication from the operator's side: the slot monitor, and the per-replica report that the
//! admin console's `SHOW REPLICATION` and `/metrics` both show.
//!
//! A logical slot keeps every byte of WAL from its `restart_lsn` on, whether or not pgfleet is running: a
//! replica that stops applying (pgfleet down, the replica down, an apply error retried forever) makes the
//! primary's `pg_wal` grow until its disk is full. The monitor asks the primary every few seconds how much
//! WAL each of our slots holds back, keeps the answer for the console and metrics, and logs a warning once
//! when a slot crosses `replication.max_slot_lag` (and an info line once it falls back under), rather than
//! at every check, so that the log says when the trouble started and ended.
//!
//! The monitor belongs to the proxy's [`Replication`] handle, which the console and metrics read it through.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::setup::{ForwardError, client, feed_slot_name, sql_err};
use super::streamed::StreamedCounts;
use super::{Progress, Replication, State};
use crate::config::{ReplicationMode, Role};
use crate::protocol::lsn::{Lsn, pg_epoch_micros_now};

/// Every forward-mode state, in the order metrics list them.
pub(crate) const STATES: [State; 4] = [State::Starting, State::Copying, State::Streaming, State::Stopped];

/// The longest wait before the first check: the appliers create their slots in the first moments, and an
/// operator starting pgfleet after an outage wants to know at once how much WAL the slots kept meanwhile.
const FIRST_CHECK: Duration = Duration::from_secs(2);
/// Bounds of the check period, which follows `health.interval` (ten health checks per slot check).
const MIN_PERIOD: Duration = Duration::from_secs(1);
const MAX_PERIOD: Duration = Duration::from_secs(10);

/// How much WAL each of pgfleet's slots holds back on the primary, as last seen.
#[derive(Debug, Default)]
pub struct SlotMonitor {
    /// Slot name to bytes between the primary's current WAL position and the slot's `restart_lsn`. A slot
    /// missing here is unknown: not seen yet, no `restart_lsn`, or the last check failed.
    retained: Mutex<HashMap<String, u64>>,
    /// Slots over `max_slot_lag` at the last check, so that each crossing is logged once.
    over: Mutex<HashSet<String>>,
}

/// A slot crossing `max_slot_lag`, as found by one check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Crossing {
    /// The slot now holds more than the limit.
    Over {
        /// Slot name.
        slot: String,
        /// Bytes held.
        retained: u64,
    },
    /// The slot, over the limit before, now holds no more than it.
    Under {
        /// Slot name.
        slot: String,
        /// Bytes held.
        retained: u64,
    },
    /// The slot, over the limit before, no longer exists (dropped for a fresh copy, or by hand).
    Gone {
        /// Slot name.
        slot: String,
    },
}

impl SlotMonitor {
    /// An empty monitor: every slot unknown.
    pub fn new() -> Self {
        Self::default()
    }

    /// Bytes of WAL `slot` held at the last check; None when unknown.
    pub fn retained(&self, slot: &str) -> Option<u64> {
        lock(&self.retained).get(slot).copied()
    }

    /// Every known slot and the WAL it holds, sorted by name (stable metrics output).
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let mut all: Vec<(String, u64)> = lock(&self.retained)
            .iter()
            .map(|(slot, bytes)| (slot.clone(), *bytes))
            .collect();
        all.sort();
        all
    }

    /// Records one check's answer (slot, bytes held or None without `restart_lsn`) and returns the crossings
    /// of `max` it reveals.
    pub fn record(&self, observed: Vec<(String, Option<i64>)>, max: u64) -> Vec<Crossing> {
        let names: HashSet<String> = observed.iter().map(|(slot, _)| slot.clone()).collect();
        // pg_wal_lsn_diff is negative only if the slot is ahead of the WAL end, which means "nothing held".
        let retained: HashMap<String, u64> = observed
            .into_iter()
            .filter_map(|(slot, bytes)| Some((slot, bytes?.max(0) as u64)))
            .collect();
        let mut crossings = Vec::new();
        {
            let mut over = lock(&self.over);
            let mut sorted: Vec<(&String, &u64)> = retained.iter().collect();
            sorted.sort();
            for (slot, bytes) in sorted {
                let was_over = over.contains(slot);
                if *bytes > max && !was_over {
                    over.insert(slot.clone());
                    crossings.push(Crossing::Over {
                        slot: slot.clone(),
                        retained: *bytes,
                    });
                } else if *bytes <= max && was_over {
                    over.remove(slot);
                    crossings.push(Crossing::Under {
                        slot: slot.clone(),
                        retained: *bytes,
                    });
                }
            }
            // A slot present without a restart_lsn keeps its last verdict: unknown is not "fell back under".
            let mut gone: Vec<String> = over.iter().filter(|s| !names.contains(*s)).cloned().collect();
            gone.sort();
            for slot in gone {
                over.remove(&slot);
                crossings.push(Crossing::Gone { slot });
            }
        }
        *lock(&self.retained) = retained;
        crossings
    }

    /// Forgets every value after a failed check: stale numbers would look like a healthy, steady slot. The
    /// crossing verdicts stay, so that a flapping connection does not repeat the warning.
    pub fn forget(&self) {
        lock(&self.retained).clear();
    }
}

/// A poisoned lock only means a panic elsewhere while holding it; the map itself is still usable.
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How often slots are checked: ten health intervals, within 1 to 10 seconds. Tying it to
/// `health.interval` avoids a config key of its own while letting tests with a fast health check see a
/// crossing quickly.
pub(crate) fn period(health_interval: Duration) -> Duration {
    health_interval.saturating_mul(10).clamp(MIN_PERIOD, MAX_PERIOD)
}

/// Starts the slot monitor when forward mode is on.
pub(crate) fn spawn(ctx: &Arc<Replication>) {
    if !ctx.forward.enabled() {
        return;
    }
    tokio::spawn(run(ctx.clone(), ctx.slots.clone()));
}

async fn run(ctx: Arc<Replication>, monitor: Arc<SlotMonitor>) {
    let every = period(ctx.config().health.interval);
    let max = ctx.config().replication.max_slot_lag;
    tokio::time::sleep(every.min(FIRST_CHECK)).await;
    let mut primary: Option<tokio_postgres::Client> = None;
    let mut failing = false;
    loop {
        // Connect and query both count against the limit: a hung primary must not stall the monitor.
        let limit = ctx.config().pool.connect_timeout + ctx.config().health.timeout;
        let result = match tokio::time::timeout(limit, check(&ctx, &mut primary)).await {
            Ok(r) => r,
            Err(_) => Err(ForwardError::Setup(format!(
                "reading replication slots timed out after {limit:?}"
            ))),
        };
        match result {
            Ok(observed) => {
                if failing {
                    tracing::info!("replication slot check works again");
                    failing = false;
                }
                for crossing in monitor.record(observed, max) {
                    log_crossing(&crossing, max);
                }
            }
            Err(e) => {
                primary = None;
                monitor.forget();
                // Once per outage at WARN: the node monitor already reports the primary down.
                if failing {
                    tracing::debug!(error = %e, "replication slot check failed");
                } else {
                    tracing::warn!(error = %e, "replication slot check failed; slot sizes unknown meanwhile");
                    failing = true;
                }
            }
        }
        tokio::time::sleep(every).await;
    }
}

/// One check: every slot whose name starts with `replication.name` and `_`, and the WAL it holds.
async fn check(
    ctx: &Replication,
    primary: &mut Option<tokio_postgres::Client>,
) -> Result<Vec<(String, Option<i64>)>, ForwardError> {
    let c = match primary.take() {
        Some(c) if !c.is_closed() => c,
        _ => {
            let config = ctx.config_arc();
            let r = &config.replication;
            // Slots are cluster-wide: any forwarded database will do for the connection.
            let database = ctx.forward.databases.first().map_or("postgres", String::as_str);
            let node = &ctx.fleet.nodes()[ctx
                .fleet
                .likely_primary(crate::cluster::ShardId::default())
                .index()]
            .target;
            client(
                node,
                r.user.as_deref().unwrap_or(""),
                r.password.as_deref().unwrap_or(""),
                database,
                ctx.config().pool.connect_timeout,
            )
            .await?
        }
    };
    let pattern = format!(
        "{}\\_%",
        crate::protocol::quote::escape_like(&ctx.config().replication.name)
    );
    let rows = c
        .query(
            "SELECT slot_name::text, pg_wal_lsn_diff(pg_current_wal_lsn(), restart_lsn)::bigint \
             FROM pg_replication_slots WHERE slot_name LIKE $1",
            &[&pattern],
        )
        .await
        .map_err(sql_err("reading replication slots"))?;
    let observed = rows
        .iter()
        .map(|row| Ok((row.try_get(0)?, row.try_get(1)?)))
        .collect::<Result<Vec<_>, tokio_postgres::Error>>()
        .map_err(sql_err("reading replication slots"))?;
    *primary = Some(c);
    Ok(observed)
}

fn log_crossing(crossing: &Crossing, max: u64) {
    match crossing {
        Crossing::Over { slot, retained } => tracing::warn!(
            slot = %slot,
            retained_bytes = retained,
            max_slot_lag = max,
            "replication slot {slot} holds {} of WAL on the primary, \
             more than replication.max_slot_lag ({}): the primary keeps it until the replica catches up, \
             so pg_wal grows; check that the replica is streaming (SHOW REPLICATION)",
            human_size(*retained),
            human_size(max)
        ),
        Crossing::Under { slot, retained } => tracing::info!(
            slot = %slot,
            retained_bytes = retained,
            max_slot_lag = max,
            "replication slot {slot} is back under replication.max_slot_lag: it holds {} of WAL",
            human_size(*retained)
        ),
        Crossing::Gone { slot } => tracing::info!(
            slot = %slot,
            "replication slot {slot}, over replication.max_slot_lag before, no longer exists"
        ),
    }
}

/// Bytes as PostgreSQL's pg_size_pretty would show them, roughly: "812 bytes", "3 kB", "1.5 GB".
fn human_size(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut value = bytes as f64 / 1024.0;
    let mut unit = 0;
    while value >= 1024.0 && unit + 1 < UNITS.len() {
        value /= 1024.0;
        unit += 1;
    }
    if value < 10.0 {
        format!("{value:.1} {}", UNITS[unit])
    } else {
        format!("{value:.0} {}", UNITS[unit])
    }
}

/// One row of `SHOW REPLICATION`: a (replica, database) pair in forward mode, a replica in external mode.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaStatus {
    /// Node index in config order.
    pub node: usize,
    /// Node name.
    pub node_name: String,
    /// Forwarded database; None in external mode, where a replica carries the whole cluster.
    pub database: Option<String>,
    /// The forward-mode state; None in external mode.
    pub state: Option<State>,
    /// `forward` or `external`.
    pub mode: &'static str,
    /// State as shown: a forward [`State`] name, or in external mode `streaming`, `down`,
    /// `not in recovery` or `unknown`.
    pub state_name: &'static str,
    /// Slot on the primary (forward mode).
    pub slot: Option<String>,
    /// Forward mode: end of the last transaction applied; external mode: the replayed WAL position.
    pub applied_lsn: Option<Lsn>,
    /// WAL bytes between the primary's last known position and what the replica is consistent with.
    pub lag_bytes: Option<u64>,
    /// How far behind in time.
    pub lag: Option<Duration>,
    /// Row changes applied by this process (initial copy included); None in external mode.
    pub rows: Option<u64>,
    /// Transactions applied by this process; None in external mode.
    pub transactions: Option<u64>,
    /// WAL the slot holds on the primary, at the slot monitor's last check.
    pub slot_retained_bytes: Option<u64>,
    /// Forward mode: the database's large transactions applied while they run, and those held in files until
    /// their commit with the bytes their files take (the database's numbers, the same on each of its rows).
    pub streamed: Option<StreamedCounts>,
}

/// The rows of `SHOW REPLICATION` against a given monitor (see [`Replication::report`]; tests pass their own).
pub(crate) fn report_with(ctx: &Replication, monitor: Option<&SlotMonitor>) -> Vec<ReplicaStatus> {
    let view = ctx.fleet.view();
    let primary = ctx
        .fleet
        .primary_in(&view, crate::cluster::ShardId::default())
        .ok()
        .map(|p| p.index());
    let primary_lsn = primary.and_then(|p| view.nodes.get(p)).and_then(|s| s.lsn);
    let mut out = Vec::new();
    if ctx.config().replication.mode == ReplicationMode::Forward {
        let forward = &ctx.forward;
        for (node, per_db) in forward.progress.iter().enumerate() {
            let name = &ctx.fleet.nodes()[node].target.name;
            let databases = forward.databases.iter().zip(&forward.streamed);
            for ((database, load), progress) in databases.zip(per_db) {
                let slot = feed_slot_name(&ctx.config().replication.name, database);
                let state = progress.state();
                let applied = progress.applied();
                let visible = progress.visible();
                out.push(ReplicaStatus {
                    node,
                    node_name: name.clone(),
                    database: Some(database.clone()),
                    state: Some(state),
                    mode: "forward",
                    state_name: state.name(),
                    slot_retained_bytes: monitor.and_then(|m| m.retained(&slot)),
                    slot: Some(slot),
                    // 0/0 is the "nothing applied yet" of a fresh Progress, never a real commit position.
                    applied_lsn: (applied > Lsn::ZERO).then_some(applied),
                    lag_bytes: primary_lsn
                        .filter(|_| visible > Lsn::ZERO)
                        .map(|p| p.bytes_since(visible)),
                    lag: database_lag(progress, primary_lsn),
                    rows: Some(progress.rows.load(Relaxed)),
                    transactions: Some(progress.transactions.load(Relaxed)),
                    streamed: Some(load.counts()),
                });
            }
        }
        return out;
    }
    for (i, node) in ctx.fleet.nodes().iter().enumerate() {
        if Some(i) == primary || node.role == Role::Primary {
            continue;
        }
        let state = view.nodes.get(i).cloned().unwrap_or_default();
        let state_name = if !(state.up && node.is_up()) {
            "down"
        } else {
            match state.in_recovery {
                Some(true) => "streaming",
                Some(false) => "not in recovery",
                None => "unknown",
            }
        };
        out.push(ReplicaStatus {
            node: i,
            node_name: node.target.name.clone(),
            database: None,
            state: None,
            mode: "external",
            state_name,
            slot: None,
            applied_lsn: state.lsn,
            lag_bytes: state.lag_bytes,
            lag: state.lag,
            rows: None,
            transactions: None,
            slot_retained_bytes: None,
            streamed: None,
        });
    }
    out
}

/// One database's lag in time, by the rule of `ForwardState::lag` for a whole node: zero once the replica
/// is consistent with the primary's last known position, else the age of its last applied commit. Unknown
/// while nothing is applied, and when no commit has been applied since pgfleet started (the age of
/// "nothing" would read as decades).
fn database_lag(progress: &Progress, primary_lsn: Option<Lsn>) -> Option<Duration> {
    let visible = progress.visible();
    if visible == Lsn::ZERO {
        return None;
    }
    let primary_lsn = primary_lsn?;
    if visible >= primary_lsn {
        return Some(Duration::ZERO);
    }
    let committed = progress.last_commit_time.load(Relaxed);
    if committed == 0 {
        return None;
    }
    let now = pg_epoch_micros_now();
    Some(Duration::from_micros(now.saturating_sub(committed).max(0) as u64))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::Fleet;
    use crate::config::{Config, ConfigHandle};
    use crate::replication::ForwardState;

    /// The replication handle the proxy would build for `config`, without starting anything.
    fn handle(config: Config) -> Arc<Replication> {
        let forward = Arc::new(ForwardState::new(&config));
        let fleet = Arc::new(Fleet::from_config(&config, forward.clone()).expect("fleet"));
        Replication::new(ConfigHandle::new(config), fleet, forward)
    }

    fn observed(pairs: &[(&str, Option<i64>)]) -> Vec<(String, Option<i64>)> {
        pairs.iter().map(|(s, b)| ((*s).to_owned(), *b)).collect()
    }

    #[test]
    fn each_crossing_is_reported_once() {
        let m = SlotMonitor::new();
        assert_eq!(m.record(observed(&[("pgfleet_app_r1", Some(10))]), 100), vec![]);
        assert_eq!(m.retained("pgfleet_app_r1"), Some(10));
        let over = Crossing::Over {
            slot: "pgfleet_app_r1".to_owned(),
            retained: 500,
        };
        assert_eq!(
            m.record(observed(&[("pgfleet_app_r1", Some(500))]), 100),
            vec![over]
        );
        // Still over: nothing new to say.
        assert_eq!(m.record(observed(&[("pgfleet_app_r1", Some(900))]), 100), vec![]);
        // Unknown (no restart_lsn) neither repeats nor clears the warning.
        assert_eq!(m.record(observed(&[("pgfleet_app_r1", None)]), 100), vec![]);
        assert_eq!(m.retained("pgfleet_app_r1"), None);
        let under = Crossing::Under {
            slot: "pgfleet_app_r1".to_owned(),
            retained: 100,
        };
        assert_eq!(
            m.record(observed(&[("pgfleet_app_r1", Some(100))]), 100),
            vec![under]
        );
        m.record(observed(&[("pgfleet_app_r1", Some(101))]), 100);
        let gone = Crossing::Gone {
            slot: "pgfleet_app_r1".to_owned(),
        };
        assert_eq!(
            m.record(observed(&[("pgfleet_app_r2", Some(-5))]), 100),
            vec![gone]
        );
        assert_eq!(m.snapshot(), vec![("pgfleet_app_r2".to_owned(), 0)]);
        m.forget();
        assert!(m.snapshot().is_empty());
    }

    #[test]
    fn periods_and_sizes() {
        assert_eq!(period(Duration::from_millis(100)), Duration::from_secs(1));
        assert_eq!(period(Duration::from_secs(1)), Duration::from_secs(10));
        assert_eq!(period(Duration::from_secs(60)), Duration::from_secs(10));
        assert_eq!(human_size(812), "812 bytes");
        assert_eq!(human_size(1536), "1.5 kB");
        assert_eq!(human_size(1024 * 1024 * 1024), "1.0 GB");
        assert_eq!(human_size(300 * 1024 * 1024), "300 MB");
    }

    const NODES: &str = "[listen]\naddress = \"127.0.0.1:0\"\n\n\
         [[users]]\nname = \"app\"\npassword = \"pw\"\n\n\
         [[nodes]]\nname = \"pg1\"\naddress = \"127.0.0.1:5501\"\nrole = \"primary\"\n\n\
         [[nodes]]\nname = \"pg2\"\naddress = \"127.0.0.1:5502\"\nrole = \"replica\"\n\n\
         [[nodes]]\nname = \"pg3\"\naddress = \"127.0.0.1:5503\"\nrole = \"replica\"\n";

    #[test]
    fn forward_rows_per_replica_and_database() {
        let config = Config::parse(&format!(
            "{NODES}\n[replication]\nmode = \"forward\"\nuser = \"postgres\"\npassword = \"pw\"\n\
             databases = [\"app\", \"Other-DB\"]\n"
        ))
        .expect("config");
        let ctx = handle(config);
        let progress = &ctx.forward.progress[1][0];
        progress.set_state(State::Streaming);
        progress.set_applied(Lsn(0x1_0000_0100));
        progress.rows.store(1000, Relaxed);
        progress.transactions.store(3, Relaxed);
        ctx.fleet.update(
            0,
            crate::cluster::view::NodeState {
                up: true,
                in_recovery: Some(false),
                lsn: Some(Lsn(0x1_0000_0400)),
                ..Default::default()
            },
        );
        let monitor = SlotMonitor::new();
        monitor.record(observed(&[("pgfleet_app_", Some(4096))]), 1 << 30);
        let rows = report_with(&ctx, Some(&monitor));
        assert_eq!(rows.len(), 4, "{rows:?}");
        let r = &rows[0];
        assert_eq!(
            (r.node_name.as_str(), r.database.as_deref(), r.mode),
            ("pg2", Some("app"), "forward")
        );
        // Every replica of a database is fed from the database's one slot.
        assert_eq!(r.slot.as_deref(), Some("pgfleet_app_"));
        assert_eq!(r.state_name, "streaming");
        assert_eq!(r.applied_lsn, Some(Lsn(0x1_0000_0100)));
        assert_eq!(r.lag_bytes, Some(0x300));
        // Behind, but no commit applied since start: unknown rather than decades.
        assert_eq!(r.lag, None);
        assert_eq!((r.rows, r.transactions), (Some(1000), Some(3)));
        assert_eq!(r.slot_retained_bytes, Some(4096));
        let fresh = &rows[1];
        assert_eq!(fresh.slot.as_deref(), Some("pgfleet_other_db_"));
        assert_eq!(fresh.state_name, "starting");
        assert_eq!(
            (fresh.applied_lsn, fresh.lag_bytes, fresh.lag),
            (None, None, None)
        );
        assert_eq!(fresh.slot_retained_bytes, None);
        assert_eq!(rows[2].node_name, "pg3");
        assert_eq!(rows[2].slot.as_deref(), Some("pgfleet_app_"));
        assert_eq!(rows[2].slot_retained_bytes, Some(4096));
        progress.visible.store(0x1_0000_0400, Relaxed);
        let caught_up = &report_with(&ctx, None)[0];
        assert_eq!(caught_up.lag, Some(Duration::ZERO));
        assert_eq!(caught_up.lag_bytes, Some(0));
    }

    #[test]
    fn external_rows_come_from_the_fleet_view() {
        let ctx = handle(Config::parse(NODES).expect("config"));
        ctx.fleet.update(
            0,
            crate::cluster::view::NodeState {
                up: true,
                in_recovery: Some(false),
                lsn: Some(Lsn(5000)),
                ..Default::default()
            },
        );
        ctx.fleet.update(
            1,
            crate::cluster::view::NodeState {
                up: true,
                in_recovery: Some(true),
                lsn: Some(Lsn(4000)),
                lag: Some(Duration::from_millis(20)),
                ..Default::default()
            },
        );
        ctx.fleet.update(
            2,
            crate::cluster::view::NodeState {
                up: false,
                ..Default::default()
            },
        );
        let rows = ctx.report();
        assert_eq!(rows.len(), 2, "{rows:?}");
        assert_eq!((rows[0].mode, rows[0].state_name), ("external", "streaming"));
        assert_eq!(rows[0].applied_lsn, Some(Lsn(4000)));
        assert_eq!(rows[0].lag_bytes, Some(1000));
        assert_eq!(rows[0].lag, Some(Duration::from_millis(20)));
        assert_eq!((rows[0].database.as_deref(), rows[0].rows), (None, None));
        assert_eq!(rows[1].state_name, "down");
    }
}
