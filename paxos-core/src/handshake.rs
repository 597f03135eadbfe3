//! The connection handshake every network transport shares: who is on the other
//! end, whether it belongs to this cluster, and (with a shared secret) proof of it.
//!
//! Sans-IO like the rest of the core: this module turns bytes into checked values
//! and back, and never touches a socket, clock or random source. The transport
//! draws a fresh [`Nonce`] per connection and moves the bytes.
//!
//! # Protocol
//!
//! Both ends of a new connection run the same two steps, each sending one message
//! of a fixed size (transports frame them like any other frame):
//!
//! 1. **Hello** ([`Hello`], [`HELLO_BYTES`] bytes): magic, wire version, whether
//!    this side authenticates, cluster id, node id, and a fresh random nonce.
//!    Each side checks the other's hello against its [`HandshakeRules`]: the same
//!    cluster, a member other than itself, a version it speaks, and the same
//!    authentication setting.
//! 2. **Proof** ([`Proof`], [`PROOF_BYTES`] bytes): an HMAC-SHA256, keyed with the
//!    shared secret, over a context string, the prover's [`Side`], the prover's
//!    hello and the verifier's hello. The verifier's hello carries the verifier's
//!    own fresh nonce, so this is a challenge-response: a recorded proof does not
//!    verify on any other connection. Tags are compared in constant time. Without
//!    a secret the proof is all zeros and only the hello checks apply.
//!
//! The side label (dialer or acceptor) in the MAC and the refusal of a peer that
//! claims the verifier's own id together stop reflection: replaying a node's own
//! proof back at it on a second connection does not verify.
//!
//! [`Handshake`] wraps the two steps as a small state machine.

use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;

use hmac::{Hmac, Mac};
use sha2::Sha256;

use crate::ballot::NodeId;
use crate::wire::WIRE_VERSION;

/// Bytes of the per-connection random challenge.
pub const NONCE_BYTES: usize = 16;

/// A per-connection random challenge. Draw it from a cryptographic source.
pub type Nonce = [u8; NONCE_BYTES];

/// Size of an encoded [`Hello`]: magic 4, version 1, flags 1, cluster 8, node 8, nonce 16.
pub const HELLO_BYTES: usize = 4 + 1 + 1 + 8 + 8 + NONCE_BYTES;

/// Bytes of an HMAC-SHA256 tag.
pub const TAG_BYTES: usize = 32;

/// Size of an encoded [`Proof`]: magic 4, tag 32.
pub const PROOF_BYTES: usize = 4 + TAG_BYTES;

/// The shortest shared secret [`HandshakeRules::with_secret`] accepts.
pub const SECRET_BYTES_MIN: usize = 16;

const HELLO_MAGIC: [u8; 4] = *b"PXH1";
const PROOF_MAGIC: [u8; 4] = *b"PXP1";
const FLAG_AUTHENTICATED: u8 = 0b0000_0001;
const MAC_CONTEXT: &[u8] = b"paxos handshake proof v1";

