//! One writer at a time where writes must merge (issue 20): concurrent `rho eval` on one study
//! (the study lock `.rho-lock`, the checkpoint claims `losses/<name>.lock`), `rho categorize`
//! under the study lock, and `rho train` run folders (the run lock `.rho-run-lock`; a folder
//! holding a run refused without --resume / --force).

mod common;
use common::*;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

fn llama(step: &str) -> PathBuf {
    fixtures().join("llama").join(step)
}

fn eval_cmd(checkpoints: &[PathBuf], study: &Path, extra: &[&str]) -> Command {
    eval_data_cmd(checkpoints, &val_data(), study, extra)
}

fn eval_data_cmd(checkpoints: &[PathBuf], data: &Path, study: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.arg("eval").arg("--checkpoints").args(checkpoints).arg("--data").arg(data).arg("--study").arg(study);
    c.args(extra).stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn names_in_study(study: &Path) -> Vec<String> {
    let v: serde_json::Value = serde_json::from_slice(&std::fs::read(study.join("study.json")).unwrap()).unwrap();
    v["checkpoints"].as_array().unwrap().iter().map(|c| c["name"].as_str().unwrap().to_string()).collect()
}

fn wait_all(children: Vec<Child>) -> Vec<Output> {
    children.into_iter().map(|c| c.wait_with_output().unwrap()).collect()
}

/// Three processes, one checkpoint each, started together on one study: every checkpoint lands
/// in study.json (in training order), `rho status` says complete. 20 rounds.
#[test]
fn concurrent_evals_of_different_checkpoints_all_land() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..20 {
        let study = dir.path().join(format!("s{round}"));
        let children: Vec<Child> = ["step-0", "step-100", "step-200"]
            .iter()
            .map(|s| eval_cmd(&[llama(s)], &study, &["--quiet"]).spawn().unwrap())
            .collect();
        for o in wait_all(children) {
            assert!(o.status.success(), "round {round}: {}", stderr(&o));
        }
        assert_eq!(names_in_study(&study), ["step-0", "step-100", "step-200"], "round {round}");
        for s in ["step-0", "step-100", "step-200"] {
            assert!(study.join("losses").join(format!("{s}.parquet")).is_file(), "round {round}: {s}");
        }
        let st = rho(&["status", "--study", study.to_str().unwrap()]);
        assert_eq!(st.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&st.stdout));
        let leftovers: Vec<String> = std::fs::read_dir(study.join("losses"))
            .unwrap()
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| !n.ends_with(".parquet"))
            .collect();
        assert!(leftovers.is_empty(), "round {round}: claims or temporaries left: {leftovers:?}");
        assert_eq!(std::fs::read(study.join(".rho-lock")).unwrap(), b"", "a free study lock is empty");
    }
}

/// Two processes evaluate the same three checkpoints at once: each checkpoint is scored by one
/// of them (the other waits on its claim and takes it as done), and the study is complete.
#[test]
fn concurrent_evals_of_the_same_checkpoints_do_the_work_once() {
    let dir = tempfile::tempdir().unwrap();
    let series = [llama("step-0"), llama("step-100"), llama("step-200")];
    for round in 0..10 {
        let study = dir.path().join(format!("s{round}"));
        let children: Vec<Child> = (0..2).map(|_| eval_cmd(&series, &study, &[]).spawn().unwrap()).collect();
        let outs = wait_all(children);
        let mut scored: Vec<String> = Vec::new();
        for o in &outs {
            let err = stderr(o);
            assert!(o.status.success(), "round {round}: {err}");
            // "  step-100: 502 tokens in 0.04 s (...)": one line per checkpoint this process scored
            scored.extend(err.lines().filter(|l| l.contains(" tokens in ")).map(|l| l.trim().split(':').next().unwrap().to_string()));
        }
        scored.sort();
        assert_eq!(scored, ["step-0", "step-100", "step-200"], "round {round}: each checkpoint scored once\n{}\n{}", stderr(&outs[0]), stderr(&outs[1]));
        assert_eq!(names_in_study(&study), ["step-0", "step-100", "step-200"], "round {round}");
    }
}

