//! The GCS lake (`gs://bucket/prefix`): daily files are objects under the prefix.
//!
//! `ingested_at` is the creation time of the object's generation; the generation pins
//! what load-raw reads. Credentials: the GCS service account's key file
//! (`OTA_GCS_KEY_FILE`), never the BigQuery one; `OTA_GCS_ENDPOINT` points the client at
//! an emulator (then no key is needed).

pub mod client;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};

use chrono::{Datelike, NaiveDate};

use super::local::crc32c_of_file;
use super::{
    Lake, LakeFile, LocalCopy, ObjectVersion, PutOutcome, RecordedVersions, day_of_file_name,
};
use crate::gcp::{
    BlockingRuntime, CredentialSource, CredentialVars, Credentials, RequestError, http_client,
};
use client::{GcsClient, ObjectMeta};
use ota_core::error::{PipelineError, Result};
use ota_core::window::DateWindow;

/// Key file of the GCS service account.
pub const KEY_FILE_VAR: &str = "OTA_GCS_KEY_FILE";
/// The GCS service account's key as JSON (from an Airflow connection, say).
pub const KEY_JSON_VAR: &str = "OTA_GCS_KEY_JSON";
/// Endpoint override, for an emulator (`http://127.0.0.1:4443`).
pub const ENDPOINT_VAR: &str = "OTA_GCS_ENDPOINT";
/// Where GCS credentials come from; none set: Application Default Credentials.
pub const CREDENTIAL_VARS: CredentialVars = CredentialVars {
    key_file: KEY_FILE_VAR,
    key_json: KEY_JSON_VAR,
    endpoint: ENDPOINT_VAR,
};
/// Local scratch folder for downloads and split outputs (default: the system temp dir).
pub const SCRATCH_VAR: &str = "OTA_SCRATCH_DIR";
const DEFAULT_ENDPOINT: &str = "https://storage.googleapis.com";
/// The system's temp dir when `TMPDIR` names none.
const DEFAULT_TEMP_DIR: &str = "/tmp";
const SCOPE: &str = "https://www.googleapis.com/auth/devstorage.read_write";

/// How a GCS lake is reached. The CLI builds it once from the environment
/// ([`GcsSettings::from_lookup`]); the default is Google's endpoint with Application Default
/// Credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsSettings {
    pub credentials: CredentialSource,
    /// The JSON API's endpoint: Google's, or an emulator's (`OTA_GCS_ENDPOINT`).
    pub endpoint: String,
    /// Local folder for downloads and split outputs (`OTA_SCRATCH_DIR`, else the
    /// system's temp dir, `TMPDIR` or /tmp).
    pub scratch_dir: PathBuf,
}

impl Default for GcsSettings {
    fn default() -> Self {
        GcsSettings {
            credentials: CredentialSource::ApplicationDefault {
                metadata_host: None,
            },
            endpoint: DEFAULT_ENDPOINT.to_string(),
            scratch_dir: PathBuf::from(DEFAULT_TEMP_DIR),
        }
    }
}

impl GcsSettings {
    /// The settings the variables above (and `GCE_METADATA_HOST`) give; `lookup` returns a
    /// variable's value (the CLI hands over the process environment). Empty counts as unset.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let set = |var: &str| lookup(var).filter(|v| !v.trim().is_empty());
        Ok(GcsSettings {
            credentials: CredentialSource::from_lookup(CREDENTIAL_VARS, &lookup)?,
            endpoint: set(ENDPOINT_VAR).unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            scratch_dir: PathBuf::from(
                set(SCRATCH_VAR)
                    .or_else(|| set("TMPDIR"))
                    .unwrap_or_else(|| DEFAULT_TEMP_DIR.to_string()),
            ),
        })
    }
}

/// Where the lake lives: bucket and object prefix of a `gs://` URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GcsLocation {
    pub bucket: String,
    /// Object name prefix without a trailing `/` (empty: the bucket's root).
    pub prefix: String,
}

