//! The run folder of `rho train --out DIR`: one run at a time, and a run in it is never
//! overwritten by accident.
//!
//! - The run lock `<out>/.rho-run-lock` ([`crate::lock`]) is held for the life of the run: a
//!   second `rho train` into the folder refuses at once, naming the holder.
//! - A folder that holds a run (a `step-N` checkpoint with `trainer_state.json`, `metrics.jsonl`,
//!   probe masks `masks/step-N.parquet`) is refused unless the run is continued (`--resume`) or
//!   started over (`--force`: what it replaces is said, and removed before the first step, so that
//!   no checkpoint or metrics line of the old run stays beside the new one). Nothing else in the
//!   folder is touched.

use super::checkpoint::TRAINER_STATE;
use crate::error::{Error, Result, WithPath};
use crate::lock::{Lock, Try};
use std::path::{Path, PathBuf};

pub const METRICS: &str = "metrics.jsonl";
pub const MASKS: &str = "masks";

/// What a folder holds of a run.
#[derive(Debug, Clone, PartialEq)]
pub struct ExistingRun {
    /// `step-N` folders with a trainer state, by step.
    pub checkpoints: Vec<(u64, PathBuf)>,
    /// Lines of `metrics.jsonl`, when there is one.
    pub metrics_lines: Option<usize>,
    /// Probe masks `masks/step-N.parquet`.
    pub masks: Vec<PathBuf>,
}

fn step_of(name: &str, suffix: &str) -> Option<u64> {
    name.strip_prefix("step-")?.strip_suffix(suffix)?.parse().ok()
}

/// Lines of a file (a last line without its newline counted), streamed.
fn count_lines(path: &Path) -> Result<usize> {
    use std::io::Read;
    let mut f = std::fs::File::open(path).with_path(path)?;
    let mut buf = vec![0u8; 1 << 16];
    let (mut n, mut last) = (0, b'\n');
    loop {
        let k = f.read(&mut buf).with_path(path)?;
        if k == 0 {
            break;
        }
        n += buf[..k].iter().filter(|&&b| b == b'\n').count();
        last = buf[k - 1];
    }
    Ok(n + usize::from(last != b'\n'))
}

impl ExistingRun {
    /// The run in `out`, if any.
    pub fn scan(out: &Path) -> Result<Option<ExistingRun>> {
        let Ok(rd) = std::fs::read_dir(out) else { return Ok(None) };
        let mut checkpoints = Vec::new();
        for e in rd.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if let Some(n) = step_of(&name, "") {
                let p = e.path();
                if p.is_dir() && p.join(TRAINER_STATE).is_file() {
                    checkpoints.push((n, p));
                }
            }
        }
        checkpoints.sort();
        let m = out.join(METRICS);
        let metrics_lines = match std::fs::symlink_metadata(&m) {
            Ok(md) if md.is_file() => Some(count_lines(&m)?),
            _ => None,
        };
        let mut masks: Vec<PathBuf> = match std::fs::read_dir(out.join(MASKS)) {
            Ok(rd) => rd
                .flatten()
                .filter(|e| step_of(&e.file_name().to_string_lossy(), ".parquet").is_some() && e.path().is_file())
                .map(|e| e.path())
                .collect(),
            Err(_) => Vec::new(),
        };
        masks.sort();
        let found = !checkpoints.is_empty() || metrics_lines.is_some() || !masks.is_empty();
        Ok(found.then_some(ExistingRun { checkpoints, metrics_lines, masks }))
    }

    /// `3 checkpoints up to step-40, metrics.jsonl with 40 lines, 2 probe masks`
    pub fn describe(&self) -> String {
        let mut parts = Vec::new();
        match self.checkpoints.as_slice() {
            [] => {}
            [(n, _)] => parts.push(format!("1 checkpoint at step-{n}")),
            [.., (n, _)] => parts.push(format!("{} checkpoints up to step-{n}", self.checkpoints.len())),
        }
        if let Some(l) = self.metrics_lines {
            parts.push(format!("{METRICS} with {l} line{}", if l == 1 { "" } else { "s" }));
        }
        if !self.masks.is_empty() {
            parts.push(format!("{} probe mask{}", self.masks.len(), if self.masks.len() == 1 { "" } else { "s" }));
        }
        parts.join(", ")
    }

    /// Remove the run's entries (and `masks/` when that leaves it empty).
    fn remove(&self, out: &Path) -> Result<()> {
        for (_, p) in &self.checkpoints {
            std::fs::remove_dir_all(p).with_path(p)?;
        }
        if self.metrics_lines.is_some() {
            let m = out.join(METRICS);
            std::fs::remove_file(&m).with_path(&m)?;
        }
        for p in &self.masks {
            std::fs::remove_file(p).with_path(p)?;
        }
        let _ = std::fs::remove_dir(out.join(MASKS)); // only when empty
        Ok(())
    }
}

/// A run folder taken by this process (its run lock held until dropped).
#[derive(Debug)]
pub struct RunDir {
    out: PathBuf,
    _lock: Lock,
    /// The run it holds, to be replaced (`force`).
    replace: Option<ExistingRun>,
    /// `out` did not exist: a run refused before it started leaves no folder behind.
    created: bool,
    /// The run started ([`RunDir::start_over`]): the folder is the run's.
    started: bool,
}

