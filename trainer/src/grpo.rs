//! GRPO's mathematics (DESIGN section 2): group-normalised advantages, the
//! PPO-clipped surrogate on recorded log-probs, the k3 KL estimator to a
//! reference policy, the entropy bonus, and the token-level masked mean,
//! as differentiable candle expressions. The training loop that feeds them
//! (rollouts, micro-batches, the optimizer, checkpoints) builds on these.

use candle_core::{D, DType, Device, Tensor};
use fathom_model::Qwen2;

/// The loss's settings (the paper's values by default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct GrpoConfig {
    /// PPO ratio clip ε: the ratio is kept within [1 − ε, 1 + ε].
    pub clip: f64,
    /// Coefficient of the KL penalty to the reference policy (0 disables).
    pub kl_coef: f64,
    /// Coefficient of the entropy bonus.
    pub entropy_coef: f64,
    /// Temperature the rollouts were sampled at; log-probs are recomputed
    /// under the same `softmax(logits / temperature)`.
    pub temperature: f64,
}

impl Default for GrpoConfig {
    fn default() -> Self {
        GrpoConfig {
            clip: 0.2,
            kl_coef: 0.001,
            entropy_coef: 0.001,
            temperature: 1.0,
        }
    }
}

/// `(r − mean) / (std + 1e-6)` within each group (unbiased std); a group
/// of one gets 0. `groups[i]` names the group of `rewards[i]`.
pub fn advantages(rewards: &[f64], groups: &[u64]) -> Vec<f64> {
    assert_eq!(rewards.len(), groups.len(), "one group per reward");
    let mut out = vec![0.0; rewards.len()];
    let mut ids: Vec<u64> = groups.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for g in ids {
        let members: Vec<usize> = (0..rewards.len()).filter(|&i| groups[i] == g).collect();
        if members.len() < 2 {
            continue;
        }
        let n = members.len() as f64;
        let mean = members.iter().map(|&i| rewards[i]).sum::<f64>() / n;
        let var = members.iter().map(|&i| (rewards[i] - mean).powi(2)).sum::<f64>() / (n - 1.0);
        for &i in &members {
            out[i] = (rewards[i] - mean) / (var.sqrt() + 1e-6);
        }
    }
    out
}

/// One episode as the trainer sees it: the ids of its whole context, which
/// of them the policy generated (only those carry loss: prompts and tool
/// responses are masked), and the log-prob each generated id had when it
/// was sampled.
#[derive(Debug, Clone, PartialEq)]
pub struct Sequence {
    /// Every id of the episode's context, in order.
    pub ids: Vec<u32>,
    /// `true` where the policy generated the id.
    pub generated: Vec<bool>,
    /// The sampling log-prob of each id (ignored where not generated).
    pub old_logprobs: Vec<f32>,
    /// The reference policy's log-probs, when the KL term is on.
    pub ref_logprobs: Option<Vec<f32>>,
    /// The episode's advantage, broadcast to its generated tokens.
    pub advantage: f64,
}

impl Sequence {
    /// Tokens that carry loss.
    pub fn loss_tokens(&self) -> usize {
        self.generated.iter().skip(1).filter(|g| **g).count()
    }
}

/// The loss of a (micro-)batch and what it is made of (token means).
#[derive(Debug)]
pub struct LossTerms {
    /// The scalar to differentiate.
    pub loss: Tensor,
    /// Mean clipped-surrogate term.
    pub pg_loss: f64,
    /// Mean k3 KL (0 without a reference).
    pub kl: f64,
    /// Mean entropy.
    pub entropy: f64,
    /// Fraction of tokens whose ratio left the clip range in the direction
    /// that clipping bounds.
    pub clip_frac: f64,
    /// Tokens that carried loss.
    pub tokens: usize,
}

/// Per-token inputs of the loss, all `[n]` except `entropy` (also `[n]`).
#[derive(Debug)]
pub struct TokenInputs<'a> {
    /// New log-probs of the taken tokens (differentiable).
    pub logp: &'a Tensor,
    /// Their sampling log-probs.
    pub old_logp: &'a Tensor,
    /// The reference policy's log-probs, if any.
    pub ref_logp: Option<&'a Tensor>,
    /// Advantage per token.
    pub advantage: &'a Tensor,
    /// 1 where the token carries loss, else 0.
    pub mask: &'a Tensor,
    /// Entropy of the new distribution at each position (differentiable).
    pub entropy: &'a Tensor,
}

