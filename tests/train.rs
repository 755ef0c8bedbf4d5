//! The training engine: SLM selection wiring, gradients, resume, checkpoints
//! that `rho eval` reads back, and bad configuration.

mod common;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use common::*;
use polars::prelude::*;
use rho::model::{loss::per_token_loss, Checkpoint, Mode, Transformer, Weights};
use rho::train::params::ParamSource;
use std::path::{Path, PathBuf};
use std::process::Command;

fn train(out: &Path, extra: &[&str]) -> std::process::Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["train", "--init"]).arg(fixtures().join("llama/step-200"));
    c.arg("--data").arg(val_data()).arg("--out").arg(out);
    c.args(["--seq-len", "32", "--batch-tokens", "128", "--lr", "1e-3", "--quiet"]);
    c.args(extra);
    c.output().unwrap()
}

fn ok(o: std::process::Output) -> std::process::Output {
    assert!(o.status.success(), "{}", stderr(&o));
    o
}

fn metrics(out: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(out.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn reference() -> String {
    fixtures().join("llama/step-0").display().to_string()
}

#[test]
fn slm_ratio_one_equals_clm() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("clm"), dir.path().join("slm"));
    ok(train(&a, &["--steps", "3"]));
    ok(train(&b, &["--steps", "3", "--mode", "slm", "--ratio", "1.0", "--reference", &reference()]));
    let wa = std::fs::read(a.join("step-3/model.safetensors")).unwrap();
    let wb = std::fs::read(b.join("step-3/model.safetensors")).unwrap();
    assert!(wa == wb, "SLM at ratio 1.0 must give the CLM weights");
    // ... and a real selection gives other weights.
    let c = dir.path().join("slm06");
    ok(train(&c, &["--steps", "3", "--mode", "slm", "--ratio", "0.6", "--reference", &reference()]));
    assert!(std::fs::read(c.join("step-3/model.safetensors")).unwrap() != wa);
}

/// The probe mask written during training keeps exactly the top ceil(K x N) tokens by
/// excess loss, never padding; precomputed scores give the same run as the live reference.
#[test]
fn kept_set_is_top_k_by_excess_and_ref_scores_match_live_reference() {
    let dir = tempfile::tempdir().unwrap();
    let live = dir.path().join("live");
    ok(train(&live, &["--steps", "2", "--mode", "slm", "--ratio", "0.3", "--reference", &reference(), "--mask-every", "1"]));
    let df = rho::util::read_parquet(&live.join("masks/step-2.parquet")).unwrap();
    let loss: Vec<f32> = df.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect();
    let refl: Vec<f32> = df.column("ref_loss").unwrap().f32().unwrap().into_no_null_iter().collect();
    let kept: Vec<bool> = df.column("kept").unwrap().bool().unwrap().into_no_null_iter().collect();
    let n = loss.len();
    let k = (0.3 * n as f64 - 1e-9).ceil() as usize;
    assert_eq!(kept.iter().filter(|&&x| x).count(), k);
    let excess: Vec<f32> = loss.iter().zip(&refl).map(|(a, b)| a - b).collect();
    let min_kept = (0..n).filter(|&i| kept[i]).map(|i| excess[i]).fold(f32::INFINITY, f32::min);
    let max_dropped = (0..n).filter(|&i| !kept[i]).map(|i| excess[i]).fold(f32::NEG_INFINITY, f32::max);
    assert!(min_kept >= max_dropped, "kept {min_kept} < dropped {max_dropped}");

    // rho score + --ref-scores: the same run.
    let scores = dir.path().join("ref.parquet");
    let o = rho(&["score", "--model", &reference(), "--data", val_data().to_str().unwrap(), "--out", scores.to_str().unwrap(), "--seq-len", "32", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let pre = dir.path().join("pre");
    ok(train(&pre, &["--steps", "2", "--mode", "slm", "--ratio", "0.3", "--ref-scores", scores.to_str().unwrap(), "--mask-every", "1"]));
    let (ma, mb) = (metrics(&live), metrics(&pre));
    for (x, y) in ma.iter().zip(&mb) {
        for key in ["loss_all", "loss_kept", "kept_frac"] {
            let (p, q) = (x[key].as_f64().unwrap(), y[key].as_f64().unwrap());
            assert!((p - q).abs() < 1e-5, "{key}: live {p} precomputed {q}");
        }
    }
    // Scores of another stream (other data) are refused.
    let other = dir.path().join("other.jsonl");
    std::fs::write(&other, std::fs::read_to_string(val_data()).unwrap() + "{\"text\": \"one more document\"}\n").unwrap();
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["train", "--init"]).arg(fixtures().join("llama/step-200")).arg("--data").arg(&other);
    c.arg("--out").arg(dir.path().join("bad")).args(["--seq-len", "32", "--steps", "1", "--mode", "slm", "--quiet"]);
    let o = c.arg("--ref-scores").arg(&scores).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("ref.parquet") && stderr(&o).contains("another stream"), "{}", stderr(&o));
}

