//! What MySQL serves survives bad files and operators' actions: each guard tested where
//! it fires and where an adversary would try to slip past it, against the real
//! MySQL/MariaDB server and real Parquet files.

mod common;

use std::sync::Arc;

use arrow::array::{Array, ArrayRef, StringArray};
use common::{Env, quarantined, replace_file, with_column, with_timestamps};

const WINDOW: [&str; 4] = ["--start-date", "2024-01-01", "--end-date", "2024-01-02"];

fn with(extra: &[&'static str]) -> Vec<&'static str> {
    [&WINDOW[..], extra].concat()
}

/// The served rows of one source day.
fn served_of_day(env: &Env, day: &str) -> u64 {
    env.query::<u64>(&format!(
        "SELECT COUNT(*) FROM ota_events WHERE source_day = '{day}'"
    ))[0]
}

/// dedup and a backfill export of the window: what an Airflow run does after load-raw.
fn dedup_and_export(env: &Env) {
    env.run("dedup", &WINDOW).ok();
    env.run("export-mysql", &WINDOW).ok();
}

fn texts(value: &str) -> impl Fn(&ArrayRef) -> ArrayRef + '_ {
    move |column| Arc::new(StringArray::from(vec![value; column.len()]))
}

#[test]
fn a_redelivered_day_whose_rows_are_all_rejected_is_refused_and_mysql_keeps_it() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 400);
    env.pipeline(&WINDOW, &[]);
    let before = env.table_checksum();
    let served = served_of_day(&env, "2024-01-01");
    assert!(served > 300, "{served}");
    let day1 = env.file("2024-01-01");
    let original = common::read_parquet(&day1);

    // The same number of rows, none loadable: timestamps that are not times, request_ids
    // all NULL; and, past the footer check, twice the rows with none loadable.
    let bad_times = with_timestamps(original.clone(), texts("not a time"));
    let no_ids = with_column(original.clone(), "request_id", |c| {
        arrow::array::new_null_array(&arrow::datatypes::DataType::Utf8, c.len())
    });
    let doubled: Vec<_> = bad_times.iter().chain(&bad_times).cloned().collect();
    for (what, batches) in [
        ("unusable timestamps", &bad_times),
        ("no request_id", &no_ids),
        ("more rows, none loadable", &doubled),
    ] {
        replace_file(&day1, batches);
        env.run("stage-files", &WINDOW).ok();
        // No limit on rejected rows: the shrink guard alone must hold the file.
        let run = env.run("load-raw", &with(&["--max-rejected-pct", "100"]));
        assert_eq!(run.code, 3, "{what}: {}", run.stderr);
        assert_eq!(
            quarantined(&run),
            vec![("20240101_OTA.parquet".to_string(), "shrunk".to_string())],
            "{what}"
        );
        assert!(run.stderr.contains("rejected"), "{what}: {}", run.stderr);
        // With the default limits the file is held too, and so is it with shrinking
        // allowed: then the rejected-rows limit holds it.
        assert_eq!(env.run("load-raw", &WINDOW).code, 3, "{what}");
        let allowed = env.run("load-raw", &with(&["--allow-shrink"]));
        assert_eq!(allowed.code, 3, "{what}: {}", allowed.stderr);
        assert_eq!(
            quarantined(&allowed),
            vec![("20240101_OTA.parquet".to_string(), "rejected".to_string())],
            "{what}"
        );
        dedup_and_export(&env);
        assert_eq!(env.table_checksum(), before, "{what}: MySQL keeps the day");
    }

    // Only both consents together let an unloadable day empty what is served.
    let run = env.run(
        "load-raw",
        &with(&["--allow-shrink", "--max-rejected-pct", "100"]),
    );
    assert_eq!(run.code, 0, "{}", run.stderr);
    dedup_and_export(&env);
    assert_eq!(served_of_day(&env, "2024-01-01"), 0);
    // The good version back: the day is served again. (Re-delivered after day 2, its
    // rows are now the newer version of the events both files hold.)
    replace_file(&day1, &original);
    env.run("stage-files", &WINDOW).ok();
    env.run("load-raw", &WINDOW).ok();
    dedup_and_export(&env);
    assert_eq!(env.table_checksum().0, before.0, "every event served again");
    assert_eq!(env.run("export-mysql", &["--reconcile"]).code, 0);
}

