//! Tool execution against the sandbox on loopback.

mod candle;
mod grpo;
mod openai;
mod rollout;
mod tools;
