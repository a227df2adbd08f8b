//! The event vocabulary: everything fathom records.
//!
//! An [`Event`] is an immutable fact about a run: a rollout turn, a web
//! exchange, a gradient update. The store frames and appends events and gives
//! each a [`Seq`]; everything downstream (replay, SQL, the dashboard, resume)
//! is computed from them. See `docs/EVENTS.md` for the reference.
//!
//! **Layouts are frozen.** Each payload struct below is the version-1 layout
//! of its kind. Once shipped, a layout is never edited: a new field means a new
//! struct (`TurnGeneratedV2`), a new layout version for the kind in the store's
//! frame, and a migration from the old one. The golden tests in the store pin
//! the encoded bytes of every kind so that an accidental edit fails.

use crate::clock::Timestamp;
use crate::id::{CheckpointId, EpisodeId, QuestionId, RequestId, RunId, Seq, SnapshotId};
use std::fmt;

/// A 32-byte content digest (BLAKE3), shown as 64 hex digits.
#[derive(
    Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub struct Digest(pub [u8; 32]);

impl Digest {
    /// The full hex form.
    pub fn to_hex(&self) -> String {
        hex::encode(self.0)
    }

    /// Parses 64 hex digits.
    pub fn from_hex(text: &str) -> Option<Digest> {
        let mut out = [0u8; 32];
        hex::decode_to_slice(text.trim(), &mut out).ok()?;
        Some(Digest(out))
    }

    /// The first 12 hex digits, for messages.
    pub fn short(&self) -> String {
        hex::encode(&self.0[..6])
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Digest({})", self.short())
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl serde::Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> serde::Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Digest::from_hex(&text)
            .ok_or_else(|| serde::de::Error::custom(format!("'{text}' is not a 64-digit hex digest")))
    }
}

/// A reference to a blob in the store's content-addressed blob tree: the
/// digest of the uncompressed bytes and their length.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Hash,
    serde::Serialize,
    serde::Deserialize,
    rkyv::Archive,
    rkyv::Serialize,
    rkyv::Deserialize,
)]
#[rkyv(derive(Debug))]
pub struct BlobRef {
    /// BLAKE3 of the uncompressed bytes; the blob's key.
    pub digest: Digest,
    /// Uncompressed length, so stats and readers know the size without a fetch.
    pub len: u64,
}

/// Derives `Debug`, serde and rkyv for a small closed set of names, encoded
/// as their index in rkyv (append new variants at the end only) and as
/// snake_case text in JSON.
macro_rules! vocabulary_enum {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $variant:ident = $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(
            Debug, Clone, Copy, PartialEq, Eq, Hash,
            serde::Serialize, serde::Deserialize,
            rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
        )]
        #[serde(rename_all = "snake_case")]
        #[rkyv(derive(Debug, PartialEq, Eq))]
        pub enum $name {
            $($(#[$vmeta])* $variant),+
        }

        impl $name {
            /// Every value, in encoding order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The snake_case name used in JSON, SQL and the CLI.
            pub const fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text),+ }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}

vocabulary_enum!(
    /// What a run is for.
    RunKind {
        /// GRPO training.
        Train = "train",
        /// Supervised warm start.
        Sft = "sft",
        /// Evaluation on a question set.
        Eval = "eval",
        /// Replay or counterfactual re-run of recorded episodes.
        Replay = "replay",
        /// Synthetic load (`fathom log load`), for testing disks and the log.
        Load = "load",
        /// One-off commands (`fathom web search`, `fathom web fetch`).
        Manual = "manual",
    }
);

vocabulary_enum!(
    /// How a run ended.
    RunStatus {
        /// Finished every step it was asked for.
        Completed = "completed",
        /// Stopped by an error.
        Failed = "failed",
        /// Stopped by the user (Ctrl-C); resumable.
        Interrupted = "interrupted",
    }
);

vocabulary_enum!(
    /// Why generation of a turn stopped.
    FinishReason {
        /// The model emitted an end-of-turn token or a stop sequence.
        Stop = "stop",
        /// The per-turn token budget ran out (a truncated turn).
        Length = "length",
        /// The policy failed (an endpoint error); the text is what was received.
        Error = "error",
    }
);

vocabulary_enum!(
    /// What a web request asked for.
    WebKind {
        /// A search API query.
        Search = "search",
        /// A page fetch.
        Fetch = "fetch",
    }
);

