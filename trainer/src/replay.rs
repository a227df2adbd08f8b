//! Re-running recorded episodes from the log.
//!
//! - **Check** ([`Replayer::check`]): the episode again, with the web
//!   answered only from its recorded exchanges (no socket opened), the
//!   policy it was recorded with (the checkpoint of its policy version,
//!   digests checked; the scripted researcher; or the same OpenAI-compatible
//!   endpoint), its seed, question and budgets. The verdict is `identical`
//!   or the first divergence: the turn, what was recorded against what was
//!   produced, and the cause.
//! - **Counterfactual** ([`Replayer::counterfactual`]): the same question,
//!   seed and recorded web with another checkpoint or policy, recorded as a
//!   new episode of a `replay` run whose `EpisodeStarted.replay_of` names
//!   the original.
//!
//! How each run's episodes were made is read from its `RunStarted`: a
//! training run's configuration ([`RunRecord`]) and its checkpoints, an
//! evaluation's policy and sampling, a warm start's scripted episodes.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use fathom_core::event::{CheckpointSaved, RunFinished, RunKind, RunStarted, RunStatus};
use fathom_core::protocol::Message;
use fathom_core::{Clock, Digest, EpisodeId, Event, EventKind, Payload, QuestionId, Record, RunId};
use fathom_model::Kernels;
use fathom_model::sample::Sampling;
use fathom_replay::{Gateway, GatewayConfig, Miss, Recording, SearchBackend};
use fathom_store::{LogRead, Store};

use crate::candle_policy::{CandleModel, CandlePolicy};
use crate::harness::{JobError, Question, sampled_events};
use crate::openai::{OpenAiConfig, OpenAiPolicy};
use crate::policy::{GenerateFuture, Generation, Policy, PolicyError, PolicyInput};
use crate::recorded::{RecordedEpisode, episode_of};
use crate::rollout::{EpisodeOutcome, Rollout, RolloutConfig};
use crate::scripted::ScriptedPolicy;
use crate::tools::HeuristicReader;
use crate::train::{Origin, Rebuilder, RunRecord, resolve};
use fathom_model::batch::Batcher;

/// The policy an episode is re-run with.
#[derive(Debug, Clone)]
pub enum PolicyPlan {
    /// The heuristic researcher (as a warm start configured it, or plain).
    Scripted(crate::scripted::Teacher),
    /// A model directory (a checkpoint, or a model given by path).
    Candle {
        /// The directory.
        dir: PathBuf,
        /// The digest `model.safetensors` must have, when the log knows it.
        expected: Option<Digest>,
        /// Optimizer updates behind the weights (recorded in the episode).
        version: u64,
        /// Temperature and top-p.
        sampling: Sampling,
        /// `f32` or `bf16`.
        dtype: String,
        /// The kernels it was (or is to be) run with.
        kernels: Kernels,
        /// For people: `checkpoint of step 3 of r-2`.
        label: String,
    },
    /// A training run's weights after a step it kept no checkpoint of,
    /// rebuilt from the log ([`Rebuilder`]).
    Rebuilt {
        /// The training run.
        train: RunId,
        /// Steps behind the weights (their policy version).
        step: u64,
        /// Temperature and top-p.
        sampling: Sampling,
        /// Where the weights will come from.
        origin: Origin,
    },
    /// An OpenAI-compatible endpoint.
    OpenAi(OpenAiConfig),
}

impl PolicyPlan {
    /// `scripted`, `candle:DIR`, `openai:URL`: what `RunStarted.policy` records.
    pub fn spec(&self) -> String {
        match self {
            PolicyPlan::Scripted(_) => "scripted".into(),
            PolicyPlan::Candle { dir, .. } => format!("candle:{}", dir.display()),
            PolicyPlan::Rebuilt { train, step, .. } => format!("rebuilt:{train}/step-{step:06}"),
            PolicyPlan::OpenAi(c) => format!("openai:{}", c.base_url),
        }
    }

    /// For people.
    pub fn describe(&self) -> String {
        match self {
            PolicyPlan::Scripted(_) => "the scripted researcher".into(),
            PolicyPlan::Candle { label, sampling, .. } => {
                format!("candle, {label}, temperature {}", sampling.temperature)
            }
            PolicyPlan::Rebuilt {
                train,
                step,
                sampling,
                origin,
            } => format!(
                "candle, the weights of {train} after step {step} rebuilt: {origin}, temperature {}",
                sampling.temperature
            ),
            PolicyPlan::OpenAi(c) => format!("the endpoint {} (model '{}')", c.base_url, c.model),
        }
    }
}

/// Which policy a re-run uses.
#[derive(Debug, Clone, PartialEq)]
pub enum PolicyChoice {
    /// The one the episode was recorded with.
    Recorded,
    /// The checkpoint of this training step (of the episode's training run).
    Checkpoint(u64),
    /// `scripted`, `candle:DIR` or `openai:URL`.
    Spec(String),
}

