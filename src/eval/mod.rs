//! Checkpoints x validation set -> per-token losses Parquet (resumable).
//!
//! `run_eval` tokenizes the data once, writes `tokens.parquet`, then scores each
//! checkpoint into `losses/<name>.parquet` (temporary name, renamed when complete)
//! and records it in `study.json`. A re-run skips checkpoints already scored with
//! the same fingerprint (data, tokenizer, settings).
pub mod devices;
pub mod order;
pub mod plan;
pub mod shard;
pub mod status;
pub mod study;

use crate::data::{read_documents, Tok};
use crate::error::{Error, Result, WithPath};
use crate::lock::{Lock, Try};
use crate::model::{loss::token_loss_eval, Checkpoint, Mode, Transformer};
use crate::util;
use candle_core::{DType, Device, Tensor};
use plan::{Rows, Unit};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;
pub use shard::Shard;
use study::{CheckpointEntry, Manifest, PartEntry};

#[derive(Debug, Clone)]
pub struct EvalOptions {
    /// One folder holding checkpoint subfolders, or checkpoint folders.
    pub checkpoints: Vec<PathBuf>,
    pub data: PathBuf,
    pub study: PathBuf,
    pub tokenizer: Option<PathBuf>,
    pub text_field: String,
    pub device: Device,
    pub dtype: DType,
    /// Upper bound on padded tokens per forward pass.
    pub batch_tokens: usize,
    pub max_tokens: Option<usize>,
    pub pack: bool,
    /// Override of the scoring context (at most the model's).
    pub context: Option<usize>,
    pub force: bool,
    pub quiet: bool,
    /// Evaluate only this slice of the rows (`--shard I/N`), into hive-style parts.
    pub shard: Option<Shard>,
}

impl EvalOptions {
    /// The defaults of `rho eval`: the checkpoints' own tokenizer, field `text`,
    /// CPU, f32, 4096 tokens per forward pass, documents scored alone, no limit.
    pub fn new(checkpoints: Vec<PathBuf>, data: PathBuf, study: PathBuf) -> Self {
        EvalOptions {
            checkpoints,
            data,
            study,
            tokenizer: None,
            text_field: "text".into(),
            device: Device::Cpu,
            dtype: DType::F32,
            batch_tokens: 4096,
            max_tokens: None,
            pack: false,
            context: None,
            force: false,
            quiet: false,
            shard: None,
        }
    }
}

/// What an eval run did.
#[derive(Debug, Clone, Default)]
pub struct EvalReport {
    pub evaluated: Vec<String>,
    pub skipped: Vec<String>,
    pub n_tokens: usize,
    pub seconds: f64,
}

fn looks_like_checkpoint(dir: &Path) -> bool {
    ["config.json", "model.safetensors", "model.safetensors.index.json", "pytorch_model.bin"]
        .iter()
        .any(|f| dir.join(f).exists())
}

/// The checkpoints of `--checkpoints`, in training order, with their positions.
#[derive(Debug, Clone)]
pub struct Resolved {
    pub checkpoints: Vec<(PathBuf, order::Position)>,
    /// `true`: a folder of checkpoints, ordered by position; `false`: folders given one by one, in the order given.
    pub by_position: bool,
    /// Things to tell the user (an order given against the steps, an unreadable trainer_state.json).
    pub warnings: Vec<String>,
}