#[test]
fn a_first_delivery_mostly_unkeyable_is_held_by_the_default_limit() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 400);
    let day2 = env.file("2024-01-02");
    let original = common::read_parquet(&day2);
    // A fifth of the rows without a request_id: far above what sources reject.
    let mostly_bad = with_column(original.clone(), "request_id", |c| {
        let ids = c.as_any().downcast_ref::<StringArray>().expect("text ids");
        Arc::new(
            ids.iter()
                .enumerate()
                .map(|(i, v)| if i % 5 == 0 { None } else { v })
                .collect::<StringArray>(),
        )
    });
    replace_file(&day2, &mostly_bad);
    env.run("stage-files", &WINDOW).ok();
    let run = env.run("load-raw", &WINDOW);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        quarantined(&run),
        vec![("20240102_OTA.parquet".to_string(), "rejected".to_string())]
    );
    // The day's own sample (under 1% rejected) loads under the same default.
    replace_file(&day2, &original);
    env.run("stage-files", &WINDOW).ok();
    let run = env.run("load-raw", &WINDOW).ok();
    assert!(quarantined(&run).is_empty());
}

/// The four steps over `window` on another warehouse file, as an operator pointing the
/// pipeline at a new warehouse would run them; returns export's run.
fn pipeline_on(env: &Env, warehouse: &str, window: &[&str], export_args: &[&str]) -> common::Run {
    let url = format!("--warehouse-url={warehouse}");
    for step in ["stage-files", "load-raw", "dedup"] {
        env.run(step, &[window, &[url.as_str()]].concat()).ok();
    }
    env.run(
        "export-mysql",
        &[window, &[url.as_str()], export_args].concat(),
    )
}

fn held_dates(run: &common::Run) -> Vec<String> {
    run.summary()["held_dates"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|h| h["event_date"].as_str().unwrap_or_default().to_string())
        .collect()
}

/// Served rows per event date.
fn served_by_date(env: &Env) -> Vec<(String, u64)> {
    env.query::<(String, u64)>(
        "SELECT CAST(event_date AS CHAR), COUNT(*) FROM ota_events GROUP BY event_date ORDER BY event_date",
    )
}

