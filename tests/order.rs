//! Checkpoint series in training order, through the binary: a folder of real-looking names
//! (OLMo-2 stages, TinyLlama's suffixes), folders given one by one, a folder that cannot be
//! ordered, checkpoints added later, a sharded run, and what categorize and report do with it.

mod common;
use common::*;
use rho::eval::study::Manifest;
use std::path::{Path, PathBuf};

/// `series/<name>` -> a llama fixture checkpoint, for each (name, fixture).
fn series(dir: &Path, links: &[(&str, &str)]) -> PathBuf {
    let s = dir.join("series");
    std::fs::create_dir_all(&s).unwrap();
    for (name, fx) in links {
        std::os::unix::fs::symlink(fixtures().join("llama").join(fx), s.join(name)).unwrap();
    }
    s
}

fn eval(checkpoints: &[&Path], study: &Path, extra: &[&str]) -> std::process::Output {
    let mut a: Vec<String> = vec!["eval".into(), "--checkpoints".into()];
    a.extend(checkpoints.iter().map(|p| p.to_str().unwrap().to_string()));
    a.extend(["--data", val_data().to_str().unwrap(), "--study", study.to_str().unwrap(), "--max-tokens", "60"].map(String::from));
    a.extend(extra.iter().map(|s| s.to_string()));
    let a: Vec<&str> = a.iter().map(String::as_str).collect();
    rho(&a)
}

fn ok(o: std::process::Output) -> String {
    assert!(o.status.success(), "{}", stderr(&o));
    stderr(&o)
}

fn names(study: &Path) -> Vec<String> {
    Manifest::load(study).unwrap().checkpoints.iter().map(|c| c.name.clone()).collect()
}

/// The `step` column of a losses file.
fn step_column(study: &Path, name: &str) -> Vec<Option<i64>> {
    let df = rho::util::read_parquet(&study.join(format!("losses/{name}.parquet"))).unwrap();
    df.column("step").unwrap().i64().unwrap().into_iter().collect()
}

const OLMO2: [&str; 4] = ["stage1-step150-tokens1B", "stage1-step600-tokens3B", "stage1-step700-tokens3B", "stage2-ingredient1-step50-tokens1B"];

