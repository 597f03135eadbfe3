//! A ZMTP 3 frame-size guard in front of the zeromq ROUTER.
//!
//! zeromq 0.7 has no maximum message size (libzmq's `ZMQ_MAXMSGSIZE`): it
//! reserves whatever length a frame header announces, so one header claiming
//! 2^62 bytes aborts the process on allocation failure, and a multipart message
//! may grow without bound. The node's public port is therefore a small TCP relay:
//! [`ZmtpGuard`] reads the peer-to-node byte stream as ZMTP frames (counting,
//! never buffering bodies) and cuts the connection *before forwarding* any
//! frame header whose length or part count exceeds the limits. The bytes it lets
//! through reach the real ROUTER on an internal loopback port unchanged, so the
//! ZeroMQ conversation (greeting, READY with the routing id, frames) is exactly
//! the peer's.

use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Bytes of a ZMTP 3 greeting.
const GREETING_BYTES: usize = 64;
/// ZMTP frame flag: more frames follow in this message.
const FLAG_MORE: u8 = 0b0000_0001;
/// ZMTP frame flag: an 8-byte length follows instead of a 1-byte one.
const FLAG_LONG: u8 = 0b0000_0010;
/// ZMTP frame flag: a command frame (READY, PING, ...).
const FLAG_COMMAND: u8 = 0b0000_0100;
/// The largest command frame accepted (READY carries the socket type and a routing id of at most 255 bytes).
pub(crate) const COMMAND_BYTES_MAX: u64 = 4096;
/// The most frames in one message; this transport's messages have at most three.
pub(crate) const PARTS_MAX: u32 = 8;

/// Why the guard cut a connection.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GuardError {
    /// The first byte is not a ZMTP 3 greeting's.
    #[error("not a ZMTP greeting")]
    Greeting,
    /// A frame header has reserved flag bits set.
    #[error("frame flags {0:#04x} have reserved bits set")]
    Flags(u8),
    /// A data frame announces more bytes than the limit.
    #[error("frame of {length} bytes exceeds the limit of {limit} bytes")]
    FrameTooLarge {
        /// The announced length.
        length: u64,
        /// The limit.
        limit: u64,
    },
    /// A command frame announces more bytes than the limit.
    #[error("command of {length} bytes exceeds the limit of {COMMAND_BYTES_MAX} bytes")]
    CommandTooLarge {
        /// The announced length.
        length: u64,
    },
    /// The peer sent no complete message within the first-message deadline.
    #[error("no complete message within the handshake timeout")]
    Silent,
    /// A message has too many frames, or its frames together are too large.
    #[error("multipart message exceeds {PARTS_MAX} frames or {limit} bytes")]
    MessageTooLarge {
        /// The byte limit of one message.
        limit: u64,
    },
}

#[derive(Debug, Clone, Copy)]
enum State {
    Greeting { seen: usize },
    Header,
    Length { long: bool, command: bool, more: bool, have: usize, value: u64 },
    Body { remaining: u64, more: bool },
}

/// Checks one direction of a ZMTP 3 stream, chunk by chunk, in constant memory.
#[derive(Debug, Clone)]
pub struct ZmtpGuard {
    state: State,
    frame_bytes_max: u64,
    message_bytes_max: u64,
    parts: u32,
    message_bytes: u64,
    messages: u64,
}

impl ZmtpGuard {
    /// A guard allowing data frames of up to `frame_bytes_max` bytes and messages
    /// of up to `message_bytes_max` bytes in all.
    pub fn new(frame_bytes_max: u64, message_bytes_max: u64) -> ZmtpGuard {
        ZmtpGuard {
            state: State::Greeting { seen: 0 },
            frame_bytes_max,
            message_bytes_max,
            parts: 0,
            message_bytes: 0,
            messages: 0,
        }
    }

    /// Complete data messages seen so far.
    pub fn messages(&self) -> u64 {
        self.messages
    }

