//! The harness's witness: the serving table the lake calls for, computed by
//! `docs/reference.sql` in DuckDB straight from the Parquet files — none of the pipeline's
//! code — and compared with what MySQL serves, row by row and column by column.

use std::collections::{BTreeMap, HashMap};
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, RecordBatch};
use arrow::datatypes::{DataType, Field, Schema};
use duckdb::vtab::arrow::{ArrowBatchRegistration, ArrowVTab};
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

/// The reference's SQL, sections named by `-- name:` lines.
const REFERENCE_SQL: &str = include_str!("../../../docs/reference.sql");

/// What MySQL serves, written out as the reference writes it (docs/reference.sql, `served`):
/// the same columns in the same order, each value as canonical text.
pub const SERVED_IN_MYSQL: &str =
    "SELECT CAST(event_date AS CHAR), request_id, funnel_id, session_id,
    DATE_FORMAT(`timestamp`, '%Y-%m-%d %H:%i:%s.%f'), page_name,
    CAST(user_id AS CHAR), user_agent, device_type, ip_address, CAST(subscriber_id AS CHAR),
    CAST(has_email_contact_permission AS CHAR), CAST(has_phone_contact_permission AS CHAR),
    CAST(hotel_price AS CHAR), hotel_price_raw, CAST(hotel_id AS CHAR), currency, country,
    utm_source, search_query, CAST(num_guests AS CHAR), CAST(destination_id AS CHAR), hotel_name,
    CAST(CAST(hotel_rating AS DECIMAL(30, 6)) AS CHAR), CAST(selected_room_id AS CHAR),
    CAST(nights AS CHAR), CAST(CAST(price_per_night AS DECIMAL(30, 6)) AS CHAR),
    payment_status, confirmation_number
FROM ota_events";

/// Positions of the event key's columns in a served row (request_id, funnel_id,
/// session_id, page_name, timestamp).
const KEY_COLUMNS: [usize; 5] = [1, 2, 3, 5, 4];

/// One served row: every column as text, NULL as `None`.
pub type ServedRow = Vec<Option<String>>;

#[derive(Debug, thiserror::Error)]
#[error("the reference ({what}): {source}")]
pub struct ReferenceError {
    what: String,
    source: Box<dyn std::error::Error + Send + Sync>,
}

fn failed<E: std::error::Error + Send + Sync + 'static>(
    what: impl Into<String>,
) -> impl FnOnce(E) -> ReferenceError {
    move |source| ReferenceError {
        what: what.into(),
        source: Box::new(source),
    }
}

fn section(name: &str) -> &'static str {
    REFERENCE_SQL
        .split("-- name: ")
        .find_map(|s| s.strip_prefix(name).filter(|rest| rest.starts_with('\n')))
        .unwrap_or("")
}

/// A lake read by the reference.
pub struct Reference {
    conn: duckdb::Connection,
}

impl Reference {
    /// Reads every daily file of `lake`; `ingested_at(file)` is the file version's
    /// ingestion time in microseconds.
    pub fn over(
        lake: &Path,
        ingested_at: impl Fn(&Path) -> std::io::Result<i64>,
    ) -> Result<Self, ReferenceError> {
        let conn = duckdb::Connection::open_in_memory().map_err(failed("opening DuckDB"))?;
        conn.register_table_function::<ArrowVTab>("arrow")
            .map_err(failed("registering arrow()"))?;
        conn.execute_batch(section("setup"))
            .map_err(failed("setup"))?;
        let mut files: Vec<_> = std::fs::read_dir(lake)
            .and_then(|entries| entries.map(|e| e.map(|e| e.path())).collect())
            .map_err(failed("listing the lake"))?;
        files.retain(|p| p.extension().is_some_and(|e| e == "parquet"));
        files.sort();
        for file in files {
            let at = ingested_at(&file).map_err(failed("reading a file's mtime"))?;
            let path = file.display().to_string();
            let mut first_row = 0_i64;
            let reading = format!("reading {path}");
            let opened = std::fs::File::open(&file).map_err(failed(&reading))?;
            let batches = ParquetRecordBatchReaderBuilder::try_new(opened)
                .map_err(failed(&reading))?
                .build()
                .map_err(failed(&reading))?;
            for batch in batches {
                let batch = with_row_numbers(batch.map_err(failed(&reading))?, first_row)?;
                first_row += batch.num_rows() as i64;
                let rows = ArrowBatchRegistration::new(batch);
                conn.execute(section("add_file"), duckdb::params![&rows, path, at])
                    .map_err(failed(format!("reading {path}")))?;
            }
        }
        Ok(Reference { conn })
    }

