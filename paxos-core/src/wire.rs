//! The one wire encoding every transport shares: postcard inside a versioned envelope.
//!
//! Layout of an encoded frame body: `[version: u8][from: varint u64][postcard(Message)]`.
//! Transports add their own framing (a length prefix, a ZeroMQ frame) around it.
//! Decoding checks length and version before parsing and rejects trailing bytes,
//! so hostile input yields an error, never a panic (STYLE.md rule 6).

use crate::ballot::NodeId;
use crate::message::Message;

/// The format version this build writes and the only one it reads.
pub const WIRE_VERSION: u8 = 4;

/// The largest encoded message accepted by default; transports may lower it.
pub const FRAME_BYTES_MAX_DEFAULT: usize = 16 * 1024 * 1024;

/// Why a frame could not be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame was empty.
    #[error("empty frame")]
    Empty,
    /// The frame is larger than the configured limit.
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Size of the frame.
        length: usize,
        /// The limit.
        limit: usize,
    },
    /// The sender speaks a format version this build does not.
    #[error("unsupported wire version {found} (this build speaks {WIRE_VERSION})")]
    UnsupportedVersion {
        /// The version byte received.
        found: u8,
    },
    /// The body did not parse as a message.
    #[error("malformed message: {0}")]
    Malformed(String),
    /// A message parsed, but bytes were left over.
    #[error("{0} trailing bytes after the message")]
    TrailingBytes(usize),
}

/// Encodes `message` from `from` into a frame body.
pub fn encode(from: NodeId, message: &Message) -> Vec<u8> {
    let mut out = Vec::with_capacity(64);
    encode_into(from, message, &mut out);
    out
}

/// Appends the encoding of `message` from `from` to `out`.
pub fn encode_into(from: NodeId, message: &Message, out: &mut Vec<u8>) {
    out.push(WIRE_VERSION);
    let mut varint = [0u8; 10];
    let header = postcard::to_slice(&from, &mut varint).expect("a u64 varint fits in 10 bytes");
    out.extend_from_slice(header);
    let body = postcard::to_extend(message, std::mem::take(out)).expect("writing to a Vec cannot fail");
    *out = body;
}

/// Decodes a frame body, enforcing `limit` bytes before looking inside.
pub fn decode(bytes: &[u8], limit: usize) -> Result<(NodeId, Message), WireError> {
    if bytes.is_empty() {
        return Err(WireError::Empty);
    }
    if bytes.len() > limit {
        return Err(WireError::TooLarge { length: bytes.len(), limit });
    }
    if bytes[0] != WIRE_VERSION {
        return Err(WireError::UnsupportedVersion { found: bytes[0] });
    }
    let (from, rest) =
        postcard::take_from_bytes::<NodeId>(&bytes[1..]).map_err(|error| WireError::Malformed(error.to_string()))?;
    let (message, rest) =
        postcard::take_from_bytes::<Message>(rest).map_err(|error| WireError::Malformed(error.to_string()))?;
    if !rest.is_empty() {
        return Err(WireError::TrailingBytes(rest.len()));
    }
    Ok((from, message))
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use proptest::prelude::*;

    use super::*;
    use crate::ballot::Ballot;
    use crate::message::{AcceptedEntry, Command, PrepareScope, Value};

    fn sample() -> Message {
        Message::Promise {
            ballot: Ballot::new(5, 2),
            scope: PrepareScope::From(3),
            accepted: Box::new([AcceptedEntry {
                slot: 3,
                ballot: Ballot::new(3, 1),
                value: Value::Commands(Arc::from(vec![Command::new(1, 1, b"foo".to_vec())])),
            }]),
            chosen_through: 2,
            continues_at: std::num::NonZeroU64::new(9),
        }
    }

    #[test]
    fn round_trips() {
        let bytes = encode(7, &sample());
        assert_eq!(decode(&bytes, FRAME_BYTES_MAX_DEFAULT), Ok((7, sample())));
    }

    #[test]
    fn rejects_bad_version_trailing_and_oversize() {
        let mut bytes = encode(7, &sample());
        let limit = FRAME_BYTES_MAX_DEFAULT;
        bytes.push(0);
        assert_eq!(decode(&bytes, limit), Err(WireError::TrailingBytes(1)));
        bytes.pop();
        assert!(matches!(decode(&bytes, 4), Err(WireError::TooLarge { .. })));
        bytes[0] = 9;
        assert_eq!(decode(&bytes, limit), Err(WireError::UnsupportedVersion { found: 9 }));
        assert_eq!(decode(&[], limit), Err(WireError::Empty));
    }

    #[test]
    fn every_truncation_is_an_error() {
        let bytes = encode(7, &sample());
        for cut in 0..bytes.len() {
            assert!(decode(&bytes[..cut], FRAME_BYTES_MAX_DEFAULT).is_err(), "cut at {cut}");
        }
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let _ = decode(&bytes, 1024);
        }

        #[test]
        fn versioned_garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut framed = vec![WIRE_VERSION];
            framed.extend_from_slice(&bytes);
            let _ = decode(&framed, 1024);
        }
    }
}
