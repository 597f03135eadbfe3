//! The async node end to end: a 3-node Multi-Paxos cluster (and a Basic Paxos
//! one) over the in-memory transport, under tokio and under smol.

use std::time::Duration;

use futures::StreamExt;
use paxos_core::memory::{LinkFaults, MemoryNetwork};
use paxos_core::node::{NodeHandle, NodeOptions};
use paxos_core::{Command, Config, Node, NodeError, Protocol, Role};
use paxos_storage::MemoryStorage;

fn options() -> NodeOptions {
    NodeOptions {
        tick_interval: Duration::from_millis(2),
        propose_timeout: Duration::from_secs(20),
        ..NodeOptions::default()
    }
}

type Spawn = fn(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>);

async fn start_cluster(
    protocol: Protocol,
    network: &MemoryNetwork,
    storages: &[MemoryStorage],
    spawn: Spawn,
) -> Vec<NodeHandle> {
    let members = [1, 2, 3];
    let mut handles = Vec::new();
    for id in members {
        handles.push(start_node(protocol, id, network, storages[(id - 1) as usize].clone(), spawn).await);
    }
    handles
}

async fn start_node(
    protocol: Protocol,
    id: u64,
    network: &MemoryNetwork,
    storage: MemoryStorage,
    spawn: Spawn,
) -> NodeHandle {
    let mut config = Config::new(id, [1, 2, 3], protocol);
    config.election_timeout_ticks = 10;
    let (handle, driver) = Node::start_with(config, options(), network.join(id), storage).await.unwrap();
    spawn(Box::pin(async move {
        if let Err(error) = driver.await {
            panic!("driver failed: {error}");
        }
    }));
    handle
}

/// Starts Multi-Paxos node `id` of three under tokio, with `options` and its
/// config changed by `adjust`; returns its handle and its driver's task.
async fn start_adjusted(
    network: &MemoryNetwork,
    id: u64,
    storage: MemoryStorage,
    options: NodeOptions,
    adjust: impl FnOnce(&mut Config),
) -> (NodeHandle, tokio::task::JoinHandle<Result<(), NodeError>>) {
    let mut config = Config::new(id, [1, 2, 3], Protocol::Multi);
    config.election_timeout_ticks = 10;
    adjust(&mut config);
    let (handle, driver) = Node::start_with(config, options, network.join(id), storage).await.unwrap();
    (handle, tokio::spawn(driver))
}

/// Adds a command through `handle`, retrying on `NotLeader` with a hint.
async fn add(handles: &[NodeHandle], via: usize, command: Command) -> u64 {
    let mut target = via;
    for _ in 0..50 {
        match handles[target].add(command.clone()).await {
            Ok(index) => return index,
            Err(NodeError::NotLeader { leader_hint: Some(leader) }) => target = (leader - 1) as usize,
            Err(NodeError::NotLeader { leader_hint: None }) | Err(NodeError::Timeout) | Err(NodeError::Stopped) => {
                target = (target + 1) % handles.len()
            }
            Err(error) => panic!("add failed: {error}"),
        }
    }
    panic!("command never chosen")
}

/// Polls until `handle` has applied `count` commands; false after about 10 s.
async fn applied_at_least(handle: &NodeHandle, count: u64) -> bool {
    for _ in 0..5000 {
        if handle.status().await.unwrap().next_index >= count {
            return true;
        }
        futures_timer::Delay::new(Duration::from_millis(2)).await;
    }
    false
}

/// Polls until `handle` knows every slot through `slot` is chosen; false after about 10 s.
async fn knows_chosen_through(handle: &NodeHandle, slot: u64) -> bool {
    for _ in 0..5000 {
        if handle.status().await.unwrap().known_chosen_through >= slot {
            return true;
        }
        futures_timer::Delay::new(Duration::from_millis(2)).await;
    }
    false
}

