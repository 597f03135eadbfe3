//! A ZeroMQ [`Transport`] for `paxos-core`, built on the pure-Rust `zeromq`
//! crate (ZMTP 3.1, NULL mechanism), so libzmq-based peers and tools can talk
//! to a node. **Requires tokio**: start it inside a tokio runtime (see below why
//! no other runtime is offered).
//!
//! # Pattern: ROUTER inbound, one DEALER per peer outbound
//!
//! Each node binds one ROUTER for everything it receives and opens one DEALER
//! per peer for everything it sends, with the routing id `node:<its id>`
//! ([`routing_id`]). Why this pattern:
//!
//! - Paxos traffic is asynchronous in both directions, not request-reply, so
//!   REQ/REP's lock-step is wrong; DEALER sends without waiting.
//! - A ROUTER labels every inbound message with the sender's routing id, so one
//!   socket serves all peers and the transport knows which connection a frame
//!   came from, which is what the sender check hangs on.
//! - A DEALER per peer gives each peer its own bounded queue and its own
//!   reconnect, so a dead peer never delays the others (one DEALER connected to
//!   all peers would round-robin, not address).
//! - PUB/SUB and PUSH/PULL drop the sender's identity or are one-way only.
//!
//! # Identity and cluster checks
//!
//! The first message on every new DEALER connection is the hello of the shared
//! handshake ([`paxos_core::handshake`], the same rules the TCP transport uses):
//! cluster id, member id, wire version, and with [`ZmqConfig::secret`] an
//! HMAC-SHA256 challenge-response. The ROUTER also requires the routing id to
//! name the node the hello names. On success it grants the connection a session
//! token (its own fresh handshake nonce), which every later message carries; a
//! message without the current token is dropped, so a peer that merely *claims*
//! a member's routing id cannot have frames attributed to that member. Refused
//! peers get a `tracing` warning (rate limited), a `REFUSED` reply, and their
//! frames are dropped; nothing else in the cluster changes. The message layout is
//! in [`protocol`].
//!
//! # Frame limits before zeromq
//!
//! zeromq 0.7 has no maximum message size, and trusts a frame header's length.
//! The public port is therefore a small relay ([`guard`]) that checks every ZMTP
//! frame header against [`ZmqConfig::frame_bytes_max`] *before* forwarding it to
//! the ROUTER, which listens on an internal loopback port. It also bounds inbound
//! connections and requires the first message within the handshake timeout.
//!
//! # Queues, reconnects, shutdown
//!
//! [`Transport::send`] encodes nothing and never blocks: it appends to the peer's
//! bounded queue, dropping the **oldest** message when full. zeromq 0.7 DEALERs do
//! not reconnect by themselves, so each peer's task makes a new DEALER (and a new
//! handshake) after any failure, with jittered exponential backoff. A peer that
//! restarted answers the old session's messages with `REFUSED`, which also starts
//! a new handshake. [`ZmqTransport::shutdown`] (or dropping the transport) stops
//! every task, closes every socket and frees the port; a pending `recv` returns
//! [`ZmqTransportError::Closed`].
//!
//! # Runtimes
//!
//! zeromq's runtime features are mutually exclusive (`tokio-runtime`,
//! `async-std-runtime`, `async-dispatcher-runtime`), it has none for smol, and
//! both non-tokio ones pull in the deprecated async-std. This crate enables
//! only `tokio-runtime`, so `--all-features` builds stay valid.
//!
//! # Example: two nodes over loopback
//!
//! ```
//! use paxos_core::{Message, Transport};
//! use paxos_transport_zmq::{ZmqConfig, ZmqTransport};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! // Bind first, so each node knows the other's port.
//! let listeners: Vec<_> = (0..2).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
//! let addresses: Vec<_> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
//! let mut transports = Vec::new();
//! for (index, listener) in listeners.into_iter().enumerate() {
//!     let id = index as u64 + 1;
//!     let mut config = ZmqConfig::new(id, 42, addresses[index], [(1, addresses[0]), (2, addresses[1])]);
//!     config.secret = Some(b"a secret of sixteen bytes or more".to_vec());
//!     transports.push(ZmqTransport::start_on(config, listener).await.unwrap());
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

mod config;
mod dealer;
pub mod guard;
pub mod protocol;
mod router;
mod shared;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_trait::async_trait;
use paxos_core::{Message, NodeId, Transport};
use tokio::sync::mpsc;
use tokio::task::{JoinHandle, JoinSet};
use tracing::Instrument;
use zeromq::{RouterSocket, Socket};

pub use config::{ZmqConfig, ZmqConfigError, FRAME_BYTES_MAX_LIMIT, FRAME_BYTES_MAX_MIN};
pub use protocol::{parse_routing_id, routing_id};
use shared::{Counters, Shared};

