//! `rho experiment`: a small-scale reproduction of Rho-1's findings on the
//! planted-truth corpus. From one phase-1 base model and one reference model:
//! SLM (ratio 0.6, by excess loss) against CLM and against random selection at
//! the same ratio, at equal training tokens, over several seeds; clean-validation
//! loss curves; the kept share of each planted class; and a ratio sweep.
//! Writes `experiment.csv`, `kept.csv`, `summary.md` and PNG charts.

use super::corpus::{Class, Doc};
use super::{copy_model, eval_run, prepare, say, train_cfg, DemoConfig};
use crate::error::{Error, Result, WithPath};
use crate::eval::study::Manifest;
use crate::report::{self, Series};
use crate::select::Select;
use crate::train::{self, TrainMode};
use crate::util;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Debug, Clone)]
pub struct ExperimentConfig {
    pub demo: DemoConfig,
    pub seeds: Vec<u64>,
    pub steps: u64,
    pub ratio: f64,
    pub sweep: Vec<f64>,
}

impl Default for ExperimentConfig {
    fn default() -> Self {
        ExperimentConfig { demo: DemoConfig::default(), seeds: vec![0, 1, 2], steps: 96, ratio: 0.6, sweep: vec![0.3, 0.4, 0.6, 0.8, 1.0] }
    }
}

/// One training run of the experiment.
#[derive(Debug, Clone)]
pub(crate) struct RunSpec {
    pub name: String,
    pub method: &'static str,
    pub mode: TrainMode,
    pub select: Select,
    pub ratio: f64,
    pub seed: u64,
}

/// The runs of a comparison: CLM, SLM at `ratio` (by excess loss) and random
/// selection at `ratio` for every seed, then an SLM run at each other ratio of
/// `sweep` on the first seed (ratio 1.0 too, unless `sweep_one_is_clm`: the CLM
/// run stands for it).
pub(crate) fn run_specs(seeds: &[u64], ratio: f64, sweep: &[f64], sweep_one_is_clm: bool) -> Vec<RunSpec> {
    let mut specs = Vec::new();
    for &seed in seeds {
        specs.push(RunSpec { name: format!("clm-s{seed}"), method: "CLM", mode: TrainMode::Clm, select: Select::Batch, ratio: 1.0, seed });
        specs.push(RunSpec { name: format!("slm-s{seed}"), method: "SLM", mode: TrainMode::Slm, select: Select::Batch, ratio, seed });
        specs.push(RunSpec { name: format!("random-s{seed}"), method: "random", mode: TrainMode::Slm, select: Select::Random, ratio, seed });
    }
    for &r in sweep {
        if (r - ratio).abs() > 1e-9 && !(sweep_one_is_clm && (r - 1.0).abs() < 1e-9) {
            specs.push(RunSpec { name: format!("slm-r{r}"), method: "SLM", mode: TrainMode::Slm, select: Select::Batch, ratio: r, seed: seeds[0] });
        }
    }
    specs
}

/// Validation losses of one run at one checkpoint.
#[derive(Debug, Clone)]
pub struct Point {
    pub run: String,
    pub method: String,
    pub ratio: f64,
    pub seed: u64,
    pub step: i64,
    /// Mean loss over every validation token.
    pub val_loss: f64,
    /// Mean loss without the noise tokens (the "clean" target).
    pub clean_loss: f64,
}

/// Share of training tokens of a planted class the selection kept.
#[derive(Debug, Clone)]
pub struct Kept {
    pub run: String,
    pub method: String,
    pub class: Class,
    pub n: u64,
    pub kept: u64,
}

pub struct ExperimentResults {
    pub points: Vec<Point>,
    pub kept: Vec<Kept>,
    pub summary_md: String,
    pub seconds: f64,
}

