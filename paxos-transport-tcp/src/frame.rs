//! Length-prefixed framing: `[length: u32 big-endian][body: length bytes]`.
//!
//! [`split_frame`] is the pure, check-then-parse decoder (the length is checked
//! against the limit before anything is allocated or read); [`FrameReader`] runs
//! it over an async byte stream, and [`push_frame`] writes one frame into a buffer.

use futures::io::{AsyncRead, AsyncReadExt};

/// Bytes of the length prefix.
pub const LENGTH_PREFIX_BYTES: usize = 4;

/// How much the reader asks the socket for at once.
const READ_CHUNK_BYTES: usize = 64 * 1024;

/// Why a byte stream is not a valid sequence of frames.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// A zero-length frame: never sent by this transport.
    #[error("zero-length frame")]
    Empty,
    /// The length prefix announces more than the limit; nothing was allocated for it.
    #[error("frame of {length} bytes announced, the limit is {limit} bytes; raise frame_bytes_max on both sides if this is legitimate")]
    TooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: usize,
    },
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame: {received} of {expected} bytes received")]
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        received: usize,
        /// Bytes the frame needed (prefix included), or the prefix size if the prefix was cut.
        expected: usize,
    },
    /// The socket failed.
    #[error("socket error: {0}")]
    Io(#[from] std::io::Error),
}

/// What [`split_frame`] found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Split<'a> {
    /// A whole frame: its body, and how many buffer bytes (prefix included) it took.
    Frame {
        /// The frame body.
        body: &'a [u8],
        /// Bytes consumed from the buffer.
        consumed: usize,
    },
    /// The buffer holds only part of a frame; `needed` bytes in total are required.
    Incomplete {
        /// Total bytes (prefix included) the next frame needs.
        needed: usize,
    },
}

/// Finds the first frame in `buffer`, refusing a length above `limit` (or zero)
/// from the prefix alone. Never panics and never allocates.
pub fn split_frame(buffer: &[u8], limit: usize) -> Result<Split<'_>, FrameError> {
    let Some(prefix) = buffer.first_chunk::<LENGTH_PREFIX_BYTES>() else {
        return Ok(Split::Incomplete { needed: LENGTH_PREFIX_BYTES });
    };
    let length = u32::from_be_bytes(*prefix);
    if length == 0 {
        return Err(FrameError::Empty);
    }
    if length as u64 > limit as u64 {
        return Err(FrameError::TooLarge { length: length as u64, limit });
    }
    let total = LENGTH_PREFIX_BYTES + length as usize;
    match buffer.get(LENGTH_PREFIX_BYTES..total) {
        Some(body) => Ok(Split::Frame { body, consumed: total }),
        None => Ok(Split::Incomplete { needed: total }),
    }
}

/// Appends one frame carrying `body` to `out`.
///
/// # Panics
/// If `body` is empty or longer than `u32::MAX`; callers check against their limit first.
pub fn push_frame(out: &mut Vec<u8>, body: &[u8]) {
    assert!(!body.is_empty(), "frames are never empty");
    let length = u32::try_from(body.len()).expect("frame bodies are checked against frame_bytes_max");
    out.extend_from_slice(&length.to_be_bytes());
    out.extend_from_slice(body);
}

/// Appends a frame whose body `encode` writes, in place (no copy of the body).
/// Returns the body length; if it is zero or above `limit` the frame is removed
/// again and `None` is returned.
pub fn push_frame_with(out: &mut Vec<u8>, limit: usize, encode: impl FnOnce(&mut Vec<u8>)) -> Option<usize> {
    let start = out.len();
    out.extend_from_slice(&[0; LENGTH_PREFIX_BYTES]);
    encode(out);
    let length = out.len() - start - LENGTH_PREFIX_BYTES;
    if length == 0 || length > limit || length > u32::MAX as usize {
        out.truncate(start);
        return None;
    }
    out[start..start + LENGTH_PREFIX_BYTES].copy_from_slice(&(length as u32).to_be_bytes());
    Some(length)
}

/// Reads frames from a byte stream, buffering what arrives past the current frame.
///
/// Cancel-safe: dropping a [`FrameReader::next_frame`] future loses no bytes.
pub struct FrameReader<R> {
    reader: R,
    buffer: Vec<u8>,
    start: usize,
    end: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// A reader over `reader` with an empty buffer.
    pub fn new(reader: R) -> FrameReader<R> {
        FrameReader { reader, buffer: vec![0; READ_CHUNK_BYTES], start: 0, end: 0 }
    }

