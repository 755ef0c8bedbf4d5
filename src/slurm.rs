//! `rho slurm eval`: sharded evaluation as a Slurm job array.
//!
//! One array task per shard: task `I` of `N` runs
//! `rho eval <eval args> --study STUDY --shard I/N`, which scores a deterministic
//! slice of the documents at every checkpoint and writes
//! `STUDY/losses/checkpoint=<name>/part-<I>-of-<N>.parquet`. `rho status --study STUDY`
//! then lists the parts done and missing; a failed task is re-submitted alone with
//! `--array I`.
//!
//! [`sbatch_script`] is a pure function of the arguments (plus the current folder,
//! to make paths absolute); [`run`] writes the script to `STUDY/slurm/eval-<N>.sbatch`
//! and submits it with `sbatch --parsable`.

use crate::error::{Error, Result, WithPath};
use clap::{Args, Subcommand};
use std::path::{Path, PathBuf};
use std::process::Command;

#[derive(Debug, Subcommand)]
pub enum SlurmCommand {
    /// Sharded `rho eval` as a Slurm job array: one task per shard (`rho eval --shard I/N`).
    Eval(SlurmEvalArgs),
}

#[derive(Debug, Clone, Args)]
#[command(after_help = "Everything after `--` is passed to `rho eval`; `--study` and `--shard` are added per task.\n\
Example: rho slurm eval --shards 4 --study s --partition gpu --gpus-per-task 1 -- --checkpoints ckpts --data val.jsonl --device cuda:0 --dtype bf16")]
pub struct SlurmEvalArgs {
    /// Number of shards = array tasks (task I runs `rho eval --shard I/N`).
    #[arg(long, value_parser = clap::value_parser!(u32).range(1..=crate::eval::shard::MAX_SHARDS as i64))]
    pub shards: u32,
    /// Study folder, passed to every task's `rho eval --study`; the script and logs go to <study>/slurm/.
    #[arg(long)]
    pub study: PathBuf,
    /// Slurm partition (#SBATCH --partition).
    #[arg(long)]
    pub partition: Option<String>,
    /// GPUs per task (#SBATCH --gpus-per-task); default: no GPU request. Choose the device with the eval args (`-- --device cuda:0`).
    #[arg(long)]
    pub gpus_per_task: Option<u32>,
    /// CPUs per task (#SBATCH --cpus-per-task).
    #[arg(long)]
    pub cpus_per_task: Option<u32>,
    /// Memory per node (#SBATCH --mem), e.g. 16G.
    #[arg(long)]
    pub mem: Option<String>,
    /// Time limit per task (#SBATCH --time), e.g. 02:00:00.
    #[arg(long)]
    pub time: Option<String>,
    /// Job name (#SBATCH --job-name).
    #[arg(long, default_value = "rho-eval")]
    pub job_name: String,
    /// Only these task indices, e.g. `3` or `1,4-5` (to re-submit failed tasks alone); default: all, 0-(N-1).
    #[arg(long, value_name = "LIST")]
    pub array: Option<String>,
    /// An extra `#SBATCH` line, e.g. `--sbatch-arg=--account=proj` (may be given several times).
    #[arg(long = "sbatch-arg", value_name = "ARG", allow_hyphen_values = true)]
    pub sbatch_args: Vec<String>,
    /// The rho binary the tasks run [default: this executable].
    #[arg(long, value_name = "PATH")]
    pub rho: Option<PathBuf>,
    /// Write and print the script; submit nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Arguments for `rho eval` (after `--`), without --study and --shard.
    #[arg(last = true, value_name = "EVAL ARGS")]
    pub eval_args: Vec<String>,
}

/// Quote one word for bash: bare when it holds only safe characters, otherwise in
/// single quotes, with each embedded `'` written as `'\''`.
pub fn shell_quote(s: &str) -> String {
    let safe = !s.is_empty()
        && s.bytes().all(|b| b.is_ascii_alphanumeric() || b"-_./=:,+@%".contains(&b));
    if safe {
        s.to_string()
    } else {
        format!("'{}'", s.replace('\'', r"'\''"))
    }
}

