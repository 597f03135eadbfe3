//! Three nodes over loopback TCP with crash-safe file storage. A client streams
//! commands; the leader is killed mid-stream; a new leader takes over; the old
//! leader restarts from its data directory and catches up. Each replica's log
//! length and checksum are printed to show they agree.
//!
//! `cargo run --example tcp_file_cluster --features tcp,tokio,file`

use std::collections::BTreeMap;
use std::net::{SocketAddr, TcpListener};
use std::time::Duration;

use anyhow::{bail, Context};
use paxos::storage::{FileOptions, FileStorage};
use paxos::transport::tcp::{TcpConfig, TcpTransport};
use paxos::{Command, Config, Node, NodeError, NodeHandle, NodeId, Protocol, Role};

const MEMBERS: [NodeId; 3] = [1, 2, 3];
const CLUSTER_ID: u64 = 0xC0FFEE;

struct Running {
    handle: NodeHandle,
    driver: tokio::task::JoinHandle<Result<(), NodeError>>,
}

async fn start(
    id: NodeId,
    addresses: &BTreeMap<NodeId, SocketAddr>,
    data: &std::path::Path,
) -> anyhow::Result<Running> {
    let listener = TcpListener::bind(addresses[&id]).with_context(|| format!("node {id} could not bind"))?;
    let mut tcp = TcpConfig::new(id, CLUSTER_ID, addresses[&id], addresses.clone());
    tcp.secret = Some(b"example shared secret, 16+ bytes".to_vec());
    let transport = TcpTransport::start_tokio_on(tcp, listener)?;
    let storage = FileStorage::open(data.join(format!("node-{id}")), FileOptions::default())?;
    let (handle, driver) = Node::start(Config::new(id, MEMBERS, Protocol::Multi), transport, storage).await?;
    Ok(Running { handle, driver: tokio::spawn(driver) })
}

/// Adds a command through any live node, following leader hints, retrying under the same id.
async fn add(nodes: &BTreeMap<NodeId, Running>, command: &Command) -> anyhow::Result<u64> {
    for attempt in 0..50 {
        let ids: Vec<&NodeId> = nodes.keys().collect();
        let node = &nodes[ids[attempt % ids.len()]];
        match node.handle.add(command.clone()).await {
            Ok(index) => return Ok(index),
            Err(NodeError::NotLeader { .. } | NodeError::Timeout | NodeError::Stopped) => continue,
            Err(error) => return Err(error.into()),
        }
    }
    bail!("command {:?} was never chosen", command.id)
}

/// FNV-1a over every applied command, in log order.
async fn log_summary(handle: &NodeHandle) -> anyhow::Result<(u64, u64)> {
    let length = handle.status().await?.next_index;
    let mut checksum: u64 = 0xcbf2_9ce4_8422_2325;
    for index in 0..length {
        let command = handle.get(index).await?.with_context(|| format!("index {index} missing"))?;
        for byte in
            command.id.client.to_le_bytes().iter().chain(&command.id.sequence.to_le_bytes()).chain(&command.payload)
        {
            checksum = (checksum ^ u64::from(*byte)).wrapping_mul(0x0100_0000_01b3);
        }
    }
    Ok((length, checksum))
}

async fn leader(nodes: &BTreeMap<NodeId, Running>) -> Option<NodeId> {
    for (id, node) in nodes {
        if node.handle.status().await.ok()?.role == Role::Leader {
            return Some(*id);
        }
    }
    None
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let data = std::env::temp_dir().join(format!("paxos-example-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&data);
    // Free loopback ports for the three nodes.
    let mut addresses = BTreeMap::new();
    for id in MEMBERS {
        let probe = TcpListener::bind("127.0.0.1:0")?;
        addresses.insert(id, probe.local_addr()?);
    }
    let mut nodes = BTreeMap::new();
    for id in MEMBERS {
        nodes.insert(id, start(id, &addresses, &data).await?);
    }

    let total = 300u64;
    let mut killed = None;
    for sequence in 1..=total {
        add(&nodes, &Command::new(1, sequence, format!("command {sequence}").into_bytes())).await?;
        if sequence == total / 3 {
            let Some(old) = leader(&nodes).await else { bail!("no leader after {sequence} commands") };
            println!("after {sequence} commands: killing the leader, node {old}");
            let node = nodes.remove(&old).expect("listed");
            node.handle.shutdown();
            let _ = node.driver.await; // The driver's end drops its transport and storage.
            killed = Some(old);
        }
        if sequence == 2 * total / 3 {
            let Some(new) = leader(&nodes).await else { bail!("no leader after {sequence} commands") };
            let old = killed.expect("killed above");
            println!("after {sequence} commands: node {new} leads; restarting node {old}");
            nodes.insert(old, start(old, &addresses, &data).await?);
        }
    }

    // Wait (bounded) until every replica applied every command, then compare.
    for _ in 0..1000 {
        let mut behind = false;
        for node in nodes.values() {
            behind |= node.handle.status().await?.next_index < total;
        }
        if !behind {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut summaries = Vec::new();
    for (id, node) in &nodes {
        let (length, checksum) = log_summary(&node.handle).await?;
        println!("node {id}: log length {length}, checksum {checksum:016x}");
        summaries.push((length, checksum));
    }
    for node in nodes.values() {
        node.handle.shutdown();
    }
    let _ = std::fs::remove_dir_all(&data);
    if summaries.iter().any(|summary| *summary != summaries[0]) || summaries[0].0 != total {
        bail!("the replicas disagree");
    }
    println!("all replicas hold the same {total} commands");
    Ok(())
}
