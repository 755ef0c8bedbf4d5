//! `tokenizer.json` through the `tokenizers` crate.

use crate::error::{Error, Result};
use std::path::{Path, PathBuf};

/// A loaded tokenizer and where it came from.
pub struct Tok {
    pub inner: tokenizers::Tokenizer,
    pub path: PathBuf,
    /// sha256 of the tokenizer.json bytes.
    pub fingerprint: String,
}

/// One encoded document.
#[derive(Debug, Clone, Default)]
pub struct Encoded {
    pub ids: Vec<u32>,
    /// Byte span of each token in the document ((0, 0) for added special tokens).
    pub offsets: Vec<(usize, usize)>,
}

impl Tok {
    pub fn from_file(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::file(path, "tokenizer.json not found (give one with --tokenizer)")
            } else {
                Error::io(path, e)
            }
        })?;
        let inner = tokenizers::Tokenizer::from_bytes(&bytes)
            .map_err(|e| Error::file(path, format!("cannot load tokenizer: {e}")))?;
        Ok(Tok { inner, path: path.to_path_buf(), fingerprint: crate::util::sha256_hex(&bytes) })
    }

    /// Encode one document; the tokenizer's post-processor may add special tokens (BOS).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Error::file(&self.path, format!("cannot encode text: {e}")))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Encode many documents (in parallel inside the tokenizers crate).
    pub fn encode_all(&self, docs: &[String]) -> Result<Vec<Encoded>> {
        let encs = self
            .inner
            .encode_batch(docs.iter().map(|d| d.as_str()).collect::<Vec<_>>(), true)
            .map_err(|e| Error::file(&self.path, format!("cannot encode text: {e}")))?;
        Ok(encs
            .into_iter()
            .map(|enc| Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
            .collect())
    }

    /// Human-readable text of one token (special tokens included).
    pub fn token_text(&self, id: u32) -> String {
        match self.inner.decode(&[id], false) {
            Ok(s) if !s.is_empty() => s,
            _ => self.inner.id_to_token(id).unwrap_or_default(),
        }
    }

    /// Number of ids the tokenizer can produce (max id + 1).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The end-of-text token: from the model config if given, else a known special token.
    pub fn eos_id(&self, config_eos: Option<u32>) -> Option<u32> {
        config_eos.or_else(|| {
            ["<|endoftext|>", "</s>", "<eos>", "<|end_of_text|>", "<|im_end|>"]
                .iter()
                .find_map(|t| self.inner.token_to_id(t))
        })
    }
}

