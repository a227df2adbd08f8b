//! Tool execution against the sandbox on loopback.

mod rollout;
mod tools;
