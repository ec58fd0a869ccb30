//! `stage-files --from`: splits one large Parquet file (the case data) into daily files
//! `YYYYMMDD_<suffix>.parquet` in the lake, streaming batch by batch with a bounded write
//! buffer, and landing each day only if its bytes changed.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};

use arrow::array::{Array, RecordBatchReader, UInt32Array};
use arrow::compute::take_record_batch;
use chrono::NaiveDate;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use parquet::basic::Compression;
use parquet::file::properties::WriterProperties;
use serde::Serialize;

use crate::{Lake, PutOutcome, daily_file_name};
use ota_core::error::{PipelineError, Result};
use ota_core::typed_batch::event_micros;
use ota_core::typing::date_of_epoch_day;
use ota_core::typing::epoch_day_of_micros;

/// Bytes the open daily writers may buffer before the largest is flushed.
pub const WRITE_BUFFER_BYTES: usize = 64 << 20;
/// Rows per batch read from the source file.
pub const SPLIT_BATCH_ROWS: usize = 65_536;

#[derive(Debug, Clone, Serialize)]
pub struct SplitDay {
    pub day: NaiveDate,
    pub rows: u64,
    pub outcome: PutOutcome,
}

#[derive(Debug, Clone, Serialize)]
pub struct SplitOutcome {
    pub source: String,
    pub rows: u64,
    pub days: Vec<SplitDay>,
    /// Rows whose timestamp is unusable: landed in `unplaceable_<source>.parquet`.
    pub unplaceable_rows: u64,
}

struct DayWriter {
    path: PathBuf,
    writer: ArrowWriter<File>,
    rows: u64,
}

/// Writer settings of the daily files: deterministic, so re-splitting the same input
/// produces the same bytes.
pub fn daily_writer_properties() -> WriterProperties {
    WriterProperties::builder()
        .set_compression(Compression::SNAPPY)
        .set_max_row_group_row_count(Some(128 * 1024))
        .set_created_by("ota-pipeline".to_string())
        .build()
}

pub fn split_into_lake(from: &Path, lake: &dyn Lake, suffix: &str) -> Result<SplitOutcome> {
    let uri = from.display().to_string();
    let bad = |reason: String| PipelineError::BadFile {
        uri: uri.clone(),
        reason,
    };
    let file = File::open(from).map_err(|e| PipelineError::io(from, e))?;
    let reader = ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?
        .with_batch_size(SPLIT_BATCH_ROWS)
        .build()
        .map_err(|e| bad(format!("not a readable Parquet file: {e}")))?;
    let schema = reader.schema();
    let ts_index = schema
        .index_of("timestamp")
        .map_err(|_| bad("it has no timestamp column".into()))?;
    let scratch = lake.scratch_dir()?;
    let stem = from
        .file_name()
        .and_then(|n| n.to_str())
        .map(|n| n.split('.').next().unwrap_or(n).to_string())
        .unwrap_or_else(|| "input".into());
    // Writers keyed by epoch day; i32::MIN holds the unplaceable rows.
    let mut writers: BTreeMap<i32, DayWriter> = BTreeMap::new();
    let mut rows = 0u64;
    for batch in reader {
        let batch = batch.map_err(|e| bad(format!("corrupt data after row {rows}: {e}")))?;
        rows += batch.num_rows() as u64;
        let ts = batch.column(ts_index);
        let micros = event_micros(ts)?;
        let mut by_day: BTreeMap<i32, Vec<u32>> = BTreeMap::new();
        for i in 0..batch.num_rows() {
            let day = if micros.is_valid(i) {
                epoch_day_of_micros(micros.value(i))
            } else {
                i32::MIN
            };
            by_day.entry(day).or_default().push(i as u32);
        }
        for (day, idx) in by_day {
            let part = take_record_batch(&batch, &UInt32Array::from(idx))
                .map_err(|e| PipelineError::arrow("splitting rows by day", e))?;
            let w = match writers.entry(day) {
                std::collections::btree_map::Entry::Occupied(o) => o.into_mut(),
                std::collections::btree_map::Entry::Vacant(v) => {
                    let name = if day == i32::MIN {
                        format!("unplaceable_{stem}.parquet")
                    } else {
                        daily_file_name(date_of_epoch_day(day), suffix)
                    };
                    let path = scratch.join(format!("{name}.split"));
                    let f = File::create(&path).map_err(|e| PipelineError::io(&path, e))?;
                    let writer =
                        ArrowWriter::try_new(f, schema.clone(), Some(daily_writer_properties()))
                            .map_err(|e| PipelineError::Parquet {
                                uri: path.display().to_string(),
                                source: e,
                            })?;
                    v.insert(DayWriter {
                        path,
                        writer,
                        rows: 0,
                    })
                }
            };
            w.rows += part.num_rows() as u64;
            w.writer.write(&part).map_err(|e| PipelineError::Parquet {
                uri: w.path.display().to_string(),
                source: e,
            })?;
        }
        // Keep the buffered row groups of all open days under the budget.
        while writers
            .values()
            .map(|w| w.writer.in_progress_size())
            .sum::<usize>()
            > WRITE_BUFFER_BYTES
        {
            let Some(largest) = writers
                .values_mut()
                .max_by_key(|w| w.writer.in_progress_size())
            else {
                break;
            };
            largest.writer.flush().map_err(|e| PipelineError::Parquet {
                uri: largest.path.display().to_string(),
                source: e,
            })?;
        }
    }
    let mut days = Vec::new();
    let mut unplaceable_rows = 0;
    for (day, w) in writers {
        let DayWriter {
            path,
            writer,
            rows: day_rows,
        } = w;
        writer.close().map_err(|e| PipelineError::Parquet {
            uri: path.display().to_string(),
            source: e,
        })?;
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.strip_suffix(".split"))
            .unwrap_or_default()
            .to_string();
        let outcome = lake.put_file(&name, &path)?;
        let _ = std::fs::remove_file(&path);
        if day == i32::MIN {
            unplaceable_rows = day_rows;
            tracing::warn!(rows = day_rows, file = %name, "rows without a usable timestamp cannot be placed in a day");
        } else {
            tracing::info!(file = %name, rows = day_rows, outcome = ?outcome, "daily file");
            days.push(SplitDay {
                day: date_of_epoch_day(day),
                rows: day_rows,
                outcome,
            });
        }
    }
    Ok(SplitOutcome {
        source: uri,
        rows,
        days,
        unplaceable_rows,
    })
}
