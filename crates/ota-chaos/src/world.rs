//! One fault's world: a lake folder, a DuckDB warehouse and a MySQL database of its own,
//! the step binaries run against them, and the checks after each fault.

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};
use mysql_async::prelude::Queryable;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use crate::disk::SmallDisk;
use crate::server::PrivateServer;
use crate::{ChaosConfig, FaultOutcome, STEPS};

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
    #[error("{context}: {source}")]
    Data {
        context: String,
        source: Box<dyn std::error::Error + Send + Sync>,
    },
}

fn io(context: impl Into<String>) -> impl FnOnce(std::io::Error) -> HarnessError {
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

/// Hostile input the catalogue plants, one kind per try.
#[derive(Debug, Clone, Copy)]
pub enum Hostile {
    /// SQL- and LOAD DATA-shaped text in every string column.
    SqlShapedText,
    /// request_id as raw bytes, one of them not UTF-8.
    NonUtf8Key,
    /// Epoch timestamps in milliseconds instead of nanoseconds.
    EpochMillis,
    /// Epoch timestamps in seconds instead of nanoseconds.
    EpochSeconds,
    /// request_id as a struct, a type with no text form: every row of the day is
    /// rejected, which re-delivers a loaded day as empty (refused as shrunk).
    WrongTypedKey,
    /// A day's file overwritten with bytes that are not Parquet (quarantined).
    CorruptFile,
    /// A loaded day re-delivered with no rows (refused as shrunk).
    EmptyRedelivery,
}

pub const HOSTILE_INPUTS: [Hostile; 7] = [
    Hostile::SqlShapedText,
    Hostile::NonUtf8Key,
    Hostile::EpochMillis,
    Hostile::EpochSeconds,
    Hostile::WrongTypedKey,
    Hostile::CorruptFile,
    Hostile::EmptyRedelivery,
];

/// Values that break naive SQL or LOAD DATA encoding.
const SQL_SHAPED: [&str; 12] = [
    "'; DROP TABLE ota_events; --",
    "\\N",
    "NULL",
    "a\tb\nc\\d",
    "\"quoted\" and 'single'",
    "`tick`",
    "%_ LIKE",
    "é中文🙂",
    "",
    " ",
    "x' OR '1'='1",
    "\r\n\\",
];

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
    /// every delivery (and of the clean run).
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
        world.server(&format!("DROP DATABASE IF EXISTS `{}_ref`", world.db))?;
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

    fn command(&self, step: &str, lake: &Path, warehouse: &Path, db: &str) -> Command {
        let mut cmd = Command::new(self.bin_dir.join(step));
        cmd.env("OTA_LAKE_URL", format!("file://{}", lake.display()))
            .env(
                "OTA_WAREHOUSE_URL",
                format!("duckdb://{}", warehouse.display()),
            )
            .env("OTA_MYSQL_URL", self.mysql_url(db))
            .env("OTA_LOCK_TIMEOUT", "5")
            .env("RUST_LOG", "warn")
            .env_remove("OTA_REFERENCE_DATE");
        // export-mysql follows the change feed, whatever the window.
        if step != "export-mysql" {
            cmd.args(self.window());
        }
        cmd
    }

    fn step(&self, step: &str) -> Command {
        let mut cmd = self.command(step, &self.lake(), &self.warehouse, &self.db);
        if let Some(tmpdir) = &self.tmpdir {
            cmd.env("TMPDIR", tmpdir);
        }
        if let Some(cloud) = &self.cloud {
            cmd.env("OTA_LAKE_URL", &cloud.lake_url)
                .env("OTA_WAREHOUSE_URL", &cloud.warehouse_url);
        }
        cmd.env("OTA_RUN_ID", self.run_id());
        cmd.stdin(Stdio::null());
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
        use ota_pipeline::lake::Lake;
        let lake = ota_pipeline::lake::gcs::GcsLake::open(&cloud.lake_url)
            .map_err(data("opening the gs:// lake"))?;
        lake.put_file(name, &self.lake().join(name))
            .map_err(data(format!("uploading {name}")))?;
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

    /// Plants one hostile input in the lake.
    pub fn plant(&self, hostile: Hostile, i: u32) -> Result<bool> {
        let name = day_file(&chrono_day(START, i % self.days));
        let path = self.lake().join(&name);
        // A fresh version of the day first, so every plant is a new delivery.
        self.change_one_day(i)?;
        let quarantined = self.plant_in(&path, hostile)?;
        self.deliver(&name)?;
        Ok(quarantined)
    }

    fn plant_in(&self, path: &Path, hostile: Hostile) -> Result<bool> {
        let batches = read_parquet(path)?;
        match hostile {
            Hostile::SqlShapedText => write_parquet(path, &map_columns(batches, sql_shaped)?)?,
            Hostile::NonUtf8Key => write_parquet(
                path,
                &map_columns(batches, |name, col| {
                    (name == "request_id").then(|| non_utf8(col)).flatten()
                })?,
            )?,
            Hostile::EpochMillis => write_parquet(
                path,
                &map_columns(batches, |name, col| {
                    (name == "timestamp")
                        .then(|| scaled(col, 1_000_000))
                        .flatten()
                })?,
            )?,
            Hostile::EpochSeconds => write_parquet(
                path,
                &map_columns(batches, |name, col| {
                    (name == "timestamp")
                        .then(|| scaled(col, 1_000_000_000))
                        .flatten()
                })?,
            )?,
            Hostile::WrongTypedKey => {
                write_parquet(
                    path,
                    &map_columns(batches, |name, col| {
                        (name == "request_id").then(|| as_struct(col))
                    })?,
                )?;
                return Ok(true);
            }
            Hostile::CorruptFile => {
                std::fs::write(path, b"PAR1 this is not a parquet file PAR1")
                    .map_err(io("writing a corrupt file"))?;
                return Ok(true);
            }
            Hostile::EmptyRedelivery => {
                let schema = batches
                    .first()
                    .map(|b| b.schema())
                    .ok_or_else(|| HarnessError::Step("an empty generated file".into()))?;
                write_parquet(path, &[RecordBatch::new_empty(schema)])?;
                return Ok(true);
            }
        }
        Ok(false)
    }

    /// Heals a planted file: the same day re-delivered with good content.
    pub fn heal(&self, i: u32) -> Result<()> {
        let day = chrono_day(START, i % self.days);
        self.generate(self.seed + 5000 + u64::from(i), &day, 1)
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
        self.recover(outcome, false)
    }

    /// After a fault: the window again, then `--reconcile`, the duplicate-key and the
    /// offset checks; problems go into `outcome`, and the answer says whether there were
    /// none. `partial_ok` lets load-raw report quarantined files (exit 3).
    pub fn recover(&mut self, outcome: &mut FaultOutcome, partial_ok: bool) -> Result<bool> {
        let before = outcome.problems.len();
        let allow: &[i32] = if partial_ok { &[3] } else { &[] };
        for step in STEPS {
            let allowed = if step == "load-raw" { allow } else { &[] };
            if let Err(e) = self.run_ok(step, allowed) {
                outcome.problems.push(format!("re-run: {e}"));
                return Ok(false);
            }
        }
        let mut reconcile = self.step("export-mysql");
        reconcile.arg("--reconcile");
        let out = self.output(reconcile, "export-mysql --reconcile")?;
        let stdout = String::from_utf8_lossy(&out.stdout);
        let last = stdout.lines().last().unwrap_or_default();
        if !out.status.success() || !last.contains("\"status\":\"ok\"") {
            outcome
                .problems
                .push(format!("reconcile found drift: {last}"));
        }
        let dupes = self.duplicate_keys(&self.db)?;
        if dupes > 0 {
            outcome
                .problems
                .push(format!("{dupes} duplicate keys in MySQL"));
        }
        let now = self.offset_now()?;
        if let (Some(was), Some(is)) = (&self.offset, &now)
            && is < was
        {
            outcome
                .problems
                .push(format!("the offset moved back: {was:?} -> {is:?}"));
        }
        if now.is_some() {
            self.offset = now;
        }
        Ok(outcome.problems.len() == before)
    }

    /// Compares the serving table with a clean run over a copy of the final lake.
    pub fn finish(&self, outcome: &mut FaultOutcome) -> Result<()> {
        let clean = self.dir.path().join("clean");
        let clean_lake = clean.join("lake");
        std::fs::create_dir_all(&clean_lake).map_err(io("clean lake"))?;
        for entry in std::fs::read_dir(self.lake()).map_err(io("reading the lake"))? {
            let entry = entry.map_err(io("reading the lake"))?;
            // The copy keeps the file's mtime: it is the version's ingestion time, which
            // decides between two versions of one event.
            let target = clean_lake.join(entry.file_name());
            std::fs::copy(entry.path(), &target).map_err(io("copying the lake"))?;
            let modified = entry
                .metadata()
                .and_then(|m| m.modified())
                .map_err(io("reading an mtime"))?;
            File::options()
                .write(true)
                .open(&target)
                .and_then(|f| f.set_modified(modified))
                .map_err(io("setting an mtime"))?;
        }
        let reference = format!("{}_ref", self.db);
        for step in STEPS {
            let cmd = self.command(
                step,
                &clean_lake,
                &clean.join("warehouse.duckdb"),
                &reference,
            );
            let out = self.output(cmd, step)?;
            if !matches!(out.status.code(), Some(0 | 3)) {
                return Err(HarnessError::Step(format!(
                    "the clean run's {step} failed: {}",
                    String::from_utf8_lossy(&out.stderr)
                )));
            }
        }
        let lost: u64 = self.scalar(&format!(
            "SELECT COUNT(*) FROM `{reference}`.ota_events r LEFT JOIN `{db}`.ota_events c \
             ON c.event_date = r.event_date AND c.event_key = r.event_key AND c.row_hash = r.row_hash \
             WHERE c.event_key IS NULL",
            db = self.db
        ))?;
        let extra: u64 = self.scalar(&format!(
            "SELECT COUNT(*) FROM `{db}`.ota_events c LEFT JOIN `{reference}`.ota_events r \
             ON r.event_date = c.event_date AND r.event_key = c.event_key WHERE r.event_key IS NULL",
            db = self.db
        ))?;
        outcome.lost_rows = lost;
        outcome.duplicated_rows = extra + self.duplicate_keys(&self.db)?;
        Ok(())
    }

    fn duplicate_keys(&self, db: &str) -> Result<u64> {
        self.scalar(&format!(
            "SELECT COUNT(*) - COUNT(DISTINCT event_key) FROM `{db}`.ota_events"
        ))
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

    fn scalar(&self, sql: &str) -> Result<u64> {
        let sql = sql.to_string();
        let value: Option<i64> =
            self.with_server("counting rows", async move |c| c.query_first(sql).await)?;
        Ok(value.unwrap_or(0).max(0) as u64)
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
        for db in [self.db.clone(), format!("{}_ref", self.db)] {
            let _ = self.server(&format!("DROP DATABASE IF EXISTS `{db}`"));
        }
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
            lake_url: format!("gs://{bucket}/daily"),
            // The emulator cannot create external tables over GCS URIs.
            warehouse_url: format!(
                "bigquery://{project}/{dataset}?staging=gs://{bucket}/staging&external_table=false"
            ),
        })
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

fn read_parquet(path: &Path) -> Result<Vec<RecordBatch>> {
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

/// Every batch with the columns `f` returns a replacement for replaced (types may change).
fn map_columns(
    batches: Vec<RecordBatch>,
    f: impl Fn(&str, &ArrayRef) -> Option<ArrayRef>,
) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|b| {
            let schema = b.schema();
            let mut fields = Vec::new();
            let mut columns = Vec::new();
            for (field, column) in schema.fields().iter().zip(b.columns()) {
                let column = f(field.name(), column).unwrap_or_else(|| column.clone());
                fields.push(Field::new(field.name(), column.data_type().clone(), true));
                columns.push(column);
            }
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(data("rebuilding a batch"))
        })
        .collect()
}

/// A text column with SQL-shaped values in its first rows (request_id stays unique).
fn sql_shaped(name: &str, column: &ArrayRef) -> Option<ArrayRef> {
    if column.data_type() != &DataType::Utf8 {
        return None;
    }
    let text = column.as_string::<i32>();
    let values: StringArray = (0..text.len())
        .map(|row| {
            if row >= 60 {
                return text.is_valid(row).then(|| text.value(row).to_string());
            }
            let shaped = SQL_SHAPED[row % SQL_SHAPED.len()];
            Some(if name == "request_id" {
                format!("{shaped}#{row}")
            } else {
                shaped.to_string()
            })
        })
        .collect();
    Some(Arc::new(values))
}

/// request_id as raw bytes, the first value not UTF-8.
fn non_utf8(column: &ArrayRef) -> Option<ArrayRef> {
    let text = column.as_string_opt::<i32>()?;
    let values: BinaryArray = (0..text.len())
        .map(|row| {
            text.is_valid(row).then(|| {
                let mut bytes = text.value(row).as_bytes().to_vec();
                if row == 0 {
                    bytes.push(0xff);
                }
                bytes
            })
        })
        .collect();
    Some(Arc::new(values))
}

/// int64 epoch nanoseconds divided by `by` (milliseconds, seconds).
fn scaled(column: &ArrayRef, by: i64) -> Option<ArrayRef> {
    let ns = column.as_primitive_opt::<Int64Type>()?;
    Some(Arc::new(
        ns.iter().map(|v| v.map(|v| v / by)).collect::<Int64Array>(),
    ))
}

/// A column wrapped in a one-field struct.
fn as_struct(column: &ArrayRef) -> ArrayRef {
    let field = Arc::new(Field::new("value", column.data_type().clone(), true));
    Arc::new(StructArray::from(vec![(field, column.clone())]))
}
