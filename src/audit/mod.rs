//! `rho audit`: category shares and a selection of tokens with their context,
//! as a table, JSON, JSON Lines or CSV, with `--fail-if` gates (exit status 3).
//!
//! Reads `categories.json`, `trajectories.parquet` and `tokens.parquet` of a
//! study lazily: the filters, the sort and the limit run on the Parquet scans
//! with only the columns they need, and the token text is fetched for the
//! selected tokens and their context only.
//!
//! The JSON output is documented in `docs/audit-json.md` ([`AuditReport`]).

mod condition;
mod output;
mod schema;

pub use condition::{parse_condition, Condition, Op};
pub use output::{csv_field, render, render_csv, render_jsonl, render_table, show_text, CSV_HEADER};
pub use schema::{
    AuditLine, AuditReport, AuditSummary, ConditionResult, Query, ShareRecord, SortKey, TokenRecord,
    SCHEMA_VERSION,
};

use crate::util::count_rows as count;
use crate::dynamics::{categories_path, trajectories_path, CategorizeSummary, Category};
use crate::error::{Error, Result, WithPath};
use crate::eval::study::TOKENS;
use polars::prelude::*;
use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

/// Output format of `rho audit`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Shares and a table of tokens, for people.
    Table,
    /// One JSON document (docs/audit-json.md).
    Json,
    /// JSON Lines: a summary record, then one record per token.
    Jsonl,
    /// CSV of the selected tokens (RFC 4180 quoting), with a header row.
    Csv,
}

/// `rho audit` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct AuditArgs {
    /// Study folder (after `rho eval` and `rho categorize`).
    #[arg(long)]
    pub study: PathBuf,
    /// Only tokens of this category: H->H, L->H, H->L or L->L (H→H and HH also work).
    #[arg(long)]
    pub category: Option<String>,
    /// Sort key (largest first unless --ascending).
    #[arg(long, value_enum, default_value_t = SortKey::ResidualStd)]
    pub sort: SortKey,
    /// Smallest first.
    #[arg(long)]
    pub ascending: bool,
    /// Show at most this many tokens.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// Only tokens whose text contains TEXT (case-sensitive).
    #[arg(long, value_name = "TEXT")]
    pub contains: Option<String>,
    /// Tokens of context shown on each side.
    #[arg(long, default_value_t = 4)]
    pub context: usize,
    /// table, json, jsonl or csv.
    #[arg(long, value_enum, default_value_t = Format::Table)]
    pub format: Format,
    /// Exit with status 3 when this holds, e.g. 'H->H>0.15' (share as a fraction, or 15%).
    /// Comparisons: > >= < <=. May be given several times.
    #[arg(long = "fail-if", value_name = "COND")]
    pub fail_if: Vec<String>,
}

/// What to select (the parsed flags).
#[derive(Debug, Clone, PartialEq)]
pub struct AuditOptions {
    pub category: Option<Category>,
    pub sort: SortKey,
    pub ascending: bool,
    pub top: usize,
    pub contains: Option<String>,
    pub context: usize,
    pub fail_if: Vec<Condition>,
}

impl Default for AuditOptions {
    fn default() -> Self {
        AuditOptions {
            category: None,
            sort: SortKey::ResidualStd,
            ascending: false,
            top: 20,
            contains: None,
            context: 4,
            fail_if: Vec::new(),
        }
    }
}

impl AuditArgs {
    /// Parse and check the flags (errors are flag errors: exit status 2).
    pub fn options(&self) -> Result<AuditOptions> {
        let category = match &self.category {
            None => None,
            Some(s) => Some(s.parse::<Category>().map_err(|e| Error::flag("--category", e.to_string()))?),
        };
        let fail_if = self.fail_if.iter().map(|s| parse_condition(s)).collect::<Result<Vec<_>>>()?;
        if self.context > 1000 {
            return Err(Error::flag("--context", "at most 1000 tokens on each side"));
        }
        Ok(AuditOptions {
            category,
            sort: self.sort,
            ascending: self.ascending,
            top: self.top,
            contains: self.contains.clone().filter(|s| !s.is_empty()),
            context: self.context,
            fail_if,
        })
    }
}

