//! A seeded synthetic training run: whole GRPO steps of DeepResearcher-shaped
//! episodes, event for event as the trainer writes them (questions, episode
//! starts, turns, tool calls, web exchanges, page reads, tool results,
//! behaviours, episode ends, gradient updates, checkpoints, evaluations).
//!
//! Used by `fathom log load --episodes N` to make realistic logs for the SQL
//! benchmark and the snapshot crash test. Metrics follow a learning curve
//! (format failures fall, F1 and behaviour rates rise with the step) so the
//! cookbook queries have something to find. Page bodies come from a small
//! pool stored once, as GRPO groups fetch the same pages.

use fathom_core::event::{
    Behaviour, BehaviourTagged, CheckpointSaved, EndReason, EpisodeFinished, EpisodeStarted, EvalResult, FinishReason,
    GradientUpdate, PageSegmentRead, QuestionSampled, ToolCalled, ToolResult, TurnGenerated, WebExchange, WebKind,
    WebSource,
};
use fathom_core::{
    BlobRef, CheckpointId, Digest, EpisodeId, Event, QuestionId, RequestId, RunId, SeededRng, Timestamp,
};

const WORDS: &[&str] = &[
    "river",
    "capital",
    "founded",
    "born",
    "city",
    "album",
    "film",
    "director",
    "university",
    "population",
    "century",
    "king",
    "war",
    "island",
    "company",
    "river",
    "museum",
    "railway",
    "novel",
    "author",
    "team",
    "season",
    "bridge",
    "election",
    "mountain",
    "village",
    "district",
    "church",
    "treaty",
    "language",
    "species",
    "record",
    "award",
];

/// The paper's seven data sources, with their hop counts.
const SOURCES: &[(&str, u32)] = &[
    ("nq", 1),
    ("triviaqa", 1),
    ("popqa", 1),
    ("hotpotqa", 2),
    ("2wiki", 2),
    ("musique", 3),
    ("bamboogle", 2),
];

/// Shape of the synthetic run.
#[derive(Debug, Clone)]
pub struct TrainingSpec {
    /// Questions per step.
    pub questions_per_step: u32,
    /// Rollouts per question.
    pub group_size: u32,
    /// Steps the learning curve spans (metrics improve towards it).
    pub horizon_steps: u64,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        TrainingSpec {
            questions_per_step: 16,
            group_size: 8,
            horizon_steps: 800,
        }
    }
}

/// Page bodies the run's fetches return (store them, then pass their refs
/// to [`TrainingLoad::new`]).
pub fn page_pool(seed: u64) -> Vec<Vec<u8>> {
    let mut rng = SeededRng::new(seed ^ 0x9a9e);
    (0..32)
        .map(|i| {
            let mut s = format!("<html><head><title>Page {i}</title></head><body><main>");
            let len = 4_000 + rng.below(12_000) as usize;
            while s.len() < len {
                s.push_str("<p>");
                prose(&mut rng, 400, &mut s);
                s.push_str("</p>");
            }
            s.push_str("</main></body></html>");
            s.into_bytes()
        })
        .collect()
}

fn prose(rng: &mut SeededRng, bytes: usize, out: &mut String) {
    let start = out.len();
    while out.len() - start < bytes {
        out.push_str(rng.pick(WORDS));
        out.push(if rng.below(9) == 0 { '.' } else { ' ' });
        if rng.below(30) == 0 {
            out.push_str(&format!(" {} ", 1700 + rng.below(320)));
        }
    }
}

/// Stamps an event 1 to 5 ms after the previous one.
fn ev(run: RunId, clock: &mut i64, payload: impl Into<fathom_core::Payload>) -> Event {
    *clock += 1_000_000 + (clock.unsigned_abs() % 3_999_983) as i64;
    Event::new(run, Timestamp(*clock), payload)
}

/// The generator: call [`TrainingLoad::step`] for each step's events.
#[derive(Debug)]
pub struct TrainingLoad {
    rng: SeededRng,
    spec: TrainingSpec,
    run: RunId,
    pages: Vec<BlobRef>,
    next_episode: u64,
    next_request: u64,
    step: u64,
    cursor: u64,
    clock: i64,
}

