//! Typed errors of the pipeline, and the exit code each maps to.

use std::path::PathBuf;

/// Result alias used across the library.
pub type Result<T, E = PipelineError> = std::result::Result<T, E>;

/// Everything that can stop a step. Variants carry the context a data engineer needs to
/// act on the message (which file, which setting, which statement).
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// Bad flags, environment or URLs: the user must fix the invocation (exit code 2).
    #[error("invalid configuration: {0}")]
    Config(String),

    /// A malformed or inconsistent date window (exit code 2).
    #[error("invalid date window: {0}")]
    Window(String),

    /// A fault inside the pipeline or in what a service handed back (a malformed change
    /// batch, a reader thread that panicked, a token that could not be fetched): nothing
    /// the user's input or settings caused, so exit code 1 and a retry may help.
    #[error("internal error: {0}")]
    Internal(String),

    /// A file in the lake that cannot be read as the event contract requires.
    #[error("cannot read {uri}: {reason}")]
    BadFile { uri: String, reason: String },

    /// A daily file whose content cannot be loaded as it is (not Parquet, truncated, no
    /// key columns, or far smaller than the version it would replace): load-raw
    /// quarantines that version and loads the other files.
    #[error("cannot read {uri}: {reason}")]
    BadContent {
        uri: String,
        reason: String,
        kind: crate::quarantine::QuarantineKind,
    },

    #[error("I/O error on {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },

    #[error("parquet error in {uri}: {source}")]
    Parquet {
        uri: String,
        #[source]
        source: parquet::errors::ParquetError,
    },

    #[error("arrow error while {context}: {source}")]
    Arrow {
        context: String,
        #[source]
        source: arrow::error::ArrowError,
    },

    #[error("warehouse error while {context}: {source}")]
    Warehouse {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("lake error while {context}: {source}")]
    Lake {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    #[error("MySQL error while {context}: {source}")]
    Mysql {
        context: String,
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },

    /// MySQL took a load but warned about its values (LOCAL loads turn conversion errors
    /// into warnings): the batch is rolled back rather than stored altered.
    #[error("MySQL warned while {context}, so nothing of it was kept: {warnings}")]
    MysqlWarnings { context: String, warnings: String },

    /// A server or network stopped answering: nothing was committed past the last
    /// completed transaction.
    #[error("no answer from {context} within {secs} s")]
    Timeout { context: String, secs: u64 },

    /// Another run holds the per-table lock.
    #[error("{0}")]
    Locked(String),

    /// More days of the window have no daily file than `--max-missing-days` allows; a
    /// later try may find files that landed since (exit code 1).
    #[error(
        "{} day(s) of the window have no daily file ({}), more than --max-missing-days {limit}: \
         nothing was staged",
        missing.len(),
        missing.join(", ")
    )]
    MissingDays { missing: Vec<String>, limit: u32 },

    /// The warehouse and MySQL disagree (reconcile).
    #[error("{0}")]
    Drift(String),
}

impl PipelineError {
    /// Process exit code for this error: 2 for bad input or configuration, 1 otherwise.
    pub fn exit_code(&self) -> i32 {
        match self {
            PipelineError::Config(_) | PipelineError::Window(_) => 2,
            _ => 1,
        }
    }

    pub fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        PipelineError::Io {
            path: path.into(),
            source,
        }
    }

    pub fn arrow(context: impl Into<String>, source: arrow::error::ArrowError) -> Self {
        PipelineError::Arrow {
            context: context.into(),
            source,
        }
    }

    pub fn warehouse(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        PipelineError::Warehouse {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn lake(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        PipelineError::Lake {
            context: context.into(),
            source: Box::new(source),
        }
    }

    pub fn mysql(
        context: impl Into<String>,
        source: impl std::error::Error + Send + Sync + 'static,
    ) -> Self {
        PipelineError::Mysql {
            context: context.into(),
            source: Box::new(source),
        }
    }
}
