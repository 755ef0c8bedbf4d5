//! What the TUI reads from a study, lazily.
//!
//! At open: `study.json`, `categories.json` and the needed columns of
//! `trajectories.parquet` (or only `seq` of `tokens.parquet` when the study has no
//! trajectories yet). Token texts and per-checkpoint losses are read in chunks of
//! [`CHUNK`] rows around the cursor, so the full loss matrix is never loaded.

use crate::dynamics::CategorizeSummary;
use crate::error::{Error, Result, WithPath};
use crate::eval::study::{CheckpointEntry, Manifest, TOKENS, TRAJECTORIES};
use crate::report::data as rd;
use crate::train::StepMetrics;
use polars::prelude::*;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

/// Rows per lazily-read chunk of token texts and losses.
pub const CHUNK: usize = 4096;
/// Chunks kept in memory.
const MAX_CHUNKS: usize = 16;

/// Per-token trajectory statistics (columns of `trajectories.parquet`).
#[derive(Debug, Clone, Default)]
pub struct Traj {
    pub cat: Vec<u8>,
    pub delta: Vec<f32>,
    pub slope: Vec<f32>,
    pub first_loss: Vec<f32>,
    pub last_loss: Vec<f32>,
    pub mean_loss: Vec<f32>,
    pub residual_std: Vec<f32>,
}

/// One chunk of rows: token texts and the loss of each row at each checkpoint.
#[derive(Debug, Clone, Default)]
pub struct Chunk {
    pub texts: Vec<String>,
    /// `losses[c][i]`: loss of row `start + i` at checkpoint `c` (empty when unreadable).
    pub losses: Vec<Vec<f32>>,
}

/// A training run found under `<study>/runs/`.
#[derive(Debug, Clone, Default)]
pub struct RunInfo {
    pub name: String,
    pub dir: PathBuf,
    pub metrics: Vec<StepMetrics>,
    /// (step, folder) of each `step-N` checkpoint, by step.
    pub checkpoints: Vec<(u64, PathBuf)>,
    /// "clm", "slm (batch 0.6)", ... from the last checkpoint's trainer_state.json.
    pub mode: String,
    pub steps: Option<u64>,
}

/// A study opened by the TUI.
#[derive(Debug, Clone, Default)]
pub struct Study {
    pub root: PathBuf,
    /// `None`: no study.json here.
    pub manifest: Option<Manifest>,
    pub summary: Option<CategorizeSummary>,
    pub traj: Option<Traj>,
    /// Number of scored tokens (rows).
    pub n_rows: usize,
    /// First row of each document, plus `n_rows` at the end.
    pub doc_starts: Vec<usize>,
    /// Document (`seq`) number of each document index.
    pub doc_seq: Vec<u32>,
    /// Checkpoint folders next to the evaluated ones that are not evaluated yet.
    pub new_checkpoints: Vec<PathBuf>,
    /// The step of each of `new_checkpoints` (trainer_state.json, else the name).
    pub new_steps: Vec<Option<i64>>,
    pub runs: Vec<RunInfo>,
    /// Lazily-read chunks by chunk index.
    pub chunks: HashMap<usize, Chunk>,
    /// Chunks being read in the background.
    pub pending: std::collections::HashSet<usize>,
    /// Every token text, read on the first search.
    pub all_texts: Option<Vec<String>>,
    /// The same, lower-cased (what search compares with).
    pub all_lower: Option<Vec<String>>,
    /// Mean loss per category at each checkpoint (`None`: not computed yet).
    pub cat_means: Option<Vec<[Option<f64>; 4]>>,
    /// Problems met while reading (shown, never fatal).
    pub warnings: Vec<String>,
    /// Checkpoints being evaluated in shards, not complete yet: (name, step, "k/N parts").
    pub incomplete: Vec<(String, Option<i64>, String)>,
}

fn seq_starts(seq: &[u32]) -> (Vec<usize>, Vec<u32>) {
    let mut starts = Vec::new();
    let mut seqs = Vec::new();
    for (i, &s) in seq.iter().enumerate() {
        if i == 0 || seq[i - 1] != s {
            starts.push(i);
            seqs.push(s);
        }
    }
    starts.push(seq.len());
    (starts, seqs)
}

