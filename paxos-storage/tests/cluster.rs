//! A 3-node Multi-Paxos cluster on `FileStorage` (in-memory transport, tokio) that
//! crash-restarts every node in turn, reopening its data directory, and keeps every
//! acknowledged command at the index it was acknowledged with.

use std::path::Path;
use std::time::Duration;

use futures::channel::oneshot;
use paxos_core::memory::MemoryNetwork;
use paxos_core::node::{NodeHandle, NodeOptions};
use paxos_core::{Command, Config, Node, NodeError, Protocol};
use paxos_storage::{FileError, FileOptions, FileStorage};

const MEMBERS: [u64; 3] = [1, 2, 3];

fn options(auto_compact_slots: Option<u64>) -> NodeOptions {
    NodeOptions {
        tick_interval: Duration::from_millis(2),
        propose_timeout: Duration::from_secs(20),
        auto_compact_slots,
        ..NodeOptions::default()
    }
}

fn file_options() -> FileOptions {
    // Small enough that every node writes checkpoints during the test.
    FileOptions { log_bytes_max: 2 << 10, ..FileOptions::default() }
}

/// A running node and a receiver that fires once its driver, and with it the
/// node's `FileStorage`, has been dropped.
struct Running {
    handle: NodeHandle,
    stopped: oneshot::Receiver<()>,
}

async fn start_node(id: u64, network: &MemoryNetwork, dir: &Path, auto_compact_slots: Option<u64>) -> Running {
    let storage = match FileStorage::open(dir, file_options()) {
        Ok(storage) => storage,
        Err(FileError::Locked { .. }) => panic!("node {id}: the previous instance still holds {}", dir.display()),
        Err(error) => panic!("node {id}: {error}"),
    };
    let mut config = Config::new(id, MEMBERS, Protocol::Multi);
    config.election_timeout_ticks = 10;
    let (handle, driver) =
        Node::start_with(config, options(auto_compact_slots), network.join(id), storage).await.unwrap();
    let (done, stopped) = oneshot::channel();
    tokio::spawn(async move {
        if let Err(error) = driver.await {
            panic!("node {id}: driver failed: {error}");
        }
        let _ = done.send(());
    });
    Running { handle, stopped }
}

/// Adds `command`, moving to the hinted leader or the next node until it is chosen.
async fn add(nodes: &[Running], skip: Option<usize>, command: Command) -> u64 {
    let mut target = (command.id.sequence as usize) % nodes.len();
    for _ in 0..100 {
        if Some(target) == skip {
            target = (target + 1) % nodes.len();
            continue;
        }
        match nodes[target].handle.add(command.clone()).await {
            Ok(index) => return index,
            Err(NodeError::NotLeader { leader_hint: Some(leader) }) => target = (leader - 1) as usize,
            Err(NodeError::NotLeader { leader_hint: None }) | Err(NodeError::Timeout) | Err(NodeError::Stopped) => {
                target = (target + 1) % nodes.len()
            }
            Err(error) => panic!("add failed: {error}"),
        }
    }
    panic!("command {:?} was never chosen", command.id)
}

/// Polls until `node` has applied past `index` and serves `command` there (or, when
/// the log is compacted, has compacted `index` away and serves nothing else there);
/// false after about 20 s.
async fn serves(node: &NodeHandle, index: u64, command: &Command, compacting: bool) -> bool {
    for _ in 0..10_000 {
        let applied_past = node.status().await.unwrap().next_index > index;
        match node.get(index).await.unwrap() {
            Some(served) if served == *command => return true,
            Some(served) => panic!("node {} serves {served:?} at {index}, acknowledged {command:?}", node.node_id()),
            None if compacting && applied_past => return true,
            None => {}
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    false
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_file_backed_cluster_keeps_every_acknowledged_command_across_crash_restarts() {
    crash_restart_scenario(None).await;
}

/// The same with the core compacting every 8 slots: a restarted node that fell
/// behind the compaction point catches up from a snapshot, and the storage writes
/// `StorageOp::Compact` and checkpoints under a live cluster.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacting_file_backed_cluster_survives_crash_restarts() {
    crash_restart_scenario(Some(8)).await;
}

async fn crash_restart_scenario(auto_compact_slots: Option<u64>) {
    let compacting = auto_compact_slots.is_some();
    let network = MemoryNetwork::new();
    let dirs: Vec<tempfile::TempDir> = MEMBERS.iter().map(|_| tempfile::tempdir().unwrap()).collect();
    let mut nodes = Vec::new();
    for id in MEMBERS {
        nodes.push(start_node(id, &network, dirs[(id - 1) as usize].path(), auto_compact_slots).await);
    }

    let mut acknowledged: Vec<(u64, Command)> = Vec::new();
    let mut sequence = 0u64;
    let mut add_some = async |nodes: &[Running], skip: Option<usize>, count: u64, acknowledged: &mut Vec<_>| {
        for _ in 0..count {
            sequence += 1;
            let command = Command::new(1, sequence, format!("command {sequence}").into_bytes());
            let index = add(nodes, skip, command.clone()).await;
            acknowledged.push((index, command));
        }
    };
    add_some(&nodes, None, 30, &mut acknowledged).await;

    for victim in 0..MEMBERS.len() {
        let id = MEMBERS[victim];
        // Crash: cut the node off and stop its driver, which drops its storage.
        network.isolate(id);
        nodes[victim].handle.shutdown();
        let stopped = &mut nodes[victim].stopped;
        tokio::time::timeout(Duration::from_secs(10), stopped).await.expect("driver stopped").expect("driver ended");
        add_some(&nodes, Some(victim), 20, &mut acknowledged).await;

        // Restart from the same directory and let it catch up.
        network.heal();
        nodes[victim] = start_node(id, &network, dirs[victim].path(), auto_compact_slots).await;
        for (index, command) in &acknowledged {
            assert!(
                serves(&nodes[victim].handle, *index, command, compacting).await,
                "restarted node {id} lost index {index}"
            );
        }
        add_some(&nodes, None, 10, &mut acknowledged).await;
    }

    let mut indexes: Vec<u64> = acknowledged.iter().map(|(index, _)| *index).collect();
    indexes.sort_unstable();
    indexes.dedup();
    assert_eq!(indexes.len(), acknowledged.len(), "every acknowledged command has its own index");
    for node in &nodes {
        for (index, command) in &acknowledged {
            assert!(
                serves(&node.handle, *index, command, compacting).await,
                "node {} lost index {index}",
                node.handle.node_id()
            );
        }
    }
    for node in &nodes {
        node.handle.shutdown();
    }
    for node in nodes {
        tokio::time::timeout(Duration::from_secs(10), node.stopped)
            .await
            .expect("driver stopped")
            .expect("driver ended");
    }
    // Every directory reopens after the run; a compacting cluster left a snapshot in each.
    for dir in &dirs {
        let state = paxos_core::Storage::load(&FileStorage::open(dir.path(), file_options()).unwrap()).await.unwrap();
        assert_eq!(state.snapshot.is_some(), compacting, "snapshot in {}", dir.path().display());
        if compacting {
            assert!(state.slots.len() < acknowledged.len(), "compaction dropped slots in {}", dir.path().display());
        }
    }
    // The small log limit made the nodes checkpoint: some live log is past generation 0.
    let checkpointed = dirs.iter().any(|dir| !dir.path().join("wal-0000000000000000.log").exists());
    assert!(checkpointed, "no node wrote a checkpoint");
}
