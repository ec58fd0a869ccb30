//! load-raw: type the rows of the staged files that changed since they were last loaded
//! and replace their rows in the raw table, all in one transaction.

use std::collections::{BTreeMap, BTreeSet};
use std::fs::File;
use std::time::Duration;

use arrow::array::RecordBatchReader;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::progress::{Progress, estimated_total};
use crate::summary::{Status, StepSummary};
use ota_core::error::{PipelineError, Result};
use ota_core::typed_batch::{ColumnMapping, Lineage, TypedBatch, type_batch};
use ota_core::window::RequestedWindow;
use ota_lake::{Lake, LakeConfig, LakeFile};
use ota_warehouse::{Access, QuarantineKind, QuarantinedFile, RawSource, WarehouseConfig};

/// Rows per Arrow batch read from a file: about 12 MB typed. A few batches are in flight
/// at once (decoded, typed, queued, appended), outside DuckDB's memory limit.
pub const READ_BATCH_ROWS: usize = 16_384;

#[derive(Debug, Clone)]
pub struct LoadConfig {
    pub window: RequestedWindow,
    pub lake: LakeConfig,
    pub warehouse: WarehouseConfig,
    pub shrink: ShrinkGuard,
    pub quality: QualityLimits,
    /// How often progress is logged (`None`: never).
    pub progress: Option<Duration>,
}

/// The default `--max-rejected-pct`. Sources reject well under 1% of their rows (a
/// missing request_id here and there); a file with more than a tenth unkeyable is a broken
/// export or a changed schema, and loading what is left of it would shrink its days
/// downstream without anyone deciding so.
pub const DEFAULT_MAX_REJECTED_PCT: u8 = 10;

/// What load-raw does with a file whose content is of doubtful quality: each limit
/// quarantines the file (loading the others) instead of letting it through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QualityLimits {
    /// The largest share of a file's rows, in percent, that may be rejected (unkeyable)
    /// before the file is quarantined (`--max-rejected-pct`; 100: no limit).
    pub max_rejected_pct: u8,
    /// A file with columns the contract does not know: loaded with a warning, or held.
    pub unknown_columns: UnknownColumns,
    /// Rows whose event date lies more than this many days from their file's day are
    /// rejected (`--max-event-day-distance`).
    pub max_event_day_distance: u32,
}

/// The default `--max-event-day-distance`: a month covers events an app queued offline
/// for days and re-deliveries of late data, while a timestamp of the wrong unit (years
/// off) or a broken clock is rejected instead of touching a partition of its own: one
/// file can then reach at most 61 event dates (BigQuery caps a job at 4,000 partitions).
pub const DEFAULT_MAX_EVENT_DAY_DISTANCE: u32 = 30;

impl Default for QualityLimits {
    fn default() -> Self {
        QualityLimits {
            max_rejected_pct: DEFAULT_MAX_REJECTED_PCT,
            unknown_columns: UnknownColumns::Warn,
            max_event_day_distance: DEFAULT_MAX_EVENT_DAY_DISTANCE,
        }
    }
}

impl QualityLimits {
    /// Why a file of `rows` rows, `rejected` of them rejected, must not load, if it must not.
    pub fn rejected_refusal(&self, rejected: u64, rows: u64) -> Option<String> {
        // Compared in whole rows: rejected/rows > pct/100.
        if rows == 0
            || u128::from(rejected) * 100 <= u128::from(rows) * u128::from(self.max_rejected_pct)
        {
            return None;
        }
        Some(format!(
            "{rejected} of its {rows} rows were rejected ({}%, more than --max-rejected-pct {}): \
             refused, nothing was replaced; the log gives the first reason; raise the \
             limit if the file is right",
            rejected * 100 / rows,
            self.max_rejected_pct
        ))
    }
}

/// What load-raw does with a file that has columns the event contract does not know.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[cfg_attr(feature = "clap", derive(clap::ValueEnum))]
pub enum UnknownColumns {
    /// Load the known columns and log a warning naming the others.
    Warn,
    /// Hold the file in quarantine until the contract knows the columns or the setting
    /// changes (a new column may mean the source changed meaning under the same name).
    Quarantine,
}

