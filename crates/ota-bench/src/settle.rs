//! Lets the machine settle before every timed run, so that no run pays for the writes of
//! the run before it.
//!
//! A load leaves work behind that the server does later, in the background: dirty pages in
//! the buffer pool, a redo log close to full (the next run must then flush in the
//! foreground before it may write), and undo history to purge. Whichever run comes next
//! pays for it, so without settling a figure depends on what ran before it. Before each
//! timed run the bench therefore writes the OS's dirty pages out (`sync`), has the server
//! flush its buffer pool (`innodb_max_dirty_pages_pct = 0` for the while, then the old
//! value back) and waits until the dirty pages are written and purge has caught up.
//!
//! The old value must come back even when the bench is stopped meanwhile: it is written
//! to a marker file before the setting is changed, the bench's signal watcher
//! ([`crate::interrupt`]) sets it back on SIGINT, SIGTERM or SIGHUP, and the next bench
//! ([`Settler::recover`]) sets it back from the marker after anything harder (SIGKILL, a
//! crash).

use std::cell::Cell;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;

use crate::{BenchError, loaders};

/// Dirty pages and history-list entries the server may still hold once settled.
const SETTLED_DIRTY_PAGES: u64 = 16;
const SETTLED_HISTORY: u64 = 16;
/// How long to wait for the server at most; a busy shared server may never get there.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(120);
const POLL: Duration = Duration::from_millis(200);
/// The marker file, in the bench's work dir: the value to set back.
pub const MARKER_FILE: &str = "innodb_max_dirty_pages_pct.restore";

/// A server setting changed by a settle and not yet set back.
struct Unrestored {
    server_url: String,
    pct: f64,
    marker: PathBuf,
}

/// Held while a settle changes the setting or sets it back, so that the signal watcher
/// sees either the changed setting with its old value here, or neither.
static UNRESTORED: tokio::sync::Mutex<Option<Unrestored>> = tokio::sync::Mutex::const_new(None);

const SET_PCT: &str = "SET GLOBAL innodb_max_dirty_pages_pct = ?";

async fn set_pct(conn: &mut Conn, pct: f64) -> Result<(), BenchError> {
    conn.exec_drop(SET_PCT, (pct,)).await.map_err(|e| {
        BenchError::Mysql(format!(
            "restoring innodb_max_dirty_pages_pct to {pct}: {e}"
        ))
    })
}

/// Sets the value back on a connection of its own.
async fn restore(server_url: &str, pct: f64) -> Result<(), BenchError> {
    let mut conn = loaders::connect(server_url).await?;
    set_pct(&mut conn, pct).await?;
    let _ = conn.disconnect().await;
    Ok(())
}

/// Sets back a setting a settle changed, if one is pending: called by the signal watcher
/// when the bench is stopped. Waits for a settle that is changing the setting right now.
pub fn restore_after_interrupt() {
    let mut pending = UNRESTORED.blocking_lock();
    let Some(unrestored) = pending.take() else {
        return;
    };
    let restored = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io(Path::new("tokio runtime"), e))
        .and_then(|runtime| runtime.block_on(restore(&unrestored.server_url, unrestored.pct)));
    match restored {
        Ok(()) => {
            let _ = std::fs::remove_file(&unrestored.marker);
            eprintln!(
                "set the server's innodb_max_dirty_pages_pct back to {}",
                unrestored.pct
            );
        }
        Err(e) => eprintln!(
            "could not set the server's innodb_max_dirty_pages_pct back to {} ({e}); \
             the next bench will, from {}",
            unrestored.pct,
            unrestored.marker.display()
        ),
    }
}

/// What the server held when a settle began.
#[derive(Debug, Clone, Copy, Default)]
struct Backlog {
    dirty_pages: u64,
    /// Undo records not yet purged (MariaDB reports it; MySQL does not: 0).
    history: u64,
    /// Redo written since the last checkpoint, in bytes (MariaDB; MySQL: 0).
    checkpoint_age: u64,
}

impl Backlog {
    fn settled(&self) -> bool {
        self.dirty_pages <= SETTLED_DIRTY_PAGES && self.history <= SETTLED_HISTORY
    }
}

async fn backlog(conn: &mut Conn) -> Result<Backlog, BenchError> {
    let rows: Vec<(String, String)> = conn
        .query(
            "SHOW GLOBAL STATUS WHERE Variable_name IN \
             ('Innodb_buffer_pool_pages_dirty', 'Innodb_history_list_length', 'Innodb_checkpoint_age')",
        )
        .await
        .map_err(|e| BenchError::Mysql(format!("reading the server's backlog: {e}")))?;
    let mut backlog = Backlog::default();
    for (name, value) in rows {
        let value = value.parse().unwrap_or(0);
        match name.to_ascii_lowercase().as_str() {
            "innodb_buffer_pool_pages_dirty" => backlog.dirty_pages = value,
            "innodb_history_list_length" => backlog.history = value,
            "innodb_checkpoint_age" => backlog.checkpoint_age = value,
            _ => {}
        }
    }
    Ok(backlog)
}

