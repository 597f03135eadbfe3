//! [`ZmqConfig`]: addresses, cluster identity, the optional secret and every limit, checked once by `validate`.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use paxos_core::handshake::HandshakeRules;
use paxos_core::peer_config::{
    check_backoff, check_handshake_timeout, check_queues, check_range, handshake_rules, PeerConfigError,
};
use paxos_core::wire::FRAME_BYTES_MAX_DEFAULT;
use paxos_core::NodeId;

pub use paxos_core::peer_config::FRAME_BYTES_MAX_MIN;

/// The largest `frame_bytes_max` accepted (1 GiB): zeromq holds a whole message in memory.
pub const FRAME_BYTES_MAX_LIMIT: usize = 1 << 30;

/// Settings of one node's ZeroMQ transport.
#[derive(Clone)]
pub struct ZmqConfig {
    /// This node's id; must be a member. Its DEALERs present the routing id `node:<id>`.
    pub node_id: NodeId,
    /// Shared by every node of one cluster; a peer with another id is refused.
    pub cluster_id: u64,
    /// Where the node's ROUTER is reachable (127.0.0.1 or another local address; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Every other member and the address its ROUTER listens on. This node's own
    /// id may be present and is then ignored. The keys are the members the
    /// handshake accepts.
    pub peers: BTreeMap<NodeId, SocketAddr>,
    /// When set, every peer must prove it knows this secret (HMAC-SHA256
    /// challenge-response, see [`paxos_core::handshake`]). At least 16 bytes;
    /// give every member the same one.
    pub secret: Option<Vec<u8>>,
    /// The largest wire body sent or accepted. A ZeroMQ frame announcing more is
    /// cut off at its header, before anything is allocated; a message that encodes
    /// larger is dropped at the sender.
    pub frame_bytes_max: usize,
    /// Messages queued per peer while it is slow or down; when full the **oldest** is dropped.
    pub queue_messages_max: usize,
    /// Bytes queued per peer (counted as `Message::encoded_bytes_bound`), with
    /// the same rule: past it the oldest messages are dropped. Without it, a
    /// slow peer's queue of large accepts could take gigabytes. At least 1 KiB.
    pub queue_bytes_max: usize,
    /// Received messages waiting for `recv`; when full the ROUTER stops reading
    /// (TCP flow control pushes back), so memory stays bounded.
    pub inbox_messages_max: usize,
    /// Bytes of received messages waiting for `recv` (counted as
    /// `Message::encoded_bytes_bound`), with the same rule: past it the ROUTER
    /// stops reading. A count alone let an inbox of large messages hold
    /// gigabytes. A single larger message still goes, alone. At least 1 KiB.
    pub inbox_bytes_max: usize,
    /// How many queued messages one DEALER hands to zeromq before checking for
    /// replies and shutdown again.
    pub send_batch_messages_max: usize,
    /// Inbound connections open at once; more are closed at once.
    pub inbound_connections_max: usize,
    /// Time allowed to connect and finish the handshake.
    pub handshake_timeout: Duration,
    /// First reconnect delay after a failure.
    pub backoff_min: Duration,
    /// Reconnect delays double up to this bound (each drawn with jitter in its upper half).
    pub backoff_max: Duration,
}

impl fmt::Debug for ZmqConfig {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("ZmqConfig")
            .field("node_id", &self.node_id)
            .field("cluster_id", &self.cluster_id)
            .field("listen", &self.listen)
            .field("peers", &self.peers)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .field("frame_bytes_max", &self.frame_bytes_max)
            .field("queue_messages_max", &self.queue_messages_max)
            .field("queue_bytes_max", &self.queue_bytes_max)
            .field("inbox_messages_max", &self.inbox_messages_max)
            .field("inbox_bytes_max", &self.inbox_bytes_max)
            .field("send_batch_messages_max", &self.send_batch_messages_max)
            .field("inbound_connections_max", &self.inbound_connections_max)
            .field("handshake_timeout", &self.handshake_timeout)
            .field("backoff_min", &self.backoff_min)
            .field("backoff_max", &self.backoff_max)
            .finish()
    }
}

/// Why a [`ZmqConfig`] was refused: the field, its value and what it must be,
/// or a backoff or secret problem (the checks every transport shares, see
/// [`paxos_core::peer_config`]).
pub type ZmqConfigError = PeerConfigError;

