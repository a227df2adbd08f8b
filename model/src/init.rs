//! Tiny, randomly initialised Qwen2 models in exactly the Hugging Face
//! layout, with a byte-level BPE tokenizer trained on the text given (the
//! sandbox's pages, for `fathom model init-tiny`) and the protocol's tags
//! as single tokens: a real model directory for tests and the demo.

use std::collections::HashMap;
use std::path::Path;

use candle_core::{Device, Tensor};
use fathom_core::SeededRng;
use tokenizers::models::bpe::{BPE, BpeTrainerBuilder};
use tokenizers::{AddedToken, Tokenizer};

use crate::dir::expected_names;
use crate::tokenizer::{END_OF_TEXT, IM_END, IM_START, PROTOCOL_TAGS};
use crate::{ModelError, Qwen2Config};

/// The shape of a tiny model.
#[derive(Debug, Clone)]
pub struct TinySpec {
    /// Transformer blocks.
    pub layers: usize,
    /// Residual width.
    pub hidden: usize,
    /// Query heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// MLP width.
    pub intermediate: usize,
    /// Vocabulary size (the BPE learns up to this many tokens, special
    /// tokens included; the embedding has exactly this many rows).
    pub vocab: usize,
    /// Positions.
    pub max_positions: usize,
    /// Seed of the weights.
    pub seed: u64,
}

impl Default for TinySpec {
    fn default() -> Self {
        TinySpec {
            layers: 2,
            hidden: 64,
            heads: 4,
            kv_heads: 2,
            intermediate: 172,
            vocab: 2048,
            max_positions: 32768,
            seed: 0,
        }
    }
}

fn io<'a>(action: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> ModelError + 'a {
    move |source| ModelError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

/// Trains the tokenizer: byte-level BPE (as Qwen's), chat markers as
/// special tokens, protocol tags as added (kept on decode) tokens.
pub fn train_tokenizer<S: AsRef<str> + Send>(
    texts: impl Iterator<Item = S> + Send,
    vocab: usize,
) -> Result<Tokenizer, ModelError> {
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    let specials: Vec<AddedToken> = [END_OF_TEXT, IM_START, IM_END]
        .iter()
        .map(|t| AddedToken::from(*t, true))
        .collect();
    let reserved = specials.len() + PROTOCOL_TAGS.len();
    if vocab < 256 + reserved + 16 {
        return Err(ModelError::Invalid(format!(
            "a vocabulary of {vocab} is too small: byte-level BPE needs 256 byte tokens, {reserved} special tokens and some merges (use at least 512)"
        )));
    }
    let mut trainer: tokenizers::models::TrainerWrapper = BpeTrainerBuilder::new()
        .vocab_size(vocab - PROTOCOL_TAGS.len())
        .min_frequency(2)
        .show_progress(false)
        .special_tokens(specials)
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build()
        .into();
    let mut tokenizer = Tokenizer::new(BPE::default());
    tokenizer.with_pre_tokenizer(Some(ByteLevel::new(false, true, true)));
    tokenizer.with_decoder(Some(ByteLevel::default()));
    tokenizer
        .train(&mut trainer, texts)
        .map_err(|e| ModelError::Tokenizer(format!("training the BPE: {e}")))?;
    tokenizer
        .add_tokens(PROTOCOL_TAGS.iter().map(|t| AddedToken::from(*t, false)))
        .map_err(|e| ModelError::Tokenizer(e.to_string()))?;
    Ok(tokenizer)
}

/// The configuration of a tiny model.
pub fn tiny_config(spec: &TinySpec, tokenizer: &Tokenizer) -> Qwen2Config {
    Qwen2Config {
        architectures: vec!["Qwen2ForCausalLM".into()],
        model_type: "qwen2".into(),
        vocab_size: spec.vocab.max(tokenizer.get_vocab_size(true)),
        hidden_size: spec.hidden,
        intermediate_size: spec.intermediate,
        num_hidden_layers: spec.layers,
        num_attention_heads: spec.heads,
        num_key_value_heads: Some(spec.kv_heads),
        max_position_embeddings: spec.max_positions,
        rope_theta: 10_000.0,
        rms_norm_eps: 1e-6,
        tie_word_embeddings: true,
        hidden_act: "silu".into(),
        bos_token_id: tokenizer.token_to_id(END_OF_TEXT),
        eos_token_id: tokenizer.token_to_id(IM_END),
        torch_dtype: Some("float32".into()),
    }
}

/// Random weights as Hugging Face initialises them: normal(0, 0.02) for
/// matrices, zero biases, unit norms. Seeded, independent of candle's RNG.
pub fn random_weights(config: &Qwen2Config, seed: u64) -> Result<HashMap<String, Tensor>, ModelError> {
    let mut rng = SeededRng::new(seed);
    let mut normal = move || {
        // Box-Muller.
        let u1 = rng.next_f64().max(1e-12);
        let u2 = rng.next_f64();
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos() * 0.02) as f32
    };
    let (h, i, v) = (config.hidden_size, config.intermediate_size, config.vocab_size);
    let kv = config.kv_heads() * config.head_dim();
    let mut out = HashMap::new();
    for name in expected_names(config) {
        let shape: Vec<usize> = if name.ends_with("layernorm.weight") || name == "model.norm.weight" {
            vec![h]
        } else if name.ends_with("embed_tokens.weight") || name == "lm_head.weight" {
            vec![v, h]
        } else if name.contains("q_proj.") {
            if name.ends_with("bias") { vec![h] } else { vec![h, h] }
        } else if name.contains("k_proj.") || name.contains("v_proj.") {
            if name.ends_with("bias") { vec![kv] } else { vec![kv, h] }
        } else if name.contains("o_proj") {
            vec![h, h]
        } else if name.contains("gate_proj") || name.contains("up_proj") {
            vec![i, h]
        } else if name.contains("down_proj") {
            vec![h, i]
        } else {
            return Err(ModelError::Invalid(format!("no initialiser for {name}")));
        };
        let n: usize = shape.iter().product();
        let values: Vec<f32> = if name.ends_with("norm.weight") {
            vec![1.0; n]
        } else if name.ends_with("bias") {
            vec![0.0; n]
        } else {
            (0..n).map(|_| normal()).collect()
        };
        out.insert(name, Tensor::from_vec(values, shape, &Device::Cpu)?);
    }
    Ok(out)
}

