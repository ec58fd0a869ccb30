//! `make bench`: how fast the pipeline moves rows into MySQL compared with what the server
//! itself can take, and what every step costs in time and memory.
//!
//! Each repetition, in this order (so that noise spreads over every contender):
//! 1. the pipeline from scratch (stage-files, load-raw, dedup, export-mysql into an empty
//!    table) — its export is "ours, empty table";
//! 2. export-mysql again with its offset reset, into the full table ("ours, re-run":
//!    every row an update);
//! 3. the limit: `LOAD DATA LOCAL INFILE` of the same rows from a prepared file into an
//!    empty copy of the table;
//! 4. the naive loader into an empty copy, then again into the full copy;
//! 5. a no-op re-run of the four steps over the same window.
//!
//! Then the steady state: a daily run that adds one day to 3, and to 30, days of history.
//!
//! Every timed run starts on a settled machine ([`settle`]): what a run leaves for the
//! server to do in the background is done before the next one starts, not charged to it.
//! Stopped by a signal, the bench sets the server back first ([`interrupt`]).

pub mod child;
pub mod interrupt;
pub mod loaders;
pub mod report;
pub mod settle;

use std::path::{Path, PathBuf};

use mysql_async::prelude::Queryable;
use ota_mysql::load_data::OnDuplicate;
use serde_json::json;

use child::{StepRun, Steps};
use report::{Line, Sample, median, print_table, push};
use settle::Settler;

#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("{step} failed: {detail}")]
    Step { step: String, detail: String },
    #[error("MySQL: {0}")]
    Mysql(String),
    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Pipeline(#[from] ota_core::PipelineError),
    #[error("{0}")]
    Config(String),
}

impl BenchError {
    pub fn io(path: &Path, source: std::io::Error) -> Self {
        BenchError::Io {
            path: path.to_path_buf(),
            source,
        }
    }
}

#[derive(Debug, Clone)]
pub struct BenchConfig {
    /// The release step binaries and ota-gen.
    pub bin_dir: PathBuf,
    /// Generated lakes, warehouses, the limit file and the steps' logs.
    pub work_dir: PathBuf,
    /// The server to measure; the bench works in its own `database` there.
    pub mysql_url: String,
    pub database: String,
    pub days: u32,
    pub rows_per_day: u64,
    pub repeat: usize,
    /// Rows per day of the steady-state scenario; 0 skips it.
    pub steady_rows_per_day: u64,
}

const TABLE: &str = "ota_events";
const LIMIT_TABLE: &str = "bench_limit";
const NAIVE_TABLE: &str = "bench_naive";
const START: &str = "2024-01-01";
const STEADY_DAYS_AFTER: u32 = 3;
/// Lines of the export table that the ratios pair up.
const LIMIT: &str = "limit: LOAD DATA, empty table";
const OURS_EMPTY: &str = "ours: export-mysql, empty table";
const OURS_FULL: &str = "ours: export-mysql, full table";
const STEP_NAMES: [&str; 4] = ["stage-files", "load-raw", "dedup", "export-mysql"];

/// `mysql://u:p@h:3306/db?x` with its database replaced.
pub fn with_database(url: &str, database: &str) -> Result<String, BenchError> {
    let (scheme, rest) = url
        .split_once("://")
        .ok_or_else(|| BenchError::Config(format!("not a URL: {url}")))?;
    let (authority_and_path, query) = match rest.split_once('?') {
        Some((a, q)) => (a, Some(q)),
        None => (rest, None),
    };
    let authority = authority_and_path
        .split_once('/')
        .map_or(authority_and_path, |(a, _)| a);
    Ok(match query {
        Some(q) => format!("{scheme}://{authority}/{database}?{q}"),
        None => format!("{scheme}://{authority}/{database}"),
    })
}

fn day(offset: u32) -> String {
    let start = parse_start(START);
    start
        .checked_add_days(chrono::Days::new(u64::from(offset)))
        .unwrap_or(start)
        .to_string()
}

fn parse_start(s: &str) -> chrono::NaiveDate {
    chrono::NaiveDate::parse_from_str(s, "%Y-%m-%d").unwrap_or_default()
}

fn window_args(first: u32, last: u32) -> Vec<String> {
    vec![
        "--start-date".into(),
        day(first),
        "--end-date".into(),
        day(last),
    ]
}

/// One lake + warehouse + MySQL database the steps run against.
struct Scenario {
    steps: Steps,
    warehouse_url: String,
    warehouse_path: PathBuf,
    mysql_url: String,
    database: String,
}