async fn cluster_scenario(protocol: Protocol, spawn: Spawn) {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let handles = start_cluster(protocol, &network, &storages, spawn).await;
    let mut entries = handles[2].subscribe().await.unwrap();

    let mut indexes = Vec::new();
    for sequence in 1..=20u64 {
        let via = (sequence % 3) as usize;
        indexes.push(add(&handles, via, Command::new(1, sequence, format!("v{sequence}").into_bytes())).await);
    }
    let mut sorted = indexes.clone();
    sorted.sort();
    sorted.dedup();
    assert_eq!(sorted.len(), 20, "every command has its own index");

    // The stream on node 3 sees every command, in log order.
    let mut streamed = Vec::new();
    while streamed.len() < 20 {
        let entry = entries.next().await.expect("stream open");
        streamed.push(entry.index);
    }
    assert_eq!(streamed, (0..20).collect::<Vec<u64>>());

    // A retry under the same id returns the same index and applies nothing new.
    let again = add(&handles, 0, Command::new(1, 5, b"v5".to_vec())).await;
    assert_eq!(again, indexes[4]);

    // Every node serves every index with the same command, once caught up. The
    // reference is node 1, which need not be the node that answered the adds.
    assert!(applied_at_least(&handles[0], 20).await, "node 1 applies every command");
    for index in 0..20 {
        let expected = handles[0].get(index).await.unwrap().expect("applied on node 1");
        for handle in &handles[1..] {
            let mut found = handle.get(index).await.unwrap();
            for _ in 0..1000 {
                if found.is_some() {
                    break;
                }
                futures_timer::Delay::new(Duration::from_millis(2)).await;
                found = handle.get(index).await.unwrap();
            }
            assert_eq!(found.as_ref(), Some(&expected));
        }
    }

    // Crash node 1 (cut it off, stop its driver), keep going on the other two,
    // then restart it from its storage and watch it catch up.
    network.isolate(1);
    handles[0].shutdown();
    for sequence in 21..=25u64 {
        add(&handles, 1 + (sequence % 2) as usize, Command::new(2, sequence, b"after".to_vec())).await;
    }
    network.heal();
    let restarted = start_node(protocol, 1, &network, storages[0].clone(), spawn).await;
    let handles = vec![restarted, handles[1].clone(), handles[2].clone()];
    for handle in &handles {
        assert!(applied_at_least(handle, 25).await, "node {} caught up", handle.node_id());
    }
    let target = handles[1].status().await.unwrap().next_index;
    for index in 0..target {
        assert_eq!(handles[0].get(index).await.unwrap(), handles[1].get(index).await.unwrap());
    }
    if protocol == Protocol::Multi {
        let roles: Vec<Role> = futures::future::join_all(handles.iter().map(|h| h.status()))
            .await
            .into_iter()
            .map(|s| s.unwrap().role)
            .collect();
        assert!(roles.iter().filter(|role| **role == Role::Leader).count() <= 1 || roles.contains(&Role::Leader));
    }
    for handle in &handles {
        handle.shutdown();
    }
}

/// Through the node: a replica that was down while the others compacted
/// catches up from the compacted slots they keep, so it applies every command
/// itself and serves the whole log, where one sent the snapshot would serve
/// nothing below it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_back_after_a_compaction_catches_up_from_kept_slots() {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let handles = start_cluster(Protocol::Multi, &network, &storages, tokio_spawn).await;
    for sequence in 1..=5u64 {
        add(&handles, 0, Command::new(1, sequence, b"before".to_vec())).await;
    }
    assert!(applied_at_least(&handles[2], 5).await);
    network.isolate(3);
    handles[2].shutdown();
    for sequence in 6..=40u64 {
        add(&handles, 0, Command::new(1, sequence, b"while down".to_vec())).await;
    }
    for handle in &handles[..2] {
        assert!(applied_at_least(handle, 40).await);
        let through = handle.status().await.unwrap().applied_through;
        handle.compact(through, b"state".to_vec()).await.unwrap().unwrap();
        assert_eq!(handle.get(0).await.unwrap(), None, "node {} compacted", handle.node_id());
    }
    network.heal();
    let restarted = start_node(Protocol::Multi, 3, &network, storages[2].clone(), tokio_spawn).await;
    let mut events = restarted.events().await.unwrap();
    add(&handles, 0, Command::new(1, 41, b"after".to_vec())).await;
    assert!(applied_at_least(&restarted, 41).await, "node 3 caught up");
    for index in 0..41 {
        let entry = restarted.get(index).await.unwrap();
        assert_eq!(entry.map(|command| command.id.sequence), Some(index + 1), "node 3 applied entry {index} itself");
    }
    while let Some(Some(event)) = futures::FutureExt::now_or_never(events.next()) {
        assert!(!matches!(event, paxos_core::Event::SnapshotInstalled(_)), "node 3 was sent the snapshot");
    }
    for handle in handles.iter().chain([&restarted]) {
        handle.shutdown();
    }
}

/// An application's state built from `subscribe_from`: the sequence numbers of
/// the commands applied, in log order; a snapshot's data is that list, encoded.
#[derive(Debug, Default)]
struct AppState {
    sequences: Vec<u64>,
    snapshots_taken: usize,
}

impl AppState {
    fn encode(sequences: &[u64]) -> Vec<u8> {
        sequences.iter().flat_map(|sequence| sequence.to_le_bytes()).collect()
    }

