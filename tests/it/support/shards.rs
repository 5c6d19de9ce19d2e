//! Sharded test fleets: one local cluster per shard (a primary and its streaming replicas, with
//! `max_prepared_transactions` for two-phase commit), and pgfleet in front of all of them with
//! `nodes[i].shard` set and the suite's `[[sharded_tables]]`.

use std::time::Duration;

use super::cluster::{ClusterOptions, LocalCluster, cluster_with, options};
use super::proxy::{Proxy, free_port};

/// The shards of a sharded fleet, shard `i` at index `i`.
pub(crate) struct ShardedFleet {
    pub shards: Vec<LocalCluster>,
}

impl ShardedFleet {
    /// `shards` clusters of a primary and `replicas` streaming replicas each, started side by side.
    pub(crate) async fn start(shards: usize, replicas: usize) -> ShardedFleet {
        Self::start_with(shards, replicas, "max_prepared_transactions = 20").await
    }

    /// [`ShardedFleet::start`] with `conf` as the nodes' `max_prepared_transactions` line (or any other).
    pub(crate) async fn start_with(shards: usize, replicas: usize, conf: &str) -> ShardedFleet {
        let starts: Vec<_> = (0..shards)
            .map(|_| {
                let conf = conf.to_owned();
                tokio::task::spawn_blocking(move || {
                    cluster_with(ClusterOptions {
                        replicas,
                        extra_conf: vec![conf],
                        ..options()
                    })
                })
            })
            .collect();
        let mut out = Vec::new();
        for s in starts {
            out.push(s.await.expect("cluster start thread panicked"));
        }
        ShardedFleet { shards: out }
    }

    /// Runs `sql` on every shard's primary as the superuser (schema set-up, checks of what each holds).
    pub(crate) fn on_every_primary(&self, db: &str, sql: &str) {
        for cluster in &self.shards {
            cluster
                .psql(&cluster.primary, db, sql)
                .unwrap_or_else(|e| panic!("{sql} on {}: {e}", cluster.primary.name));
        }
    }

    /// `sql`'s output (psql, unaligned, no headers) on shard `shard`'s primary.
    pub(crate) fn on_primary(&self, shard: usize, db: &str, sql: &str) -> String {
        let cluster = &self.shards[shard];
        cluster
            .psql(&cluster.primary, db, sql)
            .unwrap_or_else(|e| panic!("{sql} on {}: {e}", cluster.primary.name))
    }

    /// Waits until every shard's replicas replayed what their primary has.
    pub(crate) fn wait_replicas(&self) {
        for cluster in &self.shards {
            cluster
                .wait_replicas_caught_up(Duration::from_secs(30))
                .expect("replicas catch up");
        }
    }

    /// The pgfleet config for the fleet on `port`: every node with its shard, then `extra_toml` (the
    /// suite's `[[sharded_tables]]` and any other table).
    pub(crate) fn config(&self, port: u16, extra_toml: &str) -> String {
        let first = &self.shards[0];
        let mut text = format!(
            "[listen]\naddress = \"127.0.0.1:{port}\"\n\n[[users]]\nname = \"{}\"\npassword = \"{}\"\n",
            first.app_user, first.password
        );
        for (shard, cluster) in self.shards.iter().enumerate() {
            text.push_str(&format!(
                "\n[[nodes]]\nname = \"s{shard}-{}\"\naddress = \"{}\"\nrole = \"primary\"\nshard = {shard}\n",
                cluster.primary.name,
                cluster.primary.address()
            ));
            for replica in &cluster.replicas {
                text.push_str(&format!(
                    "\n[[nodes]]\nname = \"s{shard}-{}\"\naddress = \"{}\"\nrole = \"replica\"\nshard = {shard}\n",
                    replica.name,
                    replica.address()
                ));
            }
        }
        text.push('\n');
        text.push_str(extra_toml);
        // PGFLEET_TEST_POOL_MODE runs a whole suite under another pool mode ("transaction").
        if let Ok(mode) = std::env::var("PGFLEET_TEST_POOL_MODE")
            && !mode.is_empty()
            && !extra_toml.contains("[pool]")
        {
            text.push_str(&format!("\n[pool]\nmode = \"{mode}\"\n"));
        }
        text
    }

    /// pgfleet in front of the fleet (see [`ShardedFleet::config`]).
    pub(crate) fn proxy(&self, extra_toml: &str) -> Proxy {
        Proxy::start_with_config(self.config(free_port(), extra_toml))
    }
}
