//! End-to-end acceptance tests: the step binaries against real Parquet files, the
//! embedded warehouse and the real MySQL/MariaDB server.

mod common;

use std::collections::HashMap;
use std::path::PathBuf;

use clap::Parser;
use common::{Env, SourceRow, mtime_micros, read_parquet, rows_of, write_parquet};
use mysql_async::Row;
use ota_cli::export::ExportArgs;
use ota_core::PipelineError;
use ota_mysql::CommitGate;
use ota_pipeline::steps::export_mysql_with;
use serde_json::Value;

type Key = (
    Option<String>,
    Option<String>,
    Option<String>,
    Option<String>,
    i64,
);

/// An independent model of the pipeline: the winning source row per event key.
struct Expected {
    winners: HashMap<Key, SourceRow>,
    rejected: u64,
}

fn expected(files: &[PathBuf]) -> Expected {
    let mut best: HashMap<Key, ((i64, String, usize), SourceRow)> = HashMap::new();
    let mut rejected = 0;
    for path in files {
        let ingested = mtime_micros(path);
        let uri = format!("file://{}", path.display());
        for (i, row) in rows_of(path).into_iter().enumerate() {
            let rid = row["request_id"].clone();
            let ts = row["timestamp"]
                .as_deref()
                .and_then(|t| t.parse::<i64>().ok());
            let (Some(r), Some(ts)) = (rid.clone(), ts) else {
                rejected += 1;
                continue;
            };
            if r.trim().is_empty() {
                rejected += 1;
                continue;
            }
            let key = (
                rid,
                row["funnel_id"].clone(),
                row["session_id"].clone(),
                row["page_name"].clone(),
                ts.div_euclid(1000),
            );
            let order = (ingested, uri.clone(), i);
            match best.get(&key) {
                Some((o, _)) if *o >= order => {}
                _ => {
                    best.insert(key, (order, row));
                }
            }
        }
    }
    Expected {
        winners: best.into_iter().map(|(k, (_, r))| (k, r)).collect(),
        rejected,
    }
}

fn lake_files(env: &Env) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(&env.lake)
        .expect("lake")
        .map(|e| e.expect("entry").path())
        .filter(|p| {
            p.extension().is_some_and(|e| e == "parquet")
                && p.file_name()
                    .is_some_and(|n| n.to_string_lossy().ends_with("_OTA.parquet"))
        })
        .collect();
    files.sort();
    files
}

