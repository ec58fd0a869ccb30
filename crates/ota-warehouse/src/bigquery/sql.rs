//! SQL of the BigQuery warehouse (GoogleSQL).
//!
//! Table names are written `{table}` in the templates and rendered to fully qualified,
//! validated identifiers (`project.dataset.table`); every value from input is a bound
//! `@parameter`. Scripts (several statements) take no parameters: their inputs are the
//! run's work tables, loaded from Parquet, so the same text runs on every BigQuery.

use std::sync::LazyLock;

use ota_core::change::ChangeOp;
use ota_core::contract::{TYPED_COLUMNS, TypedKind};

pub fn bigquery_type(kind: TypedKind) -> &'static str {
    match kind {
        TypedKind::Key => "BYTES",
        TypedKind::Date => "DATE",
        TypedKind::Text => "STRING",
        TypedKind::Integer => "INT64",
        TypedKind::Float => "FLOAT64",
        TypedKind::Boolean => "BOOL",
        TypedKind::Decimal => "NUMERIC",
        TypedKind::Timestamp => "TIMESTAMP",
    }
}

/// The lineage columns: where the winning raw row came from.
pub const LINEAGE_COLUMNS: [&str; 5] = [
    "source_day",
    "source_file",
    "source_row",
    "ingested_at",
    "loaded_at",
];

/// `event_key BYTES NOT NULL, ...`
pub static TYPED_COLUMN_DDL: LazyLock<String> =
    LazyLock::new(|| ota_core::contract::typed_column_ddl("", bigquery_type));

/// `event_key, event_date, ...`
pub static TYPED_COLUMN_LIST: LazyLock<String> = LazyLock::new(|| {
    TYPED_COLUMNS
        .iter()
        .map(|c| c.name)
        .collect::<Vec<_>>()
        .join(", ")
});

