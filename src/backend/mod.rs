//! The server side: raw protocol connections to one node (`conn`), their startup and authentication
//! (`connect`), TLS towards nodes for every connection pgfleet opens (`tls`), and pools of them per (node,
//! database, user) (`pool`).

pub mod conn;
pub mod connect;
pub mod pool;
pub mod tls;

pub use conn::BackendConn;
pub use connect::BackendError;
pub use pool::{Checkout, NodePool, PoolStatus, PooledConn, Pools};
