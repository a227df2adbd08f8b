//! Activation checkpointing gives the full backward pass's loss and
//! gradients.

use candle_core::{D, Device, Tensor};
use fathom_model::Kernels;

#[test]
fn checkpointed_gradients_equal_the_full_backward_pass() {
    let (_dir, mut m, ids) = crate::model::tiny_f32_with_two_rows();
    // A loss on some positions' log-probs of the next id.
    let head = |model: &fathom_model::Qwen2, hidden: &Tensor| -> candle_core::Result<Tensor> {
        let rows = hidden.reshape((16, hidden.dim(2)?))?;
        let picked = rows.index_select(&Tensor::new(&[1u32, 4, 6, 9, 13], &Device::Cpu)?, 0)?;
        let logp = candle_nn::ops::log_softmax(&model.logits(&picked)?, D::Minus1)?;
        let targets = Tensor::new(&[[40u32], [12], [61], [7], [14]], &Device::Cpu)?;
        logp.gather(&targets, 1)?.sum_all()?.neg()? / 5.0
    };
    for kernels in [Kernels::Reference, Kernels::Fused] {
        m.model.set_kernels(kernels);
        let vars = m.vars.data().lock().unwrap().clone();
        let full_loss = head(&m.model, &m.model.hidden(&ids, 0, None).unwrap()).unwrap();
        let full = full_loss.backward().unwrap();
        let (loss, (), grads) = m
            .model
            .checkpointed_backward(&ids, |h| Ok((head(&m.model, h)?, ())))
            .unwrap();
        assert_eq!(
            loss.to_scalar::<f32>().unwrap(),
            full_loss.to_scalar::<f32>().unwrap(),
            "{kernels:?}: the same loss"
        );
        let again = loss.backward().unwrap();
        assert!(
            vars.values().all(|v| again.get(v.as_tensor()).is_none()),
            "the loss comes back detached"
        );
        for (name, var) in &vars {
            let a = full
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{name}: no full gradient"));
            let b = grads
                .get(var.as_tensor())
                .unwrap_or_else(|| panic!("{kernels:?} {name}: no checkpointed gradient"));
            let (a, b) = (
                a.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
                b.flatten_all().unwrap().to_vec1::<f32>().unwrap(),
            );
            let scale = a.iter().map(|x| x.abs()).fold(0.0f32, f32::max).max(1e-6);
            let worst = a.iter().zip(&b).map(|(x, y)| (x - y).abs()).fold(0.0f32, f32::max);
            assert!(
                worst <= 1e-5 * scale,
                "{kernels:?} {name}: gradients differ by {worst} (largest {scale})"
            );
        }
        // Only weights' gradients are kept.
        assert_eq!(grads.get_ids().count(), vars.len(), "{kernels:?}");
    }
}
