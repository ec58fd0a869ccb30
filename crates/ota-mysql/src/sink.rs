//! The sink: the serving table, its forward offset and the staging table, and the
//! transactions that apply change batches and re-syncs to them.

use std::collections::BTreeMap;
use std::time::Duration;

use arrow::array::RecordBatch;
use bytes::Bytes;
use chrono::NaiveDate;
use futures_util::{StreamExt, stream};
use mysql_async::prelude::Queryable;
use mysql_async::{Conn, DriverError, OptsBuilder, Params, Value};

use crate::changes::{ChangeRows, target_projection};
use crate::config::{ConnectionSettings, LoadMethod, MysqlConfig};
use crate::connection::{
    WithinDeadline, idle_limit, lock_name, open, refuses_local_infile, server_code,
};
use crate::encode;
use crate::encode::RowEncoder;
use crate::sql::{self, OnDuplicate};
use crate::{content, table_contract};
use ota_core::change::{ChangeBatch, DateChecksum, FeedOffset};
use ota_core::contract::validate_identifier;
use ota_core::error::{PipelineError, Result};

/// Size of the pieces a LOAD DATA stream is sent in (well under any max_allowed_packet).
const INFILE_CHUNK_BYTES: usize = 1 << 20;
/// Placeholders one prepared statement may hold (the protocol counts them in 16 bits).
const MAX_PLACEHOLDERS: usize = 65_535;
/// Tombstone keys per DELETE statement.
const DELETE_KEYS_PER_STATEMENT: usize = 10_000;

/// A connection to the serving database, holding the per-table lock while it runs.
pub struct MysqlTarget {
    conn: Conn,
    table: String,
    lock_name: String,
    method: LoadMethod,
    locked: bool,
    masked_url: String,
    io_timeout: Duration,
    /// The warehouse feed the offsets this run saves are positions in.
    feed_id: Option<String>,
    /// Batches this session has applied (committed or about to be).
    batches_applied: u64,
}

/// Asked once a batch's rows and offset are written to MySQL and before its transaction
/// commits. A run commits every batch ([`CommitEveryBatch`]); tests and the fault harness
/// supply a gate that stops an export where a crash would, to prove that a batch and its
/// offset land together or not at all.
pub trait CommitGate: Send + Sync {
    /// `batch`: the batch's number in this run, from 1. An error ends the export with it
    /// and leaves the batch uncommitted.
    fn before_commit(&self, batch: u64) -> Result<()>;
}

/// The gate of every run: each batch commits.
#[derive(Debug, Clone, Copy, Default)]
pub struct CommitEveryBatch;

impl CommitGate for CommitEveryBatch {
    fn before_commit(&self, _batch: u64) -> Result<()> {
        Ok(())
    }
}

/// A table's forward offset as stored: the position, and which warehouse feed it is a
/// position in (None for an offset saved before feeds were told apart).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StoredOffset {
    pub offset: FeedOffset,
    pub feed_id: Option<String>,
}

/// Where an offset restarted for a new feed stands: before every change of it.
const FEED_START: &str = "1000-01-01 00:00:00.000000";

