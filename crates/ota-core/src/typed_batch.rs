//! Applies the typing rules to whole Arrow batches of source rows, computing the event
//! key, the row hash and the lineage columns, and splitting off rows that cannot be keyed.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryBuilder, BooleanArray, BooleanBuilder, Date32Array,
    Decimal128Array, Decimal128Builder, Float64Array, Float64Builder, Int64Array, Int64Builder,
    RecordBatch, StringArray, TimestampMicrosecondArray,
};
use arrow::compute::{cast, filter_record_batch};
use arrow::datatypes::{
    DataType, Float32Type, Float64Type, Int8Type, Int16Type, Int32Type, Int64Type, SchemaRef,
    TimeUnit, TimestampMicrosecondType, TimestampMillisecondType, TimestampNanosecondType,
    TimestampSecondType, UInt8Type, UInt16Type, UInt32Type, UInt64Type,
};
use md5::{Digest, Md5};

use crate::contract::{ColumnKind, PRICE_PRECISION, PRICE_SCALE, SOURCE_COLUMNS, TYPED_SCHEMA};
use crate::error::{PipelineError, Result};
use crate::typing;

/// Where a batch of source rows comes from, for the lineage columns.
#[derive(Debug, Clone)]
pub struct Lineage {
    /// Days since the epoch of the file's day (from its name).
    pub source_day: i32,
    pub source_file: String,
    /// UTC microseconds: when this file version landed in the lake.
    pub ingested_at: i64,
    /// UTC microseconds: when load-raw loaded this file version.
    pub loaded_at: i64,
}

/// A source row that cannot be keyed.
#[derive(Debug, Clone, PartialEq)]
pub struct RejectedRow {
    pub source_row: i64,
    pub reason: String,
    pub request_id: Option<String>,
    pub raw_timestamp: Option<String>,
}

/// The typed rows of one source batch and the rows that were rejected.
#[derive(Debug)]
pub struct TypedBatch {
    pub rows: RecordBatch,
    pub rejected: Vec<RejectedRow>,
}

impl TypedBatch {
    /// Rejects the rows whose event date lies more than `max_days` days from `file_day`
    /// (days since the epoch): a file's events happen around its day (late events a day
    /// or two before), so a row far from it has a timestamp of another unit or from a
    /// broken clock, and would touch a partition of its own far away.
    pub fn reject_far_from(self, file_day: i32, max_days: u32) -> Result<TypedBatch> {
        use arrow::array::AsArray;
        use arrow::datatypes::Date32Type;
        let TypedBatch { rows, mut rejected } = self;
        let schema = rows.schema();
        let column = |name: &str| {
            schema
                .index_of(name)
                .map(|i| rows.column(i))
                .map_err(|e| PipelineError::arrow("reading typed rows", e))
        };
        let days = column("event_date")?.as_primitive::<Date32Type>();
        let far =
            |day: i32| (i64::from(day) - i64::from(file_day)).unsigned_abs() > u64::from(max_days);
        if !days.values().iter().any(|d| far(*d)) {
            return Ok(TypedBatch { rows, rejected });
        }
        let source_rows = column("source_row")?.as_primitive::<arrow::datatypes::Int64Type>();
        let request_ids = column("request_id")?.as_string::<i32>();
        let micros = column("timestamp")?.as_primitive::<TimestampMicrosecondType>();
        let mut keep = Vec::with_capacity(rows.num_rows());
        for (row, day) in days.values().iter().enumerate() {
            let is_far = far(*day);
            keep.push(!is_far);
            if is_far {
                let date = typing::date_of_epoch_day(*day);
                let distance = (i64::from(*day) - i64::from(file_day)).unsigned_abs();
                rejected.push(RejectedRow {
                    source_row: source_rows.value(row),
                    reason: format!(
                        "event date {date} is {distance} days from the file's day {}, more \
                         than --max-event-day-distance {max_days}: a timestamp of another \
                         unit, or a broken clock",
                        typing::date_of_epoch_day(file_day)
                    ),
                    request_id: request_ids
                        .is_valid(row)
                        .then(|| request_ids.value(row).to_string()),
                    raw_timestamp: chrono::DateTime::from_timestamp_micros(micros.value(row))
                        .map(|t| t.to_rfc3339()),
                });
            }
        }
        rejected.sort_by_key(|r| r.source_row);
        let rows = filter_record_batch(&rows, &BooleanArray::from(keep))
            .map_err(|e| PipelineError::arrow("dropping rows far from the file's day", e))?;
        Ok(TypedBatch { rows, rejected })
    }
}