/// Resolve `--checkpoints`: a folder of checkpoint subfolders, put in training order by
/// [`order::order`] (an error listing what cannot be ordered, and how to give the order), or
/// checkpoint folders given one by one, kept in the order given (their positions parsed for
/// the record; an order against them is a warning, never a re-sort).
pub fn resolve_checkpoints(args: &[PathBuf]) -> Result<Resolved> {
    if args.is_empty() {
        return Err(Error::flag("--checkpoints", "give a folder of checkpoints or checkpoint folders"));
    }
    if args.len() == 1 && args[0].is_dir() && !looks_like_checkpoint(&args[0]) {
        let dir = &std::fs::canonicalize(&args[0]).map_err(|e| Error::io(&args[0], e))?;
        let mut subs: Vec<(String, PathBuf)> = std::fs::read_dir(dir)
            .map_err(|e| Error::io(dir, e))?
            .flatten()
            .map(|e| e.path())
            // rho's own temporaries (a checkpoint being written by `rho train`) are not checkpoints
            .filter(|p| !p.file_name().and_then(|n| n.to_str()).is_some_and(crate::temp::is_temp_name))
            .filter(|p| p.is_dir() && looks_like_checkpoint(p))
            .map(|p| (p.file_name().unwrap().to_string_lossy().into_owned(), p))
            .collect();
        if subs.is_empty() {
            return Err(Error::file(dir, "no checkpoints here: no subfolder holds a config.json or model.safetensors"));
        }
        subs.sort();
        let items: Vec<(String, order::Position)> =
            subs.iter().map(|(n, p)| order::position(p).map(|pos| (n.clone(), pos))).collect::<Result<_>>()?;
        let idx = order::order(&items).map_err(|problems| {
            let names: Vec<String> = items.iter().map(|i| i.0.clone()).collect();
            order::order_error(dir, &names, &problems)
        })?;
        let checkpoints = idx.into_iter().map(|i| (subs[i].1.clone(), items[i].1.clone())).collect();
        return Ok(Resolved { checkpoints, by_position: true, warnings: Vec::new() });
    }
    let mut warnings = Vec::new();
    let mut items: Vec<(String, order::Position)> = Vec::new();
    let mut canonical = Vec::with_capacity(args.len());
    for a in args {
        if !a.exists() {
            return Err(Error::file(a, "checkpoint folder does not exist"));
        }
        let a = &canonical_checkpoint(a)?;
        canonical.push(a.clone());
        let name = a.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
        // Listed one by one, the order is the user's: a bad trainer_state.json only loses the record.
        let pos = order::position(a).unwrap_or_else(|e| {
            warnings.push(format!("{e}; the step is read from the folder name"));
            order::parse_name(&name)
        });
        items.push((name, pos));
    }
    for (i, j) in order::contradictions(&items) {
        warnings.push(format!(
            "the checkpoints are given with {} ({}) before {} ({}), the other way round from their positions; \
             the order given is kept (the study, its categories and charts follow it)",
            items[i].0,
            order::brief(&items[i].1),
            items[j].0,
            order::brief(&items[j].1)
        ));
    }
    let checkpoints = canonical.into_iter().zip(items.into_iter().map(|i| i.1)).collect();
    Ok(Resolved { checkpoints, by_position: false, warnings })
}

/// A checkpoint folder given on the command line, as a canonical path: its parent resolved
/// (symlinks, `..`), its own name kept (a symlinked folder keeps the name it was given by);
/// a path that ends in `..` or `.` is resolved whole, so the checkpoint gets the folder's real
/// name (`some/dir/..` is `some`, never a checkpoint named `..`).
fn canonical_checkpoint(a: &Path) -> Result<PathBuf> {
    match (a.file_name(), a.parent()) {
        (Some(name), Some(parent)) => {
            let parent = if parent.as_os_str().is_empty() { Path::new(".") } else { parent };
            Ok(std::fs::canonicalize(parent).map_err(|e| Error::io(parent, e))?.join(name))
        }
        _ => std::fs::canonicalize(a).map_err(|e| Error::io(a, e)),
    }
}

/// The table `rho eval` prints before it starts: the order it will use.
pub fn order_table(r: &Resolved) -> String {
    let how = if r.by_position {
        "in training order (stage, step, then tokens seen; from trainer_state.json, else the folder name)"
    } else {
        "in the order given"
    };
    let names: Vec<String> = r.checkpoints.iter().map(|(d, _)| d.file_name().unwrap_or_default().to_string_lossy().into_owned()).collect();
    let w = names.iter().map(|n| n.chars().count()).max().unwrap_or(0);
    let iw = r.checkpoints.len().to_string().len();
    let mut out = format!("rho eval: {} checkpoints, {how}:\n", r.checkpoints.len());
    for (i, (n, (_, p))) in names.iter().zip(&r.checkpoints).enumerate() {
        out += &format!("  {:>iw$}  {n:<w$}  {}\n", i + 1, order::describe(p));
    }
    out
}