vocabulary_enum!(
    /// Where a web response came from.
    WebSource {
        /// The real network.
        Live = "live",
        /// fathom's built-in sandbox web.
        Sandbox = "sandbox",
        /// Answered from a recording in the log.
        Replay = "replay",
    }
);

vocabulary_enum!(
    /// Why an episode ended.
    EndReason {
        /// The policy gave an `<answer>`.
        Answer = "answer",
        /// The turn budget ran out before an answer.
        TurnLimit = "turn_limit",
        /// A turn was malformed (unbalanced tags, bad tool-call JSON).
        FormatError = "format_error",
        /// A turn hit the token budget before closing its tags.
        Truncated = "truncated",
        /// The run stopped mid-episode (kill, crash); excluded from metrics.
        Aborted = "aborted",
        /// An infrastructure error (policy endpoint down, replay divergence).
        Error = "error",
    }
);

vocabulary_enum!(
    /// The emergent behaviours fathom detects (DESIGN section 6).
    Behaviour {
        /// The first think lays out steps before the first tool call.
        Planning = "planning",
        /// More searching after the answer was found, with agreeing sources.
        CrossValidation = "cross_validation",
        /// Noticing off-target results and re-querying differently.
        SelfReflection = "self_reflection",
        /// Abstaining when the evidence is not there.
        Honesty = "honesty",
    }
);

/// One HTTP header of a recorded exchange.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct Header {
    /// Header name, lowercase.
    pub name: String,
    /// Header value, lossily decoded to UTF-8.
    pub value: String,
}

/// A run began (or resumed: `attempt` > 0 on each `--resume`).
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RunStarted {
    /// A human label for the run.
    pub name: String,
    /// What the run does.
    pub run_kind: RunKind,
    /// The full resolved configuration as JSON, so a run can be re-created.
    pub config_json: String,
    /// The run seed; every other seed derives from it.
    pub seed: u64,
    /// Which policy implementation (`candle`, `openai`, `scripted`).
    pub policy: String,
    /// The model: a directory, or an endpoint and model name.
    pub model: String,
    /// fathom's version and build, so a replay can tell code changes apart.
    pub code_version: String,
    /// 0 for the first start, then 1, 2, … for each resume of the same run.
    pub attempt: u32,
}

/// A run ended.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct RunFinished {
    /// How it ended.
    pub status: RunStatus,
    /// Training steps (or evaluation batches) completed.
    pub steps_completed: u64,
    /// The error or a short summary.
    pub message: String,
}

/// The data loader handed out a question for a training step or evaluation.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct QuestionSampled {
    /// Training step (or evaluation batch) the question belongs to.
    pub step: u64,
    /// The data set's id for the question.
    pub question_id: QuestionId,
    /// Which data set (`nq`, `hotpotqa`, `sandbox`, …).
    pub data_source: String,
    /// The question text.
    pub question: String,
    /// Accepted answers; the reward takes the best match.
    pub ground_truths: Vec<String>,
    /// Hop count where the data set knows it (MuSiQue ids, the sandbox).
    pub hops: Option<u32>,
    /// Position in the data order after this question: the resume cursor.
    pub data_cursor: u64,
}

/// An episode (one rollout of one question) began.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct EpisodeStarted {
    /// The new episode.
    pub episode_id: EpisodeId,
    /// Training step.
    pub step: u64,
    /// The GRPO group (one group per question per step).
    pub group_id: u32,
    /// Index of this rollout within its group.
    pub group_index: u32,
    /// The question being answered.
    pub question_id: QuestionId,
    /// Number of optimizer updates the policy had seen when it generated.
    pub policy_version: u64,
    /// Sampling seed of this episode, derived from the run seed.
    pub seed: u64,
    /// For a counterfactual re-run, the episode it re-runs.
    pub replay_of: Option<EpisodeId>,
    /// Tokens in the initial prompt (system prompt and question).
    pub n_prompt_tokens: u32,
}

