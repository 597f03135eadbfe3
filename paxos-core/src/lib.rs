//! Paxos consensus as sans-IO state machines: single-decree **Basic Paxos** and
//! **Multi-Paxos**, the [`Storage`] and [`Transport`] traits every backend
//! implements, and [`Node`], an async driver that runs under any executor.
//!
//! The roles ([`acceptor`], [`proposer`], [`learner`]) do no IO and read no clock:
//! messages, proposals and ticks go in, [`Actions`] come out. Replies that depend on
//! durable state sit in a [`PersistThen`] that hands them over only after the write
//! completed, so "persist before you answer" (seed 001) is a property of the types.
//!
//! # Example: a 3-node Multi-Paxos cluster in one process
//!
//! ```
//! use paxos_core::{memory::MemoryNetwork, Command, Config, Node, Protocol};
//! use paxos_storage::MemoryStorage;
//!
//! # futures::executor::block_on(async {
//! let network = MemoryNetwork::new();
//! let members = [1, 2, 3];
//! let mut handles = Vec::new();
//! for id in members {
//!     let mut config = Config::new(id, members, Protocol::Multi);
//!     config.election_timeout_ticks = 5;
//!     let (handle, driver) = Node::start(config, network.join(id), MemoryStorage::new()).await.unwrap();
//!     std::thread::spawn(move || futures::executor::block_on(driver));
//!     handles.push(handle);
//! }
//! let index = handles[0].add(Command::new(7, 1, b"hello".to_vec())).await.unwrap();
//! assert_eq!(handles[0].get(index).await.unwrap().unwrap().payload, b"hello");
//! for handle in &handles {
//!     handle.shutdown();
//! }
//! # });
//! ```
#![deny(missing_docs)]

pub mod acceptor;
mod actions;
pub mod ballot;
mod basic;
pub mod config;
pub mod conformance;
pub mod handshake;
pub mod harness;
mod kept_log;
pub mod learner;
pub mod memory;
pub mod message;
mod multi;
#[cfg(feature = "mutations")]
pub mod mutations;
pub mod node;
pub mod peer_config;
pub mod proposer;
mod replica;
pub mod rng;
pub mod slots;
pub mod snapshot_transfer;
pub mod storage;
pub mod transport;
pub mod wire;

pub use actions::{Actions, Decided, Event, PersistThen};
pub use ballot::{Ballot, NodeId, Slot};
pub use basic::BasicPaxos;
pub use config::{Config, ConfigError, Protocol};
pub use message::{AcceptedEntry, Command, CommandId, Message, Outgoing, PrepareScope, Value};
pub use multi::MultiPaxos;
pub use node::{Applied, Entry, Node, NodeError, NodeHandle};
pub use replica::{new_replica, CompactError, ProposeError, Replica, Role, Status};
pub use storage::{AppliedSequences, ClientDedup, DurableState, SlotState, Snapshot, Storage, StorageOp};
pub use transport::{InboxBytes, OutboundQueue, Transport};
