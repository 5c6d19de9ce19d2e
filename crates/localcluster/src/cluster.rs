//! A primary plus replicas ([`LocalCluster`]): starting them (copying the template or `pg_basebackup`),
//! roles and the app database, waiting for replay, and teardown on drop.

use std::fs;
use std::path::{Path, PathBuf};
use std::thread;
use std::time::{Duration, Instant};

use crate::dirs::{adopt_base_dir, unique_tmp_dir_for};
use crate::node::{NodeHandle, quote_literal};
use crate::process::{Host, host};
use crate::{CATCH_UP_AT_START, ClusterError, ClusterOptions, KEEP_FILE, SUPERUSER};

/// A primary and its replicas on 127.0.0.1, stopped and deleted on drop.
#[derive(Debug)]
pub struct LocalCluster {
    /// The read-write node.
    pub primary: NodeHandle,
    /// Standbys of the primary (streaming) or independent servers, named replica1, replica2, ...
    pub replicas: Vec<NodeHandle>,
    /// Superuser role name (`postgres`); its password is [`LocalCluster::password`].
    pub superuser: String,
    /// Password of both the superuser and the app user.
    pub password: String,
    /// The app's LOGIN role.
    pub app_user: String,
    /// The app's database, owned by `app_user`.
    pub app_database: String,
    /// Whether replicas stream from the primary.
    pub streaming: bool,
    /// Holds one directory per node; removed on drop.
    pub base_dir: PathBuf,
}

impl LocalCluster {
    /// Starts a primary and `opts.replicas` replicas and returns once every node accepts connections, the
    /// roles and app database exist and (streaming) every replica has replayed the primary's WAL.
    pub fn start(opts: ClusterOptions) -> Result<LocalCluster, ClusterError> {
        let host = host()?;
        let base_dir = match &opts.base_dir {
            Some(dir) => adopt_base_dir(host, dir)?,
            None => unique_tmp_dir_for(host, "pgfleet-cluster")?,
        };
        let primary = match NodeHandle::new(host, &base_dir, "primary") {
            Ok(node) => node,
            Err(e) => {
                let _ = fs::remove_dir_all(&base_dir);
                return Err(e);
            }
        };
        // From here on an early return drops `cluster`, which stops what was started and removes base_dir.
        let mut cluster = LocalCluster {
            primary,
            replicas: Vec::new(),
            superuser: SUPERUSER.to_owned(),
            password: opts.password.clone(),
            app_user: opts.app_user.clone(),
            app_database: opts.app_database.clone(),
            streaming: opts.streaming,
            base_dir,
        };
        if let Some(tls) = &opts.tls {
            cluster.primary.set_tls(tls)?;
        }
        cluster.primary.prepare_copy(&opts)?;
        cluster.primary.start_choosing_port()?;
        cluster
            .primary
            .bootstrap_roles(&opts.password, &opts.app_user, &opts.app_database)?;

        let primary_port = cluster.primary.port;
        let base_dir = cluster.base_dir.clone();
        let outcomes: Vec<(Option<NodeHandle>, Result<(), ClusterError>)> = thread::scope(|scope| {
            let workers: Vec<_> = (1..=opts.replicas)
                .map(|i| {
                    let (opts, base_dir) = (&opts, &base_dir);
                    scope.spawn(move || {
                        build_replica(host, base_dir, &format!("replica{i}"), primary_port, opts)
                    })
                })
                .collect();
            workers
                .into_iter()
                .map(|w| {
                    w.join().unwrap_or_else(|_| {
                        (
                            None,
                            Err(ClusterError::ThreadPanicked("starting a replica".into())),
                        )
                    })
                })
                .collect()
        });
        let mut first_error = None;
        for (node, outcome) in outcomes {
            cluster.replicas.extend(node);
            if let Err(e) = outcome {
                first_error.get_or_insert(e);
            }
        }
        if let Some(e) = first_error {
            return Err(e);
        }
        if cluster.streaming {
            cluster.wait_replicas_caught_up(CATCH_UP_AT_START)?;
        }
        Ok(cluster)
    }

