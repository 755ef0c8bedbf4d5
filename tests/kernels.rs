//! rho's CUDA kernels (src/cuda/kernels), run by the CPU emulator from the same source,
//! against their CPU references on random inputs; and the model wired through the flash
//! attention op against the plain attention path. On the H200, `rho bench kernels` runs
//! the same comparisons on the GPU.

use candle_core::{DType, Device, Tensor, D};
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use rho::cuda::emu::{self, KDType, Logits};
use rho::cuda::reference::{self, AttnShape, Rows, Strides};
use rho::model::{Checkpoint, Mode};
use std::path::Path;

fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    // Box-Muller: enough for test data.
    (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
            std * (-2.0 * u.ln()).sqrt() * (2.0 * std::f32::consts::PI * v).cos()
        })
        .collect()
}

/// Round to the kernel's element type: (bits for the kernel, f32 values for the reference).
fn quantize(dt: KDType, x: &[f32]) -> (Vec<u16>, Vec<f32>) {
    let bits: Vec<u16> = x.iter().map(|&v| emu::f32_to_bits(dt, v)).collect();
    let vals = bits.iter().map(|&b| emu::bits_to_f32(dt, b)).collect();
    (bits, vals)
}

struct Case {
    dt: KDType,
    shape: AttnShape,
    /// q, k and v as views of one fused [b, s, n_heads, 3, d]-like buffer (GPT-NeoX's layout)
    /// instead of three contiguous tensors.
    fused: bool,
    q_std: f32,
    /// kernel variant: 4 warps (64 query rows per block) or 8 (128 rows; head dim 64)
    warps: usize,
    /// sliding window (keys i - w < j <= i)
    window: Option<usize>,
}

/// Max |kernel - reference| and max |reference| over the output.
fn run_flash(c: &Case, seed: u64) -> (f32, f32) {
    let mut rng = StdRng::seed_from_u64(seed);
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = c.shape;
    let (q, k, v, qs, ks, vs);
    if c.fused {
        assert_eq!(n_heads, n_kv_heads, "fused layout has as many kv heads as query heads");
        let buf = normal(&mut rng, batch * seq * n_heads * 3 * d, 1.0);
        let st = Strides { batch: seq * n_heads * 3 * d, seq: n_heads * 3 * d, head: 3 * d };
        let (bits, vals) = quantize(c.dt, &buf);
        // views at offsets 0, d, 2d of the same buffer
        q = (bits[..].to_vec(), vals[..].to_vec());
        k = (bits[d..].to_vec(), vals[d..].to_vec());
        v = (bits[2 * d..].to_vec(), vals[2 * d..].to_vec());
        (qs, ks, vs) = (st, st, st);
    } else {
        qs = Strides::contiguous(seq, n_heads, d);
        ks = Strides::contiguous(seq, n_kv_heads, d);
        vs = ks;
        q = quantize(c.dt, &normal(&mut rng, batch * seq * n_heads * d, c.q_std));
        k = quantize(c.dt, &normal(&mut rng, batch * seq * n_kv_heads * d, 1.0));
        v = quantize(c.dt, &normal(&mut rng, batch * seq * n_kv_heads * d, 1.0));
    }
    let scale = 1.0 / (d as f32).sqrt();
    let want = reference::causal_attention(c.shape, &q.1, qs, &k.1, ks, &v.1, vs, scale, c.window);
    let got = emu::flash_attn_fwd(c.dt, c.warps, c.shape, &q.0, qs, &k.0, ks, &v.0, vs, scale, c.window).unwrap();
    assert_eq!(got.len(), want.len());
    let mut err = 0f32;
    let mut mag = 0f32;
    for (g, w) in got.iter().zip(&want) {
        let g = emu::bits_to_f32(c.dt, *g);
        assert!(g.is_finite(), "non-finite output {g}");
        err = err.max((g - w).abs());
        mag = mag.max(w.abs());
    }
    (err, mag)
}

fn tol(dt: KDType) -> f32 {
    // P is rounded to the input type before P.V (as in FlashAttention-2) and the output is
    // rounded once: a few ulps of |o| <= max |v| ~ 4.
    match dt {
        KDType::BF16 => 3e-2,
        _ => 4e-3,
    }
}

#[test]
fn flash_attention_kernel_matches_the_reference() {
    let gqa = |batch, seq, n_heads, n_kv_heads, head_dim| AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
    let cases = [
        // two query tiles, the second partial; grouped-query heads (2 query heads per kv head)
        Case { dt: KDType::BF16, shape: gqa(2, 77, 4, 2, 64), fused: false, q_std: 1.0, warps: 4, window: None },
        // head dim 128 (32-key tiles), 2 query heads on one kv head; tiles after some warps' rows
        Case { dt: KDType::BF16, shape: gqa(1, 130, 2, 1, 128), fused: false, q_std: 1.0, warps: 4, window: None },
        // f16, exactly one tile; peaked scores (online-softmax rescaling across tiles matters)
        Case { dt: KDType::F16, shape: gqa(1, 64, 2, 2, 64), fused: false, q_std: 4.0, warps: 4, window: None },
        Case { dt: KDType::BF16, shape: gqa(1, 150, 1, 1, 64), fused: false, q_std: 6.0, warps: 4, window: None },
        // 8 warps: 128 query rows per block, several key tiles per block
        Case { dt: KDType::BF16, shape: gqa(1, 200, 2, 1, 64), fused: false, q_std: 2.0, warps: 8, window: None },
        Case { dt: KDType::F16, shape: gqa(1, 129, 1, 1, 64), fused: false, q_std: 1.0, warps: 8, window: None },
        // a single token; and strided q/k/v views of one fused projection (GPT-NeoX)
        Case { dt: KDType::BF16, shape: gqa(3, 1, 2, 1, 64), fused: false, q_std: 1.0, warps: 4, window: None },
        Case { dt: KDType::F16, shape: gqa(2, 70, 2, 2, 64), fused: true, q_std: 1.0, warps: 4, window: None },
        Case { dt: KDType::F16, shape: gqa(1, 90, 2, 2, 128), fused: true, q_std: 1.0, warps: 4, window: None },
        // head dims 32 and 80 (Pythia 14m-31m, 2.8b) from a fused projection, 256 (Pythia-1b)
        Case { dt: KDType::F16, shape: gqa(2, 70, 2, 2, 32), fused: true, q_std: 1.0, warps: 4, window: None },
        Case { dt: KDType::BF16, shape: gqa(1, 100, 2, 2, 80), fused: true, q_std: 1.5, warps: 4, window: None },
        Case { dt: KDType::BF16, shape: gqa(1, 50, 2, 1, 256), fused: false, q_std: 1.0, warps: 4, window: None },
    ];
    for (i, c) in cases.iter().enumerate() {
        let (err, mag) = run_flash(c, 7 + i as u64);
        eprintln!("case {i}: max |kernel - reference| {err:.2e}, max |o| {mag:.2}");
        assert!(mag > 0.1, "case {i}: degenerate reference output (max {mag})");
        assert!(err <= tol(c.dt), "case {i} ({:?} {:?} fused={}): max |kernel - reference| = {err}", c.dt, c.shape, c.fused);
    }
}

#[test]
fn flash_attention_emulator_refuses_what_the_kernel_does_not_cover() {
    let shape = AttnShape { batch: 1, seq: 4, n_heads: 2, n_kv_heads: 1, head_dim: 48 };
    let st = Strides::contiguous(4, 2, 48);
    let x = vec![0u16; 4 * 2 * 48];
    let e = emu::flash_attn_fwd(KDType::BF16, 4, shape, &x, st, &x, st, &x, st, 1.0, None).unwrap_err();
    assert!(e.contains("head_dim 48"), "{e}");
    // k too short for its strides
    let shape = AttnShape { head_dim: 64, ..shape };
    let st = Strides::contiguous(4, 2, 64);
    let e = emu::flash_attn_fwd(KDType::BF16, 4, shape, &vec![0; 512], st, &[0; 100], st, &vec![0; 512], st, 1.0, None).unwrap_err();
    assert!(e.starts_with("k:"), "{e}");
    // v rows not 16-byte aligned
    let odd = Strides { batch: 4 * 132, seq: 132, head: 66 };
    let e = emu::flash_attn_fwd(KDType::BF16, 4, shape, &vec![0; 512], st, &vec![0; 512], st, &vec![0; 600], odd, 1.0, None).unwrap_err();
    assert!(e.contains("16-byte"), "{e}");
}

/// Logits for the CE kernels: n rows of `vocab` placed by `rows`, random with a few extremes.
fn ce_inputs(n: usize, vocab: usize, rows: Rows, seed: u64) -> (Vec<f32>, Vec<u32>) {
    let mut rng = StdRng::seed_from_u64(seed);
    let len = (0..n).map(|r| rows.at(r) + vocab).max().unwrap();
    let mut x = normal(&mut rng, len, 3.0);
    // one row with a dominant logit, one very flat row
    x[vocab / 2] = 60.0;
    if n > 1 {
        for v in &mut x[rows.at(1)..rows.at(1) + vocab] {
            *v *= 1e-3;
        }
    }
    let t = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
    (x, t)
}

