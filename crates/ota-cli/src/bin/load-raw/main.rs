//! load-raw: type the rows of the staged files that changed and replace their rows in
//! the raw table, atomically.

use std::process::ExitCode;

use clap::Parser;
use ota_cli::{LakeArgs, ProgressArgs, WarehouseArgs, WindowArgs, run_step};
use ota_pipeline::steps::{
    DEFAULT_MAX_EVENT_DAY_DISTANCE, DEFAULT_MAX_REJECTED_PCT, LoadConfig, QualityLimits,
    ShrinkGuard, UnknownColumns, load_raw,
};

#[derive(Parser)]
#[command(name = "load-raw", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    window: WindowArgs,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
    #[command(flatten)]
    progress: ProgressArgs,
    /// Load re-delivered files even when they hold far fewer rows than the versions they
    /// replace (by default such a file is refused and named).
    #[arg(long, env = "OTA_ALLOW_SHRINK")]
    allow_shrink: bool,
    /// The largest share of its rows, in percent, a re-delivered file may lose before it
    /// is refused; an empty file always is.
    #[arg(long, env = "OTA_MAX_SHRINK_PCT", default_value_t = 50,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    max_shrink_pct: u8,
    /// The largest share of a file's rows, in percent, that may be rejected as unkeyable
    /// before the file is quarantined instead of loaded (100: no limit).
    #[arg(long, env = "OTA_MAX_REJECTED_PCT", default_value_t = DEFAULT_MAX_REJECTED_PCT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    max_rejected_pct: u8,
    /// Rows whose event date lies more than this many days from their file's day are
    /// rejected with the reason (a timestamp of another unit, a broken clock).
    #[arg(long, env = "OTA_MAX_EVENT_DAY_DISTANCE", default_value_t = DEFAULT_MAX_EVENT_DAY_DISTANCE)]
    max_event_day_distance: u32,
    /// A file with columns the event contract does not know: load the known ones with a
    /// warning, or quarantine the file.
    #[arg(
        long,
        env = "OTA_ON_UNKNOWN_COLUMNS",
        value_enum,
        default_value = "warn"
    )]
    unknown_columns: UnknownColumns,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_step(|| {
        let config = LoadConfig {
            window: cli.window.request()?,
            lake: cli.lake.config()?,
            warehouse: cli.warehouse.config()?,
            shrink: ShrinkGuard {
                allow: cli.allow_shrink,
                max_loss_pct: cli.max_shrink_pct,
            },
            quality: QualityLimits {
                max_rejected_pct: cli.max_rejected_pct,
                unknown_columns: cli.unknown_columns,
                max_event_day_distance: cli.max_event_day_distance,
            },
            progress: cli.progress.period(),
        };
        load_raw(&config)
    })
}