impl Study {
    /// Open a study folder. A folder without study.json gives an empty study (the
    /// TUI then says what to do), not an error.
    pub fn open(root: &Path) -> Result<Study> {
        let mut s = Study { root: root.to_path_buf(), ..Default::default() };
        if Manifest::path(root).exists() {
            // A study still being evaluated in shards opens with its complete checkpoints.
            let (mut m, incomplete) = Manifest::load_partial(root)?;
            // Losses files that are not what the study records (rows, checkpoint name) are left
            // out, with a warning; checksums are verified when a file is read whole (category_means).
            m.checkpoints.retain(|c| match c.checked_loss_files(root, false) {
                Ok(_) => true,
                Err(e) => {
                    s.warnings.push(e.to_string());
                    false
                }
            });
            s.manifest = Some(m);
            if !incomplete.is_empty() {
                if let Ok(st) = crate::eval::status::study_status(root) {
                    s.incomplete = st
                        .checkpoints
                        .iter()
                        .filter(|c| c.state == "incomplete")
                        .map(|c| {
                            let n = c.shards.unwrap_or(0);
                            (c.name.clone(), c.step, format!("{}/{n} parts", n as usize - c.missing_shards.len().min(n as usize)))
                        })
                        .collect();
                }
                // Short, so that the frame shows the point; `rho status` has the rest.
                s.warnings.extend(incomplete.iter().map(|e| match e {
                    Error::File { msg, .. } => format!("{} (left out until complete; see `rho status`)", msg.split(". ").next().unwrap_or(msg)),
                    other => other.to_string(),
                }));
            }
        }
        let cat_path = crate::dynamics::categories_path(root);
        let tp = root.join(TRAJECTORIES);
        // categories.json and trajectories.parquet of two runs of `rho categorize` (one stopped
        // between its writes): neither is shown, as if the study were not categorized.
        let mut mixed = false;
        if cat_path.exists() {
            match crate::dynamics::load_categorized(root) {
                Ok(v) => s.summary = Some(v),
                Err(e) => {
                    mixed = matches!(&e, Error::File { path, .. } if *path == tp);
                    s.warnings.push(if mixed { e.to_string() } else { format!("categories.json: {e}") });
                }
            }
        }
        if tp.exists() && !mixed {
            let cols = ["seq", "category", "delta", "slope", "first_loss", "last_loss", "mean_loss", "residual_std"];
            let df = rd::scan(&tp, &cols, None, "run `rho categorize`")?;
            let seq = rd::u32s(&df, "seq", &tp)?;
            let t = Traj {
                cat: rd::categories(&df, &tp)?,
                delta: rd::f32s(&df, "delta", &tp)?,
                slope: rd::f32s(&df, "slope", &tp)?,
                first_loss: rd::f32s(&df, "first_loss", &tp)?,
                last_loss: rd::f32s(&df, "last_loss", &tp)?,
                mean_loss: rd::f32s(&df, "mean_loss", &tp)?,
                residual_std: rd::f32s(&df, "residual_std", &tp)?,
            };
            s.n_rows = seq.len();
            (s.doc_starts, s.doc_seq) = seq_starts(&seq);
            s.traj = Some(t);
        } else if root.join(TOKENS).exists() {
            let p = root.join(TOKENS);
            let df = rd::scan(&p, &["seq"], None, "run `rho eval`")?;
            let seq = rd::u32s(&df, "seq", &p)?;
            s.n_rows = seq.len();
            (s.doc_starts, s.doc_seq) = seq_starts(&seq);
        }
        if s.doc_starts.is_empty() {
            s.doc_starts.push(0);
        }
        (s.new_checkpoints, s.new_steps) = s.find_new_checkpoints().into_iter().unzip();
        s.runs = scan_runs(&root.join("runs"));
        Ok(s)
    }

    pub fn checkpoints(&self) -> &[CheckpointEntry] {
        self.manifest.as_ref().map(|m| m.checkpoints.as_slice()).unwrap_or(&[])
    }

    pub fn n_docs(&self) -> usize {
        self.doc_starts.len().saturating_sub(1)
    }

