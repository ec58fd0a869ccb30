//! The JSON summary every step prints as the last line of stdout.

use serde::Serialize;
use serde_json::{Map, Value};

use ota_core::window::DateWindow;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    NoData,
    /// reconcile found differences (exit code 1)
    Drift,
    /// Done, but some files were quarantined and not loaded (exit code 3)
    Partial,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct Counts {
    pub files: u64,
    pub rows_read: u64,
    pub rejected: u64,
    pub duplicates_removed: u64,
    pub rows_written: u64,
    pub batches: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct StepSummary {
    pub step: &'static str,
    pub status: Status,
    pub window: Option<DateWindow>,
    pub counts: Counts,
    pub duration_ms: u64,
    /// What the next step needs and step-specific figures.
    #[serde(flatten)]
    pub details: Map<String, Value>,
    /// Lines for the reader printed before the summary (the reconcile table, a dry
    /// run's statements); not part of the JSON.
    #[serde(skip)]
    pub report: Vec<String>,
}

impl StepSummary {
    pub fn new(step: &'static str, window: Option<DateWindow>) -> Self {
        StepSummary {
            step,
            status: Status::Ok,
            window,
            counts: Counts::default(),
            duration_ms: 0,
            details: Map::new(),
            report: Vec::new(),
        }
    }

    /// Adds a step-specific field.
    pub fn detail(&mut self, key: &str, value: impl Serialize) {
        self.details.insert(
            key.to_string(),
            serde_json::to_value(value).unwrap_or(Value::Null),
        );
    }

    /// Records what the warehouse did for the step: its jobs in the summary, a dry run's
    /// statements in the report.
    pub fn record_warehouse(&mut self, warehouse: &mut dyn ota_warehouse::Warehouse) {
        self.report.extend(warehouse.take_report());
        if let Some(jobs) = warehouse.job_log() {
            self.detail("warehouse_jobs", jobs);
        }
    }

    pub fn to_json_line(&self) -> String {
        serde_json::to_string(self)
            .unwrap_or_else(|e| format!("{{\"step\":\"{}\",\"error\":\"{e}\"}}", self.step))
    }
}
