//! Basic versus Multi-Paxos throughput and latency, measured two ways:
//!
//! - [`protocol_loop`]: the protocol alone. Sans-IO replicas driven in one thread,
//!   messages in a queue, no runtime, no serialization.
//! - [`node_run`]: through the async `paxos_core::Node` over a transport
//!   (in-memory; TCP loopback with feature `tcp`) and a storage (in-memory; file
//!   storage with group commit with feature `file`), under tokio.
//!
//! Every run ends with an agreement check ([`check`]): each replica's applied log
//! must hold every submitted command, in the same slots and order as every other
//! replica's. A run that fails it returns an error, never a figure.
//!
//! `cargo xtask bench` runs the default comparison through the `paxos-bench`
//! binary and writes `target/paxos-bench/report.{json,svg}`; `cargo xtask bench
//! --full` runs the criterion suite (`benches/`).
//!
//! # Example: the protocol alone, briefly
//!
//! ```
//! use std::time::Duration;
//! use paxos_bench::{run, ProtocolKind, Spec, StorageKind, TransportKind};
//!
//! let spec = Spec {
//!     protocol: ProtocolKind::Multi,
//!     transport: TransportKind::Loop,
//!     storage: StorageKind::Memory,
//!     replicas: 3,
//!     command_bytes: 8,
//!     in_flight: 64,
//!     batch: true,
//! };
//! let measurement = run(&spec, Duration::from_millis(5), Duration::from_millis(20)).unwrap();
//! assert!(measurement.ops_per_sec() > 0.0);
//! ```
#![deny(missing_docs)]

pub mod check;
pub mod measure;
pub mod node_run;
/// OmniPaxos 0.2.4 in the same one-thread loop, for the head-to-head bench (feature `compare-omnipaxos`).
#[cfg(feature = "compare-omnipaxos")]
pub mod omnipaxos_loop;
pub mod protocol_loop;
pub mod report;
pub mod spec;

use std::time::Duration;

/// With feature `mimalloc` (on by default), every binary built on this crate (the
/// `paxos-bench` command, the criterion benches, the examples) allocates with
/// mimalloc, as many production services do. Build with `--no-default-features`
/// plus the backends you want to measure with the system allocator instead.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

pub use check::{check_agreement, AgreementError, AppliedLog, Submitted};
pub use measure::{peak_rss_bytes, Measurement};
pub use spec::{ProtocolKind, Record, Spec, SpecError, StorageKind, TransportKind};

/// Why a run produced no figure.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The protocol-alone loop failed.
    #[error(transparent)]
    Loop(#[from] protocol_loop::LoopError),
    /// The node run failed.
    #[error(transparent)]
    Node(#[from] node_run::NodeRunError),
    /// Not one command was applied in the measured window: zero is no figure.
    #[error("no command was applied in the {window:?} measured; a longer --window-ms may give one")]
    NothingApplied {
        /// The measured window.
        window: Duration,
    },
}

/// Runs `spec` with the driver its transport calls for, and checks agreement.
pub fn run(spec: &Spec, warm_up: Duration, window: Duration) -> Result<Measurement, RunError> {
    let measurement = match spec.transport {
        TransportKind::Loop => protocol_loop::run(spec, warm_up, window)?,
        _ => node_run::run(spec, warm_up, window)?,
    };
    if measurement.commands == 0 {
        return Err(RunError::NothingApplied { window });
    }
    Ok(measurement)
}
