//! Rotary position embedding (rotate-half) as one op with its backward, on q or k in the
//! layout the projections produce, [b, s, heads, d] (strided views of a fused projection
//! read in place), partial rotary included (GPT-NeoX / Pythia: the dims past `rotary_dim`
//! pass through).
//!
//! For j < r = rotary_dim / 2, with cos, sin the [s, r] tables at the row's position:
//! y[j] = x[j] cos - x[j + r] sin, y[j + r] = x[j + r] cos + x[j] sin. The backward is the
//! transposed rotation, the same kernel with sin negated. Composed of candle ops (training)
//! it is a copy to make x contiguous, neg, cat, two broadcast muls and an add forward (and
//! for partial rotary two narrows and a cat) and about as many passes backward; here one
//! pass each way. Math in f32, one rounding. CUDA: `kernels/rope.cu`; CPU: the same
//! arithmetic as Rust loops over rows in parallel.

use super::{contiguous_range, Elem};
use candle_core::backend::BackendStorage;
use candle_core::{CpuStorage, CustomOp3, DType, Layout, Result, Shape, Tensor};
use rayon::prelude::*;

/// RoPE of x: [b, s, heads, d] (f32, bf16 or f16; any strides, made contiguous if its last
/// dim is not) with cos, sin: [s, r] (cast to x's dtype), rotary_dim = 2 r <= d. Returns
/// [b, s, heads, d] contiguous, with a backward pass.
pub fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    let (_, s, _, d) = x.dims4()?;
    let (cs, r) = cos.dims2()?;
    if cs != s || sin.dims() != cos.dims() || 2 * r > d {
        candle_core::bail!("rope: x {:?} needs cos and sin of [{s}, r] with 2 r <= {d} (got {:?}, {:?})", x.dims(), cos.dims(), sin.dims());
    }
    if !matches!(x.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        candle_core::bail!("rope: dtype {:?} (f32, bf16 or f16 expected)", x.dtype());
    }
    let x = if x.stride()[3] == 1 { x.clone() } else { x.contiguous()? };
    let table = |t: &Tensor| t.to_dtype(x.dtype())?.contiguous();
    x.apply_op3(&table(cos)?, &table(sin)?, Rope { sign: 1.0 })
}

/// The CPU loop: y contiguous [b, s, heads, d] from x at `off` with element strides
/// (sb, ss, sh, 1).
#[allow(clippy::too_many_arguments)]
fn rope_cpu<T: Elem>(x: &[T], off: usize, st: [usize; 3], dims: [usize; 4], cos: &[T], sin: &[T], sign: f32) -> Vec<T> {
    let [_, s, heads, d] = dims;
    let r = cos.len() / s.max(1);
    let mut y = vec![T::of(0.0); dims.iter().product()];
    y.par_chunks_mut(d.max(1)).enumerate().for_each(|(row, y)| {
        let (hh, p, b) = (row % heads, (row / heads) % s, row / (heads * s));
        let xr = &x[off + b * st[0] + p * st[1] + hh * st[2]..][..d];
        let (c, sn) = (&cos[p * r..(p + 1) * r], &sin[p * r..(p + 1) * r]);
        for j in 0..r {
            let (a, bb) = (xr[j].f(), xr[j + r].f());
            y[j] = T::of(a * c[j].f() - sign * bb * sn[j].f());
            y[j + r] = T::of(bb * c[j].f() + sign * a * sn[j].f());
        }
        y[2 * r..].copy_from_slice(&xr[2 * r..]);
    });
    y
}

/// x's dims and its strides for batch, position and head (the head dim's stride is 1).
fn x_layout(l: &Layout) -> Result<([usize; 4], [usize; 3])> {
    let (dims, st) = (l.dims(), l.stride());
    if dims.len() != 4 || st[3] != 1 {
        candle_core::bail!("rope: x must be [b, s, heads, d] with a contiguous last dim (dims {dims:?}, stride {st:?})");
    }
    Ok(([dims[0], dims[1], dims[2], dims[3]], [st[0], st[1], st[2]]))
}

struct Rope {
    /// 1: the rotation; -1: its transpose (the backward).
    sign: f32,
}

impl CustomOp3 for Rope {
    fn name(&self) -> &'static str {
        "rho-rope"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (dims, st) = x_layout(l1)?;
        let (cr, sr) = (contiguous_range(l2, "rope")?, contiguous_range(l3, "rope")?);
        let off = l1.start_offset();
        let y = match (s1, s2, s3) {
            (CpuStorage::F32(x), CpuStorage::F32(c), CpuStorage::F32(s)) => CpuStorage::F32(rope_cpu(x, off, st, dims, &c[cr], &s[sr], self.sign)),
            (CpuStorage::BF16(x), CpuStorage::BF16(c), CpuStorage::BF16(s)) => CpuStorage::BF16(rope_cpu(x, off, st, dims, &c[cr], &s[sr], self.sign)),
            (CpuStorage::F16(x), CpuStorage::F16(c), CpuStorage::F16(s)) => CpuStorage::F16(rope_cpu(x, off, st, dims, &c[cr], &s[sr], self.sign)),
            _ => candle_core::bail!("rope: x, cos and sin must all be f32, bf16 or f16 (x {:?})", s1.dtype()),
        };
        Ok((y, Shape::from(dims.to_vec())))
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
        let (dims, st) = x_layout(l1)?;
        Ok((super::ops::rope((s1, l1), st, dims, (s2, l2), (s3, l3), self.sign)?, Shape::from(dims.to_vec())))
    }

    fn bwd(&self, _x: &Tensor, cos: &Tensor, sin: &Tensor, _y: &Tensor, dy: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = dy.to_dtype(cos.dtype())?.contiguous()?.apply_op3_no_bwd(cos, sin, &Rope { sign: -self.sign })?;
        Ok((Some(dx), None, None))
    }
}
