//! The outbound side: one DEALER per peer, routing id `node:<own id>`, which
//! connects to the peer's ROUTER, runs the dialer half of the shared handshake,
//! then drains that peer's queue. Every (re)connection is a new DEALER and a new
//! handshake; a refusal from the ROUTER (it restarted and forgot the session)
//! ends the connection so the next one handshakes again.

use bytes::Bytes;
use futures::StreamExt;
use paxos_core::handshake::{Handshake, Hello, Side};
use paxos_core::{wire, NodeId, OutboundQueue};
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::time::Instant;
use zeromq::util::PeerIdentity;
use zeromq::{DealerRecvHalf, DealerSocket, Socket, SocketEvent, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

use crate::protocol::{routing_id, KIND_HELLO, KIND_MESSAGE, KIND_PROOF, KIND_REFUSED, TOKEN_BYTES};
use crate::shared::{random_nonce, Counters, Shared};

/// Why one connection to a peer ended.
struct Ended {
    /// Whether its handshake had completed (then the backoff starts over).
    established: bool,
    reason: String,
}

fn multipart(frames: &[&[u8]]) -> ZmqMessage {
    let mut message = ZmqMessage::from(Bytes::copy_from_slice(frames[0]));
    for frame in &frames[1..] {
        message.push_back(Bytes::copy_from_slice(frame));
    }
    message
}

/// Keeps a session to `peer` open for as long as the transport runs (the task is aborted at shutdown).
pub(crate) async fn dial_loop(shared: Arc<Shared>, peer: NodeId, address: SocketAddr, queue: Arc<OutboundQueue>) {
    let mut backoff = shared.config.backoff_min;
    loop {
        let ended = connect_once(&shared, peer, address, &queue).await;
        if ended.established {
            tracing::info!(peer, reason = %ended.reason, "ZeroMQ session to peer ended; reconnecting");
            backoff = shared.config.backoff_min;
        } else {
            tracing::debug!(peer, reason = %ended.reason, "ZeroMQ connection to peer failed; retrying");
        }
        // Jitter in the upper half of the delay, so restarted nodes do not retry in lockstep.
        let delay = backoff.mul_f64(0.5 + fastrand::f64() / 2.0);
        tokio::time::sleep(delay).await;
        backoff = (backoff * 2).min(shared.config.backoff_max);
    }
}

async fn next_reply(receiver: &mut DealerRecvHalf, deadline: Instant) -> Result<Vec<Bytes>, String> {
    match tokio::time::timeout_at(deadline, receiver.recv()).await {
        Err(_) => Err("handshake timed out".to_owned()),
        Ok(Err(error)) => Err(format!("receive failed: {error}")),
        Ok(Ok(message)) => Ok(message.into_vec()),
    }
}

fn expect_kind<'a>(frames: &'a [Bytes], kind: &[u8]) -> Result<&'a [u8], String> {
    match frames {
        [found, body] if found.as_ref() == kind => Ok(body),
        [found, reason] if found.as_ref() == KIND_REFUSED => {
            Err(format!("the peer refused us: {}", String::from_utf8_lossy(reason)))
        }
        _ => Err(format!("unexpected reply while waiting for {}", String::from_utf8_lossy(kind))),
    }
}

