//! Hostile peers against a running node (under tokio): garbage, oversized and
//! truncated frames, stalled handshakes, strangers, wrong versions, bad proofs and
//! forged senders. Each connection is closed with a clear log line, nothing
//! panics, and a legitimate message still gets through afterwards.

use std::io::Write;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use paxos_core::handshake::{Handshake, HandshakeRules, Hello, Side, NONCE_BYTES};
use paxos_core::wire::{self, WIRE_VERSION};
use paxos_core::{Message, Transport};
use paxos_transport_tcp::{TcpConfig, TcpTransport};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const CLUSTER: u64 = 77;
const SECRET: &[u8] = b"the cluster's shared secret";

/// Everything logged by the transports in this test binary.
fn logs() -> &'static Arc<Mutex<Vec<u8>>> {
    static LOGS: OnceLock<Arc<Mutex<Vec<u8>>>> = OnceLock::new();
    LOGS.get_or_init(|| {
        let buffer = Arc::new(Mutex::new(Vec::new()));
        let sink = buffer.clone();
        let _ = tracing_subscriber::fmt()
            .with_max_level(tracing::Level::WARN)
            .with_ansi(false)
            .with_writer(move || Sink(sink.clone()))
            .try_init();
        buffer
    })
}

struct Sink(Arc<Mutex<Vec<u8>>>);

impl Write for Sink {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Panics anywhere (including inside transport tasks, which tokio would swallow) are recorded.
fn watch_panics() -> &'static AtomicBool {
    static PANICKED: OnceLock<AtomicBool> = OnceLock::new();
    PANICKED.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            PANICKED.get().expect("set before the hook").store(true, Ordering::SeqCst);
            previous(info);
        }));
        AtomicBool::new(false)
    })
}

/// Polls until the captured log contains `needle`; about 5 s at most.
async fn logged(needle: &str) -> bool {
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if String::from_utf8_lossy(&logs().lock().unwrap()).contains(needle) {
            return true;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    false
}

struct Cluster {
    transports: Vec<TcpTransport>,
    addresses: Vec<SocketAddr>,
}

/// Nodes 1 and 2 run; node 3 is a member that never starts (the attacker may impersonate it).
fn cluster(handshake_timeout: Duration, inbound_connections_max: usize) -> Cluster {
    let listeners: Vec<_> = (0..3).map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap()).collect();
    let addresses: Vec<SocketAddr> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
    let peers: Vec<(u64, SocketAddr)> = (1..=3).zip(addresses.iter().copied()).collect();
    let mut transports = Vec::new();
    for (index, listener) in listeners.into_iter().take(2).enumerate() {
        let mut config = TcpConfig::new(index as u64 + 1, CLUSTER, addresses[index], peers.clone());
        config.secret = Some(SECRET.to_vec());
        config.frame_bytes_max = 64 * 1024;
        config.handshake_timeout = handshake_timeout;
        config.inbound_connections_max = inbound_connections_max;
        config.backoff_max = Duration::from_millis(100);
        transports.push(TcpTransport::start_tokio_on(config, listener).unwrap());
    }
    Cluster { transports, addresses }
}

impl Cluster {
    /// Node 1 reaches node 2 (retrying, as the protocol would).
    async fn legit_message_gets_through(&self, tag: u64) {
        for _ in 0..200 {
            self.transports[0].send(2, Message::CatchUpRequest { from_slot: tag }).unwrap();
            let deadline = tokio::time::sleep(Duration::from_millis(25));
            tokio::pin!(deadline);
            loop {
                tokio::select! {
                    received = self.transports[1].recv() => {
                        if received.unwrap() == (1, Message::CatchUpRequest { from_slot: tag }) {
                            return;
                        }
                    }
                    _ = &mut deadline => break,
                }
            }
        }
        panic!("node 1 could not reach node 2 after a hostile connection");
    }

    fn refused(&self) -> u64 {
        self.transports[1].stats().connections_refused
    }

    async fn connect(&self) -> TcpStream {
        TcpStream::connect(self.addresses[1]).await.unwrap()
    }
}

/// Reads until the node closes the connection; true if it did within about 5 s.
async fn closed_by_node(stream: &mut TcpStream) -> bool {
    let mut buffer = [0u8; 4096];
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        match tokio::time::timeout(Duration::from_millis(100), stream.read(&mut buffer)).await {
            Ok(Ok(0)) | Ok(Err(_)) => return true,
            Ok(Ok(_)) | Err(_) => {}
        }
    }
    false
}

async fn write_frame(stream: &mut TcpStream, body: &[u8]) {
    let mut out = (body.len() as u32).to_be_bytes().to_vec();
    out.extend_from_slice(body);
    // The node may already have hung up; that is fine for an attacker.
    let _ = stream.write_all(&out).await;
}