/// Why a handshake failed. The connection should be closed and the peer logged;
/// nothing else in the cluster needs to change.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HandshakeError {
    /// The bytes are not a handshake message of this protocol (wrong size or magic):
    /// the peer is not a Paxos node of this kind, or the stream is corrupt.
    #[error("malformed handshake: {0}; the peer is not speaking this protocol")]
    Malformed(&'static str),
    /// The peer belongs to another cluster: check its `cluster_id` setting.
    #[error("peer is in cluster {found}, this node is in cluster {expected}; check the cluster id configuration")]
    WrongCluster {
        /// This node's cluster id.
        expected: u64,
        /// The cluster id the peer sent.
        found: u64,
    },
    /// The peer's id is not in this node's member list: add it to the members or stop it.
    #[error("peer claims node id {0}, which is not a member of this cluster")]
    UnknownNode(NodeId),
    /// The peer claims this node's own id: a misconfigured peer, a loop, or a reflection attempt.
    #[error("peer claims this node's own id {0}; two nodes share an id or the connection loops back")]
    OwnId(NodeId),
    /// The dialed address answered as a different member than the one it belongs to.
    #[error("dialed node {expected} but node {found} answered; check the peer address map")]
    UnexpectedNode {
        /// The member this address is configured for.
        expected: NodeId,
        /// The member that answered.
        found: NodeId,
    },
    /// The peer speaks a wire version this build does not: upgrade one side.
    #[error("peer speaks wire version {found}, this build speaks {supported}; run compatible versions")]
    UnsupportedVersion {
        /// The version the peer sent.
        found: u8,
        /// The version this build speaks.
        supported: u8,
    },
    /// One side requires a shared secret and the other does not: configure both the same.
    #[error("authentication mismatch: this node {}, the peer {}; configure the same secret on both", if *.ours { "uses a secret" } else { "has no secret" }, if *.theirs { "uses one" } else { "has none" })]
    AuthMismatch {
        /// Whether this node uses a secret.
        ours: bool,
        /// Whether the peer said it uses one.
        theirs: bool,
    },
    /// The peer's proof does not verify: it does not hold the shared secret (or replayed an old proof).
    #[error("the peer's proof does not verify; it does not know the shared secret")]
    BadAuth,
    /// The shared secret is too short to be worth having.
    #[error("shared secret of {length} bytes is too short; use at least {SECRET_BYTES_MIN} random bytes")]
    WeakSecret {
        /// Length of the rejected secret.
        length: usize,
    },
    /// A step was called out of order (a bug in the caller, not the peer).
    #[error("handshake step out of order: {0}")]
    OutOfOrder(&'static str),
}

/// The first handshake message: who this side is and its challenge for the peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Hello {
    /// The cluster this node belongs to.
    pub cluster_id: u64,
    /// The sender's node id.
    pub node_id: NodeId,
    /// The wire format version the sender speaks ([`WIRE_VERSION`]).
    pub wire_version: u8,
    /// Whether the sender will send (and requires) a keyed proof.
    pub authenticated: bool,
    /// The sender's fresh random challenge for this connection.
    pub nonce: Nonce,
}

impl Hello {
    /// The fixed-size encoding.
    pub fn encode(&self) -> [u8; HELLO_BYTES] {
        let mut out = [0u8; HELLO_BYTES];
        out[0..4].copy_from_slice(&HELLO_MAGIC);
        out[4] = self.wire_version;
        out[5] = if self.authenticated { FLAG_AUTHENTICATED } else { 0 };
        out[6..14].copy_from_slice(&self.cluster_id.to_le_bytes());
        out[14..22].copy_from_slice(&self.node_id.to_le_bytes());
        out[22..HELLO_BYTES].copy_from_slice(&self.nonce);
        out
    }

    /// Parses a hello, checking size, magic and flags first. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Hello, HandshakeError> {
        if bytes.len() != HELLO_BYTES {
            return Err(HandshakeError::Malformed("hello has the wrong length"));
        }
        if bytes[0..4] != HELLO_MAGIC {
            return Err(HandshakeError::Malformed("hello has the wrong magic"));
        }
        let flags = bytes[5];
        if flags & !FLAG_AUTHENTICATED != 0 {
            return Err(HandshakeError::Malformed("hello has unknown flags"));
        }
        let mut cluster = [0u8; 8];
        cluster.copy_from_slice(&bytes[6..14]);
        let mut node = [0u8; 8];
        node.copy_from_slice(&bytes[14..22]);
        let mut nonce = [0u8; NONCE_BYTES];
        nonce.copy_from_slice(&bytes[22..HELLO_BYTES]);
        Ok(Hello {
            cluster_id: u64::from_le_bytes(cluster),
            node_id: u64::from_le_bytes(node),
            wire_version: bytes[4],
            authenticated: flags & FLAG_AUTHENTICATED != 0,
            nonce,
        })
    }
}

/// The second handshake message: an HMAC tag proving the sender holds the secret.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Proof {
    /// HMAC-SHA256 tag, or all zeros when the cluster runs without a secret.
    pub tag: [u8; TAG_BYTES],
}

impl fmt::Debug for Proof {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Proof { .. }")
    }
}

