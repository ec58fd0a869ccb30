//! export-mysql: apply the warehouse's change feed to MySQL in batches, each batch and
//! the offset it reaches in one transaction; re-sync a named window exactly; reconcile.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use chrono::NaiveDate;
use serde::Serialize;

use crate::progress::Progress;
use crate::summary::{Status, StepSummary};
use ota_core::change::{ChangeBatch, DateChecksum};
use ota_core::error::{PipelineError, Result};
use ota_core::window::{DateWindow, RequestedWindow};
use ota_mysql::{
    CommitEveryBatch, CommitGate, MysqlConfig, MysqlTarget, StoredOffset, split_changes,
};
use ota_warehouse::{Access, ChangeSelection, Warehouse, WarehouseConfig};

#[derive(Debug, Clone)]
pub struct ExportConfig {
    pub window: RequestedWindow,
    pub warehouse: WarehouseConfig,
    pub mysql: MysqlConfig,
    pub batch_rows: usize,
    /// Re-sync every event date, not just the window's.
    pub full_refresh: bool,
    /// Only compare warehouse and MySQL per event date.
    pub reconcile: bool,
    /// What a re-sync may delete from MySQL.
    pub resync: ResyncGuard,
    /// How often progress is logged (`None`: never).
    pub progress: Option<Duration>,
}

/// What a re-sync may delete from what MySQL serves. A date the warehouse holds nothing
/// of may be a date it never loaded (a new warehouse, a lost file), not an empty one; a
/// re-sync that would delete most of a date is more likely a broken warehouse than a
/// correction. Either date is left as it is and reported unless the run says otherwise.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ResyncGuard {
    /// Delete the served rows of event dates the warehouse holds no row of
    /// (`--delete-absent-dates`).
    pub delete_absent_dates: bool,
    /// The largest share of a date's served rows, in percent, a re-sync may delete
    /// (`--max-resync-delete-pct`; 100: no limit).
    pub max_delete_pct: u8,
}

impl Default for ResyncGuard {
    fn default() -> Self {
        ResyncGuard {
            delete_absent_dates: false,
            max_delete_pct: DEFAULT_MAX_RESYNC_DELETE_PCT,
        }
    }
}

/// The default `--max-resync-delete-pct`, the same share as load-raw's shrink guard: a
/// re-sync repairs drift, which is a few rows, not half a day.
pub const DEFAULT_MAX_RESYNC_DELETE_PCT: u8 = 50;

impl ResyncGuard {
    /// Whether deleting `deleting` of a date's `served` rows is more than allowed.
    pub fn forbids(&self, served: u64, deleting: u64) -> bool {
        u128::from(deleting) * 100 > u128::from(served) * u128::from(self.max_delete_pct)
    }
}

/// An event date a re-sync left as MySQL serves it, and why.
#[derive(Debug, Clone, Serialize)]
pub struct HeldDate {
    pub event_date: NaiveDate,
    pub mysql_rows: u64,
    pub warehouse_rows: u64,
    pub reason: String,
}

/// One line of the reconcile table.
#[derive(Debug, Clone, Serialize)]
pub struct DateDrift {
    pub event_date: NaiveDate,
    pub warehouse: DateChecksum,
    pub mysql: DateChecksum,
}

/// The event dates a run compares and re-syncs: a named window's, or every date either
/// side holds (no dates named, or --full-refresh).
#[derive(Debug, Clone, Copy)]
enum DateScope {
    Window(DateWindow),
    All,
}

impl DateScope {
    fn of(config: &ExportConfig, window: DateWindow) -> Self {
        if config.full_refresh || !config.window.is_named() {
            DateScope::All
        } else {
            DateScope::Window(window)
        }
    }
}

/// MySQL's DATE range: every event date the serving table can hold.
const ALL_DATES: (NaiveDate, NaiveDate) = (mysql_date(1000, 1, 1), mysql_date(9999, 12, 31));

