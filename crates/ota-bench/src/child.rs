//! Runs one step binary as a child process and measures it: wall seconds, and peak RSS
//! from the kernel's own accounting of that child (`wait4(2)`), not from sampling.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use crate::BenchError;

/// What one run of a step took.
#[derive(Debug, Clone)]
pub struct StepRun {
    pub step: String,
    pub seconds: f64,
    pub peak_rss_mb: f64,
    /// The JSON summary the step printed last.
    pub summary: serde_json::Value,
}

impl StepRun {
    /// A count from the summary (`rows_read`, `rows_written`, ...).
    pub fn count(&self, name: &str) -> u64 {
        self.summary["counts"][name].as_u64().unwrap_or(0)
    }
}

/// Where the step binaries are and what every run of them gets.
#[derive(Debug, Clone)]
pub struct Steps {
    pub bin_dir: PathBuf,
    pub env: Vec<(String, String)>,
    /// Each run's stderr (its log) goes to `<log_dir>/<n>-<step>.log`.
    pub log_dir: PathBuf,
}

impl Steps {
    pub fn run(&self, step: &str, args: &[String]) -> Result<StepRun, BenchError> {
        std::fs::create_dir_all(&self.log_dir).map_err(|e| BenchError::io(&self.log_dir, e))?;
        let n = std::fs::read_dir(&self.log_dir)
            .map(|d| d.count())
            .unwrap_or(0);
        let log_path = self.log_dir.join(format!("{n:04}-{step}.log"));
        let log = File::create(&log_path).map_err(|e| BenchError::io(&log_path, e))?;
        let program = self.bin_dir.join(step);
        let started = Instant::now();
        let mut child = Command::new(&program)
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::io(&program, e))?;
        let mut stdout = String::new();
        if let Some(mut out) = child.stdout.take() {
            out.read_to_string(&mut stdout)
                .map_err(|e| BenchError::io(&program, e))?;
        }
        let (status, peak_rss_kb) = wait_with_rusage(child.id())?;
        let seconds = started.elapsed().as_secs_f64();
        if status != 0 {
            return Err(BenchError::Step {
                step: step.to_string(),
                detail: format!(
                    "exited with {status}; its log: {}\n{}",
                    log_path.display(),
                    tail(&log_path)
                ),
            });
        }
        let last = stdout.lines().last().unwrap_or_default();
        let summary = serde_json::from_str(last).map_err(|e| BenchError::Step {
            step: step.to_string(),
            detail: format!("its last line is not a JSON summary ({e}): {last}"),
        })?;
        Ok(StepRun {
            step: step.to_string(),
            seconds,
            peak_rss_mb: peak_rss_kb as f64 / 1024.0,
            summary,
        })
    }
}

/// Waits for the child and returns (exit code, or 128 + signal; peak RSS in KiB).
fn wait_with_rusage(pid: u32) -> Result<(i32, i64), BenchError> {
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; both pointers are to live locals.
        let got = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if got == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::io(Path::new("wait4"), err));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    // Linux reports ru_maxrss in KiB.
    Ok((code, usage.ru_maxrss))
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
