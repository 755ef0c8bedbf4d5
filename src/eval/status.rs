//! `rho status --study DIR`: what of a study is done and what is missing.

use super::study::{scan_sharded, Manifest, TOKENS, TRAJECTORIES};
use crate::error::{Error, Result};
use serde::Serialize;
use std::path::Path;

/// The state of one checkpoint of a study.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct CheckpointStatus {
    pub name: String,
    pub step: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tokens_seen: Option<u64>,
    /// `whole` (one losses file), `sharded` (all parts present), `incomplete`
    /// (sharded, parts missing) or `missing` (listed in study.json, file gone).
    pub state: String,
    /// N for a sharded checkpoint.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub shards: Option<u32>,
    /// Shard indices whose part is not done.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub missing_shards: Vec<u32>,
    /// Shard indices whose part was written with other data or settings.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stale_shards: Vec<u32>,
    /// Tokens scored so far (all parts present).
    pub n_tokens: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mean_loss: Option<f64>,
}

/// The state of a study folder.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct StudyStatus {
    pub study: String,
    pub tokens: bool,
    pub categorized: bool,
    /// The checkpoints `rho categorize` last used (categories.json), when categorized.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub categorized_over: Vec<String>,
    pub checkpoints: Vec<CheckpointStatus>,
    /// Every checkpoint complete (and at least one).
    pub complete: bool,
    /// Union of the missing shard indices over the incomplete checkpoints (what to re-run).
    pub missing_shards: Vec<u32>,
}

/// Look at a study folder without reading any losses.
pub fn study_status(study: &Path) -> Result<StudyStatus> {
    let m = Manifest::load_file(study)?;
    let mut cks: Vec<CheckpointStatus> = m
        .checkpoints
        .iter()
        .map(|c| {
            let there = Manifest::losses_path(study, &c.name).exists();
            CheckpointStatus {
                name: c.name.clone(),
                step: c.step,
                tokens_seen: c.tokens_seen,
                state: if there { "whole" } else { "missing" }.into(),
                shards: None,
                missing_shards: vec![],
                stale_shards: vec![],
                n_tokens: if there { c.n_tokens } else { 0 },
                mean_loss: there.then_some(c.mean_loss),
            }
        })
        .collect();
    let sharded = scan_sharded(study, &m.fingerprint)?;
    let series = super::study::series_order(&m.checkpoints, &sharded);
    for sc in sharded {
        if cks.iter().any(|c| c.name == sc.name && c.state == "whole") {
            continue;
        }
        cks.retain(|c| c.name != sc.name);
        let n: u64 = sc.done.iter().map(|p| p.n_tokens).sum();
        let sum: f64 = sc.done.iter().map(|p| p.loss_sum).sum();
        cks.push(CheckpointStatus {
            name: sc.name.clone(),
            step: sc.done.first().map(|p| p.step).unwrap_or_else(|| super::order::parse_name(&sc.name).step.map(|s| s as i64)),
            tokens_seen: sc.done.first().and_then(|p| p.tokens_seen),
            state: if sc.is_complete() && sc.shards > 0 { "sharded" } else { "incomplete" }.into(),
            shards: Some(sc.shards),
            missing_shards: sc.missing.clone(),
            stale_shards: sc.stale.clone(),
            n_tokens: n,
            mean_loss: (n > 0).then(|| sum / n as f64),
        });
    }
    // The study's order; checkpoints with no finished part yet last (by name).
    let rank: std::collections::HashMap<&str, usize> = series.iter().enumerate().map(|(i, n)| (n.as_str(), i)).collect();
    cks.sort_by_key(|c| rank.get(c.name.as_str()).copied().unwrap_or(usize::MAX));
    let mut missing: Vec<u32> = cks.iter().flat_map(|c| c.missing_shards.iter().copied()).collect();
    missing.sort();
    missing.dedup();
    let complete = !cks.is_empty() && cks.iter().all(|c| c.state == "whole" || c.state == "sharded");
    // Categorized: trajectories.parquet and categories.json of one run of `rho categorize`.
    let summary = study.join(TRAJECTORIES).exists().then(|| crate::dynamics::load_categorized(study).ok()).flatten();
    let categorized_over = summary.as_ref().map(|s| s.checkpoints.clone()).unwrap_or_default();
    Ok(StudyStatus {
        study: study.display().to_string(),
        tokens: study.join(TOKENS).exists(),
        categorized: summary.is_some(),
        categorized_over,
        checkpoints: cks,
        complete,
        missing_shards: missing,
    })
}

