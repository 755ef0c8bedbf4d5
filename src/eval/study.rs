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
//! study.json lists the checkpoints in training order ([`super::order`]): as `rho eval`
//! resolved them (a folder's by position, folders given one by one as given), each run
//! merged into what the study holds by [`order::merge`]. Each records its `step` (null
//! when unknown; also the losses files' `step` column), `tokens_seen` and `stage` where
//! known. Readers keep that order; nothing re-sorts it.
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

use super::order::{self, Key};
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
    /// Training step: trainer_state.json's, else the folder name's (`eval::order`); `null`
    /// when neither gives one (a checkpoint listed by hand, e.g. `final`).
    #[serde(default)]
    pub step: Option<i64>,
    /// Training tokens seen (trainer_state.json, else the folder name: `tokens4B`, `-1.5T`), when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    /// Training stage (`stage2-…` names), when the name gives one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
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
    /// sha256 of the whole losses file, recorded when it was written and verified when it is
    /// read (absent in studies of an older rho, and for a sharded checkpoint: its part
    /// records hold each part's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

impl CheckpointEntry {
    /// What orders it among the study's checkpoints.
    pub fn key(&self) -> Key {
        Key { stage: self.stage, step: self.step.and_then(|s| u64::try_from(s).ok()), tokens: self.tokens_seen }
    }

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
    #[serde(default)]
    pub step: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stage: Option<u32>,
    /// The checkpoint's place in the order of the run that wrote the part (0-based).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub order: Option<u32>,
    /// The checkpoint before it in that run's order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
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
    /// sha256 of the part's parquet, recorded when it was written and verified when it is
    /// read (absent in records of an older rho).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sha256: Option<String>,
}

/// Whether a checkpoint name (read from study.json, a part record or a folder) can be what it
/// is used as: one file name inside the study (`losses/<name>.parquet`,
/// `losses/checkpoint=<name>/`). `Err`: why not.
pub fn check_name(name: &str) -> std::result::Result<(), &'static str> {
    if name.is_empty() {
        Err("is empty")
    } else if name == "." || name == ".." {
        Err("is `.` or `..`")
    } else if name.contains('/') || name.contains('\\') {
        Err("holds a path separator (`/` or `\\`): a checkpoint name is a folder name, never a path")
    } else if name.contains('\0') {
        Err("holds a NUL character")
    } else {
        Ok(())
    }
}