impl RunDir {
    /// Take `out` for a run: created where missing, its run lock taken (refused at once when
    /// another process holds it), and refused when it holds a run, unless `resume` (the run goes
    /// on) or `force` (the run is replaced: [`RunDir::start_over`]).
    pub fn open(out: &Path, resume: bool, force: bool) -> Result<RunDir> {
        let created = !out.exists();
        std::fs::create_dir_all(out).with_path(out)?;
        let lock = match Lock::try_take(&out.join(crate::lock::RUN_LOCK), false)? {
            Try::Taken(l) => l,
            Try::Busy(h) => {
                return Err(Error::file(
                    out,
                    format!(
                        "another rho train is writing this run folder: {}; wait for it to end, or choose another --out",
                        crate::lock::describe(h.as_ref())
                    ),
                ))
            }
        };
        let existing = if resume { None } else { ExistingRun::scan(out)? };
        if let (Some(run), false) = (&existing, force) {
            return Err(Error::flag(
                "--out",
                format!(
                    "{} holds a run ({}): continue it with --resume {}, start it over with --force (replaces it), or choose another --out",
                    out.display(),
                    run.describe(),
                    out.display()
                ),
            ));
        }
        Ok(RunDir { out: out.to_path_buf(), _lock: lock, replace: existing, created, started: false })
    }

    /// The run starts: with `force`, remove the run the folder held, saying so (unless `quiet`).
    pub fn start_over(&mut self, quiet: bool) -> Result<()> {
        self.started = true;
        if let Some(run) = self.replace.take() {
            if !quiet {
                eprintln!("rho train: replaces the run in {}: {}", self.out.display(), run.describe());
            }
            run.remove(&self.out)?;
        }
        Ok(())
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        // refused before it started (a bad flag found after the lock was taken): the folder this
        // process created holds only the run lock; it goes (the lock's file is unlinked while
        // still held, then the folder only if empty)
        if self.created && !self.started {
            let _ = std::fs::remove_file(self.out.join(crate::lock::RUN_LOCK));
            let _ = std::fs::remove_dir(&self.out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_run_is_described_and_only_its_entries_are_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path();
        assert_eq!(ExistingRun::scan(out).unwrap(), None);
        for s in [20, 40, 3] {
            std::fs::create_dir_all(out.join(format!("step-{s}"))).unwrap();
            std::fs::write(out.join(format!("step-{s}")).join(TRAINER_STATE), b"{}").unwrap();
        }
        std::fs::create_dir_all(out.join("step-0")).unwrap(); // a copied model, no trainer state: not the run's
        std::fs::create_dir_all(out.join("masks")).unwrap();
        std::fs::write(out.join("masks/step-20.parquet"), b"x").unwrap();
        std::fs::write(out.join("masks/notes.txt"), b"mine").unwrap();
        std::fs::write(out.join(METRICS), b"{}\n{}\n").unwrap();
        std::fs::write(out.join("README"), b"mine").unwrap();
        let run = ExistingRun::scan(out).unwrap().unwrap();
        assert_eq!(run.describe(), "3 checkpoints up to step-40, metrics.jsonl with 2 lines, 1 probe mask");
        let e = RunDir::open(out, false, false).unwrap_err().to_string();
        assert!(e.starts_with("--out: ") && e.contains("holds a run (3 checkpoints up to step-40") && e.contains("--resume") && e.contains("--force"), "{e}");
        assert!(RunDir::open(out, true, false).is_ok(), "--resume goes on");
        let mut d = RunDir::open(out, false, true).unwrap();
        d.start_over(true).unwrap();
        let mut left: Vec<String> = walk(out);
        left.sort();
        assert_eq!(left, [".rho-run-lock", "README", "masks", "masks/notes.txt", "step-0"]);
        assert_eq!(ExistingRun::scan(out).unwrap(), None);
    }

    fn walk(d: &Path) -> Vec<String> {
        let mut v = Vec::new();
        for e in std::fs::read_dir(d).unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() && n == "masks" {
                v.extend(walk(&e.path()).into_iter().map(|x| format!("{n}/{x}")));
            }
            v.push(n);
        }
        v
    }

    #[test]
    fn a_second_run_into_the_folder_is_refused_naming_the_first() {
        let dir = tempfile::tempdir().unwrap();
        let _first = RunDir::open(dir.path(), false, false).unwrap();
        let e = RunDir::open(dir.path(), false, true).unwrap_err().to_string();
        assert!(e.contains("another rho train is writing this run folder: pid ") && e.contains(&std::process::id().to_string()), "{e}");
    }

    #[test]
    fn a_folder_created_for_a_run_refused_before_it_started_is_removed() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("new-run");
        drop(RunDir::open(&out, false, false).unwrap());
        assert!(!out.exists(), "nothing left of a run that never started");
        let mut d = RunDir::open(&out, false, false).unwrap();
        d.start_over(true).unwrap();
        drop(d);
        assert!(out.is_dir(), "a started run keeps its folder");
        // a folder that existed before is never removed
        drop(RunDir::open(&out, false, false).unwrap());
        assert!(out.is_dir());
    }
}
