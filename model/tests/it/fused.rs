//! The fused kernels against the written-out reference: values and
//! gradients, and the whole model with either.

use candle_core::{D, DType, Device, Tensor, Var};
use fathom_core::SeededRng;
use fathom_model::Kernels;
use fathom_model::fused;

fn randn(rng: &mut SeededRng, shape: &[usize]) -> Var {
    let n: usize = shape.iter().product();
    let v: Vec<f32> = (0..n).map(|_| (rng.next_f64() * 2.0 - 1.0) as f32).collect();
    Var::from_tensor(&Tensor::from_vec(v, shape, &Device::Cpu).unwrap()).unwrap()
}

fn flat(t: &Tensor) -> Vec<f32> {
    t.flatten_all().unwrap().to_vec1().unwrap()
}

fn assert_close(a: &Tensor, b: &Tensor, tol: f32, what: &str) {
    assert_eq!(a.dims(), b.dims(), "{what}: shapes");
    let (x, y) = (flat(a), flat(b));
    let worst = x.iter().zip(&y).map(|(p, q)| (p - q).abs()).fold(0.0f32, f32::max);
    assert!(worst <= tol, "{what}: largest difference {worst} (tolerance {tol})");
}

/// Written-out causal attention with repeated key/value heads.
fn reference_attention(q: &Tensor, k: &Tensor, v: &Tensor, offset: usize) -> Tensor {
    let (b, h, t, d) = q.dims4().unwrap();
    let (_, kv, s, _) = k.dims4().unwrap();
    let rep = h / kv;
    let expand = |y: &Tensor| {
        Tensor::cat(&vec![y; rep], 2)
            .unwrap()
            .reshape((b, kv * rep, s, d))
            .unwrap()
    };
    // The model's own expansion repeats each kv head `rep` times in a row.
    let (k, v) = (
        expand(k)
            .reshape((b, kv, rep, s, d))
            .unwrap()
            .reshape((b, h, s, d))
            .unwrap(),
        expand(v)
            .reshape((b, kv, rep, s, d))
            .unwrap()
            .reshape((b, h, s, d))
            .unwrap(),
    );
    let scores = (q.matmul(&k.t().unwrap().contiguous().unwrap()).unwrap() / (d as f64).sqrt()).unwrap();
    let mask: Vec<f32> = (0..t)
        .flat_map(|i| (0..s).map(move |j| if j > offset + i { f32::NEG_INFINITY } else { 0.0 }))
        .collect();
    let mask = Tensor::from_vec(mask, (t, s), &Device::Cpu).unwrap();
    let probs = candle_nn::ops::softmax(&scores.broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
    probs.matmul(&v).unwrap()
}

#[test]
fn fused_attention_equals_the_written_out_one_in_values_and_gradients() {
    let mut rng = SeededRng::new(3);
    // Grouped heads (4 query heads over 2 key/value heads), and a cache
    // offset (3 cached keys before 5 new queries).
    for (offset, t) in [(0usize, 7usize), (3, 5), (6, 1)] {
        let s = offset + t;
        let q = randn(&mut rng, &[2, 4, t, 8]);
        let k = randn(&mut rng, &[2, 2, s, 8]);
        let v = randn(&mut rng, &[2, 2, s, 8]);
        let w = randn(&mut rng, &[2, 4, t, 8]);
        let a = fused::causal_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), offset).unwrap();
        let b = reference_attention(q.as_tensor(), k.as_tensor(), v.as_tensor(), offset);
        assert_close(&a, &b, 1e-5, "attention output");
        let ga = (&a * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gb = (&b * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for (name, x) in [("dq", &q), ("dk", &k), ("dv", &v)] {
            assert_close(
                ga.get(x.as_tensor()).unwrap(),
                gb.get(x.as_tensor()).unwrap(),
                1e-4,
                &format!("{name} at offset {offset}"),
            );
        }
    }
}

#[test]
fn fused_rms_norm_rotary_and_log_probs_equal_the_written_out_ones() {
    let mut rng = SeededRng::new(5);
    // RMSNorm over 150 rows (more than one task of rows).
    let x = randn(&mut rng, &[3, 50, 16]);
    let w = randn(&mut rng, &[16]);
    let g = randn(&mut rng, &[3, 50, 16]);
    let a = fused::rms_norm(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
    let b = candle_nn::ops::rms_norm_slow(x.as_tensor(), w.as_tensor(), 1e-6).unwrap();
    assert_close(&a, &b, 1e-5, "rms norm");
    let ga = (&a * g.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (&b * g.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    for (name, v) in [("dx", &x), ("dw", &w)] {
        assert_close(
            ga.get(v.as_tensor()).unwrap(),
            gb.get(v.as_tensor()).unwrap(),
            1e-4,
            name,
        );
    }

    // Rotary: x·cos + rotate_half(x)·sin.
    let x = randn(&mut rng, &[2, 3, 5, 8]);
    let g = randn(&mut rng, &[2, 3, 5, 8]);
    let angles: Vec<f32> = (0..40).map(|i| i as f32 * 0.37).collect();
    let theta = Tensor::from_vec(angles, (5, 8), &Device::Cpu).unwrap();
    let (cos, sin) = (theta.cos().unwrap(), theta.sin().unwrap());
    let a = fused::rotary(x.as_tensor(), &cos, &sin).unwrap();
    let x1 = x.as_tensor().narrow(D::Minus1, 0, 4).unwrap();
    let x2 = x.as_tensor().narrow(D::Minus1, 4, 4).unwrap();
    let rotated = Tensor::cat(&[&x2.neg().unwrap(), &x1], D::Minus1).unwrap();
    let b = (x.as_tensor().broadcast_mul(&cos).unwrap() + rotated.broadcast_mul(&sin).unwrap()).unwrap();
    assert_close(&a, &b, 1e-6, "rotary");
    let ga = (&a * g.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    let gb = (&b * g.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
    assert_close(
        ga.get(x.as_tensor()).unwrap(),
        gb.get(x.as_tensor()).unwrap(),
        1e-5,
        "rotary dx",
    );

    // Log-prob of the taken id and entropy, at temperature 0.7.
    let logits = randn(&mut rng, &[6, 11]);
    let targets = Tensor::new(&[0u32, 3, 10, 5, 5, 1], &Device::Cpu).unwrap();
    let (wl, wh) = (randn(&mut rng, &[6]), randn(&mut rng, &[6]));
    let (lp, h) = fused::taken_logprob_and_entropy(logits.as_tensor(), &targets, 0.7).unwrap();
    let z = (logits.as_tensor() / 0.7).unwrap();
    let logp_all = candle_nn::ops::log_softmax(&z, D::Minus1).unwrap();
    let lp_ref = logp_all
        .gather(&targets.unsqueeze(1).unwrap(), 1)
        .unwrap()
        .squeeze(1)
        .unwrap();
    let h_ref = (logp_all.exp().unwrap() * &logp_all)
        .unwrap()
        .sum(D::Minus1)
        .unwrap()
        .neg()
        .unwrap();
    assert_close(&lp, &lp_ref, 1e-5, "log-prob");
    assert_close(&h, &h_ref, 1e-5, "entropy");
    let loss = |lp: &Tensor, h: &Tensor| {
        ((lp * wl.as_tensor()).unwrap().sum_all().unwrap() + (h * wh.as_tensor()).unwrap().sum_all().unwrap()).unwrap()
    };
    let ga = loss(&lp, &h).backward().unwrap();
    let gb = loss(&lp_ref, &h_ref).backward().unwrap();
    assert_close(
        ga.get(logits.as_tensor()).unwrap(),
        gb.get(logits.as_tensor()).unwrap(),
        1e-5,
        "d logits",
    );
}

#[test]
fn a_model_on_fused_kernels_gives_the_reference_logits_and_gradients_and_the_same_bits_twice() {
    let (dir, mut m, ids) = crate::model::tiny_f32_with_two_rows();
    let run = |m: &fathom_model::LoadedModel| {
        let logits = m.model.forward(&ids, 0, None).unwrap();
        let loss = candle_nn::ops::log_softmax(&logits, D::Minus1)
            .unwrap()
            .narrow(D::Minus1, 0, 1)
            .unwrap()
            .sum_all()
            .unwrap();
        let grads = loss.backward().unwrap();
        let vars = m.vars.data().lock().unwrap();
        let mut named: Vec<(String, Vec<f32>)> = vars
            .iter()
            .map(|(n, v)| (n.clone(), flat(grads.get(v.as_tensor()).unwrap())))
            .collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        (logits, named)
    };
    assert_eq!(m.model.kernels(), Kernels::Reference, "models load on the reference");
    let (ref_logits, ref_grads) = run(&m);
    assert_eq!(m.model.set_kernels(Kernels::Fused), Kernels::Fused);
    let (logits, grads) = run(&m);
    assert_close(&logits, &ref_logits, 1e-4, "logits");
    for ((name, a), (_, b)) in grads.iter().zip(&ref_grads) {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        let scale = b.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1e-3);
        assert!(
            worst <= 1e-3 * scale,
            "{name}: gradients differ by {worst} (largest {scale})"
        );
    }
    let (again, grads_again) = run(&m);
    assert_eq!(flat(&again), flat(&logits), "the fused kernels are deterministic");
    assert_eq!(grads_again, grads);
    // A bf16 model keeps the reference kernels.
    let mut half = fathom_model::load(dir.path(), &Device::Cpu, DType::BF16).unwrap();
    assert_eq!(half.model.set_kernels(Kernels::Fused), Kernels::Reference);
}

#[test]
fn the_decoder_gives_the_model_s_logits_and_the_same_bits_however_tokens_are_grouped() {
    use fathom_model::decode::Decoder;
    let dir = tempfile::tempdir().unwrap();
    crate::model::tiny(dir.path());
    let mut m = fathom_model::load(dir.path(), &Device::Cpu, DType::F32).unwrap();
    m.model.set_kernels(Kernels::Fused);
    let ids: Vec<u32> = vec![5, 17, 40, 3, 99, 12, 8, 61, 7, 7, 30];
    let full = m
        .model
        .forward(
            &Tensor::new(ids.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap(),
            0,
            None,
        )
        .unwrap()
        .squeeze(0)
        .unwrap();
    let decoder = Decoder::of(&m.model).unwrap();
    // The prompt at once, then one token at a time: each step's logits are
    // the model's at that position.
    let mut cache = decoder.new_cache();
    let first = decoder.forward(&mut cache, &ids[..6]).unwrap();
    let expect = |pos: usize| flat(&full.get(pos).unwrap());
    let close = |a: &[f32], b: &[f32], what: &str| {
        let worst = a.iter().zip(b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
        assert!(worst < 1e-4, "{what}: logits differ by {worst}");
    };
    close(&first, &expect(5), "after the prompt");
    let mut stepwise = Vec::new();
    for (i, &id) in ids[6..].iter().enumerate() {
        stepwise = decoder.forward(&mut cache, &[id]).unwrap();
        close(&stepwise, &expect(6 + i), &format!("token {}", 6 + i));
    }
    assert_eq!(cache.len(), ids.len());
    // Token by token from the start, or all at once: the same bits.
    let mut one = decoder.new_cache();
    let mut last = Vec::new();
    for &id in &ids {
        last = decoder.forward(&mut one, &[id]).unwrap();
    }
    let mut all = decoder.new_cache();
    let at_once = decoder.forward(&mut all, &ids).unwrap();
    assert_eq!(last, at_once);
    assert_eq!(stepwise, at_once);
}
