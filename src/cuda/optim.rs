//! The optimizer's elementwise work as in-place ops (training): AdamW's two moments and its
//! update, and the squared L2 norm of a gradient (global-norm clipping).
//!
//! One pass over each tensor, math in f32 whatever the storage (f32, bf16, f16), results
//! rounded once to the storage type, as `torch.optim.AdamW(fused=True)` does. On CUDA the
//! kernels of `kernels/optim.cu`; on CPU the same arithmetic as Rust loops over chunks in
//! parallel. Composed of candle ops instead, one AdamW step is about 17 full passes per
//! parameter, each allocating (`train::optim::AdamW::step_composed`, the reference these are
//! tested against); here it is 3 passes in place (first moment, second moment, update) and
//! the norm needs one host synchronisation per step instead of one per parameter.

use candle_core::{CpuStorage, CustomOp1, DType, InplaceOp2, InplaceOp3, Layout, Result, Shape, Tensor};
use super::{contiguous_range, Elem};
use rayon::prelude::*;

/// Elements per parallel chunk on CPU.
const CHUNK: usize = 1 << 15;

/// The blocks of a grid-stride launch over `n` elements (256 threads, at least 4 elements each,
/// at most 2048 blocks: enough to fill any current GPU). The emulator tests use other grids.
pub fn launch_blocks(n: usize) -> u32 {
    n.div_ceil(256 * 4).clamp(1, 2048) as u32
}

/// The arguments of [`adam_apply`], precomputed on the host:
/// w <- w decay - step m / (sqrt(v) inv_sqrt_bc2 + eps).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct AdamApply {
    /// 1 - lr weight_decay (1 without decay).
    pub decay: f32,
    /// lr / (1 - beta1^t).
    pub step: f32,
    /// 1 / sqrt(1 - beta2^t).
    pub inv_sqrt_bc2: f32,
    pub eps: f32,
}

/// state <- beta state + (1 - beta) f(grad gscale), f(x) = x, or x^2 with `square`
/// (AdamW's first and second moments). In place.
/// state: any shape, contiguous; grad: the same shape and dtype (f32, bf16 or f16).
pub fn adam_moment(state: &Tensor, grad: &Tensor, beta: f32, gscale: f32, square: bool) -> Result<()> {
    same_kind("adam_moment", state, &[grad])?;
    let grad = grad.contiguous()?;
    state.inplace_op2(&grad, &Moment { beta, gscale, square })
}

/// AdamW's update of the weights `w` from the moments `m`, `v` (same shape and dtype,
/// contiguous). In place.
pub fn adam_apply(w: &Tensor, m: &Tensor, v: &Tensor, a: AdamApply) -> Result<()> {
    same_kind("adam_apply", w, &[m, v])?;
    w.inplace_op3(&m.contiguous()?, &v.contiguous()?, &Apply(a))
}

/// sum(x^2) as a 0-dim f32 tensor on x's device (accumulated in f32 on CUDA, in f64 on CPU;
/// no host synchronisation). x: any shape, f32, bf16 or f16.
pub fn sum_squares(x: &Tensor) -> Result<Tensor> {
    x.contiguous()?.apply_op1_no_bwd(&SumSq)
}

fn same_kind(op: &str, dst: &Tensor, srcs: &[&Tensor]) -> Result<()> {
    if !dst.is_contiguous() {
        candle_core::bail!("{op}: the updated tensor must be contiguous (shape {:?}, stride {:?})", dst.dims(), dst.stride());
    }
    for s in srcs {
        if s.dims() != dst.dims() || s.dtype() != dst.dtype() {
            candle_core::bail!(
                "{op}: shapes/dtypes differ: {:?} {:?} against {:?} {:?}",
                dst.dims(),
                dst.dtype(),
                s.dims(),
                s.dtype()
            );
        }
    }
    if !matches!(dst.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("{op}: dtype {:?} (f32, bf16 or f16 expected)", dst.dtype());
    }
    Ok(())
}

struct Moment {
    beta: f32,
    gscale: f32,
    square: bool,
}

fn moment_cpu<T: Elem>(st: &mut [T], g: &[T], m: &Moment) {
    let (beta, gs, sq) = (m.beta, m.gscale, m.square);
    st.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK)).for_each(|(s, g)| {
        for (s, &g) in s.iter_mut().zip(g) {
            let mut x = g.f() * gs;
            if sq {
                x *= x;
            }
            *s = T::of(beta * s.f() + (1.0 - beta) * x);
        }
    });
}

impl InplaceOp2 for Moment {
    fn name(&self) -> &'static str {
        "adam-moment"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, g: &CpuStorage, gl: &Layout) -> Result<()> {
        let (d, gl) = (contiguous_range(dst_l, "adam_moment")?, contiguous_range(gl, "adam_moment")?);
        match (dst, g) {
            (CpuStorage::F32(s), CpuStorage::F32(g)) => moment_cpu(&mut s[d], &g[gl], self),
            (CpuStorage::BF16(s), CpuStorage::BF16(g)) => moment_cpu(&mut s[d], &g[gl], self),
            (CpuStorage::F16(s), CpuStorage::F16(g)) => moment_cpu(&mut s[d], &g[gl], self),
            _ => candle_core::bail!("adam_moment: state and gradient must both be f32, bf16 or f16"),
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, dst: &mut candle_core::CudaStorage, dst_l: &Layout, g: &candle_core::CudaStorage, gl: &Layout) -> Result<()> {
        super::ops::adam_moment(dst, dst_l, (g, gl), self.beta, self.gscale, self.square)
    }
}