#[test]
fn token_ce_kernels_match_the_reference() {
    // contiguous rows, padded rows (130: every other row misaligned), a vocabulary of one,
    // and the rows of a [3, 2, vocab] view of [3, 3, vocab] logits (what narrowing the
    // model's logits to s - 1 gives)
    let cases = [
        (1002usize, Rows::uniform(1002)),
        (100, Rows::uniform(130)),
        (1, Rows::uniform(1)),
        (4099, Rows { seq: 2, stride_b: 3 * 4099, stride_s: 4099 }),
        // whole 16-byte vectors on aligned rows (the kernels' vector loads and stores)
        (4096, Rows { seq: 2, stride_b: 3 * 4096, stride_s: 4096 }),
        (1000, Rows::uniform(1000)),
    ];
    for (vocab, rows) in cases {
        let n = 6;
        let (x, targets) = ce_inputs(n, vocab, rows, vocab as u64);
        let dloss: Vec<f32> = (0..n).map(|i| 0.5 + i as f32).collect();
        for dt in [KDType::F32, KDType::BF16, KDType::F16] {
            let (bits, vals) = if dt == KDType::F32 { (vec![], x.clone()) } else { quantize(dt, &x) };
            let logits = || if dt == KDType::F32 { Logits::F32(&vals) } else { Logits::Bits(dt, &bits) };
            let (want_loss, want_lse) = reference::token_ce(&vals, rows, &targets, vocab);
            let (loss, lse) = emu::token_ce_fwd(logits(), rows, &targets, vocab).unwrap();
            for r in 0..n {
                let ctx = format!("{dt:?} vocab {vocab} row {r}");
                assert!((loss[r] - want_loss[r]).abs() <= 2e-5 * want_loss[r].abs().max(1.0), "{ctx}: loss {} vs {}", loss[r], want_loss[r]);
                assert!((lse[r] - want_lse[r]).abs() <= 2e-5 * want_lse[r].abs().max(1.0), "{ctx}: lse {} vs {}", lse[r], want_lse[r]);
            }
            let want = reference::token_ce_backward(&vals, rows, &targets, &dloss, vocab);
            let got = emu::token_ce_bwd(logits(), rows, &targets, &lse, &dloss, vocab).unwrap();
            // the gradient is rounded to the logits' type
            let rel = match dt {
                KDType::F32 => 1e-5,
                KDType::F16 => 1e-3,
                KDType::BF16 => 8e-3,
            };
            for (i, (g, w)) in got.iter().zip(&want).enumerate() {
                assert!((g - w).abs() <= rel * w.abs() + 1e-6, "{dt:?} vocab {vocab} grad {i}: {g} vs {w}");
            }
        }
    }
}

#[test]
fn token_ce_kernel_gives_nan_for_a_target_outside_the_vocabulary_and_for_nan_logits() {
    let (mut x, mut t) = ce_inputs(3, 300, Rows::uniform(300), 1);
    t[0] = 300;
    x[2 * 300 + 17] = f32::NAN;
    let (loss, _) = emu::token_ce_fwd(Logits::F32(&x), Rows::uniform(300), &t, 300).unwrap();
    assert!(loss[0].is_nan() && loss[1].is_finite() && loss[2].is_nan(), "{loss:?}");
}

#[test]
fn reference_ce_agrees_with_the_training_loss_and_its_autograd_gradient() -> candle_core::Result<()> {
    // Ties the references to the differentiable loss the training loop uses.
    let (n, vocab) = (6, 257);
    let (x, targets) = ce_inputs(n, vocab, Rows::uniform(vocab), 3);
    let dloss: Vec<f32> = (0..n).map(|i| 1.0 + i as f32 * 0.25).collect();
    let dev = Device::Cpu;
    let var = candle_core::Var::from_tensor(&Tensor::from_vec(x.clone(), (1, n, vocab), &dev)?)?;
    let t = Tensor::from_vec(targets.clone(), (1, n), &dev)?;
    let loss = rho::model::loss::per_token_loss(var.as_tensor(), &t)?;
    let weighted = (loss.clone() * Tensor::from_vec(dloss.clone(), (1, n), &dev)?)?.sum_all()?;
    let grads = weighted.backward()?;
    let g = grads.get(var.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
    let (want_loss, _) = reference::token_ce(&x, Rows::uniform(vocab), &targets, vocab);
    for (a, b) in loss.flatten_all()?.to_vec1::<f32>()?.iter().zip(&want_loss) {
        assert!((a - b).abs() < 1e-4, "{a} vs {b}");
    }
    let want = reference::token_ce_backward(&x, Rows::uniform(vocab), &targets, &dloss, vocab);
    for (a, b) in g.iter().zip(&want) {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
    Ok(())
}

#[test]
fn the_training_loss_on_cpu_is_the_fused_op_unless_switched_off() -> candle_core::Result<()> {
    // train_token_loss picks the fused op on CPU (its forward and gradient bits are those of
    // token_cross_entropy), and per_token_loss's when `loss` is left out of RHO_FUSED_KERNELS.
    use rho::cuda::{with_fused, Fused};
    let dev = Device::Cpu;
    let (b, s, v) = (3, 5, 4099);
    let logits = (Tensor::randn(0f32, 2.0, (b, s, v), &dev)? * 3.0)?;
    let targets = Tensor::from_vec((0..b * s).map(|i| (i * 811 % v) as u32).collect::<Vec<_>>(), (b, s), &dev)?;
    let w = Tensor::from_vec((0..b * s).map(|i| 1.0 + i as f32 / 3.0).collect::<Vec<_>>(), (b, s), &dev)?;
    let run = |f: &dyn Fn(&Tensor) -> candle_core::Result<Tensor>| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
        let var = candle_core::Var::from_tensor(&logits)?;
        let loss = f(var.as_tensor())?;
        let g = (loss.clone() * &w)?.sum_all()?.backward()?;
        Ok((loss.flatten_all()?.to_vec1()?, g.get(var.as_tensor()).unwrap().flatten_all()?.to_vec1()?))
    };
    let mut all = [true; Fused::ALL.len()];
    let fused = run(&|x| rho::cuda::token_cross_entropy(x, &targets))?;
    let composed = run(&|x| rho::model::loss::per_token_loss(x, &targets))?;
    assert_ne!(fused.1, composed.1, "the two paths should differ in the last bits");
    assert_eq!(with_fused(all, || run(&|x| rho::model::loss::train_token_loss(x, &targets)))?, fused);
    all[Fused::Loss as usize] = false;
    assert_eq!(with_fused(all, || run(&|x| rho::model::loss::train_token_loss(x, &targets)))?, composed);
    // and they agree to f32 rounding: losses and gradients to 1e-5 relative
    for (a, c) in fused.0.iter().zip(&composed.0) {
        assert!((a - c).abs() <= 1e-5 * c.abs().max(1.0), "loss {a} vs {c}");
    }
    for (a, c) in fused.1.iter().zip(&composed.1) {
        assert!((a - c).abs() <= 1e-5 * c.abs().max(1e-2), "grad {a} vs {c}");
    }
    Ok(())
}

#[test]
fn token_cross_entropy_op_and_its_gradient_match_the_training_loss() -> candle_core::Result<()> {
    // The differentiable op (CPU: the references) on a narrowed [b, s - 1, vocab] view,
    // against per_token_loss and candle's autograd, in f32 and bf16.
    let dev = Device::Cpu;
    let (b, s, v) = (2, 7, 301);
    let full = (Tensor::randn(0f32, 3.0, (b, s, v), &dev)? + 1.0)?;
    let targets = Tensor::from_vec((0..b * (s - 1)).map(|i| (i * 53 % v) as u32).collect::<Vec<_>>(), (b, s - 1), &dev)?;
    let w = Tensor::from_vec((0..b * (s - 1)).map(|i| 0.5 + i as f32 / 7.0).collect::<Vec<_>>(), (b, s - 1), &dev)?;
    for dt in [DType::F32, DType::BF16] {
        let grads_of = |fused: bool| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let var = candle_core::Var::from_tensor(&full.to_dtype(dt)?)?;
            let x = var.as_tensor().narrow(1, 0, s - 1)?;
            let loss = if fused {
                rho::cuda::token_cross_entropy(&x, &targets)?
            } else {
                rho::model::loss::per_token_loss(&x, &targets)?
            };
            let g = (loss.clone() * &w)?.sum_all()?.backward()?;
            let g = g.get(var.as_tensor()).unwrap().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((loss.flatten_all()?.to_vec1::<f32>()?, g))
        };
        let (l1, g1) = grads_of(true)?;
        let (l2, g2) = grads_of(false)?;
        for (a, b) in l1.iter().zip(&l2) {
            assert!((a - b).abs() < 1e-4 * b.abs().max(1.0), "{dt:?} loss {a} vs {b}");
        }
        let tol = if dt == DType::F32 { 1e-5 } else { 1e-2 };
        let mut nonzero = 0;
        for (i, (a, b)) in g1.iter().zip(&g2).enumerate() {
            assert!((a - b).abs() <= tol * b.abs().max(1e-2), "{dt:?} grad {i}: {a} vs {b}");
            nonzero += (*a != 0.0) as usize;
        }
        // the last position of each row is outside the narrowed view: zero gradient there
        assert!(nonzero > b * (s - 1) * v / 2 && g1[(s - 1) * v..s * v].iter().all(|&x| x == 0.0));
    }
    let bad = Tensor::from_vec(vec![v as u32; b * (s - 1)], (b, s - 1), &dev)?;
    let e = rho::cuda::token_cross_entropy(&full.narrow(1, 0, s - 1)?, &bad).unwrap_err().to_string();
    assert!(e.contains("301"), "{e}");
    Ok(())
}

#[test]
fn flash_attention_op_matches_softmax_attention_on_strided_inputs() -> candle_core::Result<()> {
    // The candle op (CPU: the reference) on views of a fused projection, against
    // softmax(q k^T * scale + causal mask) v with repeated kv heads.
    let dev = Device::Cpu;
    let (b, s, nh, nkv, d) = (2, 9, 4, 2, 8);
    let fused = Tensor::randn(0f32, 1.0, (b, s, nh + 2 * nkv, d), &dev)?;
    let q = fused.narrow(2, 0, nh)?;
    let k = fused.narrow(2, nh, nkv)?;
    let v = fused.narrow(2, nh + nkv, nkv)?;
    let scale = 0.3f32;
    let got = rho::cuda::flash_attention(&q, &k, &v, scale, None)?;
    assert_eq!(got.dims(), &[b, s, nh, d]);
    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
        // [b, s, nkv, d] -> [b, nh, s, d], each kv head used by nh / nkv query heads in a row
        let x = x.transpose(1, 2)?.contiguous()?;
        x.unsqueeze(2)?.expand((b, nkv, nh / nkv, s, d))?.reshape((b, nh, s, d))
    };
    let qt = q.transpose(1, 2)?.contiguous()?;
    let mask: Vec<f32> = (0..s).flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (s, s), &dev)?;
    let scores = (qt.matmul(&rep(&k)?.t()?)? * scale as f64)?.broadcast_add(&mask)?;
    let want = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&rep(&v)?)?.transpose(1, 2)?;
    let diff = (got - want)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
    assert!(diff < 1e-5, "max diff {diff}");
    // bad shapes name the dims
    let e = rho::cuda::flash_attention(&q, &k.narrow(1, 0, 3)?, &v, scale, None).unwrap_err().to_string();
    assert!(e.contains("[2, 9, 4, 8]") && e.contains("[2, 3, 2, 8]"), "{e}");
    let e = rho::cuda::flash_attention(&q.narrow(2, 0, 3)?, &k, &v, scale, None).unwrap_err().to_string();
    assert!(e.contains("not a multiple"), "{e}");
    Ok(())
}

