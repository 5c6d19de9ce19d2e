//! Failure scenarios (being written).