async fn connect_once(shared: &Shared, peer: NodeId, address: SocketAddr, queue: &OutboundQueue) -> Ended {
    let config = &shared.config;
    let failed = |reason: String| Ended { established: false, reason };
    let mut options = SocketOptions::default();
    let identity = match PeerIdentity::try_from(routing_id(config.node_id)) {
        Ok(identity) => identity,
        Err(error) => return failed(format!("routing id: {error}")),
    };
    options.peer_identity(identity);
    options.connect_timeout(config.handshake_timeout);
    let mut socket = DealerSocket::with_options(options);
    let mut monitor = socket.monitor();
    let deadline = Instant::now() + config.handshake_timeout;
    let endpoint = format!("tcp://{address}");
    match tokio::time::timeout_at(deadline, socket.connect(&endpoint)).await {
        Err(_) => return failed(format!("connect to {endpoint} timed out")),
        Ok(Err(error)) => return failed(format!("connect to {endpoint}: {error}")),
        Ok(Ok(())) => {}
    }
    let (mut sender, mut receiver) = socket.split();

    // The dialer half of paxos_core::handshake: our hello, their hello and proof, our proof.
    let nonce = match random_nonce() {
        Ok(nonce) => nonce,
        Err(error) => return failed(format!("no random source: {error}")),
    };
    let mut handshake = Handshake::new(shared.rules.clone(), Side::Dialer, nonce, Some(peer));
    if let Err(error) = sender.send(multipart(&[KIND_HELLO, &handshake.hello_bytes()])).await {
        return failed(format!("send hello: {error}"));
    }
    let hello_frames = match next_reply(&mut receiver, deadline).await {
        Ok(frames) => frames,
        Err(reason) => return failed(reason),
    };
    let (proof, token) = match expect_kind(&hello_frames, KIND_HELLO).and_then(|bytes| {
        let token: [u8; TOKEN_BYTES] = Hello::decode(bytes).map_err(|error| error.to_string())?.nonce;
        let proof = handshake.on_hello(bytes).map_err(|error| error.to_string())?;
        Ok((proof, token))
    }) {
        Ok(pair) => pair,
        Err(reason) => {
            Counters::add(&shared.counters.handshakes_refused);
            if shared.warnings.allow() {
                tracing::warn!(peer, %address, "handshake with ZeroMQ peer failed: {reason}");
            }
            return failed(reason);
        }
    };
    let proof_frames = match next_reply(&mut receiver, deadline).await {
        Ok(frames) => frames,
        Err(reason) => return failed(reason),
    };
    if let Err(reason) = expect_kind(&proof_frames, KIND_PROOF)
        .and_then(|bytes| handshake.on_proof(bytes).map_err(|error| error.to_string()))
    {
        Counters::add(&shared.counters.handshakes_refused);
        if shared.warnings.allow() {
            tracing::warn!(peer, %address, "handshake with ZeroMQ peer failed: {reason}");
        }
        return failed(reason);
    }
    if let Err(error) = sender.send(multipart(&[KIND_PROOF, &proof])).await {
        return failed(format!("send proof: {error}"));
    }
    Counters::add(&shared.counters.outbound_sessions);
    tracing::debug!(peer, %address, "ZeroMQ session to peer established");
    let ended = |reason: String| Ended { established: true, reason };

    let mut body = Vec::with_capacity(256);
    loop {
        tokio::select! {
            () = queue.ready() => {
                for message in queue.take(config.send_batch_messages_max) {
                    body.clear();
                    wire::encode_into(config.node_id, &message, &mut body);
                    if body.len() > config.frame_bytes_max {
                        Counters::add(&shared.counters.messages_dropped_oversized);
                        if shared.warnings.allow() {
                            tracing::warn!(peer, kind = message.kind(), bytes = body.len(), limit = config.frame_bytes_max,
                                "dropped a message that encodes larger than frame_bytes_max");
                        }
                        continue;
                    }
                    let mut frames = ZmqMessage::from(Bytes::from_static(KIND_MESSAGE));
                    frames.push_back(Bytes::copy_from_slice(&token));
                    frames.push_back(Bytes::copy_from_slice(&body));
                    if let Err(error) = sender.send(frames).await {
                        return ended(format!("send: {error}"));
                    }
                }
            }
            reply = receiver.recv() => match reply {
                Ok(message) => {
                    let frames = message.into_vec();
                    if let [kind, reason] = frames.as_slice() {
                        if kind.as_ref() == KIND_REFUSED {
                            return ended(format!("the peer refused our session: {}", String::from_utf8_lossy(reason)));
                        }
                    }
                    tracing::debug!(peer, "ignored an unexpected message from the peer's ROUTER");
                }
                Err(error) => return ended(format!("receive: {error}")),
            },
            event = monitor.next() => match event {
                Some(SocketEvent::Disconnected(_)) | None => return ended("disconnected".to_owned()),
                Some(_) => {}
            },
        }
        // Yield between batches so a long queue cannot starve the replies and monitor branches.
        tokio::task::yield_now().await;
    }
}
