//! export-mysql: load the warehouse's changed dedup rows into MySQL in batches, with the
//! offset committed in the same transaction as each batch. With dates (or
//! --full-refresh) it also re-syncs those event dates exactly; --reconcile compares.

use std::process::ExitCode;

use clap::Parser;
use ota_cli::export::ExportArgs;
use ota_cli::run_step;
use ota_pipeline::steps::export_mysql;

#[derive(Parser)]
#[command(name = "export-mysql", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    export: ExportArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_step(|| export_mysql(&cli.export.config()?))
}
