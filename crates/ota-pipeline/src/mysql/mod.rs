//! The MySQL sink (MySQL 8, MariaDB 10.6+): the serving table, the forward offset and
//! the batch loader (`LOAD DATA LOCAL INFILE` into a staging table, then one upsert).

pub mod encode;
pub mod sql;

use std::collections::BTreeMap;

use arrow::array::{AsArray, RecordBatch};
use bytes::Bytes;
use chrono::NaiveDate;
use futures_util::{StreamExt, stream};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, Opts, OptsBuilder, Params, Value};
use serde::Serialize;

use crate::contract::validate_identifier;
use crate::error::{PipelineError, Result};
use crate::warehouse::{DateChecksum, FeedOffset};

/// Size of the pieces a LOAD DATA stream is sent in (well under any max_allowed_packet).
const INFILE_CHUNK_BYTES: usize = 1 << 20;

/// How batches reach the staging table.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LoadMethod {
    /// LOAD DATA LOCAL INFILE, falling back to INSERT when the server refuses it.
    Auto,
    /// LOAD DATA LOCAL INFILE only.
    LoadData,
    /// Multi-row INSERT only.
    Insert,
}

/// Settings of the MySQL sink.
#[derive(Debug, Clone)]
pub struct MysqlConfig {
    pub url: String,
    pub table: String,
    pub load_method: LoadMethod,
    /// Seconds to wait for another run's lock on the table.
    pub lock_timeout_secs: u64,
}

/// `mysql://user:***@host:port/db`: the URL with its password masked, for logs.
pub fn mask_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    match rest.rsplit_once('@') {
        Some((userinfo, host)) => match userinfo.split_once(':') {
            Some((user, _)) => format!("{scheme}://{user}:***@{host}"),
            None => url.to_string(),
        },
        None => url.to_string(),
    }
}

fn my_err(context: impl Into<String>) -> impl FnOnce(mysql_async::Error) -> PipelineError {
    let context = context.into();
    move |e| PipelineError::mysql(context, e)
}

fn server_code(e: &mysql_async::Error) -> Option<u16> {
    match e {
        mysql_async::Error::Server(s) => Some(s.code),
        _ => None,
    }
}

/// A connection to the serving database, holding the per-table lock while it runs.
pub struct MysqlTarget {
    conn: Conn,
    table: String,
    lock_name: String,
    method: LoadMethod,
    locked: bool,
    masked_url: String,
}

