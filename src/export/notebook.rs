//! `rho export notebook`: a Jupyter notebook (nbformat 4.5, kernel python3)
//! that loads a study's Parquet files with pandas, re-derives the Rho-1
//! categories from the losses, and redraws the main charts with matplotlib.
//!
//! The notebook only reads files (`study.json`, `categories.json`,
//! `tokens.parquet`, `trajectories.parquet`, `losses/*.parquet`, and
//! `runs/*/masks/*.parquet` + `runs/*/metrics.jsonl` when present); the study
//! path is a variable in the first code cell.

use crate::dynamics::{categories_path, trajectories_path, CategorizeSummary, Category};
use crate::error::{Error, Result};
use crate::eval::study::{Manifest, TOKENS};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// One cell of the notebook.
#[derive(Debug, Clone, PartialEq)]
pub enum Cell {
    Markdown(String),
    Code(String),
}

/// Split a cell's text into nbformat's list of lines (each but the last keeps its `\n`).
fn source_lines(s: &str) -> Vec<String> {
    let s = s.trim_matches('\n');
    let mut out: Vec<String> = s.split_inclusive('\n').map(String::from).collect();
    if out.is_empty() {
        out.push(String::new());
    }
    out
}

/// The notebook as nbformat 4.5 JSON.
pub fn to_nbformat(cells: &[Cell], extra_metadata: Value) -> Value {
    let cells: Vec<Value> = cells
        .iter()
        .enumerate()
        .map(|(i, c)| {
            let id = format!("cell-{i:02}");
            match c {
                Cell::Markdown(s) => json!({
                    "cell_type": "markdown",
                    "id": id,
                    "metadata": {},
                    "source": source_lines(s),
                }),
                Cell::Code(s) => json!({
                    "cell_type": "code",
                    "execution_count": null,
                    "id": id,
                    "metadata": {},
                    "outputs": [],
                    "source": source_lines(s),
                }),
            }
        })
        .collect();
    json!({
        "cells": cells,
        "metadata": {
            "kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"},
            "language_info": {"name": "python"},
            "rho": extra_metadata,
        },
        "nbformat": 4,
        "nbformat_minor": 5,
    })
}

/// A Python string literal for `s` (JSON string syntax is valid Python).
fn py_str(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".into())
}

/// The study folder as an absolute path (resolved if it exists).
fn absolute(study: &Path) -> PathBuf {
    std::fs::canonicalize(study)
        .or_else(|_| std::path::absolute(study))
        .unwrap_or_else(|_| study.to_path_buf())
}

/// Build the notebook of a study. Needs `study.json`, `categories.json`,
/// `trajectories.parquet` and `tokens.parquet` (run `rho eval` and `rho categorize`).
pub fn notebook(study: &Path) -> Result<Value> {
    let manifest = Manifest::load(study)?;
    let cpath = categories_path(study);
    if !cpath.exists() {
        return Err(Error::file(&cpath, "missing: run `rho categorize` first"));
    }
    for p in [trajectories_path(study), study.join(TOKENS)] {
        if !p.exists() {
            return Err(Error::file(&p, "missing: run `rho eval` and `rho categorize` first"));
        }
    }
    let summary = crate::dynamics::load_categorized(study)?;
    let abs = absolute(study);
    let abs_s = abs.to_string_lossy().to_string();
    let has_runs = study.join("runs").is_dir();
    let cells = cells(&abs_s, &manifest, &summary, has_runs);
    let meta = json!({
        "exported_by": format!("rho {}", env!("CARGO_PKG_VERSION")),
        "study": abs_s,
        "checkpoints": summary.checkpoints,
        "threshold": summary.threshold,
        "total": summary.total,
    });
    Ok(to_nbformat(&cells, meta))
}

/// Write the notebook of `study` to `out` (pretty JSON, atomically).
pub fn write_notebook(study: &Path, out: &Path) -> Result<()> {
    let nb = notebook(study)?;
    let mut bytes = serde_json::to_vec_pretty(&nb).map_err(|e| Error::msg(e.to_string()))?;
    bytes.push(b'\n');
    crate::util::write_bytes_atomic(out, &bytes)
}

