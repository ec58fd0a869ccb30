//! The change-batch contract between the warehouses and the MySQL sink: a
//! [`ChangeBatch`] is built only through a constructor that checks its columns against
//! [`CHANGE_SCHEMA`] and reads each row's [`ChangeOp`]; named access to its offset
//! columns, the feed position (`FeedOffset`), per-date checksums (`DateChecksum`) and
//! the one re-cutter that turns query results into change batches of the export's size.
//! Both warehouses produce change batches; the MySQL sink consumes them.

use std::sync::Arc;

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{
    DataType, Date32Type, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType,
};
use serde::Serialize;

use crate::contract::TYPED_SCHEMA;
use crate::error::{PipelineError, Result};

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

/// What a change row does to the serving table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChangeOp {
    /// Insert the row, or replace the one of its key.
    Upsert,
    /// Delete the row of its key (a tombstone: only the key and date are set).
    Delete,
}

impl ChangeOp {
    /// The code the warehouses' feed queries write in the `op` column.
    pub const fn code(self) -> &'static str {
        match self {
            ChangeOp::Upsert => "U",
            ChangeOp::Delete => "D",
        }
    }

    /// The operation of an `op` code; None for any other.
    pub fn from_code(code: &str) -> Option<ChangeOp> {
        match code {
            "U" => Some(ChangeOp::Upsert),
            "D" => Some(ChangeOp::Delete),
            _ => None,
        }
    }
}

/// A batch of the change feed: the columns of [`CHANGE_SCHEMA`] (the typed columns in
/// whatever Arrow layout the warehouse returns), every row with an operation, an event
/// key and an event date. Only [`ChangeBatch::try_new`] builds one.
#[derive(Debug, Clone)]
pub struct ChangeBatch {
    batch: RecordBatch,
    ops: Vec<ChangeOp>,
    /// Where `event_key` and `event_date` are, found once.
    key_column: usize,
    date_column: usize,
}

/// Bytes of an event key (an MD5 digest).
pub const EVENT_KEY_BYTES: usize = 16;

impl ChangeBatch {
    /// Checks `batch` against the change-batch contract: each column of
    /// [`CHANGE_SCHEMA`] present; `op` a string of U or D in every row; `changed_at` a
    /// timestamp in microseconds; `event_key` binary of [`EVENT_KEY_BYTES`] and
    /// `event_date` a DATE, neither NULL in any row. Anything else is an internal error
    /// naming the first fault.
    pub fn try_new(batch: RecordBatch) -> Result<ChangeBatch> {
        let fault = |what: String| PipelineError::Internal(format!("a change batch {what}"));
        for field in CHANGE_SCHEMA.fields() {
            if batch.column_by_name(field.name()).is_none() {
                return Err(fault(format!("has no {} column", field.name())));
            }
        }
        let column = |name: &str| batch.column_by_name(name).map(|c| c.as_ref());
        let ops = column("op").ok_or_else(|| fault("has no op column".into()))?;
        let op_at = |row: usize| -> Option<&str> {
            if ops.is_null(row) {
                None
            } else if let Some(a) = ops.as_string_opt::<i32>() {
                Some(a.value(row))
            } else if let Some(a) = ops.as_string_opt::<i64>() {
                Some(a.value(row))
            } else {
                ops.as_string_view_opt().map(|a| a.value(row))
            }
        };
        if !matches!(
            ops.data_type(),
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View
        ) {
            return Err(fault(format!("has op of type {}", ops.data_type())));
        }
        ChangeOffsets::of(&batch)?;
        let index = |name: &str| {
            batch
                .schema_ref()
                .index_of(name)
                .map_err(|_| fault(format!("has no {name} column")))
        };
        let (key_column, date_column) = (index("event_key")?, index("event_date")?);
        let keys = batch.column(key_column).as_ref();
        let dates = batch
            .column(date_column)
            .as_primitive_opt::<Date32Type>()
            .ok_or_else(|| fault("has an event_date that is not a DATE".into()))?;
        let mut parsed = Vec::with_capacity(batch.num_rows());
        for row in 0..batch.num_rows() {
            let code = op_at(row);
            let op = code
                .and_then(ChangeOp::from_code)
                .ok_or_else(|| fault(format!("has operation {code:?} in row {row}, not U or D")))?;
            match binary_at(keys, row) {
                None => return Err(fault(format!("has no binary event_key in row {row}"))),
                Some(key) if key.len() != EVENT_KEY_BYTES => {
                    return Err(fault(format!(
                        "has an event_key of {} bytes in row {row}, not {EVENT_KEY_BYTES}",
                        key.len()
                    )));
                }
                Some(_) => {}
            }
            if dates.is_null(row) {
                return Err(fault(format!("has no event_date in row {row}")));
            }
            parsed.push(op);
        }
        Ok(ChangeBatch {
            batch,
            ops: parsed,
            key_column,
            date_column,
        })
    }

