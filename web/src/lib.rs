//! The dashboard: an axum server rendering runs, curves, episodes and
//! behaviours (to be built by the dashboard issue). May use `core`, `store`
//! and `query`.
//!
//! **Architecture Invariant:** this crate never writes to the log.
