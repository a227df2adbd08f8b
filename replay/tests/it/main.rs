//! The gateway against the sandbox on loopback: record, replay, faults and
//! the SSRF guard.

mod gateway;
mod properties;