#[test]
fn a_new_warehouse_never_deletes_the_dates_it_does_not_hold() {
    let env = Env::new();
    env.generate("2024-01-01", 3, 300);
    let all = ["--start-date", "2024-01-01", "--end-date", "2024-01-03"];
    env.pipeline(&all, &[]);
    let served = served_by_date(&env);
    let before = env.table_checksum();

    // A fresh warehouse that loaded only the last day.
    let fresh = format!("duckdb://{}", env.dir.path().join("fresh.duckdb").display());
    let last = ["--start-date", "2024-01-03", "--end-date", "2024-01-03"];
    // Its feed is not the one MySQL follows: refused, whatever the window.
    let refused = pipeline_on(&env, &fresh, &last, &[]);
    assert_eq!(refused.code, 2, "{}", refused.stderr);
    assert!(
        refused.stderr.contains("another warehouse") && refused.stderr.contains("--full-refresh"),
        "{}",
        refused.stderr
    );
    let url = format!("--warehouse-url={fresh}");
    let backfill = env.run("export-mysql", &[&all[..], &[url.as_str()]].concat());
    assert_eq!(backfill.code, 2, "{}", backfill.stderr);
    assert_eq!(env.table_checksum(), before, "nothing applied");

    // The re-sync path: the table moves to the new feed; the dates the new warehouse
    // holds nothing of are kept and reported (exit 3), the others match it.
    let moved = env.run("export-mysql", &[url.as_str(), "--full-refresh"]);
    assert_eq!(moved.code, 3, "{}\n{}", moved.stdout, moved.stderr);
    assert_eq!(moved.summary()["status"], "partial");
    let held = held_dates(&moved);
    assert!(held.contains(&"2024-01-01".to_string()), "{held:?}");
    assert!(held.contains(&"2024-01-02".to_string()), "{held:?}");
    assert!(!held.contains(&"2024-01-03".to_string()), "{held:?}");
    assert_eq!(served_by_date(&env), served, "every served date kept");
    // Later runs on the new warehouse are incremental again.
    let next = env.run("export-mysql", &[url.as_str()]);
    assert_eq!(next.code, 0, "{}", next.stderr);

    // The flag for absent dates deletes those alone: the dates the new warehouse holds a
    // few late events of are still held by the share a re-sync may delete.
    let absent_only = env.run(
        "export-mysql",
        &[url.as_str(), "--full-refresh", "--delete-absent-dates"],
    );
    assert_eq!(absent_only.code, 3, "{}", absent_only.stderr);
    assert_eq!(
        held_dates(&absent_only),
        vec!["2024-01-01".to_string(), "2024-01-02".to_string()]
    );
    // Both say yes: MySQL serves what the new warehouse holds, and nothing else.
    let deleted = env.run(
        "export-mysql",
        &[
            url.as_str(),
            "--full-refresh",
            "--delete-absent-dates",
            "--max-resync-delete-pct=100",
        ],
    );
    assert_eq!(deleted.code, 0, "{}", deleted.stderr);
    let left = served_by_date(&env);
    let rows_of = |list: &[(String, u64)], day: &str| {
        list.iter().find(|(d, _)| d == day).map_or(0, |(_, n)| *n)
    };
    assert!(
        rows_of(&left, "2024-01-01") < rows_of(&served, "2024-01-01") / 10,
        "{left:?}"
    );
    let reconcile = env.run("export-mysql", &[url.as_str(), "--reconcile"]);
    assert_eq!(reconcile.code, 0, "{}", reconcile.stdout);
}

#[test]
fn an_offset_saved_without_its_feed_is_not_taken_for_a_newer_warehouse() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 200);
    env.pipeline(&WINDOW, &[]);
    let before = env.table_checksum();
    // An offset as tables kept it before feeds were told apart.
    env.mysql(async |c| {
        use mysql_async::prelude::Queryable;
        c.query_drop("UPDATE ota_pipeline_offsets SET feed_id = NULL")
            .await
            .expect("forget the feed")
    });
    // Its own warehouse adopts it.
    env.run("export-mysql", &[]).ok();
    let adopted = env.query::<Option<String>>("SELECT feed_id FROM ota_pipeline_offsets");
    assert!(adopted[0].is_some(), "{adopted:?}");
    env.mysql(async |c| {
        use mysql_async::prelude::Queryable;
        c.query_drop("UPDATE ota_pipeline_offsets SET feed_id = NULL")
            .await
            .expect("forget the feed")
    });
    // A warehouse built later began its feed after that offset: not its feed.
    let rebuilt = format!(
        "duckdb://{}",
        env.dir.path().join("rebuilt.duckdb").display()
    );
    let run = pipeline_on(&env, &rebuilt, &WINDOW, &[]);
    assert_eq!(run.code, 2, "{}", run.stderr);
    assert_eq!(env.table_checksum(), before);
}

#[test]
fn a_resync_that_would_delete_most_of_a_date_is_held() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    env.pipeline(&WINDOW, &[]);
    let reference = env.table_checksum();
    // Rows the warehouse does not hold: each copy doubles the date.
    let foreign = |copies: u32| {
        env.mysql(async move |c| {
            use mysql_async::prelude::Queryable;
            for copy in 0..copies {
                for statement in [
                    "CREATE TEMPORARY TABLE foreign_rows AS \
                     SELECT * FROM ota_events WHERE event_date = '2024-01-02'"
                        .to_string(),
                    format!(
                        "UPDATE foreign_rows SET event_key = UNHEX(MD5(CONCAT(event_key, '{copy}')))"
                    ),
                    "INSERT INTO ota_events SELECT * FROM foreign_rows".to_string(),
                    "DROP TEMPORARY TABLE foreign_rows".to_string(),
                ] {
                    c.query_drop(statement).await.expect("insert foreign rows");
                }
            }
        })
    };
    foreign(2);
    let served = served_by_date(&env);
    let run = env.run("export-mysql", &WINDOW);
    assert_eq!(run.code, 3, "{}\n{}", run.stdout, run.stderr);
    assert_eq!(held_dates(&run), vec!["2024-01-02".to_string()]);
    assert!(
        run.stderr.contains("--max-resync-delete-pct"),
        "{}",
        run.stderr
    );
    assert_eq!(served_by_date(&env), served, "MySQL keeps the date");
    // A raised limit repairs it.
    let raised = env.run("export-mysql", &with(&["--max-resync-delete-pct", "100"]));
    assert_eq!(raised.code, 0, "{}", raised.stderr);
    assert_eq!(env.table_checksum(), reference);
    // Drift at the limit (foreign rows half of the date) is repaired as always.
    foreign(1);
    let drift = env.run("export-mysql", &WINDOW);
    assert_eq!(drift.code, 0, "{}", drift.stderr);
    assert_eq!(env.table_checksum(), reference);
}