    /// Feeds the next bytes of the stream; an error means: close the connection
    /// and forward nothing of this chunk.
    pub fn feed(&mut self, mut bytes: &[u8]) -> Result<(), GuardError> {
        while !bytes.is_empty() {
            match self.state {
                State::Greeting { seen } => {
                    if seen == 0 && bytes[0] != 0xff {
                        return Err(GuardError::Greeting);
                    }
                    let take = (GREETING_BYTES - seen).min(bytes.len());
                    bytes = &bytes[take..];
                    self.state = if seen + take == GREETING_BYTES {
                        State::Header
                    } else {
                        State::Greeting { seen: seen + take }
                    };
                }
                State::Header => {
                    let flags = bytes[0];
                    bytes = &bytes[1..];
                    if flags & !(FLAG_MORE | FLAG_LONG | FLAG_COMMAND) != 0 {
                        return Err(GuardError::Flags(flags));
                    }
                    let command = flags & FLAG_COMMAND != 0;
                    let more = flags & FLAG_MORE != 0;
                    if command && more {
                        return Err(GuardError::Flags(flags));
                    }
                    self.state = State::Length { long: flags & FLAG_LONG != 0, command, more, have: 0, value: 0 };
                }
                State::Length { long, command, more, have, value } => {
                    let value = (value << 8) | u64::from(bytes[0]);
                    bytes = &bytes[1..];
                    let have = have + 1;
                    if have < if long { 8 } else { 1 } {
                        self.state = State::Length { long, command, more, have, value };
                        continue;
                    }
                    self.check_frame(value, command, more)?;
                    self.state = if value == 0 { State::Header } else { State::Body { remaining: value, more } };
                }
                State::Body { remaining, more } => {
                    let take = remaining.min(bytes.len() as u64);
                    bytes = &bytes[take as usize..];
                    self.state = if remaining == take {
                        State::Header
                    } else {
                        State::Body { remaining: remaining - take, more }
                    };
                }
            }
        }
        Ok(())
    }

    fn check_frame(&mut self, length: u64, command: bool, more: bool) -> Result<(), GuardError> {
        if command {
            if length > COMMAND_BYTES_MAX {
                return Err(GuardError::CommandTooLarge { length });
            }
            return Ok(());
        }
        if length > self.frame_bytes_max {
            return Err(GuardError::FrameTooLarge { length, limit: self.frame_bytes_max });
        }
        self.parts += 1;
        self.message_bytes = self.message_bytes.saturating_add(length);
        if self.parts > PARTS_MAX || self.message_bytes > self.message_bytes_max {
            return Err(GuardError::MessageTooLarge { limit: self.message_bytes_max });
        }
        if !more {
            self.parts = 0;
            self.message_bytes = 0;
            self.messages += 1;
        }
        Ok(())
    }
}

/// Relays one accepted connection to the internal ROUTER at `internal`, checking
/// the inbound direction with a [`ZmtpGuard`]. Returns when either side closes;
/// an error names why the peer was cut off.
///
/// The peer must deliver its first data message (its hello) within
/// `first_message_timeout`, so a connection that only holds a slot is cut.
pub(crate) async fn relay(
    inbound: TcpStream,
    internal: SocketAddr,
    frame_bytes_max: u64,
    message_bytes_max: u64,
    first_message_timeout: std::time::Duration,
) -> Result<(), RelayError> {
    let deadline = tokio::time::Instant::now() + first_message_timeout;
    let outbound = TcpStream::connect(internal).await.map_err(RelayError::Internal)?;
    let _ = inbound.set_nodelay(true);
    let _ = outbound.set_nodelay(true);
    let (mut inbound_read, mut inbound_write) = inbound.into_split();
    let (mut outbound_read, mut outbound_write) = outbound.into_split();
    let upstream = async {
        let mut guard = ZmtpGuard::new(frame_bytes_max, message_bytes_max);
        let mut buffer = vec![0u8; 64 * 1024];
        loop {
            let read = if guard.messages() == 0 {
                tokio::time::timeout_at(deadline, inbound_read.read(&mut buffer))
                    .await
                    .map_err(|_| RelayError::Guard(GuardError::Silent))?
            } else {
                inbound_read.read(&mut buffer).await
            };
            let read = read.map_err(RelayError::Peer)?;
            if read == 0 {
                let _ = outbound_write.shutdown().await;
                return Ok(());
            }
            guard.feed(&buffer[..read]).map_err(RelayError::Guard)?;
            outbound_write.write_all(&buffer[..read]).await.map_err(RelayError::Internal)?;
        }
    };
    let downstream = async {
        tokio::io::copy(&mut outbound_read, &mut inbound_write).await.map_err(RelayError::Peer)?;
        Ok(())
    };
    // Whichever direction ends first ends the connection: the ROUTER closing means
    // the node is shutting down, the peer closing means it left.
    tokio::select! {
        result = upstream => result,
        result = downstream => result,
    }
}

