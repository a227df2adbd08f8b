//! The GRPO training loop (DESIGN sections 2 and 7).
//!
//! One step: take the next questions of the data order, run G rollouts of
//! each with the current weights (the candle policy, which records the
//! sampled ids and their log-probs), make the episodes durable, read them
//! back from the log as training sequences, normalise rewards within each
//! group, and take one AdamW step on the clipped surrogate (micro-batches
//! accumulate gradients to the token-level mean of the whole batch). The
//! update is a `gradient_update` event; every `checkpoint.every` steps the
//! weights, optimizer moments, RNG state and data cursor are written and
//! referenced by a `checkpoint_saved` event.
//!
//! The update reads its batch from the log, never from memory, so the
//! same code serves a resumed run: `--resume` finds the last step whose
//! update is in the log, restores the newest checkpoint at or before it,
//! recomputes the updates after that checkpoint from the recorded
//! episodes (checking each against the recorded loss), marks episodes cut
//! short by the interruption as aborted, reuses the episodes of the
//! interrupted step that did finish, and carries on. The result is the
//! weights an uninterrupted run gives, bit for bit (CPU; same thread
//! count).

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::Device;
use candle_core::backprop::GradStore;
use fathom_core::event::{
    CheckpointSaved, EndReason, EpisodeFinished, GradientUpdate, RunFinished, RunKind, RunStarted, RunStatus,
};
use fathom_core::protocol::Protocol;
use fathom_core::{CheckpointId, EpisodeId, Event, Payload, RunId, SeededRng, derive_seed};
use fathom_model::sample::Sampling;
use fathom_model::{Kernels, LoadedModel, VarMap};
use fathom_store::{Durability, Store};
use serde::{Deserialize, Serialize};

use crate::candle_policy::{CandleModel, CandlePolicy, parse_device};
use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::grpo::{GrpoConfig, Sequence, advantages, sequence_logprobs, sequence_loss_grads};
use crate::harness::{
    Env, EvalJob, EvalSummary, JobError, PolicyFactory, Question, evaluate, run_episodes, sampled_events,
};
use crate::optim::{AdamW, AdamWConfig, accumulate};
use crate::recorded::{self, RecordedEpisode, TurnIds};
use crate::rollout::{EpisodeTimings, Rollout, RolloutConfig};

/// What a training run records in `RunStarted.config_json`: the whole
/// configuration and what it was resolved to.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RunRecord {
    /// The configuration (with `steps` as first asked).
    pub config: TrainConfig,
    /// The model directory the weights start from (the warm start's
    /// checkpoint, or `model.path` resolved).
    pub start_model: String,
    /// Today's date in the system prompt.
    pub today: String,
    /// Training questions available.
    pub train_questions: u64,
    /// Held-out questions.
    pub eval_questions: u64,
    /// BLAKE3 of the starting weights (`model.safetensors`), so a replay
    /// can tell a changed model directory (absent in older logs).
    #[serde(default)]
    pub start_digest: Option<String>,
    /// CPU threads the numerics ran on (results are bit-exact only on the
    /// same count; absent in older logs).
    #[serde(default)]
    pub threads: Option<usize>,
    /// The turn rules the run's episodes follow (absent in older logs,
    /// which ran under version 1).
    #[serde(default = "fathom_core::protocol::unrecorded")]
    pub protocol: Protocol,
    /// The model's kernels (absent in older logs, which used the reference).
    #[serde(default)]
    pub kernels: Kernels,
}

impl RunRecord {
    /// The episode budgets and rules of the run.
    pub fn rollout(&self) -> RolloutConfig {
        rollout_config(&self.config, &self.today, self.protocol)
    }
}

/// The questions of a run.
#[derive(Debug, Clone, Default)]
pub struct Data {
    /// Training questions (the data order is a seeded permutation per epoch).
    pub train: Vec<Question>,
    /// Held-out questions for evaluation.
    pub eval: Vec<Question>,
}

/// The benchmark name of held-out evaluations in `evals`.
pub const HELD_OUT: &str = "held-out";
/// The benchmark name of the extra greedy pass (`eval.greedy`).
pub const HELD_OUT_GREEDY: &str = "held-out greedy";

/// An evaluation of one set of weights.
#[derive(Debug, Clone)]
pub struct Evaluation {
    /// At `eval.temperature`, `eval.samples` episodes per question.
    pub main: EvalSummary,
    /// The greedy pass, when `eval.greedy` asks for one.
    pub greedy: Option<EvalSummary>,
}

/// What [`evaluate_model`] evaluates.
pub struct ModelEval<'a> {
    /// The weights.
    pub model: Arc<CandleModel>,
    /// Their policy version.
    pub version: u64,
    /// How to evaluate.
    pub section: &'a crate::config::EvalSection,
    /// The questions.
    pub questions: &'a [Question],
    /// Budgets and rules.
    pub rollout: RolloutConfig,
    /// Seed of the episodes.
    pub seed: u64,
    /// Episodes at once.
    pub concurrency: usize,
    /// The evaluation run's name (` greedy` is appended for the greedy pass).
    pub name: String,
    /// The policy as recorded.
    pub policy: String,
    /// Configuration to record (sampling is added).
    pub config: serde_json::Value,
}

