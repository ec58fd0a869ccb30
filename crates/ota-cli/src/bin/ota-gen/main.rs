//! ota-gen: deterministic generator of realistic, messy OTA case data.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ota_cli::init_logging;
use ota_core::window::parse_date;
use ota_pipeline::generate::{GenConfig, generate_daily_files, generate_single_file};

#[derive(Parser)]
#[command(name = "ota-gen", version, about, long_about = None)]
struct Cli {
    /// Seed: the same seed gives the same files.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// First day (YYYY-MM-DD).
    #[arg(long, default_value = "2024-01-01")]
    start: String,
    /// Number of days.
    #[arg(long, default_value_t = 3)]
    days: u32,
    /// Rows in each day's file.
    #[arg(long, default_value_t = 10_000)]
    rows_per_day: u64,
    /// Daily files are named YYYYMMDD_<suffix>.parquet.
    #[arg(long, default_value = "OTA")]
    suffix: String,
    /// Write daily files into this folder.
    #[arg(long, value_name = "DIR", required_unless_present = "single")]
    out: Option<PathBuf>,
    /// Write one case-data file (gzip pages) instead.
    #[arg(long, value_name = "FILE", conflicts_with = "out")]
    single: Option<PathBuf>,
}

fn main() -> ExitCode {
    init_logging();
    let cli = Cli::parse();
    let run = || -> ota_core::Result<String> {
        let config = GenConfig {
            seed: cli.seed,
            start: parse_date("start", &cli.start)?,
            days: cli.days,
            rows_per_day: cli.rows_per_day,
            suffix: cli.suffix.clone(),
        };
        let outcome = match (&cli.out, &cli.single) {
            (_, Some(file)) => generate_single_file(&config, file)?,
            (Some(dir), None) => generate_daily_files(&config, dir)?,
            (None, None) => unreachable!("clap requires --out or --single"),
        };
        Ok(serde_json::to_string(&outcome).unwrap_or_default())
    };
    match run() {
        Ok(line) => {
            println!("{line}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code() as u8)
        }
    }
}
