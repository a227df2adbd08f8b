//! Recorded episodes read back from the log, and the training sequences
//! rebuilt from them: the prompt's ids, each turn's *sampled* ids (never
//! re-tokenised text), and the [`continuation`] ids of each tool response,
//! exactly as the candle policy built its context while sampling. GRPO
//! trains on these, so a resumed run and an uninterrupted one see the
//! same numbers; the supervised warm start uses the same sequences, with
//! the turn text tokenised where a policy recorded no ids (the scripted
//! researcher).

use std::collections::BTreeMap;

use fathom_core::event::{EndReason, TurnGenerated};
use fathom_core::protocol::{self, Protocol};
use fathom_core::{EpisodeId, Payload, QuestionId, Record, RunId};
use fathom_model::ChatTokenizer;
use fathom_store::{LogRead, Store};

use crate::candle_policy::continuation;
use crate::grpo::Sequence;
use crate::rollout::RolloutConfig;

/// One assistant turn as recorded.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedTurn {
    /// The text.
    pub text: String,
    /// The sampled ids, when the policy recorded them.
    pub ids: Option<Vec<u32>>,
    /// Their sampling log-probs.
    pub logprobs: Option<Vec<f32>>,
    /// The tool response the policy saw after this turn.
    pub tool_text: Option<String>,
}

/// How a recorded episode ended.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RecordedEnd {
    /// Its reward.
    pub reward: f64,
    /// Token F1 of the answer.
    pub f1: f64,
    /// Exact match.
    pub em: f64,
    /// Why it ended.
    pub ended_by: EndReason,
}

/// A recorded episode.
#[derive(Debug, Clone, PartialEq)]
pub struct RecordedEpisode {
    /// The episode.
    pub episode_id: EpisodeId,
    /// Its run.
    pub run: RunId,
    /// Optimizer updates the policy's weights had seen.
    pub policy_version: u64,
    /// The episode this one re-ran, for a replay.
    pub replay_of: Option<EpisodeId>,
    /// Wall time, when it finished.
    pub duration_ns: u64,
    /// Training step.
    pub step: u64,
    /// GRPO group.
    pub group_id: u32,
    /// Index in the group.
    pub group_index: u32,
    /// The question's id.
    pub question_id: QuestionId,
    /// Sampling seed.
    pub seed: u64,
    /// Turns, in order.
    pub turns: Vec<RecordedTurn>,
    /// Its end, unless it never finished.
    pub end: Option<RecordedEnd>,
}