/// Maps a file's schema onto the contract once per file.
#[derive(Debug, Clone)]
pub struct ColumnMapping {
    /// For each of `SOURCE_COLUMNS`, the index of the column in the file, if present.
    indices: Vec<Option<usize>>,
    /// Columns of the file that the contract does not know.
    pub unknown: Vec<String>,
    /// Contract columns the file does not have (typed as NULL).
    pub missing: Vec<&'static str>,
}

impl ColumnMapping {
    pub fn new(schema: &SchemaRef) -> Self {
        let indices: Vec<Option<usize>> = SOURCE_COLUMNS
            .iter()
            .map(|c| schema.index_of(c.name).ok())
            .collect();
        let unknown = schema
            .fields()
            .iter()
            .map(|f| f.name().clone())
            .filter(|n| !SOURCE_COLUMNS.iter().any(|c| c.name == n))
            .collect();
        let missing = SOURCE_COLUMNS
            .iter()
            .zip(&indices)
            .filter(|(_, i)| i.is_none())
            .map(|(c, _)| c.name)
            .collect();
        ColumnMapping {
            indices,
            unknown,
            missing,
        }
    }
}

/// One typed source column.
enum TypedValues {
    Text(StringArray),
    Integer(Int64Array),
    Float(Float64Array),
    Boolean(BooleanArray),
    Price {
        value: Decimal128Array,
        raw: StringArray,
    },
    Timestamp {
        micros: TimestampMicrosecondArray,
        raw: StringArray,
    },
}

