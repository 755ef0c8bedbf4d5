//! The study folder: what `rho eval` writes and every reader reads.
//!
//! ```text
//! <study>/study.json            manifest (this module's `Manifest`)
//! <study>/tokens.parquet        seq, pos, doc, token_id, text, start, end  (one row per scored token)
//! <study>/losses/<name>.parquet checkpoint, step, seq, pos, token_id, loss (one file per checkpoint)
//! <study>/trajectories.parquet  written by `rho categorize`
//! ```
//! Every losses file of a study has the same rows in the same order (same data,
//! tokenizer and settings: the fingerprint), so readers can stack loss columns.
//!
//! A sharded evaluation (`rho eval --shard I/N`) writes each checkpoint's losses
//! in hive-style partitions instead, one part per shard, each with a small JSON
//! record written after it (the part is done when its record exists):
//! ```text
//! <study>/losses/checkpoint=<name>/part-<I>-of-<N>.parquet   rows of shard I, same columns
//! <study>/losses/checkpoint=<name>/part-<I>-of-<N>.json      PartEntry
//! ```
//! The parts `0..N` concatenated in order are the whole losses file. Shards do
//! not write the checkpoint list of study.json (they run concurrently): [`Manifest::load`]
//! adds every checkpoint whose parts are all present, and refuses a study with a
//! checkpoint whose parts are not all there (naming them); `rho status` lists both.

use super::shard::Shard;
use crate::error::{Error, Result, WithPath};
use polars::prelude::*;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "study.json";
pub const TOKENS: &str = "tokens.parquet";
pub const LOSSES_DIR: &str = "losses";
pub const TRAJECTORIES: &str = "trajectories.parquet";
/// Hive-style folder prefix of a sharded checkpoint's parts.
pub const SHARD_DIR_PREFIX: &str = "checkpoint=";

/// One evaluated checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CheckpointEntry {
    /// Folder name of the checkpoint; also the losses file stem.
    pub name: String,
    /// Training step parsed from the name (0 when the name has no number).
    pub step: i64,
    /// Where the checkpoint was read from.
    pub path: PathBuf,
    /// Fingerprint of (data, tokenizer, settings) the losses were computed with.
    pub fingerprint: String,
    /// Number of scored tokens (rows in the losses file).
    pub n_tokens: u64,
    /// Mean loss over all scored tokens.
    pub mean_loss: f64,
    /// Number of parts when evaluated in shards (`losses/checkpoint=<name>/`);
    /// absent for a whole losses file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
}

impl CheckpointEntry {
    /// The losses files of this checkpoint, in row order: the whole file, or the parts.
    pub fn loss_files(&self, study: &Path) -> Vec<PathBuf> {
        match self.shards {
            None => vec![Manifest::losses_path(study, &self.name)],
            Some(n) => (0..n)
                .map(|i| part_path(study, &self.name, Shard { index: i, count: n }, "parquet"))
                .collect(),
        }
    }
}

/// The record of one finished part of a sharded checkpoint (`part-<I>-of-<N>.json`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct PartEntry {
    pub name: String,
    pub step: i64,
    pub path: PathBuf,
    pub fingerprint: String,
    /// I of `--shard I/N`.
    pub shard: u32,
    /// N of `--shard I/N`.
    pub shards: u32,
    /// The part's first row in the study's row order.
    pub row_start: u64,
    pub n_tokens: u64,
    /// Sum of the part's losses (for the checkpoint's mean).
    pub loss_sum: f64,
}

/// `<study>/losses/checkpoint=<name>`
pub fn shard_dir(study: &Path, name: &str) -> PathBuf {
    study.join(LOSSES_DIR).join(format!("{SHARD_DIR_PREFIX}{name}"))
}

/// `<study>/losses/checkpoint=<name>/part-<I>-of-<N>.<ext>`
pub fn part_path(study: &Path, name: &str, shard: Shard, ext: &str) -> PathBuf {
    shard_dir(study, name).join(format!("{}.{ext}", shard.stem()))
}

/// What is on disk for one sharded checkpoint.
#[derive(Debug, Clone, PartialEq)]
pub struct ShardedCheckpoint {
    pub name: String,
    /// N (the most common N when parts of several shard counts are present).
    pub shards: u32,
    /// Finished parts with the study's fingerprint, by shard index.
    pub done: Vec<PartEntry>,
    /// Shard indices with no finished part (or one from other settings).
    pub missing: Vec<u32>,
    /// Parts present but written with other data, tokenizer or settings.
    pub stale: Vec<u32>,
}

impl ShardedCheckpoint {
    pub fn is_complete(&self) -> bool {
        self.missing.is_empty()
    }

