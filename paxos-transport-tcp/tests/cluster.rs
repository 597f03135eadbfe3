//! A 3-node Multi-Paxos cluster over loopback TCP, under tokio and under smol:
//! commands are chosen, a killed node restarts on its port and catches up, and a
//! partition (made by fault-injecting proxies on every link) heals.

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use futures::channel::oneshot;
use futures::Future;
use paxos_core::node::{NodeHandle, NodeOptions};
use paxos_core::{Command, Config, Node, NodeError, NodeId, Protocol};
use paxos_storage::MemoryStorage;
use paxos_transport_tcp::{TcpConfig, TcpError, TcpTransport};

const CLUSTER: u64 = 5;
const MEMBERS: [NodeId; 3] = [1, 2, 3];

/// A TCP forwarder for one directed link that can cut and restore traffic.
/// Plain threads and blocking sockets, so it works beside either runtime.
struct Proxy {
    address: SocketAddr,
    cut: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    live: Arc<Mutex<Vec<TcpStream>>>,
    accept_thread: Option<JoinHandle<()>>,
}

impl Proxy {
    fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let address = listener.local_addr().unwrap();
        let cut = Arc::new(AtomicBool::new(false));
        let stop = Arc::new(AtomicBool::new(false));
        let live = Arc::new(Mutex::new(Vec::new()));
        let accept_thread = {
            let (cut, stop, live) = (cut.clone(), stop.clone(), live.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::SeqCst) {
                    let client = match listener.accept() {
                        Ok((client, _)) => client,
                        Err(_) => {
                            std::thread::sleep(Duration::from_millis(2));
                            continue;
                        }
                    };
                    if cut.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let Ok(server) = TcpStream::connect_timeout(&target, Duration::from_secs(1)) else { continue };
                    client.set_nonblocking(false).unwrap();
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    let mut registry = live.lock().unwrap();
                    registry.push(client.try_clone().unwrap());
                    registry.push(server.try_clone().unwrap());
                    drop(registry);
                    forward(client.try_clone().unwrap(), server.try_clone().unwrap());
                    forward(server, client);
                }
            })
        };
        Proxy { address, cut, stop, live, accept_thread: Some(accept_thread) }
    }

    /// Drops every connection through this link and refuses new ones.
    fn cut(&self) {
        self.cut.store(true, Ordering::SeqCst);
        for stream in self.live.lock().unwrap().drain(..) {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    fn restore(&self) {
        self.cut.store(false, Ordering::SeqCst);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        self.cut();
        if let Some(thread) = self.accept_thread.take() {
            thread.join().unwrap();
        }
    }
}

/// Copies `from` to `to` on a thread until either side closes.
fn forward(mut from: TcpStream, mut to: TcpStream) {
    std::thread::spawn(move || {
        let mut buffer = [0u8; 16 * 1024];
        loop {
            match from.read(&mut buffer) {
                Ok(0) | Err(_) => break,
                Ok(read) => {
                    if to.write_all(&buffer[..read]).is_err() {
                        break;
                    }
                }
            }
        }
        let _ = from.shutdown(Shutdown::Both);
        let _ = to.shutdown(Shutdown::Both);
    });
}

type Spawn = fn(Pin<Box<dyn Future<Output = ()> + Send>>);
type Start = fn(TcpConfig, TcpListener) -> Result<TcpTransport, TcpError>;

struct Harness {
    spawn: Spawn,
    start: Start,
    addresses: Vec<SocketAddr>,
    /// `proxies[from][to]` carries node `from + 1`'s traffic to node `to + 1`.
    proxies: Vec<Vec<Option<Proxy>>>,
    storages: Vec<MemoryStorage>,
    handles: Vec<NodeHandle>,
    stopped: Vec<Option<oneshot::Receiver<()>>>,
}

fn options() -> NodeOptions {
    NodeOptions {
        tick_interval: Duration::from_millis(5),
        propose_timeout: Duration::from_secs(2),
        ..NodeOptions::default()
    }
}

impl Harness {
    fn new(spawn: Spawn, start: Start) -> (Harness, Vec<TcpListener>) {
        let listeners: Vec<TcpListener> = MEMBERS.iter().map(|_| TcpListener::bind("127.0.0.1:0").unwrap()).collect();
        let addresses: Vec<SocketAddr> = listeners.iter().map(|listener| listener.local_addr().unwrap()).collect();
        let proxies =
            (0..3).map(|from| (0..3).map(|to| (from != to).then(|| Proxy::start(addresses[to]))).collect()).collect();
        let harness = Harness {
            spawn,
            start,
            addresses,
            proxies,
            storages: MEMBERS.iter().map(|_| MemoryStorage::new()).collect(),
            handles: Vec::new(),
            stopped: (0..3).map(|_| None).collect(),
        };
        (harness, listeners)
    }

    /// Starts node `index + 1` on `listener`, its peers reached through the proxies.
    async fn start_node(&mut self, index: usize, listener: TcpListener) -> NodeHandle {
        let id = MEMBERS[index];
        let peers: Vec<(NodeId, SocketAddr)> = (0..3)
            .map(|to| {
                let address = self.proxies[index][to].as_ref().map_or(self.addresses[to], |proxy| proxy.address);
                (MEMBERS[to], address)
            })
            .collect();
        let mut transport_config = TcpConfig::new(id, CLUSTER, self.addresses[index], peers);
        transport_config.secret = Some(b"cluster test shared secret".to_vec());
        transport_config.backoff_min = Duration::from_millis(5);
        transport_config.backoff_max = Duration::from_millis(200);
        let transport = (self.start)(transport_config, listener).unwrap();
        let mut config = Config::new(id, MEMBERS, Protocol::Multi);
        config.election_timeout_ticks = 20;
        let (handle, driver) =
            Node::start_with(config, options(), transport, self.storages[index].clone()).await.unwrap();
        let (done, stopped) = oneshot::channel();
        self.stopped[index] = Some(stopped);
        (self.spawn)(Box::pin(async move {
            if let Err(error) = driver.await {
                panic!("driver failed: {error}");
            }
            let _ = done.send(());
        }));
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
                    futures_timer::Delay::new(Duration::from_millis(10)).await;
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
            futures_timer::Delay::new(Duration::from_millis(5)).await;
        }
        false
    }

    /// Cuts (or restores) every link between node `index + 1` and the others, both ways.
    fn isolate(&self, index: usize, cut: bool) {
        for other in 0..3 {
            for proxy in [&self.proxies[index][other], &self.proxies[other][index]].into_iter().flatten() {
                if cut {
                    proxy.cut();
                } else {
                    proxy.restore();
                }
            }
        }
    }

    async fn assert_logs_agree(&self, count: u64) {
        for index in 0..count {
            let expected = self.handles[0].get(index).await.unwrap().expect("applied on node 1");
            for handle in &self.handles[1..] {
                assert_eq!(handle.get(index).await.unwrap().as_ref(), Some(&expected), "index {index}");
            }
        }
    }
}

