//! `rho report`: read a categorized study and draw its charts plus an `index.html`.
//!
//! Memory: per-token columns of `trajectories.parquet` (a few bytes per token), then
//! one checkpoint's `seq, pos, loss` at a time; per-category means are accumulated
//! file by file, never as a tokens x checkpoints matrix.

#![allow(clippy::needless_range_loop)]

use super::charts::{self, Line, TrajPanel, CAT_COLORS};
use super::data::{self, PassageToken};
use super::PALETTE;
use crate::dynamics::{self, Category, CategorizeSummary};
use crate::error::{Error, Result, WithPath};
use crate::eval::study::{Manifest, TOKENS};
use crate::train::StepMetrics;
use polars::prelude::*;
use std::path::{Path, PathBuf};

/// Tokens drawn per category in the fluctuating-tokens chart.
pub const TOP_K: usize = 5;
/// Most points drawn in the categorisation plane (a fixed subsample beyond).
pub const MAX_PLANE_POINTS: usize = 60_000;

/// One chart of the report.
#[derive(Debug, Clone, PartialEq)]
pub struct ChartFile {
    /// File name inside the output folder.
    pub file: String,
    /// One-line caption (also in index.html).
    pub caption: String,
}

/// What `rho report` wrote.
#[derive(Debug, Clone)]
pub struct ReportSummary {
    pub out: PathBuf,
    pub charts: Vec<ChartFile>,
    /// index.html
    pub index: PathBuf,
    /// Why charts were left out (e.g. no training runs).
    pub notes: Vec<String>,
}

/// The file names `rho report` always writes (the run charts only when the study has runs with selection).
pub const CHARTS: [&str; 6] = [
    "category_shares.png",
    "category_mean_loss.png",
    "fluctuating_tokens.png",
    "residual_std.png",
    "categorisation_plane.png",
    "passage.png",
];
pub const RUN_CHARTS: [&str; 2] = ["runs_kept_loss.png", "runs_kept_by_category.png"];

struct Traj {
    seq: Vec<u32>,
    pos: Vec<u32>,
    token_id: Vec<u32>,
    cat: Vec<u8>,
    delta: Vec<f32>,
    last_loss: Vec<f32>,
    residual_std: Vec<f32>,
}

fn read_traj(study: &Path) -> Result<Traj> {
    let p = dynamics::trajectories_path(study);
    let hint = format!("run `rho categorize --study {}` first", study.display());
    // One column at a time: memory holds the plain vectors, never a DataFrame of them too.
    let one = |name: &str| data::scan(&p, &[name], None, &hint);
    let t = Traj {
        seq: data::u32s(&one("seq")?, "seq", &p)?,
        pos: data::u32s(&one("pos")?, "pos", &p)?,
        token_id: data::u32s(&one("token_id")?, "token_id", &p)?,
        cat: categories_in_blocks(&p, &hint)?,
        delta: data::f32s(&one("delta")?, "delta", &p)?,
        last_loss: data::f32s(&one("last_loss")?, "last_loss", &p)?,
        residual_std: data::f32s(&one("residual_std")?, "residual_std", &p)?,
    };
    if t.seq.is_empty() {
        return Err(Error::file(&p, "has no rows: nothing to report"));
    }
    Ok(t)
}

/// The `category` column as one byte per token, read in blocks: a whole string
/// column would take ~20 bytes per token while it is converted.
fn categories_in_blocks(p: &Path, hint: &str) -> Result<Vec<u8>> {
    if !p.exists() {
        return Err(Error::file(p, format!("missing: {hint}")));
    }
    let s = p.to_str().ok_or_else(|| Error::file(p, "path is not UTF-8"))?;
    let scan = || LazyFrame::scan_parquet(PlPath::new(s), ScanArgsParquet::default()).with_path(p);
    let n = crate::util::count_rows(scan()?).with_path(p)? as usize;
    let mut out = Vec::with_capacity(n);
    for start in (0..n).step_by(dynamics::BLOCK_ROWS) {
        let len = dynamics::BLOCK_ROWS.min(n - start);
        let df = scan()?.slice(start as i64, len as IdxSize).select([col("category")]).collect().with_path(p)?;
        out.extend(data::categories(&df, p)?);
    }
    Ok(out)
}

