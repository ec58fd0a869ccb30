//! Stops the bench cleanly on SIGINT, SIGTERM or SIGHUP: a settle's change to the server
//! is set back ([`crate::settle::restore_after_interrupt`]) and the step running as a
//! child is stopped too, before the bench exits with 128 + the signal.
//!
//! The signals are blocked in every thread and taken by one thread of their own
//! (`sigwait`), so nothing is done inside a signal handler. Children get the default
//! mask back before they exec ([`unblock_in_child`]).

use std::path::Path;
use std::sync::Mutex;

use crate::BenchError;

const SIGNALS: [libc::c_int; 3] = [libc::SIGINT, libc::SIGTERM, libc::SIGHUP];

/// The pid of the step running as a child (0: none). The signal watcher sends its signal
/// while holding the lock, and the pid is cleared (under the lock) before the child is
/// reaped, so a signal never reaches a pid the kernel has handed to another process.
static RUNNING_CHILD: Mutex<u32> = Mutex::new(0);

/// The running step's pid, locked: hold it across spawning a step and recording its pid,
/// so that a signal arriving meanwhile waits and then reaches the new child too.
pub fn running_child() -> std::sync::MutexGuard<'static, u32> {
    RUNNING_CHILD
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Forgets the running step: call it once the step has exited, before it is reaped.
pub fn forget_running_child() {
    *running_child() = 0;
}

fn stop_signals() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data; sigemptyset initialises it before use.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live local; the signal numbers are valid.
    unsafe {
        libc::sigemptyset(&mut set);
        for signal in SIGNALS {
            libc::sigaddset(&mut set, signal);
        }
    }
    set
}

/// Starts watching for the stop signals. Call it first thing in `main`, before any other
/// thread is started: threads inherit the mask of the thread that starts them.
pub fn watch() -> Result<(), BenchError> {
    let set = stop_signals();
    // SAFETY: `set` is initialised; the old mask is not wanted.
    let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc != 0 {
        return Err(BenchError::io(
            Path::new("pthread_sigmask"),
            std::io::Error::from_raw_os_error(rc),
        ));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut signal: libc::c_int = 0;
            // SAFETY: `set` and `signal` outlive the call.
            while unsafe { libc::sigwait(&set, &mut signal) } != 0 {}
            eprintln!("stopping (signal {signal})");
            {
                let child = running_child();
                if *child != 0 {
                    // SAFETY: kill has no memory preconditions; while the lock is held the
                    // pid is our child, not yet reaped.
                    unsafe { libc::kill(*child as libc::pid_t, libc::SIGTERM) };
                }
            }
            crate::settle::restore_after_interrupt();
            std::process::exit(128 + signal);
        })
        .map_err(|e| BenchError::io(Path::new("signal thread"), e))?;
    Ok(())
}

/// For `Command::pre_exec`: gives a child the stop signals back, which this process
/// blocks. Only calls what is async-signal-safe.
pub fn unblock_in_child() -> std::io::Result<()> {
    let set = stop_signals();
    // SAFETY: `set` is initialised; sigprocmask is async-signal-safe.
    if unsafe { libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut()) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
