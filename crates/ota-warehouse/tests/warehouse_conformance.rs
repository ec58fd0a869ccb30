//! Warehouse conformance: the same scenarios (dedup order, change feed, tombstones,
//! no-op re-runs, typed values and checksums) against every backend that runs here —
//! the embedded DuckDB always, BigQuery against bqemulator under
//! `scripts/with-emulators.sh` (those tests are ignored otherwise).
//! Rows are typed by the real typing code from small Arrow batches.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, AsArray, Int64Array, RecordBatch, StringArray};
use arrow::datatypes::{DataType, Field, Schema};
use chrono::NaiveDate;
use ota_core::Result;
use ota_core::typed_batch::{ColumnMapping, Lineage, TypedBatch, type_batch};
use ota_lake::LakeFile;
use ota_warehouse::{
    ChangeSelection, FeedOffset, QuarantineKind, RawSource, Warehouse, add_to_checksum, binary_at,
};

mod backends;
use backends::Backend;

const DAY1_NS: i64 = 1_704_067_200_000_000_000; // 2024-01-01T00:00:00Z

/// Source rows by file URI: (request_id, timestamp ns, hotel_name).
struct Files(BTreeMap<String, Vec<(&'static str, i64, &'static str)>>);

impl RawSource for Files {
    fn read(
        &mut self,
        file: &LakeFile,
        sink: &mut dyn FnMut(TypedBatch) -> Result<()>,
    ) -> Result<()> {
        let rows = &self.0[&file.uri];
        let schema = Arc::new(Schema::new(vec![
            Field::new("request_id", DataType::Utf8, true),
            Field::new("timestamp", DataType::Int64, true),
            Field::new("hotel_name", DataType::Utf8, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.2))),
        ];
        let batch = RecordBatch::try_new(schema, cols).expect("batch");
        let lineage = Lineage {
            source_day: file.day.to_epoch_days(),
            source_file: file.uri.clone(),
            ingested_at: file.ingested_at,
            loaded_at: 0,
        };
        sink(type_batch(
            &batch,
            &ColumnMapping::new(&batch.schema()),
            &lineage,
            0,
        )?)
    }
}

fn file(name: &str, ingested_at: i64) -> LakeFile {
    LakeFile {
        uri: format!("file:///lake/{name}"),
        day: NaiveDate::from_ymd_opt(2024, 1, 1).expect("day"),
        size: 1,
        generation: "1".into(),
        checksum: format!("{ingested_at}"),
        ingested_at,
    }
}

/// One change: (op, request_id, hotel_name).
type Change = (String, Option<String>, Option<String>);

/// The change feed after an offset, and the offset it ends at.
fn feed(
    wh: &mut Box<dyn Warehouse>,
    after: Option<FeedOffset>,
) -> (Vec<Change>, Option<FeedOffset>) {
    let mut out = Vec::new();
    let mut last = None;
    wh.stream_changes(&ChangeSelection::After(after), 2, &mut |b| {
        let b = b.record_batch();
        let idx = |n: &str| b.schema().index_of(n).expect(n);
        for i in 0..b.num_rows() {
            let op = b.column(0).as_string::<i32>().value(i).to_string();
            let text = |n: &str| {
                let c = b.column(idx(n));
                (!c.is_null(i)).then(|| c.as_string::<i32>().value(i).to_string())
            };
            out.push((op, text("request_id"), text("hotel_name")));
            let at = b
                .column(1)
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>()
                .value(i);
            let mut key = [0u8; 16];
            key.copy_from_slice(binary_at(b.column(2).as_ref(), i).expect("key"));
            last = Some(FeedOffset {
                changed_at: at,
                event_key: key,
            });
        }
        Ok(true)
    })
    .expect("stream");
    (out, last.or(after))
}