/// Types one batch of source rows. `first_row` is the ordinal of the batch's first row in
/// its file (rows are numbered from 0).
pub fn type_batch(
    batch: &RecordBatch,
    mapping: &ColumnMapping,
    lineage: &Lineage,
    first_row: i64,
) -> Result<TypedBatch> {
    let n = batch.num_rows();
    let mut typed = Vec::with_capacity(SOURCE_COLUMNS.len());
    let mut problems = RowProblems::new(n);
    for (col, idx) in SOURCE_COLUMNS.iter().zip(&mapping.indices) {
        let source = match idx {
            Some(i) => batch.column(*i).clone(),
            None => arrow::array::new_null_array(&DataType::Utf8, n),
        };
        typed.push(type_column(col.name, col.kind, &source, &mut problems)?);
    }

    let mut keys = BinaryBuilder::with_capacity(n, n * 16);
    let mut hashes = BinaryBuilder::with_capacity(n, n * 16);
    let mut event_dates = Vec::with_capacity(n);
    let mut keep = Vec::with_capacity(n);
    let mut rejected = Vec::new();
    let mut buf = Vec::with_capacity(512);
    let request_id = text_of(&typed, "request_id");
    let (ts, ts_raw) = match &typed[column_index("timestamp")] {
        TypedValues::Timestamp { micros, raw } => (micros, raw),
        _ => unreachable!("timestamp is typed as a timestamp"),
    };

    for row in 0..n {
        let reason = if let Some(problem) = problems.0[row].take() {
            Some(problem)
        } else if request_id.is_null(row) || request_id.value(row).trim().is_empty() {
            Some("missing request_id".to_string())
        } else if ts.is_null(row) {
            Some("unusable timestamp".to_string())
        } else {
            None
        };
        if let Some(reason) = reason {
            rejected.push(RejectedRow {
                source_row: first_row + row as i64,
                reason,
                request_id: (!request_id.is_null(row)).then(|| request_id.value(row).to_string()),
                raw_timestamp: (!ts_raw.is_null(row)).then(|| ts_raw.value(row).to_string()),
            });
            keep.push(false);
            keys.append_value([0u8; 16]);
            hashes.append_value([0u8; 16]);
            event_dates.push(0);
            continue;
        }
        keep.push(true);
        let micros = ts.value(row);
        event_dates.push(typing::epoch_day_of_micros(micros));

        buf.clear();
        encode_event_key(&mut buf, &typed, row);
        keys.append_value(Md5::digest(&buf));

        buf.clear();
        for values in &typed {
            encode_content(&mut buf, values, row);
        }
        hashes.append_value(Md5::digest(&buf));
    }

    let mut columns: Vec<ArrayRef> = Vec::with_capacity(TYPED_SCHEMA.fields().len());
    columns.push(Arc::new(keys.finish()));
    columns.push(Arc::new(Date32Array::from(event_dates)));
    for values in typed {
        match values {
            TypedValues::Text(a) => columns.push(Arc::new(a)),
            TypedValues::Integer(a) => columns.push(Arc::new(a)),
            TypedValues::Float(a) => columns.push(Arc::new(a)),
            TypedValues::Boolean(a) => columns.push(Arc::new(a)),
            TypedValues::Price { value, raw } => {
                columns.push(Arc::new(value));
                columns.push(Arc::new(raw));
            }
            TypedValues::Timestamp { micros, .. } => columns.push(Arc::new(micros)),
        }
    }
    columns.push(Arc::new(hashes.finish()));
    columns.push(Arc::new(Date32Array::from(vec![lineage.source_day; n])));
    columns.push(Arc::new(StringArray::from(vec![
        lineage
            .source_file
            .as_str();
        n
    ])));
    columns.push(Arc::new(Int64Array::from_iter_values(
        first_row..first_row + n as i64,
    )));
    columns.push(Arc::new(TimestampMicrosecondArray::from(
        vec![lineage.ingested_at; n],
    )));
    columns.push(Arc::new(TimestampMicrosecondArray::from(
        vec![lineage.loaded_at; n],
    )));

    // Build with nullable fields first: rejected rows may hold NULL keys until filtered.
    let loose = Arc::new(arrow::datatypes::Schema::new(
        TYPED_SCHEMA
            .fields()
            .iter()
            .map(|f| f.as_ref().clone().with_nullable(true))
            .collect::<Vec<_>>(),
    ));
    let all = RecordBatch::try_new(loose, columns)
        .map_err(|e| PipelineError::arrow("assembling typed rows", e))?;
    let kept = if rejected.is_empty() {
        all
    } else {
        filter_record_batch(&all, &BooleanArray::from(keep))
            .map_err(|e| PipelineError::arrow("dropping rejected rows", e))?
    };
    let rows = RecordBatch::try_new(TYPED_SCHEMA.clone(), kept.columns().to_vec())
        .map_err(|e| PipelineError::arrow("checking typed rows against the schema", e))?;
    Ok(TypedBatch { rows, rejected })
}

fn column_index(name: &str) -> usize {
    SOURCE_COLUMNS
        .iter()
        .position(|c| c.name == name)
        .unwrap_or_else(|| panic!("{name} is a contract column"))
}

fn text_of<'a>(typed: &'a [TypedValues], name: &str) -> &'a StringArray {
    match &typed[column_index(name)] {
        TypedValues::Text(a) => a,
        _ => unreachable!("{name} is a text column"),
    }
}

/// Canonical, NULL-aware encoding of the five key columns; its MD5 is the event key.
/// Text: 0x01, u32 LE byte length, bytes. NULL: 0x00. Timestamp: 0x01, i64 LE micros.
fn encode_event_key(buf: &mut Vec<u8>, typed: &[TypedValues], row: usize) {
    for name in crate::contract::EVENT_KEY_COLUMNS {
        encode_content(buf, &typed[column_index(name)], row);
    }
}