/// Settles the machine before timed runs and keeps count of the time it took.
pub struct Settler {
    server_url: String,
    marker: PathBuf,
    waited: Cell<f64>,
    times: Cell<u32>,
}

impl Settler {
    /// `work_dir` keeps the marker file while a settle has the setting changed.
    pub fn new(server_url: &str, work_dir: &Path) -> Self {
        Settler {
            server_url: server_url.to_string(),
            marker: work_dir.join(MARKER_FILE),
            waited: Cell::new(0.0),
            times: Cell::new(0),
        }
    }

    /// Sets the server's `innodb_max_dirty_pages_pct` back to the value in the marker
    /// file, if an earlier bench was stopped mid-settle and could not; returns that value.
    pub fn recover(&self, runtime: &tokio::runtime::Runtime) -> Result<Option<f64>, BenchError> {
        let text = match std::fs::read_to_string(&self.marker) {
            Ok(text) => text,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(BenchError::io(&self.marker, e)),
        };
        let pct: f64 = text.trim().parse().map_err(|_| {
            BenchError::Config(format!(
                "{} should hold the innodb_max_dirty_pages_pct to set back, not {:?}; \
                 set it on the server by hand and delete the file",
                self.marker.display(),
                text.trim()
            ))
        })?;
        runtime.block_on(restore(&self.server_url, pct))?;
        std::fs::remove_file(&self.marker).map_err(|e| BenchError::io(&self.marker, e))?;
        eprintln!(
            "an earlier bench was stopped while settling: set the server's innodb_max_dirty_pages_pct back to {pct}"
        );
        Ok(Some(pct))
    }

    /// Seconds spent settling so far, and how many times.
    pub fn waited(&self) -> (f64, u32) {
        (self.waited.get(), self.times.get())
    }

    /// Writes the OS's and the server's dirty pages out and waits for purge; logs what
    /// it found. Gives up waiting after a while (a shared server may never be idle) and
    /// says so; the run then goes ahead.
    pub fn settle(&self, runtime: &tokio::runtime::Runtime) -> Result<(), BenchError> {
        let started = Instant::now();
        // SAFETY: sync(2) takes no arguments and cannot fail.
        unsafe { libc::sync() };
        let found = runtime.block_on(self.settle_server())?;
        let seconds = started.elapsed().as_secs_f64();
        self.waited.set(self.waited.get() + seconds);
        self.times.set(self.times.get() + 1);
        eprintln!(
            "  settled in {seconds:.1} s (the server had {} dirty pages, {} undo records to purge, {} MiB of redo since its checkpoint)",
            found.dirty_pages,
            found.history,
            found.checkpoint_age >> 20
        );
        Ok(())
    }

    async fn settle_server(&self) -> Result<Backlog, BenchError> {
        let mut conn = loaders::connect(&self.server_url).await?;
        let found = backlog(&mut conn).await?;
        let old_pct: Option<f64> = conn
            .query_first("SELECT @@GLOBAL.innodb_max_dirty_pages_pct + 0e0")
            .await
            .map_err(|e| BenchError::Mysql(format!("reading innodb_max_dirty_pages_pct: {e}")))?;
        // Without the privilege to set it the server still flushes, only slower.
        let forced = match old_pct {
            Some(pct) => self.force_flushing(&mut conn, pct).await?,
            None => false,
        };
        let waited = self.wait_until_settled(&mut conn).await;
        if forced {
            let mut pending = UNRESTORED.lock().await;
            if let Some(unrestored) = pending.take() {
                set_pct(&mut conn, unrestored.pct).await?;
                std::fs::remove_file(&self.marker).map_err(|e| BenchError::io(&self.marker, e))?;
            }
        }
        waited?;
        let _ = conn.disconnect().await;
        Ok(found)
    }

    /// Sets `innodb_max_dirty_pages_pct` to 0, the old value first written to the marker
    /// and left for the signal watcher; false if the server refused (no privilege).
    async fn force_flushing(&self, conn: &mut Conn, old_pct: f64) -> Result<bool, BenchError> {
        let mut pending = UNRESTORED.lock().await;
        std::fs::write(&self.marker, format!("{old_pct}\n"))
            .map_err(|e| BenchError::io(&self.marker, e))?;
        if conn
            .query_drop("SET GLOBAL innodb_max_dirty_pages_pct = 0")
            .await
            .is_err()
        {
            std::fs::remove_file(&self.marker).map_err(|e| BenchError::io(&self.marker, e))?;
            return Ok(false);
        }
        *pending = Some(Unrestored {
            server_url: self.server_url.clone(),
            pct: old_pct,
            marker: self.marker.clone(),
        });
        Ok(true)
    }

    async fn wait_until_settled(&self, conn: &mut Conn) -> Result<(), BenchError> {
        let deadline = Instant::now() + SETTLE_TIMEOUT;
        loop {
            let now = backlog(conn).await?;
            if now.settled() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                eprintln!(
                    "  the server did not settle within {} s ({} dirty pages, {} undo records left); going on",
                    SETTLE_TIMEOUT.as_secs(),
                    now.dirty_pages,
                    now.history
                );
                return Ok(());
            }
            tokio::time::sleep(POLL).await;
        }
    }
}
