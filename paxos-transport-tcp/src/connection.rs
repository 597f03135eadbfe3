//! The connection tasks: one dialer per peer (handshake, then coalesced writes
//! from the peer's queue, reconnecting with backoff), an accept loop, and one
//! reader per inbound connection (handshake, then frames into the inbox).
//!
//! Data flows one way per connection: a node writes to a peer on the connection
//! it dialed and reads from the peer on the connection the peer dialed. Both
//! ends authenticate each other during the handshake.

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::pin::pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::channel::{mpsc, oneshot};
use futures::future::{select, Either, Shared};
use futures::io::{AsyncReadExt, AsyncWrite, AsyncWriteExt};
use futures::SinkExt;
use paxos_core::handshake::{Handshake, HandshakeError, HandshakeRules, Side, HELLO_BYTES, NONCE_BYTES, PROOF_BYTES};
use paxos_core::wire::{self, WireError};
use paxos_core::{InboxBytes, Message, NodeId, OutboundQueue};
use tracing::{debug, warn};

use crate::config::TcpConfig;
use crate::frame::{push_frame, push_frame_with, FrameError, FrameReader};
use crate::runtime::{Listener, Runtime, Stream};

/// The largest frame accepted while handshaking: a hello or a proof.
const HANDSHAKE_FRAME_BYTES_MAX: usize = if HELLO_BYTES > PROOF_BYTES { HELLO_BYTES } else { PROOF_BYTES };

