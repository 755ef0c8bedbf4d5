//! Chart data: pure functions from small tables to what a chart draws, and the
//! readers that fetch only the columns a chart needs from a study's Parquet files.
//!
//! Categories are carried as `u8` indices into [`Category::ALL`] (H->H, L->H,
//! H->L, L->L), so a million tokens cost a megabyte.

#![allow(clippy::needless_range_loop)]

use crate::dynamics::Category;
use crate::error::{Error, Result, WithPath};
use polars::prelude::*;
use std::collections::HashMap;
use std::path::Path;

/// Index of a category in [`Category::ALL`], from its file form (`"H->H"`) or any form
/// [`Category`] parses.
pub fn cat_index(s: &str) -> Option<u8> {
    s.parse::<Category>().ok().map(|c| c.index() as u8)
}

/// What the x-axis of a chart over a study's checkpoints shows (`rho report --x-axis`, the
/// TUI's `t`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum XAxis {
    /// The training step.
    #[default]
    Step,
    /// Training tokens seen.
    Tokens,
}

/// The x of each checkpoint on a chart, its axis title, and a note when the axis could not
/// be what was asked (`None`: as asked). `ck` holds (step, tokens seen) in the study's order.
/// Steps (tokens) are used when every checkpoint has one and they increase along the series;
/// otherwise the checkpoint's index (0, 1, …), said in the title: the series is in training
/// order, its numbers are not (stages counting from 0 again, an order given by hand).
/// Tokens are drawn in the unit of the largest (`tokens seen (B)`). Tokens asked for while a
/// checkpoint has none is `Err` with the names' indices.
pub fn checkpoint_x(ck: &[(Option<i64>, Option<u64>)], axis: XAxis) -> std::result::Result<(Vec<f64>, String), Vec<usize>> {
    let index = |why: &str| ((0..ck.len()).map(|i| i as f64).collect(), format!("checkpoint (index in the series; {why})"));
    match axis {
        XAxis::Step => {
            let steps: Option<Vec<i64>> = ck.iter().map(|c| c.0).collect();
            Ok(match steps {
                Some(s) if s.windows(2).all(|w| w[0] < w[1]) => (s.iter().map(|&v| v as f64).collect(), "checkpoint step".into()),
                Some(_) => index("the steps do not increase along it"),
                None => index("not every checkpoint has a step"),
            })
        }
        XAxis::Tokens => {
            let missing: Vec<usize> = (0..ck.len()).filter(|&i| ck[i].1.is_none()).collect();
            if !missing.is_empty() {
                return Err(missing);
            }
            let t: Vec<u64> = ck.iter().map(|c| c.1.unwrap_or(0)).collect();
            if !t.windows(2).all(|w| w[0] < w[1]) {
                return Ok(index("the tokens seen do not increase along it"));
            }
            let max = t.iter().copied().max().unwrap_or(0);
            let (unit, div) = [("T", 1e12), ("B", 1e9), ("M", 1e6), ("K", 1e3)].into_iter().find(|&(_, d)| max as f64 >= d).unwrap_or(("", 1.0));
            let title = if unit.is_empty() { "training tokens seen".to_string() } else { format!("training tokens seen ({unit})") };
            Ok((t.iter().map(|&v| v as f64 / div).collect(), title))
        }
    }
}

/// Tokens per category.
pub fn counts(cats: &[u8]) -> [u64; 4] {
    let mut n = [0u64; 4];
    for &c in cats {
        n[c as usize] += 1;
    }
    n
}

/// Running per-category sums of one checkpoint's losses.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct CategoryMean {
    /// Mean loss of each category (None when the category has no token).
    pub by_cat: [Option<f64>; 4],
    /// Mean loss over all tokens.
    pub all: f64,
}

/// Mean loss per category of one checkpoint; `cats[i]` is the category of row `i`
/// of `losses`. Accumulated in f64, one pass, no copies.
pub fn category_means(cats: &[u8], losses: &[f32]) -> CategoryMean {
    let mut s = CategorySums::default();
    s.add(cats, losses);
    s.means()
}