/// A series is scored with one tokenizer over one vocabulary: every checkpoint must have the
/// first one's `vocab_size`, and (`first_tokenizer`: the tokenizer.json used, when it is the
/// first checkpoint's) a tokenizer.json identical to it. A checkpoint without a tokenizer.json
/// is refused too (which tokenizer it was trained with is unknown): pass --tokenizer to
/// score the whole series with one.
pub fn check_series_vocabulary(ckpts: &[Checkpoint], first_tokenizer: Option<(&Path, &str)>) -> Result<()> {
    let Some(first) = ckpts.first() else { return Ok(()) };
    for c in &ckpts[1..] {
        if c.config.vocab_size != first.config.vocab_size {
            return Err(Error::file(
                c.dir.join("config.json"),
                format!(
                    "vocab_size is {}, but {} has {}: a series must share one vocabulary (its losses would not compare)",
                    c.config.vocab_size,
                    first.dir.join("config.json").display(),
                    first.config.vocab_size
                ),
            ));
        }
        if let Some((path, sha)) = first_tokenizer {
            let p = c.dir.join("tokenizer.json");
            if !p.exists() {
                return Err(Error::file(
                    &p,
                    format!(
                        "missing, while {} has one: a series must share one tokenizer; pass --tokenizer FILE to score \
                         every checkpoint with that one",
                        path.display()
                    ),
                ));
            }
            if util::sha256_file(&p)? != sha {
                return Err(Error::file(
                    &p,
                    format!("differs from {}: a series must share one tokenizer (or pass --tokenizer)", path.display()),
                ));
            }
        }
    }
    Ok(())
}

