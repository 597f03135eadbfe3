//! Through the async node: `paxos_core::Node`s over a transport (in-memory, TCP
//! loopback, ZeroMQ loopback) with a storage (in-memory, file), under a tokio
//! runtime, loaded by `in_flight` commands kept in flight by closed-loop client
//! tasks: one command is one `add` at a time; more are split into windows of at
//! most [`CLIENT_WINDOW_MAX`], each task submitting its window with one
//! `NodeHandle::add_many` and the next as soon as it is applied.
//!
//! Each client measures its commands' commit latency (from submission to the
//! answer: chosen and applied at the proposing node). Every node's applied log is read
//! through `NodeHandle::subscribe` and folded into an [`AppliedLog`] for the
//! agreement check at the end.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use paxos_core::node::NodeOptions;
use paxos_core::{Command, CommandId, Config, Node, NodeError, NodeHandle, NodeId, Role, Storage, Transport};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use crate::check::{check_agreement, AgreementError, AppliedLog, Submitted};
use crate::measure::Measurement;
use crate::spec::{ProtocolKind, Spec, SpecError, StorageKind, TransportKind};

/// Most times a client offers the same commands again (after a timeout, a full
/// queue, or a redirect to the leader) before its run fails.
pub const RETRIES_MAX: u32 = 16;

/// The replicas' election timeout, in the node runs' 5 ms ticks.
pub const ELECTION_TIMEOUT_TICKS: u64 = 60;

/// Most commands one client task keeps in flight (one `add_many`).
pub const CLIENT_WINDOW_MAX: usize = 64;