pub fn run_experiment(dir: &Path, cfg: &ExperimentConfig) -> Result<ExperimentResults> {
    let t0 = Instant::now();
    let d = &cfg.demo;
    let p = prepare(dir, d, &t0)?;
    let runs_dir = dir.join("runs");
    let valid_classes = token_classes_of_valid(&p.valid, &p.tokenizer, &p.corpus.valid)?;

    let specs = run_specs(&cfg.seeds, cfg.ratio, &cfg.sweep, false);

    let mut points = Vec::new();
    let mut kept = Vec::new();
    for (i, s) in specs.iter().enumerate() {
        say(d, &t0, &format!("run {}/{}: {} ({} ratio {}, seed {})", i + 1, specs.len(), s.name, s.method, s.ratio, s.seed));
        let out = runs_dir.join(&s.name);
        let mut tc = train_cfg(d, p.noisy.clone(), out.clone(), cfg.steps);
        tc.init = Some(p.base_ck.clone());
        tc.mode = s.mode;
        tc.select = s.select;
        tc.ratio = s.ratio;
        tc.seed = s.seed;
        tc.lr = d.phase2_lr;
        tc.warmup = 0;
        tc.save_every = (cfg.steps / 4).max(1);
        tc.mask_every = tc.save_every;
        tc.quiet = true;
        if s.mode == TrainMode::Slm && s.select == Select::Batch {
            tc.reference = Some(p.ref_ck.clone());
        }
        train::run_train_with(&tc, None, true, None)?; // force: a re-run of the experiment starts its runs over
        copy_model(&p.base_ck, &out.join("step-0"))?;
        let study = out.join("study");
        eval_run(&out, &p.valid, &p.tokenizer, &study, true, true)?;
        for (step, val, clean) in val_curve(&study, &valid_classes)? {
            points.push(Point { run: s.name.clone(), method: s.method.into(), ratio: s.ratio, seed: s.seed, step, val_loss: val, clean_loss: clean });
        }
        kept.extend(kept_by_class(&out, &s.name, s.method, &p.noisy, &p.tokenizer, d.seq_len, &p.corpus.noisy)?);
    }

    let summary_md = write_outputs(dir, cfg, &points, &kept)?;
    say(d, &t0, "experiment done");
    Ok(ExperimentResults { points, kept, summary_md, seconds: t0.elapsed().as_secs_f64() })
}

/// Planted class of each scored validation token (documents scored alone).
fn token_classes_of_valid(valid: &Path, tokenizer: &Path, docs: &[Doc]) -> Result<Vec<Class>> {
    let tok = crate::data::Tok::from_file(tokenizer)?;
    let texts = crate::data::read_documents(valid, "text")?;
    let encs = tok.encode_all(&texts)?;
    let (rows, _) = crate::eval::plan::plan_documents(&encs, usize::MAX / 2, None);
    Ok(rows.doc.iter().zip(&rows.start).map(|(&d, &s)| docs[d as usize].class_at(s as usize)).collect())
}

/// (step, mean loss, mean loss without noise tokens) per checkpoint of a study.
fn val_curve(study: &Path, classes: &[Class]) -> Result<Vec<(i64, f64, f64)>> {
    let m = Manifest::load(study)?;
    let mut out = Vec::new();
    for c in &m.checkpoints {
        let p = c.loss_files(study)[0].clone();
        let df = crate::eval::study::read_checked_losses(study, c, &["loss"])?;
        let loss: Vec<f32> = df.column("loss").with_path(&p)?.f32().with_path(&p)?.into_no_null_iter().collect();
        if loss.len() != classes.len() {
            return Err(Error::file(&p, format!("{} rows, expected {}", loss.len(), classes.len())));
        }
        let all = loss.iter().map(|&x| x as f64).sum::<f64>() / loss.len() as f64;
        let (s, n) = loss.iter().zip(classes).filter(|(_, c)| **c != Class::Noise).fold((0f64, 0usize), |a, (l, _)| (a.0 + *l as f64, a.1 + 1));
        let step = c.step.ok_or_else(|| Error::file(Manifest::path(study), format!("checkpoint `{}` has no training step", c.name)))?;
        out.push((step, all, s / n.max(1) as f64));
    }
    Ok(out)
}