impl Scenario {
    fn new(config: &BenchConfig, name: &str, lake: &Path) -> Result<Self, BenchError> {
        let mysql_url = with_database(&config.mysql_url, &config.database)?;
        let warehouse_path = config.work_dir.join(format!("{name}.duckdb"));
        let warehouse_url = format!("duckdb://{}", warehouse_path.display());
        let env = vec![
            ("OTA_LAKE_URL".into(), format!("file://{}", lake.display())),
            ("OTA_WAREHOUSE_URL".into(), warehouse_url.clone()),
            ("OTA_MYSQL_URL".into(), mysql_url.clone()),
            ("OTA_MYSQL_TABLE".into(), TABLE.into()),
        ];
        Ok(Scenario {
            steps: Steps {
                bin_dir: config.bin_dir.clone(),
                env,
                log_dir: config.work_dir.join("logs"),
            },
            warehouse_url,
            warehouse_path,
            mysql_url,
            database: config.database.clone(),
        })
    }

    /// An empty warehouse and an empty database.
    fn reset(&self, runtime: &tokio::runtime::Runtime, server_url: &str) -> Result<(), BenchError> {
        for suffix in ["", ".wal"] {
            let path = PathBuf::from(format!("{}{suffix}", self.warehouse_path.display()));
            if path.exists() {
                std::fs::remove_file(&path).map_err(|e| BenchError::io(&path, e))?;
            }
        }
        let database = self.database.clone();
        runtime.block_on(async {
            let mut conn = loaders::connect(server_url).await?;
            conn.query_drop(format!("DROP DATABASE IF EXISTS `{database}`"))
                .await
                .map_err(|e| BenchError::Mysql(format!("dropping {database}: {e}")))?;
            conn.disconnect()
                .await
                .map_err(|e| BenchError::Mysql(e.to_string()))
        })
    }

    /// The four steps over a window (export incremental, as scheduled runs do), each
    /// started on a settled machine.
    fn pipeline(
        &self,
        quiet: &Quiet<'_>,
        first: u32,
        last: u32,
    ) -> Result<Vec<StepRun>, BenchError> {
        let window = window_args(first, last);
        let mut runs = Vec::new();
        for step in STEP_NAMES {
            let args = if step == "export-mysql" {
                Vec::new()
            } else {
                window.clone()
            };
            quiet.settle()?;
            runs.push(self.steps.run(step, &args)?);
        }
        Ok(runs)
    }
}

/// Settles the machine before a timed run (see [`settle`]).
struct Quiet<'a> {
    settler: &'a Settler,
    runtime: &'a tokio::runtime::Runtime,
}

impl Quiet<'_> {
    fn settle(&self) -> Result<(), BenchError> {
        self.settler.settle(self.runtime)
    }
}