/// Why a re-run differs from its recording (or could not be made).
#[derive(Debug, Clone, PartialEq)]
pub enum Cause {
    /// The policy asked for a web request the recording does not hold.
    RequestNotRecorded {
        /// The canonical request.
        request: String,
    },
    /// The policy sampled another token.
    SampledToken,
    /// The same tokens, with log-probabilities that are not bit-identical.
    LogProb,
    /// Another text (a policy without token ids).
    Text,
    /// The same turn and the same recorded web, but another tool response:
    /// a recorded response body no longer matches what the episode saw, or
    /// the tool or reader code changed.
    ToolResponse {
        /// The recorded requests that served the turn.
        requests: Vec<String>,
    },
    /// The same turns, another score (the reward code changed).
    Score,
    /// The weights the episode was sampled with are not on disk.
    CheckpointMissing {
        /// What was looked for.
        what: String,
    },
    /// The weights on disk are not the recorded ones.
    CheckpointDigest {
        /// The file.
        path: PathBuf,
        /// The recorded digest.
        expected: Digest,
        /// The file's digest now.
        found: Digest,
    },
    /// The weights could not be rebuilt from the log (a recomputed update
    /// differs from the logged one, or what it reads is missing).
    Rebuild(String),
    /// The policy could not be rebuilt or run.
    Policy(String),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::RequestNotRecorded { request } => write!(f, "a web request that was never recorded: {request}"),
            Cause::SampledToken => write!(f, "a sampled token differs"),
            Cause::LogProb => write!(f, "the same tokens with other log-probabilities (the numerics changed)"),
            Cause::Text => write!(f, "the policy wrote another text"),
            Cause::ToolResponse { requests } => write!(
                f,
                "the recorded web ({}) now gives another tool response: a recorded body was altered, or the tool code changed",
                if requests.is_empty() {
                    "no request".to_string()
                } else {
                    requests.join(", ")
                }
            ),
            Cause::Score => write!(f, "the same turns score differently (the reward code changed)"),
            Cause::CheckpointMissing { what } => write!(f, "checkpoint missing: {what}"),
            Cause::CheckpointDigest { path, expected, found } => write!(
                f,
                "checkpoint with another digest: {} is {} but the log recorded {}",
                path.display(),
                found.short(),
                expected.short()
            ),
            Cause::Rebuild(m) => write!(f, "the weights could not be rebuilt from the log: {m}"),
            Cause::Policy(m) => write!(f, "the policy could not be run: {m}"),
        }
    }
}

/// One token on either side of a divergence.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenAt {
    /// The id.
    pub id: u32,
    /// Its text.
    pub piece: String,
    /// Its sampling log-probability.
    pub logprob: Option<f32>,
}

/// The first place a re-run differs from its recording.
#[derive(Debug, Clone, PartialEq)]
pub struct Divergence {
    /// The turn (none when the run could not start).
    pub turn: Option<u32>,
    /// Why.
    pub cause: Cause,
    /// What was recorded there.
    pub recorded: String,
    /// What the re-run produced there.
    pub produced: String,
    /// The first differing token: its index in the turn, then each side.
    pub token: Option<(usize, Option<TokenAt>, Option<TokenAt>)>,
    /// What else changed since the recording (code version, thread count).
    pub environment: Vec<String>,
}

impl Divergence {
    /// `token 7: recorded 12 "Ada" (log-prob -0.1) | produced 99 "Bob" (…)`,
    /// when a token differs.
    pub fn token_line(&self) -> Option<String> {
        let (i, recorded, produced) = self.token.as_ref()?;
        let side = |t: &Option<TokenAt>| match t {
            None => "(none: the turn ended)".to_string(),
            Some(t) => format!(
                "{} {:?}{}",
                t.id,
                t.piece,
                t.logprob.map_or(String::new(), |l| format!(" (log-prob {l:.6})"))
            ),
        };
        Some(format!(
            "token {i}: recorded {} | produced {}",
            side(recorded),
            side(produced)
        ))
    }
}

/// What a check found.
#[derive(Debug, Clone, PartialEq)]
pub struct Verdict {
    /// The episode.
    pub episode: EpisodeId,
    /// Its run.
    pub run: RunId,
    /// The policy it was re-run with.
    pub policy: String,
    /// Turns recorded.
    pub turns: usize,
    /// Sampled tokens recorded (those with ids).
    pub tokens: usize,
    /// Web exchanges the recording held.
    pub requests: usize,
    /// The recorded episode's wall time.
    pub recorded_ns: u64,
    /// The re-run's wall time.
    pub replay_ns: u64,
    /// Where the re-run's time went (policy, tools, reward).
    pub timings: crate::rollout::EpisodeTimings,
    /// `None` when identical.
    pub divergence: Option<Divergence>,
}

/// A counterfactual re-run and its original.
#[derive(Debug, Clone)]
pub struct Rerun {
    /// The original, as recorded.
    pub original: RecordedEpisode,
    /// The re-run, as recorded.
    pub rerun: RecordedEpisode,
    /// The `replay` run holding it.
    pub run: RunId,
    /// The policy it ran with.
    pub policy: String,
    /// Requests the recording lacked (answered by the fallback web, or failed).
    pub misses: Vec<Miss>,
}

/// What one run recorded about how its episodes were made.
struct RunInfo {
    started: RunStarted,
    config: serde_json::Value,
    rollout: RolloutConfig,
    /// The training run whose weights this run's episodes used, and its record.
    train: Option<(RunId, RunRecord)>,
    questions: HashMap<QuestionId, Question>,
    threads: Option<usize>,
}

/// Models kept loaded by a [`Replayer`] (with their batch decoders): a
/// whole-run check meets each policy version's episodes together.
const SERVED: usize = 3;

/// Which weights a served model holds.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Weights {
    /// A model directory, run with these kernels.
    Dir(PathBuf, Kernels),
    /// A training run's weights after a step, rebuilt from the log.
    Rebuilt(RunId, u64),
}

/// A loaded model, and the decoder that batches the turns of the episodes
/// re-run on it at once (`None` where the model has no fused kernels).
#[derive(Clone)]
struct Served {
    model: Arc<CandleModel>,
    batcher: Option<Arc<Batcher>>,
}

impl Served {
    fn new(model: Arc<CandleModel>) -> Result<Served, Cause> {
        let batcher = model
            .batcher()
            .map_err(|e| Cause::Policy(format!("starting the batch decoder: {e}")))?;
        Ok(Served { model, batcher })
    }

    fn policy(&self, sampling: Sampling, version: u64) -> Built {
        (
            Box::new(CandlePolicy::batched(
                self.model.clone(),
                self.batcher.clone(),
                sampling,
                version,
            )),
            Some(self.model.clone()),
        )
    }
}