/// Rebinds `address`, retrying while the old listener is still being torn down; bounded.
async fn rebind(address: SocketAddr) -> TcpListener {
    for _ in 0..500 {
        if let Ok(listener) = TcpListener::bind(address) {
            return listener;
        }
        futures_timer::Delay::new(Duration::from_millis(10)).await;
    }
    panic!("could not rebind {address}")
}

async fn scenario(spawn: Spawn, start: Start) {
    let (mut harness, listeners) = Harness::new(spawn, start);
    for (index, listener) in listeners.into_iter().enumerate() {
        let handle = harness.start_node(index, listener).await;
        harness.handles.push(handle);
    }

    // Commands are chosen.
    for sequence in 1..=10u64 {
        harness.add((sequence % 3) as usize, Command::new(1, sequence, format!("v{sequence}").into_bytes())).await;
    }
    for index in 0..3 {
        assert!(harness.applied_at_least(index, 10).await, "node {} applied the first 10", index + 1);
    }

    // Kill node 1 (stop its driver, which drops its transport), go on without it,
    // then restart it on the same port from the same storage.
    harness.handles[0].shutdown();
    let stopped = harness.stopped[0].take().unwrap();
    futures::future::select(stopped, futures_timer::Delay::new(Duration::from_secs(10))).await;
    for sequence in 11..=15u64 {
        harness.add(1 + (sequence % 2) as usize, Command::new(1, sequence, b"while 1 was down".to_vec())).await;
    }
    let listener = rebind(harness.addresses[0]).await;
    harness.handles[0] = harness.start_node(0, listener).await;
    for index in 0..3 {
        assert!(harness.applied_at_least(index, 15).await, "node {} caught up after the restart", index + 1);
    }

    // Partition node 3 away; the majority goes on; heal; node 3 catches up and the cluster continues.
    harness.isolate(2, true);
    for sequence in 16..=20u64 {
        harness.add((sequence % 2) as usize, Command::new(1, sequence, b"during the partition".to_vec())).await;
    }
    let isolated = harness.handles[2].status().await.unwrap().next_index;
    assert!(isolated < 20, "the partition cut node 3 off: it applied {isolated} of 20");
    harness.isolate(2, false);
    assert!(harness.applied_at_least(2, 20).await, "node 3 caught up after the partition healed");
    for sequence in 21..=25u64 {
        harness.add(2, Command::new(1, sequence, b"after healing".to_vec())).await;
    }
    for index in 0..3 {
        assert!(harness.applied_at_least(index, 25).await, "node {} applied everything", index + 1);
    }
    harness.assert_logs_agree(25).await;

    for handle in &harness.handles {
        handle.shutdown();
    }
}

fn tokio_spawn(future: Pin<Box<dyn Future<Output = ()> + Send>>) {
    tokio::spawn(future);
}

fn smol_spawn(future: Pin<Box<dyn Future<Output = ()> + Send>>) {
    smol::spawn(future).detach();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_paxos_over_tcp_under_tokio() {
    scenario(tokio_spawn, TcpTransport::start_tokio_on).await;
}

#[test]
fn multi_paxos_over_tcp_under_smol() {
    smol::block_on(scenario(smol_spawn, TcpTransport::start_smol_on));
}
