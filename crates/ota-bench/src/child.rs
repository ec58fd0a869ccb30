//! Runs one step binary as a child process and measures it: wall seconds, and peak RSS
//! as the kernel's high-water mark of the child's own address space (`VmHWM` in
//! `/proc/<pid>/status`, read every 10 ms until it exits). Not `wait4`'s `ru_maxrss`:
//! that also counts the address space the child was spawned from, i.e. this process.

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

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
        let pid = child.id();
        let done = AtomicBool::new(false);
        let (stdout, peak_rss_kb, status) = std::thread::scope(|scope| {
            let watcher = scope.spawn(|| {
                let mut peak = 0u64;
                while !done.load(Ordering::Relaxed) {
                    peak = peak.max(high_water_kb(pid).unwrap_or(0));
                    std::thread::sleep(Duration::from_millis(10));
                }
                peak
            });
            let mut stdout = String::new();
            let read = match child.stdout.take() {
                Some(mut out) => out.read_to_string(&mut stdout).map(|_| ()),
                None => Ok(()),
            };
            // The child has closed its stdout: it is exiting. Read the mark once more
            // while it is still a zombie-to-be, then reap it.
            let last = high_water_kb(pid).unwrap_or(0);
            let status = wait_for(pid);
            done.store(true, Ordering::Relaxed);
            let peak = watcher.join().unwrap_or(0).max(last);
            (read.map(|_| stdout), peak, status)
        });
        let stdout = stdout.map_err(|e| BenchError::io(&program, e))?;
        let status = status?;
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

/// The child's peak resident set in KiB, while it runs.
fn high_water_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for the child; returns its exit code, or 128 + the signal that ended it.
fn wait_for(pid: u32) -> Result<i32, BenchError> {
    let mut status: libc::c_int = 0;
    loop {
        // SAFETY: pid is our own child, not yet reaped; status is a live local.
        let got = unsafe { libc::waitpid(pid as libc::pid_t, &mut status, 0) };
        if got == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::io(Path::new("waitpid"), err));
        }
    }
    Ok(if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    })
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
