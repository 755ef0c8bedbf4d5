//! Token-level training dynamics: loss trajectories over a checkpoint series
//! and their Rho-1 (v1, Appendix B.1) categories H->H, L->H, H->L, L->L.
//!
//! - [`categorize`]: pure function on a checkpoint-major loss matrix;
//! - [`categorize_study`]: reads a study folder, writes
//!   `<study>/trajectories.parquet` and `<study>/categories.json`;
//! - [`CategorizeSummary`]: counts and shares (JSON + human table).
mod category;
mod study;
mod summary;
mod trajectory;

pub use category::Category;
pub use study::{
    categories_path, categorize_study, categorize_study_blocks, load_categorized, trajectories_generation, trajectories_path, CategorizeOptions,
    LossSource, BLOCK_ROWS, CATEGORIES, DEFAULT_THRESHOLD, GENERATION_KEY,
};
pub use summary::{CategorizeSummary, CategoryShare};
pub use trajectory::{categorize, category_of, check_threshold, Categorization, TokenTrajectory};
