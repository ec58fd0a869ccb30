//! The command-line layer of the step binaries: the flags they share, turned into the
//! library's configuration, and the wrapper that runs a step, prints its summary as the
//! last line of stdout and maps errors to exit codes.

use std::io::Write;
use std::process::ExitCode;
use std::time::Instant;

use clap::Args;

pub mod export;

use ota_core::PipelineError;
use ota_core::Result;
use ota_core::window::RequestedWindow;
use ota_lake::LakeConfig;
use ota_pipeline::summary::{Status, StepSummary};
use ota_warehouse::{RunSettings, WarehouseConfig};

#[derive(Debug, Clone, Args)]
pub struct WindowArgs {
    /// First day of the window (YYYY-MM-DD, UTC, inclusive). Alone: from this day to the
    /// reference date. Empty means not given.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub start_date: Option<String>,
    /// Last day of the window (YYYY-MM-DD, inclusive). Alone: the 3 days ending on it.
    #[arg(long, value_name = "YYYY-MM-DD")]
    pub end_date: Option<String>,
    /// The day a window without dates ends on (default: today in UTC). Airflow passes the
    /// last day of the data interval for scheduled and backfill runs.
    #[arg(long, value_name = "YYYY-MM-DD", env = "OTA_REFERENCE_DATE")]
    pub reference_date: Option<String>,
}

/// An empty value counts as not given (templated orchestrator arguments render optional
/// dates as empty strings).
fn given(value: &Option<String>) -> Option<&str> {
    value.as_deref().map(str::trim).filter(|v| !v.is_empty())
}

impl WindowArgs {
    /// The window these flags ask for, resolved once for the whole step.
    pub fn request(&self) -> Result<RequestedWindow> {
        RequestedWindow::resolve(
            given(&self.start_date),
            given(&self.end_date),
            given(&self.reference_date),
        )
    }
}

#[derive(Debug, Clone, Args)]
pub struct LakeArgs {
    /// Where the daily files live: file:///abs/dir (local) or gs://bucket/prefix.
    #[arg(long, env = "OTA_LAKE_URL", value_name = "URL")]
    pub lake_url: String,
}

/// A setting's value from the process environment: the one place the step binaries read
/// it, handed to the library's settings parsers (which count an empty value as unset).
pub fn environment(var: &str) -> Option<String> {
    std::env::var(var).ok()
}

impl LakeArgs {
    /// The lake these flags name, a GCS one reached as the environment says
    /// (`OTA_GCS_KEY_FILE`, `OTA_GCS_KEY_JSON`, `OTA_GCS_ENDPOINT`, `OTA_SCRATCH_DIR`).
    pub fn config(&self) -> Result<LakeConfig> {
        LakeConfig::new(self.lake_url.clone(), environment)
    }
}

#[derive(Debug, Clone, Args)]
pub struct WarehouseArgs {
    /// The warehouse: duckdb:///abs/path/warehouse.duckdb (embedded) or
    /// bigquery://project/dataset?location=US.
    #[arg(long, env = "OTA_WAREHOUSE_URL", value_name = "URL")]
    pub warehouse_url: String,
    /// BigQuery: print each statement with BigQuery's estimate of the bytes it would
    /// process, and run nothing (reads of the small bookkeeping tables still run).
    #[arg(long, env = "OTA_DRY_RUN")]
    pub dry_run: bool,
    /// Identifies this run (Airflow passes its run id and task): BigQuery job ids derive
    /// from it, so a retried task re-attaches to the jobs its first try started.
    #[arg(long, env = "OTA_RUN_ID", value_name = "ID")]
    pub run_id: Option<String>,
}

impl WarehouseArgs {
    /// The warehouse these flags name, how the step runs against it, and BigQuery
    /// reached as the environment says (`OTA_BQ_*`, and `OTA_GCS_*` for staging).
    pub fn config(&self) -> Result<WarehouseConfig> {
        let run = RunSettings {
            dry_run: self.dry_run,
            run_id: self.run_id.clone(),
        };
        WarehouseConfig::new(self.warehouse_url.clone(), run, environment)
    }
}

