//! The tests' PostgreSQL fleet: a thin layer over `pgfleet::localcluster` fixing the credentials every test
//! shares and turning start failures into panics with the full reason.

#[allow(unused_imports)]
pub(crate) use localcluster::{ClusterError, ClusterOptions, LocalCluster, NodeHandle, ServerTls};

/// Password of the app user and of the superuser `postgres`.
pub(crate) const PASSWORD: &str = "secret";
/// The app's LOGIN role.
pub(crate) const APP_USER: &str = "app";
/// The app's database, owned by [`APP_USER`].
pub(crate) const APP_DB: &str = "app";

/// The options [`cluster`] uses; tweak and pass to [`cluster_with`].
pub(crate) fn options() -> ClusterOptions {
    ClusterOptions {
        replicas: 2,
        streaming: true,
        password: PASSWORD.to_owned(),
        app_user: APP_USER.to_owned(),
        app_database: APP_DB.to_owned(),
        ..ClusterOptions::default()
    }
}

/// One primary and two streaming replicas, caught up. Blocks for a few seconds; inside a multi-threaded
/// runtime prefer [`cluster_async`].
pub(crate) fn cluster() -> LocalCluster {
    cluster_with(options())
}

/// A cluster with the given options; panics with the command, its output and the server log on failure.
pub(crate) fn cluster_with(opts: ClusterOptions) -> LocalCluster {
    match LocalCluster::start(opts) {
        Ok(cluster) => cluster,
        Err(e) => panic!("could not start the local PostgreSQL cluster: {e}"),
    }
}

/// [`cluster`] without blocking the async runtime.
pub(crate) async fn cluster_async() -> LocalCluster {
    cluster_with_async(options()).await
}

/// [`cluster_with`] without blocking the async runtime.
pub(crate) async fn cluster_with_async(opts: ClusterOptions) -> LocalCluster {
    tokio::task::spawn_blocking(move || cluster_with(opts))
        .await
        .expect("cluster start thread panicked")
}

/// A superuser connection straight to a node's app database, bypassing pgfleet.
pub(crate) async fn superuser_client(node: &NodeHandle) -> tokio_postgres::Client {
    super::proxy::connect(&node.dsn("postgres", PASSWORD, APP_DB)).await
}

/// Waits until at least `n` backends across the fleet are running exactly `sql` (`pg_stat_activity`, state
/// active): the moment to cancel a statement, or to check that something else did not.
pub(crate) async fn wait_running(cluster: &LocalCluster, sql: &str, n: i64) {
    let mut nodes = Vec::new();
    for node in cluster.nodes() {
        nodes.push(super::proxy::connect(&node.dsn("postgres", PASSWORD, "postgres")).await);
    }
    let running = super::wait_until(std::time::Duration::from_secs(10), async || {
        let mut count = 0;
        for node in &nodes {
            let row = node
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query = $1",
                    &[&sql],
                )
                .await
                .expect("pg_stat_activity");
            count += row.get::<_, i64>(0);
        }
        count >= n
    })
    .await;
    assert!(
        running.is_some(),
        "{n} × `{sql}` not running on the nodes within 10 s"
    );
}
