//! A training run's weights after any step, rebuilt from the log.
//!
//! A run keeps checkpoints every `checkpoint.every` steps (and retention
//! deletes some), but its log holds every step's episodes and update. The
//! weights after step N are the newest usable checkpoint at or before N
//! (or the starting weights) plus the logged updates of the steps between,
//! each recomputed from its recorded episodes and checked bit for bit
//! against the logged loss and gradient norm ([`Learner::reapply`], the
//! same code `--resume` runs). So every checkpoint a run did not keep still
//! exists in effect: replay checks, counterfactual re-runs and
//! `fathom checkpoint materialize` use any step.
//!
//! A [`Rebuilder`] caches, for the length of a command, the few most recent
//! results and the working state it reached last, so a whole-run check
//! (episodes in step order) applies each update once.

use std::collections::VecDeque;
use std::ops::RangeInclusive;
use std::sync::Mutex;

use fathom_core::event::{EventKind, QuestionSampled};
use fathom_core::{Clock, QuestionId, Record, SystemClock};
use fathom_store::LogRead;

use super::update::Learner;
use super::*;

/// Rebuilt weights kept per [`Rebuilder`] (besides its working state).
const CACHED: usize = 2;

/// Everything the log holds about one training run that its updates need.
#[derive(Default)]
pub(crate) struct History {
    pub started: Option<RunStarted>,
    pub attempts: u32,
    pub updates: BTreeMap<u64, GradientUpdate>,
    pub checkpoints: Vec<CheckpointSaved>,
    /// Episode → (step, group, index, how it ended).
    pub episodes: BTreeMap<EpisodeId, (u64, u32, u32, Option<EndReason>)>,
    pub sampled_steps: std::collections::HashSet<u64>,
    /// The questions the run sampled, by id.
    pub questions: HashMap<QuestionId, Question>,
}

impl History {
    /// Reads what the log holds about `run`.
    pub(crate) fn read(log: &dyn LogRead, run: RunId) -> Result<History, JobError> {
        let mut s = History::default();
        let kinds = [
            EventKind::RunStarted,
            EventKind::GradientUpdate,
            EventKind::CheckpointSaved,
            EventKind::EpisodeStarted,
            EventKind::EpisodeFinished,
            EventKind::QuestionSampled,
        ];
        for record in log.run_records(run, &kinds)? {
            let Record { event, .. } = record;
            match event.payload {
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
                Payload::QuestionSampled(QuestionSampled {
                    step,
                    question_id,
                    question,
                    ground_truths,
                    data_source,
                    hops,
                    ..
                }) => {
                    s.sampled_steps.insert(step);
                    s.questions.entry(question_id.clone()).or_insert(Question {
                        id: question_id,
                        data_source,
                        text: question,
                        ground_truths,
                        hops,
                    });
                }
                _ => {}
            }
        }
        Ok(s)
    }

    /// The last step whose update is in the log.
    pub(crate) fn completed(&self) -> u64 {
        self.updates.keys().next_back().copied().unwrap_or(0)
    }

    /// The finished episodes of `step` in (group, index) order: exactly
    /// `groups` x `size` of them, as the step's update read them.
    fn step_episodes(&self, step: u64, groups: u32, size: u32) -> Result<Vec<EpisodeId>, JobError> {
        let mut by_slot: HashMap<(u32, u32), EpisodeId> = HashMap::new();
        for (&id, &(st, g, i, end)) in &self.episodes {
            if st == step && !matches!(end, None | Some(EndReason::Aborted)) {
                by_slot.insert((g, i), id);
            }
        }
        let mut out = Vec::with_capacity((groups * size) as usize);
        for g in 0..groups {
            for i in 0..size {
                out.push(*by_slot.get(&(g, i)).ok_or_else(|| {
                    JobError::Invalid(format!(
                        "step {step} is recorded as completed but its episode ({g}, {i}) (group, index) is not in the log; the log was altered"
                    ))
                })?);
            }
        }
        Ok(out)
    }
}