/// Why one connection ended. Logged by the transport; the node never sees it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectionError {
    /// Could not open the connection (the peer is down or unreachable).
    #[error("connect failed: {0}")]
    Connect(std::io::Error),
    /// The byte stream broke the framing rules (garbage, an oversized length, a truncated frame).
    #[error("bad framing: {0}")]
    Frame(#[from] FrameError),
    /// A frame body did not decode as a message.
    #[error("undecodable message: {0}")]
    Wire(#[from] WireError),
    /// The peer was refused during the handshake.
    #[error("handshake refused: {0}")]
    Handshake(#[from] HandshakeError),
    /// The peer did not finish the handshake in time.
    #[error("handshake not finished within {0:?}; the peer is too slow or not a Paxos node")]
    HandshakeTimeout(Duration),
    /// The peer closed the connection before the handshake finished (it may have refused us: see its log).
    #[error("peer closed the connection during the handshake; check the peer's log for why it refused")]
    ClosedDuringHandshake,
    /// The peer closed the connection.
    #[error("peer closed the connection")]
    PeerClosed,
    /// The peer sent data on a connection where it should only listen.
    #[error("peer sent data on a write-only connection")]
    UnexpectedData,
    /// A message claimed a sender other than the authenticated peer.
    #[error("message claims sender {claimed} on a connection authenticated as node {authenticated}")]
    SenderMismatch {
        /// Who the handshake proved the peer to be.
        authenticated: NodeId,
        /// Who the message claimed to be from.
        claimed: NodeId,
    },
    /// A newer connection from the same peer replaced this one.
    #[error("replaced by a newer connection from the same peer")]
    Replaced,
    /// No random nonce could be drawn from the operating system.
    #[error("no randomness for the handshake nonce: {0}")]
    Random(String),
    /// This transport is shutting down.
    #[error("transport closed")]
    TransportClosed,
}

impl From<std::io::Error> for ConnectionError {
    fn from(error: std::io::Error) -> ConnectionError {
        ConnectionError::Frame(FrameError::Io(error))
    }
}

/// Completes when the transport stops (shutdown or drop).
pub(crate) type StopSignal = Shared<oneshot::Receiver<()>>;

/// Counters, readable through [`crate::TcpTransport::stats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections_refused: AtomicU64,
    pub(crate) connections_established: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_oversized: AtomicU64,
}

/// A received message in the inbox, with its size as `InboxBytes` counts it.
pub(crate) type Inboxed = (NodeId, Message, usize);

/// State shared by the transport handle and its tasks.
pub(crate) struct SharedState {
    pub(crate) config: TcpConfig,
    pub(crate) rules: HandshakeRules,
    pub(crate) runtime: Arc<dyn Runtime>,
    pub(crate) queues: HashMap<NodeId, Arc<OutboundQueue>>,
    pub(crate) inbox: mpsc::Sender<Inboxed>,
    /// Bytes of the messages in `inbox`, bounded by `inbox_bytes_max`.
    pub(crate) inbox_bytes: InboxBytes,
    pub(crate) stop: StopSignal,
    pub(crate) counters: Counters,
    inbound_open: AtomicUsize,
    inbound_serial: AtomicU64,
    /// The newest inbound connection of each peer; dropping its sender stops it.
    inbound_by_peer: Mutex<HashMap<NodeId, (u64, oneshot::Sender<()>)>>,
}

impl SharedState {
    pub(crate) fn new(
        config: TcpConfig,
        rules: HandshakeRules,
        runtime: Arc<dyn Runtime>,
        inbox: mpsc::Sender<Inboxed>,
        stop: StopSignal,
    ) -> SharedState {
        let queues = config
            .peers
            .keys()
            .filter(|peer| **peer != config.node_id)
            .map(|peer| {
                (*peer, Arc::new(OutboundQueue::with_bytes_max(config.queue_messages_max, config.queue_bytes_max)))
            })
            .collect();
        SharedState {
            rules,
            runtime,
            queues,
            inbox_bytes: InboxBytes::new(config.inbox_bytes_max),
            config,
            inbox,
            stop,
            counters: Counters::default(),
            inbound_open: AtomicUsize::new(0),
            inbound_serial: AtomicU64::new(0),
            inbound_by_peer: Mutex::new(HashMap::new()),
        }
    }
}

/// Spawns `task` on the runtime; it is dropped (closing its sockets) when the transport stops.
pub(crate) fn spawn_until_stopped(shared: &Arc<SharedState>, task: impl Future<Output = ()> + Send + 'static) {
    let stop = shared.stop.clone();
    shared.runtime.spawn(Box::pin(async move {
        select(pin!(task), stop).await;
    }));
}

async fn within<T>(limit: Duration, future: impl Future<Output = T>) -> Option<T> {
    match select(pin!(future), futures_timer::Delay::new(limit)).await {
        Either::Left((value, _)) => Some(value),
        Either::Right(_) => None,
    }
}

/// Runs the handshake as `side`; returns the authenticated peer id.
async fn handshake<W: AsyncWrite + Unpin>(
    reader: &mut FrameReader<impl futures::io::AsyncRead + Unpin>,
    writer: &mut W,
    rules: &HandshakeRules,
    side: Side,
    expected: Option<NodeId>,
) -> Result<NodeId, ConnectionError> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce).map_err(|error| ConnectionError::Random(error.to_string()))?;
    let mut handshake = Handshake::new(rules.clone(), side, nonce, expected);
    let mut out = Vec::with_capacity(2 * HANDSHAKE_FRAME_BYTES_MAX);
    push_frame(&mut out, &handshake.hello_bytes());
    writer.write_all(&out).await?;
    writer.flush().await?;
    let hello = reader.next_frame(HANDSHAKE_FRAME_BYTES_MAX).await?.ok_or(ConnectionError::ClosedDuringHandshake)?;
    let proof = handshake.on_hello(hello)?;
    out.clear();
    push_frame(&mut out, &proof);
    writer.write_all(&out).await?;
    writer.flush().await?;
    let peer_proof =
        reader.next_frame(HANDSHAKE_FRAME_BYTES_MAX).await?.ok_or(ConnectionError::ClosedDuringHandshake)?;
    Ok(handshake.on_proof(peer_proof)?)
}

/// Reconnect delays: doubling from the minimum to the maximum, each drawn in the upper half (jitter).
struct Backoff {
    next: Duration,
    min: Duration,
    max: Duration,
    rng: fastrand::Rng,
}

impl Backoff {
    fn new(min: Duration, max: Duration) -> Backoff {
        Backoff { next: min, min, max, rng: fastrand::Rng::new() }
    }

    fn reset(&mut self) {
        self.next = self.min;
    }

    fn delay(&mut self) -> Duration {
        let ceiling = self.next;
        self.next = (self.next * 2).min(self.max);
        let ceiling_micros = ceiling.as_micros().min(u64::MAX as u128) as u64;
        Duration::from_micros(self.rng.u64(ceiling_micros / 2..=ceiling_micros))
    }
}