/// Errors returned to the caller of the transport.
#[derive(Debug, thiserror::Error)]
pub enum ZmqTransportError {
    /// The destination is not in [`ZmqConfig::peers`]: a caller mistake.
    #[error("unknown peer {0}; it is not in this transport's peer map")]
    UnknownPeer(NodeId),
    /// The transport was shut down (or its ROUTER failed); start a new one.
    #[error("transport shut down")]
    Closed,
    /// The configuration was refused; fix the named field.
    #[error("invalid configuration: {0}")]
    Config(#[from] ZmqConfigError),
    /// An address could not be bound (in use, or not local).
    #[error("cannot listen on {address}: {source}; pick another address or stop what holds it")]
    Bind {
        /// The address.
        address: SocketAddr,
        /// The operating system's error.
        source: std::io::Error,
    },
    /// zeromq refused to set up the internal ROUTER.
    #[error("cannot start the ZeroMQ ROUTER: {0}")]
    Zmq(#[from] zeromq::ZmqError),
    /// Not called inside a tokio runtime.
    #[error("no tokio runtime: {0}; start the transport from inside a tokio runtime")]
    Runtime(String),
}

/// A snapshot of the transport's counters, for tests and monitoring.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ZmqStats {
    /// Inbound connections cut by the frame guard or the connection limit.
    pub connections_refused: u64,
    /// Handshakes refused, inbound or outbound.
    pub handshakes_refused: u64,
    /// Inbound messages dropped: unknown routing id, no session, malformed, forged sender.
    pub frames_refused: u64,
    /// Inbound handshakes completed.
    pub inbound_sessions: u64,
    /// Outbound handshakes completed.
    pub outbound_sessions: u64,
    /// Messages received from authenticated peers.
    pub messages_received: u64,
    /// Messages dropped from a full outbound queue (the oldest first).
    pub messages_dropped_queue_full: u64,
    /// Messages dropped because they encode larger than `frame_bytes_max`.
    pub messages_dropped_oversized: u64,
}

/// A node's ZeroMQ endpoint. See the [crate docs](crate) for behaviour.
pub struct ZmqTransport {
    shared: Arc<Shared>,
    inbox: tokio::sync::Mutex<mpsc::Receiver<shared::Inboxed>>,
    tasks: Mutex<Vec<JoinHandle<()>>>,
    closed: AtomicBool,
    local_addr: SocketAddr,
}

impl std::fmt::Debug for ZmqTransport {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("ZmqTransport")
            .field("node_id", &self.shared.config.node_id)
            .field("local_addr", &self.local_addr)
            .field("closed", &self.closed.load(Ordering::Relaxed))
            .finish()
    }
}

fn bind(address: SocketAddr) -> Result<std::net::TcpListener, ZmqTransportError> {
    std::net::TcpListener::bind(address).map_err(|source| ZmqTransportError::Bind { address, source })
}

impl ZmqTransport {
    /// Binds `config.listen` and starts on the current tokio runtime.
    pub async fn start(config: ZmqConfig) -> Result<ZmqTransport, ZmqTransportError> {
        tokio::runtime::Handle::try_current().map_err(|error| ZmqTransportError::Runtime(error.to_string()))?;
        config.validate()?;
        let listener = bind(config.listen)?;
        ZmqTransport::start_on(config, listener).await
    }

    /// Starts with an already bound public listener (`config.listen` is then
    /// ignored), on the current tokio runtime.
    pub async fn start_on(
        config: ZmqConfig,
        listener: std::net::TcpListener,
    ) -> Result<ZmqTransport, ZmqTransportError> {
        tokio::runtime::Handle::try_current().map_err(|error| ZmqTransportError::Runtime(error.to_string()))?;
        config.validate()?;
        let rules = config.rules()?;
        let local_addr =
            listener.local_addr().map_err(|source| ZmqTransportError::Bind { address: config.listen, source })?;
        let bind_error = |source| ZmqTransportError::Bind { address: local_addr, source };
        listener.set_nonblocking(true).map_err(bind_error)?;
        let listener = tokio::net::TcpListener::from_std(listener).map_err(bind_error)?;

        // The ROUTER itself listens on an internal loopback port behind the frame guard.
        let internal_listener = bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let internal =
            internal_listener.local_addr().map_err(|source| ZmqTransportError::Bind { address: local_addr, source })?;
        let mut router = RouterSocket::new();
        router.bind_listener(internal_listener).await?;
        let (router_sender, router_receiver) = router.split();

        let (inbox_sender, inbox) = mpsc::channel(config.inbox_messages_max);
        let shared = Arc::new(Shared::new(config, rules));
        let mut tasks = Vec::new();
        let node = shared.config.node_id;
        let span = tracing::info_span!("zmq", node);
        let serve = router::Router::new(shared.clone(), router_sender, inbox_sender).run(router_receiver);
        tasks.push(tokio::spawn(serve.instrument(span.clone())));
        tasks.push(tokio::spawn(accept_loop(shared.clone(), listener, internal).instrument(span.clone())));
        for (peer, address) in &shared.config.peers {
            if *peer == node {
                continue;
            }
            let queue = shared.queues[peer].clone();
            let dial = dealer::dial_loop(shared.clone(), *peer, *address, queue);
            tasks.push(tokio::spawn(dial.instrument(span.clone())));
        }
        Ok(ZmqTransport {
            shared,
            inbox: tokio::sync::Mutex::new(inbox),
            tasks: Mutex::new(tasks),
            closed: AtomicBool::new(false),
            local_addr,
        })
    }