/// Re-runs episodes of one log; loaded models are shared between episodes.
pub struct Replayer {
    /// The log, read (the store, or its writer's endpoint).
    log: Arc<dyn LogRead>,
    /// The log to write counterfactual runs into, when this process holds it.
    store: Option<Arc<Store>>,
    clock: Arc<dyn Clock>,
    device: String,
    runs: Mutex<HashMap<RunId, Arc<RunInfo>>>,
    checkpoints: Mutex<HashMap<RunId, Arc<BTreeMap<u64, CheckpointSaved>>>>,
    /// The models re-runs sample from lately, with their batch decoders.
    served: Mutex<VecDeque<(Weights, Served)>>,
    /// Training runs' weights after steps without a kept checkpoint.
    rebuilder: Rebuilder,
}

impl std::fmt::Debug for Replayer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replayer")
            .field("device", &self.device)
            .finish_non_exhaustive()
    }
}

fn sampling_from_json(config: &serde_json::Value) -> Sampling {
    Sampling {
        temperature: config.get("temperature").and_then(|v| v.as_f64()).unwrap_or(0.0),
        top_p: config.get("top_p").and_then(|v| v.as_f64()).unwrap_or(1.0),
    }
}

fn invalid(message: impl Into<String>) -> JobError {
    JobError::Invalid(message.into())
}

/// What a policy saw and produced at each turn of a re-run.
#[derive(Default)]
struct Witnessed {
    /// Each turn's generation, or the policy's error.
    turns: Vec<Result<Generation, PolicyError>>,
    /// The tool response shown after each turn.
    tool_texts: BTreeMap<u32, String>,
}

/// Wraps a policy and keeps what it was shown and what it produced.
struct Witness {
    inner: Box<dyn Policy>,
    seen: Arc<Mutex<Witnessed>>,
}

impl Policy for Witness {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> u64 {
        self.inner.version()
    }

    fn generate(&mut self, input: PolicyInput<'_>) -> Result<Generation, PolicyError> {
        let out = self.inner.generate(input);
        self.keep(&input, &out);
        out
    }

    fn generate_async<'a>(&'a mut self, input: PolicyInput<'a>) -> GenerateFuture<'a> {
        // A batched model decodes this episode's turns with the others'.
        Box::pin(async move {
            let out = self.inner.generate_async(input).await;
            self.keep(&input, &out);
            out
        })
    }
}

impl Witness {
    fn keep(&self, input: &PolicyInput<'_>, out: &Result<Generation, PolicyError>) {
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if input.turn > 0
            && let Some(Message::Tool(text)) = input.messages.last()
        {
            seen.tool_texts.insert(input.turn - 1, text.clone());
        }
        seen.turns.push(out.clone());
    }
}

impl Replayer {
    /// A replayer over `store`, running models on `device` (`cpu`, `cuda:N`).
    pub fn new(store: Arc<Store>, clock: Arc<dyn Clock>, device: &str) -> Replayer {
        Replayer {
            log: store.clone(),
            rebuilder: Rebuilder::new(store.clone(), device),
            store: Some(store),
            clock,
            device: device.to_string(),
            runs: Mutex::default(),
            checkpoints: Mutex::default(),
            served: Mutex::default(),
        }
    }

    /// A replayer that only reads `log` (a writer's endpoint while another
    /// process holds the log): it checks episodes and writes nothing, so
    /// counterfactual re-runs are refused.
    pub fn read_only(log: Arc<dyn LogRead>, clock: Arc<dyn Clock>, device: &str) -> Replayer {
        Replayer {
            rebuilder: Rebuilder::new(log.clone(), device),
            log,
            store: None,
            clock,
            device: device.to_string(),
            runs: Mutex::default(),
            checkpoints: Mutex::default(),
            served: Mutex::default(),
        }
    }

    /// The log, when this replayer holds it.
    pub fn store(&self) -> Option<&Arc<Store>> {
        self.store.as_ref()
    }

    /// The log to write into, or why there is none.
    fn writable(&self) -> Result<&Arc<Store>, JobError> {
        self.store.as_ref().ok_or_else(|| {
            invalid(format!(
                "a re-run writes a new run into the log of {}, which another fathom process holds; run it once that process has finished",
                self.log.data_dir().display()
            ))
        })
    }

    /// Reads an episode, or says it is not in the log.
    pub fn episode(&self, episode: EpisodeId) -> Result<RecordedEpisode, JobError> {
        Ok(self.episode_and_events(episode)?.0)
    }

    /// An episode and its events, read once for everything a re-run needs.
    fn episode_and_events(&self, episode: EpisodeId) -> Result<(RecordedEpisode, Vec<Record>), JobError> {
        let records: Vec<Record> = self.log.episode_records(episode)?;
        let recorded = episode_of(self.log.as_ref(), episode, &records)?.ok_or_else(|| {
            invalid(format!(
                "the log holds no episode {episode}; list some with: fathom sql \"SELECT episode_id, run_id, reward FROM episodes LIMIT 20\""
            ))
        })?;
        Ok((recorded, records))
    }

    /// The finished, non-aborted episodes of `run`, in order.
    pub fn episodes_of(&self, run: RunId) -> Result<Vec<EpisodeId>, JobError> {
        let mut started = Vec::new();
        let mut ended = HashMap::new();
        let mut has_run = false;
        for record in self.log.run_records(
            run,
            &[
                EventKind::RunStarted,
                EventKind::EpisodeStarted,
                EventKind::EpisodeFinished,
            ],
        )? {
            match record.event.payload {
                Payload::EpisodeStarted(p) => started.push(p.episode_id),
                Payload::EpisodeFinished(p) => {
                    ended.insert(p.episode_id, p.ended_by);
                }
                Payload::RunStarted(_) => has_run = true,
                _ => {}
            }
        }
        if started.is_empty() && !has_run {
            return Err(invalid(format!(
                "the log holds no run {run}; list them with: fathom sql \"SELECT * FROM runs\""
            )));
        }
        Ok(started
            .into_iter()
            .filter(|e| {
                ended
                    .get(e)
                    .is_some_and(|r| *r != fathom_core::event::EndReason::Aborted)
            })
            .collect())
    }

