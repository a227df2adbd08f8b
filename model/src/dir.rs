//! Hugging Face model directories: load (`config.json`, `model.safetensors`
//! or shards named by `model.safetensors.index.json`, `tokenizer.json`)
//! into trainable variables, and save weights back by the same names.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};

use crate::{ChatTokenizer, ModelError, Qwen2, Qwen2Config};

/// A model loaded from a directory, its weights held as trainable
/// variables.
pub struct LoadedModel {
    /// The directory it came from.
    pub dir: PathBuf,
    /// Its configuration.
    pub config: Qwen2Config,
    /// The network.
    pub model: Qwen2,
    /// The weights, by Hugging Face name (what an optimizer updates).
    pub vars: VarMap,
    /// The tokenizer.
    pub tokenizer: ChatTokenizer,
}

impl std::fmt::Debug for LoadedModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoadedModel")
            .field("dir", &self.dir)
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// The weight files of a directory: the shards of the index, or
/// `model.safetensors`, or every `*.safetensors`.
pub fn weight_files(dir: &Path) -> Result<Vec<PathBuf>, ModelError> {
    let index = dir.join("model.safetensors.index.json");
    if index.exists() {
        let text = std::fs::read_to_string(&index).map_err(|e| ModelError::Io {
            action: "read",
            path: index.clone(),
            source: e,
        })?;
        let v: serde_json::Value = serde_json::from_str(&text)
            .map_err(|e| ModelError::Invalid(format!("{} does not parse: {e}", index.display())))?;
        let map = v["weight_map"]
            .as_object()
            .ok_or_else(|| ModelError::Invalid(format!("{} has no weight_map", index.display())))?;
        let files: BTreeSet<&str> = map.values().filter_map(|f| f.as_str()).collect();
        return Ok(files.into_iter().map(|f| dir.join(f)).collect());
    }
    let single = dir.join("model.safetensors");
    if single.exists() {
        return Ok(vec![single]);
    }
    let mut all: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(|e| ModelError::Io {
            action: "list",
            path: dir.to_path_buf(),
            source: e,
        })?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
        .collect();
    all.sort();
    if all.is_empty() {
        return Err(ModelError::Invalid(format!(
            "{} holds no *.safetensors weights (expected model.safetensors or a model.safetensors.index.json with its shards)",
            dir.display()
        )));
    }
    Ok(all)
}

/// The weight names a Qwen2 of this shape needs.
pub fn expected_names(config: &Qwen2Config) -> Vec<String> {
    let mut names = vec!["model.embed_tokens.weight".to_string(), "model.norm.weight".to_string()];
    for l in 0..config.num_hidden_layers {
        let p = format!("model.layers.{l}");
        for w in ["q_proj", "k_proj", "v_proj"] {
            names.push(format!("{p}.self_attn.{w}.weight"));
            names.push(format!("{p}.self_attn.{w}.bias"));
        }
        names.push(format!("{p}.self_attn.o_proj.weight"));
        for w in ["gate_proj", "up_proj", "down_proj"] {
            names.push(format!("{p}.mlp.{w}.weight"));
        }
        names.push(format!("{p}.input_layernorm.weight"));
        names.push(format!("{p}.post_attention_layernorm.weight"));
    }
    if !config.tie_word_embeddings {
        names.push("lm_head.weight".into());
    }
    names
}

/// The dtype a user asks for by name.
pub fn parse_dtype(name: &str) -> Result<DType, ModelError> {
    match name {
        "f32" | "float32" => Ok(DType::F32),
        "bf16" | "bfloat16" => Ok(DType::BF16),
        "f16" | "float16" => Ok(DType::F16),
        other => Err(ModelError::Invalid(format!(
            "dtype '{other}' is not supported; use f32 or bf16"
        ))),
    }
}

/// Loads the model in `dir` onto `device` in `dtype`.
pub fn load(dir: &Path, device: &Device, dtype: DType) -> Result<LoadedModel, ModelError> {
    let config = Qwen2Config::load(dir)?;
    let tokenizer = ChatTokenizer::load(dir)?;
    if tokenizer.vocab_size() > config.vocab_size {
        return Err(ModelError::Invalid(format!(
            "the tokenizer has {} tokens but the model only {} embeddings",
            tokenizer.vocab_size(),
            config.vocab_size
        )));
    }
    let mut tensors: HashMap<String, Tensor> = HashMap::new();
    for file in weight_files(dir)? {
        let loaded = candle_core::safetensors::load(&file, device)
            .map_err(|e| ModelError::Invalid(format!("{} is not a safetensors file: {e}", file.display())))?;
        tensors.extend(loaded);
    }
    let vars = VarMap::new();
    {
        let mut data = vars
            .data()
            .lock()
            .map_err(|_| ModelError::Invalid("weights lock poisoned".into()))?;
        for name in expected_names(&config) {
            let t = tensors
                .remove(&name)
                .ok_or_else(|| ModelError::Invalid(format!("weight {name} is missing from {}", dir.display())))?;
            data.insert(name, Var::from_tensor(&t.to_dtype(dtype)?)?);
        }
    }
    let vb = VarBuilder::from_varmap(&vars, dtype, device);
    let model = Qwen2::new(&config, vb)?;
    Ok(LoadedModel {
        dir: dir.to_path_buf(),
        config,
        model,
        vars,
        tokenizer,
    })
}

/// Writes every variable of `vars` to one safetensors file, by name.
pub fn save_weights(vars: &VarMap, path: &Path) -> Result<(), ModelError> {
    vars.save(path)
        .map_err(|e| ModelError::Invalid(format!("writing {}: {e}", path.display())))
}