fn dedup_keeps_the_latest_version_and_feeds_changes_in_order(backend: Backend) {
    let mut wh = backend.open();
    let ts = DAY1_NS + 3_600_000_000_000;
    let mut files = Files(BTreeMap::new());
    files.0.insert(
        file("a", 100).uri,
        vec![
            ("r1", ts, "old"),
            ("r1", ts, "dup-later-row"),
            ("r2", ts, "two"),
            ("", ts, "rejected"),
        ],
    );
    files.0.insert(
        file("b", 200).uri,
        vec![("r1", ts, "newer-file"), ("r3", ts + 1_000, "three")],
    );

    let out = wh
        .load_raw(&[file("a", 100), file("b", 200)], 1, &mut files)
        .expect("load");
    assert_eq!(out.rejected, 1);
    assert_eq!(out.rows_written, 5);
    let d = wh.dedup(1_000).expect("dedup");
    assert_eq!(d.duplicates_removed, 2);
    assert_eq!(d.rows_changed, 3);
    let (changes, offset) = feed(&mut wh, None);
    let names: BTreeMap<_, _> = changes
        .iter()
        .map(|(_, r, h)| (r.clone(), h.clone()))
        .collect();
    assert_eq!(
        names[&Some("r1".into())],
        Some("newer-file".into()),
        "latest ingested_at wins"
    );
    assert_eq!(changes.len(), 3);

    // Nothing pending: dedup changes nothing, the feed after the offset is empty.
    assert_eq!(wh.dedup(2_000).expect("dedup").rows_changed, 0);
    let after = feed(&mut wh, offset);
    assert!(after.0.is_empty(), "{after:?} after {offset:?}");

    // File b re-delivered without r3 and with r1 unchanged: r3 becomes a tombstone,
    // r1 keeps its changed_at.
    files
        .0
        .insert(file("b", 300).uri, vec![("r1", ts, "newer-file")]);
    wh.load_raw(&[file("b", 300)], 2, &mut files)
        .expect("reload");
    let d = wh.dedup(3_000).expect("dedup");
    assert_eq!((d.rows_changed, d.rows_deleted), (0, 1));
    let (changes, offset2) = feed(&mut wh, offset);
    assert_eq!(changes, vec![("D".to_string(), None, None)]);
    assert!(offset2 > offset);

    // r3 comes back: its tombstone goes, it is an upsert again; changed_at keeps rising
    // even when the clock goes backwards.
    files
        .0
        .insert(file("c", 400).uri, vec![("r3", ts + 1_000, "three again")]);
    wh.load_raw(&[file("c", 400)], 3, &mut files)
        .expect("load c");
    let d = wh.dedup(10).expect("dedup");
    assert!(d.changed_at.expect("changed_at") > offset2.expect("offset").changed_at);
    let (changes, _) = feed(&mut wh, offset2);
    assert_eq!(
        changes,
        vec![(
            "U".to_string(),
            Some("r3".into()),
            Some("three again".into())
        )]
    );
    let sums = wh.date_checksums(None).expect("checksums");
    assert_eq!(sums.values().map(|s| s.rows).sum::<u64>(), 3);
}

/// The ledger gives back each loaded version as recorded, with when its load began:
/// what lets the local lake skip reading a file it already knows.
fn the_ledger_records_each_loaded_version(backend: Backend) {
    let mut wh = backend.open();
    let ts = DAY1_NS + 3_600_000_000_000;
    let mut files = Files(BTreeMap::new());
    files.0.insert(file("a", 100).uri, vec![("r1", ts, "one")]);
    files.0.insert(file("b", 200).uri, vec![("r2", ts, "two")]);
    let loaded_at = 1_704_070_800_123_456; // 2024-01-01T01:00:00.123456Z
    wh.load_raw(&[file("a", 100), file("b", 200)], loaded_at, &mut files)
        .expect("load");
    let uris = [file("a", 100).uri, file("never-loaded", 1).uri];
    let ledger = wh.ledger_entries(&uris).expect("ledger");
    assert_eq!(ledger.len(), 1, "{ledger:?}");
    let entry = ledger[&uris[0]].clone();
    assert_eq!(
        (
            entry.size,
            entry.generation.as_str(),
            entry.checksum.as_str()
        ),
        (1, "1", "100")
    );
    assert_eq!(entry.loaded_at, loaded_at);
    assert_eq!(entry.rows_loaded, 1);
}