    /// Every node, primary first.
    pub fn nodes(&self) -> impl Iterator<Item = &NodeHandle> {
        std::iter::once(&self.primary).chain(&self.replicas)
    }

    /// The node with that name.
    pub fn node(&self, name: &str) -> Option<&NodeHandle> {
        self.nodes().find(|n| n.name == name)
    }

    /// Runs `sql` as the superuser on `node` (`psql -X -At`); returns stdout trimmed.
    pub fn psql(&self, node: &NodeHandle, db: &str, sql: &str) -> Result<String, ClusterError> {
        node.psql(db, sql)
    }

    /// Waits until every replica has replayed the primary's current WAL position. No-op for independent
    /// (non-streaming) nodes. Every replica must be a running standby of `self.primary`; after a failover use
    /// [`LocalCluster::wait_caught_up`].
    pub fn wait_replicas_caught_up(&self, timeout: Duration) -> Result<(), ClusterError> {
        if !self.streaming {
            return Ok(());
        }
        let standbys: Vec<&NodeHandle> = self.replicas.iter().collect();
        Self::wait_caught_up(&self.primary, &standbys, timeout)
    }

    /// Waits until each of `standbys` has replayed `primary`'s current WAL position.
    pub fn wait_caught_up(
        primary: &NodeHandle,
        standbys: &[&NodeHandle],
        timeout: Duration,
    ) -> Result<(), ClusterError> {
        let deadline = Instant::now() + timeout;
        let target = primary.psql("postgres", "SELECT pg_current_wal_lsn()")?;
        let check = format!(
            "SELECT coalesce(pg_last_wal_replay_lsn() >= {}::pg_lsn, false)",
            quote_literal(&target)
        );
        for standby in standbys {
            loop {
                let last = standby.psql("postgres", &check);
                if matches!(&last, Ok(answer) if answer == "t") {
                    break;
                }
                if Instant::now() >= deadline {
                    let at = standby
                        .psql("postgres", "SELECT pg_last_wal_replay_lsn()")
                        .unwrap_or_else(|e| e.to_string());
                    return Err(ClusterError::Timeout {
                        what: format!(
                            "{} to replay WAL up to {target} of {} (replayed: {at}; server log tail:\n{})",
                            standby.name,
                            primary.name,
                            standby.log_tail()
                        ),
                        waited: timeout,
                    });
                }
                thread::sleep(Duration::from_millis(20));
            }
        }
        Ok(())
    }

    /// Stops every server (immediate shutdown, then SIGKILL for survivors), in parallel. Idempotent.
    pub fn stop_all(&mut self) {
        thread::scope(|scope| {
            for node in self.nodes() {
                scope.spawn(move || node.teardown());
            }
        });
    }
}

pub(crate) fn build_replica(
    host: &'static Host,
    base_dir: &Path,
    name: &str,
    primary_port: u16,
    opts: &ClusterOptions,
) -> (Option<NodeHandle>, Result<(), ClusterError>) {
    let mut node = match NodeHandle::new(host, base_dir, name) {
        Ok(node) => node,
        Err(e) => return (None, Err(e)),
    };
    let outcome = (|| {
        if let Some(tls) = &opts.tls {
            node.set_tls(tls)?;
        }
        if opts.streaming {
            // The primary's pg_hba.conf (TLS-only or not) comes along.
            node.base_backup(primary_port, &opts.password)?;
        } else {
            node.prepare_copy(opts)?;
        }
        node.start_choosing_port()?;
        if !opts.streaming {
            node.bootstrap_roles(&opts.password, &opts.app_user, &opts.app_database)?;
        }
        Ok(())
    })();
    (Some(node), outcome)
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        self.stop_all();
        if std::env::var("PGFLEET_KEEP_CLUSTER").is_ok_and(|v| v == "1") {
            let _ = fs::write(self.base_dir.join(KEEP_FILE), "");
            eprintln!("PGFLEET_KEEP_CLUSTER=1: keeping {}", self.base_dir.display());
        } else {
            let _ = fs::remove_dir_all(&self.base_dir);
        }
    }
}
