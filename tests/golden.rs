//! Per-token losses of our own model code against transformers' golden numbers
//! (fixtures/ written by scripts/make_fixtures.py: each checkpoint loaded from disk
//! by transformers in float32, eager attention).

mod common;
use common::*;
use polars::prelude::*;
use std::collections::HashMap;

#[derive(serde::Deserialize)]
struct GoldenLoss {
    checkpoint: String,
    seq: u32,
    pos: u32,
    token_id: u32,
    loss: f64,
}

#[derive(serde::Deserialize)]
struct GoldenTokens {
    seq: u32,
    ids: Vec<u32>,
    offsets: Vec<(u32, u32)>,
}

fn read_jsonl<T: serde::de::DeserializeOwned>(p: &std::path::Path) -> Vec<T> {
    std::fs::read_to_string(p)
        .unwrap()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn col_u32(df: &DataFrame, c: &str) -> Vec<u32> {
    df.column(c).unwrap().u32().unwrap().into_no_null_iter().collect()
}

/// Evaluate a family's series with the real binary and compare every loss.
fn check_family(family: &str, n_ckpt: usize) {
    let dir = tempfile::tempdir().unwrap();
    let study = dir.path().join("study");
    let series = fixtures().join(family);
    let out = rho(&[
        "eval",
        "--checkpoints",
        series.to_str().unwrap(),
        "--data",
        val_data().to_str().unwrap(),
        "--study",
        study.to_str().unwrap(),
        "--batch-tokens",
        "150",
        "--quiet",
    ]);
    assert!(out.status.success(), "{family}: {}", stderr(&out));

    let golden: Vec<GoldenLoss> = read_jsonl(&series.join("golden_losses.jsonl"));
    let mut by_ckpt: HashMap<&str, Vec<&GoldenLoss>> = HashMap::new();
    for g in &golden {
        by_ckpt.entry(g.checkpoint.as_str()).or_default().push(g);
    }
    assert_eq!(by_ckpt.len(), n_ckpt, "{family}: golden checkpoints");
    let mut max_diff = 0f64;
    for (ckpt, rows) in &by_ckpt {
        let df = rho::util::read_parquet(&study.join("losses").join(format!("{ckpt}.parquet"))).unwrap();
        assert_eq!(df.height(), rows.len(), "{family}/{ckpt}: number of scored tokens");
        let seq = col_u32(&df, "seq");
        let pos = col_u32(&df, "pos");
        let tid = col_u32(&df, "token_id");
        let loss: Vec<f32> = df.column("loss").unwrap().f32().unwrap().into_no_null_iter().collect();
        let mut golden_rows = rows.clone();
        golden_rows.sort_by_key(|g| (g.seq, g.pos));
        for (i, g) in golden_rows.iter().enumerate() {
            assert_eq!((seq[i], pos[i], tid[i]), (g.seq, g.pos, g.token_id), "{family}/{ckpt} row {i}");
            let d = (loss[i] as f64 - g.loss).abs();
            max_diff = max_diff.max(d);
            assert!(d <= 1e-4, "{family}/{ckpt} seq {} pos {}: ours {} transformers {}", g.seq, g.pos, loss[i], g.loss);
        }
    }
    eprintln!("{family}: {} losses, max |diff| = {max_diff:.2e}", golden.len());

    // Tokens and byte spans agree with the tokenizers library.
    let toks: Vec<GoldenTokens> = read_jsonl(&series.join("golden_tokens.jsonl"));
    let df = rho::util::read_parquet(&study.join("tokens.parquet")).unwrap();
    let (seq, pos, tid) = (col_u32(&df, "seq"), col_u32(&df, "pos"), col_u32(&df, "token_id"));
    let (start, end) = (col_u32(&df, "start"), col_u32(&df, "end"));
    let by_seq: HashMap<u32, &GoldenTokens> = toks.iter().map(|t| (t.seq, t)).collect();
    for i in 0..df.height() {
        let g = by_seq[&seq[i]];
        let p = pos[i] as usize;
        assert_eq!(tid[i], g.ids[p]);
        assert_eq!((start[i], end[i]), g.offsets[p], "seq {} pos {p}", seq[i]);
    }
}

#[test]
fn llama_gqa_bf16_and_sharded_match_transformers() {
    let series = fixtures().join("llama");
    assert!(series.join("step-200/model.safetensors.index.json").exists(), "the sharded fixture");
    check_family("llama", 3);
}

#[test]
fn neox_partial_rotary_parallel_residual_matches_transformers() {
    check_family("neox", 3);
}

#[test]
fn neox_sequential_residual_matches_transformers() {
    check_family("neox-seq", 1);
}

#[test]
fn gpt2_tied_embeddings_matches_transformers() {
    check_family("gpt2", 3);
}

#[test]
fn qwen2_attention_bias_matches_transformers() {
    check_family("qwen2", 1);
}

#[test]
fn mistral_matches_transformers() {
    check_family("mistral", 1);
}

#[test]
fn olmo_no_affine_norm_clip_qkv_and_biases_match_transformers() {
    check_family("olmo", 2);
}

#[test]
fn olmo2_post_norms_and_whole_qk_norm_sharded_and_bf16_match_transformers() {
    let series = fixtures().join("olmo2");
    assert!(series.join("stage1-step600-tokens3B/model.safetensors.index.json").exists(), "the sharded fixture");
    check_family("olmo2", 3);
}

#[test]
fn olmo3_sliding_layer_with_its_own_rope_matches_transformers() {
    check_family("olmo3", 2);
}

#[test]
fn smollm3_layer_without_rope_and_tied_embeddings_match_transformers() {
    check_family("smollm3", 1);
}

#[test]
fn qwen3_per_head_qk_norm_and_sliding_layer_match_transformers() {
    check_family("qwen3", 2);
}

#[test]
fn pythia_float16_pickles_sharded_with_old_buffers_match_transformers() {
    // step0: one pytorch_model.bin; step512: two shards and pytorch_model.bin.index.json;
    // step1000: model.safetensors beside a pytorch_model.bin of other weights (the
    // safetensors must be the one read). Every .bin carries attention.bias,
    // attention.masked_bias and rotary_emb.inv_freq, which the model computes.
    let series = fixtures().join("neox-pickle");
    assert!(series.join("step512/pytorch_model.bin.index.json").exists(), "the sharded pickle");
    assert!(series.join("step1000/pytorch_model.bin").exists() && series.join("step1000/model.safetensors").exists());
    check_family("neox-pickle", 3);
}
