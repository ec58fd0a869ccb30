//! The BigQuery warehouse (`bigquery://project/dataset?location=US&staging=gs://bucket/prefix`).
//!
//! Same tables and semantics as the embedded one: raw (partitioned by source_day), dedup
//! (partitioned by event_date) with `changed_at` and tombstones, the file ledger. Rows
//! are typed in Rust by the same code as the embedded engine (identical keys and
//! hashes), written as Parquet to the staging area and loaded into per-run work tables;
//! one script then replaces the files' raw rows in a transaction. How BigQuery is
//! reached ([`BigQuerySettings`]): the BigQuery account's key (`OTA_BQ_KEY_FILE`),
//! `OTA_BQ_ENDPOINT` for an emulator, `OTA_BQ_MAX_BYTES` capping every job's billed bytes.

pub mod client;
pub mod config;
mod dedup;
pub mod feed;
mod ledger;
mod load;
pub mod sql;
mod staging;
pub mod storage_read;

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use md5::{Digest, Md5};
use serde_json::Value;

use super::{
    ChangeBatch, ChangeSelection, DateChecksum, DedupOutcome, FeedOffset, QuarantineKind,
    QuarantinedFile, RawLoadOutcome, RawSource, StagedFiles, Warehouse,
};
use client::{Attach, JobSettings, Jobs, Param, QueryResult};
pub use config::{BigQueryConfig, BigQuerySettings, RunOptions};
pub use feed::FeedBounds;
use feed::{cell_date, cell_i64, cell_str};
use ota_core::error::{PipelineError, Result};
use ota_lake::gcp::Credentials;
use ota_lake::gcs::{GcsLake, GcsSettings};
use ota_lake::{LakeFile, RecordedVersion};

pub struct BigQueryWarehouse {
    config: BigQueryConfig,
    url: String,
    jobs: Jobs,
    run_key: String,
    /// Who holds the dataset's writer lease while this step writes (its run and step);
    /// None for a read-only or dry run.
    lease: Option<String>,
    /// The run's lease token table (see `sql::WRITE_LEASE_TOKEN`), fully qualified, and
    /// whether this step wrote it.
    lease_token: String,
    lease_token_written: bool,
    /// The BigQuery account's token source for the Storage Read API, and its endpoint.
    storage_credentials: Credentials,
    storage_endpoint: String,
    /// How the staging bucket is reached.
    staging: GcsSettings,
}

/// How long a writer lease lasts: longer than any step runs (the DAG stops a task after
/// 3 hours), so only a writer that died leaves one behind, and only until then.
const LEASE_SECONDS: i64 = 4 * 3600;

/// A lease that expires within this many seconds is renewed before a writing transaction.
const LEASE_RENEW_MARGIN_SECONDS: i64 = 3600;

/// The lease token of a dry run (see `render`).
const DRY_RUN_LEASE_TOKEN: &str = "(SELECT CAST(NULL AS STRING) AS holder)";

/// Who holds a writer lease: the run and its step.
fn lease_holder(run_key: &str, step: &str) -> String {
    format!("{run_key}/{step}")
}

const TABLES: [&str; 14] = [
    "writer_lease",
    "raw_events",
    "raw_rejects",
    "raw_file_dates",
    "file_ledger",
    "file_quarantine",
    "run_staged_windows",
    "run_staged_files",
    "staged_external",
    "dedup_pending_dates",
    "dedup_events",
    "dedup_tombstones",
    "dedup_runs",
    "dedup_run_dates",
];

/// Replaces `{table}` in a template with the qualified name of the dataset's table, and
/// `{work_*}` with the run's work tables (`_ota_work_rows_<tag>`, ...).
pub fn render(config: &BigQueryConfig, template: &str, work_tag: Option<&str>) -> String {
    let mut text = template.to_string();
    for t in TABLES {
        text = text.replace(&format!("{{{t}}}"), &config.table(t));
    }
    if let Some(tag) = work_tag {
        for w in ["work_rows", "work_rejects", "work_files", "work_winners"] {
            text = text.replace(
                &format!("{{{w}}}"),
                &config.table(&format!("_ota_{w}_{tag}")),
            );
        }
    }
    text
}