/// What may explain a recomputed update that differs from the logged one:
/// what the run recorded about where it ran, against where it is recomputed.
fn likely_causes(history: &History, record: &RunRecord, device: &str) -> String {
    let mut causes = Vec::new();
    if let Some(started) = &history.started
        && started.code_version != crate::CODE_VERSION
    {
        causes.push(format!(
            "the code changed (recorded by {}, recomputed by {})",
            started.code_version,
            crate::CODE_VERSION
        ));
    }
    let now = candle_core::utils::get_num_threads();
    if let Some(t) = record.threads
        && t != now
    {
        causes.push(format!(
            "the thread count changed (recorded on {t} CPU threads, recomputed on {now}; set RAYON_NUM_THREADS={t})"
        ));
    }
    if record.config.model.device != device {
        causes.push(format!(
            "the device changed (trained on {}, recomputed on {device})",
            record.config.model.device
        ));
    }
    if causes.is_empty() {
        "the code version, thread count and device are the ones the run recorded, so the logged update, the episodes it was computed from or the model files were altered".into()
    } else {
        format!("likely cause: {}", causes.join("; "))
    }
}

impl Learner<'_> {
    /// Re-applies the logged updates of `steps` to these weights, each
    /// recomputed from its recorded episodes at its logged learning rate
    /// and checked bit for bit against its logged loss and gradient norm.
    /// A difference stops it, naming the step, both values and the likely
    /// cause; `device` is where it runs.
    pub(crate) fn reapply(
        &mut self,
        history: &History,
        steps: RangeInclusive<u64>,
        device: &str,
    ) -> Result<(), JobError> {
        let data = &self.record.config.data;
        let (groups, size) = (data.questions_per_step, data.group_size);
        for step in steps {
            let recorded = history.updates.get(&step).ok_or_else(|| {
                JobError::Invalid(format!(
                    "the log holds no gradient_update for step {step}, so the weights after it cannot be rebuilt"
                ))
            })?;
            let ids = history.step_episodes(step, groups, size)?;
            let (update, _, _) = self.update(step, &ids, recorded.lr)?;
            if update.loss.to_bits() != recorded.loss.to_bits()
                || update.grad_norm.to_bits() != recorded.grad_norm.to_bits()
            {
                return Err(JobError::Invalid(format!(
                    "recomputing step {step}'s update from the log gives loss {} and gradient norm {}, but the log recorded {} and {}; {}",
                    update.loss,
                    update.grad_norm,
                    recorded.loss,
                    recorded.grad_norm,
                    likely_causes(history, self.record, device)
                )));
            }
        }
        Ok(())
    }
}

/// Where rebuilt weights came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Origin {
    /// The checkpoint they start from (`None`: the run's starting weights).
    pub checkpoint: Option<u64>,
    /// Logged updates re-applied after it.
    pub updates: u64,
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.checkpoint {
            Some(step) => write!(f, "checkpoint of step {step}")?,
            None => write!(f, "the starting weights")?,
        }
        match self.updates {
            0 => Ok(()),
            1 => write!(f, " + 1 update"),
            n => write!(f, " + {n} updates"),
        }
    }
}

/// A run's weights after one step.
#[derive(Debug)]
pub struct Rebuilt {
    /// The training run.
    pub run: RunId,
    /// Steps behind the weights (their policy version).
    pub step: u64,
    /// The weights, ready to sample from.
    pub model: Arc<CandleModel>,
    /// Where they came from.
    pub origin: Origin,
    /// The directory `config.json` and the tokenizer files come from.
    pub model_dir: PathBuf,
    /// Wall time of the rebuild (zero when it came from the cache).
    pub elapsed_ns: u64,
}

/// The state a rebuild reached, kept to continue from.
struct Working {
    run: RunId,
    step: u64,
    checkpoint: Option<u64>,
    model: CandleModel,
    reference: Option<LoadedModel>,
    optimizer: AdamW,
}

#[derive(Default)]
struct State {
    history: Option<(RunId, Arc<History>)>,
    working: Option<Working>,
    done: VecDeque<Arc<Rebuilt>>,
}

/// Rebuilds training runs' weights after any step from one log.
pub struct Rebuilder {
    log: Arc<dyn LogRead>,
    device: String,
    clock: Arc<dyn Clock>,
    state: Mutex<State>,
}