/// Evaluates a model as `section` says: an evaluation run at its
/// temperature with its samples per question, then (with `greedy` and a
/// temperature above 0) a greedy evaluation run.
pub async fn evaluate_model(env: &Env, e: &ModelEval<'_>) -> Result<Evaluation, JobError> {
    let run = |temperature: f64, samples: u32, suffix: &'static str| -> Result<EvalJob<'_>, JobError> {
        let sampling = Sampling {
            temperature,
            top_p: 1.0,
        };
        let model = e.model.clone();
        let version = e.version;
        let batcher = e.model.batcher()?;
        let policies: PolicyFactory =
            Arc::new(move || Box::new(CandlePolicy::batched(model.clone(), batcher.clone(), sampling, version)));
        let mut config = e.config.clone();
        if let Some(fields) = config.as_object_mut() {
            fields.insert("temperature".into(), temperature.into());
            fields.insert("samples".into(), samples.into());
            fields.insert(
                "kernels".into(),
                serde_json::to_value(e.model.loaded().model.kernels()).unwrap_or_default(),
            );
        }
        Ok(EvalJob {
            name: format!("{}{suffix}", e.name),
            policy: e.policy.clone(),
            model: String::new(),
            policies,
            questions: e.questions,
            rollout: e.rollout.clone(),
            seed: e.seed,
            concurrency: e.concurrency,
            benchmark: if suffix.is_empty() { HELD_OUT } else { HELD_OUT_GREEDY }.into(),
            config,
            samples,
        })
    };
    let main = evaluate(env, run(e.section.temperature, e.section.samples, "")?).await?;
    let greedy = if e.section.greedy && e.section.temperature > 0.0 {
        Some(evaluate(env, run(0.0, 1, " greedy")?).await?)
    } else {
        None
    };
    Ok(Evaluation { main, greedy })
}

/// Where one step's time went, in nanoseconds.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StepTimings {
    /// The step.
    pub step: u64,
    /// Wall time of the whole step.
    pub total_ns: u64,
    /// Wall time of the rollouts.
    pub rollout_ns: u64,
    /// Per-episode sums (exceed `rollout_ns` when episodes run at once).
    pub episodes: EpisodeTimings,
    /// Reading the batch back from the log.
    pub read_ns: u64,
    /// Reference-policy log-probs and, for models below f32, the old
    /// log-probs recomputed by the training forward pass.
    pub reference_ns: u64,
    /// Forward and backward passes.
    pub forward_backward_ns: u64,
    /// The optimizer step.
    pub optimizer_ns: u64,
    /// Appends and flushes of the step's own events (questions, the
    /// durable flush of the episodes, the update).
    pub log_ns: u64,
    /// Writing a checkpoint and its event.
    pub checkpoint_ns: u64,
    /// Evaluation.
    pub eval_ns: u64,
}

/// What a finished training run reports.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    /// The run.
    pub run: RunId,
    /// Steps completed.
    pub steps: u64,
    /// Mean training reward per step, in step order (steps run by this process).
    pub step_rewards: Vec<(u64, f64)>,
    /// Evaluation before the first update (fresh runs only).
    pub eval_before: Option<Evaluation>,
    /// Evaluation after the last step.
    pub eval_after: Option<Evaluation>,
    /// Time per step.
    pub timings: Vec<StepTimings>,
    /// The last checkpoint.
    pub last_checkpoint: Option<PathBuf>,
}

#[derive(Debug, Clone)]
struct Kept {
    step: u64,
    dir: PathBuf,
    metric: Option<f64>,
}

/// A training run in progress.
pub struct Trainer {
    env: Env,
    record: RunRecord,
    run: RunId,
    target: u64,
    device: Device,
    model: Arc<CandleModel>,
    reference: Option<LoadedModel>,
    optimizer: AdamW,
    rng: SeededRng,
    cursor: u64,
    step: u64,
    data: Data,
    order: Option<(u64, Vec<usize>)>,
    kept: Vec<Kept>,
    /// Episodes of the next step that finished before an interruption.
    reuse: HashMap<(u32, u32), EpisodeId>,
    /// Steps whose questions are already in the log.
    sampled_steps: std::collections::HashSet<u64>,
    resumed: bool,
}

impl std::fmt::Debug for Trainer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Trainer")
            .field("run", &self.run)
            .field("step", &self.step)
            .finish_non_exhaustive()
    }
}

/// The directory of a run's checkpoints.
pub fn checkpoints_dir(store: &Store, run: RunId) -> PathBuf {
    store.dir().root().join("checkpoints").join(run.to_string())
}

pub(crate) fn adamw(config: &TrainConfig, vars: &VarMap) -> Result<AdamW, JobError> {
    let vars = vars
        .data()
        .lock()
        .map_err(|_| JobError::Invalid("weights lock poisoned".into()))?
        .clone();
    Ok(AdamW::new(
        &vars,
        AdamWConfig {
            weight_decay: config.grpo.weight_decay,
            ..AdamWConfig::default()
        },
    )?)
}

/// Sets every variable of `vars` from a safetensors file.
pub fn load_weights(vars: &VarMap, path: &Path, device: &Device) -> Result<(), JobError> {
    let tensors = candle_core::safetensors::load(path, device)?;
    let data = vars
        .data()
        .lock()
        .map_err(|_| JobError::Invalid("weights lock poisoned".into()))?;
    for (name, var) in data.iter() {
        let t = tensors
            .get(name)
            .ok_or_else(|| JobError::Invalid(format!("{} has no tensor {name}", path.display())))?;
        var.set(&t.to_dtype(var.dtype())?)?;
    }
    Ok(())
}

