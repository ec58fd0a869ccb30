//! Test harness: a temporary lake and warehouse, a fresh database on the real MySQL or
//! MariaDB server (`OTA_TEST_MYSQL_URL`, default mysql://root@127.0.0.1:3306), and helpers
//! to run the step binaries as a user would.
#![allow(dead_code)]

use std::collections::HashMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int64Type;
use mysql_async::prelude::Queryable;
use parquet::arrow::ArrowWriter;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;
use serde_json::Value;

pub const BINS: [(&str, &str); 5] = [
    ("stage-files", env!("CARGO_BIN_EXE_stage-files")),
    ("load-raw", env!("CARGO_BIN_EXE_load-raw")),
    ("dedup", env!("CARGO_BIN_EXE_dedup")),
    ("export-mysql", env!("CARGO_BIN_EXE_export-mysql")),
    ("ota-gen", env!("CARGO_BIN_EXE_ota-gen")),
];

pub fn bin(name: &str) -> &'static str {
    BINS.iter()
        .find(|(n, _)| *n == name)
        .map(|(_, p)| *p)
        .expect("known binary")
}

/// What a binary printed and returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    /// The JSON summary: the last line of stdout.
    pub fn summary(&self) -> Value {
        let last = self.stdout.lines().last().unwrap_or_default();
        serde_json::from_str(last).unwrap_or_else(|e| {
            panic!(
                "last stdout line is not JSON ({e}): {last:?}\nstderr: {}",
                self.stderr
            )
        })
    }
    pub fn ok(self) -> Self {
        assert_eq!(
            self.code, 0,
            "exit code\nstdout: {}\nstderr: {}",
            self.stdout, self.stderr
        );
        self
    }
}

impl From<Output> for Run {
    fn from(o: Output) -> Self {
        Run {
            code: o.status.code().unwrap_or(-1),
            stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
        }
    }
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// One isolated pipeline: its own lake folder, warehouse file and MySQL database.
pub struct Env {
    pub dir: tempfile::TempDir,
    pub lake: PathBuf,
    pub warehouse: PathBuf,
    pub db: String,
    pub mysql_url: String,
    server_url: String,
    pub rt: tokio::runtime::Runtime,
    lake_url: String,
    warehouse_url: String,
}

/// The URL of database `db` on the server at `server` (which may carry `?socket=...`).
pub fn database_url(server: &str, db: &str) -> String {
    match server.split_once('?') {
        Some((base, query)) => format!("{}/{db}?{query}", base.trim_end_matches('/')),
        None => format!("{}/{db}", server.trim_end_matches('/')),
    }
}

pub fn server_url() -> String {
    std::env::var("OTA_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// `host:port` of the test server's TCP address (the one a user or a proxy connects to).
pub fn server_address() -> String {
    let url = server_url();
    let rest = url.split_once("://").map_or(url.as_str(), |(_, r)| r);
    let rest = rest.rsplit_once('@').map_or(rest, |(_, r)| r);
    let host_port = rest.split(['/', '?']).next().unwrap_or_default();
    match host_port {
        "" | "localhost" => "127.0.0.1:3306".to_string(),
        h if h.contains(':') => h.replace("localhost", "127.0.0.1"),
        h => format!("{h}:3306"),
    }
}

impl Env {
    pub fn new() -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let lake = dir.path().join("lake");
        std::fs::create_dir_all(&lake).expect("lake dir");
        let warehouse = dir.path().join("warehouse.duckdb");
        let db = format!(
            "ota_t{}_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst),
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.subsec_micros())
                .unwrap_or(0)
        );
        let server_url = server_url();
        let mysql_url = database_url(&server_url, &db);
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        Env {
            lake_url: format!("file://{}", lake.display()),
            warehouse_url: format!("duckdb://{}", warehouse.display()),
            dir,
            lake,
            warehouse,
            db,
            mysql_url,
            server_url,
            rt,
        }
    }

    /// The same, with another lake and warehouse (the cloud backends on emulators).
    pub fn with_backends(lake_url: String, warehouse_url: String) -> Self {
        let mut env = Env::new();
        env.lake_url = lake_url;
        env.warehouse_url = warehouse_url;
        env
    }

    pub fn lake_url(&self) -> String {
        self.lake_url.clone()
    }
    pub fn warehouse_url(&self) -> String {
        self.warehouse_url.clone()
    }

    /// Runs a step binary with this environment's settings.
    pub fn run(&self, name: &str, args: &[&str]) -> Run {
        self.run_with(name, args, &[])
    }

    /// The same, with more environment variables.
    pub fn run_with(&self, name: &str, args: &[&str], vars: &[(&str, &str)]) -> Run {
        let mut cmd = Command::new(bin(name));
        cmd.envs(vars.iter().copied());
        cmd.args(args)
            .env("OTA_LAKE_URL", self.lake_url())
            .env("OTA_WAREHOUSE_URL", self.warehouse_url())
            .env("OTA_MYSQL_URL", &self.mysql_url)
            .env("RUST_LOG", "info")
            .env_remove("OTA_REFERENCE_DATE");
        cmd.output().expect("run binary").into()
    }

    /// Generates daily files into the lake.
    pub fn generate(&self, start: &str, days: u32, rows: u64) {
        Command::new(bin("ota-gen"))
            .args([
                "--seed",
                "7",
                "--start",
                start,
                "--days",
                &days.to_string(),
                "--rows-per-day",
                &rows.to_string(),
                "--out",
            ])
            .arg(&self.lake)
            .output()
            .map(Run::from)
            .expect("ota-gen")
            .ok();
    }

    /// The four steps over a window given by flags; returns their summaries.
    pub fn pipeline(&self, window: &[&str], export_args: &[&str]) -> Vec<Value> {
        let mut out = Vec::new();
        for step in ["stage-files", "load-raw", "dedup"] {
            out.push(self.run(step, window).ok().summary());
        }
        let mut args: Vec<&str> = window.to_vec();
        args.extend_from_slice(export_args);
        out.push(self.run("export-mysql", &args).ok().summary());
        out
    }

    pub fn mysql<T>(&self, f: impl AsyncFnOnce(&mut mysql_async::Conn) -> T) -> T {
        self.rt.block_on(async {
            let mut conn =
                mysql_async::Conn::new(mysql_async::Opts::from_url(&self.mysql_url).expect("url"))
                    .await
                    .expect("connect to MySQL");
            conn.query_drop("SET time_zone = '+00:00'")
                .await
                .expect("tz");
            let v = f(&mut conn).await;
            let _ = conn.disconnect().await;
            v
        })
    }

    pub fn query<T: mysql_async::prelude::FromRow + Send + 'static>(&self, sql: &str) -> Vec<T> {
        let sql = sql.to_string();
        self.mysql(async move |c| c.query(sql).await.expect("query"))
    }