    /// The manifest entry of a complete sharded checkpoint.
    fn entry(&self) -> Option<CheckpointEntry> {
        let first = self.done.first()?;
        if !self.is_complete() {
            return None;
        }
        let n: u64 = self.done.iter().map(|p| p.n_tokens).sum();
        let sum: f64 = self.done.iter().map(|p| p.loss_sum).sum();
        Some(CheckpointEntry {
            name: self.name.clone(),
            step: first.step,
            path: first.path.clone(),
            fingerprint: first.fingerprint.clone(),
            n_tokens: n,
            mean_loss: if n > 0 { sum / n as f64 } else { f64::NAN },
            shards: Some(self.shards),
        })
    }
}

/// Read the part records under `<study>/losses/checkpoint=*/` against the study's
/// fingerprint. Unreadable records count as missing parts.
pub fn scan_sharded(study: &Path, fingerprint: &str) -> Result<Vec<ShardedCheckpoint>> {
    let dir = study.join(LOSSES_DIR);
    let Ok(rd) = std::fs::read_dir(&dir) else { return Ok(Vec::new()) };
    let mut out = Vec::new();
    for e in rd.flatten() {
        let fname = e.file_name().to_string_lossy().into_owned();
        let Some(name) = fname.strip_prefix(SHARD_DIR_PREFIX) else { continue };
        if !e.path().is_dir() {
            continue;
        }
        let mut parts: Vec<PartEntry> = Vec::new();
        let mut stale_parts: Vec<PartEntry> = Vec::new();
        for f in std::fs::read_dir(e.path()).with_path(e.path())?.flatten() {
            let p = f.path();
            if p.extension().map(|x| x != "json").unwrap_or(true) {
                continue;
            }
            let Ok(bytes) = std::fs::read(&p) else { continue };
            let Ok(part) = serde_json::from_slice::<PartEntry>(&bytes) else { continue };
            let shard = Shard { index: part.shard, count: part.shards };
            // A record counts only where its name and its parquet match.
            if part.name != name
                || part.shards == 0
                || part.shard >= part.shards
                || p.file_stem().map(|s| s.to_string_lossy() != shard.stem()).unwrap_or(true)
                || !part_path(study, name, shard, "parquet").exists()
            {
                continue;
            }
            if part.fingerprint == fingerprint {
                parts.push(part);
            } else {
                stale_parts.push(part);
            }
        }
        // N: the shard count with the most finished parts (ties: the largest N).
        let mut counts: Vec<(usize, u32)> = Vec::new();
        for p in parts.iter().chain(&stale_parts) {
            match counts.iter_mut().find(|c| c.1 == p.shards) {
                Some(c) => c.0 += 1,
                None => counts.push((1, p.shards)),
            }
        }
        let Some(&(_, n)) = counts.iter().max() else {
            out.push(ShardedCheckpoint { name: name.to_string(), shards: 0, done: vec![], missing: vec![], stale: vec![] });
            continue;
        };
        parts.retain(|p| p.shards == n);
        parts.sort_by_key(|p| p.shard);
        let mut stale: Vec<u32> = stale_parts.iter().filter(|p| p.shards == n).map(|p| p.shard).collect();
        stale.sort();
        let missing = (0..n).filter(|i| !parts.iter().any(|p| p.shard == *i)).collect();
        out.push(ShardedCheckpoint { name: name.to_string(), shards: n, done: parts, missing, stale });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(out)
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Fingerprint of (data, tokenizer, settings) shared by every checkpoint of the study.
    pub fingerprint: String,
    /// The data file evaluated.
    pub data: PathBuf,
    /// Human-readable settings (pack, context, max_tokens, text_field...).
    pub settings: serde_json::Value,
    /// Evaluated checkpoints, ordered by step (then name).
    pub checkpoints: Vec<CheckpointEntry>,
}

impl Manifest {
    pub fn path(study: &Path) -> PathBuf {
        study.join(MANIFEST)
    }

    /// Load the study for reading: `<study>/study.json` plus every checkpoint
    /// evaluated in shards whose parts are all present. A missing manifest, or a
    /// sharded checkpoint with parts missing, is an error naming what is missing.
    pub fn load(study: &Path) -> Result<Manifest> {
        let (m, incomplete) = Self::load_partial(study)?;
        match incomplete.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(m),
        }
    }

    /// Like [`Manifest::load`], but an incomplete sharded checkpoint is left out
    /// instead of refused: the manifest of what is complete, and one error per
    /// incomplete checkpoint (for a viewer that shows a study while it is evaluated).
    pub fn load_partial(study: &Path) -> Result<(Manifest, Vec<Error>)> {
        let mut m = Self::load_file(study)?;
        let mut incomplete = Vec::new();
        for sc in scan_sharded(study, &m.fingerprint)? {
            if m.checkpoints.iter().any(|c| c.name == sc.name && c.shards.is_none()) {
                continue; // evaluated whole as well: the whole file is used
            }
            match sc.entry() {
                Some(e) => {
                    m.checkpoints.retain(|c| c.name != e.name);
                    m.checkpoints.push(e);
                }
                None if sc.shards == 0 => incomplete.push(Error::file(
                    shard_dir(study, &sc.name),
                    format!(
                        "incomplete: checkpoint `{}` has no finished part yet (a shard is running, or was \
                         stopped before its first part); `rho status --study {}` lists what is missing",
                        sc.name,
                        study.display()
                    ),
                )),
                None => {
                    let list = |v: &[u32]| v.iter().map(|i| i.to_string()).collect::<Vec<_>>().join(", ");
                    let stale = if sc.stale.is_empty() {
                        String::new()
                    } else {
                        format!(" (parts {} were written with other data or settings)", list(&sc.stale))
                    };
                    incomplete.push(Error::file(
                        shard_dir(study, &sc.name),
                        format!(
                            "incomplete: checkpoint `{}` has {} of {} parts; missing shards {}{stale}. \
                             Run `rho eval ... --shard I/{}` for each (or re-submit them: `rho slurm eval ... --array {}`); \
                             `rho status --study {}` lists what is missing",
                            sc.name,
                            sc.done.len(),
                            sc.shards,
                            list(&sc.missing),
                            sc.shards,
                            list(&sc.missing).replace(' ', ""),
                            study.display()
                        ),
                    ));
                }
            }
        }
        m.sort();
        Ok((m, incomplete))
    }

    /// `<study>/study.json` alone, as written (the checkpoints evaluated whole).
    pub fn load_file(study: &Path) -> Result<Manifest> {
        let p = Self::path(study);
        let bytes = std::fs::read(&p).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::file(&p, "no study here (study.json missing): run `rho eval` first")
            } else {
                Error::io(&p, e)
            }
        })?;
        serde_json::from_slice(&bytes).with_path(&p)
    }

    /// `study.json` as written, or an empty manifest when there is none.
    pub fn load_or_default(study: &Path) -> Result<Manifest> {
        if Self::path(study).exists() {
            Self::load_file(study)
        } else {
            Ok(Manifest::default())
        }
    }

    /// Save atomically.
    pub fn save(&self, study: &Path) -> Result<()> {
        let p = Self::path(study);
        let bytes = serde_json::to_vec_pretty(self).map_err(|e| Error::msg(e.to_string()))?;
        crate::util::write_bytes_atomic(&p, &bytes)
    }

    /// Sort checkpoints by (step, name).
    pub fn sort(&mut self) {
        self.checkpoints.sort_by(|a, b| a.step.cmp(&b.step).then(a.name.cmp(&b.name)));
    }

    /// The whole losses file of a checkpoint (`losses/<name>.parquet`).
    pub fn losses_path(study: &Path, name: &str) -> PathBuf {
        study.join(LOSSES_DIR).join(format!("{name}.parquet"))
    }

    /// The checkpoint named `name`.
    pub fn entry(&self, study: &Path, name: &str) -> Result<&CheckpointEntry> {
        self.checkpoints
            .iter()
            .find(|c| c.name == name)
            .ok_or_else(|| Error::file(Self::path(study), format!("no checkpoint `{name}` in the study")))
    }
}

