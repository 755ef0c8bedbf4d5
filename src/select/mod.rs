//! Selective Language Modeling (Rho-1, arXiv 2404.07965): which tokens of a
//! training batch contribute to the loss.
//!
//! Everything here is a pure function over flat, row-major slices of one
//! batch of `b` sequences x `s` positions (length `b * s`, index `row * s + pos`),
//! with a `valid` mask where `false` marks padding. Padding is never kept.
//!
//! The paper's rule is [`Select::Batch`]: keep the top `ceil(ratio * N)` of the
//! `N` valid tokens of the batch by *excess loss* `loss - ref_loss`, where
//! `ref_loss` comes from a reference model. The other modes are ablations.

mod ratio;
mod stats;
mod topk;
#[cfg(test)]
mod tests;

use std::fmt;
use std::str::FromStr;

use rand::rngs::StdRng;
use rand::SeedableRng;
use serde::{Deserialize, Serialize};

use crate::{Error, Result};

pub use ratio::{check_ratio, n_keep};
pub use stats::{stats, SelectStats};
pub use topk::top_k_mask;

/// How tokens are selected for the training loss.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Select {
    /// Top `ceil(ratio * N)` of the `N` valid tokens of the whole batch, by
    /// excess loss `loss - ref_loss` (the Rho-1 rule). Needs reference losses.
    Batch,
    /// Top `ceil(ratio * n_row)` of each row's `n_row` valid tokens, by excess
    /// loss. Needs reference losses.
    Sequence,
    /// A uniformly random `ceil(ratio * N)` of the valid tokens, fixed by a seed.
    Random,
    /// Top `ceil(ratio * N)` of the batch by current loss alone (no reference).
    Loss,
}

impl Select {
    /// All modes, in the order listed in messages.
    pub const ALL: [Select; 4] = [Select::Batch, Select::Sequence, Select::Random, Select::Loss];

    /// The lowercase name used on the command line and in serialized configs.
    pub fn as_str(self) -> &'static str {
        match self {
            Select::Batch => "batch",
            Select::Sequence => "sequence",
            Select::Random => "random",
            Select::Loss => "loss",
        }
    }

    /// Whether this mode scores tokens by excess loss and so needs reference losses.
    pub fn needs_reference(self) -> bool {
        matches!(self, Select::Batch | Select::Sequence)
    }
}

impl fmt::Display for Select {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Select {
    type Err = Error;

