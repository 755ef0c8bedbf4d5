//! One readable training loop: CLM, or Selective Language Modeling (Rho-1 SLM).
//!
//! Per step: take the step's batch of packed windows, run the model, compute the
//! per-token losses, (SLM) subtract the reference losses and keep the top k% of
//! tokens by excess loss, average the loss over the kept tokens, back-propagate,
//! clip, AdamW. Checkpoints every `save_every` steps, at the end, and on Ctrl-C.
pub mod checkpoint;
pub mod config;
pub mod optim;
pub mod params;
pub mod reference;
pub mod run_dir;
pub mod stream;

pub use config::{TrainConfig, TrainMode};

use crate::data::Tok;
use crate::error::{Error, Result, WithPath};
use crate::model::{loss::token_loss_eval, loss::train_token_loss, Checkpoint, Mode, ModelConfig, Transformer, Weights};
use crate::select::{self, Select};
use crate::util;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use checkpoint::TrainerState;
use optim::{lr_at, AdamW};
use params::ParamSource;
use polars::prelude::*;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Instant;
use stream::Stream;

/// Set by Ctrl-C: the loop saves a checkpoint and returns.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// One line of `metrics.jsonl`.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StepMetrics {
    pub step: u64,
    /// Mean loss over all valid tokens of the batch.
    pub loss_all: f64,
    /// Mean loss over the kept tokens (the training objective).
    pub loss_kept: f64,
    /// Kept tokens / valid tokens.
    pub kept_frac: f64,
    /// Mean excess loss (current - reference) over valid tokens, when a reference exists.
    pub excess_mean: Option<f64>,
    pub lr: f64,
    pub grad_norm: f64,
    /// Valid target tokens per second of this step.
    pub tokens_per_s: f64,
    pub tokens_seen: u64,
}

/// What a training run did.
#[derive(Debug, Clone)]
pub struct TrainSummary {
    pub last_step: u64,
    pub interrupted: bool,
    pub checkpoints: Vec<PathBuf>,
    pub seconds: f64,
}

/// Where the reference losses of a batch come from.
enum Reference {
    None,
    /// Precomputed, one per stream row.
    Scores(Vec<f32>),
    /// A reference model run on the same batch.
    Model(Transformer),
}

/// Run (or continue, with `resume`) a training run. A run already in `cfg.out` is refused
/// unless resumed (see [`run_dir`]).
pub fn run_train(cfg: &TrainConfig, resume: Option<&Path>) -> Result<TrainSummary> {
    run_train_with(cfg, resume, false, None)
}

/// [`run_train`] that also stops (saving a checkpoint, as on Ctrl-C) once `cancel` is set:
/// the TUI cancels one of several runs this way.
pub fn run_train_cancellable(cfg: &TrainConfig, resume: Option<&Path>, cancel: Option<&AtomicBool>) -> Result<TrainSummary> {
    run_train_with(cfg, resume, false, cancel)
}

