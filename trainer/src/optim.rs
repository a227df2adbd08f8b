//! AdamW with global-norm gradient clipping, whose whole state (both
//! moments and the step count) can be saved and restored exactly, so a
//! resumed run continues bit-for-bit (candle's own AdamW keeps its moments
//! private). The update is PyTorch's `AdamW`:
//!
//! ```text
//! θ ← θ − lr·wd·θ
//! m ← β1·m + (1 − β1)·g        v ← β2·v + (1 − β2)·g²
//! θ ← θ − lr · (m / (1 − β1ᵗ)) / (√(v / (1 − β2ᵗ)) + ε)
//! ```
//!
//! Mixed precision: for a variable stored in bf16 or f16 the optimizer
//! keeps an f32 master copy θ, updates it, and writes θ cast to the
//! variable's dtype back into the model after each step. Without it, a
//! step of 1e-6 on a weight near 0.02 (bf16 spacing there: 1.2e-4) would
//! round back to the same weight and the model would never learn. The
//! masters are part of the saved state, so a resumed run continues from
//! exactly the f32 weights it stopped at.

use std::collections::HashMap;

use candle_core::backprop::GradStore;
use candle_core::{DType, Tensor, Var};

/// Adds the gradients of `vars` in `grads` to `acc` (gradient
/// accumulation over micro-batches; everything else `grads` holds, the
/// intermediate tensors' gradients, is dropped).
pub fn accumulate(acc: &mut GradStore, grads: &GradStore, vars: &[Var]) -> candle_core::Result<()> {
    for v in vars {
        if let Some(x) = grads.get(v.as_tensor()) {
            let sum = match acc.get(v.as_tensor()) {
                Some(a) => (a + x)?,
                None => x.clone(),
            };
            acc.insert(v.as_tensor(), sum);
        }
    }
    Ok(())
}

/// AdamW's settings.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamWConfig {
    /// First-moment decay.
    pub beta1: f64,
    /// Second-moment decay.
    pub beta2: f64,
    /// Denominator guard.
    pub eps: f64,
    /// Decoupled weight decay.
    pub weight_decay: f64,
}

impl Default for AdamWConfig {
    fn default() -> Self {
        AdamWConfig {
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.01,
        }
    }
}

/// The optimizer over a fixed, named set of variables.
#[derive(Debug)]
pub struct AdamW {
    config: AdamWConfig,
    names: Vec<String>,
    vars: Vec<Var>,
    m: Vec<Tensor>,
    v: Vec<Tensor>,
    /// f32 master weights of the variables not stored in f32.
    master: Vec<Option<Tensor>>,
    step: u64,
}

/// What one step did.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepReport {
    /// Global gradient norm before clipping.
    pub grad_norm: f64,
    /// Whether the gradients were scaled down.
    pub clipped: bool,
}

impl AdamW {
    /// An optimizer over `vars` (name → variable; order is by name).
    pub fn new(vars: &HashMap<String, Var>, config: AdamWConfig) -> candle_core::Result<AdamW> {
        let mut named: Vec<(&String, &Var)> = vars.iter().collect();
        named.sort_by(|a, b| a.0.cmp(b.0));
        let mut out = AdamW {
            config,
            names: Vec::new(),
            vars: Vec::new(),
            m: Vec::new(),
            v: Vec::new(),
            master: Vec::new(),
            step: 0,
        };
        for (name, var) in named {
            out.names.push(name.clone());
            out.m.push(var.as_tensor().zeros_like()?.to_dtype(DType::F32)?);
            out.v.push(var.as_tensor().zeros_like()?.to_dtype(DType::F32)?);
            out.master.push(master_of(var)?);
            out.vars.push(var.clone());
        }
        Ok(out)
    }

    /// Steps taken.
    pub fn steps(&self) -> u64 {
        self.step
    }

    /// The f32 master copy of variable `name`, when it is stored in a
    /// lower precision (`None` for f32 variables and unknown names).
    pub fn master(&self, name: &str) -> Option<&Tensor> {
        let i = self.names.iter().position(|n| n == name)?;
        self.master[i].as_ref()
    }