/// `rho audit`: print the report in the chosen format; a holding `--fail-if`
/// condition becomes [`Error::Gate`] (exit status 3) after the output is printed.
pub fn run_cli(args: &AuditArgs) -> Result<()> {
    let opts = args.options()?;
    let report = audit_study(&args.study, &opts)?;
    let text = render(&report, args.format)?;
    {
        use std::io::Write;
        let mut out = std::io::stdout().lock();
        // A closed pipe (`| head`) is not an error worth reporting.
        let _ = out.write_all(text.as_bytes()).and_then(|_| out.flush());
    }
    if report.failed {
        let held: Vec<String> = report
            .fail_if
            .iter()
            .filter(|c| c.holds)
            .map(|c| format!("{} (share {:.4})", c.condition, c.share))
            .collect();
        return Err(Error::Gate(format!("--fail-if: condition holds: {}", held.join("; "))));
    }
    Ok(())
}

fn scan(path: &Path) -> Result<LazyFrame> {
    if !path.exists() {
        let hint = if path.ends_with(TOKENS) { "run `rho eval` first" } else { "run `rho categorize` first" };
        return Err(Error::file(path, format!("missing: {hint}")));
    }
    let s = path.to_str().ok_or_else(|| Error::file(path, "path is not UTF-8"))?;
    LazyFrame::scan_parquet(PlPath::new(s), ScanArgsParquet::default()).with_path(path)
}

/// Audit a study: shares from `categories.json`, tokens from `trajectories.parquet`
/// and `tokens.parquet`.
pub fn audit_study(study: &Path, opts: &AuditOptions) -> Result<AuditReport> {
    // A study evaluated in shards is audited only when every part is there.
    if crate::eval::study::Manifest::path(study).exists() {
        crate::eval::study::Manifest::load(study)?;
    }
    let cpath = categories_path(study);
    if !cpath.exists() {
        return Err(Error::file(&cpath, "missing: run `rho categorize` first"));
    }
    // categories.json and trajectories.parquet of one run of `rho categorize`, or an error
    let summary = crate::dynamics::load_categorized(study)?;
    let tpath = trajectories_path(study);
    let kpath = study.join(TOKENS);
    let traj = scan(&tpath)?;
    let tokens = scan(&kpath)?;
    let n_rows = count(traj.clone()).with_path(&tpath)?;
    if n_rows != summary.total {
        return Err(Error::file(
            &tpath,
            format!(
                "has {n_rows} tokens but {} counts {}: run `rho categorize` again",
                cpath.display(),
                summary.total
            ),
        ));
    }
    let (matched, tokens) = select_tokens(traj, tokens, opts).map_err(|e| match e {
        Error::Polars(p) => Error::file(study, p.to_string()),
        e => e,
    })?;
    Ok(build_report(&study.display().to_string(), &summary, opts, matched, tokens))
}

/// Assemble the report: shares, query, conditions evaluated on the shares.
pub fn build_report(
    study: &str,
    summary: &CategorizeSummary,
    opts: &AuditOptions,
    matched: u64,
    tokens: Vec<TokenRecord>,
) -> AuditReport {
    let categories: Vec<ShareRecord> = Category::ALL
        .iter()
        .map(|&c| ShareRecord { category: c, count: summary.count(c), share: summary.share(c) })
        .collect();
    let fail_if: Vec<ConditionResult> = opts
        .fail_if
        .iter()
        .map(|c| {
            let share = summary.share(c.category);
            ConditionResult {
                condition: c.to_string(),
                category: c.category,
                op: c.op,
                value: c.value,
                share,
                holds: c.holds(share),
            }
        })
        .collect();
    let failed = fail_if.iter().any(|c| c.holds);
    AuditReport {
        schema_version: SCHEMA_VERSION,
        study: study.to_string(),
        threshold: summary.threshold,
        l_mean: summary.l_mean,
        checkpoints: summary.checkpoints.clone(),
        total: summary.total,
        categories,
        query: Query {
            category: opts.category,
            sort: opts.sort,
            ascending: opts.ascending,
            top: opts.top as u64,
            contains: opts.contains.clone(),
            context: opts.context as u64,
        },
        matched,
        fail_if,
        failed,
        tokens,
    }
}


