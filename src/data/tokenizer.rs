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
        if !path.exists() {
            return Err(Error::file(path, "tokenizer.json not found (give one with --tokenizer)"));
        }
        let bytes = crate::limits::read_bounded(path, crate::limits::MAX_TOKENIZER_BYTES, "a tokenizer.json")?;
        // Malformed JSON is reported here, with its line and column: tokenizers 0.22
        // panics on it inside some values (`expect("Helper")` on a `decoder`).
        serde_json::from_slice::<serde::de::IgnoredAny>(&bytes)
            .map_err(|e| Error::file(path, format!("cannot load tokenizer: invalid JSON: {e}")))?;
        // Well-formed JSON can still reach a panic in the tokenizers crate (e.g. a
        // `Precompiled` normalizer without a valid `precompiled_charsmap`): a bad file,
        // so an error naming it. Nothing outlives the call, so unwinding is safe.
        let inner = std::panic::catch_unwind(|| tokenizers::Tokenizer::from_bytes(&bytes))
            .map_err(|p| Error::file(path, format!("cannot load tokenizer: {}", panic_text(&*p))))?
            .map_err(|e| Error::file(path, format!("cannot load tokenizer: {e}")))?;
        Ok(Tok { inner, path: path.to_path_buf(), fingerprint: crate::util::sha256_hex(&bytes) })
    }

    /// Encode one document; the tokenizer's post-processor may add special tokens (BOS).
    pub fn encode(&self, text: &str) -> Result<Encoded> {
        // A tokenizer.json can load and still make every encode panic inside the
        // tokenizers crate (e.g. a TemplateProcessing naming a special token it does
        // not define): an error naming the file.
        let enc = std::panic::catch_unwind(|| self.inner.encode(text, true))
            .map_err(|p| Error::file(&self.path, format!("cannot encode text: {}", panic_text(&*p))))?
            .map_err(|e| Error::file(&self.path, format!("cannot encode text: {e}")))?;
        Ok(Encoded { ids: enc.get_ids().to_vec(), offsets: enc.get_offsets().to_vec() })
    }

    /// Encode many documents (in parallel inside the tokenizers crate).
    pub fn encode_all(&self, docs: &[String]) -> Result<Vec<Encoded>> {
        let batch = docs.iter().map(|d| d.as_str()).collect::<Vec<_>>();
        let encs = std::panic::catch_unwind(|| self.inner.encode_batch(batch, true))
            .map_err(|p| Error::file(&self.path, format!("cannot encode text: {}", panic_text(&*p))))?
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

/// The message of a caught panic.
fn panic_text(p: &(dyn std::any::Any + Send)) -> String {
    format!("the tokenizers crate failed on this file ({})", super::panic_message(p))
}
