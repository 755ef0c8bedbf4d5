//! Bad input: one clear error line naming the file, a non-zero exit, no partial
//! or corrupt file in the study, and results of other checkpoints intact.

mod common;
use common::*;
use std::path::{Path, PathBuf};

/// A series of two good llama checkpoints in a temp folder, a study with the first
/// one already evaluated, and a third checkpoint (to be broken by the test).
struct Setup {
    _dir: tempfile::TempDir,
    series: PathBuf,
    study: PathBuf,
    broken: PathBuf,
    before: Vec<(String, Vec<u8>)>,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let series = dir.path().join("series");
    copy_dir(&fixtures().join("llama/step-0"), &series.join("step-0"));
    let broken = series.join("step-300");
    copy_dir(&fixtures().join("llama/step-100"), &broken);
    let study = dir.path().join("study");
    let out = eval(&[series.join("step-0")], &study);
    assert!(out.status.success(), "{}", stderr(&out));
    let before = snapshot(&study);
    Setup { _dir: dir, series, study, broken, before }
}

fn eval(ckpts: &[PathBuf], study: &Path) -> std::process::Output {
    let mut args: Vec<String> = vec!["eval".into(), "--checkpoints".into()];
    args.extend(ckpts.iter().map(|c| c.display().to_string()));
    args.extend(["--data".into(), val_data().display().to_string(), "--study".into(), study.display().to_string(), "--quiet".into()]);
    let refs: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    rho(&refs)
}

/// Evaluate the series (good step-0 + broken step-300); expect a one-line error
/// containing every `needles`, and the study unchanged.
fn expect_failure(s: &Setup, needles: &[&str]) -> String {
    let out = eval(&[s.series.clone()], &s.study);
    let err = stderr(&out);
    assert!(!out.status.success(), "expected failure, got success: {err}");
    assert_eq!(err.trim_end().lines().count(), 1, "one error line: {err}");
    assert!(err.starts_with("error: "), "{err}");
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
    // Earlier results intact, nothing partial left behind.
    assert_eq!(snapshot(&s.study), s.before, "the study changed");
    err
}

#[test]
fn missing_safetensors() {
    let s = setup();
    std::fs::remove_file(s.broken.join("model.safetensors")).unwrap();
    expect_failure(&s, &["step-300", "model.safetensors"]);
}

#[test]
fn truncated_safetensors() {
    let s = setup();
    let p = s.broken.join("model.safetensors");
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() / 2]).unwrap();
    expect_failure(&s, &["step-300/model.safetensors", "truncated"]);
}

#[test]
fn corrupt_safetensors_header() {
    let s = setup();
    let p = s.broken.join("model.safetensors");
    let mut bytes = std::fs::read(&p).unwrap();
    bytes[10] = b'#';
    std::fs::write(&p, &bytes).unwrap();
    expect_failure(&s, &["step-300/model.safetensors"]);
}

#[test]
fn missing_shard() {
    let s = setup();
    std::fs::remove_dir_all(&s.broken).unwrap();
    copy_dir(&fixtures().join("llama/step-200"), &s.broken);
    let shard = std::fs::read_dir(&s.broken)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.to_string_lossy().ends_with("-of-00004.safetensors") || p.to_string_lossy().contains("-of-"))
        .expect("a shard");
    std::fs::remove_file(&shard).unwrap();
    expect_failure(&s, &[shard.file_name().unwrap().to_str().unwrap(), "missing"]);
}

#[test]
fn tensor_shape_disagrees_with_config() {
    let s = setup();
    let p = s.broken.join("config.json");
    let cfg = std::fs::read_to_string(&p).unwrap().replace("\"intermediate_size\": 128", "\"intermediate_size\": 96");
    assert!(cfg.contains("96"));
    std::fs::write(&p, cfg).unwrap();
    expect_failure(&s, &["step-300/model.safetensors", "mlp", "shape", "[128, 64]", "[96, 64]"]);
}

#[test]
fn unknown_model_type() {
    let s = setup();
    let p = s.broken.join("config.json");
    let cfg = std::fs::read_to_string(&p).unwrap().replace("\"llama\"", "\"mamba\"");
    std::fs::write(&p, cfg).unwrap();
    expect_failure(&s, &["step-300/config.json", "unknown model_type `mamba`"]);
}