/// MySQL rows by event key (as text).
fn mysql_rows(env: &Env) -> HashMap<Key, HashMap<&'static str, Option<String>>> {
    const COLS: [&str; 9] = [
        "payment_status",
        "confirmation_number",
        "hotel_name",
        "search_query",
        "user_agent",
        "hotel_price_raw",
        "hotel_price",
        "has_email_contact_permission",
        "user_id",
    ];
    let sql = format!(
        "SELECT request_id, funnel_id, session_id, page_name, CAST(`timestamp` AS CHAR), {} FROM ota_events",
        COLS.iter()
            .map(|c| format!("CAST(`{c}` AS CHAR)"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    let rows: Vec<Row> = env.query(&sql);
    let mut out = HashMap::new();
    for row in rows {
        let s = |i: usize| row.get::<Option<String>, _>(i).flatten();
        let ts = s(4).expect("timestamp");
        let us = chrono::NaiveDateTime::parse_from_str(&ts, "%Y-%m-%d %H:%M:%S%.f")
            .expect("datetime")
            .and_utc()
            .timestamp_micros();
        let key = (s(0), s(1), s(2), s(3), us);
        let values = COLS
            .iter()
            .enumerate()
            .map(|(i, c)| (*c, s(5 + i)))
            .collect();
        assert!(
            out.insert(key, values).is_none(),
            "duplicate event key in MySQL"
        );
    }
    out
}

fn price_oracle(raw: &str) -> Option<f64> {
    let t = raw.trim();
    if let Some(eur) = t.strip_prefix('€') {
        return eur.replace('.', "").replace(',', ".").parse().ok();
    }
    if let Some(x) = t
        .strip_prefix('$')
        .or_else(|| t.strip_prefix('£'))
        .or_else(|| t.strip_prefix('¥'))
    {
        return x.replace(',', "").parse().ok();
    }
    if let Some((a, b)) = t.split_once(',') {
        return format!("{a}.{b}").parse().ok();
    }
    None
}

fn permission_oracle(raw: &str) -> Option<&'static str> {
    match raw.trim().to_lowercase().as_str() {
        "yes" | "true" | "1" => Some("1"),
        "no" | "false" | "0" => Some("0"),
        _ => None,
    }
}

fn assert_mysql_matches_model(env: &Env) -> Expected {
    let model = expected(&lake_files(env));
    let mysql = mysql_rows(env);
    assert_eq!(
        mysql.len(),
        model.winners.len(),
        "one MySQL row per event key"
    );
    for (key, src) in &model.winners {
        let got = mysql
            .get(key)
            .unwrap_or_else(|| panic!("event {key:?} missing from MySQL"));
        for col in [
            "payment_status",
            "confirmation_number",
            "hotel_name",
            "search_query",
            "user_agent",
        ] {
            assert_eq!(got[col], src[col], "{col} of {key:?} (byte for byte)");
        }
        assert_eq!(
            got["hotel_price_raw"], src["hotel_price"],
            "hotel_price_raw keeps the source text"
        );
        let raw_price = src["hotel_price"].clone();
        let want = raw_price.as_deref().and_then(price_oracle);
        let have = got["hotel_price"]
            .as_deref()
            .map(|p| p.parse::<f64>().expect("decimal"));
        match (want, have) {
            (Some(w), Some(h)) => assert!((w - h).abs() < 1e-6, "price {raw_price:?}: {h} != {w}"),
            (None, None) => {}
            other => panic!("price {raw_price:?}: {other:?}"),
        }
        let perm = src["has_email_contact_permission"]
            .as_deref()
            .and_then(permission_oracle);
        assert_eq!(
            got["has_email_contact_permission"].as_deref(),
            perm,
            "permission {:?}",
            src["has_email_contact_permission"]
        );
        let user = src["user_id"]
            .as_deref()
            .and_then(|u| u.strip_suffix(".0").or(Some(u)))
            .filter(|u| u.bytes().all(|b| b.is_ascii_digit()));
        assert_eq!(
            got["user_id"].as_deref(),
            user,
            "user_id {:?}",
            src["user_id"]
        );
    }
    model
}

fn num(v: &Value, path: &[&str]) -> u64 {
    let mut cur = v;
    for p in path {
        cur = &cur[*p];
    }
    cur.as_u64().unwrap_or_else(|| panic!("{path:?} in {v}"))
}

const W3: [&str; 4] = ["--start-date", "2024-01-01", "--end-date", "2024-01-03"];

#[test]
fn three_days_end_to_end_then_a_rerun_changes_nothing() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 3_000);
    let s = env.pipeline(&W3, &[]);
    assert_eq!(s[0]["status"], "ok");
    assert_eq!(num(&s[0], &["counts", "files"]), 3);
    let model = assert_mysql_matches_model(&env);
    assert!(model.rejected > 0, "the generator makes unkeyable rows");
    assert_eq!(
        num(&s[1], &["counts", "rejected"]),
        model.rejected,
        "rejected rows are counted"
    );
    assert!(num(&s[2], &["counts", "duplicates_removed"]) > 0);
    assert_eq!(
        env.query::<u64>(
            "SELECT COUNT(*) FROM ota_events WHERE request_id IS NULL OR TRIM(request_id) = ''"
        )[0],
        0
    );
    // Re-delivered corrections (CNF-FIX-...) won over the first delivery.
    assert!(
        env.query::<u64>(
            "SELECT COUNT(*) FROM ota_events WHERE confirmation_number LIKE 'CNF-FIX-%'"
        )[0] > 0
    );
    // Timestamps keep microseconds in UTC.
    let ts: Vec<String> = env.query("SELECT CAST(`timestamp` AS CHAR) FROM ota_events LIMIT 1");
    assert_eq!(ts[0].len(), 26, "{}", ts[0]);
    let reconcile = env.run("export-mysql", &["--reconcile"]).ok();
    assert_eq!(reconcile.summary()["status"], "ok");
    assert!(
        reconcile.summary()["window"].is_null(),
        "all dates were compared, not a window"
    );
    let windowed = env
        .run(
            "export-mysql",
            &[
                "--reconcile",
                "--start-date",
                "2024-01-02",
                "--end-date",
                "2024-01-02",
            ],
        )
        .ok();
    assert_eq!(windowed.summary()["dates"], 1, "{}", windowed.stdout);

    // Acceptance 2: the same window again loads, rebuilds and exports nothing.
    let again = env.pipeline(&W3, &[]);
    assert_eq!(again[1]["files_loaded"].as_array().map(Vec::len), Some(0));
    assert_eq!(num(&again[2], &["rows_changed"]), 0);
    assert_eq!(num(&again[2], &["rows_deleted"]), 0);
    assert_eq!(num(&again[3], &["upserted"]), 0);
    assert_eq!(num(&again[3], &["deleted"]), 0);
}

