//! SQL of the embedded DuckDB warehouse. Identifiers come from the contract (constants);
//! every value is a bound parameter.

use std::sync::LazyLock;

use ota_core::change::ChangeOp;
use ota_core::contract::{TYPED_COLUMNS, TypedKind};

fn duckdb_type(kind: TypedKind) -> &'static str {
    match kind {
        TypedKind::Key => "BLOB",
        TypedKind::Date => "DATE",
        TypedKind::Text => "VARCHAR",
        TypedKind::Integer => "BIGINT",
        TypedKind::Float => "DOUBLE",
        TypedKind::Boolean => "BOOLEAN",
        TypedKind::Decimal => "DECIMAL(18,6)",
        TypedKind::Timestamp => "TIMESTAMP",
    }
}

/// `"event_key" BLOB NOT NULL, ...` for the typed columns.
fn typed_column_ddl() -> String {
    ota_core::contract::typed_column_ddl("\"", duckdb_type)
}

/// `"event_key", "event_date", ...`
pub static TYPED_COLUMN_LIST: LazyLock<String> = LazyLock::new(|| {
    TYPED_COLUMNS
        .iter()
        .map(|c| format!("\"{}\"", c.name))
        .collect::<Vec<_>>()
        .join(", ")
});

/// Creates every table of the warehouse (idempotent).
pub static SCHEMA: LazyLock<String> = LazyLock::new(|| {
    let typed = typed_column_ddl();
    format!(
        "CREATE TABLE IF NOT EXISTS raw_events ({typed});
CREATE TABLE IF NOT EXISTS raw_rejects (
    source_file VARCHAR NOT NULL, source_day DATE, source_row BIGINT, reason VARCHAR,
    request_id VARCHAR, raw_timestamp VARCHAR, loaded_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS file_ledger (
    uri VARCHAR NOT NULL, source_day DATE, size BIGINT, generation VARCHAR, checksum VARCHAR,
    ingested_at TIMESTAMP, loaded_at TIMESTAMP, rows_loaded BIGINT, rows_rejected BIGINT);
CREATE TABLE IF NOT EXISTS file_quarantine (
    uri VARCHAR NOT NULL, source_day DATE, size BIGINT, generation VARCHAR, checksum VARCHAR,
    kind VARCHAR, reason VARCHAR, quarantined_at TIMESTAMP);
DROP TABLE IF EXISTS staged_window;
DROP TABLE IF EXISTS staged_files;
CREATE TABLE IF NOT EXISTS run_staged_windows (
    run_key VARCHAR NOT NULL, window_start DATE, window_end DATE, staged_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS run_staged_files (
    run_key VARCHAR NOT NULL, uri VARCHAR NOT NULL, source_day DATE, size BIGINT,
    generation VARCHAR, checksum VARCHAR, ingested_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS dedup_pending_dates (event_date DATE NOT NULL);
CREATE TABLE IF NOT EXISTS dedup_events ({typed}, changed_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS dedup_tombstones (event_key BLOB NOT NULL, event_date DATE NOT NULL, changed_at TIMESTAMP NOT NULL);
CREATE TABLE IF NOT EXISTS dedup_runs (
    changed_at TIMESTAMP NOT NULL, dates BIGINT, rows_changed BIGINT, rows_deleted BIGINT, finished_at TIMESTAMP);"
    )
});

/// `SET threads = n`: DuckDB's SET takes no parameters; `n` is a count the backend
/// computes, never input.
pub fn set_threads(n: u32) -> String {
    format!("SET threads = {n}")
}
pub const RESET_THREADS: &str = "RESET threads";

/// Forgets a run's staged set (parameter: its key), and the sets of other runs staged
/// before a cutoff (parameter: UTC microseconds; the hand-run set, key '', is kept).
pub const CLEAR_STAGED_SETS: &str = "DELETE FROM run_staged_windows WHERE run_key = ? \
OR (run_key <> '' AND staged_at < make_timestamp(?))";
/// Then the files of the sets no longer there.
pub const CLEAR_STAGED_FILES: &str =
    "DELETE FROM run_staged_files WHERE run_key NOT IN (SELECT run_key FROM run_staged_windows)";
pub const INSERT_STAGED_WINDOW: &str =
    "INSERT INTO run_staged_windows VALUES (?, ?::DATE, ?::DATE, make_timestamp(?))";
pub const INSERT_STAGED_FILE: &str =
    "INSERT INTO run_staged_files VALUES (?, ?, ?::DATE, ?, ?, ?, make_timestamp(?))";
pub const SELECT_STAGED_WINDOW: &str = "SELECT window_start::VARCHAR, window_end::VARCHAR FROM run_staged_windows WHERE run_key = ? LIMIT 1";
pub const SELECT_STAGED_FILES: &str = "SELECT uri, source_day::VARCHAR, size, generation, checksum, epoch_us(ingested_at) FROM run_staged_files WHERE run_key = ? ORDER BY source_day, uri";

pub const SELECT_LEDGER_ENTRY: &str = "SELECT uri, size, generation, checksum, epoch_us(loaded_at), \
     COALESCE(rows_loaded, 0) FROM file_ledger WHERE uri = ?";
pub const DELETE_QUARANTINE_ENTRY: &str = "DELETE FROM file_quarantine WHERE uri = ?";
pub const INSERT_QUARANTINE_ENTRY: &str =
    "INSERT INTO file_quarantine VALUES (?, ?::DATE, ?, ?, ?, ?, ?, make_timestamp(?))";
pub const SELECT_QUARANTINE_ENTRY: &str = "SELECT uri, size, checksum, kind, reason, \
     epoch_us(quarantined_at) FROM file_quarantine WHERE uri = ?";

pub const DELETE_LEDGER_ENTRY: &str = "DELETE FROM file_ledger WHERE uri = ?";
pub const INSERT_LEDGER_ENTRY: &str = "INSERT INTO file_ledger VALUES (?, ?::DATE, ?, ?, ?, make_timestamp(?), make_timestamp(?), ?, ?)";

// The rows of one file: `source_day` (the file's day, a zone-map-friendly DATE) first, so
// a load touches that day's row groups, not the whole history. Parameters: day, uri.
pub const SELECT_FILE_DATES: &str = "SELECT event_date::VARCHAR, count(*) FROM raw_events WHERE source_day = ?::DATE AND source_file = ? GROUP BY event_date";
pub const DELETE_FILE_ROWS: &str =
    "DELETE FROM raw_events WHERE source_day = ?::DATE AND source_file = ?";
pub const DELETE_FILE_REJECTS: &str =
    "DELETE FROM raw_rejects WHERE source_day = ?::DATE AND source_file = ?";
pub const INSERT_PENDING_DATE: &str = "INSERT INTO dedup_pending_dates VALUES (?::DATE)";

/// Dedup, step 1: the dates to rebuild and the winning row per key among their raw rows
/// (latest ingested_at, then latest source_file, then highest source_row). The ranking
/// carries only the key, the raw row's `rowid`, its hash and lineage — not the 30-odd
/// content columns — so it stays small enough to sort in memory; the full rows of the
/// changed winners are fetched by rowid when they are inserted (the whole dedup is one
/// transaction, and nothing else writes raw_events meanwhile).
pub const DEDUP_PREPARE: &str = "
CREATE OR REPLACE TEMP TABLE dedup_dates AS SELECT DISTINCT event_date FROM dedup_pending_dates;
CREATE OR REPLACE TEMP TABLE dedup_winners AS
SELECT * EXCLUDE (rn) FROM (
    SELECT r.rowid AS raw_rowid, r.event_key, r.event_date, r.row_hash, r.source_day,
        r.source_file, r.source_row, r.ingested_at, r.loaded_at,
        row_number() OVER (
            PARTITION BY r.event_key
            ORDER BY r.ingested_at DESC, r.source_file DESC, r.source_row DESC) AS rn
    FROM raw_events r
    WHERE r.event_date IN (SELECT event_date FROM dedup_dates)
) WHERE rn = 1;
CREATE OR REPLACE TEMP TABLE dedup_changed AS
SELECT w.raw_rowid, w.event_key FROM dedup_winners w
LEFT JOIN (SELECT event_key, row_hash FROM dedup_events
           WHERE event_date IN (SELECT event_date FROM dedup_dates)) d
    ON d.event_key = w.event_key
WHERE d.event_key IS NULL OR d.row_hash <> w.row_hash;
CREATE OR REPLACE TEMP TABLE dedup_vanished AS
SELECT d.event_key, d.event_date FROM dedup_events d
WHERE d.event_date IN (SELECT event_date FROM dedup_dates)
  AND d.event_key NOT IN (SELECT event_key FROM dedup_winners);";

pub const DEDUP_COUNTS: &str = "SELECT
    (SELECT count(*) FROM raw_events WHERE event_date IN (SELECT event_date FROM dedup_dates)),
    (SELECT count(*) FROM dedup_winners),
    (SELECT count(*) FROM dedup_changed),
    (SELECT count(*) FROM dedup_vanished)";

pub const DEDUP_DATES: &str = "SELECT event_date::VARCHAR FROM dedup_dates ORDER BY 1";

pub const LAST_CHANGED_AT: &str = "SELECT max(changed_at_us) FROM (
    SELECT max(epoch_us(changed_at)) AS changed_at_us FROM dedup_runs
    UNION ALL SELECT max(epoch_us(changed_at)) FROM dedup_events
    UNION ALL SELECT max(epoch_us(changed_at)) FROM dedup_tombstones)";

/// Dedup, step 2: replace changed rows, delete vanished ones (parameter: changed_at µs).
pub const DEDUP_APPLY_DELETE: &str = "
DELETE FROM dedup_events
WHERE event_date IN (SELECT event_date FROM dedup_dates)
  AND (event_key IN (SELECT event_key FROM dedup_changed)
       OR event_key IN (SELECT event_key FROM dedup_vanished))";
pub static DEDUP_APPLY_INSERT: LazyLock<String> = LazyLock::new(|| {
    format!(
        "INSERT INTO dedup_events ({cols}, changed_at) SELECT {cols}, make_timestamp(?) FROM raw_events
WHERE event_date IN (SELECT event_date FROM dedup_dates)
  AND rowid IN (SELECT raw_rowid FROM dedup_changed)",
        cols = *TYPED_COLUMN_LIST
    )
});
/// Same content, another winning source (a re-delivered file): the lineage follows the
/// winner so the dedup table stays a pure function of the raw rows, but `changed_at`
/// stays, since nothing MySQL serves changed.
pub const DEDUP_UPDATE_LINEAGE: &str = "
UPDATE dedup_events AS d
SET source_day = w.source_day, source_file = w.source_file, source_row = w.source_row,
    ingested_at = w.ingested_at, loaded_at = w.loaded_at
FROM dedup_winners AS w
WHERE d.event_key = w.event_key
  AND d.event_date IN (SELECT event_date FROM dedup_dates)
  AND d.row_hash = w.row_hash
  AND (d.source_file <> w.source_file OR d.source_row <> w.source_row OR d.ingested_at <> w.ingested_at)";
pub const DEDUP_DELETE_TOMBSTONES: &str = "
DELETE FROM dedup_tombstones
WHERE event_key IN (SELECT event_key FROM dedup_changed)
   OR event_key IN (SELECT event_key FROM dedup_vanished)";
pub const DEDUP_INSERT_TOMBSTONES: &str = "INSERT INTO dedup_tombstones SELECT event_key, event_date, make_timestamp(?) FROM dedup_vanished";
pub const DEDUP_CLEAR_PENDING: &str =
    "DELETE FROM dedup_pending_dates WHERE event_date IN (SELECT event_date FROM dedup_dates)";
pub const DEDUP_RECORD_RUN: &str = "INSERT INTO dedup_runs VALUES (make_timestamp(?),
    (SELECT count(*) FROM dedup_dates), (SELECT count(*) FROM dedup_changed),
    (SELECT count(*) FROM dedup_vanished), now()::TIMESTAMP)";

/// The change feed is read one `changed_at` value (one dedup run) at a time, in key order.
/// A small run DuckDB sorts itself; a large one is read in a few key-range slices, each
/// unordered, and put in key order outside DuckDB in bounded memory
/// (`warehouse::key_order`): DuckDB cannot sort millions of wide rows within a small
/// memory limit, and each slice scans the run's keys once more.
///
/// The runs at or after the offset's changed_at and their row counts. Parameter:
/// changed_at µs.
pub const FEED_RUNS: &str = "SELECT changed_at_us, count(*)::BIGINT FROM (
    SELECT epoch_us(changed_at) AS changed_at_us FROM dedup_events WHERE changed_at >= make_timestamp($1)
    UNION ALL
    SELECT epoch_us(changed_at) FROM dedup_tombstones WHERE changed_at >= make_timestamp($1)
) GROUP BY 1 ORDER BY 1";

/// Changes at or after a changed_at (µs): the feed's length from an offset, counting
/// the offset's own run whole.
pub const FEED_LENGTH: &str = "SELECT (SELECT count(*) FROM dedup_events WHERE changed_at >= make_timestamp($1)) \
    + (SELECT count(*) FROM dedup_tombstones WHERE changed_at >= make_timestamp($1))";

/// Keys of one slice: `$3 <= event_key < $4` (feed) or `$1 <= event_key < $2` (dates).
const RUN_SLICE: &str = " AND event_key >= $3 AND event_key < $4";
const DATES_SLICE: &str = " AND event_key >= $1 AND event_key < $2";

/// One run's changes after a key: current rows as upserts, tombstones as deletes.
/// Parameters: changed_at µs, the offset key (exclusive; empty for none), and with a
/// `slice` condition its bounds.
fn changes_of_run(slice: &str, order: &str) -> String {
    let nulls: Vec<String> = TYPED_COLUMNS
        .iter()
        .map(|c| match c.name {
            "event_key" | "event_date" => format!("\"{}\"", c.name),
            _ => format!("NULL::{} AS \"{}\"", duckdb_type(c.kind), c.name),
        })
        .collect();
    let run = format!("changed_at = make_timestamp($1) AND event_key > $2{slice}");
    format!(
        "SELECT * FROM (
    SELECT '{upsert}' AS op, changed_at, {cols} FROM dedup_events WHERE {run}
    UNION ALL
    SELECT '{delete}' AS op, changed_at, {nulls} FROM dedup_tombstones WHERE {run}
){order}",
        cols = *TYPED_COLUMN_LIST,
        nulls = nulls.join(", "),
        upsert = ChangeOp::Upsert.code(),
        delete = ChangeOp::Delete.code(),
    )
}

