//! The hostile catalogue: input planted in the lake and an operator's actions, each case
//! checking its own outcome (what quarantined with which kind, which rows were rejected
//! why, what MySQL serves) before the day is healed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{
    Array, ArrayRef, AsArray, BinaryArray, Int64Array, RecordBatch, StringArray, StructArray,
};
use arrow::datatypes::{DataType, Field, Int64Type, Schema};

use super::{
    HarnessError, Result, START, World, chrono_day, data, day_file, io, last_json, last_line,
    read_parquet, server_address, write_parquet,
};
use crate::FaultOutcome;

/// The hostile catalogue, one case per try: input planted in the lake, and operator
/// actions. Each case checks its own outcome before the day is healed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Hostile {
    /// SQL- and LOAD DATA-shaped text in every string column: loads as it is.
    SqlShapedText,
    /// request_id as raw bytes, one of them not UTF-8: that row is rejected.
    NonUtf8Key,
    /// Epoch timestamps in milliseconds instead of nanoseconds: read as milliseconds.
    EpochMillis,
    /// Epoch timestamps in seconds instead of nanoseconds: read as seconds.
    EpochSeconds,
    /// A few rows 400 days from the file's day (a broken clock): those rows are rejected.
    FarFromFileDay,
    /// A loaded day re-delivered with as many rows, none with a usable timestamp: a
    /// shrink to nothing, quarantined; MySQL keeps the day.
    AllRejected,
    /// request_id as a struct, a type with no text form: every row rejected, quarantined
    /// as shrunk.
    WrongTypedKey,
    /// A day's file overwritten with bytes that are not Parquet: quarantined unreadable.
    CorruptFile,
    /// A loaded day re-delivered with no rows: quarantined as shrunk.
    EmptyRedelivery,
    /// A new, empty warehouse (a new URL, a rebuilt file) that loaded only the last day:
    /// its feed is refused, a full refresh holds the dates it does not know.
    FreshWarehouse,
    /// Rows edited by hand in MySQL: reconcile reports drift, a backfill repairs them.
    HandEdit,
    /// The serving table given an extra UNIQUE key: the export refuses to write.
    AlteredTable,
    /// Two runs alternating their tasks (a scheduled run and a backfill): all end well.
    InterleavedRuns,
    /// A MySQL password with characters URLs reserve: it works percent-encoded, and an
    /// unencoded URL is refused without showing it.
    ReservedPassword,
}

pub const HOSTILE_INPUTS: [Hostile; 14] = [
    Hostile::SqlShapedText,
    Hostile::NonUtf8Key,
    Hostile::EpochMillis,
    Hostile::EpochSeconds,
    Hostile::FarFromFileDay,
    Hostile::AllRejected,
    Hostile::WrongTypedKey,
    Hostile::CorruptFile,
    Hostile::EmptyRedelivery,
    Hostile::FreshWarehouse,
    Hostile::HandEdit,
    Hostile::AlteredTable,
    Hostile::InterleavedRuns,
    Hostile::ReservedPassword,
];

impl Hostile {
    /// The quarantine kind a planted file must get, or None when it must load.
    fn quarantine_kind(self) -> Option<&'static str> {
        match self {
            Hostile::AllRejected | Hostile::WrongTypedKey | Hostile::EmptyRedelivery => {
                Some("shrunk")
            }
            Hostile::CorruptFile => Some("unreadable"),
            _ => None,
        }
    }

    /// Whether the case is an operator's action rather than a file in the lake. These
    /// are tried on the embedded default: they act on MySQL and the warehouse's URL, the
    /// same on either backend.
    pub fn is_operator_action(self) -> bool {
        matches!(
            self,
            Hostile::FreshWarehouse
                | Hostile::HandEdit
                | Hostile::AlteredTable
                | Hostile::InterleavedRuns
                | Hostile::ReservedPassword
        )
    }
}

/// Distance of the far rows [`Hostile::FarFromFileDay`] plants, in days.
const FAR_DAYS: i64 = 400;
/// Rows [`Hostile::FarFromFileDay`] moves (under the 10% that would quarantine the file).
const FAR_ROWS: usize = 7;

/// Values that break naive SQL or LOAD DATA encoding.
const SQL_SHAPED: [&str; 12] = [
    "'; DROP TABLE ota_events; --",
    "\\N",
    "NULL",
    "a\tb\nc\\d",
    "\"quoted\" and 'single'",
    "`tick`",
    "%_ LIKE",
    "é中文🙂",
    "",
    " ",
    "x' OR '1'='1",
    "\r\n\\",
];

