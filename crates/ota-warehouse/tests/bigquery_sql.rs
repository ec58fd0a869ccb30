//! The GoogleSQL the BigQuery warehouse generates, checked structurally: every statement
//! parses with a BigQuery-dialect parser, every read or write of a partitioned table
//! carries a partition filter, and values (the external table's URIs above all) travel
//! as bound parameters, never in the SQL text. The emulator cannot run everything
//! (CREATE EXTERNAL TABLE over GCS URIs), so this is where that SQL is checked.

use ota_warehouse::bigquery::sql;
use ota_warehouse::bigquery::{BigQueryConfig, render};
use sqlparser::dialect::BigQueryDialect;
use sqlparser::parser::Parser;

fn config() -> BigQueryConfig {
    BigQueryConfig::parse("bigquery://ota-prod/events?location=EU&staging=gs://bkt/s").unwrap()
}

/// A template rendered for a run: its work tables and its lease token.
fn rendered(template: &str) -> String {
    let c = config();
    render(&c, template, Some("0123456789ab"))
        .replace("{lease_token}", &c.table("_ota_lease_0123456789ab"))
}

/// Every generated template, rendered for a run.
fn templates() -> Vec<(&'static str, String)> {
    let r = rendered;
    let staged_insert = format!(
        "{}{}",
        sql::INSERT_STAGED_FILES_HEAD,
        sql::STAGED_FILE_TUPLE.replace("{i}", "0")
    );
    vec![
        ("schema", r(&sql::SCHEMA)),
        ("create_load_work", r(&sql::CREATE_LOAD_WORK)),
        ("old_file_dates", r(sql::OLD_FILE_DATES)),
        ("replace_file_rows", r(&sql::REPLACE_FILE_ROWS)),
        ("pending_dates", r(sql::PENDING_DATES)),
        ("dedup", r(&sql::DEDUP)),
        ("feed_dates", r(sql::FEED_DATES)),
        ("changes_after", r(&sql::CHANGES_AFTER)),
        ("rows_of_dates", r(&sql::ROWS_OF_DATES)),
        ("checksums_of_dates", r(&sql::CHECKSUMS_OF_DATES)),
        ("checksums_of_all_dates", r(&sql::CHECKSUMS_OF_ALL_DATES)),
        ("latest_staged_run", r(sql::LATEST_STAGED_RUN)),
        ("staged_files_of_run", r(sql::STAGED_FILES_OF_RUN)),
        ("insert_staged_run", r(sql::INSERT_STAGED_RUN)),
        ("insert_staged_files", r(&staged_insert)),
        ("delete_old_staged_runs", r(sql::DELETE_OLD_STAGED_RUNS)),
        ("delete_old_staged_files", r(sql::DELETE_OLD_STAGED_FILES)),
        ("ledger_entries", r(sql::LEDGER_ENTRIES)),
        ("quarantine_entries", r(sql::QUARANTINE_ENTRIES)),
        ("insert_quarantine", r(sql::INSERT_QUARANTINE)),
        ("delete_quarantine", r(sql::DELETE_QUARANTINE)),
        ("create_staged_external", r(sql::CREATE_STAGED_EXTERNAL)),
        ("write_lease_token", r(sql::WRITE_LEASE_TOKEN)),
        ("take_lease", r(sql::TAKE_LEASE)),
        ("release_lease", r(sql::RELEASE_LEASE)),
        ("drop_lease_token", r(sql::DROP_LEASE_TOKEN)),
    ]
}

fn statements(name: &str, text: &str) -> Vec<String> {
    let parsed = Parser::parse_sql(&BigQueryDialect {}, text)
        .unwrap_or_else(|e| panic!("{name} does not parse as GoogleSQL: {e}\n{text}"));
    assert!(!parsed.is_empty(), "{name} is empty");
    parsed.iter().map(ToString::to_string).collect()
}

#[test]
fn every_statement_parses_and_is_fully_rendered() {
    for (name, text) in templates() {
        assert!(
            !text.contains('{') || name == "create_staged_external",
            "{name} has an unrendered placeholder:\n{text}"
        );
        assert!(
            text.contains("`ota-prod.events."),
            "{name} names qualified tables"
        );
        statements(name, &text);
    }
}

