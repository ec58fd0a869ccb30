//! BigQuery jobs as the warehouse runs them: ids derived from the run and step (a retried
//! Airflow task re-attaches to its job), `maximumBytesBilled` on every job, `--dry-run`
//! (print each statement and BigQuery's estimate, run nothing), result pages.

use std::sync::Arc;
use std::time::Duration;

use gcp_bigquery_client::Client;
use gcp_bigquery_client::auth::Authenticator;
use gcp_bigquery_client::error::BQError;
use gcp_bigquery_client::model::get_query_results_parameters::GetQueryResultsParameters;
use gcp_bigquery_client::model::job::Job;
use gcp_bigquery_client::model::job_configuration::JobConfiguration;
use gcp_bigquery_client::model::job_configuration_load::JobConfigurationLoad;
use gcp_bigquery_client::model::job_configuration_query::JobConfigurationQuery;
use gcp_bigquery_client::model::job_reference::JobReference;
use gcp_bigquery_client::model::query_parameter::QueryParameter;
use gcp_bigquery_client::model::query_parameter_type::QueryParameterType;
use gcp_bigquery_client::model::query_parameter_value::QueryParameterValue;
use gcp_bigquery_client::model::table_reference::TableReference;
use md5::{Digest, Md5};
use serde_json::Value;

use ota_core::error::{PipelineError, Result};
use ota_lake::gcp::{BlockingRuntime, Credentials};

/// A named, typed query parameter (`@name`).
#[derive(Debug, Clone)]
pub struct Param {
    pub name: String,
    pub kind: &'static str,
    /// Scalar value, or the elements of an ARRAY parameter.
    pub value: ParamValue,
}

#[derive(Debug, Clone)]
pub enum ParamValue {
    Scalar(String),
    Array(Vec<String>),
}

impl Param {
    pub fn int64(name: impl Into<String>, v: i64) -> Self {
        Param {
            name: name.into(),
            kind: "INT64",
            value: ParamValue::Scalar(v.to_string()),
        }
    }
    pub fn string(name: impl Into<String>, v: impl Into<String>) -> Self {
        Param {
            name: name.into(),
            kind: "STRING",
            value: ParamValue::Scalar(v.into()),
        }
    }
    pub fn strings(name: impl Into<String>, v: impl IntoIterator<Item = String>) -> Self {
        Param {
            name: name.into(),
            kind: "STRING",
            value: ParamValue::Array(v.into_iter().collect()),
        }
    }
    pub fn dates(name: impl Into<String>, v: impl IntoIterator<Item = chrono::NaiveDate>) -> Self {
        Param {
            name: name.into(),
            kind: "DATE",
            value: ParamValue::Array(v.into_iter().map(|d| d.to_string()).collect()),
        }
    }

    fn to_api(&self) -> QueryParameter {
        let scalar = |t: &str| QueryParameterType {
            r#type: t.to_string(),
            array_type: None,
            struct_types: None,
        };
        let (parameter_type, parameter_value) = match &self.value {
            ParamValue::Scalar(v) => (
                scalar(self.kind),
                QueryParameterValue {
                    value: Some(v.clone()),
                    array_values: None,
                    struct_values: None,
                },
            ),
            ParamValue::Array(values) => (
                QueryParameterType {
                    r#type: "ARRAY".into(),
                    array_type: Some(Box::new(scalar(self.kind))),
                    struct_types: None,
                },
                QueryParameterValue {
                    value: None,
                    array_values: Some(
                        values
                            .iter()
                            .map(|v| QueryParameterValue {
                                value: Some(v.clone()),
                                array_values: None,
                                struct_values: None,
                            })
                            .collect(),
                    ),
                    struct_values: None,
                },
            ),
        };
        QueryParameter {
            name: Some(self.name.clone()),
            parameter_type: Some(parameter_type),
            parameter_value: Some(parameter_value),
        }
    }

    fn fingerprint(&self) -> String {
        format!("{}:{}:{:?}", self.name, self.kind, self.value)
    }
}