impl World {
    /// Plants one hostile input in the lake (a fresh version of the day first, so every
    /// plant is a new delivery); returns the planted file's local path.
    fn plant(&self, hostile: Hostile, i: u32) -> Result<PathBuf> {
        let name = day_file(&chrono_day(START, i % self.days));
        let path = self.lake().join(&name);
        self.change_one_day(i)?;
        self.plant_in(&path, hostile)?;
        self.deliver(&name)?;
        Ok(path)
    }

    fn plant_in(&self, path: &Path, hostile: Hostile) -> Result<()> {
        // One batch, so what a plant does to "the first rows" it does once per file.
        let batches = read_parquet(path)?;
        let schema = batches
            .first()
            .map(|b| b.schema())
            .ok_or_else(|| HarnessError::Step("an empty generated file".into()))?;
        let batches = vec![
            arrow::compute::concat_batches(&schema, &batches)
                .map_err(data("joining a file's batches"))?,
        ];
        let column = |name: &'static str, f: fn(&ArrayRef) -> Option<ArrayRef>| {
            map_columns(batches.clone(), move |n, col| {
                (n == name).then(|| f(col)).flatten()
            })
        };
        let planted = match hostile {
            Hostile::SqlShapedText => map_columns(batches.clone(), sql_shaped)?,
            Hostile::NonUtf8Key => column("request_id", non_utf8)?,
            Hostile::EpochMillis => column("timestamp", |c| scaled(c, 1_000_000))?,
            Hostile::EpochSeconds => column("timestamp", |c| scaled(c, 1_000_000_000))?,
            Hostile::FarFromFileDay => column("timestamp", far_from_day)?,
            Hostile::AllRejected => column("timestamp", unusable)?,
            Hostile::WrongTypedKey => column("request_id", |c| Some(as_struct(c)))?,
            Hostile::CorruptFile => {
                return std::fs::write(path, b"PAR1 this is not a parquet file PAR1")
                    .map_err(io("writing a corrupt file"));
            }
            Hostile::EmptyRedelivery => vec![RecordBatch::new_empty(schema)],
            other => {
                return Err(HarnessError::Step(format!(
                    "{other:?} is not planted in the lake"
                )));
            }
        };
        write_parquet(path, &planted)
    }

    /// Heals a planted file: the same day re-delivered with good content.
    pub fn heal(&self, i: u32) -> Result<()> {
        let day = chrono_day(START, i % self.days);
        self.generate(self.seed + 5000 + u64::from(i), &day, 1)
    }

    /// Tries one case of the hostile catalogue: it strikes, its own outcome is checked
    /// (what quarantined with which kind, which rows were rejected why, what MySQL
    /// serves), then the day is healed and the window recovers. Says whether all held.
    pub fn try_hostile(
        &mut self,
        hostile: Hostile,
        i: u32,
        outcome: &mut FaultOutcome,
    ) -> Result<bool> {
        let before = outcome.problems.len();
        let mut problem = |what: String| outcome.problems.push(format!("{hostile:?}: {what}"));
        let mut found = Vec::new();
        match hostile {
            Hostile::FreshWarehouse => self.fresh_warehouse(&mut found)?,
            Hostile::HandEdit => self.hand_edit(&mut found)?,
            Hostile::AlteredTable => self.altered_table(i, &mut found)?,
            Hostile::InterleavedRuns => self.interleaved_runs(i, &mut found)?,
            Hostile::ReservedPassword => self.reserved_password(i, &mut found)?,
            planted => self.planted_file(planted, i, &mut found)?,
        }
        found.into_iter().for_each(&mut problem);
        if !hostile.is_operator_action() {
            self.heal(i)?;
        }
        self.recover(outcome)?;
        let now = self.difference()?;
        if !now.none() {
            outcome.problems.push(format!(
                "{hostile:?}: after recovering, MySQL against the reference: {now}"
            ));
        }
        Ok(outcome.problems.len() == before)
    }

    /// A planted file: quarantined with the kind the case calls for and MySQL unchanged,
    /// or loaded with the rows the reference rejects rejected and MySQL equal to the
    /// reference.
    fn planted_file(&mut self, hostile: Hostile, i: u32, found: &mut Vec<String>) -> Result<()> {
        let before = self.served_rows()?;
        let file = self.plant(hostile, i)?;
        let Some(load) = self.run_window(&[3], found)? else {
            return Ok(());
        };
        self.check(found)?;
        let quarantined = load["files_quarantined"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        match hostile.quarantine_kind() {
            Some(kind) => {
                let kinds: Vec<&str> = quarantined
                    .iter()
                    .filter_map(|q| q["kind"].as_str())
                    .collect();
                if kinds != [kind] {
                    found.push(format!("quarantined {kinds:?}, expected [{kind:?}]"));
                }
                let changed = crate::reference::compare(&before, &self.served_rows()?);
                if !changed.none() {
                    found.push(format!("MySQL changed for a refused day: {changed}"));
                }
            }
            None => {
                if !quarantined.is_empty() {
                    found.push(format!(
                        "quarantined a file that must load: {quarantined:?}"
                    ));
                }
                let reference = self.reference()?;
                let rejects = reference.rejects_of(&file)?;
                let expected: u64 = rejects.values().sum();
                let counted = load["counts"]["rejected"].as_u64().unwrap_or(u64::MAX);
                if counted != expected {
                    found.push(format!(
                        "load-raw rejected {counted} rows, the reference {expected} ({rejects:?})"
                    ));
                }
                let planted_reason = match hostile {
                    Hostile::NonUtf8Key => Some(("not_text", 1)),
                    Hostile::FarFromFileDay => Some(("far_from_file_day", FAR_ROWS as u64)),
                    _ => None,
                };
                if let Some((reason, n)) = planted_reason
                    && rejects.get(reason).copied() != Some(n)
                {
                    found.push(format!(
                        "the reference rejects {rejects:?}, expected {n} {reason}"
                    ));
                }
                let served = crate::reference::compare(&reference.served()?, &self.served_rows()?);
                if !served.none() {
                    found.push(format!("MySQL against the reference: {served}"));
                }
            }
        }
        Ok(())
    }

    /// A new warehouse that loaded only the last day: the export refuses its feed (exit
    /// 2), a full refresh holds every date it does not know (exit 3), MySQL unchanged;
    /// once it has loaded the window, a full refresh moves MySQL over.
    fn fresh_warehouse(&mut self, found: &mut Vec<String>) -> Result<()> {
        let before = self.served_rows()?;
        let aside = self.warehouse.with_extension("old.duckdb");
        std::fs::rename(&self.warehouse, &aside).map_err(io("moving the warehouse aside"))?;
        let wal = self.warehouse.with_extension("duckdb.wal");
        if wal.exists() {
            std::fs::rename(&wal, aside.with_extension("duckdb.wal"))
                .map_err(io("moving the warehouse's log aside"))?;
        }
        let last = chrono_day(START, self.days - 1);
        let last_day = [
            "--start-date".to_string(),
            last.clone(),
            "--end-date".into(),
            last.clone(),
        ];
        for step in ["stage-files", "load-raw", "dedup"] {
            self.expect_exit(self.step_over(step, &last_day), step, 0, found)?;
        }
        self.expect_exit(
            self.step("export-mysql"),
            "export-mysql onto a foreign feed",
            2,
            found,
        )?;
        let mut refresh = self.step("export-mysql");
        refresh.arg("--full-refresh");
        let out = self.expect_exit(refresh, "export-mysql --full-refresh", 3, found)?;
        // Every served date but the last day's own is held: one the new warehouse has no
        // row of, or of which it has only late events (a re-sync would delete most of it).
        let mut held: Vec<String> = last_json(&out)["held_dates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d["event_date"].as_str().map(str::to_string))
            .collect();
        held.sort();
        let mut expected: Vec<String> = before.iter().filter_map(|r| r[0].clone()).collect();
        expected.sort();
        expected.dedup();
        expected.retain(|d| *d != last);
        if held != expected {
            found.push(format!(
                "--full-refresh held {held:?}, expected {expected:?}"
            ));
        }
        let changed = crate::reference::compare(&before, &self.served_rows()?);
        if !changed.none() {
            found.push(format!(
                "MySQL changed by a warehouse that knows one day: {changed}"
            ));
        }
        for step in ["stage-files", "load-raw", "dedup"] {
            self.expect_exit(self.step(step), step, 0, found)?;
        }
        let mut refresh = self.step("export-mysql");
        refresh.arg("--full-refresh");
        self.expect_exit(refresh, "export-mysql --full-refresh", 0, found)?;
        self.offset = self.offset_now()?;
        Ok(())
    }

    /// Five rows edited by hand: `--reconcile` reports drift (exit 1) on their dates, a
    /// backfill of those dates repairs them.
    fn hand_edit(&mut self, found: &mut Vec<String>) -> Result<()> {
        self.in_db(
            "UPDATE ota_events SET hotel_name = 'edited by hand' \
             ORDER BY event_date DESC, event_key LIMIT 5",
        )?;
        let mut reconcile = self.step("export-mysql");
        reconcile.arg("--reconcile");
        let out = self.expect_exit(reconcile, "export-mysql --reconcile", 1, found)?;
        let summary = last_json(&out);
        let mut drift: Vec<String> = summary["drift_dates"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|d| d.as_str().map(str::to_string))
            .collect();
        drift.sort();
        let (Some(first), Some(last)) = (drift.first().cloned(), drift.last().cloned()) else {
            found.push(format!("reconcile after a hand edit: {}", last_line(&out)));
            return Ok(());
        };
        let dates = ["--start-date".to_string(), first, "--end-date".into(), last];
        self.expect_exit(
            self.step_over("export-mysql", &dates),
            "export-mysql with the drifted dates",
            0,
            found,
        )?;
        let now = self.difference()?;
        if !now.none() {
            found.push(format!(
                "the backfill left MySQL unlike the reference: {now}"
            ));
        }
        Ok(())
    }

    /// An extra UNIQUE key on the serving table: the export refuses (exit 2) naming it
    /// and writes nothing; without it, the export goes on.
    fn altered_table(&mut self, i: u32, found: &mut Vec<String>) -> Result<()> {
        self.change_one_day(i)?;
        self.run_before("export-mysql")?;
        let before = self.served_rows()?;
        self.in_db(
            "ALTER TABLE ota_events ADD UNIQUE KEY chaos_extra (event_key, request_id(40))",
        )?;
        let out = self.expect_exit(
            self.step("export-mysql"),
            "export-mysql into an altered table",
            2,
            found,
        )?;
        if !String::from_utf8_lossy(&out.stderr).contains("chaos_extra") {
            found.push(format!(
                "the refusal does not name the extra key: {}",
                String::from_utf8_lossy(&out.stderr).trim()
            ));
        }
        let changed = crate::reference::compare(&before, &self.served_rows()?);
        if !changed.none() {
            found.push(format!("an altered table was written to: {changed}"));
        }
        self.in_db("ALTER TABLE ota_events DROP KEY chaos_extra")?;
        Ok(())
    }

    /// Two runs alternating their tasks, each with its own staged set: every task exits
    /// 0 and the reconcile between finds pending changes, never drift.
    fn interleaved_runs(&mut self, i: u32, found: &mut Vec<String>) -> Result<()> {
        let ids = [
            ("a", format!("{}_a", self.run_id())),
            ("b", format!("{}_b", self.run_id())),
        ];
        let run = |name: &str, step: &str| {
            let mut cmd = self.step(step);
            if let Some((_, id)) = ids.iter().find(|(n, _)| *n == name) {
                cmd.env("OTA_RUN_ID", id);
            }
            cmd
        };
        self.change_one_day(i)?;
        self.expect_exit(run("a", "stage-files"), "stage-files of run a", 0, found)?;
        self.change_one_day(i + 1)?;
        self.expect_exit(run("b", "stage-files"), "stage-files of run b", 0, found)?;
        for step in ["load-raw", "dedup", "export-mysql"] {
            for name in ["a", "b"] {
                self.expect_exit(run(name, step), &format!("{step} of run {name}"), 0, found)?;
            }
            if step == "dedup" {
                let mut reconcile = run("a", "export-mysql");
                reconcile.arg("--reconcile");
                let out = self.expect_exit(reconcile, "reconcile between the runs", 0, found)?;
                if last_json(&out)["status"] != "ok" {
                    found.push(format!("reconcile between the runs: {}", last_line(&out)));
                }
            }
        }
        Ok(())
    }

    /// A MySQL user whose password holds characters URLs reserve: percent-encoded it
    /// works; written as it is, the URL is refused and the password shows nowhere.
    fn reserved_password(&mut self, i: u32, found: &mut Vec<String>) -> Result<()> {
        const PASSWORD: &str = "p@ss:w/rd?#%41";
        let user = format!("chaos_pw_{}", std::process::id());
        self.server(&format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"))?;
        self.server(&format!(
            "CREATE USER '{user}'@'127.0.0.1' IDENTIFIED BY '{PASSWORD}'"
        ))?;
        self.server(&format!(
            "GRANT ALL ON `{}`.* TO '{user}'@'127.0.0.1'",
            self.db
        ))?;
        self.change_one_day(i)?;
        self.run_before("export-mysql")?;
        let address = server_address(&self.server_url);
        let url = |password: &str| {
            format!(
                "mysql://{user}:{password}@{address}/{}?prefer_socket=false",
                self.db
            )
        };
        let mut raw = self.step("export-mysql");
        raw.env("OTA_MYSQL_URL", url(PASSWORD));
        let out = self.expect_exit(raw, "export-mysql with an unencoded password", 2, found)?;
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        if said.contains("ss:w/rd") {
            found.push("an unencoded password was printed".into());
        }
        let mut encoded = self.step("export-mysql");
        encoded.env("OTA_MYSQL_URL", url(&percent_encoded(PASSWORD)));
        let out = self.expect_exit(
            encoded,
            "export-mysql with a percent-encoded password",
            0,
            found,
        )?;
        if String::from_utf8_lossy(&out.stderr).contains("ss:w/rd") {
            found.push("the password was printed".into());
        }
        self.server(&format!("DROP USER IF EXISTS '{user}'@'127.0.0.1'"))?;
        Ok(())
    }
}

/// Every batch with the columns `f` returns a replacement for replaced (types may change).
fn map_columns(
    batches: Vec<RecordBatch>,
    f: impl Fn(&str, &ArrayRef) -> Option<ArrayRef>,
) -> Result<Vec<RecordBatch>> {
    batches
        .into_iter()
        .map(|b| {
            let schema = b.schema();
            let mut fields = Vec::new();
            let mut columns = Vec::new();
            for (field, column) in schema.fields().iter().zip(b.columns()) {
                let column = f(field.name(), column).unwrap_or_else(|| column.clone());
                fields.push(Field::new(field.name(), column.data_type().clone(), true));
                columns.push(column);
            }
            RecordBatch::try_new(Arc::new(Schema::new(fields)), columns)
                .map_err(data("rebuilding a batch"))
        })
        .collect()
}

/// A text column with SQL-shaped values in its first rows (request_id stays unique).
fn sql_shaped(name: &str, column: &ArrayRef) -> Option<ArrayRef> {
    if column.data_type() != &DataType::Utf8 {
        return None;
    }
    let text = column.as_string::<i32>();
    let values: StringArray = (0..text.len())
        .map(|row| {
            if row >= 60 {
                return text.is_valid(row).then(|| text.value(row).to_string());
            }
            let shaped = SQL_SHAPED[row % SQL_SHAPED.len()];
            Some(if name == "request_id" {
                format!("{shaped}#{row}")
            } else {
                shaped.to_string()
            })
        })
        .collect();
    Some(Arc::new(values))
}

/// request_id as raw bytes, the first value not UTF-8.
fn non_utf8(column: &ArrayRef) -> Option<ArrayRef> {
    let text = column.as_string_opt::<i32>()?;
    let values: BinaryArray = (0..text.len())
        .map(|row| {
            text.is_valid(row).then(|| {
                let mut bytes = text.value(row).as_bytes().to_vec();
                if row == 0 {
                    bytes.push(0xff);
                }
                bytes
            })
        })
        .collect();
    Some(Arc::new(values))
}

/// int64 epoch nanoseconds divided by `by` (milliseconds, seconds).
fn scaled(column: &ArrayRef, by: i64) -> Option<ArrayRef> {
    let ns = column.as_primitive_opt::<Int64Type>()?;
    Some(Arc::new(
        ns.iter().map(|v| v.map(|v| v / by)).collect::<Int64Array>(),
    ))
}

/// A column wrapped in a one-field struct.
fn as_struct(column: &ArrayRef) -> ArrayRef {
    let field = Arc::new(Field::new("value", column.data_type().clone(), true));
    Arc::new(StructArray::from(vec![(field, column.clone())]))
}

/// Every byte but letters and digits as %XX.
fn percent_encoded(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() {
                (b as char).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// A few timestamps moved [`FAR_DAYS`] days away from the file's day.
fn far_from_day(column: &ArrayRef) -> Option<ArrayRef> {
    let ns = column.as_primitive_opt::<Int64Type>()?;
    let shift = FAR_DAYS * 86_400_000_000_000;
    let mut moved = 0;
    Some(Arc::new(
        ns.iter()
            .map(|v| {
                v.map(|v| {
                    if moved < FAR_ROWS && v > 0 {
                        moved += 1;
                        v - shift
                    } else {
                        v
                    }
                })
            })
            .collect::<Int64Array>(),
    ))
}

/// Every timestamp a value that is a time in no unit.
fn unusable(column: &ArrayRef) -> Option<ArrayRef> {
    Some(Arc::new(Int64Array::from(vec![Some(5_i64); column.len()])))
}
