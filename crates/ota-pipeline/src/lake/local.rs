//! The local lake: a folder on this machine (`file:///abs/dir`). `ingested_at` is the
//! file's modification time.

use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};

use chrono::NaiveDate;

use super::{Lake, LakeFile, LocalCopy, ObjectVersion, PutOutcome, daily_file_name};
use crate::error::{PipelineError, Result};
use crate::window::DateWindow;

/// Configuration and handle of a local lake.
#[derive(Debug, Clone)]
pub struct LocalLake {
    root: PathBuf,
    url: String,
}

impl LocalLake {
    /// Opens (creating if needed) the folder of a `file://` URL's path part.
    pub fn open(path: &str) -> Result<Self> {
        let root = PathBuf::from(path);
        if !root.is_absolute() {
            return Err(PipelineError::Config(format!(
                "lake URL file://{path} must hold an absolute path (file:///abs/dir)"
            )));
        }
        fs::create_dir_all(&root).map_err(|e| PipelineError::io(&root, e))?;
        let url = format!("file://{}", root.display());
        Ok(LocalLake { root, url })
    }

    fn path_of_uri(&self, uri: &str) -> Result<PathBuf> {
        let path = uri
            .strip_prefix("file://")
            .map(PathBuf::from)
            .filter(|p| p.starts_with(&self.root))
            .ok_or_else(|| {
                PipelineError::Config(format!("{uri} is not in the lake {}", self.url))
            })?;
        Ok(path)
    }

    fn fingerprint(&self, path: &Path, day: NaiveDate) -> Result<Option<LakeFile>> {
        let Some((size, since)) = metadata_of(path)? else {
            return Ok(None);
        };
        Ok(Some(LakeFile {
            uri: format!("file://{}", path.display()),
            day,
            size,
            generation: since.as_nanos().to_string(),
            checksum: crc32c_of_file(path)?,
            ingested_at: since.as_micros() as i64,
        }))
    }
}

/// Size and modification time of a regular file, or None if there is none.
fn metadata_of(path: &Path) -> Result<Option<(u64, Duration)>> {
    let meta = match fs::metadata(path) {
        Ok(m) if m.is_file() => m,
        Ok(_) => return Ok(None),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(PipelineError::io(path, e)),
    };
    let mtime = meta.modified().map_err(|e| PipelineError::io(path, e))?;
    Ok(Some((
        meta.len(),
        mtime.duration_since(UNIX_EPOCH).unwrap_or_default(),
    )))
}

/// crc32c of a file's content, as 8 hex digits; reads in 1 MiB chunks.
pub fn crc32c_of_file(path: &Path) -> Result<String> {
    let mut file = fs::File::open(path).map_err(|e| PipelineError::io(path, e))?;
    let mut buf = vec![0u8; 1 << 20];
    let mut crc = 0u32;
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| PipelineError::io(path, e))?;
        if n == 0 {
            break;
        }
        crc = crc32c::crc32c_append(crc, &buf[..n]);
    }
    Ok(format!("{crc:08x}"))
}

impl Lake for LocalLake {
    fn url(&self) -> &str {
        &self.url
    }

    fn list_daily_files(&self, window: &DateWindow, suffix: &str) -> Result<Vec<LakeFile>> {
        let mut files = Vec::new();
        for day in window.days() {
            if let Some(f) = self.fingerprint(&self.root.join(daily_file_name(day, suffix)), day)? {
                files.push(f);
            }
        }
        Ok(files)
    }

    fn version_of(&self, uri: &str) -> Result<Option<ObjectVersion>> {
        let path = self.path_of_uri(uri)?;
        Ok(metadata_of(&path)?.map(|(size, since)| ObjectVersion {
            size,
            generation: since.as_nanos().to_string(),
        }))
    }

    fn local_copy(&self, file: &LakeFile) -> Result<LocalCopy> {
        Ok(LocalCopy::in_place(self.path_of_uri(&file.uri)?))
    }

    fn put_file(&self, name: &str, source: &Path) -> Result<PutOutcome> {
        let target = self.root.join(name);
        let len = |p: &Path| {
            fs::metadata(p)
                .map(|m| m.len())
                .map_err(|e| PipelineError::io(p, e))
        };
        if target.exists()
            && len(&target)? == len(source)?
            && crc32c_of_file(&target)? == crc32c_of_file(source)?
        {
            return Ok(PutOutcome::Unchanged);
        }
        // Move (or copy) next to the target, then rename: readers never see a
        // half-written file.
        let partial = self.root.join(format!(".{name}.partial"));
        if fs::rename(source, &partial).is_err() {
            fs::copy(source, &partial).map_err(|e| PipelineError::io(&partial, e))?;
        }
        fs::rename(&partial, &target).map_err(|e| PipelineError::io(&target, e))?;
        Ok(PutOutcome::Written)
    }

    fn scratch_dir(&self) -> Result<PathBuf> {
        let dir = self.root.join(".scratch");
        fs::create_dir_all(&dir).map_err(|e| PipelineError::io(&dir, e))?;
        Ok(dir)
    }
}