/// The kernels a new run of `config` uses: fused where they exist.
pub(crate) fn kernels_for(config: &TrainConfig) -> Result<Kernels, JobError> {
    let device = parse_device(&config.model.device)?;
    let dtype = fathom_model::dir::parse_dtype(&config.model.dtype)?;
    Ok(Kernels::best_for(&device, dtype))
}

/// Episode budgets and rules of a configuration under `protocol`.
pub fn rollout_config(c: &TrainConfig, today: &str, protocol: Protocol) -> RolloutConfig {
    RolloutConfig {
        max_turns: c.rollout.max_turns,
        max_turn_tokens: c.rollout.max_turn_tokens,
        today: today.to_string(),
        protocol,
        prompt: c.rollout.prompt,
        tools: crate::tools::ToolLimits {
            max_response_chars: c.rollout.max_tool_chars,
            ..Default::default()
        },
        ..RolloutConfig::default()
    }
}

/// The learning rate of optimizer step `step` (from 1) of `total`: linear
/// warm-up over `warmup` steps, then `constant`, or `cosine` decay to 10%
/// of `lr` at the last step.
pub fn learning_rate(lr: f64, schedule: &str, warmup: u64, step: u64, total: u64) -> f64 {
    if warmup > 0 && step <= warmup {
        return lr * step as f64 / warmup as f64;
    }
    match schedule {
        "cosine" => {
            let span = total.saturating_sub(warmup).max(1) as f64;
            let progress = ((step - warmup.min(step)) as f64 / span).min(1.0);
            let min = 0.1 * lr;
            min + 0.5 * (lr - min) * (1.0 + (std::f64::consts::PI * progress).cos())
        }
        _ => lr,
    }
}

pub(crate) fn permutation(seed: u64, epoch: u64, n: usize) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    SeededRng::new(derive_seed(seed, "data-epoch", epoch)).shuffle(&mut v);
    v
}

struct Planned {
    question: usize,
    cursor: u64,
    seeds: Vec<u64>,
}

/// Everything the log holds about one training run.
#[derive(Default)]
struct RunScan {
    started: Option<RunStarted>,
    attempts: u32,
    updates: BTreeMap<u64, GradientUpdate>,
    checkpoints: Vec<CheckpointSaved>,
    /// Episode → (step, group, index, how it ended).
    episodes: BTreeMap<EpisodeId, (u64, u32, u32, Option<EndReason>)>,
    sampled_steps: std::collections::HashSet<u64>,
}

fn scan(store: &Store, run: RunId) -> Result<RunScan, JobError> {
    let mut s = RunScan::default();
    for record in store.run_events(run) {
        let record = record?;
        match record.event.payload {
            Payload::RunStarted(p) => {
                s.attempts += 1;
                if s.started.is_none() {
                    s.started = Some(p);
                }
            }
            Payload::GradientUpdate(p) => {
                s.updates.insert(p.step, p);
            }
            Payload::CheckpointSaved(p) => s.checkpoints.push(p),
            Payload::EpisodeStarted(p) => {
                s.episodes
                    .insert(p.episode_id, (p.step, p.group_id, p.group_index, None));
            }
            Payload::EpisodeFinished(p) => {
                if let Some(e) = s.episodes.get_mut(&p.episode_id) {
                    e.3 = Some(p.ended_by);
                }
            }
            Payload::QuestionSampled(p) => {
                s.sampled_steps.insert(p.step);
            }
            _ => {}
        }
    }
    Ok(s)
}

/// The newest training run named `name` in the log.
pub fn find_run(store: &Store, name: &str, kind: RunKind) -> Result<Option<(RunId, RunStarted)>, JobError> {
    let mut found = None;
    for run in store.runs()? {
        if let Some(first) = store.run_events(run).next()
            && let Payload::RunStarted(p) = first?.event.payload
            && p.run_kind == kind
            && p.name == name
        {
            found = Some((run, p));
        }
    }
    Ok(found)
}

/// The fields of two configurations that differ (ignoring `steps`).
fn config_changes(recorded: &TrainConfig, now: &TrainConfig) -> Vec<String> {
    fn walk(prefix: &str, a: &serde_json::Value, b: &serde_json::Value, out: &mut Vec<String>) {
        match (a, b) {
            (serde_json::Value::Object(x), serde_json::Value::Object(y)) => {
                let keys: std::collections::BTreeSet<&String> = x.keys().chain(y.keys()).collect();
                for k in keys {
                    let null = serde_json::Value::Null;
                    let name = if prefix.is_empty() {
                        k.clone()
                    } else {
                        format!("{prefix}.{k}")
                    };
                    walk(&name, x.get(k).unwrap_or(&null), y.get(k).unwrap_or(&null), out);
                }
            }
            _ if a != b => out.push(format!("{prefix} (recorded {a}, now {b})")),
            _ => {}
        }
    }
    let mut a = serde_json::to_value(recorded).expect("config serialises");
    let mut b = serde_json::to_value(now).expect("config serialises");
    a["steps"] = serde_json::Value::Null;
    b["steps"] = serde_json::Value::Null;
    let mut out = Vec::new();
    walk("", &a, &b, &mut out);
    out
}

