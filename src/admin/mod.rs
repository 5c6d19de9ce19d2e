//! Operating pgfleet: counters (`stats`), the admin console on the virtual database `pgfleet` (`session`,
//! `console`),
//! and Prometheus text on `admin.metrics_address` (`metrics`).

pub mod console;
pub mod metrics;
pub mod session;
pub mod stats;
