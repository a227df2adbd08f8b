//! The rollout engine: runs an episode turn by turn (policy → parser →
//! tool → policy …), scores it, tags its behaviours, and records every
//! step as an event.
//!
//! Budgets: at most `max_turns` turns (so `max_turns - 1` tool calls and an
//! answer) and `max_turn_tokens` generated tokens per turn; tool responses
//! are capped by [`ToolLimits`]. An episode's events are appended in one
//! batch when it ends (the gateway records web exchanges as they happen);
//! the append is relaxed unless `durable_episodes` is set, and callers
//! flush once per step or evaluation.

use std::sync::Arc;

use fathom_core::behaviour::{self, Step, Trajectory};
use fathom_core::event::{
    BehaviourTagged, EndReason, EpisodeFinished, EpisodeStarted, FinishReason, PageSegmentRead, ToolCalled, ToolResult,
    TurnGenerated,
};
use fathom_core::protocol::{self, Action, Message, PromptStyle, Protocol, ToolCall};
use fathom_core::reward::{self, Score};
use fathom_core::{Clock, EpisodeId, Event, Payload, QuestionId, RequestId, RunId};
use fathom_replay::{Context, Gateway};
use fathom_store::{Durability, Store};

use crate::policy::{Policy, PolicyInput};
use crate::tools::{Reader, ToolLimits, ToolRunner};

/// Episode budgets.
#[derive(Debug, Clone)]
pub struct RolloutConfig {
    /// Turns per episode at most.
    pub max_turns: u32,
    /// Generated tokens per turn at most.
    pub max_turn_tokens: u32,
    /// Tool limits.
    pub tools: ToolLimits,
    /// Today's date for the system prompt (fixed per run, so replays match).
    pub today: String,
    /// The turn rules (recorded with the run; older logs ran under version 1).
    pub protocol: Protocol,
    /// The system prompt.
    pub prompt: PromptStyle,
    /// Flush at the end of every episode. Off by default: callers flush
    /// once per training step or evaluation (`Store::flush`), and a crash
    /// loses at most the episodes of the relaxed window.
    pub durable_episodes: bool,
}

impl Default for RolloutConfig {
    fn default() -> Self {
        RolloutConfig {
            max_turns: protocol::MAX_TURNS,
            max_turn_tokens: protocol::MAX_TURN_TOKENS,
            tools: ToolLimits::default(),
            today: "2026-01-01".into(),
            protocol: Protocol::CURRENT,
            prompt: PromptStyle::Paper,
            durable_episodes: false,
        }
    }
}

impl RolloutConfig {
    /// The episode budgets and rules an evaluation or replay run records in
    /// its configuration (`rollout`).
    pub fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "max_turns": self.max_turns,
            "max_turn_tokens": self.max_turn_tokens,
            "today": self.today,
            "max_tool_chars": self.tools.max_response_chars,
            "protocol": self.protocol,
            "prompt": self.prompt,
        })
    }

    /// What [`RolloutConfig::to_json`] recorded in a run's configuration
    /// (its `rollout`, or older logs' top-level fields); what is absent
    /// takes the value older logs used (version 1, the paper's prompt).
    pub fn from_json(config: &serde_json::Value) -> RolloutConfig {
        let r = config.get("rollout").unwrap_or(config);
        let d = RolloutConfig::default();
        let num = |k: &str| r.get(k).and_then(serde_json::Value::as_u64);
        RolloutConfig {
            max_turns: num("max_turns").map_or(d.max_turns, |v| v as u32),
            max_turn_tokens: num("max_turn_tokens").map_or(d.max_turn_tokens, |v| v as u32),
            today: r
                .get("today")
                .and_then(|v| v.as_str())
                .map_or(d.today.clone(), str::to_string),
            tools: ToolLimits {
                max_response_chars: num("max_tool_chars").map_or(d.tools.max_response_chars, |v| v as usize),
                ..d.tools
            },
            protocol: r
                .get("protocol")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or(Protocol::UNRECORDED),
            prompt: r
                .get("prompt")
                .and_then(|v| serde_json::from_value(v.clone()).ok())
                .unwrap_or_default(),
            durable_episodes: false,
        }
    }
}