/// The GRPO loss over tokens: `Σ mask · (pg + kl_coef·kl − entropy_coef·H) / denominator`,
/// where `pg = −min(ρA, clip(ρ, 1−ε, 1+ε)A)`, `ρ = exp(logp − old)` and
/// `kl = exp(ref − logp) − (ref − logp) − 1`. The denominator is the number of
/// loss tokens of the whole batch, so micro-batches accumulate to the
/// token-level mean.
pub fn token_loss(t: &TokenInputs<'_>, cfg: &GrpoConfig, denominator: f64) -> candle_core::Result<LossTerms> {
    let denom = denominator.max(1.0);
    let ratio = (t.logp - t.old_logp)?.exp()?;
    let unclipped = (&ratio * t.advantage)?;
    let clipped = (ratio.clamp(1.0 - cfg.clip, 1.0 + cfg.clip)? * t.advantage)?;
    let pg = unclipped.minimum(&clipped)?.neg()?;
    let kl = match t.ref_logp {
        Some(r) => {
            let d = (r - t.logp)?;
            ((d.exp()? - &d)? - 1.0)?
        }
        None => t.logp.zeros_like()?,
    };
    let per_token = ((&pg + (&kl * cfg.kl_coef)?)? - (t.entropy * cfg.entropy_coef)?)?;
    let loss = ((per_token * t.mask)?.sum_all()? / denom)?;
    let mean = |x: &Tensor| -> candle_core::Result<f64> {
        Ok((x.detach() * t.mask)?
            .sum_all()?
            .to_dtype(DType::F64)?
            .to_scalar::<f64>()?
            / denom)
    };
    // Clipping bounds the objective where ρ·A exceeds the clipped value.
    let was_clipped = unclipped.detach().gt(&clipped.detach())?.to_dtype(DType::F32)?;
    Ok(LossTerms {
        pg_loss: mean(&pg)?,
        kl: mean(&kl)?,
        entropy: mean(t.entropy)?,
        clip_frac: mean(&was_clipped)?,
        tokens: t.mask.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()? as usize,
        loss,
    })
}

/// Log-probs of `targets` and the entropy at each position, from logits
/// `[n, vocab]` under `softmax(logits / temperature)`.
pub fn logprobs_and_entropy(
    logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    let scaled = if (temperature - 1.0).abs() > f64::EPSILON && temperature > 0.0 {
        (logits / temperature)?
    } else {
        logits.clone()
    };
    let max = scaled.max_keepdim(D::Minus1)?.detach();
    let shifted = scaled.broadcast_sub(&max)?;
    let logp_all = shifted.broadcast_sub(&shifted.exp()?.sum_keepdim(D::Minus1)?.log()?)?;
    let taken = logp_all.gather(&targets.unsqueeze(1)?, 1)?.squeeze(1)?;
    let entropy = (logp_all.exp()? * &logp_all)?.sum(D::Minus1)?.neg()?;
    Ok((taken, entropy))
}

/// What the model computes for one sequence: the logits at the positions
/// whose next id carries loss (the only ones the loss needs; the forward
/// pass stops at the last of them), and those next ids' indices in
/// `seq.ids`.
pub struct LossLogits {
    /// `[k, vocab]`.
    pub logits: Tensor,
    /// Indices into `seq.ids` of the `k` predicted ids.
    pub targets: Vec<usize>,
}

/// The logits `model` gives where `seq` carries loss; `None` when it
/// carries none.
pub fn loss_logits(model: &Qwen2, seq: &Sequence) -> candle_core::Result<Option<LossLogits>> {
    let device = model.device();
    let targets: Vec<usize> = (1..seq.ids.len()).filter(|&i| seq.generated[i]).collect();
    let Some(&last) = targets.last() else {
        return Ok(None);
    };
    let input = Tensor::new(&seq.ids[..last], device)?.unsqueeze(0)?;
    let hidden = model.hidden(&input, 0, None)?.squeeze(0)?;
    let rows: Vec<u32> = targets.iter().map(|&i| (i - 1) as u32).collect();
    let hidden = hidden.index_select(&Tensor::new(rows.as_slice(), device)?, 0)?;
    Ok(Some(LossLogits {
        logits: model.logits(&hidden)?,
        targets,
    }))
}

