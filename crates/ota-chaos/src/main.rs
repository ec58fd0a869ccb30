//! ota-chaos: the fault harness of `make chaos` (see the library's docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ota_chaos::{ChaosConfig, run, table};

#[derive(Parser)]
#[command(name = "ota-chaos", version, about, long_about = None)]
struct Cli {
    /// Folder of the step binaries and ota-gen.
    #[arg(long)]
    bin_dir: PathBuf,
    /// MySQL server URL without a database; the harness works in databases of its own.
    #[arg(
        long,
        env = "OTA_TEST_MYSQL_URL",
        default_value = "mysql://root@127.0.0.1:3306"
    )]
    server_url: String,
    /// Seed of every random choice.
    #[arg(long, env = "CHAOS_SEED", default_value_t = 1)]
    seed: u64,
    /// kill -9 tries per step.
    #[arg(long, env = "CHAOS_KILLS", default_value_t = 20)]
    kills_per_step: u32,
    /// Overlapping-run tries per step.
    #[arg(long, env = "CHAOS_OVERLAPS", default_value_t = 3)]
    overlaps_per_step: u32,
    /// Connection cuts during export-mysql.
    #[arg(long, env = "CHAOS_CUTS", default_value_t = 5)]
    cuts: u32,
    #[arg(long, default_value_t = 3)]
    days: u32,
    #[arg(long, default_value_t = 2_000)]
    rows_per_day: u64,
    /// Seconds after which no new fault is tried.
    #[arg(long, env = "CHAOS_BUDGET_SECS", default_value_t = 600)]
    budget_secs: u64,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let config = ChaosConfig {
        bin_dir: cli.bin_dir,
        server_url: cli.server_url,
        seed: cli.seed,
        kills_per_step: cli.kills_per_step,
        overlaps_per_step: cli.overlaps_per_step,
        cuts: cli.cuts,
        days: cli.days,
        rows_per_day: cli.rows_per_day,
        budget: Duration::from_secs(cli.budget_secs),
    };
    match run(&config) {
        Ok(outcomes) => {
            print!("{}", table(&outcomes));
            for o in outcomes.iter().filter(|o| !o.clean()) {
                eprintln!("{}: {}", o.fault, o.problems.join("; "));
            }
            println!("{}", serde_json::to_string(&outcomes).unwrap_or_default());
            if outcomes.iter().all(|o| o.clean()) {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            }
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}
