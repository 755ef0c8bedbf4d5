//! Per-token cross-entropy, computed in f32.

use candle_core::{DType, Result, Tensor, D};

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

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::Device;

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
