//! The local lake: a folder on this machine (`file:///abs/dir`). `ingested_at` is the
//! file's modification time. A file's version is told by `stat` (size, modification and
//! change times, inode); its crc32c is read only for a version the ledger does not know.

use std::fs;
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use super::{
    Lake, LakeFile, LocalCopy, ObjectVersion, PutOutcome, RecordedVersion, RecordedVersions,
    daily_file_name,
};
use ota_core::error::{PipelineError, Result};
use ota_core::window::DateWindow;

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
                PipelineError::Internal(format!("{uri} is not in the lake {}", self.url))
            })?;
        Ok(path)
    }

    fn uri_of(path: &Path) -> String {
        format!("file://{}", path.display())
    }
}

/// A changed file's timestamps must be this far before the load that recorded its
/// checksum for that checksum to be reused: a filesystem's timestamps have a coarse tick
/// (a jiffy on Linux, 2 s on FAT), and two writes within one tick leave the same times.
const RECHECK_WITHIN_MICROS: i64 = 3_000_000;

/// What `stat` tells of a regular file: enough to tell a new version without reading it.
#[derive(Debug, Clone, Copy)]
struct FileStat {
    size: u64,
    modified_ns: i128,
    changed_ns: i128,
    inode: u64,
}

impl FileStat {
    /// The stat of a regular file, or None if there is none.
    fn of(path: &Path) -> Result<Option<Self>> {
        let meta = match fs::metadata(path) {
            Ok(m) if m.is_file() => m,
            Ok(_) => return Ok(None),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(PipelineError::io(path, e)),
        };
        let ns = |secs: i64, nanos: i64| i128::from(secs) * 1_000_000_000 + i128::from(nanos);
        Ok(Some(FileStat {
            size: meta.len(),
            modified_ns: ns(meta.mtime(), meta.mtime_nsec()),
            changed_ns: ns(meta.ctime(), meta.ctime_nsec()),
            inode: meta.ino(),
        }))
    }

    /// Modification time, change time (which no one can set back) and inode: any write,
    /// replacement or `touch` gives a new generation.
    fn generation(&self) -> String {
        format!("{}.{}.{}", self.modified_ns, self.changed_ns, self.inode)
    }

    /// When the content landed, UTC microseconds: the modification time.
    fn ingested_at(&self) -> i64 {
        (self.modified_ns / 1000) as i64
    }

    /// Whether the ledger's checksum can stand for reading this file again: the same
    /// size and generation, and the load that recorded it began well after the file's
    /// last change, so no second write can hide within the same timestamp tick. That
    /// load read the file after it began, so what it loaded is what the file holds now.
    fn unchanged_since(&self, recorded: &RecordedVersion) -> bool {
        let last_change_us = (self.modified_ns.max(self.changed_ns) / 1000) as i64;
        recorded.size == self.size
            && recorded.generation == self.generation()
            && recorded.loaded_at.saturating_sub(last_change_us) >= RECHECK_WITHIN_MICROS
    }
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

    /// Reads (to checksum) only the files whose version the ledger does not know.
    fn list_daily_files(
        &self,
        window: &DateWindow,
        suffix: &str,
        recorded: &mut RecordedVersions<'_>,
    ) -> Result<Vec<LakeFile>> {
        let mut present = Vec::new();
        for day in window.days() {
            let path = self.root.join(daily_file_name(day, suffix));
            if let Some(stat) = FileStat::of(&path)? {
                present.push((day, Self::uri_of(&path), path, stat));
            }
        }
        let uris: Vec<String> = present.iter().map(|p| p.1.clone()).collect();
        let known = if uris.is_empty() {
            Default::default()
        } else {
            recorded(&uris)?
        };
        let mut files = Vec::with_capacity(present.len());
        for (day, uri, path, stat) in present {
            let checksum = match known.get(&uri) {
                Some(version) if stat.unchanged_since(version) => version.checksum.clone(),
                _ => crc32c_of_file(&path)?,
            };
            files.push(LakeFile {
                uri,
                day,
                size: stat.size,
                generation: stat.generation(),
                checksum,
                ingested_at: stat.ingested_at(),
            });
        }
        Ok(files)
    }