/// Remove rho's own temporaries of processes that are gone ([`crate::temp::remove_stale`]) in
/// the study folder, `losses/` and each `losses/checkpoint=<name>/`; nothing else is touched.
pub fn remove_stale(study: &Path) {
    crate::temp::remove_stale(study);
    let losses = study.join(LOSSES_DIR);
    crate::temp::remove_stale(&losses);
    if let Ok(rd) = std::fs::read_dir(&losses) {
        for e in rd.flatten() {
            if e.file_name().to_string_lossy().starts_with(SHARD_DIR_PREFIX) && e.file_type().is_ok_and(|t| t.is_dir()) {
                crate::temp::remove_stale(&e.path());
            }
        }
    }
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
            tokens_seen: first.tokens_seen,
            stage: first.stage,
            path: first.path.clone(),
            fingerprint: first.fingerprint.clone(),
            n_tokens: n,
            mean_loss: if n > 0 { sum / n as f64 } else { f64::NAN },
            shards: Some(self.shards),
            sha256: None,
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
        check_name(name).map_err(|why| Error::file(e.path(), format!("the checkpoint name {name:?} of this folder {why}")))?;
        let mut parts: Vec<PartEntry> = Vec::new();
        let mut stale_parts: Vec<PartEntry> = Vec::new();
        for f in std::fs::read_dir(e.path()).with_path(e.path())?.flatten() {
            let p = f.path();
            if p.extension().map(|x| x != "json").unwrap_or(true) {
                continue;
            }
            let Ok(bytes) = crate::limits::read_bounded(&p, crate::limits::MAX_JSON_BYTES, "a part record") else { continue };
            let Ok(part) = serde_json::from_slice::<PartEntry>(&bytes) else { continue };
            let shard = Shard { index: part.shard, count: part.shards };
            // A record counts only where its name and its parquet match (and its N is one rho writes).
            if part.name != name
                || part.shards == 0
                || part.shards > super::shard::MAX_SHARDS
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

/// The training order of a study's checkpoints (names): those of study.json as recorded,
/// then each checkpoint evaluated in shards (not in study.json, with a finished part) placed
/// from its part records: by position when every checkpoint has one and they agree
/// ([`order::by_position`]), else right after the checkpoint that preceded it in the run that
/// wrote it (`after`), in that run's order, or last.
pub fn series_order(whole: &[CheckpointEntry], sharded: &[ShardedCheckpoint]) -> Vec<String> {
    let mut parts: Vec<&PartEntry> =
        sharded.iter().filter(|sc| !whole.iter().any(|c| c.name == sc.name)).filter_map(|sc| sc.done.first()).collect();
    parts.sort_by(|a, b| a.order.unwrap_or(u32::MAX).cmp(&b.order.unwrap_or(u32::MAX)).then(a.name.cmp(&b.name)));
    let old: Vec<(String, Key)> = whole.iter().map(|c| (c.name.clone(), c.key())).collect();
    let run: Vec<(String, Key)> = parts
        .iter()
        .map(|p| (p.name.clone(), Key { stage: p.stage, step: p.step.and_then(|s| u64::try_from(s).ok()), tokens: p.tokens_seen }))
        .collect();
    if let Some(v) = order::by_position(&old, &run) {
        return v;
    }
    let mut out: Vec<String> = whole.iter().map(|c| c.name.clone()).collect();
    for p in parts {
        match p.after.as_ref().and_then(|a| out.iter().position(|n| n == a)) {
            Some(i) => out.insert(i + 1, p.name.clone()),
            None => out.push(p.name.clone()),
        }
    }
    out
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Manifest {
    /// Fingerprint of (data, tokenizer, settings) shared by every checkpoint of the study.
    pub fingerprint: String,
    /// The data file evaluated.
    pub data: PathBuf,
    /// Human-readable settings (pack, context, max_tokens, text_field...).
    pub settings: serde_json::Value,
    /// Evaluated checkpoints, in training order: as `rho eval` resolved them (a folder's by
    /// position, folders given one by one in the order given), runs merged by [`order::merge`].
    pub checkpoints: Vec<CheckpointEntry>,
    /// The vocabulary size the series shares (config.json's `vocab_size`): a later `rho eval`
    /// of checkpoints with another is refused. Absent in studies of an older rho.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
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
        let sharded = scan_sharded(study, &m.fingerprint)?;
        let series = series_order(&m.checkpoints, &sharded);
        for sc in sharded {
            if m.checkpoints.iter().any(|c| c.name == sc.name && c.shards.is_none()) {
                continue; // evaluated whole as well: the whole file is used
            }
            match sc.entry() {
                Some(e) => match m.checkpoints.iter_mut().find(|c| c.name == e.name) {
                    Some(c) => *c = e,
                    None => m.checkpoints.push(e),
                },
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
                    let list = |v: &[u32]| crate::limits::brief_list(v, ", ", 20);
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
                            super::status::ranges_brief(&sc.missing, 20),
                            study.display()
                        ),
                    ));
                }
            }
        }
        m.arrange(&series);
        Ok((m, incomplete))
    }

    /// `<study>/study.json` alone, as written (the checkpoints evaluated whole).
    pub fn load_file(study: &Path) -> Result<Manifest> {
        let p = Self::path(study);
        if !p.exists() {
            return Err(Error::file(&p, "no study here (study.json missing): run `rho eval` first"));
        }
        let bytes = crate::limits::read_bounded(&p, crate::limits::MAX_JSON_BYTES, "study.json")?;
        let m: Manifest = serde_json::from_slice(&bytes).with_path(&p)?;
        m.check(&p)?;
        Ok(m)
    }

    /// What study.json must hold to be read: names that are file names (no path: `check_name`),
    /// each checkpoint once, and a shard count rho writes (1..=MAX_SHARDS). An error names the
    /// file and the checkpoint.
    fn check(&self, p: &Path) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        for (i, c) in self.checkpoints.iter().enumerate() {
            check_name(&c.name).map_err(|why| {
                Error::file(p, format!("checkpoints[{i}]: the name {:?} {why}; refusing to use it as a file name in the study", c.name))
            })?;
            if !seen.insert(c.name.as_str()) {
                return Err(Error::file(
                    p,
                    format!("checkpoint `{}` is listed twice: which entry holds its losses is ambiguous (remove one)", c.name),
                ));
            }
            if let Some(n) = c.shards {
                if n == 0 || n > super::shard::MAX_SHARDS {
                    return Err(Error::file(
                        p,
                        format!("checkpoint `{}`: \"shards\": {n} is out of range (1 to {})", c.name, super::shard::MAX_SHARDS),
                    ));
                }
            }
        }
        Ok(())
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

    /// Put the checkpoints in the order of `names` (those not in it last, as they were).
    pub fn arrange(&mut self, names: &[String]) {
        let rank: std::collections::HashMap<&str, usize> = names.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
        self.checkpoints.sort_by_key(|c| rank.get(c.name.as_str()).copied().unwrap_or(usize::MAX));
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

impl CheckpointEntry {
    /// The losses files of this checkpoint, in row order, each checked against what the
    /// study records before it is read: it exists, holds the rows recorded (study.json's
    /// `n_tokens`, or its part record's, parts in order), only this checkpoint's name in its
    /// `checkpoint` column (a losses file copied under another checkpoint's name is refused),
    /// and, with `checksum` and where recorded (studies written since checksums exist), the
    /// sha256 written beside it. The row and name checks read only the Parquet footer; the
    /// checksum reads the file once. Returns each file with its row count. An error names
    /// the file.
    pub fn checked_loss_files(&self, study: &Path, checksum: bool) -> Result<Vec<(PathBuf, u64)>> {
        let Some(n) = self.shards else {
            let f = Manifest::losses_path(study, &self.name);
            let sha = if checksum { self.sha256.as_deref() } else { None };
            check_losses_file(&f, &self.name, self.n_tokens, sha, "study.json")?;
            return Ok(vec![(f, self.n_tokens)]);
        };
        let mut out = Vec::new();
        let mut row = 0u64;
        for i in 0..n {
            let sh = Shard { index: i, count: n };
            let rec_path = part_path(study, &self.name, sh, "json");
            let bytes = crate::limits::read_bounded(&rec_path, crate::limits::MAX_JSON_BYTES, "a part record")?;
            let rec: PartEntry = serde_json::from_slice(&bytes).with_path(&rec_path)?;
            if rec.name != self.name || rec.shard != i || rec.shards != n {
                return Err(Error::file(
                    &rec_path,
                    format!("records part {}/{} of `{}`, not part {sh} of `{}`", rec.shard, rec.shards, rec.name, self.name),
                ));
            }
            if rec.row_start != row {
                return Err(Error::file(
                    &rec_path,
                    format!("starts at row {}, but the parts before it end at row {row}: the parts do not line up", rec.row_start),
                ));
            }
            let f = part_path(study, &self.name, sh, "parquet");
            let sha = if checksum { rec.sha256.as_deref() } else { None };
            check_losses_file(&f, &self.name, rec.n_tokens, sha, "its part record")?;
            row += rec.n_tokens;
            out.push((f, rec.n_tokens));
        }
        if row != self.n_tokens {
            return Err(Error::file(
                shard_dir(study, &self.name),
                format!("the parts hold {row} rows, the study records {} for `{}`", self.n_tokens, self.name),
            ));
        }
        Ok(out)
    }
}

/// Check one losses file against its record (`what`: where the record is, for the message):
/// row count and `checkpoint` column from the Parquet footer (row-group statistics), then
/// the sha256 when given.
fn check_losses_file(f: &Path, name: &str, rows: u64, sha256: Option<&str>, what: &str) -> Result<()> {
    if !f.exists() {
        return Err(Error::file(f, "losses file missing (listed in the study): run `rho eval` again"));
    }
    let file = crate::limits::open_regular(f)?;
    // polars panics on some malformed footers: an error naming the file.
    /// Rows, each row group's (min, max) of the `checkpoint` column (None: no statistics),
    /// and whether every row group has that column.
    type Footer = (u64, Vec<Option<(Vec<u8>, Vec<u8>)>>, bool);
    let footer = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| -> PolarsResult<Footer> {
        let mut r = ParquetReader::new(file);
        let md = r.get_metadata()?;
        let mut names = Vec::new();
        let mut has_col = true;
        for rg in &md.row_groups {
            match rg.columns_under_root_iter("checkpoint").and_then(|mut it| it.next()) {
                Some(cc) => names.push(cc.metadata().statistics.as_ref().and_then(|st| Some((st.min_value.clone()?, st.max_value.clone()?)))),
                None => has_col = false,
            }
        }
        Ok((md.num_rows as u64, names, has_col))
    }));
    let (n, names, has_col) = match footer {
        Ok(r) => r.with_path(f)?,
        Err(p) => return Err(Error::file(f, format!("not a valid parquet file: {}", crate::data::panic_message(&*p)))),
    };
    if !has_col {
        return Err(Error::file(f, "has no `checkpoint` column: not a losses file written by `rho eval`"));
    }
    if n != rows {
        return Err(Error::file(
            f,
            format!("has {n} rows, but {what} records {rows} for checkpoint `{name}`: the file was changed or replaced; run `rho eval --force` on it again"),
        ));
    }
    let bad_name = |other: &str| {
        Error::file(
            f,
            format!(
                "holds the losses of checkpoint `{other}` (its `checkpoint` column), not of `{name}`: a losses file copied under \
                 another checkpoint's name? Run `rho eval --force` on `{name}` again"
            ),
        )
    };
    for st in &names {
        match st {
            Some((lo, hi)) if lo.as_slice() == name.as_bytes() && hi.as_slice() == name.as_bytes() => {}
            Some((lo, hi)) => {
                let other = if lo.as_slice() != name.as_bytes() { lo } else { hi };
                return Err(bad_name(&String::from_utf8_lossy(other)));
            }
            None => {
                // No statistics (a file not written by rho's writer): read the column.
                let df = scan_losses(&[f.to_path_buf()])?
                    .select([col("checkpoint").min().alias("lo"), col("checkpoint").max().alias("hi")])
                    .collect()
                    .with_path(f)?;
                let get = |c: &str| df.column(c).ok().and_then(|c| c.str().ok().and_then(|s| s.get(0).map(str::to_string)));
                for v in [get("lo"), get("hi")].into_iter().flatten() {
                    if v != name {
                        return Err(bad_name(&v));
                    }
                }
                break;
            }
        }
    }
    if let Some(want) = sha256 {
        let got = crate::util::sha256_file(f)?;
        if got != want {
            return Err(Error::file(
                f,
                format!(
                    "checksum mismatch: sha256 {got}, but {what} records {want} for checkpoint `{name}`: the file was changed \
                     after `rho eval` wrote it (corrupt, or edited); run `rho eval --force` on `{name}` again"
                ),
            ));
        }
    }
    Ok(())
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