    fn run_info(&self, run: RunId) -> Result<Arc<RunInfo>, JobError> {
        if let Some(info) = self.runs.lock().unwrap_or_else(|e| e.into_inner()).get(&run) {
            return Ok(info.clone());
        }
        let mut started: Option<RunStarted> = None;
        let mut questions = HashMap::new();
        for record in self
            .log
            .run_records(run, &[EventKind::RunStarted, EventKind::QuestionSampled])?
        {
            match record.event.payload {
                Payload::RunStarted(p) if started.is_none() => started = Some(p),
                Payload::QuestionSampled(q) => {
                    questions.insert(
                        q.question_id.clone(),
                        Question {
                            id: q.question_id,
                            data_source: q.data_source,
                            text: q.question,
                            ground_truths: q.ground_truths,
                            hops: q.hops,
                        },
                    );
                }
                _ => {}
            }
        }
        let started = started.ok_or_else(|| invalid(format!("run {run} has no run_started event in the log")))?;
        let config: serde_json::Value = serde_json::from_str(&started.config_json).unwrap_or(serde_json::Value::Null);
        let train_record = |json: &str, of: RunId| -> Result<RunRecord, JobError> {
            serde_json::from_str(json).map_err(|e| {
                invalid(format!(
                    "run {of}'s recorded configuration does not parse ({e}); it was written by another version of fathom"
                ))
            })
        };
        let (rollout, train, threads) = match started.run_kind {
            RunKind::Train | RunKind::Sft => {
                let record = train_record(&started.config_json, run)?;
                let rollout = record.rollout();
                let threads = record.threads;
                (rollout, Some((run, record)), threads)
            }
            RunKind::Eval | RunKind::Replay => {
                let threads = config.get("threads").and_then(|v| v.as_u64()).map(|t| t as usize);
                let train = match config.get("train_run").and_then(|v| v.as_str()) {
                    Some(id) => {
                        let of: RunId = id.parse().map_err(|_| {
                            invalid(format!("run {run} names a training run '{id}' that is not a run id"))
                        })?;
                        let first = self.log.run_records(of, &[EventKind::RunStarted])?.into_iter().next();
                        match first.map(|r| r.event.payload) {
                            Some(Payload::RunStarted(p)) => Some((of, train_record(&p.config_json, of)?)),
                            _ => {
                                return Err(invalid(format!(
                                    "run {run} was made with the weights of run {of}, which the log does not hold"
                                )));
                            }
                        }
                    }
                    None => None,
                };
                let rollout = match (&train, config.get("rollout")) {
                    (Some((_, record)), None) => record.rollout(),
                    _ => RolloutConfig::from_json(&config),
                };
                (rollout, train, threads)
            }
            other => {
                return Err(invalid(format!(
                    "run {run} is a {other} run; only training, warm-start, evaluation and replay runs have episodes to re-run"
                )));
            }
        };
        let info = Arc::new(RunInfo {
            started,
            config,
            rollout,
            train,
            questions,
            threads,
        });
        self.runs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run, info.clone());
        Ok(info)
    }

    fn checkpoints(&self, run: RunId) -> Result<Arc<BTreeMap<u64, CheckpointSaved>>, JobError> {
        if let Some(c) = self.checkpoints.lock().unwrap_or_else(|e| e.into_inner()).get(&run) {
            return Ok(c.clone());
        }
        let mut out = BTreeMap::new();
        for record in self.log.run_records(run, &[EventKind::CheckpointSaved])? {
            if let Payload::CheckpointSaved(c) = record.event.payload {
                out.insert(c.policy_version, c);
            }
        }
        let out = Arc::new(out);
        self.checkpoints
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(run, out.clone());
        Ok(out)
    }

    /// The weights of `version` of training run `train`: its starting
    /// model for 0, the checkpoint of that step where the run kept one,
    /// else those weights rebuilt from the log.
    fn weights(&self, train: RunId, record: &RunRecord, version: u64, sampling: Sampling) -> Result<PolicyPlan, Cause> {
        if version == 0 {
            return Ok(PolicyPlan::Candle {
                dir: PathBuf::from(&record.start_model),
                expected: record.start_digest.as_deref().and_then(Digest::from_hex),
                version,
                sampling,
                dtype: record.config.model.dtype.clone(),
                kernels: record.kernels,
                label: format!("the starting weights of {train}"),
            });
        }
        let checkpoints = self.checkpoints(train).map_err(|e| Cause::Policy(e.to_string()))?;
        if let Some(c) = checkpoints.get(&version)
            && self
                .resolve(std::path::Path::new(&c.path))
                .join("model.safetensors")
                .exists()
        {
            return Ok(PolicyPlan::Candle {
                dir: PathBuf::from(&c.path),
                expected: Some(c.weights_digest),
                version,
                sampling,
                dtype: record.config.model.dtype.clone(),
                kernels: record.kernels,
                label: format!("checkpoint of step {} of {train}", c.step),
            });
        }
        // Not kept, or deleted by retention: rebuilt from the log.
        let origin = self
            .rebuilder
            .origin(train, version)
            .map_err(|e| Cause::Rebuild(e.to_string()))?;
        Ok(PolicyPlan::Rebuilt {
            train,
            step: version,
            sampling,
            origin,
        })
    }

    /// The policy `episode` was recorded with.
    fn recorded_plan(&self, info: &RunInfo, episode: &RecordedEpisode) -> Result<PolicyPlan, Cause> {
        let started = &info.started;
        match started.run_kind {
            // A warm start records the scripted researcher's episodes.
            RunKind::Sft => Ok(PolicyPlan::Scripted(
                info.train
                    .as_ref()
                    .and_then(|(_, r)| r.config.sft.as_ref())
                    .map(crate::config::SftSection::teacher)
                    .unwrap_or_default(),
            )),
            RunKind::Train => {
                let (train, record) = info.train.as_ref().expect("training runs carry their record");
                let sampling = Sampling {
                    temperature: record.config.rollout.temperature,
                    top_p: record.config.rollout.top_p,
                };
                self.weights(*train, record, episode.policy_version, sampling)
            }
            _ => {
                let sampling = sampling_from_json(&info.config);
                if let Some((train, record)) = &info.train {
                    return self.weights(*train, record, episode.policy_version, sampling);
                }
                self.parse_spec(&started.policy, Some(&info.config), sampling)
            }
        }
    }

    fn parse_spec(
        &self,
        spec: &str,
        config: Option<&serde_json::Value>,
        sampling: Sampling,
    ) -> Result<PolicyPlan, Cause> {
        if spec == "scripted" {
            return Ok(PolicyPlan::Scripted(Default::default()));
        }
        if let Some(dir) = spec.strip_prefix("candle:") {
            let expected = config
                .and_then(|c| c.get("model_digest"))
                .and_then(|v| v.as_str())
                .and_then(Digest::from_hex);
            let dtype = config
                .and_then(|c| c.get("dtype"))
                .and_then(|v| v.as_str())
                .unwrap_or("f32")
                .to_string();
            // A recorded run names its kernels (older logs: the reference);
            // a new re-run uses the best there is.
            let kernels = match config {
                Some(c) => c
                    .get("kernels")
                    .and_then(|v| serde_json::from_value(v.clone()).ok())
                    .unwrap_or_default(),
                None => crate::candle_policy::parse_device(&self.device)
                    .ok()
                    .zip(fathom_model::dir::parse_dtype(&dtype).ok())
                    .map_or(Kernels::Reference, |(d, t)| Kernels::best_for(&d, t)),
            };
            return Ok(PolicyPlan::Candle {
                dir: PathBuf::from(dir),
                expected,
                version: 0,
                sampling,
                dtype,
                kernels,
                label: format!("the model directory {dir}"),
            });
        }
        if let Some(url) = spec.strip_prefix("openai:") {
            let mut c = OpenAiConfig::new(url);
            if let Some(model) = config.and_then(|c| c.get("model_name")).and_then(|v| v.as_str()) {
                c.model = model.to_string();
            }
            c.temperature = sampling.temperature;
            c.top_p = sampling.top_p;
            return Ok(PolicyPlan::OpenAi(c));
        }
        Err(Cause::Policy(format!(
            "'{spec}' is not a policy: use scripted, candle:DIR or openai:URL"
        )))
    }

    /// A recorded model path, found inside this data directory when it moved.
    fn resolve(&self, dir: &std::path::Path) -> PathBuf {
        resolve(self.log.data_dir(), dir)
    }

    /// A served model, or `make` one and keep it (the oldest goes).
    fn served(&self, key: Weights, make: impl FnOnce() -> Result<Served, Cause>) -> Result<Served, Cause> {
        if let Some((_, m)) = self
            .served
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .find(|(k, _)| *k == key)
        {
            return Ok(m.clone());
        }
        let made = make()?;
        let mut served = self.served.lock().unwrap_or_else(|e| e.into_inner());
        if !served.iter().any(|(k, _)| *k == key) {
            served.push_back((key, made.clone()));
            if served.len() > SERVED {
                served.pop_front();
            }
        }
        Ok(made)
    }

    fn model(
        &self,
        dir: &std::path::Path,
        expected: Option<Digest>,
        dtype: &str,
        kernels: Kernels,
    ) -> Result<Served, Cause> {
        let dir = self.resolve(dir);
        self.served(Weights::Dir(dir.clone(), kernels), || {
            let weights = dir.join("model.safetensors");
            if !weights.exists() {
                return Err(Cause::CheckpointMissing {
                    what: format!(
                        "{} is not on disk (deleted by checkpoint retention, or moved)",
                        weights.display()
                    ),
                });
            }
            if let Some(expected) = expected {
                let found = crate::checkpoint::weights_digest(&dir).ok_or_else(|| Cause::CheckpointMissing {
                    what: format!("{} cannot be read", weights.display()),
                })?;
                if found != expected {
                    return Err(Cause::CheckpointDigest {
                        path: weights,
                        expected,
                        found,
                    });
                }
            }
            let model = CandleModel::load_with(&dir, &self.device, dtype, kernels)
                .map_err(|e| Cause::Policy(format!("loading {}: {e}", dir.display())))?;
            Served::new(Arc::new(model))
        })
    }

    fn make_policy(&self, plan: &PolicyPlan) -> Result<Built, Cause> {
        Ok(match plan {
            PolicyPlan::Scripted(teacher) => (Box::new(ScriptedPolicy::teacher(teacher)), None),
            PolicyPlan::Candle {
                dir,
                expected,
                version,
                sampling,
                dtype,
                kernels,
                ..
            } => self.model(dir, *expected, dtype, *kernels)?.policy(*sampling, *version),
            PolicyPlan::Rebuilt {
                train, step, sampling, ..
            } => self
                .served(Weights::Rebuilt(*train, *step), || {
                    let rebuilt = self
                        .rebuilder
                        .weights(*train, *step)
                        .map_err(|e| Cause::Rebuild(e.to_string()))?;
                    Served::new(rebuilt.model.clone())
                })?
                .policy(*sampling, *step),
            PolicyPlan::OpenAi(c) => (
                Box::new(OpenAiPolicy::new(c.clone()).map_err(|e| Cause::Policy(e.to_string()))?),
                None,
            ),
        })
    }

    /// The policy a choice names, for `episode`.
    pub fn plan(&self, episode: &RecordedEpisode, choice: &PolicyChoice) -> Result<PolicyPlan, JobError> {
        let info = self.run_info(episode.run)?;
        let result = match choice {
            PolicyChoice::Recorded => self.recorded_plan(&info, episode),
            PolicyChoice::Checkpoint(step) => {
                let Some((train, record)) = &info.train else {
                    return Err(invalid(format!(
                        "episode {} belongs to run {}, which has no training run behind it; pass --policy candle:DIR instead of --checkpoint",
                        episode.episode_id, episode.run
                    )));
                };
                let sampling = match self.recorded_plan(&info, episode) {
                    Ok(PolicyPlan::Candle { sampling, .. } | PolicyPlan::Rebuilt { sampling, .. }) => sampling,
                    _ => Sampling {
                        temperature: record.config.rollout.temperature,
                        top_p: record.config.rollout.top_p,
                    },
                };
                self.weights(*train, record, *step, sampling)
            }
            PolicyChoice::Spec(spec) => {
                let sampling = match self.recorded_plan(&info, episode) {
                    Ok(PolicyPlan::Candle { sampling, .. } | PolicyPlan::Rebuilt { sampling, .. }) => sampling,
                    _ => Sampling {
                        temperature: 0.0,
                        top_p: 1.0,
                    },
                };
                // No recorded digest: the directory is taken as it is now.
                self.parse_spec(spec, None, sampling)
            }
        };
        result.map_err(|c| invalid(c.to_string()))
    }

    fn question(&self, info: &RunInfo, episode: &RecordedEpisode) -> Result<Question, JobError> {
        info.questions.get(&episode.question_id).cloned().ok_or_else(|| {
            invalid(format!(
                "run {} recorded no question_sampled event for question '{}' of episode {}",
                episode.run, episode.question_id, episode.episode_id
            ))
        })
    }

    /// The episode's recorded web exchanges, and a gateway config whose
    /// search backend matches them.
    fn recording(&self, records: &[Record]) -> Result<(Recording, usize, GatewayConfig), JobError> {
        let mut backend = "serper".to_string();
        let mut results = fathom_core::protocol::RESULTS_PER_QUERY;
        let mut n = 0;
        for r in records {
            if let Payload::WebExchange(w) = &r.event.payload {
                n += 1;
                if w.request_kind == fathom_core::event::WebKind::Search {
                    backend = w.backend.clone();
                    if let Some(num) = w
                        .canonical
                        .split_whitespace()
                        .find_map(|p| p.strip_prefix("num="))
                        .and_then(|v| v.parse().ok())
                    {
                        results = num;
                    }
                }
            }
        }
        let recording = Recording::from_records(self.log.as_ref(), records)?;
        // No socket is opened in replay: the URL only selects how search
        // answers are read.
        let search = match backend.as_str() {
            "searxng" => SearchBackend::Searxng {
                url: "http://replay.invalid/search".into(),
            },
            _ => SearchBackend::Serper {
                url: "http://replay.invalid/search".into(),
                key: None,
            },
        };
        let mut config = GatewayConfig::new(search);
        config.results_per_query = results;
        Ok((recording, n, config))
    }

    fn environment(&self, info: &RunInfo, plan: &PolicyPlan) -> Vec<String> {
        let mut out = Vec::new();
        if info.started.code_version != crate::CODE_VERSION {
            out.push(format!(
                "recorded by {}, re-run by {}",
                info.started.code_version,
                crate::CODE_VERSION
            ));
        }
        if matches!(plan, PolicyPlan::Candle { .. } | PolicyPlan::Rebuilt { .. }) {
            let now = candle_core::utils::get_num_threads();
            if let Some(t) = info.threads
                && t != now
            {
                out.push(format!("recorded on {t} CPU threads, re-run on {now}"));
            }
            if self.device != "cpu" {
                out.push(format!("re-run on {}", self.device));
            }
        }
        out
    }

    /// Re-runs `episode` with the policy it was recorded with, against its
    /// recorded web only, and compares.
    pub async fn check(&self, episode: EpisodeId) -> Result<Verdict, JobError> {
        let (recorded, records) = self.episode_and_events(episode)?;
        match recorded.end {
            None => {
                return Err(invalid(format!(
                    "episode {episode} never finished (its run may still be writing it); check it once it has"
                )));
            }
            Some(end) if end.ended_by == fathom_core::event::EndReason::Aborted => {
                return Err(invalid(format!(
                    "episode {episode} was aborted (its run stopped during it), so there is no whole episode to compare"
                )));
            }
            Some(_) => {}
        }
        let info = self.run_info(recorded.run)?;
        let question = self.question(&info, &recorded)?;
        let (recording, n_requests, gateway_config) = self.recording(&records)?;
        let mut verdict = Verdict {
            episode,
            run: recorded.run,
            policy: String::new(),
            turns: recorded.turns.len(),
            tokens: recorded.turns.iter().filter_map(|t| t.ids.as_ref()).map(Vec::len).sum(),
            requests: n_requests,
            recorded_ns: recorded.duration_ns,
            replay_ns: 0,
            timings: Default::default(),
            divergence: None,
        };
        let stop = |cause: Cause, environment: Vec<String>| Divergence {
            turn: None,
            cause,
            recorded: String::new(),
            produced: String::new(),
            token: None,
            environment,
        };
        let plan = match self.recorded_plan(&info, &recorded) {
            Ok(p) => p,
            Err(cause) => {
                verdict.divergence = Some(stop(cause, Vec::new()));
                return Ok(verdict);
            }
        };
        verdict.policy = plan.describe();
        let environment = self.environment(&info, &plan);
        let (inner, model) = match self.make_policy(&plan) {
            Ok(p) => p,
            Err(cause) => {
                verdict.divergence = Some(stop(cause, environment));
                return Ok(verdict);
            }
        };
        let seen = Arc::new(Mutex::new(Witnessed::default()));
        let mut policy = Witness {
            inner,
            seen: seen.clone(),
        };
        let gateway = Arc::new(Gateway::replay(gateway_config, recording, self.clock.clone()));
        let rollout = Rollout::unlogged(gateway.clone(), self.clock.clone(), recorded.run, info.rollout.clone());
        let mut spec = question.episode(recorded.step, recorded.group_id, recorded.group_index, recorded.seed);
        spec.replay_of = Some(episode);
        let t0 = self.clock.now();
        let outcome = rollout.episode(&mut policy, &mut HeuristicReader, &spec).await?;
        verdict.replay_ns = self.clock.now().nanos_since(t0);
        verdict.timings = outcome.timings;
        let seen = std::mem::take(&mut *seen.lock().unwrap_or_else(|e| e.into_inner()));
        let tokenizer = model.as_ref().map(|m| &m.loaded().tokenizer);
        verdict.divergence =
            compare(&recorded, &seen, &outcome, &gateway.misses(), tokenizer, &records).map(|mut d| {
                d.environment = environment;
                d
            });
        Ok(verdict)
    }

    /// Re-runs `episode` with `choice` against its recorded web, as a new
    /// episode of a new `replay` run linked to the original. A request the
    /// recording lacks goes to `fallback` (a sandbox or the live web) when
    /// given, else fails (the policy sees the error, as it would a dead link).
    pub async fn counterfactual(
        &self,
        episode: EpisodeId,
        choice: &PolicyChoice,
        fallback: Option<GatewayConfig>,
    ) -> Result<Rerun, JobError> {
        let store = self.writable()?.clone();
        let (original, records) = self.episode_and_events(episode)?;
        let info = self.run_info(original.run)?;
        let question = self.question(&info, &original)?;
        let plan = self.plan(&original, choice)?;
        let (inner, _) = self.make_policy(&plan).map_err(|c| invalid(c.to_string()))?;
        let (recording, _, gateway_config) = self.recording(&records)?;
        let on_miss = if fallback.is_some() { "fallback" } else { "fail" };
        let mut gateway = Gateway::replay(gateway_config, recording, self.clock.clone()).recording_into(store.clone());
        if let Some(live) = fallback {
            gateway = gateway.on_miss(live).map_err(|e| invalid(e.to_string()))?;
        }
        let gateway = Arc::new(gateway);
        let (sampling, digest, version, kernels) = match &plan {
            PolicyPlan::Candle {
                sampling,
                dir,
                version,
                kernels,
                ..
            } => (
                *sampling,
                crate::checkpoint::weights_digest(dir).map(|d| d.to_hex()),
                *version,
                *kernels,
            ),
            PolicyPlan::Rebuilt {
                sampling, step, train, ..
            } => (
                *sampling,
                None,
                *step,
                self.run_info(*train)?
                    .train
                    .as_ref()
                    .map_or(Kernels::Reference, |(_, r)| r.kernels),
            ),
            PolicyPlan::OpenAi(c) => (
                Sampling {
                    temperature: c.temperature,
                    top_p: c.top_p,
                },
                None,
                0,
                Kernels::Reference,
            ),
            PolicyPlan::Scripted(_) => (
                Sampling {
                    temperature: 0.0,
                    top_p: 1.0,
                },
                None,
                0,
                Kernels::Reference,
            ),
        };
        let run = store.new_run_id()?;
        let choice_text = match choice {
            PolicyChoice::Recorded => "recorded".to_string(),
            PolicyChoice::Checkpoint(s) => format!("checkpoint {s}"),
            PolicyChoice::Spec(s) => s.clone(),
        };
        let mut config = serde_json::json!({
            "replay_of": episode.to_string(),
            "original_run": original.run.to_string(),
            "choice": choice_text,
            "temperature": sampling.temperature,
            "top_p": sampling.top_p,
            "model_digest": digest,
            "on_miss": on_miss,
            "rollout": info.rollout.to_json(),
            "threads": candle_core::utils::get_num_threads(),
            "kernels": kernels,
        });
        if let PolicyPlan::OpenAi(c) = &plan {
            config["model_name"] = c.model.clone().into();
        }
        // Rebuilt weights have no directory: a check of this re-run
        // rebuilds them again from the training run.
        if let PolicyPlan::Rebuilt { train, step, .. } = &plan {
            config["train_run"] = train.to_string().into();
            config["step"] = (*step).into();
        }
        let clock = self.clock.as_ref();
        store.append(&[Event::new(
            run,
            clock.now(),
            RunStarted {
                name: format!("replay of {episode} with {}", plan.describe()),
                run_kind: RunKind::Replay,
                config_json: config.to_string(),
                seed: original.seed,
                policy: plan.spec(),
                model: String::new(),
                code_version: crate::CODE_VERSION.into(),
                attempt: 0,
            },
        )])?;
        store.append(&sampled_events(run, clock, original.step, &[(&question, 0)]))?;
        let rollout = Rollout::new(
            store.clone(),
            gateway.clone(),
            self.clock.clone(),
            run,
            RolloutConfig {
                durable_episodes: true,
                ..info.rollout.clone()
            },
        );
        let mut spec = question.episode(original.step, original.group_id, original.group_index, original.seed);
        spec.replay_of = Some(episode);
        let mut policy = RerunPolicy { inner, version };
        let result = rollout.episode(&mut policy, &mut HeuristicReader, &spec).await;
        let (status, message) = match &result {
            Ok(o) => (RunStatus::Completed, format!("reward {:.3}", o.score.reward)),
            Err(e) => (RunStatus::Failed, e.to_string()),
        };
        store.append(&[Event::new(
            run,
            clock.now(),
            RunFinished {
                status,
                steps_completed: 1,
                message,
            },
        )])?;
        let outcome: EpisodeOutcome = result?;
        let rerun = self.episode(outcome.episode_id)?;
        Ok(Rerun {
            original,
            rerun,
            run,
            policy: plan.describe(),
            misses: gateway.misses(),
        })
    }
}

