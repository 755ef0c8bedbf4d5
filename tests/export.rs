//! `rho export notebook` through the binary: a valid nbformat 4 notebook whose code
//! cells load the study's files; the committed notebooks-export/ notebook is current.
//! (Executing the notebook needs pandas and matplotlib: scripts/check_notebook.sh, run by .ci/run.)

mod common;
use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};

fn make_study(dir: &Path, threshold: &str) -> PathBuf {
    let study = dir.join("study");
    let s = study.to_str().unwrap();
    let out = rho(&["eval", "--quiet", "--checkpoints", fixtures().join("llama").to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", s]);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = rho(&["categorize", "--study", s, "--threshold", threshold]);
    assert!(out.status.success(), "{}", stderr(&out));
    study
}

fn export(study: &Path, out: Option<&Path>) -> std::process::Output {
    let mut a = vec!["export", "notebook", "--study", study.to_str().unwrap()];
    if let Some(o) = out {
        a.extend(["--out", o.to_str().unwrap()]);
    }
    rho(&a)
}

fn source(cell: &Value) -> String {
    match &cell["source"] {
        Value::String(s) => s.clone(),
        Value::Array(lines) => lines.iter().map(|l| l.as_str().expect("source line is a string")).collect(),
        v => panic!("bad source {v}"),
    }
}

fn cells_of<'a>(nb: &'a Value, kind: &str) -> Vec<&'a Value> {
    nb["cells"].as_array().unwrap().iter().filter(|c| c["cell_type"] == kind).collect()
}

/// The nbformat 4 structure (the parts of the v4.5 JSON schema a reader relies on).
fn check_nbformat(nb: &Value) {
    assert_eq!(nb["nbformat"], 4);
    assert!(nb["nbformat_minor"].as_u64().unwrap() >= 5, "cell ids need nbformat 4.5");
    let ks = &nb["metadata"]["kernelspec"];
    assert_eq!(ks["name"], "python3");
    assert_eq!(ks["language"], "python");
    assert!(ks["display_name"].is_string());
    assert_eq!(nb["metadata"]["language_info"]["name"], "python");
    let cells = nb["cells"].as_array().unwrap();
    assert!(cells.len() >= 10, "{} cells", cells.len());
    let mut ids = std::collections::HashSet::new();
    for c in cells {
        let id = c["id"].as_str().expect("cell id");
        assert!(!id.is_empty() && id.len() <= 64 && id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '-' || ch == '_'), "{id}");
        assert!(ids.insert(id.to_string()), "duplicate id {id}");
        assert!(c["metadata"].is_object());
        let lines = c["source"].as_array().expect("source as a list of lines");
        for (i, l) in lines.iter().enumerate() {
            let l = l.as_str().unwrap();
            // every line but the last ends with its newline, and holds only one line
            assert_eq!(l.ends_with('\n'), i + 1 < lines.len(), "{l:?}");
            assert!(!l.trim_end_matches('\n').contains('\n'), "{l:?}");
        }
        match c["cell_type"].as_str().unwrap() {
            "code" => {
                assert_eq!(c["outputs"], serde_json::json!([]));
                assert!(c["execution_count"].is_null());
                let keys: Vec<&String> = c.as_object().unwrap().keys().collect();
                assert_eq!(keys.len(), 6, "{keys:?}");
            }
            "markdown" => {
                assert!(c.get("outputs").is_none() && c.get("execution_count").is_none());
                assert_eq!(c.as_object().unwrap().len(), 4);
            }
            other => panic!("cell type {other}"),
        }
    }
    // the first cell is a title, and markdown explains each code step
    assert_eq!(cells[0]["cell_type"], "markdown");
    assert!(source(&cells[0]).starts_with("# "));
    assert!(cells_of(nb, "markdown").len() >= 8);
}