    /// The address the public (guarded) port is bound to.
    pub fn local_addr(&self) -> SocketAddr {
        self.local_addr
    }

    /// Stops every task and closes every socket; the port is free once this returns
    /// and the runtime has run the aborted tasks' drops. Idempotent.
    pub fn shutdown(&self) {
        self.closed.store(true, Ordering::SeqCst);
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|poisoned| poisoned.into_inner()));
        for task in tasks {
            task.abort();
        }
    }

    /// The counters so far.
    pub fn stats(&self) -> ZmqStats {
        let counters = &self.shared.counters;
        let load = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
        ZmqStats {
            connections_refused: load(&counters.connections_refused),
            handshakes_refused: load(&counters.handshakes_refused),
            frames_refused: load(&counters.frames_refused),
            inbound_sessions: load(&counters.inbound_sessions),
            outbound_sessions: load(&counters.outbound_sessions),
            messages_received: load(&counters.messages_received),
            messages_dropped_queue_full: self.shared.queues.values().map(|queue| queue.dropped()).sum(),
            messages_dropped_oversized: load(&counters.messages_dropped_oversized),
        }
    }

    /// Bytes of received messages waiting for `recv`, as `inbox_bytes_max` counts them.
    pub fn inbox_bytes(&self) -> usize {
        self.shared.inbox_bytes.held()
    }
}

impl Drop for ZmqTransport {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[async_trait]
impl Transport for ZmqTransport {
    type Error = ZmqTransportError;

    fn send(&self, to: NodeId, message: Message) -> Result<(), ZmqTransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ZmqTransportError::Closed);
        }
        let queue = self.shared.queues.get(&to).ok_or(ZmqTransportError::UnknownPeer(to))?;
        queue.push(message);
        Ok(())
    }

    async fn recv(&self) -> Result<(NodeId, Message), ZmqTransportError> {
        if self.closed.load(Ordering::SeqCst) {
            return Err(ZmqTransportError::Closed);
        }
        // Both the lock and `mpsc::Receiver::recv` are cancel-safe.
        let mut inbox = self.inbox.lock().await;
        let (from, message, bytes) = inbox.recv().await.ok_or(ZmqTransportError::Closed)?;
        self.shared.inbox_bytes.release(bytes);
        Ok((from, message))
    }
}

/// Accepts on the public port and relays each connection through the frame guard.
async fn accept_loop(shared: Arc<Shared>, listener: tokio::net::TcpListener, internal: SocketAddr) {
    let config = &shared.config;
    let frame_bytes_max = config.frame_bytes_max as u64;
    // A message is at most a kind frame, a token and a body.
    let message_bytes_max = frame_bytes_max + guard::COMMAND_BYTES_MAX;
    // Dropping this set (when the task is aborted) aborts every relay and closes its sockets.
    let mut relays = JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, remote)) => {
                    if relays.len() >= config.inbound_connections_max {
                        Counters::add(&shared.counters.connections_refused);
                        if shared.warnings.allow() {
                            tracing::warn!(%remote, limit = config.inbound_connections_max,
                                "refused an inbound ZeroMQ connection: too many open");
                        }
                        continue;
                    }
                    let timeout = config.handshake_timeout;
                    relays.spawn(async move {
                        (remote, guard::relay(stream, internal, frame_bytes_max, message_bytes_max, timeout).await)
                    });
                }
                Err(error) => {
                    tracing::warn!(%error, "accepting on the ZeroMQ port failed; retrying");
                    tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                }
            },
            Some(finished) = relays.join_next() => {
                let Ok((remote, result)) = finished else { continue };
                match result {
                    Ok(()) | Err(guard::RelayError::Peer(_)) => {}
                    Err(error) => {
                        Counters::add(&shared.counters.connections_refused);
                        if shared.warnings.allow() {
                            tracing::warn!(%remote, "cut an inbound ZeroMQ connection: {error}");
                        }
                    }
                }
            }
        }
    }
}
