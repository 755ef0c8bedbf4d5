//! Per-token cross-entropy, computed in f32.
//!
//! [`per_token_loss`] is built from differentiable candle ops (training uses it);
//! [`token_loss_eval`] is the evaluation path: on CPU a fused one-pass kernel
//! ([`FusedTokenLoss`]: max, sum of exponentials and the target's logit per row,
//! no [b, s, vocab] temporaries, no backward), elsewhere `per_token_loss`.

use candle_core::{CpuStorage, CustomOp2, DType, Layout, Result, Shape, Tensor, D};

/// logits: [b, s, vocab] (any float dtype), targets: [b, s] (u32).
/// Returns [b, s] f32: loss[i, j] = -log softmax(logits[i, j])[targets[i, j]].
pub fn per_token_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let (b, s, v) = logits.dims3()?;
    let (tb, ts) = targets.dims2()?;
    if (tb, ts) != (b, s) {
        candle_core::bail!("per_token_loss: logits are [{b}, {s}, {v}] but targets are [{tb}, {ts}]");
    }
    let logits = logits.to_dtype(DType::F32)?;
    let max = logits.max_keepdim(D::Minus1)?;
    let shifted = logits.broadcast_sub(&max)?;
    let lse = shifted.exp()?.sum_keepdim(D::Minus1)?.log()?; // [b, s, 1]
    let idx = targets.to_dtype(DType::U32)?.contiguous()?.unsqueeze(D::Minus1)?;
    let picked = shifted.gather(&idx, D::Minus1)?; // [b, s, 1]
    (lse - picked)?.squeeze(D::Minus1)
}

/// Per-token loss for training (with a backward pass), same contract as [`per_token_loss`]:
/// on CUDA and CPU the fused op (`cuda::token_cross_entropy`: one pass over the logits
/// forward, no f32 copy of them, the gradient in the logits' dtype written in one pass;
/// CUDA kernels or parallel Rust loops) unless `RHO_FUSED_KERNELS` leaves `loss` out;
/// elsewhere (Metal) `per_token_loss`.
pub fn train_token_loss(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    if (logits.device().is_cuda() || logits.device().is_cpu())
        && crate::cuda::fused_enabled(crate::cuda::Fused::Loss)
        && matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16)
    {
        crate::cuda::token_cross_entropy(logits, targets)
    } else {
        per_token_loss(logits, targets)
    }
}

/// Checked inputs of [`FusedTokenLoss`]: logits [b, s, vocab] with the vocab dim contiguous,
/// targets [b, s] contiguous u32. On CUDA also that every target lies in the vocabulary (the
/// kernel writes NaN for one that does not; the CPU op refuses it itself).
pub(crate) fn fused_inputs(logits: &Tensor, targets: &Tensor, who: &str) -> Result<(Tensor, Tensor)> {
    let (b, s, v) = logits.dims3()?;
    let (tb, ts) = targets.dims2()?;
    if (tb, ts) != (b, s) {
        candle_core::bail!("{who}: logits are [{b}, {s}, {v}] but targets are [{tb}, {ts}]");
    }
    let logits = if logits.stride()[2] == 1 { logits.clone() } else { logits.contiguous()? };
    let targets = targets.to_dtype(DType::U32)?.contiguous()?;
    if logits.device().is_cuda() && b * s > 0 {
        let max = targets.flatten_all()?.max(0)?.to_scalar::<u32>()?;
        if max as usize >= v {
            candle_core::bail!("{who}: target id {max} is outside the vocabulary of {v}");
        }
    }
    Ok((logits, targets))
}

