//! `--resume`: what the log holds about a run, and continuing it where it
//! stopped (see the parent module's documentation).

use super::rebuild::History;
use super::update::Learner;
use super::*;

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
        let s = History::read(store.as_ref(), run)?;
        let completed = s.completed();
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
        // Steps after the checkpoint are recomputed from their recorded
        // episodes (as a rebuild of the run's weights does); the data order
        // and the RNG advance as the steps did.
        for _ in restored + 1..=completed {
            trainer.plan();
        }
        let device = trainer.record.config.model.device.clone();
        let train = &trainer.data.train;
        let questions = |id: &fathom_core::QuestionId| train.iter().find(|q| &q.id == id);
        Learner {
            log: store.as_ref(),
            record: &trainer.record,
            model: &trainer.model,
            reference: trainer.reference.as_ref(),
            optimizer: &mut trainer.optimizer,
            questions: &questions,
            clock: trainer.env.clock.as_ref(),
        }
        .reapply(&s, restored + 1..=completed, &device)?;
        trainer.step = completed;
        trainer.env.observer.note(&format!(
            "resuming run {run} after step {completed} (checkpoint of step {restored}, {} step(s) recomputed from the log, {} finished episode(s) of step {} reused)",
            completed - restored,
            trainer.reuse.len(),
            completed + 1
        ));
        Ok(trainer)
    }
}