/// The policy generated one assistant turn.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct TurnGenerated {
    /// The episode.
    pub episode_id: EpisodeId,
    /// Turn index within the episode, from 0.
    pub turn: u32,
    /// The decoded text exactly as generated.
    pub text: String,
    /// The sampled token ids (little-endian u32s) in the blob store; training
    /// uses these, never a re-tokenisation of `text`.
    pub token_ids: Option<BlobRef>,
    /// The sampling log-probabilities (little-endian f32s), when known.
    pub logprobs: Option<BlobRef>,
    /// Tokens of context the policy conditioned on.
    pub n_context_tokens: u32,
    /// Tokens generated.
    pub n_tokens: u32,
    /// Wall time of the generation, in nanoseconds.
    pub latency_ns: u64,
    /// Why generation stopped.
    pub finish: FinishReason,
}

/// The policy's turn called a tool.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ToolCalled {
    /// The episode.
    pub episode_id: EpisodeId,
    /// The turn that made the call.
    pub turn: u32,
    /// `web_search` or `browse_webpage`.
    pub tool: String,
    /// The arguments as the policy wrote them (JSON).
    pub arguments_json: String,
}

/// One request to the web and its response, as the gateway saw it.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct WebExchange {
    /// Unique id of the request.
    pub request_id: RequestId,
    /// The episode on whose behalf it was made, if any.
    pub episode_id: Option<EpisodeId>,
    /// The turn on whose behalf it was made, if any.
    pub turn: Option<u32>,
    /// Search or page fetch.
    pub request_kind: WebKind,
    /// The query text (search) or URL (fetch) as requested.
    pub target: String,
    /// The canonical request key replay matches on.
    pub canonical: String,
    /// Which backend served it (`serper`, `searxng`, `sandbox`, `http`).
    pub backend: String,
    /// HTTP status; 0 when no response arrived.
    pub status: u16,
    /// Response headers worth keeping (content type, charset, retry-after…).
    pub headers: Vec<Header>,
    /// The response body in the blob store.
    pub body: Option<BlobRef>,
    /// Whether the body was cut at the size cap.
    pub body_truncated: bool,
    /// Wall time from request to full body, in nanoseconds.
    pub latency_ns: u64,
    /// Live network, sandbox, or replay.
    pub source: WebSource,
    /// Attempt number (retries after 429/5xx count up from 1); 0 for a
    /// request the address guard refused before any attempt.
    pub attempt: u32,
    /// Transport or protocol error, when there was one.
    pub error: Option<String>,
}

/// The browsing agent read one segment of a page.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct PageSegmentRead {
    /// The episode.
    pub episode_id: EpisodeId,
    /// The turn whose browse call this serves.
    pub turn: u32,
    /// The fetch that produced the page.
    pub request_id: RequestId,
    /// The page URL.
    pub url: String,
    /// Segment index, from 0.
    pub segment: u32,
    /// Segments in the page.
    pub n_segments: u32,
    /// New information the reader extracted from this segment.
    pub notes: String,
    /// Whether the reader asked for the next segment.
    pub read_next: bool,
    /// Tokens the reader generated.
    pub n_tokens: u32,
}

/// What a tool call returned to the policy (the `<tool_response>` text).
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct ToolResult {
    /// The episode.
    pub episode_id: EpisodeId,
    /// The turn whose call this answers.
    pub turn: u32,
    /// The tool.
    pub tool: String,
    /// Exactly the text the policy saw.
    pub text: String,
    /// Search results or pages included.
    pub n_results: u32,
    /// Whether the tool succeeded.
    pub ok: bool,
    /// What went wrong, when it did not.
    pub error: Option<String>,
    /// Whether `text` was cut to the tool-response cap.
    pub truncated: bool,
    /// Tokens of `text` in the policy's tokenizer (masked from the loss).
    pub n_tokens: u32,
}

/// An episode ended, with its score.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct EpisodeFinished {
    /// The episode.
    pub episode_id: EpisodeId,
    /// The final answer, if the policy gave one.
    pub answer: Option<String>,
    /// Training reward (−1 on format failure, else F1).
    pub reward: f64,
    /// Word-level F1 against the best ground truth.
    pub f1: f64,
    /// Exact match after normalisation (0 or 1).
    pub em: f64,
    /// Whether every turn was well formed and an answer was given.
    pub format_ok: bool,
    /// What was malformed, when `format_ok` is false.
    pub format_error: Option<String>,
    /// Assistant turns.
    pub n_turns: u32,
    /// Tool calls of any kind.
    pub n_tool_calls: u32,
    /// `web_search` calls.
    pub n_searches: u32,
    /// `browse_webpage` calls.
    pub n_browses: u32,
    /// Tokens the policy generated in the episode.
    pub n_tokens: u64,
    /// Why it ended.
    pub ended_by: EndReason,
    /// Wall time of the episode, in nanoseconds.
    pub duration_ns: u64,
}