/// Per-token loss for evaluation (no gradient). Same contract as [`per_token_loss`]:
/// logits [b, s, vocab] (f32 / bf16 / f16, the last dim contiguous or not), targets
/// [b, s] (u32) -> [b, s] f32.
pub fn token_loss_eval(logits: &Tensor, targets: &Tensor) -> Result<Tensor> {
    let fused = logits.device().is_cpu() || (logits.device().is_cuda() && crate::cuda::fused_enabled(crate::cuda::Fused::Loss));
    if !fused || !matches!(logits.dtype(), DType::F32 | DType::BF16 | DType::F16) {
        return per_token_loss(logits, targets);
    }
    let (logits, targets) = fused_inputs(logits, targets, "token_loss_eval")?;
    logits.apply_op2_no_bwd(&targets, &FusedTokenLoss)
}

/// One pass per row over the logits: loss = log(sum exp(x - max)) - (x[target] - max),
/// the exponentials in f32 and their sum in f64 (CPU, rows in parallel); on CUDA the
/// kernel `token_ce_fwd` of src/cuda/kernels/token_ce.cu, same contract. Evaluation applies
/// it without a backward (`token_loss_eval`), training with (`cuda::token_cross_entropy`).
pub struct FusedTokenLoss;

impl FusedTokenLoss {
    fn rows<T: Copy + Sync>(data: &[T], l: &Layout, tgt: &[u32], to_f32: impl Fn(T) -> f32 + Sync) -> Result<Vec<f32>> {
        let (b, s, v) = match l.dims() {
            &[b, s, v] => (b, s, v),
            d => candle_core::bail!("fused token loss: logits must be [b, s, vocab], got {d:?}"),
        };
        let st = l.stride();
        if st[2] != 1 {
            candle_core::bail!("fused token loss: the vocabulary dim must be contiguous (strides {st:?})");
        }
        let off = l.start_offset();
        let mut out = vec![0f32; b * s];
        let row = |r: usize| -> Result<f32> {
            let (i, j) = (r / s, r % s);
            let start = off + i * st[0] + j * st[1];
            let x = &data[start..start + v];
            let t = tgt[r] as usize;
            if t >= v {
                candle_core::bail!("fused token loss: target id {t} is outside the vocabulary of {v}");
            }
            let (m, sum) = max_and_sum_exp(x, &to_f32);
            Ok((sum.ln() - (to_f32(x[t]) - m) as f64) as f32)
        };
        use rayon::prelude::*;
        out.par_iter_mut().enumerate().try_for_each(|(r, o)| -> Result<()> {
            *o = row(r)?;
            Ok(())
        })?;
        Ok(out)
    }
}

/// One row's max m (f32) and sum of exp(x - m) (each exponential in f32, summed in f64): the
/// log-sum-exp m + ln(sum) of the fused loss's forward and of its CPU backward.
pub(crate) fn max_and_sum_exp<T: Copy>(x: &[T], to_f32: impl Fn(T) -> f32) -> (f32, f64) {
    let m = x.iter().fold(f32::NEG_INFINITY, |m, &e| m.max(to_f32(e)));
    (m, x.iter().map(|&e| (to_f32(e) - m).exp() as f64).sum())
}

