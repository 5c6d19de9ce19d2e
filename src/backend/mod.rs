//! The server side: raw protocol connections to one node (`conn`), their startup and authentication
//! (`connect`), TLS towards nodes for every connection pgfleet opens (`tls`), and pools of them per (node,
//! database, user) (`pool`).

pub(crate) mod conn;
pub(crate) mod connect;
pub(crate) mod control;
pub(crate) mod pool;
pub(crate) mod shelf;
pub(crate) mod tls;

pub(crate) use conn::BackendConn;
pub(crate) use connect::BackendError;
pub(crate) use pool::{Checkout, NodePool, PooledConn, Pools};
