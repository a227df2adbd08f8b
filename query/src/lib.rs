//! Read-only SQL (DataFusion) over the Parquet snapshots and the live tail
//! of the log (to be built by the SQL issue). May use `core` and `store`.
//!
//! **Architecture Invariant:** this crate never writes to the log.