#[test]
fn hand_edits_of_served_content_are_drift_and_a_backfill_repairs_them() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    env.pipeline(&WINDOW, &[]);
    let reference = env.table_checksum();
    let clean = env.run("export-mysql", &["--reconcile"]);
    assert_eq!(clean.code, 0, "{}", clean.stdout);
    // Edits that leave row_hash as it was, of text, a float, a timestamp and a NULL; one
    // that also rewrites row_hash; and one of row_hash alone.
    let edits = [
        "UPDATE ota_events SET hotel_name = CONCAT(COALESCE(hotel_name, ''), '!') \
         WHERE event_date = '2024-01-01' ORDER BY event_key LIMIT 5",
        "UPDATE ota_events SET price_per_night = price_per_night + 0.000001 \
         WHERE event_date = '2024-01-02' AND price_per_night IS NOT NULL ORDER BY event_key LIMIT 1",
        "UPDATE ota_events SET `timestamp` = `timestamp` + INTERVAL 1 MICROSECOND \
         WHERE event_date = '2024-01-02' ORDER BY event_key LIMIT 1",
        "UPDATE ota_events SET country = NULL \
         WHERE event_date = '2024-01-01' AND country IS NOT NULL ORDER BY event_key LIMIT 1",
        "UPDATE ota_events SET utm_source = 'edited', row_hash = UNHEX(MD5('edited')) \
         WHERE event_date = '2024-01-02' ORDER BY event_key LIMIT 1",
        "UPDATE ota_events SET row_hash = UNHEX(MD5('by hand')) \
         WHERE event_date = '2024-01-01' ORDER BY event_key LIMIT 1",
    ];
    for edit in edits {
        env.mysql(async |c| {
            use mysql_async::prelude::Queryable;
            c.query_drop(edit).await.expect("edit");
            assert!(c.affected_rows() > 0, "{edit}");
        });
        let reconcile = env.run("export-mysql", &["--reconcile"]);
        assert_eq!(reconcile.code, 1, "{edit}\n{}", reconcile.stdout);
        assert_eq!(reconcile.summary()["status"], "drift", "{edit}");
        // A backfill of the window repairs it: the edited rows are rewritten.
        let backfill = env.run("export-mysql", &WINDOW);
        assert_eq!(backfill.code, 0, "{edit}\n{}", backfill.stderr);
        assert!(
            backfill.summary()["upserted"].as_u64().unwrap_or(0) > 0,
            "{edit}: {}",
            backfill.stdout
        );
        let after = env.run("export-mysql", &["--reconcile"]);
        assert_eq!(after.code, 0, "{edit}\n{}", after.stdout);
        assert_eq!(env.table_checksum(), reference, "{edit}");
    }
}