#[test]
fn flash_attention_op_in_a_sliding_window_matches_the_masked_composed_path() -> candle_core::Result<()> {
    // The candle ops (CPU: attn_cpu) with a window, forward and gradients, against softmax
    // attention under cuda::mask::causal_mask with candle's autograd; strided views of a fused
    // projection, grouped-query heads, more than one 64-row block.
    let dev = Device::Cpu;
    let (b, s, nh, nkv, d) = (2, 140, 4, 2, 8);
    let fused = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, nh + 2 * nkv, d), &dev)?)?;
    let (q, k, v) = (fused.narrow(2, 0, nh)?, fused.narrow(2, nh, nkv)?, fused.narrow(2, nh + nkv, nkv)?);
    let g = Tensor::randn(0f32, 1.0, (b, s, nh, d), &dev)?;
    let scale = 0.4f32;
    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.transpose(1, 2)?.contiguous()?.unsqueeze(2)?.expand((b, nkv, nh / nkv, s, d))?.reshape((b, nh, s, d))
    };
    let max_diff = |a: &Tensor, b: &Tensor| -> candle_core::Result<f32> { (a - b)?.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>() };
    let grad = |o: &Tensor| -> candle_core::Result<Tensor> {
        let gs = (o * &g)?.sum_all()?.backward()?;
        Ok(gs.get(fused.as_tensor()).unwrap().clone())
    };
    let mut plain_none = None;
    for window in [None, Some(1usize), Some(10), Some(64), Some(100), Some(139)] {
        let mask = rho::cuda::mask::causal_mask(s, window, DType::F32, &dev)?;
        let qt = q.transpose(1, 2)?.contiguous()?;
        let scores = (qt.matmul(&rep(&k)?.t()?)? * scale as f64)?.broadcast_add(&mask)?;
        let want = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&rep(&v)?)?.transpose(1, 2)?;
        let got = rho::cuda::flash_attention(&q, &k, &v, scale, window)?;
        assert!(max_diff(&got, &want)? < 1e-5, "window {window:?}: forward {}", max_diff(&got, &want)?);
        let train = rho::cuda::flash_attention_train(&q, &k, &v, scale, window)?;
        assert!(max_diff(&train, &want)? < 1e-5, "window {window:?}: training forward");
        let (gw, gt) = (grad(&want)?, grad(&train)?);
        let mag = gw.abs()?.flatten_all()?.max(0)?.to_scalar::<f32>()?;
        assert!(mag > 0.1 && max_diff(&gw, &gt)? < 1e-4 * mag, "window {window:?}: gradient {} (max {mag})", max_diff(&gw, &gt)?);
        if window.is_none() {
            plain_none = Some(got);
        } else {
            assert!(max_diff(&got, plain_none.as_ref().unwrap())? > 1e-3, "window {window:?} changes nothing");
        }
    }
    // a window of at least s keys is no window, bit for bit; 0 keys is an error
    let none = rho::cuda::flash_attention(&q, &k, &v, scale, None)?.flatten_all()?.to_vec1::<f32>()?;
    for w in [s, s + 1, usize::MAX] {
        assert!(rho::cuda::flash_attention(&q, &k, &v, scale, Some(w))?.flatten_all()?.to_vec1::<f32>()? == none, "window {w}");
    }
    for e in [rho::cuda::flash_attention(&q, &k, &v, scale, Some(0)), rho::cuda::flash_attention_train(&q, &k, &v, scale, Some(0))] {
        let e = e.unwrap_err().to_string();
        assert!(e.contains("sliding window must be at least 1"), "{e}");
    }
    Ok(())
}

#[test]
fn every_family_gives_the_same_logits_through_the_flash_attention_path() {
    // Wiring of the flash path (layouts of the fused projections, RoPE in [b, s, h, d],
    // partial rotary, grouped-query heads), with the op's CPU implementation standing in for
    // the kernel, against candle's composed attention.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let ids: Vec<u32> = (0..2 * 23).map(|i| (i * 37 + 11) % 250).collect();
    for family in [
        "llama/step-100",
        "neox/step2000",
        "neox-seq/step1",
        "gpt2/checkpoint-20",
        "qwen2/step-1",
        "mistral/step-1",
        // issue 19's families; OLMo-3's and Qwen3's sliding layers (window 8) bind inside the sequence
        "olmo/step1000-tokens4B",
        "olmo2/stage1-step600-tokens3B",
        "olmo3/stage1-step2000",
        "smollm3/step-40000",
        "qwen3/checkpoint-500",
    ] {
        let dir = root.join(family);
        let ck = Checkpoint::open(&dir).unwrap();
        let vocab = ck.config.vocab_size as u32;
        let x = Tensor::from_vec(ids.iter().map(|i| i % vocab).collect::<Vec<_>>(), (2, 23), &Device::Cpu).unwrap();
        let flash = ck.load(DType::F32, &Device::Cpu, Mode::Eval).unwrap();
        assert!(flash.uses_flash_attention(), "CPU models use rho's attention op by default");
        let plain = flash.clone().with_flash_attention(false);
        assert!(!plain.uses_flash_attention());
        let a = plain.forward(&x).unwrap();
        let b = flash.forward(&x).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "{family}: max logit diff {diff}");
    }
}

#[test]
fn reference_attention_backward_matches_autograd() -> candle_core::Result<()> {
    // The f64 reference gradients against candle's autograd of softmax attention (f32).
    let dev = Device::Cpu;
    let (b, s, nh, nkv, d) = (2, 7, 4, 2, 8);
    let shape = AttnShape { batch: b, seq: s, n_heads: nh, n_kv_heads: nkv, head_dim: d };
    let mut rng = StdRng::seed_from_u64(5);
    let (q, k, v, g) = (normal(&mut rng, b * s * nh * d, 1.0), normal(&mut rng, b * s * nkv * d, 1.0), normal(&mut rng, b * s * nkv * d, 1.0), normal(&mut rng, b * s * nh * d, 1.0));
    let scale = 0.4f32;
    let (qs, ks) = (Strides::contiguous(s, nh, d), Strides::contiguous(s, nkv, d));
    let (dq, dk, dv) = reference::causal_attention_backward(shape, &q, qs, &k, ks, &v, ks, &g, qs, scale, None);
    let var = |x: &[f32], h: usize| candle_core::Var::from_tensor(&Tensor::from_vec(x.to_vec(), (b, s, h, d), &dev).unwrap()).unwrap();
    let (qv, kv, vv) = (var(&q, nh), var(&k, nkv), var(&v, nkv));
    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
        x.transpose(1, 2)?.contiguous()?.unsqueeze(2)?.expand((b, nkv, nh / nkv, s, d))?.reshape((b, nh, s, d))
    };
    let mask: Vec<f32> = (0..s).flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
    let mask = Tensor::from_vec(mask, (s, s), &dev)?;
    let qt = qv.as_tensor().transpose(1, 2)?.contiguous()?;
    let scores = (qt.matmul(&rep(kv.as_tensor())?.t()?)? * scale as f64)?.broadcast_add(&mask)?;
    let o = candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&rep(vv.as_tensor())?)?.transpose(1, 2)?;
    let gt = Tensor::from_vec(g.clone(), (b, s, nh, d), &dev)?;
    let grads = (o * gt)?.sum_all()?.backward()?;
    for (name, v, want) in [("dq", &qv, &dq), ("dk", &kv, &dk), ("dv", &vv, &dv)] {
        let got = grads.get(v.as_tensor()).unwrap().flatten_all()?.to_vec1::<f32>()?;
        let err = got.iter().zip(want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(err < 1e-4, "{name}: max diff {err}");
        assert!(want.iter().any(|x| x.abs() > 0.1), "{name}: degenerate");
    }
    Ok(())
}

#[test]
fn flash_attention_backward_kernel_matches_the_reference() {
    let gqa_d = |head_dim| move |batch, seq, n_heads, n_kv_heads| AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
    let (gqa, gqa128, gqa32, gqa80) = (gqa_d(64), gqa_d(128), gqa_d(32), gqa_d(80));
    // (dtype, shape, fused layout): one partial key tile with grouped-query heads; several key
    // and query tiles; exactly one tile; views of one fused projection; head dim 128
    // (32-key blocks of 2 warps); head dim 32 (64-key blocks); head dim 80 (32-key blocks,
    // the odd last 16 columns of S^T = K Q^T and dP^T = V dO^T alone)
    let cases = [
        (KDType::BF16, gqa(1, 77, 2, 1), false),
        (KDType::BF16, gqa(2, 150, 2, 2), false),
        (KDType::F16, gqa(1, 64, 4, 2), false),
        (KDType::F16, gqa(1, 100, 2, 2), true),
        (KDType::BF16, gqa128(1, 90, 4, 2), false),
        (KDType::F16, gqa128(1, 65, 2, 2), true),
        (KDType::BF16, gqa32(1, 140, 4, 2), false),
        (KDType::F16, gqa32(1, 70, 2, 2), true),
        (KDType::F16, gqa80(1, 90, 4, 2), false),
        (KDType::BF16, gqa80(2, 45, 2, 2), true),
    ];
    for (ci, (dt, shape, fused)) in cases.into_iter().enumerate() {
        check_flash_bwd(&format!("case {ci}"), dt, shape, fused, None, 40 + ci as u64);
    }
}