impl MysqlTarget {
    /// Connects (creating the database if it does not exist), sets up the session and
    /// creates the serving, offset and staging tables if missing.
    pub async fn connect(config: &MysqlConfig) -> Result<Self> {
        validate_identifier("MySQL table", &config.table)?;
        let settings = ConnectionSettings::from_config(config)?;
        let masked_url = settings.masked_url.clone();
        let io_timeout = settings.io_timeout;
        let db = settings
            .opts
            .db_name()
            .ok_or_else(|| {
                PipelineError::Config(format!("MySQL URL {masked_url} names no database"))
            })?
            .to_string();
        validate_identifier("MySQL database", &db)?;
        let connecting = format!("connecting to {masked_url}");
        let first = tokio::time::timeout(io_timeout, open(&settings, settings.opts.clone()))
            .await
            .map_err(|_| PipelineError::Timeout {
                context: format!("MySQL while {connecting}"),
                secs: io_timeout.as_secs(),
            })?;
        let conn = match first {
            Ok(c) => c,
            Err(e) if server_code(&e) == Some(1049) => {
                tracing::info!(database = %db, "creating the database");
                let server = OptsBuilder::from_opts(settings.opts.clone()).db_name(None::<String>);
                let mut admin = open(&settings, server.into())
                    .within(io_timeout, connecting.clone())
                    .await?;
                admin
                    .query_drop(format!(
                        "CREATE DATABASE IF NOT EXISTS `{db}` CHARACTER SET utf8mb4 COLLATE utf8mb4_bin"
                    ))
                    .within(io_timeout, format!("creating database {db}"))
                    .await?;
                let _ = admin.disconnect().await;
                open(&settings, settings.opts.clone())
                    .within(io_timeout, connecting)
                    .await?
            }
            Err(mysql_async::Error::Driver(DriverError::NoClientSslFlagFromServer)) => {
                return Err(PipelineError::Config(format!(
                    "the MySQL server at {masked_url} offers no TLS, but the URL asks for \
                     ssl-mode={}: enable TLS on the server, or choose another ssl-mode",
                    settings.ssl_mode.name()
                )));
            }
            Err(e) => return Err(PipelineError::mysql(connecting, e)),
        };
        let mut target = MysqlTarget {
            conn,
            lock_name: lock_name(&db, &config.table),
            table: config.table.clone(),
            method: config.load_method,
            locked: false,
            masked_url,
            io_timeout,
            feed_id: None,
            batches_applied: 0,
        };
        target.setup().await?;
        target.log_transport().await?;
        Ok(target)
    }

    /// Says on stderr whether the session is encrypted, and with which cipher.
    async fn log_transport(&mut self) -> Result<()> {
        let cipher: Option<(String, String)> = self
            .conn
            .query_first(sql::SESSION_CIPHER)
            .within(self.io_timeout, "reading the session's TLS cipher")
            .await?;
        match cipher.map(|(_, c)| c).filter(|c| !c.is_empty()) {
            Some(cipher) => tracing::info!(%cipher, "MySQL session encrypted with TLS"),
            None => tracing::info!("MySQL session not encrypted"),
        }
        Ok(())
    }

    async fn setup(&mut self) -> Result<()> {
        let c = &mut self.conn;
        c.query_drop(sql::SESSION_SETUP)
            .within(self.io_timeout, "setting up the session")
            .await?;
        // Row and metadata lock waits end with an error, not hours later.
        let lock_wait = self.io_timeout.as_secs();
        c.exec_drop(sql::SESSION_LOCK_WAITS, (lock_wait, lock_wait))
            .within(self.io_timeout, "setting the session's lock waits")
            .await?;
        // The server lets go of a session whose client went quiet: within one exchange's
        // limit mid-statement, and between statements after twice that (a live export
        // pings while it waits on the warehouse, see `alive_while`).
        c.exec_drop(
            sql::SESSION_NET_TIMEOUTS,
            (lock_wait, lock_wait, idle_limit(self.io_timeout).as_secs()),
        )
        .within(self.io_timeout, "setting the session's network timeouts")
        .await?;
        c.query_drop(sql::create_target(&self.table))
            .within(self.io_timeout, format!("creating table {}", self.table))
            .await?;
        let primary_key: Vec<String> = c
            .exec(sql::PRIMARY_KEY_COLUMNS, (&self.table,))
            .within(
                self.io_timeout,
                format!("reading the primary key of {}", self.table),
            )
            .await?;
        check_primary_key(&self.table, &primary_key)?;
        c.query_drop(sql::CREATE_OFFSETS)
            .within(self.io_timeout, "creating the offsets table")
            .await?;
        let has_feed_id: Option<u64> = c
            .query_first(sql::OFFSETS_HAVE_FEED_ID)
            .within(self.io_timeout, "reading the offsets table's columns")
            .await?;
        if has_feed_id == Some(0) {
            c.query_drop(sql::ADD_OFFSETS_FEED_ID)
                .within(self.io_timeout, "adding feed_id to the offsets table")
                .await?;
        }
        c.query_drop(sql::create_stage())
            .within(self.io_timeout, "creating the staging table")
            .await?;
        c.query_drop(sql::create_resync_keys())
            .within(self.io_timeout, "creating the re-sync table")
            .await?;
        self.check_contract().await
    }