/// Keeps one authenticated outbound connection to `peer` open while the transport runs.
pub(crate) async fn dial_loop(shared: Arc<SharedState>, peer: NodeId, address: SocketAddr, queue: Arc<OutboundQueue>) {
    let config = &shared.config;
    let mut backoff = Backoff::new(config.backoff_min, config.backoff_max);
    loop {
        let connected = within(config.handshake_timeout, async {
            let stream = shared.runtime.connect(address).await.map_err(ConnectionError::Connect)?;
            let (read, mut write) = stream.split();
            let mut reader = FrameReader::new(read);
            let id = handshake(&mut reader, &mut write, &shared.rules, Side::Dialer, Some(peer)).await?;
            Ok::<_, ConnectionError>((id, reader, write))
        })
        .await
        .unwrap_or(Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)));
        match connected {
            Ok((_, reader, write)) => {
                shared.counters.connections_established.fetch_add(1, Ordering::Relaxed);
                debug!(node = config.node_id, peer, %address, "connected to peer");
                backoff.reset();
                let ended = pump(&shared, reader, write, &queue).await;
                debug!(node = config.node_id, peer, %address, reason = %ended, "connection to peer ended; reconnecting");
            }
            Err(ConnectionError::Connect(error)) => {
                debug!(node = config.node_id, peer, %address, %error, "peer unreachable; retrying with backoff");
            }
            Err(error) => {
                shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                warn!(node = config.node_id, peer, %address, %error, "outbound handshake failed; retrying with backoff");
            }
        }
        futures_timer::Delay::new(backoff.delay()).await;
    }
}

/// Writes the queue to an established connection until it breaks.
async fn pump(
    shared: &SharedState,
    mut reader: FrameReader<futures::io::ReadHalf<Stream>>,
    mut writer: futures::io::WriteHalf<Stream>,
    queue: &OutboundQueue,
) -> ConnectionError {
    let config = &shared.config;
    let mut batch: Vec<u8> = Vec::with_capacity(config.write_batch_bytes_max.min(1 << 20));
    loop {
        // Wait for work, watching the read side so a peer that went away is noticed at once.
        match select(pin!(queue.ready()), pin!(reader.next_frame(HANDSHAKE_FRAME_BYTES_MAX))).await {
            Either::Left(_) => {}
            Either::Right((Ok(None), _)) => return ConnectionError::PeerClosed,
            Either::Right((Ok(Some(_)), _)) => return ConnectionError::UnexpectedData,
            Either::Right((Err(error), _)) => return error.into(),
        }
        // Coalesce: encode every queued message into one buffer and write it at
        // once, splitting only where the buffer passes `write_batch_bytes_max`.
        let mut messages = queue.take_all();
        while !messages.is_empty() {
            batch.clear();
            while batch.len() < config.write_batch_bytes_max {
                let Some(message) = messages.pop_front() else { break };
                let encoded = push_frame_with(&mut batch, config.frame_bytes_max, |out| {
                    wire::encode_into(config.node_id, &message, out)
                });
                if encoded.is_none() {
                    shared.counters.messages_oversized.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        node = config.node_id,
                        kind = message.kind(),
                        "dropped a message larger than frame_bytes_max ({})",
                        config.frame_bytes_max
                    );
                }
            }
            if batch.is_empty() {
                continue;
            }
            if let Err(error) = writer.write_all(&batch).await {
                return error.into();
            }
        }
        if let Err(error) = writer.flush().await {
            return error.into();
        }
        if batch.capacity() > 4 * config.write_batch_bytes_max.max(1 << 16) {
            batch = Vec::new();
        }
    }
}

/// Accepts inbound connections until the transport stops.
pub(crate) async fn accept_loop(shared: Arc<SharedState>, mut listener: Box<dyn Listener>) {
    let config = &shared.config;
    loop {
        match listener.accept().await {
            Ok((stream, address)) => {
                let open = shared.inbound_open.fetch_add(1, Ordering::AcqRel);
                let guard = InboundSlot(shared.clone());
                if open >= config.inbound_connections_max {
                    shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
                    warn!(
                        node = config.node_id,
                        %address,
                        "refused inbound connection: {open} already open (inbound_connections_max)"
                    );
                    drop((stream, guard));
                    continue;
                }
                spawn_until_stopped(&shared, serve_inbound(shared.clone(), stream, address, guard));
            }
            Err(error) => {
                // Out of file descriptors, usually: pause instead of spinning.
                warn!(node = config.node_id, %error, "accept failed; pausing before the next accept");
                futures_timer::Delay::new(Duration::from_millis(50)).await;
            }
        }
    }
}

/// Holds one of the `inbound_connections_max` slots while a connection lives.
struct InboundSlot(Arc<SharedState>);