    pub fn count(&self) -> u64 {
        self.query::<u64>("SELECT COUNT(*) FROM ota_events")[0]
    }

    /// Rows, sum of row_hash and sum of event_key: equal content gives equal figures.
    pub fn table_checksum(&self) -> (u64, String, String) {
        self.query::<(u64, String, String)>(
            "SELECT COUNT(*), CAST(COALESCE(SUM(CAST(CONV(HEX(LEFT(row_hash, 8)), 16, 10) AS UNSIGNED)), 0) AS CHAR), \
             CAST(COALESCE(SUM(CAST(CONV(HEX(LEFT(event_key, 8)), 16, 10) AS UNSIGNED)), 0) AS CHAR) FROM ota_events",
        )[0]
        .clone()
    }

    pub fn offset(&self) -> Option<(String, String)> {
        self.query::<(String, String)>(
            "SELECT CAST(changed_at AS CHAR), HEX(event_key) FROM ota_pipeline_offsets WHERE target_table = 'ota_events'",
        )
        .into_iter()
        .next()
    }

    pub fn file(&self, day: &str) -> PathBuf {
        self.lake
            .join(format!("{}_OTA.parquet", day.replace('-', "")))
    }
}

impl Drop for Env {
    fn drop(&mut self) {
        let url = self.server_url.clone();
        let db = self.db.clone();
        let _ = self.rt.block_on(async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url)?).await?;
            c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
                .await?;
            c.disconnect().await
        });
    }
}

/// Runs statements on the server without a database (server-wide settings).
pub fn server_query(sql: &str) -> Vec<String> {
    let sql = sql.to_string();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        let mut c =
            mysql_async::Conn::new(mysql_async::Opts::from_url(&server_url()).expect("url"))
                .await
                .expect("connect");
        let rows: Vec<Option<String>> = c.query(sql).await.expect("query");
        let _ = c.disconnect().await;
        rows.into_iter().map(Option::unwrap_or_default).collect()
    })
}

