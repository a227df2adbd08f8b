//! Trajectories as chat-format JSON lines for supervised fine-tuning: one
//! object per finished episode with `messages` (the system turn the run
//! used, question, each assistant turn and each tool response exactly as
//! the policy saw it, in Qwen2.5's roles: tool responses are `user` turns
//! wrapped in `<tool_response>`) and the episode's score and metadata as
//! flat fields (`protocol` among them: under version 2 each assistant turn
//! begins with the `<think>` its prompt ended with, as the conversation
//! holds it). Hugging Face `datasets.load_dataset("json", …)` reads it.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;

use fathom_core::event::{EndReason, QuestionSampled, RunStarted};
use fathom_core::protocol::{self, PromptStyle, Protocol};
use fathom_core::{EpisodeId, Payload, QuestionId, RunId};
use fathom_store::Store;

use crate::harness::JobError;

/// Which episodes to write.
#[derive(Debug, Clone, Copy, Default)]
pub struct JsonlFilter {
    /// Only episodes with at least this reward.
    pub min_reward: Option<f64>,
}

#[derive(Default)]
struct Open {
    step: u64,
    group_id: u32,
    group_index: u32,
    question_id: Option<QuestionId>,
    seed: u64,
    policy_version: u64,
    replay_of: Option<EpisodeId>,
    turns: BTreeMap<u32, (String, Option<String>)>,
}

/// The system turn a run's episodes opened with, and the turn rules they
/// followed: from its configuration (a training run's `today`, `protocol`
/// and `config.rollout.prompt`; an evaluation's `rollout`), else what
/// older logs used (the rollout default date, the paper's prompt, version 1).
fn opening_of(started: &RunStarted) -> (String, Protocol) {
    let config: serde_json::Value = serde_json::from_str(&started.config_json).unwrap_or_default();
    let rollout = config.get("rollout");
    let today = config
        .get("today")
        .or_else(|| rollout.and_then(|r| r.get("today")))
        .and_then(|v| v.as_str())
        .map_or_else(|| crate::rollout::RolloutConfig::default().today, str::to_string);
    let style: PromptStyle = rollout
        .or_else(|| config.get("config").and_then(|c| c.get("rollout")))
        .and_then(|r| r.get("prompt"))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or_default();
    let rules: Protocol = config
        .get("protocol")
        .or_else(|| rollout.and_then(|r| r.get("protocol")))
        .and_then(|v| serde_json::from_value(v.clone()).ok())
        .unwrap_or(Protocol::UNRECORDED);
    (protocol::system_text(style, &today), rules)
}

/// Writes the finished (not aborted) episodes of `runs` as JSON lines;
/// returns how many were written.
pub fn write_jsonl(store: &Store, runs: &[RunId], filter: JsonlFilter, out: &mut impl Write) -> Result<u64, JobError> {
    let mut written = 0;
    for &run in runs {
        let mut started: Option<RunStarted> = None;
        let mut questions: HashMap<QuestionId, QuestionSampled> = HashMap::new();
        let mut open: HashMap<EpisodeId, Open> = HashMap::new();
        for record in store.run_events(run) {
            match record?.event.payload {
                Payload::RunStarted(p) if started.is_none() => started = Some(p),
                Payload::QuestionSampled(q) => {
                    questions.insert(q.question_id.clone(), q);
                }
                Payload::EpisodeStarted(p) => {
                    open.insert(
                        p.episode_id,
                        Open {
                            step: p.step,
                            group_id: p.group_id,
                            group_index: p.group_index,
                            question_id: Some(p.question_id),
                            seed: p.seed,
                            policy_version: p.policy_version,
                            replay_of: p.replay_of,
                            turns: BTreeMap::new(),
                        },
                    );
                }
                Payload::TurnGenerated(t) => {
                    if let Some(e) = open.get_mut(&t.episode_id) {
                        e.turns.entry(t.turn).or_default().0 = t.text;
                    }
                }
                Payload::ToolResult(t) => {
                    if let Some(e) = open.get_mut(&t.episode_id) {
                        e.turns.entry(t.turn).or_default().1 = Some(t.text);
                    }
                }
                Payload::EpisodeFinished(f) => {
                    let Some(e) = open.remove(&f.episode_id) else {
                        continue;
                    };
                    if f.ended_by == EndReason::Aborted || filter.min_reward.is_some_and(|m| f.reward < m) {
                        continue;
                    }
                    let Some(start) = &started else { continue };
                    let question = e.question_id.as_ref().and_then(|q| questions.get(q));
                    let question_text = question.map(|q| q.question.clone()).unwrap_or_default();
                    let (system, rules) = opening_of(start);
                    let mut messages = vec![
                        serde_json::json!({"role": "system", "content": system}),
                        serde_json::json!({"role": "user", "content": question_text}),
                    ];
                    for (text, tool) in e.turns.into_values() {
                        messages.push(serde_json::json!({"role": "assistant", "content": text}));
                        if let Some(tool) = tool {
                            messages.push(serde_json::json!({"role": "user", "content": tool}));
                        }
                    }
                    let line = serde_json::json!({
                        "messages": messages,
                        "question": question_text,
                        "ground_truths": question.map(|q| q.ground_truths.clone()).unwrap_or_default(),
                        "data_source": question.map(|q| q.data_source.clone()).unwrap_or_default(),
                        "hops": question.and_then(|q| q.hops),
                        "answer": f.answer,
                        "reward": f.reward,
                        "f1": f.f1,
                        "em": f.em,
                        "format_ok": f.format_ok,
                        "protocol": rules,
                        "ended_by": f.ended_by.to_string(),
                        "n_turns": f.n_turns,
                        "n_tool_calls": f.n_tool_calls,
                        "run_id": run.to_string(),
                        "run_kind": start.run_kind.to_string(),
                        "policy": start.policy,
                        "episode_id": f.episode_id.to_string(),
                        "replay_of": e.replay_of.map(|r| r.to_string()),
                        "step": e.step,
                        "group_id": e.group_id,
                        "group_index": e.group_index,
                        "seed": e.seed.to_string(),
                        "policy_version": e.policy_version,
                    });
                    serde_json::to_writer(&mut *out, &line)
                        .map_err(|e| JobError::Invalid(format!("writing JSON: {e}")))?;
                    out.write_all(b"\n")
                        .map_err(|e| JobError::Invalid(format!("writing the export: {e}")))?;
                    written += 1;
                }
                _ => {}
            }
        }
    }
    Ok(written)
}
