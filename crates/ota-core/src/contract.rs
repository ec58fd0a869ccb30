//! The event contract: the source columns of a daily file, how each is typed, and the
//! Arrow schema of typed rows as every warehouse stores them.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef, TimeUnit};

/// How a source column is typed (docs/design.md, "The event contract").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnKind {
    /// Kept as text.
    Text,
    /// `"123"`, `"123.0"`, 123, 123.0 -> 123; anything else -> NULL.
    Integer,
    /// Decimal text or number -> DOUBLE, else NULL.
    Float,
    /// yes/true/1 and no/false/0, trimmed and case-insensitive, else NULL.
    Permission,
    /// Price text -> DECIMAL(18,6) plus the original text in `<name>_raw`.
    Price,
    /// int64 ns, Parquet TIMESTAMP of any unit, or ISO-8601 text -> UTC microseconds.
    Timestamp,
}

/// A column of the source files.
#[derive(Debug, Clone, Copy)]
pub struct SourceColumn {
    pub name: &'static str,
    pub kind: ColumnKind,
}

const fn col(name: &'static str, kind: ColumnKind) -> SourceColumn {
    SourceColumn { name, kind }
}

use ColumnKind::*;

/// The 27 source columns, in contract order.
pub const SOURCE_COLUMNS: [SourceColumn; 27] = [
    col("request_id", Text),
    col("funnel_id", Text),
    col("session_id", Text),
    col("user_id", Integer),
    col("user_agent", Text),
    col("device_type", Text),
    col("ip_address", Text),
    col("timestamp", Timestamp),
    col("page_name", Text),
    col("subscriber_id", Integer),
    col("has_email_contact_permission", Permission),
    col("has_phone_contact_permission", Permission),
    col("hotel_price", Price),
    col("hotel_id", Integer),
    col("currency", Text),
    col("country", Text),
    col("utm_source", Text),
    col("search_query", Text),
    col("num_guests", Integer),
    col("destination_id", Integer),
    col("hotel_name", Text),
    col("hotel_rating", Float),
    col("selected_room_id", Integer),
    col("nights", Integer),
    col("price_per_night", Float),
    col("payment_status", Text),
    col("confirmation_number", Text),
];

/// The columns of the event key, in key order.
pub const EVENT_KEY_COLUMNS: [&str; 5] = [
    "request_id",
    "funnel_id",
    "session_id",
    "page_name",
    "timestamp",
];

/// Scale and precision of typed prices.
pub const PRICE_PRECISION: u8 = 18;
pub const PRICE_SCALE: i8 = 6;

/// Logical type of a typed column, mapped to each backend's DDL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypedKind {
    Key,
    Date,
    Text,
    Integer,
    Float,
    Boolean,
    Decimal,
    Timestamp,
}

/// A column of the typed tables (raw, dedup, MySQL).
#[derive(Debug, Clone, Copy)]
pub struct TypedColumn {
    pub name: &'static str,
    pub kind: TypedKind,
    /// Part of the content that `row_hash` covers.
    pub content: bool,
}

/// Typed columns, in storage order: key, content columns, then lineage.
pub static TYPED_COLUMNS: LazyLock<Vec<TypedColumn>> = LazyLock::new(|| {
    let mut cols = vec![
        TypedColumn {
            name: "event_key",
            kind: TypedKind::Key,
            content: false,
        },
        TypedColumn {
            name: "event_date",
            kind: TypedKind::Date,
            content: false,
        },
    ];
    for c in SOURCE_COLUMNS {
        let kind = match c.kind {
            Text => TypedKind::Text,
            Integer => TypedKind::Integer,
            Float => TypedKind::Float,
            Permission => TypedKind::Boolean,
            Price => TypedKind::Decimal,
            Timestamp => TypedKind::Timestamp,
        };
        cols.push(TypedColumn {
            name: c.name,
            kind,
            content: true,
        });
        if c.kind == Price {
            cols.push(TypedColumn {
                name: "hotel_price_raw",
                kind: TypedKind::Text,
                content: true,
            });
        }
    }
    cols.extend([
        TypedColumn {
            name: "row_hash",
            kind: TypedKind::Key,
            content: false,
        },
        TypedColumn {
            name: "source_day",
            kind: TypedKind::Date,
            content: false,
        },
        TypedColumn {
            name: "source_file",
            kind: TypedKind::Text,
            content: false,
        },
        TypedColumn {
            name: "source_row",
            kind: TypedKind::Integer,
            content: false,
        },
        TypedColumn {
            name: "ingested_at",
            kind: TypedKind::Timestamp,
            content: false,
        },
        TypedColumn {
            name: "loaded_at",
            kind: TypedKind::Timestamp,
            content: false,
        },
    ]);
    cols
});