impl Trainer {
    fn build(
        env: Env,
        record: RunRecord,
        run: RunId,
        target: u64,
        data: Data,
        resumed: bool,
    ) -> Result<Trainer, JobError> {
        let config = &record.config;
        let device = parse_device(&config.model.device)?;
        let dtype = fathom_model::dir::parse_dtype(&config.model.dtype)?;
        let start = Path::new(&record.start_model);
        let mut loaded = fathom_model::load(start, &device, dtype)?;
        loaded.model.set_kernels(record.kernels);
        let reference = if config.grpo.kl_coef > 0.0 {
            let mut r = fathom_model::load(start, &device, dtype)?;
            r.model.set_kernels(record.kernels);
            Some(r)
        } else {
            None
        };
        let optimizer = adamw(config, &loaded.vars)?;
        if data.train.is_empty() {
            return Err(JobError::Invalid("there are no training questions".into()));
        }
        Ok(Trainer {
            rng: SeededRng::new(derive_seed(config.seed, "trainer", 0)),
            env,
            run,
            target,
            device,
            model: Arc::new(CandleModel::from_loaded(loaded)),
            reference,
            optimizer,
            cursor: 0,
            step: 0,
            data,
            order: None,
            kept: Vec::new(),
            reuse: HashMap::new(),
            sampled_steps: Default::default(),
            resumed,
            record,
        })
    }

    /// Starts a new run from the weights in `start_model`.
    pub fn start(
        env: Env,
        config: TrainConfig,
        start_model: &Path,
        data: Data,
        today: &str,
    ) -> Result<Trainer, JobError> {
        let store = env.store.clone();
        let run = store.new_run_id()?;
        let record = RunRecord {
            start_model: start_model.display().to_string(),
            today: today.to_string(),
            train_questions: data.train.len() as u64,
            eval_questions: data.eval.len() as u64,
            start_digest: crate::checkpoint::weights_digest(start_model).map(|d| d.to_hex()),
            threads: Some(candle_core::utils::get_num_threads()),
            protocol: Protocol::CURRENT,
            kernels: kernels_for(&config)?,
            config,
        };
        let target = record.config.steps;
        let trainer = Trainer::build(env, record, run, target, data, false)?;
        let c = &trainer.model.loaded().config;
        store.append(&[Event::new(
            run,
            trainer.env.clock.now(),
            RunStarted {
                name: trainer.record.config.name.clone(),
                run_kind: RunKind::Train,
                config_json: serde_json::to_string(&trainer.record).expect("record serialises"),
                seed: trainer.record.config.seed,
                policy: format!("candle:{}", trainer.record.start_model),
                model: format!(
                    "qwen2 {} layers, hidden {}, {} parameters",
                    c.num_hidden_layers,
                    c.hidden_size,
                    c.parameter_count()
                ),
                code_version: crate::CODE_VERSION.into(),
                attempt: 0,
            },
        )])?;
        Ok(trainer)
    }

