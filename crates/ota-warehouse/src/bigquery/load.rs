//! load-raw on BigQuery: type each file into Parquet in the staging area, load it into
//! the run's work tables, and replace the files' raw rows in one scripted transaction.

use super::client::{Attach, Param};
use super::feed::{cell_date, cell_i64};
use super::staging::{StagingFile, files_batch, rejects_batch, with_utc_timestamps};
use super::{BigQueryWarehouse, sql};
use crate::{RawLoadOutcome, RawLoadTally, RawSource};
use ota_core::error::Result;
use ota_lake::{Lake, LakeFile};

impl BigQueryWarehouse {
    /// Loads `files` as [`Warehouse::load_raw`](crate::Warehouse::load_raw) does.
    pub(super) fn load_files(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        let mut tally = RawLoadTally::default();
        if files.is_empty() {
            // Nothing changed: no job at all.
            return Ok(tally.finish());
        }
        let tag = self.work_tag(files);
        let uris: Vec<String> = files.iter().map(|f| f.uri.clone()).collect();
        let old = self.read(
            "read_old_file_dates",
            sql::OLD_FILE_DATES,
            &[Param::strings("files", uris.iter().cloned())],
        )?;
        for r in &old {
            tally.replaced(cell_date(r, 0)?, cell_i64(r, 1)?.max(0) as u64);
        }
        let create = self.render(&sql::CREATE_LOAD_WORK, Some(&tag));
        let replace = self.render(&sql::REPLACE_FILE_ROWS, Some(&tag));
        if self.jobs.settings().dry_run {
            self.jobs
                .query("load_work_tables", &create, &[], Attach::ByInputs(&[]))?;
            self.jobs.report(format!(
                "-- load typed Parquet of {} file(s) into the work tables\n",
                files.len()
            ));
            self.jobs
                .query("load_replace_rows", &replace, &[], Attach::ByInputs(&[]))?;
            return Ok(tally.finish());
        }

        // Type every file into local Parquet, land it in the staging area.
        let staging = self.staging_lake()?;
        let scratch = staging.scratch_dir()?;
        let prefix = format!("_ota_load/{tag}");
        let mut row_uris = Vec::new();
        let mut reject_file = StagingFile::create(&scratch, &format!("{tag}-rejects.parquet"))?;
        let mut ledger_rows = Vec::new();
        for (i, file) in files.iter().enumerate() {
            let mut rows_file = StagingFile::create(&scratch, &format!("{tag}-rows-{i}.parquet"))?;
            source.read(file, &mut |typed| {
                tally.typed(&typed);
                if typed.rows.num_rows() > 0 {
                    rows_file.write(&with_utc_timestamps(&typed.rows)?)?;
                }
                if !typed.rejected.is_empty() {
                    reject_file.write(&rejects_batch(file, &typed.rejected, loaded_at)?)?;
                }
                Ok(())
            })?;
            if rows_file.finish()? {
                let name = format!("{prefix}/rows-{i}.parquet");
                staging.put_file(&name, &rows_file.path)?;
                row_uris.push(
                    staging
                        .location()
                        .uri_of(&staging.location().object_name(&name)),
                );
            }
            let counts = tally.file_done();
            ledger_rows.push((file.clone(), counts.loaded, counts.rejected));
        }
        let mut landed = Vec::new();
        let mut land = |staging_file: &mut StagingFile, name: &str| -> Result<Option<String>> {
            if staging_file.finish()? {
                let object = format!("{prefix}/{name}");
                staging.put_file(&object, &staging_file.path)?;
                let uri = staging
                    .location()
                    .uri_of(&staging.location().object_name(&object));
                landed.push(uri.clone());
                Ok(Some(uri))
            } else {
                Ok(None)
            }
        };
        let rejects_uri = land(&mut reject_file, "rejects.parquet")?;
        let mut files_file = StagingFile::create(&scratch, &format!("{tag}-files.parquet"))?;
        files_file.write(&files_batch(&ledger_rows, loaded_at)?)?;
        let files_uri = land(&mut files_file, "files.parquet")?;

        self.jobs
            .query("load_work_tables", &create, &[], Attach::ByInputs(&[]))?;
        let dataset = self.config.dataset.clone();
        if !row_uris.is_empty() {
            self.jobs.load_parquet(
                "load_rows",
                &row_uris,
                &dataset,
                &format!("_ota_work_rows_{tag}"),
            )?;
        }
        if let Some(uri) = rejects_uri {
            self.jobs.load_parquet(
                "load_rejects",
                &[uri],
                &dataset,
                &format!("_ota_work_rejects_{tag}"),
            )?;
        }
        if let Some(uri) = files_uri {
            self.jobs.load_parquet(
                "load_files",
                &[uri],
                &dataset,
                &format!("_ota_work_files_{tag}"),
            )?;
        }
        self.keep_lease()?;
        self.jobs
            .query("load_replace_rows", &replace, &[], Attach::ByInputs(&[]))?;
        for uri in row_uris.iter().chain(&landed) {
            if let Err(e) = staging.delete(uri) {
                tracing::warn!(uri = %uri, error = %e, "could not delete a staging file");
            }
        }
        Ok(tally.finish())
    }
}
