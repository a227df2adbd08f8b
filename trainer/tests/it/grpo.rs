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
