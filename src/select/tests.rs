//! Tests for token selection. Expected values come from independent
//! computations (integer ceilings, brute-force sorts), never from the
//! implementation under test.

use super::*;
use rand::{Rng, SeedableRng};

/// Exact `ceil(p / 100 * n)` in integers.
fn ceil_pct(p: usize, n: usize) -> usize {
    (p * n).div_ceil(100)
}

/// Brute force top-k: sort the valid indices by score descending, ties by
/// index ascending (stable sort on ascending indices), keep the first k.
fn brute_top(scores: &[f32], valid: &[bool], k: usize) -> Vec<bool> {
    let mut idx: Vec<usize> = (0..scores.len()).filter(|&i| valid[i]).collect();
    idx.sort_by(|&a, &b| scores[b].partial_cmp(&scores[a]).unwrap());
    let mut mask = vec![false; scores.len()];
    for &i in idx.iter().take(k) {
        mask[i] = true;
    }
    mask
}

fn count(mask: &[bool]) -> usize {
    mask.iter().filter(|&&m| m).count()
}

/// A random batch: losses, reference losses, validity (each row has a random
/// amount of right padding, sometimes none, sometimes all). With `ties`,
/// values are drawn from {0, 1, 2} so equal scores abound.
struct Batch {
    b: usize,
    s: usize,
    loss: Vec<f32>,
    ref_loss: Vec<f32>,
    valid: Vec<bool>,
}

fn random_batch(rng: &mut StdRng, ties: bool) -> Batch {
    let b = rng.random_range(1..=6);
    let s = rng.random_range(1..=40);
    let draw = |rng: &mut StdRng| {
        if ties {
            rng.random_range(0..3) as f32
        } else {
            rng.random_range(0.0f32..10.0)
        }
    };
    let loss: Vec<f32> = (0..b * s).map(|_| draw(rng)).collect();
    let ref_loss: Vec<f32> = (0..b * s).map(|_| draw(rng)).collect();
    let mut valid = Vec::with_capacity(b * s);
    for _ in 0..b {
        let len = rng.random_range(0..=s);
        valid.extend((0..s).map(|p| p < len));
    }
    Batch { b, s, loss, ref_loss, valid }
}

fn excess(bt: &Batch) -> Vec<f32> {
    bt.loss.iter().zip(&bt.ref_loss).map(|(l, r)| l - r).collect()
}

// ---------------------------------------------------------------- Select

#[test]
fn select_parse_display_serde_roundtrip() {
    for (name, mode) in [
        ("batch", Select::Batch),
        ("sequence", Select::Sequence),
        ("random", Select::Random),
        ("loss", Select::Loss),
    ] {
        assert_eq!(name.parse::<Select>().unwrap(), mode);
        assert_eq!(mode.to_string(), name);
        assert_eq!(serde_json::to_string(&mode).unwrap(), format!("\"{name}\""));
        assert_eq!(serde_json::from_str::<Select>(&format!("\"{name}\"")).unwrap(), mode);
    }
    assert_eq!("Batch".parse::<Select>().unwrap(), Select::Batch);
    assert!(Select::Batch.needs_reference() && Select::Sequence.needs_reference());
    assert!(!Select::Random.needs_reference() && !Select::Loss.needs_reference());
}

#[test]
fn select_parse_error_lists_valid_values() {
    let err = "tokens".parse::<Select>().unwrap_err();
    assert_eq!(err.exit_code(), 2, "a flag error");
    let msg = err.to_string();
    assert!(msg.starts_with("--select: "), "{msg}");
    assert!(msg.contains("'tokens'"), "{msg}");
    for name in ["batch", "sequence", "random", "loss"] {
        assert!(msg.contains(name), "{msg} should list {name}");
    }
    assert!(serde_json::from_str::<Select>("\"tokens\"").is_err());
}

// ---------------------------------------------------------------- ratio

