//! The BigQuery warehouse (`bigquery://project/dataset?location=US&staging=gs://bucket/prefix`).
//!
//! Same tables and semantics as the embedded one: raw (partitioned by source_day), dedup
//! (partitioned by event_date) with `changed_at` and tombstones, the file ledger. Rows
//! are typed in Rust by the same code as the embedded engine (identical keys and
//! hashes), written as Parquet to the staging area and loaded into per-run work tables;
//! one script then replaces the files' raw rows in a transaction. Credentials: the
//! BigQuery account's key (`OTA_BQ_KEY_FILE`); `OTA_BQ_ENDPOINT` for an emulator;
//! `OTA_BQ_MAX_BYTES` caps every job's billed bytes.

pub mod client;
pub mod sql;
pub mod storage_read;

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float64Builder, Int64Array, Int64Builder, RecordBatch, StringArray, StringBuilder,
    TimestampMicrosecondArray, TimestampMicrosecondBuilder,
};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};
use base64::Engine;
use chrono::NaiveDate;
use md5::{Digest, Md5};
use parquet::arrow::ArrowWriter;
use serde_json::Value;

use super::{
    ChangeSelection, DateChecksum, DedupOutcome, LedgerEntry, RawLoadOutcome, RawSource,
    StagedFiles, Warehouse,
};
use crate::contract::{PRICE_PRECISION, PRICE_SCALE, TYPED_COLUMNS, TYPED_SCHEMA, TypedKind};
use crate::error::{PipelineError, Result};
use crate::gcp::Credentials;
use crate::lake::gcs::GcsLake;
use crate::lake::{Lake, LakeFile};
use crate::typing::epoch_day_of_date;
use crate::window::{DateWindow, parse_date};
use client::{Attach, JobSettings, Jobs, Param, QueryResult};

pub const KEY_FILE_VAR: &str = "OTA_BQ_KEY_FILE";
pub const ENDPOINT_VAR: &str = "OTA_BQ_ENDPOINT";
pub const MAX_BYTES_VAR: &str = "OTA_BQ_MAX_BYTES";
/// Staged-file parameters per INSERT job.
const STAGED_FILES_PER_JOB: usize = 500;

/// What a `bigquery://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigQueryConfig {
    pub project: String,
    pub dataset: String,
    pub location: String,
    /// Where load-raw writes typed Parquet for load jobs (`gs://bucket/prefix`).
    pub staging: Option<String>,
    /// Whether stage-files (re)creates the external table over the staged URIs.
    pub external_table: bool,
}

fn valid_project(p: &str) -> bool {
    (6..=30).contains(&p.len())
        && p.as_bytes()[0].is_ascii_lowercase()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !p.ends_with('-')
}

fn valid_dataset(d: &str) -> bool {
    (1..=1024).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl BigQueryConfig {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| PipelineError::Config(format!("warehouse URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("bigquery://")
            .ok_or_else(|| bad("must start with bigquery://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (project, dataset) = path
            .split_once('/')
            .ok_or_else(|| bad("must be bigquery://project/dataset"))?;
        if !valid_project(project) {
            return Err(bad(
                "the project id must be 6-30 lowercase letters, digits or '-'",
            ));
        }
        if !valid_dataset(dataset) {
            return Err(bad("the dataset must be letters, digits or '_'"));
        }
        let mut config = BigQueryConfig {
            project: project.to_string(),
            dataset: dataset.to_string(),
            location: "US".to_string(),
            staging: None,
            external_table: true,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "location" => {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        return Err(bad(
                            "location must be a BigQuery location such as US or europe-west1",
                        ));
                    }
                    config.location = value.to_string();
                }
                "staging" => {
                    crate::lake::gcs::GcsLocation::parse(value)?;
                    config.staging = Some(value.to_string());
                }
                "external_table" => {
                    config.external_table = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("external_table must be true or false")),
                    }
                }
                other => return Err(bad(&format!("unknown setting {other:?}"))),
            }
        }
        Ok(config)
    }

    /// A table of the dataset as SQL names it.
    pub fn table(&self, name: &str) -> String {
        format!("`{}.{}.{name}`", self.project, self.dataset)
    }
}

