//! The `Transport` trait: how messages travel between replicas.
//!
//! Paxos tolerates loss, duplication and reordering, so a transport may do all
//! three; it must not corrupt or invent messages, nor misattribute a sender.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::task::Poll;

use async_trait::async_trait;
use futures::task::AtomicWaker;

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

/// The bounded outbound queue of one peer, for transport authors: `push` never
/// blocks and, when the queue is full, drops the oldest message (the one most
/// likely to be stale; Paxos retransmits what matters), as
/// [`Transport::send`] requires. Full means `capacity` messages or, with
/// [`OutboundQueue::with_bytes_max`], that many bytes of them (counted as
/// [`Message::encoded_bytes_bound`]): a count alone lets a queue of large accepts
/// grow to gigabytes. One task per peer waits on [`OutboundQueue::ready`] and
/// drains the queue onto its connection. Runtime-neutral.
pub struct OutboundQueue {
    queued: Mutex<Queued>,
    capacity: usize,
    bytes_max: usize,
    waker: AtomicWaker,
    dropped: AtomicU64,
}

/// The messages, each one's size bound at the same position in `sizes`, and the
/// sum of those bounds. Two queues rather than one of pairs, so `take_all` hands
/// the messages over without copying them.
#[derive(Default)]
struct Queued {
    messages: VecDeque<Message>,
    sizes: VecDeque<usize>,
    bytes: usize,
}

impl std::fmt::Debug for OutboundQueue {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("OutboundQueue")
            .field("queued", &self.len())
            .field("capacity", &self.capacity)
            .field("dropped", &self.dropped())
            .finish()
    }
}

impl OutboundQueue {
    /// An empty queue holding at most `capacity` messages.
    ///
    /// # Panics
    /// If `capacity` is zero: validate it with the transport's configuration first.
    pub fn new(capacity: usize) -> OutboundQueue {
        OutboundQueue::with_bytes_max(capacity, usize::MAX)
    }