#[test]
fn long_steps_log_progress_with_totals_and_rate_and_keep_the_summary_last() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 3_000);
    env.run("stage-files", &W3).ok();
    let fast = [("OTA_PROGRESS_SECS", "0.000001")];
    let load = env.run_with("load-raw", &[], &fast).ok();
    let read = num(&load.summary(), &["counts", "rows_read"]);
    assert!(
        load.stderr.contains("progress: ") && load.stderr.contains("rows/s, ETA "),
        "periodic lines with a rate and the time left:\n{}",
        load.stderr
    );
    assert!(
        load.stderr.contains(&format!(
            "done: {read} rows typed and appended of {read} (100.0%)"
        )),
        "a closing line with the exact total:\n{}",
        load.stderr
    );
    env.run("dedup", &[]).ok();
    let export = env.run_with("export-mysql", &[], &fast).ok();
    let applied = num(&export.summary(), &["counts", "rows_read"]);
    // The embedded warehouse counts the feed first: a total and the time left.
    assert!(
        export.stderr.contains("change rows applied of ") && export.stderr.contains("ETA "),
        "{}",
        export.stderr
    );
    assert!(
        export.stderr.contains(&format!(
            "done: {applied} change rows applied of {applied} (100.0%)"
        )),
        "{}",
        export.stderr
    );
    // A backfill re-sync knows its total: the warehouse rows of the dates it re-syncs.
    env.mysql(async |c| {
        use mysql_async::prelude::Queryable;
        c.query_drop("DELETE FROM ota_events")
            .await
            .expect("delete")
    });
    let backfill = env.run_with("export-mysql", &W3, &fast).ok();
    assert!(
        backfill.stderr.contains("rows re-synced of ") && backfill.stderr.contains("(100.0%)"),
        "{}",
        backfill.stderr
    );
    let off = env
        .run_with("load-raw", &[], &[("OTA_PROGRESS_SECS", "0")])
        .ok();
    assert!(
        !off.stderr.contains("rows typed and appended"),
        "{}",
        off.stderr
    );
}

#[test]
fn run_order_does_not_matter() {
    let all_at_once = Env::new();
    all_at_once.generate("2024-01-01", 3, 1_500);
    all_at_once.pipeline(&W3, &[]);

    let out_of_order = Env::new();
    out_of_order.generate("2024-01-01", 3, 1_500);
    out_of_order.pipeline(
        &["--start-date", "2024-01-03", "--end-date", "2024-01-03"],
        &[],
    );
    out_of_order.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-02"],
        &[],
    );

    assert_eq!(all_at_once.table_checksum(), out_of_order.table_checksum());
    assert_mysql_matches_model(&out_of_order);
}

/// Rewrites one day's file through `edit` (a re-delivery: new bytes, new mtime).
fn redeliver(
    env: &Env,
    day: &str,
    edit: impl FnOnce(Vec<arrow::array::RecordBatch>) -> Vec<arrow::array::RecordBatch>,
) {
    let path = env.file(day);
    let batches = edit(read_parquet(&path));
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_parquet(&path, &batches);
}

fn set_text(
    batch: &arrow::array::RecordBatch,
    column: &str,
    row: usize,
    value: &str,
) -> arrow::array::RecordBatch {
    use arrow::array::{Array, AsArray, StringArray};
    let idx = batch.schema().index_of(column).expect("column");
    let old = batch.column(idx).as_string::<i32>();
    let new: StringArray = (0..old.len())
        .map(|i| {
            if i == row {
                Some(value.to_string())
            } else {
                (!old.is_null(i)).then(|| old.value(i).to_string())
            }
        })
        .collect();
    let mut cols = batch.columns().to_vec();
    cols[idx] = std::sync::Arc::new(new);
    arrow::array::RecordBatch::try_new(batch.schema(), cols).expect("batch")
}

