//! Data formats, --pack, --max-tokens, dtypes and categorize, through the binary.

mod common;
use candle_core::{DType, Device, Tensor};
use common::*;
use rho::model::{loss::per_token_loss, Checkpoint, Mode};

fn eval(args: &[&str]) -> std::process::Output {
    let mut a = vec!["eval", "--quiet"];
    a.extend_from_slice(args);
    let out = rho(&a);
    assert!(out.status.success(), "{}", stderr(&out));
    out
}

fn losses(study: &std::path::Path, ckpt: &str) -> Vec<f32> {
    let df = rho::util::read_parquet(&study.join(format!("losses/{ckpt}.parquet"))).unwrap();
    df.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect()
}

#[test]
fn parquet_and_jsonl_data_give_the_same_study() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let series = fixtures().join("gpt2");
    eval(&["--checkpoints", series.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", a.to_str().unwrap()]);
    let pq = fixtures().join("data/val.parquet");
    eval(&["--checkpoints", series.to_str().unwrap(), "--data", pq.to_str().unwrap(), "--study", b.to_str().unwrap()]);
    for c in ["checkpoint-10", "checkpoint-20", "checkpoint-30"] {
        assert_eq!(losses(&a, c), losses(&b, c));
    }
}

#[test]
fn plain_text_documents_are_separated_by_blank_lines() {
    let dir = tempfile::tempdir().unwrap();
    let txt = dir.path().join("val.txt");
    std::fs::write(&txt, "The fox runs.\nThe dog sleeps.\n\n\nLet x = 3. Then x + 1 = 4.\n").unwrap();
    let study = dir.path().join("s");
    eval(&["--checkpoints", fixtures().join("neox/step1000").to_str().unwrap(), "--data", txt.to_str().unwrap(), "--study", study.to_str().unwrap()]);
    let df = rho::util::read_parquet(&study.join("tokens.parquet")).unwrap();
    let seqs: Vec<u32> = df.column("seq").unwrap().u32().unwrap().into_no_null_iter().collect();
    assert_eq!(seqs.first(), Some(&0));
    assert_eq!(seqs.last(), Some(&1));
}

#[test]
fn max_tokens_truncates_and_explicit_checkpoints_keep_order() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    let l = fixtures().join("llama");
    eval(&[
        "--checkpoints", l.join("step-200").to_str().unwrap(), l.join("step-0").to_str().unwrap(),
        "--data", val_data().to_str().unwrap(), "--study", study.to_str().unwrap(), "--max-tokens", "37",
    ]);
    assert_eq!(losses(&study, "step-0").len(), 37);
    let m = rho::eval::study::Manifest::load(&study).unwrap();
    let names: Vec<&str> = m.checkpoints.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["step-200", "step-0"], "the order given is kept (never re-sorted by step)");
}

/// --pack: documents joined with EOS and cut into context-long windows; each window's
/// losses equal a direct forward pass of our model over that window.
#[test]
fn pack_scores_full_windows() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    let ck = fixtures().join("llama/step-0");
    eval(&["--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", study.to_str().unwrap(), "--pack", "--context", "32"]);
    let toks = rho::util::read_parquet(&study.join("tokens.parquet")).unwrap();
    let seq: Vec<u32> = toks.column("seq").unwrap().u32().unwrap().into_no_null_iter().collect();
    let pos: Vec<u32> = toks.column("pos").unwrap().u32().unwrap().into_no_null_iter().collect();
    let ids: Vec<u32> = toks.column("token_id").unwrap().u32().unwrap().into_no_null_iter().collect();
    let ours = losses(&study, "step-0");
    // Rebuild the stream from the tokenizer, as documented: doc ids + EOS (id 0).
    let tok = rho::data::Tok::from_file(&ck.join("tokenizer.json")).unwrap();
    let docs = rho::data::read_documents(&val_data(), "text").unwrap();
    let mut stream = Vec::new();
    for d in &docs {
        stream.extend(tok.encode(d).unwrap().ids);
        stream.push(0);
    }
    let n_windows = stream.len().div_ceil(32);
    assert_eq!(*seq.last().unwrap() as usize + 1, n_windows);
    assert!(pos.iter().all(|&p| (1..32).contains(&p)));
    let model = Checkpoint::open(&ck).unwrap().load(DType::F32, &Device::Cpu, Mode::Eval).unwrap();
    for w in 0..n_windows {
        let win = &stream[w * 32..((w + 1) * 32).min(stream.len())];
        let input = Tensor::new(win, &Device::Cpu).unwrap().unsqueeze(0).unwrap();
        let logits = model.forward(&input).unwrap();
        let n = win.len();
        let l = per_token_loss(&logits.narrow(1, 0, n - 1).unwrap(), &input.narrow(1, 1, n - 1).unwrap()).unwrap();
        let l: Vec<f32> = l.squeeze(0).unwrap().to_vec1().unwrap();
        let rows: Vec<usize> = (0..seq.len()).filter(|&i| seq[i] as usize == w).collect();
        assert_eq!(rows.len(), n - 1);
        for (k, &i) in rows.iter().enumerate() {
            assert_eq!(ids[i], win[k + 1]);
            assert!((ours[i] - l[k]).abs() < 1e-5, "window {w} pos {}", k + 1);
        }
    }
}

#[test]
fn bf16_is_close_to_f32() {
    let dir = tempfile::tempdir().unwrap();
    let (a, b) = (dir.path().join("a"), dir.path().join("b"));
    let ck = fixtures().join("llama/step-100");
    eval(&["--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", a.to_str().unwrap()]);
    eval(&["--checkpoints", ck.to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", b.to_str().unwrap(), "--dtype", "bf16"]);
    let (x, y) = (losses(&a, "step-100"), losses(&b, "step-100"));
    let mean_abs = x.iter().zip(&y).map(|(p, q)| (p - q).abs() as f64).sum::<f64>() / x.len() as f64;
    assert!(mean_abs < 0.05, "bf16 drifts from f32 by {mean_abs} on average");
    assert!(x != y, "bf16 really ran in bf16");
}

#[test]
fn categorize_after_eval_prints_shares_and_json() {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("s");
    eval(&["--checkpoints", fixtures().join("neox").to_str().unwrap(), "--data", val_data().to_str().unwrap(), "--study", study.to_str().unwrap()]);
    let out = rho(&["categorize", "--study", study.to_str().unwrap()]);
    assert!(out.status.success(), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    for c in ["H→H", "L→H", "H→L", "L→L"] {
        assert!(text.contains(c), "{text}");
    }
    let out = rho(&["categorize", "--study", study.to_str().unwrap(), "--json", "--threshold", "0.5"]);
    assert!(out.status.success(), "{}", stderr(&out));
    let s: rho::dynamics::CategorizeSummary = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(s.total, 496);
    assert_eq!(s.threshold, 0.5);
    assert_eq!(s.categories.iter().map(|c| c.count).sum::<u64>(), 496);
    let df = rho::util::read_parquet(&study.join("trajectories.parquet")).unwrap();
    assert_eq!(df.height(), 496);
    // Losses fall along this series: most tokens are H->L.
    assert!(s.share(rho::dynamics::Category::HL) > 0.3, "{s:?}");
    // Wrong flags are errors naming the flag.
    let out = rho(&["categorize", "--study", study.to_str().unwrap(), "--checkpoints", "step1000,nope"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("--checkpoints") && stderr(&out).contains("nope"), "{}", stderr(&out));
}