/// Compact `1,3-5,7` form of sorted indices (Slurm's --array syntax).
pub fn ranges(v: &[u32]) -> String {
    let mut out: Vec<String> = Vec::new();
    let mut i = 0;
    while i < v.len() {
        let mut j = i;
        while j + 1 < v.len() && v[j + 1] == v[j] + 1 {
            j += 1;
        }
        out.push(if j == i { v[i].to_string() } else { format!("{}-{}", v[i], v[j]) });
        i = j + 1;
    }
    out.join(",")
}

/// [`ranges`] cut to its first `max` items (`0-3,5,... and 12 more`), for messages.
pub fn ranges_brief(v: &[u32], max: usize) -> String {
    let r = ranges(v);
    let items: Vec<&str> = r.split(',').filter(|x| !x.is_empty()).collect();
    crate::limits::brief_list(&items, ",", max)
}

/// The human-readable form printed by `rho status`.
pub fn render(s: &StudyStatus) -> String {
    let mut out = format!("study {}\n", s.study);
    let w = s.checkpoints.iter().map(|c| c.name.len()).max().unwrap_or(4).max(10);
    out += &format!("  {:<w$}  {:>8}  {:<22}  {:>10}  {:>9}\n", "checkpoint", "step", "state", "tokens", "mean loss");
    for c in &s.checkpoints {
        let state = match (c.state.as_str(), c.shards) {
            ("sharded", Some(n)) => format!("done ({n} parts)"),
            ("incomplete", Some(0)) => "no part finished yet".into(),
            ("incomplete", Some(n)) => format!("{}/{n} parts, missing {}", n as usize - c.missing_shards.len(), ranges_brief(&c.missing_shards, 8)),
            ("whole", _) => "done".into(),
            ("missing", _) => "losses file missing".into(),
            (other, _) => other.into(),
        };
        let ml = c.mean_loss.map(|m| format!("{m:.4}")).unwrap_or_else(|| "-".into());
        let step = c.step.map(|s| s.to_string()).unwrap_or_else(|| "-".into());
        out += &format!("  {:<w$}  {:>8}  {:<22}  {:>10}  {:>9}\n", c.name, step, state, c.n_tokens, ml);
        if !c.stale_shards.is_empty() {
            out += &format!("  {:<w$}  {:>8}  parts {} were written with other data or settings\n", "", "", ranges_brief(&c.stale_shards, 8));
        }
    }
    let done = s.checkpoints.iter().filter(|c| c.state == "whole" || c.state == "sharded").count();
    out += &format!(
        "{done} of {} checkpoints complete; tokens.parquet {}; categorized: {}\n",
        s.checkpoints.len(),
        if s.tokens { "present" } else { "missing" },
        match (s.categorized, s.categorized_over.len()) {
            (false, _) => "no".to_string(),
            (true, 0) => "yes".to_string(),
            (true, k) => {
                let done: Vec<&str> =
                    s.checkpoints.iter().filter(|c| c.state == "whole" || c.state == "sharded").map(|c| c.name.as_str()).collect();
                if s.categorized_over.iter().map(String::as_str).eq(done.iter().copied()) {
                    format!("yes, over all {k} checkpoints")
                } else {
                    format!("over {k} checkpoints, not the {} complete now (run `rho categorize` again to include them)", done.len())
                }
            }
        }
    );
    if !s.missing_shards.is_empty() {
        let r = ranges_brief(&s.missing_shards, 20);
        out += &format!(
            "missing shards: {r} (re-run each with `rho eval ... --shard I/N`, or re-submit: `rho slurm eval ... --array {r}`)\n"
        );
    }
    out
}

/// `rho status`: print the state; an incomplete study is exit 3 (a gate), so
/// scripts can wait on it.
pub fn run_status(study: &Path, json: bool) -> Result<StudyStatus> {
    let s = study_status(study)?;
    if json {
        println!("{}", serde_json::to_string_pretty(&s).map_err(|e| Error::msg(e.to_string()))?);
    } else {
        print!("{}", render(&s));
    }
    if !s.complete {
        return Err(Error::Gate(if s.checkpoints.is_empty() {
            format!("{}: no checkpoint evaluated yet", study.display())
        } else {
            format!("{}: incomplete", study.display())
        }));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slurm_ranges() {
        assert_eq!(ranges(&[]), "");
        assert_eq!(ranges(&[3]), "3");
        assert_eq!(ranges(&[0, 1, 2, 5, 7, 8]), "0-2,5,7-8");
        assert_eq!(ranges_brief(&[0, 1, 2, 5, 7, 8], 2), "0-2,5,... and 1 more");
        assert_eq!(ranges_brief(&[], 2), "");
    }
}
