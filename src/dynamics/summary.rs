//! Category counts and shares: what `rho categorize` prints and saves as
//! `<study>/categories.json`.

use super::category::Category;
use super::trajectory::TokenTrajectory;
use crate::error::{Result, WithPath};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::Path;

/// Count and share of one category.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct CategoryShare {
    /// Category in file form: `"H->H"`, `"L->H"`, `"H->L"` or `"L->L"`.
    pub category: Category,
    /// Number of tokens in this category.
    pub count: u64,
    /// `count / total`, a fraction in [0, 1] (not a percentage).
    pub share: f64,
}

/// Result of a categorization: counts and shares of the four categories.
///
/// JSON form (`--json`, and `<study>/categories.json`):
///
/// ```json
/// {
///   "threshold": 0.2,
///   "l_mean": 2.875,
///   "checkpoints": ["step-1000", "step-2000", "step-3000"],
///   "total": 1000,
///   "categories": [
///     {"category": "H->H", "count": 110, "share": 0.11},
///     {"category": "L->H", "count": 120, "share": 0.12},
///     {"category": "H->L", "count": 260, "share": 0.26},
///     {"category": "L->L", "count": 510, "share": 0.51}
///   ]
/// }
/// ```
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CategorizeSummary {
    /// ΔL threshold used: |ΔL| <= threshold counts as no trend.
    pub threshold: f64,
    /// L_mean: mean loss of all tokens at the last checkpoint (nats).
    pub l_mean: f64,
    /// Names of the checkpoints the trajectories span, in order (first to last).
    pub checkpoints: Vec<String>,
    /// Number of tokens categorized (sum of the counts).
    pub total: u64,
    /// Always four entries, in the fixed order H->H, L->H, H->L, L->L.
    pub categories: Vec<CategoryShare>,
}

impl CategorizeSummary {
    /// Count the categories of `trajectories`.
    pub fn from_trajectories(
        trajectories: &[TokenTrajectory],
        l_mean: f64,
        threshold: f64,
        checkpoints: Vec<String>,
    ) -> CategorizeSummary {
        let mut counts = [0u64; 4];
        for t in trajectories {
            counts[t.category.index()] += 1;
        }
        Self::from_counts(counts, l_mean, threshold, checkpoints)
    }

    /// The summary of category counts (in the order of `Category::ALL`).
    pub fn from_counts(counts: [u64; 4], l_mean: f64, threshold: f64, checkpoints: Vec<String>) -> CategorizeSummary {
        let total: u64 = counts.iter().sum();
        let categories = Category::ALL
            .iter()
            .map(|&category| {
                let count = counts[category.index()];
                let share = if total == 0 { 0.0 } else { count as f64 / total as f64 };
                CategoryShare { category, count, share }
            })
            .collect();
        CategorizeSummary { threshold, l_mean, checkpoints, total, categories }
    }

    /// Count of one category.
    pub fn count(&self, c: Category) -> u64 {
        self.categories.iter().filter(|s| s.category == c).map(|s| s.count).sum()
    }

    /// Share (fraction in [0, 1]) of one category.
    pub fn share(&self, c: Category) -> f64 {
        self.categories.iter().filter(|s| s.category == c).map(|s| s.share).sum()
    }

    /// Human-readable table (also the `Display` form):
    ///
    /// ```text
    /// 3 checkpoints: step-1000 .. step-3000
    /// threshold |ΔL| <= 0.2, L_mean (last checkpoint) = 2.8750
    /// category      count   share
    /// H→H             110   11.0%
    /// ...
    /// total          1000  100.0%
    /// ```
    pub fn table(&self) -> String {
        let mut s = String::new();
        let n = self.checkpoints.len();
        match self.checkpoints.as_slice() {
            [] => s.push_str("0 checkpoints\n"),
            [only] => s.push_str(&format!("1 checkpoint: {only}\n")),
            [first, .., last] => s.push_str(&format!("{n} checkpoints: {first} .. {last}\n")),
        }
        s.push_str(&format!(
            "threshold |ΔL| <= {}, L_mean (last checkpoint) = {:.4}\n",
            self.threshold, self.l_mean
        ));
        let cw = self.total.to_string().len().max(5);
        s.push_str(&format!("{:<8}  {:>cw$}  {:>6}\n", "category", "count", "share"));
        for c in &self.categories {
            s.push_str(&format!(
                "{:<8}  {:>cw$}  {:>5.1}%\n",
                c.category,
                c.count,
                c.share * 100.0
            ));
        }
        let total_share = if self.total == 0 { 0.0 } else { 100.0 };
        s.push_str(&format!("{:<8}  {:>cw$}  {:>5.1}%\n", "total", self.total, total_share));
        s
    }

    /// Write as pretty JSON, atomically.
    pub fn save(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(self).with_path(path)?;
        crate::util::write_bytes_atomic(path, &bytes)
    }