/// [`changes_of_run`] sorted by key.
pub static CHANGES_OF_RUN: LazyLock<String> =
    LazyLock::new(|| changes_of_run("", " ORDER BY event_key"));
/// One key slice of [`changes_of_run`], in storage order.
pub static CHANGES_OF_RUN_SLICE: LazyLock<String> = LazyLock::new(|| changes_of_run(RUN_SLICE, ""));

pub const CREATE_SELECTED_DATES: &str =
    "CREATE OR REPLACE TEMP TABLE selected_dates (event_date DATE NOT NULL)";
pub const INSERT_SELECTED_DATE: &str = "INSERT INTO selected_dates VALUES (?::DATE)";

pub const COUNT_ROWS_OF_DATES: &str = "SELECT count(*)::BIGINT FROM dedup_events
WHERE event_date IN (SELECT event_date FROM selected_dates)";

/// The current rows of the selected dates (re-sync); with a `slice` condition, its
/// bounds are the parameters.
fn rows_of_dates(slice: &str, order: &str) -> String {
    format!(
        "SELECT '{upsert}' AS op, changed_at, {cols} FROM dedup_events
WHERE event_date IN (SELECT event_date FROM selected_dates){slice}{order}",
        cols = *TYPED_COLUMN_LIST,
        upsert = ChangeOp::Upsert.code(),
    )
}

