//! The step binaries, unchanged, on the production backends: a gs:// lake on
//! fake-gcs-server and a bigquery:// warehouse on bqemulator (sharing one storage
//! folder), into the real MySQL. Run by `scripts/with-emulators.sh`, or live against a
//! real project with `OTA_IT_GCP=1` (see `live`); ignored otherwise.

mod common;

use common::{Env, Run, bin};

/// The emulators' project (scripts/with-emulators.sh).
const EMULATOR_PROJECT: &str = "ota-test";

fn env(var: &str) -> String {
    std::env::var(var).unwrap_or_else(|_| {
        panic!(
            "{var} is not set: run under scripts/with-emulators.sh, or set OTA_IT_GCP=1 (docs/operations.md)"
        )
    })
}

/// Live tests against a real project: `OTA_IT_GCP=1` with OTA_GCS_KEY_FILE,
/// OTA_BQ_KEY_FILE, OTA_IT_PROJECT and OTA_IT_BUCKET (an existing bucket both accounts
/// may use). Otherwise the emulators.
fn live() -> bool {
    std::env::var("OTA_IT_GCP").is_ok_and(|v| v == "1")
}

/// A test's environment on the cloud backends; live, its dataset is deleted at the end.
struct CloudEnv {
    env: Env,
    live_dataset: Option<(String, String)>,
}

impl std::ops::Deref for CloudEnv {
    type Target = Env;
    fn deref(&self) -> &Env {
        &self.env
    }
}

impl Drop for CloudEnv {
    fn drop(&mut self) {
        if let Some((project, dataset)) = self.live_dataset.take() {
            let key = env("OTA_BQ_KEY_FILE");
            let _ = self.env.rt.block_on(async move {
                let client = gcp_bigquery_client::Client::from_service_account_key_file(&key)
                    .await
                    .ok()?;
                Some(
                    client
                        .dataset()
                        .delete_if_exists(&project, &dataset, true)
                        .await,
                )
            });
        }
    }
}

/// A bucket (or, live, a prefix of the test bucket) and a dataset of their own.
fn cloud_env(name: &str) -> CloudEnv {
    let id = format!(
        "{name}_{}_{}",
        std::process::id(),
        chrono::Utc::now().timestamp()
    );
    let dataset = format!("ota_it_{id}");
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let (project, lake) = if live() {
        let project = env("OTA_IT_PROJECT");
        let key = env("OTA_BQ_KEY_FILE");
        rt.block_on(async {
            let client = gcp_bigquery_client::Client::from_service_account_key_file(&key)
                .await
                .expect("BigQuery client");
            client
                .dataset()
                .create(
                    gcp_bigquery_client::model::dataset::Dataset::new(&project, &dataset)
                        .location("US"),
                )
                .await
                .expect("create the test dataset");
        });
        (
            project,
            format!("gs://{}/ota-it/{id}", env("OTA_IT_BUCKET")),
        )
    } else {
        let bucket = format!("ota-{}", id.replace('_', "-"));
        rt.block_on(async {
            let http = reqwest::Client::new();
            let r = http
                .post(format!("{}/storage/v1/b", env("OTA_GCS_ENDPOINT")))
                .json(&serde_json::json!({ "name": bucket }))
                .send()
                .await
                .expect("bucket");
            assert!(r.status().is_success(), "bucket: {}", r.status());
            let r = http
                .post(format!(
                    "{}/bigquery/v2/projects/{EMULATOR_PROJECT}/datasets",
                    env("OTA_BQ_ENDPOINT")
                ))
                .bearer_auth("emulator")
                .json(&serde_json::json!({
                    "datasetReference": { "projectId": EMULATOR_PROJECT, "datasetId": dataset },
                    "location": "US"
                }))
                .send()
                .await
                .expect("dataset");
            assert!(r.status().is_success(), "dataset: {}", r.status());
        });
        (EMULATOR_PROJECT.to_string(), format!("gs://{bucket}"))
    };
    // The emulator cannot create external tables over GCS URIs; a real project can.
    let external = if live() { "true" } else { "false" };
    let env = Env::with_backends(
        format!("{lake}/daily"),
        format!("bigquery://{project}/{dataset}?staging={lake}/staging&external_table={external}"),
    );
    CloudEnv {
        env,
        live_dataset: live().then(|| (project.clone(), dataset.clone())),
    }
}