impl GcsLocation {
    /// Parses `gs://bucket[/prefix]`.
    pub fn parse(url: &str) -> Result<Self> {
        let rest = url.strip_prefix("gs://").ok_or_else(|| {
            PipelineError::Config(format!("{url:?} is not a gs://bucket/prefix URL"))
        })?;
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        let bucket_ok = (3..=222).contains(&bucket.len())
            && bucket.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.')
            })
            && bucket.as_bytes()[0].is_ascii_alphanumeric();
        if !bucket_ok {
            return Err(PipelineError::Config(format!(
                "{url:?}: {bucket:?} is not a valid bucket name"
            )));
        }
        let prefix = prefix.trim_end_matches('/');
        if prefix.split('/').any(|p| p == "." || p == "..") || prefix.contains("//") {
            return Err(PipelineError::Config(format!(
                "{url:?}: the prefix may not hold empty, '.' or '..' parts"
            )));
        }
        Ok(GcsLocation {
            bucket: bucket.to_string(),
            prefix: prefix.to_string(),
        })
    }

    /// The object name of a file directly under the prefix.
    pub fn object_name(&self, file_name: &str) -> String {
        if self.prefix.is_empty() {
            file_name.to_string()
        } else {
            format!("{}/{file_name}", self.prefix)
        }
    }

    pub fn uri_of(&self, object_name: &str) -> String {
        format!("gs://{}/{object_name}", self.bucket)
    }

    /// The object name a `gs://` URI of this bucket names.
    pub fn object_of_uri<'u>(&self, uri: &'u str) -> Result<&'u str> {
        uri.strip_prefix("gs://")
            .and_then(|r| r.strip_prefix(self.bucket.as_str()))
            .and_then(|r| r.strip_prefix('/'))
            .ok_or_else(|| {
                PipelineError::Internal(format!("{uri} is not in the bucket {}", self.bucket))
            })
    }
}

/// Configuration and handle of a GCS lake.
#[derive(Debug)]
pub struct GcsLake {
    location: GcsLocation,
    url: String,
    client: GcsClient,
    runtime: BlockingRuntime,
    scratch: PathBuf,
}

/// Counter that keeps temporary download names unique within a process.
static DOWNLOADS: AtomicU64 = AtomicU64::new(0);

impl GcsLake {
    /// Opens the lake of a `gs://` URL, reached as `settings` say.
    pub fn open(url: &str, settings: &GcsSettings) -> Result<Self> {
        let location = GcsLocation::parse(url)?;
        let runtime = BlockingRuntime::new()?;
        let credentials =
            runtime.block_on(Credentials::resolve(settings.credentials.clone(), SCOPE))?;
        let client = GcsClient::new(http_client()?, &settings.endpoint, credentials);
        let scratch = settings.scratch_dir.join("ota-pipeline-scratch");
        std::fs::create_dir_all(&scratch).map_err(|e| PipelineError::io(&scratch, e))?;
        Ok(GcsLake {
            url: location.uri_of(&location.prefix),
            location,
            client,
            runtime,
            scratch,
        })
    }

    pub fn location(&self) -> &GcsLocation {
        &self.location
    }

    /// Deletes an object of this lake's bucket (scratch outputs such as load staging).
    pub fn delete(&self, uri: &str) -> Result<()> {
        let name = self.location.object_of_uri(uri)?;
        self.runtime
            .block_on(self.client.delete(&self.location.bucket, name))
            .map_err(self.error(format!("deleting {uri}")))
    }

    fn error(&self, context: String) -> impl FnOnce(RequestError) -> PipelineError {
        move |e| match e {
            RequestError::Pipeline(inner) => *inner,
            other => PipelineError::lake(context, other),
        }
    }

    fn lake_file(&self, object: ObjectMeta, day: NaiveDate) -> LakeFile {
        LakeFile {
            uri: self.location.uri_of(&object.name),
            day,
            size: object.size,
            generation: object.generation,
            checksum: format!("{:08x}", object.crc32c),
            ingested_at: object.created_micros,
        }
    }

    /// Object listing prefixes that cover the window: one per month (`prefix/YYYYMM`).
    fn month_prefixes(&self, window: &DateWindow) -> Vec<String> {
        let mut prefixes: Vec<String> = window
            .days()
            .map(|d| {
                self.location
                    .object_name(&format!("{:04}{:02}", d.year(), d.month()))
            })
            .collect();
        prefixes.dedup();
        prefixes
    }
}

impl Lake for GcsLake {
    fn url(&self) -> &str {
        &self.url
    }