impl BigQueryWarehouse {
    pub fn open(
        url: &str,
        read_only: bool,
        options: &RunOptions,
        bigquery: &BigQuerySettings,
    ) -> Result<Self> {
        let config = BigQueryConfig::parse(url)?;
        let run_key = options
            .run_id
            .clone()
            .filter(|r| !r.trim().is_empty())
            .unwrap_or_else(|| {
                format!(
                    "adhoc{}_{}",
                    chrono::Utc::now().timestamp_micros(),
                    std::process::id()
                )
            });
        let settings = JobSettings {
            project: config.project.clone(),
            location: config.location.clone(),
            max_bytes_billed: bigquery.max_bytes_billed,
            dry_run: options.dry_run,
            run_key: run_key.clone(),
            step: options.step.clone(),
            job_timeout: bigquery.job_timeout,
        };
        let runtime = ota_lake::gcp::BlockingRuntime::new()?;
        let credentials = runtime.block_on(Credentials::resolve(
            bigquery.credentials.clone(),
            storage_read::BIGQUERY_SCOPE,
        ))?;
        let jobs = Jobs::connect(
            runtime,
            settings,
            credentials.clone(),
            bigquery.endpoint.as_deref(),
        )?;
        // The Storage Read API takes the same account and scope.
        let storage_credentials = credentials;
        let lease_token = {
            let mut h = Md5::new();
            h.update(lease_holder(&run_key, &options.step).as_bytes());
            config.table(&format!(
                "_ota_lease_{}",
                ota_core::hex::encode(&h.finalize()[..6])
            ))
        };
        let mut warehouse = BigQueryWarehouse {
            url: url.to_string(),
            config,
            jobs,
            run_key,
            lease: None,
            lease_token,
            lease_token_written: false,
            storage_credentials,
            storage_endpoint: bigquery.storage_endpoint.clone(),
            staging: bigquery.staging.clone(),
        };
        if !read_only {
            let schema = warehouse.render(&sql::SCHEMA, None);
            warehouse
                .jobs
                .query("schema", &schema, &[], Attach::ByInputs(&[]))?;
            if !options.dry_run {
                warehouse.take_lease()?;
            }
        }
        Ok(warehouse)
    }

    pub fn config(&self) -> &BigQueryConfig {
        &self.config
    }

    /// The jobs this warehouse ran (or dry-ran), for the step summary.
    pub fn job_records(&self) -> &[client::JobRecord] {
        &self.jobs.records
    }

    fn render(&self, template: &str, work_tag: Option<&str>) -> String {
        // A dry run takes no lease and writes no token; its scripts still have to
        // validate, so the token reads as a one-row table of no holder.
        let token = if self.jobs.settings().dry_run {
            DRY_RUN_LEASE_TOKEN
        } else {
            &self.lease_token
        };
        render(&self.config, template, work_tag).replace("{lease_token}", token)
    }

    /// A query whose result the step needs to decide what to do: it runs even in a dry
    /// run (these read only the small bookkeeping tables).
    fn read(&mut self, name: &str, template: &str, params: &[Param]) -> Result<Vec<Vec<Value>>> {
        let text = self.render(template, None);
        let dry = self.jobs.settings().dry_run;
        let result = if dry {
            self.jobs
                .with_dry_run(false, |jobs| jobs.query(name, &text, params, Attach::Never))?
        } else {
            self.jobs.query(name, &text, params, Attach::Never)?
        };
        match result {
            Some(result) => self.all_rows(result),
            None => Ok(Vec::new()),
        }
    }

    fn all_rows(&self, result: QueryResult) -> Result<Vec<Vec<Value>>> {
        let mut rows = result.rows;
        let mut token = result.page_token;
        while let Some(t) = token {
            let (more, next) = self.jobs.page(&result.job_id, Some(t), 10_000)?;
            rows.extend(more);
            token = next;
        }
        Ok(rows)
    }

    fn work_tag(&self, files: &[LakeFile]) -> String {
        let mut h = Md5::new();
        h.update(self.run_key.as_bytes());
        for f in files {
            h.update(f.uri.as_bytes());
            h.update(f.generation.as_bytes());
        }
        ota_core::hex::encode(&h.finalize()[..6])
    }

    fn staging_lake(&self) -> Result<GcsLake> {
        let staging = self.config.staging.as_deref().ok_or_else(|| {
            PipelineError::Config(format!(
                "the warehouse URL {} needs staging=gs://bucket/prefix: load-raw writes typed Parquet there for BigQuery load jobs",
                self.url
            ))
        })?;
        GcsLake::open(staging, &self.staging)
    }