    /// Continues the newest run named like `config` to `steps` steps (or
    /// the configuration's): see the module's documentation.
    pub fn resume(env: Env, config: TrainConfig, steps: Option<u64>, data: Data) -> Result<Trainer, JobError> {
        let store = env.store.clone();
        let Some((run, started)) = find_run(&store, &config.name, RunKind::Train)? else {
            return Err(JobError::Invalid(format!(
                "the log holds no training run named '{}' to resume; start one without --resume",
                config.name
            )));
        };
        let record: RunRecord = serde_json::from_str(&started.config_json).map_err(|e| {
            JobError::Invalid(format!(
                "run {run}'s recorded configuration does not parse ({e}); it was written by another version of fathom"
            ))
        })?;
        let changes = config_changes(&record.config, &config);
        if !changes.is_empty() {
            return Err(JobError::Invalid(format!(
                "the configuration differs from the one run {run} was started with, so resuming would not continue the same run: {}; restore those values or start a new run without --resume",
                changes.join(", ")
            )));
        }
        if data.train.len() as u64 != record.train_questions {
            return Err(JobError::Invalid(format!(
                "run {run} trained on {} questions but {} are given now; the data order would differ",
                record.train_questions,
                data.train.len()
            )));
        }
        let s = scan(&store, run)?;
        let completed = s.updates.keys().next_back().copied().unwrap_or(0);
        let target = steps.unwrap_or(record.config.steps);
        if target < completed {
            return Err(JobError::Invalid(format!(
                "run {run} has already completed {completed} steps, more than the {target} asked for"
            )));
        }
        let mut trainer = Trainer::build(env, record, run, target, data, true)?;
        let clock = trainer.env.clock.clone();
        // A new attempt of the same run.
        store.append(&[Event::new(
            run,
            clock.now(),
            RunStarted {
                attempt: s.attempts,
                ..started
            },
        )])?;
        // Episodes cut short are kept, and marked aborted.
        let mut aborted = Vec::new();
        for (&id, &(step, group, index, end)) in &s.episodes {
            match end {
                None => aborted.push(Event::new(
                    run,
                    clock.now(),
                    EpisodeFinished {
                        episode_id: id,
                        answer: None,
                        reward: 0.0,
                        f1: 0.0,
                        em: 0.0,
                        format_ok: false,
                        format_error: Some("the run stopped during this episode".into()),
                        n_turns: 0,
                        n_tool_calls: 0,
                        n_searches: 0,
                        n_browses: 0,
                        n_tokens: 0,
                        ended_by: EndReason::Aborted,
                        duration_ns: 0,
                    },
                )),
                Some(EndReason::Aborted) => {}
                Some(_) if step == completed + 1 => {
                    trainer.reuse.insert((group, index), id);
                }
                Some(_) => {}
            }
        }
        if !aborted.is_empty() {
            trainer
                .env
                .observer
                .note(&format!("marked {} interrupted episode(s) as aborted", aborted.len()));
            store.append(&aborted)?;
        }
        trainer.sampled_steps = s.sampled_steps.clone();
        // The newest usable checkpoint at or before the last completed step.
        let mut restored = 0;
        for c in s.checkpoints.iter().rev() {
            if c.step > completed {
                continue;
            }
            let dir = PathBuf::from(&c.path);
            match checkpoint::load_state(&dir, &c.weights_digest, &c.optimizer_digest, &trainer.device) {
                Ok((opt, state)) => {
                    load_weights(
                        &trainer.model.loaded().vars,
                        &dir.join("model.safetensors"),
                        &trainer.device,
                    )?;
                    trainer.optimizer.load_state(&opt)?;
                    let words: [u64; 4] = state.rng_state.as_slice().try_into().map_err(|_| {
                        JobError::Invalid(format!("{} holds an RNG state of the wrong size", dir.display()))
                    })?;
                    trainer.rng = SeededRng::from_state(words);
                    trainer.cursor = state.data_cursor;
                    trainer.step = state.step;
                    restored = state.step;
                    break;
                }
                Err(e) => trainer
                    .env
                    .observer
                    .note(&format!("skipping checkpoint of step {}: {e}", c.step)),
            }
        }
        for c in &s.checkpoints {
            let dir = PathBuf::from(&c.path);
            if dir.join("model.safetensors").exists() && !trainer.kept.iter().any(|k| k.dir == dir) {
                trainer.kept.push(Kept {
                    step: c.step,
                    dir,
                    metric: c.metric,
                });
            }
        }
        // Steps after the checkpoint are recomputed from their recorded episodes.
        for step in restored + 1..=completed {
            let plan = trainer.plan();
            let mut by_slot: HashMap<(u32, u32), EpisodeId> = HashMap::new();
            for (&id, &(st, g, i, end)) in &s.episodes {
                if st == step && !matches!(end, None | Some(EndReason::Aborted)) {
                    by_slot.insert((g, i), id);
                }
            }
            let ids = trainer.slots(&plan, &by_slot).map_err(|missing| {
                JobError::Invalid(format!(
                    "step {step} is recorded as completed but its episode {missing:?} (group, index) is not in the log; the log was altered"
                ))
            })?;
            let recorded = &s.updates[&step];
            let (update, _, _) = trainer.update(step, &ids)?;
            if update.loss.to_bits() != recorded.loss.to_bits()
                || update.grad_norm.to_bits() != recorded.grad_norm.to_bits()
            {
                return Err(JobError::Invalid(format!(
                    "recomputing step {step}'s update from the log gives loss {} and gradient norm {}, but the log recorded {} and {}: the model, the code or the thread count changed since the run was recorded",
                    update.loss, update.grad_norm, recorded.loss, recorded.grad_norm
                )));
            }
            trainer.step = step;
        }
        trainer.env.observer.note(&format!(
            "resuming run {run} after step {completed} (checkpoint of step {restored}, {} step(s) recomputed from the log, {} finished episode(s) of step {} reused)",
            completed - restored,
            trainer.reuse.len(),
            completed + 1
        ));
        Ok(trainer)
    }

    /// The run.
    pub fn run_id(&self) -> RunId {
        self.run
    }

    /// Steps completed.
    pub fn step(&self) -> u64 {
        self.step
    }

    /// The model being trained.
    pub fn model(&self) -> &Arc<CandleModel> {
        &self.model
    }

    fn config(&self) -> &TrainConfig {
        &self.record.config
    }

    fn plan(&mut self) -> Vec<Planned> {
        let n = self.data.train.len();
        let (q, g) = (self.config().data.questions_per_step, self.config().data.group_size);
        let seed = self.config().seed;
        (0..q)
            .map(|_| {
                let cursor = self.cursor;
                self.cursor += 1;
                let epoch = cursor / n as u64;
                if self.order.as_ref().is_none_or(|(e, _)| *e != epoch) {
                    self.order = Some((epoch, permutation(seed, epoch, n)));
                }
                let order = &self.order.as_ref().expect("just set").1;
                Planned {
                    question: order[(cursor % n as u64) as usize],
                    cursor,
                    seeds: (0..g).map(|_| self.rng.next_u64()).collect(),
                }
            })
            .collect()
    }

    /// The episodes of a plan in (group, index) order, from `slots`; the
    /// first missing slot otherwise.
    fn slots(&self, plan: &[Planned], slots: &HashMap<(u32, u32), EpisodeId>) -> Result<Vec<EpisodeId>, (u32, u32)> {
        let mut out = Vec::new();
        for (g, p) in plan.iter().enumerate() {
            for i in 0..p.seeds.len() {
                let key = (g as u32, i as u32);
                out.push(*slots.get(&key).ok_or(key)?);
            }
        }
        Ok(out)
    }

    fn lr(&self, step: u64) -> f64 {
        let g = &self.config().grpo;
        learning_rate(g.lr, &g.schedule, g.warmup_steps, step, self.target)
    }