/// [`run_train_cancellable`]; with `force` (`rho train --force`), a run already in `cfg.out`
/// is replaced (said, and removed before the first step) instead of refused.
pub fn run_train_with(cfg: &TrainConfig, resume: Option<&Path>, force: bool, cancel: Option<&AtomicBool>) -> Result<TrainSummary> {
    let t_start = Instant::now();
    cfg.validate()?;
    // The run folder: its run lock held to the end of the run; a run in it kept unless resumed or replaced.
    let mut run_dir = run_dir::RunDir::open(&cfg.out, resume.is_some(), force)?;
    let device = crate::cli::parse_device(&cfg.device)?;

    // Where the weights come from: a checkpoint to resume, --init, or a fresh config.
    let (state, init_dir): (Option<TrainerState>, Option<PathBuf>) = match resume {
        Some(r) => {
            let dir = checkpoint::resolve_resume(r)?;
            (Some(checkpoint::load_state(&dir)?), Some(dir))
        }
        None => (None, cfg.init.clone()),
    };
    let (model_cfg, config_json, weights) = match &init_dir {
        Some(dir) => {
            let ck = Checkpoint::open(dir)?;
            let p = dir.join("config.json");
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).with_path(&p)?).with_path(&p)?;
            (ck.config, json, Some(Weights::open(dir)?))
        }
        None => {
            let p = cfg.model_config.as_ref().expect("validated");
            let json: serde_json::Value = serde_json::from_slice(&std::fs::read(p).with_path(p)?).with_path(p)?;
            (ModelConfig::from_value(&json, p)?, json, None)
        }
    };
    let tok_path = match (&cfg.tokenizer, &init_dir) {
        (Some(t), _) => t.clone(),
        (None, Some(d)) => d.join("tokenizer.json"),
        (None, None) => return Err(Error::flag("--tokenizer", "needed when training from --model-config")),
    };
    let tok = Tok::from_file(&tok_path)?;
    let seq_len = cfg.seq_len.unwrap_or(model_cfg.context_len().min(1024));
    if seq_len > model_cfg.context_len() {
        return Err(Error::flag("--seq-len", format!("{seq_len} is longer than the model's context of {}", model_cfg.context_len())));
    }
    let stream = Stream::build(&cfg.data, &cfg.text_field, &tok, tok.eos_id(model_cfg.eos_token_id), seq_len, model_cfg.vocab_size)?;
    if let Some(st) = &state {
        if st.stream_fingerprint != stream.fingerprint {
            return Err(Error::file(
                &cfg.data,
                "differs from the data, tokenizer or seq-len the run was started with (its stream fingerprint in \
                 trainer_state.json): cannot resume on it; start a new run (--init the checkpoint) to train on other data",
            ));
        }
    }
    let batch_size = (cfg.batch_tokens / seq_len).max(1);
    // A batch must fit in memory before anything is allocated for it: its token buffers
    // (ids, targets, rows: 16 bytes a token) anywhere, its logits (f32) on the CPU.
    let batch_tok = batch_size as u128 * seq_len as u128;
    crate::limits::check_batch_memory("--batch-tokens", cfg.batch_tokens as u128, batch_tok, 16, "its token buffers")?;
    if device.is_cpu() {
        let what = format!("its logits (vocabulary {}, f32)", model_cfg.vocab_size);
        crate::limits::check_batch_memory("--batch-tokens", cfg.batch_tokens as u128, batch_tok, 4 * model_cfg.vocab_size as u128, &what)?;
    }

    // Reference losses (SLM by excess loss).
    let needs_ref = cfg.mode == TrainMode::Slm && matches!(cfg.select, Select::Batch | Select::Sequence);
    let reference = match (&cfg.ref_scores, &cfg.reference) {
        (Some(p), _) => Reference::Scores(reference::load_ref_scores(p, &stream)?),
        (None, Some(dir)) => {
            let ck = Checkpoint::open(dir)?;
            reference::check_compatible(&ck, &stream)?;
            // on a GPU in the run's compute dtype (rho's kernels); f32 otherwise
            let dt = if device.is_cuda() { cfg.compute_dtype()? } else { DType::F32 };
            Reference::Model(ck.load(dt, &device, Mode::Eval)?)
        }
        (None, None) if needs_ref => {
            return Err(Error::flag("--reference", "--mode slm needs reference losses: give --reference CKPT or --ref-scores FILE (or --select random|loss)"))
        }
        _ => Reference::None,
    };

    // The model: Vars registered in a VarMap, loaded or freshly initialised.
    let src = ParamSource::new(weights, cfg.seed, cfg.init_std);
    let varmap = src.varmap.clone();
    let vb = VarBuilder::from_backend(Box::new(src), DType::F32, device.clone());
    let model = Transformer::new(&model_cfg, vb, Mode::Train).map_err(|e| Error::msg(crate::error::candle_msg(&e)))?;
    let mut opt = AdamW::new(varmap.data().lock().unwrap().clone(), cfg.adamw())?;
    // Mixed precision: the Vars (and AdamW) stay f32; each step's model casts them.
    let compute = cfg.compute_dtype()?;
    if compute != DType::F32 && device.is_cpu() && !cfg.quiet {
        eprintln!("warning: --dtype {} on CPU accumulates in low precision; f32 is recommended there", cfg.dtype);
    }
    let step_model = || -> Result<Transformer> {
        let vb = VarBuilder::from_backend(Box::new(params::CastView(varmap.clone())), compute, device.clone());
        Transformer::new(&model_cfg, vb, Mode::Train).map_err(|e| Error::msg(crate::error::candle_msg(&e)))
    };
    let mut step = 0u64;
    let mut tokens_seen = 0u64;
    if let (Some(st), Some(dir)) = (&state, &init_dir) {
        let moments = checkpoint::read_safetensors(&dir.join(checkpoint::OPTIMIZER), &device)?;
        for s in &mut opt.slots {
            let get = |k: String| {
                moments.get(&k).cloned().ok_or_else(|| Error::file(dir.join(checkpoint::OPTIMIZER), format!("no `{k}`")))
            };
            s.m = get(format!("m.{}", s.name))?;
            s.v = get(format!("v.{}", s.name))?;
        }
        opt.t = st.step;
        step = st.step;
        tokens_seen = st.tokens_seen;
    }

    // Output folder, metrics (trimmed to the resumed step), Ctrl-C handler.
    std::fs::create_dir_all(&cfg.out).with_path(&cfg.out)?;
    run_dir.start_over(cfg.quiet)?;
    checkpoint::remove_stale(&cfg.out);
    let metrics_path = cfg.out.join("metrics.jsonl");
    trim_metrics(&metrics_path, step)?;
    // appended to in place (its lines are the run's record so far), never through a link
    let mut metrics = {
        use std::os::unix::fs::OpenOptionsExt;
        std::fs::OpenOptions::new().create(true).append(true).custom_flags(libc::O_NOFOLLOW).open(&metrics_path).with_path(&metrics_path)?
    };
    INTERRUPTED.store(false, Ordering::SeqCst);
    let _ = ctrlc::set_handler(|| INTERRUPTED.store(true, Ordering::SeqCst));
    if !cfg.quiet {
        eprintln!(
            "rho train: {} {} from {}, {} windows of {seq_len} tokens, batch {batch_size} x {seq_len}, steps {}..{}",
            cfg.mode,
            if cfg.mode == TrainMode::Slm { format!("({} ratio {})", cfg.select, cfg.ratio) } else { String::new() },
            init_dir.as_ref().map(|d| d.display().to_string()).unwrap_or_else(|| "random init".into()),
            stream.n_windows(),
            step + 1,
            cfg.steps
        );
    }

    let mut summary = TrainSummary { last_step: step, interrupted: false, checkpoints: vec![], seconds: 0.0 };
    let save = |step: u64, tokens_seen: u64, opt: &AdamW, summary: &mut TrainSummary| -> Result<()> {
        let dir = checkpoint::step_dir(&cfg.out, step);
        let params = named_params(&varmap);
        let st = TrainerState { step, config: cfg.clone(), stream_fingerprint: stream.fingerprint.clone(), tokens_seen };
        checkpoint::save(&dir, &config_json, &tok_path, &params, opt, &st)?;
        summary.checkpoints.push(dir);
        Ok(())
    };

    while step < cfg.steps {
        step += 1;
        let t = Instant::now();
        let windows = stream.batch_windows(step, batch_size, cfg.seed);
        let batch = Batch::new(&stream, &windows, &device)?;
        let cast;
        let m = if compute == DType::F32 {
            &model
        } else {
            cast = step_model()?;
            &cast
        };
        let logits = m.forward(&batch.input)?;
        let losses = train_token_loss(&logits.narrow(1, 0, batch.s - 1)?, &batch.targets)?; // [b, s-1]
        let loss_vals = losses.flatten_all()?.to_vec1::<f32>()?;
        // A diverged step stops the run before it touches the weights, the metrics or a checkpoint.
        let diverged = |what: &str, v: f64| {
            let last = summary.checkpoints.last().or(init_dir.as_ref().filter(|_| state.is_some()));
            Error::msg(format!(
                "step {step}: the {what} is {v}: training diverged; stopped before this step changed the weights, \
                 nothing of it was saved ({}); lower --lr (now {}), raise --warmup, or check the data",
                match last {
                    Some(d) => format!("the last checkpoint is {}", d.display()),
                    None => "no checkpoint was written yet".into(),
                },
                cfg.lr
            ))
        };
        if let Some(i) = (0..loss_vals.len()).find(|&i| batch.valid[i] && !loss_vals[i].is_finite()) {
            return Err(diverged("loss", loss_vals[i] as f64));
        }
        let ref_vals = batch.reference(&reference)?;
        let kept = match cfg.mode {
            TrainMode::Clm => batch.valid.clone(),
            TrainMode::Slm => select::select_mask(
                cfg.select,
                &loss_vals,
                ref_vals.as_deref(),
                &batch.valid,
                batch.b,
                batch.s - 1,
                cfg.ratio,
                step_seed(cfg.seed, step),
            )?,
        };
        let stats = select::stats(&loss_vals, ref_vals.as_deref(), &batch.valid, &kept);
        let mask = Tensor::from_vec(kept.iter().map(|&k| k as u8 as f32).collect::<Vec<f32>>(), (batch.b, batch.s - 1), &device)?;
        let loss = ((losses * mask)?.sum_all()? / stats.n_kept.max(1) as f64)?;
        let grads = loss.backward()?;
        let grad_norm = opt.grad_norm(&grads)?;
        if !grad_norm.is_finite() {
            return Err(diverged("gradient norm", grad_norm));
        }
        let scale = if cfg.grad_clip > 0.0 && grad_norm > cfg.grad_clip { cfg.grad_clip / grad_norm } else { 1.0 };
        let lr = lr_at(step, cfg.steps, cfg.warmup, cfg.lr, cfg.min_lr());
        opt.step(&grads, lr, scale)?;
        tokens_seen += stats.n_valid as u64;

        let secs = t.elapsed().as_secs_f64();
        let m = StepMetrics {
            step,
            loss_all: stats.loss_all,
            loss_kept: stats.loss_kept,
            kept_frac: stats.n_kept as f64 / stats.n_valid.max(1) as f64,
            excess_mean: stats.mean_excess,
            lr,
            grad_norm,
            tokens_per_s: stats.n_valid as f64 / secs.max(1e-9),
            tokens_seen,
        };
        let line = serde_json::to_string(&m).map_err(|e| Error::msg(e.to_string()))?;
        writeln!(metrics, "{line}").with_path(&metrics_path)?;
        if !cfg.quiet && (step % cfg.log_every == 0 || step == cfg.steps) {
            let left = (cfg.steps - step) as f64 * secs;
            eprintln!(
                "step {step}/{}  loss {:.4}  kept {:.4} ({:.0}%)  lr {lr:.2e}  |g| {grad_norm:.2}  {:.0} tok/s  ETA {left:.0} s",
                cfg.steps,
                m.loss_all,
                m.loss_kept,
                100.0 * m.kept_frac,
                m.tokens_per_s
            );
        }
        if cfg.mask_every > 0 && step % cfg.mask_every == 0 {
            write_probe_mask(cfg, &model, &stream, &reference, batch_size, step, &device)?;
        }
        let interrupted = INTERRUPTED.load(Ordering::SeqCst) || cancel.is_some_and(|c| c.load(Ordering::SeqCst));
        if step % cfg.save_every == 0 || step == cfg.steps || interrupted {
            save(step, tokens_seen, &opt, &mut summary)?;
        }
        summary.last_step = step;
        if interrupted {
            if !cfg.quiet {
                eprintln!("rho train: interrupted; saved {}", checkpoint::step_dir(&cfg.out, step).display());
            }
            summary.interrupted = true;
            break;
        }
    }
    metrics.sync_all().with_path(&metrics_path)?;
    summary.seconds = t_start.elapsed().as_secs_f64();
    Ok(summary)
}