/// How the warehouse's jobs run.
#[derive(Debug, Clone)]
pub struct JobSettings {
    pub project: String,
    pub location: String,
    /// `maximumBytesBilled` of every job (OTA_BQ_MAX_BYTES).
    pub max_bytes_billed: Option<i64>,
    /// Print statements and estimates instead of running them.
    pub dry_run: bool,
    /// Identifies the run (Airflow's run id and task); with the step and the statement it
    /// determines the job id, so a retried task finds the job its first try started.
    pub run_key: String,
    pub step: String,
    /// How long one job may run (OTA_BQ_JOB_TIMEOUT): BigQuery stops it then
    /// (`jobTimeoutMs`), and the step stops waiting for it shortly after.
    pub job_timeout: Duration,
}

/// The default of `JobSettings::job_timeout`: the DAG's task timeout.
pub const DEFAULT_JOB_TIMEOUT: Duration = Duration::from_secs(3 * 3600);
/// How long past its timeout a job is still waited for (BigQuery's own stop takes a
/// while): a quarter of the timeout, between 1 s and a minute.
fn job_timeout_grace(timeout: Duration) -> Duration {
    (timeout / 4).clamp(Duration::from_secs(1), Duration::from_secs(60))
}
/// Tries of one API call that fails transiently (HTTP 429/5xx, a dropped connection).
const API_TRIES: u32 = 6;

/// Whether a job may be re-attached to by a retried run.
#[derive(Debug, Clone, Copy)]
pub enum Attach<'a> {
    /// Always a new job (reads: their result must be current).
    Never,
    /// Re-attach to this run's job of the same statement, parameters and these inputs.
    ByInputs(&'a [String]),
}

/// A finished query job and the first page of its result.
#[derive(Debug, Clone)]
pub struct QueryResult {
    pub job_id: String,
    pub rows: Vec<Vec<Value>>,
    pub page_token: Option<String>,
}

/// A job that ran (or, in a dry run, what BigQuery estimated for it).
#[derive(Debug, Clone, serde::Serialize)]
pub struct JobRecord {
    pub name: String,
    pub job_id: String,
    /// Bytes processed, or estimated in a dry run.
    pub bytes: Option<i64>,
    /// True when an earlier try's job was found and re-used.
    pub reattached: bool,
}

/// Runs the warehouse's jobs.
pub struct Jobs {
    client: Client,
    settings: JobSettings,
    runtime: BlockingRuntime,
    /// Reads started so far (part of their ids, which are never re-used).
    reads: u32,
    pub records: Vec<JobRecord>,
    /// A dry run's statements and estimates, for the step's output (never printed here:
    /// stdout belongs to the step, whose last line is its summary).
    report: Vec<String>,
}

/// The client's tokens come from the step's credentials (an account, or the emulator's
/// fixed token).
#[derive(Clone)]
struct StepAuth(Credentials);

#[async_trait::async_trait]
impl Authenticator for StepAuth {
    async fn access_token(&self) -> std::result::Result<String, BQError> {
        self.0.token().await.map_err(|e| {
            BQError::InvalidServiceAccountAuthenticator(std::io::Error::other(e.to_string()))
        })
    }
}

fn bq_err(context: impl Into<String>) -> impl FnOnce(BQError) -> PipelineError {
    let context = context.into();
    move |e| match e {
        BQError::ResponseError { error } => PipelineError::Warehouse {
            context,
            source: format!(
                "BigQuery answered {}: {}",
                error.error.code, error.error.message
            )
            .into(),
        },
        other => PipelineError::warehouse(context, other),
    }
}

/// A failure worth another try: BigQuery busy or failing inside, or the connection lost.
fn is_transient(e: &BQError) -> bool {
    match e {
        BQError::ResponseError { error } => matches!(error.error.code, 429 | 500 | 502 | 503 | 504),
        BQError::RequestError(e) => {
            e.is_connect() || e.is_timeout() || e.is_request() || ota_lake::gcp::body_cut_off(e)
        }
        _ => false,
    }
}

fn response_code(e: &BQError) -> Option<i64> {
    match e {
        BQError::ResponseError { error } => Some(error.error.code),
        _ => None,
    }
}