impl Drop for InboundSlot {
    fn drop(&mut self) {
        self.0.inbound_open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Authenticates one inbound connection, then delivers its messages to the inbox.
async fn serve_inbound(shared: Arc<SharedState>, stream: Stream, address: SocketAddr, _slot: InboundSlot) {
    let config = &shared.config;
    let (read, mut write) = stream.split();
    let mut reader = FrameReader::new(read);
    let handshake =
        within(config.handshake_timeout, handshake(&mut reader, &mut write, &shared.rules, Side::Acceptor, None))
            .await
            .unwrap_or(Err(ConnectionError::HandshakeTimeout(config.handshake_timeout)));
    let peer = match handshake {
        Ok(peer) => peer,
        Err(error) => {
            shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            warn!(node = config.node_id, %address, %error, "refused inbound connection");
            return;
        }
    };
    debug!(node = config.node_id, peer, %address, "accepted peer");
    // One inbound connection per peer: the newest wins, and dropping the older
    // one's sender tells it to stop.
    let serial = shared.inbound_serial.fetch_add(1, Ordering::Relaxed);
    let (replaced_sender, replaced) = oneshot::channel::<()>();
    shared.lock_inbound().insert(peer, (serial, replaced_sender));
    let ended = match select(pin!(read_messages(&shared, &mut reader, peer)), replaced).await {
        Either::Left((error, _)) => error,
        Either::Right(_) => ConnectionError::Replaced,
    };
    {
        let mut inbound = shared.lock_inbound();
        if inbound.get(&peer).is_some_and(|(current, _)| *current == serial) {
            inbound.remove(&peer);
        }
    }
    match ended {
        ConnectionError::PeerClosed | ConnectionError::Replaced | ConnectionError::TransportClosed => {
            debug!(node = config.node_id, peer, %address, reason = %ended, "inbound connection ended");
        }
        error => {
            shared.counters.connections_refused.fetch_add(1, Ordering::Relaxed);
            warn!(node = config.node_id, peer, %address, %error, "closed inbound connection after bad input");
        }
    }
    drop(write);
}

impl SharedState {
    fn lock_inbound(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (u64, oneshot::Sender<()>)>> {
        self.inbound_by_peer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Reads frames from an authenticated peer into the inbox until something is wrong.
async fn read_messages(
    shared: &SharedState,
    reader: &mut FrameReader<futures::io::ReadHalf<Stream>>,
    peer: NodeId,
) -> ConnectionError {
    let limit = shared.config.frame_bytes_max;
    let mut inbox = shared.inbox.clone();
    loop {
        let body = match reader.next_frame(limit).await {
            Ok(Some(body)) => body,
            Ok(None) => return ConnectionError::PeerClosed,
            Err(error) => return error.into(),
        };
        // The inbox counts a message by its frame, the exact size it came in.
        let bytes = body.len();
        let (from, message) = match wire::decode(body, limit) {
            Ok(decoded) => decoded,
            Err(error) => return error.into(),
        };
        // Transport contract: the sender is the authenticated peer, never an unchecked field.
        if from != peer {
            return ConnectionError::SenderMismatch { authenticated: peer, claimed: from };
        }
        shared.counters.messages_received.fetch_add(1, Ordering::Relaxed);
        // A full inbox, in messages or bytes, pauses this reader; TCP flow
        // control then slows the peer.
        shared.inbox_bytes.reserve(bytes).await;
        // `send` queues the message before it can wait, so a reader cancelled
        // here has still queued what it reserved for, and `recv` releases it.
        if inbox.send((peer, message, bytes)).await.is_err() {
            shared.inbox_bytes.release(bytes);
            return ConnectionError::TransportClosed;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_to_the_bound_with_jitter_and_resets() {
        let mut backoff = Backoff::new(Duration::from_millis(10), Duration::from_millis(80));
        let delays: Vec<Duration> = (0..6).map(|_| backoff.delay()).collect();
        let ceilings = [10, 20, 40, 80, 80, 80];
        for (delay, ceiling) in delays.iter().zip(ceilings) {
            let ceiling = Duration::from_millis(ceiling);
            assert!(*delay <= ceiling && *delay >= ceiling / 2, "{delay:?} outside [{:?}, {ceiling:?}]", ceiling / 2);
        }
        backoff.reset();
        assert!(backoff.delay() <= Duration::from_millis(10));
    }
}
