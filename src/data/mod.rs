//! Documents, tokenizing, scoring windows, packing.
pub mod docs;
pub mod tokenizer;
pub mod windows;

pub use docs::read_documents;
pub use tokenizer::Tok;
pub use windows::{doc_windows, Window};

/// The message of a panic caught from a third-party reader (tokenizers, polars)
/// that failed on a malformed file.
pub(crate) fn panic_message(p: &(dyn std::any::Any + Send)) -> &str {
    p.downcast_ref::<String>().map(|s| s.as_str()).or_else(|| p.downcast_ref::<&str>().copied()).unwrap_or("unknown error")
}
