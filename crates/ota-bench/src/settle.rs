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

use std::cell::Cell;
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
    waited: Cell<f64>,
    times: Cell<u32>,
}

impl Settler {
    pub fn new(server_url: &str) -> Self {
        Settler {
            server_url: server_url.to_string(),
            waited: Cell::new(0.0),
            times: Cell::new(0),
        }
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
        let forced = match &old_pct {
            Some(_) => conn
                .query_drop("SET GLOBAL innodb_max_dirty_pages_pct = 0")
                .await
                .is_ok(),
            None => false,
        };
        let waited = self.wait_until_settled(&mut conn).await;
        if let (true, Some(pct)) = (forced, old_pct) {
            conn.exec_drop("SET GLOBAL innodb_max_dirty_pages_pct = ?", (pct,))
                .await
                .map_err(|e| {
                    BenchError::Mysql(format!(
                        "restoring innodb_max_dirty_pages_pct to {pct}: {e}"
                    ))
                })?;
        }
        waited?;
        let _ = conn.disconnect().await;
        Ok(found)
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