/// Run the evaluation. Already-evaluated checkpoints (same fingerprint) are skipped.
pub fn run_eval(opts: &EvalOptions) -> Result<EvalReport> {
    let t0 = Instant::now();
    let resolved = resolve_checkpoints(&opts.checkpoints)?;
    let ckpts: Vec<Checkpoint> = resolved.checkpoints.iter().map(|(d, _)| Checkpoint::open(d)).collect::<Result<_>>()?;
    let mut names = std::collections::HashSet::new();
    for c in &ckpts {
        // The name becomes a file name in the study (`losses/<name>.parquet`).
        study::check_name(&c.name()).map_err(|why| {
            Error::file(&c.dir, format!("cannot be evaluated into a study: its folder name {:?} {why}", c.name()))
        })?;
        if !names.insert(c.name()) {
            return Err(Error::file(&c.dir, format!("two checkpoints are named `{}`", c.name())));
        }
    }
    let positions: std::collections::HashMap<String, order::Position> =
        ckpts.iter().zip(&resolved.checkpoints).map(|(c, (_, p))| (c.name(), p.clone())).collect();
    if !opts.quiet {
        eprint!("{}", order_table(&resolved));
        for w in &resolved.warnings {
            eprintln!("warning: {w}");
        }
    }

    // Tokenizer: --tokenizer, else the first checkpoint's; the series must share it.
    let tok_path = match &opts.tokenizer {
        Some(p) => p.clone(),
        None => ckpts[0].dir.join("tokenizer.json"),
    };
    let tok = Tok::from_file(&tok_path)?;
    check_series_vocabulary(&ckpts, opts.tokenizer.is_none().then_some((tok_path.as_path(), tok.fingerprint.as_str())))?;

    // Context: the smallest of the series, or --context if smaller.
    let model_ctx = ckpts.iter().map(|c| c.config.context_len()).min().unwrap();
    let ctx = match opts.context {
        Some(c) if c < 2 => return Err(Error::flag("--context", "must be at least 2")),
        Some(c) if c > model_ctx => {
            return Err(Error::flag("--context", format!("{c} is longer than the models' context of {model_ctx}")))
        }
        Some(c) => c,
        None => model_ctx,
    };

    // Data -> rows and units.
    let docs = read_documents(&opts.data, &opts.text_field)?;
    let encs = tok.encode_all(&docs)?;
    let (rows, units) = if opts.pack {
        let eos = tok.eos_id(ckpts[0].config.eos_token_id).ok_or_else(|| {
            Error::flag("--pack", format!("needs an end-of-text token, and neither config.json nor {} names one", tok_path.display()))
        })?;
        plan::plan_packed(&encs, eos, ctx, opts.max_tokens)
    } else {
        plan::plan_documents(&encs, ctx, opts.max_tokens)
    };
    if rows.is_empty() {
        return Err(Error::file(&opts.data, "no token to score: every document is shorter than 2 tokens"));
    }
    if let Some(sh) = opts.shard {
        if sh.count as usize > rows.len() {
            return Err(Error::flag(
                "--shard",
                format!("`{sh}`: N = {} is more than the {} tokens to score: at most one shard per token", sh.count, rows.len()),
            ));
        }
    }
    check_forward_memory(&units, opts.batch_tokens, ckpts[0].config.vocab_size, &opts.device)?;
    let max_id = units.iter().flat_map(|u| u.tokens.iter()).copied().max().unwrap_or(0);
    for c in &ckpts {
        if max_id as usize >= c.config.vocab_size {
            return Err(Error::file(
                &tok_path,
                format!(
                    "produces token id {max_id}, beyond the vocabulary of {} ({} tokens): tokenizer and model do not match",
                    c.dir.join("config.json").display(),
                    c.config.vocab_size
                ),
            ));
        }
    }

    let settings = serde_json::json!({
        "data_sha256": util::sha256_file(&opts.data)?,
        "text_field": opts.text_field,
        "tokenizer_sha256": tok.fingerprint,
        "pack": opts.pack,
        "context": ctx,
        "max_tokens": opts.max_tokens,
        "dtype": format!("{:?}", opts.dtype).to_lowercase(),
    });
    let fingerprint = util::sha256_hex(settings.to_string().as_bytes());

    // The study folder. study.json changes only under the study lock (`crate::lock`): loaded,
    // changed and saved by one process at a time. A checkpoint is scored outside it, under its
    // claim (`losses/<name>.lock`), then published under it into study.json as it is by then.
    let study = &opts.study;
    let losses_dir = study.join(study::LOSSES_DIR);
    std::fs::create_dir_all(&losses_dir).map_err(|e| Error::io(&losses_dir, e))?;
    let study_lock = crate::lock::lock_study(study, opts.quiet)?;
    // rho's own temporaries of processes that are gone (never another's, never the user's).
    study::remove_stale(study);
    let mut manifest = Manifest::load_or_default(study)?;
    let vocab = ckpts[0].config.vocab_size;
    match manifest.vocab_size {
        Some(v) if v != vocab && manifest.fingerprint == fingerprint => {
            return Err(Error::file(
                Manifest::path(study),
                format!(
                    "the study's checkpoints have a vocabulary of {v} tokens, {} has {vocab}: a series must share one \
                     vocabulary (its losses would not compare); use another --study",
                    ckpts[0].dir.join("config.json").display()
                ),
            ))
        }
        _ => {}
    }
    if let Some(shard) = opts.shard {
        // Shards run concurrently: they never rewrite a study evaluated with other settings
        // and write study.json only to start the study.
        if !manifest.fingerprint.is_empty() && manifest.fingerprint != fingerprint {
            return Err(Error::file(
                Manifest::path(study),
                format!(
                    "this study was evaluated with other data, tokenizer or settings; --shard {shard} \
                     adds to a study, it does not start one over: use another --study (or start it over without --shard, with --force)"
                ),
            ));
        }
        if manifest.fingerprint.is_empty() {
            manifest.fingerprint = fingerprint.clone();
            manifest.data = opts.data.clone();
            manifest.settings = settings;
            manifest.vocab_size = Some(vocab);
            manifest.save(study)?;
        }
    } else {
        if !manifest.fingerprint.is_empty() && manifest.fingerprint != fingerprint {
            if !opts.force {
                return Err(Error::file(
                    Manifest::path(study),
                    "this study was evaluated with other data, tokenizer or settings; use another --study, or --force to start it over",
                ));
            }
            for c in &manifest.checkpoints {
                let _ = std::fs::remove_file(Manifest::losses_path(study, &c.name));
            }
            for sc in study::scan_sharded(study, "")? {
                let _ = std::fs::remove_dir_all(study::shard_dir(study, &sc.name));
            }
            // categorize's record first (readers then see no categorization, never a stale one)
            let _ = std::fs::remove_file(crate::dynamics::categories_path(study));
            let _ = std::fs::remove_file(study.join(study::TRAJECTORIES));
            manifest = Manifest::default();
        }
        manifest.fingerprint = fingerprint.clone();
        manifest.data = opts.data.clone();
        manifest.settings = settings;
        manifest.vocab_size = Some(vocab);
    }
    let tokens_path = study.join(study::TOKENS);
    if (opts.force && opts.shard.is_none()) || !tokens_path.exists() {
        write_tokens(&tokens_path, &rows, &tok)?;
    }
    // The study's order after this run: its checkpoints as recorded, this run's merged in
    // (by position when everything agrees, else this run's order for its own).
    let run_keys: Vec<(String, order::Key)> = ckpts.iter().map(|c| (c.name(), positions[&c.name()].key())).collect();
    if opts.shard.is_none() {
        manifest.arrange(&study_series(&manifest, &run_keys));
        manifest.save(study)?;
    }

    // What is left to do: a checkpoint is done when its whole losses file is listed
    // with this fingerprint, or (sharded) when every part is; a shard also when its own part is.
    let is_done = |manifest: &Manifest, sharded: &[study::ShardedCheckpoint], name: &str| {
        let whole_done = manifest.checkpoints.iter().any(|e| {
            e.name == name && e.fingerprint == fingerprint && e.shards.is_none() && Manifest::losses_path(study, &e.name).exists()
        });
        let parts_done = sharded.iter().any(|sc| sc.name == name && sc.is_complete() && !sc.done.is_empty());
        let my_part_done = opts.shard.is_some_and(|sh| {
            sharded.iter().any(|sc| sc.name == name && sc.done.iter().any(|p| p.shard == sh.index && p.shards == sh.count))
        });
        whole_done || parts_done || my_part_done
    };
    // Done by now (another process may have scored it since this run started).
    let done_now = |name: &str| -> Result<bool> {
        Ok(is_done(&Manifest::load_or_default(study)?, &study::scan_sharded(study, &fingerprint)?, name))
    };
    let sharded = study::scan_sharded(study, &fingerprint)?;
    let todo: Vec<&Checkpoint> = ckpts.iter().filter(|c| opts.force || !is_done(&manifest, &sharded, &c.name())).collect();
    // The claim of a done checkpoint left by a killed process (it died after publishing): removed when free.
    for c in ckpts.iter().filter(|c| !todo.iter().any(|t| t.name() == c.name())) {
        let p = claim_path(study, &c.name(), opts.shard);
        if std::fs::symlink_metadata(&p).is_ok() {
            drop(Lock::try_take(&p, true)?);
        }
    }
    drop(study_lock);
    // A shard scores its slice of the units, with rows counted from the slice's start.
    let (units, rows_range) = match opts.shard {
        None => (units, 0..rows.len()),
        Some(sh) => {
            let r = sh.rows(&units);
            let us = units[sh.units(&units)]
                .iter()
                .map(|u| Unit { row_start: u.row_start - r.start, ..u.clone() })
                .collect::<Vec<_>>();
            (us, r)
        }
    };
    let n_rows = rows_range.len();
    let mut report = EvalReport { n_tokens: n_rows, ..Default::default() };
    report.skipped =
        ckpts.iter().map(|c| c.name()).filter(|n| !todo.iter().any(|t| &t.name() == n)).collect();
    if !opts.quiet {
        let what = match opts.shard {
            None => format!("{} tokens to score each", rows.len()),
            Some(sh) => format!(
                "shard {sh}: rows {}..{} of {} ({n_rows} tokens to score each)",
                rows_range.start,
                rows_range.end,
                rows.len()
            ),
        };
        eprintln!(
            "rho eval: {} checkpoints ({} to do, {} already done), {} documents, {what}, context {ctx}",
            ckpts.len(),
            todo.len(),
            report.skipped.len(),
            docs.len(),
        );
    }
    let progress = Progress::new(opts.quiet, (todo.len() * n_rows) as u64);
    let shard_rows = opts.shard.map(|_| rows.slice(rows_range.clone()));
    let my_rows = shard_rows.as_ref().unwrap_or(&rows);
    // Score one checkpoint (its claim held), then publish it under the study lock.
    let score = |c: &Checkpoint, report: &mut EvalReport| -> Result<()> {
        let name = c.name();
        progress.set_message(&name);
        let t = Instant::now();
        let model = c.load(opts.dtype, &opts.device, Mode::Eval)?;
        let losses = score_units(&model, &units, n_rows, opts.batch_tokens, |n| progress.inc(n as u64))
            .map_err(|e| Error::file(&c.dir, format!("evaluation failed: {}", crate::error::candle_msg(&e))))?;
        let pos = &positions[&name];
        let step = pos.step.map(|s| s as i64);
        let loss_sum = losses.iter().map(|&x| x as f64).sum::<f64>();
        let mean_loss = loss_sum / losses.len().max(1) as f64;
        let _study_lock = crate::lock::lock_study(study, opts.quiet)?;
        let mut manifest = Manifest::load_or_default(study)?;
        if manifest.fingerprint != fingerprint {
            return Err(Error::file(
                Manifest::path(study),
                format!(
                    "the study was started over with other data, tokenizer or settings (rho eval --force) while \
                     `{name}` was evaluated: its losses are not recorded; run rho eval again"
                ),
            ));
        }
        match opts.shard {
            None => {
                let path = Manifest::losses_path(study, &name);
                let sha256 = write_losses(&path, &name, step, my_rows, &losses)?;
                let series = study_series(&manifest, &run_keys);
                manifest.checkpoints.retain(|e| e.name != name);
                manifest.checkpoints.push(CheckpointEntry {
                    name: name.clone(),
                    step,
                    tokens_seen: pos.tokens,
                    stage: pos.stage,
                    path: c.dir.clone(),
                    fingerprint: fingerprint.clone(),
                    n_tokens: n_rows as u64,
                    mean_loss,
                    shards: None,
                    sha256: Some(sha256),
                });
                manifest.arrange(&series);
                manifest.save(study)?;
            }
            Some(sh) => {
                // The part, then its record: the part counts as done only once the record exists.
                let sha256 = write_losses(&study::part_path(study, &name, sh, "parquet"), &name, step, my_rows, &losses)?;
                let at = ckpts.iter().position(|k| k.name() == name).unwrap_or(0);
                let part = PartEntry {
                    name: name.clone(),
                    step,
                    tokens_seen: pos.tokens,
                    stage: pos.stage,
                    order: Some(at as u32),
                    after: at.checked_sub(1).map(|i| ckpts[i].name()),
                    path: c.dir.clone(),
                    fingerprint: fingerprint.clone(),
                    shard: sh.index,
                    shards: sh.count,
                    row_start: rows_range.start as u64,
                    n_tokens: n_rows as u64,
                    loss_sum,
                    sha256: Some(sha256),
                };
                let rec = study::part_path(study, &name, sh, "json");
                let bytes = serde_json::to_vec_pretty(&part).map_err(|e| Error::msg(e.to_string()))?;
                util::write_bytes_atomic(&rec, &bytes)?;
            }
        }
        let secs = t.elapsed().as_secs_f64();
        progress.println(&format!(
            "  {name}: {n_rows} tokens in {secs:.2} s ({:.0} tokens/s), mean loss {mean_loss:.4}",
            n_rows as f64 / secs.max(1e-9)
        ));
        report.evaluated.push(name);
        Ok(())
    };
    // Claimed by another process: scored by it, unless it stops; this run waits for it last.
    let skip_done = |name: String, report: &mut EvalReport| {
        progress.inc(n_rows as u64);
        report.skipped.push(name);
    };
    let mut busy: Vec<(&Checkpoint, Option<crate::lock::Holder>)> = Vec::new();
    for c in todo {
        let name = c.name();
        match Lock::try_take(&claim_path(study, &name, opts.shard), true)? {
            Try::Taken(_claim) if !opts.force && done_now(&name)? => skip_done(name, &mut report),
            Try::Taken(_claim) => score(c, &mut report)?,
            Try::Busy(h) => busy.push((c, h)),
        }
    }
    for (c, h) in busy {
        let name = c.name();
        progress.println(&format!("  {name}: being evaluated by {}; waiting for it", crate::lock::describe(h.as_ref())));
        let _claim = Lock::take(&claim_path(study, &name, opts.shard), true, std::time::Duration::ZERO, |_| {})?;
        if !opts.force && done_now(&name)? {
            progress.println(&format!("  {name}: evaluated by the other process; skipped"));
            skip_done(name, &mut report);
        } else {
            score(c, &mut report)?;
        }
    }
    progress.finish();
    report.seconds = t0.elapsed().as_secs_f64();
    Ok(report)
}

