//! ota-warehouse: the file ledger, the raw table, the deduplicated table and its change
//! feed. A small trait ([`Warehouse`]) with one module per backend: embedded [`duckdb`]
//! and [`bigquery`]; [`key_order`] sorts large change selections in bounded memory.

pub mod bigquery;
pub mod duckdb;
mod key_order;

pub use ota_core::change::{
    ChangeBatch, ChangeOp, DateChecksum, FeedOffset, add_to_checksum, binary_at,
};
pub use ota_core::quarantine::QuarantineKind;

use std::collections::{BTreeMap, BTreeSet};

use chrono::NaiveDate;
use serde::Serialize;

use ota_core::error::{PipelineError, Result};
use ota_core::typed_batch::TypedBatch;
use ota_core::window::DateWindow;
use ota_lake::{LakeFile, RecordedVersion};

/// The files stage-files exposed to the warehouse for a window.
#[derive(Debug, Clone)]
pub struct StagedFiles {
    pub window: DateWindow,
    pub files: Vec<LakeFile>,
}

/// Streams the typed rows of one file into the warehouse.
pub trait RawSource {
    /// Reads `file`, handing each typed batch to `sink`.
    fn read(
        &mut self,
        file: &LakeFile,
        sink: &mut dyn FnMut(TypedBatch) -> Result<()>,
    ) -> Result<()>;
}

/// A file version load-raw could not load, kept out of later loads until a new version
/// of the file lands (or, when it shrank, a run allows it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuarantinedFile {
    pub uri: String,
    pub size: u64,
    pub checksum: String,
    pub kind: QuarantineKind,
    pub reason: String,
    /// UTC microseconds.
    pub quarantined_at: i64,
}

impl QuarantinedFile {
    /// A quarantine row as either warehouse stores it: (uri, size, checksum, kind,
    /// reason, quarantined_at).
    pub fn from_quarantine_row(
        uri: String,
        size: i64,
        checksum: String,
        kind: &str,
        reason: String,
        quarantined_at: Option<i64>,
    ) -> Self {
        QuarantinedFile {
            uri,
            size: size.max(0) as u64,
            checksum,
            kind: QuarantineKind::parse(kind),
            reason,
            quarantined_at: quarantined_at.unwrap_or(0),
        }
    }

    /// Whether the lake file is the version that was quarantined.
    pub fn is_version_of(&self, file: &LakeFile) -> bool {
        self.size == file.size && self.checksum == file.checksum
    }
}

/// Outcome of a raw load.
#[derive(Debug, Clone, Default, Serialize)]
pub struct RawLoadOutcome {
    pub rows_written: u64,
    pub rejected: u64,
    pub rows_replaced: u64,
    /// Event dates whose raw rows changed (old and new), for dedup.
    pub affected_dates: Vec<NaiveDate>,
}

/// The bookkeeping of a raw load that is the same on every backend: the event dates the
/// replaced and the new rows belong to (dedup rebuilds those), and the rows written,
/// rejected and replaced, in all and per file (for the ledger).
#[derive(Debug, Default)]
pub struct RawLoadTally {
    outcome: RawLoadOutcome,
    dates: BTreeSet<NaiveDate>,
    file_rows: u64,
    file_rejected: u64,
}

/// What one file contributed to a raw load, as its ledger entry records it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FileCounts {
    /// Rows loaded into the raw table.
    pub loaded: u64,
    /// Rows rejected (into the rejects table).
    pub rejected: u64,
}

impl RawLoadTally {
    /// Rows of the file's previously loaded version, on `date`, that this load replaces.
    pub fn replaced(&mut self, date: NaiveDate, rows: u64) {
        self.dates.insert(date);
        self.outcome.rows_replaced += rows;
    }

    /// A typed batch of the file being loaded: its rows' event dates and its counts.
    pub fn typed(&mut self, batch: &TypedBatch) {
        use arrow::array::AsArray;
        if let Ok(idx) = batch.rows.schema().index_of("event_date") {
            let days = batch
                .rows
                .column(idx)
                .as_primitive::<arrow::datatypes::Date32Type>();
            let mut last = None;
            for day in days.values().iter() {
                if last != Some(*day) {
                    self.dates.insert(ota_core::typing::date_of_epoch_day(*day));
                    last = Some(*day);
                }
            }
        }
        self.file_rows += batch.rows.num_rows() as u64;
        self.file_rejected += batch.rejected.len() as u64;
    }