/// Kept share per planted class over every probe mask a run wrote.
fn kept_by_class(out: &Path, run: &str, method: &str, data: &Path, tokenizer: &Path, seq_len: usize, docs: &[Doc]) -> Result<Vec<Kept>> {
    let tok = crate::data::Tok::from_file(tokenizer)?;
    let stream = crate::train::stream::Stream::build(data, "text", &tok, tok.eos_id(None), seq_len, tok.vocab_size())?;
    let mut counts: BTreeMap<&'static str, (Class, u64, u64)> = BTreeMap::new();
    let masks = out.join("masks");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&masks).with_path(&masks)?.flatten().map(|e| e.path()).collect();
    files.sort();
    for f in files {
        let df = util::read_parquet(&f)?;
        let seq: Vec<u32> = df.column("seq").with_path(&f)?.u32().with_path(&f)?.into_no_null_iter().collect();
        let pos: Vec<u32> = df.column("pos").with_path(&f)?.u32().with_path(&f)?.into_no_null_iter().collect();
        let k: Vec<bool> = df.column("kept").with_path(&f)?.bool().with_path(&f)?.into_no_null_iter().collect();
        for i in 0..seq.len() {
            let row = stream.units[seq[i] as usize].row_start + pos[i] as usize - 1;
            let class = docs[stream.rows.doc[row] as usize].class_at(stream.rows.start[row] as usize);
            let e = counts.entry(class.as_str()).or_insert((class, 0, 0));
            e.1 += 1;
            e.2 += k[i] as u64;
        }
    }
    Ok(counts.into_values().map(|(class, n, kept)| Kept { run: run.into(), method: method.into(), class, n, kept }).collect())
}

pub(crate) fn mean(v: &[f64]) -> f64 {
    v.iter().sum::<f64>() / v.len().max(1) as f64
}
pub(crate) fn std(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / v.len().max(1) as f64).sqrt()
}

