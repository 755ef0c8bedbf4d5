//! Synthetic study generator: writes a study folder exactly as `rho eval` writes it,
//! without a model, at any size (for benchmarks of `rho categorize`, `report`,
//! `audit` and the TUI).
//!
//! ```sh
//! cargo run --release --example synth_study -- --out DIR --tokens 1000000 --checkpoints 16 [--seed S]
//!     [--step-every 1000] [--no-data] [--force] [--shards N]
//! ```
//!
//! CLI (stable; other benchmarks call it):
//! - `--out DIR`         the study folder to write (created; refused if it already holds
//!   a `study.json`, unless `--force`, which first removes the study's files).
//! - `--tokens N`        scored tokens (rows of every Parquet file), exactly N. Default 1000000.
//! - `--checkpoints K`   checkpoints (losses files), K >= 1. Default 16.
//! - `--seed S`          everything is a deterministic function of S. Default 0.
//! - `--step-every M`    checkpoint `i` (1-based) is named `step-{i*M}` with step i*M. Default 1000.
//! - `--no-data`         do not write `DIR/data.jsonl` (the report's passage then falls
//!   back to the token texts).
//! - `--shards N`        write each checkpoint as N parts, as `rho eval --shard I/N` does
//!   (`losses/checkpoint=<name>/part-<I>-of-<N>.parquet` + its JSON record; rows split
//!   evenly), instead of one file. Default 1 (one file).
//!
//! What it writes (the layout of `src/eval/study.rs`, the column types of
//! `src/eval/mod.rs`, through `rho::util::write_parquet` and `Manifest::save`):
//! - `DIR/data.jsonl`: the documents, one `{"text": ...}` per line (unless `--no-data`);
//! - `DIR/tokens.parquet`: `seq, pos, doc, token_id` u32, `text` str, `start, end` u32;
//!   one row per scored token: every token of a document but its first (pos >= 1), as
//!   `rho eval` without `--pack` and with no BOS; `seq = doc` = document index;
//!   `start..end` is the token's byte span in its document's text;
//! - `DIR/losses/step-*.parquet`: `checkpoint` str, `step` i64, `seq, pos, token_id`
//!   u32, `loss` f32, same rows in the same order;
//! - `DIR/study.json`: the `Manifest`, with `settings` as `rho eval` records them (data
//!   sha256, text field, a tokenizer fingerprint of the synthetic vocabulary, pack,
//!   context, max_tokens, dtype) plus a `synthetic` entry naming this generator, and
//!   the fingerprint = sha256 of the settings JSON, as `rho eval` computes it.
//!
//! Documents: 40 to ~1000 tokens (most short), from a vocabulary of ~600 token texts
//! (words with and without a leading space, digits, punctuation, newlines), drawn
//! with a Zipf-like law. Loss trajectories: each token gets a class, mostly decided
//! by its token id (so text filters find class-typical tokens) -- falls (high to low,
//! exponential decay), rises (low to high), stays high (noisy), stays low (some
//! with spikes) -- plus Gaussian noise per checkpoint. The classes are the
//! generator's intent; `rho categorize` decides the categories by its rule.
//!
//! Memory: the rows (5 u32 per token) and the token texts (borrowed from the
//! vocabulary) are held; each losses file is generated from a hash of (seed, token,
//! checkpoint) and written before the next, so one f32 column at a time.

use clap::Parser;
use rho::eval::plan::Rows;
use rho::eval::study::{CheckpointEntry, Manifest, LOSSES_DIR, TOKENS};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

#[derive(Parser, Debug)]
#[command(about = "Write a synthetic study (the format of `rho eval`) for benchmarks")]
struct Args {
    /// Study folder to write.
    #[arg(long)]
    out: PathBuf,
    /// Scored tokens (rows).
    #[arg(long, default_value_t = 1_000_000)]
    tokens: usize,
    /// Checkpoints (losses files).
    #[arg(long, default_value_t = 16)]
    checkpoints: usize,
    /// Seed of everything.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Step of checkpoint i (1-based) = i * this.
    #[arg(long, default_value_t = 1000)]
    step_every: i64,
    /// Do not write data.jsonl.
    #[arg(long)]
    no_data: bool,
    /// Overwrite an existing study in --out.
    #[arg(long)]
    force: bool,
    /// Write each checkpoint in this many parts (a sharded study).
    #[arg(long, default_value_t = 1)]
    shards: u32,
}