    fn version_of(&self, uri: &str) -> Result<Option<ObjectVersion>> {
        let path = self.path_of_uri(uri)?;
        Ok(FileStat::of(&path)?.map(|stat| ObjectVersion {
            size: stat.size,
            generation: stat.generation(),
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::Duration;

    use chrono::NaiveDate;

    use super::*;

    const DAY: &str = "2024-01-01";

    fn window() -> DateWindow {
        let day = NaiveDate::parse_from_str(DAY, "%Y-%m-%d").expect("day");
        DateWindow::new(day, day).expect("window")
    }

    fn now_micros() -> i64 {
        chrono::Utc::now().timestamp_micros()
    }

    /// Lists the window, the ledger knowing `recorded` of the one file; also returns
    /// the URIs the lake asked the ledger about.
    fn list(lake: &LocalLake, recorded: Option<RecordedVersion>) -> (LakeFile, Vec<String>) {
        let mut asked = Vec::new();
        let mut files = lake
            .list_daily_files(&window(), "OTA", &mut |uris| {
                asked.extend_from_slice(uris);
                Ok(uris
                    .iter()
                    .filter_map(|u| recorded.clone().map(|r| (u.clone(), r)))
                    .collect::<BTreeMap<_, _>>())
            })
            .expect("list");
        assert_eq!(files.len(), 1);
        (files.remove(0), asked)
    }

    /// What a load that began at `loaded_at` would have recorded of `file`, but with a
    /// checksum no read of the file can give: seeing it back proves the file was not read.
    fn recorded_as(file: &LakeFile, loaded_at: i64) -> RecordedVersion {
        RecordedVersion {
            size: file.size,
            generation: file.generation.clone(),
            checksum: "not-read".into(),
            loaded_at,
            rows_loaded: 1,
        }
    }

    #[test]
    fn a_known_version_is_not_read_again_a_changed_one_is() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = LocalLake::open(dir.path().to_str().expect("utf-8")).expect("lake");
        let path = dir.path().join("20240101_OTA.parquet");
        fs::write(&path, b"first version").expect("write");

        let (first, asked) = list(&lake, None);
        assert_eq!(asked, vec![first.uri.clone()]);
        assert_eq!(first.checksum, crc32c_of_file(&path).expect("crc"));

        // Loaded well after the file's last change: the ledger's checksum stands.
        let later = now_micros() + 10_000_000;
        let (again, _) = list(&lake, Some(recorded_as(&first, later)));
        assert_eq!(again.checksum, "not-read");
        assert_eq!(again.generation, first.generation);

        // Loaded within moments of the change: a second write in the same timestamp
        // tick could hide, so the file is read.
        let (racy, _) = list(&lake, Some(recorded_as(&first, now_micros())));
        assert_eq!(racy.checksum, first.checksum);

        // New bytes of the same size, with the old modification time put back (as
        // `cp -p` or `rsync -t` do): the change time still tells, and it is read.
        let modified = fs::metadata(&path)
            .and_then(|m| m.modified())
            .expect("mtime");
        std::thread::sleep(Duration::from_millis(20));
        fs::write(&path, b"other version").expect("rewrite");
        fs::File::options()
            .write(true)
            .open(&path)
            .and_then(|f| f.set_modified(modified))
            .expect("set mtime");
        let (rewritten, _) = list(&lake, Some(recorded_as(&first, later)));
        assert_eq!(rewritten.ingested_at, first.ingested_at);
        assert_ne!(rewritten.generation, first.generation);
        assert_eq!(rewritten.checksum, crc32c_of_file(&path).expect("crc"));
        assert_ne!(rewritten.checksum, first.checksum);

        // A different size is a new version whatever the rest says.
        let mut other_size = recorded_as(&rewritten, later);
        other_size.size += 1;
        let (read, _) = list(&lake, Some(other_size));
        assert_eq!(read.checksum, rewritten.checksum);
    }

    #[test]
    fn the_ledger_is_not_asked_when_no_file_exists() {
        let dir = tempfile::tempdir().expect("tempdir");
        let lake = LocalLake::open(dir.path().to_str().expect("utf-8")).expect("lake");
        let files = lake
            .list_daily_files(&window(), "OTA", &mut |_| {
                panic!("the ledger was asked about no file")
            })
            .expect("list");
        assert!(files.is_empty());
    }
}