    /// Document index of a row.
    pub fn doc_of(&self, row: usize) -> usize {
        match self.doc_starts.binary_search(&row) {
            Ok(i) => i.min(self.n_docs().saturating_sub(1)),
            Err(i) => i.saturating_sub(1),
        }
    }

    /// Rows `[start, end)` of document `d`.
    pub fn doc_range(&self, d: usize) -> (usize, usize) {
        if d + 1 >= self.doc_starts.len() {
            return (0, 0);
        }
        (self.doc_starts[d], self.doc_starts[d + 1])
    }

    /// Checkpoint folders in the evaluated checkpoints' parent folders that the
    /// study does not hold yet (new checkpoints of the series).
    fn find_new_checkpoints(&self) -> Vec<(PathBuf, Option<i64>)> {
        let ck = self.checkpoints();
        let known: std::collections::HashSet<&str> =
            ck.iter().map(|c| c.name.as_str()).chain(self.incomplete.iter().map(|c| c.0.as_str())).collect();
        let mut parents: Vec<PathBuf> = ck.iter().filter_map(|c| c.path.parent().map(|p| p.to_path_buf())).collect();
        parents.sort();
        parents.dedup();
        let mut out = Vec::new();
        for p in parents {
            let Ok(rd) = std::fs::read_dir(&p) else { continue };
            for e in rd.flatten() {
                let path = e.path();
                let name = e.file_name().to_string_lossy().into_owned();
                if path.join("config.json").exists() && !name.contains(".tmp") && !crate::temp::is_temp_name(&name) && !known.contains(name.as_str()) {
                    // Only folders with a position (trainer_state.json or a step in the name) count as
                    // checkpoints of the series.
                    if let Ok(pos) = crate::eval::order::position(&path) {
                        if pos.step.is_some() {
                            out.push((name, pos, path));
                        }
                    }
                }
            }
        }
        // In training order where they can be ordered, else by name; the study places each
        // by its position when it is evaluated (`eval::order::merge`).
        out.sort_by(|a, b| a.0.cmp(&b.0));
        let items: Vec<(String, crate::eval::order::Position)> = out.iter().map(|(n, p, _)| (n.clone(), p.clone())).collect();
        match crate::eval::order::order(&items) {
            Ok(idx) => idx.into_iter().map(|i| (out[i].2.clone(), out[i].1.step.map(|s| s as i64))).collect(),
            Err(_) => out.into_iter().map(|o| (o.2, o.1.step.map(|s| s as i64))).collect(),
        }
    }

    /// Read the chunk holding `row` if it is not in memory (synchronously).
    pub fn ensure_chunk(&mut self, row: usize) {
        if self.n_rows == 0 {
            return;
        }
        let k = row / CHUNK;
        if self.chunks.contains_key(&k) {
            return;
        }
        let (c, w) = read_chunk(&self.root, self.checkpoints(), self.n_rows, k);
        self.warnings.extend(w);
        self.insert_chunk(k, c, k);
    }

    /// Keep a chunk read (here or in the background), dropping the one farthest
    /// from the cursor's chunk when too many are held.
    pub fn insert_chunk(&mut self, k: usize, c: Chunk, cursor_chunk: usize) {
        self.pending.remove(&k);
        if self.chunks.len() >= MAX_CHUNKS {
            if let Some(&far) = self.chunks.keys().filter(|&&c| c != k).max_by_key(|&&c| c.abs_diff(cursor_chunk)) {
                self.chunks.remove(&far);
            }
        }
        self.chunks.insert(k, c);
    }

    /// Chunks of rows `[lo, hi)` not in memory.
    pub fn missing_chunks(&self, lo: usize, hi: usize) -> Vec<usize> {
        let hi = hi.min(self.n_rows);
        if lo >= hi {
            return Vec::new();
        }
        (lo / CHUNK..=(hi - 1) / CHUNK).filter(|k| !self.chunks.contains_key(k)).collect()
    }

    /// Whether the texts of rows `[lo, hi)` are in memory.
    pub fn rows_loaded(&self, lo: usize, hi: usize) -> bool {
        self.all_texts.is_some() || self.missing_chunks(lo, hi).is_empty()
    }

    /// Read the chunks of rows `[lo, hi)` (synchronously).
    pub fn ensure_rows(&mut self, lo: usize, hi: usize) {
        for k in self.missing_chunks(lo, hi) {
            self.ensure_chunk(k * CHUNK);
        }
    }