#[test]
fn late_events_corrections_and_removals_reach_mysql_in_normal_runs() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 800);
    let normal = |reference: &str| env.pipeline(&["--reference-date", reference], &[]);
    normal("2024-01-03");
    assert_mysql_matches_model(&env);

    // A later file with a late event for an earlier date (a brand-new key on 2024-01-01).
    let mut day4 = read_parquet(&env.file("2024-01-03"));
    day4.truncate(1);
    let b = day4[0].slice(0, 1);
    let b = set_text(&b, "request_id", 0, "late-event-1");
    let ts_idx = b.schema().index_of("timestamp").expect("ts");
    let mut cols = b.columns().to_vec();
    cols[ts_idx] = std::sync::Arc::new(arrow::array::Int64Array::from(vec![
        1_704_103_200_000_000_000_i64,
    ])); // 2024-01-01T10:00Z
    let b = arrow::array::RecordBatch::try_new(b.schema(), cols).expect("batch");
    write_parquet(&env.file("2024-01-04"), &[b]);
    let s = normal("2024-01-04");
    assert!(
        s[1]["affected_dates"]
            .as_array()
            .expect("dates")
            .iter()
            .any(|d| d == "2024-01-01"),
        "{}",
        s[1]
    );
    assert_eq!(
        env.query::<String>(
            "SELECT CAST(event_date AS CHAR) FROM ota_events WHERE request_id = 'late-event-1'"
        ),
        vec!["2024-01-01"]
    );

    // A re-delivered file with one field corrected.
    let rows3 = rows_of(&env.file("2024-01-03"));
    let earlier: Vec<SourceRow> = ["2024-01-01", "2024-01-02"]
        .iter()
        .flat_map(|d| rows_of(&env.file(d)))
        .collect();
    // A row whose event only this file holds.
    let target = (0..rows3.len())
        .find(|i| {
            let rid = &rows3[*i]["request_id"];
            rid.as_deref().is_some_and(|r| !r.is_empty())
                && rows3.iter().filter(|r| &r["request_id"] == rid).count() == 1
                && !earlier.iter().any(|r| &r["request_id"] == rid)
        })
        .expect("a unique row");
    let rid = rows3[target]["request_id"].clone().expect("rid");
    redeliver(&env, "2024-01-03", |bs| {
        let mut offset = 0;
        bs.into_iter()
            .map(|b| {
                let n = b.num_rows();
                let out = if (offset..offset + n).contains(&target) {
                    set_text(&b, "hotel_name", target - offset, "Corrected Hotel ✓")
                } else {
                    b
                };
                offset += n;
                out
            })
            .collect()
    });
    let s = normal("2024-01-04");
    assert_eq!(num(&s[3], &["upserted"]), 1, "{}", s[3]);
    assert_eq!(
        env.query::<Option<String>>(&format!(
            "SELECT hotel_name FROM ota_events WHERE request_id = '{rid}'"
        )),
        vec![Some("Corrected Hotel ✓".to_string())]
    );

    // A re-delivered file with that row removed.
    redeliver(&env, "2024-01-03", |bs| {
        let mut offset = 0;
        bs.into_iter()
            .map(|b| {
                let n = b.num_rows();
                let out = if (offset..offset + n).contains(&target) {
                    let i = target - offset;
                    let keep: arrow::array::BooleanArray = (0..n).map(|r| Some(r != i)).collect();
                    arrow::compute::filter_record_batch(&b, &keep).expect("filter")
                } else {
                    b
                };
                offset += n;
                out
            })
            .collect()
    });
    let s = normal("2024-01-04");
    assert_eq!(num(&s[3], &["deleted"]), 1, "{}", s[3]);
    assert_eq!(
        env.query::<u64>(&format!(
            "SELECT COUNT(*) FROM ota_events WHERE request_id = '{rid}'"
        )),
        vec![0]
    );
    assert_mysql_matches_model(&env);
}

/// A file of `n` events that all share one timestamp.
fn same_timestamp_file(env: &Env, day: &str, n: usize) {
    let mut template = read_parquet(&env.file(day));
    let b = template.remove(0).slice(0, 1);
    let schema = b.schema();
    let cols: Vec<arrow::array::ArrayRef> = schema
        .fields()
        .iter()
        .enumerate()
        .map(|(i, f)| -> arrow::array::ArrayRef {
            match f.name().as_str() {
                "request_id" => std::sync::Arc::new(arrow::array::StringArray::from_iter_values(
                    (0..n).map(|k| format!("same-ts-{k:04}")),
                )),
                "timestamp" => std::sync::Arc::new(arrow::array::Int64Array::from(
                    vec![1_704_110_400_123_456_000_i64; n],
                )),
                _ => arrow::compute::take(
                    b.column(i).as_ref(),
                    &arrow::array::UInt32Array::from(vec![0u32; n]),
                    None,
                )
                .expect("take"),
            }
        })
        .collect();
    write_parquet(
        &env.file(day),
        &[arrow::array::RecordBatch::try_new(schema, cols).expect("batch")],
    );
}