fn train_model(dir: &Path) -> (Transformer, candle_nn::VarMap) {
    let ck = Checkpoint::open(dir).unwrap();
    let src = ParamSource::new(Some(Weights::open(dir).unwrap()), 0, 0.02);
    let vm = src.varmap.clone();
    let vb = VarBuilder::from_backend(Box::new(src), DType::F32, Device::Cpu);
    (Transformer::new(&ck.config, vb, Mode::Train).unwrap(), vm)
}

fn batch() -> (Tensor, Tensor) {
    let ids: Vec<u32> = (0..24u32).map(|i| (i * 37 + 11) % 290).collect();
    let input = Tensor::from_vec(ids, (2, 12), &Device::Cpu).unwrap();
    let targets = input.narrow(1, 1, 11).unwrap().contiguous().unwrap();
    (input, targets)
}

/// The trap: candle-nn's fused ops have no backward. Every parameter of every
/// family must get a non-zero gradient in training mode.
#[test]
fn every_parameter_gets_a_gradient() {
    for ck in [
        "llama/step-0",
        "neox/step1000",
        "neox-seq/step1",
        "gpt2/checkpoint-10",
        "qwen2/step-1",
        "olmo/step1000-tokens4B",
        "olmo2/stage1-step150-tokens1B",
        "olmo3/stage1-step1000",
        "smollm3/step-40000",
        "qwen3/checkpoint-500",
    ] {
        let (model, vm) = train_model(&fixtures().join(ck));
        let (input, targets) = batch();
        let logits = model.forward(&input).unwrap();
        let loss = per_token_loss(&logits.narrow(1, 0, 11).unwrap(), &targets).unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let vars = vm.all_vars();
        assert!(vars.len() > 10, "{ck}: {} vars", vars.len());
        for (name, v) in vm.data().lock().unwrap().iter() {
            let g = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{ck}: no gradient for {name}"));
            let n = g.abs().unwrap().sum_all().unwrap().to_scalar::<f32>().unwrap();
            assert!(n > 0.0, "{ck}: zero gradient for {name}");
        }
    }
}

/// Training mode and eval mode compute the same losses.
#[test]
fn train_and_eval_forward_agree() {
    for ck in [
        "llama/step-100",
        "neox/step2000",
        "gpt2/checkpoint-20",
        "olmo/step2000-tokens8B",
        "olmo2/stage2-ingredient1-step100-tokens4B",
        "olmo3/stage1-step2000",
        "smollm3/step-40000",
        "qwen3/checkpoint-1000",
    ] {
        let dir = fixtures().join(ck);
        let (model, _) = train_model(&dir);
        let eval = Checkpoint::open(&dir).unwrap().load(DType::F32, &Device::Cpu, Mode::Eval).unwrap();
        let (input, targets) = batch();
        let a = per_token_loss(&model.forward(&input).unwrap().narrow(1, 0, 11).unwrap(), &targets).unwrap();
        let b = per_token_loss(&eval.forward(&input).unwrap().narrow(1, 0, 11).unwrap(), &targets).unwrap();
        let d = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(d < 1e-4, "{ck}: {d}");
    }
}

