//! Documents, tokenizing, scoring windows, packing.
pub mod docs;
pub mod tokenizer;
pub mod windows;

pub use docs::read_documents;
pub use tokenizer::Tok;
pub use windows::{doc_windows, Window};