/// Reads every batch of a Parquet file.
pub fn read_parquet(path: &Path) -> Vec<RecordBatch> {
    let f = File::open(path).expect("open parquet");
    ParquetRecordBatchReaderBuilder::try_new(f)
        .expect("parquet")
        .build()
        .expect("reader")
        .map(|b| b.expect("batch"))
        .collect()
}

/// Writes batches as a Parquet file (replacing it; the new mtime makes it a re-delivery).
pub fn write_parquet(path: &Path, batches: &[RecordBatch]) {
    let tmp = path.with_extension("tmp");
    let f = File::create(&tmp).expect("create");
    let mut w = ArrowWriter::try_new(f, batches[0].schema(), None).expect("writer");
    for b in batches {
        w.write(b).expect("write");
    }
    w.close().expect("close");
    std::fs::rename(&tmp, path).expect("rename");
}

/// One source row as text (timestamp as its int64), by column name.
pub type SourceRow = HashMap<String, Option<String>>;

pub fn rows_of(path: &Path) -> Vec<SourceRow> {
    let mut out = Vec::new();
    for b in read_parquet(path) {
        let schema = b.schema();
        for i in 0..b.num_rows() {
            let mut row = SourceRow::new();
            for (f, col) in schema.fields().iter().zip(b.columns()) {
                let v = if col.is_null(i) {
                    None
                } else if let Some(s) = col.as_string_opt::<i32>() {
                    Some(s.value(i).to_string())
                } else {
                    Some(col.as_primitive::<Int64Type>().value(i).to_string())
                };
                row.insert(f.name().clone(), v);
            }
            out.push(row);
        }
    }
    out
}

/// Modification time of a file in UTC microseconds (its ingested_at).
pub fn mtime_micros(path: &Path) -> i64 {
    std::fs::metadata(path)
        .and_then(|m| m.modified())
        .map(|t| {
            t.duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_micros() as i64)
                .unwrap_or(0)
        })
        .expect("mtime")
}

/// Every batch of a file with its `timestamp` column rebuilt by `f` (which may change
/// its type).
pub fn with_timestamps(
    batches: Vec<arrow::array::RecordBatch>,
    f: impl Fn(&arrow::array::ArrayRef) -> arrow::array::ArrayRef,
) -> Vec<arrow::array::RecordBatch> {
    with_column(batches, "timestamp", f)
}

/// Every batch of a file with its column `name` rebuilt by `f` (which may change its type).
pub fn with_column(
    batches: Vec<arrow::array::RecordBatch>,
    name: &str,
    f: impl Fn(&arrow::array::ArrayRef) -> arrow::array::ArrayRef,
) -> Vec<arrow::array::RecordBatch> {
    use arrow::datatypes::{Field, Schema};
    batches
        .into_iter()
        .map(|b| {
            let idx = b.schema().index_of(name).expect("column");
            let mut columns = b.columns().to_vec();
            columns[idx] = f(&columns[idx]);
            let fields: Vec<Field> = b
                .schema()
                .fields()
                .iter()
                .zip(&columns)
                .map(|(field, column)| Field::new(field.name(), column.data_type().clone(), true))
                .collect();
            arrow::array::RecordBatch::try_new(std::sync::Arc::new(Schema::new(fields)), columns)
                .expect("batch")
        })
        .collect()
}

/// The int64 nanoseconds of the case data divided down to another unit.
pub fn nanos_divided_by(by: i64) -> impl Fn(&arrow::array::ArrayRef) -> arrow::array::ArrayRef {
    use arrow::array::{AsArray, Int64Array};
    use arrow::datatypes::Int64Type;
    move |column| {
        let ns = column.as_primitive::<Int64Type>();
        std::sync::Arc::new(ns.iter().map(|v| v.map(|v| v / by)).collect::<Int64Array>())
    }
}

pub fn replace_file(path: &std::path::Path, batches: &[arrow::array::RecordBatch]) {
    std::thread::sleep(std::time::Duration::from_millis(20));
    write_parquet(path, batches);
}

/// The `files_quarantined` entries of a load-raw summary: (file name, kind).
pub fn quarantined(run: &Run) -> Vec<(String, String)> {
    run.summary()["files_quarantined"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|q| {
            let uri = q["uri"].as_str().unwrap_or_default();
            let name = uri.rsplit('/').next().unwrap_or_default().to_string();
            (name, q["kind"].as_str().unwrap_or_default().to_string())
        })
        .collect()
}