#[test]
fn equal_timestamps_across_batch_boundaries_and_a_crash_mid_export() {
    let env = Env::new();
    env.generate("2024-01-01", 1, 10);
    same_timestamp_file(&env, "2024-01-01", 1_000);
    let w = ["--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &w).ok();
    }
    // Crash before committing the 4th batch: 3 batches (300 rows) are in, the 4th is not.
    // The export runs in this process, from the binary's own flags, with a commit gate
    // that stops the 4th batch where a crash would: rows and offset written, no commit.
    struct CrashBeforeCommitting(u64);
    impl CommitGate for CrashBeforeCommitting {
        fn before_commit(&self, batch: u64) -> ota_core::Result<()> {
            if batch == self.0 {
                return Err(PipelineError::Internal(format!(
                    "crashed before committing batch {batch}"
                )));
            }
            Ok(())
        }
    }
    #[derive(clap::Parser)]
    struct Flags {
        #[command(flatten)]
        export: ExportArgs,
    }
    let warehouse_url = env.warehouse_url();
    let flags = [
        "export-mysql",
        "--warehouse-url",
        &warehouse_url,
        "--mysql-url",
        &env.mysql_url,
        "--batch-size",
        "100",
        "--reference-date",
        "2024-01-01",
    ];
    let config = Flags::try_parse_from(flags)
        .expect("flags")
        .export
        .config()
        .expect("config");
    let crashed = export_mysql_with(&config, &CrashBeforeCommitting(4));
    assert!(
        matches!(&crashed, Err(PipelineError::Internal(m)) if m.contains("batch 4")),
        "{crashed:?}"
    );
    assert_eq!(env.count(), 300);
    let after_crash = env.offset().expect("offset after 3 batches");

    let s = env
        .run("export-mysql", &["--batch-size", "100"])
        .ok()
        .summary();
    assert_eq!(num(&s, &["upserted"]), 700, "{s}");
    assert_eq!(num(&s, &["batches"]), 7);
    assert_eq!(env.count(), 1_000);
    assert_eq!(
        env.query::<u64>("SELECT COUNT(DISTINCT request_id) FROM ota_events")[0],
        1_000
    );
    let end = env.offset().expect("offset");
    assert_eq!(end.0, after_crash.0, "one shared timestamp");
    assert!(end.1 > after_crash.1, "the offset only moves forward");

    let again = env
        .run("export-mysql", &["--batch-size", "100"])
        .ok()
        .summary();
    assert_eq!(num(&again, &["upserted"]), 0);
    env.run("export-mysql", &["--reconcile"]).ok();
}

#[test]
fn a_backfill_resyncs_its_window_exactly_and_keeps_the_offset() {
    let env = Env::new();
    env.generate("2024-01-01", 4, 600);
    env.pipeline(&["--reference-date", "2024-01-03"], &[]);
    env.pipeline(&["--reference-date", "2024-01-04"], &[]);
    let offset = env.offset();
    let before = env.table_checksum();

    env.mysql(async |c| {
        use mysql_async::prelude::Queryable;
        c.query_drop(
            "DELETE FROM ota_events WHERE event_date = '2024-01-01' ORDER BY event_key LIMIT 1",
        )
        .await
        .expect("delete");
        c.query_drop(
            "INSERT INTO ota_events (event_key, event_date, request_id, row_hash, changed_at) \
             VALUES (UNHEX(MD5('bogus')), '2024-01-02', 'bogus', UNHEX(MD5('x')), NOW(6))",
        )
        .await
        .expect("insert");
    });
    assert_ne!(env.table_checksum(), before);
    assert_eq!(
        env.run("export-mysql", &["--reconcile"]).code,
        1,
        "drift is reported with exit 1"
    );

    let s = env
        .run(
            "export-mysql",
            &["--start-date", "2024-01-01", "--end-date", "2024-01-02"],
        )
        .ok()
        .summary();
    assert_eq!(num(&s, &["upserted"]), 1, "{s}");
    assert_eq!(num(&s, &["deleted"]), 1, "{s}");
    assert_eq!(env.table_checksum(), before);
    assert_eq!(
        env.offset(),
        offset,
        "a backfill leaves the forward offset alone"
    );
    env.run("export-mysql", &["--reconcile"]).ok();
}

