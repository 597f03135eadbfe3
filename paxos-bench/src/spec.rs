//! What one benchmark run measures: protocol, transport, storage, cluster size,
//! command size, commands in flight and batching, and what it reports.

use std::fmt;
use std::str::FromStr;

use paxos_core::Protocol;
use serde::{Deserialize, Serialize};

/// How the replicas talk to each other.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TransportKind {
    /// The protocol alone: sans-IO replicas in one thread, messages in a queue, no runtime.
    Loop,
    /// `paxos_core::Node`s over `paxos_core::memory::MemoryNetwork` under tokio.
    Memory,
    /// `paxos_core::Node`s over TCP loopback (feature `tcp`).
    Tcp,
    /// `paxos_core::Node`s over ZeroMQ loopback (feature `zmq`).
    Zmq,
}

/// Where acceptors make their state durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageKind {
    /// In memory (`DurableState` in the loop, `MemoryStorage` for nodes).
    Memory,
    /// `FileStorage` with group commit, in a temporary directory (feature `file`).
    File,
}

/// A run's protocol, as it appears in the report.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProtocolKind {
    /// Single-decree Basic Paxos per slot.
    Basic,
    /// Multi-Paxos with a stable leader.
    Multi,
}

impl From<ProtocolKind> for Protocol {
    fn from(kind: ProtocolKind) -> Protocol {
        match kind {
            ProtocolKind::Basic => Protocol::Basic,
            ProtocolKind::Multi => Protocol::Multi,
        }
    }
}

/// A name on the command line that is not one of the known values.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} {given:?}; expected one of: {expected}")]
pub struct ParseKindError {
    what: &'static str,
    given: String,
    expected: &'static str,
}

macro_rules! named_enum {
    ($type:ident, $what:literal, $expected:literal, { $($name:literal => $variant:ident),+ $(,)? }) => {
        impl FromStr for $type {
            type Err = ParseKindError;
            fn from_str(text: &str) -> Result<Self, ParseKindError> {
                match text {
                    $($name => Ok($type::$variant),)+
                    _ => Err(ParseKindError { what: $what, given: text.to_string(), expected: $expected }),
                }
            }
        }
        impl fmt::Display for $type {
            fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str(match self {
                    $($type::$variant => $name,)+
                })
            }
        }
    };
}

named_enum!(TransportKind, "transport", "loop, memory, tcp, zmq", {
    "loop" => Loop, "memory" => Memory, "tcp" => Tcp, "zmq" => Zmq,
});
named_enum!(StorageKind, "storage", "memory, file", { "memory" => Memory, "file" => File });
named_enum!(ProtocolKind, "protocol", "basic, multi", { "basic" => Basic, "multi" => Multi });

/// Largest cluster the bench starts (each replica is a full node).
pub const REPLICAS_MAX: usize = 9;
/// Largest command payload.
pub const COMMAND_BYTES_MAX: usize = 1 << 20;
/// Most commands in flight.
pub const IN_FLIGHT_MAX: usize = 100_000;

/// One configuration to measure with one protocol.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Spec {
    /// Basic or Multi-Paxos.
    pub protocol: ProtocolKind,
    /// How replicas talk.
    pub transport: TransportKind,
    /// Where acceptors persist.
    pub storage: StorageKind,
    /// Cluster size.
    pub replicas: usize,
    /// Payload bytes per command.
    pub command_bytes: usize,
    /// Commands submitted and not yet applied, kept constant (a closed loop).
    pub in_flight: usize,
    /// Batching on (`Config::batch_commands_max` = 1024) or off (1).
    pub batch: bool,
}

/// A configuration the bench cannot run, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// A number is out of range.
    #[error("{name} must be between {min} and {max}, got {given}")]
    OutOfRange {
        /// The setting.
        name: &'static str,
        /// Smallest allowed.
        min: usize,
        /// Largest allowed.
        max: usize,
        /// What was given.
        given: usize,
    },
    /// The backend was not compiled in.
    #[error("{backend} is not compiled in; rebuild paxos-bench with `--features {feature}`")]
    NotCompiled {
        /// The backend asked for.
        backend: &'static str,
        /// The feature that adds it.
        feature: &'static str,
    },
    /// The protocol-alone loop keeps state in memory only.
    #[error("the loop transport measures the protocol alone with in-memory storage; use --storages memory")]
    LoopNeedsMemory,
}