/// Write the report of `study` into `out` (default `<study>/report`).
pub fn run_report(study: &Path, out: Option<&Path>) -> Result<ReportSummary> {
    run_report_x(study, out, data::XAxis::Step)
}

/// [`run_report`] with the x-axis of the charts over checkpoints: steps, or tokens seen
/// (`rho report --x-axis tokens`; every checkpoint must record them).
pub fn run_report_x(study: &Path, out: Option<&Path>, x_axis: data::XAxis) -> Result<ReportSummary> {
    let manifest = Manifest::load(study)?;
    let traj = read_traj(study)?;
    let cp = dynamics::categories_path(study);
    if !cp.exists() {
        return Err(Error::file(&cp, format!("missing: run `rho categorize --study {}` first", study.display())));
    }
    let summary = dynamics::load_categorized(study)?;
    let out = out.map(Path::to_path_buf).unwrap_or_else(|| study.join("report"));
    let mut charts_out: Vec<ChartFile> = Vec::new();
    let mut notes = Vec::new();
    let n = traj.seq.len();
    let counts = data::counts(&traj.cat);
    let study_name = study.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_else(|| study.display().to_string());

    // Checkpoints the categories were computed over (all of the study's when not recorded).
    let ckpts: Vec<(String, Option<i64>, Option<u64>)> = if summary.checkpoints.is_empty() {
        manifest.checkpoints.iter().map(|c| (c.name.clone(), c.step, c.tokens_seen)).collect()
    } else {
        summary
            .checkpoints
            .iter()
            .map(|name| {
                manifest.checkpoints.iter().find(|c| &c.name == name).map(|c| (c.name.clone(), c.step, c.tokens_seen)).ok_or_else(|| {
                    Error::file(&cp, format!("checkpoint `{name}` is not in study.json: run `rho categorize` again"))
                })
            })
            .collect::<Result<_>>()?
    };
    let span = match ckpts.as_slice() {
        [] => String::new(),
        [a] => a.0.clone(),
        [a, .., b] => format!("{} .. {}", a.0, b.0),
    };
    let sub = format!("study {study_name}: {} checkpoints ({span}), threshold {}, L_mean {:.3}", ckpts.len(), summary.threshold, summary.l_mean);

    // The x of the charts over checkpoints (a bad --x-axis before anything is written).
    let (xs, x_desc) = data::checkpoint_x(&ckpts.iter().map(|c| (c.1, c.2)).collect::<Vec<_>>(), x_axis).map_err(|missing| {
        let names: Vec<&str> = missing.iter().map(|&i| ckpts[i].0.as_str()).collect();
        Error::flag(
            "--x-axis",
            format!(
                "tokens seen are not recorded for {} of the {} checkpoints ({}{}): use --x-axis step, or evaluate checkpoints \
                 whose trainer_state.json or folder names give them",
                names.len(),
                ckpts.len(),
                names.iter().take(5).copied().collect::<Vec<_>>().join(", "),
                if names.len() > 5 { ", …" } else { "" }
            ),
        )
    })?;
    let x_desc = x_desc.as_str();
    std::fs::create_dir_all(&out).with_path(&out)?;
    crate::util::remove_stale_tmp(&out);

    // 1. shares
    let f = CHARTS[0];
    charts::shares(&out.join(f), counts, &sub)?;
    charts_out.push(ChartFile {
        file: f.into(),
        caption: format!(
            "Share of the {n} validation tokens in each loss-trajectory category ({}).",
            (0..4).map(|i| format!("{} {:.1}%", Category::ALL[i].as_human_str(), 100.0 * counts[i] as f64 / n as f64)).collect::<Vec<_>>().join(", ")
        ),
    });

    // 2 + 3: one pass over the losses files.
    let top_ll = data::top_by(&traj.residual_std, &traj.cat, Category::LL.index() as u8, TOP_K);
    let top_hh = data::top_by(&traj.residual_std, &traj.cat, Category::HH.index() as u8, TOP_K);
    let mut means: Vec<data::CategoryMean> = Vec::new();
    let mut picked: Vec<Vec<f64>> = vec![Vec::new(); top_ll.len() + top_hh.len()];
    for (name, _, _) in &ckpts {
        // In blocks, so that memory holds one block of a checkpoint, not its whole columns.
        let src = dynamics::LossSource::new(study, manifest.entry(study, name)?)?;
        if src.n_rows() != n {
            return Err(Error::file(
                &src.label,
                format!("has {} rows, {} has {n}: run `rho categorize` again", src.n_rows(), dynamics::trajectories_path(study).display()),
            ));
        }
        let mut sums = data::CategorySums::default();
        let mut mine: Vec<f64> = vec![f64::NAN; picked.len()];
        for start in (0..n).step_by(dynamics::BLOCK_ROWS) {
            let len = dynamics::BLOCK_ROWS.min(n - start);
            let (df, p) = src.block(start, len, &["seq", "pos", "loss"])?;
            let (s, q) = (data::u32s(&df, "seq", &p)?, data::u32s(&df, "pos", &p)?);
            if s != traj.seq[start..start + len] || q != traj.pos[start..start + len] {
                return Err(Error::file(
                    &p,
                    format!("does not line up with {} (other rows or order): run `rho categorize` again", dynamics::trajectories_path(study).display()),
                ));
            }
            drop((s, q));
            let loss = data::f32s(&df, "loss", &p)?;
            drop(df);
            sums.add(&traj.cat[start..start + len], &loss);
            for (j, &row) in top_ll.iter().chain(&top_hh).enumerate() {
                if (start..start + len).contains(&row) {
                    mine[j] = loss[row - start] as f64;
                }
            }
        }
        means.push(sums.means());
        for (j, v) in mine.into_iter().enumerate() {
            picked[j].push(v);
        }
    }
    let f = CHARTS[1];
    let mut lines: Vec<Line> = (0..4)
        .filter(|&k| counts[k] > 0)
        .map(|k| Line {
            label: format!("{} ({})", Category::ALL[k].as_human_str(), counts[k]),
            color: CAT_COLORS[k],
            dashed: false,
            points: xs.iter().zip(&means).filter_map(|(&x, m)| m.by_cat[k].map(|y| (x, y))).collect(),
            markers: true,
        })
        .collect();
    lines.push(Line { label: format!("all ({n})"), color: plotters::style::BLACK, dashed: true, points: xs.iter().zip(&means).map(|(&x, m)| (x, m.all)).collect(), markers: false });
    charts::category_means(&out.join(f), &sub, x_desc, &lines)?;
    charts_out.push(ChartFile {
        file: f.into(),
        caption: "Mean loss of each category at every checkpoint (Rho-1 Fig. 3a); dashed: all tokens.".into(),
    });

    // 3. fluctuating tokens: their text from tokens.parquet (rows line up with the losses files).
    let texts = token_texts(study, &traj, top_ll.iter().chain(&top_hh).copied().collect())?;
    let panel = |cat: Category, rows: &[usize], offset: usize| -> TrajPanel {
        let name = cat.as_human_str();
        if rows.is_empty() {
            return TrajPanel { title: format!("{name}: most fluctuating tokens"), lines: vec![], empty_note: Some(format!("no {name} tokens in this study")) };
        }
        let lines = rows
            .iter()
            .enumerate()
            .map(|(j, &row)| Line {
                label: format!(
                    "{}  (seq {}, pos {}, residual std {:.3})",
                    data::token_label(&texts[offset + j], 24),
                    traj.seq[row],
                    traj.pos[row],
                    traj.residual_std[row]
                ),
                color: PALETTE[j % PALETTE.len()],
                dashed: false,
                points: xs.iter().copied().zip(picked[offset + j].iter().copied()).collect(),
                markers: true,
            })
            .collect();
        TrajPanel { title: format!("{name}: the {} most fluctuating tokens", rows.len()), lines, empty_note: None }
    };
    let panels = [panel(Category::LL, &top_ll, 0), panel(Category::HH, &top_hh, top_ll.len())];
    let f = CHARTS[2];
    charts::trajectories(&out.join(f), &sub, x_desc, &panels)?;
    charts_out.push(ChartFile {
        file: f.into(),
        caption: format!(
            "Loss of the {TOP_K} L→L and {TOP_K} H→H tokens whose loss fluctuates most around their fitted trend (largest residual std; Rho-1 Fig. 3b-c), labelled with the token's text."
        ),
    });

    // 4. residual_std distributions
    let mut sorted: Vec<f32> = traj.residual_std.iter().copied().filter(|x| x.is_finite()).collect();
    sorted.sort_by(|a, b| a.total_cmp(b));
    let (lo, max) = (0.0f64.min(data::quantile(&sorted, 0.0)), data::quantile(&sorted, 1.0));
    let q995 = data::quantile(&sorted, 0.995);
    let hi = if max > 2.0 * q995 && q995 > 0.0 { q995 } else { max };
    let hi = if hi.is_finite() && hi > lo { hi } else { lo + 1.0 };
    drop(sorted);
    let dists = data::distributions(&traj.residual_std, &traj.cat, lo, hi, 50);
    let f = CHARTS[3];
    charts::violins(&out.join(f), &sub, "residual std of the loss around its linear trend (nats)", &dists, lo, hi)?;
    let clipped: u64 = dists.iter().map(|d| d.above).sum();
    charts_out.push(ChartFile {
        file: f.into(),
        caption: format!(
            "Distribution of residual_std (how much a token's loss fluctuates around its trend line) per category: violin = histogram, box = quartiles, whiskers = 5th-95th percentile, white bar = median{}.",
            if clipped > 0 { format!("; {clipped} values above {hi:.3} are beyond the plotted range") } else { String::new() }
        ),
    });

    // 5. plane
    let idx = data::subsample(n, MAX_PLANE_POINTS);
    let pts: Vec<(f64, f64, u8)> = idx.iter().map(|&i| (traj.last_loss[i] as f64, traj.delta[i] as f64, traj.cat[i])).filter(|p| p.0.is_finite() && p.1.is_finite()).collect();
    let f = CHARTS[4];
    let shown = if idx.len() < n { format!("{} of {n} tokens (a fixed subsample)", idx.len()) } else { format!("all {n} tokens") };
    charts::plane(&out.join(f), &format!("{sub}; {shown}"), &pts, summary.threshold, summary.l_mean, counts)?;
    charts_out.push(ChartFile {
        file: f.into(),
        caption: format!(
            "Each token's trend ΔL against its last-checkpoint loss ({shown}), coloured by category; dashed: ΔL = ±{} and L_mean = {:.3}, the lines that define the categories.",
            summary.threshold, summary.l_mean
        ),
    });

    // 6. passage
    let f = CHARTS[5];
    let cap = passage(study, &manifest, &traj, &out.join(f), &study_name)?;
    charts_out.push(ChartFile { file: f.into(), caption: cap });

    // 7. training runs
    match runs(study, &traj, &out, &study_name)? {
        Some(mut c) => charts_out.append(&mut c),
        None => notes.push(format!("No training run with token selection under {}: the kept/not-kept charts are left out.", study.join("runs").display())),
    }

    let index = out.join("index.html");
    crate::util::write_bytes_atomic(&index, html(&study_name, study, &summary, counts, &charts_out, &notes).as_bytes())?;
    Ok(ReportSummary { out, charts: charts_out, index, notes })
}