/// A batch of windows, right-padded to the longest.
struct Batch {
    b: usize,
    s: usize,
    /// [b, s] u32
    input: Tensor,
    /// [b, s-1] u32: input shifted by one.
    targets: Tensor,
    /// b * (s-1), row-major: false for padding.
    valid: Vec<bool>,
    /// Stream row of each target (usize::MAX for padding).
    rows: Vec<usize>,
}

impl Batch {
    fn new(stream: &Stream, windows: &[usize], dev: &Device) -> Result<Self> {
        let b = windows.len();
        let s = windows.iter().map(|&w| stream.units[w].tokens.len()).max().unwrap();
        let mut ids = vec![0u32; b * s];
        let mut valid = vec![false; b * (s - 1)];
        let mut rows = vec![usize::MAX; b * (s - 1)];
        for (r, &w) in windows.iter().enumerate() {
            let u = &stream.units[w];
            ids[r * s..r * s + u.tokens.len()].copy_from_slice(&u.tokens);
            for j in 1..u.tokens.len() {
                valid[r * (s - 1) + j - 1] = true;
                rows[r * (s - 1) + j - 1] = u.row_start + j - 1;
            }
        }
        let input = Tensor::from_vec(ids, (b, s), dev)?;
        let targets = input.narrow(1, 1, s - 1)?.contiguous()?;
        Ok(Batch { b, s, input, targets, valid, rows })
    }