/// [`rows_of_dates`] sorted by key.
pub static ROWS_OF_DATES: LazyLock<String> =
    LazyLock::new(|| rows_of_dates("", "\nORDER BY event_key"));
/// One key slice of [`rows_of_dates`], in storage order.
pub static ROWS_OF_DATES_SLICE: LazyLock<String> = LazyLock::new(|| rows_of_dates(DATES_SLICE, ""));

pub const HASHES_OF_DATES: &str = "SELECT event_date, row_hash FROM dedup_events
WHERE event_date IN (SELECT event_date FROM selected_dates)";
pub const HASHES_OF_ALL_DATES: &str = "SELECT event_date, row_hash FROM dedup_events";

/// When the change feed began: the first dedup run's `changed_at` (NULL before any).
pub const FEED_ORIGIN: &str = "SELECT epoch_us(min(changed_at)) FROM dedup_runs";

/// The event dates with changes after a feed position: `$1` changed_at µs, `$2` the key
/// (exclusive; empty for none).
pub const DATES_CHANGED_AFTER: &str = "SELECT DISTINCT event_date::VARCHAR FROM (
    SELECT event_date FROM dedup_events
    WHERE changed_at > make_timestamp($1) OR (changed_at = make_timestamp($1) AND event_key > $2)
    UNION ALL
    SELECT event_date FROM dedup_tombstones
    WHERE changed_at > make_timestamp($1) OR (changed_at = make_timestamp($1) AND event_key > $2))
ORDER BY 1";