/// The emulated training forward (its normalisers against the reference's) and backward
/// against the f64 reference gradients, in the sliding `window`; q, k, v contiguous, or
/// (`fused`) views of one [b, s, n_heads, 3, d] projection.
fn check_flash_bwd(label: &str, dt: KDType, shape: AttnShape, fused: bool, window: Option<usize>, seed: u64) {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let mut rng = StdRng::seed_from_u64(seed);
    let (qb, kb, vb, qs, ks, vs);
    if fused {
        let (bits, _) = quantize(dt, &normal(&mut rng, batch * seq * n_heads * 3 * d, 1.0));
        let st = Strides { batch: seq * n_heads * 3 * d, seq: n_heads * 3 * d, head: 3 * d };
        (qb, kb, vb) = (bits.clone(), bits[d..].to_vec(), bits[2 * d..].to_vec());
        (qs, ks, vs) = (st, st, st);
    } else {
        qb = quantize(dt, &normal(&mut rng, batch * seq * n_heads * d, 1.5)).0;
        kb = quantize(dt, &normal(&mut rng, batch * seq * n_kv_heads * d, 1.0)).0;
        vb = quantize(dt, &normal(&mut rng, batch * seq * n_kv_heads * d, 1.0)).0;
        (qs, ks, vs) = (Strides::contiguous(seq, n_heads, d), Strides::contiguous(seq, n_kv_heads, d), Strides::contiguous(seq, n_kv_heads, d));
    }
    let (gb, gv) = quantize(dt, &normal(&mut rng, batch * seq * n_heads * d, 1.0));
    let gs = Strides::contiguous(seq, n_heads, d);
    let f = |x: &[u16]| x.iter().map(|&b| emu::bits_to_f32(dt, b)).collect::<Vec<f32>>();
    let (qf, kf, vf) = (f(&qb), f(&kb), f(&vb));
    let scale = 1.0 / 8.0;
    // forward with the normalisers, against the reference's
    let (o, lse) = emu::flash_attn_fwd_lse(dt, 4, shape, &qb, qs, &kb, ks, &vb, vs, scale, window).unwrap();
    let (_, want_lse) = reference::causal_attention_lse(shape, &qf, qs, &kf, ks, &vf, vs, scale, window);
    let lse_err = lse.iter().zip(&want_lse).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
    assert!(lse_err < 1e-3, "{label}: lse2 max diff {lse_err}");
    // D = rowsum(dout * o) from the kernel's own output, as the GPU path computes it
    let of = f(&o);
    let dsum: Vec<f32> = (0..batch * seq * n_heads).map(|r| (0..d).map(|c| gv[r * d + c] * of[r * d + c]).sum()).collect();
    let (dq, dk, dv) = emu::flash_attn_bwd(dt, shape, &qb, qs, &kb, ks, &vb, vs, &gb, gs, &lse, &dsum, scale, window).unwrap();
    let (wq, wk, wv) = reference::causal_attention_backward(shape, &qf, qs, &kf, ks, &vf, vs, &gv, gs, scale, window);
    let tol = if dt == KDType::BF16 { 3e-2 } else { 6e-3 };
    for (name, got, want) in [("dq", dq, wq), ("dk", f(&dk), wk), ("dv", f(&dv), wv)] {
        let mag = want.iter().fold(0f32, |m, x| m.max(x.abs()));
        let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        eprintln!("{label} {name}: max |kernel - reference| {err:.2e}, max |ref| {mag:.2}");
        // (a window of 1 key: softmax over one score, dq = dk = 0)
        assert!(mag > 0.1 || (window == Some(1) && name != "dv"), "{label} {name}: degenerate reference");
        assert!(got.iter().all(|x| x.is_finite()) && err <= tol * mag.max(1e-3), "{label} ({dt:?} {shape:?} fused={fused} window={window:?}) {name}: max diff {err} vs max {mag}");
    }
}

#[test]
fn flash_attention_kernels_match_the_reference_in_a_sliding_window() {
    // Forward, every compiled configuration (64-key tiles with 4 and 8 warps, 32-key tiles at
    // d128, 16-key tiles at d256), and backward (64-key blocks at d32/d64, 32-key at d80/d128),
    // with windows of 1 key, smaller than a tile, one tile, one more or less, not a multiple
    // of it, reaching back over query blocks, and longer than the sequence; grouped-query heads;
    // q, k, v as views of one fused projection.
    let gqa = |batch, seq, n_heads, n_kv_heads, head_dim| AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
    let fwd = [
        (KDType::BF16, gqa(2, 150, 4, 2, 64), false, 4, 1usize),
        (KDType::BF16, gqa(1, 150, 4, 2, 64), false, 4, 5),
        (KDType::F16, gqa(1, 150, 2, 1, 64), false, 4, 64),
        (KDType::BF16, gqa(1, 150, 2, 1, 64), false, 4, 65),
        (KDType::BF16, gqa(1, 200, 2, 1, 64), false, 8, 37),
        (KDType::F16, gqa(1, 260, 2, 1, 64), false, 8, 129),
        (KDType::BF16, gqa(1, 130, 4, 1, 128), false, 4, 31),
        (KDType::F16, gqa(1, 130, 2, 2, 128), true, 4, 33),
        (KDType::BF16, gqa(2, 100, 2, 2, 32), true, 4, 7),
        (KDType::BF16, gqa(1, 140, 2, 2, 80), true, 4, 90),
        (KDType::BF16, gqa(1, 60, 2, 1, 256), false, 4, 17),
        (KDType::F16, gqa(1, 70, 2, 1, 64), false, 4, 500),
    ];
    for (i, (dt, shape, fused, warps, w)) in fwd.into_iter().enumerate() {
        let c = Case { dt, shape, fused, q_std: 2.0, warps, window: Some(w) };
        let (err, mag) = run_flash(&c, 300 + i as u64);
        eprintln!("forward {i} window {w}: max |kernel - reference| {err:.2e}, max |o| {mag:.2}");
        assert!(mag > 0.1 && err <= tol(dt), "forward {i} ({dt:?} {shape:?} warps {warps} window {w}): max diff {err}");
    }
    let bwd = [
        (KDType::BF16, gqa(1, 150, 2, 1, 64), false, 1usize),
        (KDType::F16, gqa(1, 150, 4, 2, 64), false, 5),
        (KDType::BF16, gqa(2, 200, 2, 2, 64), false, 65),
        (KDType::F16, gqa(1, 100, 2, 2, 64), true, 100),
        (KDType::BF16, gqa(1, 130, 4, 2, 128), false, 33),
        (KDType::F16, gqa(1, 90, 2, 1, 128), false, 9),
        (KDType::F16, gqa(1, 140, 2, 1, 32), false, 70),
        (KDType::BF16, gqa(1, 90, 2, 2, 80), true, 31),
        (KDType::F16, gqa(1, 70, 2, 1, 80), false, 300),
    ];
    for (i, (dt, shape, fused, w)) in bwd.into_iter().enumerate() {
        check_flash_bwd(&format!("backward {i} window {w}"), dt, shape, fused, Some(w), 400 + i as u64);
    }
    // a window of 0 keys is refused
    let shape = gqa(1, 4, 1, 1, 64);
    let x = vec![0u16; 4 * 64];
    let st = Strides::contiguous(4, 1, 64);
    let e = emu::flash_attn_fwd(KDType::BF16, 4, shape, &x, st, &x, st, &x, st, 1.0, Some(0)).unwrap_err();
    assert!(e.contains("at least 1"), "{e}");
}