/// The eval flags every task sets itself; they must not appear in the forwarded eval args.
const RESERVED: [&str; 2] = ["--study", "--shard"];

fn check_eval_args(args: &[String]) -> Result<()> {
    for a in args {
        let name = a.split('=').next().unwrap_or(a);
        if RESERVED.contains(&name) {
            return Err(Error::flag(
                name,
                format!("do not pass {name} after `--`: `rho slurm eval` sets it for every task (use --study DIR / --shards N before `--`)"),
            ));
        }
        if name == "--devices" {
            return Err(Error::flag(
                "--devices",
                "not with `rho slurm eval`: each array task evaluates one shard on one device (request GPUs with --gpus-per-task, pick one with `-- --device cuda:0`)",
            ));
        }
        if a == "--" {
            return Err(Error::flag("eval args (after --)", "a second `--`"));
        }
    }
    Ok(())
}

/// Parse and check an `--array` list against the number of shards: comma-separated
/// `I`, `A-B` or `A-B:STEP`, with an optional `%K` throttle at the end (as sbatch takes it).
/// Returns the task indices it selects, sorted.
pub fn parse_array(list: &str, shards: u32) -> Result<Vec<u32>> {
    let bad = |msg: String| Error::flag("--array", msg);
    let (body, throttle) = match list.split_once('%') {
        Some((b, t)) => (b, Some(t)),
        None => (list, None),
    };
    if let Some(t) = throttle {
        match t.parse::<u32>() {
            Ok(k) if k >= 1 => {}
            _ => return Err(bad(format!("{list:?}: the throttle after % must be a positive integer"))),
        }
    }
    let num = |s: &str| -> Result<u32> {
        s.trim()
            .parse::<u32>()
            .map_err(|_| bad(format!("{list:?}: {s:?} is not a task index (expected e.g. `3` or `1,4-5`)")))
    };
    let mut out = Vec::new();
    for part in body.split(',') {
        if part.trim().is_empty() {
            return Err(bad(format!("{list:?}: empty item (expected e.g. `3` or `1,4-5`)")));
        }
        let (range, step) = match part.split_once(':') {
            Some((r, s)) => (r, num(s)?),
            None => (part, 1),
        };
        if step == 0 {
            return Err(bad(format!("{list:?}: step 0")));
        }
        let (a, b) = match range.split_once('-') {
            Some((a, b)) => (num(a)?, num(b)?),
            None => {
                if part.contains(':') {
                    return Err(bad(format!("{list:?}: a step needs a range, e.g. 0-7:2")));
                }
                let i = num(range)?;
                (i, i)
            }
        };
        if a > b {
            return Err(bad(format!("{list:?}: range {a}-{b} runs backwards")));
        }
        if b >= shards {
            return Err(bad(format!(
                "{list:?}: task index {b} is out of range: with --shards {shards} the indices are 0-{}",
                shards - 1
            )));
        }
        out.extend((a..=b).step_by(step as usize));
    }
    out.sort_unstable();
    out.dedup();
    Ok(out)
}

/// The value of an `#SBATCH --opt=VALUE` line. sbatch splits these lines at
/// whitespace and honours double quotes, so a value with spaces is double-quoted;
/// characters it cannot carry (newline, `"`, `\`) are refused.
fn directive_value(flag: &str, v: &str) -> Result<String> {
    if v.is_empty() {
        return Err(Error::flag(flag, "empty value"));
    }
    if v.contains(['\n', '\r', '"', '\\']) {
        return Err(Error::flag(flag, format!("{v:?}: an #SBATCH line cannot carry a newline, `\"` or `\\`")));
    }
    Ok(if v.contains(char::is_whitespace) { format!("\"{v}\"") } else { v.to_string() })
}

fn absolute(flag: &str, p: &Path) -> Result<PathBuf> {
    let abs = std::path::absolute(p).map_err(|e| Error::flag(flag, format!("{}: {e}", p.display())))?;
    // Drop `.` components and trailing slashes; keep `..` (the target may be a link).
    Ok(abs.components().collect())
}