fn write_outputs(dir: &Path, cfg: &ExperimentConfig, points: &[Point], kept: &[Kept]) -> Result<String> {
    let res = dir.join("results");
    std::fs::create_dir_all(&res).with_path(&res)?;
    let mut csv = String::from("run,method,ratio,seed,step,val_loss,clean_loss\n");
    for p in points {
        writeln!(csv, "{},{},{},{},{},{:.5},{:.5}", p.run, p.method, p.ratio, p.seed, p.step, p.val_loss, p.clean_loss).unwrap();
    }
    util::write_bytes_atomic(&res.join("experiment.csv"), csv.as_bytes())?;
    let mut kcsv = String::from("run,method,class,tokens,kept,kept_share\n");
    for k in kept {
        writeln!(kcsv, "{},{},{},{},{},{:.4}", k.run, k.method, k.class.as_str(), k.n, k.kept, k.kept as f64 / k.n.max(1) as f64).unwrap();
    }
    util::write_bytes_atomic(&res.join("kept.csv"), kcsv.as_bytes())?;

    let main_runs = |m: &str| -> Vec<&Point> { points.iter().filter(|p| p.method == m && (m == "CLM" || (p.ratio - cfg.ratio).abs() < 1e-9)).collect() };
    let last_step = points.iter().map(|p| p.step).max().unwrap_or(0);
    let mut md = String::new();
    writeln!(md, "Planted-truth corpus, {} steps of {} tokens per run from one phase-1 base model; seeds {:?}.\n", cfg.steps, cfg.demo.batch_tokens, cfg.seeds).unwrap();
    writeln!(md, "| method | ratio | clean val loss at step {last_step} (mean ± std over seeds) | val loss, all tokens | noise kept | learnable kept | easy kept |").unwrap();
    writeln!(md, "|---|---|---|---|---|---|---|").unwrap();
    let mut curves = Vec::new();
    for m in ["CLM", "SLM", "random"] {
        let pts = main_runs(m);
        let fin: Vec<f64> = pts.iter().filter(|p| p.step == last_step).map(|p| p.clean_loss).collect();
        let fin_all: Vec<f64> = pts.iter().filter(|p| p.step == last_step).map(|p| p.val_loss).collect();
        let share = |c: Class| {
            let ks: Vec<&Kept> = kept.iter().filter(|k| k.method == m && k.class == c && pts.iter().any(|p| p.run == k.run)).collect();
            let (n, kk) = ks.iter().fold((0u64, 0u64), |a, k| (a.0 + k.n, a.1 + k.kept));
            format!("{:.1}%", 100.0 * kk as f64 / n.max(1) as f64)
        };
        let ratio = if m == "CLM" { 1.0 } else { cfg.ratio };
        writeln!(md, "| {m} | {ratio} | {:.4} ± {:.4} | {:.4} ± {:.4} | {} | {} | {} |", mean(&fin), std(&fin), mean(&fin_all), std(&fin_all), share(Class::Noise), share(Class::Learnable), share(Class::Easy)).unwrap();
        let mut by_step: BTreeMap<i64, Vec<f64>> = BTreeMap::new();
        for p in &pts {
            by_step.entry(p.step).or_default().push(p.clean_loss);
        }
        curves.push(Series { name: format!("{m} (ratio {ratio})"), points: by_step.iter().map(|(s, v)| (*s as f64, mean(v))).collect() });
    }
    writeln!(md, "\nRatio sweep (SLM by excess loss, seed {}):\n\n| ratio | clean val loss at step {last_step} | noise kept |\n|---|---|---|", cfg.seeds[0]).unwrap();
    let mut sweep_pts = Vec::new();
    for &r in &cfg.sweep {
        let run = if (r - cfg.ratio).abs() < 1e-9 { format!("slm-s{}", cfg.seeds[0]) } else { format!("slm-r{r}") };
        if let Some(p) = points.iter().find(|p| p.run == run && p.step == last_step) {
            let noise = kept.iter().find(|k| k.run == run && k.class == Class::Noise).map(|k| k.kept as f64 / k.n.max(1) as f64).unwrap_or(f64::NAN);
            writeln!(md, "| {r} | {:.4} | {:.1}% |", p.clean_loss, 100.0 * noise).unwrap();
            sweep_pts.push((r, p.clean_loss));
        }
    }
    util::write_bytes_atomic(&res.join("summary.md"), md.as_bytes())?;

    report::line_chart(&res.join("val_loss.png"), "Clean validation loss (mean over seeds)", "training step", "loss (nats/token, noise excluded)", &curves)?;
    report::line_chart(&res.join("ratio_sweep.png"), &format!("SLM ratio sweep: clean validation loss at step {last_step}"), "kept ratio", "loss (nats/token)", &[Series { name: "SLM".into(), points: sweep_pts }])?;
    // Classes present in the training data (forgotten tokens exist only in validation).
    let classes: Vec<Class> = Class::PLANTED
        .iter()
        .copied()
        .chain([Class::Other])
        .filter(|c| kept.iter().any(|k| k.class == *c && k.n > 0))
        .collect();
    let groups: Vec<String> = classes.iter().map(|c| c.as_str().to_string()).collect();
    let mut bars = Vec::new();
    for m in ["CLM", "SLM", "random"] {
        let pts = main_runs(m);
        let vals = classes
            .iter()
            .map(|c| {
                let (n, kk) = kept.iter().filter(|k| k.method == m && k.class == *c && pts.iter().any(|p| p.run == k.run)).fold((0u64, 0u64), |a, k| (a.0 + k.n, a.1 + k.kept));
                kk as f64 / n.max(1) as f64
            })
            .collect();
        bars.push((m.to_string(), vals));
    }
    report::grouped_bars(&res.join("kept_by_class.png"), "Kept share of training tokens per planted class", "kept share", &groups, &bars, 1.1)?;
    Ok(md)
}
