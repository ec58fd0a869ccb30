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

/// The hostile catalogue, one case per try: input planted in the lake, and operator
/// actions. Each case checks its own outcome before the day is healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// SQL- and LOAD DATA-shaped text in every string column: loads as it is.
    SqlShapedText,
    /// request_id as raw bytes, one of them not UTF-8: that row is rejected.
    NonUtf8Key,
    /// Epoch timestamps in milliseconds instead of nanoseconds: read as milliseconds.
    EpochMillis,
    /// Epoch timestamps in seconds instead of nanoseconds: read as seconds.
    EpochSeconds,
    /// A few rows 400 days from the file's day (a broken clock): those rows are rejected.
    FarFromFileDay,
    /// A loaded day re-delivered with as many rows, none with a usable timestamp: a
    /// shrink to nothing, quarantined; MySQL keeps the day.
    AllRejected,
    /// request_id as a struct, a type with no text form: every row rejected, quarantined
    /// as shrunk.
    WrongTypedKey,
    /// A day's file overwritten with bytes that are not Parquet: quarantined unreadable.
    CorruptFile,
    /// A loaded day re-delivered with no rows: quarantined as shrunk.
    EmptyRedelivery,
    /// A new, empty warehouse (a new URL, a rebuilt file) that loaded only the last day:
    /// its feed is refused, a full refresh holds the dates it does not know.
    FreshWarehouse,
    /// Rows edited by hand in MySQL: reconcile reports drift, a backfill repairs them.
    HandEdit,
    /// The serving table given an extra UNIQUE key: the export refuses to write.
    AlteredTable,
    /// Two runs alternating their tasks (a scheduled run and a backfill): all end well.
    InterleavedRuns,
    /// A MySQL password with characters URLs reserve: it works percent-encoded, and an
    /// unencoded URL is refused without showing it.
    ReservedPassword,
}

pub const HOSTILE_INPUTS: [Hostile; 14] = [
    Hostile::SqlShapedText,
    Hostile::NonUtf8Key,
    Hostile::EpochMillis,
    Hostile::EpochSeconds,
    Hostile::FarFromFileDay,
    Hostile::AllRejected,
    Hostile::WrongTypedKey,
    Hostile::CorruptFile,
    Hostile::EmptyRedelivery,
    Hostile::FreshWarehouse,
    Hostile::HandEdit,
    Hostile::AlteredTable,
    Hostile::InterleavedRuns,
    Hostile::ReservedPassword,
];

impl Hostile {
    /// The quarantine kind a planted file must get, or None when it must load.
    fn quarantine_kind(self) -> Option<&'static str> {
        match self {
            Hostile::AllRejected | Hostile::WrongTypedKey | Hostile::EmptyRedelivery => {
                Some("shrunk")
            }
            Hostile::CorruptFile => Some("unreadable"),
            _ => None,
        }
    }

    /// Whether the case is an operator's action rather than a file in the lake. These
    /// are tried on the embedded default: they act on MySQL and the warehouse's URL, the
    /// same on either backend.
    pub fn is_operator_action(self) -> bool {
        matches!(
            self,
            Hostile::FreshWarehouse
                | Hostile::HandEdit
                | Hostile::AlteredTable
                | Hostile::InterleavedRuns
                | Hostile::ReservedPassword
        )
    }
}