    fn apply(&mut self, applied: paxos_core::Applied) {
        match applied {
            paxos_core::Applied::Snapshot(snapshot) => {
                self.sequences =
                    snapshot.data.chunks(8).map(|bytes| u64::from_le_bytes(bytes.try_into().unwrap())).collect();
                assert_eq!(
                    self.sequences.len() as u64,
                    snapshot.next_index,
                    "the snapshot stands for every entry before it"
                );
                self.snapshots_taken += 1;
            }
            paxos_core::Applied::Entry(entry) => {
                assert_eq!(entry.index, self.sequences.len() as u64, "entries come in order, with no gap");
                self.sequences.push(entry.command.id.sequence);
            }
        }
    }

    /// Applies what the stream holds now, until `count` entries are covered.
    async fn follow(&mut self, stream: &mut (impl futures::Stream<Item = paxos_core::Applied> + Unpin), count: usize) {
        while self.sequences.len() < count {
            let applied = tokio::time::timeout(Duration::from_secs(10), stream.next())
                .await
                .expect("the stream went quiet")
                .expect("the stream stays open");
            self.apply(applied);
        }
    }
}

/// `subscribe_from` gives an application everything it needs, in order: a
/// replica that lagged past the others' compaction (which keep no slots) is
/// sent the snapshot between the entries before and after it, and a replica
/// restarted from storage that holds a snapshot starts its stream with that
/// snapshot, or, from a later index, with the entries from there.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribe_from_carries_snapshots_in_log_order_and_across_restarts() {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let start = |id: u64| {
        let storage = storages[(id - 1) as usize].clone();
        start_adjusted(&network, id, storage, options(), |config| config.compaction_keep_slots = 0)
    };
    let (node_1, driver_1) = start(1).await;
    let handles = vec![node_1, start(2).await.0, start(3).await.0];
    let mut stream_3 = Box::pin(handles[2].subscribe_from(0).await.unwrap());
    let mut state_3 = AppState::default();
    for sequence in 1..=10u64 {
        add(&handles, 0, Command::new(1, sequence, b"x".to_vec())).await;
    }
    state_3.follow(&mut stream_3, 10).await;
    network.isolate(3);
    for sequence in 11..=30u64 {
        add(&handles, 0, Command::new(1, sequence, b"x".to_vec())).await;
    }
    for handle in &handles[..2] {
        assert!(applied_at_least(handle, 30).await);
        let status = handle.status().await.unwrap();
        let mut sequences = Vec::new();
        for index in 0..status.next_index {
            sequences.push(handle.get(index).await.unwrap().unwrap().id.sequence);
        }
        handle.compact(status.applied_through, AppState::encode(&sequences)).await.unwrap().unwrap();
    }
    // Node 3 hears again, but its own messages are lost for now: it accepts
    // slot 31 and learns that it is chosen before it can ask for what it lacks,
    // so the step that installs the snapshot applies slot 31 too.
    network.unblock(1, 3);
    network.unblock(2, 3);
    add(&handles, 0, Command::new(1, 31, b"x".to_vec())).await;
    let chosen_through_31 = handles[0].status().await.unwrap().applied_through;
    assert!(knows_chosen_through(&handles[2], chosen_through_31).await, "node 3 learned that slot 31 is chosen");
    network.heal();
    state_3.follow(&mut stream_3, 31).await;
    assert_eq!(state_3.sequences, (1..=31).collect::<Vec<u64>>());
    assert_eq!(state_3.snapshots_taken, 1, "node 3 lagged past the compaction and took the snapshot");

    // Node 1 restarts from storage that holds its snapshot and one entry after it.
    network.isolate(1);
    handles[0].shutdown();
    // The old driver ends before a new one takes node 1's place on the network.
    driver_1.await.unwrap().expect("node 1 stopped cleanly");
    network.heal();
    let (restarted, _) = start(1).await;
    assert!(applied_at_least(&restarted, 31).await);
    let mut from_start = AppState::default();
    from_start.follow(&mut Box::pin(restarted.subscribe_from(0).await.unwrap()), 31).await;
    assert_eq!(from_start.sequences, (1..=31).collect::<Vec<u64>>());
    assert_eq!(from_start.snapshots_taken, 1, "a stream from 0 starts with the snapshot");
    // An application that holds the first 30 entries itself gets the 31st alone.
    let mut held = AppState { sequences: (1..=30).collect(), snapshots_taken: 0 };
    held.follow(&mut Box::pin(restarted.subscribe_from(30).await.unwrap()), 31).await;
    assert_eq!(held.sequences, (1..=31).collect::<Vec<u64>>());
    assert_eq!(held.snapshots_taken, 0);
    for handle in [&restarted, &handles[1], &handles[2]] {
        handle.shutdown();
    }
}

