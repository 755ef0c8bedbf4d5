//! Training checkpoints in the HF format (config.json, model.safetensors,
//! tokenizer.json), with the optimizer state and trainer state beside them:
//!
//! ```text
//! <out>/step-<N>/config.json            the model config (dtype float32)
//! <out>/step-<N>/model.safetensors      f32 weights, transformers' names, metadata {"format": "pt"}
//! <out>/step-<N>/tokenizer.json         copied in
//! <out>/step-<N>/optimizer.safetensors  AdamW moments `m.<name>`, `v.<name>`
//! <out>/step-<N>/trainer_state.json     step, the training config, fingerprints
//! ```
//! A checkpoint is written into a temporary folder and renamed into place.

use crate::error::{Error, Result, WithPath};
use crate::temp;
use crate::train::optim::AdamW;
use candle_core::{DType, Device, Tensor};
use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub const TRAINER_STATE: &str = "trainer_state.json";
pub const OPTIMIZER: &str = "optimizer.safetensors";

/// Everything needed to continue a run.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct TrainerState {
    /// Optimizer steps done.
    pub step: u64,
    /// The run's full configuration.
    pub config: super::TrainConfig,
    /// Fingerprint of the packed training stream (data, tokenizer, seq-len).
    pub stream_fingerprint: String,
    /// Training tokens consumed (valid target tokens).
    pub tokens_seen: u64,
}

/// Named f32 tensors as the bytes of a safetensors file transformers accepts (`path`: for errors).
pub fn safetensors_bytes(path: &Path, tensors: &[(String, Tensor)]) -> Result<Vec<u8>> {
    let mut bufs: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(tensors.len());
    for (name, t) in tensors {
        let t = t.to_device(&Device::Cpu)?.to_dtype(DType::F32)?;
        let shape = t.dims().to_vec();
        let v = t.flatten_all()?.to_vec1::<f32>()?;
        let bytes: Vec<u8> = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        bufs.push((name.clone(), shape, bytes));
    }
    let views = bufs
        .iter()
        .map(|(n, s, b)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::file(path, e.to_string()))
        })
        .collect::<Result<Vec<_>>>()?;
    let meta = HashMap::from([("format".to_string(), "pt".to_string())]);
    safetensors::serialize(views, Some(meta)).map_err(|e| Error::file(path, e.to_string()))
}

/// Read all tensors of a safetensors file (used for the optimizer state).
pub fn read_safetensors(path: &Path, dev: &Device) -> Result<HashMap<String, Tensor>> {
    candle_core::safetensors::load(path, dev).with_path(path)
}

pub fn step_dir(out: &Path, step: u64) -> PathBuf {
    out.join(format!("step-{step}"))
}

/// Write a checkpoint atomically: into a new folder `<dir>.rho-tmp-…` of this process
/// ([`crate::temp`]), then renamed to `dir` (an existing `dir` is moved aside to
/// `<dir>.rho-old-…` for the swap, then removed).
pub fn save(
    dir: &Path,
    config_json: &serde_json::Value,
    tokenizer: &Path,
    params: &[(String, Tensor)],
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    let tmp = temp::name(dir, temp::Kind::Tmp)?;
    temp::create_dir(&tmp).map_err(|e| temp::create_error(&tmp, e))?;
    let res = fill(&tmp, config_json, tokenizer, params, opt, state);
    if res.is_err() {
        let _ = std::fs::remove_dir_all(&tmp);
    }
    res?;
    if dir.exists() {
        let old = temp::name(dir, temp::Kind::Old)?;
        std::fs::rename(dir, &old).with_path(dir)?;
        std::fs::rename(&tmp, dir).with_path(dir)?;
        std::fs::remove_dir_all(&old).with_path(&old)?;
    } else {
        std::fs::rename(&tmp, dir).with_path(dir)?;
    }
    Ok(())
}

