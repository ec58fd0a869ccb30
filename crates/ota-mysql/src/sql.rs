//! SQL of the MySQL sink. The target table name is validated (`validate_identifier`)
//! before it is quoted in; every value is a bound parameter.

use ota_core::contract::{TYPED_COLUMNS, TypedKind};

/// The state table holding each target table's forward offset.
pub const CREATE_OFFSETS: &str = "CREATE TABLE IF NOT EXISTS ota_pipeline_offsets (
    target_table VARCHAR(64) NOT NULL PRIMARY KEY,
    changed_at DATETIME(6) NOT NULL,
    event_key BINARY(16) NOT NULL,
    updated_at DATETIME(6) NOT NULL,
    feed_id VARCHAR(64) NULL
) ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// Whether the offsets table has its `feed_id` column (tables made before it had none).
pub const OFFSETS_HAVE_FEED_ID: &str = "SELECT COUNT(*) FROM information_schema.COLUMNS \
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = 'ota_pipeline_offsets' AND COLUMN_NAME = 'feed_id'";

pub const ADD_OFFSETS_FEED_ID: &str =
    "ALTER TABLE ota_pipeline_offsets ADD COLUMN feed_id VARCHAR(64) NULL";

pub const SELECT_OFFSET: &str = "SELECT CAST(changed_at AS CHAR), HEX(event_key), feed_id
FROM ota_pipeline_offsets WHERE target_table = ?";

/// Saves a table's offset with the id of the warehouse feed it is a position in.
pub const SAVE_OFFSET: &str =
    "INSERT INTO ota_pipeline_offsets (target_table, changed_at, event_key, updated_at, feed_id)
VALUES (?, ?, ?, UTC_TIMESTAMP(6), ?)
ON DUPLICATE KEY UPDATE changed_at = VALUES(changed_at), event_key = VALUES(event_key),
    updated_at = VALUES(updated_at), feed_id = VALUES(feed_id)";

/// Records which feed an offset saved without one belongs to.
pub const ADOPT_FEED: &str = "UPDATE ota_pipeline_offsets SET feed_id = ? \
WHERE target_table = ? AND feed_id IS NULL";

pub const SESSION_SETUP: &str = "SET SESSION time_zone = '+00:00', \
    sql_mode = 'STRICT_ALL_TABLES,NO_ZERO_IN_DATE,NO_ZERO_DATE,ERROR_FOR_DIVISION_BY_ZERO,NO_ENGINE_SUBSTITUTION', \
    character_set_client = utf8mb4, character_set_connection = utf8mb4, character_set_results = utf8mb4, \
    collation_connection = utf8mb4_bin";

/// Seconds a statement waits for a row lock (InnoDB) or a table's metadata lock (DDL,
/// `LOCK TABLES` by another session) before failing.
pub const SESSION_LOCK_WAITS: &str =
    "SET SESSION lock_wait_timeout = ?, innodb_lock_wait_timeout = ?";

/// How long the server keeps this session when its client goes quiet: mid-statement
/// (`net_read_timeout`, `net_write_timeout`) and between statements (`wait_timeout`). A
/// client that died half-open (no FIN reached the server) would otherwise keep the export
/// lock and its row locks for the server's default of 8 hours.
pub const SESSION_NET_TIMEOUTS: &str =
    "SET SESSION net_read_timeout = ?, net_write_timeout = ?, wait_timeout = ?";

pub const SESSION_CIPHER: &str = "SHOW SESSION STATUS LIKE 'Ssl_cipher'";

pub const SHOW_WARNINGS: &str = "SHOW WARNINGS LIMIT 3";

/// The primary key's columns of a table in this database, in index order.
pub const PRIMARY_KEY_COLUMNS: &str = "SELECT COLUMN_NAME FROM information_schema.STATISTICS \
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND INDEX_NAME = 'PRIMARY' ORDER BY SEQ_IN_INDEX";

pub const GET_LOCK: &str = "SELECT GET_LOCK(?, ?)";
pub const RELEASE_LOCK: &str = "SELECT RELEASE_LOCK(?)";

/// The staging table (per connection) every batch is loaded into first.
pub const STAGE_TABLE: &str = "ota_stage";
/// Keys seen while re-syncing dates (per connection).
pub const RESYNC_KEYS_TABLE: &str = "ota_resync_keys";

