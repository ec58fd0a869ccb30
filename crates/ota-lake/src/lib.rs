//! ota-lake: where daily Parquet files land. A small trait ([`Lake`]) with one module per
//! backend: [`local`] (a folder) and [`gcs`] (Google Cloud Storage, authenticated by
//! [`gcp`]); [`split`] cuts one large Parquet file into daily files in a lake.

pub mod gcp;
pub mod gcs;
pub mod local;
pub mod split;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use chrono::NaiveDate;
use serde::{Deserialize, Serialize};

use ota_core::error::{PipelineError, Result};
use ota_core::window::DateWindow;

/// One daily file in the lake, with the fingerprint the file ledger keeps.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LakeFile {
    /// Full URI (`file:///lake/20240101_OTA.parquet`, `gs://bucket/prefix/...`).
    pub uri: String,
    /// The day in the file name.
    pub day: NaiveDate,
    pub size: u64,
    /// Object generation (GCS); modification and change times in nanoseconds and the
    /// inode number (local).
    pub generation: String,
    /// crc32c of the content, hex.
    pub checksum: String,
    /// When this version landed in the lake, UTC microseconds.
    pub ingested_at: i64,
}

/// What the file ledger recorded of a file version when it loaded it. A lake whose
/// listing carries no checksum (the local one) reuses the checksum of an unchanged
/// version instead of reading the whole file again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RecordedVersion {
    pub size: u64,
    pub generation: String,
    pub checksum: String,
    /// When the load that recorded it began, UTC microseconds.
    pub loaded_at: i64,
    /// Rows the load landed in the raw table (rejected rows not counted): what a new
    /// version of the file would replace.
    pub rows_loaded: u64,
}

impl RecordedVersion {
    /// A ledger row as either warehouse stores it: (size, generation, checksum,
    /// loaded_at, rows loaded). An unknown `loaded_at` (never in practice) reads as 0, so the
    /// file is read again; negative counts as 0.
    pub fn from_ledger_row(
        size: i64,
        generation: String,
        checksum: String,
        loaded_at: Option<i64>,
        rows_loaded: Option<i64>,
    ) -> Self {
        RecordedVersion {
            size: size.max(0) as u64,
            generation,
            checksum,
            loaded_at: loaded_at.unwrap_or(0),
            rows_loaded: rows_loaded.unwrap_or(0).max(0) as u64,
        }
    }

    /// Whether the lake file is the version the ledger loaded (same size and content).
    pub fn matches(&self, file: &LakeFile) -> bool {
        self.size == file.size && self.checksum == file.checksum
    }
}

/// Looks up what the file ledger recorded for some URIs (those it knows).
pub type RecordedVersions<'a> =
    dyn FnMut(&[String]) -> Result<BTreeMap<String, RecordedVersion>> + 'a;

/// Size and generation of an object: enough to tell that it was replaced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ObjectVersion {
    pub size: u64,
    pub generation: String,
}

/// What `put_file` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PutOutcome {
    /// The object already held the same bytes: nothing was written.
    Unchanged,
    Written,
}

/// A readable local copy of a lake file (the file itself where the lake is local; a
/// remote lake downloads a temporary copy, removed when this is dropped).
#[derive(Debug)]
pub struct LocalCopy {
    path: PathBuf,
    temporary: bool,
}

impl LocalCopy {
    /// The lake's own file, read in place.
    pub fn in_place(path: PathBuf) -> Self {
        LocalCopy {
            path,
            temporary: false,
        }
    }

