//! Incremental generation with the KV cache: prompt ids in, sampled ids
//! and their log-probs out.

use candle_core::Tensor;
use fathom_core::SeededRng;

use crate::sample::{Sampling, pick};
use crate::{ChatTokenizer, ModelError, Qwen2};

/// Why generation stopped.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// An end id or a stop string.
    Stop,
    /// The token budget ran out.
    Length,
}

/// A generation request.
#[derive(Debug, Clone)]
pub struct Request<'a> {
    /// The prompt's ids.
    pub prompt: &'a [u32],
    /// Tokens to generate at most.
    pub max_new_tokens: usize,
    /// Greedy or sampled.
    pub sampling: Sampling,
    /// Seed of the sampling stream.
    pub seed: u64,
    /// Text that ends generation once the output ends with it (it is kept).
    pub stop: &'a [String],
}

/// What was generated.
#[derive(Debug, Clone, PartialEq)]
pub struct Output {
    /// Sampled ids (an end id, when one stopped generation, included).
    pub ids: Vec<u32>,
    /// Log-prob of each sampled id.
    pub logprobs: Vec<f32>,
    /// The text of the ids (chat markers dropped).
    pub text: String,
    /// Why it stopped.
    pub finish: Finish,
}

/// Generates from `model`.
pub fn generate(model: &Qwen2, tokenizer: &ChatTokenizer, req: &Request<'_>) -> Result<Output, ModelError> {
    if req.prompt.is_empty() {
        return Err(ModelError::Invalid("cannot generate from an empty prompt".into()));
    }
    let limit = model.config().max_position_embeddings;
    if req.prompt.len() >= limit {
        return Err(ModelError::Invalid(format!(
            "the prompt has {} tokens, at or over the model's {limit} positions",
            req.prompt.len()
        )));
    }
    let mut rng = SeededRng::new(req.seed);
    let mut cache = model.new_cache();
    let device = model.device();
    let mut ids = Vec::new();
    let mut logprobs = Vec::new();
    let input = Tensor::new(req.prompt, device)?.unsqueeze(0)?;
    let mut logits = model.forward(&input, 0, Some(&mut cache))?;
    let max_new = req.max_new_tokens.min(limit - req.prompt.len());
    let mut finish = Finish::Length;
    for _ in 0..max_new {
        let t = logits.dim(1)?;
        let last: Vec<f32> = logits.narrow(1, t - 1, 1)?.flatten_all()?.to_vec1()?;
        let (id, lp) = pick(&last, req.sampling, &mut rng);
        ids.push(id);
        logprobs.push(lp);
        if tokenizer.end_ids().contains(&id) {
            finish = Finish::Stop;
            break;
        }
        if !req.stop.is_empty() {
            // Only the last few tokens can complete a stop string.
            let tail = tokenizer.decode(&ids[ids.len().saturating_sub(16)..])?;
            if req.stop.iter().any(|s| tail.ends_with(s.as_str())) {
                finish = Finish::Stop;
                break;
            }
        }
        let next = Tensor::new(&[id], device)?.unsqueeze(0)?;
        let offset = cache.len();
        logits = model.forward(&next, offset, Some(&mut cache))?;
    }
    let text = tokenizer.decode(&ids)?;
    Ok(Output {
        ids,
        logprobs,
        text,
        finish,
    })
}