const fn mysql_date(year: i32, month: u32, day: u32) -> NaiveDate {
    match NaiveDate::from_ymd_opt(year, month, day) {
        Some(date) => date,
        None => NaiveDate::MIN,
    }
}

pub fn export_mysql(config: &ExportConfig) -> Result<StepSummary> {
    export_mysql_with(config, &CommitEveryBatch)
}

/// [`export_mysql`] with the gate each batch passes before it commits (tests and the fault
/// harness stop an export there, as a crash would).
pub fn export_mysql_with(config: &ExportConfig, gate: &dyn CommitGate) -> Result<StepSummary> {
    if config.batch_rows == 0 {
        return Err(PipelineError::Config(
            "--batch-size must be at least 1".into(),
        ));
    }
    let window = config.window.window;
    let mut warehouse = config.warehouse.open(Access::ReadOnly, "export-mysql")?;
    if config.warehouse.run.dry_run {
        return dry_run(config, window, warehouse.as_mut());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| PipelineError::io("tokio runtime", e))?;
    let mut summary = StepSummary::new("export-mysql", Some(window));
    runtime.block_on(async {
        let mut target = MysqlTarget::connect(&config.mysql).await?;
        target.lock(config.mysql.lock_timeout_secs).await?;
        let result = if config.reconcile {
            reconcile(config, window, warehouse, &mut target, &mut summary).await
        } else {
            export(config, window, warehouse, &mut target, gate, &mut summary).await
        };
        // Always release the lock; the first error wins. A session that stopped
        // answering is dropped, not waited on: the server frees its lock with it.
        if matches!(result, Err(PipelineError::Timeout { .. })) {
            drop(target);
            return result;
        }
        let closed = target.close().await;
        result.and(closed)
    })?;
    Ok(summary)
}

/// `--dry-run`: print the warehouse statements the export would run (the change feed
/// from its start; a named window's rows) with their estimates. MySQL is not touched:
/// a re-sync deletes before it inserts, which a dry run must never do.
fn dry_run(
    config: &ExportConfig,
    window: DateWindow,
    warehouse: &mut dyn Warehouse,
) -> Result<StepSummary> {
    let mut summary = StepSummary::new("export-mysql", Some(window));
    warehouse.stream_changes(
        &ChangeSelection::After(None),
        config.batch_rows,
        &mut |_| Ok(false),
    )?;
    if config.window.is_named() {
        let days: Vec<NaiveDate> = window.days().collect();
        warehouse.stream_changes(
            &ChangeSelection::Dates(days),
            config.batch_rows,
            &mut |_| Ok(false),
        )?;
    }
    summary.detail("mode", "dry-run");
    summary.record_warehouse(warehouse);
    Ok(summary)
}

/// The event dates a backfill re-syncs: the window's, or every date either side holds.
fn resync_dates(
    scope: DateScope,
    wh_dates: &BTreeMap<NaiveDate, DateChecksum>,
    my_dates: &BTreeMap<NaiveDate, DateChecksum>,
) -> Vec<NaiveDate> {
    match scope {
        DateScope::Window(window) => window.days().collect(),
        DateScope::All => wh_dates
            .keys()
            .chain(my_dates.keys())
            .copied()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect(),
    }
}

fn drift(
    dates: &[NaiveDate],
    wh: &BTreeMap<NaiveDate, DateChecksum>,
    my: &BTreeMap<NaiveDate, DateChecksum>,
) -> Vec<DateDrift> {
    dates
        .iter()
        .map(|d| DateDrift {
            event_date: *d,
            warehouse: wh.get(d).copied().unwrap_or_default(),
            mysql: my.get(d).copied().unwrap_or_default(),
        })
        .collect()
}

async fn both_checksums(
    scope: DateScope,
    warehouse: &mut Box<dyn Warehouse>,
    target: &mut MysqlTarget,
) -> Result<(
    BTreeMap<NaiveDate, DateChecksum>,
    BTreeMap<NaiveDate, DateChecksum>,
)> {
    match scope {
        DateScope::All => {
            let wh = warehouse.date_checksums(None)?;
            let my = target.checksums(ALL_DATES.0, ALL_DATES.1).await?;
            Ok((wh, my))
        }
        DateScope::Window(window) => {
            let days: Vec<NaiveDate> = window.days().collect();
            let wh = warehouse.date_checksums(Some(&days))?;
            let my = target.checksums(window.start, window.end).await?;
            Ok((wh, my))
        }
    }
}