/// How the step that opens the warehouse runs its jobs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub step: String,
    pub run_id: Option<String>,
    pub dry_run: bool,
}

pub struct BigQueryWarehouse {
    config: BigQueryConfig,
    url: String,
    jobs: Jobs,
    run_key: String,
    /// The BigQuery account's token source for the Storage Read API.
    storage_credentials: Credentials,
}

/// The change feed's start: 0001-01-01 in microseconds.
const FEED_START_MICROS: i64 = -62_135_596_800_000_000;

/// The names templates may use, rendered to qualified identifiers.
const TABLES: [&str; 12] = [
    "raw_events",
    "raw_rejects",
    "raw_file_dates",
    "file_ledger",
    "staged_runs",
    "staged_files",
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
    pub fn open(url: &str, read_only: bool, options: &RunOptions) -> Result<Self> {
        let config = BigQueryConfig::parse(url)?;
        let env = |var: &str| std::env::var(var).ok().filter(|v| !v.is_empty());
        let max_bytes_billed = env(MAX_BYTES_VAR)
            .map(|v| {
                v.parse::<i64>().ok().filter(|b| *b > 0).ok_or_else(|| {
                    PipelineError::Config(format!(
                        "{MAX_BYTES_VAR}={v:?} must be a positive number of bytes"
                    ))
                })
            })
            .transpose()?;
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
            max_bytes_billed,
            dry_run: options.dry_run,
            run_key: run_key.clone(),
            step: options.step.clone(),
        };
        let jobs = Jobs::connect(
            settings,
            env(KEY_FILE_VAR).as_deref(),
            env(ENDPOINT_VAR).as_deref(),
        )?;
        let storage_credentials = match env(KEY_FILE_VAR) {
            Some(key) => jobs.runtime().block_on(Credentials::service_account(
                Path::new(&key),
                storage_read::BIGQUERY_SCOPE,
            ))?,
            None => Credentials::Emulator,
        };
        let mut warehouse = BigQueryWarehouse {
            url: url.to_string(),
            config,
            jobs,
            run_key,
            storage_credentials,
        };
        if !read_only {
            let schema = warehouse.render(&sql::SCHEMA, None);
            warehouse
                .jobs
                .query("schema", &schema, &[], Attach::ByInputs(&[]))?;
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
        render(&self.config, template, work_tag)
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
        crate::hex::encode(&h.finalize()[..6])
    }

    fn staging_lake(&self) -> Result<GcsLake> {
        let staging = self.config.staging.as_deref().ok_or_else(|| {
            PipelineError::Config(format!(
                "the warehouse URL {} needs staging=gs://bucket/prefix: load-raw writes typed Parquet there for BigQuery load jobs",
                self.url
            ))
        })?;
        GcsLake::open(staging)
    }
}

fn cell_str(row: &[Value], i: usize) -> Option<&str> {
    row.get(i).and_then(Value::as_str)
}

fn cell_i64(row: &[Value], i: usize) -> Result<i64> {
    cell_str(row, i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| PipelineError::Warehouse {
            context: "reading a BigQuery result".into(),
            source: format!("column {i} is not an integer: {:?}", row.get(i)).into(),
        })
}

fn cell_date(row: &[Value], i: usize) -> Result<NaiveDate> {
    parse_date("BigQuery date", cell_str(row, i).unwrap_or_default())
}