fn encode_content(buf: &mut Vec<u8>, values: &TypedValues, row: usize) {
    fn text(a: &StringArray, row: usize) -> ContentValue<'_> {
        if a.is_valid(row) {
            ContentValue::Text(a.value(row).as_bytes())
        } else {
            ContentValue::Null
        }
    }
    fn or_null(
        valid: bool,
        value: impl FnOnce() -> ContentValue<'static>,
    ) -> ContentValue<'static> {
        if valid { value() } else { ContentValue::Null }
    }
    match values {
        TypedValues::Text(a) => encode_value(buf, text(a, row)),
        TypedValues::Integer(a) => encode_value(
            buf,
            or_null(a.is_valid(row), || ContentValue::Integer(a.value(row))),
        ),
        TypedValues::Float(a) => encode_value(
            buf,
            or_null(a.is_valid(row), || ContentValue::Float(a.value(row))),
        ),
        TypedValues::Boolean(a) => encode_value(
            buf,
            or_null(a.is_valid(row), || ContentValue::Boolean(a.value(row))),
        ),
        TypedValues::Price { value, raw } => {
            encode_value(
                buf,
                or_null(value.is_valid(row), || {
                    ContentValue::Decimal(value.value(row))
                }),
            );
            encode_value(buf, text(raw, row));
        }
        TypedValues::Timestamp { micros, .. } => encode_value(
            buf,
            or_null(micros.is_valid(row), || {
                ContentValue::Micros(micros.value(row))
            }),
        ),
    }
}

/// One typed content value as the event key and `row_hash` encode it.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum ContentValue<'a> {
    Null,
    /// UTF-8 bytes.
    Text(&'a [u8]),
    Integer(i64),
    Float(f64),
    Boolean(bool),
    /// The price scaled by 10^`PRICE_SCALE`.
    Decimal(i128),
    /// UTC microseconds.
    Micros(i64),
}

/// Appends one value to a row's canonical encoding (docs/design.md, "Deduplication"):
/// `0x00` for NULL, else `0x01` and the value — text as its u32 little-endian byte length
/// and bytes, numbers little-endian, floats by their bits. The MD5 of a row's content
/// columns so encoded, in `TYPED_COLUMNS` order, is its `row_hash`, whichever side
/// (typing, or a MySQL row read back) encodes it.
pub fn encode_value(buf: &mut Vec<u8>, value: ContentValue<'_>) {
    fn some(buf: &mut Vec<u8>, bytes: &[u8]) {
        buf.push(1);
        buf.extend_from_slice(bytes);
    }
    match value {
        ContentValue::Null => buf.push(0),
        ContentValue::Text(v) => {
            buf.push(1);
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
        }
        ContentValue::Integer(v) => some(buf, &v.to_le_bytes()),
        ContentValue::Float(v) => some(buf, &v.to_bits().to_le_bytes()),
        ContentValue::Boolean(v) => some(buf, &[v as u8]),
        ContentValue::Decimal(v) => some(buf, &v.to_le_bytes()),
        ContentValue::Micros(v) => some(buf, &v.to_le_bytes()),
    }
}

/// The MD5 of an encoding built with [`encode_value`].
pub fn digest(encoding: &[u8]) -> [u8; 16] {
    Md5::digest(encoding).into()
}

/// Why rows of a batch cannot be typed: the first problem found in each row.
struct RowProblems(Vec<Option<String>>);

impl RowProblems {
    fn new(rows: usize) -> Self {
        RowProblems(vec![None; rows])
    }

    fn note(&mut self, row: usize, why: impl FnOnce() -> String) {
        if self.0[row].is_none() {
            self.0[row] = Some(why());
        }
    }
}

