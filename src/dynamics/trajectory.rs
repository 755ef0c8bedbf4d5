//! Per-token loss trajectories -> categories (pure, no I/O).
//!
//! Rho-1 (v1) Appendix B.1: fit a line to each token's loss over the
//! checkpoint series; a clear fall is H->L, a clear rise L->H, and a token
//! with no clear trend is L->L or H->H depending on whether its final loss is
//! at most the mean final loss of all tokens.

use super::category::Category;
use crate::error::{Error, Result};

/// Statistics and category of one token's loss trajectory.
///
/// All values are computed in f64 from the f32 losses.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct TokenTrajectory {
    pub category: Category,
    /// ΔL: fitted loss at the last checkpoint minus fitted loss at the first
    /// (`slope * (n_ckpt - 1)`).
    pub delta: f64,
    /// Least-squares slope of loss against checkpoint index 0..n_ckpt-1
    /// (loss per checkpoint, not per training step).
    pub slope: f64,
    /// Raw loss at the first checkpoint.
    pub first_loss: f64,
    /// Raw loss at the last checkpoint.
    pub last_loss: f64,
    /// Mean loss over checkpoints.
    pub mean_loss: f64,
    /// Population standard deviation of the loss over checkpoints.
    pub std_loss: f64,
    /// Population standard deviation of the residuals around the fitted line:
    /// `sqrt(sum(residual^2) / n_ckpt)`.
    pub residual_std: f64,
}

/// Result of [`categorize`].
#[derive(Debug, Clone, PartialEq)]
pub struct Categorization {
    /// One entry per token, in input order.
    pub trajectories: Vec<TokenTrajectory>,
    /// L_mean: mean loss of all tokens at the last checkpoint.
    pub l_mean: f64,
}

/// Check a categorization threshold: finite and >= 0.
pub fn check_threshold(threshold: f64) -> Result<()> {
    if !threshold.is_finite() || threshold < 0.0 {
        return Err(Error::flag(
            "--threshold",
            format!("must be a finite number >= 0, got {threshold}"),
        ));
    }
    Ok(())
}

/// Least-squares statistics of one trajectory `y` at x = 0..y.len()-1 (len >= 2).
/// Returns the trajectory with a placeholder category (decided later, once L_mean is known).
fn fit(y: impl Iterator<Item = f64> + Clone, n: usize) -> TokenTrajectory {
    let nf = n as f64;
    let x_mean = (nf - 1.0) / 2.0;
    let mut sum = 0.0;
    let mut first = 0.0;
    let mut last = 0.0;
    for (i, v) in y.clone().enumerate() {
        if i == 0 {
            first = v;
        }
        last = v;
        sum += v;
    }
    let y_mean = sum / nf;
    let (mut sxx, mut sxy, mut syy) = (0.0, 0.0, 0.0);
    for (i, v) in y.clone().enumerate() {
        let dx = i as f64 - x_mean;
        let dy = v - y_mean;
        sxx += dx * dx;
        sxy += dx * dy;
        syy += dy * dy;
    }
    let slope = sxy / sxx;
    let intercept = y_mean - slope * x_mean;
    let mut ss_res = 0.0;
    for (i, v) in y.enumerate() {
        let r = v - (intercept + slope * i as f64);
        ss_res += r * r;
    }
    TokenTrajectory {
        category: Category::LL,
        delta: slope * (nf - 1.0),
        slope,
        first_loss: first,
        last_loss: last,
        mean_loss: y_mean,
        std_loss: (syy / nf).sqrt(),
        residual_std: (ss_res / nf).sqrt(),
    }
}

/// The category rule of Appendix B.1, with strict inequalities on ΔL:
/// ΔL < -threshold is H->L, ΔL > threshold is L->H; otherwise (including
/// ΔL exactly ±threshold) L->L when `last_loss <= l_mean`, else H->H.
pub fn category_of(delta: f64, last_loss: f64, l_mean: f64, threshold: f64) -> Category {
    if delta < -threshold {
        Category::HL
    } else if delta > threshold {
        Category::LH
    } else if last_loss <= l_mean {
        Category::LL
    } else {
        Category::HH
    }
}