#[test]
fn check_ratio_accepts_and_rejects() {
    for ok in [1e-12, 0.01, 0.5, 0.7, 1.0] {
        assert!(check_ratio(ok).is_ok(), "{ok}");
    }
    for bad in [0.0, -0.0, -0.5, 1.0000001, 2.0, f64::NAN, f64::INFINITY, f64::NEG_INFINITY] {
        let err = check_ratio(bad).unwrap_err();
        assert!(matches!(&err, Error::Flag { flag, .. } if flag == "--ratio"), "{err}");
        let msg = err.to_string();
        assert!(msg.contains("must be in (0, 1]"), "{msg}");
        assert!(msg.contains(&format!("got {bad}")), "{msg}");
    }
}

#[test]
fn n_keep_naive_float_ceiling_is_wrong_but_ours_is_not() {
    // The trap this function exists for: 0.07 * 100 = 7.000000000000001 in f64.
    assert_eq!((0.07f64 * 100.0).ceil(), 8.0);
    assert_eq!(n_keep(100, 0.07), 7);
    assert_eq!((0.14f64 * 50.0).ceil(), 8.0);
    assert_eq!(n_keep(50, 0.14), 7);
    // The naive ceiling fails on 141 (p/100, n <= 1000) pairs; ours on none.
    let naive_failures = (1..100usize)
        .flat_map(|p| (1..=1000usize).map(move |n| (p, n)))
        .filter(|&(p, n)| (p as f64 / 100.0 * n as f64).ceil() as usize != ceil_pct(p, n))
        .count();
    assert_eq!(naive_failures, 141, "the exhaustive test below does exercise the trap");
    for (tenths, ratio) in [(1, 0.1), (2, 0.2), (3, 0.3), (4, 0.4), (5, 0.5), (6, 0.6), (7, 0.7), (8, 0.8), (9, 0.9)]
    {
        for n in 0..=1000usize {
            assert_eq!(n_keep(n, ratio), (tenths * n).div_ceil(10), "ratio {ratio}, n {n}");
        }
    }
}

#[test]
fn n_keep_exact_for_percentages_and_permille() {
    for p in 1..=100usize {
        let ratio = p as f64 / 100.0;
        let typed: f64 = format!("0.{p:02}").parse().unwrap_or(1.0);
        if p < 100 {
            assert_eq!(ratio, typed);
        }
        for n in 0..=1000usize {
            assert_eq!(n_keep(n, ratio), ceil_pct(p, n), "ratio {p}/100, n {n}");
        }
    }
    for p in 1..=1000usize {
        let ratio = p as f64 / 1000.0;
        for n in (0..=1000usize).step_by(7).chain([999, 1000, 12_345, 100_000]) {
            assert_eq!(n_keep(n, ratio), (p * n).div_ceil(1000), "ratio {p}/1000, n {n}");
        }
    }
    for p in (1..=10_000usize).step_by(37) {
        let ratio = p as f64 / 10_000.0;
        for n in [1usize, 3, 10, 99, 100, 101, 4096, 10_000, 65_536, 131_072] {
            assert_eq!(n_keep(n, ratio), (p * n).div_ceil(10_000), "ratio {p}/10000, n {n}");
        }
    }
}

#[test]
fn n_keep_edge_cases() {
    assert_eq!(n_keep(0, 0.5), 0);
    assert_eq!(n_keep(0, 1.0), 0);
    assert_eq!(n_keep(1, 1e-300), 1, "any positive ratio keeps at least one");
    assert_eq!(n_keep(1_000_000, f64::MIN_POSITIVE), 1);
    assert_eq!(n_keep(37, 1.0), 37);
    assert_eq!(n_keep(1_000_000_000_000, 0.7), 700_000_000_000);
    assert_eq!(n_keep(1_000_000_000_001, 0.7), 700_000_000_001);
    assert_eq!(n_keep(usize::MAX, 0.5), usize::MAX / 2 + 1);
    assert_eq!(n_keep(usize::MAX, 1.0), usize::MAX);
    // Arithmetic noise in the ratio is not mistaken for a real excess.
    assert_eq!(n_keep(10, 0.1 + 0.2), 3);
    assert_eq!(n_keep(3, 1.0 / 3.0), 1);
    assert_eq!(n_keep(4, 1.0 / 3.0), 2);
    assert_eq!(n_keep(100, 0.125), 13);
    assert_eq!(n_keep(8, 0.125), 1);
    // Out-of-range ratios are clamped.
    assert_eq!(n_keep(10, 0.0), 0);
    assert_eq!(n_keep(10, -1.0), 0);
    assert_eq!(n_keep(10, f64::NAN), 0);
    assert_eq!(n_keep(10, 3.0), 10);
}

