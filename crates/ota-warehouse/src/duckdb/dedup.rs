//! dedup on the embedded warehouse: the queued event dates rebuilt, changes stamped and
//! tombstones left, in one transaction.

use duckdb::params;

use super::{DuckDbWarehouse, db_err, sql};
use crate::DedupOutcome;
use ota_core::error::Result;
use ota_core::window::parse_date;

impl DuckDbWarehouse {
    /// [`crate::Warehouse::dedup`] on this warehouse.
    pub(super) fn rebuild_dedup_dates(&mut self, now: i64) -> Result<DedupOutcome> {
        self.in_transaction("rebuilding dedup dates", |conn| {
            let e = || db_err("rebuilding dedup dates");
            conn.execute_batch(sql::DEDUP_PREPARE).map_err(e())?;
            let mut outcome = DedupOutcome::default();
            {
                let mut stmt = conn.prepare(sql::DEDUP_DATES).map_err(e())?;
                let rows = stmt.query_map([], |r| r.get::<_, String>(0)).map_err(e())?;
                for d in rows {
                    outcome
                        .rebuilt_dates
                        .push(parse_date("dedup date", &d.map_err(e())?)?);
                }
            }
            if outcome.rebuilt_dates.is_empty() {
                return Ok(outcome);
            }
            let (read, winners, changed, vanished): (i64, i64, i64, i64) = conn
                .query_row(sql::DEDUP_COUNTS, [], |r| {
                    Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?))
                })
                .map_err(e())?;
            outcome.rows_read = read as u64;
            outcome.duplicates_removed = (read - winners) as u64;
            outcome.rows_changed = changed as u64;
            outcome.rows_deleted = vanished as u64;
            // changed_at is strictly increasing per warehouse, whatever the clock does.
            let last: Option<i64> = conn
                .query_row(sql::LAST_CHANGED_AT, [], |r| r.get(0))
                .map_err(e())?;
            let changed_at = match last {
                Some(l) if l >= now => l + 1,
                _ => now,
            };
            outcome.changed_at = Some(changed_at);
            conn.execute_batch(sql::DEDUP_UPDATE_LINEAGE).map_err(e())?;
            conn.execute_batch(sql::DEDUP_APPLY_DELETE).map_err(e())?;
            conn.execute(&sql::DEDUP_APPLY_INSERT, params![changed_at])
                .map_err(e())?;
            conn.execute_batch(sql::DEDUP_DELETE_TOMBSTONES)
                .map_err(e())?;
            conn.execute(sql::DEDUP_INSERT_TOMBSTONES, params![changed_at])
                .map_err(e())?;
            conn.execute_batch(sql::DEDUP_CLEAR_PENDING).map_err(e())?;
            conn.execute(sql::DEDUP_RECORD_RUN, params![changed_at])
                .map_err(e())?;
            Ok(outcome)
        })
    }
}
