//! `rho bench load` (at the end): checkpoint load time, as `rho eval` loads.
//!
//! `rho bench eval`: per-token loss throughput of a randomly initialised Llama
//! (TinyLlama-1.1B shape by default), with the flags, shapes and output of the
//! PyTorch peer `../shared/gpu/torch_peer.py`, so that one device call measures
//! both side by side.
//!
//! Each iteration is what `rho eval` does per batch: forward to logits
//! [b, s, vocab] in the model's dtype, then the per-token f32 cross-entropy of the
//! shifted logits (`token_loss_eval`), copied back to the host. tokens/s =
//! b * s / median time over `--iters` timed iterations after `--warmup`.
//! Prints `RESULT key=value ...` lines like the peer.
//!
//! `--dump FILE` writes the weights (transformers' names), the ids and our
//! per-token losses of every shape to a safetensors file that
//! `torch_peer.py --check-against FILE` (same model flags) compares against, and
//! `rho bench eval --check-against FILE` recomputes with this build on another device
//! or dtype (the GPU's bf16 losses against the CPU's f32 path).

use crate::error::{Error, Result};
use crate::model::loss::token_loss_eval;
use crate::model::{Mode, ModelConfig, Transformer};
use candle_core::{DType, Device, Shape, Tensor};
use candle_nn::var_builder::SimpleBackend;
use candle_nn::VarBuilder;
use clap::Args;
use rand::{Rng, SeedableRng};
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Instant;

#[derive(Debug, Args, Clone)]
pub struct BenchEvalArgs {
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Batch shapes, BxS, comma-separated.
    #[arg(long, default_value = "8x2048,4x1024")]
    pub shapes: String,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    #[arg(long, default_value_t = 22)]
    pub layers: usize,
    #[arg(long, default_value_t = 2048)]
    pub hidden: usize,
    #[arg(long, default_value_t = 5632)]
    pub intermediate: usize,
    #[arg(long, default_value_t = 32)]
    pub heads: usize,
    #[arg(long, default_value_t = 4)]
    pub kv_heads: usize,
    #[arg(long, default_value_t = 32000)]
    pub vocab: usize,
    /// The peer's tiny config (2 layers, hidden 64, vocab 512; shapes 2x32,1x16) for smoke tests.
    #[arg(long)]
    pub tiny: bool,
    /// bf16 or f32 (the loss is always f32).
    #[arg(long, default_value = "bf16")]
    pub dtype: String,
    /// Seed of the weights and ids.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Write weights, ids and per-token losses for `torch_peer.py --check-against`.
    #[arg(long)]
    pub dump: Option<PathBuf>,
    /// Measure nothing: load a `--dump` file's weights and ids, compute the per-token losses
    /// here (this --device and --dtype, e.g. the CPU in f32) and compare them with the
    /// dumped ones: a `CHECK` line per shape, relative tolerance --tol; exit 1 on a failure.
    #[arg(long, conflicts_with = "dump")]
    pub check_against: Option<PathBuf>,
    /// With --check-against: the largest |ours - dumped| / |dumped| per token that passes.
    #[arg(long, default_value_t = 1e-2)]
    pub tol: f64,
}

/// One measured shape.
#[derive(Debug, Clone)]
pub struct BenchResult {
    pub b: usize,
    pub s: usize,
    pub tokens_per_s: f64,
    pub median_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub loss_mean: f64,
}

impl BenchResult {
    /// From the seconds of the timed iterations of a b x s batch: tokens/s of the median.
    pub fn from_times(b: usize, s: usize, times: &[f64], loss_mean: f64) -> Self {
        let mut t = times.to_vec();
        t.sort_by(|x, y| x.partial_cmp(y).unwrap());
        let n = t.len();
        let med = if n % 2 == 1 { t[n / 2] } else { (t[n / 2 - 1] + t[n / 2]) / 2.0 };
        BenchResult {
            b,
            s,
            tokens_per_s: (b * s) as f64 / med,
            median_ms: med * 1e3,
            min_ms: t[0] * 1e3,
            max_ms: t[n - 1] * 1e3,
            loss_mean,
        }
    }

