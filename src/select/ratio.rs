//! The selection ratio: validation and an exact `ceil(ratio * n)`.

use crate::{Error, Result};

/// Checks a selection ratio: it must be finite and in `(0, 1]`.
///
/// Errors with `Error::flag("--ratio", "selection ratio must be in (0, 1], got X")`.
pub fn check_ratio(ratio: f64) -> Result<()> {
    if ratio.is_finite() && ratio > 0.0 && ratio <= 1.0 {
        Ok(())
    } else {
        Err(Error::flag(
            "--ratio",
            format!("selection ratio must be in (0, 1], got {ratio}"),
        ))
    }
}

/// Significant decimal digits kept from the ratio. Every decimal with at
/// most 15 significant digits survives the round trip through `f64`
/// (`DBL_DIG`), so rounding to 15 digits recovers the number that was typed.
const SIG_DIGITS: usize = 15;

/// How many of `n_valid` tokens a selection ratio keeps: `ceil(ratio * n_valid)`
/// in exact arithmetic, as a mathematician means it.
///
/// Naive `(ratio * n as f64).ceil()` is wrong: `0.7 * 10.0` is
/// `7.000000000000001` in `f64`, whose ceiling is 8. Here the ratio is first
/// rounded to 15 significant decimal digits — which recovers exactly any
/// ratio written with up to 15 significant digits (`0.7`, `0.6`, `0.125`,
/// and also cleans arithmetic noise such as `0.1 + 0.2`) — and then the
/// ceiling of `digits * n_valid / 10^e` is computed in `u128` integers.
///
/// The ratio should have passed [`check_ratio`]; out-of-range values are
/// clamped: `ratio >= 1` keeps `n_valid`, `ratio <= 0` or NaN keeps 0.
/// The result is always in `0..=n_valid`, and it is `>= 1` whenever
/// `n_valid >= 1` and `ratio > 0`.
pub fn n_keep(n_valid: usize, ratio: f64) -> usize {
    if n_valid == 0 || ratio.is_nan() || ratio <= 0.0 {
        return 0;
    }
    if ratio >= 1.0 {
        return n_valid;
    }
    // ratio = mantissa * 10^exp10 with a 15-digit mantissa, correctly rounded.
    let sci = format!("{:.*e}", SIG_DIGITS - 1, ratio);
    let (mant, exp) = sci.split_once('e').expect("LowerExp output has an 'e'");
    let exp: i32 = exp.parse().expect("LowerExp exponent is an integer");
    let digits: u128 = mant
        .chars()
        .filter(char::is_ascii_digit)
        .fold(0, |acc, c| acc * 10 + u128::from(c as u8 - b'0'));
    // ratio = digits / 10^den_exp; ratio < 1 (or == 1 after rounding) so den_exp >= 14.
    let den_exp = (SIG_DIGITS as i32 - 1 - exp) as u32;
    let num = digits * n_valid as u128; // < 10^15 * 2^64 < 10^35: no overflow
    if den_exp >= 38 {
        // num < 10^35 < 10^den_exp and num > 0, so the ceiling is 1.
        return 1;
    }
    let den = 10u128.pow(den_exp);
    (num.div_ceil(den) as usize).min(n_valid)
}