/// The question an episode answers, and where it sits in training.
#[derive(Debug, Clone)]
pub struct EpisodeSpec {
    /// The data set's id.
    pub question_id: QuestionId,
    /// The question.
    pub question: String,
    /// Accepted answers.
    pub ground_truths: Vec<String>,
    /// Training step (or evaluation batch).
    pub step: u64,
    /// GRPO group.
    pub group_id: u32,
    /// Index within the group.
    pub group_index: u32,
    /// The episode's sampling seed.
    pub seed: u64,
    /// The recorded episode this one re-runs (a counterfactual replay).
    pub replay_of: Option<EpisodeId>,
}

/// What an episode came to.
#[derive(Debug, Clone)]
pub struct EpisodeOutcome {
    /// The episode.
    pub episode_id: EpisodeId,
    /// Reward, F1, EM, format verdict.
    pub score: Score,
    /// Why it ended.
    pub ended_by: EndReason,
    /// Assistant turns.
    pub n_turns: u32,
    /// Tool calls.
    pub n_tool_calls: u32,
    /// Behaviours found.
    pub behaviours: Vec<behaviour::Detection>,
    /// Where the episode's time went.
    pub timings: EpisodeTimings,
}

/// Where an episode's wall time went, in nanoseconds (from the injected
/// clock): the policy's generation, tool execution (web requests and the
/// browsing agent), scoring and behaviour detection, and appending to the
/// log (events and blobs).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EpisodeTimings {
    /// In `Policy::generate`.
    pub generate_ns: u64,
    /// Running tool calls.
    pub tools_ns: u64,
    /// Reward and behaviour detectors.
    pub reward_ns: u64,
    /// Log appends and blob writes.
    pub log_ns: u64,
}

impl EpisodeTimings {
    /// Adds `other` into `self`.
    pub fn add(&mut self, other: &EpisodeTimings) {
        self.generate_ns += other.generate_ns;
        self.tools_ns += other.tools_ns;
        self.reward_ns += other.reward_ns;
        self.log_ns += other.log_ns;
    }
}

/// Why an episode could not be run or recorded.
#[derive(Debug, thiserror::Error)]
pub enum RolloutError {
    /// The log refused an append.
    #[error(transparent)]
    Store(#[from] fathom_store::Error),
}

/// Runs episodes for one run.
#[derive(Clone)]
pub struct Rollout {
    /// Where events go; `None` runs without logging (for measuring what
    /// logging costs).
    store: Option<Arc<Store>>,
    /// Episode ids when there is no log to allocate them.
    next_episode: Arc<std::sync::atomic::AtomicU64>,
    gateway: Arc<Gateway>,
    clock: Arc<dyn Clock>,
    run: RunId,
    config: RolloutConfig,
}

impl std::fmt::Debug for Rollout {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rollout")
            .field("run", &self.run)
            .finish_non_exhaustive()
    }
}

impl Rollout {
    /// An engine recording into `store` under `run`.
    pub fn new(
        store: Arc<Store>,
        gateway: Arc<Gateway>,
        clock: Arc<dyn Clock>,
        run: RunId,
        config: RolloutConfig,
    ) -> Self {
        Rollout {
            store: Some(store),
            next_episode: Arc::default(),
            gateway,
            clock,
            run,
            config,
        }
    }

    /// An engine that records nothing (the gateway should not record
    /// either): the baseline of the logging-overhead benchmark.
    pub fn unlogged(gateway: Arc<Gateway>, clock: Arc<dyn Clock>, run: RunId, config: RolloutConfig) -> Self {
        Rollout {
            store: None,
            next_episode: Arc::default(),
            gateway,
            clock,
            run,
            config,
        }
    }

    fn append(&self, events: &[Event], durability: Durability) -> Result<(), RolloutError> {
        if let Some(store) = &self.store {
            store.append_with(events, durability)?;
        }
        Ok(())
    }

    fn put_blob(&self, bytes: &[u8]) -> Result<Option<fathom_core::BlobRef>, RolloutError> {
        match &self.store {
            Some(store) => Ok(Some(store.put_blob(bytes)?)),
            None => Ok(None),
        }
    }

