//! stage-files: find the daily files of the window and expose exactly those to the
//! warehouse; with `--from`, first split one large file into daily files in the lake.

use std::path::PathBuf;

use chrono::NaiveDate;

use crate::summary::{Status, StepSummary};
use ota_core::error::Result;
use ota_core::window::{DateWindow, RequestedWindow};
use ota_lake::split::split_into_lake;
use ota_lake::{LakeConfig, validate_suffix};
use ota_warehouse::{Access, StagedFiles, WarehouseConfig};

#[derive(Debug, Clone)]
pub struct StageConfig {
    pub window: RequestedWindow,
    pub lake: LakeConfig,
    pub warehouse: WarehouseConfig,
    pub suffix: String,
    /// One large Parquet file to split into daily files first.
    pub from: Option<PathBuf>,
    /// Fail, staging nothing, when more days than this have no file (None: any number).
    pub max_missing_days: Option<u32>,
}

pub fn stage_files(config: &StageConfig) -> Result<StepSummary> {
    validate_suffix(&config.suffix)?;
    if config.warehouse.run.dry_run && config.from.is_some() {
        return Err(ota_core::error::PipelineError::Config(
            "--dry-run cannot be combined with --from: splitting writes daily files to the lake"
                .into(),
        ));
    }
    let mut window = config.window.window;
    let lake = config.lake.open()?;
    let mut warehouse = config.warehouse.open(Access::ReadWrite, "stage-files")?;
    let mut summary = StepSummary::new("stage-files", None);

    if let Some(from) = &config.from {
        let split = split_into_lake(from, lake.as_ref(), &config.suffix)?;
        if !config.window.is_named() {
            let today = chrono::Utc::now().date_naive();
            let (inside, outside): (Vec<_>, Vec<_>) = split
                .days
                .iter()
                .partition(|d| plausible_event_day(d.day, today));
            if let (Some(first), Some(last)) = (inside.first(), inside.last()) {
                // The historic load covers the range the file holds.
                window = DateWindow::new(first.day, last.day)?;
            }
            if !outside.is_empty() {
                let days: Vec<String> = outside.iter().map(|d| d.day.to_string()).collect();
                let rows: u64 = outside.iter().map(|d| d.rows).sum();
                tracing::warn!(
                    days = ?days,
                    rows,
                    "rows dated before 1990 or after tomorrow: landed in their daily files but \
                     left out of the window; load them with an explicit window if they are real"
                );
                summary.detail("days_outside_window", days);
            }
        }
        summary.counts.rows_read = split.rows;
        summary.detail("split", &split);
    }

    let files = lake.list_daily_files(&window, &config.suffix, &mut |uris| {
        warehouse.ledger_entries(uris)
    })?;
    let missing: Vec<String> = window
        .days()
        .filter(|d| !files.iter().any(|f| f.day == *d))
        .map(|d| d.to_string())
        .collect();
    if !missing.is_empty() {
        tracing::warn!(days = ?missing, "no daily file for these days; they are left untouched");
    }
    if let Some(limit) = config.max_missing_days
        && missing.len() > limit as usize
    {
        return Err(ota_core::error::PipelineError::MissingDays { missing, limit });
    }
    warehouse.stage_files(
        config.warehouse.run.staging_key(),
        &StagedFiles {
            window,
            files: files.clone(),
        },
    )?;
    tracing::info!(window = %window, files = files.len(), "staged files");

    summary.window = Some(window);
    summary.counts.files = files.len() as u64;
    summary.status = if files.is_empty() {
        Status::NoData
    } else {
        Status::Ok
    };
    summary.detail(
        "files",
        files.iter().map(|f| f.uri.as_str()).collect::<Vec<_>>(),
    );
    summary.detail("missing_days", missing);
    summary.detail("lake", lake.url());
    summary.record_warehouse(warehouse.as_mut());
    Ok(summary)
}

/// Whether a day can hold clickstream events: from 1990 (before the commercial web)
/// to tomorrow (a clock a little ahead). A historic load's window spans only such days.
fn plausible_event_day(day: NaiveDate, today: NaiveDate) -> bool {
    let first = NaiveDate::from_ymd_opt(1990, 1, 1).unwrap_or(NaiveDate::MIN);
    day >= first && day <= today + chrono::Days::new(1)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stray_days_do_not_stretch_a_historic_window() {
        let today = NaiveDate::from_ymd_opt(2026, 12, 5).unwrap();
        let day = |y, m, d| NaiveDate::from_ymd_opt(y, m, d).unwrap();
        assert!(plausible_event_day(day(2024, 3, 1), today));
        assert!(plausible_event_day(day(2026, 12, 6), today));
        assert!(!plausible_event_day(day(2026, 12, 7), today));
        assert!(!plausible_event_day(day(9999, 12, 31), today));
        assert!(!plausible_event_day(day(1000, 1, 1), today));
    }
}