#[test]
fn token_ids_beyond_vocabulary() {
    let s = setup();
    // A tokenizer with ids up to 300 against a model of 200 tokens (ids 0..199), evaluated alone
    // (in a series, the vocabulary that differs from the others' is refused first).
    let p = s.broken.join("config.json");
    let cfg = std::fs::read_to_string(&p).unwrap().replace("\"vocab_size\": 301", "\"vocab_size\": 200");
    std::fs::write(&p, cfg).unwrap();
    let out = eval(std::slice::from_ref(&s.broken), &s.study.with_file_name("alone"));
    let err = stderr(&out);
    assert!(!out.status.success());
    for n in ["tokenizer.json", "beyond the vocabulary", "step-300/config.json"] {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
    expect_failure(&s, &["step-300/config.json", "vocab_size is 200", "step-0/config.json has 301", "one vocabulary"]);
}

/// A malicious pickle (`os.system` beside real tensors, scripts/make_pickle_fixtures.py) in
/// place of the weights: refused naming the file and the global, and nothing ran (its
/// payload creates a marker file when unpickled by Python).
#[test]
fn malicious_pickle_checkpoint_is_refused() {
    let s = setup();
    std::fs::remove_file(s.broken.join("model.safetensors")).unwrap();
    let marker = Path::new("/tmp/rho-pickle-fixture-ran-evil_zip");
    let _ = std::fs::remove_file(marker);
    std::fs::copy(fixtures().join("pickle/evil_zip.bin"), s.broken.join("pytorch_model.bin")).unwrap();
    expect_failure(&s, &["step-300/pytorch_model.bin", "`posix.system`", "nothing from the file was run"]);
    assert!(!marker.exists(), "the payload ran");
}

#[test]
fn corrupt_pickle_checkpoint() {
    let s = setup();
    std::fs::remove_file(s.broken.join("model.safetensors")).unwrap();
    std::fs::write(s.broken.join("pytorch_model.bin"), b"PK\x03\x04 not executed").unwrap();
    expect_failure(&s, &["step-300/pytorch_model.bin", "not a valid PyTorch zip checkpoint"]);
}

fn data_failure(data: &[u8], name: &str, needles: &[&str]) {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, data).unwrap();
    let study = dir.path().join("study");
    let out = rho(&[
        "eval", "--checkpoints", fixtures().join("llama").to_str().unwrap(),
        "--data", p.to_str().unwrap(), "--study", study.to_str().unwrap(), "--quiet",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(p.to_str().unwrap()), "{err}");
    for n in needles {
        assert!(err.contains(n), "`{n}` in {err}");
    }
    assert!(!study.join("losses").exists() || std::fs::read_dir(study.join("losses")).unwrap().next().is_none());
}

#[test]
fn empty_data_file() {
    data_failure(b"", "val.jsonl", &["empty"]);
    data_failure(b"\n\n  \n", "val.txt", &["empty"]);
}

#[test]
fn non_utf8_data_file() {
    data_failure(b"good text\n\xff\xfe bad bytes\n", "val.txt", &["UTF-8"]);
}

#[test]
fn wrong_text_field() {
    data_failure(b"{\"question\": \"what?\"}\n", "val.jsonl", &["no field `text`", "question"]);
}

#[test]
fn folder_with_no_checkpoints() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("empty/sub")).unwrap();
    let out = rho(&[
        "eval", "--checkpoints", dir.path().join("empty").to_str().unwrap(),
        "--data", val_data().to_str().unwrap(), "--study", dir.path().join("s").to_str().unwrap(),
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("empty") && err.contains("no checkpoints"), "{err}");
}