/// Why a recorded episode cannot be read or used.
#[derive(Debug, thiserror::Error)]
pub enum RecordedError {
    /// The log failed.
    #[error(transparent)]
    Store(#[from] fathom_store::Error),
    /// The episode's events are not what training needs.
    #[error("episode {episode}: {message}")]
    Unusable {
        /// The episode.
        episode: EpisodeId,
        /// What is missing.
        message: String,
    },
    /// The tokenizer failed.
    #[error(transparent)]
    Model(#[from] fathom_model::ModelError),
}

fn decode_u32(bytes: &[u8]) -> Vec<u32> {
    bytes
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn decode_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect()
}

fn blob(
    store: &dyn LogRead,
    episode: EpisodeId,
    r: &Option<fathom_core::BlobRef>,
) -> Result<Option<Vec<u8>>, RecordedError> {
    match r {
        None => Ok(None),
        Some(r) => match store.blob(&r.digest)? {
            Some(b) => Ok(Some(b)),
            None => Err(RecordedError::Unusable {
                episode,
                message: format!("blob {} is missing from the log", r.digest.short()),
            }),
        },
    }
}

fn turn_of(store: &dyn LogRead, episode: EpisodeId, t: &TurnGenerated) -> Result<RecordedTurn, RecordedError> {
    Ok(RecordedTurn {
        text: t.text.clone(),
        ids: blob(store, episode, &t.token_ids)?.map(|b| decode_u32(&b)),
        logprobs: blob(store, episode, &t.logprobs)?.map(|b| decode_f32(&b)),
        tool_text: None,
    })
}

/// Reads one episode's events. `None` when the log has no start for it.
pub fn read_episode(store: &Store, episode: EpisodeId) -> Result<Option<RecordedEpisode>, RecordedError> {
    let records: Vec<Record> = store.episode_events(episode).collect::<Result<_, _>>()?;
    episode_of(store, episode, &records)
}

/// An episode from its events already read (`Store::episode_events`), with
/// token ids and log-probs from the log's blobs.
pub fn episode_of(
    store: &dyn LogRead,
    episode: EpisodeId,
    records: &[Record],
) -> Result<Option<RecordedEpisode>, RecordedError> {
    let mut out: Option<RecordedEpisode> = None;
    let mut turns: BTreeMap<u32, RecordedTurn> = BTreeMap::new();
    for record in records {
        match &record.event.payload {
            Payload::EpisodeStarted(p) if p.episode_id == episode => {
                out = Some(RecordedEpisode {
                    episode_id: episode,
                    run: record.event.run,
                    policy_version: p.policy_version,
                    replay_of: p.replay_of,
                    duration_ns: 0,
                    step: p.step,
                    group_id: p.group_id,
                    group_index: p.group_index,
                    question_id: p.question_id.clone(),
                    seed: p.seed,
                    turns: Vec::new(),
                    end: None,
                });
            }
            Payload::TurnGenerated(p) if p.episode_id == episode => {
                turns.insert(p.turn, turn_of(store, episode, p)?);
            }
            Payload::ToolResult(p) if p.episode_id == episode => {
                if let Some(t) = turns.get_mut(&p.turn) {
                    t.tool_text = Some(p.text.clone());
                }
            }
            Payload::EpisodeFinished(p) if p.episode_id == episode => {
                if let Some(e) = out.as_mut() {
                    e.duration_ns = p.duration_ns;
                    e.end = Some(RecordedEnd {
                        reward: p.reward,
                        f1: p.f1,
                        em: p.em,
                        ended_by: p.ended_by,
                    });
                }
            }
            _ => {}
        }
    }
    if let Some(e) = out.as_mut() {
        e.turns = turns.into_values().collect();
    }
    Ok(out)
}

/// The ids of an episode's prompt: the system turn and the question, and
/// the turn prefix, rendered and tokenised as the candle policy does.
pub fn prompt_ids(
    tokenizer: &ChatTokenizer,
    rollout: &RolloutConfig,
    question: &str,
) -> Result<Vec<u32>, RecordedError> {
    let messages = protocol::opening(rollout.prompt, &rollout.today, question);
    Ok(tokenizer.encode(&protocol::render_prompt(&messages, rollout.protocol))?)
}

/// How turns without sampled ids are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TurnIds {
    /// Every turn must carry its sampled ids and log-probs (GRPO).
    Sampled,
    /// Turns without ids are tokenised from their text, log-probs 0
    /// (behaviour cloning of the scripted researcher).
    TextAllowed,
}

/// The training sequence of `episode` with `advantage`, recorded under
/// `protocol` (whose turn prefix ends `prompt` and each continuation; a
/// turn's text begins with it, its sampled ids do not).
pub fn sequence(
    tokenizer: &ChatTokenizer,
    prompt: &[u32],
    episode: &RecordedEpisode,
    advantage: f64,
    ids: TurnIds,
    protocol: Protocol,
) -> Result<Sequence, RecordedError> {
    let unusable = |message: String| RecordedError::Unusable {
        episode: episode.episode_id,
        message,
    };
    let mut seq = Sequence {
        ids: prompt.to_vec(),
        generated: vec![false; prompt.len()],
        old_logprobs: vec![0.0; prompt.len()],
        ref_logprobs: None,
        advantage,
    };
    for (i, turn) in episode.turns.iter().enumerate() {
        let (tids, lps) = match (&turn.ids, &turn.logprobs, ids) {
            (Some(t), Some(l), _) if t.len() == l.len() => (t.clone(), l.clone()),
            (Some(t), _, TurnIds::TextAllowed) => (t.clone(), vec![0.0; t.len()]),
            (Some(_), _, TurnIds::Sampled) => {
                return Err(unusable(format!(
                    "turn {i} has token ids but no matching log-probs; GRPO needs both"
                )));
            }
            (None, _, TurnIds::TextAllowed) => {
                // The prefix is prompt (it ends the context already).
                let text = turn.text.strip_prefix(protocol.turn_prefix()).unwrap_or(&turn.text);
                let t = tokenizer.encode(text)?;
                let n = t.len();
                (t, vec![0.0; n])
            }
            (None, _, TurnIds::Sampled) => {
                return Err(unusable(format!(
                    "turn {i} has no sampled token ids; GRPO trains on sampled ids, so the policy must record them (the candle policy does)"
                )));
            }
        };
        let ended = tids.last().is_some_and(|id| tokenizer.end_ids().contains(id));
        seq.generated.extend(std::iter::repeat_n(true, tids.len()));
        seq.old_logprobs.extend(lps);
        seq.ids.extend(tids);
        if let Some(text) = &turn.tool_text {
            let cont = continuation(tokenizer, ended, text, protocol)?;
            seq.generated.extend(std::iter::repeat_n(false, cont.len()));
            seq.old_logprobs.extend(std::iter::repeat_n(0.0, cont.len()));
            seq.ids.extend(cont);
        }
    }
    Ok(seq)
}