#[test]
fn missing_days_empty_windows_and_bad_input() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 300);
    env.pipeline(&W3, &[]);
    let before = env.table_checksum();

    // A deleted file never deletes data; the day is reported missing.
    std::fs::remove_file(env.file("2024-01-02")).expect("rm");
    let s = env.pipeline(&W3, &[]);
    assert_eq!(s[0]["missing_days"], serde_json::json!(["2024-01-02"]));
    assert_eq!(env.table_checksum(), before);

    // No files in the window: every step exits 0 with no_data.
    let empty = ["--start-date", "2023-06-01", "--end-date", "2023-06-03"];
    for step in ["stage-files", "load-raw", "dedup"] {
        assert_eq!(
            env.run(step, &empty).ok().summary()["status"],
            "no_data",
            "{step}"
        );
    }
    let fresh = Env::new();
    for step in ["stage-files", "load-raw", "dedup", "export-mysql"] {
        assert_eq!(
            fresh.run(step, &empty).ok().summary()["status"],
            "no_data",
            "{step}"
        );
    }

    // Malformed dates and end < start: exit 2 with one line.
    for args in [
        &["--start-date", "2024-13-01"][..],
        &["--start-date", "2024-01-05", "--end-date", "2024-01-01"],
        &["--end-date", "yesterday"],
    ] {
        for step in ["stage-files", "load-raw", "dedup", "export-mysql"] {
            let r = env.run(step, args);
            assert_eq!(r.code, 2, "{step} {args:?}: {}", r.stderr);
            let last = r.stderr.lines().last().unwrap_or_default();
            assert!(
                last.starts_with("error: invalid date window"),
                "{step}: {}",
                r.stderr
            );
        }
    }

    // A truncated file is quarantined, named, with exit code 3, and the run changes
    // nothing.
    let path = env.file("2024-01-03");
    let bytes = std::fs::read(&path).expect("read");
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(&path, &bytes[..bytes.len() / 2]).expect("truncate");
    env.run("stage-files", &W3).ok();
    let r = env.run("load-raw", &W3);
    assert_eq!(r.code, 3, "{}", r.stderr);
    assert!(r.stderr.contains("20240103_OTA.parquet"), "{}", r.stderr);
    assert_eq!(r.summary()["status"], "partial");
    let d = env.run("dedup", &W3).ok().summary();
    assert_eq!(
        num(&d, &["rows_changed"]),
        0,
        "the failed load left nothing to rebuild"
    );
    env.run("export-mysql", &W3).ok();
    assert_eq!(env.table_checksum(), before);
}

#[test]
fn concurrent_exports_wait_for_each_other_and_a_held_lock_fails_clearly() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 1_500);
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(
            step,
            &["--start-date", "2024-01-01", "--end-date", "2024-01-02"],
        )
        .ok();
    }
    // Two runs at once: one waits for the other; the result is exact.
    let spawn = || {
        std::process::Command::new(common::bin("export-mysql"))
            .args([
                "--batch-size",
                "200",
                "--warehouse-url",
                &env.warehouse_url(),
                "--mysql-url",
                &env.mysql_url,
            ])
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .expect("spawn")
    };
    let (a, b) = (spawn(), spawn());
    let (a, b) = (
        common::Run::from(a.wait_with_output().expect("a")),
        common::Run::from(b.wait_with_output().expect("b")),
    );
    assert_eq!((a.code, b.code), (0, 0), "a: {}\nb: {}", a.stderr, b.stderr);
    let (sa, sb) = (a.summary(), b.summary());
    assert_eq!(
        num(&sa, &["upserted"]) + num(&sb, &["upserted"]),
        env.count(),
        "every row applied exactly once: {sa} {sb}"
    );
    env.run("export-mysql", &[]).ok();
    env.run("export-mysql", &["--reconcile"]).ok();

    // A lock held elsewhere: a run with a short timeout fails with a clear message.
    let url = env.mysql_url.clone();
    let holder = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("rt");
        rt.block_on(async move {
            use mysql_async::prelude::Queryable;
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url).expect("url"))
                .await
                .expect("conn");
            let db: String = c
                .query_first("SELECT DATABASE()")
                .await
                .expect("db")
                .expect("name");
            let name = format!("{db}.ota_events");
            let digest = {
                use md5::Digest;
                md5::Md5::digest(name.as_bytes())
            };
            let lock: String = format!(
                "ota_export_{}",
                digest
                    .iter()
                    .map(|b| format!("{b:02x}"))
                    .collect::<String>()
            );
            let got: Option<i64> = c
                .exec_first("SELECT GET_LOCK(?, 5)", (lock,))
                .await
                .expect("lock");
            assert_eq!(got, Some(1));
            tokio::time::sleep(std::time::Duration::from_secs(4)).await;
            c.disconnect().await.expect("disconnect");
        })
    });
    std::thread::sleep(std::time::Duration::from_millis(800));
    let r = env.run("export-mysql", &["--lock-timeout", "1"]);
    holder.join().expect("holder");
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(r.stderr.contains("holds the lock"), "{}", r.stderr);
}

#[test]
fn insert_fallback_gives_the_same_table() {
    let a = Env::new();
    a.generate("2024-01-01", 2, 700);
    a.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-02"],
        &["--batch-size", "250"],
    );
    let b = Env::new();
    b.generate("2024-01-01", 2, 700);
    b.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-02"],
        &["--batch-size", "250", "--load-method", "insert"],
    );
    assert_eq!(a.table_checksum(), b.table_checksum());
    assert_mysql_matches_model(&b);
}