/// Generates `days` daily files of `rows_per_day` rows once; later runs reuse them.
fn lake(config: &BenchConfig, days: u32, rows_per_day: u64) -> Result<PathBuf, BenchError> {
    let dir = config.work_dir.join(format!("lake-{days}x{rows_per_day}"));
    let done = dir.join(".complete");
    if done.exists() {
        return Ok(dir);
    }
    eprintln!(
        "generating {days} days x {rows_per_day} rows into {}",
        dir.display()
    );
    let steps = Steps {
        bin_dir: config.bin_dir.clone(),
        env: Vec::new(),
        log_dir: config.work_dir.join("logs"),
    };
    let args: Vec<String> = [
        "--seed",
        "42",
        "--start",
        START,
        "--days",
        &days.to_string(),
        "--rows-per-day",
        &rows_per_day.to_string(),
        "--out",
        &dir.display().to_string(),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    steps.run("ota-gen", &args)?;
    std::fs::write(&done, b"").map_err(|e| BenchError::io(&done, e))?;
    Ok(dir)
}

struct ServerInfo {
    version: String,
    buffer_pool_mb: u64,
    flush_at_commit: String,
    local_infile: String,
    log_bin: String,
}

async fn server_info(url: &str) -> Result<ServerInfo, BenchError> {
    let mut conn = loaders::connect(url).await?;
    let row: Option<(String, u64, String, String, String)> = conn
        .query_first(
            "SELECT VERSION(), @@innodb_buffer_pool_size, CAST(@@innodb_flush_log_at_trx_commit AS CHAR), \
             CAST(@@local_infile AS CHAR), CAST(@@log_bin AS CHAR)",
        )
        .await
        .map_err(|e| BenchError::Mysql(format!("reading server settings: {e}")))?;
    let _ = conn.disconnect().await;
    let (version, pool, flush, infile, log_bin) =
        row.ok_or_else(|| BenchError::Mysql("no server settings".into()))?;
    Ok(ServerInfo {
        version,
        buffer_pool_mb: pool / (1 << 20),
        flush_at_commit: flush,
        local_infile: infile,
        log_bin,
    })
}

/// CPU counters at the start of an in-process measurement.
struct CpuMark {
    own: f64,
    server: Option<f64>,
}

impl CpuMark {
    fn now() -> Self {
        CpuMark {
            own: child::own_cpu_seconds(),
            server: child::server_cpu_seconds(),
        }
    }

    fn sample(&self, rows: u64, seconds: f64) -> Sample {
        Sample {
            rows,
            seconds,
            peak_rss_mb: None,
            cpu_seconds: child::own_cpu_seconds() - self.own,
            server_cpu_seconds: child::server_cpu_since(self.server),
        }
    }
}

/// The ratio of two lines' rates in each repetition (`other`'s seconds over `ours`'),
/// for the report: how far the ratio of medians moves with the machine's noise.
fn paired_ratios(lines: &[Line], other: &str, ours: &str) -> String {
    let seconds = |name: &str| {
        lines
            .iter()
            .find(|l| l.name == name)
            .map_or(&[][..], |l| l.seconds.as_slice())
    };
    let ratios: Vec<String> = seconds(other)
        .iter()
        .zip(seconds(ours))
        .map(|(other, ours)| format!("{:.2}", other / ours))
        .collect();
    ratios.join(" ")
}

fn seconds_of(lines: &[Line], name: &str) -> f64 {
    lines
        .iter()
        .find(|l| l.name == name)
        .map_or(f64::NAN, Line::median_seconds)
}

/// Runs the benchmark, printing its table; returns the JSON object of its last line.
pub fn run(config: &BenchConfig) -> Result<serde_json::Value, BenchError> {
    if config.repeat == 0 || config.days == 0 || config.rows_per_day == 0 {
        return Err(BenchError::Config(
            "days, rows per day and repeat must be at least 1".into(),
        ));
    }
    ota_core::contract::validate_identifier("bench database", &config.database)?;
    std::fs::create_dir_all(&config.work_dir).map_err(|e| BenchError::io(&config.work_dir, e))?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| BenchError::io(Path::new("tokio runtime"), e))?;
    // No database: the bench drops and creates its own.
    let server_url = with_database(&config.mysql_url, "")?;
    let info = runtime.block_on(server_info(&server_url))?;
    let settler = Settler::new(&server_url, &config.work_dir);
    settler.recover(&runtime)?;
    let quiet = Quiet {
        settler: &settler,
        runtime: &runtime,
    };
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "server: {} | innodb_buffer_pool_size {} MiB | innodb_flush_log_at_trx_commit {} | local_infile {} | log_bin {} | cores {cores}",
        info.version, info.buffer_pool_mb, info.flush_at_commit, info.local_infile, info.log_bin
    );
    println!(
        "data: {} days x {} rows | {} repetitions | work dir {}",
        config.days,
        config.rows_per_day,
        config.repeat,
        config.work_dir.display()
    );

    let main_lake = lake(config, config.days, config.rows_per_day)?;
    let scenario = Scenario::new(config, "bench", &main_lake)?;
    let limit_file = config.work_dir.join("limit.tsv");
    let mut steps: Vec<Line> = Vec::new();
    let mut exports: Vec<Line> = Vec::new();
    let mut noop: Vec<f64> = Vec::new();
    let mut noop_steps: Vec<Line> = Vec::new();
    let mut peak_rss: f64 = 0.0;
    let mut rows = 0u64;
    let input_rows = u64::from(config.days) * config.rows_per_day;

    for rep in 0..config.repeat {
        eprintln!("repetition {} of {}", rep + 1, config.repeat);
        scenario.reset(&runtime, &server_url)?;
        let runs = scenario.pipeline(&quiet, 0, config.days - 1)?;
        for run in &runs {
            peak_rss = peak_rss.max(run.peak_rss_mb);
            let step_rows = if run.step == "stage-files" {
                input_rows
            } else {
                run.count("rows_read")
            };
            push(&mut steps, &run.step, Sample::of_step(run, step_rows));
        }
        let export = runs
            .last()
            .ok_or_else(|| BenchError::Config("no export run".into()))?;
        rows = export.count("rows_read");
        if rep == 0 {
            let written = loaders::write_limit_file(&scenario.warehouse_url, &limit_file)?;
            if written != rows {
                return Err(BenchError::Config(format!(
                    "the limit file holds {written} rows, the export wrote {rows}"
                )));
            }
        }
        push(&mut exports, OURS_EMPTY, Sample::of_step(export, rows));

        // Ours again into the full table: forget the offset, so every row comes again.
        runtime.block_on(async {
            let mut conn = loaders::connect(&scenario.mysql_url).await?;
            conn.exec_drop(
                "DELETE FROM ota_pipeline_offsets WHERE target_table = ?",
                (TABLE,),
            )
            .await
            .map_err(|e| BenchError::Mysql(format!("resetting the offset: {e}")))
        })?;
        quiet.settle()?;
        let again = scenario.steps.run("export-mysql", &[])?;
        peak_rss = peak_rss.max(again.peak_rss_mb);
        push(
            &mut exports,
            OURS_FULL,
            Sample::of_step(&again, again.count("rows_read")),
        );

        let mut conn = runtime.block_on(async {
            let mut conn = loaders::connect(&scenario.mysql_url).await?;
            loaders::empty_copy(&mut conn, TABLE, LIMIT_TABLE).await?;
            Ok::<_, BenchError>(conn)
        })?;
        for (name, on_duplicate) in [
            (LIMIT, OnDuplicate::Fail),
            // The same file again: the server's own cost of replacing every row.
            ("limit: LOAD DATA REPLACE, full table", OnDuplicate::Replace),
        ] {
            quiet.settle()?;
            let mark = CpuMark::now();
            let seconds = runtime.block_on(loaders::load_limit(
                &mut conn,
                LIMIT_TABLE,
                &limit_file,
                on_duplicate,
            ))?;
            push(&mut exports, name, mark.sample(rows, seconds));
        }
        runtime.block_on(async {
            conn.query_drop(format!("DROP TABLE `{LIMIT_TABLE}`"))
                .await
                .map_err(|e| BenchError::Mysql(e.to_string()))?;
            loaders::empty_copy(&mut conn, TABLE, NAIVE_TABLE).await
        })?;
        for name in [
            "naive: executemany, empty table",
            "naive: executemany, full table",
        ] {
            quiet.settle()?;
            let mark = CpuMark::now();
            let (seconds, naive_rows) =
                loaders::load_naive(&runtime, &mut conn, &scenario.warehouse_url, NAIVE_TABLE)?;
            push(&mut exports, name, mark.sample(naive_rows, seconds));
        }
        runtime.block_on(async {
            conn.query_drop(format!("DROP TABLE `{NAIVE_TABLE}`"))
                .await
                .map_err(|e| BenchError::Mysql(e.to_string()))?;
            conn.disconnect()
                .await
                .map_err(|e| BenchError::Mysql(e.to_string()))
        })?;

        let reruns = scenario.pipeline(&quiet, 0, config.days - 1)?;
        noop.push(reruns.iter().map(|r| r.seconds).sum());
        for run in &reruns {
            push(
                &mut noop_steps,
                &run.step,
                Sample::of_step(run, run.count("rows_read")),
            );
        }
    }

    print_table("pipeline, from scratch (median of the repetitions)", &steps);
    print_table(
        "export into MySQL, same rows, same table definition",
        &exports,
    );
    print_table("no-op re-run of the same window", &noop_steps);
    let pipeline_seconds: f64 = STEP_NAMES.iter().map(|s| seconds_of(&steps, s)).sum();
    let limit = seconds_of(&exports, LIMIT);
    let ours_empty = seconds_of(&exports, OURS_EMPTY);
    let ours_full = seconds_of(&exports, OURS_FULL);
    let replace = seconds_of(&exports, "limit: LOAD DATA REPLACE, full table");
    let naive_empty = seconds_of(&exports, "naive: executemany, empty table");
    let naive_full = seconds_of(&exports, "naive: executemany, full table");
    let noop_seconds = median(&noop);
    println!("\nratios (rate of ours / rate of the other; medians)");
    println!(
        "  export, empty table / limit        {:>6.2}   (target >= 0.9; per repetition {})",
        limit / ours_empty,
        paired_ratios(&exports, LIMIT, OURS_EMPTY)
    );
    println!(
        "  export, full table / limit         {:>6.2}   (target >= 0.8; per repetition {})",
        limit / ours_full,
        paired_ratios(&exports, LIMIT, OURS_FULL)
    );
    println!(
        "  LOAD DATA REPLACE / limit          {:>6.2}   (the most the full table allows)",
        limit / replace
    );
    println!(
        "  export, full table / REPLACE       {:>6.2}",
        replace / ours_full
    );
    println!(
        "  export / naive, empty table        {:>6.2}   (target >= 4)",
        naive_empty / ours_empty
    );
    println!(
        "  export / naive, full table         {:>6.2}   (target >= 4)",
        naive_full / ours_full
    );
    println!(
        "  whole pipeline / limit             {:>6.2}   (target >= 0.5; {pipeline_seconds:.2} s for the four steps)",
        limit / pipeline_seconds
    );
    println!("  no-op re-run of the window         {noop_seconds:>6.2} s (target < 2)");

    let steady = if config.steady_rows_per_day > 0 {
        let (three, thirty, rss) = steady_state(config, &quiet, &server_url)?;
        peak_rss = peak_rss.max(rss);
        println!(
            "  daily run, 30 / 3 days of history  {:>6.2}   (target < 1.3; {thirty:.2} s vs {three:.2} s at {} rows a day)",
            thirty / three,
            config.steady_rows_per_day
        );
        Some(thirty / three)
    } else {
        None
    };
    println!(
        "  peak RSS of any step               {peak_rss:>6.0} MiB (target < 512 at 10 M rows)"
    );
    let (settled_seconds, settles) = settler.waited();
    println!(
        "\nbefore each of the {settles} timed runs the machine settled (sync; the server's dirty pages written, purge done): {settled_seconds:.0} s in all"
    );

    Ok(json!({
        "export_vs_limit": round(limit / ours_empty),
        "rerun_vs_limit": round(limit / ours_full),
        "export_vs_naive": round((naive_empty / ours_empty).min(naive_full / ours_full)),
        "pipeline_vs_limit": round(limit / pipeline_seconds),
        "steady_30_vs_3": steady.map(round),
        "noop_seconds": round(noop_seconds),
        "peak_rss_mb": peak_rss.round(),
        "rows": rows,
    }))
}