/// Refuse a `--batch-tokens` whose largest forward pass over `units` ([`plan::batches`]) cannot
/// fit on the CPU: its logits (f32, `vocab` per token) must fit in the machine's memory (an
/// error naming the flag, not an abort in the allocator). On CUDA an allocation that fails
/// is an error already.
pub fn check_forward_memory(units: &[Unit], batch_tokens: usize, vocab: usize, device: &Device) -> Result<()> {
    if !device.is_cpu() {
        return Ok(());
    }
    let largest = plan::batches(units, batch_tokens)
        .iter()
        .map(|b| b.len() * b.iter().map(|&i| units[i].tokens.len()).max().unwrap_or(0))
        .max()
        .unwrap_or(0);
    crate::limits::check_batch_memory(
        "--batch-tokens",
        batch_tokens as u128,
        largest as u128,
        4 * vocab as u128,
        &format!("its logits (vocabulary {vocab}, f32)"),
    )
}

/// Score every unit with `model`; returns one f32 loss per row.
/// `on_progress` gets the number of rows finished after each batch.
pub fn score_units(
    model: &Transformer,
    units: &[Unit],
    n_rows: usize,
    batch_tokens: usize,
    mut on_progress: impl FnMut(usize),
) -> candle_core::Result<Vec<f32>> {
    let mut out = vec![f32::NAN; n_rows];
    let dev = model.device().clone();
    for batch in plan::batches(units, batch_tokens) {
        let len = batch.iter().map(|&i| units[i].tokens.len()).max().unwrap();
        let mut ids = vec![0u32; batch.len() * len];
        for (r, &i) in batch.iter().enumerate() {
            ids[r * len..r * len + units[i].tokens.len()].copy_from_slice(&units[i].tokens);
        }
        let input = Tensor::from_vec(ids, (batch.len(), len), &dev)?;
        let logits = model.forward(&input)?; // [b, len, vocab]
        let targets = input.narrow(1, 1, len - 1)?;
        let loss = token_loss_eval(&logits.narrow(1, 0, len - 1)?, &targets)?; // [b, len-1]
        let loss = loss.to_device(&Device::Cpu)?.to_vec2::<f32>()?;
        let mut done = 0;
        for (r, &i) in batch.iter().enumerate() {
            let u = &units[i];
            for j in u.score_from..u.tokens.len() {
                out[u.row_start + j - u.score_from] = loss[r][j - 1];
            }
            done += u.n_scored();
        }
        on_progress(done);
    }
    if let Some(i) = out.iter().position(|x| !x.is_finite()) {
        candle_core::bail!("loss of row {i} is not finite ({})", out[i]);
    }
    Ok(out)
}

