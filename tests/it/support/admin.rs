//! The admin console as tests reach it: a `[[users]]` entry to add to a proxy's config, a console
//! connection, and the rows tests read most.

use super::cluster::{APP_DB, APP_USER};
use super::proxy::{Proxy, Row, connect, show, text};

pub(crate) const ADMIN_USER: &str = "admin";
pub(crate) const ADMIN_PASSWORD: &str = "adminpw";

/// A `[[users]]` entry for the admin console; the console never logs in to a node.
pub(crate) const ADMIN_TOML: &str = "[[users]]\nname = \"admin\"\npassword = \"adminpw\"\nadmin = true\n";

/// A console session; the proxy needs [`ADMIN_TOML`] in its config.
pub(crate) async fn admin_client(proxy: &Proxy) -> tokio_postgres::Client {
    connect(&proxy.dsn(ADMIN_USER, ADMIN_PASSWORD, "pgfleet")).await
}

/// The SHOW POOLS row of (node, database app, user app).
pub(crate) async fn pool_row(admin: &tokio_postgres::Client, node: &str) -> Row {
    let pools = show(admin, "SHOW POOLS").await;
    pools
        .iter()
        .find(|r| text(r, "node") == node && text(r, "database") == APP_DB && text(r, "user") == APP_USER)
        .cloned()
        .unwrap_or_else(|| panic!("no pool for node {node}: {pools:?}"))
}

/// The SHOW NODES row of a node.
pub(crate) async fn node_row(admin: &tokio_postgres::Client, node: &str) -> Row {
    let nodes = show(admin, "SHOW NODES").await;
    nodes
        .iter()
        .find(|r| text(r, "name") == node)
        .cloned()
        .unwrap_or_else(|| panic!("no node {node} in {nodes:?}"))
}
