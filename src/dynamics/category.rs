//! The four trajectory categories of Rho-1 (v1) Appendix B.1.

use crate::error::{Error, Result};
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use std::fmt;
use std::str::FromStr;

/// Trajectory category of one token over a checkpoint series.
///
/// In files (Parquet, JSON) a category is written in its ASCII form
/// (`"H->H"`, see [`Category::as_file_str`]); human output uses arrows
/// (`"H→H"`, the `Display` form). Parsing accepts both, the bare letters
/// (`"HH"`) and any letter case (`"h->h"`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// High loss that stays high (no clear trend; last loss above the mean).
    HH,
    /// Loss rises: ΔL > threshold.
    LH,
    /// Loss falls: ΔL < -threshold (the tokens that are learned).
    HL,
    /// Low loss that stays low (no clear trend; last loss at or below the mean).
    LL,
}

impl Category {
    /// All categories in the fixed report order H->H, L->H, H->L, L->L.
    pub const ALL: [Category; 4] = [Category::HH, Category::LH, Category::HL, Category::LL];

    /// ASCII form used in files: `"H->H"`, `"L->H"`, `"H->L"`, `"L->L"`.
    pub fn as_file_str(self) -> &'static str {
        match self {
            Category::HH => "H->H",
            Category::LH => "L->H",
            Category::HL => "H->L",
            Category::LL => "L->L",
        }
    }

    /// Human form with an arrow: `"H→H"`, `"L→H"`, `"H→L"`, `"L→L"`.
    pub fn as_human_str(self) -> &'static str {
        match self {
            Category::HH => "H→H",
            Category::LH => "L→H",
            Category::HL => "H→L",
            Category::LL => "L→L",
        }
    }

    /// Position in [`Category::ALL`].
    pub fn index(self) -> usize {
        match self {
            Category::HH => 0,
            Category::LH => 1,
            Category::HL => 2,
            Category::LL => 3,
        }
    }
}

impl fmt::Display for Category {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // `pad` so that width/alignment flags (`{:<6}`) work.
        f.pad(self.as_human_str())
    }
}

impl FromStr for Category {
    type Err = Error;

    fn from_str(s: &str) -> Result<Category> {
        let t = s.trim().to_ascii_uppercase();
        let letters: String = if let Some((a, b)) = t.split_once("->") {
            format!("{a}{b}")
        } else if let Some((a, b)) = t.split_once('→') {
            format!("{a}{b}")
        } else {
            t.clone()
        };
        match letters.as_str() {
            "HH" => Ok(Category::HH),
            "LH" => Ok(Category::LH),
            "HL" => Ok(Category::HL),
            "LL" => Ok(Category::LL),
            _ => Err(Error::msg(format!(
                "unknown trajectory category `{s}` (expected one of H->H, L->H, H->L, L->L)"
            ))),
        }
    }
}

impl Serialize for Category {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str(self.as_file_str())
    }
}

impl<'de> Deserialize<'de> for Category {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Category, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forms_round_trip() {
        for c in Category::ALL {
            assert_eq!(c.as_file_str().parse::<Category>().unwrap(), c);
            assert_eq!(c.to_string().parse::<Category>().unwrap(), c);
            assert_eq!(Category::ALL[c.index()], c);
        }
        assert_eq!(Category::HH.as_file_str(), "H->H");
        assert_eq!(Category::LH.as_file_str(), "L->H");
        assert_eq!(Category::HL.as_file_str(), "H->L");
        assert_eq!(Category::LL.as_file_str(), "L->L");
        assert_eq!(Category::HL.to_string(), "H→L");
        assert_eq!(format!("{:<5}|", Category::LH), "L→H  |");
    }

    #[test]
    fn parse_accepts_variants() {
        for s in ["HH", "hh", "h->h", "H->H", "H→H", " h→h "] {
            assert_eq!(s.parse::<Category>().unwrap(), Category::HH, "{s}");
        }
        assert_eq!("l->h".parse::<Category>().unwrap(), Category::LH);
        assert_eq!("HL".parse::<Category>().unwrap(), Category::HL);
        assert_eq!("L→L".parse::<Category>().unwrap(), Category::LL);
        for s in ["", "H", "HX", "H->", "HHH", "up"] {
            assert!(s.parse::<Category>().is_err(), "{s}");
        }
    }

    #[test]
    fn serde_uses_file_form() {
        let j = serde_json::to_string(&Category::LH).unwrap();
        assert_eq!(j, "\"L->H\"");
        let c: Category = serde_json::from_str("\"h→l\"").unwrap();
        assert_eq!(c, Category::HL);
        assert!(serde_json::from_str::<Category>("\"nope\"").is_err());
    }
}
