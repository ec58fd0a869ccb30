//! The embedded warehouse: one DuckDB database file (`duckdb:///abs/path/warehouse.duckdb`).
//! Tables: `run_staged_windows`/`run_staged_files` (each run's staged set, DuckDB's
//! stand-in for the external table), `file_ledger`, `raw_events`, `raw_rejects`, `dedup_pending_dates`,
//! `dedup_events`, `dedup_tombstones` and `dedup_runs`.

mod config;
mod dedup;
mod feed;
mod ledger;
mod load;
pub mod sql;

pub use config::{DEFAULT_MEMORY_LIMIT, DuckDbSettings, parse_location};
use feed::{ROWS_PER_KEY_SLICE, ROWS_PER_SORT, select_dates};
use ota_core::change::{BatchRecutter, ChangeBatch};

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use arrow::array::{Array, AsArray};
use arrow::datatypes::Date32Type;
use chrono::NaiveDate;
use duckdb::{Connection, params};

use super::{
    ChangeSelection, DateChecksum, DedupOutcome, FeedOffset, QuarantineKind, QuarantinedFile,
    RawLoadOutcome, RawSource, StagedFiles, Warehouse, add_to_checksum, binary_at,
};
use ota_core::error::{PipelineError, Result};
use ota_core::typing::date_of_epoch_day;
use ota_core::window::parse_date;
use ota_lake::{LakeFile, RecordedVersion};

/// Handle on the embedded warehouse.
pub struct DuckDbWarehouse {
    conn: Connection,
    url: String,
    /// Rows DuckDB sorts at once when reading changes ([`ROWS_PER_SORT`]).
    rows_per_sort: u64,
    /// Rows of a large selection read per key slice ([`ROWS_PER_KEY_SLICE`]).
    rows_per_slice: u64,
    /// Threads the URL asked for (`?threads=`); None leaves DuckDB's default, all cores.
    threads: Option<u32>,
}

fn db_err(context: &str) -> impl FnOnce(duckdb::Error) -> PipelineError + '_ {
    move |e| PipelineError::warehouse(context, e)
}

impl DuckDbWarehouse {
    /// Opens (creating if needed) the database file and its tables. With `read_only`,
    /// several processes (concurrent exports, reconcile) may read it at once.
    pub fn open(location: &str, read_only: bool) -> Result<Self> {
        let (path, settings) = parse_location(location)?;
        let path = PathBuf::from(path);
        if !path.is_absolute() {
            return Err(PipelineError::Config(format!(
                "warehouse URL duckdb://{} must hold an absolute path (duckdb:///abs/path/warehouse.duckdb)",
                path.display()
            )));
        }
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| PipelineError::io(dir, e))?;
        }
        let opening = |e| {
            PipelineError::warehouse(
                format!(
                    "opening {} (is another step writing to it?)",
                    path.display()
                ),
                e,
            )
        };
        let conn = if read_only {
            if !path.exists() {
                return Err(PipelineError::Config(format!(
                    "warehouse {} does not exist yet: run stage-files first",
                    path.display()
                )));
            }
            let config = settings
                .config()
                .and_then(|c| c.access_mode(duckdb::AccessMode::ReadOnly))
                .map_err(opening)?;
            Connection::open_with_flags(&path, config).map_err(opening)?
        } else {
            let config = settings.config().map_err(opening)?;
            let conn = Connection::open_with_flags(&path, config).map_err(opening)?;
            conn.execute_batch(&sql::SCHEMA)
                .map_err(db_err("creating the warehouse tables"))?;
            conn
        };
        Ok(DuckDbWarehouse {
            conn,
            url: format!("duckdb://{}", path.display()),
            rows_per_sort: ROWS_PER_SORT,
            rows_per_slice: ROWS_PER_KEY_SLICE,
            threads: settings.threads,
        })
    }

    fn in_transaction<T>(
        &mut self,
        what: &str,
        f: impl FnOnce(&Connection) -> Result<T>,
    ) -> Result<T> {
        self.conn
            .execute_batch("BEGIN TRANSACTION")
            .map_err(db_err(what))?;
        match f(&self.conn) {
            Ok(v) => {
                self.conn.execute_batch("COMMIT").map_err(db_err(what))?;
                Ok(v)
            }
            Err(e) => {
                if let Err(rb) = self.conn.execute_batch("ROLLBACK") {
                    tracing::error!(error = %rb, "rollback failed after: {e}");
                }
                Err(e)
            }
        }
    }
}