    /// Before a writing transaction: a lease of this run's that expires within
    /// [`LEASE_RENEW_MARGIN_SECONDS`] (or has expired, no other writer having taken it
    /// since) is taken again, so a step that runs long keeps it. One another writer holds
    /// is left alone: the transaction's own check then refuses to write.
    pub(super) fn keep_lease(&mut self) -> Result<()> {
        let Some(holder) = self.lease.clone() else {
            return Ok(());
        };
        let now = chrono::Utc::now().timestamp_micros();
        let rows = self.read("read_lease", sql::CURRENT_LEASES, &[])?;
        let mut ours = None;
        for row in &rows {
            let expires_at = cell_i64(row, 1)?;
            if cell_str(row, 0) == Some(holder.as_str()) {
                ours = Some(expires_at);
            } else if expires_at > now {
                return Ok(());
            }
        }
        match ours {
            Some(expires_at) if expires_at - now > LEASE_RENEW_MARGIN_SECONDS * 1_000_000 => Ok(()),
            _ => {
                tracing::info!(holder = %holder, "renewing the writer lease before writing");
                self.take_lease()
            }
        }
    }

    /// Takes the dataset's writer lease for this run's step, or fails naming who holds
    /// it: stage-files, load-raw and dedup never interleave on one dataset.
    fn take_lease(&mut self) -> Result<()> {
        let holder = lease_holder(&self.run_key, &self.jobs.settings().step);
        let expires_at = chrono::Utc::now().timestamp_micros() + LEASE_SECONDS * 1_000_000;
        let params = [
            Param::string("holder", holder.clone()),
            Param::string("step", self.jobs.settings().step.clone()),
            Param::int64("expires_at", expires_at),
        ];
        let token = self.render(sql::WRITE_LEASE_TOKEN, None);
        self.lease_token_written = true;
        self.jobs
            .query("lease_token", &token, &params, Attach::Never)?;
        let text = self.render(sql::TAKE_LEASE, None);
        let taken = self
            .jobs
            .query("take_lease", &text, &[], Attach::Never)
            .map_err(|e| {
                // Two takers at once: BigQuery aborts one transaction.
                PipelineError::Locked(format!(
                    "could not take the writer lease of {}: {e}; another step is starting, try again",
                    self.config.dataset
                ))
            })?;
        let row = taken.as_ref().and_then(|r| r.rows.first());
        match row.and_then(|r| cell_str(r, 0)) {
            Some(h) if h == holder => {
                self.lease = Some(holder);
                Ok(())
            }
            other => {
                let step = row.and_then(|r| cell_str(r, 1)).unwrap_or("?");
                let until = row
                    .and_then(|r| cell_i64(r, 2).ok())
                    .and_then(chrono::DateTime::from_timestamp_micros)
                    .map_or_else(|| "?".to_string(), |t| t.to_rfc3339());
                Err(PipelineError::Locked(format!(
                    "another writer holds dataset {}: {step} of run {} (lease until {until}); \
                     try again when it has finished. A writer that died leaves its lease until \
                     then; deleting its row from {} frees it sooner",
                    self.config.dataset,
                    other.unwrap_or("?"),
                    self.config.table("writer_lease"),
                )))
            }
        }
    }

    /// Deletes the quarantine entries of `uris`. `at` makes each delete a job of its own:
    /// a later delete of the same URIs in the same run must run, not re-attach.
    fn delete_quarantine_entries(&mut self, uris: &[String], at: i64) -> Result<()> {
        if uris.is_empty() {
            return Ok(());
        }
        let text = self.render(sql::DELETE_QUARANTINE, None);
        self.jobs.query(
            "release_quarantine",
            &text,
            &[Param::strings("uris", uris.iter().cloned())],
            Attach::ByInputs(&[at.to_string()]),
        )?;
        Ok(())
    }
}

impl Drop for BigQueryWarehouse {
    /// Gives the writer lease back and drops the lease token (a step that dies keeps the
    /// lease until it expires; the token table expires by itself too).
    fn drop(&mut self) {
        if let Some(holder) = self.lease.take() {
            let text = self.render(sql::RELEASE_LEASE, None);
            let params = [Param::string("holder", holder)];
            if let Err(e) = self
                .jobs
                .query("release_lease", &text, &params, Attach::Never)
            {
                tracing::warn!(error = %e, "could not give the writer lease back; it expires by itself");
            }
        }
        if std::mem::take(&mut self.lease_token_written) {
            let text = self.render(sql::DROP_LEASE_TOKEN, None);
            if let Err(e) = self
                .jobs
                .query("drop_lease_token", &text, &[], Attach::Never)
            {
                tracing::warn!(error = %e, "could not drop the lease token; it expires by itself");
            }
        }
    }
}

