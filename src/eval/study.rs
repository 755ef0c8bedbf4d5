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

use crate::error::{Error, Result, WithPath};
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

pub const MANIFEST: &str = "study.json";
pub const TOKENS: &str = "tokens.parquet";
pub const LOSSES_DIR: &str = "losses";
pub const TRAJECTORIES: &str = "trajectories.parquet";

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

    /// Load `<study>/study.json`. A missing manifest is an error naming the study.
    pub fn load(study: &Path) -> Result<Manifest> {
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

    pub fn load_or_default(study: &Path) -> Result<Manifest> {
        if Self::path(study).exists() {
            Self::load(study)
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

    pub fn losses_path(study: &Path, name: &str) -> PathBuf {
        study.join(LOSSES_DIR).join(format!("{name}.parquet"))
    }
}