/// The typed columns as the change feed selects them (timestamps as INT64 microseconds).
fn feed_columns(prefix: &str) -> String {
    TYPED_COLUMNS
        .iter()
        .map(|c| match c.kind {
            TypedKind::Timestamp => format!("UNIX_MICROS({prefix}{0}) AS {0}", c.name),
            _ => format!("{prefix}{}", c.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// A tombstone's columns in the feed: key and date, NULL for the rest.
fn tombstone_columns() -> String {
    TYPED_COLUMNS
        .iter()
        .map(|c| match (c.name, c.kind) {
            ("event_key" | "event_date", _) => c.name.to_string(),
            (_, TypedKind::Timestamp) => format!("CAST(NULL AS INT64) AS {}", c.name),
            (_, kind) => format!("CAST(NULL AS {}) AS {}", bigquery_type(kind), c.name),
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// The tables of the warehouse (created if missing when a step opens it for writing).
pub static SCHEMA: LazyLock<String> = LazyLock::new(|| {
    let typed = &*TYPED_COLUMN_DDL;
    format!(
        "CREATE TABLE IF NOT EXISTS {{raw_events}} ({typed})
  PARTITION BY source_day CLUSTER BY event_date, event_key;
CREATE TABLE IF NOT EXISTS {{raw_rejects}} (
  source_file STRING NOT NULL, source_day DATE, source_row INT64, reason STRING,
  request_id STRING, raw_timestamp STRING, loaded_at TIMESTAMP)
  PARTITION BY source_day;
CREATE TABLE IF NOT EXISTS {{raw_file_dates}} (
  source_file STRING NOT NULL, source_day DATE, event_date DATE, row_count INT64);
CREATE TABLE IF NOT EXISTS {{file_ledger}} (
  uri STRING NOT NULL, source_day DATE, size INT64, generation STRING, checksum STRING,
  ingested_at TIMESTAMP, loaded_at TIMESTAMP, rows_loaded INT64, rows_rejected INT64);
CREATE TABLE IF NOT EXISTS {{writer_lease}} (
  holder STRING NOT NULL, step STRING, acquired_at TIMESTAMP, expires_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {{file_quarantine}} (
  uri STRING NOT NULL, source_day DATE, size INT64, generation STRING, checksum STRING,
  kind STRING, reason STRING, quarantined_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {{run_staged_windows}} (
  run_key STRING NOT NULL, staged_at INT64 NOT NULL, window_start DATE, window_end DATE);
CREATE TABLE IF NOT EXISTS {{run_staged_files}} (
  run_key STRING NOT NULL, staged_at INT64 NOT NULL, uri STRING NOT NULL, source_day DATE,
  size INT64, generation STRING, checksum STRING, ingested_at INT64);
CREATE TABLE IF NOT EXISTS {{dedup_pending_dates}} (event_date DATE NOT NULL, queued_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {{dedup_events}} ({typed}, changed_at TIMESTAMP NOT NULL)
  PARTITION BY event_date CLUSTER BY event_key;
CREATE TABLE IF NOT EXISTS {{dedup_tombstones}} (
  event_key BYTES NOT NULL, event_date DATE NOT NULL, changed_at TIMESTAMP NOT NULL)
  PARTITION BY event_date CLUSTER BY event_key;
CREATE TABLE IF NOT EXISTS {{dedup_runs}} (
  changed_at TIMESTAMP NOT NULL, dates INT64, rows_read INT64, duplicates_removed INT64,
  rows_changed INT64, rows_deleted INT64, finished_at TIMESTAMP);
CREATE TABLE IF NOT EXISTS {{dedup_run_dates}} (changed_at TIMESTAMP NOT NULL, event_date DATE NOT NULL);"
    )
});

/// The run's work tables for load-raw, emptied (re-)created before the Parquet loads.
pub static CREATE_LOAD_WORK: LazyLock<String> = LazyLock::new(|| {
    format!(
        "CREATE OR REPLACE TABLE {{work_rows}} ({typed});
CREATE OR REPLACE TABLE {{work_rejects}} (
  source_file STRING NOT NULL, source_day DATE, source_row INT64, reason STRING,
  request_id STRING, raw_timestamp STRING, loaded_at TIMESTAMP);
CREATE OR REPLACE TABLE {{work_files}} (
  uri STRING NOT NULL, source_day DATE, size INT64, generation STRING, checksum STRING,
  ingested_at TIMESTAMP, loaded_at TIMESTAMP, rows_loaded INT64, rows_rejected INT64);",
        typed = *TYPED_COLUMN_DDL
    )
});

/// Raw rows and event dates the files held before this load (parameter: @files).
pub const OLD_FILE_DATES: &str = "SELECT CAST(event_date AS STRING), SUM(row_count)
FROM {raw_file_dates} WHERE source_file IN UNNEST(@files) GROUP BY event_date";

/// load-raw: replace the rows of the run's files with the work tables' rows, in one
/// transaction, then drop the work tables. Deletes carry the source_day partition filter.
/// The transaction fails unless the run still holds the writer lease.
pub static REPLACE_FILE_ROWS: LazyLock<String> = LazyLock::new(|| {
    format!(
        "DECLARE files ARRAY<STRING> DEFAULT (SELECT ARRAY_AGG(uri) FROM {{work_files}});
DECLARE file_days ARRAY<DATE> DEFAULT (SELECT ARRAY_AGG(DISTINCT source_day) FROM {{work_files}});
BEGIN TRANSACTION;
{lease_check}
INSERT INTO {{dedup_pending_dates}} (event_date, queued_at)
  SELECT DISTINCT event_date, CURRENT_TIMESTAMP() FROM {{raw_file_dates}} WHERE source_file IN UNNEST(files);
INSERT INTO {{dedup_pending_dates}} (event_date, queued_at)
  SELECT DISTINCT event_date, CURRENT_TIMESTAMP() FROM {{work_rows}};
DELETE FROM {{raw_events}} WHERE source_day IN UNNEST(file_days) AND source_file IN UNNEST(files);
DELETE FROM {{raw_rejects}} WHERE source_day IN UNNEST(file_days) AND source_file IN UNNEST(files);
INSERT INTO {{raw_events}} ({cols}) SELECT {cols} FROM {{work_rows}};
INSERT INTO {{raw_rejects}} SELECT * FROM {{work_rejects}};
DELETE FROM {{raw_file_dates}} WHERE source_file IN UNNEST(files);
INSERT INTO {{raw_file_dates}} (source_file, source_day, event_date, row_count)
  SELECT source_file, source_day, event_date, COUNT(*) FROM {{work_rows}}
  GROUP BY source_file, source_day, event_date;
DELETE FROM {{file_ledger}} WHERE uri IN UNNEST(files);
INSERT INTO {{file_ledger}} SELECT * FROM {{work_files}};
COMMIT TRANSACTION;
DROP TABLE {{work_rows}};
DROP TABLE {{work_rejects}};
DROP TABLE {{work_files}};",
        cols = *TYPED_COLUMN_LIST,
        lease_check = LEASE_CHECK,
    )
});

/// The queued dates and when each was last queued: a dedup of the same queue state is
/// the same job (a retry re-attaches), a later load makes it a new one.
pub const PENDING_DATES: &str =
    "SELECT CAST(event_date AS STRING), UNIX_MICROS(MAX(queued_at)) FROM {dedup_pending_dates}
GROUP BY event_date ORDER BY 1";

/// dedup: rebuild the pending event dates. Raw rows are read through both partition
/// filters (the source days that hold those dates, from raw_file_dates, and the dates);
/// the MERGE is scoped to the dates' range on the target and exactly to the dates for
/// deletes. `changed_at` is strictly after every earlier run's. The last statement
/// reports the run. Fails unless the run still holds the writer lease. Only the queue
/// entries it read (queued up to `queued_upto`) are taken off the queue: a date a load
/// queued again after that stays queued for the next run, whatever this one saw of its
/// rows.
pub static DEDUP: LazyLock<String> = LazyLock::new(|| {
    let content_updates: Vec<String> = TYPED_COLUMNS
        .iter()
        .filter(|c| c.name != "event_key")
        .map(|c| format!("{0} = w.{0}", c.name))
        .collect();
    let lineage_updates: Vec<String> = LINEAGE_COLUMNS
        .iter()
        .map(|c| format!("{c} = w.{c}"))
        .collect();
    let insert_values: Vec<String> = TYPED_COLUMNS
        .iter()
        .map(|c| format!("w.{}", c.name))
        .collect();
    format!(
        "DECLARE queued_upto TIMESTAMP DEFAULT (SELECT MAX(queued_at) FROM {{dedup_pending_dates}});
DECLARE dates ARRAY<DATE> DEFAULT (SELECT ARRAY_AGG(DISTINCT event_date) FROM {{dedup_pending_dates}}
  WHERE queued_at <= queued_upto);
DECLARE lo DATE DEFAULT (SELECT MIN(d) FROM UNNEST(dates) AS d);
DECLARE hi DATE DEFAULT (SELECT MAX(d) FROM UNNEST(dates) AS d);
DECLARE source_days ARRAY<DATE> DEFAULT (
  SELECT ARRAY_AGG(DISTINCT source_day) FROM {{raw_file_dates}} WHERE event_date IN UNNEST(dates));
DECLARE run_changed_at TIMESTAMP DEFAULT (
  SELECT GREATEST(CURRENT_TIMESTAMP(),
    TIMESTAMP_ADD(IFNULL(MAX(changed_at), TIMESTAMP '1970-01-01 00:00:00+00'), INTERVAL 1 MICROSECOND))
  FROM {{dedup_runs}});
DECLARE rows_read INT64 DEFAULT 0;
DECLARE winners INT64 DEFAULT 0;
DECLARE changed INT64 DEFAULT 0;
DECLARE vanished INT64 DEFAULT 0;
CREATE OR REPLACE TABLE {{work_winners}} AS
  SELECT * FROM {{raw_events}}
  WHERE source_day IN UNNEST(source_days) AND event_date IN UNNEST(dates)
  QUALIFY ROW_NUMBER() OVER (
    PARTITION BY event_key ORDER BY ingested_at DESC, source_file DESC, source_row DESC) = 1;
SET rows_read = (SELECT COUNT(*) FROM {{raw_events}}
  WHERE source_day IN UNNEST(source_days) AND event_date IN UNNEST(dates));
SET winners = (SELECT COUNT(*) FROM {{work_winners}});
SET changed = (SELECT COUNT(*) FROM {{work_winners}} AS w
  LEFT JOIN (SELECT event_key, row_hash FROM {{dedup_events}}
             WHERE event_date BETWEEN lo AND hi AND event_date IN UNNEST(dates)) AS d
  ON d.event_key = w.event_key
  WHERE d.event_key IS NULL OR d.row_hash != w.row_hash);
SET vanished = (SELECT COUNT(*) FROM {{dedup_events}}
  WHERE event_date BETWEEN lo AND hi AND event_date IN UNNEST(dates)
    AND event_key NOT IN (SELECT event_key FROM {{work_winners}}));
BEGIN TRANSACTION;
{lease_check}
DELETE FROM {{dedup_tombstones}}
  WHERE event_date BETWEEN lo AND hi AND event_date IN UNNEST(dates)
    AND event_key IN (SELECT event_key FROM {{work_winners}});
INSERT INTO {{dedup_tombstones}} (event_key, event_date, changed_at)
  SELECT event_key, event_date, run_changed_at FROM {{dedup_events}}
  WHERE event_date BETWEEN lo AND hi AND event_date IN UNNEST(dates)
    AND event_key NOT IN (SELECT event_key FROM {{work_winners}});
MERGE {{dedup_events}} AS d USING {{work_winners}} AS w
  ON d.event_key = w.event_key AND d.event_date BETWEEN lo AND hi
WHEN MATCHED AND d.row_hash != w.row_hash THEN
  UPDATE SET {content}, changed_at = run_changed_at
WHEN MATCHED AND (d.source_file != w.source_file OR d.source_row != w.source_row
                  OR d.ingested_at != w.ingested_at) THEN
  UPDATE SET {lineage}
WHEN NOT MATCHED BY TARGET THEN
  INSERT ({cols}, changed_at) VALUES ({values}, run_changed_at)
WHEN NOT MATCHED BY SOURCE AND d.event_date BETWEEN lo AND hi AND d.event_date IN UNNEST(dates) THEN
  DELETE;
DELETE FROM {{dedup_pending_dates}} WHERE event_date IN UNNEST(dates) AND queued_at <= queued_upto;
INSERT INTO {{dedup_runs}} (changed_at, dates, rows_read, duplicates_removed, rows_changed, rows_deleted, finished_at)
  VALUES (run_changed_at, ARRAY_LENGTH(dates), rows_read, rows_read - winners, changed, vanished, CURRENT_TIMESTAMP());
INSERT INTO {{dedup_run_dates}} (changed_at, event_date) SELECT run_changed_at, d FROM UNNEST(dates) AS d;
COMMIT TRANSACTION;
DROP TABLE {{work_winners}};
SELECT UNIX_MICROS(run_changed_at), rows_read, winners, changed, vanished;",
        content = content_updates.join(", "),
        lineage = lineage_updates.join(", "),
        cols = *TYPED_COLUMN_LIST,
        values = insert_values.join(", "),
        lease_check = LEASE_CHECK,
    )
});

/// The event dates that changed at or after a point of the feed (the partition filter
/// of the change query), each with the latest run that changed it: the feed is read up
/// to the latest of those, so a dedup committing between this read and the change query
/// is left whole for the next export. Parameter: @at (µs).
pub const FEED_DATES: &str = "SELECT CAST(event_date AS STRING), UNIX_MICROS(MAX(changed_at))
FROM {dedup_run_dates} WHERE UNIX_MICROS(changed_at) >= @at GROUP BY event_date";

/// The change feed after `(changed_at, event_key)` up to @upto within @dates: rows as
/// upserts, tombstones as deletes, in offset order. Parameters: @dates, @at and @upto
/// (µs), @key_hex.
pub static CHANGES_AFTER: LazyLock<String> = LazyLock::new(|| {
    // Compared as an integer and as lowercase hex (which orders like the bytes): exact on
    // every engine, where TIMESTAMP and BYTES parameters are not.
    let after = "(UNIX_MICROS(changed_at) > @at OR (UNIX_MICROS(changed_at) = @at AND TO_HEX(event_key) > @key_hex)) \
AND UNIX_MICROS(changed_at) <= @upto";
    format!(
        "SELECT '{upsert}' AS op, UNIX_MICROS(changed_at) AS changed_at, {cols} FROM {{dedup_events}}
WHERE event_date IN UNNEST(@dates) AND {after}
UNION ALL
SELECT '{delete}' AS op, UNIX_MICROS(changed_at) AS changed_at, {nulls} FROM {{dedup_tombstones}}
WHERE event_date IN UNNEST(@dates) AND {after}
ORDER BY changed_at, event_key",
        cols = feed_columns(""),
        nulls = tombstone_columns(),
        upsert = ChangeOp::Upsert.code(),
        delete = ChangeOp::Delete.code(),
    )
});

/// Every current row of @dates, in key order (re-sync).
pub static ROWS_OF_DATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT '{upsert}' AS op, UNIX_MICROS(changed_at) AS changed_at, {cols} FROM {{dedup_events}}
WHERE event_date IN UNNEST(@dates) ORDER BY event_key",
        cols = feed_columns(""),
        upsert = ChangeOp::Upsert.code(),
    )
});

/// Per date: rows and the two 32-bit halves of the sum of the first 8 bytes of row_hash
/// (big-endian), which MySQL computes the same way.
const CHECKSUM_COLUMNS: &str = "CAST(event_date AS STRING), COUNT(*),
  SUM(CAST(CONCAT('0x', SUBSTR(TO_HEX(row_hash), 1, 8)) AS INT64)),
  SUM(CAST(CONCAT('0x', SUBSTR(TO_HEX(row_hash), 9, 8)) AS INT64))";

pub static CHECKSUMS_OF_DATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CHECKSUM_COLUMNS} FROM {{dedup_events}} WHERE event_date IN UNNEST(@dates) GROUP BY event_date"
    )
});
pub static CHECKSUMS_OF_ALL_DATES: LazyLock<String> = LazyLock::new(|| {
    format!(
        "SELECT {CHECKSUM_COLUMNS} FROM {{dedup_events}} WHERE event_date IS NOT NULL GROUP BY event_date"
    )
});

/// A run's staged set (`@run_key`): its newest set row makes the files with its
/// `staged_at` visible.
pub const LATEST_STAGED_RUN: &str =
    "SELECT staged_at, CAST(window_start AS STRING), CAST(window_end AS STRING)
FROM {run_staged_windows} WHERE run_key = @run_key ORDER BY staged_at DESC LIMIT 1";
pub const STAGED_FILES_OF_RUN: &str =
    "SELECT uri, CAST(source_day AS STRING), size, generation, checksum, ingested_at
FROM {run_staged_files} WHERE run_key = @run_key AND staged_at = @staged_at ORDER BY source_day, uri";
pub const INSERT_STAGED_RUN: &str =
    "INSERT INTO {run_staged_windows} (run_key, staged_at, window_start, window_end)
VALUES (@run_key, @staged_at, CAST(@window_start AS DATE), CAST(@window_end AS DATE))";
/// One VALUES tuple per file; the parameters are numbered (`@uri_0`, ...).
pub const INSERT_STAGED_FILES_HEAD: &str = "INSERT INTO {run_staged_files} (run_key, staged_at, uri, source_day, size, generation, checksum, ingested_at) VALUES ";
pub const STAGED_FILE_TUPLE: &str = "(@run_key, @staged_at, @uri_{i}, CAST(@day_{i} AS DATE), @size_{i}, @generation_{i}, @checksum_{i}, @ingested_at_{i})";
/// The run's earlier sets, and other runs' sets past their retention (`@expired`; the
/// hand-run set, key '', is kept).
pub const DELETE_OLD_STAGED_RUNS: &str = "DELETE FROM {run_staged_windows} \
WHERE (run_key = @run_key AND staged_at < @staged_at) OR (run_key <> '' AND staged_at < @expired)";
pub const DELETE_OLD_STAGED_FILES: &str = "DELETE FROM {run_staged_files} \
WHERE (run_key = @run_key AND staged_at < @staged_at) OR (run_key <> '' AND staged_at < @expired)";

/// The external table over exactly the staged URIs: BigQuery renders the bound URI list
/// as a literal itself (`%T`), so no URI is ever spliced into SQL text.
pub const CREATE_STAGED_EXTERNAL: &str =
    "EXECUTE IMMEDIATE FORMAT(\"\"\"CREATE OR REPLACE EXTERNAL TABLE {staged_external}
OPTIONS (format = 'PARQUET', uris = %T)\"\"\", @uris)";

pub const LEDGER_ENTRIES: &str = "SELECT uri, size, generation, checksum, UNIX_MICROS(loaded_at), \
COALESCE(rows_loaded, 0) FROM {file_ledger} WHERE uri IN UNNEST(@uris)";

pub const DELETE_QUARANTINE: &str = "DELETE FROM {file_quarantine} WHERE uri IN UNNEST(@uris)";
pub const INSERT_QUARANTINE: &str = "INSERT INTO {file_quarantine} \
(uri, source_day, size, generation, checksum, kind, reason, quarantined_at) \
VALUES (@uri, CAST(@day AS DATE), @size, @generation, @checksum, @kind, @reason, TIMESTAMP_MICROS(@at))";
pub const QUARANTINE_ENTRIES: &str = "SELECT uri, size, checksum, kind, reason, \
UNIX_MICROS(quarantined_at) FROM {file_quarantine} WHERE uri IN UNNEST(@uris)";

/// First statement of every writing transaction: fails it (and so rolls it back) unless
/// the run's holder (in its lease token table) still holds the writer lease.
pub const LEASE_CHECK: &str = "SELECT ERROR(CONCAT('this run (', t.holder, ') no longer holds the writer lease of the dataset; nothing was written')) \
FROM {lease_token} AS t WHERE NOT EXISTS \
(SELECT 1 FROM {writer_lease} AS l WHERE l.holder = t.holder AND l.expires_at > CURRENT_TIMESTAMP());";

/// The run's lease token: a one-row table naming who asks for the writer lease, so the
/// scripts below read the holder from a table, not a parameter. Parameters: @holder,
/// @step, @expires_at (µs).
pub const WRITE_LEASE_TOKEN: &str = "CREATE OR REPLACE TABLE {lease_token} \
OPTIONS (expiration_timestamp = TIMESTAMP_ADD(CURRENT_TIMESTAMP(), INTERVAL 5 HOUR)) \
AS SELECT @holder AS holder, @step AS step, TIMESTAMP_MICROS(@expires_at) AS expires_at";

/// The dataset's writer lease: one writing step (stage-files, load-raw, dedup) at a time.
/// Taken when the token's holder holds it already or no other holder's lease is running;
/// the last statement says who holds it now. Two takers racing both write the table in a
/// transaction, and BigQuery aborts one of them.
pub const TAKE_LEASE: &str = "BEGIN TRANSACTION;
DELETE FROM {writer_lease}
  WHERE expires_at <= CURRENT_TIMESTAMP() OR holder IN (SELECT holder FROM {lease_token});
INSERT INTO {writer_lease} (holder, step, acquired_at, expires_at)
  SELECT holder, step, CURRENT_TIMESTAMP(), expires_at FROM {lease_token}
  WHERE NOT EXISTS (SELECT 1 FROM {writer_lease});
COMMIT TRANSACTION;
SELECT holder, step, UNIX_MICROS(expires_at) FROM {writer_lease} ORDER BY expires_at DESC LIMIT 1";

pub const RELEASE_LEASE: &str = "DELETE FROM {writer_lease} WHERE holder = @holder";
pub const DROP_LEASE_TOKEN: &str = "DROP TABLE IF EXISTS {lease_token}";

/// When the change feed began: the first dedup run's `changed_at` (NULL before any).
pub const FEED_ORIGIN: &str = "SELECT UNIX_MICROS(MIN(changed_at)) FROM {dedup_runs}";

/// The event dates of the dedup runs after @at (µs): what an export has yet to apply.
pub const DATES_CHANGED_AFTER: &str = "SELECT DISTINCT CAST(event_date AS STRING)
FROM {dedup_run_dates} WHERE UNIX_MICROS(changed_at) > @at";

/// Every writer lease row: holder and expiry (µs).
pub const CURRENT_LEASES: &str = "SELECT holder, UNIX_MICROS(expires_at) FROM {writer_lease}";