/// Distance of the far rows [`Hostile::FarFromFileDay`] plants, in days.
const FAR_DAYS: i64 = 400;
/// Rows [`Hostile::FarFromFileDay`] moves (under the 10% that would quarantine the file).
const FAR_ROWS: usize = 7;

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
        use ota_pipeline::lake::Lake;
        let lake = ota_pipeline::lake::gcs::GcsLake::open(&cloud.lake_url)
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

    /// Plants one hostile input in the lake (a fresh version of the day first, so every
    /// plant is a new delivery); returns the planted file's local path.
    fn plant(&self, hostile: Hostile, i: u32) -> Result<PathBuf> {
        let name = day_file(&chrono_day(START, i % self.days));
        let path = self.lake().join(&name);
        self.change_one_day(i)?;
        self.plant_in(&path, hostile)?;
        self.deliver(&name)?;
        Ok(path)
    }

    fn plant_in(&self, path: &Path, hostile: Hostile) -> Result<()> {
        // One batch, so what a plant does to "the first rows" it does once per file.
        let batches = read_parquet(path)?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| HarnessError::Step("an empty generated file".into()))?;
        let batches = vec![
            arrow::compute::concat_batches(&schema, &batches)
                .map_err(data("joining a file's batches"))?,
        ];
        let column = |name: &'static str, f: fn(&ArrayRef) -> Option<ArrayRef>| {
            map_columns(batches.clone(), move |n, col| {
                (n == name).then(|| f(col)).flatten()
            })
        };
        let planted = match hostile {
            Hostile::SqlShapedText => map_columns(batches.clone(), sql_shaped)?,
            Hostile::NonUtf8Key => column("request_id", non_utf8)?,
            Hostile::EpochMillis => column("timestamp", |c| scaled(c, 1_000_000))?,
            Hostile::EpochSeconds => column("timestamp", |c| scaled(c, 1_000_000_000))?,
            Hostile::FarFromFileDay => column("timestamp", far_from_day)?,
            Hostile::AllRejected => column("timestamp", unusable)?,
            Hostile::WrongTypedKey => column("request_id", |c| Some(as_struct(c)))?,
            Hostile::CorruptFile => {
                return std::fs::write(path, b"PAR1 this is not a parquet file PAR1")
                    .map_err(io("writing a corrupt file"));
            }
            Hostile::EmptyRedelivery => vec![RecordBatch::new_empty(schema)],
            other => {
                return Err(HarnessError::Step(format!(
                    "{other:?} is not planted in the lake"
                )));
            }
        };
        write_parquet(path, &planted)
    }

    /// Heals a planted file: the same day re-delivered with good content.
    pub fn heal(&self, i: u32) -> Result<()> {
        let day = chrono_day(START, i % self.days);
        self.generate(self.seed + 5000 + u64::from(i), &day, 1)
    }

    /// Tries one case of the hostile catalogue: it strikes, its own outcome is checked
    /// (what quarantined with which kind, which rows were rejected why, what MySQL
    /// serves), then the day is healed and the window recovers. Says whether all held.
    pub fn try_hostile(
        &mut self,
        hostile: Hostile,
        i: u32,
        outcome: &mut FaultOutcome,
    ) -> Result<bool> {
        let before = outcome.problems.len();
        let mut problem = |what: String| outcome.problems.push(format!("{hostile:?}: {what}"));
        let mut found = Vec::new();
        match hostile {
            Hostile::FreshWarehouse => self.fresh_warehouse(&mut found)?,
            Hostile::HandEdit => self.hand_edit(&mut found)?,
            Hostile::AlteredTable => self.altered_table(i, &mut found)?,
            Hostile::InterleavedRuns => self.interleaved_runs(i, &mut found)?,
            Hostile::ReservedPassword => self.reserved_password(i, &mut found)?,
            planted => self.planted_file(planted, i, &mut found)?,
        }
        found.into_iter().for_each(&mut problem);
        if !hostile.is_operator_action() {
            self.heal(i)?;
        }
        self.recover(outcome)?;
        let now = self.difference()?;
        if !now.none() {
            outcome.problems.push(format!(
                "{hostile:?}: after recovering, MySQL against the reference: {now}"
            ));
        }
        Ok(outcome.problems.len() == before)
    }

    /// A planted file: quarantined with the kind the case calls for and MySQL unchanged,
    /// or loaded with the rows the reference rejects rejected and MySQL equal to the
    /// reference.
    fn planted_file(&mut self, hostile: Hostile, i: u32, found: &mut Vec<String>) -> Result<()> {
        let before = self.served_rows()?;
        let file = self.plant(hostile, i)?;
        let Some(load) = self.run_window(&[3], found)? else {
            return Ok(());
        };
        self.check(found)?;
        let quarantined = load["files_quarantined"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match hostile.quarantine_kind() {
            Some(kind) => {
                let kinds: Vec<&str> = quarantined
                    .iter()
                    .filter_map(|q| q["kind"].as_str())
                    .collect();
                if kinds != [kind] {
                    found.push(format!("quarantined {kinds:?}, expected [{kind:?}]"));
                }
                let changed = crate::reference::compare(&before, &self.served_rows()?);
                if !changed.none() {
                    found.push(format!("MySQL changed for a refused day: {changed}"));
                }
            }
            None => {
                if !quarantined.is_empty() {
                    found.push(format!(
                        "quarantined a file that must load: {quarantined:?}"
                    ));
                }
                let reference = self.reference()?;
                let rejects = reference.rejects_of(&file)?;
                let expected: u64 = rejects.values().sum();
                let counted = load["counts"]["rejected"].as_u64().unwrap_or(u64::MAX);
                if counted != expected {
                    found.push(format!(
                        "load-raw rejected {counted} rows, the reference {expected} ({rejects:?})"
                    ));
                }
                let planted_reason = match hostile {
                    Hostile::NonUtf8Key => Some(("not_text", 1)),
                    Hostile::FarFromFileDay => Some(("far_from_file_day", FAR_ROWS as u64)),
                    _ => None,
                };
                if let Some((reason, n)) = planted_reason
                    && rejects.get(reason).copied() != Some(n)
                {
                    found.push(format!(
                        "the reference rejects {rejects:?}, expected {n} {reason}"
                    ));
                }
                let served = crate::reference::compare(&reference.served()?, &self.served_rows()?);
                if !served.none() {
                    found.push(format!("MySQL against the reference: {served}"));
                }
            }
        }
        Ok(())
    }

    /// A new warehouse that loaded only the last day: the export refuses its feed (exit
    /// 2), a full refresh holds every date it does not know (exit 3), MySQL unchanged;
    /// once it has loaded the window, a full refresh moves MySQL over.
    fn fresh_warehouse(&mut self, found: &mut Vec<String>) -> Result<()> {
        let before = self.served_rows()?;
        let aside = self.warehouse.with_extension("old.duckdb");
        std::fs::rename(&self.warehouse, &aside).map_err(io("moving the warehouse aside"))?;
        let wal = self.warehouse.with_extension("duckdb.wal");
        if wal.exists() {
            std::fs::rename(&wal, aside.with_extension("duckdb.wal"))
                .map_err(io("moving the warehouse's log aside"))?;
        }
        let last = chrono_day(START, self.days - 1);
        let last_day = [
            "--start-date".to_string(),
            last.clone(),
            "--end-date".into(),
            last.clone(),
        ];
        for step in ["stage-files", "load-raw", "dedup"] {
            self.expect_exit(self.step_over(step, &last_day), step, 0, found)?;
        }
        self.expect_exit(
            self.step("export-mysql"),
            "export-mysql onto a foreign feed",
            2,
            found,
        )?;
        let mut refresh = self.step("export-mysql");
        refresh.arg("--full-refresh");
        let out = self.expect_exit(refresh, "export-mysql --full-refresh", 3, found)?;
        // Every served date but the last day's own is held: one the new warehouse has no
        // row of, or of which it has only late events (a re-sync would delete most of it).
        let mut held: Vec<String> = last_json(&out)["held_dates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["event_date"].as_str().map(str::to_string))
            .collect();
        held.sort();
        let mut expected: Vec<String> = before.iter().filter_map(|r| r[0].clone()).collect();
        expected.sort();
        expected.dedup();
        expected.retain(|d| *d != last);
        if held != expected {
            found.push(format!(
                "--full-refresh held {held:?}, expected {expected:?}"
            ));
        }
        let changed = crate::reference::compare(&before, &self.served_rows()?);
        if !changed.none() {
            found.push(format!(
                "MySQL changed by a warehouse that knows one day: {changed}"
            ));
        }
        for step in ["stage-files", "load-raw", "dedup"] {
            self.expect_exit(self.step(step), step, 0, found)?;
        }
        let mut refresh = self.step("export-mysql");
        refresh.arg("--full-refresh");
        self.expect_exit(refresh, "export-mysql --full-refresh", 0, found)?;
        self.offset = self.offset_now()?;
        Ok(())
    }

    /// Five rows edited by hand: `--reconcile` reports drift (exit 1) on their dates, a
    /// backfill of those dates repairs them.
    fn hand_edit(&mut self, found: &mut Vec<String>) -> Result<()> {
        self.in_db(
            "UPDATE ota_events SET hotel_name = 'edited by hand' \
             ORDER BY event_date DESC, event_key LIMIT 5",
        )?;
        let mut reconcile = self.step("export-mysql");
        reconcile.arg("--reconcile");
        let out = self.expect_exit(reconcile, "export-mysql --reconcile", 1, found)?;
        let summary = last_json(&out);
        let mut drift: Vec<String> = summary["drift_dates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        drift.sort();
        let (Some(first), Some(last)) = (drift.first().cloned(), drift.last().cloned()) else {
            found.push(format!("reconcile after a hand edit: {}", last_line(&out)));
            return Ok(());
        };
        let dates = ["--start-date".to_string(), first, "--end-date".into(), last];
        self.expect_exit(
            self.step_over("export-mysql", &dates),
            "export-mysql with the drifted dates",
            0,
            found,
        )?;
        let now = self.difference()?;
        if !now.none() {
            found.push(format!(
                "the backfill left MySQL unlike the reference: {now}"
            ));
        }
        Ok(())
    }

    /// An extra UNIQUE key on the serving table: the export refuses (exit 2) naming it
    /// and writes nothing; without it, the export goes on.
    fn altered_table(&mut self, i: u32, found: &mut Vec<String>) -> Result<()> {
        self.change_one_day(i)?;
        self.run_before("export-mysql")?;
        let before = self.served_rows()?;
        self.in_db(
            "ALTER TABLE ota_events ADD UNIQUE KEY chaos_extra (event_key, request_id(40))",
        )?;
        let out = self.expect_exit(
            self.step("export-mysql"),
            "export-mysql into an altered table",
            2,
            found,
        )?;
        if !String::from_utf8_lossy(&out.stderr).contains("chaos_extra") {
            found.push(format!(
                "the refusal does not name the extra key: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let changed = crate::reference::compare(&before, &self.served_rows()?);
        if !changed.none() {
            found.push(format!("an altered table was written to: {changed}"));
        }
        self.in_db("ALTER TABLE ota_events DROP KEY chaos_extra")?;
        Ok(())
    }

    /// Two runs alternating their tasks, each with its own staged set: every task exits
    /// 0 and the reconcile between finds pending changes, never drift.
    fn interleaved_runs(&mut self, i: u32, found: &mut Vec<String>) -> Result<()> {
        let ids = [
            ("a", format!("{}_a", self.run_id())),
            ("b", format!("{}_b", self.run_id())),
        ];
        let run = |name: &str, step: &str| {
            let mut cmd = self.step(step);
            if let Some((_, id)) = ids.iter().find(|(n, _)| *n == name) {
                cmd.env("OTA_RUN_ID", id);
            }
            cmd
        };
        self.change_one_day(i)?;
        self.expect_exit(run("a", "stage-files"), "stage-files of run a", 0, found)?;
        self.change_one_day(i + 1)?;
        self.expect_exit(run("b", "stage-files"), "stage-files of run b", 0, found)?;
        for step in ["load-raw", "dedup", "export-mysql"] {
            for name in ["a", "b"] {
                self.expect_exit(run(name, step), &format!("{step} of run {name}"), 0, found)?;
            }
            if step == "dedup" {
                let mut reconcile = run("a", "export-mysql");
                reconcile.arg("--reconcile");
                let out = self.expect_exit(reconcile, "reconcile between the runs", 0, found)?;
                if last_json(&out)["status"] != "ok" {
                    found.push(format!("reconcile between the runs: {}", last_line(&out)));
                }
            }
        }
        Ok(())
    }

    /// A MySQL user whose password holds characters URLs reserve: percent-encoded it
    /// works; written as it is, the URL is refused and the password shows nowhere.
    fn reserved_password(&mut self, i: u32, found: &mut Vec<String>) -> Result<()> {
        const PASSWORD: &str = "p@ss:w/rd?#%41";
        let user = format!("chaos_pw_{}", std::process::id());
        self.server(&format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"))?;
        self.server(&format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'"
        ))?;
        self.server(&format!(
            "GRANT ALL ON `{}`.* TO '{user}'@'127.0.0.1'",
            self.db
        ))?;
        self.change_one_day(i)?;
        self.run_before("export-mysql")?;
        let address = server_address(&self.server_url);
        let url = |password: &str| {
            format!(
                "mysql://{user}:{password}@{address}/{}?prefer_socket=false",
                self.db
            )
        };
        let mut raw = self.step("export-mysql");
        raw.env("OTA_MYSQL_URL", url(PASSWORD));
        let out = self.expect_exit(raw, "export-mysql with an unencoded password", 2, found)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if said.contains("ss:w/rd") {
            found.push("an unencoded password was printed".into());
        }
        let mut encoded = self.step("export-mysql");
        encoded.env("OTA_MYSQL_URL", url(&percent_encoded(PASSWORD)));
        let out = self.expect_exit(
            encoded,
            "export-mysql with a percent-encoded password",
            0,
            found,
        )?;
        if String::from_utf8_lossy(&out.stderr).contains("ss:w/rd") {
            found.push("the password was printed".into());
        }
        self.server(&format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"))?;
        Ok(())
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
        crate::reference::Reference::over(&self.lake(), |file| {
            let modified = std::fs::metadata(file)?.modified()?;
            let since = modified
                .duration_since(std::time::UNIX_EPOCH)
                .map_err(std::io::Error::other)?;
            Ok(since.as_micros() as i64)
        })
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

/// Every byte but letters and digits as %XX.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A few timestamps moved [`FAR_DAYS`] days away from the file's day.
fn far_from_day(column: &ArrayRef) -> Option<ArrayRef> {
    let ns = column.as_primitive_opt::<Int64Type>()?;
    let shift = FAR_DAYS * 86_400_000_000_000;
    let mut moved = 0;
    Some(Arc::new(
        ns.iter()
            .map(|v| {
                v.map(|v| {
                    if moved < FAR_ROWS && v > 0 {
                        moved += 1;
                        v - shift
                    } else {
                        v
                    }
                })
            })
            .collect::<Int64Array>(),
    ))
}

/// Every timestamp a value that is a time in no unit.
fn unusable(column: &ArrayRef) -> Option<ArrayRef> {
    Some(Arc::new(Int64Array::from(vec![Some(5_i64); column.len()])))
}
