//! Summary numbers for one selection step (for logs and metrics files).

use serde::Serialize;

/// What a selection kept, for one batch.
///
/// Means are computed in `f64`; a mean over an empty set is NaN
/// (serialized as `null` by serde_json).
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct SelectStats {
    /// Number of valid (non-padding) tokens.
    pub n_valid: usize,
    /// Number of kept tokens (kept and valid).
    pub n_kept: usize,
    /// Mean excess loss `loss - ref_loss` over the valid tokens;
    /// `None` when no reference losses were given.
    pub mean_excess: Option<f64>,
    /// Mean current loss over the valid tokens.
    pub loss_all: f64,
    /// Mean current loss over the kept tokens.
    pub loss_kept: f64,
}

/// Summarizes a selection: counts and mean losses.
///
/// `loss`, `ref_loss` (if given), `valid` and `kept` are flat slices of the
/// same length `b * s`. A kept position that is not valid is ignored (the
/// masks from [`super::select_mask`] never keep padding). The excess is
/// `loss - ref_loss` per token, as `f64`.
///
/// Panics if the lengths differ.
pub fn stats(
    loss: &[f32],
    ref_loss: Option<&[f32]>,
    valid: &[bool],
    kept: &[bool],
) -> SelectStats {
    let n = loss.len();
    assert_eq!(valid.len(), n, "stats: valid has {} values, loss has {n}", valid.len());
    assert_eq!(kept.len(), n, "stats: kept has {} values, loss has {n}", kept.len());
    if let Some(r) = ref_loss {
        assert_eq!(r.len(), n, "stats: ref_loss has {} values, loss has {n}", r.len());
    }
    let (mut n_valid, mut n_kept) = (0usize, 0usize);
    let (mut sum_all, mut sum_kept, mut sum_excess) = (0f64, 0f64, 0f64);
    for i in 0..n {
        if !valid[i] {
            continue;
        }
        let l = f64::from(loss[i]);
        n_valid += 1;
        sum_all += l;
        if let Some(r) = ref_loss {
            sum_excess += l - f64::from(r[i]);
        }
        if kept[i] {
            n_kept += 1;
            sum_kept += l;
        }
    }
    let mean = |sum: f64, count: usize| if count == 0 { f64::NAN } else { sum / count as f64 };
    SelectStats {
        n_valid,
        n_kept,
        mean_excess: ref_loss.map(|_| mean(sum_excess, n_valid)),
        loss_all: mean(sum_all, n_valid),
        loss_kept: mean(sum_kept, n_kept),
    }
}
