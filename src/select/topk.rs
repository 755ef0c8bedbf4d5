//! Deterministic top-k over the valid positions of a flat score slice.

use std::cmp::Ordering;

/// Order of "better" positions: higher score first; NaN is the lowest score;
/// equal scores (including `-0.0 == 0.0`, and NaN vs NaN) go to the lower index.
/// A strict total order on (score, index) pairs, so the top-k set is unique.
fn rank(scores: &[f32], a: usize, b: usize) -> Ordering {
    let (x, y) = (scores[a], scores[b]);
    let by_score = match (x.is_nan(), y.is_nan()) {
        (true, true) => Ordering::Equal,
        (true, false) => Ordering::Greater, // NaN ranks after everything
        (false, true) => Ordering::Less,
        (false, false) => y.partial_cmp(&x).expect("neither is NaN"), // descending
    };
    by_score.then(a.cmp(&b))
}

/// Keeps the `k` valid positions with the highest scores.
///
/// `scores` and `valid` have the same length `n` (any flat layout; the
/// function does not care about rows). Returns a mask of length `n` with
/// exactly `min(k, n_valid)` `true`s, all at valid positions: padding
/// (`valid[i] == false`) is never kept, whatever its score.
///
/// Ties are broken deterministically: among equal scores the lower index is
/// kept first. NaN scores rank below every number (and among themselves by
/// index); callers that consider NaN an error should check first, as
/// [`super::select_mask`] does.
///
/// `O(n)` on average (`select_nth_unstable_by` on the valid indices).
///
/// Panics if `scores.len() != valid.len()`.
pub fn top_k_mask(scores: &[f32], valid: &[bool], k: usize) -> Vec<bool> {
    assert_eq!(
        scores.len(),
        valid.len(),
        "top_k_mask: scores and valid must have the same length"
    );
    let mut idx: Vec<usize> = (0..valid.len()).filter(|&i| valid[i]).collect();
    if k >= idx.len() {
        return valid.to_vec();
    }
    let mut mask = vec![false; valid.len()];
    if k == 0 {
        return mask;
    }
    // After this, idx[..k] are the k best under the strict total order `rank`.
    idx.select_nth_unstable_by(k - 1, |&a, &b| rank(scores, a, b));
    for &i in &idx[..k] {
        mask[i] = true;
    }
    mask
}