    /// Reference losses for the batch's targets (0 for padding), if there is a reference.
    fn reference(&self, r: &Reference) -> Result<Option<Vec<f32>>> {
        Ok(match r {
            Reference::None => None,
            Reference::Scores(v) => Some(self.rows.iter().map(|&i| if i == usize::MAX { 0.0 } else { v[i] }).collect()),
            Reference::Model(m) => {
                let logits = m.forward(&self.input)?;
                let l = crate::model::loss::token_loss_eval(&logits.narrow(1, 0, self.s - 1)?, &self.targets)?;
                let l = l.flatten_all()?.to_vec1::<f32>()?;
                Some(l.iter().zip(&self.valid).map(|(&x, &v)| if v { x } else { 0.0 }).collect())
            }
        })
    }
}

/// The per-step seed of random selection.
fn step_seed(seed: u64, step: u64) -> u64 {
    seed.wrapping_mul(0x9E37_79B9_7F4A_7C15).wrapping_add(step)
}

/// Model parameters with transformers' names, sorted.
fn named_params(varmap: &candle_nn::VarMap) -> Vec<(String, Tensor)> {
    let data = varmap.data().lock().unwrap();
    let mut v: Vec<(String, Tensor)> = data.iter().map(|(k, var)| (k.clone(), var.as_tensor().clone())).collect();
    v.sort_by(|a, b| a.0.cmp(&b.0));
    v
}

