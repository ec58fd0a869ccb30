//! ota-core: what every crate of the OTA event pipeline speaks.
//!
//! [`contract`] and [`typing`] define the events and their typing rules, [`typed_batch`]
//! applies them to Arrow batches; [`window`] is the date window a run covers; [`change`]
//! is the change-batch contract between the warehouses and the MySQL sink; [`error`] the
//! errors and the exit code each maps to. No backend, no I/O.

pub mod change;
pub mod contract;
pub mod error;
pub mod hex;
pub mod quarantine;
pub mod typed_batch;
pub mod typing;
pub mod window;

pub use error::{PipelineError, Result};
pub use window::DateWindow;
