//! Hostile ZeroMQ peers against a running node: garbage bytes, an oversized frame
//! header, an oversized frame, a wrong cluster id, an unknown node id, a routing id
//! that does not match the hello, messages without a handshake, a forged sender
//! and a malformed body after a completed handshake. Each is refused or dropped
//! with a warning, nothing panics, and after each a legitimate message from a
//! real member still arrives.

mod common;

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use bytes::Bytes;
use paxos_core::handshake::{HandshakeRules, Hello, Proof, TAG_BYTES};
use paxos_core::{wire, Message, Transport};
use paxos_transport_zmq::protocol::{KIND_HELLO, KIND_MESSAGE, KIND_PROOF, KIND_REFUSED};
use paxos_transport_zmq::{routing_id, ZmqConfig, ZmqTransport};
use zeromq::util::PeerIdentity;
use zeromq::{DealerSocket, Socket, SocketOptions, SocketRecv, SocketSend, ZmqMessage};

const FRAME_BYTES_MAX: usize = 64 * 1024;

fn probe(slot: u64) -> Message {
    Message::CatchUpRequest { from_slot: slot }
}

/// Nodes 1 and 2 of a three-member cluster (node 3 never runs).
async fn pair() -> (ZmqTransport, ZmqTransport) {
    let (listeners, addresses) = common::listeners(3);
    let peers: Vec<(u64, SocketAddr)> = (1..=3).zip(addresses.iter().copied()).collect();
    let mut transports = Vec::new();
    for (index, listener) in listeners.into_iter().take(2).enumerate() {
        let mut config = ZmqConfig::new(index as u64 + 1, common::CLUSTER, addresses[index], peers.clone());
        config.frame_bytes_max = FRAME_BYTES_MAX;
        transports.push(ZmqTransport::start_on(config, listener).await.unwrap());
    }
    let second = transports.pop().unwrap();
    (transports.pop().unwrap(), second)
}

/// A legitimate message from node 1 reaches node 2 (resent, since loss is allowed).
async fn still_serving(first: &ZmqTransport, second: &ZmqTransport, marker: u64) {
    for _ in 0..200 {
        first.send(2, probe(marker)).unwrap();
        if let Ok(Ok((from, message))) = tokio::time::timeout(Duration::from_millis(50), second.recv()).await {
            if message == probe(marker) {
                assert_eq!(from, 1, "attributed to the authenticated sender");
                // Drain the other copies.
                while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(30), second.recv()).await {}
                return;
            }
        }
    }
    panic!("node 2 stopped serving node 1 (marker {marker})");
}

async fn raw_dealer(identity: &[u8], address: SocketAddr) -> DealerSocket {
    let mut options = SocketOptions::default();
    options.peer_identity(PeerIdentity::try_from(identity.to_vec()).unwrap());
    let mut socket = DealerSocket::with_options(options);
    socket.connect(&format!("tcp://{address}")).await.unwrap();
    socket
}

fn multipart(frames: &[&[u8]]) -> ZmqMessage {
    ZmqMessage::try_from(frames.iter().map(|frame| Bytes::copy_from_slice(frame)).collect::<Vec<_>>()).unwrap()
}

async fn reply(socket: &mut DealerSocket) -> Vec<Bytes> {
    tokio::time::timeout(Duration::from_secs(5), socket.recv()).await.expect("a reply in time").unwrap().into_vec()
}

async fn expect_refused(socket: &mut DealerSocket, needle: &str) {
    let frames = reply(socket).await;
    assert_eq!(frames[0].as_ref(), KIND_REFUSED, "a refusal");
    let reason = String::from_utf8_lossy(&frames[1]).to_string();
    assert!(reason.contains(needle), "refusal {reason:?} should mention {needle:?}");
}

fn hello(cluster: u64, node: u64) -> [u8; paxos_core::handshake::HELLO_BYTES] {
    HandshakeRules::new(cluster, node, [1, 2, 3]).hello([5; 16]).encode()
}

/// Sends raw bytes over plain TCP and waits for the node to close the connection.
fn raw_tcp_cut(address: SocketAddr, bytes: &[u8]) {
    let mut stream = TcpStream::connect(address).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let _ = stream.write_all(bytes);
    let mut sink = [0u8; 256];
    loop {
        match stream.read(&mut sink) {
            Ok(0) => return,
            Ok(_) => continue,
            Err(error) if error.kind() == std::io::ErrorKind::ConnectionReset => return,
            Err(error) => panic!("the node did not cut the connection: {error}"),
        }
    }
}