/// What load-raw does with a re-delivered file that holds far fewer rows than the
/// version it replaces (an export cut short, an empty file): its rows would silently
/// vanish from every table downstream, so it is refused unless allowed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShrinkGuard {
    /// Load such files anyway (`--allow-shrink`).
    pub allow: bool,
    /// The largest share of rows, in percent, a new version may lose (`--max-shrink-pct`).
    pub max_loss_pct: u8,
}

impl Default for ShrinkGuard {
    fn default() -> Self {
        ShrinkGuard {
            allow: false,
            max_loss_pct: 50,
        }
    }
}

impl ShrinkGuard {
    /// Whether `landing` rows may replace the `before` rows a file's loaded version
    /// landed: a version that loses more than the limit (or lands none) must not.
    pub fn forbids(&self, before: u64, landing: u64) -> bool {
        if self.allow || before == 0 || landing >= before {
            return false;
        }
        // Compared in whole rows: lost/before > pct/100.
        let lost = before - landing;
        landing == 0 || u128::from(lost) * 100 > u128::from(before) * u128::from(self.max_loss_pct)
    }

    /// Why a version holding `rows` rows in all must not replace one that landed
    /// `before`, if it must not (checked on the file's footer, before reading it).
    pub fn refusal(&self, before: u64, rows: u64) -> Option<String> {
        self.forbids(before, rows).then(|| {
            format!(
                "this version holds {rows} rows where the loaded one landed {before} \
                 (-{}%, more than --max-shrink-pct {}): refused, nothing was replaced; \
                 pass --allow-shrink if the smaller file is right",
                loss_pct(before, rows),
                self.max_loss_pct
            )
        })
    }

    /// Why a version whose typing kept `landing` of its rows (`rejected` rejected) must
    /// not replace one that landed `before`, if it must not: a file of as many rows as
    /// before, none of them loadable, would otherwise empty its day downstream.
    pub fn refusal_after_typing(&self, before: u64, landing: u64, rejected: u64) -> Option<String> {
        self.forbids(before, landing).then(|| {
            format!(
                "only {landing} of its rows could be loaded ({rejected} rejected; the log \
                 gives the first reason) where the loaded version landed {before} \
                 (-{}%, more than --max-shrink-pct {}): refused, nothing was replaced; \
                 pass --allow-shrink if the smaller day is right",
                loss_pct(before, landing),
                self.max_loss_pct
            )
        })
    }
}

fn loss_pct(before: u64, now: u64) -> u64 {
    before.saturating_sub(now) * 100 / before.max(1)
}

/// Reads daily Parquet files from the lake and types their rows.
pub struct ParquetRawSource<'a> {
    lake: &'a dyn Lake,
    loaded_at: i64,
    shrink: ShrinkGuard,
    quality: QualityLimits,
    /// Rows the versions loaded before landed, by URI.
    rows_before: BTreeMap<String, u64>,
    pub rows_read: u64,
    pub unknown_columns: BTreeSet<String>,
    progress: Progress,
    /// Bytes of all the files this load reads, and rows and bytes of those opened so far:
    /// the total rows are estimated from them until every footer has been read.
    bytes_to_read: u64,
    rows_opened: u64,
    bytes_opened: u64,
}

impl<'a> ParquetRawSource<'a> {
    pub fn new(lake: &'a dyn Lake, loaded_at: i64) -> Self {
        ParquetRawSource {
            lake,
            loaded_at,
            shrink: ShrinkGuard {
                allow: true,
                max_loss_pct: 100,
            },
            // No limits until the caller sets them, like the shrink guard above.
            quality: QualityLimits {
                max_rejected_pct: 100,
                unknown_columns: UnknownColumns::Warn,
                max_event_day_distance: u32::MAX,
            },
            rows_before: BTreeMap::new(),
            rows_read: 0,
            unknown_columns: BTreeSet::new(),
            progress: Progress::with_period("load-raw", "rows", None, None),
            bytes_to_read: 0,
            rows_opened: 0,
            bytes_opened: 0,
        }
    }