/// While another process holds the study lock, eval and categorize wait for it, saying who
/// holds it, and finish once it is released.
#[test]
fn eval_and_categorize_wait_for_the_study_lock_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    let o = eval_cmd(&[llama("step-0"), llama("step-100")], &study, &["--quiet"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let before = std::fs::read(study.join("study.json")).unwrap();
    for what in ["eval", "categorize"] {
        let held = rho::lock::lock_study(&study, true).unwrap();
        let mut child = if what == "eval" {
            eval_cmd(&[llama("step-200")], &study, &[]).spawn().unwrap()
        } else {
            let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
            c.args(["categorize", "--study"]).arg(&study).stdout(Stdio::piped()).stderr(Stdio::piped());
            c.spawn().unwrap()
        };
        std::thread::sleep(Duration::from_millis(1800));
        assert!(child.try_wait().unwrap().is_none(), "{what} did not wait for the study lock");
        if what == "eval" {
            assert_eq!(std::fs::read(study.join("study.json")).unwrap(), before, "study.json changed under another's lock");
        } else {
            assert!(!study.join("trajectories.parquet").exists(), "categorize published under another's lock");
        }
        drop(held);
        let o = child.wait_with_output().unwrap();
        let err = stderr(&o);
        assert!(o.status.success(), "{what}: {err}");
        assert!(
            err.contains("waiting for the study lock") && err.contains(&format!("held by pid {} on ", std::process::id())),
            "{what}: {err}"
        );
    }
    assert_eq!(names_in_study(&study), ["step-0", "step-100", "step-200"]);
    assert!(study.join("trajectories.parquet").is_file());
}

/// `eval --force` with other data started beside evals of the old data: whatever the
/// interleaving, the study is one generation (every listed checkpoint of its fingerprint, its
/// losses there) and a process that lost its study says so.
#[test]
fn force_beside_other_writers_leaves_one_consistent_study() {
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, std::fs::read_to_string(val_data()).unwrap().repeat(2)).unwrap();
    for round in 0..6 {
        let study = dir.path().join(format!("s{round}"));
        let o = eval_cmd(&[llama("step-0")], &study, &["--quiet"]).output().unwrap();
        assert!(o.status.success(), "{}", stderr(&o));
        let a = eval_cmd(&[llama("step-100")], &study, &["--quiet"]).spawn().unwrap();
        let b = eval_data_cmd(&[llama("step-200")], &other, &study, &["--quiet", "--force"]).spawn().unwrap();
        let outs = wait_all(vec![a, b]);
        assert!(outs[1].status.success(), "round {round}: --force failed: {}", stderr(&outs[1]));
        if !outs[0].status.success() {
            let e = stderr(&outs[0]);
            assert!(e.contains("study.json") && (e.contains("started over") || e.contains("other data")), "round {round}: {e}");
        }
        let v: serde_json::Value = serde_json::from_slice(&std::fs::read(study.join("study.json")).unwrap()).unwrap();
        let fp = v["fingerprint"].as_str().unwrap();
        let names = names_in_study(&study);
        assert_eq!(names, ["step-200"], "round {round}: the study started over holds only the --force run's checkpoint");
        for c in v["checkpoints"].as_array().unwrap() {
            assert_eq!(c["fingerprint"].as_str().unwrap(), fp, "round {round}");
        }
        let st = rho(&["status", "--study", study.to_str().unwrap()]);
        assert_eq!(st.status.code(), Some(0), "round {round}: {}", String::from_utf8_lossy(&st.stdout));
    }
}

fn train_cmd(out: &Path, extra: &[&str]) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["train", "--init"]).arg(llama("step-200")).arg("--data").arg(val_data()).arg("--out").arg(out);
    c.args(["--seq-len", "32", "--batch-tokens", "128", "--lr", "1e-3"]).args(extra);
    c.stdout(Stdio::piped()).stderr(Stdio::piped());
    c
}

fn metrics_lines(out: &Path) -> usize {
    std::fs::read_to_string(out.join("metrics.jsonl")).map(|s| s.lines().count()).unwrap_or(0)
}