/// The Qwen2.5 chat template, for tools that read `tokenizer_config.json`.
const CHAT_TEMPLATE: &str = "{% for message in messages %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

/// Writes a tiny model directory to `out`: `config.json`,
/// `model.safetensors`, `tokenizer.json`, `tokenizer_config.json`,
/// `generation_config.json`.
pub fn write_tiny<S: AsRef<str> + Send>(
    out: &Path,
    spec: &TinySpec,
    texts: impl Iterator<Item = S> + Send,
) -> Result<Qwen2Config, ModelError> {
    std::fs::create_dir_all(out).map_err(io("create", out))?;
    let tokenizer = train_tokenizer(texts, spec.vocab)?;
    let config = tiny_config(spec, &tokenizer);
    config.validate()?;
    let weights = random_weights(&config, spec.seed)?;
    let path = out.join("model.safetensors");
    candle_core::safetensors::save(&weights, &path)
        .map_err(|e| ModelError::Invalid(format!("writing {}: {e}", path.display())))?;
    let tok_path = out.join("tokenizer.json");
    tokenizer
        .save(&tok_path, true)
        .map_err(|e| ModelError::Tokenizer(format!("writing {}: {e}", tok_path.display())))?;
    let write_json = |name: &str, v: serde_json::Value| -> Result<(), ModelError> {
        let p = out.join(name);
        std::fs::write(&p, serde_json::to_string_pretty(&v).expect("JSON")).map_err(io("write", &p))
    };
    write_json("config.json", serde_json::to_value(&config).expect("config serialises"))?;
    write_json(
        "tokenizer_config.json",
        serde_json::json!({
            "tokenizer_class": "Qwen2Tokenizer",
            "bos_token": null,
            "eos_token": IM_END,
            "pad_token": END_OF_TEXT,
            "model_max_length": spec.max_positions,
            "chat_template": CHAT_TEMPLATE,
            "additional_special_tokens": [IM_START, IM_END],
        }),
    )?;
    write_json(
        "generation_config.json",
        serde_json::json!({
            "bos_token_id": config.bos_token_id,
            "eos_token_id": [config.eos_token_id, config.bos_token_id],
            "do_sample": true, "temperature": 0.7, "top_p": 0.8,
        }),
    )?;
    Ok(config)
}