#[test]
fn bad_flags_exit_2() {
    let dir = tempfile::tempdir().unwrap();
    let base = |extra: &[&str]| {
        let mut a = vec![
            "eval", "--checkpoints", "fixtures/llama", "--data", "fixtures/data/val.jsonl", "--quiet",
        ];
        let s = dir.path().join("s");
        let s = s.to_str().unwrap().to_string();
        let mut v: Vec<String> = a.drain(..).map(String::from).collect();
        v.push("--study".into());
        v.push(s);
        v.extend(extra.iter().map(|x| x.to_string()));
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rho")).current_dir(root()).args(&v).output().unwrap();
        (out.status.code(), stderr(&out))
    };
    let (code, err) = base(&["--device", "tpu"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--device"), "{err}");
    let (code, err) = base(&["--dtype", "f64"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--dtype") && err.contains("auto"), "{err}");
    let (code, err) = base(&["--batch-tokens", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--batch-tokens"), "{err}");
}

/// A bad `RHO_FUSED_KERNELS` is refused before any work, naming the variable; bad
/// `rho bench optim` flags name the flag.
#[test]
fn bad_fused_kernels_switch_and_bench_optim_flags_exit_2() {
    let run = |env: Option<&str>, args: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rho"));
        c.current_dir(root()).args(args).env_remove("RHO_FUSED_KERNELS");
        if let Some(v) = env {
            c.env("RHO_FUSED_KERNELS", v);
        }
        let out = c.output().unwrap();
        (out.status.code(), stderr(&out), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, err, out) = run(Some("attention,flash"), &["bench", "optim", "--params", "0.01", "--iters", "1", "--warmup", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("RHO_FUSED_KERNELS") && err.contains("`flash`"), "{err}");
    assert!(out.is_empty(), "{out}");
    let (code, err, _) = run(None, &["bench", "optim", "--params", "0"]);
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("--params"), "{err}");
    // a good list runs: fused ops on, and the composed baseline, side by side
    let (code, err, out) = run(Some("loss,optim"), &["bench", "optim", "--params", "0.01", "--iters", "1", "--warmup", "0"]);
    assert_eq!(code, Some(0), "{err}");
    assert!(out.contains("impl=fused") && out.contains("impl=composed") && out.contains("step_composed_over_fused="), "{out}");
}

/// A bad `RHO_CUDA_POOL` is refused before any work, naming the variable and the values;
/// the two good ones run (on a CPU the pool setting has nothing to do).
#[test]
fn bad_cuda_pool_switch_exits_2() {
    let run = |v: &str| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_rho"))
            .current_dir(root())
            .args(["bench", "optim", "--params", "0.01", "--iters", "1", "--warmup", "0", "--device", "cpu"])
            .env("RHO_CUDA_POOL", v)
            .output()
            .unwrap();
        (out.status.code(), stderr(&out), String::from_utf8_lossy(&out.stdout).into_owned())
    };
    let (code, err, out) = run("never");
    assert_eq!(code, Some(2), "{err}");
    assert!(err.contains("RHO_CUDA_POOL") && err.contains("`never`") && err.contains("keep or release"), "{err}");
    assert!(out.is_empty(), "{out}");
    for good in ["keep", "release"] {
        let (code, err, _) = run(good);
        assert_eq!(code, Some(0), "{good}: {err}");
    }
}

/// A bad `RHO_RESIDUAL` is refused before any work, naming the variable and the values.
#[test]
fn bad_residual_switch_exits_2() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_rho"))
        .current_dir(root())
        .args(["bench", "eval", "--tiny", "--iters", "1", "--warmup", "0"])
        .env("RHO_RESIDUAL", "bf16")
        .output()
        .unwrap();
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("RHO_RESIDUAL") && err.contains("`bf16`") && err.contains("f32 or model"), "{err}");
    assert!(out.stdout.is_empty(), "{}", String::from_utf8_lossy(&out.stdout));
}

#[test]
fn other_data_into_existing_study_is_refused_then_forced() {
    let s = setup();
    let dir = tempfile::tempdir().unwrap();
    let other = dir.path().join("other.txt");
    std::fs::write(&other, "some other text for the model to read\n\nand more").unwrap();
    let out = rho(&[
        "eval", "--checkpoints", s.series.join("step-0").to_str().unwrap(),
        "--data", other.to_str().unwrap(), "--study", s.study.to_str().unwrap(), "--quiet",
    ]);
    let err = stderr(&out);
    assert!(!out.status.success());
    assert!(err.contains("study.json") && err.contains("--force"), "{err}");
    assert_eq!(snapshot(&s.study), s.before);
}

// ---- issue 20: absurd sizes are bounded, silent cases are errors ----

/// What one run of the binary cost: exit code, stderr, CPU seconds (user + system) and peak
/// resident memory in MB (`wait4`'s `ru_maxrss`).
struct Measured {
    code: Option<i32>,
    err: String,
    cpu_s: f64,
    peak_mb: f64,
}

/// Run rho with `args` (stdout discarded, stderr to a file so a long one cannot block it)
/// and measure it; killed after 60 s.
#[allow(clippy::zombie_processes)] // reaped by wait4 below (which also gives its peak RSS)
fn rho_measured(args: &[&str]) -> Measured {
    let dir = tempfile::tempdir().unwrap();
    let errf = dir.path().join("stderr");
    let child = std::process::Command::new(env!("CARGO_BIN_EXE_rho"))
        .args(args)
        .stdout(std::process::Stdio::null())
        .stderr(std::fs::File::create(&errf).unwrap())
        .spawn()
        .unwrap();
    let pid = child.id() as libc::pid_t;
    let t = std::time::Instant::now();
    let (mut status, mut ru): (libc::c_int, libc::rusage) = (0, unsafe { std::mem::zeroed() });
    loop {
        // SAFETY: wait4 on our own child, with valid pointers.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut ru) };
        if r == pid {
            break;
        }
        assert!(r == 0, "wait4 failed");
        if t.elapsed().as_secs() > 60 {
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    let secs = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    Measured {
        code: libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status)),
        err: std::fs::read_to_string(&errf).unwrap(),
        cpu_s: secs(ru.ru_utime) + secs(ru.ru_stime),
        peak_mb: ru.ru_maxrss as f64 / 1024.0,
    }
}

/// An absurd size: refused with a short error containing every `needles`, exit `code`, in
/// under 1 s of CPU and 100 MB of memory.
fn bounded_error(args: &[&str], code: i32, needles: &[&str]) -> String {
    let m = rho_measured(args);
    assert_eq!(m.code, Some(code), "{args:?}: {}", m.err);
    assert!(m.err.starts_with("error: "), "{}", m.err);
    assert!(m.err.lines().count() <= 3 && m.err.len() < 2000, "{args:?}: a long error ({} bytes): {}", m.err.len(), m.err);
    for n in needles {
        assert!(m.err.contains(n), "{args:?}: error should mention `{n}`: {}", m.err);
    }
    assert!(m.cpu_s < 1.0, "{args:?}: {:.2} s of CPU", m.cpu_s);
    assert!(m.peak_mb < 100.0, "{args:?}: peak RSS {:.0} MB", m.peak_mb);
    m.err
}

fn s(p: &Path) -> &str {
    p.to_str().unwrap()
}

/// A study of the llama fixture series (3 checkpoints, evaluated whole), in `dir/name`.
fn whole_study(dir: &Path, name: &str) -> PathBuf {
    let study = dir.join(name);
    let out = eval(&[fixtures().join("llama")], &study);
    assert!(out.status.success(), "{}", stderr(&out));
    study
}

fn edit_manifest(study: &Path, f: impl FnOnce(&mut serde_json::Value)) {
    let p = study.join("study.json");
    let mut v: serde_json::Value = serde_json::from_slice(&std::fs::read(&p).unwrap()).unwrap();
    f(&mut v);
    std::fs::write(&p, serde_json::to_vec_pretty(&v).unwrap()).unwrap();
}

/// Issue 20: `--shard 1/4294967295` (then `rho status`: 23 GB), a part record or study.json
/// entry with billions of shards (categorize: a 96 GB allocation), `--data /dev/zero` (16.8 GB),
/// `train --batch-tokens 18446744073709551615` (an abort), `--shard 1/1000000` (a 14.8 MB error
/// line): each now a short error naming the flag, file or key, under 1 s and 100 MB.
#[test]
fn absurd_sizes_are_short_errors_in_bounded_time_and_memory() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let llama = fixtures().join("llama");
    let val = val_data();
    let ev = |study: &Path, extra: &[&str]| -> Vec<String> {
        let mut v: Vec<String> = ["eval", "--checkpoints", s(&llama), "--data", s(&val), "--study", s(study), "--quiet"]
            .iter()
            .map(|x| x.to_string())
            .collect();
        v.extend(extra.iter().map(|x| x.to_string()));
        v
    };
    let run = |v: &[String], code: i32, needles: &[&str]| bounded_error(&v.iter().map(|x| x.as_str()).collect::<Vec<_>>(), code, needles);

    // --shard N beyond MAX_SHARDS, and beyond the tokens to score: refused before anything is written.
    run(&ev(&d.join("s1"), &["--shard", "1/4294967295"]), 2, &["--shard", "`1/4294967295`", "at most 100000"]);
    run(&ev(&d.join("s1"), &["--shard", "1/1000000"]), 2, &["--shard", "at most 100000"]);
    run(&ev(&d.join("s1"), &["--shard", "1/100000"]), 2, &["--shard", "more than the", "tokens to score"]);
    assert!(!d.join("s1").exists(), "a refused --shard writes nothing");

    // A part record (hand-made, or from an older rho) with 4294967295 shards: status reads the
    // study without a per-shard allocation (the record is not one rho writes: no part yet).
    let study = whole_study(d, "w");
    let sd = study.join("losses/checkpoint=x");
    std::fs::create_dir_all(&sd).unwrap();
    std::fs::copy(study.join("losses/step-0.parquet"), sd.join("part-0000000001-of-4294967295.parquet")).unwrap();
    let rec = serde_json::json!({"name": "x", "step": 1, "path": "/x", "fingerprint": "fp", "shard": 1, "shards": 4294967295u32,
        "row_start": 0, "n_tokens": 502, "loss_sum": 1.0});
    std::fs::write(sd.join("part-0000000001-of-4294967295.json"), rec.to_string()).unwrap();
    let m = rho_measured(&["status", "--study", s(&study)]);
    assert_eq!(m.code, Some(3), "{}", m.err);
    assert!(m.cpu_s < 1.0 && m.peak_mb < 100.0, "status: {:.2} s, {:.0} MB", m.cpu_s, m.peak_mb);
    std::fs::remove_dir_all(&sd).unwrap();

    // A part record of 5000 shards with one part done: the error lists a few missing shards, not 4999.
    let sd = study.join("losses/checkpoint=y");
    std::fs::create_dir_all(&sd).unwrap();
    std::fs::copy(study.join("losses/step-0.parquet"), sd.join("part-0001-of-5000.parquet")).unwrap();
    let fp = serde_json::from_slice::<serde_json::Value>(&std::fs::read(study.join("study.json")).unwrap()).unwrap()["fingerprint"].clone();
    let rec = serde_json::json!({"name": "y", "step": 1, "path": "/y", "fingerprint": fp, "shard": 1, "shards": 5000,
        "row_start": 0, "n_tokens": 502, "loss_sum": 1.0});
    std::fs::write(sd.join("part-0001-of-5000.json"), rec.to_string()).unwrap();
    let e = bounded_error(&["categorize", "--study", s(&study)], 1, &["checkpoint=y", "1 of 5000 parts", "... and 4979 more", "--array 0,2-4999"]);
    assert!(e.len() < 1000, "{e}");
    std::fs::remove_dir_all(&sd).unwrap();

    // "shards": 4000000000 in study.json: categorize and status refuse it, naming the key.
    let before = std::fs::read(study.join("study.json")).unwrap();
    edit_manifest(&study, |v| v["checkpoints"][0]["shards"] = 4000000000u64.into());
    for cmd in ["categorize", "status"] {
        bounded_error(&[cmd, "--study", s(&study)], 1, &["study.json", "checkpoint `step-0`", "\"shards\": 4000000000 is out of range"]);
    }
    std::fs::write(study.join("study.json"), before).unwrap();

    // --data that is not a regular file: /dev/zero, a FIFO (would block or be read twice), a folder.
    let fifo = d.join("fifo.jsonl");
    let c = std::ffi::CString::new(s(&fifo)).unwrap();
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    for (data, kind) in [("/dev/zero", "a character device"), (s(&fifo), "a FIFO"), (s(d), "a folder")] {
        let mut v = ev(&d.join("s2"), &[]);
        v[4] = data.to_string();
        run(&v, 1, &[data, "is not a regular file", kind]);
        bounded_error(
            &["train", "--init", s(&llama.join("step-0")), "--data", data, "--out", s(&d.join("t")), "--steps", "1", "--quiet"],
            1,
            &[data, "is not a regular file"],
        );
    }
    // one endless line: refused after MAX_DOC_BYTES (32 MiB) of it (memory stays under 100 MB)
    let endless = d.join("endless.txt");
    let f = std::fs::File::create(&endless).unwrap();
    f.set_len((32 << 20) + 4096).unwrap(); // NUL bytes, no newline, like a copy of /dev/zero
    let m = rho_measured(&ev(&d.join("s2"), &[]).iter().enumerate().map(|(i, x)| if i == 4 { s(&endless) } else { x.as_str() }).collect::<Vec<_>>());
    assert_eq!(m.code, Some(1), "{}", m.err);
    assert!(m.err.contains("endless.txt") && m.err.contains("line 1 is longer than 32 MiB"), "{}", m.err);
    assert!(m.peak_mb < 100.0, "endless line: peak RSS {:.0} MB", m.peak_mb);
    assert!(!d.join("s2").exists());

    // train --batch-tokens far beyond memory: an error naming the flag, not an abort.
    for bt in ["18446744073709551615", "100000000000"] {
        bounded_error(
            &["train", "--init", s(&llama.join("step-0")), "--data", s(&val), "--out", s(&d.join("t")), "--steps", "1", "--seq-len", "32",
              "--quiet", "--batch-tokens", bt],
            2,
            &["--batch-tokens", bt, "more than this machine's memory"],
        );
    }
    assert!(!d.join("t").exists(), "a refused train writes nothing");
}

/// Issue 20: a series whose vocabulary or tokenizer differs is refused (it was scored silently).
#[test]
fn series_must_share_vocabulary_and_tokenizer() {
    let s = setup();
    let p = s.broken.join("config.json");
    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("\"vocab_size\": 301", "\"vocab_size\": 302")).unwrap();
    expect_failure(&s, &["step-300/config.json", "vocab_size is 302", "one vocabulary"]);
    // evaluated later into the study, on its own: study.json records the vocabulary
    let out = eval(std::slice::from_ref(&s.broken), &s.study);
    let err = stderr(&out);
    assert!(!out.status.success() && err.contains("study.json") && err.contains("vocabulary of 301") && err.contains("302"), "{err}");
    assert_eq!(snapshot(&s.study), s.before);

    std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace("\"vocab_size\": 302", "\"vocab_size\": 301")).unwrap();
    std::fs::remove_file(s.broken.join("tokenizer.json")).unwrap();
    expect_failure(&s, &["step-300/tokenizer.json", "missing", "share one tokenizer", "--tokenizer"]);
    // --tokenizer scores the whole series with one: accepted
    let out = rho(&[
        "eval", "--checkpoints", s.series.to_str().unwrap(), "--data", val_data().to_str().unwrap(),
        "--study", s.study.to_str().unwrap(), "--quiet", "--tokenizer", s.series.join("step-0/tokenizer.json").to_str().unwrap(),
    ]);
    assert!(out.status.success(), "{}", stderr(&out));
}