fn path_str<'a>(flag: &str, p: &'a Path) -> Result<&'a str> {
    p.to_str().ok_or_else(|| Error::flag(flag, format!("{}: not valid UTF-8", p.display())))
}

/// The study folder as an absolute path.
pub fn study_dir(a: &SlurmEvalArgs) -> Result<PathBuf> {
    absolute("--study", &a.study)
}

/// Where [`run`] writes the script: `<study>/slurm/eval-<N>.sbatch`.
pub fn script_path(a: &SlurmEvalArgs) -> Result<PathBuf> {
    Ok(study_dir(a)?.join("slurm").join(format!("eval-{}.sbatch", a.shards)))
}

/// The rho binary the tasks run, absolute: `--rho`, or this executable.
pub fn rho_binary(a: &SlurmEvalArgs) -> Result<PathBuf> {
    match &a.rho {
        Some(p) => absolute("--rho", p),
        None => {
            let exe = std::env::current_exe()
                .map_err(|e| Error::flag("--rho", format!("cannot find this executable ({e}); give --rho PATH")))?;
            Ok(std::fs::canonicalize(&exe).unwrap_or(exe))
        }
    }
}

/// The `--array` value: the `--array` list, or `0-(N-1)`.
pub fn array_spec(a: &SlurmEvalArgs) -> Result<String> {
    match &a.array {
        Some(list) => {
            parse_array(list, a.shards)?;
            Ok(list.split_whitespace().collect())
        }
        None if a.shards == 1 => Ok("0".to_string()),
        None => Ok(format!("0-{}", a.shards - 1)),
    }
}

/// The sbatch script for a sharded eval: one array task per shard; task `I` runs
/// `rho eval <eval args> --study <study> --shard I/N` from the folder `rho slurm eval`
/// ran in (so relative paths in the eval args mean the same). Pure but for reading the
/// current folder and, without `--rho`, this executable's path.
pub fn sbatch_script(a: &SlurmEvalArgs) -> Result<String> {
    check_eval_args(&a.eval_args)?;
    let study = study_dir(a)?;
    let study_s = path_str("--study", &study)?;
    let rho = rho_binary(a)?;
    let rho_s = path_str("--rho", &rho)?;
    let cwd = std::env::current_dir().map_err(|e| Error::msg(format!("cannot read the current folder: {e}")))?;
    let cwd_s = path_str("--study", &cwd)?;
    let array = array_spec(a)?;

    let mut s = String::from("#!/bin/bash\n");
    s.push_str("# Written by `rho slurm eval`: one array task per shard of a sharded `rho eval`.\n");
    s.push_str(&format!("# Study: {study_s}; check progress with `rho status --study {}`.\n", shell_quote(study_s)));
    let mut directive = |flag: &str, v: &str| -> Result<()> {
        s.push_str(&format!("#SBATCH {flag}={}\n", directive_value(flag, v)?));
        Ok(())
    };
    directive("--job-name", &a.job_name)?;
    directive("--array", &array)?;
    // `%` starts a filename pattern in --output (`%A`, `%a`, `%x`); a literal one is `%%`.
    let logs = format!("{}/slurm/logs/%x-%A_%a.out", study_s.replace('%', "%%"));
    directive("--output", &logs)?;
    directive("--ntasks", "1")?;
    if let Some(p) = &a.partition {
        directive("--partition", p)?;
    }
    if let Some(g) = a.gpus_per_task {
        directive("--gpus-per-task", &g.to_string())?;
    }
    if let Some(c) = a.cpus_per_task {
        directive("--cpus-per-task", &c.to_string())?;
    }
    if let Some(m) = &a.mem {
        directive("--mem", m)?;
    }
    if let Some(t) = &a.time {
        directive("--time", t)?;
    }
    for extra in &a.sbatch_args {
        if extra.contains(['\n', '\r']) || extra.trim().is_empty() {
            return Err(Error::flag("--sbatch-arg", format!("{extra:?}: one non-empty #SBATCH argument per --sbatch-arg, no newlines")));
        }
        s.push_str(&format!("#SBATCH {}\n", extra.trim()));
    }
    s.push_str("set -euo pipefail\n");
    s.push_str(": \"${SLURM_ARRAY_TASK_ID:?not set: submit this script with sbatch (one array task per shard)}\"\n");
    s.push_str(&format!(
        "echo \"rho slurm eval: shard ${{SLURM_ARRAY_TASK_ID}}/{} of job ${{SLURM_ARRAY_JOB_ID:-?}} on $(hostname)\" >&2\n",
        a.shards
    ));
    s.push_str(&format!("cd {}\n", shell_quote(cwd_s)));
    let mut cmd = vec![shell_quote(rho_s), "eval".to_string()];
    cmd.extend(a.eval_args.iter().map(|x| shell_quote(x)));
    cmd.push("--study".to_string());
    cmd.push(shell_quote(study_s));
    cmd.push("--shard".to_string());
    cmd.push(format!("\"${{SLURM_ARRAY_TASK_ID}}/{}\"", a.shards));
    s.push_str(&format!("exec {}\n", cmd.join(" ")));
    Ok(s)
}

