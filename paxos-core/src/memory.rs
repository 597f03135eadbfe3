//! An in-memory [`Transport`]: channels between nodes in one process, with loss,
//! duplication, delay and partitions on request, for tests, examples and benchmarks.

use std::collections::{BinaryHeap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::{FutureExt, StreamExt};

use crate::ballot::NodeId;
use crate::message::Message;
use crate::rng::Rng;
use crate::transport::Transport;

/// Fault settings for every link of a [`MemoryNetwork`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LinkFaults {
    /// Chance a message is lost, in parts per million.
    pub drop_per_million: u32,
    /// Chance a message is delivered twice, in parts per million.
    pub duplicate_per_million: u32,
    /// Extra latency, drawn uniformly from this range per message (so messages
    /// also overtake each other). `None` delivers at once.
    pub delay: Option<(Duration, Duration)>,
}

/// Errors of the in-memory transport.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MemoryError {
    /// The destination never joined this network.
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    /// This endpoint was closed.
    #[error("transport closed")]
    Closed,
}

struct Parcel {
    from: NodeId,
    message: Message,
    deliver_at: Option<Instant>,
}

struct Shared {
    inboxes: HashMap<NodeId, mpsc::Sender<Parcel>>,
    blocked: HashSet<(NodeId, NodeId)>,
    faults: LinkFaults,
    rng: Rng,
}

/// A set of connected in-memory endpoints. Cheap to clone; clones share the network.
#[derive(Clone)]
pub struct MemoryNetwork {
    shared: Arc<Mutex<Shared>>,
    queue_max: usize,
}

impl Default for MemoryNetwork {
    fn default() -> Self {
        MemoryNetwork::new()
    }
}

impl MemoryNetwork {
    /// A fault-free network with a 65,536-message queue per node.
    pub fn new() -> MemoryNetwork {
        MemoryNetwork::with_queue_max(65_536)
    }

    /// A network whose per-node queues hold at most `queue_max` messages; more are dropped.
    pub fn with_queue_max(queue_max: usize) -> MemoryNetwork {
        let shared = Shared {
            inboxes: HashMap::new(),
            blocked: HashSet::new(),
            faults: LinkFaults::default(),
            rng: Rng::new(0x006E_6574_776F_726B),
        };
        MemoryNetwork { shared: Arc::new(Mutex::new(shared)), queue_max }
    }

    /// Creates the endpoint of node `id`, replacing any earlier one (a restart).
    pub fn join(&self, id: NodeId) -> MemoryTransport {
        let (sender, receiver) = mpsc::channel(self.queue_max);
        self.lock().inboxes.insert(id, sender);
        MemoryTransport {
            id,
            network: self.clone(),
            inbox: futures::lock::Mutex::new(Inbox { receiver, delayed: BinaryHeap::new(), sequence: 0 }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Shared> {
        self.shared.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Sets loss, duplication and delay for every link; `seed` fixes the draws.
    pub fn set_faults(&self, faults: LinkFaults, seed: u64) {
        let mut shared = self.lock();
        shared.faults = faults;
        shared.rng = Rng::new(seed);
    }

    /// Cuts every link between `side` and the rest, both ways.
    pub fn partition(&self, side: &[NodeId]) {
        let mut shared = self.lock();
        let nodes: Vec<NodeId> = shared.inboxes.keys().copied().collect();
        for a in &nodes {
            for b in &nodes {
                if side.contains(a) != side.contains(b) {
                    shared.blocked.insert((*a, *b));
                }
            }
        }
    }

    /// Cuts the link from `from` to `to` only (a one-way partition).
    pub fn block(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.insert((from, to));
    }

    /// Restores the link from `from` to `to` only.
    pub fn unblock(&self, from: NodeId, to: NodeId) {
        self.lock().blocked.remove(&(from, to));
    }

    /// Disconnects `node` entirely, as if it crashed: messages to it are lost.
    pub fn isolate(&self, node: NodeId) {
        let nodes: Vec<NodeId> = self.lock().inboxes.keys().copied().collect();
        let mut shared = self.lock();
        for other in nodes {
            if other != node {
                shared.blocked.insert((node, other));
                shared.blocked.insert((other, node));
            }
        }
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.lock().blocked.clear();
    }
}

struct Delayed {
    deliver_at: Instant,
    sequence: u64,
    from: NodeId,
    message: Message,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.deliver_at, self.sequence) == (other.deliver_at, other.sequence)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    // Reversed, so the max-heap pops the earliest delivery first.
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (other.deliver_at, other.sequence).cmp(&(self.deliver_at, self.sequence))
    }
}

struct Inbox {
    receiver: mpsc::Receiver<Parcel>,
    delayed: BinaryHeap<Delayed>,
    sequence: u64,
}

/// One node's endpoint on a [`MemoryNetwork`].
pub struct MemoryTransport {
    id: NodeId,
    network: MemoryNetwork,
    inbox: futures::lock::Mutex<Inbox>,
}

impl MemoryTransport {
    /// The id this endpoint sends as.
    pub fn id(&self) -> NodeId {
        self.id
    }
}

#[async_trait]
impl Transport for MemoryTransport {
    type Error = MemoryError;

    fn send(&self, to: NodeId, message: Message) -> Result<(), MemoryError> {
        let mut shared = self.network.lock();
        let Some(inbox) = shared.inboxes.get(&to).cloned() else {
            return Err(MemoryError::UnknownPeer(to));
        };
        if shared.blocked.contains(&(self.id, to)) {
            return Ok(());
        }
        let faults = shared.faults;
        if shared.rng.chance(faults.drop_per_million as u64, 1_000_000) {
            return Ok(());
        }
        let copies = if shared.rng.chance(faults.duplicate_per_million as u64, 1_000_000) { 2 } else { 1 };
        for _ in 0..copies {
            let deliver_at = faults.delay.map(|(low, high)| {
                let span = high.saturating_sub(low).as_micros() as u64;
                Instant::now() + low + Duration::from_micros(shared.rng.range_inclusive(0, span))
            });
            let message = message.clone();
            let mut inbox = inbox.clone();
            // A full queue drops the message, as a congested network would.
            let _ = inbox.try_send(Parcel { from: self.id, message, deliver_at });
        }
        Ok(())
    }

    async fn recv(&self) -> Result<(NodeId, Message), MemoryError> {
        let mut inbox = self.inbox.lock().await;
        loop {
            if let Some(top) = inbox.delayed.peek() {
                if top.deliver_at <= Instant::now() {
                    let due = inbox.delayed.pop().expect("peeked");
                    return Ok((due.from, due.message));
                }
            }
            let wait = inbox.delayed.peek().map(|top| top.deliver_at.saturating_duration_since(Instant::now()));
            let parcel = match wait {
                None => inbox.receiver.next().await,
                Some(wait) => {
                    let mut timer = futures_timer::Delay::new(wait).fuse();
                    let mut next = inbox.receiver.next().fuse();
                    futures::select_biased! {
                        parcel = next => parcel,
                        _ = timer => continue,
                    }
                }
            };
            let Some(parcel) = parcel else { return Err(MemoryError::Closed) };
            match parcel.deliver_at {
                None => return Ok((parcel.from, parcel.message)),
                Some(deliver_at) => {
                    let sequence = inbox.sequence;
                    inbox.sequence += 1;
                    inbox.delayed.push(Delayed { deliver_at, sequence, from: parcel.from, message: parcel.message });
                }
            }
        }
    }
}
