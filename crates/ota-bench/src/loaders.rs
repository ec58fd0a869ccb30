//! The two comparators of the export, run in this process against the same server:
//! - the limit: the server's own `LOAD DATA LOCAL INFILE` of a prepared file holding
//!   exactly the exported rows, into an empty copy of the serving table;
//! - the naive loader: what most pipelines of this kind do — `executemany` of
//!   `INSERT ... ON DUPLICATE KEY UPDATE` in 10,000-row chunks, a commit per chunk,
//!   every value a bound parameter.

use std::fs::File;
use std::io::{BufWriter, Read, Write};
use std::path::Path;
use std::time::Instant;

use arrow::array::RecordBatch;
use bytes::Bytes;
use futures_util::{StreamExt, stream};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Value};

use ota_mysql::load_data::{self as sql, RowEncoder};
use ota_mysql::{split_changes, target_projection};
use ota_warehouse::{Access, ChangeSelection, RunSettings, WarehouseConfig};

use crate::BenchError;

/// Rows per chunk (and commit) of the naive loader.
pub const NAIVE_CHUNK_ROWS: usize = 10_000;
/// Placeholders one prepared statement may hold.
const MAX_PLACEHOLDERS: usize = 65_535;

fn my(context: &str) -> impl FnOnce(mysql_async::Error) -> BenchError + '_ {
    move |e| BenchError::Mysql(format!("{context}: {e}"))
}

/// A connection with the session the pipeline's own uses.
pub async fn connect(url: &str) -> Result<Conn, BenchError> {
    let opts = Opts::from_url(url).map_err(|e| BenchError::Mysql(format!("URL: {e}")))?;
    let opts = match opts.db_name() {
        Some("") => OptsBuilder::from_opts(opts).db_name(None::<String>).into(),
        _ => opts,
    };
    let mut conn = Conn::new(opts).await.map_err(my("connecting"))?;
    conn.query_drop(sql::SESSION_SETUP)
        .await
        .map_err(my("session setup"))?;
    Ok(conn)
}

/// Receives a change batch, the batch indices of the serving table's columns and the
/// rows to upsert.
pub type FeedVisitor<'a> =
    dyn FnMut(&RecordBatch, &[usize], &[usize]) -> Result<(), BenchError> + 'a;

/// Reads the whole change feed of the warehouse and hands each batch's upsert rows to
/// `each` (in feed order, `batch_rows` rows at a time).
pub fn read_feed(
    warehouse_url: &str,
    batch_rows: usize,
    each: &mut FeedVisitor<'_>,
) -> Result<(), BenchError> {
    let mut warehouse = WarehouseConfig::new(warehouse_url, RunSettings::default(), |var| {
        std::env::var(var).ok()
    })?
    .open(Access::ReadOnly, "bench")?;
    let mut failed = None;
    warehouse.stream_changes(&ChangeSelection::After(None), batch_rows, &mut |batch| {
        let rows = batch.record_batch();
        let result = target_projection(rows)
            .map_err(BenchError::from)
            .and_then(|cols| each(rows, &cols, &split_changes(&batch).upserts));
        match result {
            Ok(()) => Ok(true),
            Err(e) => {
                failed = Some(e);
                Ok(false)
            }
        }
    })?;
    failed.map_or(Ok(()), Err)
}

/// Writes the feed's rows as the LOAD DATA file of the limit; returns the rows written.
pub fn write_limit_file(warehouse_url: &str, path: &Path) -> Result<u64, BenchError> {
    let file = File::create(path).map_err(|e| BenchError::io(path, e))?;
    let mut out = BufWriter::with_capacity(1 << 20, file);
    let mut rows = 0u64;
    let mut line = Vec::with_capacity(1 << 16);
    read_feed(warehouse_url, 50_000, &mut |batch, cols, upserts| {
        let encoder = RowEncoder::new(batch, cols)?;
        for &row in upserts {
            line.clear();
            encoder.write_line(row, &mut line);
            out.write_all(&line).map_err(|e| BenchError::io(path, e))?;
        }
        rows += upserts.len() as u64;
        Ok(())
    })?;
    out.flush().map_err(|e| BenchError::io(path, e))?;
    Ok(rows)
}