/// Unselected tokens contribute zero gradient: changing the targets of tokens
/// outside the mask leaves every gradient bit-identical.
#[test]
fn unselected_tokens_contribute_no_gradient() {
    let (model, vm) = train_model(&fixtures().join("llama/step-0"));
    let (input, targets) = batch();
    let keep: Vec<f32> = (0..22).map(|i| if i % 3 == 0 { 1.0 } else { 0.0 }).collect();
    let mask = Tensor::from_vec(keep.clone(), (2, 11), &Device::Cpu).unwrap();
    let grads_for = |targets: &Tensor| {
        let logits = model.forward(&input).unwrap();
        let l = per_token_loss(&logits.narrow(1, 0, 11).unwrap(), targets).unwrap();
        let loss = ((l * &mask).unwrap().sum_all().unwrap() / 8.0).unwrap();
        loss.backward().unwrap()
    };
    let g1 = grads_for(&targets);
    let mut t2: Vec<u32> = targets.flatten_all().unwrap().to_vec1().unwrap();
    for (i, t) in t2.iter_mut().enumerate() {
        if keep[i] == 0.0 {
            *t = (*t + 101) % 290;
        }
    }
    let g2 = grads_for(&Tensor::from_vec(t2, (2, 11), &Device::Cpu).unwrap());
    for (name, v) in vm.data().lock().unwrap().iter() {
        let a: Vec<f32> = g1.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        let b: Vec<f32> = g2.get(v.as_tensor()).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert!(a == b, "gradient of {name} depends on unselected tokens");
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let full = dir.path().join("full");
    let args = ["--steps", "6", "--save-every", "3", "--mode", "slm", "--select", "random", "--ratio", "0.5", "--warmup", "2"];
    ok(train(&full, &args));
    // A crash after step 3: only the step-3 checkpoint and 4 lines of metrics (one torn) survive.
    let crashed = dir.path().join("crashed");
    copy_dir(&full.join("step-3"), &crashed.join("step-3"));
    let lines: Vec<String> = std::fs::read_to_string(full.join("metrics.jsonl")).unwrap().lines().map(String::from).collect();
    std::fs::write(crashed.join("metrics.jsonl"), format!("{}\n{}\n{}\n{}", lines[0], lines[1], lines[2], &lines[3][..20])).unwrap();
    // the unfinished checkpoint folder of a killed rho (a pid no process can have)
    let dead = rho::temp::Owner { pid: 2_000_000_000, ..rho::temp::me().clone() };
    let stale = rho::temp::name_of(&crashed.join("step-6"), rho::temp::Kind::Tmp, &dead, 0).unwrap();
    std::fs::create_dir_all(&stale).unwrap();
    // the user's own folder of a similar name
    std::fs::create_dir_all(crashed.join("step-6.tmp-999")).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rho")).args(["train", "--quiet", "--resume"]).arg(&crashed).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (metrics(&full), metrics(&crashed));
    assert_eq!(a.len(), 6);
    assert_eq!(b.len(), 6);
    for (x, y) in a.iter().zip(&b) {
        for key in ["step", "loss_all", "loss_kept", "kept_frac", "lr", "grad_norm", "tokens_seen"] {
            assert_eq!(x[key], y[key], "{key} at step {}", x["step"]);
        }
    }
    let wa = std::fs::read(full.join("step-6/model.safetensors")).unwrap();
    let wb = std::fs::read(crashed.join("step-6/model.safetensors")).unwrap();
    assert!(wa == wb, "resumed weights differ");
    assert!(!stale.exists(), "stale temporary folder removed");
    assert!(crashed.join("step-6.tmp-999").is_dir(), "the user's folder is kept");
}

/// A checkpoint written by `rho train`, read back by `rho eval --pack`, gives the
/// per-token losses of the training forward pass (the probe mask of the last step).
#[test]
fn eval_reads_train_checkpoints_with_the_same_losses() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    ok(train(&out, &["--steps", "3", "--mask-every", "3"]));
    let ck = out.join("step-3");
    for f in ["config.json", "model.safetensors", "tokenizer.json", "optimizer.safetensors", "trainer_state.json"] {
        assert!(ck.join(f).exists(), "{f}");
    }
    let study = dir.path().join("study");
    let o = rho(&["eval", "--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", study.to_str().unwrap(), "--pack", "--context", "32", "--quiet"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let probe = rho::util::read_parquet(&out.join("masks/step-3.parquet")).unwrap();
    let ev = rho::util::read_parquet(&study.join("losses/step-3.parquet")).unwrap();
    let key = |df: &DataFrame| -> Vec<(u32, u32)> {
        let s: Vec<u32> = df.column("seq").unwrap().u32().unwrap().into_no_null_iter().collect();
        let p: Vec<u32> = df.column("pos").unwrap().u32().unwrap().into_no_null_iter().collect();
        s.into_iter().zip(p).collect()
    };
    let (kp, ke) = (key(&probe), key(&ev));
    let lp: Vec<f32> = probe.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect();
    let le: Vec<f32> = ev.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect();
    let mut checked = 0;
    for (i, k) in kp.iter().enumerate() {
        let j = ke.iter().position(|x| x == k).expect("probe token in eval");
        assert!((lp[i] - le[j]).abs() < 1e-4, "{k:?}: train {} eval {}", lp[i], le[j]);
        checked += 1;
    }
    assert!(checked >= 100, "{checked}");
}

#[test]
fn bad_configuration_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    let o = train(&dir.path().join("a"), &["--steps", "2", "--mode", "slm", "--ratio", "1.5", "--reference", &reference()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--ratio"), "{}", stderr(&o));
    let o = train(&dir.path().join("b"), &["--steps", "2", "--mode", "slm", "--ratio", "0"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    let o = train(&dir.path().join("c"), &["--steps", "2", "--mode", "slm"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("--reference"), "{}", stderr(&o));
    // A reference with another vocabulary (GPT-2 fixture: 300 tokens vs 301).
    let g = fixtures().join("gpt2/checkpoint-10");
    let o = train(&dir.path().join("d"), &["--steps", "2", "--mode", "slm", "--reference", g.to_str().unwrap()]);
    assert!(!o.status.success());
    let e = stderr(&o);
    assert!(e.contains("gpt2/checkpoint-10") && e.contains("vocabulary"), "{e}");
    assert_eq!(e.trim_end().lines().count(), 1, "{e}");
    // Nothing was trained.
    assert!(!dir.path().join("d/step-2").exists());
}

#[test]
fn toml_config_mirrors_flags_and_flags_override() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("run.toml");
    std::fs::write(
        &cfg,
        format!(
            "init = {:?}\ndata = {:?}\nsteps = 2\nseq-len = 32\nbatch-tokens = 128\nlr = 1e-3\nmode = \"slm\"\nselect = \"loss\"\nratio = 0.5\nquiet = true\n",
            fixtures().join("llama/step-200"),
            val_data()
        ),
    )
    .unwrap();
    let out = dir.path().join("run");
    let o = Command::new(env!("CARGO_BIN_EXE_rho")).args(["train", "--config"]).arg(&cfg).arg("--out").arg(&out).args(["--ratio", "0.25"]).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let st: serde_json::Value = serde_json::from_slice(&std::fs::read(out.join("step-2/trainer_state.json")).unwrap()).unwrap();
    assert_eq!(st["config"]["ratio"], 0.25, "flag overrides file");
    assert_eq!(st["config"]["select"], "loss");
    assert_eq!(st["config"]["steps"], 2);
    let m = metrics(&out);
    assert!((m[0]["kept_frac"].as_f64().unwrap() - 0.25).abs() < 0.02);
    std::fs::write(&cfg, "steps = 2\nbogus-key = 1\n").unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_rho")).args(["train", "--config"]).arg(&cfg).output().unwrap();
    assert!(!o.status.success());
    assert!(stderr(&o).contains("run.toml") && stderr(&o).contains("bogus-key"), "{}", stderr(&o));
}

#[test]
fn sigint_saves_a_checkpoint_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("run");
    let mut child = Command::new(env!("CARGO_BIN_EXE_rho"))
        .args(["train", "--init"])
        .arg(fixtures().join("llama/step-200"))
        .arg("--data")
        .arg(val_data())
        .arg("--out")
        .arg(&out)
        .args(["--seq-len", "32", "--batch-tokens", "128", "--steps", "100000", "--quiet"])
        .spawn()
        .unwrap();
    let t0 = std::time::Instant::now();
    while !out.join("metrics.jsonl").exists() || std::fs::read_to_string(out.join("metrics.jsonl")).unwrap().lines().count() < 2 {
        assert!(t0.elapsed().as_secs() < 60, "training did not start");
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    let st = Command::new("kill").args(["-INT", &child.id().to_string()]).status().unwrap();
    assert!(st.success());
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(0));
    let ckpts: Vec<PathBuf> = std::fs::read_dir(&out)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.file_name().unwrap().to_string_lossy().starts_with("step-"))
        .collect();
    assert_eq!(ckpts.len(), 1, "{ckpts:?}");
    let state = rho::train::checkpoint::load_state(&ckpts[0]).unwrap();
    assert!(state.step >= 2 && state.step < 100000);
    assert_eq!(metrics(&out).len() as u64, state.step);
}

/// SIGKILL at an arbitrary moment of a run (mid-step, mid-checkpoint or
/// mid-metrics line), then `--resume`: the run finishes exactly as an
/// uninterrupted one (metrics and weights bitwise), losing nothing.
#[test]
fn sigkill_then_resume_reproduces_the_uninterrupted_run() {
    let dir = tempfile::tempdir().unwrap();
    let args = ["--steps", "40", "--save-every", "2", "--mode", "slm", "--select", "random", "--ratio", "0.5", "--warmup", "2"];
    let full = dir.path().join("full");
    ok(train(&full, &args));

    let killed = dir.path().join("killed");
    let mut c = Command::new(env!("CARGO_BIN_EXE_rho"));
    c.args(["train", "--init"]).arg(fixtures().join("llama/step-200"));
    c.arg("--data").arg(val_data()).arg("--out").arg(&killed);
    c.args(["--seq-len", "32", "--batch-tokens", "128", "--lr", "1e-3", "--quiet"]).args(args);
    let mut child = c.spawn().unwrap();
    let t0 = std::time::Instant::now();
    while !killed.join("step-6").exists() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended ({st}) before it could be killed");
        }
        assert!(t0.elapsed().as_secs() < 120, "training did not get to step 6");
        std::thread::sleep(std::time::Duration::from_millis(2));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!killed.join("step-40").exists(), "killed after the end; make the run longer");

    let o = Command::new(env!("CARGO_BIN_EXE_rho")).args(["train", "--quiet", "--resume"]).arg(&killed).output().unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let (a, b) = (metrics(&full), metrics(&killed));
    assert_eq!(b.len(), a.len(), "one metrics line per step");
    for (x, y) in a.iter().zip(&b) {
        for key in ["step", "loss_all", "loss_kept", "kept_frac", "lr", "grad_norm", "tokens_seen"] {
            assert_eq!(x[key], y[key], "{key} at step {}", x["step"]);
        }
    }
    for step in [6, 20, 40] {
        let wa = std::fs::read(full.join(format!("step-{step}/model.safetensors"))).unwrap();
        let wb = std::fs::read(killed.join(format!("step-{step}/model.safetensors"))).unwrap();
        assert!(wa == wb, "step-{step} weights differ after the resume");
    }
    let leftovers: Vec<String> = std::fs::read_dir(&killed)
        .unwrap()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.contains("tmp"))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
}