#[test]
fn a_serving_table_altered_by_hand_is_refused_naming_each_difference() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 200);
    env.pipeline(&WINDOW, &[]);
    let exec = |statements: &[&str]| {
        let statements: Vec<String> = statements.iter().map(|s| s.to_string()).collect();
        env.mysql(async move |c| {
            use mysql_async::prelude::Queryable;
            for s in statements {
                c.query_drop(&s)
                    .await
                    .unwrap_or_else(|e| panic!("{s}: {e}"));
            }
        })
    };
    // (alteration, its undoing, what the refusal must name)
    let cases: [(&[&str], &[&str], &str); 5] = [
        (
            &["ALTER TABLE ota_events ADD UNIQUE KEY by_session (session_id, page_name)"],
            &["ALTER TABLE ota_events DROP KEY by_session"],
            "unique key by_session",
        ),
        (
            &[
                "CREATE TABLE orders (event_date DATE NOT NULL, event_key BINARY(16) NOT NULL, \
               FOREIGN KEY fk_served (event_date, event_key) REFERENCES ota_events (event_date, event_key) \
               ON DELETE CASCADE) ENGINE=InnoDB",
            ],
            &["DROP TABLE orders"],
            "foreign key fk_served of orders",
        ),
        (
            &["ALTER TABLE ota_events MODIFY hotel_name VARCHAR(255) COLLATE utf8mb4_bin NULL"],
            &["ALTER TABLE ota_events MODIFY hotel_name LONGTEXT COLLATE utf8mb4_bin NULL"],
            "hotel_name is varchar(255)",
        ),
        (
            &["CREATE TRIGGER audit_delete AFTER DELETE ON ota_events FOR EACH ROW SET @n = 1"],
            &["DROP TRIGGER audit_delete"],
            "trigger audit_delete",
        ),
        (
            &["ALTER TABLE ota_events ADD COLUMN note TEXT NOT NULL"],
            &["ALTER TABLE ota_events DROP COLUMN note"],
            "column note",
        ),
    ];
    for (alter, undo, named) in cases {
        let before = env.table_checksum();
        exec(alter);
        for args in [&WINDOW[..], &[][..], &["--full-refresh"][..]] {
            let run = env.run("export-mysql", args);
            assert_eq!(run.code, 2, "{named} {args:?}: {}", run.stderr);
            assert!(run.stderr.contains(named), "{named}: {}", run.stderr);
        }
        assert_eq!(env.table_checksum(), before, "{named}: nothing written");
        exec(undo);
        env.run("export-mysql", &WINDOW).ok();
    }
    // An index of the operator's own that is not unique is theirs to keep.
    exec(&["CREATE INDEX by_key ON ota_events (event_key)"]);
    env.run("export-mysql", &WINDOW).ok();
    env.run("export-mysql", &["--reconcile"]).ok();
}

