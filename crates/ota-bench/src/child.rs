//! Runs one step binary as a child process and measures it: wall seconds, and peak RSS
//! as the kernel's high-water mark of the child's own address space (`VmHWM` in
//! `/proc/<pid>/status`, read every 10 ms until it exits). Not `wait4`'s `ru_maxrss`:
//! that also counts the address space the child was spawned from, i.e. this process.
//! CPU seconds do come from `wait4` (user + system time of the child alone), and the
//! database server's CPU seconds over the same span from its `/proc/<pid>/stat`, when the
//! server runs on this machine: where the time goes when client and server share cores.

use std::fs::File;
use std::io::Read;
use std::os::unix::process::CommandExt;
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
    /// User + system CPU seconds of the step.
    pub cpu_seconds: f64,
    /// CPU seconds the local database server spent meanwhile (None: not local).
    pub server_cpu_seconds: Option<f64>,
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
        let server_before = server_cpu_seconds();
        let started = Instant::now();
        let mut running = crate::interrupt::running_child();
        let mut command = Command::new(&program);
        // SAFETY: the hook only calls sigprocmask, which is async-signal-safe.
        unsafe { command.pre_exec(crate::interrupt::unblock_in_child) };
        let mut child = command
            .args(args)
            .envs(self.env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(log)
            .spawn()
            .map_err(|e| BenchError::io(&program, e))?;
        let pid = child.id();
        *running = pid;
        drop(running);
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
            // Forget the pid once the child has exited but before it is reaped: until
            // then the pid is still ours, so the signal watcher cannot hit another process.
            let exited = wait_exited(pid);
            crate::interrupt::forget_running_child();
            let status = exited.and_then(|()| wait_for(pid));
            done.store(true, Ordering::Relaxed);
            let peak = watcher.join().unwrap_or(0).max(last);
            (read.map(|_| stdout), peak, status)
        });
        let stdout = stdout.map_err(|e| BenchError::io(&program, e))?;
        let (status, cpu_seconds) = status?;
        let seconds = started.elapsed().as_secs_f64();
        let server_cpu_seconds = server_cpu_since(server_before);
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
            cpu_seconds,
            server_cpu_seconds,
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

/// Waits until the child has exited, leaving it unreaped (a zombie keeps its pid).
fn wait_exited(pid: u32) -> Result<(), BenchError> {
    loop {
        // SAFETY: siginfo_t is plain data; all zeroes is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: pid is our own child, not yet reaped; info is a live local.
        let rc = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if rc == 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::io(Path::new("waitid"), err));
        }
    }
}

/// Reaps the child; returns its exit code (or 128 + the signal that ended it) and
/// its CPU seconds.
fn wait_for(pid: u32) -> Result<(i32, f64), BenchError> {
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; all zeroes is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child, not yet reaped; status and usage are live locals.
        let got = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        if got == pid as libc::pid_t {
            break;
        }
        let err = std::io::Error::last_os_error();
        if err.kind() != std::io::ErrorKind::Interrupted {
            return Err(BenchError::io(Path::new("waitpid"), err));
        }
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        128 + libc::WTERMSIG(status)
    };
    Ok((code, cpu_of(&usage)))
}

fn cpu_of(usage: &libc::rusage) -> f64 {
    let seconds = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// User + system CPU seconds of this process so far (for loaders run in-process).
pub fn own_cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a live local; RUSAGE_SELF is always valid.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) };
    cpu_of(&usage)
}

/// The server's CPU seconds since an earlier [`server_cpu_seconds`] reading.
pub fn server_cpu_since(before: Option<f64>) -> Option<f64> {
    before
        .zip(server_cpu_seconds())
        .map(|(before, after)| after - before)
}

/// CPU seconds used so far by a MariaDB/MySQL server running on this machine (the first
/// `mariadbd` or `mysqld` process found), or None.
pub fn server_cpu_seconds() -> Option<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if ticks <= 0 {
        return None;
    }
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let name = entry.file_name();
        let Some(pid) = name
            .to_str()
            .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
        else {
            continue;
        };
        let comm = std::fs::read_to_string(format!("/proc/{pid}/comm")).unwrap_or_default();
        if !matches!(comm.trim(), "mariadbd" | "mysqld") {
            continue;
        }
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
        // Fields after the parenthesised command name; utime and stime are the 14th and
        // 15th fields of the line, i.e. the 12th and 13th after it.
        let rest = stat.rsplit_once(')')?.1;
        let mut fields = rest.split_whitespace().skip(11);
        let utime: f64 = fields.next()?.parse().ok()?;
        let stime: f64 = fields.next()?.parse().ok()?;
        return Some((utime + stime) / ticks as f64);
    }
    None
}

fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}
