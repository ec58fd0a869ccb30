//! The MySQL sink against the real server (`OTA_TEST_MYSQL_URL`, default
//! mysql://root@127.0.0.1:3306): upserts loaded straight into the serving table, deletes,
//! bytes that need escaping, and a batch the server rejects leaving nothing behind —
//! through LOAD DATA and through the INSERT path alike.

use std::sync::atomic::{AtomicU32, Ordering};

use base64::Engine;
use mysql_async::prelude::Queryable;
use ota_core::change::{ChangeBatch, FeedOffset};
use ota_mysql::{CommitEveryBatch, LoadMethod, MysqlConfig, MysqlTarget, split_changes};
use ota_warehouse::bigquery::feed::{CHANGE_SCHEMA, change_batch};
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
    change_on("2024-01-02", op, changed_at, key, cells)
}

/// A change row of an event date.
fn change_on(
    date: &str,
    op: &str,
    changed_at: i64,
    key: &[u8],
    cells: &[(&str, Value)],
) -> Vec<Value> {
    CHANGE_SCHEMA
        .fields()
        .iter()
        .map(|f| match f.name().as_str() {
            "op" => json!(op),
            "changed_at" => json!(changed_at.to_string()),
            "event_key" => json!(base64::engine::general_purpose::STANDARD.encode(key)),
            "event_date" => json!(date),
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
            io_timeout_secs: ota_mysql::DEFAULT_IO_TIMEOUT_SECS,
        };
        Sink { rt, db, config }
    }

    fn apply(&self, rows: &[Vec<Value>], offset_at: i64) -> ota_core::Result<(u64, u64)> {
        let batch = change_batch(rows).expect("change batch");
        self.rt.block_on(async {
            let mut target = MysqlTarget::connect(&self.config).await?;
            let offset = FeedOffset {
                changed_at: offset_at,
                event_key: KEY_C,
            };
            let applied = match ChangeBatch::try_new(batch) {
                Ok(batch) => {
                    let changes = split_changes(&batch);
                    target
                        .apply_changes(&batch, &changes, offset, &CommitEveryBatch)
                        .await
                }
                Err(e) => Err(e),
            };
            target.close().await?;
            applied
        })
    }

    /// The rows of a query on the test's database.
    fn query<T: mysql_async::prelude::FromRow + Send + 'static>(&self, statement: &str) -> Vec<T> {
        self.rt.block_on(async {
            let mut c =
                mysql_async::Conn::new(mysql_async::Opts::from_url(&self.config.url).expect("url"))
                    .await
                    .expect("connect");
            let rows = c.query(statement).await.expect(statement);
            let _ = c.disconnect().await;
            rows
        })
    }

    /// (HEX(event_key), search_query, hotel_price) of every row, in key order.
    fn rows(&self) -> Vec<(String, Option<String>, Option<String>)> {
        self.query(
            "SELECT HEX(event_key), search_query, CAST(hotel_price AS CHAR) FROM ota_events ORDER BY event_key",
        )
    }

    /// Connects once, which creates the serving table.
    fn create_table(&self) {
        self.rt
            .block_on(async { MysqlTarget::connect(&self.config).await?.close().await })
            .expect("creating the table");
    }

    /// Runs statements on the test's database.
    fn run(&self, statements: &[&str]) {
        self.rt.block_on(async {
            let mut c =
                mysql_async::Conn::new(mysql_async::Opts::from_url(&self.config.url).expect("url"))
                    .await
                    .expect("connect");
            for statement in statements {
                c.query_drop(*statement).await.expect(statement);
            }
            let _ = c.disconnect().await;
        })
    }

    /// (event_date, HEX(event_key)) of every row, in that order.
    fn dated_keys(&self) -> Vec<(String, String)> {
        self.query("SELECT CAST(event_date AS CHAR), HEX(event_key) FROM ota_events ORDER BY 1, 2")
    }

    fn primary_key(&self) -> Vec<String> {
        self.query(
            "SELECT COLUMN_NAME FROM information_schema.STATISTICS WHERE TABLE_SCHEMA = DATABASE() \
             AND TABLE_NAME = 'ota_events' AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX",
        )
    }

    fn offset(&self) -> Option<String> {
        self.query("SELECT CAST(changed_at AS CHAR) FROM ota_pipeline_offsets")
            .into_iter()
            .next()
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

/// Upserts of three dates in one batch, then tombstones of two of them: each delete
/// removes its own date's row, whether the table is clustered by
/// `(event_date, event_key)` or keyed by `(event_key)` alone.
fn tombstones_delete_their_rows(keyed_by_event_key_alone: bool) {
    let sink = Sink::new(LoadMethod::LoadData);
    let (k1, k2, k3) = ([0x31u8; 16], [0x32u8; 16], [0x33u8; 16]);
    let first = [
        change_on("2024-01-03", "U", AT_1, &k3, &[]),
        change_on("2024-01-01", "U", AT_1, &k1, &[]),
        change_on("2024-01-02", "U", AT_1, &k2, &[]),
    ];
    if keyed_by_event_key_alone {
        sink.create_table();
        sink.run(&[
            "ALTER TABLE ota_events DROP PRIMARY KEY, ADD PRIMARY KEY (event_key), ADD KEY ota_events_event_date (event_date)",
        ]);
        assert_eq!(sink.primary_key(), ["event_key"]);
    }
    assert_eq!(sink.apply(&first, AT_1).expect("upserts"), (3, 0));
    if !keyed_by_event_key_alone {
        assert_eq!(sink.primary_key(), ["event_date", "event_key"]);
    }
    let all = vec![
        ("2024-01-01".to_string(), hex(&k1)),
        ("2024-01-02".to_string(), hex(&k2)),
        ("2024-01-03".to_string(), hex(&k3)),
    ];
    assert_eq!(sink.dated_keys(), all);
    let deletes = [
        change_on("2024-01-03", "D", AT_2, &k3, &[]),
        change_on("2024-01-01", "D", AT_2, &k1, &[]),
    ];
    assert_eq!(sink.apply(&deletes, AT_2).expect("deletes"), (0, 2));
    assert_eq!(sink.dated_keys(), vec![all[1].clone()]);
}

#[test]
fn tombstones_delete_their_rows_in_the_date_clustered_table() {
    tombstones_delete_their_rows(false);
}

#[test]
fn tombstones_delete_their_rows_in_a_table_keyed_by_event_key_alone() {
    tombstones_delete_their_rows(true);
}

#[test]
fn a_table_not_unique_on_the_event_key_is_refused_before_anything_is_written() {
    let sink = Sink::new(LoadMethod::LoadData);
    sink.create_table();
    sink.run(&["ALTER TABLE ota_events DROP PRIMARY KEY, ADD PRIMARY KEY (row_hash)"]);
    let err = sink
        .apply(&[change("U", AT_1, &KEY_B, &[])], AT_1)
        .expect_err("a primary key that is not the event key");
    let message = err.to_string();
    assert!(message.contains("primary key (row_hash)"), "{message}");
    assert!(message.contains("(event_date, event_key)"), "{message}");
    assert!(sink.rows().is_empty());
    assert_eq!(sink.offset(), None);
}

#[test]
fn change_batches_are_split_into_upserts_in_primary_key_order_and_tombstones_by_date() {
    let rows = [
        change_on("2024-01-02", "U", AT_1, &[0x10; 16], &[]),
        change_on("2024-01-01", "U", AT_1, &[0x20; 16], &[]),
        change_on("2024-01-02", "D", AT_1, &[0x30; 16], &[]),
        change_on("2024-01-01", "U", AT_1, &[0x05; 16], &[]),
        change_on("2024-01-02", "D", AT_1, &[0x40; 16], &[]),
    ];
    let batch = ChangeBatch::try_new(change_batch(&rows).expect("change batch")).expect("split");
    let split = ota_mysql::split_changes(&batch);
    assert_eq!(split.upserts, [3, 1, 0]);
    let tombstones: Vec<(String, Vec<Vec<u8>>)> = split
        .tombstones
        .into_iter()
        .map(|(d, keys)| (d.to_string(), keys))
        .collect();
    assert_eq!(
        tombstones,
        [(
            "2024-01-02".to_string(),
            vec![vec![0x30u8; 16], vec![0x40u8; 16]]
        )]
    );
    let bad = change_batch(&[change_on("2024-01-02", "X", AT_1, &[1; 16], &[])]).expect("batch");
    let err = ChangeBatch::try_new(bad).expect_err("an unknown operation");
    assert!(err.to_string().contains("\"X\""), "{err}");
}
