//! The embedded warehouse: one DuckDB database file (`duckdb:///abs/path/warehouse.duckdb`).
//! Tables: `staged_window`/`staged_files` (the staged set, DuckDB's stand-in for the
//! external table), `file_ledger`, `raw_events`, `raw_rejects`, `dedup_pending_dates`,
//! `dedup_events`, `dedup_tombstones` and `dedup_runs`.

pub mod sql;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::compute::concat_batches;
use arrow::datatypes::Date32Type;
use chrono::NaiveDate;
use duckdb::{Connection, params};

use super::key_order::{KeyBuckets, KeySlice, key_slices};
use super::{
    ChangeSelection, DateChecksum, DedupOutcome, FeedOffset, QuarantineKind, QuarantinedFile,
    RawLoadOutcome, RawSource, StagedFiles, Warehouse, add_to_checksum, binary_at,
};
use crate::error::{PipelineError, Result};
use crate::lake::{LakeFile, RecordedVersion};
use crate::typing::{date_of_epoch_day, epoch_day_of_date};
use crate::window::{DateWindow, parse_date};

/// Before every changed_at: 0001-01-01T00:00:00Z.
const FEED_START_MICROS: i64 = -62_135_596_800_000_000;

/// DuckDB's memory ceiling unless the URL sets one (`?memory_limit=`): steps stay well
/// inside a small worker's memory whatever the data size; DuckDB spills what does not fit
/// to `<database>.tmp` next to the file.
pub const DEFAULT_MEMORY_LIMIT: &str = "256MB";

/// Settings carried by the URL's query: `duckdb:///path/w.duckdb?memory_limit=1GB&threads=4`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DuckDbSettings {
    pub memory_limit: String,
    pub threads: Option<u32>,
}

impl Default for DuckDbSettings {
    fn default() -> Self {
        DuckDbSettings {
            memory_limit: DEFAULT_MEMORY_LIMIT.to_string(),
            threads: None,
        }
    }
}

/// Splits `/path/w.duckdb?k=v&...` (what follows `duckdb://`) into the path and settings.
pub fn parse_location(location: &str) -> Result<(String, DuckDbSettings)> {
    let (path, query) = location.split_once('?').unwrap_or((location, ""));
    let mut settings = DuckDbSettings::default();
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
        match key {
            "memory_limit" => {
                let digits = value.trim_end_matches(|c: char| c.is_ascii_alphabetic());
                let unit = &value[digits.len()..];
                let unit_ok = ["KB", "MB", "GB", "TB", "KiB", "MiB", "GiB", "TiB"]
                    .iter()
                    .any(|u| u.eq_ignore_ascii_case(unit));
                if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || !unit_ok {
                    return Err(PipelineError::Config(format!(
                        "warehouse URL: memory_limit={value:?} is not a size like 512MB or 2GB"
                    )));
                }
                settings.memory_limit = value.to_string();
            }
            "threads" => {
                let threads = value.parse::<u32>().ok().filter(|t| *t > 0);
                settings.threads = Some(threads.ok_or_else(|| {
                    PipelineError::Config(format!(
                        "warehouse URL: threads={value:?} is not a positive number"
                    ))
                })?);
            }
            other => {
                return Err(PipelineError::Config(format!(
                    "warehouse URL: unknown setting {other:?} (memory_limit, threads)"
                )));
            }
        }
    }
    Ok((path.to_string(), settings))
}

