//! The packed training stream: documents joined with EOS and cut into windows of
//! `seq_len` tokens (exactly `rho eval --pack --context seq_len`), and the order
//! in which training visits them.

use crate::data::{read_documents, Tok};
use crate::error::{Error, Result};
use crate::eval::plan::{plan_packed, Rows, Unit};
use crate::util;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use std::path::Path;

pub struct Stream {
    /// One unit per window; unit i's targets are rows `row_start..row_start + n_scored`.
    pub units: Vec<Unit>,
    pub rows: Rows,
    pub seq_len: usize,
    /// sha256 of (data, text field, tokenizer, seq-len).
    pub fingerprint: String,
    pub tokenizer_sha: String,
    pub vocab_size: usize,
    pub max_id: u32,
}

impl Stream {
    pub fn build(data: &Path, text_field: &str, tok: &Tok, eos: Option<u32>, seq_len: usize, vocab_size: usize) -> Result<Self> {
        if seq_len < 2 {
            return Err(Error::flag("--seq-len", "must be at least 2"));
        }
        let docs = read_documents(data, text_field)?;
        let encs = tok.encode_all(&docs)?;
        let eos = eos.ok_or_else(|| {
            Error::file(&tok.path, "names no end-of-text token (needed to pack documents); set eos_token_id in config.json")
        })?;
        let (rows, units) = plan_packed(&encs, eos, seq_len, None);
        if units.is_empty() {
            return Err(Error::file(data, "no training window: the data holds fewer than 2 tokens"));
        }
        let max_id = units.iter().flat_map(|u| u.tokens.iter()).copied().max().unwrap_or(0);
        if max_id as usize >= vocab_size {
            return Err(Error::file(&tok.path, format!("produces token id {max_id}, beyond the model's vocabulary of {vocab_size}")));
        }
        let settings = serde_json::json!({
            "data_sha256": util::sha256_file(data)?,
            "text_field": text_field,
            "tokenizer_sha256": tok.fingerprint,
            "seq_len": seq_len,
        });
        Ok(Stream {
            units,
            rows,
            seq_len,
            fingerprint: util::sha256_hex(settings.to_string().as_bytes()),
            tokenizer_sha: tok.fingerprint.clone(),
            vocab_size,
            max_id,
        })
    }

    pub fn n_windows(&self) -> usize {
        self.units.len()
    }

    /// The windows of the batch of optimizer step `step` (from 1): the stream is
    /// visited in a seeded random order per epoch, so any step's batch is known
    /// without replaying the earlier ones (which makes `--resume` exact).
    pub fn batch_windows(&self, step: u64, batch_size: usize, seed: u64) -> Vec<usize> {
        let n = self.n_windows() as u64;
        let mut out = Vec::with_capacity(batch_size);
        let mut cached: Option<(u64, Vec<usize>)> = None;
        for j in 0..batch_size as u64 {
            let g = (step - 1) * batch_size as u64 + j;
            let epoch = g / n;
            if cached.as_ref().map(|c| c.0 != epoch).unwrap_or(true) {
                cached = Some((epoch, epoch_order(self.n_windows(), seed, epoch)));
            }
            out.push(cached.as_ref().unwrap().1[(g % n) as usize]);
        }
        out
    }
}

fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut v: Vec<usize> = (0..n).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed ^ epoch.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    v.shuffle(&mut rng);
    v
}
