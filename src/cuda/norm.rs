//! RMSNorm with a backward pass (training): one op forward and one backward, instead of the
//! 6 candle ops of the differentiable composition (square, mean, add, sqrt, divide, multiply)
//! and the dozen of their gradients.
//!
//! y = x rs w, rs = 1 / sqrt(mean(x^2) + eps) per row of the last dim; the gradient
//! dx = rs (dy w) - x rs^3 sum(dy w x) / h, dw = sum over rows of dy x rs. Math in f32,
//! results rounded once to x's dtype (dw accumulated in f32, then cast to w's). CUDA: the
//! kernels of `kernels/norm.cu` (h up to 8192); CPU: the same arithmetic as Rust loops over
//! rows in parallel. Evaluation uses the forward too for bf16 / f16 on the CPU (one rounding,
//! where candle-nn's CPU loop rounds rs to the dtype first).
//!
//! Evaluation of a bf16 / f16 model keeps its residual stream in f32 (`model::transformer`):
//! [`rms_norm_cast`] normalises the f32 stream and rounds the output once to the model's dtype,
//! [`residual_add`] adds a sublayer's output (model dtype) into it; one pass each instead of
//! candle's two (a norm then a cast; a cast then an add). Forward only.

use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use super::Elem;
use rayon::prelude::*;
use std::sync::Mutex;

/// Widest row the CUDA backward takes (its shared-memory dw sums).
pub const MAX_HIDDEN_CUDA: usize = 8192;

/// RMSNorm of the last dim with a backward pass. x: [..., h] (f32, bf16 or f16; made
/// contiguous), w: [h] of the same dtype. Returns x's shape and dtype.
pub fn rms_norm_train(x: &Tensor, w: &Tensor, eps: f32) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [h] || w.dtype() != x.dtype() {
        candle_core::bail!("rms_norm_train: x {:?} {:?} and w {:?} {:?} (w must be [{h}] of x's dtype)", x.dims(), x.dtype(), w.dims(), w.dtype());
    }
    if !matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("rms_norm_train: dtype {:?} (f32, bf16 or f16 expected)", x.dtype());
    }
    if x.device().is_cuda() && h > MAX_HIDDEN_CUDA {
        candle_core::bail!("rms_norm_train: hidden size {h} above the CUDA kernel's {MAX_HIDDEN_CUDA}");
    }
    x.contiguous()?.apply_op2(&w.contiguous()?, RmsNorm { eps })
}

/// The elements of `v` in a contiguous layout.
fn contiguous<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    Ok(&v[super::contiguous_range(l, "rms_norm")?])
}

/// 1 / sqrt(mean(x^2) + eps) of one row, summed in f32 as the kernel does (in order).
fn rs_of<T: Elem>(x: &[T], eps: f32) -> f32 {
    let ss: f32 = x.iter().map(|&e| e.f() * e.f()).sum();
    1.0 / (ss / x.len() as f32 + eps).sqrt()
}

/// y = x rs w per row, x and w in TI, y in TO (T, T: the training norm; f32, the model's
/// dtype: evaluation's norm of the f32 residual stream).
fn fwd_cpu<TI: Elem, TO: Elem>(x: &[TI], w: &[TI], eps: f32) -> Vec<TO> {
    let h = w.len();
    let mut y = vec![TO::of(0.0); x.len()];
    y.par_chunks_mut(h).zip(x.par_chunks(h)).for_each(|(y, x)| {
        let rs = rs_of(x, eps);
        for ((y, &x), &w) in y.iter_mut().zip(x).zip(w) {
            *y = TO::of(x.f() * rs * w.f());
        }
    });
    y
}