impl DuckDbSettings {
    fn config(&self) -> duckdb::Result<duckdb::Config> {
        let config = duckdb::Config::default().max_memory(&self.memory_limit)?;
        match self.threads {
            Some(n) => config.threads(i64::from(n)),
            None => Ok(config),
        }
    }
}

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

    /// [`Warehouse::load_raw`]'s work, in one transaction.
    fn load_raw_rows(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        self.in_transaction("loading raw rows", |conn| {
            let mut outcome = RawLoadOutcome::default();
            let mut dates = BTreeSet::new();
            for file in files {
                let e = || db_err("replacing the rows of a file");
                {
                    let mut stmt = conn.prepare(sql::SELECT_FILE_DATES).map_err(e())?;
                    let old = stmt
                        .query_map(params![file.day.to_string(), file.uri], |r| {
                            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?))
                        })
                        .map_err(e())?;
                    for row in old {
                        let (d, n) = row.map_err(e())?;
                        let d = parse_date("raw event date", &d)?;
                        dates.insert(epoch_day_of_date(d));
                        outcome.rows_replaced += n as u64;
                    }
                }
                conn.execute(
                    sql::DELETE_FILE_ROWS,
                    params![file.day.to_string(), file.uri],
                )
                .map_err(e())?;
                conn.execute(
                    sql::DELETE_FILE_REJECTS,
                    params![file.day.to_string(), file.uri],
                )
                .map_err(e())?;
                let mut rows_loaded = 0u64;
                let mut rejects = Vec::new();
                {
                    // Flushed after every batch: DuckDB's appender otherwise collects
                    // a couple of hundred thousand rows in memory outside its memory_limit.
                    let mut appender = conn.appender("raw_events").map_err(e())?;
                    source.read(file, &mut |typed| {
                        rows_loaded += typed.rows.num_rows() as u64;
                        collect_dates(&mut dates, &typed.rows);
                        rejects.extend(typed.rejected);
                        appender
                            .append_record_batch(typed.rows)
                            .and_then(|()| appender.flush())
                            .map_err(|err| {
                                PipelineError::warehouse(
                                    format!("appending rows of {}", file.uri),
                                    err,
                                )
                            })
                    })?;
                    appender.flush().map_err(e())?;
                }
                if !rejects.is_empty() {
                    let mut appender = conn.appender("raw_rejects").map_err(e())?;
                    for r in &rejects {
                        appender
                            .append_row(params![
                                file.uri,
                                file.day.to_string(),
                                r.source_row,
                                r.reason,
                                r.request_id,
                                r.raw_timestamp,
                                duckdb::types::Value::Timestamp(
                                    duckdb::types::TimeUnit::Microsecond,
                                    loaded_at
                                )
                            ])
                            .map_err(e())?;
                    }
                    appender.flush().map_err(e())?;
                }
                conn.execute(sql::DELETE_LEDGER_ENTRY, params![file.uri])
                    .map_err(e())?;
                conn.execute(
                    sql::INSERT_LEDGER_ENTRY,
                    params![
                        file.uri,
                        file.day.to_string(),
                        file.size as i64,
                        file.generation,
                        file.checksum,
                        file.ingested_at,
                        loaded_at,
                        rows_loaded as i64,
                        rejects.len() as i64
                    ],
                )
                .map_err(e())?;
                outcome.rows_written += rows_loaded;
                outcome.rejected += rejects.len() as u64;
            }
            let mut stmt = conn
                .prepare(sql::INSERT_PENDING_DATE)
                .map_err(db_err("queueing dates for dedup"))?;
            for d in &dates {
                let date = date_of_epoch_day(*d);
                stmt.execute(params![date.to_string()])
                    .map_err(db_err("queueing dates for dedup"))?;
                outcome.affected_dates.push(date);
            }
            Ok(outcome)
        })
    }

    fn count(&self, query: &str, bind: &[&dyn duckdb::ToSql]) -> Result<u64> {
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
        batches: &mut BatchAssembler<'_>,
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
        batches: &mut BatchAssembler<'_>,
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
    fn stream_feed(
        &self,
        offset: Option<FeedOffset>,
        batches: &mut BatchAssembler<'_>,
    ) -> Result<()> {
        let (at, key) = match offset {
            Some(o) => (o.changed_at, o.event_key.to_vec()),
            None => (FEED_START_MICROS, Vec::new()),
        };
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
    fn stream_dates(&self, dates: &[NaiveDate], batches: &mut BatchAssembler<'_>) -> Result<()> {
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
fn select_dates(conn: &Connection, dates: &[NaiveDate]) -> Result<()> {
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

/// DuckDB's threads while another thread of the step does its own share of the work
/// (types rows for load_raw, sends batches for the export): one core fewer than the
/// machine has, unless the URL chose (`None`: leave the setting alone).
fn threads_beside_a_core(url_threads: Option<u32>, cores: usize) -> Option<u32> {
    match url_threads {
        Some(_) => None,
        None => u32::try_from(cores).ok().filter(|n| *n > 1).map(|n| n - 1),
    }
}

/// Leaves a core of the machine to another thread ([`threads_beside_a_core`]); true if
/// the setting was changed and is to be restored by [`restore_threads`].
fn leave_a_core(
    conn: &Connection,
    url_threads: Option<u32>,
    context: &'static str,
) -> Result<bool> {
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    match threads_beside_a_core(url_threads, cores) {
        Some(n) => {
            conn.execute_batch(&sql::set_threads(n))
                .map_err(db_err(context))?;
            Ok(true)
        }
        None => Ok(false),
    }
}

/// Gives DuckDB its default threads back after [`leave_a_core`]; the work's own error,
/// if it failed, is the one reported.
fn restore_threads<T>(conn: &Connection, left: bool, outcome: Result<T>) -> Result<T> {
    if !left {
        return outcome;
    }
    match conn.execute_batch(sql::RESET_THREADS) {
        Ok(()) => outcome,
        Err(e) if outcome.is_ok() => Err(PipelineError::warehouse("restoring DuckDB's threads", e)),
        Err(e) => {
            tracing::warn!(error = %e, "could not restore DuckDB's threads after a failure");
            outcome
        }
    }
}

/// Rows DuckDB sorts at once when reading changes; more are ordered through key buckets
/// of a quarter of this many rows each (they are sorted in the process's own memory,
/// outside DuckDB's limit).
const ROWS_PER_SORT: u64 = 100_000;

/// A selection of more than [`ROWS_PER_SORT`] rows is read in key slices of about this
/// many rows, at most [`MAX_KEY_SLICES`] of them: the first rows go out after one slice
/// has been read, not the whole selection, and each slice costs one more scan of it, so
/// a few slices pay and many cost more CPU than they save. [`key_slices`] cuts the first
/// in two, so the first batch leaves sooner.
const ROWS_PER_KEY_SLICE: u64 = 250_000;
const MAX_KEY_SLICES: u32 = 4;

/// Cuts query results into batches of exactly `batch_rows` rows (the last may be
/// shorter), across the queries that make up one selection.
struct BatchAssembler<'a> {
    batch_rows: usize,
    pending: Vec<RecordBatch>,
    pending_rows: usize,
    sink: &'a mut dyn FnMut(RecordBatch) -> Result<bool>,
}

impl<'a> BatchAssembler<'a> {
    fn new(batch_rows: usize, sink: &'a mut dyn FnMut(RecordBatch) -> Result<bool>) -> Self {
        BatchAssembler {
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

    fn push(&mut self, mut chunk: RecordBatch) -> Result<bool> {
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

    fn finish(&mut self) -> Result<()> {
        self.flush().map(|_| ())
    }
}

fn collect_dates(set: &mut BTreeSet<i32>, batch: &RecordBatch) {
    if let Ok(idx) = batch.schema().index_of("event_date") {
        let dates = batch.column(idx).as_primitive::<Date32Type>();
        let mut last = None;
        for d in dates.values().iter() {
            if last != Some(*d) {
                set.insert(*d);
                last = Some(*d);
            }
        }
    }
}

impl Warehouse for DuckDbWarehouse {
    fn url(&self) -> &str {
        &self.url
    }

    fn stage_files(&mut self, staged: &StagedFiles) -> Result<()> {
        let now = chrono::Utc::now().timestamp_micros();
        self.in_transaction("recording the staged files", |conn| {
            let e = db_err("recording the staged files");
            conn.execute_batch(sql::CLEAR_STAGED)
                .map_err(db_err("clearing the staged files"))?;
            conn.execute(
                sql::INSERT_STAGED_WINDOW,
                params![
                    staged.window.start.to_string(),
                    staged.window.end.to_string(),
                    now
                ],
            )
            .map_err(e)?;
            let mut stmt = conn
                .prepare(sql::INSERT_STAGED_FILE)
                .map_err(db_err("recording the staged files"))?;
            for f in &staged.files {
                stmt.execute(params![
                    f.uri,
                    f.day.to_string(),
                    f.size as i64,
                    f.generation,
                    f.checksum,
                    f.ingested_at
                ])
                .map_err(db_err("recording the staged files"))?;
            }
            Ok(())
        })
    }

    fn staged_files(&mut self) -> Result<Option<StagedFiles>> {
        let window: Option<(String, String)> =
            match self.conn.query_row(sql::SELECT_STAGED_WINDOW, [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            }) {
                Ok(w) => Some(w),
                Err(duckdb::Error::QueryReturnedNoRows) => None,
                Err(e) => return Err(PipelineError::warehouse("reading the staged window", e)),
            };
        let Some((start, end)) = window else {
            return Ok(None);
        };
        let window = DateWindow::new(
            parse_date("staged start", &start)?,
            parse_date("staged end", &end)?,
        )?;
        let mut stmt = self
            .conn
            .prepare(sql::SELECT_STAGED_FILES)
            .map_err(db_err("reading the staged files"))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, i64>(2)?,
                    r.get::<_, String>(3)?,
                    r.get::<_, String>(4)?,
                    r.get::<_, i64>(5)?,
                ))
            })
            .map_err(db_err("reading the staged files"))?;
        let mut files = Vec::new();
        for row in rows {
            let (uri, day, size, generation, checksum, ingested_at) =
                row.map_err(db_err("reading the staged files"))?;
            files.push(LakeFile {
                uri,
                day: parse_date("staged day", &day)?,
                size: size as u64,
                generation,
                checksum,
                ingested_at,
            });
        }
        Ok(Some(StagedFiles { window, files }))
    }

    fn ledger_entries(&mut self, uris: &[String]) -> Result<BTreeMap<String, RecordedVersion>> {
        let mut stmt = self
            .conn
            .prepare(sql::SELECT_LEDGER_ENTRY)
            .map_err(db_err("reading the file ledger"))?;
        let mut out = BTreeMap::new();
        for uri in uris {
            let mut rows = stmt
                .query_map(params![uri], |r| {
                    Ok(RecordedVersion {
                        size: r.get::<_, i64>(1)? as u64,
                        generation: r.get(2)?,
                        checksum: r.get(3)?,
                        // Unknown (never in practice): the file is read again.
                        loaded_at: r.get::<_, Option<i64>>(4)?.unwrap_or(0),
                        rows: r.get::<_, i64>(5)?.max(0) as u64,
                    })
                })
                .map_err(db_err("reading the file ledger"))?;
            if let Some(entry) = rows.next() {
                out.insert(
                    uri.clone(),
                    entry.map_err(db_err("reading the file ledger"))?,
                );
            }
        }
        Ok(out)
    }

    fn quarantine(
        &mut self,
        file: &LakeFile,
        kind: QuarantineKind,
        reason: &str,
        at: i64,
    ) -> Result<()> {
        self.in_transaction("quarantining a file", |conn| {
            let e = || db_err("quarantining a file");
            conn.execute(sql::DELETE_QUARANTINE_ENTRY, params![file.uri])
                .map_err(e())?;
            conn.execute(
                sql::INSERT_QUARANTINE_ENTRY,
                params![
                    file.uri,
                    file.day.to_string(),
                    file.size as i64,
                    file.generation,
                    file.checksum,
                    kind.name(),
                    reason,
                    at
                ],
            )
            .map_err(e())?;
            Ok(())
        })
    }

    fn quarantined(&mut self, uris: &[String]) -> Result<BTreeMap<String, QuarantinedFile>> {
        let e = || db_err("reading the file quarantine");
        let mut stmt = self
            .conn
            .prepare(sql::SELECT_QUARANTINE_ENTRY)
            .map_err(e())?;
        let mut out = BTreeMap::new();
        for uri in uris {
            let rows = stmt
                .query_map(params![uri], |r| {
                    Ok(QuarantinedFile {
                        uri: r.get(0)?,
                        size: r.get::<_, i64>(1)?.max(0) as u64,
                        checksum: r.get(2)?,
                        kind: QuarantineKind::parse(&r.get::<_, String>(3)?),
                        reason: r.get(4)?,
                        quarantined_at: r.get::<_, Option<i64>>(5)?.unwrap_or(0),
                    })
                })
                .map_err(e())?;
            for entry in rows {
                out.insert(uri.clone(), entry.map_err(e())?);
            }
        }
        Ok(out)
    }

    fn release_quarantine(&mut self, uris: &[String]) -> Result<()> {
        self.in_transaction("releasing quarantined files", |conn| {
            for uri in uris {
                conn.execute(sql::DELETE_QUARANTINE_ENTRY, params![uri])
                    .map_err(db_err("releasing quarantined files"))?;
            }
            Ok(())
        })
    }

    fn load_raw(
        &mut self,
        files: &[LakeFile],
        loaded_at: i64,
        source: &mut dyn RawSource,
    ) -> Result<RawLoadOutcome> {
        // The rows arrive decoded and typed by a thread of their own (steps::load), so
        // unless the URL chose, DuckDB gets one core fewer while it appends them: with
        // every core its workers contend with that thread for the CPU.
        let left = leave_a_core(
            &self.conn,
            self.threads,
            "leaving a core to the typing thread",
        )?;
        let loaded = self.load_raw_rows(files, loaded_at, source);
        restore_threads(&self.conn, left, loaded)
    }

    fn dedup(&mut self, now: i64) -> Result<DedupOutcome> {
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

    fn stream_changes(
        &mut self,
        selection: &ChangeSelection,
        batch_rows: usize,
        sink: &mut dyn FnMut(RecordBatch) -> Result<bool>,
    ) -> Result<()> {
        let mut batches = BatchAssembler::new(batch_rows, sink);
        match selection {
            ChangeSelection::After(offset) => self.stream_feed(*offset, &mut batches),
            ChangeSelection::Dates(dates) => self.stream_dates(dates, &mut batches),
        }
    }

    fn feed_length(&mut self, offset: Option<FeedOffset>) -> Result<Option<u64>> {
        let at = offset.map_or(FEED_START_MICROS, |o| o.changed_at);
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
    use super::*;

    /// (op, changed_at, key, request_id) of every change a selection streams.
    fn streamed(
        wh: &mut DuckDbWarehouse,
        selection: &ChangeSelection,
    ) -> Vec<(String, i64, Vec<u8>, Option<String>)> {
        let mut out = Vec::new();
        wh.stream_changes(selection, 700, &mut |b| {
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
                _: &mut dyn FnMut(crate::typed_batch::TypedBatch) -> Result<()>,
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