/// A boolean expression: `text` contains `pat` (literal substring). Written as a
/// map over the column so it needs no regex support in polars.
fn contains_expr(pat: &str) -> Expr {
    let pat = pat.to_string();
    col("text").map(
        move |c: Column| {
            let ca = c.str()?;
            let out: BooleanChunked =
                ca.into_iter().map(|o| Some(o.map(|s| s.contains(pat.as_str())).unwrap_or(false))).collect();
            Ok(out.with_name(c.name().clone()).into_column())
        },
        |_, f| Ok(Field::new(f.name().clone(), DataType::Boolean)),
    )
}

const TRAJ_COLS: [&str; 11] = [
    "seq", "pos", "token_id", "category", "delta", "slope", "first_loss", "last_loss", "mean_loss", "std_loss",
    "residual_std",
];

fn col_u32(df: &DataFrame, name: &str) -> PolarsResult<Vec<u32>> {
    let c = df.column(name)?.cast(&DataType::UInt32)?;
    Ok(c.u32()?.into_iter().map(|v| v.unwrap_or(0)).collect())
}

fn col_u64(df: &DataFrame, name: &str) -> PolarsResult<Vec<u64>> {
    let c = df.column(name)?.cast(&DataType::UInt64)?;
    Ok(c.u64()?.into_iter().map(|v| v.unwrap_or(0)).collect())
}

fn col_f32(df: &DataFrame, name: &str) -> PolarsResult<Vec<f32>> {
    let c = df.column(name)?.cast(&DataType::Float32)?;
    Ok(c.f32()?.into_iter().map(|v| v.unwrap_or(f32::NAN)).collect())
}

fn col_str(df: &DataFrame, name: &str) -> PolarsResult<Vec<String>> {
    let c = df.column(name)?;
    Ok(c.str()?.into_iter().map(|v| v.unwrap_or("").to_string()).collect())
}

/// Text and place of one scored token, from `tokens.parquet`.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct TokenInfo {
    pub doc: u32,
    pub text: String,
    pub start: u64,
    pub end: u64,
}

/// The context of token (seq, pos): the texts of the scored tokens at
/// pos-k..pos-1 and pos+1..pos+k of the same seq, concatenated. Positions that
/// were not scored (pos 0, or outside the sequence) are skipped.
pub fn context(texts: &HashMap<(u32, u32), TokenInfo>, seq: u32, pos: u32, k: usize) -> (String, String) {
    let k = k as u64;
    let p = pos as u64;
    let mut before = String::new();
    for q in p.saturating_sub(k)..p {
        if let Some(t) = texts.get(&(seq, q as u32)) {
            before.push_str(&t.text);
        }
    }
    let mut after = String::new();
    for q in p + 1..=(p + k).min(u32::MAX as u64) {
        if let Some(t) = texts.get(&(seq, q as u32)) {
            after.push_str(&t.text);
        }
    }
    (before, after)
}