/// The MySQL type of a typed column.
pub fn mysql_type(kind: TypedKind) -> &'static str {
    match kind {
        TypedKind::Key => "BINARY(16)",
        TypedKind::Date => "DATE",
        TypedKind::Text => "LONGTEXT",
        TypedKind::Integer => "BIGINT",
        TypedKind::Float => "DOUBLE",
        TypedKind::Boolean => "BOOLEAN",
        TypedKind::Decimal => "DECIMAL(18,6)",
        TypedKind::Timestamp => "DATETIME(6)",
    }
}

const TABLE_OPTIONS: &str = "ENGINE=InnoDB DEFAULT CHARSET=utf8mb4 COLLATE=utf8mb4_bin";

/// The serving table: typed columns and lineage, clustered by `(event_date, event_key)`.
///
/// `event_date` is the UTC date of the key's own timestamp, so it is a function of
/// `event_key`: the pair is unique exactly when `event_key` is, and no second unique index
/// is needed. Leading with the date keeps each day's rows together, so a daily run appends
/// near the end of the B-tree instead of dirtying random pages all over a table larger
/// than the buffer pool, and per-date work (re-sync, reconcile) reads one range.
pub fn create_target(table: &str) -> String {
    let cols: Vec<String> = TYPED_COLUMNS
        .iter()
        .map(|c| {
            let not_null = matches!(c.name, "event_key" | "event_date" | "row_hash");
            format!(
                "`{}` {}{}",
                c.name,
                mysql_type(c.kind),
                if not_null { " NOT NULL" } else { " NULL" }
            )
        })
        .collect();
    format!(
        "CREATE TABLE IF NOT EXISTS `{table}` (\n  {},\n  `changed_at` DATETIME(6) NOT NULL,\n  PRIMARY KEY (`event_date`, `event_key`)\n) {TABLE_OPTIONS}",
        cols.join(",\n  ")
    )
}

/// Staging: the change batch as it arrives (`op` 'U' upsert / 'D' delete).
pub fn create_stage() -> String {
    let cols: Vec<String> = TYPED_COLUMNS
        .iter()
        .map(|c| format!("`{}` {} NULL", c.name, mysql_type(c.kind)))
        .collect();
    format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS `{STAGE_TABLE}` (`op` CHAR(1) NOT NULL, `changed_at` DATETIME(6) NULL, {}) {TABLE_OPTIONS}",
        cols.join(", ")
    )
}

pub fn create_resync_keys() -> String {
    format!(
        "CREATE TEMPORARY TABLE IF NOT EXISTS `{RESYNC_KEYS_TABLE}` (`event_key` BINARY(16) NOT NULL PRIMARY KEY) ENGINE=InnoDB"
    )
}

/// The staged columns in batch order: `op`, `changed_at`, then the typed columns.
pub fn stage_columns() -> Vec<&'static str> {
    let mut cols = vec!["op", "changed_at"];
    cols.extend(TYPED_COLUMNS.iter().map(|c| c.name));
    cols
}

/// How loaded rows meet rows with the same key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OnDuplicate {
    /// A duplicate key is an error (an empty table, the staging table).
    Fail,
    /// The loaded row replaces the one held (`REPLACE`: InnoDB updates it in place when
    /// the primary key is the only unique key, and skips the write when nothing differs).
    Replace,
}