/// Job ids: letters, digits, `_` and `-`, at most 1024 characters.
fn job_id_part(text: &str) -> String {
    text.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' {
                c
            } else {
                '_'
            }
        })
        .take(64)
        .collect()
}

impl Jobs {
    /// Connects with the BigQuery account's key file, or to an emulator at `endpoint`.
    pub fn connect(
        runtime: BlockingRuntime,
        settings: JobSettings,
        credentials: Credentials,
        endpoint: Option<&str>,
    ) -> Result<Jobs> {
        let client = runtime.block_on(async {
            let mut builder = gcp_bigquery_client::client_builder::ClientBuilder::new();
            builder.with_client(ota_lake::gcp::http_client()?);
            if let Some(endpoint) = endpoint {
                builder.with_v2_base_url(format!("{}/bigquery/v2", endpoint.trim_end_matches('/')));
            }
            builder
                .build_from_authenticator(Arc::new(StepAuth(credentials)))
                .await
                .map_err(bq_err("connecting to BigQuery"))
        })?;
        Ok(Jobs {
            client,
            settings,
            runtime,
            reads: 0,
            records: Vec::new(),
            report: Vec::new(),
        })
    }

    pub fn settings(&self) -> &JobSettings {
        &self.settings
    }

    /// Runs `f` with dry-run switched on or off (reads of bookkeeping tables run even in
    /// a dry run).
    pub fn with_dry_run<T>(&mut self, dry_run: bool, f: impl FnOnce(&mut Jobs) -> T) -> T {
        let before = std::mem::replace(&mut self.settings.dry_run, dry_run);
        let result = f(self);
        self.settings.dry_run = before;
        result
    }

    /// The id of a job: the same run, step, statement and inputs give the same id.
    pub fn job_id(&self, name: &str, text: &str, fingerprint: &[String]) -> String {
        let mut h = Md5::new();
        for part in [
            self.settings.run_key.as_str(),
            self.settings.step.as_str(),
            name,
            text,
        ] {
            h.update(part.as_bytes());
            h.update([0]);
        }
        for f in fingerprint {
            h.update(f.as_bytes());
            h.update([0]);
        }
        let digest = ota_core::hex::encode(&h.finalize()[..10]);
        format!(
            "ota_{}_{}_{}_{digest}",
            job_id_part(&self.settings.step),
            job_id_part(name),
            job_id_part(&self.settings.run_key)
        )
    }

    fn reference(&self, job_id: &str) -> JobReference {
        JobReference {
            job_id: Some(job_id.to_string()),
            location: Some(self.settings.location.clone()),
            project_id: Some(self.settings.project.clone()),
        }
    }

    /// Runs one query or script. In a dry run: prints it with BigQuery's estimate and
    /// returns None. With [`Attach::ByInputs`] a job this run started earlier with the
    /// same statement, parameters and inputs is re-attached instead of run again (a
    /// retried task); [`Attach::Never`] always runs a new job (reads must see now).
    pub fn query(
        &mut self,
        name: &str,
        sql: &str,
        params: &[Param],
        attach: Attach<'_>,
    ) -> Result<Option<QueryResult>> {
        let configuration = query_configuration(&self.settings, sql, params);
        let mut fingerprint: Vec<String> = params.iter().map(Param::fingerprint).collect();
        match attach {
            Attach::ByInputs(inputs) => fingerprint.extend(inputs.iter().cloned()),
            Attach::Never => {
                self.reads += 1;
                fingerprint.push(format!(
                    "read {} at {}",
                    self.reads,
                    chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
                ));
            }
        }
        if self.settings.dry_run {
            let job = self.insert_dry_run(name, configuration)?;
            let bytes = job
                .statistics
                .as_ref()
                .and_then(|s| s.total_bytes_processed.as_deref())
                .and_then(|b| b.parse().ok());
            self.report.push(format!(
                "-- {name}: estimated bytes processed: {}",
                bytes.map_or("unknown".to_string(), |b: i64| b.to_string())
            ));
            for p in params {
                self.report
                    .push(format!("--   @{} {} = {:?}", p.name, p.kind, p.value));
            }
            self.report.push(format!("{sql};\n"));
            self.records.push(JobRecord {
                name: name.to_string(),
                job_id: String::new(),
                bytes,
                reattached: false,
            });
            return Ok(None);
        }
        let job_id = self.job_id(name, sql, &fingerprint);
        let (job_id, _) = self.run_job(name, job_id, configuration)?;
        let (rows, page_token) = self.page(&job_id, None, 10_000)?;
        Ok(Some(QueryResult {
            job_id,
            rows,
            page_token,
        }))
    }