    /// Ends the file being loaded: its counts, added to the load's.
    pub fn file_done(&mut self) -> FileCounts {
        let counts = FileCounts {
            loaded: self.file_rows,
            rejected: self.file_rejected,
        };
        self.outcome.rows_written += self.file_rows;
        self.outcome.rejected += self.file_rejected;
        (self.file_rows, self.file_rejected) = (0, 0);
        counts
    }

    /// The event dates whose raw rows changed, in order.
    pub fn affected_dates(&self) -> impl Iterator<Item = NaiveDate> + '_ {
        self.dates.iter().copied()
    }

    /// The load's outcome.
    pub fn finish(mut self) -> RawLoadOutcome {
        self.outcome.affected_dates = self.dates.into_iter().collect();
        self.outcome
    }
}

/// Outcome of a dedup run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct DedupOutcome {
    pub rebuilt_dates: Vec<NaiveDate>,
    pub rows_read: u64,
    pub duplicates_removed: u64,
    pub rows_changed: u64,
    pub rows_deleted: u64,
    /// `changed_at` of this run, UTC microseconds (None when nothing was pending).
    pub changed_at: Option<i64>,
}

/// Which changes to read from the warehouse.
#[derive(Debug, Clone)]
pub enum ChangeSelection {
    /// The change feed after an offset (None: from the beginning): upserts and tombstones.
    After(Option<FeedOffset>),
    /// Every current row of these event dates (re-sync): upserts only.
    Dates(Vec<NaiveDate>),
}

/// A warehouse backend. It streams its change feed as [`ChangeBatch`]es: the columns `op`
/// (the [`ChangeOp`] code its SQL writes, 'U' upsert or 'D' delete), `changed_at`, then
/// the typed columns of [`ota_core::contract::TYPED_SCHEMA`], checked when each is built.
pub trait Warehouse: Send {
    fn url(&self) -> &str;

    /// Records the files of the window as the staged set of the run `run_key` (see
    /// [`RunSettings::staging_key`]), replacing that run's previous one: runs that
    /// overlap each keep their own.
    fn stage_files(&mut self, run_key: &str, staged: &StagedFiles) -> Result<()>;

    /// The staged set of the run `run_key`, if stage-files ran for it.
    fn staged_files(&mut self, run_key: &str) -> Result<Option<StagedFiles>>;

    /// What the file ledger recorded of these URIs, by URI (those it knows).
    fn ledger_entries(&mut self, uris: &[String]) -> Result<BTreeMap<String, RecordedVersion>>;

    /// Records a file version as quarantined, replacing an earlier entry of its URI.
    fn quarantine(
        &mut self,
        file: &LakeFile,
        kind: QuarantineKind,
        reason: &str,
        at: i64,
    ) -> Result<()>;

    /// The quarantine entries of these URIs, by URI (those that have one).
    fn quarantined(&mut self, uris: &[String]) -> Result<BTreeMap<String, QuarantinedFile>>;

    /// Forgets the quarantine entries of these URIs (a version of them loaded).
    fn release_quarantine(&mut self, uris: &[String]) -> Result<()>;