/// Any array as text (numbers print as numbers), for the text-based rules. A value that
/// cannot be read as text (bytes that are not UTF-8, a type with no text form) is NULL,
/// and its row is noted in `problems`: the row is rejected, never loaded without it.
fn as_text(name: &str, source: &ArrayRef, problems: &mut RowProblems) -> StringArray {
    let bytes: Option<Vec<Option<&[u8]>>> = match source.data_type() {
        DataType::Binary => Some(source.as_binary::<i32>().iter().collect()),
        DataType::LargeBinary => Some(source.as_binary::<i64>().iter().collect()),
        DataType::BinaryView => Some(source.as_binary_view().iter().collect()),
        DataType::FixedSizeBinary(_) => Some(source.as_fixed_size_binary().iter().collect()),
        _ => None,
    };
    if let Some(bytes) = bytes {
        return bytes
            .into_iter()
            .enumerate()
            .map(|(row, v)| {
                let v = v?;
                let text = std::str::from_utf8(v).ok();
                if text.is_none() {
                    problems.note(row, || format!("{name} is not valid UTF-8"));
                }
                text
            })
            .collect();
    }
    match cast(source, &DataType::Utf8) {
        Ok(utf8) => utf8.as_string::<i32>().clone(),
        Err(_) => {
            for row in (0..source.len()).filter(|r| source.is_valid(*r)) {
                problems.note(row, || {
                    format!(
                        "{name} is of type {}, which has no text form",
                        source.data_type()
                    )
                });
            }
            StringArray::new_null(source.len())
        }
    }
}

/// Reads an integer-typed Arrow array as Option<i64> values.
fn integers_of(source: &ArrayRef) -> Option<Vec<Option<i64>>> {
    macro_rules! prim {
        ($t:ty) => {
            source
                .as_primitive::<$t>()
                .iter()
                .map(|v| v.and_then(|x| i64::try_from(x).ok()))
                .collect()
        };
    }
    Some(match source.data_type() {
        DataType::Int8 => prim!(Int8Type),
        DataType::Int16 => prim!(Int16Type),
        DataType::Int32 => prim!(Int32Type),
        DataType::Int64 => prim!(Int64Type),
        DataType::UInt8 => prim!(UInt8Type),
        DataType::UInt16 => prim!(UInt16Type),
        DataType::UInt32 => prim!(UInt32Type),
        DataType::UInt64 => prim!(UInt64Type),
        _ => return None,
    })
}

fn floats_of(source: &ArrayRef) -> Option<Vec<Option<f64>>> {
    Some(match source.data_type() {
        DataType::Float32 => source
            .as_primitive::<Float32Type>()
            .iter()
            .map(|v| v.map(f64::from))
            .collect(),
        DataType::Float64 => source.as_primitive::<Float64Type>().iter().collect(),
        _ => return None,
    })
}

