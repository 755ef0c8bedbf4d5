//! `rho export`: hand a study over to other tools.
//!
//! - `rho export notebook`: a Jupyter notebook (nbformat 4) that loads the
//!   study's Parquet files with pandas and redraws the main charts with
//!   matplotlib ([`notebook::notebook`]).

pub mod notebook;

use crate::error::Result;
use std::path::PathBuf;

/// `rho export` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct ExportArgs {
    #[command(subcommand)]
    pub what: ExportCommand,
}

#[derive(Debug, Clone, clap::Subcommand)]
pub enum ExportCommand {
    /// A Jupyter notebook (nbformat 4, Python 3: pandas + pyarrow + matplotlib) that
    /// loads the study's Parquet files and redraws the main charts.
    Notebook(NotebookArgs),
}

#[derive(Debug, Clone, clap::Args)]
pub struct NotebookArgs {
    /// Study folder (after `rho eval` and `rho categorize`).
    #[arg(long)]
    pub study: PathBuf,
    /// Notebook to write [default: <study>/study.ipynb].
    #[arg(long, value_name = "FILE.ipynb")]
    pub out: Option<PathBuf>,
}

/// `rho export ...`
pub fn run_cli(args: &ExportArgs) -> Result<()> {
    match &args.what {
        ExportCommand::Notebook(a) => {
            let out = a.out.clone().unwrap_or_else(|| a.study.join("study.ipynb"));
            notebook::write_notebook(&a.study, &out)?;
            eprintln!("rho export notebook: wrote {}", out.display());
            Ok(())
        }
    }
}
