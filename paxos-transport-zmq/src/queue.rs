//! The bounded outbound queue of one peer: `push` never blocks and drops the
//! oldest message when full; that peer's DEALER task drains it.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use paxos_core::Message;
use tokio::sync::Notify;

/// A bounded drop-oldest queue with one consumer.
pub(crate) struct PeerQueue {
    messages: Mutex<VecDeque<Message>>,
    capacity: usize,
    ready: Notify,
    dropped: AtomicU64,
}

impl PeerQueue {
    pub(crate) fn new(capacity: usize) -> PeerQueue {
        assert!(capacity > 0, "validated by ZmqConfig::validate");
        PeerQueue { messages: Mutex::new(VecDeque::new()), capacity, ready: Notify::new(), dropped: AtomicU64::new(0) }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `message`, dropping the oldest one if full: the oldest is the most
    /// likely to be stale, and Paxos retransmits what matters.
    pub(crate) fn push(&self, message: Message) {
        {
            let mut messages = self.lock();
            if messages.len() >= self.capacity {
                messages.pop_front();
                self.dropped.fetch_add(1, Ordering::Relaxed);
            }
            messages.push_back(message);
            assert!(messages.len() <= self.capacity);
        }
        // `notify_one` keeps a permit when nobody waits, so a push between the
        // consumer's check and its wait is not lost.
        self.ready.notify_one();
    }

    /// Waits until something may be queued. Cancel-safe.
    pub(crate) async fn ready(&self) {
        if self.lock().is_empty() {
            self.ready.notified().await;
        }
    }

    /// Takes up to `count` messages from the front.
    pub(crate) fn take(&self, count: usize) -> Vec<Message> {
        let mut messages = self.lock();
        let count = count.min(messages.len());
        messages.drain(..count).collect()
    }

    /// Messages dropped because the queue was full.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(slot: u64) -> Message {
        Message::CatchUpRequest { from_slot: slot }
    }

    #[test]
    fn drops_the_oldest_when_full() {
        let queue = PeerQueue::new(3);
        for slot in 0..5 {
            queue.push(probe(slot));
        }
        assert_eq!(queue.dropped(), 2);
        assert_eq!(queue.take(10), vec![probe(2), probe(3), probe(4)]);
        assert!(queue.take(10).is_empty());
    }

    #[tokio::test]
    async fn ready_wakes_on_a_push_made_before_the_wait() {
        let queue = PeerQueue::new(3);
        queue.push(probe(1));
        queue.take(1);
        queue.push(probe(2));
        queue.ready().await;
        assert_eq!(queue.take(1), vec![probe(2)]);
    }
}