    /// A downloaded copy at `path`, deleted on drop (also when the download fails).
    pub fn temporary(path: PathBuf) -> Self {
        LocalCopy {
            path,
            temporary: true,
        }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for LocalCopy {
    fn drop(&mut self) {
        if self.temporary {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

/// A lake backend.
pub trait Lake: Send + Sync {
    /// The lake's URL, for messages and summaries.
    fn url(&self) -> &str;

    /// The daily files `YYYYMMDD_<suffix>.parquet` that exist for the window's days.
    /// `recorded` tells what the file ledger knows of them, for a lake that would
    /// otherwise read every file to checksum it.
    fn list_daily_files(
        &self,
        window: &DateWindow,
        suffix: &str,
        recorded: &mut RecordedVersions<'_>,
    ) -> Result<Vec<LakeFile>>;

    /// The current size and generation of one object, without reading it (None: gone).
    fn version_of(&self, uri: &str) -> Result<Option<ObjectVersion>>;

    /// A local, readable copy of the file (the file itself where the lake is local).
    fn local_copy(&self, file: &LakeFile) -> Result<LocalCopy>;

    /// Lands a local file under `name` unless an object with the same bytes is there.
    /// The source is a scratch file: the lake may move it.
    fn put_file(&self, name: &str, source: &Path) -> Result<PutOutcome>;

    /// A directory on this machine for scratch files that belong with this lake
    /// (temporary outputs before they are landed).
    fn scratch_dir(&self) -> Result<PathBuf>;
}

/// `YYYYMMDD_<suffix>.parquet`
pub fn daily_file_name(day: NaiveDate, suffix: &str) -> String {
    format!("{}_{suffix}.parquet", day.format("%Y%m%d"))
}

/// The day of a daily file name, if it is one (`20240101_OTA.parquet` -> 2024-01-01).
pub fn day_of_file_name(name: &str, suffix: &str) -> Option<NaiveDate> {
    let base = name.rsplit('/').next()?;
    let stem = base.strip_suffix(".parquet")?.strip_suffix(suffix)?;
    if stem.len() != 9 {
        return None;
    }
    day_of_name_prefix(stem)
}

/// The day a file name starts with (`20240101_...` -> 2024-01-01).
pub fn day_of_name_prefix(name: &str) -> Option<NaiveDate> {
    let stem = name.get(..8)?;
    if !stem.bytes().all(|b| b.is_ascii_digit()) || name.as_bytes().get(8) != Some(&b'_') {
        return None;
    }
    NaiveDate::parse_from_str(stem, "%Y%m%d").ok()
}

/// Checks a file suffix from `--suffix`: letters, digits, `-` and `_` only.
pub fn validate_suffix(suffix: &str) -> Result<()> {
    if !suffix.is_empty()
        && suffix.len() <= 64
        && suffix
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        Ok(())
    } else {
        Err(PipelineError::Config(format!(
            "suffix {suffix:?} must be letters, digits, '-' or '_'"
        )))
    }
}

/// Which lake a step works on and how it is reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LakeConfig {
    /// `file:///abs/dir` (a local folder) or `gs://bucket/prefix`.
    pub url: String,
    /// How GCS is reached (unused by a local lake).
    pub gcs: gcs::GcsSettings,
}

impl LakeConfig {
    /// The lake at `url`; for a `gs://` URL with the GCS settings `lookup` gives (the CLI
    /// hands over the process environment), so a local lake never trips on them.
    pub fn new(url: impl Into<String>, lookup: impl Fn(&str) -> Option<String>) -> Result<Self> {
        let url = url.into();
        let gcs = if url.starts_with("gs://") {
            gcs::GcsSettings::from_lookup(lookup)?
        } else {
            gcs::GcsSettings::default()
        };
        Ok(LakeConfig { url, gcs })
    }

    /// Opens this lake.
    pub fn open(&self) -> Result<Box<dyn Lake>> {
        open_lake(&self.url, &self.gcs)
    }
}

/// Opens the lake a URL names, a GCS one reached as `gcs` says.
pub fn open_lake(url: &str, gcs: &gcs::GcsSettings) -> Result<Box<dyn Lake>> {
    if let Some(rest) = url.strip_prefix("file://") {
        Ok(Box::new(local::LocalLake::open(rest)?))
    } else if url.starts_with("gs://") {
        Ok(Box::new(gcs::GcsLake::open(url, gcs)?))
    } else {
        Err(PipelineError::Config(format!(
            "lake URL {url:?} must start with file:// (local folder) or gs:// (GCS)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_names_round_trip() {
        let d = NaiveDate::from_ymd_opt(2024, 1, 31).unwrap();
        let name = daily_file_name(d, "OTA");
        assert_eq!(name, "20240131_OTA.parquet");
        assert_eq!(day_of_file_name(&name, "OTA"), Some(d));
        assert_eq!(
            day_of_file_name("file:///x/20240131_OTA.parquet", "OTA"),
            Some(d)
        );
        assert_eq!(day_of_file_name("20240131_XYZ.parquet", "OTA"), None);
        assert_eq!(day_of_file_name("20241331_OTA.parquet", "OTA"), None);
        assert!(validate_suffix("OTA").is_ok());
        assert!(validate_suffix("../x").is_err());
    }

    /// A lookup over fixed values, standing in for the process environment.
    fn lookup(set: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |var| {
            set.iter()
                .find(|(k, _)| *k == var)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn gcs_settings_come_from_the_lookup_and_only_for_a_gcs_lake() {
        // A key and an emulator endpoint together are refused, for a gs:// lake...
        let clash = lookup(&[
            ("OTA_GCS_KEY_FILE", "/k.json"),
            ("OTA_GCS_ENDPOINT", "http://127.0.0.1:4443"),
        ]);
        let err = LakeConfig::new("gs://bucket/daily", &clash).expect_err("refused");
        assert!(err.to_string().contains("OTA_GCS_ENDPOINT"), "{err}");
        // ...but never trip a local lake, which does not use them.
        let local = LakeConfig::new("file:///lake", &clash).expect("a local lake");
        assert_eq!(local.gcs, gcs::GcsSettings::default());
        let emulator = LakeConfig::new(
            "gs://bucket/daily",
            lookup(&[
                ("OTA_GCS_ENDPOINT", "http://127.0.0.1:4443"),
                ("OTA_SCRATCH_DIR", "/scratch"),
            ]),
        )
        .expect("an emulator lake");
        assert_eq!(emulator.gcs.endpoint, "http://127.0.0.1:4443");
        assert_eq!(emulator.gcs.scratch_dir, Path::new("/scratch"));
        let tmp =
            LakeConfig::new("gs://bucket", lookup(&[("TMPDIR", "/var/tmp")])).expect("a lake");
        assert_eq!(tmp.gcs.scratch_dir, Path::new("/var/tmp"));
        assert_eq!(emulator.gcs.credentials, gcp::CredentialSource::Emulator);
        // Nothing set: Google's endpoint, Application Default Credentials.
        let plain = LakeConfig::new("gs://bucket", lookup(&[])).expect("a lake");
        assert_eq!(plain.gcs, gcs::GcsSettings::default());
    }
}