    /// The rows, as the warehouse returned them.
    pub fn record_batch(&self) -> &RecordBatch {
        &self.batch
    }

    pub fn num_rows(&self) -> usize {
        self.batch.num_rows()
    }

    /// The operation of each row.
    pub fn ops(&self) -> &[ChangeOp] {
        &self.ops
    }

    /// `event_key` of row `row`.
    pub fn event_key(&self, row: usize) -> &[u8] {
        binary_at(self.batch.column(self.key_column).as_ref(), row).unwrap_or_default()
    }

    /// `event_date` of row `row`, in days since the epoch.
    pub fn event_day(&self, row: usize) -> i32 {
        self.batch
            .column(self.date_column)
            .as_primitive_opt::<Date32Type>()
            .map_or(0, |dates| dates.value(row))
    }

    /// The offset columns (checked by the constructor).
    pub fn offsets(&self) -> ChangeOffsets<'_> {
        ChangeOffsets::of(&self.batch).expect("checked when the batch was built")
    }
}

/// Position in the change feed: `(changed_at, event_key)` of the last applied change.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FeedOffset {
    pub changed_at: i64,
    #[serde(serialize_with = "crate::hex::serialize")]
    pub event_key: [u8; 16],
}

impl FeedOffset {
    /// Before every `changed_at`: 0001-01-01T00:00:00Z in microseconds.
    pub const START_MICROS: i64 = -62_135_596_800_000_000;

    /// Where a read of the feed after `offset` starts: its `changed_at` and key (exclusive),
    /// or, from the beginning, the feed's start and a key before every key.
    pub fn position(offset: Option<FeedOffset>) -> (i64, Vec<u8>) {
        match offset {
            Some(o) => (o.changed_at, o.event_key.to_vec()),
            None => (FeedOffset::START_MICROS, Vec::new()),
        }
    }

    /// The `changed_at` a read after `offset` starts from.
    pub fn changed_at_of(offset: Option<FeedOffset>) -> i64 {
        offset.map_or(FeedOffset::START_MICROS, |o| o.changed_at)
    }
}

/// The offset columns of a change batch, by name: `changed_at` and `event_key` of each row.
pub struct ChangeOffsets<'a> {
    changed_at: &'a arrow::array::TimestampMicrosecondArray,
    event_keys: &'a dyn arrow::array::Array,
}

impl<'a> ChangeOffsets<'a> {
    /// The offset columns of `batch`; an error when it does not have them.
    pub fn of(batch: &'a RecordBatch) -> Result<Self> {
        let column = |name: &str| {
            batch.column_by_name(name).ok_or_else(|| {
                PipelineError::Internal(format!("a change batch has no {name} column"))
            })
        };
        let changed_at = column("changed_at")?
            .as_primitive_opt::<TimestampMicrosecondType>()
            .ok_or_else(|| {
                PipelineError::Internal("a change batch's changed_at is not a timestamp".into())
            })?;
        Ok(ChangeOffsets {
            changed_at,
            event_keys: column("event_key")?.as_ref(),
        })
    }

    /// `changed_at` of row `row`, UTC microseconds.
    pub fn changed_at(&self, row: usize) -> i64 {
        self.changed_at.value(row)
    }

    /// `event_key` of row `row` (None when NULL).
    pub fn event_key(&self, row: usize) -> Option<&'a [u8]> {
        binary_at(self.event_keys, row)
    }

    /// The feed position of row `row`.
    pub fn offset(&self, row: usize) -> Option<FeedOffset> {
        let key = self.event_key(row)?;
        let mut event_key = [0u8; 16];
        event_key.copy_from_slice(key.get(..16)?);
        Some(FeedOffset {
            changed_at: self.changed_at(row),
            event_key,
        })
    }

    /// The position of the batch's last row: where the feed stands once it is applied.
    pub fn last(&self) -> Option<FeedOffset> {
        self.offset(self.changed_at.len().checked_sub(1)?)
    }
}