/// Quarantine entries: recorded per URI (a second entry replaces the first), read back
/// as recorded, and released.
fn the_quarantine_records_and_releases_file_versions(backend: Backend) {
    let mut wh = backend.open();
    let (a, b) = (file("a", 100), file("b", 200));
    let at = 1_704_070_800_123_456;
    wh.quarantine(&a, QuarantineKind::Unreadable, "not Parquet", at)
        .expect("quarantine a");
    wh.quarantine(&b, QuarantineKind::Unreadable, "truncated", at)
        .expect("quarantine b");
    wh.quarantine(&b, QuarantineKind::Shrunk, "0 rows where 10", at + 1)
        .expect("quarantine b again");
    let uris = [a.uri.clone(), b.uri.clone(), file("c", 1).uri];
    let entries = wh.quarantined(&uris).expect("quarantined");
    assert_eq!(entries.len(), 2, "{entries:?}");
    assert_eq!(entries[&a.uri].reason, "not Parquet");
    assert_eq!(entries[&a.uri].kind, QuarantineKind::Unreadable);
    assert!(entries[&a.uri].is_version_of(&a) && !entries[&a.uri].is_version_of(&b));
    assert_eq!(entries[&b.uri].kind, QuarantineKind::Shrunk);
    assert_eq!(entries[&b.uri].quarantined_at, at + 1);
    wh.release_quarantine(std::slice::from_ref(&a.uri))
        .expect("release");
    let left = wh.quarantined(&uris).expect("quarantined");
    assert_eq!(left.keys().collect::<Vec<_>>(), vec![&b.uri]);
}

fn ties_break_on_source_file_then_source_row(backend: Backend) {
    let mut wh = backend.open();
    let ts = DAY1_NS + 7_200_000_000_000;
    let mut files = Files(BTreeMap::new());
    files.0.insert(
        file("a", 100).uri,
        vec![("r1", ts, "a-0"), ("r1", ts, "a-1")],
    );
    files.0.insert(
        file("b", 100).uri,
        vec![("r1", ts, "b-0"), ("r1", ts, "b-1")],
    );
    wh.load_raw(&[file("b", 100), file("a", 100)], 1, &mut files)
        .expect("load");
    wh.dedup(1).expect("dedup");
    let (changes, _) = feed(&mut wh, None);
    assert_eq!(
        changes,
        vec![("U".to_string(), Some("r1".into()), Some("b-1".into()))]
    );
}

