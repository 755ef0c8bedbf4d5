//! rho: a workbench for token-level training dynamics (Rho-1).
//!
//! Data flows one way: checkpoints + data -> losses -> trajectories -> reports.
pub mod error;
pub mod util;
pub mod limits;
pub mod lock;
pub mod temp;
pub mod model;
pub mod cuda;
pub mod data;
pub mod eval;
pub mod dynamics;
pub mod select;
pub mod train;
pub mod demo;
pub mod report;
pub mod audit;
pub mod export;
pub mod bench;
pub mod cli;
pub mod tui;
pub mod slurm;

pub use error::{Error, Result};
