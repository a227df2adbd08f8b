//! What training, warm start and evaluation share: the questions, the
//! environment the command line supplies (the log, the web gateway, the
//! clock, a progress observer), running many episodes at once, and
//! evaluation runs.

use std::collections::BTreeMap;
use std::sync::Arc;

use fathom_core::event::{EvalResult, QuestionSampled, RunFinished, RunKind, RunStarted, RunStatus};
use fathom_core::reward::Score;
use fathom_core::{Clock, Event, QuestionId, RunId};
use fathom_replay::Gateway;
use fathom_store::{Durability, Store};

use crate::policy::Policy;
use crate::report::{EpisodeScore, Report, shortcut_free};
use crate::rollout::{EpisodeOutcome, EpisodeSpec, Rollout, RolloutConfig, RolloutError};
use crate::tools::HeuristicReader;

/// A question of a training or evaluation set.
#[derive(Debug, Clone, PartialEq)]
pub struct Question {
    /// Its id in the data set.
    pub id: QuestionId,
    /// Where it comes from (`nq`, `sandbox-2hop`, …).
    pub data_source: String,
    /// The question.
    pub text: String,
    /// Accepted answers.
    pub ground_truths: Vec<String>,
    /// Hop count, where known.
    pub hops: Option<u32>,
}

impl Question {
    /// An episode of this question.
    pub fn episode(&self, step: u64, group_id: u32, group_index: u32, seed: u64) -> EpisodeSpec {
        EpisodeSpec {
            question_id: self.id.clone(),
            question: self.text.clone(),
            ground_truths: self.ground_truths.clone(),
            step,
            group_id,
            group_index,
            seed,
            replay_of: None,
        }
    }
}

/// Progress of a long job, for a progress bar.
pub trait Observer: Send + Sync {
    /// A phase begins with `total` units of work.
    fn phase(&self, what: &str, total: u64);
    /// `done` units of the current phase are finished.
    fn progress(&self, done: u64, message: &str);
    /// A line worth showing.
    fn note(&self, line: &str);
}

/// An observer that shows nothing.
#[derive(Debug, Clone, Copy, Default)]
pub struct Quiet;

impl Observer for Quiet {
    fn phase(&self, _: &str, _: u64) {}
    fn progress(&self, _: u64, _: &str) {}
    fn note(&self, _: &str) {}
}

/// What the command line supplies.
#[derive(Clone)]
pub struct Env {
    /// The log.
    pub store: Arc<Store>,
    /// The web (recording into `store`).
    pub gateway: Arc<Gateway>,
    /// Timestamps.
    pub clock: Arc<dyn Clock>,
    /// Progress.
    pub observer: Arc<dyn Observer>,
}

impl std::fmt::Debug for Env {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Env").finish_non_exhaustive()
    }
}