/// The command that re-submits some tasks of the same job: these arguments with `--array LIST`.
pub fn resubmit_command(a: &SlurmEvalArgs, list: &str) -> String {
    let mut w: Vec<String> = vec!["rho".into(), "slurm".into(), "eval".into()];
    let mut opts: Vec<(&str, String)> = vec![("--shards", a.shards.to_string()), ("--study", a.study.display().to_string())];
    if let Some(p) = &a.partition {
        opts.push(("--partition", p.clone()));
    }
    if let Some(g) = a.gpus_per_task {
        opts.push(("--gpus-per-task", g.to_string()));
    }
    if let Some(c) = a.cpus_per_task {
        opts.push(("--cpus-per-task", c.to_string()));
    }
    if let Some(m) = &a.mem {
        opts.push(("--mem", m.clone()));
    }
    if let Some(t) = &a.time {
        opts.push(("--time", t.clone()));
    }
    if a.job_name != "rho-eval" {
        opts.push(("--job-name", a.job_name.clone()));
    }
    for (k, v) in opts {
        w.push(k.to_string());
        w.push(shell_quote(&v));
    }
    for x in &a.sbatch_args {
        w.push(shell_quote(&format!("--sbatch-arg={x}")));
    }
    if let Some(r) = &a.rho {
        w.push("--rho".into());
        w.push(shell_quote(&r.display().to_string()));
    }
    w.push("--array".into());
    w.push(shell_quote(list));
    w.push("--".into());
    w.extend(a.eval_args.iter().map(|x| shell_quote(x)));
    w.join(" ")
}

/// Check the eval args against this binary's own `rho eval` before submitting N tasks
/// that would all fail on a typo. Only when the tasks run this executable (no `--rho`).
fn validate_with_own_cli(a: &SlurmEvalArgs) -> Result<()> {
    use clap::Parser;
    let mut argv: Vec<String> = vec!["rho".into(), "eval".into()];
    argv.extend(a.eval_args.iter().cloned());
    argv.extend(["--study".into(), a.study.display().to_string(), "--shard".into(), format!("0/{}", a.shards)]);
    match crate::cli::Cli::try_parse_from(&argv) {
        Ok(cli) => {
            // A folder of checkpoints that cannot be put in training order would fail every task:
            // refused here, when the folders are visible from this node.
            if let crate::cli::Command::Eval(e) = cli.command {
                if !e.checkpoints.is_empty() && e.checkpoints.iter().all(|p| p.exists()) {
                    crate::eval::resolve_checkpoints(&e.checkpoints)?;
                }
            }
            Ok(())
        }
        Err(e) => {
            // clap's message without the usage block: "unexpected argument '--x' found; tip: ...".
            let text = e.to_string();
            let msg: Vec<&str> = text
                .lines()
                .map(str::trim)
                .take_while(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
                .filter(|l| !l.is_empty())
                .collect();
            let msg = msg.join(" ");
            let msg = msg.strip_prefix("error: ").unwrap_or(&msg);
            Err(Error::flag("eval args (after --)", format!("not valid for `rho eval`: {msg}")))
        }
    }
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(name)).find(|p| p.is_file())
}