// ---------------------------------------------------------------- top_k_mask

#[test]
fn top_k_ties_keep_lower_index_first() {
    let scores = [1.0, 2.0, 2.0, 2.0, 1.0, 0.0];
    let valid = [true; 6];
    assert_eq!(top_k_mask(&scores, &valid, 2), [false, true, true, false, false, false]);
    assert_eq!(top_k_mask(&scores, &valid, 4), [true, true, true, true, false, false]);
    // -0.0 and 0.0 are equal scores: the lower index wins.
    assert_eq!(top_k_mask(&[0.0, -0.0], &[true, true], 1), [true, false]);
    assert_eq!(top_k_mask(&[-0.0, 0.0], &[true, true], 1), [true, false]);
}

#[test]
fn top_k_nan_ranks_lowest() {
    let scores = [f32::NAN, -5.0, f32::NAN, f32::NEG_INFINITY];
    let valid = [true; 4];
    assert_eq!(top_k_mask(&scores, &valid, 1), [false, true, false, false]);
    assert_eq!(top_k_mask(&scores, &valid, 2), [false, true, false, true]);
    assert_eq!(top_k_mask(&scores, &valid, 3), [true, true, false, true]);
}

#[test]
fn top_k_matches_brute_force_on_random_data() {
    let mut rng = StdRng::seed_from_u64(7);
    for trial in 0..2000 {
        let n = rng.random_range(0..200);
        let ties = trial % 2 == 0;
        let scores: Vec<f32> = (0..n)
            .map(|_| if ties { rng.random_range(0..3) as f32 } else { rng.random_range(-3.0f32..3.0) })
            .collect();
        let valid: Vec<bool> = (0..n).map(|_| rng.random_bool(0.8)).collect();
        let k = rng.random_range(0..=n + 2);
        let got = top_k_mask(&scores, &valid, k);
        assert_eq!(got, brute_top(&scores, &valid, k), "trial {trial}");
        assert_eq!(count(&got), k.min(count(&valid)));
    }
}

#[test]
fn top_k_kept_scores_dominate_dropped_scores() {
    // A check independent of the tie rule: every kept score >= every dropped valid score.
    let mut rng = StdRng::seed_from_u64(11);
    for _ in 0..200 {
        let n = rng.random_range(1..2000);
        let scores: Vec<f32> = (0..n).map(|_| rng.random_range(0..5) as f32).collect();
        let valid: Vec<bool> = (0..n).map(|_| rng.random_bool(0.9)).collect();
        let k = rng.random_range(0..=n);
        let got = top_k_mask(&scores, &valid, k);
        let min_kept = (0..n).filter(|&i| got[i]).map(|i| scores[i]).fold(f32::INFINITY, f32::min);
        let max_dropped =
            (0..n).filter(|&i| valid[i] && !got[i]).map(|i| scores[i]).fold(f32::NEG_INFINITY, f32::max);
        assert!(min_kept >= max_dropped);
        assert!((0..n).all(|i| !got[i] || valid[i]));
    }
}

#[test]
fn top_k_large_batch() {
    // ~100k tokens, all tied but one: fast, and exactly the lowest indices are kept.
    let n = 100_000;
    let mut scores = vec![1.0f32; n];
    scores[n - 1] = 2.0;
    let valid = vec![true; n];
    let got = top_k_mask(&scores, &valid, 60_000);
    assert!(got[n - 1]);
    assert_eq!(count(&got), 60_000);
    assert!(got[..59_999].iter().all(|&m| m) && !got[59_999]);
}

// ---------------------------------------------------------------- select_mask

#[test]
fn batch_mode_keeps_exactly_top_excess_over_the_batch() {
    let mut rng = StdRng::seed_from_u64(1);
    for trial in 0..1500 {
        let bt = random_batch(&mut rng, trial % 3 != 0);
        let p = rng.random_range(1..=100usize);
        let ratio = p as f64 / 100.0;
        let got = select_mask(Select::Batch, &bt.loss, Some(&bt.ref_loss), &bt.valid, bt.b, bt.s, ratio, 0)
            .unwrap();
        let k = ceil_pct(p, count(&bt.valid));
        assert_eq!(count(&got), k, "trial {trial}");
        assert_eq!(got, brute_top(&excess(&bt), &bt.valid, k), "trial {trial}, ratio {ratio}");
    }
}

