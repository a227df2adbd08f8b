//! The supervised warm start (behaviour cloning): record the scripted
//! researcher's trajectories (or take those the log already holds), keep
//! those whose reward reaches `sft.min_reward`, and train the model to
//! produce their turns, with the same masking as GRPO (only the assistant's
//! tokens carry loss). A tiny random model learns the protocol's format
//! this way before GRPO, so rewards are not all −1 at the first step.
//!
//! The warm start is a run of its own (`run_kind = sft`): the recorded
//! episodes, one `gradient_update` per optimizer step (the loss is the
//! mean negative log-likelihood), and a `checkpoint_saved` whose
//! directory is a model directory GRPO starts from.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use candle_core::backprop::GradStore;
use fathom_core::event::{CheckpointSaved, EndReason, GradientUpdate, RunFinished, RunKind, RunStarted, RunStatus};
use fathom_core::{EpisodeId, Event, IdKind, Payload, QuestionId, RunId, SeededRng, derive_seed};
use fathom_store::{Durability, Store};

use crate::candle_policy::parse_device;
use crate::checkpoint::{self, TrainerState};
use crate::config::TrainConfig;
use crate::grpo::{Sequence, nll_loss_grads};
use crate::harness::{Env, JobError, PolicyFactory, Question, run_episodes, sampled_events};
use crate::optim::accumulate;
use crate::recorded::{self, TurnIds};
use crate::rollout::{EpisodeSpec, Rollout};
use crate::scripted::ScriptedPolicy;
use crate::train::{RunRecord, adamw, checkpoints_dir, find_run, learning_rate, permutation};

/// What a warm start did.
#[derive(Debug, Clone)]
pub struct WarmStart {
    /// Its run.
    pub run: RunId,
    /// The model directory it wrote.
    pub dir: PathBuf,
    /// Scripted episodes it recorded.
    pub recorded: usize,
    /// Trajectories it trained on.
    pub trajectories: usize,
    /// Optimizer steps.
    pub updates: u64,
    /// Mean loss of the first and of the last optimizer step.
    pub loss: (f64, f64),
}

/// The model directory of the newest completed warm start of the
/// configuration `name`, if its files are still there and match the log.
pub fn find_warm_start(store: &Store, name: &str) -> Result<Option<PathBuf>, JobError> {
    let Some((run, _)) = find_run(store, name, RunKind::Sft)? else {
        return Ok(None);
    };
    let (mut saved, mut completed) = (None, false);
    for record in store.run_events(run) {
        match record?.event.payload {
            Payload::CheckpointSaved(c) => saved = Some(c),
            Payload::RunFinished(f) => completed = f.status == RunStatus::Completed,
            _ => {}
        }
    }
    let Some(c) = saved.filter(|_| completed) else {
        return Ok(None);
    };
    let dir = PathBuf::from(&c.path);
    match checkpoint::load_state(&dir, &c.weights_digest, &c.optimizer_digest, &candle_core::Device::Cpu) {
        Ok(_) => Ok(Some(dir)),
        Err(_) => Ok(None),
    }
}

/// One trajectory to clone: its episode and its question's text.
struct Example {
    episode: EpisodeId,
    question: String,
}

/// Scripted episodes in the whole log with reward at least `min_reward`.
fn scripted_in_log(store: &Store, min_reward: f64) -> Result<Vec<Example>, JobError> {
    let mut out = Vec::new();
    for run in store.runs()? {
        let mut scripted = false;
        let mut questions: HashMap<QuestionId, String> = HashMap::new();
        let mut started: HashMap<EpisodeId, QuestionId> = HashMap::new();
        for record in store.run_events(run) {
            match record?.event.payload {
                Payload::RunStarted(p) => scripted = p.policy == "scripted",
                Payload::QuestionSampled(p) if scripted => {
                    questions.insert(p.question_id, p.question);
                }
                Payload::EpisodeStarted(p) if scripted => {
                    started.insert(p.episode_id, p.question_id);
                }
                Payload::EpisodeFinished(p)
                    if scripted && p.reward >= min_reward && p.ended_by != EndReason::Aborted =>
                {
                    if let Some(q) = started.get(&p.episode_id).and_then(|q| questions.get(q)) {
                        out.push(Example {
                            episode: p.episode_id,
                            question: q.clone(),
                        });
                    }
                }
                _ => {}
            }
            if !scripted {
                break;
            }
        }
    }
    Ok(out)
}

