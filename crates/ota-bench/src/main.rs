//! ota-bench: the speed and memory figures of `make bench` (see the crate docs).

use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use ota_bench::{BenchConfig, interrupt, run};

#[derive(Parser)]
#[command(name = "ota-bench", version, about, long_about = None)]
struct Cli {
    /// Folder of the release binaries (stage-files, load-raw, dedup, export-mysql, ota-gen).
    #[arg(long, value_name = "DIR")]
    bin_dir: PathBuf,
    /// Generated data, warehouses, the limit file and the steps' logs (kept between runs).
    #[arg(long, value_name = "DIR")]
    work_dir: PathBuf,
    /// The MySQL server to measure; the bench uses (drops and recreates) --database there.
    #[arg(long, env = "OTA_MYSQL_URL", hide_env_values = true)]
    mysql_url: String,
    #[arg(long, default_value = "ota_bench")]
    database: String,
    #[arg(long, env = "DAYS", default_value_t = 3)]
    days: u32,
    #[arg(long, env = "ROWS_PER_DAY", default_value_t = 1_000_000)]
    rows_per_day: u64,
    /// Repetitions of every comparison (medians are reported).
    #[arg(long, env = "REPEAT", default_value_t = 3)]
    repeat: usize,
    /// Rows per day of the steady-state scenario (3 and 30 days of history); 0 skips it.
    #[arg(long, env = "STEADY_ROWS_PER_DAY", default_value_t = 100_000)]
    steady_rows_per_day: u64,
}

fn main() -> ExitCode {
    // First, before any thread starts: a stopped bench sets the server back.
    if let Err(e) = interrupt::watch() {
        eprintln!("error: {e}");
        return ExitCode::FAILURE;
    }
    let cli = Cli::parse();
    let config = BenchConfig {
        bin_dir: cli.bin_dir,
        work_dir: cli.work_dir,
        mysql_url: cli.mysql_url,
        database: cli.database,
        days: cli.days,
        rows_per_day: cli.rows_per_day,
        repeat: cli.repeat,
        steady_rows_per_day: cli.steady_rows_per_day,
    };
    match run(&config) {
        Ok(figures) => {
            println!("{figures}");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
