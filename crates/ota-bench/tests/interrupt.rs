//! A bench stopped while it settles sets the server back: a child process of this test
//! watches the signals as `ota-bench` does and settles against the real server
//! (`OTA_TEST_MYSQL_URL`, default `mysql://root@127.0.0.1:3306`), which cannot settle
//! because this test holds a read view open over fresh undo history. Once the child has
//! set `innodb_max_dirty_pages_pct` to 0 it gets SIGTERM; it must exit with 143 and leave
//! the setting as it was and no marker behind.
//!
//! No libtest harness: its threads would not block the signal and could take it.

use std::process::{Command, ExitCode, Stdio};
use std::time::{Duration, Instant};

use mysql_async::Conn;
use mysql_async::prelude::Queryable;
use ota_bench::settle::Settler;

const DATABASE: &str = "ota_bench_interrupt_test";
const CHILD_ENV: &str = "OTA_BENCH_INTERRUPT_TEST_WORK_DIR";

fn server_url() -> String {
    let url = std::env::var("OTA_TEST_MYSQL_URL")
        .unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into());
    ota_bench::with_database(&url, "").expect("url")
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
}

const TEST_NAME: &str = "a_stopped_settle_sets_the_server_back";

/// Speaks as much of libtest's command line as `cargo test` and nextest use: `--list`
/// (the test is not ignored), `--ignored` (then there is nothing to run), a name filter.
fn main() -> ExitCode {
    if let Some(work_dir) = std::env::var_os(CHILD_ENV) {
        return settle_until_stopped(work_dir.as_ref());
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |name: &str| args.iter().any(|a| a == name);
    let ignored_only = flag("--ignored");
    if flag("--list") {
        if !ignored_only {
            println!("{TEST_NAME}: test");
        }
        return ExitCode::SUCCESS;
    }
    let matches = |f: &str| {
        if flag("--exact") {
            f == TEST_NAME
        } else {
            TEST_NAME.contains(f)
        }
    };
    let (mut filters, mut skips) = (Vec::new(), Vec::new());
    let mut rest = args.iter();
    while let Some(arg) = rest.next() {
        match arg.as_str() {
            "--skip" => skips.extend(rest.next()),
            "--format" | "--test-threads" | "--color" | "--logfile" | "-Z" => {
                rest.next();
            }
            a if !a.starts_with('-') => filters.push(arg),
            _ => {}
        }
    }
    let selected = (filters.is_empty() || filters.iter().any(|f| matches(f)))
        && !skips.iter().any(|s| matches(s));
    if ignored_only || !selected {
        println!("running 0 tests");
        return ExitCode::SUCCESS;
    }
    println!("running 1 test");
    match stopped_settle_sets_the_server_back() {
        Ok(()) => {
            println!("test {TEST_NAME} ... ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            println!("test {TEST_NAME} ... FAILED: {e}");
            ExitCode::FAILURE
        }
    }
}

/// The child: what `ota-bench` does at its start, then a settle that cannot finish.
fn settle_until_stopped(work_dir: &std::path::Path) -> ExitCode {
    if let Err(e) = ota_bench::interrupt::watch() {
        eprintln!("child: {e}");
        return ExitCode::from(2);
    }
    let runtime = runtime();
    match Settler::new(&server_url(), work_dir).settle(&runtime) {
        // Not stopped: the parent sees 0, not 143.
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("child: {e}");
            ExitCode::from(3)
        }
    }
}

async fn pct(conn: &mut Conn) -> Result<f64, String> {
    conn.query_first::<f64, _>("SELECT @@GLOBAL.innodb_max_dirty_pages_pct + 0e0")
        .await
        .map_err(|e| e.to_string())?
        .ok_or_else(|| "no value".to_string())
}

fn stopped_settle_sets_the_server_back() -> Result<(), String> {
    let runtime = runtime();
    let url = server_url();
    let (mut check, mut reader, pct_before) = runtime.block_on(async {
        let connect = || async {
            ota_bench::loaders::connect(&url)
                .await
                .map_err(|e| e.to_string())
        };
        let mut check = connect().await?;
        let mut reader = connect().await?;
        let mut writer = connect().await?;
        let pct_before = pct(&mut check).await?;
        let setup = async {
            writer
                .query_drop(format!("DROP DATABASE IF EXISTS {DATABASE}"))
                .await?;
            writer
                .query_drop(format!("CREATE DATABASE {DATABASE}"))
                .await?;
            writer
                .query_drop(format!(
                    "CREATE TABLE {DATABASE}.t (id INT PRIMARY KEY, n INT) ENGINE=InnoDB"
                ))
                .await?;
            writer
                .query_drop(format!("INSERT INTO {DATABASE}.t VALUES (1, 0)"))
                .await?;
            // A read view older than the updates below: purge must keep their undo.
            reader
                .query_drop("START TRANSACTION WITH CONSISTENT SNAPSHOT")
                .await?;
            for _ in 0..64 {
                writer
                    .query_drop(format!("UPDATE {DATABASE}.t SET n = n + 1 WHERE id = 1"))
                    .await?;
            }
            Ok::<_, mysql_async::Error>(())
        };
        setup.await.map_err(|e| e.to_string())?;
        let _ = writer.disconnect().await;
        Ok::<_, String>((check, reader, pct_before))
    })?;
    if pct_before == 0.0 {
        return Err("innodb_max_dirty_pages_pct is 0 before the test: set it back first".into());
    }

    let work_dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let outcome = stop_a_settling_child(&runtime, &mut check, work_dir.path(), pct_before);

    // Whatever happened: the read view closed, the server's setting as it was, no table.
    runtime.block_on(async {
        let _ = reader.query_drop("ROLLBACK").await;
        let _ = check
            .exec_drop("SET GLOBAL innodb_max_dirty_pages_pct = ?", (pct_before,))
            .await;
        let _ = check
            .query_drop(format!("DROP DATABASE IF EXISTS {DATABASE}"))
            .await;
    });
    outcome
}

fn stop_a_settling_child(
    runtime: &tokio::runtime::Runtime,
    check: &mut Conn,
    work_dir: &std::path::Path,
    pct_before: f64,
) -> Result<(), String> {
    let exe = std::env::current_exe().map_err(|e| e.to_string())?;
    let mut child = Command::new(exe)
        .env(CHILD_ENV, work_dir)
        .stdin(Stdio::null())
        .spawn()
        .map_err(|e| e.to_string())?;
    let marker = work_dir.join(ota_bench::settle::MARKER_FILE);

    // Wait until the child holds the setting at 0, the old value in its marker.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        if marker.exists() && runtime.block_on(pct(check))? == 0.0 {
            break;
        }
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            return Err(format!("the child ended before it was stopped: {status}"));
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err("the child did not start settling within 30 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let marked = std::fs::read_to_string(&marker).map_err(|e| e.to_string())?;
    if marked.trim().parse::<f64>() != Ok(pct_before) {
        let _ = child.kill();
        return Err(format!("the marker holds {marked:?}, not {pct_before}"));
    }

    // SAFETY: kill has no memory preconditions; the pid is our unreaped child.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGTERM) };
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            return Err("the child did not stop within 30 s of SIGTERM".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    if status.code() != Some(128 + libc::SIGTERM) {
        return Err(format!(
            "the child should exit with 143 after setting the server back, not {status}"
        ));
    }
    let pct_after = runtime.block_on(pct(check))?;
    if pct_after != pct_before {
        return Err(format!(
            "innodb_max_dirty_pages_pct is {pct_after} after the stop, not {pct_before}"
        ));
    }
    if marker.exists() {
        return Err("the marker is left behind although the setting is back".into());
    }
    Ok(())
}