fn quoted_list(columns: &[&str]) -> String {
    columns
        .iter()
        .map(|c| format!("`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `LOAD DATA LOCAL INFILE` of an encoded stream (see `encode`) into a table's columns.
/// `CHARACTER SET binary`: the bytes go in unconverted (text is UTF-8, keys raw bytes).
pub fn load_data(table: &str, columns: &[&str], on_duplicate: OnDuplicate) -> String {
    let replace = match on_duplicate {
        OnDuplicate::Fail => "",
        OnDuplicate::Replace => "REPLACE ",
    };
    format!(
        "LOAD DATA LOCAL INFILE 'ota-batch.tsv' {replace}INTO TABLE `{table}` CHARACTER SET binary \
FIELDS TERMINATED BY '\\t' ESCAPED BY '\\\\' LINES TERMINATED BY '\\n' ({})",
        quoted_list(columns)
    )
}

/// Multi-row INSERT (or REPLACE) of `rows` rows of bound values (the path for servers
/// that refuse local infile).
pub fn insert_rows(
    table: &str,
    columns: &[&str],
    rows: usize,
    on_duplicate: OnDuplicate,
) -> String {
    let verb = match on_duplicate {
        OnDuplicate::Fail => "INSERT",
        OnDuplicate::Replace => "REPLACE",
    };
    let one = format!("({})", vec!["?"; columns.len()].join(", "));
    format!(
        "{verb} INTO `{table}` ({}) VALUES {}",
        quoted_list(columns),
        vec![one; rows].join(", ")
    )
}

/// Deletes the rows of `keys` event keys of one event date (tombstones), bound as
/// parameters: the date first, then the keys.
pub fn delete_keys(table: &str, keys: usize) -> String {
    format!(
        "DELETE FROM `{table}` WHERE `event_date` = ? AND `event_key` IN ({})",
        vec!["?"; keys].join(", ")
    )
}

/// Empties the staging table. `DELETE`, not `TRUNCATE`: it must not commit the re-sync's
/// open transaction.
pub fn empty_stage() -> String {
    format!("DELETE FROM `{STAGE_TABLE}`")
}

/// The serving table's columns: the typed columns, then `changed_at`.
pub fn target_columns() -> Vec<&'static str> {
    let mut cols: Vec<&str> = TYPED_COLUMNS.iter().map(|c| c.name).collect();
    cols.push("changed_at");
    cols
}

fn column_list(prefix: &str) -> String {
    target_columns()
        .iter()
        .map(|c| format!("{prefix}`{c}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

fn update_list() -> String {
    target_columns()
        .iter()
        .filter(|c| !matches!(**c, "event_date" | "event_key"))
        .map(|c| format!("`{c}` = VALUES(`{c}`)"))
        .collect::<Vec<_>>()
        .join(", ")
}

/// Applies the staged upserts.
pub fn upsert_from_stage(table: &str) -> String {
    format!(
        "INSERT INTO `{table}` ({}) SELECT {} FROM `{STAGE_TABLE}` s WHERE s.`op` = 'U' ORDER BY s.`event_date`, s.`event_key` ON DUPLICATE KEY UPDATE {}",
        column_list(""),
        column_list("s."),
        update_list()
    )
}

/// Re-sync: drops staged rows the target already holds with the same content, leaving
/// only rows that are missing or differ. Every content column is compared (NULL-safe),
/// and `row_hash` too: a row edited by hand differs even where its hash was left alone.
pub fn drop_unchanged_from_stage(table: &str) -> String {
    let same: Vec<String> = super::content::content_columns()
        .into_iter()
        .map(|(name, _)| name)
        .chain(["row_hash"])
        .map(|c| format!("t.`{c}` <=> s.`{c}`"))
        .collect();
    format!(
        "DELETE s FROM `{STAGE_TABLE}` s JOIN `{table}` t ON t.`event_date` = s.`event_date` AND t.`event_key` = s.`event_key` AND {}",
        same.join(" AND ")
    )
}

pub fn count_stage() -> String {
    format!("SELECT COUNT(*) FROM `{STAGE_TABLE}`")
}

pub fn remember_resync_keys() -> String {
    format!(
        "INSERT IGNORE INTO `{RESYNC_KEYS_TABLE}` (`event_key`) SELECT `event_key` FROM `{STAGE_TABLE}`"
    )
}

pub fn empty_resync_keys() -> String {
    format!("DELETE FROM `{RESYNC_KEYS_TABLE}`")
}

/// Re-sync: deletes target rows of one event date that the warehouse does not hold.
pub fn delete_unknown_of_date(table: &str) -> String {
    format!(
        "DELETE t FROM `{table}` t LEFT JOIN `{RESYNC_KEYS_TABLE}` k ON k.`event_key` = t.`event_key` \
WHERE t.`event_date` = ? AND k.`event_key` IS NULL"
    )
}

/// Re-sync: how many target rows of one event date the warehouse does not hold (what
/// [`delete_unknown_of_date`] would delete).
pub fn count_unknown_of_date(table: &str) -> String {
    format!(
        "SELECT COUNT(*) FROM `{table}` t LEFT JOIN `{RESYNC_KEYS_TABLE}` k ON k.`event_key` = t.`event_key` \
WHERE t.`event_date` = ? AND k.`event_key` IS NULL"
    )
}

/// The event dates served between two dates (one range of the primary key).
pub fn dates_between(table: &str) -> String {
    format!(
        "SELECT DISTINCT CAST(`event_date` AS CHAR) FROM `{table}` WHERE `event_date` BETWEEN ? AND ? \
ORDER BY 1"
    )
}

/// Every served row of one event date, as its content columns in hashing order and its
/// stored `row_hash`: what reconcile and re-sync recompute `row_hash` from.
pub fn content_of_date(table: &str) -> String {
    let columns: Vec<&str> = super::content::content_columns()
        .into_iter()
        .map(|(name, _)| name)
        .chain(["row_hash"])
        .collect();
    format!(
        "SELECT {} FROM `{table}` WHERE `event_date` = ?",
        quoted_list(&columns)
    )
}
