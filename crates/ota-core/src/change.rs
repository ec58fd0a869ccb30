//! The change-batch contract between the warehouses and the MySQL sink: the schema of a
//! change batch, named access to its offset columns, the feed position (`FeedOffset`),
//! per-date checksums (`DateChecksum`) and the one re-cutter that turns query results
//! into batches of the export's size. Both warehouses produce it; `mysql` consumes it.

use std::sync::Arc;

use arrow::array::{AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit, TimestampMicrosecondType};
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
    sink: &'a mut dyn FnMut(RecordBatch) -> Result<bool>,
}

impl<'a> BatchRecutter<'a> {
    pub fn new(batch_rows: usize, sink: &'a mut dyn FnMut(RecordBatch) -> Result<bool>) -> Self {
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
        (self.sink)(batch)
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
