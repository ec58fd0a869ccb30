//! The file ledger of the BigQuery warehouse: the staged set of each run (and the
//! external table over it), the version of each file loaded, and the quarantine of file
//! versions that could not be.

use std::collections::BTreeMap;

use super::client::{Attach, Param};
use super::feed::{cell_date, cell_i64, cell_str};
use super::{BigQueryWarehouse, sql};
use crate::{QuarantineKind, QuarantinedFile, StagedFiles};
use ota_core::error::Result;
use ota_core::window::DateWindow;
use ota_lake::{LakeFile, RecordedVersion};

/// Staged-file parameters per INSERT job.
const STAGED_FILES_PER_JOB: usize = 500;
/// The names templates may use, rendered to qualified identifiers.
/// How long the staged set of a run stays after it was staged (a week: longer than any
/// run's retries); the set of runs started by hand stays until the next one.
const STAGED_SET_RETENTION_MICROS: i64 = 7 * 24 * 3_600 * 1_000_000;

impl BigQueryWarehouse {
    /// [`crate::Warehouse::stage_files`] on this warehouse.
    pub(super) fn record_staged_set(&mut self, run_key: &str, staged: &StagedFiles) -> Result<()> {
        let staged_at = chrono::Utc::now().timestamp_micros();
        for (chunk_no, chunk) in staged.files.chunks(STAGED_FILES_PER_JOB).enumerate() {
            let mut text = self.render(sql::INSERT_STAGED_FILES_HEAD, None);
            let mut params = vec![
                Param::int64("staged_at", staged_at),
                Param::string("run_key", run_key.to_string()),
            ];
            for (i, f) in chunk.iter().enumerate() {
                if i > 0 {
                    text.push_str(", ");
                }
                text.push_str(&sql::STAGED_FILE_TUPLE.replace("{i}", &i.to_string()));
                params.extend([
                    Param::string(format!("uri_{i}"), f.uri.clone()),
                    Param::string(format!("day_{i}"), f.day.to_string()),
                    Param::int64(format!("size_{i}"), f.size as i64),
                    Param::string(format!("generation_{i}"), f.generation.clone()),
                    Param::string(format!("checksum_{i}"), f.checksum.clone()),
                    Param::int64(format!("ingested_at_{i}"), f.ingested_at),
                ]);
            }
            self.jobs.query(
                &format!("stage_files_{chunk_no}"),
                &text,
                &params,
                Attach::ByInputs(&[]),
            )?;
        }
        let run = self.render(sql::INSERT_STAGED_RUN, None);
        self.jobs.query(
            "stage_run",
            &run,
            &[
                Param::string("run_key", run_key.to_string()),
                Param::int64("staged_at", staged_at),
                Param::string("window_start", staged.window.start.to_string()),
                Param::string("window_end", staged.window.end.to_string()),
            ],
            Attach::ByInputs(&[]),
        )?;
        for (name, template) in [
            ("stage_prune_runs", sql::DELETE_OLD_STAGED_RUNS),
            ("stage_prune_files", sql::DELETE_OLD_STAGED_FILES),
        ] {
            let text = self.render(template, None);
            self.jobs.query(
                name,
                &text,
                &[
                    Param::string("run_key", run_key.to_string()),
                    Param::int64("staged_at", staged_at),
                    Param::int64("expired", staged_at - STAGED_SET_RETENTION_MICROS),
                ],
                Attach::ByInputs(&[]),
            )?;
        }
        if self.config.external_table && !staged.files.is_empty() {
            let text = self.render(sql::CREATE_STAGED_EXTERNAL, None);
            let uris = staged.files.iter().map(|f| f.uri.clone());
            self.jobs.query(
                "stage_external_table",
                &text,
                &[Param::strings("uris", uris)],
                Attach::ByInputs(&[]),
            )?;
        }
        Ok(())
    }