struct Apply(AdamApply);

fn apply_cpu<T: Elem>(w: &mut [T], m: &[T], v: &[T], a: AdamApply) {
    w.par_chunks_mut(CHUNK).zip(m.par_chunks(CHUNK).zip(v.par_chunks(CHUNK))).for_each(|(w, (m, v))| {
        for ((w, &m), &v) in w.iter_mut().zip(m).zip(v) {
            let denom = v.f().sqrt() * a.inv_sqrt_bc2 + a.eps;
            *w = T::of(w.f() * a.decay - a.step * m.f() / denom);
        }
    });
}

impl InplaceOp3 for Apply {
    fn name(&self) -> &'static str {
        "adam-apply"
    }
    fn cpu_fwd(&self, dst: &mut CpuStorage, dst_l: &Layout, m: &CpuStorage, ml: &Layout, v: &CpuStorage, vl: &Layout) -> Result<()> {
        let (d, ml, vl) = (contiguous_range(dst_l, "adam_apply")?, contiguous_range(ml, "adam_apply")?, contiguous_range(vl, "adam_apply")?);
        match (dst, m, v) {
            (CpuStorage::F32(w), CpuStorage::F32(m), CpuStorage::F32(v)) => apply_cpu(&mut w[d], &m[ml], &v[vl], self.0),
            (CpuStorage::BF16(w), CpuStorage::BF16(m), CpuStorage::BF16(v)) => apply_cpu(&mut w[d], &m[ml], &v[vl], self.0),
            (CpuStorage::F16(w), CpuStorage::F16(m), CpuStorage::F16(v)) => apply_cpu(&mut w[d], &m[ml], &v[vl], self.0),
            _ => candle_core::bail!("adam_apply: weights and moments must all be f32, bf16 or f16"),
        }
        Ok(())
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        dst: &mut candle_core::CudaStorage,
        dst_l: &Layout,
        m: &candle_core::CudaStorage,
        ml: &Layout,
        v: &candle_core::CudaStorage,
        vl: &Layout,
    ) -> Result<()> {
        super::ops::adam_apply(dst, dst_l, (m, ml), (v, vl), self.0)
    }
}

struct SumSq;

fn sum_sq_cpu<T: Elem>(x: &[T]) -> f32 {
    // f64 sums in 8 independent lanes (the compiler vectorises them), chunks in parallel
    let chunk = |c: &[T]| {
        let mut acc = [0f64; 8];
        let mut it = c.chunks_exact(8);
        for e in &mut it {
            for (a, &x) in acc.iter_mut().zip(e) {
                let x = x.f() as f64;
                *a += x * x;
            }
        }
        it.remainder().iter().map(|&x| (x.f() as f64).powi(2)).sum::<f64>() + acc.iter().sum::<f64>()
    };
    x.par_chunks(CHUNK).map(chunk).sum::<f64>() as f32
}

impl CustomOp1 for SumSq {
    fn name(&self) -> &'static str {
        "sum-squares"
    }
    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let r = contiguous_range(l, "sum_squares")?;
        let v = match s {
            CpuStorage::F32(x) => sum_sq_cpu(&x[r]),
            CpuStorage::BF16(x) => sum_sq_cpu(&x[r]),
            CpuStorage::F16(x) => sum_sq_cpu(&x[r]),
            _ => candle_core::bail!("sum_squares: dtype {:?} (f32, bf16 or f16 expected)", candle_core::backend::BackendStorage::dtype(s)),
        };
        Ok((CpuStorage::F32(vec![v]), Shape::from(())))
    }
    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s: &candle_core::CudaStorage, l: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::ops::sum_sq(s, l)?, Shape::from(())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn ops_reject_mismatched_inputs_with_their_dims() {
        let dev = Device::Cpu;
        let a = Tensor::zeros((2, 3), DType::F32, &dev).unwrap();
        let b = Tensor::zeros((3, 2), DType::F32, &dev).unwrap();
        let e = adam_moment(&a, &b, 0.9, 1.0, false).unwrap_err().to_string();
        assert!(e.contains("[2, 3]") && e.contains("[3, 2]"), "{e}");
        let c = Tensor::zeros((2, 3), DType::BF16, &dev).unwrap();
        let e = adam_apply(&a, &a, &c, AdamApply { decay: 1.0, step: 0.1, inv_sqrt_bc2: 1.0, eps: 1e-8 }).unwrap_err().to_string();
        assert!(e.contains("BF16"), "{e}");
        let t = Tensor::zeros((3, 2), DType::F32, &dev).unwrap().t().unwrap();
        let e = adam_moment(&t, &a, 0.9, 1.0, false).unwrap_err().to_string();
        assert!(e.contains("contiguous"), "{e}");
    }
}