#[test]
fn mixed_precision_follows_the_f32_run_and_saves_f32_weights() {
    // --dtype bf16: each step's forward and backward in bf16 from f32 master weights.
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("f32"), dir.path().join("bf16"));
    ok(train(&a, &["--steps", "4"]));
    ok(train(&b, &["--steps", "4", "--dtype", "bf16", "--mode", "slm", "--ratio", "1.0", "--reference", &reference()]));
    let (ma, mb) = (metrics(&a), metrics(&b));
    assert_eq!(ma.len(), 4);
    assert_eq!(mb.len(), 4);
    for (x, y) in ma.iter().zip(&mb) {
        let (la, lb) = (x["loss_all"].as_f64().unwrap(), y["loss_all"].as_f64().unwrap());
        // measured: within 0.1% over these 4 steps
        assert!(lb.is_finite() && (la - lb).abs() < 0.01 * la, "step {}: f32 loss {la}, bf16 loss {lb}", x["step"]);
    }
    assert!(ma.iter().zip(&mb).any(|(x, y)| x["loss_all"] != y["loss_all"]), "the bf16 run computed exactly the f32 losses");
    // the bf16 run moved the weights, and they are saved in f32 like the f32 run's
    let wa = candle_core::safetensors::load(a.join("step-4/model.safetensors"), &Device::Cpu).unwrap();
    let wb = candle_core::safetensors::load(b.join("step-4/model.safetensors"), &Device::Cpu).unwrap();
    let name = "model.layers.0.mlp.down_proj.weight";
    let w0 = Weights::open(&fixtures().join("llama/step-200")).unwrap().load(name, DType::F32, &Device::Cpu).unwrap();
    assert_eq!(wb[name].dtype(), DType::F32);
    let moved = (&wb[name] - &w0).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
    assert!(moved > 1e-4, "bf16 training did not move the weights");
    assert_eq!(wa[name].dims(), wb[name].dims());
    // (weights are not compared one by one: AdamW moves each by ~lr whatever the size of its
    // gradient, so rounding flips the direction of the tiny ones)
    // a dtype that is not one
    let o = train(&dir.path().join("bad"), &["--steps", "1", "--dtype", "fp8"]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("--dtype"), "{}", stderr(&o));
}

