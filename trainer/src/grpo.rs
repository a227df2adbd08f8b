//! GRPO's mathematics (DESIGN section 2): group-normalised advantages, the
//! PPO-clipped surrogate on recorded log-probs, the k3 KL estimator to a
//! reference policy, the entropy bonus, and the token-level masked mean,
//! as differentiable candle expressions. The training loop that feeds them
//! (rollouts, micro-batches, the optimizer, checkpoints) builds on these.

use candle_core::backprop::GradStore;
use candle_core::{D, DType, Device, Tensor};
use fathom_model::{Kernels, Qwen2};

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

/// The bound of the per-token k3 KL term, as verl clamps it.
pub const KL_CLAMP: f64 = 10.0;

/// `(r − mean) / (std + 1e-6)` within each group (unbiased std); a group
/// of one keeps its raw reward (mean 0, std 1, as verl does). `groups[i]`
/// names the group of `rewards[i]`.
pub fn advantages(rewards: &[f64], groups: &[u64]) -> Vec<f64> {
    assert_eq!(rewards.len(), groups.len(), "one group per reward");
    let mut out = vec![0.0; rewards.len()];
    let mut ids: Vec<u64> = groups.to_vec();
    ids.sort_unstable();
    ids.dedup();
    for g in ids {
        let members: Vec<usize> = (0..rewards.len()).filter(|&i| groups[i] == g).collect();
        let (mean, std) = if members.len() < 2 {
            (0.0, 1.0)
        } else {
            let n = members.len() as f64;
            let mean = members.iter().map(|&i| rewards[i]).sum::<f64>() / n;
            let var = members.iter().map(|&i| (rewards[i] - mean).powi(2)).sum::<f64>() / (n - 1.0);
            (mean, var.sqrt())
        };
        for &i in &members {
            out[i] = (rewards[i] - mean) / (std + 1e-6);
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
/// `kl = clamp(exp(ref − logp) − (ref − logp) − 1, −10, 10)` (verl's
/// low-variance k3 estimator with its clamp, so one token far from the
/// reference cannot dominate a step). The denominator is the number of
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
            ((d.exp()? - &d)? - 1.0)?.clamp(-KL_CLAMP, KL_CLAMP)?
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

/// [`logprobs_and_entropy`] with the model's kernels (fused: one pass per
/// row, no `[n, vocab]` intermediates kept).
fn logprobs_for(
    model: &Qwen2,
    logits: &Tensor,
    targets: &Tensor,
    temperature: f64,
) -> candle_core::Result<(Tensor, Tensor)> {
    match model.kernels() {
        Kernels::Fused => {
            let t = if temperature > 0.0 { temperature } else { 1.0 };
            fathom_model::fused::taken_logprob_and_entropy(logits, targets, t)
        }
        Kernels::Reference => logprobs_and_entropy(logits, targets, temperature),
    }
}

/// What the model computes for a micro-batch: the logits at every position
/// whose next id carries loss, all sequences' rows in order, and for each
/// row the sequence and the index into its `ids` of the predicted id.
pub struct LossLogits {
    /// `[k, vocab]`.
    pub logits: Tensor,
    /// `(sequence, index into its ids)` of each row.
    pub targets: Vec<(usize, usize)>,
}

/// The id padded sequences are filled with. With right padding and a
/// causal mask no real position ever attends to it, so its value never
/// matters.
const PAD: u32 = 0;

/// A micro-batch laid out for one forward pass: the sequences right-padded
/// to the longest (each cut after its last loss-carrying id), and which
/// rows of the flattened output carry loss.
struct Padded {
    /// `[rows, width]` ids.
    input: Tensor,
    /// Flattened row index of each loss-carrying position.
    picked: Tensor,
    /// `(sequence, index into its ids)` of each picked row.
    targets: Vec<(usize, usize)>,
}

fn padded(device: &Device, seqs: &[Sequence]) -> candle_core::Result<Option<Padded>> {
    let targets: Vec<Vec<usize>> = seqs
        .iter()
        .map(|s| (1..s.ids.len()).filter(|&i| s.generated[i]).collect())
        .collect();
    // Each sequence is read up to the id before its last target.
    let lens: Vec<usize> = targets.iter().map(|t| t.last().copied().unwrap_or(0)).collect();
    let width = lens.iter().copied().max().unwrap_or(0);
    if width == 0 {
        return Ok(None);
    }
    let rows: Vec<usize> = (0..seqs.len()).filter(|&b| lens[b] > 0).collect();
    let mut input = Vec::with_capacity(rows.len() * width);
    let mut picked: Vec<u32> = Vec::new();
    let mut out_targets = Vec::new();
    for (r, &b) in rows.iter().enumerate() {
        input.extend_from_slice(&seqs[b].ids[..lens[b]]);
        input.extend(std::iter::repeat_n(PAD, width - lens[b]));
        for &i in &targets[b] {
            picked.push((r * width + i - 1) as u32);
            out_targets.push((b, i));
        }
    }
    Ok(Some(Padded {
        input: Tensor::from_vec(input, (rows.len(), width), device)?,
        picked: Tensor::new(picked.as_slice(), device)?,
        targets: out_targets,
    }))
}

/// The logits at the picked rows of `hidden` (`[rows, width, h]`).
fn picked_logits(model: &Qwen2, hidden: &Tensor, p: &Padded) -> candle_core::Result<Tensor> {
    let (rows, width, h) = hidden.dims3()?;
    model.logits(&hidden.reshape((rows * width, h))?.index_select(&p.picked, 0)?)
}

/// The logits `model` gives where `seqs` carry loss, from one forward pass
/// over the sequences right-padded to the longest (each cut after its last
/// loss-carrying id); `None` when none carries loss.
pub fn loss_logits(model: &Qwen2, seqs: &[Sequence]) -> candle_core::Result<Option<LossLogits>> {
    let Some(p) = padded(model.device(), seqs)? else {
        return Ok(None);
    };
    let hidden = model.hidden(&p.input, 0, None)?;
    Ok(Some(LossLogits {
        logits: picked_logits(model, &hidden, &p)?,
        targets: p.targets,
    }))
}

/// Runs `loss` on the logits of `seqs`' loss-carrying positions and
/// differentiates it: in one graph, or with `checkpointing` block by block
/// ([`Qwen2::checkpointed_backward`], which keeps only each block's input).
/// `loss` returns the scalar to differentiate and what goes with it; `None`
/// when nothing carries loss.
pub fn differentiate<T>(
    model: &Qwen2,
    seqs: &[Sequence],
    checkpointing: bool,
    loss: impl FnOnce(LossLogits) -> candle_core::Result<(Tensor, T)>,
) -> candle_core::Result<Option<(T, GradStore)>> {
    let Some(p) = padded(model.device(), seqs)? else {
        return Ok(None);
    };
    if checkpointing {
        let (_, extra, grads) = model.checkpointed_backward(&p.input, |hidden| {
            loss(LossLogits {
                logits: picked_logits(model, hidden, &p)?,
                targets: p.targets.clone(),
            })
        })?;
        return Ok(Some((extra, grads)));
    }
    let hidden = model.hidden(&p.input, 0, None)?;
    let (scalar, extra) = loss(LossLogits {
        logits: picked_logits(model, &hidden, &p)?,
        targets: p.targets,
    })?;
    Ok(Some((extra, scalar.backward()?)))
}

/// The loss of the micro-batch `seqs` under `model` (one padded forward
/// pass), with `denominator` loss tokens in the whole batch.
pub fn sequence_loss(
    model: &Qwen2,
    seqs: &[Sequence],
    cfg: &GrpoConfig,
    denominator: f64,
) -> candle_core::Result<LossTerms> {
    let device: &Device = model.device();
    match loss_logits(model, seqs)? {
        Some(l) => loss_terms(model, seqs, l, cfg, denominator),
        None => Ok(LossTerms {
            loss: Tensor::zeros((), DType::F32, device)?,
            pg_loss: 0.0,
            kl: 0.0,
            entropy: 0.0,
            clip_frac: 0.0,
            tokens: 0,
        }),
    }
}

/// [`sequence_loss`] and its gradients, with or without activation
/// checkpointing (see [`differentiate`]); `None` when nothing in `seqs`
/// carries loss. The returned terms' `loss` is detached.
pub fn sequence_loss_grads(
    model: &Qwen2,
    seqs: &[Sequence],
    cfg: &GrpoConfig,
    denominator: f64,
    checkpointing: bool,
) -> candle_core::Result<Option<(LossTerms, GradStore)>> {
    differentiate(model, seqs, checkpointing, |l| {
        let mut terms = loss_terms(model, seqs, l, cfg, denominator)?;
        let scalar = terms.loss.clone();
        // What is returned beside the scalar keeps no graph alive.
        terms.loss = terms.loss.detach();
        Ok((scalar, terms))
    })
}

/// The loss terms of `seqs` from their loss-carrying logits.
fn loss_terms(
    model: &Qwen2,
    seqs: &[Sequence],
    LossLogits { logits, targets }: LossLogits,
    cfg: &GrpoConfig,
    denominator: f64,
) -> candle_core::Result<LossTerms> {
    let device: &Device = model.device();
    let k = targets.len();
    let ids: Vec<u32> = targets.iter().map(|&(b, i)| seqs[b].ids[i]).collect();
    let (logp, entropy) = logprobs_for(model, &logits, &Tensor::new(ids.as_slice(), device)?, cfg.temperature)?;
    let mask = Tensor::ones(k, DType::F32, device)?;
    let old: Vec<f32> = targets.iter().map(|&(b, i)| seqs[b].old_logprobs[i]).collect();
    let old = Tensor::new(old.as_slice(), device)?;
    let reference = if cfg.kl_coef > 0.0 && seqs.iter().all(|s| s.ref_logprobs.is_some()) {
        let r: Vec<f32> = targets
            .iter()
            .map(|&(b, i)| seqs[b].ref_logprobs.as_ref().map_or(0.0, |r| r[i]))
            .collect();
        Some(Tensor::new(r.as_slice(), device)?)
    } else {
        None
    };
    let adv: Vec<f32> = targets.iter().map(|&(b, _)| seqs[b].advantage as f32).collect();
    let adv = Tensor::new(adv.as_slice(), device)?;
    token_loss(
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
    )
}

/// Log-probs of each sequence's loss-carrying ids under `model` (no
/// gradient), aligned with its `ids` (0 elsewhere): the reference policy's,
/// for the KL term, and the training forward pass's view of sampled
/// tokens. One padded forward pass for all of `seqs`.
pub fn sequence_logprobs(model: &Qwen2, seqs: &[Sequence], temperature: f64) -> candle_core::Result<Vec<Vec<f32>>> {
    let mut out: Vec<Vec<f32>> = seqs.iter().map(|s| vec![0.0f32; s.ids.len()]).collect();
    if let Some(p) = padded(model.device(), seqs)? {
        // Never differentiated: one block's intermediates alive at a time.
        let hidden = model.hidden_detached(&p.input)?;
        let logits = picked_logits(model, &hidden, &p)?.detach();
        let ids: Vec<u32> = p.targets.iter().map(|&(b, i)| seqs[b].ids[i]).collect();
        let (lp, _) = logprobs_for(
            model,
            &logits,
            &Tensor::new(ids.as_slice(), model.device())?,
            temperature,
        )?;
        for (&(b, i), v) in p.targets.iter().zip(lp.to_vec1::<f32>()?) {
            out[b][i] = v;
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
    let Some(l) = loss_logits(model, seqs)? else {
        return Ok((Tensor::zeros((), DType::F32, device)?, 0));
    };
    nll_of(model, seqs, l, denominator)
}

fn nll_of(
    model: &Qwen2,
    seqs: &[Sequence],
    LossLogits { logits, targets }: LossLogits,
    denominator: f64,
) -> candle_core::Result<(Tensor, usize)> {
    let ids: Vec<u32> = targets.iter().map(|&(b, i)| seqs[b].ids[i]).collect();
    let (logp, _) = logprobs_for(model, &logits, &Tensor::new(ids.as_slice(), model.device())?, 1.0)?;
    let nll = (logp.sum_all()?.neg()? / denominator.max(1.0))?;
    Ok((nll, targets.len()))
}

/// [`nll_loss`] (its value, detached, and token count) and its gradients,
/// with or without activation checkpointing; `None` when nothing carries
/// loss.
pub fn nll_loss_grads(
    model: &Qwen2,
    seqs: &[Sequence],
    denominator: f64,
    checkpointing: bool,
) -> candle_core::Result<Option<((Tensor, usize), GradStore)>> {
    let out = differentiate(model, seqs, checkpointing, |l| {
        let (nll, n) = nll_of(model, seqs, l, denominator)?;
        Ok((nll.clone(), (nll.detach(), n)))
    })?;
    Ok(out)
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
        // A group of one keeps its raw reward (mean 0, std 1), as verl does.
        close(a[4], 0.3 / (1.0 + 1e-6));
        close(a[5], 0.7 / (1.0 + 1e-6));
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
    fn the_k3_term_is_clamped_to_ten_with_no_gradient_beyond() {
        // ref − logp = 20: exp(20) − 20 − 1 is far above 10; −20 gives 19 − … ≈ 19.
        let logp = candle_core::Var::new(&[0.0f32, 0.0, 0.0], &Device::Cpu).unwrap();
        let reference = t(&[20.0, -20.0, 0.5]);
        let old = t(&[0.0, 0.0, 0.0]);
        let (adv, mask, ent) = (t(&[0.0; 3]), t(&[1.0; 3]), t(&[0.0; 3]));
        let cfg = GrpoConfig {
            kl_coef: 1.0,
            entropy_coef: 0.0,
            ..GrpoConfig::default()
        };
        let terms = token_loss(
            &TokenInputs {
                logp: logp.as_tensor(),
                old_logp: &old,
                ref_logp: Some(&reference),
                advantage: &adv,
                mask: &mask,
                entropy: &ent,
            },
            &cfg,
            3.0,
        )
        .unwrap();
        let inside = 0.5f64.exp() - 0.5 - 1.0;
        close(terms.kl, (10.0 + 10.0 + inside) / 3.0);
        let grads = terms.loss.backward().unwrap();
        let g: Vec<f32> = grads.get(logp.as_tensor()).unwrap().to_vec1().unwrap();
        // Clamped tokens pass no gradient; the third has d/dlogp = (1 − e^{0.5}) / 3.
        assert_eq!(&g[..2], &[0.0, 0.0]);
        close(f64::from(g[2]), (1.0 - 0.5f64.exp()) / 3.0);
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
