//! `rho experiment --corpus ... --reference-data ... --target ...`: the
//! reproduction pipeline on real text (e.g. the files in ../shared/data).
//!
//! 1. read the reference (curated) files, drop every document whose first field
//!    (question / problem) also appears in an `--exclude` file (MATH500 out of
//!    the MATH test set), the corpus (noisy) files and the target files (a
//!    deterministic sample of `target_docs` documents each);
//! 2. train a byte-level BPE tokenizer on reference + corpus;
//! 3. train a reference model from scratch on the reference data and score the
//!    corpus with it once (the `rho score` file every SLM run reads);
//! 4. from the same initialisation (per seed): CLM, SLM (top `ratio` by excess
//!    loss) and random selection at the same ratio on the corpus, equal steps and
//!    tokens seen; a ratio sweep on the first seed;
//! 5. evaluate every checkpoint on every target; kept share by corpus file and by
//!    kind of token; `results/` holds CSVs, `summary.md` and PNGs.
//!
//! The file's text is taken from `text`, else `question`+`answer` (GSM8K), else
//! `problem`+`solution` (MATH).

use super::experiment::{mean, run_specs, std, RunSpec};
use super::{write_jsonl, write_llama_config, LlamaShape};
use crate::data::{read_documents, Tok};
use crate::error::{Error, Result, WithPath};
use crate::eval::study::Manifest;
use crate::report::{self, Series};
use crate::select::Select;
use crate::train::{self, TrainConfig, TrainMode};
use crate::util;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::collections::{BTreeMap, HashSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct RealConfig {
    /// Curated files: the reference model's training data.
    pub reference: Vec<PathBuf>,
    /// Documents of these files are removed from the reference data (matched on their first field).
    pub exclude: Vec<PathBuf>,
    /// The (noisy) training corpus of the CLM / SLM / random runs.
    pub corpus: Vec<PathBuf>,
    /// Target-distribution validation files; each is reported on its own.
    pub target: Vec<PathBuf>,
    /// Documents sampled from each target file.
    pub target_docs: usize,
    /// At most this many characters of each corpus file (whole documents, a seeded sample).
    pub corpus_chars: usize,
    pub seeds: Vec<u64>,
    pub steps: u64,
    pub ref_steps: u64,
    pub ratio: f64,
    pub sweep: Vec<f64>,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub heads: usize,
    pub seq_len: usize,
    pub batch_tokens: usize,
    pub lr: f64,
    /// Checkpoints saved (and evaluated) per run.
    pub n_checkpoints: u64,
    pub quiet: bool,
}

impl Default for RealConfig {
    fn default() -> Self {
        RealConfig {
            reference: vec![],
            exclude: vec![],
            corpus: vec![],
            target: vec![],
            target_docs: 120,
            corpus_chars: 1_500_000,
            seeds: vec![0, 1, 2],
            steps: 150,
            ref_steps: 300,
            ratio: 0.6,
            sweep: vec![0.3, 0.4, 0.6, 0.8, 1.0],
            vocab_size: 4096,
            hidden: 128,
            layers: 2,
            heads: 4,
            seq_len: 256,
            batch_tokens: 2048,
            lr: 2e-3,
            n_checkpoints: 4,
            quiet: false,
        }
    }
}

fn say(cfg: &RealConfig, t0: &Instant, msg: &str) {
    if !cfg.quiet {
        eprintln!("[{:7.1} s] {msg}", t0.elapsed().as_secs_f64());
    }
}

/// The field spec of a JSON Lines file: `text`, `question+answer` or `problem+solution`.
pub fn text_spec(path: &Path) -> Result<String> {
    let name = path.file_name().map(|n| n.to_string_lossy().to_lowercase()).unwrap_or_default();
    if !(name.ends_with(".jsonl") || name.ends_with(".jsonl.gz")) {
        return Ok("text".into());
    }
    // Read the first record only.
    use std::io::BufRead;
    let f = std::fs::File::open(path).with_path(path)?;
    let mut r: Box<dyn BufRead> = if name.ends_with(".gz") {
        Box::new(std::io::BufReader::new(flate2::read::GzDecoder::new(f)))
    } else {
        Box::new(std::io::BufReader::new(f))
    };
    let mut line = String::new();
    r.read_line(&mut line).map_err(|e| Error::file(path, format!("cannot read: {e}")))?;
    let v: serde_json::Value =
        serde_json::from_str(&line).map_err(|e| Error::file(path, format!("line 1: invalid JSON: {e}")))?;
    for spec in ["text", "question+answer", "problem+solution"] {
        if spec.split('+').all(|f| v.get(f).map(|x| x.is_string()).unwrap_or(false)) {
            return Ok(spec.into());
        }
    }
    Err(Error::file(path, "records have no `text`, `question`+`answer` or `problem`+`solution` fields"))
}

/// A set of labelled documents (label = the file's stem).
struct Docs {
    texts: Vec<String>,
    source: Vec<usize>,
    names: Vec<String>,
}

fn stem(p: &Path) -> String {
    let n = p.file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    n.split('.').next().unwrap_or(&n).to_string()
}

fn read_labelled(files: &[PathBuf], exclude: &HashSet<String>, dropped: &mut usize) -> Result<Docs> {
    let mut d = Docs { texts: vec![], source: vec![], names: vec![] };
    for (i, f) in files.iter().enumerate() {
        let spec = text_spec(f)?;
        let texts = read_documents(f, &spec)?;
        let keys = if exclude.is_empty() { vec![] } else { read_documents(f, spec.split('+').next().unwrap())? };
        for (j, t) in texts.into_iter().enumerate() {
            if !exclude.is_empty() && exclude.contains(keys[j].trim()) {
                *dropped += 1;
                continue;
            }
            if !t.trim().is_empty() {
                d.texts.push(t);
                d.source.push(i);
            }
        }
        d.names.push(stem(f));
    }
    Ok(d)
}

/// Keep at most `max_chars` characters of each source (whole documents, a seeded
/// sample), then shuffle the documents so every batch mixes the sources.
fn sample_and_shuffle(d: &mut Docs, max_chars: usize, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut idx: Vec<usize> = (0..d.texts.len()).collect();
    idx.shuffle(&mut rng);
    let mut used = vec![0usize; d.names.len()];
    let mut keep = Vec::new();
    for i in idx {
        let s = d.source[i];
        if used[s] < max_chars {
            used[s] += d.texts[i].len();
            keep.push(i);
        }
    }
    let texts = keep.iter().map(|&i| std::mem::take(&mut d.texts[i])).collect();
    d.source = keep.iter().map(|&i| d.source[i]).collect();
    d.texts = texts;
}

fn base_train(cfg: &RealConfig, data: &Path, out: PathBuf, steps: u64, mcfg: &Path, tok: &Path, seed: u64) -> TrainConfig {
    let every = (steps / cfg.n_checkpoints.max(1)).max(1);
    TrainConfig {
        data: data.to_path_buf(),
        out,
        steps,
        init: None,
        model_config: Some(mcfg.to_path_buf()),
        tokenizer: Some(tok.to_path_buf()),
        text_field: "text".into(),
        mode: TrainMode::Clm,
        ratio: 1.0,
        reference: None,
        ref_scores: None,
        select: Select::Batch,
        save_every: every,
        seed,
        lr: cfg.lr,
        min_lr: None,
        warmup: (steps / 10).max(1),
        batch_tokens: cfg.batch_tokens,
        seq_len: Some(cfg.seq_len),
        weight_decay: 0.1,
        grad_clip: 1.0,
        mask_every: every,
        init_std: 0.02,
        log_every: (steps / 10).max(1),
        device: "cpu".into(),
        dtype: "f32".into(),
        quiet: true,
    }
}

/// What kind of text a token is: for the kept-share breakdown.
pub fn token_kind(text: &str) -> &'static str {
    let t = text.trim();
    if t.is_empty() {
        "space"
    } else if t.chars().any(|c| c.is_ascii_digit()) {
        "digits"
    } else if t.chars().all(|c| c.is_alphabetic()) {
        "word"
    } else {
        "symbol"
    }
}
const KINDS: [&str; 4] = ["digits", "symbol", "word", "space"];