/// Token texts of some rows (rows of trajectories = rows of tokens.parquet, checked by seq/pos).
fn token_texts(study: &Path, traj: &Traj, rows: Vec<usize>) -> Result<Vec<String>> {
    if rows.is_empty() {
        return Ok(vec![]);
    }
    let p = study.join(TOKENS);
    // Only the wanted (seq, pos) rows are read into memory (at most 2 x TOP_K).
    let filter = rows
        .iter()
        .map(|&r| col("seq").eq(lit(traj.seq[r])).and(col("pos").eq(lit(traj.pos[r]))))
        .reduce(|a, b| a.or(b))
        .expect("rows is not empty");
    let df = data::scan(&p, &["seq", "pos", "text"], Some(filter), "run `rho eval` first")?;
    let (s, q, t) = (data::u32s(&df, "seq", &p)?, data::u32s(&df, "pos", &p)?, data::strings(&df, "text", &p)?);
    let map: std::collections::HashMap<(u32, u32), usize> = s.iter().zip(&q).enumerate().map(|(i, (&a, &b))| ((a, b), i)).collect();
    rows.iter()
        .map(|&r| {
            map.get(&(traj.seq[r], traj.pos[r]))
                .map(|&i| t[i].clone())
                .ok_or_else(|| Error::file(&p, format!("no token at seq {}, pos {}: the study's files do not line up", traj.seq[r], traj.pos[r])))
        })
        .collect()
}