#[derive(Debug, Clone, Args)]
pub struct ProgressArgs {
    /// Seconds between progress lines in the log (rows done, rate, time left); 0: none.
    #[arg(long, env = "OTA_PROGRESS_SECS", value_name = "SECONDS")]
    pub progress_secs: Option<String>,
}

impl ProgressArgs {
    /// How often progress is logged (`None`: never); an unreadable value logs a warning
    /// and keeps the default.
    pub fn period(&self) -> Option<std::time::Duration> {
        ota_pipeline::progress::period_of(given(&self.progress_secs))
    }
}

/// Sets up logging to stderr (`RUST_LOG`, default info).
pub fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .with_target(false)
        .try_init();
}

/// Runs a step: logs to stderr, then prints the summary as the very last line of stdout
/// (after stderr is flushed, since Airflow merges the streams and keeps the last line).
/// Exit codes: 0 ok or no data, 2 bad input or configuration, 1 anything else.
/// A secret setting given as itself or as a file holding it (`--mysql-url-file`): the
/// file's content without its trailing newline. An empty value counts as not given (a
/// runner that hands the file clears the variable). Neither, or both, or a file that
/// cannot be read is the user's to fix (exit 2), named without any content.
pub fn secret_setting(
    what: &str,
    value: Option<String>,
    file: Option<&std::path::Path>,
) -> Result<String> {
    let value = value.filter(|v| !v.trim().is_empty());
    let file = file.filter(|f| !f.as_os_str().is_empty());
    match (value, file) {
        (Some(_), Some(_)) => Err(PipelineError::Config(format!(
            "{what}: give one of the two, not both"
        ))),
        (Some(value), None) => Ok(value),
        (None, Some(path)) => std::fs::read_to_string(path)
            .map(|text| text.trim_end_matches(['\n', '\r']).to_string())
            .map_err(|e| {
                PipelineError::Config(format!(
                    "cannot read the secret file {}: {e}",
                    path.display()
                ))
            }),
        (None, None) => Err(PipelineError::Config(format!("{what} is required"))),
    }
}

pub fn run_step(f: impl FnOnce() -> Result<StepSummary>) -> ExitCode {
    init_logging();
    let started = Instant::now();
    let outcome = f();
    let _ = std::io::stderr().flush();
    match outcome {
        Ok(mut summary) => {
            summary.duration_ms = started.elapsed().as_millis() as u64;
            let mut out = std::io::stdout().lock();
            for line in &summary.report {
                let _ = writeln!(out, "{line}");
            }
            let _ = writeln!(out, "{}", summary.to_json_line());
            let _ = out.flush();
            match summary.status {
                Status::Drift => ExitCode::from(1),
                Status::Partial => ExitCode::from(3),
                Status::Ok | Status::NoData => ExitCode::SUCCESS,
            }
        }
        Err(e) => {
            let mut err = std::io::stderr().lock();
            let _ = writeln!(err, "error: {e}");
            let _ = err.flush();
            ExitCode::from(e.exit_code() as u8)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ota_core::window::WindowSource;

    fn args(start: &str, end: &str, reference: &str) -> WindowArgs {
        let some = |v: &str| Some(v.to_string());
        WindowArgs {
            start_date: some(start),
            end_date: some(end),
            reference_date: some(reference),
        }
    }

    #[test]
    fn empty_values_count_as_not_given() {
        let a = args("", " ", "2024-01-03").request().unwrap();
        assert_eq!(a.source, WindowSource::Reference);
        assert_eq!(
            (a.window.start.to_string(), a.window.end.to_string()),
            ("2024-01-01".into(), "2024-01-03".into())
        );
        let b = args("2024-01-02", "", "").request().unwrap();
        assert!(b.is_named());
        assert_eq!(
            args("", "", "").request().unwrap().source,
            WindowSource::Today
        );
        assert!(args("2024-02-30", "", "").request().is_err());
    }
}