fn utf8(path: &Path) -> Result<&str> {
    path.to_str().ok_or_else(|| Error::file(path, "path is not UTF-8"))
}

/// A lazy scan of a checkpoint's losses, whole or in parts (rows in study order).
/// A missing file is an error naming it.
pub fn scan_losses(files: &[PathBuf]) -> Result<LazyFrame> {
    for f in files {
        if !f.exists() {
            return Err(Error::file(f, "losses file missing (listed in the study): run `rho eval` again"));
        }
    }
    let first = files.first().ok_or_else(|| Error::msg("no losses file to read"))?;
    let paths = files.iter().map(|f| utf8(f).map(PlPath::new)).collect::<Result<Vec<_>>>()?;
    let mut args = ScanArgsParquet::default();
    args.hive_options.enabled = Some(false);
    LazyFrame::scan_parquet_files(paths.into_iter().collect(), args).map_err(|e| Error::file(first, e.to_string()))
}

/// Read `columns` of a checkpoint's losses, whole or in parts, into memory.
/// Errors name the file (the first part for an error spanning parts).
pub fn read_losses(files: &[PathBuf], columns: &[&str]) -> Result<DataFrame> {
    let cols: Vec<Expr> = columns.iter().map(|c| col(*c)).collect();
    if let [one] = files {
        return scan_losses(files)?.select(cols).collect().with_path(one);
    }
    // Parts one by one, so that an error names the part.
    let mut out: Option<DataFrame> = None;
    for f in files {
        let df = scan_losses(std::slice::from_ref(f))?.select(cols.clone()).collect().with_path(f)?;
        match &mut out {
            None => out = Some(df),
            Some(o) => {
                o.vstack_mut(&df).with_path(f)?;
            }
        }
    }
    let mut df = out.ok_or_else(|| Error::msg("no losses file to read"))?;
    df.align_chunks_par();
    Ok(df)
}
