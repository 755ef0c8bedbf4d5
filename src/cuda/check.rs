//! `rho bench kernels`: every kernel of src/cuda/kernels against its CPU reference on random
//! inputs, then, on CUDA, its speed against the plain candle ops it replaces.
//!
//! On `--device cuda:N` the kernels run on the GPU (real shapes); on `--device cpu` they run
//! in the emulator (src/cuda/emu, small shapes), so the same command checks the same source
//! with or without a GPU. Prints `CHECK ... PASS|FAIL` and (CUDA) `RESULT ...` lines; exits
//! non-zero when a check fails.

use super::emu::{self, KDType, Logits};
use super::reference::{self, AttnShape, Rows, Strides};
use super::FlashVariant;
use crate::error::{Error, Result};
use candle_core::{DType, Device, Tensor, D};
use clap::Args;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use std::time::Instant;

#[derive(Debug, Args, Clone)]
pub struct BenchKernelsArgs {
    /// cpu (the kernels run in the emulator) or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Timed iterations per measurement (CUDA).
    #[arg(long, default_value_t = 20)]
    pub iters: usize,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    /// Seed of the random inputs.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Only the correctness checks.
    #[arg(long)]
    pub no_timing: bool,
}

/// One comparison of a kernel against its reference.
#[derive(Debug, Clone)]
pub struct Check {
    pub kernel: &'static str,
    pub what: String,
    pub max_err: f32,
    pub tol: f32,
}

impl Check {
    pub fn pass(&self) -> bool {
        self.max_err <= self.tol
    }
    pub fn line(&self) -> String {
        format!(
            "CHECK kernel={} {} max_err={:.3e} tol={:.1e} {}",
            self.kernel,
            self.what,
            self.max_err,
            self.tol,
            if self.pass() { "PASS" } else { "FAIL" }
        )
    }
}

/// n normal samples of standard deviation `std` (Box-Muller).
pub(crate) fn normal(rng: &mut StdRng, n: usize, std: f32) -> Vec<f32> {
    (0..n)
        .map(|_| {
            let (u, v): (f32, f32) = (rng.random_range(1e-7..1.0), rng.random_range(0.0..1.0));
            std * (-2.0 * u.ln()).sqrt() * (std::f32::consts::TAU * v).cos()
        })
        .collect()
}

fn kdtype(dt: DType) -> KDType {
    match dt {
        DType::BF16 => KDType::BF16,
        DType::F16 => KDType::F16,
        _ => KDType::F32,
    }
}

fn round_to(dt: DType, x: &[f32]) -> Vec<f32> {
    match dt {
        DType::BF16 | DType::F16 => x.iter().map(|&v| emu::bits_to_f32(kdtype(dt), emu::f32_to_bits(kdtype(dt), v))).collect(),
        _ => x.to_vec(),
    }
}

fn bits(dt: DType, x: &[f32]) -> Vec<u16> {
    x.iter().map(|&v| emu::f32_to_bits(kdtype(dt), v)).collect()
}

fn max_abs_diff(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    a.iter().zip(b).map(|(x, y)| if x.is_finite() { (x - y).abs() } else { f32::INFINITY }).fold(0.0, f32::max)
}

fn cerr(e: candle_core::Error) -> Error {
    Error::msg(crate::error::candle_msg(&e))
}

/// Flash attention on `dev` (GPU: the kernel; CPU: the emulator) against the reference.
/// `fused`: q, k, v are views of one [b, s, 3 * heads, d] projection (GPT-NeoX-like).
/// `window`: the sliding window (keys i - w < j <= i).
#[allow(clippy::too_many_arguments)]
fn check_flash(dev: &Device, dt: DType, shape: AttnShape, fused: bool, q_std: f32, variant: FlashVariant, window: Option<usize>, seed: u64) -> Result<Check> {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let mut rng = StdRng::seed_from_u64(seed);
    let (qs, ks, vs, offs, buf) = if fused {
        let w = n_heads + 2 * n_kv_heads;
        let st = Strides { batch: seq * w * d, seq: w * d, head: d };
        let buf = round_to(dt, &normal(&mut rng, batch * seq * w * d, 1.0));
        (st, st, st, [0, n_heads * d, (n_heads + n_kv_heads) * d], buf)
    } else {
        let (qn, kn) = (batch * seq * n_heads * d, batch * seq * n_kv_heads * d);
        let mut buf = normal(&mut rng, qn, q_std);
        buf.extend(normal(&mut rng, 2 * kn, 1.0));
        let buf = round_to(dt, &buf);
        (Strides::contiguous(seq, n_heads, d), Strides::contiguous(seq, n_kv_heads, d), Strides::contiguous(seq, n_kv_heads, d), [0, qn, qn + kn], buf)
    };
    let scale = 1.0 / (d as f32).sqrt();
    let want = reference::causal_attention(shape, &buf[offs[0]..], qs, &buf[offs[1]..], ks, &buf[offs[2]..], vs, scale, window);
    let got: Vec<f32> = if dev.is_cpu() {
        let b = bits(dt, &buf);
        let o = emu::flash_attn_fwd(kdtype(dt), variant.warps(d), shape, &b[offs[0]..], qs, &b[offs[1]..], ks, &b[offs[2]..], vs, scale, window).map_err(Error::msg)?;
        o.into_iter().map(|x| emu::bits_to_f32(kdtype(dt), x)).collect()
    } else {
        let t = Tensor::from_vec(buf.clone(), buf.len(), &Device::Cpu).and_then(|t| t.to_dtype(dt)).and_then(|t| t.to_device(dev)).map_err(cerr)?;
        let view = |off: usize, st: Strides, heads: usize| -> candle_core::Result<Tensor> {
            // [b, s, heads, d] with the given strides, as a narrow of a reshaped buffer
            let w = st.seq / d;
            t.narrow(0, 0, batch * seq * w * d)?.reshape((batch, seq, w, d))?.narrow(2, off / d, heads)
        };
        let (q, k, v) = if fused {
            (view(offs[0], qs, n_heads), view(offs[1], ks, n_kv_heads), view(offs[2], vs, n_kv_heads))
        } else {
            let part = |off: usize, heads: usize| t.narrow(0, off, batch * seq * heads * d)?.reshape((batch, seq, heads, d));
            (part(offs[0], n_heads), part(offs[1], n_kv_heads), part(offs[2], n_kv_heads))
        };
        let (q, k, v) = (q.map_err(cerr)?, k.map_err(cerr)?, v.map_err(cerr)?);
        super::flash_attention_variant(&q, &k, &v, scale, variant, window)
            .and_then(|o| o.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>())
            .map_err(cerr)?
    };
    let tol = if dt == DType::BF16 { 3e-2 } else { 4e-3 };
    let what = format!(
        "dtype={} shape={batch}x{seq}x{n_heads}x{n_kv_heads}x{d} layout={} q_std={q_std} variant={} window={}",
        dt.as_str(),
        if fused { "fused" } else { "contiguous" },
        variant.name(),
        window_name(window)
    );
    Ok(Check { kernel: "flash_attn_fwd", what, max_err: max_abs_diff(&got, &want), tol })
}