impl Spec {
    /// Checks the ranges and that the backends are compiled in.
    pub fn validate(&self) -> Result<(), SpecError> {
        let ranges = [
            ("replicas", 1, REPLICAS_MAX, self.replicas),
            ("command_bytes", 1, COMMAND_BYTES_MAX, self.command_bytes),
            ("in_flight", 1, IN_FLIGHT_MAX, self.in_flight),
        ];
        for (name, min, max, given) in ranges {
            if given < min || given > max {
                return Err(SpecError::OutOfRange { name, min, max, given });
            }
        }
        if self.transport == TransportKind::Loop && self.storage != StorageKind::Memory {
            return Err(SpecError::LoopNeedsMemory);
        }
        if self.transport == TransportKind::Tcp && !cfg!(feature = "tcp") {
            return Err(SpecError::NotCompiled { backend: "the tcp transport", feature: "tcp" });
        }
        if self.transport == TransportKind::Zmq && !cfg!(feature = "zmq") {
            return Err(SpecError::NotCompiled { backend: "the zmq transport", feature: "zmq" });
        }
        if self.storage == StorageKind::File && !cfg!(feature = "file") {
            return Err(SpecError::NotCompiled { backend: "file storage", feature: "file" });
        }
        Ok(())
    }

    /// The configuration without the protocol, as a table row label.
    pub fn label(&self) -> String {
        format!(
            "{}/{} n={} {}B if={} batch={}",
            self.transport,
            self.storage,
            self.replicas,
            self.command_bytes,
            self.in_flight,
            if self.batch { "on" } else { "off" }
        )
    }

    /// The same configuration with another protocol.
    pub fn with_protocol(&self, protocol: ProtocolKind) -> Spec {
        Spec { protocol, ..self.clone() }
    }

    /// `Config::batch_commands_max` for this run.
    pub fn batch_commands_max(&self) -> usize {
        if self.batch {
            1024
        } else {
            1
        }
    }
}

/// What one run measured. Serialized as one object of `report.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// "basic" or "multi".
    pub protocol: ProtocolKind,
    /// "loop", "memory", "tcp" or "zmq".
    pub transport: TransportKind,
    /// "memory" or "file".
    pub storage: StorageKind,
    /// Cluster size.
    pub replicas: usize,
    /// Payload bytes per command.
    pub command_bytes: usize,
    /// Commands in flight.
    pub in_flight: usize,
    /// Batching on or off.
    pub batch: bool,
    /// Commands applied per second at the proposing node, over the measured window.
    pub ops_per_sec: f64,
    /// Median commit latency (submit to applied at the proposer), microseconds.
    pub p50_us: f64,
    /// 99th percentile commit latency, microseconds.
    pub p99_us: f64,
    /// Peak resident memory of the process that ran this configuration (all replicas), bytes.
    pub peak_rss_bytes: u64,
    /// Commands applied at the proposing node in the measured window (the warm-up
    /// applied more), so a long window shows memory over many commands.
    #[serde(default)]
    pub commands: u64,
}

impl Record {
    /// The record for `spec` with these figures.
    pub fn new(spec: &Spec, measurement: &crate::Measurement, peak_rss_bytes: u64) -> Record {
        Record {
            protocol: spec.protocol,
            transport: spec.transport,
            storage: spec.storage,
            replicas: spec.replicas,
            command_bytes: spec.command_bytes,
            in_flight: spec.in_flight,
            batch: spec.batch,
            ops_per_sec: measurement.ops_per_sec(),
            p50_us: measurement.latency_percentile_us(50.0),
            p99_us: measurement.latency_percentile_us(99.0),
            peak_rss_bytes,
            commands: measurement.commands,
        }
    }

    /// The spec this record measured.
    pub fn spec(&self) -> Spec {
        Spec {
            protocol: self.protocol,
            transport: self.transport,
            storage: self.storage,
            replicas: self.replicas,
            command_bytes: self.command_bytes,
            in_flight: self.in_flight,
            batch: self.batch,
        }
    }
}
