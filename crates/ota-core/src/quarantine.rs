//! Why load-raw keeps a file version out of the loads: a kind of its own, below the
//! errors that carry it and the warehouses that record it.

use serde::Serialize;

/// Why a file version was kept out of the loads.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum QuarantineKind {
    /// Its content cannot be loaded: only a new version leaves quarantine.
    Unreadable,
    /// It holds far fewer rows than the version it would replace: each run checks it
    /// again, so a new version, or a run that allows shrinking, leaves quarantine.
    Shrunk,
    /// More of its rows were rejected than `--max-rejected-pct` allows: each run checks
    /// it again, so a new version, or a looser limit, leaves quarantine.
    Rejected,
    /// It has columns the event contract does not know and the run was told to hold such
    /// files (`--unknown-columns quarantine`): checked again each run, like `Rejected`.
    UnknownColumns,
}

impl QuarantineKind {
    pub fn name(self) -> &'static str {
        match self {
            QuarantineKind::Unreadable => "unreadable",
            QuarantineKind::Shrunk => "shrunk",
            QuarantineKind::Rejected => "rejected",
            QuarantineKind::UnknownColumns => "unknown_columns",
        }
    }

    pub fn parse(name: &str) -> QuarantineKind {
        match name {
            "shrunk" => QuarantineKind::Shrunk,
            "rejected" => QuarantineKind::Rejected,
            "unknown_columns" => QuarantineKind::UnknownColumns,
            _ => QuarantineKind::Unreadable,
        }
    }
}