/// The attention backward (head dims 32, 64, 80, 128) on `dev` (GPU: `flash_attention_train` and candle's
/// autograd, so the forward's saved normalisers and D = rowsum(dO o) are part of the check;
/// CPU: the emulated forward and backward kernels) against the f64 reference gradients.
/// One check per gradient: max |kernel - reference| / max |reference|. `window`: the sliding
/// window of forward and backward.
fn check_flash_bwd(dev: &Device, dt: DType, shape: AttnShape, window: Option<usize>, seed: u64) -> Result<[Check; 3]> {
    let AttnShape { batch, seq, n_heads, n_kv_heads, head_dim: d } = shape;
    let mut rng = StdRng::seed_from_u64(seed);
    let q = round_to(dt, &normal(&mut rng, batch * seq * n_heads * d, 1.5));
    let k = round_to(dt, &normal(&mut rng, batch * seq * n_kv_heads * d, 1.0));
    let v = round_to(dt, &normal(&mut rng, batch * seq * n_kv_heads * d, 1.0));
    let g = round_to(dt, &normal(&mut rng, batch * seq * n_heads * d, 1.0));
    let (qs, ks) = (Strides::contiguous(seq, n_heads, d), Strides::contiguous(seq, n_kv_heads, d));
    let scale = 1.0 / (d as f32).sqrt();
    let (wq, wk, wv) = reference::causal_attention_backward(shape, &q, qs, &k, ks, &v, ks, &g, qs, scale, window);
    let (gq, gk, gv): (Vec<f32>, Vec<f32>, Vec<f32>) = if dev.is_cpu() {
        let kd = kdtype(dt);
        let (qb, kb, vb, gb) = (bits(dt, &q), bits(dt, &k), bits(dt, &v), bits(dt, &g));
        let (o, lse) = emu::flash_attn_fwd_lse(kd, 4, shape, &qb, qs, &kb, ks, &vb, ks, scale, window).map_err(Error::msg)?;
        let dsum: Vec<f32> = (0..batch * seq * n_heads).map(|r| (0..d).map(|c| g[r * d + c] * emu::bits_to_f32(kd, o[r * d + c])).sum()).collect();
        let (dq, dk, dv) = emu::flash_attn_bwd(kd, shape, &qb, qs, &kb, ks, &vb, ks, &gb, qs, &lse, &dsum, scale, window).map_err(Error::msg)?;
        let f = |x: Vec<u16>| x.into_iter().map(|b| emu::bits_to_f32(kd, b)).collect();
        (dq, f(dk), f(dv))
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let var = |x: &[f32], h: usize| -> candle_core::Result<candle_core::Var> {
                candle_core::Var::from_tensor(&Tensor::from_vec(x.to_vec(), (batch, seq, h, d), &Device::Cpu)?.to_dtype(dt)?.to_device(dev)?)
            };
            let (qv, kv, vv) = (var(&q, n_heads)?, var(&k, n_kv_heads)?, var(&v, n_kv_heads)?);
            let o = super::flash_attention_train(qv.as_tensor(), kv.as_tensor(), vv.as_tensor(), scale, window)?;
            let gt = Tensor::from_vec(g.clone(), (batch, seq, n_heads, d), dev)?;
            let grads = (o.to_dtype(DType::F32)? * gt)?.sum_all()?.backward()?;
            let get = |x: &candle_core::Var| grads.get(x.as_tensor()).unwrap().to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Ok((get(&qv)?, get(&kv)?, get(&vv)?))
        };
        run().map_err(cerr)?
    };
    let what = format!("dtype={} shape={batch}x{seq}x{n_heads}x{n_kv_heads}x{d} window={}", dt.as_str(), window_name(window));
    let tol = if dt == DType::BF16 { 3e-2 } else { 6e-3 };
    let rel = |got: &[f32], want: &[f32]| max_abs_diff(got, want) / want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
    Ok([
        Check { kernel: "flash_attn_bwd", what: format!("{what} grad=dq (relative to max)"), max_err: rel(&gq, &wq), tol },
        Check { kernel: "flash_attn_bwd", what: format!("{what} grad=dk (relative to max)"), max_err: rel(&gk, &wk), tol },
        Check { kernel: "flash_attn_bwd", what: format!("{what} grad=dv (relative to max)"), max_err: rel(&gv, &wv), tol },
    ])
}

/// `none` or the window's keys (for the CHECK lines).
fn window_name(window: Option<usize>) -> String {
    window.map_or("none".into(), |w| w.to_string())
}

/// token_ce_fwd and token_ce_bwd on the rows of a narrowed [b, s - 1, vocab] view of
/// [b, s, vocab] logits, against the references.
fn check_ce(dev: &Device, dt: DType, b: usize, s: usize, vocab: usize, seed: u64) -> Result<[Check; 2]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut x = normal(&mut rng, b * s * vocab, 3.0);
    x[vocab / 3] = 50.0;
    let x = round_to(dt, &x);
    let n = b * (s - 1);
    let rows = Rows { seq: s - 1, stride_b: s * vocab, stride_s: vocab };
    let targets: Vec<u32> = (0..n).map(|_| rng.random_range(0..vocab as u32)).collect();
    let dloss: Vec<f32> = (0..n).map(|_| rng.random_range(0.1..2.0)).collect();
    let (want_loss, want_lse) = reference::token_ce(&x, rows, &targets, vocab);
    let want_grad = reference::token_ce_backward(&x, rows, &targets, &dloss, vocab);
    let (loss, grad) = if dev.is_cpu() {
        let bx = if dt == DType::F32 { Vec::new() } else { bits(dt, &x) };
        let logits = || if dt == DType::F32 { Logits::F32(&x) } else { Logits::Bits(kdtype(dt), &bx) };
        let (loss, lse) = emu::token_ce_fwd(logits(), rows, &targets, vocab).map_err(Error::msg)?;
        let _ = want_lse;
        let grad = emu::token_ce_bwd(logits(), rows, &targets, &lse, &dloss, vocab).map_err(Error::msg)?;
        (loss, grad)
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let full = Tensor::from_vec(x.clone(), (b, s, vocab), &Device::Cpu)?.to_dtype(dt)?.to_device(dev)?;
            let var = candle_core::Var::from_tensor(&full)?;
            let view = var.as_tensor().narrow(1, 0, s - 1)?;
            let t = Tensor::from_vec(targets.clone(), (b, s - 1), dev)?;
            let w = Tensor::from_vec(dloss.clone(), (b, s - 1), dev)?;
            let eval = crate::model::loss::token_loss_eval(&view, &t)?.flatten_all()?.to_vec1::<f32>()?;
            let l = super::token_cross_entropy(&view, &t)?;
            let g = (l * w)?.sum_all()?.backward()?;
            let g = g.get(var.as_tensor()).unwrap().narrow(1, 0, s - 1)?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
            Ok((eval, g))
        };
        run().map_err(cerr)?
    };
    let what = format!("dtype={} logits={b}x{}x{vocab}(view of {b}x{s})", dt.as_str(), s - 1);
    let loss_err = loss.iter().zip(&want_loss).map(|(a, w)| (a - w).abs() / w.abs().max(1.0)).fold(0.0, f32::max);
    // the gradient is rounded once to the logits' type: relative error up to half an ulp
    // (+1e-4 in the denominator: f16 gradients below its smallest normal, 6.1e-5, are subnormal)
    let grad_tol = match dt {
        DType::F32 => 1e-5,
        DType::F16 => 1e-3,
        _ => 8e-3,
    };
    let grad_err = grad.iter().zip(&want_grad).map(|(g, w)| if g.is_finite() { (g - w).abs() / (w.abs() + 1e-4) } else { f32::INFINITY }).fold(0.0, f32::max);
    Ok([
        Check { kernel: "token_ce_fwd", what: what.clone() + " (relative)", max_err: loss_err, tol: 2e-5 },
        Check { kernel: "token_ce_bwd", what: what + " (relative)", max_err: grad_err, tol: grad_tol },
    ])
}

