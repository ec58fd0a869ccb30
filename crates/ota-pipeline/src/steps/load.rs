//! load-raw: type the rows of the staged files that changed since they were last loaded
//! and replace their rows in the raw table, all in one transaction.

use std::collections::BTreeSet;
use std::fs::File;

use arrow::array::RecordBatchReader;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::cli::{WarehouseArgs, WindowArgs};
use crate::error::{PipelineError, Result};
use crate::lake::{Lake, LakeFile, open_lake};
use crate::summary::{Status, StepSummary};
use crate::typed_batch::{ColumnMapping, Lineage, TypedBatch, type_batch};
use crate::warehouse::{Access, RawSource, open_warehouse};

/// Rows per Arrow batch read from a file: about 12 MB typed. A few batches are in flight
/// at once (decoded, typed, queued, appended), outside DuckDB's memory limit.
pub const READ_BATCH_ROWS: usize = 16_384;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub window: WindowArgs,
    pub lake_url: String,
    pub warehouse: WarehouseArgs,
}

/// Reads daily Parquet files from the lake and types their rows.
pub struct ParquetRawSource<'a> {
    lake: &'a dyn Lake,
    loaded_at: i64,
    pub rows_read: u64,
    pub unknown_columns: BTreeSet<String>,
}

impl<'a> ParquetRawSource<'a> {
    pub fn new(lake: &'a dyn Lake, loaded_at: i64) -> Self {
        ParquetRawSource {
            lake,
            loaded_at,
            rows_read: 0,
            unknown_columns: BTreeSet::new(),
        }
    }
}

impl RawSource for ParquetRawSource<'_> {
    fn read(
        &mut self,
        file: &LakeFile,
        sink: &mut dyn FnMut(TypedBatch) -> Result<()>,
    ) -> Result<()> {
        let bad = |reason: String| PipelineError::BadFile {
            uri: file.uri.clone(),
            reason,
        };
        // The file must still be the version stage-files recorded.
        match self.lake.version_of(&file.uri)? {
            Some(now) if now.size == file.size && now.generation == file.generation => {}
            Some(_) => {
                return Err(bad(
                    "it changed since stage-files ran; run stage-files again".into(),
                ));
            }
            None => {
                return Err(bad(
                    "it disappeared since stage-files ran; run stage-files again".into(),
                ));
            }
        }
        let copy = self.lake.local_copy(file)?;
        let handle = File::open(copy.path()).map_err(|e| PipelineError::io(copy.path(), e))?;
        let reader = ParquetRecordBatchReaderBuilder::try_new(handle)
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?
            .with_batch_size(READ_BATCH_ROWS)
            .build()
            .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
        let mapping = ColumnMapping::new(&reader.schema());
        for required in ["request_id", "timestamp"] {
            if mapping.missing.contains(&required) {
                return Err(bad(format!(
                    "it has no {required} column, so no row can be keyed"
                )));
            }
        }
        for name in &mapping.unknown {
            if self.unknown_columns.insert(name.clone()) {
                tracing::warn!(column = %name, file = %file.uri, "ignoring a column the event contract does not know");
            }
        }
        let lineage = Lineage {
            source_day: crate::typing::epoch_day_of_date(file.day),
            source_file: file.uri.clone(),
            ingested_at: file.ingested_at,
            loaded_at: self.loaded_at,
        };
        // Decoding and typing run on their own thread, a couple of batches ahead of the
        // warehouse appends on this one: the two are the step's main costs.
        let (mapping, lineage, bad) = (&mapping, &lineage, &bad);
        let rows = std::thread::scope(|scope| -> Result<i64> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(TypedBatch, i64)>>(2);
            scope.spawn(move || {
                let mut row = 0i64;
                for batch in reader {
                    let typed = batch
                        .map_err(|e| bad(format!("corrupt data after row {row}: {e}")))
                        .and_then(|b| {
                            let n = b.num_rows() as i64;
                            Ok((type_batch(&b, mapping, lineage, row)?, n))
                        });
                    let stop = typed.is_err();
                    if let Ok((_, n)) = &typed {
                        row += n;
                    }
                    // A closed channel: the appending side failed and stopped listening.
                    if tx.send(typed).is_err() || stop {
                        break;
                    }
                }
            });
            let mut rows = 0i64;
            for typed in rx {
                let (typed, n) = typed?;
                sink(typed)?;
                rows += n;
            }
            Ok(rows)
        })?;
        self.rows_read += rows as u64;
        Ok(())
    }
}

pub fn load_raw(config: &LoadConfig) -> Result<StepSummary> {
    let lake = open_lake(&config.lake_url)?;
    let mut warehouse = open_warehouse(&config.warehouse, Access::ReadWrite, "load-raw")?;
    let staged = warehouse.staged_files()?.ok_or_else(|| {
        PipelineError::Config("nothing is staged in the warehouse: run stage-files first".into())
    })?;
    if config.window.is_explicit() || config.window.has_reference() {
        let asked = config.window.resolve()?;
        if asked != staged.window {
            return Err(PipelineError::Config(format!(
                "the staged window is {}, not {asked}: run stage-files for {asked} first",
                staged.window
            )));
        }
    }
    let mut summary = StepSummary::new("load-raw", Some(staged.window));
    summary.counts.files = staged.files.len() as u64;
    if staged.files.is_empty() {
        summary.status = Status::NoData;
        summary.detail("files_loaded", Vec::<String>::new());
        summary.detail("affected_dates", Vec::<String>::new());
        return Ok(summary);
    }
    let uris: Vec<String> = staged.files.iter().map(|f| f.uri.clone()).collect();
    let ledger = warehouse.ledger_entries(&uris)?;
    let (skipped, changed): (Vec<_>, Vec<_>) = staged
        .files
        .iter()
        .cloned()
        .partition(|f| ledger.get(&f.uri).is_some_and(|e| e.matches(f)));
    for f in &skipped {
        tracing::info!(file = %f.uri, "unchanged since it was loaded; skipping");
    }
    let loaded_at = chrono::Utc::now().timestamp_micros();
    let mut source = ParquetRawSource::new(lake.as_ref(), loaded_at);
    let outcome = warehouse.load_raw(&changed, loaded_at, &mut source)?;
    tracing::info!(
        files = changed.len(),
        rows = outcome.rows_written,
        rejected = outcome.rejected,
        "loaded raw rows"
    );

    summary.counts.rows_read = source.rows_read;
    summary.counts.rejected = outcome.rejected;
    summary.counts.rows_written = outcome.rows_written;
    summary.detail(
        "files_loaded",
        changed.iter().map(|f| f.uri.as_str()).collect::<Vec<_>>(),
    );
    summary.detail(
        "files_skipped",
        skipped.iter().map(|f| f.uri.as_str()).collect::<Vec<_>>(),
    );
    summary.detail("rows_replaced", outcome.rows_replaced);
    summary.detail("affected_dates", &outcome.affected_dates);
    summary.detail("unknown_columns", &source.unknown_columns);
    if let Some(jobs) = warehouse.job_log() {
        summary.detail("warehouse_jobs", jobs);
    }
    Ok(summary)
}