/// Run categorize on a study; return its error (it must fail, naming `file`, in one line).
fn categorize_refuses(study: &Path, file: &Path, needles: &[&str]) -> String {
    let out = rho(&["categorize", "--study", s(study)]);
    let err = stderr(&out);
    assert!(!out.status.success(), "categorize accepted it: {}", String::from_utf8_lossy(&out.stdout));
    assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    assert!(err.contains(s(file)), "error should name {}: {err}", file.display());
    for n in needles {
        assert!(err.contains(n), "error should mention `{n}`: {err}");
    }
    err
}

/// Issue 20: losses files are checked against the study when read: a file copied under another
/// checkpoint's name, rows that differ from study.json's, flipped bytes (checksum), a duplicate
/// entry, and the same for the parts of a sharded checkpoint (their records).
#[test]
fn losses_files_are_checked_against_the_study() {
    let dir = tempfile::tempdir().unwrap();
    let study = whole_study(dir.path(), "w");
    let losses = study.join("losses");
    let ok = rho(&["categorize", "--study", s(&study)]);
    assert!(ok.status.success(), "{}", stderr(&ok));
    let fresh = snapshot(&study);
    let restore = || {
        for (rel, bytes) in &fresh {
            std::fs::write(study.join(rel), bytes).unwrap();
        }
    };
    // copied under another checkpoint's name
    std::fs::copy(losses.join("step-0.parquet"), losses.join("step-100.parquet")).unwrap();
    categorize_refuses(&study, &losses.join("step-100.parquet"), &["losses of checkpoint `step-0`", "not of `step-100`"]);
    restore();
    // the rows study.json records
    edit_manifest(&study, |v| v["checkpoints"][1]["n_tokens"] = 501.into());
    categorize_refuses(&study, &losses.join("step-100.parquet"), &["has 502 rows", "records 501"]);
    restore();
    // a duplicate entry
    edit_manifest(&study, |v| {
        let c = v["checkpoints"][1].clone();
        v["checkpoints"].as_array_mut().unwrap().push(c);
    });
    categorize_refuses(&study, &study.join("study.json"), &["`step-100` is listed twice"]);
    restore();
    // 4 flipped bytes, at 6 places: each an error naming the file (1 of 6 passed silently before)
    let f = losses.join("step-200.parquet");
    let good = std::fs::read(&f).unwrap();
    for k in 0..6 {
        let mut b = good.clone();
        for j in 0..4 {
            let at = 4 + (k * 977 + j * 131) % (good.len() - 16);
            b[at] ^= 0x20;
        }
        std::fs::write(&f, &b).unwrap();
        categorize_refuses(&study, &f, &[]);
    }
    restore();
    // a checksum mismatch is named as such (a byte in the losses' data)
    let mut b = good.clone();
    let mid = good.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&f, &b).unwrap();
    categorize_refuses(&study, &f, &["checksum mismatch", "study.json records"]);
    restore();
    let out = rho(&["categorize", "--study", s(&study)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, ok.stdout);

    // sharded: each part against its record
    let sh = dir.path().join("sh");
    for i in 0..2 {
        let sharded = ["--shard".to_string(), format!("{i}/2")];
        let out = rho(&[
            "eval", "--checkpoints", s(&fixtures().join("llama")), "--data", s(&val_data()), "--study", s(&sh), "--quiet",
            &sharded[0], &sharded[1],
        ]);
        assert!(out.status.success(), "{}", stderr(&out));
    }
    let out = rho(&["categorize", "--study", s(&sh)]);
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(out.stdout, ok.stdout, "sharded and whole studies categorize alike");
    let part = sh.join("losses/checkpoint=step-100/part-1-of-2.parquet");
    let good = std::fs::read(&part).unwrap();
    let mut b = good.clone();
    let mid = b.len() / 2;
    b[mid] ^= 1;
    std::fs::write(&part, &b).unwrap();
    categorize_refuses(&sh, &part, &["checksum mismatch", "its part record records"]);
    std::fs::copy(sh.join("losses/checkpoint=step-0/part-1-of-2.parquet"), &part).unwrap();
    categorize_refuses(&sh, &part, &["losses of checkpoint `step-0`"]);
    std::fs::write(&part, &good).unwrap();
    assert!(rho(&["categorize", "--study", s(&sh)]).status.success());
}