#[test]
fn a_folder_of_olmo2_names_is_evaluated_and_categorized_in_training_order() {
    let dir = tempfile::tempdir().unwrap();
    // Created in another order than training order (the old "last number" order: 1, 3, 3, 1).
    let s = series(
        dir.path(),
        &[(OLMO2[3], "step-200"), (OLMO2[1], "step-100"), (OLMO2[0], "step-0"), (OLMO2[2], "step-200")],
    );
    let study = dir.path().join("study");
    let err = ok(eval(&[&s], &study, &[]));
    // The order it will use, before it starts, with step and tokens.
    let table: Vec<&str> = err.lines().skip_while(|l| !l.contains("in training order")).skip(1).take(4).collect();
    assert_eq!(table.len(), 4, "{err}");
    for (line, name) in table.iter().zip(OLMO2) {
        assert!(line.contains(name), "{line} / {name}\n{err}");
    }
    assert!(table[0].contains("stage 1, step 150, tokens 1B (name)"), "{err}");
    assert!(table[3].contains("stage 2, step 50, tokens 1B (name)"), "{err}");

    assert_eq!(names(&study), OLMO2);
    let m = Manifest::load(&study).unwrap();
    let rec: Vec<(Option<u32>, Option<i64>, Option<u64>)> = m.checkpoints.iter().map(|c| (c.stage, c.step, c.tokens_seen)).collect();
    let b = 1_000_000_000;
    assert_eq!(rec, [(Some(1), Some(150), Some(b)), (Some(1), Some(600), Some(3 * b)), (Some(1), Some(700), Some(3 * b)), (Some(2), Some(50), Some(b))]);
    assert!(step_column(&study, OLMO2[0]).iter().all(|&s| s == Some(150)));
    assert!(step_column(&study, OLMO2[3]).iter().all(|&s| s == Some(50)));
    // study.json itself is written in that order
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(study.join("study.json")).unwrap()).unwrap();
    let raw_names: Vec<&str> = raw["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(raw_names, OLMO2);

    // categorize uses that order: the same trajectories as the series given by hand in that order.
    ok(rho(&["categorize", "--study", study.to_str().unwrap()]));
    let cats: serde_json::Value = serde_json::from_slice(&std::fs::read(study.join("categories.json")).unwrap()).unwrap();
    assert_eq!(cats["checkpoints"].as_array().unwrap().iter().map(|v| v.as_str().unwrap()).collect::<Vec<_>>(), OLMO2);
    let by_hand = dir.path().join("by-hand");
    let listed: Vec<PathBuf> = OLMO2.iter().map(|n| s.join(n)).collect();
    ok(eval(&listed.iter().map(PathBuf::as_path).collect::<Vec<_>>(), &by_hand, &["--quiet"]));
    ok(rho(&["categorize", "--study", by_hand.to_str().unwrap()]));
    let traj = |p: &Path| rho::util::read_parquet(&p.join("trajectories.parquet")).unwrap();
    assert!(traj(&study).equals(&traj(&by_hand)));
    // ... and not those of another order (the order matters to the categories)
    let reversed = dir.path().join("reversed");
    let rev: Vec<&Path> = listed.iter().rev().map(PathBuf::as_path).collect();
    ok(eval(&rev, &reversed, &["--quiet"]));
    ok(rho(&["categorize", "--study", reversed.to_str().unwrap()]));
    assert!(!traj(&study).equals(&traj(&reversed)));

    // rho status lists the series in that order
    let st = rho(&["status", "--study", study.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let listed: Vec<&str> = v["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(listed, OLMO2);
    assert_eq!(v["checkpoints"][0]["tokens_seen"], 1_000_000_000u64);
}

const TINY: [&str; 3] = ["TinyLlama-1.1B-step-50K-105b", "TinyLlama-1.1B-intermediate-step-480k-1T", "TinyLlama-1.1B-intermediate-step-715k-1.5T"];

#[test]
fn tinyllama_names_and_the_report_against_tokens_seen() {
    let dir = tempfile::tempdir().unwrap();
    let s = series(dir.path(), &[(TINY[2], "step-200"), (TINY[0], "step-0"), (TINY[1], "step-100")]);
    let study = dir.path().join("study");
    ok(eval(&[&s], &study, &["--quiet"]));
    assert_eq!(names(&study), TINY);
    let m = Manifest::load(&study).unwrap();
    let steps: Vec<Option<i64>> = m.checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, [Some(50_000), Some(480_000), Some(715_000)]);
    let tokens: Vec<Option<u64>> = m.checkpoints.iter().map(|c| c.tokens_seen).collect();
    assert_eq!(tokens, [Some(105_000_000_000), Some(1_000_000_000_000), Some(1_500_000_000_000)]);
    ok(rho(&["categorize", "--study", study.to_str().unwrap()]));
    for axis in ["step", "tokens"] {
        let out = dir.path().join(format!("report-{axis}"));
        ok(rho(&["report", "--study", study.to_str().unwrap(), "--out", out.to_str().unwrap(), "--x-axis", axis, "--quiet"]));
        assert!(out.join("category_mean_loss.png").exists() && out.join("fluctuating_tokens.png").exists());
    }
    let png = |axis: &str| std::fs::read(dir.path().join(format!("report-{axis}/category_mean_loss.png"))).unwrap();
    assert_ne!(png("step"), png("tokens"), "the x-axis differs");

    // A study whose checkpoints record no tokens seen: --x-axis tokens is refused, naming them, and nothing is written.
    let plain = dir.path().join("plain");
    ok(eval(&[&fixtures().join("llama")], &plain, &["--quiet"]));
    ok(rho(&["categorize", "--study", plain.to_str().unwrap()]));
    let out = dir.path().join("plain-report");
    let o = rho(&["report", "--study", plain.to_str().unwrap(), "--out", out.to_str().unwrap(), "--x-axis", "tokens"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(e.contains("--x-axis") && e.contains("tokens seen are not recorded for 3 of the 3 checkpoints") && e.contains("step-0"), "{e}");
    assert!(!out.exists(), "nothing written");
}

#[test]
fn checkpoints_given_one_by_one_keep_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let l = fixtures().join("llama");
    let study = dir.path().join("study");
    let (c, a, b) = (l.join("step-200"), l.join("step-0"), l.join("step-100"));
    let err = ok(eval(&[&c, &a, &b], &study, &[]));
    assert_eq!(names(&study), ["step-200", "step-0", "step-100"]);
    assert!(err.contains("in the order given"), "{err}");
    // Against their steps: a warning naming both, never a re-sort.
    assert!(err.contains("warning:") && err.contains("step-200 (step 200) before step-0 (step 0)"), "{err}");
    // Recorded, though not used for the order.
    let steps: Vec<Option<i64>> = Manifest::load(&study).unwrap().checkpoints.iter().map(|c| c.step).collect();
    assert_eq!(steps, [Some(200), Some(0), Some(100)]);

    // Names without a step, given by hand: kept as given, step null; a later one goes last.
    let s = series(dir.path(), &[("late", "step-200"), ("early", "step-0"), ("mid", "step-100"), ("final", "step-200")]);
    let hand = dir.path().join("hand");
    let err = ok(eval(&[&s.join("early"), &s.join("mid"), &s.join("late")], &hand, &[]));
    assert!(!err.contains("warning"), "{err}");
    assert!(err.contains("early  step ?"), "{err}");
    assert_eq!(names(&hand), ["early", "mid", "late"]);
    ok(eval(&[&s.join("final")], &hand, &["--quiet"]));
    assert_eq!(names(&hand), ["early", "mid", "late", "final"]);
    let raw: serde_json::Value = serde_json::from_slice(&std::fs::read(hand.join("study.json")).unwrap()).unwrap();
    assert!(raw["checkpoints"][0]["step"].is_null(), "{raw}");
    assert_eq!(step_column(&hand, "early"), vec![None; 60]);
    // Re-evaluating one (--force) keeps its place.
    ok(eval(&[&s.join("mid")], &hand, &["--quiet", "--force"]));
    assert_eq!(names(&hand), ["early", "mid", "late", "final"]);
}

#[test]
fn a_folder_that_cannot_be_ordered_is_refused_and_nothing_is_written() {
    let dir = tempfile::tempdir().unwrap();
    let s = series(dir.path(), &[("checkpoint-500", "step-0"), ("checkpoint-1000", "step-100"), ("final", "step-200"), ("best", "step-200")]);
    let study = dir.path().join("study");
    let o = eval(&[&s], &study, &[]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains(s.to_str().unwrap()), "names the folder: {e}");
    assert!(e.contains("no training step in the name and no trainer_state.json: best, final"), "{e}");
    assert!(e.contains("--checkpoints") && e.contains("in training order"), "says how to give the order: {e}");
    assert!(!study.exists(), "nothing written");

    // A tie and parallel branches, all in the one error.
    let t = dir.path().join("t");
    let s2 = series(&t, &[("stage1-step100-tokens1B", "step-0"), ("stage1-step-100", "step-100"), ("stage2-ingredient1-step5-tokens1B", "step-0"), ("stage2-ingredient2-step9-tokens2B", "step-200")]);
    let o = eval(&[&s2], &study, &[]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("same position (stage 1, step 100)") && e.contains("stage 2 has parallel branches"), "{e}");
    assert!(!study.exists());

    // Given one by one, the same folders are fine.
    ok(eval(&[&s.join("best"), &s.join("checkpoint-500")], &study, &["--quiet"]));
    assert_eq!(names(&study), ["best", "checkpoint-500"]);
}

#[test]
fn trainer_state_json_comes_before_the_name() {
    let dir = tempfile::tempdir().unwrap();
    let s = dir.path().join("run");
    // A Trainer's output: checkpoint-N folders and final/, each with its trainer_state.json.
    for (name, fx, step) in [("checkpoint-20", "step-100", 20), ("final", "step-200", 30), ("checkpoint-10", "step-0", 10)] {
        copy_dir(&fixtures().join("llama").join(fx), &s.join(name));
        std::fs::write(s.join(name).join("trainer_state.json"), format!(r#"{{"global_step": {step}, "num_input_tokens_seen": {}}}"#, step * 4096)).unwrap();
    }
    let study = dir.path().join("study");
    let err = ok(eval(&[&s], &study, &[]));
    assert!(err.contains("step 30, tokens 123K (trainer_state.json)"), "{err}");
    assert_eq!(names(&study), ["checkpoint-10", "checkpoint-20", "final"]);

    // A later checkpoint of the series, evaluated on its own, falls into place.
    copy_dir(&fixtures().join("llama/step-100"), &s.join("checkpoint-15"));
    std::fs::write(s.join("checkpoint-15/trainer_state.json"), r#"{"global_step": 15, "num_input_tokens_seen": 61440}"#).unwrap();
    ok(eval(&[&s.join("checkpoint-15")], &study, &["--quiet"]));
    assert_eq!(names(&study), ["checkpoint-10", "checkpoint-15", "checkpoint-20", "final"]);

    // A trainer_state.json without a step, in a folder of checkpoints: an error naming it.
    std::fs::write(s.join("final/trainer_state.json"), r#"{"epoch": 3.0}"#).unwrap();
    let o = eval(&[&s], &dir.path().join("other"), &[]);
    let e = stderr(&o);
    assert!(!o.status.success() && e.contains("final/trainer_state.json") && e.contains("global_step"), "{e}");
}

#[test]
fn a_sharded_run_keeps_the_order_given() {
    let dir = tempfile::tempdir().unwrap();
    let s = series(dir.path(), &[("late", "step-200"), ("early", "step-0"), ("mid", "step-100")]);
    let study = dir.path().join("study");
    let cks = [s.join("late"), s.join("early"), s.join("mid")];
    let cks: Vec<&Path> = cks.iter().map(PathBuf::as_path).collect();
    for sh in ["1/2", "0/2"] {
        ok(eval(&cks, &study, &["--quiet", "--shard", sh]));
    }
    assert_eq!(names(&study), ["late", "early", "mid"]);
    let st = rho(&["status", "--study", study.to_str().unwrap(), "--json"]);
    let v: serde_json::Value = serde_json::from_slice(&st.stdout).unwrap();
    let listed: Vec<&str> = v["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap()).collect();
    assert_eq!(listed, ["late", "early", "mid"]);
}
