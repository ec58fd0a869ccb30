//! load-raw's staging: typed rows, rejects and ledger rows written as local Parquet
//! (timestamps as UTC instants, so BigQuery loads them as TIMESTAMP), to be landed under
//! the staging prefix and loaded into the run's work tables.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, Int64Array, RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::datatypes::{DataType, Field, Schema, TimeUnit};
use parquet::arrow::ArrowWriter;

use ota_core::error::{PipelineError, Result};
use ota_core::typing::epoch_day_of_date;
use ota_lake::LakeFile;

/// Timestamps as UTC instants, so BigQuery loads them as TIMESTAMP (not DATETIME).
pub(super) fn with_utc_timestamps(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut fields = Vec::with_capacity(batch.num_columns());
    let mut columns = Vec::with_capacity(batch.num_columns());
    for (field, column) in batch.schema().fields().iter().zip(batch.columns()) {
        if let Some(ts) = column.as_any().downcast_ref::<TimestampMicrosecondArray>() {
            let utc = ts.clone().with_timezone("UTC");
            fields.push(Field::new(
                field.name(),
                utc.data_type().clone(),
                field.is_nullable(),
            ));
            columns.push(Arc::new(utc) as ArrayRef);
        } else {
            fields.push(field.as_ref().clone());
            columns.push(column.clone());
        }
    }
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(|e| PipelineError::arrow("preparing rows for BigQuery", e))
}

/// A local Parquet file being written, then landed in the staging area.
pub(super) struct StagingFile {
    pub(super) path: PathBuf,
    writer: Option<ArrowWriter<File>>,
}

impl StagingFile {
    pub(super) fn create(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        Ok(StagingFile { path, writer: None })
    }

    pub(super) fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(|e| PipelineError::io(&self.path, e))?;
            // Snappy, 128k-row groups: the writer's buffer stays small.
            let properties = ota_lake::split::daily_writer_properties();
            let writer =
                ArrowWriter::try_new(file, batch.schema(), Some(properties)).map_err(|e| {
                    PipelineError::Parquet {
                        uri: self.path.display().to_string(),
                        source: e,
                    }
                })?;
            self.writer = Some(writer);
        }
        if let Some(w) = self.writer.as_mut() {
            w.write(batch).map_err(|e| PipelineError::Parquet {
                uri: self.path.display().to_string(),
                source: e,
            })?;
        }
        Ok(())
    }

    /// Closes the file; false when nothing was written.
    pub(super) fn finish(&mut self) -> Result<bool> {
        match self.writer.take() {
            Some(w) => {
                w.close().map_err(|e| PipelineError::Parquet {
                    uri: self.path.display().to_string(),
                    source: e,
                })?;
                Ok(true)
            }
            None => Ok(false),
        }
    }
}

impl Drop for StagingFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

pub(super) fn rejects_batch(
    file: &LakeFile,
    rejects: &[ota_core::typed_batch::RejectedRow],
    loaded_at: i64,
) -> Result<RecordBatch> {
    let n = rejects.len();
    let schema = Arc::new(Schema::new(vec![
        Field::new("source_file", DataType::Utf8, false),
        Field::new("source_day", DataType::Date32, true),
        Field::new("source_row", DataType::Int64, true),
        Field::new("reason", DataType::Utf8, true),
        Field::new("request_id", DataType::Utf8, true),
        Field::new("raw_timestamp", DataType::Utf8, true),
        Field::new(
            "loaded_at",
            DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into())),
            true,
        ),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from(vec![file.uri.as_str(); n])),
        Arc::new(arrow::array::Date32Array::from(vec![
            epoch_day_of_date(
                file.day
            );
            n
        ])),
        Arc::new(Int64Array::from_iter_values(
            rejects.iter().map(|r| r.source_row),
        )),
        Arc::new(StringArray::from_iter_values(
            rejects.iter().map(|r| r.reason.as_str()),
        )),
        Arc::new(StringArray::from_iter(
            rejects.iter().map(|r| r.request_id.as_deref()),
        )),
        Arc::new(StringArray::from_iter(
            rejects.iter().map(|r| r.raw_timestamp.as_deref()),
        )),
        Arc::new(TimestampMicrosecondArray::from(vec![loaded_at; n]).with_timezone("UTC")),
    ];
    RecordBatch::try_new(schema, columns).map_err(|e| PipelineError::arrow("writing rejects", e))
}

pub(super) fn files_batch(entries: &[(LakeFile, u64, u64)], loaded_at: i64) -> Result<RecordBatch> {
    let n = entries.len();
    let utc = || DataType::Timestamp(TimeUnit::Microsecond, Some("UTC".into()));
    let schema = Arc::new(Schema::new(vec![
        Field::new("uri", DataType::Utf8, false),
        Field::new("source_day", DataType::Date32, true),
        Field::new("size", DataType::Int64, true),
        Field::new("generation", DataType::Utf8, true),
        Field::new("checksum", DataType::Utf8, true),
        Field::new("ingested_at", utc(), true),
        Field::new("loaded_at", utc(), true),
        Field::new("rows_loaded", DataType::Int64, true),
        Field::new("rows_rejected", DataType::Int64, true),
    ]));
    let columns: Vec<ArrayRef> = vec![
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.0.uri.as_str()),
        )),
        Arc::new(arrow::array::Date32Array::from_iter_values(
            entries.iter().map(|e| epoch_day_of_date(e.0.day)),
        )),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.0.size as i64),
        )),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.0.generation.as_str()),
        )),
        Arc::new(StringArray::from_iter_values(
            entries.iter().map(|e| e.0.checksum.as_str()),
        )),
        Arc::new(
            TimestampMicrosecondArray::from_iter_values(entries.iter().map(|e| e.0.ingested_at))
                .with_timezone("UTC"),
        ),
        Arc::new(TimestampMicrosecondArray::from(vec![loaded_at; n]).with_timezone("UTC")),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.1 as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            entries.iter().map(|e| e.2 as i64),
        )),
    ];
    RecordBatch::try_new(schema, columns)
        .map_err(|e| PipelineError::arrow("writing the ledger rows", e))
}
