//! Checks shared by the network transports' configs: the limits every peer-to-peer
//! transport has (frame size, queues, inbound connections, handshake timeout,
//! reconnect backoff) and the [`HandshakeRules`] a cluster identity and secret imply.
//!
//! A transport's `validate` calls these and adds its own checks with [`check_range`],
//! so every refused setting is reported the same way: the field, its value and what
//! it must be.

use std::time::Duration;

use crate::ballot::NodeId;
use crate::handshake::{HandshakeError, HandshakeRules, SECRET_BYTES_MIN};

/// The smallest `frame_bytes_max` accepted: room for a handshake message and a small Paxos message.
pub const FRAME_BYTES_MAX_MIN: usize = 1024;

/// The largest `queue_messages_max` and `inbox_messages_max` accepted (2^20 messages).
pub const QUEUE_MESSAGES_LIMIT: usize = 1 << 20;

/// The largest `inbound_connections_max` accepted.
pub const INBOUND_CONNECTIONS_LIMIT: usize = 65_536;

/// The longest `handshake_timeout` accepted (10 minutes).
pub const HANDSHAKE_TIMEOUT_LIMIT: Duration = Duration::from_secs(600);

/// The longest `backoff_max` accepted (an hour).
pub const BACKOFF_LIMIT: Duration = Duration::from_secs(3600);

/// Why a transport config was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PeerConfigError {
    /// A limit is outside its allowed range.
    #[error("{field} = {value} is out of range: {expected}")]
    OutOfRange {
        /// The config field.
        field: &'static str,
        /// Its value.
        value: String,
        /// What it must be.
        expected: &'static str,
    },
    /// `backoff_min` is larger than `backoff_max`.
    #[error("backoff_min ({min:?}) exceeds backoff_max ({max:?}); make the minimum the smaller")]
    Backoff {
        /// The minimum.
        min: Duration,
        /// The maximum.
        max: Duration,
    },
    /// The secret is too short.
    #[error("secret of {length} bytes is too short; use at least {SECRET_BYTES_MIN} random bytes")]
    WeakSecret {
        /// Its length.
        length: usize,
    },
}

/// Refuses `value` of `field` unless `low <= value <= high`; `expected` says the
/// range in words for the error (e.g. `"between 1 and 4096"`).
pub fn check_range(
    field: &'static str,
    value: usize,
    low: usize,
    high: usize,
    expected: &'static str,
) -> Result<(), PeerConfigError> {
    if value < low || value > high {
        return Err(PeerConfigError::OutOfRange { field, value: value.to_string(), expected });
    }
    Ok(())
}

/// Checks the queue limits every transport has: `queue_messages_max` and
/// `inbox_messages_max` (1 to [`QUEUE_MESSAGES_LIMIT`]) and
/// `inbound_connections_max` (1 to [`INBOUND_CONNECTIONS_LIMIT`]).
pub fn check_queues(
    queue_messages_max: usize,
    inbox_messages_max: usize,
    inbound_connections_max: usize,
) -> Result<(), PeerConfigError> {
    check_range("queue_messages_max", queue_messages_max, 1, QUEUE_MESSAGES_LIMIT, "between 1 and 2^20")?;
    check_range("inbox_messages_max", inbox_messages_max, 1, QUEUE_MESSAGES_LIMIT, "between 1 and 2^20")?;
    check_range(
        "inbound_connections_max",
        inbound_connections_max,
        1,
        INBOUND_CONNECTIONS_LIMIT,
        "between 1 and 65,536",
    )
}

/// Refuses a zero `handshake_timeout` or one longer than [`HANDSHAKE_TIMEOUT_LIMIT`].
pub fn check_handshake_timeout(handshake_timeout: Duration) -> Result<(), PeerConfigError> {
    if handshake_timeout.is_zero() || handshake_timeout > HANDSHAKE_TIMEOUT_LIMIT {
        return Err(PeerConfigError::OutOfRange {
            field: "handshake_timeout",
            value: format!("{handshake_timeout:?}"),
            expected: "between 1 ns and 10 minutes",
        });
    }
    Ok(())
}

/// Refuses a zero `backoff_min`, a `backoff_max` longer than [`BACKOFF_LIMIT`], and
/// a minimum larger than the maximum.
pub fn check_backoff(backoff_min: Duration, backoff_max: Duration) -> Result<(), PeerConfigError> {
    if backoff_min.is_zero() || backoff_max > BACKOFF_LIMIT {
        return Err(PeerConfigError::OutOfRange {
            field: "backoff_min/backoff_max",
            value: format!("{backoff_min:?}/{backoff_max:?}"),
            expected: "a non-zero minimum and a maximum of at most an hour",
        });
    }
    if backoff_min > backoff_max {
        return Err(PeerConfigError::Backoff { min: backoff_min, max: backoff_max });
    }
    Ok(())
}