fn greeting() -> Vec<u8> {
    let mut bytes = vec![0u8; 64];
    bytes[0] = 0xff;
    bytes[9] = 0x7f;
    bytes[10] = 3;
    bytes[11] = 1;
    bytes[12..16].copy_from_slice(b"NULL");
    bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_refused_and_the_node_keeps_serving() {
    common::init_tracing();
    let (first, second) = pair().await;
    let target = second.local_addr();
    still_serving(&first, &second, 1).await;

    // Garbage instead of a ZMTP greeting: cut by the guard.
    let refused = second.stats().connections_refused;
    tokio::task::spawn_blocking(move || raw_tcp_cut(target, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")).await.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || second.stats().connections_refused > refused).await);
    still_serving(&first, &second, 2).await;

    // A frame header announcing 2^62 bytes: cut at the header, nothing allocated.
    let mut huge = greeting();
    huge.push(0b10);
    huge.extend_from_slice(&(1u64 << 62).to_be_bytes());
    tokio::task::spawn_blocking(move || raw_tcp_cut(target, &huge)).await.unwrap();
    still_serving(&first, &second, 3).await;

    // A real ZeroMQ peer sending a frame above frame_bytes_max: cut.
    let refused = second.stats().connections_refused;
    let mut oversized = raw_dealer(&routing_id(1), target).await;
    oversized.send(multipart(&[KIND_MESSAGE, &[0; 16], &vec![7; FRAME_BYTES_MAX + 1]])).await.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || second.stats().connections_refused > refused).await);
    drop(oversized);
    still_serving(&first, &second, 4).await;

    // Wrong cluster id.
    let mut stranger = raw_dealer(&routing_id(1), target).await;
    stranger.send(multipart(&[KIND_HELLO, &hello(common::CLUSTER + 1, 1)])).await.unwrap();
    expect_refused(&mut stranger, "cluster").await;
    drop(stranger);
    still_serving(&first, &second, 5).await;

    // Unknown node id.
    let mut outsider = raw_dealer(&routing_id(9), target).await;
    outsider.send(multipart(&[KIND_HELLO, &hello(common::CLUSTER, 9)])).await.unwrap();
    expect_refused(&mut outsider, "not a member").await;
    drop(outsider);
    still_serving(&first, &second, 6).await;

    // A routing id that does not match the node the hello names.
    let mut impostor = raw_dealer(&routing_id(3), target).await;
    impostor.send(multipart(&[KIND_HELLO, &hello(common::CLUSTER, 1)])).await.unwrap();
    expect_refused(&mut impostor, "routing id names node 3").await;
    drop(impostor);
    still_serving(&first, &second, 7).await;

    // No handshake at all: a protocol message straight away, with a guessed token, and garbage frames.
    let refused = second.stats().frames_refused;
    let mut rude = raw_dealer(&routing_id(3), target).await;
    rude.send(multipart(&[KIND_MESSAGE, &[0; 16], &wire::encode(3, &probe(666))])).await.unwrap();
    expect_refused(&mut rude, "no session").await;
    rude.send(multipart(&[b"\xff\x00garbage", b"more"])).await.unwrap();
    rude.send(multipart(&[KIND_PROOF, b"a proof without a hello"])).await.unwrap();
    expect_refused(&mut rude, "without a hello").await;
    let mut anonymous = DealerSocket::new();
    anonymous.connect(&format!("tcp://{target}")).await.unwrap();
    anonymous.send(multipart(&[KIND_MESSAGE, &[0; 16], &wire::encode(1, &probe(667))])).await.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || second.stats().frames_refused >= refused + 3).await);
    drop((rude, anonymous));
    still_serving(&first, &second, 8).await;

    // A peer that completes the handshake as member 3 (no secret in this cluster),
    // then forges node 1 as the sender and sends a malformed body: both dropped.
    let mut member = raw_dealer(&routing_id(3), target).await;
    let own = HandshakeRules::new(common::CLUSTER, 3, [1, 2, 3]).hello([6; 16]);
    member.send(multipart(&[KIND_HELLO, &own.encode()])).await.unwrap();
    let their_hello = reply(&mut member).await;
    assert_eq!(their_hello[0].as_ref(), KIND_HELLO);
    let token = Hello::decode(&their_hello[1]).unwrap().nonce;
    assert_eq!(reply(&mut member).await[0].as_ref(), KIND_PROOF);
    member.send(multipart(&[KIND_PROOF, &Proof { tag: [0; TAG_BYTES] }.encode()])).await.unwrap();
    let refused = second.stats().frames_refused;
    member.send(multipart(&[KIND_MESSAGE, &token, &wire::encode(1, &probe(668))])).await.unwrap();
    member.send(multipart(&[KIND_MESSAGE, &token, b"\x01\x03not postcard"])).await.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || second.stats().frames_refused >= refused + 2).await);
    // The same session with an honest body is accepted, attributed to node 3.
    member.send(multipart(&[KIND_MESSAGE, &token, &wire::encode(3, &probe(669))])).await.unwrap();
    let received = tokio::time::timeout(Duration::from_secs(5), second.recv()).await.unwrap().unwrap();
    assert_eq!(received, (3, probe(669)));
    drop(member);
    still_serving(&first, &second, 9).await;

    assert!(second.stats().handshakes_refused >= 3, "{:?}", second.stats());
    first.shutdown();
    second.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_secret_is_refused_and_a_silent_connection_is_cut() {
    let (listeners, addresses) = common::listeners(2);
    let peers: Vec<(u64, SocketAddr)> = (1..=2).zip(addresses.iter().copied()).collect();
    let mut transports = Vec::new();
    for (index, listener) in listeners.into_iter().enumerate() {
        let mut config = ZmqConfig::new(index as u64 + 1, common::CLUSTER, addresses[index], peers.clone());
        config.secret =
            Some(if index == 0 { b"this is not the right secret".to_vec() } else { common::SECRET.to_vec() });
        config.handshake_timeout = Duration::from_millis(300);
        transports.push(ZmqTransport::start_on(config, listener).await.unwrap());
    }
    let (first, second) = (&transports[0], &transports[1]);
    assert!(
        common::eventually(Duration::from_secs(10), || second.stats().handshakes_refused > 0
            && first.stats().handshakes_refused > 0)
        .await,
        "both sides refuse the other's proof"
    );
    first.send(2, probe(1)).unwrap();
    assert!(tokio::time::timeout(Duration::from_millis(300), second.recv()).await.is_err(), "nothing gets through");
    assert_eq!(second.stats().inbound_sessions, 0);

    // A connection that sends nothing is cut after the handshake timeout.
    let target = second.local_addr();
    let refused = second.stats().connections_refused;
    tokio::task::spawn_blocking(move || raw_tcp_cut(target, &greeting())).await.unwrap();
    assert!(common::eventually(Duration::from_secs(5), || second.stats().connections_refused > refused).await);
}
