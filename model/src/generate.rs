//! Incremental generation with the KV cache: prompt ids in, sampled ids
//! and their log-probs out.

use candle_core::Tensor;
use fathom_core::SeededRng;

use crate::decode::Decoder;
use crate::sample::{Sampling, pick, pick_unsorted};
use crate::{ChatTokenizer, Kernels, ModelError, Qwen2};

/// Prompt tokens run at once on a GPU (see [`generate`]).
pub const PREFILL_CHUNK: usize = 1024;

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
    if model.kernels() == Kernels::Fused {
        // The weights run by the plain-f32 decoder, and sampling at top-p 1
        // without sorting the vocabulary.
        let decoder = Decoder::of(model)?;
        let mut cache = decoder.new_cache();
        let first = decoder.forward(&mut cache, req.prompt)?;
        return sample_loop(tokenizer, req, limit, first, true, |id| {
            Ok(decoder.forward(&mut cache, &[id])?)
        });
    }
    let mut cache = model.new_cache();
    let device = model.device();
    let last_row = |logits: Tensor| -> Result<Vec<f32>, ModelError> {
        let t = logits.dim(1)?;
        Ok(logits.narrow(1, t - 1, 1)?.flatten_all()?.to_vec1()?)
    };
    // On a GPU the prompt runs in chunks, so that a long context's
    // attention scores are [heads, chunk, t], not [heads, t, t]. The CPU
    // runs it whole, as logs recorded on the reference kernels were
    // sampled (a different grouping could round differently).
    let chunk = if device.is_cpu() {
        req.prompt.len()
    } else {
        PREFILL_CHUNK
    };
    let mut first = Vec::new();
    for piece in req.prompt.chunks(chunk.max(1)) {
        let input = Tensor::new(piece, device)?.unsqueeze(0)?;
        let offset = cache.len();
        first = last_row(model.forward(&input, offset, Some(&mut cache))?)?;
    }
    sample_loop(tokenizer, req, limit, first, false, |id| {
        let next = Tensor::new(&[id], device)?.unsqueeze(0)?;
        let offset = cache.len();
        last_row(model.forward(&next, offset, Some(&mut cache))?)
    })
}

/// Samples up to the request's budget from `logits` (those after the
/// prompt), asking `next` for the logits after each sampled id; `unsorted`
/// samples at top-p 1 with [`pick_unsorted`] (the fused kernels' runs),
/// else with [`pick`].
fn sample_loop(
    tokenizer: &ChatTokenizer,
    req: &Request<'_>,
    limit: usize,
    mut logits: Vec<f32>,
    unsorted: bool,
    mut next: impl FnMut(u32) -> Result<Vec<f32>, ModelError>,
) -> Result<Output, ModelError> {
    let mut rng = SeededRng::new(req.seed);
    let max_new = req.max_new_tokens.min(limit - req.prompt.len());
    let (mut ids, mut logprobs) = (Vec::new(), Vec::new());
    let mut finish = Finish::Length;
    for _ in 0..max_new {
        let (id, lp) = if unsorted && !req.sampling.is_greedy() && req.sampling.top_p >= 1.0 {
            pick_unsorted(&logits, req.sampling.temperature, &mut rng)
        } else {
            pick(&logits, req.sampling, &mut rng)
        };
        ids.push(id);
        logprobs.push(lp);
        if stops(tokenizer, &ids, req.stop)? {
            finish = Finish::Stop;
            break;
        }
        logits = next(id)?;
    }
    let text = tokenizer.decode(&ids)?;
    Ok(Output {
        ids,
        logprobs,
        text,
        finish,
    })
}

/// Whether the sampled `ids` end the turn: an end id, or a stop string
/// completed by the last few tokens.
pub(crate) fn stops(tokenizer: &ChatTokenizer, ids: &[u32], stop: &[String]) -> Result<bool, ModelError> {
    let Some(last) = ids.last() else {
        return Ok(false);
    };
    if tokenizer.end_ids().contains(last) {
        return Ok(true);
    }
    if stop.is_empty() {
        return Ok(false);
    }
    let tail = tokenizer.decode(&ids[ids.len().saturating_sub(16)..])?;
    Ok(stop.iter().any(|s| tail.ends_with(s.as_str())))
}