    /// The peer's `RESULT` line format.
    pub fn line(&self, system: &str, flops: f64, peak_gib: f64) -> String {
        format!(
            "RESULT system={system} kind=fwd+ce shape={}x{} tokens_per_s={:.0} median_ms={:.2} min_ms={:.2} max_ms={:.2} model_tflops={:.1} loss_mean={:.4} peak_mem_gib={:.2}",
            self.b,
            self.s,
            self.tokens_per_s,
            self.median_ms,
            self.min_ms,
            self.max_ms,
            flops / (self.median_ms / 1e3) / 1e12,
            self.loss_mean,
            peak_gib
        )
    }
}

/// Parse "8x2048,4x1024".
pub fn parse_shapes(s: &str) -> Result<Vec<(usize, usize)>> {
    let bad = || Error::flag("--shapes", format!("`{s}` is not a list of BxS (e.g. 8x2048,4x1024)"));
    let mut out = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (b, t) = part.split_once('x').ok_or_else(bad)?;
        let (b, t) = (b.parse::<usize>().map_err(|_| bad())?, t.parse::<usize>().map_err(|_| bad())?);
        if b == 0 || t < 2 {
            return Err(bad());
        }
        out.push((b, t));
    }
    if out.is_empty() {
        return Err(bad());
    }
    Ok(out)
}

/// Random weights made on the device (normal(0, 0.02) matrices, unit norm gains),
/// remembered by name for `--dump`.
struct RandBackend {
    made: Arc<Mutex<HashMap<String, Tensor>>>,
    seed: u64,
}

/// normal(0, std) values from a generator seeded by (seed, name): the CPU's
/// `Tensor::randn` cannot be seeded.
fn seeded_normal(seed: u64, name: &str, n: usize, std: f32) -> Vec<f32> {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3));
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ h);
    let mut v = Vec::with_capacity(n + 1);
    while v.len() < n {
        let u1: f32 = rng.random::<f32>().max(1e-30);
        let u2: f32 = rng.random::<f32>();
        let r = (-2.0 * u1.ln()).sqrt() * std;
        v.push(r * (std::f32::consts::TAU * u2).cos());
        v.push(r * (std::f32::consts::TAU * u2).sin());
    }
    v.truncate(n);
    v
}

impl SimpleBackend for RandBackend {
    fn get(&self, s: Shape, name: &str, _h: candle_nn::Init, dtype: DType, dev: &Device) -> candle_core::Result<Tensor> {
        let t = if s.rank() == 1 {
            Tensor::ones(&s, DType::F32, dev)?
        } else if dev.is_cpu() {
            Tensor::from_vec(seeded_normal(self.seed, name, s.elem_count(), 0.02), &s, dev)?
        } else {
            Tensor::randn(0f32, 0.02, &s, dev)? // curand, seeded with --seed
        };
        let t = t.to_dtype(dtype)?;
        self.made.lock().unwrap().insert(name.to_string(), t.clone());
        Ok(t)
    }
    fn get_unchecked(&self, name: &str, _dtype: DType, _dev: &Device) -> candle_core::Result<Tensor> {
        candle_core::bail!("no tensor `{name}` in a random model")
    }
    fn contains_tensor(&self, _name: &str) -> bool {
        false
    }
}

/// Peak resident memory of this process (GiB), from /proc (NaN elsewhere).
fn peak_rss_gib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / (1024.0 * 1024.0))
        .unwrap_or(f64::NAN)
}