#[test]
fn sequence_mode_keeps_top_excess_per_row() {
    let mut rng = StdRng::seed_from_u64(2);
    for trial in 0..1500 {
        let bt = random_batch(&mut rng, trial % 3 != 0);
        let p = rng.random_range(1..=100usize);
        let ratio = p as f64 / 100.0;
        let got =
            select_mask(Select::Sequence, &bt.loss, Some(&bt.ref_loss), &bt.valid, bt.b, bt.s, ratio, 0)
                .unwrap();
        let ex = excess(&bt);
        for row in 0..bt.b {
            let span = row * bt.s..(row + 1) * bt.s;
            let row_valid = &bt.valid[span.clone()];
            let k = ceil_pct(p, count(row_valid));
            assert_eq!(count(&got[span.clone()]), k, "trial {trial}, row {row}");
            assert_eq!(got[span.clone()], brute_top(&ex[span], row_valid, k)[..], "trial {trial}, row {row}");
        }
    }
}

#[test]
fn sequence_mode_differs_from_batch_mode() {
    // Row 0 has all the high excess; batch mode takes it all, sequence mode takes half of each row.
    let loss = [9.0, 9.0, 1.0, 1.0];
    let ref_loss = [0.0; 4];
    let valid = [true; 4];
    let batch = select_mask(Select::Batch, &loss, Some(&ref_loss), &valid, 2, 2, 0.5, 0).unwrap();
    let seq = select_mask(Select::Sequence, &loss, Some(&ref_loss), &valid, 2, 2, 0.5, 0).unwrap();
    assert_eq!(batch, [true, true, false, false]);
    assert_eq!(seq, [true, false, true, false]);
}

#[test]
fn loss_mode_uses_current_loss_and_ignores_reference() {
    let mut rng = StdRng::seed_from_u64(3);
    for trial in 0..500 {
        let bt = random_batch(&mut rng, trial % 2 == 0);
        let p = rng.random_range(1..=100usize);
        let ratio = p as f64 / 100.0;
        let k = ceil_pct(p, count(&bt.valid));
        let expected = brute_top(&bt.loss, &bt.valid, k);
        let without = select_mask(Select::Loss, &bt.loss, None, &bt.valid, bt.b, bt.s, ratio, 0).unwrap();
        let junk = [f32::NAN; 3]; // wrong length and NaN: ignored
        let with = select_mask(Select::Loss, &bt.loss, Some(&junk), &bt.valid, bt.b, bt.s, ratio, 0).unwrap();
        assert_eq!(without, expected, "trial {trial}");
        assert_eq!(with, expected, "trial {trial}");
    }
}

#[test]
fn padding_is_never_kept_even_with_the_highest_scores() {
    // b = 2, s = 4; the last two positions of each row are padding with huge losses.
    let loss = [1.0, 2.0, 100.0, 100.0, 3.0, 4.0, 100.0, 100.0];
    let ref_loss = [0.0, 0.0, -100.0, -100.0, 0.0, 0.0, -100.0, -100.0];
    let valid = [true, true, false, false, true, true, false, false];
    for how in Select::ALL {
        for ratio in [0.25, 0.5, 0.75, 1.0] {
            let got = select_mask(how, &loss, Some(&ref_loss), &valid, 2, 4, ratio, 42).unwrap();
            assert!((0..8).all(|i| !got[i] || valid[i]), "{how} {ratio}: {got:?}");
        }
    }
    let got = select_mask(Select::Batch, &loss, Some(&ref_loss), &valid, 2, 4, 0.5, 0).unwrap();
    assert_eq!(got, [false, false, false, false, true, true, false, false]);
    // An all-padding batch keeps nothing.
    let none = [false; 8];
    for how in Select::ALL {
        let got = select_mask(how, &loss, Some(&ref_loss), &none, 2, 4, 0.5, 1).unwrap();
        assert_eq!(got, none, "{how}");
    }
}

