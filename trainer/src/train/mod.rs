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

mod evaluation;
mod rebuild;
mod resume;
mod update;

pub use evaluation::{Evaluation, HELD_OUT, HELD_OUT_GREEDY, ModelEval, evaluate_model};
pub use rebuild::{Origin, Rebuilder, Rebuilt, resolve};
pub use resume::find_run;

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

    fn rollout_config(&self) -> RolloutConfig {
        self.record.rollout()
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
