//! The change feed from BigQuery as Arrow batches of the change schema: from the Storage
//! Read API's Arrow (cast to the contract's types) or, where that cannot read the result,
//! from the REST API's JSON rows; and the order check that keeps offsets exact.

use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, BinaryBuilder, BooleanBuilder, Date32Builder, Decimal128Builder,
    Float64Builder, Int64Builder, RecordBatch, StringBuilder, TimestampMicrosecondArray,
    TimestampMicrosecondBuilder,
};
use base64::Engine;
use chrono::NaiveDate;
use serde_json::Value;

use super::client::Param;
use super::{BigQueryWarehouse, sql, storage_read};
pub use ota_core::change::CHANGE_SCHEMA;
use ota_core::change::{BatchRecutter, ChangeBatch, ChangeOffsets, FeedOffset};
use ota_core::contract::{PRICE_PRECISION, PRICE_SCALE, TYPED_COLUMNS, TypedKind};
use ota_core::error::{PipelineError, Result};
use ota_core::typing::epoch_day_of_date;
use ota_core::window::parse_date;

pub(super) fn cell_str(row: &[Value], i: usize) -> Option<&str> {
    row.get(i).and_then(Value::as_str)
}

pub(super) fn cell_i64(row: &[Value], i: usize) -> Result<i64> {
    cell_str(row, i)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| PipelineError::Warehouse {
            context: "reading a BigQuery result".into(),
            source: format!("column {i} is not an integer: {:?}", row.get(i)).into(),
        })
}

pub(super) fn cell_date(row: &[Value], i: usize) -> Result<NaiveDate> {
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

/// Hands a Storage Read stream to `sink` in batches of `batch_rows` (the last may be
/// shorter); for the change feed, checks that rows arrive in `(changed_at, event_key)`
/// order (offsets are committed per batch, so the order is what makes a resumed export
/// exact).
pub(super) fn stream_batches(
    mut reader: storage_read::ArrowTableReader<'_>,
    feed_order: bool,
    batch_rows: usize,
    sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
) -> Result<()> {
    let mut last = None;
    let mut batches = BatchRecutter::new(batch_rows, sink);
    while let Some(batch) = reader.next_batch()? {
        let batch = to_change_schema(&batch)?;
        if feed_order {
            check_order(&batch, &mut last)?;
        }
        if !batches.push(batch)? {
            return Ok(());
        }
    }
    batches.finish()
}

/// Fails when a row sorts before the one read before it (by changed_at, then event_key).
pub(super) fn check_order(batch: &RecordBatch, last: &mut Option<(i64, Vec<u8>)>) -> Result<()> {
    let offsets = ChangeOffsets::of(batch)?;
    for i in 0..batch.num_rows() {
        let (at, key) = (
            offsets.changed_at(i),
            offsets.event_key(i).unwrap_or_default(),
        );
        if let Some((last_at, last_key)) = last.as_ref()
            && (at, key) < (*last_at, last_key.as_slice())
        {
            return Err(PipelineError::Warehouse {
                context: "reading the change feed".into(),
                source: "BigQuery returned the result out of order; nothing after the last committed batch was applied".into(),
            });
        }
        *last = Some((at, key.to_vec()));
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

/// What one export reads of the change feed: the event dates changed at or after its
/// offset, and the `changed_at` of the latest run that changed them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FeedBounds {
    pub dates: Vec<NaiveDate>,
    /// UTC microseconds; changes after it belong to the next export.
    pub upto: i64,
}

impl BigQueryWarehouse {
    /// The feed's bounds after `at` (µs), None when nothing changed since.
    pub fn feed_bounds(&mut self, at: i64) -> Result<Option<FeedBounds>> {
        let rows = self.read(
            "read_feed_dates",
            sql::FEED_DATES,
            &[Param::int64("at", at)],
        )?;
        let mut dates = Vec::with_capacity(rows.len());
        let mut upto = i64::MIN;
        for r in &rows {
            dates.push(cell_date(r, 0)?);
            upto = upto.max(cell_i64(r, 1)?);
        }
        Ok((!dates.is_empty()).then_some(FeedBounds { dates, upto }))
    }

    /// The change feed after `offset` (None: from the start) within `bounds`, as
    /// [`Warehouse::stream_changes`] streams it.
    pub fn stream_feed_within(
        &mut self,
        offset: Option<FeedOffset>,
        bounds: &FeedBounds,
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()> {
        let (at, key) = FeedOffset::position(offset);
        let text = self.render(&sql::CHANGES_AFTER, None);
        let params = [
            Param::dates("dates", bounds.dates.iter().copied()),
            Param::int64("at", at),
            Param::int64("upto", bounds.upto),
            Param::string("key_hex", ota_core::hex::encode(&key)),
        ];
        self.stream_query("read_changes", &text, &params, true, batch_rows, sink)
    }

    /// Runs one query job and streams its ordered result. The result is read through the
    /// Storage Read API as Arrow with a single stream (BigQuery keeps an ORDER BY
    /// result's order for one stream), one batch in memory at a time; where the API
    /// cannot read the result table, the job's result pages are read instead. With
    /// `feed_order`, rows out of `(changed_at, event_key)` order stop the read.
    fn stream_query(
        &mut self,
        name: &str,
        text: &str,
        params: &[Param],
        feed_order: bool,
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()> {
        let batch_rows = batch_rows.max(1);
        let Some((job_id, table)) = self.jobs.query_result_table(name, text, params)? else {
            return Ok(());
        };
        if let Some(table) = table
            && let Some(reader) = storage_read::open(
                self.jobs.runtime(),
                &self.storage_endpoint,
                &self.storage_credentials,
                &table,
            )?
        {
            return stream_batches(reader, feed_order, batch_rows, sink);
        }
        let mut last = None;
        let mut batches = BatchRecutter::new(batch_rows, sink);
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
                if !batches.push(batch)? {
                    return Ok(());
                }
            }
            match token {
                Some(t) => (rows, token) = self.jobs.page(&job_id, Some(t), batch_rows)?,
                None => return batches.finish(),
            }
        }
    }

    /// The change feed after `offset` (None: from the start), up to the latest run.
    pub(super) fn stream_feed(
        &mut self,
        offset: Option<FeedOffset>,
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()> {
        match self.feed_bounds(FeedOffset::changed_at_of(offset))? {
            Some(bounds) => self.stream_feed_within(offset, &bounds, batch_rows, sink),
            None => Ok(()),
        }
    }

    /// Every current row of some event dates, in key order (re-sync).
    pub(super) fn stream_dates(
        &mut self,
        dates: &[NaiveDate],
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()> {
        if dates.is_empty() {
            return Ok(());
        }
        let text = self.render(&sql::ROWS_OF_DATES, None);
        let params = [Param::dates("dates", dates.iter().copied())];
        self.stream_query(
            "read_rows_of_dates",
            &text,
            &params,
            false,
            batch_rows,
            sink,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