/// (dx, dw) on CPU: rows in parallel, each chunk of rows with its own dw sums (f64), added.
fn bwd_cpu<T: Elem>(x: &[T], w: &[T], dy: &[T], eps: f32) -> (Vec<T>, Vec<f32>) {
    let h = w.len();
    let mut dx = vec![T::of(0.0); x.len()];
    let rows_per_chunk = (1 << 14) / h.max(1) + 1;
    let dw = dx
        .par_chunks_mut(h * rows_per_chunk)
        .zip(x.par_chunks(h * rows_per_chunk).zip(dy.par_chunks(h * rows_per_chunk)))
        .map(|(dx, (x, dy))| {
            let mut dw = vec![0f64; h];
            for ((dx, x), dy) in dx.chunks_mut(h).zip(x.chunks(h)).zip(dy.chunks(h)) {
                let rs = rs_of(x, eps);
                let c: f32 = x.iter().zip(dy).zip(w).map(|((&x, &g), &w)| g.f() * w.f() * x.f()).sum();
                let k = rs * rs * rs * c / h as f32;
                for j in 0..h {
                    let (e, g) = (x[j].f(), dy[j].f());
                    dx[j] = T::of(rs * g * w[j].f() - e * k);
                    dw[j] += (g * e * rs) as f64;
                }
            }
            dw
        })
        .reduce(|| vec![0f64; h], |a, b| a.iter().zip(&b).map(|(a, b)| a + b).collect());
    (dx, dw.into_iter().map(|v| v as f32).collect())
}

/// Evaluation (no backward): RMSNorm of an f32 residual stream, y = x rs w computed in f32 and
/// rounded once to `out` (bf16 or f16). x: [..., h] f32 (made contiguous), w: [h] f32.
/// Returns x's shape in `out`.
pub fn rms_norm_cast(x: &Tensor, w: &Tensor, eps: f32, out: DType) -> Result<Tensor> {
    let h = x.dim(candle_core::D::Minus1)?;
    if w.dims() != [h] || w.dtype() != DType::F32 || x.dtype() != DType::F32 {
        candle_core::bail!("rms_norm_cast: x {:?} {:?} and w {:?} {:?} (both f32, w [{h}])", x.dims(), x.dtype(), w.dims(), w.dtype());
    }
    if !matches!(out, DType::BF16 | DType::F16) {
        candle_core::bail!("rms_norm_cast: output dtype {out:?} (bf16 or f16 expected)");
    }
    x.contiguous()?.apply_op2_no_bwd(&w.contiguous()?, &RmsNormCast { eps, out })
}

/// Evaluation (no backward): x + d with x f32 (the residual stream) and d bf16 or f16 (a
/// sublayer's output) of one shape: d converted exactly, one f32 rounding, as
/// `x + d.to_dtype(F32)` computes it. Returns an f32 tensor of x's shape.
pub fn residual_add(x: &Tensor, d: &Tensor) -> Result<Tensor> {
    if x.dims() != d.dims() || x.dtype() != DType::F32 || !matches!(d.dtype(), DType::BF16 | DType::F16) {
        candle_core::bail!("residual_add: x {:?} {:?} (f32) and d {:?} {:?} (bf16 or f16) of one shape", x.dims(), x.dtype(), d.dims(), d.dtype());
    }
    x.contiguous()?.apply_op2_no_bwd(&d.contiguous()?, &ResidualAdd)
}

fn add_cpu<T: Elem>(x: &[f32], d: &[T]) -> Vec<f32> {
    let mut out = vec![0f32; x.len()];
    out.par_chunks_mut(1 << 14).zip(x.par_chunks(1 << 14).zip(d.par_chunks(1 << 14))).for_each(|(o, (x, d))| {
        for ((o, &x), &d) in o.iter_mut().zip(x).zip(d) {
            *o = x + d.f();
        }
    });
    out
}

struct RmsNormCast {
    eps: f32,
    out: DType,
}

impl CustomOp2 for RmsNormCast {
    fn name(&self) -> &'static str {
        "rho-rms-norm-cast"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (CpuStorage::F32(x), CpuStorage::F32(w)) = (s1, s2) else {
            candle_core::bail!("rms_norm_cast: x and w must be f32 (got {:?}, {:?})", s1.dtype(), s2.dtype());
        };
        let (x, w) = (contiguous(x, l1)?, contiguous(w, l2)?);
        let y = match self.out {
            DType::BF16 => CpuStorage::BF16(fwd_cpu(x, w, self.eps)),
            DType::F16 => CpuStorage::F16(fwd_cpu(x, w, self.eps)),
            other => candle_core::bail!("rms_norm_cast: output dtype {other:?} (bf16 or f16 expected)"),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::ops::rms_norm_cast((s1, l1), (s2, l2), self.eps, self.out)?, l1.shape().clone()))
    }
}

struct ResidualAdd;

