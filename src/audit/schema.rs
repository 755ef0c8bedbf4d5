//! The machine-readable output of `rho audit` (`--format json` and `--format jsonl`),
//! documented in `docs/audit-json.md`. Every struct refuses unknown fields, so a
//! consumer that deserialises with them notices a schema change.

use super::condition::Op;
use crate::dynamics::Category;
use serde::{Deserialize, Serialize};

/// Version of the audit JSON schema. Bumped on any change that is not a pure
/// addition of an optional field.
pub const SCHEMA_VERSION: u32 = 1;

/// `--format json`: one JSON document.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditReport {
    /// [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// The study folder, as given on the command line.
    pub study: String,
    /// ΔL threshold of the categorisation (`categories.json`).
    pub threshold: f64,
    /// Mean loss of all tokens at the last checkpoint (nats).
    pub l_mean: f64,
    /// Checkpoints the trajectories span, first to last.
    pub checkpoints: Vec<String>,
    /// Number of categorised tokens.
    pub total: u64,
    /// The four categories in the order H->H, L->H, H->L, L->L.
    pub categories: Vec<ShareRecord>,
    /// The selection that produced `tokens`.
    pub query: Query,
    /// Number of tokens that pass the filters (`--category`, `--contains`), before `--top`.
    pub matched: u64,
    /// Every `--fail-if` condition, in the order given.
    pub fail_if: Vec<ConditionResult>,
    /// Whether any condition holds (the process then exits with status 3).
    pub failed: bool,
    /// The selected tokens, best first (at most `query.top`).
    pub tokens: Vec<TokenRecord>,
}

/// `--format jsonl`: one record per line. The first line is a `summary`, then
/// one `token` line per selected token, best first.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum AuditLine {
    Summary(AuditSummary),
    Token(TokenRecord),
}

/// The first record of `--format jsonl`: [`AuditReport`] without `tokens`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditSummary {
    pub schema_version: u32,
    pub study: String,
    pub threshold: f64,
    pub l_mean: f64,
    pub checkpoints: Vec<String>,
    pub total: u64,
    pub categories: Vec<ShareRecord>,
    pub query: Query,
    pub matched: u64,
    pub fail_if: Vec<ConditionResult>,
    pub failed: bool,
}

/// Count and share of one category over all tokens of the study.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareRecord {
    /// `"H->H"`, `"L->H"`, `"H->L"` or `"L->L"`.
    pub category: Category,
    pub count: u64,
    /// `count / total`, a fraction in [0, 1].
    pub share: f64,
}

/// Sort key of the selection.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
#[value(rename_all = "snake_case")]
pub enum SortKey {
    /// Standard deviation of the loss around the fitted line (fluctuation).
    ResidualStd,
    /// ΔL, the fitted change of loss from the first to the last checkpoint.
    Delta,
    /// Loss at the last checkpoint.
    LastLoss,
    /// Mean loss over the checkpoints.
    MeanLoss,
}

impl SortKey {
    /// The `trajectories.parquet` column sorted on.
    pub fn column(self) -> &'static str {
        match self {
            SortKey::ResidualStd => "residual_std",
            SortKey::Delta => "delta",
            SortKey::LastLoss => "last_loss",
            SortKey::MeanLoss => "mean_loss",
        }
    }
}

/// The selection: filters, order, and how many tokens are shown.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Query {
    /// `--category`, or null for all categories.
    pub category: Option<Category>,
    /// `--sort`: `"residual_std"`, `"delta"`, `"last_loss"` or `"mean_loss"`.
    pub sort: SortKey,
    /// `--ascending`: smallest first (default: largest first). Ties: by (seq, pos).
    pub ascending: bool,
    /// `--top`: at most this many tokens.
    pub top: u64,
    /// `--contains`: only tokens whose text contains this substring (case-sensitive), or null.
    pub contains: Option<String>,
    /// `--context`: tokens of context on each side.
    pub context: u64,
}

/// One `--fail-if` condition and its outcome.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConditionResult {
    /// Canonical form, e.g. `"H->H>0.15"`.
    pub condition: String,
    pub category: Category,
    /// `">"`, `">="`, `"<"` or `"<="`.
    pub op: Op,
    /// The share compared against, a fraction in [0, 1].
    pub value: f64,
    /// The category's share in the study.
    pub share: f64,
    /// `share op value`.
    pub holds: bool,
}

/// One selected token.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenRecord {
    /// 1-based position in the selection.
    pub rank: u64,
    /// Sequence (document, or window with `rho eval --pack`).
    pub seq: u32,
    /// Position of the token in its sequence.
    pub pos: u32,
    /// Document index.
    pub doc: u32,
    pub token_id: u32,
    /// The token's text.
    pub text: String,
    /// Byte span of the token in its document.
    pub start: u64,
    pub end: u64,
    pub category: Category,
    /// ΔL (fitted last minus fitted first loss).
    pub delta: f32,
    /// Fitted slope, loss per checkpoint.
    pub slope: f32,
    pub first_loss: f32,
    pub last_loss: f32,
    pub mean_loss: f32,
    pub std_loss: f32,
    pub residual_std: f32,
    /// Text of up to `query.context` scored tokens before the token (same seq), concatenated.
    pub context_before: String,
    /// Text of up to `query.context` scored tokens after the token (same seq), concatenated.
    pub context_after: String,
}

impl AuditReport {
    /// The `jsonl` summary record: everything but the tokens.
    pub fn summary(&self) -> AuditSummary {
        AuditSummary {
            schema_version: self.schema_version,
            study: self.study.clone(),
            threshold: self.threshold,
            l_mean: self.l_mean,
            checkpoints: self.checkpoints.clone(),
            total: self.total,
            categories: self.categories.clone(),
            query: self.query.clone(),
            matched: self.matched,
            fail_if: self.fail_if.clone(),
            failed: self.failed,
        }
    }

    /// Rebuild a report from `jsonl` records (summary first, then tokens).
    pub fn from_lines(lines: Vec<AuditLine>) -> Option<AuditReport> {
        let mut it = lines.into_iter();
        let s = match it.next()? {
            AuditLine::Summary(s) => s,
            AuditLine::Token(_) => return None,
        };
        let mut tokens = Vec::new();
        for l in it {
            match l {
                AuditLine::Token(t) => tokens.push(t),
                AuditLine::Summary(_) => return None,
            }
        }
        Some(AuditReport {
            schema_version: s.schema_version,
            study: s.study,
            threshold: s.threshold,
            l_mean: s.l_mean,
            checkpoints: s.checkpoints,
            total: s.total,
            categories: s.categories,
            query: s.query,
            matched: s.matched,
            fail_if: s.fail_if,
            failed: s.failed,
            tokens,
        })
    }
}
