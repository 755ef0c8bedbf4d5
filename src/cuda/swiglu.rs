//! SwiGLU, the gated MLP's elementwise step: h = silu(g) u (Llama, Mistral, Qwen2:
//! down(silu(gate(x)) * up(x))), with its backward, as one op each way.
//!
//! Composed of candle ops it is silu then mul (4 passes over [tokens, intermediate] forward,
//! two results allocated) and about 8 more passes for their gradients; here 3 passes forward
//! (read g, u; write h) and 5 backward (read g, u, dh; write dg, du). Math in f32 whatever the
//! storage, each result rounded once (the composition rounds silu(g) to the storage type
//! first). CUDA: the kernels of `kernels/swiglu.cu`; CPU: the same arithmetic as Rust loops
//! over chunks in parallel.

use super::{contiguous_range, Elem};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp2, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// Elements per parallel chunk on CPU.
const CHUNK: usize = 1 << 14;

/// silu(g) u with a backward pass. g, u: the same shape and dtype (f32, bf16 or f16; made
/// contiguous). Returns g's shape and dtype.
pub fn swiglu(g: &Tensor, u: &Tensor) -> Result<Tensor> {
    if g.dims() != u.dims() || g.dtype() != u.dtype() {
        candle_core::bail!("swiglu: gate {:?} {:?} and up {:?} {:?} must have one shape and dtype", g.dims(), g.dtype(), u.dims(), u.dtype());
    }
    if !matches!(g.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("swiglu: dtype {:?} (f32, bf16 or f16 expected)", g.dtype());
    }
    g.contiguous()?.apply_op2(&u.contiguous()?, SwiGlu)
}

fn sigmoid(x: f32) -> f32 {
    1.0 / (1.0 + (-x).exp())
}

fn fwd_cpu<T: Elem>(g: &[T], u: &[T]) -> Vec<T> {
    let mut h = vec![T::of(0.0); g.len()];
    h.par_chunks_mut(CHUNK).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK))).for_each(|(h, (g, u))| {
        for ((h, &g), &u) in h.iter_mut().zip(g).zip(u) {
            let x = g.f();
            *h = T::of(x * sigmoid(x) * u.f());
        }
    });
    h
}

/// [dg; du] (2 n elements: dg first).
fn bwd_cpu<T: Elem>(g: &[T], u: &[T], dh: &[T]) -> Vec<T> {
    let n = g.len();
    let mut out = vec![T::of(0.0); 2 * n];
    let (dg, du) = out.split_at_mut(n);
    dg.par_chunks_mut(CHUNK).zip(du.par_chunks_mut(CHUNK)).zip(g.par_chunks(CHUNK).zip(u.par_chunks(CHUNK)).zip(dh.par_chunks(CHUNK))).for_each(
        |((dg, du), ((g, u), dh))| {
            for i in 0..g.len() {
                let (x, d) = (g[i].f(), dh[i].f());
                let s = sigmoid(x);
                dg[i] = T::of(d * u[i].f() * s * (1.0 + x * (1.0 - s)));
                du[i] = T::of(d * x * s);
            }
        },
    );
    out
}

fn slice<'a, T>(v: &'a [T], l: &Layout) -> Result<&'a [T]> {
    Ok(&v[contiguous_range(l, "swiglu")?])
}

struct SwiGlu;

impl CustomOp2 for SwiGlu {
    fn name(&self) -> &'static str {
        "rho-swiglu"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let h = match (s1, s2) {
            (CpuStorage::F32(g), CpuStorage::F32(u)) => CpuStorage::F32(fwd_cpu(slice(g, l1)?, slice(u, l2)?)),
            (CpuStorage::BF16(g), CpuStorage::BF16(u)) => CpuStorage::BF16(fwd_cpu(slice(g, l1)?, slice(u, l2)?)),
            (CpuStorage::F16(g), CpuStorage::F16(u)) => CpuStorage::F16(fwd_cpu(slice(g, l1)?, slice(u, l2)?)),
            _ => candle_core::bail!("swiglu: gate and up must both be f32, bf16 or f16 (got {:?}, {:?})", s1.dtype(), s2.dtype()),
        };
        Ok((h, l1.shape().clone()))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(&self, s1: &candle_core::CudaStorage, l1: &Layout, s2: &candle_core::CudaStorage, l2: &Layout) -> Result<(candle_core::CudaStorage, Shape)> {
        Ok((super::ops::swiglu_fwd((s1, l1), (s2, l2))?, l1.shape().clone()))
    }

    fn bwd(&self, g: &Tensor, u: &Tensor, _h: &Tensor, dh: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        // one pass writes [2, ...]: dg then du, taken as views
        let both = g.apply_op3_no_bwd(u, &dh.to_dtype(g.dtype())?.contiguous()?, &SwiGluGrad)?;
        Ok((Some(both.get(0)?), Some(both.get(1)?)))
    }
}

/// (g, u, dh) -> [2, ...g's shape]: dg, du.
struct SwiGluGrad;

impl CustomOp3 for SwiGluGrad {
    fn name(&self) -> &'static str {
        "rho-swiglu-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let out = match (s1, s2, s3) {
            (CpuStorage::F32(g), CpuStorage::F32(u), CpuStorage::F32(d)) => CpuStorage::F32(bwd_cpu(slice(g, l1)?, slice(u, l2)?, slice(d, l3)?)),
            (CpuStorage::BF16(g), CpuStorage::BF16(u), CpuStorage::BF16(d)) => CpuStorage::BF16(bwd_cpu(slice(g, l1)?, slice(u, l2)?, slice(d, l3)?)),
            (CpuStorage::F16(g), CpuStorage::F16(u), CpuStorage::F16(d)) => CpuStorage::F16(bwd_cpu(slice(g, l1)?, slice(u, l2)?, slice(d, l3)?)),
            _ => candle_core::bail!("swiglu backward: gate, up and dh must all be f32, bf16 or f16"),
        };
        Ok((out, grad_shape(l1)))
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
        Ok((super::ops::swiglu_bwd((s1, l1), (s2, l2), (s3, l3))?, grad_shape(l1)))
    }
}

fn grad_shape(l: &Layout) -> Shape {
    let mut dims = vec![2];
    dims.extend_from_slice(l.dims());
    Shape::from(dims)
}
