//! Fresh warehouses for the conformance suite: an embedded DuckDB file, or a new dataset
//! on bqemulator (with a staging bucket on fake-gcs-server) per test.
#![allow(dead_code)]

use std::sync::atomic::{AtomicU32, Ordering};

use ota_pipeline::cli::WarehouseArgs;
use ota_pipeline::gcp::BlockingRuntime;
use ota_pipeline::warehouse::{Access, Warehouse, open_warehouse};

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

    pub fn open(&self) -> Box<dyn Warehouse> {
        open_warehouse(
            &WarehouseArgs::url(self.url.clone()),
            Access::ReadWrite,
            "test",
        )
        .expect("open the warehouse")
    }
}