impl Proof {
    /// The fixed-size encoding.
    pub fn encode(&self) -> [u8; PROOF_BYTES] {
        let mut out = [0u8; PROOF_BYTES];
        out[0..4].copy_from_slice(&PROOF_MAGIC);
        out[4..PROOF_BYTES].copy_from_slice(&self.tag);
        out
    }

    /// Parses a proof, checking size and magic first. Never panics.
    pub fn decode(bytes: &[u8]) -> Result<Proof, HandshakeError> {
        if bytes.len() != PROOF_BYTES {
            return Err(HandshakeError::Malformed("proof has the wrong length"));
        }
        if bytes[0..4] != PROOF_MAGIC {
            return Err(HandshakeError::Malformed("proof has the wrong magic"));
        }
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&bytes[4..PROOF_BYTES]);
        Ok(Proof { tag })
    }
}

/// Which end of the connection a side is; part of the MAC input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Side {
    /// The side that opened the connection.
    Dialer,
    /// The side that accepted it.
    Acceptor,
}

impl Side {
    fn label(self) -> u8 {
        match self {
            Side::Dialer => b'D',
            Side::Acceptor => b'A',
        }
    }

    /// The other end.
    pub fn peer(self) -> Side {
        match self {
            Side::Dialer => Side::Acceptor,
            Side::Acceptor => Side::Dialer,
        }
    }
}

/// What this node accepts from a peer: its cluster, its members, and optionally a secret.
#[derive(Clone)]
pub struct HandshakeRules {
    cluster_id: u64,
    node_id: NodeId,
    members: Arc<BTreeSet<NodeId>>,
    secret: Option<Arc<[u8]>>,
}

