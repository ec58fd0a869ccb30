//! Fresh warehouses for the conformance suite: an embedded DuckDB file, or a new dataset
//! on bqemulator (with a staging bucket on fake-gcs-server) per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use ota_lake::gcp::BlockingRuntime;
use ota_warehouse::{Access, RunSettings, Warehouse, open_warehouse};

/// The BigQuery emulator's project (scripts/with-emulators.sh).
pub const EMULATOR_PROJECT: &str = "ota-test";
const STAGING_BUCKET: &str = "ota-staging";

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct Backend {
    url: String,
    _dir: Option<tempfile::TempDir>,
}

fn unique(prefix: &str) -> String {
    format!(
        "{prefix}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// BigQuery reached as the emulators' environment says (scripts/with-emulators.sh).
pub fn settings() -> ota_warehouse::bigquery::BigQuerySettings {
    ota_warehouse::bigquery::BigQuerySettings::from_lookup(|var| std::env::var(var).ok())
        .expect("the emulators' settings")
}

fn env(var: &str) -> String {
    std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set: run under scripts/with-emulators.sh"))
}

/// Creates a bucket on fake-gcs-server and a dataset on bqemulator (idempotent).
pub fn create_bucket_and_dataset(bucket: &str, dataset: &str) {
    let rt = BlockingRuntime::new().expect("runtime");
    let gcs = env("OTA_GCS_ENDPOINT");
    let bq = env("OTA_BQ_ENDPOINT");
    rt.block_on(async {
        let http = reqwest::Client::new();
        let r = http
            .post(format!("{gcs}/storage/v1/b"))
            .json(&serde_json::json!({ "name": bucket }))
            .send()
            .await
            .expect("create bucket");
        assert!(
            r.status().is_success() || r.status().as_u16() == 409,
            "bucket: {}",
            r.status()
        );
        let r = http
            .post(format!(
                "{bq}/bigquery/v2/projects/{EMULATOR_PROJECT}/datasets"
            ))
            .bearer_auth("emulator")
            .json(&serde_json::json!({
                "datasetReference": { "projectId": EMULATOR_PROJECT, "datasetId": dataset },
                "location": "US"
            }))
            .send()
            .await
            .expect("create dataset");
        assert!(
            r.status().is_success() || r.status().as_u16() == 409,
            "dataset: {}",
            r.status()
        );
    });
}

impl Backend {
    pub fn duckdb() -> Self {
        let dir = tempfile::tempdir().expect("dir");
        let url = format!("duckdb://{}", dir.path().join("w.duckdb").display());
        Backend {
            url,
            _dir: Some(dir),
        }
    }

    pub fn bigquery() -> Self {
        let dataset = unique("conf");
        create_bucket_and_dataset(STAGING_BUCKET, &dataset);
        Backend {
            url: format!(
                "bigquery://{EMULATOR_PROJECT}/{dataset}?staging=gs://{STAGING_BUCKET}/{dataset}&external_table=false"
            ),
            _dir: None,
        }
    }

    /// The BigQuery warehouse itself, for what only it has (the feed's bounds).
    pub fn open_bigquery(&self) -> ota_warehouse::bigquery::BigQueryWarehouse {
        self.try_open_bigquery("test", false)
            .expect("open the BigQuery warehouse")
    }

    /// Opens the BigQuery warehouse as `step` would (writers take the dataset's lease).
    pub fn try_open_bigquery(
        &self,
        step: &str,
        read_only: bool,
    ) -> ota_core::Result<ota_warehouse::bigquery::BigQueryWarehouse> {
        let options = ota_warehouse::bigquery::RunOptions {
            step: step.into(),
            run_id: None,
            dry_run: false,
        };
        ota_warehouse::bigquery::BigQueryWarehouse::open(
            &self.url,
            read_only,
            &options,
            &settings(),
        )
    }

    /// Runs GoogleSQL on the emulator, outside the pipeline (`{dataset}` is this
    /// backend's dataset).
    pub fn run_sql(&self, sql: &str) {
        let dataset = self
            .url
            .split('/')
            .nth(3)
            .and_then(|d| d.split('?').next())
            .expect("a bigquery:// URL")
            .to_string();
        let sql = sql.replace("{dataset}", &dataset);
        let bq = env("OTA_BQ_ENDPOINT");
        let rt = BlockingRuntime::new().expect("runtime");
        rt.block_on(async {
            let r = reqwest::Client::new()
                .post(format!(
                    "{bq}/bigquery/v2/projects/{EMULATOR_PROJECT}/queries"
                ))
                .bearer_auth("emulator")
                .json(&serde_json::json!({ "query": sql, "useLegacySql": false }))
                .send()
                .await
                .expect("query");
            let body: serde_json::Value = r.json().await.expect("query answer");
            assert!(body.get("errors").is_none(), "{sql}: {body}");
        });
    }

    pub fn open(&self) -> Box<dyn Warehouse> {
        open_warehouse(
            &self.url,
            &RunSettings::default(),
            Access::ReadWrite,
            "test",
            &settings(),
        )
        .expect("open the warehouse")
    }
}