/// The handshake rules of node `node_id` in cluster `cluster_id`: the members are
/// `peers` plus `node_id` itself, and with `secret` every peer must prove it holds it
/// (at least [`SECRET_BYTES_MIN`] bytes, else [`PeerConfigError::WeakSecret`]).
pub fn handshake_rules(
    cluster_id: u64,
    node_id: NodeId,
    peers: impl IntoIterator<Item = NodeId>,
    secret: Option<&[u8]>,
) -> Result<HandshakeRules, PeerConfigError> {
    let members = peers.into_iter().chain([node_id]);
    let rules = HandshakeRules::new(cluster_id, node_id, members);
    match secret {
        None => Ok(rules),
        Some(secret) => rules.with_secret(secret).map_err(|error| match error {
            HandshakeError::WeakSecret { length } => PeerConfigError::WeakSecret { length },
            _ => PeerConfigError::WeakSecret { length: secret.len() },
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_accepts_its_bounds_and_names_what_is_outside() {
        assert_eq!(check_range("field", 1, 1, 4, "between 1 and 4"), Ok(()));
        assert_eq!(check_range("field", 4, 1, 4, "between 1 and 4"), Ok(()));
        let error = check_range("field", 5, 1, 4, "between 1 and 4").unwrap_err();
        assert_eq!(
            error,
            PeerConfigError::OutOfRange { field: "field", value: "5".to_string(), expected: "between 1 and 4" }
        );
        assert_eq!(error.to_string(), "field = 5 is out of range: between 1 and 4");
        assert!(matches!(check_range("field", 0, 1, 4, "x"), Err(PeerConfigError::OutOfRange { .. })));
    }

    #[test]
    fn queues_name_the_bad_field() {
        assert_eq!(check_queues(1024, 4096, 64), Ok(()));
        assert_eq!(check_queues(QUEUE_MESSAGES_LIMIT, QUEUE_MESSAGES_LIMIT, INBOUND_CONNECTIONS_LIMIT), Ok(()));
        assert!(matches!(check_queues(0, 1, 1), Err(PeerConfigError::OutOfRange { field: "queue_messages_max", .. })));
        assert!(matches!(
            check_queues(1, QUEUE_MESSAGES_LIMIT + 1, 1),
            Err(PeerConfigError::OutOfRange { field: "inbox_messages_max", .. })
        ));
        assert!(matches!(
            check_queues(1, 1, 0),
            Err(PeerConfigError::OutOfRange { field: "inbound_connections_max", .. })
        ));
    }

    #[test]
    fn handshake_timeout_must_be_positive_and_bounded() {
        assert_eq!(check_handshake_timeout(Duration::from_secs(2)), Ok(()));
        assert_eq!(check_handshake_timeout(HANDSHAKE_TIMEOUT_LIMIT), Ok(()));
        for bad in [Duration::ZERO, HANDSHAKE_TIMEOUT_LIMIT + Duration::from_nanos(1)] {
            assert!(matches!(
                check_handshake_timeout(bad),
                Err(PeerConfigError::OutOfRange { field: "handshake_timeout", .. })
            ));
        }
    }

    #[test]
    fn backoff_must_be_ordered_and_bounded() {
        assert_eq!(check_backoff(Duration::from_millis(20), Duration::from_secs(1)), Ok(()));
        assert_eq!(check_backoff(Duration::from_secs(1), Duration::from_secs(1)), Ok(()));
        assert!(matches!(
            check_backoff(Duration::ZERO, Duration::from_secs(1)),
            Err(PeerConfigError::OutOfRange { field: "backoff_min/backoff_max", .. })
        ));
        assert!(matches!(
            check_backoff(Duration::from_secs(1), BACKOFF_LIMIT + Duration::from_secs(1)),
            Err(PeerConfigError::OutOfRange { field: "backoff_min/backoff_max", .. })
        ));
        let error = check_backoff(Duration::from_secs(2), Duration::from_secs(1)).unwrap_err();
        assert_eq!(error, PeerConfigError::Backoff { min: Duration::from_secs(2), max: Duration::from_secs(1) });
        assert_eq!(error.to_string(), "backoff_min (2s) exceeds backoff_max (1s); make the minimum the smaller");
    }

    #[test]
    fn rules_take_the_members_and_refuse_a_weak_secret() {
        let rules = handshake_rules(9, 1, [2, 3], None).unwrap();
        assert_eq!((rules.cluster_id(), rules.node_id(), rules.authenticated()), (9, 1, false));
        let member = handshake_rules(9, 2, [1], None).unwrap().hello([0; crate::handshake::NONCE_BYTES]);
        assert_eq!(rules.check_hello(&member, None), Ok(()));
        let stranger = handshake_rules(9, 4, [1], None).unwrap().hello([0; crate::handshake::NONCE_BYTES]);
        assert_eq!(rules.check_hello(&stranger, None), Err(HandshakeError::UnknownNode(4)));
        assert!(handshake_rules(9, 1, [2, 3], Some(&[7; SECRET_BYTES_MIN])).unwrap().authenticated());
        let Err(error) = handshake_rules(9, 1, [2, 3], Some(b"short")) else { panic!("a 5-byte secret was accepted") };
        assert_eq!(error, PeerConfigError::WeakSecret { length: 5 });
        assert!(error.to_string().contains(&SECRET_BYTES_MIN.to_string()));
    }
}
