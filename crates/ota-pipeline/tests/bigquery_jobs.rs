//! BigQuery jobs against bqemulator (under `scripts/with-emulators.sh`): a retried run
//! re-attaches to its jobs instead of running them twice, reads always run anew, and a
//! failed job is retried under a new id.

mod backends;

use backends::{EMULATOR_PROJECT, create_bucket_and_dataset};
use ota_pipeline::warehouse::bigquery::client::{Attach, JobSettings, Jobs};

fn jobs(run_key: &str, max_bytes_billed: Option<i64>) -> Jobs {
    let endpoint = std::env::var("OTA_BQ_ENDPOINT").expect("OTA_BQ_ENDPOINT");
    Jobs::connect(
        JobSettings {
            project: EMULATOR_PROJECT.into(),
            location: "US".into(),
            max_bytes_billed,
            dry_run: false,
            run_key: run_key.into(),
            step: "test".into(),
        },
        None,
        Some(&endpoint),
    )
    .expect("connect")
}

fn count(jobs: &mut Jobs, table: &str) -> String {
    let result = jobs
        .query(
            "count",
            &format!("SELECT COUNT(*) FROM {table}"),
            &[],
            Attach::Never,
        )
        .expect("count")
        .expect("result");
    result.rows[0][0].as_str().expect("count").to_string()
}

#[test]
#[ignore = "needs the BigQuery emulator: scripts/with-emulators.sh"]
fn a_retried_run_reattaches_to_its_jobs_and_reads_run_anew() {
    let dataset = format!("jobs_{}", std::process::id());
    create_bucket_and_dataset("ota-jobs", &dataset);
    let table = format!("`{EMULATOR_PROJECT}.{dataset}.t`");
    let insert = format!("INSERT INTO {table} (v) VALUES (1)");

    let mut first = jobs("run-1", Some(123_456_789));
    first
        .query(
            "create",
            &format!("CREATE TABLE IF NOT EXISTS {table} (v INT64)"),
            &[],
            Attach::ByInputs(&[]),
        )
        .expect("create");
    first
        .query("insert", &insert, &[], Attach::ByInputs(&[]))
        .expect("insert");
    assert_eq!(count(&mut first, &table), "1");

    // The retry of the same run: the insert job exists, so it is re-attached, not re-run.
    let mut retry = jobs("run-1", Some(123_456_789));
    retry
        .query("insert", &insert, &[], Attach::ByInputs(&[]))
        .expect("insert");
    let record = retry.records.last().expect("record").clone();
    assert!(record.reattached, "{record:?}");
    assert_eq!(
        count(&mut retry, &table),
        "1",
        "the row was not inserted twice"
    );
    // Reads never re-attach: two counts are two jobs.
    let ids: Vec<String> = retry.records.iter().map(|r| r.job_id.clone()).collect();
    let reads: Vec<&String> = ids.iter().filter(|i| i.contains("_count_")).collect();
    assert_eq!(reads.len(), 1);
    count(&mut retry, &table);
    let reads_after: std::collections::BTreeSet<&String> = retry
        .records
        .iter()
        .map(|r| &r.job_id)
        .filter(|i| i.contains("_count_"))
        .collect();
    assert_eq!(reads_after.len(), 2, "each read is a new job");

    // Another run does the work again.
    let mut other = jobs("run-2", None);
    other
        .query("insert", &insert, &[], Attach::ByInputs(&[]))
        .expect("insert");
    assert!(!other.records.last().expect("record").reattached);
    assert_eq!(count(&mut other, &table), "2");
}

#[test]
#[ignore = "needs the BigQuery emulator: scripts/with-emulators.sh"]
fn a_failed_job_is_retried_under_a_new_id() {
    let failing = "SELECT ERROR('boom')";
    let mut first = jobs("run-fail", None);
    let err = first
        .query("fails", failing, &[], Attach::ByInputs(&[]))
        .expect_err("fails")
        .to_string();
    assert!(err.contains("boom"), "{err}");
    let mut retry = jobs("run-fail", None);
    let err = retry
        .query("fails", failing, &[], Attach::ByInputs(&[]))
        .expect_err("fails again")
        .to_string();
    assert!(err.contains("_retry1"), "the retry ran as a new job: {err}");
}
