//! A session on the admin console (the virtual database `pgfleet`): admin users only, then the console's
//! own request loop (`console`).

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::io::AsyncWriteExt;

use crate::admin::stats::ClientInfo;
use crate::frontend::session::PendingLogin;
use crate::frontend::stream::ClientStream;
use crate::protocol::messages::ProxyError;
use crate::proxy::Shared;

/// A session on the admin console: admin users only.
pub async fn run(
    mut client: ClientStream,
    peer: SocketAddr,
    user: &str,
    shared: Arc<Shared>,
    login: PendingLogin,
) {
    let authenticated =
        crate::frontend::session::authenticate_client(&mut client, user, &shared, login.deadline).await;
    drop(login);
    let cfg = match authenticated {
        Ok(c) => c,
        Err(e) => {
            shared
                .stats
                .login_failures
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            tracing::info!(error = %e, "admin login failed");
            return;
        }
    };
    if !cfg.admin {
        shared
            .stats
            .login_failures
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let err = ProxyError::fatal(
            "42501",
            format!("permission denied for the pgfleet admin console: user \"{user}\" is not an admin"),
        )
        .with_hint("Set admin = true on that [[users]] entry, or connect to another database.");
        let _ = client.write_all(&err.encode()).await;
        return;
    }
    let id = shared
        .next_session
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let _entry = shared.stats.client_connected(
        id,
        ClientInfo {
            addr: peer,
            user: user.to_owned(),
            database: crate::frontend::session::ADMIN_DATABASE.to_owned(),
            state: "admin",
            connected_at: std::time::SystemTime::now(),
            requests: 0,
            node: None,
        },
    );
    if let Err(e) = crate::admin::console::run_console(&mut client, &shared, user).await {
        tracing::info!(error = %e, "admin session ended");
    }
    shared.stats.client_disconnected(id);
}