/// Per-category sums of one checkpoint's losses, added block by block.
#[derive(Debug, Clone, Default)]
pub struct CategorySums {
    sum: [f64; 4],
    n: [u64; 4],
}

impl CategorySums {
    /// Add a block: `cats[i]` is the category of `losses[i]`.
    pub fn add(&mut self, cats: &[u8], losses: &[f32]) {
        assert_eq!(cats.len(), losses.len());
        for (&c, &l) in cats.iter().zip(losses) {
            self.sum[c as usize] += l as f64;
            self.n[c as usize] += 1;
        }
    }

    pub fn means(&self) -> CategoryMean {
        let total: u64 = self.n.iter().sum();
        let mut by_cat = [None; 4];
        for k in 0..4 {
            if self.n[k] > 0 {
                by_cat[k] = Some(self.sum[k] / self.n[k] as f64);
            }
        }
        CategoryMean { by_cat, all: if total == 0 { f64::NAN } else { self.sum.iter().sum::<f64>() / total as f64 } }
    }
}

/// Rows of category `cat` with the largest `values` (descending; ties: lower row first), at most `k`.
pub fn top_by(values: &[f32], cats: &[u8], cat: u8, k: usize) -> Vec<usize> {
    // One pass keeping the best k (sorted): no per-token allocation.
    let better = |a: usize, b: usize| values[a].total_cmp(&values[b]).then(b.cmp(&a)).is_gt();
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k == 0 {
        return best;
    }
    for i in 0..values.len() {
        if cats[i] != cat || !values[i].is_finite() {
            continue;
        }
        if best.len() == k && !better(i, best[k - 1]) {
            continue;
        }
        let at = best.partition_point(|&j| better(j, i));
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// Linear-interpolated quantile of sorted values (q in [0, 1]).
pub fn quantile(sorted: &[f32], q: f64) -> f64 {
    match sorted.len() {
        0 => f64::NAN,
        1 => sorted[0] as f64,
        n => {
            let x = q.clamp(0.0, 1.0) * (n - 1) as f64;
            let i = x.floor() as usize;
            let j = (i + 1).min(n - 1);
            let f = x - i as f64;
            sorted[i] as f64 * (1.0 - f) + sorted[j] as f64 * f
        }
    }
}

/// Summary of one category's values: count, quantiles, mean and a histogram over a shared range.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Dist {
    pub n: u64,
    pub q05: f64,
    pub q25: f64,
    pub median: f64,
    pub q75: f64,
    pub q95: f64,
    pub mean: f64,
    /// Counts of `bins` equal bins over [lo, hi]; values outside are counted in `above`/`below`.
    pub hist: Vec<u64>,
    pub above: u64,
    /// The values themselves when there are few (at most [`FEW`]): drawn as dots, not as a violin.
    pub few: Vec<f32>,
}

/// Up to this many values a distribution is drawn as dots.
pub const FEW: usize = 30;

/// Per-category distributions of `values` (e.g. `residual_std`) on `bins` bins of [lo, hi].
pub fn distributions(values: &[f32], cats: &[u8], lo: f64, hi: f64, bins: usize) -> [Dist; 4] {
    let mut per: [Vec<f32>; 4] = Default::default();
    for (&v, &c) in values.iter().zip(cats) {
        if v.is_finite() {
            per[c as usize].push(v);
        }
    }
    let width = if hi > lo { (hi - lo) / bins as f64 } else { 1.0 };
    per.map(|mut v| {
        v.sort_by(|a, b| a.total_cmp(b));
        let mut hist = vec![0u64; bins];
        let mut above = 0;
        for &x in &v {
            let x = x as f64;
            if x > hi {
                above += 1;
                continue;
            }
            let b = (((x - lo) / width).floor().max(0.0) as usize).min(bins - 1);
            hist[b] += 1;
        }
        let mean = if v.is_empty() { f64::NAN } else { v.iter().map(|&x| x as f64).sum::<f64>() / v.len() as f64 };
        Dist {
            n: v.len() as u64,
            q05: quantile(&v, 0.05),
            q25: quantile(&v, 0.25),
            median: quantile(&v, 0.5),
            q75: quantile(&v, 0.75),
            q95: quantile(&v, 0.95),
            mean,
            hist,
            above,
            few: if v.len() <= FEW { v.clone() } else { Vec::new() },
        }
    })
}

/// SplitMix64: a fixed, seedless hash of a row index.
fn mix(i: u64) -> u64 {
    let mut z = i.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Deterministic subsample of row indices 0..n: all of them when n <= max, else
/// about `max` rows chosen by a fixed hash of the row index (the same rows every run,
/// uniformly spread, in increasing order).
pub fn subsample(n: usize, max: usize) -> Vec<usize> {
    if n <= max {
        return (0..n).collect();
    }
    let cut = ((max as f64 / n as f64) * u64::MAX as f64) as u64;
    (0..n).filter(|&i| mix(i as u64) < cut).collect()
}

/// Mean loss of the tokens a step did not keep, from the step's mean loss over all
/// tokens, over the kept ones and the kept share: (all − f·kept) / (1 − f).
/// None when every token was kept.
pub fn not_kept_loss(loss_all: f64, loss_kept: f64, kept_frac: f64) -> Option<f64> {
    if kept_frac.is_nan() || kept_frac >= 1.0 - 1e-9 || !loss_all.is_finite() || !loss_kept.is_finite() {
        return None;
    }
    Some((loss_all - kept_frac * loss_kept) / (1.0 - kept_frac))
}

/// For every token id of the validation set, how many of its occurrences fall in each category.
pub fn id_category_counts(token_ids: &[u32], cats: &[u8]) -> HashMap<u32, [u32; 4]> {
    let mut m: HashMap<u32, [u32; 4]> = HashMap::new();
    for (&id, &c) in token_ids.iter().zip(cats) {
        m.entry(id).or_default()[c as usize] += 1;
    }
    m
}

/// Kept share per trajectory category of training-stream tokens that carry no category
/// themselves: each token is matched to the validation categories by its id, with
/// weight (occurrences of the id in category c) / (occurrences of the id) in category c.
/// Tokens whose id never occurs in the validation set are left out.
/// Returns (kept share per category, None where the weight is zero; kept share of all
/// tokens; number of tokens matched by id).
pub fn kept_share_by_category(
    token_ids: &[u32],
    kept: &[bool],
    by_id: &HashMap<u32, [u32; 4]>,
) -> ([Option<f64>; 4], f64, u64) {
    let mut w = [0f64; 4];
    let mut wk = [0f64; 4];
    let mut matched = 0u64;
    let mut n_kept = 0u64;
    for (&id, &k) in token_ids.iter().zip(kept) {
        n_kept += k as u64;
        if let Some(c) = by_id.get(&id) {
            let tot: u32 = c.iter().sum();
            if tot == 0 {
                continue;
            }
            matched += 1;
            for j in 0..4 {
                let x = c[j] as f64 / tot as f64;
                w[j] += x;
                if k {
                    wk[j] += x;
                }
            }
        }
    }
    let mut share = [None; 4];
    for j in 0..4 {
        if w[j] > 0.0 {
            share[j] = Some(wk[j] / w[j]);
        }
    }
    let all = if token_ids.is_empty() { f64::NAN } else { n_kept as f64 / token_ids.len() as f64 };
    (share, all, matched)
}

/// The sequence (document) to show as a passage: the one with the most distinct
/// categories, then the most tokens (up to `cap`), then the lowest seq.
pub fn choose_passage(seqs: &[u32], cats: &[u8], cap: usize) -> Option<u32> {
    let mut m: HashMap<u32, (usize, [bool; 4])> = HashMap::new();
    for (&s, &c) in seqs.iter().zip(cats) {
        let e = m.entry(s).or_default();
        e.0 += 1;
        e.1[c as usize] = true;
    }
    m.into_iter()
        .map(|(s, (n, seen))| (seen.iter().filter(|&&b| b).count(), n.min(cap), s))
        .max_by(|a, b| a.0.cmp(&b.0).then(a.1.cmp(&b.1)).then(b.2.cmp(&a.2)))
        .map(|t| t.2)
}

/// A run of text drawn in one style: `cat` None for text between tokens (or an unscored token).
#[derive(Debug, Clone, PartialEq)]
pub struct Piece {
    pub text: String,
    pub cat: Option<u8>,
}

/// One scored token of a passage.
#[derive(Debug, Clone, PartialEq)]
pub struct PassageToken {
    pub doc: u32,
    pub start: u32,
    pub end: u32,
    pub text: String,
    pub cat: u8,
}

fn push(out: &mut Vec<Piece>, text: &str, cat: Option<u8>) {
    if !text.is_empty() {
        out.push(Piece { text: text.to_string(), cat });
    }
}

/// The pieces of text of a sequence's tokens (in position order).
///
/// With the document's text (`doc_text(doc)`), each token is drawn as its exact byte
/// span and the text between spans (whitespace, an unscored first token when
/// `with_doc_start`) is drawn uncoloured. Without it, the token's own text is used and
/// a gap between spans becomes one uncoloured space (single-token decoding may drop a
/// leading space).
pub fn passage_pieces<'a>(toks: &[PassageToken], doc_text: impl Fn(u32) -> Option<&'a str>, with_doc_start: bool) -> Vec<Piece> {
    let mut out = Vec::new();
    let mut prev: Option<(u32, usize)> = None; // (doc, end)
    for t in toks {
        let (s, e) = (t.start as usize, t.end as usize);
        let text = doc_text(t.doc).filter(|d| e <= d.len() && s <= e && d.is_char_boundary(s) && d.is_char_boundary(e));
        if let Some(prev_doc) = prev.map(|p| p.0) {
            if prev_doc != t.doc {
                push(&mut out, "\n", None);
                prev = None;
            }
        }
        match text {
            Some(d) => {
                let from = match prev {
                    Some((_, pe)) => pe,
                    None if with_doc_start => 0,
                    None => s,
                };
                if from < s && d.is_char_boundary(from) {
                    push(&mut out, &d[from..s], None);
                }
                // Tokens that share bytes (a character split over byte-level tokens): the
                // shared text goes to the first of them.
                let s2 = s.max(from.min(e));
                if d.is_char_boundary(s2) {
                    push(&mut out, &d[s2..e], Some(t.cat));
                }
            }
            None => {
                if let Some((_, pe)) = prev {
                    if (t.start as usize) > pe && !t.text.starts_with(char::is_whitespace) {
                        push(&mut out, " ", None);
                    }
                }
                push(&mut out, &t.text, Some(t.cat));
            }
        }
        prev = Some((t.doc, e.max(prev.map(|p| p.1).unwrap_or(0))));
    }
    out
}

/// Lay pieces out in lines of at most `width` pixels (`measure` gives a string's
/// width). Newlines break lines; tabs become 4 spaces; a piece that does not fit
/// moves to the next line (leading spaces dropped there); a piece wider than a line
/// is split by characters. Stops after `max_lines` lines; the bool says whether
/// everything fit.
pub fn wrap(pieces: &[Piece], width: u32, max_lines: usize, measure: &dyn Fn(&str) -> u32) -> (Vec<Vec<Piece>>, bool) {
    let mut lines: Vec<Vec<Piece>> = vec![Vec::new()];
    let mut x = 0u32;
    let full = |lines: &Vec<Vec<Piece>>| lines.len() > max_lines;
    for p in pieces {
        let text = p.text.replace('\t', "    ").replace('\r', "");
        for (li, part) in text.split('\n').enumerate() {
            if li > 0 {
                lines.push(Vec::new());
                x = 0;
                if full(&lines) {
                    lines.pop();
                    return (lines, false);
                }
            }
            let mut rest: String = part.to_string();
            while !rest.is_empty() {
                if x == 0 {
                    let t = rest.trim_start_matches(' ');
                    if t.is_empty() && !lines.last().unwrap().is_empty() {
                        break;
                    }
                    rest = t.to_string();
                    if rest.is_empty() {
                        break;
                    }
                }
                let w = measure(&rest);
                if x + w <= width {
                    lines.last_mut().unwrap().push(Piece { text: rest.clone(), cat: p.cat });
                    x += w;
                    break;
                }
                if x > 0 {
                    lines.push(Vec::new());
                    x = 0;
                    if full(&lines) {
                        lines.pop();
                        return (lines, false);
                    }
                    continue;
                }
                // Wider than a whole line: split by characters.
                let mut cut = 0;
                for (i, ch) in rest.char_indices() {
                    let next = i + ch.len_utf8();
                    if measure(&rest[..next]) > width && cut > 0 {
                        break;
                    }
                    cut = next;
                }
                lines.last_mut().unwrap().push(Piece { text: rest[..cut].to_string(), cat: p.cat });
                rest = rest[cut..].to_string();
                lines.push(Vec::new());
                x = 0;
                if full(&lines) {
                    lines.pop();
                    return (lines, false);
                }
            }
        }
    }
    while lines.len() > 1 && lines.last().map(|l| l.is_empty()).unwrap_or(false) {
        lines.pop();
    }
    (lines, true)
}

/// Place lines in `ncols` columns (column by column), keeping blocks of lines
/// separated by empty lines (documents) in one column when they fit. Returns each
/// line's (column, row); a blank line that would open a column is dropped (None).
pub fn columns(lines: &[Vec<Piece>], ncols: usize) -> Vec<Option<(usize, usize)>> {
    let ncols = ncols.max(1);
    // The shortest column height at which the greedy placement needs at most ncols columns.
    let mut per_col = lines.len().div_ceil(ncols).max(1);
    loop {
        let (pos, used) = place_columns(lines, per_col);
        if used <= ncols || per_col >= lines.len() {
            return pos;
        }
        per_col += 1;
    }
}

fn place_columns(lines: &[Vec<Piece>], per_col: usize) -> (Vec<Option<(usize, usize)>>, usize) {
    let blank = |l: &Vec<Piece>| l.iter().all(|p| p.text.trim().is_empty());
    let mut out = vec![None; lines.len()];
    let (mut c, mut r) = (0usize, 0usize);
    let mut i = 0;
    while i < lines.len() {
        // the block: from i up to the next blank line (included)
        let mut j = i;
        while j < lines.len() && !blank(&lines[j]) {
            j += 1;
        }
        let end = (j + 1).min(lines.len());
        let content = j - i;
        if r > 0 && r + content > per_col {
            c += 1;
            r = 0;
        }
        for k in i..end {
            if r == 0 && blank(&lines[k]) {
                continue;
            }
            if r >= per_col {
                if blank(&lines[k]) {
                    continue;
                }
                c += 1;
                r = 0;
            }
            out[k] = Some((c, r));
            r += 1;
        }
        i = end;
    }
    (out, c + 1)
}

/// A token's text for a legend: quoted, with escapes for newlines and tabs, at most `max` chars.
pub fn token_label(text: &str, max: usize) -> String {
    let esc: String = text.chars().flat_map(|c| match c {
        '\n' => vec!['\\', 'n'],
        '\t' => vec!['\\', 't'],
        '\r' => vec!['\\', 'r'],
        c if c.is_control() => vec!['?'],
        c => vec![c],
    }).collect();
    let short: String = if esc.chars().count() > max { esc.chars().take(max).chain(std::iter::once('…')).collect() } else { esc };
    format!("\"{short}\"")
}

// ---- readers -------------------------------------------------------------

/// Scan a Parquet file lazily, keep only `cols`, optionally filter, collect.
/// A missing file is an error naming it, with `missing` as the hint.
pub fn scan(path: &Path, cols: &[&str], filter: Option<Expr>, missing: &str) -> Result<DataFrame> {
    if !path.exists() {
        return Err(Error::file(path, format!("missing: {missing}")));
    }
    let s = path.to_str().ok_or_else(|| Error::file(path, "path is not UTF-8"))?;
    let mut lf = LazyFrame::scan_parquet(PlPath::new(s), ScanArgsParquet::default()).with_path(path)?;
    if let Some(f) = filter {
        lf = lf.filter(f);
    }
    lf.select(cols.iter().map(|c| col(*c)).collect::<Vec<_>>()).collect().with_path(path)
}

fn column<'a>(df: &'a DataFrame, name: &str, path: &Path) -> Result<&'a Column> {
    df.column(name).map_err(|_| Error::file(path, format!("no column `{name}`")))
}