fn train_cmd(out: &Path, init: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["train", "--init", s(init), "--data", s(&val_data()), "--out", s(out), "--seq-len", "32", "--batch-tokens", "128", "--quiet"]);
    c.args(extra).output().unwrap()
}

/// Issue 20: absurd hyperparameters are refused before training (they trained to all-NaN weights
/// and exited 0); a loss that becomes NaN stops the run naming the step, with nothing saved.
#[test]
fn bad_hyperparameters_and_a_diverged_loss_are_errors() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let init = fixtures().join("llama/step-0");
    for (args, flag) in [
        (&["--lr", "1e30"][..], "--lr"),
        (&["--lr", "nan"], "--lr"),
        (&["--lr=-1e-3"], "--lr"),
        (&["--min-lr", "nan"], "--min-lr"),
        (&["--min-lr=-1"], "--min-lr"),
        (&["--lr", "1e-3", "--min-lr", "1e-2"], "--min-lr"),
        (&["--init-std", "nan"], "--init-std"),
        (&["--init-std=-0.02"], "--init-std"),
        (&["--init-std", "1e30"], "--init-std"),
        (&["--grad-clip", "inf"], "--grad-clip"),
        (&["--weight-decay", "nan"], "--weight-decay"),
        (&["--ratio", "nan", "--mode", "slm", "--select", "random"], "--ratio"),
    ] {
        let mut a = vec!["--steps", "2"];
        a.extend_from_slice(args);
        let o = train_cmd(&out, &init, &a);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.starts_with(&format!("error: {flag}")), "{args:?}: {err}");
        assert!(!out.exists(), "{args:?}: a refused run writes nothing");
    }

    // NaN weights in the initial checkpoint: the loss is NaN at step 1
    let nan = dir.path().join("nan");
    copy_dir(&init, &nan);
    let p = nan.join("model.safetensors");
    let mut b = std::fs::read(&p).unwrap();
    let n = u64::from_le_bytes(b[..8].try_into().unwrap()) as usize;
    let h: serde_json::Value = serde_json::from_slice(&b[8..8 + n]).unwrap();
    let off = &h["model.norm.weight"]["data_offsets"];
    let (lo, hi) = (8 + n + off[0].as_u64().unwrap() as usize, 8 + n + off[1].as_u64().unwrap() as usize);
    for c in b[lo..hi].chunks_mut(4) {
        c.copy_from_slice(&f32::NAN.to_le_bytes());
    }
    std::fs::write(&p, b).unwrap();
    let o = train_cmd(&out, &nan, &["--steps", "2"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("step 1: the loss is NaN") && err.contains("diverged") && err.contains("nothing of it was saved"), "{err}");
    assert!(!out.join("step-1").exists() && !out.join("step-2").exists(), "nothing broken saved");
    assert_eq!(std::fs::read_to_string(out.join("metrics.jsonl")).unwrap_or_default(), "", "no metrics of the diverged step");
}

