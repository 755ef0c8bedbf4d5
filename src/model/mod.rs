//! Model configs, our own Llama / GPT-NeoX / GPT-2 code, checkpoint loading, per-token loss.
pub mod config;
pub mod loss;
pub mod pickle;
pub mod transformer;
pub mod weights;

pub use config::{Arch, ModelConfig};
pub use transformer::{Mode, Transformer};
pub use weights::Weights;

use crate::error::{Error, Result};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use std::path::{Path, PathBuf};

/// A checkpoint folder in HF format.
#[derive(Debug, Clone)]
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: ModelConfig,
}

impl Checkpoint {
    /// Read `config.json` (no weights yet).
    pub fn open(dir: &Path) -> Result<Self> {
        if !dir.is_dir() {
            return Err(Error::file(dir, "checkpoint folder does not exist"));
        }
        let cfg_path = dir.join("config.json");
        if !cfg_path.exists() {
            return Err(Error::file(&cfg_path, "missing: a checkpoint folder needs config.json"));
        }
        let config = ModelConfig::from_file(&cfg_path)?;
        Ok(Checkpoint { dir: dir.to_path_buf(), config })
    }

    /// The folder name (used as the checkpoint's name in a study).
    pub fn name(&self) -> String {
        self.dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| self.dir.display().to_string())
    }

    /// Load the weights into a model. Shape disagreements with config.json,
    /// missing tensors and corrupt files are errors naming the file.
    pub fn load(&self, dtype: DType, device: &Device, mode: Mode) -> Result<Transformer> {
        let w = Weights::open(&self.dir)?;
        let main = w.main_file().to_path_buf();
        let vb = VarBuilder::from_backend(Box::new(w), dtype, device.clone());
        Transformer::new(&self.config, vb, mode).map_err(|e| {
            let msg = crate::error::candle_msg(&e);
            // Messages from our backend already start with the file path.
            if msg.starts_with('/') || [".safetensors:", ".bin:", ".pt:"].iter().any(|s| msg.contains(s)) {
                Error::msg(msg)
            } else {
                Error::file(&main, msg)
            }
        })
    }
}