#[test]
fn partitioned_tables_are_always_read_and_written_through_a_partition_filter() {
    // table -> the filters that prune its partitions
    let partitioned: [(&str, &[&str]); 4] = [
        ("raw_events`", &["source_day IN UNNEST("]),
        ("raw_rejects`", &["source_day IN UNNEST("]),
        (
            "dedup_events`",
            &[
                "event_date IN UNNEST(",
                "event_date BETWEEN lo AND hi",
                "event_date IS NOT NULL",
            ],
        ),
        (
            "dedup_tombstones`",
            &["event_date IN UNNEST(", "event_date BETWEEN lo AND hi"],
        ),
    ];
    let mut checked = 0;
    for (name, text) in templates() {
        for stmt in statements(name, &text) {
            let upper = stmt.to_uppercase();
            if upper.starts_with("CREATE TABLE IF NOT EXISTS") {
                continue;
            }
            for (table, filters) in partitioned {
                if !stmt.contains(table) {
                    continue;
                }
                // Appending rows read from elsewhere scans no partition of the target.
                let target_only_insert = upper.starts_with("INSERT INTO")
                    && stmt.find(table).is_some_and(|at| at < 60)
                    && stmt.matches(table).count() == 1;
                if target_only_insert {
                    continue;
                }
                assert!(
                    filters.iter().any(|f| stmt.contains(f)),
                    "{name}: a statement on {table} has no partition filter:\n{stmt}"
                );
                checked += 1;
            }
        }
    }
    assert!(checked >= 12, "only {checked} statements checked");
}

#[test]
fn dedup_merge_is_scoped_to_the_affected_dates_on_both_sides() {
    let text = rendered(&sql::DEDUP);
    let stmts = statements("dedup", &text);
    let merge = stmts
        .iter()
        .find(|s| s.starts_with("MERGE"))
        .expect("a MERGE");
    // Source: the winners, built from raw through both partition filters.
    let winners = stmts
        .iter()
        .find(|s| {
            s.contains("_ota_work_winners_0123456789ab") && s.starts_with("CREATE OR REPLACE TABLE")
        })
        .expect("winners");
    assert!(
        winners.contains("source_day IN UNNEST(source_days)")
            && winners.contains("event_date IN UNNEST(dates)"),
        "{winners}"
    );
    // Target: the ON clause prunes to the dates' range, deletes only touch the dates.
    assert!(
        merge.contains("ON d.event_key = w.event_key AND d.event_date BETWEEN lo AND hi"),
        "{merge}"
    );
    assert!(merge.contains("NOT MATCHED BY SOURCE AND d.event_date BETWEEN lo AND hi AND d.event_date IN UNNEST(dates)"), "{merge}");
    assert!(text.contains("BEGIN TRANSACTION") && text.contains("COMMIT TRANSACTION"));
}

#[test]
fn the_external_table_takes_its_uris_as_a_bound_list() {
    let text = render(&config(), sql::CREATE_STAGED_EXTERNAL, None);
    assert!(!text.contains("gs://"), "no URI in the SQL text:\n{text}");
    let stmts = statements("create_staged_external", &text);
    assert_eq!(stmts.len(), 1);
    assert!(stmts[0].contains("@uris"), "{}", stmts[0]);
    // What BigQuery executes: the template with the bound list rendered by FORMAT('%T').
    let inner_start = text.find("\"\"\"").expect("triple-quoted DDL") + 3;
    let inner_end = text[inner_start..].find("\"\"\"").expect("end") + inner_start;
    let ddl = text[inner_start..inner_end].replace(
        "%T",
        "['gs://lake/d/20240101_OTA.parquet', 'gs://lake/d/20240102_OTA.parquet']",
    );
    assert!(
        ddl.starts_with("CREATE OR REPLACE EXTERNAL TABLE `ota-prod.events.staged_external`"),
        "{ddl}"
    );
    assert!(ddl.contains("format = 'PARQUET'"), "{ddl}");
}