/// An empty copy of the serving table (same definition and indexes).
pub async fn empty_copy(conn: &mut Conn, table: &str, copy: &str) -> Result<(), BenchError> {
    conn.query_drop(format!("DROP TABLE IF EXISTS `{copy}`"))
        .await
        .map_err(my("dropping a copy"))?;
    conn.query_drop(format!("CREATE TABLE `{copy}` LIKE `{table}`"))
        .await
        .map_err(my("creating a copy"))
}

/// The file, read in 1 MiB pieces as the server asks for them.
struct FilePieces(File);

impl Iterator for FilePieces {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        let mut piece = vec![0u8; 1 << 20];
        match self.0.read(&mut piece) {
            Ok(0) => None,
            Ok(n) => {
                piece.truncate(n);
                Some(Ok(Bytes::from(piece)))
            }
            Err(e) => Some(Err(e)),
        }
    }
}

/// The limit: one LOAD DATA LOCAL INFILE of the prepared file into `table`: into an empty
/// table (`OnDuplicate::Fail`), or with `REPLACE` into the table that already holds every
/// row (the server's own cost of the re-run case). Returns the seconds the statement took.
pub async fn load_limit(
    conn: &mut Conn,
    table: &str,
    path: &Path,
    on_duplicate: sql::OnDuplicate,
) -> Result<f64, BenchError> {
    let file = File::open(path).map_err(|e| BenchError::io(path, e))?;
    conn.set_infile_handler(async move { Ok(stream::iter(FilePieces(file)).boxed()) });
    let statement = sql::load_data(table, &sql::target_columns(), on_duplicate);
    let started = Instant::now();
    conn.query_drop(statement)
        .await
        .map_err(my("LOAD DATA of the limit"))?;
    let seconds = started.elapsed().as_secs_f64();
    if conn.get_warnings() > 0 {
        return Err(BenchError::Mysql(format!(
            "LOAD DATA of the limit gave {} warnings",
            conn.get_warnings()
        )));
    }
    Ok(seconds)
}

/// `INSERT ... VALUES (...), ... ON DUPLICATE KEY UPDATE c = VALUES(c), ...`.
fn naive_statement(table: &str, rows: usize) -> String {
    let cols = sql::target_columns();
    let names: Vec<String> = cols.iter().map(|c| format!("`{c}`")).collect();
    let one = format!("({})", vec!["?"; cols.len()].join(", "));
    let updates: Vec<String> = cols
        .iter()
        .filter(|c| **c != "event_key")
        .map(|c| format!("`{c}` = VALUES(`{c}`)"))
        .collect();
    format!(
        "INSERT INTO `{table}` ({}) VALUES {} ON DUPLICATE KEY UPDATE {}",
        names.join(", "),
        vec![one; rows].join(", "),
        updates.join(", ")
    )
}

/// The naive loader: reads the feed in 10,000-row chunks and sends each as
/// multi-row INSERT ... ON DUPLICATE KEY UPDATE statements of bound values (as many rows
/// per statement as the 65,535 placeholders allow, as executemany does), then commits.
/// Returns (seconds, rows); the seconds include reading the warehouse, as ours do.
pub fn load_naive(
    runtime: &tokio::runtime::Runtime,
    conn: &mut Conn,
    warehouse_url: &str,
    table: &str,
) -> Result<(f64, u64), BenchError> {
    let started = Instant::now();
    let mut rows = 0u64;
    read_feed(
        warehouse_url,
        NAIVE_CHUNK_ROWS,
        &mut |batch, cols, upserts| {
            let encoder = RowEncoder::new(batch, cols)?;
            let per_statement = MAX_PLACEHOLDERS / cols.len().max(1);
            runtime.block_on(async {
                conn.query_drop("START TRANSACTION")
                    .await
                    .map_err(my("naive: begin"))?;
                for chunk in upserts.chunks(per_statement) {
                    let mut values: Vec<Value> = Vec::with_capacity(chunk.len() * cols.len());
                    for &row in chunk {
                        encoder.push_values(row, &mut values);
                    }
                    conn.exec_drop(
                        naive_statement(table, chunk.len()),
                        Params::Positional(values),
                    )
                    .await
                    .map_err(my("naive: insert"))?;
                }
                conn.query_drop("COMMIT").await.map_err(my("naive: commit"))
            })?;
            rows += upserts.len() as u64;
            Ok(())
        },
    )?;
    Ok((started.elapsed().as_secs_f64(), rows))
}