/// A new file in the checkpoint's fresh temporary folder (never through a link).
fn write_new(path: &Path, bytes: &[u8]) -> Result<()> {
    use std::io::Write;
    let mut f = temp::create_file(path).map_err(|e| temp::create_error(path, e))?;
    f.write_all(bytes).with_path(path)
}

/// The files of a checkpoint, into its temporary folder, fsynced.
fn fill(
    tmp: &Path,
    config_json: &serde_json::Value,
    tokenizer: &Path,
    params: &[(String, Tensor)],
    opt: &AdamW,
    state: &TrainerState,
) -> Result<()> {
    let mut cfg = config_json.clone();
    if let Some(o) = cfg.as_object_mut() {
        o.insert("dtype".into(), "float32".into());
        if o.contains_key("torch_dtype") {
            o.insert("torch_dtype".into(), "float32".into());
        }
    }
    let cfg_bytes = serde_json::to_vec_pretty(&cfg).map_err(|e| Error::msg(e.to_string()))?;
    write_new(&tmp.join("config.json"), &cfg_bytes)?;
    write_new(&tmp.join("model.safetensors"), &safetensors_bytes(&tmp.join("model.safetensors"), params)?)?;
    write_new(&tmp.join("tokenizer.json"), &std::fs::read(tokenizer).with_path(tokenizer)?)?;
    let mut moments = Vec::with_capacity(2 * opt.slots.len());
    for s in &opt.slots {
        moments.push((format!("m.{}", s.name), s.m.clone()));
        moments.push((format!("v.{}", s.name), s.v.clone()));
    }
    write_new(&tmp.join(OPTIMIZER), &safetensors_bytes(&tmp.join(OPTIMIZER), &moments)?)?;
    let st = serde_json::to_vec_pretty(state).map_err(|e| Error::msg(e.to_string()))?;
    write_new(&tmp.join(TRAINER_STATE), &st)?;
    // fsync the files before the folder is swapped into place.
    for f in ["config.json", "model.safetensors", "tokenizer.json", OPTIMIZER, TRAINER_STATE] {
        let p = tmp.join(f);
        std::fs::File::open(&p).and_then(|f| f.sync_all()).with_path(&p)?;
    }
    Ok(())
}

/// Read `trainer_state.json` of a checkpoint folder.
pub fn load_state(dir: &Path) -> Result<TrainerState> {
    let p = dir.join(TRAINER_STATE);
    if !p.exists() {
        return Err(Error::file(&p, "missing: not a checkpoint written by `rho train`"));
    }
    let bytes = crate::limits::read_bounded(&p, crate::limits::MAX_JSON_BYTES, "trainer_state.json")?;
    serde_json::from_slice(&bytes).with_path(&p)
}

/// The latest complete checkpoint (`step-N` with a trainer state) of a run folder,
/// or the folder itself when it is a checkpoint.
pub fn resolve_resume(path: &Path) -> Result<PathBuf> {
    if path.join(TRAINER_STATE).exists() {
        return Ok(path.to_path_buf());
    }
    let mut best: Option<(u64, PathBuf)> = None;
    let rd = std::fs::read_dir(path).with_path(path)?;
    for e in rd.flatten() {
        let p = e.path();
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(n) = name.strip_prefix("step-").and_then(|n| n.parse::<u64>().ok()) else { continue };
        if p.join(TRAINER_STATE).exists() && best.as_ref().map(|b| n > b.0).unwrap_or(true) {
            best = Some((n, p));
        }
    }
    best.map(|b| b.1).ok_or_else(|| Error::file(path, "no checkpoint to resume from (no step-N folder with trainer_state.json)"))
}

/// Clean up after a killed run: rho's own temporaries in the run folder and in
/// `masks/` whose process is gone ([`crate::temp::remove_stale`]): an unfinished
/// `step-N.rho-tmp-…` folder is removed; a `step-N.rho-old-…` folder is put back as
/// `step-N` if the swap never completed, else removed. Nothing else is touched.
pub fn remove_stale(out: &Path) {
    temp::remove_stale(out);
    temp::remove_stale(&out.join("masks"));
}
