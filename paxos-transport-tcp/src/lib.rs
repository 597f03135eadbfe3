//! A TCP [`Transport`] for `paxos-core`, hardened against bad peers, under tokio
//! (feature `tokio`, the default) or smol (feature `smol`); both can be enabled
//! at once and the constructor picks the runtime.
//!
//! - **Framing**: `[u32 big-endian length][body]`, the body being the shared
//!   [`paxos_core::wire`] encoding. A length above [`TcpConfig::frame_bytes_max`]
//!   closes the connection before anything is allocated.
//! - **Handshake**: on every connection both sides exchange a hello (cluster id,
//!   node id, wire version, nonce) and, with [`TcpConfig::secret`], an
//!   HMAC-SHA256 challenge-response ([`paxos_core::handshake`]). A refused peer
//!   is logged (`tracing` at warn) and disconnected; nothing else changes.
//! - **Outbound**: one connection per peer, dialed by the sender; a bounded queue
//!   per peer that drops its **oldest** message when full ([`Transport::send`]
//!   never blocks); queued messages coalesced into one write; TCP_NODELAY;
//!   reconnects with bounded exponential backoff and jitter.
//! - **Inbound**: at most [`TcpConfig::inbound_connections_max`] connections, a
//!   handshake deadline, one live connection per peer, and messages attributed
//!   to the authenticated peer only (a frame claiming another sender closes the
//!   connection).
//! - **Shutdown**: [`TcpTransport::shutdown`] (or dropping the transport) stops the
//!   listener and every connection task.
//!
//! # Example: two nodes over loopback
//!
//! ```
//! use paxos_core::{Message, Transport};
//! use paxos_transport_tcp::{TcpConfig, TcpTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Bind first, so each node knows the other's port.
//! let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
//! let addresses: Vec<_> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
//! let mut transports = Vec::new();
//! for (index, listener) in listeners.into_iter().enumerate() {
//!     let id = index as u64 + 1;
//!     let mut config = TcpConfig::new(id, 42, addresses[index], [(1, addresses[0]), (2, addresses[1])]);
//!     config.secret = Some(b"a secret of sixteen bytes or more".to_vec());
//!     transports.push(TcpTransport::start_tokio_on(config, listener).unwrap());
//! }
//! transports[0].send(2, Message::CatchUpRequest { from_slot: 7 }).unwrap();
//! let (from, message) = transports[1].recv().await.unwrap();
//! assert_eq!((from, message), (1, Message::CatchUpRequest { from_slot: 7 }));
//! for transport in &transports {
//!     transport.shutdown();
//! }
//! # }
//! ```
#![deny(missing_docs)]
// Without a runtime feature only the pure parts (`frame`, config) are usable, as the fuzz target does.
#![cfg_attr(not(any(feature = "tokio", feature = "smol")), allow(dead_code))]

mod config;
mod connection;
pub mod frame;
mod runtime;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either, FutureExt};
use futures::StreamExt;
use paxos_core::{Message, NodeId, Transport};

pub use config::{TcpConfig, TcpConfigError, FRAME_BYTES_MAX_LIMIT, FRAME_BYTES_MAX_MIN};
pub use connection::ConnectionError;
use connection::{SharedState, StopSignal};
use runtime::Runtime;

/// Errors returned to the caller of the transport.
#[derive(Debug, thiserror::Error)]
pub enum TcpError {
    /// The destination is not in [`TcpConfig::peers`]: a caller mistake.
    #[error("unknown peer {0}; it is not in this transport's peer map")]
    UnknownPeer(NodeId),
    /// The transport was shut down; start a new one.
    #[error("transport shut down")]
    Closed,
    /// The configuration was refused; fix the named field.
    #[error("invalid configuration: {0}")]
    Config(#[from] TcpConfigError),
    /// The listen address could not be bound (in use, or not local).
    #[error("cannot listen on {address}: {source}; pick another address or stop what holds it")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// The chosen runtime is not available here (for tokio: not inside a runtime).
    #[error("runtime unavailable: {0}; start the transport from inside the runtime")]
    Runtime(String),
}

/// A snapshot of the transport's counters, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TcpStats {
    /// Connections closed because of a failed handshake, bad input or a connection limit.
    pub connections_refused: u64,
    /// Outbound connections that completed their handshake.
    pub connections_established: u64,
    /// Messages received from authenticated peers.
    pub messages_received: u64,
    /// Messages dropped from a full outbound queue (the oldest first).
    pub messages_dropped_queue_full: u64,
    /// Messages dropped because they encode larger than `frame_bytes_max`.
    pub messages_dropped_oversized: u64,
}

/// A node's TCP endpoint. See the [crate docs](crate) for behaviour.
pub struct TcpTransport {
    shared: Arc<SharedState>,
    inbox: futures::lock::Mutex<mpsc::Receiver<connection::Inboxed>>,
    stop_sender: Mutex<Option<oneshot::Sender<()>>>,
    stop: StopSignal,
    closed: AtomicBool,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for TcpTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("TcpTransport")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn bind(address: SocketAddr) -> Result<std::net::TcpListener, TcpError> {
    std::net::TcpListener::bind(address).map_err(|source| TcpError::Bind { address, source })
}

impl TcpTransport {
    /// Binds `config.listen` and starts on the current tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn start_tokio(config: TcpConfig) -> Result<TcpTransport, TcpError> {
        config.validate()?;
        let listener = bind(config.listen)?;
        TcpTransport::start_tokio_on(config, listener)
    }

