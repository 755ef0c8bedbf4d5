//! Sharded evaluation: `rho eval --shard I/N` scores a deterministic slice of
//! the validation rows for every checkpoint, so N processes (Slurm array tasks,
//! GPUs of one machine) can evaluate one study together.
//!
//! The rows of a study are split into N contiguous ranges at forward-pass unit
//! boundaries (a unit is a document, or a window of a long document, or a packed
//! window), balanced by row count: shard `I` takes the units whose first row is
//! at or after `floor(I * rows / N)` and before `floor((I + 1) * rows / N)`.
//! Concatenating the parts `0..N` gives every row once, in the study's order.

use super::plan::Unit;
use crate::error::{Error, Result};
use std::ops::Range;

/// The most shards a study may be split into (`--shard I/N`, `rho slurm eval --shards N`,
/// and the `N` of part records and study.json read back). `rho eval` also refuses an `N`
/// above the number of scored tokens (a shard per token at most).
pub const MAX_SHARDS: u32 = 100_000;

/// Shard `index` of `count` (`--shard I/N`, 0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::str::FromStr for Shard {
    type Err = Error;
    fn from_str(s: &str) -> Result<Shard> {
        let bad = |why: &str| Error::flag("--shard", format!("`{s}`: {why} (expected I/N, 0 <= I < N, e.g. 0/4)"));
        let (i, n) = s.split_once('/').ok_or_else(|| bad("no `/`"))?;
        let index: u32 = i.trim().parse().map_err(|_| bad("I is not a number"))?;
        let count: u32 = n.trim().parse().map_err(|_| bad("N is not a number"))?;
        if count == 0 {
            return Err(bad("N must be at least 1"));
        }
        if count > MAX_SHARDS {
            return Err(bad(&format!("N must be at most {MAX_SHARDS}")));
        }
        if index >= count {
            return Err(bad("I must be smaller than N"));
        }
        Ok(Shard { index, count })
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Shard {
    /// The first row of shard `i` before snapping to unit boundaries.
    fn target(i: u32, count: u32, n_rows: usize) -> usize {
        ((i as u128 * n_rows as u128) / count as u128) as usize
    }

    /// The indices of the units this shard scores (`units` ordered by `row_start`,
    /// as the planners make them).
    pub fn units(&self, units: &[Unit]) -> Range<usize> {
        let n_rows = units.last().map(|u| u.row_start + u.n_scored()).unwrap_or(0);
        let first = |i: u32| units.partition_point(|u| u.row_start < Self::target(i, self.count, n_rows));
        let lo = first(self.index);
        let hi = if self.index + 1 == self.count { units.len() } else { first(self.index + 1) };
        lo..hi.max(lo)
    }

    /// The rows this shard scores.
    pub fn rows(&self, units: &[Unit]) -> Range<usize> {
        let r = self.units(units);
        if r.is_empty() {
            let at = units.get(r.start).map(|u| u.row_start).unwrap_or_else(|| {
                units.last().map(|u| u.row_start + u.n_scored()).unwrap_or(0)
            });
            return at..at;
        }
        units[r.start].row_start..units[r.end - 1].row_start + units[r.end - 1].n_scored()
    }

    /// `part-<I>-of-<N>`, I zero-padded to the width of N - 1 so that the parts
    /// of a checkpoint sort in order by name.
    pub fn stem(&self) -> String {
        let width = (self.count - 1).max(1).to_string().len();
        format!("part-{:0width$}-of-{}", self.index, self.count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn units(sizes: &[usize]) -> Vec<Unit> {
        let mut row = 0;
        sizes
            .iter()
            .map(|&n| {
                let u = Unit { tokens: vec![0; n + 1], score_from: 1, row_start: row };
                row += n;
                u
            })
            .collect()
    }

    #[test]
    fn parse_and_reject() {
        assert_eq!("2/5".parse::<Shard>().unwrap(), Shard { index: 2, count: 5 });
        assert_eq!("99999/100000".parse::<Shard>().unwrap(), Shard { index: 99999, count: MAX_SHARDS });
        for bad in ["5/5", "1/0", "a/3", "3", "-1/4", "", "1/100001", "1/4294967295"] {
            let e = bad.parse::<Shard>().unwrap_err().to_string();
            assert!(e.starts_with("--shard"), "{bad}: {e}");
        }
    }

    #[test]
    fn shards_cover_every_row_once_in_order() {
        for sizes in [vec![5, 1, 1, 7, 3, 3, 9, 2], vec![1], vec![4, 4], vec![10, 1, 1, 1]] {
            let us = units(&sizes);
            let total: usize = sizes.iter().sum();
            for n in 1..=10u32 {
                let mut next_unit = 0;
                let mut next_row = 0;
                for i in 0..n {
                    let s = Shard { index: i, count: n };
                    let (u, r) = (s.units(&us), s.rows(&us));
                    assert_eq!(u.start, next_unit, "{sizes:?} {s}");
                    assert_eq!(r.start, next_row, "{sizes:?} {s}");
                    next_unit = u.end;
                    next_row = r.end;
                }
                assert_eq!((next_unit, next_row), (us.len(), total), "{sizes:?} n={n}");
            }
        }
    }

    #[test]
    fn shards_are_balanced_by_rows() {
        let us = units(&[1; 1000]);
        for i in 0..7 {
            let r = Shard { index: i, count: 7 }.rows(&us);
            assert!(r.len() == 142 || r.len() == 143, "{}", r.len());
        }
    }

    #[test]
    fn stems_sort_in_order() {
        let names: Vec<String> = (0..12).map(|i| Shard { index: i, count: 12 }.stem()).collect();
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(names, sorted);
        assert_eq!(names[3], "part-03-of-12");
        assert_eq!(Shard { index: 0, count: 1 }.stem(), "part-0-of-1");
        assert_eq!(Shard { index: 9, count: 10 }.stem(), "part-9-of-10");
    }
}