    /// Logs progress through `files` (rows done of the total, rate, time left).
    pub fn with_progress(mut self, files: &[LakeFile], period: Option<Duration>) -> Self {
        self.progress = Progress::with_period("load-raw", "rows typed and appended", None, period);
        self.bytes_to_read = files.iter().map(|f| f.size).sum();
        self
    }

    /// Logs the closing progress line.
    pub fn finish_progress(&self) {
        self.progress.finish();
    }

    /// Quarantines files beyond the quality limits.
    pub fn with_quality_limits(mut self, quality: QualityLimits) -> Self {
        self.quality = quality;
        self
    }

    /// Refuses versions that would land fewer rows than `shrink` allows, against the rows
    /// the versions loaded before landed: once on the footer's row count, and again after
    /// typing on the rows that are not rejected.
    pub fn with_shrink_guard(
        mut self,
        shrink: ShrinkGuard,
        rows_before: BTreeMap<String, u64>,
    ) -> Self {
        self.shrink = shrink;
        self.rows_before = rows_before;
        self
    }
}

impl RawSource for ParquetRawSource<'_> {
    fn read(
        &mut self,
        file: &LakeFile,
        sink: &mut dyn FnMut(TypedBatch) -> Result<()>,
    ) -> Result<()> {
        let bad = |reason: String| PipelineError::BadFile {
            uri: file.uri.clone(),
            reason,
        };
        // The file must still be the version stage-files recorded.
        match self.lake.version_of(&file.uri)? {
            Some(now) if now.size == file.size && now.generation == file.generation => {}
            Some(_) => {
                return Err(bad(
                    "it changed since stage-files ran; run stage-files again".into(),
                ));
            }
            None => {
                return Err(bad(
                    "it disappeared since stage-files ran; run stage-files again".into(),
                ));
            }
        }
        let unreadable = |reason: String| PipelineError::BadContent {
            uri: file.uri.clone(),
            reason,
            kind: QuarantineKind::Unreadable,
        };
        let copy = self.lake.local_copy(file)?;
        let handle = File::open(copy.path()).map_err(|e| PipelineError::io(copy.path(), e))?;
        let builder = catch_decoder_panic(|| ParquetRecordBatchReaderBuilder::try_new(handle))
            .map_err(|panic| {
                unreadable(format!("the Parquet decoder failed on its footer: {panic}"))
            })?
            .map_err(|e| unreadable(format!("not a readable Parquet file: {e}")))?;
        if let Some(&before) = self.rows_before.get(&file.uri) {
            let rows = builder.metadata().file_metadata().num_rows().max(0) as u64;
            if let Some(reason) = self.shrink.refusal(before, rows) {
                return Err(PipelineError::BadContent {
                    uri: file.uri.clone(),
                    reason,
                    kind: QuarantineKind::Shrunk,
                });
            }
        }
        self.rows_opened += builder.metadata().file_metadata().num_rows().max(0) as u64;
        self.bytes_opened += file.size;
        self.progress.set_total(estimated_total(
            self.rows_opened,
            self.bytes_opened,
            self.bytes_to_read.saturating_sub(self.bytes_opened),
        ));
        let reader = catch_decoder_panic(|| builder.with_batch_size(READ_BATCH_ROWS).build())
            .map_err(|panic| unreadable(format!("the Parquet decoder failed on it: {panic}")))?
            .map_err(|e| unreadable(format!("not a readable Parquet file: {e}")))?;
        let mapping = ColumnMapping::new(&reader.schema());
        for required in ["request_id", "timestamp"] {
            if mapping.missing.contains(&required) {
                return Err(unreadable(format!(
                    "it has no {required} column, so no row can be keyed"
                )));
            }
        }
        if self.quality.unknown_columns == UnknownColumns::Quarantine && !mapping.unknown.is_empty()
        {
            return Err(PipelineError::BadContent {
                uri: file.uri.clone(),
                reason: format!(
                    "it has columns the event contract does not know ({}) and \
                     --unknown-columns is quarantine: held until the contract knows them \
                     or a run allows them",
                    mapping.unknown.join(", ")
                ),
                kind: QuarantineKind::UnknownColumns,
            });
        }
        for name in &mapping.unknown {
            if self.unknown_columns.insert(name.clone()) {
                tracing::warn!(column = %name, file = %file.uri, "ignoring a column the event contract does not know");
            }
        }
        let lineage = Lineage {
            source_day: ota_core::typing::epoch_day_of_date(file.day),
            source_file: file.uri.clone(),
            ingested_at: file.ingested_at,
            loaded_at: self.loaded_at,
        };
        // Decoding and typing run on their own thread, a couple of batches ahead of the
        // warehouse appends on this one: the two are the step's main costs.
        let (mapping, lineage, unreadable) = (&mapping, &lineage, &unreadable);
        let max_distance = self.quality.max_event_day_distance;
        let progress = &mut self.progress;
        let rows = std::thread::scope(|scope| -> Result<(i64, u64)> {
            let (tx, rx) = std::sync::mpsc::sync_channel::<Result<(TypedBatch, i64)>>(2);
            scope.spawn(move || {
                let mut reader = reader;
                let mut row = 0i64;
                loop {
                    let batch = match next_decoded(&mut reader) {
                        Ok(Some(batch)) => batch,
                        Ok(None) => break,
                        Err(panic) => {
                            let _ = tx.send(Err(unreadable(format!(
                                "the Parquet decoder failed on it after row {row}: {panic}"
                            ))));
                            break;
                        }
                    };
                    let typed = batch
                        .map_err(|e| unreadable(format!("corrupt data after row {row}: {e}")))
                        .and_then(|b| {
                            let n = b.num_rows() as i64;
                            let typed = type_batch(&b, mapping, lineage, row)
                                .and_then(|t| t.reject_far_from(lineage.source_day, max_distance))
                                .map_err(|e| {
                                    unreadable(format!("rows after {row} cannot be typed: {e}"))
                                })?;
                            Ok((typed, n))
                        });
                    let stop = typed.is_err();
                    if let Ok((_, n)) = &typed {
                        row += n;
                    }
                    // A closed channel: the appending side failed and stopped listening.
                    if tx.send(typed).is_err() || stop {
                        break;
                    }
                }
            });
            let (mut rows, mut rejected) = (0i64, 0u64);
            for typed in rx {
                let (typed, n) = typed?;
                if rejected == 0
                    && let Some(first) = typed.rejected.first()
                {
                    tracing::warn!(file = %file.uri, row = first.source_row, reason = %first.reason, "first rejected row");
                }
                rejected += typed.rejected.len() as u64;
                sink(typed)?;
                rows += n;
                progress.advance(n as u64);
            }
            Ok((rows, rejected))
        })?;
        let (rows, rejected) = rows;
        if rejected > 0 {
            tracing::warn!(
                file = %file.uri,
                rejected,
                rows,
                pct = format!("{:.2}", rejected as f64 * 100.0 / rows.max(1) as f64),
                "rows rejected (kept in raw_rejects with the reason)"
            );
        }
        if let Some(&before) = self.rows_before.get(&file.uri) {
            let landing = (rows.max(0) as u64).saturating_sub(rejected);
            if let Some(reason) = self.shrink.refusal_after_typing(before, landing, rejected) {
                return Err(PipelineError::BadContent {
                    uri: file.uri.clone(),
                    reason,
                    kind: QuarantineKind::Shrunk,
                });
            }
        }
        if let Some(reason) = self.quality.rejected_refusal(rejected, rows.max(0) as u64) {
            return Err(PipelineError::BadContent {
                uri: file.uri.clone(),
                reason,
                kind: QuarantineKind::Rejected,
            });
        }
        self.rows_read += rows as u64;
        Ok(())
    }
}

