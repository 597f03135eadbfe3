//! The inbound side: the node's ROUTER. It runs the acceptor half of the shared
//! handshake per routing id, and accepts a protocol message only from a routing id
//! that completed it on the current session.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use paxos_core::handshake::{Handshake, Hello, Side};
use paxos_core::{wire, NodeId};
use tokio::sync::mpsc;
use zeromq::{RouterRecvHalf, RouterSendHalf, SocketRecv, SocketSend, ZmqMessage};

use crate::protocol::{
    parse_inbound, parse_routing_id, tokens_equal, Inbound, KIND_HELLO, KIND_PROOF, KIND_REFUSED, TOKEN_BYTES,
};
use crate::shared::{random_nonce, Counters, Inboxed, Shared};

/// How long a reply may wait for room in a peer's zeromq queue before it is dropped.
const REPLY_TIMEOUT: Duration = Duration::from_millis(100);
/// The least time between two "no session" refusals sent to one member.
const REFUSAL_INTERVAL: Duration = Duration::from_millis(100);

/// What the ROUTER knows about one member's routing id.
#[derive(Default)]
struct Session {
    /// The token of the member's authenticated session, if any.
    authenticated: Option<[u8; TOKEN_BYTES]>,
    /// A handshake waiting for the member's proof, and the token it will grant.
    pending: Option<(Handshake, [u8; TOKEN_BYTES])>,
    /// When a "no session" refusal was last sent to it.
    last_refusal: Option<Instant>,
}

pub(crate) struct Router {
    shared: Arc<Shared>,
    sender: RouterSendHalf,
    inbox: mpsc::Sender<Inboxed>,
    /// Keyed by member id only (the hello is checked first), so bounded by the membership.
    sessions: HashMap<NodeId, Session>,
}

impl Router {
    pub(crate) fn new(shared: Arc<Shared>, sender: RouterSendHalf, inbox: mpsc::Sender<Inboxed>) -> Router {
        Router { shared, sender, inbox, sessions: HashMap::new() }
    }

    /// Serves until the transport shuts down (this task is then aborted) or zeromq fails.
    pub(crate) async fn run(mut self, mut receiver: RouterRecvHalf) {
        loop {
            let message = match receiver.recv().await {
                Ok(message) => message,
                Err(error) => {
                    tracing::error!(%error, "the ZeroMQ ROUTER failed; this transport stops receiving");
                    return;
                }
            };
            let frames = message.into_vec();
            if !self.handle(&frames).await {
                return;
            }
        }
    }

    fn refuse(&self, identity: &[u8], what: &str, reason: &dyn std::fmt::Display) {
        if self.shared.warnings.allow() {
            tracing::warn!(
                routing_id = %identity.escape_ascii(),
                "refused {what} from a ZeroMQ peer: {reason}"
            );
        }
    }

    async fn reply(&mut self, identity: &[u8], frames: [&[u8]; 2]) {
        let mut message = ZmqMessage::from(Bytes::copy_from_slice(identity));
        for frame in frames {
            message.push_back(Bytes::copy_from_slice(frame));
        }
        // A peer that does not read its replies must not stall the ROUTER.
        match tokio::time::timeout(REPLY_TIMEOUT, self.sender.send(message)).await {
            Ok(Ok(())) => {}
            Ok(Err(error)) => tracing::debug!(%error, "reply to a ZeroMQ peer not sent"),
            Err(_) => tracing::debug!("reply to a ZeroMQ peer dropped: its queue stayed full"),
        }
    }

    /// Handles one message; returns false when the transport is gone.
    async fn handle(&mut self, frames: &[Bytes]) -> bool {
        let Some((identity, rest)) = frames.split_first() else { return true };
        let counters = &self.shared.counters;
        let Some(node) = parse_routing_id(identity) else {
            Counters::add(&counters.frames_refused);
            self.refuse(identity, "a message", &"its routing id is not node:<id>");
            return true;
        };
        let parts: Vec<&[u8]> = rest.iter().map(|frame| frame.as_ref()).collect();
        match parse_inbound(&parts) {
            Err(error) => {
                Counters::add(&counters.frames_refused);
                self.refuse(identity, "a message", &error);
            }
            Ok(Inbound::Hello(bytes)) => self.on_hello(identity, node, bytes).await,
            Ok(Inbound::Proof(bytes)) => self.on_proof(identity, node, bytes).await,
            Ok(Inbound::Message { token, body }) => return self.on_message(identity, node, token, body).await,
        }
        true
    }