/// Most time spent waiting for a leader, for clients to stop, or for logs to converge.
pub const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// Why a node run stopped without figures.
#[derive(Debug, thiserror::Error)]
pub enum NodeRunError {
    /// The spec is not runnable.
    #[error(transparent)]
    Spec(#[from] SpecError),
    /// The loop transport is not a node transport.
    #[error("transport {0} is not run through the async node; use paxos_bench::protocol_loop")]
    NotANodeTransport(TransportKind),
    /// Setting up a backend failed.
    #[error("could not set up the cluster: {0}")]
    Setup(String),
    /// A node refused a command or stopped.
    #[error("a client's command failed")]
    Node(#[from] NodeError),
    /// Something did not happen in time.
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    /// The replicas' logs do not agree; the figures are void.
    #[error("the replicas' logs disagree, so no figure is reported")]
    Agreement(#[from] AgreementError),
}

/// State the client tasks share with the run.
#[derive(Debug, Default)]
struct Shared {
    completed: AtomicU64,
    /// `run_commands` waits until `completed` reaches this.
    target: AtomicU64,
    reached: Notify,
    recording: AtomicBool,
    stop: AtomicBool,
}

type ClientOutcome = Result<(Submitted, Measurement), NodeError>;

/// A running cluster of nodes and its closed-loop clients.
pub struct NodeCluster {
    runtime: tokio::runtime::Runtime,
    handles: Vec<NodeHandle>,
    drivers: Vec<JoinHandle<Result<(), NodeError>>>,
    logs: Vec<Arc<Mutex<AppliedLog>>>,
    appliers: Vec<JoinHandle<()>>,
    clients: Vec<JoinHandle<ClientOutcome>>,
    shared: Arc<Shared>,
    proposer: usize,
    /// Keeps file storage directories alive until the cluster is dropped.
    _directories: Vec<Box<dyn std::any::Any + Send>>,
}

impl std::fmt::Debug for NodeCluster {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter
            .debug_struct("NodeCluster")
            .field("nodes", &self.handles.len())
            .field("proposer", &self.proposer)
            .finish()
    }
}

/// Payload bytes each replica applies between compactions, at most.
pub const AUTO_COMPACT_BYTES: u64 = 32 << 20;

fn node_options() -> NodeOptions {
    NodeOptions {
        tick_interval: Duration::from_millis(5),
        propose_timeout: Duration::from_secs(30),
        subscriber_buffer_max: 1 << 20,
        auto_compact_slots: Some(65_536),
        auto_compact_commands: Some(1 << 18),
        // With 1 KiB commands the command bound alone let each replica hold 256 MiB
        // of payloads before compacting; this one holds it to 32 MiB.
        auto_compact_bytes: Some(AUTO_COMPACT_BYTES),
        ..NodeOptions::default()
    }
}

async fn start_node<T: Transport + 'static, S: Storage + 'static>(
    config: Config,
    transport: T,
    storage: S,
) -> Result<(NodeHandle, JoinHandle<Result<(), NodeError>>), NodeError> {
    let (handle, driver) = Node::start_with(config, node_options(), transport, storage).await?;
    Ok((handle, tokio::spawn(driver)))
}

/// Opens one storage of `kind`, then starts the node over `transport`.
async fn start_with_storage<T: Transport + 'static>(
    kind: StorageKind,
    config: Config,
    transport: T,
    directories: &mut Vec<Box<dyn std::any::Any + Send>>,
) -> Result<(NodeHandle, JoinHandle<Result<(), NodeError>>), NodeRunError> {
    match kind {
        StorageKind::Memory => Ok(start_node(config, transport, paxos_storage::MemoryStorage::new()).await?),
        #[cfg(feature = "file")]
        StorageKind::File => {
            let directory = tempfile::Builder::new()
                .prefix("paxos-bench-")
                .tempdir()
                .map_err(|error| NodeRunError::Setup(format!("temporary directory: {error}")))?;
            let storage = paxos_storage::FileStorage::open(directory.path(), paxos_storage::FileOptions::default())
                .map_err(|error| NodeRunError::Setup(format!("file storage: {error}")))?;
            directories.push(Box::new(directory));
            Ok(start_node(config, transport, storage).await?)
        }
        #[cfg(not(feature = "file"))]
        StorageKind::File => {
            let _ = directories;
            Err(SpecError::NotCompiled { backend: "file storage", feature: "file" }.into())
        }
    }
}

/// One listener per member on a free 127.0.0.1 port (kept bound, so nothing else
/// takes it before the transport starts), and the peer map they make.
#[cfg(any(feature = "tcp", feature = "zmq"))]
#[allow(clippy::type_complexity)]
fn loopback_listeners(
    members: &[NodeId],
) -> Result<(Vec<std::net::TcpListener>, Vec<(NodeId, std::net::SocketAddr)>), NodeRunError> {
    let mut listeners = Vec::new();
    let mut peers = Vec::new();
    for id in members {
        let listener = std::net::TcpListener::bind("127.0.0.1:0")
            .map_err(|error| NodeRunError::Setup(format!("bind 127.0.0.1: {error}")))?;
        let address = listener.local_addr().map_err(|error| NodeRunError::Setup(format!("local address: {error}")))?;
        listeners.push(listener);
        peers.push((*id, address));
    }
    Ok((listeners, peers))
}

impl NodeCluster {
    /// Starts the nodes, waits for a leader (Multi-Paxos), subscribes to every
    /// node's log and starts `spec.in_flight` clients.
    pub fn start(spec: &Spec) -> Result<NodeCluster, NodeRunError> {
        spec.validate()?;
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .map_err(|error| NodeRunError::Setup(format!("tokio runtime: {error}")))?;
        let members: Vec<NodeId> = (1..=spec.replicas as NodeId).collect();
        let configs: Vec<Config> = members
            .iter()
            .map(|id| {
                let mut config = Config::new(*id, members.clone(), spec.protocol.into());
                config.batch_commands_max = spec.batch_commands_max();
                config.pending_commands_max = config.pending_commands_max.max(2 * spec.in_flight);
                // Ticks are 5 ms here, for quick resends. The default election
                // timeout of 10 ticks (50 ms) is shorter than the pauses of five
                // replicas moving megabytes on 2 shared cores, where a leader's
                // heartbeat late by that much set off elections that never settled.
                config.election_timeout_ticks = ELECTION_TIMEOUT_TICKS;
                config
            })
            .collect();
        let mut directories = Vec::new();
        let started = runtime.block_on(async {
            let mut started = Vec::new();
            match spec.transport {
                TransportKind::Memory => {
                    let network = paxos_core::memory::MemoryNetwork::new();
                    for config in configs {
                        let transport = network.join(config.node_id);
                        started.push(start_with_storage(spec.storage, config, transport, &mut directories).await?);
                    }
                }
                #[cfg(feature = "tcp")]
                TransportKind::Tcp => {
                    let (listeners, peers) = loopback_listeners(&members)?;
                    for (config, listener) in configs.into_iter().zip(listeners) {
                        let address = listener
                            .local_addr()
                            .map_err(|error| NodeRunError::Setup(format!("local address: {error}")))?;
                        let mut tcp = paxos_transport_tcp::TcpConfig::new(config.node_id, 7, address, peers.clone());
                        tcp.queue_messages_max = 65_536;
                        tcp.inbox_messages_max = 65_536;
                        let transport = paxos_transport_tcp::TcpTransport::start_tokio_on(tcp, listener)
                            .map_err(|error| NodeRunError::Setup(format!("tcp transport: {error}")))?;
                        started.push(start_with_storage(spec.storage, config, transport, &mut directories).await?);
                    }
                }
                #[cfg(feature = "zmq")]
                TransportKind::Zmq => {
                    let (listeners, peers) = loopback_listeners(&members)?;
                    for (config, listener) in configs.into_iter().zip(listeners) {
                        let address = listener
                            .local_addr()
                            .map_err(|error| NodeRunError::Setup(format!("local address: {error}")))?;
                        let mut zmq = paxos_transport_zmq::ZmqConfig::new(config.node_id, 7, address, peers.clone());
                        zmq.queue_messages_max = 65_536;
                        zmq.inbox_messages_max = 65_536;
                        let transport = paxos_transport_zmq::ZmqTransport::start_on(zmq, listener)
                            .await
                            .map_err(|error| NodeRunError::Setup(format!("zmq transport: {error}")))?;
                        started.push(start_with_storage(spec.storage, config, transport, &mut directories).await?);
                    }
                }
                other => return Err(NodeRunError::NotANodeTransport(other)),
            }
            Ok::<_, NodeRunError>(started)
        })?;
        let (handles, drivers): (Vec<NodeHandle>, Vec<_>) = started.into_iter().unzip();
        let mut cluster = NodeCluster {
            runtime,
            handles,
            drivers,
            logs: Vec::new(),
            appliers: Vec::new(),
            clients: Vec::new(),
            shared: Arc::new(Shared::default()),
            proposer: 0,
            _directories: directories,
        };
        if spec.protocol == ProtocolKind::Multi {
            cluster.proposer = cluster.wait_for_leader()?;
        }
        cluster.subscribe()?;
        cluster.start_clients(spec);
        Ok(cluster)
    }