/// Row count and order-independent checksum of `row_hash` for one event date.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct DateChecksum {
    pub rows: u64,
    /// Sum of the first 8 bytes (big-endian) of every row_hash.
    pub checksum: u128,
}

/// Adds one row_hash to a checksum.
pub fn add_to_checksum(sum: &mut DateChecksum, row_hash: &[u8]) {
    let mut first = [0u8; 8];
    let n = row_hash.len().min(8);
    first[..n].copy_from_slice(&row_hash[..n]);
    sum.rows += 1;
    sum.checksum += u128::from(u64::from_be_bytes(first));
}

/// The bytes of a binary cell, whichever binary layout the backend returns.
pub fn binary_at(array: &dyn arrow::array::Array, row: usize) -> Option<&[u8]> {
    use arrow::array::AsArray;
    if array.is_null(row) {
        return None;
    }
    if let Some(a) = array.as_binary_opt::<i32>() {
        Some(a.value(row))
    } else if let Some(a) = array.as_binary_opt::<i64>() {
        Some(a.value(row))
    } else if let Some(a) = array.as_binary_view_opt() {
        Some(a.value(row))
    } else {
        array.as_fixed_size_binary_opt().map(|a| a.value(row))
    }
}

/// Cuts query results into batches of exactly `batch_rows` rows (the last may be
/// shorter), across the queries that make up one selection.
pub struct BatchRecutter<'a> {
    batch_rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    sink: &'a mut dyn FnMut(ChangeBatch) -> Result<bool>,
}

impl<'a> BatchRecutter<'a> {
    pub fn new(batch_rows: usize, sink: &'a mut dyn FnMut(ChangeBatch) -> Result<bool>) -> Self {
        BatchRecutter {
            batch_rows: batch_rows.max(1),
            pending: Vec::new(),
            pending_rows: 0,
            sink,
        }
    }

    fn flush(&mut self) -> Result<bool> {
        let Some(first) = self.pending.first() else {
            return Ok(true);
        };
        let batch = concat_batches(&first.schema(), &self.pending)
            .map_err(|e| PipelineError::arrow("assembling a change batch", e))?;
        self.pending.clear();
        self.pending_rows = 0;
        (self.sink)(ChangeBatch::try_new(batch)?)
    }

    pub fn push(&mut self, mut chunk: RecordBatch) -> Result<bool> {
        while chunk.num_rows() > 0 {
            let take = (self.batch_rows - self.pending_rows).min(chunk.num_rows());
            self.pending.push(chunk.slice(0, take));
            self.pending_rows += take;
            chunk = chunk.slice(take, chunk.num_rows() - take);
            if self.pending_rows == self.batch_rows && !self.flush()? {
                return Ok(false);
            }
        }
        Ok(true)
    }