/// Why a job failed.
#[derive(Debug, thiserror::Error)]
pub enum JobError {
    /// The log failed.
    #[error(transparent)]
    Store(#[from] fathom_store::Error),
    /// An episode could not be run.
    #[error(transparent)]
    Rollout(#[from] RolloutError),
    /// A recorded episode could not be read back.
    #[error(transparent)]
    Recorded(#[from] crate::recorded::RecordedError),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] fathom_model::ModelError),
    /// candle failed.
    #[error("training computation failed: {0}")]
    Candle(#[from] candle_core::Error),
    /// A checkpoint could not be written or read.
    #[error(transparent)]
    Checkpoint(#[from] crate::checkpoint::CheckpointError),
    /// The request cannot be carried out; the message says why and what to do.
    #[error("{0}")]
    Invalid(String),
}

/// Makes one policy per episode.
pub type PolicyFactory = Arc<dyn Fn() -> Box<dyn Policy> + Send + Sync>;

/// The `QuestionSampled` events of `questions` at `step`, with data cursors
/// from `first_cursor`.
pub fn sampled_events(run: RunId, clock: &dyn Clock, step: u64, questions: &[(&Question, u64)]) -> Vec<Event> {
    questions
        .iter()
        .map(|(q, cursor)| {
            Event::new(
                run,
                clock.now(),
                QuestionSampled {
                    step,
                    question_id: q.id.clone(),
                    data_source: q.data_source.clone(),
                    question: q.text.clone(),
                    ground_truths: q.ground_truths.clone(),
                    hops: q.hops,
                    data_cursor: *cursor,
                },
            )
        })
        .collect()
}

/// Runs `specs` with `concurrency` episodes at once; the outcomes come
/// back in the order of `specs`. `done` is called after each episode with
/// how many have finished and their mean reward.
pub async fn run_episodes(
    rollout: &Rollout,
    specs: Vec<EpisodeSpec>,
    policies: &PolicyFactory,
    concurrency: usize,
    observer: &dyn Observer,
) -> Result<Vec<EpisodeOutcome>, JobError> {
    let limit = Arc::new(tokio::sync::Semaphore::new(concurrency.max(1)));
    let mut tasks = tokio::task::JoinSet::new();
    let n = specs.len();
    for (i, spec) in specs.into_iter().enumerate() {
        let (rollout, limit) = (rollout.clone(), limit.clone());
        let mut policy = policies();
        tasks.spawn(async move {
            let _permit = limit.acquire_owned().await.expect("never closed");
            let out = rollout.episode(policy.as_mut(), &mut HeuristicReader, &spec).await;
            (i, out)
        });
    }
    let mut out: Vec<Option<EpisodeOutcome>> = vec![None; n];
    let (mut done, mut reward) = (0u64, 0.0);
    while let Some(joined) = tasks.join_next().await {
        let (i, result) = joined.map_err(|e| JobError::Invalid(format!("an episode task failed: {e}")))?;
        let outcome = result?;
        done += 1;
        reward += outcome.score.reward;
        observer.progress(done, &format!("reward {:.3}", reward / done as f64));
        out[i] = Some(outcome);
    }
    Ok(out.into_iter().map(|o| o.expect("every episode ran")).collect())
}

/// F1, EM and format failures of a set of episodes, scored as the paper
/// evaluates (a format failure scores 0).
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Tally {
    /// Episodes.
    pub n: u64,
    /// Sum of training rewards (−1 for a format failure).
    pub reward: f64,
    /// Sum of evaluation F1.
    pub f1: f64,
    /// Sum of EM.
    pub em: f64,
    /// Format failures.
    pub format_failures: u64,
    /// Tool calls made.
    pub tool_calls: u64,
}

impl Tally {
    /// Counts one score.
    pub fn add(&mut self, s: &Score, tool_calls: u32) {
        self.n += 1;
        self.tool_calls += u64::from(tool_calls);
        self.reward += s.reward;
        self.f1 += s.eval_f1();
        self.em += s.em;
        if !s.format_ok {
            self.format_failures += 1;
        }
    }

    fn mean(&self, x: f64) -> f64 {
        if self.n == 0 { 0.0 } else { x / self.n as f64 }
    }

    /// Mean training reward.
    pub fn mean_reward(&self) -> f64 {
        self.mean(self.reward)
    }

    /// Mean F1.
    pub fn mean_f1(&self) -> f64 {
        self.mean(self.f1)
    }

    /// Mean EM.
    pub fn mean_em(&self) -> f64 {
        self.mean(self.em)
    }

    /// Mean tool calls per episode.
    pub fn mean_tool_calls(&self) -> f64 {
        self.mean(self.tool_calls as f64)
    }

    /// Fraction of well-formed episodes.
    pub fn format_ok(&self) -> f64 {
        if self.n == 0 {
            0.0
        } else {
            1.0 - self.format_failures as f64 / self.n as f64
        }
    }
}

/// An evaluation's result.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalSummary {
    /// The evaluation's own run.
    pub run: RunId,
    /// All questions.
    pub overall: Tally,
    /// Per data source.
    pub by_source: BTreeMap<String, Tally>,
    /// Every episode's scores, in question then sample order.
    pub episodes: Vec<EpisodeScore>,
}

impl EvalSummary {
    /// Means with bootstrap intervals, over all questions and the
    /// shortcut-free ones (see [`crate::report`]).
    pub fn report(&self) -> Report {
        Report::of(&self.episodes, fathom_core::derive_seed(self.run.0, "report", 0))
    }
}

impl EvalSummary {
    /// `EvalResult` events (F1, EM, format rate and reward per data source
    /// and overall) for `run` at `step`.
    pub fn results(&self, run: RunId, clock: &dyn Clock, step: u64, benchmark: &str) -> Vec<Event> {
        let mut out = Vec::new();
        let rows = self
            .by_source
            .iter()
            .map(|(k, v)| (k.as_str(), v))
            .chain(std::iter::once(("overall", &self.overall)));
        for (source, t) in rows {
            for (metric, value) in [
                ("f1", t.mean_f1()),
                ("em", t.mean_em()),
                ("format_ok", t.format_ok()),
                ("reward", t.mean_reward()),
                ("tool_calls", t.mean_tool_calls()),
            ] {
                out.push(Event::new(
                    run,
                    clock.now(),
                    EvalResult {
                        step,
                        benchmark: benchmark.to_string(),
                        data_source: source.to_string(),
                        metric: metric.into(),
                        value,
                        n: t.n,
                    },
                ));
            }
        }
        out
    }
}

/// What an evaluation runs.
#[derive(Clone)]
pub struct EvalJob<'a> {
    /// The run's name.
    pub name: String,
    /// The policy, as `RunStarted.policy` records it.
    pub policy: String,
    /// The model, for people.
    pub model: String,
    /// Makes each episode's policy.
    pub policies: PolicyFactory,
    /// The questions.
    pub questions: &'a [Question],
    /// Episode budgets.
    pub rollout: RolloutConfig,
    /// Seed of the episodes.
    pub seed: u64,
    /// Episodes at once.
    pub concurrency: usize,
    /// Name of the question set in `EvalResult`.
    pub benchmark: String,
    /// Extra configuration to record.
    pub config: serde_json::Value,
    /// Episodes per question (each with its own seed; 1 asks each once).
    pub samples: u32,
}

/// Runs an evaluation as its own run (`RunStarted`, `QuestionSampled`,
/// the episodes, `EvalResult` per data source, `RunFinished`).
pub async fn evaluate(env: &Env, job: EvalJob<'_>) -> Result<EvalSummary, JobError> {
    let store = &env.store;
    let clock = env.clock.as_ref();
    let run = store.new_run_id()?;
    // Every evaluation records its budgets and turn rules, so its episodes
    // replay under them.
    let mut config = job.config.clone();
    if let Some(fields) = config.as_object_mut() {
        fields.entry("rollout").or_insert_with(|| job.rollout.to_json());
    }
    store.append(&[Event::new(
        run,
        clock.now(),
        RunStarted {
            name: job.name.clone(),
            run_kind: RunKind::Eval,
            config_json: config.to_string(),
            seed: job.seed,
            policy: job.policy.clone(),
            model: job.model.clone(),
            code_version: crate::CODE_VERSION.into(),
            attempt: 0,
        },
    )])?;
    let picked: Vec<(&Question, u64)> = job.questions.iter().zip(0u64..).collect();
    store.append_with(&sampled_events(run, clock, 0, &picked), Durability::Relaxed)?;
    let samples = job.samples.max(1);
    let rollout = Rollout::new(
        store.clone(),
        env.gateway.clone(),
        env.clock.clone(),
        run,
        job.rollout.clone(),
    );
    // Question i's sample j is group i, index j; its seed is the one a
    // single-sample evaluation gave question i·samples + j.
    let slots: Vec<(usize, u32)> = (0..job.questions.len())
        .flat_map(|i| (0..samples).map(move |j| (i, j)))
        .collect();
    let specs = slots
        .iter()
        .map(|&(i, j)| {
            let n = i as u64 * u64::from(samples) + u64::from(j);
            job.questions[i].episode(0, i as u32, j, fathom_core::derive_seed(job.seed, "episode", n))
        })
        .collect();
    env.observer.phase(&job.name, slots.len() as u64);
    let outcomes = run_episodes(&rollout, specs, &job.policies, job.concurrency, env.observer.as_ref()).await?;
    let mut summary = EvalSummary {
        run,
        overall: Tally::default(),
        by_source: BTreeMap::new(),
        episodes: Vec::with_capacity(outcomes.len()),
    };
    let free: Vec<bool> = job.questions.iter().map(shortcut_free).collect();
    for (&(i, j), o) in slots.iter().zip(&outcomes) {
        let q = &job.questions[i];
        summary.overall.add(&o.score, o.n_tool_calls);
        summary
            .by_source
            .entry(q.data_source.clone())
            .or_default()
            .add(&o.score, o.n_tool_calls);
        summary.episodes.push(EpisodeScore {
            question: i,
            sample: j,
            reward: o.score.reward,
            f1: o.score.eval_f1(),
            em: o.score.em,
            well_formed: o.score.format_ok,
            tool_calls: o.n_tool_calls,
            shortcut_free: free[i],
        });
    }
    let mut events = summary.results(run, clock, 0, &job.benchmark);
    events.push(Event::new(
        run,
        clock.now(),
        RunFinished {
            status: RunStatus::Completed,
            steps_completed: 1,
            message: format!("{} questions, {} episodes", job.questions.len(), slots.len()),
        },
    ));
    store.append(&events)?;
    Ok(summary)
}
