//! export-mysql's flags, turned into the export's configuration (the binary parses them;
//! tests build the same configuration from the same flags).

use clap::Args;
use ota_core::Result;
use ota_mysql::{DEFAULT_IO_TIMEOUT_SECS, LoadMethod, MysqlConfig};
use ota_pipeline::steps::{DEFAULT_MAX_RESYNC_DELETE_PCT, ExportConfig, ResyncGuard};

use crate::{ProgressArgs, WarehouseArgs, WindowArgs, secret_setting};

/// No Debug: it may hold the MySQL URL with its password.
#[derive(Clone, Args)]
pub struct ExportArgs {
    #[command(flatten)]
    pub window: WindowArgs,
    #[command(flatten)]
    pub warehouse: WarehouseArgs,
    #[command(flatten)]
    pub progress: ProgressArgs,
    /// The serving database: mysql://user:password@host:3306/database (created if missing).
    #[arg(
        long,
        env = "OTA_MYSQL_URL",
        value_name = "URL",
        hide_env_values = true
    )]
    pub mysql_url: Option<String>,
    /// A file holding the MySQL URL (a secret mounted into the container, say), so the
    /// password is in no process's environment.
    #[arg(long, env = "OTA_MYSQL_URL_FILE", value_name = "PATH")]
    pub mysql_url_file: Option<std::path::PathBuf>,
    /// Target table (created if missing).
    #[arg(long, env = "OTA_MYSQL_TABLE", default_value = "ota_events")]
    pub mysql_table: String,
    /// Rows per batch (one transaction each).
    #[arg(long, env = "OTA_BATCH_SIZE", default_value_t = 50_000)]
    pub batch_size: usize,
    /// How batches reach MySQL.
    #[arg(
        long,
        env = "OTA_MYSQL_LOAD_METHOD",
        value_enum,
        default_value = "auto"
    )]
    pub load_method: LoadMethod,
    /// Seconds to wait for another export-mysql run on the same table.
    #[arg(long, env = "OTA_LOCK_TIMEOUT", default_value_t = 600)]
    pub lock_timeout: u64,
    /// Seconds any one exchange with MySQL may take (connecting, a statement, a batch's
    /// load) and a row or table lock may be waited for; past it the step fails.
    #[arg(long, env = "OTA_MYSQL_TIMEOUT", default_value_t = DEFAULT_IO_TIMEOUT_SECS)]
    pub mysql_timeout: u64,
    /// Re-sync every event date (not only the window's) to the warehouse exactly.
    #[arg(long, env = "OTA_FULL_REFRESH")]
    pub full_refresh: bool,
    /// Compare row counts and checksums per event date; exit 1 on any drift. Writes nothing.
    #[arg(long)]
    pub reconcile: bool,
    /// When re-syncing, delete the served rows of event dates the warehouse holds no row
    /// of (by default such a date is kept and reported: the warehouse may never have
    /// loaded it).
    #[arg(long, env = "OTA_DELETE_ABSENT_DATES")]
    pub delete_absent_dates: bool,
    /// The largest share of a date's served rows, in percent, a re-sync may delete; a
    /// date past it is kept as it is and reported (exit 3).
    #[arg(long, env = "OTA_MAX_RESYNC_DELETE_PCT", default_value_t = DEFAULT_MAX_RESYNC_DELETE_PCT,
          value_parser = clap::value_parser!(u8).range(0..=100))]
    pub max_resync_delete_pct: u8,
}

impl ExportArgs {
    /// The export these flags ask for; the MySQL URL from the flag, its variable or the
    /// file either names.
    pub fn config(self) -> Result<ExportConfig> {
        Ok(ExportConfig {
            window: self.window.request()?,
            warehouse: self.warehouse.config()?,
            mysql: MysqlConfig {
                url: secret_setting(
                    "--mysql-url (OTA_MYSQL_URL) or --mysql-url-file (OTA_MYSQL_URL_FILE)",
                    self.mysql_url,
                    self.mysql_url_file.as_deref(),
                )?,
                table: self.mysql_table,
                load_method: self.load_method,
                lock_timeout_secs: self.lock_timeout,
                io_timeout_secs: self.mysql_timeout,
            },
            batch_rows: self.batch_size,
            full_refresh: self.full_refresh,
            reconcile: self.reconcile,
            resync: ResyncGuard {
                delete_absent_dates: self.delete_absent_dates,
                max_delete_pct: self.max_resync_delete_pct,
            },
            progress: self.progress.period(),
        })
    }
}
