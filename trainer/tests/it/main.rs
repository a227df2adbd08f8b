//! Tool execution against the sandbox on loopback.

mod tools;