    /// Runs a query (always a new job) without fetching its rows; returns the job id and
    /// the table that holds its result, for the Storage Read API. None in a dry run.
    pub fn query_result_table(
        &mut self,
        name: &str,
        sql: &str,
        params: &[Param],
    ) -> Result<Option<(String, Option<TableReference>)>> {
        if self.settings.dry_run {
            self.query(name, sql, params, Attach::Never)?;
            return Ok(None);
        }
        let configuration = query_configuration(&self.settings, sql, params);
        let mut fingerprint: Vec<String> = params.iter().map(Param::fingerprint).collect();
        self.reads += 1;
        fingerprint.push(format!(
            "read {} at {}",
            self.reads,
            chrono::Utc::now().timestamp_nanos_opt().unwrap_or_default()
        ));
        let job_id = self.job_id(name, sql, &fingerprint);
        let (job_id, job) = self.run_job(name, job_id, configuration)?;
        let table = job
            .configuration
            .and_then(|c| c.query)
            .and_then(|q| q.destination_table);
        Ok(Some((job_id, table)))
    }

    pub fn runtime(&self) -> &BlockingRuntime {
        &self.runtime
    }

    /// Adds a line to a dry run's report.
    pub fn report(&mut self, line: String) {
        self.report.push(line);
    }

    /// The dry run's report so far, emptied.
    pub fn take_report(&mut self) -> Vec<String> {
        std::mem::take(&mut self.report)
    }

    /// Loads Parquet files into an existing table (appending). No-op in a dry run.
    pub fn load_parquet(
        &mut self,
        name: &str,
        uris: &[String],
        dataset: &str,
        table: &str,
    ) -> Result<()> {
        if self.settings.dry_run {
            self.report.push(format!(
                "-- {name}: load {} Parquet file(s) into {dataset}.{table}\n",
                uris.len()
            ));
            return Ok(());
        }
        let load = JobConfigurationLoad {
            source_uris: Some(uris.to_vec()),
            source_format: Some("PARQUET".into()),
            destination_table: Some(TableReference {
                project_id: self.settings.project.clone(),
                dataset_id: dataset.to_string(),
                table_id: table.to_string(),
            }),
            write_disposition: Some("WRITE_APPEND".into()),
            create_disposition: Some("CREATE_NEVER".into()),
            ..Default::default()
        };
        let configuration = JobConfiguration {
            load: Some(load),
            ..Default::default()
        };
        let job_id = self.job_id(name, table, uris);
        self.run_job(name, job_id, configuration)?;
        Ok(())
    }

    fn insert_dry_run(&mut self, name: &str, configuration: JobConfiguration) -> Result<Job> {
        let project = self.settings.project.clone();
        let location = self.settings.location.clone();
        let job = Job {
            configuration: Some(configuration),
            job_reference: Some(JobReference {
                job_id: None,
                location: Some(location),
                project_id: Some(project.clone()),
            }),
            ..Default::default()
        };
        let client = &self.client;
        self.runtime
            .block_on(client.job().insert(&project, job))
            .map_err(bq_err(format!("dry-running {name}")))
    }