/// rho builds against third_party/candle-core (Cargo.toml's [patch.crates-io]): candle's
/// backward stores a gradient's first contribution as it is (`GradStore::accumulate`) instead
/// of adding it to zeros. A variable reached by two paths still gets the sum, and
/// `accumulate` inserts, then adds.
#[test]
fn candle_backward_stores_first_gradients_as_they_are() {
    use candle_core::{DType, Device, Tensor, Var};
    let x = Var::new(&[1f32, -2.0, 3.0], &Device::Cpu).unwrap();
    // d/dx sum(2x + x * x) = 2 + 2x
    let y = ((x.as_tensor() * 2.0).unwrap() + x.as_tensor().sqr().unwrap()).unwrap().sum_all().unwrap();
    let mut grads = y.backward().unwrap();
    let g = grads.get(x.as_tensor()).unwrap();
    assert!(g.is_contiguous());
    assert_eq!(g.to_vec1::<f32>().unwrap(), vec![4.0, -2.0, 8.0]);
    let one = Tensor::ones(3, DType::F32, &Device::Cpu).unwrap();
    grads.accumulate(x.as_tensor(), &one).unwrap();
    assert_eq!(grads.get(x.as_tensor()).unwrap().to_vec1::<f32>().unwrap(), vec![5.0, -1.0, 9.0]);
    // a tensor without a gradient gets the contribution itself, a transposed view stored contiguous
    let z = Tensor::zeros((3, 2), DType::F32, &Device::Cpu).unwrap();
    assert!(grads.get(&z).is_none());
    let m = Tensor::arange(0f32, 6.0, &Device::Cpu).unwrap().reshape((2, 3)).unwrap().t().unwrap();
    grads.accumulate(&z, &m).unwrap();
    let stored = grads.get(&z).unwrap();
    assert!(stored.is_contiguous());
    assert_eq!(stored.to_vec2::<f32>().unwrap(), vec![vec![0.0, 3.0], vec![1.0, 4.0], vec![2.0, 5.0]]);
}