/// Names of the typed columns, in storage order.
pub fn typed_column_names() -> Vec<&'static str> {
    TYPED_COLUMNS.iter().map(|c| c.name).collect()
}

/// Whether a typed column is NOT NULL in every warehouse table that holds it.
pub fn typed_column_required(name: &str) -> bool {
    matches!(name, "event_key" | "event_date" | "row_hash")
}

/// The typed columns as a table definition, in one SQL dialect: `quote` wraps each name,
/// `sql_type` names each kind (`"event_key" BLOB NOT NULL, ...`).
pub fn typed_column_ddl(quote: &str, sql_type: fn(TypedKind) -> &'static str) -> String {
    TYPED_COLUMNS
        .iter()
        .map(|c| {
            let not_null = if typed_column_required(c.name) {
                " NOT NULL"
            } else {
                ""
            };
            format!("{quote}{}{quote} {}{not_null}", c.name, sql_type(c.kind))
        })
        .collect::<Vec<_>>()
        .join(", ")
}

/// Arrow type of a typed column.
pub fn arrow_type(kind: TypedKind) -> DataType {
    match kind {
        TypedKind::Key => DataType::Binary,
        TypedKind::Date => DataType::Date32,
        TypedKind::Text => DataType::Utf8,
        TypedKind::Integer => DataType::Int64,
        TypedKind::Float => DataType::Float64,
        TypedKind::Boolean => DataType::Boolean,
        TypedKind::Decimal => DataType::Decimal128(PRICE_PRECISION, PRICE_SCALE),
        TypedKind::Timestamp => DataType::Timestamp(TimeUnit::Microsecond, None),
    }
}

/// Arrow schema of typed rows (the raw table's columns).
pub static TYPED_SCHEMA: LazyLock<SchemaRef> = LazyLock::new(|| {
    let fields: Vec<Field> = TYPED_COLUMNS
        .iter()
        .map(|c| {
            let nullable = !matches!(
                c.name,
                "event_key" | "event_date" | "row_hash" | "request_id" | "timestamp"
            );
            Field::new(c.name, arrow_type(c.kind), nullable)
        })
        .collect();
    Arc::new(Schema::new(fields))
});

/// Checks that an identifier (table or database name from a flag) is safe to quote
/// into DDL: ASCII letters, digits and underscores, starting with a letter or
/// underscore, at most 64 characters.
pub fn validate_identifier(what: &str, name: &str) -> crate::Result<()> {
    let ok = !name.is_empty()
        && name.len() <= 64
        && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && !name.as_bytes()[0].is_ascii_digit();
    if ok {
        Ok(())
    } else {
        Err(crate::PipelineError::Config(format!(
            "{what} {name:?} is not a valid identifier (letters, digits and _, not starting with a digit, at most 64)"
        )))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_columns_cover_the_contract() {
        let names = typed_column_names();
        for c in SOURCE_COLUMNS {
            assert!(names.contains(&c.name), "{}", c.name);
        }
        assert!(names.contains(&"hotel_price_raw"));
        assert_eq!(TYPED_COLUMNS.iter().filter(|c| c.content).count(), 28);
        let mut sorted = names.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), names.len(), "duplicate column names");
    }

    #[test]
    fn identifiers_are_validated() {
        assert!(validate_identifier("table", "ota_events").is_ok());
        for bad in ["", "1abc", "a-b", "a;drop", "a`b", &"x".repeat(65)] {
            assert!(validate_identifier("table", bad).is_err(), "{bad}");
        }
    }
}