#[test]
fn random_mode_count_validity_determinism() {
    let mut rng = StdRng::seed_from_u64(4);
    for trial in 0..500 {
        let bt = random_batch(&mut rng, false);
        let p = rng.random_range(1..=100usize);
        let ratio = p as f64 / 100.0;
        let seed = rng.random::<u64>();
        let a = select_mask(Select::Random, &bt.loss, None, &bt.valid, bt.b, bt.s, ratio, seed).unwrap();
        let again = select_mask(Select::Random, &bt.loss, None, &bt.valid, bt.b, bt.s, ratio, seed).unwrap();
        assert_eq!(a, again, "same seed, same mask");
        assert_eq!(count(&a), ceil_pct(p, count(&bt.valid)), "trial {trial}");
        assert!((0..a.len()).all(|i| !a[i] || bt.valid[i]), "padding kept in trial {trial}");
    }
}

#[test]
fn random_mode_differs_between_seeds_and_is_uniform() {
    let (b, s) = (2, 10);
    let loss = vec![0.0f32; b * s];
    let mut valid = vec![true; b * s];
    valid[9] = false;
    valid[19] = false;
    let masks: Vec<Vec<bool>> = (0..4000u64)
        .map(|seed| select_mask(Select::Random, &loss, None, &valid, b, s, 0.25, seed).unwrap())
        .collect();
    let distinct: std::collections::HashSet<&Vec<bool>> = masks.iter().collect();
    assert!(distinct.len() > 1000, "only {} distinct masks in 4000 seeds", distinct.len());
    assert_ne!(masks[0], masks[1]);
    // 18 valid tokens, 5 kept: each valid position kept with probability 5/18.
    // Expected 1111 of 4000, sd ~28; allow 6 sd.
    for i in 0..b * s {
        let hits = masks.iter().filter(|m| m[i]).count();
        if valid[i] {
            assert!((1111i64 - hits as i64).abs() < 170, "position {i} kept {hits} times");
        } else {
            assert_eq!(hits, 0);
        }
    }
}

#[test]
fn ratio_one_keeps_exactly_the_valid_tokens() {
    let mut rng = StdRng::seed_from_u64(5);
    for trial in 0..300 {
        let bt = random_batch(&mut rng, trial % 2 == 0);
        for how in Select::ALL {
            let got = select_mask(how, &bt.loss, Some(&bt.ref_loss), &bt.valid, bt.b, bt.s, 1.0, trial).unwrap();
            assert_eq!(got, bt.valid, "{how}, trial {trial}");
        }
    }
}

#[test]
fn error_bad_ratio() {
    let loss = [1.0f32; 4];
    let valid = [true; 4];
    for how in Select::ALL {
        for bad in [0.0, 1.5, -0.2, f64::NAN, f64::INFINITY] {
            let err = select_mask(how, &loss, Some(&loss), &valid, 2, 2, bad, 0).unwrap_err();
            assert!(matches!(&err, Error::Flag { flag, .. } if flag == "--ratio"), "{how} {bad}: {err}");
        }
    }
}

#[test]
fn error_missing_reference() {
    let loss = [1.0f32; 4];
    let valid = [true; 4];
    let err = select_mask(Select::Batch, &loss, None, &valid, 2, 2, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "--select batch needs reference losses (--reference or --ref-scores)");
    let err = select_mask(Select::Sequence, &loss, None, &valid, 2, 2, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "--select sequence needs reference losses (--reference or --ref-scores)");
    assert!(select_mask(Select::Random, &loss, None, &valid, 2, 2, 0.5, 0).is_ok());
    assert!(select_mask(Select::Loss, &loss, None, &valid, 2, 2, 0.5, 0).is_ok());
}

#[test]
fn error_length_mismatch_names_the_lengths() {
    let ok = [1.0f32; 12];
    let valid = [true; 12];
    let short = [1.0f32; 10];
    let err = select_mask(Select::Batch, &short, Some(&ok), &valid, 2, 6, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "loss has 10 values, expected b*s = 2*6 = 12");
    let err = select_mask(Select::Batch, &ok, Some(&short), &valid, 2, 6, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "ref_loss has 10 values, expected b*s = 2*6 = 12");
    let err = select_mask(Select::Random, &ok, None, &valid[..11], 2, 6, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "valid has 11 values, expected b*s = 2*6 = 12");
    let err = select_mask(Select::Loss, &ok, None, &valid, 3, 6, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "loss has 12 values, expected b*s = 3*6 = 18");
}

