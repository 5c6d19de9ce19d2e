//! The server side: raw protocol connections to one node (`conn`), their startup and authentication
//! (`connect`), and pools of them per (node, database, user) (`pool`).

pub mod conn;
pub mod connect;
pub mod pool;

pub use conn::BackendConn;
pub use connect::BackendError;
pub use pool::{NodePool, PooledConn, Pools};
