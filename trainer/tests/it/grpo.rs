//! GRPO on a real (tiny) model: observation masking, and learning on a
//! task with a known optimum.

use std::collections::HashMap;

use candle_core::{Device, Tensor, Var};
use fathom_model::generate::{Request, generate};
use fathom_model::init::{TinySpec, write_tiny};
use fathom_model::sample::Sampling;
use fathom_model::{LoadedModel, load};
use fathom_trainer::grpo::{
    GrpoConfig, Sequence, TokenInputs, advantages, logprobs_and_entropy, sequence_loss, token_loss,
};
use fathom_trainer::optim::{AdamW, AdamWConfig};

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

#[test]
fn only_generated_tokens_carry_loss() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), 1);
    let cfg = GrpoConfig::default();
    let base = episode([60, 61, 62, 63, 64], [70, 71, 72, 73]);
    let g0 = grads_of(&m, std::slice::from_ref(&base), &cfg);
    assert!(g0.iter().flatten().any(|x| *x != 0.0), "the loss has a gradient");

    // The tool response after the last generated token, and the recorded
    // log-probs at masked positions, do not touch the gradients.
    let mut other = episode([60, 61, 62, 63, 64], [90, 91, 92, 93]);
    for (i, lp) in other.old_logprobs.iter_mut().enumerate() {
        if !other.generated[i] {
            *lp = 3.0;
        }
    }
    assert_eq!(grads_of(&m, &[other], &cfg), g0);

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

/// A task with a known optimum: the reward is the fraction of sampled
/// tokens whose id is even, so the best policy emits only even ids
/// (reward 1); a random tiny model starts near 0.5.
#[test]
fn grpo_raises_the_reward_on_a_task_with_a_known_optimum() {
    let dir = tempfile::tempdir().unwrap();
    let m = tiny(dir.path(), 7);
    let mut vars: HashMap<String, Var> = m.vars.data().lock().unwrap().clone();
    vars.retain(|_, _| true);
    let mut opt = AdamW::new(
        &vars,
        AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        },
    )
    .unwrap();
    let cfg = GrpoConfig {
        kl_coef: 0.0,
        entropy_coef: 0.0,
        ..GrpoConfig::default()
    };
    let prompts: Vec<Vec<u32>> = vec![vec![3, 4, 5], vec![20, 30], vec![7, 8, 9, 10]];
    let group = 8;
    let mut means = Vec::new();
    for step in 0..10u64 {
        let mut seqs = Vec::new();
        let mut rewards = Vec::new();
        let mut groups = Vec::new();
        for (p, prompt) in prompts.iter().enumerate() {
            for i in 0..group {
                let out = generate(
                    &m.model,
                    &m.tokenizer,
                    &Request {
                        prompt,
                        max_new_tokens: 8,
                        sampling: Sampling {
                            temperature: 1.0,
                            top_p: 1.0,
                        },
                        seed: step * 1000 + (p * group + i) as u64,
                        stop: &[],
                    },
                )
                .unwrap();
                let even = out.ids.iter().filter(|t| *t % 2 == 0).count() as f64;
                rewards.push(even / out.ids.len().max(1) as f64);
                groups.push(p as u64);
                let mut ids = prompt.clone();
                ids.extend(&out.ids);
                let mut generated = vec![false; prompt.len()];
                generated.extend(vec![true; out.ids.len()]);
                let mut old = vec![0.0; prompt.len()];
                old.extend(&out.logprobs);
                seqs.push(Sequence {
                    ids,
                    generated,
                    old_logprobs: old,
                    ref_logprobs: None,
                    advantage: 0.0,
                });
            }
        }
        means.push(rewards.iter().sum::<f64>() / rewards.len() as f64);
        for (s, a) in seqs.iter_mut().zip(advantages(&rewards, &groups)) {
            s.advantage = a;
        }
        let denom = seqs.iter().map(Sequence::loss_tokens).sum::<usize>() as f64;
        let terms = sequence_loss(&m.model, &seqs, &cfg, denom).unwrap();
        opt.step(&terms.loss.backward().unwrap(), 3e-2, 1.0).unwrap();
    }
    let first = (means[0] + means[1]) / 2.0;
    let last = (means[8] + means[9]) / 2.0;
    assert!(
        last >= first + 0.2,
        "GRPO should raise the even-token reward: per step {means:?}"
    );
}
