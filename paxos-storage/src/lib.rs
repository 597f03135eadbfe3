//! Storage backends for `paxos-core`, chosen by feature flags.
//!
//! - `memory` (default): [`MemoryStorage`], state in process memory. Fast; lost
//!   when the process exits, so only for tests, benchmarks and examples.
//! - `file`: `FileStorage`, a crash-safe append-only log in a directory: CRC32C on
//!   every record, fdatasync before `append` returns, group commit, checkpoints that
//!   keep disk use bounded, torn-tail recovery, and an exclusive directory lock.
//!
//! Each backend passes `paxos_core::conformance::storage_suite`.
#![deny(missing_docs)]

#[cfg(feature = "file")]
pub mod file;
#[cfg(feature = "memory")]
mod memory;

#[cfg(feature = "file")]
pub use file::{FileError, FileOptions, FileStats, FileStorage};
#[cfg(feature = "memory")]
pub use memory::{MemoryError, MemoryStorage};
