//! One GRPO update from the recorded episodes of a step, shared by the
//! training loop, `--resume` and the rebuild of a run's weights after any
//! step ([`super::rebuild`]): all three read the batch from the log.

use fathom_core::{Clock, QuestionId};
use fathom_store::LogRead;

use super::*;

/// What one update reads and changes, borrowed from a [`Trainer`] or from
/// a rebuild's working state.
pub(crate) struct Learner<'a> {
    /// The log the episodes are read from.
    pub log: &'a dyn LogRead,
    /// The run's configuration and what it resolved to.
    pub record: &'a RunRecord,
    /// The weights being trained (changed in place).
    pub model: &'a CandleModel,
    /// The frozen reference policy of the KL term, when `kl_coef > 0`.
    pub reference: Option<&'a LoadedModel>,
    /// The optimizer and its moments.
    pub optimizer: &'a mut AdamW,
    /// A question's text and answers, by id.
    pub questions: &'a dyn Fn(&QuestionId) -> Option<&'a Question>,
    /// Timestamps for the timings.
    pub clock: &'a dyn Clock,
}

impl Trainer {
    /// One optimizer step on the recorded episodes `ids` (in group order).
    /// Returns the update, where its time went, and the batch's mean reward.
    pub(super) fn update(
        &mut self,
        step: u64,
        ids: &[EpisodeId],
    ) -> Result<(GradientUpdate, StepTimings, f64), JobError> {
        let lr = self.lr(step);
        let train = &self.data.train;
        let questions = |id: &QuestionId| train.iter().find(|q| &q.id == id);
        Learner {
            log: self.env.store.as_ref(),
            record: &self.record,
            model: &self.model,
            reference: self.reference.as_ref(),
            optimizer: &mut self.optimizer,
            questions: &questions,
            clock: self.env.clock.as_ref(),
        }
        .update(step, ids, lr)
    }
}

/// A step whose update is not finite: the run stops before it touches the
/// weights, and its checkpoints stay as they were.
fn diverged(step: u64, what: &str, lr: f64) -> JobError {
    JobError::Invalid(format!(
        "step {step} diverged ({what}), so its update was not applied and the run stops here; its last checkpoint is intact. Start again (from that checkpoint as model.path, or from the start) with a lower grpo.lr (this step's was {lr}) or a tighter grpo.max_grad_norm"
    ))
}

impl Learner<'_> {
    fn config(&self) -> &TrainConfig {
        &self.record.config
    }

    /// One optimizer step at learning rate `lr` on the recorded episodes
    /// `ids` (in group order). Returns the update, where its time went, and
    /// the batch's mean reward.
    pub(crate) fn update(
        &mut self,
        step: u64,
        ids: &[EpisodeId],
        lr: f64,
    ) -> Result<(GradientUpdate, StepTimings, f64), JobError> {
        let mut timings = StepTimings::default();
        let clock = self.clock;
        let t_read = clock.now();
        let tokenizer = &self.model.loaded().tokenizer;
        let rollout = self.record.rollout();
        let mut episodes: Vec<RecordedEpisode> = Vec::with_capacity(ids.len());
        for id in ids {
            let records = self.log.episode_records(*id)?;
            let e = recorded::episode_of(self.log, *id, &records)?
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
            let question = (self.questions)(&e.question_id).ok_or_else(|| {
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
            if !loss.is_finite() {
                return Err(diverged(step, &format!("the loss is {loss}"), lr));
            }
            let t_opt = clock.now();
            let report = self
                .optimizer
                .step(&grads, lr, self.config().grpo.max_grad_norm)
                .map_err(|e| diverged(step, &e.to_string(), lr))?;
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
}