/// A behaviour detector fired on a finished episode.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct BehaviourTagged {
    /// The episode.
    pub episode_id: EpisodeId,
    /// Which behaviour.
    pub behaviour: Behaviour,
    /// The turn holding the evidence.
    pub turn: u32,
    /// Byte offset where the evidence starts in that turn's text.
    pub span_start: u32,
    /// Byte offset where it ends.
    pub span_end: u32,
    /// The evidence text, for people.
    pub evidence: String,
    /// Version of the detector, so refined detectors can be compared.
    pub detector_version: u32,
}

/// One optimizer step.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct GradientUpdate {
    /// Training step.
    pub step: u64,
    /// Policy version after this update.
    pub policy_version: u64,
    /// Total loss.
    pub loss: f64,
    /// Policy-gradient (clipped surrogate) term.
    pub pg_loss: f64,
    /// KL to the reference policy (k3), 0 when disabled.
    pub kl: f64,
    /// Mean token entropy.
    pub entropy: f64,
    /// Fraction of tokens whose ratio was clipped.
    pub clip_frac: f64,
    /// Gradient norm before clipping.
    pub grad_norm: f64,
    /// Learning rate used.
    pub lr: f64,
    /// Tokens that carried loss.
    pub tokens: u64,
    /// Episodes in the batch.
    pub episodes: u32,
    /// Micro-batches accumulated.
    pub micro_batches: u32,
    /// Wall time of the update, in nanoseconds.
    pub duration_ns: u64,
}

/// A checkpoint was written (atomically) and can be resumed from.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct CheckpointSaved {
    /// The checkpoint.
    pub checkpoint_id: CheckpointId,
    /// Training step it follows.
    pub step: u64,
    /// Policy version of the weights.
    pub policy_version: u64,
    /// Directory, relative to the data directory.
    pub path: String,
    /// BLAKE3 of the weights file.
    pub weights_digest: Digest,
    /// BLAKE3 of the optimizer-state file.
    pub optimizer_digest: Digest,
    /// Every RNG state the trainer needs to continue bit-for-bit.
    pub rng_state: Vec<u64>,
    /// Position in the data order.
    pub data_cursor: u64,
    /// Bytes on disk.
    pub bytes: u64,
    /// The retention metric (for "keep the best"), when there is one.
    pub metric: Option<f64>,
}

/// One evaluation figure.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct EvalResult {
    /// Training step evaluated (0 for a model never trained here).
    pub step: u64,
    /// The question set (`deepresearcher-dev`).
    pub benchmark: String,
    /// The data source within it (`nq`, `all`).
    pub data_source: String,
    /// `f1`, `em`, `format_ok`, …
    pub metric: String,
    /// The value.
    pub value: f64,
    /// Questions it averages over.
    pub n: u64,
}

/// A Parquet snapshot file was committed to the manifest.
#[derive(
    Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize, rkyv::Archive, rkyv::Serialize, rkyv::Deserialize,
)]
pub struct SnapshotCommitted {
    /// The snapshot.
    pub snapshot_id: SnapshotId,
    /// Which table.
    pub table: String,
    /// File path, relative to the snapshot root.
    pub path: String,
    /// Rows in the file.
    pub rows: u64,
    /// File size.
    pub bytes: u64,
    /// First log sequence number it covers.
    pub first_seq: Seq,
    /// Last log sequence number it covers.
    pub last_seq: Seq,
    /// BLAKE3 of the file.
    pub digest: Digest,
}