/// Categorize the loss trajectories of `n_tokens` tokens over `n_ckpt` checkpoints.
///
/// Layout: `losses` is **checkpoint-major**: `losses[c * n_tokens + t]` is the
/// loss of token `t` at checkpoint `c` (each checkpoint's losses file is one
/// contiguous block, in checkpoint order). The line is fitted against the
/// checkpoint index 0..n_ckpt-1, not the training step.
///
/// Errors: fewer than 2 checkpoints, no tokens, `losses.len() != n_tokens * n_ckpt`,
/// a NaN or infinite loss, or a threshold that is not finite and >= 0.
pub fn categorize(
    losses: &[f32],
    n_tokens: usize,
    n_ckpt: usize,
    threshold: f64,
) -> Result<Categorization> {
    check_threshold(threshold)?;
    if n_ckpt < 2 {
        return Err(Error::msg(format!(
            "categorize needs at least 2 checkpoints, the study has {n_ckpt}"
        )));
    }
    if n_tokens == 0 {
        return Err(Error::msg("categorize needs at least 1 token, there are none"));
    }
    match n_tokens.checked_mul(n_ckpt) {
        Some(len) if len == losses.len() => {}
        _ => {
            return Err(Error::msg(format!(
                "categorize: {} losses given for {n_tokens} tokens x {n_ckpt} checkpoints",
                losses.len()
            )))
        }
    }
    if let Some(i) = losses.iter().position(|v| !v.is_finite()) {
        return Err(Error::msg(format!(
            "loss of token {} at checkpoint {} is {}: losses must be finite",
            i % n_tokens,
            i / n_tokens,
            losses[i]
        )));
    }

    let last_block = &losses[(n_ckpt - 1) * n_tokens..];
    let l_mean = last_block.iter().map(|&v| v as f64).sum::<f64>() / n_tokens as f64;
    let trajectories = categorize_block(losses, n_tokens, n_ckpt, l_mean, threshold);
    Ok(Categorization { trajectories, l_mean })
}