#[test]
fn every_family_trains_with_the_same_gradients_through_the_flash_attention_path() {
    // Mode::Train through the op with its backward (CPU: attn_cpu) against the plain
    // differentiable attention: every parameter's gradient, and each one non-zero (the
    // differentiable RoPE of the [b, s, h, d] layout included).
    use candle_nn::VarBuilder;
    use rho::model::{Transformer, Weights};
    use rho::train::params::ParamSource;
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let ids: Vec<u32> = (0..2 * 17).map(|i| (i * 29 + 5) % 250).collect();
    for family in [
        "llama/step-100",
        "neox/step2000",
        "gpt2/checkpoint-20",
        "qwen2/step-1",
        "olmo/step1000-tokens4B",
        "olmo2/stage1-step150-tokens1B",
        "olmo3/stage1-step1000",
        "smollm3/step-40000",
        "qwen3/checkpoint-500",
    ] {
        let dir = root.join(family);
        let ck = Checkpoint::open(&dir).unwrap();
        let src = ParamSource::new(Some(Weights::open(&dir).unwrap()), 0, 0.02);
        let varmap = src.varmap.clone();
        let vb = VarBuilder::from_backend(Box::new(src), DType::F32, Device::Cpu);
        let flash = Transformer::new(&ck.config, vb, Mode::Train).unwrap();
        assert!(flash.uses_flash_attention(), "CPU training uses rho's attention op by default");
        let plain = flash.clone().with_flash_attention(false);
        assert!(!plain.uses_flash_attention());
        let vocab = ck.config.vocab_size as u32;
        let x = Tensor::from_vec(ids.iter().map(|i| i % vocab).collect::<Vec<_>>(), (2, 17), &Device::Cpu).unwrap();
        let targets = x.narrow(1, 1, 16).unwrap().contiguous().unwrap();
        let grads_of = |m: &Transformer| {
            let logits = m.forward(&x).unwrap();
            let l = rho::model::loss::per_token_loss(&logits.narrow(1, 0, 16).unwrap(), &targets).unwrap();
            l.mean_all().unwrap().backward().unwrap()
        };
        let (ga, gb) = (grads_of(&plain), grads_of(&flash));
        let vars = varmap.data().lock().unwrap();
        assert!(vars.len() > 5);
        for (name, var) in vars.iter() {
            let a = ga.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {name} (plain)"));
            let b = gb.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {name} (flash)"));
            let scale = a.abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            let diff = (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
            assert!(scale > 0.0, "{family}: zero gradient for {name}");
            assert!(diff <= 1e-4 * scale.max(1e-3), "{family} {name}: max grad diff {diff} (max {scale})");
        }
    }
}

#[test]
fn flash_kernels_are_right_at_every_tile_boundary() {
    // Sequence lengths around the tile sizes of every compiled configuration: 16-key tiles
    // (head dim 256), 32-key tiles (128), 64-key tiles, 64- and 128-row query blocks; head
    // dim 80 takes the odd last 16 columns alone; forward and backward.
    for (d, warps) in [(64usize, 4usize), (64, 8), (128, 4), (32, 4), (80, 4), (256, 4)] {
        for seq in [1usize, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128, 129] {
            let shape = AttnShape { batch: 1, seq, n_heads: 2, n_kv_heads: 1, head_dim: d };
            let c = Case { dt: KDType::BF16, shape, fused: false, q_std: 2.0, warps, window: None };
            let (err, mag) = run_flash(&c, 1000 + seq as u64);
            assert!(err <= tol(KDType::BF16) && mag > 0.0, "d {d} warps {warps} seq {seq}: max diff {err}");
        }
        // sliding windows around the key tiles (16, 32, 64) and query blocks (64, 128 rows)
        for w in [1usize, 2, 15, 16, 17, 31, 32, 33, 63, 64, 65, 127, 128] {
            let shape = AttnShape { batch: 1, seq: 150, n_heads: 2, n_kv_heads: 1, head_dim: d };
            let c = Case { dt: KDType::BF16, shape, fused: false, q_std: 2.0, warps, window: Some(w) };
            let (err, mag) = run_flash(&c, 3000 + w as u64);
            assert!(err <= tol(KDType::BF16) && mag > 0.0, "d {d} warps {warps} window {w}: max diff {err}");
        }
    }
    let bwd_cases = [1usize, 2, 63, 64, 65, 128, 129].map(|s| (64usize, s)).into_iter().chain([1usize, 31, 32, 33, 65].map(|s| (128, s)));
    let bwd_cases = bwd_cases.chain([1usize, 63, 64, 65, 129].map(|s| (32, s))).chain([1usize, 31, 32, 33, 65].map(|s| (80, s)));
    let bwd_cases = bwd_cases.map(|(d, s)| (d, s, None));
    // sliding windows around the 64-key (d32, d64) and 32-key (d80, d128) blocks, seq 150: the
    // last query that sees a block's last key (k0 + BC + w - 2) or a warp's last key starts a
    // query tile where w = 2 (mod 16)
    let windows = [1usize, 2, 18, 32, 33, 34, 64, 65, 66, 100];
    let bwd_cases = bwd_cases.chain([32usize, 64, 80, 128].into_iter().flat_map(move |d| windows.map(|w| (d, 150, Some(w)))));
    for (d, seq, window) in bwd_cases {
        let shape = AttnShape { batch: 1, seq, n_heads: 2, n_kv_heads: 1, head_dim: d };
        let mut rng = StdRng::seed_from_u64(2000 + seq as u64);
        let qs = Strides::contiguous(seq, 2, d);
        let ks = Strides::contiguous(seq, 1, d);
        let (qb, qf) = quantize(KDType::F16, &normal(&mut rng, seq * 2 * d, 1.5));
        let (kb, kf) = quantize(KDType::F16, &normal(&mut rng, seq * d, 1.0));
        let (vb, vf) = quantize(KDType::F16, &normal(&mut rng, seq * d, 1.0));
        let (gb, gf) = quantize(KDType::F16, &normal(&mut rng, seq * 2 * d, 1.0));
        let (o, lse) = emu::flash_attn_fwd_lse(KDType::F16, 4, shape, &qb, qs, &kb, ks, &vb, ks, 0.125, window).unwrap();
        let dsum: Vec<f32> = (0..seq * 2).map(|r| (0..d).map(|c| gf[r * d + c] * emu::bits_to_f32(KDType::F16, o[r * d + c])).sum()).collect();
        let (dq, dk, dv) = emu::flash_attn_bwd(KDType::F16, shape, &qb, qs, &kb, ks, &vb, ks, &gb, qs, &lse, &dsum, 0.125, window).unwrap();
        let (wq, wk, wv) = reference::causal_attention_backward(shape, &qf, qs, &kf, ks, &vf, ks, &gf, qs, 0.125, window);
        let f = |x: &[u16]| x.iter().map(|&b| emu::bits_to_f32(KDType::F16, b)).collect::<Vec<f32>>();
        for (name, got, want) in [("dq", dq, wq), ("dk", f(&dk), wk), ("dv", f(&dv), wv)] {
            let mag = want.iter().fold(0f32, |m, x| m.max(x.abs()));
            let err = got.iter().zip(&want).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
            assert!(err <= 6e-3 * mag.max(1e-3), "d {d} seq {seq} window {window:?} {name}: max diff {err} vs max {mag}");
        }
    }
}

#[test]
fn the_training_op_can_be_differentiated_twice() {
    // Two losses over one forward (the normalisers the forward kept are not used up).
    let dev = Device::Cpu;
    let q = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (1, 5, 2, 8), &dev).unwrap()).unwrap();
    let k = Tensor::randn(0f32, 1.0, (1, 5, 1, 8), &dev).unwrap();
    let v = Tensor::randn(0f32, 1.0, (1, 5, 1, 8), &dev).unwrap();
    let o = rho::cuda::flash_attention_train(q.as_tensor(), &k, &v, 0.3, None).unwrap();
    let g1 = o.sum_all().unwrap().backward().unwrap();
    let g2 = (o.clone() * 2.0).unwrap().sum_all().unwrap().backward().unwrap();
    let (a, b) = (g1.get(q.as_tensor()).unwrap(), g2.get(q.as_tensor()).unwrap());
    assert!(a.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap() > 1e-3, "degenerate gradient");
    let diff = ((a * 2.0).unwrap() - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(diff < 1e-5, "{diff}");
}

/// The optimizer kernels (optim.cu) in the emulator against rho's CPU ops (`cuda::optim` on
/// CPU tensors: the same f32 arithmetic as Rust loops), on grids smaller and larger than the
/// data (grid-stride loops), for every storage type; and the sum of squares against f64.
#[test]
fn optimizer_kernels_match_the_cpu_ops_on_any_grid() -> candle_core::Result<()> {
    use rho::cuda::optim::{adam_apply, adam_moment, launch_blocks, sum_squares, AdamApply};
    let a = AdamApply { decay: 0.9999, step: 1.1e-3, inv_sqrt_bc2: 2.3, eps: 1e-8 };
    for (dt, kd, ulp) in [(DType::F32, KDType::F32, 2f32.powi(-23)), (DType::BF16, KDType::BF16, 2f32.powi(-7)), (DType::F16, KDType::F16, 2f32.powi(-10))] {
        // odd sizes take the element-wise loop, whole 16-byte vectors (8 or 4 elements) the vector one
        for (i, n) in [1usize, 255, 257, 3001, 8, 3000, 4096].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(900 + i as u64);
            let q = |x: Vec<f32>| if kd == KDType::F32 { x } else { quantize(kd, &x).1 };
            let w = q(normal(&mut rng, n, 1.0));
            let g = q(normal(&mut rng, n, 0.02));
            let m = q(normal(&mut rng, n, 0.02));
            let v = q(normal(&mut rng, n, 0.02).iter().map(|x| x * x).collect());
            // the CPU ops
            let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), n, &Device::Cpu)?.to_dtype(dt);
            let (tw, tg, tm, tv) = (t(&w)?, t(&g)?, t(&m)?, t(&v)?);
            adam_moment(&tm, &tg, 0.9, 0.5, false)?;
            adam_moment(&tv, &tg, 0.95, 0.5, true)?;
            adam_apply(&tw, &tm, &tv, a)?;
            let back = |x: &Tensor| x.to_dtype(DType::F32)?.to_vec1::<f32>();
            let (cm, cv, cw) = (back(&tm)?, back(&tv)?, back(&tw)?);
            let csq = sum_squares(&tg)?.to_scalar::<f32>()?;
            let want_sq: f64 = g.iter().map(|&x| (x as f64).powi(2)).sum();
            assert!(((csq as f64 - want_sq) / want_sq).abs() < 1e-6, "cpu sum {csq} vs {want_sq}");
            for grid in [1, 3, launch_blocks(n)] {
                let em = emu::adam_moment(kd, &m, &g, 0.9, 0.5, false, grid).unwrap();
                let ev = emu::adam_moment(kd, &v, &g, 0.95, 0.5, true, grid).unwrap();
                let ew = emu::adam_apply(kd, &w, &em, &ev, a.decay, a.step, a.inv_sqrt_bc2, a.eps, grid).unwrap();
                for (name, got, want) in [("m", &em, &cm), ("v", &ev, &cv), ("w", &ew, &cw)] {
                    for (j, (x, y)) in got.iter().zip(want.iter()).enumerate() {
                        assert!((x - y).abs() <= ulp * y.abs().max(1e-30), "{dt:?} n={n} grid={grid} {name}[{j}]: kernel {x} vs cpu {y}");
                    }
                }
                // every element was updated (a grid too small for n still covers it)
                assert!(em.iter().zip(&m).filter(|(a, b)| a != b).count() > n * 9 / 10, "{dt:?} n={n} grid={grid}");
                let esq = emu::sum_sq(kd, &g, grid).unwrap();
                assert!(((esq as f64 - want_sq) / want_sq).abs() < 1e-5, "{dt:?} n={n} grid={grid}: sum {esq} vs {want_sq}");
            }
        }
    }
    Ok(())
}

/// The RMSNorm training op on CPU against candle's autograd of the composed norm (the
/// model's previous training path): outputs and both gradients, 3-d input, f32 and bf16.
#[test]
fn rms_norm_op_matches_autograd_of_the_composed_norm() -> candle_core::Result<()> {
    use rho::cuda::norm::rms_norm_train;
    let dev = Device::Cpu;
    for (dt, tol) in [(DType::F32, 2e-5f32), (DType::BF16, 2e-2)] {
        let mut rng = StdRng::seed_from_u64(7);
        let (b, s, h) = (3, 5, 37);
        let x = Tensor::from_vec(normal(&mut rng, b * s * h, 2.0), (b, s, h), &dev)?.to_dtype(dt)?;
        let w = Tensor::from_vec(normal(&mut rng, h, 1.0), h, &dev)?.to_dtype(dt)?;
        let r = Tensor::from_vec(normal(&mut rng, b * s * h, 1.0), (b, s, h), &dev)?;
        let eps = 1e-5;
        let run = |fused: bool| -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            // the reference in f32 (the composed ops accumulate bf16 in bf16 on CPU)
            let xv = candle_core::Var::from_tensor(&if fused { x.clone() } else { x.to_dtype(DType::F32)? })?;
            let wv = candle_core::Var::from_tensor(&if fused { w.clone() } else { w.to_dtype(DType::F32)? })?;
            let y = if fused {
                rms_norm_train(xv.as_tensor(), wv.as_tensor(), eps as f32)?
            } else {
                let xt = xv.as_tensor();
                let ms = xt.sqr()?.mean_keepdim(D::Minus1)?;
                xt.broadcast_div(&(ms + eps)?.sqrt()?)?.broadcast_mul(wv.as_tensor())?
            };
            assert_eq!(y.dims(), &[b, s, h]);
            let grads = (y.to_dtype(DType::F32)? * &r)?.sum_all()?.backward()?;
            let f = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Ok((f(&y)?, f(grads.get(xv.as_tensor()).unwrap())?, f(grads.get(wv.as_tensor()).unwrap())?))
        };
        let (got, want) = (run(true)?, run(false)?);
        for (name, a, b) in [("y", &got.0, &want.0), ("dx", &got.1, &want.1), ("dw", &got.2, &want.2)] {
            let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
            let err = a.iter().zip(b.iter()).map(|(x, y)| (x - y).abs()).fold(0f32, f32::max) / m;
            assert!(err < tol, "{dt:?} {name}: {err} (max {m})");
        }
    }
    // a w of the wrong size names both shapes
    let e = rms_norm_train(&Tensor::zeros((2, 4), DType::F32, &dev)?, &Tensor::zeros(3, DType::F32, &dev)?, 1e-5).unwrap_err().to_string();
    assert!(e.contains("[2, 4]") && e.contains("[3]"), "{e}");
    Ok(())
}