#[test]
fn historic_load_splits_one_file_idempotently() {
    let env = Env::new();
    let single = env.dir.path().join("case_data.parquet.gzip");
    common::Run::from(
        std::process::Command::new(common::bin("ota-gen"))
            .args([
                "--seed",
                "3",
                "--start",
                "2024-02-01",
                "--days",
                "3",
                "--rows-per-day",
                "900",
                "--single",
            ])
            .arg(&single)
            .output()
            .expect("gen"),
    )
    .ok();
    let from = single.display().to_string();
    let s = env.run("stage-files", &["--from", &from]).ok().summary();
    assert_eq!(
        s["window"]["start"], "2024-01-30",
        "late events reach back two days: {s}"
    );
    assert_eq!(s["window"]["end"], "2024-02-03");
    let total: u64 = s["split"]["days"]
        .as_array()
        .expect("days")
        .iter()
        .map(|d| d["rows"].as_u64().expect("rows"))
        .sum();
    assert_eq!(total, 2_700);
    let mtimes: Vec<i64> = lake_files(&env).iter().map(|p| mtime_micros(p)).collect();
    let again = env.run("stage-files", &["--from", &from]).ok().summary();
    assert!(
        again["split"]["days"]
            .as_array()
            .expect("days")
            .iter()
            .all(|d| d["outcome"] == "unchanged"),
        "{again}"
    );
    assert_eq!(
        lake_files(&env)
            .iter()
            .map(|p| mtime_micros(p))
            .collect::<Vec<_>>(),
        mtimes,
        "nothing rewritten"
    );
    let w = ["--start-date", "2024-01-30", "--end-date", "2024-02-03"];
    for step in ["load-raw", "dedup", "export-mysql"] {
        env.run(step, &w).ok();
    }
    assert_mysql_matches_model(&env);
}

#[test]
fn batches_larger_than_a_packet_stream_in_pieces() {
    let env = Env::new();
    env.generate("2024-01-01", 1, 60_000);
    let s = env.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-01"],
        &["--batch-size", "100000"],
    );
    assert_eq!(num(&s[3], &["batches"]), 1, "{}", s[3]);
    let max_packet = env.query::<u64>("SELECT @@max_allowed_packet")[0];
    let bytes = env.query::<u64>(
        "SELECT SUM(LENGTH(COALESCE(user_agent, '')) + LENGTH(COALESCE(search_query, '')) + LENGTH(COALESCE(hotel_name, '')) + 350) FROM ota_events",
    )[0];
    assert!(
        bytes > max_packet.min(16 << 20),
        "the batch ({bytes} bytes) must exceed one packet ({max_packet})"
    );
    assert_mysql_matches_model(&env);
}

/// Sets a server variable for the life of the guard.
struct GlobalSetting {
    name: &'static str,
    old: String,
}

impl GlobalSetting {
    fn set(name: &'static str, value: &str) -> Self {
        let old = common::server_query(&format!("SELECT CAST(@@GLOBAL.{name} AS CHAR)"))[0].clone();
        common::server_query(&format!("SET GLOBAL {name} = {value}"));
        GlobalSetting { name, old }
    }
}

impl Drop for GlobalSetting {
    fn drop(&mut self) {
        common::server_query(&format!("SET GLOBAL {} = {}", self.name, self.old));
    }
}

#[test]
fn falls_back_to_insert_when_the_server_refuses_local_infile() {
    let env = Env::new();
    env.generate("2024-01-01", 1, 500);
    let w = ["--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &w).ok();
    }
    let r = {
        let _off = GlobalSetting::set("local_infile", "0");
        env.run("export-mysql", &["--batch-size", "200"])
    };
    let r = r.ok();
    assert!(
        r.stderr.contains("falling back to multi-row INSERT"),
        "{}",
        r.stderr
    );
    assert_mysql_matches_model(&env);
}

#[test]
fn a_file_replaced_after_staging_is_not_loaded_half_known() {
    let env = Env::new();
    env.generate("2024-01-01", 1, 200);
    let w = ["--start-date", "2024-01-01", "--end-date", "2024-01-01"];
    env.run("stage-files", &w).ok();
    redeliver(&env, "2024-01-01", |bs| {
        bs.into_iter()
            .map(|b| set_text(&b, "hotel_name", 0, "re-delivered"))
            .collect()
    });
    let r = env.run("load-raw", &w);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("changed since stage-files"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("20240101_OTA.parquet"), "{}", r.stderr);
    // Staged again, the new version loads.
    let s = env.pipeline(&w, &[]);
    assert_eq!(s[1]["files_loaded"].as_array().map(Vec::len), Some(1));
    assert_mysql_matches_model(&env);
}