    /// One optimizer step on the recorded episodes `ids` (in group order).
    /// Returns the update, where its time went, and the batch's mean reward.
    fn update(&mut self, step: u64, ids: &[EpisodeId]) -> Result<(GradientUpdate, StepTimings, f64), JobError> {
        let mut timings = StepTimings::default();
        let clock = self.env.clock.clone();
        let t_read = clock.now();
        let tokenizer = &self.model.loaded().tokenizer;
        let rollout = self.rollout_config();
        let mut episodes: Vec<RecordedEpisode> = Vec::with_capacity(ids.len());
        for id in ids {
            let e = recorded::read_episode(&self.env.store, *id)?
                .ok_or_else(|| JobError::Invalid(format!("episode {id} is not in the log")))?;
            if e.end.is_none() {
                return Err(JobError::Invalid(format!("episode {id} never finished")));
            }
            episodes.push(e);
        }
        let rewards: Vec<f64> = episodes.iter().map(|e| e.end.map_or(0.0, |x| x.reward)).collect();
        let groups: Vec<u64> = episodes.iter().map(|e| u64::from(e.group_id)).collect();
        let adv = advantages(&rewards, &groups);
        let mut prompts: HashMap<String, Vec<u32>> = HashMap::new();
        let mut batch = Vec::with_capacity(episodes.len());
        for (e, a) in episodes.iter().zip(&adv) {
            let question = self.data.train.iter().find(|q| q.id == e.question_id).ok_or_else(|| {
                JobError::Invalid(format!(
                    "episode {}'s question {} is not in the training set",
                    e.episode_id, e.question_id.0
                ))
            })?;
            let prompt = match prompts.get(&question.text) {
                Some(p) => p.clone(),
                None => {
                    let p = recorded::prompt_ids(tokenizer, &rollout, &question.text)?;
                    prompts.insert(question.text.clone(), p.clone());
                    p
                }
            };
            batch.push(recorded::sequence(
                tokenizer,
                &prompt,
                e,
                *a,
                TurnIds::Sampled,
                rollout.protocol,
            )?);
        }
        timings.read_ns = clock.now().nanos_since(t_read);
        // In bf16 the sampler's log-probs (its own forward pass, rounded
        // differently) do not equal the training pass's, so the PPO ratio
        // would not start at 1: as verl does, the old log-probs are those of
        // the training forward pass on the weights that sampled. The log
        // keeps the sampler's, which the replay check compares.
        // One optimizer step per mini-batch (consecutive groups of the
        // batch, as verl's PPO mini-batches): the first is on-policy, the
        // later ones see ratios away from 1 and clipping bounds them.
        let group = (self.config().data.group_size as usize).max(1);
        let groups = batch.len().div_ceil(group).max(1);
        let parts = self.config().grpo.mini_batches.clamp(1, groups);
        let per_part = groups.div_ceil(parts) * group;
        let micro_batch = self.config().grpo.micro_batch;
        let model = &self.model.loaded().model;
        if model.dtype() != candle_core::DType::F32 {
            // Split exactly as the update splits (the padded width of a
            // micro-batch can change how its products round).
            let t = clock.now();
            let temperature = self.config().rollout.temperature;
            for part in batch.chunks_mut(per_part) {
                for chunk in part.chunks_mut(micro_batch) {
                    let lps = sequence_logprobs(model, chunk, temperature)?;
                    for (s, lp) in chunk.iter_mut().zip(lps) {
                        s.old_logprobs = lp;
                    }
                }
            }
            timings.reference_ns += clock.now().nanos_since(t);
        }
        if let Some(reference) = &self.reference {
            let t = clock.now();
            let reference = &reference.model;
            let temperature = self.config().rollout.temperature;
            let micro = self.config().grpo.micro_batch;
            for chunk in batch.chunks_mut(micro) {
                let lps = sequence_logprobs(reference, chunk, temperature)?;
                for (s, lp) in chunk.iter_mut().zip(lps) {
                    s.ref_logprobs = Some(lp);
                }
            }
            timings.reference_ns += clock.now().nanos_since(t);
        }
        let cfg = GrpoConfig {
            clip: self.config().grpo.clip,
            kl_coef: self.config().grpo.kl_coef,
            entropy_coef: self.config().grpo.entropy_coef,
            temperature: self.config().rollout.temperature,
        };
        let vars = self.model.loaded().vars.all_vars();
        let lr = self.lr(step);
        // The update records means over the mini-batches.
        let t_update = clock.now();
        let (mut loss, mut pg, mut kl, mut entropy, mut clip, mut tokens, mut micro) = (0.0, 0.0, 0.0, 0.0, 0.0, 0, 0);
        let mut grad_norm = 0.0;
        let mut steps = 0u32;
        for part in batch.chunks(per_part) {
            let denominator = part.iter().map(Sequence::loss_tokens).sum::<usize>() as f64;
            let t_fb = clock.now();
            let mut grads = GradStore::default();
            let checkpointing = self.config().model.checkpointing;
            for chunk in part.chunks(micro_batch) {
                let computed =
                    sequence_loss_grads(&self.model.loaded().model, chunk, &cfg, denominator, checkpointing)?;
                micro += 1;
                let Some((terms, chunk_grads)) = computed else {
                    continue;
                };
                loss += f64::from(terms.loss.to_scalar::<f32>()?);
                pg += terms.pg_loss;
                kl += terms.kl;
                entropy += terms.entropy;
                clip += terms.clip_frac;
                tokens += terms.tokens;
                accumulate(&mut grads, &chunk_grads, &vars)?;
            }
            timings.forward_backward_ns += clock.now().nanos_since(t_fb);
            let t_opt = clock.now();
            let report = self.optimizer.step(&grads, lr, self.config().grpo.max_grad_norm)?;
            timings.optimizer_ns += clock.now().nanos_since(t_opt);
            grad_norm += report.grad_norm;
            steps += 1;
        }
        let n = f64::from(steps.max(1));
        let (loss, pg, kl, entropy, clip, grad_norm) = (loss / n, pg / n, kl / n, entropy / n, clip / n, grad_norm / n);
        Ok((
            GradientUpdate {
                step,
                policy_version: step,
                loss,
                pg_loss: pg,
                kl,
                entropy,
                clip_frac: clip,
                grad_norm,
                lr,
                tokens: tokens as u64,
                episodes: ids.len() as u32,
                micro_batches: micro,
                duration_ns: clock.now().nanos_since(t_update),
            },
            timings,
            rewards.iter().sum::<f64>() / rewards.len().max(1) as f64,
        ))
    }