/// Generates one case-data file of `days` days and stages it with `--from`; returns the
/// staged window's flags (without dates, the window is the days the file holds).
fn stage_generated(env: &Env, seed: &str, start: &str, days: &str, rows: &str) -> Vec<String> {
    let big = env.dir.path().join(format!("case-{seed}.parquet"));
    Run::from(
        std::process::Command::new(bin("ota-gen"))
            .args(["--seed", seed, "--start", start, "--days", days])
            .args(["--rows-per-day", rows, "--single"])
            .arg(&big)
            .output()
            .expect("ota-gen"),
    )
    .ok();
    let staged = env
        .run("stage-files", &["--from", big.to_str().expect("path")])
        .ok()
        .summary();
    let split_days = staged["split"]["days"].as_array().expect("days").len();
    assert_eq!(staged["counts"]["files"], split_days, "{staged}");
    let bound = |b: &str| staged["window"][b].as_str().expect("bound").to_string();
    vec![
        "--start-date".into(),
        bound("start"),
        "--end-date".into(),
        bound("end"),
    ]
}

fn loaded(summary: &serde_json::Value) -> usize {
    summary["files_loaded"].as_array().map_or(0, Vec::len)
}

#[test]
#[ignore = "needs the GCS and BigQuery emulators: scripts/with-emulators.sh"]
fn the_pipeline_runs_unchanged_on_gcs_and_bigquery() {
    let env = cloud_env("e2e");
    // One big file, split into daily objects in the bucket by stage-files --from.
    let window = stage_generated(&env, "11", "2024-03-01", "3", "400");
    let window: Vec<&str> = window.iter().map(String::as_str).collect();
    assert_eq!(window[3], "2024-03-03");
    let load = env.run("load-raw", &window).ok().summary();
    assert!(loaded(&load) >= 3, "{load}");
    // The summary says what ran in BigQuery: the jobs and their ids.
    let jobs = &load["warehouse_jobs"];
    assert!(jobs["jobs"].as_u64() >= Some(5), "{load}");
    assert!(
        jobs["job_ids"]
            .as_array()
            .is_some_and(|ids| ids.iter().any(|id| id
                .as_str()
                .is_some_and(|i| i.starts_with("ota_load-raw_load_replace_rows_")))),
        "{load}"
    );
    let dedup = env.run("dedup", &window).ok().summary();
    let export = env.run("export-mysql", &[]).ok().summary();
    let rows = env.count();
    assert!(rows > 1000, "{rows} rows in MySQL; {dedup} {export}");
    let first = env.table_checksum();
    // Reconcile compares every event date's rows and checksum in BigQuery and MySQL.
    let reconciled = env.run("export-mysql", &["--reconcile"]).ok().summary();
    assert_eq!(reconciled["status"], "ok", "{reconciled}");
    assert!(reconciled["dates"].as_u64() >= Some(3), "{reconciled}");
    // A dry-run backfill prints what it would read and leaves MySQL alone.
    let dry = env
        .run(
            "export-mysql",
            &[
                "--start-date",
                "2024-03-02",
                "--end-date",
                "2024-03-02",
                "--dry-run",
            ],
        )
        .ok();
    assert!(
        dry.stdout.contains("estimated bytes processed"),
        "{}",
        dry.stdout
    );
    assert_eq!(env.table_checksum(), first);
    let refused = env.run(
        "stage-files",
        &["--from", "/nonexistent.parquet", "--dry-run"],
    );
    assert_eq!(refused.code, 2, "{}", refused.stderr);

    // The same as a DuckDB run over the same files: identical keys and hashes.
    let local = Env::new();
    stage_generated(&local, "11", "2024-03-01", "3", "400");
    local.pipeline(&window, &[]);
    assert_eq!(local.table_checksum(), first, "BigQuery and DuckDB agree");

    // A re-run changes nothing: no file reloaded, the same rows.
    let again = env.pipeline(&window, &[]);
    assert_eq!(loaded(&again[1]), 0, "{}", again[1]);
    assert_eq!(env.table_checksum(), first);

    // A backfill of one day re-syncs it: rows of that date deleted by hand come back.
    env.mysql(async |c| {
        use mysql_async::prelude::Queryable;
        c.query_drop("DELETE FROM ota_events WHERE event_date = '2024-03-02' LIMIT 50")
            .await
            .expect("delete");
    });
    assert_ne!(env.table_checksum(), first);
    env.pipeline(
        &["--start-date", "2024-03-02", "--end-date", "2024-03-02"],
        &[],
    );
    assert_eq!(env.table_checksum(), first, "the backfill restored the day");
}