    /// Write as pretty JSON, atomically, with the `"generation"` of the categorization it
    /// records (`categories.json`: the id also in `trajectories.parquet`'s metadata).
    pub fn save_with_generation(&self, path: &Path, generation: &str) -> Result<()> {
        let mut v = serde_json::to_value(self).with_path(path)?;
        if let Some(o) = v.as_object_mut() {
            o.insert("generation".into(), generation.into());
        }
        let bytes = serde_json::to_vec_pretty(&v).with_path(path)?;
        crate::util::write_bytes_atomic(path, &bytes)
    }

    /// Read a summary written by [`CategorizeSummary::save`].
    pub fn load(path: &Path) -> Result<CategorizeSummary> {
        let bytes = crate::limits::read_bounded(path, crate::limits::MAX_JSON_BYTES, "categories.json")?;
        serde_json::from_slice(&bytes).with_path(path)
    }

    /// Read a summary and the generation it records (`None`: written by an older rho, or by [`CategorizeSummary::save`]).
    pub fn load_with_generation(path: &Path) -> Result<(CategorizeSummary, Option<String>)> {
        #[derive(Deserialize)]
        struct Generation {
            #[serde(default)]
            generation: Option<String>,
        }
        let bytes = std::fs::read(path).with_path(path)?;
        let g: Generation = serde_json::from_slice(&bytes).with_path(path)?;
        Ok((serde_json::from_slice(&bytes).with_path(path)?, g.generation))
    }
}

impl fmt::Display for CategorizeSummary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.table())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn traj(category: Category) -> TokenTrajectory {
        TokenTrajectory {
            category,
            delta: 0.0,
            slope: 0.0,
            first_loss: 0.0,
            last_loss: 0.0,
            mean_loss: 0.0,
            std_loss: 0.0,
            residual_std: 0.0,
        }
    }

    fn sample() -> CategorizeSummary {
        // 1 H->H, 0 L->H, 3 H->L, 4 L->L, listed out of order.
        let ts: Vec<_> = [
            Category::LL,
            Category::HL,
            Category::HH,
            Category::LL,
            Category::HL,
            Category::LL,
            Category::HL,
            Category::LL,
        ]
        .into_iter()
        .map(traj)
        .collect();
        CategorizeSummary::from_trajectories(&ts, 2.5, 0.2, vec!["a".into(), "b".into(), "c".into()])
    }

    #[test]
    fn counts_and_shares_in_fixed_order() {
        let s = sample();
        assert_eq!(s.total, 8);
        let order: Vec<_> = s.categories.iter().map(|c| c.category).collect();
        assert_eq!(order, Category::ALL.to_vec());
        let counts: Vec<_> = s.categories.iter().map(|c| c.count).collect();
        assert_eq!(counts, vec![1, 0, 3, 4]);
        assert_eq!(s.share(Category::HH), 0.125);
        assert_eq!(s.share(Category::LH), 0.0);
        assert_eq!(s.share(Category::HL), 0.375);
        assert_eq!(s.share(Category::LL), 0.5);
        assert_eq!(s.count(Category::HL), 3);
    }

    #[test]
    fn json_fields_and_round_trip() {
        let s = sample();
        let v: serde_json::Value = serde_json::to_value(&s).unwrap();
        assert_eq!(v["threshold"], 0.2);
        assert_eq!(v["l_mean"], 2.5);
        assert_eq!(v["total"], 8);
        assert_eq!(v["checkpoints"], serde_json::json!(["a", "b", "c"]));
        assert_eq!(v["categories"][0], serde_json::json!({"category": "H->H", "count": 1, "share": 0.125}));
        assert_eq!(v["categories"][3]["category"], "L->L");
        let back: CategorizeSummary = serde_json::from_value(v).unwrap();
        assert_eq!(back, s);

        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("categories.json");
        s.save(&p).unwrap();
        assert_eq!(CategorizeSummary::load(&p).unwrap(), s);
    }

    #[test]
    fn table_lists_categories_with_percentages() {
        let t = sample().table();
        let lines: Vec<_> = t.lines().collect();
        assert!(lines[0].contains("3 checkpoints: a .. c"), "{t}");
        assert!(lines[1].contains("0.2") && lines[1].contains("2.5000"), "{t}");
        let row = |name: &str| lines.iter().find(|l| l.starts_with(name)).copied().unwrap();
        let fields = |l: &str| l.split_whitespace().map(String::from).collect::<Vec<_>>();
        assert_eq!(fields(row("H→H")), vec!["H→H", "1", "12.5%"]);
        assert_eq!(fields(row("L→H")), vec!["L→H", "0", "0.0%"]);
        assert_eq!(fields(row("H→L")), vec!["H→L", "3", "37.5%"]);
        assert_eq!(fields(row("L→L")), vec!["L→L", "4", "50.0%"]);
        assert_eq!(fields(row("total")), vec!["total", "8", "100.0%"]);
        // order of rows
        let pos = |name: &str| lines.iter().position(|l| l.starts_with(name)).unwrap();
        assert!(pos("H→H") < pos("L→H") && pos("L→H") < pos("H→L") && pos("H→L") < pos("L→L"));
        assert_eq!(format!("{}", sample()), t);
    }
}