fn type_column(
    name: &str,
    kind: ColumnKind,
    source: &ArrayRef,
    problems: &mut RowProblems,
) -> Result<TypedValues> {
    let n = source.len();
    let dt = source.data_type();
    Ok(match kind {
        ColumnKind::Text => TypedValues::Text(as_text(name, source, problems)),
        ColumnKind::Integer => {
            let mut b = Int64Builder::with_capacity(n);
            if let Some(ints) = integers_of(source) {
                b.extend(ints);
            } else if let Some(floats) = floats_of(source) {
                b.extend(
                    floats
                        .into_iter()
                        .map(|v| v.and_then(typing::integer_from_float)),
                );
            } else if matches!(dt, DataType::Boolean | DataType::Null) {
                b.append_nulls(n);
            } else {
                let text = as_text(name, source, problems);
                b.extend(text.iter().map(|v| v.and_then(typing::parse_integer_text)));
            }
            TypedValues::Integer(b.finish())
        }
        ColumnKind::Float => {
            let mut b = Float64Builder::with_capacity(n);
            if let Some(floats) = floats_of(source) {
                b.extend(floats.into_iter().map(|v| v.filter(|x| x.is_finite())));
            } else if let Some(ints) = integers_of(source) {
                b.extend(ints.into_iter().map(|v| v.map(|x| x as f64)));
            } else if matches!(dt, DataType::Boolean | DataType::Null) {
                b.append_nulls(n);
            } else {
                let text = as_text(name, source, problems);
                b.extend(text.iter().map(|v| v.and_then(typing::parse_float_text)));
            }
            TypedValues::Float(b.finish())
        }
        ColumnKind::Permission => {
            let mut b = BooleanBuilder::with_capacity(n);
            if let DataType::Boolean = dt {
                b.extend(source.as_boolean().iter());
            } else if let Some(ints) = integers_of(source) {
                b.extend(ints.into_iter().map(|v| match v {
                    Some(1) => Some(true),
                    Some(0) => Some(false),
                    _ => None,
                }));
            } else {
                let text = as_text(name, source, problems);
                b.extend(text.iter().map(|v| v.and_then(typing::parse_permission)));
            }
            TypedValues::Boolean(b.finish())
        }
        ColumnKind::Price => {
            let raw = as_text(name, source, problems);
            let mut b = Decimal128Builder::with_capacity(n);
            if let Some(floats) = floats_of(source) {
                b.extend(
                    floats
                        .into_iter()
                        .map(|v| v.and_then(typing::price_from_float)),
                );
            } else if let Some(ints) = integers_of(source) {
                b.extend(
                    ints.into_iter()
                        .map(|v| v.and_then(|x| typing::price_from_float(x as f64))),
                );
            } else {
                b.extend(raw.iter().map(|v| v.and_then(typing::parse_price)));
            }
            let value = b
                .finish()
                .with_precision_and_scale(PRICE_PRECISION, PRICE_SCALE)
                .map_err(|e| PipelineError::arrow("typing hotel_price", e))?;
            TypedValues::Price { value, raw }
        }
        ColumnKind::Timestamp => {
            // Zoned timestamps cannot be printed without a tz database; their raw text
            // (kept for rejects) is the stored integer.
            let raw = match dt {
                DataType::Timestamp(_, Some(_)) => {
                    let ints = cast(source, &DataType::Int64)
                        .map_err(|e| PipelineError::arrow(format!("reading column {name}"), e))?;
                    as_text(name, &ints, problems)
                }
                _ => as_text(name, source, problems),
            };
            let micros = event_micros(source)?;
            TypedValues::Timestamp { micros, raw }
        }
    })
}

