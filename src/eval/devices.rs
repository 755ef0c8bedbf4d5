//! `rho eval --devices cuda:0,cuda:1,...`: one shard per device on one machine.
//! Each shard runs in its own `rho eval --shard I/N --device D` process (the
//! same code path as a Slurm array task); their output is prefixed with the shard.

use crate::error::{Error, Result};
use std::ffi::OsString;
use std::io::BufRead;
use std::path::Path;
use std::process::{Command, Stdio};

/// The arguments of this `rho eval` without `--devices` and `--device` (each
/// shard gets its own), for the child processes.
pub fn child_args(args: &[OsString]) -> Vec<OsString> {
    let mut out = Vec::new();
    let mut skip = false;
    for a in args {
        if skip {
            skip = false;
            continue;
        }
        let s = a.to_string_lossy();
        if s == "--devices" || s == "--device" {
            skip = true;
        } else if !(s.starts_with("--devices=") || s.starts_with("--device=")) {
            out.push(a.clone());
        }
    }
    out
}

/// Run `exe <args> --shard I/N --device devices[I]` for every device at once and
/// wait for all. `args` are the `eval` subcommand and its flags (see [`child_args`]).
/// A failed shard is an error naming it; the others' parts are kept, and a re-run
/// does only what is missing.
pub fn run_on_devices(exe: &Path, args: &[OsString], devices: &[String], quiet: bool) -> Result<()> {
    let n = devices.len();
    let mut children = Vec::new();
    for (i, dev) in devices.iter().enumerate() {
        let mut cmd = Command::new(exe);
        cmd.args(args).arg("--shard").arg(format!("{i}/{n}")).arg("--device").arg(dev);
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
        let mut child = cmd.spawn().map_err(|e| Error::io(exe, e))?;
        let err = child.stderr.take().unwrap();
        let tag = format!("[shard {i}/{n} {dev}]");
        let printer = std::thread::spawn(move || {
            let mut last = Vec::new();
            for line in std::io::BufReader::new(err).lines().map_while(|l| l.ok()) {
                if !quiet {
                    eprintln!("{tag} {line}");
                }
                last.push(line);
                if last.len() > 5 {
                    last.remove(0);
                }
            }
            last
        });
        children.push((i, dev.clone(), child, printer));
    }
    let mut failed = Vec::new();
    for (i, dev, mut child, printer) in children {
        let status = child.wait().map_err(|e| Error::io(exe, e))?;
        let last = printer.join().unwrap_or_default();
        if !status.success() {
            let why = last.iter().rev().find(|l| l.starts_with("error")).cloned().unwrap_or_else(|| status.to_string());
            failed.push(format!("shard {i}/{n} on {dev}: {why}"));
        }
    }
    if !failed.is_empty() {
        return Err(Error::msg(format!(
            "{} of {n} shards failed ({}); the finished parts are kept: run the same command again to do the rest",
            failed.len(),
            failed.join("; ")
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn drops_device_flags() {
        let a: Vec<OsString> = ["eval", "--devices", "cpu,cpu", "--study", "s", "--device=cpu", "--quiet", "--device", "cuda:0"]
            .iter()
            .map(OsString::from)
            .collect();
        let got: Vec<String> = child_args(&a).iter().map(|s| s.to_string_lossy().into_owned()).collect();
        assert_eq!(got, ["eval", "--study", "s", "--quiet"]);
    }
}