#[test]
fn error_nan_score_names_row_and_position_but_padding_nan_is_fine() {
    let mut loss = [1.0f32; 8];
    let ref_loss = [0.5f32; 8];
    let mut valid = [true; 8];
    loss[6] = f32::NAN; // row 1, position 2 (s = 4)
    for how in [Select::Batch, Select::Sequence] {
        let err = select_mask(how, &loss, Some(&ref_loss), &valid, 2, 4, 0.5, 0).unwrap_err();
        let msg = err.to_string();
        assert!(msg.contains("NaN at row 1, position 2"), "{how}: {msg}");
    }
    let err = select_mask(Select::Loss, &loss, None, &valid, 2, 4, 0.5, 0).unwrap_err();
    assert_eq!(err.to_string(), "loss is NaN at row 1, position 2");
    // inf - inf is NaN too.
    let inf = [f32::INFINITY; 8];
    let err = select_mask(Select::Batch, &inf, Some(&inf), &valid, 2, 4, 0.5, 0).unwrap_err();
    assert!(err.to_string().contains("NaN at row 0, position 0"), "{err}");
    // Random mode does not look at losses.
    assert!(select_mask(Select::Random, &loss, None, &valid, 2, 4, 0.5, 0).is_ok());
    // NaN in padding is ignored.
    valid[6] = false;
    for how in Select::ALL {
        let got = select_mask(how, &loss, Some(&ref_loss), &valid, 2, 4, 0.5, 0).unwrap();
        assert!(!got[6], "{how}");
    }
}

// ---------------------------------------------------------------- stats

#[test]
fn stats_hand_computed() {
    let loss = [1.0f32, 2.0, 3.0, 4.0, 50.0, 6.0];
    let ref_loss = [0.5f32, 1.0, 1.0, 1.0, 0.0, 6.0];
    let valid = [true, true, true, true, false, true];
    let kept = [false, true, true, false, false, false];
    let st = stats(&loss, Some(&ref_loss), &valid, &kept);
    assert_eq!(st.n_valid, 5);
    assert_eq!(st.n_kept, 2);
    // excess over valid: 0.5, 1, 2, 3, 0 -> mean 6.5 / 5
    assert!((st.mean_excess.unwrap() - 1.3).abs() < 1e-12);
    assert!((st.loss_all - 16.0 / 5.0).abs() < 1e-12);
    assert!((st.loss_kept - 2.5).abs() < 1e-12);
    let st = stats(&loss, None, &valid, &kept);
    assert_eq!(st.mean_excess, None);
    // Empty selections give NaN means, not a fake 0.
    let st = stats(&loss, None, &[false; 6], &[false; 6]);
    assert_eq!((st.n_valid, st.n_kept), (0, 0));
    assert!(st.loss_all.is_nan() && st.loss_kept.is_nan());
}

#[test]
fn stats_agree_with_a_selection() {
    let mut rng = StdRng::seed_from_u64(6);
    let bt = random_batch(&mut rng, false);
    let kept = select_mask(Select::Batch, &bt.loss, Some(&bt.ref_loss), &bt.valid, bt.b, bt.s, 0.3, 0).unwrap();
    let st = stats(&bt.loss, Some(&bt.ref_loss), &bt.valid, &kept);
    assert_eq!(st.n_valid, count(&bt.valid));
    assert_eq!(st.n_kept, count(&kept));
    if st.n_kept > 0 && st.n_kept < st.n_valid {
        // The kept tokens have the highest excess, so their mean excess is at least the batch mean.
        let ex = excess(&bt);
        let kept_excess: f64 =
            (0..ex.len()).filter(|&i| kept[i]).map(|i| f64::from(ex[i])).sum::<f64>() / st.n_kept as f64;
        assert!(kept_excess >= st.mean_excess.unwrap() - 1e-6);
    }
}

#[test]
#[should_panic(expected = "kept has 3 values")]
fn stats_panics_on_length_mismatch() {
    stats(&[1.0; 4], None, &[true; 4], &[true; 3]);
}
