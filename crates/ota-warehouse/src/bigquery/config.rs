//! The BigQuery warehouse's configuration: what a `bigquery://` URL says and how a step
//! runs its jobs.

use crate::error::{PipelineError, Result};

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
                    crate::lake::gcs::GcsLocation::parse(value)?;
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
}