    /// Refuses a serving table altered by hand (see [`table_contract`]).
    async fn check_contract(&mut self) -> Result<()> {
        use table_contract::{COLUMNS, ENGINE, FOREIGN_KEYS, TRIGGERS, UNIQUE_KEYS};
        let reading = format!("reading the definition of {}", self.table);
        let t = (&self.table,);
        let c = &mut self.conn;
        let engine: Option<Option<String>> = c
            .exec_first(ENGINE, t)
            .within(self.io_timeout, &reading)
            .await?;
        let columns: Vec<(String, String, String, Option<String>)> =
            c.exec(COLUMNS, t).within(self.io_timeout, &reading).await?;
        let unique_keys: Vec<(String, String)> = c
            .exec(UNIQUE_KEYS, t)
            .within(self.io_timeout, &reading)
            .await?;
        let foreign_keys: Vec<(String, String, String)> = c
            .exec(FOREIGN_KEYS, (&self.table, &self.table))
            .within(self.io_timeout, &reading)
            .await?;
        let triggers: Vec<(String, String)> = c
            .exec(TRIGGERS, t)
            .within(self.io_timeout, &reading)
            .await?;
        let facts = table_contract::TableFacts {
            engine: engine.flatten(),
            columns: columns
                .into_iter()
                .map(|(name, column_type, nullable, collation)| {
                    let facts = table_contract::ColumnFacts {
                        column_type,
                        nullable: nullable.eq_ignore_ascii_case("YES"),
                        collation,
                    };
                    (name, facts)
                })
                .collect(),
            unique_keys: unique_keys.into_iter().collect(),
            foreign_keys,
            triggers,
        };
        table_contract::check(&self.table, &facts)
    }

    pub fn masked_url(&self) -> &str {
        &self.masked_url
    }

