//! ota-mysql: the MySQL sink (MySQL 8, MariaDB 10.6+): the serving table, the forward
//! offset and the batch loader (`LOAD DATA LOCAL INFILE ... REPLACE` straight into the
//! serving table, tombstones deleted by key; re-syncs compare through a staging table
//! first). It speaks `ota-core`'s change batches and knows no warehouse.

mod changes;
mod config;
mod connection;
mod content;
mod encode;
mod sink;
mod sql;
mod table_contract;

pub use changes::{ChangeRows, split_changes, target_projection};
pub use config::{
    ConnectionSettings, DEFAULT_IO_TIMEOUT_SECS, LoadMethod, MysqlConfig, SslMode, mask_url,
};
pub use connection::lock_name;
pub use sink::{CommitEveryBatch, CommitGate, MysqlTarget, StoredOffset};

/// The LOAD DATA stream and statements the sink sends, for the benchmark that measures
/// them against the server's own loader with the very same bytes.
pub mod load_data {
    pub use crate::encode::RowEncoder;
    pub use crate::sql::{OnDuplicate, SESSION_SETUP, load_data, target_columns};
}
