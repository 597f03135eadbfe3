//! The `Transport` trait: how messages travel between replicas.
//!
//! Paxos tolerates loss, duplication and reordering, so a transport may do all
//! three; it must not corrupt or invent messages, nor misattribute a sender.

use async_trait::async_trait;

use crate::ballot::NodeId;
use crate::message::Message;

/// Moves [`Message`]s between the replicas of one cluster.
///
/// Network transports encode with [`crate::wire`] and only add framing.
/// Run [`crate::conformance::transport_suite`] on a new backend.
#[async_trait]
pub trait Transport: Send + Sync {
    /// Why an operation failed.
    type Error: std::error::Error + Send + Sync + 'static;

    /// Queues `message` for `to` and returns at once.
    ///
    /// # Correctness
    /// Best effort: the message may be dropped (peer down, queue full), delayed,
    /// duplicated or reordered, and the protocol retransmits what matters. It must
    /// never block on the network, so one slow peer cannot stall the node; keep a
    /// bounded queue per peer and drop when full. Returns an error only for a
    /// caller mistake (an unknown peer) or after shutdown.
    fn send(&self, to: NodeId, message: Message) -> Result<(), Self::Error>;

    /// Waits for the next message and returns it with its sender's id.
    ///
    /// # Correctness
    /// The sender id must be the id the peer was authenticated as, never a value
    /// taken from an unchecked field. Malformed input from a peer is dropped (and
    /// logged) inside the transport, not returned. Must be cancel-safe: dropping
    /// the future before it completes loses no message. Returns an error only when
    /// the transport is shut down or broken for good.
    async fn recv(&self) -> Result<(NodeId, Message), Self::Error>;
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for Box<T> {
    type Error = T::Error;

    fn send(&self, to: NodeId, message: Message) -> Result<(), Self::Error> {
        (**self).send(to, message)
    }

    async fn recv(&self) -> Result<(NodeId, Message), Self::Error> {
        (**self).recv().await
    }
}

#[async_trait]
impl<T: Transport + ?Sized> Transport for std::sync::Arc<T> {
    type Error = T::Error;

    fn send(&self, to: NodeId, message: Message) -> Result<(), Self::Error> {
        (**self).send(to, message)
    }

    async fn recv(&self) -> Result<(NodeId, Message), Self::Error> {
        (**self).recv().await
    }
}