#[derive(serde::Deserialize)]
struct GoldenGrad {
    param: String,
    norm: f64,
    head: Vec<f64>,
    loss: f64,
}

/// Training's gradients against PyTorch's: for the first checkpoint of each family,
/// d(mean loss of one 40-token window)/d(every parameter), as make_fixtures.py wrote them
/// (`golden_grads.jsonl`: the gradient's L2 norm and first 8 values). The windows of the
/// sliding layers (8) bind inside the 40 tokens.
#[test]
fn gradients_match_pytorch() {
    for family in ["llama", "neox", "neox-seq", "gpt2", "qwen2", "mistral", "olmo", "olmo2", "olmo3", "smollm3", "qwen3", "neox-pickle"] {
        let dir = fixtures().join(family);
        let losses = std::fs::read_to_string(dir.join("golden_losses.jsonl")).unwrap();
        let first = serde_json::from_str::<serde_json::Value>(losses.lines().next().unwrap()).unwrap()["checkpoint"].as_str().unwrap().to_string();
        let toks: Vec<serde_json::Value> =
            std::fs::read_to_string(dir.join("golden_tokens.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        let ids: Vec<u32> = toks[2]["ids"].as_array().unwrap().iter().take(40).map(|x| x.as_u64().unwrap() as u32).collect();
        let (model, vm) = train_model(&dir.join(&first));
        let n = ids.len();
        let input = Tensor::from_vec(ids, (1, n), &Device::Cpu).unwrap();
        let targets = input.narrow(1, 1, n - 1).unwrap().contiguous().unwrap();
        let logits = model.forward(&input).unwrap();
        let loss = rho::model::loss::train_token_loss(&logits.narrow(1, 0, n - 1).unwrap(), &targets).unwrap().mean_all().unwrap();
        let grads = loss.backward().unwrap();
        let mut golden: Vec<GoldenGrad> =
            std::fs::read_to_string(dir.join("golden_grads.jsonl")).unwrap().lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        // transformers 5 names GPT-NeoX's output projection `lm_head` in memory, `embed_out` in files
        for g in golden.iter_mut().filter(|g| family.starts_with("neox") && g.param == "lm_head.weight") {
            g.param = "embed_out.weight".into();
        }
        let l = loss.to_scalar::<f32>().unwrap() as f64;
        assert!((l - golden[0].loss).abs() < 1e-4, "{family}: loss {l} vs {}", golden[0].loss);
        let vars = vm.data().lock().unwrap();
        // tied output embeddings are one parameter in both
        let names: std::collections::BTreeSet<&str> = vars.keys().map(|s| s.as_str()).collect();
        let want: std::collections::BTreeSet<&str> = golden.iter().map(|g| g.param.as_str()).collect();
        assert_eq!(names, want, "{family}: the trainable parameters are transformers'");
        let mut worst = 0f64;
        for g in &golden {
            let v = &vars[&g.param];
            let t = grads.get(v.as_tensor()).unwrap_or_else(|| panic!("{family}: no gradient for {}", g.param));
            let flat = t.flatten_all().unwrap().to_dtype(DType::F64).unwrap().to_vec1::<f64>().unwrap();
            let norm = flat.iter().map(|x| x * x).sum::<f64>().sqrt();
            let rel = (norm - g.norm).abs() / g.norm.max(1e-12);
            worst = worst.max(rel);
            assert!(rel < 1e-4, "{family} {}: gradient norm {norm} vs PyTorch {}", g.param, g.norm);
            for (i, (a, b)) in flat.iter().zip(&g.head).enumerate() {
                assert!((a - b).abs() <= 1e-6 + 1e-3 * b.abs(), "{family} {}[{i}]: {a} vs PyTorch {b}", g.param);
            }
        }
        eprintln!("{family}: {} parameters, worst relative norm difference {worst:.1e}", golden.len());
    }
}