/// A policy, and its model when it has one (for decoding tokens).
type Built = (Box<dyn Policy>, Option<Arc<CandleModel>>);

/// A counterfactual's policy, reporting the version of the weights it runs.
struct RerunPolicy {
    inner: Box<dyn Policy>,
    version: u64,
}

impl Policy for RerunPolicy {
    fn name(&self) -> &str {
        self.inner.name()
    }

    fn version(&self) -> u64 {
        self.version
    }

    fn generate(&mut self, input: PolicyInput<'_>) -> Result<Generation, PolicyError> {
        self.inner.generate(input)
    }
}

fn piece(tokenizer: Option<&fathom_model::ChatTokenizer>, id: u32) -> String {
    tokenizer
        .and_then(|t| t.decode(&[id]).ok())
        .unwrap_or_else(|| format!("<{id}>"))
}

fn token_at(
    ids: &[u32],
    logprobs: Option<&Vec<f32>>,
    i: usize,
    tok: Option<&fathom_model::ChatTokenizer>,
) -> Option<TokenAt> {
    ids.get(i).map(|&id| TokenAt {
        id,
        piece: piece(tok, id),
        logprob: logprobs.and_then(|l| l.get(i).copied()),
    })
}

/// The recorded requests that served `turn`.
fn requests_of(records: &[Record], turn: u32) -> Vec<String> {
    records
        .iter()
        .filter_map(|r| match &r.event.payload {
            Payload::WebExchange(w) if w.turn == Some(turn) => Some(format!("{} ({})", w.request_id, w.canonical)),
            _ => None,
        })
        .collect()
}

