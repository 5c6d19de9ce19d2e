//! The tests' PostgreSQL fleet: a thin layer over `pgfleet::localcluster` fixing the credentials every test
//! shares and turning start failures into panics with the full reason.

#[allow(unused_imports)]
pub use localcluster::{ClusterError, ClusterOptions, LocalCluster, NodeHandle, ServerTls};

/// Password of the app user and of the superuser `postgres`.
pub const PASSWORD: &str = "secret";
/// The app's LOGIN role.
pub const APP_USER: &str = "app";
/// The app's database, owned by [`APP_USER`].
pub const APP_DB: &str = "app";

/// The options [`cluster`] uses; tweak and pass to [`cluster_with`].
pub fn options() -> ClusterOptions {
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
pub fn cluster() -> LocalCluster {
    cluster_with(options())
}

/// A cluster with the given options; panics with the command, its output and the server log on failure.
pub fn cluster_with(opts: ClusterOptions) -> LocalCluster {
    match LocalCluster::start(opts) {
        Ok(cluster) => cluster,
        Err(e) => panic!("could not start the local PostgreSQL cluster: {e}"),
    }
}

/// [`cluster`] without blocking the async runtime.
pub async fn cluster_async() -> LocalCluster {
    cluster_with_async(options()).await
}

/// [`cluster_with`] without blocking the async runtime.
pub async fn cluster_with_async(opts: ClusterOptions) -> LocalCluster {
    tokio::task::spawn_blocking(move || cluster_with(opts))
        .await
        .expect("cluster start thread panicked")
}
