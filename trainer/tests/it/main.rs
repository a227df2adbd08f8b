//! Tool execution against the sandbox on loopback.

mod candle;
mod grpo;
mod openai;
mod properties;
mod rollout;
mod tools;
