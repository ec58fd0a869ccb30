//! The bench's settling against the real server (`OTA_TEST_MYSQL_URL`, default
//! `mysql://root@127.0.0.1:3306`): after a load has left pages dirty, settling sets the
//! server's `innodb_max_dirty_pages_pct` back to what it was and the rows are all there.

use mysql_async::prelude::Queryable;
use ota_bench::settle::Settler;

const DATABASE: &str = "ota_bench_settle_test";

fn server_url() -> String {
    std::env::var("OTA_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

#[test]
fn settling_restores_the_server_setting_and_loses_nothing() {
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    let url = ota_bench::with_database(&server_url(), "").expect("url");
    let mut conn = runtime
        .block_on(ota_bench::loaders::connect(&url))
        .expect("connect");
    let pct_before: f64 = runtime
        .block_on(conn.query_first("SELECT @@GLOBAL.innodb_max_dirty_pages_pct + 0e0"))
        .expect("read setting")
        .expect("a value");
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

    let settler = Settler::new(&url);
    settler.settle(&runtime).expect("settle");
    assert_eq!(settler.waited().1, 1);

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
