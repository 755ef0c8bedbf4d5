//! `rho slurm eval` end to end without a cluster: a fake `sbatch` on PATH records its
//! arguments and runs every array task of the generated script in turn (as Slurm would,
//! with SLURM_ARRAY_TASK_ID set). The sharded study must equal a plain `rho eval` study,
//! and a lost task must be re-submittable alone with `--array I`.
//! (scripts/slurm_local.sh runs the same against a real single-node Slurm.)
mod common;

use clap::Parser;
use common::*;
use rho::slurm::{self, SlurmCommand, SlurmEvalArgs};
use std::path::{Path, PathBuf};

#[derive(Debug, Parser)]
struct W {
    #[command(subcommand)]
    cmd: SlurmCommand,
}

fn args(a: &[&str]) -> SlurmEvalArgs {
    let mut v = vec!["rho-slurm", "eval"];
    v.extend_from_slice(a);
    match W::try_parse_from(v).unwrap().cmd {
        SlurmCommand::Eval(x) => x,
    }
}

const FAKE_SBATCH: &str = r#"#!/bin/bash
# Fake sbatch: record the arguments, run each array task of the script, print a job id.
set -euo pipefail
array=""; script=""
for a in "$@"; do
  case "$a" in
    --parsable) ;;
    --array=*) array=${a#--array=} ;;
    -*) echo "fake sbatch: unexpected option $a" >&2; exit 2 ;;
    *) script=$a ;;
  esac
done
dir=$(dirname "$script")
echo "$*" >>"$dir/fake-sbatch-calls.txt"
[ -n "$array" ] || array=$(sed -n 's/^#SBATCH --array=//p' "$script")
for item in ${array//,/ }; do
  case $item in *-*) lo=${item%-*}; hi=${item#*-} ;; *) lo=$item; hi=$item ;; esac
  for ((i = lo; i <= hi; i++)); do
    SLURM_ARRAY_TASK_ID=$i bash "$script" >>"$dir/logs/task-$i.out" 2>&1 || { echo "fake sbatch: task $i failed" >&2; exit 1; }
  done
done
echo "4242;fake"
"#;

fn write_exe(path: &Path, text: &str) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, text).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

fn status_ok(study: &Path) -> bool {
    rho(&["status", "--study", study.to_str().unwrap()]).status.success()
}

fn audit_csv(study: &Path) -> Vec<u8> {
    let s = study.to_str().unwrap();
    let out = rho(&["categorize", "--study", s]);
    assert!(out.status.success(), "categorize {s}: {}", stderr(&out));
    let out = rho(&["audit", "--study", s, "--format", "csv", "--top", "100000000"]);
    assert!(out.status.success(), "audit {s}: {}", stderr(&out));
    assert!(out.stdout.len() > 1000, "audit {s}: almost empty");
    out.stdout
}

fn parts(study: &Path) -> Vec<PathBuf> {
    let mut v = Vec::new();
    for c in std::fs::read_dir(study.join("losses")).unwrap() {
        let c = c.unwrap().path();
        if c.is_dir() {
            for p in std::fs::read_dir(&c).unwrap() {
                let p = p.unwrap().path();
                if p.extension().is_some_and(|e| e == "parquet") {
                    v.push(p);
                }
            }
        }
    }
    v.sort();
    v
}

// One test: it changes PATH, which the process shares.
#[test]
fn sharded_job_array_equals_plain_eval_and_resubmits_one_task() {
    let tmp = tempfile::tempdir().unwrap();
    let bin = tmp.path().join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    write_exe(&bin.join("sbatch"), FAKE_SBATCH);
    let old_path = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![bin.clone()];
    paths.extend(std::env::split_paths(&old_path));
    std::env::set_var("PATH", std::env::join_paths(paths).unwrap());

    let series = fixtures().join("llama");
    let data = val_data();
    let (series, data) = (series.to_str().unwrap(), data.to_str().unwrap());
    let rho_bin = env!("CARGO_BIN_EXE_rho");

    let s1 = tmp.path().join("s1");
    let out = rho(&["eval", "--quiet", "--checkpoints", series, "--data", data, "--study", s1.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let want = audit_csv(&s1);

    // A study path with a space and a quote: the script must quote it.
    let s2 = tmp.path().join("study 'two'");
    let s2s = s2.to_str().unwrap();
    let base = ["--shards", "3", "--study", s2s, "--rho", rho_bin];
    let eval_args = ["--", "--quiet", "--checkpoints", series, "--data", data];
    let full: Vec<&str> = base.iter().chain(eval_args.iter()).copied().collect();

    // Dry run: the script is written, nothing is submitted.
    let mut dry = full.clone();
    dry.insert(0, "--dry-run");
    slurm::run(SlurmCommand::Eval(args(&dry))).unwrap();
    let script = s2.join("slurm/eval-3.sbatch");
    let text = std::fs::read_to_string(&script).unwrap();
    assert_eq!(text, slurm::sbatch_script(&args(&full)).unwrap());
    assert!(text.contains("#SBATCH --array=0-2\n"), "{text}");
    assert!(s2.join("slurm/logs").is_dir());
    let calls = s2.join("slurm/fake-sbatch-calls.txt");
    assert!(!calls.exists(), "dry run called sbatch");

    // Submit: every task runs, the study is complete and equals the plain one.
    slurm::run(SlurmCommand::Eval(args(&full))).unwrap();
    assert_eq!(std::fs::read_to_string(&calls).unwrap().trim(), format!("--parsable {}", script.display()));
    assert_eq!(parts(&s2).len(), 9, "{:?}", parts(&s2));
    for i in 0..3 {
        assert!(s2.join(format!("slurm/logs/task-{i}.out")).exists());
    }
    assert!(status_ok(&s2));
    assert!(audit_csv(&s2) == want, "sharded study differs from the plain one");

    // A lost task: status says incomplete; `--array 1` re-runs task 1 alone.
    let lost = parts(&s2).into_iter().find(|p| p.ends_with("part-1-of-3.parquet")).unwrap();
    std::fs::remove_file(&lost).unwrap();
    assert!(!status_ok(&s2));
    let mut again = full.clone();
    again.splice(0..0, ["--array", "1"]);
    slurm::run(SlurmCommand::Eval(args(&again))).unwrap();
    let last = std::fs::read_to_string(&calls).unwrap().lines().last().unwrap().to_string();
    assert_eq!(last, format!("--parsable --array=1 {}", script.display()));
    assert!(std::fs::read_to_string(&script).unwrap().contains("#SBATCH --array=1\n"));
    assert!(lost.exists());
    assert!(status_ok(&s2));
    assert!(audit_csv(&s2) == want, "study differs after re-submitting task 1");

    // sbatch failing: its stderr is in the error.
    write_exe(&bin.join("sbatch"), "#!/bin/sh\necho 'sbatch: error: Batch job submission failed: Invalid partition name specified' >&2\nexit 1\n");
    let e = slurm::run(SlurmCommand::Eval(args(&full))).unwrap_err().to_string();
    assert!(e.contains("Invalid partition name"), "{e}");

    // No sbatch on PATH: a clear error (the script is still written).
    std::env::set_var("PATH", tmp.path().join("empty"));
    let e = slurm::run(SlurmCommand::Eval(args(&full))).unwrap_err().to_string();
    std::env::set_var("PATH", &old_path);
    assert!(e.contains("sbatch not found on PATH"), "{e}");
}
