//! The `candle` policy: fathom's own Qwen2 (the `model` crate) generating
//! turns from the rendered chat, with the sampled token ids and their
//! log-probs, which the trainer needs.

use std::path::Path;
use std::sync::Arc;

use fathom_core::derive_seed;
use fathom_core::event::FinishReason;
use fathom_core::protocol::{self, Message, Protocol};
use fathom_model::batch::{Batcher, Job};
use fathom_model::decode::{Cache, Decoder};
use fathom_model::generate::{Finish, Output, Request, generate};
use fathom_model::sample::Sampling;
use fathom_model::tokenizer::IM_END;
use fathom_model::{ChatTokenizer, Kernels, LoadedModel, ModelError};

use crate::policy::{GenerateFuture, Generation, Policy, PolicyError, PolicyInput};

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
    /// `device`: `cpu`, or `cuda:N` with the `cuda` feature), in `dtype`,
    /// with the best kernels there are for them ([`Kernels::best_for`]).
    pub fn load(dir: &Path, device: &str, dtype: &str) -> Result<CandleModel, ModelError> {
        let d = parse_device(device)?;
        let t = fathom_model::dir::parse_dtype(dtype)?;
        CandleModel::load_with(dir, device, dtype, Kernels::best_for(&d, t))
    }

    /// [`CandleModel::load`] with the given kernels (a replay uses the ones
    /// its episode was recorded with).
    pub fn load_with(dir: &Path, device: &str, dtype: &str, kernels: Kernels) -> Result<CandleModel, ModelError> {
        let device = parse_device(device)?;
        let dtype = fathom_model::dir::parse_dtype(dtype)?;
        let mut loaded = fathom_model::load(dir, &device, dtype)?;
        loaded.model.set_kernels(kernels);
        Ok(CandleModel {
            loaded,
            spec: format!("candle:{}", dir.display()),
        })
    }

    /// Wraps a model already loaded (the trainer's, whose weights it updates in place).
    pub fn from_loaded(loaded: LoadedModel) -> CandleModel {
        let spec = format!("candle:{}", loaded.dir.display());
        CandleModel { loaded, spec }
    }

    /// Wraps a model already loaded under another description than its
    /// directory (weights rebuilt from the log: `rebuilt:r-3/step-000010`).
    pub fn named(loaded: LoadedModel, spec: String) -> CandleModel {
        CandleModel { loaded, spec }
    }

    /// The loaded model.
    pub fn loaded(&self) -> &LoadedModel {
        &self.loaded
    }

    /// `candle:DIR`.
    pub fn spec(&self) -> &str {
        &self.spec
    }

    /// A batch decoder over the weights as they are now, for policies that
    /// decode together ([`CandlePolicy::batched`]); `None` where the model
    /// does not run on the fused kernels (the decoder's domain: f32 on the
    /// CPU). Take a new one after the weights change.
    pub fn batcher(&self) -> Result<Option<Arc<Batcher>>, ModelError> {
        let m = &self.loaded.model;
        if m.kernels() != Kernels::Fused {
            return Ok(None);
        }
        Ok(Some(Arc::new(Batcher::start(
            Decoder::of(m)?,
            self.loaded.tokenizer.clone(),
            m.config().max_position_embeddings,
        ))))
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

/// The ids that follow a generated turn in the context: the end of that
/// turn (unless the model sampled its end token itself), the tool response
/// as a user turn, the opening of the next assistant turn and the
/// protocol's turn prefix. The policy builds its context with this, and
/// the trainer rebuilds the same sequence from the log with it, so
/// training sees exactly the ids the model conditioned on (the sampled ids
/// are never re-tokenised).
pub fn continuation(
    tokenizer: &ChatTokenizer,
    turn_ended: bool,
    tool_text: &str,
    protocol: Protocol,
) -> Result<Vec<u32>, ModelError> {
    let mut text = String::new();
    if !turn_ended {
        text.push_str(IM_END);
    }
    text.push_str("\n<|im_start|>user\n");
    text.push_str(tool_text);
    text.push_str("<|im_end|>\n<|im_start|>assistant\n");
    text.push_str(protocol.turn_prefix());
    tokenizer.encode(&text)
}

/// One episode's view of a [`CandleModel`]. It keeps the episode's context
/// as ids: the prompt, then each turn's sampled ids followed by the
/// [`continuation`] of its tool response.
#[derive(Debug, Clone)]
pub struct CandlePolicy {
    model: Arc<CandleModel>,
    sampling: Sampling,
    version: u64,
    context: Vec<u32>,
    /// Per context id: whether this policy sampled it.
    generated: Vec<bool>,
    /// Per context id: its sampling log-prob (0 where not sampled).
    logprobs: Vec<f32>,
    /// Messages the context reflects (including this policy's own last turn).
    seen: usize,
    /// Whether the last turn's ids end with an end-of-turn token.
    ended: bool,
    /// The batch decoder this policy's turns join, if any.
    batcher: Option<Arc<Batcher>>,
    /// With a batcher: the episode's cache (every context id before
    /// `pending`), kept from one turn to the next.
    cache: Option<Cache>,
    /// Context ids the cache does not hold yet.
    pending: Vec<u32>,
}

/// What [`CandlePolicy::prepare`] added to the context.
enum Added {
    /// A new conversation: the whole context is new.
    All,
    /// The conversation went on: these ids were appended.
    Tail(Vec<u32>),
}

impl CandlePolicy {
    /// A policy sampling from `model` as `sampling` says, at `version`.
    pub fn new(model: Arc<CandleModel>, sampling: Sampling, version: u64) -> CandlePolicy {
        CandlePolicy {
            model,
            sampling,
            version,
            context: Vec::new(),
            generated: Vec::new(),
            logprobs: Vec::new(),
            seen: 0,
            ended: false,
            batcher: None,
            cache: None,
            pending: Vec::new(),
        }
    }

    /// A policy whose turns are decoded in `batcher`'s batches, each
    /// episode keeping its key/value cache across turns (only the tool
    /// response and the last sampled id run again). Its ids and log-probs
    /// are exactly those of [`CandlePolicy::new`] on the same weights.
    pub fn batched(
        model: Arc<CandleModel>,
        batcher: Option<Arc<Batcher>>,
        sampling: Sampling,
        version: u64,
    ) -> CandlePolicy {
        CandlePolicy {
            batcher,
            ..CandlePolicy::new(model, sampling, version)
        }
    }
}

impl CandlePolicy {
    /// The episode's context so far, as ids.
    pub fn context(&self) -> &[u32] {
        &self.context
    }

    /// The episode as a training sequence: its context, which ids this
    /// policy sampled (the only ones that carry loss), their sampling
    /// log-probs, and the episode's advantage.
    pub fn sequence(&self, advantage: f64) -> crate::grpo::Sequence {
        crate::grpo::Sequence {
            ids: self.context.clone(),
            generated: self.generated.clone(),
            old_logprobs: self.logprobs.clone(),
            ref_logprobs: None,
            advantage,
        }
    }
}

impl CandlePolicy {
    fn error(&self, e: ModelError) -> PolicyError {
        PolicyError {
            policy: self.model.spec.clone(),
            message: e.to_string(),
        }
    }

    /// Brings the context up to `input`'s conversation: the tool responses
    /// since this policy's last turn as [`continuation`]s, or, for a new
    /// conversation, the rendered prompt.
    fn prepare(&mut self, input: &PolicyInput<'_>) -> Result<Added, PolicyError> {
        let model = self.model.clone();
        let m = &model.loaded;
        let n = input.messages.len();
        let continues = !self.context.is_empty()
            && n > self.seen
            && matches!(input.messages.get(self.seen - 1), Some(Message::Assistant(_)));
        if !continues {
            self.context = m
                .tokenizer
                .encode(&protocol::render_prompt(input.messages, input.protocol))
                .map_err(|e| self.error(e))?;
            self.generated = vec![false; self.context.len()];
            self.logprobs = vec![0.0; self.context.len()];
            return Ok(Added::All);
        }
        let mut tail = Vec::new();
        for msg in &input.messages[self.seen..] {
            match msg {
                Message::Tool(text) | Message::User(text) => {
                    let ids =
                        continuation(&m.tokenizer, self.ended, text, input.protocol).map_err(|e| self.error(e))?;
                    tail.extend_from_slice(&ids);
                    self.ended = true;
                }
                Message::Assistant(_) | Message::System(_) => {
                    return Err(self.error(ModelError::Invalid(
                        "the conversation changed under the policy (an assistant or system turn it did not generate)"
                            .into(),
                    )));
                }
            }
        }
        self.generated.extend(std::iter::repeat_n(false, tail.len()));
        self.logprobs.extend(std::iter::repeat_n(0.0, tail.len()));
        self.context.extend_from_slice(&tail);
        Ok(Added::Tail(tail))
    }

    /// Records the sampled turn in the context and returns it.
    fn finish(&mut self, input: &PolicyInput<'_>, out: Output) -> Generation {
        let tokenizer = &self.model.loaded.tokenizer;
        self.context.extend(&out.ids);
        self.generated.extend(std::iter::repeat_n(true, out.ids.len()));
        self.logprobs.extend(&out.logprobs);
        self.ended = out.ids.last().is_some_and(|id| tokenizer.end_ids().contains(id));
        self.seen = input.messages.len() + 1;
        Generation {
            text: format!("{}{}", input.protocol.turn_prefix(), out.text),
            n_tokens: out.ids.len() as u32,
            token_ids: Some(out.ids),
            logprobs: Some(out.logprobs),
            finish: match out.finish {
                Finish::Stop => FinishReason::Stop,
                Finish::Length => FinishReason::Length,
            },
        }
    }

    fn stop() -> Vec<String> {
        STOP.iter().map(|s| s.to_string()).collect()
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
        self.prepare(&input)?;
        // A turn decoded alone re-reads the whole context; the batched
        // path's cache must then start again.
        self.cache = None;
        let model = self.model.clone();
        let m = &model.loaded;
        let out = generate(
            &m.model,
            &m.tokenizer,
            &Request {
                prompt: &self.context,
                max_new_tokens: input.max_tokens as usize,
                sampling: self.sampling,
                // One stream per turn, fixed by the episode's seed.
                seed: derive_seed(input.seed, "turn", u64::from(input.turn)),
                stop: &Self::stop(),
            },
        )
        .map_err(|e| self.error(e))?;
        Ok(self.finish(&input, out))
    }

    fn generate_async<'a>(&'a mut self, input: PolicyInput<'a>) -> GenerateFuture<'a> {
        let Some(batcher) = self.batcher.clone() else {
            return Box::pin(std::future::ready(self.generate(input)));
        };
        Box::pin(async move {
            let added = self.prepare(&input)?;
            let (cache, feed) = match (added, self.cache.take()) {
                (Added::Tail(tail), Some(cache)) => {
                    let mut feed = std::mem::take(&mut self.pending);
                    feed.extend(tail);
                    (cache, feed)
                }
                _ => (batcher.new_cache(), self.context.clone()),
            };
            let (tx, rx) = tokio::sync::oneshot::channel();
            batcher.submit(Job {
                cache,
                feed,
                max_new_tokens: input.max_tokens as usize,
                sampling: self.sampling,
                seed: derive_seed(input.seed, "turn", u64::from(input.turn)),
                stop: Self::stop(),
                reply: Box::new(move |r| {
                    // The episode may have been dropped; nothing waits then.
                    let _ = tx.send(r);
                }),
            });
            let turn = rx
                .await
                .map_err(|_| self.error(ModelError::Invalid("the batch decoder dropped a turn".into())))?
                .map_err(|e| self.error(e))?;
            self.cache = Some(turn.cache);
            self.pending = turn.pending;
            Ok(self.finish(&input, turn.output))
        })
    }
}
