//! Held-out evaluation of a model, on its own and during training.

use super::*;

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

impl Trainer {
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
}