    pub fn finish(&mut self) -> Result<()> {
        self.flush().map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use arrow::array::{
        ArrayRef, BinaryArray, Date32Array, LargeStringArray, StringArray,
        TimestampMicrosecondArray, new_null_array,
    };

    /// A batch of CHANGE_SCHEMA's columns (all nullable, as a warehouse may return them),
    /// `op`, `event_key` and `event_date` as given, the typed columns NULL; `without`
    /// leaves one column out.
    fn batch(
        ops: ArrayRef,
        keys: Vec<Option<&[u8]>>,
        days: Vec<Option<i32>>,
        without: Option<&str>,
    ) -> RecordBatch {
        let rows = keys.len();
        let mut fields = Vec::new();
        let mut columns: Vec<ArrayRef> = Vec::new();
        for field in CHANGE_SCHEMA.fields() {
            if Some(field.name().as_str()) == without {
                continue;
            }
            let column: ArrayRef = match field.name().as_str() {
                "op" => ops.clone(),
                "changed_at" => Arc::new(TimestampMicrosecondArray::from(vec![7; rows])),
                "event_key" => Arc::new(BinaryArray::from(keys.clone())),
                "event_date" => Arc::new(Date32Array::from(days.clone())),
                _ => new_null_array(field.data_type(), rows),
            };
            fields.push(Field::new(field.name(), column.data_type().clone(), true));
            columns.push(column);
        }
        RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("a test batch")
    }

    const KEY: &[u8] = &[0xab; 16];

    fn refused(batch: RecordBatch) -> String {
        ChangeBatch::try_new(batch)
            .expect_err("refused")
            .to_string()
    }

    #[test]
    fn a_change_batch_reads_each_rows_operation() {
        let ops: ArrayRef = Arc::new(StringArray::from(vec!["U", "D"]));
        let built = ChangeBatch::try_new(batch(
            ops,
            vec![Some(KEY), Some(&[1; 16])],
            vec![Some(19_723), Some(19_724)],
            None,
        ))
        .expect("a change batch");
        assert_eq!(built.ops(), [ChangeOp::Upsert, ChangeOp::Delete]);
        assert_eq!(built.event_key(1), &[1; 16]);
        assert_eq!(built.event_day(0), 19_723);
        assert_eq!(built.offsets().last().map(|o| o.changed_at), Some(7));
        // Large strings are strings too.
        let large: ArrayRef = Arc::new(LargeStringArray::from(vec!["D"]));
        let built = ChangeBatch::try_new(batch(large, vec![Some(KEY)], vec![Some(1)], None));
        assert_eq!(built.expect("large strings").ops(), [ChangeOp::Delete]);
    }

    #[test]
    fn only_u_and_d_are_operations() {
        for op in ["X", "u", "", " U", "UD"] {
            let ops: ArrayRef = Arc::new(StringArray::from(vec!["U", op]));
            let err = refused(batch(
                ops,
                vec![Some(KEY), Some(KEY)],
                vec![Some(1), Some(1)],
                None,
            ));
            assert!(
                err.contains(&format!("{op:?}")) && err.contains("row 1"),
                "{err}"
            );
        }
        let null_op: ArrayRef = Arc::new(StringArray::from(vec![None::<&str>]));
        let err = refused(batch(null_op, vec![Some(KEY)], vec![Some(1)], None));
        assert!(err.contains("None"), "{err}");
        // An op that is not text at all, though its values would read as codes.
        let numeric: ArrayRef = Arc::new(Date32Array::from(vec![85]));
        let err = refused(batch(numeric, vec![Some(KEY)], vec![Some(1)], None));
        assert!(err.contains("op of type"), "{err}");
    }

    #[test]
    fn every_row_needs_its_key_and_date_and_every_column_must_be_there() {
        let ops = || -> ArrayRef { Arc::new(StringArray::from(vec!["U", "D"])) };
        let err = refused(batch(
            ops(),
            vec![Some(KEY), None],
            vec![Some(1), Some(1)],
            None,
        ));
        assert!(err.contains("no binary event_key in row 1"), "{err}");
        // Same rows, the key in another encoding: hex digits as bytes, a truncated
        // digest, or the digest as text.
        let hex = b"abababababababababababababababab";
        for (key, bytes) in [(&hex[..], 32), (&KEY[..8], 8)] {
            let err = refused(batch(
                ops(),
                vec![Some(KEY), Some(key)],
                vec![Some(1), Some(1)],
                None,
            ));
            assert!(
                err.contains(&format!("event_key of {bytes} bytes in row 1")),
                "{err}"
            );
        }
        let mut text = batch(
            ops(),
            vec![Some(KEY), Some(KEY)],
            vec![Some(1), Some(1)],
            None,
        );
        let at = text.schema().index_of("event_key").expect("event_key");
        let mut columns = text.columns().to_vec();
        columns[at] = Arc::new(StringArray::from(vec!["abababababababab"; 2]));
        let mut fields: Vec<Field> = text
            .schema()
            .fields()
            .iter()
            .map(|f| f.as_ref().clone())
            .collect();
        fields[at] = Field::new("event_key", DataType::Utf8, true);
        text = RecordBatch::try_new(Arc::new(Schema::new(fields)), columns).expect("batch");
        let err = refused(text);
        assert!(err.contains("no binary event_key in row 0"), "{err}");
        let err = refused(batch(
            ops(),
            vec![Some(KEY), Some(KEY)],
            vec![None, Some(1)],
            None,
        ));
        assert!(err.contains("no event_date in row 0"), "{err}");
        for missing in ["op", "changed_at", "event_key", "event_date", "hotel_price"] {
            let err = refused(batch(
                ops(),
                vec![Some(KEY), Some(KEY)],
                vec![Some(1), Some(1)],
                Some(missing),
            ));
            assert!(err.contains(&format!("no {missing} column")), "{err}");
        }
    }
}
