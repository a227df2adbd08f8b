//! Choosing the next token: greedy, or seeded temperature and top-p
//! sampling, always with the token's log-probability.
//!
//! The log-prob is taken under `softmax(logits / temperature)` over the
//! whole vocabulary (before top-p truncation), the distribution the trainer
//! recomputes for the PPO ratio; greedy decoding reports it at
//! temperature 1.

use fathom_core::SeededRng;

/// How to pick tokens.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus mass kept (1.0 keeps all).
    pub top_p: f64,
}

impl Sampling {
    /// Always the most likely token.
    pub const GREEDY: Sampling = Sampling {
        temperature: 0.0,
        top_p: 1.0,
    };

    /// Whether this is greedy decoding.
    pub fn is_greedy(&self) -> bool {
        self.temperature <= 0.0
    }
}

/// Log-softmax of `logits / temperature`, in f64.
pub fn log_softmax(logits: &[f32], temperature: f64) -> Vec<f64> {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let scaled: Vec<f64> = logits.iter().map(|&l| (l as f64 - max) / t).collect();
    let lse = scaled.iter().map(|s| s.exp()).sum::<f64>().ln();
    scaled.into_iter().map(|s| s - lse).collect()
}

/// Picks a token from `logits`; returns it with its log-prob.
pub fn pick(logits: &[f32], sampling: Sampling, rng: &mut SeededRng) -> (u32, f32) {
    let logp = log_softmax(logits, sampling.temperature);
    if sampling.is_greedy() {
        // Ties go to the lowest id, so greedy is fully deterministic.
        let (best, lp) =
            logp.iter().enumerate().fold(
                (0usize, f64::NEG_INFINITY),
                |acc, (i, &v)| if v > acc.1 { (i, v) } else { acc },
            );
        return (best as u32, lp as f32);
    }
    let mut order: Vec<usize> = (0..logp.len()).collect();
    order.sort_by(|&a, &b| logp[b].total_cmp(&logp[a]).then(a.cmp(&b)));
    let mut kept = Vec::new();
    let mut mass = 0.0;
    for i in order {
        let p = logp[i].exp();
        kept.push((i, p));
        mass += p;
        if mass >= sampling.top_p {
            break;
        }
    }
    let mut u = rng.next_f64() * mass;
    for &(i, p) in &kept {
        if u < p {
            return (i as u32, logp[i] as f32);
        }
        u -= p;
    }
    let (i, _) = *kept.last().expect("at least one token kept");
    (i as u32, logp[i] as f32)
}

/// Samples from `softmax(logits / temperature)` over the whole vocabulary
/// (top-p 1) without sorting it: one pass for the maximum, one for the
/// normaliser, one to find the token (in id order) where the cumulative
/// mass passes the uniform draw. Returns the token and its log-prob, as
/// [`pick`] does; a different (equally valid) draw than `pick`'s for the
/// same stream, so it is used only where recorded with the run (the fused
/// kernels).
pub fn pick_unsorted(logits: &[f32], temperature: f64, rng: &mut SeededRng) -> (u32, f32) {
    let t = if temperature > 0.0 { temperature } else { 1.0 };
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max) as f64;
    let sum: f64 = logits.iter().map(|&l| ((l as f64 - max) / t).exp()).sum();
    let lse = sum.ln();
    let logp = |i: usize| (logits[i] as f64 - max) / t - lse;
    let mut u = rng.next_f64() * sum;
    for (i, &l) in logits.iter().enumerate() {
        let w = ((l as f64 - max) / t).exp();
        if u < w {
            return (i as u32, logp(i) as f32);
        }
        u -= w;
    }
    // Rounding left the draw past the end: the last token with any mass.
    let i = logits
        .iter()
        .rposition(|&l| ((l as f64 - max) / t).exp() > 0.0)
        .unwrap_or(logits.len() - 1);
    (i as u32, logp(i) as f32)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsorted_sampling_follows_the_tempered_distribution() {
        let logits = [0.0f32, 1.0, 2.0, -30.0];
        let mut rng = SeededRng::new(9);
        let mut counts = [0usize; 4];
        for _ in 0..20_000 {
            let (i, lp) = pick_unsorted(&logits, 1.0, &mut rng);
            let expected = log_softmax(&logits, 1.0)[i as usize] as f32;
            assert!((lp - expected).abs() < 1e-6);
            counts[i as usize] += 1;
        }
        let p = log_softmax(&logits, 1.0);
        for i in 0..3 {
            let share = counts[i] as f64 / 20_000.0;
            assert!(
                (share - p[i].exp()).abs() < 0.015,
                "token {i}: {share} vs {}",
                p[i].exp()
            );
        }
        assert_eq!(counts[3], 0);
        // The same stream gives the same draws.
        let (mut a, mut b) = (SeededRng::new(4), SeededRng::new(4));
        for _ in 0..100 {
            assert_eq!(pick_unsorted(&logits, 0.7, &mut a), pick_unsorted(&logits, 0.7, &mut b));
        }
    }
}
