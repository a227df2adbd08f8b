//! GRPO's loss on a real (tiny) model, computed only where tokens carry loss.

use candle_core::{Device, Tensor, Var};
use fathom_model::init::{TinySpec, write_tiny};
use fathom_model::{LoadedModel, load};
use fathom_trainer::grpo::{GrpoConfig, Sequence, TokenInputs, logprobs_and_entropy, sequence_loss, token_loss};

fn tiny(dir: &std::path::Path, seed: u64) -> LoadedModel {
    let corpus: Vec<String> = (0..100)
        .map(|i| format!("The river {i} flows through the capital. <think>search</think> <answer>x</answer>"))
        .collect();
    write_tiny(
        dir,
        &TinySpec {
            vocab: 500,
            seed,
            ..TinySpec::default()
        },
        corpus.iter(),
    )
    .unwrap();
    load(dir, &Device::Cpu, candle_core::DType::F32).unwrap()
}

fn grads_of(m: &LoadedModel, seqs: &[Sequence], cfg: &GrpoConfig) -> Vec<Vec<f32>> {
    let denom = seqs.iter().map(Sequence::loss_tokens).sum::<usize>() as f64;
    let terms = sequence_loss(&m.model, seqs, cfg, denom).unwrap();
    let g = terms.loss.backward().unwrap();
    let mut named: Vec<(String, Var)> = m.vars.data().lock().unwrap().clone().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    named
        .iter()
        .map(|(_, v)| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
        .collect()
}

/// prompt (5) · generated (4) · tool response (5) · generated (3) · tool response (4)
fn episode(tool_a: [u32; 5], tool_b: [u32; 4]) -> Sequence {
    let mut ids = vec![10, 11, 12, 13, 14];
    let mut generated = vec![false; 5];
    ids.extend([40, 41, 42, 43]);
    generated.extend([true; 4]);
    ids.extend(tool_a);
    generated.extend([false; 5]);
    ids.extend([50, 51, 52]);
    generated.extend([true; 3]);
    ids.extend(tool_b);
    generated.extend([false; 4]);
    let old_logprobs = (0..ids.len()).map(|i| -5.0 - 0.1 * i as f32).collect();
    Sequence {
        ids,
        generated,
        old_logprobs,
        ref_logprobs: None,
        advantage: 0.7,
    }
}

/// The loss skips the logits of masked positions; it must equal the
/// masked loss over every position written out (candle.rs checks that
/// masked tokens carry no gradient).
#[test]
fn the_loss_over_generated_positions_equals_the_masked_loss_over_all() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), 1);
    let cfg = GrpoConfig::default();
    let base = episode([60, 61, 62, 63, 64], [70, 71, 72, 73]);
    let g0 = grads_of(&m, std::slice::from_ref(&base), &cfg);
    assert!(g0.iter().flatten().any(|x| *x != 0.0), "the loss has a gradient");

    // The loss over the whole sequence with the mask written out equals
    // the loss over the generated positions only.
    let denom = base.loss_tokens() as f64;
    let n = base.ids.len();
    let input = Tensor::new(&base.ids[..n - 1], &Device::Cpu)
        .unwrap()
        .unsqueeze(0)
        .unwrap();
    let targets = Tensor::new(&base.ids[1..], &Device::Cpu).unwrap();
    let logits = m.model.forward(&input, 0, None).unwrap().squeeze(0).unwrap();
    let (logp, entropy) = logprobs_and_entropy(&logits, &targets, 1.0).unwrap();
    let mask: Vec<f32> = base.generated[1..].iter().map(|g| f32::from(u8::from(*g))).collect();
    let full = token_loss(
        &TokenInputs {
            logp: &logp,
            old_logp: &Tensor::new(&base.old_logprobs[1..], &Device::Cpu).unwrap(),
            ref_logp: None,
            advantage: &Tensor::full(0.7f32, n - 1, &Device::Cpu).unwrap(),
            mask: &Tensor::new(mask.as_slice(), &Device::Cpu).unwrap(),
            entropy: &entropy,
        },
        &cfg,
        denom,
    )
    .unwrap();
    let sub = sequence_loss(&m.model, std::slice::from_ref(&base), &cfg, denom).unwrap();
    let (a, b) = (
        full.loss.to_scalar::<f32>().unwrap(),
        sub.loss.to_scalar::<f32>().unwrap(),
    );
    assert!(
        (a - b).abs() < 1e-5,
        "masked full loss {a} != loss over generated positions {b}"
    );
    assert_eq!(full.tokens, 7);

    // The checks can fail: unmasking the tool response changes the gradients.
    let mut unmasked = base.clone();
    for g in &mut unmasked.generated[9..14] {
        *g = true;
    }
    assert_ne!(grads_of(&m, &[unmasked], &cfg), g0);
}

