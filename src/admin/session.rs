//! A session on the admin console (the virtual database `pgfleet`): admin users only, then the console's
//! own request loop (`console`). The client side authenticates the connection as for any database and hands
//! it over here, so the console depends on no part of the client side.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};

use super::{ADMIN_DATABASE, Context};
use crate::config::UserConfig;
use crate::peer::Peer;
use crate::protocol::messages::ProxyError;
use crate::stats::ClientInfo;

/// Serves an authenticated client (`account` is its `[[users]]` entry) on the admin console until it
/// leaves; a user without `admin = true` is refused as PostgreSQL refuses a role without a privilege. The
/// session takes its id from `next_id` once admitted.
pub(crate) async fn run<S: AsyncRead + AsyncWrite + Unpin>(
    mut client: S,
    peer: Peer,
    account: &UserConfig,
    next_id: &AtomicU64,
    ctx: &Arc<Context>,
    mut shutdown: super::console::Shutdown,
) {
    let user = account.name.as_str();
    if !account.admin {
        ctx.stats.login_failures.fetch_add(1, Ordering::Relaxed);
        let err = ProxyError::fatal(
            "42501",
            format!("permission denied for the pgfleet admin console: user \"{user}\" is not an admin"),
        )
        .with_hint("Set admin = true on that [[users]] entry, or connect to another database.");
        let _ = client.write_all(&err.encode()).await;
        return;
    }
    let id = next_id.fetch_add(1, Ordering::Relaxed);
    let _entry = ctx.stats.client_connected(
        id,
        ClientInfo {
            addr: peer,
            user: user.to_owned(),
            database: ADMIN_DATABASE.to_owned(),
            state: "admin",
            connected_at: std::time::SystemTime::now(),
            requests: 0,
            node: None,
        },
    );
    if let Err(e) = super::console::run_console(&mut client, ctx, user, &mut shutdown).await {
        tracing::info!(error = %e, "admin session ended");
    }
    ctx.stats.client_disconnected(id);
}
