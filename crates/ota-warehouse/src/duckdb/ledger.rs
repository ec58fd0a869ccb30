//! The file ledger of the embedded warehouse: the staged set of each run, the version of
//! each file loaded, and the quarantine of file versions that could not be.

use std::collections::BTreeMap;

use duckdb::params;

use super::{DuckDbWarehouse, db_err, sql};
use crate::{QuarantineKind, QuarantinedFile, StagedFiles};
use ota_core::error::{PipelineError, Result};
use ota_core::window::{DateWindow, parse_date};
use ota_lake::{LakeFile, RecordedVersion};

/// How long the staged set of a run stays after it was staged (a week: longer than any
/// run's retries); the set of runs started by hand stays until the next one.
const STAGED_SET_RETENTION_MICROS: i64 = 7 * 24 * 3_600 * 1_000_000;

impl DuckDbWarehouse {
    /// [`crate::Warehouse::stage_files`] on this warehouse.
    pub(super) fn record_staged_set(&mut self, run_key: &str, staged: &StagedFiles) -> Result<()> {
        let now = chrono::Utc::now().timestamp_micros();
        let expired = now - STAGED_SET_RETENTION_MICROS;
        self.in_transaction("recording the staged files", |conn| {
            let e = db_err("recording the staged files");
            conn.execute(sql::CLEAR_STAGED_SETS, params![run_key, expired])
                .map_err(db_err("clearing the staged files"))?;
            conn.execute(sql::CLEAR_STAGED_FILES, [])
                .map_err(db_err("clearing the staged files"))?;
            conn.execute(
                sql::INSERT_STAGED_WINDOW,
                params![
                    run_key,
                    staged.window.start.to_string(),
                    staged.window.end.to_string(),
                    now
                ],
            )
            .map_err(e)?;
            let mut stmt = conn
                .prepare(sql::INSERT_STAGED_FILE)
                .map_err(db_err("recording the staged files"))?;
            for f in &staged.files {
                stmt.execute(params![
                    run_key,
                    f.uri,
                    f.day.to_string(),
                    f.size as i64,
                    f.generation,
                    f.checksum,
                    f.ingested_at
                ])
                .map_err(db_err("recording the staged files"))?;
            }
            Ok(())
        })
    }

    /// [`crate::Warehouse::staged_files`] on this warehouse.
    pub(super) fn read_staged_set(&mut self, run_key: &str) -> Result<Option<StagedFiles>> {
        let window: Option<(String, String)> =
            match self
                .conn
                .query_row(sql::SELECT_STAGED_WINDOW, [run_key], |r| {
                    Ok((r.get(0)?, r.get(1)?))
                }) {
                Ok(w) => Some(w),
                Err(duckdb::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(PipelineError::warehouse("reading the staged window", e)),
            };
        let Some((start, end)) = window else {
            return Ok(None);
        };
        let window = DateWindow::new(
            parse_date("staged start", &start)?,
            parse_date("staged end", &end)?,
        )?;
        let mut stmt = self
            .conn
            .prepare(sql::SELECT_STAGED_FILES)
            .map_err(db_err("reading the staged files"))?;
        let rows = stmt
            .query_map([run_key], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(db_err("reading the staged files"))?;
        let mut files = Vec::new();
        for row in rows {
            let (uri, day, size, generation, checksum, ingested_at) =
                row.map_err(db_err("reading the staged files"))?;
            files.push(LakeFile {
                uri,
                day: parse_date("staged day", &day)?,
                size: size as u64,
                generation,
                checksum,
                ingested_at,
            });
        }
        Ok(Some(StagedFiles { window, files }))
    }

    /// [`crate::Warehouse::ledger_entries`] on this warehouse.
    pub(super) fn read_ledger(
        &mut self,
        uris: &[String],
    ) -> Result<BTreeMap<String, RecordedVersion>> {
        let mut stmt = self
            .conn
            .prepare(sql::SELECT_LEDGER_ENTRY)
            .map_err(db_err("reading the file ledger"))?;
        let mut out = BTreeMap::new();
        for uri in uris {
            let mut rows = stmt
                .query_map(params![uri], |r| {
                    Ok(RecordedVersion::from_ledger_row(
                        r.get(1)?,
                        r.get(2)?,
                        r.get(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(db_err("reading the file ledger"))?;
            if let Some(entry) = rows.next() {
                out.insert(
                    uri.clone(),
                    entry.map_err(db_err("reading the file ledger"))?,
                );
            }
        }
        Ok(out)
    }

    /// [`crate::Warehouse::quarantine`] on this warehouse.
    pub(super) fn record_quarantine(
        &mut self,
        file: &LakeFile,
        kind: QuarantineKind,
        reason: &str,
        at: i64,
    ) -> Result<()> {
        self.in_transaction("quarantining a file", |conn| {
            let e = || db_err("quarantining a file");
            conn.execute(sql::DELETE_QUARANTINE_ENTRY, params![file.uri])
                .map_err(e())?;
            conn.execute(
                sql::INSERT_QUARANTINE_ENTRY,
                params![
                    file.uri,
                    file.day.to_string(),
                    file.size as i64,
                    file.generation,
                    file.checksum,
                    kind.name(),
                    reason,
                    at
                ],
            )
            .map_err(e())?;
            Ok(())
        })
    }

    /// [`crate::Warehouse::quarantined`] on this warehouse.
    pub(super) fn read_quarantine(
        &mut self,
        uris: &[String],
    ) -> Result<BTreeMap<String, QuarantinedFile>> {
        let e = || db_err("reading the file quarantine");
        let mut stmt = self
            .conn
            .prepare(sql::SELECT_QUARANTINE_ENTRY)
            .map_err(e())?;
        let mut out = BTreeMap::new();
        for uri in uris {
            let rows = stmt
                .query_map(params![uri], |r| {
                    Ok(QuarantinedFile::from_quarantine_row(
                        r.get(0)?,
                        r.get(1)?,
                        r.get(2)?,
                        &r.get::<_, String>(3)?,
                        r.get(4)?,
                        r.get(5)?,
                    ))
                })
                .map_err(e())?;
            for entry in rows {
                out.insert(uri.clone(), entry.map_err(e())?);
            }
        }
        Ok(out)
    }

    /// [`crate::Warehouse::release_quarantine`] on this warehouse.
    pub(super) fn clear_quarantine(&mut self, uris: &[String]) -> Result<()> {
        self.in_transaction("releasing quarantined files", |conn| {
            for uri in uris {
                conn.execute(sql::DELETE_QUARANTINE_ENTRY, params![uri])
                    .map_err(db_err("releasing quarantined files"))?;
            }
            Ok(())
        })
    }
}