    fn new_episode_id(&self) -> Result<EpisodeId, RolloutError> {
        match &self.store {
            Some(store) => Ok(store.new_episode_id()?),
            None => Ok(EpisodeId(
                self.next_episode.fetch_add(1, std::sync::atomic::Ordering::Relaxed) + 1,
            )),
        }
    }

    fn event(&self, payload: impl Into<Payload>) -> Event {
        Event::new(self.run, self.clock.now(), payload)
    }

    /// Runs one episode to its end.
    pub async fn episode(
        &self,
        policy: &mut dyn Policy,
        reader: &mut dyn Reader,
        spec: &EpisodeSpec,
    ) -> Result<EpisodeOutcome, RolloutError> {
        let started = self.clock.now();
        let mut timings = EpisodeTimings::default();
        let episode_id = self.new_episode_id()?;
        let rules = self.config.protocol;
        let mut messages = protocol::opening(self.config.prompt, &self.config.today, &spec.question);
        let n_prompt_tokens = (protocol::render_prompt(&messages, rules).len() / 4) as u32;
        // EpisodeStarted goes first, so the log reads in order (the
        // gateway records web exchanges as they happen); the rest of the
        // episode's events are appended together at its end, in one batch.
        let mut pending: Vec<Event> = Vec::with_capacity(64);
        let started_event = self.event(EpisodeStarted {
            episode_id,
            step: spec.step,
            group_id: spec.group_id,
            group_index: spec.group_index,
            question_id: spec.question_id.clone(),
            policy_version: policy.version(),
            seed: spec.seed,
            replay_of: spec.replay_of,
            n_prompt_tokens,
        });
        let t_log = self.clock.now();
        self.append(&[started_event], Durability::Relaxed)?;
        timings.log_ns += self.clock.now().nanos_since(t_log);
        let mut runner = ToolRunner::new(self.config.tools.clone());
        let mut steps: Vec<Step> = Vec::new();
        let mut model_turns: Vec<String> = Vec::new();
        let (mut n_tool_calls, mut n_searches, mut n_browses, mut n_tokens) = (0u32, 0u32, 0u32, 0u64);
        let mut ended_by = EndReason::TurnLimit;
        let mut error_note: Option<String> = None;
        for turn in 0..self.config.max_turns {
            let t0 = self.clock.now();
            let generated = policy
                .generate_async(PolicyInput {
                    question: &spec.question,
                    messages: &messages,
                    turn,
                    seed: spec.seed,
                    max_tokens: self.config.max_turn_tokens,
                    protocol: rules,
                })
                .await;
            let g = match generated {
                Ok(g) => g,
                Err(e) => {
                    ended_by = EndReason::Error;
                    error_note = Some(e.to_string());
                    break;
                }
            };
            let latency_ns = self.clock.now().nanos_since(t0);
            timings.generate_ns += latency_ns;
            n_tokens += u64::from(g.n_tokens);
            let t_log = self.clock.now();
            let token_ids = match &g.token_ids {
                Some(ids) => self.put_blob(&ids.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>())?,
                None => None,
            };
            let logprobs = match &g.logprobs {
                Some(lp) => self.put_blob(&lp.iter().flat_map(|t| t.to_le_bytes()).collect::<Vec<u8>>())?,
                None => None,
            };
            timings.log_ns += self.clock.now().nanos_since(t_log);
            let truncated = g.finish == FinishReason::Length || g.n_tokens > self.config.max_turn_tokens;
            let mut events = vec![self.event(TurnGenerated {
                episode_id,
                turn,
                text: g.text.clone(),
                token_ids,
                logprobs,
                n_context_tokens: (protocol::render_prompt(&messages, rules).len() / 4) as u32,
                n_tokens: g.n_tokens,
                latency_ns,
                finish: if truncated { FinishReason::Length } else { g.finish },
            })];
            model_turns.push(g.text.clone());
            messages.push(Message::Assistant(g.text.clone()));
            // A turn ends the episode when it is truncated, malformed or an
            // answer; otherwise it is a tool call to execute.
            let next = if truncated {
                Err(EndReason::Truncated)
            } else {
                match rules.parse_turn(&g.text).map(|p| p.action) {
                    Err(_) => Err(EndReason::FormatError),
                    Ok(Action::Answer(_)) => Err(EndReason::Answer),
                    Ok(Action::ToolCall(call)) => Ok(call),
                }
            };
            let call = match next {
                Ok(call) => call,
                Err(reason) => {
                    pending.extend(events);
                    steps.push(Step {
                        text: g.text,
                        tool_response: None,
                    });
                    ended_by = reason;
                    break;
                }
            };
            n_tool_calls += 1;
            match call {
                ToolCall::WebSearch { .. } => n_searches += 1,
                ToolCall::BrowseWebpage { .. } => n_browses += 1,
            }
            events.push(self.event(ToolCalled {
                episode_id,
                turn,
                tool: call.name().to_string(),
                arguments_json: call.arguments_json(),
            }));
            if turn + 1 == self.config.max_turns {
                // No turn is left to read the result: the budget is spent.
                pending.extend(events);
                steps.push(Step {
                    text: g.text,
                    tool_response: None,
                });
                break;
            }
            let ctx = Context {
                run: self.run,
                episode: Some(episode_id),
                turn: Some(turn),
            };
            let t_tool = self.clock.now();
            let outcome = runner.run(&self.gateway, reader, ctx, &spec.question, &call).await;
            timings.tools_ns += self.clock.now().nanos_since(t_tool);
            for r in &outcome.reads {
                events.push(self.event(PageSegmentRead {
                    episode_id,
                    turn,
                    // 0 when the gateway does not record (an unlogged run).
                    request_id: r.request_id.unwrap_or(RequestId(0)),
                    url: r.url.clone(),
                    segment: r.segment,
                    n_segments: r.n_segments,
                    notes: r.notes.clone(),
                    read_next: r.read_next,
                    n_tokens: r.n_tokens,
                }));
            }
            let wrapped = protocol::tool_response(&outcome.text);
            events.push(self.event(ToolResult {
                episode_id,
                turn,
                tool: call.name().to_string(),
                text: wrapped.clone(),
                n_results: outcome.n_results,
                ok: outcome.ok,
                error: outcome.error.clone(),
                truncated: outcome.truncated,
                n_tokens: (wrapped.len() / 4) as u32,
            }));
            pending.extend(events);
            steps.push(Step {
                text: g.text,
                tool_response: Some(outcome.text),
            });
            messages.push(Message::Tool(wrapped));
        }

        let t_reward = self.clock.now();
        let mut score = reward::score_episode(rules, &model_turns, &spec.ground_truths);
        if let Some(note) = error_note {
            score = Score::failure(note, None);
        }
        let behaviours = behaviour::detect(&Trajectory {
            steps,
            ground_truths: spec.ground_truths.clone(),
        });
        timings.reward_ns += self.clock.now().nanos_since(t_reward);
        let mut events: Vec<Event> = behaviours
            .iter()
            .map(|d| {
                self.event(BehaviourTagged {
                    episode_id,
                    behaviour: d.behaviour,
                    turn: d.turn,
                    span_start: d.span_start,
                    span_end: d.span_end,
                    evidence: d.evidence.clone(),
                    detector_version: behaviour::DETECTOR_VERSION,
                })
            })
            .collect();
        events.push(self.event(EpisodeFinished {
            episode_id,
            answer: score.answer.clone(),
            reward: score.reward,
            f1: score.f1,
            em: score.em,
            format_ok: score.format_ok,
            format_error: score.format_error.clone(),
            n_turns: model_turns.len() as u32,
            n_tool_calls,
            n_searches,
            n_browses,
            n_tokens,
            ended_by,
            duration_ns: self.clock.now().nanos_since(started),
        }));
        pending.extend(events);
        let durability = if self.config.durable_episodes {
            Durability::Durable
        } else {
            Durability::Relaxed
        };
        let t_log = self.clock.now();
        self.append(&pending, durability)?;
        timings.log_ns += self.clock.now().nanos_since(t_log);
        Ok(EpisodeOutcome {
            episode_id,
            score,
            ended_by,
            n_turns: model_turns.len() as u32,
            n_tool_calls,
            behaviours,
            timings,
        })
    }
}
