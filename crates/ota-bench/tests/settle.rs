//! The bench's settling against the real server (`OTA_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306`): after a load has left pages dirty, settling sets the
//! server's `innodb_max_dirty_pages_pct` back to what it was and the rows are all there;
//! a value left behind by a stopped bench is set back by the next one.

use mysql_async::prelude::Queryable;
use ota_bench::settle::Settler;

const DATABASE: &str = "ota_bench_settle_test";

/// Both tests change the server's global setting: under `cargo test` (threads) they take
/// turns here; nextest runs them in one test group (`.config/nextest.toml`).
static SERVER_SETTING: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn take_turn() -> std::sync::MutexGuard<'static, ()> {
    SERVER_SETTING
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn server_url() -> String {
    std::env::var("OTA_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

/// A runtime, the server's URL without a database, and a connection to it.
fn connect() -> (tokio::runtime::Runtime, String, mysql_async::Conn) {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = ota_bench::with_database(&server_url(), "").expect("url");
    let conn = runtime
        .block_on(ota_bench::loaders::connect(&url))
        .expect("connect");
    (runtime, url, conn)
}

#[test]
fn settling_restores_the_server_setting_and_loses_nothing() {
    let _turn = take_turn();
    let (runtime, url, mut conn) = connect();
    let pct_before = read_pct(&runtime, &mut conn);
    // Dirty a few hundred pages: 4,096 rows of 2 KB.
    runtime
        .block_on(async {
            conn.query_drop(format!("DROP DATABASE IF EXISTS {DATABASE}"))
                .await?;
            conn.query_drop(format!("CREATE DATABASE {DATABASE}")).await?;
            conn.query_drop(format!(
                "CREATE TABLE {DATABASE}.t (id INT AUTO_INCREMENT PRIMARY KEY, pad VARCHAR(2000)) ENGINE=InnoDB"
            ))
            .await?;
            conn.query_drop(format!(
                "INSERT INTO {DATABASE}.t (pad) VALUES (REPEAT('x', 2000))"
            ))
            .await?;
            for _ in 0..12 {
                conn.query_drop(format!(
                    "INSERT INTO {DATABASE}.t (pad) SELECT pad FROM {DATABASE}.t"
                ))
                .await?;
            }
            Ok::<_, mysql_async::Error>(())
        })
        .expect("a table with rows");

    let work_dir = tempfile::tempdir().expect("work dir");
    let settler = Settler::new(&url, work_dir.path());
    settler.settle(&runtime).expect("settle");
    assert_eq!(settler.waited().1, 1);
    assert_eq!(
        std::fs::read_dir(work_dir.path())
            .expect("work dir")
            .count(),
        0,
        "no marker is left once the setting is back"
    );

    let (pct_after, rows): (f64, u64) = runtime
        .block_on(async {
            let pct: Option<f64> = conn
                .query_first("SELECT @@GLOBAL.innodb_max_dirty_pages_pct + 0e0")
                .await?;
            let rows: Option<u64> = conn
                .query_first(format!("SELECT COUNT(*) FROM {DATABASE}.t"))
                .await?;
            conn.query_drop(format!("DROP DATABASE {DATABASE}")).await?;
            Ok::<_, mysql_async::Error>((pct.unwrap_or(f64::NAN), rows.unwrap_or(0)))
        })
        .expect("read back");
    assert_eq!(pct_after, pct_before, "the server's setting is back");
    assert_eq!(rows, 4096, "settling loses nothing");
}

fn read_pct(runtime: &tokio::runtime::Runtime, conn: &mut mysql_async::Conn) -> f64 {
    runtime
        .block_on(conn.query_first::<f64, _>("SELECT @@GLOBAL.innodb_max_dirty_pages_pct + 0e0"))
        .expect("read setting")
        .expect("a value")
}

#[test]
fn a_value_left_by_a_stopped_bench_is_set_back_and_a_bad_marker_is_refused() {
    let _turn = take_turn();
    let (runtime, url, mut conn) = connect();
    let pct_before = read_pct(&runtime, &mut conn);
    let work_dir = tempfile::tempdir().expect("work dir");
    let marker = work_dir.path().join(ota_bench::settle::MARKER_FILE);
    let settler = Settler::new(&url, work_dir.path());

    // Nothing to do without a marker.
    assert_eq!(settler.recover(&runtime).expect("recover"), None);

    // A bench killed mid-settle: the server left at another value, the old one in the marker.
    let left_at = if pct_before == 75.0 { 74.0 } else { 75.0 };
    runtime
        .block_on(conn.exec_drop("SET GLOBAL innodb_max_dirty_pages_pct = ?", (left_at,)))
        .expect("change the setting");
    std::fs::write(&marker, format!("{pct_before}\n")).expect("marker");
    let recovered = settler.recover(&runtime);
    let pct_after = read_pct(&runtime, &mut conn);
    assert_eq!(recovered.expect("recover"), Some(pct_before));
    assert_eq!(pct_after, pct_before, "the server's setting is back");
    assert!(
        !marker.exists(),
        "the marker is gone once the setting is back"
    );

    // A marker that does not hold a number: refused, kept, and the server not touched.
    std::fs::write(&marker, "ninety\n").expect("marker");
    let err = settler
        .recover(&runtime)
        .expect_err("a bad marker is refused");
    assert!(err.to_string().contains("ninety"), "{err}");
    assert!(
        marker.exists(),
        "a bad marker is kept for the user to look at"
    );
    assert_eq!(read_pct(&runtime, &mut conn), pct_before);
}