    /// Replaces the raw rows of each file with what `source` reads, all files in one
    /// transaction (a failure leaves the warehouse unchanged), updating the ledger and
    /// queueing the affected event dates for dedup.
    fn load_raw(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome>;

    /// Rebuilds the dedup rows of the queued event dates, maintaining `changed_at` and
    /// tombstones. `now` is the current time in UTC microseconds.
    fn dedup(&mut self, now: i64) -> Result<DedupOutcome>;

    /// Streams changes in `(changed_at, event_key)` order as change batches of at most
    /// `batch_rows` rows. `sink` returns false to stop early.
    fn stream_changes(
        &mut self,
        selection: &ChangeSelection,
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()>;

    /// When this warehouse's change feed began: the first dedup run's `changed_at`, UTC
    /// microseconds (None before any). An offset is a position in one feed; this tells a
    /// warehouse's feed from another's (a new URL, a rebuilt file), so MySQL never applies
    /// one feed after an offset taken in another.
    fn feed_origin(&mut self) -> Result<Option<i64>>;

    /// The event dates the feed has changes of after `offset` (None: from its start): what
    /// an export has yet to apply, so a reconcile calls them pending, not drift.
    fn dates_changed_after(&mut self, offset: Option<FeedOffset>) -> Result<BTreeSet<NaiveDate>>;

    /// About how many changes the feed holds after `offset` (at least as many as it will
    /// stream), for the progress log's total and time left; None where counting would
    /// cost a query job of its own (BigQuery bills each).
    fn feed_length(&mut self, _offset: Option<FeedOffset>) -> Result<Option<u64>> {
        Ok(None)
    }

    /// What a dry run would have run (BigQuery: each statement with its estimate), for
    /// the step to print before its summary; emptied by the call.
    fn take_report(&mut self) -> Vec<String> {
        Vec::new()
    }

    /// What the warehouse ran for this step, for the summary (BigQuery: its jobs, bytes
    /// processed and re-attachments). None for the embedded warehouse.
    fn job_log(&self) -> Option<serde_json::Value> {
        None
    }

    /// Per event date: row count and checksum of the dedup table (all dates when None).
    fn date_checksums(
        &mut self,
        dates: Option<&[NaiveDate]>,
    ) -> Result<BTreeMap<NaiveDate, DateChecksum>>;
}

/// How a step uses the warehouse.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    ReadWrite,
    /// Reads only (export, reconcile): several such runs may share an embedded warehouse.
    ReadOnly,
}

/// How a step runs against the warehouse.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RunSettings {
    /// BigQuery: print statements with their estimates instead of running them.
    pub dry_run: bool,
    /// What BigQuery job ids derive from, so a retried task re-attaches to its jobs;
    /// also which staged set is the run's own.
    pub run_id: Option<String>,
}

impl RunSettings {
    /// The key of the run's staged set: its run id, so two runs that overlap (a scheduled
    /// run and a backfill, two manual triggers) never load each other's files. Runs
    /// started by hand without one share the set ''.
    pub fn staging_key(&self) -> &str {
        self.run_id.as_deref().unwrap_or("")
    }
}

/// Which warehouse a step works on, how it is reached and how the step runs against it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WarehouseConfig {
    /// `duckdb:///abs/path/warehouse.duckdb` or `bigquery://project/dataset?location=US`.
    pub url: String,
    pub run: RunSettings,
    /// How BigQuery is reached (unused by the embedded warehouse).
    pub bigquery: bigquery::BigQuerySettings,
}

impl WarehouseConfig {
    /// The warehouse at `url`; for a `bigquery://` URL with the settings `lookup` gives
    /// (the CLI hands over the process environment), so the embedded warehouse never
    /// trips on them.
    pub fn new(
        url: impl Into<String>,
        run: RunSettings,
        lookup: impl Fn(&str) -> Option<String>,
    ) -> Result<Self> {
        let url = url.into();
        let bigquery = if url.starts_with("bigquery://") {
            bigquery::BigQuerySettings::from_lookup(lookup)?
        } else {
            bigquery::BigQuerySettings::default()
        };
        Ok(WarehouseConfig { url, run, bigquery })
    }

    /// Opens this warehouse for the step `step`.
    pub fn open(&self, access: Access, step: &str) -> Result<Box<dyn Warehouse>> {
        open_warehouse(&self.url, &self.run, access, step, &self.bigquery)
    }
}

/// Opens the warehouse at `url` for the step `step`, BigQuery reached as `bigquery` says.
pub fn open_warehouse(
    url: &str,
    run: &RunSettings,
    access: Access,
    step: &str,
    bigquery: &bigquery::BigQuerySettings,
) -> Result<Box<dyn Warehouse>> {
    if let Some(path) = url.strip_prefix("duckdb://") {
        if run.dry_run {
            return Err(PipelineError::Config(
                "--dry-run prints BigQuery statements and estimates; the embedded warehouse has none".into(),
            ));
        }
        Ok(Box::new(duckdb::DuckDbWarehouse::open(
            path,
            access == Access::ReadOnly,
        )?))
    } else if url.starts_with("bigquery://") {
        let options = bigquery::RunOptions {
            step: step.to_string(),
            run_id: run.run_id.clone(),
            dry_run: run.dry_run,
        };
        Ok(Box::new(bigquery::BigQueryWarehouse::open(
            url,
            access == Access::ReadOnly,
            &options,
            bigquery,
        )?))
    } else {
        Err(PipelineError::Config(format!(
            "warehouse URL {url:?} must start with duckdb:// or bigquery://"
        )))
    }
}
