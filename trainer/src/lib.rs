//! Policies, the rollout engine, GRPO, checkpoints and resume (the agent,
//! model-policy and trainer issues). Built so far: tool execution with the
//! browsing agent ([`tools`]). May use `core`, `store` and `replay`; the web
//! is reached only through `replay`'s gateway.

pub mod candle_policy;
pub mod checkpoint;
pub mod config;
pub mod grpo;
pub mod openai;
pub mod optim;
pub mod policy;
pub mod rollout;
pub mod scripted;
pub mod tools;