#[derive(Debug, Clone)]
pub struct RealPoint {
    pub run: String,
    pub method: String,
    pub ratio: f64,
    pub seed: u64,
    pub step: i64,
    pub target: String,
    pub loss: f64,
}

/// Tokens of the probe masks of one run: (group kind, group name) -> (n, kept).
type KeptCounts = BTreeMap<(String, String), (u64, u64)>;

pub struct RealResults {
    pub summary_md: String,
    pub seconds: f64,
}

pub fn run_real(dir: &Path, cfg: &RealConfig) -> Result<RealResults> {
    let t0 = Instant::now();
    if cfg.reference.is_empty() || cfg.corpus.is_empty() || cfg.target.is_empty() {
        return Err(Error::flag("--corpus", "the real-text experiment needs --reference-data, --corpus and --target files"));
    }
    if cfg.seeds.is_empty() {
        return Err(Error::flag("--seeds", "give at least one seed"));
    }
    crate::select::check_ratio(cfg.ratio)?;
    let data = dir.join("data");
    let runs = dir.join("runs");
    std::fs::create_dir_all(&data).with_path(&data)?;
    std::fs::create_dir_all(&runs).with_path(&runs)?;

    // 1. Data.
    let mut excl = HashSet::new();
    for f in &cfg.exclude {
        let spec = text_spec(f)?;
        for k in read_documents(f, spec.split('+').next().unwrap())? {
            excl.insert(k.trim().to_string());
        }
    }
    let mut dropped = 0;
    let reference = read_labelled(&cfg.reference, &excl, &mut dropped)?;
    let mut none = 0;
    let mut corpus = read_labelled(&cfg.corpus, &HashSet::new(), &mut none)?;
    sample_and_shuffle(&mut corpus, cfg.corpus_chars, 99);
    say(cfg, &t0, &format!(
        "reference data: {} documents from {} ({} removed: in {}); corpus: {} documents (sampled, about {} characters per file) from {}",
        reference.texts.len(),
        reference.names.join(", "),
        dropped,
        cfg.exclude.iter().map(|p| stem(p)).collect::<Vec<_>>().join(", "),
        corpus.texts.len(),
        cfg.corpus_chars,
        corpus.names.join(", ")
    ));
    let ref_path = data.join("reference.jsonl");
    let corpus_path = data.join("corpus.jsonl");
    write_jsonl(&ref_path, reference.texts.iter().map(|s| s.as_str()))?;
    write_jsonl(&corpus_path, corpus.texts.iter().map(|s| s.as_str()))?;
    let mut targets = Vec::new();
    for f in &cfg.target {
        let spec = text_spec(f)?;
        let mut texts = read_documents(f, &spec)?;
        texts.retain(|t| !t.trim().is_empty());
        let mut rng = rand::rngs::StdRng::seed_from_u64(1234);
        texts.shuffle(&mut rng);
        texts.truncate(cfg.target_docs);
        let p = data.join(format!("target-{}.jsonl", stem(f)));
        write_jsonl(&p, texts.iter().map(|s| s.as_str()))?;
        targets.push((stem(f), p, texts.len()));
    }

    // 2. Tokenizer and model config.
    let tok_path = data.join("tokenizer.json");
    if !tok_path.exists() {
        say(cfg, &t0, &format!("training a BPE tokenizer (vocab {}) on reference + corpus", cfg.vocab_size));
        let all: Vec<&str> = reference.texts.iter().chain(&corpus.texts).map(|s| s.as_str()).collect();
        super::train_tokenizer(&all, cfg.vocab_size, &tok_path)?;
    }
    let tok = Tok::from_file(&tok_path)?;
    let eos = tok.eos_id(None).ok_or_else(|| Error::msg("the tokenizer has no <|endoftext|>"))?;
    let mcfg = data.join("config.json");
    let shape = LlamaShape { hidden: cfg.hidden, intermediate: cfg.hidden * 8 / 3 / 32 * 32, layers: cfg.layers, heads: cfg.heads, kv_heads: cfg.heads, seq_len: cfg.seq_len };
    write_llama_config(&mcfg, &shape, tok.vocab_size(), eos)?;

    // 3. Reference model and its scores of the corpus.
    let ref_dir = runs.join("reference");
    let ref_ck = ref_dir.join(format!("step-{}", cfg.ref_steps));
    let ref_trained = !ref_ck.join("model.safetensors").exists();
    if ref_trained {
        say(cfg, &t0, &format!("reference model: {} steps on the reference data", cfg.ref_steps));
        let mut r = base_train(cfg, &ref_path, ref_dir.clone(), cfg.ref_steps, &mcfg, &tok_path, 0);
        r.save_every = cfg.ref_steps;
        train::run_train_with(&r, None, true, None)?; // force: an unfinished reference run starts over
    }
    let scores = data.join("ref_scores.parquet");
    let stream = crate::train::stream::Stream::build(&corpus_path, "text", &tok, Some(eos), cfg.seq_len, tok.vocab_size())?;
    if ref_trained || !scores.exists() {
        say(cfg, &t0, &format!("scoring the corpus ({} tokens) with the reference model", stream.rows.len()));
        let ck = crate::model::Checkpoint::open(&ref_ck)?;
        crate::train::reference::score_stream(&ck, &stream, &scores, &candle_core::Device::Cpu, candle_core::DType::F32, 8192, true)?;
    }
    let ref_losses = crate::train::reference::load_ref_scores(&scores, &stream)?;
    let mut points = Vec::new();
    let ref_study = |t: &str| ref_dir.join(format!("study-{t}"));
    for (t, p, _) in &targets {
        super::eval_run(&ref_ck, p, &tok_path, &ref_study(t), true, ref_trained)?;
        for (step, loss) in curve(&ref_study(t))? {
            points.push(RealPoint { run: "reference".into(), method: "reference".into(), ratio: 1.0, seed: 0, step, target: t.clone(), loss });
        }
    }

    // 4. Runs.
    let specs = run_specs(&cfg.seeds, cfg.ratio, &cfg.sweep, true);
    let mut kept: BTreeMap<String, KeptCounts> = BTreeMap::new();
    let kinds: Vec<&'static str> = (0..tok.vocab_size() as u32).map(|i| token_kind(&tok.token_text(i))).collect();
    for (i, s) in specs.iter().enumerate() {
        let out = runs.join(&s.name);
        let last = out.join(format!("step-{}", cfg.steps));
        say(cfg, &t0, &format!("run {}/{}: {} ({}, ratio {}, seed {})", i + 1, specs.len(), s.name, s.method, s.ratio, s.seed));
        let mut tc = base_train(cfg, &corpus_path, out.clone(), cfg.steps, &mcfg, &tok_path, s.seed);
        tc.mode = s.mode;
        tc.select = s.select;
        tc.ratio = s.ratio;
        if s.mode == TrainMode::Slm && s.select == Select::Batch {
            tc.ref_scores = Some(scores.clone());
        }
        // A finished run is kept (and its evaluations, unless it is trained again).
        let retrain = !last.join("model.safetensors").exists();
        if retrain {
            train::run_train_with(&tc, None, true, None)?; // force: an unfinished run starts over
        }
        for (t, p, _) in &targets {
            let study = out.join(format!("study-{t}"));
            super::eval_run(&out, p, &tok_path, &study, true, retrain)?;
            for (step, loss) in curve(&study)? {
                points.push(RealPoint { run: s.name.clone(), method: s.method.into(), ratio: s.ratio, seed: s.seed, step, target: t.clone(), loss });
            }
        }
        let refs = if tc.ref_scores.is_some() { Some(ref_losses.as_slice()) } else { None };
        kept.insert(s.name.clone(), kept_counts(&tc, &out, &stream, refs, &corpus, &kinds)?);
        if let Some(p) = points.iter().rev().find(|p| p.run == s.name) {
            say(cfg, &t0, &format!("  {}: {} loss {:.4} at step {}", s.name, p.target, p.loss, p.step));
        }
    }

    let md = write_outputs(dir, cfg, &specs, &points, &kept, &targets, &corpus, dropped)?;
    say(cfg, &t0, "real-text experiment done");
    Ok(RealResults { summary_md: md, seconds: t0.elapsed().as_secs_f64() })
}