/// The first difference between a recorded episode and its re-run.
fn compare(
    recorded: &RecordedEpisode,
    seen: &Witnessed,
    outcome: &EpisodeOutcome,
    misses: &[Miss],
    tokenizer: Option<&fathom_model::ChatTokenizer>,
    records: &[Record],
) -> Option<Divergence> {
    let diverge = |turn: u32, cause: Cause, recorded: String, produced: String| Divergence {
        turn: Some(turn),
        cause,
        recorded,
        produced,
        token: None,
        environment: Vec::new(),
    };
    let n = recorded.turns.len().max(seen.turns.len());
    for t in 0..n {
        let turn = t as u32;
        let r = recorded.turns.get(t);
        let p = seen.turns.get(t);
        let produced_text = match p {
            Some(Ok(g)) => g.text.clone(),
            Some(Err(e)) => format!("(the policy failed: {e})"),
            None => format!("(no turn: the re-run ended, {})", outcome.ended_by),
        };
        let Some(r) = r else {
            return Some(diverge(
                turn,
                Cause::Text,
                "(no turn: the recorded episode had ended)".into(),
                produced_text,
            ));
        };
        match p {
            Some(Ok(g)) => {
                if let (Some(rids), Some(pids)) = (&r.ids, &g.token_ids) {
                    if let Some(i) = (0..rids.len().max(pids.len())).find(|&i| rids.get(i) != pids.get(i)) {
                        let mut d = diverge(turn, Cause::SampledToken, r.text.clone(), produced_text);
                        d.token = Some((
                            i,
                            token_at(rids, r.logprobs.as_ref(), i, tokenizer),
                            token_at(pids, g.logprobs.as_ref(), i, tokenizer),
                        ));
                        return Some(d);
                    }
                    if let (Some(rl), Some(pl)) = (&r.logprobs, &g.logprobs)
                        && let Some(i) = (0..rl.len().max(pl.len()))
                            .find(|&i| rl.get(i).map(|x| x.to_bits()) != pl.get(i).map(|x| x.to_bits()))
                    {
                        let mut d = diverge(turn, Cause::LogProb, r.text.clone(), produced_text);
                        d.token = Some((
                            i,
                            token_at(rids, Some(rl), i, tokenizer),
                            token_at(pids, Some(pl), i, tokenizer),
                        ));
                        return Some(d);
                    }
                } else if r.text != g.text {
                    return Some(diverge(turn, Cause::Text, r.text.clone(), produced_text));
                }
            }
            Some(Err(e)) => {
                return Some(diverge(
                    turn,
                    Cause::Policy(e.to_string()),
                    r.text.clone(),
                    produced_text,
                ));
            }
            None => return Some(diverge(turn, Cause::Text, r.text.clone(), produced_text)),
        }
        let produced_tool = seen.tool_texts.get(&turn);
        let missed = misses.iter().find(|m| m.context.turn == Some(turn));
        if r.tool_text.as_ref() != produced_tool || missed.is_some() {
            let cause = match missed {
                Some(m) => Cause::RequestNotRecorded {
                    request: m.request.clone(),
                },
                None => Cause::ToolResponse {
                    requests: requests_of(records, turn),
                },
            };
            return Some(diverge(
                turn,
                cause,
                r.tool_text.clone().unwrap_or_else(|| "(no tool response)".into()),
                produced_tool.cloned().unwrap_or_else(|| "(no tool response)".into()),
            ));
        }
    }
    if let Some(end) = &recorded.end
        && (end.reward.to_bits() != outcome.score.reward.to_bits() || end.ended_by != outcome.ended_by)
    {
        let last = recorded.turns.len().saturating_sub(1) as u32;
        return Some(diverge(
            last,
            Cause::Score,
            format!("reward {} ({})", end.reward, end.ended_by),
            format!("reward {} ({})", outcome.score.reward, outcome.ended_by),
        ));
    }
    None
}
