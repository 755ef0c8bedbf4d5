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
    // A tokenizer with ids up to 300 against a model of 300 tokens (ids 0..299).
    let p = s.broken.join("config.json");
    let cfg = std::fs::read_to_string(&p).unwrap().replace("\"vocab_size\": 301", "\"vocab_size\": 200");
    std::fs::write(&p, cfg).unwrap();
    expect_failure(&s, &["tokenizer.json", "beyond the vocabulary", "step-300/config.json"]);
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
