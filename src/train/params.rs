//! Trainable parameters: a `VarMap` filled either from an HF checkpoint (continual
//! pretraining) or with a seeded random init, through candle-nn's `VarBuilder`, so
//! the same model code serves evaluation and training.

use crate::model::Weights;
use candle_core::{DType, Device, Shape, Tensor, Var};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarMap;
use rand::{Rng, SeedableRng};
use std::sync::Mutex;

/// Hands out `Var`s registered in `varmap`: loaded from `weights` when given
/// (shapes checked), else initialised: biases 0, norm gains 1, matrices N(0, std).
pub struct ParamSource {
    pub varmap: VarMap,
    weights: Option<Weights>,
    rng: Mutex<rand::rngs::StdRng>,
    std: f64,
}

impl ParamSource {
    pub fn new(weights: Option<Weights>, seed: u64, std: f64) -> Self {
        ParamSource { varmap: VarMap::new(), weights, rng: Mutex::new(rand::rngs::StdRng::seed_from_u64(seed)), std }
    }

    fn init(&self, shape: &Shape, name: &str, dev: &Device) -> candle_core::Result<Tensor> {
        let n = shape.elem_count();
        let leaf = name.rsplit('.').next().unwrap_or(name);
        if leaf == "bias" {
            return Tensor::zeros(shape, DType::F32, dev);
        }
        if shape.rank() == 1 {
            return Tensor::ones(shape, DType::F32, dev);
        }
        let mut rng = self.rng.lock().unwrap();
        let mut v = Vec::with_capacity(n);
        while v.len() < n {
            // Box-Muller
            let u1: f64 = rng.random::<f64>().max(1e-300);
            let u2: f64 = rng.random::<f64>();
            let r = (-2.0 * u1.ln()).sqrt() * self.std;
            v.push((r * (2.0 * std::f64::consts::PI * u2).cos()) as f32);
            v.push((r * (2.0 * std::f64::consts::PI * u2).sin()) as f32);
        }
        v.truncate(n);
        Tensor::from_vec(v, shape, dev)
    }
}

impl SimpleBackend for ParamSource {
    fn get(&self, s: Shape, name: &str, h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        if let Some(v) = self.varmap.data().lock().unwrap().get(name) {
            return Ok(v.as_tensor().clone());
        }
        let t = match &self.weights {
            Some(w) => w.get(s, name, h, dtype, dev)?,
            None => self.init(&s, name, dev)?.to_dtype(dtype)?,
        };
        let var = Var::from_tensor(&t)?;
        let out = var.as_tensor().clone();
        self.varmap.data().lock().unwrap().insert(name.to_string(), var);
        Ok(out)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        match &self.weights {
            Some(w) => w.get_unchecked(name, dtype, dev),
            None => candle_core::bail!("no tensor `{name}` in a freshly initialised model"),
        }
    }

    fn contains_tensor(&self, name: &str) -> bool {
        match &self.weights {
            Some(w) => w.contains(name),
            None => false,
        }
    }
}

/// The parameters of a `VarMap` cast to another dtype, through candle's differentiable
/// `to_dtype`: a model built from it each step computes in that dtype while the gradients
/// flow back to the f32 `Var`s (mixed precision: `rho train --dtype bf16`).
pub struct CastView(pub VarMap);

impl SimpleBackend for CastView {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.0.data().lock().unwrap();
        let Some(v) = data.get(name) else { candle_core::bail!("no parameter `{name}`") };
        if v.shape() != &s {
            candle_core::bail!("parameter `{name}` is {:?}, the model expects {s:?}", v.shape());
        }
        v.as_tensor().to_dtype(dtype)
    }

    fn get_unchecked(&self, name: &str, dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        let data = self.0.data().lock().unwrap();
        let Some(v) = data.get(name) else { candle_core::bail!("no parameter `{name}`") };
        v.as_tensor().to_dtype(dtype)
    }

    fn contains_tensor(&self, name: &str) -> bool {
        self.0.data().lock().unwrap().contains_key(name)
    }
}
