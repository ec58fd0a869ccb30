//! dedup on BigQuery: one MERGE script rebuilds the pending event dates.

use super::client::Attach;
use super::feed::{cell_date, cell_i64};
use super::{BigQueryWarehouse, sql};
use crate::DedupOutcome;
use ota_core::error::{PipelineError, Result};

impl BigQueryWarehouse {
    /// Rebuilds the dedup rows of the pending event dates.
    pub(super) fn rebuild_dedup_dates(&mut self) -> Result<DedupOutcome> {
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
        self.keep_lease()?;
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
}