    fn rollout_config(&self) -> RolloutConfig {
        self.record.rollout()
    }

    /// Evaluates the current weights on the held-out questions, as
    /// evaluation runs of their own (see [`evaluate_model`]), and records the
    /// results in this run at `step`.
    pub async fn evaluate(&self, step: u64) -> Result<Evaluation, JobError> {
        let c = self.config();
        let limit = if c.eval.limit == 0 {
            self.data.eval.len()
        } else {
            c.eval.limit.min(self.data.eval.len())
        };
        let evaluation = evaluate_model(
            &self.env,
            &ModelEval {
                model: self.model.clone(),
                version: step,
                section: &c.eval,
                questions: &self.data.eval[..limit],
                rollout: self.rollout_config(),
                seed: derive_seed(c.seed, "eval", step),
                concurrency: c.rollout.concurrency,
                name: format!("{} eval at step {step}", c.name),
                policy: format!("candle:{} step {step}", self.run),
                config: serde_json::json!({"train_run": self.run.to_string(), "step": step}),
            },
        )
        .await?;
        let clock = self.env.clock.as_ref();
        let mut results = evaluation.main.results(self.run, clock, step, HELD_OUT);
        if let Some(g) = &evaluation.greedy {
            results.extend(g.results(self.run, clock, step, HELD_OUT_GREEDY));
        }
        self.env.store.append(&results)?;
        Ok(evaluation)
    }

    /// One training step.
    async fn train_step(&mut self) -> Result<(f64, StepTimings, Option<Evaluation>), JobError> {
        let clock = self.env.clock.clone();
        let t_step = clock.now();
        let s = self.step + 1;
        let plan = self.plan();
        let mut log_ns = 0;
        if !self.sampled_steps.contains(&s) {
            let picked: Vec<(&Question, u64)> = plan.iter().map(|p| (&self.data.train[p.question], p.cursor)).collect();
            let t = clock.now();
            self.env.store.append_with(
                &sampled_events(self.run, clock.as_ref(), s, &picked),
                Durability::Relaxed,
            )?;
            log_ns += clock.now().nanos_since(t);
            self.sampled_steps.insert(s);
        }
        let mut specs = Vec::new();
        for (g, p) in plan.iter().enumerate() {
            let q = &self.data.train[p.question];
            for (i, seed) in p.seeds.iter().enumerate() {
                if self.reuse.contains_key(&(g as u32, i as u32)) {
                    continue;
                }
                specs.push(q.episode(s, g as u32, i as u32, *seed));
            }
        }
        let sampling = Sampling {
            temperature: self.config().rollout.temperature,
            top_p: self.config().rollout.top_p,
        };
        let model = self.model.clone();
        let version = s - 1;
        // The step's episodes decode together, on the weights as they are
        // now (a new batcher each step).
        let batcher = self.model.batcher()?;
        let policies: PolicyFactory =
            Arc::new(move || Box::new(CandlePolicy::batched(model.clone(), batcher.clone(), sampling, version)));
        self.env
            .observer
            .phase(&format!("step {s}/{}", self.target), specs.len() as u64);
        let t_roll = clock.now();
        let rollout = Rollout::new(
            self.env.store.clone(),
            self.env.gateway.clone(),
            self.env.clock.clone(),
            self.run,
            self.rollout_config(),
        );
        let keys: Vec<(u32, u32)> = specs.iter().map(|sp| (sp.group_id, sp.group_index)).collect();
        let outcomes = run_episodes(
            &rollout,
            specs,
            &policies,
            self.config().rollout.concurrency,
            self.env.observer.as_ref(),
        )
        .await?;
        let mut timings = StepTimings {
            step: s,
            rollout_ns: clock.now().nanos_since(t_roll),
            ..StepTimings::default()
        };
        let mut slots = std::mem::take(&mut self.reuse);
        for (key, o) in keys.into_iter().zip(&outcomes) {
            timings.episodes.add(&o.timings);
            slots.insert(key, o.episode_id);
        }
        let t = clock.now();
        self.env.store.flush()?;
        log_ns += clock.now().nanos_since(t);
        let ids = self
            .slots(&plan, &slots)
            .map_err(|k| JobError::Invalid(format!("episode {k:?} of step {s} did not run")))?;
        let (update, u, reward) = self.update(s, &ids)?;
        let t = clock.now();
        self.env
            .store
            .append_with(&[Event::new(self.run, clock.now(), update)], Durability::Durable)?;
        log_ns += clock.now().nanos_since(t);
        self.step = s;
        let c = self.config().clone();
        let mut eval = None;
        if (c.eval.every > 0 && s.is_multiple_of(c.eval.every)) || s == self.target {
            let t = clock.now();
            eval = Some(self.evaluate(s).await?);
            timings.eval_ns = clock.now().nanos_since(t);
        }
        if s.is_multiple_of(c.checkpoint.every) || s == self.target {
            let t = clock.now();
            let metric = match c.checkpoint.keep_best.as_str() {
                "reward" => Some(reward),
                "eval_f1" => eval.as_ref().map(|e| e.main.overall.mean_f1()),
                _ => None,
            };
            self.save_checkpoint(metric)?;
            timings.checkpoint_ns = clock.now().nanos_since(t);
        }
        timings.read_ns = u.read_ns;
        timings.reference_ns = u.reference_ns;
        timings.forward_backward_ns = u.forward_backward_ns;
        timings.optimizer_ns = u.optimizer_ns;
        timings.log_ns = log_ns;
        timings.total_ns = clock.now().nanos_since(t_step);
        Ok((reward, timings, eval))
    }

