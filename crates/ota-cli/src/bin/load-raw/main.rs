//! load-raw: type the rows of the staged files that changed and replace their rows in
//! the raw table, atomically.

use std::process::ExitCode;

use clap::Parser;
use ota_pipeline::cli::{LakeArgs, WarehouseArgs, WindowArgs, run_step};
use ota_pipeline::steps::{LoadConfig, load_raw};

#[derive(Parser)]
#[command(name = "load-raw", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    window: WindowArgs,
    #[command(flatten)]
    lake: LakeArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = LoadConfig {
        window: cli.window,
        lake_url: cli.lake.lake_url,
        warehouse: cli.warehouse,
    };
    run_step(|| load_raw(&config))
}
