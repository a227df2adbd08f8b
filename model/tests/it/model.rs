//! The tiny model: written, loaded, deterministic, differentiable.

use candle_core::{DType, Device, Tensor};
use fathom_model::generate::{Request, generate};
use fathom_model::init::{TinySpec, write_tiny};
use fathom_model::sample::Sampling;

fn corpus() -> Vec<String> {
    let base = "The river flows through the capital city, founded in 1820 by the king. \
                <think>I need to search</think> <tool_call>{\"name\": \"web_search\"}</tool_call> \
                <answer>Paris</answer> Who founded the museum? The author wrote a novel in 1901.";
    (0..200).map(|i| format!("{base} {i} {}", i * 7)).collect()
}

/// A tiny model loaded in f32 on the CPU (its directory kept alive) and
/// two rows of eight ids.
pub(crate) fn tiny_f32_with_two_rows() -> (tempfile::TempDir, fathom_model::LoadedModel, candle_core::Tensor) {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let m = fathom_model::load(dir.path(), &candle_core::Device::Cpu, candle_core::DType::F32).unwrap();
    let ids = candle_core::Tensor::new(
        &[[5u32, 17, 40, 3, 99, 12, 8, 61], [7, 7, 7, 30, 2, 91, 14, 5]],
        &candle_core::Device::Cpu,
    )
    .unwrap();
    (dir, m, ids)
}

pub(crate) fn tiny(dir: &std::path::Path) {
    let spec = TinySpec {
        vocab: 600,
        ..TinySpec::default()
    };
    write_tiny(dir, &spec, corpus().iter()).expect("write tiny model");
}

#[test]
fn a_tiny_model_directory_has_the_hugging_face_layout_and_loads() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    for f in [
        "config.json",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
        "generation_config.json",
    ] {
        assert!(dir.path().join(f).exists(), "{f}");
    }
    let m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).expect("load");
    assert_eq!(m.config.num_hidden_layers, 2);
    for tag in fathom_model::tokenizer::PROTOCOL_TAGS {
        let ids = m.tokenizer.encode(tag).unwrap();
        assert_eq!(ids.len(), 1, "{tag} is one token");
        assert_eq!(m.tokenizer.decode(&ids).unwrap(), *tag, "{tag} survives decoding");
    }
    let ids = m.tokenizer.encode("<|im_start|>user\nWho?<|im_end|>").unwrap();
    assert_eq!(ids[0], m.tokenizer.token_id("<|im_start|>").unwrap());
    let x = Tensor::new(&ids[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let logits = m.model.forward(&x, 0, None).unwrap();
    assert_eq!(logits.dims(), &[1, ids.len(), m.config.vocab_size]);
}

#[test]
fn incremental_decoding_with_the_cache_matches_a_full_forward_pass() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let ids = m.tokenizer.encode("The river flows through the capital").unwrap();
    let x = Tensor::new(&ids[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let full: Vec<Vec<f32>> = m
        .model
        .forward(&x, 0, None)
        .unwrap()
        .squeeze(0)
        .unwrap()
        .to_vec2()
        .unwrap();
    let mut cache = m.model.new_cache();
    let head = Tensor::new(&ids[..3], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    m.model.forward(&head, 0, Some(&mut cache)).unwrap();
    for (i, &id) in ids.iter().enumerate().skip(3) {
        let one = Tensor::new(&[id], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let step: Vec<f32> = m
            .model
            .forward(&one, i, Some(&mut cache))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1()
            .unwrap();
        let diff = step
            .iter()
            .zip(&full[i])
            .map(|(a, b)| (a - b).abs())
            .fold(0.0f32, f32::max);
        assert!(diff < 1e-4, "position {i}: cached logits differ by {diff}");
    }
}

#[test]
fn sampling_is_reproducible_by_seed_and_greedy_ignores_it() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let prompt = m
        .tokenizer
        .encode("<|im_start|>user\nWho founded the museum?<|im_end|>\n<|im_start|>assistant\n")
        .unwrap();
    let run = |seed: u64, sampling: Sampling| {
        generate(
            &m.model,
            &m.tokenizer,
            &Request {
                prompt: &prompt,
                max_new_tokens: 24,
                sampling,
                seed,
                stop: &[],
            },
        )
        .unwrap()
    };
    let hot = Sampling {
        temperature: 1.0,
        top_p: 1.0,
    };
    let a = run(7, hot);
    let b = run(7, hot);
    assert_eq!(a, b, "same seed, same tokens, log-probs and text");
    assert_eq!(a.ids.len(), a.logprobs.len());
    assert!(a.logprobs.iter().all(|lp| lp.is_finite() && *lp <= 0.0));
    let c = run(8, hot);
    assert_ne!(a.ids, c.ids, "another seed, other tokens");
    let g1 = run(1, Sampling::GREEDY);
    let g2 = run(99, Sampling::GREEDY);
    assert_eq!(g1, g2, "greedy does not depend on the seed");
}

#[test]
fn after_one_backward_pass_every_parameter_has_a_finite_nonzero_gradient() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let ids = m
        .tokenizer
        .encode("The river flows through the capital city, founded in 1820")
        .unwrap();
    let n = ids.len();
    let x = Tensor::new(&ids[..n - 1], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let y = Tensor::new(&ids[1..], &Device::Cpu).unwrap();
    let logits = m.model.forward(&x, 0, None).unwrap().squeeze(0).unwrap();
    let loss = candle_nn::loss::cross_entropy(&logits, &y).unwrap();
    let grads = loss.backward().unwrap();
    let vars = m.vars.data().lock().unwrap();
    assert!(!vars.is_empty());
    for (name, var) in vars.iter() {
        let g = grads
            .get(var.as_tensor())
            .unwrap_or_else(|| panic!("{name} got no gradient"));
        let values: Vec<f32> = g.flatten_all().unwrap().to_vec1().unwrap();
        assert!(values.iter().all(|v| v.is_finite()), "{name}: non-finite gradient");
        assert!(values.iter().any(|v| *v != 0.0), "{name}: all-zero gradient");
    }
}

#[test]
fn bf16_weights_give_the_f32_logits_to_bf16_precision() {
    let dir = tempfile::tempdir().unwrap();
    tiny(dir.path());
    let f32m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    let bf16m = fathom_model::load(dir.path(), &Device::Cpu, DType::BF16).unwrap();
    let ids = f32m.tokenizer.encode("The author wrote a novel in 1901").unwrap();
    let x = Tensor::new(&ids[..], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
    let a: Vec<f32> = f32m
        .model
        .forward(&x, 0, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let b: Vec<f32> = bf16m
        .model
        .forward(&x, 0, None)
        .unwrap()
        .flatten_all()
        .unwrap()
        .to_vec1()
        .unwrap();
    let scale = a.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let worst = a.iter().zip(&b).fold(0.0f32, |m, (x, y)| m.max((x - y).abs()));
    assert!(scale > 0.0);
    assert!(
        worst < 0.05 * scale.max(1e-3),
        "bf16 differs by {worst} at logit scale {scale}"
    );
    let out = generate(
        &bf16m.model,
        &bf16m.tokenizer,
        &Request {
            prompt: &ids,
            max_new_tokens: 4,
            sampling: Sampling::GREEDY,
            seed: 0,
            stop: &[],
        },
    )
    .unwrap();
    assert_eq!(out.ids.len(), 4);
}