/// One unit in the last place of `x` stored as `dt` (at least that of the smallest normal).
fn ulp(dt: DType, x: f64) -> f64 {
    let (bits, min_exp) = match dt {
        DType::BF16 => (8, -126),
        DType::F16 => (11, -14),
        _ => (24, -126),
    };
    let e = if x == 0.0 { min_exp } else { (x.abs().log2().floor() as i32).max(min_exp) };
    2f64.powi(e - bits + 1)
}

/// a + b, and the largest of |a|, |b|, |a + b|.
fn two_terms(a: f64, b: f64) -> (f64, f64) {
    (a + b, a.abs().max(b.abs()).max((a + b).abs()))
}

/// AdamW's kernels (both moments, then the update) and the sum of squares of a gradient on
/// `dev` (GPU: the ops of `cuda::optim`; CPU: the emulated kernels) against f64 arithmetic on
/// the same rounded inputs. AdamW's error in units in the last place of the storage type at
/// the larger term of each sum (one rounding: up to half a unit), the sum's relative.
fn check_optim(dev: &Device, dt: DType, n: usize, seed: u64) -> Result<[Check; 2]> {
    use super::optim::{launch_blocks, AdamApply};
    let mut rng = StdRng::seed_from_u64(seed);
    let w = round_to(dt, &normal(&mut rng, n, 1.0));
    let g = round_to(dt, &normal(&mut rng, n, 0.01));
    let m = round_to(dt, &normal(&mut rng, n, 0.01));
    let v: Vec<f32> = round_to(dt, &normal(&mut rng, n, 1e-2).iter().map(|x| x * x).collect::<Vec<_>>());
    // hyperparameters as the kernels get them (f32), in f64 for the reference
    let f = |x: f64| x as f32 as f64;
    let (b1, b2, gs, lr, wd, t) = (f(0.9), f(0.95), f(0.7), 1e-3f64, 0.1f64, 3);
    let a = AdamApply {
        decay: (1.0 - lr * wd) as f32,
        step: (lr / (1.0 - b1.powi(t))) as f32,
        inv_sqrt_bc2: (1.0 / (1.0 - b2.powi(t)).sqrt()) as f32,
        eps: 1e-8,
    };
    // the reference: f64 from the rounded inputs. Each value with the larger magnitude of its
    // two terms (the f32 arithmetic's error scale when they cancel).
    let rm: Vec<(f64, f64)> = m.iter().zip(&g).map(|(&m, &g)| two_terms(b1 * m as f64, (1.0 - b1) * g as f64 * gs)).collect();
    let rv: Vec<(f64, f64)> = v.iter().zip(&g).map(|(&v, &g)| two_terms(b2 * v as f64, (1.0 - b2) * (g as f64 * gs).powi(2))).collect();
    let want_sq: f64 = g.iter().map(|&x| (x as f64).powi(2)).sum();
    let (gm, gv, gw, sq) = if dev.is_cpu() {
        let (kd, grid) = (kdtype(dt), launch_blocks(n));
        let gm = emu::adam_moment(kd, &m, &g, b1 as f32, gs as f32, false, grid).map_err(Error::msg)?;
        let gv = emu::adam_moment(kd, &v, &g, b2 as f32, gs as f32, true, grid).map_err(Error::msg)?;
        let gw = emu::adam_apply(kd, &w, &gm, &gv, a.decay, a.step, a.inv_sqrt_bc2, a.eps, grid).map_err(Error::msg)?;
        let sq = emu::sum_sq(kd, &g, grid).map_err(Error::msg)?;
        (gm, gv, gw, sq)
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>, f32)> {
            let t = |x: &[f32]| Tensor::from_vec(x.to_vec(), n, &Device::Cpu)?.to_dtype(dt)?.to_device(dev);
            let (tw, tg, tm, tv) = (t(&w)?, t(&g)?, t(&m)?, t(&v)?);
            super::optim::adam_moment(&tm, &tg, b1 as f32, gs as f32, false)?;
            super::optim::adam_moment(&tv, &tg, b2 as f32, gs as f32, true)?;
            super::optim::adam_apply(&tw, &tm, &tv, a)?;
            let sq = super::optim::sum_squares(&tg)?.to_scalar::<f32>()?;
            let back = |x: &Tensor| x.to_dtype(DType::F32)?.to_vec1::<f32>();
            Ok((back(&tm)?, back(&tv)?, back(&tw)?, sq))
        };
        run().map_err(cerr)?
    };
    // adam_apply's reference from the moments the moment kernel stored (values of dt), so that
    // each kernel is judged on its own arithmetic: from the reference moments instead, a
    // moment's few ulps after cancellation (b1 m against (1 - b1) g) pass on to the update
    // and, where w is small, show as 5 ulps of w (the H200, 2026-11-30)
    let rw: Vec<(f64, f64)> = (0..n)
        .map(|i| {
            let denom = (gv[i] as f64).sqrt() * a.inv_sqrt_bc2 as f64 + a.eps as f64;
            two_terms(w[i] as f64 * a.decay as f64, -(a.step as f64 * gm[i] as f64 / denom))
        })
        .collect();
    let ulps = |got: &[f32], want: &[(f64, f64)]| -> f32 {
        got.iter()
            .zip(want)
            .map(|(&x, &(r, scale))| if x.is_finite() { ((x as f64 - r).abs() / ulp(dt, scale)) as f32 } else { f32::INFINITY })
            .fold(0.0, f32::max)
    };
    let adam_err = ulps(&gm, &rm).max(ulps(&gv, &rv)).max(ulps(&gw, &rw));
    let what = format!("dtype={} n={n}", dt.as_str());
    Ok([
        // 16-bit: the final rounding dominates; f32: the 4-5 roundings of the f32 arithmetic
        // (the update divides and takes the square root rounded to nearest, as PyTorch's
        // AdamW does, not with fast math's approximations)
        Check { kernel: "adam_moment+adam_apply", what: format!("{what} (units in the last place)"), max_err: adam_err, tol: if dt == DType::F32 { 4.0 } else { 1.0 } },
        Check { kernel: "sum_sq", what: format!("{what} (relative)"), max_err: ((sq as f64 - want_sq).abs() / want_sq) as f32, tol: 1e-5 },
    ])
}