/// Defines [`Payload`] and [`EventKind`] from one list, so a kind's code,
/// name and struct can never drift apart. Codes are part of the on-disk
/// format: never reuse or renumber one.
macro_rules! define_kinds {
    ($($variant:ident = $code:literal, $name:literal;)+) => {
        /// The typed body of an event.
        #[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "kind", rename_all = "snake_case")]
        pub enum Payload {
            $(
                #[allow(missing_docs)]
                $variant($variant),
            )+
        }

        /// The kind of an event, with its stable on-disk code.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        #[repr(u16)]
        pub enum EventKind {
            $(
                #[allow(missing_docs)]
                $variant = $code,
            )+
        }

        impl EventKind {
            /// Every kind, in code order.
            pub const ALL: &'static [EventKind] = &[$(EventKind::$variant),+];

            /// The stable code stored in the frame header.
            pub const fn code(self) -> u16 {
                self as u16
            }

            /// The kind for a stored code, if it is one fathom knows.
            pub const fn from_code(code: u16) -> Option<EventKind> {
                match code {
                    $($code => Some(EventKind::$variant),)+
                    _ => None,
                }
            }

            /// The snake_case name used in JSON, SQL and the CLI.
            pub const fn name(self) -> &'static str {
                match self {
                    $(EventKind::$variant => $name,)+
                }
            }

            /// The kind for a snake_case name.
            pub fn from_name(name: &str) -> Option<EventKind> {
                EventKind::ALL.iter().copied().find(|k| k.name() == name)
            }
        }

        impl Payload {
            /// This payload's kind.
            pub const fn kind(&self) -> EventKind {
                match self {
                    $(Payload::$variant(_) => EventKind::$variant,)+
                }
            }
        }

        $(
            impl From<$variant> for Payload {
                fn from(p: $variant) -> Payload {
                    Payload::$variant(p)
                }
            }
        )+
    };
}

define_kinds! {
    RunStarted = 1, "run_started";
    RunFinished = 2, "run_finished";
    QuestionSampled = 3, "question_sampled";
    EpisodeStarted = 4, "episode_started";
    TurnGenerated = 5, "turn_generated";
    ToolCalled = 6, "tool_called";
    WebExchange = 7, "web_exchange";
    PageSegmentRead = 8, "page_segment_read";
    ToolResult = 9, "tool_result";
    EpisodeFinished = 10, "episode_finished";
    BehaviourTagged = 11, "behaviour_tagged";
    GradientUpdate = 12, "gradient_update";
    CheckpointSaved = 13, "checkpoint_saved";
    EvalResult = 14, "eval_result";
    SnapshotCommitted = 15, "snapshot_committed";
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Payload {
    /// The episode this event belongs to, for the store's episode index.
    pub fn episode_id(&self) -> Option<EpisodeId> {
        match self {
            Payload::EpisodeStarted(p) => Some(p.episode_id),
            Payload::TurnGenerated(p) => Some(p.episode_id),
            Payload::ToolCalled(p) => Some(p.episode_id),
            Payload::WebExchange(p) => p.episode_id,
            Payload::PageSegmentRead(p) => Some(p.episode_id),
            Payload::ToolResult(p) => Some(p.episode_id),
            Payload::EpisodeFinished(p) => Some(p.episode_id),
            Payload::BehaviourTagged(p) => Some(p.episode_id),
            Payload::RunStarted(_)
            | Payload::RunFinished(_)
            | Payload::QuestionSampled(_)
            | Payload::GradientUpdate(_)
            | Payload::CheckpointSaved(_)
            | Payload::EvalResult(_)
            | Payload::SnapshotCommitted(_) => None,
        }
    }

    /// Every blob this event refers to, so `verify` can check they exist and
    /// `stats` can measure deduplication.
    pub fn blob_refs(&self) -> Vec<BlobRef> {
        match self {
            Payload::TurnGenerated(p) => p.token_ids.iter().chain(p.logprobs.iter()).copied().collect(),
            Payload::WebExchange(p) => p.body.iter().copied().collect(),
            _ => Vec::new(),
        }
    }
}

/// An event as appended: which run, when, and what.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Event {
    /// The run the event belongs to.
    pub run: RunId,
    /// When it happened, from the injected clock.
    pub ts: Timestamp,
    /// What happened.
    #[serde(flatten)]
    pub payload: Payload,
}

impl Event {
    /// Builds an event.
    pub fn new(run: RunId, ts: Timestamp, payload: impl Into<Payload>) -> Event {
        Event {
            run,
            ts,
            payload: payload.into(),
        }
    }

    /// The payload's kind.
    pub fn kind(&self) -> EventKind {
        self.payload.kind()
    }
}

/// An event as stored: with the sequence number the log assigned.
#[derive(Debug, Clone, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct Record {
    /// Position in the log, dense from 1.
    pub seq: Seq,
    /// The event.
    #[serde(flatten)]
    pub event: Event,
}

pub mod fixtures;

#[cfg(test)]
mod tests;
