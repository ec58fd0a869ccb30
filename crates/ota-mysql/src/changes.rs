//! A change batch as the sink applies it: split by operation, upserts in the serving
//! table's primary-key order.

use std::collections::BTreeMap;

use arrow::array::RecordBatch;
use chrono::NaiveDate;

use crate::sql;
use ota_core::change::{ChangeBatch, ChangeOp};
use ota_core::error::{PipelineError, Result};

/// A change batch split by operation.
pub struct ChangeRows {
    /// Rows to upsert, in the serving table's primary-key order `(event_date,
    /// event_key)`, so each batch is written as ascending runs of the B-tree.
    pub upserts: Vec<usize>,
    /// Keys to delete, by event date.
    pub tombstones: BTreeMap<NaiveDate, Vec<Vec<u8>>>,
}

/// Splits a change batch by operation: the rows to upsert in primary-key order, the keys
/// to delete by event date.
pub fn split_changes(batch: &ChangeBatch) -> ChangeRows {
    let mut upserts: Vec<(i32, &[u8], usize)> = Vec::with_capacity(batch.num_rows());
    let mut tombstones: BTreeMap<NaiveDate, Vec<Vec<u8>>> = BTreeMap::new();
    for (row, op) in batch.ops().iter().enumerate() {
        let (day, key) = (batch.event_day(row), batch.event_key(row));
        match op {
            ChangeOp::Upsert => upserts.push((day, key, row)),
            ChangeOp::Delete => tombstones
                .entry(ota_core::typing::date_of_epoch_day(day))
                .or_default()
                .push(key.to_vec()),
        }
    }
    upserts.sort_unstable();
    ChangeRows {
        upserts: upserts.into_iter().map(|(_, _, row)| row).collect(),
        tombstones,
    }
}

/// Batch column indices of the serving table's columns.
pub fn target_projection(batch: &RecordBatch) -> Result<Vec<usize>> {
    sql::target_columns()
        .iter()
        .map(|name| {
            batch.schema_ref().index_of(name).map_err(|_| {
                PipelineError::Internal(format!("a change batch has no {name} column"))
            })
        })
        .collect()
}