/// Event timestamps as UTC microseconds: epoch integers (nanoseconds in the case data;
/// seconds, milliseconds and microseconds told apart by magnitude), Parquet TIMESTAMP of
/// any unit (with or without zone) or ISO-8601 text; NULL where unusable.
pub fn event_micros(source: &ArrayRef) -> Result<TimestampMicrosecondArray> {
    let n = source.len();
    let micros: Vec<Option<i64>> = match source.data_type() {
        DataType::Timestamp(unit, _) => {
            let (values, div, mul): (Vec<Option<i64>>, i64, i64) = match unit {
                TimeUnit::Second => (
                    source
                        .as_primitive::<TimestampSecondType>()
                        .iter()
                        .collect(),
                    1,
                    1_000_000,
                ),
                TimeUnit::Millisecond => (
                    source
                        .as_primitive::<TimestampMillisecondType>()
                        .iter()
                        .collect(),
                    1,
                    1_000,
                ),
                TimeUnit::Microsecond => (
                    source
                        .as_primitive::<TimestampMicrosecondType>()
                        .iter()
                        .collect(),
                    1,
                    1,
                ),
                TimeUnit::Nanosecond => (
                    source
                        .as_primitive::<TimestampNanosecondType>()
                        .iter()
                        .collect(),
                    1_000,
                    1,
                ),
            };
            values
                .into_iter()
                .map(|v| v.and_then(|x| x.div_euclid(div).checked_mul(mul)))
                .collect()
        }
        t if t.is_integer() => integers_of(source)
            .unwrap_or_default()
            .into_iter()
            .map(|v| v.and_then(typing::epoch_integer_micros))
            .collect(),
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => {
            { as_text("timestamp", source, &mut RowProblems::new(n)) }
                .iter()
                .map(|v| v.and_then(typing::parse_timestamp_text))
                .collect()
        }
        _ => vec![None; n],
    };
    Ok(TimestampMicrosecondArray::from(
        micros
            .into_iter()
            .map(|v| v.filter(|m| typing::usable_timestamp(*m)))
            .collect::<Vec<_>>(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::datatypes::{Field, Schema};

    fn lineage() -> Lineage {
        Lineage {
            source_day: 19_723,
            source_file: "file:///lake/20240101_OTA.parquet".into(),
            ingested_at: 1,
            loaded_at: 2,
        }
    }

    fn batch(cols: Vec<(&str, ArrayRef)>) -> RecordBatch {
        let schema = Schema::new(
            cols.iter()
                .map(|(n, a)| Field::new(*n, a.data_type().clone(), true))
                .collect::<Vec<_>>(),
        );
        RecordBatch::try_new(Arc::new(schema), cols.into_iter().map(|(_, a)| a).collect()).unwrap()
    }

    #[test]
    fn text_that_is_not_utf8_or_has_no_text_form_rejects_its_row_only() {
        use arrow::array::{BinaryArray, StructArray};

        let ts = 1_704_067_200_000_000_000_i64; // ns
        let request_ids: Vec<Option<&[u8]>> = vec![Some(b"r1"), Some(b"r\xff2"), Some(b"r3")];
        // A struct column (no text form) where the funnel id belongs.
        let inner: ArrayRef = Arc::new(Int64Array::from(vec![0, 0, 1]));
        let funnels = StructArray::try_new(
            vec![arrow::datatypes::Field::new("id", DataType::Int64, false)].into(),
            vec![inner],
            Some(vec![false, false, true].into()),
        )
        .unwrap();
        let b = batch(vec![
            (
                "request_id",
                Arc::new(BinaryArray::from(request_ids)) as ArrayRef,
            ),
            ("funnel_id", Arc::new(funnels)),
            ("timestamp", Arc::new(Int64Array::from(vec![ts, ts, ts]))),
        ]);
        let out = type_batch(&b, &ColumnMapping::new(&b.schema()), &lineage(), 0).unwrap();
        assert_eq!(out.rows.num_rows(), 1);
        let rows = &out.rows;
        let request_id = rows.column(rows.schema().index_of("request_id").unwrap());
        assert_eq!(request_id.as_string::<i32>().value(0), "r1");
        let reasons: Vec<_> = out
            .rejected
            .iter()
            .map(|r| (r.source_row, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (1, "request_id is not valid UTF-8"),
                (
                    2,
                    "funnel_id is of type Struct(\"id\": non-null Int64), which has no text form"
                ),
            ]
        );
    }

    #[test]
    fn types_rows_and_rejects_unkeyable_ones() {
        let ts = 1_704_067_200_000_000_000_i64; // ns
        let b = batch(vec![
            (
                "request_id",
                Arc::new(StringArray::from(vec![
                    Some("r1"),
                    None,
                    Some(" "),
                    Some("r4"),
                ])) as ArrayRef,
            ),
            (
                "timestamp",
                Arc::new(Int64Array::from(vec![Some(ts), Some(ts), Some(ts), None])),
            ),
            (
                "user_id",
                Arc::new(StringArray::from(vec!["123.0", "x", "1", "2"])),
            ),
            (
                "hotel_price",
                Arc::new(StringArray::from(vec!["€1.234,56", "1", "1", "1"])),
            ),
            (
                "has_email_contact_permission",
                Arc::new(StringArray::from(vec![" Yes", "no", "?", "1"])),
            ),
            (
                "mystery",
                Arc::new(StringArray::from(vec!["a", "b", "c", "d"])),
            ),
        ]);
        let mapping = ColumnMapping::new(&b.schema());
        assert_eq!(mapping.unknown, vec!["mystery".to_string()]);
        assert!(mapping.missing.contains(&"funnel_id"));
        let out = type_batch(&b, &mapping, &lineage(), 10).unwrap();
        assert_eq!(out.rows.num_rows(), 1);
        let reasons: Vec<_> = out
            .rejected
            .iter()
            .map(|r| (r.source_row, r.reason.as_str()))
            .collect();
        assert_eq!(
            reasons,
            vec![
                (11, "missing request_id"),
                (12, "missing request_id"),
                (13, "unusable timestamp")
            ]
        );
        let rows = &out.rows;
        let col = |n: &str| rows.column(rows.schema().index_of(n).unwrap()).clone();
        assert_eq!(col("user_id").as_primitive::<Int64Type>().value(0), 123);
        assert_eq!(
            col("hotel_price")
                .as_primitive::<arrow::datatypes::Decimal128Type>()
                .value(0),
            1_234_560_000
        );
        assert_eq!(
            col("hotel_price_raw").as_string::<i32>().value(0),
            "€1.234,56"
        );
        assert!(col("has_email_contact_permission").as_boolean().value(0));
        assert_eq!(
            col("timestamp")
                .as_primitive::<TimestampMicrosecondType>()
                .value(0),
            ts / 1000
        );
        assert_eq!(
            col("event_date")
                .as_primitive::<arrow::datatypes::Date32Type>()
                .value(0),
            19_723
        );
        assert_eq!(col("source_row").as_primitive::<Int64Type>().value(0), 10);
        assert!(col("funnel_id").is_null(0));
    }

    #[test]
    fn event_key_is_null_aware_and_ignores_non_key_columns() {
        let ts = 1_704_067_200_000_000_000_i64;
        let b = batch(vec![
            (
                "request_id",
                Arc::new(StringArray::from(vec!["r", "r", "r", "r"])) as ArrayRef,
            ),
            (
                "funnel_id",
                Arc::new(StringArray::from(vec![None, None, Some(""), Some("")])),
            ),
            ("timestamp", Arc::new(Int64Array::from(vec![ts; 4]))),
            (
                "hotel_name",
                Arc::new(StringArray::from(vec!["a", "b", "a", "a"])),
            ),
        ]);
        let out = type_batch(&b, &ColumnMapping::new(&b.schema()), &lineage(), 0).unwrap();
        let keys = out.rows.column(0).as_binary::<i32>();
        let hashes = out
            .rows
            .column(out.rows.schema().index_of("row_hash").unwrap())
            .as_binary::<i32>();
        assert_eq!(keys.value(0), keys.value(1), "NULLs compare equal");
        assert_ne!(keys.value(0), keys.value(2), "NULL differs from empty text");
        assert_eq!(keys.value(2), keys.value(3));
        assert_ne!(hashes.value(0), hashes.value(1), "content differs");
        assert_eq!(hashes.value(2), hashes.value(3));
        assert_eq!(keys.value(0).len(), 16);
    }

    #[test]
    fn event_micros_reads_zoned_timestamps_without_a_tz_database() {
        // The splitter calls this directly on the source column.
        let zoned: ArrayRef = Arc::new(
            arrow::array::TimestampNanosecondArray::from(vec![
                Some(1_704_067_200_000_001_000),
                None,
            ])
            .with_timezone("Europe/Berlin"),
        );
        let micros = event_micros(&zoned).unwrap();
        assert_eq!(micros.value(0), 1_704_067_200_000_001);
        assert!(micros.is_null(1));
    }

    #[test]
    fn timestamps_of_any_unit_and_text() {
        let us = 1_704_067_200_123_456_i64;
        let variants: Vec<ArrayRef> = vec![
            Arc::new(
                arrow::array::TimestampNanosecondArray::from(vec![us * 1000]).with_timezone("UTC"),
            ),
            Arc::new(TimestampMicrosecondArray::from(vec![us])),
            Arc::new(StringArray::from(vec!["2024-01-01T00:00:00.123456Z"])),
            Arc::new(Int64Array::from(vec![us * 1000])),
            Arc::new(Int64Array::from(vec![us])),
        ];
        for v in variants {
            let b = batch(vec![
                (
                    "request_id",
                    Arc::new(StringArray::from(vec!["r"])) as ArrayRef,
                ),
                ("timestamp", v.clone()),
            ]);
            let out = type_batch(&b, &ColumnMapping::new(&b.schema()), &lineage(), 0).unwrap();
            let got = out
                .rows
                .column(out.rows.schema().index_of("timestamp").unwrap())
                .as_primitive::<TimestampMicrosecondType>()
                .value(0);
            assert_eq!(got, us, "{:?}", v.data_type());
        }
    }
}