    /// The listing carries each object's crc32c: `recorded` is not needed.
    fn list_daily_files(
        &self,
        window: &DateWindow,
        suffix: &str,
        _recorded: &mut RecordedVersions<'_>,
    ) -> Result<Vec<LakeFile>> {
        let mut files = Vec::new();
        for prefix in self.month_prefixes(window) {
            let objects = self
                .runtime
                .block_on(self.client.list(&self.location.bucket, &prefix))
                .map_err(self.error(format!("listing gs://{}/{prefix}*", self.location.bucket)))?;
            for object in objects {
                // Only files directly under the prefix, named like a day of the window.
                let direct = object
                    .name
                    .strip_prefix(&self.location.object_name(""))
                    .is_some_and(|rest| !rest.contains('/'));
                match day_of_file_name(&object.name, suffix) {
                    Some(day) if direct && window.contains(day) => {
                        files.push(self.lake_file(object, day));
                    }
                    _ => {}
                }
            }
        }
        files.sort_by_key(|f| f.day);
        Ok(files)
    }

    fn version_of(&self, uri: &str) -> Result<Option<ObjectVersion>> {
        let name = self.location.object_of_uri(uri)?;
        let meta = self
            .runtime
            .block_on(self.client.get(&self.location.bucket, name))
            .map_err(self.error(format!("reading the metadata of {uri}")))?;
        Ok(meta.map(|m| ObjectVersion {
            size: m.size,
            generation: m.generation,
        }))
    }

    fn local_copy(&self, file: &LakeFile) -> Result<LocalCopy> {
        let name = self.location.object_of_uri(&file.uri)?;
        let crc32c = u32::from_str_radix(&file.checksum, 16).map_err(|_| {
            PipelineError::Internal(format!(
                "{}: checksum {:?} is not crc32c hex",
                file.uri, file.checksum
            ))
        })?;
        let object = ObjectMeta {
            name: name.to_string(),
            size: file.size,
            generation: file.generation.clone(),
            crc32c,
            created_micros: file.ingested_at,
        };
        let base = name.rsplit('/').next().unwrap_or("object");
        let dest = self.scratch.join(format!(
            "download-{}-{}-{base}",
            std::process::id(),
            DOWNLOADS.fetch_add(1, Ordering::Relaxed)
        ));
        let copy = LocalCopy::temporary(dest.clone());
        self.runtime
            .block_on(self.client.download(&object, &self.location.bucket, &dest))
            .map_err(self.error(format!("downloading {}", file.uri)))?;
        Ok(copy)
    }

    fn put_file(&self, name: &str, source: &Path) -> Result<PutOutcome> {
        let object = self.location.object_name(name);
        let crc32c = u32::from_str_radix(&crc32c_of_file(source)?, 16)
            .map_err(|_| PipelineError::Internal("crc32c hex".into()))?;
        let size = std::fs::metadata(source)
            .map_err(|e| PipelineError::io(source, e))?
            .len();
        let uri = self.location.uri_of(&object);
        let existing = self
            .runtime
            .block_on(self.client.get(&self.location.bucket, &object))
            .map_err(self.error(format!("reading the metadata of {uri}")))?;
        if existing.is_some_and(|m| m.size == size && m.crc32c == crc32c) {
            return Ok(PutOutcome::Unchanged);
        }
        self.runtime
            .block_on(
                self.client
                    .upload(&self.location.bucket, &object, source, crc32c),
            )
            .map_err(self.error(format!("uploading {} to {uri}", source.display())))?;
        Ok(PutOutcome::Written)
    }

    fn scratch_dir(&self) -> Result<PathBuf> {
        Ok(self.scratch.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn locations_parse_and_name_objects() {
        let l = GcsLocation::parse("gs://ota-lake/events/daily/").unwrap();
        assert_eq!(l.bucket, "ota-lake");
        assert_eq!(l.prefix, "events/daily");
        assert_eq!(
            l.object_name("20240101_OTA.parquet"),
            "events/daily/20240101_OTA.parquet"
        );
        let uri = l.uri_of(&l.object_name("20240101_OTA.parquet"));
        assert_eq!(uri, "gs://ota-lake/events/daily/20240101_OTA.parquet");
        assert_eq!(
            l.object_of_uri(&uri).unwrap(),
            "events/daily/20240101_OTA.parquet"
        );
        assert!(l.object_of_uri("gs://other/x").is_err());
        let root = GcsLocation::parse("gs://ota-lake").unwrap();
        assert_eq!(root.object_name("a.parquet"), "a.parquet");
        for bad in [
            "gs://",
            "gs://A_B",
            "gs://ok-bucket/a/../b",
            "s3://x/y",
            "gs://b/a//c",
        ] {
            assert!(GcsLocation::parse(bad).is_err(), "{bad}");
        }
    }
}