/// `12.5`, `-0.000001`, `3` -> millionths.
pub fn parse_decimal_micros(text: &str) -> Option<i128> {
    let (negative, digits) = match text.strip_prefix('-') {
        Some(rest) => (true, rest),
        None => (false, text),
    };
    let (int_part, frac) = digits.split_once('.').unwrap_or((digits, ""));
    if int_part.is_empty() && frac.is_empty() {
        return None;
    }
    let int: i128 = if int_part.is_empty() {
        0
    } else {
        int_part.parse().ok()?
    };
    let mut frac_micros: i128 = 0;
    for (i, b) in frac.bytes().enumerate() {
        if !b.is_ascii_digit() {
            return None;
        }
        if i < 6 {
            frac_micros += i128::from(b - b'0') * 10i128.pow(5 - i as u32);
        } else if b != b'0' {
            return None; // more precision than DECIMAL(18,6) holds
        }
    }
    let value = int.checked_mul(1_000_000)?.checked_add(frac_micros)?;
    Some(if negative { -value } else { value })
}

/// The schema of change batches: `op`, `changed_at`, then the typed columns.
pub static CHANGE_SCHEMA: std::sync::LazyLock<SchemaRef> = std::sync::LazyLock::new(|| {
    let mut fields = vec![
        Field::new("op", DataType::Utf8, false),
        Field::new(
            "changed_at",
            DataType::Timestamp(TimeUnit::Microsecond, None),
            false,
        ),
    ];
    for f in TYPED_SCHEMA.fields() {
        let keyed = matches!(f.name().as_str(), "event_key" | "event_date");
        fields.push(Field::new(f.name(), f.data_type().clone(), !keyed));
    }
    Arc::new(Schema::new(fields))
});

