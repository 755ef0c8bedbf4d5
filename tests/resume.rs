//! A run killed with SIGKILL halfway: re-running finishes the rest, and the study
//! equals one from a clean run.

mod common;
use common::*;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

/// A series of 6 llama checkpoints and a data file big enough that each one takes
/// a noticeable time to score.
fn make_inputs(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let series = dir.join("series");
    for (i, src) in ["step-0", "step-100", "step-200", "step-0", "step-100", "step-200"].iter().enumerate() {
        copy_dir(&fixtures().join("llama").join(src), &series.join(format!("step-{}", (i + 1) * 10)));
    }
    let base = std::fs::read_to_string(val_data()).unwrap();
    let mut data = String::new();
    for _ in 0..60 {
        data.push_str(&base);
    }
    let data_path = dir.join("val.jsonl");
    std::fs::write(&data_path, data).unwrap();
    (series, data_path)
}

fn eval_cmd(series: &Path, data: &Path, study: &Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["eval", "--checkpoints"]).arg(series).arg("--data").arg(data).arg("--study").arg(study);
    c.args(["--quiet", "--batch-tokens", "512"]);
    c
}

fn losses_done(study: &Path) -> usize {
    std::fs::read_dir(study.join("losses"))
        .map(|rd| rd.flatten().filter(|e| e.path().extension().map(|x| x == "parquet").unwrap_or(false)).count())
        .unwrap_or(0)
}

#[test]
fn sigkill_then_rerun_equals_clean_run() {
    let dir = tempfile::tempdir().unwrap();
    let (series, data) = make_inputs(dir.path());

    // Clean run.
    let clean = dir.path().join("clean");
    let out = eval_cmd(&series, &data, &clean).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));

    // Killed run: SIGKILL once at least one checkpoint is done but not all.
    let killed = dir.path().join("killed");
    let mut child = eval_cmd(&series, &data, &killed).spawn().unwrap();
    let t0 = Instant::now();
    loop {
        let n = losses_done(&killed);
        if n >= 2 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            panic!("the run ended ({status}) before it could be killed; make the workload bigger");
        }
        assert!(t0.elapsed() < Duration::from_secs(120));
        std::thread::sleep(Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let n_done = losses_done(&killed);
    assert!(n_done < 6, "killed after everything was done ({n_done}); make the workload bigger");

    // Re-run finishes the rest, skipping what was done.
    let out = eval_cmd(&series, &data, &killed).output().unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    let a = snapshot(&clean);
    let b = snapshot(&killed);
    let names = |s: &Vec<(String, Vec<u8>)>| s.iter().map(|x| x.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(&a), names(&b), "same files");
    for ((name, x), (_, y)) in a.iter().zip(&b) {
        if name == "study.json" {
            // The manifest records the same checkpoint paths; compare it parsed.
            let mx: serde_json::Value = serde_json::from_slice(x).unwrap();
            let my: serde_json::Value = serde_json::from_slice(y).unwrap();
            assert_eq!(mx, my, "study.json");
        } else {
            assert!(x == y, "{name} differs between the clean and the resumed study");
        }
    }
}

#[test]
fn rerun_skips_done_checkpoints_and_force_redoes_them() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    let series = fixtures().join("gpt2");
    let run = |extra: &[&str]| {
        let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
        c.args(["eval", "--checkpoints"]).arg(&series).arg("--data").arg(val_data()).arg("--study").arg(&study);
        c.args(extra);
        let out = c.output().unwrap();
        assert!(out.status.success(), "{}", stderr(&out));
        stderr(&out)
    };
    let first = run(&[]);
    assert!(first.contains("3 evaluated, 0 skipped"), "{first}");
    let second = run(&[]);
    assert!(second.contains("0 evaluated, 3 skipped"), "{second}");
    let third = run(&["--force"]);
    assert!(third.contains("3 evaluated, 0 skipped"), "{third}");
}