fn write_tokens(path: &Path, rows: &Rows, tok: &Tok) -> Result<()> {
    let text: Vec<String> = rows.token_id.iter().map(|&id| tok.token_text(id)).collect();
    write_tokens_table(path, rows, text)
}

/// `tokens.parquet`: the scored rows with each token's text (one per row).
pub fn write_tokens_table<S: AsRef<str>>(path: &Path, rows: &Rows, text: Vec<S>) -> Result<()> {
    let text: Vec<&str> = text.iter().map(|s| s.as_ref()).collect();
    let mut df = DataFrame::new(vec![
        Column::new("seq".into(), &rows.seq),
        Column::new("pos".into(), &rows.pos),
        Column::new("doc".into(), &rows.doc),
        Column::new("token_id".into(), &rows.token_id),
        Column::new("text".into(), text),
        Column::new("start".into(), &rows.start),
        Column::new("end".into(), &rows.end),
    ])?;
    util::write_parquet(path, &mut df)
}

/// `losses/<name>.parquet`: one checkpoint's loss for every scored row. Returns the file's
/// sha256, computed as it is written (recorded in study.json or the part record, verified
/// by readers: [`study::CheckpointEntry::checked_loss_files`]).
pub fn write_losses(path: &Path, name: &str, step: Option<i64>, rows: &Rows, losses: &[f32]) -> Result<String> {
    use sha2::Digest;
    /// Writes through to the file and hashes what it writes.
    struct Hashing<'a> {
        file: &'a mut std::fs::File,
        hash: sha2::Sha256,
    }
    impl std::io::Write for Hashing<'_> {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            let n = self.file.write(buf)?;
            self.hash.update(&buf[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> std::io::Result<()> {
            self.file.flush()
        }
    }
    let n = rows.len();
    let mut df = DataFrame::new(vec![
        Column::new("checkpoint".into(), vec![name; n]),
        Column::new("step".into(), vec![step; n]),
        Column::new("seq".into(), &rows.seq),
        Column::new("pos".into(), &rows.pos),
        Column::new("token_id".into(), &rows.token_id),
        Column::new("loss".into(), losses),
    ])?;
    let mut sha = String::new();
    util::write_atomic(path, |file| {
        let mut w = Hashing { file, hash: sha2::Sha256::new() };
        ParquetWriter::new(&mut w).with_compression(ParquetCompression::Zstd(None)).finish(&mut df).with_path(path)?;
        sha = w.hash.finalize().iter().map(|b| format!("{b:02x}")).collect();
        Ok(())
    })?;
    Ok(sha)
}