impl TrainingLoad {
    /// A run whose every event is fixed by `seed`; episode and request ids
    /// start after `first_episode` and `first_request`.
    pub fn new(seed: u64, run: RunId, spec: TrainingSpec, pages: Vec<BlobRef>, first_ids: (u64, u64)) -> Self {
        TrainingLoad {
            rng: SeededRng::new(seed),
            spec,
            run,
            pages,
            next_episode: first_ids.0,
            next_request: first_ids.1,
            step: 0,
            cursor: 0,
            clock: 1_795_262_400_000_000_000,
        }
    }

    /// The highest episode and request ids handed out so far.
    pub fn last_ids(&self) -> (u64, u64) {
        (self.next_episode, self.next_request)
    }

    /// Episodes per step.
    pub fn episodes_per_step(&self) -> u64 {
        u64::from(self.spec.questions_per_step) * u64::from(self.spec.group_size)
    }

    fn progress(&self) -> f64 {
        (self.step as f64 / self.spec.horizon_steps.max(1) as f64).min(1.0)
    }

    /// The events of the next training step, in log order.
    pub fn step(&mut self) -> Vec<Event> {
        self.step += 1;
        let step = self.step;
        let mut out = Vec::with_capacity(self.episodes_per_step() as usize * 60);
        for g in 0..self.spec.questions_per_step {
            let (source, hops) = *self.rng.choose(SOURCES);
            let hops = if source == "musique" {
                2 + self.rng.below(3) as u32
            } else {
                hops
            };
            let qid = format!("{source}-{}", self.rng.below(1_000_000));
            let mut question = String::from("Which ");
            prose(&mut self.rng, 60, &mut question);
            question.push('?');
            let truth = format!("{} {}", self.rng.pick(WORDS), 1700 + self.rng.below(320));
            self.cursor += 1;
            let e = ev(
                self.run,
                &mut self.clock,
                QuestionSampled {
                    step,
                    question_id: QuestionId(qid.clone()),
                    data_source: source.into(),
                    question,
                    ground_truths: vec![truth.clone()],
                    hops: Some(hops),
                    data_cursor: self.cursor,
                },
            );
            out.push(e);
            for k in 0..self.spec.group_size {
                self.episode(&mut out, step, g, k, &qid, hops, &truth);
            }
        }
        let p = self.progress();
        let episodes = self.episodes_per_step() as u32;
        let e = ev(
            self.run,
            &mut self.clock,
            GradientUpdate {
                step,
                policy_version: step,
                loss: 0.2 - 0.15 * p + 0.02 * self.rng.next_f64(),
                pg_loss: 0.18 - 0.14 * p + 0.02 * self.rng.next_f64(),
                kl: 0.002 * p + 0.0005 * self.rng.next_f64(),
                entropy: 1.2 - 0.5 * p + 0.05 * self.rng.next_f64(),
                clip_frac: 0.05 + 0.02 * self.rng.next_f64(),
                grad_norm: 0.5 + self.rng.next_f64(),
                lr: 1e-6,
                tokens: 200_000 + self.rng.below(50_000),
                episodes,
                micro_batches: 16,
                duration_ns: 30_000_000_000 + self.rng.below(5_000_000_000),
            },
        );
        out.push(e);
        if step.is_multiple_of(50) {
            let e = ev(
                self.run,
                &mut self.clock,
                CheckpointSaved {
                    checkpoint_id: CheckpointId(step / 50),
                    step,
                    policy_version: step,
                    path: format!("checkpoints/{}/step-{step:06}", self.run),
                    weights_digest: Digest([step as u8; 32]),
                    optimizer_digest: Digest([(step >> 8) as u8; 32]),
                    rng_state: vec![step, self.cursor],
                    data_cursor: self.cursor,
                    bytes: 15_000_000_000,
                    metric: Some(0.3 + 0.3 * p),
                },
            );
            out.push(e);
            for (source, _) in SOURCES {
                for metric in ["f1", "em"] {
                    let base = if metric == "f1" { 0.35 } else { 0.25 };
                    let e = ev(
                        self.run,
                        &mut self.clock,
                        EvalResult {
                            step,
                            benchmark: "deepresearcher-dev".into(),
                            data_source: (*source).into(),
                            metric: metric.into(),
                            value: base + 0.2 * p + 0.05 * self.rng.next_f64(),
                            n: 512,
                        },
                    );
                    out.push(e);
                }
            }
        }
        out
    }