/// The RMSNorm kernels (norm.cu) in the emulator against the CPU op: forward, and the
/// backward on grids of 1 block, 3 blocks and one per row (each block sums its rows' dw).
#[test]
fn rms_norm_kernels_match_the_cpu_op_on_any_grid() -> candle_core::Result<()> {
    use rho::cuda::norm::rms_norm_train;
    for (dt, kd, tol) in [(DType::F32, KDType::F32, 1e-5f32), (DType::BF16, KDType::BF16, 8e-3), (DType::F16, KDType::F16, 1e-3)] {
        for (i, (rows, h)) in [(1usize, 1usize), (7, 64), (5, 300), (3, 2048)].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(40 + i as u64);
            let q = |x: Vec<f32>| if kd == KDType::F32 { x } else { quantize(kd, &x).1 };
            let (x, w, g) = (q(normal(&mut rng, rows * h, 1.5)), q(normal(&mut rng, h, 1.0)), q(normal(&mut rng, rows * h, 1.0)));
            // the CPU op, its backward through autograd
            let dev = Device::Cpu;
            let xv = candle_core::Var::from_tensor(&Tensor::from_vec(x.clone(), (rows, h), &dev)?.to_dtype(dt)?)?;
            let wv = candle_core::Var::from_tensor(&Tensor::from_vec(w.clone(), h, &dev)?.to_dtype(dt)?)?;
            let y = rms_norm_train(xv.as_tensor(), wv.as_tensor(), 1e-5)?;
            let gt = Tensor::from_vec(g.clone(), (rows, h), &dev)?;
            let grads = (y.to_dtype(DType::F32)? * gt)?.sum_all()?.backward()?;
            let f = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            let (cy, cdx) = (f(&y)?, f(grads.get(xv.as_tensor()).unwrap())?);
            let cdw = f(grads.get(wv.as_tensor()).unwrap())?;
            let rel = |a: &[f32], b: &[f32]| {
                let m = b.iter().fold(1e-20f32, |m, v| m.max(v.abs()));
                a.iter().zip(b).map(|(x, y)| if x.is_finite() { (x - y).abs() / m } else { f32::INFINITY }).fold(0f32, f32::max)
            };
            let ey = emu::rms_norm_fwd(kd, &x, &w, 1e-5).unwrap();
            assert!(rel(&ey, &cy) <= tol, "{dt:?} rows={rows} h={h}: y {}", rel(&ey, &cy));
            for grid in [1u32, 3, rows as u32] {
                let (edx, edw) = emu::rms_norm_bwd(kd, &x, &w, &g, 1e-5, grid).unwrap();
                assert!(rel(&edx, &cdx) <= tol, "{dt:?} rows={rows} h={h} grid={grid}: dx {}", rel(&edx, &cdx));
                // the op's dw is cast to w's dtype; the kernel's is f32
                assert!(rel(&edw, &cdw) <= tol, "{dt:?} rows={rows} h={h} grid={grid}: dw {}", rel(&edw, &cdw));
            }
        }
    }
    Ok(())
}

/// Races: every kernel gives the same bits under schedules that interleave a block's
/// threads differently (forward, reverse, shuffled every round; a thread or a warp at a
/// time) and land `cp.async` copies at issue or only at the issuing thread's covering wait. A shared-memory read that no
/// barrier orders after its write, or a read of a `cp.async` destination before its wait,
/// changes the result under some of them (emu.h; a removed barrier or wait is caught).
#[test]
fn kernels_give_the_same_bits_under_every_schedule() {
    use emu::{Order, Schedule};
    let s = |order, cp_async_at_wait, warp_at_a_time| Schedule { order, cp_async_at_wait, warp_at_a_time };
    let schedules = [
        s(Order::Forward, true, false),
        s(Order::Reverse, false, false),
        s(Order::Shuffled(7), true, false),
        s(Order::Forward, true, true),
        s(Order::Reverse, true, true),
        s(Order::Reverse, false, true),
        s(Order::Shuffled(8), true, true),
    ];
    let bits32 = |x: &[f32]| x.iter().map(|v| v.to_bits()).collect::<Vec<u32>>();
    let bits16 = |x: &[u16]| x.iter().map(|&v| v as u32).collect::<Vec<u32>>();
    let mut rng = StdRng::seed_from_u64(77);
    type Run<'a> = Box<dyn Fn() -> Vec<u32> + 'a>;
    let mut runs: Vec<(String, Run)> = Vec::new();

    // attention forward, every compiled configuration, over several key tiles and a partial one
    for (d, warps, seq) in [(64usize, 4usize, 150usize), (64, 8, 150), (128, 4, 75), (32, 4, 140), (80, 4, 140), (256, 4, 40)] {
        let shape = AttnShape { batch: 1, seq, n_heads: 2, n_kv_heads: 1, head_dim: d };
        let qs = Strides::contiguous(seq, 2, d);
        let ks = Strides::contiguous(seq, 1, d);
        let q = quantize(KDType::BF16, &normal(&mut rng, seq * 2 * d, 2.0)).0;
        let k = quantize(KDType::BF16, &normal(&mut rng, seq * d, 1.0)).0;
        let v = quantize(KDType::BF16, &normal(&mut rng, seq * d, 1.0)).0;
        runs.push((
            format!("flash_attn_fwd d{d} w{warps} seq {seq}"),
            Box::new(move || bits16(&emu::flash_attn_fwd(KDType::BF16, warps, shape, &q, qs, &k, ks, &v, ks, 0.125, None).unwrap())),
        ));
    }
    // the same in a sliding window (the forward's first tile after 0, skipped tiles and warps)
    for (d, warps, seq, w) in [(64usize, 4usize, 150usize, 37usize), (64, 8, 200, 70), (128, 4, 100, 20)] {
        let shape = AttnShape { batch: 1, seq, n_heads: 2, n_kv_heads: 1, head_dim: d };
        let qs = Strides::contiguous(seq, 2, d);
        let ks = Strides::contiguous(seq, 1, d);
        let q = quantize(KDType::BF16, &normal(&mut rng, seq * 2 * d, 2.0)).0;
        let k = quantize(KDType::BF16, &normal(&mut rng, seq * d, 1.0)).0;
        let v = quantize(KDType::BF16, &normal(&mut rng, seq * d, 1.0)).0;
        runs.push((
            format!("flash_attn_fwd d{d} w{warps} seq {seq} window {w}"),
            Box::new(move || bits16(&emu::flash_attn_fwd(KDType::BF16, warps, shape, &q, qs, &k, ks, &v, ks, 0.125, Some(w)).unwrap())),
        ));
    }
    // attention backward (with its forward's normalisers), every head dim, several query tiles;
    // and in a sliding window
    for (d, seq, window) in [(64usize, 150usize, None), (128, 75, None), (32, 140, None), (80, 75, None), (64, 150, Some(37usize)), (128, 100, Some(20))] {
        let shape = AttnShape { batch: 1, seq, n_heads: 2, n_kv_heads: 1, head_dim: d };
        let qs = Strides::contiguous(seq, 2, d);
        let ks = Strides::contiguous(seq, 1, d);
        let (q, _) = quantize(KDType::F16, &normal(&mut rng, seq * 2 * d, 1.5));
        let (k, _) = quantize(KDType::F16, &normal(&mut rng, seq * d, 1.0));
        let (v, _) = quantize(KDType::F16, &normal(&mut rng, seq * d, 1.0));
        let (g, gf) = quantize(KDType::F16, &normal(&mut rng, seq * 2 * d, 1.0));
        runs.push((
            format!("flash_attn_bwd d{d} seq {seq} window {window:?}"),
            Box::new(move || {
                let (o, lse) = emu::flash_attn_fwd_lse(KDType::F16, 4, shape, &q, qs, &k, ks, &v, ks, 0.125, window).unwrap();
                let dsum: Vec<f32> = (0..seq * 2).map(|r| (0..d).map(|c| gf[r * d + c] * emu::bits_to_f32(KDType::F16, o[r * d + c])).sum()).collect();
                let (dq, dk, dv) = emu::flash_attn_bwd(KDType::F16, shape, &q, qs, &k, ks, &v, ks, &g, qs, &lse, &dsum, 0.125, window).unwrap();
                [bits16(&o), bits32(&lse), bits32(&dq), bits16(&dk), bits16(&dv)].concat()
            }),
        ));
    }
    // the loss, forward and backward
    {
        let (n, vocab) = (5usize, 1504usize);
        let (x, t) = ce_inputs(n, vocab, Rows::uniform(n), 5);
        let (xb, _) = quantize(KDType::BF16, &x);
        let dloss = normal(&mut rng, n, 1.0);
        runs.push((
            "token_ce fwd + bwd".into(),
            Box::new(move || {
                let (loss, lse) = emu::token_ce_fwd(Logits::Bits(KDType::BF16, &xb), Rows::uniform(n), &t, vocab).unwrap();
                let dx = emu::token_ce_bwd(Logits::Bits(KDType::BF16, &xb), Rows::uniform(n), &t, &lse, &dloss, vocab).unwrap();
                [bits32(&loss), bits32(&lse), bits32(&dx)].concat()
            }),
        ));
    }
    // the optimizer and the norm, on 3 blocks
    {
        let n = 3001;
        let (w, g, m) = (normal(&mut rng, n, 1.0), normal(&mut rng, n, 0.02), normal(&mut rng, n, 0.02));
        let v: Vec<f32> = normal(&mut rng, n, 0.02).iter().map(|x| x * x).collect();
        runs.push((
            "adam_moment, adam_apply, sum_sq".into(),
            Box::new(move || {
                let em = emu::adam_moment(KDType::F32, &m, &g, 0.9, 0.5, false, 3).unwrap();
                let ev = emu::adam_moment(KDType::F32, &v, &g, 0.95, 0.5, true, 3).unwrap();
                let ew = emu::adam_apply(KDType::F32, &w, &em, &ev, 0.9999, 1e-3, 2.3, 1e-8, 3).unwrap();
                let sq = emu::sum_sq(KDType::F32, &g, 3).unwrap();
                [bits32(&em), bits32(&ev), bits32(&ew), vec![sq.to_bits()]].concat()
            }),
        ));
        // h = 300: the element-wise loops; 304: whole 16-byte vectors
        for (rows, h) in [(7usize, 300usize), (7, 304)] {
            let (x, w, g) = (normal(&mut rng, rows * h, 1.5), normal(&mut rng, h, 1.0), normal(&mut rng, rows * h, 1.0));
            runs.push((
                format!("rms_norm fwd + bwd h={h}"),
                Box::new(move || {
                    let y = emu::rms_norm_fwd(KDType::BF16, &x, &w, 1e-5).unwrap();
                    let (dx, dw) = emu::rms_norm_bwd(KDType::BF16, &x, &w, &g, 1e-5, 3).unwrap();
                    [bits32(&y), bits32(&dx), bits32(&dw)].concat()
                }),
            ));
        }
    }

    // SwiGLU and RoPE (no shared memory: a check that they stay so)
    {
        let n = 2000;
        let (g, u, d) = (normal(&mut rng, n, 2.0), normal(&mut rng, n, 1.0), normal(&mut rng, n, 1.0));
        runs.push((
            "swiglu fwd + bwd".into(),
            Box::new(move || {
                let h = emu::swiglu_fwd(KDType::BF16, &g, &u, 3).unwrap();
                let (dg, du) = emu::swiglu_bwd(KDType::BF16, &g, &u, &d, 3).unwrap();
                [bits32(&h), bits32(&dg), bits32(&du)].concat()
            }),
        ));
        let (b, s, h, d) = (1, 5, 2, 64);
        let x = normal(&mut rng, b * s * h * d, 1.0);
        let (c, sn) = rope_tables(s, 16);
        runs.push((
            "rope".into(),
            Box::new(move || bits32(&emu::rope(KDType::F16, &x, (s * h * d, h * d, d), (b, s, h, d), &c, &sn, 32, 1.0, 3).unwrap())),
        ));
    }

    // the schedules bite: a kernel with a missing barrier, and one with a missing cp.async
    // wait, give other bits under some of them
    for (mode, what) in [(0, "a read of another warp's write without a barrier"), (1, "a cp.async destination read without the wait")] {
        let want = emu::with_schedule(Schedule::DEFAULT, || emu::race_probe(mode).unwrap());
        let caught = schedules.iter().filter(|&&s| emu::with_schedule(s, || emu::race_probe(mode).unwrap()) != want).count();
        assert!(caught > 0, "no schedule exposes {what}");
    }

    for (name, run) in &runs {
        let want = emu::with_schedule(Schedule::DEFAULT, run);
        for s in schedules {
            let got = emu::with_schedule(s, run);
            let differ = got.iter().zip(&want).filter(|(a, b)| a != b).count();
            assert!(got.len() == want.len() && differ == 0, "{name} under {s:?}: {differ} of {} values differ from the default schedule's", want.len());
        }
    }
}

