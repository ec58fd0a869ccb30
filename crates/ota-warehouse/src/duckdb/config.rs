//! The embedded warehouse's settings: the URL's query (`memory_limit`, `threads`) and
//! the threads DuckDB gets while another thread of the step works beside it.

use duckdb::Connection;

use super::{db_err, sql};
use ota_core::error::{PipelineError, Result};

/// DuckDB's memory ceiling unless the URL sets one (`?memory_limit=`): steps stay well
/// inside a small worker's memory whatever the data size; DuckDB spills what does not fit
/// to `<database>.tmp` next to the file.
pub const DEFAULT_MEMORY_LIMIT: &str = "256MB";

/// Settings carried by the URL's query: `duckdb:///path/w.duckdb?memory_limit=1GB&threads=4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuckDbSettings {
    pub memory_limit: String,
    pub threads: Option<u32>,
}

impl Default for DuckDbSettings {
    fn default() -> Self {
        DuckDbSettings {
            memory_limit: DEFAULT_MEMORY_LIMIT.to_string(),
            threads: None,
        }
    }
}

/// Splits `/path/w.duckdb?k=v&...` (what follows `duckdb://`) into the path and settings.
pub fn parse_location(location: &str) -> Result<(String, DuckDbSettings)> {
    let (path, query) = location.split_once('?').unwrap_or((location, ""));
    let mut settings = DuckDbSettings::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "memory_limit" => {
                let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &value[digits.len()..];
                let unit_ok = ["KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"]
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(unit));
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !unit_ok {
                    return Err(PipelineError::Config(format!(
                        "warehouse URL: memory_limit={value:?} is not a size like 512MB or 2GB"
                    )));
                }
                settings.memory_limit = value.to_string();
            }
            "threads" => {
                let threads = value.parse::<u32>().ok().filter(|t| *t > 0);
                settings.threads = Some(threads.ok_or_else(|| {
                    PipelineError::Config(format!(
                        "warehouse URL: threads={value:?} is not a positive number"
                    ))
                })?);
            }
            other => {
                return Err(PipelineError::Config(format!(
                    "warehouse URL: unknown setting {other:?} (memory_limit, threads)"
                )));
            }
        }
    }
    Ok((path.to_string(), settings))
}

impl DuckDbSettings {
    pub(super) fn config(&self) -> duckdb::Result<duckdb::Config> {
        let config = duckdb::Config::default().max_memory(&self.memory_limit)?;
        match self.threads {
            Some(n) => config.threads(i64::from(n)),
            None => Ok(config),
        }
    }
}

/// DuckDB's threads while another thread of the step does its own share of the work
/// (types rows for load_raw, sends batches for the export): one core fewer than the
/// machine has, unless the URL chose (`None`: leave the setting alone).
pub(super) fn threads_beside_a_core(url_threads: Option<u32>, cores: usize) -> Option<u32> {
    match url_threads {
        Some(_) => None,
        None => u32::try_from(cores).ok().filter(|n| *n > 1).map(|n| n - 1),
    }
}

/// Leaves a core of the machine to another thread ([`threads_beside_a_core`]); true if
/// the setting was changed and is to be restored by [`restore_threads`].
pub(super) fn leave_a_core(
    conn: &Connection,
    url_threads: Option<u32>,
    context: &'static str,
) -> Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match threads_beside_a_core(url_threads, cores) {
        Some(n) => {
            conn.execute_batch(&sql::set_threads(n))
                .map_err(db_err(context))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Gives DuckDB its default threads back after [`leave_a_core`]; the work's own error,
/// if it failed, is the one reported.
pub(super) fn restore_threads<T>(conn: &Connection, left: bool, outcome: Result<T>) -> Result<T> {
    if !left {
        return outcome;
    }
    match conn.execute_batch(sql::RESET_THREADS) {
        Ok(()) => outcome,
        Err(e) if outcome.is_ok() => Err(PipelineError::warehouse("restoring DuckDB's threads", e)),
        Err(e) => {
            tracing::warn!(error = %e, "could not restore DuckDB's threads after a failure");
            outcome
        }
    }
}