    /// Appends a model turn; returns its tokens.
    fn turn(&mut self, out: &mut Vec<Event>, episode_id: EpisodeId, turn: u32, text: String) -> u64 {
        let n_tokens = (text.len() / 4) as u32;
        let latency_ns = 200_000_000 + self.rng.below(800_000_000);
        out.push(ev(
            self.run,
            &mut self.clock,
            TurnGenerated {
                episode_id,
                turn,
                text,
                token_ids: None,
                logprobs: None,
                n_context_tokens: 420 + turn * 700,
                n_tokens,
                latency_ns,
                finish: FinishReason::Stop,
            },
        ));
        u64::from(n_tokens)
    }

    #[allow(clippy::too_many_arguments)]
    fn episode(&mut self, out: &mut Vec<Event>, step: u64, group: u32, index: u32, qid: &str, hops: u32, truth: &str) {
        let p = self.progress();
        self.next_episode += 1;
        let episode_id = EpisodeId(self.next_episode);
        let started = self.clock;
        let e = ev(
            self.run,
            &mut self.clock,
            EpisodeStarted {
                episode_id,
                step,
                group_id: group,
                group_index: index,
                question_id: QuestionId(qid.into()),
                policy_version: step - 1,
                seed: self.rng.next_u64(),
                replay_of: None,
                n_prompt_tokens: 420,
            },
        );
        out.push(e);
        let calls = (2 * hops + self.rng.below(4) as u32).min(9);
        let format_fail = self.rng.next_f64() < 0.25 * (1.0 - p) + 0.02;
        let planning = self.rng.next_f64() < 0.2 + 0.5 * p;
        let (mut searches, mut browses, mut tokens) = (0u32, 0u32, 0u64);
        let mut last_turn = 0;
        for turn in 0..calls {
            last_turn = turn;
            let search = turn == 0 || self.rng.below(2) == 0;
            let mut text = String::from("<think>");
            if turn == 0 && planning {
                text.push_str("First I will find the ");
            }
            let len = 120 + self.rng.below(250) as usize;
            prose(&mut self.rng, len, &mut text);
            // A search runs its queries (2 to 4), a browse fetches its
            // pages (2 to 6): about 20 web requests an episode, as in the paper's runs.
            let n = if search {
                2 + self.rng.below(3) as usize
            } else {
                2 + self.rng.below(5) as usize
            };
            let items: Vec<String> = (0..n)
                .map(|_| {
                    if search {
                        format!("{} {}", self.rng.pick(WORDS), self.rng.pick(WORDS))
                    } else {
                        format!(
                            "http://127.0.0.1:8931/wiki/{}_{}",
                            self.rng.pick(WORDS),
                            self.rng.below(500)
                        )
                    }
                })
                .collect();
            let (tool, key) = if search {
                ("web_search", "query")
            } else {
                ("browse_webpage", "url_list")
            };
            let args = serde_json::json!({ key: items }).to_string();
            text.push_str(&format!(
                "</think>\n<tool_call>{{\"name\": \"{tool}\", \"arguments\": {args}}}</tool_call>"
            ));
            tokens += self.turn(out, episode_id, turn, text);
            let e = ev(
                self.run,
                &mut self.clock,
                ToolCalled {
                    episode_id,
                    turn,
                    tool: tool.into(),
                    arguments_json: args,
                },
            );
            out.push(e);
            if search {
                searches += 1;
            } else {
                browses += 1;
            }
            for item in &items {
                self.next_request += 1;
                let request_id = RequestId(self.next_request);
                let page = *self.rng.choose(&self.pages);
                let failed = self.rng.below(40) == 0;
                let e = ev(
                    self.run,
                    &mut self.clock,
                    WebExchange {
                        request_id,
                        episode_id: Some(episode_id),
                        turn: Some(turn),
                        request_kind: if search { WebKind::Search } else { WebKind::Fetch },
                        target: item.clone(),
                        canonical: if search {
                            format!("search serper {item}")
                        } else {
                            format!("GET {item}")
                        },
                        backend: if search { "serper".into() } else { "fetch".into() },
                        status: if failed { 503 } else { 200 },
                        headers: Vec::new(),
                        body: (!failed).then_some(page),
                        body_truncated: false,
                        latency_ns: 5_000_000 + self.rng.below(400_000_000),
                        source: WebSource::Sandbox,
                        attempt: 0,
                        error: None,
                    },
                );
                out.push(e);
                if !search && !failed {
                    let n_segments = 1 + self.rng.below(4) as u32;
                    for segment in 0..n_segments {
                        let mut notes = String::new();
                        prose(&mut self.rng, 60, &mut notes);
                        let e = ev(
                            self.run,
                            &mut self.clock,
                            PageSegmentRead {
                                episode_id,
                                turn,
                                request_id,
                                url: item.clone(),
                                segment,
                                n_segments,
                                notes,
                                read_next: segment + 1 < n_segments,
                                n_tokens: 40,
                            },
                        );
                        out.push(e);
                    }
                }
            }
            let mut text = String::from("<tool_response>\n");
            let len = 300 + self.rng.below(600) as usize;
            prose(&mut self.rng, len, &mut text);
            text.push_str("\n</tool_response>");
            let e = ev(
                self.run,
                &mut self.clock,
                ToolResult {
                    episode_id,
                    turn,
                    tool: tool.into(),
                    n_tokens: (text.len() / 4) as u32,
                    text,
                    n_results: n as u32,
                    ok: true,
                    error: None,
                    truncated: false,
                },
            );
            out.push(e);
        }
        let turn = if calls == 0 { 0 } else { last_turn + 1 };
        let correct = self.rng.next_f64() < 0.3 + 0.35 * p - 0.05 * f64::from(hops);
        let answer = if correct {
            truth.to_string()
        } else {
            format!("{} {}", self.rng.pick(WORDS), 1700 + self.rng.below(320))
        };
        let mut text = String::from("<think>");
        prose(&mut self.rng, 100, &mut text);
        if format_fail {
            text.push_str(&format!("<answer>{answer}"));
        } else {
            text.push_str(&format!("</think>\n<answer>{answer}</answer>"));
        }
        tokens += self.turn(out, episode_id, turn, text);
        let f1 = if correct {
            1.0
        } else if self.rng.below(3) == 0 {
            0.5
        } else {
            0.0
        };
        let mut tagged = Vec::new();
        if planning {
            tagged.push((Behaviour::Planning, 0));
        }
        if correct && self.rng.next_f64() < 0.1 + 0.3 * p {
            tagged.push((Behaviour::CrossValidation, turn.saturating_sub(1)));
        }
        if calls > 2 && self.rng.next_f64() < 0.15 + 0.2 * p {
            tagged.push((Behaviour::SelfReflection, 1));
        }
        if !correct && self.rng.below(20) == 0 {
            tagged.push((Behaviour::Honesty, turn));
        }
        for (behaviour, turn) in tagged {
            let e = ev(
                self.run,
                &mut self.clock,
                BehaviourTagged {
                    episode_id,
                    behaviour,
                    turn,
                    span_start: 7,
                    span_end: 30,
                    evidence: "First I will find the".into(),
                    detector_version: 1,
                },
            );
            out.push(e);
        }
        let duration_ns = (self.clock - started) as u64;
        let e = ev(
            self.run,
            &mut self.clock,
            EpisodeFinished {
                episode_id,
                answer: (!format_fail).then_some(answer),
                reward: if format_fail { -1.0 } else { f1 },
                f1: if format_fail { 0.0 } else { f1 },
                em: if format_fail || !correct { 0.0 } else { 1.0 },
                format_ok: !format_fail,
                format_error: format_fail.then(|| "unclosed <answer>".to_string()),
                n_turns: turn + 1,
                n_tool_calls: calls,
                n_searches: searches,
                n_browses: browses,
                n_tokens: tokens,
                ended_by: if format_fail {
                    EndReason::FormatError
                } else {
                    EndReason::Answer
                },
                duration_ns,
            },
        );
        out.push(e);
    }
}