impl std::fmt::Debug for Rebuilder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Rebuilder")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

/// A recorded model path: as written, or (when the data directory was
/// given another way, or moved) its `checkpoints/…` or `models/…` part
/// inside `data_dir`.
pub fn resolve(data_dir: &Path, dir: &Path) -> PathBuf {
    if dir.exists() {
        return dir.to_path_buf();
    }
    let text = dir.to_string_lossy();
    for part in ["checkpoints/", "models/"] {
        if let Some(i) = text.rfind(part) {
            let inside = data_dir.join(&text[i..]);
            if inside.exists() {
                return inside;
            }
        }
    }
    dir.to_path_buf()
}

fn parse_record(history: &History, run: RunId) -> Result<RunRecord, JobError> {
    let started = history
        .started
        .as_ref()
        .ok_or_else(|| JobError::Invalid(format!("the log holds no run {run}")))?;
    if started.run_kind != RunKind::Train {
        return Err(JobError::Invalid(format!(
            "run {run} is not a training run (its kind is {}); only training runs have weights after each step",
            started.run_kind
        )));
    }
    serde_json::from_str(&started.config_json).map_err(|e| {
        JobError::Invalid(format!(
            "run {run}'s recorded configuration does not parse ({e}); it was written by another version of fathom"
        ))
    })
}

impl Rebuilder {
    /// A rebuilder over `log`, running the updates on `device` (`cpu`, `cuda:N`).
    pub fn new(log: Arc<dyn LogRead>, device: &str) -> Rebuilder {
        Rebuilder {
            log,
            device: device.to_string(),
            clock: Arc::new(SystemClock),
            state: Mutex::default(),
        }
    }

    fn history(&self, state: &mut State, run: RunId) -> Result<Arc<History>, JobError> {
        if let Some((r, h)) = &state.history
            && *r == run
        {
            return Ok(h.clone());
        }
        let h = Arc::new(History::read(self.log.as_ref(), run)?);
        state.history = Some((run, h.clone()));
        Ok(h)
    }

