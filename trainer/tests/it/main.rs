//! Tool execution against the sandbox on loopback.

mod candle;
mod rollout;
mod tools;