    /// Inserts the job under `job_id` unless a job of that id exists: a running or
    /// successful one is re-attached (a retried task), a failed one is retried under a
    /// new id. Waits until it is done.
    fn run_job(
        &mut self,
        name: &str,
        job_id: String,
        configuration: JobConfiguration,
    ) -> Result<(String, Job)> {
        let project = self.settings.project.clone();
        let location = self.settings.location.clone();
        let mut id = job_id.clone();
        let mut reattached = false;
        for attempt in 0..20 {
            if attempt > 0 {
                id = format!("{job_id}_retry{attempt}");
            }
            match self.get_job(&id)? {
                None => break,
                Some(job) if job_failed(&job).is_some() => continue,
                Some(_) => {
                    reattached = true;
                    tracing::info!(job = %id, "re-attaching to the job an earlier try started");
                    break;
                }
            }
        }
        let mut configuration = configuration;
        configuration.job_timeout_ms = Some(self.settings.job_timeout.as_millis().to_string());
        if !reattached {
            let job = Job {
                configuration: Some(configuration),
                job_reference: Some(self.reference(&id)),
                ..Default::default()
            };
            let client = &self.client;
            match self.runtime.block_on(client.job().insert(&project, job)) {
                Ok(_) => {}
                // Another try inserted it in between: wait for that one.
                Err(e) if response_code(&e) == Some(409) => reattached = true,
                Err(e) => return Err(bq_err(format!("starting {name} ({id})"))(e)),
            }
        }
        self.records.push(JobRecord {
            name: name.to_string(),
            job_id: id.clone(),
            bytes: None,
            reattached,
        });
        let mut delay = Duration::from_millis(100);
        let deadline = std::time::Instant::now()
            + self.settings.job_timeout
            + job_timeout_grace(self.settings.job_timeout);
        loop {
            let job = self
                .retrying(|jobs| {
                    jobs.runtime
                        .block_on(jobs.client.job().get_job(&project, &id, Some(&location)))
                })
                .map_err(bq_err(format!("waiting for {name} ({id})")))?;
            let done = job
                .status
                .as_ref()
                .and_then(|s| s.state.as_deref())
                .is_some_and(|s| s == "DONE");
            if done {
                if let Some(message) = job_failed(&job) {
                    return Err(PipelineError::Warehouse {
                        context: format!("running {name} (job {id})"),
                        source: message.into(),
                    });
                }
                if let Some(record) = self.records.last_mut() {
                    record.bytes = job
                        .statistics
                        .as_ref()
                        .and_then(|s| s.total_bytes_processed.as_deref())
                        .and_then(|b| b.parse().ok());
                }
                return Ok((id, job));
            }
            if std::time::Instant::now() >= deadline {
                let cancel = self.runtime.block_on(self.client.job().cancel_job(
                    &project,
                    &id,
                    Some(&location),
                ));
                if let Err(e) = cancel {
                    tracing::warn!(job = %id, error = %e, "could not cancel the job");
                }
                return Err(PipelineError::Timeout {
                    context: format!("BigQuery job {name} ({id}); it was cancelled"),
                    secs: self.settings.job_timeout.as_secs(),
                });
            }
            std::thread::sleep(delay);
            delay = (delay * 2).min(Duration::from_secs(5));
        }
    }

    /// Runs one API call, again after a transient failure (with back-off from 1 s).
    fn retrying<T>(
        &self,
        mut call: impl FnMut(&Self) -> std::result::Result<T, BQError>,
    ) -> std::result::Result<T, BQError> {
        let mut delay = Duration::from_secs(1);
        let mut tries = 1;
        loop {
            match call(self) {
                Err(e) if tries < API_TRIES && is_transient(&e) => {
                    tracing::warn!(error = %e, retry_in = ?delay, "BigQuery call failed; retrying");
                    std::thread::sleep(delay);
                    delay = (delay * 2).min(Duration::from_secs(32));
                    tries += 1;
                }
                other => return other,
            }
        }
    }

    fn get_job(&self, id: &str) -> Result<Option<Job>> {
        let looked_up = self.retrying(|jobs| {
            jobs.runtime.block_on(jobs.client.job().get_job(
                &jobs.settings.project,
                id,
                Some(&jobs.settings.location),
            ))
        });
        match looked_up {
            Ok(job) => Ok(Some(job)),
            Err(e) if response_code(&e) == Some(404) => Ok(None),
            Err(e) => Err(bq_err(format!("looking up job {id}"))(e)),
        }
    }