    /// Parses `batch`, `sequence`, `random` or `loss` (ASCII case-insensitive).
    /// Errors with `Error::flag("--select", ...)` listing the valid values.
    fn from_str(s: &str) -> Result<Self> {
        Select::ALL
            .into_iter()
            .find(|m| m.as_str().eq_ignore_ascii_case(s.trim()))
            .ok_or_else(|| {
                let names: Vec<&str> = Select::ALL.iter().map(|m| m.as_str()).collect();
                Error::flag(
                    "--select",
                    format!("unknown selection mode '{s}'; expected one of: {}", names.join(", ")),
                )
            })
    }
}

/// Checks that a flat slice named `what` has `b * s` values.
fn check_len(what: &str, len: usize, b: usize, s: usize) -> Result<()> {
    let expected = b.checked_mul(s).ok_or_else(|| Error::msg(format!("b*s = {b}*{s} overflows")))?;
    if len == expected {
        Ok(())
    } else {
        Err(Error::msg(format!("{what} has {len} values, expected b*s = {b}*{s} = {expected}")))
    }
}

/// Per-token excess loss `loss - ref_loss` (in `f32`). Errors if a valid
/// token's excess is NaN, naming its row and position; padding may hold anything.
fn excess_scores(loss: &[f32], ref_loss: &[f32], valid: &[bool], s: usize) -> Result<Vec<f32>> {
    let excess: Vec<f32> = loss.iter().zip(ref_loss).map(|(l, r)| l - r).collect();
    if let Some(i) = (0..excess.len()).find(|&i| valid[i] && excess[i].is_nan()) {
        return Err(Error::msg(format!(
            "excess loss is NaN at row {}, position {} (loss = {}, reference loss = {})",
            i / s,
            i % s,
            loss[i],
            ref_loss[i]
        )));
    }
    Ok(excess)
}

/// Errors if a valid token's loss is NaN, naming its row and position.
fn check_not_nan(loss: &[f32], valid: &[bool], s: usize) -> Result<()> {
    match (0..loss.len()).find(|&i| valid[i] && loss[i].is_nan()) {
        Some(i) => Err(Error::msg(format!("loss is NaN at row {}, position {}", i / s, i % s))),
        None => Ok(()),
    }
}

/// A uniformly random subset of `n_keep(N, ratio)` of the `N` valid positions,
/// a pure function of `(valid, ratio, seed)` (StdRng of rand 0.9).
fn random_mask(valid: &[bool], ratio: f64, seed: u64) -> Vec<bool> {
    let idx: Vec<usize> = (0..valid.len()).filter(|&i| valid[i]).collect();
    let k = n_keep(idx.len(), ratio);
    if k == idx.len() {
        return valid.to_vec();
    }
    let mut rng = StdRng::seed_from_u64(seed);
    let mut mask = vec![false; valid.len()];
    for j in rand::seq::index::sample(&mut rng, idx.len(), k) {
        mask[idx[j]] = true;
    }
    mask
}

/// The selection mask for one training batch: `true` = the token's loss is trained on.
///
/// * `loss`: current per-token losses, flat `b * s`, row-major.
/// * `ref_loss`: reference-model losses, same shape; required by
///   [`Select::Batch`] and [`Select::Sequence`], ignored (not even
///   length-checked) by [`Select::Random`] and [`Select::Loss`].
/// * `valid`: `false` marks padding; padding is never kept.
/// * `ratio`: fraction kept, in `(0, 1]`; the count is [`n_keep`]`(n, ratio)`
///   (an exact ceiling) over the batch's valid tokens, or over each row's
///   for [`Select::Sequence`]. With `ratio == 1.0` the mask equals `valid`.
/// * `seed`: used only by [`Select::Random`] (pass a per-step seed); the mask
///   is a deterministic function of the seed.
///
/// Score-based modes pick exactly the top-k by score (see [`top_k_mask`]:
/// equal scores keep the lower flat index first). A NaN score at a valid
/// position is an error naming its row and position.
///
/// Errors: bad ratio (`--ratio` flag error), a slice whose length is not
/// `b * s` ("loss has 10 values, expected b*s = 2*6 = 12"), missing
/// reference losses for batch/sequence, NaN scores.
#[allow(clippy::too_many_arguments)]
pub fn select_mask(
    how: Select,
    loss: &[f32],
    ref_loss: Option<&[f32]>,
    valid: &[bool],
    b: usize,
    s: usize,
    ratio: f64,
    seed: u64,
) -> Result<Vec<bool>> {
    check_ratio(ratio)?;
    check_len("loss", loss.len(), b, s)?;
    check_len("valid", valid.len(), b, s)?;
    let reference = || -> Result<&[f32]> {
        let r = ref_loss.ok_or_else(|| {
            Error::msg(format!(
                "--select {how} needs reference losses (--reference or --ref-scores)"
            ))
        })?;
        check_len("ref_loss", r.len(), b, s)?;
        Ok(r)
    };
    let n_valid = valid.iter().filter(|&&v| v).count();
    Ok(match how {
        Select::Batch => {
            let excess = excess_scores(loss, reference()?, valid, s)?;
            top_k_mask(&excess, valid, n_keep(n_valid, ratio))
        }
        Select::Sequence => {
            let excess = excess_scores(loss, reference()?, valid, s)?;
            let mut mask = Vec::with_capacity(b * s);
            for row in 0..b {
                let span = row * s..(row + 1) * s;
                let row_valid = &valid[span.clone()];
                let n_row = row_valid.iter().filter(|&&v| v).count();
                mask.extend(top_k_mask(&excess[span], row_valid, n_keep(n_row, ratio)));
            }
            mask
        }
        Select::Loss => {
            check_not_nan(loss, valid, s)?;
            top_k_mask(loss, valid, n_keep(n_valid, ratio))
        }
        Select::Random => random_mask(valid, ratio, seed),
    })
}