    /// Starts on the current tokio runtime with an already bound listener
    /// (`config.listen` is then ignored). Must be called inside a tokio runtime.
    #[cfg(feature = "tokio")]
    pub fn start_tokio_on(config: TcpConfig, listener: std::net::TcpListener) -> Result<TcpTransport, TcpError> {
        let handle = tokio::runtime::Handle::try_current().map_err(|error| TcpError::Runtime(error.to_string()))?;
        TcpTransport::start(config, listener, Arc::new(runtime::tokio_runtime::TokioRuntime { handle }))
    }

    /// Binds `config.listen` and starts on smol's global executor.
    #[cfg(feature = "smol")]
    pub fn start_smol(config: TcpConfig) -> Result<TcpTransport, TcpError> {
        config.validate()?;
        let listener = bind(config.listen)?;
        TcpTransport::start_smol_on(config, listener)
    }

    /// Starts on smol's global executor with an already bound listener (`config.listen` is then ignored).
    #[cfg(feature = "smol")]
    pub fn start_smol_on(config: TcpConfig, listener: std::net::TcpListener) -> Result<TcpTransport, TcpError> {
        TcpTransport::start(config, listener, Arc::new(runtime::smol_runtime::SmolRuntime))
    }

    fn start(
        config: TcpConfig,
        listener: std::net::TcpListener,
        runtime: Arc<dyn Runtime>,
    ) -> Result<TcpTransport, TcpError> {
        config.validate()?;
        let rules = config.rules()?;
        let local_addr = listener.local_addr().map_err(|source| TcpError::Bind { address: config.listen, source })?;
        let listener = runtime.listener(listener).map_err(|source| TcpError::Bind { address: local_addr, source })?;
        let (inbox_sender, inbox) = mpsc::channel(config.inbox_messages_max);
        let (stop_sender, stop) = oneshot::channel();
        let stop = stop.shared();
        let shared = Arc::new(SharedState::new(config, rules, runtime, inbox_sender, stop.clone()));
        connection::spawn_until_stopped(&shared, connection::accept_loop(shared.clone(), listener));
        let mut peers: Vec<(&NodeId, &SocketAddr)> = shared.config.peers.iter().collect();
        peers.retain(|(peer, _)| **peer != shared.config.node_id);
        for (peer, address) in peers {
            let queue = shared.queues[peer].clone();
            connection::spawn_until_stopped(&shared, connection::dial_loop(shared.clone(), *peer, *address, queue));
        }
        Ok(TcpTransport {
            shared,
            inbox: futures::lock::Mutex::new(inbox),
            stop_sender: Mutex::new(Some(stop_sender)),
            stop,
            closed: AtomicBool::new(false),
            local_addr,
        })
    }

    /// The address this node listens on (useful after binding port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.shared.config.node_id
    }

    /// Stops the listener and every connection task; `send` and `recv` then
    /// return [`TcpError::Closed`]. Idempotent; dropping the transport does the same.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::Release);
        let sender = self.stop_sender.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take();
        drop(sender);
    }

    /// The transport's counters.
    pub fn stats(&self) -> TcpStats {
        let counters = &self.shared.counters;
        TcpStats {
            connections_refused: counters.connections_refused.load(Ordering::Relaxed),
            connections_established: counters.connections_established.load(Ordering::Relaxed),
            messages_received: counters.messages_received.load(Ordering::Relaxed),
            messages_dropped_queue_full: self.shared.queues.values().map(|queue| queue.dropped()).sum(),
            messages_dropped_oversized: counters.messages_oversized.load(Ordering::Relaxed),
        }
    }

    /// Bytes of received messages waiting for `recv`, as `inbox_bytes_max` counts them.
    pub fn inbox_bytes(&self) -> usize {
        self.shared.inbox_bytes.held()
    }

    /// Messages waiting in each peer's outbound queue.
    pub fn queued(&self) -> HashMap<NodeId, usize> {
        self.shared.queues.iter().map(|(peer, queue)| (*peer, queue.len())).collect()
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[async_trait]
impl Transport for TcpTransport {
    type Error = TcpError;

    fn send(&self, to: NodeId, message: Message) -> Result<(), TcpError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TcpError::Closed);
        }
        if to == self.shared.config.node_id {
            // Loopback to self: straight into the inbox, dropped if it is full
            // in messages; never waits for room in bytes (only `recv` makes it).
            let bytes = message.encoded_bytes_bound();
            self.shared.inbox_bytes.add(bytes);
            if self.shared.inbox.clone().try_send((to, message, bytes)).is_err() {
                self.shared.inbox_bytes.release(bytes);
            }
            return Ok(());
        }
        let queue = self.shared.queues.get(&to).ok_or(TcpError::UnknownPeer(to))?;
        queue.push(message);
        Ok(())
    }

    async fn recv(&self) -> Result<(NodeId, Message), TcpError> {
        if self.closed.load(Ordering::Acquire) {
            return Err(TcpError::Closed);
        }
        // Cancel-safe: locking and `next` on the channel both lose nothing when dropped.
        let mut inbox = self.inbox.lock().await;
        match select(pin!(inbox.next()), self.stop.clone()).await {
            Either::Left((Some((from, message, bytes)), _)) => {
                self.shared.inbox_bytes.release(bytes);
                Ok((from, message))
            }
            Either::Left((None, _)) | Either::Right(_) => Err(TcpError::Closed),
        }
    }
}