    fn save_checkpoint(&mut self, metric: Option<f64>) -> Result<PathBuf, JobError> {
        let dir = checkpoints_dir(&self.env.store, self.run).join(format!("step-{:06}", self.step));
        let state = TrainerState {
            step: self.step,
            policy_version: self.step,
            data_cursor: self.cursor,
            rng_state: self.rng.state().to_vec(),
        };
        let loaded = self.model.loaded();
        let saved = checkpoint::save(&dir, &loaded.dir, &loaded.vars, &self.optimizer, &state)?;
        let id = CheckpointId(self.env.store.next_id(fathom_core::IdKind::Checkpoint)?);
        self.env.store.append_with(
            &[Event::new(
                self.run,
                self.env.clock.now(),
                CheckpointSaved {
                    checkpoint_id: id,
                    step: self.step,
                    policy_version: self.step,
                    path: dir.display().to_string(),
                    weights_digest: saved.weights_digest,
                    optimizer_digest: saved.optimizer_digest,
                    rng_state: state.rng_state.clone(),
                    data_cursor: self.cursor,
                    bytes: saved.bytes,
                    metric,
                },
            )],
            Durability::Durable,
        )?;
        self.kept.retain(|k| k.dir != dir);
        self.kept.push(Kept {
            step: self.step,
            dir: dir.clone(),
            metric,
        });
        self.retain()?;
        Ok(dir)
    }

    /// Keeps the newest `keep_last` checkpoints and the best by the metric.
    fn retain(&mut self) -> Result<(), JobError> {
        let c = &self.record.config.checkpoint;
        let mut by_step: Vec<&Kept> = self.kept.iter().collect();
        by_step.sort_by_key(|k| std::cmp::Reverse(k.step));
        let mut keep: Vec<PathBuf> = by_step.iter().take(c.keep_last).map(|k| k.dir.clone()).collect();
        let best = self
            .kept
            .iter()
            .filter(|k| k.metric.is_some_and(f64::is_finite))
            .max_by(|a, b| {
                a.metric
                    .partial_cmp(&b.metric)
                    .expect("finite")
                    .then(a.step.cmp(&b.step))
            });
        if let Some(best) = best.filter(|_| !c.keep_best.is_empty()) {
            keep.push(best.dir.clone());
        }
        let mut kept = Vec::new();
        for k in std::mem::take(&mut self.kept) {
            if keep.contains(&k.dir) {
                kept.push(k);
            } else if k.dir.exists() {
                std::fs::remove_dir_all(&k.dir).map_err(|e| {
                    JobError::Invalid(format!("could not remove old checkpoint {}: {e}", k.dir.display()))
                })?;
            }
        }
        self.kept = kept;
        Ok(())
    }

    /// Runs the remaining steps, with an evaluation before the first
    /// update (fresh runs) and after the last.
    pub async fn run(mut self) -> Result<TrainSummary, JobError> {
        let result = self.run_inner().await;
        let (status, message) = match &result {
            Ok(s) => (RunStatus::Completed, format!("{} steps", s.steps)),
            Err(e) => (RunStatus::Failed, e.to_string()),
        };
        self.env.store.append(&[Event::new(
            self.run,
            self.env.clock.now(),
            RunFinished {
                status,
                steps_completed: self.step,
                message,
            },
        )])?;
        result
    }

    async fn run_inner(&mut self) -> Result<TrainSummary, JobError> {
        let mut summary = TrainSummary {
            run: self.run,
            steps: self.step,
            step_rewards: Vec::new(),
            eval_before: None,
            eval_after: None,
            timings: Vec::new(),
            last_checkpoint: self.kept.iter().max_by_key(|k| k.step).map(|k| k.dir.clone()),
        };
        if !self.resumed && self.step == 0 && !self.data.eval.is_empty() {
            summary.eval_before = Some(self.evaluate(0).await?);
        }
        while self.step < self.target {
            let (reward, timings, eval) = self.train_step().await?;
            self.env
                .observer
                .note(&format!("step {}: reward {reward:.3}", self.step));
            summary.step_rewards.push((self.step, reward));
            summary.timings.push(timings);
            if self.step == self.target {
                summary.eval_after = eval;
            }
        }
        summary.steps = self.step;
        summary.last_checkpoint = self.kept.iter().max_by_key(|k| k.step).map(|k| k.dir.clone());
        Ok(summary)
    }
}