impl Warehouse for DuckDbWarehouse {
    fn url(&self) -> &str {
        &self.url
    }

    fn stage_files(&mut self, run_key: &str, staged: &StagedFiles) -> Result<()> {
        self.record_staged_set(run_key, staged)
    }

    fn staged_files(&mut self, run_key: &str) -> Result<Option<StagedFiles>> {
        self.read_staged_set(run_key)
    }

    fn ledger_entries(&mut self, uris: &[String]) -> Result<BTreeMap<String, RecordedVersion>> {
        self.read_ledger(uris)
    }

    fn quarantine(
        &mut self,
        file: &LakeFile,
        kind: QuarantineKind,
        reason: &str,
        at: i64,
    ) -> Result<()> {
        self.record_quarantine(file, kind, reason, at)
    }

    fn quarantined(&mut self, uris: &[String]) -> Result<BTreeMap<String, QuarantinedFile>> {
        self.read_quarantine(uris)
    }

    fn release_quarantine(&mut self, uris: &[String]) -> Result<()> {
        self.clear_quarantine(uris)
    }

    fn load_raw(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        self.load_files(files, loaded_at, source)
    }

    fn dedup(&mut self, now: i64) -> Result<DedupOutcome> {
        self.rebuild_dedup_dates(now)
    }

    fn stream_changes(
        &mut self,
        selection: &ChangeSelection,
        batch_rows: usize,
        sink: &mut dyn FnMut(ChangeBatch) -> Result<bool>,
    ) -> Result<()> {
        let mut batches = BatchRecutter::new(batch_rows, sink);
        match selection {
            ChangeSelection::After(offset) => self.stream_feed(*offset, &mut batches),
            ChangeSelection::Dates(dates) => self.stream_dates(dates, &mut batches),
        }
    }

    fn dates_changed_after(&mut self, offset: Option<FeedOffset>) -> Result<BTreeSet<NaiveDate>> {
        let (at, key) = FeedOffset::position(offset);
        let e = || db_err("reading the dates the feed has changes of");
        let mut stmt = self.conn.prepare(sql::DATES_CHANGED_AFTER).map_err(e())?;
        let rows = stmt
            .query_map(params![at, key], |r| r.get::<_, String>(0))
            .map_err(e())?;
        let mut dates = BTreeSet::new();
        for row in rows {
            dates.insert(parse_date("feed event date", &row.map_err(e())?)?);
        }
        Ok(dates)
    }

    fn feed_origin(&mut self) -> Result<Option<i64>> {
        self.conn
            .query_row(sql::FEED_ORIGIN, [], |r| r.get::<_, Option<i64>>(0))
            .map_err(db_err("reading when the change feed began"))
    }

    fn feed_length(&mut self, offset: Option<FeedOffset>) -> Result<Option<u64>> {
        let at = FeedOffset::changed_at_of(offset);
        self.count(sql::FEED_LENGTH, &[&at]).map(Some)
    }

