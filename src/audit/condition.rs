//! `--fail-if` conditions: `<category> <op> <share>`, e.g. `H->H>0.15`.

use crate::dynamics::Category;
use crate::error::{Error, Result};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// Comparison of a `--fail-if` condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Op {
    #[serde(rename = ">")]
    Gt,
    #[serde(rename = ">=")]
    Ge,
    #[serde(rename = "<")]
    Lt,
    #[serde(rename = "<=")]
    Le,
}

impl Op {
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Gt => ">",
            Op::Ge => ">=",
            Op::Lt => "<",
            Op::Le => "<=",
        }
    }

    /// `lhs op rhs`.
    pub fn holds(self, lhs: f64, rhs: f64) -> bool {
        match self {
            Op::Gt => lhs > rhs,
            Op::Ge => lhs >= rhs,
            Op::Lt => lhs < rhs,
            Op::Le => lhs <= rhs,
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One `--fail-if` condition: the share of `category` (a fraction in [0, 1])
/// compared with `value`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Condition {
    pub category: Category,
    pub op: Op,
    /// Threshold share, a fraction in [0, 1].
    pub value: f64,
}

impl Condition {
    /// Whether the condition holds for the given share.
    pub fn holds(&self, share: f64) -> bool {
        self.op.holds(share, self.value)
    }
}

/// Canonical form, ASCII: `H->H>0.15`.
impl fmt::Display for Condition {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}{}", self.category.as_file_str(), self.op, self.value)
    }
}

fn bad(s: &str, why: impl fmt::Display) -> Error {
    Error::flag(
        "--fail-if",
        format!("`{s}`: {why} (expected CATEGORY OP SHARE, e.g. 'H->H>0.15', with OP one of > >= < <= and SHARE a fraction in [0, 1] or a percentage like 15%)"),
    )
}

/// Split the category off the front of a condition: `H`/`L`, an optional
/// arrow (`->` or `→`), `H`/`L`. Returns the category and the rest.
fn split_category(s: &str) -> Option<(Category, &str)> {
    let mut it = s.char_indices();
    let (_, a) = it.next()?;
    let mut rest = &s[a.len_utf8()..];
    rest = rest.trim_start();
    if let Some(r) = rest.strip_prefix("->").or_else(|| rest.strip_prefix('→')) {
        rest = r.trim_start();
    }
    let b = rest.chars().next()?;
    let rest = &rest[b.len_utf8()..];
    let cat: Category = format!("{a}{b}").parse().ok()?;
    Some((cat, rest))
}

/// Parse a `--fail-if` condition. Accepted: `H->H>0.15`, `H→H >= 0.15`,
/// `hh<0.5`, `L->L <= 50%`; spaces anywhere between the parts. A share is a
/// fraction in [0, 1], or a percentage with `%` (0 to 100).
pub fn parse_condition(s: &str) -> Result<Condition> {
    let t = s.trim();
    if t.is_empty() {
        return Err(bad(s, "empty condition"));
    }
    let (category, rest) = split_category(t).ok_or_else(|| bad(s, "does not start with a category H->H, L->H, H->L or L->L"))?;
    let rest = rest.trim_start();
    let (op, rest) = if let Some(r) = rest.strip_prefix(">=") {
        (Op::Ge, r)
    } else if let Some(r) = rest.strip_prefix("<=") {
        (Op::Le, r)
    } else if let Some(r) = rest.strip_prefix('>') {
        (Op::Gt, r)
    } else if let Some(r) = rest.strip_prefix('<') {
        (Op::Lt, r)
    } else {
        return Err(bad(s, "no comparison after the category"));
    };
    let num = rest.trim();
    let (num, percent) = match num.strip_suffix('%') {
        Some(n) => (n.trim_end(), true),
        None => (num, false),
    };
    if num.is_empty() {
        return Err(bad(s, "no share after the comparison"));
    }
    let v: f64 = num.parse().map_err(|_| bad(s, format!("`{num}` is not a number")))?;
    if !v.is_finite() {
        return Err(bad(s, format!("`{num}` is not a finite number")));
    }
    let value = if percent {
        if !(0.0..=100.0).contains(&v) {
            return Err(bad(s, format!("{v}% is not between 0% and 100%")));
        }
        v / 100.0
    } else {
        if !(0.0..=1.0).contains(&v) {
            return Err(bad(s, format!("share {v} is not a fraction in [0, 1] (write {v}% for a percentage)")));
        }
        v
    };
    Ok(Condition { category, op, value })
}

impl FromStr for Condition {
    type Err = Error;
    fn from_str(s: &str) -> Result<Condition> {
        parse_condition(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(s: &str) -> Condition {
        parse_condition(s).unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn spellings() {
        let want = Condition { category: Category::HH, op: Op::Gt, value: 0.15 };
        for s in ["H->H>0.15", "H→H>0.15", "HH>0.15", "hh>.15", " H -> H > 0.15 ", "h→h>15%", "H->H > 15 %"] {
            assert_eq!(c(s), want, "{s}");
        }
        assert_eq!(c("L->H>=0"), Condition { category: Category::LH, op: Op::Ge, value: 0.0 });
        assert_eq!(c("H->L<1"), Condition { category: Category::HL, op: Op::Lt, value: 1.0 });
        assert_eq!(c("L→L<=0.5"), Condition { category: Category::LL, op: Op::Le, value: 0.5 });
        assert_eq!(c("LL <= 50%"), Condition { category: Category::LL, op: Op::Le, value: 0.5 });
        // `>=` is not read as `>` followed by `=0.1`
        assert_eq!(c("HL>=0.1").op, Op::Ge);
        assert_eq!(c("HL<=0.1").op, Op::Le);
    }

    #[test]
    fn display_is_canonical_and_reparses() {
        for s in ["H→H >= 15%", "l->h<0.25", "HL>1", "LL<=0"] {
            let x = c(s);
            assert_eq!(c(&x.to_string()), x, "{s}");
        }
        assert_eq!(c("H→H >= 15%").to_string(), "H->H>=0.15");
    }

    #[test]
    fn malformed_are_flag_errors() {
        for s in [
            "", "H->H", "H->H>", "H->H=0.1", "H->H==0.1", "X->H>0.1", "H->X>0.1", "H->>0.1", "H-H>0.1",
            "H->H>abc", "H->H>1.5", "H->H>-0.1", "H->H>150%", "H->H>inf", "H->H>NaN", ">0.1", "H->H>0.1x",
            "H->H>>0.1", "share>0.1",
        ] {
            let e = parse_condition(s).expect_err(s);
            assert!(matches!(e, Error::Flag { .. }), "{s}: {e:?}");
            assert_eq!(e.exit_code(), 2);
            assert!(e.to_string().starts_with("--fail-if: "), "{e}");
        }
        let e = parse_condition("H->H>15").unwrap_err().to_string();
        assert!(e.contains("15%"), "{e}");
    }

    #[test]
    fn holds_at_boundaries() {
        assert!(c("HH>0.15").holds(0.16));
        assert!(!c("HH>0.15").holds(0.15));
        assert!(c("HH>=0.15").holds(0.15));
        assert!(c("HH<0.15").holds(0.1));
        assert!(!c("HH<0.15").holds(0.15));
        assert!(c("HH<=0.15").holds(0.15));
        assert!(!c("HH<=0.15").holds(0.151));
    }
}