    fn wait_for_leader(&self) -> Result<usize, NodeRunError> {
        self.runtime.block_on(async {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            while Instant::now() < deadline {
                for (position, handle) in self.handles.iter().enumerate() {
                    if handle.status().await?.role == Role::Leader {
                        return Ok(position);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Err(NodeRunError::Timeout("a leader"))
        })
    }

    fn subscribe(&mut self) -> Result<(), NodeRunError> {
        for handle in &self.handles {
            let log = Arc::new(Mutex::new(AppliedLog::default()));
            let mut entries = self.runtime.block_on(handle.subscribe())?;
            let shared_log = log.clone();
            self.appliers.push(self.runtime.spawn(async move {
                while let Some(entry) = entries.next().await {
                    let mut log = shared_log.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
                    log.record(entry.index, entry.slot, entry.command.id);
                }
            }));
            self.logs.push(log);
        }
        Ok(())
    }

    fn start_clients(&mut self, spec: &Spec) {
        // `in_flight` commands split over as few tasks as keep each window at most
        // CLIENT_WINDOW_MAX: a task submits its window with one `add_many` and, as
        // soon as it is applied, the next one (a closed loop, as a pipelining client
        // would). One command in flight is one `add` at a time.
        let clients = spec.in_flight.div_ceil(CLIENT_WINDOW_MAX);
        for client in 0..clients {
            let window = spec.in_flight / clients + usize::from(client < spec.in_flight % clients);
            let handles = self.handles.clone();
            let shared = self.shared.clone();
            let proposer = self.proposer;
            let payload = vec![0xA5u8; spec.command_bytes];
            // Bound the clients' samples together, not each on its own.
            let samples_max = crate::measure::LATENCY_SAMPLES_MAX / clients;
            self.clients.push(self.runtime.spawn(async move {
                let mut submitted = Submitted::default();
                let mut measurement = Measurement::with_samples_max(samples_max);
                let mut target = proposer;
                let mut sequence = 0;
                while !shared.stop.load(Ordering::Relaxed) {
                    let ids: Vec<CommandId> = (0..window as u64)
                        .map(|offset| CommandId { client: client as u64 + 1, sequence: sequence + offset })
                        .collect();
                    sequence += window as u64;
                    for id in &ids {
                        submitted.record(*id);
                    }
                    let started = Instant::now();
                    let mut attempts = 0;
                    loop {
                        let commands = ids.iter().map(|id| Command { id: *id, payload: payload.clone() }).collect();
                        let result = if window == 1 {
                            handles[target].add(Command { id: ids[0], payload: payload.clone() }).await.map(|_| ())
                        } else {
                            handles[target].add_many(commands).await.map(|_| ())
                        };
                        match result {
                            Ok(()) => break,
                            Err(NodeError::NotLeader { leader_hint: Some(leader) }) if attempts < RETRIES_MAX => {
                                // Same ids: the retry is applied at most once.
                                target = (leader - 1) as usize % handles.len();
                                attempts += 1;
                            }
                            Err(NodeError::Timeout | NodeError::Busy) if attempts < RETRIES_MAX => {
                                // Not chosen in time, or the proposer's queue was
                                // full: offer the same ids again, as a client should.
                                tokio::time::sleep(Duration::from_millis(1)).await;
                                attempts += 1;
                            }
                            Err(error) => return Err(error),
                        }
                    }
                    // Every command of the window was applied when `add_many` returned.
                    if shared.recording.load(Ordering::Relaxed) {
                        let latency = started.elapsed();
                        for _ in 0..window {
                            measurement.record_latency(latency);
                        }
                    }
                    let before = shared.completed.fetch_add(window as u64, Ordering::Relaxed);
                    let goal = shared.target.load(Ordering::Relaxed);
                    if before < goal && before + window as u64 >= goal {
                        shared.reached.notify_one();
                    }
                }
                Ok((submitted, measurement))
            }));
        }
    }

    /// The position of the node clients propose to.
    pub fn proposer(&self) -> usize {
        self.proposer
    }

    /// Runs `warm_up`, then measures for `window`.
    pub fn run_for(&mut self, warm_up: Duration, window: Duration) -> Result<(u64, Duration), NodeRunError> {
        self.runtime.block_on(async {
            tokio::time::sleep(warm_up).await;
            let before = self.shared.completed.load(Ordering::Relaxed);
            let start = Instant::now();
            self.shared.recording.store(true, Ordering::Relaxed);
            tokio::time::sleep(window).await;
            self.shared.recording.store(false, Ordering::Relaxed);
            let after = self.shared.completed.load(Ordering::Relaxed);
            Ok((after - before, start.elapsed()))
        })
    }

    /// Waits until `count` more commands are applied at the proposer; returns how
    /// long that took (criterion's `iter_custom`). Clients keep running in between.
    pub fn run_commands(&mut self, count: u64) -> Result<Duration, NodeRunError> {
        let start = Instant::now();
        let target = self.shared.completed.load(Ordering::Relaxed) + count;
        self.shared.target.store(target, Ordering::Relaxed);
        self.runtime.block_on(async {
            let deadline = start + SETTLE_TIMEOUT;
            while self.shared.completed.load(Ordering::Relaxed) < target {
                if Instant::now() >= deadline {
                    return Err(NodeRunError::Timeout("commands to be applied"));
                }
                // The notification may fire before we wait: the bounded wait covers that race.
                let _ = tokio::time::timeout(Duration::from_millis(1), self.shared.reached.notified()).await;
            }
            Ok(start.elapsed())
        })
    }

    /// Stops the clients, waits for every node to apply everything submitted,
    /// checks agreement, shuts the nodes down, and returns the clients' latencies.
    pub fn finish(mut self) -> Result<Measurement, NodeRunError> {
        self.shared.stop.store(true, Ordering::Relaxed);
        let clients = std::mem::take(&mut self.clients);
        let runtime = &self.runtime;
        let (submitted, measurement) = runtime.block_on(async {
            let mut submitted = Submitted::default();
            let mut measurement = Measurement::new();
            let joined = tokio::time::timeout(SETTLE_TIMEOUT, futures::future::join_all(clients))
                .await
                .map_err(|_| NodeRunError::Timeout("clients to stop"))?;
            for outcome in joined {
                let (client_submitted, client_measurement) =
                    outcome.map_err(|error| NodeRunError::Setup(format!("client task: {error}")))??;
                submitted.merge(client_submitted);
                measurement.merge_latencies(&client_measurement);
            }
            Ok::<_, NodeRunError>((submitted, measurement))
        })?;
        let logs = runtime.block_on(async {
            let deadline = Instant::now() + SETTLE_TIMEOUT;
            loop {
                let logs: Vec<AppliedLog> =
                    self.logs.iter().map(|log| *log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())).collect();
                if logs.iter().all(|log| log.count >= submitted.count) || Instant::now() >= deadline {
                    return logs;
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
        });
        self.shutdown();
        check_agreement(&logs, &submitted)?;
        Ok(measurement)
    }

    /// What each node applied so far.
    pub fn logs(&self) -> Vec<AppliedLog> {
        self.logs.iter().map(|log| *log.lock().unwrap_or_else(|poisoned| poisoned.into_inner())).collect()
    }

    fn shutdown(&mut self) {
        self.shared.stop.store(true, Ordering::Relaxed);
        for handle in &self.handles {
            handle.shutdown();
        }
        let drivers = std::mem::take(&mut self.drivers);
        let appliers = std::mem::take(&mut self.appliers);
        let clients = std::mem::take(&mut self.clients);
        self.runtime.block_on(async {
            for client in &clients {
                client.abort();
            }
            let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(drivers)).await;
            let _ = tokio::time::timeout(Duration::from_secs(10), futures::future::join_all(appliers)).await;
        });
    }
}

impl Drop for NodeCluster {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Runs one configuration through the async node: starts the cluster, warms up,
/// measures for `window`, stops the clients and checks agreement.
pub fn run(spec: &Spec, warm_up: Duration, window: Duration) -> Result<Measurement, NodeRunError> {
    if spec.transport == TransportKind::Loop {
        return Err(NodeRunError::NotANodeTransport(spec.transport));
    }
    let mut cluster = NodeCluster::start(spec)?;
    let (commands, elapsed) = cluster.run_for(warm_up, window)?;
    let mut measurement = cluster.finish()?;
    measurement.commands = commands;
    measurement.elapsed = elapsed;
    Ok(measurement)
}
