//! State shared by the transport's tasks: config, handshake rules, queues,
//! counters, and a limiter that keeps hostile floods from flooding the log.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use paxos_core::handshake::{HandshakeRules, Nonce, NONCE_BYTES};
use paxos_core::{InboxBytes, Message, NodeId, OutboundQueue};

use crate::config::ZmqConfig;

/// Warnings about refused peers allowed per second; the rest are counted and summarised.
const WARNINGS_PER_SECOND_MAX: u32 = 32;

/// Counters behind [`crate::ZmqStats`].
#[derive(Default)]
pub(crate) struct Counters {
    pub(crate) connections_refused: AtomicU64,
    pub(crate) handshakes_refused: AtomicU64,
    pub(crate) frames_refused: AtomicU64,
    pub(crate) inbound_sessions: AtomicU64,
    pub(crate) outbound_sessions: AtomicU64,
    pub(crate) messages_received: AtomicU64,
    pub(crate) messages_dropped_oversized: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64) {
        counter.fetch_add(1, Ordering::Relaxed);
    }
}

struct Window {
    start: Instant,
    logged: u32,
    suppressed: u64,
}

/// Lets through at most [`WARNINGS_PER_SECOND_MAX`] warnings a second.
pub(crate) struct WarnLimiter {
    window: Mutex<Window>,
}

impl WarnLimiter {
    fn new() -> WarnLimiter {
        WarnLimiter { window: Mutex::new(Window { start: Instant::now(), logged: 0, suppressed: 0 }) }
    }

    /// Whether to log this warning; reports how many were suppressed in the last window.
    pub(crate) fn allow(&self) -> bool {
        let mut window = self.window.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if window.start.elapsed() >= Duration::from_secs(1) {
            if window.suppressed > 0 {
                tracing::warn!(suppressed = window.suppressed, "more refused peers or frames were not logged");
            }
            *window = Window { start: Instant::now(), logged: 0, suppressed: 0 };
        }
        if window.logged < WARNINGS_PER_SECOND_MAX {
            window.logged += 1;
            true
        } else {
            window.suppressed += 1;
            false
        }
    }
}

pub(crate) struct Shared {
    pub(crate) config: ZmqConfig,
    pub(crate) rules: HandshakeRules,
    pub(crate) queues: HashMap<NodeId, Arc<OutboundQueue>>,
    pub(crate) counters: Counters,
    pub(crate) warnings: WarnLimiter,
    /// Bytes of the received messages waiting for `recv`, bounded by `inbox_bytes_max`.
    pub(crate) inbox_bytes: InboxBytes,
}

/// A received message in the inbox, with its size as `InboxBytes` counts it.
pub(crate) type Inboxed = (NodeId, Message, usize);

impl Shared {
    pub(crate) fn new(config: ZmqConfig, rules: HandshakeRules) -> Shared {
        let queues = config
            .peers
            .keys()
            .filter(|peer| **peer != config.node_id)
            .map(|peer| {
                (*peer, Arc::new(OutboundQueue::with_bytes_max(config.queue_messages_max, config.queue_bytes_max)))
            })
            .collect();
        let inbox_bytes = InboxBytes::new(config.inbox_bytes_max);
        Shared { config, rules, queues, counters: Counters::default(), warnings: WarnLimiter::new(), inbox_bytes }
    }
}

/// A fresh handshake challenge from the operating system's random source.
pub(crate) fn random_nonce() -> Result<Nonce, getrandom::Error> {
    let mut nonce = [0u8; NONCE_BYTES];
    getrandom::fill(&mut nonce)?;
    Ok(nonce)
}
