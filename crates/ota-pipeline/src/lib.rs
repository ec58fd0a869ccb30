//! ota-pipeline: moves OTA clickstream events from daily Parquet files in a lake through a
//! warehouse (raw, then deduplicated) into MySQL, incrementally and idempotently.
//!
//! Layout: [`contract`] and [`typing`] define the events and their typing rules,
//! [`typed_batch`] applies them to Arrow batches; [`lake`], [`warehouse`] and [`mysql`]
//! are the backends, each behind a small trait or type; [`steps`] holds one function per
//! step binary. The flags and the summary/exit-code wrapper live with the binaries, in
//! the `ota-cli` crate.

pub mod contract;
pub mod error;
pub mod gcp;
pub mod generate;
pub mod hex;
pub mod lake;
pub mod mysql;
pub mod progress;
pub mod quarantine;
pub mod split;
pub mod steps;
pub mod summary;
pub mod typed_batch;
pub mod typing;
pub mod warehouse;
pub mod window;

pub use error::{PipelineError, Result};
pub use window::DateWindow;
