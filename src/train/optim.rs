//! AdamW (decoupled weight decay, as PyTorch's `torch.optim.AdamW`), global-norm
//! gradient clipping, and the warm-up + cosine learning-rate schedule. Our own
//! implementation so that its state can be saved and restored for `--resume`.

use candle_core::{backprop::GradStore, Result, Tensor, Var};
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

    /// Global L2 norm of the gradients.
    pub fn grad_norm(&self, grads: &GradStore) -> Result<f64> {
        let mut sq = 0f64;
        for s in &self.slots {
            if let Some(g) = grads.get(s.var.as_tensor()) {
                sq += g.sqr()?.sum_all()?.to_dtype(candle_core::DType::F64)?.to_scalar::<f64>()?;
            }
        }
        Ok(sq.sqrt())
    }

    /// One update with learning rate `lr`; gradients are scaled by `grad_scale`
    /// (clipping). Parameters without a gradient are left alone.
    pub fn step(&mut self, grads: &GradStore, lr: f64, grad_scale: f64) -> Result<()> {
        self.t += 1;
        let p = self.params;
        let bc1 = 1.0 - p.beta1.powi(self.t as i32);
        let bc2 = 1.0 - p.beta2.powi(self.t as i32);
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
    /// on f(w) = sum(w^2) / 2 (gradient = w), two steps, computed by hand.
    #[test]
    fn adamw_matches_the_formula() -> Result<()> {
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
            opt.step(&grads, lr, 1.0)?;
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
            assert!((got[i] as f64 - expect[i]).abs() < 1e-6, "{got:?} vs {expect:?}");
        }
        Ok(())
    }
}