/// Why a relayed connection ended abnormally.
#[derive(Debug, thiserror::Error)]
pub(crate) enum RelayError {
    /// The peer broke a ZMTP limit.
    #[error("{0}")]
    Guard(GuardError),
    /// The peer's socket failed.
    #[error("peer connection failed: {0}")]
    Peer(std::io::Error),
    /// The internal ROUTER could not be reached.
    #[error("internal ROUTER unreachable: {0}")]
    Internal(std::io::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    fn greeting() -> Vec<u8> {
        let mut bytes = vec![0u8; GREETING_BYTES];
        bytes[0] = 0xff;
        bytes[9] = 0x7f;
        bytes[10] = 3;
        bytes[12..16].copy_from_slice(b"NULL");
        bytes
    }

    fn frame(body: &[u8], more: bool, command: bool) -> Vec<u8> {
        let mut flags = if more { FLAG_MORE } else { 0 } | if command { FLAG_COMMAND } else { 0 };
        let mut out = Vec::new();
        if body.len() > 255 {
            flags |= FLAG_LONG;
            out.push(flags);
            out.extend_from_slice(&(body.len() as u64).to_be_bytes());
        } else {
            out.push(flags);
            out.push(body.len() as u8);
        }
        out.extend_from_slice(body);
        out
    }

    fn stream() -> Vec<u8> {
        let mut bytes = greeting();
        bytes.extend(frame(b"\x05READY", false, true));
        bytes.extend(frame(b"MSG", true, false));
        bytes.extend(frame(&[1; 16], true, false));
        bytes.extend(frame(&[2; 1000], false, false));
        bytes.extend(frame(b"", false, false));
        bytes
    }

    #[test]
    fn a_valid_stream_passes_in_any_chunking() {
        let bytes = stream();
        for chunk in [1, 2, 7, 64, 65, 1000, bytes.len()] {
            let mut guard = ZmtpGuard::new(1024, 2048);
            for piece in bytes.chunks(chunk) {
                assert_eq!(guard.feed(piece), Ok(()), "chunk size {chunk}");
            }
            assert_eq!(guard.messages(), 2, "two data messages, the command is not one");
        }
    }

    #[test]
    fn oversized_frames_are_cut_at_the_header() {
        let mut guard = ZmtpGuard::new(1024, 2048);
        let mut bytes = greeting();
        bytes.push(FLAG_LONG);
        bytes.extend_from_slice(&(1u64 << 62).to_be_bytes());
        assert_eq!(guard.feed(&bytes), Err(GuardError::FrameTooLarge { length: 1 << 62, limit: 1024 }));
        let mut guard = ZmtpGuard::new(1024, 2048);
        let mut bytes = greeting();
        bytes.push(FLAG_LONG | FLAG_COMMAND);
        bytes.extend_from_slice(&u64::MAX.to_be_bytes());
        assert_eq!(guard.feed(&bytes), Err(GuardError::CommandTooLarge { length: u64::MAX }));
    }

    #[test]
    fn endless_multipart_messages_are_cut() {
        let mut guard = ZmtpGuard::new(1024, 2048);
        let mut bytes = greeting();
        for _ in 0..PARTS_MAX + 1 {
            bytes.extend(frame(b"x", true, false));
        }
        assert!(matches!(guard.feed(&bytes), Err(GuardError::MessageTooLarge { .. })));
        let mut guard = ZmtpGuard::new(1024, 2048);
        let mut bytes = greeting();
        for _ in 0..3 {
            bytes.extend(frame(&[0; 1000], true, false));
        }
        assert!(matches!(guard.feed(&bytes), Err(GuardError::MessageTooLarge { .. })));
    }

    #[test]
    fn garbage_is_refused() {
        assert_eq!(ZmtpGuard::new(1024, 2048).feed(b"GET / HTTP/1.1\r\n"), Err(GuardError::Greeting));
        let mut bytes = greeting();
        bytes.push(0x80);
        assert_eq!(ZmtpGuard::new(1024, 2048).feed(&bytes), Err(GuardError::Flags(0x80)));
    }

    #[test]
    fn random_bytes_never_panic() {
        let mut rng = fastrand::Rng::with_seed(11);
        for _ in 0..2000 {
            let mut bytes = greeting();
            bytes.extend((0..rng.usize(0..300)).map(|_| rng.u8(..)));
            let mut guard = ZmtpGuard::new(1024, 2048);
            for piece in bytes.chunks(rng.usize(1..50)) {
                if guard.feed(piece).is_err() {
                    break;
                }
            }
        }
    }
}