/// A child killed if the test fails before it ends.
struct KillOnDrop(Option<Child>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(c) = &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// A second `rho train` into a folder a run is writing refuses at once, naming the first
/// (with or without --force); the first run goes on and ends whole.
#[test]
fn a_second_train_into_a_running_folder_refuses_naming_the_holder() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut guard = KillOnDrop(Some(train_cmd(&out, &["--steps", "100000", "--quiet"]).spawn().unwrap()));
    let first = guard.0.as_ref().unwrap();
    let t0 = Instant::now();
    while metrics_lines(&out) < 2 {
        assert!(t0.elapsed() < Duration::from_secs(60), "training did not start");
        std::thread::sleep(Duration::from_millis(10));
    }
    for extra in [&["--steps", "2", "--quiet"][..], &["--steps", "2", "--quiet", "--force"][..]] {
        let t = Instant::now();
        let o = train_cmd(&out, extra).output().unwrap();
        let err = stderr(&o);
        assert!(!o.status.success(), "{extra:?}: a second run into a running folder succeeded");
        assert!(t.elapsed() < Duration::from_secs(10), "{extra:?}: not refused at once ({:?})", t.elapsed());
        assert!(err.contains("another rho train is writing this run folder") && err.contains(&format!("pid {} on ", first.id())), "{extra:?}: {err}");
    }
    let st = Command::new("kill").args(["-INT", &first.id().to_string()]).status().unwrap();
    assert!(st.success());
    let o = guard.0.take().unwrap().wait_with_output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let ckpts: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let state = rho::train::checkpoint::load_state(&ckpts[0]).unwrap();
    assert_eq!(metrics_lines(&out) as u64, state.step, "the first run's metrics are whole");
    assert_eq!(state.config.steps, 100000, "the checkpoint is the first run's");
}

/// Two runs started together into one folder: exactly one trains, the other refuses (naming the
/// holder, or the run it finds), and the folder holds the winner's run whole.
#[test]
fn two_trains_started_together_one_refuses() {
    let dir = tempfile::tempdir().unwrap();
    for round in 0..4 {
        let out = dir.path().join(format!("run{round}"));
        let a = train_cmd(&out, &["--steps", "3", "--quiet"]).spawn().unwrap();
        let b = train_cmd(&out, &["--steps", "3", "--quiet"]).spawn().unwrap();
        let ids = [a.id(), b.id()];
        let outs = wait_all(vec![a, b]);
        let ok: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
        assert_eq!(ok.len(), 1, "round {round}: {} / {}", stderr(&outs[0]), stderr(&outs[1]));
        let loser = 1 - ok[0];
        let err = stderr(&outs[loser]);
        assert!(
            err.contains(&format!("another rho train is writing this run folder: pid {} on ", ids[ok[0]])) || err.contains("holds a run"),
            "round {round}: {err}"
        );
        assert_eq!(metrics_lines(&out), 3, "round {round}");
        assert_eq!(rho::train::checkpoint::load_state(&out.join("step-3")).unwrap().step, 3);
    }
}

/// A fresh run into a finished run's folder is refused, saying what is there, and leaves the
/// folder byte for byte; `--force` replaces it and says what it replaces; `--resume` with
/// `--force` is refused.
#[test]
fn a_fresh_train_into_a_finished_run_is_refused_and_force_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let o = train_cmd(&out, &["--steps", "4", "--save-every", "2", "--quiet"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    std::fs::write(out.join("notes.txt"), b"the user's").unwrap();
    let before = snapshot(&out);
    assert!(before.iter().any(|f| f.0 == "step-4/model.safetensors") && before.iter().any(|f| f.0 == "metrics.jsonl"));

    let o = train_cmd(&out, &["--steps", "2", "--quiet"]).output().unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains("--out") && err.contains(out.to_str().unwrap()), "{err}");
    assert!(err.contains("holds a run (2 checkpoints up to step-4, metrics.jsonl with 4 lines, 2 probe masks)"), "{err}");
    assert!(err.contains("--resume") && err.contains("--force"), "{err}");
    assert_eq!(snapshot(&out), before, "a refused run changed the folder");

    let o = train_cmd(&out, &["--steps", "2", "--quiet", "--force", "--resume"]).arg(&out).output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert_eq!(snapshot(&out), before);

    let o = train_cmd(&out, &["--steps", "2", "--force"]).output().unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(
        err.contains(&format!("replaces the run in {}: 2 checkpoints up to step-4, metrics.jsonl with 4 lines, 2 probe masks", out.display())),
        "{err}"
    );
    assert!(!out.join("step-4").exists(), "the old run's last checkpoint stayed beside the new run");
    assert_eq!(metrics_lines(&out), 2);
    assert_eq!(rho::train::checkpoint::load_state(&out.join("step-2")).unwrap().config.steps, 2, "step-2 is the new run's");
    assert_eq!(std::fs::read(out.join("notes.txt")).unwrap(), b"the user's", "not the run's: kept");
}