impl Warehouse for BigQueryWarehouse {
    fn url(&self) -> &str {
        &self.url
    }

    fn take_report(&mut self) -> Vec<String> {
        self.jobs.take_report()
    }

    fn job_log(&self) -> Option<Value> {
        let records = &self.jobs.records;
        Some(serde_json::json!({
            "jobs": records.len(),
            "bytes_processed": records.iter().filter_map(|r| r.bytes).sum::<i64>(),
            "reattached": records.iter().filter(|r| r.reattached).count(),
            "job_ids": records.iter().map(|r| r.job_id.as_str()).filter(|id| !id.is_empty()).collect::<Vec<_>>(),
        }))
    }

    fn stage_files(&mut self, run_key: &str, staged: &StagedFiles) -> Result<()> {
        self.record_staged_set(run_key, staged)
    }

    fn staged_files(&mut self, run_key: &str) -> Result<Option<StagedFiles>> {
        self.read_staged_set(run_key)
    }

    fn ledger_entries(&mut self, uris: &[String]) -> Result<BTreeMap<String, RecordedVersion>> {
        self.read_ledger(uris)
    }

    fn quarantine(
        &mut self,
        file: &LakeFile,
        kind: QuarantineKind,
        reason: &str,
        at: i64,
    ) -> Result<()> {
        self.record_quarantine(file, kind, reason, at)
    }

    fn quarantined(&mut self, uris: &[String]) -> Result<BTreeMap<String, QuarantinedFile>> {
        self.read_quarantine(uris)
    }

    fn release_quarantine(&mut self, uris: &[String]) -> Result<()> {
        self.clear_quarantine(uris)
    }

    fn load_raw(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        self.load_files(files, loaded_at, source)
    }

    fn dedup(&mut self, _now: i64) -> Result<DedupOutcome> {
        self.rebuild_dedup_dates()
    }

    /// By run: the dates of the runs after the offset's. An offset inside a run (an
    /// export cut short) counts that run as applied; the export that follows applies it.
    fn dates_changed_after(&mut self, offset: Option<FeedOffset>) -> Result<BTreeSet<NaiveDate>> {
        let at = FeedOffset::changed_at_of(offset);
        let rows = self.read(
            "read_dates_changed_after",
            sql::DATES_CHANGED_AFTER,
            &[Param::int64("at", at)],
        )?;
        rows.iter().map(|r| feed::cell_date(r, 0)).collect()
    }

    fn feed_origin(&mut self) -> Result<Option<i64>> {
        let rows = self.read("read_feed_origin", sql::FEED_ORIGIN, &[])?;
        match rows.first().and_then(|r| feed::cell_str(r, 0)) {
            Some(_) => rows.first().map(|r| feed::cell_i64(r, 0)).transpose(),
            None => Ok(None),
        }
    }

    fn stream_changes(
        &mut self,
        selection: &ChangeSelection,
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()> {
        match selection {
            ChangeSelection::After(offset) => self.stream_feed(*offset, batch_rows, sink),
            ChangeSelection::Dates(dates) => self.stream_dates(dates, batch_rows, sink),
        }
    }

    fn date_checksums(
        &mut self,
        dates: Option<&[NaiveDate]>,
    ) -> Result<BTreeMap<NaiveDate, DateChecksum>> {
        let rows = match dates {
            Some(d) => self.read(
                "read_checksums",
                &sql::CHECKSUMS_OF_DATES,
                &[Param::dates("dates", d.iter().copied())],
            )?,
            None => self.read("read_checksums", &sql::CHECKSUMS_OF_ALL_DATES, &[])?,
        };
        let mut out = BTreeMap::new();
        for r in &rows {
            let hi = cell_i64(r, 2)? as u128;
            let lo = cell_i64(r, 3)? as u128;
            out.insert(
                cell_date(r, 0)?,
                DateChecksum {
                    rows: cell_i64(r, 1)? as u64,
                    checksum: (hi << 32) + lo,
                },
            );
        }
        Ok(out)
    }
}
