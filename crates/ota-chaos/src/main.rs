//! ota-chaos: the fault harness of `make chaos` (see the library's docs).

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use ota_chaos::{ChaosConfig, Emulators, run, table};

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
    /// MySQL server crashes (and restarts) mid-export, on a server of the harness's own.
    #[arg(long, env = "CHAOS_RESTARTS", default_value_t = 5)]
    restarts: u32,
    /// Runs on a disk that fills under the DuckDB file and spill dir (needs root: the
    /// harness mounts a tmpfs).
    #[arg(long, env = "CHAOS_DISK_FULLS", default_value_t = 5)]
    disk_fulls: u32,
    /// Runs the steps on a gs:// lake and BigQuery on the emulators at OTA_GCS_ENDPOINT
    /// and OTA_BQ_ENDPOINT (scripts/with-emulators.sh) instead of the embedded default.
    #[arg(long)]
    on_emulators: bool,
    #[arg(long, default_value_t = 3)]
    days: u32,
    #[arg(long, default_value_t = 2_000)]
    rows_per_day: u64,
    /// Seconds the faults may take, shared among them by planned tries: each stops being
    /// tried once its share has passed (a fault done early leaves its time to the next).
    #[arg(long, env = "CHAOS_BUDGET_SECS", default_value_t = 420)]
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
        restarts: cli.restarts,
        disk_fulls: cli.disk_fulls,
        days: cli.days,
        rows_per_day: cli.rows_per_day,
        budget: Duration::from_secs(cli.budget_secs),
        emulators: None,
    };
    let config = if cli.on_emulators {
        let endpoint = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        let (Some(gcs_endpoint), Some(bq_endpoint)) =
            (endpoint("OTA_GCS_ENDPOINT"), endpoint("OTA_BQ_ENDPOINT"))
        else {
            eprintln!(
                "error: --on-emulators needs OTA_GCS_ENDPOINT and OTA_BQ_ENDPOINT: run it under scripts/with-emulators.sh"
            );
            return ExitCode::from(2);
        };
        ChaosConfig {
            emulators: Some(Emulators {
                gcs_endpoint,
                bq_endpoint,
                project: "ota-test".into(),
            }),
            ..config
        }
    } else {
        config
    };
    match run(&config) {
        Ok(outcomes) => {
            print!("{}", table(&outcomes));
            for o in outcomes.iter().filter(|o| !o.clean()) {
                eprintln!("{}: {}", o.fault, o.problems.join("; "));
            }
            for o in &outcomes {
                if let Some(why) = &o.skipped {
                    eprintln!("warning: {} was not tried: {why}", o.fault);
                }
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
