//! load-raw on the embedded warehouse: the staged files' rows appended to `raw_events`,
//! their old rows, rejects and ledger entries replaced, in one transaction.

use duckdb::params;

use super::config::{leave_a_core, restore_threads};
use super::{DuckDbWarehouse, db_err, sql};
use crate::{RawLoadOutcome, RawLoadTally, RawSource};
use ota_core::error::{PipelineError, Result};
use ota_core::window::parse_date;
use ota_lake::LakeFile;

impl DuckDbWarehouse {
    /// [`crate::Warehouse::load_raw`] on this warehouse.
    pub(super) fn load_files(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        // The rows arrive decoded and typed by a thread of their own (steps::load), so
        // unless the URL chose, DuckDB gets one core fewer while it appends them: with
        // every core its workers contend with that thread for the CPU.
        let left = leave_a_core(
            &self.conn,
            self.threads,
            "leaving a core to the typing thread",
        )?;
        let loaded = self.load_raw_rows(files, loaded_at, source);
        restore_threads(&self.conn, left, loaded)
    }

    /// [`Warehouse::load_raw`]'s work, in one transaction.
    fn load_raw_rows(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        self.in_transaction("loading raw rows", |conn| {
            let mut tally = RawLoadTally::default();
            for file in files {
                let e = || db_err("replacing the rows of a file");
                {
                    let mut stmt = conn.prepare(sql::SELECT_FILE_DATES).map_err(e())?;
                    let old = stmt
                        .query_map(params![file.day.to_string(), file.uri], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                        })
                        .map_err(e())?;
                    for row in old {
                        let (d, n) = row.map_err(e())?;
                        tally.replaced(parse_date("raw event date", &d)?, n.max(0) as u64);
                    }
                }
                conn.execute(
                    sql::DELETE_FILE_ROWS,
                    params![file.day.to_string(), file.uri],
                )
                .map_err(e())?;
                conn.execute(
                    sql::DELETE_FILE_REJECTS,
                    params![file.day.to_string(), file.uri],
                )
                .map_err(e())?;
                let mut rejects = Vec::new();
                {
                    // Flushed after every batch: DuckDB's appender otherwise collects
                    // a couple of hundred thousand rows in memory outside its memory_limit.
                    let mut appender = conn.appender("raw_events").map_err(e())?;
                    source.read(file, &mut |typed| {
                        tally.typed(&typed);
                        rejects.extend(typed.rejected);
                        appender
                            .append_record_batch(typed.rows)
                            .and_then(|()| appender.flush())
                            .map_err(|err| {
                                PipelineError::warehouse(
                                    format!("appending rows of {}", file.uri),
                                    err,
                                )
                            })
                    })?;
                    appender.flush().map_err(e())?;
                }
                if !rejects.is_empty() {
                    let mut appender = conn.appender("raw_rejects").map_err(e())?;
                    for r in &rejects {
                        appender
                            .append_row(params![
                                file.uri,
                                file.day.to_string(),
                                r.source_row,
                                r.reason,
                                r.request_id,
                                r.raw_timestamp,
                                duckdb::types::Value::Timestamp(
                                    duckdb::types::TimeUnit::Microsecond,
                                    loaded_at
                                )
                            ])
                            .map_err(e())?;
                    }
                    appender.flush().map_err(e())?;
                }
                let counts = tally.file_done();
                conn.execute(sql::DELETE_LEDGER_ENTRY, params![file.uri])
                    .map_err(e())?;
                conn.execute(
                    sql::INSERT_LEDGER_ENTRY,
                    params![
                        file.uri,
                        file.day.to_string(),
                        file.size as i64,
                        file.generation,
                        file.checksum,
                        file.ingested_at,
                        loaded_at,
                        counts.loaded as i64,
                        counts.rejected as i64
                    ],
                )
                .map_err(e())?;
            }
            let mut stmt = conn
                .prepare(sql::INSERT_PENDING_DATE)
                .map_err(db_err("queueing dates for dedup"))?;
            for date in tally.affected_dates() {
                stmt.execute(params![date.to_string()])
                    .map_err(db_err("queueing dates for dedup"))?;
            }
            Ok(tally.finish())
        })
    }
}