/// A `subscribe_from` stream that is not read for a while, with room for 8
/// items: it is not ended, and brings every entry in order once read, the 20
/// applied before it started and one after; an entry marks the end of its slot.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscribe_from_stream_read_late_misses_nothing() {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let mut handles = Vec::new();
    for id in 1..=3u64 {
        let options = NodeOptions { subscriber_buffer_max: 8, ..options() };
        handles.push(start_adjusted(&network, id, storages[(id - 1) as usize].clone(), options, |_| {}).await.0);
    }
    for sequence in 1..=20u64 {
        add(&handles, 0, Command::new(1, sequence, b"x".to_vec())).await;
    }
    assert!(applied_at_least(&handles[0], 20).await);
    let mut stream = Box::pin(handles[0].subscribe_from(0).await.unwrap());
    // And one ahead of what is applied: it waits for entry 20.
    let mut ahead = Box::pin(handles[0].subscribe_from(20).await.unwrap());
    add(&handles, 0, Command::new(1, 21, b"x".to_vec())).await;
    futures_timer::Delay::new(Duration::from_millis(200)).await;
    let mut state = AppState::default();
    state.follow(&mut stream, 21).await;
    assert_eq!(state.sequences, (1..=21).collect::<Vec<u64>>());
    let Some(paxos_core::Applied::Entry(entry)) = ahead.next().await else { panic!("an entry") };
    assert_eq!((entry.index, entry.command.id.sequence), (20, 21));
    assert!(entry.last_in_slot, "one command in its slot");
    for handle in &handles {
        handle.shutdown();
    }
}

fn tokio_spawn(future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
    tokio::spawn(future);
}

