//! A 3-node Multi-Paxos cluster over ZeroMQ on loopback, under tokio: commands
//! are chosen, one node is killed (driver stopped, transport dropped) and
//! restarted on the same port from its storage, and it catches up.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use paxos_core::node::{NodeHandle, NodeOptions};
use paxos_core::{Command, Config, Node, NodeError, NodeId, Protocol};
use paxos_storage::MemoryStorage;
use paxos_transport_zmq::{ZmqConfig, ZmqTransport};
use tokio::sync::oneshot;

const MEMBERS: [NodeId; 3] = [1, 2, 3];

struct Harness {
    addresses: Vec<SocketAddr>,
    storages: Vec<MemoryStorage>,
    handles: Vec<NodeHandle>,
    stopped: Vec<Option<oneshot::Receiver<()>>>,
}

impl Harness {
    async fn start_node(&mut self, index: usize, listener: TcpListener) -> NodeHandle {
        let id = MEMBERS[index];
        let peers: Vec<(NodeId, SocketAddr)> = MEMBERS.iter().copied().zip(self.addresses.iter().copied()).collect();
        let mut transport_config = ZmqConfig::new(id, common::CLUSTER, self.addresses[index], peers);
        transport_config.secret = Some(common::SECRET.to_vec());
        transport_config.backoff_min = Duration::from_millis(5);
        transport_config.backoff_max = Duration::from_millis(200);
        let transport = ZmqTransport::start_on(transport_config, listener).await.unwrap();
        let mut config = Config::new(id, MEMBERS, Protocol::Multi);
        config.election_timeout_ticks = 20;
        let options = NodeOptions {
            tick_interval: Duration::from_millis(5),
            propose_timeout: Duration::from_secs(2),
            ..NodeOptions::default()
        };
        let (handle, driver) =
            Node::start_with(config, options, transport, self.storages[index].clone()).await.unwrap();
        let (done, stopped) = oneshot::channel();
        self.stopped[index] = Some(stopped);
        tokio::spawn(async move {
            if let Err(error) = driver.await {
                panic!("driver failed: {error}");
            }
            let _ = done.send(());
        });
        handle
    }

    /// Adds a command, following leader hints and retrying; bounded.
    async fn add(&self, via: usize, command: Command) -> u64 {
        let mut target = via;
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            match self.handles[target].add(command.clone()).await {
                Ok(index) => return index,
                Err(NodeError::NotLeader { leader_hint: Some(leader) }) if leader != MEMBERS[target] => {
                    target = (leader - 1) as usize
                }
                Err(NodeError::NotLeader { .. }) | Err(NodeError::Timeout) | Err(NodeError::Stopped) => {
                    target = (target + 1) % self.handles.len();
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Err(error) => panic!("add failed: {error}"),
            }
        }
        panic!("command {command:?} not chosen within 30 s")
    }

    async fn applied_at_least(&self, index: usize, count: u64) -> bool {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if self.handles[index].status().await.unwrap().next_index >= count {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        false
    }
}

/// Rebinds `address`, retrying while the old listener is still being torn down; bounded.
async fn rebind(address: SocketAddr) -> TcpListener {
    for _ in 0..500 {
        if let Ok(listener) = TcpListener::bind(address) {
            return listener;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("could not rebind {address}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_paxos_over_zeromq_with_a_restart() {
    common::init_tracing();
    let (listeners, addresses) = common::listeners(3);
    let mut harness = Harness {
        addresses,
        storages: MEMBERS.iter().map(|_| MemoryStorage::new()).collect(),
        handles: Vec::new(),
        stopped: (0..3).map(|_| None).collect(),
    };
    for (index, listener) in listeners.into_iter().enumerate() {
        let handle = harness.start_node(index, listener).await;
        harness.handles.push(handle);
    }

    for sequence in 1..=10u64 {
        harness.add((sequence % 3) as usize, Command::new(1, sequence, format!("v{sequence}").into_bytes())).await;
    }
    for index in 0..3 {
        assert!(harness.applied_at_least(index, 10).await, "node {} applied the first 10", index + 1);
    }

    // Kill node 1: its driver stops and drops the transport, which closes its sockets.
    harness.handles[0].shutdown();
    let stopped = harness.stopped[0].take().unwrap();
    tokio::time::timeout(Duration::from_secs(10), stopped).await.expect("node 1 stopped").unwrap();
    for sequence in 11..=15u64 {
        harness.add(1 + (sequence % 2) as usize, Command::new(1, sequence, b"while 1 was down".to_vec())).await;
    }

    // Restart it on the same port from the same storage: fresh handshakes both ways, then catch-up.
    let listener = rebind(harness.addresses[0]).await;
    harness.handles[0] = harness.start_node(0, listener).await;
    for sequence in 16..=20u64 {
        harness.add(0, Command::new(1, sequence, b"after the restart".to_vec())).await;
    }
    for index in 0..3 {
        assert!(harness.applied_at_least(index, 20).await, "node {} applied all 20", index + 1);
    }
    for index in 0..20 {
        let expected = harness.handles[0].get(index).await.unwrap().expect("applied on node 1");
        for handle in &harness.handles[1..] {
            assert_eq!(handle.get(index).await.unwrap().as_ref(), Some(&expected), "index {index}");
        }
    }
    for handle in &harness.handles {
        handle.shutdown();
    }
}
