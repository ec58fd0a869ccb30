//! The four steps of the pipeline, one function each; the binaries call these.

pub mod dedup;
pub mod export;
pub mod load;
pub mod stage;

pub use dedup::{DedupConfig, dedup};
pub use export::{
    DEFAULT_MAX_RESYNC_DELETE_PCT, ExportConfig, HeldDate, ResyncGuard, export_mysql,
    export_mysql_with,
};
pub use load::{
    DEFAULT_MAX_EVENT_DAY_DISTANCE, DEFAULT_MAX_REJECTED_PCT, LoadConfig, QualityLimits,
    ShrinkGuard, UnknownColumns, load_raw,
};
pub use stage::{StageConfig, stage_files};
