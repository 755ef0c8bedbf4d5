//! `rho demo`: the whole idea on a built-in planted-truth corpus, in minutes.
//!
//! 1. generate the corpora (`corpus`), train a byte-level BPE tokenizer on them;
//! 2. phase 1: train a small Llama from scratch on the base corpus;
//! 3. phase 2: continue on the noisy corpus, saving checkpoints (its step-0 is
//!    the phase-1 model);
//! 4. evaluate the phase-2 checkpoints on the validation set and categorize;
//! 5. check the planted classes against the categories (`recovery`);
//! 6. train a reference model on the curated corpus, then a short SLM and CLM run;
//! 7. write the report (`rho report`).
pub mod corpus;
pub mod experiment;
pub mod real;

use crate::dynamics::{self, Category, CategorizeOptions, CategorizeSummary};
use crate::error::{Error, Result, WithPath};
use crate::eval::{self, EvalOptions};
use crate::train::{self, TrainConfig, TrainMode};
use crate::util;
use corpus::{Class, Doc};
use polars::prelude::*;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Sizes of the demo; `DemoConfig::default()` is what `rho demo` runs.
#[derive(Debug, Clone)]
pub struct DemoConfig {
    pub seed: u64,
    pub n_base: usize,
    pub n_noisy: usize,
    pub n_curated: usize,
    pub n_valid: usize,
    pub vocab_size: usize,
    pub hidden: usize,
    pub layers: usize,
    pub seq_len: usize,
    pub batch_tokens: usize,
    pub base_steps: u64,
    pub phase2_steps: u64,
    pub n_checkpoints: u64,
    pub ref_steps: u64,
    pub slm_steps: u64,
    pub lr: f64,
    /// Phase 2 (continual pretraining) peak learning rate.
    pub phase2_lr: f64,
    pub quiet: bool,
}

impl Default for DemoConfig {
    fn default() -> Self {
        DemoConfig {
            seed: 0,
            n_base: 3000,
            n_noisy: 3000,
            n_curated: 1500,
            n_valid: 200,
            vocab_size: 400,
            hidden: 64,
            layers: 2,
            seq_len: 128,
            batch_tokens: 2048,
            base_steps: 400,
            phase2_steps: 96,
            n_checkpoints: 8,
            ref_steps: 60,
            slm_steps: 60,
            lr: 3e-3,
            phase2_lr: 1e-3,
            quiet: false,
        }
    }
}

/// Share of each planted class's validation tokens that landed in its expected category.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct Recovery {
    pub class: Class,
    pub expected: String,
    pub n_tokens: u64,
    pub n_expected: u64,
    pub share: f64,
    /// Counts in H->H, L->H, H->L, L->L order.
    pub counts: [u64; 4],
}

#[derive(Debug, Clone)]
pub struct DemoSummary {
    pub study: PathBuf,
    pub categories: CategorizeSummary,
    pub recovery: Vec<Recovery>,
    /// The report's index.html.
    pub report: PathBuf,
    pub seconds: f64,
}

pub(crate) fn say(cfg: &DemoConfig, t0: &Instant, msg: &str) {
    if !cfg.quiet {
        eprintln!("[{:6.1} s] {msg}", t0.elapsed().as_secs_f64());
    }
}

/// Write documents as JSON Lines with a `text` field.
pub(crate) fn write_jsonl<'a>(path: &Path, texts: impl IntoIterator<Item = &'a str>) -> Result<()> {
    let mut s = String::new();
    for t in texts {
        s.push_str(&serde_json::json!({ "text": t }).to_string());
        s.push('\n');
    }
    util::write_bytes_atomic(path, s.as_bytes())
}

/// Train a byte-level BPE tokenizer on the documents and save it as tokenizer.json.
pub fn train_tokenizer(docs: &[&str], vocab_size: usize, path: &Path) -> Result<()> {
    use tokenizers::models::bpe::{BpeTrainerBuilder, BPE};
    use tokenizers::pre_tokenizers::byte_level::ByteLevel;
    use tokenizers::{AddedToken, NormalizerWrapper, TokenizerImpl};
    let bl = ByteLevel::new(false, false, true);
    let mut tok: TokenizerImpl<BPE, NormalizerWrapper, ByteLevel, ByteLevel, ByteLevel> = TokenizerImpl::new(BPE::default());
    tok.with_pre_tokenizer(Some(bl)).with_post_processor(Some(bl)).with_decoder(Some(bl));
    let mut trainer = BpeTrainerBuilder::new()
        .vocab_size(vocab_size)
        .show_progress(false)
        .special_tokens(vec![AddedToken::from("<|endoftext|>", true)])
        .initial_alphabet(ByteLevel::alphabet().into_iter().collect())
        .build();
    tok.train(&mut trainer, docs.iter()).map_err(|e| Error::msg(format!("tokenizer training failed: {e}")))?;
    let json = tok.to_string(true).map_err(|e| Error::file(path, e.to_string()))?;
    util::write_bytes_atomic(path, json.as_bytes())
}