    async fn refuse_handshake(&mut self, identity: &[u8], reason: String) {
        Counters::add(&self.shared.counters.handshakes_refused);
        self.refuse(identity, "a handshake", &reason);
        self.reply(identity, [KIND_REFUSED, reason.as_bytes()]).await;
    }

    async fn on_hello(&mut self, identity: &[u8], node: NodeId, bytes: &[u8]) {
        let hello = match Hello::decode(bytes) {
            Ok(hello) => hello,
            Err(error) => return self.refuse_handshake(identity, error.to_string()).await,
        };
        // The routing id decides who later frames are from, so it must name the node the hello names.
        if hello.node_id != node {
            let reason = format!("routing id names node {node} but the hello claims node {}", hello.node_id);
            return self.refuse_handshake(identity, reason).await;
        }
        let nonce = match random_nonce() {
            Ok(nonce) => nonce,
            Err(error) => return self.refuse_handshake(identity, format!("no random source: {error}")).await,
        };
        let mut handshake = Handshake::new(self.shared.rules.clone(), Side::Acceptor, nonce, None);
        let proof = match handshake.on_hello(bytes) {
            Ok(proof) => proof,
            Err(error) => return self.refuse_handshake(identity, error.to_string()).await,
        };
        let own_hello = handshake.hello_bytes();
        // check_hello admitted only members, so the map stays bounded by the membership.
        self.sessions.entry(node).or_default().pending = Some((handshake, nonce));
        self.reply(identity, [KIND_HELLO, &own_hello]).await;
        self.reply(identity, [KIND_PROOF, &proof]).await;
    }

    async fn on_proof(&mut self, identity: &[u8], node: NodeId, bytes: &[u8]) {
        let Some((handshake, token)) = self.sessions.get_mut(&node).and_then(|session| session.pending.take()) else {
            return self.refuse_handshake(identity, "a proof without a hello".to_owned()).await;
        };
        match handshake.on_proof(bytes) {
            Ok(peer) => {
                assert_eq!(peer, node, "on_hello checked that the hello names the routing id's node");
                let session = self.sessions.entry(node).or_default();
                session.authenticated = Some(token);
                session.last_refusal = None;
                Counters::add(&self.shared.counters.inbound_sessions);
                tracing::info!(peer = node, "ZeroMQ peer authenticated");
            }
            Err(error) => self.refuse_handshake(identity, error.to_string()).await,
        }
    }

    async fn on_message(&mut self, identity: &[u8], node: NodeId, token: &[u8], body: &[u8]) -> bool {
        let counters = &self.shared.counters;
        let authenticated = self
            .sessions
            .get(&node)
            .and_then(|session| session.authenticated.as_ref())
            .is_some_and(|expected| tokens_equal(expected, token));
        if !authenticated {
            Counters::add(&counters.frames_refused);
            self.refuse(identity, "a message", &"no authenticated session; the peer must handshake first");
            // Tell a member to handshake again (its session may predate a restart of this node),
            // at most every REFUSAL_INTERVAL; strangers get no reply and no state.
            if self.shared.queues.contains_key(&node) {
                let session = self.sessions.entry(node).or_default();
                if session.last_refusal.is_none_or(|last| last.elapsed() >= REFUSAL_INTERVAL) {
                    session.last_refusal = Some(Instant::now());
                    self.reply(identity, [KIND_REFUSED, b"no session; handshake again"]).await;
                }
            }
            return true;
        }
        // The inbox counts a message by its frame, the exact size it came in.
        let bytes = body.len();
        match wire::decode(body, self.shared.config.frame_bytes_max) {
            Err(error) => {
                Counters::add(&counters.frames_refused);
                self.refuse(identity, "a message body", &error);
                true
            }
            Ok((from, _)) if from != node => {
                Counters::add(&counters.frames_refused);
                self.refuse(identity, "a message", &format!("it claims sender {from} on node {node}'s session"));
                true
            }
            Ok((_, message)) => {
                Counters::add(&counters.messages_received);
                // A full inbox, in messages or bytes, pauses this loop, and with
                // it zeromq's reads: bounded memory.
                self.shared.inbox_bytes.reserve(bytes).await;
                let queued = self.inbox.send((node, message, bytes)).await.is_ok();
                if !queued {
                    self.shared.inbox_bytes.release(bytes);
                }
                queued
            }
        }
    }
}