    /// Text of a row (from a loaded chunk or the full text column; "" if not loaded).
    pub fn text(&self, row: usize) -> &str {
        if let Some(all) = &self.all_texts {
            return all.get(row).map(|s| s.as_str()).unwrap_or("");
        }
        self.chunks.get(&(row / CHUNK)).and_then(|c| c.texts.get(row % CHUNK)).map(|s| s.as_str()).unwrap_or("")
    }

    /// Losses of a row at every checkpoint, if its chunk is loaded.
    pub fn losses(&self, row: usize) -> Option<Vec<f32>> {
        let c = self.chunks.get(&(row / CHUNK))?;
        let i = row % CHUNK;
        let v: Option<Vec<f32>> = c.losses.iter().map(|l| l.get(i).copied()).collect();
        v.filter(|v| !v.is_empty())
    }

    /// Read every token text (for search and lists) synchronously; once.
    pub fn ensure_all_texts(&mut self) {
        if self.all_texts.is_some() || self.n_rows == 0 {
            return;
        }
        match read_all_texts(&self.root) {
            Ok((v, l)) => {
                self.all_texts = Some(v);
                self.all_lower = Some(l);
            }
            Err(e) => self.warnings.push(e.to_string()),
        }
    }
}

/// Every token text, and the same lower-cased.
pub fn read_all_texts(root: &Path) -> Result<(Vec<String>, Vec<String>)> {
    let p = root.join(TOKENS);
    let v = rd::scan(&p, &["text"], None, "run `rho eval`").and_then(|df| rd::strings(&df, "text", &p))?;
    let l = v.iter().map(|t| t.to_lowercase()).collect();
    Ok((v, l))
}

/// Read chunk `k` (token texts and the losses at every checkpoint of `ckpts`, the
/// study's entries); problems come back as warnings.
pub fn read_chunk(root: &Path, ckpts: &[CheckpointEntry], n_rows: usize, k: usize) -> (Chunk, Vec<String>) {
    let start = k * CHUNK;
    let len = CHUNK.min(n_rows.saturating_sub(start));
    let mut warnings = Vec::new();
    let mut c = Chunk::default();
    match read_slice_strings(&root.join(TOKENS), "text", start, len) {
        Ok(t) => c.texts = t,
        Err(e) => {
            warnings.push(e.to_string());
            c.texts = vec!["?".into(); len];
        }
    }
    for ck in ckpts {
        match read_losses_slice(&ck.loss_files(root), start, len) {
            Ok(v) if v.len() == len => c.losses.push(v),
            Ok(_) => c.losses.push(Vec::new()),
            Err(e) => {
                warnings.push(e.to_string());
                c.losses.push(Vec::new())
            }
        }
    }
    (c, warnings)
}

fn scan_slice(path: &Path, col_name: &str, start: usize, len: usize) -> Result<DataFrame> {
    let s = path.to_str().ok_or_else(|| Error::file(path, "path is not UTF-8"))?;
    let lf = LazyFrame::scan_parquet(PlPath::new(s), ScanArgsParquet::default()).map_err(|e| Error::file(path, e.to_string()))?;
    lf.slice(start as i64, len as IdxSize)
        .select([col(col_name)])
        .collect()
        .map_err(|e| Error::file(path, e.to_string()))
}

fn read_slice_strings(path: &Path, col_name: &str, start: usize, len: usize) -> Result<Vec<String>> {
    let df = scan_slice(path, col_name, start, len)?;
    rd::strings(&df, col_name, path)
}

/// Rows `start..start + len` of a checkpoint's losses (whole file or parts).
fn read_losses_slice(files: &[PathBuf], start: usize, len: usize) -> Result<Vec<f32>> {
    let df = crate::eval::study::scan_losses(files)?
        .slice(start as i64, len as IdxSize)
        .select([col("loss")])
        .collect()
        .with_path(&files[0])?;
    rd::f32s(&df, "loss", &files[0])
}