    /// The next frame body, at most `limit` bytes; `Ok(None)` on a clean end of
    /// stream between frames.
    pub async fn next_frame(&mut self, limit: usize) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let needed = match split_frame(&self.buffer[self.start..self.end], limit)? {
                Split::Frame { consumed, .. } => {
                    let body = self.start + LENGTH_PREFIX_BYTES..self.start + consumed;
                    self.start += consumed;
                    return Ok(Some(&self.buffer[body]));
                }
                Split::Incomplete { needed } => needed,
            };
            // Make room: move the partial frame to the front, then grow only to
            // what the (already limit-checked) prefix announced.
            if self.start > 0 {
                self.buffer.copy_within(self.start..self.end, 0);
                self.end -= self.start;
                self.start = 0;
            }
            if self.buffer.len() < needed {
                self.buffer.resize(needed, 0);
            } else if self.buffer.len() > READ_CHUNK_BYTES.max(needed) && self.end <= READ_CHUNK_BYTES {
                // Give back the memory of an earlier large frame.
                self.buffer.truncate(READ_CHUNK_BYTES.max(needed));
                self.buffer.shrink_to_fit();
            }
            let read = self.reader.read(&mut self.buffer[self.end..]).await?;
            if read == 0 {
                if self.end == 0 {
                    return Ok(None);
                }
                return Err(FrameError::Truncated { received: self.end, expected: needed });
            }
            self.end += read;
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frames(bodies: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for body in bodies {
            push_frame(&mut out, body);
        }
        out
    }

    fn read_all(bytes: &[u8], limit: usize) -> (Vec<Vec<u8>>, Option<FrameError>) {
        futures::executor::block_on(async {
            let mut reader = FrameReader::new(futures::io::Cursor::new(bytes.to_vec()));
            let mut out = Vec::new();
            loop {
                match reader.next_frame(limit).await {
                    Ok(Some(body)) => out.push(body.to_vec()),
                    Ok(None) => return (out, None),
                    Err(error) => return (out, Some(error)),
                }
            }
        })
    }

    #[test]
    fn splits_whole_and_partial_frames() {
        let bytes = frames(&[b"abc", b"de"]);
        assert_eq!(split_frame(&bytes, 16).unwrap(), Split::Frame { body: b"abc", consumed: 7 });
        assert_eq!(split_frame(&bytes[7..], 16).unwrap(), Split::Frame { body: b"de", consumed: 6 });
        assert_eq!(split_frame(&bytes[..5], 16).unwrap(), Split::Incomplete { needed: 7 });
        assert_eq!(split_frame(&bytes[..2], 16).unwrap(), Split::Incomplete { needed: 4 });
    }

    #[test]
    fn refuses_zero_and_oversized_lengths_from_the_prefix_alone() {
        assert!(matches!(split_frame(&[0, 0, 0, 0], 16), Err(FrameError::Empty)));
        assert!(matches!(
            split_frame(&[0xFF, 0xFF, 0xFF, 0xFF], 1024),
            Err(FrameError::TooLarge { length: 0xFFFF_FFFF, limit: 1024 })
        ));
        let (_, error) = read_all(&[0x7F, 0, 0, 0], 1024);
        assert!(matches!(error, Some(FrameError::TooLarge { .. })), "no 2 GiB allocation, just an error");
    }

    #[test]
    fn reader_yields_frames_then_reports_truncation() {
        let large = vec![7u8; 200_000];
        let bytes = frames(&[b"one", &large, b"three"]);
        let (bodies, error) = read_all(&bytes, 1 << 20);
        assert_eq!(bodies, vec![b"one".to_vec(), large.clone(), b"three".to_vec()]);
        assert!(error.is_none());
        let (bodies, error) = read_all(&bytes[..bytes.len() - 2], 1 << 20);
        assert_eq!(bodies.len(), 2);
        assert!(matches!(error, Some(FrameError::Truncated { expected: 9, .. })), "{error:?}");
    }

    #[test]
    fn push_frame_with_drops_what_is_too_large() {
        let mut out = b"keep".to_vec();
        assert_eq!(push_frame_with(&mut out, 4, |buffer| buffer.extend_from_slice(b"12345")), None);
        assert_eq!(out, b"keep");
        assert_eq!(push_frame_with(&mut out, 4, |buffer| buffer.extend_from_slice(b"1234")), Some(4));
        assert_eq!(&out[4..], &[0, 0, 0, 4, b'1', b'2', b'3', b'4']);
    }

    proptest! {
        // The frame decoder over arbitrary bytes: never panics, and whatever it
        // yields re-encodes to a prefix of the input.
        #[test]
        fn decoder_never_panics_and_is_consistent(bytes in proptest::collection::vec(any::<u8>(), 0..512), limit in 1usize..300) {
            let (bodies, _) = read_all(&bytes, limit);
            let mut again = Vec::new();
            for body in &bodies {
                prop_assert!(!body.is_empty() && body.len() <= limit);
                push_frame(&mut again, body);
            }
            prop_assert_eq!(&bytes[..again.len()], &again[..]);
        }

        #[test]
        fn framed_bodies_round_trip(bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 1..100), 0..20)) {
            let slices: Vec<&[u8]> = bodies.iter().map(Vec::as_slice).collect();
            let (decoded, error) = read_all(&frames(&slices), 100);
            prop_assert!(error.is_none());
            prop_assert_eq!(decoded, bodies);
        }
    }
}