async fn read_frame(stream: &mut TcpStream) -> Option<Vec<u8>> {
    let mut prefix = [0u8; 4];
    stream.read_exact(&mut prefix).await.ok()?;
    let length = u32::from_be_bytes(prefix) as usize;
    if length > 1024 {
        return None;
    }
    let mut body = vec![0; length];
    stream.read_exact(&mut body).await.ok()?;
    Some(body)
}

/// Runs a client-side handshake with `rules` against node 2; returns the stream if it succeeded.
async fn dial_as(cluster: &Cluster, rules: HandshakeRules) -> (TcpStream, bool) {
    let mut stream = cluster.connect().await;
    let mut handshake = Handshake::new(rules, Side::Dialer, [9; NONCE_BYTES], Some(2));
    write_frame(&mut stream, &handshake.hello_bytes()).await;
    let Some(hello) = read_frame(&mut stream).await else { return (stream, false) };
    let Ok(proof) = handshake.on_hello(&hello) else { return (stream, false) };
    write_frame(&mut stream, &proof).await;
    let Some(peer_proof) = read_frame(&mut stream).await else { return (stream, false) };
    let ok = handshake.on_proof(&peer_proof).is_ok();
    (stream, ok)
}

fn member_rules(id: u64) -> HandshakeRules {
    HandshakeRules::new(CLUSTER, id, [1, 2, 3]).with_secret(SECRET).unwrap()
}