/// Mean loss per category at each checkpoint of the study (reads each losses
/// file's `loss` column once; run in the background).
pub fn category_means(root: &Path, ckpts: &[CheckpointEntry], cats: &[u8]) -> Result<Vec<[Option<f64>; 4]>> {
    let mut out = Vec::new();
    for ck in ckpts {
        let p = ck.loss_files(root)[0].clone();
        let df = crate::eval::study::read_checked_losses(root, ck, &["loss"])?;
        let l = rd::f32s(&df, "loss", &p)?;
        if l.len() != cats.len() {
            return Err(Error::file(&p, "rows do not match trajectories.parquet: run `rho categorize` again"));
        }
        let (mut sum, mut n) = ([0f64; 4], [0u64; 4]);
        for (&c, &v) in cats.iter().zip(&l) {
            if (c as usize) < 4 && v.is_finite() {
                sum[c as usize] += v as f64;
                n[c as usize] += 1;
            }
        }
        out.push(std::array::from_fn(|i| if n[i] > 0 { Some(sum[i] / n[i] as f64) } else { None }));
    }
    Ok(out)
}

/// The runs under `<study>/runs/` that have a metrics.jsonl, by name.
pub fn scan_runs(dir: &Path) -> Vec<RunInfo> {
    let Ok(rd) = std::fs::read_dir(dir) else { return Vec::new() };
    let mut out: Vec<RunInfo> = rd.flatten().filter(|e| e.path().join("metrics.jsonl").exists()).map(|e| read_run(&e.path())).collect();
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Parse metrics.jsonl lines (complete lines only).
pub fn parse_metrics(text: &str) -> Vec<StepMetrics> {
    text.lines().filter_map(|l| serde_json::from_str(l).ok()).collect()
}

pub fn run_checkpoints(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut ck: Vec<(u64, PathBuf)> = std::fs::read_dir(dir)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| {
                    let name = e.file_name().to_string_lossy().into_owned();
                    let step = name.strip_prefix("step-")?.parse::<u64>().ok()?;
                    e.path().join("config.json").exists().then_some((step, e.path()))
                })
                .collect()
        })
        .unwrap_or_default();
    ck.sort();
    ck
}

pub fn read_run(dir: &Path) -> RunInfo {
    let name = dir.file_name().unwrap_or_default().to_string_lossy().into_owned();
    let metrics = std::fs::read_to_string(dir.join("metrics.jsonl")).map(|t| parse_metrics(&t)).unwrap_or_default();
    let checkpoints = run_checkpoints(dir);
    let (mut mode, mut steps) = (String::from("?"), None);
    if let Some((_, last)) = checkpoints.last() {
        if let Ok(b) = std::fs::read(last.join("trainer_state.json")) {
            if let Ok(v) = serde_json::from_slice::<serde_json::Value>(&b) {
                let c = &v["config"];
                steps = c["steps"].as_u64();
                let m = c["mode"].as_str().unwrap_or("?");
                mode = if m == "slm" {
                    format!("slm {} {}", c["select"].as_str().unwrap_or("?"), c["ratio"].as_f64().map(|r| format!("{r:.2}")).unwrap_or_default())
                } else {
                    m.to_string()
                };
            }
        }
    }
    RunInfo { name, dir: dir.to_path_buf(), metrics, checkpoints, mode, steps }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn documents_from_seq() {
        let (s, q) = seq_starts(&[0, 0, 0, 2, 2, 5]);
        assert_eq!(s, vec![0, 3, 5, 6]);
        assert_eq!(q, vec![0, 2, 5]);
        let st = Study { doc_starts: s, n_rows: 6, ..Default::default() };
        assert_eq!(st.doc_of(0), 0);
        assert_eq!(st.doc_of(2), 0);
        assert_eq!(st.doc_of(3), 1);
        assert_eq!(st.doc_of(5), 2);
        assert_eq!(st.doc_range(1), (3, 5));
    }

    #[test]
    fn metrics_lines() {
        let l = r#"{"step":1,"loss_all":2.0,"loss_kept":1.5,"kept_frac":0.6,"excess_mean":null,"lr":0.001,"grad_norm":1.0,"tokens_per_s":100.0,"tokens_seen":10}"#;
        let m = parse_metrics(&format!("{l}\n{l}\n{{\"step\":"));
        assert_eq!(m.len(), 2);
        assert_eq!(m[0].kept_frac, 0.6);
    }
}
