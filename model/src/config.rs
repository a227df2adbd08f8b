//! The Hugging Face `config.json` of a Qwen2 model, validated.

use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::ModelError;

/// What fathom reads from `config.json` (Hugging Face's `Qwen2Config`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Qwen2Config {
    /// `["Qwen2ForCausalLM"]`.
    #[serde(default)]
    pub architectures: Vec<String>,
    /// `qwen2`.
    #[serde(default = "default_model_type")]
    pub model_type: String,
    /// Tokens in the vocabulary (rows of the embedding).
    pub vocab_size: usize,
    /// Width of the residual stream.
    pub hidden_size: usize,
    /// Width of the MLP.
    pub intermediate_size: usize,
    /// Transformer blocks.
    pub num_hidden_layers: usize,
    /// Query heads.
    pub num_attention_heads: usize,
    /// Key/value heads (grouped-query attention); defaults to the query heads.
    #[serde(default)]
    pub num_key_value_heads: Option<usize>,
    /// Longest context the positions were trained for.
    #[serde(default = "default_max_positions")]
    pub max_position_embeddings: usize,
    /// RoPE base.
    #[serde(default = "default_rope_theta")]
    pub rope_theta: f64,
    /// RMSNorm epsilon.
    #[serde(default = "default_eps")]
    pub rms_norm_eps: f64,
    /// Whether the output projection shares the embedding matrix.
    #[serde(default)]
    pub tie_word_embeddings: bool,
    /// `silu`.
    #[serde(default = "default_act")]
    pub hidden_act: String,
    /// Beginning-of-sequence token id.
    #[serde(default)]
    pub bos_token_id: Option<u32>,
    /// End-of-sequence token id.
    #[serde(default)]
    pub eos_token_id: Option<u32>,
    /// `float32`, `bfloat16`, …: the dtype the weights were saved in.
    #[serde(default)]
    pub torch_dtype: Option<String>,
}

fn default_model_type() -> String {
    "qwen2".into()
}
fn default_max_positions() -> usize {
    32768
}
fn default_rope_theta() -> f64 {
    1_000_000.0
}
fn default_eps() -> f64 {
    1e-6
}
fn default_act() -> String {
    "silu".into()
}

impl Qwen2Config {
    /// Reads and validates `dir/config.json`.
    pub fn load(dir: &Path) -> Result<Qwen2Config, ModelError> {
        let path = dir.join("config.json");
        let text = std::fs::read_to_string(&path).map_err(|e| ModelError::Io {
            action: "read",
            path: path.clone(),
            source: e,
        })?;
        let config: Qwen2Config = serde_json::from_str(&text)
            .map_err(|e| ModelError::Invalid(format!("{} is not a Qwen2 config: {e}", path.display())))?;
        config.validate()?;
        Ok(config)
    }

    /// Key/value heads.
    pub fn kv_heads(&self) -> usize {
        self.num_key_value_heads.unwrap_or(self.num_attention_heads)
    }

    /// Width of one head.
    pub fn head_dim(&self) -> usize {
        self.hidden_size / self.num_attention_heads
    }

    /// Checks the shape is one fathom's Qwen2 can run.
    pub fn validate(&self) -> Result<(), ModelError> {
        let bad = |msg: String| Err(ModelError::Invalid(msg));
        if self.model_type != "qwen2" {
            return bad(format!(
                "model_type is '{}'; fathom's candle policy runs Qwen2-architecture models (Qwen2, Qwen2.5)",
                self.model_type
            ));
        }
        if self.hidden_act != "silu" {
            return bad(format!(
                "hidden_act '{}' is not supported (Qwen2 uses silu)",
                self.hidden_act
            ));
        }
        for (name, v) in [
            ("vocab_size", self.vocab_size),
            ("hidden_size", self.hidden_size),
            ("intermediate_size", self.intermediate_size),
            ("num_hidden_layers", self.num_hidden_layers),
            ("num_attention_heads", self.num_attention_heads),
        ] {
            if v == 0 {
                return bad(format!("{name} must be positive"));
            }
        }
        if !self.hidden_size.is_multiple_of(self.num_attention_heads) {
            return bad(format!(
                "hidden_size {} is not a multiple of num_attention_heads {}",
                self.hidden_size, self.num_attention_heads
            ));
        }
        if !self.head_dim().is_multiple_of(2) {
            return bad(format!(
                "the head width {} must be even for rotary positions",
                self.head_dim()
            ));
        }
        let kv = self.kv_heads();
        if kv == 0 || !self.num_attention_heads.is_multiple_of(kv) {
            return bad(format!(
                "num_attention_heads {} is not a multiple of num_key_value_heads {kv}",
                self.num_attention_heads
            ));
        }
        Ok(())
    }

    /// Parameters of the model (with a tied output projection counted once).
    pub fn parameter_count(&self) -> usize {
        let (h, i, v) = (self.hidden_size, self.intermediate_size, self.vocab_size);
        let kv_dim = self.kv_heads() * self.head_dim();
        let attn = h * h + h + 2 * (h * kv_dim + kv_dim) + h * h;
        let mlp = 3 * h * i;
        let norms = 2 * h;
        let layer = attn + mlp + norms;
        let head = if self.tie_word_embeddings { 0 } else { v * h };
        v * h + self.num_hidden_layers * layer + h + head
    }
}