/// SplitMix64 finaliser.
fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// A uniform in [0, 1) from a hash of (a, b, c).
fn unif(a: u64, b: u64, c: u64) -> f64 {
    let h = mix(mix(mix(a) ^ b.wrapping_mul(0xD6E8_FEB8_6659_FD93)) ^ c.wrapping_mul(0xA076_1D64_78BD_642F));
    (h >> 11) as f64 / (1u64 << 53) as f64
}

/// A standard normal from a hash of (a, b, c) (Box-Muller).
fn normal(a: u64, b: u64, c: u64) -> f64 {
    let u1 = unif(a, b, c.wrapping_mul(2)).max(1e-300);
    let u2 = unif(a, b, c.wrapping_mul(2) + 1);
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// Sequential random numbers for the documents.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(1);
        unif(self.0, 0x5EED, 7)
    }
}

const WORDS: &[&str] = &[
    "the", "of", "and", "to", "a", "in", "is", "that", "for", "it", "as", "with", "be", "on", "not", "this", "by",
    "are", "or", "at", "from", "which", "we", "can", "an", "if", "has", "have", "then", "so", "let", "there", "each",
    "number", "sum", "value", "equal", "equals", "total", "find", "how", "many", "what", "answer", "times", "minus",
    "plus", "divided", "square", "root", "function", "solve", "equation", "integer", "prime", "factor", "triangle",
    "circle", "area", "length", "angle", "point", "line", "probability", "ratio", "percent", "dollars", "apples",
    "books", "hours", "minutes", "days", "week", "year", "price", "cost", "each", "more", "less", "than", "twice",
    "half", "third", "first", "second", "last", "next", "after", "before", "she", "he", "they", "her", "his", "their",
    "Mr", "Mrs", "Elizabeth", "Darcy", "Emma", "Anne", "said", "could", "would", "should", "must", "very", "much",
    "little", "great", "good", "own", "never", "always", "nothing", "everything", "sympy", "import", "symbols",
    "expand", "simplify", "matrix", "expr", "x", "y", "z", "n", "k", "f", "def", "return", "print",
];

/// The synthetic vocabulary: id -> text.
fn vocabulary() -> Vec<String> {
    let mut v: Vec<String> = vec!["\n".into(), "\n\n".into(), ".".into(), ",".into(), "?".into(), " =".into(), " +".into(), " $".into()];
    for d in 0..10 {
        v.push(format!(" {d}"));
        v.push(format!("{d}"));
    }
    let syll = ["ka", "lo", "mi", "ne", "ra", "tu", "vo", "sha", "qui", "ber", "den", "ion"];
    let mut words: Vec<String> = WORDS.iter().map(|s| s.to_string()).collect();
    for a in syll {
        for b in syll {
            words.push(format!("{a}{b}"));
        }
    }
    let mut seen = std::collections::HashSet::new();
    words.retain(|w| seen.insert(w.clone()));
    for w in &words {
        v.push(format!(" {w}"));
    }
    for w in &words {
        v.push(w.clone());
    }
    v
}

/// Trajectory classes (the generator's intent).
#[derive(Clone, Copy)]
enum Class {
    Falls,
    Rises,
    High,
    Low,
}

fn class_from(u: f64) -> Class {
    // Shares before the token-id bias: low 50%, high 17%, falls 23%, rises 10%
    // (noise moves some tokens across: `rho categorize` finds roughly Rho-1's shares).
    if u < 0.50 {
        Class::Low
    } else if u < 0.67 {
        Class::High
    } else if u < 0.90 {
        Class::Falls
    } else {
        Class::Rises
    }
}

/// Loss of token `t` (id `id`) at checkpoint `c` of `k`.
fn loss(seed: u64, t: u64, id: u32, c: usize, k: usize) -> f32 {
    // 70% of the tokens follow their id's class, 30% one of their own.
    let class = if unif(seed, t, 1) < 0.7 { class_from(unif(seed ^ 0xC1A55, id as u64, 2)) } else { class_from(unif(seed, t, 3)) };
    let x = if k > 1 { c as f64 / (k - 1) as f64 } else { 0.0 };
    let (u1, u2, u3, u4) = (unif(seed, t, 11), unif(seed, t, 12), unif(seed, t, 13), unif(seed, t, 14));
    let (base, sd) = match class {
        Class::Falls => {
            let (start, end, rate) = (3.0 + 5.0 * u1, 0.3 + 1.5 * u2, 1.0 + 4.0 * u3);
            (end + (start - end) * (-rate * x).exp(), 0.05 + 0.3 * u4)
        }
        Class::Rises => {
            let (start, rise) = (0.2 + 1.5 * u1, 0.8 + 2.5 * u2);
            (start + rise * x.powf(0.5 + u3), 0.05 + 0.3 * u4)
        }
        Class::High => (3.5 + 5.0 * u1 + 0.3 * (u2 - 0.5) * x, 0.1 + 0.4 * u4),
        Class::Low => {
            let spiky = u3 < 0.05;
            (0.02 + 1.2 * u1 * u1 + 0.2 * (u2 - 0.5) * x, if spiky { 0.8 } else { 0.02 + 0.25 * u4 })
        }
    };
    (base + sd * normal(seed, t, 100 + c as u64)).max(1e-4) as f32
}