/// Issue 20: `--data` (or another setting) given with `--resume` was silently ignored: now
/// other data is refused naming the file, the same data at another path is used, and a
/// setting that differs from the run's is refused naming the flag.
#[test]
fn resume_refuses_other_data_and_settings() {
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let o = train_cmd(&run, &fixtures().join("llama/step-0"), &["--steps", "2"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let resume = |extra: &[&str]| {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_rho"));
        c.args(["train", "--quiet", "--resume", s(&run)]).args(extra).output().unwrap()
    };
    let other = dir.path().join("other.jsonl");
    let text = std::fs::read_to_string(val_data()).unwrap();
    std::fs::write(&other, text.lines().take(3).collect::<Vec<_>>().join("\n")).unwrap();
    let o = resume(&["--data", s(&other), "--steps", "3"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains(s(&other)) && err.contains("cannot resume"), "{err}");
    assert!(!run.join("step-3").exists());
    let o = resume(&["--lr", "0.1", "--steps", "3"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(err.contains("--lr") && err.contains("keeps its settings"), "{err}");
    // the same data at another path: used, and recorded
    let moved = dir.path().join("moved.jsonl");
    std::fs::copy(val_data(), &moved).unwrap();
    let o = resume(&["--data", s(&moved), "--steps", "3", "--lr", "3e-4"]); // the run's own --lr: accepted
    assert!(o.status.success(), "{}", stderr(&o));
    let st = std::fs::read_to_string(run.join("step-3/trainer_state.json")).unwrap();
    assert!(st.contains(s(&moved)), "{st}");
}