impl CustomOp2 for ResidualAdd {
    fn name(&self) -> &'static str {
        "rho-residual-add"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::BF16(d)) => add_cpu(contiguous(x, l1)?, contiguous(d, l2)?),
            (CpuStorage::F32(x), CpuStorage::F16(d)) => add_cpu(contiguous(x, l1)?, contiguous(d, l2)?),
            _ => candle_core::bail!("residual_add: x f32 and d bf16 or f16 expected (got {:?}, {:?})", s1.dtype(), s2.dtype()),
        };
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::ops::residual_add((s1, l1), (s2, l2))?, l1.shape().clone()))
    }
}

struct RmsNorm {
    eps: f32,
}

impl CustomOp2 for RmsNorm {
    fn name(&self) -> &'static str {
        "rho-rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let y = match (s1, s2) {
            (CpuStorage::F32(x), CpuStorage::F32(w)) => CpuStorage::F32(fwd_cpu(contiguous(x, l1)?, contiguous(w, l2)?, self.eps)),
            (CpuStorage::BF16(x), CpuStorage::BF16(w)) => CpuStorage::BF16(fwd_cpu(contiguous(x, l1)?, contiguous(w, l2)?, self.eps)),
            (CpuStorage::F16(x), CpuStorage::F16(w)) => CpuStorage::F16(fwd_cpu(contiguous(x, l1)?, contiguous(w, l2)?, self.eps)),
            _ => candle_core::bail!("rms_norm: x and w must both be f32, bf16 or f16 (got {:?}, {:?})", s1.dtype(), s2.dtype()),
        };
        Ok((y, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::ops::rms_norm_fwd((s1, l1), (s2, l2), self.eps)?, l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let op = RmsNormGrad { eps: self.eps, dw: Mutex::new(None) };
        let dx = x.apply_op3_no_bwd(w, &dy.to_dtype(x.dtype())?.contiguous()?, &op)?;
        let dw = op.dw.lock().unwrap_or_else(|e| e.into_inner()).take();
        let dw = dw.ok_or_else(|| candle_core::Error::Msg("rms_norm backward: no dw computed".into()))?;
        Ok((Some(dx), Some(dw.to_dtype(w.dtype())?)))
    }
}

/// (x, w, dy) -> dx in x's dtype; dw (f32 [h]) left in `dw` (one pass computes both).
struct RmsNormGrad {
    eps: f32,
    dw: Mutex<Option<Tensor>>,
}

impl CustomOp3 for RmsNormGrad {
    fn name(&self) -> &'static str {
        "rho-rms-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = l2.shape().elem_count();
        let (dx, dw) = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(w), CpuStorage::F32(g)) => {
                let (dx, dw) = bwd_cpu(contiguous(x, l1)?, contiguous(w, l2)?, contiguous(g, l3)?, self.eps);
                (CpuStorage::F32(dx), dw)
            }
            (CpuStorage::BF16(x), CpuStorage::BF16(w), CpuStorage::BF16(g)) => {
                let (dx, dw) = bwd_cpu(contiguous(x, l1)?, contiguous(w, l2)?, contiguous(g, l3)?, self.eps);
                (CpuStorage::BF16(dx), dw)
            }
            (CpuStorage::F16(x), CpuStorage::F16(w), CpuStorage::F16(g)) => {
                let (dx, dw) = bwd_cpu(contiguous(x, l1)?, contiguous(w, l2)?, contiguous(g, l3)?, self.eps);
                (CpuStorage::F16(dx), dw)
            }
            _ => candle_core::bail!("rms_norm backward: x, w and dy must all be f32, bf16 or f16"),
        };
        *self.dw.lock().unwrap_or_else(|e| e.into_inner()) = Some(Tensor::from_vec(dw, h, &candle_core::Device::Cpu)?);
        Ok((dx, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
        s3: &candle_core::CudaStorage,
        l3: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        use candle_core::op::BackpropOp;
        let (dx, dw) = super::ops::rms_norm_bwd((s1, l1), (s2, l2), (s3, l3), self.eps)?;
        let h = l2.shape().elem_count();
        let dw = Tensor::from_storage(candle_core::Storage::Cuda(dw), h, BackpropOp::none(), false);
        *self.dw.lock().unwrap_or_else(|e| e.into_inner()) = Some(dw);
        Ok((dx, l1.shape().clone()))
    }
}