    /// Takes the per-table lock, waiting up to the timeout for another run to finish.
    pub async fn lock(&mut self, timeout_secs: u64) -> Result<()> {
        let got: Option<Option<i64>> = self
            .conn
            .exec_first(sql::GET_LOCK, (&self.lock_name, timeout_secs))
            .within(
                self.io_timeout + Duration::from_secs(timeout_secs),
                "taking the export lock",
            )
            .await?;
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

    /// Awaits `work` (the next batch from the warehouse), pinging the server while it
    /// takes long, so the server's idle limit (`wait_timeout`) only ever closes a session
    /// whose client is gone.
    pub async fn alive_while<T>(&mut self, work: impl Future<Output = T>) -> Result<T> {
        let period = (idle_limit(self.io_timeout) / 4).max(Duration::from_millis(500));
        let mut work = std::pin::pin!(work);
        loop {
            tokio::select! {
                done = &mut work => return Ok(done),
                () = tokio::time::sleep(period) => {
                    self.conn
                        .ping()
                        .within(self.io_timeout, "keeping the MySQL session alive")
                        .await?;
                }
            }
        }
    }

    /// Releases the lock and closes the connection.
    pub async fn close(mut self) -> Result<()> {
        if self.locked {
            self.conn
                .exec_drop(sql::RELEASE_LOCK, (&self.lock_name,))
                .within(self.io_timeout, "releasing the export lock")
                .await?;
        }
        self.conn
            .disconnect()
            .within(self.io_timeout, "disconnecting")
            .await
    }

    /// The forward offset of the table, if any batch was ever exported.
    pub async fn offset(&mut self) -> Result<Option<StoredOffset>> {
        let row: Option<(String, String, Option<String>)> = self
            .conn
            .exec_first(sql::SELECT_OFFSET, (&self.table,))
            .within(self.io_timeout, "reading the offset")
            .await?;
        let Some((at, key, feed_id)) = row else {
            return Ok(None);
        };
        let changed_at = chrono::NaiveDateTime::parse_from_str(&at, "%Y-%m-%d %H:%M:%S%.f")
            .map_err(|e| {
                PipelineError::Internal(format!("stored offset {at:?} is not a datetime: {e}"))
            })?
            .and_utc()
            .timestamp_micros();
        let mut event_key = [0u8; 16];
        for (i, b) in event_key.iter_mut().enumerate() {
            *b = u8::from_str_radix(key.get(i * 2..i * 2 + 2).unwrap_or("00"), 16).unwrap_or(0);
        }
        Ok(Some(StoredOffset {
            offset: FeedOffset {
                changed_at,
                event_key,
            },
            feed_id,
        }))
    }

    /// The warehouse feed the offsets this run saves belong to.
    pub fn feed_from(&mut self, feed_id: Option<String>) {
        self.feed_id = feed_id;
    }

    /// Records that an offset saved without a feed id is a position in this run's feed.
    pub async fn adopt_feed(&mut self) -> Result<()> {
        self.conn
            .exec_drop(sql::ADOPT_FEED, (&self.feed_id, &self.table))
            .within(self.io_timeout, "recording the offset's feed")
            .await
    }

    /// Moves the offset to the start of this run's feed: the table follows another
    /// warehouse's feed from now on (a full re-sync follows).
    pub async fn restart_offset(&mut self) -> Result<()> {
        self.conn
            .exec_drop(
                sql::SAVE_OFFSET,
                (&self.table, FEED_START, &[0u8; 16][..], &self.feed_id),
            )
            .within(self.io_timeout, "restarting the offset")
            .await
    }

    /// Loads one whole batch into the (emptied) staging table.
    async fn stage(&mut self, batch: &RecordBatch) -> Result<()> {
        self.conn
            .query_drop(sql::empty_stage())
            .within(self.io_timeout, "emptying the staging table")
            .await?;
        let columns: Vec<usize> = (0..batch.num_columns()).collect();
        let rows: Vec<usize> = (0..batch.num_rows()).collect();
        let load = RowsToLoad {
            table: sql::STAGE_TABLE,
            names: &sql::stage_columns(),
            batch,
            columns: &columns,
            rows: &rows,
            on_duplicate: OnDuplicate::Fail,
        };
        self.load_rows(load, "staging a batch").await
    }

    /// Writes rows of a batch into a table: one `LOAD DATA LOCAL INFILE` stream, encoded
    /// lazily in 1 MiB pieces while the server reads, or multi-row statements of bound
    /// values where the server refuses local infile. Any warning fails the load.
    async fn load_rows(&mut self, load: RowsToLoad<'_>, context: &str) -> Result<()> {
        if load.rows.is_empty() {
            return Ok(());
        }
        // Unsupported column types fail here, before anything is sent.
        let encoder = RowEncoder::new(load.batch, load.columns)?;
        if self.method != LoadMethod::Insert {
            let chunks = LineChunks {
                batch: load.batch.clone(),
                columns: load.columns.to_vec(),
                rows: load.rows.to_vec(),
                next: 0,
            };
            self.conn
                .set_infile_handler(async move { Ok(stream::iter(chunks).boxed()) });
            let statement = sql::load_data(load.table, load.names, load.on_duplicate);
            let loaded = tokio::time::timeout(self.io_timeout, self.conn.query_drop(statement))
                .await
                .map_err(|_| PipelineError::Timeout {
                    context: format!("MySQL while {context} with LOAD DATA LOCAL INFILE"),
                    secs: self.io_timeout.as_secs(),
                })?;
            match loaded {
                Ok(()) => return self.fail_on_warnings(context).await,
                Err(e) if self.method == LoadMethod::Auto && refuses_local_infile(&e) => {
                    tracing::warn!(error = %e, "the server refuses LOAD DATA LOCAL INFILE; falling back to multi-row INSERT");
                    self.method = LoadMethod::Insert;
                }
                Err(e) => {
                    return Err(PipelineError::mysql(
                        format!("{context} with LOAD DATA LOCAL INFILE"),
                        e,
                    ));
                }
            }
        }
        let per_statement = (MAX_PLACEHOLDERS / encoder.columns().max(1)).max(1);
        for rows in load.rows.chunks(per_statement) {
            let mut values: Vec<Value> = Vec::with_capacity(rows.len() * encoder.columns());
            for &row in rows {
                encoder.push_values(row, &mut values);
            }
            let statement = sql::insert_rows(load.table, load.names, rows.len(), load.on_duplicate);
            self.conn
                .exec_drop(statement, Params::Positional(values))
                .within(self.io_timeout, format!("{context} with INSERT"))
                .await?;
            self.fail_on_warnings(context).await?;
        }
        Ok(())
    }

    /// Turns warnings of the last statement into an error naming the first few.
    async fn fail_on_warnings(&mut self, context: &str) -> Result<()> {
        if self.conn.get_warnings() == 0 {
            return Ok(());
        }
        let shown: Vec<(String, u32, String)> = self
            .conn
            .query(sql::SHOW_WARNINGS)
            .within(self.io_timeout, "reading the warnings of a load")
            .await?;
        let warnings = shown
            .iter()
            .map(|(level, code, message)| format!("{level} {code}: {message}"))
            .collect::<Vec<_>>()
            .join("; ");
        Err(PipelineError::MysqlWarnings {
            context: context.to_string(),
            warnings,
        })
    }

    /// Applies one batch of the change feed, already split by [`split_changes`] (the
    /// export splits each batch on its reader thread while the previous one loads), and
    /// moves the offset to its last row, in one transaction: upserts are loaded straight
    /// into the serving table (`REPLACE`), the keys of tombstones deleted. `gate` is asked
    /// once the batch's rows and offset are written, before the commit.
    pub async fn apply_changes(
        &mut self,
        batch: &ChangeBatch,
        changes: &ChangeRows,
        offset: FeedOffset,
        gate: &dyn CommitGate,
    ) -> Result<(u64, u64)> {
        let ChangeRows {
            upserts,
            tombstones,
        } = changes;
        self.conn
            .query_drop("START TRANSACTION")
            .within(self.io_timeout, "starting a batch transaction")
            .await?;
        let deleted = match self
            .apply_in_transaction(batch.record_batch(), upserts, tombstones)
            .await
        {
            Ok(deleted) => deleted,
            Err(e) => {
                // Nothing of the batch stays; the offset has not moved. A session that
                // stopped answering is not waited on again: the server rolls back when
                // it drops it.
                if !matches!(e, PipelineError::Timeout { .. }) {
                    self.rollback().await;
                }
                return Err(e);
            }
        };
        self.conn
            .exec_drop(
                sql::SAVE_OFFSET,
                (
                    &self.table,
                    encode::datetime_text(offset.changed_at),
                    &offset.event_key[..],
                    &self.feed_id,
                ),
            )
            .within(self.io_timeout, "saving the offset")
            .await?;
        self.batches_applied += 1;
        // An error leaves the transaction uncommitted, as a crash here would: the
        // server rolls it back when the session ends.
        gate.before_commit(self.batches_applied)?;
        self.conn
            .query_drop("COMMIT")
            .within(self.io_timeout, "committing a batch")
            .await?;
        Ok((upserts.len() as u64, deleted))
    }

    async fn apply_in_transaction(
        &mut self,
        batch: &RecordBatch,
        upserts: &[usize],
        tombstones: &BTreeMap<NaiveDate, Vec<Vec<u8>>>,
    ) -> Result<u64> {
        let table = self.table.clone();
        let load = RowsToLoad {
            table: &table,
            names: &sql::target_columns(),
            batch,
            columns: &target_projection(batch)?,
            rows: upserts,
            on_duplicate: OnDuplicate::Replace,
        };
        self.load_rows(load, "upserting a batch").await?;
        let mut deleted = 0;
        for (date, keys) in tombstones {
            for keys in keys.chunks(DELETE_KEYS_PER_STATEMENT) {
                let mut params: Vec<Value> = Vec::with_capacity(keys.len() + 1);
                params.push(Value::from(date.to_string()));
                params.extend(keys.iter().map(|k| Value::Bytes(k.clone())));
                self.conn
                    .exec_drop(
                        sql::delete_keys(&table, keys.len()),
                        Params::Positional(params),
                    )
                    .within(self.io_timeout, "deleting a batch's tombstones")
                    .await?;
                deleted += self.conn.affected_rows();
            }
        }
        Ok(deleted)
    }

    /// Re-sync: upserts the rows of the batch that are missing or differ, and remembers
    /// its keys for [`MysqlTarget::delete_unknown`]. Returns the rows upserted.
    pub async fn apply_resync(&mut self, batch: &ChangeBatch) -> Result<u64> {
        self.stage(batch.record_batch()).await?;
        let c = &mut self.conn;
        c.query_drop(sql::remember_resync_keys())
            .within(self.io_timeout, "remembering re-sync keys")
            .await?;
        c.query_drop(sql::drop_unchanged_from_stage(&self.table))
            .within(self.io_timeout, "comparing a re-sync batch")
            .await?;
        let differing: Option<u64> = c
            .query_first(sql::count_stage())
            .within(self.io_timeout, "comparing a re-sync batch")
            .await?;
        c.query_drop(sql::upsert_from_stage(&self.table))
            .within(self.io_timeout, "upserting a re-sync batch")
            .await?;
        Ok(differing.unwrap_or(0))
    }

    /// Starts a re-sync: one transaction for all its upserts and deletes (a re-sync cut
    /// short leaves MySQL as it was), with the keys of a previous one forgotten.
    pub async fn begin_resync(&mut self) -> Result<()> {
        self.conn
            .query_drop("START TRANSACTION")
            .within(self.io_timeout, "starting the re-sync transaction")
            .await?;
        self.conn
            .query_drop(sql::empty_resync_keys())
            .within(self.io_timeout, "emptying the re-sync keys")
            .await
    }

    /// Commits a re-sync begun by [`MysqlTarget::begin_resync`].
    pub async fn commit_resync(&mut self) -> Result<()> {
        self.conn
            .query_drop("COMMIT")
            .within(self.io_timeout, "committing the re-sync")
            .await
    }

    /// Rolls back an open transaction (best effort: a broken connection rolls it back
    /// on the server anyway).
    pub async fn rollback(&mut self) {
        let _ = self
            .conn
            .query_drop("ROLLBACK")
            .within(self.io_timeout, "rolling back")
            .await;
    }

    /// Re-sync: deletes rows of these dates that no re-sync batch carried.
    pub async fn delete_unknown(&mut self, dates: &[NaiveDate]) -> Result<u64> {
        let mut deleted = 0;
        for d in dates {
            self.conn
                .exec_drop(sql::delete_unknown_of_date(&self.table), (d.to_string(),))
                .within(
                    self.io_timeout,
                    format!("deleting rows of {d} the warehouse does not hold"),
                )
                .await?;
            deleted += self.conn.affected_rows();
        }
        Ok(deleted)
    }

    /// Re-sync, before [`MysqlTarget::delete_unknown`]: per date, the rows it would delete.
    pub async fn count_unknown(&mut self, dates: &[NaiveDate]) -> Result<BTreeMap<NaiveDate, u64>> {
        let mut counts = BTreeMap::new();
        for d in dates {
            let n: Option<u64> = self
                .conn
                .exec_first(sql::count_unknown_of_date(&self.table), (d.to_string(),))
                .within(
                    self.io_timeout,
                    format!("counting rows of {d} the warehouse does not hold"),
                )
                .await?;
            counts.insert(*d, n.unwrap_or(0));
        }
        Ok(counts)
    }

    /// Per event date between two dates: rows and the checksum of their `row_hash`,
    /// recomputed from each row's content as read back (see [`content`]), one date at a
    /// time.
    pub async fn checksums(
        &mut self,
        start: NaiveDate,
        end: NaiveDate,
    ) -> Result<BTreeMap<NaiveDate, DateChecksum>> {
        let dates: Vec<String> = self
            .conn
            .exec(
                sql::dates_between(&self.table),
                (start.to_string(), end.to_string()),
            )
            .within(self.io_timeout, "listing the served event dates")
            .await?;
        let statement = sql::content_of_date(&self.table);
        let mut out = BTreeMap::new();
        for date in dates {
            let mut sum = content::ContentChecksum::default();
            let mut failure = None;
            let conn = &mut self.conn;
            async {
                let mut rows = conn.exec_iter(statement.as_str(), (date.as_str(),)).await?;
                rows.for_each(|row| {
                    if failure.is_none()
                        && let Err(e) = sum.add(&row)
                    {
                        failure = Some(e);
                    }
                })
                .await
            }
            .within(
                self.io_timeout,
                format!("checksumming the MySQL rows of {date}"),
            )
            .await?;
            if let Some(e) = failure {
                return Err(e);
            }
            out.insert(
                ota_core::window::parse_date("MySQL event date", &date)?,
                sum.sum,
            );
        }
        Ok(out)
    }
}

/// Upserts and deletes are only exact when the serving table is unique on the event key:
/// `(event_date, event_key)`, or `(event_key)` alone (still correct, slower once the table
/// outgrows the buffer pool: a warning names the `ALTER TABLE` that moves it).
fn check_primary_key(table: &str, columns: &[String]) -> Result<()> {
    match columns {
        [date, key] if date == "event_date" && key == "event_key" => Ok(()),
        [key] if key == "event_key" => {
            tracing::warn!(
                table,
                "the table's primary key is (event_key) alone: \
                 daily runs write random pages once it outgrows the buffer pool; \
                 `ALTER TABLE {table} DROP PRIMARY KEY, ADD PRIMARY KEY (event_date, event_key), \
                 DROP INDEX {table}_event_date` clusters it by date"
            );
            Ok(())
        }
        other => Err(PipelineError::Config(format!(
            "MySQL table {table} has primary key ({}), not (event_date, event_key): \
             upserts could not replace rows by their event key; \
             export into a new table or give it that primary key",
            other.join(", ")
        ))),
    }
}

/// One LOAD DATA / INSERT: which rows and columns of a batch go into which table.
struct RowsToLoad<'a> {
    table: &'a str,
    /// The table's column names, in the order of `columns`.
    names: &'a [&'a str],
    batch: &'a RecordBatch,
    /// Batch column indices.
    columns: &'a [usize],
    /// Batch row indices.
    rows: &'a [usize],
    on_duplicate: OnDuplicate,
}

/// The LOAD DATA stream of a batch, encoded one piece at a time as the driver asks.
struct LineChunks {
    batch: RecordBatch,
    columns: Vec<usize>,
    rows: Vec<usize>,
    next: usize,
}

impl Iterator for LineChunks {
    type Item = std::io::Result<Bytes>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.next >= self.rows.len() {
            return None;
        }
        let encoder = match RowEncoder::new(&self.batch, &self.columns) {
            Ok(encoder) => encoder,
            Err(e) => return Some(Err(std::io::Error::other(e.to_string()))),
        };
        let mut piece = Vec::with_capacity(INFILE_CHUNK_BYTES + INFILE_CHUNK_BYTES / 8);
        while piece.len() < INFILE_CHUNK_BYTES {
            let Some(&row) = self.rows.get(self.next) else {
                break;
            };
            encoder.write_line(row, &mut piece);
            self.next += 1;
        }
        Some(Ok(Bytes::from(piece)))
    }
}