/// The study's order with this run's checkpoints (`run_keys`) merged in: its checkpoints as
/// recorded (their positions read again where the folder is still there: a study written by an
/// older rho has other steps), by [`order::merge`].
fn study_series(manifest: &Manifest, run_keys: &[(String, order::Key)]) -> Vec<String> {
    let old_keys: Vec<(String, order::Key)> = manifest
        .checkpoints
        .iter()
        .map(|e| {
            let fresh = if e.path.is_dir() { order::position(&e.path).ok() } else { None };
            (e.name.clone(), fresh.map(|p| p.key()).unwrap_or_else(|| e.key()))
        })
        .collect();
    order::merge(&old_keys, run_keys)
}

/// The claim of a checkpoint while one process scores it: `losses/<name>.lock`, or
/// `losses/<name>.part-<I>-of-<N>.lock` for a shard.
pub fn claim_path(study: &Path, name: &str, shard: Option<Shard>) -> PathBuf {
    let file = match shard {
        None => format!("{name}.lock"),
        Some(sh) => format!("{name}.{}.lock", sh.stem()),
    };
    study.join(study::LOSSES_DIR).join(file)
}

/// A progress bar on a terminal, plain lines otherwise, nothing with --quiet.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    quiet: bool,
}

impl Progress {
    fn new(quiet: bool, total: u64) -> Self {
        use std::io::IsTerminal;
        let bar = (!quiet && std::io::stderr().is_terminal()).then(|| {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(
                indicatif::ProgressStyle::with_template(
                    "{msg:>16} [{bar:30}] {human_pos}/{human_len} tokens  {per_sec}  ETA {eta}",
                )
                .unwrap()
                .progress_chars("=> "),
            );
            b
        });
        Progress { bar, quiet }
    }
    fn set_message(&self, m: &str) {
        if let Some(b) = &self.bar {
            b.set_message(m.to_string());
        }
    }
    fn inc(&self, n: u64) {
        if let Some(b) = &self.bar {
            b.inc(n);
        }
    }
    fn println(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None if !self.quiet => eprintln!("{s}"),
            None => {}
        }
    }
    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The largest forward pass's logits must fit in memory on the CPU; CUDA reports its own.
    #[test]
    fn forward_memory_is_bounded_by_the_largest_batch() {
        let units: Vec<Unit> = (0..4).map(|i| Unit { tokens: vec![0; 1000], score_from: 1, row_start: i * 999 }).collect();
        check_forward_memory(&units, 4096, 50_000, &Device::Cpu).unwrap();
        // usize::MAX tokens a batch: the batch is the whole data (4 x 1000 tokens), which fits
        check_forward_memory(&units, usize::MAX, 50_000, &Device::Cpu).unwrap();
        // a vocabulary whose logits for 4000 tokens cannot fit
        let e = check_forward_memory(&units, usize::MAX, 1 << 40, &Device::Cpu).unwrap_err().to_string();
        assert!(e.starts_with("--batch-tokens: 18446744073709551615: a batch of 4000 tokens needs at least"), "{e}");
        let e = check_forward_memory(&units, 1000, 1 << 40, &Device::Cpu).unwrap_err().to_string();
        assert!(e.contains("a batch of 1000 tokens"), "{e}");
    }
}
