//! `rho report`: studies built with the `rho` binary from the committed fixture
//! checkpoint series; every chart must be a valid PNG of at least 1200x800 and be
//! shown by index.html.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const CHARTS: [&str; 6] = [
    "category_shares.png",
    "category_mean_loss.png",
    "fluctuating_tokens.png",
    "residual_std.png",
    "categorisation_plane.png",
    "passage.png",
];
const RUN_CHARTS: [&str; 2] = ["runs_kept_loss.png", "runs_kept_by_category.png"];

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(o.status.success(), "rho failed: {}", stderr(&o));
    o
}

/// `rho eval` + `rho categorize` of a fixture series into a fresh study.
fn study(dir: &Path, family: &str) -> PathBuf {
    let s = dir.join(family);
    let ck = fixtures().join(family);
    ok(rho(&["eval", "--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", s.to_str().unwrap(), "--quiet"]));
    ok(rho(&["categorize", "--study", s.to_str().unwrap()]));
    s
}

/// Width and height of a PNG, checking the signature, the IHDR chunk and the final IEND chunk.
fn png_size(p: &Path) -> (u32, u32) {
    let b = std::fs::read(p).unwrap_or_else(|e| panic!("{}: {e}", p.display()));
    assert!(b.len() > 5_000, "{}: only {} bytes", p.display(), b.len());
    assert_eq!(&b[..8], b"\x89PNG\r\n\x1a\n", "{}: not a PNG", p.display());
    assert_eq!(&b[12..16], b"IHDR", "{}", p.display());
    assert_eq!(&b[b.len() - 8..b.len() - 4], b"IEND", "{}: truncated", p.display());
    (u32::from_be_bytes(b[16..20].try_into().unwrap()), u32::from_be_bytes(b[20..24].try_into().unwrap()))
}

fn check_report(out: &Path, expected: &[&str], absent: &[&str]) {
    let index = std::fs::read_to_string(out.join("index.html")).expect("index.html");
    assert!(index.starts_with("<!DOCTYPE html>") && index.trim_end().ends_with("</html>"));
    for f in expected {
        let (w, h) = png_size(&out.join(f));
        assert!(w >= 1200 && h >= 800, "{f}: {w}x{h}");
        let tag = format!("<img src=\"{f}\"");
        assert_eq!(index.matches(&tag).count(), 1, "index.html shows {f} once");
        // each image has a caption right after it
        let after = &index[index.find(&tag).unwrap()..];
        let cap = after.find("<figcaption>").unwrap();
        let end = after.find("</figcaption>").unwrap();
        assert!(end > cap + 12 + 20, "{f}: caption too short");
    }
    for f in absent {
        assert!(!out.join(f).exists(), "{f} should not be drawn");
        assert!(!index.contains(f), "index.html should not show {f}");
    }
    // no temporary files left behind
    for e in std::fs::read_dir(out).unwrap() {
        let name = e.unwrap().file_name().to_string_lossy().to_string();
        assert!(!name.contains(".tmp") && !rho::temp::is_temp_name(&name) && name.matches(".png").count() <= 1, "left over: {name}");
    }
}

#[test]
fn report_on_three_fixture_series() {
    let dir = tempfile::tempdir().unwrap();
    for family in ["llama", "gpt2", "neox"] {
        let s = study(dir.path(), family);
        let o = ok(rho(&["report", "--study", s.to_str().unwrap()]));
        let out = s.join("report");
        check_report(&out, &CHARTS, &RUN_CHARTS);
        // stdout lists every chart and the index
        let stdout = String::from_utf8_lossy(&o.stdout);
        for f in CHARTS {
            assert!(stdout.contains(&out.join(f).display().to_string()), "{family}: {stdout}");
        }
        assert!(stdout.contains("index.html"));
        assert!(stderr(&o).to_lowercase().contains("no training run"), "{}", stderr(&o));
        // the index states the shares of categories.json
        let summary: serde_json::Value = serde_json::from_slice(&std::fs::read(s.join("categories.json")).unwrap()).unwrap();
        let index = std::fs::read_to_string(out.join("index.html")).unwrap();
        assert!(index.contains(&format!("<td>total</td><td>{}</td>", summary["total"])), "{family}");
    }
}

#[test]
fn report_draws_run_charts_when_the_study_has_a_selective_run() {
    let dir = tempfile::tempdir().unwrap();
    let s = study(dir.path(), "llama");
    let run = s.join("runs/slm");
    let init = fixtures().join("llama/step-200");
    let reference = fixtures().join("llama/step-0");
    ok(rho(&[
        "train", "--init", init.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--out", run.to_str().unwrap(),
        "--mode", "slm", "--ratio", "0.5", "--reference", reference.to_str().unwrap(), "--steps", "3", "--mask-every", "1",
        "--seq-len", "32", "--batch-tokens", "128", "--quiet",
    ]));
    assert!(run.join("metrics.jsonl").is_file() && run.join("masks").is_dir());
    let out = dir.path().join("elsewhere/report");
    ok(rho(&["report", "--study", s.to_str().unwrap(), "--out", out.to_str().unwrap(), "--quiet"]));
    let all: Vec<&str> = CHARTS.iter().chain(RUN_CHARTS.iter()).copied().collect();
    check_report(&out, &all, &[]);
    assert!(!s.join("report").exists(), "--out is where the report goes");
}

#[test]
fn report_errors_name_the_missing_file() {
    let dir = tempfile::tempdir().unwrap();
    // no study at all
    let none = dir.path().join("none");
    let o = rho(&["report", "--study", none.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("study.json") && stderr(&o).contains("rho eval"), "{}", stderr(&o));
    // evaluated but not categorized
    let s = dir.path().join("llama");
    let ck = fixtures().join("llama");
    ok(rho(&["eval", "--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", s.to_str().unwrap(), "--quiet"]));
    let o = rho(&["report", "--study", s.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1));
    let e = stderr(&o);
    assert!(e.contains("trajectories.parquet") && e.contains("rho categorize"), "{e}");
    // a losses file that no longer lines up with the trajectories
    ok(rho(&["categorize", "--study", s.to_str().unwrap()]));
    let lp = s.join("losses/step-100.parquet");
    std::fs::copy(fixtures().join("data/val.parquet"), &lp).unwrap();
    let o = rho(&["report", "--study", s.to_str().unwrap()]);
    assert!(!o.status.success());
    assert!(stderr(&o).contains("step-100.parquet"), "{}", stderr(&o));
}