impl fmt::Debug for HandshakeRules {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter
            .debug_struct("HandshakeRules")
            .field("cluster_id", &self.cluster_id)
            .field("node_id", &self.node_id)
            .field("members", &self.members)
            .field("secret", &self.secret.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

impl HandshakeRules {
    /// Rules for node `node_id` of cluster `cluster_id` with these members (the
    /// node's own id may be among them), without authentication.
    pub fn new(cluster_id: u64, node_id: NodeId, members: impl IntoIterator<Item = NodeId>) -> HandshakeRules {
        HandshakeRules { cluster_id, node_id, members: Arc::new(members.into_iter().collect()), secret: None }
    }

    /// Requires every peer to prove it holds `secret` (at least [`SECRET_BYTES_MIN`] bytes).
    pub fn with_secret(mut self, secret: &[u8]) -> Result<HandshakeRules, HandshakeError> {
        if secret.len() < SECRET_BYTES_MIN {
            return Err(HandshakeError::WeakSecret { length: secret.len() });
        }
        self.secret = Some(Arc::from(secret));
        Ok(self)
    }

    /// This node's cluster id.
    pub fn cluster_id(&self) -> u64 {
        self.cluster_id
    }

    /// This node's id.
    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    /// Whether a shared secret is required.
    pub fn authenticated(&self) -> bool {
        self.secret.is_some()
    }

    /// This node's hello for a connection, with the challenge `nonce`.
    pub fn hello(&self, nonce: Nonce) -> Hello {
        Hello {
            cluster_id: self.cluster_id,
            node_id: self.node_id,
            wire_version: WIRE_VERSION,
            authenticated: self.authenticated(),
            nonce,
        }
    }

    /// Checks a peer's hello: version, cluster, authentication setting, then identity.
    /// `expected` is the member a dialer meant to reach (`None` when accepting).
    pub fn check_hello(&self, peer: &Hello, expected: Option<NodeId>) -> Result<(), HandshakeError> {
        if peer.wire_version != WIRE_VERSION {
            return Err(HandshakeError::UnsupportedVersion { found: peer.wire_version, supported: WIRE_VERSION });
        }
        if peer.cluster_id != self.cluster_id {
            return Err(HandshakeError::WrongCluster { expected: self.cluster_id, found: peer.cluster_id });
        }
        if peer.authenticated != self.authenticated() {
            return Err(HandshakeError::AuthMismatch { ours: self.authenticated(), theirs: peer.authenticated });
        }
        if peer.node_id == self.node_id {
            return Err(HandshakeError::OwnId(peer.node_id));
        }
        if !self.members.contains(&peer.node_id) {
            return Err(HandshakeError::UnknownNode(peer.node_id));
        }
        if let Some(expected) = expected {
            if peer.node_id != expected {
                return Err(HandshakeError::UnexpectedNode { expected, found: peer.node_id });
            }
        }
        Ok(())
    }

    fn mac(&self, secret: &[u8], prover_side: Side, prover: &Hello, verifier: &Hello) -> Hmac<Sha256> {
        let mut mac = <Hmac<Sha256> as Mac>::new_from_slice(secret).expect("HMAC accepts keys of any length");
        mac.update(MAC_CONTEXT);
        mac.update(&[prover_side.label()]);
        mac.update(&prover.encode());
        mac.update(&verifier.encode());
        mac
    }

    /// This node's proof, as `side`, that it holds the secret; `own` is the hello
    /// it sent and `peer` the (checked) hello it received, whose nonce it answers.
    pub fn prove(&self, side: Side, own: &Hello, peer: &Hello) -> Proof {
        let Some(secret) = &self.secret else { return Proof { tag: [0u8; TAG_BYTES] } };
        let mut tag = [0u8; TAG_BYTES];
        tag.copy_from_slice(&self.mac(secret, side, own, peer).finalize().into_bytes());
        Proof { tag }
    }

    /// Verifies the proof of a peer on `peer_side`, whose hello was `peer`,
    /// answering this node's hello `own`. Constant-time comparison.
    pub fn verify(&self, peer_side: Side, peer: &Hello, own: &Hello, proof: &Proof) -> Result<(), HandshakeError> {
        let Some(secret) = &self.secret else { return Ok(()) };
        self.mac(secret, peer_side, peer, own).verify_slice(&proof.tag).map_err(|_| HandshakeError::BadAuth)
    }
}

/// One side of one connection's handshake, as a state machine.
///
/// Send [`Handshake::hello_bytes`], feed the peer's hello to
/// [`Handshake::on_hello`] and send the proof it returns, then feed the peer's
/// proof to [`Handshake::on_proof`], which yields the authenticated peer id.
#[derive(Debug, Clone)]
pub struct Handshake {
    rules: HandshakeRules,
    side: Side,
    own: Hello,
    expected: Option<NodeId>,
    peer: Option<Hello>,
}

impl Handshake {
    /// Starts a handshake as `side` with a fresh random `nonce`; a dialer names
    /// the member it meant to reach in `expected`.
    pub fn new(rules: HandshakeRules, side: Side, nonce: Nonce, expected: Option<NodeId>) -> Handshake {
        let own = rules.hello(nonce);
        Handshake { rules, side, own, expected, peer: None }
    }

    /// The hello to send first.
    pub fn hello_bytes(&self) -> [u8; HELLO_BYTES] {
        self.own.encode()
    }

    /// Checks the peer's hello and returns the proof to send.
    pub fn on_hello(&mut self, bytes: &[u8]) -> Result<[u8; PROOF_BYTES], HandshakeError> {
        if self.peer.is_some() {
            return Err(HandshakeError::OutOfOrder("a second hello"));
        }
        let peer = Hello::decode(bytes)?;
        self.rules.check_hello(&peer, self.expected)?;
        self.peer = Some(peer);
        Ok(self.rules.prove(self.side, &self.own, &peer).encode())
    }

    /// Verifies the peer's proof; on success returns the peer's authenticated id.
    pub fn on_proof(self, bytes: &[u8]) -> Result<NodeId, HandshakeError> {
        let Some(peer) = self.peer else { return Err(HandshakeError::OutOfOrder("a proof before the hello")) };
        let proof = Proof::decode(bytes)?;
        self.rules.verify(self.side.peer(), &peer, &self.own, &proof)?;
        Ok(peer.node_id)
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    const SECRET: &[u8] = b"0123456789abcdef-shared";

    fn rules(id: NodeId) -> HandshakeRules {
        HandshakeRules::new(7, id, [1, 2, 3]).with_secret(SECRET).unwrap()
    }

    /// Runs both sides to completion; returns what each side concluded.
    fn run(
        dialer: HandshakeRules,
        acceptor: HandshakeRules,
        expected: NodeId,
    ) -> (Result<NodeId, HandshakeError>, Result<NodeId, HandshakeError>) {
        let mut dial = Handshake::new(dialer, Side::Dialer, [1; NONCE_BYTES], Some(expected));
        let mut accept = Handshake::new(acceptor, Side::Acceptor, [2; NONCE_BYTES], None);
        let dial_hello = dial.hello_bytes();
        let accept_hello = accept.hello_bytes();
        let dial_proof = dial.on_hello(&accept_hello);
        let accept_proof = accept.on_hello(&dial_hello);
        let dial_result = match (&dial_proof, &accept_proof) {
            (Ok(_), Ok(proof)) => dial.on_proof(proof),
            (Err(error), _) => Err(error.clone()),
            (Ok(_), Err(_)) => Err(HandshakeError::OutOfOrder("peer refused")),
        };
        let accept_result = match (&accept_proof, &dial_proof) {
            (Ok(_), Ok(proof)) => accept.on_proof(proof),
            (Err(error), _) => Err(error.clone()),
            (Ok(_), Err(_)) => Err(HandshakeError::OutOfOrder("peer refused")),
        };
        (dial_result, accept_result)
    }

    #[test]
    fn hello_and_proof_round_trip() {
        let hello = rules(1).hello([9; NONCE_BYTES]);
        assert_eq!(Hello::decode(&hello.encode()), Ok(hello));
        let proof = Proof { tag: [5; TAG_BYTES] };
        assert_eq!(Proof::decode(&proof.encode()), Ok(proof));
    }

    #[test]
    fn members_with_the_secret_authenticate_each_other() {
        assert_eq!(run(rules(1), rules(2), 2), (Ok(2), Ok(1)));
    }

    #[test]
    fn without_secret_the_hello_checks_still_apply() {
        let plain = |id| HandshakeRules::new(7, id, [1, 2, 3]);
        assert_eq!(run(plain(1), plain(2), 2), (Ok(2), Ok(1)));
        let stranger = HandshakeRules::new(8, 2, [1, 2, 3]);
        assert_eq!(run(plain(1), stranger, 2).1, Err(HandshakeError::WrongCluster { expected: 8, found: 7 }));
    }

    #[test]
    fn refuses_wrong_cluster_unknown_node_own_id_and_wrong_target() {
        let other_cluster = HandshakeRules::new(99, 1, [1, 2, 3]).with_secret(SECRET).unwrap();
        assert_eq!(run(other_cluster, rules(2), 2).1, Err(HandshakeError::WrongCluster { expected: 7, found: 99 }));
        let outsider = HandshakeRules::new(7, 4, [1, 2, 3, 4]).with_secret(SECRET).unwrap();
        assert_eq!(run(outsider, rules(2), 2).1, Err(HandshakeError::UnknownNode(4)));
        assert_eq!(run(rules(2), rules(2), 2).1, Err(HandshakeError::OwnId(2)));
        assert_eq!(run(rules(1), rules(3), 2).0, Err(HandshakeError::UnexpectedNode { expected: 2, found: 3 }));
    }

    #[test]
    fn refuses_other_versions_and_auth_mismatch() {
        let mut hello = rules(1).hello([0; NONCE_BYTES]);
        hello.wire_version = WIRE_VERSION + 1;
        assert_eq!(
            rules(2).check_hello(&hello, None),
            Err(HandshakeError::UnsupportedVersion { found: WIRE_VERSION + 1, supported: WIRE_VERSION })
        );
        let plain = HandshakeRules::new(7, 1, [1, 2, 3]);
        assert_eq!(run(plain, rules(2), 2).1, Err(HandshakeError::AuthMismatch { ours: true, theirs: false }));
    }

    #[test]
    fn a_wrong_secret_fails_both_ways() {
        let impostor = HandshakeRules::new(7, 1, [1, 2, 3]).with_secret(b"not the right secret!").unwrap();
        let (dial, accept) = run(impostor, rules(2), 2);
        assert_eq!(dial, Err(HandshakeError::BadAuth));
        assert_eq!(accept, Err(HandshakeError::BadAuth));
    }

    #[test]
    fn a_recorded_proof_does_not_verify_on_a_new_connection() {
        // Record node 1's hello and proof from one connection to node 2.
        let mut first = Handshake::new(rules(1), Side::Dialer, [1; NONCE_BYTES], Some(2));
        let recorded_hello = first.hello_bytes();
        let acceptor_hello = rules(2).hello([2; NONCE_BYTES]).encode();
        let recorded_proof = first.on_hello(&acceptor_hello).unwrap();
        // Replay them against a new connection, where node 2 draws a new nonce.
        let mut replay = Handshake::new(rules(2), Side::Acceptor, [3; NONCE_BYTES], None);
        replay.on_hello(&recorded_hello).unwrap();
        assert_eq!(replay.on_proof(&recorded_proof), Err(HandshakeError::BadAuth));
    }

    #[test]
    fn reflecting_a_nodes_own_proof_fails() {
        // An attacker opens two connections to node 2, claiming to be node 1 on
        // each, and hands node 2's acceptor proof from one back on the other.
        let node2 = rules(2);
        let acceptor_one = node2.hello([4; NONCE_BYTES]);
        let acceptor_two = node2.hello([5; NONCE_BYTES]);
        let fake = |nonce| Hello { node_id: 1, ..node2.hello(nonce) };
        let reflected = node2.prove(Side::Acceptor, &acceptor_two, &fake(acceptor_one.nonce));
        assert_eq!(
            node2.verify(Side::Dialer, &fake(acceptor_two.nonce), &acceptor_one, &reflected),
            Err(HandshakeError::BadAuth)
        );
    }

    #[test]
    fn malformed_input_and_misuse_are_errors() {
        let hello = rules(1).hello([0; NONCE_BYTES]).encode();
        assert!(matches!(Hello::decode(&hello[..HELLO_BYTES - 1]), Err(HandshakeError::Malformed(_))));
        let mut bad = hello;
        bad[0] = b'X';
        assert!(matches!(Hello::decode(&bad), Err(HandshakeError::Malformed(_))));
        let mut flags = hello;
        flags[5] = 0x80;
        assert!(matches!(Hello::decode(&flags), Err(HandshakeError::Malformed(_))));
        assert!(matches!(Proof::decode(&hello), Err(HandshakeError::Malformed(_))));
        let early = Handshake::new(rules(2), Side::Acceptor, [0; NONCE_BYTES], None);
        assert!(matches!(early.on_proof(&[0; PROOF_BYTES]), Err(HandshakeError::OutOfOrder(_))));
        assert_eq!(
            HandshakeRules::new(1, 1, [1]).with_secret(b"short").unwrap_err(),
            HandshakeError::WeakSecret { length: 5 }
        );
        assert!(!format!("{:?}", rules(1)).contains("0123456789"), "Debug never shows the secret");
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..80)) {
            let _ = Hello::decode(&bytes);
            let _ = Proof::decode(&bytes);
            let mut handshake = Handshake::new(rules(2), Side::Acceptor, [0; NONCE_BYTES], None);
            if handshake.on_hello(&bytes).is_ok() {
                let _ = handshake.on_proof(&bytes);
            }
        }

        #[test]
        fn any_bit_flip_in_a_proof_is_refused(byte in 4usize..PROOF_BYTES, bit in 0u8..8) {
            let mut dial = Handshake::new(rules(1), Side::Dialer, [1; NONCE_BYTES], Some(2));
            let mut accept = Handshake::new(rules(2), Side::Acceptor, [2; NONCE_BYTES], None);
            let mut proof = dial.on_hello(&accept.hello_bytes()).unwrap();
            accept.on_hello(&dial.hello_bytes()).unwrap();
            proof[byte] ^= 1 << bit;
            prop_assert_eq!(accept.on_proof(&proof), Err(HandshakeError::BadAuth));
        }
    }
}
