//! dedup: rebuild only the event dates whose raw rows changed.

use crate::summary::{Status, StepSummary};
use ota_core::error::Result;
use ota_core::window::RequestedWindow;
use ota_warehouse::{Access, WarehouseConfig};

#[derive(Debug, Clone)]
pub struct DedupConfig {
    pub window: RequestedWindow,
    pub warehouse: WarehouseConfig,
}

pub fn dedup(config: &DedupConfig) -> Result<StepSummary> {
    let mut warehouse = config.warehouse.open(Access::ReadWrite, "dedup")?;
    let staged = warehouse.staged_files(config.warehouse.run.staging_key())?;
    let outcome = warehouse.dedup(chrono::Utc::now().timestamp_micros())?;
    tracing::info!(
        dates = outcome.rebuilt_dates.len(),
        changed = outcome.rows_changed,
        deleted = outcome.rows_deleted,
        "dedup done"
    );
    let mut summary = StepSummary::new(
        "dedup",
        Some(staged.as_ref().map_or(config.window.window, |s| s.window)),
    );
    let no_files = staged.as_ref().is_none_or(|s| s.files.is_empty());
    if no_files && outcome.rebuilt_dates.is_empty() {
        summary.status = Status::NoData;
    }
    summary.counts.files = staged.as_ref().map_or(0, |s| s.files.len() as u64);
    summary.counts.rows_read = outcome.rows_read;
    summary.counts.duplicates_removed = outcome.duplicates_removed;
    summary.counts.rows_written = outcome.rows_changed;
    summary.detail("rows_changed", outcome.rows_changed);
    summary.detail("rows_deleted", outcome.rows_deleted);
    summary.detail("affected_dates", &outcome.rebuilt_dates);
    summary.detail(
        "changed_at",
        outcome
            .changed_at
            .and_then(chrono::DateTime::from_timestamp_micros)
            .map(|at| at.format("%Y-%m-%d %H:%M:%S%.6f").to_string()),
    );
    summary.record_warehouse(warehouse.as_mut());
    Ok(summary)
}