#[test]
fn two_runs_that_interleave_each_load_their_own_window_and_end_as_one_clean_run() {
    let env = Env::new();
    env.generate("2024-01-01", 4, 200);
    let first = ["--start-date", "2024-01-01", "--end-date", "2024-01-02"];
    let second = ["--start-date", "2024-01-03", "--end-date", "2024-01-04"];
    let step =
        |run: &str, name: &str, args: &[&str]| env.run_with(name, args, &[("OTA_RUN_ID", run)]);
    // Run A stages, then run B stages another window before A loads.
    step("scheduled__a", "stage-files", &first).ok();
    step("backfill__b", "stage-files", &second).ok();
    let loaded = step("scheduled__a", "load-raw", &first).ok().summary();
    let files: Vec<String> = loaded["files_loaded"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|f| {
            f.as_str()
                .unwrap_or_default()
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .collect();
    assert_eq!(files, ["20240101_OTA.parquet", "20240102_OTA.parquet"]);
    step("scheduled__a", "dedup", &first).ok();
    step("scheduled__a", "export-mysql", &[]).ok();
    // B loads and dedups between A's export and A's reconcile: what B changed is pending
    // for A, not drift.
    step("backfill__b", "load-raw", &second).ok();
    step("backfill__b", "dedup", &second).ok();
    let reconcile = step("scheduled__a", "export-mysql", &["--reconcile"]);
    assert_eq!(reconcile.code, 0, "{}", reconcile.stdout);
    let pending = reconcile.summary()["pending_dates"].clone();
    assert!(
        pending
            .as_array()
            .is_some_and(|p| p.iter().any(|d| d == "2024-01-03")),
        "{pending}"
    );
    step("backfill__b", "export-mysql", &second).ok();
    let after = step("backfill__b", "export-mysql", &["--reconcile"]);
    assert_eq!(after.code, 0, "{}", after.stdout);
    assert_eq!(after.summary()["pending_dates"], serde_json::json!([]));

    // The same files in one clean run give the same table.
    let clean = Env::new();
    clean.generate("2024-01-01", 4, 200);
    clean.pipeline(
        &["--start-date", "2024-01-01", "--end-date", "2024-01-04"],
        &[],
    );
    assert_eq!(env.table_checksum(), clean.table_checksum());
}

#[test]
fn a_real_drift_is_not_hidden_as_pending_once_the_feed_is_applied() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 200);
    env.pipeline(&WINDOW, &[]);
    env.mysql(async |c| {
        use mysql_async::prelude::Queryable;
        c.query_drop("DELETE FROM ota_events WHERE event_date = '2024-01-02' LIMIT 3")
            .await
            .expect("delete");
    });
    let run = env.run("export-mysql", &["--reconcile"]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert_eq!(
        run.summary()["drift_dates"],
        serde_json::json!(["2024-01-02"])
    );
    assert_eq!(run.summary()["pending_dates"], serde_json::json!([]));
}

/// The case data's int64 nanoseconds as a Parquet TIMESTAMP of the given unit, each value
/// mapped by `f` first.
fn as_timestamps(f: impl Fn(usize, i64) -> i64) -> impl Fn(&ArrayRef) -> ArrayRef {
    use arrow::array::{AsArray, TimestampNanosecondArray};
    use arrow::datatypes::Int64Type;
    move |column| {
        let ns = column.as_primitive::<Int64Type>();
        Arc::new(
            ns.iter()
                .enumerate()
                .map(|(i, v)| v.map(|v| f(i, v)))
                .collect::<TimestampNanosecondArray>(),
        )
    }
}

#[test]
fn timestamps_that_cannot_belong_to_the_file_are_rejected_with_the_reason() {
    let env = Env::new();
    env.generate("2024-01-01", 2, 300);
    let day2 = env.file("2024-01-02");
    let original = common::read_parquet(&day2);
    // A TIMESTAMP(NANOS) column holding microseconds: every row lands in 1970.
    replace_file(
        &day2,
        &with_timestamps(original.clone(), as_timestamps(|_, ns| ns / 1_000)),
    );
    env.run("stage-files", &WINDOW).ok();
    let run = env.run("load-raw", &WINDOW);
    assert_eq!(run.code, 3, "{}", run.stderr);
    assert_eq!(
        quarantined(&run),
        vec![("20240102_OTA.parquet".to_string(), "rejected".to_string())]
    );
    assert!(
        run.stderr.contains("--max-event-day-distance 30"),
        "{}",
        run.stderr
    );

    // Two rows far off, one 30 days back (at the limit) and one 31: only the 31 is
    // rejected, and nothing lands outside the file's month.
    const DAY_NS: i64 = 86_400_000_000_000;
    const NOON_2023_12_03_NS: i64 = 1_701_604_800_000_000_000;
    replace_file(
        &day2,
        &with_timestamps(
            original,
            as_timestamps(|i, ns| match i {
                0 => NOON_2023_12_03_NS,
                1 => NOON_2023_12_03_NS - DAY_NS,
                2 => ns + 40_000 * DAY_NS,
                _ => ns,
            }),
        ),
    );
    env.run("stage-files", &WINDOW).ok();
    let run = env.run("load-raw", &WINDOW).ok();
    let summary = run.summary();
    assert_eq!(summary["status"], "ok", "{summary}");
    dedup_and_export(&env);
    let dates = served_by_date(&env);
    assert!(
        dates
            .iter()
            .all(|(d, _)| d.as_str() >= "2023-12-03" && d.as_str() <= "2024-01-02"),
        "{dates:?}"
    );
    assert!(dates.iter().any(|(d, _)| d == "2023-12-03"), "{dates:?}");
    let rejects = run.stderr.matches("--max-event-day-distance").count();
    assert!(rejects >= 1, "{}", run.stderr);
}