/// Runs the warm start of `config` (which must have an `[sft]` section)
/// from the weights in `start_model`, over the training questions.
pub async fn warm_start(
    env: &Env,
    config: &TrainConfig,
    start_model: &Path,
    train: &[Question],
    today: &str,
) -> Result<WarmStart, JobError> {
    let sft = config
        .sft
        .clone()
        .ok_or_else(|| JobError::Invalid("the configuration has no [sft] section to warm-start with".into()))?;
    let store = &env.store;
    let clock = env.clock.clone();
    let run = store.new_run_id()?;
    let record = RunRecord {
        config: config.clone(),
        start_model: start_model.display().to_string(),
        today: today.to_string(),
        train_questions: train.len() as u64,
        eval_questions: 0,
        start_digest: crate::checkpoint::weights_digest(start_model).map(|d| d.to_hex()),
        threads: Some(candle_core::utils::get_num_threads()),
        protocol: fathom_core::protocol::Protocol::CURRENT,
        kernels: crate::train::kernels_for(config)?,
    };
    store.append(&[Event::new(
        run,
        clock.now(),
        RunStarted {
            name: config.name.clone(),
            run_kind: RunKind::Sft,
            config_json: serde_json::to_string(&record).expect("record serialises"),
            seed: config.seed,
            policy: format!("candle:{}", start_model.display()),
            model: String::new(),
            code_version: crate::CODE_VERSION.into(),
            attempt: 0,
        },
    )])?;
    let result = clone_trajectories(env, &record, &sft, run, start_model, train).await;
    let (status, message) = match &result {
        Ok(w) => (
            RunStatus::Completed,
            format!("{} trajectories, {} updates", w.trajectories, w.updates),
        ),
        Err(e) => (RunStatus::Failed, e.to_string()),
    };
    let steps = result.as_ref().map_or(0, |w| w.updates);
    store.append(&[Event::new(
        run,
        clock.now(),
        RunFinished {
            status,
            steps_completed: steps,
            message,
        },
    )])?;
    result
}