impl CustomOp2 for FusedTokenLoss {
    fn name(&self) -> &'static str {
        "fused-token-loss"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let tgt = match s2 {
            CpuStorage::U32(t) if l2.is_contiguous() => &t[l2.start_offset()..l2.start_offset() + l2.shape().elem_count()],
            _ => candle_core::bail!("fused token loss: targets must be contiguous u32"),
        };
        let dims = l1.dims();
        if dims.len() != 3 || tgt.len() != dims[0] * dims[1] {
            candle_core::bail!("fused token loss: logits {dims:?} do not match {} targets", tgt.len());
        }
        let out = match s1 {
            CpuStorage::F32(d) => Self::rows(d, l1, tgt, |x| x)?,
            CpuStorage::BF16(d) => Self::rows(d, l1, tgt, |x| x.to_f32())?,
            CpuStorage::F16(d) => Self::rows(d, l1, tgt, |x| x.to_f32())?,
            _ => candle_core::bail!("fused token loss: logits must be f32, bf16 or f16"),
        };
        Ok((CpuStorage::F32(out), Shape::from((dims[0], dims[1]))))
    }

    #[cfg(feature = "cuda")]
    fn cuda_fwd(
        &self,
        s1: &candle_core::CudaStorage,
        l1: &Layout,
        s2: &candle_core::CudaStorage,
        l2: &Layout,
    ) -> Result<(candle_core::CudaStorage, Shape)> {
        crate::cuda::ops::token_ce_fwd(s1, l1, s2, l2)
    }

    /// d loss / d logits = (softmax - onehot) * grad: `token_ce_bwd` on CUDA, the f64
    /// reference on CPU; in the logits' dtype. Used through `cuda::token_cross_entropy`.
    fn bwd(&self, logits: &Tensor, targets: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        Ok((Some(crate::cuda::token_ce_grad(logits, targets, grad)?), None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

    #[test]
    fn fused_matches_the_op_by_op_loss() -> Result<()> {
        let dev = Device::Cpu;
        // Random logits with a large spread, a strided view (narrow), and all dtypes.
        let logits = (Tensor::randn(0f32, 4.0, (3, 9, 517), &dev)? + 20.0)?;
        let targets = Tensor::rand(0f32, 517.0, (3, 8), &dev)?.to_dtype(DType::U32)?;
        let view = logits.narrow(1, 0, 8)?;
        let want = per_token_loss(&view, &targets)?.to_vec2::<f32>()?;
        let got = token_loss_eval(&view, &targets)?.to_vec2::<f32>()?;
        for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
            assert!((a - b).abs() < 1e-4 * a.abs().max(1.0), "{a} vs {b}");
        }
        for dt in [DType::BF16, DType::F16] {
            let l = view.to_dtype(dt)?;
            let want = per_token_loss(&l, &targets)?.to_vec2::<f32>()?;
            let got = token_loss_eval(&l, &targets)?.to_vec2::<f32>()?;
            for (a, b) in want.iter().flatten().zip(got.iter().flatten()) {
                assert!((a - b).abs() < 1e-3 * a.abs().max(1.0), "{dt:?}: {a} vs {b}");
            }
        }
        // Errors name the dims.
        let e = token_loss_eval(&view, &targets.narrow(1, 0, 7)?).unwrap_err().to_string();
        assert!(e.contains("[3, 8, 517]") && e.contains("[3, 7]"), "{e}");
        let bad = Tensor::new(&[[600u32; 8]; 3], &dev)?;
        let e = token_loss_eval(&view, &bad).unwrap_err().to_string();
        assert!(e.contains("600"), "{e}");
        Ok(())
    }

    #[test]
    fn matches_log_softmax_by_hand() -> Result<()> {
        let dev = Device::Cpu;
        let logits = Tensor::new(&[[[1.0f32, 2.0, 3.0], [0.0, 0.0, 10.0]]], &dev)?;
        let targets = Tensor::new(&[[2u32, 0]], &dev)?;
        let l = per_token_loss(&logits, &targets)?.to_vec2::<f32>()?;
        let lse0 = (1f64.exp() + 2f64.exp() + 3f64.exp()).ln();
        assert!((l[0][0] as f64 - (lse0 - 3.0)).abs() < 1e-6);
        let lse1 = (2.0 + 10f64.exp()).ln();
        assert!((l[0][1] as f64 - lse1).abs() < 1e-5);
        Ok(())
    }

    #[test]
    fn shape_mismatch_names_dims() {
        let dev = Device::Cpu;
        let logits = Tensor::zeros((1, 2, 3), DType::F32, &dev).unwrap();
        let targets = Tensor::zeros((1, 3), DType::U32, &dev).unwrap();
        let e = per_token_loss(&logits, &targets).unwrap_err().to_string();
        assert!(e.contains("[1, 2, 3]") && e.contains("[1, 3]"), "{e}");
    }
}
