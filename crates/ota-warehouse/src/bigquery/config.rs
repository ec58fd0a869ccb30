//! The BigQuery warehouse's configuration: what a `bigquery://` URL says, how BigQuery
//! is reached (its settings, built once by the CLI from the environment) and how a step
//! runs its jobs.

use std::time::Duration;

use ota_core::error::{PipelineError, Result};
use ota_lake::gcp::{CredentialSource, CredentialVars};
use ota_lake::gcs::GcsSettings;

use super::client::DEFAULT_JOB_TIMEOUT;

pub const KEY_FILE_VAR: &str = "OTA_BQ_KEY_FILE";
/// The BigQuery service account's key as JSON (from an Airflow connection, say).
pub const KEY_JSON_VAR: &str = "OTA_BQ_KEY_JSON";
/// Endpoint override, for an emulator (then no key is needed).
pub const ENDPOINT_VAR: &str = "OTA_BQ_ENDPOINT";
/// Where BigQuery credentials come from; none set: Application Default Credentials.
pub const CREDENTIAL_VARS: CredentialVars = CredentialVars {
    key_file: KEY_FILE_VAR,
    key_json: KEY_JSON_VAR,
    endpoint: ENDPOINT_VAR,
};
/// Storage Read API endpoint override, for an emulator (`http://127.0.0.1:9060`).
pub const STORAGE_ENDPOINT_VAR: &str = "OTA_BQ_STORAGE_ENDPOINT";
/// Caps every job's billed bytes.
pub const MAX_BYTES_VAR: &str = "OTA_BQ_MAX_BYTES";
/// Seconds a job may run before the step gives up on it.
pub const JOB_TIMEOUT_VAR: &str = "OTA_BQ_JOB_TIMEOUT";
const DEFAULT_STORAGE_ENDPOINT: &str = "https://bigquerystorage.googleapis.com";

/// How BigQuery is reached and what each job may cost. The default is Google's endpoints
/// with Application Default Credentials, no cap on billed bytes and a 3-hour job timeout.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigQuerySettings {
    /// The BigQuery account (jobs and the Storage Read API).
    pub credentials: CredentialSource,
    /// The REST endpoint when it is not Google's (an emulator).
    pub endpoint: Option<String>,
    pub storage_endpoint: String,
    pub max_bytes_billed: Option<i64>,
    pub job_timeout: Duration,
    /// How the staging bucket (GCS, the GCS account) is reached.
    pub staging: GcsSettings,
}

impl Default for BigQuerySettings {
    fn default() -> Self {
        BigQuerySettings {
            credentials: CredentialSource::ApplicationDefault {
                metadata_host: None,
            },
            endpoint: None,
            storage_endpoint: DEFAULT_STORAGE_ENDPOINT.to_string(),
            max_bytes_billed: None,
            job_timeout: DEFAULT_JOB_TIMEOUT,
            staging: GcsSettings::default(),
        }
    }
}

impl BigQuerySettings {
    /// The settings the variables above (and the GCS ones, for staging) give; `lookup`
    /// returns a variable's value (the CLI hands over the process environment). Empty
    /// counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let set = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        let positive = |var: &str, what: &str| -> Result<Option<u64>> {
            set(var)
                .map(|v| {
                    v.trim()
                        .parse::<u64>()
                        .ok()
                        .filter(|n| *n > 0)
                        .ok_or_else(|| {
                            PipelineError::Config(format!("{var}={v:?} must be a positive {what}"))
                        })
                })
                .transpose()
        };
        let max_bytes_billed = positive(MAX_BYTES_VAR, "number of bytes")?
            .map(|b| {
                i64::try_from(b)
                    .map_err(|_| PipelineError::Config(format!("{MAX_BYTES_VAR}={b} is too large")))
            })
            .transpose()?;
        Ok(BigQuerySettings {
            credentials: CredentialSource::from_lookup(CREDENTIAL_VARS, &lookup)?,
            endpoint: set(ENDPOINT_VAR),
            storage_endpoint: set(STORAGE_ENDPOINT_VAR)
                .unwrap_or_else(|| DEFAULT_STORAGE_ENDPOINT.to_string()),
            max_bytes_billed,
            job_timeout: positive(JOB_TIMEOUT_VAR, "number of seconds")?
                .map_or(DEFAULT_JOB_TIMEOUT, Duration::from_secs),
            staging: GcsSettings::from_lookup(&lookup)?,
        })
    }
}

/// What a `bigquery://` URL says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BigQueryConfig {
    pub project: String,
    pub dataset: String,
    pub location: String,
    /// Where load-raw writes typed Parquet for load jobs (`gs://bucket/prefix`).
    pub staging: Option<String>,
    /// Whether stage-files (re)creates the external table over the staged URIs.
    pub external_table: bool,
}

fn valid_project(p: &str) -> bool {
    (6..=30).contains(&p.len())
        && p.as_bytes()[0].is_ascii_lowercase()
        && p.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !p.ends_with('-')
}

fn valid_dataset(d: &str) -> bool {
    (1..=1024).contains(&d.len()) && d.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
}

