//! The four steps of the pipeline, one function each; the binaries call these.

pub mod dedup;
pub mod export;
pub mod load;
pub mod stage;

pub use dedup::{DedupConfig, dedup};
pub use export::{ExportConfig, export_mysql};
pub use load::{LoadConfig, QualityLimits, ShrinkGuard, UnknownColumns, load_raw};
pub use stage::{StageConfig, stage_files};