/// Asserts the node closed `stream`, counted a refusal, logged `needle`, and still serves.
async fn assert_refused(cluster: &Cluster, mut stream: TcpStream, refused_before: u64, needle: &str, tag: u64) {
    assert!(closed_by_node(&mut stream).await, "the node closed the hostile connection ({needle})");
    for _ in 0..500 {
        if cluster.refused() > refused_before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert!(cluster.refused() > refused_before, "the refusal was counted ({needle})");
    assert!(logged(needle).await, "the log names the reason: {needle:?}");
    cluster.legit_message_gets_through(tag).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_peers_are_cut_off_and_the_node_keeps_serving() {
    let panicked = watch_panics();
    logs();
    let cluster = cluster(Duration::from_secs(2), 64);
    cluster.legit_message_gets_through(1).await;

    // Garbage bytes (an HTTP request): the "length" is huge, refused from the prefix alone.
    let before = cluster.refused();
    let mut stream = cluster.connect().await;
    let _ = stream.write_all(b"GET / HTTP/1.1\r\nHost: paxos\r\n\r\n").await;
    assert_refused(&cluster, stream, before, "bad framing: frame of 1195725856 bytes announced", 2).await;

    // Garbage inside a plausible frame: not a hello.
    let before = cluster.refused();
    let mut stream = cluster.connect().await;
    write_frame(&mut stream, &[0xAB; 38]).await;
    assert_refused(&cluster, stream, before, "hello has the wrong magic", 3).await;

    // An oversized length prefix before the handshake.
    let before = cluster.refused();
    let mut stream = cluster.connect().await;
    let _ = stream.write_all(&u32::MAX.to_be_bytes()).await;
    assert_refused(&cluster, stream, before, "frame of 4294967295 bytes announced", 4).await;

    // Wrong cluster id.
    let before = cluster.refused();
    let stranger = HandshakeRules::new(999, 3, [1, 2, 3]).with_secret(SECRET).unwrap();
    let (stream, ok) = dial_as(&cluster, stranger).await;
    assert!(!ok);
    assert_refused(&cluster, stream, before, "peer is in cluster 999, this node is in cluster 77", 5).await;

    // Unknown node id.
    let before = cluster.refused();
    let outsider = HandshakeRules::new(CLUSTER, 9, [1, 2, 3, 9]).with_secret(SECRET).unwrap();
    let (stream, ok) = dial_as(&cluster, outsider).await;
    assert!(!ok);
    assert_refused(&cluster, stream, before, "peer claims node id 9, which is not a member", 6).await;

    // Unsupported wire version.
    let before = cluster.refused();
    let mut stream = cluster.connect().await;
    let hello = Hello { wire_version: WIRE_VERSION + 1, ..member_rules(3).hello([1; NONCE_BYTES]) };
    write_frame(&mut stream, &hello.encode()).await;
    let needle = format!("peer speaks wire version {}", WIRE_VERSION + 1);
    assert_refused(&cluster, stream, before, &needle, 7).await;

    // Bad HMAC: a member id and the right cluster, but not the secret.
    let before = cluster.refused();
    let impostor = HandshakeRules::new(CLUSTER, 3, [1, 2, 3]).with_secret(b"a guessed secret value").unwrap();
    let (stream, ok) = dial_as(&cluster, impostor).await;
    assert!(!ok);
    assert_refused(&cluster, stream, before, "the peer's proof does not verify", 8).await;

    // No secret at all against a cluster that requires one.
    let before = cluster.refused();
    let (stream, ok) = dial_as(&cluster, HandshakeRules::new(CLUSTER, 3, [1, 2, 3])).await;
    assert!(!ok);
    assert_refused(&cluster, stream, before, "authentication mismatch", 9).await;

    // From here on the attacker holds a member's credentials (node 3) and misbehaves after the handshake.

    // An oversized length prefix after the handshake.
    let before = cluster.refused();
    let (mut stream, ok) = dial_as(&cluster, member_rules(3)).await;
    assert!(ok, "a member with the secret completes the handshake");
    let _ = stream.write_all(&(64 * 1024 + 1u32).to_be_bytes()).await;
    assert_refused(&cluster, stream, before, "frame of 65537 bytes announced, the limit is 65536", 10).await;

    // A truncated frame: the prefix promises 100 bytes, 10 arrive, then the attacker hangs up.
    let before = cluster.refused();
    let (mut stream, ok) = dial_as(&cluster, member_rules(3)).await;
    assert!(ok);
    let _ = stream.write_all(&100u32.to_be_bytes()).await;
    let _ = stream.write_all(&[1; 10]).await;
    let _ = stream.shutdown().await;
    assert_refused(&cluster, stream, before, "stream ended inside a frame: 14 of 104 bytes received", 11).await;

    // A well-framed body that is not a message.
    let before = cluster.refused();
    let (mut stream, ok) = dial_as(&cluster, member_rules(3)).await;
    assert!(ok);
    write_frame(&mut stream, &[WIRE_VERSION, 3, 0xFF, 0xFF, 0xFF]).await;
    assert_refused(&cluster, stream, before, "undecodable message", 12).await;

    // A forged sender: authenticated as node 3, claiming to be node 1.
    let before = cluster.refused();
    let (mut stream, ok) = dial_as(&cluster, member_rules(3)).await;
    assert!(ok);
    write_frame(&mut stream, &wire::encode(1, &Message::CatchUpRequest { from_slot: 666 })).await;
    assert_refused(&cluster, stream, before, "message claims sender 1 on a connection authenticated as node 3", 13)
        .await;

    // A member that behaves delivers, attributed to its authenticated id.
    let (mut stream, ok) = dial_as(&cluster, member_rules(3)).await;
    assert!(ok);
    write_frame(&mut stream, &wire::encode(3, &Message::CatchUpRequest { from_slot: 333 })).await;
    let mut found = false;
    for _ in 0..100 {
        match tokio::time::timeout(Duration::from_millis(50), cluster.transports[1].recv()).await {
            Ok(Ok((3, Message::CatchUpRequest { from_slot: 333 }))) => {
                found = true;
                break;
            }
            Ok(Ok(_)) | Err(_) => {}
            Ok(Err(error)) => panic!("recv failed: {error}"),
        }
    }
    assert!(found, "a well-behaved member's message arrives");

    assert!(!panicked.load(Ordering::SeqCst), "nothing panicked");
    for transport in &cluster.transports {
        transport.shutdown();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshakes_time_out_and_excess_connections_are_refused() {
    let panicked = watch_panics();
    logs();
    let cluster = cluster(Duration::from_millis(300), 8);
    cluster.legit_message_gets_through(1).await;

    // A peer that connects and says nothing is cut off by the handshake deadline.
    let before = cluster.refused();
    let silent = cluster.connect().await;
    assert_refused(&cluster, silent, before, "handshake not finished within 300ms", 2).await;

    // A peer that sends its hello but never its proof, likewise.
    let before = cluster.refused();
    let mut halfway = cluster.connect().await;
    write_frame(&mut halfway, &member_rules(3).hello([4; NONCE_BYTES]).encode()).await;
    assert_refused(&cluster, halfway, before, "handshake not finished within 300ms", 3).await;

    // Idle connections beyond inbound_connections_max (8, one used by node 1) are closed at once.
    let before = cluster.refused();
    let mut idle = Vec::new();
    for _ in 0..12 {
        idle.push(cluster.connect().await);
    }
    assert!(logged("inbound_connections_max").await, "the limit is logged");
    assert!(cluster.refused() > before);
    drop(idle);
    // Once the idle ones time out, node 1 still gets through.
    cluster.legit_message_gets_through(4).await;

    assert!(!panicked.load(Ordering::SeqCst), "nothing panicked");
}
