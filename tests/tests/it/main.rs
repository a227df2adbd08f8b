//! End-to-end tests across library crates, in one process.

mod rollout_log;