/// Typed values of every kind survive the warehouse unchanged: what the change feed
/// returns equals what typing produced, and the per-date checksums match the row hashes.
fn typed_values_round_trip(backend: Backend) {
    let mut wh = backend.open();
    let mut source = WideSource::default();
    let f = file("wide", 100);
    wh.load_raw(std::slice::from_ref(&f), 5, &mut source)
        .expect("load");
    wh.dedup(1).expect("dedup");
    let typed = source.typed.expect("typed");
    let mut fed: Vec<RecordBatch> = Vec::new();
    wh.stream_changes(&ChangeSelection::After(None), 100, &mut |b| {
        fed.push(b.record_batch().clone());
        Ok(true)
    })
    .expect("feed");
    let fed = arrow::compute::concat_batches(&fed[0].schema(), &fed).expect("concat");
    assert_eq!(fed.num_rows(), typed.num_rows());
    // Compare column by column in key order.
    let order = |b: &RecordBatch| {
        let keys = b.column(b.schema().index_of("event_key").expect("key"));
        let mut idx: Vec<usize> = (0..b.num_rows()).collect();
        idx.sort_by_key(|i| binary_at(keys.as_ref(), *i).expect("key").to_vec());
        idx
    };
    let (t_order, f_order) = (order(&typed), order(&fed));
    for field in typed.schema().fields() {
        let name = field.name();
        let t = typed.column(typed.schema().index_of(name).expect("t"));
        let f = fed.column(fed.schema().index_of(name).expect(name));
        for (ti, fi) in t_order.iter().zip(&f_order) {
            let tv = arrow::util::display::array_value_to_string(t, *ti).expect("t");
            let fv = arrow::util::display::array_value_to_string(f, *fi).expect("f");
            assert_eq!(tv, fv, "column {name}");
        }
    }
    let mut expected = BTreeMap::new();
    let hashes = typed.column(typed.schema().index_of("row_hash").expect("hash"));
    let dates = typed.column(typed.schema().index_of("event_date").expect("date"));
    for i in 0..typed.num_rows() {
        let day = dates
            .as_primitive::<arrow::datatypes::Date32Type>()
            .value(i);
        add_to_checksum(
            expected
                .entry(NaiveDate::from_epoch_days(day).expect("day"))
                .or_default(),
            binary_at(hashes.as_ref(), i).expect("hash"),
        );
    }
    assert_eq!(wh.date_checksums(None).expect("checksums"), expected);
    let days: Vec<NaiveDate> = expected.keys().copied().collect();
    assert_eq!(
        wh.date_checksums(Some(&days[..1]))
            .expect("checksums")
            .len(),
        1
    );
}

/// Source rows with a column of every source kind, including NULLs and edge values.
#[derive(Default)]
struct WideSource {
    typed: Option<RecordBatch>,
}

impl RawSource for WideSource {
    fn read(
        &mut self,
        file: &LakeFile,
        sink: &mut dyn FnMut(TypedBatch) -> Result<()>,
    ) -> Result<()> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("request_id", DataType::Utf8, true),
            Field::new("timestamp", DataType::Utf8, true),
            Field::new("session_id", DataType::Utf8, true),
            Field::new("hotel_price", DataType::Utf8, true),
            Field::new("num_guests", DataType::Utf8, true),
            Field::new("hotel_rating", DataType::Utf8, true),
            Field::new("has_email_contact_permission", DataType::Utf8, true),
            Field::new("hotel_name", DataType::Utf8, true),
        ]));
        let col = |v: [Option<&str>; 4]| -> ArrayRef { Arc::new(StringArray::from(v.to_vec())) };
        let batch = RecordBatch::try_new(
            schema,
            vec![
                col([Some("w1"), Some("w2"), Some("w3"), Some("w4")]),
                col([
                    Some("2024-01-01T00:00:00Z"),
                    Some("2024-01-01T23:59:59.999999Z"),
                    Some("2024-01-02 12:00:00"),
                    Some("2023-12-31T23:00:00-02:00"),
                ]),
                col([None, Some(""), Some("s-ü-€"), Some("tab\tquote'\"")]),
                col([
                    Some("€1.234,56"),
                    Some("-0.01"),
                    None,
                    Some("999999999999.999999"),
                ]),
                col([Some("2"), Some("2.0"), Some("x"), None]),
                col([Some("4.5"), Some("-1e3"), None, Some("0")]),
                col([Some("yes"), Some("FALSE"), Some("maybe"), None]),
                col([Some("A"), None, Some("C"), Some("D")]),
            ],
        )
        .expect("batch");
        let lineage = Lineage {
            source_day: file.day.to_epoch_days(),
            source_file: file.uri.clone(),
            ingested_at: file.ingested_at,
            loaded_at: 5,
        };
        let typed = type_batch(&batch, &ColumnMapping::new(&batch.schema()), &lineage, 0)?;
        self.typed = Some(typed.rows.clone());
        sink(typed)
    }
}