/// The shape of the small Llama models the demo and the experiments train.
pub(crate) struct LlamaShape {
    pub hidden: usize,
    pub intermediate: usize,
    pub layers: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub seq_len: usize,
}

/// Write the config.json of a Llama of this shape (f32, untied embeddings).
pub(crate) fn write_llama_config(path: &Path, m: &LlamaShape, vocab: usize, eos: u32) -> Result<()> {
    let cfg = serde_json::json!({
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "vocab_size": vocab,
        "hidden_size": m.hidden,
        "intermediate_size": m.intermediate,
        "num_hidden_layers": m.layers,
        "num_attention_heads": m.heads,
        "num_key_value_heads": m.kv_heads,
        "head_dim": m.hidden / m.heads,
        "max_position_embeddings": m.seq_len,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": false,
        "bos_token_id": eos,
        "eos_token_id": eos,
        "torch_dtype": "float32",
    });
    let json = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::msg(e.to_string()))?;
    util::write_bytes_atomic(path, &json)
}

pub(crate) fn train_cfg(cfg: &DemoConfig, data: PathBuf, out: PathBuf, steps: u64) -> TrainConfig {
    TrainConfig {
        data,
        out,
        steps,
        init: None,
        model_config: None,
        tokenizer: None,
        text_field: "text".into(),
        mode: TrainMode::Clm,
        ratio: 0.6,
        reference: None,
        ref_scores: None,
        select: crate::select::Select::Batch,
        save_every: steps,
        seed: cfg.seed,
        lr: cfg.lr,
        min_lr: None,
        warmup: 10.min(steps / 4),
        batch_tokens: cfg.batch_tokens,
        seq_len: Some(cfg.seq_len),
        weight_decay: 0.1,
        grad_clip: 1.0,
        mask_every: steps,
        init_std: 0.02,
        log_every: (steps / 4).max(1),
        device: "cpu".into(),
        dtype: "f32".into(),
        quiet: cfg.quiet,
    }
}

/// What the demo and the experiment share: corpora, tokenizer, model config, the
/// phase-1 base model and the reference model.
pub struct Prepared {
    pub corpus: corpus::Corpus,
    pub noisy: PathBuf,
    pub valid: PathBuf,
    pub tokenizer: PathBuf,
    pub base_ck: PathBuf,
    pub ref_ck: PathBuf,
}

