//! AdamW (decoupled weight decay, as PyTorch's `torch.optim.AdamW`), global-norm
//! gradient clipping, and the warm-up + cosine learning-rate schedule. Our own
//! implementation so that its state can be saved and restored for `--resume`.

use crate::cuda::optim as fused;
use candle_core::{backprop::GradStore, DType, Result, Tensor, Var};
use std::collections::HashMap;

#[derive(Debug, Clone, Copy, serde::Serialize, serde::Deserialize, PartialEq)]
pub struct AdamWParams {
    pub beta1: f64,
    pub beta2: f64,
    pub eps: f64,
    pub weight_decay: f64,
}

impl Default for AdamWParams {
    fn default() -> Self {
        AdamWParams { beta1: 0.9, beta2: 0.95, eps: 1e-8, weight_decay: 0.1 }
    }
}

/// One parameter and its moments.
pub struct Slot {
    pub name: String,
    pub var: Var,
    pub m: Tensor,
    pub v: Tensor,
    /// Weight decay applies to matrices only (not to biases and norm gains).
    pub decay: bool,
}

pub struct AdamW {
    pub slots: Vec<Slot>,
    pub params: AdamWParams,
    /// Number of updates done (the bias-correction step t).
    pub t: u64,
}

impl AdamW {
    /// Parameters sorted by name, so the update order is deterministic.
    pub fn new(vars: HashMap<String, Var>, params: AdamWParams) -> Result<Self> {
        let mut named: Vec<(String, Var)> = vars.into_iter().collect();
        named.sort_by(|a, b| a.0.cmp(&b.0));
        let slots = named
            .into_iter()
            .map(|(name, var)| {
                let m = var.zeros_like()?;
                let v = var.zeros_like()?;
                let decay = var.rank() >= 2;
                Ok(Slot { name, var, m, v, decay })
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(AdamW { slots, params, t: 0 })
    }

    /// Global L2 norm of the gradients: one fused sum of squares per gradient (f32 on the
    /// device), one host synchronisation for all of them. `RHO_FUSED_KERNELS=0`:
    /// [`AdamW::grad_norm_composed`].
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        if crate::cuda::fused_enabled(crate::cuda::Fused::Optim) {
            self.grad_norm_fused(grads)
        } else {
            self.grad_norm_composed(grads)
        }
    }

    /// [`AdamW::grad_norm`] by the fused ops, whatever `RHO_FUSED_KERNELS` says.
    pub fn grad_norm_fused(&self, grads: &GradStore) -> Result<f64> {
        let mut parts = Vec::with_capacity(self.slots.len());
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                parts.push(fused::sum_squares(g)?);
            }
        }
        if parts.is_empty() {
            return Ok(0.0);
        }
        let sq = Tensor::stack(&parts, 0)?.to_dtype(DType::F64)?.sum_all()?.to_scalar::<f64>()?;
        Ok(sq.sqrt())
    }

    /// One update with learning rate `lr`; gradients are scaled by `grad_scale`
    /// (clipping). Parameters without a gradient are left alone. Per parameter: the two
    /// moments and the weights updated in place, math in f32 (`cuda::optim`).
    /// `RHO_FUSED_KERNELS=0`: [`AdamW::step_composed`] instead (A/B runs).
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        if crate::cuda::fused_enabled(crate::cuda::Fused::Optim) {
            self.step_fused(grads, lr, grad_scale)
        } else {
            self.step_composed(grads, lr, grad_scale)
        }
    }

    /// [`AdamW::step`] by the fused ops, whatever `RHO_FUSED_KERNELS` says.
    pub fn step_fused(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        let (p, bc1, bc2) = self.next_t();
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            fused::adam_moment(&s.m, g, p.beta1 as f32, grad_scale as f32, false)?;
            fused::adam_moment(&s.v, g, p.beta2 as f32, grad_scale as f32, true)?;
            let decay = if s.decay && p.weight_decay > 0.0 { 1.0 - lr * p.weight_decay } else { 1.0 };
            let a = fused::AdamApply { decay: decay as f32, step: (lr / bc1) as f32, inv_sqrt_bc2: (1.0 / bc2.sqrt()) as f32, eps: p.eps as f32 };
            fused::adam_apply(s.var.as_tensor(), &s.m, &s.v, a)?;
        }
        Ok(())
    }

    /// Counts one update: (the hyperparameters, 1 - beta1^t, 1 - beta2^t).
    fn next_t(&mut self) -> (AdamWParams, f64, f64) {
        self.t += 1;
        let p = self.params;
        (p, 1.0 - p.beta1.powi(self.t as i32), 1.0 - p.beta2.powi(self.t as i32))
    }

    /// [`AdamW::grad_norm`] composed of candle ops (one host synchronisation per parameter):
    /// the reference of the tests and the baseline of `rho bench optim`.
    pub fn grad_norm_composed(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_dtype(DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// [`AdamW::step`] composed of candle ops, one op per term (each a full pass that
    /// allocates, rounding to the storage type after each): the reference of the tests and
    /// the baseline of `rho bench optim`.
    pub fn step_composed(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        let (p, bc1, bc2) = self.next_t();
        for s in &mut self.slots {
            let Some(g) = grads.get(s.var.as_tensor()) else { continue };
            let g = if grad_scale != 1.0 { (g * grad_scale)? } else { g.clone() };
            s.m = ((&s.m * p.beta1)? + (&g * (1.0 - p.beta1))?)?;
            s.v = ((&s.v * p.beta2)? + (g.sqr()? * (1.0 - p.beta2))?)?;
            let mhat = (&s.m / bc1)?;
            let vhat = (&s.v / bc2)?;
            let update = (mhat / (vhat.sqrt()? + p.eps)?)?;
            let mut w = s.var.as_tensor().clone();
            if s.decay && p.weight_decay > 0.0 {
                w = (&w * (1.0 - lr * p.weight_decay))?;
            }
            s.var.set(&(w - (update * lr)?)?)?;
        }
        Ok(())
    }
}

/// Linear warm-up from 0 to `lr` over `warmup` steps, then cosine decay to
/// `min_lr` at `total` steps. `step` counts from 1.
pub fn lr_at(step: u64, total: u64, warmup: u64, lr: f64, min_lr: f64) -> f64 {
    if warmup > 0 && step <= warmup {
        return lr * step as f64 / warmup as f64;
    }
    if total <= warmup {
        return lr;
    }
    let progress = ((step - warmup) as f64 / (total - warmup) as f64).clamp(0.0, 1.0);
    min_lr + 0.5 * (lr - min_lr) * (1.0 + (std::f64::consts::PI * progress).cos())
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Tensor};

    #[test]
    fn schedule_warms_up_then_decays() {
        assert_eq!(lr_at(1, 100, 10, 1.0, 0.1), 0.1);
        assert_eq!(lr_at(10, 100, 10, 1.0, 0.1), 1.0);
        assert!((lr_at(55, 100, 10, 1.0, 0.1) - 0.55).abs() < 1e-12);
        assert!((lr_at(100, 100, 10, 1.0, 0.1) - 0.1).abs() < 1e-12);
        assert!(lr_at(30, 100, 10, 1.0, 0.1) > lr_at(31, 100, 10, 1.0, 0.1));
    }

    /// Matches torch.optim.AdamW(lr=0.1, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.1)
    /// on f(w) = sum(w^2) / 2 (gradient = w), two steps, computed by hand: the fused step and
    /// the composed one.
    #[test]
    fn adamw_matches_the_formula() -> Result<()> {
        for fused in [true, false] {
            let dev = Device::Cpu;
            let w = Var::from_tensor(&Tensor::new(&[[1.0f32, -2.0]], &dev)?)?;
            let mut opt = AdamW::new(HashMap::from([("w".to_string(), w.clone())]), AdamWParams::default())?;
            let (lr, b1, b2, eps, wd) = (0.1f64, 0.9f64, 0.95f64, 1e-8f64, 0.1f64);
            let mut expect = [1.0f64, -2.0];
            let mut m = [0f64; 2];
            let mut v = [0f64; 2];
            for t in 1..=2 {
                let loss = (w.as_tensor().sqr()?.sum_all()? * 0.5)?;
                let grads = loss.backward()?;
                if fused {
                    opt.step_fused(&grads, lr, 1.0)?;
                } else {
                    opt.step_composed(&grads, lr, 1.0)?;
                }
                for i in 0..2 {
                    let g = expect[i];
                    m[i] = b1 * m[i] + (1.0 - b1) * g;
                    v[i] = b2 * v[i] + (1.0 - b2) * g * g;
                    let mh = m[i] / (1.0 - b1.powi(t));
                    let vh = v[i] / (1.0 - b2.powi(t));
                    expect[i] = expect[i] * (1.0 - lr * wd) - lr * mh / (vh.sqrt() + eps);
                }
            }
            let got = w.as_tensor().flatten_all()?.to_vec1::<f32>()?;
            for i in 0..2 {
                assert!((got[i] as f64 - expect[i]).abs() < 1e-6, "fused={fused}: {got:?} vs {expect:?}");
            }
        }
        Ok(())
    }

    /// Parameters of several shapes (matrices with decay, a vector without), three steps with a
    /// clipping scale: the fused step against the composed one, from the same start.
    fn run_both(dtype: candle_core::DType) -> Result<(Vec<Vec<f32>>, Vec<Vec<f32>>, f64, f64)> {
        let dev = Device::Cpu;
        let shapes: [&[usize]; 3] = [&[37, 19], &[5, 3, 70], &[300]];
        let mut runs = Vec::new();
        let mut norms = Vec::new();
        for fused in [true, false] {
            let vars: HashMap<String, Var> = shapes
                .iter()
                .enumerate()
                .map(|(i, s)| {
                    // the same start for both runs: a fixed function of the position
                    let n: usize = s.iter().product();
                    let x: Vec<f32> = (0..n).map(|j| ((j * 7919 + i * 104729) % 1000) as f32 / 500.0 - 1.0).collect();
                    (format!("p{i}"), Var::from_tensor(&Tensor::from_vec(x, *s, &dev).unwrap().to_dtype(dtype).unwrap()).unwrap())
                })
                .collect();
            let mut opt = AdamW::new(vars.clone(), AdamWParams::default())?;
            let mut norm = 0.0;
            for step in 0..3 {
                let mut loss = Tensor::zeros((), candle_core::DType::F32, &dev)?;
                for (name, v) in &vars {
                    let c = (name.len() + step) as f64;
                    loss = (loss + (v.as_tensor().to_dtype(candle_core::DType::F32)?.sqr()?.sin()? * c)?.sum_all()?)?;
                }
                let grads = loss.backward()?;
                if fused {
                    norm = opt.grad_norm_fused(&grads)?;
                    opt.step_fused(&grads, 1e-2, 0.7)?;
                } else {
                    norm = opt.grad_norm_composed(&grads)?;
                    opt.step_composed(&grads, 1e-2, 0.7)?;
                }
            }
            let mut names: Vec<_> = vars.keys().cloned().collect();
            names.sort();
            runs.push(names.iter().map(|k| vars[k].as_tensor().to_dtype(candle_core::DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>());
            norms.push(norm);
        }
        let composed = runs.pop().unwrap();
        Ok((runs.pop().unwrap(), composed, norms[0], norms[1]))
    }

    #[test]
    fn fused_step_and_norm_match_the_composed_ones() -> Result<()> {
        let (fused, composed, nf, nc) = run_both(candle_core::DType::F32)?;
        assert!((nf - nc).abs() < 1e-6 * nc, "{nf} vs {nc}");
        for (a, b) in fused.iter().zip(&composed) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() < 2e-6, "{x} vs {y}");
            }
        }
        // the first run moved the weights (the comparison is not of two untouched copies)
        let start: f32 = (0..37 * 19).map(|j| (((j * 7919) % 1000) as f32 / 500.0 - 1.0 - fused[0][j]).abs()).sum();
        assert!(start > 1e-2, "{start}");
        // bf16: the composed step rounds after each of its ~8 terms (0.4% each), the fused one
        // once: the two agree to 2 units in the last place of the weight plus 5% of the three
        // updates of lr = 1e-2 (a missing bias correction would be 10x off)
        let (fused, composed, _, _) = run_both(candle_core::DType::BF16)?;
        for (a, b) in fused.iter().zip(&composed) {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= 2.0 * 2f32.powi(-7) * y.abs() + 0.05 * 3.0 * 1e-2, "{x} vs {y}");
            }
        }
        Ok(())
    }

    /// bf16 gradients: the fused norm accumulates in f64 on CPU (f32 on CUDA); candle's
    /// bf16 sum on CPU accumulates in bf16 (the composed norm was 14% low on this test).
    #[test]
    fn grad_norm_of_bf16_gradients_is_accumulated_in_high_precision() -> Result<()> {
        let dev = Device::Cpu;
        let w = Var::from_tensor(&Tensor::randn(0f32, 1.0, (300, 70), &dev)?.to_dtype(candle_core::DType::BF16)?)?;
        let opt = AdamW::new(HashMap::from([("w".to_string(), w.clone())]), AdamWParams::default())?;
        let grads = (w.as_tensor().to_dtype(candle_core::DType::F32)?.sqr()?.sum_all()? * 0.5)?.backward()?;
        let g = grads.get(w.as_tensor()).unwrap().to_dtype(candle_core::DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        let want = g.iter().map(|&x| (x as f64).powi(2)).sum::<f64>().sqrt();
        let got = opt.grad_norm_fused(&grads)?;
        assert!((got - want).abs() < 1e-6 * want, "{got} vs {want}");
        Ok(())
    }
}