/// Hands a Storage Read stream to `sink` in batches of at most `batch_rows`; for the
/// change feed, checks that rows arrive in `(changed_at, event_key)` order (offsets are
/// committed per batch, so the order is what makes a resumed export exact).
fn stream_batches(
    mut reader: storage_read::ArrowTableReader<'_>,
    feed_order: bool,
    batch_rows: usize,
    sink: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<()> {
    let mut last = None;
    while let Some(batch) = reader.next_batch()? {
        let batch = to_change_schema(&batch)?;
        if feed_order {
            check_order(&batch, &mut last)?;
        }
        let mut start = 0;
        while start < batch.num_rows() {
            let len = batch_rows.min(batch.num_rows() - start);
            if !sink(batch.slice(start, len))? {
                return Ok(());
            }
            start += len;
        }
    }
    Ok(())
}

/// Fails when a row sorts before the one read before it (by changed_at, then event_key).
fn check_order(batch: &RecordBatch, last: &mut Option<(i64, Vec<u8>)>) -> Result<()> {
    use arrow::array::AsArray;
    let at = batch
        .column(1)
        .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
    let keys = batch.column(2);
    for i in 0..batch.num_rows() {
        let key = super::binary_at(keys.as_ref(), i).unwrap_or_default();
        if let Some((last_at, last_key)) = last.as_ref()
            && (at.value(i), key) < (*last_at, last_key.as_slice())
        {
            return Err(PipelineError::Warehouse {
                context: "reading the change feed".into(),
                source: "BigQuery returned the result out of order; nothing after the last committed batch was applied".into(),
            });
        }
        *last = Some((at.value(i), key.to_vec()));
    }
    Ok(())
}

/// A batch of the change query's result in the change schema: BigQuery's Arrow types
/// (NUMERIC as Decimal128(38, 9), timestamps selected as INT64 microseconds) cast to the
/// contract's.
pub fn to_change_schema(batch: &RecordBatch) -> Result<RecordBatch> {
    let mut columns = Vec::with_capacity(CHANGE_SCHEMA.fields().len());
    for field in CHANGE_SCHEMA.fields() {
        let column =
            batch
                .column_by_name(field.name())
                .ok_or_else(|| PipelineError::Warehouse {
                    context: "reading the change feed".into(),
                    source: format!("the result has no column {}", field.name()).into(),
                })?;
        let cast = arrow::compute::cast(column, field.data_type())
            .map_err(|e| PipelineError::arrow(format!("converting column {}", field.name()), e))?;
        columns.push(cast);
    }
    RecordBatch::try_new(CHANGE_SCHEMA.clone(), columns)
        .map_err(|e| PipelineError::arrow("assembling a change batch", e))
}

/// Builds an Arrow batch of the change schema from BigQuery's JSON rows.
pub fn change_batch(rows: &[Vec<Value>]) -> Result<RecordBatch> {
    let bad = |col: &str, v: &Value| PipelineError::Warehouse {
        context: "reading the change feed".into(),
        source: format!("column {col}: unexpected value {v}").into(),
    };
    let n = rows.len();
    let mut columns: Vec<ArrayRef> = Vec::with_capacity(2 + TYPED_COLUMNS.len());
    let mut op = StringBuilder::with_capacity(n, n);
    let mut at = TimestampMicrosecondBuilder::with_capacity(n);
    for row in rows {
        op.append_option(cell_str(row, 0));
        at.append_value(cell_i64(row, 1)?);
    }
    columns.push(Arc::new(op.finish()));
    columns.push(Arc::new(at.finish()));
    for (offset, col) in TYPED_COLUMNS.iter().enumerate() {
        let i = offset + 2;
        let texts = rows.iter().map(|r| r.get(i).unwrap_or(&Value::Null));
        let array: ArrayRef = match col.kind {
            TypedKind::Key => {
                let mut b = BinaryBuilder::new();
                for v in texts {
                    match v {
                        Value::Null => b.append_null(),
                        Value::String(s) => b.append_value(
                            base64::engine::general_purpose::STANDARD
                                .decode(s)
                                .map_err(|_| bad(col.name, v))?,
                        ),
                        _ => return Err(bad(col.name, v)),
                    }
                }
                Arc::new(b.finish())
            }
            TypedKind::Date => {
                let mut b = Date32Builder::with_capacity(n);
                for v in texts {
                    match v.as_str() {
                        None => b.append_null(),
                        Some(s) => b.append_value(epoch_day_of_date(
                            NaiveDate::parse_from_str(s, "%Y-%m-%d")
                                .map_err(|_| bad(col.name, v))?,
                        )),
                    }
                }
                Arc::new(b.finish())
            }
            TypedKind::Text => {
                let mut b = StringBuilder::new();
                for v in texts {
                    b.append_option(v.as_str());
                }
                Arc::new(b.finish())
            }
            TypedKind::Integer | TypedKind::Timestamp => {
                let mut b = Int64Builder::with_capacity(n);
                for v in texts {
                    match v.as_str() {
                        None => b.append_null(),
                        Some(s) => b.append_value(s.parse().map_err(|_| bad(col.name, v))?),
                    }
                }
                let ints = b.finish();
                if col.kind == TypedKind::Timestamp {
                    Arc::new(TimestampMicrosecondArray::new(
                        ints.values().clone(),
                        ints.nulls().cloned(),
                    ))
                } else {
                    Arc::new(ints)
                }
            }
            TypedKind::Float => {
                let mut b = Float64Builder::with_capacity(n);
                for v in texts {
                    match v.as_str() {
                        None => b.append_null(),
                        Some(s) => b.append_value(s.parse().map_err(|_| bad(col.name, v))?),
                    }
                }
                Arc::new(b.finish())
            }
            TypedKind::Boolean => {
                let mut b = BooleanBuilder::with_capacity(n);
                for v in texts {
                    match v.as_str() {
                        None => b.append_null(),
                        Some("true") => b.append_value(true),
                        Some("false") => b.append_value(false),
                        Some(_) => return Err(bad(col.name, v)),
                    }
                }
                Arc::new(b.finish())
            }
            TypedKind::Decimal => {
                let mut b = Decimal128Builder::with_capacity(n)
                    .with_precision_and_scale(PRICE_PRECISION, PRICE_SCALE)
                    .map_err(|e| PipelineError::arrow("building prices", e))?;
                for v in texts {
                    match v.as_str() {
                        None => b.append_null(),
                        Some(s) => {
                            b.append_value(parse_decimal_micros(s).ok_or_else(|| bad(col.name, v))?)
                        }
                    }
                }
                Arc::new(b.finish())
            }
        };
        columns.push(array);
    }
    RecordBatch::try_new(CHANGE_SCHEMA.clone(), columns)
        .map_err(|e| PipelineError::arrow("assembling a change batch", e))
}

/// Timestamps as UTC instants, so BigQuery loads them as TIMESTAMP (not DATETIME).
fn with_utc_timestamps(batch: &RecordBatch) -> Result<RecordBatch> {
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
struct StagingFile {
    path: PathBuf,
    writer: Option<ArrowWriter<File>>,
}

impl StagingFile {
    fn create(dir: &Path, name: &str) -> Result<Self> {
        let path = dir.join(name);
        Ok(StagingFile { path, writer: None })
    }

    fn write(&mut self, batch: &RecordBatch) -> Result<()> {
        if self.writer.is_none() {
            let file = File::create(&self.path).map_err(|e| PipelineError::io(&self.path, e))?;
            // Snappy, 128k-row groups: the writer's buffer stays small.
            let properties = crate::split::daily_writer_properties();
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
    fn finish(&mut self) -> Result<bool> {
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

fn rejects_batch(
    file: &LakeFile,
    rejects: &[crate::typed_batch::RejectedRow],
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
            rejects.iter().map(|r| r.reason),
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

fn files_batch(entries: &[(LakeFile, u64, u64)], loaded_at: i64) -> Result<RecordBatch> {
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

impl Warehouse for BigQueryWarehouse {
    fn url(&self) -> &str {
        &self.url
    }

    fn stage_files(&mut self, staged: &StagedFiles) -> Result<()> {
        let staged_at = chrono::Utc::now().timestamp_micros();
        for (chunk_no, chunk) in staged.files.chunks(STAGED_FILES_PER_JOB).enumerate() {
            let mut text = self.render(sql::INSERT_STAGED_FILES_HEAD, None);
            let mut params = vec![Param::int64("staged_at", staged_at)];
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
                &[Param::int64("staged_at", staged_at)],
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

    fn staged_files(&mut self) -> Result<Option<StagedFiles>> {
        let runs = self.read("read_staged_run", sql::LATEST_STAGED_RUN, &[])?;
        let Some(run) = runs.first() else {
            return Ok(None);
        };
        let staged_at = cell_i64(run, 0)?;
        let window = DateWindow::new(cell_date(run, 1)?, cell_date(run, 2)?)?;
        let rows = self.read(
            "read_staged_files",
            sql::STAGED_FILES_OF_RUN,
            &[Param::int64("staged_at", staged_at)],
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

    fn ledger_entries(&mut self, uris: &[String]) -> Result<BTreeMap<String, LedgerEntry>> {
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
            let entry = LedgerEntry {
                uri: cell_str(r, 0).unwrap_or_default().to_string(),
                size: cell_i64(r, 1)? as u64,
                generation: cell_str(r, 2).unwrap_or_default().to_string(),
                checksum: cell_str(r, 3).unwrap_or_default().to_string(),
            };
            out.insert(entry.uri.clone(), entry);
        }
        Ok(out)
    }

    fn load_raw(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        let tag = self.work_tag(files);
        let mut outcome = RawLoadOutcome::default();
        let uris: Vec<String> = files.iter().map(|f| f.uri.clone()).collect();
        let old = self.read(
            "read_old_file_dates",
            sql::OLD_FILE_DATES,
            &[Param::strings("files", uris.iter().cloned())],
        )?;
        let mut dates = BTreeSet::new();
        for r in &old {
            dates.insert(cell_date(r, 0)?);
            outcome.rows_replaced += cell_i64(r, 1)? as u64;
        }
        let create = self.render(&sql::CREATE_LOAD_WORK, Some(&tag));
        let replace = self.render(&sql::REPLACE_FILE_ROWS, Some(&tag));
        if self.jobs.settings().dry_run {
            self.jobs
                .query("load_work_tables", &create, &[], Attach::ByInputs(&[]))?;
            println!(
                "-- load typed Parquet of {} file(s) into the work tables\n",
                files.len()
            );
            self.jobs
                .query("load_replace_rows", &replace, &[], Attach::ByInputs(&[]))?;
            return Ok(outcome);
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
            let mut rows_loaded = 0u64;
            let mut rejected = 0u64;
            source.read(file, &mut |typed| {
                rows_loaded += typed.rows.num_rows() as u64;
                if let Ok(idx) = typed.rows.schema().index_of("event_date") {
                    let d = typed
                        .rows
                        .column(idx)
                        .as_any()
                        .downcast_ref::<arrow::array::Date32Array>();
                    if let Some(d) = d {
                        let mut last = None;
                        for v in d.values().iter() {
                            if last != Some(*v) {
                                dates.insert(crate::typing::date_of_epoch_day(*v));
                                last = Some(*v);
                            }
                        }
                    }
                }
                if typed.rows.num_rows() > 0 {
                    rows_file.write(&with_utc_timestamps(&typed.rows)?)?;
                }
                if !typed.rejected.is_empty() {
                    rejected += typed.rejected.len() as u64;
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
            outcome.rows_written += rows_loaded;
            outcome.rejected += rejected;
            ledger_rows.push((file.clone(), rows_loaded, rejected));
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
        self.jobs
            .query("load_replace_rows", &replace, &[], Attach::ByInputs(&[]))?;
        for uri in row_uris.iter().chain(&landed) {
            if let Err(e) = staging.delete(uri) {
                tracing::warn!(uri = %uri, error = %e, "could not delete a staging file");
            }
        }
        outcome.affected_dates = dates.into_iter().collect();
        Ok(outcome)
    }

    fn dedup(&mut self, _now: i64) -> Result<DedupOutcome> {
        let mut outcome = DedupOutcome::default();
        let pending = self.read("read_pending_dates", sql::PENDING_DATES, &[])?;
        for r in &pending {
            outcome.rebuilt_dates.push(cell_date(r, 0)?);
        }
        if outcome.rebuilt_dates.is_empty() {
            return Ok(outcome);
        }
        let tag = self.work_tag(&[]);
        let text = self.render(&sql::DEDUP, Some(&tag));
        // A retried dedup finds the merge of the same pending dates its first try started.
        let inputs: Vec<String> = pending.iter().map(|r| format!("{:?}", r)).collect();
        let Some(result) = self
            .jobs
            .query("dedup_merge", &text, &[], Attach::ByInputs(&inputs))?
        else {
            return Ok(outcome);
        };
        let row = result
            .rows
            .first()
            .ok_or_else(|| PipelineError::Warehouse {
                context: "rebuilding dedup dates".into(),
                source: "the dedup script reported nothing".into(),
            })?;
        let changed_at = cell_i64(row, 0)?;
        let read = cell_i64(row, 1)?;
        let winners = cell_i64(row, 2)?;
        outcome.changed_at = Some(changed_at);
        outcome.rows_read = read as u64;
        outcome.duplicates_removed = (read - winners).max(0) as u64;
        outcome.rows_changed = cell_i64(row, 3)? as u64;
        outcome.rows_deleted = cell_i64(row, 4)? as u64;
        Ok(outcome)
    }

    fn stream_changes(
        &mut self,
        selection: &ChangeSelection,
        batch_rows: usize,
        sink: &mut dyn FnMut(RecordBatch) -> Result<bool>,
    ) -> Result<()> {
        let batch_rows = batch_rows.max(1);
        let (name, text, params) = match selection {
            ChangeSelection::After(offset) => {
                // From the beginning: 0001-01-01 and a key before every key.
                let (at, key) = match offset {
                    Some(o) => (o.changed_at, o.event_key.to_vec()),
                    None => (FEED_START_MICROS, Vec::new()),
                };
                let dates = self.read(
                    "read_feed_dates",
                    sql::FEED_DATES,
                    &[Param::int64("at", at)],
                )?;
                let dates: Vec<NaiveDate> = dates
                    .iter()
                    .map(|r| cell_date(r, 0))
                    .collect::<Result<_>>()?;
                if dates.is_empty() {
                    return Ok(());
                }
                (
                    "read_changes",
                    self.render(&sql::CHANGES_AFTER, None),
                    vec![
                        Param::dates("dates", dates),
                        Param::int64("at", at),
                        Param::string("key_hex", crate::hex::encode(&key)),
                    ],
                )
            }
            ChangeSelection::Dates(dates) => {
                if dates.is_empty() {
                    return Ok(());
                }
                (
                    "read_rows_of_dates",
                    self.render(&sql::ROWS_OF_DATES, None),
                    vec![Param::dates("dates", dates.iter().copied())],
                )
            }
        };
        // One query job; its ordered result is read through the Storage Read API as
        // Arrow, one batch in memory at a time, re-cut to at most `batch_rows` rows.
        // One query job. Its ordered result is read through the Storage Read API as
        // Arrow with a single stream (BigQuery keeps an ORDER BY result's order for one
        // stream), one batch in memory at a time; where the API cannot read the result
        // table, the job's result pages are read instead.
        let Some((job_id, table)) = self.jobs.query_result_table(name, &text, &params)? else {
            return Ok(());
        };
        let feed_order = matches!(selection, ChangeSelection::After(_));
        if let Some(table) = table
            && let Some(reader) =
                storage_read::open(self.jobs.runtime(), &self.storage_credentials, &table)?
        {
            return stream_batches(reader, feed_order, batch_rows, sink);
        }
        let mut last = None;
        let (mut rows, mut token) = self.jobs.page(&job_id, None, batch_rows)?;
        loop {
            for chunk in rows.chunks(batch_rows) {
                if chunk.is_empty() {
                    continue;
                }
                let batch = change_batch(chunk)?;
                if feed_order {
                    check_order(&batch, &mut last)?;
                }
                if !sink(batch)? {
                    return Ok(());
                }
            }
            match token {
                Some(t) => (rows, token) = self.jobs.page(&job_id, Some(t), batch_rows)?,
                None => return Ok(()),
            }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_reject_bad_identifiers() {
        let c = BigQueryConfig::parse(
            "bigquery://my-project/ota_events?location=EU&staging=gs://bkt/stage&external_table=false",
        )
        .unwrap();
        assert_eq!(c.project, "my-project");
        assert_eq!(c.dataset, "ota_events");
        assert_eq!(c.location, "EU");
        assert_eq!(c.staging.as_deref(), Some("gs://bkt/stage"));
        assert!(!c.external_table);
        assert_eq!(c.table("raw_events"), "`my-project.ota_events.raw_events`");
        for bad in [
            "bigquery://my-project",
            "bigquery://My-Project/ds",
            "bigquery://my-project/ds`x",
            "bigquery://my-project/ds;drop",
            "bigquery://my-project/ds?location=U S",
            "bigquery://my-project/ds?colour=red",
            "bigquery://my-project/ds?staging=s3://x",
        ] {
            assert!(BigQueryConfig::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn decimals_parse_to_millionths() {
        assert_eq!(parse_decimal_micros("12.5"), Some(12_500_000));
        assert_eq!(parse_decimal_micros("-0.000001"), Some(-1));
        assert_eq!(parse_decimal_micros("3"), Some(3_000_000));
        assert_eq!(parse_decimal_micros("1.2340000"), Some(1_234_000));
        assert_eq!(parse_decimal_micros("1.0000001"), None);
        assert_eq!(parse_decimal_micros("x"), None);
    }
}