/// Select tokens from the `trajectories` and `tokens` tables (lazy scans, or
/// any lazy frames with their columns): filter by category and text, sort,
/// keep the top N, and fetch their text and context. Returns the number of
/// tokens that passed the filters and the selected tokens.
pub fn select_tokens(traj: LazyFrame, tokens: LazyFrame, opts: &AuditOptions) -> Result<(u64, Vec<TokenRecord>)> {
    let mut lf = traj.select(TRAJ_COLS.iter().map(|c| col(*c)).collect::<Vec<_>>());
    if let Some(c) = opts.category {
        lf = lf.filter(col("category").eq(lit(c.as_file_str())));
    }
    if let Some(pat) = &opts.contains {
        let keys = tokens
            .clone()
            .select([col("seq"), col("pos"), col("text")])
            .filter(contains_expr(pat))
            .select([col("seq"), col("pos")]);
        lf = lf.join(keys, [col("seq"), col("pos")], [col("seq"), col("pos")], JoinArgs::new(JoinType::Inner));
    }
    let matched = count(lf.clone())?;
    if opts.top == 0 || matched == 0 {
        return Ok((matched, Vec::new()));
    }
    let key = opts.sort.column();
    // Two passes keep the sort small: the N-th best key value (a one-column
    // top-N), then the full sort of only the rows at least as good as it
    // (ties included, so the order by (seq, pos) among ties is exact).
    let nth = lf
        .clone()
        .select([col(key)])
        .sort(
            [key],
            SortMultipleOptions::default().with_order_descending(!opts.ascending).with_nulls_last(true),
        )
        .limit(opts.top.min(IdxSize::MAX as usize) as IdxSize)
        .collect()?;
    let nth = col_f32(&nth, key)?.last().copied().filter(|v| v.is_finite());
    if let Some(v) = nth {
        lf = lf.filter(if opts.ascending { col(key).lt_eq(lit(v)) } else { col(key).gt_eq(lit(v)) });
    }
    let top = lf
        .sort_by_exprs(
            [col(key), col("seq"), col("pos")],
            SortMultipleOptions::default()
                .with_order_descending_multi([!opts.ascending, false, false])
                .with_nulls_last(true)
                .with_maintain_order(true),
        )
        .limit(opts.top.min(IdxSize::MAX as usize) as IdxSize)
        .collect()?;

    let seq = col_u32(&top, "seq")?;
    let pos = col_u32(&top, "pos")?;
    let token_id = col_u32(&top, "token_id")?;
    let cats = col_str(&top, "category")?;
    let f = |n: &str| col_f32(&top, n);
    let (delta, slope, first, last, mean, std, resid) = (
        f("delta")?,
        f("slope")?,
        f("first_loss")?,
        f("last_loss")?,
        f("mean_loss")?,
        f("std_loss")?,
        f("residual_std")?,
    );

    // Text of the selected tokens and of their context, by (seq, pos).
    let k = opts.context as i64;
    let mut wanted: BTreeSet<(u32, u32)> = BTreeSet::new();
    for (&s, &p) in seq.iter().zip(&pos) {
        for q in (p as i64 - k).max(0)..=(p as i64 + k).min(u32::MAX as i64) {
            wanted.insert((s, q as u32));
        }
    }
    let (lo, hi) = (*seq.iter().min().unwrap(), *seq.iter().max().unwrap());
    let keys = DataFrame::new(vec![
        Column::new("seq".into(), wanted.iter().map(|w| w.0).collect::<Vec<u32>>()),
        Column::new("pos".into(), wanted.iter().map(|w| w.1).collect::<Vec<u32>>()),
    ])?;
    let got = tokens
        .select([col("seq"), col("pos"), col("doc"), col("text"), col("start"), col("end")])
        .with_columns([col("seq").cast(DataType::UInt32), col("pos").cast(DataType::UInt32)])
        .filter(col("seq").gt_eq(lit(lo)).and(col("seq").lt_eq(lit(hi))))
        .join(keys.lazy(), [col("seq"), col("pos")], [col("seq"), col("pos")], JoinArgs::new(JoinType::Inner))
        .collect()?;
    let mut texts: HashMap<(u32, u32), TokenInfo> = HashMap::with_capacity(got.height());
    {
        let (s, p, d, t, a, b) = (
            col_u32(&got, "seq")?,
            col_u32(&got, "pos")?,
            col_u32(&got, "doc")?,
            col_str(&got, "text")?,
            col_u64(&got, "start")?,
            col_u64(&got, "end")?,
        );
        for i in 0..got.height() {
            texts.insert((s[i], p[i]), TokenInfo { doc: d[i], text: t[i].clone(), start: a[i], end: b[i] });
        }
    }

    let mut out = Vec::with_capacity(top.height());
    for i in 0..top.height() {
        let category: Category = cats[i]
            .parse()
            .map_err(|_| Error::msg(format!("trajectories: unknown category `{}`", cats[i])))?;
        let info = texts.get(&(seq[i], pos[i])).cloned().unwrap_or_default();
        let (context_before, context_after) = context(&texts, seq[i], pos[i], opts.context);
        out.push(TokenRecord {
            rank: i as u64 + 1,
            seq: seq[i],
            pos: pos[i],
            doc: info.doc,
            token_id: token_id[i],
            text: info.text,
            start: info.start,
            end: info.end,
            category,
            delta: delta[i],
            slope: slope[i],
            first_loss: first[i],
            last_loss: last[i],
            mean_loss: mean[i],
            std_loss: std[i],
            residual_std: resid[i],
            context_before,
            context_after,
        });
    }
    Ok((matched, out))
}

#[cfg(test)]
mod tests;
