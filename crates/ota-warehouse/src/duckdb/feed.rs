//! The change feed and date selections of the embedded warehouse, streamed in
//! `(changed_at, event_key)` order: small runs sorted by DuckDB, large ones read in key
//! slices and ordered through key buckets.

use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::RecordBatch;
use chrono::NaiveDate;
use duckdb::{Connection, params};

use super::config::{leave_a_core, restore_threads};
use super::{DuckDbWarehouse, db_err, sql};
use crate::FeedOffset;
use crate::key_order::{KeyBuckets, KeySlice, key_slices};
use ota_core::change::BatchRecutter;
use ota_core::error::Result;

impl DuckDbWarehouse {
    pub(super) fn count(&self, query: &str, bind: &[&dyn duckdb::ToSql]) -> Result<u64> {
        let n: i64 = self
            .conn
            .query_row(query, bind, |r| r.get(0))
            .map_err(db_err("counting changes"))?;
        Ok(n.max(0) as u64)
    }

    /// Hands the rows of `read` (`rows` of them, about) to `batches` in key order.
    /// DuckDB sorts up to `rows_per_sort` rows itself; more are read in key slices, each
    /// put in order through [`KeyBuckets`], the next slice read on a connection of its own
    /// while the previous one goes out. Returns false once the sink wants no more.
    fn stream_in_key_order(
        &self,
        read: &KeyOrderedRead,
        rows: u64,
        batches: &mut BatchRecutter<'_>,
    ) -> Result<bool> {
        if rows <= self.rows_per_sort {
            return read.stream(&self.conn, read.sorted_query(), None, &mut |chunk| {
                batches.push(chunk)
            });
        }
        // The slices are read while batches are encoded and sent on other threads (and
        // MySQL, where it runs on this machine, loads them): more DuckDB workers would
        // only contend with those for the CPU.
        let left = leave_a_core(&self.conn, self.threads, "leaving a core to the sender")?;
        let streamed = self.stream_key_slices(read, rows, batches);
        restore_threads(&self.conn, left, streamed)
    }

    /// The large case of [`Self::stream_in_key_order`].
    fn stream_key_slices(
        &self,
        read: &KeyOrderedRead,
        rows: u64,
        batches: &mut BatchRecutter<'_>,
    ) -> Result<bool> {
        let slices = key_slices(rows, self.rows_per_slice, MAX_KEY_SLICES);
        let rows_per_bucket = self.rows_per_sort / 4;
        tracing::debug!(
            rows,
            slices = slices.len(),
            "ordering changes by key through slices and buckets"
        );
        let conn = self
            .conn
            .try_clone()
            .map_err(db_err("opening a reader connection"))?;
        let stop = AtomicBool::new(false);
        // Rendezvous: the reader gets one slice ahead of the one being sent, no more.
        let (ready, slices_in) = std::sync::mpsc::sync_channel::<Result<KeyBuckets>>(0);
        std::thread::scope(|scope| {
            let stop = &stop;
            scope.spawn(move || {
                let read_slice = |slice: &KeySlice| -> Result<KeyBuckets> {
                    let mut buckets = KeyBuckets::new("event_key", rows, rows_per_bucket);
                    read.stream(&conn, read.slice_query(), Some(slice), &mut |chunk| {
                        buckets.push(chunk)?;
                        Ok(!stop.load(Ordering::Relaxed))
                    })?;
                    Ok(buckets)
                };
                if let KeyOrderedRead::Dates(dates) = read
                    && let Err(e) = select_dates(&conn, dates)
                {
                    let _ = ready.send(Err(e));
                    return;
                }
                for (index, slice) in slices.iter().enumerate() {
                    let started = std::time::Instant::now();
                    let buckets = read_slice(slice);
                    tracing::debug!(
                        slice = index,
                        ms = started.elapsed().as_millis() as u64,
                        "read a key slice"
                    );
                    let failed = buckets.is_err();
                    if stop.load(Ordering::Relaxed) || ready.send(buckets).is_err() || failed {
                        return;
                    }
                }
            });
            let mut send_slices = || -> Result<bool> {
                for buckets in &slices_in {
                    if !buckets?.drain(&mut |sorted| batches.push(sorted))? {
                        return Ok(false);
                    }
                }
                Ok(true)
            };
            let sent = send_slices();
            // Whatever ended the loop, the reader stops at its next chunk.
            stop.store(true, Ordering::Relaxed);
            drop(slices_in);
            sent
        })
    }