    /// Clips the gradients to `max_norm` (global L2 norm; 0 disables) and
    /// takes one step at learning rate `lr`. Variables without a gradient
    /// are left alone (their moments too). Gradients that are not finite
    /// are an error, and change nothing.
    pub fn step(&mut self, grads: &GradStore, lr: f64, max_norm: f64) -> candle_core::Result<StepReport> {
        let gs: Vec<Option<Tensor>> = self
            .vars
            .iter()
            .map(|v| grads.get(v.as_tensor()).map(|g| g.to_dtype(DType::F32)))
            .map(Option::transpose)
            .collect::<candle_core::Result<_>>()?;
        let mut sq = 0.0f64;
        for g in gs.iter().flatten() {
            sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
        }
        let grad_norm = sq.sqrt();
        if !grad_norm.is_finite() {
            // Applied, it would make every weight NaN: the weights and the
            // moments stay as they are.
            candle_core::bail!(
                "the gradients are not finite (norm {grad_norm}), so no step was taken; the loss diverged (a learning rate too high, or a clip too loose)"
            );
        }
        let clipped = max_norm > 0.0 && grad_norm > max_norm;
        let scale = if clipped { max_norm / (grad_norm + 1e-6) } else { 1.0 };
        self.step += 1;
        let c = self.config;
        let t = self.step as i32;
        let bias1 = 1.0 - c.beta1.powi(t);
        let bias2 = 1.0 - c.beta2.powi(t);
        for (i, g) in gs.into_iter().enumerate() {
            let Some(g) = g else { continue };
            let g = if clipped { (g * scale)? } else { g };
            let m = ((&self.m[i] * c.beta1)? + (&g * (1.0 - c.beta1))?)?;
            let v = ((&self.v[i] * c.beta2)? + (g.sqr()? * (1.0 - c.beta2))?)?;
            let var = &self.vars[i];
            let theta = match &self.master[i] {
                Some(master) => master.clone(),
                None => var.as_tensor().clone(),
            };
            let decayed = (&theta * (1.0 - lr * c.weight_decay))?;
            let update = ((&m / bias1)? / (((&v / bias2)?.sqrt()? + c.eps)?))?;
            let next = (decayed - (update * lr)?)?;
            match &mut self.master[i] {
                Some(master) => {
                    var.set(&next.to_dtype(var.dtype())?)?;
                    *master = next;
                }
                None => var.set(&next)?,
            }
            self.m[i] = m;
            self.v[i] = v;
        }
        Ok(StepReport { grad_norm, clipped })
    }

    /// The whole state as named tensors (`m.<name>`, `v.<name>`,
    /// `master.<name>` for variables not stored in f32, `step`), for a
    /// safetensors file.
    pub fn state(&self) -> candle_core::Result<HashMap<String, Tensor>> {
        let mut out = HashMap::new();
        for (i, name) in self.names.iter().enumerate() {
            out.insert(format!("m.{name}"), self.m[i].clone());
            out.insert(format!("v.{name}"), self.v[i].clone());
            if let Some(master) = &self.master[i] {
                out.insert(format!("master.{name}"), master.clone());
            }
        }
        let device = self
            .vars
            .first()
            .map_or(candle_core::Device::Cpu, |v| v.device().clone());
        out.insert("step".into(), Tensor::new(&[self.step as i64], &device)?);
        Ok(out)
    }

    /// Restores a state written by [`AdamW::state`]; every moment must be
    /// there with its variable's shape. A variable not stored in f32 takes
    /// its master copy from the state, or, in a state saved without one,
    /// from its current value.
    pub fn load_state(&mut self, state: &HashMap<String, Tensor>) -> candle_core::Result<()> {
        for (i, name) in self.names.iter().enumerate() {
            if self.master[i].is_some() {
                let key = format!("master.{name}");
                self.master[i] = match state.get(&key) {
                    Some(t) if t.shape() != self.vars[i].shape() => candle_core::bail!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.shape(),
                        self.vars[i].shape()
                    ),
                    Some(t) => Some(t.to_dtype(DType::F32)?),
                    None => master_of(&self.vars[i])?,
                };
            }
            for (key, slot) in [
                (format!("m.{name}"), &mut self.m[i]),
                (format!("v.{name}"), &mut self.v[i]),
            ] {
                let t = state
                    .get(&key)
                    .ok_or_else(|| candle_core::Error::Msg(format!("optimizer state has no {key}")))?;
                if t.shape() != slot.shape() {
                    candle_core::bail!(
                        "optimizer state {key} has shape {:?}, expected {:?}",
                        t.shape(),
                        slot.shape()
                    );
                }
                *slot = t.to_dtype(DType::F32)?;
            }
        }
        let step = state
            .get("step")
            .ok_or_else(|| candle_core::Error::Msg("optimizer state has no step".into()))?;
        self.step = step
            .flatten_all()?
            .to_vec1::<i64>()?
            .first()
            .copied()
            .unwrap_or(0)
            .max(0) as u64;
        Ok(())
    }
}