/// (step, mean loss) per checkpoint of a study.
fn curve(study: &Path) -> Result<Vec<(i64, f64)>> {
    Manifest::load(study)?
        .checkpoints
        .iter()
        .map(|c| {
            c.step
                .map(|s| (s, c.mean_loss))
                .ok_or_else(|| Error::file(Manifest::path(study), format!("checkpoint `{}` has no training step", c.name)))
        })
        .collect()
}

/// Kept / seen tokens, by corpus file and by token kind, of the run's selection
/// replayed with each of its checkpoints on `PROBE_GROUPS` batches spread over the
/// whole corpus (`train::replay_selection`).
fn kept_counts(tc: &TrainConfig, out: &Path, stream: &crate::train::stream::Stream, ref_scores: Option<&[f32]>, corpus: &Docs, kinds: &[&str]) -> Result<KeptCounts> {
    let mut counts = KeptCounts::new();
    for (step, ck) in run_checkpoints(out)? {
        let model = crate::model::Checkpoint::open(&ck)?.load(candle_core::DType::F32, &candle_core::Device::Cpu, crate::model::Mode::Eval)?;
        let df = train::replay_selection(tc, &model, stream, ref_scores.map(|r| r.to_vec()), step, PROBE_GROUPS)?;
        let u32s = |c: &str| -> Result<Vec<u32>> { Ok(df.column(c).with_path(&ck)?.u32().with_path(&ck)?.into_no_null_iter().collect()) };
        let (doc, tid) = (u32s("doc")?, u32s("token_id")?);
        let k: Vec<bool> = df.column("kept").with_path(&ck)?.bool().with_path(&ck)?.into_no_null_iter().collect();
        for i in 0..doc.len() {
            let src = corpus.names[corpus.source[doc[i] as usize]].clone();
            let kind = kinds.get(tid[i] as usize).copied().unwrap_or("symbol").to_string();
            for key in [("source".to_string(), src), ("kind".to_string(), kind)] {
                let e = counts.entry(key).or_insert((0, 0));
                e.0 += 1;
                e.1 += k[i] as u64;
            }
        }
    }
    Ok(counts)
}