/// Corpora, tokenizer, phase 1 and the reference model.
pub fn prepare(study: &Path, cfg: &DemoConfig, t0: &Instant) -> Result<Prepared> {
    let data = study.join("data");
    let runs = study.join("runs");
    std::fs::create_dir_all(&data).with_path(&data)?;
    std::fs::create_dir_all(&runs).with_path(&runs)?;

    say(cfg, t0, "generating the planted-truth corpora");
    let c = corpus::generate(cfg.seed, cfg.n_base, cfg.n_noisy, cfg.n_curated, cfg.n_valid);
    let (base, noisy, curated, valid) =
        (data.join("base.jsonl"), data.join("noisy.jsonl"), data.join("curated.jsonl"), data.join("valid.jsonl"));
    write_jsonl(&base, c.base.iter().map(|d| d.text.as_str()))?;
    write_jsonl(&noisy, c.noisy.iter().map(|d| d.text.as_str()))?;
    write_jsonl(&curated, c.curated.iter().map(|d| d.text.as_str()))?;
    write_jsonl(&valid, c.valid.iter().map(|d| d.text.as_str()))?;

    say(cfg, t0, &format!("training a BPE tokenizer (vocab {}) on the corpora without their noise", cfg.vocab_size));
    let tok_path = data.join("tokenizer.json");
    let texts: Vec<String> = c.base.iter().chain(&c.noisy).chain(&c.curated).map(|d| d.text_without_noise()).collect();
    let all: Vec<&str> = texts.iter().map(|t| t.as_str()).collect();
    train_tokenizer(&all, cfg.vocab_size, &tok_path)?;
    let tok = crate::data::Tok::from_file(&tok_path)?;
    let eos = tok.eos_id(None).ok_or_else(|| Error::msg("the demo tokenizer has no <|endoftext|>"))?;
    let mcfg = data.join("config.json");
    let shape = LlamaShape { hidden: cfg.hidden, intermediate: cfg.hidden * 3, layers: cfg.layers, heads: 4, kv_heads: 2, seq_len: cfg.seq_len };
    write_llama_config(&mcfg, &shape, tok.vocab_size(), eos)?;

    say(cfg, t0, &format!("phase 1: a {}-layer Llama from scratch on the base corpus, {} steps", cfg.layers, cfg.base_steps));
    let mut p1 = train_cfg(cfg, base.clone(), runs.join("base"), cfg.base_steps);
    p1.model_config = Some(mcfg.clone());
    p1.tokenizer = Some(tok_path.clone());
    train::run_train_with(&p1, None, true, None)?; // force: a re-run of the demo into the same --study starts its runs over
    let base_ck = runs.join("base").join(format!("step-{}", cfg.base_steps));

    say(cfg, t0, &format!("reference model: phase-1 model trained on the curated corpus, {} steps", cfg.ref_steps));
    let mut r = train_cfg(cfg, curated.clone(), runs.join("reference"), cfg.ref_steps);
    r.init = Some(base_ck.clone());
    train::run_train_with(&r, None, true, None)?;
    let ref_ck = runs.join("reference").join(format!("step-{}", cfg.ref_steps));
    Ok(Prepared { corpus: c, noisy, valid, tokenizer: tok_path, base_ck, ref_ck })
}

/// Evaluate a run's checkpoints (a folder of step-N) on the validation set into
/// `study`; `force` re-evaluates checkpoints the study already has (retrained ones).
pub fn eval_run(run: &Path, valid: &Path, tokenizer: &Path, study: &Path, quiet: bool, force: bool) -> Result<()> {
    eval::run_eval(&EvalOptions {
        tokenizer: Some(tokenizer.to_path_buf()),
        batch_tokens: 8192,
        force,
        quiet,
        ..EvalOptions::new(vec![run.to_path_buf()], valid.to_path_buf(), study.to_path_buf())
    })?;
    Ok(())
}

/// Run the whole demo into `study`.
pub fn run_demo(study: &Path, cfg: &DemoConfig) -> Result<DemoSummary> {
    let t0 = Instant::now();
    let p = prepare(study, cfg, &t0)?;
    let runs = study.join("runs");

    say(cfg, &t0, &format!("phase 2: continual pretraining on the noisy corpus, {} steps, {} checkpoints", cfg.phase2_steps, cfg.n_checkpoints));
    let phase2 = runs.join("phase2");
    let mut p2 = train_cfg(cfg, p.noisy.clone(), phase2.clone(), cfg.phase2_steps);
    p2.init = Some(p.base_ck.clone());
    p2.save_every = (cfg.phase2_steps / cfg.n_checkpoints).max(1);
    p2.warmup = 0;
    p2.lr = cfg.phase2_lr;
    train::run_train_with(&p2, None, true, None)?;
    // The phase-2 series starts with the phase-1 model.
    copy_model(&p.base_ck, &phase2.join("step-0"))?;

    say(cfg, &t0, "evaluating the phase-2 checkpoints on the validation set");
    eval_run(&phase2, &p.valid, &p.tokenizer, study, cfg.quiet, true)?;
    let categories = dynamics::categorize_study(study, &CategorizeOptions::default())?;
    let recovery = recovery(study, &p.corpus.valid)?;

    say(cfg, &t0, &format!("SLM (ratio 0.6, by excess loss) and CLM runs on the noisy corpus, {} steps each", cfg.slm_steps));
    let mut slm = train_cfg(cfg, p.noisy.clone(), runs.join("slm"), cfg.slm_steps);
    slm.init = Some(p.base_ck.clone());
    slm.mode = TrainMode::Slm;
    slm.reference = Some(p.ref_ck.clone());
    slm.mask_every = (cfg.slm_steps / 4).max(1);
    train::run_train_with(&slm, None, true, None)?;
    let mut clm = train_cfg(cfg, p.noisy.clone(), runs.join("clm"), cfg.slm_steps);
    clm.init = Some(p.base_ck.clone());
    train::run_train_with(&clm, None, true, None)?;

    say(cfg, &t0, "writing the report (PNG charts and index.html)");
    let report = crate::report::run_report(study, None)?;

    let summary = DemoSummary { study: study.to_path_buf(), categories, recovery, report: report.index, seconds: t0.elapsed().as_secs_f64() };
    say(cfg, &t0, "done");
    Ok(summary)
}