/// A copy of `batch` with a column the event contract does not know.
fn with_unknown_column(batch: &arrow::array::RecordBatch) -> arrow::array::RecordBatch {
    use arrow::array::StringArray;
    use arrow::datatypes::{DataType, Field, Schema};
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("coupon_code", DataType::Utf8, true));
    let mut cols = batch.columns().to_vec();
    cols.push(std::sync::Arc::new(StringArray::from(vec![
        Some("SPRING");
        batch.num_rows()
    ])));
    arrow::array::RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), cols)
        .expect("batch")
}

#[test]
fn quality_limits_quarantine_files_and_missing_days_fail_the_stage() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 300);
    // Day 2: 60% of the rows have no request_id. Day 3: a column the contract lacks.
    redeliver(&env, "2024-01-02", |batches| {
        let mut left = 180;
        batches
            .iter()
            .map(|b| {
                let mut b = b.clone();
                for row in 0..b.num_rows().min(left) {
                    b = set_text(&b, "request_id", row, "");
                }
                left -= b.num_rows().min(left);
                b
            })
            .collect()
    });
    redeliver(&env, "2024-01-03", |batches| {
        batches.iter().map(with_unknown_column).collect()
    });
    env.run("stage-files", &W3).ok();
    let strict = [
        ("OTA_MAX_REJECTED_PCT", "50"),
        ("OTA_ON_UNKNOWN_COLUMNS", "quarantine"),
    ];
    let r = env.run_with("load-raw", &W3, &strict);
    assert_eq!(r.code, 3, "{}", r.stderr);
    let s = r.summary();
    assert_eq!(s["status"], "partial");
    assert_eq!(s["files_loaded"].as_array().map(Vec::len), Some(1), "{s}");
    let held: HashMap<String, String> = s["files_quarantined"]
        .as_array()
        .expect("quarantined")
        .iter()
        .map(|q| {
            let uri = q["uri"].as_str().unwrap_or_default();
            let name = uri.rsplit('/').next().unwrap_or_default().to_string();
            (name, q["kind"].as_str().unwrap_or_default().to_string())
        })
        .collect();
    assert_eq!(held["20240102_OTA.parquet"], "rejected", "{s}");
    assert_eq!(held["20240103_OTA.parquet"], "unknown_columns", "{s}");
    assert!(
        r.stderr.contains("more than --max-rejected-pct 50"),
        "{}",
        r.stderr
    );
    assert!(r.stderr.contains("coupon_code"), "{}", r.stderr);
    // Nothing of the held files was kept: one day's rows, and that day's few rejects.
    assert_eq!(num(&s, &["counts", "rows_read"]), 300, "{s}");
    assert!(num(&s, &["counts", "rejected"]) < 10, "{s}");

    // Each run checks them again: with no limit on rejected rows and unknown columns
    // only warned of, both load.
    let s = env
        .run_with("load-raw", &W3, &[("OTA_MAX_REJECTED_PCT", "100")])
        .ok()
        .summary();
    assert_eq!(s["status"], "ok");
    assert_eq!(s["files_loaded"].as_array().map(Vec::len), Some(2), "{s}");
    assert_eq!(num(&s, &["counts", "rows_read"]), 600, "{s}");
    assert!(num(&s, &["counts", "rejected"]) >= 180, "{s}");
    assert_eq!(s["unknown_columns"], serde_json::json!(["coupon_code"]));

    // More missing days than allowed: stage-files fails (exit 1, a later try may find
    // the files) and stages nothing; within the limit, the days are only reported.
    let w5 = ["--start-date", "2024-01-01", "--end-date", "2024-01-05"];
    let r = env.run_with("stage-files", &w5, &[("OTA_MAX_MISSING_DAYS", "1")]);
    assert_eq!(r.code, 1, "{}", r.stderr);
    assert!(
        r.stderr.contains("2024-01-04, 2024-01-05") && r.stderr.contains("--max-missing-days 1"),
        "{}",
        r.stderr
    );
    let r = env.run("load-raw", &w5);
    assert_eq!(
        r.code, 2,
        "the failed stage left the last staged window: {}",
        r.stderr
    );
    let s = env
        .run_with("stage-files", &w5, &[("OTA_MAX_MISSING_DAYS", "2")])
        .ok()
        .summary();
    assert_eq!(
        s["missing_days"],
        serde_json::json!(["2024-01-04", "2024-01-05"])
    );
}