/// Runs a call into the Parquet decoder, turning a panic in it into the panic's message:
/// a file malformed in a way the decoder does not check for is that file's fault
/// (quarantined as unreadable), not a crash of the step on every run.
fn catch_decoder_panic<T>(decode: impl FnOnce() -> T) -> std::result::Result<T, String> {
    std::panic::catch_unwind(std::panic::AssertUnwindSafe(decode)).map_err(|panic| {
        panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".into())
    })
}

/// The next batch of a decoder, with a panic inside it caught (see [`catch_decoder_panic`]).
fn next_decoded<I: Iterator>(reader: &mut I) -> std::result::Result<Option<I::Item>, String> {
    catch_decoder_panic(|| reader.next())
}

pub fn load_raw(config: &LoadConfig) -> Result<StepSummary> {
    let lake = config.lake.open()?;
    let mut warehouse = config.warehouse.open(Access::ReadWrite, "load-raw")?;
    let run_key = config.warehouse.run.staging_key();
    let staged = warehouse.staged_files(run_key)?.ok_or_else(|| {
        PipelineError::Config(if run_key.is_empty() {
            "nothing is staged in the warehouse: run stage-files first".into()
        } else {
            format!("nothing is staged in the warehouse for run {run_key}: run stage-files first, with the same --run-id")
        })
    })?;
    if config.window.is_pinned() {
        let asked = config.window.window;
        if asked != staged.window {
            return Err(PipelineError::Config(format!(
                "the staged window is {}, not {asked}: run stage-files for {asked} first",
                staged.window
            )));
        }
    }
    let mut summary = StepSummary::new("load-raw", Some(staged.window));
    summary.counts.files = staged.files.len() as u64;
    if staged.files.is_empty() {
        summary.status = Status::NoData;
        summary.detail("files_loaded", Vec::<String>::new());
        summary.detail("affected_dates", Vec::<String>::new());
        return Ok(summary);
    }
    let uris: Vec<String> = staged.files.iter().map(|f| f.uri.clone()).collect();
    let ledger = warehouse.ledger_entries(&uris)?;
    let (skipped, changed): (Vec<_>, Vec<_>) = staged
        .files
        .iter()
        .cloned()
        .partition(|f| ledger.get(&f.uri).is_some_and(|e| e.matches(f)));
    for f in &skipped {
        tracing::info!(file = %f.uri, "unchanged since it was loaded; skipping");
    }
    // An unreadable version stays out until a new one lands; a shrunk one is checked
    // again against this run's limits (cheap: the row count is in the file's footer).
    let quarantine = warehouse.quarantined(&uris)?;
    let (held, mut changed): (Vec<_>, Vec<_>) = changed.into_iter().partition(|f| {
        quarantine
            .get(&f.uri)
            .is_some_and(|q| q.is_version_of(f) && q.kind == QuarantineKind::Unreadable)
    });
    let mut quarantined: Vec<QuarantinedFile> = held
        .iter()
        .filter_map(|f| quarantine.get(&f.uri).cloned())
        .collect();
    for q in &quarantined {
        tracing::warn!(file = %q.uri, reason = %q.reason, "still quarantined; a new version of it will load");
    }
    let loaded_at = chrono::Utc::now().timestamp_micros();
    let rows_before: BTreeMap<String, u64> = ledger
        .iter()
        .map(|(uri, version)| (uri.clone(), version.rows_loaded))
        .collect();
    // One transaction for all files; a file whose content cannot be loaded is quarantined
    // and the others are loaded again without it.
    let (outcome, source) = loop {
        let mut source = ParquetRawSource::new(lake.as_ref(), loaded_at)
            .with_shrink_guard(config.shrink, rows_before.clone())
            .with_quality_limits(config.quality)
            .with_progress(&changed, config.progress);
        match warehouse.load_raw(&changed, loaded_at, &mut source) {
            Ok(outcome) => break (outcome, source),
            Err(PipelineError::BadContent { uri, reason, kind })
                if changed.iter().any(|f| f.uri == uri) =>
            {
                let at = chrono::Utc::now().timestamp_micros();
                let position = changed.iter().position(|f| f.uri == uri).unwrap_or(0);
                let file = changed.remove(position);
                warehouse.quarantine(&file, kind, &reason, at)?;
                tracing::error!(file = %uri, %reason, "quarantined; loading the other files without it");
                quarantined.push(QuarantinedFile {
                    uri,
                    size: file.size,
                    checksum: file.checksum,
                    kind,
                    reason,
                    quarantined_at: at,
                });
            }
            Err(e) => return Err(e),
        }
    };
    let released: Vec<String> = changed
        .iter()
        .filter(|f| quarantine.contains_key(&f.uri))
        .map(|f| f.uri.clone())
        .collect();
    warehouse.release_quarantine(&released)?;
    source.finish_progress();
    tracing::info!(
        files = changed.len(),
        rows = outcome.rows_written,
        rejected = outcome.rejected,
        "loaded raw rows"
    );

    summary.counts.rows_read = source.rows_read;
    summary.counts.rejected = outcome.rejected;
    summary.counts.rows_written = outcome.rows_written;
    summary.detail(
        "files_loaded",
        changed.iter().map(|f| f.uri.as_str()).collect::<Vec<_>>(),
    );
    summary.detail(
        "files_skipped",
        skipped.iter().map(|f| f.uri.as_str()).collect::<Vec<_>>(),
    );
    summary.detail("rows_replaced", outcome.rows_replaced);
    summary.detail("affected_dates", &outcome.affected_dates);
    summary.detail("unknown_columns", &source.unknown_columns);
    if !quarantined.is_empty() {
        summary.status = Status::Partial;
    }
    summary.detail("files_quarantined", &quarantined);
    summary.record_warehouse(warehouse.as_mut());
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shrink_guard_refuses_empty_and_drastically_smaller_versions() {
        let guard = ShrinkGuard::default();
        assert!(guard.refusal(1_000, 0).is_some());
        assert!(guard.refusal(1_000, 499).is_some());
        assert!(guard.refusal(1_000, 500).is_none());
        assert!(guard.refusal(1_000, 2_000).is_none());
        // Nothing loaded before (or an empty version before): nothing to lose.
        assert!(guard.refusal(0, 0).is_none());
        let strict = ShrinkGuard {
            allow: false,
            max_loss_pct: 0,
        };
        assert!(strict.refusal(10, 9).is_some());
        let allowed = ShrinkGuard {
            allow: true,
            ..guard
        };
        assert!(allowed.refusal(1_000, 0).is_none());
        let message = guard.refusal(1_000, 0).unwrap_or_default();
        assert!(message.contains("--allow-shrink") && message.contains("1000"));
    }

    #[test]
    fn after_typing_the_guard_counts_the_rows_that_would_land_not_those_read() {
        let guard = ShrinkGuard::default();
        // As many rows as before, every one rejected: nothing would land.
        let message = guard
            .refusal_after_typing(1_000, 0, 1_000)
            .unwrap_or_default();
        assert!(
            message.contains("1000 rejected") && message.contains("--allow-shrink"),
            "{message}"
        );
        assert!(guard.refusal_after_typing(1_000, 499, 501).is_some());
        assert!(guard.refusal_after_typing(1_000, 500, 500).is_none());
        let allowed = ShrinkGuard {
            allow: true,
            ..guard
        };
        assert!(allowed.refusal_after_typing(1_000, 0, 1_000).is_none());
    }

    #[test]
    fn a_panic_in_the_decoder_is_the_files_error_not_the_steps_end() {
        struct Exploding(u32);
        impl Iterator for Exploding {
            type Item = u32;
            fn next(&mut self) -> Option<u32> {
                self.0 += 1;
                if self.0 > 2 {
                    panic!("index out of bounds: the len is 3 but the index is 7");
                }
                Some(self.0)
            }
        }
        let mut reader = Exploding(0);
        assert_eq!(next_decoded(&mut reader), Ok(Some(1)));
        assert_eq!(next_decoded(&mut reader), Ok(Some(2)));
        let error = next_decoded(&mut reader).unwrap_err();
        assert!(error.contains("index out of bounds"), "{error}");
    }

    #[test]
    fn the_default_rejected_limit_holds_a_file_with_a_tenth_unkeyable() {
        let limits = QualityLimits::default();
        assert!(limits.rejected_refusal(10, 100).is_none());
        assert!(limits.rejected_refusal(11, 100).is_some());
        assert!(limits.rejected_refusal(1, 1).is_some());
    }
}
