//! The client side: accepting connections (`listener`), authentication (`auth`, `scram`), TLS (`tls`,
//! `stream`), cancel keys (`cancel`), and one task per client session (`session`, with its `state`).

pub mod auth;
pub mod cancel;
pub mod forward;
pub mod listener;
pub mod names;
pub mod request;
pub mod scram;
pub mod session;
pub mod state;
pub mod stream;
pub mod tls;