/// The loss of `seqs` under `model` (one forward pass per sequence), with
/// `denominator` loss tokens in the whole batch.
pub fn sequence_loss(
    model: &Qwen2,
    seqs: &[Sequence],
    cfg: &GrpoConfig,
    denominator: f64,
) -> candle_core::Result<LossTerms> {
    let device: &Device = model.device();
    let mut total: Option<Tensor> = None;
    let (mut pg, mut kl, mut ent, mut clip, mut tokens) = (0.0, 0.0, 0.0, 0.0, 0);
    for s in seqs {
        let Some(LossLogits { logits, targets }) = loss_logits(model, s)? else {
            continue;
        };
        let k = targets.len();
        let ids: Vec<u32> = targets.iter().map(|&i| s.ids[i]).collect();
        let (logp, entropy) = logprobs_and_entropy(&logits, &Tensor::new(ids.as_slice(), device)?, cfg.temperature)?;
        let mask = Tensor::ones(k, DType::F32, device)?;
        let old: Vec<f32> = targets.iter().map(|&i| s.old_logprobs[i]).collect();
        let old = Tensor::new(old.as_slice(), device)?;
        let reference = match &s.ref_logprobs {
            Some(r) if cfg.kl_coef > 0.0 => {
                let r: Vec<f32> = targets.iter().map(|&i| r[i]).collect();
                Some(Tensor::new(r.as_slice(), device)?)
            }
            _ => None,
        };
        let adv = Tensor::full(s.advantage as f32, k, device)?;
        let terms = token_loss(
            &TokenInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: reference.as_ref(),
                advantage: &adv,
                mask: &mask,
                entropy: &entropy,
            },
            cfg,
            denominator,
        )?;
        pg += terms.pg_loss;
        kl += terms.kl;
        ent += terms.entropy;
        clip += terms.clip_frac;
        tokens += terms.tokens;
        total = Some(match total {
            Some(t) => (t + terms.loss)?,
            None => terms.loss,
        });
    }
    Ok(LossTerms {
        loss: match total {
            Some(t) => t,
            None => Tensor::zeros((), DType::F32, device)?,
        },
        pg_loss: pg,
        kl,
        entropy: ent,
        clip_frac: clip,
        tokens,
    })
}

/// Log-probs of `seq`'s loss-carrying ids under `model` (no gradient),
/// aligned with `seq.ids` (0 elsewhere): the reference policy's, for the
/// KL term.
pub fn sequence_logprobs(model: &Qwen2, seq: &Sequence, temperature: f64) -> candle_core::Result<Vec<f32>> {
    let mut out = vec![0.0f32; seq.ids.len()];
    if let Some(LossLogits { logits, targets }) = loss_logits(model, seq)? {
        let ids: Vec<u32> = targets.iter().map(|&i| seq.ids[i]).collect();
        let (lp, _) = logprobs_and_entropy(
            &logits.detach(),
            &Tensor::new(ids.as_slice(), model.device())?,
            temperature,
        )?;
        for (&i, v) in targets.iter().zip(lp.to_vec1::<f32>()?) {
            out[i] = v;
        }
    }
    Ok(out)
}