pub fn run_bench_eval(a: &BenchEvalArgs) -> Result<Vec<BenchResult>> {
    let mut a = a.clone();
    if a.tiny {
        (a.layers, a.hidden, a.intermediate, a.heads, a.kv_heads, a.vocab) = (2, 64, 176, 4, 2, 512);
        if a.shapes == "8x2048,4x1024" {
            a.shapes = "2x32,1x16".into();
        }
    }
    let shapes = parse_shapes(&a.shapes)?;
    if a.iters == 0 {
        return Err(Error::flag("--iters", "must be positive"));
    }
    if a.heads == 0 || a.hidden % a.heads != 0 || a.kv_heads == 0 || a.heads % a.kv_heads != 0 {
        return Err(Error::flag("--heads", format!("hidden {} / heads {} / kv-heads {} do not divide", a.hidden, a.heads, a.kv_heads)));
    }
    let device = crate::cli::parse_device(&a.device)?;
    let dtype = crate::cli::parse_dtype(&a.dtype)?;
    if device.is_cuda() {
        device.set_seed(a.seed).map_err(|e| Error::msg(e.to_string()))?;
    }
    let max_s = shapes.iter().map(|s| s.1).max().unwrap();
    let cfg_json = serde_json::json!({
        "model_type": "llama",
        "vocab_size": a.vocab,
        "hidden_size": a.hidden,
        "intermediate_size": a.intermediate,
        "num_hidden_layers": a.layers,
        "num_attention_heads": a.heads,
        "num_key_value_heads": a.kv_heads,
        "max_position_embeddings": max_s.max(2048),
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
    });
    let cfg = ModelConfig::from_value(&cfg_json, std::path::Path::new("<rho bench eval>"))?;
    if let Some(path) = &a.check_against {
        return check_against_dump(&cfg, path, dtype, &device, a.tol).map(|()| Vec::new());
    }
    let made = Arc::new(Mutex::new(HashMap::new()));
    let t0 = Instant::now();
    let vb = VarBuilder::from_backend(Box::new(RandBackend { made: made.clone(), seed: a.seed }), dtype, device.clone());
    let model = Transformer::new(&cfg, vb, Mode::Eval).map_err(|e| Error::msg(crate::error::candle_msg(&e)))?;
    // Parameters of the dense matmuls (the layers' and lm_head), as the peer's FLOP
    // model counts them; the embedding adds vocab x hidden more to the model's size.
    let d = a.hidden / a.heads;
    let mm_params = a.layers * ((a.heads + 2 * a.kv_heads) * d * a.hidden + a.hidden * a.heads * d + 3 * a.hidden * a.intermediate) + a.vocab * a.hidden;
    let n_params = mm_params + a.vocab * a.hidden;
    println!(
        "model: rho Llama layers={} hidden={} inter={} heads={} kv_heads={} vocab={} params={:.3}B dtype={:?} residual={:?} device={} pool={} built in {:.1}s",
        a.layers,
        a.hidden,
        a.intermediate,
        a.heads,
        a.kv_heads,
        a.vocab,
        n_params as f64 / 1e9,
        dtype,
        model.residual_dtype(),
        a.device,
        crate::cuda::pool_name(),
        t0.elapsed().as_secs_f64()
    );
    let flops = |b: usize, s: usize| 2.0 * (b * s) as f64 * mm_params as f64 + 4.0 * (b * s * s) as f64 * (a.hidden * a.layers) as f64;

    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 42);
    let mut dump: HashMap<String, Tensor> = HashMap::new();
    let mut results = Vec::new();
    for &(b, s) in &shapes {
        let ids: Vec<u32> = (0..b * s).map(|_| rng.random_range(0..a.vocab as u32)).collect();
        let input = Tensor::from_vec(ids.clone(), (b, s), &device)?;
        let targets = input.narrow(1, 1, s - 1)?.contiguous()?;
        let mut times = Vec::new();
        let mut loss = Vec::new();
        for it in 0..a.warmup + a.iters {
            let t = Instant::now();
            let logits = model.forward(&input)?;
            let l = token_loss_eval(&logits.narrow(1, 0, s - 1)?, &targets)?;
            loss = l.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?; // synchronises
            if it >= a.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        let loss_mean = loss.iter().map(|&x| x as f64).sum::<f64>() / loss.len() as f64;
        if !loss_mean.is_finite() {
            return Err(Error::msg(format!("non-finite loss at shape {b}x{s}")));
        }
        let r = BenchResult::from_times(b, s, &times, loss_mean);
        let peak = if device.is_cpu() { peak_rss_gib() } else { f64::NAN };
        println!("{}", r.line("rho", flops(b, s), peak));
        if a.dump.is_some() {
            let n = loss.len();
            dump.insert(format!("ids_{b}x{s}"), Tensor::from_vec(ids.iter().map(|&x| x as i64).collect::<Vec<_>>(), (b, s), &Device::Cpu)?);
            dump.insert(format!("loss_{b}x{s}"), Tensor::from_vec(loss, n, &Device::Cpu)?);
        }
        results.push(r);
    }
    if let Some(path) = &a.dump {
        // The weights as the model got them (after the dtype cast), in f32.
        for (k, v) in made.lock().unwrap().iter() {
            dump.insert(k.clone(), v.to_dtype(DType::F32)?.to_device(&Device::Cpu)?);
        }
        let bytes = safetensors::tensor::serialize(&dump, None).map_err(|e| Error::file(path, e.to_string()))?;
        crate::util::write_bytes_atomic(path, &bytes)?;
        println!("dumped weights, ids and losses of {} shapes to {}", shapes.len(), path.display());
    }
    Ok(results)
}