    /// The kept checkpoints of `history` at or before `step` whose weights
    /// are on disk, newest first, with their directories.
    fn bases<'h>(&self, history: &'h History, step: u64) -> Vec<(&'h CheckpointSaved, PathBuf)> {
        let mut out: Vec<(&CheckpointSaved, PathBuf)> = history
            .checkpoints
            .iter()
            .filter(|c| c.step <= step)
            .map(|c| (c, resolve(self.log.data_dir(), Path::new(&c.path))))
            .filter(|(_, dir)| dir.join("model.safetensors").exists())
            .collect();
        out.sort_by_key(|(c, _)| std::cmp::Reverse(c.step));
        out
    }

    /// Where the weights of `run` after `step` would come from, without
    /// rebuilding them; an error when the run has no such step.
    pub fn origin(&self, run: RunId, step: u64) -> Result<Origin, JobError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let history = self.history(&mut state, run)?;
        parse_record(&history, run)?;
        let completed = history.completed();
        if step > completed {
            return Err(JobError::Invalid(format!(
                "run {run} completed {completed} step(s), so it has no weights after step {step}; choose a step from 0 to {completed}"
            )));
        }
        let base = self.bases(&history, step).first().map(|(c, _)| c.step);
        Ok(Origin {
            checkpoint: base,
            updates: step - base.unwrap_or(0),
        })
    }

    /// The weights of training run `run` after `step`: the newest usable
    /// checkpoint at or before it (or the starting weights) plus the logged
    /// updates between, each checked against the log.
    pub fn weights(&self, run: RunId, step: u64) -> Result<Arc<Rebuilt>, JobError> {
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(hit) = state.done.iter().find(|r| r.run == run && r.step == step) {
            return Ok(Arc::new(Rebuilt {
                run,
                step,
                model: hit.model.clone(),
                origin: hit.origin,
                model_dir: hit.model_dir.clone(),
                elapsed_ns: 0,
            }));
        }
        let t0 = self.clock.now();
        let history = self.history(&mut state, run)?;
        let record = parse_record(&history, run)?;
        let completed = history.completed();
        if step > completed {
            return Err(JobError::Invalid(format!(
                "run {run} completed {completed} step(s), so it has no weights after step {step}; choose a step from 0 to {completed}"
            )));
        }
        let start = resolve(self.log.data_dir(), Path::new(&record.start_model));
        let device = parse_device(&self.device)?;
        let dtype = fathom_model::dir::parse_dtype(&record.config.model.dtype)?;
        let load = |dir: &Path| -> Result<LoadedModel, JobError> {
            let mut m = fathom_model::load(dir, &device, dtype).map_err(|e| {
                JobError::Invalid(format!("loading {} to rebuild run {run}'s weights: {e}", dir.display()))
            })?;
            m.model.set_kernels(record.kernels);
            Ok(m)
        };
        let bases = self.bases(&history, step);
        let newest_base = bases.first().map_or(0, |(c, _)| c.step);
        let usable = |w: &Working| w.run == run && w.step <= step && w.step >= newest_base;
        let mut working = match state.working.take() {
            Some(w) if usable(&w) => w,
            _ => {
                let mut from_checkpoint = None;
                for (c, dir) in &bases {
                    // A damaged checkpoint is passed over for an older one.
                    let Ok((moments, _)) = checkpoint::load_state(dir, &c.weights_digest, &c.optimizer_digest, &device)
                    else {
                        continue;
                    };
                    let loaded = load(dir)?;
                    let mut optimizer = adamw(&record.config, &loaded.vars)?;
                    optimizer.load_state(&moments)?;
                    from_checkpoint = Some(Working {
                        run,
                        step: c.step,
                        checkpoint: Some(c.step),
                        model: CandleModel::from_loaded(loaded),
                        reference: None,
                        optimizer,
                    });
                    break;
                }
                match from_checkpoint {
                    Some(w) => w,
                    None => {
                        let loaded = load(&start)?;
                        let optimizer = adamw(&record.config, &loaded.vars)?;
                        Working {
                            run,
                            step: 0,
                            checkpoint: None,
                            model: CandleModel::from_loaded(loaded),
                            reference: None,
                            optimizer,
                        }
                    }
                }
            }
        };
        if working.step < step {
            if working.reference.is_none() && record.config.grpo.kl_coef > 0.0 {
                working.reference = Some(load(&start)?);
            }
            let questions = |id: &QuestionId| history.questions.get(id);
            // On an error the weights may be part-way through a step, so
            // the working state is dropped.
            Learner {
                log: self.log.as_ref(),
                record: &record,
                model: &working.model,
                reference: working.reference.as_ref(),
                optimizer: &mut working.optimizer,
                questions: &questions,
                clock: self.clock.as_ref(),
            }
            .reapply(&history, working.step + 1..=step, &self.device)?;
            working.step = step;
        }
        // A copy for the caller: the working state goes on changing.
        let copy = load(&start)?;
        {
            let from = working
                .model
                .loaded()
                .vars
                .data()
                .lock()
                .map_err(|_| JobError::Invalid("weights lock poisoned".into()))?
                .clone();
            let to = copy
                .vars
                .data()
                .lock()
                .map_err(|_| JobError::Invalid("weights lock poisoned".into()))?
                .clone();
            for (name, var) in &to {
                let source = from
                    .get(name)
                    .ok_or_else(|| JobError::Invalid(format!("the rebuilt weights have no tensor {name}")))?;
                var.set(source.as_tensor())?;
            }
        }
        let origin = Origin {
            checkpoint: working.checkpoint,
            updates: step - working.checkpoint.unwrap_or(0),
        };
        state.working = Some(working);
        let rebuilt = Arc::new(Rebuilt {
            run,
            step,
            model: Arc::new(CandleModel::named(copy, format!("rebuilt:{run}/step-{step:06}"))),
            origin,
            model_dir: start,
            elapsed_ns: self.clock.now().nanos_since(t0),
        });
        state.done.push_back(rebuilt.clone());
        if state.done.len() > CACHED {
            state.done.pop_front();
        }
        Ok(rebuilt)
    }
}
