//! The serving table against its contract, before anything is written. A table altered
//! by hand can turn the export's writes into something else: an extra UNIQUE key makes
//! `REPLACE` delete other rows, a foreign key cascades a replaced row's delete into
//! another table, a trigger runs on every row, a narrowed or NOT NULL column makes every
//! retry of a batch fail, a non-transactional engine keeps half a batch. Such a table is
//! refused with every difference named; secondary indexes that are not unique are the
//! operator's own and are left alone.

use std::collections::BTreeMap;

use crate::sql::mysql_type;
use ota_core::error::{PipelineError, Result};

/// One column of the table as `information_schema` describes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ColumnFacts {
    pub column_type: String,
    pub nullable: bool,
    pub collation: Option<String>,
}

/// What the contract checks of a table.
#[derive(Debug, Clone, Default)]
pub struct TableFacts {
    pub engine: Option<String>,
    pub columns: BTreeMap<String, ColumnFacts>,
    /// Unique indexes other than the primary key: name -> columns.
    pub unique_keys: BTreeMap<String, String>,
    /// Foreign keys from or to the table: (constraint, from table, to table).
    pub foreign_keys: Vec<(String, String, String)>,
    /// Triggers on the table: (name, event).
    pub triggers: Vec<(String, String)>,
}

/// The column type as compared: integer display widths dropped (`bigint(20)` on MariaDB
/// is MySQL 8's `bigint`), `tinyint(1)` kept (it is how both spell BOOLEAN).
fn normalized(column_type: &str) -> String {
    let t = column_type.trim().to_ascii_lowercase();
    for int in ["bigint", "int", "smallint", "mediumint"] {
        if let Some(rest) = t.strip_prefix(int)
            && let Some(after) = rest.strip_prefix('(')
            && let Some((_, tail)) = after.split_once(')')
        {
            return format!("{int}{tail}");
        }
    }
    t
}

/// Every way `facts` differs from the serving table the export writes, one line each.
pub fn differences(table: &str, facts: &TableFacts) -> Vec<String> {
    let mut found = Vec::new();
    match facts.engine.as_deref() {
        Some(e) if e.eq_ignore_ascii_case("InnoDB") => {}
        other => found.push(format!(
            "engine {} instead of InnoDB: a batch would not be one transaction",
            other.unwrap_or("unknown")
        )),
    }
    let mut expected: BTreeMap<&str, (String, bool)> = BTreeMap::new();
    for column in ota_core::contract::TYPED_COLUMNS.iter() {
        let not_null = matches!(column.name, "event_key" | "event_date" | "row_hash");
        expected.insert(
            column.name,
            (mysql_type(column.kind).to_ascii_lowercase(), !not_null),
        );
    }
    expected.insert("changed_at", ("datetime(6)".into(), false));
    for (name, (want_type, want_nullable)) in &expected {
        let Some(have) = facts.columns.get(*name) else {
            found.push(format!("column {name} is missing"));
            continue;
        };
        let want = normalized(&want_type.replace("boolean", "tinyint(1)"));
        if normalized(&have.column_type) != want {
            found.push(format!(
                "column {name} is {} instead of {want}",
                have.column_type
            ));
        }
        if have.nullable != *want_nullable {
            found.push(format!(
                "column {name} is {} instead of {}",
                if have.nullable { "NULL" } else { "NOT NULL" },
                if *want_nullable { "NULL" } else { "NOT NULL" }
            ));
        }
        if want == "longtext"
            && let Some(collation) = &have.collation
            && collation != "utf8mb4_bin"
        {
            found.push(format!(
                "column {name} has collation {collation} instead of utf8mb4_bin: text would not be kept byte for byte"
            ));
        }
    }
    for name in facts.columns.keys() {
        if !expected.contains_key(name.as_str()) {
            found.push(format!(
                "column {name} is not part of the serving table (the export does not write it)"
            ));
        }
    }
    for (index, columns) in &facts.unique_keys {
        found.push(format!(
            "unique key {index} ({columns}): REPLACE would delete other rows that share it"
        ));
    }
    for (constraint, from, to) in &facts.foreign_keys {
        found.push(if from == table {
            format!("foreign key {constraint} to {to}: its rows' deletes would reach this table")
        } else {
            format!(
                "foreign key {constraint} of {from} refers to it: replacing a row would reach {from}"
            )
        });
    }
    for (trigger, event) in &facts.triggers {
        found.push(format!("trigger {trigger} runs on {event}"));
    }
    found
}