fn main() {
    if let Err(e) = run(Args::parse()) {
        eprintln!("synth_study: {e}");
        std::process::exit(1);
    }
}

fn run(a: Args) -> rho::Result<()> {
    if a.tokens == 0 || a.checkpoints == 0 {
        return Err(rho::Error::msg("--tokens and --checkpoints must be at least 1"));
    }
    let t0 = Instant::now();
    let out = &a.out;
    if Manifest::path(out).exists() {
        if !a.force {
            return Err(rho::Error::file(Manifest::path(out), "a study is already here (use --force to overwrite)"));
        }
        for f in ["study.json", "tokens.parquet", "trajectories.parquet", "categories.json", "data.jsonl"] {
            let _ = std::fs::remove_file(out.join(f));
        }
        let _ = std::fs::remove_dir_all(out.join(LOSSES_DIR));
        let _ = std::fs::remove_dir_all(out.join("report"));
    }
    std::fs::create_dir_all(out.join(LOSSES_DIR)).map_err(|e| rho::Error::io(out, e))?;
    let out = std::fs::canonicalize(out).map_err(|e| rho::Error::io(out, e))?;

    // Documents -> rows (+ data.jsonl).
    let vocab = vocabulary();
    let n_pre = 8 + 20; // punctuation and digits
    let n_words = (vocab.len() - n_pre) / 2;
    let (space_words, bare_words) = (n_pre as u32, (n_pre + n_words) as u32);
    let mut rng = Rng(mix(a.seed ^ 0xD0C5));
    let data_path = out.join("data.jsonl");
    let mut data = if a.no_data {
        None
    } else {
        Some(std::io::BufWriter::new(std::fs::File::create(&data_path).map_err(|e| rho::Error::io(&data_path, e))?))
    };
    let mut rows = Rows::default();
    let mut doc = 0u32;
    // Zipf-like word choice: rank = n * u^2.5.
    let word = |u: f64| (n_words as f64 * u.powf(2.5)).min(n_words as f64 - 1.0) as u32;
    while rows.len() < a.tokens {
        let u = rng.next();
        let want = 40 + (960.0 * u * u * u) as usize; // tokens in the document (most short)
        let len = want.min(a.tokens - rows.len() + 1);
        let mut text = String::new();
        let mut prev_end_sentence = true;
        for p in 0..len {
            let r = rng.next();
            let id = if prev_end_sentence {
                prev_end_sentence = false;
                bare_words + word(rng.next())
            } else if r < 0.07 {
                prev_end_sentence = rng.next() < 0.3;
                if prev_end_sentence {
                    if rng.next() < 0.5 { 0 } else { 1 }
                } else {
                    2
                }
            } else if r < 0.11 {
                3
            } else if r < 0.12 {
                4
            } else if r < 0.16 {
                5 + (rng.next() * 3.0) as u32
            } else if r < 0.22 {
                8 + 2 * (rng.next() * 10.0) as u32 + u32::from(rng.next() < 0.3)
            } else {
                space_words + word(rng.next())
            };
            let s = &vocab[id as usize];
            let start = text.len() as u32;
            text.push_str(s);
            if p >= 1 {
                rows.seq.push(doc);
                rows.pos.push(p as u32);
                rows.doc.push(doc);
                rows.token_id.push(id);
                rows.start.push(start);
                rows.end.push(text.len() as u32);
            }
        }
        if let Some(w) = data.as_mut() {
            serde_json::to_writer(&mut *w, &serde_json::json!({ "text": text })).map_err(|e| rho::Error::msg(e.to_string()))?;
            w.write_all(b"\n").map_err(|e| rho::Error::io(&data_path, e))?;
        }
        doc += 1;
    }
    if let Some(mut w) = data.take() {
        w.flush().map_err(|e| rho::Error::io(&data_path, e))?;
    }
    let n = rows.len();

    // tokens.parquet, written by rho eval's own function.
    {
        let text: Vec<&str> = rows.token_id.iter().map(|&id| vocab[id as usize].as_str()).collect();
        rho::eval::write_tokens_table(&out.join(TOKENS), &rows, text)?;
    }
    drop(std::mem::take(&mut rows.doc));
    drop(std::mem::take(&mut rows.start));
    drop(std::mem::take(&mut rows.end));

    let data_sha = if a.no_data { rho::util::sha256_hex(b"") } else { rho::util::sha256_file(&data_path)? };
    let settings = serde_json::json!({
        "data_sha256": data_sha,
        "text_field": "text",
        "tokenizer_sha256": rho::util::sha256_hex(vocab.join("\u{0}").as_bytes()),
        "pack": false,
        "context": 2048,
        "max_tokens": serde_json::Value::Null,
        "dtype": "f32",
        "synthetic": { "generator": "examples/synth_study.rs", "seed": a.seed, "tokens": a.tokens, "checkpoints": a.checkpoints },
    });
    let fingerprint = rho::util::sha256_hex(settings.to_string().as_bytes());
    let mut manifest = Manifest {
        fingerprint: fingerprint.clone(),
        data: if a.no_data { PathBuf::from("synthetic (no data file)") } else { data_path.clone() },
        settings,
        checkpoints: Vec::new(),
        vocab_size: None,
    };
    manifest.save(&out)?;

    // One losses file at a time, written by rho eval's own function.
    for c in 0..a.checkpoints {
        let step = (c as i64 + 1) * a.step_every;
        let name = format!("step-{step}");
        let losses: Vec<f32> =
            (0..n).map(|t| loss(a.seed, t as u64, rows.token_id[t], c, a.checkpoints)).collect();
        let mean_loss = losses.iter().map(|&x| x as f64).sum::<f64>() / n as f64;
        if a.shards > 1 {
            for i in 0..a.shards {
                let sh = rho::eval::Shard { index: i, count: a.shards };
                let r = (i as usize * n / a.shards as usize)..((i as usize + 1) * n / a.shards as usize);
                let part_losses = &losses[r.clone()];
                let p = rho::eval::study::part_path(&out, &name, sh, "parquet");
                let sha256 = rho::eval::write_losses(&p, &name, Some(step), &rows.slice(r.clone()), part_losses)?;
                let rec = rho::eval::study::PartEntry {
                    name: name.clone(),
                    step: Some(step),
                    tokens_seen: None,
                    stage: None,
                    order: Some(c as u32),
                    after: c.checked_sub(1).map(|p| format!("step-{}", (p as i64 + 1) * a.step_every)),
                    path: Path::new("synthetic").join(&name),
                    fingerprint: fingerprint.clone(),
                    shard: i,
                    shards: a.shards,
                    row_start: r.start as u64,
                    n_tokens: r.len() as u64,
                    loss_sum: part_losses.iter().map(|&x| x as f64).sum(),
                    sha256: Some(sha256),
                };
                let bytes = serde_json::to_vec_pretty(&rec).unwrap();
                rho::util::write_bytes_atomic(&rho::eval::study::part_path(&out, &name, sh, "json"), &bytes)?;
            }
            manifest.save(&out)?;
            eprintln!("  {name}: {n} tokens in {} parts, mean loss {mean_loss:.4}", a.shards);
            continue;
        }
        let sha256 = rho::eval::write_losses(&Manifest::losses_path(&out, &name), &name, Some(step), &rows, &losses)?;
        // Written in training order: pushed last, kept last.
        manifest.checkpoints.push(CheckpointEntry {
            name: name.clone(),
            step: Some(step),
            tokens_seen: None,
            stage: None,
            path: Path::new("synthetic").join(&name),
            fingerprint: fingerprint.clone(),
            n_tokens: n as u64,
            mean_loss,
            shards: None,
            sha256: Some(sha256),
        });
        manifest.save(&out)?;
        eprintln!("  {name}: {n} tokens, mean loss {mean_loss:.4}");
    }
    eprintln!(
        "synth_study: {} ({n} tokens in {doc} documents, {} checkpoints, seed {}) in {:.1} s",
        out.display(),
        a.checkpoints,
        a.seed,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}