fn round(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

/// Median seconds of a daily run (four steps, one new day) after 3 and after 30 days of
/// history, and the peak RSS seen.
fn steady_state(
    config: &BenchConfig,
    quiet: &Quiet<'_>,
    server_url: &str,
) -> Result<(f64, f64, f64), BenchError> {
    let history = [3u32, 30];
    let lake_dir = lake(
        config,
        history[1] + STEADY_DAYS_AFTER,
        config.steady_rows_per_day,
    )?;
    let mut medians = Vec::new();
    let mut rss: f64 = 0.0;
    for days in history {
        eprintln!("steady state after {days} days of history");
        let scenario = Scenario::new(config, &format!("steady-{days}"), &lake_dir)?;
        scenario.reset(quiet.runtime, server_url)?;
        scenario.pipeline(quiet, 0, days - 1)?;
        let mut daily = Vec::new();
        let mut lines: Vec<Line> = Vec::new();
        for new_day in days..days + STEADY_DAYS_AFTER {
            let runs = scenario.pipeline(quiet, new_day, new_day)?;
            rss = runs.iter().map(|r| r.peak_rss_mb).fold(rss, f64::max);
            daily.push(runs.iter().map(|r| r.seconds).sum::<f64>());
            for run in &runs {
                push(
                    &mut lines,
                    &run.step,
                    Sample::of_step(run, run.count("rows_read")),
                );
            }
        }
        print_table(
            &format!(
                "daily run after {days} days of history ({} rows a day)",
                config.steady_rows_per_day
            ),
            &lines,
        );
        medians.push(median(&daily));
        let _ = std::fs::remove_file(&scenario.warehouse_path);
    }
    Ok((medians[0], medians[1], rss))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn replaces_the_database_of_a_url() {
        assert_eq!(
            with_database("mysql://root@127.0.0.1:3306/ota", "ota_bench").unwrap(),
            "mysql://root@127.0.0.1:3306/ota_bench"
        );
        assert_eq!(
            with_database("mysql://u:p@h/db?socket=/run/x.sock", "b").unwrap(),
            "mysql://u:p@h/b?socket=/run/x.sock"
        );
        assert_eq!(with_database("mysql://h", "b").unwrap(), "mysql://h/b");
        assert!(with_database("nonsense", "b").is_err());
    }
}