    /// The change feed after an offset, run by run.
    pub(super) fn stream_feed(
        &self,
        offset: Option<FeedOffset>,
        batches: &mut BatchRecutter<'_>,
    ) -> Result<()> {
        let (at, key) = FeedOffset::position(offset);
        let runs: Vec<(i64, i64)> = {
            let mut stmt = self
                .conn
                .prepare(sql::FEED_RUNS)
                .map_err(db_err("listing the change feed's runs"))?;
            stmt.query_map(params![at], |r| Ok((r.get(0)?, r.get(1)?)))
                .map_err(db_err("listing the change feed's runs"))?
                .collect::<duckdb::Result<_>>()
                .map_err(db_err("listing the change feed's runs"))?
        };
        for (run_at, rows) in runs {
            let read = KeyOrderedRead::Run {
                changed_at: run_at,
                after: if run_at == at {
                    key.clone()
                } else {
                    Vec::new()
                },
            };
            if !self.stream_in_key_order(&read, rows.max(0) as u64, batches)? {
                return Ok(());
            }
        }
        batches.finish()
    }

    /// Every current row of some event dates, in key order.
    pub(super) fn stream_dates(
        &self,
        dates: &[NaiveDate],
        batches: &mut BatchRecutter<'_>,
    ) -> Result<()> {
        select_dates(&self.conn, dates)?;
        let rows = self.count(sql::COUNT_ROWS_OF_DATES, &[])?;
        let read = KeyOrderedRead::Dates(dates.to_vec());
        if !self.stream_in_key_order(&read, rows, batches)? {
            return Ok(());
        }
        batches.finish()
    }
}

/// Fills the connection's `selected_dates` (a temporary table: one per connection).
pub(super) fn select_dates(conn: &Connection, dates: &[NaiveDate]) -> Result<()> {
    conn.execute_batch(sql::CREATE_SELECTED_DATES)
        .map_err(db_err("selecting dates"))?;
    let mut stmt = conn
        .prepare(sql::INSERT_SELECTED_DATE)
        .map_err(db_err("selecting dates"))?;
    for d in dates {
        stmt.execute(params![d.to_string()])
            .map_err(db_err("selecting dates"))?;
    }
    Ok(())
}

/// Runs a query and hands its result chunks, in order, to `each`. Returns false once
/// `each` wants no more.
fn stream_query(
    conn: &Connection,
    query: &str,
    bind: &[&dyn duckdb::ToSql],
    each: &mut dyn FnMut(RecordBatch) -> Result<bool>,
) -> Result<bool> {
    let mut stmt = conn
        .prepare(query)
        .map_err(db_err("preparing the change query"))?;
    let stream = stmt.stream_arrow(bind).map_err(db_err("reading changes"))?;
    for chunk in stream {
        let chunk = chunk.map_err(db_err("reading changes"))?;
        if !each(chunk)? {
            return Ok(false);
        }
    }
    Ok(true)
}

/// What a key-ordered read selects, with the values it binds (owned: a large read runs
/// on a thread of its own).
enum KeyOrderedRead {
    /// One dedup run after a key: its changed_at µs and the offset key (empty: none).
    Run { changed_at: i64, after: Vec<u8> },
    /// The current rows of some event dates (`selected_dates` of the connection).
    Dates(Vec<NaiveDate>),
}

impl KeyOrderedRead {
    fn sorted_query(&self) -> &'static str {
        match self {
            KeyOrderedRead::Run { .. } => sql::CHANGES_OF_RUN.as_str(),
            KeyOrderedRead::Dates(_) => sql::ROWS_OF_DATES.as_str(),
        }
    }

    fn slice_query(&self) -> &'static str {
        match self {
            KeyOrderedRead::Run { .. } => sql::CHANGES_OF_RUN_SLICE.as_str(),
            KeyOrderedRead::Dates(_) => sql::ROWS_OF_DATES_SLICE.as_str(),
        }
    }

    /// Runs one of its queries on `conn`, binding its values and a slice's bounds.
    fn stream(
        &self,
        conn: &Connection,
        query: &str,
        slice: Option<&KeySlice>,
        each: &mut dyn FnMut(RecordBatch) -> Result<bool>,
    ) -> Result<bool> {
        let mut bind: Vec<&dyn duckdb::ToSql> = match self {
            KeyOrderedRead::Run { changed_at, after } => {
                vec![changed_at as &dyn duckdb::ToSql, after]
            }
            KeyOrderedRead::Dates(_) => Vec::new(),
        };
        if let Some(slice) = slice {
            bind.extend([&slice.lo as &dyn duckdb::ToSql, &slice.hi]);
        }
        stream_query(conn, query, &bind, each)
    }
}

/// Rows DuckDB sorts at once when reading changes; more are ordered through key buckets
/// of a quarter of this many rows each (they are sorted in the process's own memory,
/// outside DuckDB's limit).
pub(super) const ROWS_PER_SORT: u64 = 100_000;

/// A selection of more than [`ROWS_PER_SORT`] rows is read in key slices of about this
/// many rows, at most [`MAX_KEY_SLICES`] of them: the first rows go out after one slice
/// has been read, not the whole selection, and each slice costs one more scan of it, so
/// a few slices pay and many cost more CPU than they save. [`key_slices`] cuts the first
/// in two, so the first batch leaves sooner.
pub(super) const ROWS_PER_KEY_SLICE: u64 = 250_000;
const MAX_KEY_SLICES: u32 = 4;