/// An f32 copy of `var` when it is stored in another dtype.
fn master_of(var: &Var) -> candle_core::Result<Option<Tensor>> {
    if var.dtype() == DType::F32 {
        Ok(None)
    } else {
        Ok(Some(var.as_tensor().to_dtype(DType::F32)?.copy()?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    fn one_var(value: f32) -> (HashMap<String, Var>, Var) {
        let var = Var::new(&[value], &Device::Cpu).unwrap();
        (HashMap::from([("w".to_string(), var.clone())]), var)
    }

    /// Loss w² (gradient 2w).
    fn grads_of(var: &Var) -> GradStore {
        var.as_tensor().sqr().unwrap().sum_all().unwrap().backward().unwrap()
    }

    #[test]
    fn one_step_matches_the_hand_computed_update() {
        let (vars, var) = one_var(1.0);
        let cfg = AdamWConfig {
            weight_decay: 0.1,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&vars, cfg).unwrap();
        let report = opt.step(&grads_of(&var), 0.01, 0.0).unwrap();
        assert!((report.grad_norm - 2.0).abs() < 1e-9);
        // m̂ = g, v̂ = g²: the update is lr·g/(|g| + ε) ≈ lr, after decay.
        let expect = 1.0 * (1.0 - 0.01 * 0.1) - 0.01 * 2.0 / (2.0 + 1e-8);
        let got = var.as_tensor().to_vec1::<f32>().unwrap()[0] as f64;
        assert!((got - expect).abs() < 1e-6, "{got} vs {expect}");
    }

    #[test]
    fn gradients_that_are_not_finite_change_nothing() {
        // Loss w² at w = inf: the gradient is inf.
        let (vars, var) = one_var(f32::INFINITY);
        let mut opt = AdamW::new(&vars, AdamWConfig::default()).unwrap();
        let before = opt.state().unwrap()["m.w"].to_vec1::<f32>().unwrap();
        let err = opt.step(&grads_of(&var), 0.01, 1.0).unwrap_err().to_string();
        assert!(err.contains("not finite") && err.contains("no step was taken"), "{err}");
        assert_eq!(opt.steps(), 0);
        assert_eq!(opt.state().unwrap()["m.w"].to_vec1::<f32>().unwrap(), before);
        assert_eq!(var.as_tensor().to_vec1::<f32>().unwrap(), [f32::INFINITY]);
    }

    #[test]
    fn gradients_are_clipped_to_the_global_norm() {
        let (vars, var) = one_var(3.0);
        let mut opt = AdamW::new(&vars, AdamWConfig::default()).unwrap();
        let report = opt.step(&grads_of(&var), 0.0, 1.0).unwrap();
        assert!((report.grad_norm - 6.0).abs() < 1e-9);
        assert!(report.clipped);
        // With lr 0 nothing moves, but the first moment holds the clipped
        // gradient: (1 − β1)·6·(1/6).
        let m = opt.state().unwrap()["m.w"].to_vec1::<f32>().unwrap()[0] as f64;
        assert!((m - 0.1 * 6.0 / (6.0 + 1e-6)).abs() < 1e-6, "{m}");
    }

    #[test]
    fn a_restored_state_continues_bit_for_bit() {
        let run = |split: Option<usize>| -> Vec<f32> {
            let (vars, var) = one_var(0.7);
            let mut opt = AdamW::new(&vars, AdamWConfig::default()).unwrap();
            for step in 0..6 {
                if split == Some(step) {
                    // Save, rebuild everything from the saved values, go on.
                    let state = opt.state().unwrap();
                    let weights = var.as_tensor().to_vec1::<f32>().unwrap();
                    let (vars2, var2) = one_var(weights[0]);
                    let mut opt2 = AdamW::new(&vars2, AdamWConfig::default()).unwrap();
                    opt2.load_state(&state).unwrap();
                    for _ in step..6 {
                        opt2.step(&grads_of(&var2), 0.05, 1.0).unwrap();
                    }
                    return var2.as_tensor().to_vec1().unwrap();
                }
                opt.step(&grads_of(&var), 0.05, 1.0).unwrap();
            }
            var.as_tensor().to_vec1().unwrap()
        };
        let straight = run(None);
        let resumed = run(Some(3));
        assert_eq!(
            straight[0].to_bits(),
            resumed[0].to_bits(),
            "{straight:?} vs {resumed:?}"
        );
        assert_ne!(straight[0], 0.7);
    }

    #[test]
    fn bf16_weights_learn_at_a_learning_rate_below_their_spacing() {
        // Weights near 0.02, where bf16's spacing is 2^-13 ≈ 1.2e-4, and a
        // constant gradient: each step at lr 1e-6 moves θ by about 1e-6.
        let start = [0.02f32, -0.021, 0.019];
        let var = Var::from_tensor(
            &Tensor::new(&start, &Device::Cpu)
                .unwrap()
                .to_dtype(DType::BF16)
                .unwrap(),
        )
        .unwrap();
        let vars = HashMap::from([("w".to_string(), var.clone())]);
        let cfg = AdamWConfig {
            weight_decay: 0.0,
            ..AdamWConfig::default()
        };
        let mut opt = AdamW::new(&vars, cfg).unwrap();
        let grads = || var.as_tensor().to_dtype(DType::F32).unwrap().sum_all().unwrap();
        let stored = || var.as_tensor().to_dtype(DType::F32).unwrap().to_vec1::<f32>().unwrap();
        let initial = stored();
        let initial_master = opt
            .master("w")
            .expect("a bf16 variable has a master")
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(initial_master, initial, "the master starts at the stored weights");

        opt.step(&grads().backward().unwrap(), 1e-6, 0.0).unwrap();
        let master = opt.master("w").unwrap().to_vec1::<f32>().unwrap();
        for (m, w) in master.iter().zip(&initial) {
            let moved = w - m;
            assert!((moved - 1e-6).abs() < 2e-7, "one step moves the master by lr: {moved}");
        }
        // A sub-spacing step leaves the bf16 copy where it was (this is why
        // the master is needed) ...
        assert_eq!(stored(), initial);
        // ... and the master's accumulated steps move it once they pass half
        // the spacing: after 150 steps of 1e-6 every weight has moved, to
        // its master rounded to bf16.
        for _ in 1..150 {
            opt.step(&grads().backward().unwrap(), 1e-6, 0.0).unwrap();
        }
        let now = stored();
        let master = opt.master("w").unwrap();
        assert_eq!(
            now,
            master
                .to_dtype(DType::BF16)
                .unwrap()
                .to_dtype(DType::F32)
                .unwrap()
                .to_vec1::<f32>()
                .unwrap()
        );
        for (a, b) in now.iter().zip(&initial) {
            assert!(a < b, "every bf16 weight moved down: {now:?} from {initial:?}");
        }

        // The saved state carries the masters, and a restored optimizer
        // continues from them, not from the rounded weights.
        let state = opt.state().unwrap();
        assert!(state.contains_key("master.w"));
        let var2 = Var::from_tensor(var.as_tensor()).unwrap();
        let mut opt2 = AdamW::new(&HashMap::from([("w".to_string(), var2.clone())]), cfg).unwrap();
        opt2.load_state(&state).unwrap();
        assert_eq!(
            opt2.master("w").unwrap().to_vec1::<f32>().unwrap(),
            master.to_vec1::<f32>().unwrap()
        );
    }

    #[test]
    fn f32_variables_keep_no_master_copy() {
        let (vars, _) = one_var(1.0);
        let opt = AdamW::new(&vars, AdamWConfig::default()).unwrap();
        assert!(opt.master("w").is_none());
        assert!(!opt.state().unwrap().keys().any(|k| k.starts_with("master.")));
    }
}