/// Keep only the metrics of steps <= `step` (a resumed run rewrites what follows).
fn trim_metrics(path: &Path, step: u64) -> Result<()> {
    if !path.exists() {
        return Ok(());
    }
    let text = std::fs::read_to_string(path).with_path(path)?;
    let kept: Vec<&str> = text
        .lines()
        .filter(|l| serde_json::from_str::<StepMetrics>(l).map(|m| m.step <= step).unwrap_or(false))
        .collect();
    let mut out = kept.join("\n");
    if !out.is_empty() {
        out.push('\n');
    }
    util::write_bytes_atomic(path, out.as_bytes())
}

/// Windows of probe batch `group` of `n_groups`: `batch_size` windows spread evenly
/// over the whole stream (group g takes every n_groups-th of the evenly spaced
/// windows, starting at g), so a probe sees every part of the data.
pub fn probe_windows(n_windows: usize, batch_size: usize, group: usize, n_groups: usize) -> Vec<usize> {
    let total = (batch_size * n_groups).min(n_windows).max(1);
    let mut w: Vec<usize> = (0..batch_size).map(|i| group + n_groups * i).filter(|&j| j < total).map(|j| j * n_windows / total).collect();
    w.dedup();
    w
}

/// The kept / not-kept mask the selection makes on a fixed probe batch (windows spread
/// over the stream, `probe_windows`), with the current model: `masks/step-<N>.parquet`.
fn write_probe_mask(
    cfg: &TrainConfig,
    model: &Transformer,
    stream: &Stream,
    reference: &Reference,
    batch_size: usize,
    step: u64,
    dev: &Device,
) -> Result<()> {
    let windows = probe_windows(stream.n_windows(), batch_size, 0, 1);
    let mut df = probe_frame(cfg, model, stream, reference, &windows, step, dev)?;
    util::write_parquet(&cfg.out.join("masks").join(format!("step-{step}.parquet")), &mut df)
}

