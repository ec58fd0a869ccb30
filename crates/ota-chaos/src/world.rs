//! One fault's world: a lake folder, a DuckDB warehouse and a MySQL database of its own,
//! the step binaries run against them, and the checks after each fault.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use arrow::array::RecordBatch;
use mysql_async::prelude::Queryable;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::disk::SmallDisk;

mod hostile;
use crate::server::PrivateServer;
use crate::{ChaosConfig, FaultOutcome, STEPS};
pub use hostile::{HOSTILE_INPUTS, Hostile};

/// The small disk's size while no fault is tried: room for everything.
const DISK_ROOM: u64 = 1 << 30;

#[derive(Debug, thiserror::Error)]
pub enum HarnessError {
    #[error("{context}: {source}")]
    Io {
        context: String,
        source: std::io::Error,
    },
    #[error("MySQL while {context}: {source}")]
    Mysql {
        context: String,
        source: mysql_async::Error,
    },
    #[error("{0}")]
    Step(String),
    #[error(transparent)]
    Server(#[from] crate::server::ServerError),
    #[error(transparent)]
    Disk(#[from] crate::disk::DiskError),
    #[error(transparent)]
    Reference(#[from] crate::reference::ReferenceError),
    #[error("{context}: {source}")]
    Data {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

pub(crate) fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
    move |source| HarnessError::Io {
        context: context.into(),
        source,
    }
}

fn data<E: std::error::Error + Send + Sync + 'static>(
    context: impl Into<String>,
) -> impl FnOnce(E) -> HarnessError {
    move |source| HarnessError::Data {
        context: context.into(),
        source: Box::new(source),
    }
}

type Result<T> = std::result::Result<T, HarnessError>;

pub struct World {
    // Dropped before `dir`: the disk is unmounted and the server stopped before their
    // folders are removed.
    disk: Option<SmallDisk>,
    server: Option<PrivateServer>,
    warehouse: PathBuf,
    /// TMPDIR of the steps (where key-order spill files go), when not the system's.
    tmpdir: Option<PathBuf>,
    /// The gs:// lake and BigQuery warehouse the steps use instead of the local lake
    /// folder and DuckDB file, on the emulators; the local folder stays the source of
    /// every delivery (and what the reference reads).
    cloud: Option<Cloud>,
    /// The run id the steps get (OTA_RUN_ID): each delivery starts a new run, and a
    /// re-run after a fault retries the same run, as an Airflow task retry does.
    run: std::cell::Cell<u32>,
    bin_dir: PathBuf,
    seed: u64,
    days: u32,
    rows_per_day: u64,
    dir: tempfile::TempDir,
    db: String,
    server_url: String,
    rt: tokio::runtime::Runtime,
    /// The export offset last seen: it may only move forward.
    offset: Option<(String, String)>,
}

const START: &str = "2024-01-01";

impl World {
    pub fn new(config: &ChaosConfig, tag: &str) -> Result<Self> {
        let dir = tempfile::Builder::new()
            .prefix(&format!("ota-chaos-{tag}-"))
            .tempdir()
            .map_err(io("temp dir"))?;
        std::fs::create_dir_all(dir.path().join("lake")).map_err(io("lake dir"))?;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(io("tokio runtime"))?;
        let world = World {
            disk: None,
            server: None,
            warehouse: dir.path().join("warehouse.duckdb"),
            tmpdir: None,
            cloud: None,
            run: std::cell::Cell::new(0),
            bin_dir: config.bin_dir.clone(),
            seed: config.seed,
            days: config.days.max(1),
            rows_per_day: config.rows_per_day,
            dir,
            db: format!("ota_chaos_{tag}_{}", std::process::id()),
            server_url: config.server_url.trim_end_matches('/').to_string(),
            rt,
            offset: None,
        };
        world.server(&format!("DROP DATABASE IF EXISTS `{}`", world.db))?;
        let mut world = world;
        if let Some(emulators) = &config.emulators {
            world.cloud = Some(Cloud::create(&world.rt, emulators, tag)?);
        }
        Ok(world)
    }

    fn lake(&self) -> PathBuf {
        self.dir.path().join("lake")
    }

    fn mysql_url(&self, db: &str) -> String {
        match self.server_url.split_once('?') {
            Some((base, query)) => format!("{}/{db}?{query}", base.trim_end_matches('/')),
            None => format!("{}/{db}", self.server_url),
        }
    }

    fn window(&self) -> Vec<String> {
        let end = chrono_day(START, self.days - 1);
        vec![
            "--start-date".into(),
            START.into(),
            "--end-date".into(),
            end,
        ]
    }

    /// A step on this world's lake, warehouse and database, over the window (export-mysql
    /// follows the change feed, whatever the window).
    fn step(&self, step: &str) -> Command {
        let window = if step == "export-mysql" {
            Vec::new()
        } else {
            self.window()
        };
        self.step_over(step, &window)
    }

    /// A step with these window arguments.
    fn step_over(&self, step: &str, window: &[String]) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(step));
        match &self.cloud {
            Some(cloud) => cmd
                .env("OTA_LAKE_URL", &cloud.lake_url)
                .env("OTA_WAREHOUSE_URL", &cloud.warehouse_url),
            None => cmd
                .env("OTA_LAKE_URL", format!("file://{}", self.lake().display()))
                .env(
                    "OTA_WAREHOUSE_URL",
                    format!("duckdb://{}", self.warehouse.display()),
                ),
        };
        cmd.env("OTA_MYSQL_URL", self.mysql_url(&self.db))
            .env("OTA_LOCK_TIMEOUT", "5")
            .env("RUST_LOG", "warn")
            .env_remove("OTA_REFERENCE_DATE")
            .env("OTA_RUN_ID", self.run_id())
            .args(window)
            .stdin(Stdio::null());
        if let Some(tmpdir) = &self.tmpdir {
            cmd.env("TMPDIR", tmpdir);
        }
        cmd
    }

    /// Moves this world's MySQL database to a server of its own (before `prepare`), so
    /// the server can be crashed and restarted.
    pub fn use_private_server(&mut self) -> Result<()> {
        let server = PrivateServer::start(self.dir.path())?;
        self.server_url = server.url();
        self.server = Some(server);
        Ok(())
    }

    /// Moves the DuckDB file, its temp dir and the steps' TMPDIR to a small disk of its
    /// own (before `prepare`).
    pub fn use_small_disk(&mut self) -> Result<()> {
        let disk = SmallDisk::mount(&self.dir.path().join("disk"), DISK_ROOM)?;
        let tmpdir = disk.path().join("tmp");
        std::fs::create_dir_all(&tmpdir).map_err(io("the small disk's tmp dir"))?;
        self.warehouse = disk.path().join("warehouse.duckdb");
        self.tmpdir = Some(tmpdir);
        self.disk = Some(disk);
        Ok(())
    }

    fn output(&self, mut cmd: Command, what: &str) -> Result<Output> {
        cmd.output().map_err(io(format!("running {what}")))
    }

    fn run_ok(&self, step: &str, allow: &[i32]) -> Result<()> {
        let out = self.output(self.step(step), step)?;
        let code = out.status.code().unwrap_or(-1);
        if code == 0 || allow.contains(&code) {
            Ok(())
        } else {
            Err(HarnessError::Step(format!(
                "{step} exited {code}: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            )))
        }
    }

    /// Generates the lake and runs the window once.
    pub fn prepare(&mut self) -> Result<()> {
        self.generate(self.seed, START, self.days)?;
        for step in STEPS {
            self.run_ok(step, &[])?;
        }
        self.offset = self.offset_now()?;
        Ok(())
    }

    fn run_id(&self) -> String {
        format!("chaos_{}_{}", std::process::id(), self.run.get())
    }

    /// Hands a file of the local lake to the steps' lake (uploads it on the emulators).
    fn deliver(&self, name: &str) -> Result<()> {
        let Some(cloud) = &self.cloud else {
            return Ok(());
        };
        use ota_lake::Lake;
        let lake = ota_lake::gcs::GcsSettings::from_lookup(|var| std::env::var(var).ok())
            .and_then(|settings| ota_lake::gcs::GcsLake::open(&cloud.lake_url, &settings))
            .map_err(data("opening the gs:// lake"))?;
        let local = self.lake().join(name);
        lake.put_file(name, &local)
            .map_err(data(format!("uploading {name}")))?;
        // The object's creation time is the version's ingestion time there: the local
        // copy takes it, so the reference orders versions as the warehouse does.
        let created = cloud.created_at(&self.rt, name)?;
        File::options()
            .write(true)
            .open(&local)
            .and_then(|f| f.set_modified(created))
            .map_err(io("setting an mtime"))?;
        Ok(())
    }

    fn generate(&self, seed: u64, start: &str, days: u32) -> Result<()> {
        self.run.set(self.run.get() + 1);
        let out = Command::new(self.bin_dir.join("ota-gen"))
            .args(["--seed", &seed.to_string(), "--start", start])
            .args(["--days", &days.to_string()])
            .args(["--rows-per-day", &self.rows_per_day.to_string(), "--out"])
            .arg(self.lake())
            .output()
            .map_err(io("running ota-gen"))?;
        if !out.status.success() {
            return Err(HarnessError::Step(format!(
                "ota-gen failed: {}",
                String::from_utf8_lossy(&out.stderr)
            )));
        }
        for day in 0..days {
            self.deliver(&day_file(&chrono_day(start, day)))?;
        }
        Ok(())
    }

    /// Re-delivers one day of the lake with other content (so every step has work).
    pub fn change_one_day(&self, i: u32) -> Result<()> {
        let day = chrono_day(START, i % self.days);
        self.generate(self.seed + 1000 + u64::from(i), &day, 1)
    }

    /// Runs the steps before `step`.
    pub fn run_before(&self, step: &str) -> Result<()> {
        for s in STEPS.iter().take_while(|s| **s != step) {
            self.run_ok(s, &[])?;
        }
        Ok(())
    }

    /// Runs the whole window after changing a day, timing `step`.
    pub fn timed_run_until(&mut self, step: &str) -> Result<Duration> {
        self.change_one_day(self.days)?;
        self.run_before(step)?;
        let started = Instant::now();
        self.run_ok(step, &[])?;
        let took = started.elapsed();
        for s in STEPS.iter().skip_while(|s| **s != step).skip(1) {
            self.run_ok(s, &[])?;
        }
        self.offset = self.offset_now()?;
        Ok(took)
    }

    /// Starts `step` and kills it (SIGKILL) after `after`, unless it ended before;
    /// says whether it was killed.
    pub fn kill_after(&self, step: &str, after: Duration) -> Result<bool> {
        let mut cmd = self.step(step);
        cmd.stdout(Stdio::null()).stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(io(format!("starting {step}")))?;
        let deadline = Instant::now() + after;
        while Instant::now() < deadline {
            if child.try_wait().map_err(io("waiting"))?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        child.kill().map_err(io(format!("killing {step}")))?;
        child.wait().map_err(io("reaping"))?;
        Ok(true)
    }

    /// Two runs of `step` at once: each finishes, or fails saying another run holds
    /// the lock; never both fail.
    pub fn overlap(&self, step: &str, outcome: &mut FaultOutcome) -> Result<()> {
        // Two runs (two DAG runs, say), so neither can take over the other's lease.
        let spawn = |run: &str| -> Result<Child> {
            let mut cmd = self.step(step);
            cmd.env("OTA_RUN_ID", format!("{}_{run}", self.run_id()))
                .stdout(Stdio::null())
                .stderr(Stdio::piped());
            cmd.spawn().map_err(io(format!("starting {step}")))
        };
        // Each run loads the set it staged itself, as each DAG run does.
        if step == "load-raw" {
            for run in ["a", "b"] {
                let mut stage = self.step("stage-files");
                stage
                    .env("OTA_RUN_ID", format!("{}_{run}", self.run_id()))
                    .stdout(Stdio::null())
                    .stderr(Stdio::null());
                let staged = stage.status().map_err(io("running stage-files"))?;
                if !staged.success() {
                    outcome
                        .problems
                        .push(format!("stage-files of overlapping run {run} failed"));
                }
            }
        }
        let (a, b) = (spawn("a")?, spawn("b")?);
        let outputs = [
            a.wait_with_output().map_err(io("waiting"))?,
            b.wait_with_output().map_err(io("waiting"))?,
        ];
        let ok = outputs.iter().filter(|o| o.status.success()).count();
        for o in outputs.iter().filter(|o| !o.status.success()) {
            let err = String::from_utf8_lossy(&o.stderr).to_lowercase();
            if !(err.contains("lock") || err.contains("another")) {
                outcome.problems.push(format!(
                    "{step} beside another failed without naming the lock: {}",
                    err.trim()
                ));
            }
        }
        if ok == 0 {
            outcome
                .problems
                .push(format!("both overlapping {step} runs failed"));
        }
        Ok(())
    }

    /// export-mysql through a proxy that cuts the connection after `after_bytes`; says
    /// whether the cut came before the export ended.
    pub fn export_through_cut(&self, after_bytes: u64) -> Result<bool> {
        let upstream = server_address(&self.server_url);
        let proxy = crate::proxy::CuttingProxy::start(upstream, after_bytes)
            .map_err(io("starting the proxy"))?;
        let url = format!(
            "mysql://{}@127.0.0.1:{}/{}?prefer_socket=false",
            server_user(&self.server_url),
            proxy.port,
            self.db
        );
        let mut cmd = self.step("export-mysql");
        cmd.env("OTA_MYSQL_URL", url)
            .env("OTA_MYSQL_TIMEOUT", "10")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let status = cmd.status().map_err(io("running export-mysql"))?;
        Ok(proxy.was_cut() && !status.success())
    }

    /// Runs the window with the small disk just `headroom` bytes above what is in use,
    /// then gives it room again; says whether a step failed. A step that fails must say
    /// that the disk is full, and must not panic.
    pub fn run_on_full_disk(&self, headroom: u64, outcome: &mut FaultOutcome) -> Result<bool> {
        let disk = self
            .disk
            .as_ref()
            .ok_or_else(|| HarnessError::Step("this world has no small disk".into()))?;
        disk.resize(disk.used()? + headroom)?;
        let mut failed = None;
        for step in STEPS {
            let out = self.output(self.step(step), step)?;
            if !out.status.success() {
                failed = Some((step, out));
                break;
            }
        }
        disk.resize(DISK_ROOM)?;
        let Some((step, out)) = failed else {
            return Ok(false);
        };
        let err = String::from_utf8_lossy(&out.stderr).to_lowercase();
        let names_disk = ["no space", "disk is full", "disk full", "out of space"]
            .iter()
            .any(|s| err.contains(s));
        if !names_disk || err.contains("panicked") || out.status.code() != Some(1) {
            outcome.problems.push(format!(
                "{step} on a full disk exited {:?} without saying so clearly: {}",
                out.status.code(),
                err.trim()
            ));
        }
        Ok(true)
    }

    /// Starts export-mysql and crashes and restarts the MySQL server after `after`,
    /// unless the export ended before; says whether the crash struck a running export.
    pub fn export_through_restart(&mut self, after: Duration) -> Result<bool> {
        let mut cmd = self.step("export-mysql");
        cmd.env("OTA_MYSQL_TIMEOUT", "10")
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let mut child = cmd.spawn().map_err(io("starting export-mysql"))?;
        let deadline = Instant::now() + after;
        while Instant::now() < deadline {
            if child.try_wait().map_err(io("waiting"))?.is_some() {
                return Ok(false);
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let server = self
            .server
            .as_mut()
            .ok_or_else(|| HarnessError::Step("this world has no private server".into()))?;
        let running = child.try_wait().map_err(io("waiting"))?.is_none();
        server.crash_and_restart()?;
        let status = child.wait().map_err(io("waiting on export-mysql"))?;
        Ok(running && !status.success())
    }

    /// Runs `cmd`; an exit other than `code` is a finding.
    fn expect_exit(
        &self,
        cmd: Command,
        what: &str,
        code: i32,
        found: &mut Vec<String>,
    ) -> Result<Output> {
        let out = self.output(cmd, what)?;
        if out.status.code() != Some(code) {
            found.push(format!(
                "{what} exited {:?}, expected {code}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        Ok(out)
    }

    /// The window's steps in order; load-raw may also exit with `load_allow`. Returns
    /// load-raw's summary, or None (a finding) when a step failed.
    fn run_window(
        &self,
        load_allow: &[i32],
        found: &mut Vec<String>,
    ) -> Result<Option<serde_json::Value>> {
        let mut load = None;
        for step in STEPS {
            let out = self.output(self.step(step), step)?;
            let code = out.status.code().unwrap_or(-1);
            let allowed = code == 0 || (step == "load-raw" && load_allow.contains(&code));
            if !allowed {
                found.push(format!(
                    "{step} exited {code}: {}",
                    String::from_utf8_lossy(&out.stderr).trim()
                ));
                return Ok(None);
            }
            if step == "load-raw" {
                load = Some(last_json(&out));
            }
        }
        Ok(load)
    }

    /// After a fault that struck `step`: `step` and the steps after it again in the same
    /// run (as Airflow retries a task, then runs its downstream), then [`Self::recover`].
    /// On BigQuery the retry also takes over the writer lease its killed try left.
    pub fn recover_from(&mut self, step: &str, outcome: &mut FaultOutcome) -> Result<bool> {
        for s in STEPS.iter().skip_while(|s| **s != step) {
            if let Err(e) = self.run_ok(s, &[]) {
                outcome.problems.push(format!("retry: {e}"));
                return Ok(false);
            }
        }
        self.recover(outcome)
    }

    /// After a fault: the window again, then the checks of [`Self::check`]; problems go
    /// into `outcome`, and the answer says whether there were none.
    pub fn recover(&mut self, outcome: &mut FaultOutcome) -> Result<bool> {
        let mut found = Vec::new();
        if self.run_window(&[], &mut found)?.is_some() {
            self.check(&mut found)?;
        }
        let clean = found.is_empty();
        outcome
            .problems
            .extend(found.into_iter().map(|f| format!("re-run: {f}")));
        Ok(clean)
    }

    /// `--reconcile` finds no drift, MySQL holds no event twice, the offset has not
    /// moved back.
    fn check(&mut self, found: &mut Vec<String>) -> Result<()> {
        let mut reconcile = self.step("export-mysql");
        reconcile.arg("--reconcile");
        let out = self.output(reconcile, "export-mysql --reconcile")?;
        if !out.status.success() || last_json(&out)["status"] != "ok" {
            found.push(format!("reconcile found drift: {}", last_line(&out)));
        }
        let served = self.served_rows()?;
        let duplicated = crate::reference::compare(&[], &served).duplicated;
        if duplicated > 0 {
            found.push(format!("{duplicated} events served twice in MySQL"));
        }
        let now = self.offset_now()?;
        if let (Some(was), Some(is)) = (&self.offset, &now)
            && is < was
        {
            found.push(format!("the offset moved back: {was:?} -> {is:?}"));
        }
        if now.is_some() {
            self.offset = now;
        }
        Ok(())
    }

    /// The lake as the reference reads it.
    fn reference(&self) -> Result<crate::reference::Reference> {
        let reference = crate::reference::Reference::over(&self.lake(), |file| {
            let modified = std::fs::metadata(file)?.modified()?;
            let since = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(std::io::Error::other)?;
            Ok(since.as_micros() as i64)
        })?;
        Ok(reference)
    }

    /// MySQL's serving table against the reference over the lake as it is.
    pub fn difference(&self) -> Result<crate::reference::Difference> {
        let expected = self.reference()?.served()?;
        Ok(crate::reference::compare(&expected, &self.served_rows()?))
    }

    /// Compares the serving table with the reference over the final lake: expected rows
    /// missing or different are lost, rows the lake does not call for are extra, events
    /// served twice are duplicated.
    pub fn finish(&self, outcome: &mut FaultOutcome) -> Result<()> {
        let difference = self.difference()?;
        outcome.lost_rows = difference.missing + difference.different;
        outcome.extra_rows = difference.extra;
        outcome.duplicated_rows = difference.duplicated;
        Ok(())
    }

    /// The serving table as the reference writes it (see `reference::SERVED_IN_MYSQL`).
    fn served_rows(&self) -> Result<Vec<crate::reference::ServedRow>> {
        let url = self.mysql_url(&self.db);
        let rows: Vec<mysql_async::Row> = self
            .rt
            .block_on(async move {
                let opts = mysql_async::Opts::from_url(&url).map_err(mysql_async::Error::from)?;
                let mut conn = mysql_async::Conn::new(opts).await?;
                let rows = conn.query(crate::reference::SERVED_IN_MYSQL).await;
                let _ = conn.disconnect().await;
                rows
            })
            .map_err(|source| HarnessError::Mysql {
                context: "reading the serving table".into(),
                source,
            })?;
        Ok(rows
            .into_iter()
            .map(|row| {
                row.unwrap()
                    .into_iter()
                    .map(|value| match value {
                        mysql_async::Value::NULL => None,
                        mysql_async::Value::Bytes(b) => {
                            Some(String::from_utf8_lossy(&b).into_owned())
                        }
                        other => Some(other.as_sql(true)),
                    })
                    .collect()
            })
            .collect())
    }

    /// Runs statements in this world's MySQL database.
    pub fn in_db(&self, sql: &str) -> Result<()> {
        let url = self.mysql_url(&self.db);
        let sql = sql.to_string();
        self.rt
            .block_on(async move {
                let opts = mysql_async::Opts::from_url(&url).map_err(mysql_async::Error::from)?;
                let mut conn = mysql_async::Conn::new(opts).await?;
                let done = conn.query_drop(sql).await;
                let _ = conn.disconnect().await;
                done
            })
            .map_err(|source| HarnessError::Mysql {
                context: "changing the serving table by hand".into(),
                source,
            })
    }

    fn offset_now(&self) -> Result<Option<(String, String)>> {
        let sql = format!(
            "SELECT CAST(changed_at AS CHAR), HEX(event_key) FROM `{}`.ota_pipeline_offsets \
             WHERE target_table = 'ota_events'",
            self.db
        );
        self.with_server("reading the offset", async move |c| {
            c.query_first(sql).await
        })
    }

    fn server(&self, sql: &str) -> Result<()> {
        let sql = sql.to_string();
        self.with_server("setting up", async move |c| c.query_drop(sql).await)
    }

    fn with_server<T>(
        &self,
        context: &str,
        f: impl AsyncFnOnce(&mut mysql_async::Conn) -> mysql_async::Result<T>,
    ) -> Result<T> {
        let url = self.server_url.clone();
        self.rt
            .block_on(async move {
                let opts = mysql_async::Opts::from_url(&url).map_err(mysql_async::Error::from)?;
                let mut conn = mysql_async::Conn::new(opts).await?;
                let value = f(&mut conn).await;
                let _ = conn.disconnect().await;
                value
            })
            .map_err(|source| HarnessError::Mysql {
                context: context.into(),
                source,
            })
    }
}

impl Drop for World {
    fn drop(&mut self) {
        let _ = self.server(&format!("DROP DATABASE IF EXISTS `{}`", self.db));
    }
}

/// The lake's file name of a `YYYY-MM-DD` day.
fn day_file(day: &str) -> String {
    format!("{}_OTA.parquet", day.replace('-', ""))
}

/// A bucket and a dataset of one world's own on the emulators.
struct Cloud {
    lake_url: String,
    warehouse_url: String,
    gcs_endpoint: String,
    bucket: String,
}

impl Cloud {
    fn create(
        rt: &tokio::runtime::Runtime,
        emulators: &crate::Emulators,
        tag: &str,
    ) -> Result<Self> {
        let id = format!("{tag}_{}", std::process::id());
        let bucket = format!("ota-chaos-{}", id.replace('_', "-"));
        let dataset = format!("ota_chaos_{id}");
        let project = &emulators.project;
        let http = reqwest::Client::new();
        rt.block_on(async {
            let bucket_made = http
                .post(format!("{}/storage/v1/b", emulators.gcs_endpoint))
                .json(&serde_json::json!({ "name": bucket }))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            let dataset_made = http
                .post(format!(
                    "{}/bigquery/v2/projects/{project}/datasets",
                    emulators.bq_endpoint
                ))
                .bearer_auth("emulator")
                .json(&serde_json::json!({
                    "datasetReference": { "projectId": project, "datasetId": dataset },
                    "location": "US"
                }))
                .send()
                .await
                .and_then(|r| r.error_for_status());
            bucket_made.and(dataset_made)
        })
        .map_err(data("creating a bucket and a dataset on the emulators"))?;
        Ok(Cloud {
            gcs_endpoint: emulators.gcs_endpoint.clone(),
            bucket: bucket.clone(),
            lake_url: format!("gs://{bucket}/daily"),
            // The emulator cannot create external tables over GCS URIs.
            warehouse_url: format!(
                "bigquery://{project}/{dataset}?staging=gs://{bucket}/staging&external_table=false"
            ),
        })
    }
}

impl Cloud {
    /// When the current generation of `daily/<name>` was created.
    fn created_at(
        &self,
        rt: &tokio::runtime::Runtime,
        name: &str,
    ) -> Result<std::time::SystemTime> {
        let url = format!(
            "{}/storage/v1/b/{}/o/daily%2F{name}",
            self.gcs_endpoint, self.bucket
        );
        let object: serde_json::Value = rt
            .block_on(async {
                reqwest::get(&url)
                    .await
                    .and_then(|r| r.error_for_status())?
                    .json()
                    .await
            })
            .map_err(data(format!("reading the metadata of {name}")))?;
        let created = object["timeCreated"]
            .as_str()
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .ok_or_else(|| HarnessError::Step(format!("{name} has no timeCreated: {object}")))?;
        Ok(std::time::UNIX_EPOCH
            + std::time::Duration::from_micros(created.timestamp_micros().max(0) as u64))
    }
}

/// `YYYY-MM-DD` `days` after `start`.
fn chrono_day(start: &str, days: u32) -> String {
    chrono::NaiveDate::parse_from_str(start, "%Y-%m-%d")
        .ok()
        .and_then(|d| d.checked_add_days(chrono::Days::new(u64::from(days))))
        .map_or_else(|| start.to_string(), |d| d.format("%Y-%m-%d").to_string())
}

/// `host:port` of a `mysql://user@host:port` URL.
fn server_address(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    let rest = rest.split(['/', '?']).next().unwrap_or(rest);
    let host = rest.rsplit_once('@').map_or(rest, |(_, h)| h);
    if host.contains(':') {
        host.to_string()
    } else {
        format!("{host}:3306")
    }
}

/// `user[:password]` of a `mysql://user@host` URL.
fn server_user(url: &str) -> String {
    let rest = url.split_once("://").map_or(url, |(_, r)| r);
    rest.rsplit_once('@').map_or("root", |(u, _)| u).to_string()
}

pub(crate) fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
    let file = File::open(path).map_err(io(format!("opening {}", path.display())))?;
    ParquetRecordBatchReaderBuilder::try_new(file)
        .map_err(data("reading Parquet"))?
        .build()
        .map_err(data("reading Parquet"))?
        .map(|b| b.map_err(data("reading Parquet")))
        .collect()
}

fn write_parquet(path: &Path, batches: &[RecordBatch]) -> Result<()> {
    let schema = batches
        .first()
        .map(|b| b.schema())
        .ok_or_else(|| HarnessError::Step("no batches to write".into()))?;
    let tmp = path.with_extension("tmp");
    let file = File::create(&tmp).map_err(io("creating a file"))?;
    let mut w = ArrowWriter::try_new(file, schema, None).map_err(data("writing Parquet"))?;
    for b in batches {
        w.write(b).map_err(data("writing Parquet"))?;
    }
    w.close().map_err(data("writing Parquet"))?;
    std::fs::rename(&tmp, path).map_err(io("renaming a file"))
}

/// The last line of a step's stdout, its JSON summary.
fn last_line(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .last()
        .unwrap_or_default()
        .to_string()
}

fn last_json(out: &Output) -> serde_json::Value {
    serde_json::from_str(&last_line(out)).unwrap_or_default()
}
