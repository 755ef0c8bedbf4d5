//! Reference losses for SLM, aligned with the packed training stream.
//!
//! `rho score` writes them as Parquet with columns `seq` (window index), `pos`
//! (position in the window, >= 1), `token_id`, `loss` (f32) and `fingerprint`
//! (the stream's: data, tokenizer, seq-len). Training refuses scores whose
//! fingerprint or token ids differ from its own stream.

use super::stream::Stream;
use crate::error::{Error, Result, WithPath};
use crate::model::{Checkpoint, Mode};
use crate::util;
use candle_core::{DType, Device};
use polars::prelude::*;
use std::path::Path;

/// Score the stream with a model and write the reference-loss Parquet atomically.
pub fn score_stream(model: &Checkpoint, stream: &Stream, out: &Path, device: &Device, dtype: DType, batch_tokens: usize, quiet: bool) -> Result<()> {
    check_compatible(model, stream)?;
    crate::eval::check_forward_memory(&stream.units, batch_tokens, model.config.vocab_size, device)?;
    let m = model.load(dtype, device, Mode::Eval)?;
    let t = std::time::Instant::now();
    let n = stream.rows.len();
    let mut done = 0usize;
    let losses = crate::eval::score_units(&m, &stream.units, n, batch_tokens, |k| {
        done += k;
        if !quiet && done % 50_000 < k {
            let rate = done as f64 / t.elapsed().as_secs_f64().max(1e-9);
            eprintln!("  scored {done}/{n} tokens ({rate:.0} tokens/s, ETA {:.0} s)", (n - done) as f64 / rate);
        }
    })
    .map_err(|e| Error::file(&model.dir, format!("scoring failed: {}", crate::error::candle_msg(&e))))?;
    let mut df = DataFrame::new(vec![
        Column::new("seq".into(), &stream.rows.seq),
        Column::new("pos".into(), &stream.rows.pos),
        Column::new("token_id".into(), &stream.rows.token_id),
        Column::new("loss".into(), &losses),
        Column::new("fingerprint".into(), vec![stream.fingerprint.as_str(); n]),
    ])?;
    util::write_parquet(out, &mut df)?;
    if !quiet {
        let secs = t.elapsed().as_secs_f64();
        eprintln!("rho score: {n} tokens in {secs:.1} s ({:.0} tokens/s) -> {}", n as f64 / secs.max(1e-9), out.display());
    }
    Ok(())
}

/// A reference model must share the training tokenizer and vocabulary.
pub fn check_compatible(model: &Checkpoint, stream: &Stream) -> Result<()> {
    let cfg = model.dir.join("config.json");
    if model.config.vocab_size != stream.vocab_size {
        return Err(Error::file(
            &cfg,
            format!(
                "the reference model has a vocabulary of {} tokens, the trained model {}: they must share one tokenizer",
                model.config.vocab_size, stream.vocab_size
            ),
        ));
    }
    let tok = model.dir.join("tokenizer.json");
    if tok.exists() && util::sha256_file(&tok)? != stream.tokenizer_sha {
        return Err(Error::file(&tok, "differs from the training tokenizer: the reference model must share it"));
    }
    if stream.max_id as usize >= model.config.vocab_size {
        return Err(Error::file(&cfg, format!("the data has token id {} beyond the vocabulary of {}", stream.max_id, model.config.vocab_size)));
    }
    Ok(())
}

/// Load precomputed reference losses, one per stream row, checking they belong to this stream.
pub fn load_ref_scores(path: &Path, stream: &Stream) -> Result<Vec<f32>> {
    let df = util::read_parquet(path)?;
    let col = |name: &str| {
        df.column(name).map_err(|_| Error::file(path, format!("no column `{name}`: not a file written by `rho score`")))
    };
    let fp = col("fingerprint")?.str().map_err(|e| Error::file(path, e.to_string()))?;
    let fp = fp.get(0).unwrap_or("");
    if fp != stream.fingerprint {
        return Err(Error::file(
            path,
            "reference scores were computed on another stream (other data, tokenizer or seq-len): run `rho score` with the training data, tokenizer and --seq-len",
        ));
    }
    if df.height() != stream.rows.len() {
        return Err(Error::file(path, format!("{} rows, the training stream has {}", df.height(), stream.rows.len())));
    }
    let ids: Vec<u32> = col("token_id")?.u32().with_path(path)?.into_no_null_iter().collect();
    if let Some(i) = ids.iter().zip(&stream.rows.token_id).position(|(a, b)| a != b) {
        return Err(Error::file(path, format!("row {i}: token id {} but the training stream has {}: misaligned", ids[i], stream.rows.token_id[i])));
    }
    let loss: Vec<f32> = col("loss")?.f32().with_path(path)?.into_iter().map(|x| x.unwrap_or(f32::NAN)).collect();
    if let Some(i) = loss.iter().position(|x| !x.is_finite()) {
        return Err(Error::file(path, format!("row {i}: loss is not finite")));
    }
    Ok(loss)
}