/// RMSNorm forward and backward (dx, dw) on `dev` (GPU: `norm::rms_norm_train` and candle's
/// autograd; CPU: the emulated kernels on a grid of 3 blocks) against f64 arithmetic on the
/// same rounded inputs. Errors relative to the largest reference value of each output.
fn check_norm(dev: &Device, dt: DType, rows: usize, h: usize, seed: u64) -> Result<[Check; 2]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = round_to(dt, &normal(&mut rng, rows * h, 1.5));
    let w = round_to(dt, &normal(&mut rng, h, 1.0));
    let g = round_to(dt, &normal(&mut rng, rows * h, 1.0));
    let eps = 1e-5f32;
    let (mut wy, mut wdx, mut wdw) = (vec![0f64; rows * h], vec![0f64; rows * h], vec![0f64; h]);
    for r in 0..rows {
        let xr = &x[r * h..(r + 1) * h];
        let gr = &g[r * h..(r + 1) * h];
        let rs = 1.0 / (xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64 + eps as f64).sqrt();
        let c: f64 = (0..h).map(|j| gr[j] as f64 * w[j] as f64 * xr[j] as f64).sum();
        for j in 0..h {
            wy[r * h + j] = xr[j] as f64 * rs * w[j] as f64;
            wdx[r * h + j] = rs * gr[j] as f64 * w[j] as f64 - xr[j] as f64 * rs.powi(3) * c / h as f64;
            wdw[j] += gr[j] as f64 * xr[j] as f64 * rs;
        }
    }
    let (y, dx, dw) = if dev.is_cpu() {
        let kd = kdtype(dt);
        let y = emu::rms_norm_fwd(kd, &x, &w, eps).map_err(Error::msg)?;
        let (dx, dw) = emu::rms_norm_bwd(kd, &x, &w, &g, eps, 3).map_err(Error::msg)?;
        (y, dx, dw)
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?.to_dtype(dt)?.to_device(dev);
            let xv = candle_core::Var::from_tensor(&t(&x, &[rows, h])?)?;
            let wv = candle_core::Var::from_tensor(&t(&w, &[h])?)?;
            let y = super::norm::rms_norm_train(xv.as_tensor(), wv.as_tensor(), eps)?;
            let gt = t(&g, &[rows, h])?.to_dtype(DType::F32)?;
            let grads = (y.to_dtype(DType::F32)? * gt)?.sum_all()?.backward()?;
            let back = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Ok((back(&y)?, back(grads.get(xv.as_tensor()).unwrap())?, back(grads.get(wv.as_tensor()).unwrap())?))
        };
        run().map_err(cerr)?
    };
    let rel = rel_f64;
    // one rounding to the storage type (dw: f32 sums, then w's type on the GPU)
    let tol = storage_tol(dt);
    let what = format!("dtype={} rows={rows} h={h} (relative to max)", dt.as_str());
    Ok([
        Check { kernel: "rms_norm_fwd", what: what.clone(), max_err: rel(&y, &wy), tol },
        Check { kernel: "rms_norm_bwd", what: format!("{what} grad=dx,dw"), max_err: rel(&dx, &wdx).max(rel(&dw, &wdw)), tol },
    ])
}

/// `rms_norm_cast` and `residual_add` (evaluation's f32 residual stream of a `dt` model) against
/// f64: y = x rs w rounded once to dt; out = x + d in f32. x, w f32 (w with dt's values, as the
/// model's weights cast at load), d rounded to dt.
fn check_residual(dev: &Device, dt: DType, rows: usize, h: usize, seed: u64) -> Result<[Check; 2]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let x = normal(&mut rng, rows * h, 4.0);
    let w = round_to(dt, &normal(&mut rng, h, 1.0));
    let d = round_to(dt, &normal(&mut rng, rows * h, 2.0));
    let eps = 1e-5f32;
    let mut wy = vec![0f64; rows * h];
    for r in 0..rows {
        let xr = &x[r * h..(r + 1) * h];
        let rs = 1.0 / (xr.iter().map(|&v| (v as f64).powi(2)).sum::<f64>() / h as f64 + eps as f64).sqrt();
        for j in 0..h {
            wy[r * h + j] = xr[j] as f64 * rs * w[j] as f64;
        }
    }
    let wadd: Vec<f64> = x.iter().zip(&d).map(|(&a, &b)| a as f64 + b as f64).collect();
    let (y, add) = if dev.is_cpu() {
        let kd = kdtype(dt);
        (emu::rms_norm_cast(kd, &x, &w, eps).map_err(Error::msg)?, emu::residual_add(kd, &x, &d, 3).map_err(Error::msg)?)
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let t = |v: &[f32], shape: &[usize], dt: DType| Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?.to_dtype(dt)?.to_device(dev);
            let (xt, wt, dtn) = (t(&x, &[rows, h], DType::F32)?, t(&w, &[h], DType::F32)?, t(&d, &[rows, h], dt)?);
            let y = super::norm::rms_norm_cast(&xt, &wt, eps, dt)?;
            let add = super::norm::residual_add(&xt, &dtn)?;
            let back = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Ok((back(&y)?, back(&add)?))
        };
        run().map_err(cerr)?
    };
    let what = format!("dtype={} rows={rows} h={h} (relative to max)", dt.as_str());
    Ok([
        // one rounding to dt
        Check { kernel: "rms_norm_cast", what: what.clone(), max_err: rel_f64(&y, &wy), tol: storage_tol(dt) },
        // one f32 rounding (half an f32 ulp of the sum)
        Check { kernel: "residual_add", what, max_err: rel_f64(&add, &wadd), tol: 1e-6 },
    ])
}

/// max |got - want| / max |want|.
fn rel_f64(got: &[f32], want: &[f64]) -> f32 {
    let m = want.iter().fold(1e-12f64, |m, v| m.max(v.abs()));
    got.iter().zip(want).map(|(&a, &b)| if a.is_finite() { ((a as f64 - b).abs() / m) as f32 } else { f32::INFINITY }).fold(0.0, f32::max)
}

/// One rounding to the storage type, relative to the largest value.
fn storage_tol(dt: DType) -> f32 {
    match dt {
        DType::BF16 => 8e-3,
        DType::F16 => 1e-3,
        _ => 1e-5,
    }
}

/// `swiglu_fwd` / `swiglu_bwd` against f64: h = silu(g) u, dg, du for a random dh.
fn check_swiglu(dev: &Device, dt: DType, n: usize, seed: u64) -> Result<[Check; 2]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let (g, u, dh) = (round_to(dt, &normal(&mut rng, n, 3.0)), round_to(dt, &normal(&mut rng, n, 1.0)), round_to(dt, &normal(&mut rng, n, 1.0)));
    let (mut wh, mut wdg, mut wdu) = (vec![0f64; n], vec![0f64; n], vec![0f64; n]);
    for i in 0..n {
        let (x, y, d) = (g[i] as f64, u[i] as f64, dh[i] as f64);
        let s = 1.0 / (1.0 + (-x).exp());
        wh[i] = x * s * y;
        wdg[i] = d * y * s * (1.0 + x * (1.0 - s));
        wdu[i] = d * x * s;
    }
    let (h, dg, du) = if dev.is_cpu() {
        let kd = kdtype(dt);
        let h = emu::swiglu_fwd(kd, &g, &u, 3).map_err(Error::msg)?;
        let (dg, du) = emu::swiglu_bwd(kd, &g, &u, &dh, 3).map_err(Error::msg)?;
        (h, dg, du)
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>, Vec<f32>)> {
            let t = |v: &[f32]| Tensor::from_vec(v.to_vec(), n, &Device::Cpu)?.to_dtype(dt)?.to_device(dev);
            let (gv, uv) = (candle_core::Var::from_tensor(&t(&g)?)?, candle_core::Var::from_tensor(&t(&u)?)?);
            let h = super::swiglu::swiglu(gv.as_tensor(), uv.as_tensor())?;
            let grads = (h.to_dtype(DType::F32)? * t(&dh)?.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
            let back = |t: &Tensor| t.to_dtype(DType::F32)?.to_vec1::<f32>();
            Ok((back(&h)?, back(grads.get(gv.as_tensor()).unwrap())?, back(grads.get(uv.as_tensor()).unwrap())?))
        };
        run().map_err(cerr)?
    };
    let (tol, what) = (storage_tol(dt), format!("dtype={} n={n} (relative to max)", dt.as_str()));
    Ok([
        Check { kernel: "swiglu_fwd", what: what.clone(), max_err: rel_f64(&h, &wh), tol },
        Check { kernel: "swiglu_bwd", what: format!("{what} grad=dg,du"), max_err: rel_f64(&dg, &wdg).max(rel_f64(&du, &wdu)), tol },
    ])
}

