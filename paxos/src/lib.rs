//! Paxos consensus for Rust services, in one dependency.
//!
//! This crate re-exports [`paxos_core`] (the protocol, the [`Storage`] and
//! [`Transport`] traits, the [`Node`] driver) and every backend enabled by a
//! feature, under paths that stay the same whichever backend you pick:
//!
//! | feature | brings in |
//! |---|---|
//! | `memory` (default) | [`storage::MemoryStorage`] |
//! | `file` | `storage::FileStorage`, crash-safe, with group commit |
//! | `tcp` | `transport::tcp::TcpTransport` (with `tokio` and/or `smol`) |
//! | `zmq` | `transport::zmq::ZmqTransport` (with `tokio`) |
//! | `tokio` | the tokio constructors of the network transports |
//! | `smol` | the smol constructors of the network transports |
//!
//! The in-memory transport, [`memory::MemoryNetwork`], is always available.
//!
//! ```
//! use paxos::{memory::MemoryNetwork, storage::MemoryStorage, Command, Config, Node, Protocol};
//!
//! # futures::executor::block_on(async {
//! let network = MemoryNetwork::new();
//! let (handle, driver) = Node::start(Config::new(1, [1], Protocol::Multi), network.join(1), MemoryStorage::new())
//!     .await
//!     .unwrap();
//! std::thread::spawn(move || futures::executor::block_on(driver));
//! let index = handle.add(Command::new(1, 1, b"x".to_vec())).await.unwrap();
//! assert_eq!(index, 0);
//! handle.shutdown();
//! # });
//! ```
#![deny(missing_docs)]

pub use paxos_core::*;

#[cfg(all(feature = "tcp", not(any(feature = "tokio", feature = "smol"))))]
compile_error!(
    "the `tcp` feature needs a runtime: enable `tokio` or `smol` as well, e.g. features = [\"tcp\", \"tokio\"]"
);

#[cfg(all(feature = "zmq", not(feature = "tokio")))]
compile_error!(
    "the `zmq` feature runs on tokio only (the zeromq crate has no smol runtime): enable `tokio` as well, e.g. features = [\"zmq\", \"tokio\"]"
);

/// Transport backends, by feature. The in-memory transport is [`memory`].
pub mod transport {
    /// TCP transport (feature `tcp`).
    #[cfg(feature = "tcp")]
    pub mod tcp {
        pub use paxos_transport_tcp::*;
    }

    /// ZeroMQ transport (feature `zmq`, on tokio).
    #[cfg(feature = "zmq")]
    pub mod zmq {
        pub use paxos_transport_zmq::*;
    }
}

/// Storage backends, by feature.
pub mod storage {
    #[cfg(feature = "file")]
    pub use paxos_storage::{FileError, FileOptions, FileStats, FileStorage};
    #[cfg(feature = "memory")]
    pub use paxos_storage::{MemoryError, MemoryStorage};
}
