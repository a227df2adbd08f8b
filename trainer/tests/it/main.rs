//! Tool execution against the sandbox on loopback.

mod candle;
mod openai;
mod rollout;
mod tools;