/// The feed's origin: none before the first dedup run, then that run's `changed_at`,
/// kept by every later run (it names the feed an offset belongs to).
fn the_feed_origin_is_the_first_dedup_run(backend: Backend) {
    let mut wh = backend.open();
    assert_eq!(wh.feed_origin().expect("origin"), None);
    let ts = DAY1_NS + 3_600_000_000_000;
    let mut files = Files(BTreeMap::new());
    files.0.insert(file("a", 100).uri, vec![("r1", ts, "one")]);
    files.0.insert(file("b", 200).uri, vec![("r1", ts, "two")]);
    wh.load_raw(&[file("a", 100)], 1, &mut files).expect("load");
    let first = wh.dedup(1_704_070_800_000_000).expect("dedup");
    let origin = wh.feed_origin().expect("origin");
    assert!(
        origin.is_some() && origin == first.changed_at,
        "{origin:?} {first:?}"
    );
    wh.load_raw(&[file("b", 200)], 2, &mut files).expect("load");
    let second = wh.dedup(1_704_070_900_000_000).expect("dedup");
    assert!(second.changed_at > first.changed_at, "{first:?} {second:?}");
    assert_eq!(wh.feed_origin().expect("origin"), origin);
}

macro_rules! conformance {
    ($($scenario:ident),* $(,)?) => {
        mod duckdb {
            $(
                #[test]
                fn $scenario() {
                    super::$scenario(super::Backend::duckdb());
                }
            )*
        }
        mod bigquery {
            $(
                #[test]
                #[ignore = "needs the BigQuery and GCS emulators: scripts/with-emulators.sh"]
                fn $scenario() {
                    super::$scenario(super::Backend::bigquery());
                }
            )*
        }
    };
}

conformance!(
    dedup_keeps_the_latest_version_and_feeds_changes_in_order,
    the_ledger_records_each_loaded_version,
    the_quarantine_records_and_releases_file_versions,
    ties_break_on_source_file_then_source_row,
    typed_values_round_trip,
    the_feed_origin_is_the_first_dedup_run,
);

/// BigQuery reads the feed as two jobs: the changed dates, then the changes. A dedup
/// committing between them must be left whole for the next export: the first read stops
/// at the runs it saw, and the next read from its offset carries the rest, so the two
/// reads together hold every current row.
#[test]
#[ignore = "needs the BigQuery and GCS emulators: scripts/with-emulators.sh"]
fn bigquery_a_dedup_between_the_feed_reads_is_left_whole_for_the_next_export() {
    const DAY2_NS: i64 = DAY1_NS + 86_400_000_000_000;
    let backend = Backend::bigquery();
    let mut wh = backend.open_bigquery();
    let ts = DAY1_NS + 3_600_000_000_000;
    let mut files = Files(BTreeMap::new());
    files.0.insert(
        file("a", 100).uri,
        vec![("r1", ts, "one"), ("r2", ts, "two")],
    );
    wh.load_raw(&[file("a", 100)], 1, &mut files)
        .expect("load a");
    wh.dedup(0).expect("first dedup");

    let bounds = wh.feed_bounds(i64::MIN).expect("bounds").expect("changes");
    // A second dedup commits between the two reads: it changes a row of the first date
    // and adds one on a date the first read did not see.
    files.0.insert(
        file("b", 200).uri,
        vec![
            ("r1", ts, "one, corrected"),
            ("r3", DAY2_NS + 60_000_000_000, "three"),
        ],
    );
    wh.load_raw(&[file("b", 200)], 2, &mut files)
        .expect("load b");
    wh.dedup(0).expect("second dedup");

    let mut seen: BTreeMap<String, Option<String>> = BTreeMap::new();
    let mut offset = None;
    let mut read = |wh: &mut ota_warehouse::bigquery::BigQueryWarehouse,
                    bounds: &ota_warehouse::bigquery::FeedBounds,
                    offset: &mut Option<FeedOffset>| {
        wh.stream_feed_within(*offset, bounds, 1000, &mut |b| {
            let b = b.record_batch();
            let ids = b.column_by_name("request_id").expect("request_id");
            let names = b.column_by_name("hotel_name").expect("hotel_name");
            let at = b
                .column_by_name("changed_at")
                .expect("changed_at")
                .as_primitive::<arrow::datatypes::TimestampMicrosecondType>();
            let keys = b.column_by_name("event_key").expect("event_key");
            for row in 0..b.num_rows() {
                let text = |c: &ArrayRef| {
                    (!c.is_null(row)).then(|| c.as_string::<i32>().value(row).to_string())
                };
                seen.insert(text(ids).unwrap_or_default(), text(names));
                let mut key = [0u8; 16];
                key.copy_from_slice(binary_at(keys.as_ref(), row).expect("key"));
                *offset = Some(FeedOffset {
                    changed_at: at.value(row),
                    event_key: key,
                });
            }
            Ok(true)
        })
        .expect("read the feed");
    };
    read(&mut wh, &bounds, &mut offset);
    assert!(
        offset.is_some_and(|o| o.changed_at <= bounds.upto),
        "the first read stops at the runs it saw"
    );
    let at = offset.map_or(i64::MIN, |o| o.changed_at);
    let next = wh
        .feed_bounds(at)
        .expect("bounds")
        .expect("the second run's changes");
    read(&mut wh, &next, &mut offset);
    let expected: BTreeMap<String, Option<String>> =
        [("r1", "one, corrected"), ("r2", "two"), ("r3", "three")]
            .into_iter()
            .map(|(id, name)| (id.to_string(), Some(name.to_string())))
            .collect();
    assert_eq!(
        seen, expected,
        "every current row reached the feed's reader"
    );
}

