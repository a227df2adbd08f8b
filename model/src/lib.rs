//! fathom's own trainable language model: the Qwen2 architecture in candle
//! (`qwen2`), Hugging Face model directories (`dir`: `config.json`,
//! `*.safetensors` with or without a shard index, `tokenizer.json`), the
//! chat tokenizer with the protocol's tags (`tokenizer`), seeded sampling
//! that returns each token's log-prob (`sample`, `generate`), and tiny
//! random models for tests and the demo (`init`).
//!
//! Neighbours: `trainer` wraps this in its `candle` policy and trains it;
//! `core` supplies the seeded RNG and the protocol's tags.
//!
//! **Architecture Invariant:** every operation between the weights and the
//! logits has a backward pass (no forward-only fused kernels: fathom's own
//! fused kernels in `fused` carry hand-written ones), so gradients reach
//! every parameter; `tests/it` checks it after one backward pass, and
//! checks the fused kernels' values and gradients against the written-out
//! reference.

pub mod batch;
pub mod config;
pub mod decode;
pub mod dir;
pub mod fused;
pub mod generate;
pub mod init;
pub mod qwen2;
pub mod sample;
pub mod tokenizer;

use std::path::PathBuf;

/// The trainable variables of a model, by name.
pub use candle_nn::VarMap;
pub use config::Qwen2Config;
pub use dir::{LoadedModel, load};
pub use fused::Kernels;
pub use qwen2::{KvCache, Qwen2};
pub use tokenizer::ChatTokenizer;

/// What can go wrong loading, running or writing a model.
#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    /// A file could not be read or written.
    #[error("could not {action} {}: {source}", path.display())]
    Io {
        /// What we were doing.
        action: &'static str,
        /// On which path.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The model directory is not something fathom can load.
    #[error("{0}")]
    Invalid(String),
    /// candle failed.
    #[error("model computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// The tokenizer failed.
    #[error("tokenizer: {0}")]
    Tokenizer(String),
}
