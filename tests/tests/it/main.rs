//! End-to-end tests across library crates, in one process.

mod replayed_episode;
mod rollout_log;