impl BigQueryConfig {
    pub fn parse(url: &str) -> Result<Self> {
        let bad = |why: &str| PipelineError::Config(format!("warehouse URL {url:?}: {why}"));
        let rest = url
            .strip_prefix("bigquery://")
            .ok_or_else(|| bad("must start with bigquery://"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (project, dataset) = path
            .split_once('/')
            .ok_or_else(|| bad("must be bigquery://project/dataset"))?;
        if !valid_project(project) {
            return Err(bad(
                "the project id must be 6-30 lowercase letters, digits or '-'",
            ));
        }
        if !valid_dataset(dataset) {
            return Err(bad("the dataset must be letters, digits or '_'"));
        }
        let mut config = BigQueryConfig {
            project: project.to_string(),
            dataset: dataset.to_string(),
            location: "US".to_string(),
            staging: None,
            external_table: true,
        };
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (key, value) = pair.split_once('=').unwrap_or((pair, ""));
            match key {
                "location" => {
                    if value.is_empty()
                        || !value
                            .bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                    {
                        return Err(bad(
                            "location must be a BigQuery location such as US or europe-west1",
                        ));
                    }
                    config.location = value.to_string();
                }
                "staging" => {
                    ota_lake::gcs::GcsLocation::parse(value)?;
                    config.staging = Some(value.to_string());
                }
                "external_table" => {
                    config.external_table = match value {
                        "true" => true,
                        "false" => false,
                        _ => return Err(bad("external_table must be true or false")),
                    }
                }
                other => return Err(bad(&format!("unknown setting {other:?}"))),
            }
        }
        Ok(config)
    }

    /// A table of the dataset as SQL names it.
    pub fn table(&self, name: &str) -> String {
        format!("`{}.{}.{name}`", self.project, self.dataset)
    }
}

/// How the step that opens the warehouse runs its jobs.
#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    pub step: String,
    pub run_id: Option<String>,
    pub dry_run: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_reject_bad_identifiers() {
        let c = BigQueryConfig::parse(
            "bigquery://my-project/ota_events?location=EU&staging=gs://bkt/stage&external_table=false",
        )
        .unwrap();
        assert_eq!(c.project, "my-project");
        assert_eq!(c.dataset, "ota_events");
        assert_eq!(c.location, "EU");
        assert_eq!(c.staging.as_deref(), Some("gs://bkt/stage"));
        assert!(!c.external_table);
        assert_eq!(c.table("raw_events"), "`my-project.ota_events.raw_events`");
        for bad in [
            "bigquery://my-project",
            "bigquery://My-Project/ds",
            "bigquery://my-project/ds`x",
            "bigquery://my-project/ds;drop",
            "bigquery://my-project/ds?location=U S",
            "bigquery://my-project/ds?colour=red",
            "bigquery://my-project/ds?staging=s3://x",
        ] {
            assert!(BigQueryConfig::parse(bad).is_err(), "{bad}");
        }
    }

    fn lookup(set: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| {
            set.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn settings_come_from_the_lookup_and_only_for_bigquery() {
        let settings = BigQuerySettings::from_lookup(lookup(&[
            ("OTA_BQ_ENDPOINT", "http://127.0.0.1:9050"),
            ("OTA_BQ_STORAGE_ENDPOINT", "http://127.0.0.1:9060"),
            ("OTA_BQ_MAX_BYTES", "1000000"),
            ("OTA_BQ_JOB_TIMEOUT", " 60 "),
            ("OTA_GCS_ENDPOINT", "http://127.0.0.1:4443"),
        ]))
        .expect("settings");
        assert_eq!(settings.credentials, CredentialSource::Emulator);
        assert_eq!(settings.endpoint.as_deref(), Some("http://127.0.0.1:9050"));
        assert_eq!(settings.storage_endpoint, "http://127.0.0.1:9060");
        assert_eq!(settings.max_bytes_billed, Some(1_000_000));
        assert_eq!(settings.job_timeout, Duration::from_secs(60));
        assert_eq!(settings.staging.endpoint, "http://127.0.0.1:4443");
        assert_eq!(
            BigQuerySettings::from_lookup(lookup(&[])).expect("defaults"),
            BigQuerySettings::default()
        );
        for (var, value) in [
            ("OTA_BQ_MAX_BYTES", "0"),
            ("OTA_BQ_MAX_BYTES", "-5"),
            ("OTA_BQ_MAX_BYTES", "1e9"),
            ("OTA_BQ_MAX_BYTES", "99999999999999999999"),
            ("OTA_BQ_JOB_TIMEOUT", "0"),
            ("OTA_BQ_JOB_TIMEOUT", "ten"),
        ] {
            let set = [(var, value)];
            let err = BigQuerySettings::from_lookup(|v: &str| {
                set.iter()
                    .find(|(k, _)| *k == v)
                    .map(|(_, x)| x.to_string())
            })
            .expect_err("refused");
            assert!(err.to_string().contains(var), "{var}={value}: {err}");
        }
        // The embedded warehouse never trips on BigQuery's settings.
        let bad = lookup(&[("OTA_BQ_MAX_BYTES", "lots")]);
        let run = crate::RunSettings::default();
        assert!(crate::WarehouseConfig::new("duckdb:///w.duckdb", run.clone(), &bad).is_ok());
        assert!(crate::WarehouseConfig::new("bigquery://my-project/ds", run, &bad).is_err());
    }
}