    /// An empty queue holding at most `capacity` messages and at most `bytes_max`
    /// bytes of them; a single larger message is still queued, alone.
    ///
    /// # Panics
    /// If `capacity` is zero.
    pub fn with_bytes_max(capacity: usize, bytes_max: usize) -> OutboundQueue {
        assert!(capacity > 0, "an outbound queue needs room for one message");
        OutboundQueue {
            queued: Mutex::new(Queued::default()),
            capacity,
            bytes_max,
            waker: AtomicWaker::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Queued> {
        self.queued.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `message`, first dropping the oldest queued ones while the queue
    /// is full.
    pub fn push(&self, message: Message) {
        let bytes = message.encoded_bytes_bound();
        {
            let mut queued = self.lock();
            while !queued.messages.is_empty()
                && (queued.messages.len() >= self.capacity || queued.bytes.saturating_add(bytes) > self.bytes_max)
            {
                queued.messages.pop_front();
                let oldest = queued.sizes.pop_front().expect("one size per message");
                queued.bytes -= oldest;
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            queued.messages.push_back(message);
            queued.sizes.push_back(bytes);
            queued.bytes += bytes;
            assert!(queued.messages.len() <= self.capacity);
        }
        self.waker.wake();
    }

    /// Waits until at least one message is queued. Cancel-safe; for the one
    /// task that drains this queue (a second waiter would take the first's wake-up).
    pub async fn ready(&self) {
        std::future::poll_fn(|context| {
            self.waker.register(context.waker());
            if self.lock().messages.is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes every queued message, oldest first. The lock is held only for the
    /// swap, so encoding happens outside it and `push` never waits on it.
    pub fn take_all(&self) -> VecDeque<Message> {
        let mut queued = self.lock();
        queued.sizes.clear();
        queued.bytes = 0;
        std::mem::take(&mut queued.messages)
    }

    /// Takes up to `count` messages from the front, oldest first.
    pub fn take(&self, count: usize) -> Vec<Message> {
        let mut queued = self.lock();
        let count = count.min(queued.messages.len());
        let bytes: usize = queued.sizes.drain(..count).sum();
        queued.bytes -= bytes;
        queued.messages.drain(..count).collect()
    }

    /// Messages dropped because the queue was full, since it was made.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    /// Messages queued now.
    pub fn len(&self) -> usize {
        self.lock().messages.len()
    }

    /// Bytes queued now, as [`Message::encoded_bytes_bound`] counts them.
    pub fn bytes(&self) -> usize {
        self.lock().bytes
    }

    /// True when nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.lock().messages.is_empty()
    }
}

/// Bounds the bytes of received messages waiting in a transport's inbox (each
/// counted by the size its reader gives, such as its frame): a count of messages
/// alone lets an inbox of large accepts or snapshot parts hold gigabytes. A
/// reader takes room for each message before it queues it
/// ([`InboxBytes::reserve`]), waiting while the inbox is full, so a fast peer's
/// messages back up into its own bounded queue rather than into memory here;
/// `recv` gives the room back ([`InboxBytes::release`]). A message is let in
/// whenever the inbox holds less than the bound, whatever its size, so the inbox
/// goes past the bound by one message at most, and a large message never waits
/// for a gap that small ones keep filling. Runtime-neutral.
#[derive(Debug)]
pub struct InboxBytes {
    held: std::sync::atomic::AtomicUsize,
    max: usize,
    released: event_listener::Event,
}

impl InboxBytes {
    /// An empty inbox that lets messages in while it holds less than `max` bytes.
    pub fn new(max: usize) -> InboxBytes {
        InboxBytes { held: std::sync::atomic::AtomicUsize::new(0), max, released: event_listener::Event::new() }
    }

    /// Takes room for a message of `bytes`, waiting while the inbox holds `max` bytes or more.
    pub async fn reserve(&self, bytes: usize) {
        loop {
            if self.try_reserve(bytes) {
                return;
            }
            let listener = self.released.listen();
            // Room may have come between the try and the listen.
            if self.try_reserve(bytes) {
                return;
            }
            listener.await;
        }
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        self.held
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |held| {
                (held < self.max).then(|| held.saturating_add(bytes))
            })
            .is_ok()
    }

    /// Takes room for a message of `bytes` without waiting, past the bound if
    /// need be: for a node's messages to itself, which must not wait on its own `recv`.
    pub fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::AcqRel);
    }

    /// Gives back the room of a message taken out of the inbox (or never queued).
    pub fn release(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::AcqRel);
        self.released.notify(usize::MAX);
    }

    /// Bytes of messages held now.
    pub fn held(&self) -> usize {
        self.held.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    /// A reservation waits while the inbox is full and goes once room is given
    /// back; a message larger than the bound goes alone into an empty inbox.
    #[test]
    fn inbox_bytes_hold_readers_back_until_room_is_given_back() {
        let inbox = InboxBytes::new(100);
        assert!(inbox.reserve(60).now_or_never().is_some());
        assert!(inbox.reserve(500).now_or_never().is_some(), "under the bound, any size is let in");
        let mut third = Box::pin(inbox.reserve(1));
        assert!((&mut third).now_or_never().is_none(), "560 bytes held: the bound of 100 is reached");
        inbox.release(500);
        futures::executor::block_on(third);
        assert_eq!(inbox.held(), 61);
        inbox.add(70);
        assert_eq!(inbox.held(), 131, "a message to oneself never waits");
        assert!(inbox.reserve(1).now_or_never().is_none());
    }

    fn probe(from_slot: u64) -> Message {
        Message::CatchUpRequest { from_slot }
    }

    #[test]
    fn a_full_queue_drops_the_oldest() {
        let queue = OutboundQueue::new(3);
        for slot in 0..5 {
            queue.push(probe(slot));
        }
        assert_eq!(queue.dropped(), 2);
        assert_eq!(queue.take(2), vec![probe(2), probe(3)]);
        let rest: Vec<Message> = queue.take_all().into();
        assert_eq!(rest, vec![probe(4)]);
        assert!(queue.is_empty());
    }

    #[test]
    fn a_queue_full_of_bytes_drops_the_oldest_but_takes_a_large_message_alone() {
        let value = |bytes: usize| {
            crate::message::Value::Commands(std::sync::Arc::from(vec![crate::message::Command::new(
                1,
                1,
                vec![0; bytes],
            )]))
        };
        let accept = |first_slot: u64, bytes: usize| Message::Accept {
            ballot: crate::ballot::Ballot::new(1, 1),
            first_slot,
            values: vec![value(bytes)],
            chosen_through: 0,
        };
        let queue = OutboundQueue::with_bytes_max(100, 4096);
        for slot in 1..=5 {
            queue.push(accept(slot, 1000));
        }
        assert!(queue.bytes() <= 4096, "{} bytes queued", queue.bytes());
        assert_eq!((queue.len(), queue.dropped()), (3, 2), "the two oldest dropped");
        assert_eq!(queue.take(1), vec![accept(3, 1000)]);
        queue.push(accept(6, 10_000));
        assert_eq!((queue.len(), queue.dropped()), (1, 4), "a message above the bound goes alone");
        let rest: Vec<Message> = queue.take_all().into();
        assert_eq!(rest, vec![accept(6, 10_000)]);
        assert_eq!(queue.bytes(), 0);
    }

    #[test]
    fn ready_waits_for_a_message_and_sees_one_pushed_before_the_wait() {
        let queue = OutboundQueue::new(3);
        assert!(queue.ready().now_or_never().is_none());
        queue.push(probe(1));
        assert!(queue.ready().now_or_never().is_some());
        assert_eq!(queue.take(1), vec![probe(1)]);
        assert!(queue.ready().now_or_never().is_none());
    }

    #[test]
    #[should_panic(expected = "room for one message")]
    fn a_queue_without_room_is_refused() {
        OutboundQueue::new(0);
    }
}