/// GRPO's and the warm start's losses differentiated with activation
/// checkpointing give the one-graph values and gradients (to rounding),
/// on both kernels, for a padded micro-batch.
#[test]
fn checkpointed_training_passes_equal_the_one_graph_passes() {
    use fathom_trainer::grpo::{nll_loss_grads, sequence_loss_grads};
    let dir = tempfile::tempdir().unwrap();
    let mut m = tiny(dir.path(), 2);
    let cfg = GrpoConfig::default();
    let mut short = episode([60, 61, 62, 63, 64], [70, 71, 72, 73]);
    short.ids.truncate(14);
    short.generated.truncate(14);
    short.old_logprobs.truncate(14);
    short.advantage = -0.4;
    let batch = [episode([60, 61, 62, 63, 64], [70, 71, 72, 73]), short];
    let denom = batch.iter().map(Sequence::loss_tokens).sum::<usize>() as f64;
    let mut named: Vec<(String, Var)> = m.vars.data().lock().unwrap().clone().into_iter().collect();
    named.sort_by(|a, b| a.0.cmp(&b.0));
    let flat = |g: &candle_core::backprop::GradStore| -> Vec<Vec<f32>> {
        named
            .iter()
            .map(|(_, v)| g.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap())
            .collect()
    };
    let close = |a: &[Vec<f32>], b: &[Vec<f32>], what: &str| {
        for ((x, y), (name, _)) in a.iter().zip(b).zip(&named) {
            let scale = x.iter().map(|v| v.abs()).fold(0.0f32, f32::max).max(1e-6);
            let worst = x.iter().zip(y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
            assert!(worst <= 1e-5 * scale, "{what} {name}: {worst} of {scale}");
        }
    };
    for kernels in [fathom_model::Kernels::Reference, fathom_model::Kernels::Fused] {
        m.model.set_kernels(kernels);
        let (t0, g0) = sequence_loss_grads(&m.model, &batch, &cfg, denom, false)
            .unwrap()
            .unwrap();
        let (t1, g1) = sequence_loss_grads(&m.model, &batch, &cfg, denom, true)
            .unwrap()
            .unwrap();
        assert_eq!(t0.loss.to_scalar::<f32>().unwrap(), t1.loss.to_scalar::<f32>().unwrap());
        assert_eq!((t0.tokens, t0.clip_frac), (t1.tokens, t1.clip_frac));
        close(&flat(&g0), &flat(&g1), &format!("{kernels:?} grpo"));
        let ((l0, n0), h0) = nll_loss_grads(&m.model, &batch, denom, false).unwrap().unwrap();
        let ((l1, n1), h1) = nll_loss_grads(&m.model, &batch, denom, true).unwrap().unwrap();
        assert_eq!(
            (l0.to_scalar::<f32>().unwrap(), n0),
            (l1.to_scalar::<f32>().unwrap(), n1)
        );
        close(&flat(&h0), &flat(&h1), &format!("{kernels:?} nll"));
    }
    // Nothing carries loss: nothing to differentiate.
    let mut none = batch[0].clone();
    none.generated.iter_mut().for_each(|g| *g = false);
    assert!(
        sequence_loss_grads(&m.model, &[none], &cfg, 1.0, true)
            .unwrap()
            .is_none()
    );
}