/// The trajectories of a block of `n_tokens` tokens (checkpoint-major, as in
/// [`categorize`]) given L_mean, which the caller computed over all tokens: the
/// out-of-core path categorizes a study block by block with the same numbers.
/// Inputs are not checked (see [`categorize`]).
pub fn categorize_block(losses: &[f32], n_tokens: usize, n_ckpt: usize, l_mean: f64, threshold: f64) -> Vec<TokenTrajectory> {
    (0..n_tokens)
        .map(|t| {
            let ys = (0..n_ckpt).map(move |c| losses[c * n_tokens + t] as f64);
            let mut tr = fit(ys, n_ckpt);
            tr.category = category_of(tr.delta, tr.last_loss, l_mean, threshold);
            tr
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Build the checkpoint-major matrix from per-token rows.
    fn by_ckpt(rows: &[&[f32]]) -> (Vec<f32>, usize, usize) {
        let n_tokens = rows.len();
        let n_ckpt = rows[0].len();
        let mut out = vec![0.0; n_tokens * n_ckpt];
        for (t, r) in rows.iter().enumerate() {
            assert_eq!(r.len(), n_ckpt);
            for (c, &v) in r.iter().enumerate() {
                out[c * n_tokens + t] = v;
            }
        }
        (out, n_tokens, n_ckpt)
    }

    fn cats(rows: &[&[f32]], threshold: f64) -> (Vec<Category>, f64) {
        let (m, n, k) = by_ckpt(rows);
        let r = categorize(&m, n, k, threshold).unwrap();
        (r.trajectories.iter().map(|t| t.category).collect(), r.l_mean)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12
    }

    #[test]
    fn hand_computed_stats() {
        // losses [1,3,2] at x = 0,1,2: mean 2, slope = sum(dx*dy)/sum(dx^2) = 1/2,
        // fitted line 1.5, 2.0, 2.5; residuals -0.5, 1, -0.5 -> sqrt(1.5/3).
        let r = categorize(&[1.0, 3.0, 2.0], 1, 3, 0.2).unwrap();
        let t = r.trajectories[0];
        assert!(close(t.slope, 0.5), "{t:?}");
        assert!(close(t.delta, 1.0), "{t:?}");
        assert_eq!(t.first_loss, 1.0);
        assert_eq!(t.last_loss, 2.0);
        assert!(close(t.mean_loss, 2.0));
        assert!(close(t.std_loss, (2.0f64 / 3.0).sqrt()), "{t:?}");
        assert!(close(t.residual_std, 0.5f64.sqrt()), "{t:?}");
        assert_eq!(t.category, Category::LH);
        assert_eq!(r.l_mean, 2.0);

        // Four points 4,2,3,1: x_mean 1.5, sum dx^2 = 5, sum dx*dy = -4 -> slope -0.8,
        // delta -2.4; fitted 3.7, 2.9, 2.1, 1.3; residuals .3,-.9,.9,-.3 -> sqrt(1.8/4).
        let r = categorize(&[4.0, 2.0, 3.0, 1.0], 1, 4, 0.2).unwrap();
        let t = r.trajectories[0];
        assert!(close(t.slope, -0.8), "{t:?}");
        assert!(close(t.delta, -2.4), "{t:?}");
        assert!(close(t.residual_std, (1.8f64 / 4.0).sqrt()), "{t:?}");
        assert!(close(t.std_loss, (5.0f64 / 4.0).sqrt()), "{t:?}");
        assert_eq!(t.category, Category::HL);

        // Two checkpoints: the line goes through both points.
        let r = categorize(&[5.0, 4.5], 1, 2, 0.2).unwrap();
        let t = r.trajectories[0];
        assert!(close(t.slope, -0.5) && close(t.delta, -0.5) && close(t.residual_std, 0.0));
    }

    #[test]
    fn stats_use_checkpoint_major_layout() {
        // token 0: 1,3,2 ; token 1: 10,10,10 (checkpoint-major: [1,10, 3,10, 2,10])
        let r = categorize(&[1.0, 10.0, 3.0, 10.0, 2.0, 10.0], 2, 3, 0.2).unwrap();
        assert!(close(r.trajectories[0].slope, 0.5));
        assert_eq!(r.trajectories[0].last_loss, 2.0);
        assert!(close(r.trajectories[1].slope, 0.0));
        assert_eq!(r.trajectories[1].first_loss, 10.0);
        assert!(close(r.l_mean, 6.0));
    }

    #[test]
    fn every_branch() {
        // last losses: 1, 5, 2, 4 -> L_mean = 3.
        let rows: &[&[f32]] = &[
            &[3.0, 2.0, 1.0], // falls by 2 -> H->L
            &[1.0, 3.0, 5.0], // rises by 4 -> L->H
            &[2.0, 2.0, 2.0], // flat, 2 <= 3 -> L->L
            &[4.0, 4.0, 4.0], // flat, 4 > 3 -> H->H
        ];
        let (c, l_mean) = cats(rows, 0.2);
        assert_eq!(l_mean, 3.0);
        assert_eq!(c, vec![Category::HL, Category::LH, Category::LL, Category::HH]);
    }

    #[test]
    fn last_loss_equal_to_l_mean_is_ll() {
        // last losses 1, 2, 3 -> L_mean exactly 2.
        let rows: &[&[f32]] = &[&[1.0, 1.0], &[2.0, 2.0], &[3.0, 3.0]];
        let (c, l_mean) = cats(rows, 0.2);
        assert_eq!(l_mean, 2.0);
        assert_eq!(c, vec![Category::LL, Category::LL, Category::HH]);
    }

    #[test]
    fn exact_threshold_falls_to_level_rule() {
        // Binary-exact values: ΔL is exactly +0.25 / -0.25.
        let rows: &[&[f32]] = &[
            &[1.0, 1.125, 1.25],  // ΔL = +0.25, last 1.25 <= L_mean -> L->L
            &[1.25, 1.125, 1.0],  // ΔL = -0.25, last 1.0 <= L_mean -> L->L
            &[3.0, 3.125, 3.25],  // ΔL = +0.25, last 3.25 > L_mean -> H->H
            &[3.25, 3.125, 3.0],  // ΔL = -0.25, last 3.0 > L_mean -> H->H
        ];
        let (m, n, k) = by_ckpt(rows);
        let r = categorize(&m, n, k, 0.25).unwrap();
        assert_eq!(r.trajectories[0].delta, 0.25);
        assert_eq!(r.trajectories[1].delta, -0.25);
        assert_eq!(r.l_mean, (1.25 + 1.0 + 3.25 + 3.0) / 4.0);
        let c: Vec<_> = r.trajectories.iter().map(|t| t.category).collect();
        assert_eq!(c, vec![Category::LL, Category::LL, Category::HH, Category::HH]);

        // Just under the threshold, the same trajectories are trends.
        let (c, _) = cats(rows, 0.2499);
        assert_eq!(c, vec![Category::LH, Category::HL, Category::LH, Category::HL]);
        // Threshold 0: only exactly flat tokens go to the level rule.
        let (c, _) = cats(&[&[1.0, 1.0], &[1.0, 1.5], &[2.0, 2.0]], 0.0);
        assert_eq!(c, vec![Category::LL, Category::LH, Category::HH]);
    }

    #[test]
    fn errors() {
        let e = categorize(&[1.0, 2.0], 2, 1, 0.2).unwrap_err().to_string();
        assert!(e.contains("at least 2 checkpoints, the study has 1"), "{e}");
        let e = categorize(&[], 0, 0, 0.2).unwrap_err().to_string();
        assert!(e.contains("the study has 0"), "{e}");
        assert!(categorize(&[], 0, 3, 0.2).is_err());
        assert!(categorize(&[1.0, 2.0, 3.0], 1, 2, 0.2).is_err());
        assert!(categorize(&[1.0, 2.0, 3.0], usize::MAX, 2, 0.2).is_err());
        for bad in [f32::NAN, f32::INFINITY, f32::NEG_INFINITY] {
            let e = categorize(&[1.0, 2.0, 3.0, bad], 2, 2, 0.2).unwrap_err().to_string();
            assert!(e.contains("token 1 at checkpoint 1"), "{e}");
        }
        for bad in [f64::NAN, f64::INFINITY, -0.1] {
            let e = categorize(&[1.0, 2.0], 1, 2, bad).unwrap_err();
            assert!(matches!(e, Error::Flag { .. }), "{e}");
        }
    }
}