/// Per-token loss differences of `got` against `want` (same length): the largest relative
/// one, its 99.9th percentile (nearest rank: the bulk beside the worst token; bf16 against
/// f32 in docs/gpu.md, "bf16 against f32"), the largest and the mean absolute one. Relative
/// to |want| (at least 1e-6); a NaN counts as infinitely far.
#[derive(Debug, Clone, Copy, PartialEq)]
struct DiffStats {
    max_rel: f64,
    p999_rel: f64,
    max_abs: f64,
    mean_abs: f64,
}

fn diff_stats(got: &[f32], want: &[f32]) -> DiffStats {
    let (abs, mut rel): (Vec<f64>, Vec<f64>) = got
        .iter()
        .zip(want)
        .map(|(&g, &w)| {
            let d = (g as f64 - w as f64).abs();
            if d.is_nan() { (f64::INFINITY, f64::INFINITY) } else { (d, d / (w as f64).abs().max(1e-6)) }
        })
        .unzip();
    rel.sort_by(f64::total_cmp);
    DiffStats {
        max_rel: rel.last().copied().unwrap_or(0.0),
        p999_rel: rel.get((rel.len() * 999).div_ceil(1000).saturating_sub(1)).copied().unwrap_or(0.0),
        max_abs: abs.iter().copied().fold(0.0, f64::max),
        mean_abs: abs.iter().sum::<f64>() / abs.len().max(1) as f64,
    }
}

/// `--check-against`: the dump's weights and ids through this build's model on `device` in
/// `dtype`; every shape's per-token losses against the dumped ones (the acceptance check of
/// issue 7: bf16 on the GPU against f32 on the CPU, relative 1e-2).
fn check_against_dump(cfg: &ModelConfig, path: &std::path::Path, dtype: DType, device: &Device, tol: f64) -> Result<()> {
    let bad = |m: String| Error::file(path, m);
    let tensors = candle_core::safetensors::load(path, &Device::Cpu).map_err(|e| bad(format!("not a `rho bench eval --dump` file: {e}")))?;
    let mut shapes: Vec<(usize, usize)> = tensors
        .keys()
        .filter_map(|k| k.strip_prefix("ids_"))
        .filter_map(|bs| bs.split_once('x').and_then(|(b, s)| Some((b.parse().ok()?, s.parse().ok()?))))
        .collect();
    shapes.sort();
    if shapes.is_empty() {
        return Err(bad("no ids_BxS tensors (not written by `rho bench eval --dump`?)".into()));
    }
    let vb = VarBuilder::from_tensors(tensors.clone(), dtype, device);
    let model = Transformer::new(cfg, vb, Mode::Eval).map_err(|e| bad(format!("its weights do not fit the model flags: {}", crate::error::candle_msg(&e))))?;
    let mut failed = 0;
    for (b, s) in shapes {
        let get = |k: String| tensors.get(&k).cloned().ok_or_else(|| bad(format!("no tensor `{k}`")));
        let ids = get(format!("ids_{b}x{s}"))?.to_dtype(DType::U32)?.to_device(device)?;
        let want = get(format!("loss_{b}x{s}"))?.to_dtype(DType::F32)?.flatten_all()?.to_vec1::<f32>()?;
        if ids.dims() != [b, s] || want.len() != b * (s - 1) {
            return Err(bad(format!("ids_{b}x{s} is {:?} and loss_{b}x{s} has {} values (want [{b}, {s}] and {})", ids.dims(), want.len(), b * (s - 1))));
        }
        let logits = model.forward(&ids)?;
        let targets = ids.narrow(1, 1, s - 1)?.contiguous()?;
        let got = token_loss_eval(&logits.narrow(1, 0, s - 1)?, &targets)?.flatten_all()?.to_device(&Device::Cpu)?.to_vec1::<f32>()?;
        let DiffStats { max_rel, p999_rel, max_abs, mean_abs } = diff_stats(&got, &want);
        let pass = max_rel <= tol;
        failed += usize::from(!pass);
        println!(
            "CHECK kind=loss-vs-dump shape={b}x{s} dtype={} device={} tokens={} max_rel={max_rel:.3e} p999_rel={p999_rel:.3e} max_abs={max_abs:.3e} mean_abs={mean_abs:.3e} tol={tol:.1e} {}",
            dtype.as_str(),
            if device.is_cpu() { "cpu" } else { "cuda" },
            got.len(),
            if pass { "PASS" } else { "FAIL" }
        );
    }
    if failed > 0 {
        return Err(Error::msg(format!("{failed} shape(s) of {} differ by more than --tol {tol}", path.display())));
    }
    Ok(())
}