/// 6. The passage: the most varied document, followed by the next ones while there is room.
fn passage(study: &Path, manifest: &Manifest, traj: &Traj, path: &Path, study_name: &str) -> Result<String> {
    const MAX_TOKENS: usize = 600;
    let first = data::choose_passage(&traj.seq, &traj.cat, 300).unwrap_or(traj.seq[0]);
    // The sequences from `first` on, up to MAX_TOKENS tokens.
    let mut per_seq: std::collections::BTreeMap<u32, usize> = std::collections::BTreeMap::new();
    for &s in &traj.seq {
        if s >= first {
            *per_seq.entry(s).or_default() += 1;
        }
    }
    let mut last = first;
    let mut total = 0;
    // Whole sequences only (the first one is always shown, cut by the picture if long).
    for (&s, &c) in &per_seq {
        if s != first && total + c > MAX_TOKENS {
            break;
        }
        last = s;
        total += c;
    }
    let p = study.join(TOKENS);
    let df = data::scan(
        &p,
        &["seq", "pos", "doc", "start", "end", "text"],
        Some(col("seq").gt_eq(lit(first)).and(col("seq").lt_eq(lit(last)))),
        "run `rho eval` first",
    )?;
    let (s, q, d) = (data::u32s(&df, "seq", &p)?, data::u32s(&df, "pos", &p)?, data::u32s(&df, "doc", &p)?);
    let (st, en, tx) = (data::u32s(&df, "start", &p)?, data::u32s(&df, "end", &p)?, data::strings(&df, "text", &p)?);
    let cats: std::collections::HashMap<(u32, u32), u8> = traj
        .seq
        .iter()
        .zip(&traj.pos)
        .zip(&traj.cat)
        .filter(|((&a, _), _)| a >= first && a <= last)
        .map(|((&a, &b), &c)| ((a, b), c))
        .collect();
    let mut order: Vec<usize> = (0..s.len()).filter(|&i| cats.contains_key(&(s[i], q[i]))).collect();
    order.sort_by_key(|&i| (s[i], q[i]));
    order.truncate(MAX_TOKENS.max(per_seq.get(&first).copied().unwrap_or(0)).min(2000));
    let toks: Vec<PassageToken> = order
        .iter()
        .map(|&i| PassageToken { doc: d[i], start: st[i], end: en[i], text: tx[i].clone(), cat: cats[&(s[i], q[i])] })
        .collect();
    // The documents' own text when the data file is still there and unchanged.
    let docs = source_docs(manifest);
    let pack = manifest.settings.get("pack").and_then(|v| v.as_bool()).unwrap_or(false);
    let docs_ref = docs.as_ref();
    let pieces = data::passage_pieces(&toks, |doc| docs_ref.and_then(|v| v.get(doc as usize)).map(|s| s.as_str()), !pack);
    let n_tok = toks.len();
    let first_doc = toks.first().map(|t| t.doc).unwrap_or(0);
    let mut shown_all = true;
    let title = format!("Validation text coloured by trajectory category ({study_name})");
    let sub = format!(
        "from seq {first}{}; {}",
        if last > first { format!(" to seq {last}") } else { String::new() },
        if docs.is_some() { "text from the data file" } else { "text from the token texts (data file not found)" }
    );
    charts::passage(path, &title, &sub, 1600, 26, |measure| {
        // Short lines (e.g. documents made of short lines) go in 2 or 3 columns.
        let (natural, _) = data::wrap(&pieces, 1500, 200, measure);
        let widest = natural.iter().map(|l| l.iter().map(|p| measure(&p.text)).sum::<u32>()).max().unwrap_or(0);
        let ncols = if widest <= 1500 / 3 - 40 { 3 } else if widest <= 1500 / 2 - 40 { 2 } else { 1 };
        let (lines, all) = data::wrap(&pieces, 1500 / ncols - 40, 34 * ncols as usize, measure);
        shown_all = all;
        let foot = if all { format!("{n_tok} scored tokens") } else { "… (cut to fit the picture)".to_string() };
        (lines, foot, ncols as usize)
    })?;
    let _ = first_doc;
    Ok(format!(
        "A passage of validation text (seq {first}{}) with every scored token on the colour of its category, like Rho-1 Tables 4-7{}.",
        if last > first { format!(" to {last}") } else { String::new() },
        if shown_all { "" } else { ", cut to fit" }
    ))
}

