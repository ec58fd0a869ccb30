//! The MySQL sink against the real server (`OTA_TEST_MYSQL_URL`, default
//! mysql://root@127.0.0.1:3306): upserts loaded straight into the serving table, deletes,
//! bytes that need escaping, and a batch the server rejects leaving nothing behind —
//! through LOAD DATA and through the INSERT path alike.

use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use mysql_async::prelude::Queryable;
use ota_pipeline::mysql::{LoadMethod, MysqlConfig, MysqlTarget};
use ota_pipeline::warehouse::FeedOffset;
use ota_pipeline::warehouse::bigquery::feed::{CHANGE_SCHEMA, change_batch};
use serde_json::{Value, json};

static COUNTER: AtomicU32 = AtomicU32::new(0);

fn server_url() -> String {
    std::env::var("OTA_TEST_MYSQL_URL").unwrap_or_else(|_| "mysql://root@127.0.0.1:3306".into())
}

fn database_url(db: &str) -> String {
    let server = server_url();
    match server.split_once('?') {
        Some((base, query)) => format!("{}/{db}?{query}", base.trim_end_matches('/')),
        None => format!("{}/{db}", server.trim_end_matches('/')),
    }
}

/// A change row in the feed's JSON form: the named columns set, the others NULL.
fn change(op: &str, changed_at: i64, key: &[u8], cells: &[(&str, Value)]) -> Vec<Value> {
    CHANGE_SCHEMA
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "op" => json!(op),
            "changed_at" => json!(changed_at.to_string()),
            "event_key" => json!(base64::engine::general_purpose::STANDARD.encode(key)),
            "event_date" => json!("2024-01-02"),
            "row_hash" => json!(base64::engine::general_purpose::STANDARD.encode([7u8; 16])),
            name => cells
                .iter()
                .find(|(n, _)| *n == name)
                .map_or(Value::Null, |(_, v)| v.clone()),
        })
        .collect()
}

/// Keys holding every byte LOAD DATA must escape.
const KEY_A: [u8; 16] = [
    0, 9, 10, 13, 92, 255, 254, 128, 65, 66, 67, 68, 69, 70, 71, 72,
];
const KEY_B: [u8; 16] = [1; 16];
const KEY_C: [u8; 16] = [92; 16];

struct Sink {
    rt: tokio::runtime::Runtime,
    db: String,
    config: MysqlConfig,
}

impl Sink {
    fn new(method: LoadMethod) -> Self {
        let db = format!(
            "ota_sink_{}_{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::SeqCst)
        );
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        let config = MysqlConfig {
            url: database_url(&db),
            table: "ota_events".into(),
            load_method: method,
            lock_timeout_secs: 5,
        };
        Sink { rt, db, config }
    }

    fn apply(&self, rows: &[Vec<Value>], offset_at: i64) -> ota_pipeline::Result<(u64, u64)> {
        let batch = change_batch(rows).expect("change batch");
        self.rt.block_on(async {
            let mut target = MysqlTarget::connect(&self.config).await?;
            let offset = FeedOffset {
                changed_at: offset_at,
                event_key: KEY_C,
            };
            let applied = target.apply_changes(&batch, offset, false).await;
            target.close().await?;
            applied
        })
    }

    /// (HEX(event_key), search_query, hotel_price) of every row, in key order.
    fn rows(&self) -> Vec<(String, Option<String>, Option<String>)> {
        self.rt.block_on(async {
            let mut c = mysql_async::Conn::new(
                mysql_async::Opts::from_url(&self.config.url).expect("url"),
            )
            .await
            .expect("connect");
            let rows = c
                .query(
                    "SELECT HEX(event_key), search_query, CAST(hotel_price AS CHAR) FROM ota_events ORDER BY event_key",
                )
                .await
                .expect("select");
            let _ = c.disconnect().await;
            rows
        })
    }

