//! The bounded outbound queue of one peer: `push` never blocks and drops the
//! oldest message when full; one connection task waits on it and drains it.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::Poll;

use futures::task::AtomicWaker;
use paxos_core::Message;

/// A bounded queue with one consumer.
pub(crate) struct PeerQueue {
    messages: Mutex<VecDeque<Message>>,
    capacity: usize,
    waker: AtomicWaker,
    dropped: AtomicU64,
}

impl PeerQueue {
    pub(crate) fn new(capacity: usize) -> PeerQueue {
        assert!(capacity > 0, "validated by TcpConfig::validate");
        PeerQueue {
            messages: Mutex::new(VecDeque::new()),
            capacity,
            waker: AtomicWaker::new(),
            dropped: AtomicU64::new(0),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, VecDeque<Message>> {
        self.messages.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Queues `message`, dropping the oldest queued one if the queue is full.
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
        self.waker.wake();
    }

    /// Waits until at least one message is queued. Cancel-safe.
    pub(crate) async fn ready(&self) {
        poll_fn(|context| {
            self.waker.register(context.waker());
            if self.lock().is_empty() {
                Poll::Pending
            } else {
                Poll::Ready(())
            }
        })
        .await
    }

    /// Takes every queued message, oldest first. The lock is held only for the swap,
    /// so encoding happens outside it and `push` never waits on it.
    pub(crate) fn take_all(&self) -> VecDeque<Message> {
        std::mem::take(&mut *self.lock())
    }

    /// Messages dropped because the queue was full, since the start.
    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }

    pub(crate) fn len(&self) -> usize {
        self.lock().len()
    }
}

#[cfg(test)]
mod tests {
    use futures::FutureExt;

    use super::*;

    fn probe(from_slot: u64) -> Message {
        Message::CatchUpRequest { from_slot }
    }

    #[test]
    fn full_queue_drops_the_oldest() {
        let queue = PeerQueue::new(3);
        for slot in 0..5 {
            queue.push(probe(slot));
        }
        assert_eq!(queue.dropped(), 2);
        let taken: Vec<Message> = queue.take_all().into();
        assert_eq!(taken, vec![probe(2), probe(3), probe(4)]);
        assert_eq!(queue.len(), 0);
    }

    #[test]
    fn ready_waits_for_a_message() {
        let queue = PeerQueue::new(3);
        assert!(queue.ready().now_or_never().is_none());
        queue.push(probe(1));
        assert!(queue.ready().now_or_never().is_some());
    }
}
