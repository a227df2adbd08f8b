//! The `Policy` trait every model backend implements (scripted here; the
//! candle and OpenAI-compatible backends come with the model issue).

use fathom_core::event::FinishReason;
use fathom_core::protocol::{Message, Protocol};

/// What the policy is asked to continue.
#[derive(Debug, Clone, Copy)]
pub struct PolicyInput<'a> {
    /// The question of the episode.
    pub question: &'a str,
    /// The conversation so far (system prompt, question, turns, tool responses).
    pub messages: &'a [Message],
    /// Index of the turn to generate, from 0.
    pub turn: u32,
    /// The episode's sampling seed (recorded in EpisodeStarted).
    pub seed: u64,
    /// Budget of generated tokens for this turn.
    pub max_tokens: u32,
    /// The turn rules: the generation prompt ends with
    /// `protocol.turn_prefix()`, which the turn continues.
    pub protocol: Protocol,
}

/// One generated turn.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    /// The whole turn as the conversation holds it: the protocol's turn
    /// prefix (written by the environment at the end of the prompt), then
    /// the text exactly as generated.
    pub text: String,
    /// The sampled token ids (those after the prefix), for policies that
    /// have a tokenizer.
    pub token_ids: Option<Vec<u32>>,
    /// Their log-probabilities, when known.
    pub logprobs: Option<Vec<f32>>,
    /// Tokens generated.
    pub n_tokens: u32,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// Why a policy could not generate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("policy {policy} failed: {message}")]
pub struct PolicyError {
    /// The policy's name.
    pub policy: String,
    /// What went wrong.
    pub message: String,
}

/// A language-model policy (or a stand-in for one).
pub trait Policy: Send {
    /// A short name (`scripted`, `candle`, `openai`).
    fn name(&self) -> &str;

    /// Optimizer updates the weights have seen.
    fn version(&self) -> u64 {
        0
    }

    /// Generates the next assistant turn.
    fn generate(&mut self, input: PolicyInput<'_>) -> Result<Generation, PolicyError>;

    /// [`Policy::generate`] for the rollout engine, which awaits it: a
    /// policy that waits for others (a batched model waits for its batch's
    /// token steps) does so without holding a thread. By default it is
    /// `generate`.
    fn generate_async<'a>(&'a mut self, input: PolicyInput<'a>) -> GenerateFuture<'a> {
        Box::pin(std::future::ready(self.generate(input)))
    }
}

/// What [`Policy::generate_async`] returns.
pub type GenerateFuture<'a> =
    std::pin::Pin<Box<dyn std::future::Future<Output = Result<Generation, PolicyError>> + Send + 'a>>;