/// `rho bench train`: training-step throughput with the flags, shapes and output of
/// `../shared/gpu/torch_train_peer.py` (TinyLlama-1.1B shape, random init). One step is
/// what `rho train` does per batch: forward (Mode::Train), per-token loss
/// (`train_token_loss`: the fused kernels on CUDA), with `--select K` the top ceil(K N)
/// tokens by excess loss over a random reference (as the peer), the masked mean, backward
/// and an AdamW update. tokens/s = b * s / median step time after `--warmup`.
#[derive(Debug, Args, Clone)]
pub struct BenchTrainArgs {
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    #[arg(long, default_value = "4x2048")]
    pub shapes: String,
    /// SLM ratio K in (0, 1]; 1 = plain CLM.
    #[arg(long, default_value_t = 1.0)]
    pub select: f64,
    #[arg(long, default_value_t = 3)]
    pub warmup: usize,
    #[arg(long, default_value_t = 7)]
    pub iters: usize,
    /// The peer's tiny config (2 layers, hidden 64, vocab 512) for smoke tests.
    #[arg(long)]
    pub tiny: bool,
    /// Weights' dtype: bf16 (the peer on CUDA) or f32 (the peer on CPU). Default: bf16 on CUDA, f32 on CPU.
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// `--dtype` of the training benchmarks: as given, else bf16 on CUDA (the training peer's)
/// and f32 on CPU.
fn train_dtype(flag: Option<&str>, device: &Device) -> Result<DType> {
    match flag {
        Some(d) => crate::cli::parse_dtype(d),
        None if device.is_cuda() => Ok(DType::BF16),
        None => Ok(DType::F32),
    }
}

pub fn run_bench_train(a: &BenchTrainArgs) -> Result<Vec<BenchResult>> {
    use crate::select::{select_mask, Select};
    use crate::train::optim::{AdamW, AdamWParams};
    use crate::train::params::ParamSource;
    let shapes = parse_shapes(&a.shapes)?;
    if a.iters == 0 {
        return Err(Error::flag("--iters", "must be positive"));
    }
    if !(a.select > 0.0 && a.select <= 1.0) {
        return Err(Error::flag("--select", format!("{} is not in (0, 1]", a.select)));
    }
    let device = crate::cli::parse_device(&a.device)?;
    let dtype = train_dtype(a.dtype.as_deref(), &device)?;
    let (layers, hidden, inter, heads, kv, vocab) = if a.tiny { (2, 64, 176, 4, 2, 512) } else { (22, 2048, 5632, 32, 4, 32000) };
    let max_s = shapes.iter().map(|s| s.1).max().unwrap();
    let cfg_json = serde_json::json!({
        "model_type": "llama", "vocab_size": vocab, "hidden_size": hidden, "intermediate_size": inter,
        "num_hidden_layers": layers, "num_attention_heads": heads, "num_key_value_heads": kv,
        "max_position_embeddings": max_s.max(2048), "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "hidden_act": "silu", "tie_word_embeddings": false,
    });
    let cfg = ModelConfig::from_value(&cfg_json, std::path::Path::new("<rho bench train>"))?;
    let src = ParamSource::new(None, a.seed, 0.02);
    let varmap = src.varmap.clone();
    let vb = VarBuilder::from_backend(Box::new(src), dtype, device.clone());
    let model = Transformer::new(&cfg, vb, Mode::Train).map_err(|e| Error::msg(crate::error::candle_msg(&e)))?;
    let vars = varmap.data().lock().unwrap().clone();
    let n_params: usize = vars.values().map(|v| v.elem_count()).sum();
    let mut opt = AdamW::new(vars, AdamWParams { weight_decay: 0.01, beta2: 0.999, ..AdamWParams::default() })?;
    let fused: Vec<_> = crate::cuda::Fused::ALL.iter().filter(|k| crate::cuda::fused_enabled(**k)).map(|k| k.name()).collect();
    println!(
        "model params={:.3}B dtype={dtype:?} select={} device={} fused={} pool={}",
        n_params as f64 / 1e9,
        a.select,
        a.device,
        if fused.is_empty() { "none".to_string() } else { fused.join(",") },
        crate::cuda::pool_name()
    );
    let mut rng = rand::rngs::StdRng::seed_from_u64(a.seed ^ 7);
    let mut results = Vec::new();
    for &(b, s) in &shapes {
        let ids: Vec<u32> = (0..b * s).map(|_| rng.random_range(0..vocab as u32)).collect();
        let input = Tensor::from_vec(ids, (b, s), &device)?;
        let targets = input.narrow(1, 1, s - 1)?.contiguous()?;
        let n = b * (s - 1);
        let reference: Vec<f32> = (0..n).map(|_| rng.random_range(0.0..10.0)).collect();
        let valid = vec![true; n];
        let mut times = Vec::new();
        let mut last = 0f64;
        for it in 0..a.warmup + a.iters {
            let t = Instant::now();
            let logits = model.forward(&input)?;
            let losses = crate::model::loss::train_token_loss(&logits.narrow(1, 0, s - 1)?, &targets)?;
            let loss = if a.select < 1.0 {
                let vals = losses.flatten_all()?.to_vec1::<f32>()?;
                let kept = select_mask(Select::Batch, &vals, Some(&reference), &valid, b, s - 1, a.select, 0)?;
                let n_kept = kept.iter().filter(|&&k| k).count();
                let mask = Tensor::from_vec(kept.iter().map(|&k| k as u8 as f32).collect::<Vec<f32>>(), (b, s - 1), &device)?;
                ((losses * mask)?.sum_all()? / n_kept.max(1) as f64)?
            } else {
                losses.mean_all()?
            };
            let grads = loss.backward()?;
            opt.step(&grads, 1e-4, 1.0)?;
            last = loss.to_dtype(DType::F64)?.to_scalar::<f64>()?; // synchronises
            if it >= a.warmup {
                times.push(t.elapsed().as_secs_f64());
            }
        }
        if !last.is_finite() {
            return Err(Error::msg(format!("non-finite training loss at shape {b}x{s}")));
        }
        let r = BenchResult::from_times(b, s, &times, last);
        let peak = if device.is_cpu() { peak_rss_gib() } else { f64::NAN };
        println!(
            "RESULT system=rho-train kind=train select={} shape={b}x{s} tokens_per_s={:.0} median_ms={:.2} min_ms={:.2} max_ms={:.2} loss={:.4} peak_mem_gib={:.2}",
            a.select, r.tokens_per_s, r.median_ms, r.min_ms, r.max_ms, last, peak
        );
        results.push(r);
    }
    Ok(results)
}

/// `rho bench optim`: one AdamW step and one global gradient norm over random parameters, rho's
/// fused in-place ops (`cuda::optim`; what `rho train` and `rho bench train` use) against
/// the same update composed of candle ops (`AdamW::step_composed`, one op per term), side by
/// side in one run. `eff_gb_s` counts the least traffic of a step, 7 passes (read w, g, m, v;
/// write w, m, v), for both, so that it compares with the device's copy bandwidth.
#[derive(Debug, Args, Clone)]
pub struct BenchOptimArgs {
    /// cpu or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
    /// Parameters in millions, split into 8 tensors like a transformer's mix of matrix sizes.
    #[arg(long, default_value_t = 100.0)]
    pub params: f64,
    /// Parameters' dtype (f32, bf16, f16). Default: bf16 on CUDA (the training peer), f32 on CPU.
    #[arg(long)]
    pub dtype: Option<String>,
    #[arg(long, default_value_t = 2)]
    pub warmup: usize,
    #[arg(long, default_value_t = 5)]
    pub iters: usize,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One timed optimizer implementation (median milliseconds).
#[derive(Debug, Clone)]
pub struct OptimResult {
    pub imp: &'static str,
    pub step_ms: f64,
    pub norm_ms: f64,
}

pub fn run_bench_optim(a: &BenchOptimArgs) -> Result<Vec<OptimResult>> {
    use crate::train::optim::{AdamW, AdamWParams};
    if a.iters == 0 {
        return Err(Error::flag("--iters", "must be positive"));
    }
    if !(a.params > 0.0 && a.params <= 1e5) {
        return Err(Error::flag("--params", format!("{} is not in (0, 100000] (millions)", a.params)));
    }
    let device = crate::cli::parse_device(&a.device)?;
    let dtype = train_dtype(a.dtype.as_deref(), &device)?;
    let n_total = (a.params * 1e6) as usize;
    // a transformer's mix: 4 large matrices, 2 medium, 2 small (relative sizes 8, 8, 8, 8, 3, 3, 1, 1)
    let weights = [8usize, 8, 8, 8, 3, 3, 1, 1];
    let mut vars = HashMap::new();
    let mut loss = Tensor::zeros((), DType::F32, &device)?;
    for (i, w) in weights.iter().enumerate() {
        let rows = (n_total * w / 40).div_ceil(64);
        let var = candle_core::Var::from_tensor(&Tensor::randn(0f32, 1.0, (rows, 64), &device)?.to_dtype(dtype)?)?;
        let r = Tensor::randn(0f32, 1e-3, (rows, 64), &device)?.to_dtype(dtype)?;
        loss = (loss + (var.as_tensor() * r)?.to_dtype(DType::F32)?.sum_all()?)?;
        vars.insert(format!("p{i}"), var);
    }
    let n_params: usize = vars.values().map(|v| v.elem_count()).sum();
    let grads = loss.backward()?; // each parameter's gradient: its random r
    println!("optimizer params={:.1}M tensors={} dtype={dtype:?} device={}", n_params as f64 / 1e6, weights.len(), a.device);
    let bytes = 7.0 * n_params as f64 * dtype.size_in_bytes() as f64;
    let mut results = Vec::new();
    for imp in ["fused", "composed"] {
        let mut opt = AdamW::new(vars.clone(), AdamWParams::default())?;
        let fused = imp == "fused";
        let (mut steps, mut norms) = (Vec::new(), Vec::new());
        for it in 0..a.warmup + a.iters {
            device.synchronize()?;
            let t = Instant::now();
            let g = if fused { opt.grad_norm_fused(&grads)? } else { opt.grad_norm_composed(&grads)? };
            let t_norm = t.elapsed().as_secs_f64();
            let t = Instant::now();
            if fused {
                opt.step_fused(&grads, 1e-4, 1.0 / g.max(1.0))?;
            } else {
                opt.step_composed(&grads, 1e-4, 1.0 / g.max(1.0))?;
            }
            device.synchronize()?;
            if it >= a.warmup {
                steps.push(t.elapsed().as_secs_f64());
                norms.push(t_norm);
            }
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(|x, y| x.partial_cmp(y).unwrap());
            v[v.len() / 2] * 1e3
        };
        let r = OptimResult { imp, step_ms: med(&mut steps), norm_ms: med(&mut norms) };
        println!(
            "RESULT system=rho-optim impl={imp} params={n_params} dtype={} step_median_ms={:.2} eff_gb_s={:.1} norm_median_ms={:.2}",
            dtype.as_str(),
            r.step_ms,
            bytes / r.step_ms / 1e6,
            r.norm_ms
        );
        results.push(r);
    }
    println!(
        "RESULT system=rho-optim ratio step_composed_over_fused={:.2} norm_composed_over_fused={:.2}",
        results[1].step_ms / results[0].step_ms,
        results[1].norm_ms / results[0].norm_ms
    );
    Ok(results)
}

#[derive(Debug, Args, Clone)]
pub struct BenchLoadArgs {
    /// Checkpoint folders, each loaded as `rho eval` loads it (`Checkpoint::load`: config,
    /// weight files found and indexed, every tensor converted, model built).
    #[arg(long, num_args = 1.., required = true)]
    pub checkpoints: Vec<PathBuf>,
    /// Timed loads of each checkpoint, after one untimed load.
    #[arg(long, default_value_t = 5)]
    pub repeat: usize,
    /// The weights' dtype once loaded: f32 (rho eval on the CPU), f16 or bf16.
    #[arg(long, default_value = "f32")]
    pub dtype: String,
}

/// One checkpoint's load times in seconds.
#[derive(Debug, Clone)]
pub struct LoadResult {
    pub checkpoint: PathBuf,
    pub format: &'static str,
    pub runs: Vec<f64>,
}

/// `rho bench load`: the time `rho eval` takes to load each checkpoint onto the CPU.
/// Prints `RESULT system=rho-load checkpoint=... format=... file_mb=... median_s=... min_s=...`.
pub fn run_bench_load(a: &BenchLoadArgs) -> Result<Vec<LoadResult>> {
    use crate::model::{weights::weight_files, Checkpoint};
    if a.repeat == 0 {
        return Err(Error::flag("--repeat", "must be positive"));
    }
    let dtype = match a.dtype.as_str() {
        "f32" => DType::F32,
        "f16" => DType::F16,
        "bf16" => DType::BF16,
        other => return Err(Error::flag("--dtype", format!("`{other}`: f32, f16 or bf16"))),
    };
    let mut out = Vec::new();
    for dir in &a.checkpoints {
        let files = weight_files(dir)?;
        let format = if files[0].extension().is_some_and(|x| x == "safetensors") { "safetensors" } else { "pickle" };
        let bytes: u64 = files.iter().map(|f| std::fs::metadata(f).map(|m| m.len()).unwrap_or(0)).sum();
        let mut runs = Vec::new();
        for i in 0..=a.repeat {
            let t = Instant::now();
            let model = Checkpoint::open(dir)?.load(dtype, &Device::Cpu, Mode::Eval)?;
            let dt = t.elapsed().as_secs_f64();
            drop(model);
            if i > 0 {
                runs.push(dt);
            }
        }
        let mut sorted = runs.clone();
        sorted.sort_by(|x, y| x.partial_cmp(y).unwrap());
        println!(
            "RESULT system=rho-load checkpoint={} format={format} files={} file_mb={:.1} dtype={} median_s={:.4} min_s={:.4} runs={}",
            dir.display(),
            files.len(),
            bytes as f64 / 1e6,
            a.dtype,
            sorted[sorted.len() / 2],
            sorted[0],
            runs.iter().map(|r| format!("{r:.4}")).collect::<Vec<_>>().join(",")
        );
        out.push(LoadResult { checkpoint: dir.clone(), format, runs });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn diff_stats_of_hand_made_losses() {
        // 2000 tokens of loss 10: 1997 off by 0.01, one by 0.05, one by 0.08, one by 0.1
        let want = vec![10f32; 2000];
        let mut got: Vec<f32> = want.iter().map(|w| w + 0.01).collect();
        (got[7], got[500], got[1999]) = (10.05, 9.92, 10.1);
        let st = diff_stats(&got, &want);
        let close = |a: f64, b: f64| (a - b).abs() < 1e-6;
        assert!(close(st.max_rel, 0.01) && close(st.max_abs, 0.1), "{st:?}");
        // nearest rank 1998 of 2000: the third worst
        assert!(close(st.p999_rel, 0.005), "{st:?}");
        assert!(close(st.mean_abs, (1997.0 * 0.01 + 0.05 + 0.08 + 0.1) / 2000.0), "{st:?}");
        // a NaN is the worst there is
        got[3] = f32::NAN;
        assert_eq!(diff_stats(&got, &want).max_rel, f64::INFINITY);
        assert_eq!(diff_stats(&[], &[]), DiffStats { max_rel: 0.0, p999_rel: 0.0, max_abs: 0.0, mean_abs: 0.0 });
    }
}