async fn reconcile(
    config: &ExportConfig,
    window: DateWindow,
    mut warehouse: Box<dyn Warehouse>,
    target: &mut MysqlTarget,
    summary: &mut StepSummary,
) -> Result<()> {
    let scope = DateScope::of(config, window);
    let (wh, my) = both_checksums(scope, &mut warehouse, target).await?;
    let dates: Vec<NaiveDate> = wh
        .keys()
        .chain(my.keys())
        .copied()
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let table = drift(&dates, &wh, &my);
    // Changes the feed holds past MySQL's offset are not applied yet (another run's
    // dedup may land between an export and its reconcile): pending, not drift.
    let offset = target.offset().await?.map(|stored| stored.offset);
    let pending = warehouse.dates_changed_after(offset)?;
    if let DateScope::All = scope {
        // Every event date was compared, not a window.
        summary.window = None;
    }
    summary.report.push(format!(
        "{:<12} {:>12} {:>12} {:>26} {:>26}  status",
        "event_date", "wh_rows", "mysql_rows", "wh_checksum", "mysql_checksum"
    ));
    let (mut drifting, mut waiting) = (Vec::new(), Vec::new());
    for line in &table {
        let state = if line.warehouse == line.mysql {
            "ok"
        } else if pending.contains(&line.event_date) {
            waiting.push(line.event_date);
            "pending"
        } else {
            drifting.push(line.event_date);
            "DRIFT"
        };
        summary.report.push(format!(
            "{:<12} {:>12} {:>12} {:>26} {:>26}  {state}",
            line.event_date.to_string(),
            line.warehouse.rows,
            line.mysql.rows,
            line.warehouse.checksum,
            line.mysql.checksum,
        ));
    }
    if !waiting.is_empty() {
        tracing::info!(dates = ?waiting, "these dates have changes the next export applies");
    }
    summary.counts.rows_read = table.iter().map(|l| l.warehouse.rows).sum();
    summary.status = if drifting.is_empty() {
        Status::Ok
    } else {
        Status::Drift
    };
    if !drifting.is_empty() {
        tracing::error!(dates = ?drifting, "warehouse and MySQL differ");
    }
    summary.detail("mode", "reconcile");
    summary.detail("dates", table.len());
    summary.detail("drift_dates", drifting);
    summary.detail("pending_dates", waiting);
    Ok(())
}

/// Streams a selection from the warehouse on its own thread (the warehouse is blocking)
/// while MySQL writes run on the caller's: reads and writes overlap, and one batch waits
/// in between (the reader outpaces MySQL, so one is enough to keep it busy; each batch
/// held costs memory outside DuckDB's limit). `prepare` runs on the reader's thread too,
/// so what can be done to a batch before it loads is done while the previous one loads.
struct WarehouseReader<T> {
    rx: tokio::sync::mpsc::Receiver<Result<T>>,
    thread: std::thread::JoinHandle<Box<dyn Warehouse>>,
}

impl<T: Send + 'static> WarehouseReader<T> {
    fn spawn(
        warehouse: Box<dyn Warehouse>,
        selection: ChangeSelection,
        batch_rows: usize,
        prepare: fn(ChangeBatch) -> Result<T>,
    ) -> Self {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<T>>(1);
        let thread = std::thread::spawn(move || {
            let mut warehouse = warehouse;
            let streamed = warehouse.stream_changes(&selection, batch_rows, &mut |b| {
                // A batch that cannot be prepared ends the read: its error goes on, no more.
                let prepared = prepare(b);
                let failed = prepared.is_err();
                Ok(tx.blocking_send(prepared).is_ok() && !failed)
            });
            if let Err(e) = streamed {
                let _ = tx.blocking_send(Err(e));
            }
            warehouse
        });
        WarehouseReader { rx, thread }
    }

    async fn next(&mut self) -> Option<Result<T>> {
        self.rx.recv().await
    }

    /// Waits for the reader and hands the warehouse back.
    fn finish(self) -> Result<Box<dyn Warehouse>> {
        drop(self.rx);
        self.thread
            .join()
            .map_err(|_| PipelineError::Internal("the warehouse reader thread panicked".into()))
    }
}