/// The documents of the study's data file, if it still exists and is the one evaluated.
fn source_docs(manifest: &Manifest) -> Option<Vec<String>> {
    let path = &manifest.data;
    if !path.is_file() {
        return None;
    }
    if let Some(want) = manifest.settings.get("data_sha256").and_then(|v| v.as_str()) {
        if crate::util::sha256_file(path).ok()?.as_str() != want {
            return None;
        }
    }
    let field = manifest.settings.get("text_field").and_then(|v| v.as_str()).unwrap_or("text");
    crate::data::docs::read_documents(path, field).ok()
}

/// Training runs under `<study>/runs/*/metrics.jsonl` that select tokens (some step keeps < 100%).
fn runs(study: &Path, traj: &Traj, out: &Path, study_name: &str) -> Result<Option<Vec<ChartFile>>> {
    let dir = study.join("runs");
    let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(None) };
    let mut names: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.join("metrics.jsonl").is_file()).collect();
    names.sort();
    let mut selective: Vec<(String, PathBuf, Vec<StepMetrics>)> = Vec::new();
    let mut all_kept: Vec<String> = Vec::new();
    for run in names {
        let mp = run.join("metrics.jsonl");
        let text = std::fs::read_to_string(&mp).with_path(&mp)?;
        let mut ms = Vec::new();
        for (i, l) in text.lines().enumerate().filter(|(_, l)| !l.trim().is_empty()) {
            ms.push(serde_json::from_str::<StepMetrics>(l).map_err(|e| Error::file(&mp, format!("line {}: {e}", i + 1)))?);
        }
        let name = run.file_name().map(|s| s.to_string_lossy().to_string()).unwrap_or_default();
        if ms.iter().any(|m| m.kept_frac < 1.0 - 1e-9) {
            selective.push((name, run, ms));
        } else {
            all_kept.push(name);
        }
    }
    if selective.is_empty() {
        return Ok(None);
    }
    let mut out_charts = Vec::new();
    // 7a. kept vs not kept
    let mut lines = Vec::new();
    for (i, (name, _, ms)) in selective.iter().enumerate() {
        let c = PALETTE[i % PALETTE.len()];
        lines.push(Line { label: format!("{name}: kept"), color: c, dashed: false, points: ms.iter().map(|m| (m.step as f64, m.loss_kept)).collect(), markers: false });
        lines.push(Line {
            label: format!("{name}: not kept"),
            color: c,
            dashed: true,
            points: ms.iter().filter_map(|m| data::not_kept_loss(m.loss_all, m.loss_kept, m.kept_frac).map(|y| (m.step as f64, y))).collect(),
            markers: false,
        });
    }
    let f = RUN_CHARTS[0];
    let sub = format!(
        "study {study_name}: runs that select tokens, from each run's metrics.jsonl (per training batch){}",
        if all_kept.is_empty() { String::new() } else { format!("; not drawn (keep every token): {}", all_kept.join(", ")) }
    );
    charts::kept_loss(&out.join(f), &sub, &lines)?;
    out_charts.push(ChartFile {
        file: f.into(),
        caption: "Mean loss of the tokens the selection kept (solid) and of those it dropped (dashed) in each training batch, per run with selection; not-kept loss = (loss_all − kept_frac·loss_kept) / (1 − kept_frac).".into(),
    });
    // 7b. kept share per category, via token ids.
    let by_id = data::id_category_counts(&traj.token_id, &traj.cat);
    let mut bars = Vec::new();
    let mut total_masked = 0usize;
    let mut total_matched = 0u64;
    for (name, run, _) in &selective {
        let md = run.join("masks");
        let Ok(rd) = std::fs::read_dir(&md) else { continue };
        let mut files: Vec<PathBuf> = rd.flatten().map(|e| e.path()).filter(|p| p.extension().map(|x| x == "parquet").unwrap_or(false)).collect();
        files.sort();
        let (mut ids, mut kept) = (Vec::new(), Vec::new());
        for p in &files {
            let df = data::scan(p, &["token_id", "kept"], None, "")?;
            ids.extend(data::u32s(&df, "token_id", p)?);
            kept.extend(data::bools(&df, "kept", p)?);
        }
        if ids.is_empty() {
            continue;
        }
        let (share, all, matched) = data::kept_share_by_category(&ids, &kept, &by_id);
        total_masked += ids.len();
        total_matched += matched;
        bars.push((name.clone(), share, all));
    }
    if !bars.is_empty() {
        let f = RUN_CHARTS[1];
        let sub = format!(
            "probe-batch masks (runs/*/masks); training tokens matched to validation categories by token id ({total_matched} of {total_masked} matched)"
        );
        charts::kept_share(&out.join(f), &sub, &bars)?;
        out_charts.push(ChartFile {
            file: f.into(),
            caption: "Share of training tokens the selection kept, per trajectory category, over all probe-batch masks of each run. The masks are on the training stream, not the validation tokens, so a training token counts towards each category with the share of its token id's validation occurrences in that category (ids absent from validation are left out): a per-token-id proxy, not a per-token join.".into(),
        });
    }
    Ok(Some(out_charts))
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn html(name: &str, study: &Path, s: &CategorizeSummary, counts: [u64; 4], charts: &[ChartFile], notes: &[String]) -> String {
    let total: u64 = counts.iter().sum();
    let mut h = String::new();
    h.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    h.push_str(&format!("<title>rho report: {}</title>\n", esc(name)));
    h.push_str("<style>body{font-family:sans-serif;max-width:1500px;margin:2em auto;padding:0 1em;color:#222}img{max-width:100%;border:1px solid #ddd}figure{margin:2em 0}figcaption{margin-top:.4em;color:#444}table{border-collapse:collapse}td,th{padding:.2em .8em;text-align:right;border-bottom:1px solid #ddd}</style>\n</head>\n<body>\n");
    h.push_str(&format!("<h1>rho report: {}</h1>\n", esc(name)));
    h.push_str(&format!(
        "<p>Study <code>{}</code>; {} checkpoints; threshold |ΔL| &le; {}; L_mean = {:.4}.</p>\n",
        esc(&study.display().to_string()),
        s.checkpoints.len(),
        s.threshold,
        s.l_mean
    ));
    h.push_str("<table>\n<tr><th>category</th><th>tokens</th><th>share</th></tr>\n");
    for i in 0..4 {
        h.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:.1}%</td></tr>\n",
            Category::ALL[i].as_human_str(),
            counts[i],
            if total == 0 { 0.0 } else { 100.0 * counts[i] as f64 / total as f64 }
        ));
    }
    h.push_str(&format!("<tr><td>total</td><td>{total}</td><td>100.0%</td></tr>\n</table>\n"));
    for c in charts {
        h.push_str(&format!(
            "<figure>\n<img src=\"{}\" alt=\"{}\">\n<figcaption>{}</figcaption>\n</figure>\n",
            esc(&c.file),
            esc(&c.file),
            esc(&c.caption)
        ));
    }
    for n in notes {
        h.push_str(&format!("<p><em>{}</em></p>\n", esc(n)));
    }
    h.push_str("</body>\n</html>\n");
    h
}