pub fn u32s(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<u32>> {
    let c = column(df, name, path)?.cast(&DataType::UInt32).map_err(|e| Error::file(path, format!("column `{name}`: {e}")))?;
    let ca = c.u32().with_path(path)?;
    if ca.null_count() > 0 {
        return Err(Error::file(path, format!("column `{name}` has null values")));
    }
    Ok(ca.into_no_null_iter().collect())
}

pub fn f32s(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<f32>> {
    let c = column(df, name, path)?.cast(&DataType::Float32).map_err(|e| Error::file(path, format!("column `{name}`: {e}")))?;
    Ok(c.f32().with_path(path)?.into_iter().map(|v| v.unwrap_or(f32::NAN)).collect())
}

pub fn bools(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<bool>> {
    let c = column(df, name, path)?;
    Ok(c.bool().with_path(path)?.into_iter().map(|v| v.unwrap_or(false)).collect())
}

pub fn strings(df: &DataFrame, name: &str, path: &Path) -> Result<Vec<String>> {
    let c = column(df, name, path)?;
    Ok(c.str().with_path(path)?.into_iter().map(|v| v.unwrap_or("").to_string()).collect())
}

/// Category indices of a `category` column.
pub fn categories(df: &DataFrame, path: &Path) -> Result<Vec<u8>> {
    let c = column(df, "category", path)?;
    let ca = c.str().with_path(path)?;
    let mut out = Vec::with_capacity(ca.len());
    for (i, v) in ca.into_iter().enumerate() {
        let v = v.unwrap_or("");
        out.push(cat_index(v).ok_or_else(|| Error::file(path, format!("row {i}: `{v}` is not a category")))?);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checkpoint_x_axis() {
        let b = 1_000_000_000u64;
        let ck = [(Some(100), Some(b)), (Some(200), Some(3 * b / 2)), (Some(300), Some(4 * b))];
        assert_eq!(checkpoint_x(&ck, XAxis::Step).unwrap(), (vec![100.0, 200.0, 300.0], "checkpoint step".to_string()));
        assert_eq!(checkpoint_x(&ck, XAxis::Tokens).unwrap(), (vec![1.0, 1.5, 4.0], "training tokens seen (B)".to_string()));
        // OLMo-2-like stages: steps and tokens start again in stage 2
        let staged = [(Some(900), Some(3800 * b)), (Some(100), Some(b))];
        for axis in [XAxis::Step, XAxis::Tokens] {
            let (x, t) = checkpoint_x(&staged, axis).unwrap();
            assert_eq!(x, vec![0.0, 1.0]);
            assert!(t.starts_with("checkpoint (index in the series"), "{t}");
        }
        assert_eq!(checkpoint_x(&[(None, Some(1)), (Some(3), None)], XAxis::Tokens).unwrap_err(), vec![1]);
        assert!(checkpoint_x(&[(None, Some(1)), (Some(3), None)], XAxis::Step).unwrap().1.contains("not every checkpoint has a step"));
    }

    #[test]
    fn counts_and_means_per_category() {
        let cats = [0u8, 3, 3, 2, 0];
        let losses = [4.0f32, 1.0, 2.0, 3.0, 6.0];
        assert_eq!(counts(&cats), [2, 0, 1, 2]);
        let m = category_means(&cats, &losses);
        assert_eq!(m.by_cat, [Some(5.0), None, Some(3.0), Some(1.5)]);
        assert!((m.all - 16.0 / 5.0).abs() < 1e-12);
        assert_eq!(cat_index("H->L"), Some(2));
        assert_eq!(cat_index("L→L"), Some(3));
        assert_eq!(cat_index("nope"), None);
    }

    #[test]
    fn top_by_picks_the_largest_of_one_category() {
        let v = [0.1f32, 0.9, 0.5, 0.9, f32::NAN, 0.7];
        let c = [3u8, 3, 3, 3, 3, 0];
        assert_eq!(top_by(&v, &c, 3, 2), vec![1, 3]);
        assert_eq!(top_by(&v, &c, 3, 10), vec![1, 3, 2, 0]);
        assert_eq!(top_by(&v, &c, 0, 3), vec![5]);
        assert!(top_by(&v, &c, 1, 3).is_empty());
    }

    #[test]
    fn top_by_equals_a_full_sort_with_ties() {
        // Values from a small set (many ties), categories mixed.
        let mut x = 12345u64;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let v: Vec<f32> = (0..5000).map(|_| (next() % 37) as f32 / 7.0).collect();
        let c: Vec<u8> = (0..5000).map(|_| (next() % 4) as u8).collect();
        for cat in 0..4u8 {
            let mut want: Vec<usize> = (0..v.len()).filter(|&i| c[i] == cat).collect();
            want.sort_by(|&a, &b| v[b].total_cmp(&v[a]).then(a.cmp(&b)));
            for k in [0, 1, 5, 50, 5000] {
                assert_eq!(top_by(&v, &c, cat, k), want[..k.min(want.len())].to_vec(), "cat {cat} k {k}");
            }
        }
    }

    #[test]
    fn quantiles_and_histograms() {
        let s = [1.0f32, 2.0, 3.0, 4.0, 5.0];
        assert_eq!(quantile(&s, 0.5), 3.0);
        assert_eq!(quantile(&s, 0.25), 2.0);
        assert_eq!(quantile(&s, 0.1), 1.4);
        assert!(quantile(&[], 0.5).is_nan());
        let vals = [0.05f32, 0.15, 0.15, 0.95, 2.0, 0.5];
        let cats = [0u8, 0, 0, 0, 0, 1];
        let d = distributions(&vals, &cats, 0.0, 1.0, 10);
        assert_eq!(d[0].n, 5);
        assert_eq!(d[0].hist[0], 1);
        assert_eq!(d[0].hist[1], 2);
        assert_eq!(d[0].hist[9], 1);
        assert_eq!(d[0].above, 1);
        assert_eq!(d[0].median, 0.15000000596046448);
        assert_eq!(d[1].n, 1);
        assert_eq!(d[1].few, vec![0.5]);
        assert_eq!(d[1].hist[5], 1);
        assert_eq!(d[2].n, 0);
        assert!(d[2].mean.is_nan());
    }

    #[test]
    fn subsample_is_deterministic_and_bounded() {
        assert_eq!(subsample(5, 10), vec![0, 1, 2, 3, 4]);
        let a = subsample(100_000, 5_000);
        assert_eq!(a, subsample(100_000, 5_000));
        assert!((4_500..5_500).contains(&a.len()), "{}", a.len());
        assert!(a.windows(2).all(|w| w[0] < w[1]));
        // spread over the whole range
        assert!(a[0] < 1000 && *a.last().unwrap() > 99_000);
    }

    #[test]
    fn not_kept_loss_inverts_the_mixture() {
        // 40% kept at loss 2, 60% not kept at loss 1 -> all = 1.4
        let nk = not_kept_loss(1.4, 2.0, 0.4).unwrap();
        assert!((nk - 1.0).abs() < 1e-12);
        assert_eq!(not_kept_loss(1.0, 1.0, 1.0), None);
    }

    #[test]
    fn kept_share_weights_ids_by_their_validation_categories() {
        // id 7: always H->H; id 8: half L->L, half H->L; id 9 not in validation.
        let by_id = id_category_counts(&[7, 7, 8, 8], &[0, 0, 3, 2]);
        assert_eq!(by_id[&7], [2, 0, 0, 0]);
        let ids = [7, 7, 8, 8, 9];
        let kept = [false, true, true, true, true];
        let (share, all, matched) = kept_share_by_category(&ids, &kept, &by_id);
        assert_eq!(share[0], Some(0.5));
        assert_eq!(share[1], None);
        assert_eq!(share[2], Some(1.0));
        assert_eq!(share[3], Some(1.0));
        assert_eq!(all, 0.8);
        assert_eq!(matched, 4);
    }

    #[test]
    fn passage_prefers_diverse_then_long_documents() {
        let seqs = [0u32, 0, 0, 1, 1, 2, 2, 2, 2];
        let cats = [3u8, 3, 3, 0, 2, 0, 2, 2, 2];
        assert_eq!(choose_passage(&seqs, &cats, 100), Some(2));
        assert_eq!(choose_passage(&[], &[], 100), None);
    }

    fn tok(doc: u32, start: u32, end: u32, text: &str, cat: u8) -> PassageToken {
        PassageToken { doc, start, end, text: text.into(), cat }
    }

    #[test]
    fn pieces_from_spans_and_from_token_text() {
        let doc = "The fox runs.";
        let toks = vec![tok(0, 3, 7, "fox", 3), tok(0, 8, 12, "runs", 0), tok(0, 12, 13, ".", 2)];
        let with = passage_pieces(&toks, |_| Some(doc), true);
        let txt: Vec<(&str, Option<u8>)> = with.iter().map(|p| (p.text.as_str(), p.cat)).collect();
        assert_eq!(txt, vec![("The", None), (" fox", Some(3)), (" ", None), ("runs", Some(0)), (".", Some(2))]);
        let without = passage_pieces(&toks, |_| None, true);
        let txt: Vec<(&str, Option<u8>)> = without.iter().map(|p| (p.text.as_str(), p.cat)).collect();
        assert_eq!(txt, vec![("fox", Some(3)), (" ", None), ("runs", Some(0)), (".", Some(2))]);
        // a new document starts a new line
        let two = vec![tok(0, 0, 3, "The", 3), tok(1, 0, 2, "Hi", 1)];
        let p = passage_pieces(&two, |_| None, false);
        assert_eq!(p[1], Piece { text: "\n".into(), cat: None });
    }

    #[test]
    fn wrap_breaks_lines_and_stops_when_full() {
        let m = |s: &str| s.chars().count() as u32 * 10;
        let pieces: Vec<Piece> = ["aaa", " bbb", " ccc", "\nd", " eeeeeeeeeeeeeee"]
            .iter()
            .map(|t| Piece { text: t.to_string(), cat: Some(0) })
            .collect();
        let (lines, all) = wrap(&pieces, 80, 10, &m);
        assert!(all);
        let s: Vec<String> = lines.iter().map(|l| l.iter().map(|p| p.text.as_str()).collect()).collect();
        assert_eq!(s, vec!["aaa bbb", "ccc", "d", "eeeeeeee", "eeeeeee"]);
        let (lines, all) = wrap(&pieces, 80, 2, &m);
        assert!(!all);
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn columns_keep_documents_together() {
        let l = |t: &str| vec![Piece { text: t.into(), cat: None }];
        // blocks of 3, 2 and 3 lines separated by blank lines: 10 lines, 2 columns of 5
        let lines: Vec<_> = ["a", "a", "a", "", "b", "b", "", "c", "c", "c"].iter().map(|t| l(t)).collect();
        let pos = columns(&lines, 2);
        // a and b (6 rows with the blank between) fill column 0, c starts column 1
        assert_eq!(pos[0], Some((0, 0)));
        assert_eq!(pos[4], Some((0, 4)), "{pos:?}");
        assert_eq!(pos[5], Some((0, 5)));
        assert_eq!(pos[6], None, "a blank line never opens a column");
        assert_eq!(pos[7], Some((1, 0)));
        assert_eq!(pos[9], Some((1, 2)));
        // never more than the columns asked for
        let pos = columns(&lines, 3);
        assert!(pos.iter().flatten().all(|p| p.0 < 3), "{pos:?}");
        // one column: rows in order
        let pos = columns(&lines, 1);
        assert_eq!(pos[9], Some((0, 9)));
    }

    #[test]
    fn token_labels_escape_and_shorten() {
        assert_eq!(token_label(" the", 10), "\" the\"");
        assert_eq!(token_label("a\nb", 10), "\"a\\nb\"");
        assert_eq!(token_label("abcdefghijkl", 4), "\"abcd…\"");
    }
}
