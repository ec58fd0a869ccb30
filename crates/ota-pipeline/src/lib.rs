//! ota-pipeline: the steps that move OTA clickstream events from daily Parquet files in a
//! lake through a warehouse (raw, then deduplicated) into MySQL, incrementally and
//! idempotently.
//!
//! [`steps`] holds one function per step binary; each takes a typed config, drives the
//! backends (`ota-lake`, `ota-warehouse`, `ota-mysql`, all speaking `ota-core`'s types)
//! and returns the [`summary`] the binary prints. [`progress`] reports long steps while
//! they run; [`generate`] writes the sample data. The flags and the summary/exit-code
//! wrapper live with the binaries, in the `ota-cli` crate.

pub mod generate;
pub mod progress;
pub mod steps;
pub mod summary;