async fn clone_trajectories(
    env: &Env,
    record: &RunRecord,
    sft: &crate::config::SftSection,
    run: RunId,
    start_model: &Path,
    train: &[Question],
) -> Result<WarmStart, JobError> {
    let config = &record.config;
    let rollout_config = &record.rollout();
    let kernels = record.kernels;
    let store = &env.store;
    let clock = env.clock.clone();
    // 1. The scripted researcher's trajectories.
    let mut examples = Vec::new();
    if sft.scripted_episodes > 0 {
        if train.is_empty() {
            return Err(JobError::Invalid("there are no training questions to record".into()));
        }
        let order = permutation(config.seed, u64::MAX, train.len());
        let picked: Vec<(&Question, u64)> = (0..sft.scripted_episodes)
            .map(|i| (&train[order[i % train.len()]], i as u64))
            .collect();
        store.append_with(&sampled_events(run, clock.as_ref(), 0, &picked), Durability::Relaxed)?;
        let specs: Vec<EpisodeSpec> = picked
            .iter()
            .enumerate()
            .map(|(i, (q, _))| q.episode(0, i as u32, 0, derive_seed(config.seed, "sft-episode", i as u64)))
            .collect();
        let t = sft.teacher();
        let policies: PolicyFactory = Arc::new(move || Box::new(ScriptedPolicy::teacher(&t)));
        let teacher = ScriptedPolicy::teacher(&t);
        let rollout = Rollout::new(
            store.clone(),
            env.gateway.clone(),
            env.clock.clone(),
            run,
            rollout_config.clone(),
        );
        env.observer.phase("scripted trajectories", specs.len() as u64);
        let outcomes = run_episodes(
            &rollout,
            specs,
            &policies,
            config.rollout.concurrency,
            env.observer.as_ref(),
        )
        .await?;
        store.flush()?;
        for (((q, _), o), spec_seed) in picked
            .iter()
            .zip(&outcomes)
            .zip((0..picked.len()).map(|i| derive_seed(config.seed, "sft-episode", i as u64)))
        {
            // Guesses are kept whatever they scored: they are what the
            // warm start is to imitate on those episodes.
            if o.score.reward >= sft.min_reward || (teacher.guesses(spec_seed) && o.score.format_ok) {
                examples.push(Example {
                    episode: o.episode_id,
                    question: q.text.clone(),
                });
            }
        }
    } else {
        examples = scripted_in_log(store, sft.min_reward)?;
    }
    if examples.is_empty() {
        return Err(JobError::Invalid(format!(
            "no scripted trajectory reaches sft.min_reward = {}; lower it, or record some with sft.scripted_episodes",
            sft.min_reward
        )));
    }
    // 2. Their training sequences.
    let device = parse_device(&config.model.device)?;
    let dtype = fathom_model::dir::parse_dtype(&config.model.dtype)?;
    let mut loaded = fathom_model::load(start_model, &device, dtype)?;
    loaded.model.set_kernels(kernels);
    let tokenizer = &loaded.tokenizer;
    let max_positions = loaded.config.max_position_embeddings;
    let mut seqs: Vec<Sequence> = Vec::with_capacity(examples.len());
    for ex in &examples {
        let e = recorded::read_episode(store, ex.episode)?
            .ok_or_else(|| JobError::Invalid(format!("episode {} is not in the log", ex.episode)))?;
        let prompt = recorded::prompt_ids(tokenizer, rollout_config, &ex.question)?;
        let s = recorded::sequence(
            tokenizer,
            &prompt,
            &e,
            1.0,
            TurnIds::TextAllowed,
            rollout_config.protocol,
        )?;
        if s.ids.len() <= max_positions {
            seqs.push(s);
        }
    }
    // 3. Behaviour cloning.
    let mut optimizer = adamw(config, &loaded.vars)?;
    let vars = loaded.vars.all_vars();
    let batches_per_epoch = seqs.len().div_ceil(sft.batch) as u64;
    env.observer
        .phase("warm start", batches_per_epoch * u64::from(sft.epochs));
    let mut updates = 0u64;
    let (mut first, mut last) = (f64::NAN, f64::NAN);
    for epoch in 0..sft.epochs {
        let order = permutation(
            config.seed,
            derive_seed(u64::MAX - 1, "sft", u64::from(epoch)),
            seqs.len(),
        );
        for chunk in order.chunks(sft.batch) {
            let t0 = clock.now();
            let batch: Vec<Sequence> = chunk.iter().map(|&i| seqs[i].clone()).collect();
            let denominator = batch.iter().map(Sequence::loss_tokens).sum::<usize>() as f64;
            let mut grads = GradStore::default();
            let (mut loss, mut tokens, mut micro) = (0.0, 0, 0);
            for part in batch.chunks(config.grpo.micro_batch) {
                let computed = nll_loss_grads(&loaded.model, part, denominator, config.model.checkpointing)?;
                micro += 1;
                let Some(((l, n), part_grads)) = computed else {
                    continue;
                };
                loss += f64::from(l.to_scalar::<f32>()?);
                tokens += n;
                accumulate(&mut grads, &part_grads, &vars)?;
            }
            let lr = learning_rate(
                sft.lr,
                &sft.schedule,
                sft.warmup_steps,
                updates + 1,
                batches_per_epoch * u64::from(sft.epochs),
            );
            let report = optimizer.step(&grads, lr, config.grpo.max_grad_norm)?;
            updates += 1;
            if updates == 1 {
                first = loss;
            }
            last = loss;
            store.append_with(
                &[Event::new(
                    run,
                    clock.now(),
                    GradientUpdate {
                        step: updates,
                        policy_version: updates,
                        loss,
                        pg_loss: loss,
                        kl: 0.0,
                        entropy: 0.0,
                        clip_frac: 0.0,
                        grad_norm: report.grad_norm,
                        lr,
                        tokens: tokens as u64,
                        episodes: batch.len() as u32,
                        micro_batches: micro,
                        duration_ns: clock.now().nanos_since(t0),
                    },
                )],
                Durability::Relaxed,
            )?;
            env.observer.progress(updates, &format!("loss {loss:.3}"));
        }
    }
    // 4. The result, as a model directory GRPO starts from.
    let dir = checkpoints_dir(store, run).join("sft");
    let state = TrainerState {
        step: updates,
        policy_version: updates,
        data_cursor: 0,
        rng_state: SeededRng::new(config.seed).state().to_vec(),
    };
    let saved = checkpoint::save(&dir, start_model, &loaded.vars, &optimizer, &state)?;
    store.append_with(
        &[Event::new(
            run,
            clock.now(),
            CheckpointSaved {
                checkpoint_id: fathom_core::CheckpointId(store.next_id(IdKind::Checkpoint)?),
                step: updates,
                policy_version: updates,
                path: dir.display().to_string(),
                weights_digest: saved.weights_digest,
                optimizer_digest: saved.optimizer_digest,
                rng_state: state.rng_state,
                data_cursor: 0,
                bytes: saved.bytes,
                metric: Some(-last),
            },
        )],
        Durability::Durable,
    )?;
    Ok(WarmStart {
        run,
        dir,
        recorded: sft.scripted_episodes,
        trajectories: seqs.len(),
        updates,
        loss: (first, last),
    })
}