impl MysqlTarget {
    /// Connects (creating the database if it does not exist), sets up the session and
    /// creates the serving, offset and staging tables if missing.
    pub async fn connect(config: &MysqlConfig) -> Result<Self> {
        validate_identifier("MySQL table", &config.table)?;
        let masked_url = mask_url(&config.url);
        let opts = Opts::from_url(&config.url)
            .map_err(|e| PipelineError::Config(format!("MySQL URL {masked_url}: {e}")))?;
        let db = opts
            .db_name()
            .ok_or_else(|| {
                PipelineError::Config(format!("MySQL URL {masked_url} names no database"))
            })?
            .to_string();
        validate_identifier("MySQL database", &db)?;
        let conn = match Conn::new(opts.clone()).await {
            Ok(c) => c,
            Err(e) if server_code(&e) == Some(1049) => {
                tracing::info!(database = %db, "creating the database");
                let mut admin =
                    Conn::new(OptsBuilder::from_opts(opts.clone()).db_name(None::<String>))
                        .await
                        .map_err(my_err(format!("connecting to {masked_url}")))?;
                admin
                    .query_drop(format!(
                        "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                    ))
                    .await
                    .map_err(my_err(format!("creating database {db}")))?;
                let _ = admin.disconnect().await;
                Conn::new(opts)
                    .await
                    .map_err(my_err(format!("connecting to {masked_url}")))?
            }
            Err(e) => {
                return Err(PipelineError::mysql(
                    format!("connecting to {masked_url}"),
                    e,
                ));
            }
        };
        let mut target = MysqlTarget {
            conn,
            lock_name: lock_name(&db, &config.table),
            table: config.table.clone(),
            method: config.load_method,
            locked: false,
            masked_url,
        };
        target.setup().await?;
        Ok(target)
    }

    async fn setup(&mut self) -> Result<()> {
        let c = &mut self.conn;
        c.query_drop(sql::SESSION_SETUP)
            .await
            .map_err(my_err("setting up the session"))?;
        c.query_drop(sql::create_target(&self.table))
            .await
            .map_err(my_err(format!("creating table {}", self.table)))?;
        c.query_drop(sql::CREATE_OFFSETS)
            .await
            .map_err(my_err("creating the offsets table"))?;
        c.query_drop(sql::create_stage())
            .await
            .map_err(my_err("creating the staging table"))?;
        c.query_drop(sql::create_resync_keys())
            .await
            .map_err(my_err("creating the re-sync table"))?;
        Ok(())
    }

    pub fn masked_url(&self) -> &str {
        &self.masked_url
    }

    /// Takes the per-table lock, waiting up to the timeout for another run to finish.
    pub async fn lock(&mut self, timeout_secs: u64) -> Result<()> {
        let got: Option<Option<i64>> = self
            .conn
            .exec_first(sql::GET_LOCK, (&self.lock_name, timeout_secs))
            .await
            .map_err(my_err("taking the export lock"))?;
        match got.flatten() {
            Some(1) => {
                self.locked = true;
                Ok(())
            }
            _ => Err(PipelineError::Locked(format!(
                "another export-mysql run holds the lock on table {} (waited {timeout_secs} s); try again when it has finished",
                self.table
            ))),
        }
    }

    /// Releases the lock and closes the connection.
    pub async fn close(mut self) -> Result<()> {
        if self.locked {
            self.conn
                .exec_drop(sql::RELEASE_LOCK, (&self.lock_name,))
                .await
                .map_err(my_err("releasing the export lock"))?;
        }
        self.conn
            .disconnect()
            .await
            .map_err(my_err("disconnecting"))
    }

    /// The forward offset of the table, if any batch was ever exported.
    pub async fn offset(&mut self) -> Result<Option<FeedOffset>> {
        let row: Option<(String, String)> = self
            .conn
            .exec_first(sql::SELECT_OFFSET, (&self.table,))
            .await
            .map_err(my_err("reading the offset"))?;
        let Some((at, key)) = row else {
            return Ok(None);
        };
        let changed_at = chrono::NaiveDateTime::parse_from_str(&at, "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|e| {
                PipelineError::Config(format!("stored offset {at:?} is not a datetime: {e}"))
            })?
            .and_utc()
            .timestamp_micros();
        let mut event_key = [0u8; 16];
        for (i, b) in event_key.iter_mut().enumerate() {
            *b = u8::from_str_radix(key.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
        }
        Ok(Some(FeedOffset {
            changed_at,
            event_key,
        }))
    }

    /// Loads one batch into the (emptied) staging table.
    async fn stage(&mut self, batch: &RecordBatch) -> Result<()> {
        self.conn
            .query_drop(sql::truncate_stage())
            .await
            .map_err(my_err("emptying the staging table"))?;
        if self.method != LoadMethod::Insert {
            let mut buf = Vec::with_capacity(batch.get_array_memory_size());
            encode::encode_tsv(batch, &mut buf)?;
            // Sent in pieces: one packet may not exceed the server's max_allowed_packet.
            let data = Bytes::from(buf);
            let chunks: Vec<std::io::Result<Bytes>> = (0..data.len())
                .step_by(INFILE_CHUNK_BYTES)
                .map(|at| Ok(data.slice(at..(at + INFILE_CHUNK_BYTES).min(data.len()))))
                .collect();
            self.conn
                .set_infile_handler(async move { Ok(stream::iter(chunks).boxed()) });
            match self.conn.query_drop(sql::load_stage()).await {
                Ok(()) => return Ok(()),
                Err(e) if self.method == LoadMethod::Auto && refuses_local_infile(&e) => {
                    tracing::warn!(error = %e, "the server refuses LOAD DATA LOCAL INFILE; falling back to multi-row INSERT");
                    self.method = LoadMethod::Insert;
                    self.conn
                        .query_drop(sql::truncate_stage())
                        .await
                        .map_err(my_err("emptying the staging table"))?;
                }
                Err(e) => {
                    return Err(PipelineError::mysql(
                        "loading a batch with LOAD DATA LOCAL INFILE",
                        e,
                    ));
                }
            }
        }
        self.insert_stage(batch).await
    }

    async fn insert_stage(&mut self, batch: &RecordBatch) -> Result<()> {
        let ncols = batch.num_columns().max(1);
        let per_statement = (60_000 / ncols).max(1);
        let mut row = 0;
        while row < batch.num_rows() {
            let n = per_statement.min(batch.num_rows() - row);
            let mut values: Vec<Value> = Vec::with_capacity(n * ncols);
            for r in row..row + n {
                encode::row_values(batch, r, &mut values)?;
            }
            self.conn
                .exec_drop(sql::insert_stage(n), Params::Positional(values))
                .await
                .map_err(my_err("loading a batch with INSERT"))?;
            row += n;
        }
        Ok(())
    }

    /// Applies one batch of the change feed and moves the offset to its last row, in one
    /// transaction. With `crash_before_commit` the transaction is left open and an error
    /// returned, as a crash at that point would (tests of crash safety).
    pub async fn apply_changes(
        &mut self,
        batch: &RecordBatch,
        offset: FeedOffset,
        crash_before_commit: bool,
    ) -> Result<(u64, u64)> {
        self.stage(batch).await?;
        let upserts = count_ops(batch, "U");
        let c = &mut self.conn;
        c.query_drop("START TRANSACTION")
            .await
            .map_err(my_err("starting a batch transaction"))?;
        c.query_drop(sql::upsert_from_stage(&self.table))
            .await
            .map_err(my_err("upserting a batch"))?;
        c.query_drop(sql::delete_from_stage(&self.table))
            .await
            .map_err(my_err("deleting a batch's tombstones"))?;
        let deleted = c.affected_rows();
        c.exec_drop(
            sql::SAVE_OFFSET,
            (
                &self.table,
                encode::datetime_text(offset.changed_at),
                crate::hex::encode(&offset.event_key),
            ),
        )
        .await
        .map_err(my_err("saving the offset"))?;
        if crash_before_commit {
            return Err(PipelineError::Injected(
                "stopped before committing a batch".into(),
            ));
        }
        c.query_drop("COMMIT")
            .await
            .map_err(my_err("committing a batch"))?;
        Ok((upserts, deleted))
    }

    /// Re-sync: upserts the rows of the batch that are missing or differ, and remembers
    /// its keys for [`MysqlTarget::delete_unknown`]. Returns the rows upserted.
    pub async fn apply_resync(&mut self, batch: &RecordBatch) -> Result<u64> {
        self.stage(batch).await?;
        let c = &mut self.conn;
        c.query_drop(sql::remember_resync_keys())
            .await
            .map_err(my_err("remembering re-sync keys"))?;
        c.query_drop(sql::drop_unchanged_from_stage(&self.table))
            .await
            .map_err(my_err("comparing a re-sync batch"))?;
        let differing: Option<u64> = c
            .query_first(sql::count_stage())
            .await
            .map_err(my_err("comparing a re-sync batch"))?;
        c.query_drop(sql::upsert_from_stage(&self.table))
            .await
            .map_err(my_err("upserting a re-sync batch"))?;
        Ok(differing.unwrap_or(0))
    }

    /// Starts a re-sync: forgets the keys of a previous one.
    pub async fn begin_resync(&mut self) -> Result<()> {
        self.conn
            .query_drop(sql::truncate_resync_keys())
            .await
            .map_err(my_err("emptying the re-sync keys"))
    }

    /// Re-sync: deletes rows of these dates that no re-sync batch carried.
    pub async fn delete_unknown(&mut self, dates: &[NaiveDate]) -> Result<u64> {
        let mut deleted = 0;
        for d in dates {
            self.conn
                .exec_drop(sql::delete_unknown_of_date(&self.table), (d.to_string(),))
                .await
                .map_err(my_err(format!(
                    "deleting rows of {d} the warehouse does not hold"
                )))?;
            deleted += self.conn.affected_rows();
        }
        Ok(deleted)
    }

    /// Per event date between two dates: rows and row_hash checksum.
    pub async fn checksums(
        &mut self,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<BTreeMap<NaiveDate, DateChecksum>> {
        let rows: Vec<(String, u64, Option<String>)> = self
            .conn
            .exec(
                sql::checksums_between(&self.table),
                (start.to_string(), end.to_string()),
            )
            .await
            .map_err(my_err("checksumming MySQL rows"))?;
        let mut out = BTreeMap::new();
        for (date, count, sum) in rows {
            let date = crate::window::parse_date("MySQL event date", &date)?;
            let checksum = sum.as_deref().unwrap_or("0").parse::<u128>().map_err(|e| {
                PipelineError::Drift(format!(
                    "MySQL checksum {sum:?} of {date} is not a number: {e}"
                ))
            })?;
            out.insert(
                date,
                DateChecksum {
                    rows: count,
                    checksum,
                },
            );
        }
        Ok(out)
    }
}

fn refuses_local_infile(e: &mysql_async::Error) -> bool {
    // 1148: not allowed with this server; 3948/3950: local data disabled (MySQL 8);
    // 4166: MariaDB's equivalent; a driver error: the client could not send it.
    matches!(server_code(e), Some(1148 | 3948 | 3950 | 4166))
        || matches!(e, mysql_async::Error::Driver(_))
}

fn count_ops(batch: &RecordBatch, op: &str) -> u64 {
    batch
        .column(0)
        .as_string_opt::<i32>()
        .map(|ops| ops.iter().filter(|o| *o == Some(op)).count() as u64)
        .or_else(|| {
            batch
                .column(0)
                .as_string_view_opt()
                .map(|ops| ops.iter().filter(|o| *o == Some(op)).count() as u64)
        })
        .unwrap_or(0)
}

/// The GET_LOCK name of a target table (a digest, since lock names are limited to 64
/// characters and table names need not be).
pub fn lock_name(db: &str, table: &str) -> String {
    use md5::Digest;
    format!(
        "ota_export_{}",
        crate::hex::encode(&md5::Md5::digest(format!("{db}.{table}").as_bytes()))
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn masks_passwords() {
        assert_eq!(
            mask_url("mysql://u:secret@h:3306/db"),
            "mysql://u:***@h:3306/db"
        );
        assert_eq!(mask_url("mysql://u@h/db"), "mysql://u@h/db");
        assert_eq!(mask_url("mysql://u:p@ss@h/db"), "mysql://u:***@h/db");
    }
}