/// What one re-sync transaction did.
enum Resynced {
    /// Committed: (upserted, deleted, batches, rows read).
    Done(u64, u64, u64, u64),
    /// Rolled back: these dates would lose more served rows than allowed (date, rows it
    /// would delete).
    Refused(Vec<(NaiveDate, u64)>),
}

/// Re-syncs event dates in one MySQL transaction: upserts every warehouse row of them
/// that is missing or differs, then deletes the rows the warehouse does not hold, unless
/// that would delete more of a date than `guard` allows (dates in `exempt` excepted):
/// then nothing is kept and the dates are named. Hands the warehouse back.
async fn resync(
    config: &ExportConfig,
    warehouse: Box<dyn Warehouse>,
    target: &mut MysqlTarget,
    dates: &[NaiveDate],
    served: &BTreeMap<NaiveDate, DateChecksum>,
    exempt: &BTreeSet<NaiveDate>,
    warehouse_rows: u64,
) -> (Result<Resynced>, Option<Box<dyn Warehouse>>) {
    if let Err(e) = target.begin_resync().await {
        return (Err(e), Some(warehouse));
    }
    let mut progress = Progress::with_period(
        "export-mysql",
        "rows re-synced",
        Some(warehouse_rows),
        config.progress,
    );
    let mut reader = WarehouseReader::spawn(
        warehouse,
        ChangeSelection::Dates(dates.to_vec()),
        config.batch_rows,
        Ok,
    );
    let (mut upserted, mut batches, mut rows) = (0, 0, 0);
    let mut failed = None;
    loop {
        let batch = match target.alive_while(reader.next()).await {
            Ok(Some(batch)) => batch,
            Ok(None) => break,
            Err(e) => {
                failed = Some(e);
                break;
            }
        };
        let applied = match batch {
            Ok(batch) => target
                .apply_resync(&batch)
                .await
                .map(|n| (n, batch.num_rows())),
            Err(e) => Err(e),
        };
        match applied {
            Ok((n, read)) => {
                upserted += n;
                batches += 1;
                rows += read as u64;
                progress.advance(read as u64);
            }
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let warehouse = match reader.finish() {
        Ok(w) => w,
        Err(e) => return (Err(failed.unwrap_or(e)), None),
    };
    if let Some(e) = failed {
        return (Err(e), Some(warehouse));
    }
    progress.finish();
    let outcome = async {
        let unknown = target.count_unknown(dates).await?;
        let over: Vec<(NaiveDate, u64)> = unknown
            .into_iter()
            .filter(|(d, deleting)| {
                !exempt.contains(d)
                    && config
                        .resync
                        .forbids(served.get(d).map_or(0, |c| c.rows), *deleting)
            })
            .collect();
        if !over.is_empty() {
            target.rollback().await;
            return Ok(Resynced::Refused(over));
        }
        let deleted = target.delete_unknown(dates).await?;
        target.commit_resync().await?;
        Ok(Resynced::Done(upserted, deleted, batches, rows))
    }
    .await;
    (outcome, Some(warehouse))
}

/// Reads the table's offset and checks it belongs to this warehouse's feed: a feed
/// applied after another feed's offset would skip changes and leave the other's rows
/// behind. With `--full-refresh` the table moves to this feed (from its start, a full
/// re-sync following); otherwise the run is refused. Returns where the feed is read from.
async fn offset_in_this_feed(
    config: &ExportConfig,
    warehouse: &mut dyn Warehouse,
    target: &mut MysqlTarget,
) -> Result<Option<ota_warehouse::FeedOffset>> {
    let origin = warehouse.feed_origin()?;
    let feed_id = origin.map(feed_name);
    target.feed_from(feed_id.clone());
    let Some(StoredOffset {
        offset,
        feed_id: stored,
    }) = target.offset().await?
    else {
        return Ok(None);
    };
    let (Some(origin), Some(ours)) = (origin, feed_id) else {
        // No dedup run yet: no feed to apply, nothing to compare.
        return Ok(Some(offset));
    };
    // An offset saved without a feed id is this feed's if it is not older than the feed
    // (every position in a feed is at or after its first change).
    let theirs = match stored {
        Some(theirs) => theirs,
        None if offset.changed_at >= origin => {
            target.adopt_feed().await?;
            return Ok(Some(offset));
        }
        None => "an older one".to_string(),
    };
    if theirs == ours {
        return Ok(Some(offset));
    }
    if !config.full_refresh {
        return Err(PipelineError::Config(format!(
            "MySQL table {} follows the change feed of another warehouse (feed {theirs}), \
             not the one of {} (feed {ours}): a new warehouse or a rebuilt file. Its changes \
             after the stored offset would skip rows and leave the other's rows behind, so \
             nothing was applied. To serve this warehouse from now on, run export-mysql \
             --full-refresh: it applies this feed from its start and re-syncs every date \
             (dates this warehouse holds nothing of are kept and reported)",
            config.mysql.table,
            warehouse.url()
        )));
    }
    tracing::warn!(
        table = %config.mysql.table,
        from = %theirs,
        to = %ours,
        "the table moves to this warehouse's change feed: applying it from its start, then re-syncing every date"
    );
    target.restart_offset().await?;
    Ok(None)
}

/// How a feed is named in the offsets table: when it began.
fn feed_name(origin: i64) -> String {
    chrono::DateTime::from_timestamp_micros(origin).map_or_else(
        || origin.to_string(),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    )
}

async fn export(
    config: &ExportConfig,
    window: DateWindow,
    mut warehouse: Box<dyn Warehouse>,
    target: &mut MysqlTarget,
    gate: &dyn CommitGate,
    summary: &mut StepSummary,
) -> Result<()> {
    let start_offset = offset_in_this_feed(config, warehouse.as_mut(), target).await?;
    let mut offset = start_offset;
    let (mut upserted, mut deleted, mut batches, mut rows) = (0u64, 0u64, 0u64, 0u64);
    tracing::info!(mysql = %target.masked_url(), offset = ?offset, "exporting the change feed");
    let feed_length = warehouse.feed_length(start_offset)?;

    let mut reader = WarehouseReader::spawn(
        warehouse,
        ChangeSelection::After(start_offset),
        config.batch_rows,
        |batch| Ok((split_changes(&batch), batch)),
    );
    // Where the backend can count the feed cheaply, progress shows a total and time left.
    let mut progress = Progress::with_period(
        "export-mysql",
        "change rows applied",
        feed_length,
        config.progress,
    );
    while let Some(batch) = target.alive_while(reader.next()).await? {
        let (changes, batch) = batch?;
        let next = batch.offsets().last().ok_or_else(|| {
            PipelineError::Internal(
                "an empty change batch, or one whose last row has no event key".into(),
            )
        })?;
        let (u, d) = target.apply_changes(&batch, &changes, next, gate).await?;
        offset = Some(next);
        upserted += u;
        deleted += d;
        batches += 1;
        rows += batch.num_rows() as u64;
        tracing::debug!(batch = batches, rows = batch.num_rows(), "batch committed");
        progress.advance(batch.num_rows() as u64);
    }
    let mut warehouse = reader.finish()?;
    progress.finish();

    let staged = warehouse.staged_files(config.warehouse.run.staging_key())?;
    let mut resynced = Vec::new();
    let mut held: Vec<HeldDate> = Vec::new();
    if config.window.is_named() || config.full_refresh {
        let scope = DateScope::of(config, window);
        let (wh, my) = both_checksums(scope, &mut warehouse, target).await?;
        let rows_of = |sums: &BTreeMap<NaiveDate, DateChecksum>, d: &NaiveDate| {
            sums.get(d).map_or(0, |c| c.rows)
        };
        let held_date = |d: NaiveDate, reason: String| HeldDate {
            event_date: d,
            mysql_rows: rows_of(&my, &d),
            warehouse_rows: rows_of(&wh, &d),
            reason,
        };
        let mut drifting: Vec<NaiveDate> = resync_dates(scope, &wh, &my)
            .into_iter()
            .filter(|d| {
                wh.get(d).copied().unwrap_or_default() != my.get(d).copied().unwrap_or_default()
            })
            .collect();
        // A date the warehouse holds nothing of is unknown to it, not known to be empty.
        let absent: BTreeSet<NaiveDate> = drifting
            .iter()
            .copied()
            .filter(|d| rows_of(&wh, d) == 0)
            .collect();
        if !config.resync.delete_absent_dates {
            drifting.retain(|d| !absent.contains(d));
            held.extend(absent.iter().map(|d| {
                held_date(
                    *d,
                    "the warehouse holds no row of this date: it may never have loaded it, \
                     so MySQL keeps what it serves; --delete-absent-dates deletes them"
                        .into(),
                )
            }));
        }
        while !drifting.is_empty() {
            tracing::info!(dates = ?drifting, "re-syncing event dates that differ from the warehouse");
            let warehouse_rows = drifting.iter().map(|d| rows_of(&wh, d)).sum();
            let (outcome, back) = resync(
                config,
                warehouse,
                target,
                &drifting,
                &my,
                &absent,
                warehouse_rows,
            )
            .await;
            let outcome = match outcome {
                Ok(outcome) => outcome,
                Err(e) => {
                    target.rollback().await;
                    return Err(e);
                }
            };
            warehouse = back.ok_or_else(|| {
                PipelineError::Internal("the warehouse reader thread panicked".into())
            })?;
            match outcome {
                Resynced::Done(u, d, b, r) => {
                    upserted += u;
                    deleted += d;
                    batches += b;
                    rows += r;
                    resynced = std::mem::take(&mut drifting);
                }
                Resynced::Refused(over) => {
                    for (d, deleting) in over {
                        drifting.retain(|x| *x != d);
                        held.push(held_date(
                            d,
                            format!(
                                "re-syncing it would delete {deleting} of the {} rows MySQL \
                                 serves, more than --max-resync-delete-pct {}: MySQL keeps \
                                 them; check the warehouse, or raise the limit if it is right",
                                rows_of(&my, &d),
                                config.resync.max_delete_pct
                            ),
                        ));
                    }
                }
            }
        }
    }
    held.sort_by_key(|h| h.event_date);
    for h in &held {
        tracing::error!(date = %h.event_date, mysql_rows = h.mysql_rows, warehouse_rows = h.warehouse_rows, reason = %h.reason, "event date held: not re-synced");
    }

    summary.counts.rows_read = rows;
    summary.counts.rows_written = upserted + deleted;
    summary.counts.batches = batches;
    summary.counts.files = staged.as_ref().map_or(0, |s| s.files.len() as u64);
    let no_files = staged.as_ref().is_none_or(|s| s.files.is_empty());
    if no_files && rows == 0 {
        summary.status = Status::NoData;
    }
    if !held.is_empty() {
        summary.status = Status::Partial;
    }
    summary.detail(
        "mode",
        if config.full_refresh {
            "full-refresh"
        } else if config.window.is_named() {
            "backfill"
        } else {
            "incremental"
        },
    );
    summary.detail("upserted", upserted);
    summary.detail("deleted", deleted);
    summary.detail("batches", batches);
    summary.detail("offset", offset);
    summary.detail("resynced_dates", resynced);
    summary.detail("held_dates", &held);
    summary.detail("table", &config.mysql.table);
    Ok(())
}
