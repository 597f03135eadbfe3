//! Interoperability with libzmq: a Python client on Debian's `python3-zmq`
//! (tests/zmq_peer.py, run with /usr/bin/python3) exchanges frames with a
//! running node in both directions. Fails with a clear message when pyzmq is missing.

mod common;

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use paxos_core::handshake::{HandshakeRules, Hello, Proof, TAG_BYTES};
use paxos_core::wire::{self, FRAME_BYTES_MAX_DEFAULT};
use paxos_core::{Message, Transport};
use paxos_transport_zmq::{ZmqConfig, ZmqTransport};
use serde_json::Value;
use tokio::sync::mpsc;

const PYTHON: &str = "/usr/bin/python3";

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn unhex(text: &str) -> Vec<u8> {
    (0..text.len()).step_by(2).map(|index| u8::from_str_radix(&text[index..index + 2], 16).unwrap()).collect()
}

fn require_pyzmq() {
    let status = Command::new(PYTHON).args(["-c", "import zmq"]).stderr(Stdio::null()).status();
    assert!(
        matches!(status, Ok(status) if status.success()),
        "the interop test needs libzmq's Python binding: install it with `apt-get install python3-zmq` \
         (CI's .ci/install does), so that `{PYTHON} -c 'import zmq'` works"
    );
}

/// Starts the script; its JSON stdout lines arrive on the returned channel.
fn python(arguments: &[&str]) -> (Child, mpsc::UnboundedReceiver<Value>) {
    require_pyzmq();
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/zmq_peer.py");
    let mut child =
        Command::new(PYTHON).arg(script).args(arguments).stdout(Stdio::piped()).spawn().expect("start python3");
    let stdout = child.stdout.take().unwrap();
    let (sender, receiver) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { return };
            let value: Value = serde_json::from_str(&line).unwrap_or_else(|_| panic!("not JSON: {line}"));
            if sender.send(value).is_err() {
                return;
            }
        }
    });
    (child, receiver)
}

async fn next_line(lines: &mut mpsc::UnboundedReceiver<Value>) -> Value {
    let line = tokio::time::timeout(Duration::from_secs(20), lines.recv()).await.expect("python printed in time");
    let line = line.expect("python exited early");
    assert_ne!(line["event"], "error", "python reported {line}");
    line
}

fn no_proof() -> Vec<u8> {
    Proof { tag: [0; TAG_BYTES] }.encode().to_vec()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_libzmq_dealer_delivers_a_message_to_a_node() {
    common::init_tracing();
    let (listeners, addresses) = common::listeners(2);
    let mut listeners = listeners.into_iter();
    drop(listeners.next());
    let peers: Vec<(u64, SocketAddr)> = vec![(1, addresses[0]), (2, addresses[1])];
    let config = ZmqConfig::new(2, common::CLUSTER, addresses[1], peers);
    let node = ZmqTransport::start_on(config, listeners.next().unwrap()).await.unwrap();

    // The Python peer plays member 1: our hello bytes, the all-zero proof of a cluster without a secret.
    let hello = HandshakeRules::new(common::CLUSTER, 1, [1, 2]).hello([3; 16]).encode();
    let message = Message::CatchUpRequest { from_slot: 4242 };
    let body = wire::encode(1, &message);
    let endpoint = format!("tcp://{}", node.local_addr());
    let (mut child, mut lines) = python(&["dealer", &endpoint, "node:1", &hex(&hello), &hex(&no_proof()), &hex(&body)]);

    let received = tokio::time::timeout(Duration::from_secs(20), node.recv()).await.expect("in time").unwrap();
    assert_eq!(received, (1, message), "libzmq's message arrives, attributed to member 1");
    let sent = next_line(&mut lines).await;
    assert_eq!(sent["event"], "sent");
    assert!(sent["libzmq"].as_str().unwrap().starts_with('4'), "a real libzmq 4.x: {sent}");
    assert!(child.wait().unwrap().success());
    assert_eq!(node.stats().inbound_sessions, 1);
    node.shutdown();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_delivers_messages_to_a_libzmq_router() {
    common::init_tracing();
    // The Python ROUTER plays member 2.
    let rules_of_two = HandshakeRules::new(common::CLUSTER, 2, [1, 2]);
    let python_hello = rules_of_two.hello([9; 16]);
    let count = 3u64;
    let (mut child, mut lines) =
        python(&["router", &hex(&python_hello.encode()), &hex(&no_proof()), &count.to_string()]);
    let listening = next_line(&mut lines).await;
    let port = listening["port"].as_u64().expect("a port") as u16;
    let python_address = SocketAddr::from(([127, 0, 0, 1], port));

    let (listeners, addresses) = common::listeners(1);
    let peers = vec![(1, addresses[0]), (2, python_address)];
    let config = ZmqConfig::new(1, common::CLUSTER, addresses[0], peers);
    let node = ZmqTransport::start_on(config, listeners.into_iter().next().unwrap()).await.unwrap();
    assert!(common::eventually(Duration::from_secs(20), || node.stats().outbound_sessions == 1).await);
    for slot in 0..count {
        node.send(2, Message::CatchUpRequest { from_slot: slot }).unwrap();
    }

    let mut saw_hello = false;
    let mut saw_proof = false;
    let mut bodies = Vec::new();
    while bodies.len() < count as usize {
        let line = next_line(&mut lines).await;
        let frames: Vec<Vec<u8>> =
            line["frames"].as_array().expect("frames").iter().map(|frame| unhex(frame.as_str().unwrap())).collect();
        assert_eq!(frames[0], b"node:1", "the DEALER's routing id names node 1");
        match frames[1].as_slice() {
            b"HELLO" => {
                let hello = Hello::decode(&frames[2]).unwrap();
                rules_of_two.check_hello(&hello, None).expect("node 1's hello passes member 2's rules");
                assert_eq!(hello.node_id, 1);
                saw_hello = true;
            }
            b"PROOF" => {
                assert_eq!(frames[2], no_proof(), "no secret, so an all-zero proof");
                saw_proof = true;
            }
            b"MSG" => {
                assert_eq!(frames[2], python_hello.nonce, "the session token is the ROUTER's nonce");
                bodies.push(wire::decode(&frames[3], FRAME_BYTES_MAX_DEFAULT).unwrap());
            }
            other => panic!("unexpected frame kind {other:?}"),
        }
    }
    assert!(saw_hello && saw_proof, "the handshake came first");
    let expected: Vec<_> = (0..count).map(|slot| (1, Message::CatchUpRequest { from_slot: slot })).collect();
    assert_eq!(bodies, expected);
    assert_eq!(next_line(&mut lines).await["event"], "done");
    assert!(child.wait().unwrap().success());
    node.shutdown();
}