    /// The serving table the lake calls for.
    pub fn served(&self) -> Result<Vec<ServedRow>, ReferenceError> {
        let mut statement = self
            .conn
            .prepare(section("served"))
            .map_err(failed("served"))?;
        let width = statement.column_count();
        let rows = statement
            .query_map([], |row| {
                (0..width)
                    .map(|i| row.get::<_, Option<String>>(i))
                    .collect::<Result<ServedRow, _>>()
            })
            .map_err(failed("served"))?;
        rows.collect::<Result<_, _>>().map_err(failed("served"))
    }

    /// The rows of one file that do not load, counted by reason (`not_text`,
    /// `missing_request_id`, `unusable_timestamp`, `far_from_file_day`).
    pub fn rejects_of(&self, file: &Path) -> Result<BTreeMap<String, u64>, ReferenceError> {
        let mut statement = self
            .conn
            .prepare(section("file_rejects"))
            .map_err(failed("file_rejects"))?;
        let rows = statement
            .query_map([file.display().to_string()], |row| {
                Ok((row.get::<_, String>(0)?, row.get::<_, i64>(1)?))
            })
            .map_err(failed("file_rejects"))?;
        rows.map(|r| r.map(|(reason, n)| (reason, n.max(0) as u64)))
            .collect::<Result<_, _>>()
            .map_err(failed("file_rejects"))
    }
}

/// The batch with a `source_row` column: each row's ordinal in its file.
fn with_row_numbers(batch: RecordBatch, first_row: i64) -> Result<RecordBatch, ReferenceError> {
    let rows = Int64Array::from_iter_values(first_row..first_row + batch.num_rows() as i64);
    let mut fields: Vec<Field> = batch
        .schema()
        .fields()
        .iter()
        .map(|f| f.as_ref().clone())
        .collect();
    fields.push(Field::new("source_row", DataType::Int64, false));
    let mut columns = batch.columns().to_vec();
    columns.push(Arc::new(rows));
    RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
        .map_err(failed("numbering a file's rows"))
}

/// How what MySQL serves differs from what it should.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Difference {
    /// Expected rows MySQL does not serve.
    pub missing: u64,
    /// Expected rows MySQL serves with another value in some column.
    pub different: u64,
    /// Rows MySQL serves whose event the lake does not call for.
    pub extra: u64,
    /// Events MySQL serves more than once (under two keys or dates).
    pub duplicated: u64,
}

impl Difference {
    pub fn none(&self) -> bool {
        *self == Difference::default()
    }
}

impl std::fmt::Display for Difference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} missing, {} different, {} extra, {} duplicated",
            self.missing, self.different, self.extra, self.duplicated
        )
    }
}

fn key_of(row: &ServedRow) -> Vec<Option<&str>> {
    KEY_COLUMNS
        .iter()
        .map(|&i| row.get(i).and_then(|v| v.as_deref()))
        .collect()
}

/// Compares the served rows with the expected ones, by event key.
pub fn compare(expected: &[ServedRow], served: &[ServedRow]) -> Difference {
    let mut by_key: HashMap<Vec<Option<&str>>, Vec<&ServedRow>> = HashMap::new();
    for row in served {
        by_key.entry(key_of(row)).or_default().push(row);
    }
    let mut difference = Difference::default();
    let mut seen = std::collections::HashSet::new();
    for row in expected {
        let key = key_of(row);
        match by_key.get(&key) {
            None => difference.missing += 1,
            Some(rows) if !rows.contains(&row) => difference.different += 1,
            Some(_) => {}
        }
        seen.insert(key);
    }
    for (key, rows) in &by_key {
        if !seen.contains(key) {
            difference.extra += rows.len() as u64;
        }
        difference.duplicated += rows.len() as u64 - 1;
    }
    difference
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(request: &str, hotel: Option<&str>) -> ServedRow {
        let mut r: ServedRow = vec![None; 29];
        r[0] = Some("2024-01-01".into());
        r[1] = Some(request.into());
        r[4] = Some("2024-01-01 10:00:00.000000".into());
        r[22] = hotel.map(str::to_string);
        r
    }

    #[test]
    fn each_kind_of_difference_is_counted() {
        let expected = vec![row("a", Some("x")), row("b", None), row("c", Some("y"))];
        assert!(compare(&expected, &expected.clone()).none());
        let served = vec![
            row("a", Some("x")),
            row("b", Some("edited")),
            row("d", None),
            row("d", Some("z")),
        ];
        let d = compare(&expected, &served);
        assert_eq!(
            d,
            Difference {
                missing: 1,
                different: 1,
                extra: 2,
                duplicated: 1
            }
        );
    }

    #[test]
    fn every_section_of_the_reference_is_there() {
        for name in ["setup", "add_file", "file_rejects", "served"] {
            assert!(!section(name).trim().is_empty(), "{name}");
        }
    }
}