/// Refuses a table that differs from the contract, naming every difference.
pub fn check(table: &str, facts: &TableFacts) -> Result<()> {
    let found = differences(table, facts);
    if found.is_empty() {
        return Ok(());
    }
    Err(PipelineError::Config(format!(
        "MySQL table {table} is not the serving table the export writes, so nothing was \
         written: {}. Give it back its contract (the CREATE TABLE in docs/design.md is what \
         export-mysql creates) or export into a new table",
        found.join("; ")
    )))
}

/// The queries that read a table's facts (each bound to the table's name).
pub const ENGINE: &str = "SELECT ENGINE FROM information_schema.TABLES \
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?";
pub const COLUMNS: &str = "SELECT COLUMN_NAME, COLUMN_TYPE, IS_NULLABLE, COLLATION_NAME \
FROM information_schema.COLUMNS WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?";
pub const UNIQUE_KEYS: &str = "SELECT INDEX_NAME, \
GROUP_CONCAT(COLUMN_NAME ORDER BY SEQ_IN_INDEX SEPARATOR ', ') FROM information_schema.STATISTICS \
WHERE TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ? AND NON_UNIQUE = 0 AND INDEX_NAME <> 'PRIMARY' \
GROUP BY INDEX_NAME";
pub const FOREIGN_KEYS: &str = "SELECT DISTINCT CONSTRAINT_NAME, TABLE_NAME, REFERENCED_TABLE_NAME \
FROM information_schema.KEY_COLUMN_USAGE WHERE REFERENCED_TABLE_NAME IS NOT NULL AND \
((TABLE_SCHEMA = DATABASE() AND TABLE_NAME = ?) OR \
 (REFERENCED_TABLE_SCHEMA = DATABASE() AND REFERENCED_TABLE_NAME = ?))";
pub const TRIGGERS: &str = "SELECT TRIGGER_NAME, EVENT_MANIPULATION FROM information_schema.TRIGGERS \
WHERE EVENT_OBJECT_SCHEMA = DATABASE() AND EVENT_OBJECT_TABLE = ?";

#[cfg(test)]
mod tests {
    use super::*;

    fn facts_of_contract() -> TableFacts {
        let mut facts = TableFacts {
            engine: Some("InnoDB".into()),
            ..TableFacts::default()
        };
        for c in ota_core::contract::TYPED_COLUMNS.iter() {
            let t = mysql_type(c.kind)
                .to_ascii_lowercase()
                .replace("boolean", "tinyint(1)");
            let text = t == "longtext";
            facts.columns.insert(
                c.name.to_string(),
                ColumnFacts {
                    column_type: if t == "bigint" {
                        "bigint(20)".into()
                    } else {
                        t
                    },
                    nullable: !matches!(c.name, "event_key" | "event_date" | "row_hash"),
                    collation: text.then(|| "utf8mb4_bin".to_string()),
                },
            );
        }
        facts.columns.insert(
            "changed_at".into(),
            ColumnFacts {
                column_type: "datetime(6)".into(),
                nullable: false,
                collation: None,
            },
        );
        facts
    }

    #[test]
    fn the_contract_itself_passes_on_either_server() {
        assert!(differences("ota_events", &facts_of_contract()).is_empty());
    }

    #[test]
    fn each_alteration_is_named() {
        let mut facts = facts_of_contract();
        facts.engine = Some("MyISAM".into());
        if let Some(c) = facts.columns.get_mut("hotel_name") {
            c.column_type = "varchar(10)".into();
        }
        if let Some(c) = facts.columns.get_mut("country") {
            c.nullable = false;
        }
        facts.columns.remove("nights");
        facts.columns.insert(
            "note".into(),
            ColumnFacts {
                column_type: "text".into(),
                nullable: true,
                collation: None,
            },
        );
        facts
            .unique_keys
            .insert("by_request".into(), "request_id".into());
        facts
            .foreign_keys
            .push(("fk_orders".into(), "orders".into(), "ota_events".into()));
        facts.triggers.push(("audit".into(), "DELETE".into()));
        let found = differences("ota_events", &facts).join("\n");
        for expected in [
            "MyISAM",
            "hotel_name is varchar(10)",
            "country is NOT NULL",
            "nights is missing",
            "note is not part",
            "by_request",
            "fk_orders of orders",
            "audit",
        ] {
            assert!(found.contains(expected), "{expected} in:\n{found}");
        }
    }
}
