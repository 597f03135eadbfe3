//! Storage backends for `paxos-core`, chosen by feature flags.
//!
//! - `memory` (default): [`MemoryStorage`], state in process memory. Fast; lost
//!   when the process exits, so only for tests, benchmarks and examples.
//!
//! Each backend passes `paxos_core::conformance::storage_suite`.
#![deny(missing_docs)]

#[cfg(feature = "memory")]
mod memory;

#[cfg(feature = "memory")]
pub use memory::{MemoryError, MemoryStorage};