    /// [`crate::Warehouse::staged_files`] on this warehouse.
    pub(super) fn read_staged_set(&mut self, run_key: &str) -> Result<Option<StagedFiles>> {
        let key = Param::string("run_key", run_key.to_string());
        let runs = self.read(
            "read_staged_run",
            sql::LATEST_STAGED_RUN,
            std::slice::from_ref(&key),
        )?;
        let Some(run) = runs.first() else {
            return Ok(None);
        };
        let staged_at = cell_i64(run, 0)?;
        let window = DateWindow::new(cell_date(run, 1)?, cell_date(run, 2)?)?;
        let rows = self.read(
            "read_staged_files",
            sql::STAGED_FILES_OF_RUN,
            &[key, Param::int64("staged_at", staged_at)],
        )?;
        let mut files = Vec::with_capacity(rows.len());
        for r in &rows {
            files.push(LakeFile {
                uri: cell_str(r, 0).unwrap_or_default().to_string(),
                day: cell_date(r, 1)?,
                size: cell_i64(r, 2)? as u64,
                generation: cell_str(r, 3).unwrap_or_default().to_string(),
                checksum: cell_str(r, 4).unwrap_or_default().to_string(),
                ingested_at: cell_i64(r, 5)?,
            });
        }
        Ok(Some(StagedFiles { window, files }))
    }

    /// [`crate::Warehouse::ledger_entries`] on this warehouse.
    pub(super) fn read_ledger(
        &mut self,
        uris: &[String],
    ) -> Result<BTreeMap<String, RecordedVersion>> {
        if uris.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = self.read(
            "read_ledger",
            sql::LEDGER_ENTRIES,
            &[Param::strings("uris", uris.iter().cloned())],
        )?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let entry = RecordedVersion::from_ledger_row(
                cell_i64(r, 1)?,
                cell_str(r, 2).unwrap_or_default().to_string(),
                cell_str(r, 3).unwrap_or_default().to_string(),
                cell_i64(r, 4).ok(),
                cell_i64(r, 5).ok(),
            );
            out.insert(cell_str(r, 0).unwrap_or_default().to_string(), entry);
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
        self.delete_quarantine_entries(std::slice::from_ref(&file.uri), at)?;
        let text = self.render(sql::INSERT_QUARANTINE, None);
        self.jobs.query(
            "quarantine_file",
            &text,
            &[
                Param::string("uri", file.uri.clone()),
                Param::string("day", file.day.to_string()),
                Param::int64("size", file.size as i64),
                Param::string("generation", file.generation.clone()),
                Param::string("checksum", file.checksum.clone()),
                Param::string("kind", kind.name().to_string()),
                Param::string("reason", reason.to_string()),
                Param::int64("at", at),
            ],
            Attach::ByInputs(&[]),
        )?;
        Ok(())
    }

    /// [`crate::Warehouse::quarantined`] on this warehouse.
    pub(super) fn read_quarantine(
        &mut self,
        uris: &[String],
    ) -> Result<BTreeMap<String, QuarantinedFile>> {
        if uris.is_empty() {
            return Ok(BTreeMap::new());
        }
        let rows = self.read(
            "read_quarantine",
            sql::QUARANTINE_ENTRIES,
            &[Param::strings("uris", uris.iter().cloned())],
        )?;
        let mut out = BTreeMap::new();
        for r in &rows {
            let entry = QuarantinedFile::from_quarantine_row(
                cell_str(r, 0).unwrap_or_default().to_string(),
                cell_i64(r, 1)?,
                cell_str(r, 2).unwrap_or_default().to_string(),
                cell_str(r, 3).unwrap_or_default(),
                cell_str(r, 4).unwrap_or_default().to_string(),
                cell_i64(r, 5).ok(),
            );
            out.insert(entry.uri.clone(), entry);
        }
        Ok(out)
    }

    /// [`crate::Warehouse::release_quarantine`] on this warehouse.
    pub(super) fn clear_quarantine(&mut self, uris: &[String]) -> Result<()> {
        self.delete_quarantine_entries(uris, chrono::Utc::now().timestamp_micros())
    }
}