/// `rope` against f64 on the k view of a fused [b, s, h, 3 d] projection with rotary dim
/// `rot`: the forward, and the backward's transposed rotation (the op's gradient).
fn check_rope(dev: &Device, dt: DType, (b, s, h, d): (usize, usize, usize, usize), rot: usize, seed: u64) -> Result<[Check; 2]> {
    let mut rng = StdRng::seed_from_u64(seed);
    let r = rot / 2;
    let fused = round_to(dt, &normal(&mut rng, b * s * h * 3 * d, 1.0));
    let dy = round_to(dt, &normal(&mut rng, b * s * h * d, 1.0));
    let (mut cos, mut sin) = (Vec::with_capacity(s * r), Vec::with_capacity(s * r));
    for p in 0..s {
        for j in 0..r {
            let a = p as f32 / 10000f32.powf(j as f32 / r as f32);
            cos.push(a.cos());
            sin.push(a.sin());
        }
    }
    let (cos, sin) = (round_to(dt, &cos), round_to(dt, &sin));
    // y = R x, dx = R^T dy, per row (x: the middle third of each fused row)
    let rotate = |x: &dyn Fn(usize, usize) -> f64, sign: f64| -> Vec<f64> {
        let mut y = vec![0f64; b * s * h * d];
        for row in 0..b * s * h {
            let p = (row / h) % s;
            for j in 0..d {
                y[row * d + j] = if j < r {
                    x(row, j) * cos[p * r + j] as f64 - sign * x(row, j + r) * sin[p * r + j] as f64
                } else if j < rot {
                    x(row, j) * cos[p * r + j - r] as f64 + sign * x(row, j - r) * sin[p * r + j - r] as f64
                } else {
                    x(row, j)
                };
            }
        }
        y
    };
    let wy = rotate(&|row, j| fused[row * 3 * d + d + j] as f64, 1.0);
    let wdx = rotate(&|row, j| dy[row * d + j] as f64, -1.0);
    let (y, dx) = if dev.is_cpu() {
        let kd = kdtype(dt);
        let y = emu::rope(kd, &fused[d..], (s * h * 3 * d, h * 3 * d, 3 * d), (b, s, h, d), &cos, &sin, rot, 1.0, 3).map_err(Error::msg)?;
        let dx = emu::rope(kd, &dy, (s * h * d, h * d, d), (b, s, h, d), &cos, &sin, rot, -1.0, 3).map_err(Error::msg)?;
        (y, dx)
    } else {
        let run = || -> candle_core::Result<(Vec<f32>, Vec<f32>)> {
            let t = |v: &[f32], shape: &[usize]| Tensor::from_vec(v.to_vec(), shape, &Device::Cpu)?.to_dtype(dt)?.to_device(dev);
            let var = candle_core::Var::from_tensor(&t(&fused, &[b, s, h, 3 * d])?)?;
            let y = super::rope::rope(&var.as_tensor().narrow(3, d, d)?, &t(&cos, &[s, r])?, &t(&sin, &[s, r])?)?;
            let grads = (y.to_dtype(DType::F32)? * t(&dy, &[b, s, h, d])?.to_dtype(DType::F32)?)?.sum_all()?.backward()?;
            let back = |t: &Tensor| t.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>();
            Ok((back(&y)?, back(&grads.get(var.as_tensor()).unwrap().narrow(3, d, d)?)?))
        };
        run().map_err(cerr)?
    };
    let (tol, what) = (storage_tol(dt), format!("dtype={} shape={b}x{s}x{h}x{d} rotary={rot} strided (relative to max)", dt.as_str()));
    Ok([
        Check { kernel: "rope", what: what.clone(), max_err: rel_f64(&y, &wy), tol },
        Check { kernel: "rope", what: format!("{what} grad=dx"), max_err: rel_f64(&dx, &wdx), tol },
    ])
}

/// Median seconds of `f` (synchronised) over `iters` after `warmup`.
fn time<F: FnMut() -> candle_core::Result<()>>(dev: &Device, warmup: usize, iters: usize, mut f: F) -> candle_core::Result<f64> {
    let mut t = Vec::with_capacity(iters);
    for i in 0..warmup + iters {
        dev.synchronize()?;
        let s = Instant::now();
        f()?;
        dev.synchronize()?;
        if i >= warmup {
            t.push(s.elapsed().as_secs_f64());
        }
    }
    t.sort_by(|a, b| a.partial_cmp(b).unwrap());
    Ok(t[t.len() / 2])
}

/// The model's plain attention (Mode::Eval without flash): q [b, s, nh, d], k/v [b, s, nkv, d].
fn plain_attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let (b, s, nh, d) = q.dims4()?;
    let nkv = k.dim(2)?;
    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        if nh == nkv {
            return Ok(x);
        }
        x.unsqueeze(2)?.expand((b, nkv, nh / nkv, s, d))?.reshape((b, nh, s, d))
    };
    let q = q.transpose(1, 2)?.contiguous()?;
    let scores = (q.matmul(&rep(k)?.t()?)? * scale)?.broadcast_add(mask)?;
    let p = candle_nn::ops::softmax_last_dim(&scores)?;
    p.matmul(&rep(v)?)?.transpose(1, 2)?.contiguous()
}

/// The model's plain attention in training (differentiable softmax).
fn plain_attention_train(q: &Tensor, k: &Tensor, v: &Tensor, mask: &Tensor, scale: f64) -> candle_core::Result<Tensor> {
    let (b, s, nh, d) = q.dims4()?;
    let nkv = k.dim(2)?;
    let rep = |x: &Tensor| -> candle_core::Result<Tensor> {
        let x = x.transpose(1, 2)?.contiguous()?;
        x.unsqueeze(2)?.expand((b, nkv, nh / nkv, s, d))?.reshape((b, nh, s, d))
    };
    let q = q.transpose(1, 2)?.contiguous()?;
    let scores = (q.matmul(&rep(k)?.t()?)? * scale)?.broadcast_add(mask)?;
    candle_nn::ops::softmax(&scores, D::Minus1)?.matmul(&rep(v)?)?.transpose(1, 2)?.contiguous()
}