    fn date_checksums(
        &mut self,
        dates: Option<&[NaiveDate]>,
    ) -> Result<BTreeMap<NaiveDate, DateChecksum>> {
        let query = match dates {
            Some(d) => {
                select_dates(&self.conn, d)?;
                sql::HASHES_OF_DATES
            }
            None => sql::HASHES_OF_ALL_DATES,
        };
        let mut sums: BTreeMap<i32, DateChecksum> = BTreeMap::new();
        let mut stmt = self
            .conn
            .prepare(query)
            .map_err(db_err("checksumming dedup rows"))?;
        for batch in stmt
            .stream_arrow([])
            .map_err(db_err("checksumming dedup rows"))?
        {
            let batch = batch.map_err(db_err("checksumming dedup rows"))?;
            let days = batch.column(0).as_primitive::<Date32Type>();
            let hashes = batch.column(1);
            for i in 0..batch.num_rows() {
                if let (true, Some(hash)) = (days.is_valid(i), binary_at(hashes.as_ref(), i)) {
                    add_to_checksum(sums.entry(days.value(i)).or_default(), hash);
                }
            }
        }
        Ok(sums
            .into_iter()
            .map(|(d, s)| (date_of_epoch_day(d), s))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::config::threads_beside_a_core;
    use super::*;

    /// (op, changed_at, key, request_id) of every change a selection streams.
    fn streamed(
        wh: &mut DuckDbWarehouse,
        selection: &ChangeSelection,
    ) -> Vec<(String, i64, Vec<u8>, Option<String>)> {
        let mut out = Vec::new();
        wh.stream_changes(selection, 700, &mut |b| {
            let b = b.record_batch();
            assert!(b.num_rows() <= 700);
            let ops = b.column_by_name("op").unwrap().as_string::<i32>();
            let at = b
                .column_by_name("changed_at")
                .unwrap()
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            let keys = b.column_by_name("event_key").unwrap();
            let ids = b.column_by_name("request_id").unwrap().as_string::<i32>();
            for row in 0..b.num_rows() {
                out.push((
                    ops.value(row).to_string(),
                    at.value(row),
                    binary_at(keys.as_ref(), row).unwrap().to_vec(),
                    ids.is_valid(row).then(|| ids.value(row).to_string()),
                ));
            }
            Ok(true)
        })
        .unwrap();
        out
    }

    #[test]
    fn large_runs_come_in_key_order_through_buckets_as_small_ones_do() {
        let dir = tempfile::tempdir().unwrap();
        let mut wh =
            DuckDbWarehouse::open(&dir.path().join("w.duckdb").display().to_string(), false)
                .unwrap();
        // Two runs: 5,000 rows over three dates and 40 tombstones, then 300 rows.
        wh.conn
            .execute_batch(
                "INSERT INTO dedup_events (event_key, event_date, request_id, row_hash, changed_at)
                 SELECT unhex(md5(i::VARCHAR)), DATE '2024-01-01' + (i % 3)::INT, 'r' || i,
                        unhex(md5('h' || i)), make_timestamp(1000 + (i >= 5000)::BIGINT)
                 FROM range(5300) t(i);
                 INSERT INTO dedup_tombstones
                 SELECT unhex(md5('gone' || i)), DATE '2024-01-02', make_timestamp(1000)
                 FROM range(40) t(i);",
            )
            .unwrap();
        let all = ChangeSelection::After(None);
        let sorted_by_duckdb = streamed(&mut wh, &all);
        wh.rows_per_sort = 500;
        let threads = |wh: &DuckDbWarehouse| -> i64 {
            wh.conn
                .query_row("SELECT current_setting('threads')", [], |r| r.get(0))
                .unwrap()
        };
        let default_threads = threads(&wh);
        // One slice through buckets; then four (5,040 rows at 1,000 a slice, capped at 4),
        // the first of them cut in two: five.
        wh.rows_per_slice = 10_000;
        let one_slice = streamed(&mut wh, &all);
        wh.rows_per_slice = 1_000;
        let through_buckets = streamed(&mut wh, &all);
        assert_eq!(through_buckets.len(), 5_340);
        assert_eq!(through_buckets, sorted_by_duckdb);
        assert_eq!(one_slice, sorted_by_duckdb);
        let order: Vec<(i64, &[u8])> = through_buckets
            .iter()
            .map(|(_, at, key, _)| (*at, key.as_slice()))
            .collect();
        assert!(
            order.windows(2).all(|w| w[0] < w[1]),
            "(changed_at, key) order"
        );
        let tombstones = through_buckets.iter().filter(|c| c.0 == "D").count();
        assert_eq!(tombstones, 40);

        // Resuming mid-run skips exactly what came before the offset.
        let (_, at, key, _) = &through_buckets[1_234];
        let offset = FeedOffset {
            changed_at: *at,
            event_key: key.as_slice().try_into().unwrap(),
        };
        let rest = streamed(&mut wh, &ChangeSelection::After(Some(offset)));
        assert_eq!(rest, through_buckets[1_235..]);

        // A sink that wants no more stops the slice reader too: one batch, then done.
        let mut calls = 0;
        wh.stream_changes(&all, 100, &mut |_| {
            calls += 1;
            Ok(false)
        })
        .unwrap();
        assert_eq!(calls, 1);
        // A sink that fails: its error comes back, the reader is stopped and joined.
        let failed = wh.stream_changes(&all, 100, &mut |_| {
            Err(PipelineError::Config("MySQL went away".into()))
        });
        assert!(matches!(failed, Err(PipelineError::Config(m)) if m == "MySQL went away"));
        // The reader had one core fewer; the setting is back, whatever ended the read.
        assert_eq!(threads(&wh), default_threads);

        // A re-sync of two dates: their current rows only, in key order, either way.
        let dates = ChangeSelection::Dates(vec![
            NaiveDate::from_ymd_opt(2024, 1, 1).unwrap(),
            NaiveDate::from_ymd_opt(2024, 1, 3).unwrap(),
        ]);
        let resync = streamed(&mut wh, &dates);
        wh.rows_per_sort = ROWS_PER_SORT;
        assert_eq!(resync, streamed(&mut wh, &dates));
        assert_eq!(resync.len(), 1_767 + 1_766);
        assert!(resync.iter().all(|c| c.0 == "U"));
        assert!(resync.windows(2).all(|w| w[0].2 < w[1].2));
    }

    #[test]
    fn url_settings() {
        let (path, s) = parse_location("/w/x.duckdb").unwrap();
        assert_eq!(
            (path.as_str(), s),
            ("/w/x.duckdb", DuckDbSettings::default())
        );
        let (path, s) = parse_location("/w/x.duckdb?memory_limit=2GB&threads=3").unwrap();
        assert_eq!(path, "/w/x.duckdb");
        assert_eq!(s.memory_limit, "2GB");
        assert_eq!(s.threads, Some(3));
        for bad in [
            "/x?memory_limit=lots",
            "/x?memory_limit=5",
            "/x?memory_limit=1GB;DROP",
            "/x?threads=0",
            "/x?colour=blue",
        ] {
            let err = parse_location(bad).unwrap_err().to_string();
            assert!(err.contains("warehouse URL"), "{bad}: {err}");
        }
    }

    #[test]
    fn load_raw_leaves_a_core_to_typing_and_restores_the_threads() {
        assert_eq!(threads_beside_a_core(None, 2), Some(1));
        assert_eq!(threads_beside_a_core(None, 8), Some(7));
        assert_eq!(threads_beside_a_core(None, 1), None);
        assert_eq!(threads_beside_a_core(Some(4), 8), None);

        struct Nothing;
        impl RawSource for Nothing {
            fn read(
                &mut self,
                _: &LakeFile,
                _: &mut dyn FnMut(ota_core::typed_batch::TypedBatch) -> Result<()>,
            ) -> Result<()> {
                Ok(())
            }
        }
        let threads = |wh: &DuckDbWarehouse| -> i64 {
            wh.conn
                .query_row("SELECT current_setting('threads')", [], |r| r.get(0))
                .unwrap()
        };
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("w.duckdb").display().to_string();
        let mut wh = DuckDbWarehouse::open(&path, false).unwrap();
        let default = threads(&wh);
        wh.load_raw(&[], 0, &mut Nothing).unwrap();
        assert_eq!(threads(&wh), default);
        drop(wh);
        let mut wh = DuckDbWarehouse::open(&format!("{path}?threads=1"), false).unwrap();
        wh.load_raw(&[], 0, &mut Nothing).unwrap();
        assert_eq!(threads(&wh), 1);
    }

    #[test]
    fn the_memory_limit_reaches_duckdb() {
        let dir = tempfile::tempdir().unwrap();
        let location = format!(
            "{}?memory_limit=100MB&threads=1",
            dir.path().join("w.duckdb").display()
        );
        let wh = DuckDbWarehouse::open(&location, false).unwrap();
        let (limit, threads): (String, i64) = wh
            .conn
            .query_row(
                "SELECT current_setting('memory_limit'), current_setting('threads')",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .unwrap();
        assert!(limit.starts_with("95") || limit.contains("100"), "{limit}");
        assert_eq!(threads, 1);
    }
}