/// Values of a CPU tensor as f32.
fn vals(t: &Tensor) -> Vec<f32> {
    t.to_dtype(DType::F32).unwrap().flatten_all().unwrap().to_vec1::<f32>().unwrap()
}

/// max |a - b| / max |b|.
fn rel_err(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let m = b.iter().fold(1e-30f32, |m, v| m.max(v.abs()));
    a.iter().zip(b).map(|(x, y)| if x.is_finite() { (x - y).abs() / m } else { f32::INFINITY }).fold(0f32, f32::max)
}

/// The SwiGLU op on CPU against candle's autograd of silu(g) * u (the model's previous
/// path): h and both gradients, f32 and bf16 (the reference in f32).
#[test]
fn swiglu_op_matches_autograd_of_the_composed_ops() -> candle_core::Result<()> {
    use rho::cuda::swiglu::swiglu;
    let dev = Device::Cpu;
    for (dt, tol) in [(DType::F32, 1e-6f32), (DType::BF16, 8e-3)] {
        let mut rng = StdRng::seed_from_u64(11);
        let dims = (3, 5, 41);
        let n = 3 * 5 * 41;
        // gate values over the range where silu bends, and far out on both sides
        let mut gv = normal(&mut rng, n, 3.0);
        gv[0] = -40.0;
        gv[1] = 40.0;
        let g = Tensor::from_vec(gv, dims, &dev)?.to_dtype(dt)?;
        let u = Tensor::from_vec(normal(&mut rng, n, 1.0), dims, &dev)?.to_dtype(dt)?;
        let r = Tensor::from_vec(normal(&mut rng, n, 1.0), dims, &dev)?;
        let run = |fused: bool| -> candle_core::Result<[Vec<f32>; 3]> {
            let cast = |t: &Tensor| if fused { Ok(t.clone()) } else { t.to_dtype(DType::F32) };
            let (gv, uv) = (candle_core::Var::from_tensor(&cast(&g)?)?, candle_core::Var::from_tensor(&cast(&u)?)?);
            let h = if fused { swiglu(gv.as_tensor(), uv.as_tensor())? } else { (gv.as_tensor().silu()? * uv.as_tensor())? };
            assert_eq!(h.dims(), &[3, 5, 41]);
            let grads = (h.to_dtype(DType::F32)? * &r)?.sum_all()?.backward()?;
            Ok([vals(&h), vals(grads.get(gv.as_tensor()).unwrap()), vals(grads.get(uv.as_tensor()).unwrap())])
        };
        let (got, want) = (run(true)?, run(false)?);
        for (name, a, b) in [("h", &got[0], &want[0]), ("dg", &got[1], &want[1]), ("du", &got[2], &want[2])] {
            let e = rel_err(a, b);
            assert!(e < tol, "{dt:?} {name}: {e}");
        }
    }
    // shapes or dtypes that differ are named
    let e = swiglu(&Tensor::zeros((2, 4), DType::F32, &dev)?, &Tensor::zeros((2, 5), DType::F32, &dev)?).unwrap_err().to_string();
    assert!(e.contains("[2, 4]") && e.contains("[2, 5]"), "{e}");
    Ok(())
}

/// The SwiGLU kernels in the emulator against the CPU op, on grids of 1 block, 3 blocks and
/// the launcher's, every dtype.
#[test]
fn swiglu_kernels_match_the_cpu_op_on_any_grid() -> candle_core::Result<()> {
    use rho::cuda::optim::launch_blocks;
    use rho::cuda::swiglu::swiglu;
    // f32: a few units in the last place (the GPU's exp2 against Rust's exp, compounded in
    // the sigmoid's tail); 16-bit: one unit (a rounding boundary)
    for (dt, kd, ulp) in [(DType::F32, KDType::F32, 2e-6f32), (DType::BF16, KDType::BF16, 2f32.powi(-7)), (DType::F16, KDType::F16, 2f32.powi(-10))] {
        for (i, n) in [1usize, 255, 257, 3001, 8, 3000, 4096].into_iter().enumerate() {
            let mut rng = StdRng::seed_from_u64(300 + i as u64);
            let q = |x: Vec<f32>| if kd == KDType::F32 { x } else { quantize(kd, &x).1 };
            let (g, u, d) = (q(normal(&mut rng, n, 3.0)), q(normal(&mut rng, n, 1.0)), q(normal(&mut rng, n, 1.0)));
            let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), n, &Device::Cpu)?.to_dtype(dt);
            let (gv, uv) = (candle_core::Var::from_tensor(&t(&g)?)?, candle_core::Var::from_tensor(&t(&u)?)?);
            let h = swiglu(gv.as_tensor(), uv.as_tensor())?;
            let grads = (h.to_dtype(DType::F32)? * Tensor::from_vec(d.clone(), n, &Device::Cpu)?)?.sum_all()?.backward()?;
            let (ch, cdg, cdu) = (vals(&h), vals(grads.get(gv.as_tensor()).unwrap()), vals(grads.get(uv.as_tensor()).unwrap()));
            // (plus 1e-6 of the largest value: dg's factor 1 + g (1 - sigmoid(g)) cancels near g = -1.28)
            let close = |a: &[f32], b: &[f32], what: &str, grid: u32| {
                let m = b.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (j, (x, y)) in a.iter().zip(b).enumerate() {
                    assert!((x - y).abs() <= ulp * y.abs() + 1e-6 * m, "{dt:?} n={n} grid={grid} {what}[{j}]: kernel {x} vs cpu {y}");
                }
            };
            for grid in [1, 3, launch_blocks(n)] {
                close(&emu::swiglu_fwd(kd, &g, &u, grid).unwrap(), &ch, "h", grid);
                let (dg, du) = emu::swiglu_bwd(kd, &g, &u, &d, grid).unwrap();
                close(&dg, &cdg, "dg", grid);
                close(&du, &cdu, "du", grid);
            }
        }
    }
    Ok(())
}

/// The composed rotate-half RoPE of the model's old training path, on the first `rd` dims of
/// x [b, s, h, d] (contiguous); cos, sin [s, rd / 2].
fn rope_composed(x: &Tensor, cos: &Tensor, sin: &Tensor, rd: usize) -> candle_core::Result<Tensor> {
    let (s, half) = cos.dims2()?;
    let d = x.dim(3)?;
    let t = x.narrow(3, 0, rd)?;
    let cos = Tensor::cat(&[cos, cos], 1)?.reshape((s, 1, 2 * half))?;
    let sin = Tensor::cat(&[sin, sin], 1)?.reshape((s, 1, 2 * half))?;
    let rotated = Tensor::cat(&[&t.narrow(3, half, half)?.neg()?, &t.narrow(3, 0, half)?], 3)?;
    let rot = (t.broadcast_mul(&cos)? + rotated.broadcast_mul(&sin)?)?;
    if rd == d {
        Ok(rot)
    } else {
        Tensor::cat(&[&rot, &x.narrow(3, rd, d - rd)?], 3)
    }
}