/// Copy the HF files of a checkpoint (not the optimizer state).
pub(crate) fn copy_model(from: &Path, to: &Path) -> Result<()> {
    if let Some(parent) = to.parent() {
        std::fs::create_dir_all(parent).with_path(parent)?;
    }
    let tmp = crate::temp::name(to, crate::temp::Kind::Tmp)?;
    crate::temp::create_dir(&tmp).with_path(&tmp)?;
    for f in ["config.json", "model.safetensors", "tokenizer.json"] {
        std::fs::copy(from.join(f), tmp.join(f)).with_path(from.join(f))?;
    }
    if to.exists() {
        std::fs::remove_dir_all(to).with_path(to)?;
    }
    std::fs::rename(&tmp, to).with_path(to)
}

/// Label every scored validation token with its planted class (by the class of its
/// first byte), write `token_classes.parquet`, and measure the recovery.
pub fn recovery(study: &Path, valid: &[Doc]) -> Result<Vec<Recovery>> {
    let toks = util::read_parquet(&study.join(eval::study::TOKENS))?;
    let traj = util::read_parquet(&study.join(eval::study::TRAJECTORIES))?;
    let u32s = |df: &DataFrame, c: &str, p: &Path| -> Result<Vec<u32>> {
        Ok(df.column(c).with_path(p)?.u32().with_path(p)?.into_no_null_iter().collect())
    };
    let tp = study.join(eval::study::TOKENS);
    let (doc, start) = (u32s(&toks, "doc", &tp)?, u32s(&toks, "start", &tp)?);
    let classes: Vec<Class> = doc.iter().zip(&start).map(|(&d, &s)| valid[d as usize].class_at(s as usize)).collect();
    let trp = study.join(eval::study::TRAJECTORIES);
    let cats: Vec<Category> = traj
        .column("category")
        .with_path(&trp)?
        .str()
        .with_path(&trp)?
        .into_no_null_iter()
        .map(|s| s.parse::<Category>())
        .collect::<Result<_>>()?;
    if cats.len() != classes.len() {
        return Err(Error::file(&trp, "rows do not match tokens.parquet"));
    }
    let mut df = DataFrame::new(vec![
        toks.column("seq").with_path(&tp)?.clone(),
        toks.column("pos").with_path(&tp)?.clone(),
        Column::new("class".into(), classes.iter().map(|c| c.as_str()).collect::<Vec<_>>()),
    ])?;
    util::write_parquet(&study.join("token_classes.parquet"), &mut df)?;
    let mut out = Vec::new();
    for class in Class::PLANTED {
        let mut counts = [0u64; 4];
        for (c, cat) in classes.iter().zip(&cats) {
            if *c == class {
                counts[cat.index()] += 1;
            }
        }
        let expected = class.expected().unwrap();
        let n: u64 = counts.iter().sum();
        out.push(Recovery {
            class,
            expected: expected.as_file_str().into(),
            n_tokens: n,
            n_expected: counts[expected.index()],
            share: counts[expected.index()] as f64 / n.max(1) as f64,
            counts,
        });
    }
    Ok(out)
}

/// The recovery table as text.
pub fn recovery_table(rec: &[Recovery]) -> String {
    let mut s = String::from("planted class  expected  tokens  in expected   H→H   L→H   H→L   L→L\n");
    for r in rec {
        let e: Category = r.expected.parse().unwrap();
        s.push_str(&format!(
            "{:<13}  {:<8}  {:>6}  {:>10.1}%  {:>4} {:>5} {:>5} {:>5}\n",
            r.class.as_str(),
            e.to_string(),
            r.n_tokens,
            100.0 * r.share,
            r.counts[0],
            r.counts[1],
            r.counts[2],
            r.counts[3]
        ));
    }
    s
}
