//! The `candle` policy: fathom's own Qwen2 (the `model` crate) generating
//! turns from the rendered chat, with the sampled token ids and their
//! log-probs, which the trainer needs.

use std::path::Path;
use std::sync::Arc;

use fathom_core::derive_seed;
use fathom_core::event::FinishReason;
use fathom_core::protocol;
use fathom_model::generate::{Finish, Request, generate};
use fathom_model::sample::Sampling;
use fathom_model::{LoadedModel, ModelError};

use crate::policy::{Generation, Policy, PolicyError, PolicyInput};

/// Generation stops once a turn closes its tool call or its answer: the
/// protocol acts on the first of either, so nothing after it matters.
const STOP: &[&str] = &["</tool_call>", "</answer>"];

/// A loaded model shared by every episode's policy.
pub struct CandleModel {
    loaded: LoadedModel,
    spec: String,
}

impl std::fmt::Debug for CandleModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CandleModel")
            .field("spec", &self.spec)
            .finish_non_exhaustive()
    }
}

impl CandleModel {
    /// Loads a Hugging Face model directory on the CPU (or the device of
    /// `device`: `cpu`, or `cuda:N` with the `cuda` feature), in `dtype`.
    pub fn load(dir: &Path, device: &str, dtype: &str) -> Result<CandleModel, ModelError> {
        let device = parse_device(device)?;
        let dtype = fathom_model::dir::parse_dtype(dtype)?;
        Ok(CandleModel {
            loaded: fathom_model::load(dir, &device, dtype)?,
            spec: format!("candle:{}", dir.display()),
        })
    }

    /// The loaded model.
    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// `candle:DIR`.
    pub fn spec(&self) -> &str {
        &self.spec
    }
}

/// `cpu` or `cuda:N`.
pub fn parse_device(name: &str) -> Result<candle_core::Device, ModelError> {
    if name == "cpu" {
        return Ok(candle_core::Device::Cpu);
    }
    if let Some(n) = name.strip_prefix("cuda:").and_then(|n| n.parse::<usize>().ok()) {
        return candle_core::Device::new_cuda(n).map_err(|e| {
            ModelError::Invalid(format!(
                "device {name} is not available ({e}); fathom must be built with the `cuda` feature on a machine with that GPU, or use --device cpu"
            ))
        });
    }
    Err(ModelError::Invalid(format!(
        "device '{name}' is not understood; use cpu or cuda:N"
    )))
}

/// One episode's view of a [`CandleModel`].
#[derive(Debug, Clone)]
pub struct CandlePolicy {
    model: Arc<CandleModel>,
    sampling: Sampling,
    version: u64,
}

impl CandlePolicy {
    /// A policy sampling from `model` as `sampling` says, at `version`.
    pub fn new(model: Arc<CandleModel>, sampling: Sampling, version: u64) -> CandlePolicy {
        CandlePolicy {
            model,
            sampling,
            version,
        }
    }
}

impl Policy for CandlePolicy {
    fn name(&self) -> &str {
        "candle"
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn generate(&mut self, input: PolicyInput<'_>) -> Result<Generation, PolicyError> {
        let err = |e: ModelError| PolicyError {
            policy: self.model.spec.clone(),
            message: e.to_string(),
        };
        let m = &self.model.loaded;
        let prompt = m
            .tokenizer
            .encode(&protocol::render_chat(input.messages, true))
            .map_err(err)?;
        let stop: Vec<String> = STOP.iter().map(|s| s.to_string()).collect();
        let out = generate(
            &m.model,
            &m.tokenizer,
            &Request {
                prompt: &prompt,
                max_new_tokens: input.max_tokens as usize,
                sampling: self.sampling,
                // One stream per turn, fixed by the episode's seed.
                seed: derive_seed(input.seed, "turn", u64::from(input.turn)),
                stop: &stop,
            },
        )
        .map_err(err)?;
        Ok(Generation {
            text: out.text,
            n_tokens: out.ids.len() as u32,
            token_ids: Some(out.ids),
            logprobs: Some(out.logprobs),
            finish: match out.finish {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
            },
        })
    }
}