/// Read `columns` of a checkpoint's losses into memory, its files checked first
/// ([`CheckpointEntry::checked_loss_files`], checksums included).
pub fn read_checked_losses(study: &Path, entry: &CheckpointEntry, columns: &[&str]) -> Result<DataFrame> {
    let files: Vec<PathBuf> = entry.checked_loss_files(study, true)?.into_iter().map(|f| f.0).collect();
    read_losses(&files, columns)
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_of_an_older_rho_still_read() {
        let e: CheckpointEntry = serde_json::from_str(
            r#"{"name":"step-100","step":100,"path":"/c/step-100","fingerprint":"fp","n_tokens":5,"mean_loss":2.0}"#,
        )
        .unwrap();
        assert_eq!((e.step, e.tokens_seen, e.stage), (Some(100), None, None));
        let p: PartEntry = serde_json::from_str(
            r#"{"name":"c1","step":200,"path":"/c/c1","fingerprint":"fp","shard":0,"shards":2,"row_start":0,"n_tokens":3,"loss_sum":1.5}"#,
        )
        .unwrap();
        assert_eq!((p.step, p.order, p.after), (Some(200), None, None));
        // a step that neither trainer_state.json nor the name gave is written as null
        let mut e2 = e.clone();
        e2.step = None;
        e2.tokens_seen = Some(7);
        let v: serde_json::Value = serde_json::to_value(&e2).unwrap();
        assert!(v["step"].is_null() && v["tokens_seen"] == 7 && v.get("stage").is_none(), "{v}");
        // still no unknown field in a part record
        assert!(serde_json::from_str::<PartEntry>(r#"{"name":"c1","step":1,"path":"/","fingerprint":"f","shard":0,"shards":1,"row_start":0,"n_tokens":1,"loss_sum":1,"color":3}"#).is_err());
    }

    fn whole(name: &str, step: Option<i64>) -> CheckpointEntry {
        CheckpointEntry {
            name: name.into(),
            step,
            tokens_seen: None,
            stage: None,
            path: PathBuf::from(format!("/c/{name}")),
            fingerprint: "fp".into(),
            n_tokens: 1,
            mean_loss: 1.0,
            shards: None,
            sha256: None,
        }
    }

    fn sharded(name: &str, step: Option<i64>, order: Option<u32>, after: Option<&str>) -> ShardedCheckpoint {
        let part = PartEntry {
            name: name.into(),
            step,
            tokens_seen: None,
            stage: None,
            order,
            after: after.map(str::to_string),
            path: PathBuf::from(format!("/c/{name}")),
            fingerprint: "fp".into(),
            shard: 0,
            shards: 1,
            row_start: 0,
            n_tokens: 1,
            loss_sum: 1.0,
            sha256: None,
        };
        ShardedCheckpoint { name: name.into(), shards: 1, done: vec![part], missing: vec![], stale: vec![] }
    }

    #[test]
    fn sharded_checkpoints_take_their_place_in_the_series() {
        // names without steps: each after the one that preceded it in its run, in the run's order
        // (scan_sharded lists them by name: c, d, e)
        let w = [whole("early", None), whole("late", None)];
        let sc = [sharded("c-mid2", None, Some(2), Some("b-mid1")), sharded("b-mid1", None, Some(1), Some("early")), sharded("z-last", None, Some(3), Some("late"))];
        assert_eq!(series_order(&w, &sc), ["early", "b-mid1", "c-mid2", "late", "z-last"]);
        // a study evaluated only in shards: the run's order, not the names'
        let sc = [sharded("a", None, Some(2), Some("c")), sharded("b", None, Some(1), Some("c")), sharded("c", None, Some(0), None)];
        assert_eq!(series_order(&[], &sc)[0], "c");
        let sc = [sharded("a", None, Some(2), Some("b")), sharded("b", None, Some(1), Some("c")), sharded("c", None, Some(0), None)];
        assert_eq!(series_order(&[], &sc), ["c", "b", "a"]);
        // with steps: by position
        let w = [whole("s0", Some(0)), whole("s200", Some(200))];
        assert_eq!(series_order(&w, &[sharded("s100", Some(100), Some(0), None)]), ["s0", "s100", "s200"]);
        // parts of an older rho (no order): after the study's, by name
        assert_eq!(series_order(&[whole("x", None)], &[sharded("b", None, None, None), sharded("a", None, None, None)]), ["x", "a", "b"]);
    }

    #[test]
    fn checkpoint_names_are_file_names() {
        for good in ["step-100", "checkpoint-7", "final", "a.b", "..a", "x..", "stage2-tokens4B"] {
            assert!(check_name(good).is_ok(), "{good}");
        }
        for bad in ["", ".", "..", "../../x/victim", "/etc/passwd", "a/b", "a\\b", "..\\x", "a\0b"] {
            assert!(check_name(bad).is_err(), "{bad:?}");
        }
        // study.json with such a name is refused, naming the file and the entry
        let dir = tempfile::tempdir().unwrap();
        let mut m = Manifest { fingerprint: "fp".into(), checkpoints: vec![whole("ok", Some(1)), whole("../../x/victim", Some(2))], ..Default::default() };
        m.save(dir.path()).unwrap();
        let e = Manifest::load(dir.path()).unwrap_err();
        assert!(matches!(&e, Error::File { path, .. } if *path == Manifest::path(dir.path())), "{e}");
        assert!(e.to_string().contains("checkpoints[1]") && e.to_string().contains("../../x/victim"), "{e}");
        m.checkpoints[1].name = "/abs/victim".into();
        m.save(dir.path()).unwrap();
        assert!(Manifest::load_or_default(dir.path()).is_err());
        // a part folder `checkpoint=..`
        m.checkpoints.pop();
        m.save(dir.path()).unwrap();
        std::fs::create_dir_all(dir.path().join("losses/checkpoint=..")).unwrap();
        let e = Manifest::load(dir.path()).unwrap_err().to_string();
        assert!(e.contains("checkpoint=..") && e.contains("`..`"), "{e}");
    }

    #[test]
    fn arrange_keeps_the_rest_last() {
        let mut m = Manifest { checkpoints: vec![whole("a", None), whole("b", None), whole("c", None), whole("d", None)], ..Default::default() };
        m.arrange(&["c".into(), "a".into()]);
        let names: Vec<&str> = m.checkpoints.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names, ["c", "a", "b", "d"]);
    }
}
