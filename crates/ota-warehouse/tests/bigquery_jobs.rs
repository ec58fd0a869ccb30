//! BigQuery jobs against bqemulator (under `scripts/with-emulators.sh`): a retried run
//! re-attaches to its jobs instead of running them twice, reads always run anew, and a
//! failed job is retried under a new id; tables read as Arrow through the Storage Read
//! API (the emulator's gRPC endpoint). Behind a faulty proxy: a job poll answered 503
//! is tried again, and a job that never finishes fails at its deadline and is cancelled.

mod backends;
#[path = "../../ota-lake/tests/faulty_http/mod.rs"]
mod faulty_http;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use faulty_http::{Fault, FaultyHttpProxy};

use backends::{EMULATOR_PROJECT, create_bucket_and_dataset};
use ota_lake::gcp::{BlockingRuntime, Credentials};
use ota_warehouse::bigquery::client::{Attach, DEFAULT_JOB_TIMEOUT, JobSettings, Jobs};

fn jobs(run_key: &str, max_bytes_billed: Option<i64>) -> Jobs {
    let endpoint = std::env::var("OTA_BQ_ENDPOINT").expect("OTA_BQ_ENDPOINT");
    jobs_at(&endpoint, run_key, max_bytes_billed, DEFAULT_JOB_TIMEOUT)
}

fn jobs_at(
    endpoint: &str,
    run_key: &str,
    max_bytes_billed: Option<i64>,
    job_timeout: Duration,
) -> Jobs {
    Jobs::connect(
        BlockingRuntime::new().expect("runtime"),
        JobSettings {
            project: EMULATOR_PROJECT.into(),
            location: "US".into(),
            max_bytes_billed,
            dry_run: false,
            run_key: run_key.into(),
            step: "test".into(),
            job_timeout,
        },
        Credentials::Emulator,
        Some(endpoint),
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

#[test]
#[ignore = "needs the BigQuery emulator: scripts/with-emulators.sh"]
fn tables_are_read_as_arrow_through_the_storage_read_api() {
    use arrow::array::{Array, AsArray};
    use arrow::util::display::array_value_to_string;
    use gcp_bigquery_client::model::table_reference::TableReference;
    use ota_lake::gcp::Credentials;
    use ota_warehouse::bigquery::storage_read;

    let dataset = format!("read_{}", std::process::id());
    create_bucket_and_dataset("ota-jobs", &dataset);
    let mut jobs = jobs("run-read", None);
    let ddl = format!(
        "CREATE TABLE `{EMULATOR_PROJECT}.{dataset}.t` AS \
         SELECT FROM_HEX('00ff10') AS k, DATE '2024-02-29' AS d, NUMERIC '12.5' AS p, \
         'zürich' AS s, TRUE AS b, CAST(NULL AS INT64) AS n, 7 AS i"
    );
    jobs.query("ctas", &ddl, &[], Attach::ByInputs(&[]))
        .expect("create");
    let table = TableReference {
        project_id: EMULATOR_PROJECT.into(),
        dataset_id: dataset.clone(),
        table_id: "t".into(),
    };
    let endpoint = backends::settings().storage_endpoint;
    let mut reader = storage_read::open(jobs.runtime(), &endpoint, &Credentials::Emulator, &table)
        .expect("open")
        .expect("the emulator serves read sessions on real tables");
    let batch = reader.next_batch().expect("read").expect("a batch");
    assert_eq!(batch.num_rows(), 1);
    let col = |n: &str| batch.column_by_name(n).unwrap_or_else(|| panic!("{n}"));
    assert_eq!(
        ota_warehouse::binary_at(col("k").as_ref(), 0),
        Some(&[0u8, 0xff, 0x10][..])
    );
    assert_eq!(array_value_to_string(col("d"), 0).expect("d"), "2024-02-29");
    assert!(
        array_value_to_string(col("p"), 0)
            .expect("p")
            .starts_with("12.5")
    );
    assert_eq!(
        col("s")
            .as_string_opt::<i32>()
            .map(|a| a.value(0).to_string())
            .unwrap_or_else(|| array_value_to_string(col("s"), 0).expect("s")),
        "zürich"
    );
    assert!(col("n").is_null(0));
    assert_eq!(array_value_to_string(col("i"), 0).expect("i"), "7");
    assert!(reader.next_batch().expect("end").is_none());
}

#[test]
#[ignore = "needs the BigQuery emulator: scripts/with-emulators.sh"]
fn a_job_poll_answered_503_is_tried_again() {
    let endpoint = std::env::var("OTA_BQ_ENDPOINT").expect("OTA_BQ_ENDPOINT");
    // The first two reads of a job's state fail as a busy BigQuery would.
    let proxy = FaultyHttpProxy::start(&endpoint, |method, path, faulted| {
        if method == "GET" && path.contains("/jobs/") && faulted < 2 {
            Fault::Unavailable
        } else {
            Fault::Pass
        }
    });
    let mut jobs = jobs_at(&proxy.endpoint, "run-503", None, DEFAULT_JOB_TIMEOUT);
    let result = jobs
        .query("answer", "SELECT 42", &[], Attach::Never)
        .expect("the query succeeds after the failed polls")
        .expect("result");
    assert_eq!(result.rows[0][0].as_str(), Some("42"));
    assert_eq!(proxy.faulted.load(Ordering::SeqCst), 2);
}

#[test]
#[ignore = "needs the BigQuery emulator: scripts/with-emulators.sh"]
fn a_job_that_never_finishes_fails_at_its_deadline_and_is_cancelled() {
    let endpoint = std::env::var("OTA_BQ_ENDPOINT").expect("OTA_BQ_ENDPOINT");
    // Every poll says the job is still running.
    let proxy = FaultyHttpProxy::start(&endpoint, |method, path, _| {
        if method == "GET" && path.contains("/jobs/") {
            Fault::Rewrite {
                from: "\"DONE\"".into(),
                to: "\"RUNNING\"".into(),
            }
        } else {
            Fault::Pass
        }
    });
    let mut jobs = jobs_at(&proxy.endpoint, "run-stuck", None, Duration::from_secs(2));
    let started = Instant::now();
    let err = jobs
        .query("stuck", "SELECT 1", &[], Attach::Never)
        .expect_err("the job never finishes")
        .to_string();
    let took = started.elapsed();
    assert!(
        err.contains("within 2 s") && err.contains("cancelled"),
        "{err}"
    );
    assert!(took < Duration::from_secs(30), "took {took:?}");
    let seen = proxy.seen.lock().expect("seen").clone();
    assert!(
        seen.iter()
            .any(|r| r.starts_with("POST") && r.contains("/cancel")),
        "the job was not cancelled: {seen:?}"
    );
}
