//! The ZeroMQ messages this transport exchanges, as plain values: routing ids,
//! the kind frame, and the parse of one multipart message. No sockets here.
//!
//! Every message a DEALER sends to a ROUTER (and every reply) is multipart:
//!
//! | kind frame | further frames | direction |
//! |---|---|---|
//! | `HELLO` | a [`paxos_core::handshake::Hello`] | both |
//! | `PROOF` | a [`paxos_core::handshake::Proof`] | both |
//! | `MSG` | session token (16 bytes), a [`paxos_core::wire`] body | DEALER to ROUTER |
//! | `REFUSED` | a UTF-8 reason | ROUTER to DEALER |
//!
//! The ROUTER sees its own leading frame, the sender's routing id, before these.

use paxos_core::handshake::NONCE_BYTES;
use paxos_core::NodeId;

/// The prefix of every node's ZeroMQ routing id: node 7 is `node:7`.
pub const ROUTING_ID_PREFIX: &str = "node:";

/// Kind frame of a hello.
pub const KIND_HELLO: &[u8] = b"HELLO";
/// Kind frame of a proof.
pub const KIND_PROOF: &[u8] = b"PROOF";
/// Kind frame of a protocol message.
pub const KIND_MESSAGE: &[u8] = b"MSG";
/// Kind frame of a refusal (the ROUTER tells a DEALER to start a new handshake).
pub const KIND_REFUSED: &[u8] = b"REFUSED";

/// Bytes of the session token that prefixes every protocol message: the
/// ROUTER's handshake nonce for that connection.
pub const TOKEN_BYTES: usize = NONCE_BYTES;

/// The routing id a node's DEALERs present: ASCII `node:<decimal id>`.
///
/// Printable on purpose: libzmq reserves routing ids that start with a zero
/// byte, which a binary big-endian id would do.
pub fn routing_id(node: NodeId) -> Vec<u8> {
    format!("{ROUTING_ID_PREFIX}{node}").into_bytes()
}

/// Parses a routing id made by [`routing_id`]; anything else (leading zeros,
/// signs, overflow, other text) is `None`, so the mapping is one-to-one.
pub fn parse_routing_id(bytes: &[u8]) -> Option<NodeId> {
    let digits = bytes.strip_prefix(ROUTING_ID_PREFIX.as_bytes())?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    if digits.len() > 1 && digits[0] == b'0' {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// One message from a DEALER, after the ROUTER's routing-id frame was taken off.
#[derive(Debug, PartialEq, Eq)]
pub enum Inbound<'a> {
    /// A handshake hello (not yet decoded).
    Hello(&'a [u8]),
    /// A handshake proof (not yet decoded).
    Proof(&'a [u8]),
    /// A protocol message: session token and wire body (not yet decoded).
    Message {
        /// The session token the sender was given.
        token: &'a [u8],
        /// The [`paxos_core::wire`] body.
        body: &'a [u8],
    },
}

/// Why a message from a DEALER was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum InboundError {
    /// The message has no frames after the routing id.
    #[error("empty message")]
    Empty,
    /// The kind frame is not one this transport sends.
    #[error("unknown message kind ({length} bytes)")]
    UnknownKind {
        /// Length of the kind frame.
        length: usize,
    },
    /// The kind is known but the number of frames is wrong.
    #[error("a {kind} message needs {expected} frames, got {found}")]
    FrameCount {
        /// The kind.
        kind: &'static str,
        /// Frames expected, the kind frame included.
        expected: usize,
        /// Frames received.
        found: usize,
    },
    /// The session token has the wrong length.
    #[error("session token of {0} bytes, expected {TOKEN_BYTES}")]
    TokenLength(usize),
}

/// Sorts the frames of one message by kind, checking counts and lengths only.
pub fn parse_inbound<'a>(frames: &[&'a [u8]]) -> Result<Inbound<'a>, InboundError> {
    let Some((kind, rest)) = frames.split_first() else { return Err(InboundError::Empty) };
    let count = |name: &'static str, expected: usize| {
        if frames.len() == expected {
            Ok(())
        } else {
            Err(InboundError::FrameCount { kind: name, expected, found: frames.len() })
        }
    };
    match *kind {
        KIND_HELLO => count("HELLO", 2).map(|()| Inbound::Hello(rest[0])),
        KIND_PROOF => count("PROOF", 2).map(|()| Inbound::Proof(rest[0])),
        KIND_MESSAGE => {
            count("MSG", 3)?;
            if rest[0].len() != TOKEN_BYTES {
                return Err(InboundError::TokenLength(rest[0].len()));
            }
            Ok(Inbound::Message { token: rest[0], body: rest[1] })
        }
        other => Err(InboundError::UnknownKind { length: other.len() }),
    }
}

/// Compares two session tokens without an early exit on the first difference.
pub fn tokens_equal(left: &[u8], right: &[u8]) -> bool {
    left.len() == right.len() && left.iter().zip(right).fold(0u8, |acc, (a, b)| acc | (a ^ b)) == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn routing_ids_round_trip_and_reject_lookalikes() {
        for node in [0, 1, 7, 42, u64::MAX] {
            assert_eq!(parse_routing_id(&routing_id(node)), Some(node));
        }
        for bad in [&b"node:"[..], b"node:01", b"node:+1", b"node:-1", b"node:18446744073709551616", b"1", b"NODE:1"] {
            assert_eq!(parse_routing_id(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        assert_ne!(routing_id(1)[0], 0, "libzmq reserves routing ids starting with a zero byte");
    }

    #[test]
    fn messages_are_sorted_by_kind_with_counts_checked() {
        let token = [7u8; TOKEN_BYTES];
        assert_eq!(parse_inbound(&[KIND_HELLO, b"h"]), Ok(Inbound::Hello(b"h")));
        assert_eq!(parse_inbound(&[KIND_PROOF, b"p"]), Ok(Inbound::Proof(b"p")));
        assert_eq!(
            parse_inbound(&[KIND_MESSAGE, &token, b"body"]),
            Ok(Inbound::Message { token: &token, body: b"body" })
        );
        assert_eq!(parse_inbound(&[]), Err(InboundError::Empty));
        assert_eq!(parse_inbound(&[b"what"]), Err(InboundError::UnknownKind { length: 4 }));
        assert!(matches!(parse_inbound(&[KIND_HELLO]), Err(InboundError::FrameCount { .. })));
        assert!(matches!(parse_inbound(&[KIND_MESSAGE, b"body"]), Err(InboundError::FrameCount { .. })));
        assert_eq!(parse_inbound(&[KIND_MESSAGE, b"short", b"body"]), Err(InboundError::TokenLength(5)));
    }

    #[test]
    fn token_comparison() {
        assert!(tokens_equal(&[1, 2, 3], &[1, 2, 3]));
        assert!(!tokens_equal(&[1, 2, 3], &[1, 2, 4]));
        assert!(!tokens_equal(&[1, 2], &[1, 2, 3]));
    }
}
