//! Policies, the rollout engine, GRPO, checkpoints and resume (the agent,
//! model-policy and trainer issues). Built so far: tool execution with the
//! browsing agent ([`tools`]), the rollout engine ([`rollout`]), the
//! scripted, candle and OpenAI-compatible policies, and the training
//! pieces ([`grpo`], [`optim`], [`checkpoint`], [`config`]) that the GRPO
//! loop will use. May use `core`, `store`, `model` and `replay`; the web is
//! reached only through `replay`'s gateway (the `openai` policy talks to
//! model endpoints, never to the web).

pub mod candle_policy;
pub mod checkpoint;
pub mod config;
pub mod export;
pub mod grpo;
pub mod harness;
pub mod openai;
pub mod optim;
pub mod plan;
pub mod policy;
pub mod recorded;
pub mod replay;
pub mod report;
pub mod rollout;
pub mod scripted;
pub mod sft;
pub mod tools;
pub mod train;

/// The code version every run records.
pub const CODE_VERSION: &str = concat!("fathom ", env!("CARGO_PKG_VERSION"));