impl ZmqConfig {
    /// A config with default limits for node `node_id` of cluster `cluster_id`.
    pub fn new(
        node_id: NodeId,
        cluster_id: u64,
        listen: SocketAddr,
        peers: impl IntoIterator<Item = (NodeId, SocketAddr)>,
    ) -> ZmqConfig {
        ZmqConfig {
            node_id,
            cluster_id,
            listen,
            peers: peers.into_iter().collect(),
            secret: None,
            frame_bytes_max: FRAME_BYTES_MAX_DEFAULT,
            queue_messages_max: 1024,
            queue_bytes_max: 64 << 20,
            inbox_messages_max: 4096,
            inbox_bytes_max: 64 << 20,
            send_batch_messages_max: 64,
            inbound_connections_max: 64,
            handshake_timeout: Duration::from_secs(2),
            backoff_min: Duration::from_millis(20),
            backoff_max: Duration::from_secs(1),
        }
    }

    /// Checks every limit; the transport refuses to start otherwise.
    pub fn validate(&self) -> Result<(), ZmqConfigError> {
        check_range(
            "frame_bytes_max",
            self.frame_bytes_max,
            FRAME_BYTES_MAX_MIN,
            FRAME_BYTES_MAX_LIMIT,
            "between 1 KiB and 1 GiB",
        )?;
        check_queues(self.queue_messages_max, self.inbox_messages_max, self.inbound_connections_max)?;
        check_range("queue_bytes_max", self.queue_bytes_max, 1024, usize::MAX, "at least 1 KiB")?;
        check_range("inbox_bytes_max", self.inbox_bytes_max, 1024, usize::MAX, "at least 1 KiB")?;
        check_range("send_batch_messages_max", self.send_batch_messages_max, 1, 4096, "between 1 and 4096")?;
        check_handshake_timeout(self.handshake_timeout)?;
        check_backoff(self.backoff_min, self.backoff_max)?;
        self.rules().map(|_| ())
    }

    /// The handshake rules this config implies.
    pub(crate) fn rules(&self) -> Result<HandshakeRules, ZmqConfigError> {
        handshake_rules(self.cluster_id, self.node_id, self.peers.keys().copied(), self.secret.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config() -> ZmqConfig {
        let address: SocketAddr = "127.0.0.1:0".parse().unwrap();
        ZmqConfig::new(1, 9, address, [(2, address)])
    }

    #[test]
    fn defaults_are_valid() {
        assert_eq!(config().validate(), Ok(()));
    }

    #[test]
    fn each_bad_limit_is_named() {
        let mut bad = config();
        bad.frame_bytes_max = 10;
        assert!(matches!(bad.validate(), Err(ZmqConfigError::OutOfRange { field: "frame_bytes_max", .. })));
        let mut bad = config();
        bad.queue_messages_max = 0;
        assert!(matches!(bad.validate(), Err(ZmqConfigError::OutOfRange { field: "queue_messages_max", .. })));
        assert_eq!(
            bad.validate().unwrap_err().to_string(),
            "queue_messages_max = 0 is out of range: between 1 and 2^20"
        );
        let mut bad = config();
        bad.frame_bytes_max = FRAME_BYTES_MAX_LIMIT + 1;
        assert!(matches!(bad.validate(), Err(ZmqConfigError::OutOfRange { field: "frame_bytes_max", .. })));
        let mut bad = config();
        bad.send_batch_messages_max = 0;
        assert!(matches!(bad.validate(), Err(ZmqConfigError::OutOfRange { field: "send_batch_messages_max", .. })));
        let mut bad = config();
        bad.handshake_timeout = Duration::ZERO;
        assert!(matches!(bad.validate(), Err(ZmqConfigError::OutOfRange { field: "handshake_timeout", .. })));
        let mut bad = config();
        bad.backoff_min = Duration::from_secs(2);
        assert!(matches!(bad.validate(), Err(ZmqConfigError::Backoff { .. })));
        let mut bad = config();
        bad.secret = Some(b"short".to_vec());
        assert_eq!(bad.validate(), Err(ZmqConfigError::WeakSecret { length: 5 }));
    }

    #[test]
    fn debug_hides_the_secret() {
        let mut with_secret = config();
        with_secret.secret = Some(b"a very secret shared key".to_vec());
        assert!(!format!("{with_secret:?}").contains("very secret"));
    }
}