/// Probe batches per checkpoint for the kept shares.
const PROBE_GROUPS: usize = 8;

/// (step, folder) of every `step-N` checkpoint of a run, by step.
fn run_checkpoints(out: &Path) -> Result<Vec<(u64, PathBuf)>> {
    let mut v: Vec<(u64, PathBuf)> = std::fs::read_dir(out)
        .with_path(out)?
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().to_string();
            let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
            e.path().join("model.safetensors").exists().then(|| (step, e.path()))
        })
        .collect();
    v.sort();
    Ok(v)
}

#[allow(clippy::too_many_arguments)]
fn write_outputs(
    dir: &Path,
    cfg: &RealConfig,
    specs: &[RunSpec],
    points: &[RealPoint],
    kept: &BTreeMap<String, KeptCounts>,
    targets: &[(String, PathBuf, usize)],
    corpus: &Docs,
    dropped: usize,
) -> Result<String> {
    let res = dir.join("results");
    std::fs::create_dir_all(&res).with_path(&res)?;
    let mut csv = String::from("run,method,ratio,seed,step,target,loss\n");
    for p in points {
        writeln!(csv, "{},{},{},{},{},{},{:.5}", p.run, p.method, p.ratio, p.seed, p.step, p.target, p.loss).unwrap();
    }
    util::write_bytes_atomic(&res.join("real.csv"), csv.as_bytes())?;
    let mut kcsv = String::from("run,group,name,tokens,kept,kept_share\n");
    for (run, c) in kept {
        for ((g, n), (tot, k)) in c {
            writeln!(kcsv, "{run},{g},{n},{tot},{k},{:.4}", *k as f64 / (*tot).max(1) as f64).unwrap();
        }
    }
    util::write_bytes_atomic(&res.join("kept.csv"), kcsv.as_bytes())?;

    let last = cfg.steps as i64;
    let is_main = |s: &RunSpec| s.method == "CLM" || (s.ratio - cfg.ratio).abs() < 1e-9;
    let mut md = String::new();
    writeln!(
        md,
        "Real text. Reference model: {} steps on {} (MATH500 problems removed: {dropped}). Corpus: {} (a seeded sample of whole documents, about {} characters per file). \
         Llama {}x{} (vocab {}), context {}, {} tokens per step; every run {} steps from scratch (same init per seed); seeds {:?}. \
         Targets: {} (a fixed sample of {} documents each).\n",
        cfg.ref_steps,
        cfg.reference.iter().map(|p| stem(p)).collect::<Vec<_>>().join(" + "),
        corpus.names.join(" + "),
        cfg.corpus_chars,
        cfg.layers,
        cfg.hidden,
        cfg.vocab_size,
        cfg.seq_len,
        cfg.batch_tokens,
        cfg.steps,
        cfg.seeds,
        targets.iter().map(|t| t.0.clone()).collect::<Vec<_>>().join(", "),
        cfg.target_docs,
    )
    .unwrap();
    let mut header = String::from("| method | ratio |");
    let mut sep = String::from("|---|---|");
    for (t, _, _) in targets {
        write!(header, " {t} loss at step {last} |").unwrap();
        sep.push_str("---|");
    }
    for s in corpus.names.iter().chain(KINDS.iter().map(|k| k.to_string()).collect::<Vec<_>>().iter()) {
        write!(header, " kept: {s} |").unwrap();
        sep.push_str("---|");
    }
    writeln!(md, "{header}\n{sep}").unwrap();
    let share = |runs: &[&str], g: &str, n: &str| {
        let (tot, k) = runs.iter().filter_map(|r| kept.get(*r)).filter_map(|c| c.get(&(g.to_string(), n.to_string()))).fold((0u64, 0u64), |a, x| (a.0 + x.0, a.1 + x.1));
        if tot == 0 { "-".to_string() } else { format!("{:.1}%", 100.0 * k as f64 / tot as f64) }
    };
    // The reference model's own target loss, as a yardstick.
    {
        let mut row = format!("| reference model (trained on the reference data) | - |");
        for (t, _, _) in targets {
            let v: Vec<f64> = points.iter().filter(|p| p.run == "reference" && &p.target == t).map(|p| p.loss).collect();
            write!(row, " {:.4} |", mean(&v)).unwrap();
        }
        for _ in 0..corpus.names.len() + KINDS.len() {
            row.push_str(" - |");
        }
        writeln!(md, "{row}").unwrap();
    }
    let mut curves: BTreeMap<String, Vec<Series>> = BTreeMap::new();
    for m in ["CLM", "SLM", "random"] {
        let runs: Vec<&str> = specs.iter().filter(|s| s.method == m && is_main(s)).map(|s| s.name.as_str()).collect();
        let ratio = if m == "CLM" { 1.0 } else { cfg.ratio };
        let mut row = format!("| {m} | {ratio} |");
        for (t, _, _) in targets {
            let fin: Vec<f64> = points.iter().filter(|p| runs.contains(&p.run.as_str()) && &p.target == t && p.step == last).map(|p| p.loss).collect();
            write!(row, " {:.4} ± {:.4} |", mean(&fin), std(&fin)).unwrap();
            let mut by_step: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
            for p in points.iter().filter(|p| runs.contains(&p.run.as_str()) && &p.target == t) {
                by_step.entry(p.step).or_default().push(p.loss);
            }
            curves.entry(t.clone()).or_default().push(Series { name: format!("{m} (ratio {ratio})"), points: by_step.iter().map(|(s, v)| (*s as f64, mean(v))).collect() });
        }
        for n in &corpus.names {
            write!(row, " {} |", share(&runs, "source", n)).unwrap();
        }
        for k in KINDS {
            write!(row, " {} |", share(&runs, "kind", k)).unwrap();
        }
        writeln!(md, "{row}").unwrap();
    }
    writeln!(md, "\nRatio sweep (SLM by excess loss, seed {}; ratio 1.0 is CLM):\n", cfg.seeds[0]).unwrap();
    let mut h = String::from("| ratio |");
    let mut sp = String::from("|---|");
    for (t, _, _) in targets {
        write!(h, " {t} loss at step {last} |").unwrap();
        sp.push_str("---|");
    }
    writeln!(md, "{h}\n{sp}").unwrap();
    let mut sweep: BTreeMap<String, Vec<(f64, f64)>> = BTreeMap::new();
    for &r in &cfg.sweep {
        let run = if (r - 1.0).abs() < 1e-9 {
            format!("clm-s{}", cfg.seeds[0])
        } else if (r - cfg.ratio).abs() < 1e-9 {
            format!("slm-s{}", cfg.seeds[0])
        } else {
            format!("slm-r{r}")
        };
        let mut row = format!("| {r} |");
        for (t, _, _) in targets {
            match points.iter().find(|p| p.run == run && &p.target == t && p.step == last) {
                Some(p) => {
                    write!(row, " {:.4} |", p.loss).unwrap();
                    sweep.entry(t.clone()).or_default().push((r, p.loss));
                }
                None => row.push_str(" - |"),
            }
        }
        writeln!(md, "{row}").unwrap();
    }
    util::write_bytes_atomic(&res.join("summary.md"), md.as_bytes())?;

    for (t, series) in &curves {
        report::line_chart(&res.join(format!("target_loss_{t}.png")), &format!("Loss on {t} (mean over seeds)"), "training step", "loss (nats/token)", series)?;
    }
    let sweep_series: Vec<Series> = sweep.into_iter().map(|(t, pts)| Series { name: t, points: pts }).collect();
    report::line_chart(&res.join("ratio_sweep.png"), &format!("SLM ratio sweep: target loss at step {last}"), "kept ratio", "loss (nats/token)", &sweep_series)?;
    let groups: Vec<String> = corpus.names.iter().cloned().chain(KINDS.iter().map(|k| k.to_string())).collect();
    let mut bars = Vec::new();
    for m in ["CLM", "SLM", "random"] {
        let runs: Vec<&str> = specs.iter().filter(|s| s.method == m && is_main(s)).map(|s| s.name.as_str()).collect();
        let vals = corpus
            .names
            .iter()
            .map(|n| ("source", n.as_str()))
            .chain(KINDS.iter().map(|k| ("kind", *k)))
            .map(|(g, n)| {
                let (tot, k) = runs.iter().filter_map(|r| kept.get(*r)).filter_map(|c| c.get(&(g.to_string(), n.to_string()))).fold((0u64, 0u64), |a, x| (a.0 + x.0, a.1 + x.1));
                k as f64 / tot.max(1) as f64
            })
            .collect();
        bars.push((m.to_string(), vals));
    }
    report::grouped_bars(&res.join("kept_by_group.png"), "Kept share of training tokens, by corpus file and token kind", "kept share", &groups, &bars, 1.15)?;
    Ok(md)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_kinds() {
        assert_eq!(token_kind(" 42"), "digits");
        assert_eq!(token_kind("Ġthe".trim_start_matches('Ġ')), "word");
        assert_eq!(token_kind(" \\frac"), "symbol");
        assert_eq!(token_kind("  "), "space");
    }

    #[test]
    fn text_spec_picks_the_fields() {
        let dir = tempfile::tempdir().unwrap();
        let w = |n: &str, s: &str| {
            let p = dir.path().join(n);
            std::fs::write(&p, s).unwrap();
            p
        };
        assert_eq!(text_spec(&w("a.jsonl", "{\"text\":\"x\"}\n")).unwrap(), "text");
        assert_eq!(text_spec(&w("b.jsonl", "{\"question\":\"q\",\"answer\":\"a\"}\n")).unwrap(), "question+answer");
        assert_eq!(text_spec(&w("c.jsonl", "{\"problem\":\"p\",\"solution\":\"s\",\"level\":\"1\"}\n")).unwrap(), "problem+solution");
        let e = text_spec(&w("d.jsonl", "{\"body\":\"x\"}\n")).unwrap_err().to_string();
        assert!(e.contains("d.jsonl"), "{e}");
    }
}
