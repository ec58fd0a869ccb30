//! A small disk: a tmpfs mounted for the harness, whose size it sets to just above what is
//! in use, so the next write that grows the DuckDB file, its WAL or a spill file finds the
//! disk full. Mounting needs root (or CAP_SYS_ADMIN); without it the fault is skipped.

use std::path::{Path, PathBuf};
use std::process::Command;

pub struct SmallDisk {
    mount_point: PathBuf,
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct DiskError(pub String);

fn mount(args: &[&str], target: &Path) -> Result<(), DiskError> {
    let out = Command::new("mount")
        .args(args)
        .arg(target)
        .output()
        .map_err(|e| DiskError(format!("running mount: {e}")))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(DiskError(format!(
            "mount {} {}: {}",
            args.join(" "),
            target.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

impl SmallDisk {
    /// Mounts a tmpfs of `bytes` at `mount_point` (created if missing).
    pub fn mount(mount_point: &Path, bytes: u64) -> Result<Self, DiskError> {
        std::fs::create_dir_all(mount_point)
            .map_err(|e| DiskError(format!("creating {}: {e}", mount_point.display())))?;
        let size = format!("size={bytes}");
        mount(&["-t", "tmpfs", "-o", &size, "tmpfs"], mount_point)?;
        Ok(SmallDisk {
            mount_point: mount_point.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.mount_point
    }

    /// Bytes in use on the disk.
    pub fn used(&self) -> Result<u64, DiskError> {
        let out = Command::new("df")
            .args(["--block-size=1", "--output=used"])
            .arg(&self.mount_point)
            .output()
            .map_err(|e| DiskError(format!("running df: {e}")))?;
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .nth(1)
            .and_then(|l| l.trim().parse().ok())
            .ok_or_else(|| {
                DiskError(format!(
                    "df printed no size for {}",
                    self.mount_point.display()
                ))
            })
    }

    /// Sets the disk's size (never below what is in use: tmpfs refuses that).
    pub fn resize(&self, bytes: u64) -> Result<(), DiskError> {
        let bytes = bytes.max(self.used()?);
        mount(&["-o", &format!("remount,size={bytes}")], &self.mount_point)
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = Command::new("umount")
            .arg("--lazy")
            .arg(&self.mount_point)
            .status();
    }
}
