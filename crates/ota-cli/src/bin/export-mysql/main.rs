//! export-mysql: load the warehouse's changed dedup rows into MySQL in batches, with the
//! offset committed in the same transaction as each batch. With dates (or
//! --full-refresh) it also re-syncs those event dates exactly; --reconcile compares.

use std::process::ExitCode;

use clap::Parser;
use ota_cli::{WarehouseArgs, WindowArgs, run_step};
use ota_pipeline::mysql::{DEFAULT_IO_TIMEOUT_SECS, LoadMethod, MysqlConfig};
use ota_pipeline::steps::{DEFAULT_MAX_RESYNC_DELETE_PCT, ExportConfig, ResyncGuard, export_mysql};

#[derive(Parser)]
#[command(name = "export-mysql", version, about, long_about = None)]
struct Cli {
    #[command(flatten)]
    window: WindowArgs,
    #[command(flatten)]
    warehouse: WarehouseArgs,
    /// The serving database: mysql://user:password@host:3306/database (created if missing).
    #[arg(
        long,
        env = "OTA_MYSQL_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    mysql_url: Option<String>,
    /// A file holding the MySQL URL (a secret mounted into the container, say), so the
    /// password is in no process's environment.
    #[arg(long, env = "OTA_MYSQL_URL_FILE", value_name = "PATH")]
    mysql_url_file: Option<std::path::PathBuf>,
    /// Target table (created if missing).
    #[arg(long, env = "OTA_MYSQL_TABLE", default_value = "ota_events")]
    mysql_table: String,
    /// Rows per batch (one transaction each).
    #[arg(long, env = "OTA_BATCH_SIZE", default_value_t = 50_000)]
    batch_size: usize,
    /// How batches reach MySQL.
    #[arg(
        long,
        env = "OTA_MYSQL_LOAD_METHOD",
        value_enum,
        default_value = "auto"
    )]
    load_method: LoadMethod,
    /// Seconds to wait for another export-mysql run on the same table.
    #[arg(long, env = "OTA_LOCK_TIMEOUT", default_value_t = 600)]
    lock_timeout: u64,
    /// Seconds any one exchange with MySQL may take (connecting, a statement, a batch's
    /// load) and a row or table lock may be waited for; past it the step fails.
    #[arg(long, env = "OTA_MYSQL_TIMEOUT", default_value_t = DEFAULT_IO_TIMEOUT_SECS)]
    mysql_timeout: u64,
    /// Re-sync every event date (not only the window's) to the warehouse exactly.
    #[arg(long, env = "OTA_FULL_REFRESH")]
    full_refresh: bool,
    /// Compare row counts and checksums per event date; exit 1 on any drift. Writes nothing.
    #[arg(long)]
    reconcile: bool,
    /// When re-syncing, delete the served rows of event dates the warehouse holds no row
    /// of (by default such a date is kept and reported: the warehouse may never have
    /// loaded it).
    #[arg(long, env = "OTA_DELETE_ABSENT_DATES")]
    delete_absent_dates: bool,
    /// The largest share of a date's served rows, in percent, a re-sync may delete; a
    /// date past it is kept as it is and reported (exit 3).
    #[arg(long, env = "OTA_MAX_RESYNC_DELETE_PCT", default_value_t = DEFAULT_MAX_RESYNC_DELETE_PCT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    max_resync_delete_pct: u8,
    /// Tests of crash safety (debug builds only): stop before committing the batch after
    /// this many.
    #[cfg(debug_assertions)]
    #[arg(long, hide = true)]
    fail_after_batches: Option<u64>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    run_step(|| {
        let config = ExportConfig {
            window: cli.window.request()?,
            warehouse: cli.warehouse.config(),
            mysql: MysqlConfig {
                url: ota_cli::secret_setting(
                    "--mysql-url (OTA_MYSQL_URL) or --mysql-url-file (OTA_MYSQL_URL_FILE)",
                    cli.mysql_url,
                    cli.mysql_url_file.as_deref(),
                )?,
                table: cli.mysql_table,
                load_method: cli.load_method,
                lock_timeout_secs: cli.lock_timeout,
                io_timeout_secs: cli.mysql_timeout,
            },
            batch_rows: cli.batch_size,
            full_refresh: cli.full_refresh,
            reconcile: cli.reconcile,
            resync: ResyncGuard {
                delete_absent_dates: cli.delete_absent_dates,
                max_delete_pct: cli.max_resync_delete_pct,
            },
            #[cfg(debug_assertions)]
            fail_after_batches: cli.fail_after_batches,
        };
        export_mysql(&config)
    })
}