/// The behaviour-cloning loss of `seqs` for the supervised warm start:
/// the negative log-likelihood of the generated ids, summed and divided by
/// `denominator` (the batch's generated-token count, so micro-batches
/// accumulate to the token-level mean). Prompts and tool responses are
/// masked exactly as in GRPO. Returns the loss and its token count.
pub fn nll_loss(model: &Qwen2, seqs: &[Sequence], denominator: f64) -> candle_core::Result<(Tensor, usize)> {
    let device = model.device();
    let mut total: Option<Tensor> = None;
    let mut tokens = 0;
    for s in seqs {
        let Some(LossLogits { logits, targets }) = loss_logits(model, s)? else {
            continue;
        };
        let ids: Vec<u32> = targets.iter().map(|&i| s.ids[i]).collect();
        let (logp, _) = logprobs_and_entropy(&logits, &Tensor::new(ids.as_slice(), device)?, 1.0)?;
        let nll = (logp.sum_all()?.neg()? / denominator.max(1.0))?;
        tokens += targets.len();
        total = Some(match total {
            Some(t) => (t + nll)?,
            None => nll,
        });
    }
    let loss = match total {
        Some(t) => t,
        None => Tensor::zeros((), DType::F32, device)?,
    };
    Ok((loss, tokens))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(v: &[f32]) -> Tensor {
        Tensor::new(v, &Device::Cpu).unwrap()
    }

    fn close(a: f64, b: f64) {
        assert!((a - b).abs() < 1e-5, "{a} != {b}");
    }

    #[test]
    fn advantages_are_normalised_within_groups_with_the_unbiased_std() {
        let a = advantages(&[1.0, 0.0, 0.0, 1.0, 0.3, 0.7], &[7, 7, 7, 7, 9, 8]);
        // Group 7: mean 0.5, unbiased std sqrt(1/3).
        let expect = 0.5 / ((1.0f64 / 3.0).sqrt() + 1e-6);
        close(a[0], expect);
        close(a[1], -expect);
        close(a[2], -expect);
        close(a[3], expect);
        // Groups of one get nothing to learn from.
        assert_eq!(a[4], 0.0);
        assert_eq!(a[5], 0.0);
        // A group with equal rewards has zero advantage, not NaN.
        assert_eq!(advantages(&[0.5, 0.5], &[1, 1]), vec![0.0, 0.0]);
    }

    fn inputs(logp: &[f32], old: &[f32], adv: &[f32], mask: &[f32]) -> (Tensor, Tensor, Tensor, Tensor, Tensor) {
        (t(logp), t(old), t(adv), t(mask), t(&vec![0.0; logp.len()]))
    }

    #[test]
    fn the_clipped_surrogate_matches_hand_computed_values() {
        // Ratios 2, 1 and 0.5; advantages 1, 1 and -1; clip 0.2.
        let ln = |p: f32| p.ln();
        let (logp, old, adv, mask, ent) = inputs(
            &[ln(0.5), ln(0.25), ln(0.1)],
            &[ln(0.25), ln(0.25), ln(0.2)],
            &[1.0, 1.0, -1.0],
            &[1.0, 1.0, 1.0],
        );
        let cfg = GrpoConfig {
            kl_coef: 0.0,
            entropy_coef: 0.0,
            ..GrpoConfig::default()
        };
        let input = TokenInputs {
            logp: &logp,
            old_logp: &old,
            ref_logp: None,
            advantage: &adv,
            mask: &mask,
            entropy: &ent,
        };
        let terms = token_loss(&input, &cfg, 3.0).unwrap();
        // Per token: -min(2, 1.2) = -1.2; -min(1, 1) = -1; -min(-0.5, -0.8) = 0.8.
        close(terms.loss.to_scalar::<f32>().unwrap() as f64, (-1.2 - 1.0 + 0.8) / 3.0);
        close(terms.pg_loss, (-1.2 - 1.0 + 0.8) / 3.0);
        close(terms.clip_frac, 2.0 / 3.0);
        assert_eq!(terms.tokens, 3);

        // Masked tokens count for nothing, and the denominator is the
        // batch's token count.
        let mask2 = t(&[1.0, 0.0, 1.0]);
        let terms = token_loss(&TokenInputs { mask: &mask2, ..input }, &cfg, 2.0).unwrap();
        close(terms.loss.to_scalar::<f32>().unwrap() as f64, (-1.2 + 0.8) / 2.0);
        assert_eq!(terms.tokens, 2);
    }

    #[test]
    fn the_k3_kl_and_the_entropy_bonus_enter_with_their_coefficients() {
        let (logp, old, adv, mask, _) = inputs(&[0.5f32.ln()], &[0.5f32.ln()], &[0.0], &[1.0]);
        let reference = t(&[0.25f32.ln()]);
        let entropy = t(&[2.0]);
        let cfg = GrpoConfig {
            kl_coef: 0.1,
            entropy_coef: 0.01,
            ..GrpoConfig::default()
        };
        let terms = token_loss(
            &TokenInputs {
                logp: &logp,
                old_logp: &old,
                ref_logp: Some(&reference),
                advantage: &adv,
                mask: &mask,
                entropy: &entropy,
            },
            &cfg,
            1.0,
        )
        .unwrap();
        // d = ln 0.25 − ln 0.5 = −ln 2: kl = 0.5 + ln 2 − 1.
        let kl = 0.5 + 2f64.ln() - 1.0;
        close(terms.kl, kl);
        close(terms.entropy, 2.0);
        close(terms.loss.to_scalar::<f32>().unwrap() as f64, 0.1 * kl - 0.01 * 2.0);
    }

    #[test]
    fn log_probs_and_entropy_come_from_the_tempered_softmax() {
        let logits = Tensor::new(&[[0.0f32, 0.0], [2f32.ln(), 0.0]], &Device::Cpu).unwrap();
        let targets = Tensor::new(&[1u32, 0], &Device::Cpu).unwrap();
        let (lp, h) = logprobs_and_entropy(&logits, &targets, 1.0).unwrap();
        let lp: Vec<f32> = lp.to_vec1().unwrap();
        close(lp[0] as f64, 0.5f64.ln());
        close(lp[1] as f64, (2.0f64 / 3.0).ln());
        let h: Vec<f32> = h.to_vec1().unwrap();
        close(h[0] as f64, 2f64.ln());
        // At temperature 2 the second row's odds are sqrt(2) : 1.
        let (lp2, _) = logprobs_and_entropy(&logits, &targets, 2.0).unwrap();
        let r = 2f64.sqrt();
        close(lp2.to_vec1::<f32>().unwrap()[1] as f64, (r / (r + 1.0)).ln());
    }
}