fn smol_spawn(future: std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send>>) {
    smol::spawn(future).detach();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn multi_paxos_cluster_under_tokio() {
    cluster_scenario(Protocol::Multi, tokio_spawn).await;
}

#[test]
fn multi_paxos_cluster_under_smol() {
    smol::block_on(cluster_scenario(Protocol::Multi, smol_spawn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_paxos_cluster_under_tokio() {
    cluster_scenario(Protocol::Basic, tokio_spawn).await;
}

#[test]
fn basic_paxos_cluster_under_smol() {
    smol::block_on(cluster_scenario(Protocol::Basic, smol_spawn));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_survives_a_lossy_network() {
    let network = MemoryNetwork::new();
    network.set_faults(
        LinkFaults {
            drop_per_million: 100_000,
            duplicate_per_million: 50_000,
            delay: Some((Duration::from_micros(0), Duration::from_millis(3))),
        },
        7,
    );
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let handles = start_cluster(Protocol::Multi, &network, &storages, tokio_spawn).await;
    for sequence in 1..=20u64 {
        add(&handles, (sequence % 3) as usize, Command::new(3, sequence, vec![sequence as u8])).await;
    }
    for handle in &handles {
        handle.shutdown();
    }
}

#[tokio::test]
async fn a_failed_write_stops_the_node_instead_of_replying() {
    let network = MemoryNetwork::new();
    let storage = MemoryStorage::new();
    storage.fail_writes(true);
    let config = Config::new(1, [1], Protocol::Multi);
    let (handle, driver) = Node::start_with(config, options(), network.join(1), storage).await.unwrap();
    let result = driver.await;
    assert!(matches!(result, Err(NodeError::Storage(_))), "got {result:?}");
    assert!(matches!(handle.add(Command::new(1, 1, vec![])).await, Err(NodeError::Stopped)));
}

#[tokio::test]
async fn invalid_config_is_refused_at_start() {
    let network = MemoryNetwork::new();
    let config = Config::new(9, [1, 2, 3], Protocol::Multi);
    let result = Node::start(config, network.join(9), MemoryStorage::new()).await;
    assert!(matches!(result, Err(NodeError::Config(_))));
}

#[test]
fn memory_transport_passes_the_transport_conformance_suite() {
    let network = MemoryNetwork::new();
    let endpoints = vec![(1, network.join(1)), (2, network.join(2)), (3, network.join(3))];
    futures::executor::block_on(paxos_core::conformance::transport_suite(endpoints));
}

/// `add_many` returns one index per command, in the order given; resubmitting
/// the same ids (whole, or one by one with `add`) returns the same indexes; every
/// subscriber sees every entry once, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn add_many_answers_in_order_and_retries_are_idempotent() {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let handles = start_cluster(Protocol::Multi, &network, &storages, tokio_spawn).await;
    let leader = add(&handles, 0, Command::new(9, 0, b"first".to_vec())).await;
    assert_eq!(leader, 0);
    let entries = handles[1].subscribe().await.unwrap();
    let commands: Vec<Command> = (1..=300u64).map(|sequence| Command::new(4, sequence, vec![sequence as u8])).collect();
    let mut indexes = None;
    for via in (0..handles.len()).cycle().take(30) {
        match handles[via].add_many(commands.clone()).await {
            Ok(answer) => {
                indexes = Some(answer);
                break;
            }
            Err(NodeError::NotLeader { .. }) | Err(NodeError::Timeout) => {}
            Err(error) => panic!("add_many failed: {error}"),
        }
    }
    let indexes = indexes.expect("add_many never answered");
    assert_eq!(indexes.len(), commands.len());
    let mut sorted = indexes.clone();
    sorted.sort_unstable();
    sorted.dedup();
    assert_eq!(sorted.len(), commands.len(), "one distinct index per command: {indexes:?}");
    for (via, handle) in handles.iter().enumerate() {
        assert_eq!(handle.add_many(commands.clone()).await.unwrap(), indexes, "a retry via node {via}");
    }
    assert_eq!(handles[0].add(commands[7].clone()).await.unwrap(), indexes[7]);
    assert_eq!(handles[0].add_many(Vec::new()).await.unwrap(), Vec::<u64>::new());
    // Twice the same id in one call: both positions get its one index.
    let twice = vec![Command::new(5, 1, b"x".to_vec()), Command::new(5, 1, b"x".to_vec())];
    let answer = add_many_via_leader(&handles, twice).await;
    assert_eq!(answer[0], answer[1]);
    // Node 2 may apply the first command after it subscribed: skip it.
    let mut entries = entries.filter(|entry| futures::future::ready(entry.command.id.client == 4));
    for (position, command) in commands.iter().enumerate() {
        let entry = entries.next().await.unwrap();
        assert_eq!((entry.index, &entry.command), (indexes[position], command), "subscriber order");
    }
    for handle in &handles {
        handle.shutdown();
    }
}

async fn add_many_via_leader(handles: &[NodeHandle], commands: Vec<Command>) -> Vec<u64> {
    for via in (0..handles.len()).cycle().take(30) {
        if let Ok(answer) = handles[via].add_many(commands.clone()).await {
            return answer;
        }
    }
    panic!("add_many never answered")
}

/// Without a quorum nothing is chosen: `add` and `add_many` answer `Timeout`
/// after about `propose_timeout` (the driver's ticks enforce it), and the node
/// keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_time_out_without_a_quorum() {
    let network = MemoryNetwork::new();
    let config = Config::new(1, [1, 2, 3], Protocol::Multi);
    let options = NodeOptions { propose_timeout: Duration::from_millis(150), ..options() };
    let (handle, driver) = Node::start_with(config, options, network.join(1), MemoryStorage::new()).await.unwrap();
    let driver = tokio::spawn(driver);
    let started = std::time::Instant::now();
    let (one, many) = futures::join!(
        handle.add(Command::new(1, 1, vec![])),
        handle.add_many(vec![Command::new(1, 2, vec![]), Command::new(1, 3, vec![])])
    );
    let waited = started.elapsed();
    assert!(matches!(one, Err(NodeError::Timeout)), "got {one:?}");
    assert!(matches!(many, Err(NodeError::Timeout)), "got {many:?}");
    assert!(waited >= Duration::from_millis(140) && waited < Duration::from_secs(5), "waited {waited:?}");
    assert!(handle.status().await.is_ok());
    handle.shutdown();
    driver.await.unwrap().unwrap();
}

#[tokio::test]
async fn auto_compaction_counts_commands_when_slots_hold_large_batches() {
    let network = MemoryNetwork::new();
    let storage = MemoryStorage::new();
    let config = Config::new(1, [1], Protocol::Multi);
    // A slot bound this high never fires here: only the command count can.
    let options = NodeOptions { auto_compact_slots: Some(1 << 30), auto_compact_commands: Some(500), ..options() };
    let (handle, driver) = Node::start_with(config, options, network.join(1), storage.clone()).await.unwrap();
    let driver = tokio::spawn(driver);
    for round in 0..4u64 {
        let commands: Vec<Command> = (0..250).map(|sequence| Command::new(round + 1, sequence, vec![7])).collect();
        let indexes = handle.add_many(commands).await.unwrap();
        assert_eq!(indexes.len(), 250);
    }
    // The compaction write goes out with the round after the one that applied
    // the 500th command; one more command makes sure that round happened.
    handle.add(Command::new(9, 0, vec![7])).await.unwrap();
    let durable = storage.snapshot();
    let snapshot = durable.snapshot.expect("1,001 commands in a handful of slots were compacted");
    assert!(snapshot.next_index >= 500, "compacted after at least 500 commands, got {}", snapshot.next_index);
    assert!(durable.slots.keys().all(|slot| *slot > snapshot.through_slot), "compacted slots left storage");
    handle.shutdown();
    driver.await.unwrap().unwrap();
}

/// Large commands: a bound in bytes compacts long before the bounds in slots
/// and commands would, and only once the applied payloads reach it.
#[tokio::test]
async fn auto_compaction_counts_bytes_when_commands_are_large() {
    let network = MemoryNetwork::new();
    let storage = MemoryStorage::new();
    let config = Config::new(1, [1], Protocol::Multi);
    let options = NodeOptions {
        auto_compact_slots: Some(1 << 30),
        auto_compact_commands: Some(1 << 30),
        auto_compact_bytes: Some(64 << 10),
        ..options()
    };
    let (handle, driver) = Node::start_with(config, options, network.join(1), storage.clone()).await.unwrap();
    let driver = tokio::spawn(driver);
    // 60 KiB applied: under the bound, nothing is compacted.
    for sequence in 0..15 {
        handle.add(Command::new(1, sequence, vec![3; 4096])).await.unwrap();
    }
    handle.add(Command::new(2, 0, vec![])).await.unwrap();
    assert_eq!(storage.snapshot().snapshot, None, "60 KiB of payloads is under the 64 KiB bound");
    // The 16th 4 KiB command reaches it; the compaction write goes out with the next round.
    handle.add(Command::new(1, 15, vec![3; 4096])).await.unwrap();
    handle.add(Command::new(2, 1, vec![])).await.unwrap();
    let durable = storage.snapshot();
    let snapshot = durable.snapshot.expect("64 KiB of payloads were compacted");
    assert!(snapshot.next_index >= 17, "compacted after the 16th large command, got {}", snapshot.next_index);
    assert!(durable.slots.keys().all(|slot| *slot > snapshot.through_slot), "compacted slots left storage");
    handle.shutdown();
    driver.await.unwrap().unwrap();
}

/// A command the replica still holds is not proposed again when it waits past
/// the resubmission timeout: a Basic Paxos node cut off from its peers for a
/// dozen timeouts (batching off), then healed, puts each command in one slot only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_the_replica_holds_are_not_proposed_again_while_they_wait() {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let mut config = Config::new(1, [1, 2, 3], Protocol::Basic);
    config.batch_commands_max = 1;
    let timeout = options().tick_interval * config.election_timeout_ticks as u32;
    let (handle, driver) = Node::start_with(config, options(), network.join(1), storages[0].clone()).await.unwrap();
    tokio::spawn(driver);
    let mut peers = Vec::new();
    for id in [2, 3] {
        peers.push(start_node(Protocol::Basic, id, &network, storages[(id - 1) as usize].clone(), tokio_spawn).await);
    }
    network.isolate(1);
    let waiting = {
        let handle = handle.clone();
        tokio::spawn(async move {
            let adds = (1..=8).map(|sequence| handle.add(Command::new(1, sequence, vec![])));
            futures::future::join_all(adds).await
        })
    };
    tokio::time::sleep(timeout * 12).await;
    network.heal();
    for answer in waiting.await.unwrap() {
        answer.unwrap();
    }
    assert!(applied_at_least(&handle, 8).await);
    let mut copies = std::collections::BTreeMap::new();
    for state in storages[0].snapshot().slots.values() {
        if let Some((_, value)) = &state.accepted {
            for command in value.commands() {
                *copies.entry(command.id.sequence).or_insert(0) += 1;
            }
        }
    }
    assert_eq!(copies.len(), 8, "{copies:?}");
    assert!(copies.values().all(|count| *count == 1), "commands proposed in more than one slot: {copies:?}");
}

/// A chosen record costs no sync of its own: it is written in front of the next
/// write that must be durable (or at the next tick). A crash that loses it loses
/// nothing: the restarted replica finds the slot accepted but not chosen and
/// learns it again. One Basic Paxos node with ticks an hour apart makes the
/// timing deterministic; the restart uses normal ticks to run the recovery.
#[tokio::test]
async fn chosen_records_ride_with_the_next_write_and_a_crash_that_loses_them_loses_nothing() {
    let network = MemoryNetwork::new();
    let storage = MemoryStorage::new();
    let config = Config::new(1, [1], Protocol::Basic);
    let slow = NodeOptions { tick_interval: Duration::from_secs(3600), ..options() };
    let (handle, driver) = Node::start_with(config.clone(), slow, network.join(1), storage.clone()).await.unwrap();
    let (driver, crash) = futures::future::abortable(driver);
    let running = tokio::spawn(driver);

    let first = Command::new(1, 1, b"first".to_vec());
    let second = Command::new(1, 2, b"second".to_vec());
    assert_eq!(handle.add(first.clone()).await.unwrap(), 0);
    let durable = storage.snapshot();
    assert!(durable.slots[&1].accepted.is_some(), "the accept is durable before the answer");
    assert_eq!(durable.slots[&1].chosen, None, "the chosen record waits for the next write");

    assert_eq!(handle.add(second.clone()).await.unwrap(), 1);
    let durable = storage.snapshot();
    assert!(durable.slots[&1].chosen.is_some(), "slot 1's record went out with slot 2's writes");
    assert_eq!(durable.slots[&2].chosen, None);

    // Crash: the driver is dropped mid-run, slot 2's chosen record unwritten.
    crash.abort();
    assert!(running.await.unwrap().is_err(), "the driver was aborted");
    let (handle, driver) = Node::start_with(config, options(), network.join(1), storage.clone()).await.unwrap();
    tokio::spawn(driver);
    assert!(applied_at_least(&handle, 2).await, "the restarted node learned slot 2 again");
    assert_eq!(handle.get(0).await.unwrap(), Some(first));
    assert_eq!(handle.get(1).await.unwrap(), Some(second));
    handle.shutdown();
}

/// The whole Multi-Paxos cluster crashes at once (every driver dropped mid-run,
/// with whatever chosen records it still held back) and restarts from storage:
/// every acknowledged command is served again at its index on every node, learned
/// again from the accepted values the new leader recovers in phase 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_that_crashes_at_once_serves_every_acknowledged_command_after_restart() {
    let network = MemoryNetwork::new();
    let storages: Vec<MemoryStorage> = (0..3).map(|_| MemoryStorage::new()).collect();
    let mut handles = Vec::new();
    let mut running = Vec::new();
    for id in 1..=3u64 {
        let mut config = Config::new(id, [1, 2, 3], Protocol::Multi);
        config.election_timeout_ticks = 10;
        let storage = storages[(id - 1) as usize].clone();
        let (handle, driver) = Node::start_with(config, options(), network.join(id), storage).await.unwrap();
        let (driver, crash) = futures::future::abortable(driver);
        handles.push(handle);
        running.push((tokio::spawn(driver), crash));
    }
    let mut acknowledged = Vec::new();
    for sequence in 1..=30u64 {
        let command = Command::new(1, sequence, format!("c{sequence}").into_bytes());
        acknowledged.push((add(&handles, (sequence % 3) as usize, command.clone()).await, command));
    }
    for (task, crash) in running {
        crash.abort();
        assert!(task.await.unwrap().is_err(), "the driver was aborted");
    }

    let handles = start_cluster(Protocol::Multi, &network, &storages, tokio_spawn).await;
    for handle in &handles {
        assert!(applied_at_least(handle, 30).await, "node {} recovered its log", handle.node_id());
        for (index, command) in &acknowledged {
            assert_eq!(handle.get(*index).await.unwrap().as_ref(), Some(command), "node {}", handle.node_id());
        }
    }
    for handle in &handles {
        handle.shutdown();
    }
}

/// Memory storage with a gate: while it is closed, every append waits (at most
/// about 20 s) until it opens, and is counted as held.
#[derive(Clone, Default)]
struct GatedStorage {
    inner: MemoryStorage,
    closed: std::sync::Arc<std::sync::atomic::AtomicBool>,
    held: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl GatedStorage {
    fn set_closed(&self, closed: bool) {
        self.closed.store(closed, std::sync::atomic::Ordering::SeqCst);
    }

    fn held(&self) -> usize {
        self.held.load(std::sync::atomic::Ordering::SeqCst)
    }
}

#[async_trait::async_trait]
impl paxos_core::Storage for GatedStorage {
    type Error = <MemoryStorage as paxos_core::Storage>::Error;

    async fn append(&self, ops: &[paxos_core::StorageOp]) -> Result<(), Self::Error> {
        if self.closed.load(std::sync::atomic::Ordering::SeqCst) {
            self.held.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            for _ in 0..20_000 {
                if !self.closed.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                futures_timer::Delay::new(Duration::from_millis(1)).await;
            }
        }
        self.inner.append(ops).await
    }

    async fn load(&self) -> Result<paxos_core::DurableState, Self::Error> {
        self.inner.load().await
    }
}

/// While a follower's disk holds a write, its driver goes on answering (the write
/// is in flight, not in the way), and the accept waiting on that write does not
/// leave: with both followers' writes held, the leader cannot count a majority,
/// so nothing new is chosen until the disks let go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_write_blocks_its_vote_but_not_the_driver() {
    let network = MemoryNetwork::new();
    let storages: Vec<GatedStorage> = (0..3).map(|_| GatedStorage::default()).collect();
    let mut handles = Vec::new();
    for id in [1u64, 2, 3] {
        let mut config = Config::new(id, [1, 2, 3], Protocol::Multi);
        config.election_timeout_ticks = 10;
        let storage = storages[(id - 1) as usize].clone();
        let (handle, driver) = Node::start_with(config, options(), network.join(id), storage).await.unwrap();
        tokio::spawn(async move { driver.await.expect("driver failed") });
        handles.push(handle);
    }
    add(&handles, 0, Command::new(1, 0, b"before".to_vec())).await;
    let leader = handles[0].status().await.unwrap().leader.expect("a leader after a chosen command");
    let leader = (leader - 1) as usize;
    let followers: Vec<usize> = (0..3).filter(|position| *position != leader).collect();
    for follower in &followers {
        assert!(applied_at_least(&handles[*follower], 1).await, "follower {follower} never applied the first command");
        storages[*follower].set_closed(true);
    }
    let applied_before = handles[leader].status().await.unwrap().next_index;
    let adding = tokio::spawn({
        let handle = handles[leader].clone();
        async move { handle.add(Command::new(1, 1, b"held".to_vec())).await }
    });
    // Both followers get the accept and try to make it durable.
    for _ in 0..5000 {
        if followers.iter().all(|follower| storages[*follower].held() > 0) {
            break;
        }
        futures_timer::Delay::new(Duration::from_millis(2)).await;
    }
    for follower in &followers {
        assert!(storages[*follower].held() > 0, "follower {follower} never wrote the accept");
        let status = tokio::time::timeout(Duration::from_secs(5), handles[*follower].status()).await;
        assert!(matches!(status, Ok(Ok(_))), "follower {follower} stopped answering while its write was held");
    }
    futures_timer::Delay::new(Duration::from_millis(50)).await;
    assert_eq!(
        handles[leader].status().await.unwrap().next_index,
        applied_before,
        "a command was chosen with both followers' accepts still on their way to disk"
    );
    assert!(!adding.is_finished(), "add answered before a majority made the accept durable");
    for follower in &followers {
        storages[*follower].set_closed(false);
    }
    let index = adding.await.unwrap().expect("the held command is chosen once the writes finish");
    assert_eq!(index, applied_before);
    for handle in &handles {
        assert!(applied_at_least(handle, applied_before + 1).await);
        handle.shutdown();
    }
}

/// A disk that holds its writes makes the driver stop taking input once about
/// 16 MiB of commands wait behind the write in flight, instead of queueing
/// without bound; it takes input again, and every command is chosen, once the
/// disk lets go.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_held_disk_stops_the_driver_taking_input_once_its_queue_is_full() {
    let network = MemoryNetwork::new();
    let storage = GatedStorage::default();
    let config = Config::new(1, [1], Protocol::Multi);
    let (handle, driver) = Node::start_with(config, options(), network.join(1), storage.clone()).await.unwrap();
    tokio::spawn(async move { driver.await.expect("driver failed") });
    add(std::slice::from_ref(&handle), 0, Command::new(1, 0, b"leader".to_vec())).await;
    storage.set_closed(true);
    // The first write goes in flight and is held; the next ones queue behind it.
    let first = tokio::spawn({
        let handle = handle.clone();
        async move { handle.add(Command::new(1, 1, vec![1; 1024])).await }
    });
    for _ in 0..5000 {
        if storage.held() > 0 {
            break;
        }
        futures_timer::Delay::new(Duration::from_millis(1)).await;
    }
    assert!(storage.held() > 0, "the first write never reached the disk");
    let mut large = Vec::new();
    for sequence in 2..22u64 {
        let handle = handle.clone();
        large.push(tokio::spawn(async move { handle.add(Command::new(1, sequence, vec![7; 1 << 20])).await }));
    }
    // 20 MiB of commands are queued or waiting in the request channel: the
    // driver no longer answers, since it takes no input.
    futures_timer::Delay::new(Duration::from_millis(200)).await;
    let status = tokio::time::timeout(Duration::from_millis(300), handle.status()).await;
    assert!(status.is_err(), "the driver took input with its write queue full");
    storage.set_closed(false);
    assert_eq!(first.await.unwrap().expect("the held command is chosen"), 1);
    let mut indexes = Vec::new();
    for add in large {
        indexes.push(add.await.unwrap().expect("a queued command is chosen"));
    }
    indexes.sort_unstable();
    assert_eq!(indexes, (2..22).collect::<Vec<u64>>());
    assert!(tokio::time::timeout(Duration::from_secs(5), handle.status()).await.is_ok());
    handle.shutdown();
}
