//! One connection per forwarded database held open on the primary while forward mode runs. `forward-stop`
//! refuses while pgfleet's forwarding connections are in the database, but the stream and the replicas'
//! tasks are not always connected: while every replica is down, or while the stream gathers its replicas to
//! start over, neither the slot nor any task is in use for a few seconds or for as long as the replicas stay
//! down. This connection is, so a running pgfleet is never taken for a stopped one.

use std::sync::Arc;
use std::time::Duration;

use super::Replication;
use super::setup::client;

/// How often the connection is checked, and how long to wait before connecting again after a failure.
const CHECK: Duration = Duration::from_secs(5);

/// Holds the connection for `database` for the life of the process, connecting again whenever it is lost.
pub(crate) async fn hold(ctx: Arc<Replication>, database: String) {
    loop {
        let config = ctx.config();
        let r = &config.replication;
        let (user, password) = (
            r.user.clone().unwrap_or_default(),
            r.password.clone().unwrap_or_default(),
        );
        let timeout = config.pool.connect_timeout;
        drop(config);
        let fleet = &ctx.fleet;
        let primary = fleet.nodes()[fleet.likely_primary(crate::cluster::ShardId::default()).index()]
            .target
            .clone();
        match client(&primary, &user, &password, &database, timeout).await {
            Ok(c) => {
                // A query that fails means the connection is gone (the primary restarted, or moved).
                while c.simple_query("").await.is_ok() {
                    tokio::time::sleep(CHECK).await;
                }
                tracing::debug!(%database, "forward mode's presence connection lost; connecting again");
            }
            Err(e) => tracing::debug!(%database, error = %e, "forward mode's presence connection failed"),
        }
        tokio::time::sleep(CHECK).await;
    }
}