/// `rho slurm ...`.
pub fn run(cmd: SlurmCommand) -> Result<()> {
    match cmd {
        SlurmCommand::Eval(a) => run_eval(&a),
    }
}

fn run_eval(a: &SlurmEvalArgs) -> Result<()> {
    let script = sbatch_script(a)?;
    if a.rho.is_none() {
        validate_with_own_cli(a)?;
    }
    let path = script_path(a)?;
    let logs = path.parent().expect("script has a parent").join("logs");
    std::fs::create_dir_all(&logs).with_path(&logs)?;
    crate::util::write_bytes_atomic(&path, script.as_bytes())?;
    let study = study_dir(a)?;
    let study_q = shell_quote(&study.display().to_string());

    if a.dry_run {
        print!("{script}");
        eprintln!("wrote {} (dry run: nothing submitted; submit it with `sbatch {}`)", path.display(), shell_quote(&path.display().to_string()));
        return Ok(());
    }

    let sbatch = find_on_path("sbatch").ok_or_else(|| {
        Error::msg(format!(
            "sbatch not found on PATH: is this a Slurm login node? The script is written to {}; use --dry-run to only write it",
            path.display()
        ))
    })?;
    let mut c = Command::new(&sbatch);
    c.arg("--parsable");
    if a.array.is_some() {
        c.arg(format!("--array={}", array_spec(a)?));
    }
    c.arg(&path);
    let out = c.output().map_err(|e| Error::msg(format!("cannot run {}: {e}", sbatch.display())))?;
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    if !out.status.success() {
        return Err(Error::msg(format!(
            "sbatch {} failed ({}): {}",
            path.display(),
            out.status,
            stderr.trim()
        )));
    }
    // `--parsable` prints `jobid` or `jobid;cluster`.
    let id = stdout.trim().split(';').next().unwrap_or("").trim().to_string();
    if id.is_empty() {
        return Err(Error::msg(format!("sbatch printed no job id (stdout {:?}, stderr {:?})", stdout.trim(), stderr.trim())));
    }
    let array = array_spec(a)?;
    let n_tasks = parse_array(&array, a.shards).map(|v| v.len()).unwrap_or(a.shards as usize);
    println!("{id}");
    eprintln!("submitted job array {id}: {n_tasks} task(s) ({array}) of {} shard(s), script {}", a.shards, path.display());
    eprintln!("  watch:     squeue -j {id}");
    eprintln!("  progress:  rho status --study {study_q}");
    eprintln!("  logs:      {}/slurm/logs/{}-{id}_<task>.out", study.display(), a.job_name);
    eprintln!("  re-submit failed tasks alone (I: a task index, or a list like 1,4-5):");
    eprintln!("    {}", resubmit_command(a, "I"));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Debug, Parser)]
    struct T {
        #[command(subcommand)]
        cmd: SlurmCommand,
    }

    fn parse(args: &[&str]) -> SlurmEvalArgs {
        let mut v = vec!["rho", "eval"];
        v.extend_from_slice(args);
        match T::try_parse_from(v).unwrap().cmd {
            SlurmCommand::Eval(a) => a,
        }
    }

    fn try_parse(args: &[&str]) -> std::result::Result<SlurmEvalArgs, clap::Error> {
        let mut v = vec!["rho", "eval"];
        v.extend_from_slice(args);
        T::try_parse_from(v).map(|t| match t.cmd {
            SlurmCommand::Eval(a) => a,
        })
    }

    #[test]
    fn quote() {
        assert_eq!(shell_quote("abc/d-e_f.g=1"), "abc/d-e_f.g=1");
        assert_eq!(shell_quote(""), "''");
        assert_eq!(shell_quote("a b"), "'a b'");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
        assert_eq!(shell_quote("$HOME"), "'$HOME'");
        assert_eq!(shell_quote("a\nb"), "'a\nb'");
    }

    #[test]
    fn quoting_round_trips_through_bash() {
        // When bash is here, check that the quoted words come back unchanged.
        let words = ["plain", "with space", "it's", "\"dq\"", "$HOME `x` \\ *", "", "tab\there", "new\nline", "'"];
        let script = format!("printf '%s\\0' {}", words.iter().map(|w| shell_quote(w)).collect::<Vec<_>>().join(" "));
        let Ok(out) = Command::new("bash").arg("-c").arg(&script).output() else { return };
        let got: Vec<String> = String::from_utf8(out.stdout).unwrap().split_terminator('\0').map(String::from).collect();
        assert_eq!(got, words);
    }

    #[test]
    fn script_contents() {
        let a = parse(&[
            "--shards", "4", "--study", "/data/my study", "--rho", "/opt/rho/bin/rho",
            "--partition", "gpu", "--gpus-per-task", "1", "--cpus-per-task", "8", "--mem", "32G", "--time", "02:00:00",
            "--sbatch-arg=--account=proj", "--sbatch-arg", "--qos=low",
            "--", "--checkpoints", "/ck", "--data", "/d/it's a file.jsonl", "--dtype", "bf16",
        ]);
        let s = sbatch_script(&a).unwrap();
        let lines: Vec<&str> = s.lines().collect();
        assert_eq!(lines[0], "#!/bin/bash");
        for want in [
            "#SBATCH --job-name=rho-eval",
            "#SBATCH --array=0-3",
            "#SBATCH --output=\"/data/my study/slurm/logs/%x-%A_%a.out\"",
            "#SBATCH --ntasks=1",
            "#SBATCH --partition=gpu",
            "#SBATCH --gpus-per-task=1",
            "#SBATCH --cpus-per-task=8",
            "#SBATCH --mem=32G",
            "#SBATCH --time=02:00:00",
            "#SBATCH --account=proj",
            "#SBATCH --qos=low",
            "set -euo pipefail",
        ] {
            assert!(lines.contains(&want), "missing {want:?} in\n{s}");
        }
        let exec = *lines.last().unwrap();
        assert_eq!(
            exec,
            r#"exec /opt/rho/bin/rho eval --checkpoints /ck --data '/d/it'\''s a file.jsonl' --dtype bf16 --study '/data/my study' --shard "${SLURM_ARRAY_TASK_ID}/4""#
        );
        // All #SBATCH lines come before the first command (sbatch stops reading them there).
        let first_cmd = lines.iter().position(|l| !l.starts_with('#')).unwrap();
        assert!(lines[first_cmd..].iter().all(|l| !l.starts_with("#SBATCH")));
        // The script changes to the submission folder, so relative eval paths keep their meaning.
        let cwd = std::env::current_dir().unwrap();
        assert!(lines.contains(&format!("cd {}", shell_quote(cwd.to_str().unwrap())).as_str()), "{s}");
    }

    #[test]
    fn script_runs_under_bash() {
        // The script with a fake rho that prints its arguments, one per line (NUL-separated).
        use std::os::unix::fs::PermissionsExt;
        let tmp = tempfile::tempdir().unwrap();
        let fake = tmp.path().join("fake rho");
        std::fs::write(&fake, "#!/bin/bash\nprintf '%s\\0' \"$@\"\n").unwrap();
        std::fs::set_permissions(&fake, std::fs::Permissions::from_mode(0o755)).unwrap();
        let study = tmp.path().join("it's a study");
        let a = parse(&[
            "--shards", "4", "--study", study.to_str().unwrap(), "--rho", fake.to_str().unwrap(),
            "--", "--data", "a b'c\"d $HOME", "--dtype", "bf16",
        ]);
        let script = tmp.path().join("s.sbatch");
        std::fs::write(&script, sbatch_script(&a).unwrap()).unwrap();
        let Ok(out) = Command::new("bash").arg(&script).env("SLURM_ARRAY_TASK_ID", "2").output() else { return };
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let got: Vec<String> = String::from_utf8(out.stdout).unwrap().split_terminator('\0').map(String::from).collect();
        let study = study.to_str().unwrap();
        assert_eq!(got, ["eval", "--data", "a b'c\"d $HOME", "--dtype", "bf16", "--study", study, "--shard", "2/4"]);
        assert!(String::from_utf8_lossy(&out.stderr).contains("shard 2/4"));
        // Outside an array job: a clear failure, rho not run.
        let out = Command::new("bash").arg(&script).env_remove("SLURM_ARRAY_TASK_ID").output().unwrap();
        assert!(!out.status.success() && out.stdout.is_empty());
        assert!(String::from_utf8_lossy(&out.stderr).contains("submit this script with sbatch"));
    }

    #[test]
    fn defaults_and_relative_study() {
        let a = parse(&["--shards", "1", "--study", "rel/study", "--rho", "bin/rho", "--", "--data", "x"]);
        let s = sbatch_script(&a).unwrap();
        let cwd = std::env::current_dir().unwrap();
        assert!(s.contains("#SBATCH --array=0\n"), "{s}");
        assert!(!s.contains("--partition") && !s.contains("--gpus-per-task") && !s.contains("--mem"), "{s}");
        let study = cwd.join("rel/study");
        assert!(s.contains(&format!("--study {}", shell_quote(study.to_str().unwrap()))), "{s}");
        assert!(s.contains(&format!("exec {} eval", shell_quote(cwd.join("bin/rho").to_str().unwrap()))), "{s}");
        assert_eq!(script_path(&a).unwrap(), study.join("slurm/eval-1.sbatch"));
        // Without --rho: this executable, absolute.
        let a = parse(&["--shards", "2", "--study", "/s"]);
        let s = sbatch_script(&a).unwrap();
        let exec = s.lines().last().unwrap();
        assert!(exec.starts_with("exec /") || exec.starts_with("exec '/"), "{exec}");
        assert!(exec.ends_with(r#"eval --study /s --shard "${SLURM_ARRAY_TASK_ID}/2""#), "{exec}");
    }

    #[test]
    fn array_override() {
        let a = parse(&["--shards", "6", "--study", "/s", "--rho", "/r", "--array", "1,4-5", "--", "--data", "x"]);
        let s = sbatch_script(&a).unwrap();
        assert!(s.contains("#SBATCH --array=1,4-5\n"), "{s}");
        assert!(!s.contains("0-5"), "{s}");
        assert!(s.contains(r#"--shard "${SLURM_ARRAY_TASK_ID}/6""#), "{s}");
        assert_eq!(parse_array("1,4-5", 6).unwrap(), vec![1, 4, 5]);
        assert_eq!(parse_array("3", 4).unwrap(), vec![3]);
        assert_eq!(parse_array("0-7:2%2", 8).unwrap(), vec![0, 2, 4, 6]);
        let r = resubmit_command(&a, "3");
        assert_eq!(r, "rho slurm eval --shards 6 --study /s --rho /r --array 3 -- --data x");
    }

    #[test]
    fn invalid_array_index() {
        for (list, frag) in [("4", "out of range"), ("1,2-9", "out of range"), ("x", "not a task index"), ("3-1", "backwards"), ("", "empty"), ("1,,2", "empty"), ("0-3%0", "throttle")] {
            let a = parse(&["--shards", "4", "--study", "/s", "--rho", "/r", "--array", list]);
            let e = sbatch_script(&a).unwrap_err();
            assert!(matches!(&e, Error::Flag { flag, .. } if flag == "--array"), "{list:?}: {e}");
            assert!(e.to_string().contains(frag), "{list:?}: {e}");
        }
    }

    #[test]
    fn rejects_study_and_shard_in_eval_args() {
        for (args, flag) in [
            (vec!["--data", "x", "--shard", "0/2"], "--shard"),
            (vec!["--shard=1/2"], "--shard"),
            (vec!["--study", "/other"], "--study"),
            (vec!["--data", "x", "--study=/other"], "--study"),
            (vec!["--devices", "cuda:0,cuda:1"], "--devices"),
        ] {
            let mut v = vec!["--shards", "2", "--study", "/s", "--rho", "/r", "--"];
            v.extend(args);
            let a = parse(&v);
            let e = sbatch_script(&a).unwrap_err();
            assert!(matches!(&e, Error::Flag { flag: f, .. } if f == flag), "{e}");
            assert!(e.to_string().contains(flag), "{e}");
        }
        // A value that merely looks similar is fine.
        let a = parse(&["--shards", "2", "--study", "/s", "--rho", "/r", "--", "--data", "--studyish"]);
        sbatch_script(&a).unwrap();
    }

    #[test]
    fn a_folder_that_cannot_be_ordered_is_refused_before_submission() {
        let dir = tempfile::tempdir().unwrap();
        let series = dir.path().join("series");
        for name in ["checkpoint-500", "final"] {
            std::fs::create_dir_all(series.join(name)).unwrap();
            std::fs::write(series.join(name).join("config.json"), "{}").unwrap();
        }
        let study = dir.path().join("study");
        let (sr, st) = (series.to_str().unwrap(), study.to_str().unwrap());
        let a = parse(&["--shards", "2", "--study", st, "--dry-run", "--", "--checkpoints", sr, "--data", "x.jsonl"]);
        let e = run(SlurmCommand::Eval(a)).unwrap_err().to_string();
        assert!(e.contains("final") && e.contains("training order"), "{e}");
        assert!(!study.exists(), "nothing written");
        // the same folders given one by one are submitted
        let (f, c) = (series.join("final"), series.join("checkpoint-500"));
        let a = parse(&["--shards", "2", "--study", st, "--dry-run", "--", "--checkpoints", f.to_str().unwrap(), c.to_str().unwrap(), "--data", "x.jsonl"]);
        run(SlurmCommand::Eval(a)).unwrap();
    }

    #[test]
    fn clap_checks() {
        assert!(try_parse(&["--shards", "0", "--study", "/s"]).is_err());
        assert!(try_parse(&["--shards", "100001", "--study", "/s"]).is_err(), "at most MAX_SHARDS");
        assert!(try_parse(&["--shards", "100000", "--study", "/s"]).is_ok());
        assert!(try_parse(&["--study", "/s"]).is_err());
        assert!(try_parse(&["--shards", "2"]).is_err());
        // Eval args only after `--`.
        assert!(try_parse(&["--shards", "2", "--study", "/s", "--data", "x"]).is_err());
        let a = parse(&["--shards", "2", "--study", "/s", "--dry-run", "--", "--data", "x", "--pack"]);
        assert!(a.dry_run);
        assert_eq!(a.eval_args, ["--data", "x", "--pack"]);
    }

    #[test]
    fn bad_directive_values() {
        let a = parse(&["--shards", "2", "--study", "/s", "--rho", "/r", "--job-name", "a\"b"]);
        assert!(matches!(sbatch_script(&a).unwrap_err(), Error::Flag { flag, .. } if flag == "--job-name"));
        let a = parse(&["--shards", "2", "--study", "/s", "--rho", "/r", "--sbatch-arg", "--x\n--y"]);
        assert!(matches!(sbatch_script(&a).unwrap_err(), Error::Flag { flag, .. } if flag == "--sbatch-arg"));
        // `%` in the study path is doubled in --output (sbatch's literal %).
        let a = parse(&["--shards", "2", "--study", "/s/100%", "--rho", "/r"]);
        let s = sbatch_script(&a).unwrap();
        assert!(s.contains("#SBATCH --output=/s/100%%/slurm/logs/%x-%A_%a.out\n"), "{s}");
        assert!(s.contains("--study /s/100% --shard"), "{s}");
    }
}
