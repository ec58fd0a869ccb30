//! dedup: rebuild the event dates of the dedup table that loaded files touched, keeping
//! one row per event key.

use std::process::ExitCode;

use clap::Parser;
use ota_cli::{WarehouseArgs, WindowArgs, run_step};
use ota_pipeline::steps::{DedupConfig, dedup};

#[derive(Parser)]
#[command(name = "dedup", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    window: WindowArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_step(|| {
        let config = DedupConfig {
            window: cli.window.request()?,
            warehouse: cli.warehouse.config()?,
        };
        dedup(&config)
    })
}
