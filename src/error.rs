//! Typed library errors. Every error that concerns a file carries its path,
//! so the binary can print one line naming the file and what is wrong.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An I/O error on a named file.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A file exists but its content is wrong (corrupt, truncated, bad JSON, bad shape...).
    #[error("{}: {msg}", path.display())]
    File { path: PathBuf, msg: String },
    /// A command-line flag has a bad value.
    #[error("{flag}: {msg}")]
    Flag { flag: String, msg: String },
    /// Tensor shape mismatches and other candle errors not tied to a file.
    #[error("tensor error: {}", candle_msg(.0))]
    Candle(#[from] candle_core::Error),
    /// Polars errors not tied to a file.
    #[error("table error: {0}")]
    Polars(#[from] polars::error::PolarsError),
    /// Anything else, with a message.
    #[error("{0}")]
    Msg(String),
    /// The run was interrupted (SIGINT); partial results were kept.
    #[error("interrupted")]
    Interrupted,
    /// A gate condition holds (`rho audit --fail-if`): the command did its work
    /// and printed its output, but the pipeline should stop. Exit code 3.
    #[error("{0}")]
    Gate(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub fn io(path: impl AsRef<Path>, source: std::io::Error) -> Self {
        Error::Io { path: path.as_ref().to_path_buf(), source }
    }
    pub fn file(path: impl AsRef<Path>, msg: impl Into<String>) -> Self {
        Error::File { path: path.as_ref().to_path_buf(), msg: msg.into() }
    }
    pub fn flag(flag: impl Into<String>, msg: impl Into<String>) -> Self {
        Error::Flag { flag: flag.into(), msg: msg.into() }
    }
    pub fn msg(msg: impl Into<String>) -> Self {
        Error::Msg(msg.into())
    }
    /// Exit code for the binary: 2 for bad input/flags, 3 for a gate condition that
    /// holds (`rho audit --fail-if`), 130 for interrupts, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            Error::Flag { .. } => 2,
            Error::Interrupted => 130,
            Error::Gate(_) => 3,
            _ => 1,
        }
    }
}

/// Attach a path to errors from foreign crates.
pub trait WithPath<T> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> WithPath<T> for std::result::Result<T, std::io::Error> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::io(path, e))
    }
}

impl<T> WithPath<T> for std::result::Result<T, candle_core::Error> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, candle_msg(&e)))
    }
}

/// A candle error's message without the backtrace candle appends when
/// RUST_BACKTRACE is set: its first line.
pub fn candle_msg(e: &candle_core::Error) -> String {
    e.to_string().lines().next().unwrap_or_default().trim_end().to_string()
}

impl<T> WithPath<T> for std::result::Result<T, polars::error::PolarsError> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, e.to_string()))
    }
}

impl<T> WithPath<T> for std::result::Result<T, serde_json::Error> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|e| Error::file(path, format!("invalid JSON: {e}")))
    }
}