/// The selection of a run replayed on `n_groups` probe batches with a saved model
/// (e.g. each checkpoint of a finished run): what the run's selection (`cfg.mode`,
/// `cfg.select`, `cfg.ratio`) keeps of batches spread over the whole stream at that
/// step. `ref_scores`: the reference losses of every stream row (`rho score`).
/// Columns as in `masks/step-N.parquet`.
pub fn replay_selection(
    cfg: &TrainConfig,
    model: &Transformer,
    stream: &Stream,
    ref_scores: Option<Vec<f32>>,
    step: u64,
    n_groups: usize,
) -> Result<DataFrame> {
    let batch_size = (cfg.batch_tokens / stream.seq_len).max(1);
    let reference = match ref_scores {
        Some(v) if v.len() == stream.rows.len() => Reference::Scores(v),
        Some(v) => return Err(Error::msg(format!("{} reference scores for a stream of {} rows", v.len(), stream.rows.len()))),
        None => Reference::None,
    };
    let mut out: Option<DataFrame> = None;
    for g in 0..n_groups {
        let windows = probe_windows(stream.n_windows(), batch_size, g, n_groups);
        let df = probe_frame(cfg, model, stream, &reference, &windows, step, model.device())?;
        out = Some(match out {
            None => df,
            Some(acc) => acc.vstack(&df)?,
        });
    }
    out.ok_or_else(|| Error::msg("no probe batch"))
}

fn probe_frame(
    cfg: &TrainConfig,
    model: &Transformer,
    stream: &Stream,
    reference: &Reference,
    windows: &[usize],
    step: u64,
    dev: &Device,
) -> Result<DataFrame> {
    let batch = Batch::new(stream, windows, dev)?;
    let logits = model.forward(&batch.input)?.detach();
    let loss = token_loss_eval(&logits.narrow(1, 0, batch.s - 1)?, &batch.targets)?.flatten_all()?.to_vec1::<f32>()?;
    let refl = batch.reference(reference)?;
    let kept = match cfg.mode {
        TrainMode::Clm => batch.valid.clone(),
        TrainMode::Slm => select::select_mask(cfg.select, &loss, refl.as_deref(), &batch.valid, batch.b, batch.s - 1, cfg.ratio, step_seed(cfg.seed, step))?,
    };
    let idx: Vec<usize> = (0..batch.valid.len()).filter(|&i| batch.valid[i]).collect();
    let rows: Vec<usize> = idx.iter().map(|&i| batch.rows[i]).collect();
    Ok(DataFrame::new(vec![
        Column::new("step".into(), vec![step as i64; idx.len()]),
        Column::new("seq".into(), rows.iter().map(|&r| stream.rows.seq[r]).collect::<Vec<u32>>()),
        Column::new("pos".into(), rows.iter().map(|&r| stream.rows.pos[r]).collect::<Vec<u32>>()),
        Column::new("doc".into(), rows.iter().map(|&r| stream.rows.doc[r]).collect::<Vec<u32>>()),
        Column::new("token_id".into(), rows.iter().map(|&r| stream.rows.token_id[r]).collect::<Vec<u32>>()),
        Column::new("loss".into(), idx.iter().map(|&i| loss[i]).collect::<Vec<f32>>()),
        Column::new("ref_loss".into(), idx.iter().map(|&i| refl.as_ref().map(|r| r[i])).collect::<Vec<Option<f32>>>()),
        Column::new("kept".into(), idx.iter().map(|&i| kept[i]).collect::<Vec<bool>>()),
    ])?)
}

#[cfg(test)]
mod probe_tests {
    use super::probe_windows;

    #[test]
    fn probe_windows_spread_over_the_stream() {
        assert_eq!(probe_windows(100, 4, 0, 1), vec![0, 25, 50, 75]);
        // Two groups interleave and together cover the stream evenly, without overlap.
        let (a, b) = (probe_windows(100, 4, 0, 2), probe_windows(100, 4, 1, 2));
        assert_eq!(a, vec![0, 25, 50, 75]);
        assert_eq!(b, vec![12, 37, 62, 87]);
        // Fewer windows than a batch: each once.
        assert_eq!(probe_windows(3, 8, 0, 1), vec![0, 1, 2]);
        assert_eq!(probe_windows(3, 8, 1, 2), vec![1]);
    }
}