fn timings(dev: &Device, a: &BenchKernelsArgs) -> candle_core::Result<()> {
    // The two ceilings (the device METHOD): device memory bandwidth from a large copy (bytes
    // read + written), and the bf16 matmul rate through candle's cuBLAS.
    {
        let x = Tensor::randn(0f32, 1.0, 1usize << 29, dev)?.to_dtype(DType::BF16)?.reshape((1 << 14, 1 << 15))?; // 1 GiB
        let t = time(dev, a.warmup, a.iters, || x.copy().map(|_| ()))?;
        println!("RESULT ceiling=copy bytes={} median_ms={:.3} gb_s={:.0}", 2u64 << 30, t * 1e3, (2u64 << 30) as f64 / t / 1e9);
        let n = 8192;
        let m1 = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(DType::BF16)?;
        let m2 = Tensor::randn(0f32, 1.0, (n, n), dev)?.to_dtype(DType::BF16)?;
        let t = time(dev, a.warmup, a.iters, || m1.matmul(&m2).map(|_| ()))?;
        println!("RESULT ceiling=matmul shape={n}x{n}x{n} dtype=bf16 median_ms={:.3} tflops={:.1}", t * 1e3, 2.0 * (n as f64).powi(3) / t / 1e12);
    }
    let (nh, nkv, d) = (32, 4, 64); // TinyLlama-1.1B
    for (b, s) in [(8usize, 2048usize), (4, 1024)] {
        let q = Tensor::randn(0f32, 1.0, (b, s, nh, d), dev)?.to_dtype(DType::BF16)?;
        let k = Tensor::randn(0f32, 1.0, (b, s, nkv, d), dev)?.to_dtype(DType::BF16)?;
        let v = Tensor::randn(0f32, 1.0, (b, s, nkv, d), dev)?.to_dtype(DType::BF16)?;
        let scale = 1.0 / (d as f64).sqrt();
        // causal: half of the 4 b nh s^2 d FLOPs of full attention
        let flops = 2.0 * (b * nh * s * s * d) as f64;
        for variant in FlashVariant::ALL {
            let t = time(dev, a.warmup, a.iters, || super::flash_attention_variant(&q, &k, &v, scale as f32, variant, None).map(|_| ()))?;
            println!(
                "RESULT kernel=attention impl=flash variant={} shape={b}x{s}x{nh}x{nkv}x{d} dtype=bf16 median_ms={:.3} tflops={:.1}",
                variant.name(),
                t * 1e3,
                flops / t / 1e12
            );
        }
        // a sliding window of 256 keys (the layers of OLMo-3 / Mistral-like models that have one):
        // the time should scale with the window, not with s (FLOPs over the attended pairs)
        {
            let w = 256usize;
            let pairs: usize = (0..s).map(|i| (i + 1).min(w)).sum();
            let wflops = 4.0 * (b * nh * pairs * d) as f64;
            let t = time(dev, a.warmup, a.iters, || super::flash_attention_variant(&q, &k, &v, scale as f32, FlashVariant::W4, Some(w)).map(|_| ()))?;
            println!(
                "RESULT kernel=attention impl=flash variant=w4 window={w} shape={b}x{s}x{nh}x{nkv}x{d} dtype=bf16 median_ms={:.3} tflops={:.1}",
                t * 1e3,
                wflops / t / 1e12
            );
        }
        let mask: Vec<f32> = (0..s).flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (s, s), dev)?.to_dtype(DType::BF16)?;
        let t = time(dev, a.warmup, a.iters.min(5), || plain_attention(&q, &k, &v, &mask, scale).map(|_| ()))?;
        println!("RESULT kernel=attention impl=plain shape={b}x{s}x{nh}x{nkv}x{d} dtype=bf16 median_ms={:.3} tflops={:.1}", t * 1e3, flops / t / 1e12);
    }
    // training: forward + backward of attention, flash against plain (4x2048, TinyLlama heads)
    for (b, s) in [(4usize, 2048usize)] {
        let mk = |h: usize| -> candle_core::Result<candle_core::Var> { candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, h, d), dev)?.to_dtype(DType::BF16)?) };
        let (q, k, v) = (mk(nh)?, mk(nkv)?, mk(nkv)?);
        let g = Tensor::randn(0f32, 1.0, (b, s, nh, d), dev)?.to_dtype(DType::BF16)?;
        let scale = 1.0 / (d as f64).sqrt();
        let mask: Vec<f32> = (0..s).flat_map(|i| (0..s).map(move |j| if j > i { f32::NEG_INFINITY } else { 0.0 })).collect();
        let mask = Tensor::from_vec(mask, (s, s), dev)?.to_dtype(DType::BF16)?;
        let flops = 2.5 * 2.0 * (b * nh * s * s * d) as f64; // backward ~2.5x the forward's matmuls
        let tf = time(dev, a.warmup, a.iters, || {
            let o = super::flash_attention_train(q.as_tensor(), k.as_tensor(), v.as_tensor(), scale as f32, None)?;
            (o * &g)?.sum_all()?.backward().map(|_| ())
        })?;
        let tp = time(dev, a.warmup, a.iters.min(5), || {
            let o = plain_attention_train(q.as_tensor(), k.as_tensor(), v.as_tensor(), &mask, scale)?;
            (o * &g)?.sum_all()?.backward().map(|_| ())
        })?;
        for (name, t) in [("flash", tf), ("plain", tp)] {
            println!("RESULT kernel=attention_fwd_bwd impl={name} shape={b}x{s}x{nh}x{nkv}x{d} dtype=bf16 median_ms={:.3} tflops={:.1}", t * 1e3, (flops + 2.0 * (b * nh * s * s * d) as f64) / t / 1e12);
        }
    }
    // SwiGLU at TinyLlama's MLP (8x2048 tokens x 5632): the fused op against silu then mul,
    // forward (evaluation) and forward + backward (training, 4x2048)
    for (tokens, train) in [(8 * 2048usize, false), (4 * 2048, true)] {
        let inter = 5632;
        let g = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (tokens, inter), dev)?.to_dtype(DType::BF16)?)?;
        let u = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (tokens, inter), dev)?.to_dtype(DType::BF16)?)?;
        let dh = Tensor::randn(0f32, 1.0, (tokens, inter), dev)?.to_dtype(DType::BF16)?;
        let run = |fused: bool| -> candle_core::Result<()> {
            let h = if fused { super::swiglu::swiglu(g.as_tensor(), u.as_tensor())? } else { (g.as_tensor().silu()? * u.as_tensor())? };
            if train {
                let _ = (h * &dh)?.sum_all()?.backward()?;
            }
            Ok(())
        };
        let (tf, tp) = (time(dev, a.warmup, a.iters, || run(true))?, time(dev, a.warmup, a.iters, || run(false))?);
        for (name, t) in [("fused", tf), ("plain", tp)] {
            let what = if train { "swiglu_fwd_bwd" } else { "swiglu_fwd" };
            println!("RESULT kernel={what} impl={name} shape={tokens}x{inter} dtype=bf16 median_ms={:.3}", t * 1e3);
        }
    }
    // Evaluation's residual step at 8x2048 tokens x 2048 (TinyLlama): add a sublayer's bf16
    // output into the stream, then the next norm's bf16 output. f32 stream fused (rho's
    // default), f32 stream composed of candle ops, and the bf16 stream (RHO_RESIDUAL=model).
    {
        let (tokens, h) = (8 * 2048usize, 2048usize);
        let x = Tensor::randn(0f32, 1.0, (tokens, h), dev)?;
        let d = Tensor::randn(0f32, 1.0, (tokens, h), dev)?.to_dtype(DType::BF16)?;
        let w = Tensor::randn(0f32, 1.0, h, dev)?;
        let (xb, wb) = (x.to_dtype(DType::BF16)?, w.to_dtype(DType::BF16)?);
        let tf = time(dev, a.warmup, a.iters, || super::norm::rms_norm_cast(&super::norm::residual_add(&x, &d)?, &w, 1e-5, DType::BF16).map(|_| ()))?;
        let tc = time(dev, a.warmup, a.iters, || candle_nn::ops::rms_norm(&(&x + d.to_dtype(DType::F32)?)?, &w, 1e-5)?.to_dtype(DType::BF16).map(|_| ()))?;
        let tb = time(dev, a.warmup, a.iters, || candle_nn::ops::rms_norm(&(&xb + &d)?, &wb, 1e-5).map(|_| ()))?;
        for (name, t) in [("fused-f32", tf), ("composed-f32", tc), ("bf16", tb)] {
            println!("RESULT kernel=residual_add_norm impl={name} shape={tokens}x{h} median_ms={:.3}", t * 1e3);
        }
    }
    // RoPE on q at 4x2048 with TinyLlama's heads: the op against candle-nn's rope_thd
    // (evaluation) and against the composed rotation (training: forward + backward)
    {
        let (b, s) = (4usize, 2048usize);
        let q = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (b, s, nh, d), dev)?.to_dtype(DType::BF16)?)?;
        let cos = Tensor::randn(0f32, 1.0, (s, d / 2), dev)?.to_dtype(DType::BF16)?;
        let sin = Tensor::randn(0f32, 1.0, (s, d / 2), dev)?.to_dtype(DType::BF16)?;
        let dy = Tensor::randn(0f32, 1.0, (b, s, nh, d), dev)?.to_dtype(DType::BF16)?;
        let tf = time(dev, a.warmup, a.iters, || super::rope::rope(q.as_tensor(), &cos, &sin).map(|_| ()))?;
        let tp = time(dev, a.warmup, a.iters, || candle_nn::rotary_emb::rope_thd(q.as_tensor(), &cos, &sin).map(|_| ()))?;
        for (name, t) in [("fused", tf), ("candle", tp)] {
            println!("RESULT kernel=rope impl={name} shape={b}x{s}x{nh}x{d} dtype=bf16 median_ms={:.3}", t * 1e3);
        }
        let composed = |x: &Tensor| -> candle_core::Result<Tensor> {
            let half = d / 2;
            let c = Tensor::cat(&[&cos, &cos], 1)?.reshape((s, 1, d))?;
            let sn = Tensor::cat(&[&sin, &sin], 1)?.reshape((s, 1, d))?;
            let rotated = Tensor::cat(&[&x.narrow(3, half, half)?.neg()?, &x.narrow(3, 0, half)?], 3)?;
            x.broadcast_mul(&c)? + rotated.broadcast_mul(&sn)?
        };
        let tf = time(dev, a.warmup, a.iters, || (super::rope::rope(q.as_tensor(), &cos, &sin)? * &dy)?.sum_all()?.backward().map(|_| ()))?;
        let tp = time(dev, a.warmup, a.iters, || (composed(q.as_tensor())? * &dy)?.sum_all()?.backward().map(|_| ()))?;
        for (name, t) in [("fused", tf), ("plain", tp)] {
            println!("RESULT kernel=rope_fwd_bwd impl={name} shape={b}x{s}x{nh}x{d} dtype=bf16 median_ms={:.3}", t * 1e3);
        }
    }
    for (b, s, vocab) in [(8usize, 2048usize, 32000usize), (4, 1024, 128256)] {
        let logits = Tensor::randn(0f32, 3.0, (b, s, vocab), dev)?.to_dtype(DType::BF16)?;
        let view = logits.narrow(1, 0, s - 1)?;
        let t = Tensor::rand(0f32, vocab as f32, (b, s - 1), dev)?.to_dtype(DType::U32)?;
        let bytes = (b * (s - 1) * vocab * 2) as f64;
        let tf = time(dev, a.warmup, a.iters, || crate::model::loss::token_loss_eval(&view, &t).map(|_| ()))?;
        let tp = time(dev, a.warmup, a.iters.min(5), || crate::model::loss::per_token_loss(&view, &t).map(|_| ()))?;
        for (name, x) in [("fused", tf), ("plain", tp)] {
            println!("RESULT kernel=token_ce_fwd impl={name} logits={b}x{}x{vocab} dtype=bf16 median_ms={:.3} read_gb_s={:.0}", s - 1, x * 1e3, bytes / x / 1e9);
        }
        let var = candle_core::Var::from_tensor(&logits)?;
        let w = Tensor::ones((b, s - 1), DType::F32, dev)?;
        let fwd_bwd = |fused: bool| -> candle_core::Result<()> {
            let x = var.as_tensor().narrow(1, 0, s - 1)?;
            let l = if fused { super::token_cross_entropy(&x, &t)? } else { crate::model::loss::per_token_loss(&x, &t)? };
            let _ = (l * &w)?.sum_all()?.backward()?;
            Ok(())
        };
        let tf = time(dev, a.warmup, a.iters, || fwd_bwd(true))?;
        let tp = time(dev, a.warmup, a.iters.min(5), || fwd_bwd(false))?;
        for (name, x) in [("fused", tf), ("plain", tp)] {
            println!("RESULT kernel=token_ce_fwd_bwd impl={name} logits={b}x{}x{vocab} dtype=bf16 median_ms={:.3}", s - 1, x * 1e3);
        }
    }
    Ok(())
}