/// One writing step at a time per dataset: a second writer is refused naming the first,
/// readers are not; a writer whose lease was taken over writes nothing.
#[test]
#[ignore = "needs the BigQuery and GCS emulators: scripts/with-emulators.sh"]
fn bigquery_writers_take_turns_on_a_dataset() {
    let backend = Backend::bigquery();
    let mut first = backend
        .try_open_bigquery("dedup", false)
        .expect("first writer");
    let refused = backend.try_open_bigquery("load-raw", false);
    let message = refused.err().map(|e| e.to_string()).unwrap_or_default();
    assert!(
        message.contains("another writer holds dataset") && message.contains("dedup"),
        "{message}"
    );
    backend
        .try_open_bigquery("export-mysql", true)
        .expect("a reader is never refused");

    // A lease taken over (the first writer outlived it): its next transaction fails.
    let ts = DAY1_NS + 3_600_000_000_000;
    let mut files = Files(BTreeMap::new());
    files.0.insert(file("a", 100).uri, vec![("r1", ts, "one")]);
    first
        .load_raw(&[file("a", 100)], 1, &mut files)
        .expect("load while holding the lease");
    backend.run_sql("UPDATE {dataset}.writer_lease SET holder = 'someone else' WHERE TRUE");
    let stolen = first
        .dedup(0)
        .err()
        .map(|e| e.to_string())
        .unwrap_or_default();
    assert!(
        stolen.contains("no longer holds the writer lease"),
        "{stolen}"
    );
    backend.run_sql("DELETE FROM {dataset}.writer_lease WHERE TRUE");
    drop(first);

    let mut second = backend
        .try_open_bigquery("dedup", false)
        .expect("free again");
    let outcome = second
        .dedup(0)
        .expect("the dedup the first writer could not commit");
    assert_eq!(outcome.rows_changed, 1);

    // A writer that ran past its lease, no one else having taken it, renews it before
    // writing and commits; the lease runs again.
    backend.run_sql(
        "UPDATE {dataset}.writer_lease SET expires_at = TIMESTAMP_SUB(CURRENT_TIMESTAMP(), INTERVAL 1 MINUTE) WHERE TRUE",
    );
    files.0.insert(file("b", 200).uri, vec![("r1", ts, "two")]);
    second
        .load_raw(&[file("b", 200)], 2, &mut files)
        .expect("a load after the lease expired, renewed first");
    let renewed = second.dedup(0).expect("dedup with the renewed lease");
    assert_eq!(renewed.rows_changed, 1);
}