    /// One page of a finished query's result: rows as JSON cells, and the next token.
    pub fn page(
        &self,
        job_id: &str,
        token: Option<String>,
        max_rows: usize,
    ) -> Result<(Vec<Vec<Value>>, Option<String>)> {
        let client = &self.client;
        let parameters = GetQueryResultsParameters {
            location: Some(self.settings.location.clone()),
            max_results: Some(max_rows.min(i32::MAX as usize) as i32),
            page_token: token,
            ..Default::default()
        };
        let response = self
            .runtime
            .block_on(
                client
                    .job()
                    .get_query_results(&self.settings.project, job_id, parameters),
            )
            .map_err(bq_err(format!("reading the result of job {job_id}")))?;
        let rows = response
            .rows
            .unwrap_or_default()
            .into_iter()
            .map(|r| {
                r.columns
                    .unwrap_or_default()
                    .into_iter()
                    .map(|c| c.value.unwrap_or(Value::Null))
                    .collect()
            })
            .collect();
        Ok((rows, response.page_token.filter(|t| !t.is_empty())))
    }
}

/// The configuration of a query job: GoogleSQL, named parameters, the byte cap.
pub fn query_configuration(
    settings: &JobSettings,
    sql: &str,
    params: &[Param],
) -> JobConfiguration {
    let query = JobConfigurationQuery {
        query: sql.to_string(),
        use_legacy_sql: Some(false),
        parameter_mode: (!params.is_empty()).then(|| "NAMED".to_string()),
        query_parameters: (!params.is_empty()).then(|| params.iter().map(Param::to_api).collect()),
        maximum_bytes_billed: settings.max_bytes_billed.map(|b| b.to_string()),
        ..Default::default()
    };
    JobConfiguration {
        query: Some(query),
        dry_run: Some(settings.dry_run),
        ..Default::default()
    }
}

/// The error message of a finished job that failed.
fn job_failed(job: &Job) -> Option<String> {
    let status = job.status.as_ref()?;
    let error = status.error_result.as_ref()?;
    Some(format!(
        "{}: {}",
        error.reason.as_deref().unwrap_or("error"),
        error.message.as_deref().unwrap_or("(no message)")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_query_job_carries_the_byte_cap_and_its_parameters() {
        let settings = JobSettings {
            project: "p-roject".into(),
            location: "EU".into(),
            max_bytes_billed: Some(10_000_000),
            dry_run: false,
            run_key: "r".into(),
            step: "s".into(),
            job_timeout: DEFAULT_JOB_TIMEOUT,
        };
        let params = [Param::strings("uris", ["gs://a/b".to_string()])];
        let config = query_configuration(&settings, "SELECT 1", &params);
        let json = serde_json::to_value(&config).unwrap();
        assert_eq!(json["query"]["maximumBytesBilled"], "10000000", "{json}");
        assert_eq!(json["query"]["useLegacySql"], false);
        assert_eq!(json["query"]["parameterMode"], "NAMED");
        let p = &json["query"]["queryParameters"][0];
        assert_eq!(p["name"], "uris");
        assert_eq!(p["parameterType"]["type"], "ARRAY");
        assert_eq!(p["parameterType"]["arrayType"]["type"], "STRING");
        assert_eq!(p["parameterValue"]["arrayValues"][0]["value"], "gs://a/b");
        assert_eq!(json["dryRun"], false);
        let uncapped = JobSettings {
            max_bytes_billed: None,
            ..settings
        };
        let json = serde_json::to_value(query_configuration(&uncapped, "SELECT 1", &[])).unwrap();
        assert!(
            json["query"]
                .get("maximumBytesBilled")
                .is_none_or(|v| v.is_null())
        );
    }

    #[test]
    fn job_id_parts_are_safe() {
        assert_eq!(
            job_id_part("manual__2024-01-01T00:00:00+00:00"),
            "manual__2024-01-01T00_00_00_00_00"
        );
    }
}
