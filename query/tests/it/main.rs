//! The query crate's integration tests: SQL semantics in sqllogictest files
//! over a small fixed log, under every way the rows can be split between
//! snapshot files and the log's tail.

mod fixture;
mod slt;
