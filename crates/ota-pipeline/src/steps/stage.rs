//! stage-files: find the daily files of the window and expose exactly those to the
//! warehouse; with `--from`, first split one large file into daily files in the lake.

use std::path::PathBuf;

use crate::cli::{WarehouseArgs, WindowArgs};
use crate::error::Result;
use crate::lake::{open_lake, validate_suffix};
use crate::split::split_into_lake;
use crate::summary::{Status, StepSummary};
use crate::warehouse::{Access, StagedFiles, open_warehouse};
use crate::window::DateWindow;

#[derive(Debug, Clone)]
pub struct StageConfig {
    pub window: WindowArgs,
    pub lake_url: String,
    pub warehouse: WarehouseArgs,
    pub suffix: String,
    /// One large Parquet file to split into daily files first.
    pub from: Option<PathBuf>,
}

pub fn stage_files(config: &StageConfig) -> Result<StepSummary> {
    validate_suffix(&config.suffix)?;
    if config.warehouse.dry_run && config.from.is_some() {
        return Err(crate::error::PipelineError::Config(
            "--dry-run cannot be combined with --from: splitting writes daily files to the lake"
                .into(),
        ));
    }
    let mut window = config.window.resolve()?;
    let lake = open_lake(&config.lake_url)?;
    let mut warehouse = open_warehouse(&config.warehouse, Access::ReadWrite, "stage-files")?;
    let mut summary = StepSummary::new("stage-files", None);

    if let Some(from) = &config.from {
        let split = split_into_lake(from, lake.as_ref(), &config.suffix)?;
        if !config.window.is_explicit()
            && let (Some(first), Some(last)) = (split.days.first(), split.days.last())
        {
            // The historic load covers the whole range the file holds.
            window = DateWindow::new(first.day, last.day)?;
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
    warehouse.stage_files(&StagedFiles {
        window,
        files: files.clone(),
    })?;
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
    if let Some(jobs) = warehouse.job_log() {
        summary.detail("warehouse_jobs", jobs);
    }
    Ok(summary)
}