/// Run the checks (and timings on CUDA). Returns the checks; an error if one failed.
pub fn run_bench_kernels(a: &BenchKernelsArgs) -> Result<Vec<Check>> {
    let dev = crate::cli::parse_device(&a.device)?;
    if a.iters == 0 {
        return Err(Error::flag("--iters", "must be positive"));
    }
    let gqa = |batch, seq, n_heads, n_kv_heads, head_dim| AttnShape { batch, seq, n_heads, n_kv_heads, head_dim };
    use FlashVariant::{W4, W4M4, W8};
    // (dtype, shape, fused layout, q std, variant, sliding window): real shapes on a GPU, small
    // ones in the emulator; the windowed cases: smaller than a key tile, not a multiple of the
    // tile (and spanning query blocks), more keys than the sequence, grouped-query heads
    let flash_cases: Vec<(DType, AttnShape, bool, f32, FlashVariant, Option<usize>)> = if dev.is_cpu() {
        vec![
            (DType::BF16, gqa(2, 77, 4, 2, 64), false, 1.0, W4, None),
            (DType::BF16, gqa(1, 130, 2, 1, 128), false, 1.0, W4, None),
            (DType::F16, gqa(1, 70, 2, 1, 64), true, 1.0, W4, None),
            (DType::BF16, gqa(1, 150, 1, 1, 64), false, 6.0, W8, None),
            (DType::BF16, gqa(1, 150, 4, 2, 64), false, 2.0, W4, Some(5)),
            (DType::F16, gqa(1, 130, 2, 1, 128), false, 1.0, W4, Some(45)),
            (DType::BF16, gqa(1, 200, 2, 1, 64), false, 1.0, W8, Some(70)),
            (DType::F16, gqa(1, 70, 2, 2, 64), true, 1.0, W4, Some(200)),
        ]
    } else {
        vec![
            (DType::BF16, gqa(1, 1024, 8, 2, 64), false, 1.0, W4, None),
            (DType::BF16, gqa(1, 1024, 8, 2, 64), false, 1.0, W4M4, None),
            (DType::BF16, gqa(1, 1024, 8, 2, 64), false, 1.0, W8, None),
            (DType::BF16, gqa(2, 300, 4, 1, 128), false, 1.0, W4, None),
            (DType::F16, gqa(1, 515, 4, 4, 64), true, 1.0, W4, None),
            (DType::BF16, gqa(1, 2048, 2, 2, 64), false, 5.0, W8, None),
            (DType::F16, gqa(1, 333, 4, 2, 128), true, 2.0, W4, None),
            // head dims 32, 80 (Pythia-2.8b: fused projection), 256 (Pythia-1b)
            (DType::F16, gqa(2, 200, 4, 4, 32), true, 1.0, W4, None),
            (DType::BF16, gqa(1, 700, 4, 4, 80), true, 1.5, W4, None),
            (DType::BF16, gqa(1, 333, 2, 1, 256), false, 1.0, W4, None),
            // sliding windows
            (DType::BF16, gqa(1, 1024, 8, 2, 64), false, 2.0, W4, Some(256)),
            (DType::BF16, gqa(1, 1024, 8, 2, 64), false, 1.0, W4M4, Some(10)),
            (DType::BF16, gqa(1, 1024, 8, 2, 64), false, 1.0, W8, Some(100)),
            (DType::F16, gqa(2, 300, 4, 1, 128), false, 1.0, W4, Some(37)),
            (DType::F16, gqa(1, 700, 4, 4, 80), true, 1.0, W4, Some(4096)),
            (DType::BF16, gqa(1, 333, 2, 1, 256), false, 1.0, W4, Some(50)),
            (DType::F16, gqa(2, 200, 4, 2, 32), false, 1.0, W4, Some(3)),
        ]
    };
    let bwd_cases: Vec<(DType, AttnShape, Option<usize>)> = if dev.is_cpu() {
        vec![
            (DType::BF16, gqa(1, 77, 2, 1, 64), None),
            (DType::F16, gqa(1, 130, 2, 2, 64), None),
            (DType::BF16, gqa(1, 70, 2, 1, 128), None),
            (DType::F16, gqa(1, 90, 2, 2, 32), None),
            (DType::BF16, gqa(1, 45, 2, 1, 80), None),
            (DType::BF16, gqa(1, 150, 2, 1, 64), Some(5)),
            (DType::F16, gqa(1, 100, 2, 1, 128), Some(45)),
            (DType::F16, gqa(1, 90, 2, 2, 32), Some(200)),
        ]
    } else {
        vec![
            (DType::BF16, gqa(1, 700, 4, 2, 64), None),
            (DType::F16, gqa(2, 300, 2, 2, 64), None),
            (DType::BF16, gqa(1, 500, 4, 1, 128), None),
            (DType::F16, gqa(1, 600, 4, 2, 32), None),
            (DType::BF16, gqa(1, 500, 4, 4, 80), None),
            (DType::BF16, gqa(1, 700, 4, 2, 64), Some(129)),
            (DType::F16, gqa(1, 500, 4, 1, 128), Some(7)),
            (DType::BF16, gqa(1, 500, 4, 4, 80), Some(100)),
            (DType::F16, gqa(1, 600, 4, 2, 32), Some(1000)),
        ]
    };
    let (cb, cs, cv) = if dev.is_cpu() { (2, 6, 1000) } else { (4, 257, 32000) };
    let mut checks = Vec::new();
    for (i, &(dt, shape, fused, q_std, variant, window)) in flash_cases.iter().enumerate() {
        let c = check_flash(&dev, dt, shape, fused, q_std, variant, window, a.seed + i as u64)?;
        println!("{}", c.line());
        checks.push(c);
    }
    for (i, &(dt, shape, window)) in bwd_cases.iter().enumerate() {
        for c in check_flash_bwd(&dev, dt, shape, window, a.seed + 50 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    for (i, dt) in [DType::BF16, DType::F16, DType::F32].into_iter().enumerate() {
        for c in check_ce(&dev, dt, cb, cs, cv, a.seed + 100 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    let on = if dev.is_cpu() { 5000 } else { (1 << 22) + 5 };
    for (i, dt) in [DType::BF16, DType::F16, DType::F32].into_iter().enumerate() {
        for c in check_optim(&dev, dt, on, a.seed + 200 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    let (nr, nh) = if dev.is_cpu() { (9, 300) } else { (4099, 2048) };
    for (i, dt) in [DType::BF16, DType::F16, DType::F32].into_iter().enumerate() {
        for c in check_norm(&dev, dt, nr, nh, a.seed + 300 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    // evaluation's f32 residual stream: a shape with 16-byte vectors and one without
    let res_shapes = if dev.is_cpu() { [(9, 304), (5, 300)] } else { [(4099, 2048), (33, 2052)] };
    for (i, (dt, (rows, h))) in [DType::BF16, DType::F16].into_iter().flat_map(|dt| res_shapes.map(|s| (dt, s))).enumerate() {
        for c in check_residual(&dev, dt, rows, h, a.seed + 350 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    let sn = if dev.is_cpu() { 3001 } else { (1 << 22) + 3 };
    for (i, dt) in [DType::BF16, DType::F16, DType::F32].into_iter().enumerate() {
        for c in check_swiglu(&dev, dt, sn, a.seed + 400 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    // TinyLlama's heads (full rotary), Pythia's quarter rotary on a fused projection
    let rope_shape = if dev.is_cpu() { (1, 9, 3, 64) } else { (2, 1024, 32, 64) };
    for (i, (dt, rot)) in [(DType::BF16, 64), (DType::F16, 16), (DType::F32, 64)].into_iter().enumerate() {
        for c in check_rope(&dev, dt, rope_shape, rot, a.seed + 500 + i as u64)? {
            println!("{}", c.line());
            checks.push(c);
        }
    }
    if dev.is_cuda() && !a.no_timing {
        timings(&dev, a).map_err(cerr)?;
    } else if !a.no_timing {
        println!("timings: on CUDA only (the emulator runs one fiber per GPU thread)");
    }
    let failed: Vec<_> = checks.iter().filter(|c| !c.pass()).map(|c| format!("{} {}", c.kernel, c.what)).collect();
    if !failed.is_empty() {
        return Err(Error::msg(format!("{} kernel check(s) failed: {}", failed.len(), failed.join("; "))));
    }
    println!("all {} kernel checks passed on {}", checks.len(), a.device);
    Ok(checks)
}