fn rope_tables(s: usize, half: usize) -> (Vec<f32>, Vec<f32>) {
    let mut cos = Vec::new();
    let mut sin = Vec::new();
    for p in 0..s {
        for j in 0..half {
            let a = p as f32 / 10000f32.powf(2.0 * j as f32 / (2 * half) as f32);
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    (cos, sin)
}

/// The RoPE op on CPU: against candle-nn's fused rope (full rotary), and against the composed
/// rotation and its autograd on a strided view of a fused projection with partial rotary
/// (GPT-NeoX's case): forward and the gradient with respect to x.
#[test]
fn rope_op_matches_candle_and_the_composed_rotation_with_its_gradient() -> candle_core::Result<()> {
    use rho::cuda::rope::rope;
    let dev = Device::Cpu;
    let mut rng = StdRng::seed_from_u64(21);
    let (b, s, h, d) = (2, 9, 3, 16);
    // full rotary, contiguous: candle-nn's kernel
    let x = Tensor::from_vec(normal(&mut rng, b * s * h * d, 1.0), (b, s, h, d), &dev)?;
    let (c, sn) = rope_tables(s, d / 2);
    let (cos, sin) = (Tensor::from_vec(c, (s, d / 2), &dev)?, Tensor::from_vec(sn, (s, d / 2), &dev)?);
    let e = rel_err(&vals(&rope(&x, &cos, &sin)?), &vals(&candle_nn::rotary_emb::rope_thd(&x, &cos, &sin)?));
    assert!(e < 1e-6, "full rotary vs candle-nn: {e}");
    // partial rotary (8 of 16 dims) on the q view of a [b, s, h, 3 d] fused projection, f32 and bf16
    let rd = 8;
    let (c, sn) = rope_tables(s, rd / 2);
    let (cos, sin) = (Tensor::from_vec(c, (s, rd / 2), &dev)?, Tensor::from_vec(sn, (s, rd / 2), &dev)?);
    let fused = Tensor::from_vec(normal(&mut rng, b * s * h * 3 * d, 1.0), (b, s, h, 3 * d), &dev)?;
    let r = Tensor::from_vec(normal(&mut rng, b * s * h * d, 1.0), (b, s, h, d), &dev)?;
    for (dt, tol) in [(DType::F32, 1e-6f32), (DType::BF16, 1e-2)] {
        let run = |ours: bool| -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let var = candle_core::Var::from_tensor(&if ours { fused.to_dtype(dt)? } else { fused.clone() })?;
            let q = var.as_tensor().narrow(3, d, d)?; // strided: the middle third
            let y = if ours { rope(&q, &cos, &sin)? } else { rope_composed(&q.contiguous()?, &cos, &sin, rd)? };
            assert_eq!(y.dims(), &[b, s, h, d]);
            let grads = (y.to_dtype(DType::F32)? * &r)?.sum_all()?.backward()?;
            Ok((vals(&y), vals(grads.get(var.as_tensor()).unwrap())))
        };
        let ((y, gx), (wy, wgx)) = (run(true)?, run(false)?);
        assert!(rel_err(&y, &wy) < tol, "{dt:?} y: {}", rel_err(&y, &wy));
        assert!(rel_err(&gx, &wgx) < tol, "{dt:?} dx: {}", rel_err(&gx, &wgx));
        // the gradient lands in the middle third of the fused buffer only
        let outside = gx.chunks(d).enumerate().filter(|(i, _)| i % 3 != 1).flat_map(|(_, c)| c.iter()).fold(0f32, |m, v| m.max(v.abs()));
        assert_eq!(outside, 0.0, "{dt:?}: gradient outside the q view");
    }
    // tables of the wrong size are named
    let e = rope(&x, &cos.narrow(0, 0, 4)?, &sin).unwrap_err().to_string();
    assert!(e.contains("[4, 4]") && e.contains("[2, 9, 3, 16]"), "{e}");
    Ok(())
}

/// The RoPE kernel in the emulator against the CPU op: a strided view with partial rotary,
/// forward (sign 1) and the backward's transposed rotation (sign -1, against the op's
/// gradient), every dtype, grids of 1 block, 3 blocks and the launcher's.
#[test]
fn rope_kernel_matches_the_cpu_op_on_any_grid() -> candle_core::Result<()> {
    use rho::cuda::optim::launch_blocks;
    use rho::cuda::rope::rope;
    let dev = Device::Cpu;
    let (b, s, h, d) = (2, 7, 3, 32);
    for (dt, kd, ulp) in [(DType::F32, KDType::F32, 2e-7f32), (DType::BF16, KDType::BF16, 2f32.powi(-7)), (DType::F16, KDType::F16, 2f32.powi(-10))] {
        for rd in [32usize, 8] {
            let mut rng = StdRng::seed_from_u64(rd as u64);
            let q = |x: Vec<f32>| if kd == KDType::F32 { x } else { quantize(kd, &x).1 };
            let fused = q(normal(&mut rng, b * s * h * 3 * d, 1.0));
            let r = q(normal(&mut rng, b * s * h * d, 1.0));
            let (c, sn) = rope_tables(s, rd / 2);
            let (c, sn) = (q(c), q(sn));
            let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &dev)?.to_dtype(dt);
            let (cos, sin) = (t(&c, &[s, rd / 2])?, t(&sn, &[s, rd / 2])?);
            let var = candle_core::Var::from_tensor(&t(&fused, &[b, s, h, 3 * d])?)?;
            let y = rope(&var.as_tensor().narrow(3, d, d)?, &cos, &sin)?;
            let grads = (y.to_dtype(DType::F32)? * t(&r, &[b, s, h, d])?.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
            // the op's dx in the view's coordinates: the middle third of each fused row
            let g = grads.get(var.as_tensor()).unwrap().narrow(3, d, d)?;
            let (cy, cdx) = (vals(&y), vals(&g));
            let n = b * s * h * d;
            for grid in [1, 3, launch_blocks(n)] {
                let ey = emu::rope(kd, &fused[d..], (s * h * 3 * d, h * 3 * d, 3 * d), (b, s, h, d), &c, &sn, rd, 1.0, grid).unwrap();
                let edx = emu::rope(kd, &r, (s * h * d, h * d, d), (b, s, h, d), &c, &sn, rd, -1.0, grid).unwrap();
                for (what, a, w) in [("y", &ey, &cy), ("dx", &edx, &cdx)] {
                    for (j, (x, y)) in a.iter().zip(w.iter()).enumerate() {
                        assert!((x - y).abs() <= ulp * y.abs().max(1e-3), "{dt:?} rd={rd} grid={grid} {what}[{j}]: kernel {x} vs cpu {y}");
                    }
                }
            }
        }
    }
    Ok(())
}

/// Every family gives the same logits (evaluation) and every parameter the same gradient
/// (training) with rho's fused ops (RoPE, SwiGLU, RMSNorm, on CPU) as with the composed
/// candle ops; each gradient non-zero.
#[test]
fn every_family_is_the_same_with_the_fused_ops_as_with_the_composed_ones() {
    use candle_nn::VarBuilder;
    use rho::cuda::{with_fused, Fused};
    use rho::model::{Transformer, Weights};
    use rho::train::params::ParamSource;
    let (all, none) = ([true; Fused::ALL.len()], [false; Fused::ALL.len()]);
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures");
    let ids: Vec<u32> = (0..2 * 19).map(|i| (i * 31 + 7) % 250).collect();
    for family in [
        "llama/step-100",
        "neox/step2000",
        "neox-seq/step1",
        "gpt2/checkpoint-20",
        "qwen2/step-1",
        "mistral/step-1",
        // issue 19's families; OLMo-3's and Qwen3's sliding layers (window 8) bind inside the sequence
        "olmo/step1000-tokens4B",
        "olmo2/stage1-step600-tokens3B",
        "olmo3/stage1-step2000",
        "smollm3/step-40000",
        "qwen3/checkpoint-500",
    ] {
        let dir = root.join(family);
        let ck = Checkpoint::open(&dir).unwrap();
        let vocab = ck.config.vocab_size as u32;
        let x = Tensor::from_vec(ids.iter().map(|i| i % vocab).collect::<Vec<_>>(), (2, 19), &Device::Cpu).unwrap();
        // evaluation
        let m = ck.load(DType::F32, &Device::Cpu, Mode::Eval).unwrap();
        // (the switch takes effect on this thread)
        assert!(with_fused(none, || !Fused::ALL.iter().any(|&k| rho::cuda::fused_enabled(k))));
        assert!(with_fused(all, || Fused::ALL.iter().all(|&k| rho::cuda::fused_enabled(k))));
        let (a, b) = (with_fused(all, || m.forward(&x).unwrap()), with_fused(none, || m.forward(&x).unwrap()));
        let e = rel_err(&vals(&a), &vals(&b));
        assert!(e < 1e-5, "{family}: logits differ by {e} (relative to the largest)");
        // training
        let src = ParamSource::new(Some(Weights::open(&dir).unwrap()), 0, 0.02);
        let varmap = src.varmap.clone();
        let vb = VarBuilder::from_backend(Box::new(src), DType::F32, Device::Cpu);
        let m = Transformer::new(&ck.config, vb, Mode::Train).unwrap();
        let targets = x.narrow(1, 1, 18).unwrap().contiguous().unwrap();
        let grads_of = |on| {
            with_fused(on, || {
                let logits = m.forward(&x).unwrap();
                let l = rho::model::loss::per_token_loss(&logits.narrow(1, 0, 18).unwrap(), &targets).unwrap();
                l.mean_all().unwrap().backward().unwrap()
            })
        };
        let (ga, gb) = (grads_of(all), grads_of(none));
        let vars = varmap.data().lock().unwrap();
        for (name, var) in vars.iter() {
            let a = vals(ga.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {name} (fused)")));
            let b = vals(gb.get(var.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {name} (composed)")));
            assert!(b.iter().any(|v| *v != 0.0), "{family}: zero gradient for {name}");
            let e = rel_err(&a, &b);
            assert!(e < 1e-4, "{family} {name}: gradients differ by {e} (relative to the largest)");
        }
    }
}
