//! A user-written `Transport` backend: in-process channels that add a fixed
//! one-way latency to every message. It passes the transport conformance suite
//! in one call, then carries a 3-node Multi-Paxos cluster. See docs/extending.md.
//!
//! `cargo run --example custom_transport`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use futures::channel::mpsc;
use futures::StreamExt;
use paxos::conformance::transport_suite;
use paxos::{storage::MemoryStorage, Command, Config, Message, Node, NodeId, Protocol, Transport};

/// Errors of the slow transport.
#[derive(Debug, thiserror::Error)]
enum SlowError {
    #[error("unknown peer {0}")]
    UnknownPeer(NodeId),
    #[error("transport closed")]
    Closed,
}

type Parcel = (NodeId, Message, Instant);

/// The wiring: one bounded inbox per node.
#[derive(Clone, Default)]
struct SlowNetwork {
    inboxes: Arc<Mutex<HashMap<NodeId, mpsc::Sender<Parcel>>>>,
    latency: Duration,
}

impl SlowNetwork {
    fn endpoint(&self, id: NodeId) -> SlowTransport {
        // Bounded: a node that stops reading loses messages instead of growing memory.
        let (sender, receiver) = mpsc::channel(10_000);
        self.inboxes.lock().unwrap().insert(id, sender);
        let inbox = Inbox { receiver, waiting: None };
        SlowTransport { id, network: self.clone(), inbox: futures::lock::Mutex::new(inbox) }
    }
}

/// The receiving side. A message taken off the channel but not yet due waits in
/// `waiting`, so a `recv` future dropped during the delay loses nothing.
struct Inbox {
    receiver: mpsc::Receiver<Parcel>,
    waiting: Option<Parcel>,
}

struct SlowTransport {
    id: NodeId,
    network: SlowNetwork,
    inbox: futures::lock::Mutex<Inbox>,
}

#[async_trait]
impl Transport for SlowTransport {
    type Error = SlowError;

    fn send(&self, to: NodeId, message: Message) -> Result<(), SlowError> {
        let mut inbox = self.network.inboxes.lock().unwrap().get(&to).cloned().ok_or(SlowError::UnknownPeer(to))?;
        // Never block: a full inbox drops the message; Paxos retransmits what matters.
        let _ = inbox.try_send((self.id, message, Instant::now() + self.network.latency));
        Ok(())
    }

    async fn recv(&self) -> Result<(NodeId, Message), SlowError> {
        let mut inbox = self.inbox.lock().await;
        if inbox.waiting.is_none() {
            let parcel = inbox.receiver.next().await.ok_or(SlowError::Closed)?;
            inbox.waiting = Some(parcel);
        }
        let due = inbox.waiting.as_ref().map(|(_, _, due)| *due).expect("set above");
        let wait = due.saturating_duration_since(Instant::now());
        if !wait.is_zero() {
            futures_timer::Delay::new(wait).await;
        }
        let (from, message, _) = inbox.waiting.take().expect("still waiting: only this holder of the lock takes it");
        Ok((from, message))
    }
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    // 1. Prove the backend keeps the contract: one call.
    let network = SlowNetwork { latency: Duration::from_micros(200), ..SlowNetwork::default() };
    let endpoints = (1..=3).map(|id| (id, network.endpoint(id))).collect();
    transport_suite(endpoints).await;
    println!("SlowTransport passed the transport conformance suite");

    // 2. Run a cluster on it.
    let network = SlowNetwork { latency: Duration::from_millis(1), ..SlowNetwork::default() };
    let members = [1, 2, 3];
    let mut handles = Vec::new();
    for id in members {
        let (handle, driver) =
            Node::start(Config::new(id, members, Protocol::Multi), network.endpoint(id), MemoryStorage::new()).await?;
        tokio::spawn(driver);
        handles.push(handle);
    }
    let started = Instant::now();
    for sequence in 1..=20u64 {
        let mut result = handles[0].add(Command::new(1, sequence, b"slow".to_vec())).await;
        for attempt in 0..10 {
            match result {
                Ok(_) => break,
                Err(_) => result = handles[attempt % 3].add(Command::new(1, sequence, b"slow".to_vec())).await,
            }
        }
        result?;
    }
    println!("20 commands chosen over a 1 ms link in {:?}", started.elapsed());
    for handle in &handles {
        handle.shutdown();
    }
    Ok(())
}
