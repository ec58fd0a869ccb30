//! stage-files: find the daily files of the window and expose exactly those to the
//! warehouse. With --from, first split one large Parquet file into daily files.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ota_cli::{LakeArgs, WarehouseArgs, WindowArgs, run_step};
use ota_pipeline::steps::{StageConfig, stage_files};

#[derive(Parser)]
#[command(name = "stage-files", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    window: WindowArgs,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// Daily files are named <prefix>/YYYYMMDD_<suffix>.parquet.
    #[arg(long, env = "OTA_FILE_SUFFIX", default_value = "OTA")]
    suffix: String,
    /// Split this large Parquet file (e.g. data/case_data.parquet.gzip) into daily files in
    /// the lake first. Without dates, the window becomes the range of days it holds.
    #[arg(long, value_name = "FILE")]
    from: Option<PathBuf>,
    /// Fail (exit 1, staging nothing) when more days of the window than this have no
    /// daily file; unset: any number may be missing (each is logged as a warning).
    #[arg(long, env = "OTA_MAX_MISSING_DAYS", value_name = "DAYS")]
    max_missing_days: Option<u32>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_step(|| {
        let config = StageConfig {
            window: cli.window.request()?,
            lake: cli.lake.config()?,
            warehouse: cli.warehouse.config()?,
            suffix: cli.suffix,
            from: cli.from,
            max_missing_days: cli.max_missing_days,
        };
        stage_files(&config)
    })
}