#[test]
#[ignore = "needs the GCS and BigQuery emulators: scripts/with-emulators.sh"]
fn dry_run_prints_statements_and_changes_nothing() {
    let env = cloud_env("dry");
    let window = stage_generated(&env, "3", "2024-04-01", "1", "50");
    let window: Vec<&str> = window.iter().map(String::as_str).collect();
    let dry = env
        .run("load-raw", &[&window[..], &["--dry-run"]].concat())
        .ok();
    assert!(dry.stdout.contains("raw_events"), "{}", dry.stdout);
    assert!(
        dry.stdout.contains("estimated bytes processed"),
        "{}",
        dry.stdout
    );
    // Nothing was loaded: the real run still finds every file new.
    let load = env.run("load-raw", &window).ok().summary();
    assert!(loaded(&load) >= 1, "{load}");
    assert_eq!(
        load["files_skipped"].as_array().map(Vec::len),
        Some(0),
        "{load}"
    );
}

#[test]
#[ignore = "needs the GCS and BigQuery emulators: scripts/with-emulators.sh"]
fn a_corrupt_object_is_quarantined_clearly_and_loses_nothing() {
    let env = cloud_env("bad");
    let window = stage_generated(&env, "5", "2024-05-01", "2", "100");
    let window: Vec<&str> = window.iter().map(String::as_str).collect();
    env.run("load-raw", &window).ok();
    env.run("dedup", &window).ok();
    env.run("export-mysql", &[]).ok();
    let before = env.table_checksum();

    // A daily object is overwritten with bytes that are not Parquet.
    let bad = env.dir.path().join("20240502_OTA.parquet");
    std::fs::write(&bad, b"this is not a parquet file").expect("write");
    let lake = ota_lake::LakeConfig::new(env.lake_url(), |var| std::env::var(var).ok())
        .and_then(|config| config.open())
        .expect("lake");
    lake.put_file("20240502_OTA.parquet", &bad).expect("upload");
    env.run("stage-files", &window).ok();
    // The file is quarantined, the others load: a partial run (exit 3).
    let failed = env.run("load-raw", &window);
    assert_eq!(failed.code, 3, "{}", failed.stderr);
    assert_eq!(failed.summary()["status"], "partial");
    assert!(
        failed.stderr.contains("20240502_OTA.parquet") && failed.stderr.contains("Parquet"),
        "the error names the file and what is wrong: {}",
        failed.stderr
    );
    // Nothing was lost: dedup and export see no change, MySQL keeps its rows.
    env.run("dedup", &window).ok();
    env.run("export-mysql", &[]).ok();
    assert_eq!(env.table_checksum(), before);
}

#[test]
#[ignore = "needs the GCS and BigQuery emulators: scripts/with-emulators.sh"]
fn every_step_has_a_dry_run() {
    let env = cloud_env("dry2");
    let window = stage_generated(&env, "8", "2024-06-01", "1", "50");
    // A dry stage-files over another window must leave the staged window as it is.
    let other = [
        "--start-date",
        "2024-07-01",
        "--end-date",
        "2024-07-02",
        "--dry-run",
    ];
    let dry_stage = env.run("stage-files", &other).ok();
    assert!(
        dry_stage.stdout.contains("staged_files"),
        "{}",
        dry_stage.stdout
    );
    let window: Vec<&str> = window.iter().map(String::as_str).collect();
    env.run("load-raw", &window).ok();
    for step in ["stage-files", "dedup", "export-mysql"] {
        let run = env.run(step, &[&window[..], &["--dry-run"]].concat()).ok();
        assert!(
            run.stdout.contains("estimated bytes processed"),
            "{step}: {}",
            run.stdout
        );
    }
    // Whether a dry run changes nothing cannot be checked for scripts here: bqemulator
    // executes multi-statement scripts even when asked for a dry run (BigQuery does
    // not). The single statements are checked: the dry stage-files staged nothing new.
    let staged = env.run("load-raw", &window).ok().summary();
    assert_eq!(staged["window"]["start"], window[1], "{staged}");
}