    fn offset(&self) -> Option<String> {
        self.rt.block_on(async {
            let mut c =
                mysql_async::Conn::new(mysql_async::Opts::from_url(&self.config.url).expect("url"))
                    .await
                    .expect("connect");
            let at: Option<String> = c
                .query_first("SELECT CAST(changed_at AS CHAR) FROM ota_pipeline_offsets")
                .await
                .expect("offset");
            let _ = c.disconnect().await;
            at
        })
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let db = self.db.clone();
        let url = server_url();
        let _ = self.rt.block_on(async move {
            let mut c = mysql_async::Conn::new(mysql_async::Opts::from_url(&url)?).await?;
            c.query_drop(format!("DROP DATABASE IF EXISTS `{db}`"))
                .await?;
            c.disconnect().await
        });
    }
}

const AT_1: i64 = 1_704_153_600_000_000; // 2024-01-02 00:00:00
const AT_2: i64 = AT_1 + 1_000_001;

fn upserts_replace_rows_deletes_remove_them_and_rejected_batches_leave_nothing(method: LoadMethod) {
    let sink = Sink::new(method);
    let tricky = "tab\there\nnew line \\ back 😀 \u{0}zero";
    let (upserted, deleted) = sink
        .apply(
            &[
                change(
                    "U",
                    AT_1,
                    &KEY_A,
                    &[
                        ("search_query", json!(tricky)),
                        ("hotel_price", json!("1234.56")),
                    ],
                ),
                change("U", AT_1, &KEY_B, &[("search_query", json!("plain"))]),
                change(
                    "U",
                    AT_1,
                    &KEY_C,
                    &[("search_query", json!("to be deleted"))],
                ),
            ],
            AT_1,
        )
        .expect("first batch");
    assert_eq!((upserted, deleted), (3, 0));
    let rows = sink.rows();
    assert_eq!(rows.len(), 3);
    assert_eq!(rows[0].0, "00090A0D5CFFFE804142434445464748");
    assert_eq!(rows[0].1.as_deref(), Some(tricky));
    assert_eq!(rows[0].2.as_deref(), Some("1234.560000"));

    // An update of A (every column replaced: its price goes), a delete of C.
    let (upserted, deleted) = sink
        .apply(
            &[
                change("U", AT_2, &KEY_A, &[("search_query", json!("changed"))]),
                change("D", AT_2, &KEY_C, &[]),
            ],
            AT_2,
        )
        .expect("second batch");
    assert_eq!((upserted, deleted), (1, 1));
    let rows = sink.rows();
    assert_eq!(
        rows,
        vec![
            (
                "00090A0D5CFFFE804142434445464748".into(),
                Some("changed".into()),
                None
            ),
            (hex(&KEY_B), Some("plain".into()), None),
        ]
    );
    assert_eq!(sink.offset().as_deref(), Some("2024-01-02 00:00:01.000001"));

    // A price MySQL cannot hold: the batch fails, naming the column; its other row, its
    // delete and its offset are not kept.
    let err = sink
        .apply(
            &[
                change(
                    "U",
                    AT_2 + 1,
                    &KEY_B,
                    &[("search_query", json!("must not stay"))],
                ),
                change(
                    "U",
                    AT_2 + 1,
                    &KEY_C,
                    &[("hotel_price", json!("99999999999999.5"))],
                ),
                change("D", AT_2 + 1, &KEY_A, &[]),
            ],
            AT_2 + 1,
        )
        .expect_err("an out-of-range price");
    assert!(err.to_string().contains("hotel_price"), "{err}");
    assert_eq!(sink.rows(), rows);
    assert_eq!(sink.offset().as_deref(), Some("2024-01-02 00:00:01.000001"));
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

#[test]
fn load_data_upserts_deletes_and_rejects_whole_batches() {
    upserts_replace_rows_deletes_remove_them_and_rejected_batches_leave_nothing(
        LoadMethod::LoadData,
    );
}

#[test]
fn insert_path_upserts_deletes_and_rejects_whole_batches() {
    upserts_replace_rows_deletes_remove_them_and_rejected_batches_leave_nothing(LoadMethod::Insert);
}
