//! The attention mask of the composed path (attention as candle's matmul, mask, softmax):
//! the same keys as the fused op's ([`super::reference::attended_keys`]), causal with an
//! optional sliding window.

use candle_core::{DType, Device, Result, Tensor};

/// The [s, s] additive mask of scores [.., s queries, s keys]: 0 where query i attends key j,
/// -inf elsewhere, in `dtype` on `dev`. Query i attends key j iff j <= i and, with a sliding
/// window of w keys, i - j < w (transformers' `sliding_window`: `kv_idx > q_idx - sliding_window`
/// on top of the causal mask). A window of 0 is an error; one of at least s keys is no window.
pub fn causal_mask(s: usize, window: Option<usize>, dtype: DType, dev: &Device) -> Result<Tensor> {
    if window == Some(0) {
        candle_core::bail!("attention mask: a sliding window must be at least 1 key (got 0)");
    }
    let w = window.unwrap_or(usize::MAX);
    let m: Vec<f32> = (0..s).flat_map(|i| (0..s).map(move |j| if j > i || i - j >= w { f32::NEG_INFINITY } else { 0.0 })).collect();
    Tensor::from_vec(m, (s, s), dev)?.to_dtype(dtype)
}

#[cfg(test)]
mod tests {
    use super::super::reference::{self, AttnShape, Strides};
    use super::*;

    #[test]
    fn the_mask_keeps_the_reference_keys() {
        let dev = Device::Cpu;
        // s 4, window 2: each row keeps itself and the key before it
        let m = causal_mask(4, Some(2), DType::F32, &dev).unwrap().to_vec2::<f32>().unwrap();
        let inf = f32::NEG_INFINITY;
        assert_eq!(m, vec![vec![0.0, inf, inf, inf], vec![0.0, 0.0, inf, inf], vec![inf, 0.0, 0.0, inf], vec![inf, inf, 0.0, 0.0]]);
        for s in [1usize, 2, 5, 17] {
            for window in [None, Some(1), Some(2), Some(s.saturating_sub(1).max(1)), Some(s), Some(s + 3), Some(usize::MAX)] {
                for dt in [DType::F32, DType::BF16, DType::F16] {
                    let m = causal_mask(s, window, dt, &dev).unwrap().to_dtype(DType::F32).unwrap().to_vec2::<f32>().unwrap();
                    for (i, row) in m.iter().enumerate() {
                        let keys = reference::attended_keys(i, window);
                        for (j, &x) in row.iter().enumerate() {
                            assert_eq!(x, if keys.contains(&j) { 0.0 } else { inf }, "s {s} window {window:?} {dt:?} ({i}, {j})");
                        }
                    }
                }
            }
        }
        let e = causal_mask(3, Some(0), DType::F32, &dev).unwrap_err().to_string();
        assert!(e.contains("at least 1"), "{e}");
    }

    #[test]
    fn softmax_under_the_mask_is_the_reference_windowed_attention() -> Result<()> {
        // the composed path (scores + mask, softmax, times v) against the f64 reference
        let dev = Device::Cpu;
        let (s, d) = (13usize, 4usize);
        let x = |k: usize| (0..s * d).map(|i| ((i * 7 + k * 13) % 11) as f32 / 4.0 - 1.2).collect::<Vec<f32>>();
        let (q, k, v) = (x(1), x(2), x(3));
        let shape = AttnShape { batch: 1, seq: s, n_heads: 1, n_kv_heads: 1, head_dim: d };
        let st = Strides::contiguous(s, 1, d);
        for window in [None, Some(1), Some(4), Some(12), Some(13)] {
            let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), (s, d), &dev);
            let scores = ((t(&q)?.matmul(&t(&k)?.t()?)? * 0.5)? + causal_mask(s, window, DType::F32, &dev)?)?;
            let got = candle_nn::ops::softmax_last_dim(&scores)?.matmul(&t(&v)?)?.flatten_all()?.to_vec1::<f32>()?;
            let want = reference::causal_attention(shape, &q, st, &k, st, &v, st, 0.5, window);
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err < 1e-5, "window {window:?}: {err}");
        }
        // a window changes the result
        let full = reference::causal_attention(shape, &q, st, &k, st, &v, st, 0.5, None);
        assert!(full != reference::causal_attention(shape, &q, st, &k, st, &v, st, 0.5, Some(4)));
        Ok(())
    }
}