#[test]
fn notebook_is_nbformat_4_and_loads_the_study() {
    let dir = tempfile::tempdir().unwrap();
    let study = make_study(dir.path(), "0.3");
    let out_path = dir.path().join("nb/audit.ipynb");
    let out = export(&study, Some(&out_path));
    assert!(out.status.success(), "{}", stderr(&out));
    let text = std::fs::read_to_string(&out_path).unwrap();
    let nb: Value = serde_json::from_str(&text).expect("valid JSON");
    check_nbformat(&nb);

    let code = cells_of(&nb, "code");
    // The study path is a variable in the first code cell: absolute, with a note how to change it.
    let first = source(code[0]);
    let abs = std::fs::canonicalize(&study).unwrap();
    let lit = serde_json::to_string(abs.to_str().unwrap()).unwrap();
    assert!(first.contains(&format!("STUDY = Path(os.environ.get(\"RHO_STUDY\", {lit}))")), "{first}");
    assert!(first.contains("change it here"), "{first}");
    assert!(abs.is_absolute());
    assert_eq!(nb["metadata"]["rho"]["study"], abs.to_str().unwrap());

    // Each step reads the right files.
    let all_code: String = code.iter().map(|c| source(c)).collect::<Vec<_>>().join("\n");
    let loader = code.iter().map(|c| source(c)).find(|s| s.contains("read_parquet")).expect("a loading cell");
    for f in ["\"study.json\"", "\"categories.json\"", "\"tokens.parquet\"", "\"trajectories.parquet\"", "\"losses\"", "f\"{name}.parquet\""] {
        assert!(loader.contains(f), "loading cell does not read {f}:\n{loader}");
    }
    for f in ["\"runs\"", "\"masks\"", "\"metrics.jsonl\"", "import pandas as pd", "import matplotlib.pyplot as plt"] {
        assert!(all_code.contains(f), "no {f} in the code cells");
    }
    // Every chart cell draws and shows a figure.
    let charts = code.iter().filter(|c| source(c).contains("plt.show()")).count();
    assert!(charts >= 6, "{charts} chart cells");
    for needle in ["\"delta\"", "\"last_loss\"", "axvline", "axhline", "\"residual_std\"", "nlargest(N_TOP, \"residual_std\")", "\"loss_kept\"", "\"loss_not_kept\""] {
        assert!(all_code.contains(needle), "no {needle} in the code cells");
    }
    // The rule is explained with this study's threshold, and re-derived in code.
    let md: String = cells_of(&nb, "markdown").iter().map(|c| source(c)).collect::<Vec<_>>().join("\n");
    assert!(md.contains("Appendix B.1"), "{md}");
    assert!(md.contains("this study: 0.3"), "{md}");
    for rule in [r"$\Delta L < -t$", r"$\Delta L > t$", "L_{mean}", "checkpoint index", "strict"] {
        assert!(md.contains(rule), "markdown does not state `{rule}`");
    }
    assert!(all_code.contains("np.where(delta < -threshold, \"H->L\""), "{all_code}");
    assert!(all_code.contains("np.where(last <= l_mean, \"L->L\", \"H->H\")"), "{all_code}");
}

#[test]
fn code_cells_are_valid_python() {
    // Only when a Python 3 is on the PATH (it needs nothing beyond the standard library).
    let Ok(py) = std::process::Command::new("python3").arg("--version").output() else {
        eprintln!("python3 not found: skipped");
        return;
    };
    if !py.status.success() {
        eprintln!("python3 not usable: skipped");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let study = make_study(dir.path(), "0.2");
    let nb_path = dir.path().join("n.ipynb");
    assert!(export(&study, Some(&nb_path)).status.success());
    let script = "import ast, json, sys\nnb = json.load(open(sys.argv[1]))\nn = 0\nfor c in nb['cells']:\n    if c['cell_type'] == 'code':\n        ast.parse(''.join(c['source']))\n        n += 1\nprint(n)\n";
    let out = std::process::Command::new("python3").args(["-c", script, nb_path.to_str().unwrap()]).output().unwrap();
    assert!(out.status.success(), "a code cell is not valid Python: {}", String::from_utf8_lossy(&out.stderr));
}

#[test]
fn default_out_and_errors() {
    let dir = tempfile::tempdir().unwrap();
    let study = make_study(dir.path(), "0.2");
    let out = export(&study, None);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stderr(&out).contains("study.ipynb"));
    let nb: Value = serde_json::from_slice(&std::fs::read(study.join("study.ipynb")).unwrap()).unwrap();
    check_nbformat(&nb);

    // not categorized: an error naming the missing file, and nothing written
    let bare = dir.path().join("bare");
    let out = rho(&["eval", "--quiet", "--checkpoints", fixtures().join("llama/step-0").to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", bare.to_str().unwrap()]);
    assert!(out.status.success());
    let target = dir.path().join("x.ipynb");
    let out = export(&bare, Some(&target));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("categories.json"), "{}", stderr(&out));
    assert!(!target.exists());
    let out = export(&dir.path().join("nothing"), Some(&target));
    assert_eq!(out.status.code(), Some(1));
    assert!(stderr(&out).contains("study.json"), "{}", stderr(&out));
}

#[test]
fn committed_export_is_current() {
    // notebooks-export/ holds a notebook exported from the demo study; its code cells must be
    // what `rho export notebook` writes today (all but the study path).
    let dir = tempfile::tempdir().unwrap();
    let study = make_study(dir.path(), "0.2");
    let p = dir.path().join("n.ipynb");
    assert!(export(&study, Some(&p)).status.success());
    let fresh: Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    let committed_path = root().join("notebooks-export/demo-study.ipynb");
    let committed: Value = serde_json::from_slice(&std::fs::read(&committed_path).unwrap()).expect("committed notebook is JSON");
    check_nbformat(&committed);
    let code = |nb: &Value| -> Vec<String> {
        cells_of(nb, "code").iter().map(|c| source(c)).filter(|s| !s.contains("RHO_STUDY")).collect()
    };
    assert_eq!(code(&committed), code(&fresh), "notebooks-export/demo-study.ipynb is stale: re-export it (see notebooks-export/README.md)");
    assert!(committed["metadata"]["rho"]["checkpoints"].as_array().unwrap().len() >= 9, "not exported from the demo study");
}
