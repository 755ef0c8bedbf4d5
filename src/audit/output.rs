//! The four output formats of `rho audit`.

use super::schema::{AuditLine, AuditReport, TokenRecord};
use super::Format;
use crate::dynamics::{CategorizeSummary, CategoryShare};
use crate::error::{Error, Result};

/// Render a report in a format.
pub fn render(r: &AuditReport, format: Format) -> Result<String> {
    let json_err = |e: serde_json::Error| Error::msg(format!("cannot write JSON: {e}"));
    Ok(match format {
        Format::Table => render_table(r),
        Format::Json => {
            let mut s = serde_json::to_string_pretty(r).map_err(json_err)?;
            s.push('\n');
            s
        }
        Format::Jsonl => render_jsonl(r)?,
        Format::Csv => render_csv(r),
    })
}

/// JSON Lines: a `summary` record, then one `token` record per token.
pub fn render_jsonl(r: &AuditReport) -> Result<String> {
    let json_err = |e: serde_json::Error| Error::msg(format!("cannot write JSON: {e}"));
    let mut s = serde_json::to_string(&AuditLine::Summary(r.summary())).map_err(json_err)?;
    s.push('\n');
    for t in &r.tokens {
        s.push_str(&serde_json::to_string(&AuditLine::Token(t.clone())).map_err(json_err)?);
        s.push('\n');
    }
    Ok(s)
}

/// Header of the CSV output.
pub const CSV_HEADER: [&str; 19] = [
    "rank",
    "category",
    "seq",
    "pos",
    "doc",
    "token_id",
    "text",
    "context_before",
    "context_after",
    "start",
    "end",
    "delta",
    "slope",
    "first_loss",
    "last_loss",
    "mean_loss",
    "std_loss",
    "residual_std",
    "sort_key",
];

/// One CSV field, quoted as RFC 4180 asks: in double quotes (doubled inside)
/// when it holds a comma, a quote, a line break, or leading/trailing spaces.
pub fn csv_field(s: &str) -> String {
    let needs = s.contains([',', '"', '\n', '\r'])
        || s.starts_with(' ')
        || s.ends_with(' ')
        || s.starts_with('\t')
        || s.ends_with('\t');
    if needs {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// CSV of the selected tokens (header row, CRLF-free: rows end with `\n`).
/// Category in file form (`H->H`); the last column names the sort key.
pub fn render_csv(r: &AuditReport) -> String {
    let mut s = CSV_HEADER.join(",");
    s.push('\n');
    let key = r.query.sort.column();
    for t in &r.tokens {
        let row: Vec<String> = vec![
            t.rank.to_string(),
            csv_field(t.category.as_file_str()),
            t.seq.to_string(),
            t.pos.to_string(),
            t.doc.to_string(),
            t.token_id.to_string(),
            csv_field(&t.text),
            csv_field(&t.context_before),
            csv_field(&t.context_after),
            t.start.to_string(),
            t.end.to_string(),
            t.delta.to_string(),
            t.slope.to_string(),
            t.first_loss.to_string(),
            t.last_loss.to_string(),
            t.mean_loss.to_string(),
            t.std_loss.to_string(),
            t.residual_std.to_string(),
            key.to_string(),
        ];
        s.push_str(&row.join(","));
        s.push('\n');
    }
    s
}

/// Token text for a terminal: line breaks, tabs and other control characters
/// escaped (`\n`, `\t`, `\u{1b}`), everything else as is.
pub fn show_text(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for ch in s.chars() {
        match ch {
            '\n' => o.push_str("\\n"),
            '\r' => o.push_str("\\r"),
            '\t' => o.push_str("\\t"),
            c if c.is_control() => o.push_str(&format!("\\u{{{:x}}}", c as u32)),
            c => o.push(c),
        }
    }
    o
}

fn token_in_context(t: &TokenRecord) -> String {
    format!("…{}⟦{}⟧{}…", show_text(&t.context_before), show_text(&t.text), show_text(&t.context_after))
}

/// The human table: shares, the selection, the tokens, and the conditions.
pub fn render_table(r: &AuditReport) -> String {
    let summary = CategorizeSummary {
        threshold: r.threshold,
        l_mean: r.l_mean,
        checkpoints: r.checkpoints.clone(),
        total: r.total,
        categories: r
            .categories
            .iter()
            .map(|c| CategoryShare { category: c.category, count: c.count, share: c.share })
            .collect(),
    };
    let mut s = format!("study: {}\n", r.study);
    s.push_str(&summary.table());
    s.push('\n');
    let q = &r.query;
    let mut filters = Vec::new();
    if let Some(c) = q.category {
        filters.push(format!("category {c}"));
    }
    if let Some(t) = &q.contains {
        filters.push(format!("text contains \"{}\"", show_text(t)));
    }
    let filters = if filters.is_empty() { "all tokens".to_string() } else { filters.join(", ") };
    s.push_str(&format!(
        "{} tokens match ({filters}); showing {} by {} ({} first)\n",
        r.matched,
        r.tokens.len(),
        q.sort.column(),
        if q.ascending { "smallest" } else { "largest" }
    ));
    if !r.tokens.is_empty() {
        s.push_str(&format!(
            "{:>5}  {:<8}  {:>12}  {:>8}  {:>9}  {:>9}  {:>11}  {}\n",
            "rank", "category", "residual_std", "delta", "last_loss", "mean_loss", "seq:pos", "token in context"
        ));
        for t in &r.tokens {
            s.push_str(&format!(
                "{:>5}  {:<8}  {:>12.4}  {:>8.4}  {:>9.4}  {:>9.4}  {:>11}  {}\n",
                t.rank,
                t.category,
                t.residual_std,
                t.delta,
                t.last_loss,
                t.mean_loss,
                format!("{}:{}", t.seq, t.pos),
                token_in_context(t)
            ));
        }
    }
    if !r.fail_if.is_empty() {
        s.push('\n');
        for c in &r.fail_if {
            s.push_str(&format!(
                "--fail-if {}: {} (share {:.4})\n",
                c.condition,
                if c.holds { "HOLDS" } else { "does not hold" },
                c.share
            ));
        }
    }
    s
}