fn cells(study_abs: &str, manifest: &Manifest, s: &CategorizeSummary, has_runs: bool) -> Vec<Cell> {
    let name = Path::new(study_abs).file_name().map(|n| n.to_string_lossy().to_string()).unwrap_or_default();
    let ckpts = match s.checkpoints.as_slice() {
        [] => "no checkpoints".to_string(),
        [one] => format!("1 checkpoint (`{one}`)"),
        [a, .., b] => format!("{} checkpoints (`{a}` .. `{b}`)", s.checkpoints.len()),
    };
    let shares: Vec<String> = Category::ALL
        .iter()
        .map(|&c| format!("{} {:.1}%", c, 100.0 * s.share(c)))
        .collect();
    let data = manifest.data.display().to_string();
    let mut v = Vec::new();

    v.push(Cell::Markdown(format!(
        r##"# Token-level training dynamics: `{name}`

Exported by `rho export notebook` (rho {version}) from the study folder `{study_abs}`:
{total} scored tokens of `{data}` at {ckpts}; at export time the shares were {shares}.

The notebook reads the study's files only (never a model) with pandas + pyarrow, re-derives
the Rho-1 trajectory categories from the raw losses, and redraws the main charts of
`rho report` with matplotlib:

1. the category shares;
2. the mean loss of each category over the checkpoints (Rho-1, Fig. 3a);
3. the loss trajectories of the most fluctuating L→L and H→H tokens (Fig. 3b-c);
4. the distribution of `residual_std` (loss fluctuation around the trend) per category;
5. the categorisation plane: ΔL against the last-checkpoint loss;
6. training runs, when the study has a `runs/` folder: loss on kept against not-kept tokens.

Needs Python 3 with `pandas`, `pyarrow`, `numpy` and `matplotlib`."##,
        version = env!("CARGO_PKG_VERSION"),
        total = s.total,
        shares = shares.join(", "),
    )));

    v.push(Cell::Code(format!(
        r##"# The study folder (written by `rho eval` + `rho categorize`). The path is absolute,
# as exported: if you moved the study or opened this notebook on another machine,
# change it here (or set the environment variable RHO_STUDY before starting Jupyter).
import os
from pathlib import Path

STUDY = Path(os.environ.get("RHO_STUDY", {path}))
STUDY"##,
        path = py_str(study_abs)
    )));

    v.push(Cell::Markdown(
        r##"## The study's files

| file | what it holds |
|---|---|
| `study.json` | the checkpoints evaluated, in training order (`name`, `step`, `tokens_seen`, `mean_loss`, ...) and the data / tokenizer fingerprint |
| `tokens.parquet` | one row per scored token: `seq`, `pos`, `doc`, `token_id`, `text` (the token's text), `start`, `end` (byte span in its document) |
| `losses/<checkpoint>.parquet` | `checkpoint`, `step`, `seq`, `pos`, `token_id`, `loss` (nats): the same rows in the same order in every file (a sharded evaluation writes `losses/checkpoint=<name>/part-<I>-of-<N>.parquet` instead: the parts in order are the file) |
| `trajectories.parquet` | per token: `category` (`H->H`, `L->H`, `H->L`, `L->L`), `delta`, `slope`, `first_loss`, `last_loss`, `mean_loss`, `std_loss`, `residual_std` |
| `categories.json` | threshold, `l_mean`, the checkpoints used, counts and shares |

Below, `L` is the token × checkpoint loss matrix (one column per checkpoint that the
categorisation used, in order) and `traj` the trajectories joined with the token text."##
            .to_string(),
    ));

    v.push(Cell::Code(
        r##"import json

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

assert (STUDY / "study.json").exists(), f"no study at {STUDY}: set STUDY in the cell above"
plt.rcParams["figure.dpi"] = 80

manifest = json.loads((STUDY / "study.json").read_text())
summary = json.loads((STUDY / "categories.json").read_text())
tokens = pd.read_parquet(STUDY / "tokens.parquet")
traj = pd.read_parquet(STUDY / "trajectories.parquet")
traj = traj.merge(tokens[["seq", "pos", "doc", "text", "start", "end"]], on=["seq", "pos"],
                  how="left", validate="one_to_one").reset_index(drop=True)

# The checkpoints the categorisation used (all of the study's, or the ones given to
# `rho categorize --checkpoints`), in training order, and their training steps (`null`
# when neither trainer_state.json nor the folder name gave one).
CKPTS = summary["checkpoints"]
step_of = {c["name"]: c["step"] for c in manifest["checkpoints"]}
# Checkpoints evaluated in shards (`rho eval --shard I/N`) are listed by their part records.
for rec in sorted((STUDY / "losses").glob("checkpoint=*/part-*.json")):
    r = json.loads(rec.read_text())
    step_of.setdefault(r["name"], r.get("step"))
steps = [step_of[name] for name in CKPTS]
# The charts' x: the step when every checkpoint has one and they increase along the series
# (stages may count from 0 again), else the checkpoint's index, as `rho report` draws them.
if all(s is not None for s in steps) and all(a < b for a, b in zip(steps, steps[1:])):
    steps, XLABEL = np.array(steps), "training step"
else:
    steps, XLABEL = np.arange(len(CKPTS)), "checkpoint (index in the series)"
def read_losses(name, columns):
    """One checkpoint's losses: losses/<name>.parquet, or the parts of a sharded
    evaluation (losses/checkpoint=<name>/part-<I>-of-<N>.parquet, I zero-padded) in order."""
    whole = STUDY / "losses" / f"{name}.parquet"
    if whole.exists():
        return pd.read_parquet(whole, columns=columns)
    parts = sorted((STUDY / "losses" / f"checkpoint={name}").glob("part-*.parquet"))
    return pd.concat([pd.read_parquet(p, columns=columns) for p in parts], ignore_index=True)

columns = []
for name in CKPTS:
    df = read_losses(name, ["seq", "pos", "loss"])
    # Every losses file has the rows of trajectories.parquet, in the same order.
    assert len(df) == len(traj), name
    assert (df["seq"].to_numpy() == traj["seq"].to_numpy()).all(), name
    assert (df["pos"].to_numpy() == traj["pos"].to_numpy()).all(), name
    columns.append(df["loss"].to_numpy())
L = np.stack(columns, axis=1)  # tokens x checkpoints (float32, nats)

ORDER = ["H->H", "L->H", "H->L", "L->L"]  # the file spelling; printed with arrows
LABEL = {"H->H": "H→H", "L->H": "L→H", "H->L": "H→L", "L->L": "L→L"}
COLOR = {"H->H": "#d62728", "L->H": "#ff7f0e", "H->L": "#2ca02c", "L->L": "#1f77b4"}
print(f"{len(traj):,} tokens x {len(CKPTS)} checkpoints: {CKPTS[0]} (step {step_of[CKPTS[0]]}) .. {CKPTS[-1]} (step {step_of[CKPTS[-1]]})")
traj.head()"##
            .to_string(),
    ));

    v.push(Cell::Markdown(format!(
        r##"## The categorisation rule (Rho-1 v1, Appendix B.1)

Each token has one loss per checkpoint, $L_0, \dots, L_{{n-1}}$, in checkpoint order. `rho categorize`
fits a least-squares line to them against the **checkpoint index** $x = 0, \dots, n-1$ (not the
training step, so unevenly spaced checkpoints count as evenly spaced):

- slope $b = \sum_x (x-\bar x)(L_x-\bar L) \,/\, \sum_x (x-\bar x)^2$;
- $\Delta L = b\,(n-1)$: the fitted loss at the last checkpoint minus the fitted loss at the first;
- $L_{{mean}}$: the mean over **all** tokens of the (raw) loss at the **last** checkpoint;
- the threshold $t$ (`rho categorize --threshold`, default 0.2; this study: {t}).

| condition | category | meaning |
|---|---|---|
| $\Delta L < -t$ | H→L | the loss falls: a token that is learned |
| $\Delta L > t$ | L→H | the loss rises: a token that is forgotten |
| $\lvert\Delta L\rvert \le t$ and last loss $\le L_{{mean}}$ | L→L | no trend, low: already known |
| $\lvert\Delta L\rvert \le t$ and last loss $> L_{{mean}}$ | H→H | no trend, high: not learned (noise, or hard) |

The inequalities on $\Delta L$ are strict: $\Delta L$ of exactly $\pm t$ counts as no trend, and a last
loss equal to $L_{{mean}}$ is L→L. "Last loss" is the raw loss at the last checkpoint, not the fitted
one. Fluctuation is measured by `residual_std`, the population standard deviation of the residuals
around the fitted line, $\sqrt{{\tfrac1n \sum_x (L_x - \hat L_x)^2}}$ (`std_loss` is the plain
population standard deviation of the losses). In files the categories are spelled `H->H`, `L->H`,
`H->L`, `L->L`.

The next cell re-derives the categories from the raw losses with numpy and checks them against
`trajectories.parquet`."##,
        t = s.threshold
    )));

    v.push(Cell::Code(
        r##"def categorize(L, threshold):
    """Rho-1 App. B.1 on a tokens x checkpoints loss matrix (see the rule above)."""
    n = L.shape[1]
    x = np.arange(n, dtype=np.float64)
    Y = L.astype(np.float64)
    xm, ym = x.mean(), Y.mean(axis=1)
    slope = ((x - xm) * (Y - ym[:, None])).sum(axis=1) / ((x - xm) ** 2).sum()
    delta = slope * (n - 1)
    last = Y[:, -1]
    l_mean = last.mean()
    category = np.where(delta < -threshold, "H->L",
               np.where(delta > threshold, "L->H",
               np.where(last <= l_mean, "L->L", "H->H")))
    fitted = ym[:, None] + slope[:, None] * (x - xm)
    residual_std = np.sqrt(((Y - fitted) ** 2).mean(axis=1))
    return category, delta, l_mean, residual_std

t = summary["threshold"]
category, delta, l_mean, residual_std = categorize(L, t)
same = category == traj["category"].to_numpy()
# A different summation order can only move a token that sits exactly on a boundary.
on_boundary = (np.abs(np.abs(delta) - t) < 1e-9) | (np.abs(L[:, -1] - l_mean) < 1e-9)
print(f"L_mean = {l_mean:.4f} (categories.json: {summary['l_mean']:.4f}), threshold t = {t}")
print(f"same category as `rho categorize`: {same.mean():.4%} of {len(same):,} tokens")
assert (same | on_boundary).all(), traj[~(same | on_boundary)].head()
assert np.allclose(delta, traj["delta"], rtol=1e-4, atol=1e-4)
assert np.allclose(residual_std, traj["residual_std"], rtol=1e-4, atol=1e-4)
assert abs(l_mean - summary["l_mean"]) < 1e-6"##
            .to_string(),
    ));

    v.push(Cell::Markdown(
        "## 1. Category shares\n\nHow many tokens fall in each category (counts and shares of all scored tokens).".into(),
    ));
    v.push(Cell::Code(
        r##"counts = traj["category"].value_counts().reindex(ORDER, fill_value=0)
shares = counts / counts.sum()
fig, ax = plt.subplots(figsize=(9, 5))
bars = ax.bar([LABEL[c] for c in ORDER], counts.to_numpy(), color=[COLOR[c] for c in ORDER])
for bar, n, s in zip(bars, counts.to_numpy(), shares.to_numpy()):
    ax.annotate(f"{n:,}\n{s:.1%}", (bar.get_x() + bar.get_width() / 2, bar.get_height()),
                ha="center", va="bottom", fontsize=11)
ax.set_ylabel("tokens")
ax.set_title(f"Trajectory categories of {len(traj):,} tokens (|ΔL| ≤ {t} counts as no trend)")
ax.margins(y=0.2)
plt.show()
pd.DataFrame({"count": counts, "share": shares.round(4)}).rename(index=LABEL)"##
            .to_string(),
    ));

    v.push(Cell::Markdown(
        "## 2. Mean loss of each category over the checkpoints (Rho-1, Fig. 3a)\n\n\
         H→L tokens fall, L→H tokens rise, L→L stay low and H→H stay high; the dashed line is all tokens."
            .into(),
    ));
    v.push(Cell::Code(
        r##"fig, ax = plt.subplots(figsize=(9, 5.5))
for c in ORDER:
    m = (traj["category"] == c).to_numpy()
    if m.any():
        ax.plot(steps, L[m].mean(axis=0), marker="o", color=COLOR[c], label=f"{LABEL[c]} ({m.sum():,} tokens)")
ax.plot(steps, L.mean(axis=0), color="gray", linestyle="--", label="all tokens")
ax.set_xlabel(XLABEL)
ax.set_ylabel("mean loss (nats)")
ax.set_title("Mean loss per category over the checkpoints")
ax.legend()
plt.show()"##
            .to_string(),
    ));

    v.push(Cell::Markdown(
        "## 3. The most fluctuating L→L and H→H tokens (Rho-1, Fig. 3b-c)\n\n\
         Tokens without a trend can still swing from checkpoint to checkpoint; these are the ones with the \
         largest `residual_std`, labelled with their text (`rho audit --category L->L --sort residual_std` \
         lists them with their context)."
            .into(),
    ));
    v.push(Cell::Code(
        r##"N_TOP = 5
fig, axes = plt.subplots(1, 2, figsize=(14, 5))
shown = []
for ax, c in zip(axes, ["L->L", "H->H"]):
    top = traj[traj["category"] == c].nlargest(N_TOP, "residual_std")
    for i, row in top.iterrows():
        ax.plot(steps, L[i], marker=".", label=f"{row['text']!r} (seq {row['seq']}, pos {row['pos']})")
    shown.append(top)
    ax.set_title(f"{LABEL[c]}: the {len(top)} most fluctuating tokens")
    ax.set_xlabel(XLABEL)
    ax.set_ylabel("loss (nats)")
    if len(top):
        ax.legend(fontsize=9)
plt.tight_layout()
plt.show()
pd.concat(shown)[["category", "seq", "pos", "text", "residual_std", "delta", "last_loss"]]"##
            .to_string(),
    ));

    v.push(Cell::Markdown(
        "## 4. Distribution of `residual_std` per category\n\n\
         How much the loss of each token fluctuates around its fitted line (log-scaled counts)."
            .into(),
    ));
    v.push(Cell::Code(
        r##"fig, ax = plt.subplots(figsize=(9, 5))
bins = np.linspace(0, max(float(traj["residual_std"].max()), 1e-6), 60)
for c in ORDER:
    r = traj.loc[traj["category"] == c, "residual_std"]
    if len(r):
        ax.hist(r, bins=bins, histtype="step", linewidth=2, color=COLOR[c],
                label=f"{LABEL[c]} (median {r.median():.3f})")
ax.set_yscale("log")
ax.set_xlabel("residual_std (nats)")
ax.set_ylabel("tokens")
ax.set_title("Loss fluctuation around the trend, per category")
ax.legend()
plt.show()
traj.groupby("category")["residual_std"].describe().reindex([c for c in ORDER if c in set(traj["category"])])"##
            .to_string(),
    ));

    v.push(Cell::Markdown(
        "## 5. The categorisation plane\n\n\
         Every token at (ΔL, last-checkpoint loss), coloured by category: the vertical lines are ±t, the \
         horizontal line is L_mean (at most 50,000 tokens drawn, sampled at random)."
            .into(),
    ));
    v.push(Cell::Code(
        r##"sample = traj.sample(n=min(len(traj), 50_000), random_state=0)
fig, ax = plt.subplots(figsize=(9, 6.5))
for c in ORDER:
    p = sample[sample["category"] == c]
    if len(p):
        ax.scatter(p["delta"], p["last_loss"], s=4, alpha=0.5, color=COLOR[c], label=LABEL[c])
for x in (-t, t):
    ax.axvline(x, color="black", linewidth=1, linestyle="--")
ax.axhline(summary["l_mean"], color="black", linewidth=1, linestyle=":", label=f"L_mean = {summary['l_mean']:.3f}")
ax.set_xlabel("ΔL (fitted last - fitted first loss, nats)")
ax.set_ylabel("loss at the last checkpoint (nats)")
ax.set_title(f"Categorisation plane (threshold ±{t})")
ax.legend(markerscale=4)
plt.show()"##
            .to_string(),
    ));

    v.push(Cell::Markdown(format!(
        "## 6. Training runs: loss on kept and not-kept tokens\n\n\
         `rho train` writes `runs/<name>/metrics.jsonl` (per step: `loss_all`, `loss_kept`, `kept_frac`, ...) and, \
         every `--mask-every` steps, `runs/<name>/masks/step-N.parquet`: the kept / not-kept mask of a fixed probe \
         batch with each token's `loss` and `ref_loss`. With Selective Language Modeling the not-kept tokens are \
         the ones with low excess loss (current − reference). {}",
        if has_runs {
            "This study has runs."
        } else {
            "This study had no `runs/` folder when it was exported; the cell below then only says so."
        }
    )));
    v.push(Cell::Code(
        r##"import re

runs_dir = STUDY / "runs"
runs = sorted(p for p in runs_dir.iterdir() if p.is_dir()) if runs_dir.is_dir() else []
mask_rows = []
for run in runs:
    for f in (run / "masks").glob("step-*.parquet") if (run / "masks").is_dir() else []:
        m = pd.read_parquet(f, columns=["loss", "kept"])
        step = int(re.findall(r"\d+", f.stem)[-1])
        kept, dropped = m.loc[m["kept"], "loss"], m.loc[~m["kept"], "loss"]
        mask_rows.append({"run": run.name, "step": step, "kept_share": m["kept"].mean(),
                          "loss_kept": kept.mean(), "loss_not_kept": dropped.mean() if len(dropped) else np.nan})
masks = pd.DataFrame(mask_rows, columns=["run", "step", "kept_share", "loss_kept", "loss_not_kept"])
if not runs:
    print(f"no training runs in {runs_dir}")
else:
    fig, axes = plt.subplots(1, 2, figsize=(14, 5))
    ax = axes[0]
    for k, (run, g) in enumerate(masks.sort_values("step").groupby("run")):
        if g["loss_not_kept"].notna().any():
            color = f"C{k % 10}"
            ax.plot(g["step"], g["loss_kept"], marker="o", color=color, label=f"{run}: kept")
            ax.plot(g["step"], g["loss_not_kept"], marker="x", linestyle="--", color=color, label=f"{run}: not kept")
    ax.set_xlabel("training step")
    ax.set_ylabel("mean loss on the probe batch (nats)")
    ax.set_title("Kept vs not-kept tokens (runs that drop tokens)")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    ax = axes[1]
    for run in runs:
        f = run / "metrics.jsonl"
        if f.exists() and f.stat().st_size > 0:
            m = pd.read_json(f, lines=True)
            ax.plot(m["step"], m["loss_all"], label=f"{run.name} (kept {m['kept_frac'].mean():.0%})")
    ax.set_xlabel("training step")
    ax.set_ylabel("training loss, all tokens (nats)")
    ax.set_title("Training loss per run")
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=9)
    plt.tight_layout()
    plt.show()
masks.groupby("run")[["kept_share", "loss_kept", "loss_not_kept"]].mean() if len(masks) else masks"##
            .to_string(),
    ));

    v.push(Cell::Markdown(
        "## Going on from here\n\n\
         `traj` holds every token with its category, statistics and text; `L` its losses. For example, the \
         tokens whose loss rose most (the same selection as \
         `rho audit --study STUDY --sort delta --top 10 --format csv`):"
            .into(),
    ));
    v.push(Cell::Code(
        r##"traj.nlargest(10, "delta")[["seq", "pos", "text", "category", "delta", "first_loss", "last_loss", "residual_std"]]"##
            .to_string(),
    ));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_lines_keep_newlines_but_the_last() {
        assert_eq!(source_lines("a\nb\n"), vec!["a\n", "b"]);
        assert_eq!(source_lines("\nx"), vec!["x"]);
        assert_eq!(source_lines(""), vec![""]);
    }

    #[test]
    fn python_string_literal_escapes() {
        assert_eq!(py_str("/tmp/a b"), "\"/tmp/a b\"");
        assert_eq!(py_str("C:\\x\"y"), "\"C:\\\\x\\\"y\"");
    }

    #[test]
    fn nbformat_structure() {
        let nb = to_nbformat(&[Cell::Markdown("# t".into()), Cell::Code("x = 1\ny = 2".into())], json!({}));
        assert_eq!(nb["nbformat"], 4);
        assert_eq!(nb["nbformat_minor"], 5);
        assert_eq!(nb["metadata"]["kernelspec"]["name"], "python3");
        let cells = nb["cells"].as_array().unwrap();
        assert_eq!(cells[0]["cell_type"], "markdown");
        assert!(cells[0].get("outputs").is_none());
        assert_eq!(cells[1]["cell_type"], "code");
        assert_eq!(cells[1]["outputs"], json!([]));
        assert_eq!(cells[1]["execution_count"], Value::Null);
        assert_eq!(cells[1]["source"], json!(["x = 1\n", "y = 2"]));
        assert_ne!(cells[0]["id"], cells[1]["id"]);
    }
}
